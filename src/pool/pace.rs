//! The adaptive pipeline window: how many jobs a worker may hold at once, from the job
//! latencies the pool observes.
//!
//! This module owns that decision only, as a pure value fed with durations; it knows nothing of
//! workers, sockets or clocks.
//!
//! # Why a window, and why adaptive
//!
//! Pipelining hides the round trip between a result and the next job (two wake-ups, tens of
//! microseconds here): a worker that already holds its next job starts it at once. For jobs shorter
//! than a round trip, that is most of the throughput. But a job held by a worker is bound to it
//! until that worker gets to it (or the pool takes it back: see `claim`), so for jobs longer than a
//! round trip a deep pipeline gains nothing and costs balance. So a worker holds `round trip / job
//! time` jobs, rounded down, at least 1 and at most [`crate::pool::PoolBuilder::pipeline`]: 1 (no
//! pipelining, like Python's pool) for jobs of a millisecond, the full pipeline for jobs of a few
//! microseconds.
//!
//! Two moving averages are kept, both from results as they arrive:
//! - **turn**: from sending a job to an idle worker to its result — one job time plus the round
//!   trip;
//! - **gap**: between two results of a worker that already held the second job — one job time.
//!
//! While nothing is known the window is 1; while turns are short but no gap is known yet (or it
//! is stale because the window was 1) it is 2, which is how gaps get measured at all.

use std::time::Duration;

/// Turns below this let the window open to 2 to measure gaps.
const PROBE_BELOW: Duration = Duration::from_millis(2);
/// Weight of a new sample in the moving averages (1/4).
const WEIGHT: f64 = 0.25;

/// The observed latencies and the window they give.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pace {
    /// Seconds from a send to an idle worker to the result.
    turn: Option<f64>,
    /// Seconds between results of a busy worker.
    gap: Option<f64>,
}

fn blend(avg: &mut Option<f64>, sample: Duration) {
    let x = sample.as_secs_f64();
    *avg = Some(match *avg {
        Some(a) => a + WEIGHT * (x - a),
        None => x,
    });
}

impl Pace {
    /// A job sent to an idle worker was answered after `d`.
    pub(crate) fn turn(&mut self, d: Duration) {
        blend(&mut self.turn, d);
    }

    /// A job that was waiting in its worker was answered `d` after the job before it.
    pub(crate) fn gap(&mut self, d: Duration) {
        blend(&mut self.gap, d);
    }

    /// Jobs a worker may hold, between 1 and `max`.
    pub(crate) fn window(&self, max: usize) -> usize {
        let Some(turn) = self.turn else {
            return 1;
        };
        let probe = if turn < PROBE_BELOW.as_secs_f64() {
            2
        } else {
            1
        };
        let by_ratio = match self.gap {
            // A gap of zero (results read in one go): as deep as allowed.
            Some(gap) => (turn / gap.max(1e-7)).min(max as f64) as usize,
            None => 1,
        };
        by_ratio.max(probe).clamp(1, max.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn nothing_known_means_one_job_at_a_time() {
        assert_eq!(Pace::default().window(32), 1);
    }

    #[test]
    fn long_jobs_are_not_pipelined() {
        let mut p = Pace::default();
        for _ in 0..10 {
            p.turn(Duration::from_millis(20) + us(60));
        }
        assert_eq!(p.window(32), 1);
        // Even with a pipelined sample or two.
        p.gap(Duration::from_millis(20));
        assert_eq!(p.window(32), 1);
    }

    #[test]
    fn tiny_jobs_open_the_window_wide_but_never_past_the_pipeline() {
        let mut p = Pace::default();
        p.turn(us(60));
        assert_eq!(p.window(32), 2, "short turns probe with 2");
        for _ in 0..10 {
            p.gap(us(2));
        }
        assert_eq!(p.window(32), 30);
        p.gap(Duration::ZERO);
        p.gap(Duration::ZERO);
        assert_eq!(p.window(32), 32);
        assert_eq!(p.window(1), 1);
    }

    #[test]
    fn the_window_follows_a_change_of_job_length() {
        let mut p = Pace::default();
        p.turn(us(60));
        for _ in 0..10 {
            p.gap(us(2));
        }
        assert!(p.window(32) > 16);
        for _ in 0..10 {
            p.gap(Duration::from_millis(20));
            p.turn(Duration::from_millis(20));
        }
        assert_eq!(p.window(32), 1);
        // And back: short turns probe again, short gaps reopen it.
        for _ in 0..10 {
            p.turn(us(60));
        }
        assert_eq!(p.window(32), 2);
        for _ in 0..20 {
            p.gap(us(2));
        }
        assert!(p.window(32) > 16);
    }
}
