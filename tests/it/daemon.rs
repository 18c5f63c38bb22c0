//! The daemon(7) sequence of `warden start`, `stop`, `status`, `check` and `run`, seen from the
//! outside: /proc/PID/{stat,status,fd,cwd}, the pidfile, its lock, exit codes and stderr.
//!
//! Every test has its own sandbox; every process it starts is killed and reaped by the sandbox
//! on drop, also when the test fails. Waits are bounded and poll a condition; nothing sleeps to
//! let time pass. Launchers with a dirty state (extra descriptors, blocked and ignored signals, a
//! pseudo-terminal, another user) are built with `python3`, `script` and `setpriv`, exec'ing the
//! real binary, so that the test process itself never forks.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, TryLockError};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::Signal;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Shell-quotes `s` in single quotes.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Asserts that some process holds the flock of `path`: our own non-blocking exclusive lock
/// attempt must fail with `WouldBlock`. Released at once if it unexpectedly succeeds.
fn assert_locked(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    match f.try_lock() {
        Err(TryLockError::WouldBlock) => {}
        Ok(()) => {
            let _ = f.unlock();
            panic!("nobody holds the lock of {}", path.display());
        }
        Err(TryLockError::Error(e)) => panic!("try_lock {}: {e}", path.display()),
    }
}

/// `warden status` and its exit code.
fn status_code(sb: &mut Sandbox) -> Option<i32> {
    exit_code(&sb.run(&["status"]))
}

/// The pids from this process up to PID 1 (this process excluded): the only processes an
/// orphan can be reparented to are PID 1 and subreapers among them.
fn ancestors_of_self() -> Vec<i32> {
    let mut v = Vec::new();
    let mut p = std::process::id() as i32;
    while let Some(s) = stat(p) {
        if s.ppid <= 0 {
            break;
        }
        v.push(s.ppid);
        if s.ppid == 1 {
            break;
        }
        p = s.ppid;
    }
    v
}

/// The daemon is detached: not a session or group leader, no controlling terminal, and its
/// parent is PID 1 or a subreaper above us (or this very process, if it is a subreaper), never
/// the launcher or an intermediate process (the launcher is our child and the intermediate its
/// child: neither is PID 1 or our ancestor).
fn assert_detached(sb: &Sandbox, pid: i32) {
    let st = stat(pid).expect("daemon alive");
    let me = std::process::id() as i32;
    assert_ne!(
        st.session, pid,
        "the daemon is a session leader (it could acquire a tty)"
    );
    assert_ne!(st.pgrp, pid, "the daemon leads its process group");
    assert_eq!(st.tty_nr, 0, "the daemon has a controlling terminal");
    assert!(
        st.session != stat(me).unwrap().session,
        "the daemon is still in the test's session: no setsid"
    );
    let we_reap = st.ppid == me && nix::sys::prctl::get_child_subreaper().unwrap_or(false);
    assert!(
        st.ppid == 1 || ancestors_of_self().contains(&st.ppid) || we_reap,
        "the daemon's parent {} is neither PID 1 nor a subreaper above the test ({:?}); \
         processes of this sandbox: {:?}",
        st.ppid,
        ancestors_of_self(),
        sb.processes()
    );
    // A parent named by this sandbox would be the launcher or the intermediate of the forks.
    assert!(
        !sb.processes().contains(&st.ppid),
        "the daemon's parent {} is one of the sandbox's processes",
        st.ppid
    );
}

/// Mode bits of a file.
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// The ids on a `Uid:`/`Gid:`/`Groups:` line of /proc/PID/status.
fn ids(line: &str) -> Vec<u32> {
    line.split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Everything a failed start must leave behind: nothing.
fn assert_failed_cleanly(sb: &Sandbox, out: &Output) {
    assert!(
        !out.status.success(),
        "start should fail; stderr: {}",
        stderr_of(out)
    );
    assert_no_process(sb);
    assert!(
        std::fs::symlink_metadata(sb.pidfile()).is_err(),
        "a pidfile was left at {}",
        sb.pidfile().display()
    );
}

// ---------------------------------------------------------------------------------------------
// Detaching
// ---------------------------------------------------------------------------------------------

/// `warden start` returns only once the daemon is up, detached from the launcher's session and
/// terminal, with stdio on /dev/null by default and its pidfile written and locked.
#[test]
fn start_detaches_writes_and_locks_the_pidfile() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = sb.start();
    assert!(alive(pid));
    assert_detached(&sb, pid);

    // Pidfile: exactly "PID\n", mode 0644, locked by the daemon.
    let text = std::fs::read_to_string(sb.pidfile()).unwrap();
    assert_eq!(text, format!("{pid}\n"));
    assert_eq!(mode(&sb.pidfile()), 0o644);
    assert_locked(&sb.pidfile());

    // Defaults: working directory as configured (the sandbox), umask 022, stdio on /dev/null.
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::fs::canonicalize(&sb.dir).unwrap()
    );
    assert_eq!(status(pid)["Umask"], "0022");
    let f: HashMap<i32, PathBuf> = fds(pid).into_iter().collect();
    for fd in 0..3 {
        assert_eq!(f[&fd], Path::new("/dev/null"), "fd {fd}: {f:?}");
    }
    assert_eq!(status_code(&mut sb), Some(0));
}

/// Launched from a pseudo-terminal (util-linux `script` gives the launcher a pty as its
/// controlling terminal, in a session of its own), the daemon is in neither that session nor any
/// terminal while the pty is still up, and it survives the pty's hang-up when `script` exits.
#[test]
fn daemon_has_no_terminal_and_survives_the_pty_hangup() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    // Inside the pty: show the terminal, start, then print the shell's and the daemon's stat
    // lines while the terminal is still there (once its session leader exits, the kernel takes
    // the terminal away from every process of the session, which would hide a missing setsid).
    let inner = format!(
        "tty && {} -c {} start && echo STAT && cat /proc/$$/stat /proc/$(cat {})/stat",
        sh_quote(&path_str(&warden_bin())),
        sh_quote(&path_str(&sb.config)),
        sh_quote(&path_str(&sb.pidfile()))
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"]).stdin(Stdio::null());
    let out = sb.output(cmd);
    let text = stdout_of(&out);
    if let Some(pid) = sb.pidfile_pid() {
        sb.track(pid);
    }
    assert!(
        out.status.success(),
        "script/warden start failed: {:?}\n{text}{}",
        out.status,
        stderr_of(&out)
    );
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    // The control: the launcher really ran on a pseudo-terminal, which its shell holds.
    assert!(
        lines[0].starts_with("/dev/pts/"),
        "launcher not on a pty: {text:?}"
    );
    let at = lines.iter().position(|&l| l == "STAT").expect("stat lines");
    let shell = parse_stat(lines[at + 1]).expect("the shell's stat line");
    let daemon = parse_stat(lines[at + 2]).expect("the daemon's stat line");
    assert_ne!(
        shell.tty_nr, 0,
        "control: the shell in `script` has no terminal: {text:?}"
    );
    assert_eq!(
        daemon.tty_nr, 0,
        "the daemon has the launcher's terminal: {text:?}"
    );
    assert_ne!(
        daemon.session, shell.session,
        "the daemon is in the launcher's session"
    );

    // `script` has exited, closing the pty master: the terminal is hung up.
    let pid = sb.pidfile_pid().expect("pidfile written");
    assert!(alive(pid), "the daemon died with the terminal");
    assert_detached(&sb, pid);
    for (fd, target) in fds(pid) {
        assert!(
            !path_str(&target).starts_with("/dev/pts") && target != Path::new("/dev/tty"),
            "the daemon keeps the terminal open on fd {fd}: {}",
            target.display()
        );
    }
    // Still serving: `status` sees the lock, `stop` gets an answer.
    assert_eq!(status_code(&mut sb), Some(0));
    assert!(alive(pid));
    let out = sb.run(&["stop"]);
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
}

/// The launcher in `dirty_launcher`: python opens descriptors without CLOEXEC (a file, a pipe, a
/// socketpair, and a copy at fd 100), blocks SIGUSR1, ignores SIGUSR2, sets umask 077, writes
/// what its leaked descriptors point at (as /proc shows them) to `MANIFEST`, then execs `ARGV`
/// (`@python` as `ARGV[0]` means this python interpreter).
const DIRTY_LAUNCHER: &str = r#"
import os, signal, socket, sys
manifest, argv = sys.argv[1], sys.argv[2:]
if argv[0] == "@python":
    argv[0] = sys.executable
leak = os.open(manifest + ".leaked-file", os.O_RDWR | os.O_CREAT, 0o600)
r, w = os.pipe()
a, b = socket.socketpair()
high = os.dup2(leak, 100, inheritable=True)
fds = [leak, r, w, a.fileno(), b.fileno(), high]
for fd in fds:
    os.set_inheritable(fd, True)
with open(manifest, "w") as m:
    for fd in fds:
        m.write(os.readlink("/proc/self/fd/%d" % fd) + "\n")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
os.umask(0o077)
os.execv(argv[0], argv)
"#;

/// A `python3` command that runs `argv` from a launcher with leaked descriptors, blocked and
/// ignored signals and umask 077; returns it and the manifest path.
fn dirty_launcher(sb: &Sandbox, tag: &str, argv: &[&str]) -> (Command, PathBuf) {
    let manifest = sb.path(&format!("{tag}.manifest"));
    let mut c = Command::new("python3");
    c.arg("-c").arg(DIRTY_LAUNCHER).arg(&manifest).args(argv);
    c.env_remove("NOTIFY_SOCKET").stdin(Stdio::null());
    (c, manifest)
}

fn manifest(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).expect("the launcher wrote its manifest");
    let set: BTreeSet<String> = text.lines().map(str::to_string).collect();
    assert!(
        set.iter().any(|t| t.ends_with(".leaked-file"))
            && set.iter().any(|t| t.starts_with("pipe:["))
            && set.iter().any(|t| t.starts_with("socket:[")),
        "incomplete manifest {set:?}"
    );
    set
}

/// The anonymous descriptors a running warden opens for itself: the supervisor's epoll instance
/// and a mio waker. (Its sockets — the signal self-pipe pair, the children's notify socket — are
/// told from the launcher's by their inode, in the manifest.)
const DAEMON_ANON_INODES: &[&str] = &[
    "anon_inode:[eventpoll]",
    "anon_inode:[eventfd]",
    // cgroup mode: the watch on instances' cgroup.events.
    "anon_inode:inotify",
];

/// The control for the launcher test: a program exec'd by the dirty launcher does inherit all of
/// it: SIGUSR1 blocked, SIGUSR2 ignored, umask 077 and the leaked descriptors. (Not a shell: dash
/// clears the signal mask at start-up. Python leaves mask, dispositions and fds alone.)
fn assert_the_launcher_passes_on_its_state(sb: &mut Sandbox) {
    let control_script = "import os\n\
        for l in open('/proc/self/status'):\n\
        \x20   if l.startswith(('SigBlk:', 'SigIgn:', 'Umask:')): print(l, end='')\n\
        for fd in os.listdir('/proc/self/fd'):\n\
        \x20   try: print(os.readlink('/proc/self/fd/' + fd))\n\
        \x20   except OSError: pass\n";
    let (cmd, control_manifest) = dirty_launcher(sb, "control", &["@python", "-c", control_script]);
    let out = sb.output(cmd);
    assert!(
        out.status.success(),
        "control launcher: {:?} {}",
        out.status,
        stderr_of(&out)
    );
    let seen = stdout_of(&out);
    let control: HashMap<&str, &str> = seen
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    let sigblk = u64::from_str_radix(control["SigBlk"], 16).unwrap();
    let sigign = u64::from_str_radix(control["SigIgn"], 16).unwrap();
    assert_ne!(
        sigblk & (1 << (libc::SIGUSR1 - 1)),
        0,
        "control: SIGUSR1 not blocked\n{seen}"
    );
    assert_ne!(
        sigign & (1 << (libc::SIGUSR2 - 1)),
        0,
        "control: SIGUSR2 not ignored\n{seen}"
    );
    assert_eq!(control["Umask"], "0077", "control umask\n{seen}");
    for leaked in manifest(&control_manifest) {
        assert!(
            seen.lines().any(|l| l == leaked),
            "control: {leaked} not inherited\n{seen}"
        );
    }
}

/// `pid`'s descriptors are its own: stdin `/dev/null`, stdout and stderr the configured files,
/// the pidfile and the log file once each, sockets and [`DAEMON_ANON_INODES`]; none of the
/// `leaked` ones its launcher had.
fn assert_only_its_own_descriptors(sb: &Sandbox, pid: i32, leaked: &BTreeSet<String>) {
    // The daemon closes its end of the readiness pipe right after writing its verdict, and the
    // launcher may return between the two: wait (bounded) for that close before judging.
    let pipe_open = || {
        fds(pid)
            .iter()
            .any(|(_, t)| path_str(t).starts_with("pipe:"))
    };
    wait_until(TIMEOUT, || !pipe_open());
    let f = fds(pid);
    let by_fd: HashMap<i32, PathBuf> = f.iter().cloned().collect();
    assert_eq!(by_fd[&0], Path::new("/dev/null"), "{f:?}");
    assert_eq!(
        by_fd[&1],
        std::fs::canonicalize(sb.path("out.log")).unwrap(),
        "{f:?}"
    );
    assert_eq!(
        by_fd[&2],
        std::fs::canonicalize(sb.path("err.log")).unwrap(),
        "{f:?}"
    );
    let pidfile = std::fs::canonicalize(sb.pidfile()).unwrap();
    let logfile = std::fs::canonicalize(sb.path("warden.log")).unwrap();
    // Its own binary, opened by the daemon itself: what `warden upgrade` goes back to.
    let binary = std::fs::canonicalize(warden_bin()).unwrap();
    let (mut n_pidfile, mut n_log, mut n_binary) = (0, 0, 0);
    for (fd, target) in f.iter().filter(|(fd, _)| *fd > 2) {
        let t = path_str(target);
        assert!(
            !leaked.contains(&t),
            "fd {fd} inherited from the launcher: {t}\n{f:?}"
        );
        if *target == pidfile {
            n_pidfile += 1;
        } else if *target == logfile {
            n_log += 1;
        } else if *target == binary {
            n_binary += 1;
        } else {
            assert!(
                t.starts_with("socket:[") || DAEMON_ANON_INODES.contains(&t.as_str()),
                "fd {fd} -> {t} is not one of the daemon's own (pidfile, log file, sockets, \
                 {DAEMON_ANON_INODES:?})\n{f:?}"
            );
        }
    }
    assert_eq!(
        (n_pidfile, n_log, n_binary),
        (1, 1, 1),
        "pidfile, log file and its own binary open once each: {f:?}"
    );
}

/// A launcher that leaks descriptors, blocks SIGUSR1, ignores SIGUSR2 and has umask 077: the
/// daemon gets none of it. Its cwd and umask are the configured ones, fds 0/1/2 are /dev/null
/// and the configured stdout/stderr files, and every other descriptor is one of its own: the
/// locked pidfile, its log file, its own binary (kept for `upgrade`), its event loop, and
/// sockets that are not the launcher's.
#[test]
fn daemon_inherits_no_descriptor_signal_state_or_umask_from_its_launcher() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let work = sb.path("work");
    std::fs::create_dir(&work).unwrap();
    sb.write_config(&format!(
        "directory = \"{}\"\numask = \"027\"\nstdout = \"{}\"\nstderr = \"{}\"",
        work.display(),
        sb.path("out.log").display(),
        sb.path("err.log").display()
    ));

    // Control: a program exec'd by the same launcher does inherit all of it.
    assert_the_launcher_passes_on_its_state(&mut sb);

    // The real thing.
    let bin = path_str(&warden_bin());
    let config = path_str(&sb.config);
    let (cmd, manifest_path) = dirty_launcher(&sb, "start", &[&bin, "-c", &config, "start"]);
    let out = sb.output(cmd);
    assert!(
        out.status.success(),
        "warden start: {:?} {}",
        out.status,
        stderr_of(&out)
    );
    let pid = sb.pidfile_pid().expect("pidfile written");
    sb.track(pid);
    let leaked = manifest(&manifest_path);
    assert_detached(&sb, pid);

    let st = status(pid);
    assert_eq!(
        st["SigBlk"], "0000000000000000",
        "blocked signals inherited"
    );
    assert_eq!(
        st["SigIgn"], "0000000000000000",
        "ignored signals inherited"
    );
    assert_eq!(st["Umask"], "0027");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::fs::canonicalize(&work).unwrap()
    );

    assert_only_its_own_descriptors(&sb, pid, &leaked);

    // The pidfile's mode does not follow the launcher's umask 077 nor the configured 027.
    assert_eq!(
        std::fs::read_to_string(sb.pidfile()).unwrap(),
        format!("{pid}\n")
    );
    assert_eq!(mode(&sb.pidfile()), 0o644);
    assert_locked(&sb.pidfile());
}

// ---------------------------------------------------------------------------------------------
// One instance
// ---------------------------------------------------------------------------------------------

/// A second `start` fails with `already running (pid N)` naming the first daemon, which keeps
/// running with its pidfile untouched.
#[test]
fn second_start_is_refused_and_leaves_the_first_untouched() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = sb.start();
    let before = std::fs::metadata(sb.pidfile()).unwrap();
    let text = std::fs::read_to_string(sb.pidfile()).unwrap();

    let out = sb.run(&["start"]);
    assert!(!out.status.success(), "second start succeeded");
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("already running (pid {pid})")),
        "stderr: {err}"
    );

    assert!(alive(pid));
    assert_eq!(sb.processes(), vec![pid], "a second daemon is around");
    let after = std::fs::metadata(sb.pidfile()).unwrap();
    assert_eq!(std::fs::read_to_string(sb.pidfile()).unwrap(), text);
    assert_eq!((after.ino(), after.mode()), (before.ino(), before.mode()));
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec()),
        "the pidfile was written to"
    );
    assert_locked(&sb.pidfile());
    assert_eq!(status_code(&mut sb), Some(0));
}

/// After `kill -9` the pidfile stays but nobody holds its lock: `status` says 1 (dead, pidfile
/// remains), `stop` says `not running`, and `start` takes the file over with the new pid. A
/// clean stop then leaves `status` 3.
#[test]
fn stale_pidfile_after_kill_9_is_taken_over() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    assert_eq!(status_code(&mut sb), Some(3), "before any start");
    let first = sb.start();
    assert_eq!(status_code(&mut sb), Some(0));

    signal(first, Signal::SIGKILL);
    assert!(
        wait_until(TIMEOUT, || !alive(first)),
        "kill -9 did not kill"
    );
    assert_eq!(
        sb.pidfile_pid(),
        Some(first),
        "SIGKILL cannot remove the pidfile"
    );
    let out = sb.run(&["status"]);
    assert_eq!(exit_code(&out), Some(1), "stale: {}", stdout_of(&out));

    let out = sb.run(&["stop"]);
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("not running"),
        "{}",
        stdout_of(&out)
    );

    let second = sb.start();
    assert_ne!(second, first);
    assert_eq!(
        std::fs::read_to_string(sb.pidfile()).unwrap(),
        format!("{second}\n")
    );
    assert_locked(&sb.pidfile());
    assert_eq!(status_code(&mut sb), Some(0));

    let out = sb.run(&["stop"]);
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
    assert_eq!(status_code(&mut sb), Some(3), "after a clean stop");
}

/// `warden status` into a pipe nobody reads ends by SIGPIPE, like any filter, not with a panic.
#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    let test = this_test!();
    use std::os::unix::process::ExitStatusExt;
    let mut sb = test.sandbox("");
    let pid = sb.start();
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let mut cmd = sb.warden(&["status"]);
    cmd.stdout(Stdio::from(w)).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn warden status");
    let out = wait_output(child, TIMEOUT);
    let err = stderr_of(&out);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(alive(pid));
}

/// An empty `NOTIFY_SOCKET` names no service manager: `start` still detaches and returns.
#[test]
fn an_empty_notify_socket_does_not_keep_start_in_the_foreground() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let mut cmd = sb.warden(&["start"]);
    cmd.env("NOTIFY_SOCKET", "");
    let out = sb.output(cmd);
    if let Some(pid) = sb.pidfile_pid() {
        sb.track(pid);
    }
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
    let pid = sb.pidfile_pid().expect("pidfile names the daemon");
    assert_detached(&sb, pid);
}

/// 50 `warden start` at once: exactly one succeeds, the 49 others fail with `already running`,
/// and exactly one daemon is left.
#[test]
fn fifty_concurrent_starts_yield_exactly_one_daemon() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pidfile = sb.pidfile();
    concurrent_starts(&mut sb, &pidfile);
}

/// The same race when the pidfile's directory does not exist yet: the starts that lose the race
/// to create it still say `already running`.
#[test]
fn fifty_concurrent_starts_creating_the_pidfile_directory_yield_one_daemon() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pidfile = sb.path("run").join("warden.pid");
    sb.write_config(&format!("pidfile = \"{}\"", pidfile.display()));
    concurrent_starts(&mut sb, &pidfile);
}

fn concurrent_starts(sb: &mut Sandbox, pidfile: &Path) {
    const N: usize = 50;
    let mut children = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = sb.warden(&["start"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        children.push(c.spawn().expect("spawn warden start"));
    }
    // Each wait is bounded by TIMEOUT and they all run at once.
    let waiters: Vec<_> = children
        .into_iter()
        .map(|c| std::thread::spawn(move || wait_output(c, TIMEOUT)))
        .collect();
    let outs: Vec<Output> = waiters.into_iter().map(|w| w.join().unwrap()).collect();

    let winners: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    let pid: Option<i32> = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if let Some(pid) = pid {
        sb.track(pid);
    }
    assert_eq!(
        winners.len(),
        1,
        "successful starts: {}; stderr of the failures: {:?}",
        winners.len(),
        outs.iter()
            .filter(|o| !o.status.success())
            .map(stderr_of)
            .collect::<Vec<_>>()
    );
    let pid = pid.expect("the winner's pidfile");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = stderr_of(o);
        assert_eq!(exit_code(o), Some(1), "{err}");
        assert!(err.contains("already running (pid "), "{err}");
        // A loser that read a pid read the winner's.
        assert!(
            err.contains(&format!("(pid {pid})")) || err.contains("(pid unknown)"),
            "wrong pid in {err:?}, the daemon is {pid}"
        );
    }
    assert!(alive(pid));
    assert_eq!(
        sb.processes(),
        vec![pid],
        "not exactly one warden process left"
    );
    assert_locked(pidfile);
}

// ---------------------------------------------------------------------------------------------
// Failing starts
// ---------------------------------------------------------------------------------------------

/// A pidfile whose directory cannot be written fails `start` in the launcher, naming the path
/// and the reason, and leaves nothing behind. Root ignores permission bits, so the directory is
/// made unusable with a regular file in the path (ENOTDIR), and, for permissions, warden runs as
/// `nobody` (through setpriv) when the test runs as root.
#[test]
fn unwritable_pidfile_directory_fails_start() {
    let test = this_test!();
    // ENOTDIR: the pidfile's "directory" is a regular file.
    let mut sb = test.sandbox("");
    let notdir = sb.path("notdir");
    std::fs::write(&notdir, "a file\n").unwrap();
    let pidfile = notdir.join("warden.pid");
    sb.write_config(&format!("pidfile = \"{}\"", pidfile.display()));
    let out = sb.run(&["start"]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "start succeeded: {err}");
    assert!(
        err.contains(&path_str(&pidfile)) && err.contains("Not a directory"),
        "stderr does not name the pidfile and the reason: {err}"
    );
    assert_no_process(&sb);
    assert_eq!(std::fs::read_to_string(&notdir).unwrap(), "a file\n");

    // EACCES: a root-owned 0755 directory, warden running as nobody.
    let mut sb = test.sandbox("");
    let locked = sb.path("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let pidfile = locked.join("warden.pid");
    sb.write_config(&format!("pidfile = \"{}\"", pidfile.display()));
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
        c.arg(warden_bin());
        c
    } else {
        Command::new(warden_bin())
    };
    cmd.arg("-c")
        .arg(&sb.config)
        .arg("start")
        .stdin(Stdio::null());
    cmd.env_remove("NOTIFY_SOCKET");
    let out = sb.output(cmd);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "start succeeded: {err}");
    assert!(
        err.contains(&path_str(&pidfile)) && err.contains("Permission denied"),
        "stderr does not name the pidfile and the reason: {err}"
    );
    assert_eq!(
        exit_code(&out),
        Some(4),
        "permission denied is exit status 4: {err}"
    );
    assert_no_process(&sb);
    assert!(std::fs::symlink_metadata(&pidfile).is_err());
}

/// A missing working directory fails in the daemon, after the forks: the launcher still reports
/// it (the reason travels through the readiness pipe), exits non-zero, and the pidfile it
/// created is gone.
#[test]
fn missing_working_directory_fails_start() {
    let test = this_test!();
    let mut sb = test.sandbox("directory = \"/nonexistent/x\"");
    let out = sb.run(&["start"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("/nonexistent/x"),
        "stderr does not name the directory: {err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(exit_code(&out), Some(1), "{err}");
    assert_failed_cleanly(&sb, &out);
}

/// An unknown user fails in the launcher, before anything is created.
#[test]
fn unknown_user_fails_start() {
    let test = this_test!();
    let mut sb = test.sandbox("user = \"no-such-user\"");
    let out = sb.run(&["start"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("unknown user \"no-such-user\""),
        "stderr: {err}"
    );
    assert_failed_cleanly(&sb, &out);
}

/// A fork the kernel refuses — the first one, or the intermediate's — fails `start` with the
/// reason, removes the pidfile and leaves no process. `RLIMIT_NPROC` binds only unprivileged
/// users, so the launcher runs as a uid nothing else uses (root in CI; skipped elsewhere).
#[test]
fn a_refused_fork_fails_start_cleanly() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    // 1: the launcher alone reaches the limit, so the first fork fails; 2: the intermediate's.
    for nproc in [1, 2] {
        let mut sb = test.sandbox("");
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nproc={nproc}"))
            .args([
                "--",
                "setpriv",
                "--reuid=54321",
                "--regid=54321",
                "--clear-groups",
            ])
            .arg("--")
            .arg(warden_bin())
            .arg("-c")
            .arg(&sb.config)
            .arg("start")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        let out = sb.output(cmd);
        let err = stderr_of(&out);
        assert_eq!(exit_code(&out), Some(1), "nproc {nproc}: {err}");
        assert!(
            err.contains("fork failed: Resource temporarily unavailable"),
            "nproc {nproc}: {err}"
        );
        assert_failed_cleanly(&sb, &out);
    }
}

/// A symlink planted at the pidfile path is refused, never followed: the file it points at is
/// not touched, and a dangling one does not create its target.
#[test]
fn symlink_at_pidfile_path_is_not_followed() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let victim = sb.path("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, sb.pidfile()).unwrap();

    let out = sb.run(&["start"]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "start followed the symlink: {err}");
    assert!(
        err.contains(&path_str(&sb.pidfile())) && err.contains("symbolic link"),
        "stderr: {err}"
    );
    assert_no_process(&sb);
    let after = std::fs::metadata(&victim).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(mode(&victim), 0o600);
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.uid()),
        (before.mtime(), before.mtime_nsec(), before.uid())
    );
    assert!(
        std::fs::symlink_metadata(sb.pidfile())
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Dangling: O_CREAT must not create the target through the link.
    let target = sb.path("would-be-created");
    std::fs::remove_file(sb.pidfile()).unwrap();
    std::os::unix::fs::symlink(&target, sb.pidfile()).unwrap();
    let out = sb.run(&["start"]);
    assert!(!out.status.success(), "start followed the dangling symlink");
    assert!(!target.exists(), "the symlink's target was created");
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

/// With `user = "nobody"` the daemon runs as nobody's uid and gid with no group but nobody's
/// own, although its launcher had root's group and supplementary groups; root cannot come back
/// (no effective capabilities); the pidfile belongs to nobody and is still removed on stop,
/// which nobody itself may run.
#[test]
fn privilege_drop_to_nobody_leaves_no_supplementary_groups() {
    let test = this_test!();
    if !test.require_root() {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    // The groups initgroups(3) gives nobody: its primary group and any listing it as a member.
    let mut expected: BTreeSet<u32> = BTreeSet::from([gid]);
    for line in std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() == 4 && f[3].split(',').any(|m| m == "nobody") {
            expected.insert(f[2].parse().unwrap());
        }
    }

    let mut sb = test.sandbox("user = \"nobody\"");
    // The launcher carries supplementary groups the daemon must lose.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--groups=0,4,100", "--"]).arg(warden_bin());
    cmd.arg("-c")
        .arg(&sb.config)
        .arg("start")
        .stdin(Stdio::null());
    cmd.env_remove("NOTIFY_SOCKET");
    let out = sb.output(cmd);
    assert!(
        out.status.success(),
        "start as nobody: {:?} {}",
        out.status,
        stderr_of(&out)
    );
    let pid = sb.pidfile_pid().expect("pidfile written");
    sb.track(pid);

    let st = status(pid);
    assert_eq!(ids(&st["Uid"]), vec![uid; 4], "Uid: {}", st["Uid"]);
    assert_eq!(ids(&st["Gid"]), vec![gid; 4], "Gid: {}", st["Gid"]);
    let groups: BTreeSet<u32> = ids(&st["Groups"]).into_iter().collect();
    assert!(
        groups.is_subset(&expected),
        "supplementary groups kept: Groups: {} (nobody's: {expected:?})",
        st["Groups"]
    );
    assert!(
        !groups.contains(&0) || expected.contains(&0),
        "root's group kept"
    );
    assert_eq!(st["CapEff"], "0000000000000000", "capabilities kept");
    assert_eq!(st["CapPrm"], "0000000000000000", "capabilities kept");
    let meta = std::fs::metadata(sb.pidfile()).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "pidfile not chowned to nobody"
    );
    assert_locked(&sb.pidfile());

    // Its own user can stop it, although a daemon that dropped privileges is not dumpable and
    // nobody may not read its /proc/PID/fd.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(warden_bin())
        .arg("-c")
        .arg(&sb.config)
        .arg("stop")
        .stdin(Stdio::null());
    let out = sb.output(cmd);
    assert_eq!(
        exit_code(&out),
        Some(0),
        "stop as nobody: {}",
        stderr_of(&out)
    );
    assert!(
        !sb.pidfile().exists(),
        "the unprivileged daemon left its pidfile"
    );
    assert_no_process(&sb);
}

// ---------------------------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------------------------

/// SIGTERM: the daemon exits within a second (issue 2), its pidfile removed, nothing left.
#[test]
fn sigterm_stops_the_daemon_and_removes_the_pidfile() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = sb.start();
    let t0 = Instant::now();
    signal(pid, Signal::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || !alive(pid)),
        "still alive {TIMEOUT:?} after SIGTERM"
    );
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    assert!(!sb.pidfile().exists(), "pidfile left behind");
    assert_no_process(&sb);
    assert_eq!(status_code(&mut sb), Some(3));
}

/// `warden stop` signals the daemon and returns 0 once it is gone — the pidfile already
/// removed; on a stopped daemon it says `not running` and returns 0.
#[test]
fn stop_command_waits_for_the_daemon_and_is_idempotent() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let pid = sb.start();
    let out = sb.run(&["stop"]);
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
    // The lock is released only when the daemon's last descriptor closes, after its exit hooks.
    assert!(
        !sb.pidfile().exists(),
        "stop returned before the pidfile was removed"
    );
    assert!(
        wait_until(TIMEOUT, || !alive(pid)),
        "daemon still alive after stop"
    );
    assert_no_process(&sb);

    let out = sb.run(&["stop"]);
    assert_eq!(exit_code(&out), Some(0), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("not running"),
        "stdout: {}",
        stdout_of(&out)
    );
    assert_eq!(status_code(&mut sb), Some(3));
}

// ---------------------------------------------------------------------------------------------
// check and run
// ---------------------------------------------------------------------------------------------

/// `warden check` lists every error of a file with file:line:column and exits 1; a valid file
/// exits 0.
#[test]
fn check_reports_every_error_with_its_position() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let out = sb.run(&["check"]);
    assert_eq!(
        exit_code(&out),
        Some(0),
        "valid config: {}",
        stderr_of(&out)
    );

    std::fs::write(
        &sb.config,
        "[daemon]\numask = \"999\"\npidfil = \"/x\"\nlog_level = \"loud\"\n[bogus]\n",
    )
    .unwrap();
    let out = sb.run(&["check"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(1), "{err}");
    let file = path_str(&sb.config);
    for (pos, key) in [
        ("2:9", "daemon.umask"),
        ("3:1", "daemon.pidfil"),
        ("4:13", "daemon.log_level"),
        ("5:2", "bogus"),
    ] {
        let want = format!("{file}:{pos}: {key}:");
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 4, "one line per error:\n{err}");
}

/// `warden check` reports in one pass: the file's own errors, those of its drop-ins, users and
/// groups that do not resolve (each at its file:line:column, in file order, main file first),
/// then warnings about what will fail later. Warnings alone exit 0; `start` still refuses an
/// unknown account (exit 6), also one named in a drop-in.
#[test]
fn check_reports_everything_in_one_pass_with_warnings() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let dir = path_str(&sb.dir);
    std::fs::create_dir(sb.path("conf.d")).unwrap();
    std::fs::write(sb.path("notexec"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(sb.path("notexec"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let drop_in = sb.path("conf.d/q.toml");
    let main = |umask: &str, user: &str, group: &str| {
        format!(
            "include = [\"conf.d/*.toml\"]\n\
             [daemon]\n\
             pidfile = \"{dir}/a/b/warden.pid\"\n\
             directory = \"{dir}\"\n\
             log = \"stderr\"\n\
             umask = \"{umask}\"\n\
             user = \"{user}\"\n\
             [program.p]\n\
             command = [\"warden-no-such-command\", \"x\"]\n\
             group = \"{group}\"\n"
        )
    };
    let q = |extra: &str, user: &str| {
        format!(
            "{extra}[program.q]\ncommand = \"./notexec\"\nuser = \"{user}\"\ndirectory = \"{dir}\"\n"
        )
    };
    std::fs::write(&sb.config, main("999", "warden-no-user", "warden-no-group")).unwrap();
    std::fs::write(
        &drop_in,
        q("[daemon]\nuser = \"root\"\n", "warden-no-user-2"),
    )
    .unwrap();
    let out = sb.run(&["check"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(1), "{err}");
    let file = path_str(&sb.config);
    let q_file = path_str(&drop_in);
    let want = [
        format!("warden: {file}:6:9: daemon.umask: "),
        format!("warden: {file}:7:8: daemon.user: unknown user \"warden-no-user\""),
        format!("warden: {file}:10:9: program.p.group: unknown group \"warden-no-group\""),
        format!("warden: {q_file}:1:2: daemon: a drop-in file holds [program.NAME] tables only"),
        format!("warden: {q_file}:5:8: program.q.user: unknown user \"warden-no-user-2\""),
        format!(
            "warden: warning: {file}:3:11: daemon.pidfile: neither {dir}/a/b nor {dir}/a exists"
        ),
        format!(
            "warden: warning: {file}:5:7: daemon.log: log = \"stderr\" while [daemon] stderr is /dev/null"
        ),
        format!(
            "warden: warning: {file}:9:11: program.p.command: \"warden-no-such-command\" is not found in PATH"
        ),
        format!(
            "warden: warning: {q_file}:4:11: program.q.command: {dir}/./notexec is not executable"
        ),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), want.len(), "one line per problem:\n{err}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?}\ndoes not start with\n{want:?}; all:\n{err}"
        );
    }

    // A valid file with the same warnings: exit 0, the warnings still printed.
    std::fs::write(&sb.config, main("022", "root", "root")).unwrap();
    std::fs::write(&drop_in, q("", "root")).unwrap();
    let out = sb.run(&["check"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(0), "{err}");
    assert!(
        stdout_of(&out).contains("configuration is valid"),
        "{}",
        stdout_of(&out)
    );
    assert_eq!(err.lines().count(), 4, "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("warden: warning: ")),
        "{err}"
    );

    // `start` refuses an unknown account named in a drop-in, at its place, before anything runs.
    sb.write_config("");
    let text = std::fs::read_to_string(&sb.config).unwrap();
    std::fs::write(&sb.config, format!("include = [\"conf.d/*.toml\"]\n{text}")).unwrap();
    std::fs::write(&drop_in, q("", "warden-no-user-3")).unwrap();
    let out = sb.run(&["start"]);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(6), "{err}");
    assert!(
        err.contains(&format!(
            "{q_file}:3:8: program.q.user: unknown user \"warden-no-user-3\""
        )),
        "{err}"
    );
    assert_failed_cleanly(&sb, &out);
}

/// `warden run` stays in the foreground (the spawned process is the daemon: same pid as in the
/// pidfile, still our child, in our session), holds the lock, reports readiness on
/// `NOTIFY_SOCKET`, and exits 0 on SIGTERM, removing its pidfile.
#[test]
fn run_stays_in_the_foreground_and_exits_0_on_sigterm() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let notify = sb.path("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut cmd = sb.warden(&["run"]);
    cmd.env("NOTIFY_SOCKET", &notify).stdout(Stdio::null());
    cmd.stderr(File::create(sb.path("run.err")).unwrap());
    let pid = sb.spawn(cmd);

    // Readiness: handlers are installed by then, so SIGTERM is handled, not fatal.
    let mut buf = [0u8; 512];
    let n = uninterrupted(|| sock.recv(&mut buf)).unwrap_or_else(|e| {
        panic!(
            "no READY=1 within {TIMEOUT:?}: {e}; stderr: {}",
            sb.read("run.err")
        )
    });
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(
        msg.lines().any(|l| l == format!("MAINPID={pid}")),
        "{msg:?}"
    );

    assert_eq!(
        sb.pidfile_pid(),
        Some(pid),
        "the pidfile names another process"
    );
    assert_eq!(mode(&sb.pidfile()), 0o644);
    assert_locked(&sb.pidfile());
    let me = std::process::id() as i32;
    let st = stat(pid).unwrap();
    assert_eq!(st.ppid, me, "warden run forked away");
    assert_eq!(
        st.session,
        stat(me).unwrap().session,
        "warden run left our session"
    );

    signal(pid, Signal::SIGTERM);
    let exit = sb
        .wait_child(pid, TIMEOUT)
        .expect("warden run did not exit after SIGTERM");
    assert_eq!(
        exit.code(),
        Some(0),
        "{exit:?}; stderr: {}",
        sb.read("run.err")
    );
    assert!(!sb.pidfile().exists(), "pidfile left behind");
    assert_no_process(&sb);
}

#[test]
fn stop_refuses_a_pid_that_does_not_hold_the_pidfile() {
    let test = this_test!();
    // Whoever can write the pidfile must not be able to aim `warden stop` at another process.
    let mut sb = test.sandbox("");
    let daemon = sb.start();
    let victim = sb.spawn({
        let mut c = std::process::Command::new("/bin/sleep");
        c.arg("1000");
        c
    });
    std::fs::write(sb.pidfile(), format!("{victim}\n")).unwrap();
    // With the control socket gone, the forged pid is refused and nothing is signalled.
    std::fs::rename(sb.path("warden.sock"), sb.path("moved.sock")).unwrap();
    let out = sb.run(&["stop", "--timeout", "2s"]);
    assert_ne!(out.status.code(), Some(0));
    assert_stderr_has(&out, "does not hold it");
    assert!(alive(victim), "the victim was signalled");
    assert!(alive(daemon), "the daemon was stopped through a forged pid");
    // With the socket there, the daemon that answers on it is stopped (its pid is the socket
    // peer's, from the kernel), the forged pid named as a warning and left alone.
    std::fs::rename(sb.path("moved.sock"), sb.path("warden.sock")).unwrap();
    let out = sb.run(&["stop", "--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("does not hold it")
            && stderr_of(&out).contains(&format!("pid {daemon} answers")),
        "{}",
        stderr_of(&out)
    );
    assert!(wait_until(TIMEOUT, || !alive(daemon)));
    assert!(alive(victim), "the victim was signalled");
}

#[test]
fn restart_replaces_the_daemon() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let old = sb.start();
    let out = sb.run(&["restart"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let new = sb.pidfile_pid().expect("a new pidfile");
    sb.track(new);
    assert_ne!(new, old);
    assert!(!alive(old));
    assert!(alive(new));
    let out = sb.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
}

/// Root without `CAP_SYS_PTRACE` (Docker's default capability set) may list another user's
/// `/proc/PID/fd` but not follow its entries: `warden stop` cannot tell whether the pid holds the
/// pidfile. Without the control socket it says so (exit 4, "permission denied: cannot inspect
/// /proc/PID/fd") instead of calling it a forged pid, and leaves the daemon alone; with the
/// socket, the daemon that answers there is stopped through a pidfd on the socket's peer (a pid
/// the kernel vouches for), the pidfile's problem shown as a warning.
#[test]
fn stop_as_root_without_ptrace_cannot_tell_and_says_so() {
    let test = this_test!();
    if !test.require_root() || !test.require_tool("setpriv", "util-linux") {
        return;
    }
    let mut sb = test.sandbox("user = \"nobody\"");
    let pid = sb.start();
    let stop_without_ptrace = |sb: &mut Sandbox| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace", "--"])
            .arg(warden_bin())
            .arg("-c")
            .arg(&sb.config)
            .args(["stop", "--timeout", "5s"])
            .stdin(Stdio::null());
        sb.output(cmd)
    };
    std::fs::rename(sb.path("warden.sock"), sb.path("moved.sock")).unwrap();
    let out = stop_without_ptrace(&mut sb);
    let err = stderr_of(&out);
    if err.starts_with("setpriv:") {
        // No CAP_SETPCAP here, so the bounding set cannot shrink.
        test.skip(&format!("setpriv cannot drop cap_sys_ptrace: {err}"));
        std::fs::rename(sb.path("moved.sock"), sb.path("warden.sock")).unwrap();
        return;
    }
    assert_eq!(
        exit_code(&out),
        Some(4),
        "stop without CAP_SYS_PTRACE: {err}"
    );
    let want = format!("permission denied: cannot inspect /proc/{pid}/fd");
    assert!(err.contains(&want), "missing {want:?} in: {err}");
    assert!(!err.contains("does not hold it"), "false refusal: {err}");
    assert!(alive(pid), "the daemon was signalled although unchecked");
    assert_eq!(sb.pidfile_pid(), Some(pid));

    std::fs::rename(sb.path("moved.sock"), sb.path("warden.sock")).unwrap();
    let out = stop_without_ptrace(&mut sb);
    let err = stderr_of(&out);
    assert_eq!(exit_code(&out), Some(0), "stop through the socket: {err}");
    assert!(
        err.contains(&want) && err.contains(&format!("pid {pid} answers")),
        "{err}"
    );
    assert!(wait_until(TIMEOUT, || !alive(pid)), "daemon still alive");
    assert_no_process(&sb);
}
