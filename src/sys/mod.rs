//! The only place for `unsafe` and raw libc in warden.
//!
//! Thin wrappers named after the system call they make, taking and returning typed values, with
//! `EINTR` handled once here. They hold no state and do not log. Wrappers that may run in a forked
//! child before `exec` (see [`pre_exec_child`]) neither allocate nor lock.
//!
//! Forking is only offered through [`fork`] (and the daemon's double fork, `detach`, whose caller
//! checks first), which refuses when the process has more than one thread: `fork(2)` copies
//! only the calling thread, so a lock held by another thread (the allocator's, stdout's, a
//! logger's) would stay locked forever in the child. The exception forks from any process
//! because its children make only async-signal-safe system calls until `exec` or `_exit`:
//! [`spawn::spawn_nowait`].
#![allow(unsafe_code)]

mod detach;
pub mod pool;

pub(crate) use detach::{Detached, detach};

use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::error::Error;

pub mod spawn;

/// Who we are after [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The original process; the child has this pid.
    Parent(Pid),
    /// The new process.
    Child,
}

/// How many threads this process has, read from `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork(2)`, refused with [`Error::MultiThreaded`] unless this process has exactly one thread.
///
/// In a single-threaded process the child is an exact copy with no lock held by a vanished
/// thread, so it may allocate and use std as usual.
pub fn fork() -> Result<Fork, Error> {
    require_single_thread()?;
    // SAFETY: the process is single-threaded (checked just above; no thread can be started
    // between the check and the call because this very thread is the only one), so the child
    // inherits no lock held by another thread and may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => Ok(Fork::Child),
        Err(e) => Err(Error::sys("fork", e)),
    }
}

/// `_exit(2)`: leave now, running no atexit handler, no destructor and no stdio flush.
///
/// This is how intermediate fork children and failed daemon steps leave, so that nothing the
/// launcher registered runs twice.
pub fn _exit(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes no pointer; it never returns.
    unsafe { libc::_exit(code) }
}

/// Resets the signal mask to empty and every catchable signal's disposition to `SIG_DFL`.
///
/// A daemon inherits both from whoever launched it (a shell that ignores `SIGHUP` under `nohup`,
/// a supervisor that blocks `SIGCHLD`); daemon(7) step 2 and 3 say to reset them.
///
/// The real-time signals the C library reserves for itself (glibc's 32 and 33) make
/// `sigaction(3)` fail with `EINVAL`, yet they can arrive ignored: glibc's `posix_spawn` — what
/// `std::process::Command` uses — sets them to `SIG_IGN` in the child, and an ignored disposition
/// survives `exec`, so any launcher that is a Rust or other multi-threaded glibc program hands
/// them down. Those still ignored are reset with the raw `rt_sigaction` system call; a handler
/// the C library installed itself is left alone (it needs it, e.g. for `setuid` across threads).
pub fn reset_signals() -> Result<(), Error> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| Error::sys("sigprocmask", e))?;
    // Only signals that are ignored or caught need resetting: one read of /proc/self/status
    // instead of a sigaction per signal (this is on the path `warden start` waits for).
    let masks = signal_masks();
    let not_default = masks.map_or(u128::MAX, |(ignored, caught)| ignored | caught);
    let mut reserved = Vec::new();
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL
            || signo == libc::SIGSTOP
            || not_default & (1u128 << (signo - 1)) == 0
        {
            continue;
        }
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags) and
        // `sa_sigaction = SIG_DFL` installs no handler, so no Rust code can be called from it.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signo, &action, std::ptr::null_mut())
        };
        if rc == -1 && Errno::last() == Errno::EINVAL {
            reserved.push(signo);
        }
    }
    if !reserved.is_empty() {
        let (ignored, _) = masks.ok_or_else(|| {
            Error::io(
                "cannot read",
                "/proc/self/status",
                std::io::Error::other("no signal masks"),
            )
        })?;
        reset_reserved_ignored_signals(&reserved, ignored)?;
    }
    Ok(())
}

/// The signals whose disposition is not the default (`SigIgn | SigCgt` of /proc/self/status),
/// bit `n - 1` for signal `n`.
pub fn ignored_or_caught() -> Option<u128> {
    signal_masks().map(|(ignored, caught)| ignored | caught)
}

/// `SigIgn` and `SigCgt` of /proc/self/status: the ignored and caught signals, bit `n - 1` for
/// signal `n`. Arch-neutral, unlike the kernel's `struct sigaction`.
fn signal_masks() -> Option<(u128, u128)> {
    use std::io::Read;
    // Into a stack buffer, not a growing String: the file is about 1.5 KiB, generated whole on
    // the first read.
    let mut buf = [0u8; 8192];
    let mut file = std::fs::File::open("/proc/self/status").ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let status = std::str::from_utf8(&buf[..len]).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u128::from_str_radix(v.trim(), 16).ok())
    };
    Some((field("SigIgn:")?, field("SigCgt:")?))
}

/// The signals whose disposition is not the default (ignored or caught), as numbers; every
/// catchable signal when /proc cannot tell.
pub fn non_default_signals() -> Vec<i32> {
    let mask = ignored_or_caught().unwrap_or(u128::MAX);
    (1..=libc::SIGRTMAX())
        .filter(|&s| s <= 128 && s != libc::SIGKILL && s != libc::SIGSTOP)
        .filter(|&s| mask & (1u128 << (s - 1)) != 0)
        .collect()
}

/// Sets those of `reserved` (signals the C library refuses in `sigaction`) that are currently
/// ignored back to `SIG_DFL`, through the raw system call.
fn reset_reserved_ignored_signals(reserved: &[i32], ignored: u128) -> Result<(), Error> {
    // The kernel's sigset size: one bit per signal, SIGRTMAX of them (64 on most architectures).
    let sigsetsize = (libc::SIGRTMAX() as usize + 1) / 8;
    for &signo in reserved {
        if signo > 128 || ignored & (1u128 << (signo - 1)) == 0 {
            continue;
        }
        // All zeros is `SIG_DFL` with no flags and an empty mask in the kernel's `struct
        // sigaction` on every architecture; the buffer is larger than that struct anywhere.
        let action = [0u64; 8];
        // SAFETY: the kernel reads at most `sizeof(struct sigaction)` (≤ 64 bytes) from
        // `action`, which is valid for that long; no old action is written (null); `SIG_DFL`
        // installs no handler, so no code of ours can run from it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signo,
                action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                sigsetsize,
            )
        };
        if rc == -1 {
            return Err(Error::sys("rt_sigaction", Errno::last()));
        }
    }
    Ok(())
}

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

/// Refuses with [`Error::MultiThreaded`] unless this process has exactly one thread: the one
/// check before every `fork` without `exec` and every change of the environment.
pub(crate) fn require_single_thread() -> Result<(), Error> {
    let threads = thread_count().map_err(|e| Error::io("cannot read", "/proc/self/task", e))?;
    if threads != 1 {
        return Err(Error::MultiThreaded(threads));
    }
    Ok(())
}

/// `setenv(3)`, only while single-threaded (another thread could be reading the environment).
pub fn setenv(key: &OsStr, value: &OsStr) -> Result<(), Error> {
    require_single_thread()?;
    // SAFETY: the process has one thread (checked above), so no other thread reads or writes
    // the environment concurrently.
    unsafe { std::env::set_var(key, value) };
    Ok(())
}

/// `unsetenv(3)` of each of `keys` that is set, only while single-threaded (checked once).
pub fn unsetenv_all(keys: &[&str]) -> Result<(), Error> {
    let present: Vec<&&str> = keys
        .iter()
        .filter(|k| std::env::var_os(k).is_some())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    require_single_thread()?;
    for key in present {
        // SAFETY: single-threaded, as in `setenv`.
        unsafe { std::env::remove_var(key) };
    }
    Ok(())
}

/// `clearenv(3)` keeping the variables named in `keep`, only while single-threaded.
pub fn clearenv_except(keep: &[&str]) -> Result<(), Error> {
    require_single_thread()?;
    for (key, _) in std::env::vars_os() {
        if !keep.iter().any(|k| OsStr::new(k) == key) {
            // SAFETY: single-threaded, as in `setenv`.
            unsafe { std::env::remove_var(&key) };
        }
    }
    Ok(())
}

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

/// Sets `SIGPIPE` to `SIG_IGN`, as the Rust runtime does at start-up: a write to a closed pipe
/// then fails with `EPIPE` instead of killing the process.
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN installs no handler, so no code of ours can run from a signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Puts `SIGPIPE` back to its default, which the Rust runtime set to `SIG_IGN`: for a command
/// whose output goes to a pipe (`warden status | head -1`), a reader that has gone then ends the
/// process quietly, as it does any Unix filter, instead of making `println!` panic.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run from a signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Catches `SIGPIPE` with a handler that does nothing: a write to a closed pipe or socket then
/// fails with `EPIPE`, as Rust code expects, instead of killing the process. Unlike `SIG_IGN`
/// (what the Rust runtime sets at start-up), a caught signal goes back to its default at `exec`,
/// so programs this process starts do not inherit an ignored `SIGPIPE`.
pub fn catch_sigpipe() -> Result<(), Error> {
    // SAFETY: an all-zero `sigaction` is a valid empty value; the handler is an `extern "C"`
    // function that does nothing, so it is trivially async-signal-safe; `sigaction` only reads
    // the struct we pass and writes nothing back (old action pointer is null).
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGPIPE, &sa, std::ptr::null_mut())
    };
    if rc == -1 {
        return Err(Error::sys("sigaction(SIGPIPE)", Errno::last()));
    }
    Ok(())
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

/// `SO_PEERGROUPS` (Linux 4.13) where its value is the generic one; elsewhere it is not asked
/// for and callers fall back.
const SO_PEERGROUPS: Option<libc::c_int> = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64"
)) {
    Some(59)
} else {
    None
};

/// The supplementary groups the peer of a connected Unix socket had when it connected
/// (`SO_PEERGROUPS`), from the kernel, without asking the name service. `Ok(None)` when this
/// kernel or architecture cannot tell (before Linux 4.13).
pub fn peer_groups(sock: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<Vec<u32>>> {
    use std::os::fd::AsRawFd;
    let Some(opt) = SO_PEERGROUPS else {
        return Ok(None);
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`, which is valid and
        // writable for that long, and updates `len`; the descriptor is borrowed, so open.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(Some(groups));
        }
        match Errno::last() {
            // Too small: the kernel said how much it needs (at most NGROUPS_MAX, 65536).
            Errno::ERANGE if needed > groups.len() && needed <= 65_536 => groups.resize(needed, 0),
            Errno::ENOPROTOOPT => return Ok(None),
            e => return Err(e.into()),
        }
    }
}

/// A signal set with every signal (for blocking all of them around a fork).
fn filled_sigset() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the (zeroed) set it is given; no other memory is touched.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// This thread's `errno`, async-signal-safe (for forked children before `exec`).
fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot; reading it is always sound.
    unsafe { *libc::__errno_location() }
}
