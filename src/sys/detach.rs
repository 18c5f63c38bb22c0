//! The double fork of daemon(7): `fork` → `setsid` → `fork`, the intermediate leaving at once.
//!
//! The intermediate tells the launcher the daemon's pid (or the step that failed and its `errno`)
//! through a [`Report`] in a `MAP_SHARED` page, so the launcher needs no message from the daemon
//! to know whom to kill on a timeout.
//!
//! Both forks are real `fork(2)`s. A `vfork`-style intermediate (`clone(CLONE_VM | CLONE_VFORK)`)
//! would save one copy of the launcher, about 0.1 ms, but the kernel drops the restartable
//! sequences (rseq) registration of a `CLONE_VM` child, the daemon would inherit that missing
//! registration while glibc believes it registered, and `sched_getcpu` and every rseq user in
//! the daemon's main thread would be silently wrong.

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::error::Error;

/// Who we are after [`detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detached {
    /// The launcher; the daemon has this pid. `None` only if the intermediate process was
    /// killed before it could report (the daemon may exist: the readiness pipe tells).
    Launcher(Option<Pid>),
    /// The daemon: in a new session, not its leader; its parent is leaving with `_exit`.
    Daemon,
}

/// What the intermediate process reports to the launcher.
#[repr(C)]
struct Report {
    /// The daemon's pid, or 0.
    daemon: i32,
    /// The failed step: 0 none, [`STEP_SETSID`] or [`STEP_FORK`].
    step: i32,
    /// `errno` of the failed step.
    errno: i32,
}

const STEP_SETSID: i32 = 1;
const STEP_FORK: i32 = 2;

/// `fork` → `setsid` → `fork`. Returns in the launcher (with the daemon's pid) and in the daemon;
/// the intermediate process never returns. The caller has checked that the process has a single
/// thread.
///
/// Every signal is blocked across the forks (the launcher's mask is restored afterwards; the
/// daemon starts with everything blocked and resets its mask as daemon(7) says).
pub(crate) fn detach() -> Result<Detached, Error> {
    // SAFETY: an anonymous shared mapping of one page; no existing memory is touched and the
    // result is checked before use.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Report>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(Error::sys("mmap", Errno::last()));
    }
    let report = page.cast::<Report>();
    // SAFETY: `report` points at a fresh, writable, suitably aligned page.
    unsafe {
        report.write(Report {
            daemon: 0,
            step: 0,
            errno: 0,
        })
    };

    let all = nix::sys::signal::SigSet::all();
    let old = all
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)
        .map_err(|e| Error::sys("sigprocmask", e));
    let old = match old {
        Ok(o) => o,
        Err(e) => {
            unmap(page);
            return Err(e);
        }
    };

    // SAFETY: the caller checked the process is single-threaded; the child only runs
    // `intermediate` (async-signal-safe system calls), which returns only in the daemon.
    let first = unsafe { libc::fork() };
    if first == 0 {
        intermediate(report);
        // The daemon: the intermediate's `fork` returned 0 here.
        unmap(page);
        return Ok(Detached::Daemon);
    }
    let fork_errno = Errno::last();
    let _ = old.thread_set_mask();
    if first < 0 {
        unmap(page);
        return Err(Error::sys("fork", fork_errno));
    }
    // The intermediate leaves right after its fork; reap it.
    while let Err(Errno::EINTR) = nix::sys::wait::waitpid(Pid::from_raw(first), None) {}
    // SAFETY: the intermediate has exited, so nothing writes the report any more; `report` is
    // valid until `unmap`.
    let Report {
        daemon,
        step,
        errno,
    } = unsafe { report.read() };
    unmap(page);
    match step {
        0 if daemon > 0 => Ok(Detached::Launcher(Some(Pid::from_raw(daemon)))),
        STEP_SETSID => Err(Error::sys("setsid", Errno::from_raw(errno))),
        STEP_FORK => Err(Error::sys("fork", Errno::from_raw(errno))),
        // Killed before reporting (or reaped by someone else): whether a daemon exists is for
        // the readiness pipe to tell — it ends at once if nobody else holds its write end.
        _ => Ok(Detached::Launcher(None)),
    }
}

fn unmap(page: *mut libc::c_void) {
    // SAFETY: `page` is the mapping made in `detach`, of this length, and no reference into it
    // outlives this call.
    unsafe { libc::munmap(page, std::mem::size_of::<Report>()) };
}

/// The intermediate process: `setsid`, `fork`, report, `_exit`. Returns only in the daemon. It
/// makes system calls and writes `report`, nothing else.
fn intermediate(report: *mut Report) {
    // SAFETY: `setsid`, `fork` and `_exit` are async-signal-safe and take no pointers; `report`
    // points at the shared page `detach` mapped, alive until the launcher unmaps it after
    // reaping this process; `__errno_location` returns this thread's errno slot.
    unsafe {
        if libc::setsid() == -1 {
            (*report).step = STEP_SETSID;
            (*report).errno = *libc::__errno_location();
            libc::_exit(1);
        }
        let pid = libc::fork();
        if pid == 0 {
            return;
        }
        if pid < 0 {
            (*report).step = STEP_FORK;
            (*report).errno = *libc::__errno_location();
            libc::_exit(1);
        }
        (*report).daemon = pid;
        libc::_exit(0)
    }
}
