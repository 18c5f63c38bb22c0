//! The syslog destination: RFC 3164 over a Unix socket, reconnecting after a syslog restart.
//!
//! The `syslog` crate writes the PID given to its formatter into every message and never
//! reconnects: once the syslog daemon restarts, its socket is a new one and every send on the old
//! connection fails (`ECONNREFUSED`, `ENOTCONN`, `EPIPE`). So the sink is built after the final
//! fork (with the daemon's PID), and on any send error it rebuilds the connection and retries that
//! message once. Only when the retry fails too is the message counted as dropped; the first
//! message that gets through afterwards is preceded by a warning saying how many were lost. While
//! the socket answers, nothing is reconnected.
//!
//! A syslog daemon that is alive but not reading would make a blocking send wait forever, and the
//! caller is the supervisor's event loop. Sends therefore time out after [`SEND_TIMEOUT`]; a full
//! queue is not a broken connection, so that message is dropped without a reconnect.

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::syslog::{Facility, Formatter3164, LogFormat as _, Logger, LoggerBackend, Severity};
use log::Level;

use crate::config::SYSLOG_FACILITIES;
use crate::error::{Error, Result};

use super::lock;

/// The syslog socket when none is configured.
pub(crate) const DEFAULT_SOCKET: &str = "/dev/log";

/// How long one send may wait for room in the syslog daemon's queue.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_millis(100);

type Connection = Logger<LoggerBackend, Formatter3164>;

/// A reconnecting syslog connection.
pub(crate) struct SyslogSink {
    formatter: Formatter3164,
    path: PathBuf,
    state: Mutex<State>,
    /// Messages lost since the sink was built.
    dropped: AtomicU64,
}

/// What the lock protects.
struct State {
    /// `None` after a failed reconnect: the next message tries again.
    conn: Option<Connection>,
    /// Messages lost since the last one that got through, announced when one gets through again.
    unreported: u64,
}

/// The syslog severity of a log level.
pub(crate) fn severity(level: Level) -> Severity {
    match level {
        Level::Error => Severity::LOG_ERR,
        Level::Warn => Severity::LOG_WARNING,
        Level::Info => Severity::LOG_INFO,
        Level::Debug | Level::Trace => Severity::LOG_DEBUG,
    }
}

impl SyslogSink {
    /// Builds the formatter with this process's PID and connects to `socket` (default
    /// `/dev/log`).
    ///
    /// An unknown facility is an error. An unreachable socket is not: the syslog daemon may be
    /// starting or restarting, so the sink starts disconnected and connects on the next message.
    pub(crate) fn new(facility: &str, ident: &str, socket: Option<&Path>) -> Result<Self> {
        let facility = parse_facility(facility)?;
        let formatter = Formatter3164 {
            facility,
            hostname: None,
            process: ident.to_string(),
            pid: std::process::id(),
        };
        let path = socket.map_or_else(|| PathBuf::from(DEFAULT_SOCKET), Path::to_path_buf);
        let conn = connect(&formatter, &path).ok();
        Ok(SyslogSink {
            formatter,
            path,
            state: Mutex::new(State {
                conn,
                unreported: 0,
            }),
            dropped: AtomicU64::new(0),
        })
    }

    /// Sends one message, reconnecting once if needed; counts it as dropped if it cannot be sent.
    pub(crate) fn send(&self, severity: Severity, msg: &str) {
        let mut state = lock(&self.state);
        if state.unreported > 0 {
            let notice = format!(
                "warden: {} log messages dropped while syslog was unreachable",
                state.unreported
            );
            if !self.deliver(&mut state.conn, Severity::LOG_WARNING, &notice) {
                self.count_dropped(&mut state);
                return;
            }
            state.unreported = 0;
        }
        if !self.deliver(&mut state.conn, severity, msg) {
            self.count_dropped(&mut state);
        }
    }

    /// Messages lost so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Flushes a stream connection's buffer (datagrams are never buffered).
    pub(crate) fn flush(&self) {
        if let Some(conn) = lock(&self.state).conn.as_mut() {
            let _ = io::Write::flush(&mut conn.backend);
        }
    }

    fn count_dropped(&self, state: &mut State) {
        state.unreported += 1;
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends on the current connection; on a broken one, reconnects and sends once more.
    /// Returns whether the message went out.
    fn deliver(&self, conn: &mut Option<Connection>, severity: Severity, msg: &str) -> bool {
        if let Some(c) = conn.as_mut() {
            match c.formatter.format(&mut c.backend, severity, msg) {
                Ok(()) => return true,
                // The daemon is there but its queue is full: a new connection would wait on the
                // same queue, so do not retry. A stream may have taken part of the message, which
                // would garble the next one: that connection is let go.
                Err(e) if is_timeout(&e) => {
                    if matches!(c.backend, LoggerBackend::UnixStream(_)) {
                        *conn = None;
                    }
                    return false;
                }
                Err(_) => {}
            }
        }
        *conn = connect(&self.formatter, &self.path).ok();
        let Some(c) = conn.as_mut() else {
            return false;
        };
        if c.formatter.format(&mut c.backend, severity, msg).is_ok() {
            true
        } else {
            *conn = None;
            false
        }
    }
}

/// Resolves a facility name accepted by the configuration (`"daemon"`, `"local0"`, ...).
fn parse_facility(name: &str) -> Result<Facility> {
    let invalid = || Error::Invalid {
        what: "syslog facility",
        reason: format!("{name:?} is not one of {}", SYSLOG_FACILITIES.join(", ")),
    };
    if !SYSLOG_FACILITIES.contains(&name) {
        return Err(invalid());
    }
    Facility::from_str(name).map_err(|()| invalid())
}

/// Connects to the syslog socket at `path` (datagram, or stream if that is what listens there)
/// with a bounded send time.
fn connect(formatter: &Formatter3164, path: &Path) -> io::Result<Connection> {
    let conn = ::syslog::unix_custom(formatter.clone(), path)
        .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e.to_string()))?;
    match &conn.backend {
        LoggerBackend::Unix(sock) => sock.set_write_timeout(Some(SEND_TIMEOUT))?,
        LoggerBackend::UnixStream(stream) => {
            stream.get_ref().set_write_timeout(Some(SEND_TIMEOUT))?
        }
        _ => {}
    }
    Ok(conn)
}

/// Whether a send failed because the receiver's queue stayed full for [`SEND_TIMEOUT`].
fn is_timeout(e: &::syslog::Error) -> bool {
    match e {
        ::syslog::Error::Write(e) | ::syslog::Error::Io(e) => {
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        }
        ::syslog::Error::Initialization(_) => false,
    }
}
