//! `cargo bench --bench supervise [-- --quick | --kills N --rounds N --window SECS --settle SECS
//! --seed S --only warden,runit,daemontools,s6,supervisord,floor,monit --figures 1,4
//! --stop-delay SECS --health-interval SECS --health-window SECS --probes tcp,http]`: warden
//! against runit, daemontools, s6, supervisord and monit on the same work, eight figures,
//! medians and ratios (issue 4, section 5; figures 7 and 8: issue 14, section 4). `--quick` is a
//! smoke run (3 kills, 1 round, 2 s window, 4 s health window). `WARDEN_BENCH_BIN=PATH`
//! measures another warden build. `WARDEN_BENCH_CGROUPS=off` (or `auto`) sets warden's
//! `[daemon] cgroups`: as root warden runs in cgroup mode by default, so two runs with `--only
//! warden,floor` compare the modes; `WARDEN_BENCH_PIDNS=1` sets `pid_namespace = true`.
//!
//! Every supervisor supervises the same tiny C child (`benches/child.c`, compiled here with
//! `cc -O2` into a temp dir): at startup it reads CLOCK_MONOTONIC and publishes that time as the
//! file `OUT/PID`, then sleeps in pause(). Start times are therefore self-reported by the child
//! and carry no polling error; the bench reads the same clock with `clock_gettime`.
//!
//! Figures (each supervisor set to restart at once, no delay, otherwise at its defaults):
//! 1. kill → replacement exec'd: one child per supervisor, all supervisors up side by side; each
//!    round kills each supervisor's child in a fresh random order, the child having been up for
//!    more than [`UP_BEFORE_KILL`]; latency = the new child's start time − the bench's clock read
//!    just before `kill(SIGKILL)`. Median of `--kills` (20) per supervisor.
//! 2. idle context switches/s, 16 workers: voluntary + nonvoluntary switches of every thread of
//!    the supervisor's own processes (not the children), over `--window` (10 s) after a
//!    `--settle` pause (2 s) once all 16 children are up.
//! 3. memory, 16 workers: PSS (`/proc/PID/smaps_rollup`) summed over the same processes, read at
//!    the end of that window.
//! 4. 200 workers cold start → all up: from just before spawning the supervisor to the latest
//!    self-reported start of 200 children (bounded 30 s).
//! 5. SIGTERM to the supervisor → 16 children gone: from `kill(SIGTERM)` to the main supervisor
//!    process until none of the children is alive (zombies count as gone), polled every 100 µs,
//!    bounded 10 s ("never" beyond).
//! 6. SIGKILL to the supervisor → children left running: children alive 1 s after `kill(SIGKILL)`
//!    of the main supervisor process.
//! 7. SIGTERM → a 3-level stack of 16 programs gone, each program taking `--stop-delay` (0.2 s)
//!    to stop: see `supervise/stack.rs`.
//! 8. 200 programs with a health check each (tcp or http, every `--health-interval`), idle:
//!    wake-ups and CPU time of the checker per check, against monit: see `supervise/health.rs`.
//!    It has its own table.
//!
//! Figures 2–8 are measured `--rounds` (3) times per supervisor, each round in a fresh random
//! order (xorshift), each run from a clean directory; the table shows medians over the rounds.
//!
//! A baseline, "floor", runs in figures 1 and 4 beside the peers: `child --supervise N`, a C loop
//! that only fork+execs and respawns on `waitpid`. It shows what process creation itself costs
//! on the machine at that moment; it has no ratio column.
//!
//! Cleanup: the bench makes itself a child subreaper, so everything the supervisors start stays
//! in its process tree even when a supervisor dies; after every run, and when the bench ends
//! (normally, on error, on panic or on Ctrl-C), it SIGKILLs by pid every descendant and every
//! process whose argv holds the bench's marker (`wbsup-BENCHPID-`), then reaps.

mod common;
// Figures 7 and 8, each in its own file (a bench root looks for modules beside itself).
#[path = "supervise/health.rs"]
mod health;
#[path = "supervise/stack.rs"]
mod stack;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use common::procs::{
    alive, ctx_switches, kill_everything, marker_pids, mono_ns, pss_kb, reap, tree_without_marked,
};
use common::{Arg, Stop, TempDir, XorShift, cpu_model, loadavg, percentile};

/// How long a child has been up before it is killed (warden resets its backoff after 1 s up).
const UP_BEFORE_KILL: Duration = Duration::from_millis(1200);
/// How long to wait for the replacement of a killed child.
const REPLACEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the children of a run to be up (figures 1–3, 5, 6).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Figure 4's bound.
const COLD_TIMEOUT: Duration = Duration::from_secs(30);
/// Figure 5's bound.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// Figure 5's poll interval.
const TERM_POLL: Duration = Duration::from_micros(100);
/// Figure 6: how long after SIGKILL the survivors are counted.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// Workers for figures 2, 3, 5 and 6.
const POOL: usize = 16;
/// Workers for figure 4.
const COLD: usize = 200;

fn main() {
    let marker = format!("wbsup-{}-", std::process::id());
    common::bench_main("supervise", Some(marker), |stop, subreaper| {
        run(&Options::from_args(), stop, subreaper)
    })
}

struct Options {
    kills: usize,
    rounds: usize,
    window: Duration,
    settle: Duration,
    seed: u64,
    only: Option<Vec<Kind>>,
    figures: Vec<u8>,
    quick: bool,
    args: Vec<String>,
    /// Figure 7: how long each program of the stack takes to stop after SIGTERM.
    stop_delay: Duration,
    /// Figure 8: the checks' interval, the checks measured, and the idle window.
    health_interval: Duration,
    probes: Vec<health::Probe>,
    health_window: Duration,
}

impl Options {
    fn figure(&self, n: u8) -> bool {
        self.figures.contains(&n)
    }

    /// Anything not understood (cargo passes `--bench`) is ignored with a note if it looks like
    /// an option of ours.
    fn from_args() -> Options {
        let mut opts = Options {
            kills: 20,
            rounds: 3,
            window: Duration::from_secs(10),
            settle: Duration::from_secs(2),
            seed: common::clock_seed(),
            only: None,
            figures: (1..=8).collect(),
            quick: false,
            args: Vec::new(),
            stop_delay: Duration::from_millis(200),
            health_interval: Duration::from_secs(1),
            probes: vec![health::Probe::Tcp, health::Probe::Http],
            health_window: Duration::from_secs(10),
        };
        const VALUED: [&str; 11] = [
            "--kills",
            "--rounds",
            "--window",
            "--settle",
            "--seed",
            "--only",
            "--figures",
            "--stop-delay",
            "--health-interval",
            "--health-window",
            "--probes",
        ];
        let (args, given) = common::parse_args(&VALUED);
        opts.args = given;
        if args.iter().any(|a| a.key == "--quick") {
            opts.quick = true;
            opts.kills = 3;
            opts.rounds = 1;
            opts.window = Duration::from_secs(2);
            opts.settle = Duration::from_secs(1);
            opts.health_window = Duration::from_secs(4);
        }
        for Arg { key, value } in args {
            if !VALUED.contains(&key.as_str()) {
                continue;
            }
            let value = value.unwrap_or_default();
            let secs = value
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && s.is_finite());
            let count = value.parse::<usize>().ok().filter(|n| *n > 0);
            match key.as_str() {
                "--kills" if count.is_some() => opts.kills = count.unwrap_or(1),
                "--rounds" if count.is_some() => opts.rounds = count.unwrap_or(1),
                "--window" if secs.is_some() => {
                    opts.window = Duration::from_secs_f64(secs.unwrap_or(1.0))
                }
                "--settle" if secs.is_some() => {
                    opts.settle = Duration::from_secs_f64(secs.unwrap_or(1.0))
                }
                "--health-interval" if secs.is_some() => {
                    opts.health_interval = Duration::from_secs_f64(secs.unwrap_or(1.0))
                }
                "--health-window" if secs.is_some() => {
                    opts.health_window = Duration::from_secs_f64(secs.unwrap_or(1.0))
                }
                "--stop-delay" => match value.parse::<f64>() {
                    Ok(d) if d >= 0.0 && d.is_finite() => {
                        opts.stop_delay = Duration::from_secs_f64(d)
                    }
                    _ => eprintln!("bench: ignoring --stop-delay {value:?}"),
                },
                "--probes" => {
                    opts.probes = value
                        .split(',')
                        .filter_map(|n| {
                            let p = health::Probe::ALL
                                .into_iter()
                                .find(|p| p.slug() == n.trim());
                            if p.is_none() {
                                eprintln!("bench: --probes: no probe {n:?} (tcp, http)");
                            }
                            p
                        })
                        .collect();
                }
                "--seed" => match value.parse::<u64>() {
                    Ok(s) => opts.seed = s | 1,
                    Err(_) => eprintln!("bench: ignoring --seed {value:?}"),
                },
                "--only" => {
                    let kinds: Vec<Kind> = value
                        .split(',')
                        .filter_map(|n| {
                            let k = Kind::ALL.into_iter().find(|k| k.slug() == n.trim());
                            if k.is_none() {
                                eprintln!("bench: --only: unknown supervisor {n:?}");
                            }
                            k
                        })
                        .collect();
                    opts.only = Some(kinds);
                }
                "--figures" => {
                    opts.figures = value
                        .split(',')
                        .filter_map(|f| match f.trim().parse::<u8>() {
                            Ok(n @ 1..=8) => Some(n),
                            _ => {
                                eprintln!("bench: --figures: no figure {f:?} (1 to 8)");
                                None
                            }
                        })
                        .collect();
                }
                _ => eprintln!("bench: ignoring {key} {value:?}"),
            }
        }
        opts
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Warden,
    Runit,
    Daemontools,
    S6,
    Supervisord,
    /// The baseline: `child --supervise N` (benches/child.c), fork+exec and waitpid, nothing else.
    Floor,
    /// monit, figure 8 only: it checks, it does not supervise these children.
    Monit,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Warden,
        Kind::Runit,
        Kind::Daemontools,
        Kind::S6,
        Kind::Supervisord,
        Kind::Floor,
        Kind::Monit,
    ];

    fn slug(self) -> &'static str {
        match self {
            Kind::Warden => "warden",
            Kind::Runit => "runit",
            Kind::Daemontools => "daemontools",
            Kind::S6 => "s6",
            Kind::Supervisord => "supervisord",
            Kind::Floor => "floor",
            Kind::Monit => "monit",
        }
    }

    /// In the table of figures 1-7 (monit is only a health checker: figure 8).
    fn in_main_table(self) -> bool {
        self != Kind::Monit
    }

    /// A real supervisor, with a ratio column (not the baseline).
    fn is_peer(self) -> bool {
        !matches!(self, Kind::Warden | Kind::Floor)
    }

    /// The program that is the supervisor's main process.
    fn tool(self) -> &'static str {
        match self {
            Kind::Warden => "warden",
            Kind::Runit => "runsvdir",
            Kind::Daemontools => "svscan",
            Kind::S6 => "s6-svscan",
            Kind::Supervisord => "supervisord",
            Kind::Floor => "child",
            Kind::Monit => "monit",
        }
    }

    /// The Debian package to install, for notes and versions.
    fn package(self) -> &'static str {
        match self {
            Kind::Warden => "-",
            Kind::Runit => "runit",
            Kind::Daemontools => "daemontools",
            Kind::S6 => "s6",
            Kind::Supervisord => "supervisor",
            Kind::Floor => "-",
            Kind::Monit => "monit",
        }
    }
}

/// What every run needs.
struct Ctx<'a> {
    tmp: PathBuf,
    child: PathBuf,
    tools: HashMap<Kind, PathBuf>,
    marker: String,
    stop: &'a Stop,
    next_id: usize,
}

impl Ctx<'_> {
    /// Sleeps, in slices, giving up when the bench is interrupted.
    fn sleep(&self, d: Duration) -> Result<(), String> {
        let end = Instant::now() + d;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }

    fn check(&self) -> Result<(), String> {
        self.stop.check()
    }
}

/// One supervisor started by the bench, with `n` children to bring up.
struct Run {
    kind: Kind,
    dir: PathBuf,
    out: PathBuf,
    marker: String,
    main: i32,
    /// CLOCK_MONOTONIC just before the spawn, in ns.
    t0: i64,
}

fn run(opts: &Options, stop: &Stop, subreaper: bool) -> Result<(), String> {
    let marker = format!("wbsup-{}-", std::process::id());
    let tmp = TempDir::new("supervise", Some(marker.clone()))?;
    let child = common::compile_c("child", tmp.path())?;
    let mut tools = HashMap::new();
    // A private copy: other work on the tree may rebuild target/release/warden mid-run.
    let warden = tmp.path().join("warden");
    let source = common::warden_bin();
    fs::copy(&source, &warden).map_err(|e| format!("cannot copy {}: {e}", source.display()))?;
    tools.insert(Kind::Warden, warden);
    tools.insert(Kind::Floor, child.clone());
    let wanted: Vec<Kind> = opts.only.clone().unwrap_or_else(|| Kind::ALL.to_vec());
    for k in Kind::ALL.into_iter().filter(|k| k.is_peer()) {
        if !wanted.contains(&k) {
            continue;
        }
        match common::find_tool(k.tool()) {
            Some(p) => {
                tools.insert(k, p);
            }
            None => println!(
                "note: {} not found (apt-get install {}): {} skipped",
                k.tool(),
                k.package(),
                k.slug()
            ),
        }
    }
    let measured: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| wanted.contains(k) && tools.contains_key(k))
        .collect();
    let kinds: Vec<Kind> = measured
        .iter()
        .copied()
        .filter(|k| k.in_main_table())
        .collect();
    if measured.is_empty() {
        return Err("no supervisor to measure".into());
    }
    let mut ctx = Ctx {
        tmp: tmp.path().to_path_buf(),
        child,
        tools,
        marker,
        stop,
        next_id: 0,
    };
    print_header(opts, &ctx, &measured, subreaper);
    let mut rng = XorShift(opts.seed);
    let mut results = Results::default();

    // Figure 1: every supervisor up side by side, one child each.
    if opts.figure(1) {
        eprintln!(
            "bench: figure 1 (kill -> replacement), {} kills each",
            opts.kills
        );
        let r = figure_kill(&mut ctx, &kinds, opts.kills, &mut rng, &mut results);
        kill_everything(Some(&ctx.marker));
        r?;
    }

    // Figures 2-6: one supervisor at a time, rounds in random order. The floor only has a
    // meaning for figure 4 (how fast can 200 processes start here at all).
    let mut order = kinds.clone();
    let mut peers: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|&k| k != Kind::Floor)
        .collect();
    let pool = opts.figure(2) || opts.figure(3) || opts.figure(5);
    let healthy: Vec<Kind> = measured
        .iter()
        .copied()
        .filter(|&k| health::supports(k))
        .collect();
    let mut health_runs: Vec<(health::Probe, Kind)> = opts
        .probes
        .iter()
        .flat_map(|&p| healthy.iter().map(move |&k| (p, k)))
        .filter(|_| opts.figure(8))
        .collect();
    for round in 0..opts.rounds {
        eprintln!("bench: figures 2-8, round {}/{}", round + 1, opts.rounds);
        rng.shuffle(&mut peers);
        for &k in peers.iter().filter(|_| pool) {
            let r = pool_run(&mut ctx, opts, k, &mut results);
            kill_everything(Some(&ctx.marker));
            if let Err(e) = r {
                ctx.check()?;
                results.note(k, format!("round {}: 16-worker run: {e}", round + 1));
            }
        }
        rng.shuffle(&mut peers);
        for &k in peers.iter().filter(|_| opts.figure(6)) {
            let r = kill_run(&mut ctx, k, &mut results);
            kill_everything(Some(&ctx.marker));
            if let Err(e) = r {
                ctx.check()?;
                results.note(k, format!("round {}: SIGKILL run: {e}", round + 1));
            }
        }
        rng.shuffle(&mut order);
        for &k in order.iter().filter(|_| opts.figure(4)) {
            let r = cold_run(&mut ctx, k, &mut results);
            kill_everything(Some(&ctx.marker));
            if let Err(e) = r {
                ctx.check()?;
                results.note(k, format!("round {}: cold start: {e}", round + 1));
            }
        }
        rng.shuffle(&mut peers);
        for &k in peers
            .iter()
            .filter(|&&k| opts.figure(7) && stack::supports(k))
        {
            let r = stack::stack_run(&mut ctx, opts, k, &mut results);
            kill_everything(Some(&ctx.marker));
            if let Err(e) = r {
                ctx.check()?;
                results.note(k, format!("round {}: stack stop: {e}", round + 1));
            }
        }
        rng.shuffle(&mut health_runs);
        for &(probe, k) in &health_runs {
            if results.health_unsupported.contains(&k) {
                continue;
            }
            let r = health::health_run(&mut ctx, opts, k, probe, &mut results);
            kill_everything(Some(&ctx.marker));
            if let Err(e) = r {
                ctx.check()?;
                results.note(
                    k,
                    format!("round {}: health {}: {e}", round + 1, probe.slug()),
                );
            }
        }
    }
    if !kinds.is_empty() && (1..=7).any(|f| opts.figure(f)) {
        print_table(opts, &kinds, &results);
    }
    if opts.figure(8) && !healthy.is_empty() {
        if !kinds.is_empty() && (1..=7).any(|f| opts.figure(f)) {
            println!();
        }
        health::print_table(opts, &healthy, &results);
    }
    print_notes(&results);
    Ok(())
}

/// Where one run lives: a fresh directory, its `out` directory for the children's start files,
/// and the marker its children carry in argv.
struct Place {
    dir: PathBuf,
    out: PathBuf,
    marker: String,
}

impl Place {
    fn new(ctx: &mut Ctx<'_>, kind: Kind, label: &str) -> Result<Place, String> {
        ctx.next_id += 1;
        let id = ctx.next_id;
        let dir = ctx.tmp.join(format!("{}-{label}-{id}", kind.slug()));
        let out = dir.join("out");
        mkdir(&dir)?;
        mkdir(&out)?;
        Ok(Place {
            dir,
            out,
            marker: format!("{}{id}", ctx.marker),
        })
    }

    /// The `[daemon]` table of a warden configuration living here.
    fn warden_daemon_table(&self) -> String {
        let cgroups = std::env::var("WARDEN_BENCH_CGROUPS")
            .map(|v| format!("cgroups = {v:?}\n"))
            .unwrap_or_default();
        let pidns = std::env::var_os("WARDEN_BENCH_PIDNS")
            .map(|_| "pid_namespace = true\n")
            .unwrap_or_default();
        format!(
            "[daemon]\npidfile = {:?}\ndirectory = {:?}\nlog = {:?}\n{cgroups}{pidns}",
            self.dir.join("warden.pid"),
            self.dir,
            self.dir.join("warden.log"),
        )
    }
}

/// Writes the supervisor's configuration for `n` children and starts it.
fn start(ctx: &mut Ctx<'_>, kind: Kind, n: usize, label: &str) -> Result<Run, String> {
    let place = Place::new(ctx, kind, label)?;
    let Place { dir, out, marker } = &place;
    let child = ctx.child.display().to_string();
    let outs = out.display().to_string();
    let tool = ctx.tools[&kind].clone();
    let mut cmd = Command::new(&tool);
    match kind {
        Kind::Warden => {
            let config = dir.join("warden.toml");
            let text = format!(
                "{}\n[program.child]\ncommand = [{child:?}, {outs:?}, {marker:?}]\ninstances = {n}\n",
                place.warden_daemon_table(),
            );
            write(&config, &text)?;
            cmd.arg("-c").arg(&config).arg("run");
        }
        Kind::Runit | Kind::Daemontools | Kind::S6 => {
            let scan = dir.join("service");
            mkdir(&scan)?;
            let script = format!("#!/bin/sh\nexec '{child}' '{outs}' '{marker}'\n");
            for i in 0..n {
                write_service(&scan, &format!("c{i:03}"), &script)?;
            }
            cmd.arg(&scan);
        }
        Kind::Floor => {
            cmd.arg("--supervise")
                .arg(n.to_string())
                .arg(out)
                .arg(marker);
        }
        Kind::Supervisord => {
            let config = dir.join("supervisord.conf");
            let logs = dir.join("childlog");
            mkdir(&logs)?;
            let text = format!(
                "[supervisord]\nnodaemon=true\nlogfile={}\npidfile={}\nchildlogdir={}\nminfds=4096\n\n\
                 [program:child]\ncommand={child} {outs} {marker}\nnumprocs={n}\n\
                 process_name=%(program_name)s_%(process_num)03d\nstartsecs=0\nautorestart=true\n",
                dir.join("supervisord.log").display(),
                dir.join("supervisord.pid").display(),
                logs.display(),
            );
            write(&config, &text)?;
            cmd.arg("-n").arg("-c").arg(&config);
        }
        Kind::Monit => return Err("monit supervises nothing here (figure 8 only)".into()),
    }
    launch(kind, place, cmd)
}

/// Starts `cmd`, the supervisor of a run living in `place`: in its own process group, from
/// `place.dir`, stdout and stderr to files there, no inherited systemd variables.
fn launch(kind: Kind, place: Place, mut cmd: Command) -> Result<Run, String> {
    let Place { dir, out, marker } = place;
    let tool = cmd.get_program().to_owned();
    let stdout = File::create(dir.join("stdout")).map_err(|e| format!("cannot create: {e}"))?;
    let stderr = File::create(dir.join("stderr")).map_err(|e| format!("cannot create: {e}"))?;
    cmd.current_dir(&dir)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let t0 = mono_ns();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    // Reaped by pid (or by `reap`), never through `Child`.
    let main = child.id() as i32;
    drop(child);
    Ok(Run {
        kind,
        dir,
        out,
        marker,
        main,
        t0,
    })
}

/// A service directory `scan/name` whose `run` script is `script` (runit, daemontools, s6).
fn write_service(scan: &Path, name: &str, script: &str) -> Result<(), String> {
    let svc = scan.join(name);
    mkdir(&svc)?;
    let run = svc.join("run");
    write(&run, script)?;
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot chmod {}: {e}", run.display()))
}

fn mkdir(d: &Path) -> Result<(), String> {
    fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
}

/// The children that have reported their start so far: (pid, start ns).
fn reported(out: &Path) -> Vec<(i32, i64)> {
    let Ok(dir) = fs::read_dir(out) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let ns: i64 = fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
        Some((pid, ns))
    })
    .collect()
}

/// Waits until `n` children have reported; fails if the main process dies or after `timeout`.
fn wait_up(
    ctx: &Ctx<'_>,
    run: &Run,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        ctx.check()?;
        reap();
        // Count names only (cheap: the bench must not steal the CPU it measures) while
        // waiting; read the start times once they are all there.
        let count = fs::read_dir(&run.out).map_or(0, |d| {
            d.flatten()
                .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
                .count()
        });
        if count >= n {
            let up = reported(&run.out);
            if up.len() >= n {
                return Ok(up);
            }
        }
        if !alive(run.main) {
            return Err(format!(
                "{} (pid {}) exited with {count}/{n} children up: {}",
                run.kind.tool(),
                run.main,
                tail(&run.dir.join("stderr"))
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("only {count}/{n} children up after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn tail(p: &Path) -> String {
    let text = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    let mut lines: Vec<&str> = lines.into_iter().rev().collect();
    if lines.is_empty() {
        lines.push("(no output)");
    }
    lines.join(" | ")
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Default)]
struct Results {
    /// Figure 1 latencies, ms.
    kill_ms: HashMap<Kind, Vec<f64>>,
    /// Figure 2, switches per second.
    ctx_per_s: HashMap<Kind, Vec<f64>>,
    /// Figure 3, MiB.
    pss_mib: HashMap<Kind, Vec<f64>>,
    /// Figure 4, seconds; infinity when not all up within the bound.
    cold_s: HashMap<Kind, Vec<f64>>,
    /// Figure 5, ms; infinity for "never".
    term_ms: HashMap<Kind, Vec<f64>>,
    /// Figure 6, children alive.
    left: HashMap<Kind, Vec<f64>>,
    /// Figure 7, seconds; infinity for "never".
    stack_s: HashMap<Kind, Vec<f64>>,
    /// Figure 8, one sample per run.
    health: HashMap<(health::Probe, Kind), Vec<health::Sample>>,
    /// Figure 8: supervisors whose build refused the health configuration (skipped after that).
    health_unsupported: HashSet<Kind>,
    /// Figure 8: the checker's own processes (last run).
    health_own: HashMap<Kind, String>,
    /// Processes counted as the supervisor's own in figures 2 and 3 (last run).
    own: HashMap<Kind, String>,
    notes: Vec<(Kind, String)>,
}

impl Results {
    fn note(&mut self, k: Kind, text: String) {
        eprintln!("bench: {}: {text}", k.slug());
        self.notes.push((k, text));
    }
}

fn push(map: &mut HashMap<Kind, Vec<f64>>, k: Kind, v: f64) {
    map.entry(k).or_default().push(v);
}

struct Tracked {
    run: Run,
    known: HashSet<i32>,
    current: (i32, i64),
    dead: bool,
}

/// Figure 1.
fn figure_kill(
    ctx: &mut Ctx<'_>,
    kinds: &[Kind],
    kills: usize,
    rng: &mut XorShift,
    results: &mut Results,
) -> Result<(), String> {
    let mut tracked: Vec<Tracked> = Vec::new();
    for &k in kinds {
        let run = start(ctx, k, 1, "kill")?;
        tracked.push(Tracked {
            run,
            known: HashSet::new(),
            current: (0, 0),
            dead: false,
        });
    }
    for t in &mut tracked {
        match wait_up(ctx, &t.run, 1, START_TIMEOUT) {
            Ok(up) => {
                t.known.extend(up.iter().map(|c| c.0));
                t.current = up[0];
            }
            Err(e) => {
                t.dead = true;
                results.note(t.run.kind, format!("kill run did not start: {e}"));
            }
        }
    }
    let mut order: Vec<usize> = (0..tracked.len()).collect();
    for round in 0..kills {
        rng.shuffle(&mut order);
        for &i in &order {
            let t = &mut tracked[i];
            if t.dead {
                continue;
            }
            // Up for long enough?
            let age = mono_ns() - t.current.1;
            let want = UP_BEFORE_KILL.as_nanos() as i64;
            if age < want {
                ctx.sleep(Duration::from_nanos((want - age) as u64))?;
            }
            let old = t.current.0;
            if !alive(old) {
                t.dead = true;
                results.note(
                    t.run.kind,
                    format!("kill {}: child {old} died by itself", round + 1),
                );
                continue;
            }
            let t_kill = mono_ns();
            if let Err(e) = kill(Pid::from_raw(old), Signal::SIGKILL) {
                return Err(format!("kill -9 {old}: {e}"));
            }
            let deadline = Instant::now() + REPLACEMENT_TIMEOUT;
            let replacement = loop {
                ctx.check()?;
                reap();
                if let Some(&c) = reported(&t.run.out)
                    .iter()
                    .find(|c| !t.known.contains(&c.0))
                {
                    break Some(c);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_micros(500));
            };
            let _ = fs::remove_file(t.run.out.join(old.to_string()));
            match replacement {
                Some(c) => {
                    t.known.insert(c.0);
                    t.current = c;
                    push(
                        &mut results.kill_ms,
                        t.run.kind,
                        (c.1 - t_kill) as f64 / 1e6,
                    );
                }
                None => {
                    t.dead = true;
                    results.note(
                        t.run.kind,
                        format!(
                            "kill {}: no replacement within {REPLACEMENT_TIMEOUT:?}",
                            round + 1
                        ),
                    );
                }
            }
        }
        eprint!("\rbench: figure 1: {}/{kills} kills", round + 1);
    }
    eprintln!();
    Ok(())
}

/// Figures 2, 3 and 5 on one run of 16 workers.
fn pool_run(
    ctx: &mut Ctx<'_>,
    opts: &Options,
    k: Kind,
    results: &mut Results,
) -> Result<(), String> {
    let run = start(ctx, k, POOL, "pool")?;
    let up = wait_up(ctx, &run, POOL, START_TIMEOUT)?;
    ctx.sleep(opts.settle)?;

    // Figure 2: context switches of the supervisor's own processes over the window.
    let own = own_pids(&run);
    let before: Vec<Option<u64>> = own.iter().map(|&p| ctx_switches(p)).collect();
    let w0 = Instant::now();
    ctx.sleep(opts.window)?;
    let secs = w0.elapsed().as_secs_f64();
    let after: Vec<Option<u64>> = own.iter().map(|&p| ctx_switches(p)).collect();
    let mut delta = 0u64;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        match (b, a) {
            (Some(b), Some(a)) => delta += a.saturating_sub(*b),
            _ => results.note(k, format!("pid {} vanished during the window", own[i])),
        }
    }
    push(&mut results.ctx_per_s, k, delta as f64 / secs);

    // Figure 3: PSS of the same processes.
    let pss: u64 = own.iter().filter_map(|&p| pss_kb(p)).sum();
    push(&mut results.pss_mib, k, pss as f64 / 1024.0);
    results.own.insert(k, describe(&own));

    // Figure 5: SIGTERM to the main process, until no child is alive.
    let watch: Vec<i32> = up.iter().map(|c| c.0).filter(|&p| alive(p)).collect();
    if watch.len() != POOL {
        results.note(
            k,
            format!(
                "only {} of {POOL} children alive before SIGTERM",
                watch.len()
            ),
        );
    }
    let t_term = mono_ns();
    kill(Pid::from_raw(run.main), Signal::SIGTERM).map_err(|e| format!("kill -TERM: {e}"))?;
    let gone_at = wait_gone(watch, &run.marker, TERM_TIMEOUT, TERM_POLL);
    push(
        &mut results.term_ms,
        k,
        gone_at.map_or(f64::INFINITY, |t| (t - t_term) as f64 / 1e6),
    );
    ctx.check()
}

/// Polls every `poll` until none of `watch` is alive and no process holds `marker` (anything
/// the supervisor started meanwhile counts too), bounded by `timeout`: the CLOCK_MONOTONIC time
/// it saw them all gone, or `None`.
///
/// One `/proc` read per poll while a watched process lives (the bench must not steal the CPU the
/// dying processes need): the watched ones are dropped from the end as long as they are gone;
/// the whole process table is read only when none is left.
fn wait_gone(mut watch: Vec<i32>, marker: &str, timeout: Duration, poll: Duration) -> Option<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        while watch.last().is_some_and(|&p| !alive(p)) {
            watch.pop();
        }
        if watch.is_empty() {
            let t = mono_ns();
            watch = marker_pids(marker);
            if watch.is_empty() {
                return Some(t);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        reap();
        std::thread::sleep(poll);
    }
}

/// Figure 6.
fn kill_run(ctx: &mut Ctx<'_>, k: Kind, results: &mut Results) -> Result<(), String> {
    let run = start(ctx, k, POOL, "sigkill")?;
    wait_up(ctx, &run, POOL, START_TIMEOUT)?;
    ctx.sleep(Duration::from_millis(500))?;
    kill(Pid::from_raw(run.main), Signal::SIGKILL).map_err(|e| format!("kill -KILL: {e}"))?;
    let end = Instant::now() + KILL_GRACE;
    while Instant::now() < end {
        reap();
        ctx.sleep(Duration::from_millis(10))?;
    }
    let left = marker_pids(&run.marker).len();
    push(&mut results.left, k, left as f64);
    Ok(())
}

/// Figure 4.
fn cold_run(ctx: &mut Ctx<'_>, k: Kind, results: &mut Results) -> Result<(), String> {
    let run = start(ctx, k, COLD, "cold")?;
    match wait_up(ctx, &run, COLD, COLD_TIMEOUT) {
        Ok(up) => {
            let last = up.iter().map(|c| c.1).max().unwrap_or(run.t0);
            push(&mut results.cold_s, k, (last - run.t0) as f64 / 1e9);
            Ok(())
        }
        Err(e) => {
            ctx.check()?;
            push(&mut results.cold_s, k, f64::INFINITY);
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// The supervisor's own processes: the main one and its descendants, minus the children (argv
/// holding the marker) and whatever runs under them (warden's guard process among them).
fn own_pids(run: &Run) -> Vec<i32> {
    tree_without_marked(run.main, &run.marker)
}

/// "3× runsv, 1× runsvdir" for the notes.
fn describe(pids: &[i32]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for &p in pids {
        let name = fs::read_to_string(format!("/proc/{p}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        match counts.iter_mut().find(|c| c.0 == name) {
            Some(c) => c.1 += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| format!("{c}x {n}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

// ---------------------------------------------------------------------------------------------
// Output

fn print_header(opts: &Options, ctx: &Ctx<'_>, kinds: &[Kind], subreaper: bool) {
    println!("warden supervise benchmark (issue 4, section 5)");
    println!(
        "  command: cargo bench --bench supervise{}{}",
        if opts.args.is_empty() { "" } else { " -- " },
        opts.args.join(" ")
    );
    println!(
        "  kills {} per supervisor (child up > {:?} before each); rounds {} for figures 2-8; idle window {:?} after {:?} settle; seed {}{}",
        opts.kills,
        UP_BEFORE_KILL,
        opts.rounds,
        opts.window,
        opts.settle,
        opts.seed,
        if opts.quick { " (--quick)" } else { "" }
    );
    println!(
        "  machine: nproc {}, {}, kernel {}, load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        loadavg()
    );
    println!("  child: {} (cc -O2 benches/child.c)", ctx.child.display());
    for &k in kinds {
        let version = match k {
            Kind::Warden if common::warden_bin_overridden() => format!(
                "${}, copied from {}",
                common::WARDEN_BIN_VAR,
                common::warden_bin().display()
            ),
            Kind::Warden => format!(
                "warden {}, release build, copied from {}",
                env!("CARGO_PKG_VERSION"),
                env!("CARGO_BIN_EXE_warden")
            ),
            Kind::Floor => "benches/child.c, cc -O2".to_string(),
            _ => common::package_version(k.package())
                .unwrap_or_else(|| format!("{} (version unknown)", k.package())),
        };
        let how = match k {
            Kind::Warden => {
                "warden -c DIR/warden.toml run; [program.child] command, instances = N, defaults otherwise"
            }
            Kind::Runit => {
                "runsvdir DIR/service; per child a service dir whose run script execs the child"
            }
            Kind::Daemontools => {
                "svscan DIR/service; per child a service dir whose run script execs the child"
            }
            Kind::S6 => {
                "s6-svscan DIR/service; per child a service dir whose run script execs the child"
            }
            Kind::Supervisord => {
                "supervisord -n -c DIR/supervisord.conf; numprocs = N, startsecs=0, autorestart=true"
            }
            Kind::Floor => {
                "baseline, not a peer: child --supervise N DIR MARKER forks+execs N children and respawns on waitpid (figures 1 and 4 only)"
            }
            Kind::Monit => {
                "figure 8 only: monit -c DIR/monitrc -I; set daemon = the interval; per program a check host with `if failed port P type tcp` or `protocol http`"
            }
        };
        println!("  {:<12} {} [{version}]", k.slug(), ctx.tools[&k].display());
        println!("  {:<12} {how}", "");
    }
    if !subreaper {
        println!("  note: could not become a child subreaper; orphans go to PID 1");
    }
    println!();
}

struct Figure<'a> {
    title: &'static str,
    data: &'a HashMap<Kind, Vec<f64>>,
    fmt: fn(f64) -> String,
    target: &'static str,
}

fn print_table(opts: &Options, kinds: &[Kind], r: &Results) {
    let figures = [
        Figure {
            title: "1 kill -> replacement exec'd, median",
            data: &r.kill_ms,
            fmt: |v| format!("{v:.2} ms"),
            target: "< 2 ms and <= runit",
        },
        Figure {
            title: "2 idle context switches/s, 16 workers",
            data: &r.ctx_per_s,
            fmt: |v| format!("{v:.2}/s"),
            target: "0",
        },
        Figure {
            title: "3 memory, 16 workers (PSS, own procs)",
            data: &r.pss_mib,
            fmt: |v| format!("{v:.2} MiB"),
            target: "< 2 MB",
        },
        Figure {
            title: "4 200 workers cold start -> all up",
            data: &r.cold_s,
            fmt: |v| {
                if v.is_finite() {
                    format!("{v:.3} s")
                } else {
                    "> 30 s".into()
                }
            },
            target: "< 0.2 s",
        },
        Figure {
            title: "5 SIGTERM to supervisor -> 16 gone",
            data: &r.term_ms,
            fmt: |v| {
                if v.is_finite() {
                    format!("{v:.1} ms")
                } else {
                    "never (>=10 s)".into()
                }
            },
            target: "< 10 ms",
        },
        Figure {
            title: "6 SIGKILL to supervisor -> left running",
            data: &r.left,
            fmt: |v| format!("{v:.0}"),
            target: "0",
        },
        Figure {
            title: "7 SIGTERM -> 3-level stack of 16 gone",
            data: &r.stack_s,
            fmt: |v| {
                if v.is_finite() {
                    format!("{v:.3} s")
                } else {
                    "never (>=30 s)".into()
                }
            },
            target: "-",
        },
    ];
    let median = |f: &Figure<'_>, k: Kind| f.data.get(&k).and_then(|v| percentile(v, 50.0));
    let peers: Vec<Kind> = kinds.iter().copied().filter(|&k| k.is_peer()).collect();
    let has_warden = kinds.contains(&Kind::Warden);

    let mut header = vec!["figure (median)".to_string()];
    header.extend(kinds.iter().map(|k| k.slug().to_string()));
    if has_warden {
        header.extend(peers.iter().map(|k| format!("w/{}", k.slug())));
        header.push("warden target".into());
        header.push("met".into());
    }
    let mut rows = vec![header];
    for (i, f) in figures.iter().enumerate() {
        let mut row = vec![f.title.to_string()];
        for &k in kinds {
            row.push(median(f, k).map_or_else(|| "-".into(), f.fmt));
        }
        if has_warden {
            let w = median(f, Kind::Warden);
            for &p in &peers {
                row.push(ratio(w, median(f, p)));
            }
            row.push(f.target.into());
            let met = w.map(|w| {
                Some(match i {
                    0 => w < 2.0 && median(f, Kind::Runit).is_none_or(|r| w <= r),
                    1 => w == 0.0,
                    2 => w < 2.0,
                    3 => w < 0.2,
                    4 => w < 10.0,
                    5 => w == 0.0,
                    _ => return None,
                })
            });
            row.push(match met.flatten() {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            });
        }
        rows.push(row);
    }
    println!(
        "results: medians ({} kills per supervisor for figure 1, {} round(s) for figures 2-7)",
        opts.kills, opts.rounds
    );
    common::table::print_rows(&rows);
    println!();
    println!("w/PEER: warden's median divided by PEER's (< 1: warden lower); '-' when undefined");
    if kinds.contains(&Kind::Floor) {
        println!(
            "floor: a C loop that only fork+execs and respawns on waitpid (benches/child.c --supervise): what process creation costs on this machine"
        );
    }
    println!("MiB = 1024 kB as /proc reports it; the target reads < 2 MB");
    println!("load average at the end: {}", loadavg());
    println!();

    println!("details");
    for &k in kinds {
        if let Some(v) = r.kill_ms.get(&k) {
            let p = |q| percentile(v, q).map_or_else(|| "-".into(), |x| format!("{x:.2}"));
            println!(
                "  figure 1 {:<12} n={:<3} min {} p10 {} median {} p90 {} max {} ms",
                k.slug(),
                v.len(),
                p(0.0),
                p(10.0),
                p(50.0),
                p(90.0),
                p(100.0)
            );
        }
    }
    for f in &figures[1..] {
        for &k in kinds {
            if let Some(v) = f.data.get(&k) {
                let all: Vec<String> = v.iter().map(|&x| (f.fmt)(x)).collect();
                println!("  {:<42} {:<12} {}", f.title, k.slug(), all.join(", "));
            }
        }
    }
    for &k in kinds {
        if let Some(own) = r.own.get(&k) {
            println!("  own processes (figures 2, 3) {:<12} {own}", k.slug());
        }
    }
}

/// The notes of every figure, after the tables.
fn print_notes(r: &Results) {
    for (k, n) in &r.notes {
        println!("  note {}: {n}", k.slug());
    }
}

fn ratio(w: Option<f64>, p: Option<f64>) -> String {
    match (w, p) {
        (Some(w), Some(p)) if w.is_finite() && p.is_finite() && p > 0.0 => format!("{:.2}", w / p),
        (Some(w), Some(p)) if w == 0.0 && p == 0.0 => "0/0".into(),
        (Some(w), Some(p)) if w.is_finite() && p.is_infinite() => "0 (peer never)".into(),
        _ => "-".into(),
    }
}
