//! A small daemon built on the warden library, exercising its life cycle: exit hooks, the signal
//! map, logging and readiness. The integration tests drive it; it is also a template.
//!
//! ```sh
//! cargo run --example lifecycle -- --dir /tmp/lc            # daemonize, log to /tmp/lc/app.log
//! cargo run --example lifecycle -- --dir /tmp/lc --foreground --log stderr
//! ```
//!
//! Files it writes in `--dir`: `app.pid` (the pidfile), `hooks.log` (one line per exit hook run:
//! `NAME PID pidfile=present|absent`), `events.log` (one line per signal event).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use warden::log::{LogConfig, Target};
use warden::{Daemon, Forked, SignalAction, SignalEvent, SignalMap, Signals, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Wait for signals; write each event to events.log.
    Events,
    /// Return from main right after becoming ready.
    Return,
    /// Call `warden::exit(3)` right after becoming ready.
    Exit,
    /// Panic in the main thread right after becoming ready.
    Panic,
    /// Call `fail()` during initialisation.
    Fail,
    /// Log a numbered line every `--interval`, until stopped.
    Ticker,
    /// Never report readiness: the launcher's `--ready-timeout` must kill the daemon.
    Hang,
}

#[derive(Debug, Parser)]
struct Args {
    /// Directory for the pidfile and the files written.
    #[arg(long)]
    dir: PathBuf,
    /// Stay in the foreground.
    #[arg(long)]
    foreground: bool,
    /// What to do once ready.
    #[arg(long, value_enum, default_value = "events")]
    mode: Mode,
    /// Log destination: `stderr`, `file:PATH` or `syslog:SOCKET`.
    #[arg(long, default_value = "file")]
    log: String,
    /// Period of the ticker.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long the launcher waits for readiness.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// On a graceful shutdown, linger this long (a second TERM cuts it short).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    linger: Duration,
}

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Reached in the launcher when the daemon failed, died or timed out.
            eprintln!("lifecycle: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), warden::Error> {
    let args = Args::parse();
    let dir = std::path::absolute(&args.dir).unwrap();
    let pidfile = dir.join("app.pid");
    let hooks_log = dir.join("hooks.log");

    // Registered in the launcher: must never run, neither here nor in the daemon.
    let l = hooks_log.clone();
    warden::on_exit("launcher", move || {
        append(&l, &format!("launcher {}", std::process::id()))
    });

    let mut daemon = Daemon::new()
        .pidfile(&pidfile)
        .directory(&dir)
        .stderr(Stdio::File(dir.join("stderr.log")))
        .foreground(args.foreground)
        .ready_timeout(args.ready_timeout)
        .start()?;

    // In the daemon: hooks A, B, P (panics), C — they must run C, P, B, A, then the pidfile goes.
    for name in ["A", "B", "P", "C"] {
        let (log, pf) = (hooks_log.clone(), pidfile.clone());
        daemon.on_exit(name, move || {
            let state = if pf.exists() { "present" } else { "absent" };
            append(
                &log,
                &format!("{name} {} pidfile={state}", std::process::id()),
            );
            if name == "P" {
                panic!("hook P panics on purpose");
            }
        });
    }

    let target = match args.log.split_once(':') {
        Some(("file", path)) => Target::File(path.into()),
        Some(("syslog", sock)) => Target::Syslog {
            facility: "local3".into(),
            ident: "lifecycle".into(),
            socket: Some(sock.into()),
        },
        _ if args.log == "stderr" => Target::Stderr,
        _ => Target::File(dir.join("app.log")),
    };
    let log = match warden::log::init(&LogConfig {
        target,
        level: log::LevelFilter::Info,
    }) {
        Ok(l) => l,
        Err(e) => daemon.fail(&format!("cannot log: {e}")),
    };
    // The default map, plus USR2 to let the tests provoke a panic in the main thread.
    let map = SignalMap::default().set(
        libc::SIGUSR2,
        SignalAction::Event(SignalEvent::Other(libc::SIGUSR2)),
    );
    let mut signals = match Signals::with_map(map) {
        Ok(s) => s,
        Err(e) => daemon.fail(&format!("cannot install signal handlers: {e}")),
    };

    // A forked child that exits normally must not run the daemon's hooks.
    match warden::fork() {
        Ok(Forked::Child) => warden::exit(0),
        Ok(Forked::Parent(pid)) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        Err(e) => daemon.fail(&format!("fork: {e}")),
    }

    match args.mode {
        Mode::Fail => daemon.fail("initialisation failed on purpose"),
        Mode::Return => {
            daemon.ready();
            return Ok(());
        }
        Mode::Exit => {
            daemon.ready();
            warden::exit(3);
        }
        Mode::Panic => {
            daemon.ready();
            panic!("main panics on purpose");
        }
        Mode::Hang => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        Mode::Events | Mode::Ticker => daemon.ready(),
    }
    log::info!("ready (pid {})", std::process::id());

    let events_log = dir.join("events.log");
    let mut n: u64 = 0;
    let mut next_tick = Instant::now();
    let mut stop_at: Option<Instant> = None;
    loop {
        let timeout = match (args.mode, stop_at) {
            (_, Some(t)) => Some(t.saturating_duration_since(Instant::now())),
            (Mode::Ticker, None) => Some(next_tick.saturating_duration_since(Instant::now())),
            _ => None,
        };
        for event in signals.wait(timeout) {
            append(&events_log, &format!("{event:?}"));
            match event {
                SignalEvent::GracefulShutdown if args.linger.is_zero() => return Ok(()),
                SignalEvent::GracefulShutdown => stop_at = Some(Instant::now() + args.linger),
                SignalEvent::FastShutdown => return Ok(()),
                SignalEvent::ReopenLogs => {
                    if let Err(e) = log.reopen() {
                        log::error!("reopen: {e}");
                    }
                }
                SignalEvent::Other(sig) if sig == libc::SIGUSR2 => panic!("panic on SIGUSR2"),
                _ => {}
            }
        }
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        if args.mode == Mode::Ticker {
            while Instant::now() >= next_tick {
                log::info!("line {n}");
                n += 1;
                next_tick += args.interval;
            }
        }
    }
}
