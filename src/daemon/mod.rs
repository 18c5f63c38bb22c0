//! The daemon(7) sequence: from an ordinary process to a detached, locked, unprivileged daemon
//! that tells its launcher when it is ready.
//!
//! Order matters and follows systemd's daemon(7) "SysV daemons" list. This module knows nothing
//! of programs, pools or configuration files.
//!
//! # In the launcher
//!
//! While still attached to the caller's terminal and able to report errors: resolve the user
//! and group, open and lock the pidfile, create the readiness pipe. Then `fork`; the child calls
//! `setsid` and forks again, tells the launcher the daemon's pid and leaves with `_exit`, so
//! that nothing registered before (atexit handlers, stdio buffers, Rust destructors) runs twice.
//!
//! # In the daemon
//!
//! Reset signal mask and dispositions (`SIGPIPE` is then caught by a no-op handler, so that
//! writes to a closed pipe fail with `EPIPE` as Rust code expects), close every inherited
//! descriptor but the keep-list, set the umask, `chdir`, point stdio at `/dev/null` or files,
//! write the pid through the locked descriptor, drop privileges, sanitise the environment.
//!
//! # Failures
//!
//! Every failure in the daemon travels back to the launcher through the readiness pipe, which
//! prints it and exits non-zero; the launcher exits 0 only once the application calls
//! [`DaemonHandle::ready`].

mod nofile;
mod pidfile;
mod privs;
mod readiness;

use std::ffi::OsString;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};

pub use nofile::{NofileRaise, raise_nofile, worker_nofile};
pub use pidfile::{Pidfile, PidfileState};
pub use privs::Credentials;
pub use readiness::Notifier;
use readiness::{ReadyWait, ReadyWriter};

use crate::error::{Error, Result};
use crate::hooks;
use crate::sys::{self, Detached};

/// Descriptors that belong to the daemon process alone: the readiness pipe's write end (only the
/// daemon speaks to its launcher) and the locked pidfile (the instance lock, which a child that
/// outlives the daemon must not keep). A child made by [`crate::fork`] points them at `/dev/null`.
static PRIVATE_FDS: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

fn private_fds_lock() -> std::sync::MutexGuard<'static, Vec<RawFd>> {
    PRIVATE_FDS.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn mark_private(fd: RawFd) {
    private_fds_lock().push(fd);
}

pub(crate) fn unmark_private(fd: RawFd) {
    private_fds_lock().retain(|&f| f != fd);
}

/// The descriptors a forked child must not keep (see [`PRIVATE_FDS`]).
pub(crate) fn private_fds() -> Vec<RawFd> {
    private_fds_lock().clone()
}

/// Where one of the daemon's standard streams goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// A file, opened for appending (created mode 0644 less the umask).
    File(PathBuf),
    /// Left as inherited (meaningful in foreground mode only; a detached daemon gets `/dev/null`).
    Inherit,
}

/// What systemd told us through the environment, read once before any thread exists.
#[derive(Debug, Clone, Default)]
pub struct ServiceManager {
    /// `$NOTIFY_SOCKET`.
    pub notifier: Option<Notifier>,
    /// `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is unset or names this process.
    pub watchdog: Option<Duration>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from the
    /// environment (while single-threaded) so that no child inherits them.
    pub fn from_env() -> ServiceManager {
        let notifier = Notifier::from_env();
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(Duration::from_micros);
        let _ = sys::unsetenv_all(&["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]);
        ServiceManager { notifier, watchdog }
    }
}

/// A builder that turns the calling process into a daemon.
///
/// ```no_run
/// let mut daemon = warden::Daemon::new()
///     .pidfile("/run/mydaemon.pid")
///     .user("nobody")
///     .start()?; // in the launcher: returns only on error, or exits 0 once ready
/// // ... open sockets, load state ...
/// daemon.ready();
/// # Ok::<(), warden::Error>(())
/// ```
///
/// Daemonize before starting any thread or async runtime: `fork` keeps only the calling thread,
/// so [`Daemon::start`] refuses a multi-threaded process (foreground mode does not fork and has
/// no such limit).
#[derive(Debug, Clone)]
#[must_use = "a Daemon does nothing until start() is called"]
pub struct Daemon {
    pidfile: Option<PathBuf>,
    directory: PathBuf,
    umask: u32,
    user: Option<String>,
    group: Option<String>,
    chown_pidfile: bool,
    stdout: Stdio,
    stderr: Stdio,
    keep_fds: Vec<RawFd>,
    foreground: bool,
    ready_timeout: Duration,
    env_keep: Option<Vec<String>>,
    env_set: Vec<(OsString, OsString)>,
    manager: Option<ServiceManager>,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon::new()
    }
}

impl Daemon {
    /// A daemon with the daemon(7) defaults: no pidfile, working directory `/`, umask 022, stdio
    /// on `/dev/null`, 30 s readiness timeout.
    pub fn new() -> Daemon {
        Daemon {
            pidfile: None,
            directory: PathBuf::from("/"),
            umask: 0o022,
            user: None,
            group: None,
            chown_pidfile: false,
            stdout: Stdio::Null,
            stderr: Stdio::Null,
            keep_fds: Vec::new(),
            foreground: false,
            ready_timeout: Duration::from_secs(30),
            env_keep: None,
            env_set: Vec::new(),
            manager: None,
        }
    }

    /// Locks and writes the pidfile at `path`.
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// The working directory (default `/`).
    pub fn directory(mut self, path: impl Into<PathBuf>) -> Self {
        self.directory = path.into();
        self
    }

    /// The file mode creation mask (default `0o022`).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = mask & 0o777;
        self
    }

    /// Runs as this user (a name or a numeric id); the group defaults to the user's primary group
    /// and supplementary groups come from `initgroups(3)`.
    pub fn user(mut self, name: impl Into<String>) -> Self {
        self.user = Some(name.into());
        self
    }

    /// Runs as this group (a name or a numeric id).
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// `fchown`s the pidfile to the run user and group before dropping privileges, so that the
    /// daemon can remove it at exit even from a sticky directory. A daemon that can rewrite its
    /// pidfile could then write another pid into it: whoever signals a pid read from a pidfile
    /// must first check that process holds the file ([`Pidfile::held_by`]), as `warden` does.
    pub fn chown_pidfile(mut self, yes: bool) -> Self {
        self.chown_pidfile = yes;
        self
    }

    /// Where standard output goes (default `/dev/null`).
    pub fn stdout(mut self, to: Stdio) -> Self {
        self.stdout = to;
        self
    }

    /// Where standard error goes (default `/dev/null`).
    pub fn stderr(mut self, to: Stdio) -> Self {
        self.stderr = to;
        self
    }

    /// Keeps descriptor `fd` open in the daemon (every other inherited descriptor above 2 is
    /// closed). Anything in the process that owns a descriptor not kept must not be used after
    /// [`Daemon::start`].
    pub fn keep_fd(mut self, fd: RawFd) -> Self {
        self.keep_fds.push(fd);
        self
    }

    /// Stays in the foreground: no forks, no `setsid`, stdio kept; the pidfile, umask, working
    /// directory and privilege drop still apply, and readiness goes to `$NOTIFY_SOCKET`.
    pub fn foreground(mut self, yes: bool) -> Self {
        self.foreground = yes;
        self
    }

    /// How long the launcher waits for [`DaemonHandle::ready`] before killing the daemon and
    /// failing (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the daemon from an empty environment but for the variables named in `keep`.
    pub fn clear_env<I, S>(mut self, keep: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.env_keep = Some(keep.into_iter().map(Into::into).collect());
        self
    }

    /// Sets an environment variable in the daemon.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env_set.push((key.into(), value.into()));
        self
    }

    /// Uses this service-manager environment instead of reading it from the process
    /// environment at [`Daemon::start`].
    pub fn service_manager(mut self, manager: ServiceManager) -> Self {
        self.manager = Some(manager);
        self
    }

    /// Becomes the daemon.
    ///
    /// * In the **launcher** this returns only on failure: errors found before forking (user
    ///   lookup, pidfile locked or unusable, a multi-threaded process) and errors the daemon
    ///   reported ([`Error::DaemonFailed`], [`Error::DaemonDied`], [`Error::ReadyTimeout`]) come
    ///   back as `Err`; once the daemon calls [`DaemonHandle::ready`] the launcher exits with
    ///   status 0 and `start` never returns there.
    /// * In the **daemon** it returns `Ok(handle)`. A failing step in the daemon is reported to
    ///   the launcher and the daemon leaves with `_exit(1)`; it never returns `Err`.
    /// * In **foreground** mode there is one process and it gets `Ok` or `Err`.
    pub fn start(mut self) -> Result<DaemonHandle> {
        let manager = self.manager.take().unwrap_or_else(ServiceManager::from_env);
        let creds = Credentials::resolve(self.user.as_deref(), self.group.as_deref())?;
        self.make_paths_absolute()?;
        if self.foreground {
            return self.start_foreground(creds, manager);
        }
        sys::require_single_thread()?;
        let owner = creds.as_ref().map(|c| (c.uid(), c.gid));
        let pidfile = self
            .pidfile
            .as_deref()
            .map(|p| Pidfile::acquire_for(p, owner))
            .transpose()?;
        let (read_end, write_end) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        // Checked just above: one thread.
        let detached = match sys::detach() {
            Ok(d) => d,
            Err(e) => {
                if let Some(p) = &pidfile {
                    p.remove();
                }
                return Err(e);
            }
        };
        match detached {
            Detached::Launcher(daemon) => {
                drop(write_end);
                let err = self.wait_for_daemon(read_end, daemon);
                if let Some(p) = &pidfile {
                    p.remove();
                }
                Err(err)
            }
            Detached::Daemon => {
                drop(read_end);
                let writer = ReadyWriter::new(write_end);
                match self.become_daemon(pidfile, creds, &writer) {
                    Ok(mut handle) => {
                        handle.ready_writer = Some(writer);
                        handle.manager = manager;
                        Ok(handle)
                    }
                    Err(e) => {
                        writer.fail(&e.to_string());
                        sys::_exit(1);
                    }
                }
            }
        }
    }

    /// The launcher's side: waits for the daemon's verdict on the readiness pipe and exits 0 when
    /// it is ready; otherwise returns why not, after killing a daemon that did not get ready in
    /// time. `daemon` is its pid, as the intermediate process reported it.
    fn wait_for_daemon(&self, read_end: OwnedFd, daemon: Option<nix::unistd::Pid>) -> Error {
        // Only needed if the intermediate died before naming the daemon.
        let pipe = daemon.is_none().then(|| file_id(&read_end)).flatten();
        match readiness::wait(read_end, self.ready_timeout) {
            ReadyWait::Ready => std::process::exit(0),
            ReadyWait::Failed(reason) => Error::DaemonFailed(reason),
            ReadyWait::Died => Error::DaemonDied { status: None },
            ReadyWait::TimedOut => {
                // Without a report from the intermediate, the daemon is whoever else holds the
                // readiness pipe.
                let pids = match (daemon, &pipe) {
                    (Some(pid), _) => vec![pid.as_raw()],
                    (None, Some((dev, ino))) => holders_of(*dev, *ino),
                    (None, None) => Vec::new(),
                };
                for &pid in &pids {
                    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
                Error::ReadyTimeout {
                    pid: pids.first().copied().unwrap_or(-1),
                    timeout: self.ready_timeout,
                }
            }
        }
    }

    fn make_paths_absolute(&mut self) -> Result<()> {
        let abs =
            |p: &Path| std::path::absolute(p).map_err(|e| Error::io("cannot resolve path", p, e));
        if let Some(p) = &self.pidfile {
            self.pidfile = Some(abs(p)?);
        }
        self.directory = abs(&self.directory)?;
        for s in [&mut self.stdout, &mut self.stderr] {
            if let Stdio::File(p) = s {
                *p = abs(p)?;
            }
        }
        Ok(())
    }

    fn start_foreground(
        self,
        creds: Option<Credentials>,
        manager: ServiceManager,
    ) -> Result<DaemonHandle> {
        let owner = creds.as_ref().map(|c| (c.uid(), c.gid));
        let mut pidfile = self
            .pidfile
            .as_deref()
            .map(|p| Pidfile::acquire_for(p, owner))
            .transpose()?;
        let held = hold_signals()?;
        let result = (|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(self.umask));
            std::env::set_current_dir(&self.directory)
                .map_err(|e| Error::io("cannot change directory to", &self.directory, e))?;
            self.redirect_stdio(None)?;
            if let Some(p) = &mut pidfile {
                p.write_pid(std::process::id(), self.pidfile_owner(creds.as_ref()))?;
            }
            if let Some(c) = &creds {
                c.drop_privileges()?;
            }
            self.apply_env()
        })();
        if let Err(e) = result {
            if let Some(p) = &pidfile {
                p.remove();
            }
            let _ = held.thread_set_mask();
            return Err(e);
        }
        let mut handle = DaemonHandle::new(pidfile, manager, true);
        handle.held = Some(held);
        Ok(handle)
    }

    /// The steps run in the daemon process, in daemon(7) order.
    fn become_daemon(
        &self,
        mut pidfile: Option<Pidfile>,
        creds: Option<Credentials>,
        writer: &ReadyWriter,
    ) -> Result<DaemonHandle> {
        sys::reset_signals()?;
        // Not SIG_DFL: a daemon whose launcher has gone would die writing its readiness verdict,
        // and Rust code expects EPIPE, not death, from a closed pipe (std ignores it at start).
        sys::catch_sigpipe()?;
        let held = hold_signals()?;
        let mut keep = self.keep_fds.clone();
        keep.push(writer.raw_fd());
        if let Some(p) = &pidfile {
            keep.push(p.raw_fd());
        }
        sys::close_fds_except(&keep)?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(self.umask));
        std::env::set_current_dir(&self.directory)
            .map_err(|e| Error::io("cannot change directory to", &self.directory, e))?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Error::io("cannot open", "/dev/null", e))?;
        nix::unistd::dup2_stdin(&null).map_err(|e| Error::sys("dup2", e))?;
        self.redirect_stdio(Some(&null))?;
        drop(null);
        if let Some(p) = &mut pidfile {
            p.write_pid(std::process::id(), self.pidfile_owner(creds.as_ref()))?;
        }
        if let Some(c) = &creds {
            c.drop_privileges()?;
        }
        self.apply_env()?;
        let mut handle = DaemonHandle::new(pidfile, ServiceManager::default(), false);
        handle.held = Some(held);
        Ok(handle)
    }

    fn pidfile_owner(
        &self,
        creds: Option<&Credentials>,
    ) -> Option<(nix::unistd::Uid, nix::unistd::Gid)> {
        creds
            .filter(|_| self.chown_pidfile)
            .map(|c| (c.uid(), c.gid))
    }

    /// Points stdout and stderr where configured; `null`, if given, is an open `/dev/null`.
    fn redirect_stdio(&self, null: Option<&std::fs::File>) -> Result<()> {
        for (target, fd) in [(&self.stdout, 1), (&self.stderr, 2)] {
            let opened;
            let file = match (target, null) {
                (Stdio::Inherit, _) if self.foreground => continue,
                (Stdio::Inherit | Stdio::Null, Some(null)) => null,
                (Stdio::Inherit | Stdio::Null, None) => {
                    opened = std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/null")
                        .map_err(|e| Error::io("cannot open", "/dev/null", e))?;
                    &opened
                }
                (Stdio::File(path), _) => {
                    opened = crate::files::open_append(
                        path,
                        0o644,
                        crate::files::Allow::RegularOrTerminal,
                    )
                    .map_err(|e| Error::io("cannot open output file", path, e))?;
                    &opened
                }
            };
            if fd == 1 {
                nix::unistd::dup2_stdout(file)
            } else {
                nix::unistd::dup2_stderr(file)
            }
            .map_err(|e| Error::sys("dup2", e))?;
        }
        Ok(())
    }

    fn apply_env(&self) -> Result<()> {
        if let Some(keep) = &self.env_keep {
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            sys::clearenv_except(&keep)?;
        }
        for (k, v) in &self.env_set {
            sys::setenv(k, v)?;
        }
        Ok(())
    }
}

/// The signals an operator sends a daemon. They are held (blocked) from the moment the pidfile
/// names the daemon until [`DaemonHandle::ready`]: someone who read the pidfile and sends
/// `SIGTERM` during initialisation then reaches the handlers installed by then instead of
/// killing the process with its pidfile and hooks left behind.
const HELD_SIGNALS: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Blocks [`HELD_SIGNALS`], returning the previous mask.
fn hold_signals() -> Result<nix::sys::signal::SigSet> {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in HELD_SIGNALS {
        set.add(s);
    }
    set.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .map_err(|e| Error::sys("sigprocmask", e))
}

/// The device and inode numbers of an open descriptor's file.
fn file_id(fd: &impl std::os::fd::AsRawFd) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some((m.dev(), m.ino()))
}

/// The processes other than this one that have the file `(dev, ino)` (here: a pipe) open,
/// from `/proc/*/fd`.
fn holders_of(dev: u64, ino: u64) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pidfile::has_open(pid, dev, ino))
        .collect()
}

/// The running daemon: readiness, service-manager notifications and exit hooks.
///
/// Dropping the handle runs the exit hooks of this process (see [`crate::hooks`]), the last of
/// which removes the pidfile; keep it alive for the life of the daemon.
#[derive(Debug)]
#[must_use = "dropping the DaemonHandle runs the exit hooks and removes the pidfile"]
pub struct DaemonHandle {
    pidfile_path: Option<PathBuf>,
    /// The locked pidfile's descriptor (never closed before exit).
    pidfile_fd: Option<RawFd>,
    ready_writer: Option<ReadyWriter>,
    manager: ServiceManager,
    foreground: bool,
    /// The signal mask to restore at `ready` (operator signals are held until then).
    held: Option<nix::sys::signal::SigSet>,
}

impl DaemonHandle {
    fn new(pidfile: Option<Pidfile>, manager: ServiceManager, foreground: bool) -> DaemonHandle {
        let pidfile_path = pidfile.as_ref().map(|p| p.path().to_path_buf());
        let pidfile_fd = pidfile.as_ref().map(Pidfile::raw_fd);
        if let Some(p) = pidfile {
            // Never closed (see the hook), so the number stays ours for the life of the process.
            mark_private(p.raw_fd());
            hooks::on_exit_last("remove pidfile", move || {
                p.remove();
                // The lock is never released explicitly: it goes with the process.
                std::mem::forget(p);
            });
        }
        DaemonHandle {
            pidfile_path,
            pidfile_fd,
            ready_writer: None,
            manager,
            foreground,
            held: None,
        }
    }

    /// The handle of a daemon that an earlier image of this process started and handed over
    /// across `execve` (`warden upgrade`): its locked pidfile (descriptor and path), removed at
    /// exit as by [`Daemon::start`]'s handle; no launcher waits.
    pub fn resumed(
        pidfile: Option<(std::os::fd::OwnedFd, PathBuf)>,
        manager: ServiceManager,
        foreground: bool,
    ) -> DaemonHandle {
        let pidfile = pidfile.map(|(fd, path)| Pidfile::adopt(fd, &path));
        DaemonHandle::new(pidfile, manager, foreground)
    }

    /// The locked pidfile's descriptor, to hand over across `execve`.
    pub fn pidfile_fd(&self) -> Option<RawFd> {
        self.pidfile_fd
    }

    /// Reports readiness: the launcher exits 0; under systemd `READY=1` is sent. Idempotent.
    ///
    /// `SIGTERM`, `SIGINT`, `SIGQUIT`, `SIGHUP`, `SIGUSR1` and `SIGUSR2` are held (blocked) from
    /// the moment the pidfile is written until this call, which releases them: install signal
    /// handlers ([`crate::Signals`]) before calling it, and call it.
    pub fn ready(&mut self) {
        if let Some(mask) = self.held.take() {
            let _ = mask.thread_set_mask();
        }
        if let Some(w) = self.ready_writer.take() {
            w.ready();
        }
        let _ = self.notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    /// Passes a warning to whoever started the daemon, before [`DaemonHandle::ready`]: the
    /// launcher prints `warning: TEXT` to its stderr and goes on waiting. In the foreground it
    /// is printed to stderr here; in a daemon after `ready` it is dropped (log it instead).
    pub fn warn(&mut self, text: &str) {
        match self.ready_writer.as_mut() {
            Some(w) => w.warn(text),
            None if self.foreground => eprintln!("warning: {text}"),
            None => {}
        }
    }

    /// Reports that initialisation failed: exit hooks run (removing the pidfile), then the
    /// launcher prints `reason` and exits non-zero, and the daemon exits with status 1.
    pub fn fail(mut self, reason: &str) -> ! {
        hooks::run_exit_hooks();
        let _ = self.notify(&format!("STATUS={}", reason.replace('\n', " ")));
        match self.ready_writer.take() {
            Some(w) => w.fail(reason),
            None => eprintln!("{reason}"),
        }
        std::process::exit(1)
    }

    /// Registers an exit hook (see [`crate::hooks::on_exit`]).
    pub fn on_exit<F, R>(&self, name: &str, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: hooks::HookOutcome,
    {
        hooks::on_exit(name, f);
    }

    /// Runs the exit hooks and exits with `code` (see [`crate::hooks::exit`]).
    pub fn exit(self, code: i32) -> ! {
        hooks::exit(code)
    }

    /// Sends an `sd_notify(3)` message when a service manager listens; `Ok(false)` when none.
    pub fn notify(&self, state: &str) -> std::io::Result<bool> {
        match &self.manager.notifier {
            Some(n) => n.notify(state).map(|()| true),
            None => Ok(false),
        }
    }

    /// The service manager's settings captured at start.
    pub fn service_manager(&self) -> &ServiceManager {
        &self.manager
    }

    /// True in foreground mode.
    pub fn is_foreground(&self) -> bool {
        self.foreground
    }

    /// The pidfile path, if any.
    pub fn pidfile_path(&self) -> Option<&Path> {
        self.pidfile_path.as_deref()
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        if let Some(w) = self.ready_writer.take() {
            w.fail("the daemon stopped before it was ready");
        }
        hooks::run_exit_hooks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The processes holding a pipe are found, this one excluded.
    #[test]
    fn holders_of_a_pipe() {
        // Close-on-exec, so that no other test's child inherits it; ours gets it as stdin.
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (dev, ino) = file_id(&r).unwrap();
        assert_eq!(holders_of(dev, ino), Vec::<i32>::new());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::from(r))
            .spawn()
            .unwrap();
        let found = holders_of(dev, ino);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![child.id() as i32]);
        drop(w);
    }
}
