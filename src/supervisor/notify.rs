//! warden as its workers' service manager: a private `NOTIFY_SOCKET` speaking systemd's notify
//! protocol, so that any program that works under systemd `Type=notify` works under warden.
//!
//! One datagram socket in the abstract namespace (nothing to clean up on disk, reachable by
//! workers running as any user), with `SO_PASSCRED` so the kernel stamps every message with the
//! sender's pid. A message is attributed to a worker when the sender is the worker, or is in the
//! worker's process group (a `systemd-notify` run by a shell script), or descends from it; anything
//! else is ignored and logged. Messages are small (`KEY=VALUE` lines); longer ones are truncated.
//!
//! # The loop's side
//!
//! [`Supervisor::handle_notify`] attributes each message (through the table's pid index and
//! `/proc`) and turns it into the instance's events (`Ready`, `WatchdogPing`, `Restart`), its
//! status text and its accepted `MAINPID=` (checked to descend from the worker or, in cgroup
//! mode, to be in its cgroup; recorded by
//! [`Table::set_main_pid`](super::table::Table::set_main_pid)). It never signals or spawns.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

use super::Supervisor;
use super::table::{Owner, ProgramId, SlotPos, Table};
use crate::lifecycle::Event;

/// One parsed notify message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyMessage {
    /// The sender's pid, as stamped by the kernel.
    pub pid: i32,
    /// `READY=1`.
    pub ready: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the service asks to be treated as hung.
    pub watchdog_trigger: bool,
    /// `STATUS=…`.
    pub status: Option<String>,
    /// `MAINPID=…`.
    pub main_pid: Option<i32>,
    /// A `MAINPID=` that names no process warden could watch (`0`, `1`, negative, not a
    /// number), as given (at most 32 characters): said, then ignored.
    pub bad_main_pid: Option<String>,
}

impl NotifyMessage {
    /// Parses the `KEY=VALUE` lines of a datagram sent by `pid`.
    pub fn parse(pid: i32, data: &[u8]) -> NotifyMessage {
        let mut m = NotifyMessage {
            pid,
            ..NotifyMessage::default()
        };
        for line in String::from_utf8_lossy(data).lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "READY" => m.ready = value == "1",
                "STOPPING" => m.stopping = value == "1",
                "WATCHDOG" if value == "1" => m.watchdog = true,
                "WATCHDOG" if value == "trigger" => m.watchdog_trigger = true,
                "STATUS" => m.status = Some(value.chars().take(256).collect()),
                "MAINPID" => match value.parse::<i32>() {
                    Ok(p) if p > 1 => m.main_pid = Some(p),
                    _ => m.bad_main_pid = Some(value.chars().take(32).collect()),
                },
                _ => {}
            }
        }
        m
    }
}

/// The supervisor's notify socket.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    name: String,
    /// Senders whose messages were attributed to no instance, already logged.
    refused: HashSet<i32>,
}

impl NotifySocket {
    /// Binds `@warden/<pid>/<random>/notify` in the abstract namespace, non-blocking, with
    /// `SO_PASSCRED`.
    ///
    /// Abstract names are per network namespace and have no permissions, while pids are per PID
    /// namespace: two wardens that are both pid 1 of their containers may share a network
    /// namespace (a pod), and any local user could take a name known in advance. Hence 64
    /// random bits (a name taken all the same is skipped).
    ///
    /// Errors: the socket cannot be made or bound (naming the address).
    pub fn bind() -> io::Result<NotifySocket> {
        use std::hash::{BuildHasher, Hasher};
        use std::os::linux::net::SocketAddrExt;
        let mut tries = 0;
        let (sock, name) = loop {
            // Seeded from the system's randomness, as the standard library's hash maps are.
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let name = format!("warden/{}/{random:016x}/notify", std::process::id());
            let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
            match UnixDatagram::bind_addr(&addr) {
                Ok(sock) => break (sock, name),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 16 => tries += 1,
                Err(e) => return Err(io::Error::new(e.kind(), format!("@{name}: {e}"))),
            }
        };
        sock.set_nonblocking(true)?;
        setsockopt(&sock, sockopt::PassCred, &true).map_err(io::Error::from)?;
        // Room for bursts from many workers without losing READY=1.
        let _ = setsockopt(&sock, sockopt::RcvBuf, &(1 << 20));
        Ok(NotifySocket {
            sock,
            name,
            refused: HashSet::new(),
        })
    }

    /// The socket bound as `name` by an earlier image of this process, handed over by
    /// `warden upgrade` (already non-blocking, with `SO_PASSCRED`).
    pub fn adopt(fd: std::os::fd::OwnedFd, name: String) -> NotifySocket {
        NotifySocket {
            sock: UnixDatagram::from(fd),
            name,
            refused: HashSet::new(),
        }
    }

    /// Whether a message from `pid`, attributed to no instance, is the first such from it (to
    /// log once per sender; the memory is bounded).
    pub(crate) fn first_refusal(&mut self, pid: i32) -> bool {
        if self.refused.len() >= 1024 {
            self.refused.clear();
        }
        self.refused.insert(pid)
    }

    /// Its abstract name (without `@`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value for `$NOTIFY_SOCKET` (`@` marks the abstract namespace).
    pub fn env_value(&self) -> String {
        format!("@{}", self.name)
    }

    /// Receives one pending message; `Ok(None)` when none is pending.
    pub fn recv(&self) -> io::Result<Option<NotifyMessage>> {
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        loop {
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut pid = 0;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmCredentials(cred) = c {
                        pid = cred.pid();
                    }
                }
            }
            let n = msg.bytes;
            if pid <= 0 {
                // No credentials (cannot happen with SO_PASSCRED): unattributable, drop it.
                continue;
            }
            return Ok(Some(NotifyMessage::parse(pid, &buf[..n])));
        }
    }
}

impl AsRawFd for NotifySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// The process group and parent of `pid`, from `/proc/PID/stat`.
pub(crate) fn pgrp_and_parent(pid: i32) -> Option<(i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((pgrp, ppid))
}

impl Supervisor {
    /// Receives and acts on every pending notify message.
    pub(super) fn handle_notify(&mut self) {
        loop {
            match self.notify.recv() {
                Ok(Some(msg)) => self.on_notify_message(msg),
                Ok(None) => return,
                Err(e) => {
                    log::error!("notify socket: {e}");
                    return;
                }
            }
        }
    }

    /// The instance a notify message from `pid` speaks for; a message attributed to nothing is
    /// logged, once per sender (a detached helper pinging the watchdog would flood the log).
    fn sender_owner(&mut self, pid: i32) -> Option<Owner> {
        // cgroup mode: any process of an instance's cgroup speaks for it, whatever its
        // process group or parent (a daemon that double-forked before READY=1).
        let owner = attribute(&self.table, pid).or_else(|| self.groups.owner_by_cgroup(pid));
        if owner.is_none() && self.notify.first_refusal(pid) {
            log::warn!(
                "notify message from pid {pid} ignored: not a worker, nor in a worker's process \
                 group, cgroup or descendants"
            );
        }
        owner
    }

    fn on_notify_message(&mut self, msg: NotifyMessage) {
        let Some(owner) = self.sender_owner(msg.pid) else {
            return;
        };
        let Some(pos) = self.table.locate(owner) else {
            return;
        };
        let p = owner.0;
        let tag = format!("{}[{}]", self.table[p].def.name, self.table[p][pos].index);
        let (name, index) = (self.table[p].def.name.clone(), self.table[p][pos].index.0);
        let pid = self.table[p][pos].inst.state.pid();
        let about = |level: log::Level, line: std::fmt::Arguments<'_>| {
            crate::log::about!(level, &name, Some(index), pid, "{line}");
        };
        if let Some(text) = &msg.status {
            self.table[p][pos].status_text = Some(text.clone());
        }
        if let Some(given) = &msg.bad_main_pid {
            about(
                log::Level::Warn,
                format_args!("{tag}: MAINPID={given} ignored: not the pid of a process"),
            );
        }
        if let Some(given) = msg.main_pid
            && let Err(why) = self.accept_main_pid(p, pos, given)
        {
            about(
                log::Level::Warn,
                format_args!("{tag}: MAINPID={given} ignored: {why}"),
            );
        }
        if msg.watchdog {
            self.apply(p, pos, Event::WatchdogPing);
        }
        if msg.ready {
            self.apply(p, pos, Event::Ready);
        }
        if msg.stopping {
            about(log::Level::Info, format_args!("{tag}: reports STOPPING=1"));
        }
        if msg.watchdog_trigger {
            about(
                log::Level::Warn,
                format_args!("{tag}: WATCHDOG=trigger received; restarting"),
            );
            self.table[p][pos].counters.pending = Some(super::metrics::RestartReason::Watchdog);
            self.apply(p, pos, Event::Restart);
        }
    }
}

impl Supervisor {
    /// Records `MAINPID=given` (as the worker sees it) for instance `pos` of `p`, or says why
    /// not: it must be the worker, one of its descendants or, in cgroup mode, a process of its
    /// cgroup (a daemon that double-forked is the subreaper's child, no longer the worker's).
    fn accept_main_pid(&mut self, p: ProgramId, pos: SlotPos, given: i32) -> Result<(), String> {
        let worker = self.table[p][pos]
            .inst
            .state
            .pid()
            .ok_or("no process runs")?;
        // As the worker sees it: in PID-namespace mode, that namespace's pid.
        let main = self
            .main_pid_here(worker, given)
            .ok_or("no such process of the instance")?;
        if main == worker {
            return self.record_main_pid(p, pos, main);
        }
        let in_cgroup = || (self.groups.cgroup_members(worker)).is_some_and(|m| m.contains(&main));
        if descends_from(main, worker) || in_cgroup() {
            return self.record_main_pid(p, pos, main);
        }
        Err("not the worker, one of its descendants or a process of its cgroup".into())
    }

    fn record_main_pid(&mut self, p: ProgramId, pos: SlotPos, main: i32) -> Result<(), String> {
        // Taken before the checks' result can go stale for long; a kernel without pidfd_open
        // (before 5.3) falls back to the pid.
        let fd = crate::sys::pidfd::pidfd_open(main).ok();
        self.table.set_main_pid(p, pos, main, fd);
        Ok(())
    }
}

/// The instance a message from `pid` is about: the worker or `MAINPID=` itself, or a helper in
/// its process group (systemd-notify from a shell), or a descendant that left it.
fn attribute(table: &Table, pid: i32) -> Option<Owner> {
    if let Some(k) = table.owner(pid) {
        return Some(k);
    }
    let mut cur = pid;
    for _ in 0..32 {
        let (pgrp, ppid) = pgrp_and_parent(cur)?;
        if let Some(k) = table.owner(pgrp) {
            return Some(k);
        }
        if let Some(k) = table.owner(ppid) {
            return Some(k);
        }
        if ppid <= 1 {
            return None;
        }
        cur = ppid;
    }
    None
}

/// Whether `pid` descends from `ancestor`, walking parents in `/proc` (bounded).
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut cur = pid;
    for _ in 0..64 {
        match pgrp_and_parent(cur) {
            Some((_, ppid)) if ppid == ancestor => return true,
            Some((_, ppid)) if ppid > 1 => cur = ppid,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_systemd_keys() {
        let m = NotifyMessage::parse(
            7,
            b"READY=1\nSTATUS=serving 3 clients\nMAINPID=42\nWATCHDOG=1\nX=y\nnonsense",
        );
        assert_eq!(m.pid, 7);
        assert!(m.ready && m.watchdog && !m.stopping);
        assert_eq!(m.status.as_deref(), Some("serving 3 clients"));
        assert_eq!(m.main_pid, Some(42));
        assert!(NotifyMessage::parse(1, b"WATCHDOG=trigger").watchdog_trigger);
        assert!(!NotifyMessage::parse(1, b"READY=0").ready);
        assert_eq!(m.bad_main_pid, None);
        for bad in ["0", "1", "-5", "abc", ""] {
            let m = NotifyMessage::parse(1, format!("MAINPID={bad}").as_bytes());
            assert_eq!((m.main_pid, m.bad_main_pid.as_deref()), (None, Some(bad)));
        }
    }

    #[test]
    fn receives_with_the_senders_pid() {
        let s = NotifySocket::bind().unwrap();
        let addr = s.env_value();
        let client = UnixDatagram::unbound().unwrap();
        use std::os::linux::net::SocketAddrExt;
        let a = SocketAddr::from_abstract_name(&addr.as_bytes()[1..]).unwrap();
        client.send_to_addr(b"READY=1\nSTATUS=ok", &a).unwrap();
        let m = s.recv().unwrap().expect("a message");
        assert_eq!(m.pid, std::process::id() as i32);
        assert!(m.ready);
        assert!(s.recv().unwrap().is_none());
    }
}
