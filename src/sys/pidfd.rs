//! Process descriptors (`pidfd_open(2)`, `pidfd_send_signal(2)`): waiting for and signalling a
//! child without the risk of a reused pid. Used by the supervisor, the pool and the client.
//!
//! Like the rest of `sys`, no state and no logging.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` exits.
///
/// The pid must be a child of this process that has not been reaped yet, so that it cannot have
/// been reused by another process (a zombie keeps its pid). The descriptor is close-on-exec.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1; no memory is
        // passed.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
        if rc >= 0 {
            // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) });
        }
        let errno = Errno::last();
        if errno != Errno::EINTR {
            return Err(errno.into());
        }
    }
}

/// `pidfd_send_signal(2)`: sends `signal` to the process `pidfd` refers to. Unlike `kill(2)` by
/// pid, this can never reach another process: once the process has been reaped (by anyone), the
/// call fails with `ESRCH`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor is borrowed, so open for the call; no siginfo is passed (null)
        // and the flags are 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let errno = Errno::last();
        if errno != Errno::EINTR {
            return Err(errno.into());
        }
    }
}
