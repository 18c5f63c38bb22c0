//! Repeated failures, logged once and then summarised: the rule that keeps a failing sink (a
//! program's output file on a full disk, a client refused again and again) from flooding
//! warden's own log — and, through syslog, the system journal — with one line per occurrence.
//!
//! [`Repeated`] is a pure state machine fed with the failures and successes of one source and
//! the time; it decides what is worth a line and leaves the wording to the caller:
//! - the first failure of a kind is reported at once ([`Verdict::First`]);
//! - further failures of the same kind are counted, and the count is reported at most once per
//!   interval ([`Verdict::Summary`]), at the next failure after the interval has passed (no timer:
//!   a source that stops failing and stops being used has nothing more to say);
//! - a failure of another kind is reported at once, with the count of the old kind not yet told;
//! - the first success after failures is reported once ([`Repeated::succeeded`]), with the count
//!   not yet told.

use std::time::{Duration, Instant};

/// What one failure is worth saying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The first failure of this kind (after a success, or after another kind): say it in full.
    /// `untold` counts failures of the previous kind never summarised (0 if none).
    First {
        /// Occurrences of the previous kind not yet reported.
        untold: u64,
    },
    /// More of the same since the last line: `count` occurrences (this one included).
    Summary {
        /// Occurrences since the last report.
        count: u64,
    },
    /// Counted; nothing to say yet.
    Quiet,
}

/// The failure state of one source.
#[derive(Debug, Clone)]
pub(crate) struct Repeated {
    every: Duration,
    failing: Option<Failing>,
}

#[derive(Debug, Clone)]
struct Failing {
    kind: String,
    untold: u64,
    last_report: Instant,
}

impl Repeated {
    /// Summaries at most once per `every`.
    pub(crate) fn new(every: Duration) -> Repeated {
        Repeated {
            every,
            failing: None,
        }
    }

    /// `count` occurrences of a failure of `kind` (e.g. an errno's name) at `now`.
    pub(crate) fn failed(&mut self, kind: &str, count: u64, now: Instant) -> Verdict {
        match &mut self.failing {
            Some(f) if f.kind == kind => {
                f.untold += count;
                if now.saturating_duration_since(f.last_report) >= self.every {
                    let count = std::mem::take(&mut f.untold);
                    f.last_report = now;
                    Verdict::Summary { count }
                } else {
                    Verdict::Quiet
                }
            }
            other => {
                let untold = other.as_ref().map_or(0, |f| f.untold);
                // The first occurrence is told in full; any others of this batch are untold.
                *other = Some(Failing {
                    kind: kind.to_string(),
                    untold: count.saturating_sub(1),
                    last_report: now,
                });
                Verdict::First { untold }
            }
        }
    }

    /// A success: `Some(untold)` when it ends a run of failures (say so once, with the count not
    /// yet reported), `None` when all was well already.
    pub(crate) fn succeeded(&mut self) -> Option<u64> {
        self.failing.take().map(|f| f.untold)
    }

    /// Whether the source is failing now.
    #[cfg(test)]
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_flood_of_one_kind_is_one_line_then_summaries_at_the_interval() {
        let t0 = Instant::now();
        let mut r = Repeated::new(10 * S);
        assert_eq!(r.failed("ENOSPC", 1, t0), Verdict::First { untold: 0 });
        let mut lines = 1;
        // 10,000 failures over 8 s: nothing more to say.
        for i in 1..10_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 800);
            if r.failed("ENOSPC", 1, now) != Verdict::Quiet {
                lines += 1;
            }
        }
        assert_eq!(lines, 1);
        // Past the interval: one summary with everything counted since the first line.
        assert_eq!(
            r.failed("ENOSPC", 1, t0 + 11 * S),
            Verdict::Summary { count: 10_000 }
        );
        assert_eq!(r.failed("ENOSPC", 1, t0 + 12 * S), Verdict::Quiet);
        assert_eq!(r.succeeded(), Some(1));
        assert!(!r.is_failing());
        assert_eq!(r.succeeded(), None, "recovery is told once");
    }

    #[test]
    fn another_kind_is_told_at_once_with_what_was_left_untold() {
        let t0 = Instant::now();
        let mut r = Repeated::new(10 * S);
        assert_eq!(r.failed("ENOSPC", 5, t0), Verdict::First { untold: 0 });
        assert_eq!(r.failed("ENOSPC", 2, t0 + S), Verdict::Quiet);
        assert_eq!(r.failed("EIO", 1, t0 + 2 * S), Verdict::First { untold: 6 });
        assert_eq!(r.failed("EIO", 1, t0 + 3 * S), Verdict::Quiet);
        assert_eq!(r.succeeded(), Some(1));
    }

    #[test]
    fn summaries_never_come_faster_than_the_interval() {
        let t0 = Instant::now();
        let mut r = Repeated::new(10 * S);
        r.failed("E", 1, t0);
        let mut last = t0;
        for ms in (0..600_000).step_by(7) {
            let now = t0 + Duration::from_millis(ms);
            if let Verdict::Summary { .. } = r.failed("E", 1, now) {
                assert!(now - last >= 10 * S);
                last = now;
            }
        }
        assert!(last > t0 + 500 * S, "summaries keep coming while it fails");
    }
}
