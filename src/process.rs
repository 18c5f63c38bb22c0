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
/// The child should leave through [`crate::exit`] or `std::process::exit`, like any process.
pub fn fork() -> Result<Forked> {
    Ok(match sys::fork()? {
        sys::Fork::Parent(pid) => Forked::Parent(pid.as_raw()),
        sys::Fork::Child => Forked::Child,
    })
}
