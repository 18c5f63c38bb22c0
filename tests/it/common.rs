//! The integration-test harness: a sandbox directory per test, the real `warden` binary, bounded
//! waits, and a clean-up that kills every process the test started — by pid, also when the test
//! fails (on drop, during unwinding).
//!
//! # What lives here
//! What more than one area's module needs: the [`Sandbox`], the [`Test`] naming and timing, the
//! `/proc` observers, config builders (`python`, `toml_str`, `argv`, `script`), the command
//! assertions (`assert_exit`, `assert_stderr_has`, `assert_has_line`) and the launchers of the
//! fixtures in `tests/fixtures/`. A helper one module alone uses stays in that module.
//!
//! # Naming
//! Every test that starts processes opens with `let test = this_test!();`, the [`Test`] named
//! after its `fn`: its sandbox directory, its `[timing]` line and its `SKIPPED` messages all come
//! from it, so that no test name is ever typed as a string.
//!
//! # Forking
//! Nothing here forks: processes are started with `std::process::Command` (posix_spawn/vfork+exec
//! inside std), never with `fork()` in this multi-threaded harness.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The generous bound on any wait in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// How much of a test's name its sandbox directory carries.
const SANDBOX_NAME_CHARS: usize = 24;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The path of the binary under test.
pub fn warden_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

/// The [`Test`] named after the test function it is called in: `let test = this_test!();` as
/// the first line of a `#[test] fn`, so that the test's name is written once, as the `fn` name,
/// and its sandbox, `[timing]` line and `SKIPPED` messages cannot drift from it.
macro_rules! this_test {
    () => {{
        fn here() {}
        crate::common::Test::start(crate::common::enclosing_fn(std::any::type_name_of_val(
            &here,
        )))
    }};
}

/// The name of the function whose body declared the item at `path`, a
/// [`std::any::type_name_of_val`] such as `integration::control::some_test::here`. Its format
/// is not guaranteed by Rust: if it ever changes, this fails every test loudly rather than
/// letting a name drift.
pub fn enclosing_fn(path: &'static str) -> &'static str {
    let name = path
        .strip_suffix("::here")
        .and_then(|p| p.rsplit("::").next())
        .unwrap_or("");
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "this_test!(): cannot tell the test's name from {path:?}"
    );
    name
}

/// One running test, named by [`this_test!`]: it names the test's sandboxes and skip messages, and
/// prints how long the test took when it is dropped (also on failure).
pub struct Test {
    name: &'static str,
    started: Instant,
}

impl Test {
    /// Starts the test `name` (called by [`this_test!`] only).
    pub fn start(name: &'static str) -> Test {
        Test {
            name,
            started: Instant::now(),
        }
    }

    /// The test's name, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A fresh [`Sandbox`] for this test whose `[daemon]` table holds the `extra` lines.
    pub fn sandbox(&self, extra: &str) -> Sandbox {
        Sandbox::new(self.name, extra)
    }

    /// A sandbox for a supervisor: its config has `daemon` lines in `[daemon]` and `tables`
    /// after them, where `SANDBOX` is replaced by the sandbox directory and `PYTHON` by the real
    /// python3 (see [`Sandbox::write_programs`]). A `sleep` symlink is made in the sandbox so
    /// that `SANDBOX/sleep N` is a single process whose command line names the sandbox.
    pub fn supervisor_sandbox(&self, daemon: &str, tables: &str) -> Sandbox {
        let sb = self.sandbox("");
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sleep(1)");
        std::os::unix::fs::symlink(sleep, sb.path("sleep")).unwrap();
        sb.write_programs(daemon, tables);
        sb
    }

    /// True when running as root; otherwise prints why this test is skipped.
    pub fn require_root(&self) -> bool {
        if nix::unistd::Uid::effective().is_root() {
            true
        } else {
            self.skip("needs root (CI runs as root)");
            false
        }
    }

    /// True when `tool --version` runs; otherwise prints why this test is skipped (`package` is
    /// the Debian package that has it).
    pub fn require_tool(&self, tool: &str, package: &str) -> bool {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            self.skip(&format!("no {tool} ({package})"));
        }
        found
    }

    /// Prints that this test is skipped, and why (the caller then returns).
    pub fn skip(&self, why: &str) {
        eprintln!("SKIPPED {}: {why}", self.name);
    }
}

impl Drop for Test {
    fn drop(&mut self) {
        println!("[timing] {}: {:.2?}", self.name, self.started.elapsed());
    }
}

/// A temporary directory holding one test's config, pidfile and logs, and the list of processes
/// to kill when the test ends.
pub struct Sandbox {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Processes to kill at the end, each with its start time (field 22 of /proc/PID/stat) so
    /// that a pid recycled by the kernel for someone else's process is never killed.
    pids: Vec<(i32, u64)>,
    children: Vec<Child>,
}

impl Sandbox {
    /// A fresh sandbox for the test `name` (see [`Test::sandbox`]) with a config whose
    /// `[daemon]` table holds `pidfile` and `directory` in the sandbox plus the `extra` lines.
    pub fn new(name: &str, extra: &str) -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // The start of the name is enough to recognise the test, and keeps the paths of sockets
        // in the sandbox well within sun_path's 108 bytes.
        let short: String = name.chars().take(SANDBOX_NAME_CHARS).collect();
        let dir =
            std::env::temp_dir().join(format!("warden-test-{}-{n}-{short}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Tests drop privileges to nobody: let them in.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let sb = Sandbox {
            config: dir.join("warden.toml"),
            dir,
            pids: Vec::new(),
            children: Vec::new(),
        };
        sb.write_config(extra);
        sb
    }

    /// Rewrites the config with `extra` lines in `[daemon]` (after the sandbox defaults) and any
    /// further tables after a line that is exactly `#TABLES`.
    pub fn write_config(&self, extra: &str) {
        let (daemon_extra, tables) = match extra.split_once("#TABLES\n") {
            Some((a, b)) => (a, b),
            None => (extra, ""),
        };
        let mut text = format!(
            "[daemon]\npidfile = \"{}\"\ndirectory = \"{}\"\nlog = \"{}\"\n",
            self.pidfile().display(),
            self.dir.display(),
            self.dir.join("warden.log").display()
        );
        // Later keys may not repeat earlier ones in TOML: let `extra` override by filtering.
        for key in ["pidfile", "directory", "log"] {
            if daemon_extra.lines().any(|l| {
                l.trim_start().starts_with(&format!("{key} "))
                    || l.trim_start().starts_with(&format!("{key}="))
            }) {
                text = text
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{key} =")))
                    .map(|l| format!("{l}\n"))
                    .collect();
            }
        }
        text.push_str(daemon_extra);
        text.push('\n');
        text.push_str(tables);
        std::fs::write(&self.config, text).unwrap();
        // Readable whatever the test runner's umask: some tests launch warden as `nobody`.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Rewrites the config with `daemon` lines in `[daemon]` and `tables` after them, `SANDBOX`
    /// in either replaced by the sandbox directory and `PYTHON` by the real python3.
    pub fn write_programs(&self, daemon: &str, tables: &str) {
        let dir = path_str(&self.dir);
        let fill = |s: &str| s.replace("SANDBOX", &dir).replace("PYTHON", &python());
        self.write_config(&format!("{}\n#TABLES\n{}", fill(daemon), fill(tables)));
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("warden.pid")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `warden -c CONFIG ARGS…` ready to spawn.
    pub fn warden(&self, args: &[&str]) -> Command {
        let mut c = Command::new(warden_bin());
        c.arg("-c").arg(&self.config).args(args);
        c.env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM");
        c.stdin(Stdio::null());
        c
    }

    /// Runs `cmd` to completion (bounded by [`TIMEOUT`]), capturing its output.
    pub fn output(&mut self, mut cmd: Command) -> Output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn");
        // Not tracked: `wait_output` reaps it (killing it first if it overstays), after which its
        // pid may be recycled for an unrelated process.
        wait_output(child, TIMEOUT)
    }

    /// `warden ARGS…` to completion.
    pub fn run(&mut self, args: &[&str]) -> Output {
        let cmd = self.warden(args);
        self.output(cmd)
    }

    /// `warden start`, asserting success, and returns the daemon's pid (tracked for clean-up).
    pub fn start(&mut self) -> i32 {
        let out = self.run(&["start"]);
        assert!(
            out.status.success(),
            "warden start failed: {:?}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = self
            .pidfile_pid()
            .expect("pidfile names the daemon once start returns");
        self.track(pid);
        pid
    }

    /// `warden start` in a private mount namespace of its own (`unshare --mount`), after the
    /// shell commands `setup` (mounts that only warden then sees); its output.
    pub fn start_in_mount_namespace(&mut self, setup: &str) -> Output {
        let script = format!("{setup} && exec \"$@\"");
        let unshare = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ];
        self.start_under(&unshare)
    }

    /// `PREFIX… warden -c CONFIG start` to completion (a wrapper such as `setpriv` or
    /// `unshare` in front), the daemon it started tracked for clean-up; its output.
    pub fn start_under(&mut self, prefix: &[&str]) -> Output {
        let start = self.warden(&["start"]);
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(start.get_program()).args(start.get_args());
                c
            }
            None => start,
        };
        cmd.stdin(Stdio::null());
        let out = self.output(cmd);
        if let Some(pid) = self.pidfile_pid() {
            self.track(pid);
        }
        out
    }

    /// Spawns a long-running process (e.g. `warden run`), tracked for clean-up.
    pub fn spawn(&mut self, mut cmd: Command) -> i32 {
        let child = cmd.spawn().expect("spawn");
        let pid = child.id() as i32;
        // Killed and reaped through its `Child` handle on drop.
        self.children.push(child);
        pid
    }

    /// Waits (bounded) for a spawned child to exit and returns its exit status.
    pub fn wait_child(&mut self, pid: i32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let idx = self.children.iter().position(|c| c.id() as i32 == pid)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.children[idx].try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remembers `pid` so that it is killed when the sandbox goes.
    pub fn track(&mut self, pid: i32) {
        if let Some(t) = start_time(pid) {
            self.pids.push((pid, t));
        }
    }

    /// The pid written in the pidfile, if any.
    pub fn pidfile_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every live process whose command line mentions this sandbox.
    pub fn processes(&self) -> Vec<i32> {
        let needle = self.dir.to_string_lossy().into_owned();
        all_pids()
            .into_iter()
            .filter(|&p| {
                p != std::process::id() as i32
                    && std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                        .unwrap_or(false)
                    && !is_zombie(p)
            })
            .collect()
    }

    /// Reads a file in the sandbox (empty string if missing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Tracked processes that are still the very process tracked (same start time), and any
        // live process whose command line names this sandbox (the pidfile's daemon among them).
        let mut victims: Vec<i32> = self
            .pids
            .iter()
            .filter(|&&(pid, t)| start_time(pid) == Some(t))
            .map(|&(pid, _)| pid)
            .collect();
        victims.extend(self.processes());
        for pid in victims {
            if pid > 1 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("sandbox kept for inspection: {}", self.dir.display());
        }
    }
}

/// Waits for `child` with a bound, killing it when the bound passes.
///
/// The bound covers the output pipes too: a descendant that keeps the child's stdout or stderr
/// open (a daemon that did not redirect its stdio) fails the test instead of hanging it.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    use std::io::Read;
    use std::sync::mpsc;
    let deadline = Instant::now() + timeout;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut s) = pipe {
                let _ = s.read_to_end(&mut v);
            }
            let _ = tx.send(v);
        });
        rx
    };
    let out_rx = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_rx = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            panic!("command did not finish within {timeout:?} (killed, {st:?})");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let collect = |rx: mpsc::Receiver<Vec<u8>>, name: &str| {
        // At least a moment even when the child used up the whole bound.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!("the command exited ({status:?}) but its {name} pipe stayed open for {left:?}: a process it started kept it")
        })
    };
    Output {
        status,
        stdout: collect(out_rx, "stdout"),
        stderr: collect(err_rx, "stderr"),
    }
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The argv of `pid` (empty when it is gone).
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::metadata(format!("/proc/{pid}")).is_ok() && !is_zombie(pid)
}

pub fn is_zombie(pid: i32) -> bool {
    stat(pid)
        .map(|s| s.state == 'Z' || s.state == 'X')
        .unwrap_or(false)
}

/// The fields of /proc/PID/stat the tests look at.
#[derive(Debug, Clone)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i32,
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses one /proc/PID/stat line (e.g. printed by a process in another session).
pub fn parse_stat(s: &str) -> Option<Stat> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        tty_nr: f.get(4)?.parse().ok()?,
    })
}

/// The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks since boot): with the pid,
/// it names one process even after the pid is recycled.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// /proc/PID/status as a map.
pub fn status(pid: i32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The open descriptors of `pid` and what they point at.
pub fn fds(pid: i32) -> Vec<(i32, PathBuf)> {
    let mut v: Vec<(i32, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                Some((fd, std::fs::read_link(e.path()).ok()?))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The children of `pid` (by ppid), a supervisor's guard process excepted.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat(p).map(|s| s.ppid == pid).unwrap_or(false) && !is_guard(p))
        .collect()
}

/// Whether `pid` is a supervisor's guard process (`/bin/sh` with argv[0] `warden-guard`).
pub fn is_guard(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).next() == Some(b"warden-guard".as_slice()))
}

/// The live (non-zombie) children of `pid`, a supervisor's guard process excepted.
pub fn live_children(pid: i32) -> BTreeSet<i32> {
    children_of(pid).into_iter().filter(|&c| alive(c)).collect()
}

/// `SIGKILL`s warden and its guard together, as one event: warden is stopped first, so that it
/// cannot act on its guard's death (start another) before its own.
pub fn kill_together(warden: i32, guard: i32) {
    use nix::sys::signal::Signal;
    signal(warden, Signal::SIGSTOP);
    signal(guard, Signal::SIGKILL);
    signal(warden, Signal::SIGKILL);
}

/// `op` again for as long as it fails with `EINTR`. A blocking socket call with a timeout
/// (`SO_RCVTIMEO`) fails so, even without a signal handler, when the process was stopped and
/// continued (a job-control stop, a CPU throttler, a freezer): a test must not take that for
/// the peer's answer.
pub fn uninterrupted<T>(mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// A forking daemon, the kind `MAINPID=` exists for (`python3 -c FORKING_DAEMON SANDBOX
/// [stay]`): the launcher writes its pid to `launcher.pid` and forks; the child leaves the
/// session (`setsid`) and forks the daemon, which sends `MAINPID=<its pid>` and `READY=1` and
/// writes its pid (as it sees it) to `daemon.pid`. Then the daemon becomes `SANDBOX/sleep 1000`
/// and the launcher exits 0 once the file `go` exists; or, with `stay`, the launcher stays (a
/// wrapper) and the daemon exits 3 once the file `die` exists.
pub const FORKING_DAEMON: &str = r#"import os, socket, sys, time
d = sys.argv[1]
stay = sys.argv[2:] == ["stay"]
at = lambda name: os.path.join(d, name)
with open(at("launcher.pid"), "w") as f:
    f.write(str(os.getpid()))
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        addr = os.environ["NOTIFY_SOCKET"]
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        msg = "MAINPID=%d\nREADY=1" % os.getpid()
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(msg.encode(), addr)
        with open(at("daemon.tmp"), "w") as f:
            f.write(str(os.getpid()))
        os.rename(at("daemon.tmp"), at("daemon.pid"))
        if not stay:
            os.execv(at("sleep"), ["sleep", "1000"])
        while not os.path.exists(at("die")):
            time.sleep(0.01)
        os._exit(3)
    os._exit(0)
while stay or not os.path.exists(at("go")):
    time.sleep(0.01)
"#;

/// Where cgroup v2 is mounted (`/proc/self/mountinfo`).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// The exit code of a finished command (`None` when a signal ended it).
pub fn exit_code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// Asserts that the command behind `out` exited with `code`, showing its stdout and stderr
/// otherwise.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        exit_code(out),
        Some(code),
        "{}{}",
        stdout_of(out),
        stderr_of(out)
    );
}

/// Asserts that the stderr of the command behind `out` contains `text`.
#[track_caller]
pub fn assert_stderr_has(out: &Output, text: &str) {
    assert!(stderr_of(out).contains(text), "{}", stderr_of(out));
}

/// Asserts that `text` has a line that is exactly `line`.
#[track_caller]
pub fn assert_has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in:\n{text}"
    );
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The daemon log of the sandbox (`warden.log`; empty if missing).
pub fn log(sb: &Sandbox) -> String {
    sb.read("warden.log")
}

/// The sandbox directory as a string, for commands and configs.
pub fn dir(sb: &Sandbox) -> String {
    path_str(&sb.dir)
}

/// Writes a script into the sandbox and returns its path.
pub fn script(sb: &Sandbox, name: &str, text: &str) -> String {
    let path = sb.path(name);
    std::fs::write(&path, text).unwrap();
    path_str(&path)
}

/// The real python3 (not a version-manager shim that forks helpers on every start).
pub fn python() -> String {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    "python3".to_string()
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings: a `command`.
pub fn argv(parts: &[&str]) -> String {
    let items: Vec<String> = parts.iter().map(|p| toml_str(p)).collect();
    format!("[{}]", items.join(", "))
}

/// Asserts that no process mentions the sandbox any more (bounded wait).
pub fn assert_no_process(sb: &Sandbox) {
    assert!(
        wait_until(TIMEOUT, || sb.processes().is_empty()),
        "processes left behind: {:?}",
        sb.processes()
    );
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The `[[example]]` program `name` of this package (an example from `examples/` or a fixture
/// from `tests/fixtures/`), built once per test binary with the test's own profile: cargo is asked every time (cheap when up to date) so that a stale example is never
/// what gets tested.
pub fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "--example", name]);
    if exe.components().any(|c| c.as_os_str() == "release") {
        cargo.arg("--release");
    }
    let st = cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(st.success(), "cargo build --example {name} failed");
    built.push((name.to_string(), path.clone()));
    path
}

/// `lifecycle --dir SANDBOX ARGS…`: the life-cycle fixture (`tests/fixtures/lifecycle.rs`), ready
/// to run.
pub fn lifecycle(sb: &Sandbox, args: &[&str]) -> Command {
    let mut c = Command::new(example("lifecycle"));
    c.arg("--dir").arg(&sb.dir).args(args);
    c.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM");
    c.stdin(Stdio::null());
    c
}

/// Starts the life-cycle fixture as a daemon (the launcher returns once it is ready) and returns
/// the daemon's pid from `app.pid`, tracked for clean-up.
pub fn start_lifecycle(sb: &mut Sandbox, args: &[&str]) -> i32 {
    let out = sb.output(lifecycle(sb, args));
    assert!(
        out.status.success(),
        "lifecycle {args:?} failed: {:?}\nstderr: {}",
        out.status,
        stderr_of(&out)
    );
    let pid: i32 = sb
        .read("app.pid")
        .trim()
        .parse()
        .expect("app.pid names the daemon once the launcher returns");
    sb.track(pid);
    pid
}

/// `warden ARGS…`, asserting exit status `want`; returns stdout.
pub fn expect(sb: &mut Sandbox, args: &[&str], want: i32) -> String {
    let out = sb.run(args);
    assert_eq!(
        exit_code(&out),
        Some(want),
        "warden {args:?}: {:?}\nstdout: {}\nstderr: {}\nlog:\n{}",
        out.status,
        stdout_of(&out),
        stderr_of(&out),
        log(sb)
    );
    stdout_of(&out)
}

/// `warden status --json`, parsed (`null` if it printed no JSON, for callers that poll).
pub fn status_json(sb: &mut Sandbox) -> serde_json::Value {
    let out = sb.run(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Polls `warden status` (table and JSON: two requests) until `pred` holds on both; returns
/// them.
pub fn wait_status(
    sb: &mut Sandbox,
    what: &str,
    pred: impl Fn(&str, &serde_json::Value) -> bool,
) -> (String, serde_json::Value) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = stdout_of(&sb.run(&["status"]));
        let v = status_json(sb);
        if pred(&text, &v) {
            return (text, v);
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last:\n{text}\n{v:#}\nlog:\n{}",
            log(sb)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
