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
    /// The `cgroup.procs` file of the cgroup v2 the child joins first (it writes `0`: itself),
    /// so that nothing it forks afterwards escapes the cgroup.
    pub cgroup_procs: Option<std::ffi::CString>,
}

/// Arranges for `setup` to run in the child of `cmd` between `fork` and `exec`.
///
/// In order: the cgroup (joined before anything else, so that the child never runs outside
/// it), empty signal mask and default dispositions (an ignored signal would survive
/// `exec`), the parent-death signal with the `getppid` race check, umask, resource limits,
/// groups/gid/uid, and `CLOEXEC` on every descriptor above 2 so that nothing but stdio is
/// inherited, whatever the parent left open.
pub fn pre_exec(cmd: &mut std::process::Command, setup: ChildSetup) {
    use std::os::unix::process::CommandExt;
    let hook = move || -> io::Result<()> { child_setup(&setup) };
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (open, write, close, sigprocmask, sigaction, prctl, getppid, umask, setrlimit, setgroups, setgid,
    // setuid, close_range) on values prepared before the fork; it allocates nothing (the groups
    // vector was allocated in the parent and is only read) and takes no lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The child side of [`pre_exec`], also used by forked function workers: a linear list of
/// async-signal-safe steps, in the order the module documentation gives.
pub fn child_setup(setup: &ChildSetup) -> io::Result<()> {
    if let Some(procs) = &setup.cgroup_procs {
        child_join_cgroup(procs)?;
    }
    child_setup_in_cgroup(setup)
}

/// [`child_setup`] without its first step, for a child created in its cgroup already
/// (`clone3` with `CLONE_INTO_CGROUP`, `sys::spawn`).
pub(crate) fn child_setup_in_cgroup(setup: &ChildSetup) -> io::Result<()> {
    // Dispositions first, mask second: a signal arriving in between must find the default
    // action, not the copy of the parent's handler (which would swallow it).
    child_default_dispositions(setup.reset_signals.as_deref());
    child_empty_mask()?;
    if let Some(sig) = setup.pdeathsig {
        child_parent_death_signal(sig, setup.parent)?;
    }
    if let Some(mask) = setup.umask {
        // SAFETY: umask takes and returns an integer and cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    if let Some((soft, hard)) = setup.nofile {
        child_setrlimit(libc::RLIMIT_NOFILE, soft, hard)?;
    }
    for &(resource, value) in &setup.rlimits {
        child_setrlimit(resource, value, value)?;
    }
    child_identity(setup)?;
    child_cloexec_above_stdio();
    Ok(())
}

/// `Err(errno)` when a system call returned -1; no allocation.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `list`'s signals (every catchable one below `SIGRTMIN` when `None`) to `SIG_DFL`.
fn child_default_dispositions(list: Option<&[i32]>) {
    let set_default = |signo: libc::c_int| {
        // SAFETY: an all-zero `sigaction` with `SIG_DFL` is a valid value that installs no
        // handler; the struct lives on the stack for the call and no old action is written.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signo, &dfl, std::ptr::null_mut());
        }
    };
    match list {
        Some(list) => list.iter().for_each(|&signo| set_default(signo)),
        None => (1..libc::SIGRTMIN())
            .filter(|&signo| signo != libc::SIGKILL && signo != libc::SIGSTOP)
            .for_each(set_default),
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs` (writing `0` names
/// the writer), then closes the file. `open`, `write` and `close` only, on a C string prepared
/// in the parent. (A migration costs the kernel an RCU grace period, milliseconds: `sys::spawn`
/// creates its children in their cgroup instead, and this is its fallback.)
fn child_join_cgroup(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: `procs` is a valid C string allocated before the fork and only read.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(fd)?;
    // SAFETY: write reads one byte of a static buffer; fd is the descriptor opened above.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = (n != 1).then(io::Error::last_os_error);
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Empties the signal mask.
fn child_empty_mask() -> io::Result<()> {
    // SAFETY: the set is a zeroed stack value that sigemptyset initialises; sigprocmask only
    // reads it and writes no old mask (null).
    check(unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
    })
}

/// Arms `PR_SET_PDEATHSIG`, then fails with `ESRCH` if the parent is no longer `parent`: the
/// supervisor may have died before the death signal was armed.
fn child_parent_death_signal(sig: i32, parent: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })?;
    // SAFETY: getppid takes nothing and cannot fail.
    if unsafe { libc::getppid() } != parent {
        // ESRCH: the supervisor is gone. No message: `Error::other` would allocate.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// `setrlimit(resource, soft, hard)`, `u64::MAX` meaning unlimited.
fn child_setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let value = |v: u64| {
        if v == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            v as libc::rlim_t
        }
    };
    let lim = libc::rlimit {
        rlim_cur: value(soft),
        rlim_max: value(hard),
    };
    // SAFETY: setrlimit reads the stack value `lim` for the duration of the call.
    check(unsafe { libc::setrlimit(resource, &lim) })
}

/// Supplementary groups, then gid, then uid: in that order, while still root.
fn child_identity(setup: &ChildSetup) -> io::Result<()> {
    if let Some(groups) = &setup.groups {
        // SAFETY: setgroups reads `len` ids from the parent-allocated buffer, which outlives the
        // call and is only read.
        check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    }
    if let Some(gid) = setup.gid {
        // SAFETY: setgid takes an integer.
        check(unsafe { libc::setgid(gid) })?;
    }
    if let Some(uid) = setup.uid {
        // SAFETY: setuid takes an integer.
        check(unsafe { libc::setuid(uid) })?;
    }
    Ok(())
}

/// Marks every descriptor above 2 close-on-exec (`CLOSE_RANGE_CLOEXEC`, Linux 5.11): mark, don't
/// close, so std's exec-error pipe keeps working until exec. Older kernels: every descriptor
/// warden opens is CLOEXEC anyway, so the failure is ignored.
fn child_cloexec_above_stdio() {
    // SAFETY: close_range with integer arguments only changes descriptor flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}
