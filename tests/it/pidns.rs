//! PID-namespace mode (`[daemon] pid_namespace = true`), from outside: a `SIGKILL` of warden and
//! its guard together leaves nothing of a worker whose grandchild `setsid`s and double-forks
//! (in cgroup mode, and with `cgroups = "off"` after a `SIGKILL` of warden alone); a worker's
//! main process has the same pid in the namespace as in warden's, its children pids of the
//! namespace's own, and `MAINPID=` is translated; the guard ignores every signal but `SIGKILL`,
//! and its death takes every instance, which warden starts again in a new namespace; without
//! `CAP_SYS_ADMIN`, `start` says the mode cannot be applied; without an executable `/bin/sh`
//! and `cat` (a minimal image), the errors name them; an upgrade keeps the namespace.
//!
//! Root is needed (creating a PID namespace needs `CAP_SYS_ADMIN`): each test is skipped, with
//! the reason, without it. Checked by pid through `/proc`; every wait is bounded.

use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::*;

/// A worker whose grandchild escapes its process group and session (`setsid`, then a double
/// fork), ignores `SIGTERM`, and runs `SANDBOX/sleep 1001`; the worker then runs
/// `SANDBOX/sleep 1000`. Both write what they see of themselves (`$$ $PPID`) to `me.*`.
const WORKER: &str = r#"#!/bin/sh
echo "$$ $PPID" > "$1/me.$WARDEN_INSTANCE"
setsid sh -c 'sh -c "trap \"\" TERM; exec $0/sleep 1001" & exit 0' "$1"
exec "$1/sleep" 1000
"#;

/// As root, warden started with [`WORKER`] as program `w` (`daemon` lines in `[daemon]` besides
/// `pid_namespace = true`, `extra` in its table), every instance up, in PID-namespace mode:
/// the sandbox, warden's pid and the status; `None` (the test skipped, saying why) otherwise.
fn started(test: &Test, daemon: &str, extra: &str) -> Option<(Sandbox, i32, Value)> {
    if !test.require_root() {
        return None;
    }
    let daemon = format!("pid_namespace = true\n{daemon}");
    let sb = test.supervisor_sandbox(&daemon, "");
    let w = script(&sb, "worker.sh", WORKER);
    sb.write_programs(
        &daemon,
        &format!(
            "[program.w]\ncommand = [\"/bin/sh\", {}, \"SANDBOX\"]\nstop_timeout = \"1s\"\n{extra}\n",
            toml_str(&w)
        ),
    );
    let mut sb = sb;
    let warden = sb.start();
    let (_, v) = wait_status(&mut sb, "every instance up", |_, v| {
        v["instances"].as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter()
                    .all(|i| i["state"] == "running" || i["state"] == "ready")
        })
    });
    if v["daemon"]["pid_namespace"].is_null() {
        let why = log(&sb)
            .lines()
            .find(|l| l.contains("pid_namespace"))
            .unwrap_or("no pid_namespace line")
            .to_string();
        test.skip(&format!("no PID namespace here: {why}"));
        return None;
    }
    Some((sb, warden, v))
}

/// `/proc/PID/ns/pid` of `pid` (`pid:[INODE]`), or empty when it is gone.
fn ns_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `NSpid` of `pid`: its pid in each namespace it is in, outermost first.
fn ns_pids(pid: i32) -> Vec<i32> {
    status(pid)
        .get("NSpid")
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The guard: warden's child with `argv[0]` `warden-guard`.
fn guard_of(warden: i32) -> i32 {
    let mut guard = None;
    assert!(
        wait_until(TIMEOUT, || {
            guard = all_pids()
                .into_iter()
                .find(|&p| is_guard(p) && stat(p).is_some_and(|s| s.ppid == warden));
            guard.is_some()
        }),
        "no guard"
    );
    guard.unwrap()
}

/// The last argument of `pid`'s command line.
fn last_arg(pid: i32) -> String {
    cmdline(pid).pop().unwrap_or_default()
}

/// The `n` escaped grandchildren (`sleep 1001`), once all run (tracked for clean-up), each in
/// the namespace `ns`, in another session than the workers (which are in `warden`'s).
fn grandchildren(sb: &mut Sandbox, warden: i32, n: usize, ns: &str) -> Vec<i32> {
    let workers = stat(warden).expect("warden's stat").session;
    let mut gcs = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            gcs = sb
                .processes()
                .into_iter()
                .filter(|&p| last_arg(p) == "1001")
                .collect();
            gcs.len() == n
        }),
        "grandchildren: {gcs:?}; log:\n{}",
        log(sb)
    );
    for &g in &gcs {
        sb.track(g);
        assert_eq!(ns_of(g), ns, "grandchild {g} in the instances' namespace");
        let s = stat(g).expect("grandchild stat");
        assert_ne!(
            s.session, workers,
            "grandchild {g} in a session of its own (setsid)"
        );
    }
    gcs
}

/// What is left of the sandbox's processes, with their command lines (for messages).
fn left(sb: &Sandbox) -> Vec<(i32, String)> {
    sb.processes()
        .into_iter()
        .map(|p| (p, last_arg(p)))
        .collect()
}

#[test]
fn a_sigkill_of_warden_and_its_guard_together_leaves_nothing() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started(&test, "", "instances = 2") else {
        return;
    };
    let ns = v["daemon"]["pid_namespace"].as_str().unwrap().to_string();
    println!("tracking: {}", v["daemon"]["tracking"]);
    let guard = guard_of(warden);
    assert_eq!(
        ns_pids(guard).last(),
        Some(&1),
        "the guard is the namespace's init"
    );
    assert_eq!(ns_of(guard), ns);
    let gcs = grandchildren(&mut sb, warden, 2, &ns);
    let before = sb.processes().len();
    let t = Instant::now();
    // Both at once: nothing of warden's runs to act; the kernel does.
    kill_together(warden, guard);
    assert!(
        wait_until(TIMEOUT, || sb.processes().is_empty()),
        "left after SIGKILL of warden and its guard: {:?}",
        left(&sb)
    );
    for g in gcs {
        assert!(!alive(g), "grandchild {g}");
    }
    println!(
        "SIGKILL of warden and its guard: {before} processes (2 workers, 2 setsid'd \
         grandchildren, warden) -> left 0, in {:.1?}",
        t.elapsed()
    );
}

#[test]
fn with_cgroups_off_a_sigkill_of_warden_leaves_no_escaped_grandchild() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started(&test, "cgroups = \"off\"", "") else {
        return;
    };
    assert_eq!(v["daemon"]["tracking"], "process-group");
    let ns = v["daemon"]["pid_namespace"].as_str().unwrap().to_string();
    let gcs = grandchildren(&mut sb, warden, 1, &ns);
    // Out of the worker's process group: process groups alone would leave it running.
    assert_ne!(stat(gcs[0]).unwrap().pgrp, v["instances"][0]["pid"]);
    signal(warden, Signal::SIGKILL);
    assert!(
        wait_until(TIMEOUT, || sb.processes().is_empty()),
        "left after SIGKILL of warden: {:?}",
        left(&sb)
    );
}

/// Forks `SANDBOX/sleep 1000` and gives it as `MAINPID=` (its pid as the program sees it), then
/// `READY=1`; writes that pid to `main`.
const FORKING: &str = r#"import os, socket, subprocess, sys
d = sys.argv[1]
child = subprocess.Popen([os.path.join(d, "sleep"), "1000"])
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(("MAINPID=%d\nREADY=1" % child.pid).encode(), addr)
with open(os.path.join(d, "main"), "w") as f:
    f.write(str(child.pid))
child.wait()
"#;

#[test]
fn a_worker_keeps_its_pid_in_the_namespace_its_children_do_not_and_mainpid_is_translated() {
    let test = this_test!();
    let forking = format!(
        "[program.f]\ncommand = {}\nready = \"notify\"\n",
        argv(&[&python(), "-c", FORKING, "SANDBOX"])
    );
    let Some((mut sb, warden, v)) = started(&test, "", &forking) else {
        return;
    };
    let ns = v["daemon"]["pid_namespace"].as_str().unwrap().to_string();
    let text = stdout_of(&sb.run(&["status"]));
    assert!(text.contains(&format!("pid namespace {ns}")), "{text}");
    // w: created with the same pid in the namespace as in warden's (clone3 set_tid), so what
    // it sees of itself is what status shows; its parent is outside (0).
    let w = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["program"] == "w")
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    assert_eq!(ns_of(w), ns);
    let seen: Vec<i32> = sb
        .read("me.0")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(ns_pids(w), vec![w, w], "NSpid of {w}");
    assert_eq!(seen, vec![w, 0], "what w saw of itself ($$ $PPID)");
    // Its grandchild, forked inside, has a pid of the namespace's own.
    let gc = grandchildren(&mut sb, warden, 1, &ns)[0];
    let ids = ns_pids(gc);
    assert_eq!(ids.len(), 2, "NSpid of {gc}: {ids:?}");
    assert_ne!(ids[0], ids[1], "the grandchild's pids differ: {ids:?}");
    // f: MAINPID= names its child as f sees it; status shows the child's pid in warden's.
    let (_, v) = wait_status(&mut sb, "f ready with its MAINPID=", |_, v| {
        v["instances"].as_array().is_some_and(|a| {
            a.iter().any(|i| {
                i["program"] == "f"
                    && i["state"] == "ready"
                    && i["pid"]
                        .as_i64()
                        .is_some_and(|p| last_arg(p as i32) == "1000")
            })
        })
    });
    let main = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["program"] == "f")
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let given: i32 = sb.read("main").trim().parse().unwrap();
    assert_ne!(main, given, "the pids differ between the namespaces");
    assert_eq!(ns_pids(main), vec![main, given]);
    assert!(
        !log(&sb).contains("MAINPID="),
        "MAINPID= not refused; log:\n{}",
        log(&sb)
    );
}

#[test]
fn the_guard_ignores_signals_and_its_death_takes_the_instances_which_warden_starts_again() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started(&test, "", "instances = 2") else {
        return;
    };
    let ns = v["daemon"]["pid_namespace"].as_str().unwrap().to_string();
    let workers: Vec<i64> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap())
        .collect();
    let gcs = grandchildren(&mut sb, warden, 2, &ns);
    let guard = guard_of(warden);
    // An ignored signal is discarded when sent: nothing can end the guard but SIGKILL.
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
    ] {
        signal(guard, sig);
    }
    assert!(alive(guard), "the guard survives catchable signals");
    signal(guard, Signal::SIGKILL);
    // The kernel kills the namespace; warden starts another guard and the instances again.
    let (_, after) = wait_status(&mut sb, "both up again in a new namespace", |_, v| {
        v["daemon"]["pid_namespace"]
            .as_str()
            .is_some_and(|n| n != ns)
            && v["instances"].as_array().is_some_and(|a| {
                a.iter().all(|i| {
                    i["state"] == "running" && !workers.contains(&i["pid"].as_i64().unwrap_or(0))
                })
            })
    });
    for g in gcs {
        assert!(wait_until(TIMEOUT, || !alive(g)), "grandchild {g} left");
    }
    let new_ns = after["daemon"]["pid_namespace"].as_str().unwrap();
    for i in after["instances"].as_array().unwrap() {
        assert_eq!(ns_of(i["pid"].as_i64().unwrap() as i32), new_ns);
    }
    assert!(alive(warden));
    assert_ne!(guard_of(warden), guard);
    assert!(
        log(&sb).contains("is gone, and with it"),
        "the log says what happened:\n{}",
        log(&sb)
    );
    expect(&mut sb, &["stop"], 0);
    assert_no_process(&sb);
}

#[test]
fn without_cap_sys_admin_start_says_pid_namespace_cannot_be_applied() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("setpriv", "util-linux") {
        return;
    }
    let daemon = "pid_namespace = true\n";
    let mut sb = test.supervisor_sandbox(
        daemon,
        "[program.s]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n",
    );
    let setpriv = [
        "setpriv",
        "--bounding-set",
        "-sys_admin",
        "--inh-caps",
        "-sys_admin",
        "--",
    ];
    let out = sb.start_under(&setpriv);
    assert_exit(&out, 0);
    assert_stderr_has(&out, "warning: pid_namespace cannot be applied: ");
    assert!(
        stderr_of(&out).contains("EPERM") || stderr_of(&out).contains("not permitted"),
        "names why: {}",
        stderr_of(&out)
    );
    let (_, v) = wait_status(&mut sb, "s up", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    assert!(v["daemon"]["pid_namespace"].is_null(), "{v:#}");
    let s = v["instances"][0]["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        ns_of(s),
        ns_of(std::process::id() as i32),
        "in warden's own namespace"
    );
    expect(&mut sb, &["stop"], 0);
}

/// As a minimal container image would have it: in a mount namespace where `/bin/sh` and `cat`
/// (what they resolve to) are an empty file that cannot be executed, the errors name the file
/// the guard could not run — `cat` for PID-namespace mode, then `/bin/sh` for the ordinary
/// guard — and the program runs all the same.
#[test]
fn without_an_executable_shell_and_cat_the_errors_name_them() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("unshare", "util-linux") {
        return;
    }
    let mut sb = test.supervisor_sandbox(
        "pid_namespace = true\n",
        "[program.s]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n",
    );
    std::fs::write(sb.path("empty"), "").unwrap();
    let hide = format!(
        "for f in /bin/sh /bin/cat /usr/bin/cat; do \
           if [ -e \"$f\" ]; then mount --bind {} \"$(readlink -f \"$f\")\" || exit 1; fi; \
         done",
        sb.path("empty").display()
    );
    let out = sb.start_in_mount_namespace(&hide);
    assert_exit(&out, 0);
    let err = stderr_of(&out);
    let Some(ns) = err
        .lines()
        .find(|l| l.contains("pid_namespace cannot be applied"))
    else {
        panic!("start says PID-namespace mode cannot be applied: {err}");
    };
    if ns.contains("not permitted") {
        test.skip(&format!("no PID namespace here: {ns}"));
        expect(&mut sb, &["stop"], 0);
        return;
    }
    assert!(
        ns.contains("pid_namespace cannot be applied: /bin/cat: Permission denied"),
        "names cat: {err}"
    );
    let (_, v) = wait_status(&mut sb, "s up", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    assert!(v["daemon"]["pid_namespace"].is_null(), "{v:#}");
    let log = log(&sb);
    assert!(
        log.contains("cannot start the guard process: /bin/sh: Permission denied"),
        "names the shell:\n{log}"
    );
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn an_upgrade_keeps_the_namespace() {
    let test = this_test!();
    let Some((mut sb, warden, v)) = started(&test, "", "") else {
        return;
    };
    let ns = v["daemon"]["pid_namespace"].as_str().unwrap().to_string();
    let guard = guard_of(warden);
    expect(&mut sb, &["upgrade"], 0);
    let after = status_json(&mut sb);
    assert_eq!(after["daemon"]["pid"], warden);
    assert_eq!(after["daemon"]["pid_namespace"], ns.as_str());
    // A new instance goes into the same namespace, and the guard still takes everything.
    expect(&mut sb, &["restart", "w"], 0);
    let (_, v) = wait_status(&mut sb, "w up", |_, v| {
        v["instances"][0]["state"] == "running"
    });
    assert_eq!(ns_of(v["instances"][0]["pid"].as_i64().unwrap() as i32), ns);
    let gcs = grandchildren(&mut sb, warden, 1, &ns);
    kill_together(warden, guard);
    assert!(
        wait_until(TIMEOUT, || sb.processes().is_empty()),
        "left: {:?}",
        left(&sb)
    );
    assert!(!alive(gcs[0]));
}

#[test]
fn a_restarted_instance_never_gets_back_the_pid_just_freed() {
    let test = this_test!();
    // Each run writes its pid and ends soon; warden starts it again, with no fork of this test
    // in between to move the kernel's last pid (the pid is chosen, so the kernel's cursor does
    // not move by itself).
    let again = "[program.again]\ncommand = [\"/bin/sh\", \"-c\", \"echo $$ >> SANDBOX/pids; exec SANDBOX/sleep 0.2\"]\n\
                 backoff_initial = \"10ms\"\nmax_restarts = 1000\n";
    let Some((sb, _warden, _v)) = started(&test, "", again) else {
        return;
    };
    let pids = || -> Vec<String> { sb.read("pids").lines().map(String::from).collect() };
    assert!(
        wait_until(TIMEOUT, || pids().len() >= 8),
        "runs: {:?}; log:\n{}",
        pids(),
        log(&sb)
    );
    let all = pids();
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "a pid came back: {all:?}");
}

#[test]
fn a_launcher_that_exits_before_its_mainpid_ends_the_instance_with_a_warning_not_a_hang() {
    let test = this_test!();
    let forking = format!(
        "[program.d]\ncommand = {}\nready = \"notify\"\nstop_timeout = \"1s\"\n",
        argv(&[&python(), "-c", FORKING_DAEMON, "SANDBOX"])
    );
    let Some((mut sb, _warden, _)) = started(&test, "", &forking) else {
        return;
    };
    // The daemon's MAINPID= (a namespace pid) is taken while its launcher runs.
    let (_, v) = wait_status(&mut sb, "d's main pid is the daemon", |_, v| {
        v["instances"].as_array().is_some_and(|a| {
            a.iter().any(|i| {
                i["program"] == "d"
                    && i["state"] == "ready"
                    && i["pid"]
                        .as_i64()
                        .is_some_and(|p| last_arg(p as i32) == "1000")
            })
        })
    });
    let first = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["program"] == "d")
        .unwrap()["pid"]
        .clone();
    // Then the launcher exits: the daemon is the namespace's init's child now, which warden
    // cannot reap; the instance ends with its launcher instead of never ending.
    std::fs::write(sb.path("go"), "").unwrap();
    assert!(
        wait_until(TIMEOUT, || log(&sb).contains("before its MAINPID= process")),
        "no warning; log:\n{}",
        log(&sb)
    );
    wait_status(&mut sb, "d restarted", |_, v| {
        v["instances"].as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["program"] == "d" && i["pid"] != first && i["restarts"] != 0)
        })
    });
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn with_daemon_user_check_warns_and_start_says_why_pid_namespace_cannot_be_applied() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    // The guard, the namespace's init, starts after the privilege drop: no CAP_SYS_ADMIN then.
    let mut sb = test.supervisor_sandbox(
        "pid_namespace = true\nuser = \"nobody\"\ngroup = \"nogroup\"",
        "[program.s]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n",
    );
    let check = sb.run(&["check"]);
    assert_exit(&check, 0);
    assert_stderr_has(&check, "daemon.pid_namespace");
    assert_stderr_has(&check, "daemon.user = \"nobody\"");
    let out = sb.start_under(&[]);
    assert_exit(&out, 0);
    assert_stderr_has(
        &out,
        "warning: pid_namespace cannot be applied: warden runs as uid 65534",
    );
    expect(&mut sb, &["stop"], 0);
}

/// With `cgroups = "off"`, the end of a process group whose leader exited is seen when its
/// last member exits, not at `stop_timeout`: the member, re-parented to the guard (the
/// namespace's init, which reaps it), brings warden no `SIGCHLD`.
#[test]
fn with_cgroups_off_the_end_of_a_group_whose_leader_exited_is_seen_before_stop_timeout() {
    let test = this_test!();
    // The main process exits; a member of its group ignores SIGTERM, closes its output (as a
    // daemon does, so no end of file tells anything either) and exits by itself a second
    // later, noting when.
    let lingering = "[program.p]\ncommand = [\"/bin/sh\", \"-c\", \"(trap '' TERM; exec >/dev/null 2>&1; \
                     SANDBOX/sleep 1.5; : > SANDBOX/gone) & SANDBOX/sleep 0.5; exit 0\"]\n\
                     stop_timeout = \"30s\"\nrestart = \"never\"\n";
    if !test.require_root() {
        return;
    }
    let daemon = "pid_namespace = true\ncgroups = \"off\"";
    let mut sb = test.supervisor_sandbox(daemon, lingering);
    let warden = sb.start();
    let v = status_json(&mut sb);
    if v["daemon"]["pid_namespace"].is_null() {
        test.skip("no PID namespace here");
        return;
    }
    assert!(
        wait_until(TIMEOUT, || sb.path("gone").exists()),
        "the member never exited; log:\n{}",
        log(&sb)
    );
    let gone = Instant::now();
    // Well before the 30 s stop_timeout (bounded wait: it fails at 15 s).
    let seen = wait_until(std::time::Duration::from_secs(15), || {
        log(&sb).contains("its process group gone")
    });
    assert!(
        seen,
        "group end not seen {:?} after its last member exited; log:\n{}",
        gone.elapsed(),
        log(&sb)
    );
    // And the timer that saw it is gone with the group: warden idles without wake-ups.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let woke = voluntary_switches(warden, std::time::Duration::from_secs(1));
    assert!(woke <= 2, "{woke} wake-ups over 1 s of idling");
    expect(&mut sb, &["stop"], 0);
}

/// Voluntary context switches of `pid` (every thread) over `window`.
fn voluntary_switches(pid: i32, window: std::time::Duration) -> u64 {
    let count = || -> u64 {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
                    .filter_map(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    let before = count();
    std::thread::sleep(window);
    count().saturating_sub(before)
}
