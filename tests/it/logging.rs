//! Logging against real peers: a real `logrotate` run while the lifecycle fixture writes a line
//! every millisecond (no line lost, duplicated or split), a datagram syslog receiver that is
//! restarted under the daemon, journald's `<N>` prefixes when `JOURNAL_STREAM` names stderr (in
//! text and before each JSON object of `log_format = "json"`), and `warden reopen-logs` on the
//! `warden` binary.
//!
//! Every process is started through the [`Sandbox`], which kills it by pid when the test ends,
//! also on failure; every wait is bounded.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Sandbox, TIMEOUT, Test, alive, signal, start_lifecycle, stderr_of, uninterrupted, wait_until,
};
use nix::sys::signal::Signal;

/// SIGTERM to `pid`, then a bounded wait for it to be gone (a zombie counts as gone: the
/// daemon's parent is whatever reaps orphans here).
fn terminate(pid: i32) {
    signal(pid, Signal::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || !alive(pid)),
        "pid {pid} still alive {TIMEOUT:?} after SIGTERM"
    );
}

/// Whether `s` is a `humantime::format_rfc3339_millis` timestamp: `2026-11-22T17:59:28.123Z`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Whether `line` starts with a timestamp followed by a space.
fn has_timestamp(line: &str) -> bool {
    line.get(..24).is_some_and(is_timestamp) && line.as_bytes().get(24) == Some(&b' ')
}

/// Whether `line` starts with an sd-daemon priority prefix `<N>`.
fn has_priority_prefix(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 3 && b[0] == b'<' && b[1].is_ascii_digit() && b[2] == b'>'
}

/// Reads the ticker's numbers from one log file of the lifecycle fixture, checking that every
/// line is complete: `<timestamp> INFO  line N`, or one of the few other messages the fixture
/// writes (its ready line, and the error about its hook `P`, which panics on purpose).
fn ticker_numbers(path: &Path, numbers: &mut Vec<u64>) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends with a partial line: {:?}",
        path.display(),
        text.lines().last()
    );
    for line in text.lines() {
        let Some(msg) = line.get(25..).filter(|_| has_timestamp(line)) else {
            panic!("{}: line without timestamp: {line:?}", path.display());
        };
        if let Some(n) = msg.strip_prefix("INFO  line ") {
            let n = n
                .parse()
                .unwrap_or_else(|_| panic!("{}: split line: {line:?}", path.display()));
            numbers.push(n);
        } else if !((msg.starts_with("INFO  ready (pid ") && msg.ends_with(')'))
            || msg.starts_with("ERROR exit hook \"P\" panicked"))
        {
            panic!("{}: unexpected line: {line:?}", path.display());
        }
    }
}

/// Makes sure `logrotate` is installed: installs the Debian package as root, otherwise says why
/// the calling test is skipped.
fn have_logrotate(test: &Test) -> bool {
    let found = || {
        Command::new("logrotate")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found() {
        return true;
    }
    if !nix::unistd::Uid::effective().is_root() {
        test.skip("logrotate is not installed (apt-get install logrotate)");
        return false;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "logrotate"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // The package lists may be missing or stale.
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        install();
    }
    assert!(
        found(),
        "{}: cannot install logrotate with apt-get",
        test.name()
    );
    true
}

/// Whether the log file `p` holds a ticker line.
fn has_lines(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|t| t.contains(" line "))
}

/// Writes a logrotate configuration rotating `log` (its `postrotate` sends SIGUSR1 to the
/// daemon in the sandbox's `app.pid`) and returns its path.
fn logrotate_config(sb: &Sandbox, log: &Path) -> PathBuf {
    let path = sb.path("logrotate.conf");
    std::fs::write(
        &path,
        format!(
            "{log} {{\n    rotate 10\n    nocompress\n    missingok\n    postrotate\n        \
             kill -USR1 $(cat '{pidfile}')\n    endscript\n}}\n",
            log = log.display(),
            pidfile = sb.path("app.pid").display(),
        ),
    )
    .unwrap();
    path
}

/// Runs `logrotate -f` (round `round`) and waits until the daemon has reopened `log`.
fn rotate(sb: &mut Sandbox, round: u32, conf: &Path, log: &Path) {
    let state = sb.path("logrotate.state");
    let mut cmd = Command::new("logrotate");
    cmd.arg("-f").arg("-s").arg(&state).arg(conf);
    let out = sb.output(cmd);
    assert!(
        out.status.success(),
        "logrotate round {round}: {:?}\nstderr: {}",
        out.status,
        stderr_of(&out)
    );
    assert!(
        sb.path(&format!("app.log.{round}")).exists(),
        "logrotate round {round} rotated nothing\nstderr: {}",
        stderr_of(&out)
    );
    // The daemon recreates app.log when it reopens on SIGUSR1 from postrotate; the next
    // rotation must not find it missing.
    assert!(
        wait_until(TIMEOUT, || has_lines(log)),
        "the daemon did not reopen {} after rotation {round}",
        log.display()
    );
}

/// Every number from 0 to the highest appears exactly once in `numbers` (no line lost nor
/// duplicated).
fn assert_each_number_once(mut numbers: Vec<u64>) {
    let total = numbers.len();
    numbers.sort_unstable();
    let max = *numbers.last().expect("some lines");
    let duplicates: Vec<u64> = numbers
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(duplicates.is_empty(), "duplicated lines: {duplicates:?}");
    numbers.dedup();
    let missing: Vec<u64> = (0..=max)
        .filter(|n| numbers.binary_search(n).is_err())
        .collect();
    assert!(missing.is_empty(), "lost lines (of 0..={max}): {missing:?}");
    assert_eq!(total as u64, max + 1);
}

#[test]
fn logrotate_loses_and_splits_no_line_across_three_rotations() {
    let test = this_test!();
    if !have_logrotate(&test) {
        return;
    }
    let mut sb = test.sandbox("");
    // logrotate refuses to rotate in a world-writable directory (the sandbox is 0777 for tests
    // that drop privileges; this one does not).
    std::fs::set_permissions(&sb.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = sb.path("app.log");
    let conf = logrotate_config(&sb, &log);
    let pid = start_lifecycle(
        &mut sb,
        &[
            "--mode",
            "ticker",
            "--interval",
            "1ms",
            "--log",
            &format!("file:{}", log.display()),
        ],
    );
    assert!(
        wait_until(TIMEOUT, || has_lines(&log)),
        "the ticker writes no line into {}",
        log.display()
    );

    for round in 1..=3 {
        // Let lines accumulate, so that every file gets some.
        std::thread::sleep(Duration::from_millis(200));
        rotate(&mut sb, round, &conf, &log);
    }
    std::thread::sleep(Duration::from_millis(50));
    terminate(pid);

    let mut numbers = Vec::new();
    for i in (1..=3).rev() {
        let rotated = sb.path(&format!("app.log.{i}"));
        let before = numbers.len();
        ticker_numbers(&rotated, &mut numbers);
        eprintln!("app.log.{i}: {} ticker lines", numbers.len() - before);
        assert!(
            numbers.len() > before,
            "{} holds no ticker line: the rotation did not happen as expected",
            rotated.display()
        );
    }
    ticker_numbers(&log, &mut numbers);
    assert!(
        !sb.path("app.log.4").exists(),
        "more rotations than logrotate runs"
    );

    assert_each_number_once(numbers);
}

/// One syslog datagram, as text.
fn recv_text(sock: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 8192];
    match uninterrupted(|| sock.recv(&mut buf)) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv on the syslog socket: {e}"),
    }
}

/// A datagram socket bound at `path` standing in for the syslog daemon.
fn syslog_receiver(path: &Path) -> UnixDatagram {
    let sock = UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    sock
}

/// The ticker number in a syslog message, if it is a `line N` message.
fn syslog_line_number(msg: &str) -> Option<u64> {
    msg.rsplit_once(": line ")?.1.trim_end().parse().ok()
}

#[test]
fn syslog_messages_carry_pid_facility_severity_and_survive_a_receiver_restart() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let sock_path = sb.path("log.sock");
    let receiver = syslog_receiver(&sock_path);
    let pid = start_lifecycle(
        &mut sb,
        &[
            "--mode",
            "ticker",
            "--interval",
            "10ms",
            "--log",
            &format!("syslog:{}", sock_path.display()),
        ],
    );
    let tag = format!("lifecycle[{pid}]: ");
    // local3 (19) × 8 + info (6); the dropped-messages notice is a warning (4).
    let info = "<158>";
    let warning = "<156>";

    // Before the restart: every message is well-formed and comes from the daemon.
    let deadline = Instant::now() + TIMEOUT;
    let mut lines = 0;
    let mut last = None;
    while lines < 5 {
        assert!(
            Instant::now() < deadline,
            "only {lines} ticker messages within {TIMEOUT:?}"
        );
        let Some(msg) = recv_text(&receiver) else {
            continue;
        };
        assert!(
            msg.contains(&tag),
            "not tagged with the daemon's pid {pid}: {msg:?}"
        );
        if msg.contains("dropped") {
            // The receiver fell behind (a busy machine): reported as a warning.
            assert!(msg.starts_with(warning), "{msg:?}");
            continue;
        }
        assert!(msg.starts_with(info), "not local3.info: {msg:?}");
        if let Some(n) = syslog_line_number(&msg) {
            lines += 1;
            last = Some(n);
        }
    }
    let last = last.unwrap();

    // The syslog daemon restarts: its socket goes away and comes back as a new one.
    drop(receiver);
    std::fs::remove_file(&sock_path).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let receiver = syslog_receiver(&sock_path);

    let deadline = Instant::now() + TIMEOUT;
    let mut notice = None;
    let mut after = None;
    while after.is_none() {
        assert!(
            Instant::now() < deadline,
            "no ticker message within {TIMEOUT:?} after the receiver restarted (notice: {notice:?})"
        );
        let Some(msg) = recv_text(&receiver) else {
            continue;
        };
        assert!(
            msg.contains(&tag),
            "not tagged with the daemon's pid {pid}: {msg:?}"
        );
        if msg.contains("dropped") {
            assert!(
                msg.starts_with(warning),
                "the notice is not local3.warning: {msg:?}"
            );
            notice = Some(msg);
            continue;
        }
        assert!(msg.starts_with(info), "not local3.info: {msg:?}");
        after = syslog_line_number(&msg);
    }
    let after = after.unwrap();
    assert!(
        after > last,
        "line {after} after the restart, {last} before"
    );
    let notice = notice.expect("no notice about the messages dropped during the restart");
    assert!(
        notice.contains(&tag) && notice.contains(" log messages dropped"),
        "{notice:?}"
    );
    terminate(pid);
}

/// Runs `warden run` with stderr into `stderr_name` in the sandbox and `JOURNAL_STREAM` set to
/// `journal_stream(stderr file's metadata)`, stops it with SIGTERM once it has logged that it
/// started, and returns what it wrote to stderr.
fn run_foreground(
    sb: &mut Sandbox,
    stderr_name: &str,
    journal_stream: impl Fn(&std::fs::Metadata) -> String,
) -> String {
    let path = sb.path(stderr_name);
    let file = File::create(&path).unwrap();
    let var = journal_stream(&file.metadata().unwrap());
    let mut cmd = sb.warden(&["run"]);
    cmd.env("JOURNAL_STREAM", &var)
        .stdout(Stdio::null())
        .stderr(file);
    let pid = sb.spawn(cmd);
    // The pidfile is written before logging and signal handlers are set up; the "started" line
    // comes after both, so from then on SIGTERM is an event, not death.
    assert!(
        wait_until(TIMEOUT, || sb.pidfile_pid() == Some(pid)
            && sb.read(stderr_name).contains("started")),
        "warden run (JOURNAL_STREAM={var}) did not start; stderr:\n{}",
        sb.read(stderr_name)
    );
    signal(pid, Signal::SIGTERM);
    let status = sb
        .wait_child(pid, TIMEOUT)
        .unwrap_or_else(|| panic!("warden run did not exit within {TIMEOUT:?} after SIGTERM"));
    assert!(
        status.success(),
        "warden run: {status:?}\n{}",
        sb.read(stderr_name)
    );
    sb.read(stderr_name)
}

#[test]
fn stderr_speaks_journald_prefixes_only_when_journal_stream_matches() {
    let test = this_test!();
    let mut sb = test.sandbox("log = \"stderr\"");

    let journal = run_foreground(&mut sb, "journal.err", |m| {
        format!("{}:{}", m.dev(), m.ino())
    });
    assert!(
        journal.lines().count() >= 2,
        "expected the start and stop lines:\n{journal}"
    );
    for line in journal.lines() {
        assert!(
            line.starts_with("<6>"),
            "no info prefix under journald: {line:?}"
        );
        assert!(
            !line
                .char_indices()
                .any(|(i, _)| line.get(i..i + 24).is_some_and(is_timestamp)),
            "a timestamp under journald (it adds its own): {line:?}"
        );
    }
    assert!(journal.contains("<6>warden stopped"), "{journal}");

    // A stale variable (inherited, stderr redirected since) names another file: plain lines.
    let plain = run_foreground(&mut sb, "plain.err", |m| {
        format!("{}:{}", m.dev(), m.ino() + 1)
    });
    assert!(
        plain.lines().count() >= 2,
        "expected the start and stop lines:\n{plain}"
    );
    for line in plain.lines() {
        assert!(
            has_timestamp(line),
            "no timestamp outside journald: {line:?}"
        );
        assert!(
            !has_priority_prefix(line),
            "a priority prefix outside journald: {line:?}"
        );
    }
    assert!(plain.contains(" INFO  warden stopped"), "{plain}");
}

#[test]
fn warden_reopen_logs_moves_logging_to_the_new_file() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let log = sb.path("warden.log");
    let rotated = sb.path("warden.log.1");
    let pid = sb.start();
    assert!(
        wait_until(TIMEOUT, || sb.read("warden.log").contains("started")),
        "no start line in {}",
        log.display()
    );

    std::fs::rename(&log, &rotated).unwrap();
    let out = sb.run(&["reopen-logs"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warden reopen-logs: {}",
        stderr_of(&out)
    );
    assert!(
        wait_until(TIMEOUT, || sb
            .read("warden.log")
            .contains("log files reopened")),
        "the daemon did not reopen {}",
        log.display()
    );

    signal(pid, Signal::SIGHUP);
    assert!(
        wait_until(TIMEOUT, || sb.read("warden.log").contains("reload applied")),
        "the reload line did not reach the new {}:\n{}",
        log.display(),
        sb.read("warden.log")
    );
    let old = sb.read("warden.log.1");
    assert!(old.contains("started"), "{old}");
    assert!(
        !old.contains("reopened") && !old.contains("reload applied"),
        "lines after the reopen went to the rotated file:\n{old}"
    );
    for line in sb.read("warden.log").lines().chain(old.lines()) {
        assert!(has_timestamp(line), "{line:?}");
    }

    let out = sb.run(&["stop"]);
    assert!(out.status.success(), "warden stop: {}", stderr_of(&out));
    assert!(
        wait_until(TIMEOUT, || !alive(pid)),
        "pid {pid} survived warden stop"
    );
    let out = sb.run(&["reopen-logs"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "warden reopen-logs with no daemon: {}",
        stderr_of(&out)
    );
}

/// `log_format = "json"` under journald: each JSON object keeps its `<N>` priority prefix
/// (journald strips it and records the priority), and nothing else is added.
#[test]
fn json_lines_under_journald_keep_the_priority_prefix() {
    let test = this_test!();
    let mut sb = test.sandbox("log = \"stderr\"\nlog_format = \"json\"");
    let journal = run_foreground(&mut sb, "journal.err", |m| {
        format!("{}:{}", m.dev(), m.ino())
    });
    assert!(journal.lines().count() >= 2, "{journal}");
    for line in journal.lines() {
        let object = line
            .strip_prefix("<6>")
            .unwrap_or_else(|| panic!("no info prefix under journald: {line:?}"));
        let v: serde_json::Value =
            serde_json::from_str(object).unwrap_or_else(|e| panic!("{object}: {e}"));
        assert_eq!(v["level"], "info", "{line}");
        assert_eq!(v["program"], serde_json::Value::Null, "{line}");
    }
    assert!(
        journal.contains("\"message\":\"warden stopped\""),
        "{journal}"
    );
}

/// `warden run` in `sb`: its exit status, and that every line it printed on stderr is a JSON
/// error line whose message says `says` (and that there is one).
fn run_dies_in_json(sb: &mut Sandbox, says: &str) -> Option<i32> {
    let mut run = sb.warden(&["run"]);
    run.stdin(Stdio::null());
    let out = sb.output(run);
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "nothing said");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "error", "{line}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(says)),
            "{line}"
        );
    }
    out.status.code()
}

/// `warden run` with `log_format = "json"`: the error it dies of at start is a JSON line too
/// (the one line a log shipper most needs); `warden start`, at a terminal, says it in words.
#[test]
fn a_fatal_start_error_of_warden_run_is_a_json_line_when_the_log_is_json() {
    let test = this_test!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut sb = test.sandbox(&format!(
        "log_format = \"json\"\nmetrics = \"127.0.0.1:{port}\""
    ));
    assert_ne!(run_dies_in_json(&mut sb, "cannot listen on"), Some(0));
    let start = sb.run(&["start"]);
    assert_ne!(start.status.code(), Some(0));
    assert!(
        stderr_of(&start).starts_with("warden: cannot listen on"),
        "{}",
        stderr_of(&start)
    );
    drop(taken);
    // A file with an error elsewhere still asks for JSON: its errors are JSON lines (status 6).
    sb.write_config("log_format = \"json\"\nbogus = 1");
    assert_eq!(run_dies_in_json(&mut sb, "daemon.bogus"), Some(6));
}
