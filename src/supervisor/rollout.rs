//! Rolling restarts: one instance at a time, moving on only once the replacement serves.
//!
//! A rolling restart replaces one instance at a time and moves on only once the replacement is
//! up (`ready` for notify or timed readiness, `running` for immediate), so at least N−1
//! instances serve throughout. It stops (and says why in the log) when a replacement fails to
//! exec or does not come back. This file restarts instances and nothing else: it never starts,
//! stops or scales a program.

use std::collections::VecDeque;

use super::{ExecState, Readiness, Supervisor, state};

pub(super) struct Rollout {
    pub(super) program: usize,
    pending: VecDeque<usize>,
    current: Option<usize>,
    /// Leave instances stopped by hand alone (a reload), instead of starting them again (an
    /// operator's `restart`).
    keep_stopped: bool,
}

/// Whether an instance counts as serving.
pub(super) fn serving(state: &state::State, readiness: Readiness) -> bool {
    match state {
        state::State::Ready { .. } => true,
        state::State::Running { .. } => readiness == Readiness::Immediate,
        _ => false,
    }
}

impl Supervisor {
    /// Starts (or restarts from the top) a rolling restart of program `p`. With `keep_stopped`
    /// (a reload), instances stopped by hand are left down; an operator's `restart` starts them.
    pub(super) fn begin_rollout(&mut self, p: usize, keep_stopped: bool) {
        self.rollouts.retain(|r| r.program != p);
        let pending: VecDeque<usize> = self.programs[p]
            .slots
            .iter()
            .filter(|s| !s.retiring)
            .map(|s| s.index)
            .collect();
        log::info!(
            "{}: rolling restart of {} instance(s)",
            self.programs[p].def.name,
            pending.len()
        );
        self.rollouts.push(Rollout {
            program: p,
            pending,
            current: None,
            keep_stopped,
        });
        self.advance_rollouts();
    }

    /// Moves every rolling restart forward: the next instance is restarted only once the
    /// previous replacement serves.
    pub(super) fn advance_rollouts(&mut self) {
        let mut rollouts = std::mem::take(&mut self.rollouts);
        rollouts.retain_mut(|r| loop {
            let p = r.program;
            if let Some(index) = r.current {
                let Some(pos) = self.slot_pos(p, index) else {
                    r.current = None;
                    continue;
                };
                let prog = &self.programs[p];
                let slot = &prog.slots[pos];
                let st = &slot.inst.state;
                if slot.retiring {
                    // Scaled away while being replaced: nothing left to wait for.
                    r.current = None;
                    continue;
                }
                if let ExecState::Failed(why) = &slot.exec {
                    log::error!("{}[{index}]: rolling restart stopped: {why}", prog.def.name);
                    return false;
                }
                if serving(st, prog.def.policy.readiness) && slot.exec == ExecState::Done {
                    r.current = None;
                } else if matches!(
                    st,
                    state::State::Fatal | state::State::Exited | state::State::Stopped
                ) {
                    log::error!("{}[{index}]: rolling restart stopped: the instance did not come back ({})", prog.def.name, st.name());
                    return false;
                } else {
                    return true;
                }
            }
            match r.pending.pop_front() {
                Some(index) => {
                    let Some(pos) = self.slot_pos(p, index) else {
                        continue;
                    };
                    let slot = &self.programs[p].slots[pos];
                    // A slot scaled away since the rollout began is stopping for good: a
                    // `Restart` would bring it back (and keep `scale` waiting for ever).
                    if slot.retiring {
                        continue;
                    }
                    if r.keep_stopped && slot.inst.manual_stop {
                        log::info!(
                            "{}[{index}]: stopped by hand; stays stopped (new settings apply at its next start)",
                            self.programs[p].def.name
                        );
                        continue;
                    }
                    self.apply(p, pos, state::Event::Restart);
                    r.current = Some(index);
                }
                None => {
                    log::info!("{}: rolling restart done", self.programs[p].def.name);
                    return false;
                }
            }
        });
        rollouts.append(&mut self.rollouts);
        self.rollouts = rollouts;
    }
}
