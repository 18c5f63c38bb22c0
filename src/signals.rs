//! OS signals → typed events, through `signal-hook`.
//!
//! The handlers only record the signal and write a byte to a self-pipe (signal-hook's
//! `SignalDelivery`); every decision happens in the loop that reads [`Signals`]. The read end is
//! a pollable descriptor ([`Signals::as_fd`]) so any event loop can wait on it, and
//! [`Signals::wait`] / the blocking iterator serve a plain loop.
//!
//! Ordering rule: create [`Signals`] only after the final fork. The daemon sequence resets every
//! disposition to default, which would silently uninstall handlers registered earlier.
//!
//! `SIGPIPE` is caught by a handler that does nothing rather than set to `SIG_IGN`: an ignored
//! disposition is inherited across `exec` by every child, while a caught one is reset to the
//! default there.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use signal_hook::consts::signal::*;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use crate::error::{Error, Result};

/// Puts `SIGPIPE` back to its default disposition in a command-line program (the Rust runtime
/// ignores it): when the program's output is a pipe whose reader has gone (`prog | head -1`),
/// the program then ends quietly, as Unix filters do, instead of `println!` panicking on
/// `EPIPE`. Not for a daemon: [`crate::Daemon::start`] and [`Signals`] catch `SIGPIPE` there.
pub fn default_sigpipe() {
    crate::sys::default_sigpipe();
}

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignalEvent {
    /// Stop gracefully: stop workers with their stop signal and grace period, run exit hooks.
    GracefulShutdown,
    /// Stop now: kill workers, run exit hooks. A second TERM or INT during a graceful shutdown
    /// becomes this.
    FastShutdown,
    /// Re-read the configuration.
    Reload,
    /// Reopen log files (after rotation).
    ReopenLogs,
    /// One worker more.
    AddWorker,
    /// One worker less.
    RemoveWorker,
    /// A child changed state: reap.
    ChildExited,
    /// Replace the running image with the binary now at its path, in place (`SIGUSR2`; see
    /// `warden upgrade`).
    Upgrade,
    /// A signal mapped to nothing in particular, delivered as is.
    Other(i32),
}

/// What to do with one signal in a [`SignalMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// Deliver this event.
    Event(SignalEvent),
    /// Catch and drop it (used for `SIGPIPE`).
    Ignore,
}

/// Which signal means what. [`SignalMap::default`] is warden's documented map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMap {
    map: HashMap<i32, SignalAction>,
}

impl Default for SignalMap {
    /// TERM, INT → graceful shutdown (a second one → fast); QUIT → fast shutdown; HUP → reload;
    /// USR1 → reopen logs; USR2 → upgrade in place; TTIN/TTOU → one worker more/less; CHLD → reap; PIPE ignored.
    fn default() -> Self {
        use SignalAction::*;
        use SignalEvent::*;
        let map = [
            (SIGTERM, Event(GracefulShutdown)),
            (SIGINT, Event(GracefulShutdown)),
            (SIGQUIT, Event(FastShutdown)),
            (SIGHUP, Event(Reload)),
            (SIGUSR1, Event(ReopenLogs)),
            (SIGUSR2, Event(Upgrade)),
            (SIGTTIN, Event(AddWorker)),
            (SIGTTOU, Event(RemoveWorker)),
            (SIGCHLD, Event(ChildExited)),
            (SIGPIPE, Ignore),
        ];
        SignalMap {
            map: map.into_iter().collect(),
        }
    }
}

impl SignalMap {
    /// An empty map.
    pub fn empty() -> SignalMap {
        SignalMap {
            map: HashMap::new(),
        }
    }

    /// Maps `signal` to `action`, replacing what it meant before.
    ///
    /// `SIGKILL`, `SIGSTOP` and the signals signal-hook forbids (`SIGSEGV`, `SIGBUS`, `SIGILL`,
    /// `SIGFPE`) are rejected when the map is installed.
    pub fn set(mut self, signal: i32, action: SignalAction) -> Self {
        self.map.insert(signal, action);
        self
    }

    /// Removes `signal` from the map (its disposition stays the default).
    pub fn unset(mut self, signal: i32) -> Self {
        self.map.remove(&signal);
        self
    }

    /// What `signal` means in this map.
    pub fn action(&self, signal: i32) -> Option<SignalAction> {
        self.map.get(&signal).copied()
    }
}

/// A source of [`SignalEvent`]s: a pollable descriptor plus the map.
pub struct Signals {
    delivery: SignalDelivery<UnixStream, SignalOnly>,
    map: SignalMap,
    shutting_down: bool,
    buffer: VecDeque<SignalEvent>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("fd", &self.as_raw_fd())
            .field("map", &self.map)
            .field("shutting_down", &self.shutting_down)
            .finish()
    }
}

impl Signals {
    /// Installs handlers for warden's default map.
    pub fn new() -> Result<Signals> {
        Signals::with_map(SignalMap::default())
    }

    /// Installs handlers for every signal in `map`.
    pub fn with_map(map: SignalMap) -> Result<Signals> {
        let (read, write) = UnixStream::pair().map_err(|e| Error::os("socketpair", e))?;
        read.set_nonblocking(true)
            .map_err(|e| Error::os("fcntl", e))?;
        let mut signals: Vec<i32> = map.map.keys().copied().collect();
        signals.sort_unstable();
        let delivery =
            SignalDelivery::with_pipe(read, write, SignalOnly, &signals).map_err(|e| {
                Error::Invalid {
                    what: "signal map",
                    reason: e.to_string(),
                }
            })?;
        Ok(Signals {
            delivery,
            map,
            shutting_down: false,
            buffer: VecDeque::new(),
        })
    }

    /// The events that arrived since the last call, without blocking. Several arrivals of one
    /// signal between two calls count once.
    pub fn pending(&mut self) -> Vec<SignalEvent> {
        let mut signals: Vec<i32> = self.delivery.pending().collect();
        // Shutdown first, so that a TERM arriving with a HUP does not reload a dying daemon.
        signals.sort_by_key(|s| match *s {
            SIGQUIT => 0,
            SIGTERM | SIGINT => 1,
            _ => 2,
        });
        let mut events = Vec::with_capacity(signals.len());
        for signo in signals {
            let event = match self.map.action(signo) {
                Some(SignalAction::Ignore) => continue,
                Some(SignalAction::Event(e)) => e,
                None => SignalEvent::Other(signo),
            };
            let event = match event {
                SignalEvent::GracefulShutdown if self.shutting_down => SignalEvent::FastShutdown,
                e => e,
            };
            if matches!(
                event,
                SignalEvent::GracefulShutdown | SignalEvent::FastShutdown
            ) {
                self.shutting_down = true;
            }
            if !events.contains(&event) {
                events.push(event);
            }
        }
        events
    }

    /// Raises again, at the calling thread, every signal that arrived and has not been read
    /// yet; returns their numbers. For a caller about to `execve` with those signals blocked: a
    /// pending signal survives the exec, and the new image handles it once it unblocks them,
    /// instead of it dying with this image's self-pipe.
    pub fn raise_pending_again(&mut self) -> Vec<i32> {
        let signals: Vec<i32> = self.delivery.pending().collect();
        for &signo in &signals {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(signo) {
                let _ = nix::sys::signal::raise(sig);
            }
        }
        signals
    }

    /// Blocks until at least one event arrives or `timeout` passes (`None`: forever).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Vec<SignalEvent> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let events = self.pending();
            if !events.is_empty() {
                return events;
            }
            let ms = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Vec::new();
                    }
                    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                // poll on our own socket fails only with ENOMEM: back off instead of spinning.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Tells the source that a shutdown has begun by other means (a control command), so that a
    /// following TERM or INT escalates to a fast shutdown.
    pub fn note_shutdown(&mut self) {
        self.shutting_down = true;
    }
}

impl AsFd for Signals {
    /// The self-pipe's read end: readable when events are pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.delivery.get_read().as_fd()
    }
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.delivery.get_read().as_raw_fd()
    }
}

impl Iterator for Signals {
    type Item = SignalEvent;

    /// Blocks until the next event. Never returns `None`.
    fn next(&mut self) -> Option<SignalEvent> {
        while self.buffer.is_empty() {
            let events = self.wait(None);
            self.buffer.extend(events);
        }
        self.buffer.pop_front()
    }
}
