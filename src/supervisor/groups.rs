//! The process groups of the supervisor's workers, and the guard that kills them if the
//! supervisor dies.
//!
//! Every worker leads a process group of its own (its pid is the group id). A group is tracked
//! from the worker's spawn until it is known to be empty — which is *not* when its leader is
//! reaped: members that ignored the stop signal, or a shell's children, live on, and their group
//! id cannot be reused while they do. After the leader is reaped the group is checked with
//! `killpg(pgid, 0)` whenever something may have changed (after each batch of reaped children:
//! members orphaned by the leader are re-parented to the supervisor, a subreaper, so their end
//! is an event; and at the loop's deadlines), and forgotten once that fails with `ESRCH`.
//!
//! Every tracked group is registered with the guard process (`crate::sys::guard`), which
//! `SIGKILL`s them all when the supervisor dies, and forgotten there when found empty. A guard
//! that dies is replaced at once and told every group again. A guard that stops reading (stopped
//! by `SIGSTOP`) never blocks the loop: records wait in memory until its socket is writable.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::sys::guard::{self, ADD, Guard, REMOVE};

/// One tracked process group.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// The instance it belongs to: (program position, instance index).
    owner: (usize, usize),
    /// Whether its leader (the worker's main process) was reaped.
    leader_reaped: bool,
}

/// The guard, as far as the loop is concerned.
#[derive(Debug)]
struct Link {
    guard: Guard,
    /// Records the guard's socket could not take yet.
    pending: VecDeque<(i32, i32)>,
    /// Registered with `WRITABLE` interest too (while `pending` is not empty).
    writable: bool,
}

/// The tracked worker process groups and their guard. See the module documentation.
#[derive(Debug)]
pub(crate) struct Groups {
    tracked: HashMap<i32, Tracked>,
    link: Option<Link>,
    token: Token,
    /// Starting a guard failed, and that was logged: say so again only after a success.
    guard_failed: bool,
}

impl Groups {
    /// No groups yet; the guard, once started, is registered in the loop under `token`.
    pub(crate) fn new(token: Token) -> Groups {
        Groups {
            tracked: HashMap::new(),
            link: None,
            token,
            guard_failed: false,
        }
    }

    /// Starts the guard unless one runs. Called before each spawn, so a guard exists before the
    /// first worker does. On failure workers still run, without that protection (logged).
    pub(crate) fn ensure_guard(&mut self, registry: &Registry) {
        if self.link.is_some() {
            return;
        }
        let guard = match guard::spawn_guard() {
            Ok(g) => g,
            Err(e) => {
                if !self.guard_failed {
                    log::error!(
                        "cannot start the guard process: {e}; if warden is killed with SIGKILL, \
                         the children of its workers will outlive it"
                    );
                    self.guard_failed = true;
                }
                return;
            }
        };
        if let Err(e) = registry.register(
            &mut SourceFd(&guard.link.as_raw_fd()),
            self.token,
            Interest::READABLE,
        ) {
            log::error!(
                "cannot watch the guard process (pid {}): epoll_ctl: {e}",
                guard.pid
            );
            // Dropping the link makes the guard kill the groups it knows (none) and leave.
            return;
        }
        log::info!(
            "guard process started (pid {}): it kills every worker process group if warden dies",
            guard.pid
        );
        self.guard_failed = false;
        let mut link = Link {
            guard,
            pending: VecDeque::new(),
            writable: false,
        };
        for &pgid in self.tracked.keys() {
            link.pending.push_back((ADD, pgid));
        }
        self.link = Some(link);
        self.flush(registry);
    }

    /// A worker leading group `pgid` was spawned for `owner`.
    pub(crate) fn add(&mut self, registry: &Registry, pgid: i32, owner: (usize, usize)) {
        self.tracked.insert(
            pgid,
            Tracked {
                owner,
                leader_reaped: false,
            },
        );
        self.send(registry, ADD, pgid);
    }

    /// Whether `pgid` is a tracked group: its leader lives, or members were there at the last
    /// check. Only such a group id may be signalled (an empty group's id can be reused).
    pub(crate) fn contains(&self, pgid: i32) -> bool {
        self.tracked.contains_key(&pgid)
    }

    /// `pid` was reaped: if it led a tracked group, that group is now checked like the others.
    pub(crate) fn leader_reaped(&mut self, pid: i32) {
        if let Some(t) = self.tracked.get_mut(&pid) {
            t.leader_reaped = true;
        }
    }

    /// Whether group `pgid` still has members, checked now; an empty group is forgotten.
    pub(crate) fn has_members(&mut self, registry: &Registry, pgid: i32) -> bool {
        match self.tracked.get(&pgid) {
            None => false,
            Some(t) if !t.leader_reaped => true,
            Some(_) => {
                if group_exists(pgid) {
                    true
                } else {
                    self.forget(registry, pgid);
                    false
                }
            }
        }
    }

    /// Checks every group whose leader is gone; forgets and returns those now empty, with their
    /// owners.
    pub(crate) fn sweep(&mut self, registry: &Registry) -> Vec<(i32, (usize, usize))> {
        let empty: Vec<(i32, (usize, usize))> = self
            .tracked
            .iter()
            .filter(|(pgid, t)| t.leader_reaped && !group_exists(**pgid))
            .map(|(&pgid, t)| (pgid, t.owner))
            .collect();
        for &(pgid, _) in &empty {
            self.forget(registry, pgid);
        }
        empty
    }

    /// Sends `signal` to every tracked group; returns how many there were.
    pub(crate) fn signal_all(&self, signal: Signal) -> usize {
        for &pgid in self.tracked.keys() {
            let _ = killpg(Pid::from_raw(pgid), signal);
        }
        self.tracked.len()
    }

    /// The guard's socket is ready: flush waiting records, or replace a guard that is gone.
    pub(crate) fn guard_event(&mut self, registry: &Registry, readable: bool, writable: bool) {
        let Some(link) = &self.link else { return };
        if readable && guard::guard_gone(link.guard.link.as_fd()) {
            log::warn!(
                "the guard process (pid {}) is gone; starting another",
                link.guard.pid
            );
            self.drop_link(registry);
            self.ensure_guard(registry);
            return;
        }
        if writable {
            self.flush(registry);
        }
    }

    /// Lets the guard go: it kills the groups still registered (none, after a completed
    /// shutdown) and exits. A later spawn starts a new one.
    pub(crate) fn close_guard(&mut self, registry: &Registry) {
        self.flush(registry);
        self.drop_link(registry);
    }

    fn forget(&mut self, registry: &Registry, pgid: i32) {
        if self.tracked.remove(&pgid).is_some() {
            self.send(registry, REMOVE, pgid);
        }
    }

    fn send(&mut self, registry: &Registry, op: i32, pgid: i32) {
        if let Some(link) = &mut self.link {
            link.pending.push_back((op, pgid));
            self.flush(registry);
        }
    }

    /// Writes waiting records until done or the socket is full; watches for writability while
    /// records wait.
    fn flush(&mut self, registry: &Registry) {
        let Some(link) = &mut self.link else { return };
        while let Some(&(op, pgid)) = link.pending.front() {
            match guard::send_record(link.guard.link.as_fd(), op, pgid) {
                Ok(()) => {
                    link.pending.pop_front();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The guard is gone: its end of file is (or will be) readable and replaces it;
                // the new one is told every tracked group.
                Err(_) => {
                    link.pending.clear();
                    break;
                }
            }
        }
        let want = !link.pending.is_empty();
        if want != link.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let fd = link.guard.link.as_raw_fd();
            if registry
                .reregister(&mut SourceFd(&fd), self.token, interest)
                .is_ok()
            {
                link.writable = want;
            }
        }
    }

    fn drop_link(&mut self, registry: &Registry) {
        if let Some(link) = self.link.take() {
            let _ = registry.deregister(&mut SourceFd(&link.guard.link.as_raw_fd()));
        }
    }
}

/// Whether process group `pgid` has any member (zombies included). `EPERM` means it has one we
/// may not signal.
fn group_exists(pgid: i32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
}
