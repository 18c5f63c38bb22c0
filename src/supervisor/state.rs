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
use std::fmt;
use std::time::{Duration, Instant};

use log::Level;

/// How long a stopping instance whose main process is gone waits, after `SIGKILL`, for the rest
/// of its process group before it is treated as down anyway (members stuck in uninterruptible
/// sleep). The loop keeps killing and tracking that group; only the instance stops waiting.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// When an instance that exited on its own is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Restart after every exit, successful or not.
    Always,
    /// Restart after a non-zero exit code or death by a signal, not after exit code 0.
    OnFailure,
    /// Never restart; the instance stays `exited`.
    Never,
}

impl Restart {
    /// The configuration spelling: `"always"`, `"on-failure"` or `"never"`.
    pub fn name(&self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }

    /// Whether an exit that was (`failed`) or was not a failure leads to a restart.
    fn wants(self, failed: bool) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        }
    }
}

/// When a spawned instance counts as started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as it is spawned (state `running`).
    Immediate,
    /// When it sends `READY=1` on the notify socket (systemd's `Type=notify`).
    Notify,
    /// When it has stayed up this long (supervisord's `startsecs`).
    After(Duration),
}

/// The frozen per-program policy the state machine applies; see [`Policy::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Which exits are followed by a restart.
    pub restart: Restart,
    /// The delay of the second consecutive failure restart (the first is immediate).
    pub backoff_initial: Duration,
    /// The cap of the exponential backoff delay.
    pub backoff_max: Duration,
    /// Up (`running`) or ready (`ready`) this long counts as healthy: the backoff resets and the
    /// exit is not counted towards the crash-loop limit.
    pub backoff_reset: Duration,
    /// More unhealthy failures than this inside `restart_window` make the instance `fatal`.
    pub max_restarts: u32,
    /// The sliding window of the crash-loop limit.
    pub restart_window: Duration,
    /// The signal that asks the process group to stop.
    pub stop_signal: i32,
    /// How long a stopping instance has before SIGKILL.
    pub stop_timeout: Duration,
    /// When a spawned instance counts as started.
    pub readiness: Readiness,
    /// How long a [`Readiness::Notify`] instance may take to send `READY=1`; `None` waits forever.
    pub start_timeout: Option<Duration>,
    /// Once `ready`, an instance silent on `WATCHDOG=1` for this long is stopped and restarted.
    pub watchdog: Option<Duration>,
}

impl Default for Policy {
    /// `always`, backoff 100 ms doubling to 30 s and reset after 1 s up, 5 restarts in 60 s,
    /// SIGTERM then SIGKILL after 10 s, immediate readiness, 90 s start timeout, no watchdog.
    fn default() -> Policy {
        Policy {
            restart: Restart::Always,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            backoff_reset: Duration::from_secs(1),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            readiness: Readiness::Immediate,
            start_timeout: Some(Duration::from_secs(90)),
            watchdog: None,
        }
    }
}

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Exit code 0; everything else (including any signal) is a failure.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    /// `exit code 3`, `signal 9 (SIGKILL)`, `signal 11 (SIGSEGV, core dumped)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => {
                let core = if core_dumped { ", core dumped" } else { "" };
                match nix::sys::signal::Signal::try_from(signal) {
                    Ok(sig) => write!(f, "signal {signal} ({}{core})", sig.as_str()),
                    Err(_) if core_dumped => write!(f, "signal {signal} (core dumped)"),
                    Err(_) => write!(f, "signal {signal}"),
                }
            }
        }
    }
}

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
    /// A deadline may have passed (the step's `now` is the current time).
    Tick,
}

/// What the event loop must do after a step, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the process, then feed `Event::Spawned` or `Event::SpawnFailed` back.
    Spawn,
    /// Send `signal` to the process group of `pid` (and to `pid`, until it has been reaped).
    Signal {
        /// The main pid.
        pid: i32,
        /// The signal number.
        signal: i32,
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
    /// A stop was asked; remembered until the next start or restart.
    pub manual_stop: bool,
    /// Consecutive failures; drives the backoff delay.
    attempt: u32,
    /// Instants of unhealthy failure restarts inside the restart window, oldest first.
    recent: VecDeque<Instant>,
    /// The last `WATCHDOG=1` (or spawn/ready instant).
    last_ping: Option<Instant>,
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
            manual_stop: false,
            attempt: 0,
            recent: VecDeque::new(),
            last_ping: None,
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
            Event::Tick => self.on_tick(policy, now, jitter, &mut out),
        }
        out
    }

    /// The nearest instant at which a `Tick` could change something, or `None` when nothing is
    /// pending. A `running` instance has none: its backoff reset is judged when it exits.
    pub fn deadline(&self, policy: &Policy) -> Option<Instant> {
        match self.state {
            State::Backoff { until } => Some(until),
            State::Starting { since, .. } => match policy.readiness {
                Readiness::After(d) => since.checked_add(d),
                Readiness::Notify => policy.start_timeout.and_then(|t| since.checked_add(t)),
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
                let signal = signal_name(policy.stop_signal);
                log(out, Level::Info, format!("stopping (sent {signal})"));
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
                let signal = signal_name(policy.stop_signal);
                log(out, Level::Info, format!("restarting (sent {signal})"));
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
                out.push(Action::Signal {
                    pid,
                    signal: libc::SIGKILL,
                });
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
                out.push(Action::Signal {
                    pid,
                    signal: libc::SIGKILL,
                });
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
                    Readiness::Notify | Readiness::After(_) => State::Starting { pid, since: now },
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
                out.push(Action::Signal {
                    pid,
                    signal: policy.stop_signal,
                });
                log(
                    out,
                    Level::Warn,
                    format!("spawned pid {pid} while {was}; stopping it"),
                );
            }
            _ => {
                out.push(Action::Signal {
                    pid,
                    signal: libc::SIGKILL,
                });
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
                out.push(Action::Signal {
                    pid,
                    signal: policy.stop_signal,
                });
                let signal = signal_name(policy.stop_signal);
                log(
                    out,
                    Level::Info,
                    format!(
                        "exited ({status}); stopping the rest of its process group (sent {signal})"
                    ),
                );
            }
            State::Stopping {
                pid,
                since,
                kill_at,
                killed,
                then,
                reaped: false,
            } => {
                self.last_exit = Some(status);
                self.state = State::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed,
                    then,
                    reaped: true,
                };
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

    /// `Tick`: act on whichever deadline has passed.
    fn on_tick(&mut self, policy: &Policy, now: Instant, jitter: f64, out: &mut Vec<Action>) {
        match self.state {
            State::Backoff { until } if now >= until => self.spawn(out),
            State::Starting { pid, since } => {
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
                    Readiness::Notify => {
                        if let Some(t) = policy.start_timeout
                            && up >= t
                        {
                            let what = restart_word(policy);
                            let msg = format!(
                                "did not report READY=1 within {}; {what}",
                                fmt_duration(t)
                            );
                            log(out, Level::Warn, msg);
                            let then = AfterStop::Failed { healthy: false };
                            self.begin_stop(policy, now, then, out);
                        }
                    }
                    _ => {}
                }
            }
            State::Ready { ready_at, .. } => {
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
                    // Healthy if it kept pinging for backoff_reset after it became ready: a hang
                    // after a long good run is not a crash loop, and restarts at once. Judged up
                    // to the last ping, so a worker that hangs right after READY=1 is not.
                    let healthy =
                        last_ping.saturating_duration_since(ready_at) >= policy.backoff_reset;
                    self.begin_stop(policy, now, AfterStop::Failed { healthy }, out);
                }
            }
            State::Stopping {
                pid,
                since,
                kill_at,
                killed: false,
                then,
                reaped,
            } if now >= kill_at => {
                self.state = State::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed: true,
                    then,
                    reaped,
                };
                out.push(Action::Signal {
                    pid,
                    signal: libc::SIGKILL,
                });
                let waited = fmt_duration(kill_at.saturating_duration_since(since));
                log(
                    out,
                    Level::Warn,
                    format!("did not stop within {waited}; sent SIGKILL"),
                );
            }
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
            self.state = State::Stopping {
                pid,
                since: now,
                kill_at: later(now, policy.stop_timeout),
                killed: false,
                then,
                reaped: false,
            };
            out.push(Action::Signal {
                pid,
                signal: policy.stop_signal,
            });
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

/// `SIGTERM` for 15, the number for an unknown signal.
fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(sig) => sig.as_str().to_string(),
        Err(_) => format!("signal {signal}"),
    }
}

fn log(out: &mut Vec<Action>, level: Level, message: String) {
    out.push(Action::Log { level, message });
}

/// Formats a duration compactly for log lines: `0s`, `250µs`, `100ms`, `1.6s`, `30s`, `1m30s`,
/// `2h`, `1h5m`. Milliseconds are rounded, seconds shown with at most one decimal below a
/// minute, whole seconds from a minute on, whole minutes from an hour on.
pub fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d < Duration::from_millis(1) {
        let micros = d.as_micros();
        return if micros == 0 {
            format!("{}ns", d.as_nanos())
        } else {
            format!("{micros}µs")
        };
    }
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = (ms + 500) / 1000;
    if secs < 3600 {
        let (m, s) = (secs / 60, secs % 60);
        return if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        };
    }
    let (h, m) = (secs / 3600, secs % 3600 / 60);
    if m == 0 {
        format!("{h}h")
    } else {
        format!("{h}h{m}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn signals(actions: &[Action]) -> Vec<(i32, i32)> {
        actions
            .iter()
            .filter_map(|a| match *a {
                Action::Signal { pid, signal } => Some((pid, signal)),
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
        assert_eq!(signals(&a), vec![(7, TERM)]);
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
        assert_eq!(signals(&a), vec![(7, KILL)]);
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
            stop_signal: libc::SIGINT,
            stop_timeout: secs(2),
            ..Policy::default()
        };
        let t0 = Instant::now();
        let mut i = Instance::new();
        up(&mut i, &p, t0, 3);
        let a = i.step(&p, Event::Stop, t0, 0.5);
        assert_eq!(signals(&a), vec![(3, libc::SIGINT)]);
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
            assert_eq!(signals(&a), vec![(i.state.pid().unwrap(), TERM)]);
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
        assert_eq!(signals(&a), vec![(4, KILL)]);
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
        assert_eq!(signals(&a), vec![(5, KILL)]);
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
        assert_eq!(signals(&a), vec![(9, TERM)]);
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
        assert_eq!(signals(&a), vec![(9, TERM)]);
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
        assert_eq!(signals(&a), vec![(5, TERM)]);
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
        assert_eq!(signals(&a), vec![(8, KILL)]);
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
            assert_eq!(signals(&a), vec![(7, TERM)]);
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
            assert_eq!(signals(&a), vec![(7, KILL)]);
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
        assert_eq!(signals(&a), vec![(7, KILL)]);
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
        assert_eq!(signals(&a), vec![(5, TERM)]);
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
        assert_eq!(signals(&a), vec![(5, KILL)]);
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
}
