//! `warden run` and `warden start`: become the daemon described by `[daemon]`, then serve events
//! until asked to stop.

use std::process::ExitCode;

use warden::config::{Config, LogSpec};
use warden::control::server::ControlServer;
use warden::log::{LogConfig, LogHandle, Target};
use warden::supervisor::metrics::{BoundFile, MetricsListener};
use warden::supervisor::sockets::HeldSocket;
use warden::supervisor::{DelegatedCgroups, ProgramDef, ReloadSet, RunExit, Supervisor};
use warden::{Daemon, DaemonHandle, ServiceManager, Signals, Stdio};

use super::exit;

/// Becomes the daemon (or stays in the foreground) and runs its event loop: build the daemon,
/// start it, set up what the daemon process needs, build the supervisor, run until stopped.
pub fn serve(mut config: Config, foreground: bool) -> ExitCode {
    // `warden run` logging JSON: its own errors on standard error must be JSON too.
    if foreground && config.daemon.log_format == warden::log::LogFormat::Json {
        exit::print_as_json();
    }
    // Read systemd's variables once, before any thread exists, and keep them from children.
    let manager = ServiceManager::from_env();
    let bound = match prepare(&mut config) {
        Ok(b) => b,
        Err(code) => return code,
    };
    // Made while still root, for a warden that will run as `[daemon] user`.
    let delegated = delegated_cgroups(&config);
    let mut daemon = daemon_from(&config, foreground, manager);
    for fd in bound.fds() {
        daemon = daemon.keep_fd(fd);
    }
    // A start that fails after the bind leaves no metrics socket file behind: removed by the
    // launcher, or by the daemon before it reports why (only if still the file it bound).
    let made = bound.metrics.as_ref().and_then(MetricsListener::bound_file);
    let mut handle = match daemon.start() {
        Ok(h) => h,
        Err(e) => return undo(&made, exit::report(&e)),
    };
    // What `warden upgrade` executes, and the binary running now, to go back to (opened in the
    // daemon: the daemonization closes what it does not know).
    let exe = super::upgrade::Exe::current();
    // From here on we are the daemon: everything that fails is reported through the handle,
    // which carries it back to the launcher.
    let (log, mut signals) = match after_fork(&config, &mut handle, foreground) {
        Ok(set_up) => set_up,
        Err(e) => fail(handle, undo(&made, &e)),
    };
    // Everything that can fail because of the configuration fails here, before `ready`, so that
    // `warden start` reports it and exits non-zero.
    let mut sup = match build(&config, &handle, &log, (bound, delegated)) {
        Ok(s) => s,
        Err(e) => fail(handle, undo(&made, &e)),
    };
    // Limits that cannot be applied are said where warden was started (and logged at spawn).
    for line in sup.unapplicable_limits() {
        warn(&mut handle, &line);
    }
    handle.ready();
    let _ = handle.notify("STATUS=running");
    log::info!(
        "warden {} started (pid {}, config {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        config.path.display()
    );
    let upgrade = super::upgrade::Context {
        exe,
        config: &config,
        handle: &handle,
        log: &log,
    };
    let code = event_loop(&mut sup, &mut signals, &upgrade);
    finish(sup, handle, &log, code)
}

/// Ends a start that failed: `reason` to the launcher, or printed (a JSON line when errors are).
fn fail(handle: DaemonHandle, reason: &str) -> ! {
    match exit::json_or(log::Level::Error, reason) {
        Some(line) => handle.fail(&line),
        None => handle.fail(reason),
    }
}

/// A warning for whoever started warden (a JSON line when errors are printed so).
fn warn(handle: &mut DaemonHandle, text: &str) {
    match exit::json_or(log::Level::Warn, text) {
        Some(line) => eprintln!("{line}"),
        None => handle.warn(text),
    }
}

/// Removes the metrics socket file `made` by a start that fails (if still the file bound), then
/// gives back `result`.
fn undo<T>(made: &Option<BoundFile>, result: T) -> T {
    made.iter().for_each(BoundFile::remove);
    result
}

/// After the loop: tells the service manager, closes the control socket, runs the exit hooks
/// (the pidfile last), exits with `code`.
pub(super) fn finish(
    mut sup: Supervisor,
    handle: DaemonHandle,
    log: &LogHandle,
    code: u8,
) -> ExitCode {
    let _ = handle.notify("STOPPING=1\nSTATUS=stopping");
    sup.close_control();
    drop(handle); // exit hooks, the pidfile last
    log::info!("warden stopped");
    log.flush();
    ExitCode::from(code)
}

/// What happens before the daemon starts: the configuration's path made absolute, its accounts
/// checked, its sockets bound.
fn prepare(config: &mut Config) -> Result<Bound, ExitCode> {
    // The daemon changes directory: a relative `-c` must be made absolute now, while it still
    // means what the caller meant, or `reload` and SIGHUP would look for the file elsewhere.
    if let Ok(p) = std::path::absolute(&config.path) {
        config.path = p;
    }
    // A daemon of this very file, not where the file now puts its pidfile (edited since): a
    // second one beside it would run every program twice.
    if let Some(pid) = super::elsewhere::daemon_running(&config.path, &config.daemon.pidfile) {
        exit::say_error(&super::elsewhere::hint(&config.path, pid));
        return Err(ExitCode::from(exit::FAILURE));
    }
    // Accounts named in the file must exist before anything starts (exit 6, like any other
    // configuration error), not fail a program later inside the daemon.
    let problems = super::unresolvable_accounts(config);
    if !problems.is_empty() {
        for p in problems {
            exit::say_error(&p);
        }
        return Err(ExitCode::from(exit::CONFIG));
    }
    // Bound now, as whoever started warden (root can bind a port below 1024 for a program
    // that runs unprivileged), and kept across the daemonization.
    bind_sockets(config).map_err(|e| exit::report(&e))
}

/// Binds every `[socket.NAME]` and the metrics endpoint. A socket already in use because this
/// configuration's warden runs is reported as that, not as the address in use.
fn bind_sockets(config: &Config) -> Result<Bound, warden::Error> {
    let running = |e: warden::Error| {
        let deadline = std::time::Instant::now();
        match super::running_pid(&config.daemon.pidfile, deadline) {
            Ok(Some(pid)) => warden::Error::AlreadyRunning {
                pid: Some(pid),
                path: config.daemon.pidfile.clone(),
            },
            _ => e,
        }
    };
    let mut held = Vec::new();
    for spec in &config.sockets {
        held.push(HeldSocket::bind(spec).map_err(running)?);
    }
    let metrics = match &config.daemon.metrics {
        Some(listen) => Some(MetricsListener::bind(listen).map_err(running)?),
        None => None,
    };
    Ok(Bound { held, metrics })
}

/// The sockets bound before the daemon starts: `[socket.NAME]`s and the metrics endpoint.
pub(super) struct Bound {
    pub(super) held: Vec<HeldSocket>,
    pub(super) metrics: Option<MetricsListener>,
}

impl Bound {
    /// Their descriptors, to keep across the daemonization.
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        let metrics = self.metrics.as_ref().map(MetricsListener::raw_fd);
        self.held
            .iter()
            .map(HeldSocket::raw_fd)
            .chain(metrics)
            .collect()
    }

    /// Hands them to the supervisor, which holds the sockets and serves the metrics.
    fn hand_to(self, sup: &mut Supervisor) -> Result<(), String> {
        for s in self.held {
            sup.hold_socket(s).map_err(|e| e.to_string())?;
        }
        if let Some(m) = self.metrics {
            sup.set_metrics(m).map_err(|e| format!("metrics: {e}"))?;
        }
        Ok(())
    }
}

/// The daemon `[daemon]` describes, not started yet.
fn daemon_from(config: &Config, foreground: bool, manager: ServiceManager) -> Daemon {
    let d = &config.daemon;
    let stdio = |p: &std::path::Path| {
        if foreground {
            Stdio::Inherit
        } else if p == std::path::Path::new("/dev/null") {
            Stdio::Null
        } else {
            Stdio::File(p.to_path_buf())
        }
    };
    let mut daemon = Daemon::new()
        .pidfile(&d.pidfile)
        .directory(&d.directory)
        .umask(d.umask)
        // The run user may then remove its pidfile (also in a sticky directory); `stop` never
        // trusts the pid it reads without checking that process holds the file (`held_by`).
        .chown_pidfile(true)
        .stdout(stdio(&d.stdout))
        .stderr(stdio(&d.stderr))
        .foreground(foreground)
        .ready_timeout(d.ready_timeout)
        .service_manager(manager);
    if let Some(u) = &d.user {
        daemon = daemon.user(u);
    }
    if let Some(g) = &d.group {
        daemon = daemon.group(g);
    }
    daemon
}

/// What the daemon process sets up first: the shutdown deadline, logging, the descriptor
/// limit, signal handlers. Warnings go through `handle` to the launcher; a failure is the
/// reason to report.
fn after_fork(
    config: &Config,
    handle: &mut DaemonHandle,
    foreground: bool,
) -> Result<(LogHandle, Signals), String> {
    let (log, signals) = set_up_process(config, foreground)?;
    if let Some(w) = log.unreachable() {
        warn(handle, &w);
    }
    Ok((log, signals))
}

/// What every image of the daemon sets up first (also the one `warden upgrade` executes): the
/// shutdown deadline, logging, the descriptor limit, signal handlers.
pub(super) fn set_up_process(
    config: &Config,
    foreground: bool,
) -> Result<(LogHandle, Signals), String> {
    warden::hooks::set_total_deadline(config.daemon.shutdown_timeout);
    let log = match warden::log::init(&log_config(config, foreground)) {
        Ok(l) => l,
        Err(e) => return Err(format!("cannot start logging: {e}")),
    };
    // An epoll daemon is not bound by select(2)'s 1024 descriptors (systemd.exec(5),
    // LimitNOFILE=): the soft limit goes up to the hard one; workers keep the original.
    match warden::daemon::raise_nofile() {
        Ok(r) if r.after > r.before => log::debug!("RLIMIT_NOFILE {} -> {}", r.before, r.after),
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    let signals = Signals::new().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    Ok((log, signals))
}

/// A new supervisor on a control socket bound now, set up by [`supervisor`].
fn build(
    config: &Config,
    handle: &DaemonHandle,
    log: &LogHandle,
    (bound, delegated): (Bound, Option<DelegatedCgroups>),
) -> Result<Supervisor, String> {
    let sup = Supervisor::new().map_err(|e| format!("cannot start the supervisor: {e}"))?;
    let group = control_group(config)?;
    let server =
        ControlServer::bind(&config.daemon.control_socket, group).map_err(|e| e.to_string())?;
    let mut sup = supervisor(sup, config, handle, log, (bound, server))?;
    if let Some(tree) = delegated {
        sup.use_delegated_cgroups(tree);
    }
    // cgroup mode is set up before readiness (not across an upgrade: `import` adopts it).
    sup.decide_tracking();
    Ok(sup)
}

/// warden's cgroup tree, made now as root and delegated to `[daemon] user`, which could not
/// make it once warden runs as that user; `None` when there is no such user, cgroups are off,
/// this is not root, or the tree cannot be made (the daemon then says why when it decides).
fn delegated_cgroups(config: &Config) -> Option<DelegatedCgroups> {
    let d = &config.daemon;
    if d.user.is_none()
        || d.cgroups != warden::config::CgroupMode::Auto
        || !nix::unistd::geteuid().is_root()
    {
        return None;
    }
    let creds = warden::Credentials::resolve(d.user.as_deref(), d.group.as_deref())
        .ok()
        .flatten()?;
    let uid = creds.user.as_ref()?.1.as_raw();
    DelegatedCgroups::make(uid, creds.gid.as_raw()).ok()
}

/// The `control_group`, resolved.
pub(super) fn control_group(config: &Config) -> Result<Option<nix::unistd::Gid>, String> {
    Ok(match &config.daemon.control_group {
        None => None,
        // Resolved like every other group name (names or numeric ids), in one place.
        Some(name) => Some(
            warden::Credentials::resolve(None, Some(name))
                .map_err(|e| format!("control_group: {e}"))?
                .map(|c| c.gid)
                .expect("a group was given"),
        ),
    })
}

/// Sets up the supervisor `sup`: its held sockets and control server (bound now, or handed
/// over by `warden upgrade`), programs, reloader, service-manager links.
pub(super) fn supervisor(
    mut sup: Supervisor,
    config: &Config,
    handle: &DaemonHandle,
    log: &LogHandle,
    (bound, server): (Bound, ControlServer),
) -> Result<Supervisor, String> {
    let d = &config.daemon;
    bound.hand_to(&mut sup)?;
    sup.set_log(log.clone());
    sup.set_kill_strays(true);
    sup.set_shutdown_timeout(d.shutdown_timeout);
    sup.set_exit_on_fatal(d.exit_on_fatal);
    sup.set_scale_program(d.scale_program.clone());
    sup.set_cgroups(d.cgroups);
    sup.set_pid_namespace(d.pid_namespace);
    // Started as root to become `user`: cgroup mode was to be had.
    if d.user.is_some() {
        sup.expect_cgroup_mode();
    }
    sup.set_config_path(config.path.display().to_string());
    let manager = handle.service_manager();
    if let Some(n) = &manager.notifier {
        sup.set_notifier(n.clone());
        if let Some(w) = manager.watchdog {
            sup.set_service_watchdog(n.clone(), w / 2);
        }
    }
    sup.set_control(server).map_err(|e| e.to_string())?;
    sup.set_upgradable(true);
    for spec in &config.programs {
        sup.add(ProgramDef::from_spec(spec))
            .map_err(|e| format!("program {}: {e}", spec.name))?;
    }
    let path = config.path.clone();
    let running = config.daemon.clone();
    sup.set_reloader(Box::new(move || {
        let new = Config::load(&path).map_err(|e| e.to_string())?;
        // The same account check as `start` and `check`: an unknown user is a configuration
        // error with its key (exit 6), found before anything changes.
        let problems = super::unresolvable_accounts(&new);
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(ReloadSet {
            programs: new.programs.iter().map(ProgramDef::from_spec).collect(),
            scale_program: new.daemon.scale_program.clone(),
            sockets: Some(new.sockets.clone()),
            notes: daemon_changes(&running, &new.daemon)
                .into_iter()
                .map(|k| format!("daemon.{k} changed: takes effect when warden restarts"))
                .collect(),
            upgrade_blockers: super::upgrade::blockers(&running, &new.daemon),
        })
    }));
    Ok(sup)
}

/// The `[daemon]` settings a reload cannot apply to a running daemon that differ between `old`
/// and `new`: their keys.
pub(super) fn daemon_changes(
    old: &warden::config::DaemonSpec,
    new: &warden::config::DaemonSpec,
) -> Vec<&'static str> {
    let mut keys = Vec::new();
    macro_rules! cmp {
        ($($field:ident),*) => {$(
            if old.$field != new.$field {
                keys.push(stringify!($field));
            }
        )*};
    }
    cmp!(
        pidfile,
        directory,
        umask,
        user,
        group,
        stdout,
        stderr,
        log,
        log_level,
        log_format,
        syslog_facility,
        syslog_ident,
        ready_timeout,
        shutdown_timeout,
        exit_on_fatal,
        control_socket,
        control_group,
        metrics,
        cgroups,
        pid_namespace
    );
    keys
}

pub(super) fn log_config(config: &Config, foreground: bool) -> LogConfig {
    let d = &config.daemon;
    let syslog = || Target::Syslog {
        facility: d.syslog_facility.clone(),
        ident: d.syslog_ident.clone(),
        socket: None,
    };
    let target = match &d.log {
        LogSpec::Auto if foreground => Target::Stderr,
        LogSpec::Auto => syslog(),
        LogSpec::Stderr => Target::Stderr,
        LogSpec::Syslog => syslog(),
        LogSpec::File(p) => Target::File(p.clone()),
    };
    LogConfig {
        target,
        level: d.log_level,
        format: d.log_format,
    }
}

pub(super) fn event_loop(
    sup: &mut Supervisor,
    signals: &mut Signals,
    upgrade: &super::upgrade::Context<'_>,
) -> u8 {
    loop {
        match sup.run(signals) {
            // Returns only if the new binary did not take over: this image runs on.
            Ok(RunExit::Upgrade) => super::upgrade::perform(sup, upgrade, signals),
            // Under exit_on_fatal, a program's failure ended it: exit as that program did.
            Ok(RunExit::Shutdown) => return sup.failure_exit().unwrap_or(exit::OK),
            // The reloader is set: SIGHUP is handled inside the loop.
            Ok(RunExit::Reload) => {}
            Err(e) => {
                log::error!("supervisor failed: {e}; stopping every worker");
                sup.shutdown(true);
                let _ = sup.run(signals);
                return exit::FAILURE;
            }
        }
    }
}
