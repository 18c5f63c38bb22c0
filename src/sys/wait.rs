//! `waitpid(2)`, keeping the raw wait status: nix's `WaitStatus` turns the signal number into
//! its `Signal` type, which has no real-time signals, and fails with `EINVAL` *after* the kernel
//! has reaped the child, so the end of a process killed by `SIGRTMIN+2` would be lost. Decode
//! the status with [`ExitStatus::from_wait_status`](crate::policy::ExitStatus::from_wait_status).

use nix::errno::Errno;

/// Reaps child `pid` (`-1`: any child) if it has ended, without waiting: `Ok(Some((pid,
/// status)))` with the raw wait status, `Ok(None)` while it (every child) still runs,
/// `Err(ECHILD)` when there is no such child. `EINTR` is retried.
pub(crate) fn waitpid_nohang(pid: i32) -> Result<Option<(i32, i32)>, Errno> {
    waitpid(pid, libc::WNOHANG).map(|(p, status)| (p != 0).then_some((p, status)))
}

/// Waits until child `pid` (`-1`: any child) has ended, and reaps it: its pid and raw wait
/// status. `EINTR` is retried.
pub(crate) fn waitpid_blocking(pid: i32) -> Result<(i32, i32), Errno> {
    waitpid(pid, 0)
}

fn waitpid(pid: i32, flags: i32) -> Result<(i32, i32), Errno> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the whole call; waitpid keeps no
        // pointer to it.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        match r {
            -1 if Errno::last() == Errno::EINTR => {}
            -1 => return Err(Errno::last()),
            p => return Ok((p, status)),
        }
    }
}
