//! The supervisor's state as another image of warden reads it: plain, versioned, serialisable
//! records, every instant an offset from one moment of `CLOCK_MONOTONIC` (which `execve` does
//! not reset), every descriptor a number kept open across the exec.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lifecycle::{AfterStop, Saved, State};
use crate::policy::{ExitReason, ExitStatus};

/// The state formats this build reads and writes. A newer warden that changes the format
/// counts up and keeps reading the older ones it can; an older one refuses a newer state
/// cleanly (`warden upgrade` asks the new binary first, `warden resume --formats`).
pub const STATE_FORMAT: u32 = 1;

/// Instants as offsets from one moment, carried across `execve`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// The moment, as an `Instant` of this image.
    anchor: Instant,
}

impl Clock {
    /// Offsets from now; with the monotonic clock's reading of now, to carry along.
    pub(crate) fn export() -> (Clock, u64) {
        let anchor = Instant::now();
        (Clock { anchor }, monotonic_ns())
    }

    /// The clock of the image that wrote `monotonic_ns`, in this image: the same moment.
    pub(crate) fn import(monotonic_ns: u64) -> Clock {
        let now = Instant::now();
        let since = Duration::from_nanos(monotonic_ns_now().saturating_sub(monotonic_ns));
        Clock {
            anchor: now.checked_sub(since).unwrap_or(now),
        }
    }

    /// `t` as nanoseconds after (or, negative, before) the anchor.
    pub(crate) fn off(&self, t: Instant) -> i64 {
        if t >= self.anchor {
            i64::try_from((t - self.anchor).as_nanos()).unwrap_or(i64::MAX)
        } else {
            -i64::try_from((self.anchor - t).as_nanos()).unwrap_or(i64::MAX)
        }
    }

    /// The instant `off` nanoseconds from the anchor.
    pub(crate) fn at(&self, off: i64) -> Instant {
        let d = Duration::from_nanos(off.unsigned_abs());
        if off >= 0 {
            self.anchor + d
        } else {
            self.anchor.checked_sub(d).unwrap_or(self.anchor)
        }
    }
}

fn monotonic_ns() -> u64 {
    monotonic_ns_now()
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (what `Instant` reads on Linux).
fn monotonic_ns_now() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Everything the supervisor hands over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SupState {
    /// The private notify socket and its abstract name.
    pub(crate) notify: (RawFd, String),
    /// The control socket's listener.
    pub(crate) control: Option<RawFd>,
    /// The guard process: its pid and our end of its socket pair.
    pub(crate) guard: Option<(i32, RawFd)>,
    /// Held sockets, by name.
    pub(crate) sockets: Vec<(String, RawFd)>,
    /// The `/metrics` listener.
    #[serde(default)]
    pub(crate) metrics: Option<RawFd>,
    pub(crate) programs: Vec<ProgramRec>,
    /// Tracked process groups: group id, program, slot, whether the leader was reaped.
    pub(crate) groups: Vec<(i32, String, u32, bool)>,
    /// cgroup mode, when in force: warden's hierarchy and each tracked group's cgroup.
    #[serde(default)]
    pub(crate) cgroup: Option<CgroupRec>,
    pub(crate) pipes: Vec<PipeRec>,
    /// Rollbacks so far (`ControlPlane::rollbacks`).
    pub(crate) rollbacks: u64,
    /// When the supervisor was built (warden's uptime).
    pub(crate) started_at: i64,
    /// The connection that asked for the upgrade, to answer once the new image has taken over.
    pub(crate) requester: Option<RawFd>,
    /// The other open control connections, with what they sent that is not a whole request.
    #[serde(default)]
    pub(crate) conns: Vec<(RawFd, Vec<u8>)>,
    /// The subscribers to events (`warden events`), whose streams go on.
    #[serde(default)]
    pub(crate) subscribers: Vec<RawFd>,
}

impl SupState {
    /// Every descriptor the state names, to keep open across the exec.
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.notify.0];
        fds.extend(self.control);
        fds.extend(self.guard.map(|(_, fd)| fd));
        fds.extend(self.sockets.iter().map(|(_, fd)| *fd));
        fds.extend(self.metrics);
        fds.extend(self.pipes.iter().map(|p| p.fd));
        fds.extend(self.requester);
        fds.extend(self.conns.iter().map(|(fd, _)| *fd));
        fds.extend(&self.subscribers);
        fds
    }
}

/// cgroup mode as handed over: the hierarchy (the inotify descriptor is made again) and the
/// cgroup of each tracked group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CgroupRec {
    /// The cgroup warden was started in.
    pub(crate) parent: std::path::PathBuf,
    /// warden's base cgroup (`PARENT/warden-PID`).
    pub(crate) base: std::path::PathBuf,
    /// Each tracked group's cgroup: group id, directory, `oom_kill` count at its spawn.
    pub(crate) groups: Vec<(i32, std::path::PathBuf, u64)>,
}

/// One program.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProgramRec {
    pub(crate) name: String,
    /// Its instance count (a `scale` may differ from the file).
    pub(crate) instances: u32,
    pub(crate) spec_gen: u64,
    pub(crate) rollbacks: (u64, Option<String>),
    pub(crate) rolled_back: Option<String>,
    pub(crate) next_id: u32,
    pub(crate) slots: Vec<SlotRec>,
}

/// One slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SlotRec {
    pub(crate) id: u32,
    pub(crate) index: usize,
    pub(crate) retiring: bool,
    pub(crate) spec_gen: u64,
    pub(crate) inst: InstanceRec,
    pub(crate) up_since: Option<i64>,
    pub(crate) status_text: Option<String>,
    pub(crate) main_pid: Option<i32>,
    pub(crate) launcher_gone: bool,
    /// Why its exec failed, if it did.
    pub(crate) exec_failed: Option<String>,
    /// Held by its dependencies, and why.
    pub(crate) hold: Option<Option<String>>,
    pub(crate) health_error: Option<String>,
    /// What `/metrics` counts for it.
    #[serde(default)]
    pub(crate) counters: crate::supervisor::metrics::Counters,
}

/// An output pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PipeRec {
    pub(crate) fd: RawFd,
    pub(crate) program: String,
    pub(crate) index: usize,
    /// The process whose pipe it is.
    pub(crate) pid: i32,
    pub(crate) stderr: bool,
    /// The unfinished line read so far.
    pub(crate) partial: Vec<u8>,
}

/// An instance's state machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InstanceRec {
    state: StateRec,
    restarts: u32,
    last_exit: Option<ExitRec>,
    health_reason: bool,
    /// The last exit was the OOM killer's (cgroup mode).
    #[serde(default)]
    oom_reason: bool,
    /// The last process was ended for not becoming ready in time, or by its watchdog (its
    /// `ExitReason` then; absent in an older image's state).
    #[serde(default)]
    timeout_reason: Option<TimeoutRec>,
    manual_stop: bool,
    attempt: u32,
    recent: Vec<i64>,
    last_ping: Option<i64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum TimeoutRec {
    StartTimeout,
    Watchdog,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ExitRec {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum StateRec {
    Exited,
    Stopped,
    Starting {
        pid: i32,
        since: i64,
    },
    Running {
        pid: i32,
        since: i64,
    },
    Ready {
        pid: i32,
        since: i64,
        ready_at: i64,
    },
    Backoff {
        until: i64,
    },
    Stopping {
        pid: i32,
        since: i64,
        kill_at: i64,
        killed: bool,
        then: ThenRec,
        reaped: bool,
    },
    Fatal,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum ThenRec {
    Stay,
    Restart,
    Failed { healthy: bool },
    Exited { healthy: bool },
}

impl InstanceRec {
    /// `s` written with `clock`; `None` for a state that never lasts past one event
    /// (`spawning`), which cannot be handed over.
    pub(crate) fn of(s: &Saved, clock: &Clock) -> Option<InstanceRec> {
        let o = |t: Instant| clock.off(t);
        let state = state_rec(&s.state, clock)?;
        Some(InstanceRec {
            state,
            restarts: s.restarts,
            last_exit: s.last_exit.map(|e| match e {
                ExitStatus::Code(c) => ExitRec::Code(c),
                ExitStatus::Signal {
                    signal,
                    core_dumped,
                } => ExitRec::Signal {
                    signal,
                    core_dumped,
                },
            }),
            health_reason: s.last_reason == Some(ExitReason::Health),
            oom_reason: s.last_reason == Some(ExitReason::Oom),
            timeout_reason: match s.last_reason {
                Some(ExitReason::StartTimeout) => Some(TimeoutRec::StartTimeout),
                Some(ExitReason::Watchdog) => Some(TimeoutRec::Watchdog),
                _ => None,
            },
            manual_stop: s.manual_stop,
            attempt: s.attempt,
            recent: s.recent.iter().map(|&t| o(t)).collect(),
            last_ping: s.last_ping.map(o),
        })
    }

    /// The instance this record describes, in this image's `clock`.
    pub(crate) fn saved(&self, clock: &Clock) -> Saved {
        let at = |off: i64| clock.at(off);
        let state = state_of(&self.state, clock);
        Saved {
            state,
            restarts: self.restarts,
            last_exit: self.last_exit.as_ref().map(|e| match *e {
                ExitRec::Code(c) => ExitStatus::Code(c),
                ExitRec::Signal {
                    signal,
                    core_dumped,
                } => ExitStatus::Signal {
                    signal,
                    core_dumped,
                },
            }),
            last_reason: match (self.oom_reason, self.health_reason, self.timeout_reason) {
                (true, _, _) => Some(ExitReason::Oom),
                (_, true, _) => Some(ExitReason::Health),
                (_, _, Some(TimeoutRec::StartTimeout)) => Some(ExitReason::StartTimeout),
                (_, _, Some(TimeoutRec::Watchdog)) => Some(ExitReason::Watchdog),
                _ => None,
            },
            manual_stop: self.manual_stop,
            attempt: self.attempt,
            recent: self.recent.iter().map(|&t| at(t)).collect(),
            last_ping: self.last_ping.map(at),
        }
    }
}

/// `state` written with `clock`; `None` for `spawning`.
fn state_rec(state: &State, clock: &Clock) -> Option<StateRec> {
    let o = |t: Instant| clock.off(t);
    Some(match state {
        State::Exited => StateRec::Exited,
        State::Stopped => StateRec::Stopped,
        State::Spawning => return None,
        State::Starting { pid, since } => StateRec::Starting {
            pid: *pid,
            since: o(*since),
        },
        State::Running { pid, since } => StateRec::Running {
            pid: *pid,
            since: o(*since),
        },
        State::Ready {
            pid,
            since,
            ready_at,
        } => StateRec::Ready {
            pid: *pid,
            since: o(*since),
            ready_at: o(*ready_at),
        },
        State::Backoff { until } => StateRec::Backoff { until: o(*until) },
        State::Stopping {
            pid,
            since,
            kill_at,
            killed,
            then,
            reaped,
        } => StateRec::Stopping {
            pid: *pid,
            since: o(*since),
            kill_at: o(*kill_at),
            killed: *killed,
            then: match then {
                AfterStop::Stay => ThenRec::Stay,
                AfterStop::Restart => ThenRec::Restart,
                AfterStop::Failed { healthy } => ThenRec::Failed { healthy: *healthy },
                AfterStop::Exited { healthy } => ThenRec::Exited { healthy: *healthy },
            },
            reaped: *reaped,
        },
        State::Fatal => StateRec::Fatal,
    })
}

/// The state `rec` describes, in `clock`.
fn state_of(rec: &StateRec, clock: &Clock) -> State {
    let at = |off: i64| clock.at(off);
    match rec {
        StateRec::Exited => State::Exited,
        StateRec::Stopped => State::Stopped,
        StateRec::Starting { pid, since } => State::Starting {
            pid: *pid,
            since: at(*since),
        },
        StateRec::Running { pid, since } => State::Running {
            pid: *pid,
            since: at(*since),
        },
        StateRec::Ready {
            pid,
            since,
            ready_at,
        } => State::Ready {
            pid: *pid,
            since: at(*since),
            ready_at: at(*ready_at),
        },
        StateRec::Backoff { until } => State::Backoff { until: at(*until) },
        StateRec::Stopping {
            pid,
            since,
            kill_at,
            killed,
            then,
            reaped,
        } => State::Stopping {
            pid: *pid,
            since: at(*since),
            kill_at: at(*kill_at),
            killed: *killed,
            then: match then {
                ThenRec::Stay => AfterStop::Stay,
                ThenRec::Restart => AfterStop::Restart,
                ThenRec::Failed { healthy } => AfterStop::Failed { healthy: *healthy },
                ThenRec::Exited { healthy } => AfterStop::Exited { healthy: *healthy },
            },
            reaped: *reaped,
        },
        StateRec::Fatal => State::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_survive_the_trip_through_offsets() {
        let (clock, mono) = Clock::export();
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let earlier = now.checked_sub(Duration::from_secs(3)).unwrap_or(now);
        let (a, b) = (clock.off(later), clock.off(earlier));
        assert!(a > 0 && b < 0);
        let back = Clock::import(mono);
        // The same moments, within the time this test takes.
        let close = |x: Instant, y: Instant| {
            let d = if x > y { x - y } else { y - x };
            d < Duration::from_millis(50)
        };
        assert!(close(back.at(a), later));
        assert!(close(back.at(b), earlier));
    }

    #[test]
    fn every_lasting_state_is_carried_and_read_back() {
        let (clock, _) = Clock::export();
        let t = Instant::now();
        let states = [
            State::Exited,
            State::Stopped,
            State::Fatal,
            State::Starting { pid: 7, since: t },
            State::Running { pid: 7, since: t },
            State::Ready {
                pid: 7,
                since: t,
                ready_at: t,
            },
            State::Backoff { until: t },
            State::Stopping {
                pid: 7,
                since: t,
                kill_at: t,
                killed: true,
                then: AfterStop::Failed { healthy: true },
                reaped: true,
            },
        ];
        for state in states {
            let saved = Saved {
                state: state.clone(),
                restarts: 3,
                last_exit: Some(ExitStatus::Signal {
                    signal: 9,
                    core_dumped: false,
                }),
                last_reason: Some(ExitReason::Health),
                manual_stop: true,
                attempt: 2,
                recent: vec![t],
                last_ping: Some(t),
            };
            let rec = InstanceRec::of(&saved, &clock).expect("a lasting state");
            let json = serde_json::to_string(&rec).unwrap();
            let back: InstanceRec = serde_json::from_str(&json).unwrap();
            assert_eq!(back.saved(&clock), saved, "{json}");
        }
        let spawning = Saved {
            state: State::Spawning,
            restarts: 0,
            last_exit: None,
            last_reason: None,
            manual_stop: false,
            attempt: 0,
            recent: Vec::new(),
            last_ping: None,
        };
        assert!(InstanceRec::of(&spawning, &clock).is_none());
    }

    #[test]
    fn subscribers_cross_the_exec_and_an_older_state_without_them_reads() {
        let older = r#"{"notify":[3,"n"],"control":4,"guard":null,"sockets":[],"programs":[],
            "groups":[],"pipes":[],"rollbacks":0,"started_at":0,"requester":null,
            "conns":[[5,[]]]}"#;
        let mut state: SupState = serde_json::from_str(older).unwrap();
        assert!(state.subscribers.is_empty());
        assert_eq!(state.fds(), [3, 4, 5]);
        state.subscribers = vec![6, 7];
        assert_eq!(state.fds(), [3, 4, 5, 6, 7]);
        let json = serde_json::to_value(&state).unwrap();
        // The connections keep the format older images read.
        assert_eq!(json["conns"], serde_json::json!([[5, []]]));
        assert_eq!(json["subscribers"], serde_json::json!([6, 7]));
    }
}
