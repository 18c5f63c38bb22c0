//! The control socket's server side, driven by the supervisor's event loop.
//!
//! Every descriptor is non-blocking and registered edge-triggered; reads stop at `EAGAIN`, input
//! is cut into lines bounded by [`super::MAX_LINE`], output is buffered up to
//! [`MAX_OUTPUT`] per connection (a client that does not read is disconnected, never waited for).
//! At most [`MAX_CONNECTIONS`] are served; one more is told `busy` and closed. A peer is
//! authorised once, at accept time, from `SO_PEERCRED`: root and the daemon's own uid may do
//! everything, members of the optional control group may read status, anyone else is refused and
//! logged with their uid. Membership is the peer process's groups from `SO_PEERGROUPS` (what the
//! kernel recorded at connect), so no name-service lookup ever runs in the event loop.
//!
//! The socket file is created mode 0600 (0660 with a control group) in a directory that must not
//! be writable by others unless sticky; an existing socket at the path is removed only by the
//! caller that holds the pidfile lock (which proves no other daemon uses it).

use std::collections::HashMap;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};

use super::{ErrorKind, MAX_LINE, Reply, Request, VERSION};
use crate::error::{Error, Result};

/// At most this many connections are served at once.
pub const MAX_CONNECTIONS: usize = 900;
/// At most this many bytes wait to be sent to one client.
pub const MAX_OUTPUT: usize = 4 << 20;
/// At most this many bytes are read from one connection per wake-up; the rest waits for the next
/// turn of the loop, so a client that writes as fast as we read holds neither the loop nor memory.
pub const READ_BUDGET: usize = 64 * 1024;

/// Identifies one connection.
pub type ConnId = u64;

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
}

/// A request that arrived, or a line that was answered at once.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed, authorised request.
    Request(ConnId, Peer, Request),
}

/// The listening socket and its connections.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<ConnId, Conn>,
    next: ConnId,
    owner: Uid,
    group: Option<Gid>,
    listener_token: Token,
    conn_token_base: usize,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl ControlServer {
    /// Binds the socket at `path`, replacing a stale socket there.
    ///
    /// The caller must hold the daemon's pidfile lock: that is what proves an existing socket is
    /// stale. `group` lets its members connect and read status.
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
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(path)
                    .map_err(|e| Error::io("cannot remove stale control socket", path, e))?;
            }
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
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            conns: HashMap::new(),
            next: 1,
            owner: Uid::effective(),
            group,
            listener_token: Token(2),
            conn_token_base: 1 << 40,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
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
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog; they are retried on the
                    // next wake-up.
                    log::warn!("control: cannot accept: {e}");
                    return;
                }
            };
            let _ = stream.set_nonblocking(true);
            let cred = match getsockopt(&stream, sockopt::PeerCredentials) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("control: no peer credentials: {e}");
                    continue;
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
            if self.conns.len() >= MAX_CONNECTIONS {
                let mut s = stream;
                let _ = s.write_all(
                    Reply::failed(ErrorKind::Busy, "too many control connections")
                        .to_line()
                        .as_bytes(),
                );
                continue;
            }
            if access == Access::Denied {
                log::warn!(
                    "control: refused connection from uid {} (pid {})",
                    peer.uid,
                    peer.pid
                );
                let mut s = stream;
                let _ = s.write_all(
                    Reply::failed(
                        ErrorKind::Denied,
                        format!("uid {} may not use this control socket", peer.uid),
                    )
                    .to_line()
                    .as_bytes(),
                );
                continue;
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
                continue;
            }
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
                },
            );
        }
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
                    log::warn!(
                        "control: uid {} (pid {}) may only read status; refused {:?}",
                        conn.peer.uid,
                        conn.peer.pid,
                        req.command
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

    /// Removes the socket file (at exit).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
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

fn parse(line: &[u8]) -> std::result::Result<Request, Reply> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| Reply::failed(ErrorKind::BadRequest, format!("not JSON: {e}")))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(Reply::failed(
                ErrorKind::BadRequest,
                format!("protocol version {v} is not supported (this warden speaks {VERSION})"),
            ));
        }
        None => {
            return Err(Reply::failed(
                ErrorKind::BadRequest,
                "missing protocol version \"v\"",
            ));
        }
    }
    serde_json::from_value(value)
        .map_err(|e| Reply::failed(ErrorKind::BadRequest, format!("bad request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
