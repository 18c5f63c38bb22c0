//! A child's own set-up between `fork` and `exec`: signals, parent-death signal, umask, limits,
//! identity and close-on-exec, all prepared in the parent as a [`ChildSetup`].
//!
//! The child side makes only async-signal-safe system calls on plain values: no allocation, no
//! lock, so it is sound after a fork from a process that may have other threads.

use std::io;

/// What a spawned worker does to itself between `fork` and `exec`, all prepared in the parent.
///
/// Everything here is a plain value: the child only makes system calls with it (no allocation,
/// no locks), as required after `fork` in a process that may have other threads.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// The supervisor's pid: if the child's parent is already someone else when the death
    /// signal is armed, the supervisor died in between and the child gives up.
    pub parent: i32,
    /// The signal the kernel sends the child when the supervisor thread dies.
    pub pdeathsig: Option<i32>,
    /// The file mode creation mask.
    pub umask: Option<u32>,
    /// Supplementary groups, then gid, then uid (in that order, while still root).
    pub groups: Option<Vec<libc::gid_t>>,
    /// The group id.
    pub gid: Option<libc::gid_t>,
    /// The user id.
    pub uid: Option<libc::uid_t>,
    /// `RLIMIT_NOFILE` as (soft, hard), set before `rlimits`: the soft limit the daemon was
    /// started with, when it raised its own (`daemon::raise_nofile`), so that children do not
    /// inherit a soft limit above 1024 that `select(2)`-based programs cannot use.
    pub nofile: Option<(u64, u64)>,
    /// Resource limits as (resource, soft = hard value; `u64::MAX` is unlimited).
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// The signals to set back to `SIG_DFL`; `None`: every one. Before an `exec` only ignored
    /// signals matter (the kernel resets caught ones), so the parent lists those.
    pub reset_signals: Option<Vec<i32>>,
}

/// Arranges for `setup` to run in the child of `cmd` between `fork` and `exec`.
///
/// In order: empty signal mask and default dispositions (an ignored signal would survive
/// `exec`), the parent-death signal with the `getppid` race check, umask, resource limits,
/// groups/gid/uid, and `CLOEXEC` on every descriptor above 2 so that nothing but stdio is
/// inherited, whatever the parent left open.
pub fn pre_exec(cmd: &mut std::process::Command, setup: ChildSetup) {
    use std::os::unix::process::CommandExt;
    let hook = move || -> io::Result<()> { child_setup(&setup) };
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (sigprocmask, sigaction, prctl, getppid, umask, setrlimit, setgroups, setgid,
    // setuid, close_range) on values prepared before the fork; it allocates nothing (the groups
    // vector was allocated in the parent and is only read) and takes no lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The child side of [`pre_exec`], also used by forked function workers.
pub fn child_setup(setup: &ChildSetup) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: every call below is an async-signal-safe system call taking either plain integers
    // or pointers to stack values and to the parent-allocated `groups` buffer, which outlives the
    // call; none of them allocates or locks.
    unsafe {
        // Dispositions first, mask second: a signal arriving in between must find the default
        // action, not the copy of the parent's handler (which would swallow it).
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        match &setup.reset_signals {
            Some(list) => {
                for &signo in list {
                    libc::sigaction(signo, &dfl, std::ptr::null_mut());
                }
            }
            None => {
                for signo in 1..libc::SIGRTMIN() {
                    if signo != libc::SIGKILL && signo != libc::SIGSTOP {
                        libc::sigaction(signo, &dfl, std::ptr::null_mut());
                    }
                }
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::sigprocmask(
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut(),
        ))?;
        if let Some(sig) = setup.pdeathsig {
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                sig as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // The supervisor may have died before the death signal was armed.
            if libc::getppid() != setup.parent {
                // ESRCH: the supervisor is gone. No message: `Error::other` would allocate.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        if let Some(mask) = setup.umask {
            libc::umask(mask as libc::mode_t);
        }
        if let Some((soft, hard)) = setup.nofile {
            let lim = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
        }
        for &(resource, value) in &setup.rlimits {
            let v = if value == u64::MAX {
                libc::RLIM_INFINITY
            } else {
                value as libc::rlim_t
            };
            let lim = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            check(libc::setrlimit(resource, &lim))?;
        }
        if let Some(groups) = &setup.groups {
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        }
        if let Some(gid) = setup.gid {
            check(libc::setgid(gid))?;
        }
        if let Some(uid) = setup.uid {
            check(libc::setuid(uid))?;
        }
        // CLOSE_RANGE_CLOEXEC (Linux 5.11): mark, don't close, so std's exec-error pipe keeps
        // working until exec. Older kernels: every descriptor warden opens is CLOEXEC anyway.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    Ok(())
}
