//! `cargo bench --bench deploy [-- --quick | --rounds N --seed S --only LIST --rate N
//! --connections N --slow-start MS --probation SECS --lead SECS --window SECS --no-wrk
//! --records DIR]`: requests served while a single-instance HTTP service is restarted under
//! continuous loopback load, warden against supervisord and runit side by side in one run
//! (issue 15, section 5). `--quick` is a smoke run (1 round, 0.5 s lead, 1.5 s window).
//!
//! Every supervisor runs the same server, the socket-activated fixture
//! `tests/fixtures/activated.rs` (built here with `cargo build --release --example activated`):
//! with a socket passed (`LISTEN_FDS`) it serves that one, otherwise it binds its own port
//! (`--listen`, std's bind, `SO_REUSEADDR`). It waits `--slow-start` (300 ms) before it takes or
//! binds its socket, the start-up time of a real service; on SIGTERM it stops accepting, answers
//! what it accepted and exits. `GET /` answers `200` with its pid; one thread per connection.
//!
//! Setups (`--only` takes these slugs):
//! - `surge`: warden, `update = "surge"`, the socket held by warden (`[socket.web]`), ready by
//!   notify, `probation = "--probation"` (1 s; the default, 10 s, would only make the command
//!   longer): the new instance starts beside the old, which stops once the new one is ready.
//! - `replace`: the same with `update = "replace"`: stop, then start; connections wait in the
//!   held socket meanwhile.
//! - `own-port`: warden, `update = "replace"`, the program binding its own port: what people do
//!   without socket activation.
//! - `supervisord`: `supervisorctl restart web` (its defaults: `startsecs = 1`).
//! - `runit`: `sv restart DIR/service/web`.
//!
//! Two loads, each in runs of its own:
//! - the bench's client ([`load`]): `--connections` (4) threads, one request per connection, on
//!   a fixed schedule adding up to `--rate` (1000) requests per second; a request that comes late
//!   is sent as soon as the previous one is done, and its latency counts from the moment it was
//!   due (no coordinated omission). It records every request, so failures are exact and the p99
//!   is that of the requests due in the restart window (`--window`, 2 s from the moment the
//!   restart command began), answered ones. The run loads for `--lead` (1 s), runs the restart
//!   command, and goes on until the window has passed or the command returned, whichever is
//!   later, plus 0.2 s. `--records DIR` writes each run's requests to `DIR/SETUP-N.tsv`.
//! - `wrk` ([`wrk`], skipped with a note when it is not installed, or with `--no-wrk`): as fast
//!   as it goes on `--connections` connections for lead + window + 0.2 s rounded up to whole
//!   seconds, the restart `--lead` after it started; its counts and p99 cover the whole run.
//!
//! Before the load starts the service has answered for [`SETTLE`] (1 s). Every (setup, load)
//! pair runs once per round, in a fresh random order each round (xorshift; the seed is printed);
//! the tables show medians over `--rounds` (5) and ratios against `surge`, then the failures of
//! each round.
//!
//! The setup `upgrade` runs `warden upgrade` instead of a restart (the time to the new image
//! answering); during every warden run a second thread asks `status` over the control socket in
//! a loop, and the longest gap between two answers is printed (issue 15, section 5).
//!
//! Cleanup: each run's supervisor gets SIGTERM, then 3 s later the bench SIGKILLs by pid every
//! process still below it (the bench is a child subreaper, so nothing escapes its tree); the same
//! happens when the bench ends, however it ends (`common::bench_main`).

mod common;
#[path = "deploy/load.rs"]
mod load;
#[path = "deploy/wrk.rs"]
mod wrk;

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use common::procs::{alive, kill_everything, mono_ns, reap};
use common::table::{print_rows, ratio};
use common::{Arg, Stop, TempDir, XorShift, cpu_model, loadavg, percentile};
use load::{Load, Outcome, Record};
use wrk::{Wrk, WrkFigures};

/// How long the service may take to answer after its supervisor starts.
const UP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a restart command may take before it is killed.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a supervisor has to exit after SIGTERM before everything is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Load kept after the window, so that the window's last requests have their answers.
const TAIL: Duration = Duration::from_millis(200);
/// How long the service has been answering before the load starts: runsv waits a second before
/// it starts again a service that ran for less than one, and warden resets a program's backoff
/// after one second up.
const SETTLE: Duration = Duration::from_secs(1);

fn main() {
    common::bench_main("deploy", None, |stop, subreaper| {
        run(&Options::from_args(), stop, subreaper)
    })
}

struct Options {
    rounds: usize,
    seed: u64,
    only: Option<Vec<Kind>>,
    rate: u32,
    connections: usize,
    slow_start: Duration,
    probation: Duration,
    lead: Duration,
    window: Duration,
    wrk: bool,
    /// `--records DIR`: every client run's requests, one TSV file each.
    records: Option<PathBuf>,
    args: Vec<String>,
}

impl Options {
    fn from_args() -> Options {
        let mut o = Options {
            rounds: 5,
            seed: common::clock_seed(),
            only: None,
            rate: 1000,
            connections: 4,
            slow_start: Duration::from_millis(300),
            probation: Duration::from_secs(1),
            lead: Duration::from_secs(1),
            window: Duration::from_secs(2),
            wrk: true,
            records: None,
            args: Vec::new(),
        };
        const VALUED: [&str; 10] = [
            "--records",
            "--rounds",
            "--seed",
            "--only",
            "--rate",
            "--connections",
            "--slow-start",
            "--probation",
            "--lead",
            "--window",
        ];
        let (args, given) = common::parse_args(&VALUED);
        o.args = given;
        o.wrk = !args.iter().any(|a| a.key == "--no-wrk");
        if args.iter().any(|a| a.key == "--quick") {
            o.rounds = 1;
            o.lead = Duration::from_millis(500);
            o.window = Duration::from_millis(1500);
        }
        for Arg { key, value } in args {
            if VALUED.contains(&key.as_str()) {
                o.set(&key, value.as_deref().unwrap_or(""));
            }
        }
        o
    }

    /// One valued option; a bad value is ignored with a note.
    fn set(&mut self, key: &str, value: &str) {
        let count = value.parse::<usize>().ok().filter(|n| *n > 0);
        let secs = value
            .parse::<f64>()
            .ok()
            .filter(|s| *s >= 0.0 && s.is_finite())
            .map(Duration::from_secs_f64);
        let ms = value.parse::<u64>().ok().map(Duration::from_millis);
        let ok = match key {
            "--rounds" => count.map(|n| self.rounds = n).is_some(),
            "--connections" => count.map(|n| self.connections = n).is_some(),
            "--rate" => count.map(|n| self.rate = n as u32).is_some(),
            "--seed" => value
                .parse::<u64>()
                .ok()
                .map(|s| self.seed = s | 1)
                .is_some(),
            "--slow-start" => ms.map(|d| self.slow_start = d).is_some(),
            "--probation" => secs.map(|d| self.probation = d).is_some(),
            "--lead" => secs.map(|d| self.lead = d).is_some(),
            "--window" => secs
                .filter(|d| !d.is_zero())
                .map(|d| self.window = d)
                .is_some(),
            "--records" => {
                self.records = Some(PathBuf::from(value));
                !value.is_empty()
            }
            "--only" => {
                let kinds: Vec<Kind> = value
                    .split(',')
                    .filter_map(|s| Kind::ALL.into_iter().find(|k| k.slug() == s.trim()))
                    .collect();
                let any = !kinds.is_empty();
                self.only = Some(kinds);
                any
            }
            _ => false,
        };
        if !ok {
            eprintln!("bench: ignoring {key} {value:?}");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Surge,
    Replace,
    OwnPort,
    Supervisord,
    Runit,
    /// Not a restart of the service: `warden upgrade` (to the same binary) while it serves.
    Upgrade,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Surge,
        Kind::Replace,
        Kind::OwnPort,
        Kind::Supervisord,
        Kind::Runit,
        Kind::Upgrade,
    ];

    fn slug(self) -> &'static str {
        match self {
            Kind::Surge => "surge",
            Kind::Replace => "replace",
            Kind::OwnPort => "own-port",
            Kind::Supervisord => "supervisord",
            Kind::Runit => "runit",
            Kind::Upgrade => "upgrade",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Surge => "warden surge, held socket",
            Kind::Replace => "warden replace, held socket",
            Kind::OwnPort => "warden replace, own port",
            Kind::Supervisord => "supervisorctl restart",
            Kind::Runit => "runit sv restart",
            Kind::Upgrade => "warden upgrade (no restart)",
        }
    }

    /// The tools the setup needs, and the Debian package that has them.
    fn tools(self) -> (&'static [&'static str], &'static str) {
        match self {
            Kind::Surge | Kind::Replace | Kind::OwnPort | Kind::Upgrade => (&[], ""),
            Kind::Supervisord => (&["supervisord", "supervisorctl"], "supervisor"),
            Kind::Runit => (&["runsvdir", "sv"], "runit"),
        }
    }
}

/// What every run needs.
struct Ctx<'a> {
    opts: &'a Options,
    stop: &'a Stop,
    tmp: PathBuf,
    warden: PathBuf,
    server: PathBuf,
    tools: std::collections::HashMap<&'static str, PathBuf>,
    next_id: usize,
}

/// One run's figures.
#[derive(Default, Clone)]
struct Figures {
    ok: usize,
    connect: usize,
    read: usize,
    status: usize,
    /// Requests due in the restart window, and how many of them were answered.
    window_due: usize,
    window_ok: usize,
    /// Of the requests due in the restart window, answered ones, ms.
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// The longest time without an answer, ms.
    gap_ms: Option<f64>,
    restart_ms: f64,
    /// Whether a pid that did not answer before the restart answered after it.
    new_pid: bool,
    /// The restart command's failure, if it failed.
    error: Option<String>,
    /// `warden upgrade` only: the longest time between two answers of the control socket
    /// (asked `status` over and over), ms.
    control_gap_ms: Option<f64>,
}

impl Figures {
    fn failed(&self) -> usize {
        self.connect + self.read + self.status
    }
}

/// What one run loads the service with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// The bench's own client ([`load`]).
    Client,
    /// `wrk`.
    Wrk,
}

/// A wrk run's figures, with the restart command's.
struct WrkRun {
    f: WrkFigures,
    restart_ms: f64,
    error: Option<String>,
}

/// Every run's figures.
#[derive(Default)]
struct Results {
    client: Vec<(Kind, Figures)>,
    wrk: Vec<(Kind, WrkRun)>,
}

fn run(opts: &Options, stop: &Stop, subreaper: bool) -> Result<(), String> {
    let tmp = TempDir::new("deploy", None)?;
    let server = build_server()?;
    let (kinds, tools, mut notes) = available(opts);
    let mut ctx = Ctx {
        opts,
        stop,
        tmp: tmp.path().to_path_buf(),
        warden: common::warden_bin(),
        server,
        tools,
        next_id: 0,
    };
    let mut drivers = vec![Driver::Client];
    if opts.wrk && ctx.tools.contains_key("wrk") {
        drivers.push(Driver::Wrk);
    } else if opts.wrk {
        notes.push("wrk: not run, no wrk (apt-get install -y wrk)".into());
    }
    print_header(&ctx, &kinds, subreaper, &notes);
    let mut results = Results::default();
    let mut rng = XorShift(opts.seed);
    for round in 1..=opts.rounds {
        let mut order: Vec<(Kind, Driver)> = kinds
            .iter()
            .flat_map(|&k| drivers.iter().map(move |&d| (k, d)))
            .collect();
        rng.shuffle(&mut order);
        let names: Vec<String> = order
            .iter()
            .map(|(k, d)| {
                format!(
                    "{}{}",
                    k.slug(),
                    if *d == Driver::Wrk { "/wrk" } else { "" }
                )
            })
            .collect();
        println!("round {round}/{}: {}", opts.rounds, names.join(", "));
        for &(k, d) in &order {
            stop.check()?;
            if let Err(e) = one_run(&mut ctx, k, d, &mut results) {
                notes.push(format!("{} (round {round}): {e}", k.label()));
            }
        }
    }
    println!();
    print_table(opts, &kinds, &results.client);
    if drivers.contains(&Driver::Wrk) {
        println!();
        print_wrk_table(opts, &kinds, &results.wrk);
    }
    for n in notes {
        println!("note: {n}");
    }
    Ok(())
}

/// The setups to run (those whose tools are installed), the tools found, and a note for each
/// setup skipped.
fn available(
    opts: &Options,
) -> (
    Vec<Kind>,
    std::collections::HashMap<&'static str, PathBuf>,
    Vec<String>,
) {
    let mut kinds = Vec::new();
    let mut notes = Vec::new();
    let mut tools = std::collections::HashMap::new();
    if let Some(w) = common::find_tool("wrk") {
        tools.insert("wrk", w);
    }
    for k in Kind::ALL {
        if opts.only.as_ref().is_some_and(|o| !o.contains(&k)) {
            continue;
        }
        let (needed, package) = k.tools();
        let found: Vec<_> = needed.iter().map(|t| (*t, common::find_tool(t))).collect();
        if let Some((missing, _)) = found.iter().find(|(_, p)| p.is_none()) {
            notes.push(format!(
                "{}: skipped, no {missing} (apt-get install -y {package})",
                k.label()
            ));
            continue;
        }
        tools.extend(found.into_iter().filter_map(|(t, p)| Some((t, p?))));
        kinds.push(k);
    }
    (kinds, tools, notes)
}

/// Builds the server fixture (release) and returns its path.
fn build_server() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--example", "activated"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release --example activated: {status}"
        ));
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_warden"));
    let server = exe.with_file_name("examples").join("activated");
    if !server.exists() {
        return Err(format!("no {} after the build", server.display()));
    }
    Ok(server)
}

/// A free loopback port: bound to port 0, then let go (the server binds it again, with
/// `SO_REUSEADDR`).
fn free_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    l.local_addr().map_err(|e| format!("local_addr: {e}"))
}

/// One supervisor running the service, and the command that restarts it.
struct Service {
    main: i32,
    dir: PathBuf,
    restart: Command,
}

/// Starts the supervisor of `kind` with the service on `addr`, in a fresh directory.
fn start(ctx: &mut Ctx<'_>, kind: Kind, addr: SocketAddr) -> Result<Service, String> {
    ctx.next_id += 1;
    let dir = ctx.tmp.join(format!("{}-{}", kind.slug(), ctx.next_id));
    mkdir(&dir)?;
    let server = ctx.server.display().to_string();
    let slow = format!("{}ms", ctx.opts.slow_start.as_millis());
    let (mut cmd, restart) = match kind {
        Kind::Surge | Kind::Replace | Kind::OwnPort | Kind::Upgrade => {
            let config = dir.join("warden.toml");
            write(&config, &warden_config(ctx, kind, &dir, addr))?;
            let mut cmd = Command::new(&ctx.warden);
            cmd.arg("-c").arg(&config).arg("run");
            let mut restart = Command::new(&ctx.warden);
            restart.arg("-c").arg(&config);
            if kind == Kind::Upgrade {
                restart.arg("upgrade");
            } else {
                restart.args(["restart", "web"]);
            }
            (cmd, restart)
        }
        Kind::Supervisord => {
            let config = dir.join("supervisord.conf");
            write(&config, &supervisord_config(&dir, &server, &slow, addr))?;
            let mut cmd = Command::new(&ctx.tools["supervisord"]);
            cmd.arg("-n").arg("-c").arg(&config);
            let mut restart = Command::new(&ctx.tools["supervisorctl"]);
            restart.arg("-c").arg(&config).args(["restart", "web"]);
            (cmd, restart)
        }
        Kind::Runit => {
            let scan = dir.join("service");
            let svc = scan.join("web");
            mkdir(&scan)?;
            mkdir(&svc)?;
            let run = svc.join("run");
            let script = format!("#!/bin/sh\nexec {server} --slow-start {slow} --listen {addr}\n");
            write(&run, &script)?;
            fs::set_permissions(&run, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("cannot chmod {}: {e}", run.display()))?;
            let mut cmd = Command::new(&ctx.tools["runsvdir"]);
            cmd.arg(&scan);
            let mut restart = Command::new(&ctx.tools["sv"]);
            restart.arg("restart").arg(&svc);
            (cmd, restart)
        }
    };
    let stdout = File::create(dir.join("stdout")).map_err(|e| format!("cannot create: {e}"))?;
    let stderr = File::create(dir.join("stderr")).map_err(|e| format!("cannot create: {e}"))?;
    cmd.current_dir(&dir)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cmd.get_program().display()))?;
    // Reaped by pid (or by `reap`), never through `Child`.
    let main = child.id() as i32;
    drop(child);
    Ok(Service { main, dir, restart })
}

/// The warden configuration of `kind`: the service on `addr`, through a held socket or not.
fn warden_config(ctx: &Ctx<'_>, kind: Kind, dir: &Path, addr: SocketAddr) -> String {
    let server = ctx.server.display().to_string();
    let slow = format!("{}ms", ctx.opts.slow_start.as_millis());
    let daemon = format!(
        "[daemon]\npidfile = {:?}\ndirectory = {:?}\nlog = {:?}\n\n",
        dir.join("warden.pid"),
        dir,
        dir.join("warden.log"),
    );
    let program = match kind {
        Kind::Surge | Kind::Replace | Kind::Upgrade => {
            let update = if kind != Kind::Replace {
                format!(
                    "update = \"surge\"\nprobation = \"{}ms\"\n",
                    ctx.opts.probation.as_millis()
                )
            } else {
                "update = \"replace\"\n".into()
            };
            format!(
                "[socket.web]\nlisten = \"{addr}\"\n\n[program.web]\n\
                 command = [{server:?}, \"--notify\", \"--slow-start\", {slow:?}]\n\
                 sockets = [\"web\"]\nready = \"notify\"\n{update}"
            )
        }
        _ => format!(
            "[program.web]\ncommand = [{server:?}, \"--notify\", \"--slow-start\", {slow:?}, \
             \"--listen\", \"{addr}\"]\nready = \"notify\"\nupdate = \"replace\"\n"
        ),
    };
    daemon + &program
}

/// supervisord's configuration: its control socket for supervisorctl, and the service.
fn supervisord_config(dir: &Path, server: &str, slow: &str, addr: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "[unix_http_server]\nfile={d}/supervisor.sock\n\n\
         [supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
         childlogdir={d}\n\n\
         [rpcinterface:supervisor]\n\
         supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
         [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n\
         [program:web]\ncommand={server} --slow-start {slow} --listen {addr}\n\
         stdout_logfile={d}/web.out\nstderr_logfile={d}/web.err\n"
    )
}

fn mkdir(d: &Path) -> Result<(), String> {
    fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
}

/// One run of `kind` loaded by `driver`: start, load, restart in the middle, figures; the
/// supervisor and all its processes are gone when it returns.
fn one_run(
    ctx: &mut Ctx<'_>,
    kind: Kind,
    driver: Driver,
    results: &mut Results,
) -> Result<(), String> {
    let addr = free_port()?;
    let mut service = start(ctx, kind, addr)?;
    let result = wait_up(ctx, &service, addr).and_then(|()| match driver {
        Driver::Client => measure(ctx, &mut service, addr).map(|f| results.client.push((kind, f))),
        Driver::Wrk => measure_wrk(ctx, &mut service, addr).map(|w| results.wrk.push((kind, w))),
    });
    stop_service(&service);
    result
}

/// Waits until the service answers, then [`SETTLE`].
fn wait_up(ctx: &Ctx<'_>, service: &Service, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + UP_TIMEOUT;
    while !matches!(load::request(addr).1, Outcome::Ok(_)) {
        ctx.stop.check()?;
        reap();
        if !alive(service.main) {
            return Err(format!("the supervisor exited: {}", tail(&service.dir)));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no answer after {UP_TIMEOUT:?}: {}",
                tail(&service.dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(SETTLE);
    ctx.stop.check()
}

/// Loads the service with the bench's client and restarts it in the middle.
fn measure(ctx: &Ctx<'_>, service: &mut Service, addr: SocketAddr) -> Result<Figures, String> {
    let opts = ctx.opts;
    let load = Load::start(addr, opts.rate, opts.connections);
    let control = (service.dir.join("warden.sock").exists())
        .then(|| load::ControlLoad::start(service.dir.join("warden.sock")));
    std::thread::sleep(opts.lead);
    let restarted = restart(ctx, service);
    let Ok((t_restart, t_return, error)) = restarted else {
        load.finish();
        return Err(restarted.err().unwrap_or_default());
    };
    let end = (t_restart + opts.window.as_nanos() as i64).max(t_return) + TAIL.as_nanos() as i64;
    while mono_ns() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let records = load.finish();
    let control_gap_ms = control.map(load::ControlLoad::finish);
    if let Some(dir) = &opts.records {
        let name = service.dir.file_name().unwrap_or_default();
        let path = dir.join(name).with_extension("tsv");
        write(&path, &load::tsv(&records, t_restart, t_return))?;
    }
    let mut f = figures(&records, t_restart, opts.window);
    f.restart_ms = (t_return - t_restart) as f64 / 1e6;
    f.error = error;
    f.control_gap_ms = control_gap_ms.flatten();
    Ok(f)
}

/// How long each wrk run lasts: the lead, the window and the tail, in whole seconds.
fn wrk_seconds(opts: &Options) -> u64 {
    (opts.lead + opts.window + TAIL).as_secs_f64().ceil() as u64
}

/// Loads the service with wrk and restarts it `--lead` after wrk started.
fn measure_wrk(ctx: &Ctx<'_>, service: &mut Service, addr: SocketAddr) -> Result<WrkRun, String> {
    let opts = ctx.opts;
    let seconds = wrk_seconds(opts);
    let wrk = Wrk::start(
        &ctx.tools["wrk"],
        addr,
        opts.connections,
        seconds,
        &service.dir,
    )?;
    std::thread::sleep(opts.lead);
    let restarted = restart(ctx, service);
    let f = wrk.finish()?;
    let (t_restart, t_return, error) = restarted?;
    let restart_ms = (t_return - t_restart) as f64 / 1e6;
    let error = error.or_else(|| {
        (restart_ms / 1e3 > (seconds as f64 - opts.lead.as_secs_f64()))
            .then(|| "the restart outlasted wrk's run".to_string())
    });
    Ok(WrkRun {
        f,
        restart_ms,
        error,
    })
}

/// Runs the restart command (bounded): its start and end on the monotonic clock, and what went
/// wrong if it failed.
fn restart(ctx: &Ctx<'_>, service: &mut Service) -> Result<(i64, i64, Option<String>), String> {
    let out = service.dir.join("restart.out");
    let file = File::create(&out).map_err(|e| format!("cannot create: {e}"))?;
    let err = file.try_clone().map_err(|e| format!("dup: {e}"))?;
    let cmd = service
        .restart
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .env_remove("NOTIFY_SOCKET");
    let t0 = mono_ns();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run the restart: {e}"))?;
    let deadline = Instant::now() + RESTART_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            break Some(s);
        }
        if Instant::now() >= deadline || ctx.stop.is_set() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let t1 = mono_ns();
    ctx.stop.check()?;
    let text = fs::read_to_string(&out).unwrap_or_default();
    let error = match status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("restart {s}: {}", text.trim())),
        None => Some(format!("restart killed after {RESTART_TIMEOUT:?}")),
    };
    Ok((t0, t1, error))
}

/// SIGTERM to the supervisor, [`STOP_GRACE`] to go, then SIGKILL to everything left below the
/// bench.
fn stop_service(service: &Service) {
    let _ = kill(Pid::from_raw(service.main), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while alive(service.main) && Instant::now() < deadline {
        reap();
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_everything(None);
    reap();
}

/// The last lines of the supervisor's stderr, for errors.
fn tail(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(3);
    if lines.is_empty() {
        "(no output)".into()
    } else {
        lines[start..].join(" | ")
    }
}

/// A run's figures from its records: counts over the whole run, latencies of the requests due
/// within `window` of `t_restart`, the longest time between two answers.
fn figures(records: &[Record], t_restart: i64, window: Duration) -> Figures {
    let mut f = Figures::default();
    let w_end = t_restart + window.as_nanos() as i64;
    let mut in_window = Vec::new();
    let mut answered = Vec::new();
    let (mut before, mut after) = (std::collections::HashSet::new(), Vec::new());
    for r in records {
        let due_in_window = (t_restart..w_end).contains(&r.due);
        f.window_due += usize::from(due_in_window);
        match r.outcome {
            Outcome::Ok(pid) => {
                f.ok += 1;
                answered.push(r.end);
                if r.end < t_restart {
                    before.insert(pid);
                } else {
                    after.push(pid);
                }
                if due_in_window {
                    in_window.push((r.end - r.due) as f64 / 1e6);
                }
            }
            Outcome::Connect => f.connect += 1,
            Outcome::Read => f.read += 1,
            Outcome::Status(_) => f.status += 1,
        }
    }
    f.window_ok = in_window.len();
    f.new_pid = after.iter().any(|p| !before.contains(p));
    f.p99_ms = percentile(&in_window, 99.0);
    f.max_ms = percentile(&in_window, 100.0);
    answered.sort_unstable();
    f.gap_ms = answered
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .max_by(f64::total_cmp);
    f
}

fn print_header(ctx: &Ctx<'_>, kinds: &[Kind], subreaper: bool, notes: &[String]) {
    let o = ctx.opts;
    println!("deploy: requests served while a single-instance HTTP service restarts");
    println!(
        "machine: {} CPUs, {}, kernel {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        common::read_trim("/proc/sys/kernel/osrelease"),
        loadavg()
    );
    let versions: Vec<String> = ["supervisor", "runit", "wrk"]
        .iter()
        .filter_map(|p| common::package_version(p))
        .collect();
    println!("peers: {}", versions.join(", "));
    println!(
        "warden: {}{}",
        ctx.warden.display(),
        if common::warden_bin_overridden() {
            " ($WARDEN_BENCH_BIN)"
        } else {
            ""
        }
    );
    println!(
        "server: {} --slow-start {}ms (the same binary under every supervisor)",
        ctx.server.display(),
        o.slow_start.as_millis()
    );
    println!(
        "load: {} connections, {} requests/s in all on a fixed schedule, one request per \
         connection; {:.1} s before the restart, window {:.1} s from its start",
        o.connections,
        o.rate,
        o.lead.as_secs_f64(),
        o.window.as_secs_f64()
    );
    println!(
        "rounds: {}, seed {}, order shuffled each round; surge probation {} ms; subreaper {}",
        o.rounds,
        o.seed,
        o.probation.as_millis(),
        if subreaper { "on" } else { "UNAVAILABLE" }
    );
    if o.wrk {
        println!("wrk runs: {}", Wrk::describe(o.connections, wrk_seconds(o)));
    }
    let slugs: Vec<&str> = kinds.iter().map(|k| k.slug()).collect();
    println!("setups: {}; arguments: {:?}", slugs.join(", "), o.args);
    for n in notes {
        println!("note: {n}");
    }
}

/// The medians over the rounds, one row per setup, ratios against warden surge.
fn print_table(opts: &Options, kinds: &[Kind], results: &[(Kind, Figures)]) {
    let median = |k: Kind, f: &dyn Fn(&Figures) -> Option<f64>| {
        let v: Vec<f64> = results
            .iter()
            .filter(|(r, _)| *r == k)
            .filter_map(|(_, x)| f(x))
            .collect();
        percentile(&v, 50.0)
    };
    let p99 = |x: &Figures| x.p99_ms;
    let gap = |x: &Figures| x.gap_ms;
    let took = |x: &Figures| Some(x.restart_ms);
    let mut rows = vec![
        [
            "setup",
            "runs",
            "ok",
            "failed",
            "connect",
            "read",
            "non-2xx",
            "window ok",
            "p99 ms",
            "max ms",
            "gap ms",
            "restart ms",
            "p99 ×surge",
            "gap ×surge",
            "restart ×surge",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    for &k in kinds {
        let runs = results.iter().filter(|(r, _)| *r == k).count();
        let fig = |f: fn(&Figures) -> usize| num(median(k, &|x| Some(f(x) as f64)));
        let base = Kind::Surge;
        rows.push(vec![
            k.label().to_string(),
            format!("{runs}/{}", opts.rounds),
            fig(|x| x.ok),
            fig(Figures::failed),
            fig(|x| x.connect),
            fig(|x| x.read),
            fig(|x| x.status),
            format!("{}/{}", fig(|x| x.window_ok), fig(|x| x.window_due)),
            ms(median(k, &p99)),
            ms(median(k, &|x| x.max_ms)),
            ms(median(k, &gap)),
            num(median(k, &took)),
            ratio(median(k, &p99), median(base, &p99)),
            ratio(median(k, &gap), median(base, &gap)),
            ratio(median(k, &took), median(base, &took)),
        ]);
    }
    print_rows(&rows);
    for (k, f) in results {
        if let Some(e) = &f.error {
            println!("note: {}: {e}", k.label());
        }
        if !f.new_pid && *k != Kind::Upgrade {
            println!("note: {}: no new pid answered after the restart", k.label());
        }
    }
    print_failures(kinds, results);
    print_control_gaps(kinds, results);
}

/// The longest gap in the control socket's answers per warden setup (for `upgrade`: the exec).
fn print_control_gaps(kinds: &[Kind], results: &[(Kind, Figures)]) {
    for &k in kinds {
        let each: Vec<f64> = results
            .iter()
            .filter(|(r, _)| *r == k)
            .filter_map(|(_, f)| f.control_gap_ms)
            .collect();
        if let Some(m) = percentile(&each, 50.0) {
            let max = each.iter().copied().fold(0.0, f64::max);
            println!(
                "longest gap between two control-socket answers, {}: median {m:.1} ms, max {max:.1} ms",
                k.label()
            );
        }
    }
}

/// Failed requests per round, so that medians hide nothing.
fn print_failures(kinds: &[Kind], results: &[(Kind, Figures)]) {
    for &k in kinds {
        let each: Vec<String> = results
            .iter()
            .filter(|(r, _)| *r == k)
            .map(|(_, f)| f.failed().to_string())
            .collect();
        println!("failed per round, {}: {}", k.label(), each.join(" "));
    }
}

/// wrk's figures: medians over the rounds, ratios against warden surge.
fn print_wrk_table(opts: &Options, kinds: &[Kind], results: &[(Kind, WrkRun)]) {
    println!(
        "wrk, as fast as it goes ({}); its p99 covers the whole run:",
        Wrk::describe(opts.connections, wrk_seconds(opts))
    );
    let median = |k: Kind, f: &dyn Fn(&WrkRun) -> Option<f64>| {
        let v: Vec<f64> = results
            .iter()
            .filter(|(r, _)| *r == k)
            .filter_map(|(_, x)| f(x))
            .collect();
        percentile(&v, 50.0)
    };
    let p99 = |x: &WrkRun| x.f.p99_ms;
    let took = |x: &WrkRun| Some(x.restart_ms);
    let mut rows = vec![
        [
            "setup",
            "runs",
            "requests",
            "failed",
            "connect",
            "read",
            "write+timeout",
            "non-2xx/3xx",
            "p99 ms",
            "restart ms",
            "p99 ×surge",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    for &k in kinds {
        let runs = results.iter().filter(|(r, _)| *r == k).count();
        let fig = |f: fn(&WrkFigures) -> u64| num(median(k, &|x| Some(f(&x.f) as f64)));
        rows.push(vec![
            k.label().to_string(),
            format!("{runs}/{}", opts.rounds),
            fig(|x| x.requests),
            fig(WrkFigures::failed),
            fig(|x| x.connect),
            fig(|x| x.read),
            fig(|x| x.write + x.timeout),
            fig(|x| x.non2xx),
            median(k, &p99).map_or("-".into(), |v| format!("{v:.1}")),
            num(median(k, &took)),
            ratio(median(k, &p99), median(Kind::Surge, &p99)),
        ]);
    }
    print_rows(&rows);
    for (k, w) in results {
        if let Some(e) = &w.error {
            println!("note: {} (wrk): {e}", k.label());
        }
    }
    for &k in kinds {
        let each: Vec<String> = results
            .iter()
            .filter(|(r, _)| *r == k)
            .map(|(_, w)| w.f.failed().to_string())
            .collect();
        println!("failed per round (wrk), {}: {}", k.label(), each.join(" "));
    }
}
