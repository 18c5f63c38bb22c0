//! `fork` + `exec` without waiting for the `exec`.
//!
//! `std::process::Command::spawn` blocks its caller until the child has exec'd (it reads a
//! close-on-exec pipe); on a loaded machine the child may wait for a CPU for hundreds of
//! milliseconds, and a supervisor's event loop would stall with it — no reaping, late timers.
//! Here the parent returns at once with the read end of that pipe: the event loop polls it and
//! learns, later, that the exec succeeded (end of file) or why it failed (errno and step).
//!
//! Everything the child needs is allocated before the fork (the C strings and the pointer arrays
//! of argv and envp); the child makes only async-signal-safe system calls, so this is sound in a
//! multi-threaded process too.

use super::errno;
use super::signal::filled_sigset;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::ChildSetup;

/// Which step of the child failed, as reported through the exec-report pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStep {
    /// Process group, signals, death signal, limits, credentials.
    Setup,
    /// Redirecting stdio.
    Stdio,
    /// Changing directory.
    Chdir,
    /// `execve` itself.
    Exec,
}

impl ExecStep {
    fn code(self) -> u8 {
        self as u8
    }

    /// Decodes a step code.
    pub fn from_code(c: u8) -> ExecStep {
        match c {
            0 => ExecStep::Setup,
            1 => ExecStep::Stdio,
            2 => ExecStep::Chdir,
            _ => ExecStep::Exec,
        }
    }
}

/// A prepared `execve`: the program, argv, envp and working directory as C strings.
#[derive(Debug)]
pub struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    /// What the child does to itself first.
    pub setup: ChildSetup,
    /// The cgroup to create the child in (`clone3` with `CLONE_INTO_CGROUP`): its directory,
    /// opened. When that fails, the child joins `setup.cgroup_procs` itself.
    cgroup: Option<OwnedFd>,
    /// Descriptors the child receives as 3, 4, … (socket activation), and the index in `envp`
    /// of the `LISTEN_PID=` entry the child fills in with its own pid.
    listen: Option<(Vec<RawFd>, usize)>,
    /// The child is created in a PID namespace below ours: give it the same pid in both, above
    /// this one.
    same_pid: Option<libc::pid_t>,
}

/// The most descriptors [`ExecPlan::pass_listen_fds`] passes.
pub const MAX_LISTEN_FDS: usize = 64;

fn cstring(s: &OsStr, what: &str) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

impl ExecPlan {
    /// Prepares running `path` with `argv` (argv\[0\] included) and exactly the environment `env`.
    pub fn new<A, K, V>(
        path: &Path,
        argv: &[A],
        env: &[(K, V)],
        cwd: Option<&Path>,
        setup: ChildSetup,
    ) -> io::Result<ExecPlan>
    where
        A: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            let mut kv = k.as_ref().as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_ref().as_bytes());
            envp.push(CString::new(kv).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an environment variable contains a NUL byte",
                )
            })?);
        }
        Ok(ExecPlan {
            path: cstring(path.as_os_str(), "the program path")?,
            argv: argv
                .iter()
                .map(|a| cstring(a.as_ref(), "an argument"))
                .collect::<io::Result<_>>()?,
            envp,
            cwd: cwd
                .map(|d| cstring(d.as_os_str(), "the directory"))
                .transpose()?,
            setup,
            cgroup: None,
            listen: None,
            same_pid: None,
        })
    }

    /// For a child created in a PID namespace one level below this process's (the calling
    /// thread's `pid_for_children`): asks for the same pid in both (`clone3` with `set_tid`,
    /// Linux 5.5, `CAP_SYS_ADMIN` over both), so that the pid it sees of itself is the one this
    /// process sees. Where the kernel refuses, it gets whatever pids come. The pid is chosen
    /// above the namespace's last (`ns_last_pid`) and above `after`, which the caller keeps:
    /// choosing a pid does not move the kernel's cursor, and a pid just freed must not come
    /// back at once.
    pub fn keep_pid_in_namespace(&mut self, after: libc::pid_t) {
        self.same_pid = Some(after);
    }

    /// Creates the child in the cgroup whose directory is `dir` (`clone3` with
    /// `CLONE_INTO_CGROUP`, Linux 5.7): it never runs outside it, and no migration is paid for.
    /// Where `clone3` refuses, the child is forked and joins `setup.cgroup_procs` itself.
    pub fn create_in_cgroup(&mut self, dir: OwnedFd) {
        self.cgroup = Some(dir);
    }

    /// Passes `fds` to the child as descriptors 3, 4, … (open in the caller, close-on-exec or
    /// not) and sets `LISTEN_PID` to the child's own pid, which only the child knows: systemd's
    /// socket activation. The caller sets `LISTEN_FDS` and `LISTEN_FDNAMES`; an inherited
    /// `LISTEN_PID` is replaced.
    ///
    /// Errors: more than [`MAX_LISTEN_FDS`] descriptors.
    pub fn pass_listen_fds(&mut self, fds: Vec<RawFd>) -> io::Result<()> {
        if fds.len() > MAX_LISTEN_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("more than {MAX_LISTEN_FDS} sockets"),
            ));
        }
        self.envp
            .retain(|e| !e.as_bytes().starts_with(b"LISTEN_PID="));
        // A placeholder: the child points this entry at one it writes on its stack.
        self.envp
            .push(CString::new("LISTEN_PID=0").expect("no NUL"));
        self.listen = Some((fds, self.envp.len() - 1));
        Ok(())
    }
}

/// A child that has been forked and is on its way to `exec`.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: i32,
    /// Readable when the exec happened (end of file) or failed (5 bytes: errno, step).
    pub exec_report: OwnedFd,
}

/// Forks a child that sets itself up, leads a new process group, takes `stdio[i]` as its
/// descriptor `i`, and execs `plan` — and returns without waiting for any of that.
///
/// The descriptors in `stdio` must be open in the caller; they may be close-on-exec.
pub fn spawn_nowait(plan: &ExecPlan, stdio: [RawFd; 3]) -> io::Result<Spawned> {
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let listen = plan.listen.as_ref().map(|(fds, at)| (fds.as_slice(), *at));
    let report_fd = report_w.as_raw_fd();
    // Read before the fork: the next free pids, for `same_pid`.
    let wanted = plan.same_pid.map(next_pids).unwrap_or_default();
    // Every signal is blocked across the fork: until the child has reset the dispositions it
    // inherited (the parent's handlers), a signal sent to it must wait rather than run them.
    let all = filled_sigset();
    let mut old = filled_sigset();
    // SAFETY: pthread_sigmask with pointers to initialised sigsets on the stack.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    // In its cgroup from the start when one is given and clone3 takes it; forked otherwise.
    let (pid, in_cgroup) = match clone3_for(plan.cgroup.as_ref().map(|d| d.as_raw_fd()), &wanted) {
        Some(pid) if pid != -1 => (pid, plan.cgroup.is_some()),
        _ => {
            // SAFETY: after fork the child runs only async-signal-safe system calls (setpgid,
            // child_setup's calls, dup2, fcntl, chdir, execve, write, _exit) on memory
            // allocated before the fork (`plan`, `argv`, `envp`, the stack); it never returns
            // into Rust code that could allocate or lock, leaving only through execve or _exit.
            (unsafe { libc::fork() }, false)
        }
    };
    let fork_error = (pid == -1).then(io::Error::last_os_error);
    if pid != 0 {
        // SAFETY: restores the mask saved above, from a valid sigset.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    if let Some(e) = fork_error {
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: see above; `fail` writes a fixed 5-byte record and calls _exit.
        unsafe {
            child(
                plan,
                stdio,
                &argv,
                &mut envp,
                (listen, in_cgroup),
                report_fd,
            )
        }
    }
    drop(report_w);
    Ok(Spawned {
        pid,
        exec_report: report_r,
    })
}

/// The child by `clone3`, when it is needed: into cgroup `dir`, and with each pid of `wanted`
/// in turn as its pid in both namespaces until one is free (then without). `None` when a plain
/// fork does as well; `Some(-1)` when the kernel refuses.
fn clone3_for(dir: Option<RawFd>, wanted: &[libc::pid_t]) -> Option<libc::pid_t> {
    for &want in wanted {
        let pid = clone3(dir, Some(want));
        if pid != -1 || errno() != libc::EEXIST {
            if pid != -1 {
                return Some(pid);
            }
            break;
        }
    }
    dir.map(|d| clone3(Some(d), None))
}

/// The pids after the last one this PID namespace gave (`/proc/sys/kernel/ns_last_pid`) and
/// after `after`, below `pid_max` (from 300, as the kernel, once past it): candidates for
/// [`ExecPlan::keep_pid_in_namespace`].
fn next_pids(after: libc::pid_t) -> Vec<libc::pid_t> {
    let read =
        |p: &str| -> Option<libc::pid_t> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let (Some(last), Some(max)) = (
        read("/proc/sys/kernel/ns_last_pid"),
        read("/proc/sys/kernel/pid_max"),
    ) else {
        return Vec::new();
    };
    let from = match last.max(after) + 1 {
        p if p + 16 >= max => 300,
        p => p,
    };
    (from..from + 16).collect()
}

/// `clone3` as a fork (no new stack: the child runs on a copy of this one, `SIGCHLD` at its
/// end), with `CLONE_INTO_CGROUP` into `dir` and `set_tid` = `[want, want]` (its pid in the
/// PID namespace it is created in and in ours) when given: the child's pid in the parent, 0
/// in the child, -1 when the kernel refuses (before Linux 5.7, a seccomp filter, a cgroup that
/// cannot take it, a pid taken: `EEXIST`).
fn clone3(dir: Option<RawFd>, want: Option<libc::pid_t>) -> libc::pid_t {
    /// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let set_tid = want.map(|p| [p, p]);
    let args = CloneArgs {
        flags: if dir.is_some() { CLONE_INTO_CGROUP } else { 0 },
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.unwrap_or(0) as u64,
        set_tid: set_tid.as_ref().map_or(0, |t| t.as_ptr() as u64),
        set_tid_size: set_tid.map_or(0, |t| t.len() as u64),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args` (a valid, initialised struct of the size passed) and the
    // `set_tid` array it points at (on this stack, alive until the call returns) during the
    // call. Without CLONE_VM and with no stack given, the child gets a copy of this address
    // space and stack, as after fork(2): the caller treats a 0 return exactly as fork's child
    // (async-signal-safe calls only, then execve or _exit).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    rc as libc::pid_t
}

/// The child side. Never returns.
///
/// # Safety
/// Must only run in a freshly forked child, with `argv` and `envp` null-terminated arrays of
/// pointers into `plan`.
unsafe fn child(
    plan: &ExecPlan,
    stdio: [RawFd; 3],
    argv: &[*const libc::c_char],
    envp: &mut [*const libc::c_char],
    (listen, in_cgroup): (Option<(&[RawFd], usize)>, bool),
    report: RawFd,
) -> ! {
    // Out of the way of descriptors 3.. that socket activation fills.
    let report = match listen {
        Some((fds, _)) => {
            let above = 3 + fds.len() as libc::c_int;
            // SAFETY: fcntl with integer arguments.
            match unsafe { libc::fcntl(report, libc::F_DUPFD_CLOEXEC, above) } {
                -1 => report,
                moved => moved,
            }
        }
        None => report,
    };
    let fail = |step: ExecStep, errno: i32| -> ! {
        let b = errno.to_le_bytes();
        let rec = [b[0], b[1], b[2], b[3], step.code()];
        // SAFETY: write and _exit are async-signal-safe; `rec` is on the stack.
        unsafe {
            libc::write(report, rec.as_ptr().cast(), rec.len());
            libc::_exit(127)
        }
    };
    // SAFETY: plain system calls with integer arguments.
    if unsafe { libc::setpgid(0, 0) } == -1 {
        fail(ExecStep::Setup, errno());
    }
    let setup = if in_cgroup {
        super::child::child_setup_in_cgroup(&plan.setup)
    } else {
        super::child_setup(&plan.setup)
    };
    if let Err(e) = setup {
        fail(ExecStep::Setup, e.raw_os_error().unwrap_or(libc::EINVAL));
    }
    for (target, &fd) in stdio.iter().enumerate() {
        let target = target as RawFd;
        // SAFETY: dup2/fcntl on descriptors the caller guaranteed open.
        let rc = unsafe {
            if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            }
        };
        if rc == -1 {
            fail(ExecStep::Stdio, errno());
        }
    }
    // The stack buffer `LISTEN_PID=` points at must live until execve.
    let mut listen_pid = [0u8; 32];
    if let Some((fds, at)) = listen {
        if let Err(e) = place_listen_fds(fds) {
            fail(ExecStep::Stdio, e);
        }
        write_listen_pid(&mut listen_pid);
        envp[at] = listen_pid.as_ptr().cast();
    }
    if let Some(dir) = &plan.cwd {
        // SAFETY: `dir` is a valid C string allocated before the fork.
        if unsafe { libc::chdir(dir.as_ptr()) } == -1 {
            fail(ExecStep::Chdir, errno());
        }
    }
    // SAFETY: null-terminated arrays of pointers to C strings that live in `plan`.
    unsafe { libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    fail(ExecStep::Exec, errno())
}

/// In the child: moves `fds` to 3, 4, … without close-on-exec. Each is first copied above the
/// targets, so that a descriptor already in 3.. is not overwritten before it is copied.
/// Async-signal-safe: fcntl and dup2 only, and a stack array.
fn place_listen_fds(fds: &[RawFd]) -> Result<(), i32> {
    let mut high = [0 as RawFd; MAX_LISTEN_FDS];
    let above = 3 + fds.len() as libc::c_int;
    for (slot, &fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl with integer arguments on a descriptor the caller keeps open.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if copy == -1 {
            return Err(errno());
        }
        *slot = copy;
    }
    for (i, &copy) in high[..fds.len()].iter().enumerate() {
        // SAFETY: dup2 with integer arguments; the copy is closed at exec (close-on-exec), the
        // target is not.
        if unsafe { libc::dup2(copy, 3 + i as libc::c_int) } == -1 {
            return Err(errno());
        }
    }
    Ok(())
}

/// In the child: `LISTEN_PID=<own pid>` as a C string in `buf`. Async-signal-safe: getpid and
/// arithmetic on a stack buffer.
fn write_listen_pid(buf: &mut [u8; 32]) {
    const KEY: &[u8] = b"LISTEN_PID=";
    buf[..KEY.len()].copy_from_slice(KEY);
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u32;
    let mut digits = [0u8; 10];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[KEY.len() + i] = digits[n - 1 - i];
    }
    buf[KEY.len() + n] = 0;
}

/// Reads the child's exec report: `Ok(None)` for a successful exec, `Ok(Some((errno, step)))`
/// for a failure, `Err(WouldBlock)` if it has not happened yet (for a non-blocking descriptor).
pub fn read_exec_report(fd: &OwnedFd) -> io::Result<Option<(i32, ExecStep)>> {
    let mut rec = [0u8; 5];
    let mut got = 0;
    while got < rec.len() {
        // SAFETY: reading into a stack buffer of the given length from an owned descriptor.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                rec[got..].as_mut_ptr().cast(),
                rec.len() - got,
            )
        };
        match n {
            0 if got == 0 => return Ok(None),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short exec report",
                ));
            }
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            n => got += n as usize,
        }
    }
    Ok(Some((
        i32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]),
        ExecStep::from_code(rec[4]),
    )))
}
