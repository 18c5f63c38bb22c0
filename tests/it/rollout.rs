//! Rolling restarts that start the new instance beside the old (`update = "surge"`), probation
//! and rollback, against the socket-activated fixture (`tests/fixtures/activated.rs`) behind a
//! socket warden holds: requests sent all along, processes checked through `/proc` and status.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::sockets::{field, get_unix, wait_info};

/// A program `web` of `instances` running the fixture with `args`, receiving the held socket
/// `web.sock`, ready by notify, with `extra` lines in its table.
fn web(sb: &Sandbox, instances: u32, args: &[&str], extra: &str) {
    let fixture = path_str(&example("activated"));
    let mut argv_parts = vec![fixture.as_str(), "--notify"];
    argv_parts.extend_from_slice(args);
    sb.write_programs(
        "",
        &format!(
            "[socket.web]\nlisten = \"SANDBOX/web.sock\"\n\
             [program.web]\ncommand = {}\nsockets = [\"web\"]\nready = \"notify\"\n\
             instances = {instances}\n{extra}\n",
            argv(&argv_parts)
        ),
    );
}

/// A client asking `GET /` over and over until stopped (bounded by [`TIMEOUT`]): how many
/// requests succeeded and failed, and which pids answered.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u32, u32, BTreeSet<String>)>,
}

impl Load {
    pub(crate) fn start(sock: PathBuf) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed, mut pids) = (0, 0, BTreeSet::new());
            let deadline = Instant::now() + TIMEOUT;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match get_unix(&sock, "/") {
                    Some(body) => {
                        ok += 1;
                        pids.insert(body);
                    }
                    None => failed += 1,
                }
            }
            (ok, failed, pids)
        });
        Load { stop, thread }
    }

    pub(crate) fn finish(self) -> (u32, u32, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the client thread")
    }
}

/// The pids of `web`'s instances in `v`, incoming ones included.
fn pids(v: &Value) -> Vec<i64> {
    v["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["pid"].as_i64()).collect())
        .unwrap_or_default()
}

fn cmdline(pid: i64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn program<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["programs"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["program"] == name))
        .unwrap_or_else(|| panic!("no program {name} in {v:#}"))
}

fn started(sb: &mut Sandbox, sock: &Path) -> Vec<i64> {
    sb.start();
    wait_info(sb, sock, |i| field(i, "pid").is_some());
    pids(&status_json(sb))
}

#[test]
fn a_surge_restart_starts_the_new_instance_beside_the_old_and_no_request_fails() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    // The new instance takes 1 s to start serving: the old one serves meanwhile.
    web(
        &sb,
        1,
        &["--slow-start", "1s"],
        "update = \"surge\"\nprobation = \"3s\"",
    );
    let sock = sb.path("web.sock");
    let old = started(&mut sb, &sock);
    assert_eq!(old.len(), 1, "{old:?}");
    let load = Load::start(sock.clone());
    std::thread::sleep(Duration::from_millis(200));
    let mut restart = sb.warden(&["restart", "web"]);
    let restart = restart
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("warden restart");
    // Both run at once, the replacement marked as such.
    let (_, v) = wait_status(
        &mut sb,
        "the replacement beside the old instance",
        |_, v| {
            v["instances"]
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().any(|i| i["incoming"] == true))
        },
    );
    let both = pids(&v);
    assert!(both.contains(&old[0]), "the old instance runs on: {v:#}");
    assert!(both.iter().all(|&p| alive(p as i32)), "{both:?}");
    let out = wait_output(restart, TIMEOUT);
    assert_eq!(
        exit_code(&out),
        Some(0),
        "{}\n{}",
        stderr_of(&out),
        log(&sb)
    );
    let (ok, failed, answered) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        ok + failed,
        log(&sb)
    );
    let v = status_json(&mut sb);
    let now = pids(&v);
    assert_eq!(now.len(), 1, "one instance again: {now:?}");
    assert_ne!(now[0], old[0]);
    // The same instance to an operator: restarted once.
    assert_eq!(v["instances"][0]["restarts"], 1, "{v:#}");
    assert!(
        wait_until(TIMEOUT, || !alive(old[0] as i32)),
        "the old one stopped"
    );
    assert!(answered.len() >= 2, "both answered: {answered:?}");
    assert!(log(&sb).contains("web[0]: starting its replacement beside it (surge)"));
}

#[test]
fn a_reload_that_changes_the_command_rolls_out_by_surge_without_a_failed_request() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    web(&sb, 2, &[], "update = \"surge\"\nprobation = \"500ms\"");
    let sock = sb.path("web.sock");
    let old = started(&mut sb, &sock);
    assert_eq!(old.len(), 2);
    let load = Load::start(sock.clone());
    std::thread::sleep(Duration::from_millis(200));
    web(
        &sb,
        2,
        &["--slow-start", "300ms"],
        "update = \"surge\"\nprobation = \"500ms\"",
    );
    let out = expect(&mut sb, &["reload"], 0);
    let (ok, failed, _) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        ok + failed,
        log(&sb)
    );
    assert!(out.contains("web"), "{out}");
    let now = pids(&status_json(&mut sb));
    assert_eq!(now.len(), 2, "{now:?}");
    for p in &now {
        assert!(!old.contains(p), "{now:?} vs {old:?}");
        assert!(cmdline(*p).contains("--slow-start"), "{}", cmdline(*p));
    }
}

/// Starts `web` (2 instances, surge) on the good command, then reloads to `bad` with `extra`
/// table lines: the reload must fail naming `needle`, the old instances keep serving, and
/// status marks web rolled back until a good reload.
fn rolled_back(test: &Test, bad: &[&str], extra: &str, needle: &str) {
    let mut sb = test.supervisor_sandbox("", "");
    let good_extra = format!("update = \"surge\"\n{extra}");
    web(&sb, 2, &[], &good_extra);
    let sock = sb.path("web.sock");
    let old = started(&mut sb, &sock);
    assert_eq!(old.len(), 2);
    web(&sb, 2, bad, &good_extra);
    let load = Load::start(sock.clone());
    let out = sb.run(&["reload"]);
    let (ok, failed, _) = load.finish();
    assert_ne!(
        exit_code(&out),
        Some(0),
        "the reload must fail\n{}",
        log(&sb)
    );
    let err = stderr_of(&out);
    assert!(
        err.contains("rolled back web: web[0] "),
        "{err}\n{}",
        log(&sb)
    );
    assert!(
        err.contains(needle),
        "missing {needle:?} in {err}\n{}",
        log(&sb)
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed\n{}",
        ok + failed,
        log(&sb)
    );
    // The old instances serve on: same pids, nothing else left.
    let v = status_json(&mut sb);
    assert_eq!(pids(&v), old, "{v:#}\n{}", log(&sb));
    assert!(
        program(&v, "web")["rolled_back"]
            .as_str()
            .is_some_and(|w| w.contains(needle)),
        "{v:#}"
    );
    let table = stdout_of(&sb.run(&["status"]));
    assert!(table.contains("web: rolled back ("), "{table}");
    assert!(log(&sb).contains("rolling back to the previous settings"));
    // A reload that applies clears the mark.
    web(&sb, 2, &[], &good_extra);
    expect(&mut sb, &["reload"], 0);
    let v = status_json(&mut sb);
    assert!(program(&v, "web").get("rolled_back").is_none(), "{v:#}");
}

#[test]
fn a_rollout_to_a_command_that_exits_at_once_is_rolled_back() {
    let test = this_test!();
    // An unknown flag: the fixture exits 2 at once.
    rolled_back(&test, &["--no-such-flag"], "", "exited with status 2 after");
}

#[test]
fn a_rollout_to_a_command_that_never_becomes_ready_is_rolled_back() {
    let test = this_test!();
    // Neither serves nor says READY=1 for 30 s.
    rolled_back(
        &test,
        &["--slow-start", "30s"],
        "probation = \"1s\"",
        "did not become ready within its probation (1s)",
    );
}

#[test]
fn a_rollout_to_a_command_that_fails_its_health_check_is_rolled_back() {
    let test = this_test!();
    // An HTTP check through the shared socket would reach whichever instance accepts: the
    // check asks the instance it checks (`WARDEN_PID`) whether it is the failing version.
    rolled_back(
        &test,
        &["--fail-health"],
        "probation = \"5s\"\n[program.web.health]\n\
         exec = [\"/bin/sh\", \"-c\", \"! grep -q fail-health /proc/$WARDEN_PID/cmdline || { echo failing; exit 1; }\"]\n\
         interval = \"200ms\"\nretries = 2",
        "failed its health check (exit code 1: failing) after",
    );
}

#[test]
fn instances_already_replaced_are_rolled_back_too() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let extra = "update = \"surge\"\nprobation = \"3s\"";
    web(&sb, 2, &[], extra);
    let sock = sb.path("web.sock");
    let old = started(&mut sb, &sock);
    // The new version is ready at once, then dies after answering 3 requests (its own load):
    // web[0] is replaced and then fails on probation while web[1] is being replaced.
    web(&sb, 2, &["--exit-after", "3", "--exit-code", "4"], extra);
    let load = Load::start(sock.clone());
    let out = sb.run(&["reload"]);
    let _ = load.finish();
    assert_ne!(exit_code(&out), Some(0), "{}", log(&sb));
    assert!(
        stderr_of(&out).contains("exited with status 4"),
        "{}\n{}",
        stderr_of(&out),
        log(&sb)
    );
    // Every instance runs the previous command again.
    wait_status(&mut sb, "two instances of the old command", |_, v| {
        let now = pids(v);
        now.len() == 2 && now.iter().all(|&p| !cmdline(p).contains("--exit-after"))
    });
    assert_eq!(old.len(), 2);
}

#[test]
fn a_replace_restart_under_the_same_load_is_counted_and_reported() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    // The same program as the surge test, stopped then started: what it costs is counted and
    // printed (requests wait in the held socket's queue while nothing accepts), not hidden.
    web(&sb, 1, &["--slow-start", "300ms"], "update = \"replace\"");
    let sock = sb.path("web.sock");
    let old = started(&mut sb, &sock);
    let load = Load::start(sock.clone());
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    expect(&mut sb, &["restart", "web"], 0);
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed, answered) = load.finish();
    let now = pids(&status_json(&mut sb));
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], old[0], "restarted");
    assert!(answered.len() >= 2, "both answered: {answered:?}");
    println!(
        "[replace] {failed} of {} requests failed during a stop-then-start restart of {took:?} \
         (the figures side by side with surge: cargo bench --bench deploy)",
        ok + failed
    );
}

#[test]
fn stopping_warden_during_a_probation_rolls_nothing_back_and_starts_nothing() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    web(&sb, 1, &[], "update = \"surge\"\nprobation = \"30s\"");
    let sock = sb.path("web.sock");
    let warden = started(&mut sb, &sock)[0];
    let _ = warden;
    // The restart waits for the 30 s probation: stop warden meanwhile.
    let mut restart = sb.warden(&["restart", "web", "--timeout", "60s"]);
    let restart = restart
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("warden restart");
    wait_status(&mut sb, "the replacement in place", |_, v| {
        v["instances"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["state"] == "ready" && a[0]["restarts"] == 1)
    });
    let daemon = sb.pidfile_pid().expect("a pidfile");
    expect(&mut sb, &["stop"], 0);
    let _ = wait_output(restart, TIMEOUT);
    assert!(wait_until(TIMEOUT, || !alive(daemon)));
    let text = log(&sb);
    assert!(!text.contains("rolling back"), "{text}");
    assert!(!text.contains("rolled back"), "{text}");
    assert_no_process(&sb);
}
