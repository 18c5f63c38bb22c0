//! `RLIMIT_NOFILE` for an epoll daemon: its own soft limit raised to the hard limit, its
//! children's left as they were.
//!
//! The soft limit of 1024 that most systems (and systemd services) start with exists for
//! `select(2)`, whose `fd_set` cannot hold descriptor 1024 or above. A program that uses epoll has
//! no such bound, and systemd.exec(5) (`LimitNOFILE=`) recommends that it raise its soft limit to
//! the hard limit at start-up — otherwise a daemon holding one socket per client runs out of
//! descriptors at a thousand clients while the administrator's hard limit allows far more.
//!
//! The raised soft limit must not leak into the programs the daemon starts: a `select`-based
//! program misbehaves (memory corruption, not an error) once it gets a descriptor above 1023. So
//! [`raise_nofile`] records the limits it found, and the supervisor starts every worker with that
//! original soft limit again ([`worker_nofile`]); a program's own `limits = { nofile = N }` is
//! applied after it and wins.
//!
//! The record is process-wide, written once: it describes the process, like the limit itself.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::error::{Error, Result};

/// The limits found by the first [`raise_nofile`] that changed anything: (soft, hard).
static ORIGINAL: OnceLock<(u64, u64)> = OnceLock::new();

/// What [`raise_nofile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileRaise {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now (the hard limit, unless it was already there).
    pub after: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (see the module documentation).
///
/// Call it once the process is the daemon and before it opens its sockets. Workers the
/// [`Supervisor`](crate::supervisor::Supervisor) starts afterwards get the soft limit found here;
/// processes forked in other ways (pools, [`crate::fork`]) inherit the raised one.
pub fn raise_nofile() -> Result<NofileRaise> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Error::sys("getrlimit", e))?;
    if soft >= hard {
        return Ok(NofileRaise {
            before: soft,
            after: soft,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| Error::sys("setrlimit", e))?;
    let _ = ORIGINAL.set((soft, hard));
    Ok(NofileRaise {
        before: soft,
        after: hard,
    })
}

/// The `RLIMIT_NOFILE` (soft, hard) a worker starts with: the soft limit [`raise_nofile`] found
/// and this process's hard limit now (an operator may have lowered it since, with `prlimit`; a
/// worker cannot raise it back), or `None` when `raise_nofile` changed nothing (the worker then
/// inherits this process's own).
pub fn worker_nofile() -> Option<(u64, u64)> {
    let (soft, _) = *ORIGINAL.get()?;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    Some((soft.min(hard), hard))
}
