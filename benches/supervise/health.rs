//! Figure 8: 200 programs with a health check each, idle (issue 14 §4: "warden's CPU and
//! wake-ups per second against the checks' own rate, side by side with … any peer you can
//! configure to do the same").
//!
//! Each program is the bench's C child listening on its own loopback port (`child ...
//! listen=PORT`): it answers any request with `HTTP/1.0 200 OK` and counts the connections it
//! accepted in `OUT/.acc.PID`, so the bench knows how many checks really arrived. The checks
//! are `tcp = "127.0.0.1:PORT"` or `http = "http://127.0.0.1:PORT/"` every `--health-interval`
//! (1 s), so 200 / interval checks per second are due.
//!
//! After all 200 are listening and a settle time (at least two intervals: the first regular
//! check comes within one), the bench reads, over `--health-window` (10 s), for the checker's
//! own processes (warden and its guard; monit): voluntary + nonvoluntary context switches
//! ("wake-ups", every thread) and CPU time (`schedstat`, every thread), and the checks the 200
//! servers accepted. It reports each per second and per check.
//!
//! The peer is monit (Debian `monit`): `set daemon INTERVAL` and per program a `check host`
//! with `if failed port P type tcp` or `if failed port P protocol http request "/"`, run in
//! the foreground (`-I`). monit does not start these programs: the bench starts the 200
//! servers itself and monit only checks them — its own processes are monit alone. supervisord
//! has no health checks; superlance's `httpok` runs on supervisord's TICK events (every 5 s at
//! the fastest, TICK_60 by default) and checks one URL per listener, so it cannot do 200
//! checks every 1–2 s and is not measured.
//!
//! A warden build without `[program.NAME.health]` refuses the configuration (`warden check`
//! is run first): the warden column is then skipped with a note.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::percentile;
use super::common::procs::{cpu_ns, ctx_switches_split, user_system_ticks};
use super::common::table::{print_rows, ratio};
use super::{Ctx, Kind, Options, Place, Results, launch, own_pids, reported, wait_up, write};

/// Programs, each with one check.
const PROGRAMS: usize = 200;
/// The checks' timeout, for both.
const CHECK_TIMEOUT_S: u64 = 2;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Probe {
    Tcp,
    Http,
}

impl Probe {
    pub(super) const ALL: [Probe; 2] = [Probe::Tcp, Probe::Http];

    pub(super) fn slug(self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http => "http",
        }
    }
}

/// One figure-8 run: rates over the window.
#[derive(Clone, Copy)]
pub(super) struct Sample {
    /// Connections the 200 servers accepted, per second.
    checks_per_s: f64,
    /// Context switches of the checker's own processes, per second.
    wakeups_per_s: f64,
    /// The voluntary ones among them (sleeps, not preemptions), per second.
    voluntary_per_s: f64,
    /// CPU time of the checker's own processes, ms per second.
    cpu_ms_per_s: f64,
    /// The share of that CPU time spent in user space (utime / (utime + stime), clock ticks: a
    /// coarse figure, ±1 tick of 10 ms over the window).
    user_share: f64,
}

impl Sample {
    fn wakeups_per_check(&self) -> f64 {
        self.wakeups_per_s / self.checks_per_s
    }

    fn voluntary_per_check(&self) -> f64 {
        self.voluntary_per_s / self.checks_per_s
    }

    fn cpu_us_per_check(&self) -> f64 {
        self.cpu_ms_per_s * 1e3 / self.checks_per_s
    }
}

/// Whether figure 8 runs for `k`.
pub(super) fn supports(k: Kind) -> bool {
    matches!(k, Kind::Warden | Kind::Monit)
}

/// One figure-8 run of `k` with `probe` checks.
pub(super) fn health_run(
    ctx: &mut Ctx<'_>,
    opts: &Options,
    k: Kind,
    probe: Probe,
    results: &mut Results,
) -> Result<(), String> {
    let place = Place::new(ctx, k, &format!("health-{}", probe.slug()))?;
    let ports = free_ports(PROGRAMS)?;
    let cmd = match k {
        Kind::Warden => match warden_command(ctx, opts, &place, &ports, probe)? {
            Ok(cmd) => cmd,
            Err(refused) => {
                results.health_unsupported.insert(k);
                results.note(
                    k,
                    format!(
                        "figure 8 skipped: this build refuses [program.NAME.health]: {refused}"
                    ),
                );
                return Ok(());
            }
        },
        Kind::Monit => monit_command(ctx, opts, &place, &ports, probe)?,
        _ => return Err(format!("{} has no health checks here", k.slug())),
    };
    let run = launch(k, place, cmd)?;
    wait_up(ctx, &run, PROGRAMS, super::START_TIMEOUT)?;
    // The first regular check of each program comes within one interval.
    ctx.sleep(
        opts.settle
            .max(opts.health_interval * 2 + Duration::from_secs(1)),
    )?;
    let own = own_pids(&run);
    let sample = measure(ctx, opts, &own, &run.out)?;
    if sample.checks_per_s <= 0.0 {
        results.note(
            k,
            format!(
                "health {}: no check reached the servers in the window",
                probe.slug()
            ),
        );
    }
    results.health.entry((probe, k)).or_default().push(sample);
    results.health_own.insert(k, super::describe(&own));
    ctx.check()
}

/// warden's command for a run in `place`, its configuration written: `Err` inside when this
/// build's `warden check` refuses it (the first line of what it said).
fn warden_command(
    ctx: &Ctx<'_>,
    opts: &Options,
    place: &Place,
    ports: &[u16],
    probe: Probe,
) -> Result<Result<Command, String>, String> {
    let (child, outs) = (
        ctx.child.display().to_string(),
        place.out.display().to_string(),
    );
    let config = place.dir.join("warden.toml");
    let mut text = place.warden_daemon_table();
    for (i, &port) in ports.iter().enumerate() {
        let target = match probe {
            Probe::Tcp => format!("127.0.0.1:{port}"),
            Probe::Http => format!("http://127.0.0.1:{port}/"),
        };
        text += &format!(
            "\n[program.h{i:03}]\ncommand = [{child:?}, {outs:?}, {:?}, \"listen={port}\"]\n\
             [program.h{i:03}.health]\n{} = {target:?}\ninterval = \"{}ms\"\ntimeout = \"{CHECK_TIMEOUT_S}s\"\n",
            place.marker,
            probe.slug(),
            opts.health_interval.as_millis(),
        );
    }
    write(&config, &text)?;
    let warden = &ctx.tools[&Kind::Warden];
    let check = Command::new(warden)
        .arg("-c")
        .arg(&config)
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run warden check: {e}"))?;
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stderr);
        return Ok(Err(why.lines().next().unwrap_or("(no output)").to_string()));
    }
    let mut cmd = Command::new(warden);
    cmd.arg("-c").arg(&config).arg("run");
    Ok(Ok(cmd))
}

/// monit's command for a run in `place`, its control file written. monit checks; it does not
/// start these programs: the bench starts the servers here and waits until all listen.
fn monit_command(
    ctx: &Ctx<'_>,
    opts: &Options,
    place: &Place,
    ports: &[u16],
    probe: Probe,
) -> Result<Command, String> {
    for &port in ports {
        Command::new(&ctx.child)
            .arg(&place.out)
            .arg(&place.marker)
            .arg(format!("listen={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start a server: {e}"))?;
    }
    wait_reported(ctx, &place.out, ports.len())?;
    let config = place.dir.join("monitrc");
    let secs = opts.health_interval.as_secs_f64().round().max(1.0) as u64;
    let d = place.dir.display();
    let mut text = format!(
        "set daemon {secs}\nset logfile {d}/monit.log\nset pidfile {d}/monit.pid\n\
         set idfile {d}/monit.id\nset statefile {d}/monit.state\n"
    );
    let test = match probe {
        Probe::Tcp => "type tcp",
        Probe::Http => "protocol http request \"/\"",
    };
    for (i, &port) in ports.iter().enumerate() {
        text += &format!(
            "check host h{i:03} with address 127.0.0.1\n  \
             if failed port {port} {test} timeout {CHECK_TIMEOUT_S} seconds then alert\n"
        );
    }
    write(&config, &text)?;
    // monit refuses a control file others can read.
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod {}: {e}", config.display()))?;
    let mut cmd = Command::new(&ctx.tools[&Kind::Monit]);
    cmd.arg("-c").arg(&config).arg("-I");
    Ok(cmd)
}

/// Reads the checker's own processes `own` and the servers' counts in `out` before and after
/// the window.
fn measure(ctx: &Ctx<'_>, opts: &Options, own: &[i32], out: &Path) -> Result<Sample, String> {
    // (voluntary switches, nonvoluntary switches, CPU ns, checks accepted, utime, stime)
    let read = || -> Option<[u64; 6]> {
        let mut r = [0, 0, 0, accepted(out), 0, 0];
        for &p in own {
            let (v, n) = ctx_switches_split(p)?;
            let (u, s) = user_system_ticks(p)?;
            r[0] += v;
            r[1] += n;
            r[2] += cpu_ns(p)?;
            r[4] += u;
            r[5] += s;
        }
        Some(r)
    };
    let before = read().ok_or("a checker process vanished before the window")?;
    let w0 = Instant::now();
    ctx.sleep(opts.health_window)?;
    let after = read().ok_or("a checker process vanished during the window")?;
    let secs = w0.elapsed().as_secs_f64();
    let delta = |i: usize| after[i].saturating_sub(before[i]) as f64 / secs;
    Ok(Sample {
        checks_per_s: delta(3),
        wakeups_per_s: delta(0) + delta(1),
        voluntary_per_s: delta(0),
        cpu_ms_per_s: delta(2) / 1e6,
        user_share: delta(4) / (delta(4) + delta(5)).max(f64::MIN_POSITIVE),
    })
}

/// `n` loopback ports below the usual ephemeral range (32768-60999: the checkers' own source
/// ports come from there) that nothing listens on now.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let span = 12_000u32;
    let first = std::process::id() % span;
    let mut ports = Vec::with_capacity(n);
    for i in 0..span {
        let port = (20_000 + (first + i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    Err(format!(
        "only {} free loopback ports in 20000-31999",
        ports.len()
    ))
}

/// Waits until `n` children have reported their start in `out` (the servers of a monit run,
/// started by the bench before monit).
fn wait_reported(ctx: &Ctx<'_>, out: &Path, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + super::START_TIMEOUT;
    while reported(out).len() < n {
        if Instant::now() >= deadline {
            return Err(format!(
                "only {}/{n} servers listening",
                reported(out).len()
            ));
        }
        ctx.sleep(Duration::from_millis(20))?;
    }
    Ok(())
}

/// The connections all servers of a run have accepted so far (`OUT/.acc.PID`).
fn accepted(out: &Path) -> u64 {
    let Ok(dir) = fs::read_dir(out) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| e.file_name().as_encoded_bytes().starts_with(b".acc."))
        .filter_map(|e| {
            fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Figure 8's table: per probe and checker, medians over the rounds, and warden / monit.
pub(super) fn print_table(opts: &Options, kinds: &[Kind], r: &Results) {
    let due = super::health::PROGRAMS as f64 / opts.health_interval.as_secs_f64();
    println!(
        "figure 8: {PROGRAMS} programs with a health check each, idle; interval {:?} ({due:.0} checks/s due), window {:?}; medians over {} round(s)",
        opts.health_interval, opts.health_window, opts.rounds
    );
    let med = |v: &[Sample], f: fn(&Sample) -> f64| {
        percentile(&v.iter().map(f).collect::<Vec<_>>(), 50.0)
    };
    let peer = kinds.iter().copied().find(|&k| k != Kind::Warden);
    let mut header: Vec<String> = [
        "check",
        "checker",
        "checks/s seen",
        "wake-ups/s",
        "wake-ups/check",
        "voluntary/check",
        "CPU ms/s",
        "CPU us/check",
        "user %",
    ]
    .map(String::from)
    .to_vec();
    if let Some(p) = peer {
        header.push(format!("w/{} wake-ups/check", p.slug()));
        header.push(format!("w/{} CPU/check", p.slug()));
    }
    let mut rows = vec![header];
    let mut surprising = Vec::new();
    for &probe in &opts.probes {
        for &k in kinds {
            let Some(v) = r.health.get(&(probe, k)) else {
                continue;
            };
            let fmt = |x: Option<f64>, prec: usize| {
                x.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
            };
            let wpc = med(v, Sample::wakeups_per_check);
            let upc = med(v, Sample::cpu_us_per_check);
            let mut row = vec![
                probe.slug().to_string(),
                k.slug().to_string(),
                fmt(med(v, |s| s.checks_per_s), 1),
                fmt(med(v, |s| s.wakeups_per_s), 1),
                fmt(wpc, 2),
                fmt(med(v, Sample::voluntary_per_check), 2),
                fmt(med(v, |s| s.cpu_ms_per_s), 2),
                fmt(upc, 1),
                fmt(med(v, |s| s.user_share * 100.0), 0),
            ];
            if let Some(p) = peer {
                let theirs = r.health.get(&(probe, p));
                if k == Kind::Warden {
                    row.push(ratio(
                        wpc,
                        theirs.and_then(|t| med(t, Sample::wakeups_per_check)),
                    ));
                    row.push(ratio(
                        upc,
                        theirs.and_then(|t| med(t, Sample::cpu_us_per_check)),
                    ));
                } else {
                    row.extend(["".into(), "".into()]);
                }
            }
            if k == Kind::Warden && wpc.is_some_and(|w| w > 3.0) {
                surprising.push(format!(
                    "warden makes {:.1} wake-ups per {} check (more than 3)",
                    wpc.unwrap_or(0.0),
                    probe.slug()
                ));
            }
            rows.push(row);
        }
    }
    print_rows(&rows);
    println!();
    println!(
        "checks/s seen: connections the {PROGRAMS} servers accepted; wake-ups: voluntary + nonvoluntary context switches of the checker's own processes (every thread); voluntary: the sleeps among them (the rest are preemptions); CPU: their schedstat run time; user %: utime / (utime + stime), in clock ticks"
    );
    println!("w/PEER: warden's per-check figure divided by PEER's (< 1: warden cheaper)");
    for s in &surprising {
        println!("note: {s}");
    }
    println!("details");
    for &probe in &opts.probes {
        for &k in kinds {
            if let Some(v) = r.health.get(&(probe, k)) {
                let all: Vec<String> = v
                    .iter()
                    .map(|s| {
                        format!(
                            "{:.1} checks/s, {:.1} wake-ups/s ({:.1} voluntary), {:.2} CPU ms/s ({:.0} % user)",
                            s.checks_per_s,
                            s.wakeups_per_s,
                            s.voluntary_per_s,
                            s.cpu_ms_per_s,
                            s.user_share * 100.0
                        )
                    })
                    .collect();
                println!(
                    "  figure 8 {:<5} {:<8} {}",
                    probe.slug(),
                    k.slug(),
                    all.join("; ")
                );
            }
        }
    }
    for &k in kinds {
        if let Some(own) = r.health_own.get(&k) {
            println!("  own processes (figure 8) {:<8} {own}", k.slug());
        }
    }
    println!();
}
