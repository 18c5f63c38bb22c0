//! Shutdown: graceful (programs stopped in reverse dependency order, independent ones in
//! parallel) or fast (everything killed at once), bounded by `shutdown_timeout`, then the final
//! clean-up.
//!
//! # Policy and execution
//!
//! The order and the deadline are pure functions of a snapshot of the instances' states and
//! `now` ([`graceful_step`], [`held_back`], [`order_grace`], [`on_deadline`],
//! [`deadline_for`]), unit-tested in
//! `shutdown/tests.rs`; the `impl Supervisor` here only feeds them and carries out their answer
//! through `apply`. It owns [`ShutdownState`]; it does not step instances by itself or reap.
//!
//! # The order gives way before the deadline
//!
//! A dependent whose stop takes longer than `shutdown_timeout` would otherwise starve what it
//! depends on of any stop signal: those programs would get `SIGKILL` at the deadline without
//! ever being asked to stop. So once only [`order_grace`] of `shutdown_timeout` is left (its
//! last quarter, and at least its last second unless that is more than half of it), the order
//! is abandoned: every instance not yet stopping gets its stop signal at once (logged, naming
//! each program held back and what it waited for), and `SIGKILL` follows at the deadline.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::table::{ProgramId, SlotPos, is_down};
use super::{InstanceState, Supervisor};
use crate::lifecycle::{AfterStop, Event, State};
use crate::policy::{ExitReason, ExitStatus};

/// Which shutdown is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Stopping each program once every program that starts after it is down.
    Graceful,
    /// Every instance killed at once.
    Fast,
}

/// The supervisor's shutdown part.
#[derive(Debug, Default)]
pub(crate) struct ShutdownState {
    /// The shutdown under way, if any.
    pub(crate) mode: Option<Shutdown>,
    /// The bound of a graceful shutdown ([`Supervisor::set_shutdown_timeout`]).
    pub(crate) timeout: Option<Duration>,
    /// When the current shutdown began.
    began: Option<Instant>,
    /// When a graceful shutdown escalates to SIGKILL.
    pub(crate) deadline: Option<Instant>,
    /// When a graceful shutdown abandons the dependency order ([`order_grace`] before the
    /// deadline).
    order_until: Option<Instant>,
    /// Whether the dependency order was abandoned.
    abandoned: bool,
    /// Whether the end of a shutdown kills the strays ([`Supervisor::set_kill_strays`]).
    pub(crate) kill_strays: bool,
    /// Stop everything once a program ends for good with a failure
    /// ([`Supervisor::set_exit_on_fatal`]).
    pub(crate) exit_on_fatal: bool,
    /// The exit status a failure chose under `exit_on_fatal` (the first one only).
    pub(crate) failed: Option<u8>,
}

/// Whether an instance that went from `before` to `after`, its last process having ended with
/// `last`, has ended for good with a failure: it went `fatal`, or it was left `exited` (its
/// restart policy does not start it again) after a non-zero exit, a signal, or a stop for a
/// failure of warden's verdict (`reason`).
pub(crate) fn ended_badly(
    before: InstanceState,
    after: InstanceState,
    last: Option<ExitStatus>,
    reason: Option<ExitReason>,
) -> bool {
    match after {
        InstanceState::Fatal => before != InstanceState::Fatal,
        // Ended by warden on a verdict of its own (a start or watchdog timeout, a failing health
        // check, the OOM killer): a failure whatever the status it exited with.
        InstanceState::Exited => {
            before != InstanceState::Exited
                && (reason.is_some() || last.is_some_and(|s| !s.success()))
        }
        _ => false,
    }
}

/// The exit status a supervisor ends with for a program that ended with `last`: its exit code,
/// 128 + N for signal N (as a shell and tini say it), 1 when it never ran.
pub(crate) fn exit_status_of(last: Option<ExitStatus>) -> u8 {
    match last {
        Some(ExitStatus::Code(c)) if c != 0 => u8::try_from(c & 0xff).unwrap_or(1).max(1),
        Some(ExitStatus::Signal { signal, .. }) => u8::try_from(128 + signal).unwrap_or(255),
        _ => 1,
    }
}

impl ShutdownState {
    /// Whether a shutdown is under way.
    pub(crate) fn active(&self) -> bool {
        self.mode.is_some()
    }

    /// When the shutdown needs the loop next: the abandonment of the order, then the deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let order = self
            .order_until
            .filter(|_| !self.abandoned && self.mode == Some(Shutdown::Graceful));
        order.into_iter().chain(self.deadline).min()
    }
}

/// What a graceful shutdown does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send `Stop` to these instances of these programs (all at once).
    Stop(Vec<(ProgramId, Vec<SlotPos>)>),
    /// Wait for programs still stopping.
    Wait,
    /// Every program is down.
    Done,
}

/// One program as the shutdown order sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stopping {
    /// Its instances' states.
    pub(crate) states: Vec<State>,
    /// The programs that start after it (`after` or `requires`), as indices of the same list.
    pub(crate) dependents: Vec<usize>,
}

/// Whether an instance in `state` still needs a `Stop` to stay down during a shutdown. An
/// instance stopping *for a restart* (a watchdog or start timeout) gets the Stop too, which makes
/// it stay down: otherwise it is respawned mid-shutdown.
pub(crate) fn needs_stop(state: &State) -> bool {
    !matches!(
        state,
        State::Stopping {
            then: AfterStop::Stay,
            ..
        } | State::Exited
            | State::Stopped
            | State::Fatal
    )
}

/// The next step of a graceful shutdown. `programs`: every program (indices are
/// [`ProgramId`]s): each program with an instance that needs a stop gets it once every program
/// that starts after it is down (or at once when not `in_order`: the order was abandoned), all
/// such programs at once; otherwise what is not yet down is waited for.
pub(crate) fn graceful_step(programs: &[Stopping], in_order: bool) -> Step {
    let down = |i: usize| programs[i].states.iter().all(is_down);
    let mut stops = Vec::new();
    for (p, prog) in programs.iter().enumerate() {
        let slots: Vec<SlotPos> = (0..prog.states.len())
            .filter(|&i| needs_stop(&prog.states[i]))
            .map(SlotPos)
            .collect();
        if !slots.is_empty() && (!in_order || prog.dependents.iter().all(|&d| down(d))) {
            stops.push((ProgramId(p), slots));
        }
    }
    if !stops.is_empty() {
        Step::Stop(stops)
    } else if (0..programs.len()).all(down) {
        Step::Done
    } else {
        Step::Wait
    }
}

/// The programs that still wait their turn: an instance of theirs needs a stop, and programs
/// that start after them are not down yet (those, each program's list, in order).
pub(crate) fn held_back(programs: &[Stopping]) -> Vec<(ProgramId, Vec<ProgramId>)> {
    let down = |i: usize| programs[i].states.iter().all(is_down);
    programs
        .iter()
        .enumerate()
        .filter(|(_, prog)| prog.states.iter().any(needs_stop))
        .map(|(p, prog)| {
            let up = prog.dependents.iter().filter(|&&d| !down(d));
            (ProgramId(p), up.map(|&d| ProgramId(d)).collect::<Vec<_>>())
        })
        .filter(|(_, up)| !up.is_empty())
        .collect()
}

/// How long before the deadline of a graceful shutdown bounded by `timeout` the dependency
/// order is abandoned: the last quarter of `timeout`, and at least its last second — unless that
/// is more than half of it (a `timeout` under 2 s: its second half).
pub(crate) fn order_grace(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_secs(1).min(timeout / 2))
}

/// When a shutdown beginning at `now` escalates to SIGKILL: `timeout` after, for a graceful one.
pub(crate) fn deadline_for(now: Instant, timeout: Option<Duration>, fast: bool) -> Option<Instant> {
    timeout.filter(|_| !fast).and_then(|t| now.checked_add(t))
}

/// What the shutdown deadline asks at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Nothing to do (none set, not yet due, or everything already down).
    Keep,
    /// The deadline no longer applies (the shutdown is not graceful any more): forget it.
    Drop,
    /// Due: the graceful shutdown becomes a fast one, and every group gets SIGKILL.
    Escalate,
}

/// The deadline's verdict for a shutdown in `mode` with `deadline`, at `now`.
pub(crate) fn on_deadline(
    mode: Option<Shutdown>,
    deadline: Option<Instant>,
    now: Instant,
    all_down: bool,
) -> Deadline {
    let Some(deadline) = deadline else {
        return Deadline::Keep;
    };
    if !matches!(mode, Some(Shutdown::Graceful)) {
        return Deadline::Drop;
    }
    if now < deadline || all_down {
        return Deadline::Keep;
    }
    Deadline::Escalate
}

impl Supervisor {
    /// Whether a program that ends for good with a failure — it goes `fatal`, or exits non-zero
    /// or by a signal and its restart policy does not start it again — stops everything (a
    /// graceful shutdown), [`Supervisor::failure_exit`] then naming the exit status to end with
    /// (default off: the `warden` binary's `exit_on_fatal`, for a container's entry point).
    pub fn set_exit_on_fatal(&mut self, yes: bool) {
        self.shutdown.exit_on_fatal = yes;
    }

    /// After [`Supervisor::run`] returned because of [`Supervisor::set_exit_on_fatal`]: the
    /// failed program's exit status (its exit code, or 128 + N for signal N).
    pub fn failure_exit(&self) -> Option<u8> {
        self.shutdown.failed
    }

    /// Under `exit_on_fatal`: ends everything if `change` left instance `pos` of `p` ended for
    /// good with a failure (not one stopped by hand or scaled away, nor during a shutdown).
    pub(super) fn judge_end(&mut self, p: ProgramId, pos: SlotPos, change: &super::Change) {
        if !self.shutdown.exit_on_fatal || self.shutdown.active() {
            return;
        }
        let slot = &self.table[p][pos];
        let last = slot.inst.last_exit;
        let reason = slot.inst.last_reason;
        if slot.retiring
            || slot.inst.manual_stop
            || !ended_badly(change.before, change.after, last, reason)
        {
            return;
        }
        let code = exit_status_of(last);
        let why = last.map_or_else(|| "it never ran".to_string(), |s| s.to_string());
        crate::log::about!(
            log::Level::Error,
            &self.table[p].def.name,
            Some(slot.index.0),
            change.pid_after.or(change.pid_before),
            "{}: ended for good ({why}); exit_on_fatal: stopping everything, then exiting {code}",
            change.tag
        );
        self.shutdown.failed = Some(code);
        self.shutdown(false);
    }

    /// Starts a graceful shutdown (as `SIGTERM` does); [`Supervisor::run`] returns once done.
    pub fn shutdown(&mut self, fast: bool) {
        if !self.shutdown.active() {
            // Rolling restarts end here: a stop is no failure to roll back, and nothing may
            // start again.
            let rolling: Vec<_> = self.table.ids().filter(|&p| self.rolling(p)).collect();
            for p in rolling {
                self.cancel_rollout(p);
            }
            let now = Instant::now();
            self.shutdown.began = Some(now);
            self.shutdown.deadline = deadline_for(now, self.shutdown.timeout, fast);
            self.shutdown.order_until = self
                .shutdown
                .deadline
                .zip(self.shutdown.timeout)
                .and_then(|(d, t)| d.checked_sub(order_grace(t)));
            self.shutdown.abandoned = false;
        }
        if fast {
            self.shutdown.mode = Some(Shutdown::Fast);
            for p in self.table.ids() {
                for i in self.table[p].positions() {
                    self.apply(p, i, Event::Kill);
                }
            }
        } else if !self.shutdown.active() {
            self.shutdown.mode = Some(Shutdown::Graceful);
        }
    }

    /// Moves a graceful shutdown on: stops what [`graceful_step`] says, as far as it goes
    /// (each program's stops are sent once per turn).
    pub(super) fn advance_shutdown(&mut self) {
        if self.shutdown.mode != Some(Shutdown::Graceful) {
            return;
        }
        self.abandon_order_if_due();
        let mut stopped: Vec<ProgramId> = Vec::new();
        while self.shutdown.mode == Some(Shutdown::Graceful) {
            let snapshot = self.stopping_snapshot();
            let Step::Stop(stops) = graceful_step(&snapshot, !self.shutdown.abandoned) else {
                return;
            };
            let fresh: Vec<_> = stops
                .into_iter()
                .filter(|(p, _)| !stopped.contains(p))
                .collect();
            if fresh.is_empty() {
                return;
            }
            for (p, slots) in fresh {
                for pos in slots {
                    self.apply(p, pos, Event::Stop);
                }
                stopped.push(p);
            }
        }
    }

    /// Every program as [`graceful_step`] sees it.
    fn stopping_snapshot(&self) -> Vec<Stopping> {
        self.table
            .ids()
            .map(|p| Stopping {
                states: self.table[p]
                    .slots()
                    .iter()
                    .map(|s| s.inst.state.clone())
                    .collect(),
                dependents: self.dependents(p).into_iter().map(|d| d.0).collect(),
            })
            .collect()
    }

    /// Once only [`order_grace`] of `shutdown_timeout` is left: abandons the dependency order,
    /// saying which programs were still waiting their turn, and for what.
    fn abandon_order_if_due(&mut self) {
        let due = self
            .shutdown
            .order_until
            .is_some_and(|t| Instant::now() >= t);
        if self.shutdown.abandoned || !due {
            return;
        }
        self.shutdown.abandoned = true;
        let held = held_back(&self.stopping_snapshot());
        if held.is_empty() {
            return;
        }
        let name = |p: ProgramId| self.table[p].def.name.as_str();
        let list: Vec<String> = held
            .iter()
            .map(|(p, up)| {
                let up: Vec<&str> = up.iter().map(|&d| name(d)).collect();
                format!("{} (after {})", name(*p), up.join(", "))
            })
            .collect();
        let timeout = self.shutdown.timeout.unwrap_or_default();
        log::warn!(
            "graceful shutdown: {} of shutdown_timeout ({}) left: dependency order abandoned, \
             stopping now what still waited for its dependents to stop: {}; SIGKILL at the \
             deadline",
            crate::policy::fmt_duration(order_grace(timeout)),
            crate::policy::fmt_duration(timeout),
            list.join(", ")
        );
    }

    /// A graceful shutdown that ran out of `shutdown_timeout` becomes a fast one: SIGKILL to
    /// every instance's process group, and to groups no instance waits for any more.
    pub(super) fn enforce_shutdown_deadline(&mut self) {
        let verdict = on_deadline(
            self.shutdown.mode,
            self.shutdown.deadline,
            Instant::now(),
            self.table.all_down(),
        );
        match verdict {
            Deadline::Keep => {}
            Deadline::Drop => self.shutdown.deadline = None,
            Deadline::Escalate => {
                self.shutdown.deadline = None;
                let waited = self
                    .shutdown
                    .timeout
                    .map(crate::policy::fmt_duration)
                    .unwrap_or_default();
                log::warn!(
                    "shutdown_timeout ({waited}) passed: killing every remaining worker (SIGKILL)"
                );
                self.shutdown(true);
                self.groups.signal_all(Signal::SIGKILL);
            }
        }
    }

    /// The last step of a shutdown, every instance down: SIGKILL for groups still known to have
    /// members (an instance stops waiting for members that outlive SIGKILL), the strays if asked,
    /// then the guard is let go; the exit hooks get what is left of `shutdown_timeout`.
    pub(super) fn finish_shutdown(&mut self) {
        let left = self.groups.signal_all(Signal::SIGKILL);
        if left > 0 {
            log::warn!("{left} worker process group(s) still had members: sent SIGKILL");
        }
        // The guard first: it is our child, and no stray.
        self.groups.close_guard(self.poll.registry());
        if self.shutdown.kill_strays {
            self.kill_strays();
        }
        self.groups.leave_cgroup_mode();
        if let (Some(total), Some(began)) = (self.shutdown.timeout, self.shutdown.began) {
            crate::hooks::set_total_deadline(total.saturating_sub(began.elapsed()));
        }
        self.shutdown.deadline = None;
    }
}

#[cfg(test)]
mod tests;
