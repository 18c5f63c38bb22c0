//! The guard process: its program, how it is started (a shell reading records, or in
//! PID-namespace mode `cat` as a namespace's init), and the loop's side of it, [`Link`]. What
//! the guard is for, and how the records flow, is in the `groups` module of the supervisor.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The guard's program, for `/bin/sh -c` (POSIX shell; builtins only, so it forks nothing). It
/// ignores every signal it may (all but `KILL` and `STOP`, and the C library's 32 and 33). A
/// registered group `PGID` is the variable `hPGID`, so adding and removing cost the same
/// whatever the table's size; `ids` lists the groups for the final kill (entries of removed
/// groups are skipped then, and compacted away every 4096 additions).
pub(crate) const GUARD_SCRIPT: &str = r#"s=1
while [ $s -le 64 ]; do
  case $s in 9|19|32|33) ;; *) trap '' $s 2>/dev/null ;; esac
  s=$((s + 1))
done
set -f
ids=''
n=0
while read -r r; do
  id=${r#?}
  case $id in ''|*[!0-9]*) continue ;; esac
  case $r in
    +*) eval "case \${h$id-} in '') h$id=1; ids=\"\$ids \$id\"; n=\$((n + 1)) ;; esac" ;;
    -*) unset "h$id" ;;
  esac
  if [ $n -ge 4096 ]; then
    new=''
    for x in $ids; do
      eval "if [ -n \"\${h$x-}\" ] && [ -z \"\${s$x-}\" ]; then s$x=1; new=\"\$new \$x\"; fi"
    done
    for x in $new; do unset "s$x"; done
    ids=$new
    n=0
  fi
done
if [ -n "${WARDEN_GUARD_CGROUP-}" ]; then
  echo 1 2>/dev/null >"$WARDEN_GUARD_CGROUP/cgroup.kill"
fi
for id in $ids; do
  eval "if [ -n \"\${h$id-}\" ]; then unset h$id; kill -s KILL -- -$id 2>/dev/null; fi"
done
"#;

/// The shell the guard runs [`GUARD_SCRIPT`] with: a requirement of warden (a minimal container
/// image must have it).
const SHELL: &str = "/bin/sh";

/// `err`, of a spawn of `program`, naming it (`/bin/sh: Permission denied (os error 13)`): a
/// file the guard needs, which a minimal image may lack or not let run.
fn naming(program: &str, err: std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{program}: {err}"))
}

/// The guard, as far as the loop is concerned.
#[derive(Debug)]
pub(super) struct Link {
    /// The guard's pid: our child; never signalled once `reaped`.
    pub(super) pid: i32,
    /// A pidfd for it (Linux 5.3), so that a host program's `waitpid(-1)` reaping it behind our
    /// back cannot make us signal a recycled pid.
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) reaped: bool,
    /// Our end of the socket pair (non-blocking, close-on-exec).
    pub(super) sock: UnixStream,
    /// Records not written yet: `(true, pgid)` adds, `(false, pgid)` removes.
    pub(super) pending: VecDeque<(bool, i32)>,
    /// Bytes of records taken from `pending` that the socket has not accepted yet (written in
    /// batches, so the kernel holds many records per buffer, and a partial write keeps its
    /// tail here).
    pub(super) out: Vec<u8>,
    /// Registered with `WRITABLE` interest too (while `pending` is not empty).
    pub(super) writable: bool,
    /// The PID namespace whose init the guard is (PID-namespace mode); it is sent no records.
    pub(super) ns: Option<OwnedFd>,
}

/// Spawns the guard (see the module documentation).
pub(super) fn spawn_guard(cgroup: Option<PathBuf>, in_ns: bool) -> std::io::Result<Link> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    if in_ns {
        return spawn_namespace_guard(ours, theirs);
    }
    let mut cmd = std::process::Command::new(SHELL);
    cmd.env_clear();
    if let Some(dir) = cgroup {
        cmd.env("WARDEN_GUARD_CGROUP", dir);
    }
    let child = cmd
        .arg0("warden-guard")
        // Through the environment, so that `ps` shows a short command line.
        .args(["-c", "eval \"$WARDEN_GUARD_SCRIPT\""])
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .env("LC_ALL", "C")
        .env("WARDEN_GUARD_SCRIPT", GUARD_SCRIPT)
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(|e| naming(SHELL, e))?;
    Ok(link(child.id() as i32, ours, None))
}

/// Spawns the guard of PID-namespace mode: `cat` reading its socket to end of file as the
/// namespace's init, every signal ignored (see [`super::pidns`]).
fn spawn_namespace_guard(ours: UnixStream, theirs: UnixStream) -> std::io::Result<Link> {
    let cat = ["/bin/cat", "/usr/bin/cat"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/bin/cat");
    let mut cmd = std::process::Command::new(cat);
    cmd.env_clear()
        .arg0("warden-guard")
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .current_dir("/")
        .process_group(0);
    let (child, ns) = crate::sys::pidns::spawn_init(&mut cmd)?;
    Ok(link(child.id() as i32, ours, Some(ns)))
}

/// The loop's side of a guard just started as our child `pid`.
pub(super) fn link(pid: i32, sock: UnixStream, ns: Option<OwnedFd>) -> Link {
    Link {
        pid,
        pidfd: crate::sys::pidfd::pidfd_open(pid).ok(),
        reaped: false,
        sock,
        pending: VecDeque::new(),
        out: Vec::new(),
        writable: false,
        ns,
    }
}

/// `SIGKILL` to the guard: through its pidfd, or by pid (it is our child, not known reaped).
pub(super) fn kill_guard(pid: i32, pidfd: Option<&OwnedFd>) {
    use std::os::fd::AsFd;
    match pidfd {
        Some(fd) => {
            let _ = crate::sys::pidfd::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
        }
        None => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Whether the guard's end of the socket pair reached end of file (or failed): it is gone. It
/// never writes, so anything readable is the end.
pub(super) fn guard_gone(sock: &mut UnixStream) -> bool {
    let mut b = [0u8; 16];
    !matches!(sock.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
}
