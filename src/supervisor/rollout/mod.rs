//! Rolling restarts: one instance at a time, moving on only once the replacement serves, and
//! rolled back when a replacement fails on probation.
//!
//! A rolling restart replaces one instance at a time and moves on only once the replacement is
//! up (`ready` for notify, health or timed readiness, `running` for immediate). With
//! `update = "replace"` the instance is stopped, then started again, so at least N−1 instances
//! serve throughout; with `update = "surge"` the replacement starts beside it (a slot of its
//! own with the same index, marked `incoming`) and the old one is stopped once the replacement
//! serves, so N serve throughout.
//!
//! # Probation
//!
//! Each replacement is on probation for the program's `probation` from its start: if it exits,
//! goes `fatal`, fails to exec, misses its readiness (it is not serving when probation ends, or
//! its start timeout kills it) or is restarted by its health check, the rollout stops and is
//! rolled back ([`Next::RollBack`]). With no probation (the default with `replace`), a rollout
//! stops at a replacement that does not come back ([`Next::Failed`]), as it always did. The
//! rollout is over once every instance was replaced and every replacement passed probation.
//!
//! # Files
//!
//! This file is the pure progression ([`Rollout::next`], tested in `tests.rs`); `run.rs`
//! carries its steps out and rolls back. Neither starts, stops or scales a program.

mod run;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(super) use run::Previous;

use super::ExecState;
use super::snapshot::{InstanceView, ProgramView};
use super::table::{InstanceIndex, ProgramId, SlotId};
use crate::lifecycle::{AfterStop, State};
use crate::policy::{ExitReason, ExitStatus, Update, fmt_duration};

/// One rolling restart under way.
pub(super) struct Rollout {
    program: ProgramId,
    /// The indices still to replace, in order.
    pending: VecDeque<InstanceIndex>,
    /// The instance being replaced, until its replacement serves (and, with surge, until the
    /// old process is gone).
    current: Option<Step>,
    /// Replacements on probation (the current one included, from its start).
    watched: Vec<Watch>,
    /// Leave instances stopped by hand alone (a reload), instead of starting them again (an
    /// operator's `restart`).
    keep_stopped: bool,
    update: Update,
    /// Zero: none.
    probation: Duration,
    /// The settings to put back if it fails on probation (a reload's rollout), with what the
    /// supervisor needs to run them.
    pub(super) previous: Option<Previous>,
    /// It is itself a rollback: said so in the log, and never rolled back in turn.
    pub(super) rollback: bool,
}

/// The instance being replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    index: InstanceIndex,
    /// The slot being replaced.
    old: SlotId,
    /// Its replacement's slot: the same with `replace`; with `surge`, the incoming slot once
    /// started (`None` until [`Rollout::surged`]).
    new: Option<SlotId>,
    /// With `surge`: the old instance was told to stop.
    retired: bool,
}

/// A replacement on probation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    index: InstanceIndex,
    slot: SlotId,
    /// The process being watched, once seen.
    pid: Option<i32>,
    /// The process it replaces in the same slot (`replace`): not the one to watch.
    not_pid: Option<i32>,
    since: Instant,
    /// It has served at least once.
    served: bool,
}

/// What a rolling restart does next (see [`Rollout::next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Restart instance `index` now (`replace`), then ask again.
    Restart(InstanceIndex),
    /// Start a replacement for instance `index` beside it (`surge`), report its slot through
    /// [`Rollout::surged`], then ask again.
    Surge(InstanceIndex),
    /// The replacement of the instance in slot `old` serves: stop the old one for good and
    /// let the replacement take its place; then ask again.
    Retire {
        /// The old slot.
        old: SlotId,
        /// The replacement's slot.
        new: SlotId,
    },
    /// Instance `index` is stopped by hand and a reload leaves it so; ask again.
    LeaveStopped(InstanceIndex),
    /// A replacement does not serve yet, or one is still on probation.
    Wait,
    /// Every instance was replaced and passed probation: the rollout is over.
    Done,
    /// Instance `index`'s replacement did not come back (no probation): the rollout is over.
    Failed {
        /// The instance.
        index: InstanceIndex,
        /// Why, as logged after `rolling restart stopped: `.
        reason: String,
    },
    /// A replacement failed on probation (`web[0] exited with status 1 after 0.4s`): the
    /// rollout is over and is to be rolled back.
    RollBack {
        /// Why.
        reason: String,
    },
}

/// How a replacement stands after one look.
enum Judged {
    Watching,
    Passed,
    Failed(String),
}

impl Rollout {
    /// A rolling restart of program `p` (seen as `program`): every instance not retiring, in
    /// slot order, replaced the way `update` says, each on `probation` (zero: none).
    pub fn new(
        p: ProgramId,
        program: &ProgramView<'_>,
        keep_stopped: bool,
        update: Update,
        probation: Duration,
    ) -> Rollout {
        let indices = program
            .instances
            .iter()
            .filter(|i| !i.retiring && !i.incoming)
            .map(|i| i.index)
            .collect();
        Rollout::of(p, indices, keep_stopped, update, probation)
    }

    /// A rolling restart of instances `indices` of program `p` only.
    pub fn of(
        p: ProgramId,
        indices: VecDeque<InstanceIndex>,
        keep_stopped: bool,
        update: Update,
        probation: Duration,
    ) -> Rollout {
        Rollout {
            program: p,
            pending: indices,
            current: None,
            watched: Vec::new(),
            keep_stopped,
            update,
            probation,
            previous: None,
            rollback: false,
        }
    }

    /// How many instances are still to replace.
    pub fn remaining(&self) -> usize {
        self.pending.len() + usize::from(self.current.is_some())
    }

    /// The surge replacement of the current instance was started in slot `new` at `now`.
    pub fn surged(&mut self, new: SlotId, now: Instant) {
        if let Some(step) = self.current.as_mut() {
            step.new = Some(new);
            self.watched.push(Watch {
                index: step.index,
                slot: new,
                pid: None,
                not_pid: None,
                since: now,
                served: false,
            });
        }
    }

    /// The incoming slot of the current step that has not taken over yet, if any (to stop
    /// when the rollout ends early).
    pub fn incoming(&self) -> Option<SlotId> {
        let step = self.current.as_ref()?;
        (self.update == Update::Surge && !step.retired)
            .then_some(step.new)
            .flatten()
    }

    /// When the nearest probation ends (a wake-up to judge it).
    pub fn deadline(&self) -> Option<Instant> {
        if self.probation.is_zero() {
            return None;
        }
        self.watched.iter().map(|w| w.since + self.probation).min()
    }

    /// The next step of the rollout, given how its program looks `now`. Every replacement on
    /// probation is judged first; the next instance is replaced only once the previous
    /// replacement serves (and has exec'd); an instance gone or scaled away since is skipped,
    /// never brought back.
    pub fn next(&mut self, program: &ProgramView<'_>, now: Instant) -> Next {
        if let Some(failed) = self.judge_watched(program, now) {
            return failed;
        }
        loop {
            if let Some(step) = self.current.clone() {
                match self.step_next(&step, program) {
                    Some(next) => return next,
                    None => self.current = None,
                }
                continue;
            }
            let Some(index) = self.pending.pop_front() else {
                return if self.watched.is_empty() {
                    Next::Done
                } else {
                    Next::Wait
                };
            };
            match program.instance(index) {
                // A slot scaled away since the rollout began is stopping for good: a `Restart`
                // would bring it back (and keep `scale` waiting for ever).
                None => {}
                Some(i) if i.retiring => {}
                Some(i) if self.keep_stopped && i.manual_stop => return Next::LeaveStopped(index),
                Some(i) => return self.begin_step(i, now),
            }
        }
    }

    /// Starts replacing instance `i`.
    fn begin_step(&mut self, i: &InstanceView<'_>, now: Instant) -> Next {
        let index = i.index;
        // A surge beside an instance that is not running anyway is a plain restart.
        let surge = self.update == Update::Surge && i.state.is_up();
        self.current = Some(Step {
            index,
            old: i.id,
            new: (!surge).then_some(i.id),
            retired: false,
        });
        if surge {
            return Next::Surge(index);
        }
        self.watched.push(Watch {
            index,
            slot: i.id,
            pid: None,
            not_pid: i.state.pid(),
            since: now,
            served: false,
        });
        Next::Restart(index)
    }

    /// What the current step waits for, or `None` once it is complete.
    fn step_next(&mut self, step: &Step, program: &ProgramView<'_>) -> Option<Next> {
        let Some(new_id) = step.new else {
            // A surge whose replacement was never started (the supervisor could not).
            return None;
        };
        let Some(new) = program.by_id(new_id).filter(|i| !i.retiring) else {
            // Gone, or scaled away while being replaced: nothing left to wait for.
            return None;
        };
        // Stopped by hand (or by a requirement's stop) meanwhile: it stays down.
        if new.manual_stop && new_id != step.old {
            return None;
        }
        if self.probation.is_zero() {
            if let ExecState::Failed(why) = new.exec {
                let reason = why.clone();
                return Some(Next::Failed {
                    index: step.index,
                    reason,
                });
            }
            if matches!(new.state, State::Fatal | State::Exited | State::Stopped) {
                let reason = format!("the instance did not come back ({})", new.state.name());
                return Some(Next::Failed {
                    index: step.index,
                    reason,
                });
            }
        }
        if !new.serves(program.readiness) {
            return Some(Next::Wait);
        }
        if new_id == step.old {
            return None;
        }
        // A surge replacement takes over only once its health check (if any) passed too.
        if !new.health_passed {
            return Some(Next::Wait);
        }
        if !step.retired {
            if let Some(s) = self.current.as_mut() {
                s.retired = true;
            }
            return Some(Next::Retire {
                old: step.old,
                new: new_id,
            });
        }
        // One surge at a time: the old process goes before the next replacement starts.
        let old_gone = program.by_id(step.old).is_none_or(|o| o.is_down());
        (!old_gone).then_some(Next::Wait)
    }

    /// Judges every replacement on probation: the first failure found, as the step to take.
    fn judge_watched(&mut self, program: &ProgramView<'_>, now: Instant) -> Option<Next> {
        let probation = self.probation;
        let needs_pass = self.update == Update::Surge;
        let mut failure = None;
        self.watched.retain_mut(|w| {
            if failure.is_some() {
                return true;
            }
            let Some(i) = program.by_id(w.slot).filter(|i| !i.retiring) else {
                return false;
            };
            // Stopped by hand (or by a requirement's stop): no verdict on the new settings.
            if i.manual_stop {
                return false;
            }
            match judge(w, i, program, (probation, needs_pass), now) {
                Judged::Watching => true,
                Judged::Passed => false,
                Judged::Failed(why) => {
                    failure = Some(format!("{}[{}] {why}", program.name, w.index));
                    false
                }
            }
        });
        // Without probation a watch only waits to see its replacement serve.
        failure
            .filter(|_| !probation.is_zero())
            .map(|reason| Next::RollBack { reason })
    }
}

/// How replacement `w` (instance `i` of `program`) stands `now`, on `probation`; with
/// `needs_pass` (surge), it serves only once its health check (if any) passed.
fn judge(
    w: &mut Watch,
    i: &InstanceView<'_>,
    program: &ProgramView<'_>,
    (probation, needs_pass): (Duration, bool),
    now: Instant,
) -> Judged {
    let after = fmt_duration(now.saturating_duration_since(w.since));
    if let ExecState::Failed(why) = i.exec {
        return Judged::Failed(format!("could not start: {why}"));
    }
    let pid = i.state.pid();
    let stopping = matches!(i.state, State::Stopping { .. });
    if w.pid.is_none() && pid.is_some() && pid != w.not_pid && !stopping {
        w.pid = pid;
    }
    // Held by its dependencies (`waiting`), it has not started: probation judges that.
    let gone = !i.held
        && matches!(
            i.state,
            State::Fatal | State::Exited | State::Stopped | State::Backoff { .. }
        );
    let ended = gone || (w.pid.is_some() && pid != w.pid);
    let ending = matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Failed { .. } | AfterStop::Exited { .. },
            ..
        }
    ) && pid == w.pid;
    if ended || ending {
        return Judged::Failed(why_it_ended(w, i, program, &after));
    }
    if i.serves(program.readiness) && (i.health_passed || !needs_pass) {
        w.served = true;
    }
    if probation.is_zero() {
        return if w.served {
            Judged::Passed
        } else {
            Judged::Watching
        };
    }
    if now < w.since + probation {
        return Judged::Watching;
    }
    if w.served {
        Judged::Passed
    } else {
        Judged::Failed(format!(
            "did not become ready within its probation ({})",
            fmt_duration(probation)
        ))
    }
}

/// Why replacement `w` (instance `i`) ended, `after` its start.
fn why_it_ended(w: &Watch, i: &InstanceView<'_>, program: &ProgramView<'_>, after: &str) -> String {
    if i.last_reason == Some(ExitReason::Health) {
        let detail = i
            .health_error
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return format!("failed its health check{detail} after {after}");
    }
    let hung = matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Failed { .. },
            ..
        }
    );
    if hung && !w.served {
        let within = program
            .start_timeout
            .map(|t| format!(" within {}", fmt_duration(t)))
            .unwrap_or_default();
        return format!("did not become ready{within}");
    }
    if hung {
        return format!("stopped answering its watchdog after {after}");
    }
    let how = match i.last_exit {
        Some(ExitStatus::Code(code)) => format!("exited with status {code}"),
        Some(ExitStatus::Signal { signal, .. }) => {
            format!("was killed by {}", crate::policy::signal_name(signal))
        }
        None if *i.state == State::Stopped => "was stopped".to_string(),
        None => "could not be started".to_string(),
    };
    let fatal = if *i.state == State::Fatal {
        " and went fatal"
    } else {
        ""
    };
    format!("{how}{fatal} after {after}")
}

#[cfg(test)]
mod tests;
