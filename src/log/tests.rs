//! Unit tests of the log destinations, built with [`build`] so the global logger is never touched.
//!
//! Nothing here sleeps: the syslog tests read from their own socket with a read timeout, and the
//! file tests read files after every writer has returned.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::stderr::{StderrSink, journal_stream_matches};
use super::*;
use crate::test_support::TempDir;

/// 2027-01-15T08:00:00.123Z.
fn fixed_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123)
}

fn record(style: LineStyle, level: Level, target: &str, args: fmt::Arguments<'_>) -> String {
    let mut buf = Vec::new();
    format_record(&mut buf, style, fixed_time(), level, target, &args);
    String::from_utf8(buf).unwrap()
}

// ---- stderr: JOURNAL_STREAM and line formats ----

#[test]
fn journal_stream_must_match_fd2() {
    let fd2 = Some((8, 1234));
    assert!(journal_stream_matches(Some("8:1234"), fd2));
    assert!(journal_stream_matches(Some("8:1234\n"), fd2));
    assert!(!journal_stream_matches(Some("8:1235"), fd2), "other inode");
    assert!(!journal_stream_matches(Some("9:1234"), fd2), "other device");
    assert!(!journal_stream_matches(None, fd2), "variable unset");
    assert!(!journal_stream_matches(Some("8:1234"), None), "fd 2 closed");
    for bad in [
        "", "8", "8:", ":1234", "8:1234:5", "-8:1234", "0x8:1234", "a:b",
    ] {
        assert!(!journal_stream_matches(Some(bad), fd2), "{bad:?}");
    }
}

#[test]
fn stderr_style_follows_journal_stream() {
    let fd2 = Some((2049, 77));
    let journal = StderrSink::new(journal_stream_matches(Some("2049:77"), fd2));
    assert_eq!(journal.style(), LineStyle::Journal);
    let plain = StderrSink::new(journal_stream_matches(Some("2049:78"), fd2));
    assert_eq!(plain.style(), LineStyle::Timestamped);
}

#[test]
fn journal_lines_have_sd_daemon_prefixes_and_no_timestamp() {
    let j = LineStyle::Journal;
    assert_eq!(
        record(j, Level::Error, "warden", format_args!("boom")),
        "<3>boom\n"
    );
    assert_eq!(
        record(j, Level::Warn, "warden", format_args!("hm")),
        "<4>hm\n"
    );
    assert_eq!(
        record(j, Level::Info, "warden", format_args!("up")),
        "<6>up\n"
    );
    assert_eq!(
        record(
            j,
            Level::Debug,
            "warden::supervisor",
            format_args!("spawn {}", 3)
        ),
        "<7>warden::supervisor: spawn 3\n"
    );
    assert_eq!(record(j, Level::Trace, "w", format_args!("t")), "<7>w: t\n");
    // Every line of a multi-line message keeps the priority; a trailing newline adds no line.
    assert_eq!(
        record(j, Level::Error, "warden", format_args!("a\nb\n")),
        "<3>a\n<3>b\n"
    );
}

#[test]
fn timestamped_lines_show_module_only_when_debugging() {
    let t = LineStyle::Timestamped;
    assert_eq!(
        record(t, Level::Info, "warden::daemon", format_args!("started")),
        "2027-01-15T08:00:00.123Z INFO  started\n"
    );
    assert_eq!(
        record(t, Level::Error, "warden::daemon", format_args!("x")),
        "2027-01-15T08:00:00.123Z ERROR x\n"
    );
    assert_eq!(
        record(
            t,
            Level::Debug,
            "warden::supervisor",
            format_args!("reaped {}", 42)
        ),
        "2027-01-15T08:00:00.123Z DEBUG warden::supervisor: reaped 42\n"
    );
    assert_eq!(
        record(t, Level::Trace, "warden::pool", format_args!("frame")),
        "2027-01-15T08:00:00.123Z TRACE warden::pool: frame\n"
    );
}

#[test]
fn output_lines_carry_no_level() {
    let mut buf = Vec::new();
    format_line(
        &mut buf,
        LineStyle::Journal,
        fixed_time(),
        "web[0]: listening",
    );
    assert_eq!(buf, b"<6>web[0]: listening\n");
    buf.clear();
    format_line(
        &mut buf,
        LineStyle::Timestamped,
        fixed_time(),
        "web[0]: listening",
    );
    assert_eq!(buf, b"2027-01-15T08:00:00.123Z web[0]: listening\n");
}

#[test]
fn stderr_backend_has_nothing_to_reopen_or_drop() {
    let backend = build(&LogConfig {
        target: Target::Stderr,
        level: LevelFilter::Info,
        format: LogFormat::Text,
    })
    .unwrap();
    backend.reopen().unwrap();
    assert_eq!(backend.dropped(), 0);
}

// ---- file ----

fn file_config(path: &Path) -> LogConfig {
    LogConfig {
        target: Target::File(path.to_path_buf()),
        level: LevelFilter::Info,
        format: LogFormat::Text,
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: last line incomplete: {text:?}",
        path.display()
    );
    text.lines().map(str::to_string).collect()
}

/// The message after the timestamp of a timestamped line.
fn after_timestamp(line: &str) -> &str {
    let (ts, rest) = line.split_once(' ').expect("timestamped line");
    humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("bad timestamp in {line:?}: {e}"));
    rest
}

#[test]
fn file_reopen_after_rename_moves_new_lines_to_new_file() {
    let dir = TempDir::new("log-rotate");
    let path = dir.join("warden.log");
    let backend = build(&file_config(&path)).unwrap();

    backend.log(Level::Info, "warden", &format_args!("one"));
    backend.write_line("web[0]: two\n");
    // logrotate renames the file; until told to reopen we keep writing to the renamed one.
    let rotated = dir.join("warden.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    backend.log(Level::Warn, "warden", &format_args!("three"));
    backend.reopen().unwrap();
    backend.log(Level::Error, "warden", &format_args!("four"));
    backend.write_line("web[0]: five");

    let old: Vec<_> = read_lines(&rotated);
    let old: Vec<_> = old.iter().map(|l| after_timestamp(l)).collect();
    assert_eq!(old, ["INFO  one", "web[0]: two", "WARN  three"]);
    let new: Vec<_> = read_lines(&path);
    let new: Vec<_> = new.iter().map(|l| after_timestamp(l)).collect();
    assert_eq!(new, ["ERROR four", "web[0]: five"]);
    assert_eq!(backend.dropped(), 0);
}

#[test]
fn file_reopen_under_concurrent_writers_loses_and_splits_nothing() {
    const THREADS: usize = 4;
    const LINES: usize = 400;
    const ROTATIONS: usize = 20;
    let dir = TempDir::new("log-race");
    let path = dir.join("warden.log");
    let backend = build(&file_config(&path)).unwrap();

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let backend = &backend;
            s.spawn(move || {
                for n in 0..LINES {
                    backend.log(
                        Level::Info,
                        "warden",
                        &format_args!("thread {t} line {n} {}", "x".repeat(n % 50)),
                    );
                }
            });
        }
        for r in 0..ROTATIONS {
            std::fs::rename(&path, dir.join(&format!("warden.log.{r}"))).unwrap();
            backend.reopen().unwrap();
        }
    });

    let mut seen = BTreeSet::new();
    let files = (0..ROTATIONS)
        .map(|r| dir.join(&format!("warden.log.{r}")))
        .chain([path.clone()]);
    for file in files {
        for line in read_lines(&file) {
            let msg = after_timestamp(&line)
                .strip_prefix("INFO  thread ")
                .unwrap();
            let mut words = msg.split(' ');
            let t: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(words.next(), Some("line"));
            let n: usize = words.next().unwrap().parse().unwrap();
            assert_eq!(words.next(), Some("x".repeat(n % 50).as_str()), "{line:?}");
            assert!(seen.insert((t, n)), "line written twice: {line:?}");
        }
    }
    assert_eq!(seen.len(), THREADS * LINES, "lines lost");
}

#[test]
fn file_is_created_without_exec_or_world_write_bits() {
    let dir = TempDir::new("log-mode");
    let path = dir.join("warden.log");
    build(&file_config(&path)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o644, 0, "mode {mode:o} exceeds 0644");
    assert_eq!(
        mode & 0o600,
        0o600,
        "mode {mode:o}: owner cannot read and write"
    );
}

#[test]
fn file_errors_name_the_path() {
    let dir = TempDir::new("log-err");
    let path = dir.join("missing-dir/warden.log");
    let err = build(&file_config(&path)).err().expect("open must fail");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");

    // A reopen that fails keeps the old file and names the path too.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("warden.log");
    let backend = build(&file_config(&path)).unwrap();
    std::fs::rename(&sub, dir.join("gone")).unwrap();
    let err = backend.reopen().unwrap_err();
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    backend.log(Level::Info, "warden", &format_args!("still here"));
    let lines = read_lines(&dir.join("gone/warden.log"));
    assert_eq!(after_timestamp(&lines[0]), "INFO  still here");
}

#[test]
fn global_logger_filters_by_level_without_being_installed() {
    let dir = TempDir::new("log-level");
    let path = dir.join("warden.log");
    let logger = GlobalLogger {
        backend: Arc::new(build(&file_config(&path)).unwrap()),
        level: LevelFilter::Info,
        format: LogFormat::Text,
        owner: std::process::id(),
    };
    for (level, text) in [
        (Level::Debug, "hidden"),
        (Level::Info, "shown"),
        (Level::Trace, "hidden"),
    ] {
        logger.log(
            &Record::builder()
                .level(level)
                .target("warden::t")
                .args(format_args!("{text}"))
                .build(),
        );
    }
    logger.flush();
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(after_timestamp(&lines[0]), "INFO  shown");
}

// ---- syslog ----

/// A stand-in syslog daemon: a datagram socket bound at `path`, read with a timeout.
fn bind_syslogd(path: &Path) -> UnixDatagram {
    let _ = std::fs::remove_file(path);
    let sock = UnixDatagram::bind(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = vec![0; 8192];
    // A stop and continue of the test process makes a read with a timeout fail with EINTR.
    let n = loop {
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => break r.expect("no syslog message within 5 s"),
        }
    };
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Asserts that `msg` is RFC 3164 with priority `pri`, our ident and pid, and text `text`.
fn assert_syslog(msg: &str, pri: u8, text: &str) {
    let head = format!("<{pri}>");
    assert!(msg.starts_with(&head), "{msg:?} does not start with {head}");
    let tail = format!(" warden-test[{}]: {text}", std::process::id());
    assert!(msg.ends_with(&tail), "{msg:?} does not end with {tail:?}");
}

fn syslog_backend(socket: &Path, facility: &str) -> Result<Backend> {
    build(&LogConfig {
        target: Target::Syslog {
            facility: facility.to_string(),
            ident: "warden-test".to_string(),
            socket: Some(socket.to_path_buf()),
        },
        level: LevelFilter::Trace,
        format: LogFormat::Text,
    })
}

#[test]
fn syslog_messages_carry_priority_ident_and_pid() {
    let dir = TempDir::new("log-syslog");
    let path = dir.join("log.sock");
    let syslogd = bind_syslogd(&path);
    let backend = syslog_backend(&path, "local0").unwrap();

    // local0 = 16; 16 * 8 + severity.
    backend.log(Level::Error, "warden", &format_args!("boom"));
    assert_syslog(&recv(&syslogd), 16 * 8 + 3, "boom");
    backend.log(Level::Warn, "warden", &format_args!("careful"));
    assert_syslog(&recv(&syslogd), 16 * 8 + 4, "careful");
    backend.log(Level::Info, "warden", &format_args!("up"));
    assert_syslog(&recv(&syslogd), 16 * 8 + 6, "up");
    backend.log(Level::Debug, "warden::supervisor", &format_args!("spawn"));
    assert_syslog(&recv(&syslogd), 16 * 8 + 7, "warden::supervisor: spawn");
    backend.log(Level::Trace, "warden::pool", &format_args!("frame"));
    assert_syslog(&recv(&syslogd), 16 * 8 + 7, "warden::pool: frame");
    backend.write_line("web[0]: hello\n");
    assert_syslog(&recv(&syslogd), 16 * 8 + 6, "web[0]: hello");

    let daemon = syslog_backend(&path, "daemon").unwrap();
    daemon.log(Level::Error, "warden", &format_args!("d"));
    assert_syslog(&recv(&syslogd), 3 * 8 + 3, "d");
    assert_eq!(backend.dropped() + daemon.dropped(), 0);
}

#[test]
fn syslog_reconnects_after_restart_and_reports_drops() {
    let dir = TempDir::new("log-restart");
    let path = dir.join("log.sock");
    let syslogd = bind_syslogd(&path);
    let backend = syslog_backend(&path, "daemon").unwrap();
    backend.log(Level::Info, "warden", &format_args!("before"));
    assert_syslog(&recv(&syslogd), 3 * 8 + 6, "before");

    // Restart: the old socket goes away and a new one is bound at the same path. The next message
    // fails on the old connection, reconnects and gets through; nothing is dropped.
    drop(syslogd);
    let syslogd = bind_syslogd(&path);
    backend.log(Level::Info, "warden", &format_args!("after restart"));
    assert_syslog(&recv(&syslogd), 3 * 8 + 6, "after restart");
    assert_eq!(backend.dropped(), 0);

    // Down: no socket at all. Messages are counted as dropped.
    drop(syslogd);
    std::fs::remove_file(&path).unwrap();
    backend.log(Level::Error, "warden", &format_args!("lost 1"));
    backend.write_line("web[0]: lost 2");
    backend.log(Level::Info, "warden", &format_args!("lost 3"));
    assert_eq!(backend.dropped(), 3);

    // Back: the first message through is preceded by the notice, at warning severity.
    let syslogd = bind_syslogd(&path);
    backend.log(Level::Info, "warden", &format_args!("back"));
    assert_syslog(
        &recv(&syslogd),
        3 * 8 + 4,
        "warden: 3 log messages dropped while syslog was unreachable",
    );
    assert_syslog(&recv(&syslogd), 3 * 8 + 6, "back");
    // The notice is given once; the count of messages lost so far stays.
    backend.log(Level::Info, "warden", &format_args!("next"));
    assert_syslog(&recv(&syslogd), 3 * 8 + 6, "next");
    assert_eq!(backend.dropped(), 3);
}

#[test]
fn syslog_unreachable_at_start_is_not_an_error() {
    let dir = TempDir::new("log-late");
    let path = dir.join("log.sock");
    let backend = syslog_backend(&path, "local7").unwrap();
    // What start-up passes on to the launcher's stderr, since the log itself cannot say it.
    let handle = LogHandle {
        backend: Arc::new(syslog_backend(&path, "local7").unwrap()),
        format: LogFormat::Text,
    };
    let warning = handle.unreachable().expect("a warning");
    assert!(
        warning.starts_with(&format!(
            "syslog socket {} cannot be reached (",
            path.display()
        )) && warning.ends_with("): log messages are dropped until it can"),
        "{warning}"
    );
    backend.log(Level::Warn, "warden", &format_args!("early"));
    assert_eq!(backend.dropped(), 1);

    let syslogd = bind_syslogd(&path);
    let reached = LogHandle {
        backend: Arc::new(syslog_backend(&path, "local7").unwrap()),
        format: LogFormat::Text,
    };
    assert_eq!(reached.unreachable(), None);
    backend.log(Level::Info, "warden", &format_args!("late"));
    assert_syslog(
        &recv(&syslogd),
        23 * 8 + 4,
        "warden: 1 log messages dropped while syslog was unreachable",
    );
    assert_syslog(&recv(&syslogd), 23 * 8 + 6, "late");
}

#[test]
fn syslog_rejects_unknown_facility() {
    let dir = TempDir::new("log-facility");
    let path = dir.join("log.sock");
    for bad in ["local8", "LOG_DAEMON", "ntp", ""] {
        let err = syslog_backend(&path, bad).err().expect("must fail");
        assert!(matches!(err, Error::Invalid { .. }), "{bad:?}: {err}");
        assert!(err.to_string().contains("local0"), "{err}");
    }
}

#[test]
fn log_handle_delegates_to_its_backend() {
    let dir = TempDir::new("log-handle");
    let path = dir.join("warden.log");
    let handle = LogHandle {
        backend: Arc::new(build(&file_config(&path)).unwrap()),
        format: LogFormat::Text,
    };
    let clone = handle.clone();
    clone.write_line("a");
    std::fs::rename(&path, dir.join("old")).unwrap();
    handle.reopen().unwrap();
    handle.write_line("b");
    handle.flush();
    assert_eq!(handle.dropped(), 0);
    assert_eq!(handle.unreachable(), None);
    assert_eq!(format!("{handle:?}"), r#"LogHandle { target: "file" }"#);
    assert_eq!(after_timestamp(&read_lines(&dir.join("old"))[0]), "a");
    assert_eq!(after_timestamp(&read_lines(&path)[0]), "b");
}

#[test]
fn syslog_that_does_not_read_stalls_a_send_only_briefly() {
    let dir = TempDir::new("log-full");
    let path = dir.join("log.sock");
    let syslogd = bind_syslogd(&path);
    let backend = syslog_backend(&path, "daemon").unwrap();

    // Nobody reads: the receive queue fills up, and a send then waits SEND_TIMEOUT and is dropped.
    let start = std::time::Instant::now();
    let mut sent = 0;
    while backend.dropped() == 0 {
        assert!(sent < 100_000, "the queue never filled up");
        backend.log(Level::Info, "warden", &format_args!("flood {sent}"));
        sent += 1;
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "send stalled {:?}",
        start.elapsed()
    );
    assert_eq!(backend.dropped(), 1);

    // The daemon catches up: everything sent before the drop is there, then the notice. After a
    // timeout, messages are dropped unsent for RETRY_AFTER (so that a stuck daemon does not cost
    // every caller a timeout): wait that policy period out, then log again.
    for n in 0..sent - 1 {
        assert_syslog(&recv(&syslogd), 3 * 8 + 6, &format!("flood {n}"));
    }
    backend.log(Level::Info, "warden", &format_args!("dropped unsent"));
    assert_eq!(
        backend.dropped(),
        2,
        "dropped without waiting during the quiet period"
    );
    std::thread::sleep(super::syslog::RETRY_AFTER + Duration::from_millis(50));
    backend.log(Level::Info, "warden", &format_args!("caught up"));
    assert_syslog(
        &recv(&syslogd),
        3 * 8 + 4,
        "warden: 2 log messages dropped while syslog was unreachable",
    );
    assert_syslog(&recv(&syslogd), 3 * 8 + 6, "caught up");
}

#[test]
fn syslog_stream_with_a_full_backlog_never_blocks_the_caller() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
    };
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("log-backlog");
    let path = dir.join("log.sock");
    // A stream "syslog daemon" that never accepts, with the smallest backlog, filled up.
    let listener = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let addr = UnixAddr::new(&path).unwrap();
    bind(listener.as_raw_fd(), &addr).unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let _ = connect(s.as_raw_fd(), &addr);
        fillers.push(s);
    }
    let backend = syslog_backend(&path, "daemon").unwrap();
    let start = std::time::Instant::now();
    for i in 0..50 {
        backend.log(Level::Info, "warden", &format_args!("m {i}"));
    }
    // A blocking connect(2) would wait here for good; each message fails at once instead.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "logging blocked for {:?}",
        start.elapsed()
    );
    assert_eq!(backend.dropped(), 50);
}

/// `log_format = "json"`: to syslog the object is the message, at the record's severity, after
/// the usual header; a program's output line names its program, instance, pid and stream.
#[test]
fn json_records_go_to_syslog_as_the_message() {
    let dir = TempDir::new("log-json-syslog");
    let path = dir.join("log.sock");
    let syslogd = bind_syslogd(&path);
    let handle = LogHandle {
        backend: Arc::new(syslog_backend(&path, "daemon").unwrap()),
        format: LogFormat::Json,
    };
    let own = json::record(SystemTime::now(), Level::Warn, None, "careful");
    handle.backend.write_json(Level::Warn, &own);
    let msg = recv(&syslogd);
    assert_syslog(&msg, 3 * 8 + 4, &own);
    let src = OutputSource {
        program: "web",
        instance: 1,
        pid: Some(42),
        stream: "stdout",
    };
    handle.write_output(&src, "hello\n");
    let msg = recv(&syslogd);
    let object = msg.split_once("]: ").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(object).unwrap();
    assert_eq!(
        (
            &v["program"],
            &v["instance"],
            &v["pid"],
            &v["stream"],
            &v["message"]
        ),
        (
            &serde_json::json!("web"),
            &serde_json::json!(1),
            &serde_json::json!(42),
            &serde_json::json!("stdout"),
            &serde_json::json!("hello")
        )
    );
}

/// `log_format = "json"` to a file: the object alone on its line, no text timestamp before it.
#[test]
fn json_records_in_a_file_are_one_object_a_line() {
    let dir = TempDir::new("log-json-file");
    let path = dir.join("w.log");
    let handle = LogHandle {
        backend: Arc::new(build(&file_config(&path)).unwrap()),
        format: LogFormat::Json,
    };
    let src = OutputSource {
        program: "web",
        instance: 0,
        pid: None,
        stream: "stderr",
    };
    handle.write_output(&src, "two\nlines");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["message"], "two\nlines");
    assert_eq!(v["pid"], serde_json::Value::Null);
}
