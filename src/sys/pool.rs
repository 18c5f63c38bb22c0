//! Raw system calls for the job pool (`crate::pool`): pidfds, the shared claim words of a worker
//! (a `memfd` mapped by the pool and the worker), putting a worker's socket on a fixed
//! descriptor, and claiming that descriptor in the worker.
//!
//! Like the rest of `sys`, these wrappers do not log, and hold no state but the mapping a
//! [`SharedWords`] owns. [`pre_exec_fd`] registers
//! a hook that runs in a forked child between `fork` and `exec` and therefore only makes
//! async-signal-safe system calls on integers prepared in the parent. **Ordering:** register it
//! *after* [`super::pre_exec`], whose last step marks every descriptor above 2 close-on-exec:
//! `dup2` onto the target clears that flag on the target only, so the socket survives `exec` and
//! nothing else does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// A close-on-exec duplicate of `fd` numbered `min` or above (`F_DUPFD_CLOEXEC`): so that a
/// descriptor that [`pre_exec_fd`] will move does not sit on another move's target number.
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: fcntl on a borrowed (open) descriptor with integer arguments.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        if rc >= 0 {
            // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc) });
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

/// A small array of `u64` words in memory shared between the pool and one worker (a `memfd`
/// mapped `MAP_SHARED` by both), used as atomics: see `crate::pool::claim` for what the words
/// mean. Unmapped on drop.
#[derive(Debug)]
pub struct SharedWords {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s, which are `Sync`; the pointer
// is owned by this value alone (unmapped once, on drop).
unsafe impl Send for SharedWords {}
// SAFETY: as above: shared access goes through atomics only.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// A new zeroed array of `len` words (at least one) and the `memfd` (close-on-exec) that
    /// another process maps with [`SharedWords::map_inherited`].
    pub fn create(len: usize) -> io::Result<(SharedWords, OwnedFd)> {
        let len = len.max(1);
        let bytes = len
            .checked_mul(8)
            .ok_or_else(|| io::Error::other("shared words: size overflows"))?;
        // SAFETY: memfd_create takes a NUL-terminated name (a static C string) and flags.
        let rc = unsafe { libc::memfd_create(c"warden-pool-claims".as_ptr(), libc::MFD_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(rc) };
        // SAFETY: ftruncate on an integer descriptor with an integer length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) } == -1 {
            return Err(io::Error::last_os_error());
        }
        let words = Self::map(fd.as_fd(), len)?;
        Ok((words, fd))
    }

    /// Maps the words of a `memfd` made by [`SharedWords::create`] that this process inherited
    /// on descriptor `fd` (a pool worker's descriptor 4), then closes `fd` (the mapping stays).
    /// Checks that `fd` is a regular file of a whole number of words. At most once per process.
    pub fn map_inherited(fd: RawFd) -> io::Result<SharedWords> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static CLAIMED: AtomicBool = AtomicBool::new(false);
        if CLAIMED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other(
                "the inherited claim words were already mapped",
            ));
        }
        // SAFETY: fstat writes into a stack value of the right type; fd is just an integer.
        let st = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == -1 {
                return Err(io::Error::last_os_error());
            }
            st
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size <= 0 || st.st_size % 8 != 0 {
            return Err(io::Error::other(format!(
                "descriptor {fd} is not the pool's claim words"
            )));
        }
        // SAFETY: the descriptor is open (fstat succeeded) and, by this function's contract
        // (checked once per process above), owned by nothing else here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::map(owned.as_fd(), st.st_size as usize / 8)
    }

    fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedWords> {
        // SAFETY: a fresh shared mapping of `len * 8` bytes of `fd` at an address the kernel
        // chooses; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(SharedWords { ptr, len })
    }

    /// The words.
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is `len` page-aligned (hence 8-aligned) words, readable and
        // writable, alive as long as `self`; `AtomicU64` has the layout of `u64`, and every
        // access (here and in the other process) is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once; no reference from `words`
        // outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len * 8);
        }
    }
}
