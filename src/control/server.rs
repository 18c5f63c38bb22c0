//! The control socket's server side, driven by the supervisor's event loop.
//!
//! Every descriptor is non-blocking and registered edge-triggered; reads stop at `EAGAIN`, input
//! is cut into lines bounded by [`super::MAX_LINE`], output is buffered up to
//! [`MAX_OUTPUT`] per connection (a client that does not read is disconnected, never waited for).
//! A peer is authorised once, at accept time, from `SO_PEERCRED`: root and the daemon's own uid
//! may do everything, members of the optional control group may read status, anyone else is
//! refused and logged with their uid. Membership is the peer process's groups from
//! `SO_PEERGROUPS` (what the kernel recorded at connect), so no name-service lookup ever runs in
//! the event loop.
//!
//! # Descriptors are shared with the workers
//!
//! Every connection costs the daemon a file descriptor, from the same `RLIMIT_NOFILE` that its
//! workers' output pipes need: a client holding connections open must not make workers fail to
//! start, nor lock root out. So (see [`ConnectionLimits`]):
//!
//! * connections are capped at a quarter of the soft `RLIMIT_NOFILE` found at [`bind`] (at most
//!   [`MAX_CONNECTIONS`]); a read-only peer (control group) may hold an eighth of that per uid;
//!   root and the daemon's uid may go [`RESERVED_CONNECTIONS`] beyond the cap, so that they get
//!   in when read-only peers have used it up. A connection over a limit is answered `busy` and
//!   closed;
//! * a connection with nothing in progress for [`IDLE_TIMEOUT`] (no request line received, no
//!   reply pending or being sent) is closed. The supervisor's poll timeout includes
//!   [`ControlServer::next_deadline`], so this costs no periodic wake-up: with no connection
//!   there is no deadline;
//! * one spare descriptor (an unbound datagram socket) is kept open: when `accept` fails with
//!   `EMFILE` or `ENFILE`, it is closed to accept the waiting client, which is answered `busy`
//!   and closed, then reopened (if that fails, it is tried again at the listener's next
//!   wake-up). Without it the client would wait in the backlog for an answer that never comes,
//!   and nothing would report the listener again (edge-triggered).
//!
//! # The socket file
//!
//! It is created mode 0600 (0660 with a control group) in a directory that must not be writable
//! by others unless sticky. A socket already at the path is replaced only when nobody answers on
//! it (`connect` refused): two daemons configured with the same path do not take it from each
//! other — the second refuses to start, naming the path. At exit the file is removed only if it
//! is still the one this server bound (same device and inode).
//!
//! [`bind`]: ControlServer::bind

use std::collections::HashMap;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};

use super::{ErrorKind, MAX_LINE, Reply, Request};
use crate::error::{Error, Result};
use crate::log::repeat::{Repeated, Verdict};

/// The most connections served at once, however high `RLIMIT_NOFILE` is (see
/// [`ConnectionLimits`]).
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections root and the daemon's own uid may open beyond [`ConnectionLimits::total`].
pub const RESERVED_CONNECTIONS: usize = 16;
/// A connection with no request in progress and nothing received or sent for this long is
/// closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many bytes wait to be sent to one client.
pub const MAX_OUTPUT: usize = 4 << 20;
/// At most this many bytes are read from one connection per wake-up; the rest waits for the next
/// turn of the loop, so a client that writes as fast as we read holds neither the loop nor memory.
pub const READ_BUDGET: usize = 64 * 1024;

/// Identifies one connection.
pub type ConnId = u64;

/// How many connections the server accepts, derived from the soft `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// All connections together: a quarter of the descriptor limit, at least 4 and at most
    /// [`MAX_CONNECTIONS`]; the other three quarters stay for workers, log files and the rest.
    pub total: usize,
    /// The connections one read-only peer uid may hold: an eighth of `total`, at least 1.
    pub per_uid: usize,
    /// How far beyond `total` root and the daemon's uid may go ([`RESERVED_CONNECTIONS`]).
    pub reserved: usize,
}

impl ConnectionLimits {
    /// The limits for a soft `RLIMIT_NOFILE` of `nofile`.
    pub fn for_nofile(nofile: u64) -> ConnectionLimits {
        let total = usize::try_from(nofile / 4)
            .unwrap_or(usize::MAX)
            .clamp(4, MAX_CONNECTIONS);
        ConnectionLimits {
            total,
            per_uid: (total / 8).max(1),
            reserved: RESERVED_CONNECTIONS,
        }
    }
}

/// Who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Root or the daemon's uid.
    Full,
    /// A member of the control group: `status` only.
    ReadOnly,
    /// Nobody we know.
    Denied,
}

/// The credentials of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's pid.
    pub pid: i32,
    /// The peer's uid.
    pub uid: u32,
    /// The peer's gid.
    pub gid: u32,
    /// What it may do.
    pub access: Access,
}

struct Conn {
    stream: UnixStream,
    peer: Peer,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The peer closed its side: answer what is pending, then close.
    read_closed: bool,
    /// Close once the output is flushed.
    close_after_flush: bool,
    /// Requests being worked on for this connection.
    pending: usize,
    /// The last complete request line received, reply finished or bytes sent: the idle clock.
    last_active: Instant,
}

/// A request that arrived, or a line that was answered at once.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed, authorised request.
    Request(ConnId, Peer, Request),
}

/// What became of one accepted connection.
enum Admission {
    Served,
    Denied,
    OverLimit,
}

/// Whether somebody answers on a socket path.
enum SocketUse {
    /// A listener accepted (or its backlog is full).
    Live,
    /// Nobody listens: a socket left behind by a daemon that died.
    Stale,
    /// It disappeared meanwhile.
    Gone,
    /// We cannot tell (no permission to connect, …).
    Unknown(std::io::Error),
}

/// The listening socket and its connections.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we bound, so that exit removes only ours.
    ident: Option<(u64, u64)>,
    conns: HashMap<ConnId, Conn>,
    /// Open connections per peer uid.
    per_uid: HashMap<u32, usize>,
    next: ConnId,
    owner: Uid,
    group: Option<Gid>,
    listener_token: Token,
    conn_token_base: usize,
    limits: ConnectionLimits,
    idle_timeout: Duration,
    /// No idle connection expires before this; `None` when no connection is idle.
    sweep_at: Option<Instant>,
    /// Closed to accept (and turn away) a client when out of descriptors, then reopened.
    spare: Option<std::os::unix::net::UnixDatagram>,
    /// Refusals (unauthorised uids, read-only uids asking to write, connections over the
    /// limits): logged once, then summarised, so that a client in a loop cannot flood the log.
    refusals: Refusals,
}

/// The log state of each kind of refusal ([`crate::log::repeat`]).
struct Refusals {
    denied: Repeated,
    read_only: Repeated,
    over_limit: Repeated,
    out_of_fds: Repeated,
}

/// How often repeated refusals are summarised, at most.
const REFUSALS_SUMMARY_EVERY: Duration = Duration::from_secs(60);

impl Refusals {
    fn new() -> Refusals {
        let r = || Repeated::new(REFUSALS_SUMMARY_EVERY);
        Refusals {
            denied: r(),
            read_only: r(),
            over_limit: r(),
            out_of_fds: r(),
        }
    }
}

/// Logs `count` refusals of one kind through `state`: the first in full (`first`), then a
/// summary at most once per [`REFUSALS_SUMMARY_EVERY`].
fn log_refusal(state: &mut Repeated, count: u64, first: impl FnOnce() -> String, what: &str) {
    match state.failed("refused", count, Instant::now()) {
        Verdict::First { .. } => log::warn!(
            "{} (repeats are summarised every {}s)",
            first(),
            REFUSALS_SUMMARY_EVERY.as_secs()
        ),
        Verdict::Summary { count } => log::warn!("control: refused {count} more {what}"),
        Verdict::Quiet => {}
    }
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .field("connections", &self.conns.len())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        crate::daemon::unmark_private(self.listener.as_raw_fd());
    }
}

impl ControlServer {
    /// Binds the socket at `path`, replacing a stale socket there.
    ///
    /// A socket at the path is stale when nobody answers on it; when somebody does (another
    /// daemon configured with the same path), binding fails with an error naming the path.
    /// `group` lets its members connect and read status. The connection limits are derived from
    /// the soft `RLIMIT_NOFILE` at this moment (raise it first, see
    /// [`crate::daemon::raise_nofile`]).
    pub fn bind(path: &Path, group: Option<Gid>) -> Result<ControlServer> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let meta = std::fs::metadata(dir)
            .map_err(|e| Error::io("cannot use control socket directory", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::Invalid {
                what: "control_socket",
                reason: format!("{} is not a directory", dir.display()),
            });
        }
        if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(Error::Invalid {
                what: "control_socket",
                reason: format!(
                    "its directory {} is writable by everyone and not sticky",
                    dir.display()
                ),
            });
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match probe(path) {
                SocketUse::Stale => std::fs::remove_file(path)
                    .or_else(|e| match e.kind() {
                        IoKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(|e| Error::io("cannot remove stale control socket", path, e))?,
                SocketUse::Gone => {}
                SocketUse::Live => {
                    return Err(Error::Invalid {
                        what: "control_socket",
                        reason: format!(
                            "{} is in use: another running daemon answers on it (give each \
                             configuration its own control_socket)",
                            path.display()
                        ),
                    });
                }
                SocketUse::Unknown(e) => {
                    return Err(Error::io(
                        "cannot tell whether another daemon uses control socket",
                        path,
                        e,
                    ));
                }
            },
            Ok(_) => {
                return Err(Error::Invalid {
                    what: "control_socket",
                    reason: format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                });
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io("cannot bind control socket", path, e))?;
        let ident = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("cannot chmod control socket", path, e))?;
        if let Some(g) = group {
            nix::unistd::chown(path, None, Some(g))
                .map_err(|e| Error::io("cannot chown control socket", path, e.into()))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("cannot configure control socket", path, e))?;
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        // A child forked without exec (`warden::fork`) that outlived us would hold the listening
        // socket open: clients would hang in its backlog, and the next daemon would find the
        // socket in use. Such a child points it at /dev/null instead.
        crate::daemon::mark_private(listener.as_raw_fd());
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            ident,
            conns: HashMap::new(),
            per_uid: HashMap::new(),
            next: 1,
            owner: Uid::effective(),
            group,
            listener_token: Token(2),
            conn_token_base: 1 << 40,
            limits: ConnectionLimits::for_nofile(nofile),
            idle_timeout: IDLE_TIMEOUT,
            sweep_at: None,
            spare: spare_fd(),
            refusals: Refusals::new(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection limits in force.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Sets the connection limits (instead of those derived from `RLIMIT_NOFILE` at bind).
    pub fn set_limits(&mut self, limits: ConnectionLimits) {
        self.limits = limits;
    }

    /// Sets how long a connection may stay idle (default [`IDLE_TIMEOUT`]); it applies from the
    /// next activity of each connection.
    pub fn set_idle_timeout(&mut self, timeout: Duration) {
        self.idle_timeout = timeout;
    }

    /// Registers the listener with `registry` under `listener_token`; connections get tokens
    /// from `conn_token_base` upwards.
    pub fn register(
        &mut self,
        registry: &Registry,
        listener_token: Token,
        conn_token_base: usize,
    ) -> std::io::Result<()> {
        self.listener_token = listener_token;
        self.conn_token_base = conn_token_base;
        registry.register(
            &mut SourceFd(&self.listener.as_raw_fd()),
            listener_token,
            Interest::READABLE,
        )
    }

    /// The connection a token belongs to, if it is one of ours.
    pub fn conn_of(&self, token: Token) -> Option<ConnId> {
        token
            .0
            .checked_sub(self.conn_token_base)
            .map(|id| id as ConnId)
    }

    /// Accepts every pending connection.
    pub fn accept(&mut self, registry: &Registry) {
        // A spare that could not be made earlier (`ENFILE` for a moment, say) is tried again on
        // every wake-up: one failure must not leave the listener without one for good, every
        // later `EMFILE` leaving its clients waiting.
        if self.spare.is_none() {
            self.spare = spare_fd();
        }
        let (mut over, mut shed) = (0usize, 0usize);
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == IoKind::WouldBlock => break,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    match self.shed_one() {
                        Some(true) => {
                            shed += 1;
                            continue;
                        }
                        // Nobody was waiting after all.
                        None => break,
                        Some(false) => {
                            log::warn!("control: cannot accept: {e}");
                            break;
                        }
                    }
                }
                Err(e) => {
                    log::warn!("control: cannot accept: {e}");
                    break;
                }
            };
            match self.admit(stream, registry) {
                Admission::Served | Admission::Denied => {}
                Admission::OverLimit => over += 1,
            }
        }
        if over > 0 {
            let limits = self.limits;
            log_refusal(
                &mut self.refusals.over_limit,
                over as u64,
                || {
                    format!(
                        "control: refused {over} connection(s) over the limits ({} in all, {} \
                         per read-only uid, {} more for root and warden's uid)",
                        limits.total, limits.per_uid, limits.reserved
                    )
                },
                "connection(s) over the limits",
            );
        }
        if shed > 0 {
            log_refusal(
                &mut self.refusals.out_of_fds,
                shed as u64,
                || format!("control: out of file descriptors: refused {shed} connection(s)"),
                "connection(s) for want of file descriptors",
            );
        }
    }

    /// Out of descriptors: closes the spare one to accept the first waiting client, tells it we
    /// are busy, closes it and takes the spare again. `Some(false)` when there is no spare or the
    /// accept fails all the same, `None` when no client was waiting.
    fn shed_one(&mut self) -> Option<bool> {
        if self.spare.take().is_none() {
            return Some(false);
        }
        let shed = match self.listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(true);
                let _ = s.write_all(
                    Reply::failed(ErrorKind::Busy, "warden is out of file descriptors")
                        .to_line()
                        .as_bytes(),
                );
                Some(true)
            } // closed here, before the spare takes its number back
            Err(e) if e.kind() == IoKind::WouldBlock => None,
            Err(_) => Some(false),
        };
        self.spare = spare_fd();
        shed
    }

    /// Authorises and counts one accepted connection: served, or answered and closed.
    fn admit(&mut self, stream: UnixStream, registry: &Registry) -> Admission {
        let _ = stream.set_nonblocking(true);
        let cred = match getsockopt(&stream, sockopt::PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("control: no peer credentials: {e}");
                return Admission::Denied;
            }
        };
        // The kernel's record of the peer's groups, so that deciding never waits on the
        // name service (LDAP, sssd…) inside the event loop.
        let groups = match crate::sys::peer_groups(stream.as_fd()) {
            Ok(g) => g,
            Err(e) => {
                log::debug!("control: no peer groups ({e}); asking the name service");
                None
            }
        };
        let access = self.access_of(cred.uid(), cred.gid(), groups.as_deref());
        let peer = Peer {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
            access,
        };
        let refuse = |stream: UnixStream, reply: Reply| {
            let mut s = stream;
            let _ = s.write_all(reply.to_line().as_bytes());
        };
        if access == Access::Denied {
            // The reason, so that the log answers "why was I refused" by itself.
            let who = match self.group {
                Some(g) => format!("root, warden's own uid and (to read) members of group {g}"),
                None => "root and warden's own uid".to_string(),
            };
            log_refusal(
                &mut self.refusals.denied,
                1,
                || {
                    format!(
                        "control: refused connection from uid {} (pid {}): only {who} may use \
                         the control socket",
                        peer.uid, peer.pid
                    )
                },
                "connection(s) from unauthorised uids",
            );
            refuse(
                stream,
                Reply::failed(
                    ErrorKind::Denied,
                    format!("uid {} may not use this control socket", peer.uid),
                ),
            );
            return Admission::Denied;
        }
        let open = self.conns.len();
        let of_uid = self.per_uid.get(&peer.uid).copied().unwrap_or(0);
        let over = match access {
            Access::Full => (open >= self.limits.total + self.limits.reserved)
                .then(|| "too many control connections".to_string()),
            _ if open >= self.limits.total => Some("too many control connections".to_string()),
            _ if of_uid >= self.limits.per_uid => Some(format!(
                "too many control connections from uid {} (at most {})",
                peer.uid, self.limits.per_uid
            )),
            _ => None,
        };
        if let Some(why) = over {
            refuse(stream, Reply::failed(ErrorKind::Busy, why));
            return Admission::OverLimit;
        }
        let id = self.next;
        self.next += 1;
        let token = Token(self.conn_token_base + id as usize);
        if let Err(e) = registry.register(
            &mut SourceFd(&stream.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("control: cannot register a connection: {e}");
            return Admission::Denied;
        }
        let now = Instant::now();
        self.conns.insert(
            id,
            Conn {
                stream,
                peer,
                input: Vec::new(),
                output: Vec::new(),
                read_closed: false,
                close_after_flush: false,
                pending: 0,
                last_active: now,
            },
        );
        *self.per_uid.entry(peer.uid).or_insert(0) += 1;
        self.idle_from(now);
        Admission::Served
    }

    /// A connection became idle at `now`: make sure a sweep is due by its deadline (an earlier
    /// sweep already due is kept; it recomputes).
    fn idle_from(&mut self, now: Instant) {
        if self.sweep_at.is_none() {
            self.sweep_at = now.checked_add(self.idle_timeout);
        }
    }

    /// When the next idle connection may expire: part of the supervisor's poll timeout. `None`
    /// when no connection is idle (and always when there is no connection).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sweep_at
    }

    /// Closes the connections that have been idle for the idle timeout by `now`.
    pub fn expire_idle(&mut self, now: Instant, registry: &Registry) {
        if self.sweep_at.is_none_or(|at| at > now) {
            return;
        }
        let timeout = self.idle_timeout;
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.pending == 0 && c.last_active.checked_add(timeout).is_some_and(|d| d <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(c) = self.conns.get(&id) {
                log::debug!(
                    "control: closing the connection of uid {} (pid {}): idle for {}s",
                    c.peer.uid,
                    c.peer.pid,
                    timeout.as_secs()
                );
            }
            self.close(id, registry);
        }
        self.sweep_at = self
            .conns
            .values()
            .filter(|c| c.pending == 0)
            .filter_map(|c| c.last_active.checked_add(timeout))
            .min();
    }

    /// What a peer may do: full for root and the daemon's own user, read-only for members of
    /// `control_group`. Membership is the peer process's own groups when the kernel reports
    /// them (`groups`, `SO_PEERGROUPS`); only on kernels that cannot is the user's group list
    /// looked up.
    fn access_of(&self, uid: u32, gid: u32, groups: Option<&[u32]>) -> Access {
        if uid == 0 || uid == self.owner.as_raw() {
            return Access::Full;
        }
        let Some(group) = self.group else {
            return Access::Denied;
        };
        if gid == group.as_raw() {
            return Access::ReadOnly;
        }
        if let Some(groups) = groups {
            return if groups.contains(&group.as_raw()) {
                Access::ReadOnly
            } else {
                Access::Denied
            };
        }
        let member = nix::unistd::User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .and_then(|u| {
                let name = std::ffi::CString::new(u.name).ok()?;
                nix::unistd::getgrouplist(&name, u.gid).ok()
            })
            .is_some_and(|groups| groups.contains(&group));
        if member {
            Access::ReadOnly
        } else {
            Access::Denied
        }
    }

    /// Reads what connection `id` sent; returns the complete, authorised requests. Bad lines are
    /// answered here.
    pub fn readable(&mut self, id: ConnId, registry: &Registry) -> Vec<Incoming> {
        let mut out = Vec::new();
        let Some(conn) = self.conns.get_mut(&id) else {
            return out;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut budget = READ_BUDGET;
        let mut more = false;
        loop {
            if budget == 0 {
                more = true;
                break;
            }
            let want = budget.min(buf.len());
            match conn.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    conn.read_closed = true;
                    break;
                }
                Ok(n) => {
                    budget -= n;
                    conn.input.extend_from_slice(&buf[..n]);
                    // Only the unfinished last line is bounded here: a newline early in the buffer
                    // must not let the rest of it grow without limit.
                    let partial = conn
                        .input
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(conn.input.len(), |nl| conn.input.len() - nl - 1);
                    if partial > MAX_LINE {
                        break;
                    }
                }
                Err(e) if e.kind() == IoKind::WouldBlock => break,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => {
                    conn.read_closed = true;
                    break;
                }
            }
        }
        let mut replies = Vec::new();
        // Lines are taken by index and the buffer drained once: draining line by line moves the
        // rest of the buffer each time, quadratic in a burst of short lines (megabytes of
        // newlines would hold the event loop for seconds).
        let mut start = 0;
        while let Some(len) = conn.input[start..].iter().position(|&b| b == b'\n') {
            let line = &conn.input[start..start + len];
            start += len + 1;
            if line.len() > MAX_LINE {
                replies.push(Reply::failed(
                    ErrorKind::BadRequest,
                    format!("line longer than {MAX_LINE} bytes"),
                ));
                conn.close_after_flush = true;
                break;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse(line) {
                Err(reply) => replies.push(reply),
                Ok(req) if req.command.writes() && conn.peer.access != Access::Full => {
                    let peer = conn.peer;
                    log_refusal(
                        &mut self.refusals.read_only,
                        1,
                        || {
                            format!(
                                "control: uid {} (pid {}) may only read status; refused {:?}",
                                peer.uid, peer.pid, req.command
                            )
                        },
                        "request(s) to change something from read-only uids",
                    );
                    replies.push(Reply::failed(
                        ErrorKind::Denied,
                        format!("uid {} may only read status", conn.peer.uid),
                    ));
                }
                Ok(req) => {
                    conn.pending += 1;
                    out.push(Incoming::Request(id, conn.peer, req));
                }
            }
        }
        if start > 0 {
            conn.last_active = Instant::now();
        }
        conn.input.drain(..start);
        if conn.input.len() > MAX_LINE && !conn.close_after_flush {
            replies.push(Reply::failed(
                ErrorKind::BadRequest,
                format!("line longer than {MAX_LINE} bytes"),
            ));
            conn.input.clear();
            conn.close_after_flush = true;
        }
        for r in replies {
            self.queue(id, &r);
        }
        self.flush(id, registry);
        if more {
            // Edge-triggered: nothing would wake us for what is already buffered. Re-arming
            // (EPOLL_CTL_MOD) reports the connection again on the next turn if still readable.
            if let Some(conn) = self.conns.get(&id) {
                let token = Token(self.conn_token_base + id as usize);
                let _ = registry.reregister(
                    &mut SourceFd(&conn.stream.as_raw_fd()),
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                );
            }
        }
        out
    }

    fn queue(&mut self, id: ConnId, reply: &Reply) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let line = reply.to_line();
        if conn.output.len() + line.len() > MAX_OUTPUT {
            // A client that does not read its answers loses its connection, not our memory.
            conn.close_after_flush = true;
            conn.output.clear();
            conn.read_closed = true;
            return;
        }
        conn.output.extend_from_slice(line.as_bytes());
    }

    /// Sends a progress line to `id` (dropped silently if it has gone).
    pub fn progress(&mut self, id: ConnId, text: &str, registry: &Registry) {
        self.queue(id, &Reply::progress(text));
        self.flush(id, registry);
    }

    /// Sends the final reply to one request of `id`.
    pub fn reply(&mut self, id: ConnId, reply: &Reply, registry: &Registry) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.pending = conn.pending.saturating_sub(1);
            let now = Instant::now();
            conn.last_active = now;
            if conn.pending == 0 {
                self.idle_from(now);
            }
        }
        self.queue(id, reply);
        self.flush(id, registry);
    }

    /// Whether the peer of `id` closed its side (a client that gave up waiting). The protocol
    /// asks clients to keep their side open until the final reply.
    pub fn peer_gone(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.read_closed)
    }

    /// Closes `id` now.
    pub fn close(&mut self, id: ConnId, registry: &Registry) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = registry.deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
            if let Some(n) = self.per_uid.get_mut(&conn.peer.uid) {
                *n -= 1;
                if *n == 0 {
                    self.per_uid.remove(&conn.peer.uid);
                }
            }
        }
        if self.conns.is_empty() {
            // No wake-up for nobody.
            self.sweep_at = None;
        }
    }

    /// Whether connection `id` is still open.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Writes what is buffered for `id`; closes it when done and due.
    pub fn flush(&mut self, id: ConnId, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(0) => break,
                Ok(n) => {
                    conn.output.drain(..n);
                    conn.last_active = Instant::now();
                }
                Err(e) if e.kind() == IoKind::WouldBlock => break,
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => {
                    conn.output.clear();
                    conn.close_after_flush = true;
                    conn.read_closed = true;
                    break;
                }
            }
        }
        let done = conn.output.is_empty()
            && (conn.close_after_flush || (conn.read_closed && conn.pending == 0));
        if done {
            self.close(id, registry);
        }
    }

    /// Removes the socket file (at exit) if it is still the one this server bound: another
    /// daemon may have replaced a socket it found stale (or an operator removed ours), and its
    /// socket is not ours to delete.
    pub fn remove_file(&self) {
        let current = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.ident {
            let _ = std::fs::remove_file(&self.path);
        } else if current.is_some() {
            log::info!(
                "control: {} is no longer the socket this daemon bound; left in place",
                self.path.display()
            );
        }
    }

    /// How many connections are open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The listener's token.
    pub fn listener_token(&self) -> Token {
        self.listener_token
    }
}

/// The descriptor kept in reserve for `EMFILE`: any will do; an unbound datagram socket is
/// cheap and, like every other descriptor of the daemon, a socket.
fn spare_fd() -> Option<std::os::unix::net::UnixDatagram> {
    std::os::unix::net::UnixDatagram::unbound().ok()
}

/// Whether somebody answers on the socket at `path`: a non-blocking `connect` (a listener with
/// a full backlog answers `EAGAIN` instead of making us wait).
fn probe(path: &Path) -> SocketUse {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let fd = match socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => return SocketUse::Unknown(e.into()),
    };
    let addr = match UnixAddr::new(path) {
        Ok(a) => a,
        Err(e) => return SocketUse::Unknown(e.into()),
    };
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => SocketUse::Live,
        Err(Errno::ECONNREFUSED) => SocketUse::Stale,
        Err(Errno::ENOENT) => SocketUse::Gone,
        Err(e) => SocketUse::Unknown(e.into()),
    }
}

/// One request line, as [`Request::parse_line`] reads it, refused with a `bad-request` reply.
fn parse(line: &[u8]) -> std::result::Result<Request, Reply> {
    Request::parse_line(line).map_err(|e| Reply::failed(ErrorKind::BadRequest, e))
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warden-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn refused(line: &str) -> String {
        match parse(line.as_bytes()) {
            Ok(r) => panic!("{line} was accepted: {r:?}"),
            Err(Reply::Failed { error, .. }) => error,
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        let e = refused(r#"{"v":1,"cmd":"status","cmd":"stop"}"#);
        assert!(e.contains("duplicate key \"cmd\""), "{e}");
        let e = refused(r#"{"v":1,"v":1,"cmd":"status"}"#);
        assert!(e.contains("duplicate key \"v\""), "{e}");
        let e = refused(r#"{"v":1,"cmd":"stop","programs":[{"a":1,"a":2}]}"#);
        assert!(e.contains("duplicate key \"a\""), "{e}");
        assert!(parse(br#"{"v":1,"cmd":"scale","program":"w","instances":2}"#).is_ok());
        assert!(parse(br#"{"v":1,"cmd":"stop","programs":["a","a"]}"#).is_ok());
    }

    #[test]
    fn a_bad_version_says_what_is_wrong() {
        for (line, want) in [
            (r#"{"cmd":"status"}"#, "missing protocol version"),
            (
                r#"{"v":2,"cmd":"status"}"#,
                "protocol version 2 is not supported",
            ),
            (
                r#"{"v":-1,"cmd":"status"}"#,
                "protocol version -1 is not supported",
            ),
            (
                r#"{"v":1.5,"cmd":"status"}"#,
                "protocol version 1.5 is not supported",
            ),
            (
                r#"{"v":99999999999999999999,"cmd":"status"}"#,
                "is not supported",
            ),
            (
                r#"{"v":"1","cmd":"status"}"#,
                "must be the integer 1, found \"1\"",
            ),
            (
                r#"{"v":null,"cmd":"status"}"#,
                "must be the integer 1, found null",
            ),
        ] {
            let e = refused(line);
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn limits_follow_the_descriptor_limit() {
        let l = ConnectionLimits::for_nofile(1024);
        assert_eq!(
            (l.total, l.per_uid, l.reserved),
            (256, 32, RESERVED_CONNECTIONS)
        );
        assert_eq!(ConnectionLimits::for_nofile(524_288).total, MAX_CONNECTIONS);
        assert_eq!(ConnectionLimits::for_nofile(8).total, 4);
        assert_eq!(ConnectionLimits::for_nofile(8).per_uid, 1);
    }

    #[test]
    fn a_live_socket_is_not_taken_over_and_only_ours_is_removed() {
        let dir = temp_dir("takeover");
        let path = dir.join("c.sock");
        let first = ControlServer::bind(&path, None).unwrap();
        let err = ControlServer::bind(&path, None).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} is in use", path.display())),
            "{err}"
        );
        // Someone replaced the file (another daemon that found it stale, an operator): at exit
        // the first server leaves the new socket alone.
        std::fs::remove_file(&path).unwrap();
        let second = ControlServer::bind(&path, None).unwrap();
        first.remove_file();
        assert!(path.exists(), "the second server's socket was removed");
        drop(first);
        // A socket nobody listens on any more is stale and replaced.
        drop(second);
        assert!(path.exists());
        let third = ControlServer::bind(&path, None).unwrap();
        UnixStream::connect(&path).expect("the new listener answers");
        third.remove_file();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn idle_connections_expire_and_limits_hold() {
        let dir = temp_dir("idle");
        let path = dir.join("c.sock");
        let poll = mio::Poll::new().unwrap();
        let mut server = ControlServer::bind(&path, None).unwrap();
        server.register(poll.registry(), Token(1), 1 << 20).unwrap();
        // We are root or the daemon's uid here: full access, `total + reserved` connections.
        server.set_limits(ConnectionLimits {
            total: 2,
            per_uid: 1,
            reserved: 1,
        });
        server.set_idle_timeout(Duration::from_millis(50));
        assert_eq!(server.next_deadline(), None, "no connection, no wake-up");
        let clients: Vec<UnixStream> = (0..4)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        server.accept(poll.registry());
        assert_eq!(server.connections(), 3);
        // The one over the limit was told so, and closed.
        let mut last = std::io::BufReader::new(&clients[3]);
        let mut line = String::new();
        last.read_line(&mut line).unwrap();
        assert!(line.contains("\"kind\":\"busy\""), "{line}");
        let due = server
            .next_deadline()
            .expect("idle connections have a deadline");
        // A busy connection (a request in progress) does not expire.
        let busy = server.conns.keys().copied().next().unwrap();
        server.conns.get_mut(&busy).unwrap().pending = 1;
        std::thread::sleep(Duration::from_millis(60));
        server.expire_idle(Instant::now().max(due), poll.registry());
        assert_eq!(server.connections(), 1);
        assert_eq!(server.next_deadline(), None, "the busy one is not idle");
        server.reply(busy, &Reply::progress("done"), poll.registry());
        let due = server.next_deadline().expect("idle again");
        std::thread::sleep(Duration::from_millis(60));
        server.expire_idle(Instant::now().max(due), poll.registry());
        assert_eq!(server.connections(), 0);
        assert_eq!(server.next_deadline(), None);
        drop(clients);
        server.remove_file();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A spare descriptor that could not be made (or remade after shedding) is made again at
    /// the next wake-up of the listener.
    #[test]
    fn a_missing_spare_descriptor_is_made_again() {
        let dir = temp_dir("spare");
        let path = dir.join("c.sock");
        let poll = mio::Poll::new().unwrap();
        let mut server = ControlServer::bind(&path, None).unwrap();
        server.register(poll.registry(), Token(1), 1 << 20).unwrap();
        assert!(server.spare.is_some(), "bind keeps a spare");
        // As if `spare_fd` had failed with ENFILE after the last shedding.
        server.spare = None;
        let client = UnixStream::connect(&path).unwrap();
        server.accept(poll.registry());
        assert_eq!(server.connections(), 1);
        assert!(server.spare.is_some(), "the spare was not made again");
        drop(client);
        server.remove_file();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parse_checks_version_and_shape() {
        assert!(parse(br#"{"v":1,"cmd":"status"}"#).is_ok());
        assert!(matches!(
            parse(b"garbage"),
            Err(Reply::Failed {
                kind: ErrorKind::BadRequest,
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"v":2,"cmd":"status"}"#),
            Err(Reply::Failed {
                kind: ErrorKind::BadRequest,
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"cmd":"status"}"#),
            Err(Reply::Failed {
                kind: ErrorKind::BadRequest,
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"v":1,"cmd":"nope"}"#),
            Err(Reply::Failed {
                kind: ErrorKind::BadRequest,
                ..
            })
        ));
    }
}
