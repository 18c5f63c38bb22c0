//! PID namespaces (`sched.h`, `setns(2)`, `unshare(2)`): starting a namespace's init, and
//! choosing the namespace this thread's next children are created in.
//!
//! A thread's children are created in its `pid_for_children` namespace, which `unshare` and
//! `setns` change for the calling thread only and which never changes the caller's own pids. The
//! first child created after `unshare(CLONE_NEWPID)` is the new namespace's init: when it dies,
//! the kernel kills every process in the namespace, and orphans in it are re-parented to it.
//!
//! Like the rest of `sys`, no state and no logging.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use nix::sched::{CloneFlags, setns, unshare};

/// The PID namespace this process lives in (`/proc/self/ns/pid`), opened close-on-exec: where
/// [`children_in`] takes this thread's children back to.
pub fn own() -> io::Result<OwnedFd> {
    of("self")
}

/// The PID namespace process `pid` lives in (`/proc/PID/ns/pid`).
pub fn of(pid: &str) -> io::Result<OwnedFd> {
    std::fs::File::open(format!("/proc/{pid}/ns/pid")).map(OwnedFd::from)
}

/// The namespace's inode number, which identifies it (as `/proc/PID/ns/pid` links show it).
pub fn inode(ns: BorrowedFd<'_>) -> io::Result<u64> {
    nix::sys::stat::fstat(ns)
        .map(|s| s.st_ino)
        .map_err(io::Error::from)
}

/// `setns(ns, CLONE_NEWPID)`: this thread's next children are created in `ns`, which must be
/// this process's own namespace or one below it (needs `CAP_SYS_ADMIN` for a namespace other
/// than its own).
pub fn children_in(ns: BorrowedFd<'_>) -> io::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWPID).map_err(io::Error::from)
}

/// Spawns `cmd` as the init of a new PID namespace, with every signal it may ignore ignored
/// (dispositions set to `SIG_IGN` survive `exec`): `SIGCHLD` among them, so that the kernel
/// reaps the orphans re-parented to it, and the termination signals, so that only `SIGKILL`
/// (or its own exit) ends it and the namespace with it. Returns the child and its namespace.
///
/// This thread's next children are created in its own namespace again afterwards, whatever
/// happened. Needs `CAP_SYS_ADMIN` (`EPERM` otherwise). A command that cannot be executed is
/// named in the error (`/bin/cat: No such file or directory (os error 2)`).
pub fn spawn_init(cmd: &mut Command) -> io::Result<(Child, OwnedFd)> {
    let home = own()?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(io::Error::from)?;
    // SAFETY: the closure runs in the forked child before exec and only calls sigaction, which
    // is async-signal-safe, on a stack value; it allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(ignore_all_signals) };
    let spawned = cmd.spawn().map_err(|e| {
        let program = std::path::Path::new(cmd.get_program()).display();
        io::Error::new(e.kind(), format!("{program}: {e}"))
    });
    let back = children_in(home.as_fd());
    let mut child = spawned?;
    let ns = back.and_then(|()| of(&child.id().to_string()));
    match ns {
        Ok(ns) => Ok((child, ns)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// In a forked child: `SIG_IGN` for every signal but `SIGKILL` and `SIGSTOP` (the C library's
/// reserved ones refuse, and are skipped). Async-signal-safe.
fn ignore_all_signals() -> io::Result<()> {
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags), and
        // `SIG_IGN` installs no handler; glibc's reserved signals fail with EINVAL, ignored.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(signo, &action, std::ptr::null_mut());
        }
    }
    Ok(())
}

/// The pids of process `pid` (as this process's `/proc` names it) in each PID namespace it is
/// in, outermost first (`NSpid` of `/proc/PID/status`); `None` when it is gone.
pub fn ns_pids(pid: &str) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}
