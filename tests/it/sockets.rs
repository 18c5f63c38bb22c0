//! Sockets held by warden (`[socket.NAME]`, `sockets = [..]`) against real processes: the
//! socket-activated fixture (`tests/fixtures/activated.rs`) reports what it received on
//! `GET /info` — its pid, `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, and each descriptor's
//! name and inode — which the tests compare with `status --json` and across restarts.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// `GET PATH` over the Unix socket at `path` (bounded); the response's body.
/// `[socket.web]` at `SANDBOX/web.sock` and `[program.web]` running the `activated` fixture
/// with `args`, receiving it.
pub(crate) fn held_web(sb: &Sandbox, args: &[&str]) {
    let fixture = path_str(&example("activated"));
    let mut parts = vec![fixture.as_str()];
    parts.extend_from_slice(args);
    sb.write_programs(
        "",
        &format!(
            "[socket.web]\nlisten = \"SANDBOX/web.sock\"\n\
             [program.web]\ncommand = {}\nsockets = [\"web\"]\n",
            argv(&parts)
        ),
    );
}

pub(crate) fn get_unix(path: &std::path::Path, what: &str) -> Option<String> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    body(&mut s, what)
}

/// `GET PATH` over TCP to `addr` (bounded); the response's body.
fn get_tcp(addr: &str, what: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    body(&mut s, what)
}

fn body(s: &mut (impl Read + Write), what: &str) -> Option<String> {
    s.write_all(format!("GET {what} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of `key=` in an `/info` body (the first line that has it).
pub(crate) fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
}

/// The `fd=N name=NAME inode=I kind=K` line of descriptor `fd`, as (name, inode).
fn fd_line(info: &str, fd: i32) -> Option<(String, u64)> {
    let line = info.lines().find(|l| l.starts_with(&format!("fd={fd} ")))?;
    let word = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    Some((word("name")?, word("inode")?.parse().ok()?))
}

/// The inode `status --json` gives socket `name`.
fn held_inode(v: &Value, name: &str) -> u64 {
    v["sockets"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .and_then(|s| s["inode"].as_u64())
        .unwrap_or_else(|| panic!("no socket {name} in {v:#}"))
}

/// Polls `/info` over the Unix socket at `path` until `pred` holds (bounded).
pub(crate) fn wait_info(
    sb: &Sandbox,
    path: &std::path::Path,
    pred: impl Fn(&str) -> bool,
) -> String {
    let mut last = String::new();
    let ok = wait_until(TIMEOUT, || {
        last = get_unix(path, "/info").unwrap_or_default();
        pred(&last)
    });
    assert!(ok, "/info never matched; last:\n{last}\nlog:\n{}", log(sb));
    last
}

/// A TCP port on 127.0.0.1 free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn instances_receive_held_sockets_with_systemds_variables_and_keep_them_across_restarts() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let fixture = path_str(&example("activated"));
    let port = free_port();
    sb.write_programs(
        "",
        &format!(
            "[socket.web]\nlisten = \"SANDBOX/web.sock\"\nmode = \"0600\"\n\
         [socket.admin]\nlisten = \"127.0.0.1:{port}\"\nbacklog = 16\n\
         [program.web]\ncommand = {}\nsockets = [\"web\", \"admin\"]\n",
            argv(&[&fixture])
        ),
    );
    sb.start();
    let sock = sb.path("web.sock");
    let info = wait_info(&sb, &sock, |i| field(i, "pid").is_some());
    let pid = field(&info, "pid").unwrap();
    assert_eq!(field(&info, "LISTEN_PID"), Some(pid), "{info}");
    assert_eq!(field(&info, "LISTEN_FDS"), Some("2"), "{info}");
    assert_eq!(field(&info, "LISTEN_FDNAMES"), Some("web:admin"), "{info}");
    let v = status_json(&mut sb);
    let (web, admin) = (held_inode(&v, "web"), held_inode(&v, "admin"));
    assert_eq!(fd_line(&info, 3), Some(("web".into(), web)), "{info}");
    assert_eq!(fd_line(&info, 4), Some(("admin".into(), admin)), "{info}");
    assert_eq!(v["sockets"][0]["programs"][0], "web", "{v:#}");
    assert_eq!(v["sockets"][1]["listen"], format!("127.0.0.1:{port}"));
    // The TCP socket serves too, and the Unix socket file has its mode.
    assert!(get_tcp(&format!("127.0.0.1:{port}"), "/").is_some());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A restart: a new process, the same sockets.
    expect(&mut sb, &["restart", "web"], 0);
    let after = wait_info(&sb, &sock, |i| field(i, "pid").is_some_and(|p| p != pid));
    assert_eq!(fd_line(&after, 3), Some(("web".into(), web)), "{after}");
    assert_eq!(fd_line(&after, 4), Some(("admin".into(), admin)), "{after}");
    assert_eq!(field(&after, "LISTEN_PID"), field(&after, "pid"));
}

#[test]
fn a_port_below_1024_works_for_an_unprivileged_program() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    // A privileged port nobody uses now.
    let port = (600u16..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let mut sb = test.supervisor_sandbox("", "");
    let fixture = path_str(&example("activated"));
    sb.write_programs(
        "",
        &format!(
            "[socket.web]\nlisten = \"127.0.0.1:{port}\"\n\
         [program.web]\ncommand = {}\nsockets = [\"web\"]\nuser = \"nobody\"\n",
            argv(&[&fixture])
        ),
    );
    sb.start();
    let addr = format!("127.0.0.1:{port}");
    let mut info = String::new();
    let ok = wait_until(TIMEOUT, || {
        info = get_tcp(&addr, "/info").unwrap_or_default();
        field(&info, "pid").is_some()
    });
    assert!(ok, "nothing served on {addr}; log:\n{}", log(&sb));
    let pid: i32 = field(&info, "pid").unwrap().parse().unwrap();
    let uid = status(pid)["Uid"]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    assert_eq!(uid, nobody.to_string(), "the program runs as nobody");
}

#[test]
fn an_address_in_use_fails_start_with_the_address_and_errno() {
    let test = this_test!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut sb = test.supervisor_sandbox("", "");
    sb.write_programs(
        "",
        &format!(
            "[socket.web]\nlisten = \"{addr}\"\n\
         [program.web]\ncommand = [\"SANDBOX/sleep\", \"100\"]\nsockets = [\"web\"]\n"
        ),
    );
    let out = sb.run(&["start"]);
    assert_exit(&out, 1);
    assert_stderr_has(
        &out,
        &format!("cannot listen on {addr} ([socket.web], EADDRINUSE)"),
    );
    assert!(sb.pidfile_pid().is_none(), "no daemon left behind");
    assert_no_process(&sb);
    drop(taken);
}

#[test]
fn reload_moves_a_socket_and_restarts_only_the_programs_that_receive_it() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    let fixture = path_str(&example("activated"));
    let config = |path: &str| {
        format!(
            "[socket.web]\nlisten = \"SANDBOX/{path}\"\n\
             [program.web]\ncommand = {}\nsockets = [\"web\"]\n\
             [program.other]\ncommand = [\"SANDBOX/sleep\", \"100\"]\n",
            argv(&[&fixture])
        )
    };
    sb.write_programs("", &config("a.sock"));
    sb.start();
    let first = wait_info(&sb, &sb.path("a.sock"), |i| field(i, "pid").is_some());
    let v = status_json(&mut sb);
    let other = v["instances"][1]["pid"].clone();
    assert!(other.is_i64(), "{v:#}");
    sb.write_programs("", &config("b.sock"));
    let out = expect(&mut sb, &["reload"], 0);
    assert!(out.contains("moved socket web"), "{out}");
    assert!(out.contains("restarted (changed) web"), "{out}");
    let moved = wait_info(&sb, &sb.path("b.sock"), |i| {
        field(i, "pid").is_some_and(|p| Some(p) != field(&first, "pid"))
    });
    let v = status_json(&mut sb);
    assert_eq!(fd_line(&moved, 3).unwrap().1, held_inode(&v, "web"));
    assert_eq!(v["instances"][1]["pid"], other, "other was not restarted");
    assert!(
        get_unix(&sb.path("a.sock"), "/").is_none(),
        "the old socket is closed"
    );
}

#[test]
fn socket_mistakes_are_configuration_errors_at_their_place() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    sb.write_programs(
        "",
        "[socket.a]\nlisten = \"127.0.0.1:8080\"\n\
         [socket.b]\nlisten = \"localhost:80\"\n\
         [socket.c]\nlisten = \"127.0.0.1:8080\"\n\
         [socket.d]\nlisten = \"127.0.0.1:8081\"\nmode = \"0600\"\n\
         [program.p]\ncommand = [\"SANDBOX/sleep\", \"1\"]\nsockets = [\"a\", \"nope\"]\n",
    );
    let out = sb.run(&["check"]);
    assert_exit(&out, 1);
    let err = stderr_of(&out);
    // The tables start on line 7, after the sandbox's [daemon].
    for needle in [
        "warden.toml:10:10: socket.b.listen: \"localhost:80\" is not an address to listen on",
        "warden.toml:12:10: socket.c.listen: 127.0.0.1:8080 is already the address of [socket.a]",
        "warden.toml:15:8: socket.d.mode: only a Unix socket",
        "warden.toml:18:17: program.p.sockets: there is no [socket.nope] table",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn connections_made_while_the_program_restarts_wait_in_the_held_socket_and_none_fails() {
    let test = this_test!();
    let mut sb = test.supervisor_sandbox("", "");
    // The new instance takes 300 ms before it accepts: every connection made meanwhile waits
    // in the socket's queue, which warden keeps open.
    held_web(&sb, &["--slow-start", "300ms"]);
    sb.start();
    let sock = sb.path("web.sock");
    let first = wait_info(&sb, &sock, |i| field(i, "pid").is_some());
    // A client that keeps asking, one request after another, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, sock) = (stop.clone(), sock.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut pids) = (0u32, 0u32, std::collections::BTreeSet::new());
            // Bounded even if the test fails before it says stop.
            let deadline = std::time::Instant::now() + TIMEOUT;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                match get_unix(&sock, "/") {
                    Some(body) => {
                        ok += 1;
                        pids.insert(body);
                    }
                    None => failed += 1,
                }
            }
            (ok, failed, pids)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    expect(&mut sb, &["restart", "web"], 0);
    let _ = wait_info(&sb, &sock, |i| {
        field(i, "pid").is_some_and(|p| Some(p) != field(&first, "pid"))
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, pids) = client.join().expect("the client thread");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed; log:\n{}",
        ok + failed,
        log(&sb)
    );
    assert!(
        pids.len() >= 2,
        "served by the old and the new process: {pids:?}"
    );
}
