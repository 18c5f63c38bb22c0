//! The control socket's client side, used by the `warden` command.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Command, Reply, Request, VERSION};

/// Why a request got no final reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (no daemon, no permission).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-way.
    #[error("control connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// No final reply within the timeout. The daemon carries on with the request; `waiting` is
    /// what it last said it was waiting for.
    #[error("timed out after {after:?}{}", waiting.as_ref().map(|w| format!(" ({w}); the daemon carries on")).unwrap_or_default())]
    Timeout {
        /// The timeout.
        after: Duration,
        /// The last progress line, if any (`waiting for web[0] (backoff)`).
        waiting: Option<String>,
    },
    /// The daemon closed the connection without a final reply.
    #[error("the daemon closed the connection without answering")]
    Closed,
    /// The daemon sent something that is not protocol.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A connect that gave up waiting for room in a full backlog ([`Client::connect_timeout`]):
    /// somebody holds the socket but accepts nothing (a stopped or flooded daemon).
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, ClientError::Connect { source, .. } if source.kind() == std::io::ErrorKind::TimedOut)
    }

    /// The connection was taken but dropped without an answer (closed, reset): whoever held the
    /// listener is gone — a killed daemon's copy, a worker forked but not yet exec'd, holds it
    /// for an instant. Nobody serves there.
    pub fn is_dropped_unanswered(&self) -> bool {
        match self {
            ClientError::Closed => true,
            ClientError::Io(e) => matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)),
            _ => false,
        }
    }
}

/// A connection to a running warden.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the control socket at `path`.
    ///
    /// Like `connect(2)` on a Unix stream socket, this waits while the listener's backlog is
    /// full (a daemon that is stopped, or flooded): use [`Client::connect_timeout`] to bound it.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// Connects to the control socket at `path`, waiting at most `timeout` for room in the
    /// listener's backlog. A non-blocking `connect(2)` on a Unix socket fails with `EAGAIN`
    /// (never `EINPROGRESS`) while the backlog is full, and nothing signals when room appears:
    /// it is retried every 10 ms until the deadline, then fails with `ETIMEDOUT`.
    pub fn connect_timeout(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
        let failed = |source: std::io::Error| ClientError::Connect {
            path: path.display().to_string(),
            source,
        };
        let addr = UnixAddr::new(path).map_err(|e| failed(e.into()))?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| failed(e.into()))?;
        let deadline = Instant::now() + timeout;
        loop {
            match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
                Ok(()) => break,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    return Err(failed(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the daemon accepts no connection (its backlog stayed full for {timeout:?})"
                        ),
                    )));
                }
                Err(e) => return Err(failed(e.into())),
            }
        }
        let stream = UnixStream::from(fd);
        stream.set_nonblocking(false).map_err(failed)?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// The process that answers on this connection — the daemon — from `SO_PEERCRED`, held by a
    /// pidfd so that a signal can reach no other process, however late it is sent.
    ///
    /// Call it once the daemon has answered a request on this connection: the pid is then the
    /// daemon's, and the pidfd is opened while the connection is checked still open on the
    /// daemon's side (a daemon that exited in between closes it, and its pid may be reused).
    /// This is how `warden stop` stops a daemon whose pidfile was deleted.
    pub fn daemon_process(&self) -> std::io::Result<DaemonProcess> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let cred =
            getsockopt(self.reader.get_ref(), PeerCredentials).map_err(std::io::Error::from)?;
        let pid = cred.pid();
        let pidfd = crate::sys::pidfd::pidfd_open(pid)?;
        // Still connected after the pidfd was opened: the pidfd is the daemon's.
        let mut pfd = [nix::poll::PollFd::new(
            self.reader.get_ref().as_fd(),
            nix::poll::PollFlags::from_bits_retain(libc::POLLRDHUP),
        )];
        nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).map_err(std::io::Error::from)?;
        if pfd[0].any().unwrap_or(true) {
            return Err(std::io::Error::other(
                "the daemon closed the connection; it may have exited",
            ));
        }
        Ok(DaemonProcess { pid, pidfd })
    }

    /// Sends `command` and waits up to `timeout` for its final reply, passing progress lines to
    /// `progress` as they come.
    pub fn request(
        &mut self,
        command: Command,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        let timed_out = |last: &mut Option<String>| ClientError::Timeout {
            after: timeout,
            waiting: last.take(),
        };
        let mut line = serde_json::to_string(&Request {
            v: VERSION,
            command,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.reader.get_mut().write_all(line.as_bytes())?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(&mut last));
            }
            self.reader.get_mut().set_read_timeout(Some(left))?;
            let mut buf = String::new();
            match self.reader.read_line(&mut buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out(&mut last));
                }
                Err(e) => return Err(e.into()),
            }
            let reply: Reply = serde_json::from_str(buf.trim())
                .map_err(|_| ClientError::Protocol(buf.trim().to_string()))?;
            match reply {
                Reply::Progress { progress: p, .. } => {
                    progress(&p);
                    last = Some(p);
                }
                // Only an `events` request is answered with events: see `Client::events`.
                Reply::Event { .. } => return Err(ClientError::Protocol(buf.trim().to_string())),
                other => return Ok(other),
            }
        }
    }
}

impl Client {
    /// Sends `events` and hands every event to `each` as it comes, for as long as the stream
    /// lasts: returns the final reply (`Done` when warden stopped; `Failed` when the request was
    /// refused), or [`ClientError::Closed`] when the connection ended without one — warden was
    /// killed, or cut this client off for reading too slowly. Waits without a timeout.
    pub fn events(
        &mut self,
        mut each: impl FnMut(super::events::EventRecord),
    ) -> Result<Reply, ClientError> {
        let mut line = serde_json::to_string(&Request {
            v: VERSION,
            command: Command::Events,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.reader.get_mut().write_all(line.as_bytes())?;
        self.reader.get_mut().set_read_timeout(None)?;
        let mut buf = String::new();
        loop {
            buf.clear();
            if self.reader.read_line(&mut buf)? == 0 {
                return Err(ClientError::Closed);
            }
            match serde_json::from_str(buf.trim()) {
                Ok(Reply::Event { event, .. }) => each(*event),
                Ok(Reply::Progress { .. }) => {}
                Ok(other) => return Ok(other),
                Err(_) => return Err(ClientError::Protocol(buf.trim().to_string())),
            }
        }
    }
}

/// The daemon process at the other end of a [`Client`], held by a pidfd
/// ([`Client::daemon_process`]).
#[derive(Debug)]
pub struct DaemonProcess {
    pid: i32,
    pidfd: OwnedFd,
}

impl DaemonProcess {
    /// The process `pid`, held by a pidfd from now on. Only as sure as the caller's knowledge
    /// that `pid` is the daemon: check that *after* this call (e.g. that it still holds the
    /// pidfile's lock), so that the pidfd cannot be a process that reused the pid.
    pub fn open(pid: i32) -> std::io::Result<DaemonProcess> {
        let pidfd = crate::sys::pidfd::pidfd_open(pid)?;
        Ok(DaemonProcess { pid, pidfd })
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal` to it (`pidfd_send_signal(2)`: never to a process that reused its pid).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        crate::sys::pidfd::pidfd_send_signal(self.pidfd.as_fd(), signal as i32)
    }

    /// Waits until it has exited, at most `timeout`: `Ok(true)` once it has.
    pub fn wait_exit(&self, timeout: Duration) -> std::io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut pfd = [nix::poll::PollFd::new(
                self.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
                Ok(n) if n > 0 => return Ok(true),
                Ok(_) if left.is_zero() => return Ok(false),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
