//! `warden upgrade` (and `SIGUSR2`): warden replaced in place by the binary now at its path.
//! warden runs from a copy in the sandbox (`bin/warden`), which each test replaces the way a
//! package upgrade does (a new file renamed over it); processes are checked through `/proc`,
//! the pidfile, status and the log. `warden events` clients (text and `--json`) started before
//! an upgrade keep their streams: `upgraded`, then what follows, until warden stops.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::events::{spawn_events, wait_lines};
use crate::rollout::Load;
use crate::sockets::{field, get_unix, held_web, wait_info};

/// A program printing a numbered line every 20 ms (`tick N`), and one sending `WATCHDOG=1`
/// every 100 ms under a 1 s watchdog.
const PROGRAMS: &str = r#"[program.tick]
command = ["/bin/sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done"]
[program.dog]
command = ["PYTHON", "-c", "import os,socket,time\na=os.environ['NOTIFY_SOCKET']\na='\\0'+a[1:] if a.startswith('@') else a\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.sendto(b'READY=1',a)\nwhile True:\n  time.sleep(0.1)\n  s.sendto(b'WATCHDOG=1',a)"]
ready = "notify"
watchdog = "1s"
"#;

/// Copies `from` to `to` with cp(1): an executable written through a descriptor of this
/// multi-threaded process could be held open for writing by a child another test forks in that
/// instant, and its exec then fails with ETXTBSY.
fn cp(from: &Path, to: &Path) {
    let st = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// warden's binary copied to `bin/warden` in the sandbox.
fn copy_of_warden(sb: &Sandbox) -> PathBuf {
    let bin = sb.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("warden");
    cp(&warden_bin(), &exe);
    exe
}

/// Replaces the file at `exe` with `with` as a package manager does: a new file renamed over
/// it (the running binary keeps its own inode).
fn replace(exe: &Path, with: &Path) {
    let new = exe.with_extension("new");
    cp(with, &new);
    std::fs::rename(&new, exe).unwrap();
}

/// A shell script at `path`, executable (written by sh(1), not through a descriptor of this
/// process: see [`cp`]).
fn shell(path: &Path, body: &str) -> PathBuf {
    let script = format!("#!/bin/sh\n{body}\n");
    let st = Command::new("sh")
        .arg("-c")
        .arg("printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"")
        .arg("sh")
        .arg(&script)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    path.to_path_buf()
}

/// `warden start` from `exe`; the daemon's pid (tracked).
fn start_from(sb: &mut Sandbox, exe: &Path, env: &[(&str, &str)]) -> i32 {
    let mut cmd = sb.warden(&["start"]);
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut from = Command::new(exe);
    from.args(args).stdin(std::process::Stdio::null());
    from.env_remove("NOTIFY_SOCKET");
    for (k, v) in env {
        from.env(k, v);
    }
    let _ = &mut cmd;
    let out = sb.output(from);
    assert_eq!(exit_code(&out), Some(0), "start: {}", stderr_of(&out));
    let pid = sb.pidfile_pid().expect("a pidfile");
    sb.track(pid);
    pid
}

/// Every instance's (program, index, pid, restarts), in order.
fn instances(v: &Value) -> Vec<(String, i64, i64, i64)> {
    v["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["program"].as_str().unwrap_or("").to_string(),
                        i["index"].as_i64().unwrap_or(-1),
                        i["pid"].as_i64().unwrap_or(-1),
                        i["restarts"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every instance is up (running or ready).
fn all_up(sb: &mut Sandbox) -> Value {
    wait_status(sb, "every instance up", |_, v| {
        v["instances"].as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter()
                    .all(|i| i["state"] == "running" || i["state"] == "ready")
        })
    })
    .1
}

/// The numbers of the `tick N` lines in the log, in order.
fn ticks(sb: &Sandbox) -> Vec<u64> {
    log(sb)
        .lines()
        .filter_map(|l| l.split("tick[0] tick ").nth(1)?.trim().parse().ok())
        .collect()
}

#[test]
fn an_upgrade_keeps_the_pid_the_programs_their_counters_and_every_output_line() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", PROGRAMS);
    let exe = copy_of_warden(&sb);
    let warden = start_from(&mut sb, &exe, &[]);
    let before = all_up(&mut sb);
    // A restart counted before, to see it kept.
    expect(&mut sb, &["restart", "tick"], 0);
    let before = {
        let _ = before;
        all_up(&mut sb)
    };
    let uptime_before = before["daemon"]["uptime_secs"].as_f64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    replace(&exe, &warden_bin());
    let out = expect(&mut sb, &["upgrade"], 0);
    assert!(
        out.contains(&format!("in place (pid {warden})")) && out.contains("upgraded warden"),
        "{out}"
    );
    // Same warden, same programs, same counters; the uptime goes on.
    let after = status_json(&mut sb);
    assert_eq!(after["daemon"]["pid"].as_i64(), Some(warden as i64));
    assert_eq!(instances(&after), instances(&before), "{after:#}");
    assert!(after["daemon"]["uptime_secs"].as_f64().unwrap() >= uptime_before);
    assert_eq!(sb.pidfile_pid(), Some(warden));
    // The new image is the new file: /proc/PID/exe names it (not "(deleted)").
    let exe_link = std::fs::read_link(format!("/proc/{warden}/exe")).unwrap();
    assert!(
        !exe_link.to_string_lossy().contains("deleted"),
        "{exe_link:?}"
    );
    // Output written before, during and after the upgrade: every line, in order.
    std::thread::sleep(Duration::from_millis(1500));
    // The lines of the process that runs now (the restart above started it at 0).
    let all = ticks(&sb);
    let from = all.iter().rposition(|&n| n == 0).unwrap_or(0);
    let seen = &all[from..];
    assert!(seen.len() > 50, "{seen:?}");
    let first = seen[0];
    let gaps: Vec<_> = seen
        .iter()
        .zip(first..)
        .filter(|(a, b)| **a != *b)
        .take(3)
        .collect();
    assert!(
        gaps.is_empty(),
        "lines lost or repeated: {gaps:?}\n{}",
        log(&sb)
    );
    // Watchdog pings still reach it: 1.5 s after the upgrade dog[0] was not killed.
    let now = status_json(&mut sb);
    assert_eq!(instances(&now), instances(&before), "{}", log(&sb));
    assert!(!log(&sb).contains("watchdog timeout"), "{}", log(&sb));
    // And it is a working warden: a restart, then a clean stop.
    expect(&mut sb, &["restart", "dog"], 0);
    expect(&mut sb, &["stop"], 0);
    assert!(wait_until(TIMEOUT, || !alive(warden)));
    assert_no_process(&sb);
}

#[test]
fn sigusr2_upgrades_too() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", PROGRAMS);
    let exe = copy_of_warden(&sb);
    let warden = start_from(&mut sb, &exe, &[]);
    let before = all_up(&mut sb);
    replace(&exe, &warden_bin());
    signal(warden, nix::sys::signal::Signal::SIGUSR2);
    assert!(
        wait_until(TIMEOUT, || log(&sb).contains("upgraded in place")),
        "{}",
        log(&sb)
    );
    let after = status_json(&mut sb);
    assert_eq!(after["daemon"]["pid"].as_i64(), Some(warden as i64));
    assert_eq!(instances(&after), instances(&before));
}

/// Starts warden from a copy, replaces the copy with `bad`, runs `upgrade`: it must fail with
/// `needle` while warden runs on, untouched.
fn refused(test: &Test, bad: impl FnOnce(&Sandbox) -> PathBuf, env: &[(&str, &str)], needle: &str) {
    let mut sb = test.supervisor_sandbox("", PROGRAMS);
    let exe = copy_of_warden(&sb);
    let warden = start_from(&mut sb, &exe, env);
    let before = all_up(&mut sb);
    let bad = bad(&sb);
    replace(&exe, &bad);
    let out = sb.run(&["upgrade"]);
    assert_eq!(
        exit_code(&out),
        Some(1),
        "{}\n{}",
        stderr_of(&out),
        log(&sb)
    );
    assert!(
        stderr_of(&out).contains(needle),
        "missing {needle:?}: {}\n{}",
        stderr_of(&out),
        log(&sb)
    );
    let after = status_json(&mut sb);
    assert_eq!(
        after["daemon"]["pid"].as_i64(),
        Some(warden as i64),
        "{}",
        log(&sb)
    );
    assert_eq!(instances(&after), instances(&before));
    assert!(log(&sb).contains("upgrade failed"));
    expect(&mut sb, &["stop"], 0);
}

#[test]
fn an_upgrade_to_a_script_that_exits_1_is_refused() {
    let test = this_test!();
    refused(
        &test,
        |sb| shell(&sb.path("bad"), "exit 1"),
        &[],
        "--version: not a warden (exit status 1)",
    );
}

#[test]
fn an_upgrade_to_a_binary_that_fails_its_check_is_refused() {
    let test = this_test!();
    let real = path_str(&warden_bin());
    refused(
        &test,
        |sb| {
            shell(
                &sb.path("bad"),
                &format!(
                    "case \"$*\" in *check*) echo 'warden.toml:3:1: broken' >&2; exit 6;; esac\nexec {real} \"$@\""
                ),
            )
        },
        &[],
        "check failed: exit status 6: warden.toml:3:1: broken",
    );
}

#[test]
fn an_upgrade_to_a_build_that_does_not_read_this_state_is_refused() {
    let test = this_test!();
    let real = path_str(&warden_bin());
    refused(
        &test,
        |sb| {
            shell(
                &sb.path("bad"),
                &format!("case \"$*\" in *--formats*) echo 99; exit 0;; esac\nexec {real} \"$@\""),
            )
        },
        &[],
        "does not read state format 1",
    );
}

#[test]
fn a_new_image_that_cannot_take_over_goes_back_to_the_previous_binary() {
    let test = this_test!();
    // The new image fails before it confirms (the testing switch): the previous binary, kept
    // open, is executed again with the same state.
    refused(
        &test,
        |_| warden_bin(),
        &[("WARDEN_TEST_FAIL_TAKEOVER", "1")],
        "upgrade failed: WARDEN_TEST_FAIL_TAKEOVER is set",
    );
}

#[test]
fn an_upgrade_is_refused_while_the_configuration_file_has_changes_not_applied() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", PROGRAMS);
    let exe = copy_of_warden(&sb);
    let warden = start_from(&mut sb, &exe, &[]);
    all_up(&mut sb);
    sb.write_programs("", &PROGRAMS.replace("0.02", "0.03"));
    let out = sb.run(&["upgrade"]);
    assert_eq!(exit_code(&out), Some(1));
    assert!(
        stderr_of(&out).contains("run `warden reload` first") && stderr_of(&out).contains("tick"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(sb.pidfile_pid(), Some(warden));
}

/// How many times `needle` occurs in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// `[daemon]` settings a reload cannot apply do not refuse an upgrade when the new image can
/// take them (`log_format`, `shutdown_timeout`: applied) or keeps them as they run
/// (`pid_namespace`: the instances stay where they are), and the upgrade says which is which,
/// once each. A setting an upgrade cannot apply (`metrics`) refuses it, saying that it takes a
/// restart of warden, not a reload.
#[test]
fn restart_only_daemon_settings_are_applied_or_kept_by_an_upgrade_and_said_once() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", PROGRAMS);
    let exe = copy_of_warden(&sb);
    let warden = start_from(&mut sb, &exe, &[]);
    let before = instances(&all_up(&mut sb));
    let changed = "log_format = \"json\"\nshutdown_timeout = \"7s\"\npid_namespace = true";
    sb.write_programs(changed, PROGRAMS);
    expect(&mut sb, &["reload"], 0);
    let out = expect(&mut sb, &["upgrade"], 0);
    for note in [
        "note: daemon.log_format changed: applied by the upgrade",
        "note: daemon.shutdown_timeout changed: applied by the upgrade",
        "note: daemon.pid_namespace changed: kept as it runs",
    ] {
        assert_eq!(count(&out, note), 1, "{note:?} once in\n{out}");
    }
    assert_eq!(sb.pidfile_pid(), Some(warden));
    assert_eq!(
        instances(&all_up(&mut sb)),
        before,
        "the programs are untouched"
    );
    assert!(
        wait_until(TIMEOUT, || log(&sb)
            .lines()
            .any(|l| l.starts_with('{') && l.contains("upgraded in place"))),
        "the new image logs in JSON:\n{}",
        log(&sb)
    );
    // The kept setting still differs from what runs; the applied ones do not.
    let out = expect(&mut sb, &["reload"], 0);
    assert_eq!(
        count(
            &out,
            "daemon.pid_namespace changed: takes effect when warden restarts"
        ),
        1,
        "{out}"
    );
    assert!(
        !out.contains("log_format") && !out.contains("shutdown_timeout"),
        "{out}"
    );

    sb.write_programs(
        &format!("{changed}\nmetrics = \"SANDBOX/m.sock\""),
        PROGRAMS,
    );
    expect(&mut sb, &["reload"], 0);
    let out = sb.run(&["upgrade"]);
    assert_exit(&out, 1);
    let err = stderr_of(&out);
    let want = "daemon.metrics changed, which only a restart of warden applies (`warden upgrade` \
                cannot): restart warden (`warden restart`), or revert it";
    assert_eq!(count(&err, want), 1, "{err}");
    assert!(
        !err.contains("reload") && !err.contains("pid_namespace"),
        "{err}"
    );
    assert_eq!(sb.pidfile_pid(), Some(warden));
}

#[test]
fn requests_over_a_held_socket_never_fail_across_an_upgrade() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    held_web(&sb, &[]);
    let exe = copy_of_warden(&sb);
    let warden = start_from(&mut sb, &exe, &[]);
    let sock = sb.path("web.sock");
    let info = wait_info(&sb, &sock, |i| field(i, "pid").is_some());
    let inode = |v: &Value| v["sockets"][0]["inode"].as_u64();
    let before = status_json(&mut sb);
    let load = Load::start(sock.clone());
    std::thread::sleep(Duration::from_millis(200));
    replace(&exe, &warden_bin());
    expect(&mut sb, &["upgrade"], 0);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed, _) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let after = status_json(&mut sb);
    assert_eq!(inode(&after), inode(&before), "the same socket");
    assert_eq!(after["daemon"]["pid"].as_i64(), Some(warden as i64));
    let info_after = get_unix(&sock, "/info").unwrap_or_default();
    assert_eq!(
        field(&info_after, "pid"),
        field(&info, "pid"),
        "the same program"
    );
}

#[test]
fn control_requests_made_during_upgrades_are_all_answered() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", PROGRAMS);
    let exe = copy_of_warden(&sb);
    start_from(&mut sb, &exe, &[]);
    all_up(&mut sb);
    // A client asking for status over and over, one connection each, while warden is upgraded
    // five times: connections open at an exec are handed over too, and answered by the new image.
    let sock = sb.path("warden.sock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let client = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (mut ok, mut failed) = (0u32, Vec::new());
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !flag.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            let answer = (|| -> std::io::Result<String> {
                let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                Ok(line)
            })();
            match answer {
                Ok(l) if l.contains("\"ok\":true") => ok += 1,
                Ok(l) => failed.push(l),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    for _ in 0..5 {
        replace(&exe, &warden_bin());
        expect(&mut sb, &["upgrade"], 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0);
    expect(&mut sb, &["stop"], 0);
}

/// One program that sleeps: its events come only from `restart`.
const SLEEPER: &str = "[program.web]\ncommand = [\"SANDBOX/sleep\", \"1000\"]\n";

/// The `--json` events in `SANDBOX/OUT` so far.
fn json_events(sb: &Sandbox, out: &str) -> Vec<Value> {
    sb.read(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{out}: {l}: {e}")))
        .collect()
}

/// `warden events` (`--json` to `events.json`, text to `events.txt`), both seen subscribed: a
/// `restart web` (again until both tell of it) is streamed to each. Returns their pids.
fn subscribe_both(sb: &mut Sandbox) -> (i32, i32) {
    let json = spawn_events(sb, &["--json"], "events.json");
    let text = spawn_events(sb, &[], "events.txt");
    let told = wait_until(TIMEOUT, || {
        expect(sb, &["restart", "web"], 0);
        sb.read("events.json").contains(r#""event":"started""#)
            && sb.read("events.txt").contains("web[0]: started")
    });
    assert!(told, "the clients never subscribed:\n{}", log(sb));
    (json, text)
}

/// Stops warden; `warden events` `client` (stderr in `OUT.err`) then exits 0.
fn stream_ends_at_the_stop(sb: &mut Sandbox, clients: &[(i32, &str)]) {
    expect(sb, &["stop"], 0);
    for &(pid, out) in clients {
        let status = sb.wait_child(pid, TIMEOUT).expect("warden events ended");
        assert_eq!(
            status.code(),
            Some(0),
            "warden events ({out}): {status:?}; stderr: {}",
            sb.read(&format!("{out}.err"))
        );
    }
}

#[test]
fn event_streams_go_on_across_an_upgrade_which_is_one_more_event() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", SLEEPER);
    let exe = copy_of_warden(&sb);
    start_from(&mut sb, &exe, &[]);
    all_up(&mut sb);
    let (json, text) = subscribe_both(&mut sb);
    replace(&exe, &warden_bin());
    expect(&mut sb, &["upgrade"], 0);
    let version = env!("CARGO_PKG_VERSION");
    let upgraded = format!("warden: upgraded: {version} -> {version}");
    wait_lines(&sb, "events.txt", "the upgrade", |l| {
        l.iter().any(|l| l.ends_with(&upgraded))
    });
    // Events caused after the upgrade reach both, after `upgraded`.
    expect(&mut sb, &["restart", "web"], 0);
    let lines = wait_lines(&sb, "events.txt", "a restart after the upgrade", |l| {
        l.iter()
            .skip_while(|l| !l.ends_with(&upgraded))
            .any(|l| l.contains("web[0]: started (pid "))
    });
    let after: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.ends_with(&upgraded))
        .collect();
    assert!(after[0].starts_with("20"), "{lines:#?}");
    for what in [
        "web[0]: stopping (pid ",
        "web[0]: exited (pid ",
        "web[0]: started (pid ",
    ] {
        assert!(after.iter().any(|l| l.contains(what)), "{what}: {lines:#?}");
    }
    wait_lines(&sb, "events.json", "the restart after the upgrade", |l| {
        l.iter()
            .skip_while(|l| !l.contains(r#""event":"upgraded""#))
            .any(|l| l.contains(r#""event":"started""#))
    });
    let events = json_events(&sb, "events.json");
    let at = events
        .iter()
        .position(|e| e["event"] == "upgraded")
        .expect("an upgraded event");
    let e = &events[at];
    assert_eq!(
        (&e["from"], &e["to"]),
        (&Value::from(version), &Value::from(version))
    );
    for key in ["program", "instance", "pid"] {
        assert_eq!(e[key], Value::Null, "{e}");
    }
    let names: Vec<&str> = events[at + 1..]
        .iter()
        .filter(|e| e["program"] == "web")
        .map(|e| e["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names[0], "stopping", "{names:?}");
    assert!(
        names.contains(&"exited") && names.contains(&"started"),
        "{names:?}"
    );
    stream_ends_at_the_stop(&mut sb, &[(json, "events.json"), (text, "events.txt")]);
}

#[test]
fn event_streams_go_on_when_the_new_image_cannot_take_over() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", SLEEPER);
    let exe = copy_of_warden(&sb);
    start_from(&mut sb, &exe, &[("WARDEN_TEST_FAIL_TAKEOVER", "1")]);
    all_up(&mut sb);
    let (json, text) = subscribe_both(&mut sb);
    replace(&exe, &warden_bin());
    expect(&mut sb, &["upgrade"], 1);
    let before = json_events(&sb, "events.json").len();
    expect(&mut sb, &["restart", "web"], 0);
    wait_lines(
        &sb,
        "events.json",
        "a restart after the failed upgrade",
        |l| {
            l[before..]
                .iter()
                .any(|l| l.contains(r#""event":"started""#))
        },
    );
    let events = json_events(&sb, "events.json");
    assert!(
        events.iter().all(|e| e["event"] != "upgraded"),
        "{events:#?}"
    );
    stream_ends_at_the_stop(&mut sb, &[(json, "events.json"), (text, "events.txt")]);
}

#[test]
fn a_sigterm_that_arrives_during_the_hand_over_is_handled_by_the_new_image() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", PROGRAMS);
    let exe = copy_of_warden(&sb);
    let warden = start_from(&mut sb, &exe, &[]);
    all_up(&mut sb);
    // The new binary's `check` says when it runs, then takes its time: the SIGTERM surely
    // arrives while the old image hands over, after its loop last read its signals.
    let real = path_str(&warden_bin());
    let flag = path_str(&sb.path("checking"));
    let slow = shell(
        &sb.path("slow"),
        &format!("case \"$*\" in *check*) touch {flag}; sleep 1;; esac\nexec {real} \"$@\""),
    );
    replace(&exe, &slow);
    signal(warden, nix::sys::signal::Signal::SIGUSR2);
    assert!(
        wait_until(TIMEOUT, || sb.path("checking").exists()),
        "{}",
        log(&sb)
    );
    signal(warden, nix::sys::signal::Signal::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || !alive(warden) || is_zombie(warden)),
        "warden ran on after a SIGTERM sent during its upgrade:\n{}",
        log(&sb)
    );
    let log = log(&sb);
    assert!(log.contains("upgraded in place"), "{log}");
    assert!(log.contains("graceful shutdown"), "{log}");
}
