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

#[test]
fn the_last_program_is_stopped_first() {
    let now = Instant::now();
    let programs = vec![
        vec![running(10, now)],
        vec![running(20, now), running(21, now)],
    ];
    assert_eq!(
        graceful_step(&programs),
        Step::Stop(ProgramId(1), vec![SlotPos(0), SlotPos(1)])
    );
}

#[test]
fn only_the_instances_that_need_it_are_stopped() {
    let now = Instant::now();
    let programs = vec![vec![
        State::Exited,
        running(20, now),
        stopping(21, now, AfterStop::Stay),
    ]];
    assert_eq!(
        graceful_step(&programs),
        Step::Stop(ProgramId(0), vec![SlotPos(1)])
    );
}

#[test]
fn a_program_still_stopping_is_waited_for_before_the_one_before_it() {
    let now = Instant::now();
    let programs = vec![
        vec![running(10, now)],
        vec![stopping(20, now, AfterStop::Stay)],
    ];
    assert_eq!(graceful_step(&programs), Step::Wait(ProgramId(1)));
}

#[test]
fn programs_already_down_are_passed() {
    let now = Instant::now();
    let programs = vec![
        vec![running(10, now)],
        vec![State::Stopped, State::Exited],
        vec![State::Fatal],
    ];
    assert_eq!(
        graceful_step(&programs),
        Step::Stop(ProgramId(0), vec![SlotPos(0)])
    );
}

#[test]
fn the_shutdown_is_done_when_every_program_is_down() {
    let programs = vec![vec![State::Stopped], vec![], vec![State::Exited]];
    assert_eq!(graceful_step(&programs), Step::Done);
    assert_eq!(graceful_step(&[]), Step::Done);
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
    let graceful = Some(Shutdown::Graceful(2));
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
