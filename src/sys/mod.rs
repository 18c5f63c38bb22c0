//! The only place for `unsafe` and raw libc in warden.
//!
//! Thin wrappers named after the system call they make, taking and returning typed values, with
//! `EINTR` handled once here. They hold no state and do not log. Wrappers that may run in a forked
//! child before `exec` (see [`pre_exec_child`]) neither allocate nor lock.
//!
//! Forking is only offered through [`fork`], which refuses when the process has more than one
//! thread: `fork(2)` copies only the calling thread, so a lock held by another thread (the
//! allocator's, stdout's, a logger's) would stay locked forever in the child.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;

use nix::errno::Errno;
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
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork(2)`, refused with [`Error::MultiThreaded`] unless this process has exactly one thread.
///
/// In a single-threaded process the child is an exact copy with no lock held by a vanished
/// thread, so it may allocate and use std as usual.
pub fn fork() -> Result<Fork, Error> {
    let threads = thread_count().map_err(|e| Error::io("cannot read", "/proc/self/task", e))?;
    if threads != 1 {
        return Err(Error::MultiThreaded(threads));
    }
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

/// Resets the signal mask to empty and every catchable signal's disposition to `SIG_DFL`.
///
/// A daemon inherits both from whoever launched it (a shell that ignores `SIGHUP` under `nohup`,
/// a supervisor that blocks `SIGCHLD`); daemon(7) step 2 and 3 say to reset them. Real-time
/// signals reserved by the C library make `sigaction` fail with `EINVAL`; those are skipped.
pub fn reset_signals() -> Result<(), Error> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| Error::sys("sigprocmask", e))?;
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags) and
        // `sa_sigaction = SIG_DFL` installs no handler, so no Rust code can be called from it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            // EINVAL for signals the C library reserves; nothing to reset there.
            libc::sigaction(signo, &action, std::ptr::null_mut());
        }
    }
    Ok(())
}

/// Closes every file descriptor from 3 upwards except those in `keep`.
///
/// Uses `close_range(2)` over the gaps between kept descriptors, falling back to walking
/// `/proc/self/fd` on kernels without it (before 5.9).
pub fn close_fds_except(keep: &[RawFd]) -> Result<(), Error> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: u32 = 3;
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    for &fd in &keep {
        let fd = fd as u32;
        if fd > from {
            ranges.push((from, fd - 1));
        }
        from = fd + 1;
    }
    ranges.push((from, u32::MAX));
    for (first, last) in ranges {
        // SAFETY: close_range only closes descriptors; no memory is passed. Descriptors owned by
        // Rust objects in this process are exactly those in `keep` (the caller's contract, and the
        // daemon owns nothing else at this point), so nothing is closed behind an owner's back.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if rc == -1 {
            let errno = Errno::last();
            if errno == Errno::ENOSYS {
                return close_fds_by_listing(&keep);
            }
            return Err(Error::sys("close_range", errno));
        }
    }
    Ok(())
}

fn close_fds_by_listing(keep: &[RawFd]) -> Result<(), Error> {
    let entries = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::io("cannot list", "/proc/self/fd", e))?;
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: as in `close_fds_except`; the directory iterator's own descriptor is
            // already closed (the iterator was consumed), and EBADF is harmless.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

fn require_single_thread() -> Result<(), Error> {
    let threads = thread_count().map_err(|e| Error::io("cannot read", "/proc/self/task", e))?;
    if threads != 1 {
        return Err(Error::MultiThreaded(threads));
    }
    Ok(())
}

/// `setenv(3)`, only while single-threaded (another thread could be reading the environment).
pub fn setenv(key: &OsStr, value: &OsStr) -> Result<(), Error> {
    require_single_thread()?;
    // SAFETY: the process has one thread (checked above), so no other thread reads or writes
    // the environment concurrently.
    unsafe { std::env::set_var(key, value) };
    Ok(())
}

/// `unsetenv(3)`, only while single-threaded.
pub fn unsetenv(key: &OsStr) -> Result<(), Error> {
    require_single_thread()?;
    // SAFETY: single-threaded, as in `setenv`.
    unsafe { std::env::remove_var(key) };
    Ok(())
}

/// `clearenv(3)` keeping the variables named in `keep`, only while single-threaded.
pub fn clearenv_except(keep: &[&str]) -> Result<(), Error> {
    require_single_thread()?;
    for (key, _) in std::env::vars_os() {
        if !keep.iter().any(|k| OsStr::new(k) == key) {
            // SAFETY: single-threaded, as in `setenv`.
            unsafe { std::env::remove_var(&key) };
        }
    }
    Ok(())
}
