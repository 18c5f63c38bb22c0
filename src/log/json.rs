//! The JSON line format (`log_format = "json"`): one object a line, the same keys for warden's
//! own messages and for its programs' output, for log shippers.
//!
//! ```json
//! {"timestamp":"2026-12-05T05:50:01.100Z","level":"info","program":null,"instance":null,
//!  "pid":null,"stream":null,"message":"reload applied"}
//! {"timestamp":"2026-12-05T05:50:01.123Z","level":"info","program":"web","instance":0,
//!  "pid":4711,"stream":null,"message":"web[0]: starting -> ready (pid 4711)"}
//! {"timestamp":"2026-12-05T05:50:01.200Z","level":"info","program":"web","instance":0,
//!  "pid":4711,"stream":"stdout","message":"listening on :8080"}
//! ```
//!
//! Every key is always present. `timestamp` is RFC 3339 in UTC with milliseconds; `level` is
//! `error`, `warn`, `info`, `debug` or `trace` (a program's output is `info`, whichever stream
//! it came from); `program`, `instance`, `pid` and `stream` (`stdout` or `stderr`) say whose
//! output a line is. On warden's own messages `stream` is `null`, and `program`, `instance` and
//! `pid` say whom the message is about ([`Subject`], taken from the record's key-values
//! `program`, `instance` and `pid`): all three for a message about an
//! instance and its process, `program` alone for one about a whole program, `null` otherwise.
//! `message` is the text, newlines and all (escaped: a record is always one line). This file
//! only formats: where the line goes is the destination's business.

use std::time::SystemTime;

use log::Level;
use serde::Serialize;

/// How log lines are written: warden's own messages and captured program output alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-05T05:50:01.123Z INFO  message`, and `… web[0] line` for program output.
    #[default]
    Text,
    /// One JSON object a line (see the [module documentation](self)).
    Json,
}

/// Whose output a line is: a program's instance, its process and its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSource<'a> {
    /// The program.
    pub program: &'a str,
    /// The instance (its `WARDEN_INSTANCE`).
    pub instance: usize,
    /// The process that wrote it, when known.
    pub pid: Option<i32>,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
}

impl OutputSource<'_> {
    /// `NAME[INDEX]`, as text lines name the program.
    pub fn tag(&self) -> String {
        format!("{}[{}]", self.program, self.instance)
    }
}

/// Whom one of warden's own messages is about: read from a record's key-values `program` (a
/// string), `instance` and `pid` (integers); each `None` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The program.
    pub program: Option<String>,
    /// The instance's index.
    pub instance: Option<usize>,
    /// The instance's process.
    pub pid: Option<i32>,
}

impl Subject {
    /// The subject named by `record`'s key-values (all `None` for a record without them).
    pub fn of(record: &log::Record<'_>) -> Subject {
        let mut subject = Subject::default();
        // The visitor never fails; a source that stops early leaves the rest `None`.
        let _ = record.key_values().visit(&mut subject);
        subject
    }
}

impl<'kvs> log::kv::VisitSource<'kvs> for Subject {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        match key.as_str() {
            "program" => self.program = Some(value.to_string()),
            "instance" => self.instance = value.to_u64().and_then(|i| usize::try_from(i).ok()),
            "pid" => self.pid = value.to_i64().and_then(|p| i32::try_from(p).ok()),
            _ => {}
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'a str,
    program: Option<&'a str>,
    instance: Option<usize>,
    pid: Option<i32>,
    stream: Option<&'a str>,
    message: &'a str,
}

/// One record as a JSON object, without its newline: `source` is `None` for warden's own
/// messages.
pub fn record(
    now: SystemTime,
    level: Level,
    source: Option<&OutputSource<'_>>,
    message: &str,
) -> String {
    let line = Line {
        timestamp: humantime::format_rfc3339_millis(now).to_string(),
        level: level_name(level),
        program: source.map(|s| s.program),
        instance: source.map(|s| s.instance),
        pid: source.and_then(|s| s.pid),
        stream: source.map(|s| s.stream),
        message,
    };
    // Strings, numbers and nulls: serialising cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// One of warden's own records as a JSON object, without its newline: `subject` fills
/// `program`, `instance` and `pid`; `stream` is `null`.
pub fn own_record(now: SystemTime, level: Level, subject: &Subject, message: &str) -> String {
    let line = Line {
        timestamp: humantime::format_rfc3339_millis(now).to_string(),
        level: level_name(level),
        program: subject.program.as_deref(),
        instance: subject.instance,
        pid: subject.pid,
        stream: None,
        message,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// `error`, `warn`, `info`, `debug`, `trace`.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_key_is_present_and_warden_s_own_lines_name_no_program() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(2_250);
        let own: serde_json::Value =
            serde_json::from_str(&record(t, Level::Warn, None, "two\nlines \"quoted\"")).unwrap();
        assert_eq!(
            own,
            serde_json::json!({"timestamp": "1970-01-01T00:00:02.250Z", "level": "warn",
                "program": null, "instance": null, "pid": null, "stream": null,
                "message": "two\nlines \"quoted\""})
        );
        let src = OutputSource {
            program: "web",
            instance: 2,
            pid: Some(77),
            stream: "stderr",
        };
        let line = record(t, Level::Info, Some(&src), "hello");
        assert!(!line.contains('\n'));
        let out: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(out["program"], "web");
        assert_eq!(out["instance"], 2);
        assert_eq!(out["pid"], 77);
        assert_eq!(out["stream"], "stderr");
        assert_eq!(out["level"], "info");
        assert_eq!(src.tag(), "web[2]");
    }

    #[test]
    fn warden_s_own_lines_name_the_instance_their_key_values_give() {
        let kvs: &[(&str, log::kv::Value<'_>)] = &[
            ("program", log::kv::Value::from("web")),
            ("instance", log::kv::Value::from(3usize)),
            ("pid", log::kv::Value::from(4711i32)),
        ];
        let record = log::Record::builder()
            .args(format_args!("web[3]: running -> backoff"))
            .key_values(&kvs)
            .build();
        let subject = Subject::of(&record);
        assert_eq!(subject.program.as_deref(), Some("web"));
        let t = SystemTime::UNIX_EPOCH;
        let line: serde_json::Value =
            serde_json::from_str(&own_record(t, Level::Error, &subject, "m")).unwrap();
        assert_eq!(line["program"], "web");
        assert_eq!(line["instance"], 3);
        assert_eq!(line["pid"], 4711);
        assert_eq!(line["stream"], serde_json::Value::Null);
        // A program alone (a `None` instance and pid are nulls); none at all.
        let unit = log::kv::Value::null();
        let kvs: &[(&str, log::kv::Value<'_>)] = &[("program", "db".into()), ("pid", unit)];
        let record = log::Record::builder().key_values(&kvs).build();
        let expected = Subject {
            program: Some("db".into()),
            ..Subject::default()
        };
        assert_eq!(Subject::of(&record), expected);
        let plain = log::Record::builder().build();
        assert_eq!(Subject::of(&plain), Subject::default());
    }
}
