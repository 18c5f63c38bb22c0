//! cgroup v2 per instance, from outside: a worker whose grandchild `setsid`s and double-forks
//! leaves nothing behind after `stop`, after a `SIGKILL` of warden, and after a `SIGKILL` of
//! warden and its guard together (killed by the next warden started in the same cgroup); the
//! instance is down when its cgroup empties, not when its process group does; `status` and the
//! log say which mode is in force; `cgroups = "off"` falls back to process groups; a limit that
//! cannot be applied is named by `start` (the log) and by `check`.
//!
//! Root and a writable cgroup v2 hierarchy with `cgroup.kill` are needed: each test asks the
//! warden it started which mode it is in and is skipped, with the reason, when it is not cgroup
//! mode. Checked by pid through `/proc`; every wait is bounded.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::*;

/// A worker whose grandchild escapes its process group and session: `setsid`, then a double
/// fork (the middle shell exits at once, so the grandchild is nobody's child but a subreaper's).
/// The grandchild ignores `SIGTERM`, so only `SIGKILL` (or `cgroup.kill`) ends it, and then
/// writes its pid to `gc.pid`, which the worker waits for. The worker's main process then stays
/// (`sleep 1000`), or with `EXIT` set exits.
const WORKER: &str = r#"#!/bin/sh
setsid sh -c 'sh -c "trap \"\" TERM; echo \$\$ > $0/gc.pid; exec $0/sleep 1001" & exit 0' "$1"
while [ ! -s "$1/gc.pid" ]; do "$1/sleep" 0.01; done
[ -n "$EXIT" ] && exit 0
exec "$1/sleep" 1000
"#;

/// A sandbox running [`WORKER`] as program `w` (with `extra` lines in its table and `daemon`
/// lines in `[daemon]`).
fn sandbox(test: &Test, daemon: &str, extra: &str) -> Sandbox {
    let sb = test.supervisor_sandbox(daemon, "");
    let w = script(&sb, "worker.sh", WORKER);
    sb.write_programs(
        daemon,
        &format!(
            "[program.w]\ncommand = [\"/bin/sh\", {}, \"SANDBOX\"]\n{}{extra}\n",
            toml_str(&w),
            if extra.contains("stop_timeout") {
                ""
            } else {
                "stop_timeout = \"1s\"\n"
            }
        ),
    );
    sb
}

/// The grandchild's pid, once written and alive (tracked for clean-up).
fn grandchild(sb: &mut Sandbox) -> i32 {
    let mut gc = 0;
    assert!(
        wait_until(TIMEOUT, || {
            gc = sb.read("gc.pid").trim().parse().unwrap_or(0);
            gc > 0 && alive(gc)
        }),
        "no grandchild; log:\n{}",
        log(sb)
    );
    sb.track(gc);
    gc
}

/// `status --json` once the one instance of `w` is up; `None` (and the test skipped) when
/// warden is not in cgroup mode here.
fn up_in_cgroup_mode(test: &Test, sb: &mut Sandbox) -> Option<Value> {
    up_in_cgroup_mode_of(test, sb, "w")
}

/// As [`up_in_cgroup_mode`], for the one instance of program `name`.
fn up_in_cgroup_mode_of(test: &Test, sb: &mut Sandbox, name: &str) -> Option<Value> {
    let (_, v) = wait_status(sb, &format!("{name} up"), |_, v| {
        matches!(
            v["instances"][0]["state"].as_str(),
            Some("running" | "ready")
        )
    });
    if v["daemon"]["tracking"] != "cgroup" {
        let why = log(sb)
            .lines()
            .find(|l| l.contains("tracking:"))
            .unwrap_or("no tracking line")
            .to_string();
        test.skip(&format!("no cgroup mode here: {why}"));
        return None;
    }
    Some(v)
}

/// As root, warden started with `w` (`extra` lines in its table) and its first instance up in
/// cgroup mode: the sandbox, warden's pid and the status; `None` (the test skipped, saying why)
/// otherwise.
fn started_in_cgroup_mode(test: &Test, extra: &str) -> Option<(Sandbox, i32, Value)> {
    if !test.require_root() {
        return None;
    }
    let mut sb = sandbox(test, "", extra);
    let warden = sb.start();
    let v = up_in_cgroup_mode(test, &mut sb)?;
    Some((sb, warden, v))
}

/// The session id of `pid` (field 6 of /proc/PID/stat).
fn session(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The cgroup v2 path of `pid` (`0::` line of /proc/PID/cgroup).
fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

/// The grandchild escaped: another session than the worker, not its child, in the instance's
/// cgroup.
fn assert_escaped(worker: i32, gc: i32) {
    assert_ne!(session(gc), session(worker), "setsid: another session");
    assert_ne!(stat(gc).map(|s| s.ppid), Some(worker), "double fork");
    let cg = cgroup_of(gc);
    assert!(
        cg.ends_with("/programs/w@0.0") && cg == cgroup_of(worker),
        "in the instance's cgroup: {cg} (worker: {})",
        cgroup_of(worker)
    );
}

#[test]
fn after_stop_nothing_of_a_setsid_double_forked_grandchild_is_left() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started_in_cgroup_mode(&test, "") else {
        return;
    };
    let worker = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    let gc = grandchild(&mut sb);
    assert_escaped(worker, gc);
    // warden itself sits in a leaf of its own, beside the instances.
    assert!(cgroup_of(warden).ends_with(&format!("/warden-{warden}/supervisor")));
    let t = Instant::now();
    expect(&mut sb, &["stop", "w"], 0);
    let took = t.elapsed();
    assert!(
        !alive(gc) && !alive(worker),
        "left after stop: {gc}, {worker}"
    );
    println!("stop w (grandchild ignores SIGTERM) -> nothing left in {took:.1?}");
    // The instance's cgroup is removed once empty.
    let base = v["daemon"]["cgroup"].as_str().unwrap().to_string();
    assert!(
        wait_until(TIMEOUT, || !std::path::Path::new(&base)
            .join("programs/w@0.0")
            .exists()),
        "cgroup removed"
    );
    // And warden's own subtree once warden has stopped.
    expect(&mut sb, &["stop"], 0);
    assert!(wait_until(TIMEOUT, || !std::path::Path::new(&base).exists()));
}

#[test]
fn an_instance_is_down_when_its_cgroup_empties_not_its_process_group() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    // The main process exits at once; its grandchild lives on outside its process group.
    let mut sb = sandbox(
        &test,
        "",
        "env = { EXIT = \"1\" }\nrestart = \"never\"\nstop_timeout = \"60s\"",
    );
    sb.start();
    let (_, v) = wait_status(&mut sb, "w started", |_, v| {
        v["instances"][0]["state"] != "new"
    });
    if v["daemon"]["tracking"] != "cgroup" {
        test.skip("no cgroup mode here");
        return;
    }
    let gc = grandchild(&mut sb);
    // Its process group is empty, its cgroup is not: still stopping (stop_timeout is 60 s).
    let (_, v) = wait_status(&mut sb, "w stopping", |_, v| {
        v["instances"][0]["state"] == "stopping"
    });
    assert!(alive(gc), "{v:#}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_json(&mut sb)["instances"][0]["state"], "stopping");
    // The last process goes: the cgroup empties and the instance is down at once.
    let t = Instant::now();
    signal(gc, Signal::SIGKILL);
    wait_status(&mut sb, "w down", |_, v| {
        v["instances"][0]["state"] == "exited"
    });
    println!("cgroup emptied -> instance down in {:.1?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "not the stop timeout"
    );
}

#[test]
fn after_a_sigkill_of_warden_nothing_of_an_instance_is_left() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started_in_cgroup_mode(&test, "instances = 3") else {
        return;
    };
    wait_status(&mut sb, "3 up", |_, v| {
        v["instances"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|i| i["state"] == "running").count() == 3)
    });
    let _ = v;
    // Three grandchildren (each instance writes gc.pid; wait for three distinct ones).
    let mut gcs = std::collections::BTreeSet::new();
    assert!(wait_until(TIMEOUT, || {
        gcs.extend(
            sb.processes()
                .into_iter()
                .filter(|&p| cmdline(p).last().map(String::as_str) == Some("1001")),
        );
        gcs.len() == 3
    }));
    for &g in &gcs {
        sb.track(g);
    }
    let before = sb.processes().len();
    let t = Instant::now();
    signal(warden, Signal::SIGKILL);
    assert!(
        wait_until(TIMEOUT, || sb.processes().is_empty()),
        "left after SIGKILL: {:?}",
        sb.processes()
            .into_iter()
            .map(|p| (p, cmdline(p)))
            .collect::<Vec<_>>()
    );
    println!(
        "SIGKILL of warden: {before} processes (3 workers, 3 setsid'd grandchildren, guard) -> left 0, in {:.1?}",
        t.elapsed()
    );
}

#[test]
fn after_a_sigkill_of_warden_and_its_guard_the_next_warden_kills_what_is_left() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started_in_cgroup_mode(&test, "") else {
        return;
    };
    let worker = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    let gc = grandchild(&mut sb);
    let guard = all_pids()
        .into_iter()
        .find(|&p| is_guard(p) && stat(p).is_some_and(|s| s.ppid == warden))
        .expect("a guard");
    // Both at once: nothing of warden's runs to act.
    kill_together(warden, guard);
    assert!(wait_until(TIMEOUT, || !alive(warden)), "warden killed");
    assert!(wait_until(TIMEOUT, || !alive(worker)), "death signal");
    // The grandchild outlives both (nothing of this warden is left to act); another test's
    // warden starting meanwhile in the same parent may already have killed it, so that is
    // printed, not asserted.
    println!(
        "grandchild alive after warden and guard died: {}",
        alive(gc)
    );
    // The next warden started in the same cgroup finds the base of a dead warden and kills it.
    let t = Instant::now();
    let second = sb.start();
    assert_ne!(second, warden);
    assert!(
        wait_until(TIMEOUT, || !alive(gc)),
        "the next warden left it; log:\n{}",
        log(&sb)
    );
    println!(
        "next warden start -> grandchild of the dead warden gone in {:.1?}",
        t.elapsed()
    );
    // Its base is gone too. (Any warden started in the same parent cleans up: another test's
    // may have been first, so the log line is not asserted here; the unit tests check it.)
    let base = v["daemon"]["cgroup"].as_str().unwrap().to_string();
    assert!(
        wait_until(TIMEOUT, || !std::path::Path::new(&base).exists()),
        "{base} left"
    );
}

#[test]
fn cgroups_off_falls_back_to_process_groups_and_says_so() {
    let test = this_test!();
    let mut sb = sandbox(&test, "cgroups = \"off\"", "");
    let warden = sb.start();
    let (text, v) = wait_status(&mut sb, "w up", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    assert_eq!(v["daemon"]["tracking"], "process-group", "{v:#}");
    assert!(v["daemon"].get("cgroup").is_none(), "{v:#}");
    assert!(text.contains("tracking: process-group"), "{text}");
    let log = log(&sb);
    assert!(
        log.contains("tracking: process groups and the guard (cgroups = \"off\")"),
        "{log}"
    );
    // Not moved anywhere: the worker shares warden's cgroup.
    let worker = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    assert_eq!(cgroup_of(worker), cgroup_of(warden));
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn a_limit_that_cannot_be_applied_is_named_by_check_and_start() {
    let test = this_test!();
    let mut sb = sandbox(&test, "", "memory_max = \"64M\"\npids_max = 32");
    let check = sb.run(&["check"]);
    let started = sb.run(&["start"]);
    assert_eq!(exit_code(&started), Some(0), "{}", stderr_of(&started));
    let warden = sb.pidfile_pid().expect("a pidfile");
    sb.track(warden);
    let (_, v) = wait_status(&mut sb, "w up", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    let text = log(&sb);
    let controllers = |c: &str| {
        v["daemon"]["cgroup"].as_str().is_some_and(|b| {
            std::fs::read_to_string(format!("{b}/programs/cgroup.subtree_control"))
                .is_ok_and(|s| s.split_whitespace().any(|w| w == c))
        })
    };
    for (key, controller, file, value) in [
        ("memory_max", "memory", "memory.max", "67108864"),
        ("pids_max", "pids", "pids.max", "32"),
    ] {
        if controllers(controller) {
            let base = v["daemon"]["cgroup"].as_str().unwrap();
            let got = std::fs::read_to_string(format!("{base}/programs/w@0.0/{file}")).unwrap();
            assert_eq!(got.trim(), value);
            println!("{key} applied: {file} = {value}");
        } else {
            assert!(
                text.contains(&format!("w: limit not applied: {key}: ")),
                "{key} not named:\n{text}"
            );
            assert!(
                stderr_of(&started).contains(&format!("warning: w: {key} cannot be applied: ")),
                "start does not say {key} cannot be applied:\n{}",
                stderr_of(&started)
            );
            assert!(
                stderr_of(&check).contains(&format!("program.w.{key}: ")),
                "check does not warn about {key}:\n{}\n{}",
                stdout_of(&check),
                stderr_of(&check)
            );
        }
    }
    let _ = warden;
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn an_upgrade_keeps_cgroup_mode_and_what_it_tracks() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started_in_cgroup_mode(&test, "") else {
        return;
    };
    let gc = grandchild(&mut sb);
    expect(&mut sb, &["upgrade"], 0);
    let after = status_json(&mut sb);
    assert_eq!(after["daemon"]["pid"], warden);
    assert_eq!(after["daemon"]["tracking"], "cgroup");
    assert_eq!(after["daemon"]["cgroup"], v["daemon"]["cgroup"]);
    // The new image still kills the whole cgroup, and still sees it empty.
    expect(&mut sb, &["stop", "w"], 0);
    assert!(!alive(gc), "grandchild left after stop across an upgrade");
    expect(&mut sb, &["start", "w"], 0);
    // And its guard still holds the cgroups: a SIGKILL of warden leaves nothing.
    let gc2 = {
        std::thread::sleep(Duration::from_millis(100));
        grandchild(&mut sb)
    };
    signal(warden, Signal::SIGKILL);
    assert!(wait_until(TIMEOUT, || !alive(gc2)), "left after SIGKILL");
}

#[test]
fn an_instance_the_oom_killer_kills_records_oom() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    // Takes 256 MiB, 1 MiB at a time, in a cgroup of 32 MiB.
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.hog]\ncommand = [\"PYTHON\", \"-c\", \"import time\\nb = []\\nwhile True:\\n    b.append(bytearray(1 << 20))\\n    time.sleep(0.001)\\n    if len(b) > 256: time.sleep(1000)\\n\"]\nmemory_max = \"32M\"\nrestart = \"never\"\n",
    );
    sb.start();
    let (_, v) = wait_status(&mut sb, "hog started", |_, v| {
        v["instances"][0]["state"] != "new"
    });
    let memory = v["daemon"]["cgroup"].as_str().is_some_and(|b| {
        std::fs::read_to_string(format!("{b}/programs/cgroup.subtree_control"))
            .is_ok_and(|s| s.split_whitespace().any(|w| w == "memory"))
    });
    if !memory {
        test.skip("no memory controller for warden's cgroups here (cgroup v2 without it)");
        return;
    }
    let (_, v) = wait_status(&mut sb, "hog killed by the OOM killer", |_, v| {
        v["instances"][0]["state"] == "exited"
    });
    assert_eq!(v["instances"][0]["last_exit"]["reason"], "oom", "{v:#}");
    assert!(log(&sb).contains("hog[0]") && log(&sb).contains("killed by the OOM killer"));
}

/// Counts the `SIGTERM`s it gets in `SANDBOX/count`, one line each, then exits; a child of its
/// group waits with it.
const COUNTER: &str = r#"[program.t]
command = ["/bin/sh", "-c", "trap 'echo TERM >> SANDBOX/count; exit 0' TERM; SANDBOX/sleep 1000 & wait"]
stop_timeout = "30s"
"#;

#[test]
fn each_process_of_an_instance_gets_the_stop_signal_once() {
    let test = this_test!();
    // In cgroup mode (as root) and in process-group mode.
    for daemon in ["", "cgroups = \"off\""] {
        let mut sb = test.supervisor_sandbox(daemon, COUNTER);
        sb.start();
        for round in 1..=5 {
            wait_counter_child(&mut sb);
            expect(&mut sb, &["stop", "t"], 0);
            let count = sb.read("count").lines().count();
            assert_eq!(
                count, round,
                "{daemon:?}: SIGTERMs seen after {round} stops"
            );
            expect(&mut sb, &["start", "t"], 0);
        }
        // Not before: a child forked but not yet executed runs the shell's trap, and the
        // SIGTERM is lost to it (then only the stop timeout ends it).
        wait_counter_child(&mut sb);
        expect(&mut sb, &["stop"], 0);
    }
}

/// Waits until `COUNTER`'s instance runs and its shell's child has executed `sleep 1000` (the
/// shell's trap is set by then).
fn wait_counter_child(sb: &mut Sandbox) {
    wait_status(sb, "t running", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    assert!(
        wait_until(TIMEOUT, || sb
            .processes()
            .iter()
            .any(|&p| cmdline(p).last().map(String::as_str) == Some("1000"))),
        "no child"
    );
}

#[test]
fn processes_in_cgroups_an_instance_made_below_its_own_get_the_stop_signal() {
    let test = this_test!();
    // The worker makes `inner` below its cgroup and moves a setsid'd child there, which says
    // when SIGTERM reaches it (SIGKILL, through cgroup.kill, would say nothing).
    let inner = r#"#!/bin/sh
mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
own=$mount$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir "$own/inner"
setsid sh -c 'echo $$ > "$1/inner/cgroup.procs"; trap "echo TERM > $2/inner.term; exit 0" TERM; while :; do sleep 0.05; done' sh "$own" "$2" &
until grep -q . "$own/inner/cgroup.procs"; do sleep 0.01; done
echo moved > "$2/inner.moved"
exec "$2/sleep" 1000
"#;
    if !test.require_root() {
        return;
    }
    let mut sb = test.supervisor_sandbox("", "");
    let w = script(&sb, "inner.sh", inner);
    sb.write_programs(
        "",
        &format!(
            "[program.w]\ncommand = [\"/bin/sh\", {}, \"x\", \"SANDBOX\"]\nstop_timeout = \"30s\"\n",
            toml_str(&w)
        ),
    );
    sb.start();
    if up_in_cgroup_mode(&test, &mut sb).is_none() {
        return;
    }
    assert!(
        wait_until(TIMEOUT, || sb.path("inner.moved").exists()),
        "the worker never made its inner cgroup; log:\n{}",
        log(&sb)
    );
    expect(&mut sb, &["stop", "w"], 0);
    assert_eq!(
        sb.read("inner.term").trim(),
        "TERM",
        "the process in the inner cgroup got no SIGTERM; log:\n{}",
        log(&sb)
    );
}

#[test]
fn a_program_added_again_while_its_old_instance_stops_gets_a_cgroup_of_its_own() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    let p = "[program.w]\ncommand = [\"/bin/sh\", \"-c\", \"trap '' TERM; exec SANDBOX/sleep 1000\"]\n\
             stop_timeout = \"5s\"\n";
    let keep = "[program.k]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n";
    let mut sb = test.supervisor_sandbox("", &format!("{p}{keep}"));
    sb.start();
    let Some(v) = up_in_cgroup_mode(&test, &mut sb) else {
        return;
    };
    let old = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    sb.write_programs("", keep);
    expect(&mut sb, &["reload"], 0);
    // Removed, it is stopping: it ignores SIGTERM until its stop timeout.
    assert!(alive(old), "w[0] still stopping");
    sb.write_programs("", &format!("{p}{keep}"));
    expect(&mut sb, &["reload"], 0);
    let (_, v) = wait_status(&mut sb, "w again", |_, v| {
        v["instances"].as_array().is_some_and(|a| {
            a.iter().any(|i| {
                i["program"] == "w"
                    && i["state"] == "running"
                    && i["pid"].as_i64() != Some(old as i64)
            })
        })
    });
    let new = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["program"] == "w" && i["pid"].as_i64() != Some(old as i64))
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    assert_ne!(cgroup_of(new), cgroup_of(old), "one cgroup each");
    // The old one is killed at its stop timeout; the new one lives on, untouched.
    assert!(wait_until(TIMEOUT, || !alive(old)), "old instance left");
    let (_, v) = wait_status(&mut sb, "w settled", |_, v| {
        v["instances"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|i| i["program"] == "w").count() == 1)
    });
    let w = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["program"] == "w")
        .unwrap()
        .clone();
    assert_eq!(w["pid"], new, "{w:#}\nlog:\n{}", log(&sb));
    assert_eq!(w["restarts"], 0, "{w:#}");
    assert!(alive(new));
    expect(&mut sb, &["stop"], 0);
}

/// Sends `READY=1` to `NOTIFY_SOCKET` (argv[1]: a file it writes its pid to first).
const NOTIFY_READY: &str = r#"import os, socket, sys
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
import time
time.sleep(1000)
"#;

#[test]
fn in_cgroup_mode_a_double_forked_member_of_an_instance_may_report_ready() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    let mut sb = test.supervisor_sandbox("", "");
    let py = script(&sb, "ready.py", NOTIFY_READY);
    // The classic forking daemon: the launcher double-forks (setsid), the daemon reports.
    let w = script(
        &sb,
        "w.sh",
        &format!(
            "#!/bin/sh\nsetsid sh -c '{} {} \"$0/daemon.pid\" & exit 0' \"$1\"\nexec \"$1/sleep\" 1000\n",
            python(),
            py
        ),
    );
    sb.write_programs(
        "",
        &format!(
            "[program.w]\ncommand = [\"/bin/sh\", {}, \"SANDBOX\"]\nready = \"notify\"\nstart_timeout = \"60s\"\n",
            toml_str(&w)
        ),
    );
    sb.start();
    let (_, v) = wait_status(&mut sb, "w up", |_, v| {
        matches!(
            v["instances"][0]["state"].as_str(),
            Some("starting" | "ready")
        )
    });
    if v["daemon"]["tracking"] != "cgroup" {
        test.skip("no cgroup mode here");
        return;
    }
    let (_, v) = wait_status(&mut sb, "w ready", |_, v| {
        v["instances"][0]["state"] == "ready"
    });
    let daemon: i32 = sb.read("daemon.pid").trim().parse().unwrap();
    sb.track(daemon);
    assert_ne!(
        stat(daemon).map(|s| s.session),
        stat(v["instances"][0]["pid"].as_i64().unwrap() as i32).map(|s| s.session),
        "the reporter left the worker's session"
    );
}

#[test]
fn started_as_root_to_run_as_another_user_warden_keeps_cgroup_mode() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    // The tree is made while warden is still root and delegated to `user`, which could not make
    // it: the instances run as nobody, each in its cgroup, and a setsid'd child goes with them.
    let mut sb = test.supervisor_sandbox(
        "user = \"nobody\"\ngroup = \"nogroup\"",
        "[program.w]\ncommand = [\"/bin/sh\", \"-c\", \"setsid SANDBOX/sleep 1001 & exec SANDBOX/sleep 1000\"]\n\
         stop_timeout = \"1s\"\n",
    );
    let out = sb.start_under(&[]);
    assert_exit(&out, 0);
    assert!(
        !stderr_of(&out).contains("without cgroups"),
        "{}",
        stderr_of(&out)
    );
    let (_, v) = wait_status(&mut sb, "w up", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    if v["daemon"]["tracking"] != "cgroup" {
        // Lost to the privilege drop is the failure; no hierarchy at all, a skip.
        let l = log(&sb);
        assert!(
            !l.contains("Permission denied"),
            "cgroup mode lost to `user`:\n{l}"
        );
        test.skip("no cgroup mode here");
        return;
    }
    let worker = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        status(worker)["Uid"].split_whitespace().next(),
        Some("65534")
    );
    let mut child = 0;
    assert!(wait_until(TIMEOUT, || {
        child = sb
            .processes()
            .into_iter()
            .find(|&p| cmdline(p).last().map(String::as_str) == Some("1001"))
            .unwrap_or(0);
        child != 0
    }));
    sb.track(child);
    assert_eq!(cgroup_of(child), cgroup_of(worker));
    expect(&mut sb, &["stop", "w"], 0);
    assert!(wait_until(TIMEOUT, || !alive(child)), "setsid'd child left");
    let base = std::path::PathBuf::from(v["daemon"]["cgroup"].as_str().unwrap());
    expect(&mut sb, &["stop"], 0);
    // As the user, it could not move itself out of its leaf to remove its base: the next
    // warden in that cgroup does, once it is old enough to be judged (1 s).
    assert!(base.join("supervisor").exists(), "{}", base.display());
    std::thread::sleep(Duration::from_millis(1100));
    let mut next =
        test.supervisor_sandbox("", "[program.s]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n");
    next.start();
    assert!(
        !base.exists(),
        "{} left; log:\n{}",
        base.display(),
        log(&next)
    );
    expect(&mut next, &["stop"], 0);
}

#[test]
fn where_cgroup_mode_was_to_be_had_and_is_not_start_says_so() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("unshare", "util-linux") {
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        test.skip("no cgroup2 mount");
        return;
    };
    // As root, in a mount namespace without the hierarchy: no cgroup mode.
    let mut sb =
        test.supervisor_sandbox("", "[program.s]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n");
    let out = sb.start_in_mount_namespace(&format!("umount -l {}", mount.display()));
    assert_exit(&out, 0);
    assert_stderr_has(
        &out,
        "warning: cgroups = \"auto\": warden runs without cgroups",
    );
    assert!(
        log(&sb).contains("WARN  tracking: process groups and the guard"),
        "{}",
        log(&sb)
    );
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn what_an_exec_health_check_leaves_behind_goes_with_its_instance() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    // Each check leaves a setsid'd `sleep 1002` behind, and passes.
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.s]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n\
         [program.s.health]\nexec = [\"/bin/sh\", \"-c\", \"setsid SANDBOX/sleep 1002 & exit 0\"]\n\
         interval = \"1s\"\n",
    );
    sb.start();
    let Some(v) = up_in_cgroup_mode_of(&test, &mut sb, "s") else {
        return;
    };
    let instance = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    let mut left = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            left = sb
                .processes()
                .into_iter()
                .filter(|&p| cmdline(p).last().map(String::as_str) == Some("1002"))
                .collect();
            !left.is_empty()
        }),
        "no check ran; log:\n{}",
        log(&sb)
    );
    for &p in &left {
        sb.track(p);
        assert_eq!(
            cgroup_of(p),
            cgroup_of(instance),
            "in the instance's cgroup"
        );
    }
    expect(&mut sb, &["stop", "s"], 0);
    for p in left {
        assert!(
            wait_until(TIMEOUT, || !alive(p)),
            "check leftover {p} outlived its instance"
        );
    }
}

#[test]
fn in_cgroup_mode_a_double_forked_daemon_named_by_mainpid_is_the_instance() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    let mut sb = test.supervisor_sandbox("", "");
    sb.write_programs(
        "",
        &format!(
            "[program.d]\ncommand = {}\nready = \"notify\"\nstart_timeout = \"60s\"\n\
             [program.d.health]\nexec = [\"/bin/sh\", \"-c\", \"echo $WARDEN_PID > SANDBOX/checked\"]\n\
             interval = \"200ms\"\n",
            argv(&[&python(), "-c", FORKING_DAEMON, "SANDBOX"])
        ),
    );
    sb.start();
    if up_in_cgroup_mode_of(&test, &mut sb, "d").is_none() {
        return;
    }
    assert!(
        wait_until(TIMEOUT, || sb.path("daemon.pid").exists()),
        "no daemon"
    );
    let launcher: i32 = sb.read("launcher.pid").trim().parse().unwrap();
    let daemon: i32 = sb.read("daemon.pid").trim().parse().unwrap();
    sb.track(daemon);
    // Reparented to warden (the subreaper), no descendant of the launcher any more: its
    // MAINPID= is taken for being in the instance's cgroup.
    wait_status(&mut sb, "d's main pid is the daemon", |_, v| {
        v["instances"][0]["pid"] == daemon && v["instances"][0]["state"] == "ready"
    });
    std::fs::write(sb.path("go"), "").unwrap();
    assert!(
        wait_until(TIMEOUT, || !alive(launcher)),
        "the launcher lives"
    );
    // Health checks see the daemon as the instance's pid.
    assert!(
        wait_until(TIMEOUT, || sb.read("checked").trim() == daemon.to_string()),
        "WARDEN_PID of the checks: {:?}",
        sb.read("checked")
    );
    let (_, v) = wait_status(&mut sb, "d ready", |_, v| {
        v["instances"][0]["state"] == "ready"
    });
    assert_eq!(v["instances"][0]["pid"], daemon, "{v}");
    assert_eq!(v["instances"][0]["restarts"], 0, "{v}");
    assert!(alive(daemon), "the daemon was stopped with its launcher");
    assert!(!log(&sb).contains("ignored"), "{}", log(&sb));
    expect(&mut sb, &["stop", "d"], 0);
    assert!(
        wait_until(TIMEOUT, || !alive(daemon)),
        "the daemon outlived stop"
    );
}

/// A cgroup the test made, removed (once its processes are gone) when dropped.
struct MadeCgroup(std::path::PathBuf);

impl Drop for MadeCgroup {
    fn drop(&mut self) {
        wait_until(TIMEOUT, || {
            std::fs::remove_dir(&self.0).is_ok() || !self.0.exists()
        });
    }
}

#[test]
fn in_a_cgroup_namespace_without_a_cgroupfs_of_its_own_warden_stays_in_its_cgroup() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("unshare", "util-linux") {
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        test.skip("no cgroup2 file system");
        return;
    };
    // warden in cgroup `outer`, in a cgroup namespace rooted there, with the host's cgroupfs
    // mount: `/proc/self/cgroup` says `/`, which the mount shows as its root, not as `outer`.
    let name = format!("wtest-cgns-{}", std::process::id());
    let made = MadeCgroup(mount.join(&name));
    std::fs::create_dir(&made.0).unwrap();
    let mut sb =
        test.supervisor_sandbox("", "[program.s]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n");
    let outer = path_str(&made.0);
    let enter = [
        "sh",
        "-c",
        "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"",
        &outer,
    ];
    let prefix: Vec<&str> = enter
        .iter()
        .copied()
        .chain(["unshare", "--cgroup"])
        .collect();
    let out = sb.start_under(&prefix);
    assert_exit(&out, 0);
    let (_, v) = wait_status(&mut sb, "s up", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    let host_view = |pid: i32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let v2 = text.lines().find_map(|l| l.strip_prefix("0::"));
        v2.unwrap_or_default().to_string()
    };
    let warden = v["daemon"]["pid"].as_i64().unwrap() as i32;
    let worker = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    for pid in [warden, worker] {
        assert_eq!(
            host_view(pid),
            format!("/{name}"),
            "pid {pid}; log:\n{}",
            log(&sb)
        );
    }
    assert_eq!(v["daemon"]["tracking"], "process-group", "{v:#}");
    assert!(
        log(&sb).contains("is not under the cgroup2 mount"),
        "{}",
        log(&sb)
    );
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn when_the_mainpid_process_ends_the_instance_ends_with_its_status_though_its_launcher_runs() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    let mut sb = test.supervisor_sandbox("", "");
    sb.write_programs(
        "",
        &format!(
            "[program.d]\ncommand = {}\nready = \"notify\"\nrestart = \"never\"\nstop_timeout = \"2s\"\n",
            argv(&[&python(), "-c", FORKING_DAEMON, "SANDBOX", "stay"])
        ),
    );
    sb.start();
    if up_in_cgroup_mode_of(&test, &mut sb, "d").is_none() {
        return;
    }
    assert!(wait_until(TIMEOUT, || sb.path("daemon.pid").exists()));
    let daemon: i32 = sb.read("daemon.pid").trim().parse().unwrap();
    let launcher: i32 = sb.read("launcher.pid").trim().parse().unwrap();
    sb.track(daemon);
    wait_status(&mut sb, "d's main pid is the daemon", |_, v| {
        v["instances"][0]["pid"] == daemon && v["instances"][0]["state"] == "ready"
    });
    std::fs::write(sb.path("die"), "").unwrap();
    // Its exit 3 is the instance's (not restarted: a second round would race its `MAINPID=`
    // against its exit), and the launcher that outlived it is stopped with the rest.
    wait_status(
        &mut sb,
        "d's end seen, then its launcher stopped",
        |_, v| {
            v["instances"][0]["last_exit"]["code"] == 3 && v["instances"][0]["state"] == "exited"
        },
    );
    assert!(
        wait_until(TIMEOUT, || !alive(launcher)),
        "the launcher outlived its main process"
    );
    assert!(!log(&sb).contains("did not stop"), "{}", log(&sb));
    expect(&mut sb, &["stop"], 0);
}
