//! Listening sockets held by warden (`[socket.NAME]`) and handed to programs (socket
//! activation, systemd's protocol: descriptors 3, 4, … with `LISTEN_FDS`, `LISTEN_PID` and
//! `LISTEN_FDNAMES`).
//!
//! [`HeldSocket::bind`] binds and listens, once (the `warden` binary does it before it
//! daemonizes and drops privileges, so a port below 1024 works for an unprivileged program);
//! the supervisor keeps the socket for its whole life, across restarts, rollouts and reloads
//! that do not change it, and never accepts on it. Spawning passes the descriptors
//! (`spawn.rs`, `sys::spawn`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::sys::socket::{Backlog, listen};

use super::{ProgramDef, Supervisor, Work};
use crate::config::{Listen, SocketSpec};
use crate::error::{Error, Result};

/// The most sockets one program may receive.
pub const MAX_SOCKETS_PER_PROGRAM: usize = 64;

/// A bound, listening socket and the settings it was made from.
#[derive(Debug)]
pub struct HeldSocket {
    spec: SocketSpec,
    fd: OwnedFd,
    inode: u64,
}

impl HeldSocket {
    /// Binds and listens as `spec` says: a TCP socket with `SO_REUSEADDR`, or a Unix stream
    /// socket whose file gets `mode` and, when given, `user` and `group` (a stale socket file
    /// nobody listens on is replaced; a live one is an error). Close-on-exec: it reaches a
    /// program only through [`Supervisor`]'s spawns.
    ///
    /// Errors: [`Error::Io`] naming the address, the socket and the errno (`EADDRINUSE`,
    /// `EACCES`), or an unknown user or group.
    pub fn bind(spec: &SocketSpec) -> Result<HeldSocket> {
        HeldSocket::bind_as(spec, &format!("[socket.{}]", spec.name))
    }

    /// [`HeldSocket::bind`], its errors naming `owner` (`[socket.NAME]`, `daemon.metrics`).
    pub(crate) fn bind_as(spec: &SocketSpec, owner: &str) -> Result<HeldSocket> {
        let fail = |e| socket_error("cannot listen on", spec, owner, e);
        let fd = match &spec.listen {
            Listen::Tcp(addr) => bind_tcp(addr, spec.backlog).map_err(fail)?,
            Listen::Unix(path) => bind_unix(spec, path).map_err(|e| match e {
                UnixError::Errno(e) => fail(e),
                UnixError::Other(e) => e,
            })?,
        };
        let inode = nix::sys::stat::fstat(fd.as_fd()).map_or(0, |st| st.st_ino);
        Ok(HeldSocket {
            spec: spec.clone(),
            fd,
            inode,
        })
    }

    /// The socket `spec` describes, bound by an earlier image of this process and handed over
    /// across `execve` (`warden upgrade`) as `fd`: the same socket, the same inode.
    pub fn adopt(spec: &SocketSpec, fd: OwnedFd) -> HeldSocket {
        let inode = nix::sys::stat::fstat(fd.as_fd()).map_or(0, |st| st.st_ino);
        HeldSocket {
            spec: spec.clone(),
            fd,
            inode,
        }
    }

    /// Its settings.
    pub fn spec(&self) -> &SocketSpec {
        &self.spec
    }

    /// Its name (`[socket.NAME]`).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The socket's inode: the same across every restart of the programs that receive it.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The descriptor, taken out.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// std's bind sets `SO_REUSEADDR` and close-on-exec; `listen` again sets the backlog.
/// `WHAT ADDRESS (OWNER, ERRNO): message`: the address, whose socket it is and the errno.
fn socket_error(what: &'static str, spec: &SocketSpec, owner: &str, e: nix::errno::Errno) -> Error {
    let place = format!("{} ({owner}, {e:?})", spec.listen);
    Error::io(what, place, std::io::Error::from(e))
}

fn bind_tcp(addr: &std::net::SocketAddr, backlog: u32) -> nix::Result<OwnedFd> {
    let l = std::net::TcpListener::bind(addr).map_err(errno_of)?;
    let fd = OwnedFd::from(l);
    listen(&fd, backlog_of(backlog))?;
    Ok(fd)
}

fn errno_of(e: std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn backlog_of(n: u32) -> Backlog {
    Backlog::new(i32::try_from(n).unwrap_or(i32::MAX)).unwrap_or(Backlog::MAXCONN)
}

enum UnixError {
    Errno(nix::errno::Errno),
    Other(Error),
}

impl From<nix::errno::Errno> for UnixError {
    fn from(e: nix::errno::Errno) -> Self {
        UnixError::Errno(e)
    }
}

fn bind_unix(spec: &SocketSpec, path: &Path) -> std::result::Result<OwnedFd, UnixError> {
    check_dir(spec, path).map_err(UnixError::Other)?;
    remove_stale(path)?;
    let fd = OwnedFd::from(std::os::unix::net::UnixListener::bind(path).map_err(errno_of)?);
    set_mode_and_owner(spec, path)?;
    listen(&fd, backlog_of(spec.backlog))?;
    Ok(fd)
}

/// Refuses a socket path whose directory everyone may write without the sticky bit: anyone
/// could rename the socket away and bind their own in its place (as for the control socket).
fn check_dir(spec: &SocketSpec, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(meta) = std::fs::metadata(dir) else {
        // Missing: bind says so, with its errno.
        return Ok(());
    };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Error::Invalid {
            what: "socket",
            reason: format!(
                "{} ({}): its directory {} is writable by everyone and not sticky: anyone could \
                 replace the socket",
                spec.listen,
                spec.name,
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Sets the mode and owner of the socket file just bound at `path` without following a
/// symbolic link put there in between: through a descriptor of the file itself (`O_PATH |
/// O_NOFOLLOW`), checked to be a socket.
fn set_mode_and_owner(spec: &SocketSpec, path: &Path) -> std::result::Result<(), UnixError> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::{Mode, SFlag, fstat};
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let file = open(path, flags, Mode::empty())?;
    let st = fstat(&file)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(UnixError::Other(Error::Invalid {
            what: "socket",
            reason: format!("{} was replaced while warden bound it", path.display()),
        }));
    }
    // The descriptor's own name: the socket itself, whatever the path names by now.
    let own = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    std::fs::set_permissions(
        &own,
        std::os::unix::fs::PermissionsExt::from_mode(spec.mode),
    )
    .map_err(|e| UnixError::Other(Error::io("cannot set the mode of", path, e)))?;
    if spec.user.is_some() || spec.group.is_some() {
        let creds = crate::Credentials::resolve(spec.user.as_deref(), spec.group.as_deref())
            .map_err(UnixError::Other)?;
        if let Some(c) = creds {
            let uid = spec.user.as_ref().map(|_| c.uid());
            nix::unistd::chown(&own, uid, Some(c.gid))?;
        }
    }
    Ok(())
}

/// Removes a socket file at `path` that nobody listens on any more (a previous warden's); a
/// live one is `EADDRINUSE`, anything but a socket `EEXIST`.
fn remove_stale(path: &Path) -> std::result::Result<(), nix::errno::Errno> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(nix::errno::Errno::EEXIST);
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(nix::errno::Errno::EADDRINUSE),
        Err(_) => std::fs::remove_file(path).map_err(errno_of),
    }
}

impl Supervisor {
    /// Holds a bound listening socket for the programs that name it in
    /// [`ProgramDef::sockets`]: each of their instances receives it (systemd's socket
    /// activation), and it stays open, the same socket, for the supervisor's whole life.
    ///
    /// Errors: a socket of that name is already held ([`Error::Invalid`]).
    pub fn hold_socket(&mut self, socket: HeldSocket) -> Result<()> {
        if self.sockets.iter().any(|s| s.name() == socket.name()) {
            return Err(Error::Invalid {
                what: "socket",
                reason: format!("a socket named {:?} is already held", socket.name()),
            });
        }
        self.sockets.push(socket);
        Ok(())
    }

    /// Whether `def` may receive the sockets it names: each is held, there are not too many,
    /// and it is exec'd (a function worker has no exec to hand them over).
    pub(super) fn check_sockets(&self, def: &ProgramDef) -> Result<()> {
        let invalid = |reason: String| Error::Invalid {
            what: "sockets",
            reason,
        };
        if def.sockets.is_empty() {
            return Ok(());
        }
        if matches!(def.work, Work::Fn(_)) {
            return Err(invalid(format!(
                "program {:?} runs a function: only exec'd programs receive sockets",
                def.name
            )));
        }
        if def.sockets.len() > MAX_SOCKETS_PER_PROGRAM {
            return Err(invalid(format!(
                "program {:?} names more than {MAX_SOCKETS_PER_PROGRAM} sockets",
                def.name
            )));
        }
        match def
            .sockets
            .iter()
            .find(|n| !self.sockets.iter().any(|s| s.name() == n.as_str()))
        {
            Some(n) => Err(invalid(format!("no socket named {n:?} is held"))),
            None => Ok(()),
        }
    }

    /// The descriptors and names `def`'s instances receive, in its order.
    pub(super) fn sockets_of(&self, def: &ProgramDef) -> Vec<(RawFd, String)> {
        def.sockets
            .iter()
            .filter_map(|n| self.sockets.iter().find(|s| s.name() == n.as_str()))
            .map(|s| (s.raw_fd(), s.name().to_string()))
            .collect()
    }

    /// The held sockets, for status: each with the programs that receive it.
    pub(super) fn socket_infos(&self) -> Vec<crate::control::SocketInfo> {
        self.sockets
            .iter()
            .map(|s| crate::control::SocketInfo {
                name: s.name().to_string(),
                listen: s.spec().listen.to_string(),
                inode: s.inode(),
                programs: self
                    .table
                    .live_programs()
                    .into_iter()
                    .map(|p| &self.table[p].def)
                    .filter(|d| d.sockets.iter().any(|n| n == s.name()))
                    .map(|d| d.name.clone())
                    .collect(),
            })
            .collect()
    }
}

impl HeldSocket {
    /// Applies `spec`'s backlog, mode and owner to this socket, bound at the same address.
    fn update(&mut self, spec: &SocketSpec) -> Result<()> {
        let owner = format!("[socket.{}]", spec.name);
        let fail = |e| socket_error("cannot update", spec, &owner, e);
        if spec.backlog != self.spec.backlog {
            listen(&self.fd, backlog_of(spec.backlog)).map_err(fail)?;
        }
        if let Listen::Unix(path) = &spec.listen {
            if spec.mode != self.spec.mode {
                let mode = std::os::unix::fs::PermissionsExt::from_mode(spec.mode);
                std::fs::set_permissions(path, mode)
                    .map_err(|e| Error::io("cannot set the mode of", path, e))?;
            }
            if (spec.user.is_some() || spec.group.is_some())
                && (spec.user != self.spec.user || spec.group != self.spec.group)
                && let Some(c) =
                    crate::Credentials::resolve(spec.user.as_deref(), spec.group.as_deref())?
            {
                let uid = spec.user.as_ref().map(|_| c.uid());
                nix::unistd::chown(path, uid, Some(c.gid)).map_err(fail)?;
            }
        }
        self.spec = spec.clone();
        Ok(())
    }
}

impl Supervisor {
    /// Adds to `plan` what a reload to `set` does to the held sockets, and restarts (moves to
    /// `changed`) the programs that receive a socket whose address changes.
    pub(super) fn plan_sockets(&self, set: &super::ReloadSet, plan: &mut super::ReloadPlan) {
        let Some(new) = &set.sockets else { return };
        for spec in new {
            match self.sockets.iter().find(|s| s.name() == spec.name) {
                None => plan.sockets_added.push(spec.name.clone()),
                Some(h) if h.spec().listen != spec.listen => {
                    plan.sockets_moved.push(spec.name.clone())
                }
                Some(h) if h.spec() != spec => plan.sockets_updated.push(spec.name.clone()),
                Some(_) => {}
            }
        }
        for h in &self.sockets {
            if !new.iter().any(|s| s.name == h.name()) {
                plan.sockets_removed.push(h.name().to_string());
            }
        }
        for def in &set.programs {
            let moved = def.sockets.iter().any(|n| plan.sockets_moved.contains(n));
            let name = &def.name;
            let restarting = plan.changed.contains(name)
                || plan.changed_stopped.contains(name)
                || plan.added.contains(name);
            if !moved || restarting {
                continue;
            }
            plan.unchanged.retain(|n| n != name);
            plan.health_changed.retain(|n| n != name);
            plan.scaled.retain(|(n, _, _)| n != name);
            let stopped = self.table.find(name).is_ok_and(|p| self.stopped_by_hand(p));
            if stopped {
                plan.changed_stopped.push(name.clone());
            } else {
                plan.changed.push(name.clone());
            }
        }
    }

    /// Binds the sockets a reload adds or moves, and updates those it changes in place, before
    /// anything else changes: an address in use fails the whole reload.
    pub(super) fn prepare_sockets(
        &mut self,
        set: &super::ReloadSet,
        plan: &super::ReloadPlan,
    ) -> std::result::Result<Vec<HeldSocket>, (crate::control::ErrorKind, String)> {
        let Some(new) = &set.sockets else {
            return Ok(Vec::new());
        };
        let kind = |e: &Error| {
            if e.is_permission_denied() {
                crate::control::ErrorKind::IoDenied
            } else {
                crate::control::ErrorKind::Io
            }
        };
        let mut bound = Vec::new();
        for spec in new {
            let fresh =
                plan.sockets_added.contains(&spec.name) || plan.sockets_moved.contains(&spec.name);
            if fresh {
                bound.push(HeldSocket::bind(spec).map_err(|e| (kind(&e), e.to_string()))?);
            } else if plan.sockets_updated.contains(&spec.name)
                && let Some(h) = self.sockets.iter_mut().find(|s| s.name() == spec.name)
            {
                h.update(spec).map_err(|e| (kind(&e), e.to_string()))?;
            }
        }
        Ok(bound)
    }

    /// Closes the sockets a reload removes or moves and holds the ones it bound.
    pub(super) fn install_sockets(&mut self, bound: Vec<HeldSocket>, plan: &super::ReloadPlan) {
        self.sockets.retain(|s| {
            let name = s.name().to_string();
            !plan.sockets_removed.contains(&name) && !plan.sockets_moved.contains(&name)
        });
        self.sockets.extend(bound);
    }
}
