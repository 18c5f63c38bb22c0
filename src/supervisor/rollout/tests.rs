//! Rollout progression's specification: the program is a hand-built snapshot, and each
//! test plays the supervisor's part (restart what it is told, report back).

use std::time::{Duration, Instant};

use super::*;
use crate::policy::{ExitReason, ExitStatus};
use crate::supervisor::Readiness;
use crate::supervisor::snapshot::fake::{self, Program};
use crate::supervisor::snapshot::serving;

fn begin(program: &Program, keep_stopped: bool) -> Rollout {
    Rollout::new(
        ProgramId(0),
        &program.view(),
        keep_stopped,
        Update::Replace,
        Duration::ZERO,
    )
}

fn now() -> Instant {
    Instant::now()
}

/// Plays the supervisor: asks for the next step, carries out `Restart` (the instance is
/// stopping to come back) and `LeaveStopped`, and returns the first other answer with
/// the instances restarted on the way.
fn run(r: &mut Rollout, program: &mut Program) -> (Vec<usize>, Next) {
    let mut restarted = Vec::new();
    loop {
        match r.next(&program.view(), now()) {
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
            assert_eq!(r.next(&web.view(), now()), Next::Wait);
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
    assert_eq!(
        r.next(&web.view(), now()),
        Next::LeaveStopped(InstanceIndex(0))
    );
    assert_eq!(r.next(&web.view(), now()), Next::Restart(InstanceIndex(1)));
}

#[test]
fn an_operators_restart_starts_instances_stopped_by_hand() {
    let mut web = Program::new("web", 2, fake::ready());
    web.at(0).state = State::Stopped;
    web.at(0).manual_stop = true;
    let mut r = begin(&web, false);
    assert_eq!(r.next(&web.view(), now()), Next::Restart(InstanceIndex(0)));
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

fn surge(program: &Program, probation: Duration) -> Rollout {
    Rollout::new(
        ProgramId(0),
        &program.view(),
        false,
        Update::Surge,
        probation,
    )
}

fn exited(code: i32) -> State {
    let _ = code;
    State::Backoff {
        until: Instant::now() + Duration::from_secs(1),
    }
}

#[test]
fn surge_starts_the_replacement_beside_and_retires_the_old_once_it_serves() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::ZERO);
    assert_eq!(r.next(&web.view(), t0), Next::Surge(InstanceIndex(0)));
    web.add_incoming(0, 7, fake::starting());
    r.surged(SlotId(7), t0);
    assert_eq!(r.incoming(), Some(SlotId(7)));
    // The old one keeps serving while the replacement starts.
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    web.slot(7).state = fake::ready();
    let retire = Next::Retire {
        old: SlotId(0),
        new: SlotId(7),
    };
    assert_eq!(r.next(&web.view(), t0), retire);
    assert_eq!(r.incoming(), None);
    // Told to stop: the rollout waits for it to be gone.
    web.slot(0).retiring = true;
    web.slot(0).state = fake::stopping(crate::lifecycle::AfterStop::Stay);
    web.slot(7).incoming = false;
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    web.instances.retain(|i| i.id != 0);
    assert_eq!(r.next(&web.view(), t0), Next::Done);
}

#[test]
fn surge_replaces_one_instance_at_a_time_the_old_gone_before_the_next() {
    let mut web = Program::new("web", 2, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::ZERO);
    assert_eq!(r.next(&web.view(), t0), Next::Surge(InstanceIndex(0)));
    web.add_incoming(0, 7, fake::ready());
    r.surged(SlotId(7), t0);
    assert!(matches!(r.next(&web.view(), t0), Next::Retire { .. }));
    web.slot(0).state = fake::stopping(crate::lifecycle::AfterStop::Stay);
    web.slot(0).retiring = true;
    web.slot(7).incoming = false;
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    web.slot(0).state = State::Stopped;
    assert_eq!(r.next(&web.view(), t0), Next::Surge(InstanceIndex(1)));
}

#[test]
fn a_surge_beside_an_instance_that_is_down_is_a_plain_restart() {
    let mut web = Program::new("web", 1, fake::ready());
    web.at(0).state = State::Fatal;
    let mut r = surge(&web, Duration::ZERO);
    assert_eq!(r.next(&web.view(), now()), Next::Restart(InstanceIndex(0)));
}

#[test]
fn a_surge_replacement_that_exits_on_probation_rolls_the_rollout_back() {
    let mut web = Program::new("web", 2, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, fake::starting());
    r.surged(SlotId(7), t0);
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    web.slot(7).state = exited(1);
    web.slot(7).last_exit = Some(ExitStatus::Code(1));
    let next = r.next(&web.view(), t0 + Duration::from_millis(400));
    assert_eq!(
        next,
        Next::RollBack {
            reason: "web[0] exited with status 1 after 400ms".into()
        }
    );
    // The replacement that never took over is the one to stop.
    assert_eq!(r.incoming(), Some(SlotId(7)));
}

#[test]
fn a_replacement_killed_by_a_signal_is_named_by_it() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, fake::ready());
    r.surged(SlotId(7), t0);
    r.next(&web.view(), t0);
    web.slot(7).state = State::Fatal;
    web.slot(7).last_exit = Some(ExitStatus::Signal {
        signal: 11,
        core_dumped: false,
    });
    let Next::RollBack { reason } = r.next(&web.view(), t0 + Duration::from_secs(2)) else {
        panic!("not rolled back");
    };
    assert_eq!(
        reason,
        "web[0] was killed by SIGSEGV and went fatal after 2s"
    );
}

#[test]
fn a_replacement_not_ready_when_its_probation_ends_rolls_back() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, fake::starting());
    r.surged(SlotId(7), t0);
    assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(10)));
    assert_eq!(r.next(&web.view(), t0 + Duration::from_secs(9)), Next::Wait);
    assert_eq!(
        r.next(&web.view(), t0 + Duration::from_secs(10)),
        Next::RollBack {
            reason: "web[0] did not become ready within its probation (10s)".into()
        }
    );
}

#[test]
fn a_replacement_restarted_by_its_health_check_on_probation_rolls_back() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, fake::ready());
    r.surged(SlotId(7), t0);
    assert!(matches!(r.next(&web.view(), t0), Next::Retire { .. }));
    web.slot(0).state = State::Stopped;
    web.slot(0).retiring = true;
    web.slot(7).incoming = false;
    // Probation goes on after the replacement took over.
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    let i = web.slot(7);
    i.state = fake::stopping(crate::lifecycle::AfterStop::Failed { healthy: false });
    i.last_reason = Some(ExitReason::Health);
    i.health_error = Some("HTTP 500".into());
    assert_eq!(
        r.next(&web.view(), t0 + Duration::from_secs(3)),
        Next::RollBack {
            reason: "web[0] failed its health check (HTTP 500) after 3s".into()
        }
    );
}

#[test]
fn the_rollout_is_done_only_once_every_replacement_passed_probation() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, fake::ready());
    r.surged(SlotId(7), t0);
    r.next(&web.view(), t0);
    web.instances.retain(|i| i.id != 0);
    web.slot(7).incoming = false;
    assert_eq!(r.next(&web.view(), t0 + Duration::from_secs(5)), Next::Wait);
    assert_eq!(
        r.next(&web.view(), t0 + Duration::from_secs(10)),
        Next::Done
    );
}

#[test]
fn a_replace_rollout_on_probation_rolls_back_a_replacement_that_crashes() {
    let mut web = Program::new("web", 2, fake::ready());
    let t0 = now();
    let mut r = Rollout::new(
        ProgramId(0),
        &web.view(),
        false,
        Update::Replace,
        Duration::from_secs(10),
    );
    assert_eq!(r.next(&web.view(), t0), Next::Restart(InstanceIndex(0)));
    web.at(0).state = fake::restarting();
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    // The new process (another pid) starts, then crashes: backoff, not yet fatal.
    web.at(0).state = State::Starting {
        pid: 200,
        since: t0,
    };
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    web.at(0).state = exited(3);
    web.at(0).last_exit = Some(ExitStatus::Code(3));
    assert!(matches!(
        r.next(&web.view(), t0 + Duration::from_secs(1)),
        Next::RollBack { reason } if reason == "web[0] exited with status 3 after 1s"
    ));
}

#[test]
fn a_replacement_that_respawned_under_another_pid_failed() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(
        0,
        7,
        State::Starting {
            pid: 300,
            since: t0,
        },
    );
    r.surged(SlotId(7), t0);
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    web.slot(7).state = State::Starting {
        pid: 301,
        since: t0,
    };
    web.slot(7).last_exit = Some(ExitStatus::Code(0));
    assert!(matches!(
        r.next(&web.view(), t0),
        Next::RollBack { reason } if reason.starts_with("web[0] exited with status 0")
    ));
}

#[test]
fn a_surge_replacement_with_a_health_check_takes_over_only_once_it_passed() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, fake::ready());
    web.slot(7).health_passed = false;
    r.surged(SlotId(7), t0);
    assert_eq!(r.next(&web.view(), t0), Next::Wait);
    web.slot(7).health_passed = true;
    assert!(matches!(r.next(&web.view(), t0), Next::Retire { .. }));
}

#[test]
fn a_replacement_waiting_for_its_dependencies_is_judged_at_the_end_of_its_probation() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, State::Exited);
    web.slot(7).held = true;
    r.surged(SlotId(7), t0);
    assert_eq!(r.next(&web.view(), t0 + Duration::from_secs(1)), Next::Wait);
    assert!(matches!(
        r.next(&web.view(), t0 + Duration::from_secs(10)),
        Next::RollBack { reason } if reason.contains("did not become ready")
    ));
}

#[test]
fn a_replacement_stopped_by_hand_is_no_verdict_on_the_new_settings() {
    let mut web = Program::new("web", 1, fake::ready());
    let t0 = now();
    let mut r = surge(&web, Duration::from_secs(10));
    r.next(&web.view(), t0);
    web.add_incoming(0, 7, fake::ready());
    r.surged(SlotId(7), t0);
    r.next(&web.view(), t0);
    web.instances.retain(|i| i.id != 0);
    let i = web.slot(7);
    i.incoming = false;
    i.state = State::Stopped;
    i.manual_stop = true;
    assert_eq!(r.next(&web.view(), t0 + Duration::from_secs(1)), Next::Done);
}
