//! Rolling restarts: one instance at a time, moving on only once the replacement serves.
//!
//! A rolling restart replaces one instance at a time and moves on only once the replacement is
//! up (`ready` for notify or timed readiness, `running` for immediate), so at least N−1
//! instances serve throughout. It stops (and says why in the log) when a replacement fails to
//! exec or does not come back. This file restarts instances and nothing else: it never starts,
//! stops or scales a program.

use std::collections::VecDeque;

use super::snapshot::ProgramView;
use super::table::{InstanceIndex, ProgramId};
use super::{ExecState, Supervisor};
use crate::lifecycle::{Event, State};

/// One rolling restart under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rollout {
    program: ProgramId,
    /// The indices still to restart, in order.
    pending: VecDeque<InstanceIndex>,
    /// The index restarted last, until its replacement serves.
    current: Option<InstanceIndex>,
    /// Leave instances stopped by hand alone (a reload), instead of starting them again (an
    /// operator's `restart`).
    keep_stopped: bool,
}

/// What a rolling restart does next (see [`Rollout::next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Restart instance `index` now, then ask again.
    Restart(InstanceIndex),
    /// Instance `index` is stopped by hand and a reload leaves it so; ask again.
    LeaveStopped(InstanceIndex),
    /// The replacement restarted last does not serve yet.
    Wait,
    /// Every instance was replaced: the rollout is over.
    Done,
    /// Instance `index` did not come back, for `reason`: the rollout is over.
    Failed {
        /// The instance.
        index: InstanceIndex,
        /// Why, as logged after `rolling restart stopped: `.
        reason: String,
    },
}

impl Rollout {
    /// A rolling restart of program `p` (seen as `program`): every instance not retiring, in
    /// slot order.
    pub fn new(p: ProgramId, program: &ProgramView<'_>, keep_stopped: bool) -> Rollout {
        Rollout {
            program: p,
            pending: program
                .instances
                .iter()
                .filter(|i| !i.retiring)
                .map(|i| i.index)
                .collect(),
            current: None,
            keep_stopped,
        }
    }

    /// How many instances are still to restart.
    pub fn remaining(&self) -> usize {
        self.pending.len() + usize::from(self.current.is_some())
    }

    /// The next step of the rollout, given how its program looks now. The next instance is
    /// restarted only once the previous replacement serves (and has exec'd); an instance gone
    /// or scaled away since is skipped, never brought back.
    pub fn next(&mut self, program: &ProgramView<'_>) -> Next {
        loop {
            if let Some(index) = self.current {
                match program.instance(index) {
                    // Gone, or scaled away while being replaced: nothing left to wait for.
                    None => self.current = None,
                    Some(i) if i.retiring => self.current = None,
                    Some(i) => {
                        if let ExecState::Failed(why) = i.exec {
                            let reason = why.clone();
                            return Next::Failed { index, reason };
                        }
                        if i.serves(program.readiness) {
                            self.current = None;
                        } else if matches!(i.state, State::Fatal | State::Exited | State::Stopped) {
                            let reason =
                                format!("the instance did not come back ({})", i.state.name());
                            return Next::Failed { index, reason };
                        } else {
                            return Next::Wait;
                        }
                    }
                }
                continue;
            }
            let Some(index) = self.pending.pop_front() else {
                return Next::Done;
            };
            match program.instance(index) {
                // A slot scaled away since the rollout began is stopping for good: a `Restart`
                // would bring it back (and keep `scale` waiting for ever).
                None => {}
                Some(i) if i.retiring => {}
                Some(i) if self.keep_stopped && i.manual_stop => return Next::LeaveStopped(index),
                Some(_) => {
                    self.current = Some(index);
                    return Next::Restart(index);
                }
            }
        }
    }
}

impl Supervisor {
    /// Starts (or restarts from the top) a rolling restart of program `p`. With `keep_stopped`
    /// (a reload), instances stopped by hand are left down; an operator's `restart` starts them.
    pub(super) fn begin_rollout(&mut self, p: ProgramId, keep_stopped: bool) {
        self.cancel_rollout(p);
        let rollout = Rollout::new(p, &self.program_view(p), keep_stopped);
        log::info!(
            "{}: rolling restart of {} instance(s)",
            self.table[p].def.name,
            rollout.remaining()
        );
        self.rollouts.push(rollout);
        self.advance_rollouts();
    }

    /// Whether a rolling restart of program `p` is under way.
    pub(super) fn rolling(&self, p: ProgramId) -> bool {
        self.rollouts.iter().any(|r| r.program == p)
    }

    /// Ends the rolling restart of program `p`, if any; whether there was one.
    pub(super) fn cancel_rollout(&mut self, p: ProgramId) -> bool {
        let before = self.rollouts.len();
        self.rollouts.retain(|r| r.program != p);
        self.rollouts.len() != before
    }

    /// Moves every rolling restart forward: the next instance is restarted only once the
    /// previous replacement serves.
    pub(super) fn advance_rollouts(&mut self) {
        let mut rollouts = std::mem::take(&mut self.rollouts);
        rollouts.retain_mut(|r| self.advance_rollout(r));
        rollouts.append(&mut self.rollouts);
        self.rollouts = rollouts;
    }

    /// Carries out the steps of rollout `r` until it must wait (`true`) or is over (`false`).
    fn advance_rollout(&mut self, r: &mut Rollout) -> bool {
        let p = r.program;
        loop {
            let next = r.next(&self.program_view(p));
            let name = &self.table[p].def.name;
            match next {
                Next::Restart(index) => {
                    let pos = self.table.slot_pos(p, index).expect("in the snapshot");
                    self.apply(p, pos, Event::Restart);
                }
                Next::LeaveStopped(index) => log::info!(
                    "{name}[{index}]: stopped by hand; stays stopped (new settings apply at its next start)"
                ),
                Next::Wait => return true,
                Next::Done => {
                    log::info!("{name}: rolling restart done");
                    return false;
                }
                Next::Failed { index, reason } => {
                    log::error!("{name}[{index}]: rolling restart stopped: {reason}");
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Rollout progression's specification: the program is a hand-built snapshot, and each
    //! test plays the supervisor's part (restart what it is told, report back).

    use super::*;
    use crate::supervisor::Readiness;
    use crate::supervisor::snapshot::fake::{self, Program};
    use crate::supervisor::snapshot::serving;

    fn begin(program: &Program, keep_stopped: bool) -> Rollout {
        Rollout::new(ProgramId(0), &program.view(), keep_stopped)
    }

    /// Plays the supervisor: asks for the next step, carries out `Restart` (the instance is
    /// stopping to come back) and `LeaveStopped`, and returns the first other answer with
    /// the instances restarted on the way.
    fn run(r: &mut Rollout, program: &mut Program) -> (Vec<usize>, Next) {
        let mut restarted = Vec::new();
        loop {
            match r.next(&program.view()) {
                Next::Restart(index) => {
                    program.at(index.0).state = fake::restarting();
                    restarted.push(index.0);
                }
                Next::LeaveStopped(_) => {}
                other => return (restarted, other),
            }
        }
    }

    fn serving_count(program: &Program) -> usize {
        let readiness = program.readiness;
        program
            .instances
            .iter()
            .filter(|i| serving(&i.state, readiness))
            .count()
    }

    #[test]
    fn restarts_one_instance_at_a_time_in_order() {
        let mut web = Program::new("web", 3, fake::ready());
        let mut r = begin(&web, false);
        assert_eq!(run(&mut r, &mut web), (vec![0], Next::Wait));
        assert_eq!(run(&mut r, &mut web), (vec![], Next::Wait));
        web.at(0).state = fake::ready();
        assert_eq!(run(&mut r, &mut web), (vec![1], Next::Wait));
        web.at(1).state = fake::ready();
        assert_eq!(run(&mut r, &mut web), (vec![2], Next::Wait));
        web.at(2).state = fake::ready();
        assert_eq!(run(&mut r, &mut web), (vec![], Next::Done));
    }

    #[test]
    fn n_minus_one_instances_serve_at_every_step() {
        let mut web = Program::new("web", 4, fake::ready());
        let mut r = begin(&web, false);
        loop {
            let (restarted, next) = run(&mut r, &mut web);
            assert!(serving_count(&web) >= 3, "{web:?}");
            for index in restarted {
                // Spawned again: starting, then ready.
                web.at(index).state = fake::starting();
                assert_eq!(r.next(&web.view()), Next::Wait);
                web.at(index).state = fake::ready();
            }
            if next == Next::Done {
                break;
            }
        }
        assert_eq!(serving_count(&web), 4);
    }

    #[test]
    fn a_replacement_counts_only_once_it_has_execd() {
        let mut web = Program::new("web", 2, fake::ready());
        let mut r = begin(&web, false);
        run(&mut r, &mut web);
        web.at(0).state = fake::ready();
        web.at(0).exec = ExecState::Pending;
        assert_eq!(run(&mut r, &mut web), (vec![], Next::Wait));
        web.at(0).exec = ExecState::Done;
        assert_eq!(run(&mut r, &mut web), (vec![1], Next::Wait));
    }

    #[test]
    fn running_serves_only_with_immediate_readiness() {
        let mut web = Program::new("web", 2, fake::running());
        web.readiness = Readiness::Immediate;
        let mut r = begin(&web, false);
        run(&mut r, &mut web);
        web.at(0).state = fake::running();
        assert_eq!(run(&mut r, &mut web), (vec![1], Next::Wait));

        let mut api = Program::new("api", 2, fake::ready());
        let mut r = begin(&api, false);
        run(&mut r, &mut api);
        api.at(0).state = fake::running();
        assert_eq!(run(&mut r, &mut api), (vec![], Next::Wait));
    }

    #[test]
    fn a_replacement_that_fails_to_exec_stops_the_rollout() {
        let mut web = Program::new("web", 3, fake::ready());
        let mut r = begin(&web, false);
        run(&mut r, &mut web);
        web.at(0).state = fake::starting();
        web.at(0).exec = ExecState::Failed("exec ./web: No such file".into());
        let failed = Next::Failed {
            index: InstanceIndex(0),
            reason: "exec ./web: No such file".into(),
        };
        assert_eq!(run(&mut r, &mut web), (vec![], failed));
    }

    #[test]
    fn a_replacement_that_does_not_come_back_stops_the_rollout() {
        for (state, name) in [
            (State::Fatal, "fatal"),
            (State::Exited, "exited"),
            (State::Stopped, "stopped"),
        ] {
            let mut web = Program::new("web", 3, fake::ready());
            let mut r = begin(&web, false);
            run(&mut r, &mut web);
            web.at(0).state = state;
            let reason = format!("the instance did not come back ({name})");
            assert_eq!(
                run(&mut r, &mut web),
                (
                    vec![],
                    Next::Failed {
                        index: InstanceIndex(0),
                        reason
                    }
                )
            );
        }
    }

    #[test]
    fn a_program_removed_mid_rollout_ends_it_without_restarting_more() {
        let mut web = Program::new("web", 3, fake::ready());
        let mut r = begin(&web, false);
        run(&mut r, &mut web);
        // Removed, and its instances swept once down.
        web.instances.clear();
        assert_eq!(run(&mut r, &mut web), (vec![], Next::Done));
    }

    #[test]
    fn instances_scaled_away_mid_rollout_are_skipped() {
        let mut web = Program::new("web", 4, fake::ready());
        let mut r = begin(&web, false);
        run(&mut r, &mut web);
        // Scaled to 1 while web[0] was being replaced: 1..3 stop for good.
        for index in 1..4 {
            web.at(index).retiring = true;
            web.at(index).state = fake::stopping(crate::lifecycle::AfterStop::Stay);
        }
        web.at(0).state = fake::ready();
        assert_eq!(run(&mut r, &mut web), (vec![], Next::Done));
    }

    #[test]
    fn the_instance_being_replaced_scaled_away_is_not_waited_for() {
        let mut web = Program::new("web", 2, fake::ready());
        let mut r = begin(&web, false);
        run(&mut r, &mut web);
        web.at(0).retiring = true;
        assert_eq!(run(&mut r, &mut web), (vec![1], Next::Wait));
    }

    #[test]
    fn a_reload_leaves_instances_stopped_by_hand_down() {
        let mut web = Program::new("web", 2, fake::ready());
        web.at(0).state = State::Stopped;
        web.at(0).manual_stop = true;
        let mut r = begin(&web, true);
        assert_eq!(r.next(&web.view()), Next::LeaveStopped(InstanceIndex(0)));
        assert_eq!(r.next(&web.view()), Next::Restart(InstanceIndex(1)));
    }

    #[test]
    fn an_operators_restart_starts_instances_stopped_by_hand() {
        let mut web = Program::new("web", 2, fake::ready());
        web.at(0).state = State::Stopped;
        web.at(0).manual_stop = true;
        let mut r = begin(&web, false);
        assert_eq!(r.next(&web.view()), Next::Restart(InstanceIndex(0)));
    }

    #[test]
    fn retiring_instances_are_not_part_of_a_new_rollout() {
        let mut web = Program::new("web", 3, fake::ready());
        web.at(2).retiring = true;
        let r = begin(&web, false);
        assert_eq!(r.remaining(), 2);
    }

    #[test]
    fn a_program_without_instances_is_done_at_once() {
        let mut web = Program::new("web", 0, fake::ready());
        let mut r = begin(&web, false);
        assert_eq!(run(&mut r, &mut web), (vec![], Next::Done));
    }
}
