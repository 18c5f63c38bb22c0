//! The control plane against a running daemon: `warden status` (table, JSON, LSB exit codes),
//! authorisation by `SO_PEERCRED` (a client run as `nobody`), a socket that survives garbage,
//! oversized lines and 500 idle connections, transactional `reload` (invalid files, add / remove /
//! change, `--dry-run`), rolling `restart` with notify readiness, `scale` and `SIGTTIN`/`SIGTTOU`,
//! program `stop`/`start`, and `stop`/`status` through the pidfile when the socket is gone.
//!
//! Every test looks from the outside: the `warden` command's exit status and output, the children
//! of the daemon (`/proc/PID/stat`), its log, and `/proc/PID/status`. Worker commands carry the
//! sandbox path in their command line (`SANDBOX/sleep` is a symlink to sleep(1); scripts live in
//! the sandbox) so that the sandbox finds and kills every one of them at drop. Waits are bounded
//! polls; the only fixed sleeps are short observation windows that assert an absence.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Configuration helpers.

/// A `[program.NAME]` table running `SANDBOX/sleep SECS` in `n` instances.
fn sleeper(name: &str, n: u32, secs: u32) -> String {
    format!("[program.{name}]\ncommand = [\"SANDBOX/sleep\", \"{secs}\"]\ninstances = {n}\n")
}

// ---------------------------------------------------------------------------------------------
// Observation helpers.

/// `warden status --json [PROGRAMS…]`: the exit status and the parsed report.
fn status_json(sb: &mut Sandbox, programs: &[&str]) -> (i32, Value) {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(programs);
    let out = sb.run(&args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json {programs:?} ({:?}) is not JSON: {e}\nstdout: {}\nstderr: {}",
            out.status,
            stdout_of(&out),
            stderr_of(&out)
        )
    });
    (exit_code(&out).unwrap_or(-1), v)
}

/// One instance of a status report.
#[derive(Debug, Clone, PartialEq)]
struct Inst {
    program: String,
    index: u64,
    pid: Option<i32>,
    state: String,
    restarts: u64,
}

fn instances(report: &Value) -> Vec<Inst> {
    report["instances"]
        .as_array()
        .expect("instances is an array")
        .iter()
        .map(|i| Inst {
            program: i["program"].as_str().expect("program").to_string(),
            index: i["index"].as_u64().expect("index"),
            pid: i["pid"].as_i64().map(|p| p as i32),
            state: i["state"].as_str().expect("state").to_string(),
            restarts: i["restarts"].as_u64().expect("restarts"),
        })
        .collect()
}

/// The instances of `program`, by index.
fn of(report: &Value, program: &str) -> Vec<Inst> {
    let mut v: Vec<Inst> = instances(report)
        .into_iter()
        .filter(|i| i.program == program)
        .collect();
    v.sort_by_key(|i| i.index);
    v
}

fn pids(insts: &[Inst]) -> Vec<i32> {
    insts.iter().filter_map(|i| i.pid).collect()
}

fn up(i: &Inst) -> bool {
    i.state == "running" || i.state == "ready"
}

/// Polls `warden status --json` (bounded) until `pred` holds; returns that report.
fn wait_status(sb: &mut Sandbox, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (c, v) = status_json(sb, &[]);
        if c == 0 && pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what} within {TIMEOUT:?}; last (exit {c}):\n{v:#}\nlog:\n{}",
            log(sb)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every instance of `program` is up, `n` of them; returns them (pids tracked).
fn wait_up(sb: &mut Sandbox, program: &str, n: usize) -> Vec<Inst> {
    let v = wait_status(sb, &format!("{n} instances of {program} up"), |v| {
        let is = of(v, program);
        is.len() == n && is.iter().all(up)
    });
    let is = of(&v, program);
    for p in pids(&is) {
        sb.track(p);
    }
    is
}

/// Waits (bounded) until the daemon's live children are exactly `want`.
fn wait_children(sb: &Sandbox, warden: i32, want: &BTreeSet<i32>) {
    assert!(
        wait_until(TIMEOUT, || live_children(warden) == *want),
        "children of {warden}: {:?}, want {want:?}; log:\n{}",
        live_children(warden),
        log(sb)
    );
}

/// `warden stop`, asserting success and that nothing of the sandbox is left.
fn stop(sb: &mut Sandbox) {
    expect(sb, &["stop"], 0);
    assert_no_process(sb);
}

// ---------------------------------------------------------------------------------------------
// 1. `warden status`: table, JSON schema, LSB exit codes.

/// The `status --json` report follows the documented schema: the daemon's pid, version, uptime
/// and config; per instance every key, with the type its state allows (the program `once` has
/// exited 0, every other instance is running).
fn assert_report_follows_the_schema(report: &Value, warden: i32, config: &std::path::Path) {
    assert_eq!(report["daemon"]["pid"].as_i64(), Some(warden.into()));
    assert_eq!(
        report["daemon"]["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(report["daemon"]["uptime_secs"].is_f64(), "{report:#}");
    assert_eq!(
        report["daemon"]["config"].as_str(),
        Some(path_str(config).as_str())
    );
    let all = report["instances"].as_array().unwrap();
    assert_eq!(all.len(), 6, "3 web + 2 api + 1 once: {report:#}");
    let states = [
        "starting", "running", "ready", "backoff", "stopping", "exited", "stopped", "fatal",
    ];
    for i in all {
        let keys: BTreeSet<&str> = i.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "program",
            "index",
            "pid",
            "state",
            "uptime_secs",
            "restarts",
            "last_exit",
            "status",
        ] {
            assert!(keys.contains(k), "instance without {k}: {i}");
        }
        assert!(i["program"].is_string() && i["index"].is_u64() && i["restarts"].is_u64());
        assert!(states.contains(&i["state"].as_str().unwrap()), "{i}");
        assert!(i["pid"].is_null() || i["pid"].is_i64(), "{i}");
        assert!(
            i["uptime_secs"].is_null() || i["uptime_secs"].is_f64(),
            "{i}"
        );
        assert!(i["status"].is_null() || i["status"].is_string(), "{i}");
        if i["program"] == "once" {
            assert!(i["pid"].is_null() && i["uptime_secs"].is_null(), "{i}");
            assert_eq!(i["last_exit"], serde_json::json!({"code": 0}), "{i}");
        } else {
            assert_eq!(i["state"], "running", "{i}");
            assert!(i["pid"].is_i64() && i["uptime_secs"].is_f64(), "{i}");
            assert!(i["last_exit"].is_null(), "{i}");
        }
    }
}

/// The `status` table: a header, one aligned row per instance in the order `want`, the pids
/// `children`, no colour (the program `once` has exited 0, every other instance is running).
fn assert_table_shows(table: &str, warden: i32, want: &[(String, u64)], children: &BTreeSet<i32>) {
    println!("{table}");
    let mut lines = table.lines();
    let first = lines.next().unwrap();
    assert!(
        first.contains(&format!("pid {warden}")) && first.contains("running"),
        "{first}"
    );
    let header = lines.next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "PROGRAM", "INDEX", "PID", "STATE", "UPTIME", "RESTARTS", "LAST", "EXIT", "STATUS"
        ],
        "{table}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 6, "one row per instance:\n{table}");
    let col = |name: &str| header.find(name).unwrap();
    let mut table_pids = BTreeSet::new();
    let mut seen = Vec::new();
    for r in &rows {
        assert!(
            !r.contains('\x1b'),
            "no colour when not on a terminal: {r:?}"
        );
        let cell = |name: &str| r[col(name)..].split_whitespace().next().unwrap();
        seen.push((
            cell("PROGRAM").to_string(),
            cell("INDEX").parse::<u64>().unwrap(),
        ));
        if let Ok(p) = cell("PID").parse::<i32>() {
            table_pids.insert(p);
        }
        let state = cell("STATE");
        if cell("PROGRAM") == "once" {
            assert_eq!((cell("PID"), state), ("-", "exited"), "{r}");
            assert!(r[col("LAST EXIT")..].starts_with("exit 0"), "{r}");
        } else {
            assert_eq!(state, "running", "{r}");
        }
    }
    assert_eq!(seen, want, "rows in configuration order:\n{table}");
    assert_eq!(
        &table_pids, children,
        "table pids are the daemon's children"
    );
}

#[test]
fn status_table_json_and_exit_codes() {
    let test = this_test!();
    let tables = format!(
        "{}{}[program.once]\ncommand = [\"/bin/sh\", \"-c\", \"exit 0\", \"SANDBOX\"]\nrestart = \"never\"\n",
        sleeper("web", 3, 1000),
        sleeper("api", 2, 1000),
    );
    let mut sb = test.supervisor_sandbox("", &tables);
    let warden = sb.start();
    let web = wait_up(&mut sb, "web", 3);
    let api = wait_up(&mut sb, "api", 2);
    let report = wait_status(&mut sb, "once exited", |v| {
        of(v, "once").first().is_some_and(|i| i.state == "exited")
    });
    let children = live_children(warden);
    let listed: BTreeSet<i32> = pids(&web).into_iter().chain(pids(&api)).collect();
    assert_eq!(listed, children, "status pids are the daemon's children");

    assert_report_follows_the_schema(&report, warden, &sb.config);
    let order: Vec<(String, u64)> = instances(&report)
        .into_iter()
        .map(|i| (i.program, i.index))
        .collect();
    let want: Vec<(String, u64)> = [("web", 0), ("web", 1), ("web", 2), ("api", 0), ("api", 1)]
        .into_iter()
        .chain([("once", 0)])
        .map(|(p, i)| (p.to_string(), i))
        .collect();
    assert_eq!(
        order, want,
        "programs in configuration order, then by index"
    );

    // The table: a header, one aligned row per instance, the right pids.
    let table = expect(&mut sb, &["status"], 0);
    assert_table_shows(&table, warden, &want, &children);

    // Exit statuses.
    expect(&mut sb, &["status", "web", "api"], 0);
    expect(&mut sb, &["status", "--json", "web"], 0);
    expect(&mut sb, &["status", "once"], 150);
    expect(&mut sb, &["status", "web", "once"], 150);
    let out = sb.run(&["status", "nosuch"]);
    assert_eq!(exit_code(&out), Some(152), "{}", stderr_of(&out));
    assert_stderr_has(&out, "nosuch");

    // Stopped: 3. Killed with its pidfile left behind: 1.
    stop(&mut sb);
    let out = sb.run(&["status"]);
    assert_exit(&out, 3);
    let warden = sb.start();
    wait_up(&mut sb, "web", 3);
    signal(warden, Signal::SIGKILL);
    assert!(wait_until(TIMEOUT, || !alive(warden)));
    let out = sb.run(&["status"]);
    assert_exit(&out, 1);
    assert!(stdout_of(&out).contains("pidfile"), "{}", stdout_of(&out));
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 2. Authorisation by SO_PEERCRED.

/// nobody's uid, from /etc/passwd.
fn nobody_uid() -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody")).then(|| f[2].parse().unwrap())
        })
        .expect("a nobody user")
}

/// `warden ARGS…` run as nobody:nogroup without supplementary groups.
fn as_nobody(sb: &mut Sandbox, args: &[&str]) -> std::process::Output {
    as_user(
        sb,
        &["--reuid=nobody", "--regid=nogroup", "--clear-groups"],
        args,
    )
}

/// `warden ARGS…` run with the credentials `setpriv` is given.
fn as_user(sb: &mut Sandbox, creds: &[&str], args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new("setpriv");
    c.args(creds)
        .arg("--")
        .arg(warden_bin())
        .arg("-c")
        .arg(&sb.config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    sb.output(c)
}

#[test]
fn unauthorised_uid_is_refused_and_control_group_reads_only() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    if !test.require_tool("setpriv", "util-linux") {
        return;
    }
    let uid = nobody_uid();
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 1, 1000));
    let warden = sb.start();
    let w = wait_up(&mut sb, "w", 1);
    let sock = sb.path("warden.sock");
    let meta = std::fs::metadata(&sock).expect("the control socket beside the pidfile");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Default 0600 socket: nobody cannot even connect.
    let out = as_nobody(&mut sb, &["status"]);
    assert_exit(&out, 4);
    assert_stderr_has(&out, "permission denied");
    let out = as_nobody(&mut sb, &["stop", "w"]);
    assert_exit(&out, 4);
    stop(&mut sb);
    assert!(!alive(warden));

    // A control group: its members may read status, nothing more.
    sb.write_programs("control_group = \"nogroup\"", &sleeper("w", 1, 1000));
    let warden = sb.start();
    let w2 = wait_up(&mut sb, "w", 1);
    assert_ne!(w, w2);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534, "group nogroup");
    let out = as_nobody(&mut sb, &["status"]);
    assert_exit(&out, 0);
    assert!(stdout_of(&out).contains(&format!("pid {warden}")));
    let out = as_nobody(&mut sb, &["status", "--json", "w"]);
    assert_exit(&out, 0);
    let out = as_nobody(&mut sb, &["stop", "w"]);
    assert_exit(&out, 4);
    assert_stderr_has(&out, "may only read status and follow events");
    let out = as_nobody(&mut sb, &["reload"]);
    assert_exit(&out, 4);
    // Membership is the connecting process's own groups, as the kernel recorded them at
    // connect (SO_PEERGROUPS): user `daemon` is not in nogroup by /etc/group, but a process of
    // it holding nogroup as a supplementary group may read; it still may not write.
    let daemon = ["--reuid=daemon", "--regid=daemon", "--groups=nogroup"];
    let out = as_user(&mut sb, &daemon, &["status"]);
    assert_exit(&out, 0);
    let out = as_user(&mut sb, &daemon, &["stop", "w"]);
    assert_exit(&out, 4);
    assert_stderr_has(&out, "may only read status and follow events");
    let refused = || {
        log(&sb)
            .lines()
            .find(|l| l.contains(&format!("uid {uid}")) && l.contains("refused"))
            .map(str::to_string)
    };
    assert!(
        wait_until(TIMEOUT, || refused().is_some()),
        "no log line naming uid {uid}:\n{}",
        log(&sb)
    );
    let line = refused();
    println!("log: {}", line.unwrap());
    // A client refused in a loop does not flood the log: the first refusal is logged, the
    // rest are counted (and summarised at most once a minute).
    for _ in 0..10 {
        let out = as_nobody(&mut sb, &["stop", "w"]);
        assert_eq!(exit_code(&out), Some(4));
    }
    let l = log(&sb);
    assert_eq!(
        l.matches("may only read status and follow events").count(),
        1,
        "{l}"
    );
    // Untouched by the refused requests.
    let (_, v) = status_json(&mut sb, &["w"]);
    assert_eq!(of(&v, "w"), w2);
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 3. Garbage, oversized lines, floods, half-closed clients and 500 idle connections.

/// Whether a daemon started from here may serve `connections` at once: it raises its soft
/// RLIMIT_NOFILE to the hard one and serves a quarter of that (plus a reserve for root and its
/// own uid). False, with a printed reason, when the hard limit is too low. The test process
/// keeps its own limit: only the daemon's raise may make room.
fn enough_descriptors(test: &Test, connections: u64) -> bool {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard / 4 < connections {
        test.skip(&format!(
            "RLIMIT_NOFILE hard limit {hard} lets a daemon serve fewer than {connections} \
             connections"
        ));
        return false;
    }
    true
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`).
fn kib(pid: i32, field: &str) -> u64 {
    status(pid)[field]
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// How many of `pid`'s descriptors are sockets bound or accepted at `path` (the listener and
/// every accepted connection; /proc/net/unix names the path for both).
fn sockets_at(pid: i32, path: &std::path::Path) -> usize {
    let path = path_str(path);
    let inodes: BTreeSet<String> = std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(7) == Some(&path.as_str())).then(|| f[6].to_string())
        })
        .collect();
    fds(pid)
        .into_iter()
        .filter(|(_, t)| {
            let t = t.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|i| inodes.contains(i))
        })
        .count()
}

/// Connects with a read timeout.
fn connect(path: &std::path::Path) -> BufReader<UnixStream> {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    BufReader::new(s)
}

/// Sends `line` (newline added) and parses the one reply line.
fn ask(c: &mut BufReader<UnixStream>, line: &[u8]) -> Value {
    c.get_mut().write_all(line).unwrap();
    c.get_mut().write_all(b"\n").unwrap();
    let mut s = String::new();
    c.read_line(&mut s).unwrap();
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("reply {s:?}: {e}"))
}

/// Garbage, an unknown protocol version and an unknown command each get a `bad-request` reply on
/// one connection, which still serves a good request after them; returns that connection.
fn garbage_gets_bad_request_and_the_connection_stays_usable(
    sock: &std::path::Path,
) -> BufReader<UnixStream> {
    let mut g = connect(sock);
    let reply = ask(&mut g, b"\x00\xffthis is not json");
    assert_eq!(
        (&reply["ok"], &reply["kind"]),
        (&Value::Bool(false), &Value::from("bad-request")),
        "{reply}"
    );
    let reply = ask(&mut g, br#"{"v":7,"cmd":"status"}"#);
    assert_eq!(reply["kind"], "bad-request", "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("version"),
        "{reply}"
    );
    let reply = ask(&mut g, br#"{"v":1,"cmd":"explode"}"#);
    assert_eq!(reply["kind"], "bad-request", "{reply}");
    let reply = ask(&mut g, br#"{"v":1,"cmd":"status","programs":["w"]}"#);
    assert_eq!(reply["ok"], true, "still served after garbage: {reply}");
    assert_eq!(reply["result"]["instances"].as_array().unwrap().len(), 2);
    g
}

/// 100 KiB without a newline, then the newline: a bad-request error, then the connection is
/// closed. The daemon may close before we finish writing: a failed write is fine. The same after
/// a newline: only the unfinished line counts.
fn an_oversized_line_is_refused_then_closed(sock: &std::path::Path) {
    let mut b = connect(sock);
    let _ = b.get_mut().write_all(&vec![b'x'; 100 * 1024]);
    let _ = b.get_mut().write_all(b"\n");
    let mut line = String::new();
    b.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["kind"], "bad-request", "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("longer"),
        "{reply}"
    );
    let mut rest = Vec::new();
    match b.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing after the error: {rest:?}"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "closed, not timed out: {e}"
        ),
    }
    let mut b = connect(sock);
    let mut big = b"\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 1 << 20));
    let _ = b.get_mut().write_all(&big);
    line.clear();
    b.read_line(&mut line).unwrap();
    assert!(
        line.contains("bad-request") && line.contains("longer"),
        "{line}"
    );
}

/// A client writing newlines as fast as it can (a burst of short lines) neither holds the loop
/// nor the daemon's memory: others are answered meanwhile (`status` within 2 s), and then the
/// flooder itself; returns the flooder's connection.
fn a_newline_flood_starves_no_client(
    sb: &mut Sandbox,
    sock: &std::path::Path,
) -> BufReader<UnixStream> {
    let flood = UnixStream::connect(sock).unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let halt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut flood = flood.try_clone().unwrap();
        let (sent, halt) = (sent.clone(), halt.clone());
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let chunk = vec![b'\n'; 64 * 1024];
            let until = Instant::now() + TIMEOUT;
            while !halt.load(Relaxed) && Instant::now() < until {
                flood.write_all(&chunk).unwrap();
                sent.fetch_add(chunk.len(), Relaxed);
            }
        })
    };
    let flooding = wait_until(TIMEOUT, || {
        sent.load(std::sync::atomic::Ordering::Relaxed) > 4 << 20
    });
    let asked = Instant::now();
    expect(sb, &["status"], 0);
    let took_flood = asked.elapsed();
    halt.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(flooding, "the flood never got going");
    let mut f = BufReader::new(flood);
    f.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    let reply = ask(&mut f, br#"{"v":1,"cmd":"status"}"#);
    assert_eq!(reply["ok"], true, "the flooder is answered too: {reply}");
    let flooded = sent.load(std::sync::atomic::Ordering::Relaxed) >> 20;
    println!("status during a flood of {flooded} MiB of newlines: {took_flood:.1?}");
    assert!(
        took_flood < Duration::from_secs(2),
        "status took {took_flood:?} during the flood"
    );
    f
}

/// A half-closed client (its write side shut) still gets its answer.
fn a_half_closed_client_is_answered(sock: &std::path::Path) {
    let mut h = connect(sock);
    h.get_mut()
        .write_all(b"{\"v\":1,\"cmd\":\"status\"}\n")
        .unwrap();
    h.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    h.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("{\"v\":1,\"ok\":true"), "{all}");
}

/// Each idle connection has received neither data nor EOF.
fn assert_idle(idle: &[UnixStream]) {
    for s in idle {
        s.set_nonblocking(true).unwrap();
        let e = (&*s)
            .read(&mut [0u8; 16])
            .expect_err("an idle connection got data or EOF");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "idle connection: {e}"
        );
    }
}

#[test]
fn garbage_oversized_lines_and_500_idle_connections_leave_warden_serving() {
    let test = this_test!();
    if !enough_descriptors(&test, 510) {
        return;
    }
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 2, 1000));
    // Started with the soft limit systemd gives services: the daemon makes its own room.
    let warden = start_with_ulimit(&mut sb, "-Sn 1024");
    let w = wait_up(&mut sb, "w", 2);
    let (rss_before, hwm_before) = (kib(warden, "VmRSS"), kib(warden, "VmHWM"));
    let sock = sb.path("warden.sock");

    let mut idle: Vec<UnixStream> = (0..500)
        .map(|i| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    // Every one is accepted and held by the daemon, none left in the backlog (the listener
    // itself is the one more).
    assert!(
        wait_until(TIMEOUT, || sockets_at(warden, &sock) > 500),
        "the daemon holds {} sockets at {}, want 500 connections and the listener",
        sockets_at(warden, &sock),
        sock.display()
    );

    let g = garbage_gets_bad_request_and_the_connection_stays_usable(&sock);
    an_oversized_line_is_refused_then_closed(&sock);
    let f = a_newline_flood_starves_no_client(&mut sb, &sock);
    a_half_closed_client_is_answered(&sock);

    // While all 500 are still open: status answers, quickly, and nothing grew.
    let asked = Instant::now();
    let table = expect(&mut sb, &["status"], 0);
    let took = asked.elapsed();
    assert!(table.contains("PROGRAM"), "{table}");
    let (c, v) = status_json(&mut sb, &["w"]);
    assert_eq!(c, 0);
    assert_eq!(of(&v, "w"), w, "the workers are untouched");
    assert_idle(&idle);
    let (rss, hwm) = (kib(warden, "VmRSS"), kib(warden, "VmHWM"));
    println!(
        "status with 500 idle connections: {took:.1?}; daemon VmRSS {rss_before} -> {rss} kB, VmHWM {hwm_before} -> {hwm} kB"
    );
    assert!(took < Duration::from_secs(2), "status took {took:?}");
    assert!(
        rss < rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} kB to {rss} kB"
    );
    assert!(
        hwm < hwm_before + 8 * 1024,
        "VmHWM grew from {hwm_before} kB to {hwm} kB"
    );
    // Connections closed by their clients are dropped by the daemon.
    idle.clear();
    drop((g, f));
    assert!(
        wait_until(TIMEOUT, || sockets_at(warden, &sock) == 1),
        "the daemon still holds {} sockets at {}",
        sockets_at(warden, &sock),
        sock.display()
    );
    expect(&mut sb, &["status"], 0);
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 4. Reload with an invalid file.

#[test]
fn reload_with_an_invalid_file_keeps_every_pid_and_reports_file_line() {
    let test = this_test!();
    let tables = format!("{}{}", sleeper("a", 2, 1000), sleeper("b", 1, 1000));
    let mut sb = test.supervisor_sandbox("", &tables);
    let warden = sb.start();
    wait_up(&mut sb, "a", 2);
    wait_up(&mut sb, "b", 1);
    let (_, before) = status_json(&mut sb, &[]);
    let children = live_children(warden);

    let bad = format!(
        "{}[program.b]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = \"three\"\n",
        sleeper("a", 2, 1000)
    );
    sb.write_programs("", &bad);
    let text = std::fs::read_to_string(&sb.config).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"three\""))
        .expect("the bad line")
        + 1;
    let out = sb.run(&["reload"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(6), "{}{err}", stdout_of(&out));
    let at = format!("warden.toml:{line}:");
    let located = |s: &str| {
        s.lines().any(|l| {
            l.find(&at).is_some_and(|i| {
                let rest = &l[i + at.len()..];
                let digits = rest.chars().take_while(char::is_ascii_digit).count();
                digits > 0 && rest[digits..].starts_with(':')
            })
        })
    };
    assert!(located(&err), "no `{at}COL:` in stderr:\n{err}");
    assert!(err.contains("instances"), "{err}");
    assert!(
        wait_until(TIMEOUT, || located(&log(&sb))),
        "the daemon log does not report `{at}COL:`:\n{}",
        log(&sb)
    );
    // Nothing changed.
    let (c, after) = status_json(&mut sb, &[]);
    assert_eq!(c, 0);
    assert_eq!(instances(&after), instances(&before));
    assert_eq!(live_children(warden), children);
    // The dry run says the same.
    let out = sb.run(&["reload", "--dry-run"]);
    assert_exit(&out, 6);
    assert!(located(&stderr_of(&out)), "{}", stderr_of(&out));
    assert_eq!(live_children(warden), children);
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 5. Reload that adds, removes and changes programs; --dry-run.

/// Starts warden with a relative `-c` from the sandbox's parent directory (the daemon changes
/// directory, and must still find its file to reload); returns its pid.
fn start_with_a_relative_config(sb: &mut Sandbox) -> i32 {
    let parent = sb.dir.parent().unwrap().to_path_buf();
    let relative = sb.config.strip_prefix(&parent).unwrap().to_path_buf();
    let mut cmd = std::process::Command::new(warden_bin());
    cmd.current_dir(&parent)
        .arg("-c")
        .arg(&relative)
        .arg("start")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    let out = sb.output(cmd);
    assert!(out.status.success(), "start: {}", stderr_of(&out));
    let warden = sb.pidfile_pid().unwrap();
    sb.track(warden);
    warden
}

/// `reload --dry-run` prints the plan for the edited config (add `added`, remove `gone`, restart
/// `change`, keep `keep`) and changes nothing: neither the `before` status nor the daemon's
/// `children`.
fn assert_dry_run_only_plans(
    sb: &mut Sandbox,
    warden: i32,
    before: &Value,
    children: &BTreeSet<i32>,
) {
    let plan = expect(sb, &["reload", "--dry-run"], 0);
    println!("{plan}");
    for l in [
        "would add added",
        "would remove gone",
        "would restart (changed) change",
        "would keep keep",
    ] {
        assert!(plan.lines().any(|x| x == l), "no line {l:?} in:\n{plan}");
    }
    assert_eq!(plan.lines().count(), 4, "{plan}");
    let (_, after) = status_json(sb, &[]);
    assert_eq!(
        instances(&after),
        instances(before),
        "dry run changed status"
    );
    assert_eq!(
        &live_children(warden),
        children,
        "dry run changed processes"
    );
}

/// Each instance of the changed program is up with a new pid, running the new command.
fn assert_restarted_on_the_new_command(changed: &[Inst], old: &[Inst]) {
    for (new, old) in changed.iter().zip(old) {
        assert!(up(new), "{new:?}");
        assert_ne!(new.pid, old.pid, "changed program restarted: {new:?}");
        // `running` may come a moment before the exec (the spawn does not wait for it).
        let cmdline = || {
            std::fs::read_to_string(format!("/proc/{}/cmdline", new.pid.unwrap()))
                .unwrap_or_default()
        };
        assert!(
            wait_until(TIMEOUT, || cmdline().contains("1001")),
            "runs the new command: {:?}",
            cmdline()
        );
    }
}

#[test]
fn reload_adds_removes_and_changes_only_what_changed_and_dry_run_changes_nothing() {
    let test = this_test!();
    let old = format!(
        "{}{}{}",
        sleeper("keep", 2, 1000),
        sleeper("gone", 2, 1000),
        sleeper("change", 2, 1000)
    );
    let mut sb = test.supervisor_sandbox("", &old);
    // Started with a relative `-c` from elsewhere.
    let warden = start_with_a_relative_config(&mut sb);
    let keep = wait_up(&mut sb, "keep", 2);
    let gone = wait_up(&mut sb, "gone", 2);
    let change = wait_up(&mut sb, "change", 2);
    let children = live_children(warden);
    let (_, before) = status_json(&mut sb, &[]);
    assert_eq!(
        before["daemon"]["config"].as_str(),
        Some(path_str(&sb.config).as_str()),
        "the config path is absolute"
    );

    let new = format!(
        "{}{}{}",
        sleeper("keep", 2, 1000),
        sleeper("change", 2, 1001),
        sleeper("added", 1, 1000)
    );
    sb.write_programs("", &new);

    // The plan, and nothing else.
    assert_dry_run_only_plans(&mut sb, warden, &before, &children);

    // Applied.
    let out = expect(&mut sb, &["reload"], 0);
    println!("{out}");
    assert_has_line(&out, "added added");
    let (_, v) = status_json(&mut sb, &[]);
    assert_eq!(of(&v, "keep"), keep, "unchanged program untouched");
    assert!(
        of(&v, "gone").is_empty(),
        "removed program still listed: {v:#}"
    );
    let programs: BTreeSet<String> = instances(&v).into_iter().map(|i| i.program).collect();
    assert_eq!(
        programs,
        ["keep", "change", "added"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    // `reload` returns once the touched programs are up.
    let added = of(&v, "added");
    assert_eq!(added.len(), 1);
    assert!(up(&added[0]), "{added:?}");
    let changed = of(&v, "change");
    assert_eq!(changed.len(), 2);
    assert_restarted_on_the_new_command(&changed, &change);
    for p in pids(&gone).into_iter().chain(pids(&change)) {
        assert!(
            wait_until(TIMEOUT, || !alive(p)),
            "{p} of a removed/changed program still runs"
        );
    }
    let want: BTreeSet<i32> = pids(&keep)
        .into_iter()
        .chain(pids(&changed))
        .chain(pids(&added))
        .collect();
    wait_children(&sb, warden, &want);
    stop(&mut sb);
}

/// Writes the drop-in `file` of the sandbox with `tables` (`SANDBOX` replaced by its path).
fn drop_in(sb: &Sandbox, file: &str, tables: &str) {
    let text = tables.replace("SANDBOX", &dir(sb));
    std::fs::write(sb.path(file), text).unwrap();
}

/// The file that defines `program`, as `status --json` reports it.
fn file_of(v: &Value, program: &str) -> Option<String> {
    v["programs"]
        .as_array()
        .expect("programs is an array")
        .iter()
        .find(|p| p["program"] == program)
        .map(|p| p["file"].as_str().expect("file is a string").to_string())
}

/// `include` drop-ins are globbed anew on every reload: an added file starts its program, a
/// changed one restarts it one instance at a time, a program moved unchanged to another file
/// keeps its processes (only its `file` changes), a removed file stops its program, and
/// `--dry-run` prints the plan and changes nothing. `status --json` names each program's file.
#[test]
fn reload_sees_added_changed_moved_and_removed_drop_ins_and_status_names_each_file() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("main", 1, 1000));
    // `include` is a top-level key: it goes before the `[daemon]` table.
    let text = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(&sb.config, format!("include = [\"conf.d/*.toml\"]\n{text}")).unwrap();
    std::fs::create_dir(sb.path("conf.d")).unwrap();
    let warden = sb.start();
    let main = wait_up(&mut sb, "main", 1);
    let (_, v) = status_json(&mut sb, &[]);
    assert_eq!(file_of(&v, "main"), Some(path_str(&sb.config)), "{v:#}");

    // Added: the dry run only tells.
    drop_in(&sb, "conf.d/a.toml", &sleeper("a", 2, 1000));
    let children = live_children(warden);
    let plan = expect(&mut sb, &["reload", "--dry-run"], 0);
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        ["would add a", "would keep main"],
        "{plan}"
    );
    assert_children_stay(&sb, warden, &children);
    let out = expect(&mut sb, &["reload"], 0);
    assert_has_line(&out, "added a");
    let a = wait_up(&mut sb, "a", 2);
    let a_file = path_str(&sb.path("conf.d/a.toml"));
    let (_, v) = status_json(&mut sb, &[]);
    assert_eq!(file_of(&v, "a"), Some(a_file.clone()), "{v:#}");
    assert_eq!(of(&v, "main"), main, "main untouched");

    // Changed: a rolling restart of a alone.
    drop_in(&sb, "conf.d/a.toml", &sleeper("a", 2, 1001));
    let plan = expect(&mut sb, &["reload", "--dry-run"], 0);
    assert_has_line(&plan, "would restart (changed) a");
    let out = expect(&mut sb, &["reload"], 0);
    assert_has_line(&out, "restarted (changed) a");
    let (_, v) = status_json(&mut sb, &[]);
    let a2 = of(&v, "a");
    assert_eq!(a2.len(), 2, "{v:#}");
    for (new, old) in a2.iter().zip(&a) {
        assert!(up(new), "{new:?}");
        assert_ne!(new.pid, old.pid, "a changed program is restarted");
        sb.track(new.pid.unwrap());
    }
    assert_eq!(of(&v, "main"), main, "main untouched");

    // Moved unchanged to another file: kept, same pids, its new file shown.
    std::fs::rename(sb.path("conf.d/a.toml"), sb.path("conf.d/b.toml")).unwrap();
    let out = expect(&mut sb, &["reload"], 0);
    assert_has_line(&out, "unchanged a");
    let (_, v) = status_json(&mut sb, &[]);
    assert_eq!(
        pids(&of(&v, "a")),
        pids(&a2),
        "a moved program is not restarted"
    );
    assert_eq!(
        file_of(&v, "a"),
        Some(path_str(&sb.path("conf.d/b.toml"))),
        "{v:#}"
    );

    // Removed: its program stops, the others stay.
    std::fs::remove_file(sb.path("conf.d/b.toml")).unwrap();
    let plan = expect(&mut sb, &["reload", "--dry-run"], 0);
    assert_has_line(&plan, "would remove a");
    expect(&mut sb, &["reload"], 0);
    for p in pids(&a2) {
        assert!(
            wait_until(TIMEOUT, || !alive(p)),
            "{p} of a removed drop-in still runs"
        );
    }
    let (_, v) = status_json(&mut sb, &[]);
    assert!(
        of(&v, "a").is_empty() && file_of(&v, "a").is_none(),
        "{v:#}"
    );
    assert_eq!(of(&v, "main"), main, "main untouched");
    wait_children(&sb, warden, &pids(&main).into_iter().collect());
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 6. Rolling restart with notify readiness.

const NOTIFY_WORKER: &str = r#"import os, socket, time
time.sleep(0.3)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
while True:
    time.sleep(1000)
"#;

#[test]
fn rolling_restart_keeps_n_minus_1_ready_at_every_sample() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    std::fs::write(sb.path("notify.py"), NOTIFY_WORKER).unwrap();
    sb.write_programs(
        "",
        "[program.n]\ncommand = [\"PYTHON\", \"SANDBOX/notify.py\"]\ninstances = 4\nready = \"notify\"\n",
    );
    let warden = sb.start();
    let before = wait_status(&mut sb, "4 ready", |v| {
        let is = of(v, "n");
        is.len() == 4 && is.iter().all(|i| i.state == "ready")
    });
    let before = of(&before, "n");
    assert!(before.iter().all(|i| i.restarts == 0), "{before:?}");

    let mut cmd = sb.warden(&["restart", "n"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let restart = std::thread::spawn(move || wait_output(cmd.spawn().unwrap(), TIMEOUT));
    let mut samples = 0;
    let mut least = usize::MAX;
    let mut seen_pids = BTreeSet::new();
    while !restart.is_finished() {
        let (c, v) = status_json(&mut sb, &["n"]);
        let is = of(&v, "n");
        let ready = is.iter().filter(|i| i.state == "ready").count();
        assert!(
            ready >= 3,
            "only {ready} of 4 ready during the rolling restart (exit {c}): {is:?}"
        );
        seen_pids.extend(pids(&is));
        least = least.min(ready);
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = restart.join().unwrap();
    assert_eq!(exit_code(&out), Some(0), "restart: {}", stderr_of(&out));
    println!("{samples} samples, at least {least} of 4 ready in each");
    assert!(samples >= 5, "too few samples to mean anything: {samples}");
    assert_eq!(least, 3, "an instance was replaced while sampled");

    let (c, v) = status_json(&mut sb, &["n"]);
    assert_eq!(c, 0);
    let after = of(&v, "n");
    assert_eq!(after.len(), 4);
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.state, "ready", "{a:?}");
        assert_eq!(a.restarts, 1, "{a:?}");
        assert_ne!(a.pid, b.pid, "{a:?} was not replaced");
        assert!(!alive(b.pid.unwrap()), "old {b:?} still runs");
    }
    for p in pids(&after) {
        sb.track(p);
    }
    wait_children(&sb, warden, &pids(&after).into_iter().collect());
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 7. Scale, SIGTTIN and SIGTTOU.

#[test]
fn scale_and_ttin_ttou_follow_in_status_and_stop_the_highest_indices() {
    let test = this_test!();
    let tables = format!("{}{}", sleeper("w", 2, 1000), sleeper("other", 1, 1000));
    let mut sb = test.supervisor_sandbox("scale_program = \"w\"", &tables);
    let warden = sb.start();
    let two = wait_up(&mut sb, "w", 2);
    let other = wait_up(&mut sb, "other", 1);

    expect(&mut sb, &["scale", "w", "4"], 0);
    let (_, v) = status_json(&mut sb, &["w"]);
    let four = of(&v, "w");
    assert_eq!(
        four.iter().map(|i| i.index).collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "{four:?}"
    );
    assert!(
        four.iter().all(up),
        "scale returns once they are up: {four:?}"
    );
    assert_eq!(&four[..2], &two[..], "the first two untouched");
    for p in pids(&four) {
        sb.track(p);
    }

    expect(&mut sb, &["scale", "w", "1"], 0);
    let (_, v) = status_json(&mut sb, &["w"]);
    let one = of(&v, "w");
    assert_eq!(one, vec![two[0].clone()], "the highest indices went");
    for i in &four[1..] {
        assert!(
            wait_until(TIMEOUT, || !alive(i.pid.unwrap())),
            "{i:?} still runs"
        );
    }

    // SIGTTIN / SIGTTOU: one more, one less, on the scale_program.
    signal(warden, Signal::SIGTTIN);
    let v = wait_status(&mut sb, "w scaled to 2", |v| {
        let is = of(v, "w");
        is.len() == 2 && is.iter().all(up)
    });
    let again = of(&v, "w");
    assert_eq!(again[0], two[0]);
    assert_eq!(again[1].index, 1);
    let added = again[1].pid.unwrap();
    sb.track(added);
    signal(warden, Signal::SIGTTIN);
    wait_up(&mut sb, "w", 3);
    // One signal at a time: two pending SIGTTOUs are one.
    signal(warden, Signal::SIGTTOU);
    wait_status(&mut sb, "w scaled back to 2", |v| of(v, "w").len() == 2);
    signal(warden, Signal::SIGTTOU);
    let v = wait_status(&mut sb, "w scaled back to 1", |v| of(v, "w").len() == 1);
    assert_eq!(of(&v, "w"), vec![two[0].clone()]);
    assert!(wait_until(TIMEOUT, || !alive(added)));
    assert_eq!(of(&v, "other"), other, "the other program untouched");
    wait_children(
        &sb,
        warden,
        &[two[0].pid.unwrap(), other[0].pid.unwrap()].into(),
    );

    // Unknown program; scaling to zero is allowed and leaves nothing running.
    let out = sb.run(&["scale", "nosuch", "2"]);
    assert_eq!(exit_code(&out), Some(5), "{}", stderr_of(&out));
    expect(&mut sb, &["scale", "w", "0"], 0);
    let (_, v) = status_json(&mut sb, &["w"]);
    assert!(of(&v, "w").is_empty(), "{v:#}");
    wait_children(&sb, warden, &[other[0].pid.unwrap()].into());
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 8. Program stop and start.

#[test]
fn program_stop_stays_down_until_started_and_leaves_others_alone() {
    let test = this_test!();
    let tables = format!("{}{}", sleeper("a", 2, 1000), sleeper("b", 2, 1000));
    let mut sb = test.supervisor_sandbox("", &tables);
    let warden = sb.start();
    let a = wait_up(&mut sb, "a", 2);
    let b = wait_up(&mut sb, "b", 2);

    expect(&mut sb, &["stop", "a"], 0);
    let (_, v) = status_json(&mut sb, &[]);
    let stopped = of(&v, "a");
    assert_eq!(stopped.len(), 2);
    for i in &stopped {
        assert_eq!((i.state.as_str(), i.pid), ("stopped", None), "{i:?}");
    }
    assert_eq!(of(&v, "b"), b, "the other program untouched");
    for p in pids(&a) {
        assert!(!alive(p), "{p} of a still runs after stop returned");
    }
    expect(&mut sb, &["status", "a"], 150);
    // An absence: a stays down (no restart) for an observation window.
    let b_pids: BTreeSet<i32> = pids(&b).into_iter().collect();
    assert_children_stay(&sb, warden, &b_pids);
    let (_, v) = status_json(&mut sb, &["a"]);
    assert!(of(&v, "a").iter().all(|i| i.state == "stopped"), "{v:#}");
    // Stopping again is fine.
    expect(&mut sb, &["stop", "a"], 0);

    expect(&mut sb, &["start", "a"], 0);
    let (c, v) = status_json(&mut sb, &[]);
    assert_eq!(c, 0);
    let started = of(&v, "a");
    assert_eq!(started.len(), 2);
    assert!(started.iter().all(up), "{started:?}");
    for (n, o) in started.iter().zip(&a) {
        assert_ne!(n.pid, o.pid);
        sb.track(n.pid.unwrap());
    }
    assert_eq!(of(&v, "b"), b, "the other program untouched");
    expect(&mut sb, &["status", "a", "b"], 0);
    let out = sb.run(&["stop", "nosuch"]);
    assert_eq!(exit_code(&out), Some(5), "{}", stderr_of(&out));
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 9. stop and status through the pidfile when the socket is gone.

#[test]
fn stop_and_status_work_through_the_pidfile_without_the_socket() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 2, 1000));
    let warden = sb.start();
    let w = wait_up(&mut sb, "w", 2);
    std::fs::remove_file(sb.path("warden.sock")).unwrap();
    let out = expect(&mut sb, &["status"], 0);
    assert!(
        out.contains("running") && out.contains(&warden.to_string()),
        "{out}"
    );
    // Nobody to ask about its programs: running, but their state unknown (LSB 4), not 3.
    let out = sb.run(&["status", "w"]);
    assert_exit(&out, 4);
    assert_stderr_has(&out, "unknown");
    // The same in JSON: running (from the pidfile), its instances absent (unknown).
    let out = sb.run(&["status", "--json", "w"]);
    assert_eq!(exit_code(&out), Some(4), "{}", stderr_of(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["daemon"]["running"], true, "{v:#}");
    assert_eq!(v["daemon"]["state"], "running", "{v:#}");
    assert_eq!(v["daemon"]["pid"].as_i64(), Some(warden.into()), "{v:#}");
    assert!(v.get("instances").is_none(), "{v:#}");
    expect(&mut sb, &["stop"], 0);
    assert!(!alive(warden));
    for p in pids(&w) {
        assert!(wait_until(TIMEOUT, || !alive(p)));
    }
    expect(&mut sb, &["status"], 3);
    assert_no_process(&sb);
}

/// `status` and `stop` with a pidfile that lies: deleted under a running daemon, or a FIFO planted
/// at its path (with and without a daemon), or a socket. Nothing may say "not running" while the daemon
/// answers on its socket, and nothing may hang.
#[test]
fn stop_and_status_see_through_a_deleted_or_planted_pidfile() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 1, 1000));
    let plant_fifo = |sb: &Sandbox| {
        let _ = std::fs::remove_file(sb.pidfile());
        nix::unistd::mkfifo(
            &sb.pidfile(),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
    };
    for fifo in [false, true] {
        let warden = sb.start();
        let w = wait_up(&mut sb, "w", 1);
        if fifo {
            plant_fifo(&sb);
        } else {
            std::fs::remove_file(sb.pidfile()).unwrap();
        }
        let out = expect(&mut sb, &["status"], 0);
        assert!(out.contains(&warden.to_string()), "{out}");
        let out = sb.run(&["stop", "--timeout", "10s"]);
        assert_eq!(
            exit_code(&out),
            Some(0),
            "fifo={fifo}: {}{}",
            stdout_of(&out),
            stderr_of(&out)
        );
        assert!(
            stderr_of(&out).contains(&format!("pid {warden} answers")),
            "{}",
            stderr_of(&out)
        );
        assert!(!alive(warden), "fifo={fifo}: warden still runs");
        for p in pids(&w) {
            assert!(wait_until(TIMEOUT, || !alive(p)));
        }
    }
    // A FIFO and no daemon: both commands answer at once (neither opens it blocking), status
    // with "unknown" (4), stop with an error naming what is there, never "not running".
    let out = sb.run(&["status"]);
    assert_exit(&out, 4);
    assert_stderr_has(&out, "FIFO");
    let out = sb.run(&["stop", "--timeout", "3s"]);
    assert_exit(&out, 1);
    assert_stderr_has(&out, "FIFO");
    assert!(!stdout_of(&out).contains("not running"));
    assert_no_process(&sb);

    // A Unix socket's file where the pidfile should be (which `open` refuses with the FIFO's
    // errno) is named as what it is.
    std::fs::remove_file(sb.pidfile()).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(sb.pidfile()).unwrap();
    for args in [&["status"][..], &["stop", "--timeout", "3s"]] {
        let out = sb.run(args);
        assert_stderr_has(&out, "it is a socket, not a regular file");
        assert!(!stderr_of(&out).contains("FIFO"), "{}", stderr_of(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Review fixes: a rollout meets a scale-down; a reload meets a program stopped by hand; exit
// statuses of reload, scale and status; reopen-logs that fails, after a bad edit, and by
// another user.

/// A worker that takes `secs` seconds to stop after SIGTERM (its sleep child dies with the
/// group; the trap then sleeps and exits 0).
fn slow_stopper(name: &str, n: u32, secs: u32) -> String {
    format!(
        "[program.{name}]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'SANDBOX/sleep {secs}; exit 0' TERM; SANDBOX/sleep 1000 & wait\"]\ninstances = {n}\nstop_timeout = \"20s\"\n"
    )
}

#[test]
fn rolling_restart_leaves_instances_scaled_away_mid_rollout_down() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &slow_stopper("w", 4, 2));
    let warden = sb.start();
    let before = wait_up(&mut sb, "w", 4);
    // Each shell has started its `sleep 1000` (a SIGTERM that came before would leave that
    // child to outlive the shell, and its stop to wait for stop_timeout): then it is as written.
    let forked = wait_until(TIMEOUT, || {
        before
            .iter()
            .all(|i| i.pid.is_some_and(|p| !children_of(p).is_empty()))
    });
    assert!(forked, "the workers never started their sleep: {before:?}");

    let mut cmd = sb.warden(&["restart", "w", "--timeout", "15s"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let restart = std::thread::spawn(move || wait_output(cmd.spawn().unwrap(), TIMEOUT));
    // Index 0 is back and index 1 is being replaced: 2 and 3 are still to come.
    let first = before[0].pid;
    wait_status(&mut sb, "w[0] replaced and w[1] stopping", |v| {
        let is = of(v, "w");
        is.len() == 4 && up(&is[0]) && is[0].pid != first && is[1].state == "stopping"
    });
    // Scaled down while the rollout has not reached 2 and 3; they stop for 2 s, so they are
    // still stopping when the rollout is done with 1.
    let out = sb.run(&["scale", "w", "2", "--timeout", "15s"]);
    assert_eq!(
        exit_code(&out),
        Some(0),
        "scale: {}{}\nlog:\n{}",
        stdout_of(&out),
        stderr_of(&out),
        log(&sb)
    );
    let out = restart.join().unwrap();
    assert_eq!(
        exit_code(&out),
        Some(0),
        "restart: {}{}\nlog:\n{}",
        stdout_of(&out),
        stderr_of(&out),
        log(&sb)
    );
    let (c, v) = status_json(&mut sb, &["w"]);
    assert_eq!(c, 0, "{v:#}");
    let after = of(&v, "w");
    assert_eq!(
        after.iter().map(|i| i.index).collect::<Vec<_>>(),
        [0, 1],
        "{v:#}"
    );
    assert!(after.iter().all(up), "{after:?}");
    for (a, b) in after.iter().zip(&before) {
        assert_ne!(a.pid, b.pid, "{a:?} was not replaced");
    }
    for p in pids(&after) {
        sb.track(p);
    }
    for i in &before[2..] {
        assert!(
            wait_until(TIMEOUT, || !alive(i.pid.unwrap())),
            "{i:?} still runs"
        );
    }
    wait_children(&sb, warden, &pids(&after).into_iter().collect());
    let log = log(&sb);
    assert!(
        !log.lines()
            .skip_while(|l| !l.contains("control: scale w 2"))
            .any(|l| (l.contains("w[2]: ") || l.contains("w[3]: ")) && l.contains("-> running")),
        "an instance scaled away came back:\n{log}"
    );
    stop(&mut sb);
}

#[test]
fn reload_leaves_a_program_stopped_by_hand_stopped() {
    let test = this_test!();
    let tables = format!("{}{}", sleeper("a", 2, 1000), sleeper("b", 1, 1000));
    let mut sb = test.supervisor_sandbox("", &tables);
    let warden = sb.start();
    wait_up(&mut sb, "a", 2);
    let b = wait_up(&mut sb, "b", 1);
    expect(&mut sb, &["stop", "a"], 0);
    let b_pids: BTreeSet<i32> = pids(&b).into_iter().collect();
    wait_children(&sb, warden, &b_pids);

    sb.write_programs(
        "",
        &format!("{}{}", sleeper("a", 2, 1001), sleeper("b", 1, 1000)),
    );
    let plan = expect(&mut sb, &["reload", "--dry-run"], 0);
    assert_has_line(&plan, "would change (stays stopped) a");
    let out = expect(&mut sb, &["reload"], 0);
    assert_has_line(&out, "changed (stays stopped) a");
    assert!(!out.contains("restarted (changed) a"), "{out}");
    // An absence: a stays down for an observation window.
    assert_children_stay(&sb, warden, &b_pids);
    let (c, v) = status_json(&mut sb, &["a"]);
    assert_eq!(c, 150, "{v:#}");
    for i in of(&v, "a") {
        assert_eq!((i.state.as_str(), i.pid), ("stopped", None), "{i:?}");
    }
    // Its next start runs the new settings.
    expect(&mut sb, &["start", "a"], 0);
    let a = wait_up(&mut sb, "a", 2);
    assert_all_run(&a, "1001");
    stop(&mut sb);
}

#[test]
fn reload_with_an_unknown_user_scale_beyond_the_limit_and_status_of_an_empty_program() {
    let test = this_test!();
    let tables = format!(
        "{}[program.z]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = 0\n",
        sleeper("a", 1, 1000)
    );
    let mut sb = test.supervisor_sandbox("", &tables);
    let warden = sb.start();
    let a = wait_up(&mut sb, "a", 1);

    // A program scaled to 0 is shown, and is as configured (0).
    let out = expect(&mut sb, &["status", "z"], 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("z ") && l.ends_with("0 instances")),
        "{out}"
    );
    assert!(!out.contains("no programs"), "{out}");
    let out = expect(&mut sb, &["status"], 0);
    assert!(out.lines().any(|l| l.starts_with("z ")), "{out}");
    let (c, v) = status_json(&mut sb, &["z"]);
    assert_eq!(c, 0);
    assert_eq!(
        v["programs"],
        serde_json::json!([{"program": "z", "instances": 0, "file": path_str(&sb.config)}]),
        "{v:#}"
    );
    assert_eq!(v["instances"], serde_json::json!([]), "{v:#}");

    // A count beyond the limit is a bad request (2), not an unknown program (5).
    let out = sb.run(&["scale", "a", "20000"]);
    assert_exit(&out, 2);
    assert_stderr_has(&out, "20000");

    // An unknown user on reload: a configuration error (6) with the file and key, as `check`
    // reports it; nothing changes.
    sb.write_programs(
        "",
        &format!("{}user = \"nosuchuser\"\n", sleeper("a", 1, 1001)),
    );
    let out = sb.run(&["check"]);
    println!("check: {}", stderr_of(&out));
    let out = sb.run(&["reload"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(6), "{}{err}", stdout_of(&out));
    assert!(
        err.contains("warden.toml:10:8: program.a.user: ") && err.contains("nosuchuser"),
        "{err}"
    );
    let (_, v) = status_json(&mut sb, &[]);
    assert_eq!(of(&v, "a"), a, "nothing changed");
    assert_eq!(live_children(warden), pids(&a).into_iter().collect());
    stop(&mut sb);
}

/// Creates directory `name` in the sandbox, owned by `owner` when given.
fn mkdir_owned(sb: &Sandbox, name: &str, owner: Option<u32>) {
    std::fs::create_dir(sb.path(name)).unwrap();
    if let Some(uid) = owner {
        nix::unistd::chown(
            &sb.path(name),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
    }
}

#[test]
fn reopen_logs_reports_a_reopen_that_failed() {
    let test = this_test!();
    // As root the daemon runs as nobody, so that a directory it may not write gives EACCES.
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("reopen_logs_reports_a_reopen_that_failed: not root, the EACCES part is skipped");
    }
    let owner = root.then(nobody_uid);
    let user = if root {
        "user = \"nobody\"\ngroup = \"nogroup\"\n"
    } else {
        ""
    };
    let daemon = format!("{user}log = \"SANDBOX/ld/w.log\"");
    let tables = format!("{}stdout = \"SANDBOX/pd/out.log\"\n", sleeper("p", 1, 1000));
    let mut sb = test.supervisor_sandbox(&daemon, &tables);
    mkdir_owned(&sb, "ld", owner);
    mkdir_owned(&sb, "pd", owner);
    sb.start();
    wait_up(&mut sb, "p", 1);
    let wlog = |sb: &Sandbox| sb.read("ld/w.log") + &sb.read("ld.old/w.log");
    // `reopen-logs` must exit with `expected`; its stderr.
    let reopen_fails = |sb: &mut Sandbox, expected: i32| {
        let out = sb.run(&["reopen-logs"]);
        let err = stderr_of(&out);
        assert_eq!(
            exit_code(&out),
            Some(expected),
            "{}{err}\nlog:\n{}",
            stdout_of(&out),
            wlog(sb)
        );
        err
    };
    expect(&mut sb, &["reopen-logs"], 0);

    // The log's directory rotated away: the reopen fails, and says where and why.
    std::fs::rename(sb.path("ld"), sb.path("ld.old")).unwrap();
    let err = reopen_fails(&mut sb, 1);
    assert!(
        err.contains(&path_str(&sb.path("ld/w.log"))) && err.contains("No such file"),
        "{err}"
    );
    mkdir_owned(&sb, "ld", owner);
    // The same for a program's output file.
    std::fs::rename(sb.path("pd"), sb.path("pd.old")).unwrap();
    let err = reopen_fails(&mut sb, 1);
    assert!(
        err.contains(&path_str(&sb.path("pd/out.log"))) && !err.contains("w.log"),
        "{err}"
    );
    mkdir_owned(&sb, "pd", owner);
    expect(&mut sb, &["reopen-logs"], 0);
    assert!(sb.path("ld/w.log").exists() && sb.path("pd/out.log").exists());
    assert!(
        wait_until(TIMEOUT, || sb
            .read("ld/w.log")
            .contains("log files reopened")),
        "{}",
        wlog(&sb)
    );

    if root {
        // A directory the daemon (nobody) may not write: permission denied, 4.
        std::fs::rename(sb.path("ld"), sb.path("ld.2")).unwrap();
        mkdir_owned(&sb, "ld", None);
        let err = reopen_fails(&mut sb, 4);
        assert!(
            err.contains(&path_str(&sb.path("ld/w.log"))) && err.contains("ermission denied"),
            "{err}"
        );
    }
    stop(&mut sb);
}

#[test]
fn reopen_logs_works_after_a_bad_edit_of_the_configuration() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 1, 1000));
    sb.start();
    wait_up(&mut sb, "w", 1);
    sb.write_programs(
        "",
        "[program.w]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = \"three\"\n",
    );
    std::fs::rename(sb.path("warden.log"), sb.path("warden.log.1")).unwrap();
    let out = sb.run(&["reopen-logs"]);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "warning");
    assert!(
        wait_until(TIMEOUT, || log(&sb).contains("log files reopened")),
        "nothing in the new log file; the old one:\n{}",
        sb.read("warden.log.1")
    );
    stop(&mut sb);
}

/// A uid with no account on this machine.
/// For a one-second observation window, warden's live children stay exactly `expected`: a
/// program that must stay down does not come back.
fn assert_children_stay(sb: &Sandbox, warden: i32, expected: &BTreeSet<i32>) {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_eq!(
            &live_children(warden),
            expected,
            "a came back; log:\n{}",
            log(sb)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until every instance in `is` runs a command line containing `word`.
fn assert_all_run(is: &[Inst], word: &str) {
    for i in is {
        let cmdline = || {
            std::fs::read_to_string(format!("/proc/{}/cmdline", i.pid.unwrap())).unwrap_or_default()
        };
        assert!(
            wait_until(TIMEOUT, || cmdline().contains(word)),
            "{i:?} runs {:?}",
            cmdline()
        );
    }
}

fn unused_uid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let used: BTreeSet<u32> = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (40_000..60_000)
        .find(|u| !used.contains(u))
        .expect("a free uid")
}

#[test]
fn stop_and_reopen_logs_by_another_user_are_refused_with_permission_denied() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    if !test.require_tool("setpriv", "util-linux") {
        return;
    }
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 1, 1000));
    let warden = sb.start();
    let w = wait_up(&mut sb, "w", 1);
    let uid = unused_uid().to_string();
    let creds = [
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".to_string(),
    ];
    let creds: Vec<&str> = creds.iter().map(String::as_str).collect();

    // It may not look at root's descriptors, so it gets the pid unchecked, and kill(2) refuses.
    let out = as_user(&mut sb, &creds, &["stop"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(4), "{}{err}", stdout_of(&out));
    assert!(
        err.contains(&format!(
            "permission denied: cannot signal the daemon, pid {warden}"
        )),
        "{err}"
    );
    assert!(!err.contains("does not hold"), "{err}");
    let out = as_user(&mut sb, &creds, &["reopen-logs"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(4), "{}{err}", stdout_of(&out));
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("does not hold"), "{err}");
    // Nothing happened to the daemon.
    assert!(alive(warden));
    let (_, v) = status_json(&mut sb, &["w"]);
    assert_eq!(of(&v, "w"), w);
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 11. Descriptors: the daemon's RLIMIT_NOFILE, connection limits, idle connections, EMFILE; a
//     control socket shared by two configurations; a syslog that is not there.

/// `warden start` with the RLIMIT_NOFILE the shell sets first (`ulimit ULIMIT`, e.g. `-Sn
/// 1024`), asserting success; returns the daemon's pid (tracked for clean-up).
fn start_with_ulimit(sb: &mut Sandbox, ulimit: &str) -> i32 {
    let mut c = std::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(warden_bin())
        .arg("-c")
        .arg(&sb.config)
        .arg("start")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null());
    let out = sb.output(c);
    assert!(
        out.status.success(),
        "ulimit {ulimit}; warden start: {:?}\nstderr: {}",
        out.status,
        stderr_of(&out)
    );
    let pid = sb.pidfile_pid().expect("pidfile names the daemon");
    sb.track(pid);
    pid
}

/// The soft and hard "Max open files" of a process, from /proc/PID/limits.
fn nofile_of(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

fn hard_nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1
}

#[test]
fn nofile_is_raised_for_warden_and_left_alone_for_its_workers() {
    let test = this_test!();
    let hard = hard_nofile();
    if hard <= 256 {
        test.skip(&format!(
            "RLIMIT_NOFILE hard limit {hard} leaves nothing to raise"
        ));
        return;
    }
    let tables = format!(
        "{}[program.limited]\ncommand = [\"SANDBOX/sleep\", \"1001\"]\nlimits = {{ nofile = 200 }}\n",
        sleeper("plain", 1, 1000)
    );
    let mut sb = test.supervisor_sandbox("", &tables);
    let warden = start_with_ulimit(&mut sb, "-Sn 256");
    assert_eq!(nofile_of(warden), (hard, hard), "the daemon's own limit");
    let plain = wait_up(&mut sb, "plain", 1)[0].pid.unwrap();
    let limited = wait_up(&mut sb, "limited", 1)[0].pid.unwrap();
    // A select(2)-based program must not find itself above 1024: workers get what the daemon
    // was started with, unless configured.
    assert_eq!(nofile_of(plain), (256, hard), "a worker without limits");
    assert_eq!(nofile_of(limited), (200, 200), "a worker with nofile = 200");
    stop(&mut sb);
}

/// Starts a client run as `nobody` (group `nogroup`) that opens `n` connections to `sock` and
/// holds them idle; returns its pid once every connect has returned.
fn hold_idle_connections(sb: &mut Sandbox, sock: &std::path::Path, n: u32) -> i32 {
    std::fs::write(
        sb.path("hold.py"),
        "import socket, sys, time\n\
         path, n, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n\
         held = []\n\
         for _ in range(n):\n    \
             s = socket.socket(socket.AF_UNIX)\n    \
             s.connect(path)\n    \
             held.append(s)\n\
         open(done, 'w').close()\n\
         time.sleep(600)\n",
    )
    .unwrap();
    let mut holder = std::process::Command::new("setpriv");
    holder
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(python())
        .arg(sb.path("hold.py"))
        .arg(sock)
        .arg(n.to_string())
        .arg(sb.path("held"))
        .stdin(Stdio::null());
    let holder = sb.spawn(holder);
    assert!(
        wait_until(TIMEOUT, || sb.path("held").exists()),
        "the holder never finished connecting"
    );
    holder
}

#[test]
fn idle_control_connections_starve_neither_workers_nor_root() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    if hard_nofile() < 1024 {
        test.skip("RLIMIT_NOFILE hard limit below 1024");
        return;
    }
    // As reported: 1024 descriptors, 60 workers, and a read-only member of the control group
    // holding 900 idle connections.
    let mut sb = test.supervisor_sandbox("control_group = \"nogroup\"", &sleeper("w", 60, 1000));
    let warden = start_with_ulimit(&mut sb, "-n 1024");
    let before = wait_up(&mut sb, "w", 60);
    let sock = sb.path("warden.sock");
    let holder = hold_idle_connections(&mut sb, &sock, 900);
    // The holder's connects return once queued in the listener's backlog: the daemon may not
    // have accepted (and kept or refused) them all yet, and one it is refusing is open for a
    // moment. A connection of ours, queued after all of them, is answered only once the daemon
    // has decided on every one of them (the backlog is first in, first out); kept open while
    // counting, it is the one socket besides the listener that is not the holder's.
    let mut after = connect(&sock);
    let reply = ask(&mut after, br#"{"v":1,"cmd":"status"}"#);
    assert_eq!(reply["ok"], true, "root is answered: {reply}");
    // A quarter of 1024 for all connections, an eighth of that per read-only uid.
    let held = sockets_at(warden, &sock) - 2;
    println!("connections the daemon keeps for the holder: {held}");
    assert!((1..=32).contains(&held), "{held} connections held");
    drop(after);

    // Every worker killed at once: every one comes back (descriptors to spare).
    for p in pids(&before) {
        signal(p, Signal::SIGKILL);
    }
    let old: BTreeSet<i32> = pids(&before).into_iter().collect();
    wait_status(&mut sb, "60 new workers up", |v| {
        let is = of(v, "w");
        is.len() == 60
            && is
                .iter()
                .all(|i| up(i) && i.pid.is_some_and(|p| !old.contains(&p)))
    });
    let text = log(&sb);
    assert!(!text.contains("Too many open files"), "{text}");
    // Root gets in.
    expect(&mut sb, &["status"], 0);

    // The holder's connections have nothing in progress: closed after the idle timeout.
    assert!(
        wait_until(Duration::from_secs(30) + TIMEOUT, || sockets_at(
            warden, &sock
        ) == 1),
        "the daemon still holds {} sockets at {}",
        sockets_at(warden, &sock),
        sock.display()
    );
    signal(holder, Signal::SIGKILL);
    assert!(sb.wait_child(holder, TIMEOUT).is_some());
    stop(&mut sb);
}

#[test]
fn out_of_descriptors_a_client_is_answered_not_left_waiting() {
    let test = this_test!();
    if !test.require_tool("prlimit", "util-linux") {
        return;
    }
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 2, 1000));
    let warden = sb.start();
    wait_up(&mut sb, "w", 2);
    let sock = sb.path("warden.sock");
    // The soft limit lowered to just above the highest descriptor: once the gaps below it are
    // used, every new descriptor fails with EMFILE.
    let open: Vec<i32> = fds(warden).into_iter().map(|(fd, _)| fd).collect();
    let limit = *open.last().unwrap() + 1;
    let gaps = limit as usize - open.len();
    let (_, hard) = nofile_of(warden);
    let prlimit = |soft: String| {
        let out = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(warden.to_string())
            .arg(format!("--nofile={soft}:"))
            .output()
            .unwrap();
        assert!(out.status.success(), "prlimit: {}", stderr_of(&out));
    };
    prlimit(limit.to_string());
    let status = |c: &mut BufReader<UnixStream>| {
        // The daemon may answer and close before the request is written: a failed write is
        // fine, the answer is read all the same.
        let _ = c.get_mut().write_all(b"{\"v\":1,\"cmd\":\"status\"}\n");
        let mut line = String::new();
        c.read_line(&mut line)
            .unwrap_or_else(|e| panic!("no answer (the client was left waiting): {e}"));
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let mut served = Vec::new();
    let mut refused = None;
    for _ in 0..gaps + 3 {
        let mut c = connect(&sock);
        let reply = status(&mut c);
        if reply["ok"] == false {
            refused = Some(reply);
            break;
        }
        served.push(c);
    }
    let reply = refused.expect("never out of descriptors");
    assert_eq!(reply["kind"], "busy", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("out of file descriptors"),
        "{reply}"
    );
    // Again: the spare descriptor is back for the next one.
    let reply = status(&mut connect(&sock));
    assert_eq!(reply["kind"], "busy", "{reply}");
    println!(
        "{} connections served below the limit, then: {reply}",
        served.len()
    );
    prlimit(hard.to_string());
    drop(served);
    expect(&mut sb, &["status"], 0);
    stop(&mut sb);
}

#[test]
fn a_control_socket_in_use_is_neither_taken_over_nor_removed() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("one", 1, 1000));
    let first = sb.start();
    let one = wait_up(&mut sb, "one", 1);
    let sock = sb.path("warden.sock");
    // A second configuration: its own pidfile and log, the same control socket.
    let other = sb.path("other.toml");
    std::fs::write(
        &other,
        format!(
            "[daemon]\npidfile = \"{}\"\ndirectory = \"{}\"\nlog = \"{}\"\ncontrol_socket = \"{}\"\n\
             [program.two]\ncommand = [\"{}\", \"1000\"]\n",
            sb.path("other.pid").display(),
            sb.dir.display(),
            sb.path("other.log").display(),
            sock.display(),
            sb.path("sleep").display()
        ),
    )
    .unwrap();
    let start_other = |sb: &mut Sandbox| {
        let mut c = std::process::Command::new(warden_bin());
        c.arg("-c").arg(&other).arg("start").stdin(Stdio::null());
        sb.output(c)
    };
    let out = start_other(&mut sb);
    assert_eq!(exit_code(&out), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("{} is in use", sock.display())),
        "{}",
        stderr_of(&out)
    );
    assert!(!sb.path("other.pid").exists(), "the refused daemon is gone");
    let (c, v) = status_json(&mut sb, &[]);
    assert_eq!(c, 0);
    assert_eq!(v["daemon"]["pid"].as_i64(), Some(first.into()), "{v:#}");
    assert_eq!(of(&v, "one"), one);

    // The file removed by hand: the second daemon binds a new socket there, and the first one,
    // stopping, leaves it alone.
    std::fs::remove_file(&sock).unwrap();
    let out = start_other(&mut sb);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let second: i32 = std::fs::read_to_string(sb.path("other.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sb.track(second);
    expect(&mut sb, &["stop"], 0);
    assert!(!alive(first));
    assert!(
        sock.exists(),
        "stopping the first daemon removed the second's socket"
    );
    let reply = ask(&mut connect(&sock), br#"{"v":1,"cmd":"status"}"#);
    assert_eq!(
        reply["result"]["daemon"]["pid"].as_i64(),
        Some(second.into()),
        "{reply}"
    );
    let two = of(&reply["result"], "two")[0].pid.unwrap();
    sb.track(two);

    // A socket left behind by a daemon killed with SIGKILL answers nobody: it is replaced.
    signal(second, Signal::SIGKILL);
    assert!(wait_until(TIMEOUT, || !alive(second) && !alive(two)));
    assert!(sock.exists());
    let first = sb.start();
    let (c, v) = status_json(&mut sb, &[]);
    assert_eq!(c, 0);
    assert_eq!(v["daemon"]["pid"].as_i64(), Some(first.into()), "{v:#}");
    stop(&mut sb);
}

#[test]
fn start_warns_when_syslog_cannot_be_reached() {
    let test = this_test!();
    if std::path::Path::new("/dev/log").exists() {
        test.skip("/dev/log exists here");
        return;
    }
    let mut sb = test.supervisor_sandbox("log = \"syslog\"", &sleeper("w", 1, 1000));
    let out = sb.run(&["start"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let pid = sb.pidfile_pid().expect("pidfile names the daemon");
    sb.track(pid);
    let err = stderr_of(&out);
    assert!(
        err.contains("warning: syslog socket /dev/log cannot be reached (")
            && err.contains("log messages are dropped until it can"),
        "{err}"
    );
    stop(&mut sb);
}

/// A program stopped by hand stays stopped through reloads that give it more instances: the
/// new ones are created `stopped` (by hand), whether the reload also changes its command
/// (`changed (stays stopped)`) or only its count (`scaled`); a later change still finds the
/// whole program stopped by hand, and `start PROG` starts every instance on the new settings.
#[test]
fn reload_adding_instances_to_a_program_stopped_by_hand_starts_none() {
    let test = this_test!();
    let tables = |a: u32, secs: u32| format!("{}{}", sleeper("a", a, secs), sleeper("b", 1, 1000));
    let mut sb = test.supervisor_sandbox("", &tables(2, 1000));
    let warden = sb.start();
    wait_up(&mut sb, "a", 2);
    let b = wait_up(&mut sb, "b", 1);
    expect(&mut sb, &["stop", "a"], 0);
    let b_pids: BTreeSet<i32> = pids(&b).into_iter().collect();
    wait_children(&sb, warden, &b_pids);

    // Every instance of a is down, `n` of them, and only b runs. The reload's spawns happen
    // before it answers, so a started instance would show at once.
    let assert_a_down = |sb: &mut Sandbox, n: usize, after: &str| {
        let (c, v) = status_json(sb, &["a"]);
        assert_eq!(c, 150, "after {after}: {v:#}");
        let a = of(&v, "a");
        assert_eq!(a.len(), n, "after {after}: {v:#}");
        for i in &a {
            assert_eq!(
                (i.state.as_str(), i.pid),
                ("stopped", None),
                "after {after}: {i:?}; log:\n{}",
                log(sb)
            );
        }
        assert_eq!(
            live_children(warden),
            b_pids,
            "after {after}: a started; log:\n{}",
            log(sb)
        );
    };

    // Changed and grown: 2 -> 3 instances, new command.
    sb.write_programs("", &tables(3, 1001));
    let out = expect(&mut sb, &["reload"], 0);
    assert_has_line(&out, "changed (stays stopped) a");
    assert_a_down(&mut sb, 3, "a changed reload");

    // Only grown: 3 -> 4 instances.
    sb.write_programs("", &tables(4, 1001));
    expect(&mut sb, &["reload"], 0);
    assert_a_down(&mut sb, 4, "a scaling reload");

    // The new instances were stopped by hand too: a change still leaves the program stopped.
    sb.write_programs("", &tables(4, 1002));
    let out = expect(&mut sb, &["reload"], 0);
    assert_has_line(&out, "changed (stays stopped) a");
    assert_a_down(&mut sb, 4, "a second changed reload");

    expect(&mut sb, &["start", "a"], 0);
    let a = wait_up(&mut sb, "a", 4);
    assert_all_run(&a, "1002");
    stop(&mut sb);
}

#[test]
fn reload_to_a_command_that_cannot_run_answers_when_the_instance_goes_fatal() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("a", 2, 1000));
    sb.start();
    wait_up(&mut sb, "a", 2);
    sb.write_programs(
        "",
        "[program.a]\ncommand = \"no-such-program --flag\"\ninstances = 2\n",
    );
    // The instance goes fatal after its crash-loop limit (about 1.5 s of backoff): the reload
    // must be answered then, well within its timeout, not at a later unrelated wake-up.
    let out = sb.run(&["reload", "--timeout", "20s"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(1), "{err}\nlog:\n{}", log(&sb));
    assert!(err.contains("a[0]") && !err.contains("no answer"), "{err}");

    // A client that gives up says what the daemon was still waiting for.
    sb.write_programs(
        "",
        "[program.a]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\nready = \"1h\"\n",
    );
    let out = sb.run(&["reload", "--timeout", "1s"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(1), "{err}");
    assert!(
        err.contains("timed out after 1s (waiting for a[0] (starting)"),
        "{err}"
    );
    stop(&mut sb);
}

/// A program's output file on a full disk: warden says so once, summarises the dropped lines at
/// most every 10 s, and says once when the file can be written again — not one log line per
/// dropped line. The full disk is a 64 KiB tmpfs mounted in a mount namespace of warden's own
/// (`unshare`), so nothing is left mounted when warden is gone.
#[test]
fn a_full_disk_under_an_output_file_is_logged_once_then_summarised() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("unshare", "util-linux") {
        return;
    }
    let tables = "[program.w]\ncommand = [\"/bin/sh\", \"-c\", \"i=0; while :; do echo \
                  \\\"line $i of a program that writes a lot\\\"; i=$((i+1)); SANDBOX/sleep \
                  0.002; done\"]\nstdout = \"SANDBOX/full/out.log\"\nlog_max_bytes = \"100M\"\n";
    let mut sb = test.supervisor_sandbox("", tables);
    std::fs::create_dir(sb.path("full")).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {full} && exec {warden} -c {config} start",
        full = sb.path("full").display(),
        warden = crate::common::warden_bin().display(),
        config = sb.path("warden.toml").display(),
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let out = sb.output(cmd);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let warden = sb.pidfile_pid().expect("pidfile");
    sb.track(warden);
    let errors = |sb: &Sandbox| {
        log(sb)
            .lines()
            .filter(|l| l.contains("cannot write") || l.contains("dropped for w[0]"))
            .count()
    };
    assert!(
        wait_until(TIMEOUT, || errors(&sb) > 0),
        "the disk never filled:\n{}",
        log(&sb)
    );
    // About 1,000 more lines are dropped in the next two seconds: none of them is a log line.
    std::thread::sleep(Duration::from_secs(2));
    let first = log(&sb);
    assert_eq!(errors(&sb), 1, "{first}");
    assert!(first.contains("No space left on device"), "{first}");
    // Free the space (through warden's own view of the mount): the recovery is said once.
    let inside = std::path::PathBuf::from(format!("/proc/{warden}/root"))
        .join(sb.path("full/out.log").strip_prefix("/").unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&inside)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(
        wait_until(TIMEOUT, || log(&sb).contains("w[0]: writing")),
        "no recovery line:\n{}",
        log(&sb)
    );
    let again = log(&sb);
    assert_eq!(again.matches("w[0]: writing").count(), 1, "{again}");
    stop(&mut sb);
}

// ---------------------------------------------------------------------------------------------
// 12. What a new operator meets (issue 11): a state of its own for a program stopped by hand,
// one line of confirmation per successful command, refusals logged with their reason,
// `start PROG` and `restart PROG` waiting for timed readiness, `--timeout` in bare seconds,
// `status --json` without a daemon, and `reload -c` naming another file.

/// A notify worker that reports `READY=1` with a status line.
const NOTIFY_STATUS_WORKER: &str = r#"import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1\nSTATUS=serving", addr)
while True:
    time.sleep(1000)
"#;

/// The cells of the table row of `program[index]` in `warden status` output, by header.
fn table_row(table: &str, program: &str, index: u64) -> std::collections::HashMap<String, String> {
    let mut lines = table.lines().skip(1);
    let header = lines.next().expect("a header");
    let names = [
        "PROGRAM",
        "INDEX",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
        "STATUS",
    ];
    let cols: Vec<usize> = names.iter().map(|n| header.find(n).unwrap()).collect();
    for r in lines {
        let cell = |i: usize| -> String {
            let end = cols.get(i + 1).copied().unwrap_or(r.len()).min(r.len());
            r.get(cols[i]..end).unwrap_or("").trim().to_string()
        };
        if cell(0) == program && cell(1) == index.to_string() {
            return names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), cell(i)))
                .collect();
        }
    }
    panic!("no row for {program}[{index}] in:\n{table}");
}

#[test]
fn a_program_stopped_by_hand_is_stopped_and_every_command_confirms() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    std::fs::write(sb.path("notify.py"), NOTIFY_STATUS_WORKER).unwrap();
    sb.write_programs(
        "",
        &format!(
            "[program.n]\ncommand = [\"PYTHON\", \"SANDBOX/notify.py\"]\nready = \"notify\"\n{}",
            sleeper("other", 1, 1000)
        ),
    );
    sb.start();
    wait_status(&mut sb, "n ready, serving", |v| {
        v["instances"][0]["state"] == "ready" && v["instances"][0]["status"] == "serving"
    });
    wait_up(&mut sb, "other", 1);

    // stop PROG: one line, and a state of its own, without the dead process's status line.
    let out = expect(&mut sb, &["stop", "n"], 0);
    assert_eq!(out, "n: stopped\n");
    let (c, v) = status_json(&mut sb, &[]);
    assert_eq!(c, 0);
    let n = &v["instances"][0];
    assert_eq!(n["state"], "stopped", "{v:#}");
    assert!(n["pid"].is_null() && n["status"].is_null(), "{v:#}");
    let table = expect(&mut sb, &["status"], 0);
    let row = table_row(&table, "n", 0);
    assert_eq!(
        (row["STATE"].as_str(), row["STATUS"].as_str()),
        ("stopped", "-"),
        "{table}"
    );
    // Not up: 150, like any instance that is down.
    expect(&mut sb, &["status", "n"], 150);
    expect(&mut sb, &["status", "other"], 0);

    // start PROG: as before, and says so once the instance is up.
    let out = expect(&mut sb, &["start", "n"], 0);
    assert_eq!(out, "n: started\n");
    let (c, v) = status_json(&mut sb, &["n"]);
    assert_eq!(c, 0, "start returned before n was up: {v:#}");
    sb.track(v["instances"][0]["pid"].as_i64().unwrap() as i32);

    assert_eq!(expect(&mut sb, &["restart", "n"], 0), "n: restarted\n");
    let (_, v) = status_json(&mut sb, &["n"]);
    sb.track(v["instances"][0]["pid"].as_i64().unwrap() as i32);
    assert_eq!(
        expect(&mut sb, &["scale", "n", "2"], 0),
        "n: scaled to 2 instances\n"
    );
    assert_eq!(
        expect(&mut sb, &["scale", "n", "1"], 0),
        "n: scaled to 1 instance\n"
    );
    assert_eq!(expect(&mut sb, &["reopen-logs"], 0), "log files reopened\n");

    // Refusals print nothing on stdout, their reason on stderr, and the log says why.
    let out = sb.run(&["scale", "n", "20000"]);
    assert_eq!(exit_code(&out), Some(2), "{}", stderr_of(&out));
    assert!(stdout_of(&out).is_empty(), "{}", stdout_of(&out));
    let out = sb.run(&["start", "nosuch"]);
    assert_eq!(exit_code(&out), Some(5), "{}", stderr_of(&out));
    assert!(stdout_of(&out).is_empty(), "{}", stdout_of(&out));
    let text = log(&sb);
    let refused = |what: &str, why: &str| {
        text.lines().any(|l| {
            l.contains(&format!("control: {what} by uid"))
                && l.contains(" failed: ")
                && l.contains(why)
        })
    };
    assert!(
        refused("scale n 20000", "10000"),
        "no reason logged:\n{text}"
    );
    assert!(
        refused("start nosuch", "no program named \"nosuch\""),
        "no reason logged:\n{text}"
    );
    stop(&mut sb);
}

#[test]
fn start_and_restart_of_a_program_wait_for_timed_readiness_and_take_bare_seconds() {
    let test = this_test!();
    let tables =
        "[program.t]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = 2\nready = \"1s\"\n";
    let mut sb = test.supervisor_sandbox("", tables);
    sb.start();
    wait_status(&mut sb, "t ready", |v| {
        of(v, "t").iter().filter(|i| i.state == "ready").count() == 2
    });
    expect(&mut sb, &["stop", "t"], 0);

    // Bare seconds, as in warden.toml. The instances become ready on a timer, not on I/O:
    // `start` must see that when it happens (about 1 s), not at some later wake-up.
    let began = Instant::now();
    let out = expect(&mut sb, &["start", "--timeout", "15", "t"], 0);
    let took = began.elapsed();
    assert_eq!(out, "t: started\n");
    println!("start t (ready = 1s): {took:.2?}");
    assert!(took < Duration::from_secs(5), "start t took {took:?}");
    let (c, v) = status_json(&mut sb, &["t"]);
    assert_eq!(c, 0, "{v:#}");
    assert!(of(&v, "t").iter().all(|i| i.state == "ready"), "{v:#}");
    for p in pids(&of(&v, "t")) {
        sb.track(p);
    }

    // A rolling restart of 2 waits for each replacement's readiness in turn: about 2 s.
    let began = Instant::now();
    let out = expect(&mut sb, &["restart", "--timeout", "1m 30s", "t"], 0);
    let took = began.elapsed();
    assert_eq!(out, "t: restarted\n");
    println!("restart t (2 instances, ready = 1s): {took:.2?}");
    assert!(took < Duration::from_secs(8), "restart t took {took:?}");
    let (_, v) = status_json(&mut sb, &["t"]);
    for p in pids(&of(&v, "t")) {
        sb.track(p);
    }

    // Not a duration: a usage error naming the value.
    let out = sb.run(&["start", "--timeout", "5 parsecs", "t"]);
    assert_eq!(exit_code(&out), Some(2));
    assert!(
        stderr_of(&out).contains("invalid duration \"5 parsecs\""),
        "{}",
        stderr_of(&out)
    );
    stop(&mut sb);
}

/// `status --json` answers in JSON whatever happened to the daemon, with the exit status
/// `status` has without `--json`, and the message for humans on stderr.
#[test]
fn status_json_without_a_daemon_is_json_with_the_same_exit_status() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("s", 1, 1000));
    let config = path_str(&sb.config);
    let daemon = |v: &Value| {
        (
            v["daemon"]["running"].clone(),
            v["daemon"]["state"].as_str().unwrap_or("?").to_string(),
        )
    };

    // Never started: 3.
    let out = sb.run(&["status", "--json"]);
    assert_eq!(exit_code(&out), Some(3), "{}", stderr_of(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        daemon(&v),
        (Value::Bool(false), "not running".into()),
        "{v:#}"
    );
    assert!(v["daemon"]["pid"].is_null(), "{v:#}");
    assert_eq!(v["daemon"]["config"], config.as_str(), "{v:#}");
    assert_eq!(v["instances"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["programs"], serde_json::json!([]), "{v:#}");
    assert_stderr_has(&out, "not running");
    // Without --json: as before, the text on stdout.
    let out = sb.run(&["status"]);
    assert_eq!(exit_code(&out), Some(3));
    assert_eq!(stdout_of(&out), "warden is not running\n");
    // With program names too.
    let out = sb.run(&["status", "--json", "s"]);
    assert_eq!(exit_code(&out), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(daemon(&v).1, "not running");

    // Running: the same two fields, from the daemon.
    let warden = sb.start();
    wait_up(&mut sb, "s", 1);
    let (c, v) = status_json(&mut sb, &[]);
    assert_eq!(c, 0);
    assert_eq!(daemon(&v), (Value::Bool(true), "running".into()), "{v:#}");
    assert_eq!(v["daemon"]["pid"].as_i64(), Some(warden.into()));

    // Killed, its pidfile left behind: 1, "dead", and the pid the pidfile names.
    signal(warden, Signal::SIGKILL);
    assert!(wait_until(TIMEOUT, || !alive(warden)));
    let out = sb.run(&["status", "--json"]);
    assert_eq!(exit_code(&out), Some(1), "{}", stderr_of(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(daemon(&v), (Value::Bool(false), "dead".into()), "{v:#}");
    assert_eq!(v["daemon"]["pid"].as_i64(), Some(warden.into()), "{v:#}");
    assert_stderr_has(&out, "pidfile");
    assert_no_process(&sb);

    // Unknown: no configuration file to find the daemon by: 4, `running` null.
    let mut cmd = sb.warden(&["status", "--json"]);
    cmd.arg("-c").arg(sb.path("missing.toml"));
    let out = sb.output(cmd);
    assert_eq!(exit_code(&out), Some(4), "{}", stderr_of(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(daemon(&v), (Value::Null, "unknown".into()), "{v:#}");
    assert_stderr_has(&out, "missing.toml");
}

/// `reload -c OTHER` would re-read the daemon's own file while looking applied: refused (2),
/// naming both; the same file by a relative path or through a symlink is the same file.
#[test]
fn reload_naming_another_file_than_the_daemons_is_refused() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("a", 1, 1000));
    let warden = sb.start();
    let a = wait_up(&mut sb, "a", 1);
    // Another file that shares the daemon's pidfile and socket, with one program more.
    let other = sb.path("other.toml");
    let text = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(
        &other,
        format!(
            "{text}{}",
            sleeper("b", 1, 1000).replace("SANDBOX", &path_str(&sb.dir))
        ),
    )
    .unwrap();
    for dry in [false, true] {
        let mut args = vec!["reload"];
        if dry {
            args.push("--dry-run");
        }
        let mut cmd = sb.warden(&args);
        cmd.arg("-c").arg(&other);
        let out = sb.output(cmd);
        assert_eq!(exit_code(&out), Some(2), "{args:?}: {}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(
            err.contains(&path_str(&sb.config)) && err.contains(&path_str(&other)),
            "both files named: {err}"
        );
        assert!(stdout_of(&out).is_empty(), "{}", stdout_of(&out));
    }
    let (_, v) = status_json(&mut sb, &[]);
    assert!(of(&v, "b").is_empty(), "b was added: {v:#}");
    assert_eq!(of(&v, "a"), a);

    // The daemon's own file, by a relative path and through a symlink: applied.
    std::fs::write(&sb.config, std::fs::read(&other).unwrap()).unwrap();
    let mut cmd = sb.warden(&["reload", "--dry-run"]);
    cmd.arg("-c").arg("./warden.toml").current_dir(&sb.dir);
    let out = sb.output(cmd);
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("would add b"),
        "{}",
        stdout_of(&out)
    );
    std::os::unix::fs::symlink(&sb.config, sb.path("link.toml")).unwrap();
    let mut cmd = sb.warden(&["reload"]);
    cmd.arg("-c").arg(sb.path("link.toml"));
    let out = sb.output(cmd);
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("added b"), "{}", stdout_of(&out));
    let b = wait_up(&mut sb, "b", 1);
    wait_children(&sb, warden, &pids(&a).into_iter().chain(pids(&b)).collect());
    stop(&mut sb);
}

/// A control socket whose holder takes a connection and drops it unanswered (what a copy of a
/// killed warden does — a worker forked but not yet exec'd — for an instant) does not make
/// `status` answer "unknown" nor `stop` fail: the pidfile decides, and says "not running".
#[test]
fn a_socket_that_drops_connections_unanswered_defers_to_the_pidfile() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 1, 1000));
    let sock = sb.path("warden.sock");
    let script = format!(
        "import socket,os\ns=socket.socket(socket.AF_UNIX)\ns.bind({:?})\ns.listen(8)\n\
         open({:?},'w').close()\nwhile True:\n    c,_=s.accept()\n    c.close()\n",
        path_str(&sock),
        path_str(&sb.path("listening"))
    );
    let mut cmd = std::process::Command::new(python());
    cmd.args(["-c", &script]).stdin(Stdio::null());
    sb.spawn(cmd);
    assert!(wait_until(TIMEOUT, || sb.path("listening").exists()));
    let out = sb.run(&["status"]);
    assert_exit(&out, 3);
    let out = sb.run(&["status", "--json"]);
    assert_exit(&out, 3);
    let out = sb.run(&["stop", "--timeout", "5s"]);
    assert_exit(&out, 0);
    assert!(
        stdout_of(&out).contains("not running"),
        "{}",
        stdout_of(&out)
    );
}

/// A daemon that is stopped (SIGSTOP) with its listener's backlog full: `connect(2)` would wait
/// for ever, and every `--timeout` must still bound the whole command. `reload --timeout 2s`
/// gives up with an error that says so (not "not running"), `status` answers "unknown" (4).
#[test]
fn a_stopped_daemon_with_a_full_backlog_cannot_hang_a_command() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", &sleeper("w", 1, 1000));
    let warden = sb.start();
    wait_up(&mut sb, "w", 1);
    signal(warden, Signal::SIGSTOP);
    let script = format!(
        "import socket,resource,time\n\
         h=resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n\
         resource.setrlimit(resource.RLIMIT_NOFILE,(h,h))\n\
         conns=[]\n\
         while True:\n\
         \x20   s=socket.socket(socket.AF_UNIX)\n\
         \x20   s.setblocking(False)\n\
         \x20   try:\n\
         \x20       s.connect({sock:?})\n\
         \x20   except BlockingIOError:\n\
         \x20       break\n\
         \x20   conns.append(s)\n\
         open({flag:?},'w').write(str(len(conns)))\n\
         time.sleep(1000)\n",
        sock = path_str(&sb.path("warden.sock")),
        flag = path_str(&sb.path("full")),
    );
    let mut cmd = std::process::Command::new(python());
    cmd.args(["-c", &script]).stdin(Stdio::null());
    let filler = sb.spawn(cmd);
    let filled = wait_until(TIMEOUT, || sb.path("full").exists());
    if !filled {
        signal(warden, Signal::SIGCONT);
        panic!("the backlog was never filled");
    }
    println!("backlog full after {} connections", sb.read("full"));
    let reload = sb.run(&["reload", "--timeout", "2s"]);
    let status = sb.run(&["status"]);
    signal(warden, Signal::SIGCONT);
    signal(filler, Signal::SIGKILL);
    assert_eq!(exit_code(&reload), Some(1), "{}", stderr_of(&reload));
    assert_stderr_has(&reload, "accepts no connection");
    assert_exit(&status, 4);
    stop(&mut sb);
}

/// A reload says what it cannot apply: a change of `[daemon] exit_on_fatal` (a note, as for
/// every other daemon key), and the limits of the programs it adds or changes that cannot be
/// applied (a warning each, as `warden start` gives; here cgroups are off, so none can), not
/// those of a program it leaves alone.
#[test]
fn reload_notes_a_changed_exit_on_fatal_and_warns_of_limits_it_cannot_apply() {
    let test = this_test!();
    let sleeper = |name: &str, extra: &str| {
        format!("[program.{name}]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n{extra}")
    };
    let old = format!(
        "{}{}",
        sleeper("s", ""),
        sleeper("u", "memory_max = \"64M\"\n")
    );
    let mut sb = test.supervisor_sandbox("cgroups = \"off\"", &old);
    sb.start();
    wait_up(&mut sb, "s", 1);
    wait_up(&mut sb, "u", 1);
    let new = format!(
        "{}{}{}",
        sleeper("s", "pids_max = 5\n"),
        sleeper("u", "memory_max = \"64M\"\n"),
        sleeper("t", "cpu_max = \"20%\"\n")
    );
    sb.write_programs("cgroups = \"off\"\nexit_on_fatal = true", &new);
    for args in [&["reload", "--dry-run"][..], &["reload"]] {
        let out = sb.run(args);
        assert_exit(&out, 0);
        let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
        assert_has_line(
            &stdout,
            "note: daemon.exit_on_fatal changed: takes effect when warden restarts",
        );
        for (name, key) in [("s", "pids_max"), ("t", "cpu_max")] {
            let want =
                format!("warning: {name}: {key} cannot be applied: warden runs without cgroups");
            assert!(
                stderr.lines().any(|l| l.starts_with(&want)),
                "{args:?}: no {want:?}:\n{stderr}"
            );
        }
        assert!(!stderr.contains("warning: u:"), "{args:?}: {stderr}");
    }
    assert_exit(&sb.run(&["stop"]), 0);
}

/// `warden stop p` still waiting (p ignores SIGTERM) when another client starts p again: the
/// stop is answered at once that p was started again (status 1), not at the end of its timeout.
#[test]
fn a_stop_superseded_by_a_start_is_answered_at_once() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.p]\ncommand = [\"/bin/sh\", \"-c\", \"trap '' TERM; exec SANDBOX/sleep 100\"]\n\
         stop_timeout = \"1h\"\n",
    );
    sb.start();
    let old = pids(&wait_up(&mut sb, "p", 1))[0];
    let client = |sb: &mut Sandbox, args: &[&str], out: &str| {
        let mut cmd = sb.warden(args);
        cmd.stdout(std::fs::File::create(sb.path(&format!("{out}.out"))).unwrap())
            .stderr(std::fs::File::create(sb.path(&format!("{out}.err"))).unwrap());
        sb.spawn(cmd)
    };
    let stopper = client(&mut sb, &["stop", "--timeout", "1h", "p"], "stop");
    wait_status(&mut sb, "p stopping", |v| {
        v["instances"][0]["state"] == "stopping"
    });
    // The start waits for the old process to be gone before it starts a new one.
    let starter = client(&mut sb, &["start", "--timeout", "1h", "p"], "start");
    let status = sb
        .wait_child(stopper, TIMEOUT)
        .expect("the stop is answered before its timeout");
    assert_eq!(status.code(), Some(1), "{}", sb.read("stop.err"));
    assert_has_line(
        &sb.read("stop.err"),
        "warden: p was started again by another request",
    );
    // Its process ignores SIGTERM and stop_timeout is an hour: end it, and the start goes on.
    signal(old, Signal::SIGKILL);
    let status = sb
        .wait_child(starter, TIMEOUT)
        .expect("the start is answered");
    assert_eq!(status.code(), Some(0), "{}", sb.read("start.err"));
    let v = wait_status(&mut sb, "p up again", |v| {
        v["instances"][0]["state"] == "running"
    });
    assert_ne!(v["instances"][0]["pid"], old);
    for pid in pids(&of(&v, "p")) {
        signal(pid, Signal::SIGKILL);
    }
    let _ = sb.run(&["stop", "--timeout", "1s", "p"]);
}

/// The pidfile moved in the file since the daemon started (the control socket follows it): no
/// command may take the daemon for gone. `start` and `restart` do not start a second one beside
/// it, `status` and `stop` name it, by its pid.
#[test]
fn a_daemon_whose_pidfile_moved_in_its_file_is_named_and_never_started_twice() {
    let test = this_test!();
    let programs = "[program.w]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n";
    let mut sb = test.supervisor_sandbox("", programs);
    let warden = sb.start();
    std::fs::create_dir(sb.path("other")).unwrap();
    sb.write_programs("pidfile = \"SANDBOX/other/w.pid\"", programs);
    let named = format!("warden (pid {warden}) runs");
    let said = |o: &std::process::Output| stderr_of(o) + &stdout_of(o);
    for verb in ["start", "restart", "stop"] {
        let out = sb.run(&[verb]);
        assert_exit(&out, 1);
        assert!(said(&out).contains(&named), "{verb}: {}", said(&out));
    }
    let out = sb.run(&["status"]);
    assert_exit(&out, 4);
    assert!(said(&out).contains(&named), "status: {}", said(&out));
    let wardens: Vec<i32> = sb
        .processes()
        .into_iter()
        .filter(|&p| cmdline(p).iter().any(|a| a == "start"))
        .collect();
    assert_eq!(wardens, vec![warden], "a second daemon");
    // Back as it was: found again, and stopped.
    sb.write_programs("", programs);
    expect(&mut sb, &["stop"], 0);
}

/// The control socket moved in the file since the daemon started: commands that need it say
/// that warden runs but does not answer there, not "not running".
#[test]
fn a_control_socket_moved_in_the_file_is_said_not_taken_for_a_stopped_daemon() {
    let test = this_test!();
    let programs = "[program.w]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n";
    let mut sb = test.supervisor_sandbox("", programs);
    let warden = sb.start();
    sb.write_programs("control_socket = \"SANDBOX/moved.sock\"", programs);
    for verb in [&["reload"][..], &["upgrade"], &["scale", "w", "2"]] {
        let out = sb.run(verb);
        assert_exit(&out, 1);
        assert_stderr_has(
            &out,
            &format!("warden runs (pid {warden}) but does not answer on"),
        );
        assert_stderr_has(&out, "was control_socket changed since it started?");
    }
    sb.write_programs("", programs);
    expect(&mut sb, &["stop"], 0);
}
