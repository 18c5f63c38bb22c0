//! Life cycle: exit hooks (once, LIFO, in the daemon only, on every orderly way out), the signal
//! map, and the systemd notify protocol — all against real processes.

use std::os::unix::net::UnixDatagram;

use crate::common::*;
use nix::sys::signal::Signal;

/// The pid in the fixture's pidfile, if any.
fn app_pid(sb: &Sandbox) -> Option<i32> {
    sb.read("app.pid").trim().parse().ok()
}

fn wait_gone(pid: i32) {
    assert!(wait_until(TIMEOUT, || !alive(pid)), "pid {pid} still alive");
}

fn hook_lines(sb: &Sandbox) -> Vec<String> {
    sb.read("hooks.log").lines().map(str::to_string).collect()
}

/// The hooks ran exactly once, last registered first, all in `pid`, before the pidfile went.
fn assert_hooks_ran(sb: &Sandbox, pid: i32) {
    let expected: Vec<String> = ["C", "P", "B", "A"]
        .iter()
        .map(|n| format!("{n} {pid} pidfile=present"))
        .collect();
    assert_eq!(hook_lines(sb), expected);
    assert!(!sb.path("app.pid").exists(), "pidfile removed, last");
}

fn wait_event(sb: &Sandbox, event: &str, count: usize) {
    assert!(
        wait_until(TIMEOUT, || sb
            .read("events.log")
            .lines()
            .filter(|l| *l == event)
            .count()
            >= count),
        "event {event} not seen; events.log: {:?}",
        sb.read("events.log")
    );
}

#[test]
fn hooks_run_on_term_lifo_once_in_the_daemon_only() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &[]);
    signal(pid, Signal::SIGTERM);
    wait_gone(pid);
    // Neither the launcher, nor the intermediate process, nor the forked child ran any hook:
    // every line carries the daemon's pid and "launcher" never appears.
    assert_hooks_ran(&sb, pid);
}

#[test]
fn second_term_takes_the_fast_path_and_still_runs_hooks() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &["--linger", "60s"]);
    signal(pid, Signal::SIGTERM);
    wait_event(&sb, "GracefulShutdown", 1);
    assert!(alive(pid), "lingers during the graceful shutdown");
    signal(pid, Signal::SIGTERM);
    wait_gone(pid);
    wait_event(&sb, "FastShutdown", 1);
    assert_hooks_ran(&sb, pid);
}

#[test]
fn quit_is_a_fast_shutdown_with_hooks() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &["--linger", "60s"]);
    signal(pid, Signal::SIGQUIT);
    wait_gone(pid);
    let events: Vec<String> = sb
        .read("events.log")
        .lines()
        .filter(|l| *l != "ChildExited")
        .map(str::to_string)
        .collect();
    assert_eq!(events, ["FastShutdown"]);
    assert_hooks_ran(&sb, pid);
}

#[test]
fn hooks_run_on_a_panic_in_the_main_thread() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &[]);
    signal(pid, Signal::SIGUSR2);
    wait_gone(pid);
    assert_hooks_ran(&sb, pid);
    assert!(sb.read("stderr.log").contains("panic on SIGUSR2"));
}

#[test]
fn hooks_run_on_return_exit_and_panic_modes() {
    let test = this_test!();
    for mode in ["return", "exit", "panic"] {
        let mut sb = test.sandbox("");
        let cmd = lifecycle(&sb, &["--mode", mode]);
        let out = sb.output(cmd);
        assert!(out.status.success(), "{mode}: {}", stderr_of(&out));
        // The daemon exits right after ready: wait for its last hook's effect.
        assert!(
            wait_until(TIMEOUT, || !sb.path("app.pid").exists()
                && hook_lines(&sb).len() >= 4),
            "{mode}"
        );
        let pid: i32 = hook_lines(&sb)[0]
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        wait_gone(pid);
        assert_hooks_ran(&sb, pid);
    }
}

#[test]
fn a_panicking_hook_does_not_stop_the_others() {
    let test = this_test!();
    // Hook P panics in every run above; here we also check the panic was logged.
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &[]);
    signal(pid, Signal::SIGTERM);
    wait_gone(pid);
    assert_hooks_ran(&sb, pid);
    assert!(
        sb.read("app.log")
            .contains("exit hook \"P\" panicked: hook P panics on purpose"),
        "{}",
        sb.read("app.log")
    );
}

#[test]
fn fail_reports_to_the_launcher_and_runs_hooks() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let cmd = lifecycle(&sb, &["--mode", "fail"]);
    let out = sb.output(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "initialisation failed on purpose");
    // The launcher returns only after the daemon cleaned up.
    let lines = hook_lines(&sb);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l.ends_with("pidfile=present")));
    assert!(!sb.path("app.pid").exists());
    assert_no_process(&sb);
}

#[test]
fn a_daemon_never_ready_is_killed_at_the_launchers_timeout() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let cmd = lifecycle(&sb, &["--mode", "hang", "--ready-timeout", "300ms"]);
    let out = sb.output(cmd);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not become ready within 300ms"), "{err}");
    // The launcher names the daemon it killed, and removed the pidfile it had created.
    let pid: i32 = err
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {err:?}"));
    assert!(pid > 0, "{err}");
    sb.track(pid);
    wait_gone(pid);
    assert!(!sb.path("app.pid").exists());
    assert_no_process(&sb);
}

/// A hook that overruns its own deadline is abandoned; the others and the pidfile removal run.
#[test]
fn a_hook_past_its_deadline_is_abandoned_and_the_rest_run() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &["--slow-hook"]);
    signal(pid, Signal::SIGTERM);
    wait_gone(pid);
    assert_hooks_ran(&sb, pid);
}

/// Once the total deadline has passed, the remaining hooks are skipped but the pidfile still
/// goes.
#[test]
fn the_total_hook_deadline_skips_the_rest_but_removes_the_pidfile() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &["--stuck-hook", "--hooks-deadline", "500ms"]);
    signal(pid, Signal::SIGTERM);
    wait_gone(pid);
    assert_eq!(
        hook_lines(&sb),
        Vec::<String>::new(),
        "T abandoned, C P B A skipped"
    );
    assert!(!sb.path("app.pid").exists(), "pidfile removed");
}

/// `Daemon::start` refuses a process that already runs a second thread (fork keeps only one).
#[test]
fn a_multi_threaded_process_is_refused_before_any_fork() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let cmd = lifecycle(&sb, &["--thread-first"]);
    let out = sb.output(cmd);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("has 2 threads"), "{err}");
    assert!(!sb.path("app.pid").exists(), "no pidfile");
    assert_no_process(&sb);
}

/// A child the daemon forks before `ready` and that drops its copy of the handle (as returning
/// from `main` would) neither tells the launcher the daemon failed nor keeps the instance lock
/// once the daemon is gone.
#[test]
fn a_child_forked_before_ready_speaks_not_for_the_daemon_nor_holds_its_lock() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &["--child", "linger"]);
    let child: i32 = sb.read("child.pid").trim().parse().expect("child.pid");
    sb.track(child);
    assert_ne!(child, pid);
    assert_eq!(
        app_pid(&sb),
        Some(pid),
        "the pidfile still names the daemon"
    );
    assert!(alive(pid));

    // The daemon dies hard; its child lives on, and must not keep the daemon's lock.
    signal(pid, Signal::SIGKILL);
    wait_gone(pid);
    assert!(alive(child), "the forked child lingers");
    let again = start_lifecycle(&mut sb, &[]);
    assert_ne!(again, pid);
    assert!(alive(again));
}

/// A library daemon that installs no signal handling, whose launcher is killed before `ready`,
/// survives writing its verdict into the broken readiness pipe.
#[test]
fn a_daemon_outlives_its_launcher_killed_before_ready() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let mut cmd = lifecycle(&sb, &["--mode", "bare", "--ready-delay", "1s"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let launcher = sb.spawn(cmd);
    assert!(
        wait_until(TIMEOUT, || app_pid(&sb).is_some()),
        "the daemon wrote its pid"
    );
    let pid = app_pid(&sb).unwrap();
    sb.track(pid);
    signal(launcher, Signal::SIGKILL);
    assert!(
        sb.wait_child(launcher, TIMEOUT).is_some(),
        "launcher reaped"
    );
    assert!(
        wait_until(TIMEOUT, || sb.read("events.log").contains("after-ready")),
        "the daemon got past ready(); alive: {}",
        alive(pid)
    );
    assert!(alive(pid), "still running after ready()");
}

#[test]
fn each_signal_produces_its_event() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = start_lifecycle(&mut sb, &[]);
    // The fixture forks a child at start: its exit is the first ChildExited.
    wait_event(&sb, "ChildExited", 1);
    for (sig, event) in [
        (Signal::SIGHUP, "Reload"),
        (Signal::SIGUSR1, "ReopenLogs"),
        (Signal::SIGTTIN, "AddWorker"),
        (Signal::SIGTTOU, "RemoveWorker"),
        (Signal::SIGCHLD, "ChildExited"),
    ] {
        let before = sb
            .read("events.log")
            .lines()
            .filter(|l| *l == event)
            .count();
        signal(pid, sig);
        wait_event(&sb, event, before + 1);
    }
    // PIPE is caught and dropped: no event, no death.
    signal(pid, Signal::SIGPIPE);
    signal(pid, Signal::SIGHUP);
    wait_event(&sb, "Reload", 2);
    assert!(alive(pid));
    assert!(
        !sb.read("events.log").contains("Pipe") && !sb.read("events.log").contains("Other(13)")
    );
    signal(pid, Signal::SIGINT);
    wait_gone(pid);
    wait_event(&sb, "GracefulShutdown", 1);
    assert_hooks_ran(&sb, pid);
}

#[test]
fn sd_notify_messages_arrive_in_order() {
    let test = this_test!();
    let mut sb = test.sandbox("log = \"stderr\"");
    let sock_path = sb.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut cmd = sb.warden(&["run"]);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000");
    cmd.stderr(std::fs::File::create(sb.path("stderr.log")).unwrap());
    let pid = sb.spawn(cmd);
    let mut buf = [0u8; 4096];
    let mut recv = || {
        let n = uninterrupted(|| sock.recv(&mut buf)).expect("a notify message within the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(
        first.starts_with("READY=1") && first.contains(&format!("MAINPID={pid}")),
        "{first}"
    );
    // At least two watchdog pings at half of WATCHDOG_USEC.
    let mut pings = 0;
    while pings < 2 {
        let m = recv();
        if m == "WATCHDOG=1" {
            pings += 1;
        }
    }
    signal(pid, Signal::SIGHUP);
    let mut seen = Vec::new();
    loop {
        let m = recv();
        if m == "WATCHDOG=1" || m.starts_with("STATUS=") {
            continue;
        }
        seen.push(m.clone());
        if m.starts_with("READY=1") {
            break;
        }
    }
    assert!(
        seen[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{seen:?}"
    );
    let usec: u128 = seen[0]
        .split("MONOTONIC_USEC=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(usec > 0);
    signal(pid, Signal::SIGTERM);
    loop {
        let m = recv();
        if m.starts_with("STOPPING=1") {
            break;
        }
        assert!(
            m == "WATCHDOG=1" || m.starts_with("STATUS="),
            "unexpected before STOPPING: {m}"
        );
    }
    let st = sb
        .wait_child(pid, TIMEOUT)
        .expect("warden run exits on TERM");
    assert!(st.success());
    assert!(!sb.pidfile().exists());
}
