//! Starting one worker: an exec'd program or a forked Rust function.
//!
//! Everything a child needs — argv, environment, credentials, limits, pipes — is prepared in the
//! supervisor before the fork; between fork and exec the child runs only
//! `sys::child_setup` (async-signal-safe system calls). Each worker gets its own process
//! group (so that stopping it reaches its helpers too), `PR_SET_PDEATHSIG` = `SIGKILL` with the
//! `getppid` race check (so that it dies with the supervisor, even by `SIGKILL`), stdio as
//! configured and no other descriptor. The death signal is not inherited by the worker's own
//! children; those die with the supervisor through the guard process, which kills the worker's
//! whole group (see `supervisor::groups`).
//!
//! Function workers are forked without exec, which is only sound while the supervisor is
//! single-threaded: `sys::fork` checks and refuses otherwise.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::EnvFile;
pub use crate::config::ExecSpec;
use crate::daemon::Notifier;
use crate::error::{Error, Result};
use crate::sys::{self, ChildSetup};

use super::table::InstanceIndex;

/// A Rust function run as a worker in a forked child; its return value is the exit status.
pub type WorkerFn = Arc<dyn Fn(&WorkerContext) -> i32 + Send + Sync>;

/// What a function worker knows about itself, and its line to the supervisor.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    program: String,
    index: usize,
    notifier: Option<Notifier>,
}

impl WorkerContext {
    /// The program name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The instance index, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Reports readiness (`READY=1`), for programs with `ready = notify`.
    pub fn ready(&self) {
        self.notify("READY=1");
    }

    /// Reports liveness (`WATCHDOG=1`), for programs with a `watchdog`.
    pub fn heartbeat(&self) {
        self.notify("WATCHDOG=1");
    }

    /// Sets the one-line status shown by `warden status` (`STATUS=`).
    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={}", text.replace('\n', " ")));
    }

    fn notify(&self, msg: &str) {
        if let Some(n) = &self.notifier {
            let _ = n.notify(msg);
        }
    }
}

/// Where a worker's stdout or stderr goes at the process level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StdioPlan {
    /// `/dev/null`.
    Null,
    /// A pipe read by the supervisor.
    Pipe,
}

/// What every spawn of one instance shares, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    argv: Vec<String>,
    directory: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    /// Read anew at each spawn: an edit applies at the next start.
    env_files: Vec<EnvFile>,
    clean_env: bool,
    setup: ChildSetup,
}

/// Environment variables a worker must not inherit from warden: they describe warden's own
/// service manager and stderr, not the worker's.
const NOT_INHERITED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "INVOCATION_ID",
    // What `warden upgrade` hands the next image of warden (`handoff/exec.rs`).
    "WARDEN_STATE_FD",
    "WARDEN_PREVIOUS_FD",
    "WARDEN_UPGRADE_FAILED",
];

impl Prepared {
    /// The program it runs, as written (argv\[0\]).
    pub(crate) fn program(&self) -> &str {
        &self.argv[0]
    }

    /// Resolves users, groups and limits of `spec`.
    pub(crate) fn exec(spec: &ExecSpec) -> Result<Prepared> {
        if spec.command.is_empty() {
            return Err(Error::Invalid {
                what: "command",
                reason: "it is empty".into(),
            });
        }
        let mut setup = base_setup();
        // The child resets whatever is not default here (our handlers and ignores) before it
        // unblocks signals: the parent blocks them all around the fork.
        setup.reset_signals = Some(sys::non_default_signals());
        setup.umask = spec.umask;
        setup.rlimits = spec
            .limits
            .iter()
            .map(|(r, v)| (r as libc::__rlimit_resource_t, v))
            .collect();
        if let Some(creds) =
            crate::Credentials::resolve(spec.user.as_deref(), spec.group.as_deref())?
        {
            let groups = match &creds.user {
                Some((name, _)) => nix::unistd::getgrouplist(name, creds.gid)
                    .map_err(|e| Error::sys("getgrouplist", e))?,
                None => vec![creds.gid],
            };
            setup.groups = Some(groups.iter().map(|g| g.as_raw()).collect());
            setup.gid = Some(creds.gid.as_raw());
            setup.uid = Some(creds.uid().as_raw());
        }
        Ok(Prepared {
            argv: spec.command.clone(),
            directory: spec.directory.clone(),
            env: spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            env_files: spec.env_files.clone(),
            clean_env: spec.clean_env,
            setup,
        })
    }
}

fn base_setup() -> ChildSetup {
    ChildSetup {
        parent: std::process::id() as i32,
        pdeathsig: Some(libc::SIGKILL),
        nofile: crate::daemon::worker_nofile(),
        ..ChildSetup::default()
    }
}

/// A started worker: its pid and the supervisor's ends of its output pipes.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    pub(crate) stdout: Option<File>,
    pub(crate) stderr: Option<File>,
    /// For exec'd workers: readable once the exec happened or failed (see
    /// [`sys::spawn::read_exec_report`]).
    pub(crate) exec_report: Option<OwnedFd>,
}

/// What one spawn of one instance needs besides its program's [`Prepared`] settings.
#[derive(Debug, Clone)]
pub(crate) struct SpawnRequest<'a> {
    pub(crate) program: &'a str,
    pub(crate) index: InstanceIndex,
    /// Held sockets passed as descriptors 3, 4, … with their names (socket activation).
    pub(crate) sockets: &'a [(std::os::fd::RawFd, String)],
    pub(crate) notify_socket: Option<&'a str>,
    pub(crate) watchdog: Option<Duration>,
    pub(crate) stdout: StdioPlan,
    pub(crate) stderr: StdioPlan,
    /// For an exec health check: the pid of the instance it checks (`WARDEN_PID`).
    pub(crate) checked_pid: Option<i32>,
    /// The `cgroup.procs` of the instance's own cgroup, which the child joins before anything
    /// else (cgroup mode: [`super::cgroup`]).
    pub(crate) cgroup_procs: Option<std::ffi::CString>,
    /// Created in the instances' PID namespace ([`super::pidns`]), with a pid above this one
    /// (the last it gave): its parent, outside it, is pid 0 to it, and the death-signal race
    /// check expects that.
    pub(crate) pid_namespace: Option<i32>,
}

/// The two ends of a close-on-exec pipe for an output stream, or none for `/dev/null`.
fn output_pipe(plan: StdioPlan) -> nix::Result<Option<(OwnedFd, OwnedFd)>> {
    match plan {
        StdioPlan::Null => Ok(None),
        StdioPlan::Pipe => nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map(Some),
    }
}

/// `/dev/null`, read-write: stdin of every worker, and its stdout or stderr when not captured.
fn dev_null() -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
}

/// The environment of one instance: warden's own (unless `clean_env`) without what describes
/// warden's service manager, then the program's `env_file`s in order (read now), then its `env`,
/// then warden's variables; a later setting replaces an earlier one.
///
/// Errors: an environment file that cannot be read or parsed (see [`EnvFile::load`]).
fn environment(p: &Prepared, i: &SpawnRequest<'_>) -> Result<Vec<(OsString, OsString)>> {
    let mut env: Vec<(OsString, OsString)> = if p.clean_env {
        Vec::new()
    } else {
        std::env::vars_os()
            .filter(|(k, _)| !NOT_INHERITED.iter().any(|n| k == n))
            .collect()
    };
    let mut set = |k: OsString, v: OsString| match env.iter_mut().find(|(key, _)| *key == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };
    for file in &p.env_files {
        for (k, v) in file.load()? {
            set(k.into(), v.into());
        }
    }
    for (k, v) in &p.env {
        set(k.clone(), v.clone());
    }
    set("WARDEN_PROGRAM".into(), i.program.into());
    set("WARDEN_INSTANCE".into(), i.index.to_string().into());
    if let Some(pid) = i.checked_pid {
        set("WARDEN_PID".into(), pid.to_string().into());
    }
    if let Some(s) = i.notify_socket {
        set("NOTIFY_SOCKET".into(), s.into());
    }
    if let Some(w) = i.watchdog {
        set("WATCHDOG_USEC".into(), w.as_micros().to_string().into());
    }
    if !i.sockets.is_empty() {
        // LISTEN_PID is the child's own pid, which the child writes (`sys::spawn`).
        set("LISTEN_FDS".into(), i.sockets.len().to_string().into());
        let names: Vec<&str> = i.sockets.iter().map(|(_, n)| n.as_str()).collect();
        set("LISTEN_FDNAMES".into(), names.join(":").into());
    }
    Ok(env)
}

/// Finds `program` the way `execvp` would — in the parent, since a PATH search is no work for a
/// forked child.
fn resolve(program: &str, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    crate::files::find_program(program, path)
}

/// Spawns an exec'd worker without waiting for its exec (see [`sys::spawn`]).
///
/// Errors: an environment file that cannot be read or parsed; otherwise [`Error::Io`] naming
/// the command.
pub(crate) fn spawn_exec(p: &Prepared, i: &SpawnRequest<'_>) -> Result<Started> {
    let env = environment(p, i)?;
    fork_exec(p, i, &env).map_err(|e| Error::io("cannot execute", PathBuf::from(&p.argv[0]), e))
}

/// [`spawn_exec`] once the environment is known.
fn fork_exec(
    p: &Prepared,
    i: &SpawnRequest<'_>,
    env: &[(OsString, OsString)],
) -> io::Result<Started> {
    let path = resolve(&p.argv[0], env)?;
    let mut setup = p.setup.clone();
    setup.cgroup_procs = i.cgroup_procs.clone();
    if i.pid_namespace.is_some() {
        setup.parent = 0;
    }
    let mut plan = sys::spawn::ExecPlan::new(&path, &p.argv, env, p.directory.as_deref(), setup)?;
    // Created in its cgroup (no migration to pay for); the child joins it itself otherwise.
    if let Some(dir) = cgroup_dir(i) {
        plan.create_in_cgroup(dir);
    }
    if !i.sockets.is_empty() {
        plan.pass_listen_fds(i.sockets.iter().map(|(fd, _)| *fd).collect())?;
    }
    // In the instances' PID namespace, the worker's own pid is the one status shows.
    if let Some(after) = i.pid_namespace {
        plan.keep_pid_in_namespace(after);
    }
    let null = dev_null()?;
    let out = output_pipe(i.stdout)?;
    let err = output_pipe(i.stderr)?;
    use std::os::fd::AsRawFd;
    let fd_of = |p: &Option<(OwnedFd, OwnedFd)>| {
        p.as_ref().map_or(null.as_raw_fd(), |(_, w)| w.as_raw_fd())
    };
    let forked = sys::spawn::spawn_nowait(&plan, [null.as_raw_fd(), fd_of(&out), fd_of(&err)])?;
    Ok(Started {
        pid: forked.pid,
        stdout: out.map(|(r, _w)| File::from(r)),
        stderr: err.map(|(r, _w)| File::from(r)),
        exec_report: Some(forked.exec_report),
    })
}

/// The directory of the cgroup `i` joins, opened (for `clone3`'s `CLONE_INTO_CGROUP`).
fn cgroup_dir(i: &SpawnRequest<'_>) -> Option<OwnedFd> {
    let procs = i.cgroup_procs.as_ref()?;
    let dir = Path::new(OsStr::from_bytes(procs.as_bytes())).parent()?;
    File::open(dir).ok().map(OwnedFd::from)
}

/// Spawns an exec health check: `p` holds the check's argv with its program's user, directory
/// and environment; stdout and stderr go to one pipe (returned as `stdout`).
///
/// Errors: as [`spawn_exec`].
pub(crate) fn spawn_check(p: &Prepared, i: &SpawnRequest<'_>) -> Result<Started> {
    let env = environment(p, i)?;
    let fork = || -> io::Result<Started> {
        let path = resolve(&p.argv[0], &env)?;
        let mut setup = p.setup.clone();
        setup.cgroup_procs = i.cgroup_procs.clone();
        let mut plan =
            sys::spawn::ExecPlan::new(&path, &p.argv, &env, p.directory.as_deref(), setup)?;
        if let Some(dir) = cgroup_dir(i) {
            plan.create_in_cgroup(dir);
        }
        let null = dev_null()?;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        use std::os::fd::AsRawFd;
        let fds = [null.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()];
        let forked = sys::spawn::spawn_nowait(&plan, fds)?;
        Ok(Started {
            pid: forked.pid,
            stdout: Some(File::from(r)),
            stderr: None,
            exec_report: Some(forked.exec_report),
        })
    };
    fork().map_err(|e| Error::io("cannot execute", PathBuf::from(&p.argv[0]), e))
}

/// Why a worker's exec (or the set-up before it) failed, from its report: the failed `step` and
/// its `errno`.
pub(crate) fn exec_failure(
    work: &super::Work,
    step: crate::sys::spawn::ExecStep,
    errno: i32,
) -> String {
    use crate::sys::spawn::ExecStep;
    let what = match (work, step) {
        (super::Work::Exec(spec), ExecStep::Exec) => format!("cannot execute {}", spec.command[0]),
        (super::Work::Exec(spec), ExecStep::Chdir) => format!(
            "cannot change directory to {}",
            spec.directory
                .as_deref()
                .unwrap_or(std::path::Path::new("?"))
                .display()
        ),
        (_, ExecStep::Stdio) => "cannot set up stdio".to_string(),
        _ => "cannot set up the process (limits, credentials, process group)".to_string(),
    };
    format!("{what}: {}", std::io::Error::from_raw_os_error(errno))
}

/// Forks a function worker.
pub(crate) fn spawn_fn(f: &WorkerFn, i: &SpawnRequest<'_>) -> Result<Started> {
    let out = output_pipe(i.stdout).map_err(|e| Error::sys("pipe2", e))?;
    let err = output_pipe(i.stderr).map_err(|e| Error::sys("pipe2", e))?;
    let null = dev_null().map_err(|e| Error::io("cannot open", "/dev/null", e))?;
    let ctx = WorkerContext {
        program: i.program.to_string(),
        index: i.index.0,
        notifier: i.notify_socket.map(Notifier::new),
    };
    // Taken in the parent: it names the parent (for the death-signal race check).
    let mut setup = base_setup();
    setup.cgroup_procs = i.cgroup_procs.clone();
    if i.pid_namespace.is_some() {
        setup.parent = 0;
    }
    match sys::fork()? {
        sys::Fork::Parent(pid) => Ok(Started {
            pid: pid.as_raw(),
            stdout: out.map(|(r, _w)| File::from(r)),
            stderr: err.map(|(r, _w)| File::from(r)),
            exec_report: None,
        }),
        sys::Fork::Child => {
            let stdio = FnStdio {
                null: &null,
                out: out.as_ref().map(|(_, w)| w),
                err: err.as_ref().map(|(_, w)| w),
            };
            run_fn_child(f, &ctx, &setup, stdio)
        }
    }
}

/// A function worker's stdio, in the child: `/dev/null` and the pipes' write ends.
struct FnStdio<'a> {
    null: &'a File,
    out: Option<&'a OwnedFd>,
    err: Option<&'a OwnedFd>,
}

/// The child side of [`spawn_fn`]: its own process group, the common set-up, stdio, then the
/// function; never returns.
fn run_fn_child(f: &WorkerFn, ctx: &WorkerContext, setup: &ChildSetup, stdio: FnStdio<'_>) -> ! {
    // The child of a single-threaded process: ordinary Rust is fine here.
    let FnStdio { null, out, err } = stdio;
    let result = (|| -> io::Result<()> {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
        sys::child_setup(setup)?;
        nix::unistd::dup2_stdin(null)?;
        match &out {
            Some(w) => nix::unistd::dup2_stdout(w)?,
            None => nix::unistd::dup2_stdout(null)?,
        }
        match &err {
            Some(w) => nix::unistd::dup2_stderr(w)?,
            None => nix::unistd::dup2_stderr(null)?,
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!(
            "warden: worker {}[{}] setup failed: {e}",
            ctx.program, ctx.index
        );
        sys::_exit(127);
    }
    // Everything the supervisor had open (epoll, sockets, the pidfile, other workers' pipes, log
    // files) is pointed at /dev/null rather than closed: Rust objects in this copy of the process
    // still own those numbers, and a closed number would be reused by the worker's next open() —
    // and written to by whoever owned it.
    let _ = sys::neutralise_fds();
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx))).unwrap_or(101);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}
