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
    let page = ReportPage::map()?;
    let old = nix::sys::signal::SigSet::all()
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)
        .map_err(|e| Error::sys("sigprocmask", e))?;
    // SAFETY: the caller checked the process is single-threaded; the child only runs
    // `intermediate` (async-signal-safe system calls), which returns only in the daemon.
    let first = unsafe { libc::fork() };
    if first == 0 {
        intermediate(page.report);
        // The daemon: the intermediate's `fork` returned 0 here.
        return Ok(Detached::Daemon);
    }
    let fork_errno = Errno::last();
    let _ = old.thread_set_mask();
    if first < 0 {
        return Err(Error::sys("fork", fork_errno));
    }
    // The intermediate leaves right after its fork; reap it.
    while let Err(Errno::EINTR) = nix::sys::wait::waitpid(Pid::from_raw(first), None) {}
    // The intermediate has exited, so nothing writes the report any more.
    launcher_outcome(page.read())
}

/// What the launcher makes of the intermediate's report.
fn launcher_outcome(report: Report) -> Result<Detached, Error> {
    let Report {
        daemon,
        step,
        errno,
    } = report;
    match step {
        0 if daemon > 0 => Ok(Detached::Launcher(Some(Pid::from_raw(daemon)))),
        STEP_SETSID => Err(Error::sys("setsid", Errno::from_raw(errno))),
        STEP_FORK => Err(Error::sys("fork", Errno::from_raw(errno))),
        // Killed before reporting (or reaped by someone else): whether a daemon exists is for
        // the readiness pipe to tell — it ends at once if nobody else holds its write end.
        _ => Ok(Detached::Launcher(None)),
    }
}

/// The `MAP_SHARED` page holding the [`Report`], unmapped on drop (in the launcher and in the
/// daemon; the intermediate leaves with `_exit`).
struct ReportPage {
    report: *mut Report,
}

impl ReportPage {
    /// Maps a fresh page holding an empty report.
    fn map() -> Result<ReportPage, Error> {
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
        Ok(ReportPage { report })
    }

    /// The report as it stands; the caller makes sure nobody writes it any more.
    fn read(&self) -> Report {
        // SAFETY: `report` is valid until drop, and nothing writes it concurrently (above).
        unsafe { self.report.read() }
    }
}

impl Drop for ReportPage {
    fn drop(&mut self) {
        // SAFETY: `report` is the mapping made in `map`, of this length, and no reference into
        // it outlives this call.
        unsafe { libc::munmap(self.report.cast(), std::mem::size_of::<Report>()) };
    }
}

/// The intermediate process: `setsid`, `fork`, report, `_exit`. Returns only in the daemon. It
/// makes system calls and writes `report`, nothing else.
fn intermediate(report: *mut Report) {
    // SAFETY: `setsid`, `fork` and `_exit` are async-signal-safe and take no pointers; `report`
    // points at the shared page `ReportPage::map` mapped, alive until the launcher unmaps it after
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
