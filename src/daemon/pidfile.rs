//! The locked pidfile: the lock proves there is one instance, the pid text is a courtesy.
//!
//! The file is opened `O_CREAT|O_RDWR|O_CLOEXEC|O_NOFOLLOW` (a symlink planted at the path is
//! refused, never followed) and locked with `flock(2)` through [`std::fs::File::try_lock`]. The
//! lock belongs to the open file description, so it survives both forks and is released by the
//! kernel when the last process holding the descriptor dies, however it dies. A pidfile that no
//! process holds locked is stale and is taken over.
//!
//! Race rule: after locking, the path must still name the inode we locked. Otherwise a previous
//! daemon unlinked it between our `open` and our `flock`, and a third process may be creating a
//! fresh file at the path right now: we retry on the new file rather than run a second instance
//! on an orphaned inode.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Uid};

use crate::error::{Error, Result};

/// What a pidfile says about its daemon, judged from the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfileState {
    /// A process holds the lock; the pid written in the file, if readable.
    Running(Option<i32>),
    /// The file exists with a pid in it but nobody holds the lock: the daemon died without
    /// cleaning up (SIGKILL, a crash).
    Stale(Option<i32>),
    /// No file, or an empty unlocked one.
    Absent,
}

/// A pidfile this process holds locked.
#[derive(Debug)]
pub struct Pidfile {
    file: File,
    path: PathBuf,
    /// The process that removes the file at exit (the daemon, not the launcher).
    owner: u32,
}

impl Pidfile {
    /// Opens and locks the pidfile at `path`, creating it (and its parent directory, one level,
    /// mode 0755) if missing.
    ///
    /// Fails with [`Error::AlreadyRunning`] when another process holds the lock, with
    /// [`Error::UnsafePidfile`] when the path is a symlink or not a regular file, and with
    /// [`Error::Io`] naming the path otherwise. A stale file is taken over and truncated.
    pub fn acquire(path: &Path) -> Result<Pidfile> {
        Pidfile::acquire_for(path, None)
    }

    /// Like [`Pidfile::acquire`]; a parent directory created here is given to `owner` (like
    /// systemd's `RuntimeDirectory=`), so that a daemon that drops privileges can still create
    /// its control socket there and remove its pidfile at exit.
    pub fn acquire_for(path: &Path, owner: Option<(Uid, Gid)>) -> Result<Pidfile> {
        // A starting daemon holds the lock before its pid is written, and a `probe` holds a
        // shared lock for an instant (also on a stale file that names a dead pid): give either
        // a moment before concluding. A live pid in a locked file is the answer at once.
        let patience = std::time::Instant::now() + Duration::from_millis(250);
        for _ in 0..10_000 {
            let file = open_pidfile(path, owner)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let pid = read_pid(&file);
                    // A zombie is no daemon: the lock it held is held by something else for
                    // an instant (a child it forked, about to exec). Nor is this process: a
                    // container's PID 1 restarted at once finds its predecessor's pid, 1, its
                    // own, while the old one is still going.
                    let live = pid.is_some_and(|p| {
                        p != std::process::id() as i32
                            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                                != Err(nix::errno::Errno::ESRCH)
                            && !is_zombie(p)
                    });
                    if live || std::time::Instant::now() >= patience {
                        return Err(Error::AlreadyRunning {
                            pid,
                            path: path.to_path_buf(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock pidfile", path, e));
                }
            }
            if !same_file(&file, path) {
                continue;
            }
            file.set_len(0)
                .map_err(|e| Error::io("cannot truncate pidfile", path, e))?;
            return Ok(Pidfile {
                file,
                path: path.to_path_buf(),
                owner: std::process::id(),
            });
        }
        Err(Error::io(
            "cannot lock pidfile",
            path,
            std::io::Error::other("the file kept being replaced while locking it"),
        ))
    }

    /// Tells whether a daemon holds the pidfile at `path`, without disturbing it.
    ///
    /// The check takes a shared lock for an instant when nobody holds the exclusive one.
    pub fn probe(path: &Path) -> Result<PidfileState> {
        let mut file = match crate::files::open_read_nofollow(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(PidfileState::Absent),
            Err(e) => return Err(open_error(path, e)),
        };
        let pid = {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            s.trim().parse::<i32>().ok()
        };
        match file.try_lock_shared() {
            Err(TryLockError::WouldBlock) => Ok(PidfileState::Running(pid)),
            Err(TryLockError::Error(e)) => {
                Err(Error::io("cannot test the lock of pidfile", path, e))
            }
            Ok(()) => {
                let _ = file.unlock();
                Ok(match pid {
                    Some(p) => PidfileState::Stale(Some(p)),
                    None if file.metadata().map(|m| m.len() > 0).unwrap_or(false) => {
                        PidfileState::Stale(None)
                    }
                    None => PidfileState::Absent,
                })
            }
        }
    }

    /// Blocks until nobody holds the lock of the pidfile at `path`, or `timeout` passes.
    ///
    /// Event-driven: a blocking `flock` in a helper thread returns the moment the daemon's
    /// descriptor is closed by the kernel. Returns `Ok(true)` when released.
    pub fn wait_released(path: &Path, timeout: Duration) -> Result<bool> {
        Pidfile::wait_released_ticking(path, timeout, timeout, || {})
    }

    /// Like [`Pidfile::wait_released`], calling `tick` every `every` while it waits (to show
    /// progress).
    pub fn wait_released_ticking(
        path: &Path,
        timeout: Duration,
        every: Duration,
        mut tick: impl FnMut(),
    ) -> Result<bool> {
        let file = match crate::files::open_read_nofollow(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(open_error(path, e)),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let r = file.lock_shared();
            let _ = file.unlock();
            let _ = tx.send(r);
        });
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left.min(every)) {
                // Join the helper: a caller may fork next (`warden restart`), which it refuses
                // to do with a second thread alive.
                Ok(Ok(())) => {
                    let _ = waiter.join();
                    return Ok(true);
                }
                Ok(Err(e)) => {
                    let _ = waiter.join();
                    return Err(Error::io("cannot wait for the lock of pidfile", path, e));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => tick(),
                Err(_) => return Ok(false),
            }
        }
    }

    /// Whether process `pid` has the pidfile at `path` open — the check to make before
    /// signalling a pid read from a pidfile, so that whoever can write the file cannot aim
    /// `warden stop` at another process. Reads `/proc/PID/fd`.
    ///
    /// `Ok(true)`: it holds the file. `Ok(false)`: it does not (its descriptors were read and
    /// the file is not among them, or there is no such process or no such file). `Err`: this
    /// process cannot tell — typically `EACCES` on `/proc/PID/fd` because the daemon runs as
    /// another user and the caller is not root, or because the caller is root without
    /// `CAP_SYS_PTRACE` (as in a container with Docker's default capabilities), which may list
    /// the descriptors but not follow them; the error names that path.
    pub fn held_by(path: &Path, pid: i32) -> Result<bool> {
        // Not `metadata`: a symlink swapped in at the path after the caller's `probe` (opened
        // `O_NOFOLLOW`) must not lend the check another file's identity (`/dev/null` is open
        // in nearly every process).
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_file() => return Ok(false),
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("cannot stat pidfile", path, e)),
        };
        fd_table_has(pid, meta.dev(), meta.ino()).map_err(|e| {
            let what = if crate::error::is_permission_denied(&e) {
                "permission denied: cannot inspect"
            } else {
                "cannot inspect"
            };
            Error::io(what, format!("/proc/{pid}/fd"), e)
        })
    }

    /// Truncates the file and writes `pid` and a newline through the locked descriptor, mode
    /// 0644, owned by `owner` when given.
    pub fn write_pid(&mut self, pid: u32, owner: Option<(Uid, Gid)>) -> Result<()> {
        let err = |e| Error::io("cannot write pidfile", &self.path, e);
        self.file.set_len(0).map_err(err)?;
        self.file
            .write_all_at(format!("{pid}\n").as_bytes(), 0)
            .map_err(err)?;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(&self.file, Some(uid), Some(gid))
                .map_err(|e| Error::io("cannot chown pidfile", &self.path, e.into()))?;
        }
        self.owner = pid;
        Ok(())
    }

    /// The path of the pidfile.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pidfile an earlier image of this process locked at `path` and handed over across
    /// `execve` (`warden upgrade`): the lock is the open file description's, so it is held
    /// still; the file names this process already.
    pub fn adopt(fd: std::os::fd::OwnedFd, path: &Path) -> Pidfile {
        Pidfile {
            file: File::from(fd),
            path: path.to_path_buf(),
            owner: std::process::id(),
        }
    }

    /// The locked descriptor, to keep open across the daemon's fd clean-up.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }

    /// Removes the pidfile, if this process owns it and the path still names our file.
    ///
    /// When the directory is not writable any more (privileges were dropped), the file is
    /// emptied through the descriptor instead, which `probe` reports as [`PidfileState::Absent`].
    /// The lock itself is never released explicitly: it goes with the process.
    pub fn remove(&self) {
        if self.owner != std::process::id() || !same_file(&self.file, &self.path) {
            return;
        }
        if std::fs::remove_file(&self.path).is_err() {
            let _ = self.file.set_len(0);
        }
    }
}

fn open_pidfile(path: &Path, owner: Option<(Uid, Gid)>) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let file = match open() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = path.parent().filter(|p| !p.exists()) {
                let created = match std::fs::DirBuilder::new().mode(0o755).create(parent) {
                    Ok(()) => true,
                    // A concurrent start made it first: theirs to chown; open in it all the same.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(Error::io("cannot create pidfile directory", parent, e)),
                };
                if let Some((uid, gid)) = owner.filter(|_| created) {
                    nix::unistd::chown(parent, Some(uid), Some(gid)).map_err(|e| {
                        Error::io("cannot chown pidfile directory", parent, e.into())
                    })?;
                }
            }
            open()
        }
        other => other,
    }
    .map_err(|e| open_error(path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat pidfile", path, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::UnsafePidfile {
            path: path.to_path_buf(),
            reason: "not a regular file",
        });
    }
    Ok(file)
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        Error::UnsafePidfile {
            path: path.to_path_buf(),
            reason: "it is a symbolic link, which is never followed",
        }
    } else {
        Error::io("cannot open pidfile", path, e)
    }
}

fn read_pid(file: &File) -> Option<i32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether process `pid` has the file `(dev, ino)` open, from `/proc/PID/fd`; `false` also
/// when that cannot be read (for scans of every process, where unreadable ones are not ours).
pub(crate) fn has_open(pid: i32, dev: u64, ino: u64) -> bool {
    fd_table_has(pid, dev, ino).unwrap_or(false)
}

/// Whether process `pid` has the file `(dev, ino)` open: `Ok(false)` when its descriptor list
/// was read without it or the process does not exist, `Err` when this process cannot tell —
/// the list cannot be read (`EACCES` for another user's process), or it can but its entries
/// cannot be followed (`EACCES` for root without `CAP_SYS_PTRACE`, the default in containers:
/// `CAP_DAC_OVERRIDE` opens the directory, but each link needs ptrace access).
fn fd_table_has(pid: i32, dev: u64, ino: u64) -> std::io::Result<bool> {
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut unknown = None;
    for entry in fds {
        match entry.and_then(|e| std::fs::metadata(e.path())) {
            Ok(m) if m.dev() == dev && m.ino() == ino => return Ok(true),
            Ok(_) => {}
            // A descriptor closed between the listing and the stat (or a process gone
            // meanwhile) is simply not there.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // Any other failure leaves this descriptor unknown: it may be the file. A later
            // entry that is the file still answers; otherwise the answer is "cannot tell".
            Err(e) => {
                unknown.get_or_insert(e);
            }
        }
    }
    unknown.map_or(Ok(false), Err)
}

/// Whether `pid` is a zombie (state `Z` in `/proc/PID/stat`): dead, not reaped yet.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stale pidfile naming a dead pid is taken over although a `probe` holds its shared lock
    /// at that moment; a live pid in a locked file is refused.
    #[test]
    fn takeover_waits_out_a_probe_on_a_stale_file() {
        let path = std::env::temp_dir().join(format!("warden-stale-{}.pid", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        std::fs::write(&path, format!("{dead_pid}\n")).unwrap();
        // A slow probe: the shared lock held for 50 ms.
        let prober = File::open(&path).unwrap();
        prober.lock_shared().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(prober);
        });
        let taken = Pidfile::acquire(&path);
        release.join().unwrap();
        let taken = taken.expect("stale file taken over once the probe let go");
        drop(taken);

        // Locked, naming a process that is alive (a child of this one): refused.
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&path, format!("{}\n", live.id())).unwrap();
        let holder = File::open(&path).unwrap();
        holder.lock_shared().unwrap();
        let refused = Pidfile::acquire(&path);
        let _ = live.kill();
        let _ = live.wait();
        assert!(
            matches!(refused, Err(Error::AlreadyRunning { .. })),
            "{refused:?}"
        );
        drop(holder);
        std::fs::remove_file(&path).unwrap();
    }

    /// Whether `acquire` takes over a pidfile that names `pid` while another descriptor holds its
    /// lock for 50 ms (`name` tells the test's files apart).
    fn taken_over_once_let_go(name: &str, pid: i32) -> Result<Pidfile> {
        let path = std::env::temp_dir().join(format!("warden-{name}-{}.pid", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        let holder = File::open(&path).unwrap();
        holder.lock().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(holder);
        });
        let taken = Pidfile::acquire(&path);
        release.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        taken
    }

    /// A locked pidfile naming a zombie (a daemon killed, not reaped yet, whose lock a child
    /// forked just before still holds for an instant) is waited out like a dead pid.
    #[test]
    fn a_zombie_named_in_a_locked_file_is_waited_out() {
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let pid = zombie.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !is_zombie(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(is_zombie(pid), "{pid} never became a zombie");
        let taken = taken_over_once_let_go("zombie", pid);
        zombie.wait().unwrap();
        taken.expect("taken over once the lock was let go");
    }

    /// A locked pidfile naming this very process (a container's PID 1 restarted while its
    /// predecessor, pid 1 too, still exits) is waited out like a dead pid.
    #[test]
    fn our_own_pid_named_in_a_locked_file_is_waited_out() {
        taken_over_once_let_go("own", std::process::id() as i32)
            .expect("taken over once the lock was let go");
    }

    /// `held_by` tells the holder from a process that does not hold the file and from no
    /// process at all. (Cannot tell — another user's process — is covered by the integration
    /// test that runs `warden stop` under another uid.)
    #[test]
    fn held_by_tells_the_holder_from_others() {
        let path = std::env::temp_dir().join(format!("warden-held-by-{}.pid", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = open_pidfile(&path, None).unwrap();
        let me = std::process::id() as i32;
        assert!(Pidfile::held_by(&path, me).unwrap());
        // A symlink at the path lends no identity, even to a file the process holds.
        let link = path.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let through_link = Pidfile::held_by(&link, me);
        std::fs::remove_file(&link).unwrap();
        assert!(!through_link.unwrap());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let other = child.id() as i32;
        let not_held = Pidfile::held_by(&path, other);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!not_held.unwrap());
        // Reaped: no such process any more.
        assert!(!Pidfile::held_by(&path, other).unwrap());
        drop(file);
        assert!(!Pidfile::held_by(&path, me).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(!Pidfile::held_by(&path, me).unwrap());
    }
}
