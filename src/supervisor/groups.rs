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
//! Every tracked group is registered with the guard process, which `SIGKILL`s them all when the
//! supervisor dies — however it dies, `SIGKILL` included, which no code of the supervisor
//! survives — and is told when a group is found empty. `PR_SET_PDEATHSIG` reaches only a
//! worker's main process (the kernel clears it on `fork`), so without the guard a worker's own
//! children (a shell's commands, a server's helpers) would run on under PID 1.
//!
//! # The guard
//!
//! The guard is `/bin/sh` running [`GUARD_SCRIPT`](super::guard::GUARD_SCRIPT) (`argv[0]`
//! `warden-guard`), spawned with `exec` — so it holds none of the supervisor's memory — as the
//! supervisor's child, in a process group of its own, with every catchable signal ignored. Its
//! standard input is one end of a stream socket pair whose other end only the supervisor holds
//! (close-on-exec; a child forked without `exec` points it at `/dev/null`). Records are lines,
//! `+PGID` when a worker group appears and `-PGID` once it is known to be empty. At end of file —
//! the supervisor is gone — the guard kills every group it still holds and exits. The supervisor in
//! turn sees the guard die as end of file on its end, and starts another that it tells every
//! tracked group.
//!
//! A guard that stops reading (stopped by `SIGSTOP`) never blocks the loop: records wait in
//! memory, a `+` and a later `-` of the same group cancelling out; past [`MAX_PENDING`] waiting
//! records, or when the supervisor lets the guard go with records still waiting, that guard is
//! killed (it is our child, not yet reaped, so its pid is still its own) and, if needed, replaced
//! — a guard never acts on a table that lags behind the supervisor's.
//!
//! # cgroup mode
//!
//! Where warden runs each instance in a cgroup v2 of its own ([`super::cgroup`]), a group's
//! record also holds the instance's cgroup, and the cgroup decides: the group is empty when
//! the cgroup is (`populated 0` in `cgroup.events`, watched through an inotify descriptor in
//! the loop, so that the change is an event, not a poll), `SIGKILL` goes to the whole cgroup
//! (`cgroup.kill`) besides the group, and the guard, given the cgroup that holds every
//! instance's, kills it all when the supervisor dies. An emptied cgroup is removed, after its
//! `memory.events` told whether the OOM killer struck it.
//!
//! # PID-namespace mode
//!
//! With [`PidNamespace`] in force, the guard is instead the init of a PID namespace that every
//! instance is created in ([`super::pidns`]): its death, by warden's end of file or by any
//! signal, makes the kernel kill every process in it. It is sent no records, and a guard that
//! is gone took every instance with it. Without cgroups, the end of a group whose leader was
//! reaped is no event there (its orphans are re-parented to the guard, which reaps them, not to
//! warden): while such a group has members, the loop sweeps on a short timer of its own
//! ([`Groups::next_sweep`]: 10 ms, doubling up to 200 ms), and never otherwise.
//!
//! # Limit
//!
//! In process-group mode, a descendant that leaves its worker's process group (`setsid`,
//! `setpgid`) is in no registered group and survives a `SIGKILL` of the supervisor. In cgroup
//! mode it does not; only a `SIGKILL` of warden and its guard together leaves such a
//! descendant running, until the next warden started in the same parent cgroup kills it
//! ([`super::cgroup::clean_stale`]). In PID-namespace mode nothing survives either.

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::cgroup::{self, Hierarchy};
use super::guard::{Link, guard_gone, kill_guard, link, spawn_guard};
use super::pidns::PidNamespace;
use super::table::Owner;

/// How many records may wait for a guard that does not read before it is replaced.
const MAX_PENDING: usize = 4096;

/// One tracked process group.
#[derive(Debug, Clone)]
struct Tracked {
    /// The instance it belongs to: (program position, instance index).
    owner: Owner,
    /// Whether its leader (the worker's main process) was reaped.
    leader_reaped: bool,
    /// cgroup mode: the instance's cgroup, which decides whether the group is empty.
    cgroup: Option<TrackedCgroup>,
}

/// The cgroup of a tracked group.
#[derive(Debug, Clone)]
struct TrackedCgroup {
    dir: PathBuf,
    /// The inotify watch on its `cgroup.events`.
    watch: Option<WatchDescriptor>,
    /// `oom_kill` of its `memory.events` when the spawn joined it.
    oom_base: u64,
}

/// A spawn's new cgroup: its directory and its `oom_kill` count so far.
pub(crate) type NewCgroup = (PathBuf, u64);

/// cgroup mode, as the loop holds it.
#[derive(Debug)]
struct CgroupMode {
    hierarchy: Hierarchy,
    /// Watches every tracked cgroup's `cgroup.events` (`IN_MODIFY`), registered in the loop.
    inotify: Inotify,
}

/// The tracked worker process groups and their guard. See the module documentation.
#[derive(Debug)]
pub(crate) struct Groups {
    tracked: HashMap<i32, Tracked>,
    /// How many of `tracked` have their leader reaped: only those are checked by `sweep`,
    /// which runs on every turn and so returns at once when there are none.
    orphaned: usize,
    link: Option<Link>,
    /// cgroup mode, when in force.
    cgroups: Option<CgroupMode>,
    /// Instances whose last emptied cgroup the OOM killer struck, until asked.
    oom: HashSet<Owner>,
    token: Token,
    /// Starting a guard failed, and that was logged: say so again only after a success.
    guard_failed: bool,
    /// PID-namespace mode, when in force.
    pid_namespace: Option<PidNamespace>,
    /// Why the last guard could not be started as a namespace's init.
    ns_failure: Option<String>,
    /// When to sweep again for the groups whose end no event reports (see
    /// [`next_sweep`](Self::next_sweep)), and the delay after that.
    recheck: Option<(Instant, Duration)>,
}

/// The first delay of a sweep that no event brings, doubled up to [`RECHECK_MAX`].
const RECHECK_MIN: Duration = Duration::from_millis(10);
/// The longest delay between two sweeps that no event brings.
const RECHECK_MAX: Duration = Duration::from_millis(200);

impl Groups {
    /// No groups yet; the guard, once started, is registered in the loop under `token`.
    pub(crate) fn new(token: Token) -> Groups {
        Groups {
            tracked: HashMap::new(),
            orphaned: 0,
            link: None,
            cgroups: None,
            oom: HashSet::new(),
            token,
            guard_failed: false,
            pid_namespace: None,
            ns_failure: None,
            recheck: None,
        }
    }

    /// Starts the guard unless one runs. Called before each spawn, so a guard exists before the
    /// first worker does. On failure workers still run, without that protection (logged).
    pub(crate) fn ensure_guard(&mut self, registry: &Registry) {
        if self.link.is_some() {
            return;
        }
        let link = match self.spawn_guard() {
            Ok(l) => l,
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
            &mut SourceFd(&link.sock.as_raw_fd()),
            self.token,
            Interest::READABLE,
        ) {
            log::error!(
                "cannot watch the guard process (pid {}): epoll_ctl: {e}",
                link.pid
            );
            // Dropping the link makes the guard kill the groups it knows (none) and leave.
            return;
        }
        crate::daemon::mark_private(link.sock.as_raw_fd());
        self.guard_failed = false;
        let pid = link.pid;
        let mut link = link;
        if let Some(name) = link.ns.as_ref().and_then(super::pidns::name) {
            log::info!(
                "guard process started (pid {pid}) as the init of PID namespace {name}, where \
                 every instance is created: if warden or the guard dies, the kernel kills them all"
            );
        } else {
            link.pending
                .extend(self.tracked.keys().map(|&pgid| (true, pgid)));
            let what = if self.cgroups.is_some() {
                "the instances' cgroups"
            } else {
                "every worker process group"
            };
            log::info!("guard process started (pid {pid}): it kills {what} if warden dies");
        }
        self.link = Some(link);
        self.flush(registry);
    }

    /// Starts a guard for the mode in force: as a namespace's init in PID-namespace mode, and
    /// when that fails (logged), leaving the mode for an ordinary guard.
    fn spawn_guard(&mut self) -> std::io::Result<Link> {
        let cgroup = self.cgroups.as_ref().map(|c| c.hierarchy.programs());
        let in_ns = self.pid_namespace.is_some();
        match spawn_guard(cgroup.clone(), in_ns) {
            Err(e) if in_ns => {
                log::error!(
                    "cannot start the guard as the init of a PID namespace: {e}; instances run \
                     in warden's own PID namespace"
                );
                self.pid_namespace = None;
                self.ns_failure = Some(e.to_string());
                spawn_guard(cgroup, false)
            }
            r => r,
        }
    }

    /// Enters PID-namespace mode ([`super::pidns`]): replaces the guard (there are no groups
    /// yet) by one started as the init of a new PID namespace.
    ///
    /// Errors: why it cannot be (the namespace cannot be made: `EPERM` without
    /// `CAP_SYS_ADMIN`); the guard and the instances then stay in warden's own namespace.
    pub(crate) fn enter_pid_namespace_mode(&mut self, registry: &Registry) -> Result<(), String> {
        let ns = PidNamespace::new().map_err(|e| format!("/proc/self/ns/pid: {e}"))?;
        self.end_guard(Some(registry), false);
        self.pid_namespace = Some(ns);
        self.ensure_guard(registry);
        if self.namespace().is_some() {
            return Ok(());
        }
        self.pid_namespace = None;
        Err(self
            .ns_failure
            .take()
            .unwrap_or_else(|| "the guard process could not be started".into()))
    }

    /// The PID namespace the instances are created in (PID-namespace mode, its guard running).
    pub(crate) fn namespace(&self) -> Option<&OwnedFd> {
        self.pid_namespace.as_ref()?;
        self.link.as_ref().filter(|l| !l.reaped)?.ns.as_ref()
    }

    /// Runs `f` (a spawn) with the loop thread's children created in the instances' PID
    /// namespace when PID-namespace mode is in force; `f` is told whether they are, with the
    /// pid its child's must be above (see [`PidNamespace::spawn_in`]).
    pub(crate) fn spawn_in_namespace(
        &self,
        f: impl FnOnce(Option<i32>) -> crate::Result<super::spawn::Started>,
    ) -> crate::Result<super::spawn::Started> {
        match (&self.pid_namespace, self.namespace()) {
            (Some(mode), Some(ns)) => mode.spawn_in(ns, f),
            _ => f(None),
        }
    }

    /// A worker leading group `pgid` was spawned for `owner`.
    pub(crate) fn add(&mut self, registry: &Registry, pgid: i32, owner: Owner) {
        self.add_in(registry, pgid, owner, None);
    }

    /// As [`add`](Self::add), the worker in cgroup `dir` (cgroup mode; see
    /// [`cgroup_for`](Self::cgroup_for)).
    pub(crate) fn add_in(
        &mut self,
        registry: &Registry,
        pgid: i32,
        owner: Owner,
        dir: Option<(PathBuf, u64)>,
    ) {
        let cgroup = dir.map(|(dir, oom_base)| TrackedCgroup {
            watch: self.watch(&dir),
            dir,
            oom_base,
        });
        let new = Tracked {
            owner,
            leader_reaped: false,
            cgroup,
        };
        // A group id reused before its old group was swept: that one is gone.
        if self
            .tracked
            .insert(pgid, new)
            .is_some_and(|old| old.leader_reaped)
        {
            self.orphaned = self.orphaned.saturating_sub(1);
        }
        self.send(registry, true, pgid);
    }

    /// Whether `pgid` is a tracked group: its leader lives, or members were there at the last
    /// check. Only such a group id may be signalled (an empty group's id can be reused).
    pub(crate) fn contains(&self, pgid: i32) -> bool {
        self.tracked.contains_key(&pgid)
    }

    /// `pid` was reaped: if it led a tracked group, that group is now checked like the others;
    /// if it was the guard, its pid is no longer ours to signal.
    pub(crate) fn leader_reaped(&mut self, pid: i32) {
        if let Some(t) = self.tracked.get_mut(&pid).filter(|t| !t.leader_reaped) {
            t.leader_reaped = true;
            self.orphaned += 1;
            if t.cgroup.is_none() && self.pid_namespace.is_some() {
                self.recheck = Some((Instant::now() + RECHECK_MIN, RECHECK_MIN));
            }
        }
        if let Some(link) = self.link.as_mut().filter(|l| l.pid == pid) {
            link.reaped = true;
        }
    }

    /// Whether group `pgid` still has members, checked now; an empty group is forgotten.
    pub(crate) fn has_members(&mut self, registry: &Registry, pgid: i32) -> bool {
        match self.tracked.get(&pgid) {
            None => false,
            Some(t) if !t.leader_reaped => true,
            Some(t) => {
                if alive(pgid, t) {
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
    pub(crate) fn sweep(&mut self, registry: &Registry) -> Vec<(i32, Owner)> {
        if self.orphaned == 0 {
            self.recheck = None;
            return Vec::new();
        }
        let empty: Vec<(i32, Owner)> = self
            .tracked
            .iter()
            .filter(|(pgid, t)| t.leader_reaped && !alive(**pgid, t))
            .map(|(&pgid, t)| (pgid, t.owner))
            .collect();
        for &(pgid, _) in &empty {
            self.forget(registry, pgid);
        }
        self.plan_recheck(Instant::now());
        empty
    }

    /// When the loop must sweep again by itself (its poll timeout): in PID-namespace mode
    /// without cgroups, while a group whose leader was reaped still has members. Their end
    /// brings no event there: a member orphaned by its parent is re-parented to the namespace's
    /// init (the guard, which reaps it), not to warden, so no `SIGCHLD` tells warden that the
    /// group emptied, and no `cgroup.events` either. `None` otherwise: an idle loop never wakes.
    pub(crate) fn next_sweep(&self) -> Option<Instant> {
        self.recheck.map(|(at, _)| at)
    }

    /// After a sweep at `now`: the next one that no event brings, [`RECHECK_MIN`] after a
    /// leader was reaped and then twice as late each time up to [`RECHECK_MAX`], while a group
    /// that only such a sweep sees empty is left; none once there is none.
    fn plan_recheck(&mut self, now: Instant) {
        let pending = self.pid_namespace.is_some()
            && self
                .tracked
                .values()
                .any(|t| t.leader_reaped && t.cgroup.is_none());
        self.recheck = match self.recheck {
            _ if !pending => None,
            None => Some((now + RECHECK_MIN, RECHECK_MIN)),
            Some((at, delay)) if at <= now => {
                let delay = (delay * 2).min(RECHECK_MAX);
                Some((now + delay, delay))
            }
            kept => kept,
        };
    }

    /// Sends `signal` to every tracked group (`SIGKILL`: to their whole cgroups too); returns
    /// how many there were.
    pub(crate) fn signal_all(&self, signal: Signal) -> usize {
        for (&pgid, t) in &self.tracked {
            let _ = killpg(Pid::from_raw(pgid), signal);
            if let (Signal::SIGKILL, Some(c)) = (signal, &t.cgroup) {
                cgroup::kill(&c.dir);
            }
        }
        self.tracked.len()
    }

    /// Enters cgroup mode on `hierarchy`: its inotify descriptor is registered under `token`.
    /// A guard already running was started without the cgroup: it is replaced, unless
    /// `adopted` (`warden upgrade`: the guard was started in cgroup mode by the earlier image).
    ///
    /// Errors: inotify or epoll failed (the caller stays in process-group mode).
    pub(crate) fn enter_cgroup_mode(
        &mut self,
        registry: &Registry,
        token: Token,
        hierarchy: Hierarchy,
        adopted: bool,
    ) -> std::io::Result<()> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let fd = inotify.as_fd().as_raw_fd();
        registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        crate::daemon::mark_private(fd);
        self.cgroups = Some(CgroupMode { hierarchy, inotify });
        if self.link.is_some() && !adopted {
            self.end_guard(Some(registry), false);
            self.ensure_guard(registry);
        }
        Ok(())
    }

    /// The hierarchy, in cgroup mode.
    pub(crate) fn hierarchy(&self) -> Option<&Hierarchy> {
        self.cgroups.as_ref().map(|c| &c.hierarchy)
    }

    /// cgroup mode: the cgroup for a new spawn of `owner`'s slot, named `name` (made now, with
    /// `limits` written), as its directory and its `oom_kill` count so far, and the limits not
    /// applied (`KEY: reason`). `None` in process-group mode.
    ///
    /// Errors: the cgroup cannot be made (the spawn fails: it would run untracked otherwise).
    pub(crate) fn cgroup_for(
        &self,
        name: &str,
        limits: &crate::config::CgroupLimits,
    ) -> std::io::Result<Option<(NewCgroup, Vec<String>)>> {
        let Some(c) = &self.cgroups else {
            return Ok(None);
        };
        let (dir, failed) = c.hierarchy.instance(name, limits)?;
        let base = cgroup::oom_kills(&dir);
        Ok(Some(((dir, base), failed)))
    }

    /// cgroup mode: `signal` to every process of group `pgid`'s cgroup outside that group
    /// (which the caller signals), whatever its process group or session (`SIGKILL` to all
    /// through `cgroup.kill`). Returns the pids the cgroup listed (none for `SIGKILL`): reached
    /// by this signal or by the group's.
    pub(crate) fn signal_cgroup(&self, pgid: i32, signal: Signal) -> Vec<i32> {
        let Some(c) = self.tracked.get(&pgid).and_then(|t| t.cgroup.as_ref()) else {
            return Vec::new();
        };
        match signal {
            Signal::SIGKILL => {
                cgroup::kill(&c.dir);
                Vec::new()
            }
            _ => cgroup::signal(&c.dir, pgid, signal),
        }
    }

    /// The inotify descriptor is readable: drains it (what changed is read by the next sweep).
    pub(crate) fn cgroup_event(&mut self) {
        if let Some(c) = &self.cgroups {
            while matches!(c.inotify.read_events(), Ok(v) if !v.is_empty()) {}
        }
    }

    /// Whether the OOM killer struck `owner`'s last emptied cgroup; asked once.
    pub(crate) fn take_oom(&mut self, owner: Owner) -> bool {
        self.oom.remove(&owner)
    }

    /// Every tracked group's cgroup (pgid, directory, `oom_kill` base), for `warden upgrade`.
    pub(crate) fn tracked_cgroups(&self) -> Vec<(i32, PathBuf, u64)> {
        self.tracked
            .iter()
            .filter_map(|(&pgid, t)| {
                let c = t.cgroup.as_ref()?;
                Some((pgid, c.dir.clone(), c.oom_base))
            })
            .collect()
    }

    /// Gives group `pgid`, adopted already, its cgroup again (`warden upgrade`).
    pub(crate) fn adopt_cgroup(&mut self, pgid: i32, dir: PathBuf, oom_base: u64) {
        let watch = self.watch(&dir);
        if let Some(t) = self.tracked.get_mut(&pgid) {
            t.cgroup = Some(TrackedCgroup {
                dir,
                watch,
                oom_base,
            });
        }
    }

    /// Watches `dir`'s `cgroup.events`.
    fn watch(&self, dir: &std::path::Path) -> Option<WatchDescriptor> {
        let c = self.cgroups.as_ref()?;
        match c
            .inotify
            .add_watch(&dir.join("cgroup.events"), AddWatchFlags::IN_MODIFY)
        {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("cannot watch {}/cgroup.events: {e}", dir.display());
                None
            }
        }
    }

    /// A forgotten group's cgroup: was it struck by the OOM killer; then unwatched and removed.
    fn drop_cgroup(&mut self, owner: Owner, c: TrackedCgroup) {
        if cgroup::oom_kills(&c.dir) > c.oom_base {
            self.oom.insert(owner);
        }
        if let (Some(w), Some(m)) = (c.watch, &self.cgroups) {
            let _ = m.inotify.rm_watch(w);
        }
        let _ = std::fs::remove_dir(&c.dir);
    }

    /// The guard's socket is ready: flush waiting records, or replace a guard that is gone.
    pub(crate) fn guard_event(&mut self, registry: &Registry, readable: bool, writable: bool) {
        let Some(link) = &mut self.link else { return };
        if readable && guard_gone(&mut link.sock) {
            if link.ns.is_some() {
                log::error!(
                    "the guard process (pid {}) is gone, and with it, killed by the kernel, \
                     every instance in its PID namespace; starting another",
                    link.pid
                );
                // A namespace's init is not reaped before every process of the namespace is:
                // the instances, our children, first. The loop reaps it afterwards.
                if let Some(link) = self.link.take() {
                    let _ = registry.deregister(&mut SourceFd(&link.sock.as_raw_fd()));
                    crate::daemon::unmark_private(link.sock.as_raw_fd());
                }
                self.ensure_guard(registry);
                return;
            } else {
                log::warn!(
                    "the guard process (pid {}) is gone; starting another",
                    link.pid
                );
            }
            self.end_guard(Some(registry), false);
            self.ensure_guard(registry);
            return;
        }
        if writable {
            self.flush(registry);
        }
    }

    /// Lets the guard go and reaps it: it kills the groups still registered (none, after a
    /// completed shutdown) and exits — or, if records still wait for it, it is killed first, so
    /// that it never acts on a table older than ours. A later spawn starts a new one.
    pub(crate) fn close_guard(&mut self, registry: &Registry) {
        self.flush(registry);
        let lagging = self
            .link
            .as_ref()
            .is_some_and(|l| !l.pending.is_empty() || !l.out.is_empty());
        self.end_guard(Some(registry), lagging);
    }

    fn forget(&mut self, registry: &Registry, pgid: i32) {
        if let Some(t) = self.tracked.remove(&pgid) {
            if t.leader_reaped {
                self.orphaned = self.orphaned.saturating_sub(1);
            }
            if let Some(c) = t.cgroup {
                self.drop_cgroup(t.owner, c);
            }
            self.send(registry, false, pgid);
        }
    }

    fn send(&mut self, registry: &Registry, add: bool, pgid: i32) {
        let Some(link) = self.link.as_mut().filter(|l| l.ns.is_none()) else {
            return;
        };
        // A removal cancels an addition the guard has not been sent yet.
        let unsent_add = (!add)
            .then(|| link.pending.iter().rposition(|&r| r == (true, pgid)))
            .flatten();
        match unsent_add {
            Some(i) => {
                link.pending.remove(i);
            }
            None => link.pending.push_back((add, pgid)),
        }
        if link.pending.len() > MAX_PENDING {
            log::warn!(
                "the guard process (pid {}) does not read its records; replacing it",
                link.pid
            );
            self.end_guard(Some(registry), true);
            self.ensure_guard(registry);
            return;
        }
        self.flush(registry);
    }

    /// Writes waiting records until done or the socket is full; watches for writability while
    /// records wait.
    fn flush(&mut self, registry: &Registry) {
        let Some(link) = &mut self.link else { return };
        loop {
            if link.out.is_empty() {
                while link.out.len() < 16 * 1024 {
                    let Some((add, pgid)) = link.pending.pop_front() else {
                        break;
                    };
                    let op = if add { '+' } else { '-' };
                    link.out
                        .extend_from_slice(format!("{op}{pgid}\n").as_bytes());
                }
                if link.out.is_empty() {
                    break;
                }
            }
            match link.sock.write(&link.out) {
                Ok(n) => {
                    link.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The guard is gone (its end of file is readable and replaces it), or the
                // socket failed otherwise: this guard cannot be kept up to date, so it must not
                // act on what it has — kill it; its end of file then brings a new one, told
                // every tracked group.
                Err(e) => {
                    log::warn!(
                        "cannot write to the guard process (pid {}): {e}; replacing it",
                        link.pid
                    );
                    if !link.reaped {
                        kill_guard(link.pid, link.pidfd.as_ref());
                    }
                    link.pending.clear();
                    link.out.clear();
                    break;
                }
            }
        }
        let want = !link.pending.is_empty() || !link.out.is_empty();
        if want != link.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let fd = link.sock.as_raw_fd();
            if registry
                .reregister(&mut SourceFd(&fd), self.token, interest)
                .is_ok()
            {
                link.writable = want;
            }
        }
    }

    /// Writes every record still pending to the guard, waiting for it (bounded, 2 s): before
    /// `warden upgrade` hands the guard over, it must know every group.
    pub(crate) fn flush_blocking(&mut self) {
        let Some(link) = &mut self.link else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let _ = link.sock.set_nonblocking(false);
        let _ = link
            .sock
            .set_write_timeout(Some(std::time::Duration::from_secs(2)));
        while let Some((add, pgid)) = link.pending.pop_front() {
            let op = if add { '+' } else { '-' };
            link.out
                .extend_from_slice(format!("{op}{pgid}\n").as_bytes());
        }
        while !link.out.is_empty() && std::time::Instant::now() < deadline {
            match link.sock.write(&link.out) {
                Ok(n) => {
                    link.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = link.sock.set_nonblocking(true);
    }

    /// Every tracked group: its id, owner, and whether its leader was reaped.
    pub(crate) fn tracked(&self) -> Vec<(i32, Owner, bool)> {
        self.tracked
            .iter()
            .map(|(&pgid, t)| (pgid, t.owner, t.leader_reaped))
            .collect()
    }

    /// At the end of a completed shutdown (the guard let go): leaves cgroup mode, removing
    /// warden's cgroups.
    pub(crate) fn leave_cgroup_mode(&mut self) {
        if let Some(c) = self.cgroups.take() {
            c.hierarchy.tear_down();
        }
    }

    /// cgroup mode: the instance whose cgroup (or a cgroup it made below it) holds process
    /// `pid`, from `/proc/PID/cgroup`.
    pub(crate) fn owner_by_cgroup(&self, pid: i32) -> Option<Owner> {
        self.cgroups.as_ref()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mut at = Some(std::path::Path::new(path.trim_end()));
        while let Some(p) = at.filter(|p| p.components().count() > 1) {
            let found = self.tracked.values().find(|t| {
                t.cgroup
                    .as_ref()
                    .is_some_and(|c| c.dir.ends_with(p.strip_prefix("/").unwrap_or(p)))
            });
            if let Some(t) = found {
                return Some(t.owner);
            }
            at = p.parent();
        }
        None
    }

    /// The `cgroup.procs` of group `pgid`'s cgroup (cgroup mode): where an exec health check of
    /// that instance runs.
    pub(crate) fn cgroup_procs(&self, pgid: i32) -> Option<std::ffi::CString> {
        cgroup::procs_of(self.cgroup_of(pgid)?)
    }

    /// The cgroup of group `pgid` (cgroup mode).
    pub(crate) fn cgroup_of(&self, pgid: i32) -> Option<&std::path::Path> {
        Some(&self.tracked.get(&pgid)?.cgroup.as_ref()?.dir)
    }

    /// The pids of the processes in the cgroup of group `pgid` (cgroup mode), as warden sees
    /// them.
    pub(crate) fn cgroup_members(&self, pgid: i32) -> Option<Vec<i32>> {
        let dir = self.cgroup_of(pgid)?;
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
        Some(procs.lines().filter_map(|l| l.parse().ok()).collect())
    }

    /// The guard's pid and our end of its socket pair, if one runs.
    pub(crate) fn guard(&self) -> Option<(i32, std::os::fd::RawFd)> {
        let link = self.link.as_ref().filter(|l| !l.reaped)?;
        Some((link.pid, link.sock.as_raw_fd()))
    }

    /// Takes over the guard an earlier image of this process started (`warden upgrade`): our
    /// child `pid`, reached through `sock`; it knows every group already.
    pub(crate) fn adopt_guard(&mut self, registry: &Registry, pid: i32, sock: OwnedFd) {
        let sock = UnixStream::from(sock);
        let _ = sock.set_nonblocking(true);
        if registry
            .register(
                &mut SourceFd(&sock.as_raw_fd()),
                self.token,
                Interest::READABLE,
            )
            .is_err()
        {
            return;
        }
        crate::daemon::mark_private(sock.as_raw_fd());
        let mut link = link(pid, sock, None);
        // Started as the init of a namespace of its own: PID-namespace mode goes on.
        let adopted = (PidNamespace::new(), crate::sys::pidns::of(&pid.to_string()));
        if let (Ok(mode), Ok(ns)) = adopted
            && mode.is_other(&ns)
        {
            link.ns = Some(ns);
            self.pid_namespace = Some(mode);
        }
        self.link = Some(link);
    }

    /// Tracks group `pgid` of `owner` again (handed over by `warden upgrade`; the guard knows
    /// it already).
    pub(crate) fn adopt(&mut self, pgid: i32, owner: Owner, leader_reaped: bool) {
        self.tracked.insert(
            pgid,
            Tracked {
                owner,
                leader_reaped,
                cgroup: None,
            },
        );
        if leader_reaped {
            self.orphaned += 1;
        }
    }

    /// Closes the link (the guard reads end of file) and reaps the guard, killing it first if
    /// `kill_it` (bounded: a guard that has not left within a second is killed too).
    fn end_guard(&mut self, registry: Option<&Registry>, kill_it: bool) {
        let Some(link) = self.link.take() else { return };
        if let Some(r) = registry {
            let _ = r.deregister(&mut SourceFd(&link.sock.as_raw_fd()));
        }
        crate::daemon::unmark_private(link.sock.as_raw_fd());
        let pid = Pid::from_raw(link.pid);
        if link.reaped {
            return;
        }
        if kill_it {
            kill_guard(link.pid, link.pidfd.as_ref());
        }
        drop(link.sock);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match crate::sys::wait::waitpid_nohang(pid.as_raw()) {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(None) => {
                    kill_guard(link.pid, link.pidfd.as_ref());
                    // A namespace's init waits for every process of its namespace to be
                    // reaped, by us among others: never wait for it here.
                    if link.ns.is_none() {
                        let _ = crate::sys::wait::waitpid_blocking(pid.as_raw());
                    }
                    return;
                }
                // Reaped (or reaped already by someone's `waitpid(-1)`: then it is gone too).
                _ => return,
            }
        }
    }
}

impl Drop for Groups {
    /// A supervisor dropped without a completed shutdown: the guard kills the groups still
    /// registered, and is reaped.
    fn drop(&mut self) {
        self.end_guard(None, false);
    }
}

/// Whether group `pgid`, its leader reaped, is not empty yet: its cgroup is populated, or (in
/// process-group mode) the group has a member.
fn alive(pgid: i32, t: &Tracked) -> bool {
    match &t.cgroup {
        Some(c) => cgroup::populated(&c.dir),
        None => group_exists(pgid),
    }
}

/// Whether process group `pgid` has any member (zombies included). `EPERM` means it has one we
/// may not signal.
fn group_exists(pgid: i32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
}
