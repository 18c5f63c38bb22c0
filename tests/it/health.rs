//! Health checks (`[program.NAME.health]`) against real processes: a hung HTTP server restarted
//! by its liveness check in time; HTTP 500 failing, 200 and 302 passing, over TCP and Unix
//! sockets; TCP refused (restart, or stop under `restart = "never"`); an exec check that hangs
//! killed with its whole process group, and one that finishes running as its program runs and
//! leaving nothing behind; `start_period`; which instances are checked; `ready = "health"`
//! gating a 3-level stack and bounded by `start_timeout`; reload of a changed check; the
//! configuration errors; and the worked example stack in `examples/stack/`.
//!
//! The servers are `tests/fixtures/httpd.rs`, linked into the sandbox as `SANDBOX/httpd` so that
//! its command line names the sandbox (the sandbox kills it at drop, also on failure). With
//! `--stamp FILE` it appends `NANOS EVENT PID` lines (`start`, `listening`, `answer 200`, `hang`):
//! orders and delays are checked on those timestamps, written by the servers themselves. Exec
//! checks run `SANDBOX/sleep` for the same reason. Waits are bounded polls.
//!
//! The status table is read by column: a cell is the text under its header's title
//! ([`cell`]), since `HEALTH` cells (`failing 1/3: HTTP 500`) hold spaces.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A sandbox with `SANDBOX/sleep` and `SANDBOX/httpd` (the fixture) and the program `tables`
/// (`SANDBOX` and `PYTHON` replaced, as in [`Test::supervisor_sandbox`]).
fn health_sandbox(test: &Test, tables: &str) -> Sandbox {
    let sb = test.supervisor_sandbox("", "");
    std::os::unix::fs::symlink(example("httpd"), sb.path("httpd")).unwrap();
    sb.write_programs("", tables);
    sb
}

/// A TCP port nobody listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `command` of a program running the fixture with `args`, stamping into `SANDBOX/NAME.st`.
fn httpd(name: &str, args: &str) -> String {
    format!("command = \"SANDBOX/httpd --stamp SANDBOX/{name}.st {args}\"")
}

/// One line a fixture server stamped.
#[derive(Debug, Clone)]
struct Stamp {
    /// Seconds since the Unix epoch.
    t: f64,
    what: String,
    pid: i32,
}

/// Every stamp in `SANDBOX/NAME.st`, in order.
fn stamps(sb: &Sandbox, name: &str) -> Vec<Stamp> {
    sb.read(&format!("{name}.st"))
        .lines()
        .filter_map(|l| {
            let (t, rest) = l.split_once(' ')?;
            let (what, pid) = rest.rsplit_once(' ')?;
            Some(Stamp {
                t: t.parse::<f64>().ok()? / 1e9,
                what: what.to_string(),
                pid: pid.parse().ok()?,
            })
        })
        .collect()
}

/// The stamps `what` of `name`.
fn stamped(sb: &Sandbox, name: &str, what: &str) -> Vec<Stamp> {
    stamps(sb, name)
        .into_iter()
        .filter(|s| s.what == what)
        .collect()
}

/// Waits (bounded) until `name` stamped `what` `n` times; returns those stamps.
fn wait_stamps(sb: &Sandbox, name: &str, what: &str, n: usize) -> Vec<Stamp> {
    let ok = wait_until(TIMEOUT, || stamped(sb, name, what).len() >= n);
    assert!(
        ok,
        "not {n} {what:?} of {name}: {:#?}\nlog:\n{}",
        stamps(sb, name),
        log(sb)
    );
    stamped(sb, name, what)
}

/// The JSON of instance `index` of `program` (null when absent).
fn inst(v: &Value, program: &str, index: u64) -> Value {
    v["instances"]
        .as_array()
        .and_then(|is| {
            is.iter()
                .find(|i| i["program"] == program && i["index"] == index)
                .cloned()
        })
        .unwrap_or(Value::Null)
}

/// The cell of column `title` in the status table's row of `program`'s instance `index`: the
/// text under the title, up to the next column's title.
fn cell(text: &str, program: &str, index: usize, title: &str) -> Option<String> {
    let header = text.lines().find(|l| l.starts_with("PROGRAM"))?;
    let start = header.find(title)?;
    let end = header[start + title.len()..]
        .find(|c: char| c != ' ')
        .map(|i| start + title.len() + i);
    let row = text.lines().find(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(program) && w.next() == Some(&index.to_string())
    })?;
    let chars: Vec<char> = row.chars().collect();
    let end = end.unwrap_or(chars.len()).min(chars.len());
    Some(
        chars
            .get(start..end)?
            .iter()
            .collect::<String>()
            .trim()
            .to_string(),
    )
}

/// The error of an HTTP check that timed out after `after` (`500ms`, `1s`) waiting for the
/// response.
fn timed_out(after: &str) -> String {
    format!("timed out after {after} waiting for a response")
}

/// The error of an exec check that outlived its timeout `after` (its group is killed).
fn exec_timed_out(after: &str) -> String {
    format!("timed out after {after}; process group killed")
}

/// The start of the error of an exec check whose program `path` cannot be executed (the spec's
/// `cannot execute X: ...`, as a program's own exec failure is reported).
fn cannot_execute(path: &str) -> String {
    format!("cannot execute {path}: ")
}

/// Whether `health` is `failing N/R: ERROR` with 1 <= N <= R.
fn is_failing(health: Option<String>, retries: u32, error: &str) -> bool {
    health.is_some_and(|h| {
        h.strip_prefix("failing ")
            .and_then(|rest| rest.split_once(": "))
            .is_some_and(|(count, err)| {
                err == error
                    && count.split_once('/').is_some_and(|(n, r)| {
                        n.parse::<u32>().is_ok_and(|n| n >= 1 && n <= retries)
                            && r == retries.to_string()
                    })
            })
    })
}

/// `warden run` (in the foreground, its output dropped: the log is `warden.log`), for a test
/// whose programs never become ready, which `warden start` would wait for.
fn foreground(sb: &Sandbox) -> std::process::Command {
    let mut run = sb.warden(&["run"]);
    run.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    run
}

/// Every live process in process group `pgrp`.
fn group_members(pgrp: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| alive(p) && stat(p).is_some_and(|s| s.pgrp == pgrp))
        .collect()
}

/// The pids a check wrote to `SANDBOX/NAME`, one a line.
fn pids_in(sb: &Sandbox, name: &str) -> Vec<i32> {
    sb.read(name)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Liveness: a hung HTTP server is restarted within interval × retries + timeout.

#[test]
fn a_hung_http_server_is_restarted_by_its_liveness_check_within_interval_times_retries_plus_timeout()
 {
    let test = this_test!();
    let port = free_port();
    // It answers two checks, then accepts connections and never answers.
    let tables = format!(
        "[program.web]\n{}\n\
         [program.web.health]\nhttp = \"http://127.0.0.1:{port}/healthz\"\n\
         interval = \"1s\"\ntimeout = \"500ms\"\nretries = 3\n",
        httpd(
            "web",
            &format!("--listen 127.0.0.1:{port} --mode hang-after --after 2")
        ),
    );
    let (interval, timeout, retries) = (1.0, 0.5, 3.0);
    let mut sb = health_sandbox(&test, &tables);
    sb.start();
    // It passes first…
    wait_status(&mut sb, "web passing", |text, v| {
        cell(text, "web", 0, "HEALTH").as_deref() == Some("passing")
            && inst(v, "web", 0)["health"]["state"] == "passing"
    });
    // …then hangs, and is restarted: a second process starts.
    let starts = wait_stamps(&sb, "web", "start", 2);
    let hung = stamped(&sb, "web", "hang");
    let first_hang = hung.first().expect("a hang before the restart").t;
    assert_ne!(starts[0].pid, starts[1].pid);
    let took = starts[1].t - first_hang;
    println!("[timing] first hung check → restarted web started: {took:.2}s");
    // Not before the third check could have failed (two intervals after the first hung one,
    // plus its timeout), and within interval × retries + timeout, plus 2.5 s for a loaded box.
    assert!(
        took >= 2.0 * interval,
        "restarted after {took:.2}s: fewer than {retries} failures\n{:#?}\nlog:\n{}",
        stamps(&sb, "web"),
        log(&sb)
    );
    let bound = interval * retries + timeout + 2.5;
    assert!(
        took <= bound,
        "restarted {took:.2}s after the first hung check, bound {bound}s\nlog:\n{}",
        log(&sb)
    );
    // The log says why; the table and the JSON record `health` as the last exit.
    let (text, v) = wait_status(&mut sb, "web's last exit health", |text, v| {
        cell(text, "web", 0, "LAST EXIT").as_deref() == Some("health")
            && inst(v, "web", 0)["last_exit"]["reason"] == "health"
    });
    let web = inst(&v, "web", 0);
    assert!(web["restarts"].as_u64() >= Some(1), "{web:#}");
    // Beside the way it actually ended (SIGTERM, the stop signal).
    let exit = &web["last_exit"];
    assert!(
        exit.get("signal").is_some() || exit.get("code").is_some(),
        "{exit:#}"
    );
    assert_eq!(
        cell(&text, "web", 0, "RESTARTS").as_deref(),
        Some("1"),
        "{text}"
    );
    let log = log(&sb);
    let line = log
        .lines()
        .find(|l| l.contains("web[0]: health check failed 3 times ("))
        .unwrap_or_else(|| panic!("no health line in the log:\n{log}"));
    assert!(
        line.ends_with(&format!("({}); restarting", timed_out("500ms"))),
        "{line}"
    );
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// HTTP: 500 fails, 200 and 302 pass, over TCP and over a Unix socket; a program without a check
// shows `-` and `null`.

#[test]
fn an_http_check_fails_on_500_and_passes_on_200_and_302_over_tcp_and_unix_sockets() {
    let test = this_test!();
    let (bad, good, moved) = (free_port(), free_port(), free_port());
    let check = "interval = \"1s\"\ntimeout = \"1s\"\nretries = 3\n";
    let tables = format!(
        "[program.bad]\n{}\n[program.bad.health]\nhttp = \"http://127.0.0.1:{bad}/\"\n{check}\n\
         [program.good]\n{}\n[program.good.health]\nhttp = \"http://127.0.0.1:{good}/healthz\"\n{check}\n\
         [program.sock]\n{}\n[program.sock.health]\nhttp = \"http+unix://SANDBOX/sock.sock:/healthz\"\n{check}\n\
         [program.pct]\n{}\n[program.pct.health]\nhttp = \"http+unix://PCT/healthz\"\n{check}\n\
         [program.moved]\n{}\n[program.moved.health]\nhttp = \"http://127.0.0.1:{moved}/\"\n{check}\n\
         [program.plain]\ncommand = \"SANDBOX/sleep 1000\"\n",
        httpd("bad", &format!("--listen 127.0.0.1:{bad} --mode 500")),
        httpd("good", &format!("--listen 127.0.0.1:{good}")),
        httpd("sock", "--unix SANDBOX/sock.sock"),
        httpd("pct", "--unix SANDBOX/pct.sock"),
        httpd("moved", &format!("--listen 127.0.0.1:{moved} --mode 302")),
    );
    let mut sb = health_sandbox(&test, "");
    // The percent-encoded spelling of the socket path (`requests-unixsocket`'s).
    let pct = path_str(&sb.path("pct.sock")).replace('/', "%2F");
    sb.write_programs("", &tables.replace("PCT", &pct));
    sb.start();
    let (text, v) = wait_status(&mut sb, "bad failing, the others passing", |text, v| {
        is_failing(cell(text, "bad", 0, "HEALTH"), 3, "HTTP 500")
            && ["good", "sock", "pct", "moved"]
                .iter()
                .all(|p| cell(text, p, 0, "HEALTH").as_deref() == Some("passing"))
            && inst(v, "bad", 0)["health"]["state"] == "failing"
            && ["good", "sock", "pct", "moved"]
                .iter()
                .all(|p| inst(v, p, 0)["health"]["state"] == "passing")
    });
    let bad = &inst(&v, "bad", 0)["health"];
    assert_eq!(bad["last_error"], "HTTP 500", "{v:#}");
    assert_eq!(bad["retries"], 3, "{v:#}");
    assert!(
        (1..=3).contains(&bad["failures"].as_u64().unwrap_or(0)),
        "{v:#}"
    );
    for p in ["good", "sock", "pct", "moved"] {
        assert_eq!(
            inst(&v, p, 0)["health"],
            serde_json::json!({"state": "passing", "failures": 0, "retries": 3, "last_error": null}),
            "{p}: {v:#}"
        );
        assert!(
            stamps(&sb, p).iter().any(|s| s.what.starts_with("answer ")),
            "{p} was never asked"
        );
    }
    // No check: `-` in the table, null in the JSON.
    assert_eq!(
        cell(&text, "plain", 0, "HEALTH").as_deref(),
        Some("-"),
        "{text}"
    );
    assert!(inst(&v, "plain", 0)["health"].is_null(), "{v:#}");
    // The column sits right after STATE.
    let header = text.lines().find(|l| l.starts_with("PROGRAM")).unwrap();
    let titles: Vec<&str> = header.split_whitespace().collect();
    let state = titles.iter().position(|t| *t == "STATE").unwrap();
    assert_eq!(titles.get(state + 1), Some(&"HEALTH"), "{header}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

#[test]
fn the_health_column_is_left_out_when_no_program_has_a_check() {
    let test = this_test!();
    let mut sb = health_sandbox(&test, "[program.plain]\ncommand = \"SANDBOX/sleep 1000\"\n");
    sb.start();
    let (text, v) = wait_status(&mut sb, "plain running", |_, v| {
        inst(v, "plain", 0)["state"] == "running"
    });
    assert!(!text.contains("HEALTH"), "{text}");
    assert!(inst(&v, "plain", 0)["health"].is_null(), "{v:#}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// TCP: refused fails with the errno's name and restarts (or stops, under restart = "never"); a
// listening port passes.

#[test]
fn a_refused_tcp_check_fails_with_econnrefused_and_restarts_or_stops_the_program() {
    let test = this_test!();
    let dead = free_port();
    // Held open by the test: the kernel completes connections on its backlog.
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let check = |port: u16| {
        format!("tcp = \"127.0.0.1:{port}\"\ninterval = \"300ms\"\ntimeout = \"1s\"\nretries = 3\n")
    };
    let tables = format!(
        "[program.refused]\ncommand = \"SANDBOX/sleep 1000\"\n[program.refused.health]\n{}\n\
         [program.never]\ncommand = \"SANDBOX/sleep 1001\"\nrestart = \"never\"\n[program.never.health]\n{}\n\
         [program.open]\ncommand = \"SANDBOX/sleep 1002\"\n[program.open.health]\n{}\n",
        check(dead),
        check(dead),
        check(open_port),
    );
    let mut sb = health_sandbox(&test, &tables);
    sb.start();
    let (_, v) = wait_status(&mut sb, "refused failing", |text, v| {
        is_failing(
            cell(text, "refused", 0, "HEALTH"),
            3,
            "connect: ECONNREFUSED",
        ) && inst(v, "refused", 0)["health"]["last_error"] == "connect: ECONNREFUSED"
    });
    let first_pid = inst(&v, "refused", 0)["pid"].as_i64();
    assert!(first_pid.is_some(), "{v:#}");
    wait_status(&mut sb, "open passing", |text, v| {
        cell(text, "open", 0, "HEALTH").as_deref() == Some("passing")
            && inst(v, "open", 0)["health"]["state"] == "passing"
    });
    // Three failures: restarted (another pid), or stopped for good under restart = "never".
    // The table and the JSON are two requests: wait until both show it.
    let (text, v) = wait_status(&mut sb, "refused restarted, never stopped", |text, v| {
        inst(v, "refused", 0)["restarts"].as_u64() >= Some(1)
            && inst(v, "never", 0)["pid"].is_null()
            && inst(v, "never", 0)["last_exit"]["reason"] == "health"
            && cell(text, "never", 0, "LAST EXIT").as_deref() == Some("health")
    });
    let log = log(&sb);
    assert!(
        log.contains("refused[0]: health check failed 3 times (connect: ECONNREFUSED); restarting"),
        "{log}"
    );
    assert!(
        log.contains(
            "never[0]: health check failed 3 times (connect: ECONNREFUSED); stopping (restart = never)"
        ),
        "{log}"
    );
    assert_eq!(
        cell(&text, "never", 0, "LAST EXIT").as_deref(),
        Some("health"),
        "{text}"
    );
    // Not up, so not checked.
    assert_eq!(
        cell(&text, "never", 0, "HEALTH").as_deref(),
        Some("-"),
        "{text}"
    );
    assert_eq!(inst(&v, "open", 0)["restarts"], 0, "{v:#}");
    assert_ne!(inst(&v, "refused", 0)["pid"].as_i64(), first_pid, "{v:#}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// Exec: a check that hangs is killed with its whole process group when its timeout fires; one
// that finishes runs as the program does, reports its last line, and leaves nothing behind.

#[test]
fn an_exec_check_that_hangs_is_killed_with_its_whole_process_group_on_timeout() {
    let test = this_test!();
    // The shell and two sleeps in the background, each pid written down; then it waits.
    let check = "echo $$ >> SANDBOX/check.pids; \
                 SANDBOX/sleep 1000 & echo $! >> SANDBOX/check.pids; \
                 SANDBOX/sleep 1001 & echo $! >> SANDBOX/check.pids; wait";
    let tables = format!(
        "[program.w]\ncommand = \"SANDBOX/sleep 999\"\n[program.w.health]\n\
         exec = [\"/bin/sh\", \"-c\", {}]\ninterval = \"3s\"\ntimeout = \"1s\"\nretries = 5\n",
        toml_str(check)
    );
    let mut sb = health_sandbox(&test, &tables);
    let daemon = sb.start();
    assert!(
        wait_until(TIMEOUT, || pids_in(&sb, "check.pids").len() >= 3),
        "the check never ran: {:?}\nlog:\n{}",
        sb.read("check.pids"),
        log(&sb)
    );
    let seen = Instant::now();
    let pids = pids_in(&sb, "check.pids");
    let leader = pids[0];
    // A group of its own, led by the check's first process, not warden's.
    let warden_group = stat(daemon).expect("warden").pgrp;
    for &p in &pids[..3] {
        let s = stat(p).unwrap_or_else(|| panic!("{p} already gone: timeout too short?"));
        assert_eq!(s.pgrp, leader, "{p} is not in the check's group");
    }
    assert_ne!(leader, warden_group);
    // The timeout fires: the whole group goes, the background sleeps too.
    assert!(
        wait_until(TIMEOUT, || group_members(leader).is_empty()
            && pids[..3].iter().all(|&p| !alive(p))),
        "left of the check: {:?}\nlog:\n{}",
        group_members(leader),
        log(&sb)
    );
    let took = seen.elapsed();
    println!("[timing] exec check seen → its group gone: {took:.2?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    let (text, v) = wait_status(&mut sb, "w failing with a timeout", |text, v| {
        is_failing(cell(text, "w", 0, "HEALTH"), 5, &exec_timed_out("1s"))
            && inst(v, "w", 0)["health"]["last_error"] == exec_timed_out("1s").as_str()
    });
    assert_eq!(inst(&v, "w", 0)["restarts"], 0, "{v:#}\n{text}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

#[test]
fn an_exec_check_runs_as_its_program_reports_its_last_line_and_leaves_nothing_behind() {
    let test = this_test!();
    let check = "env > SANDBOX/check.env; pwd > SANDBOX/check.pwd; \
                 SANDBOX/sleep 1000 & echo $! > SANDBOX/left.pid; \
                 echo first line; echo not ready yet >&2; exit 1";
    let tables = format!(
        "[program.w]\ncommand = \"SANDBOX/sleep 999\"\ndirectory = \"SANDBOX/sub\"\n\
         env = {{ FROM_PROGRAM = \"yes\" }}\n\
         [program.w.health]\nexec = [\"/bin/sh\", \"-c\", {}]\ninterval = \"1s\"\nretries = 3\n\
         [program.nocheck]\ncommand = \"SANDBOX/sleep 998\"\n\
         [program.nocheck.health]\nexec = \"SANDBOX/no-such-check --flag\"\ninterval = \"1s\"\n",
        toml_str(check)
    );
    let mut sb = health_sandbox(&test, &tables);
    std::fs::create_dir(sb.path("sub")).unwrap();
    sb.start();
    let (_, v) = wait_status(&mut sb, "w failing with exit code 1", |text, v| {
        is_failing(
            cell(text, "w", 0, "HEALTH"),
            3,
            "exit code 1: not ready yet",
        ) && inst(v, "w", 0)["health"]["state"] == "failing"
    });
    assert_eq!(
        inst(&v, "w", 0)["health"]["last_error"],
        "exit code 1: not ready yet",
        "{v:#}"
    );
    // A check that cannot run says why.
    let missing = cannot_execute(&path_str(&sb.path("no-such-check")));
    wait_status(&mut sb, "nocheck failing", |text, v| {
        cell(text, "nocheck", 0, "HEALTH")
            .is_some_and(|h| h.starts_with("failing 1/3: ") && h.contains(&missing))
            && inst(v, "nocheck", 0)["health"]["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with(&missing))
    });
    // The program's environment and directory, plus who it checks.
    let env = sb.read("check.env");
    for line in ["FROM_PROGRAM=yes", "WARDEN_PROGRAM=w", "WARDEN_INSTANCE=0"] {
        assert_has_line(&env, line);
    }
    assert_eq!(sb.read("check.pwd").trim(), path_str(&sb.path("sub")));
    // What it left in its group is killed once it has finished.
    let left: i32 = sb.read("left.pid").trim().parse().expect("left.pid");
    assert!(
        wait_until(Duration::from_secs(5), || !alive(left)),
        "the check's background sleep {left} outlived it"
    );
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// start_period: failures inside it are ignored.

#[test]
fn failures_inside_the_start_period_are_ignored_and_counted_after_it() {
    let test = this_test!();
    let dead = free_port();
    let tables = format!(
        "[program.slow]\ncommand = [\"/bin/sh\", \"-c\", \
         \"date +%s%N >> SANDBOX/slow.starts; exec SANDBOX/sleep 1000\"]\n\
         [program.slow.health]\ntcp = \"127.0.0.1:{dead}\"\nstart_period = \"3s\"\n\
         interval = \"500ms\"\ntimeout = \"500ms\"\nretries = 1\n"
    );
    let mut sb = health_sandbox(&test, &tables);
    sb.start();
    let starts = |sb: &Sandbox| -> Vec<f64> {
        sb.read("slow.starts")
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok().map(|n| n / 1e9))
            .collect()
    };
    assert!(
        wait_until(TIMEOUT, || !starts(&sb).is_empty()),
        "slow never started"
    );
    let spawned = starts(&sb)[0];
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // Well inside the start period (up to 2.3 s after the spawn, by the program's own clock):
    // `starting`, no restart, whatever the ramped checks found.
    let mut polls = 0;
    while now() < spawned + 2.3 {
        let text = stdout_of(&sb.run(&["status"]));
        let v = status_json(&mut sb);
        let i = inst(&v, "slow", 0);
        assert_eq!(
            i["restarts"],
            0,
            "restarted inside start_period: {i:#}\n{}",
            log(&sb)
        );
        assert_eq!(i["health"]["state"], "starting", "{i:#}");
        assert_eq!(
            cell(&text, "slow", 0, "HEALTH").as_deref(),
            Some("starting"),
            "{text}"
        );
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(polls >= 5);
    assert_eq!(starts(&sb).len(), 1, "{:?}", starts(&sb));
    // After it, one failure (retries = 1) restarts it.
    assert!(
        wait_until(TIMEOUT, || starts(&sb).len() >= 2),
        "never restarted; log:\n{}",
        log(&sb)
    );
    let s = starts(&sb);
    let after = s[1] - s[0];
    println!("[timing] spawn → restart after the start period: {after:.2}s");
    assert!(
        after >= 3.0,
        "restarted {after:.2}s after its spawn, inside start_period"
    );
    // The first regular check within one interval of the period's end, its timeout, + 2 s.
    assert!(
        after <= 3.0 + 0.5 + 0.5 + 2.0,
        "restarted only after {after:.2}s"
    );
    assert!(
        log(&sb).contains("slow[0]: health check failed 1 times (connect: ECONNREFUSED)")
            || log(&sb).contains("slow[0]: health check failed 1 time (connect: ECONNREFUSED)"),
        "{}",
        log(&sb)
    );
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// ready = "health": a 3-level stack db → api → web starts in order, never a dependent before its
// dependency is ready.

#[test]
fn a_stack_with_notify_and_health_readiness_starts_each_level_only_once_the_one_below_is_ready() {
    let test = this_test!();
    let (api, web) = (free_port(), free_port());
    // db: ready by READY=1, 0.5 s after it starts. api: listens 1 s after it starts, ready at its
    // first passing check (the start period lets it refuse until then). web: after api.
    let tables = format!(
        "[program.web]\n{}\nrequires = [\"api\"]\n\
         [program.web.health]\ntcp = \"127.0.0.1:{web}\"\ninterval = \"1s\"\n\n\
         [program.api]\n{}\nready = \"health\"\nafter = [\"db\"]\nstart_timeout = \"15s\"\n\
         [program.api.health]\nhttp = \"http://127.0.0.1:{api}/healthz\"\n\
         interval = \"5s\"\nstart_period = \"10s\"\n\n\
         [program.db]\n{}\nready = \"notify\"\n",
        httpd("web", &format!("--listen 127.0.0.1:{web}")),
        httpd("api", &format!("--listen 127.0.0.1:{api} --delay 1")),
        httpd("db", "--unix SANDBOX/db.sock --notify --delay 0.5"),
    );
    let mut sb = health_sandbox(&test, &tables);
    let check = expect(&mut sb, &["check"], 0);
    assert!(check.contains("start order: db -> api -> web"), "{check}");
    sb.start();
    // While api starts: `starting`, its check `starting`, web waiting for it.
    let (text, _) = wait_status(&mut sb, "api starting, web waiting", |text, v| {
        inst(v, "api", 0)["state"] == "starting"
            && inst(v, "api", 0)["health"]["state"] == "starting"
            && cell(text, "api", 0, "HEALTH").as_deref() == Some("starting")
            && inst(v, "web", 0)["state"] == "waiting"
            && cell(text, "web", 0, "STATE").is_some_and(|s| s.starts_with("waiting"))
    });
    assert_eq!(
        cell(&text, "web", 0, "STATE").as_deref(),
        Some("waiting (for api)"),
        "{text}"
    );
    let web_start = wait_stamps(&sb, "web", "start", 1)[0].t;
    let db_ready = stamped(&sb, "db", "listening")[0].t;
    let api_start = stamped(&sb, "api", "start")[0].t;
    let api_listening = stamped(&sb, "api", "listening")[0].t;
    let api_first_pass = stamped(&sb, "api", "answer 200")
        .first()
        .expect("api answered a check before web started")
        .t;
    let all = || {
        format!(
            "db {:#?}\napi {:#?}\nweb {:#?}",
            stamps(&sb, "db"),
            stamps(&sb, "api"),
            stamps(&sb, "web")
        )
    };
    assert!(
        db_ready <= api_start,
        "api started before db was ready:\n{}",
        all()
    );
    assert!(api_listening <= api_first_pass);
    assert!(
        api_first_pass <= web_start,
        "web started before api's first passing check:\n{}",
        all()
    );
    // Ready at the first pass, not a whole interval later: the checks ramp up while it starts.
    let lag = web_start - api_listening;
    println!("[timing] api listening → web started: {lag:.2}s");
    assert!(lag < 3.0, "{lag:.2}s\n{}", all());
    let (text, v) = wait_status(&mut sb, "api ready and passing, web up", |text, v| {
        inst(v, "api", 0)["state"] == "ready"
            && cell(text, "api", 0, "HEALTH").as_deref() == Some("passing")
            && inst(v, "web", 0)["health"]["state"] == "passing"
    });
    assert_eq!(inst(&v, "db", 0)["health"], Value::Null, "{v:#}");
    assert_eq!(
        cell(&text, "db", 0, "HEALTH").as_deref(),
        Some("-"),
        "{text}"
    );
    assert_eq!(inst(&v, "api", 0)["restarts"], 0, "{v:#}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// Which instances are checked, start_timeout with ready = "health", reload.

#[test]
fn a_starting_instance_is_checked_only_when_its_readiness_is_the_check() {
    let test = this_test!();
    // notify never comes: `starting` throughout, so its check must not run; the same check on
    // a ready = "health" program runs while it starts.
    let check = |name: &str| {
        format!(
            "exec = [\"/bin/sh\", \"-c\", \"echo $$ >> SANDBOX/{name}.runs; exit 1\"]\n\
             interval = \"200ms\"\nstart_period = \"30s\"\n"
        )
    };
    let tables = format!(
        "[program.notify]\ncommand = \"SANDBOX/sleep 1000\"\nready = \"notify\"\nstart_timeout = \"60s\"\n\
         [program.notify.health]\n{}\n\
         [program.bycheck]\ncommand = \"SANDBOX/sleep 1001\"\nready = \"health\"\nstart_timeout = \"60s\"\n\
         [program.bycheck.health]\n{}\n",
        check("notify"),
        check("bycheck"),
    );
    let mut sb = health_sandbox(&test, &tables);
    // `start` waits for readiness: run the daemon in the foreground instead.
    sb.spawn(foreground(&sb));
    assert!(
        wait_until(TIMEOUT, || sb.read("bycheck.runs").lines().count() >= 3),
        "the ready = \"health\" check did not run while starting; log:\n{}",
        log(&sb)
    );
    std::thread::sleep(Duration::from_millis(1000));
    let v = status_json(&mut sb);
    assert_eq!(inst(&v, "notify", 0)["state"], "starting", "{v:#}");
    assert_eq!(inst(&v, "bycheck", 0)["state"], "starting", "{v:#}");
    assert_eq!(
        sb.read("notify.runs"),
        "",
        "a starting instance of ready = \"notify\" was checked"
    );
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

#[test]
fn the_first_checks_of_many_instances_are_spread_over_their_interval() {
    let test = this_test!();
    let n = 20;
    let tables = format!(
        "[program.many]\ncommand = \"SANDBOX/sleep 1000\"\ninstances = {n}\n\
         [program.many.health]\nexec = [\"/bin/sh\", \"-c\", \
         \"echo $WARDEN_INSTANCE $(date +%s%N) >> SANDBOX/checks\"]\ninterval = \"2s\"\n"
    );
    let mut sb = health_sandbox(&test, &tables);
    sb.start();
    // Each instance's first check, in seconds.
    let firsts = |sb: &Sandbox| -> Vec<f64> {
        let mut seen = std::collections::BTreeMap::new();
        for l in sb.read("checks").lines() {
            if let Some((i, t)) = l.split_once(' ')
                && let Ok(t) = t.trim().parse::<f64>()
            {
                seen.entry(i.to_string()).or_insert(t / 1e9);
            }
        }
        seen.into_values().collect()
    };
    assert!(
        wait_until(TIMEOUT, || firsts(&sb).len() == n),
        "not every instance was checked: {:?}\nlog:\n{}",
        sb.read("checks"),
        log(&sb)
    );
    let mut t = firsts(&sb);
    t.sort_by(f64::total_cmp);
    let spread = t[n - 1] - t[0];
    // The most first checks within any 100 ms.
    let herd = (0..n)
        .map(|i| t[i..].iter().take_while(|&&x| x - t[i] < 0.1).count())
        .max()
        .unwrap();
    println!(
        "[timing] first checks of {n} instances spread over {spread:.2}s, at most {herd} in 100 ms"
    );
    // Uniform over 2 s: a spread under 0.8 s has a chance below 1e-6.
    assert!(spread >= 0.8, "{t:?}");
    assert!(herd <= n / 2, "{t:?}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

#[test]
fn start_timeout_bounds_the_wait_for_a_first_passing_check() {
    let test = this_test!();
    let dead = free_port();
    let tables = format!(
        "[program.never]\ncommand = \"SANDBOX/sleep 1000\"\nready = \"health\"\nstart_timeout = \"1s\"\n\
         [program.never.health]\ntcp = \"127.0.0.1:{dead}\"\nstart_period = \"60s\"\ninterval = \"200ms\"\n"
    );
    let mut sb = health_sandbox(&test, &tables);
    sb.spawn(foreground(&sb));
    // The log line says the instance and the reason (the state change sits between them).
    let said = |sb: &Sandbox| {
        log(sb).lines().any(|l| {
            l.contains("never[0]: ")
                && l.ends_with("did not pass a health check within 1s; restarting")
        })
    };
    assert!(
        wait_until(TIMEOUT, || said(&sb)),
        "no start_timeout line in:\n{}",
        log(&sb)
    );
    let (_, v) = wait_status(&mut sb, "never restarted", |_, v| {
        inst(v, "never", 0)["restarts"].as_u64() >= Some(1)
    });
    assert_ne!(inst(&v, "never", 0)["state"], "ready", "{v:#}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

#[test]
fn reload_applies_a_changed_health_table_to_future_checks_and_restarts_nothing() {
    let test = this_test!();
    let dead = free_port();
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let tables = |port: u16| {
        format!(
            "[program.w]\ncommand = \"SANDBOX/sleep 1000\"\n\
             [program.w.health]\ntcp = \"127.0.0.1:{port}\"\ninterval = \"300ms\"\nretries = 1000\n"
        )
    };
    let mut sb = health_sandbox(&test, &tables(dead));
    sb.start();
    let (_, v) = wait_status(&mut sb, "w failing", |text, v| {
        is_failing(cell(text, "w", 0, "HEALTH"), 1000, "connect: ECONNREFUSED")
            && inst(v, "w", 0)["health"]["state"] == "failing"
    });
    let pid = inst(&v, "w", 0)["pid"].clone();
    sb.write_programs("", &tables(open_port));
    // The plan names w, dry or not (no line at all would read as "nothing changed"); the daemon
    // logs it.
    let says_w = |plan: &str| {
        plan.lines()
            .any(|l| l.contains("health check") && l.split_whitespace().any(|w| w == "w"))
    };
    let dry = expect(&mut sb, &["reload", "--dry-run"], 0);
    let plan = expect(&mut sb, &["reload"], 0);
    assert!(
        wait_until(TIMEOUT, || log(&sb)
            .contains("update w (health check; restarts nothing)")),
        "{}",
        log(&sb)
    );
    let (_, v) = wait_status(&mut sb, "w passing after reload", |text, v| {
        cell(text, "w", 0, "HEALTH").as_deref() == Some("passing")
            && inst(v, "w", 0)["health"]["state"] == "passing"
    });
    let w = inst(&v, "w", 0);
    assert_eq!(w["pid"], pid, "reload restarted w: {w:#}");
    assert_eq!(w["restarts"], 0, "{w:#}");
    assert!(says_w(&dry), "reload --dry-run printed:\n{dry}");
    assert!(says_w(&plan), "reload printed:\n{plan}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// Configuration errors: each named with its file:line:column and key, all at once.

#[test]
fn check_rejects_bad_health_tables_naming_file_line_and_key() {
    let test = this_test!();
    let tables = "\
[program.two]
command = \"/bin/true\"
[program.two.health]
exec = [\"/bin/true\"]
tcp = \"127.0.0.1:5432\"

[program.none]
command = \"/bin/true\"
[program.none.health]
interval = \"5s\"

[program.noready]
command = \"/bin/true\"
ready = \"health\"

[program.url]
command = \"/bin/true\"
[program.url.health]
http = \"ftp://127.0.0.1/\"

[program.zero]
command = \"/bin/true\"
[program.zero.health]
tcp = \"127.0.0.1:5432\"
retries = 0
";
    let mut sb = health_sandbox(&test, tables);
    let text = std::fs::read_to_string(&sb.config).unwrap();
    // The 1-based line of the first line of the config starting with `start`, after `after`.
    let line_of = |after: &str, start: &str| -> usize {
        let from = text.lines().position(|l| l == after).unwrap();
        from + 1
            + text
                .lines()
                .skip(from)
                .position(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start} after {after}"))
    };
    let out = sb.run(&["check"]);
    let err = stderr_of(&out);
    // Invalid: 1, as for any invalid configuration.
    assert_exit(&out, 1);
    let config = path_str(&sb.config);
    let place = |line: usize, key: &str| {
        err.lines().any(|l| {
            l.strip_prefix(&format!("warden: {config}:{line}:"))
                .and_then(|rest| rest.split_once(": "))
                .is_some_and(|(col, msg)| {
                    col.parse::<u32>().is_ok() && msg.starts_with(&format!("{key}: "))
                })
        })
    };
    // Two probes: the second is named.
    let tcp = line_of("[program.two.health]", "tcp");
    assert!(
        place(tcp, "program.two.health.tcp"),
        "two probes, line {tcp}:\n{err}"
    );
    // No probe: the table is.
    let none = line_of("[program.none.health]", "[program.none.health]");
    assert!(
        place(none, "program.none.health"),
        "no probe, line {none}:\n{err}"
    );
    // ready = "health" without a check.
    let ready = line_of("[program.noready]", "ready");
    assert!(
        place(ready, "program.noready.ready"),
        "ready = health without [health], line {ready}:\n{err}"
    );
    // Not an http:// or http+unix:// URL.
    let url = line_of("[program.url.health]", "http");
    assert!(
        place(url, "program.url.health.http"),
        "bad URL, line {url}:\n{err}"
    );
    // retries >= 1.
    let zero = line_of("[program.zero.health]", "retries");
    assert!(
        place(zero, "program.zero.health.retries"),
        "retries = 0, line {zero}:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // And `start` refuses it (6: not configured).
    let out = sb.run(&["start"]);
    assert_exit(&out, 6);

    // A host name that does not resolve (.invalid never does, RFC 2606), when the file is
    // otherwise valid.
    sb.write_programs(
        "",
        "[program.dns]\ncommand = \"/bin/true\"\n[program.dns.health]\ntcp = \"no-such-host.invalid:5432\"\n",
    );
    let out = sb.run(&["check"]);
    let err = stderr_of(&out);
    assert_exit(&out, 1);
    let text = std::fs::read_to_string(&sb.config).unwrap();
    let tcp = text.lines().position(|l| l.starts_with("tcp")).unwrap() + 1;
    assert!(
        err.contains(&format!("{config}:{tcp}:"))
            && err.contains("program.dns.health.tcp: ")
            && err.contains("no-such-host.invalid"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The worked example stack.

/// `examples/stack/`, where the example's files are.
fn example_stack() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/stack")
}

#[test]
fn check_accepts_the_example_stack_and_prints_its_start_order() {
    let _test = this_test!();
    let out = wait_output(
        std::process::Command::new(warden_bin())
            .arg("-c")
            .arg(example_stack().join("warden.toml"))
            .arg("check")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        TIMEOUT,
    );
    assert_exit(&out, 0);
    let text = stdout_of(&out);
    assert!(text.contains("start order: db -> api -> web"), "{text}");
    // Warnings only (as the bundled example: log = "stderr" is for `warden run`).
    let err = stderr_of(&out);
    assert!(
        err.lines().all(|l| l.starts_with("warden: warning: ")),
        "{err}"
    );
}

#[test]
fn the_example_stack_runs_comes_up_in_order_and_passes_its_checks() {
    let test = this_test!();
    if !std::path::Path::new("/usr/bin/python3").exists() {
        test.skip("no python3");
        return;
    }
    let mut sb = test.sandbox("");
    // A copy, on free ports.
    let mut config = std::fs::read_to_string(example_stack().join("warden.toml")).unwrap();
    let mut env = std::fs::read_to_string(example_stack().join("api.env")).unwrap();
    for port in ["7401", "7402", "7403"] {
        let free = free_port().to_string();
        config = config.replace(port, &free);
        env = env.replace(port, &free);
    }
    std::fs::write(&sb.config, config).unwrap();
    std::fs::write(sb.path("api.env"), env).unwrap();
    std::fs::create_dir(sb.path("public")).unwrap();
    std::fs::copy(
        example_stack().join("public/healthz"),
        sb.path("public/healthz"),
    )
    .unwrap();
    let warden = sb.spawn(foreground(&sb));
    let (_, v) = wait_status(&mut sb, "the stack up and passing", |_, v| {
        inst(v, "db", 0)["state"] == "ready"
            && ["db", "api", "web"]
                .iter()
                .all(|p| inst(v, p, 0)["health"]["state"] == "passing")
            && ["api", "web"]
                .iter()
                .all(|p| inst(v, p, 0)["state"] == "ready")
    });
    // Its programs do not name the sandbox: track them by pid.
    let pids: Vec<i32> = ["db", "api", "web"]
        .iter()
        .map(|p| inst(&v, p, 0)["pid"].as_i64().expect("pid") as i32)
        .collect();
    for &p in &pids {
        sb.track(p);
    }
    // Started in order: each level after the one below (process start times, in clock ticks).
    let t: Vec<u64> = pids
        .iter()
        .map(|&p| start_time(p).expect("alive"))
        .collect();
    assert!(t[0] <= t[1] && t[1] <= t[2], "{t:?}");
    // `requires`: api goes with db; `after` only: web stays.
    expect(&mut sb, &["stop", "db"], 0);
    let (text, _) = wait_status(&mut sb, "api waiting, web still up", |text, v| {
        inst(v, "api", 0)["state"] == "waiting" && text.contains("waiting (db stopped)")
    });
    assert!(alive(pids[2]), "web was stopped:\n{text}");
    assert!(!alive(pids[1]), "{text}");
    expect(&mut sb, &["stop"], 0);
    assert!(
        sb.wait_child(warden, TIMEOUT).is_some(),
        "warden run did not exit after stop"
    );
    assert!(
        wait_until(TIMEOUT, || pids.iter().all(|&p| !alive(p))),
        "left behind: {pids:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// `warden healthcheck`: one exit status for a container runtime's probe.

#[test]
fn healthcheck_exits_0_when_all_is_ready_and_1_with_the_reasons_otherwise() {
    let test = this_test!();
    // A port nobody listens on: its check fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.up]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n\
             [program.sick]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n\
             health = {{ tcp = \"{closed}\", interval = \"200ms\", retries = 1000 }}\n"
        ),
    );
    // Not running yet: unhealthy, exit 1 (never another status: a probe knows 0 and 1).
    let out = sb.run(&["healthcheck"]);
    assert_exit(&out, 1);
    assert!(
        stdout_of(&out).starts_with("unhealthy: warden does not answer"),
        "{}",
        stdout_of(&out)
    );
    sb.start();
    let mut last = String::new();
    let ok = wait_until(TIMEOUT, || {
        let out = sb.run(&["healthcheck"]);
        last = stdout_of(&out);
        exit_code(&out) == Some(1)
            && last.contains("unhealthy: sick[0]: health failing ")
            && last.contains("connect: ECONNREFUSED")
    });
    assert!(
        ok,
        "healthcheck never named the failing check; last:\n{last}"
    );
    assert!(!last.contains("up[0]"), "{last}");
    let out = sb.run(&["healthcheck", "up"]);
    assert_exit(&out, 0);
    assert_eq!(stdout_of(&out).trim(), "healthy: 1 instance(s) ready");
}

/// A one-shot job that did its work (`exited`, code 0, not restarted) is healthy; one that
/// exited with a failure is not.
#[test]
fn healthcheck_counts_a_finished_one_shot_job_healthy_and_a_failed_one_not() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.oneshot]\ncommand = [\"true\"]\nrestart = \"on-failure\"\n\
         [program.failed]\ncommand = [\"/bin/sh\", \"-c\", \"exit 3\"]\nrestart = \"never\"\n\
         [program.up]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n",
    );
    sb.start();
    wait_status(&mut sb, "both jobs exited", |_, v| {
        v["instances"].as_array().is_some_and(|i| {
            i.iter()
                .filter(|i| i["program"] != "up")
                .all(|i| i["state"] == "exited" && i["last_exit"].is_object())
        })
    });
    let out = sb.run(&["healthcheck", "oneshot", "up"]);
    assert_exit(&out, 0);
    assert_eq!(
        stdout_of(&out).trim(),
        "healthy: 1 instance(s) ready, 1 one-shot job(s) done"
    );
    let out = sb.run(&["healthcheck"]);
    assert_exit(&out, 1);
    assert_eq!(stdout_of(&out).trim(), "unhealthy: failed[0]: exited");
}

/// A daemon that accepts but never answers: unhealthy after the probe's 5 s, said rounded.
#[test]
fn healthcheck_of_a_daemon_that_does_not_answer_says_the_timeout_rounded() {
    let test = this_test!();
    let sb = test.supervisor_sandbox("control_socket = \"SANDBOX/ctl.sock\"", "");
    // Connections wait in the backlog, never accepted: no answer.
    let _mute = std::os::unix::net::UnixListener::bind(sb.path("ctl.sock")).unwrap();
    let out = sb.warden(&["healthcheck"]).output().unwrap();
    assert_exit(&out, 1);
    assert_eq!(
        stdout_of(&out).trim(),
        "unhealthy: warden does not answer: timed out after 5s"
    );
}
