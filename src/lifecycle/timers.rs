//! Timers: when an instance next needs a `Tick` ([`Instance::deadline`]) and what a `Tick` does
//! once a deadline has passed (spawn after a backoff, readiness after a delay, a missed
//! `start_timeout` or watchdog, `SIGKILL` after a stop's timeout).

use std::time::Instant;

use log::Level;

use super::{Action, AfterStop, Instance, KILL_GRACE, State, later, log, restart_word};
use crate::policy::{ExitReason, Policy, Readiness, fmt_duration};

impl Instance {
    /// The nearest instant at which a `Tick` could change something, or `None` when nothing is
    /// pending. A `running` instance has none: its backoff reset is judged when it exits.
    pub fn deadline(&self, policy: &Policy) -> Option<Instant> {
        match self.state {
            State::Backoff { until } => Some(until),
            State::Starting { since, .. } => match policy.readiness {
                Readiness::After(d) => since.checked_add(d),
                Readiness::Notify | Readiness::Health => {
                    policy.start_timeout.and_then(|t| since.checked_add(t))
                }
                Readiness::Immediate => None,
            },
            State::Ready { ready_at, .. } => {
                let w = policy.watchdog?;
                self.last_ping.unwrap_or(ready_at).checked_add(w)
            }
            State::Stopping {
                killed: false,
                kill_at,
                ..
            } => Some(kill_at),
            State::Stopping {
                killed: true,
                reaped: true,
                kill_at,
                ..
            } => Some(later(kill_at, KILL_GRACE)),
            _ => None,
        }
    }

    /// `Tick`: act on whichever deadline has passed.
    pub(super) fn on_tick(
        &mut self,
        policy: &Policy,
        now: Instant,
        jitter: f64,
        out: &mut Vec<Action>,
    ) {
        match self.state {
            State::Backoff { until } if now >= until => self.spawn(out),
            State::Starting { pid, since } => self.tick_starting(policy, pid, since, now, out),
            State::Ready { ready_at, .. } => self.tick_ready(policy, ready_at, now, out),
            State::Stopping {
                pid,
                since,
                kill_at,
                killed: false,
                ..
            } if now >= kill_at => self.tick_kill_due(pid, since, kill_at, out),
            State::Stopping {
                pid,
                killed: true,
                reaped: true,
                kill_at,
                ..
            } if now >= later(kill_at, KILL_GRACE) => {
                let grace = fmt_duration(KILL_GRACE);
                log(
                    out,
                    Level::Warn,
                    format!(
                        "process group {pid} still has members {grace} after SIGKILL; \
                         no longer waiting for them"
                    ),
                );
                self.finish_stop(policy, now, jitter, out);
            }
            _ => {}
        }
    }

    /// A tick while starting: ready after `Readiness::After`, or a missed `start_timeout`.
    fn tick_starting(
        &mut self,
        policy: &Policy,
        pid: i32,
        since: Instant,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let up = now.saturating_duration_since(since);
        match policy.readiness {
            Readiness::After(d) if up >= d => {
                self.state = State::Ready {
                    pid,
                    since,
                    ready_at: now,
                };
                self.last_ping = Some(now);
                log(
                    out,
                    Level::Info,
                    format!("ready (up for {})", fmt_duration(d)),
                );
            }
            Readiness::Notify | Readiness::Health => {
                if let Some(t) = policy.start_timeout
                    && up >= t
                {
                    let what = restart_word(policy);
                    let missed = if policy.readiness == Readiness::Health {
                        "did not pass a health check"
                    } else {
                        "did not report READY=1"
                    };
                    let msg = format!("{missed} within {}; {what}", fmt_duration(t));
                    log(out, Level::Warn, msg);
                    let then = AfterStop::Failed { healthy: false };
                    self.begin_stop(policy, now, then, out);
                    self.last_reason = Some(ExitReason::StartTimeout);
                }
            }
            _ => {}
        }
    }

    /// A tick while ready: a missed watchdog ping stops the instance as failed.
    fn tick_ready(
        &mut self,
        policy: &Policy,
        ready_at: Instant,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let last_ping = self.last_ping.unwrap_or(ready_at);
        if let Some(w) = policy.watchdog
            && now.saturating_duration_since(last_ping) >= w
        {
            let what = restart_word(policy);
            let msg = format!(
                "watchdog timeout (no WATCHDOG=1 for {}); {what}",
                fmt_duration(w)
            );
            log(out, Level::Warn, msg);
            // Healthy if it kept pinging for backoff_reset after it became ready: a hang after a
            // long good run is not a crash loop, and restarts at once. Judged up to the last
            // ping, so a worker that hangs right after READY=1 is not.
            let healthy = last_ping.saturating_duration_since(ready_at) >= policy.backoff_reset;
            self.begin_stop(policy, now, AfterStop::Failed { healthy }, out);
            self.last_reason = Some(ExitReason::Watchdog);
        }
    }

    /// A tick when a stop's `kill_at` has passed: `SIGKILL`, and the stop goes on.
    fn tick_kill_due(&mut self, pid: i32, since: Instant, kill_at: Instant, out: &mut Vec<Action>) {
        if let State::Stopping { killed, .. } = &mut self.state {
            *killed = true;
        }
        out.push(Action::Kill { pid });
        let waited = fmt_duration(kill_at.saturating_duration_since(since));
        log(
            out,
            Level::Warn,
            format!("did not stop within {waited}; sent SIGKILL"),
        );
    }
}
