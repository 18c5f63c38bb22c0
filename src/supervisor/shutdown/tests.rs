//! The shutdown's specification: order and deadline as functions of states and `now`.

use std::time::{Duration, Instant};

use super::*;

fn running(pid: i32, now: Instant) -> State {
    State::Running { pid, since: now }
}

fn stopping(pid: i32, now: Instant, then: AfterStop) -> State {
    State::Stopping {
        pid,
        since: now,
        kill_at: now + Duration::from_secs(10),
        killed: false,
        then,
        reaped: false,
    }
}

#[test]
fn instances_already_down_or_staying_down_need_no_stop() {
    let now = Instant::now();
    for state in [
        State::Exited,
        State::Stopped,
        State::Fatal,
        stopping(1, now, AfterStop::Stay),
    ] {
        assert!(!needs_stop(&state), "{state:?}");
    }
}

#[test]
fn live_backing_off_and_restarting_instances_need_a_stop() {
    let now = Instant::now();
    for state in [
        running(1, now),
        State::Starting { pid: 1, since: now },
        State::Backoff { until: now },
        // Stopping for a restart: without a Stop it would be respawned mid-shutdown.
        stopping(1, now, AfterStop::Restart),
        stopping(1, now, AfterStop::Failed { healthy: false }),
    ] {
        assert!(needs_stop(&state), "{state:?}");
    }
}

/// Programs without dependencies.
fn independent(programs: Vec<Vec<State>>) -> Vec<Stopping> {
    programs
        .into_iter()
        .map(|states| Stopping {
            states,
            dependents: Vec::new(),
        })
        .collect()
}

#[test]
fn independent_programs_are_stopped_all_at_once() {
    let now = Instant::now();
    let programs = independent(vec![
        vec![running(10, now)],
        vec![running(20, now), running(21, now)],
    ]);
    assert_eq!(
        graceful_step(&programs, true),
        Step::Stop(vec![
            (ProgramId(0), vec![SlotPos(0)]),
            (ProgramId(1), vec![SlotPos(0), SlotPos(1)])
        ])
    );
}

#[test]
fn a_program_is_stopped_only_once_its_dependents_are_down() {
    let now = Instant::now();
    // 0 <- 1 <- 2 (2 starts after 1, 1 after 0), 3 independent.
    let mut programs = independent(vec![
        vec![running(10, now)],
        vec![running(20, now)],
        vec![running(30, now)],
        vec![running(40, now)],
    ]);
    programs[0].dependents = vec![1];
    programs[1].dependents = vec![2];
    assert_eq!(
        graceful_step(&programs, true),
        Step::Stop(vec![
            (ProgramId(2), vec![SlotPos(0)]),
            (ProgramId(3), vec![SlotPos(0)])
        ])
    );
    programs[2].states = vec![stopping(30, now, AfterStop::Stay)];
    programs[3].states = vec![stopping(40, now, AfterStop::Stay)];
    assert_eq!(graceful_step(&programs, true), Step::Wait);
    programs[2].states = vec![State::Stopped];
    assert_eq!(
        graceful_step(&programs, true),
        Step::Stop(vec![(ProgramId(1), vec![SlotPos(0)])])
    );
}

#[test]
fn once_the_order_is_abandoned_every_program_not_yet_stopping_is_stopped_at_once() {
    let now = Instant::now();
    // 0 <- 1 (1, a slow dependent, is stopping and holds 0 back), 2 down.
    let mut programs = independent(vec![
        vec![running(10, now), running(11, now)],
        vec![stopping(20, now, AfterStop::Stay)],
        vec![State::Stopped],
    ]);
    programs[0].dependents = vec![1, 2];
    assert_eq!(graceful_step(&programs, true), Step::Wait);
    assert_eq!(
        held_back(&programs),
        vec![(ProgramId(0), vec![ProgramId(1)])]
    );
    assert_eq!(
        graceful_step(&programs, false),
        Step::Stop(vec![(ProgramId(0), vec![SlotPos(0), SlotPos(1)])])
    );
    // Once stopping, nothing is held back and nothing is stopped again.
    programs[0].states = vec![
        stopping(10, now, AfterStop::Stay),
        stopping(11, now, AfterStop::Stay),
    ];
    assert_eq!(held_back(&programs), vec![]);
    assert_eq!(graceful_step(&programs, false), Step::Wait);
}

#[test]
fn a_program_whose_dependents_are_down_is_not_held_back() {
    let now = Instant::now();
    let mut programs = independent(vec![vec![running(10, now)], vec![State::Exited]]);
    programs[0].dependents = vec![1];
    assert_eq!(held_back(&programs), vec![]);
}

#[test]
fn the_order_gives_way_in_the_last_quarter_and_at_least_the_last_second() {
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    assert_eq!(order_grace(s(30)), ms(7500));
    assert_eq!(order_grace(s(8)), s(2));
    assert_eq!(order_grace(s(4)), s(1));
    // At least a second...
    assert_eq!(order_grace(s(3)), s(1));
    assert_eq!(order_grace(s(2)), s(1));
    // ...but never more than half of the timeout.
    assert_eq!(order_grace(s(1)), ms(500));
    assert_eq!(order_grace(Duration::ZERO), Duration::ZERO);
}

#[test]
fn the_loop_wakes_for_the_abandonment_then_for_the_deadline() {
    let now = Instant::now();
    let mut st = ShutdownState {
        mode: Some(Shutdown::Graceful),
        deadline: Some(now + Duration::from_secs(4)),
        order_until: Some(now + Duration::from_secs(3)),
        ..ShutdownState::default()
    };
    assert_eq!(st.next_deadline(), Some(now + Duration::from_secs(3)));
    st.abandoned = true;
    assert_eq!(st.next_deadline(), Some(now + Duration::from_secs(4)));
    st.abandoned = false;
    st.mode = Some(Shutdown::Fast);
    st.deadline = None;
    assert_eq!(st.next_deadline(), None);
}

#[test]
fn a_dependent_that_never_started_does_not_hold_the_stop() {
    let now = Instant::now();
    let mut programs = independent(vec![vec![running(10, now)], vec![State::Exited]]);
    programs[0].dependents = vec![1];
    assert_eq!(
        graceful_step(&programs, true),
        Step::Stop(vec![(ProgramId(0), vec![SlotPos(0)])])
    );
}

#[test]
fn only_the_instances_that_need_it_are_stopped() {
    let now = Instant::now();
    let programs = independent(vec![vec![
        State::Exited,
        running(20, now),
        stopping(21, now, AfterStop::Stay),
    ]]);
    assert_eq!(
        graceful_step(&programs, true),
        Step::Stop(vec![(ProgramId(0), vec![SlotPos(1)])])
    );
}

#[test]
fn programs_still_stopping_are_waited_for() {
    let now = Instant::now();
    let programs = independent(vec![
        vec![State::Stopped],
        vec![stopping(20, now, AfterStop::Stay)],
    ]);
    assert_eq!(graceful_step(&programs, true), Step::Wait);
}

#[test]
fn the_shutdown_is_done_when_every_program_is_down() {
    let programs = independent(vec![vec![State::Stopped], vec![], vec![State::Exited]]);
    assert_eq!(graceful_step(&programs, true), Step::Done);
    assert_eq!(graceful_step(&[], true), Step::Done);
}

#[test]
fn only_a_graceful_shutdown_with_a_timeout_has_a_deadline() {
    let now = Instant::now();
    let t = Duration::from_secs(30);
    assert_eq!(deadline_for(now, Some(t), false), Some(now + t));
    assert_eq!(deadline_for(now, Some(t), true), None);
    assert_eq!(deadline_for(now, None, false), None);
}

#[test]
fn the_deadline_escalates_only_when_due_and_something_is_still_up() {
    let now = Instant::now();
    let due = Some(now);
    let later = Some(now + Duration::from_secs(1));
    let graceful = Some(Shutdown::Graceful);
    assert_eq!(on_deadline(graceful, due, now, false), Deadline::Escalate);
    assert_eq!(on_deadline(graceful, later, now, false), Deadline::Keep);
    assert_eq!(on_deadline(graceful, due, now, true), Deadline::Keep);
    assert_eq!(on_deadline(graceful, None, now, false), Deadline::Keep);
}

#[test]
fn a_deadline_is_dropped_once_the_shutdown_is_fast() {
    let now = Instant::now();
    assert_eq!(
        on_deadline(Some(Shutdown::Fast), Some(now), now, false),
        Deadline::Drop
    );
}

// --- exit_on_fatal ---------------------------------------------------------------------------

#[test]
fn a_program_ends_badly_when_it_goes_fatal_or_stays_exited_after_a_failure() {
    use super::{ExitReason, ExitStatus, InstanceState as S, ended_badly};
    let failed = Some(ExitStatus::Code(3));
    let ok = Some(ExitStatus::Code(0));
    assert!(ended_badly(S::Running, S::Fatal, failed, None));
    assert!(
        ended_badly(S::Starting, S::Fatal, None, None),
        "a start that cannot succeed"
    );
    assert!(!ended_badly(S::Fatal, S::Fatal, failed, None), "once");
    assert!(ended_badly(S::Ready, S::Exited, failed, None));
    let killed = Some(ExitStatus::Signal {
        signal: 9,
        core_dumped: false,
    });
    assert!(ended_badly(S::Running, S::Exited, killed, None));
    assert!(
        !ended_badly(S::Running, S::Exited, ok, None),
        "a one-shot job that succeeded"
    );
    assert!(
        !ended_badly(S::Running, S::Backoff, failed, None),
        "it will be restarted"
    );
    assert!(
        !ended_badly(S::Stopping, S::Stopped, killed, None),
        "stopped by hand"
    );
    // Stopped by warden for a failure of its own verdict, then not restarted (`restart =
    // "never"`): a failure although the program exited 0 on SIGTERM.
    for reason in [
        ExitReason::StartTimeout,
        ExitReason::Watchdog,
        ExitReason::Health,
        ExitReason::Oom,
    ] {
        assert!(
            ended_badly(S::Stopping, S::Exited, ok, Some(reason)),
            "{reason}"
        );
    }
}

#[test]
fn the_exit_status_is_the_programs_code_or_128_plus_its_signal() {
    use super::{ExitStatus, exit_status_of};
    assert_eq!(exit_status_of(Some(ExitStatus::Code(3))), 3);
    assert_eq!(exit_status_of(Some(ExitStatus::Code(256))), 1, "never 0");
    let sig = |signal| {
        Some(ExitStatus::Signal {
            signal,
            core_dumped: false,
        })
    };
    assert_eq!(exit_status_of(sig(9)), 137);
    assert_eq!(exit_status_of(sig(15)), 143);
    assert_eq!(exit_status_of(None), 1);
    assert_eq!(exit_status_of(Some(ExitStatus::Code(0))), 1);
}
