//! A job pool inside a warden daemon: daemonize first, then build the pool (its fork server is
//! forked while the daemon is still single-threaded), then serve.
//!
//! ```sh
//! cargo run --example pool_daemon -- --dir /tmp/pd      # returns once the daemon is ready
//! kill -HUP $(cat /tmp/pd/app.pid)                      # runs 10,000 jobs, writes result.txt
//! kill $(cat /tmp/pd/app.pid)                           # stops; pool and fork server go too
//! ```
//!
//! `result.txt` holds `sum=S ok=N errors=E pids=P1,P2 fork_server=F` after each `SIGHUP`.

use std::path::PathBuf;

use clap::Parser;
use warden::log::{LogConfig, Target};
use warden::pool::Pool;
use warden::{Daemon, SignalEvent, Signals, Stdio};

#[derive(Debug, Parser)]
struct Args {
    /// Directory for the pidfile, the log and the results.
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> Result<(), warden::Error> {
    let args = Args::parse();
    let dir = std::path::absolute(&args.dir).unwrap();
    let mut daemon = Daemon::new()
        .pidfile(dir.join("app.pid"))
        .directory(&dir)
        .stderr(Stdio::File(dir.join("stderr.log")))
        .start()?;
    let log = warden::log::init(&LogConfig {
        target: Target::File(dir.join("app.log")),
        level: log::LevelFilter::Info,
        format: warden::log::LogFormat::Text,
    });
    if let Err(e) = log {
        daemon.fail(&format!("cannot log: {e}"));
    }
    // The pool's fork server is forked here, while the daemon is single-threaded.
    let pool = match Pool::builder("squares", |x: u64| -> Result<u64, String> { Ok(x * x) })
        .workers(2)
        .build()
    {
        Ok(p) => p,
        Err(e) => daemon.fail(&format!("cannot build the pool: {e}")),
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => daemon.fail(&format!("cannot install signal handlers: {e}")),
    };
    daemon.ready();
    for event in &mut signals {
        match event {
            SignalEvent::GracefulShutdown | SignalEvent::FastShutdown => break,
            SignalEvent::Reload => {
                let outcomes = pool.map(0..10_000u64).expect("the pool is open");
                let ok: Vec<u64> = outcomes
                    .iter()
                    .filter_map(|o| o.as_ref().ok().copied())
                    .collect();
                let stats = pool.stats();
                let pids: Vec<String> = stats
                    .worker_pids
                    .iter()
                    .flatten()
                    .map(|p| p.to_string())
                    .collect();
                let line = format!(
                    "sum={} ok={} errors={} pids={} fork_server={}\n",
                    ok.iter().sum::<u64>(),
                    ok.len(),
                    outcomes.len() - ok.len(),
                    pids.join(","),
                    stats.fork_server_pid.unwrap_or(0),
                );
                let tmp = dir.join("result.tmp");
                std::fs::write(&tmp, line).unwrap();
                std::fs::rename(&tmp, dir.join("result.txt")).unwrap();
            }
            _ => {}
        }
    }
    pool.terminate();
    drop(pool);
    Ok(()) // dropping `daemon` runs the exit hooks: the pidfile goes last
}
