//! The control socket's connection I/O, driven by the supervisor's event loop: reading request
//! lines, answering them, closing idle connections.
//!
//! Every descriptor is non-blocking and registered edge-triggered; reads stop at `EAGAIN` or
//! after [`READ_BUDGET`] bytes, input is cut into lines bounded by [`super::MAX_LINE`], output
//! is buffered up to [`MAX_OUTPUT`] per connection (a client that does not read is
//! disconnected, never waited for). A request that needs write access from a read-only peer is
//! answered `denied` here; the others go to the supervisor as [`Incoming`], which carries them
//! out and answers through [`ControlServer::reply`]. This file never changes supervisor state.
//!
//! # Neighbours
//!
//! Who may connect, and how many, is [`super::admission`]'s; the socket file (directory checks,
//! stale sockets, removal at exit) is `socket_file`'s.
//!
//! # Event streams
//!
//! A connection that asked for `events` is a subscriber: [`ControlServer::broadcast`] queues
//! every event line to it, within [`EVENTS_MAX_OUTPUT`]; a subscriber that lets more than that
//! wait is cut off at once — its buffer dropped, its connection closed, its uid and pid logged —
//! so that warden never waits for, nor grows memory for, a client that does not read. It never
//! expires idle (its request is in progress for as long as it lasts), asks nothing more (a
//! request on it is refused), and is closed as soon as its peer closes its side.
//! [`ControlServer::end_streams`] sends the final line when warden stops; across `warden
//! upgrade` the stream goes on ([`ControlServer::handover`], [`ControlServer::adopt_subscriber`]).
//!
//! # Idle connections
//!
//! A connection with nothing in progress for [`IDLE_TIMEOUT`] (no request line received, no
//! reply pending or being sent) is closed. The supervisor's poll timeout includes
//! [`ControlServer::next_deadline`], so this costs no periodic wake-up: with no connection
//! there is no deadline.

use std::collections::HashMap;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::unistd::{Gid, Uid};

use super::admission::{Access, ConnectionLimits, Peer, Refusals, log_refusal, spare_fd};
use super::socket_file::{self, FileIdent};
use super::{ErrorKind, MAX_LINE, Reply, Request};
use crate::error::Result;
use crate::stream::{ReadEnd, read_nonblocking};

/// A connection with no request in progress and nothing received or sent for this long is
/// closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many bytes wait to be sent to one client.
pub const MAX_OUTPUT: usize = 4 << 20;
/// At most this many bytes of events wait to be sent to one subscriber: about seven thousand
/// events, enough for a burst (a reload restarting hundreds of instances); a subscriber that
/// lets more wait is cut off.
pub const EVENTS_MAX_OUTPUT: usize = 1 << 20;
/// At most this many bytes of events wait for all subscribers together: beyond, the streams
/// with the most waiting are cut off first. Without it, a user allowed hundreds of connections
/// could make warden hold hundreds of megabytes for streams it never reads.
pub const EVENTS_MAX_OUTPUT_ALL: usize = 32 << 20;
/// At most this many bytes are read from one connection per wake-up; the rest waits for the next
/// turn of the loop, so a client that writes as fast as we read holds neither the loop nor memory.
pub const READ_BUDGET: usize = 64 * 1024;

/// Identifies one connection.
pub type ConnId = u64;

/// The connections handed to the next image by `warden upgrade` ([`ControlServer::handover`]):
/// descriptors kept open across the exec.
#[derive(Debug, Default)]
pub struct Handover {
    /// Connections with what each sent that is not a whole request yet.
    pub conns: Vec<(std::os::fd::RawFd, Vec<u8>)>,
    /// Subscribers to events.
    pub subscribers: Vec<std::os::fd::RawFd>,
}

/// One open connection.
pub(super) struct Conn {
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
    /// It asked for `events`: it receives every event line until warden stops.
    subscribed: bool,
    /// The last complete request line received, reply finished or bytes sent: the idle clock.
    last_active: Instant,
}

impl Conn {
    /// Reads into `input` until `EAGAIN`, end of stream, an unfinished line longer than
    /// [`MAX_LINE`], or [`READ_BUDGET`] bytes. Returns whether the budget ran out, data perhaps
    /// left unread: the caller must then come back by itself.
    fn fill_input(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let mut state = (&mut *self, &mut buf, READ_BUDGET, false);
        let end = read_nonblocking(
            &mut state,
            |(conn, buf, budget, _)| {
                let want = (*budget).min(buf.len());
                conn.stream.read(&mut buf[..want])
            },
            |(conn, buf, budget, too_long), n| {
                *budget -= n;
                conn.input.extend_from_slice(&buf[..n]);
                // Only the unfinished last line is bounded here: a newline early in the buffer
                // must not let the rest of it grow without limit.
                let partial = conn
                    .input
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(conn.input.len(), |nl| conn.input.len() - nl - 1);
                *too_long = partial > MAX_LINE;
                if *too_long || *budget == 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        let too_long = state.3;
        match end {
            ReadEnd::Closed => {
                self.read_closed = true;
                false
            }
            ReadEnd::Paused => !too_long,
            ReadEnd::Drained => false,
        }
    }

    /// Takes the complete lines out of `input`: each a request or the reply refusing it. Blank
    /// lines are skipped; a line over [`MAX_LINE`] (complete or not) is refused and the
    /// connection closed once that is sent.
    fn take_lines(&mut self) -> Vec<std::result::Result<Request, Reply>> {
        let too_long = || {
            Reply::failed(
                ErrorKind::BadRequest,
                format!("line longer than {MAX_LINE} bytes"),
            )
        };
        let mut lines = Vec::new();
        // Lines are taken by index and the buffer drained once: draining line by line moves the
        // rest of the buffer each time, quadratic in a burst of short lines (megabytes of
        // newlines would hold the event loop for seconds).
        let mut start = 0;
        while let Some(len) = self.input[start..].iter().position(|&b| b == b'\n') {
            let line = &self.input[start..start + len];
            start += len + 1;
            if line.len() > MAX_LINE {
                lines.push(Err(too_long()));
                self.close_after_flush = true;
                break;
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(parse(line));
            }
        }
        if start > 0 {
            self.last_active = Instant::now();
        }
        self.input.drain(..start);
        if self.input.len() > MAX_LINE && !self.close_after_flush {
            lines.push(Err(too_long()));
            self.input.clear();
            self.close_after_flush = true;
        }
        lines
    }
}

/// A well-formed request from a peer allowed to make it, for the supervisor to carry out and
/// answer with [`ControlServer::reply`].
#[derive(Debug)]
pub struct Incoming {
    /// The connection to answer on.
    pub conn: ConnId,
    /// Who asked.
    pub peer: Peer,
    /// What was asked.
    pub request: Request,
}

/// The listening socket and its connections.
pub struct ControlServer {
    pub(super) listener: UnixListener,
    pub(super) path: PathBuf,
    /// Device and inode of the socket file we bound, so that exit removes only ours.
    pub(super) ident: Option<FileIdent>,
    pub(super) conns: HashMap<ConnId, Conn>,
    /// Open connections per peer uid.
    pub(super) per_uid: HashMap<u32, usize>,
    pub(super) next: ConnId,
    pub(super) owner: Uid,
    pub(super) group: Option<Gid>,
    pub(super) listener_token: Token,
    pub(super) conn_token_base: usize,
    pub(super) limits: ConnectionLimits,
    pub(super) idle_timeout: Duration,
    /// No idle connection expires before this; `None` when no connection is idle.
    pub(super) sweep_at: Option<Instant>,
    /// Closed to accept (and turn away) a client when out of descriptors, then reopened.
    pub(super) spare: Option<std::os::unix::net::UnixDatagram>,
    /// Refusals (unauthorised uids, read-only uids asking to write, connections over the
    /// limits): logged once, then summarised, so that a client in a loop cannot flood the log.
    pub(super) refusals: Refusals,
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
        let (listener, ident) = socket_file::bind(path, group)?;
        Ok(ControlServer::on(listener, path, ident, group))
    }

    /// A server on the listening socket `fd` bound at `path` by an earlier image of this
    /// process and handed over by `warden upgrade`; as [`ControlServer::bind`] otherwise.
    pub fn adopt(fd: std::os::fd::OwnedFd, path: &Path, group: Option<Gid>) -> ControlServer {
        use std::os::unix::fs::MetadataExt;
        let listener = UnixListener::from(fd);
        let _ = listener.set_nonblocking(true);
        let ident = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        ControlServer::on(listener, path, ident, group)
    }

    /// A server on `listener`, bound at `path` (the file `ident`).
    fn on(
        listener: UnixListener,
        path: &Path,
        ident: Option<FileIdent>,
        group: Option<Gid>,
    ) -> ControlServer {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        // A child forked without exec (`warden::fork`) that outlived us would hold the listening
        // socket open: clients would hang in its backlog, and the next daemon would find the
        // socket in use. Such a child points it at /dev/null instead.
        crate::daemon::mark_private(listener.as_raw_fd());
        ControlServer {
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
        }
    }

    /// The open connections to hand to the next image (`warden upgrade`), kept open here: each
    /// one's descriptor and what it sent that is not a whole request yet, and the subscribers to
    /// events, whose streams go on in the next image. What is waiting for each is written first
    /// (bounded: a client that does not read within a second is not handed over, and its
    /// connection ends with this image).
    pub fn handover(&mut self, registry: &Registry) -> Handover {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for &id in &ids {
            if let Some(conn) = self.conns.get_mut(&id).filter(|c| !c.output.is_empty()) {
                let _ = conn.stream.set_nonblocking(false);
                let _ = conn.stream.set_write_timeout(Some(Duration::from_secs(1)));
                if conn.stream.write_all(&conn.output).is_err() {
                    // Part of a line may have gone: whatever follows would not read.
                    conn.read_closed = true;
                    conn.close_after_flush = true;
                }
                conn.output.clear();
                let _ = conn.stream.set_nonblocking(true);
            }
            self.flush(id, registry);
        }
        let live = self
            .conns
            .values()
            .filter(|c| !c.read_closed && !c.close_after_flush);
        let (subscribers, others): (Vec<&Conn>, Vec<&Conn>) = live.partition(|c| c.subscribed);
        Handover {
            conns: others
                .iter()
                .map(|c| (c.stream.as_raw_fd(), c.input.clone()))
                .collect(),
            subscribers: subscribers.iter().map(|c| c.stream.as_raw_fd()).collect(),
        }
    }

    /// Serves a connection an earlier image of this process handed over (`warden upgrade`),
    /// admitted again from its credentials, with `input` (a request not yet whole) already read.
    pub fn adopt_conn(&mut self, stream: UnixStream, input: Vec<u8>, registry: &Registry) {
        if let Some(conn) = self.admit_handed_over(stream, registry) {
            conn.input = input;
        }
    }

    /// Serves a subscriber to events an earlier image of this process handed over (`warden
    /// upgrade`), admitted again from its credentials: its stream goes on. Returns whether it
    /// was admitted.
    pub fn adopt_subscriber(&mut self, stream: UnixStream, registry: &Registry) -> bool {
        let Some(conn) = self.admit_handed_over(stream, registry) else {
            return false;
        };
        // Its `events` request is in progress, as in the image it came from.
        conn.pending = 1;
        conn.subscribed = true;
        true
    }

    /// Admits a handed-over connection: the new one, when served.
    fn admit_handed_over(&mut self, stream: UnixStream, registry: &Registry) -> Option<&mut Conn> {
        if self.admit(stream, registry) != super::admission::Admission::Serve {
            return None;
        }
        self.conns.get_mut(&(self.next - 1))
    }

    /// The listening socket's descriptor (handed over by `warden upgrade`).
    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }

    /// Takes connection `id` out of the server, its pending output written first (blocking,
    /// briefly): the caller answers it itself (`warden upgrade`, across the exec).
    pub fn detach(&mut self, id: ConnId, registry: &Registry) -> Option<UnixStream> {
        self.flush(id, registry);
        let conn = self.conns.get(&id)?;
        let stream = conn.stream.try_clone().ok()?;
        self.close(id, registry);
        Some(stream)
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

    /// Registers an admitted connection and starts its idle clock; `false` (logged) when it
    /// cannot be registered.
    pub(super) fn serve(&mut self, stream: UnixStream, peer: Peer, registry: &Registry) -> bool {
        let id = self.next;
        self.next += 1;
        let token = Token(self.conn_token_base + id as usize);
        if let Err(e) = registry.register(
            &mut SourceFd(&stream.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("control: cannot register a connection: {e}");
            return false;
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
                subscribed: false,
                last_active: now,
            },
        );
        *self.per_uid.entry(peer.uid).or_insert(0) += 1;
        self.idle_from(now);
        true
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

    /// Reads what connection `id` sent; returns the complete, authorised requests. Bad lines and
    /// refused requests are answered here, in the order they came.
    pub fn readable(&mut self, id: ConnId, registry: &Registry) -> Vec<Incoming> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Vec::new();
        };
        let more = conn.fill_input();
        let peer = conn.peer;
        let subscribed = conn.subscribed;
        let mut lines = conn.take_lines();
        if subscribed {
            // The stream's lines would be taken for the answer: nothing else is asked here.
            for l in lines.iter_mut().filter(|l| l.is_ok()) {
                *l = Err(Reply::failed(
                    ErrorKind::BadRequest,
                    "this connection streams events: open another one for requests",
                ));
            }
        }
        let (mut out, mut replies) = (Vec::new(), Vec::new());
        for line in lines {
            match line.and_then(|request| self.authorise(peer, request)) {
                Ok(request) => out.push(Incoming {
                    conn: id,
                    peer,
                    request,
                }),
                Err(reply) => replies.push(reply),
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.pending += out.len();
        }
        for r in replies {
            self.queue(id, &r);
        }
        self.flush(id, registry);
        if more {
            self.rearm(id, registry);
        }
        out
    }

    /// `request` if `peer` may make it; else the `denied` reply, and the refusal logged.
    fn authorise(&mut self, peer: Peer, request: Request) -> std::result::Result<Request, Reply> {
        if !request.command.writes() || peer.access == Access::Full {
            return Ok(request);
        }
        log_refusal(
            &mut self.refusals.read_only,
            1,
            || {
                format!(
                    "control: uid {} (pid {}) may only read status and follow events; refused {:?}",
                    peer.uid, peer.pid, request.command
                )
            },
            "request(s) to change something from read-only uids",
        );
        Err(Reply::failed(
            ErrorKind::Denied,
            format!("uid {} may only read status and follow events", peer.uid),
        ))
    }

    /// Edge-triggered: nothing would wake us for what is already buffered. Re-arming
    /// (`EPOLL_CTL_MOD`) reports the connection again on the next turn if still readable.
    fn rearm(&self, id: ConnId, registry: &Registry) {
        if let Some(conn) = self.conns.get(&id) {
            let token = Token(self.conn_token_base + id as usize);
            let _ = registry.reregister(
                &mut SourceFd(&conn.stream.as_raw_fd()),
                token,
                Interest::READABLE | Interest::WRITABLE,
            );
        }
    }

    /// Buffers `reply` for `id`; a client whose buffer would pass [`MAX_OUTPUT`] loses its
    /// connection instead.
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
        let done = (conn.output.is_empty()
            && (conn.close_after_flush || (conn.read_closed && conn.pending == 0)))
            // A subscriber that left needs nothing more, and waits for no reply.
            || (conn.subscribed && conn.read_closed);
        if done {
            self.close(id, registry);
        }
    }

    /// Makes connection `id` (whose `events` request stays in progress) a subscriber.
    pub fn subscribe(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.subscribed = true;
            log::debug!(
                "control: uid {} (pid {}) subscribed to events",
                conn.peer.uid,
                conn.peer.pid
            );
        }
    }

    /// How many connections receive events.
    pub fn subscribers(&self) -> usize {
        self.conns.values().filter(|c| c.subscribed).count()
    }

    /// Queues `lines` (each one event's line, newline included) to every subscriber and sends
    /// what each will take now. A subscriber with more than [`EVENTS_MAX_OUTPUT`] bytes waiting
    /// is cut off: closed at once, and logged with its uid and pid.
    pub fn broadcast(&mut self, lines: &[String], registry: &Registry) {
        if lines.is_empty() {
            return;
        }
        let size: usize = lines.iter().map(String::len).sum();
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.subscribed)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            let (left, total) = (conn.output.len(), conn.output.len() + size);
            if total > EVENTS_MAX_OUTPUT {
                log::warn!(
                    "control: cut off the event stream of uid {} (pid {}): {total} bytes would \
                     wait unread ({left} not read yet, {size} new), more than the \
                     {EVENTS_MAX_OUTPUT} that may",
                    conn.peer.uid,
                    conn.peer.pid,
                );
                self.close(id, registry);
                continue;
            }
            for line in lines {
                conn.output.extend_from_slice(line.as_bytes());
            }
            self.flush(id, registry);
        }
        self.cut_off_over(EVENTS_MAX_OUTPUT_ALL, registry);
    }

    /// Cuts off the subscribers with the most bytes waiting until all of them together have at
    /// most `cap` waiting ([`EVENTS_MAX_OUTPUT_ALL`]).
    fn cut_off_over(&mut self, cap: usize, registry: &Registry) {
        let waiting = |c: &Conn| if c.subscribed { c.output.len() } else { 0 };
        let mut all: usize = self.conns.values().map(waiting).sum();
        while all > cap {
            let Some((&id, conn)) = self.conns.iter().max_by_key(|(_, c)| waiting(c)) else {
                return;
            };
            let left = waiting(conn);
            log::warn!(
                "control: cut off the event stream of uid {} (pid {}): {left} bytes wait unread \
                 there, and {all} for every stream together, more than the {cap} that may",
                conn.peer.uid,
                conn.peer.pid,
            );
            self.close(id, registry);
            all -= left;
        }
    }

    /// Ends every event stream (warden stops): the final reply, then what can be sent without
    /// waiting; the connections close when the server is dropped.
    pub fn end_streams(&mut self) {
        let last = Reply::done(serde_json::json!({ "stopped": true })).to_line();
        for conn in self.conns.values_mut().filter(|c| c.subscribed) {
            conn.output.extend_from_slice(last.as_bytes());
            let mut sent = 0;
            while sent < conn.output.len() {
                match conn.stream.write(&conn.output[sent..]) {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == IoKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            conn.output.clear();
        }
    }

    /// Removes the socket file (at exit) if it is still the one this server bound: another
    /// daemon may have replaced a socket it found stale (or an operator removed ours), and its
    /// socket is not ours to delete.
    pub fn remove_file(&self) {
        socket_file::remove_if_ours(&self.path, self.ident);
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

/// One request line, as [`Request::parse_line`] reads it, refused with a `bad-request` reply.
fn parse(line: &[u8]) -> std::result::Result<Request, Reply> {
    Request::parse_line(line).map_err(|e| Reply::failed(ErrorKind::BadRequest, e))
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;

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
    fn the_streams_with_the_most_waiting_are_cut_off_beyond_the_bound_for_all() {
        let dir = temp_dir("all-streams");
        let poll = mio::Poll::new().unwrap();
        let mut server = ControlServer::bind(&dir.join("c.sock"), None).unwrap();
        server.register(poll.registry(), Token(1), 1 << 20).unwrap();
        // Three subscribers that never read: each holds its socket's buffer, then waits.
        let clients: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(dir.join("c.sock")).unwrap())
            .collect();
        server.accept(poll.registry());
        for id in 1..=3 {
            server.subscribe(id);
        }
        let line = format!("{}\n", "x".repeat(1000));
        while server.conns.values().any(|c| c.output.len() < 100_000) {
            server.broadcast(std::slice::from_ref(&line), poll.registry());
        }
        // One more line for the first only: it has the most waiting, and goes first.
        server
            .conns
            .get_mut(&1)
            .unwrap()
            .output
            .extend_from_slice(line.as_bytes());
        let all: usize = server.conns.values().map(|c| c.output.len()).sum();
        server.cut_off_over(all - 1, poll.registry());
        assert_eq!(server.subscribers(), 2);
        assert!(!server.conns.contains_key(&1));
        server.cut_off_over(0, poll.registry());
        assert_eq!(server.subscribers(), 0);
        drop(clients);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_handed_over_subscriber_streams_on_and_never_expires() {
        let dir = temp_dir("handover");
        let poll = mio::Poll::new().unwrap();
        let mut old = ControlServer::bind(&dir.join("old.sock"), None).unwrap();
        old.register(poll.registry(), Token(1), 1 << 20).unwrap();
        let subscriber = UnixStream::connect(dir.join("old.sock")).unwrap();
        let plain = UnixStream::connect(dir.join("old.sock")).unwrap();
        old.accept(poll.registry());
        let (sub_id, plain_id) = (1, 2);
        old.subscribe(sub_id);
        old.broadcast(&["before\n".to_string()], poll.registry());
        let handed = old.handover(poll.registry());
        let fd_of = |id: ConnId| old.conns[&id].stream.as_raw_fd();
        assert_eq!(handed.subscribers, [fd_of(sub_id)]);
        assert_eq!(handed.conns, [(fd_of(plain_id), Vec::new())]);
        // The next image, on its own listener: both admitted again.
        let mut new = ControlServer::bind(&dir.join("new.sock"), None).unwrap();
        new.register(poll.registry(), Token(2), 1 << 30).unwrap();
        let dup = |id: ConnId| old.conns[&id].stream.try_clone().unwrap();
        assert!(new.adopt_subscriber(dup(sub_id), poll.registry()));
        new.adopt_conn(dup(plain_id), Vec::new(), poll.registry());
        drop(old);
        assert_eq!((new.connections(), new.subscribers()), (2, 1));
        // Idle for ever: the plain connection expires, the stream does not.
        let later = Instant::now() + Duration::from_secs(3600);
        new.expire_idle(later, poll.registry());
        assert_eq!((new.connections(), new.subscribers()), (1, 1));
        new.broadcast(&["after\n".to_string()], poll.registry());
        let mut lines = std::io::BufReader::new(&subscriber).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "before");
        assert_eq!(lines.next().unwrap().unwrap(), "after");
        drop(plain);
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
