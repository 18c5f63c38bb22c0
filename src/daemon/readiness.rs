//! The readiness handshake between launcher and daemon, and the systemd notify protocol.
//!
//! The launcher creates a `CLOEXEC` pipe before forking and blocks on its read end; the daemon
//! writes line messages into the write end:
//!
//! | message | meaning |
//! |---|---|
//! | `R` | ready: the launcher exits 0 |
//! | `E<text>` | failed: the launcher prints the text and exits non-zero |
//! | `W<text>` | a warning: the launcher prints `warning: <text>` to its stderr and goes on waiting |
//!
//! End of file before `R` means the daemon died (its descriptor closed with it). The read is
//! bounded by a deadline (none when the timeout is too large to add to the clock). The launcher
//! learns the daemon's pid from the fork itself (`sys::detach`), not from the pipe.
//!
//! [`Notifier`] speaks `sd_notify(3)` to `$NOTIFY_SOCKET`, which is read once, before threads.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How the launcher's wait for the daemon's readiness ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadyWait {
    /// `R` arrived.
    Ready,
    /// `E<text>` arrived.
    Failed(String),
    /// End of file before `R`.
    Died,
    /// The deadline passed.
    TimedOut,
}

/// The daemon's end of the pipe. Only the process that created it writes: a child the daemon
/// forks before [`super::DaemonHandle::ready`] inherits a copy of the handle, and whatever that
/// child does with it (drop it on return from `main`, panic) must not speak for the daemon.
#[derive(Debug)]
pub(crate) struct ReadyWriter {
    file: std::fs::File,
    owner: u32,
}

impl ReadyWriter {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        let file = std::fs::File::from(fd);
        super::mark_private(file.as_raw_fd());
        ReadyWriter {
            file,
            owner: std::process::id(),
        }
    }

    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    fn send(&mut self, line: &str) {
        if std::process::id() != self.owner {
            return;
        }
        // A vanished launcher (killed by its user) is not the daemon's problem: EPIPE is ignored
        // (`SIGPIPE` is caught from the start of the daemon, see `sys::catch_sigpipe`).
        let _ = self.file.write_all(line.as_bytes());
    }

    pub(crate) fn warn(&mut self, text: &str) {
        let one_line = text.replace('\n', " / ");
        self.send(&format!("W{one_line}\n"));
    }

    pub(crate) fn ready(mut self) {
        self.send("R\n");
    }

    pub(crate) fn fail(mut self, reason: &str) {
        let one_line = reason.replace('\n', " / ");
        self.send(&format!("E{one_line}\n"));
    }
}

impl Drop for ReadyWriter {
    fn drop(&mut self) {
        // Before the descriptor closes and its number can be reused.
        super::unmark_private(self.file.as_raw_fd());
    }
}

/// Reads the daemon's messages until a verdict or `timeout`.
pub(crate) fn wait(fd: OwnedFd, timeout: Duration) -> ReadyWait {
    // `ready_timeout` comes from a configuration file: a huge one means "no deadline", not a
    // panic of the launcher with the daemon left running.
    let deadline = Instant::now().checked_add(timeout);
    let mut file = std::fs::File::from(fd);
    let mut buf = Vec::new();
    loop {
        // Handle every complete line received so far.
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match line.as_bytes().first() {
                Some(b'R') => return ReadyWait::Ready,
                Some(b'E') => return ReadyWait::Failed(line[1..].to_string()),
                Some(b'W') => eprintln!("warning: {}", &line[1..]),
                _ => {}
            }
        }
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        };
        if left.is_zero() {
            return ReadyWait::TimedOut;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ReadyWait::Died,
        }
        let mut chunk = [0u8; 4096];
        match file.read(&mut chunk) {
            Ok(0) => return ReadyWait::Died,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return ReadyWait::Died,
        }
    }
}

/// A sender of `sd_notify(3)` messages to the service manager named by `$NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct Notifier {
    path: PathBuf,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Call it once,
    /// before any thread exists, then remove the variable so children do not inherit it.
    pub fn from_env() -> Option<Notifier> {
        let v = std::env::var_os("NOTIFY_SOCKET")?;
        if v.is_empty() {
            return None;
        }
        Some(Notifier { path: v.into() })
    }

    /// A notifier for an explicit socket path (`@name` for the abstract namespace).
    pub fn new(path: impl Into<PathBuf>) -> Notifier {
        Notifier { path: path.into() }
    }

    /// The socket's path (`@name` for the abstract namespace).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Sends one datagram of newline-separated `KEY=VALUE` assignments, e.g. `"READY=1"`.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let sock = UnixDatagram::unbound()?;
        let bytes = self.path.as_os_str().as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(messages: &[u8], close: bool, timeout_ms: u64) -> ReadyWait {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(messages).unwrap();
        if close {
            drop(w);
            wait(r, Duration::from_millis(timeout_ms))
        } else {
            let o = wait(r, Duration::from_millis(timeout_ms));
            drop(w);
            o
        }
    }

    #[test]
    fn handshake_verdicts() {
        assert_eq!(run(b"R\n", true, 1000), ReadyWait::Ready);
        assert_eq!(
            run(b"Ecannot chdir\n", true, 1000),
            ReadyWait::Failed("cannot chdir".into())
        );
        assert_eq!(run(b"", true, 1000), ReadyWait::Died);
        assert_eq!(run(b"", false, 50), ReadyWait::TimedOut);
        // A line split across writes and an unknown line before the verdict.
        assert_eq!(run(b"X\nR", true, 1000), ReadyWait::Died);
        assert_eq!(run(b"X\nR\n", true, 1000), ReadyWait::Ready);
        // A warning does not end the wait.
        assert_eq!(run(b"Wno syslog\nR\n", true, 1000), ReadyWait::Ready);
    }

    #[test]
    fn a_timeout_beyond_the_clock_means_no_deadline() {
        // `ready_timeout = 18446744073709551615` once made `Instant + Duration` panic.
        assert_eq!(run(b"R\n", true, u64::MAX), ReadyWait::Ready);
        assert_eq!(
            wait(
                {
                    let (r, w) = nix::unistd::pipe().unwrap();
                    drop(w);
                    r
                },
                Duration::MAX
            ),
            ReadyWait::Died
        );
    }

    #[test]
    fn notifier_sends_datagrams() {
        let dir = std::env::temp_dir().join(format!("warden-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        Notifier::new(&dir).notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&dir);
    }
}
