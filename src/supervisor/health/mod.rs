//! Health checks: when each instance is checked, what a run of results means, and the checks
//! under way.
//!
//! Three parts, one file each:
//! - this file: the pure per-instance [`Tracker`] (schedule, consecutive failures, verdicts;
//!   time and jitter are arguments, tests in `tests.rs`) and the program's resolved
//!   [`Checker`] (what one check does, resolved once when the program is added or reloaded:
//!   addresses, the exec check's credentials and environment);
//! - `probe.rs`: one TCP or HTTP check as a non-blocking socket in the event loop;
//! - `run.rs`: the loop's side: starting due checks, their events, exec checks' exits and
//!   timeouts, and handing verdicts to the state machine
//!   ([`Event::HealthPassed`](crate::lifecycle::Event::HealthPassed),
//!   [`Event::Unhealthy`](crate::lifecycle::Event::Unhealthy)).
//!
//! # Schedule
//!
//! A [`Tracker`] is made at each spawn. Inside `start_period` and until the first pass, checks
//! ramp up (100 ms, doubling, at most `min(interval, 1 s)`) and their failures are ignored.
//! Otherwise checks come every `interval`, the first one at a random point within one interval
//! of the spawn (or of the end of the ramp), so 200 instances started together are checked
//! spread over the interval, not at once, and a hung instance is caught within
//! `interval × retries + timeout`. One check per instance at a time: a check that outlives its
//! `timeout` fails, and the next is due one interval after the last was (or at once, if that
//! is already past).
//!
//! # What must not happen here
//!
//! No I/O, no clock, no process: `run.rs` does those.

mod probe;
mod run;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{ExecSpec, HealthSpec, HostPort, HttpServer, Probe};
use crate::error::{Error, Result};
use crate::lifecycle::State;
use crate::policy::Readiness;

pub(super) use run::Checks;

use super::program::{ProgramDef, Work};
use super::spawn::Prepared;

/// The first step of the start-period ramp.
const RAMP_FIRST: Duration = Duration::from_millis(100);
/// The longest step of the start-period ramp (or `interval`, if shorter).
const RAMP_MAX: Duration = Duration::from_secs(1);

/// What a program's check does, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Checker {
    /// The settings, as configured.
    pub(crate) spec: HealthSpec,
    /// What to connect to, or to run.
    pub(crate) target: Target,
}

/// A check's target, resolved.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Run this command as the program's instances run (user, directory, environment).
    Exec(Box<Prepared>),
    /// Connect to this address.
    Tcp(SocketAddr),
    /// Send this request to this server.
    Http {
        /// The server's address.
        server: Server,
        /// The whole `GET` request.
        request: Vec<u8>,
    },
}

/// An HTTP server's resolved address.
#[derive(Debug, Clone)]
pub(crate) enum Server {
    /// Over TCP.
    Tcp(SocketAddr),
    /// Over a Unix stream socket.
    Unix(PathBuf),
}

impl Checker {
    /// Resolves the check of `def`, if it has one: host names (now, not at each check: the
    /// event loop must not wait for a resolver), and the exec check's user, group and limits.
    ///
    /// Errors: a name that does not resolve, a user or group that does not exist.
    pub(crate) fn prepare(def: &ProgramDef) -> Result<Option<Checker>> {
        let Some(spec) = &def.health else {
            return Ok(None);
        };
        let target = match &spec.probe {
            Probe::Exec(argv) => {
                let exec = match &def.work {
                    Work::Exec(e) => ExecSpec {
                        command: argv.clone(),
                        ..e.clone()
                    },
                    Work::Fn(_) => ExecSpec::new(argv.clone()),
                };
                Target::Exec(Box::new(Prepared::exec(&exec)?))
            }
            Probe::Tcp(hp) => Target::Tcp(resolve(hp)?),
            Probe::Http(t) => Target::Http {
                server: match &t.server {
                    HttpServer::Tcp(hp) => Server::Tcp(resolve(hp)?),
                    HttpServer::Unix(p) => Server::Unix(p.clone()),
                },
                request: format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: warden/{}\r\n\
                     Accept: */*\r\nConnection: close\r\n\r\n",
                    t.path,
                    t.host_header(),
                    env!("CARGO_PKG_VERSION")
                )
                .into_bytes(),
            },
        };
        Ok(Some(Checker {
            spec: spec.clone(),
            target,
        }))
    }
}

/// `HOST:PORT` as a socket address (see [`HostPort::resolve`]).
fn resolve(hp: &HostPort) -> Result<SocketAddr> {
    hp.resolve().map_err(|reason| Error::Invalid {
        what: "health",
        reason,
    })
}

/// Whether an instance in `state` is checked: `running` and `ready` always, `starting` only
/// when a passing check is what makes it ready.
pub(crate) fn checked(state: &State, readiness: Readiness) -> bool {
    match state {
        State::Running { .. } | State::Ready { .. } => true,
        State::Starting { .. } => readiness == Readiness::Health,
        _ => false,
    }
}

/// How one check ended.
pub(crate) type Outcome = std::result::Result<(), String>;

/// What a finished check means for the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to do.
    Nothing,
    /// The first pass since the instance was spawned.
    FirstPass,
    /// `retries` failures in a row: restart the instance.
    Unhealthy {
        /// How many in a row.
        failures: u32,
        /// The last one's error.
        error: String,
    },
}

/// One instance's checks since its spawn.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    spawned: Instant,
    /// When the next check is due; `None` while one runs.
    next: Option<Instant>,
    /// When the check under way started (the fixed-rate schedule counts from there).
    due_at: Instant,
    /// The next step of the start-period ramp.
    ramp: Duration,
    /// When a check last passed, since the spawn.
    last_pass: Option<Instant>,
    /// Whether the last finished check passed.
    passing: bool,
    /// Counted failures in a row.
    failures: u32,
    /// The last failure's error, until a check passes.
    last_error: Option<String>,
    /// `Unhealthy` was returned: no further verdict for this spawn.
    acted: bool,
}

/// One instance's health as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthView {
    /// `passing`, `failing` or `starting`.
    pub(crate) state: &'static str,
    /// Counted failures in a row.
    pub(crate) failures: u32,
    /// The last failure's error, until a check passes.
    pub(crate) last_error: Option<String>,
}

impl Tracker {
    /// The checks of an instance spawned at `spawned`; `jitter` in `[0, 1)` places its first
    /// regular check within its first interval.
    pub(crate) fn new(spec: &HealthSpec, spawned: Instant, jitter: f64) -> Tracker {
        let first = if spec.start_period.is_zero() {
            spawned + spread(spec.interval, jitter)
        } else {
            spawned + RAMP_FIRST.min(spec.interval)
        };
        Tracker {
            spawned,
            next: Some(first),
            due_at: first,
            ramp: RAMP_FIRST.min(spec.interval),
            last_pass: None,
            passing: false,
            failures: 0,
            last_error: None,
            acted: false,
        }
    }

    /// When the next check is due; `None` while one runs, or once the instance was found
    /// unhealthy.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.next.filter(|_| !self.acted)
    }

    /// A check starts at `now` (the fixed-rate schedule counts from here: a check started late,
    /// say because the instance became ready long after its first check was due, does not make
    /// the next one come early).
    pub(crate) fn begin(&mut self, now: Instant) {
        self.next = None;
        self.due_at = now;
    }

    /// When a check last passed.
    pub(crate) fn last_pass(&self) -> Option<Instant> {
        self.last_pass
    }

    /// Records the check that started last, finished at `now`, and schedules the next one.
    pub(crate) fn finish(
        &mut self,
        spec: &HealthSpec,
        outcome: Outcome,
        now: Instant,
        jitter: f64,
    ) -> Verdict {
        let ramping = self.last_pass.is_none() && now < self.spawned + spec.start_period;
        let verdict = match outcome {
            Ok(()) => {
                let first = self.last_pass.is_none();
                self.last_pass = Some(now);
                self.passing = true;
                self.failures = 0;
                self.last_error = None;
                if first {
                    Verdict::FirstPass
                } else {
                    Verdict::Nothing
                }
            }
            Err(error) => {
                self.passing = false;
                self.last_error = Some(error.clone());
                if !ramping {
                    self.failures = self.failures.saturating_add(1);
                }
                if self.failures >= spec.retries && !self.acted {
                    self.acted = true;
                    Verdict::Unhealthy {
                        failures: self.failures,
                        error,
                    }
                } else {
                    Verdict::Nothing
                }
            }
        };
        self.next = Some(self.schedule(spec, ramping, now, jitter));
        verdict
    }

    /// When the check after the one that finished at `now` is due.
    fn schedule(&mut self, spec: &HealthSpec, ramping: bool, now: Instant, jitter: f64) -> Instant {
        if !ramping {
            return (self.due_at + spec.interval).max(now);
        }
        if self.last_pass.is_none() && now + self.ramp < self.spawned + spec.start_period {
            let at = now + self.ramp;
            self.ramp = (self.ramp * 2).min(RAMP_MAX.min(spec.interval));
            return at;
        }
        // The ramp is over (a pass, or the start period ends): regular checks from here,
        // spread over the interval.
        now + spread(spec.interval, jitter)
    }

    /// The health status shows.
    pub(crate) fn view(&self) -> HealthView {
        let state = if self.passing {
            "passing"
        } else if self.failures > 0 {
            "failing"
        } else {
            "starting"
        };
        HealthView {
            state,
            failures: self.failures,
            last_error: self.last_error.clone(),
        }
    }
}

/// A point in `(0, interval]`, from `jitter` in `[0, 1)`.
fn spread(interval: Duration, jitter: f64) -> Duration {
    let u = if jitter.is_finite() {
        1.0 - jitter.clamp(0.0, 1.0)
    } else {
        1.0
    };
    interval.mul_f64(u).max(Duration::from_millis(1))
}
