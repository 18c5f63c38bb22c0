//! The child table: every program, its instance slots, and the pid index that maps a process
//! back to its slot (Horust's `repo.rs`).
//!
//! # Ids
//!
//! Three numbers, three types: a [`ProgramId`] is a program's place in start order (stable: a
//! removed program stays as a tombstone), an [`InstanceIndex`] is an instance's
//! `WARDEN_INSTANCE` number, and a [`SlotPos`] is a slot's current position in its program's
//! slot vector (it changes when retired slots are dropped). Hold on to an `InstanceIndex` across
//! loop turns; a `SlotPos` is valid only until the table next drops a slot.
//!
//! # What it must not do
//!
//! It keeps the pid index in step with the instances' states and `MAINPID=`; it does not step
//! state machines, signal, spawn or poll (the loop in `supervisor/mod.rs` does).

use std::collections::HashMap;
use std::fmt;
use std::ops::{Index, IndexMut};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::output::RotatingFile;
use super::program::ProgramDef;
use super::spawn::Prepared;
use crate::error::{Error, Result};
use crate::lifecycle::{Action, Event, Instance, State};
use crate::log::repeat::{Repeated, Verdict};

/// A program's place in the table, in start order; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ProgramId(pub(crate) usize);

/// An instance's number within its program (`WARDEN_INSTANCE`), from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct InstanceIndex(pub(crate) usize);

impl fmt::Display for InstanceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A slot's position in its program's slot vector: valid until the table next drops a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SlotPos(pub(crate) usize);

/// A slot's identity within its program, never reused: two slots may share an
/// [`InstanceIndex`] while a surge replacement runs beside the instance it replaces, but never
/// an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SlotId(pub(crate) u32);

/// Who a pid (a process group, an output pipe, a check) belongs to: a program and one of its
/// slots.
pub(crate) type Owner = (ProgramId, SlotId);

/// What is known of the current process's `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecState {
    /// Forked, exec not yet confirmed.
    Pending,
    /// Exec'd (or a function worker, which has nothing to exec).
    Done,
    /// The exec (or the set-up before it) failed: why.
    Failed(String),
}

/// One instance of a program: its state machine and what the loop knows of its processes.
pub(crate) struct Slot {
    /// Its identity (see [`SlotId`]).
    pub(crate) id: SlotId,
    pub(crate) index: InstanceIndex,
    /// A surge replacement started beside the instance with the same index (`rollout.rs`):
    /// not counted as one of the program's instances until it serves and takes over.
    pub(crate) incoming: bool,
    /// The program's [`Program::spec_gen`] when its current process was spawned: which
    /// settings it runs (a rollback replaces the instances whose generation is not the one
    /// restored).
    pub(crate) spec_gen: u64,
    pub(crate) inst: Instance,
    pub(crate) up_since: Option<Instant>,
    pub(crate) status_text: Option<String>,
    pub(crate) main_pid: Option<i32>,
    /// A pidfd for `main_pid` (Linux 5.3), taken when `MAINPID=` is accepted: that process is
    /// not necessarily our child (its launcher may reap it), so its pid alone could be recycled
    /// under us; the pidfd cannot.
    pub(crate) main_pidfd: Option<OwnedFd>,
    /// The spawned process (a forking service's launcher) exited and was reaped while its
    /// `MAINPID=` lives on: its pid may be reused and must never be signalled again.
    pub(crate) launcher_gone: bool,
    /// Scaled away: removed once down.
    pub(crate) retiring: bool,
    /// Whether the current process has exec'd: an instance is not "up" for waiting commands
    /// and rolling restarts until it has.
    pub(crate) exec: ExecState,
    /// Failed spawns (an environment file missing, a command not found): each reason is logged
    /// once, then summarised, until a spawn succeeds.
    pub(crate) spawn_failures: Repeated,
    /// Held down (`waiting`) until the programs it starts after are ready (`deps.rs`).
    pub(crate) hold: Option<Hold>,
    /// The health checks of its current process, when its program has one (`health/`).
    pub(crate) health: Option<super::health::Tracker>,
    /// The error of the health check that last restarted it (a rollout's message).
    pub(crate) health_error: Option<String>,
    /// What `/metrics` counts for it (`metrics/`).
    pub(crate) counters: super::metrics::Counters,
}

/// Why an instance is held down by its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    /// A required program was stopped by hand or went `fatal` (`db stopped`, `db fatal`);
    /// `None` for an instance that has simply not started yet.
    pub(crate) reason: Option<String>,
}

/// How often a spawn failure that keeps repeating with the same reason is summarised in the log.
const SPAWN_FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(600);

impl Slot {
    /// A fresh slot, never started.
    pub(crate) fn new(id: SlotId, index: InstanceIndex) -> Slot {
        Slot {
            id,
            index,
            incoming: false,
            spec_gen: 0,
            inst: Instance::new(),
            up_since: None,
            status_text: None,
            main_pid: None,
            main_pidfd: None,
            launcher_gone: false,
            retiring: false,
            exec: ExecState::Done,
            spawn_failures: Repeated::new(SPAWN_FAILURE_SUMMARY_EVERY),
            hold: None,
            health: None,
            health_error: None,
            counters: super::metrics::Counters::default(),
        }
    }

    /// Records a failed spawn at `now`: `reason` becomes the instance's status text (shown by
    /// `warden status` until a spawn succeeds). Returns the note to log when the failure is news
    /// (the first of this reason, or a summary once per interval); `None` when it only repeats
    /// what the log already says.
    pub(crate) fn spawn_failed(&mut self, reason: String, now: Instant) -> Option<String> {
        let note = match self.spawn_failures.failed(&reason, 1, now) {
            Verdict::First { .. } => Some(reason.clone()),
            Verdict::Summary { count } => {
                let starts = if count == 1 { "start" } else { "starts" };
                Some(format!(
                    "{reason} ({count} failed {starts} since the last report)"
                ))
            }
            Verdict::Quiet => None,
        };
        self.status_text = Some(reason);
        note
    }

    /// Whether nothing of this instance runs: not up, not stopping, not about to spawn.
    pub(crate) fn is_down(&self) -> bool {
        is_down(&self.inst.state)
    }

    /// Whether the `MAINPID=` process still exists (through its pidfd when there is one).
    pub(crate) fn main_alive(&self) -> bool {
        match (&self.main_pidfd, self.main_pid) {
            (Some(fd), _) => {
                use std::os::fd::AsFd;
                crate::sys::pidfd::pidfd_send_signal(fd.as_fd(), 0).is_ok()
            }
            (None, Some(pid)) => nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok(),
            (None, None) => false,
        }
    }

    /// Signals the `MAINPID=` process, if any (through its pidfd when there is one).
    pub(crate) fn signal_main(&self, sig: Signal) {
        match (&self.main_pidfd, self.main_pid) {
            (Some(fd), _) => {
                use std::os::fd::AsFd;
                let _ = crate::sys::pidfd::pidfd_send_signal(fd.as_fd(), sig as i32);
            }
            (None, Some(pid)) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
            (None, None) => {}
        }
    }
}

/// Whether an instance in `state` has nothing running and nothing about to run.
pub(crate) fn is_down(state: &State) -> bool {
    !state.is_up() && !matches!(state, State::Stopping { .. } | State::Spawning)
}

/// One program: its definition, what was prepared for spawning it, its slots and output files.
pub(crate) struct Program {
    pub(crate) def: ProgramDef,
    pub(crate) prepared: Option<Prepared>,
    slots: Vec<Slot>,
    /// Output files: stdout's, and stderr's when it is another path.
    pub(crate) files: [Option<RotatingFile>; 2],
    /// Removed by a reload: stopping, then kept as an empty tombstone so ids stay stable.
    pub(crate) removed: bool,
    /// Its health check, resolved (`health/`); set by whoever adds the program.
    pub(crate) checker: Option<super::health::Checker>,
    /// The generation of its settings: a reload that changes them counts up, a rollback puts
    /// the previous one back (see [`Slot::spec_gen`]).
    pub(crate) spec_gen: u64,
    /// Its last rollout that failed on probation: its sequence number (0: none; see
    /// `ControlPlane::rollbacks`) and the message the requests waiting on it fail with.
    pub(crate) rollbacks: (u64, Option<String>),
    /// Rolled back by the last reload that changed it, and why: `status` says so until a reload
    /// applies again.
    pub(crate) rolled_back: Option<String>,
    /// The next [`SlotId`].
    next_id: u32,
}

impl Program {
    /// A program with one fresh slot per instance, indices `0..def.instances`.
    pub(crate) fn new(
        def: ProgramDef,
        prepared: Option<Prepared>,
        files: [Option<RotatingFile>; 2],
    ) -> Program {
        let n = def.instances;
        let slots = (0..n)
            .map(|i| Slot::new(SlotId(i), InstanceIndex(i as usize)))
            .collect();
        Program {
            def,
            prepared,
            slots,
            files,
            removed: false,
            checker: None,
            spec_gen: 0,
            rollbacks: (0, None),
            rolled_back: None,
            next_id: n,
        }
    }

    /// Adds a fresh slot for instance `index` (never started); returns its position.
    pub(crate) fn push_slot(&mut self, index: InstanceIndex) -> SlotPos {
        let id = SlotId(self.next_id);
        self.next_id += 1;
        self.slots.push(Slot::new(id, index));
        SlotPos(self.slots.len() - 1)
    }

    /// The [`SlotId`] the next new slot gets.
    pub(crate) fn next_slot_id(&self) -> u32 {
        self.next_id
    }

    /// Where the slot `id` is.
    pub(crate) fn locate(&self, id: SlotId) -> Option<SlotPos> {
        self.slots.iter().position(|s| s.id == id).map(SlotPos)
    }

    /// Every slot, in position order.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Every current position (a snapshot: applying events may drop retired slots later).
    pub(crate) fn positions(&self) -> impl Iterator<Item = SlotPos> + use<> {
        (0..self.slots.len()).map(SlotPos)
    }

    /// Where the slot of instance `index` is: the instance itself, not a surge replacement
    /// beside it, and one that stays rather than one stopping for good.
    pub(crate) fn slot_pos(&self, index: InstanceIndex) -> Option<SlotPos> {
        let with_index = || {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.index == index)
        };
        with_index()
            .filter(|(_, s)| !s.incoming)
            .min_by_key(|(_, s)| s.retiring)
            .or_else(|| with_index().next())
            .map(|(pos, _)| SlotPos(pos))
    }

    /// The indices of the slots not being scaled away (surge replacements not counted).
    pub(crate) fn live_indices(&self) -> Vec<InstanceIndex> {
        self.slots
            .iter()
            .filter(|s| !s.retiring && !s.incoming)
            .map(|s| s.index)
            .collect()
    }

    /// The slot for instance `index`: a retiring one with that index is kept (no longer
    /// retiring), otherwise a fresh one is added.
    pub(crate) fn slot_for_index(&mut self, index: InstanceIndex) -> SlotPos {
        match self.slot_pos(index).filter(|&pos| !self[pos].incoming) {
            Some(pos) => {
                self[pos].retiring = false;
                pos
            }
            None => self.push_slot(index),
        }
    }

    /// Drops the retiring slots that are down (positions after them shift).
    pub(crate) fn remove_retired(&mut self) {
        self.slots.retain(|s| {
            !(s.retiring
                && !s.inst.state.is_up()
                && !matches!(s.inst.state, State::Stopping { .. }))
        });
    }

    /// Drops the slots for which `keep` is false (a removed program's, once down).
    pub(crate) fn retain_slots(&mut self, keep: impl FnMut(&Slot) -> bool) {
        self.slots.retain(keep);
    }

    /// Steps instance `pos`'s state machine under this program's policy.
    pub(crate) fn step(
        &mut self,
        pos: SlotPos,
        event: Event,
        now: Instant,
        jitter: f64,
    ) -> Vec<Action> {
        self.slots[pos.0]
            .inst
            .step(&self.def.policy, event, now, jitter)
    }

    /// Whether every instance is down.
    pub(crate) fn is_down(&self) -> bool {
        self.slots.iter().all(Slot::is_down)
    }
}

impl Index<SlotPos> for Program {
    type Output = Slot;
    fn index(&self, pos: SlotPos) -> &Slot {
        &self.slots[pos.0]
    }
}

impl IndexMut<SlotPos> for Program {
    fn index_mut(&mut self, pos: SlotPos) -> &mut Slot {
        &mut self.slots[pos.0]
    }
}

/// Every program and the pid index.
#[derive(Default)]
pub(crate) struct Table {
    programs: Vec<Program>,
    /// Worker pids and accepted `MAINPID=`s, to their instance.
    by_pid: HashMap<i32, Owner>,
}

impl Table {
    /// Every program, removed ones included, in start order.
    pub(crate) fn programs(&self) -> &[Program] {
        &self.programs
    }

    /// Every program, mutably (for files and definitions; slots through the index operators).
    pub(crate) fn programs_mut(&mut self) -> &mut [Program] {
        &mut self.programs
    }

    /// Every id, removed programs included.
    pub(crate) fn ids(&self) -> impl Iterator<Item = ProgramId> + use<> {
        (0..self.programs.len()).map(ProgramId)
    }

    /// The ids of the programs not removed, in start order.
    pub(crate) fn live_programs(&self) -> Vec<ProgramId> {
        self.ids().filter(|&p| !self[p].removed).collect()
    }

    /// Adds a program at the end of the start order.
    pub(crate) fn push(&mut self, program: Program) -> ProgramId {
        self.programs.push(program);
        ProgramId(self.programs.len() - 1)
    }

    /// The program named `program` (not removed).
    pub(crate) fn find(&self, program: &str) -> Result<ProgramId> {
        self.programs
            .iter()
            .position(|p| p.def.name == program && !p.removed)
            .map(ProgramId)
            .ok_or_else(|| Error::Invalid {
                what: "program",
                reason: format!("no program named {program:?}"),
            })
    }

    /// Where instance `index` of program `p` is (see [`Program::slot_pos`]).
    pub(crate) fn slot_pos(&self, p: ProgramId, index: InstanceIndex) -> Option<SlotPos> {
        self[p].slot_pos(index)
    }

    /// Replaces program `p`'s slots with `slots` handed over by an earlier image of this
    /// process (`warden upgrade`), new ids to start at `next_id`; the pid index learns their
    /// processes.
    pub(crate) fn adopt_slots(&mut self, p: ProgramId, slots: Vec<Slot>, next_id: u32) {
        self.by_pid.retain(|_, owner| owner.0 != p);
        for s in &slots {
            for pid in [s.inst.state.pid(), s.main_pid].into_iter().flatten() {
                self.by_pid.insert(pid, (p, s.id));
            }
        }
        let prog = &mut self.programs[p.0];
        prog.slots = slots;
        prog.next_id = next_id;
    }

    /// Where the slot of `owner` is, if it still exists.
    pub(crate) fn locate(&self, (p, id): Owner) -> Option<SlotPos> {
        self.programs.get(p.0)?.locate(id)
    }

    /// Whether every instance of every program is down.
    pub(crate) fn all_down(&self) -> bool {
        self.programs.iter().all(Program::is_down)
    }

    /// The instance `pid` belongs to, as its worker or its `MAINPID=`.
    pub(crate) fn owner(&self, pid: i32) -> Option<Owner> {
        self.by_pid.get(&pid).copied()
    }

    /// Forgets `pid` (reaped, or no longer the instance's).
    pub(crate) fn forget_pid(&mut self, pid: i32) {
        self.by_pid.remove(&pid);
    }

    /// Keeps the pid index in step after an instance's state changed its pid from `old` to
    /// `new`: the old pid is forgotten, and a new process starts with no `MAINPID=`, no status
    /// text and its launcher present.
    pub(crate) fn track_pid_change(
        &mut self,
        p: ProgramId,
        pos: SlotPos,
        old: Option<i32>,
        new: Option<i32>,
        now: Instant,
    ) {
        if new == old {
            return;
        }
        if let Some(old) = old {
            self.by_pid.remove(&old);
        }
        let Some(pid) = new else { return };
        let slot = &mut self.programs[p.0].slots[pos.0];
        let key = (p, slot.id);
        if let Some(main) = slot.main_pid.take()
            && self.by_pid.get(&main) == Some(&key)
        {
            self.by_pid.remove(&main);
        }
        slot.main_pidfd = None;
        self.by_pid.insert(pid, key);
        slot.up_since = Some(now);
        slot.launcher_gone = false;
        slot.status_text = None;
        slot.spawn_failures.succeeded();
    }

    /// Records an accepted `MAINPID=` (already checked to be the worker, a descendant or in its cgroup), with
    /// its pidfd when one could be taken; a previous `MAINPID=` other than the worker is
    /// forgotten.
    pub(crate) fn set_main_pid(
        &mut self,
        p: ProgramId,
        pos: SlotPos,
        main: i32,
        pidfd: Option<OwnedFd>,
    ) {
        let slot = &mut self.programs[p.0].slots[pos.0];
        let key = (p, slot.id);
        let worker = slot.inst.state.pid();
        if let Some(old) = slot.main_pid.replace(main)
            && old != main
            && Some(old) != worker
            && self.by_pid.get(&old) == Some(&key)
        {
            self.by_pid.remove(&old);
        }
        slot.main_pidfd = pidfd;
        self.by_pid.insert(main, key);
    }

    /// What a reaped `pid` of instance `pos` means for it (see [`Reaped`]), with the pid index,
    /// `MAINPID=` and launcher bookkeeping done.
    pub(crate) fn reaped(&mut self, p: ProgramId, pos: SlotPos, pid: i32) -> Reaped {
        self.by_pid.remove(&pid);
        let slot = &mut self.programs[p.0].slots[pos.0];
        let worker = slot.inst.state.pid();
        if slot.main_pid == Some(pid) {
            let launcher_running = !slot.launcher_gone && worker.is_some_and(|w| w != pid);
            slot.main_pid = None;
            slot.main_pidfd = None;
            if launcher_running {
                Reaped::MainWhileLauncherRuns
            } else {
                Reaped::End
            }
        } else if worker == Some(pid) {
            if slot.main_alive() {
                slot.launcher_gone = true;
                Reaped::LauncherOfLiveMain
            } else {
                Reaped::End
            }
        } else {
            Reaped::Stale
        }
    }
}

/// What the end of one of an instance's processes means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// The instance's process ended (its worker, or its `MAINPID=` once the launcher is gone).
    End,
    /// The `MAINPID=` process ended while the launcher still runs: the instance ends with its
    /// status, and the launcher is stopped with the rest.
    MainWhileLauncherRuns,
    /// A forking service's launcher exited after naming its main pid, which lives on.
    LauncherOfLiveMain,
    /// A process the instance no longer counts as its own.
    Stale,
}

impl Index<ProgramId> for Table {
    type Output = Program;
    fn index(&self, p: ProgramId) -> &Program {
        &self.programs[p.0]
    }
}

impl IndexMut<ProgramId> for Table {
    fn index_mut(&mut self, p: ProgramId) -> &mut Program {
        &mut self.programs[p.0]
    }
}

#[cfg(test)]
mod tests;
