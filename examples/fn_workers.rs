//! Supervised Rust-function workers: the library's supervisor without the `warden` binary.
//!
//! ```sh
//! cargo run --example fn_workers -- --dir /tmp/fw
//! kill -HUP $(cat /tmp/fw/app.pid)   # writes a status snapshot to /tmp/fw/status.txt
//! ```
//!
//! Runs in the foreground with a pidfile in `--dir`; three instances of a function that reports
//! readiness, sets a status line and sends watchdog pings. `SIGHUP` writes
//! `PROGRAM INDEX PID STATE RESTARTS STATUS` lines to `status.txt`. With `--thread`, a thread is
//! started before the supervisor: forking function workers is then refused (see the log).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use warden::log::{LogConfig, Target};
use warden::supervisor::{
    OutputSpec, ProgramDef, Readiness, RunExit, Supervisor, Work, WorkerContext,
};
use warden::{Daemon, Signals};

#[derive(Debug, Parser)]
struct Args {
    /// Directory for the pidfile, the log and the status snapshots.
    #[arg(long)]
    dir: PathBuf,
    /// Start a thread first (forking workers must then be refused).
    #[arg(long)]
    thread: bool,
}

fn worker(ctx: &WorkerContext) -> i32 {
    ctx.status(&format!("worker {} serving", ctx.index()));
    ctx.ready();
    println!("worker {} ready", ctx.index());
    loop {
        ctx.heartbeat();
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() -> Result<(), warden::Error> {
    let args = Args::parse();
    let dir = std::path::absolute(&args.dir).unwrap();
    let mut daemon = Daemon::new()
        .pidfile(dir.join("app.pid"))
        .directory(&dir)
        .foreground(true)
        .start()?;
    let log = warden::log::init(&LogConfig {
        target: Target::File(dir.join("app.log")),
        level: log::LevelFilter::Info,
        format: warden::log::LogFormat::Text,
    })?;
    let mut signals = Signals::new()?;
    if args.thread {
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    let mut sup = Supervisor::new()?;
    sup.set_log(log);
    let mut def = ProgramDef::new("fn", 3, Work::Fn(Arc::new(worker)));
    def.policy.readiness = Readiness::Notify;
    def.policy.watchdog = Some(Duration::from_secs(2));
    def.policy.max_restarts = 3;
    def.stdout = OutputSpec::Log;
    sup.add(def)?;
    daemon.ready();
    while sup.run(&mut signals)? == RunExit::Reload {
        let mut f = std::fs::File::create(dir.join("status.txt.tmp")).unwrap();
        for s in sup.status() {
            let pid = s.pid.map_or("-".into(), |p| p.to_string());
            let text = s.status_text.unwrap_or_default();
            writeln!(
                f,
                "{} {} {pid} {} {} {text}",
                s.program, s.index, s.state, s.restarts
            )
            .unwrap();
        }
        std::fs::rename(dir.join("status.txt.tmp"), dir.join("status.txt")).unwrap();
    }
    Ok(())
}
