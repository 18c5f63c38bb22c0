//! `cargo bench --bench start [-- --runs N] [--nofile N]`: how long until a daemon is really started.
//!
//! For each launcher, one run is: take t0, spawn the launcher, wait for it to exit (t1), then
//! check at once whether its pidfile is complete — it exists, holds a pid, and that pid is a live
//! process that is not a zombie. If it is, t2 = t1 ("complete at exit"); if not, poll in a tight
//! loop (bounded, 5 s) until it is and take t2 then. The figure reported is t2 - t0: the time a
//! script that runs the launcher and then reads the pidfile must wait before it can trust the
//! pidfile. After every run the daemon is stopped (SIGTERM, then SIGKILL if it lingers) and the
//! pidfile removed, so the next run starts clean.
//!
//! Launchers, interleaved in a fresh random order every round so that machine noise hits all of
//! them alike: `warden -c CFG start` (this package's binary), `daemonize -p P -l P /bin/sleep 1000`
//! (Debian `daemonize`), `start-stop-daemon --start --background --make-pidfile` (dpkg),
//! python-daemon (`daemon.DaemonContext` with a `TimeoutPIDLockFile`, Debian `python3-daemon`),
//! the floor — `benches/handshake.c`, the least a C launcher can do and still wait for its
//! daemon: lock, fork, setsid, fork, write the pid, hand "R" back — and, as a baseline, spawning
//! `/bin/true` and waiting for it. A peer whose tool is missing is skipped with a note.
//!
//! The bench makes itself a child subreaper, so every daemon and every orphaned intermediate
//! process becomes its child: it can reap them (PID 1 in containers often does not) and, when it
//! ends — normally, on error, on panic or on Ctrl-C — kill whatever is left by pid.

mod common;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{ErrorKind, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use common::procs::{alive, our_children};
use common::{
    Arg, Stop, TempDir, WARDEN_BIN_VAR, XorShift, cpu_model, make_dir, percentile, read_trim,
    warden_bin,
};

/// How long a launcher may run before the watchdog kills it.
const LAUNCHER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to poll for a complete pidfile after the launcher has exited.
const PIDFILE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a daemon has to exit after SIGTERM before it gets SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(3);

const PYTHON: &str = "/usr/bin/python3";
const PYTHON_SCRIPT: &str = "\
import sys, time
import daemon, daemon.pidfile
with daemon.DaemonContext(detach_process=True,
                          pidfile=daemon.pidfile.TimeoutPIDLockFile(sys.argv[1])):
    time.sleep(1000)
";

fn main() {
    common::bench_main("start", None, |stop, subreaper| {
        run(&Options::from_args(), stop, subreaper)
    })
}

struct Options {
    runs: usize,
    seed: u64,
    /// `--nofile N`: the `RLIMIT_NOFILE` every launcher inherits (`None`: leave it as it is).
    nofile: Option<u64>,
}

impl Options {
    /// `--runs N` (default 100), `--seed S` and `--nofile N`; anything else (cargo passes
    /// `--bench`) is ignored.
    fn from_args() -> Options {
        let mut opts = Options {
            runs: 100,
            seed: common::clock_seed(),
            nofile: None,
        };
        let (args, _) = common::parse_args(&["--runs", "--seed", "--nofile"]);
        for Arg { key, value } in args {
            if key != "--runs" && key != "--seed" && key != "--nofile" {
                continue;
            }
            match value.as_deref().map(str::parse::<u64>) {
                Some(Ok(n)) if n > 0 && key == "--runs" => opts.runs = n as usize,
                Some(Ok(n)) if key == "--seed" => opts.seed = n | 1,
                Some(Ok(n)) if n > 0 && key == "--nofile" => opts.nofile = Some(n),
                _ => eprintln!("bench: ignoring {key} without a positive number"),
            }
        }
        opts
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Warden,
    Daemonize,
    StartStopDaemon,
    PythonDaemon,
    Floor,
    True,
}

struct Launcher {
    kind: Kind,
    name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    /// The pidfile to wait for; `None` for the baseline.
    pidfile: Option<PathBuf>,
    /// Where the launcher's stderr goes, shown when it fails.
    stderr: PathBuf,
    samples: Vec<Sample>,
    failures: Vec<String>,
}

#[derive(Clone, Copy)]
struct Sample {
    /// t1 - t0: until the launcher exited.
    exit: Duration,
    /// t2 - t0: until the pidfile named a live daemon.
    ready: Duration,
    complete_at_exit: bool,
}

fn run(opts: &Options, stop: &Stop, subreaper: bool) -> Result<(), String> {
    if let Some(n) = opts.nofile {
        // Soft and hard alike (raising the hard limit needs root), so every launcher and daemon
        // starts with this many possible descriptors, as under a container runtime's default.
        setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(|e| {
            format!(
                "cannot set RLIMIT_NOFILE to {n}: {e} (above the hard limit needs CAP_SYS_RESOURCE)"
            )
        })?;
    }
    let tmp = TempDir::new("start", None)?;
    let mut launchers = launchers(tmp.path())?;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    print_header(opts, nproc, &launchers, subreaper);

    let watchdog = Watchdog::start();
    let mut rng = XorShift(opts.seed);
    let mut order: Vec<usize> = (0..launchers.len()).collect();
    let progress = std::io::stderr().is_terminal();
    // One untimed round first, so that every binary and library is in the page cache.
    for l in &mut launchers {
        if let Err(e) = run_once(l, &watchdog) {
            eprintln!("bench: warm-up of {}: {e}", l.name);
        }
    }
    for round in 0..opts.runs {
        rng.shuffle(&mut order);
        for &i in &order {
            if stop.is_set() {
                return Err(format!("interrupted in round {}", round + 1));
            }
            let l = &mut launchers[i];
            match run_once(l, &watchdog) {
                Ok(s) => l.samples.push(s),
                Err(e) => l.failures.push(e),
            }
        }
        if progress && (round + 1) % 10 == 0 {
            eprint!("\rbench: {}/{} rounds", round + 1, opts.runs);
        }
    }
    if progress {
        eprintln!();
    }
    print_table(opts, nproc, &launchers);
    Ok(())
}

/// The launchers whose tools are installed; notes the missing ones.
fn launchers(dir: &Path) -> Result<Vec<Launcher>, String> {
    let mut out = Vec::new();
    let mut add = |kind, name, program: PathBuf, args: Vec<OsString>, pidfile: Option<PathBuf>| {
        let slot = dir.join(format!("{}.stderr", out.len()));
        out.push(Launcher {
            kind,
            name,
            program,
            args,
            pidfile,
            stderr: slot,
            samples: Vec::new(),
            failures: Vec::new(),
        });
    };

    let wdir = make_dir(dir, "warden")?;
    let config = wdir.join("warden.toml");
    let text = format!(
        "[daemon]\npidfile = {:?}\ndirectory = {:?}\nlog = {:?}\n",
        wdir.join("warden.pid"),
        wdir,
        wdir.join("warden.log"),
    );
    fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    add(
        Kind::Warden,
        "warden start",
        warden_bin(),
        vec!["-c".into(), config.into(), "start".into()],
        Some(wdir.join("warden.pid")),
    );

    match common::find_tool("daemonize") {
        Some(p) => {
            let pidfile = make_dir(dir, "daemonize")?.join("sleep.pid");
            let args = vec![
                "-p".into(),
                pidfile.clone().into(),
                "-l".into(),
                pidfile.clone().into(),
                "/bin/sleep".into(),
                "1000".into(),
            ];
            add(Kind::Daemonize, "daemonize(1)", p, args, Some(pidfile));
        }
        None => println!("note: daemonize not found (apt-get install daemonize): skipped"),
    }

    match common::find_tool("start-stop-daemon") {
        Some(p) => {
            let pidfile = make_dir(dir, "ssd")?.join("sleep.pid");
            let args = vec![
                "--start".into(),
                "--background".into(),
                "--make-pidfile".into(),
                "--pidfile".into(),
                pidfile.clone().into(),
                "--exec".into(),
                "/bin/sleep".into(),
                "--".into(),
                "1000".into(),
            ];
            add(
                Kind::StartStopDaemon,
                "start-stop-daemon",
                p,
                args,
                Some(pidfile),
            );
        }
        None => println!("note: start-stop-daemon not found (dpkg): skipped"),
    }

    let pdir = make_dir(dir, "python")?;
    // Not `daemon.py`: the script's directory comes first on sys.path and would shadow the module.
    let script = pdir.join("start_daemon.py");
    fs::write(&script, PYTHON_SCRIPT)
        .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    let has_module = Command::new(PYTHON)
        .args(["-c", "import daemon.pidfile"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_module {
        let pidfile = pdir.join("sleep.pid");
        let args = vec![script.into(), pidfile.clone().into()];
        add(
            Kind::PythonDaemon,
            "python-daemon",
            PathBuf::from(PYTHON),
            args,
            Some(pidfile),
        );
    } else {
        println!("note: {PYTHON} cannot import daemon (apt-get install python3-daemon): skipped");
    }

    match common::compile_c("handshake", dir) {
        Ok(bin) => {
            let pidfile = make_dir(dir, "floor")?.join("floor.pid");
            let args = vec![pidfile.clone().into()];
            add(Kind::Floor, "C handshake (floor)", bin, args, Some(pidfile));
        }
        Err(e) => println!("note: {e}: the C handshake floor is skipped"),
    }

    add(
        Kind::True,
        "/bin/true (baseline)",
        PathBuf::from("/bin/true"),
        Vec::new(),
        None,
    );
    Ok(out)
}

/// One timed start of `l`, followed by stopping its daemon. Errors describe a failed run.
fn run_once(l: &Launcher, watchdog: &Watchdog) -> Result<Sample, String> {
    if let Some(p) = &l.pidfile {
        remove_if_present(p)?;
    }
    let stderr = File::create(&l.stderr)
        .map_err(|e| format!("cannot create {}: {e}", l.stderr.display()))?;
    let mut cmd = Command::new(&l.program);
    // Under systemd, `warden start` would stay in the foreground and notify instead.
    cmd.env_remove("NOTIFY_SOCKET");
    cmd.args(&l.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);

    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", l.program.display()))?;
    watchdog.arm(child.id());
    let status = child.wait();
    let t1 = Instant::now();
    watchdog.disarm();

    let mut sample = Sample {
        exit: t1 - t0,
        ready: t1 - t0,
        complete_at_exit: true,
    };
    let mut daemon = None;
    if let Some(p) = &l.pidfile {
        daemon = complete_pid(p);
        // A launcher that failed is not waited for: the run is a failure anyway.
        let failed = !status.as_ref().is_ok_and(ExitStatus::success);
        if daemon.is_none() && !failed {
            sample.complete_at_exit = false;
            let deadline = t1 + PIDFILE_TIMEOUT;
            while daemon.is_none() && Instant::now() < deadline {
                std::thread::yield_now();
                daemon = complete_pid(p);
            }
            sample.ready = Instant::now() - t0;
        }
    }

    // Measurement done: now judge the run and clean up after it, whatever happened.
    let verdict = judge(l, status, l.pidfile.is_none() || daemon.is_some());
    let cleanup = cleanup_run(l, daemon);
    verdict?;
    cleanup?;
    Ok(sample)
}

fn judge(l: &Launcher, status: std::io::Result<ExitStatus>, complete: bool) -> Result<(), String> {
    let status = status.map_err(|e| format!("waiting for the launcher: {e}"))?;
    if !status.success() {
        let text = fs::read_to_string(&l.stderr).unwrap_or_default();
        return Err(format!("launcher exited with {status}: {}", text.trim()));
    }
    if !complete {
        return Err(format!(
            "no live pid in the pidfile {PIDFILE_TIMEOUT:?} after the launcher exited"
        ));
    }
    Ok(())
}

/// Stops the run's daemon, reaps what it orphaned and removes a leftover pidfile.
fn cleanup_run(l: &Launcher, daemon: Option<i32>) -> Result<(), String> {
    let mut result = Ok(());
    // A daemon that became complete after the poll gave up is still ours to stop.
    let daemon = daemon.or_else(|| l.pidfile.as_deref().and_then(complete_pid));
    if let Some(pid) = daemon {
        result = terminate(pid);
    }
    // Anything else still attached to us (intermediate zombies, a daemon that never wrote its
    // pidfile) goes too.
    for pid in our_children() {
        let r = terminate(pid);
        if result.is_ok() {
            result = r;
        }
    }
    if let Some(p) = &l.pidfile {
        remove_if_present(p)?;
    }
    result
}

fn remove_if_present(p: &Path) -> Result<(), String> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", p.display()))
        }
        _ => Ok(()),
    }
}

/// The pid in `path` if the file is complete: it parses and names a live, non-zombie process.
fn complete_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    (pid > 0 && alive(pid)).then_some(pid)
}

/// SIGTERM, wait (bounded) for the process to go, SIGKILL if it lingers; reaps it if it is ours.
fn terminate(pid: i32) -> Result<(), String> {
    for (signal, timeout) in [
        (Signal::SIGTERM, TERM_TIMEOUT),
        (Signal::SIGKILL, TERM_TIMEOUT),
    ] {
        if gone(pid) {
            return Ok(());
        }
        match kill(Pid::from_raw(pid), signal) {
            Err(Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(format!("cannot send {signal} to pid {pid}: {e}")),
            Ok(()) => {}
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if gone(pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Err(format!("pid {pid} survived SIGKILL for {TERM_TIMEOUT:?}"))
}

/// Reaps `pid` if it is our (dead) child, then tells whether it is gone or a zombie we cannot reap.
fn gone(pid: i32) -> bool {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    !alive(pid)
}

/// Kills a launcher that has run longer than [`LAUNCHER_TIMEOUT`], so that waiting for it can
/// block (no polling during the measurement) and still be bounded. It wakes four times a second.
struct Watchdog {
    armed: Arc<Mutex<Option<(u32, Instant)>>>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let armed: Arc<Mutex<Option<(u32, Instant)>>> = Arc::default();
        let shared = Arc::clone(&armed);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let mut slot = shared.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((pid, deadline)) = *slot
                    && Instant::now() >= deadline
                {
                    eprintln!(
                        "bench: launcher pid {pid} still running after {LAUNCHER_TIMEOUT:?}: killing it"
                    );
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    *slot = None;
                }
            }
        });
        Watchdog { armed }
    }

    fn arm(&self, pid: u32) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((pid, Instant::now() + LAUNCHER_TIMEOUT));
    }

    fn disarm(&self) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn print_header(opts: &Options, nproc: usize, launchers: &[Launcher], subreaper: bool) {
    println!("warden start benchmark");
    println!(
        "  measures: from spawning the launcher until it has exited AND its pidfile names a live,"
    );
    println!(
        "            non-zombie process (t2 - t0); if the pidfile is not complete when the launcher"
    );
    println!("            exits, it is polled in a tight loop (at most {PIDFILE_TIMEOUT:?})");
    println!(
        "  runs: {} per launcher, interleaved in a random order each round (seed {}), after 1 untimed warm-up round",
        opts.runs, opts.seed
    );
    println!(
        "  machine: nproc {nproc}, {}, kernel {}, load average at start {}",
        cpu_model(),
        read_trim("/proc/sys/kernel/osrelease"),
        read_trim("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            println!("  RLIMIT_NOFILE: soft {soft}, hard {hard} (--nofile N sets both)")
        }
        Err(e) => println!("  RLIMIT_NOFILE: unknown ({e})"),
    }
    for l in launchers {
        let version = match l.kind {
            Kind::Warden if common::warden_bin_overridden() => {
                format!("${WARDEN_BIN_VAR}")
            }
            Kind::Warden => format!("warden {} (release build)", env!("CARGO_PKG_VERSION")),
            Kind::Daemonize => package_version("daemonize"),
            Kind::StartStopDaemon => package_version("dpkg"),
            Kind::PythonDaemon => package_version("python3-daemon"),
            Kind::Floor => "benches/handshake.c, cc -O2".to_string(),
            Kind::True => package_version("coreutils"),
        };
        let args: Vec<String> = l
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        println!(
            "  {:<22} {} {}   [{version}]",
            l.name,
            l.program.display(),
            args.join(" ")
        );
    }
    if !subreaper {
        println!("  note: could not become a child subreaper; daemons are reparented to PID 1");
    }
    println!();
}

fn print_table(opts: &Options, nproc: usize, launchers: &[Launcher]) {
    let median = |l: &Launcher| percentile(&ready_ms(l), 50.0);
    let warden = launchers
        .iter()
        .find(|l| l.kind == Kind::Warden)
        .and_then(median);
    println!(
        "time until the pidfile names a live daemon, {} runs each, nproc {nproc} (ms; lower is better)",
        opts.runs
    );
    println!(
        "{:<22} {:>8} {:>8} {:>11} {:>19} {:>8} {:>16}",
        "launcher", "median", "p90", "exit median", "complete at exit", "failed", "warden/this"
    );
    for l in launchers {
        let ready = ready_ms(l);
        let exit: Vec<f64> = l.samples.iter().map(|s| ms(s.exit)).collect();
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        let complete = if l.pidfile.is_some() {
            let k = l.samples.iter().filter(|s| s.complete_at_exit).count();
            format!("{k}/{}", l.samples.len() + l.failures.len())
        } else {
            "(no pidfile)".into()
        };
        let ratio = match (warden, median(l)) {
            (Some(w), Some(m)) if m > 0.0 => format!("{:.2}", w / m),
            _ => "-".into(),
        };
        println!(
            "{:<22} {:>8} {:>8} {:>11} {:>19} {:>8} {:>16}",
            l.name,
            fmt(median(l)),
            fmt(percentile(&ready, 90.0)),
            fmt(percentile(&exit, 50.0)),
            complete,
            l.failures.len(),
            ratio
        );
    }
    println!();
    println!(
        "median, p90: of t2 - t0 over the successful runs; exit median: of t1 - t0 (launcher exit only)"
    );
    println!(
        "complete at exit: runs whose pidfile already named a live daemon when the launcher exited"
    );
    println!(
        "warden/this: warden's median divided by this launcher's median (< 1: warden is faster)"
    );
    for l in launchers.iter().filter(|l| !l.failures.is_empty()) {
        println!(
            "{}: {} failed runs, first: {}",
            l.name,
            l.failures.len(),
            l.failures[0]
        );
    }
}

fn ready_ms(l: &Launcher) -> Vec<f64> {
    l.samples.iter().map(|s| ms(s.ready)).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn package_version(package: &str) -> String {
    common::package_version(package).unwrap_or_else(|| format!("{package} ?"))
}
