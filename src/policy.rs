//! Plain policy data shared by everyone: how a supervised process is restarted, judged ready
//! and stopped, and how it ended.
//!
//! The configuration reader fills these in ([`crate::config`]), the per-instance state machine
//! applies them ([`crate::lifecycle`]), and both the supervisor and the job pool hand them to
//! it. This module is a leaf: it imports nothing from warden, does no I/O and reads no clock.
//! [`Jitter`] is the one pseudo-random source of restart jitter, and [`fmt_duration`] the one
//! spelling of durations in log lines.

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;

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
    pub(crate) fn wants(self, failed: bool) -> bool {
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
    /// At its first passing health check (`ready = "health"`; the supervisor runs the checks).
    Health,
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
    /// How a graceful stop is asked for: a signal to the process group (the supervisor), or a
    /// request over the worker's own channel (the job pool's `Shutdown` frame).
    pub stop: StopWith,
    /// How long a stopping instance has before SIGKILL.
    pub stop_timeout: Duration,
    /// When a spawned instance counts as started.
    pub readiness: Readiness,
    /// How long a [`Readiness::Notify`] instance may take to send `READY=1`, or a
    /// [`Readiness::Health`] instance to pass its first health check; `None` waits forever.
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
            stop: StopWith::Signal(Signal::SIGTERM),
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

    /// The end a raw `waitpid(2)` status says, any signal number kept (real-time ones too);
    /// `None` for a stop or a continue, which are no end.
    pub fn from_wait_status(status: i32) -> Option<ExitStatus> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signal {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            })
        } else {
            None
        }
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
                match known_signal_name(signal) {
                    Some(name) => write!(f, "signal {signal} ({name}{core})"),
                    None if core_dumped => write!(f, "signal {signal} (core dumped)"),
                    None => write!(f, "signal {signal}"),
                }
            }
        }
    }
}

/// Why warden ended a process that would otherwise have gone on running: recorded beside the
/// exit status it ended with, and shown as its last exit (`health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Its health check failed `retries` times in a row.
    Health,
    /// The kernel's OOM killer struck its cgroup (`oom_kill` in `memory.events`; cgroup mode).
    Oom,
    /// It did not become ready within `start_timeout`.
    StartTimeout,
    /// It stopped sending `WATCHDOG=1` for longer than its `watchdog`.
    Watchdog,
}

impl ExitReason {
    /// The name status shows: `health`, `oom`, `start_timeout` or `watchdog`.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::Health => "health",
            ExitReason::Oom => "oom",
            ExitReason::StartTimeout => "start_timeout",
            ExitReason::Watchdog => "watchdog",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a rolling restart replaces each instance (`update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Update {
    /// `"replace"`: stop the instance, then start its replacement (the default).
    #[default]
    Replace,
    /// `"surge"`: start the replacement beside the instance, and stop the instance once the
    /// replacement is ready: behind a held socket, no connection is refused.
    Surge,
}

impl Update {
    /// The name written in the configuration and shown by status.
    pub fn name(&self) -> &'static str {
        match self {
            Update::Replace => "replace",
            Update::Surge => "surge",
        }
    }
}

/// How a program's rolling restarts go (`update`, `probation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct UpdatePolicy {
    /// `update`: replace or surge.
    pub update: Update,
    /// `probation`: how long a new instance must live, and be ready, for a rollout to count it
    /// good; one that exits, goes `fatal`, misses its readiness or fails its health check within
    /// it stops the rollout and rolls it back. `None`: the default, 10 s with `surge` and none
    /// with `replace` (a rollout then stops at the first replacement that does not come back,
    /// as it always did).
    pub probation: Option<Duration>,
}

/// The default `probation` of a surge rollout.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(10);

impl UpdatePolicy {
    /// The probation in force (zero: none).
    pub fn probation(&self) -> Duration {
        self.probation.unwrap_or(match self.update {
            Update::Surge => DEFAULT_PROBATION,
            Update::Replace => Duration::ZERO,
        })
    }
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

/// How a graceful stop is asked for ([`Policy::stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWith {
    /// Send this signal to the process group (`stop_signal` in `warden.toml`).
    Signal(Signal),
    /// Ask over the worker's own channel: the job pool stops an idle worker with a `Shutdown`
    /// frame, not a signal.
    Request,
}

impl fmt::Display for StopWith {
    /// What was done, as log lines say it: `sent SIGTERM`, `asked to shut down`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopWith::Signal(sig) => write!(f, "sent {}", sig.as_str()),
            StopWith::Request => f.write_str("asked to shut down"),
        }
    }
}

/// The name of a signal number: `SIGTERM` for 15, `SIGRTMIN+2` for a real-time signal,
/// `signal 99` for one the system does not know.
pub fn signal_name(signal: i32) -> String {
    known_signal_name(signal).unwrap_or_else(|| format!("signal {signal}"))
}

/// The name of a signal the system knows: `SIGTERM`, `SIGRTMIN+2` (real-time signals are
/// named from `SIGRTMIN`, as `kill -l` does).
pub fn known_signal_name(signal: i32) -> Option<String> {
    if let Ok(sig) = Signal::try_from(signal) {
        return Some(sig.as_str().to_string());
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    (min..=max).contains(&signal).then(|| match signal - min {
        0 => "SIGRTMIN".to_string(),
        k => format!("SIGRTMIN+{k}"),
    })
}

/// The pseudo-random numbers that spread restart delays (xorshift64*, Vigna 2016): fast, no
/// dependency, and plenty for jitter — not for anything that must be unpredictable.
#[derive(Debug, Clone)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    /// A generator seeded from the clock and the pid, so that two supervisors started together
    /// do not restart in step.
    pub fn from_entropy() -> Jitter {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter::seeded(now ^ (u64::from(std::process::id()) << 32))
    }

    /// A generator with a fixed seed (tests, reproducible benchmarks).
    pub fn seeded(seed: u64) -> Jitter {
        Jitter { state: seed | 1 }
    }

    /// The next number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_unit_interval_and_spreads() {
        let mut j = Jitter::seeded(42);
        let xs: Vec<f64> = (0..10_000).map(|_| j.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let low = xs.iter().filter(|x| **x < 0.5).count();
        assert!((4_500..5_500).contains(&low), "{low} of 10000 below 0.5");
    }

    #[test]
    fn jitter_with_the_same_seed_repeats_and_zero_is_a_valid_seed() {
        let (mut a, mut b) = (Jitter::seeded(7), Jitter::seeded(7));
        assert_eq!(a.next_unit(), b.next_unit());
        let mut z = Jitter::seeded(0);
        assert_ne!(z.next_unit(), z.next_unit());
    }

    #[test]
    fn stop_with_words_name_what_was_done() {
        assert_eq!(StopWith::Signal(Signal::SIGINT).to_string(), "sent SIGINT");
        assert_eq!(StopWith::Request.to_string(), "asked to shut down");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(99), "signal 99");
    }
}
