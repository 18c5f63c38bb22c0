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
    /// No signal handling at all: after `--ready-delay`, report ready, write `after-ready` to
    /// events.log, then sleep until killed (a library daemon that leaves signals alone).
    Bare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Child {
    /// The child forked before readiness leaves at once through `warden::exit`.
    Exit,
    /// The child drops its copy of the handle (as returning from `main` would), writes its pid
    /// to child.pid and lingers 60 s; the daemon waits for child.pid before going on.
    Linger,
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
    /// What the child forked before readiness does.
    #[arg(long, value_enum, default_value = "exit")]
    child: Child,
    /// Wait this long before reporting readiness (`--mode bare`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    ready_delay: Duration,
    /// Start a thread before daemonizing (which must then be refused).
    #[arg(long)]
    thread_first: bool,
    /// Also register hook `S`, with a deadline of its own (300 ms), that sleeps 60 s.
    #[arg(long)]
    slow_hook: bool,
    /// Also register hook `T`, without a deadline of its own, that sleeps 60 s.
    #[arg(long)]
    stuck_hook: bool,
    /// The deadline for all exit hooks together.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    hooks_deadline: Duration,
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

    if args.thread_first {
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(60)));
    }
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

    warden::hooks::set_total_deadline(args.hooks_deadline);
    let sleeper = |name: &'static str| {
        let log = hooks_log.clone();
        move || {
            std::thread::sleep(Duration::from_secs(60));
            append(&log, &format!("{name} {}", std::process::id()));
        }
    };
    if args.slow_hook {
        warden::hooks::on_exit_with_deadline("S", Duration::from_millis(300), sleeper("S"));
    }
    if args.stuck_hook {
        daemon.on_exit("T", sleeper("T"));
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
    let signals = match args.mode {
        Mode::Bare => None,
        _ => match Signals::with_map(map) {
            Ok(s) => Some(s),
            Err(e) => daemon.fail(&format!("cannot install signal handlers: {e}")),
        },
    };

    // A forked child that exits normally must not run the daemon's hooks; one that drops its
    // copy of the handle must not fail the start, nor keep the instance lock.
    let child_pid = dir.join("child.pid");
    match warden::fork() {
        Ok(Forked::Child) if args.child == Child::Exit => warden::exit(0),
        Ok(Forked::Child) => {
            drop(daemon);
            std::fs::write(&child_pid, format!("{}\n", std::process::id())).unwrap();
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(0);
        }
        Ok(Forked::Parent(pid)) if args.child == Child::Exit => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        Ok(Forked::Parent(_)) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !child_pid.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
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
        Mode::Bare => {
            std::thread::sleep(args.ready_delay);
            daemon.ready();
            append(&dir.join("events.log"), "after-ready");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Mode::Events | Mode::Ticker => daemon.ready(),
    }
    let mut signals = signals.expect("installed in every mode that gets here");
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
