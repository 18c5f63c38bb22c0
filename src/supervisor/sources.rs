//! What each `epoll` token stands for: one map from [`Token`] to [`Source`], like the pool
//! engine's `owners`, instead of token ranges.
//!
//! It owns token allocation and (de)registration for the supervisor's own descriptors; the part
//! that owns a descriptor (capture's pipes, spawning's exec reports) keeps its data under the
//! same token. The control server numbers its connections itself, from [`FIRST_CONN`] up, and
//! answers [`ControlServer::conn_of`](crate::control::server::ControlServer::conn_of) for them;
//! [`Sources::get`] is the one place that asks it. It does not read or act on any descriptor.

use std::collections::HashMap;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::control::server::{ConnId, ControlServer};
use crate::error::{Error, Result};

/// The signal self-pipe.
pub(crate) const SIGNALS: Token = Token(0);
/// The notify socket.
pub(crate) const NOTIFY: Token = Token(1);
/// The control socket's listener.
pub(crate) const CONTROL: Token = Token(2);
/// The guard process's socket.
pub(crate) const GUARD: Token = Token(3);
/// The metrics endpoint's listener.
pub(crate) const METRICS: Token = Token(4);
/// The inotify descriptor that watches instances' `cgroup.events` (cgroup mode).
pub(crate) const CGROUPS: Token = Token(5);
/// Control connections get tokens from here up (numbered by the control server).
pub(crate) const FIRST_CONN: usize = 1 << 40;
/// The first token [`Sources::add`] hands out.
const FIRST_DYNAMIC: usize = 16;

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The signal self-pipe.
    Signals,
    /// The notify socket.
    Notify,
    /// The control socket's listener.
    Control,
    /// A control connection.
    Conn(ConnId),
    /// The guard process's socket.
    Guard,
    /// A worker's exec report (the data is in the supervisor's `exec_reports`).
    ExecReport,
    /// A worker's stdout or stderr pipe (the data is in [`Capture`](super::capture::Capture)).
    Pipe,
    /// A health check's socket, or an exec check's output pipe (the data is in
    /// [`Checks`](super::health::Checks)).
    Check,
    /// The metrics endpoint's listener.
    Metrics,
    /// A metrics connection (the data is in the metrics server).
    MetricsConn,
    /// The inotify descriptor of the instances' cgroups (in [`Groups`](super::groups::Groups)).
    Cgroups,
}

/// The token map.
pub(crate) struct Sources {
    map: HashMap<Token, Source>,
    next: usize,
}

impl Sources {
    /// The fixed tokens, known from the start (registered by their owners).
    pub(crate) fn new() -> Sources {
        let map = HashMap::from([
            (SIGNALS, Source::Signals),
            (NOTIFY, Source::Notify),
            (CONTROL, Source::Control),
            (GUARD, Source::Guard),
            (METRICS, Source::Metrics),
            (CGROUPS, Source::Cgroups),
        ]);
        Sources {
            map,
            next: FIRST_DYNAMIC,
        }
    }

    /// What `token` stands for, if anything still does.
    pub(crate) fn get(&self, token: Token, control: Option<&ControlServer>) -> Option<Source> {
        if let Some(&s) = self.map.get(&token) {
            return Some(s);
        }
        control?.conn_of(token).map(Source::Conn)
    }

    /// Registers `fd` for reading under a new token standing for `source`.
    pub(crate) fn add(&mut self, registry: &Registry, fd: RawFd, source: Source) -> Result<Token> {
        self.add_with(registry, fd, source, Interest::READABLE)
    }

    /// Registers `fd` for `interest` under a new token standing for `source`.
    pub(crate) fn add_with(
        &mut self,
        registry: &Registry,
        fd: RawFd,
        source: Source,
        interest: Interest,
    ) -> Result<Token> {
        let token = Token(self.next);
        self.next += 1;
        registry
            .register(&mut SourceFd(&fd), token, interest)
            .map_err(|e| Error::os("epoll_ctl", e))?;
        self.map.insert(token, source);
        Ok(token)
    }

    /// Deregisters `fd` and forgets its token.
    pub(crate) fn remove(&mut self, registry: &Registry, token: Token, fd: RawFd) {
        let _ = registry.deregister(&mut SourceFd(&fd));
        self.map.remove(&token);
    }
}
