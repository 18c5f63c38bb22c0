//! The check schedule and verdicts: one test per rule, time and jitter as arguments.

use std::time::{Duration, Instant};

use super::{HealthSpec, Probe, Tracker, Verdict, checked, spread};
use crate::lifecycle::State;
use crate::policy::Readiness;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn spec(interval: u64, retries: u32, start_period: u64) -> HealthSpec {
    HealthSpec {
        interval: secs(interval),
        retries,
        start_period: secs(start_period),
        ..HealthSpec::new(Probe::Exec(vec!["true".into()]))
    }
}

fn fail() -> Result<(), String> {
    Err("connect: ECONNREFUSED".into())
}

/// Runs the check that is due, ending `took` later with `outcome`; returns the verdict and
/// when it ended.
fn check(
    t: &mut Tracker,
    s: &HealthSpec,
    outcome: Result<(), String>,
    took: Duration,
) -> (Verdict, Instant) {
    let due = t.due().expect("a check is due");
    t.begin(due);
    assert_eq!(t.due(), None, "one check at a time");
    let end = due + took;
    (t.finish(s, outcome, end, 0.5), end)
}

#[test]
fn the_first_check_comes_within_one_interval_of_the_spawn() {
    let s = spec(10, 3, 0);
    let t0 = Instant::now();
    for jitter in [0.0, 0.25, 0.5, 0.999] {
        let due = Tracker::new(&s, t0, jitter).due().unwrap();
        assert!(due > t0 && due <= t0 + secs(10), "{jitter}: {:?}", due - t0);
    }
    assert_eq!(Tracker::new(&s, t0, 0.0).due(), Some(t0 + secs(10)));
}

#[test]
fn two_hundred_instances_started_together_are_checked_spread_over_the_interval() {
    let s = spec(10, 3, 0);
    let t0 = Instant::now();
    let mut j = crate::policy::Jitter::seeded(1);
    let mut per_second = [0u32; 10];
    for _ in 0..200 {
        let due = Tracker::new(&s, t0, j.next_unit()).due().unwrap();
        let second = ((due - t0).as_secs_f64().ceil() as usize).clamp(1, 10) - 1;
        per_second[second] += 1;
    }
    assert!(
        per_second.iter().all(|&n| (8..=35).contains(&n)),
        "{per_second:?}"
    );
}

#[test]
fn regular_checks_keep_a_fixed_rate() {
    let s = spec(10, 3, 0);
    let t0 = Instant::now();
    let mut t = Tracker::new(&s, t0, 0.5);
    let first = t.due().unwrap();
    check(&mut t, &s, Ok(()), ms(300));
    assert_eq!(t.due(), Some(first + secs(10)), "counted from the start");
    // A check that outlives the interval is followed by the next at once.
    check(&mut t, &s, fail(), secs(12));
    assert_eq!(t.due(), Some(first + secs(22)));
}

#[test]
fn retries_failures_in_a_row_are_unhealthy_once() {
    let s = spec(1, 3, 0);
    let mut t = Tracker::new(&s, Instant::now(), 0.5);
    assert_eq!(check(&mut t, &s, Ok(()), ms(1)).0, Verdict::FirstPass);
    assert_eq!(check(&mut t, &s, fail(), ms(1)).0, Verdict::Nothing);
    assert_eq!(check(&mut t, &s, fail(), ms(1)).0, Verdict::Nothing);
    assert_eq!(t.view().state, "failing");
    assert_eq!(t.view().failures, 2);
    assert_eq!(
        check(&mut t, &s, fail(), ms(1)).0,
        Verdict::Unhealthy {
            failures: 3,
            error: "connect: ECONNREFUSED".into()
        }
    );
    assert_eq!(
        t.due(),
        None,
        "nothing more until the instance is respawned"
    );
}

#[test]
fn a_pass_resets_the_run_of_failures() {
    let s = spec(1, 3, 0);
    let mut t = Tracker::new(&s, Instant::now(), 0.5);
    check(&mut t, &s, fail(), ms(1));
    check(&mut t, &s, fail(), ms(1));
    assert_eq!(check(&mut t, &s, Ok(()), ms(1)).0, Verdict::FirstPass);
    assert_eq!(t.view().state, "passing");
    assert_eq!(t.view().last_error, None);
    check(&mut t, &s, fail(), ms(1));
    check(&mut t, &s, fail(), ms(1));
    assert_eq!(t.view().failures, 2, "counted afresh");
    assert_eq!(check(&mut t, &s, Ok(()), ms(1)).0, Verdict::Nothing);
}

#[test]
fn failures_without_a_start_period_count_from_the_first_check() {
    let s = spec(1, 2, 0);
    let mut t = Tracker::new(&s, Instant::now(), 0.5);
    check(&mut t, &s, fail(), ms(1));
    assert!(matches!(
        check(&mut t, &s, fail(), ms(1)).0,
        Verdict::Unhealthy { failures: 2, .. }
    ));
}

#[test]
fn inside_the_start_period_checks_ramp_up_and_failures_are_ignored() {
    let s = spec(10, 1, 5);
    let t0 = Instant::now();
    let mut t = Tracker::new(&s, t0, 0.5);
    assert_eq!(t.due(), Some(t0 + ms(100)));
    let mut gaps = Vec::new();
    let mut last = t0;
    while let Some(due) = t.due().filter(|&d| d < t0 + secs(5)) {
        gaps.push(due - last);
        last = due;
        let (v, _) = check(&mut t, &s, fail(), Duration::ZERO);
        assert_eq!(v, Verdict::Nothing, "ignored inside the start period");
        assert_eq!(t.view().state, "starting");
    }
    assert_eq!(
        gaps[..5],
        [ms(100), ms(100), ms(200), ms(400), ms(800)],
        "{gaps:?}"
    );
    assert!(gaps[5..].iter().all(|&g| g == secs(1)), "{gaps:?}");
    // Past the start period a failure counts (retries = 1).
    let due = t.due().unwrap();
    assert!(due >= t0 + secs(5) - secs(1) && due <= t0 + secs(15));
    t.begin(t0 + secs(5));
    assert!(matches!(
        t.finish(&s, fail(), t0 + secs(5), 0.5),
        Verdict::Unhealthy { .. }
    ));
}

#[test]
fn a_pass_ends_the_start_period_and_failures_count_from_then() {
    let s = spec(2, 1, 60);
    let t0 = Instant::now();
    let mut t = Tracker::new(&s, t0, 0.5);
    let (v, end) = check(&mut t, &s, Ok(()), ms(5));
    assert_eq!(v, Verdict::FirstPass);
    let due = t.due().unwrap();
    assert!(due > end && due <= end + secs(2), "regular from here");
    assert!(matches!(
        check(&mut t, &s, fail(), ms(5)).0,
        Verdict::Unhealthy { .. }
    ));
}

#[test]
fn a_ramp_never_steps_beyond_the_interval() {
    let s = HealthSpec {
        interval: ms(150),
        ..spec(1, 3, 10)
    };
    let t0 = Instant::now();
    let mut t = Tracker::new(&s, t0, 0.5);
    assert_eq!(t.due(), Some(t0 + ms(100)));
    let (_, end) = check(&mut t, &s, fail(), Duration::ZERO);
    assert_eq!(t.due(), Some(end + ms(100)));
    let (_, end) = check(&mut t, &s, fail(), Duration::ZERO);
    assert_eq!(t.due(), Some(end + ms(150)));
}

#[test]
fn instances_are_checked_when_up_and_starting_only_for_health_readiness() {
    let t0 = Instant::now();
    let starting = State::Starting { pid: 1, since: t0 };
    assert!(checked(&starting, Readiness::Health));
    assert!(!checked(&starting, Readiness::Notify));
    let running = State::Running { pid: 1, since: t0 };
    assert!(checked(&running, Readiness::Immediate));
    let ready = State::Ready {
        pid: 1,
        since: t0,
        ready_at: t0,
    };
    assert!(checked(&ready, Readiness::Notify));
    assert!(!checked(&State::Backoff { until: t0 }, Readiness::Health));
    assert!(!checked(&State::Exited, Readiness::Immediate));
}

#[test]
fn spread_stays_inside_the_interval_whatever_the_jitter() {
    for j in [0.0, 0.5, 0.999_999, f64::NAN, -1.0, 2.0] {
        let d = spread(secs(10), j);
        assert!(d > Duration::ZERO && d <= secs(10), "{j}: {d:?}");
    }
}
