//! PID-namespace mode (`[daemon] pid_namespace`): the guard is the init of a PID namespace, and
//! every instance is created in it.
//!
//! The kernel kills every process of a PID namespace when its init dies. With the guard as that
//! init, a `SIGKILL` of warden and its guard together leaves nothing behind, `setsid` and
//! double forks notwithstanding, where cgroup mode alone leaves escaped descendants for the
//! next warden to kill. The cost is that programs see that namespace's pids. A worker's main
//! process is created with the same pid in both (`clone3` `set_tid`, where the kernel allows),
//! but what it forks gets the namespace's own pids, which name other processes outside, and
//! its parent is pid 0 to it. Hence opt-in.
//!
//! Only instances are created in it (the loop thread switches its `pid_for_children` around
//! each spawn): health checks and hooks run in warden's namespace, where `WARDEN_PID` means
//! what it says. The guard there is `cat` with its standard input on the guard's socket and
//! every signal ignored: it needs to read nothing but end of file; it reaps nothing either, as
//! `SIGCHLD` ignored makes the kernel reap the orphans re-parented to it. Killing the guard
//! alone kills every instance; warden starts another guard, in a new namespace, and restarts
//! them as after any `SIGKILL`.

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;

/// PID-namespace mode, as the loop holds it.
#[derive(Debug)]
pub(crate) struct PidNamespace {
    /// warden's own namespace, where the loop thread's children are created between spawns.
    home: OwnedFd,
    /// The last pid an instance was created with. An instance is given the same pid in both
    /// namespaces, chosen above the kernel's last and this one: choosing it does not move the
    /// kernel's cursor, so without this the next instance could get a pid just freed.
    last: Cell<i32>,
}

impl PidNamespace {
    /// Enters the mode, opening warden's own namespace.
    ///
    /// Errors: `/proc/self/ns/pid` cannot be opened.
    pub(crate) fn new() -> std::io::Result<PidNamespace> {
        Ok(PidNamespace {
            home: sys::pidns::own()?,
            last: Cell::new(0),
        })
    }

    /// Runs `f` (a spawn) with the loop thread's next children created in namespace `ns` (the
    /// guard's), then back in warden's own. `f` is given the pid its child's must be above
    /// (`None` when the switch failed, logged: its child is then created in warden's
    /// namespace).
    pub(crate) fn spawn_in(
        &self,
        ns: &OwnedFd,
        f: impl FnOnce(Option<i32>) -> crate::Result<crate::supervisor::spawn::Started>,
    ) -> crate::Result<crate::supervisor::spawn::Started> {
        if let Err(e) = sys::pidns::children_in(ns.as_fd()) {
            log::error!("cannot create the instance in the guard's PID namespace: setns: {e}");
            return f(None);
        }
        let r = f(Some(self.last.get()));
        if let Err(e) = sys::pidns::children_in(self.home.as_fd()) {
            log::error!("cannot return to warden's own PID namespace: setns: {e}");
        }
        if let Ok(started) = &r {
            self.last.set(started.pid);
        }
        r
    }

    /// Whether `ns` is another namespace than warden's own (a guard started as its init).
    pub(crate) fn is_other(&self, ns: &OwnedFd) -> bool {
        match (
            sys::pidns::inode(self.home.as_fd()),
            sys::pidns::inode(ns.as_fd()),
        ) {
            (Ok(a), Ok(b)) => a != b,
            _ => false,
        }
    }
}

/// The namespace's name as `/proc/PID/ns/pid` links show it: `pid:[4026532123]`.
pub(crate) fn name(ns: &OwnedFd) -> Option<String> {
    sys::pidns::inode(ns.as_fd())
        .ok()
        .map(|i| format!("pid:[{i}]"))
}

/// The pid, in warden's namespace, of the process whose pid is `inner` in namespace `ns` (a
/// worker's `MAINPID=`, which it gives as it sees it), found among `candidates` (warden's pids;
/// every process when `None`). `None` when there is no such process.
pub(crate) fn host_pid(ns: &OwnedFd, inner: i32, candidates: Option<Vec<i32>>) -> Option<i32> {
    let want = sys::pidns::inode(ns.as_fd()).ok()?;
    let candidates = candidates.unwrap_or_else(all_pids);
    candidates.into_iter().find(|&pid| {
        let p = pid.to_string();
        sys::pidns::ns_pids(&p).is_some_and(|ids| ids.len() > 1 && ids.last() == Some(&inner))
            && sys::pidns::of(&p)
                .and_then(|fd| sys::pidns::inode(fd.as_fd()))
                .is_ok_and(|i| i == want)
    })
}

/// Every pid in `/proc`.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl crate::supervisor::Supervisor {
    /// Whether to create every instance in a PID namespace whose init is the guard (see the
    /// `pidns` module of the supervisor): the kernel then kills them all when the guard dies,
    /// even when warden and the guard are killed together. Programs see that namespace's pids.
    /// Needs `CAP_SYS_ADMIN`; decided with [`decide_tracking`](Self::decide_tracking), where it
    /// is logged, and said by [`unapplicable_limits`](Self::unapplicable_limits) when it
    /// cannot be. Off by default.
    pub fn set_pid_namespace(&mut self, on: bool) {
        self.cgroup.pid_namespace = on;
    }

    /// Enters PID-namespace mode if asked (at the decision of the tracking mode).
    pub(in crate::supervisor) fn decide_pid_namespace(&mut self) {
        if !self.cgroup.pid_namespace || self.groups.namespace().is_some() {
            return;
        }
        match self.groups.enter_pid_namespace_mode(self.poll.registry()) {
            Ok(()) => {}
            Err(why) => {
                let uid = nix::unistd::geteuid();
                let why = if uid.is_root() {
                    why
                } else {
                    format!(
                        "warden runs as uid {uid} (after [daemon] user, or started so), without \
                         the CAP_SYS_ADMIN a PID namespace needs: {why}"
                    )
                };
                log::error!("pid_namespace cannot be applied: {why}");
                self.cgroup.ns_why_not = Some(why);
            }
        }
    }

    /// After `warden upgrade` adopted the guard: the mode is the earlier image's (the
    /// instances run where it created them), whatever this image was asked.
    pub(in crate::supervisor) fn adopted_pid_namespace(&mut self) {
        let in_force = self.groups.namespace().is_some();
        if self.cgroup.pid_namespace && !in_force {
            self.cgroup.ns_why_not = Some(
                "warden upgrade carried the instances over outside a PID namespace; restart \
                 warden to apply it"
                    .into(),
            );
        } else if !self.cgroup.pid_namespace && in_force {
            log::warn!(
                "pid_namespace is off, but warden upgrade carried the instances over in their \
                 PID namespace: restart warden to leave it"
            );
        }
    }

    /// `pid_namespace cannot be applied: REASON`, when asked and not in force.
    pub(in crate::supervisor) fn pid_namespace_problem(&self) -> Option<String> {
        let why = self.cgroup.ns_why_not.as_ref()?;
        Some(format!("pid_namespace cannot be applied: {why}"))
    }

    /// The instances' PID namespace as `status` shows it (`pid:[INODE]`), in that mode.
    pub(in crate::supervisor) fn namespace_name(&self) -> Option<String> {
        self.groups.namespace().and_then(name)
    }

    /// A worker's `MAINPID=` (its pid as it sees it) as warden's pid: the same outside
    /// PID-namespace mode; in it, the process of the instance's cgroup (or of all) that has that
    /// pid in the instances' namespace.
    pub(in crate::supervisor) fn main_pid_here(&self, pgid: i32, main: i32) -> Option<i32> {
        let Some(ns) = self.groups.namespace() else {
            return Some(main);
        };
        host_pid(ns, main, self.groups.cgroup_members(pgid))
    }
}
