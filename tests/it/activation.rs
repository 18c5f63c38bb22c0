//! Socket activation from the program's side: `warden::activation::listen_fds()` in a real
//! process, through the fixture `tests/fixtures/activated.rs` (an HTTP server on whatever it is
//! passed), started with hand-made activation.
//!
//! # How a test looks
//! The launcher is a python script in the sandbox (`launch.py`, below): it binds the sockets
//! asked for, moves them to descriptors 3, 4, …, closes every other descriptor above 2, writes
//! one line per socket (`fd=3 addr=127.0.0.1:PORT inode=N`) to `launch.out`, sets `LISTEN_PID`
//! to its own pid (or what the test says) with `LISTEN_FDS` and `LISTEN_FDNAMES`, and `exec`s
//! the fixture — same pid, so `LISTEN_PID` names the fixture, as warden does. Nothing forks in
//! the harness: the launcher starts through `std::process::Command`, is tracked by pid, and
//! every wait is bounded.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Output, Stdio};

use nix::sys::signal::Signal;

use crate::common::*;

/// The launcher: `launch.py --out FILE [--socket tcp|udp|unix:PATH]… [--pid self|unset|VALUE]
/// [--fds count|unset|VALUE] [--names unset|VALUE] -- PROGRAM ARGS…`.
const LAUNCHER: &str = r#"
import os, socket, sys
args = sys.argv[1:]
out, specs, pid, fds, names = None, [], "self", "count", "unset"
while args[0] != "--":
    opt, val, args = args[0], args[1], args[2:]
    if opt == "--out": out = val
    elif opt == "--socket": specs.append(val)
    elif opt == "--pid": pid = val
    elif opt == "--fds": fds = val
    elif opt == "--names": names = val
    else: sys.exit("launch.py: unknown option " + opt)
argv = args[1:]
socks = []
for spec in specs:
    if spec in ("tcp", "udp"):
        kind = socket.SOCK_STREAM if spec == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        addr = "127.0.0.1:%d" % s.getsockname()[1]
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        addr = spec[len("unix:"):]
        s.bind(addr)
    if spec != "udp":
        s.listen(64)
    socks.append((os.dup(s.fileno()), addr))
    s.close()
# Out of the way first, so that moving one onto 3, 4, ... never overwrites another.
high = []
for i, (fd, addr) in enumerate(socks):
    high.append((os.dup2(fd, 200 + i), addr))
    os.close(fd)
lines = []
for i, (fd, addr) in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    lines.append("fd=%d addr=%s inode=%d\n" % (3 + i, addr, os.fstat(3 + i).st_ino))
with open(out + ".tmp", "w") as f:
    f.writelines(lines)
os.rename(out + ".tmp", out)
os.closerange(3 + len(socks), 4096)
env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
if pid != "unset":
    env["LISTEN_PID"] = str(os.getpid()) if pid == "self" else pid
if fds != "unset":
    env["LISTEN_FDS"] = str(len(socks)) if fds == "count" else fds
if names != "unset":
    env["LISTEN_FDNAMES"] = names
os.execve(argv[0], argv, env)
"#;

/// One socket the launcher passed: its descriptor, address and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Passed {
    fd: i32,
    addr: String,
    inode: String,
}

/// `launch.py LAUNCH… -- activated FIXTURE…` in the sandbox.
fn launch(sb: &Sandbox, launch: &[&str], fixture: &[&str]) -> Command {
    let script_path = script(sb, "launch.py", LAUNCHER);
    let mut c = Command::new(python());
    c.arg(script_path)
        .arg("--out")
        .arg(sb.path("launch.out"))
        .args(launch)
        .arg("--")
        .arg(example("activated"))
        .args(fixture);
    c.env_remove("NOTIFY_SOCKET").stdin(Stdio::null());
    c
}

/// Starts the fixture through the launcher (tracked for clean-up, its output in `out.log`) and
/// returns its pid and the sockets passed to it.
fn serve(sb: &mut Sandbox, launch_args: &[&str], fixture: &[&str]) -> (i32, Vec<Passed>) {
    let mut cmd = launch(sb, launch_args, fixture);
    let log = std::fs::File::create(sb.path("out.log")).unwrap();
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let pid = sb.spawn(cmd);
    assert!(
        wait_until(TIMEOUT, || sb.path("launch.out").exists()),
        "the launcher never wrote launch.out: {}",
        sb.read("out.log")
    );
    let passed = sb
        .read("launch.out")
        .lines()
        .map(|l| {
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("no {k} in {l:?}"))
                    .to_string()
            };
            Passed {
                fd: field("fd").parse().unwrap(),
                addr: field("addr"),
                inode: field("inode"),
            }
        })
        .collect();
    (pid, passed)
}

/// Runs the fixture through the launcher to completion (bounded), for a fixture that must exit.
fn run(sb: &mut Sandbox, launch_args: &[&str], fixture: &[&str]) -> Output {
    let cmd = launch(sb, launch_args, fixture);
    sb.output(cmd)
}

/// A response: status code, body, and the `X-Pid` header.
#[derive(Debug)]
struct Response {
    status: u16,
    body: String,
    pid: Option<i32>,
}

/// Parses a whole `Connection: close` response.
fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let pid = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Pid: "))
        .and_then(|p| p.parse().ok());
    Response {
        status,
        body: body.to_string(),
        pid,
    }
}

/// `GET path` on `addr` (`HOST:PORT`, or a socket path), bounded.
fn get(addr: &str, path: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    let mut raw = Vec::new();
    if addr.starts_with('/') {
        let mut s = UnixStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.read_to_end(&mut raw).unwrap();
    } else {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.read_to_end(&mut raw).unwrap();
    }
    parse_response(&raw)
}

/// Whether descriptor `fd` of `pid` is close-on-exec (`O_CLOEXEC` in its `/proc` fdinfo flags).
fn cloexec(pid: i32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no flags in {info}"));
    u32::from_str_radix(flags, 8).unwrap() & libc::O_CLOEXEC as u32 != 0
}

#[test]
fn the_passed_sockets_are_served_with_their_names_and_inodes() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let unix = path_str(&sb.path("admin.sock"));
    let (pid, passed) = serve(
        &mut sb,
        &[
            "--socket",
            "tcp",
            "--socket",
            &format!("unix:{unix}"),
            "--names",
            "web:admin",
        ],
        &[],
    );
    let root = get(&passed[0].addr, "/");
    assert_eq!(
        (root.status, root.body.as_str()),
        (200, format!("pid={pid}\n").as_str())
    );
    assert_eq!(root.pid, Some(pid));
    assert_eq!(
        get(&unix, "/").pid,
        Some(pid),
        "served on the Unix socket too"
    );

    let info = get(&passed[1].addr, "/info").body;
    for line in [
        format!("pid={pid}"),
        format!("LISTEN_PID={pid}"),
        "LISTEN_FDS=2".to_string(),
        "LISTEN_FDNAMES=web:admin".to_string(),
        format!("fd=3 name=web inode={} kind=tcp", passed[0].inode),
        format!("fd=4 name=admin inode={} kind=unix", passed[1].inode),
    ] {
        assert_has_line(&info, &line);
    }
    // Taken descriptors are close-on-exec: what the server runs does not inherit them.
    assert!(
        cloexec(pid, 3) && cloexec(pid, 4),
        "fds 3 and 4 not close-on-exec"
    );
}

#[test]
fn without_names_the_sockets_are_unnamed() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let (pid, passed) = serve(&mut sb, &["--socket", "tcp"], &[]);
    let info = get(&passed[0].addr, "/info").body;
    assert!(!info.contains("LISTEN_FDNAMES"), "{info}");
    assert_has_line(&info, "LISTEN_FDS=1");
    assert_has_line(&info, &format!("LISTEN_PID={pid}"));
    assert_has_line(&info, &format!("fd=3 inode={} kind=tcp", passed[0].inode));
}

#[test]
fn sockets_meant_for_another_process_are_not_taken() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    for pid in ["1", "unset"] {
        let out = run(&mut sb, &["--socket", "tcp", "--pid", pid], &[]);
        assert_exit(&out, 3);
        assert_stderr_has(&out, "activated: no socket passed to pid");
        let _ = std::fs::remove_file(sb.path("launch.out"));
    }
    let out = run(&mut sb, &["--socket", "tcp", "--fds", "unset"], &[]);
    assert_exit(&out, 3);
    assert_stderr_has(&out, "LISTEN_FDS=<unset>");
}

#[test]
fn malformed_variables_fail_with_the_variable_named() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--fds", "abc"],
            "activated: LISTEN_FDS=\"abc\" is not a number of descriptors",
        ),
        (
            &["--fds", "0"],
            "activated: LISTEN_FDS=\"0\" is not a number of descriptors",
        ),
        (
            &["--pid", "12x"],
            "activated: LISTEN_PID=\"12x\" is not a pid",
        ),
        (
            &["--names", "web"],
            "activated: LISTEN_FDNAMES names 1 descriptors, but LISTEN_FDS=2",
        ),
        (
            // Two sockets passed, three announced: descriptor 5 is not open (the launcher closed it).
            &["--fds", "3"],
            "activated: descriptor 5 is not open, but LISTEN_FDS=3 announces it",
        ),
        (
            &["--names", "a:b:c"],
            "activated: LISTEN_FDNAMES names 3 descriptors, but LISTEN_FDS=2",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--socket", "tcp", "--socket", "tcp"];
        args.extend_from_slice(extra);
        let out = run(&mut sb, &args, &[]);
        assert_exit(&out, 2);
        assert_stderr_has(&out, want);
        let _ = std::fs::remove_file(sb.path("launch.out"));
    }
}

#[test]
fn a_descriptor_the_program_opened_itself_is_not_taken() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    // Nothing on descriptor 3, but LISTEN_FDS=1: the fixture's own /dev/null lands there.
    let out = run(&mut sb, &["--fds", "1"], &["--open-first"]);
    assert_exit(&out, 2);
    assert_stderr_has(
        &out,
        "activated: descriptor 3 is close-on-exec, so this process opened it itself",
    );
    let _ = std::fs::remove_file(sb.path("launch.out"));
    let out = run(&mut sb, &["--fds", "1"], &[]);
    assert_exit(&out, 2);
    assert_stderr_has(
        &out,
        "activated: descriptor 3 is not open, but LISTEN_FDS=1 announces it",
    );
}

#[test]
fn a_socket_that_is_not_a_listening_stream_is_refused_with_what_it_is() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let out = run(&mut sb, &["--socket", "udp", "--names", "dns"], &[]);
    assert_exit(&out, 2);
    assert_stderr_has(
        &out,
        "activated: descriptor 3 (\"dns\") is a UDP socket, not a listening TCP socket",
    );
}

#[test]
fn a_second_take_in_one_process_is_refused() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let (_, passed) = serve(&mut sb, &["--socket", "tcp"], &["--take-twice"]);
    let info = get(&passed[0].addr, "/info").body;
    assert_has_line(
        &info,
        "second_take=the socket-activation descriptors were taken already (listen_fds() called twice)",
    );
}

#[test]
fn notify_health_and_exit_after_behave_as_documented() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let notify_path = sb.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut cmd = launch(
        &sb,
        &["--socket", "tcp"],
        &[
            "--notify",
            "--fail-health",
            "--exit-after",
            "2",
            "--exit-code",
            "7",
        ],
    );
    cmd.env("NOTIFY_SOCKET", &notify_path).stdout(Stdio::null());
    let pid = sb.spawn(cmd);
    let mut buf = [0u8; 64];
    let n = uninterrupted(|| notify.recv(&mut buf)).expect("READY=1 within the bound");
    assert_eq!(&buf[..n], b"READY=1");
    let addr = sb.read("launch.out");
    let addr = addr
        .split(' ')
        .find_map(|f| f.strip_prefix("addr="))
        .unwrap()
        .to_string();
    assert_eq!(get(&addr, "/healthz").status, 500);
    assert_eq!(get(&addr, "/nope").status, 404);
    let status = sb.wait_child(pid, TIMEOUT).expect("exits after 2 requests");
    assert_eq!(status.code(), Some(7));
}

#[test]
fn term_finishes_the_request_under_way_then_exits_0() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let (pid, passed) = serve(&mut sb, &["--socket", "tcp"], &[]);
    assert_eq!(get(&passed[0].addr, "/").status, 200, "serving");
    // One thread per connection being answered, beside the main one.
    let tasks = || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    assert!(
        wait_until(TIMEOUT, || tasks() == 1),
        "the first answer's thread never ended"
    );
    // Accepted, half a request sent: then TERM.
    let mut conn = std::net::TcpStream::connect(&passed[0].addr).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    assert!(
        wait_until(TIMEOUT, || tasks() == 2),
        "the connection was never accepted"
    );
    signal(pid, Signal::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || sb
            .read("out.log")
            .contains("activated: stopping, 1 connection(s) open")),
        "no stopping line: {}",
        sb.read("out.log")
    );
    conn.write_all(b"Host: test\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_response(&raw).status, 200);
    let status = sb.wait_child(pid, TIMEOUT).expect("exits after TERM");
    assert_eq!(status.code(), Some(0));
}
