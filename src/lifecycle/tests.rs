//! The state machine's specification: one test per rule, time and jitter as arguments.

use nix::sys::signal::Signal;

use super::*;
use crate::policy::StopWith;

const TERM: i32 = libc::SIGTERM;
const KILL: i32 = libc::SIGKILL;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn has_spawn(actions: &[Action]) -> bool {
    actions.contains(&Action::Spawn)
}

/// What a step asked of a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// The policy's graceful stop.
    Stop,
    /// `SIGKILL`.
    Kill,
}

fn signals(actions: &[Action]) -> Vec<(i32, Sent)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Stop { pid } => Some((pid, Sent::Stop)),
            Action::Kill { pid } => Some((pid, Sent::Kill)),
            _ => None,
        })
        .collect()
}

fn logs(actions: &[Action]) -> Vec<(Level, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log { level, message } => Some((*level, message.clone())),
            _ => None,
        })
        .collect()
}

fn logged(actions: &[Action], needle: &str) -> bool {
    logs(actions).iter().any(|(_, m)| m.contains(needle))
}

/// Starts (or respawns) the instance at `now` and reports it up with `pid`.
fn up(inst: &mut Instance, policy: &Policy, now: Instant, pid: i32) {
    if inst.state != State::Spawning {
        let a = inst.step(policy, Event::Start, now, 0.5);
        assert_eq!(a, vec![Action::Spawn]);
    }
    inst.step(policy, Event::Spawned { pid }, now, 0.5);
    assert_eq!(inst.state.pid(), Some(pid));
}

fn exit(inst: &mut Instance, policy: &Policy, now: Instant, code: i32) -> Vec<Action> {
    let status = ExitStatus::Code(code);
    inst.step(policy, Event::Exited { status }, now, 0.5)
}

/// Brings a Backoff or Spawning instance up again at or after `now`; returns when it is up.
fn respawn(inst: &mut Instance, policy: &Policy, now: Instant, pid: i32) -> Instant {
    let mut at = now;
    if let State::Backoff { until } = inst.state {
        at = at.max(until);
        let a = inst.step(policy, Event::Tick, at, 0.5);
        assert!(has_spawn(&a));
    }
    assert_eq!(inst.state, State::Spawning);
    inst.step(policy, Event::Spawned { pid }, at, 0.5);
    at
}

#[test]
fn first_failure_restarts_immediately() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 10);
    assert_eq!(i.state, State::Running { pid: 10, since: t0 });
    let a = exit(&mut i, &p, t0 + ms(10), 1);
    assert!(has_spawn(&a));
    assert_eq!(i.state, State::Spawning);
    assert_eq!(i.restarts, 1);
    assert_eq!(i.last_exit, Some(ExitStatus::Code(1)));
    assert!(logged(&a, "exited (exit code 1); restarting"));
}

#[test]
fn backoff_doubles_within_jitter_and_grows() {
    let p = Policy {
        max_restarts: u32::MAX,
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    let mut now = t0 + ms(1);
    let a = exit(&mut i, &p, now, 1);
    assert!(has_spawn(&a), "first restart is immediate");
    let jitters = [0.0, 0.999_999, 0.5, 0.1, 0.9, 0.3, 0.7, 0.0];
    let mut prev = Duration::ZERO;
    for (k, &j) in jitters.iter().enumerate() {
        now = respawn(&mut i, &p, now, 2 + k as i32) + ms(1);
        let status = ExitStatus::Code(1);
        let a = i.step(&p, Event::Exited { status }, now, j);
        assert!(!has_spawn(&a));
        let State::Backoff { until } = i.state else {
            panic!("expected backoff, got {:?}", i.state)
        };
        let delay = until - now;
        let nominal = ms(100) * 2u32.pow(k as u32);
        assert!(delay >= nominal.mul_f64(0.75), "{delay:?} vs {nominal:?}");
        assert!(delay < nominal.mul_f64(1.25), "{delay:?} vs {nominal:?}");
        assert!(delay > prev, "{delay:?} after {prev:?}");
        assert!(logged(
            &a,
            &format!("restarting in {}", fmt_duration(delay))
        ));
        prev = delay;
    }
    assert_eq!(backoff_delay(&p, 1, 0.0), ms(75));
    assert_eq!(backoff_delay(&p, 1, 0.5), ms(100));
    assert_eq!(backoff_delay(&p, 3, 0.5), ms(400));
}

#[test]
fn backoff_caps_at_max_without_overflow() {
    let p = Policy {
        max_restarts: u32::MAX,
        ..Policy::default()
    };
    for attempt in [10, 40, 64, 65, 1000, u32::MAX] {
        assert_eq!(backoff_delay(&p, attempt, 0.99), secs(30));
        assert_eq!(backoff_delay(&p, attempt, 0.0), secs(30));
    }
    assert_eq!(backoff_delay(&p, 9, 0.5), secs(25) + ms(600));
    let huge = Policy {
        backoff_initial: Duration::MAX,
        backoff_max: Duration::MAX,
        ..p.clone()
    };
    assert_eq!(backoff_delay(&huge, u32::MAX, 0.5), Duration::MAX);

    let t0 = Instant::now();
    let mut i = Instance::new();
    let mut now = t0;
    up(&mut i, &p, now, 1);
    for k in 0..30 {
        now += ms(1);
        exit(&mut i, &p, now, 1);
        if k >= 12 {
            assert_eq!(
                i.state,
                State::Backoff {
                    until: now + secs(30)
                }
            );
        }
        now = respawn(&mut i, &p, now, 2 + k);
    }
}

#[test]
fn backoff_resets_after_healthy_uptime() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    exit(&mut i, &p, t0 + ms(1), 1);
    let now = respawn(&mut i, &p, t0 + ms(1), 2);
    exit(&mut i, &p, now + ms(1), 1);
    assert!(matches!(i.state, State::Backoff { .. }));
    let now = respawn(&mut i, &p, now, 3);
    // Up for less than backoff_reset: still backing off, further.
    let a = exit(&mut i, &p, now + ms(999), 1);
    assert!(!has_spawn(&a));
    let now = respawn(&mut i, &p, now + ms(999), 4);
    // Up for backoff_reset: the next restart is immediate again.
    let a = exit(&mut i, &p, now + secs(1), 1);
    assert!(has_spawn(&a));
    let now = respawn(&mut i, &p, now + secs(1), 5);
    let a = exit(&mut i, &p, now + ms(1), 1);
    assert!(
        !has_spawn(&a),
        "second failure after the reset backs off again"
    );
    let State::Backoff { until } = i.state else {
        panic!()
    };
    assert_eq!(until - (now + ms(1)), ms(100));
}

#[test]
fn healthy_is_judged_from_ready_not_from_spawn() {
    let p = Policy {
        readiness: Readiness::Notify,
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    exit(&mut i, &p, t0 + ms(1), 1); // attempt 1
    let now = respawn(&mut i, &p, t0 + ms(1), 2);
    // Starting for a long time never counts as healthy.
    let a = exit(&mut i, &p, now + secs(5), 1);
    assert!(!has_spawn(&a));
    let now = respawn(&mut i, &p, now + secs(5), 3);
    i.step(&p, Event::Ready, now + secs(5), 0.5);
    // Up 5.5 s but ready only 0.5 s: not healthy.
    let a = exit(&mut i, &p, now + ms(5500), 1);
    assert!(!has_spawn(&a));
    let now = respawn(&mut i, &p, now + ms(5500), 4);
    i.step(&p, Event::Ready, now, 0.5);
    let a = exit(&mut i, &p, now + secs(1), 1);
    assert!(has_spawn(&a), "ready for backoff_reset is healthy");
}

#[test]
fn crash_loop_goes_fatal_after_max_restarts_plus_one_failures() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    let mut now = t0;
    for k in 0..5 {
        now += ms(1);
        let a = exit(&mut i, &p, now, 1);
        assert!(!logged(&a, "crash loop"), "failure {k}");
        now = respawn(&mut i, &p, now, 2 + k);
    }
    let a = exit(&mut i, &p, now + ms(1), 1);
    assert_eq!(i.state, State::Fatal);
    assert!(!has_spawn(&a));
    assert_eq!(i.restarts, 5);
    let l = logs(&a);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].0, Level::Error);
    assert_eq!(
        l[0].1,
        "exited (exit code 1); crash loop: 5 restarts within 1m; giving up (fatal)"
    );
    assert_eq!(i.deadline(&p), None);
    // Nothing but a manual start leaves Fatal.
    for e in [
        Event::Tick,
        Event::Ready,
        Event::WatchdogPing,
        Event::SpawnFailed,
    ] {
        assert!(i.step(&p, e, now + secs(100), 0.5).is_empty());
        assert_eq!(i.state, State::Fatal);
    }
}

#[test]
fn failures_spread_beyond_the_window_are_not_a_crash_loop() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    let mut now = t0;
    for k in 0..20 {
        now += secs(13);
        exit(&mut i, &p, now, 1);
        assert_ne!(i.state, State::Fatal, "failure {k}");
        now = respawn(&mut i, &p, now, 2 + k);
        // Keep uptime short so every exit is unhealthy.
        now -= ms(900).min(now - t0);
    }
    assert!(i.recent.len() <= 5);
}

#[test]
fn healthy_exits_do_not_count() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    let mut now = t0;
    for k in 0..50 {
        now += secs(2);
        let a = exit(&mut i, &p, now, 1);
        assert!(has_spawn(&a), "exit {k} restarts immediately");
        respawn(&mut i, &p, now, 2 + k);
    }
    assert!(i.recent.is_empty());
    assert_eq!(i.restarts, 50);
}

#[test]
fn on_failure_policy() {
    let p = Policy {
        restart: Restart::OnFailure,
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    let a = exit(&mut i, &p, t0 + secs(2), 0);
    assert_eq!(i.state, State::Exited);
    assert!(!has_spawn(&a));
    assert_eq!(
        logs(&a),
        vec![(
            Level::Info,
            "exited (exit code 0); not restarted (restart = on-failure)".to_string()
        )]
    );

    up(&mut i, &p, t0 + secs(3), 2);
    assert!(has_spawn(&exit(&mut i, &p, t0 + secs(4), 1)));

    let now = respawn(&mut i, &p, t0 + secs(4), 3) + secs(2);
    let status = ExitStatus::Signal {
        signal: 9,
        core_dumped: false,
    };
    let a = i.step(&p, Event::Exited { status }, now, 0.5);
    assert!(has_spawn(&a));
    assert!(logged(&a, "exited (signal 9 (SIGKILL)); restarting"));
}

#[test]
fn never_policy() {
    let p = Policy {
        restart: Restart::Never,
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    for code in [1, 0] {
        up(&mut i, &p, t0, 1);
        let a = exit(&mut i, &p, t0 + ms(5), code);
        assert_eq!(i.state, State::Exited);
        assert!(!has_spawn(&a));
        assert!(logged(&a, "not restarted (restart = never)"));
    }
    assert_eq!(i.restarts, 0);
}

#[test]
fn stop_sends_term_then_kill_at_stop_timeout() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 7);
    let a = i.step(&p, Event::Stop, t0 + secs(1), 0.5);
    assert_eq!(signals(&a), vec![(7, Sent::Stop)]);
    assert!(i.manual_stop);
    let kill_at = t0 + secs(11);
    assert_eq!(
        i.state,
        State::Stopping {
            pid: 7,
            since: t0 + secs(1),
            kill_at,
            killed: false,
            then: AfterStop::Stay,
            reaped: false,
        }
    );
    assert_eq!(i.deadline(&p), Some(kill_at));
    assert!(i.step(&p, Event::Tick, kill_at - ms(1), 0.5).is_empty());
    let a = i.step(&p, Event::Tick, kill_at, 0.5);
    assert_eq!(signals(&a), vec![(7, Sent::Kill)]);
    assert!(logged(&a, "did not stop within 10s; sent SIGKILL"));
    assert!(matches!(i.state, State::Stopping { killed: true, .. }));
    assert_eq!(i.deadline(&p), None);
    assert!(i.step(&p, Event::Tick, kill_at + secs(5), 0.5).is_empty());
    let status = ExitStatus::Signal {
        signal: KILL,
        core_dumped: false,
    };
    let a = i.step(&p, Event::Exited { status }, kill_at + secs(5), 0.5);
    assert_eq!(i.state, State::Stopped);
    assert!(!has_spawn(&a));
    assert!(logged(&a, "stopped (signal 9 (SIGKILL))"));
    assert_eq!(i.last_exit, Some(status));
    assert!(i.manual_stop);
    // Start clears the manual stop.
    i.step(&p, Event::Start, kill_at + secs(6), 0.5);
    assert!(!i.manual_stop);
}

#[test]
fn stop_uses_the_configured_signal() {
    let p = Policy {
        stop: StopWith::Signal(Signal::SIGINT),
        stop_timeout: secs(2),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 3);
    let a = i.step(&p, Event::Stop, t0, 0.5);
    assert_eq!(signals(&a), vec![(3, Sent::Stop)]);
    assert!(logged(&a, "stopping (sent SIGINT)"));
    assert_eq!(i.deadline(&p), Some(t0 + secs(2)));
}

#[test]
fn stop_during_backoff_cancels_the_spawn() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    exit(&mut i, &p, t0 + ms(1), 1);
    respawn(&mut i, &p, t0 + ms(1), 2);
    exit(&mut i, &p, t0 + ms(2), 1);
    assert!(matches!(i.state, State::Backoff { .. }));
    let a = i.step(&p, Event::Stop, t0 + ms(3), 0.5);
    assert!(!has_spawn(&a));
    assert!(signals(&a).is_empty());
    assert_eq!(i.state, State::Stopped);
    assert!(i.manual_stop);
    assert_eq!(i.deadline(&p), None);
    assert!(i.step(&p, Event::Tick, t0 + secs(60), 0.5).is_empty());
    assert_eq!(i.state, State::Stopped);
}

#[test]
fn stop_while_stopping_for_restart_cancels_the_restart() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    i.step(&p, Event::Restart, t0 + secs(1), 0.5);
    assert!(matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Restart,
            ..
        }
    ));
    let a = i.step(&p, Event::Stop, t0 + secs(2), 0.5);
    assert!(a.is_empty(), "the stop signal was already sent");
    let a = exit(&mut i, &p, t0 + secs(3), 0);
    assert!(!has_spawn(&a));
    assert_eq!(i.state, State::Stopped);
    assert!(i.manual_stop);
}

#[test]
fn manual_restart_is_not_a_failure_and_resets_attempt() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    let mut now = t0;
    // Three quick failures: attempt 3, three entries in the crash-loop window.
    for k in 0..3 {
        now += ms(1);
        exit(&mut i, &p, now, 1);
        now = respawn(&mut i, &p, now, 2 + k);
    }
    assert_eq!(i.attempt, 3);
    // Many manual restarts inside the window never make it fatal.
    for k in 0..20 {
        now += ms(1);
        let a = i.step(&p, Event::Restart, now, 0.5);
        assert_eq!(signals(&a), vec![(i.state.pid().unwrap(), Sent::Stop)]);
        assert!(!i.manual_stop);
        let a = exit(&mut i, &p, now, 0);
        assert!(has_spawn(&a), "restart {k}: {a:?}");
        assert!(logged(&a, "stopped (exit code 0); restarting"));
        assert_eq!(i.attempt, 0);
        now = respawn(&mut i, &p, now, 100 + k);
    }
    assert_eq!(i.recent.len(), 3);
    assert_eq!(i.restarts, 23);
    // The next failure restarts immediately (attempt was reset).
    assert!(has_spawn(&exit(&mut i, &p, now + ms(1), 1)));
}

#[test]
fn manual_restart_from_down_states() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    // Never started: Restart is a plain Start, not counted.
    let a = i.step(&p, Event::Restart, t0, 0.5);
    assert_eq!(a, vec![Action::Spawn]);
    assert_eq!(i.restarts, 0);
    i.step(&p, Event::Spawned { pid: 1 }, t0, 0.5);
    i.step(&p, Event::Stop, t0, 0.5);
    exit(&mut i, &p, t0 + ms(1), 0);
    assert_eq!(i.state, State::Stopped);
    // After a run: counted.
    let a = i.step(&p, Event::Restart, t0 + ms(2), 0.5);
    assert_eq!(a, vec![Action::Spawn]);
    assert_eq!(i.restarts, 1);
    assert!(!i.manual_stop);
    // From backoff: starts now; the pending respawn was counted already.
    respawn(&mut i, &p, t0 + ms(2), 2);
    exit(&mut i, &p, t0 + ms(3), 1);
    respawn(&mut i, &p, t0 + ms(3), 3);
    exit(&mut i, &p, t0 + ms(4), 1);
    assert!(matches!(i.state, State::Backoff { .. }));
    assert_eq!(i.restarts, 3);
    let a = i.step(&p, Event::Restart, t0 + ms(5), 0.5);
    assert_eq!(a, vec![Action::Spawn]);
    assert_eq!(i.restarts, 3);
    assert_eq!(i.attempt, 0);
    assert!(i.recent.is_empty());
}

#[test]
fn kill_sends_sigkill_and_stays_down() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 4);
    let a = i.step(&p, Event::Kill, t0 + secs(1), 0.5);
    assert_eq!(signals(&a), vec![(4, Sent::Kill)]);
    assert!(matches!(
        i.state,
        State::Stopping {
            pid: 4,
            killed: true,
            then: AfterStop::Stay,
            ..
        }
    ));
    assert!(i.manual_stop);
    assert_eq!(i.deadline(&p), None);
    exit(&mut i, &p, t0 + secs(1), 0);
    assert_eq!(i.state, State::Stopped);

    // Kill during a graceful stop escalates and cancels a restart.
    up(&mut i, &p, t0 + secs(2), 5);
    i.step(&p, Event::Restart, t0 + secs(3), 0.5);
    let a = i.step(&p, Event::Kill, t0 + secs(4), 0.5);
    assert_eq!(signals(&a), vec![(5, Sent::Kill)]);
    assert!(matches!(
        i.state,
        State::Stopping {
            killed: true,
            then: AfterStop::Stay,
            ..
        }
    ));
    assert!(!has_spawn(&exit(&mut i, &p, t0 + secs(4), 0)));

    // Kill in backoff: down, no spawn.
    up(&mut i, &p, t0 + secs(5), 6);
    exit(&mut i, &p, t0 + secs(5), 1);
    respawn(&mut i, &p, t0 + secs(5), 7);
    exit(&mut i, &p, t0 + secs(5), 1);
    assert!(matches!(i.state, State::Backoff { .. }));
    let a = i.step(&p, Event::Kill, t0 + secs(5), 0.5);
    assert!(signals(&a).is_empty() && !has_spawn(&a));
    assert_eq!(i.state, State::Stopped);
}

#[test]
fn notify_readiness_waits_for_ready() {
    let p = Policy {
        readiness: Readiness::Notify,
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 9);
    assert_eq!(i.state, State::Starting { pid: 9, since: t0 });
    assert_eq!(i.state.name(), "starting");
    assert!(i.step(&p, Event::Tick, t0 + secs(10), 0.5).is_empty());
    assert!(
        i.step(&p, Event::WatchdogPing, t0 + secs(10), 0.5)
            .is_empty()
    );
    assert_eq!(i.state, State::Starting { pid: 9, since: t0 });
    let a = i.step(&p, Event::Ready, t0 + secs(11), 0.5);
    assert_eq!(logs(&a), vec![(Level::Info, "ready".to_string())]);
    let ready = State::Ready {
        pid: 9,
        since: t0,
        ready_at: t0 + secs(11),
    };
    assert_eq!(i.state, ready);
    // READY=1 again (after a reload) changes nothing.
    assert!(i.step(&p, Event::Ready, t0 + secs(12), 0.5).is_empty());
    assert_eq!(i.state, ready);

    // READY=1 means nothing under immediate readiness.
    let q = Policy::default();
    let mut j = Instance::new();
    up(&mut j, &q, t0, 1);
    assert!(j.step(&q, Event::Ready, t0, 0.5).is_empty());
    assert_eq!(j.state, State::Running { pid: 1, since: t0 });
}

#[test]
fn notify_start_timeout_restarts_as_failure() {
    let p = Policy {
        readiness: Readiness::Notify,
        start_timeout: Some(secs(5)),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 9);
    assert_eq!(i.deadline(&p), Some(t0 + secs(5)));
    assert!(i.step(&p, Event::Tick, t0 + ms(4999), 0.5).is_empty());
    let a = i.step(&p, Event::Tick, t0 + secs(5), 0.5);
    assert_eq!(signals(&a), vec![(9, Sent::Stop)]);
    assert!(logs(&a).contains(&(
        Level::Warn,
        "did not report READY=1 within 5s; restarting".to_string()
    )));
    assert!(matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Failed { healthy: false },
            ..
        }
    ));
    assert!(!i.manual_stop);
    let a = exit(&mut i, &p, t0 + secs(6), 0);
    assert_eq!(
        i.last_reason,
        Some(ExitReason::StartTimeout),
        "a failure, although it exited 0"
    );
    assert!(has_spawn(&a), "first failure: immediate");
    assert_eq!(i.recent.len(), 1);
    assert_eq!(i.attempt, 1);

    // No start timeout: no deadline, waits forever.
    let q = Policy {
        start_timeout: None,
        ..p.clone()
    };
    let mut j = Instance::new();
    up(&mut j, &q, t0, 1);
    assert_eq!(j.deadline(&q), None);
    assert!(j.step(&q, Event::Tick, t0 + secs(100_000), 0.5).is_empty());
}

#[test]
fn watchdog_timeout_restarts_as_failure() {
    let p = Policy {
        readiness: Readiness::Notify,
        watchdog: Some(secs(3)),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 9);
    // No watchdog before ready. Pings for less than backoff_reset (1 s): not healthy.
    i.step(&p, Event::Ready, t0 + secs(1), 0.5);
    assert_eq!(i.deadline(&p), Some(t0 + secs(4)));
    i.step(&p, Event::WatchdogPing, t0 + secs(2) - ms(1), 0.5);
    assert_eq!(i.deadline(&p), Some(t0 + secs(5) - ms(1)));
    assert!(i.step(&p, Event::Tick, t0 + secs(4), 0.5).is_empty());
    let a = i.step(&p, Event::Tick, t0 + secs(5), 0.5);
    assert_eq!(signals(&a), vec![(9, Sent::Stop)]);
    assert!(logs(&a).contains(&(
        Level::Warn,
        "watchdog timeout (no WATCHDOG=1 for 3s); restarting".to_string()
    )));
    assert!(matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Failed { healthy: false },
            ..
        }
    ));
    assert_eq!(i.deadline(&p), Some(t0 + secs(15)));
    let status = ExitStatus::Signal {
        signal: TERM,
        core_dumped: false,
    };
    let a = i.step(&p, Event::Exited { status }, t0 + secs(6), 0.5);
    assert_eq!(i.last_reason, Some(ExitReason::Watchdog));
    assert!(has_spawn(&a));
    assert_eq!(i.recent.len(), 1, "counted towards the crash loop");
    assert_eq!(i.restarts, 1);

    // Under restart = never the hung worker is stopped and stays down.
    let q = Policy {
        restart: Restart::Never,
        ..p.clone()
    };
    let mut j = Instance::new();
    up(&mut j, &q, t0, 2);
    j.step(&q, Event::Ready, t0, 0.5);
    let a = j.step(&q, Event::Tick, t0 + secs(3), 0.5);
    assert!(logged(&a, "stopping (restart = never)"));
    let a = exit(&mut j, &q, t0 + secs(4), 0);
    assert!(!has_spawn(&a));
    assert_eq!(j.state, State::Exited);
}

#[test]
fn after_readiness_via_tick() {
    let p = Policy {
        readiness: Readiness::After(secs(2)),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 9);
    assert_eq!(i.state, State::Starting { pid: 9, since: t0 });
    assert_eq!(i.deadline(&p), Some(t0 + secs(2)));
    assert!(i.step(&p, Event::Ready, t0 + secs(1), 0.5).is_empty());
    assert!(i.step(&p, Event::Tick, t0 + ms(1999), 0.5).is_empty());
    let a = i.step(&p, Event::Tick, t0 + secs(2), 0.5);
    assert_eq!(
        logs(&a),
        vec![(Level::Info, "ready (up for 2s)".to_string())]
    );
    assert_eq!(
        i.state,
        State::Ready {
            pid: 9,
            since: t0,
            ready_at: t0 + secs(2)
        }
    );
    assert_eq!(i.deadline(&p), None);
}

#[test]
fn deadline_for_each_state() {
    let t0 = Instant::now();
    let p = Policy {
        watchdog: Some(secs(7)),
        readiness: Readiness::Notify,
        ..Policy::default()
    };
    let mut i = Instance::new();
    assert_eq!(i.deadline(&p), None);
    i.state = State::Spawning;
    assert_eq!(i.deadline(&p), None);
    i.state = State::Fatal;
    assert_eq!(i.deadline(&p), None);
    i.state = State::Backoff {
        until: t0 + secs(3),
    };
    assert_eq!(i.deadline(&p), Some(t0 + secs(3)));
    i.state = State::Running { pid: 1, since: t0 };
    assert_eq!(i.deadline(&p), None, "running needs no timer");
    i.state = State::Starting { pid: 1, since: t0 };
    assert_eq!(i.deadline(&p), Some(t0 + secs(90)));
    let after = Policy {
        readiness: Readiness::After(secs(4)),
        ..p.clone()
    };
    assert_eq!(i.deadline(&after), Some(t0 + secs(4)));
    i.state = State::Ready {
        pid: 1,
        since: t0,
        ready_at: t0 + secs(1),
    };
    i.last_ping = Some(t0 + secs(2));
    assert_eq!(i.deadline(&p), Some(t0 + secs(9)));
    let no_watchdog = Policy {
        watchdog: None,
        ..p.clone()
    };
    assert_eq!(i.deadline(&no_watchdog), None);
    let stopping = |killed, reaped| State::Stopping {
        pid: 1,
        since: t0,
        kill_at: t0 + secs(10),
        killed,
        then: AfterStop::Stay,
        reaped,
    };
    i.state = stopping(false, false);
    assert_eq!(i.deadline(&p), Some(t0 + secs(10)));
    i.state = stopping(false, true);
    assert_eq!(i.deadline(&p), Some(t0 + secs(10)));
    i.state = stopping(true, false);
    assert_eq!(
        i.deadline(&p),
        None,
        "the main process is ours to reap: no give-up"
    );
    i.state = stopping(true, true);
    assert_eq!(i.deadline(&p), Some(t0 + secs(10) + KILL_GRACE));
}

#[test]
fn start_after_fatal_resets() {
    let p = Policy {
        max_restarts: 1,
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    exit(&mut i, &p, t0 + ms(1), 1);
    respawn(&mut i, &p, t0 + ms(1), 2);
    exit(&mut i, &p, t0 + ms(2), 1);
    assert_eq!(i.state, State::Fatal);
    assert_eq!(i.state.name(), "fatal");
    // Start while up is a no-op; from Fatal it resets everything.
    let a = i.step(&p, Event::Start, t0 + ms(3), 0.5);
    assert_eq!(a, vec![Action::Spawn]);
    assert_eq!(i.attempt, 0);
    assert!(i.recent.is_empty());
    i.step(&p, Event::Spawned { pid: 3 }, t0 + ms(3), 0.5);
    assert!(i.step(&p, Event::Start, t0 + ms(3), 0.5).is_empty());
    let a = exit(&mut i, &p, t0 + ms(4), 1);
    assert!(has_spawn(&a), "immediate again, and not fatal");
}

#[test]
fn start_from_backoff_starts_now() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    exit(&mut i, &p, t0, 1);
    respawn(&mut i, &p, t0, 2);
    exit(&mut i, &p, t0, 1);
    assert!(matches!(i.state, State::Backoff { .. }));
    let a = i.step(&p, Event::Start, t0 + ms(1), 0.5);
    assert_eq!(a, vec![Action::Spawn]);
    assert_eq!(i.state, State::Spawning);
    assert_eq!(i.attempt, 0);
}

#[test]
fn start_while_stopping_restarts_after_the_stop() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    i.step(&p, Event::Stop, t0, 0.5);
    assert!(i.step(&p, Event::Start, t0, 0.5).is_empty());
    assert!(!i.manual_stop);
    assert!(has_spawn(&exit(&mut i, &p, t0 + ms(1), 0)));
}

#[test]
fn spawned_and_spawn_failed() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    // Spawn failures: first retried at once, then backed off, logged as errors.
    i.step(&p, Event::Start, t0, 0.5);
    let a = i.step(&p, Event::SpawnFailed, t0, 0.5);
    assert_eq!(
        a[0].clone(),
        Action::Log {
            level: Level::Error,
            message: "spawn failed; restarting".to_string()
        }
    );
    assert!(has_spawn(&a));
    assert_eq!(i.last_exit, None);
    let a = i.step(&p, Event::SpawnFailed, t0, 0.5);
    assert!(!has_spawn(&a));
    assert_eq!(
        logs(&a),
        vec![(
            Level::Error,
            "spawn failed; restarting in 100ms".to_string()
        )]
    );
    assert_eq!(
        i.state,
        State::Backoff {
            until: t0 + ms(100)
        }
    );
    // SpawnFailed outside Spawning is ignored.
    assert!(i.step(&p, Event::SpawnFailed, t0, 0.5).is_empty());
    let a = i.step(&p, Event::Tick, t0 + ms(100), 0.5);
    assert_eq!(a, vec![Action::Spawn]);
    let a = i.step(&p, Event::Spawned { pid: 42 }, t0 + ms(100), 0.5);
    assert!(logged(&a, "started (pid 42)"));
    assert_eq!(
        i.state,
        State::Running {
            pid: 42,
            since: t0 + ms(100)
        }
    );
    assert!(i.state.is_up());
    assert_eq!(i.last_ping, Some(t0 + ms(100)));

    // A crash loop of spawn failures goes fatal too.
    let mut j = Instance::new();
    j.step(&p, Event::Start, t0, 0.5);
    let mut now = t0;
    for _ in 0..5 {
        j.step(&p, Event::SpawnFailed, now, 0.5);
        if let State::Backoff { until } = j.state {
            now = until;
            j.step(&p, Event::Tick, now, 0.5);
        }
    }
    j.step(&p, Event::SpawnFailed, now, 0.5);
    assert_eq!(j.state, State::Fatal);

    // Under restart = never a spawn failure leaves it down.
    let q = Policy {
        restart: Restart::Never,
        ..Policy::default()
    };
    let mut k = Instance::new();
    k.step(&q, Event::Start, t0, 0.5);
    let a = k.step(&q, Event::SpawnFailed, t0, 0.5);
    assert_eq!(k.state, State::Exited);
    assert!(logs(&a).contains(&(
        Level::Error,
        "spawn failed; not restarted (restart = never)".to_string()
    )));
}

#[test]
fn spawned_after_a_racing_stop_is_stopped_not_leaked() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    i.step(&p, Event::Start, t0, 0.5);
    let a = i.step(&p, Event::Stop, t0, 0.5);
    assert!(!has_spawn(&a));
    assert_eq!(i.state, State::Stopped);
    let a = i.step(&p, Event::Spawned { pid: 5 }, t0, 0.5);
    assert_eq!(signals(&a), vec![(5, Sent::Stop)]);
    assert!(matches!(
        i.state,
        State::Stopping {
            pid: 5,
            then: AfterStop::Stay,
            ..
        }
    ));
    exit(&mut i, &p, t0, 0);
    assert_eq!(i.state, State::Stopped);

    // A second pid while one is up is killed and not tracked.
    up(&mut i, &p, t0, 6);
    let a = i.step(&p, Event::Spawned { pid: 8 }, t0, 0.5);
    assert_eq!(signals(&a), vec![(8, Sent::Kill)]);
    assert_eq!(i.state.pid(), Some(6));
}

#[test]
fn stopped_by_hand_is_its_own_state_until_started_again() {
    let p = Policy {
        restart: Restart::Never,
        max_restarts: 0,
        ..Policy::default()
    };
    let t0 = Instant::now();
    // From up: `stopping`, then `stopped` (not `exited`) once the process is gone.
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    i.step(&p, Event::Stop, t0, 0.5);
    assert_eq!(i.state.name(), "stopping");
    let a = exit(&mut i, &p, t0 + ms(1), 0);
    assert_eq!(i.state, State::Stopped);
    assert_eq!(i.state.name(), "stopped");
    assert!(logged(&a, "stopped (exit code 0)"));
    assert_eq!(i.deadline(&p), None);
    // Nothing but a start or restart moves it.
    for e in [
        Event::Tick,
        Event::Stop,
        Event::Kill,
        Event::GroupEmpty,
        Event::Ready,
    ] {
        assert!(i.step(&p, e, t0 + secs(1), 0.5).is_empty());
        assert_eq!(i.state, State::Stopped);
    }
    assert_eq!(
        i.step(&p, Event::Start, t0 + secs(2), 0.5),
        vec![Action::Spawn]
    );
    assert!(!i.manual_stop);
    i.step(&p, Event::Spawned { pid: 2 }, t0 + secs(2), 0.5);
    assert_eq!(i.state.name(), "running");
    // An exit the policy does not restart is `exited`, not `stopped`.
    exit(&mut i, &p, t0 + secs(3), 0);
    assert_eq!(i.state, State::Exited);
    // Stopping what is already down (exited, or fatal) makes it `stopped`, without signals.
    let a = i.step(&p, Event::Stop, t0 + secs(4), 0.5);
    assert!(signals(&a).is_empty() && !has_spawn(&a));
    assert!(logged(&a, "stopped"));
    assert_eq!(i.state, State::Stopped);
    i.state = State::Fatal;
    i.step(&p, Event::Stop, t0 + secs(4), 0.5);
    assert_eq!(i.state, State::Stopped);
    // A manual restart from `stopped` spawns and counts as a restart (it ran before).
    let before = i.restarts;
    assert_eq!(
        i.step(&p, Event::Restart, t0 + secs(5), 0.5),
        vec![Action::Spawn]
    );
    assert_eq!(i.restarts, before + 1);
    // A process that turns up while stopped (a racing spawn) is stopped; the instance is
    // `stopped` again after it, not `exited`.
    let mut j = Instance::new();
    j.step(&p, Event::Stop, t0, 0.5);
    assert_eq!(j.state, State::Stopped);
    j.step(&p, Event::Spawned { pid: 9 }, t0, 0.5);
    assert_eq!(j.state.name(), "stopping");
    exit(&mut j, &p, t0, 0);
    assert_eq!(j.state, State::Stopped);
}

#[test]
fn exits_in_down_states_are_ignored() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    for s in [
        State::Exited,
        State::Stopped,
        State::Spawning,
        State::Fatal,
        State::Backoff { until: t0 },
    ] {
        i.state = s.clone();
        assert!(exit(&mut i, &p, t0, 1).is_empty());
        assert_eq!(i.state, s);
    }
    assert_eq!(i.last_exit, None);
}

#[test]
fn state_names_and_pids() {
    let t0 = Instant::now();
    let cases = [
        (State::Exited, "exited", None),
        (State::Stopped, "stopped", None),
        (State::Spawning, "starting", None),
        (State::Starting { pid: 1, since: t0 }, "starting", Some(1)),
        (State::Running { pid: 2, since: t0 }, "running", Some(2)),
        (
            State::Ready {
                pid: 3,
                since: t0,
                ready_at: t0,
            },
            "ready",
            Some(3),
        ),
        (State::Backoff { until: t0 }, "backoff", None),
        (
            State::Stopping {
                pid: 4,
                since: t0,
                kill_at: t0,
                killed: false,
                then: AfterStop::Stay,
                reaped: false,
            },
            "stopping",
            Some(4),
        ),
        (State::Fatal, "fatal", None),
    ];
    for (state, name, pid) in cases {
        assert_eq!(state.name(), name);
        assert_eq!(state.pid(), pid);
        assert_eq!(state.is_up(), pid.is_some());
    }
}

#[test]
fn exit_status_display() {
    assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
    let sig = |signal, core_dumped| ExitStatus::Signal {
        signal,
        core_dumped,
    };
    assert_eq!(sig(9, false).to_string(), "signal 9 (SIGKILL)");
    assert_eq!(
        sig(11, true).to_string(),
        "signal 11 (SIGSEGV, core dumped)"
    );
    assert_eq!(sig(200, false).to_string(), "signal 200");
    assert_eq!(sig(200, true).to_string(), "signal 200 (core dumped)");
    assert!(ExitStatus::Code(0).success());
    assert!(!ExitStatus::Code(1).success());
    assert!(!sig(15, false).success());
}

#[test]
fn durations_format_compactly() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(300), "300ns"),
        (Duration::from_micros(250), "250µs"),
        (ms(100), "100ms"),
        (Duration::from_micros(112_600), "113ms"),
        (Duration::from_micros(999_600), "1s"),
        (ms(1600), "1.6s"),
        (ms(1649), "1.6s"),
        (secs(30), "30s"),
        (ms(59_960), "1m"),
        (secs(60), "1m"),
        (secs(90), "1m30s"),
        (secs(3600), "1h"),
        (secs(3900), "1h5m"),
    ];
    for (d, s) in cases {
        assert_eq!(fmt_duration(d), s, "{d:?}");
    }
}

#[test]
fn huge_durations_do_not_panic() {
    let p = Policy {
        stop_timeout: Duration::MAX,
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    i.step(&p, Event::Stop, t0, 0.5);
    let kill_at = i.deadline(&p).unwrap();
    assert!(kill_at > t0 + secs(1_000_000));
    assert!(
        i.step(&p, Event::Tick, t0 + secs(1_000_000), 0.5)
            .is_empty()
    );
    assert!(!fmt_duration(Duration::MAX).is_empty());
}

/// Finding: a watchdog restart after a long healthy run was backed off and counted as a
/// crash. Health is judged from `ready_at` up to the last ping, as for an exit.
#[test]
fn watchdog_restart_after_a_long_healthy_run_is_immediate_and_not_counted() {
    let p = Policy {
        readiness: Readiness::Notify,
        watchdog: Some(secs(3)),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 1);
    // Three early crashes: attempt 3, three entries in the crash-loop window.
    let mut now = t0;
    for k in 0..3 {
        now += ms(10);
        exit(&mut i, &p, now, 1);
        now = respawn(&mut i, &p, now, 2 + k);
    }
    assert_eq!((i.attempt, i.recent.len()), (3, 3));
    // Then an hour ready, pinging every second.
    i.step(&p, Event::Ready, now, 0.5);
    let ready_at = now;
    while now < ready_at + secs(3600) {
        now += secs(1);
        i.step(&p, Event::WatchdogPing, now, 0.5);
    }
    let hang = now + secs(3);
    let a = i.step(&p, Event::Tick, hang, 0.5);
    assert!(logged(&a, "watchdog timeout"));
    assert!(matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Failed { healthy: true },
            ..
        }
    ));
    let status = ExitStatus::Signal {
        signal: TERM,
        core_dumped: false,
    };
    let a = i.step(&p, Event::Exited { status }, hang + ms(5), 0.5);
    assert!(has_spawn(&a), "restarted at once, not backed off: {a:?}");
    assert!(logged(&a, "; restarting"), "{a:?}");
    assert_eq!(i.recent.len(), 3, "not counted towards the crash loop");
    assert_eq!(i.attempt, 1, "the backoff was reset");

    // A worker that hangs right after READY=1 is not healthy, however long the watchdog.
    let q = Policy {
        watchdog: Some(secs(60)),
        ..p.clone()
    };
    let mut j = Instance::new();
    up(&mut j, &q, t0, 1);
    j.step(&q, Event::Ready, t0, 0.5);
    j.step(&q, Event::Tick, t0 + secs(60), 0.5);
    assert!(matches!(
        j.state,
        State::Stopping {
            then: AfterStop::Failed { healthy: false },
            ..
        }
    ));
    exit(&mut j, &q, t0 + secs(61), 0);
    assert_eq!(j.recent.len(), 1, "counted");
}

/// Finding: a stop ended when the main pid was reaped, dropping the planned SIGKILL of group
/// members that ignore the stop signal.
#[test]
fn a_stop_waits_for_the_whole_group_and_kills_it_at_kill_at() {
    let (p, t0) = (Policy::default(), Instant::now());
    let kill_at = t0 + secs(11);
    for then in [Event::Stop, Event::Restart] {
        let mut i = Instance::new();
        up(&mut i, &p, t0, 7);
        let restart = then == Event::Restart;
        let a = i.step(&p, then, t0 + secs(1), 0.5);
        assert_eq!(signals(&a), vec![(7, Sent::Stop)]);
        // The main process obeys; a member of its group does not.
        let status = ExitStatus::Signal {
            signal: TERM,
            core_dumped: false,
        };
        let a = i.step(&p, Event::LeaderExited { status }, t0 + secs(2), 0.5);
        assert!(signals(&a).is_empty() && !has_spawn(&a), "{a:?}");
        assert!(logged(&a, "waiting for the rest of its process group"));
        assert!(matches!(
            i.state,
            State::Stopping {
                pid: 7,
                reaped: true,
                killed: false,
                ..
            }
        ));
        assert_eq!(i.state.name(), "stopping");
        assert_eq!(i.last_exit, Some(status));
        assert_eq!(i.deadline(&p), Some(kill_at), "SIGKILL still planned");
        // An Exited for the reaped pid cannot end it early.
        assert!(exit(&mut i, &p, t0 + secs(3), 0).is_empty());
        let a = i.step(&p, Event::Tick, kill_at, 0.5);
        assert_eq!(signals(&a), vec![(7, Sent::Kill)]);
        assert_eq!(i.deadline(&p), Some(kill_at + KILL_GRACE));
        let a = i.step(&p, Event::GroupEmpty, kill_at + ms(1), 0.5);
        assert_eq!(has_spawn(&a), restart, "{a:?}");
        if restart {
            assert_eq!(i.state, State::Spawning);
            assert!(logged(&a, "stopped (signal 15 (SIGTERM)); restarting"));
            assert!(i.recent.is_empty(), "a manual restart is no failure");
        } else {
            assert_eq!(i.state, State::Stopped);
            assert!(logged(&a, "stopped (signal 15 (SIGTERM))"));
        }
    }
}

#[test]
fn group_members_that_survive_sigkill_are_waited_for_a_bounded_time() {
    let (p, t0) = (Policy::default(), Instant::now());
    let mut i = Instance::new();
    up(&mut i, &p, t0, 7);
    i.step(&p, Event::Stop, t0, 0.5);
    let status = ExitStatus::Code(0);
    i.step(&p, Event::LeaderExited { status }, t0, 0.5);
    // Fast shutdown while waiting: SIGKILL now, and the grace counts from now.
    let a = i.step(&p, Event::Kill, t0 + secs(1), 0.5);
    assert_eq!(signals(&a), vec![(7, Sent::Kill)]);
    assert!(matches!(
        i.state,
        State::Stopping {
            reaped: true,
            killed: true,
            ..
        }
    ));
    let give_up = t0 + secs(1) + KILL_GRACE;
    assert_eq!(i.deadline(&p), Some(give_up));
    assert!(i.step(&p, Event::Tick, give_up - ms(1), 0.5).is_empty());
    let a = i.step(&p, Event::Tick, give_up, 0.5);
    assert!(logged(
        &a,
        "process group 7 still has members 5s after SIGKILL"
    ));
    assert_eq!(i.state, State::Stopped);
    assert_eq!(i.deadline(&p), None);
    // A late GroupEmpty changes nothing.
    assert!(i.step(&p, Event::GroupEmpty, give_up, 0.5).is_empty());
}

/// An unexpected exit that leaves members in the group stops them first (stop signal, then
/// SIGKILL at stop_timeout); the restart policy decides once the group is gone.
#[test]
fn an_unexpected_exit_stops_the_rest_of_the_group_before_the_policy_decides() {
    let p = Policy {
        stop_timeout: secs(2),
        ..Policy::default()
    };
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 5);
    let status = ExitStatus::Code(1);
    let a = i.step(&p, Event::LeaderExited { status }, t0 + ms(10), 0.5);
    assert_eq!(signals(&a), vec![(5, Sent::Stop)]);
    assert!(!has_spawn(&a));
    assert!(logged(
        &a,
        "exited (exit code 1); stopping the rest of its process group (sent SIGTERM)"
    ));
    assert!(matches!(
        i.state,
        State::Stopping {
            reaped: true,
            then: AfterStop::Exited { healthy: false },
            ..
        }
    ));
    assert_eq!(i.last_exit, Some(status));
    assert!(!i.manual_stop);
    let a = i.step(&p, Event::Tick, t0 + ms(2010), 0.5);
    assert_eq!(signals(&a), vec![(5, Sent::Kill)]);
    let a = i.step(&p, Event::GroupEmpty, t0 + ms(2020), 0.5);
    assert!(has_spawn(&a), "first failure: immediate");
    assert!(logged(
        &a,
        "exited (exit code 1), its process group gone; restarting"
    ));
    assert_eq!((i.restarts, i.recent.len(), i.attempt), (1, 1, 1));

    // A healthy run resets the backoff, as for a plain exit.
    respawn(&mut i, &p, t0 + ms(2020), 6);
    let later = t0 + secs(100);
    i.step(&p, Event::LeaderExited { status }, later, 0.5);
    assert_eq!(i.attempt, 0);
    assert!(has_spawn(&i.step(&p, Event::GroupEmpty, later, 0.5)));
    assert_eq!(i.recent.len(), 1, "healthy: not counted");

    // Exit 0 under on-failure: the members are stopped, then it stays down.
    let q = Policy {
        restart: Restart::OnFailure,
        ..p.clone()
    };
    let mut j = Instance::new();
    up(&mut j, &q, t0, 8);
    let ok = ExitStatus::Code(0);
    j.step(&q, Event::LeaderExited { status: ok }, t0, 0.5);
    let a = j.step(&q, Event::GroupEmpty, t0 + ms(1), 0.5);
    assert!(!has_spawn(&a));
    assert_eq!(j.state, State::Exited);

    // A stop while the members are being stopped keeps it down; a start restarts it, not
    // as a failure.
    let mut k = Instance::new();
    up(&mut k, &p, t0, 9);
    k.step(&p, Event::LeaderExited { status }, t0, 0.5);
    assert!(k.step(&p, Event::Stop, t0, 0.5).is_empty());
    assert!(!has_spawn(&k.step(&p, Event::GroupEmpty, t0, 0.5)));
    assert_eq!(k.state, State::Stopped);
    up(&mut k, &p, t0, 10);
    k.step(&p, Event::LeaderExited { status }, t0, 0.5);
    k.step(&p, Event::Start, t0, 0.5);
    let a = k.step(&p, Event::GroupEmpty, t0, 0.5);
    assert!(has_spawn(&a));
    assert!(k.recent.is_empty(), "{:?}", k.recent);
}

// --- Health checks -------------------------------------------------------------------------

fn health_policy() -> Policy {
    Policy {
        readiness: Readiness::Health,
        start_timeout: Some(secs(30)),
        ..Policy::default()
    }
}

#[test]
fn health_readiness_starts_and_becomes_ready_at_the_first_passing_check() {
    let p = health_policy();
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 7);
    assert!(matches!(i.state, State::Starting { pid: 7, .. }));
    // READY=1 is not how a health-ready instance becomes ready.
    i.step(&p, Event::Ready, t0 + ms(10), 0.5);
    assert!(matches!(i.state, State::Starting { .. }));
    let a = i.step(&p, Event::HealthPassed, t0 + ms(300), 0.5);
    assert!(logged(&a, "ready (health check passed)"));
    assert!(matches!(i.state, State::Ready { ready_at, .. } if ready_at == t0 + ms(300)));
    // A later pass changes nothing.
    assert!(
        i.step(&p, Event::HealthPassed, t0 + secs(5), 0.5)
            .is_empty()
    );
}

#[test]
fn a_health_pass_does_not_make_a_notify_instance_ready() {
    let p = Policy {
        readiness: Readiness::Notify,
        ..Policy::default()
    };
    let mut i = Instance::new();
    up(&mut i, &p, Instant::now(), 7);
    assert!(
        i.step(&p, Event::HealthPassed, Instant::now(), 0.5)
            .is_empty()
    );
    assert!(matches!(i.state, State::Starting { .. }));
}

#[test]
fn health_readiness_is_bounded_by_start_timeout() {
    let p = health_policy();
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 7);
    assert_eq!(i.deadline(&p), Some(t0 + secs(30)));
    let a = i.step(&p, Event::Tick, t0 + secs(30), 0.5);
    assert_eq!(signals(&a), vec![(7, Sent::Stop)]);
    assert!(logged(
        &a,
        "did not pass a health check within 30s; restarting"
    ));
}

#[test]
fn unhealthy_stops_as_a_failure_and_records_health_as_the_reason() {
    let p = health_policy();
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 7);
    i.step(&p, Event::HealthPassed, t0 + ms(100), 0.5);
    // Passing for 500 ms only (backoff_reset 1 s): a crash.
    let last_pass = Some(t0 + ms(600));
    let a = i.step(&p, Event::Unhealthy { last_pass }, t0 + secs(2), 0.5);
    assert_eq!(signals(&a), vec![(7, Sent::Stop)]);
    assert!(logged(&a, "unhealthy (sent SIGTERM)"));
    assert!(matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Failed { healthy: false },
            ..
        }
    ));
    assert_eq!(i.last_reason, Some(ExitReason::Health));
    let status = ExitStatus::Signal {
        signal: TERM,
        core_dumped: false,
    };
    let a = i.step(&p, Event::Exited { status }, t0 + secs(3), 0.5);
    assert!(has_spawn(&a), "first failure: restarted at once");
    assert_eq!(i.last_exit, Some(status));
    assert_eq!(
        i.last_reason,
        Some(ExitReason::Health),
        "kept beside the status"
    );
    assert_eq!(i.recent.len(), 1, "counted as a failure");
    // The next process's own exit replaces the reason.
    i.step(&p, Event::Spawned { pid: 8 }, t0 + secs(3), 0.5);
    exit(&mut i, &p, t0 + secs(4), 3);
    assert_eq!(i.last_reason, None);
}

#[test]
fn unhealthy_after_a_long_passing_run_is_not_a_crash() {
    let p = Policy::default(); // immediate readiness: running
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 7);
    let last_pass = Some(t0 + secs(60));
    i.step(&p, Event::Unhealthy { last_pass }, t0 + secs(90), 0.5);
    assert!(matches!(
        i.state,
        State::Stopping {
            then: AfterStop::Failed { healthy: true },
            ..
        }
    ));
}

#[test]
fn unhealthy_is_ignored_unless_the_instance_is_up_and_not_stopping() {
    let p = health_policy();
    let t0 = Instant::now();
    let mut i = Instance::new();
    let ev = || Event::Unhealthy { last_pass: None };
    assert!(i.step(&p, ev(), t0, 0.5).is_empty());
    up(&mut i, &p, t0, 7);
    i.step(&p, Event::Stop, t0, 0.5);
    assert!(i.step(&p, ev(), t0, 0.5).is_empty());
    assert_eq!(i.last_reason, None, "a stop by hand has no reason");
}

#[test]
fn a_manual_stop_after_a_health_restart_clears_the_reason() {
    let p = Policy::default();
    let t0 = Instant::now();
    let mut i = Instance::new();
    up(&mut i, &p, t0, 7);
    i.step(&p, Event::Unhealthy { last_pass: None }, t0, 0.5);
    let status = ExitStatus::Code(0);
    i.step(&p, Event::Exited { status }, t0 + ms(10), 0.5);
    i.step(&p, Event::Spawned { pid: 8 }, t0 + ms(10), 0.5);
    i.step(&p, Event::Stop, t0 + secs(1), 0.5);
    assert_eq!(i.last_reason, None);
}
