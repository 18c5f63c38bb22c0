//! The event bus: every state change, as it happens, for `warden events` subscribers.
//!
//! The supervisor publishes through one method, [`EventBus::publish`]; `apply` publishes each
//! instance's change through [`Supervisor::publish_change`], which turns the same [`Change`] the
//! log line is made of into events with the pure [`events_of`] (unit-tested below). Events wait
//! in the bus until the top of the next turn ([`Supervisor::deliver_events`], from `settle`),
//! and then go to the control server, which queues them to each subscriber within its bound
//! and cuts off one that does not read ([`ControlServer::broadcast`]). With no subscriber,
//! publishing costs one test.
//!
//! This file must not decide anything about instances, nor write to connections itself.
//!
//! [`ControlServer::broadcast`]: crate::control::server::ControlServer::broadcast

use std::time::{Duration, Instant, SystemTime};

use super::table::{ProgramId, SlotPos};
use super::{Change, InstanceState, Supervisor};
use crate::control::Reply;
use crate::control::events::{EventRecord, What};
use crate::control::server::ConnId;
use crate::lifecycle::State;
use crate::policy::{ExitReason, ExitStatus};

/// Something to tell subscribers about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A change of one instance (`pid`: the process it concerns).
    Instance {
        program: String,
        instance: usize,
        pid: Option<i32>,
        what: What,
    },
    /// A reload was applied: what it did, one line each.
    ReloadApplied { changes: Vec<String> },
    /// A rollout of `program` was rolled back.
    // Published by rollouts' rollback (`rollout/run.rs`).
    RolledBack { program: String, reason: String },
    /// This image took over from version `from` (`warden upgrade`).
    Upgraded { from: String, to: String },
}

impl Event {
    /// A reload applied with `plan`: its lines, as `warden reload` prints them, less the
    /// programs kept as they were.
    pub(crate) fn reload_applied(plan: &super::ReloadPlan) -> Event {
        let changes = plan
            .lines()
            .into_iter()
            .filter(|l| !l.starts_with("keep "))
            .collect();
        Event::ReloadApplied { changes }
    }

    /// The event's wire form, stamped with `time`.
    fn record(self, time: SystemTime) -> EventRecord {
        match self {
            Event::Instance {
                program,
                instance,
                pid,
                what,
            } => EventRecord::new(time, Some(program), Some(instance), pid, what),
            Event::ReloadApplied { changes } => {
                EventRecord::new(time, None, None, None, What::ReloadApplied { changes })
            }
            Event::RolledBack { program, reason } => {
                EventRecord::new(time, Some(program), None, None, What::RolledBack { reason })
            }
            Event::Upgraded { from, to } => {
                EventRecord::new(time, None, None, None, What::Upgraded { from, to })
            }
        }
    }
}

/// Events published and not yet delivered.
#[derive(Debug, Default)]
pub(crate) struct EventBus {
    pending: Vec<EventRecord>,
    /// Somebody subscribed (as of the last delivery, or a subscription since): without
    /// subscribers, nothing is kept.
    listening: bool,
}

impl EventBus {
    /// Publishes `event`, stamped now; dropped when nobody listens.
    pub(crate) fn publish(&mut self, event: Event) {
        if self.listening {
            self.pending.push(event.record(SystemTime::now()));
        }
    }

    /// Whether anybody listens (building an event may then be skipped).
    pub(crate) fn listening(&self) -> bool {
        self.listening
    }
}

/// Why an instance that went down is held (`deps.rs`), as its `waiting` event tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// The programs it waits for.
    pub(crate) waiting_for: Vec<String>,
    /// Why it was stopped (`db stopped`), or `None` when it has not started yet.
    pub(crate) reason: Option<String>,
}

/// What one instance's change across an `apply` tells subscribers, in the order it happened:
/// the old process's exit, then the backoff, a stop or giving up, then the new process's
/// start and readiness. `delay`: the backoff left, when the instance is in backoff;
/// `fatal_reason`: the notes of the change, said when it gave up; `held`: why it is held down
/// by its dependencies, when it is — a stop is then `waiting`, not `stopped` (which is a stop
/// by hand, kept down).
pub(crate) fn events_of(
    change: &Change,
    last_exit: Option<ExitStatus>,
    last_reason: Option<ExitReason>,
    delay: Option<Duration>,
    fatal_reason: Option<String>,
    held: Option<Held>,
) -> Vec<(Option<i32>, What)> {
    let (before, after) = (change.before, change.after);
    let new_pid = change.pid_after.filter(|&p| change.pid_before != Some(p));
    let mut out = Vec::new();
    let exited = change.pid_before.filter(|&p| change.pid_after != Some(p));
    if let Some(pid) = exited {
        out.push((Some(pid), exit_event(last_exit, last_reason)));
    }
    let entered = |s: InstanceState| after == s && (before != s || exited.is_some());
    // A respawn at once (no backoff) is a restart all the same: told with no delay.
    if entered(InstanceState::Backoff) || (exited.is_some() && new_pid.is_some()) {
        let delay_ms = delay.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        out.push((None, What::Restarting { delay_ms }));
    }
    if after == InstanceState::Stopping && before != InstanceState::Stopping {
        out.push((change.pid_after, What::Stopping));
    }
    if after == InstanceState::Stopped && before != InstanceState::Stopped {
        out.push((None, held.map_or(What::Stopped, Held::event)));
    }
    if after == InstanceState::Fatal && before != InstanceState::Fatal {
        out.push((
            None,
            What::Fatal {
                reason: fatal_reason,
            },
        ));
    }
    if let Some(pid) = new_pid {
        out.push((Some(pid), What::Started));
    }
    if after == InstanceState::Ready && (before != InstanceState::Ready || new_pid.is_some()) {
        out.push((change.pid_after, What::Ready));
    }
    out
}

impl Held {
    /// The `waiting` event.
    pub(crate) fn event(self) -> What {
        What::Waiting {
            waiting_for: self.waiting_for,
            reason: self.reason,
        }
    }
}

/// The `exited` event of a process that ended with `status` (for `reason`, if warden ended it).
fn exit_event(status: Option<ExitStatus>, reason: Option<ExitReason>) -> What {
    let (code, signal) = match status {
        Some(ExitStatus::Code(c)) => (Some(c), None),
        Some(ExitStatus::Signal { signal, .. }) => (
            None,
            Some(
                crate::policy::known_signal_name(signal).unwrap_or_else(|| format!("SIG{signal}")),
            ),
        ),
        None => (None, None),
    };
    What::Exited {
        code,
        signal,
        reason: reason.map(|r| r.name().to_string()),
    }
}

impl Supervisor {
    /// Publishes what instance `pos` of program `p` went through in one `apply` (`notes`: the
    /// reasons its log line gives).
    pub(super) fn publish_change(
        &mut self,
        p: ProgramId,
        pos: SlotPos,
        change: &Change,
        notes: &[(log::Level, String)],
    ) {
        if !self.events.listening() {
            return;
        }
        let prog = &self.table[p];
        let slot = &prog[pos];
        let delay = match slot.inst.state {
            State::Backoff { until } => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        };
        let why: Vec<&str> = notes.iter().map(|(_, m)| m.as_str()).collect();
        let fatal_reason = (!why.is_empty()).then(|| why.join("; "));
        let held = slot.hold.as_ref().filter(|_| slot.is_down()).map(|h| Held {
            waiting_for: self.waiting_for(p),
            reason: h.reason.clone(),
        });
        let happened = events_of(
            change,
            slot.inst.last_exit,
            slot.inst.last_reason,
            delay,
            fatal_reason,
            held,
        );
        let (program, instance) = (prog.def.name.clone(), slot.index.0);
        for (pid, what) in happened {
            self.events.publish(Event::Instance {
                program: program.clone(),
                instance,
                pid,
                what,
            });
        }
    }

    /// Publishes `what` about instance `pos` of program `p`, with no process, for what is not
    /// a change of its state: a start held before it began is `waiting`, a stop by hand of an
    /// instance held down (`stopped` already) is `stopped` (`deps.rs`, `programs.rs`).
    pub(super) fn publish_about(&mut self, p: ProgramId, pos: SlotPos, what: What) {
        if !self.events.listening() {
            return;
        }
        let (program, instance) = (self.table[p].def.name.clone(), self.table[p][pos].index.0);
        self.events.publish(Event::Instance {
            program,
            instance,
            pid: None,
            what,
        });
    }

    /// Hands the events published since the last turn to the control server's subscribers.
    pub(super) fn deliver_events(&mut self) {
        if !self.events.listening {
            // Nothing was kept, and nobody to tell: the usual turn costs this test only.
            return;
        }
        let Some(server) = self.plane.server.as_mut() else {
            self.events.pending.clear();
            self.events.listening = false;
            return;
        };
        let lines: Vec<String> = self
            .events
            .pending
            .drain(..)
            .map(|e| Reply::event(e).to_line())
            .collect();
        server.broadcast(&lines, self.poll.registry());
        self.events.listening = server.subscribers() > 0;
    }

    /// `events`: connection `conn` receives every event from now on; its request stays in
    /// progress until warden stops.
    pub(super) fn on_events(&mut self, conn: ConnId) {
        if let Some(server) = self.plane.server.as_mut() {
            server.subscribe(conn);
            self.events.listening = true;
        }
    }

    /// Serves a subscriber an earlier image handed over (`warden upgrade`): its stream goes on.
    pub(super) fn adopt_subscriber(&mut self, stream: std::os::unix::net::UnixStream) {
        let registry = self.poll.registry();
        if let Some(server) = self.plane.server.as_mut()
            && server.adopt_subscriber(stream, registry)
        {
            self.events.listening = true;
        }
    }

    /// Ends the event streams as warden stops: what is left to deliver, then the final line.
    pub(super) fn end_events(&mut self) {
        self.deliver_events();
        if let Some(server) = self.plane.server.as_mut() {
            server.end_streams();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState as S;

    fn change(before: S, after: S, pid_before: Option<i32>, pid_after: Option<i32>) -> Change {
        Change {
            tag: "web[0]".into(),
            before,
            after,
            pid_before,
            pid_after,
            first_start: false,
        }
    }

    fn names(events: &[(Option<i32>, What)]) -> Vec<(Option<i32>, &'static str)> {
        events
            .iter()
            .map(|(pid, w)| {
                let name = match w {
                    What::Started => "started",
                    What::Ready => "ready",
                    What::Stopping => "stopping",
                    What::Exited { .. } => "exited",
                    What::Restarting { .. } => "restarting",
                    What::Stopped => "stopped",
                    What::Fatal { .. } => "fatal",
                    What::Health { .. } => "health",
                    What::ReloadApplied { .. } => "reload-applied",
                    What::RolledBack { .. } => "rolled-back",
                    What::Upgraded { .. } => "upgraded",
                    What::Waiting { .. } => "waiting",
                    What::Other { .. } => "other",
                };
                (*pid, name)
            })
            .collect()
    }

    #[test]
    fn a_crash_is_an_exit_of_the_old_pid_then_a_backoff_with_its_delay() {
        let c = change(S::Ready, S::Backoff, Some(10), None);
        let e = events_of(
            &c,
            Some(ExitStatus::Code(3)),
            None,
            Some(Duration::from_millis(1_250)),
            None,
            None,
        );
        assert_eq!(names(&e), [(Some(10), "exited"), (None, "restarting")]);
        assert_eq!(
            e[0].1,
            What::Exited {
                code: Some(3),
                signal: None,
                reason: None
            }
        );
        assert_eq!(e[1].1, What::Restarting { delay_ms: 1_250 });
    }

    #[test]
    fn a_respawn_at_once_is_an_exit_a_restart_without_delay_then_a_start() {
        let c = change(S::Running, S::Running, Some(10), Some(11));
        let e = events_of(&c, Some(ExitStatus::Code(0)), None, None, None, None);
        assert_eq!(
            names(&e),
            [
                (Some(10), "exited"),
                (None, "restarting"),
                (Some(11), "started")
            ]
        );
        assert_eq!(e[1].1, What::Restarting { delay_ms: 0 });
    }

    #[test]
    fn a_first_start_ready_at_once_is_started_then_ready() {
        let c = change(S::Exited, S::Ready, None, Some(12));
        assert_eq!(
            names(&events_of(&c, None, None, None, None, None)),
            [(Some(12), "started"), (Some(12), "ready")]
        );
        let c = change(S::Starting, S::Ready, Some(12), Some(12));
        assert_eq!(
            names(&events_of(&c, None, None, None, None, None)),
            [(Some(12), "ready")]
        );
    }

    #[test]
    fn a_kill_for_health_says_the_signal_and_the_reason() {
        let c = change(S::Stopping, S::Backoff, Some(10), None);
        let killed = ExitStatus::Signal {
            signal: 9,
            core_dumped: false,
        };
        let e = events_of(&c, Some(killed), Some(ExitReason::Health), None, None, None);
        assert_eq!(
            e[0].1,
            What::Exited {
                code: None,
                signal: Some("SIGKILL".into()),
                reason: Some("health".into())
            }
        );
        assert_eq!(names(&e)[1], (None, "restarting"));
    }

    #[test]
    fn a_stop_by_hand_is_stopping_then_exited_and_stopped() {
        let c = change(S::Ready, S::Stopping, Some(10), Some(10));
        assert_eq!(
            names(&events_of(&c, None, None, None, None, None)),
            [(Some(10), "stopping")]
        );
        let c = change(S::Stopping, S::Stopped, Some(10), None);
        let term = ExitStatus::Signal {
            signal: 15,
            core_dumped: false,
        };
        assert_eq!(
            names(&events_of(&c, Some(term), None, None, None, None)),
            [(Some(10), "exited"), (None, "stopped")]
        );
    }

    #[test]
    fn a_stop_for_a_required_program_is_waiting_with_what_for_and_why_not_stopped() {
        let held = Held {
            waiting_for: vec!["db".into()],
            reason: Some("db stopped".into()),
        };
        let c = change(S::Stopping, S::Stopped, Some(10), None);
        let term = ExitStatus::Signal {
            signal: 15,
            core_dumped: false,
        };
        let e = events_of(&c, Some(term), None, None, None, Some(held.clone()));
        assert_eq!(names(&e), [(Some(10), "exited"), (None, "waiting")]);
        assert_eq!(
            e[1].1,
            What::Waiting {
                waiting_for: vec!["db".into()],
                reason: Some("db stopped".into())
            }
        );
        // Down already (in backoff): held at once.
        let c = change(S::Backoff, S::Stopped, None, None);
        let e = events_of(&c, None, None, None, None, Some(held));
        assert_eq!(names(&e), [(None, "waiting")]);
    }

    #[test]
    fn giving_up_is_fatal_with_the_reason() {
        let c = change(S::Running, S::Fatal, Some(10), None);
        let why = Some("crash loop: 5 exits in 10s".to_string());
        let e = events_of(&c, Some(ExitStatus::Code(1)), None, None, why.clone(), None);
        assert_eq!(names(&e), [(Some(10), "exited"), (None, "fatal")]);
        assert_eq!(e[1].1, What::Fatal { reason: why });
    }

    #[test]
    fn no_change_no_event() {
        let c = change(S::Ready, S::Ready, Some(10), Some(10));
        assert!(events_of(&c, None, None, None, None, None).is_empty());
        let c = change(S::Backoff, S::Backoff, None, None);
        assert!(events_of(&c, None, None, None, None, None).is_empty());
    }
}
