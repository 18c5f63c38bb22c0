//! `warden run` and `warden start`: become the daemon described by `[daemon]`, then serve events
//! until asked to stop.

use std::process::ExitCode;
use std::time::Instant;

use warden::config::{Config, LogSpec};
use warden::log::{LogConfig, LogHandle, Target};
use warden::{Daemon, DaemonHandle, ServiceManager, SignalEvent, Signals, Stdio};

use super::exit;

/// Becomes the daemon (or stays in the foreground) and runs its event loop.
pub fn serve(config: Config, foreground: bool) -> ExitCode {
    // Read systemd's variables once, before any thread exists, and keep them from children.
    let manager = ServiceManager::from_env();
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
        .stdout(stdio(&d.stdout))
        .stderr(stdio(&d.stderr))
        .chown_pidfile(true)
        .foreground(foreground)
        .ready_timeout(d.ready_timeout)
        .service_manager(manager);
    if let Some(u) = &d.user {
        daemon = daemon.user(u);
    }
    if let Some(g) = &d.group {
        daemon = daemon.group(g);
    }
    let mut handle = match daemon.start() {
        Ok(h) => h,
        Err(e) => return exit::report(&e),
    };
    // From here on we are the daemon: everything that fails is reported through the handle,
    // which carries it back to the launcher.
    warden::hooks::set_total_deadline(d.shutdown_timeout);
    let log = match warden::log::init(&log_config(&config, foreground)) {
        Ok(l) => l,
        Err(e) => handle.fail(&format!("cannot start logging: {e}")),
    };
    let signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => handle.fail(&format!("cannot install signal handlers: {e}")),
    };
    handle.ready();
    let _ = handle.notify("STATUS=running");
    log::info!(
        "warden {} started (pid {}, config {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        config.path.display()
    );
    let code = event_loop(&config, &handle, signals, &log);
    let _ = handle.notify("STOPPING=1\nSTATUS=stopping");
    drop(handle); // exit hooks, the pidfile last
    log::info!("warden stopped");
    log.flush();
    ExitCode::from(code)
}

fn log_config(config: &Config, foreground: bool) -> LogConfig {
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
    }
}

fn event_loop(config: &Config, handle: &DaemonHandle, mut signals: Signals, log: &LogHandle) -> u8 {
    // systemd's watchdog: ping at half the interval it asked for.
    let watchdog = handle.service_manager().watchdog.map(|w| w / 2);
    let mut next_ping = watchdog.map(|w| Instant::now() + w);
    if watchdog.is_some() {
        let _ = handle.notify("WATCHDOG=1");
    }
    loop {
        let timeout = next_ping.map(|t| t.saturating_duration_since(Instant::now()));
        let events = signals.wait(timeout);
        if let (Some(interval), Some(at)) = (watchdog, next_ping) {
            if Instant::now() >= at {
                let _ = handle.notify("WATCHDOG=1");
                next_ping = Some(Instant::now() + interval);
            }
        }
        for event in events {
            match event {
                SignalEvent::GracefulShutdown => {
                    log::info!("graceful shutdown requested");
                    return exit::OK;
                }
                SignalEvent::FastShutdown => {
                    log::info!("fast shutdown requested");
                    return exit::OK;
                }
                SignalEvent::Reload => reload(config, handle),
                SignalEvent::ReopenLogs => match log.reopen() {
                    Ok(()) => log::info!("log files reopened"),
                    Err(e) => log::error!("cannot reopen logs: {e}"),
                },
                SignalEvent::AddWorker | SignalEvent::RemoveWorker => {
                    log::info!("no program to scale: this configuration has none");
                }
                SignalEvent::ChildExited | SignalEvent::Other(_) => {}
                _ => {}
            }
        }
    }
}

fn reload(config: &Config, handle: &DaemonHandle) {
    let _ = handle.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    match Config::load(&config.path) {
        Ok(_) => log::info!("configuration {} re-read: valid", config.path.display()),
        Err(e) => log::error!("reload rejected, keeping the running configuration: {e}"),
    }
    let _ = handle.notify("READY=1\nSTATUS=running");
}

fn monotonic_usec() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u128 * 1_000_000 + t.tv_nsec() as u128 / 1_000)
        .unwrap_or(0)
}

