//! Function workers through the library: readiness and heartbeats over the notify protocol, the
//! status snapshot, restart after a kill, captured output, and the refusal to fork from a
//! multi-threaded process.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use nix::sys::signal::Signal;

fn example() -> PathBuf {
    crate::common::example("fn_workers")
}

/// Asks for a snapshot (SIGHUP) and returns its lines once written.
fn snapshot(sb: &Sandbox, pid: i32, previous: &str) -> Vec<Vec<String>> {
    let _ = std::fs::remove_file(sb.path("status.txt"));
    signal(pid, Signal::SIGHUP);
    assert!(
        wait_until(TIMEOUT, || sb.path("status.txt").exists()),
        "no snapshot after {previous}"
    );
    sb.read("status.txt")
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

#[test]
fn function_workers_are_supervised() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let mut cmd = Command::new(example());
    cmd.arg("--dir")
        .arg(&sb.dir)
        .stdin(std::process::Stdio::null());
    let pid = sb.spawn(cmd);
    assert!(
        wait_until(TIMEOUT, || sb.read("app.log").matches("-> ready").count()
            >= 3),
        "three workers ready: {}",
        sb.read("app.log")
    );
    let snap = snapshot(&sb, pid, "start");
    assert_eq!(snap.len(), 3, "{snap:?}");
    let mut workers = Vec::new();
    for (i, row) in snap.iter().enumerate() {
        assert_eq!(row[0], "fn");
        assert_eq!(row[1], i.to_string());
        assert_eq!(row[3], "ready", "{row:?}");
        assert_eq!(row[4], "0");
        assert_eq!(row[5..].join(" "), format!("worker {i} serving"));
        let wpid: i32 = row[2].parse().unwrap();
        sb.track(wpid);
        // Each worker leads its own process group and is a child of the supervisor.
        let st = stat(wpid).unwrap();
        assert_eq!(st.ppid, pid);
        assert_eq!(st.pgrp, wpid);
        // Nothing but stdio is inherited: what the supervisor had open (epoll, sockets, the
        // pidfile, its log) is pointed at /dev/null, keeping the numbers that Rust objects in
        // the forked copy still own from being reused behind their backs.
        let fds = fds(wpid);
        assert_eq!(
            fds.iter().take(3).map(|(fd, _)| *fd).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        for (fd, target) in fds.iter().skip(3) {
            assert_eq!(
                target,
                std::path::Path::new("/dev/null"),
                "fd {fd} of worker {wpid}: {fds:?}"
            );
        }
        workers.push(wpid);
    }
    // Output captured and tagged.
    assert!(sb.read("app.log").contains("fn[1] worker 1 ready"));

    signal(workers[1], Signal::SIGKILL);
    assert!(wait_until(TIMEOUT, || {
        let s = snapshot(&sb, pid, "kill");
        s[1][3] == "ready" && s[1][2] != workers[1].to_string()
    }));
    let snap = snapshot(&sb, pid, "restart");
    assert_eq!(snap[1][4], "1", "one restart counted: {snap:?}");
    sb.track(snap[1][2].parse().unwrap());
    assert!(sb.read("app.log").contains("exited (signal 9 (SIGKILL))"));

    signal(pid, Signal::SIGTERM);
    let st = sb
        .wait_child(pid, TIMEOUT)
        .expect("exits after stopping its workers");
    assert!(st.success());
    for w in workers {
        assert!(!alive(w), "worker {w} stopped");
    }
}

#[test]
fn forking_from_a_multithreaded_process_is_refused_clearly() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let mut cmd = Command::new(example());
    cmd.arg("--dir")
        .arg(&sb.dir)
        .arg("--thread")
        .stdin(std::process::Stdio::null());
    let pid = sb.spawn(cmd);
    assert!(
        wait_until(TIMEOUT, || sb.read("app.log").matches("-> fatal").count()
            >= 3),
        "{}",
        sb.read("app.log")
    );
    assert!(
        sb.read("app.log")
            .contains("refusing to fork: this process has 2 threads")
    );
    assert!(children_of(pid).is_empty(), "no worker was forked");
    signal(pid, Signal::SIGTERM);
    assert!(sb.wait_child(pid, TIMEOUT).expect("exits").success());
}
