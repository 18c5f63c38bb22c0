//! Plain, borrowed snapshots of a program and its instances, the input of the pure loop-level
//! policy (waiter goals in [`super::waiters`], rollout progression in [`super::rollout`]).
//!
//! Those functions see names, states and flags, never the supervisor's tables or index types,
//! so that they can be tested without a supervisor. This file builds snapshots and answers
//! questions about them; it must not change anything.

use super::table::{InstanceIndex, ProgramId};
use super::{ExecState, Readiness, Supervisor};
use crate::lifecycle::State;

/// A program as the loop-level policy sees it.
#[derive(Debug, Clone)]
pub(super) struct ProgramView<'a> {
    /// Its name.
    pub name: &'a str,
    /// When its instances count as serving (see [`serving`]).
    pub readiness: Readiness,
    /// A rolling restart of it is under way (always `false` while rollouts advance).
    pub rolling: bool,
    /// Its instances, in slot order (a retiring one may share an index with none other).
    pub instances: Vec<InstanceView<'a>>,
}

/// One instance as the loop-level policy sees it.
#[derive(Debug, Clone)]
pub(super) struct InstanceView<'a> {
    /// Its index (`web[2]`).
    pub index: InstanceIndex,
    /// Its state.
    pub state: &'a State,
    /// Whether its current process has exec'd.
    pub exec: &'a ExecState,
    /// Scaled away: stopping for good.
    pub retiring: bool,
    /// Stopped by hand, and kept down until started again.
    pub manual_stop: bool,
    /// Held down until its dependencies are ready (`waiting`).
    pub held: bool,
}

impl ProgramView<'_> {
    /// The instance with `index`, if the program still has one.
    pub fn instance(&self, index: InstanceIndex) -> Option<&InstanceView<'_>> {
        self.instances.iter().find(|i| i.index == index)
    }
}

impl InstanceView<'_> {
    /// Whether the instance serves and its process has exec'd: a replacement is in place.
    pub fn serves(&self, readiness: Readiness) -> bool {
        serving(self.state, readiness) && *self.exec == ExecState::Done
    }
}

/// Whether an instance in `state` counts as serving: `ready`, or `running` when readiness is
/// immediate.
pub(super) fn serving(state: &State, readiness: Readiness) -> bool {
    match state {
        State::Ready { .. } => true,
        State::Running { .. } => readiness == Readiness::Immediate,
        _ => false,
    }
}

impl Supervisor {
    /// A snapshot of program `p`.
    pub(super) fn program_view(&self, p: ProgramId) -> ProgramView<'_> {
        let prog = &self.table[p];
        ProgramView {
            name: &prog.def.name,
            readiness: prog.def.policy.readiness,
            rolling: self.rolling(p),
            instances: prog
                .slots()
                .iter()
                .map(|s| InstanceView {
                    index: s.index,
                    state: &s.inst.state,
                    exec: &s.exec,
                    retiring: s.retiring,
                    manual_stop: s.inst.manual_stop,
                    held: s.hold.is_some() && s.is_down(),
                })
                .collect(),
        }
    }
}

/// Programs built by hand for the policy's unit tests: owned states, borrowed as views.
#[cfg(test)]
pub(super) mod fake {
    use std::time::Instant;

    use super::{ExecState, InstanceIndex, InstanceView, ProgramView, Readiness};
    use crate::lifecycle::{AfterStop, State};

    /// An instance: what [`InstanceView`] borrows.
    #[derive(Debug, Clone)]
    pub struct Instance {
        pub index: usize,
        pub state: State,
        pub exec: ExecState,
        pub retiring: bool,
        pub manual_stop: bool,
        pub held: bool,
    }

    /// A program: what [`ProgramView`] borrows.
    #[derive(Debug, Clone)]
    pub struct Program {
        pub name: String,
        pub readiness: Readiness,
        pub rolling: bool,
        pub instances: Vec<Instance>,
    }

    impl Program {
        /// `name` with `n` instances in `state`, exec'd, notify readiness.
        pub fn new(name: &str, n: usize, state: State) -> Program {
            Program {
                name: name.to_string(),
                readiness: Readiness::Notify,
                rolling: false,
                instances: (0..n)
                    .map(|index| Instance {
                        index,
                        state: state.clone(),
                        exec: ExecState::Done,
                        retiring: false,
                        manual_stop: false,
                        held: false,
                    })
                    .collect(),
            }
        }

        pub fn view(&self) -> ProgramView<'_> {
            ProgramView {
                name: &self.name,
                readiness: self.readiness,
                rolling: self.rolling,
                instances: self
                    .instances
                    .iter()
                    .map(|i| InstanceView {
                        index: InstanceIndex(i.index),
                        state: &i.state,
                        exec: &i.exec,
                        retiring: i.retiring,
                        manual_stop: i.manual_stop,
                        held: i.held,
                    })
                    .collect(),
            }
        }

        /// The instance with `index`.
        pub fn at(&mut self, index: usize) -> &mut Instance {
            self.instances
                .iter_mut()
                .find(|i| i.index == index)
                .expect("no such instance")
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    pub fn ready() -> State {
        State::Ready {
            pid: 100,
            since: t0(),
            ready_at: t0(),
        }
    }

    pub fn running() -> State {
        State::Running {
            pid: 100,
            since: t0(),
        }
    }

    pub fn starting() -> State {
        State::Starting {
            pid: 100,
            since: t0(),
        }
    }

    /// Stopping, to spawn again once down (a restart).
    pub fn restarting() -> State {
        stopping(AfterStop::Restart)
    }

    pub fn stopping(then: AfterStop) -> State {
        State::Stopping {
            pid: 100,
            since: t0(),
            kill_at: t0(),
            killed: false,
            then,
            reaped: false,
        }
    }
}
