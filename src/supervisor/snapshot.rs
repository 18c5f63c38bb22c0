//! Plain, borrowed snapshots of a program and its instances, the input of the pure loop-level
//! policy (waiter goals in [`super::waiters`], rollout progression in [`super::rollout`]).
//!
//! Those functions see names, states and flags, never the supervisor's tables or index types,
//! so that they can be tested without a supervisor. This file builds snapshots and answers
//! questions about them; it must not change anything.

use std::time::Duration;

use super::table::{InstanceIndex, ProgramId, SlotId};
use super::{ExecState, Readiness, Supervisor};
use crate::lifecycle::State;
use crate::policy::{ExitReason, ExitStatus};

/// A program as the loop-level policy sees it.
#[derive(Debug, Clone)]
pub(super) struct ProgramView<'a> {
    /// Its name.
    pub name: &'a str,
    /// When its instances count as serving (see [`serving`]).
    pub readiness: Readiness,
    /// How long a notify or health readiness may take (`start_timeout`).
    pub start_timeout: Option<Duration>,
    /// A rolling restart of it is under way (always `false` while rollouts advance).
    pub rolling: bool,
    /// The sequence number of its last rollout that failed on probation (0: none), and the
    /// message a request waiting on it fails with.
    pub rolled_back: (u64, Option<&'a str>),
    /// Its instances, in slot order (a retiring one may share an index with none other).
    pub instances: Vec<InstanceView<'a>>,
}

/// One instance as the loop-level policy sees it.
#[derive(Debug, Clone)]
pub(super) struct InstanceView<'a> {
    /// Its slot.
    pub id: SlotId,
    /// Its index (`web[2]`).
    pub index: InstanceIndex,
    /// A surge replacement that has not taken over yet.
    pub incoming: bool,
    /// How its last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Why warden ended its last process, when on a verdict of its own.
    pub last_reason: Option<ExitReason>,
    /// The health check's error that last restarted it.
    pub health_error: Option<&'a str>,
    /// Its current process passed a health check (always `true` without one).
    pub health_passed: bool,
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
    /// The instance with `index`, if the program still has one (not a surge replacement
    /// beside it).
    pub fn instance(&self, index: InstanceIndex) -> Option<&InstanceView<'_>> {
        self.instances
            .iter()
            .filter(|i| i.index == index && !i.incoming)
            .min_by_key(|i| i.retiring)
    }

    /// The instance in slot `id`, if it still exists.
    pub fn by_id(&self, id: SlotId) -> Option<&InstanceView<'_>> {
        self.instances.iter().find(|i| i.id == id)
    }
}

impl InstanceView<'_> {
    /// Whether the instance serves and its process has exec'd: a replacement is in place.
    pub fn serves(&self, readiness: Readiness) -> bool {
        serving(self.state, readiness) && *self.exec == ExecState::Done
    }

    /// Whether nothing of it runs.
    pub fn is_down(&self) -> bool {
        super::table::is_down(self.state)
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
            start_timeout: prog.def.policy.start_timeout,
            rolling: self.rolling(p),
            rolled_back: (prog.rollbacks.0, prog.rollbacks.1.as_deref()),
            instances: prog
                .slots()
                .iter()
                .map(|s| InstanceView {
                    id: s.id,
                    index: s.index,
                    incoming: s.incoming,
                    last_exit: s.inst.last_exit,
                    last_reason: s.inst.last_reason,
                    health_error: s.health_error.as_deref(),
                    health_passed: prog.checker.is_none()
                        || s.health.as_ref().is_some_and(|t| t.last_pass().is_some()),
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

    use super::{ExecState, InstanceIndex, InstanceView, ProgramView, Readiness, SlotId};
    use crate::lifecycle::{AfterStop, State};
    use crate::policy::{ExitReason, ExitStatus};

    /// An instance: what [`InstanceView`] borrows.
    #[derive(Debug, Clone)]
    pub struct Instance {
        pub id: u32,
        pub index: usize,
        pub incoming: bool,
        pub last_exit: Option<ExitStatus>,
        pub last_reason: Option<ExitReason>,
        pub health_error: Option<String>,
        pub health_passed: bool,
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
        pub rolled_back: (u64, Option<String>),
        pub instances: Vec<Instance>,
    }

    impl Program {
        /// `name` with `n` instances in `state`, exec'd, notify readiness.
        pub fn new(name: &str, n: usize, state: State) -> Program {
            Program {
                name: name.to_string(),
                readiness: Readiness::Notify,
                rolling: false,
                rolled_back: (0, None),
                instances: (0..n)
                    .map(|index| Instance {
                        id: index as u32,
                        index,
                        incoming: false,
                        last_exit: None,
                        last_reason: None,
                        health_error: None,
                        health_passed: true,
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
                start_timeout: None,
                rolling: self.rolling,
                rolled_back: (self.rolled_back.0, self.rolled_back.1.as_deref()),
                instances: self
                    .instances
                    .iter()
                    .map(|i| InstanceView {
                        id: SlotId(i.id),
                        index: InstanceIndex(i.index),
                        incoming: i.incoming,
                        last_exit: i.last_exit,
                        last_reason: i.last_reason,
                        health_error: i.health_error.as_deref(),
                        health_passed: i.health_passed,
                        state: &i.state,
                        exec: &i.exec,
                        retiring: i.retiring,
                        manual_stop: i.manual_stop,
                        held: i.held,
                    })
                    .collect(),
            }
        }

        /// The instance with `index` (not a surge replacement).
        pub fn at(&mut self, index: usize) -> &mut Instance {
            self.instances
                .iter_mut()
                .find(|i| i.index == index && !i.incoming)
                .expect("no such instance")
        }

        /// The instance in slot `id`.
        pub fn slot(&mut self, id: u32) -> &mut Instance {
            self.instances
                .iter_mut()
                .find(|i| i.id == id)
                .expect("no such slot")
        }

        /// Adds a surge replacement for `index` in slot `id`, starting.
        pub fn add_incoming(&mut self, index: usize, id: u32, state: State) {
            let mut i = self.at(index).clone();
            i.id = id;
            i.incoming = true;
            i.state = state;
            i.last_exit = None;
            self.instances.push(i);
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
