//! warden as a container's entry point: `warden run` as PID 1 of a PID namespace (`unshare
//! --pid --fork --mount-proc`, as root) reaps the orphans re-parented to it and stops on
//! `SIGTERM`; `exit_on_fatal` ends warden with the exit status of a program that ended for good
//! with a failure.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// `warden run` in the foreground, its output in `run.out`; its pid (tracked).
fn run(sb: &mut Sandbox, prefix: &[&str]) -> i32 {
    let out = std::fs::File::create(sb.path("run.out")).unwrap();
    let mut cmd = if prefix.is_empty() {
        sb.warden(&["run"])
    } else {
        let mut c = std::process::Command::new(prefix[0]);
        c.args(&prefix[1..])
            .arg(warden_bin())
            .arg("-c")
            .arg(sb.path("warden.toml"))
            .arg("run")
            .stdin(Stdio::null());
        c
    };
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    sb.spawn(cmd)
}

/// Waits (bounded) for the spawned `pid` to exit; its exit code.
fn exit_of(sb: &mut Sandbox, pid: i32) -> Option<i32> {
    let st = sb.wait_child(pid, TIMEOUT);
    assert!(
        st.is_some(),
        "warden did not exit; output:\n{}",
        sb.read("run.out")
    );
    st.and_then(|s| s.code())
}

#[test]
fn as_pid_1_warden_reaps_orphans_and_stops_on_sigterm_with_status_0() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("unshare", "util-linux") {
        return;
    }
    // 1,000 orphans: each subshell exits at once, leaving its `true` to PID 1.
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.orphans]\ncommand = [\"/bin/sh\", \"-c\", \
         \"i=0; while [ $i -lt 1000 ]; do (true &); i=$((i+1)); done; \
         echo done > SANDBOX/orphans.done; exec SANDBOX/sleep 100\"]\n\
         [program.b]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n",
    );
    let outer = run(&mut sb, &["unshare", "--pid", "--fork", "--mount-proc"]);
    // The warden inside is unshare's child, and PID 1 of its namespace.
    let mut warden = 0;
    assert!(
        wait_until(TIMEOUT, || {
            warden = children_of(outer).first().copied().unwrap_or(0);
            warden != 0 && sb.path("orphans.done").exists()
        }),
        "the orphans were never made:\n{}",
        sb.read("run.out")
    );
    let nspid = status(warden)["NSpid"].clone();
    assert!(
        nspid.ends_with(" 1") || nspid.ends_with("\t1"),
        "NSpid {nspid:?}"
    );
    // Every orphan was reaped: no zombie among PID 1's children (bounded wait).
    let zombies = || -> Vec<i32> {
        children_of(warden)
            .into_iter()
            .filter(|&p| is_zombie(p))
            .collect()
    };
    assert!(
        wait_until(TIMEOUT, || zombies().is_empty()),
        "unreaped orphans: {:?}",
        zombies()
    );
    let everything: Vec<i32> = children_of(warden);
    signal(warden, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(exit_of(&mut sb, outer), Some(0), "{}", sb.read("run.out"));
    // As PID 1, shutdown_timeout (not set here) defaults to 8 s: within docker stop's 10 s.
    assert!(
        log(&sb).contains("reverse dependency order (deadline 8s)"),
        "{}",
        log(&sb)
    );
    assert!(!alive(warden) || is_zombie(warden));
    for p in everything {
        assert!(!alive(p) || is_zombie(p), "pid {p} outlived warden");
    }
}

/// A sandbox running `job` (its `[program.job]` lines) beside a long-lived program, with
/// `exit_on_fatal = true`.
fn fatal_sandbox(test: &Test, job: &str) -> Sandbox {
    test.supervisor_sandbox(
        "exit_on_fatal = true",
        &format!("[program.job]\n{job}\n[program.other]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n"),
    )
}

#[test]
fn exit_on_fatal_ends_warden_with_the_exit_status_of_the_program_that_failed() {
    let test = this_test!();
    for (job, want, why) in [
        (
            "command = [\"/bin/sh\", \"-c\", \"sleep 0.3; exit 3\"]\nrestart = \"never\"",
            3,
            "exit code 3",
        ),
        (
            "command = [\"/bin/sh\", \"-c\", \"sleep 0.3; kill -9 $$\"]\nrestart = \"on-failure\"\n\
             max_restarts = 0",
            137,
            "signal 9",
        ),
        (
            "command = [\"/bin/sh\", \"-c\", \"exit 2\"]\nmax_restarts = 2\nbackoff_initial = \"10ms\"",
            2,
            "crash loop",
        ),
        (
            "command = [\"python3\", \"-c\", \"import os, signal; os.kill(os.getpid(), signal.SIGRTMIN + 2)\"]\n\
             restart = \"never\"",
            128 + 36,
            "a real-time signal (SIGRTMIN+2, 36 with glibc)",
        ),
        // Stopped by warden for a failure (here its start timeout, then its health check),
        // not restarted, and exiting 0 on SIGTERM as most programs do: a failure all the same.
        (
            "command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 0.05; done\"]\n\
             restart = \"never\"\nready = \"notify\"\nstart_timeout = \"300ms\"",
            1,
            "a start timeout",
        ),
        (
            "command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 0.05; done\"]\n\
             restart = \"never\"\n\
             health = { exec = [\"false\"], interval = \"100ms\", retries = 1 }",
            1,
            "a failing health check",
        ),
    ] {
        let mut sb = fatal_sandbox(&test, job);
        let pid = run(&mut sb, &[]);
        let code = exit_of(&mut sb, pid);
        let out = format!("{}{}", sb.read("run.out"), log(&sb));
        assert_eq!(code, Some(want), "{why}:\n{out}");
        assert!(
            out.contains(&format!(
                "exit_on_fatal: stopping everything, then exiting {want}"
            )),
            "{why}:\n{out}"
        );
        assert!(
            out.contains("other[0]: running -> stopping"),
            "{why}:\n{out}"
        );
        assert_no_process(&sb);
    }
}

#[test]
fn exit_on_fatal_leaves_a_successful_one_shot_and_a_requested_stop_at_status_0() {
    let test = this_test!();
    let mut sb = fatal_sandbox(
        &test,
        "command = [\"/bin/sh\", \"-c\", \"exit 0\"]\nrestart = \"on-failure\"",
    );
    let pid = run(&mut sb, &[]);
    let exited = |sb: &Sandbox| log(sb).contains("job[0]: running -> exited");
    assert!(wait_until(TIMEOUT, || exited(&sb)), "{}", log(&sb));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(pid),
        "a job that succeeded ends nothing:\n{}",
        log(&sb)
    );
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(exit_of(&mut sb, pid), Some(0), "{}", log(&sb));
}

/// The instance pids `warden status --json` lists for sandbox `sb`, once every instance is
/// `running` (pids as that warden sees them).
fn running_pids(sb: &mut Sandbox) -> (Vec<i64>, serde_json::Value) {
    let (_, v) = wait_status(sb, "every instance running", |_, v| {
        v["instances"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|i| i["state"] == "running"))
    });
    let pids = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap())
        .collect();
    (pids, v)
}

#[test]
fn wardens_that_are_each_pid_1_of_their_namespace_share_the_network_and_cgroups_without_harm() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("unshare", "util-linux") {
        return;
    }
    let program = "[program.s]\ncommand = [\"SANDBOX/sleep\", \"100\"]\ninstances = 2\n";
    // One warden in this PID namespace, then two that are both pid 1 of namespaces of their
    // own: the same network namespace (abstract notify socket names), the same parent cgroup
    // (each its own base; none taking the others' for a dead warden's).
    let mut host = test.supervisor_sandbox("", program);
    host.start();
    let (before, v) = running_pids(&mut host);
    let mut inner: Vec<Sandbox> = (0..2)
        .map(|_| test.supervisor_sandbox("", program))
        .collect();
    let mut outers = Vec::new();
    for sb in &mut inner {
        outers.push(run(sb, &["unshare", "--pid", "--fork", "--mount-proc"]));
    }
    let mut bases = vec![v["daemon"]["cgroup"].clone()];
    for sb in &mut inner {
        let (pids, v) = running_pids(sb);
        assert_eq!(v["daemon"]["pid"], 1, "pid 1 of its namespace: {v:#}");
        assert!(pids.iter().all(|&p| p > 1), "{pids:?}");
        bases.push(v["daemon"]["cgroup"].clone());
    }
    // The first warden's instances were left alone while the others started.
    let (after, v) = running_pids(&mut host);
    assert_eq!(after, before, "log:\n{}", log(&host));
    assert!(
        !log(&host).contains("warden that is gone"),
        "{}",
        log(&host)
    );
    if v["daemon"]["tracking"] == "cgroup" {
        bases.sort_by_key(|b| b.to_string());
        bases.dedup();
        assert_eq!(bases.len(), 3, "one base each: {bases:?}");
    }
    // Stopping one of the namespaced wardens leaves the other, and the first, running.
    expect(&mut inner[0], &["stop"], 0);
    assert_eq!(exit_of(&mut inner[0], outers[0]), Some(0));
    let (still, _) = running_pids(&mut inner[1]);
    assert_eq!(still.len(), 2);
    assert_eq!(running_pids(&mut host).0, before);
    expect(&mut inner[1], &["stop"], 0);
    expect(&mut host, &["stop"], 0);
}

#[test]
fn a_program_stopped_for_a_missed_start_timeout_is_no_finished_job_to_healthcheck() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox(
        "",
        "[program.job]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 0.05; done\"]\n\
         restart = \"never\"\nready = \"notify\"\nstart_timeout = \"300ms\"\n",
    );
    sb.start();
    let (_, v) = wait_status(&mut sb, "job exited", |_, v| {
        v["instances"][0]["state"] == "exited"
    });
    assert_eq!(
        v["instances"][0]["last_exit"],
        serde_json::json!({"code": 0, "reason": "start_timeout"}),
        "{v}"
    );
    let out = sb.run(&["healthcheck"]);
    assert_exit(&out, 1);
    assert!(
        stdout_of(&out).contains("unhealthy: job[0]: exited"),
        "{}",
        stdout_of(&out)
    );
    expect(&mut sb, &["stop"], 0);
}
