//! Dependencies between programs (`after`, `requires`) against real processes: start order
//! gated on readiness, `waiting` in status, the `requires` cascade on a stop by hand and on
//! `fatal`, `after` leaving dependents alone, cycles rejected, and the graceful shutdown in
//! reverse dependency order with independent programs stopped in parallel.
//!
//! Every program of a stack runs `STACK` (below), which appends timestamped events (`start`,
//! `ready`, `term`, `exit`) to one file in the sandbox: orders are checked on those timestamps,
//! written by the programs themselves.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// A stack program: `STACK NAME READY_DELAY STOP_DELAY`. Notes `start`, sends `READY=1` after
/// READY_DELAY seconds (when it has a `NOTIFY_SOCKET`) and notes `ready`; on `SIGTERM` notes
/// `term`, takes STOP_DELAY seconds, notes `exit` and exits 0. With a file `NAME.broken` beside
/// it, it exits 1 at once (to make a program `fatal`).
const STACK: &str = r#"import os, signal, socket, sys, time
name, ready_delay, stop_delay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
here = os.path.dirname(os.path.abspath(__file__))
tag = name + "[" + os.environ.get("WARDEN_INSTANCE", "?") + "]"
def note(what):
    with open(os.path.join(here, "events"), "a") as f:
        f.write("%.6f %s %s %d\n" % (time.time(), what, tag, os.getpid()))
if os.path.exists(os.path.join(here, name + ".broken")):
    note("broken")
    sys.exit(1)
def term(*_):
    note("term")
    time.sleep(stop_delay)
    note("exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
note("start")
time.sleep(ready_delay)
addr = os.environ.get("NOTIFY_SOCKET")
if addr:
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
note("ready")
while True:
    time.sleep(1000)
"#;

/// One event a stack program wrote.
#[derive(Debug, Clone)]
struct Ev {
    t: f64,
    what: String,
    /// `NAME[INDEX]`.
    tag: String,
    pid: i32,
}

fn events(sb: &Sandbox) -> Vec<Ev> {
    std::fs::read_to_string(sb.path("events"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            Some(Ev {
                t: w.next()?.parse().ok()?,
                what: w.next()?.to_string(),
                tag: w.next()?.to_string(),
                pid: w.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The times of event `what` of program `name` (any instance), in order.
fn times(evs: &[Ev], what: &str, name: &str) -> Vec<f64> {
    let prefix = format!("{name}[");
    evs.iter()
        .filter(|e| e.what == what && e.tag.starts_with(&prefix))
        .map(|e| e.t)
        .collect()
}

fn first(evs: &[Ev], what: &str, name: &str) -> f64 {
    *times(evs, what, name)
        .first()
        .unwrap_or_else(|| panic!("no {what} of {name} in {evs:#?}"))
}

fn last(evs: &[Ev], what: &str, name: &str) -> f64 {
    *times(evs, what, name)
        .last()
        .unwrap_or_else(|| panic!("no {what} of {name} in {evs:#?}"))
}

/// Waits (bounded) until `n` events `what` of `name` have been written.
fn wait_events(sb: &Sandbox, what: &str, name: &str, n: usize) -> Vec<Ev> {
    let ok = wait_until(TIMEOUT, || times(&events(sb), what, name).len() >= n);
    let evs = events(sb);
    assert!(ok, "not {n} {what} of {name}: {evs:#?}\nlog:\n{}", log(sb));
    evs
}

/// A `[program.NAME]` table running `STACK` (at `py`) with notify readiness and `extra` lines.
fn stack_program(py: &str, name: &str, ready: f64, stop: f64, extra: &str) -> String {
    format!(
        "[program.{name}]\ncommand = {}\nready = \"notify\"\n{extra}\n",
        argv(&[&python(), py, name, &ready.to_string(), &stop.to_string()])
    )
}

/// The JSON of every instance of `program`.
fn insts(v: &Value, program: &str) -> Vec<Value> {
    v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["program"] == program)
        .cloned()
        .collect()
}

/// The STATE column of the status table's row for `tag` (`web[0]` → row `web  0 …`).
fn state_cell(text: &str, program: &str, index: usize) -> Option<String> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == program && w.next()? == index.to_string()).then(|| {
            let _pid = w.next();
            let rest: Vec<&str> = w.collect();
            // `waiting (for db)` spans words up to the closing parenthesis.
            match rest.first() {
                Some(s) if rest.get(1).is_some_and(|n| n.starts_with('(')) => {
                    let end = rest.iter().position(|x| x.ends_with(')')).unwrap_or(1);
                    format!("{s} {}", rest[1..=end].join(" "))
                }
                Some(s) => s.to_string(),
                None => String::new(),
            }
        })
    })
}

// ---------------------------------------------------------------------------------------------
// 1. A 3-level stack starts in order, each level once the one before is ready.

#[test]
fn a_stack_starts_level_by_level_never_before_its_dependencies_are_ready() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "stack.py", STACK);
    // Listed top first, so that the file order is not what is tested.
    let tables = [
        stack_program(&py, "web", 0.1, 0.0, "requires = [\"api\"]"),
        stack_program(&py, "api", 0.4, 0.0, "instances = 2\nafter = [\"db\"]"),
        stack_program(&py, "db", 1.0, 0.0, "instances = 2"),
        stack_program(&py, "cron", 0.0, 0.0, ""),
    ];
    sb.write_config(&format!("#TABLES\n{}", tables.concat()));
    let check = expect(&mut sb, &["check"], 0);
    assert!(
        check.contains("start order: db, cron -> api -> web"),
        "{check}"
    );
    sb.start();
    // While db gets ready, api and web wait, and say what for.
    // The table and the JSON are two requests: wait until both show it.
    let (text, v) = wait_status(&mut sb, "api waiting for db", |text, v| {
        state_cell(text, "api", 1).as_deref() == Some("waiting (for db)")
            && insts(v, "api")[0]["state"] == "waiting"
    });
    assert_eq!(
        state_cell(&text, "web", 0).as_deref(),
        Some("waiting (for api)"),
        "{text}"
    );
    let api = &insts(&v, "api")[0];
    assert_eq!(api["state"], "waiting", "{v:#}");
    assert_eq!(api["waiting_for"], serde_json::json!(["db"]), "{v:#}");
    let web_prog = v["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["program"] == "web")
        .unwrap();
    assert_eq!(web_prog["requires"], serde_json::json!(["api"]), "{v:#}");
    // Empty edges are left out: a configuration without dependencies reports as before.
    assert_eq!(web_prog.get("after"), None, "{v:#}");

    let evs = wait_events(&sb, "ready", "web", 1);
    // Independent programs start together: cron does not wait for db.
    assert!(
        first(&evs, "start", "cron") < first(&evs, "ready", "db"),
        "{evs:#?}"
    );
    // Every instance of a dependency is ready before any dependent starts.
    assert!(
        last(&evs, "ready", "db") <= first(&evs, "start", "api"),
        "{evs:#?}"
    );
    assert!(
        last(&evs, "ready", "api") <= first(&evs, "start", "web"),
        "{evs:#?}"
    );
    assert_eq!(times(&evs, "start", "api").len(), 2, "{evs:#?}");
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 2. `warden stop db` stops what requires it first; `warden start db` brings it back.

#[test]
fn stopping_a_required_program_stops_its_dependents_first_and_restarts_them_once_it_is_ready() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "stack.py", STACK);
    let tables = [
        stack_program(&py, "db", 0.2, 0.2, ""),
        stack_program(&py, "api", 0.1, 0.2, "requires = [\"db\"]"),
        stack_program(&py, "web", 0.1, 0.2, "requires = [\"api\"]"),
        stack_program(&py, "cron", 0.0, 0.0, "after = [\"db\"]"),
    ];
    sb.write_config(&format!("#TABLES\n{}", tables.concat()));
    sb.start();
    let evs = wait_events(&sb, "ready", "web", 1);
    let cron = evs.iter().find(|e| e.tag == "cron[0]").expect("cron").pid;
    sb.track(cron);

    expect(&mut sb, &["stop", "db"], 0);
    let evs = events(&sb);
    // Reverse dependency order: web, then api, then db, each once the one above is gone.
    assert!(
        first(&evs, "exit", "web") <= first(&evs, "term", "api"),
        "{evs:#?}"
    );
    assert!(
        first(&evs, "exit", "api") <= first(&evs, "term", "db"),
        "{evs:#?}"
    );
    // `after` alone takes nothing down.
    assert!(
        alive(cron),
        "cron (after db) was stopped; log:\n{}",
        log(&sb)
    );
    assert!(times(&evs, "term", "cron").is_empty(), "{evs:#?}");
    // The table and the JSON are two requests: wait until both show it.
    let (text, v) = wait_status(&mut sb, "api and web waiting", |text, v| {
        insts(v, "web")[0]["state"] == "waiting"
            && insts(v, "api")[0]["state"] == "waiting"
            && state_cell(text, "web", 0).as_deref() == Some("waiting (db stopped)")
    });
    assert_eq!(insts(&v, "db")[0]["state"], "stopped", "{v:#}");
    assert_eq!(insts(&v, "api")[0]["waiting_reason"], "db stopped", "{v:#}");
    assert_eq!(
        state_cell(&text, "web", 0).as_deref(),
        Some("waiting (db stopped)"),
        "{text}"
    );
    let stopped_at = last(&events(&sb), "exit", "db");

    // Back up: db, then api once db is ready, then web.
    expect(&mut sb, &["start", "db"], 0);
    let evs = wait_events(&sb, "ready", "web", 2);
    let again = |what: &str, name: &str| {
        times(&evs, what, name)
            .into_iter()
            .find(|&t| t > stopped_at)
            .unwrap_or_else(|| panic!("no new {what} of {name}: {evs:#?}"))
    };
    assert!(again("ready", "db") <= again("start", "api"), "{evs:#?}");
    assert!(again("ready", "api") <= again("start", "web"), "{evs:#?}");
    assert!(alive(cron));
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 3. A required program that goes fatal holds what requires it until it is ready again; `warden
// start web` starts what web requires.

#[test]
fn a_fatal_requirement_holds_its_dependents_until_it_is_ready_again() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "stack.py", STACK);
    let crashy = "max_restarts = 1\nrestart_window = \"60s\"\nbackoff_initial = \"50ms\"";
    let tables = [
        stack_program(&py, "db", 0.1, 0.0, crashy),
        stack_program(&py, "api", 0.1, 0.0, "requires = [\"db\"]"),
        stack_program(&py, "web", 0.1, 0.0, "requires = [\"api\"]"),
        stack_program(&py, "cron", 0.0, 0.0, "after = [\"db\"]"),
    ];
    sb.write_config(&format!("#TABLES\n{}", tables.concat()));
    sb.start();
    let evs = wait_events(&sb, "ready", "web", 1);
    let db = evs.iter().find(|e| e.tag == "db[0]").expect("db").pid;
    let cron = evs.iter().find(|e| e.tag == "cron[0]").expect("cron").pid;
    sb.track(cron);

    // db dies and cannot come back: fatal.
    std::fs::write(sb.path("db.broken"), "").unwrap();
    signal(db, nix::sys::signal::Signal::SIGKILL);
    // The table and the JSON are two requests: wait until both show it.
    let (text, v) = wait_status(&mut sb, "web waiting after db fatal", |text, v| {
        insts(v, "db")[0]["state"] == "fatal"
            && insts(v, "web")[0]["state"] == "waiting"
            && insts(v, "api")[0]["state"] == "waiting"
            && text.contains("waiting (db fatal)")
    });
    assert_eq!(insts(&v, "api")[0]["waiting_reason"], "db fatal", "{v:#}");
    assert!(text.contains("waiting (db fatal)"), "{text}");
    assert!(
        alive(cron),
        "cron (after db) was stopped; log:\n{}",
        log(&sb)
    );
    let evs = events(&sb);
    assert!(
        first(&evs, "exit", "web") <= first(&evs, "term", "api"),
        "{evs:#?}"
    );

    // Repaired; starting web starts db (which web requires through api), then api, then web.
    std::fs::remove_file(sb.path("db.broken")).unwrap();
    expect(&mut sb, &["start", "web"], 0);
    let evs = events(&sb);
    assert_eq!(
        times(&evs, "ready", "web").len(),
        2,
        "`start web` returned before web was up: {evs:#?}"
    );
    assert!(
        last(&evs, "ready", "db") <= last(&evs, "start", "api"),
        "{evs:#?}"
    );
    assert!(
        last(&evs, "ready", "api") <= last(&evs, "start", "web"),
        "{evs:#?}"
    );
    assert!(alive(cron));
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 4. Cycles, unknown names and self-references are configuration errors with their places.

#[test]
fn a_dependency_cycle_across_files_is_rejected_naming_every_member() {
    let test = this_test!();
    let sb = test.supervisor_sandbox(
        "",
        "[program.a]\ncommand = \"SANDBOX/sleep 100\"\nafter = [\"b\"]\n",
    );
    let text = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(&sb.config, format!("include = [\"conf.d/*.toml\"]\n{text}")).unwrap();
    std::fs::create_dir(sb.path("conf.d")).unwrap();
    std::fs::write(
        sb.path("conf.d/b.toml"),
        "[program.b]\ncommand = \"/bin/true\"\nrequires = [\"c\"]\n\n\
         [program.c]\ncommand = \"/bin/true\"\nafter = [\"a\", \"nope\"]\n",
    )
    .unwrap();
    let mut sb = sb;
    let out = sb.run(&["check"]);
    assert_exit(&out, 1);
    let err = stderr_of(&out);
    let main = path_str(&sb.config);
    let drop_in = path_str(&sb.path("conf.d/b.toml"));
    let cycle = "dependency cycle: a -> b -> c -> a (each starts after the next)";
    let main_line = text.lines().position(|l| l.starts_with("after")).unwrap() + 2;
    for want in [
        format!("{main}:{main_line}:10: program.a.after: {cycle}"),
        format!("{drop_in}:3:13: program.b.requires: {cycle}"),
        format!("{drop_in}:7:10: program.c.after: {cycle}"),
        format!("{drop_in}:7:15: program.c.after: there is no [program.nope] table"),
    ] {
        assert!(err.contains(&want), "no {want:?} in:\n{err}");
    }
    // And `start` refuses it the same way (6: not configured, as LSB says).
    let out = sb.run(&["start"]);
    assert_exit(&out, 6);
    assert!(stderr_of(&out).contains(cycle), "{}", stderr_of(&out));
}

// ---------------------------------------------------------------------------------------------
// 5. The graceful shutdown goes in reverse dependency order, independent programs in parallel.

#[test]
fn shutdown_stops_in_reverse_dependency_order_and_independent_programs_in_parallel() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "stack.py", STACK);
    let tables = [
        stack_program(&py, "db", 0.0, 0.3, ""),
        stack_program(&py, "api", 0.0, 0.3, "after = [\"db\"]"),
        stack_program(&py, "web", 0.0, 0.3, "requires = [\"api\"]"),
        stack_program(&py, "x", 0.0, 0.5, ""),
        stack_program(&py, "y", 0.0, 0.5, ""),
    ];
    sb.write_config(&format!("#TABLES\n{}", tables.concat()));
    sb.start();
    wait_events(&sb, "ready", "web", 1);
    wait_events(&sb, "ready", "x", 1);
    wait_events(&sb, "ready", "y", 1);
    let t = Instant::now();
    expect(&mut sb, &["stop"], 0);
    let took = t.elapsed();
    let evs = events(&sb);
    // Independent: web, x and y are all asked to stop before any of them has exited.
    let first_exit = ["web", "x", "y"]
        .iter()
        .map(|n| first(&evs, "exit", n))
        .fold(f64::MAX, f64::min);
    for n in ["web", "x", "y"] {
        assert!(
            first(&evs, "term", n) < first_exit,
            "{n} stopped late: {evs:#?}"
        );
    }
    // Dependents first: api after web is gone, db after api is gone.
    assert!(
        first(&evs, "exit", "web") <= first(&evs, "term", "api"),
        "{evs:#?}"
    );
    assert!(
        first(&evs, "exit", "api") <= first(&evs, "term", "db"),
        "{evs:#?}"
    );
    // Three levels of 0.3 s, with x and y alongside: well under their sum (1.9 s) in series.
    println!("[timing] shutdown of a 3-level stack and 2 independent programs: {took:.2?}");
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    assert_no_process(&sb);
}

/// A dependent whose stop outlasts `shutdown_timeout` (it ignores `SIGTERM`, `stop_timeout =
/// "30s"`) does not starve what it depends on: once the order gives way (in the last quarter of
/// `shutdown_timeout`), `db` is asked to stop and stops cleanly before the deadline's SIGKILL.
/// And `check` warns about the combination, naming both programs.
#[test]
fn a_dependent_slower_than_shutdown_timeout_does_not_starve_its_dependencies_of_their_stop() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "stack.py", STACK);
    let tables = [
        stack_program(&py, "db", 0.0, 0.1, ""),
        format!(
            "[program.web]\ncommand = [\"/bin/sh\", \"-c\", \"trap '' TERM; while :; do {}/sleep 1; done\"]\n\
             requires = [\"db\"]\nstop_timeout = \"30s\"\n",
            dir(&sb)
        ),
    ];
    sb.write_config(&format!(
        "shutdown_timeout = \"3s\"\n#TABLES\n{}",
        tables.concat()
    ));
    let out = sb.run(&["check"]);
    assert_exit(&out, 0);
    let err = stderr_of(&out);
    assert!(
        err.contains("program.web.stop_timeout: stop_timeout (30s) is at least shutdown_timeout (3s) while web starts after db"),
        "no warning naming web and db:\n{err}"
    );
    sb.start();
    wait_events(&sb, "ready", "db", 1);
    wait_status(&mut sb, "web running", |_, v| {
        insts(v, "web").iter().any(|i| i["state"] == "running")
    });
    expect(&mut sb, &["stop"], 0);
    let evs = events(&sb);
    // db got its stop signal and stopped by itself (it would be SIGKILLed without a `term`).
    first(&evs, "term", "db");
    first(&evs, "exit", "db");
    let log = log(&sb);
    assert!(
        log.contains("dependency order abandoned") && log.contains("db (after web)"),
        "no line saying the order was abandoned:\n{log}"
    );
    assert_no_process(&sb);
}
