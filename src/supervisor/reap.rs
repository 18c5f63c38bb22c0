//! Reaping: `waitpid` turned into `(pid, ExitStatus)` events, each routed to its instance as
//! the end of its process (or of its `MAINPID=`, or of a forking service's launcher), and the
//! groups whose members are all gone reported to the instances waiting for them.
//!
//! It decides what an exit *means* only through the table ([`Table::reaped`]) and the state
//! machine; it does not signal workers, except the strays at the very end of a shutdown
//! ([`Supervisor::kill_strays`]).
//!
//! [`Table::reaped`]: super::table::Table::reaped

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Supervisor;
use super::notify;
use super::table::{ProgramId, Reaped, SlotPos};
use crate::lifecycle::{Event, State};
use crate::policy::ExitStatus;

/// The next exited child, if any (`waitpid(-1, WNOHANG)`); `None` when none is left to reap now.
fn next_exit() -> Option<(i32, ExitStatus)> {
    loop {
        return match crate::sys::wait::waitpid_nohang(-1) {
            Ok(Some((pid, raw))) => match ExitStatus::from_wait_status(raw) {
                Some(status) => Some((pid, status)),
                None => continue,
            },
            Ok(None) | Err(nix::errno::Errno::ECHILD) => None,
            Err(e) => {
                log::error!("waitpid: {e}");
                None
            }
        };
    }
}

impl Supervisor {
    /// Reaps every exited child. Unknown pids are orphans re-parented to us (subreaper).
    pub(super) fn reap(&mut self) {
        while let Some((pid, status)) = next_exit() {
            self.child_exited(pid, status);
        }
        self.sweep_groups();
    }

    /// One reaped child: the end of an instance's process, or of an orphan.
    fn child_exited(&mut self, pid: i32, status: ExitStatus) {
        // A worker's main process (or a process the state machine refused): its group is now
        // checked for members like any group whose leader is gone.
        self.groups.leader_reaped(pid);
        if self.check_exited(pid, status) {
            return;
        }
        let Some(owner) = self.table.owner(pid) else {
            log::debug!("reaped orphan pid {pid} ({status})");
            return;
        };
        let p = owner.0;
        let Some(pos) = self.table.locate(owner) else {
            self.table.forget_pid(pid);
            return;
        };
        match self.table.reaped(p, pos, pid) {
            // The process to watch ended: so did the instance, with its status (as systemd's
            // main PID); the launcher and the rest of it are stopped.
            Reaped::MainWhileLauncherRuns => self.main_exited(p, pos, status),
            Reaped::LauncherOfLiveMain if self.groups.namespace().is_some() => {
                self.launcher_gone_in_namespace(p, pos, pid, status);
            }
            Reaped::LauncherOfLiveMain => {
                let (name, index) = (&self.table[p].def.name, self.table[p][pos].index);
                let main = self.table[p][pos].inst.state.pid();
                crate::log::about!(
                    log::Level::Debug,
                    name,
                    Some(index.0),
                    main,
                    "{name}[{index}]: launcher pid {pid} exited ({status}); main pid lives on"
                );
                return;
            }
            Reaped::End => self.main_exited(p, pos, status),
            Reaped::Stale => {}
        }
        self.table[p].remove_retired();
    }

    /// PID-namespace mode: the launcher `pid` of a forking service exited before its
    /// `MAINPID=` process, which is now the namespace's init's child: warden would never learn
    /// when, or how, it ends. The launcher's exit ends the instance, as without `MAINPID=`.
    fn launcher_gone_in_namespace(
        &mut self,
        p: ProgramId,
        pos: SlotPos,
        pid: i32,
        status: ExitStatus,
    ) {
        let (name, index) = (&self.table[p].def.name, self.table[p][pos].index);
        let main = self.table[p][pos].main_pid;
        crate::log::about!(
            log::Level::Warn,
            name,
            Some(index.0),
            main,
            "{name}[{index}]: launcher pid {pid} exited ({status}) before its MAINPID= process, \
             which warden cannot watch in a PID namespace (pid_namespace = true): the instance \
             ends with its launcher"
        );
        self.main_exited(p, pos, status);
    }

    /// The worker's main process ended: the instance is down if nothing else is left of its
    /// process group (`Exited`); otherwise it stops the rest first (`LeaderExited`).
    fn main_exited(&mut self, p: ProgramId, pos: SlotPos, status: ExitStatus) {
        let pgid = self.table[p][pos].inst.state.pid();
        let members = pgid.is_some_and(|g| self.groups.has_members(self.poll.registry(), g));
        let event = match self.table[p][pos].inst.state {
            _ if members => Event::LeaderExited { status },
            // Its `MAINPID=` process ended first (its status is the instance's), and this was
            // the launcher, the last of the group, which `has_members` has just forgotten.
            State::Stopping { reaped: true, .. } => Event::GroupEmpty,
            _ => Event::Exited { status },
        };
        self.apply(p, pos, event);
    }

    /// The cgroups' inotify descriptor is readable: a cgroup may have emptied.
    pub(super) fn cgroup_event(&mut self) {
        self.groups.cgroup_event();
        self.sweep_groups();
    }

    /// Forgets the groups whose members are all gone, and tells the instances waiting for them.
    pub(super) fn sweep_groups(&mut self) {
        for (pgid, owner) in self.groups.sweep(self.poll.registry()) {
            let p = owner.0;
            let Some(pos) = self.table.locate(owner) else {
                continue;
            };
            if matches!(
                self.table[p][pos].inst.state,
                State::Stopping { pid, reaped: true, .. } if pid == pgid
            ) {
                self.apply(p, pos, Event::GroupEmpty);
                self.table[p].remove_retired();
            }
        }
    }

    /// At the end of a shutdown, kills the descendants that escaped their worker's process
    /// group (a `setsid` daemon inside a worker) and were re-parented to us — and those that are
    /// re-parented to us when their own parent dies — until no child is left (bounded): no
    /// orphan outlives warden's orderly exit.
    pub(super) fn kill_strays(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut killed: Vec<i32> = Vec::new();
        loop {
            if !reap_all_quietly() {
                return;
            }
            let live = children_of_self();
            let fresh: Vec<i32> = live
                .iter()
                .copied()
                .filter(|p| !killed.contains(p))
                .collect();
            if !fresh.is_empty() {
                log::warn!(
                    "killing {} stray descendant(s) left behind by workers: {fresh:?}",
                    fresh.len()
                );
                for &pid in &fresh {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                killed.extend(fresh);
            }
            if Instant::now() >= deadline {
                log::error!("children still running after SIGKILL: {live:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Reaps every exited child without looking at it; `false` once no child is left at all (or
/// `waitpid` failed).
fn reap_all_quietly() -> bool {
    loop {
        match crate::sys::wait::waitpid_nohang(-1) {
            Ok(None) => return true,
            Err(nix::errno::Errno::ECHILD) => return false,
            Ok(Some(_)) => {}
            Err(e) => {
                log::error!("waitpid: {e}");
                return false;
            }
        }
    }
}

/// The children of this process: `/proc/self/task/*/children` (one small read per thread),
/// falling back to scanning `/proc/*/stat` on kernels built without it.
fn children_of_self() -> Vec<i32> {
    let mut out = Vec::new();
    let mut found_interface = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                found_interface = true;
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    if !found_interface {
        let me = std::process::id() as i32;
        out = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|&pid| notify::pgrp_and_parent(pid).is_some_and(|(_, ppid)| ppid == me))
                    .collect()
            })
            .unwrap_or_default();
    }
    out
}
