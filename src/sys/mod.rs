//! The only place for `unsafe` and raw libc in warden: thin wrappers named after the system call
//! they make, one file per C header as nix does.
//!
//! They take and return typed values, handle `EINTR` once here, hold no state and do not log.
//! Wrappers that may run in a forked child before `exec` (see [`pre_exec`]) neither allocate nor
//! lock.
//!
//! # Files
//!
//! `signal` (dispositions and mask), `fd` (closing, neutralising, moving descriptors), `env`,
//! `child` (a child's own set-up before `exec`), `socket` (peer groups, `SCM_RIGHTS`), `pidfd`,
//! `pidns` (PID namespaces: a namespace's init, `setns`), `memfd` (the pool's claim words),
//! `spawn` (fork + exec without waiting), `wait` (`waitpid` with the raw status: real-time
//! signals included), `detach` (the daemon's double fork). This file holds
//! `fork`, `_exit` and the single-thread check.
//!
//! # Forking
//!
//! Forking is only offered through [`fork`] (and the daemon's double fork, `detach`, whose caller
//! checks first), which refuses when the process has more than one thread: `fork(2)` copies
//! only the calling thread, so a lock held by another thread (the allocator's, stdout's, a
//! logger's) would stay locked forever in the child. The exception forks from any process
//! because its children make only async-signal-safe system calls until `exec` or `_exit`:
//! [`spawn::spawn_nowait`].
#![allow(unsafe_code)]

mod child;
mod detach;
mod env;
pub(crate) mod fd;
pub(crate) mod memfd;
pub(crate) mod pidfd;
pub(crate) mod pidns;
mod signal;
mod socket;
pub(crate) mod spawn;
pub(crate) mod wait;

pub(crate) use child::{ChildSetup, child_setup, pre_exec};
pub(crate) use detach::{Detached, detach};
pub(crate) use env::{clearenv_except, setenv, unsetenv_all};
pub(crate) use fd::{close_fds_except, neutralise_fds, point_at_null};
pub(crate) use signal::{
    catch_sigpipe, default_sigpipe, ignore_sigpipe, non_default_signals, reset_signals,
};
pub(crate) use socket::{peer_groups, recv_with_fds};

use std::io;

use nix::unistd::Pid;

use crate::error::Error;

/// Who we are after [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The original process; the child has this pid.
    Parent(Pid),
    /// The new process.
    Child,
}

/// How many threads this process has, read from `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork(2)`, refused with [`Error::MultiThreaded`] unless this process has exactly one thread.
///
/// In a single-threaded process the child is an exact copy with no lock held by a vanished
/// thread, so it may allocate and use std as usual.
pub fn fork() -> Result<Fork, Error> {
    require_single_thread()?;
    // SAFETY: the process is single-threaded (checked just above; no thread can be started
    // between the check and the call because this very thread is the only one), so the child
    // inherits no lock held by another thread and may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => Ok(Fork::Child),
        Err(e) => Err(Error::sys("fork", e)),
    }
}

/// `_exit(2)`: leave now, running no atexit handler, no destructor and no stdio flush.
///
/// This is how intermediate fork children and failed daemon steps leave, so that nothing the
/// launcher registered runs twice.
pub fn _exit(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes no pointer; it never returns.
    unsafe { libc::_exit(code) }
}

/// Refuses with [`Error::MultiThreaded`] unless this process has exactly one thread: the one
/// check before every `fork` without `exec` and every change of the environment.
pub(crate) fn require_single_thread() -> Result<(), Error> {
    let threads = thread_count().map_err(|e| Error::io("cannot read", "/proc/self/task", e))?;
    if threads != 1 {
        return Err(Error::MultiThreaded(threads));
    }
    Ok(())
}

/// This thread's `errno`, async-signal-safe (for forked children before `exec`).
pub(super) fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot; reading it is always sound.
    unsafe { *libc::__errno_location() }
}
