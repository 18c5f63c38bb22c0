//! `warden upgrade`, the daemon's side: check the binary now at warden's path, hand the running
//! supervisor to it across `execve` (the state in a memfd, every descriptor kept open), and, in
//! the new image (`warden resume`, hidden), take over — or go back to the previous binary,
//! kept open since the start, when that fails before the new image has confirmed.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use warden::DaemonHandle;
use warden::config::{CgroupMode, Config, DaemonSpec};
use warden::control::server::ControlServer;
use warden::daemon::{Notifier, ServiceManager};
use warden::log::LogHandle;
use warden::signals::Signals;
use warden::supervisor::metrics::MetricsListener;
use warden::supervisor::sockets::HeldSocket;
use warden::supervisor::{DaemonRec, Handoff, KeptDaemon, STATE_FORMAT, Supervisor};

use super::{exit, serve};

/// How long each check of the new binary may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Set in warden's environment, makes the image `warden upgrade` executes fail to take over
/// (and so go back): for testing the rollback. Ignored by an image executed after a failure.
const FAIL_TAKEOVER_ENV: &str = "WARDEN_TEST_FAIL_TAKEOVER";

/// The binary warden was started from: where `upgrade` finds the new one, and the running one,
/// open, to go back to.
pub struct Exe {
    path: PathBuf,
    fd: Option<OwnedFd>,
}

impl Exe {
    /// This process's binary: its path (before a package upgrade replaces the file) and an
    /// open descriptor of it.
    pub fn current() -> Exe {
        let path = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let fd = std::fs::File::open("/proc/self/exe")
            .ok()
            .map(OwnedFd::from);
        Exe { path, fd }
    }
}

/// What the daemon's upgrade needs besides the supervisor.
pub struct Context<'a> {
    pub exe: Exe,
    pub config: &'a Config,
    pub handle: &'a DaemonHandle,
    pub log: &'a LogHandle,
}

/// The `[daemon]` keys the image `warden upgrade` executes applies: it reads them from the file
/// (logging, timeouts, `exit_on_fatal`).
const APPLIED: &[&str] = &[
    "log",
    "log_level",
    "log_format",
    "syslog_facility",
    "syslog_ident",
    "ready_timeout",
    "shutdown_timeout",
    "exit_on_fatal",
];

/// The `[daemon]` keys the new image keeps as they run whatever the file says: the instances
/// run where the earlier image put them (their cgroups, their PID namespace).
const KEPT: &[&str] = &["cgroups", "pid_namespace"];

/// The `[daemon]` settings changed from `running` to `file` that an upgrade cannot carry over
/// (the pidfile, the control socket, the identity, the directory, the metrics endpoint, …):
/// one message each, for the supervisor's refusal.
pub fn blockers(running: &DaemonSpec, file: &DaemonSpec) -> Vec<String> {
    serve::daemon_changes(running, file)
        .into_iter()
        .filter(|k| !APPLIED.contains(k) && !KEPT.contains(k))
        .map(|k| {
            format!(
                "daemon.{k} changed, which only a restart of warden applies (`warden upgrade` \
                 cannot): restart warden (`warden restart`), or revert it"
            )
        })
        .collect()
}

/// What the upgrade says of the `[daemon]` settings changed from `running` to `file` that it
/// carries over: applied by the new image, or kept as they run.
fn daemon_notes(running: &DaemonSpec, file: &DaemonSpec) -> Vec<String> {
    let changed = serve::daemon_changes(running, file);
    let applied = changed.iter().filter(|k| APPLIED.contains(k));
    let kept = changed.iter().filter(|k| KEPT.contains(k));
    applied
        .map(|k| format!("daemon.{k} changed: applied by the upgrade"))
        .chain(kept.map(|k| {
            format!(
                "daemon.{k} changed: kept as it runs (the instances stay where they are); takes \
                 effect when warden restarts (`warden restart`)"
            )
        }))
        .collect()
}

/// Carries out an upgrade the supervisor asked for: returns only if the new binary did not take
/// over (after telling whoever asked why); this image then runs on.
pub fn perform(sup: &mut Supervisor, cx: &Context<'_>, signals: &mut Signals) {
    let reason = match hand_over(sup, cx, signals) {
        Err(reason) => reason,
        Ok(never) => match never {},
    };
    sup.upgrade_failed(&reason);
}

fn hand_over(
    sup: &mut Supervisor,
    cx: &Context<'_>,
    signals: &mut Signals,
) -> Result<std::convert::Infallible, String> {
    let path = &cx.exe.path;
    let Some(previous) = cx.exe.fd.as_ref() else {
        return Err(
            "the running binary could not be opened at start: nothing to go back to".into(),
        );
    };
    log::info!("upgrade: checking {}", path.display());
    let version = check_binary(path, &cx.config.path)?;
    let manager = cx.handle.service_manager();
    let daemon = DaemonRec {
        pidfile: cx
            .handle
            .pidfile_fd()
            .zip(cx.handle.pidfile_path().map(Path::to_path_buf)),
        foreground: cx.handle.is_foreground(),
        notify_socket: manager
            .notifier
            .as_ref()
            .map(|n| n.path().to_string_lossy().into_owned()),
        watchdog_usec: manager.watchdog.map(|w| w.as_micros() as u64),
        exe: path.clone(),
        old_exe: previous.as_raw_fd(),
        config: cx.config.path.clone(),
        notes: Config::load(&cx.config.path)
            .map(|file| daemon_notes(&cx.config.daemon, &file.daemon))
            .unwrap_or_default(),
        kept: Some(KeptDaemon {
            cgroups_off: cx.config.daemon.cgroups == CgroupMode::Off,
            pid_namespace: cx.config.daemon.pid_namespace,
        }),
    };
    let handoff = sup.export(daemon)?;
    log::info!(
        "upgrade: warden {} -> {version}: handing over to {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        std::process::id()
    );
    cx.log.flush();
    let err = handoff.exec(
        path,
        &resume_args(&cx.config.path),
        previous.as_raw_fd(),
        signals,
    );
    Err(format!("cannot execute {}: {err}", path.display()))
}

/// The arguments of the image that takes over.
fn resume_args(config: &Path) -> Vec<OsString> {
    vec!["-c".into(), config.as_os_str().to_owned(), "resume".into()]
}

/// Checks the binary at `path` before handing over to it: it is a warden (`--version`), it
/// reads this state format (`resume --formats`), and it accepts the running configuration
/// (`check`). Returns its version.
fn check_binary(path: &Path, config: &Path) -> Result<String, String> {
    let shown = path.display();
    let out = run(path, &["--version".as_ref()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .trim()
        .strip_prefix("warden ")
        .filter(|_| out.status.success())
        .map(str::to_string)
        .ok_or_else(|| format!("{shown} --version: not a warden ({})", said(&out)))?;
    let out = run(path, &["resume".as_ref(), "--formats".as_ref()])?;
    let formats: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if !out.status.success() || !formats.contains(&STATE_FORMAT) {
        return Err(format!(
            "{shown} (warden {version}) does not read state format {STATE_FORMAT} ({})",
            said(&out)
        ));
    }
    let out = run(path, &["-c".as_ref(), config.as_os_str(), "check".as_ref()])?;
    if !out.status.success() {
        return Err(format!(
            "{shown} -c {} check failed: {}",
            config.display(),
            said(&out)
        ));
    }
    Ok(version)
}

/// What a check printed, in short: its status and last line.
fn said(out: &std::process::Output) -> String {
    let text = [&out.stderr, &out.stdout]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let last = text.lines().last().unwrap_or("").to_string();
    match (out.status.code(), last.is_empty()) {
        (Some(c), true) => format!("exit status {c}"),
        (Some(c), false) => format!("exit status {c}: {last}"),
        (None, _) => format!("{}", out.status),
    }
}

/// Runs `path args` with no input and its output captured, killed after [`CHECK_TIMEOUT`].
fn run(path: &Path, args: &[&std::ffi::OsStr]) -> Result<std::process::Output, String> {
    let mut child = std::process::Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let deadline = Instant::now() + CHECK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not answer within {}s",
                    path.display(),
                    CHECK_TIMEOUT.as_secs()
                ));
            }
        }
    }
    child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `warden resume`: the image `upgrade` executed takes the daemon over, or goes back; with
/// `formats`, prints the state formats this binary reads.
pub fn resume(config_path: &Path, formats: bool) -> ExitCode {
    if formats {
        println!("{STATE_FORMAT}");
        return ExitCode::from(exit::OK);
    }
    let Some(inherited) = Handoff::inherited() else {
        eprintln!("warden: resume is what `warden upgrade` runs; it needs a handed-over state");
        return ExitCode::from(exit::USAGE);
    };
    let args = resume_args(config_path);
    let handoff = match &inherited.state {
        Ok(h) => h,
        Err(e) => {
            let err = inherited.go_back(None, &args, e);
            eprintln!("warden: upgrade: {e}; cannot go back: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match take_over(handoff, inherited.failed.is_some()) {
        Ok((sup, handle, log, mut signals, exe)) => {
            let mut sup = sup;
            match &inherited.failed {
                Some(reason) => sup.upgrade_failed(reason),
                None => sup.upgrade_done(&handoff.version, &handoff.daemon.notes),
            }
            let kept = handoff.daemon.kept;
            // The previous binary is not needed any more: this one is what runs.
            drop(inherited);
            let config = match running_config(config_path, kept) {
                Ok(c) => c,
                Err(_) => return ExitCode::from(exit::FAILURE),
            };
            let cx = Context {
                exe,
                config: &config,
                handle: &handle,
                log: &log,
            };
            let code = serve::event_loop(&mut sup, &mut signals, &cx);
            serve::finish(sup, handle, &log, code)
        }
        Err(reason) => {
            let err = inherited.go_back(Some(handoff), &args, &reason);
            eprintln!("warden: upgrade: {reason}; cannot go back: {err}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

type TakenOver = (Supervisor, DaemonHandle, LogHandle, warden::Signals, Exe);

/// Sets this image up on the handed-over state: logging, signals, the pidfile, the supervisor
/// with its sockets and programs, and every running instance.
fn take_over(h: &Handoff, after_failure: bool) -> Result<TakenOver, String> {
    if !after_failure && std::env::var_os(FAIL_TAKEOVER_ENV).is_some() {
        return Err(format!("{FAIL_TAKEOVER_ENV} is set"));
    }
    let config = running_config(&h.daemon.config, h.daemon.kept).map_err(|e| e.to_string())?;
    let (log, signals) = serve::set_up_process(&config, h.daemon.foreground)?;
    warden::supervisor::release_signals();
    let manager = ServiceManager {
        notifier: h.daemon.notify_socket.as_ref().map(Notifier::new),
        watchdog: h.daemon.watchdog_usec.map(Duration::from_micros),
    };
    let take = |fd| h.take_fd(fd).map_err(|e| e.to_string());
    let pidfile = match &h.daemon.pidfile {
        Some((fd, path)) => Some((take(*fd)?, path.clone())),
        None => None,
    };
    let handle = DaemonHandle::resumed(pidfile, manager, h.daemon.foreground);
    let mut held = Vec::new();
    for spec in &config.sockets {
        let fd = h
            .socket_fd(&spec.name)
            .ok_or_else(|| format!("socket {} was not handed over", spec.name))?;
        held.push(HeldSocket::adopt(spec, take(fd)?));
    }
    let metrics = match (&config.daemon.metrics, h.metrics_fd()) {
        (Some(listen), Some(fd)) => Some(MetricsListener::adopt(listen, take(fd)?)),
        (None, None) => None,
        _ => return Err("daemon.metrics differs from what was handed over".into()),
    };
    let listener = h.control_fd().ok_or("no control socket was handed over")?;
    let server = ControlServer::adopt(
        take(listener)?,
        &config.daemon.control_socket,
        serve::control_group(&config)?,
    );
    let sup = Supervisor::resume(h).map_err(|e| e.to_string())?;
    let bound = serve::Bound { held, metrics };
    let mut sup = serve::supervisor(sup, &config, &handle, &log, (bound, server))?;
    sup.import(h)?;
    Ok((sup, handle, log, signals, Exe::current_at(&h.daemon.exe)))
}

/// The configuration file at `path` as this image runs it: the settings the earlier image
/// handed over as kept ([`KeptDaemon`]) are the running ones, whatever the file says (so that a
/// reload still says they take a restart).
fn running_config(path: &Path, kept: Option<KeptDaemon>) -> warden::Result<Config> {
    let mut config = Config::load(path)?;
    if let Some(kept) = kept {
        config.daemon.cgroups = if kept.cgroups_off {
            CgroupMode::Off
        } else {
            CgroupMode::Auto
        };
        config.daemon.pid_namespace = kept.pid_namespace;
    }
    Ok(config)
}

impl Exe {
    /// This process's binary, started from `path` (kept: it is where the next upgrade looks).
    fn current_at(path: &Path) -> Exe {
        let fd = std::fs::File::open("/proc/self/exe")
            .ok()
            .map(OwnedFd::from);
        Exe {
            path: path.to_path_buf(),
            fd,
        }
    }
}
