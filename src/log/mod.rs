//! The backend of the `log` facade: where warden's own messages and its children's output go.
//!
//! This module owns the one global logger and its three destinations: stderr (for the
//! foreground, speaking journald's `<N>` priority prefixes when `JOURNAL_STREAM` says fd 2 is
//! the journal), syslog (RFC 3164 over a Unix socket, reconnecting after a syslog daemon
//! restart) and a file (appended to, reopened on request after logrotate moved it). It also
//! writes already-formatted child output lines to the same destination through
//! [`LogHandle::write_line`] and [`LogHandle::write_output`]. It knows nothing about configuration files, signals or programs:
//! the caller chooses a [`Target`] and calls [`LogHandle::reopen`] when it sees `SIGUSR1` (from
//! the event loop, never from a signal handler).
//!
//! # Formats
//!
//! [`LogFormat::Text`] (the default) writes `TIMESTAMP LEVEL message` lines;
//! [`LogFormat::Json`] one JSON object a line ([`json`] has the schema), on every destination:
//! a file gets the object alone, stderr under journald keeps its `<N>` priority prefix before
//! the object (journald strips it and records the priority), and syslog sends the object as the
//! message (the RFC 3164 header keeps severity, facility and tag).
//!
//! # Ordering
//!
//! Call [`init`] once, in the daemon, *after the final fork* and after stdio has been
//! redirected: the syslog connection records the PID it was built with, and `JOURNAL_STREAM` is
//! compared with fd 2 as it is at that moment. Never log between `fork` and `exec` in a child:
//! every destination takes a lock, and a lock held by another thread at fork time stays held
//! forever in the child.
//!
//! # Atomicity
//!
//! Each record is formatted into one buffer and written with one `write_all` while holding the
//! destination's lock, so a line is never split by another thread, by a reopen, or (for lines
//! up to `PIPE_BUF` on a pipe) by another process writing to the same stderr.

mod file;
pub mod json;
pub(crate) mod repeat;
mod stderr;
mod syslog;

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::error::{Error, Result};

pub use self::json::{LogFormat, OutputSource};

/// One of warden's own messages as a `log_format = "json"` line (without its newline), about
/// nothing in particular: for what a program prints before, or instead of, its logger — a fatal
/// start-up error of `warden run`, which a log shipper must be able to read too.
pub fn json_line(level: Level, message: &str) -> String {
    json::own_record(SystemTime::now(), level, &json::Subject::default(), message)
}

use self::file::FileSink;
use self::stderr::StderrSink;
use self::syslog::SyslogSink;

/// The syslog facilities accepted by `syslog_facility` in `warden.toml` and by
/// [`Target::Syslog`].
pub const SYSLOG_FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];

/// Where log records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The process's stderr (fd 2), for foreground use; journald-aware through `JOURNAL_STREAM`.
    Stderr,
    /// The local syslog daemon, in RFC 3164 format.
    Syslog {
        /// The facility name, one of [`SYSLOG_FACILITIES`] (e.g. `"daemon"`).
        facility: String,
        /// The tag put before `[pid]` in every message, usually the program name.
        ident: String,
        /// The syslog socket; `None` means `/dev/log`.
        socket: Option<PathBuf>,
    },
    /// A file, appended to (created with mode 0644 less the umask) and reopened by
    /// [`LogHandle::reopen`].
    File(PathBuf),
}

/// How the global logger is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Where records go.
    pub target: Target,
    /// The most verbose level that is written; more verbose records are discarded.
    pub level: LevelFilter,
    /// How lines are written: text or JSON (`log_format`).
    pub format: LogFormat,
}

/// Installs the global logger described by `cfg` and returns a handle on it.
///
/// The destination is opened first (a file that cannot be opened is an [`Error::Io`] naming its
/// path, an unknown syslog facility an [`Error::Invalid`]); only then is the logger installed with
/// `log::set_boxed_logger` and `log::set_max_level`. A syslog socket that cannot be reached yet is
/// not an error: messages are counted as dropped until it answers (see [`LogHandle::dropped`]).
///
/// The global logger can be installed once per process: a second call returns
/// [`Error::Invalid`] and leaves the first logger in place.
pub fn init(cfg: &LogConfig) -> Result<LogHandle> {
    let backend = Arc::new(build(cfg)?);
    let logger = GlobalLogger {
        backend: Arc::clone(&backend),
        level: cfg.level,
        format: cfg.format,
        owner: std::process::id(),
    };
    log::set_boxed_logger(Box::new(logger)).map_err(|_| Error::Invalid {
        what: "log backend",
        reason: "a global logger is already installed; warden::log::init may be called once"
            .to_string(),
    })?;
    log::set_max_level(cfg.level);
    Ok(LogHandle {
        backend,
        format: cfg.format,
    })
}

/// A handle on the installed logger's destination, for the event loop and the output capture.
///
/// Cloning is cheap; every clone refers to the same destination.
#[derive(Clone)]
pub struct LogHandle {
    backend: Arc<Backend>,
    format: LogFormat,
}

impl LogHandle {
    /// Reopens the log file at its configured path (after logrotate moved it away); a no-op for
    /// stderr and syslog.
    ///
    /// The new file is opened before the old one is let go, so on error logging goes on into the
    /// old file and the error names the path. The swap happens under the lock writers take, so
    /// every line lands whole in either the old or the new file.
    pub fn reopen(&self) -> Result<()> {
        self.backend.reopen()
    }

    /// How many syslog messages were lost so far because the syslog socket could not be reached
    /// even after reconnecting (always 0 for stderr and file).
    pub fn dropped(&self) -> u64 {
        self.backend.dropped()
    }

    /// Flushes anything buffered on the way to the destination.
    pub fn flush(&self) {
        self.backend.flush();
    }

    /// For syslog: why the connection made by [`init`] failed (for example `/dev/log` missing
    /// in a container), so that start-up can warn whoever started the daemon — the log itself
    /// cannot say it. `None` when it connected, and for stderr and files.
    pub fn unreachable(&self) -> Option<String> {
        match &*self.backend {
            Backend::Syslog(sink) => sink.unreachable(),
            Backend::Stderr(_) | Backend::File(_) => None,
        }
    }

    /// Writes one already-formatted line (a child's output, e.g. `web[0]: listening on :80`)
    /// to the destination, without a level.
    ///
    /// On stderr and files the line gets a timestamp (or, under journald, the `<6>` info prefix);
    /// on syslog it is sent at info severity. A trailing newline in `line` is ignored.
    pub fn write_line(&self, line: &str) {
        self.backend.write_line(line);
    }

    /// Writes one line of a program's output, in the log's format: as
    /// [`LogHandle::write_line`] of `NAME[INDEX] line` in text, as a JSON object naming the
    /// program, instance, pid and stream in JSON.
    pub fn write_output(&self, source: &OutputSource<'_>, line: &str) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        match self.format {
            LogFormat::Text => self.backend.write_line(&format!("{} {line}", source.tag())),
            LogFormat::Json => {
                let record = json::record(SystemTime::now(), Level::Info, Some(source), line);
                self.backend.write_json(Level::Info, &record);
            }
        }
    }

    /// The format lines are written in (programs' output files follow it too).
    pub fn format(&self) -> LogFormat {
        self.format
    }
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &*self.backend {
            Backend::Stderr(_) => "stderr",
            Backend::Syslog(_) => "syslog",
            Backend::File(_) => "file",
        };
        f.debug_struct("LogHandle")
            .field("target", &target)
            .finish()
    }
}

/// The destination behind the global logger, buildable without installing it (for tests).
pub(crate) enum Backend {
    Stderr(StderrSink),
    Syslog(SyslogSink),
    File(FileSink),
}

/// Opens the destination described by `cfg`, without touching the global logger.
pub(crate) fn build(cfg: &LogConfig) -> Result<Backend> {
    Ok(match &cfg.target {
        Target::Stderr => Backend::Stderr(StderrSink::from_env()),
        Target::Syslog {
            facility,
            ident,
            socket,
        } => Backend::Syslog(SyslogSink::new(facility, ident, socket.as_deref())?),
        Target::File(path) => Backend::File(FileSink::open(path)?),
    })
}

impl Backend {
    /// Writes one record (level already filtered by the caller).
    pub(crate) fn log(&self, level: Level, target: &str, args: &fmt::Arguments<'_>) {
        match self {
            Backend::Stderr(sink) => {
                let mut buf = Vec::with_capacity(128);
                format_record(
                    &mut buf,
                    sink.style(),
                    SystemTime::now(),
                    level,
                    target,
                    args,
                );
                sink.write(&buf);
            }
            Backend::File(sink) => {
                let mut buf = Vec::with_capacity(128);
                format_record(
                    &mut buf,
                    LineStyle::Timestamped,
                    SystemTime::now(),
                    level,
                    target,
                    args,
                );
                sink.write(&buf);
            }
            Backend::Syslog(sink) => {
                let mut msg = String::with_capacity(128);
                write_message(&mut msg, level, target, args);
                sink.send(syslog::severity(level), &msg);
            }
        }
    }

    /// Writes one JSON record (without its newline) at `level`: alone on its line in a file or
    /// on stderr, after the priority prefix under journald, as the message on syslog.
    pub(crate) fn write_json(&self, level: Level, record: &str) {
        match self {
            Backend::Stderr(sink) => {
                let line = match sink.style() {
                    LineStyle::Journal => format!("<{}>{record}\n", journal_priority(level)),
                    LineStyle::Timestamped => format!("{record}\n"),
                };
                sink.write(line.as_bytes());
            }
            Backend::File(sink) => sink.write(format!("{record}\n").as_bytes()),
            Backend::Syslog(sink) => sink.send(syslog::severity(level), record),
        }
    }

    /// Writes one already-formatted line without a level.
    pub(crate) fn write_line(&self, line: &str) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        match self {
            Backend::Stderr(sink) => {
                let mut buf = Vec::with_capacity(line.len() + 32);
                format_line(&mut buf, sink.style(), SystemTime::now(), line);
                sink.write(&buf);
            }
            Backend::File(sink) => {
                let mut buf = Vec::with_capacity(line.len() + 32);
                format_line(&mut buf, LineStyle::Timestamped, SystemTime::now(), line);
                sink.write(&buf);
            }
            Backend::Syslog(sink) => sink.send(syslog::severity(Level::Info), line),
        }
    }

    pub(crate) fn reopen(&self) -> Result<()> {
        match self {
            Backend::File(sink) => sink.reopen(),
            Backend::Stderr(_) | Backend::Syslog(_) => Ok(()),
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        match self {
            Backend::Syslog(sink) => sink.dropped(),
            Backend::Stderr(_) | Backend::File(_) => 0,
        }
    }

    pub(crate) fn flush(&self) {
        match self {
            Backend::Syslog(sink) => sink.flush(),
            // Both write each line straight to the file descriptor; nothing is buffered.
            Backend::Stderr(_) | Backend::File(_) => {}
        }
    }
}

/// Logs one of warden's own messages about `program`, its instance `instance` and that
/// instance's process `pid` (both `Option`s): `about!(level, program, instance, pid, "format",
/// args…)`. The text is that of `log::log!(level, "format", args…)`; in JSON the line's
/// `program`, `instance` and `pid` keys name them (see [`json::Subject`]).
macro_rules! about {
    ($level:expr, $program:expr, $instance:expr, $pid:expr, $($arg:tt)+) => {{
        let (program, instance, pid): (&str, Option<usize>, Option<i32>) =
            ($program, $instance, $pid);
        ::log::log!($level, program = program, instance = instance, pid = pid; $($arg)+)
    }};
}
pub(crate) use about;

/// The object given to `log::set_boxed_logger`.
struct GlobalLogger {
    backend: Arc<Backend>,
    level: LevelFilter,
    format: LogFormat,
    /// The process that installed the logger. A child forked from it (a function worker) writes
    /// its records to its own stderr instead — which the supervisor captures — rather than into
    /// descriptors it inherited and must not use.
    owner: u32,
}

impl Log for GlobalLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if std::process::id() != self.owner {
            let line = format!("{:<5} {}\n", record.level(), record.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
            return;
        }
        match self.format {
            LogFormat::Text => self
                .backend
                .log(record.level(), record.target(), record.args()),
            LogFormat::Json => {
                let mut msg = String::with_capacity(96);
                write_message(&mut msg, record.level(), record.target(), record.args());
                let subject = json::Subject::of(record);
                let json = json::own_record(SystemTime::now(), record.level(), &subject, &msg);
                self.backend.write_json(record.level(), &json);
            }
        }
    }

    fn flush(&self) {
        self.backend.flush();
    }
}

/// How a record is laid out on a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineStyle {
    /// sd-daemon(3) priority prefix (`<3>message`), no timestamp: journald adds its own.
    Journal,
    /// `2026-11-22T17:59:28.123Z INFO  message`, in UTC so that no time zone is read.
    Timestamped,
}

/// The sd-daemon(3) priority of a level: `<3>` err, `<4>` warning, `<6>` info, `<7>` debug.
fn journal_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Writes the message text of a record: the module path only at debug and trace, where it helps
/// find the code, so that info lines stay clean. A trailing newline is dropped.
fn write_message(out: &mut String, level: Level, target: &str, args: &fmt::Arguments<'_>) {
    use std::fmt::Write as _;
    if level >= Level::Debug && !target.is_empty() {
        out.push_str(target);
        out.push_str(": ");
    }
    // Writing into a String cannot fail.
    let _ = write!(out, "{args}");
    while out.ends_with('\n') {
        out.pop();
    }
}

/// Formats one record as a complete line (ending in `\n`) into `buf`.
///
/// Under journald every line of a multi-line message gets the prefix, so that continuation lines
/// keep the record's priority instead of falling back to the stream's default.
pub(crate) fn format_record(
    buf: &mut Vec<u8>,
    style: LineStyle,
    now: SystemTime,
    level: Level,
    target: &str,
    args: &fmt::Arguments<'_>,
) {
    let mut msg = String::with_capacity(96);
    write_message(&mut msg, level, target, args);
    match style {
        LineStyle::Journal => {
            let prio = journal_priority(level);
            for line in msg.split('\n') {
                let _ = writeln!(buf, "<{prio}>{line}");
            }
        }
        LineStyle::Timestamped => {
            let ts = humantime::format_rfc3339_millis(now);
            let _ = writeln!(buf, "{ts} {level:<5} {msg}");
        }
    }
}

/// Formats one already-formatted output line (no level) as a complete line into `buf`.
pub(crate) fn format_line(buf: &mut Vec<u8>, style: LineStyle, now: SystemTime, line: &str) {
    match style {
        LineStyle::Journal => {
            let _ = writeln!(buf, "<{}>{line}", journal_priority(Level::Info));
        }
        LineStyle::Timestamped => {
            let ts = humantime::format_rfc3339_millis(now);
            let _ = writeln!(buf, "{ts} {line}");
        }
    }
}

/// Locks `m`, going on after a panic in another holder: a log destination holds no invariant
/// that a panic mid-write could break, and losing logging for good would be worse.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
