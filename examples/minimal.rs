//! The smallest complete daemon on the warden library, to copy: daemonize, log, signals, ready,
//! exit hooks. `cargo run --example minimal -- /tmp/m` returns once it is ready; then
//! `kill -HUP|-USR1|-TERM $(cat /tmp/m/minimal.pid)`.

use std::path::PathBuf;
use std::process::ExitCode;

use warden::log::{LogConfig, Target};
use warden::{Daemon, SignalEvent, Signals, Stdio};

fn main() -> ExitCode {
    // Display, not Debug: "minimal: already running (pid 812)".
    if let Err(e) = run() {
        eprintln!("minimal: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run() -> Result<(), warden::Error> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp".into()));
    // Before any thread: the launcher returns from here only on error, else exits once ready.
    let mut daemon = Daemon::new()
        .pidfile(dir.join("minimal.pid"))
        .stderr(Stdio::File(dir.join("minimal.err")))
        .start()?;
    // In the daemon from here on; until ready, a failure goes to the launcher with `fail`.
    let target = Target::File(dir.join("minimal.log"));
    let log = match warden::log::init(&LogConfig {
        target,
        level: log::LevelFilter::Info,
        format: warden::log::LogFormat::Text,
    }) {
        Ok(log) => log,
        Err(e) => daemon.fail(&format!("cannot log: {e}")),
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => daemon.fail(&format!("cannot handle signals: {e}")),
    };
    let state = dir.join("state");
    daemon.on_exit("save state", move || std::fs::write(state, "saved\n"));
    daemon.ready();
    log::info!("ready (pid {})", std::process::id());
    for event in &mut signals {
        match event {
            SignalEvent::GracefulShutdown | SignalEvent::FastShutdown => break,
            SignalEvent::Reload => log::info!("reload: re-read the configuration here"),
            SignalEvent::ReopenLogs => {
                if let Err(e) = log.reopen() {
                    log::error!("reopen: {e}");
                }
            }
            _ => {}
        }
    }
    log::info!("stopping");
    Ok(()) // dropping `daemon` runs the exit hooks, the pidfile's removal last
}
