//! The event stream and JSON logs from the outside: `warden events` following a crash in order
//! with the right pids (text and `--json`), ending with exit 0 when warden stops and failing
//! clearly when it is not running; a subscriber that never reads, cut off while programs
//! crash-loop and `status` keeps answering; a read-only client following it; a reload and a
//! health check turning failing then passing told as events; a program stopped for its
//! requirement told as `waiting`, not `stopped`; `log_format = "json"` for
//! warden's own lines, for captured output in its log and in a program's output file, and a bad
//! value's error.
//!
//! `warden events` runs as a child whose stdout is a file in the sandbox, read with bounded
//! polls; programs run `SANDBOX/sleep` so that their command lines name the sandbox.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// A program that runs 0.3 s and exits 3; its second restart waits `backoff_initial`.
const CRASH: &str = "[program.crash]\ncommand = [\"/bin/sh\", \"-c\", \"SANDBOX/sleep 0.3; exit 3\"]\n\
                     backoff_initial = \"200ms\"\n";

/// Spawns `warden events ARGS…` with its stdout in `SANDBOX/OUT`; returns its pid.
pub(crate) fn spawn_events(sb: &mut Sandbox, args: &[&str], out: &str) -> i32 {
    let mut cmd = sb.warden(&["events"]);
    cmd.args(args)
        .stdout(std::fs::File::create(sb.path(out)).unwrap())
        .stderr(std::fs::File::create(sb.path(&format!("{out}.err"))).unwrap());
    sb.spawn(cmd)
}

/// Waits until `SANDBOX/OUT` has a line for which `pred` holds; returns its lines.
pub(crate) fn wait_lines(
    sb: &Sandbox,
    out: &str,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let lines = || -> Vec<String> { sb.read(out).lines().map(String::from).collect() };
    let seen = wait_until(TIMEOUT, || pred(&lines()));
    assert!(
        seen,
        "{out} never showed {what}:\n{}\nlog:\n{}",
        sb.read(out),
        log(sb)
    );
    lines()
}

/// The pid in a text event line: `… (pid N)…`.
fn pid_in(line: &str) -> Option<i32> {
    let rest = line.split("(pid ").nth(1)?;
    rest.split(')').next()?.parse().ok()
}

/// Stops warden and checks that the `events` client `client` then exits 0.
fn stop_and_expect_stream_end(sb: &mut Sandbox, client: i32) {
    assert_exit(&sb.run(&["stop"]), 0);
    let status = sb.wait_child(client, TIMEOUT).expect("warden events ended");
    assert_eq!(
        status.code(),
        Some(0),
        "warden events: {status:?}; stderr: {}",
        sb.read("events.txt.err")
    );
}

#[test]
fn a_crash_streams_started_exited_restarting_started_in_order_with_the_pids() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", CRASH);
    sb.start();
    let client = spawn_events(&mut sb, &[], "events.txt");
    // A whole cycle seen from its start: started, exited, restarting, started.
    let cycle = |lines: &[String]| -> Option<usize> {
        let first = lines.iter().position(|l| l.contains("crash[0]: started"))?;
        (lines.len() >= first + 4).then_some(first)
    };
    let lines = wait_lines(&sb, "events.txt", "a crash and a restart", |l| {
        cycle(l).is_some()
    });
    let i = cycle(&lines).unwrap();
    let (started, exited, restarting, again) =
        (&lines[i], &lines[i + 1], &lines[i + 2], &lines[i + 3]);
    let a = pid_in(started).expect("started names its pid");
    assert!(
        exited.contains(&format!("crash[0]: exited (pid {a}): code 3")),
        "{lines:#?}"
    );
    assert!(exited.starts_with("20") && exited.contains('Z'), "{exited}");
    assert!(
        restarting.contains("crash[0]: restarting in "),
        "{lines:#?}"
    );
    assert!(again.contains("crash[0]: started (pid "), "{lines:#?}");
    let b = pid_in(again).unwrap();
    assert_ne!(a, b, "a new process");
    // The pids are those warden's log names for the same starts.
    let log = log(&sb);
    for pid in [a, b] {
        assert!(
            log.contains(&format!("running (pid {pid})")),
            "{pid}:\n{log}"
        );
    }
    stop_and_expect_stream_end(&mut sb, client);
    // Not running: said clearly, with the "not running" status of control commands (7).
    let out = sb.run(&["events"]);
    assert_exit(&out, 7);
    assert_stderr_has(&out, "not running");
}

#[test]
fn json_events_parse_and_carry_time_event_program_instance_and_pid() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", CRASH);
    sb.start();
    let client = spawn_events(&mut sb, &["--json"], "events.txt");
    let lines = wait_lines(&sb, "events.txt", "a restart with its delay", |l| {
        l.iter().any(|l| l.contains("\"restarting\""))
            && l.iter().filter(|l| l.contains("\"started\"")).count() >= 2
    });
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    for e in &events {
        for key in ["time", "event", "program", "instance", "pid"] {
            assert!(e.get(key).is_some(), "{key} missing: {e}");
        }
        let time = e["time"].as_str().unwrap();
        // RFC 3339, UTC, milliseconds: 2026-12-05T05:50:01.123Z.
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.');
        assert_eq!(e["program"], "crash");
        assert_eq!(e["instance"], 0);
    }
    let first = events.iter().position(|e| e["event"] == "started").unwrap();
    let pid = events[first]["pid"]
        .as_i64()
        .expect("started carries its pid");
    let exited = &events[first + 1];
    assert_eq!(exited["event"], "exited", "{events:#?}");
    assert_eq!(exited["pid"], pid);
    assert_eq!(exited["code"], 3);
    assert_eq!(exited["signal"], Value::Null);
    assert_eq!(exited["reason"], Value::Null);
    let restarting = events.iter().find(|e| e["event"] == "restarting").unwrap();
    assert!(restarting["delay_ms"].is_u64(), "{restarting}");
    assert_eq!(restarting["pid"], Value::Null);

    // A reload applied says what it changed, and names no program of its own.
    sb.write_programs(
        "",
        &format!("{CRASH}[program.extra]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n"),
    );
    assert_exit(&sb.run(&["reload"]), 0);
    let lines = wait_lines(&sb, "events.txt", "the reload", |l| {
        l.iter().any(|l| l.contains("\"reload-applied\""))
    });
    let reload: Value = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "reload-applied")
        .unwrap();
    assert_eq!(
        reload["changes"],
        serde_json::json!(["add extra"]),
        "{reload}"
    );
    assert_eq!(reload["program"], Value::Null);
    stop_and_expect_stream_end(&mut sb, client);
}

/// A member of `control_group`, which may only read, may follow the stream.
#[test]
fn a_read_only_client_may_follow_events() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("setpriv", "util-linux") {
        return;
    }
    let mut sb = test.supervisor_sandbox("control_group = \"nogroup\"", CRASH);
    sb.start();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(warden_bin())
        .arg("-c")
        .arg(&sb.config)
        .arg("events")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(sb.path("events.txt")).unwrap())
        .stderr(std::fs::File::create(sb.path("events.txt.err")).unwrap());
    let client = sb.spawn(cmd);
    wait_lines(&sb, "events.txt", "an exit", |l| {
        l.iter().any(|l| l.contains("crash[0]: exited"))
    });
    stop_and_expect_stream_end(&mut sb, client);
}

#[test]
fn a_subscriber_that_never_reads_is_cut_off_while_status_answers() {
    let test = this_test!();
    // Twenty instances restarting every few milliseconds: thousands of events a second.
    let flap = "[program.flap]\ncommand = [\"SANDBOX/sleep\", \"0\"]\ninstances = 20\n\
                restart = \"always\"\nbackoff_initial = \"1ms\"\nbackoff_max = \"1ms\"\n\
                max_restarts = 1000000\nrestart_window = \"1ms\"\n";
    let mut sb = test.supervisor_sandbox("", flap);
    sb.start();
    let mut stuck = UnixStream::connect(sb.path("warden.sock")).unwrap();
    stuck.write_all(b"{\"v\":1,\"cmd\":\"events\"}\n").unwrap();
    let cut = |sb: &Sandbox| log(sb).contains("cut off the event stream");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    while !cut(&sb) {
        assert!(
            Instant::now() < deadline,
            "never cut off; log:\n{}",
            log(&sb)
        );
        // warden keeps answering while the subscriber's buffer fills.
        let out = sb.run(&["status", "flap"]);
        assert!(
            matches!(exit_code(&out), Some(0 | 150)),
            "status did not answer: {out:?}"
        );
        answered += 1;
    }
    assert!(answered > 0);
    let log = log(&sb);
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cut off the event stream"))
        .collect();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains(&format!("(pid {})", std::process::id())),
        "names the client: {}",
        said[0]
    );
    // The bytes that would have waited: more than the limit it names.
    let total: usize = said[0]
        .split_once(&format!("(pid {}): ", std::process::id()))
        .and_then(|(_, rest)| rest.split_once(" bytes would wait unread"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count: {}", said[0]));
    assert!(total > 1 << 20, "{}", said[0]);
    assert!(
        said[0].ends_with("more than the 1048576 that may"),
        "{}",
        said[0]
    );
    // The connection is closed: what was sent before can be read, then the end.
    stuck.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    stuck
        .read_to_end(&mut rest)
        .expect("the connection ends (a timeout here means it was left open)");
    assert!(
        rest.len() <= (1 << 20) + (4 << 20),
        "{} bytes were kept for it",
        rest.len()
    );
    let out = sb.run(&["status", "flap"]);
    assert!(matches!(exit_code(&out), Some(0 | 150)), "{out:?}");
}

#[test]
fn json_logs_carry_warden_s_lines_and_program_output_in_the_log_and_output_files() {
    let test = this_test!();
    let programs = "[program.talk]\n\
                    command = [\"/bin/sh\", \"-c\", \"echo hello; echo oops >&2; exec SANDBOX/sleep 100\"]\n\
                    [program.tofile]\n\
                    command = [\"/bin/sh\", \"-c\", \"echo to file; exec SANDBOX/sleep 100\"]\n\
                    stdout = \"SANDBOX/tofile.out\"\n";
    let mut sb = test.supervisor_sandbox("log_format = \"json\"", programs);
    sb.start();
    let talk = wait_status(&mut sb, "talk up", |_, v| {
        v["instances"]
            .as_array()
            .is_some_and(|i| i.iter().all(|i| i["pid"].is_i64()))
    })
    .1["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["program"] == "talk")
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    let parsed = |text: String| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    };
    assert!(
        wait_until(TIMEOUT, || {
            let text = log(&sb);
            text.contains("\"oops\"") && text.contains("\"hello\"")
        }),
        "log:\n{}",
        log(&sb)
    );
    let lines = parsed(log(&sb));
    for l in &lines {
        for key in [
            "timestamp",
            "level",
            "program",
            "instance",
            "pid",
            "message",
        ] {
            assert!(l.get(key).is_some(), "{key} missing: {l}");
        }
    }
    let own = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().starts_with("warden "))
        .expect("warden's own line about no program");
    assert_eq!(own["level"], "info");
    assert_eq!(own["program"], Value::Null);
    assert_eq!(own["pid"], Value::Null);
    let out = |msg: &str| lines.iter().find(|l| l["message"] == msg).unwrap().clone();
    let hello = out("hello");
    assert_eq!(hello["program"], "talk");
    assert_eq!(hello["instance"], 0);
    assert_eq!(hello["pid"], talk);
    assert_eq!(hello["stream"], "stdout");
    assert_eq!(out("oops")["stream"], "stderr");
    // A program's own output file follows the format too.
    assert!(wait_until(TIMEOUT, || !sb.read("tofile.out").is_empty()));
    let file = parsed(sb.read("tofile.out"));
    assert_eq!(file[0]["program"], "tofile");
    assert_eq!(file[0]["message"], "to file");
    assert!(file[0]["pid"].is_i64() && file[0]["timestamp"].is_string());
    assert_exit(&sb.run(&["stop"]), 0);

    // A value that is neither: its place and key.
    sb.write_programs("log_format = \"xml\"", "");
    let out = sb.run(&["check"]);
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        "warden.toml:5:14: daemon.log_format: \"xml\" is not one of \"text\", \"json\"",
    );
}

#[test]
fn a_health_check_turning_failing_then_passing_is_told_with_its_error() {
    let test = this_test!();
    let programs = "[program.w]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n\
                    [program.w.health]\nexec = [\"/bin/sh\", \"-c\", \"test -e SANDBOX/ok\"]\n\
                    interval = \"200ms\"\nretries = 1000\n";
    let mut sb = test.supervisor_sandbox("", programs);
    sb.start();
    let client = spawn_events(&mut sb, &["--json"], "events.txt");
    let parsed = |lines: &[String]| -> Vec<Value> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let health = |lines: &[String], state: &str| {
        parsed(lines)
            .into_iter()
            .find(|e| e["event"] == "health" && e["state"] == state)
    };
    let lines = wait_lines(&sb, "events.txt", "a failing check", |l| {
        health(l, "failing").is_some()
    });
    let failing = health(&lines, "failing").unwrap();
    assert_eq!(failing["program"], "w");
    assert_eq!(failing["failures"], 1);
    assert!(failing["error"].is_string(), "{failing}");
    let pid = failing["pid"].as_i64().expect("the instance's pid");
    std::fs::write(sb.path("ok"), "").unwrap();
    let lines = wait_lines(&sb, "events.txt", "a passing check", |l| {
        health(l, "passing").is_some()
    });
    let passing = health(&lines, "passing").unwrap();
    assert_eq!(passing["pid"], pid);
    assert_eq!(passing["error"], Value::Null);
    stop_and_expect_stream_end(&mut sb, client);
}

/// A program warden stops because a program it `requires` was stopped is `waiting` (what for,
/// and why), not `stopped` (a stop by hand, kept down); a stop by hand of it, waiting, is
/// `stopped`; a start by hand held for its requirement is `waiting` with no reason, then
/// `started` once the requirement is up.
#[test]
fn a_program_stopped_for_its_requirement_is_waiting_with_the_reason_not_stopped() {
    let test = this_test!();
    let programs = "[program.db]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n\
                    [program.web]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n\
                    requires = [\"db\"]\n";
    let mut sb = test.supervisor_sandbox("", programs);
    sb.start();
    let client = spawn_events(&mut sb, &["--json"], "events.txt");
    let told = wait_until(TIMEOUT, || {
        expect(&mut sb, &["restart", "web"], 0);
        sb.read("events.txt").contains(r#""event":"started""#)
    });
    assert!(told, "the client never subscribed:\n{}", log(&sb));
    let of = |lines: &[String], program: &str| -> Vec<Value> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["program"] == program)
            .collect()
    };
    let named = |evs: &[Value], name: &str| evs.iter().filter(|e| e["event"] == name).count();

    expect(&mut sb, &["stop", "db"], 0);
    let lines = wait_lines(&sb, "events.txt", "db stopped", |l| {
        named(&of(l, "db"), "stopped") == 1
    });
    let web = of(&lines, "web");
    assert_eq!(
        named(&web, "stopped"),
        0,
        "web was not stopped by hand: {web:#?}"
    );
    let waiting: Vec<&Value> = web.iter().filter(|e| e["event"] == "waiting").collect();
    assert_eq!(waiting.len(), 1, "{web:#?}");
    assert_eq!(waiting[0]["waiting_for"], serde_json::json!(["db"]));
    assert_eq!(waiting[0]["reason"], "db stopped");
    assert_eq!(waiting[0]["instance"], 0);
    assert_eq!(waiting[0]["pid"], Value::Null);

    // Stopped by hand while waiting: now it is `stopped`.
    expect(&mut sb, &["stop", "web"], 0);
    let lines = wait_lines(&sb, "events.txt", "web stopped", |l| {
        named(&of(l, "web"), "stopped") == 1
    });
    assert_eq!(named(&of(&lines, "web"), "waiting"), 1);

    // Started by hand: it waits for db (no reason: nothing stopped it), then starts.
    expect(&mut sb, &["start", "web"], 0);
    let lines = wait_lines(&sb, "events.txt", "web started again", |l| {
        let web = of(l, "web");
        web.last().is_some_and(|e| e["event"] == "started") && named(&web, "waiting") == 2
    });
    let web = of(&lines, "web");
    let again = web.iter().rfind(|e| e["event"] == "waiting").unwrap();
    assert_eq!(again["waiting_for"], serde_json::json!(["db"]), "{again}");
    assert_eq!(again["reason"], Value::Null, "{again}");
    stop_and_expect_stream_end(&mut sb, client);
}

/// `log_format = "json"`: warden's own lines about an instance (its start, a crash and backoff,
/// a SIGKILL after stop_timeout) name its program, instance and pid, as its output does; the
/// text is the same as in the text format, and `stream` stays null.
#[test]
fn json_logs_name_the_instance_warden_s_own_lines_are_about() {
    let test = this_test!();
    let programs = "[program.flap]\n\
                    command = [\"/bin/sh\", \"-c\", \"exit 3\"]\n\
                    backoff_initial = \"30s\"\n\
                    [program.stubborn]\n\
                    command = [\"/bin/sh\", \"-c\", \"trap '' TERM; exec SANDBOX/sleep 100\"]\n\
                    stop_timeout = \"200ms\"\n";
    let mut sb = test.supervisor_sandbox("log_format = \"json\"", programs);
    sb.start();
    let (_, v) = wait_status(&mut sb, "stubborn up, flap in backoff", |_, v| {
        let of = |name: &str| {
            v["instances"]
                .as_array()
                .and_then(|i| i.iter().find(|i| i["program"] == name).cloned())
                .unwrap_or(Value::Null)
        };
        of("stubborn")["pid"].is_i64() && of("flap")["state"] == "backoff"
    });
    let stubborn = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["program"] == "stubborn")
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    assert_exit(&sb.run(&["stop", "stubborn"]), 0);
    let lines = || -> Vec<Value> {
        log(&sb)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    };
    let find = |lines: &[Value], text: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().unwrap().contains(text))
            .cloned()
    };
    assert!(
        wait_until(TIMEOUT, || find(&lines(), "sent SIGKILL").is_some()),
        "log:\n{}",
        log(&sb)
    );
    let lines = lines();
    let killed = find(&lines, "did not stop within 200ms; sent SIGKILL").unwrap();
    assert_eq!(killed["program"], "stubborn", "{killed}");
    assert_eq!(killed["instance"], 0, "{killed}");
    assert_eq!(killed["pid"], stubborn, "{killed}");
    assert_eq!(killed["stream"], Value::Null, "{killed}");
    assert_eq!(killed["level"], "warn", "{killed}");
    let started = find(
        &lines,
        &format!("stubborn[0]: new -> running (pid {stubborn})"),
    )
    .unwrap();
    assert_eq!(started["program"], "stubborn", "{started}");
    assert_eq!(started["pid"], stubborn, "{started}");
    let crashed = find(&lines, "flap[0]: running -> backoff").unwrap();
    assert_eq!(crashed["program"], "flap", "{crashed}");
    assert_eq!(crashed["instance"], 0, "{crashed}");
    assert!(crashed["pid"].is_i64(), "{crashed}");
    // Every line about an instance names it; the others name none.
    for l in &lines {
        let message = l["message"].as_str().unwrap();
        for name in ["flap", "stubborn"] {
            if message.starts_with(&format!("{name}[0]")) {
                assert_eq!(l["program"], name, "{l}");
                assert_eq!(l["instance"], 0, "{l}");
            }
        }
        if message.starts_with("warden ") {
            assert_eq!(l["program"], Value::Null, "{l}");
        }
    }
    assert_exit(&sb.run(&["stop"]), 0);
}

/// What a newer warden may send within protocol version 1: an event this build does not know,
/// and a known event with a field it does not know, then the final line.
const NEWER_STREAM: &str = concat!(
    r#"{"v":1,"event":{"time":"2026-12-05T05:50:01.123Z","program":"web","instance":0,"#,
    r#""pid":7,"event":"quaked","magnitude":7,"where":{"x":[1,2]}}}"#,
    "\n",
    r#"{"v":1,"event":{"time":"2026-12-05T05:50:01.124Z","program":"web","instance":0,"#,
    r#""pid":7,"event":"exited","code":1,"signal":null,"reason":null,"core":"/var/core/7"}}"#,
    "\n",
    r#"{"v":1,"ok":true,"result":{"stopped":true}}"#,
    "\n",
);

/// Serves `NEWER_STREAM` once on `SANDBOX/ctl.sock`, as a newer warden would to `events`.
fn newer_daemon(sb: &Sandbox) -> std::thread::JoinHandle<String> {
    let _ = std::fs::remove_file(sb.path("ctl.sock"));
    let listener = std::os::unix::net::UnixListener::bind(sb.path("ctl.sock")).unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = String::new();
        let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let _ = uninterrupted(|| std::io::BufRead::read_line(&mut reader, &mut request));
        conn.write_all(NEWER_STREAM.as_bytes()).unwrap();
        request
    })
}

#[test]
fn an_event_of_a_newer_warden_is_printed_and_a_field_it_added_is_no_error() {
    let test = this_test!();
    let sb = test.supervisor_sandbox("control_socket = \"SANDBOX/ctl.sock\"", "");
    let daemon = newer_daemon(&sb);
    let out = sb.warden(&["events", "--json"]).output().unwrap();
    assert!(daemon.join().unwrap().contains("\"events\""));
    assert_exit(&out, 0);
    let lines: Vec<Value> = stdout_of(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let sent: Value = serde_json::from_str(NEWER_STREAM.lines().next().unwrap()).unwrap();
    // Printed with every field, as it came.
    assert_eq!(lines[0], sent["event"]);
    assert_eq!(lines[1]["event"], "exited");
    assert_eq!(lines[1]["code"], 1);
    let daemon = newer_daemon(&sb);
    let out = sb.warden(&["events"]).output().unwrap();
    daemon.join().unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        stdout_of(&out),
        "2026-12-05T05:50:01.123Z web[0]: quaked (pid 7)\n\
         2026-12-05T05:50:01.124Z web[0]: exited (pid 7): code 1\n"
    );
}

/// Instances that wait for a stopped requirement and are scaled away are told `stopped` (no
/// change of state says it), and a scale down answers at once: it starts nothing to wait for.
#[test]
fn waiting_instances_scaled_away_are_told_stopped_and_the_scale_answers() {
    let test = this_test!();
    let programs = "[program.db]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n\
                    [program.web]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n\
                    requires = [\"db\"]\ninstances = 3\n";
    let mut sb = test.supervisor_sandbox("", programs);
    sb.start();
    let client = spawn_events(&mut sb, &["--json"], "events.txt");
    let told = wait_until(TIMEOUT, || {
        expect(&mut sb, &["restart", "db"], 0);
        sb.read("events.txt").contains(r#""event":"started""#)
    });
    assert!(told, "the client never subscribed:\n{}", log(&sb));
    let web = |lines: &[String], event: &str| -> Vec<i64> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["program"] == "web" && e["event"] == event)
            .filter_map(|e| e["instance"].as_i64())
            .collect()
    };
    expect(&mut sb, &["stop", "db"], 0);
    wait_lines(&sb, "events.txt", "web waiting", |l| {
        web(l, "waiting").len() >= 3
    });
    let out = sb.run(&["scale", "--timeout", "5s", "web", "1"]);
    assert_exit(&out, 0);
    let lines = wait_lines(&sb, "events.txt", "web[1], web[2] stopped", |l| {
        let mut s = web(l, "stopped");
        s.sort();
        s == [1, 2]
    });
    assert!(!web(&lines, "stopped").contains(&0), "{lines:#?}");
    stop_and_expect_stream_end(&mut sb, client);
}
