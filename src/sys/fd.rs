//! File descriptors (`unistd.h`, `fcntl.h`): closing or neutralising every inherited one,
//! moving one onto a fixed number, in the parent or between `fork` and `exec`, and taking
//! ownership of those a launcher passed on purpose (the pool's socket, socket activation's).
//!
//! Like the rest of `sys`, no state and no logging; [`pre_exec_fd`] and [`move_to_fd`] run in a
//! forked child and only make async-signal-safe system calls on integers.
//!
//! # Ordering
//!
//! Register [`pre_exec_fd`] *after* [`super::pre_exec`], whose last step marks every descriptor
//! above 2 close-on-exec: `dup2` onto the target clears that flag on the target only, so the
//! moved descriptor survives `exec` and nothing else does.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::error::Error;

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

/// Points every descriptor above 2 at `/dev/null` (`dup2`), dropping the files they referred to
/// without freeing their numbers. For a forked child whose inherited Rust objects still think
/// they own those descriptors.
pub fn neutralise_fds() -> Result<(), Error> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("cannot open", "/dev/null", e))?;
    let null_fd = {
        use std::os::fd::AsRawFd;
        null.as_raw_fd()
    };
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::io("cannot list", "/proc/self/fd", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let fds: Vec<RawFd> = fds
        .into_iter()
        .filter(|&fd| fd > 2 && fd != null_fd)
        .collect();
    dup_onto(&null, &fds);
    Ok(())
}

/// `dup2(null, fd)` for each of `fds`: each number stays allocated, so whoever owns it in this
/// process keeps a valid (if now inert) descriptor.
fn dup_onto(null: &std::fs::File, fds: &[RawFd]) {
    use std::os::fd::AsRawFd;
    for &fd in fds {
        // SAFETY: dup2 takes two integers and atomically replaces what `fd` refers to. A number
        // that is not open (the directory listing's own, already closed) is harmless.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

/// Points each of `fds` at `/dev/null` (`dup2`), dropping the files they referred to without
/// freeing their numbers, for a forked child in which Rust objects still own those descriptors.
/// If `/dev/null` cannot be opened, they are closed instead.
pub fn point_at_null(fds: &[RawFd]) {
    if fds.is_empty() {
        return;
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        Ok(null) => dup_onto(&null, fds),
        Err(_) => {
            for &fd in fds {
                // SAFETY: close takes no pointer; its owner in this process will get EBADF (or,
                // at worst, close a reused number) — better than keeping the file alive here.
                unsafe { libc::close(fd) };
            }
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

/// Why [`claim_inherited_fds`] refused a descriptor.
#[derive(Debug)]
pub enum Unclaimable {
    /// The descriptor is not open.
    NotOpen,
    /// The descriptor is close-on-exec, so it was not inherited across `exec`: this process
    /// opened it itself (std opens everything close-on-exec), and some object may own it.
    CloseOnExec,
    /// `fcntl` failed otherwise.
    Io(io::Error),
}

/// Takes ownership of the descriptors `fds`, inherited across `exec` from the process that
/// started this one (socket activation's `3 .. 3 + LISTEN_FDS`), and sets close-on-exec on them
/// so that the programs this process runs do not inherit them.
///
/// All or nothing: every descriptor is checked first — it must be open, and must not be
/// close-on-exec, since a descriptor that survived an `exec` never is, while everything this
/// process opened through std is — and the first one refused is returned with the reason.
/// Checking stops there, so a huge range costs no more than the descriptors actually open.
///
/// The caller takes each number at most once per process (`activation` keeps the flag): the
/// close-on-exec check also refuses a second take, but a flag says so without looking.
pub fn claim_inherited_fds(
    fds: std::ops::Range<RawFd>,
) -> Result<Vec<OwnedFd>, (RawFd, Unclaimable)> {
    for fd in fds.clone() {
        // SAFETY: fcntl on an integer descriptor with integer arguments; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EBADF) => (fd, Unclaimable::NotOpen),
                _ => (fd, Unclaimable::Io(err)),
            });
        }
        if flags & libc::FD_CLOEXEC != 0 {
            return Err((fd, Unclaimable::CloseOnExec));
        }
    }
    for fd in fds.clone() {
        // SAFETY: fcntl with integer arguments.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            return Err((fd, Unclaimable::Io(io::Error::last_os_error())));
        }
    }
    Ok(fds
        .map(|fd| {
            // SAFETY: the descriptor is open (F_GETFD succeeded) and was inherited across exec
            // (it was not close-on-exec), so no Rust object in this process opened it; the
            // caller takes each inherited number at most once, so nothing else owns it.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect())
}

/// Takes ownership of descriptor `fd`, inherited across the `execve` of `warden upgrade` (the
/// previous image of this process named it in the state it handed over), and sets close-on-exec
/// on it again.
///
/// Refused like [`claim_inherited_fds`]: a descriptor that is not open, or that is close-on-exec
/// (so it was not handed over: this image opened it, and some object may own it). The caller
/// takes each number at most once: the state names each descriptor once.
pub fn adopt_handed_over(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::other(format!("descriptor {fd} is not open")));
    }
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(io::Error::other(format!(
            "descriptor {fd} is close-on-exec: it was not handed over"
        )));
    }
    // SAFETY: fcntl with integer arguments.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open and was not close-on-exec, so no object of this image
    // opened it (std opens everything close-on-exec); the caller takes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets (`true`) or clears the close-on-exec flag of `fd`, which the caller keeps open: cleared
/// on the descriptors `warden upgrade` hands to the next image, set again if the exec fails.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a descriptor the caller keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
