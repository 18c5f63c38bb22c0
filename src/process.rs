//! Process creation offered to library users: a `fork` that refuses to lose threads.

use crate::error::Result;
use crate::sys;

/// Who we are after [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The original process; the child has this pid.
    Parent(i32),
    /// The new process.
    Child,
}

/// `fork(2)`, refused with [`Error::MultiThreaded`](crate::Error::MultiThreaded) unless this
/// process has exactly one thread (checked through `/proc/self/task`).
///
/// Exit hooks registered before the fork do not run in the child: they belong to the parent.
/// Nor does the child keep the daemon's readiness pipe or pidfile: if it outlives the daemon, a
/// new one can start, and nothing it does before [`crate::DaemonHandle::ready`] (returning from
/// `main`, panicking) can tell the launcher that the daemon failed.
/// The child should leave through [`crate::exit`] or `std::process::exit`, like any process.
pub fn fork() -> Result<Forked> {
    Ok(match sys::fork()? {
        sys::Fork::Parent(pid) => Forked::Parent(pid.as_raw()),
        sys::Fork::Child => {
            // The readiness pipe and the pidfile lock are the daemon's alone.
            sys::point_at_null(&crate::daemon::private_fds());
            Forked::Child
        }
    })
}
