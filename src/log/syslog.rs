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

use super::SYSLOG_FACILITIES;
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
    /// Why the connection made when the sink was built failed, if it did.
    first_error: Option<io::Error>,
}

/// What the lock protects.
struct State {
    /// `None` after a failed reconnect: the next message tries again.
    conn: Option<Connection>,
    /// Messages lost since the last one that got through, announced when one gets through again.
    unreported: u64,
    /// After a failure, messages are dropped without trying until then: a syslog daemon that is
    /// gone or not reading costs each caller nothing, not a send timeout per message.
    quiet_until: Option<std::time::Instant>,
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
        let (conn, first_error) = match connect(&formatter, &path) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e)),
        };
        Ok(SyslogSink {
            formatter,
            path,
            state: Mutex::new(State {
                conn,
                unreported: 0,
                quiet_until: None,
            }),
            dropped: AtomicU64::new(0),
            first_error,
        })
    }

    /// Why the first connection, made when the sink was built, failed (`None` if it did not):
    /// until the socket can be reached, every message is dropped.
    pub(crate) fn unreachable(&self) -> Option<String> {
        self.first_error.as_ref().map(|e| {
            format!(
                "syslog socket {} cannot be reached ({e}): log messages are dropped until it can",
                self.path.display()
            )
        })
    }

    /// Sends one message, reconnecting once if needed; counts it as dropped if it cannot be sent.
    pub(crate) fn send(&self, severity: Severity, msg: &str) {
        let mut state = lock(&self.state);
        if state
            .quiet_until
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            self.count_dropped(&mut state, Delivery::Failed);
            return;
        }
        state.quiet_until = None;
        if state.unreported > 0 {
            let notice = format!(
                "warden: {} log messages dropped while syslog was unreachable",
                state.unreported
            );
            match self.deliver(&mut state.conn, Severity::LOG_WARNING, &notice) {
                Delivery::Sent => state.unreported = 0,
                failed => {
                    self.count_dropped(&mut state, failed);
                    return;
                }
            }
        }
        match self.deliver(&mut state.conn, severity, msg) {
            Delivery::Sent => {}
            failed => self.count_dropped(&mut state, failed),
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

    fn count_dropped(&self, state: &mut State, why: Delivery) {
        state.unreported += 1;
        self.dropped.fetch_add(1, Ordering::Relaxed);
        // A daemon that is there but not reading made this call wait SEND_TIMEOUT: do not make
        // every following call wait too. (A missing daemon fails at once and costs nothing.)
        if why == Delivery::TimedOut {
            state.quiet_until = Some(std::time::Instant::now() + RETRY_AFTER);
        }
    }

    /// Sends on the current connection; on a broken one, reconnects and sends once more.
    /// Returns whether the message went out.
    fn deliver(&self, conn: &mut Option<Connection>, severity: Severity, msg: &str) -> Delivery {
        if let Some(c) = conn.as_mut() {
            match c.formatter.format(&mut c.backend, severity, msg) {
                Ok(()) => return Delivery::Sent,
                // The daemon is there but its queue is full: a new connection would wait on the
                // same queue, so do not retry. A stream may have taken part of the message, which
                // would garble the next one: that connection is let go.
                Err(e) if is_timeout(&e) => {
                    if matches!(c.backend, LoggerBackend::UnixStream(_)) {
                        *conn = None;
                    }
                    return Delivery::TimedOut;
                }
                Err(_) => {}
            }
        }
        *conn = connect(&self.formatter, &self.path).ok();
        let Some(c) = conn.as_mut() else {
            return Delivery::Failed;
        };
        match c.formatter.format(&mut c.backend, severity, msg) {
            Ok(()) => Delivery::Sent,
            Err(e) => {
                *conn = None;
                if is_timeout(&e) {
                    Delivery::TimedOut
                } else {
                    Delivery::Failed
                }
            }
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

/// How one message fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    /// No daemon, or the connection broke: fails fast, retried with the next message.
    Failed,
    /// The daemon's queue stayed full for [`SEND_TIMEOUT`].
    TimedOut,
}

/// How long messages are dropped unsent after a send timed out before syslog is tried again.
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Connects to the syslog socket at `path` — a datagram socket, or a stream if that is what
/// listens there — without ever blocking: a stream listener whose backlog is full makes a
/// blocking `connect(2)` wait for good, so the stream is connected non-blocking (failing at once
/// with `EAGAIN`) and only then given a bounded send time.
fn connect(formatter: &Formatter3164, path: &Path) -> io::Result<Connection> {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let dgram = UnixDatagram::unbound()?;
    match dgram.connect(path) {
        Ok(()) => {
            dgram.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(::syslog::Logger::new(
                LoggerBackend::Unix(dgram),
                formatter.clone(),
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, socket};
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(io::Error::from)?;
            let addr = UnixAddr::new(path).map_err(io::Error::from)?;
            nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
                .map_err(io::Error::from)?;
            let stream = UnixStream::from(fd);
            stream.set_nonblocking(false)?;
            stream.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(::syslog::Logger::new(
                LoggerBackend::UnixStream(io::BufWriter::new(stream)),
                formatter.clone(),
            ))
        }
        Err(e) => Err(e),
    }
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
