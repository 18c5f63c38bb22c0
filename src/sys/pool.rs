//! Raw system calls for the job pool (`crate::pool`): pidfds, putting a worker's socket on a fixed
//! descriptor, and claiming that descriptor in the worker.
//!
//! Like the rest of `sys`, these wrappers hold no state and do not log. [`pre_exec_fd`] registers
//! a hook that runs in a forked child between `fork` and `exec` and therefore only makes
//! async-signal-safe system calls on integers prepared in the parent. **Ordering:** register it
//! *after* [`super::pre_exec`], whose last step marks every descriptor above 2 close-on-exec:
//! `dup2` onto the target clears that flag on the target only, so the socket survives `exec` and
//! nothing else does.

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

/// Moves `fd` onto descriptor number `target` (`dup2`, then closing the original), without
/// close-on-exec on `target`; when `fd` already is `target`, only clears its close-on-exec flag
/// (where `dup2` would be a no-op leaving the flag set).
///
/// Used in a freshly forked worker (the fork server's child) to put the worker's socket on
/// descriptor 3. Whatever was open on `target` is closed by `dup2`: the caller makes sure no
/// Rust object that will still be used owns it (the forked child closes every other descriptor
/// right after and never drops their owners).
pub fn move_to_fd(fd: OwnedFd, target: RawFd) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let raw = fd.as_raw_fd();
    dup2_raw(raw, target)?;
    if raw == target {
        // Now owned by the caller's process as a plain number: forget the owner, don't close.
        let _ = fd.into_raw_fd();
    }
    Ok(())
}

/// `recvmsg(2)` of one datagram without blocking, taking ownership of the descriptors that came
/// with it (`SCM_RIGHTS`, installed close-on-exec).
///
/// Returns `Ok(None)` when nothing is waiting, `Ok(Some((0, _)))` at end of stream.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel installed this descriptor in our table
                                // for this message just now; nothing else knows its number.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                return Ok(Some((msg.bytes, fds)));
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `dup2` on raw integers (clearing close-on-exec when both are equal); async-signal-safe.
fn dup2_raw(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // SAFETY: fcntl on an integer descriptor with integer arguments; no memory is passed.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        return if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
    }
    loop {
        // SAFETY: dup2 takes two integers; it only changes the descriptor table.
        let rc = unsafe { libc::dup2(fd, target) };
        if rc != -1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Arranges for descriptor `fd` of the parent to appear as `target` (without close-on-exec) in
/// the child of `cmd`, just before `exec`.
///
/// `fd` must stay open in the parent until `cmd` has been spawned. Register this after
/// [`super::pre_exec`] (see the module documentation).
pub fn pre_exec_fd(cmd: &mut std::process::Command, fd: RawFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls dup2 or fcntl on
    // two integers captured by value: async-signal-safe, no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || dup2_raw(fd, target));
    }
}

/// Takes ownership of descriptor `fd`, inherited from the process that started this one, after
/// checking that it is open and is a socket; sets close-on-exec on it so that programs the
/// worker runs do not inherit it.
///
/// Meant for descriptor 3 of a pool worker, which its parent put there and which no Rust object
/// in this process can own (anything opened since got another number, since 3 was taken). It
/// succeeds at most once per process, so it can never create a second owner.
pub fn claim_inherited_socket(fd: RawFd) -> io::Result<OwnedFd> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static CLAIMED: AtomicBool = AtomicBool::new(false);
    if CLAIMED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(
            "the inherited pool socket was already claimed",
        ));
    }
    // SAFETY: fstat writes into a stack value of the right type; fd is just an integer.
    let mode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) == -1 {
            return Err(io::Error::last_os_error());
        }
        st.st_mode
    };
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other(format!("descriptor {fd} is not a socket")));
    }
    // SAFETY: fcntl with integer arguments.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (fstat succeeded) and, per this function's contract, owned
    // by nothing else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
