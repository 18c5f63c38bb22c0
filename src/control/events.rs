//! The event stream's wire types: what `warden events` receives, one [`EventRecord`] per state
//! change, and how it reads as a line for humans.
//!
//! Plain data and formatting only: which changes become events, and when, is the supervisor's
//! (`supervisor/events.rs`); carrying the lines to subscribers, and cutting off one that does
//! not read them, is the server's ([`super::server::ControlServer::broadcast`]).
//!
//! # Schema (`warden events --json`, protocol version 1)
//!
//! One JSON object a line:
//!
//! ```json
//! {"time": "2026-12-05T05:50:01.123Z", "program": "web", "instance": 0, "pid": 4711,
//!  "event": "exited", "code": 1, "signal": null, "reason": null}
//! ```
//!
//! `time` is RFC 3339 in UTC with milliseconds; `program`, `instance` and `pid` are present in
//! every event and `null` where they do not apply (`reload-applied` and `upgraded` have no program;
//! `rolled-back` names a program but no instance; `pid` is the instance's process, the one that
//! started or exited, `null` when none is up). `event` is one of:
//!
//! | `event` | fields |
//! |---|---|
//! | `started` | — (`pid` is the new process) |
//! | `ready` | — |
//! | `stopping` | — (warden sent the stop signal) |
//! | `exited` | `code` (or `null`), `signal` (its name, or `null`), `reason` (`"health"`, `"start_timeout"` or `"watchdog"` when warden ended it for that failure, `"oom"` when the OOM killer did, else `null`) |
//! | `restarting` | `delay_ms`: the backoff before the next start |
//! | `stopped` | — (down by hand, kept down) |
//! | `waiting` | `waiting_for`: the programs it waits for (`after`, `requires`), `reason`: why it is held down (`"db stopped"`, `"db fatal"`: a required program was stopped by hand or gave up, and warden stopped it for that), or `null` when it has simply not started yet; it starts again by itself once they are ready (then `started`) |
//! | `fatal` | `reason`: why warden gave up (or `null`) |
//! | `health` | `state` (`passing` or `failing`), `failures` (in a row), `error` (the last failure's, or `null`) |
//! | `reload-applied` | `changes`: what the reload did, one string each (`add web`, `restart db (changed)`) |
//! | `rolled-back` | `reason` |
//! | `upgraded` | `from`, `to`: the versions, as `warden upgrade` prints them (the new image took over; streams go on across an upgrade) |
//!
//! Events and fields may be added within version 1; none will be removed or change meaning. A
//! client reads an event it does not know as [`What::Other`] (its name and fields as they
//! came), and ignores a field it does not know in an event it knows.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// One event of the stream. See the [module documentation](self) for the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When it happened: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The program, when the event concerns one.
    pub program: Option<String>,
    /// The instance (its `WARDEN_INSTANCE`), when the event concerns one.
    pub instance: Option<usize>,
    /// The instance's process: the one that started, exited, or is up.
    pub pid: Option<i32>,
    /// What happened, with its own fields.
    #[serde(flatten)]
    pub what: What,
}

/// What an [`EventRecord`] says happened (`event` in the JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum What {
    /// A process of the instance started.
    Started,
    /// The instance became ready.
    Ready,
    /// warden sent the instance its stop signal.
    Stopping,
    /// The instance's process ended.
    Exited {
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal's name (`SIGKILL`), when a signal ended it.
        signal: Option<String>,
        /// Why warden ended it, when it did on a verdict of its own (`health`).
        reason: Option<String>,
    },
    /// The instance waits for its backoff before starting again.
    Restarting {
        /// The delay, in milliseconds.
        delay_ms: u64,
    },
    /// The instance was stopped by hand and is kept down.
    Stopped,
    /// The instance is held down until the programs it starts after are ready: it has not
    /// started yet, or warden stopped it because a program it requires was stopped or gave up.
    /// It starts by itself once they are ready.
    Waiting {
        /// The programs it waits for.
        waiting_for: Vec<String>,
        /// Why it was stopped (`db stopped`, `db fatal`), or `None` when it has not started
        /// yet.
        reason: Option<String>,
    },
    /// warden gave up restarting the instance.
    Fatal {
        /// Why (the crash-loop limit, a start that cannot succeed).
        reason: Option<String>,
    },
    /// The instance's health check changed from passing to failing or back.
    Health {
        /// `passing` or `failing`.
        state: String,
        /// Failures in a row.
        failures: u32,
        /// The last failure's error, while failing.
        error: Option<String>,
    },
    /// A reload was applied.
    ReloadApplied {
        /// What it did, one line each, as `warden reload` prints them.
        changes: Vec<String>,
    },
    /// A rollout of the program was rolled back.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// warden was upgraded in place (`warden upgrade`): the new image has taken over.
    Upgraded {
        /// The version that handed over.
        from: String,
        /// The version that runs now.
        to: String,
    },
    /// An event this build does not know (a newer warden's), with all its own fields: read,
    /// never published.
    #[serde(untagged)]
    Other {
        /// Its name (`event` in the JSON).
        event: String,
        /// Its fields, as they came.
        #[serde(flatten)]
        fields: serde_json::Map<String, serde_json::Value>,
    },
}

impl EventRecord {
    /// An event that happened at `time`.
    pub fn new(
        time: SystemTime,
        program: Option<String>,
        instance: Option<usize>,
        pid: Option<i32>,
        what: What,
    ) -> EventRecord {
        EventRecord {
            time: humantime::format_rfc3339_millis(time).to_string(),
            program,
            instance,
            pid,
            what,
        }
    }

    /// The event for humans, as `warden events` prints it, one line, in the log's style:
    /// `2026-12-05T05:50:01.123Z web[0]: exited (pid 4711): code 1`.
    pub fn human(&self) -> String {
        let who = match (&self.program, self.instance) {
            (Some(p), Some(i)) => format!("{p}[{i}]"),
            (Some(p), None) => p.clone(),
            (None, _) => "warden".to_string(),
        };
        let pid = self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let (name, detail) = self.what.describe();
        let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
        format!("{} {who}: {name}{pid}{detail}", self.time)
    }
}

impl What {
    /// The event's name (`exited`) and what follows it in the human line, if anything.
    fn describe(&self) -> (String, Option<String>) {
        if let What::Restarting { delay_ms } = self {
            let delay = crate::policy::fmt_duration(Duration::from_millis(*delay_ms));
            return (format!("restarting in {delay}"), None);
        }
        if let What::Other { event, .. } = self {
            return (event.clone(), None);
        }
        if let What::Waiting {
            waiting_for,
            reason,
        } = self
        {
            // As `status` shows it: `waiting (db stopped)`, or `waiting (for db)`.
            let why = match (reason, waiting_for.is_empty()) {
                (Some(why), true) => Some(why.clone()),
                (Some(why), false) => Some(format!("for {} ({why})", waiting_for.join(", "))),
                (None, false) => Some(format!("for {}", waiting_for.join(", "))),
                (None, true) => None,
            };
            return ("waiting".to_string(), why);
        }
        let (name, detail) = self.parts();
        (name.to_string(), detail)
    }

    /// [`What::describe`] before the restart delay joins the name.
    fn parts(&self) -> (&'static str, Option<String>) {
        match self {
            What::Started => ("started", None),
            What::Ready => ("ready", None),
            What::Stopping => ("stopping", None),
            What::Stopped => ("stopped", None),
            What::Exited {
                code,
                signal,
                reason,
            } => {
                let how = match (code, signal) {
                    (_, Some(s)) => format!("signal {s}"),
                    (Some(c), None) => format!("code {c}"),
                    (None, None) => "unknown status".to_string(),
                };
                let why = reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                ("exited", Some(format!("{how}{why}")))
            }
            What::Restarting { .. } => ("restarting", None),
            What::Waiting { .. } => ("waiting", None),
            What::Fatal { reason } => ("fatal", reason.clone()),
            What::Health {
                state,
                failures,
                error,
            } => {
                let text = match error {
                    Some(e) if state == "failing" => format!("{state} ({failures} in a row): {e}"),
                    _ => state.clone(),
                };
                ("health", Some(text))
            }
            What::ReloadApplied { changes } if changes.is_empty() => {
                ("reload applied", Some("nothing changed".into()))
            }
            What::ReloadApplied { changes } => ("reload applied", Some(changes.join("; "))),
            What::RolledBack { reason } => ("rolled back", Some(reason.clone())),
            What::Upgraded { from, to } => ("upgraded", Some(format!("{from} -> {to}"))),
            What::Other { .. } => ("", None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_epoch(
        program: Option<&str>,
        instance: Option<usize>,
        pid: Option<i32>,
        what: What,
    ) -> EventRecord {
        EventRecord::new(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
            program.map(String::from),
            instance,
            pid,
            what,
        )
    }

    #[test]
    fn the_json_carries_the_common_fields_and_the_event_s_own() {
        let e = at_epoch(
            Some("web"),
            Some(0),
            Some(4711),
            What::Exited {
                code: Some(1),
                signal: None,
                reason: None,
            },
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"time": "1970-01-01T00:00:01.500Z", "program": "web",
                "instance": 0, "pid": 4711, "event": "exited", "code": 1, "signal": null,
                "reason": null})
        );
        let back: EventRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        let r = at_epoch(
            None,
            None,
            None,
            What::ReloadApplied {
                changes: vec!["add x".into()],
            },
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["event"], "reload-applied");
        assert_eq!(v["program"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<EventRecord>(v).unwrap(), r);
    }

    #[test]
    fn each_event_reads_as_one_log_like_line() {
        let line = |e: EventRecord| e.human();
        assert_eq!(
            line(at_epoch(Some("web"), Some(0), Some(7), What::Started)),
            "1970-01-01T00:00:01.500Z web[0]: started (pid 7)"
        );
        assert_eq!(
            line(at_epoch(
                Some("web"),
                Some(1),
                Some(7),
                What::Exited {
                    code: None,
                    signal: Some("SIGKILL".into()),
                    reason: Some("health".into())
                }
            )),
            "1970-01-01T00:00:01.500Z web[1]: exited (pid 7): signal SIGKILL (health)"
        );
        assert_eq!(
            line(at_epoch(
                Some("web"),
                Some(0),
                None,
                What::Restarting { delay_ms: 1_600 }
            )),
            "1970-01-01T00:00:01.500Z web[0]: restarting in 1.6s"
        );
        assert_eq!(
            line(at_epoch(
                Some("web"),
                None,
                None,
                What::RolledBack {
                    reason: "web[1] never became ready".into()
                }
            )),
            "1970-01-01T00:00:01.500Z web: rolled back: web[1] never became ready"
        );
        assert_eq!(
            line(at_epoch(
                None,
                None,
                None,
                What::ReloadApplied {
                    changes: vec!["add a".into(), "remove b".into()]
                }
            )),
            "1970-01-01T00:00:01.500Z warden: reload applied: add a; remove b"
        );
    }

    #[test]
    fn waiting_names_what_it_waits_for_and_why() {
        let e = at_epoch(
            Some("web"),
            Some(0),
            None,
            What::Waiting {
                waiting_for: vec!["db".into()],
                reason: Some("db stopped".into()),
            },
        );
        assert_eq!(
            e.human(),
            "1970-01-01T00:00:01.500Z web[0]: waiting: for db (db stopped)"
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"time": "1970-01-01T00:00:01.500Z", "program": "web",
                "instance": 0, "pid": null, "event": "waiting", "waiting_for": ["db"],
                "reason": "db stopped"})
        );
        assert_eq!(serde_json::from_value::<EventRecord>(v).unwrap(), e);
        let not_yet = at_epoch(
            Some("web"),
            Some(1),
            None,
            What::Waiting {
                waiting_for: vec!["db".into(), "cache".into()],
                reason: None,
            },
        );
        assert_eq!(
            not_yet.human(),
            "1970-01-01T00:00:01.500Z web[1]: waiting: for db, cache"
        );
    }

    #[test]
    fn upgraded_names_both_versions() {
        let e = at_epoch(
            None,
            None,
            None,
            What::Upgraded {
                from: "0.1.0".into(),
                to: "0.2.0".into(),
            },
        );
        assert_eq!(
            e.human(),
            "1970-01-01T00:00:01.500Z warden: upgraded: 0.1.0 -> 0.2.0"
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"time": "1970-01-01T00:00:01.500Z", "program": null,
                "instance": null, "pid": null, "event": "upgraded", "from": "0.1.0",
                "to": "0.2.0"})
        );
        assert_eq!(serde_json::from_value::<EventRecord>(v).unwrap(), e);
    }

    #[test]
    fn an_event_of_a_newer_warden_is_read_with_all_its_fields() {
        let line = r#"{"v":1,"event":{"time":"1970-01-01T00:00:01.500Z","program":"web",
            "instance":0,"pid":7,"event":"quaked","magnitude":7,"where":{"x":[1,2]}}}"#;
        let Ok(crate::control::Reply::Event { event, .. }) = serde_json::from_str(line) else {
            panic!("not read as an event: {line}");
        };
        let mut fields = serde_json::Map::new();
        fields.insert("magnitude".into(), serde_json::json!(7));
        fields.insert("where".into(), serde_json::json!({"x": [1, 2]}));
        assert_eq!(
            event.what,
            What::Other {
                event: "quaked".into(),
                fields
            }
        );
        assert_eq!(
            event.human(),
            "1970-01-01T00:00:01.500Z web[0]: quaked (pid 7)"
        );
        // Printed again (`warden events --json`), nothing is lost.
        let inner: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_value(&*event).unwrap(), inner["event"]);
    }

    #[test]
    fn a_field_this_build_does_not_know_is_ignored() {
        let line = r#"{"v":1,"event":{"time":"1970-01-01T00:00:01.500Z","program":"web",
            "instance":0,"pid":7,"event":"exited","code":1,"signal":null,"reason":null,
            "cgroup":"/sys/fs/cgroup/web","core":{"path":"/var/core/7"}}}"#;
        let Ok(crate::control::Reply::Event { event, .. }) = serde_json::from_str(line) else {
            panic!("not read as an event: {line}");
        };
        assert_eq!(
            event.what,
            What::Exited {
                code: Some(1),
                signal: None,
                reason: None
            }
        );
        // An event without a name is no event.
        let nameless = r#"{"time":"t","program":null,"instance":null,"pid":null,"x":1}"#;
        assert!(serde_json::from_str::<EventRecord>(nameless).is_err());
    }
}
