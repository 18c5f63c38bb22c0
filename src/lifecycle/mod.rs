//! The pure restart/backoff/limit state machine of one supervised instance.
//!
//! [`Instance::step`] is the whole policy: `(state, event, now, jitter) → (state, actions)`. It
//! owns when to spawn, when to signal, how long to back off, when a crash loop becomes `fatal`,
//! and what line to log for each change. It must not do I/O, read clocks, draw random numbers or
//! touch processes: time arrives as the `now` argument, jitter as a number in `[0, 1)`, and the
//! event loop carries out the returned [`Action`]s, feeding the outcome back as [`Event`]s
//! (`Action::Spawn` is answered by `Event::Spawned` or `Event::SpawnFailed`). The loop never
//! ticks periodically: it sleeps until [`Instance::deadline`], then sends `Event::Tick`.
//!
//! Two counters drive the policy, kept apart on purpose (OTP's restart intensity, s6's
//! backoff): `attempt` counts consecutive failures and sets the backoff delay; it resets after
//! the worker has been up (or ready) for `backoff_reset`, which is judged lazily when it exits,
//! so a healthy worker needs no timer. `recent` holds the instants of unhealthy failures inside
//! `restart_window`; more than `max_restarts` of them mark the instance `fatal`. Manual restarts
//! count in neither.
//!
//! An instance is down only when its whole process group is gone, not merely its main process:
//! the loop reports the main process's end as `Exited` when nothing else of its group is left,
//! and as `LeaderExited` (followed later by `GroupEmpty`) when members remain. Those members get
//! the stop signal, then `SIGKILL` at the stop's `kill_at` — also after an unexpected exit, before
//! the restart policy decides (systemd's `KillMode=control-group`) — so a respawn never runs
//! next to the remnants of its predecessor and nothing piles up across restarts. Members that
//! outlive even `SIGKILL` by [`KILL_GRACE`] (stuck in the kernel) are no longer waited for.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::Level;

use crate::policy::{ExitReason, ExitStatus, Policy, Readiness, Restart, fmt_duration};

/// How long a stopping instance whose main process is gone waits, after `SIGKILL`, for the rest
/// of its process group before it is treated as down anyway (members stuck in uninterruptible
/// sleep). The loop keeps killing and tracking that group; only the instance stops waiting.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// What a stopping instance does once its process group is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Stay down (`exited`).
    Stay,
    /// Spawn again at once, not counted as a failure (a manual restart).
    Restart,
    /// The process hung (a start or watchdog timeout): a failure whatever its exit status, which
    /// the restart policy handles as after a failed exit.
    Failed {
        /// It had been ready for `backoff_reset` (judged up to its last `WATCHDOG=1`): the
        /// backoff resets and the failure does not count towards the crash-loop limit.
        healthy: bool,
    },
    /// The main process exited on its own while other members of its process group remained;
    /// they are being stopped, and then the restart policy judges the exit status.
    Exited {
        /// It had been up (or ready) for `backoff_reset`.
        healthy: bool,
    },
}

/// Where one instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Never started, or exited and not restarted (its restart policy, or a stray process
    /// stopped).
    Exited,
    /// Stopped by hand ([`Event::Stop`] or [`Event::Kill`]: `warden stop PROG`, a shutdown) and
    /// kept down until the next [`Event::Start`] or [`Event::Restart`]. Its own state, not
    /// [`State::Exited`], so that an operator tells "I stopped it" from "it exited".
    Stopped,
    /// `Action::Spawn` was emitted; waiting for `Event::Spawned` or `Event::SpawnFailed`.
    Spawning,
    /// Up since `since`, readiness pending ([`Readiness::Notify`] or [`Readiness::After`]).
    Starting {
        /// The main pid.
        pid: i32,
        /// When it was spawned.
        since: Instant,
    },
    /// Up since `since`, with [`Readiness::Immediate`].
    Running {
        /// The main pid.
        pid: i32,
        /// When it was spawned.
        since: Instant,
    },
    /// Up since `since` and ready since `ready_at`.
    Ready {
        /// The main pid.
        pid: i32,
        /// When it was spawned.
        since: Instant,
        /// When it became ready.
        ready_at: Instant,
    },
    /// Waiting to spawn again at `until`.
    Backoff {
        /// When the next spawn is due.
        until: Instant,
    },
    /// The stop signal was sent at `since` to the process group; SIGKILL follows at `kill_at`
    /// unless `killed`. Down once the main process is reaped *and* its group is empty.
    Stopping {
        /// The main pid, which is also the process group id.
        pid: i32,
        /// When the stop began.
        since: Instant,
        /// When SIGKILL is due (or was sent).
        kill_at: Instant,
        /// Whether SIGKILL was already sent.
        killed: bool,
        /// What happens once the process group is gone.
        then: AfterStop,
        /// The main process was reaped; other members of its group remain (its pid now names
        /// only the group, and must not be signalled as a process).
        reaped: bool,
    },
    /// Gave up after a crash loop; kept visible, not retried until a manual start.
    Fatal,
}

impl State {
    /// The status name: `exited`, `stopped`, `starting` (also for `Spawning`), `running`,
    /// `ready`, `backoff`, `stopping` or `fatal`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Exited => "exited",
            State::Stopped => "stopped",
            State::Spawning | State::Starting { .. } => "starting",
            State::Running { .. } => "running",
            State::Ready { .. } => "ready",
            State::Backoff { .. } => "backoff",
            State::Stopping { .. } => "stopping",
            State::Fatal => "fatal",
        }
    }

    /// The main pid while a process is alive (including while stopping).
    pub fn pid(&self) -> Option<i32> {
        match *self {
            State::Starting { pid, .. }
            | State::Running { pid, .. }
            | State::Ready { pid, .. }
            | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Whether a live process belongs to this state (starting, running, ready or stopping).
    pub fn is_up(&self) -> bool {
        self.pid().is_some()
    }
}

/// Something that happened to an instance, fed to [`Instance::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Initial or manual start; a manual start resets the backoff and the crash-loop counter.
    Start,
    /// Stop and stay down (manual, or graceful shutdown).
    Stop,
    /// Manual restart: stop, then spawn again; not counted as a failure.
    Restart,
    /// Fast shutdown: SIGKILL now, stay down.
    Kill,
    /// The loop spawned the process answering `Action::Spawn`.
    Spawned {
        /// The main pid.
        pid: i32,
    },
    /// The loop could not spawn; counts as a failure exit before ready.
    SpawnFailed,
    /// The main pid was reaped and nothing else is left of its process group.
    Exited {
        /// How it ended.
        status: ExitStatus,
    },
    /// The main pid was reaped, but other members of its process group remain: the instance
    /// stops them (or goes on stopping them) before it is down. `GroupEmpty` follows.
    LeaderExited {
        /// How the main process ended.
        status: ExitStatus,
    },
    /// The process group of a main process reported by `LeaderExited` is now empty.
    GroupEmpty,
    /// `READY=1` arrived on the notify socket.
    Ready,
    /// `WATCHDOG=1` arrived on the notify socket.
    WatchdogPing,
    /// A health check passed: a [`Readiness::Health`] instance that is starting becomes ready.
    HealthPassed,
    /// The health check failed `retries` times in a row: stop the instance as failed, and
    /// record [`ExitReason::Health`] beside its exit status. Ignored unless it is up and not
    /// already stopping.
    Unhealthy {
        /// When a check last passed, if one did: an instance that had passed for
        /// `backoff_reset` after it became ready is not counted as a crash.
        last_pass: Option<Instant>,
    },
    /// A deadline may have passed (the step's `now` is the current time).
    Tick,
}

/// What the event loop must do after a step, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the process, then feed `Event::Spawned` or `Event::SpawnFailed` back.
    Spawn,
    /// Ask the process group of `pid` to stop as the policy says ([`Policy::stop`]): its stop
    /// signal to the group (and to `pid`, until it has been reaped), or the pool's request.
    Stop {
        /// The main pid.
        pid: i32,
    },
    /// Send `SIGKILL` to the process group of `pid` (and to `pid`, until it has been reaped).
    Kill {
        /// The main pid.
        pid: i32,
    },
    /// Log one grep-able line; the loop prefixes `NAME[INDEX]: `.
    Log {
        /// The level.
        level: Level,
        /// The line, without the prefix.
        message: String,
    },
}

/// One supervised instance: its state and the counters the policy needs.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The current state.
    pub state: State,
    /// Every respawn after the first start, automatic or manual (for status).
    pub restarts: u32,
    /// How the last process ended, if one did.
    pub last_exit: Option<ExitStatus>,
    /// Why warden ended the last process, when it did so on a verdict of its own (a failed
    /// health check, a start or watchdog timeout), or the OOM killer did; `None` after any
    /// other end. Such an end is a failure whatever the exit status.
    pub last_reason: Option<ExitReason>,
    /// A stop was asked; remembered until the next start or restart.
    pub manual_stop: bool,
    /// Consecutive failures; drives the backoff delay.
    attempt: u32,
    /// Instants of unhealthy failure restarts inside the restart window, oldest first.
    recent: VecDeque<Instant>,
    /// The last `WATCHDOG=1` (or spawn/ready instant).
    last_ping: Option<Instant>,
}

/// All of an [`Instance`], its private counters included (see [`Instance::saved`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// The state.
    pub state: State,
    /// Respawns so far.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Why warden ended it, on a verdict of its own.
    pub last_reason: Option<ExitReason>,
    /// A stop was asked.
    pub manual_stop: bool,
    /// Consecutive failures (the backoff's exponent).
    pub attempt: u32,
    /// Unhealthy restarts inside the restart window, oldest first.
    pub recent: Vec<Instant>,
    /// The last `WATCHDOG=1` (or spawn/ready instant).
    pub last_ping: Option<Instant>,
}

impl Default for Instance {
    /// The same as [`Instance::new`].
    fn default() -> Instance {
        Instance::new()
    }
}

impl Instance {
    /// A fresh instance in state [`State::Exited`], never started.
    pub fn new() -> Instance {
        Instance {
            state: State::Exited,
            restarts: 0,
            last_exit: None,
            last_reason: None,
            manual_stop: false,
            attempt: 0,
            recent: VecDeque::new(),
            last_ping: None,
        }
    }

    /// Everything the instance knows, to hand it to another process image (`warden upgrade`)
    /// and rebuild it there with [`Instance::from_saved`].
    pub fn saved(&self) -> Saved {
        Saved {
            state: self.state.clone(),
            restarts: self.restarts,
            last_exit: self.last_exit,
            last_reason: self.last_reason,
            manual_stop: self.manual_stop,
            attempt: self.attempt,
            recent: self.recent.iter().copied().collect(),
            last_ping: self.last_ping,
        }
    }

    /// The instance [`Instance::saved`] described.
    pub fn from_saved(s: Saved) -> Instance {
        Instance {
            state: s.state,
            restarts: s.restarts,
            last_exit: s.last_exit,
            last_reason: s.last_reason,
            manual_stop: s.manual_stop,
            attempt: s.attempt,
            recent: s.recent.into(),
            last_ping: s.last_ping,
        }
    }

    /// Applies `event` at `now` and returns what the loop must do. `jitter` in `[0, 1)` spreads
    /// the backoff delay over ±25 %; it is only used when a delay is chosen.
    pub fn step(
        &mut self,
        policy: &Policy,
        event: Event,
        now: Instant,
        jitter: f64,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => self.on_start(&mut out),
            Event::Stop => self.on_stop(policy, now, &mut out),
            Event::Restart => self.on_restart(policy, now, &mut out),
            Event::Kill => self.on_kill(now, &mut out),
            Event::Spawned { pid } => self.on_spawned(policy, pid, now, &mut out),
            Event::SpawnFailed => {
                if self.state == State::Spawning {
                    if policy.restart.wants(true) {
                        self.after_failure(policy, now, jitter, false, "spawn failed", &mut out);
                    } else {
                        self.not_restarted(policy, "spawn failed", &mut out);
                    }
                }
            }
            Event::Exited { status } => self.on_exited(policy, status, now, jitter, &mut out),
            Event::LeaderExited { status } => self.on_leader_exited(policy, status, now, &mut out),
            Event::GroupEmpty => {
                if let State::Stopping { reaped: true, .. } = self.state {
                    self.finish_stop(policy, now, jitter, &mut out);
                }
            }
            Event::Ready => {
                if let State::Starting { pid, since } = self.state
                    && policy.readiness == Readiness::Notify
                {
                    self.state = State::Ready {
                        pid,
                        since,
                        ready_at: now,
                    };
                    self.last_ping = Some(now);
                    log(&mut out, Level::Info, "ready".to_string());
                }
            }
            Event::WatchdogPing => self.last_ping = Some(now),
            Event::HealthPassed => self.on_health_passed(policy, now, &mut out),
            Event::Unhealthy { last_pass } => self.on_unhealthy(policy, last_pass, now, &mut out),
            Event::Tick => self.on_tick(policy, now, jitter, &mut out),
        }
        out
    }

    /// `Start`: from a down state spawn now, forgetting past failures. While stopping, the
    /// start is remembered as a restart once the process is gone.
    fn on_start(&mut self, out: &mut Vec<Action>) {
        match self.state {
            State::Exited | State::Stopped | State::Fatal | State::Backoff { .. } => {
                self.reset_failures();
                self.manual_stop = false;
                self.spawn(out);
            }
            State::Stopping { .. } => {
                self.reset_failures();
                self.manual_stop = false;
                self.set_then(AfterStop::Restart);
            }
            _ => {}
        }
    }

    /// `Stop`: ask the live process to stop, or cancel a pending spawn. An instance already
    /// down (exited, or fatal) becomes `stopped`: it was asked to, and stays down.
    fn on_stop(&mut self, policy: &Policy, now: Instant, out: &mut Vec<Action>) {
        self.manual_stop = true;
        match self.state {
            State::Starting { .. } | State::Running { .. } | State::Ready { .. } => {
                self.begin_stop(policy, now, AfterStop::Stay, out);
                log(out, Level::Info, format!("stopping ({})", policy.stop));
            }
            State::Backoff { .. } | State::Spawning => {
                self.state = State::Stopped;
                log(out, Level::Info, "stopped (restart cancelled)".to_string());
            }
            State::Stopping { .. } => self.set_then(AfterStop::Stay),
            State::Exited | State::Fatal => {
                self.state = State::Stopped;
                log(out, Level::Info, "stopped".to_string());
            }
            State::Stopped => {}
        }
    }

    /// `Restart` (manual): stop then spawn again, counting neither as a failure.
    fn on_restart(&mut self, policy: &Policy, now: Instant, out: &mut Vec<Action>) {
        match self.state {
            State::Starting { .. } | State::Running { .. } | State::Ready { .. } => {
                self.manual_stop = false;
                self.begin_stop(policy, now, AfterStop::Restart, out);
                log(out, Level::Info, format!("restarting ({})", policy.stop));
            }
            State::Exited | State::Stopped | State::Fatal => {
                // A respawn after an earlier run counts; the very first start does not.
                if self.last_exit.is_some() {
                    self.restarts = self.restarts.saturating_add(1);
                }
                self.on_start(out);
            }
            // The pending automatic respawn was already counted when the backoff began.
            State::Backoff { .. } => self.on_start(out),
            State::Stopping { .. } => {
                self.manual_stop = false;
                self.set_then(AfterStop::Restart);
            }
            State::Spawning => {}
        }
    }

    /// `Kill`: SIGKILL the live process now and stay down.
    fn on_kill(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.manual_stop = true;
        match self.state {
            State::Starting { pid, .. } | State::Running { pid, .. } | State::Ready { pid, .. } => {
                self.state = State::Stopping {
                    pid,
                    since: now,
                    kill_at: now,
                    killed: true,
                    then: AfterStop::Stay,
                    reaped: false,
                };
                out.push(Action::Kill { pid });
                log(out, Level::Info, "killing (sent SIGKILL)".to_string());
            }
            State::Stopping {
                pid,
                since,
                kill_at,
                reaped,
                ..
            } => {
                // SIGKILL goes now: the grace for stuck members counts from here.
                self.state = State::Stopping {
                    pid,
                    since,
                    kill_at: kill_at.min(now),
                    killed: true,
                    then: AfterStop::Stay,
                    reaped,
                };
                out.push(Action::Kill { pid });
                log(out, Level::Info, "killing (sent SIGKILL)".to_string());
            }
            State::Backoff { .. } | State::Spawning => {
                self.state = State::Stopped;
                log(out, Level::Info, "stopped (restart cancelled)".to_string());
            }
            State::Exited | State::Stopped | State::Fatal => {}
        }
    }

    /// `Spawned`: the process is up. A pid arriving when no spawn is pending (a stop raced the
    /// spawn) belongs to nobody, so it is stopped rather than leaked.
    fn on_spawned(&mut self, policy: &Policy, pid: i32, now: Instant, out: &mut Vec<Action>) {
        match self.state {
            State::Spawning => {
                self.last_ping = Some(now);
                self.state = match policy.readiness {
                    Readiness::Immediate => State::Running { pid, since: now },
                    Readiness::Notify | Readiness::After(_) | Readiness::Health => {
                        State::Starting { pid, since: now }
                    }
                };
                log(out, Level::Info, format!("started (pid {pid})"));
            }
            State::Exited | State::Stopped | State::Fatal | State::Backoff { .. } => {
                // Track it as stopping so a graceful shutdown waits for it to be reaped.
                let was = self.state.name();
                self.state = State::Stopping {
                    pid,
                    since: now,
                    kill_at: later(now, policy.stop_timeout),
                    killed: false,
                    then: AfterStop::Stay,
                    reaped: false,
                };
                out.push(Action::Stop { pid });
                log(
                    out,
                    Level::Warn,
                    format!("spawned pid {pid} while {was}; stopping it"),
                );
            }
            _ => {
                out.push(Action::Kill { pid });
                log(
                    out,
                    Level::Error,
                    format!("unexpected second process (pid {pid}); sent SIGKILL"),
                );
            }
        }
    }

    /// `Exited`: an unexpected exit goes through the restart decision; an exit while stopping
    /// does what the stop planned. Either way the process group is already empty.
    fn on_exited(
        &mut self,
        policy: &Policy,
        status: ExitStatus,
        now: Instant,
        jitter: f64,
        out: &mut Vec<Action>,
    ) {
        match self.state {
            State::Starting { .. } | State::Running { .. } | State::Ready { .. } => {
                self.last_exit = Some(status);
                self.last_reason = None;
                let healthy = self.up_healthy(policy, now);
                if healthy {
                    self.attempt = 0;
                }
                let cause = format!("exited ({status})");
                if policy.restart.wants(!status.success()) {
                    self.after_failure(policy, now, jitter, healthy, &cause, out);
                } else {
                    self.not_restarted(policy, &cause, out);
                }
            }
            State::Stopping { reaped: false, .. } => {
                self.last_exit = Some(status);
                self.finish_stop(policy, now, jitter, out);
            }
            _ => {}
        }
    }

    /// `LeaderExited`: the main process is gone but members of its group remain. An unexpected
    /// exit becomes a stop of those members (the policy decides once they are gone); a stop in
    /// progress goes on, its `SIGKILL` still due at `kill_at`.
    fn on_leader_exited(
        &mut self,
        policy: &Policy,
        status: ExitStatus,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match self.state {
            State::Starting { pid, .. } | State::Running { pid, .. } | State::Ready { pid, .. } => {
                self.last_exit = Some(status);
                self.last_reason = None;
                let healthy = self.up_healthy(policy, now);
                if healthy {
                    self.attempt = 0;
                }
                self.state = State::Stopping {
                    pid,
                    since: now,
                    kill_at: later(now, policy.stop_timeout),
                    killed: false,
                    then: AfterStop::Exited { healthy },
                    reaped: true,
                };
                out.push(Action::Stop { pid });
                let stop = policy.stop;
                log(
                    out,
                    Level::Info,
                    format!("exited ({status}); stopping the rest of its process group ({stop})"),
                );
            }
            State::Stopping { reaped: false, .. } => {
                self.last_exit = Some(status);
                if let State::Stopping { reaped, .. } = &mut self.state {
                    *reaped = true;
                }
                log(
                    out,
                    Level::Info,
                    format!(
                        "main process exited ({status}); waiting for the rest of its process group"
                    ),
                );
            }
            _ => {}
        }
    }

    /// `HealthPassed`: a starting instance whose readiness is its health check is ready.
    fn on_health_passed(&mut self, policy: &Policy, now: Instant, out: &mut Vec<Action>) {
        if let State::Starting { pid, since } = self.state
            && policy.readiness == Readiness::Health
        {
            self.state = State::Ready {
                pid,
                since,
                ready_at: now,
            };
            self.last_ping = Some(now);
            log(out, Level::Info, "ready (health check passed)".to_string());
        }
    }

    /// `Unhealthy`: a live instance that is not already stopping is stopped as failed, its
    /// reason recorded. Healthy (not a crash) if checks passed for `backoff_reset` after it
    /// became ready (or, without a readiness check, after it started).
    fn on_unhealthy(
        &mut self,
        policy: &Policy,
        last_pass: Option<Instant>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let from = match self.state {
            State::Ready { ready_at, .. } => ready_at,
            State::Running { since, .. } => since,
            State::Starting { .. } => now,
            _ => return,
        };
        let healthy =
            last_pass.is_some_and(|t| t.saturating_duration_since(from) >= policy.backoff_reset);
        self.begin_stop(policy, now, AfterStop::Failed { healthy }, out);
        self.last_reason = Some(ExitReason::Health);
        log(out, Level::Warn, format!("unhealthy ({})", policy.stop));
    }

    /// Whether the live process had been up (`running`) or ready for `backoff_reset` by `now`.
    fn up_healthy(&self, policy: &Policy, now: Instant) -> bool {
        match self.state {
            State::Running { since, .. } => {
                now.saturating_duration_since(since) >= policy.backoff_reset
            }
            State::Ready { ready_at, .. } => {
                now.saturating_duration_since(ready_at) >= policy.backoff_reset
            }
            _ => false,
        }
    }

    /// The process group of a stopping instance is gone: do what the stop planned.
    fn finish_stop(&mut self, policy: &Policy, now: Instant, jitter: f64, out: &mut Vec<Action>) {
        let State::Stopping { then, .. } = self.state else {
            return;
        };
        let status = self
            .last_exit
            .map_or_else(|| "gone".to_string(), |s| s.to_string());
        match then {
            // Stopped by hand; or a stray process (spawned after a stop) gone, which leaves
            // the instance as down as it was.
            AfterStop::Stay if self.manual_stop => {
                self.state = State::Stopped;
                log(out, Level::Info, format!("stopped ({status})"));
            }
            AfterStop::Stay => {
                self.state = State::Exited;
                log(out, Level::Info, format!("stopped ({status})"));
            }
            AfterStop::Restart => {
                self.attempt = 0;
                self.restarts = self.restarts.saturating_add(1);
                log(out, Level::Info, format!("stopped ({status}); restarting"));
                self.spawn(out);
            }
            AfterStop::Failed { healthy } => {
                if healthy {
                    self.attempt = 0;
                }
                let cause = format!("exited ({status})");
                if policy.restart.wants(true) {
                    self.after_failure(policy, now, jitter, healthy, &cause, out);
                } else {
                    self.not_restarted(policy, &cause, out);
                }
            }
            AfterStop::Exited { healthy } => {
                let failed = !self.last_exit.is_some_and(|s| s.success());
                let cause = format!("exited ({status}), its process group gone");
                if policy.restart.wants(failed) {
                    self.after_failure(policy, now, jitter, healthy, &cause, out);
                } else {
                    self.not_restarted(policy, &cause, out);
                }
            }
        }
    }

    /// The failure path: count the failure unless `healthy`, give up on a crash loop, otherwise
    /// respawn now (first failure) or after an exponential, jittered backoff.
    fn after_failure(
        &mut self,
        policy: &Policy,
        now: Instant,
        jitter: f64,
        healthy: bool,
        cause: &str,
        out: &mut Vec<Action>,
    ) {
        // A spawn failure is an error in itself; an exit is routine and logged at info.
        let level = if self.state == State::Spawning {
            Level::Error
        } else {
            Level::Info
        };
        if !healthy {
            while let Some(&oldest) = self.recent.front() {
                if now.saturating_duration_since(oldest) > policy.restart_window {
                    self.recent.pop_front();
                } else {
                    break;
                }
            }
            self.recent.push_back(now);
            if self.recent.len() > policy.max_restarts as usize {
                self.state = State::Fatal;
                let msg = format!(
                    "{cause}; crash loop: {} restarts within {}; giving up (fatal)",
                    self.recent.len() - 1,
                    fmt_duration(policy.restart_window)
                );
                log(out, Level::Error, msg);
                return;
            }
        }
        let delay = if self.attempt == 0 {
            Duration::ZERO
        } else {
            backoff_delay(policy, self.attempt, jitter)
        };
        self.attempt = self.attempt.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        if delay.is_zero() {
            log(out, level, format!("{cause}; restarting"));
            self.spawn(out);
        } else {
            self.state = State::Backoff {
                until: later(now, delay),
            };
            log(
                out,
                level,
                format!("{cause}; restarting in {}", fmt_duration(delay)),
            );
        }
    }

    /// The instance stays down because the restart policy says so.
    fn not_restarted(&mut self, policy: &Policy, cause: &str, out: &mut Vec<Action>) {
        let level = if self.state == State::Spawning {
            Level::Error
        } else {
            Level::Info
        };
        self.state = State::Exited;
        let name = policy.restart.name();
        log(
            out,
            level,
            format!("{cause}; not restarted (restart = {name})"),
        );
    }

    /// Sends the stop signal to the live process and enters `Stopping`.
    fn begin_stop(
        &mut self,
        policy: &Policy,
        now: Instant,
        then: AfterStop,
        out: &mut Vec<Action>,
    ) {
        if let Some(pid) = self.state.pid() {
            self.last_reason = None;
            self.state = State::Stopping {
                pid,
                since: now,
                kill_at: later(now, policy.stop_timeout),
                killed: false,
                then,
                reaped: false,
            };
            out.push(Action::Stop { pid });
        }
    }

    /// Changes what a stopping instance does once reaped; other states are left alone.
    fn set_then(&mut self, new: AfterStop) {
        if let State::Stopping { then, .. } = &mut self.state {
            *then = new;
        }
    }

    /// Enters `Spawning` and asks the loop to spawn.
    fn spawn(&mut self, out: &mut Vec<Action>) {
        self.state = State::Spawning;
        out.push(Action::Spawn);
    }

    /// Forgets past failures (a manual start).
    fn reset_failures(&mut self) {
        self.attempt = 0;
        self.recent.clear();
    }
}

/// The backoff delay before the restart following `attempt` consecutive failures (`attempt >=
/// 1`): `backoff_initial × 2^(attempt−1) × (0.75 + 0.5 × jitter)`, capped at `backoff_max`.
/// Computed in floating point, so a huge `attempt` saturates at the cap instead of overflowing.
fn backoff_delay(policy: &Policy, attempt: u32, jitter: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let exponent = attempt.saturating_sub(1).min(1023) as i32;
    let secs = policy.backoff_initial.as_secs_f64() * 2f64.powi(exponent) * (0.75 + 0.5 * jitter);
    match Duration::try_from_secs_f64(secs) {
        Ok(d) => d.min(policy.backoff_max),
        Err(_) => policy.backoff_max,
    }
}

/// `now + d`, or the latest representable instant on the way there if that overflows (an
/// absurd configured duration must not panic the supervisor).
fn later(now: Instant, mut d: Duration) -> Instant {
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

/// The tail of a timeout message: what happens next under this policy.
fn restart_word(policy: &Policy) -> &'static str {
    match policy.restart {
        Restart::Never => "stopping (restart = never)",
        Restart::Always | Restart::OnFailure => "restarting",
    }
}

fn log(out: &mut Vec<Action>, level: Level, message: String) {
    out.push(Action::Log { level, message });
}

mod timers;

#[cfg(test)]
mod tests;
