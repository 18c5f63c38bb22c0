//! Who gets a control connection: the pure rule ([`ConnectionLimits::admit`]) and the socket work
//! around it (accepting, peer credentials, answering a refused client `busy` or `denied`).
//!
//! A peer is authorised once, at accept time, from `SO_PEERCRED`: root and the daemon's own uid
//! may do everything, members of the optional control group may read status, anyone else is
//! refused and logged with their uid. Membership is the peer process's groups from
//! `SO_PEERGROUPS` (what the kernel recorded at connect), so no name-service lookup runs in the
//! event loop (except on kernels that cannot tell).
//!
//! # Descriptors are shared with the workers
//!
//! Every connection costs the daemon a file descriptor, from the same `RLIMIT_NOFILE` that its
//! workers' output pipes need: a client holding connections open must not make workers fail to
//! start, nor lock root out. So (see [`ConnectionLimits`]):
//!
//! * connections are capped at a quarter of the soft `RLIMIT_NOFILE` found at
//!   [`ControlServer::bind`] (at most [`MAX_CONNECTIONS`]); a read-only peer (control group) may
//!   hold an eighth of that per uid; root and the daemon's uid may go [`RESERVED_CONNECTIONS`]
//!   beyond the cap, so that they get in when read-only peers have used it up. A connection over
//!   a limit is answered `busy` and closed;
//! * one spare descriptor (an unbound datagram socket) is kept open: when `accept` fails with
//!   `EMFILE` or `ENFILE`, it is closed to accept the waiting client, which is answered `busy`
//!   and closed, then reopened (if that fails, it is tried again at the listener's next
//!   wake-up). Without it the client would wait in the backlog for an answer that never comes,
//!   and nothing would report the listener again (edge-triggered).
//!
//! Idle connections are closed by the server (see [`super::server`]). This file does no
//! connection I/O beyond the one refusal line.

use std::io::{ErrorKind as IoKind, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mio::Registry;
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::Uid;

use super::server::ControlServer;
use super::{ErrorKind, Reply};
use crate::log::repeat::{Repeated, Verdict};

/// The most connections served at once, however high `RLIMIT_NOFILE` is (see
/// [`ConnectionLimits`]).
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections root and the daemon's own uid may open beyond [`ConnectionLimits::total`].
pub const RESERVED_CONNECTIONS: usize = 16;

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

/// The connections open when a new one arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnCounts {
    /// All open connections.
    pub open: usize,
    /// Open connections of the new peer's uid.
    pub of_uid: usize,
}

/// What becomes of a new connection ([`ConnectionLimits::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Served.
    Serve,
    /// The peer may not use the socket at all: answered `denied`.
    Denied,
    /// All connections together are at the limit: answered `busy`.
    OverTotal,
    /// This read-only uid holds its share: answered `busy`.
    OverPerUid,
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

    /// Whether a new connection from `peer` is served, given the connections already open.
    ///
    /// Full-access peers may use `reserved` connections beyond `total`; read-only peers are held
    /// to `total` and to `per_uid` each.
    pub fn admit(&self, peer: &Peer, counts: ConnCounts) -> Admission {
        match peer.access {
            Access::Denied => Admission::Denied,
            Access::Full if counts.open >= self.total + self.reserved => Admission::OverTotal,
            Access::Full => Admission::Serve,
            Access::ReadOnly if counts.open >= self.total => Admission::OverTotal,
            Access::ReadOnly if counts.of_uid >= self.per_uid => Admission::OverPerUid,
            Access::ReadOnly => Admission::Serve,
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

/// The log state of each kind of refusal ([`crate::log::repeat`]).
pub(super) struct Refusals {
    denied: Repeated,
    pub(super) read_only: Repeated,
    over_limit: Repeated,
    out_of_fds: Repeated,
}

/// How often repeated refusals are summarised, at most.
const REFUSALS_SUMMARY_EVERY: Duration = Duration::from_secs(60);

impl Refusals {
    pub(super) fn new() -> Refusals {
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
pub(super) fn log_refusal(
    state: &mut Repeated,
    count: u64,
    first: impl FnOnce() -> String,
    what: &str,
) {
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

/// The descriptor kept in reserve for `EMFILE`: any will do; an unbound datagram socket is
/// cheap and, like every other descriptor of the daemon, a socket.
pub(super) fn spare_fd() -> Option<std::os::unix::net::UnixDatagram> {
    std::os::unix::net::UnixDatagram::unbound().ok()
}

/// Writes one reply line to a refused client; the stream closes when dropped.
fn refuse(mut stream: UnixStream, reply: Reply) {
    let _ = stream.write_all(reply.to_line().as_bytes());
}

impl ControlServer {
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
            if let Admission::OverTotal | Admission::OverPerUid = self.admit(stream, registry) {
                over += 1;
            }
        }
        self.log_accept_refusals(over, shed);
    }

    /// Logs the connections one [`accept`](ControlServer::accept) turned away: `over` the limits,
    /// `shed` for want of descriptors.
    fn log_accept_refusals(&mut self, over: usize, shed: usize) {
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

    /// Authorises and counts one accepted connection: served, or answered and closed. A
    /// connection that cannot be served for a local reason (no credentials, no registration)
    /// counts as [`Admission::Denied`].
    pub(super) fn admit(&mut self, stream: UnixStream, registry: &Registry) -> Admission {
        let _ = stream.set_nonblocking(true);
        let Some(peer) = self.peer_of(&stream) else {
            return Admission::Denied;
        };
        let counts = ConnCounts {
            open: self.conns.len(),
            of_uid: self.per_uid.get(&peer.uid).copied().unwrap_or(0),
        };
        let admission = self.limits.admit(&peer, counts);
        match admission {
            Admission::Serve => {
                if !self.serve(stream, peer, registry) {
                    return Admission::Denied;
                }
            }
            Admission::Denied => self.refuse_denied(stream, &peer),
            Admission::OverTotal => refuse(
                stream,
                Reply::failed(ErrorKind::Busy, "too many control connections"),
            ),
            Admission::OverPerUid => refuse(
                stream,
                Reply::failed(
                    ErrorKind::Busy,
                    format!(
                        "too many control connections from uid {} (at most {})",
                        peer.uid, self.limits.per_uid
                    ),
                ),
            ),
        }
        admission
    }

    /// The peer's credentials and what it may do; `None` (logged) when the kernel gives none.
    fn peer_of(&self, stream: &UnixStream) -> Option<Peer> {
        let cred = match getsockopt(stream, sockopt::PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("control: no peer credentials: {e}");
                return None;
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
        Some(Peer {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
            access: self.access_of(cred.uid(), cred.gid(), groups.as_deref()),
        })
    }

    /// Logs (with the reason, so that the log answers "why was I refused" by itself) and answers
    /// a peer that may not use the socket.
    fn refuse_denied(&mut self, stream: UnixStream, peer: &Peer) {
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
}

#[cfg(test)]
mod tests;
