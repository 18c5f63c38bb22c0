//! The supervisor against real processes: restarts after kills and exits, crash-loop backoff
//! and `fatal`, stop escalation to `SIGKILL`, subreaping of double-forked grandchildren, workers
//! dying with a killed warden, readiness and watchdog over the notify protocol, complete output
//! capture, a bounded chaos run, scaling by `SIGTTIN`/`SIGTTOU`, and the shutdown order.
//!
//! Every test looks from the outside: the children of the warden pid (`/proc/PID/stat`), their
//! environment (`/proc/PID/environ`) and the daemon log, one line per state change
//! (`NAME[INDEX]: OLD -> NEW (pid N): why`). Every worker command carries the sandbox path in
//! its command line — `sleep` is run through a symlink inside the sandbox, scripts live there —
//! so that `Sandbox::processes()` finds every worker and grandchild, and the sandbox kills them
//! all at drop. Waits are bounded polls; the only fixed sleeps are short observation windows
//! that assert an *absence* (no restart, no new process).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use nix::sys::signal::Signal;

/// Serialises the two CPU-heavy tests (100,000 lines each through warden) so that together they
/// do not starve the timing-sensitive ones on a 2-core runner. The chaos test is not among them:
/// it mostly sleeps, and holding the lock for its minute would only lengthen the run.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Observation helpers.

/// Waits (bounded) for a log line satisfying `pred` and returns it.
fn wait_line(sb: &Sandbox, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut found = None;
    let ok = wait_until(TIMEOUT, || {
        found = log(sb).lines().find(|l| pred(l)).map(str::to_string);
        found.is_some()
    });
    assert!(
        ok,
        "no log line {what} within {TIMEOUT:?}; log:\n{}",
        log(sb)
    );
    found.unwrap()
}

/// Waits (bounded) until at least `n` log lines satisfy `pred`; returns them all.
fn wait_lines(sb: &Sandbox, what: &str, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let ok = wait_until(TIMEOUT, || {
        found = log(sb)
            .lines()
            .filter(|l| pred(l))
            .map(str::to_string)
            .collect();
        found.len() >= n
    });
    assert!(ok, "fewer than {n} log lines {what}; log:\n{}", log(sb));
    found
}

/// Waits (bounded) until `warden` has exactly `n` live children, no zombie ones, and every one
/// of them has exec'd; tracks and returns them. (Before its exec a child is a copy of warden: the
/// guard process cannot be told from a worker until it runs as `warden-guard`, nor a worker's
/// argv and environment read.)
fn wait_workers(sb: &mut Sandbox, warden: i32, n: usize) -> Vec<i32> {
    let mut kids = Vec::new();
    let ok = wait_until(TIMEOUT, || {
        let all = children_of(warden);
        kids = live_children(warden).into_iter().collect();
        kids.len() == n && all.len() == n && all.iter().all(|&p| has_exec(p))
    });
    assert!(
        ok,
        "warden {warden} has children {:?} (zombies {:?}), want {n} live; log:\n{}",
        live_children(warden),
        zombie_children(warden),
        log(sb)
    );
    for &k in &kids {
        sb.track(k);
    }
    kids
}

fn zombie_children(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|&c| is_zombie(c))
        .collect()
}

/// `/proc/PID/environ` as a map.
/// Waits (bounded) until worker `pid` has called `execve`: a spawned worker is visible as
/// warden's child before its exec, and until then its `/proc/PID/environ` and `cmdline` are
/// still warden's. The exec is seen as `/proc/PID/exe` no longer naming warden's binary (only
/// for exec workers: a function worker never execs). A process that is gone has no exe link:
/// nothing to wait for.
fn wait_exec(pid: i32) {
    let done = wait_until(TIMEOUT, || has_exec(pid));
    assert!(done, "worker {pid} never called execve");
}

/// Whether child `pid` of warden has exec'd (or is gone): its `/proc/PID/exe` no longer names
/// warden's binary.
fn has_exec(pid: i32) -> bool {
    let warden = std::fs::canonicalize(warden_bin()).ok();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    exe.is_none() || exe != warden
}

/// The environment of worker `pid`, read once it has exec'd ([`wait_exec`]).
fn environ(pid: i32) -> HashMap<String, String> {
    wait_exec(pid);
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The variables warden sets, for an assertion's message (never the whole environment: it
/// may hold secrets of whoever runs the tests).
fn shown(env: &HashMap<String, String>) -> String {
    let mut keys: Vec<_> = env
        .iter()
        .filter(|(k, _)| {
            k.starts_with("WARDEN_") || ["NOTIFY_SOCKET", "WATCHDOG_USEC"].contains(&k.as_str())
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    keys.sort();
    format!("{} variables, of which {}", env.len(), keys.join(" "))
}

/// `WARDEN_INSTANCE` of a worker.
fn instance_of(pid: i32) -> Option<usize> {
    environ(pid).get("WARDEN_INSTANCE")?.parse().ok()
}

/// The live process of this sandbox whose argv is exactly `args`.
fn find_process(sb: &Sandbox, args: &[&str]) -> Option<i32> {
    sb.processes().into_iter().find(|&p| cmdline(p) == args)
}

/// The timestamp that starts a log line.
fn line_time(line: &str) -> SystemTime {
    let ts = line.split_whitespace().next().expect("timestamp");
    humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("bad timestamp in {line:?}: {e}"))
}

/// Parses a duration as the log prints it: `250µs`, `62ms`, `1.6s`.
fn parse_log_duration(s: &str) -> Duration {
    let s = s.trim_end_matches([')', ';', ',']);
    if let Some(n) = s.strip_suffix("µs") {
        Duration::from_secs_f64(n.parse::<f64>().unwrap() / 1e6)
    } else if let Some(n) = s.strip_suffix("ms") {
        Duration::from_secs_f64(n.parse::<f64>().unwrap() / 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        Duration::from_secs_f64(n.parse::<f64>().unwrap())
    } else {
        panic!("unexpected duration {s:?}")
    }
}

/// `warden stop`, asserting success; returns how long it took.
fn stop(sb: &mut Sandbox) -> Duration {
    let t = Instant::now();
    let out = sb.run(&["stop"]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "warden stop failed: {:?}\nstderr: {}\nlog:\n{}",
        out.status,
        stderr_of(&out),
        log(sb)
    );
    took
}

/// The pid a state-change line names: `... (pid N)...`.
fn pid_in(line: &str) -> Option<i32> {
    let rest = &line[line.find("(pid ")? + 5..];
    rest[..rest.find(')')?].parse().ok()
}

// ---------------------------------------------------------------------------------------------
// 1. A killed worker is replaced.

#[test]
fn killed_worker_is_replaced_by_a_new_pid() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.w]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = 2\n",
    );
    let warden = sb.start();
    let before = wait_workers(&mut sb, warden, 2);
    let victim = before[0];
    let other = before[1];
    let index = instance_of(victim).expect("WARDEN_INSTANCE");
    let t = Instant::now();
    signal(victim, Signal::SIGKILL);
    let mut replacement = 0;
    let ok = wait_until(TIMEOUT, || {
        let now = live_children(warden);
        match now.iter().find(|&&p| p != other && p != victim) {
            Some(&p) if now.len() == 2 && now.contains(&other) => {
                replacement = p;
                true
            }
            _ => false,
        }
    });
    assert!(
        ok,
        "no replacement for {victim}; children {:?}; log:\n{}",
        live_children(warden),
        log(&sb)
    );
    println!(
        "kill -9 -> replacement seen by polling /proc: {:.1?}",
        t.elapsed()
    );
    sb.track(replacement);
    assert_eq!(instance_of(replacement), Some(index), "same instance index");
    let tag = format!("w[{index}]");
    // One state-change line: "w[I]: running -> running (pid NEW): exited (signal 9 …); …".
    let change = format!("{tag}: running -> ");
    let line = wait_line(&sb, "about the kill", |l| {
        l.contains(&change) && l.contains("exited (signal 9") && l.contains("restarting")
    });
    println!("log: {line}");
    assert_eq!(
        pid_in(&line),
        Some(replacement),
        "the line names the new pid"
    );
    assert!(zombie_children(warden).is_empty());
    stop(&mut sb);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 2. `on-failure`: exit 0 stays down, exit 1 is restarted.

#[test]
fn on_failure_restarts_exit_1_but_not_exit_0() {
    let test = this_test!();
    // `ok` exits 0 at once. `bad` exits 1 on its first run and stays up on the second (it
    // leaves a mark in the sandbox to tell the runs apart).
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.ok]\ncommand = {}\nrestart = \"on-failure\"\n\n\
             [program.bad]\ncommand = {}\nrestart = \"on-failure\"\n",
            argv(&["sh", "-c", "exit 0", "SANDBOX"]),
            argv(&[
                "sh",
                "-c",
                "if [ -e \"$0/ran\" ]; then exec \"$0/sleep\" 1000; fi; : > \"$0/ran\"; exit 1",
                "SANDBOX"
            ]),
        ),
    );
    let warden = sb.start();
    // exit 0: exited, not restarted.
    let line = wait_line(&sb, "ok[0] exited with 0", |l| {
        l.contains("ok[0]") && l.contains("exit code 0") && l.contains("not restarted")
    });
    assert!(
        line.contains("-> exited"),
        "a state change to exited: {line}"
    );
    // exit 1: restarted, and the second run stays up.
    let started = wait_lines(&sb, "bad[0] started twice", 2, |l| {
        l.contains("bad[0]") && l.contains("started (pid")
    });
    wait_line(&sb, "bad[0] exited with 1", |l| {
        l.contains("bad[0]") && l.contains("exit code 1") && l.contains("restarting")
    });
    let second = pid_in(started.last().unwrap()).expect("pid");
    let kids = wait_workers(&mut sb, warden, 1);
    assert_eq!(kids, vec![second], "only bad's second run is up");
    // `sh` execs `sleep` after its own exec: wait for the second one, not just the first.
    assert!(
        wait_until(TIMEOUT, || cmdline(second).get(1).map(String::as_str)
            == Some("1000")),
        "bad's second run never exec'd sleep: {:?}",
        cmdline(second)
    );
    // An absence: watch for a short while that nothing else is started.
    std::thread::sleep(Duration::from_secs(1));
    let ok_starts = log(&sb)
        .lines()
        .filter(|l| l.contains("ok[0]") && l.contains("started (pid"))
        .count();
    assert_eq!(ok_starts, 1, "ok[0] started once; log:\n{}", log(&sb));
    let bad_starts = log(&sb)
        .lines()
        .filter(|l| l.contains("bad[0]") && l.contains("started (pid"))
        .count();
    assert_eq!(bad_starts, 2, "bad[0] started twice; log:\n{}", log(&sb));
    assert_eq!(live_children(warden), BTreeSet::from([second]));
    stop(&mut sb);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 3. A crash loop backs off with growing delays, then goes fatal.

#[test]
fn crash_loop_backs_off_then_goes_fatal() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.c]\ncommand = {}\nbackoff_initial = \"50ms\"\nmax_restarts = 4\n\
             restart_window = \"60s\"\n",
            argv(&["sh", "-c", "exit 1", "SANDBOX"])
        ),
    );
    let warden = sb.start();
    let fatal = wait_line(&sb, "c[0] fatal", |l| {
        l.contains("c[0]") && l.contains("fatal")
    });
    println!("log: {fatal}");
    assert!(
        fatal.contains("-> fatal"),
        "a state change to fatal: {fatal}"
    );
    let text = log(&sb);
    let delays: Vec<Duration> = text
        .lines()
        .filter(|l| l.contains("c[0]"))
        .filter_map(|l| {
            let rest = &l[l.find("restarting in ")? + "restarting in ".len()..];
            Some(parse_log_duration(rest.split_whitespace().next()?))
        })
        .collect();
    println!("backoff delays: {delays:?}");
    // max_restarts = 4: the first failure restarts at once, the next three back off, the fifth
    // is fatal.
    assert_eq!(delays.len(), 3, "three backoff delays; log:\n{text}");
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "delays grow: {delays:?}"
    );
    assert!(
        delays[0] >= Duration::from_millis(37) && delays[0] <= Duration::from_millis(63),
        "the first delay is backoff_initial ± jitter: {delays:?}"
    );
    let fatal_at = text.find(&fatal).unwrap();
    assert!(
        !text[fatal_at..].contains("started"),
        "nothing started after fatal"
    );
    // An absence: nothing is started again.
    let starts = text.matches("started (pid").count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(log(&sb).matches("started (pid").count(), starts);
    assert!(children_of(warden).is_empty(), "no worker after fatal");
    stop(&mut sb);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 4. A worker that ignores SIGTERM is killed after stop_timeout.

#[test]
fn sigterm_ignoring_worker_gets_sigkill_after_stop_timeout() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(
        &sb,
        "ignore-term.py",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1000)\n",
    );
    sb.write_config(&format!(
        "#TABLES\n[program.stubborn]\ncommand = {}\nstop_timeout = \"1s\"\n",
        argv(&[&python(), &py])
    ));
    let warden = sb.start();
    let worker = wait_workers(&mut sb, warden, 1)[0];
    // Handshake: SIGTERM (bit 15) shows in SigIgn once the handler is installed.
    let ignores_term = || {
        status(worker)
            .get("SigIgn")
            .and_then(|m| u64::from_str_radix(m, 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
    };
    assert!(
        wait_until(TIMEOUT, ignores_term),
        "worker never ignored SIGTERM"
    );
    let took = stop(&mut sb);
    println!("warden stop with a TERM-ignoring worker took {took:.2?}");
    assert!(
        took >= Duration::from_secs(1),
        "stop waited for stop_timeout: {took:?}"
    );
    assert!(!alive(worker), "the worker is gone when stop returns");
    let text = log(&sb);
    assert!(
        text.lines().any(
            |l| l.contains("stubborn[0]") && l.contains("did not stop within 1s; sent SIGKILL")
        ),
        "SIGKILL logged; log:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("stubborn[0]") && l.contains("stopped (signal 9")),
        "ended by SIGKILL; log:\n{text}"
    );
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 5. Double-forked grandchildren are re-parented to warden, reaped, and killed with the group.

#[test]
fn double_forked_grandchildren_are_reaped_and_killed_with_the_group() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.forker]\ncommand = {}\n",
            argv(&[
                "sh",
                "-c",
                "(\"$0/sleep\" 1000 &); (\"$0/sleep\" 1002 &); exec \"$0/sleep\" 1001",
                "SANDBOX"
            ])
        ),
    );
    let warden = sb.start();
    let d = dir(&sb);
    let sleep = format!("{d}/sleep");
    let mut g1 = 0;
    let mut g2 = 0;
    let mut main = 0;
    let ok = wait_until(TIMEOUT, || {
        match (
            find_process(&sb, &[&sleep, "1000"]),
            find_process(&sb, &[&sleep, "1002"]),
            find_process(&sb, &[&sleep, "1001"]),
        ) {
            (Some(a), Some(b), Some(m)) => {
                (g1, g2, main) = (a, b, m);
                [a, b, m]
                    .iter()
                    .all(|&p| stat(p).is_some_and(|s| s.ppid == warden))
            }
            _ => false,
        }
    });
    assert!(
        ok,
        "grandchildren not re-parented to warden {warden}: {:?}",
        sb.processes()
            .iter()
            .map(|&p| (p, cmdline(p), stat(p).map(|s| s.ppid)))
            .collect::<Vec<_>>()
    );
    for p in [g1, g2, main] {
        sb.track(p);
    }
    println!("worker {main}, grandchildren {g1} and {g2}: ppid = warden {warden}");
    // Still in the worker's process group: a stop reaches them.
    assert_eq!(stat(g1).unwrap().pgrp, main);
    assert_eq!(stat(g2).unwrap().pgrp, main);

    // A killed grandchild is reaped: its /proc entry goes, it does not stay a zombie.
    let t = Instant::now();
    signal(g1, Signal::SIGKILL);
    let reaped = wait_until(TIMEOUT, || {
        !std::path::Path::new(&format!("/proc/{g1}")).exists()
    });
    assert!(reaped, "grandchild {g1} not reaped: {:?}", stat(g1));
    println!("killed grandchild reaped after {:.1?}", t.elapsed());
    assert!(zombie_children(warden).is_empty(), "no zombie children");
    assert_eq!(live_children(warden), BTreeSet::from([g2, main]));
    // The worker itself was not affected.
    assert!(
        !log(&sb).contains("forker[0]: running ->"),
        "the worker did not change state; log:\n{}",
        log(&sb)
    );

    // Stop kills the whole group, the remaining grandchild included.
    stop(&mut sb);
    assert!(!alive(main), "worker gone when stop returns");
    assert!(
        wait_until(TIMEOUT, || !alive(g2)),
        "grandchild {g2} survived the stop"
    );
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 6. Workers die with a SIGKILLed warden.

#[test]
fn workers_die_with_a_sigkilled_warden() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.w]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = 4\n",
    );
    let warden = sb.start();
    let workers = wait_workers(&mut sb, warden, 4);
    let t = Instant::now();
    signal(warden, Signal::SIGKILL);
    let gone = wait_until(Duration::from_secs(5), || {
        workers.iter().all(|&w| !alive(w))
    });
    let took = t.elapsed();
    println!("SIGKILL of warden -> all 4 workers gone in {took:.1?}");
    assert!(gone, "workers survived warden: {workers:?}");
    assert!(took < Duration::from_secs(1), "within a second: {took:?}");
    // Nothing of this sandbox runs, re-parented to PID 1 or elsewhere (the guard process, whose
    // command line is warden's, leaves right after its kills: a bounded wait).
    assert_nothing_left(&sb);
}

/// Waits (bounded) until no process of the sandbox runs; names what is left otherwise.
fn assert_nothing_left(sb: &Sandbox) {
    let left = || -> Vec<(i32, Vec<String>, Option<i32>)> {
        sb.processes()
            .into_iter()
            .map(|p| (p, cmdline(p), stat(p).map(|s| s.ppid)))
            .collect()
    };
    assert!(
        wait_until(TIMEOUT, || left().is_empty()),
        "left running: {:?}",
        left()
    );
}

/// The guard process of the warden `warden` (its child, argv[0] `warden-guard`).
fn guard_of(warden: i32) -> Option<i32> {
    all_pids()
        .into_iter()
        .find(|&p| is_guard(p) && stat(p).is_some_and(|s| s.ppid == warden))
}

/// Finding: PR_SET_PDEATHSIG reaches only a worker's main process, so the children of shell
/// workers that do not `exec` ran on under PID 1 after a SIGKILL of warden. The guard process
/// kills every worker process group — also after it was itself killed and replaced.
#[test]
fn a_sigkilled_warden_takes_the_children_of_its_workers_along() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.sh]
command = {}
instances = 2
",
            argv(&["sh", "-c", "\"$0/sleep\" 1001; true", "SANDBOX"])
        ),
    );
    let warden = sb.start();
    let shells = wait_workers(&mut sb, warden, 2);
    let sleep = format!("{}/sleep", dir(&sb));
    let mut sleeps = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            sleeps = sb
                .processes()
                .into_iter()
                .filter(|&p| cmdline(p) == [sleep.as_str(), "1001"])
                .collect();
            sleeps.len() == 2
        }),
        "two grandchildren `sleep 1001`: {sleeps:?}"
    );
    for &p in &sleeps {
        sb.track(p);
        let st = stat(p).unwrap();
        assert!(shells.contains(&st.ppid), "{p} is a shell's child: {st:?}");
    }
    // The guard is warden's child, in a process group of its own, and holds none of warden's
    // memory (it is an exec'd shell).
    let guard = guard_of(warden).expect("a guard process");
    assert!(!shells.contains(&guard));
    let st = stat(guard).unwrap();
    assert_eq!(st.pgrp, guard, "own process group: {st:?}");
    assert_ne!(
        std::fs::read_link(format!("/proc/{guard}/exe")).ok(),
        std::fs::read_link(format!("/proc/{warden}/exe")).ok(),
        "not a copy of warden"
    );
    // A guard that dies is replaced, and the new one knows every worker group.
    signal(guard, Signal::SIGKILL);
    wait_line(&sb, "guard replaced", |l| {
        l.contains(&format!(
            "the guard process (pid {guard}) is gone; starting another"
        ))
    });
    let second = wait_lines(&sb, "a second guard", 2, |l| {
        l.contains("guard process started (pid")
    });
    println!("{}", second[1]);
    assert!(
        wait_until(TIMEOUT, || guard_of(warden).is_some_and(|g| g != guard)),
        "no new guard process"
    );

    signal(warden, Signal::SIGKILL);
    let all: Vec<i32> = shells.iter().chain(&sleeps).copied().collect();
    let t = Instant::now();
    assert!(
        wait_until(TIMEOUT, || all.iter().all(|&p| !alive(p))),
        "survived warden: {:?}",
        all.iter()
            .filter(|&&p| alive(p))
            .map(|&p| (p, cmdline(p), stat(p).map(|s| s.ppid)))
            .collect::<Vec<_>>()
    );
    println!(
        "SIGKILL of warden -> shells and their children gone in {:.1?}",
        t.elapsed()
    );
    assert_nothing_left(&sb);
}

/// A guard stopped with SIGSTOP neither holds up an orderly stop nor outlives it (a guard that
/// is not reading is killed, never left to act later on what it was last told).
#[test]
fn a_stopped_guard_does_not_outlive_an_orderly_stop() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.sh]\ncommand = {}\ninstances = 2\n",
            argv(&["sh", "-c", "\"$0/sleep\" 1001; true", "SANDBOX"])
        ),
    );
    let warden = sb.start();
    wait_workers(&mut sb, warden, 2);
    let guard = guard_of(warden).expect("a guard process");
    signal(guard, Signal::SIGSTOP);
    stop(&mut sb);
    assert!(
        wait_until(TIMEOUT, || !alive(guard)),
        "the stopped guard {guard} outlived warden"
    );
    assert_nothing_left(&sb);
}

// ---------------------------------------------------------------------------------------------
// 6b. An instance is down only when its whole process group is: stop, restart, exit, shutdown.

/// A worker whose background child ignores SIGTERM: `sleep 1005` (the child, in the worker's
/// group) and `sleep 1006` (the worker itself, which obeys).
const TERM_IGNORING_CHILD: &str = "(trap '' TERM; exec \"$0/sleep\" 1005) & exec \"$0/sleep\" 1006";

/// Waits (bounded) until exactly `n` processes of the sandbox have argv `args`; returns them.
fn wait_count(sb: &Sandbox, args: &[&str], n: usize) -> Vec<i32> {
    let mut found = Vec::new();
    let ok = wait_until(TIMEOUT, || {
        found = sb
            .processes()
            .into_iter()
            .filter(|&p| cmdline(p) == args)
            .collect();
        found.len() == n
    });
    assert!(ok, "{args:?}: {found:?}, want {n}; log:\n{}", log(sb));
    found
}

/// `warden ARGS`, asserting exit status 0.
fn expect_ok(sb: &mut Sandbox, args: &[&str]) {
    let out = sb.run(args);
    assert!(
        out.status.success(),
        "warden {args:?}: {:?}\nstderr: {}\nlog:\n{}",
        out.status,
        stderr_of(&out),
        log(sb)
    );
}

/// Finding: an instance left `stopping` as soon as its main process was reaped, so the SIGKILL
/// planned at stop_timeout never reached group members that ignore the stop signal; they piled
/// up with each restart.
#[test]
fn stop_and_restart_kill_group_members_that_ignore_the_stop_signal() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.g]\ncommand = {}\nstop_timeout = \"1s\"\n",
            argv(&["sh", "-c", TERM_IGNORING_CHILD, "SANDBOX"])
        ),
    );
    sb.start();
    let sleep = format!("{}/sleep", dir(&sb));
    let child = [sleep.as_str(), "1005"];
    let first = wait_count(&sb, &child, 1)[0];
    sb.track(first);

    expect_ok(&mut sb, &["stop", "g"]);
    assert!(
        !alive(first),
        "`stop g` returned with {first} of its group still running; log:\n{}",
        log(&sb)
    );
    let text = log(&sb);
    assert!(
        text.contains("g[0] (pid ") && text.contains("waiting for the rest of its process group"),
        "log:\n{text}"
    );
    assert!(
        text.contains("did not stop within 1s; sent SIGKILL"),
        "log:\n{text}"
    );

    expect_ok(&mut sb, &["start", "g"]);
    let mut previous = wait_count(&sb, &child, 1)[0];
    sb.track(previous);
    for round in 0..2 {
        expect_ok(&mut sb, &["restart", "g"]);
        assert!(
            !alive(previous),
            "restart {round}: the old group's {previous} still runs; log:\n{}",
            log(&sb)
        );
        let now = wait_count(&sb, &child, 1)[0];
        sb.track(now);
        assert_ne!(now, previous);
        previous = now;
    }
    stop(&mut sb);
    assert_no_process(&sb);
}

/// Finding: at shutdown only warden's direct children were killed, one level deep: a TERM-ignoring
/// grandchild of a worker whose main process obeyed ran on under PID 1.
#[test]
fn daemon_stop_leaves_no_member_of_a_worker_group() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.g]\ncommand = {}\nstop_timeout = \"1s\"\n",
            argv(&[
                "sh",
                "-c",
                "(trap '' TERM; \"$0/sleep\" 1010; true) & exec \"$0/sleep\" 1011",
                "SANDBOX"
            ])
        ),
    );
    sb.start();
    let sleep = format!("{}/sleep", dir(&sb));
    let grandchild = wait_count(&sb, &[&sleep, "1010"], 1)[0];
    sb.track(grandchild);
    stop(&mut sb);
    assert!(
        !alive(grandchild),
        "{grandchild} outlived warden: {:?}; log:\n{}",
        stat(grandchild),
        log(&sb)
    );
    assert_no_process(&sb);
}

/// An unexpected exit of the main process stops what is left of its group (stop signal, then
/// SIGKILL after stop_timeout) before the restart: the new worker never runs next to the old
/// one's remnants.
#[test]
fn an_exited_worker_group_is_cleaned_up_before_the_respawn() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.e]\ncommand = {}\nstop_timeout = \"1s\"\n",
            argv(&[
                "sh",
                "-c",
                "(trap '' TERM; exec \"$0/sleep\" 1020) & \"$0/sleep\" 0.2; exit 3",
                "SANDBOX"
            ])
        ),
    );
    sb.start();
    let sleep = format!("{}/sleep", dir(&sb));
    let remnant = [sleep.as_str(), "1020"];
    let first = wait_count(&sb, &remnant, 1)[0];
    sb.track(first);
    let mut second = 0;
    assert!(
        wait_until(TIMEOUT, || {
            second = sb
                .processes()
                .into_iter()
                .find(|&p| p != first && cmdline(p) == remnant)
                .unwrap_or(0);
            second != 0
        }),
        "no respawn; log:\n{}",
        log(&sb)
    );
    sb.track(second);
    assert!(
        !alive(first),
        "the respawned worker runs next to {first}, left by its predecessor; log:\n{}",
        log(&sb)
    );
    let text = log(&sb);
    assert!(
        text.contains("e[0]: running -> stopping (pid ")
            && text.contains(
                "exited (exit code 3); stopping the rest of its process group (sent SIGTERM)"
            ),
        "log:\n{text}"
    );
    assert!(
        text.contains("exited (exit code 3), its process group gone; restarting"),
        "log:\n{text}"
    );
    stop(&mut sb);
    assert_no_process(&sb);
}

/// Finding: `shutdown_timeout` did not bound the graceful shutdown, which waited for every
/// program's stop_timeout in turn. Here stop_timeout (120 s) is far beyond both the daemon's
/// shutdown_timeout (1 s) and `warden stop --timeout` (10 s): `stop` succeeds only if the
/// shutdown escalated to SIGKILL at shutdown_timeout.
#[test]
fn shutdown_timeout_bounds_a_graceful_shutdown() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "shutdown_timeout = \"1s\"",
        &format!(
            "[program.deaf]\ncommand = {}\nstop_timeout = \"120s\"\n\n\
             [program.deaf2]\ncommand = {}\nstop_timeout = \"120s\"\n",
            argv(&[
                "sh",
                "-c",
                "trap '' TERM; exec \"$0/sleep\" 1030",
                "SANDBOX"
            ]),
            argv(&[
                "sh",
                "-c",
                "trap '' TERM; exec \"$0/sleep\" 1031",
                "SANDBOX"
            ])
        ),
    );
    let warden = sb.start();
    let workers = wait_workers(&mut sb, warden, 2);
    // Handshake: both ignore SIGTERM (bit 15 of SigIgn) before the stop.
    for &w in &workers {
        assert!(
            wait_until(TIMEOUT, || status(w)
                .get("SigIgn")
                .and_then(|m| u64::from_str_radix(m, 16).ok())
                .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)),
            "worker {w} never ignored SIGTERM"
        );
    }
    let t = Instant::now();
    let out = sb.run(&["stop", "--timeout", "10s"]);
    println!("warden stop took {:.2?}", t.elapsed());
    assert!(
        out.status.success(),
        "warden stop: {:?}\nstderr: {}\nlog:\n{}",
        out.status,
        stderr_of(&out),
        log(&sb)
    );
    for &w in &workers {
        assert!(!alive(w), "{w} outlived warden");
    }
    let text = log(&sb);
    assert!(
        text.contains("shutdown_timeout (1s) passed: killing every remaining worker (SIGKILL)"),
        "log:\n{text}"
    );
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 7. Readiness and watchdog over the notify protocol; the workers' environment.

const NOTIFY_WORKER: &str = r#"import os, socket, sys, time
d = sys.argv[1]
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
# Held until the test says go, so that "not ready before READY=1" is observed, not raced.
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
time.sleep(1)
s.sendto(b"READY=1\nSTATUS=pinging", addr)
for _ in range(10):
    time.sleep(0.1)
    s.sendto(b"WATCHDOG=1", addr)
# Then silence: the watchdog must fire.
time.sleep(1000)
"#;

#[test]
fn notify_worker_is_ready_after_ready_1_and_restarted_when_pings_stop() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "notify.py", NOTIFY_WORKER);
    let d = dir(&sb);
    sb.write_config(&format!(
        "#TABLES\n[program.n]\ncommand = {}\nready = \"notify\"\nwatchdog = \"500ms\"\n",
        argv(&[&python(), &py, &d])
    ));
    let warden = sb.start();
    let first = wait_workers(&mut sb, warden, 1)[0];
    let starting = wait_line(&sb, "n[0] starting", |l| {
        l.contains("n[0]: new -> starting")
    });
    assert_eq!(pid_in(&starting), Some(first));
    let env = environ(first);
    assert!(
        env.get("NOTIFY_SOCKET").is_some_and(|s| s.starts_with('@')),
        "an abstract NOTIFY_SOCKET: {}",
        shown(&env)
    );
    assert_eq!(env.get("WATCHDOG_USEC").map(String::as_str), Some("500000"));
    // An absence: held before READY=1, the worker stays `starting`.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !log(&sb).contains("-> ready"),
        "ready before READY=1; log:\n{}",
        log(&sb)
    );
    assert!(!log(&sb).contains("-> running"), "not `running` either");
    std::fs::write(sb.path("go"), "").unwrap();
    let ready = wait_line(&sb, "n[0] ready", |l| l.contains("n[0]: starting -> ready"));
    assert_eq!(pid_in(&ready), Some(first));
    let timeout = wait_line(&sb, "watchdog timeout", |l| {
        l.contains("n[0]") && l.contains("watchdog timeout")
    });
    println!("log: {timeout}");
    let alive_for = line_time(&timeout)
        .duration_since(line_time(&ready))
        .unwrap_or_default();
    println!("ready -> watchdog timeout: {alive_for:.2?} (1 s of pings + 500 ms)");
    assert!(
        alive_for >= Duration::from_millis(1000),
        "the pings kept it alive for their second: {alive_for:?}"
    );
    // Restarted: a new pid, starting again (and waiting for READY=1 again).
    let restarted = wait_line(&sb, "n[0] started again", |l| {
        l.contains("n[0]") && l.contains("-> starting") && pid_in(l).is_some_and(|p| p != first)
    });
    let second = pid_in(&restarted).unwrap();
    sb.track(second);
    assert!(!alive(first), "the silent worker was stopped");
    assert!(
        wait_until(TIMEOUT, || live_children(warden)
            == BTreeSet::from([second])),
        "the new worker {second} runs; children {:?}",
        live_children(warden)
    );
    stop(&mut sb);
    assert_no_process(&sb);
}

#[test]
fn workers_get_their_identity_and_only_notify_workers_get_notify_socket() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.plain]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = 2\n\n\
             [program.notified]\ncommand = {}\nready = \"notify\"\n",
            argv(&["sh", "-c", "exec \"$0/sleep\" 1001", "SANDBOX"])
        ),
    );
    let warden = sb.start();
    let workers = wait_workers(&mut sb, warden, 3);
    let mut seen = BTreeSet::new();
    for w in workers {
        let env = environ(w);
        let program = env.get("WARDEN_PROGRAM").cloned().unwrap_or_default();
        let instance = env.get("WARDEN_INSTANCE").cloned().unwrap_or_default();
        match program.as_str() {
            "plain" => assert!(
                !env.contains_key("NOTIFY_SOCKET"),
                "a plain worker has no NOTIFY_SOCKET: {}",
                shown(&env)
            ),
            "notified" => assert!(
                env.get("NOTIFY_SOCKET").is_some_and(|s| s.starts_with('@')),
                "{}",
                shown(&env)
            ),
            other => panic!("unexpected WARDEN_PROGRAM {other:?} in {}", shown(&env)),
        }
        seen.insert(format!("{program}[{instance}]"));
    }
    let want: BTreeSet<String> = ["plain[0]", "plain[1]", "notified[0]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(seen, want);
    stop(&mut sb);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 8. 100,000 output lines arrive complete and in order.

/// Checks that `lines` tagged `tag` carry 1..=100000 in order; returns how many were seen.
fn assert_numbers_in_order(lines: impl Iterator<Item = String>, tag: &str) -> usize {
    let needle = format!(" {tag} ");
    let mut expected = 1u64;
    for line in lines {
        let Some((_, n)) = line.split_once(&needle) else {
            continue;
        };
        let n: u64 = n
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("garbled line {line:?}"));
        assert_eq!(n, expected, "line {line:?} out of order or missing lines");
        expected += 1;
    }
    (expected - 1) as usize
}

#[test]
fn hundred_thousand_lines_to_a_file_arrive_complete_and_in_order() {
    let test = this_test!();
    let _heavy = heavy();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.seq]\ncommand = {}\nrestart = \"never\"\nstdout = \"SANDBOX/out.log\"\n\
             log_max_bytes = \"1G\"\n",
            argv(&["sh", "-c", "seq 1 100000", "SANDBOX"])
        ),
    );
    let t = Instant::now();
    sb.start();
    let complete = wait_until(TIMEOUT, || {
        std::thread::sleep(Duration::from_millis(20));
        sb.read("out.log").ends_with(" seq[0] 100000\n")
    });
    assert!(
        complete,
        "out.log incomplete: {} bytes; log:\n{}",
        sb.read("out.log").len(),
        log(&sb)
    );
    println!("100,000 lines into out.log in {:.2?}", t.elapsed());
    let text = sb.read("out.log");
    for line in text.lines() {
        let ts = line.split_whitespace().next().unwrap();
        assert!(
            humantime::parse_rfc3339(ts).is_ok(),
            "timestamped: {line:?}"
        );
        assert!(line.contains(" seq[0] "), "tagged: {line:?}");
    }
    assert_eq!(text.lines().count(), 100_000, "nothing else in the file");
    assert_eq!(
        assert_numbers_in_order(text.lines().map(str::to_string), "seq[0]"),
        100_000
    );
    wait_line(&sb, "seq[0] exited", |l| {
        l.contains("seq[0]") && l.contains("exit code 0")
    });
    stop(&mut sb);
    assert_no_process(&sb);
}

#[test]
fn hundred_thousand_lines_to_the_log_arrive_complete_and_in_order() {
    let test = this_test!();
    let _heavy = heavy();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.seq]\ncommand = {}\nrestart = \"never\"\nstdout = \"log\"\n",
            argv(&["sh", "-c", "seq 1 100000", "SANDBOX"])
        ),
    );
    let t = Instant::now();
    sb.start();
    let complete = wait_until(TIMEOUT, || {
        std::thread::sleep(Duration::from_millis(20));
        log(&sb).contains(" seq[0] 100000\n")
    });
    assert!(complete, "warden.log incomplete");
    println!("100,000 lines into warden.log in {:.2?}", t.elapsed());
    assert_eq!(
        assert_numbers_in_order(log(&sb).lines().map(str::to_string), "seq[0]"),
        100_000
    );
    stop(&mut sb);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 9. Chaos: random kills of random workers; no zombie lingers, every instance comes back.

/// xorshift64*: a tiny PRNG, good enough to pick victims.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn chaos_secs() -> u64 {
    std::env::var("WARDEN_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// What a process is doing, from `/proc/PID/{stat,wchan,syscall}`.
fn activity(pid: i32) -> String {
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let state = stat(pid).map_or('?', |s| s.state);
    format!(
        "state {state}, wchan {wchan:?}, syscall {:?}",
        syscall.trim()
    )
}

/// The children of `warden` that are forked but not yet exec'd (still running warden's
/// image), and what they are doing: who a spawn is waiting for.
fn unexecd_children(warden: i32) -> Vec<String> {
    let exe = |p: i32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let own = exe(warden);
    children_of(warden)
        .into_iter()
        .filter(|&c| own.is_some() && exe(c) == own)
        .map(|c| format!("{c}: {}", activity(c)))
        .collect()
}

/// Whether `pid` sleeps in `epoll_wait`: idle, with nothing pending (a pending `SIGCHLD` would
/// have woken it).
fn idle_in_epoll(pid: i32) -> bool {
    let sleeping = stat(pid).is_some_and(|s| s.state == 'S');
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    // epoll_wait, epoll_pwait, epoll_pwait2 on x86_64.
    let nr = syscall.split_whitespace().next().unwrap_or("");
    let in_epoll = wchan.contains("epoll")
        || wchan == "ep_poll"
        || (cfg!(target_arch = "x86_64") && matches!(nr, "232" | "281" | "441"));
    sleeping && in_epoll
}

fn still_zombie(&(pid, t0): &(i32, u64)) -> bool {
    start_time(pid) == Some(t0) && is_zombie(pid)
}

/// What a chaos run saw.
struct Chaos {
    kills: u64,
    samples: u64,
    zombie_sightings: u64,
    max_zombies: usize,
    slow_reaps: Vec<String>,
}

/// For `duration`, SIGKILLs a random worker of `warden` every 20 ms and samples its children
/// every 100 ms, asserting at each sample that there are at most `n` workers and that no zombie
/// outlives a sample while warden idles in epoll_wait (nor outlives 5 s at all).
fn kill_at_random(warden: i32, n: usize, duration: Duration, rng: &mut XorShift) -> Chaos {
    let kill_every = Duration::from_millis(20);
    let sample_every = Duration::from_millis(100);
    let start = Instant::now();
    let mut next_kill = start;
    let mut next_sample = start;
    let mut kills = 0u64;
    let mut samples = 0u64;
    let mut zombie_sightings = 0u64;
    let mut max_zombies = 0usize;
    let mut slow_reaps: Vec<String> = Vec::new();
    let mut last_zombies: HashSet<(i32, u64)> = HashSet::new();
    let mut workers: Vec<i32> = Vec::new();
    while start.elapsed() < duration {
        let now = Instant::now();
        if now >= next_sample {
            let kids = children_of(warden);
            let zombies: HashSet<(i32, u64)> = kids
                .iter()
                .filter(|&&p| is_zombie(p))
                .filter_map(|&p| Some((p, start_time(p)?)))
                .collect();
            // A zombie between SIGCHLD and waitpid is normal; the same one two samples running
            // is not — unless warden had no chance to reap it: on a loaded runner it may wait
            // for a CPU, or sit in a spawn (std waits there for the child's exec). So: warden
            // asleep in epoll_wait beside a zombie that old is a missed reap, a failure at
            // once; a busy or starved warden must still reap it within a bound.
            let lingering: Vec<(i32, u64)> = zombies.intersection(&last_zombies).copied().collect();
            if !lingering.is_empty() {
                let doing = format!(
                    "{}; forked, not yet exec'd: {:?}",
                    activity(warden),
                    unexecd_children(warden)
                );
                let idle = idle_in_epoll(warden);
                let missed: Vec<_> = lingering.iter().filter(|z| still_zombie(z)).collect();
                assert!(
                    !idle || missed.is_empty(),
                    "missed reap: warden idle in epoll_wait ({doing}) beside zombies {missed:?} \
                     seen in two samples (sample {samples})"
                );
                let t = Instant::now();
                let reaped = wait_until(Duration::from_secs(5), || {
                    !lingering.iter().any(still_zombie)
                });
                assert!(
                    reaped,
                    "zombies {lingering:?} not reaped for 5 s; warden: {}",
                    activity(warden)
                );
                slow_reaps.push(format!(
                    "{lingering:?} (warden {doing}; reaped {:.0?} later)",
                    t.elapsed()
                ));
            }
            zombie_sightings += zombies.len() as u64;
            max_zombies = max_zombies.max(zombies.len());
            last_zombies = zombies;
            workers = kids.into_iter().filter(|&p| alive(p)).collect();
            assert!(
                workers.len() <= n,
                "more workers than instances: {workers:?}"
            );
            samples += 1;
            next_sample = Instant::now() + sample_every;
        }
        if now >= next_kill {
            if !workers.is_empty() {
                let victim = workers.swap_remove(rng.below(workers.len()));
                // Only if it still is warden's child (never a recycled pid).
                if stat(victim).is_some_and(|s| s.ppid == warden && s.state != 'Z') {
                    signal(victim, Signal::SIGKILL);
                    kills += 1;
                }
            }
            next_kill = now + kill_every;
        }
        let wake = next_kill.min(next_sample);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
    Chaos {
        kills,
        samples,
        zombie_sightings,
        max_zombies,
        slow_reaps,
    }
}

/// Waits (bounded) until `warden` has one live, exec'd worker per instance `0..n`, tracks them,
/// and returns how long that took. (A child counts once it has exec'd and carries its
/// WARDEN_INSTANCE: a child just forked for the last respawn still runs warden's image.)
fn wait_one_worker_per_instance(sb: &mut Sandbox, warden: i32, n: usize) -> Duration {
    let t = Instant::now();
    let all_instances: BTreeSet<usize> = (0..n).collect();
    let mut seen: Vec<(i32, Option<usize>, Vec<String>)> = Vec::new();
    let back = wait_until(TIMEOUT, || {
        let kids = children_of(warden);
        seen = kids
            .iter()
            .map(|&p| (p, instance_of(p), cmdline(p)))
            .collect();
        let instances: BTreeSet<usize> = seen.iter().filter_map(|s| s.1).collect();
        kids.len() == n && kids.iter().all(|&p| alive(p)) && instances == all_instances
    });
    assert!(
        back,
        "not one live worker per instance: (pid, WARDEN_INSTANCE, argv) = {seen:?}; log tail:\n{}",
        log(sb)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for s in &seen {
        sb.track(s.0);
    }
    t.elapsed()
}

#[test]
fn chaos_random_kills_leave_every_instance_running_and_no_zombies() {
    let test = this_test!();
    const N: usize = 16;
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.c]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = 16\n\
         max_restarts = 1000\nbackoff_initial = \"10ms\"\nbackoff_max = \"100ms\"\n",
    );
    let warden = sb.start();
    wait_workers(&mut sb, warden, N);
    let duration = Duration::from_secs(chaos_secs());
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("chaos: {duration:?}, seed {seed:#x} (WARDEN_CHAOS_SECS to change the duration)");
    let mut rng = XorShift(seed);
    let Chaos {
        kills,
        samples,
        zombie_sightings,
        max_zombies,
        slow_reaps,
    } = kill_at_random(warden, N, duration, &mut rng);
    // Every instance comes back, once each, and nothing is left unreaped.
    let back_after = wait_one_worker_per_instance(&mut sb, warden, N);
    println!(
        "chaos: {kills} kills, {samples} samples, {zombie_sightings} transient zombie sightings \
         (max {max_zombies} at once), all {N} back {:.1?} after the last kill",
        back_after
    );
    println!(
        "chaos: {} zombie(s) outlived a sample while warden was busy or starved, none while it \
         was idle: {slow_reaps:?}",
        slow_reaps.len()
    );
    assert!(kills > 0);
    let text = log(&sb);
    assert!(!text.contains("fatal"), "no instance gave up");
    assert!(zombie_children(warden).is_empty());
    stop(&mut sb);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 10. SIGTTIN / SIGTTOU scale the scale_program.

#[test]
fn ttin_adds_a_worker_and_ttou_stops_the_highest_index() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "scale_program = \"w\"",
        "[program.w]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\ninstances = 2\n",
    );
    let warden = sb.start();
    let two = wait_workers(&mut sb, warden, 2);
    signal(warden, Signal::SIGTTIN);
    let three = wait_workers(&mut sb, warden, 3);
    assert!(
        two.iter().all(|p| three.contains(p)),
        "the first two are untouched"
    );
    let added = *three.iter().find(|p| !two.contains(p)).unwrap();
    assert_eq!(instance_of(added), Some(2));
    wait_line(&sb, "w[2] started", |l| l.contains("w[2]: new -> running"));
    wait_line(&sb, "scaled to 3", |l| l.contains("w: scaled to 3"));

    signal(warden, Signal::SIGTTOU);
    let back = wait_workers(&mut sb, warden, 2);
    assert_eq!(back, two, "the highest index went, the others stayed");
    assert!(!alive(added));
    let stopping = wait_line(&sb, "w[2] stopping", |l| {
        l.contains("w[2]: running -> stopping")
    });
    assert_eq!(pid_in(&stopping), Some(added));
    wait_line(&sb, "scaled to 2", |l| l.contains("w: scaled to 2"));
    assert!(
        !log(&sb).contains("w[0]: running -> stopping")
            && !log(&sb).contains("w[1]: running -> stopping"),
        "only w[2] was stopped; log:\n{}",
        log(&sb)
    );
    stop(&mut sb);
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 11. Graceful stop: reverse dependency order, and `warden stop` returns once every worker is
// gone. (Programs without dependencies stop in parallel: tests/it/deps.rs.)

const SLOW_STOP: &str = r#"import signal, sys, time
def term(*_):
    time.sleep(0.3)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(1000)
"#;

#[test]
fn stop_goes_in_reverse_dependency_order_and_waits_for_every_worker() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "slow-stop.py", SLOW_STOP);
    // aa starts after mm, mm after zz: stopped aa, then mm, then zz. Not alphabetical.
    sb.write_config(&format!(
        "#TABLES\n[program.zz]\ncommand = {}\n\n\
         [program.mm]\ncommand = [\"{d}/sleep\", \"1001\"]\ninstances = 2\nafter = [\"zz\"]\n\n\
         [program.aa]\ncommand = [\"{d}/sleep\", \"1002\"]\nafter = [\"mm\"]\n",
        argv(&[&python(), &py]),
        d = dir(&sb)
    ));
    let warden = sb.start();
    let workers = wait_workers(&mut sb, warden, 4);
    let slow = *workers
        .iter()
        .find(|&&p| environ(p).get("WARDEN_PROGRAM").map(String::as_str) == Some("zz"))
        .expect("zz's worker");
    let catches_term = || {
        status(slow)
            .get("SigCgt")
            .and_then(|m| u64::from_str_radix(m, 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
    };
    assert!(wait_until(TIMEOUT, catches_term), "zz never caught SIGTERM");
    let took = stop(&mut sb);
    println!("warden stop (3 programs, the first takes 300 ms to exit) took {took:.2?}");
    // Returned only once every worker was reaped.
    for &w in &workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{w}")).exists(),
            "worker {w} still exists when stop returns"
        );
    }
    assert!(
        took >= Duration::from_millis(300),
        "waited for zz's slow exit"
    );
    let text = log(&sb);
    let pos = |needle: &str| -> usize {
        text.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in log:\n{text}"))
    };
    let order = [
        pos("aa[0]: running -> stopping"),
        pos("aa[0]: stopping -> stopped"),
        pos("mm[0]: running -> stopping").min(pos("mm[1]: running -> stopping")),
        pos("mm[0]: stopping -> stopped").max(pos("mm[1]: stopping -> stopped")),
        pos("zz[0]: running -> stopping"),
        pos("zz[0]: stopping -> stopped"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "programs stop in reverse dependency order, each once its dependents are down; log:\n{text}"
    );
    assert!(text.contains("zz[0]: stopping -> stopped: stopped (exit code 0)"));
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// 12. A graceful stop that finds an instance stopping *for a restart* does not respawn it.

const HUNG: &str = r#"import os, signal, socket, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
time.sleep(1000)
"#;

#[test]
fn stop_during_a_watchdog_restart_does_not_respawn() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "hung.py", HUNG);
    sb.write_config(&format!(
        "#TABLES\n[program.hung]\ncommand = {}\nready = \"notify\"\nwatchdog = \"300ms\"\n\
         stop_timeout = \"2s\"\n",
        argv(&[&python(), &py])
    ));
    let warden = sb.start();
    let worker = wait_workers(&mut sb, warden, 1)[0];
    // It ignores SIGTERM, so the watchdog's stop hangs until SIGKILL, 2 s later: stop now.
    wait_line(&sb, "watchdog timeout", |l| {
        l.contains("hung[0]: ready -> stopping") && l.contains("watchdog timeout")
    });
    stop(&mut sb);
    assert!(!alive(worker));
    let text = log(&sb);
    let shutdown = text
        .find("graceful shutdown")
        .unwrap_or_else(|| panic!("no shutdown line; log:\n{text}"));
    let killed = text
        .find("did not stop within 2s; sent SIGKILL")
        .unwrap_or_else(|| panic!("no SIGKILL line; log:\n{text}"));
    assert!(
        shutdown < killed,
        "precondition: the stop came while the restart was pending; log:\n{text}"
    );
    assert!(
        !text[shutdown..].contains("started (pid"),
        "nothing is spawned during the shutdown; log:\n{text}"
    );
    assert!(text.contains("hung[0]: stopping -> stopped: stopped (signal 9"));
    assert_no_process(&sb);
}

#[test]
fn a_program_that_cannot_be_executed_is_reported_then_fatal() {
    let test = this_test!();
    // The exec happens after the loop moved on (it never waits for a child's exec): its failure
    // comes back through the exec-report pipe and the exit 127 takes the ordinary failure path.
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.missing]\ncommand = [\"/nonexistent/prog\"]\nbackoff_initial = \"10ms\"\nmax_restarts = 2\n\
         [program.nopath]\ncommand = \"no-such-command-warden\"\nbackoff_initial = \"10ms\"\nmax_restarts = 2\n",
    );
    let _warden = sb.start();
    wait_line(&sb, "naming the exec error", |l| {
        l.contains("missing[0]: cannot execute /nonexistent/prog: No such file or directory")
    });
    wait_line(&sb, "missing goes fatal", |l| {
        l.contains("missing[0]:") && l.contains("-> fatal")
    });
    wait_line(&sb, "naming the PATH search", |l| {
        l.contains("nopath[0]") && l.contains("no-such-command-warden not found in PATH")
    });
    wait_line(&sb, "nopath goes fatal", |l| {
        l.contains("nopath[0]:") && l.contains("-> fatal")
    });
    let out = sb.run(&["status", "missing"]);
    assert_eq!(out.status.code(), Some(151), "{}", stdout_of(&out));
    assert!(stdout_of(&out).contains("exit 127"), "{}", stdout_of(&out));
}

#[test]
fn per_program_limits_umask_directory_environment_and_user_apply() {
    let test = this_test!();
    // Everything a program table says about its process, checked in /proc of the worker.
    let root = nix::unistd::Uid::effective().is_root();
    let user = if root { "user = \"nobody\"\n" } else { "" };
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.w]\ncommand = [\"/bin/sleep\", \"1000\"]\ndirectory = \"SANDBOX\"\numask = \"027\"\n\
             limits = {{ nofile = 123, core = 0 }}\nclean_env = true\nenv = {{ ONLY = \"this\" }}\n{user}"
        ),
    );
    let warden = sb.start();
    let w = wait_workers(&mut sb, warden, 1)[0];
    // exec'd: the command is sleep, not a copy of warden.
    assert!(wait_until(TIMEOUT, || std::fs::read_to_string(format!(
        "/proc/{w}/comm"
    ))
    .is_ok_and(|c| c.trim() == "sleep")));
    let limits = std::fs::read_to_string(format!("/proc/{w}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l.split_whitespace()
                    .rev()
                    .skip(1)
                    .take(2)
                    .collect::<Vec<_>>()
            })
            .unwrap()
    };
    assert_eq!(limit("Max open files"), ["123", "123"], "{limits}");
    assert_eq!(limit("Max core file size"), ["0", "0"], "{limits}");
    let st = status(w);
    assert_eq!(st["Umask"], "0027");
    assert_eq!(
        std::fs::read_link(format!("/proc/{w}/cwd")).unwrap(),
        sb.dir
    );
    let env = environ(w);
    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["ONLY", "WARDEN_INSTANCE", "WARDEN_PROGRAM"],
        "clean_env keeps only env and warden's own"
    );
    if root {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert!(
            st["Uid"]
                .split_whitespace()
                .all(|u| u == nobody.uid.to_string()),
            "{:?}",
            st["Uid"]
        );
        assert!(
            st["Groups"].split_whitespace().all(|g| g != "0"),
            "root's group kept: {:?}",
            st["Groups"]
        );
    } else {
        eprintln!("SKIPPED the user part of {}: needs root", test.name());
    }
    // Nothing but stdio is inherited from warden.
    let fds: Vec<i32> = fds(w).into_iter().map(|(fd, _)| fd).collect();
    assert_eq!(fds, [0, 1, 2], "{:?}", crate::common::fds(w));
    let st = stat(w).unwrap();
    assert_eq!(st.ppid, warden);
    assert_eq!(st.pgrp, w, "own process group");
    // Signal mask and dispositions default.
    assert_eq!(status(w)["SigBlk"], "0000000000000000");
    assert_eq!(status(w)["SigIgn"], "0000000000000000");
}

/// Forks a child that forks 20 grandchildren and exits (they are re-parented to warden), each
/// of which dies of `SIGRTMIN+2`; a second later the main process dies of it too.
const RT_DEATHS: &str = r#"import os, signal, time
rt = signal.SIGRTMIN + 2
if os.fork() == 0:
    for _ in range(20):
        if os.fork() == 0:
            time.sleep(0.3)
            os.kill(os.getpid(), rt)
            os._exit(1)
    os._exit(0)
time.sleep(1)
os.kill(os.getpid(), rt)
"#;

#[test]
fn a_death_by_a_real_time_signal_is_seen_and_orphans_dying_so_are_reaped() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.rt]\ncommand = {}\nrestart = \"on-failure\"\nbackoff_initial = \"10s\"\n",
            argv(&[&python(), "-c", RT_DEATHS])
        ),
    );
    let warden = sb.start();
    // warden sees the main process end (nix's waitpid once reaped it, failed to name the
    // signal, and lost the exit: the instance stayed `running` for ever).
    let (_, v) = wait_status(&mut sb, "rt's death seen", |_, v| {
        v["instances"][0]["last_exit"]["signal"].is_number()
    });
    let last = &v["instances"][0]["last_exit"];
    assert_eq!(last["name"], "SIGRTMIN+2", "{v:#}");
    assert_eq!(
        last["signal"].as_i64(),
        Some(i64::from(libc::SIGRTMIN() + 2)),
        "{v:#}"
    );
    assert!(!log(&sb).contains("waitpid"), "{}", log(&sb));
    // Every orphan that died so was reaped.
    let zombies = || {
        children_of(warden)
            .into_iter()
            .filter(|&p| is_zombie(p))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(TIMEOUT, || zombies().is_empty()),
        "zombies left: {:?}",
        zombies()
    );
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn a_mainpid_that_is_no_pid_is_said_and_ignored() {
    let test = this_test!();
    let send = r#"import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"MAINPID=1\nREADY=1", addr)
time.sleep(1000)
"#;
    let mut sb = test.supervisor_sandbox(
        "",
        &format!(
            "[program.n]\ncommand = {}\nready = \"notify\"\n",
            argv(&[&python(), "-c", send])
        ),
    );
    sb.start();
    let (_, v) = wait_status(&mut sb, "n ready", |_, v| {
        v["instances"][0]["state"] == "ready"
    });
    let worker = v["instances"][0]["pid"].as_i64().unwrap();
    assert_ne!(worker, 1, "{v}");
    assert!(
        log(&sb).contains("n[0]: MAINPID=1 ignored: not the pid of a process"),
        "{}",
        log(&sb)
    );
    expect(&mut sb, &["stop"], 0);
}
