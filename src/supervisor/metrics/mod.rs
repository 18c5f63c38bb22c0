//! `[daemon] metrics`: `GET /metrics` in the OpenMetrics or Prometheus text format, served from
//! the supervisor's loop.
//!
//! Read-only and idle-free: the endpoint changes nothing, and a scrape builds its figures from
//! the supervisor's state at that moment — no timer, no sampling, no wake-up while nobody asks.
//!
//! # Parts
//!
//! - `server.rs`: the listener and connections (bounded, non-blocking, one request each).
//! - `encode.rs`: the pure `Scrape` → text.
//! - here: what the supervisor counts per instance (`Counters`, plain data that `warden
//!   upgrade` may carry over), why a restart happened (the pure `restart_reason`), and the
//!   loop's side (accept, answer, expire, gather).
//!
//! # Restart reasons
//!
//! A restart is counted when the state machine counts it (its `restarts` rises in one step), by
//! what ended the process: `manual` for `warden restart`, a rolling restart or a reload that
//! restarts it; `health` after failed health checks; `watchdog` after a missed `WATCHDOG=1`, a
//! missed `start_timeout` or `WATCHDOG=trigger`; otherwise `signal` when the process was killed
//! by a signal, `oom` when the OOM killer struck its cgroup (cgroup mode, with the memory
//! controller), and `exit` (a non-zero exit, or a spawn that failed).
//!
//! # One series per instance
//!
//! During a surge rollout a replacement runs beside the instance it replaces, with the same
//! index: until it takes over, the instance exported is the one in service; once it has, it
//! is the replacement, which carries on the old one's counters (so they never go down), and
//! the old one, stopping for good, is no longer exported.

mod encode;
mod server;

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mio::Token;
use serde::{Deserialize, Serialize};

pub use server::{
    BoundFile, CONNECTION_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST, MetricsListener,
};

use super::table::{InstanceIndex, Slot, SlotPos};
use super::{InstanceState, InstanceStatus, Supervisor, cgroup, sources};
use crate::error::Result;
use crate::lifecycle::{AfterStop, Event, Instance, State};
use crate::policy::{ExitReason, ExitStatus};
use encode::{InstanceFacts, Scrape, WardenFacts};
pub(crate) use server::MetricsServer;
use server::Route;

/// Why a restart happened (the `reason` label of `warden_instance_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RestartReason {
    /// The process exited (or could not be spawned).
    Exit,
    /// The process was killed by a signal.
    Signal,
    /// Its health check failed `retries` times in a row.
    Health,
    /// It hung: a missed `WATCHDOG=1` or `start_timeout`, or `WATCHDOG=trigger`.
    Watchdog,
    /// The OOM killer struck its cgroup (cgroup mode, with the memory controller).
    Oom,
    /// `warden restart`, a rolling restart, a reload.
    Manual,
}

impl RestartReason {
    /// Every reason, in label order.
    pub(crate) const ALL: [RestartReason; 6] = [
        RestartReason::Exit,
        RestartReason::Signal,
        RestartReason::Health,
        RestartReason::Watchdog,
        RestartReason::Oom,
        RestartReason::Manual,
    ];

    /// The label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RestartReason::Exit => "exit",
            RestartReason::Signal => "signal",
            RestartReason::Health => "health",
            RestartReason::Watchdog => "watchdog",
            RestartReason::Oom => "oom",
            RestartReason::Manual => "manual",
        }
    }
}

/// Restarts counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestartCounts {
    exit: u64,
    signal: u64,
    health: u64,
    watchdog: u64,
    oom: u64,
    manual: u64,
}

impl RestartCounts {
    fn slot(&mut self, r: RestartReason) -> &mut u64 {
        match r {
            RestartReason::Exit => &mut self.exit,
            RestartReason::Signal => &mut self.signal,
            RestartReason::Health => &mut self.health,
            RestartReason::Watchdog => &mut self.watchdog,
            RestartReason::Oom => &mut self.oom,
            RestartReason::Manual => &mut self.manual,
        }
    }

    /// Counts one restart for `r`.
    pub(crate) fn add(&mut self, r: RestartReason) {
        let n = self.slot(r);
        *n = n.saturating_add(1);
    }

    /// The restarts counted for `r`.
    pub(crate) fn get(&self, r: RestartReason) -> u64 {
        let mut copy = *self;
        *copy.slot(r)
    }
}

/// What the supervisor counts for one instance: plain data, kept in its slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// Restarts by reason.
    pub(crate) restarts: RestartCounts,
    /// Failed health checks.
    pub(crate) health_failures: u64,
    /// The reason of a restart asked for on the instance's behalf (`WATCHDOG=trigger`), for
    /// the next restart counted as `manual`; cleared at the next spawn.
    pub(crate) pending: Option<RestartReason>,
}

/// Why the restart counted in one step happened: `before` is the state the step began in,
/// `manual` whether its event was a restart asked for, `after` the instance once stepped (its
/// `last_exit` and `last_reason`).
pub(crate) fn restart_reason(before: &State, manual: bool, after: &Instance) -> RestartReason {
    if manual {
        return RestartReason::Manual;
    }
    match before {
        State::Stopping {
            then: AfterStop::Restart,
            ..
        } => RestartReason::Manual,
        State::Stopping {
            then: AfterStop::Failed { .. },
            ..
        } if after.last_reason == Some(ExitReason::Health) => RestartReason::Health,
        State::Stopping {
            then: AfterStop::Failed { .. },
            ..
        } => RestartReason::Watchdog,
        _ if after.last_reason == Some(ExitReason::Oom) => RestartReason::Oom,
        _ => match after.last_exit {
            Some(ExitStatus::Signal { .. }) => RestartReason::Signal,
            _ => RestartReason::Exit,
        },
    }
}

/// An instance before one step of its state machine, to count the restart the step may decide.
pub(super) struct Mark {
    restarts: u32,
    before: State,
    manual: bool,
    spawned: bool,
}

impl Mark {
    /// Taken before `event` is stepped.
    pub(super) fn of(slot: &Slot, event: &Event) -> Mark {
        Mark {
            restarts: slot.inst.restarts,
            before: slot.inst.state.clone(),
            manual: *event == Event::Restart,
            spawned: matches!(event, Event::Spawned { .. }),
        }
    }

    /// Counts the restart the step decided, if it did.
    pub(super) fn count(self, slot: &mut Slot) {
        let c = &mut slot.counters;
        if slot.inst.restarts > self.restarts {
            let reason = match restart_reason(&self.before, self.manual, &slot.inst) {
                RestartReason::Manual => c.pending.take().unwrap_or(RestartReason::Manual),
                r => r,
            };
            c.restarts.add(reason);
        }
        if self.spawned {
            c.pending = None;
        }
    }
}

impl Supervisor {
    /// Serves `GET /metrics` on `listener` from this loop ([`MetricsListener::bind`] it before
    /// dropping privileges). Off unless called.
    pub fn set_metrics(&mut self, listener: MetricsListener) -> Result<()> {
        let server = MetricsServer::new(listener, self.poll.registry(), sources::METRICS)?;
        self.metrics = Some(server);
        Ok(())
    }

    /// The metrics listener or one of its connections is ready.
    pub(super) fn metrics_event(&mut self, token: Token) {
        let registry = self.poll.registry();
        let Some(server) = self.metrics.as_mut() else {
            return;
        };
        if token == sources::METRICS {
            server.accept(registry, &mut self.sources);
            return;
        }
        let Some(Route::Metrics(format)) = server.ready(token, registry, &mut self.sources) else {
            return;
        };
        let body = encode::encode(self.scrape(), format);
        let bytes = server::response("200 OK", "", format.content_type(), body.as_bytes());
        if let Some(server) = self.metrics.as_mut() {
            server.respond(token, bytes, self.poll.registry(), &mut self.sources);
        }
    }

    /// Closes the metrics connections whose time is up.
    pub(super) fn expire_metrics(&mut self, now: Instant) {
        if let Some(server) = self.metrics.as_mut() {
            server.expire(now, self.poll.registry(), &mut self.sources);
        }
    }

    /// When the next metrics connection must be closed.
    pub(super) fn metrics_deadline(&self) -> Option<Instant> {
        self.metrics.as_ref().and_then(MetricsServer::next_deadline)
    }

    /// Every figure, now.
    fn scrape(&self) -> Scrape {
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let uptime = now.saturating_duration_since(self.plane.started_at);
        let instances = self
            .status()
            .into_iter()
            .zip(self.exported_slots())
            .filter_map(|(s, slot)| {
                let slot = slot?;
                debug_assert_eq!(s.index, slot.index.0, "status and slots in one order");
                Some(self.instance_facts(s, slot, now, unix_now))
            })
            .collect();
        Scrape {
            warden: WardenFacts {
                version: env!("CARGO_PKG_VERSION"),
                start_time: unix_now - uptime.as_secs_f64(),
                uptime: uptime.as_secs_f64(),
                rss_bytes: own_rss(),
                open_fds: std::fs::read_dir("/proc/self/fd")
                    .ok()
                    .map(|d| d.count().saturating_sub(1) as u64),
                control_connections: self
                    .plane
                    .server
                    .as_ref()
                    .map_or(0, |c| c.connections() as u64),
            },
            instances,
        }
    }

    /// Every slot in [`Supervisor::status`] order, `None` for one that is not the instance: of
    /// the slots that share an index — a surge replacement beside the instance it is to
    /// replace, or the replacement that took over beside the one retiring — only the one
    /// [`Program::slot_pos`](super::table::Program::slot_pos) names is exported (the one
    /// serving), so that every label set is one series.
    fn exported_slots(&self) -> Vec<Option<&Slot>> {
        let table = &self.table;
        table
            .live_programs()
            .into_iter()
            .flat_map(|id| {
                let p = &table[id];
                let mut shared: HashMap<InstanceIndex, usize> = HashMap::new();
                for s in p.slots() {
                    *shared.entry(s.index).or_default() += 1;
                }
                // Only an index shared by several slots costs a search.
                let exported = move |pos: usize, s: &Slot| {
                    shared[&s.index] == 1 || p.slot_pos(s.index) == Some(SlotPos(pos))
                };
                let slots = p.slots().iter().enumerate();
                slots.map(move |(pos, s)| exported(pos, s).then_some(s))
            })
            .collect()
    }

    /// The figures of instance `s`, in `slot`.
    fn instance_facts(
        &self,
        s: InstanceStatus,
        slot: &Slot,
        now: Instant,
        unix_now: f64,
    ) -> InstanceFacts {
        let backoff = match &slot.inst.state {
            State::Backoff { until } => until.saturating_duration_since(now),
            _ => std::time::Duration::ZERO,
        };
        let memory = slot
            .inst
            .state
            .pid()
            .and_then(|pgid| self.groups.cgroup_of(pgid))
            .map(cgroup::memory)
            .unwrap_or_default();
        InstanceFacts {
            up: is_up(s.state) && s.pid.is_some(),
            ready: matches!(s.state, InstanceState::Running | InstanceState::Ready),
            state: s.state,
            restarts: slot.counters.restarts,
            last_exit_code: s.last_exit.map(exit_code),
            start_time: s.uptime.map(|u| unix_now - u.as_secs_f64()),
            backoff: backoff.as_secs_f64(),
            health_failures: slot.counters.health_failures,
            memory: memory.current,
            memory_peak: memory.peak,
            program: s.program,
            instance: s.index,
        }
    }
}

/// Whether a process of an instance in `state` runs: starting, running, ready, or stopping
/// (its process has been asked to end, and has not yet).
fn is_up(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Starting
            | InstanceState::Running
            | InstanceState::Ready
            | InstanceState::Stopping
    )
}

/// An exit as a number: its code, or 128 + N after signal N (as a shell shows it).
fn exit_code(e: ExitStatus) -> i64 {
    match e {
        ExitStatus::Code(c) => i64::from(c),
        ExitStatus::Signal { signal, .. } => 128 + i64::from(signal),
    }
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn own_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::lifecycle::AfterStop;

    fn stopping(then: AfterStop) -> State {
        let now = Instant::now();
        State::Stopping {
            pid: 10,
            since: now,
            kill_at: now + Duration::from_secs(1),
            killed: false,
            then,
            reaped: false,
        }
    }

    fn after(exit: Option<ExitStatus>, reason: Option<ExitReason>) -> Instance {
        let mut i = Instance::new();
        i.last_exit = exit;
        i.last_reason = reason;
        i
    }

    fn running() -> State {
        State::Running {
            pid: 10,
            since: Instant::now(),
        }
    }

    const SEGV: ExitStatus = ExitStatus::Signal {
        signal: 11,
        core_dumped: false,
    };

    #[test]
    fn a_crash_with_an_exit_code_is_exit_and_by_a_signal_is_signal() {
        let code = after(Some(ExitStatus::Code(3)), None);
        assert_eq!(
            restart_reason(&running(), false, &code),
            RestartReason::Exit
        );
        let sig = after(Some(SEGV), None);
        assert_eq!(
            restart_reason(&running(), false, &sig),
            RestartReason::Signal
        );
        let leader = stopping(AfterStop::Exited { healthy: false });
        assert_eq!(restart_reason(&leader, false, &sig), RestartReason::Signal);
        assert_eq!(
            restart_reason(&State::Spawning, false, &Instance::new()),
            RestartReason::Exit
        );
    }

    #[test]
    fn a_restart_asked_for_is_manual_whatever_the_exit() {
        let sig = after(Some(SEGV), None);
        assert_eq!(
            restart_reason(&State::Exited, true, &sig),
            RestartReason::Manual
        );
        let restarting = stopping(AfterStop::Restart);
        assert_eq!(
            restart_reason(&restarting, false, &sig),
            RestartReason::Manual
        );
    }

    #[test]
    fn an_exit_the_oom_killer_caused_counts_as_oom() {
        let kill = ExitStatus::Signal {
            signal: 9,
            core_dumped: false,
        };
        let oom = after(Some(kill), Some(ExitReason::Oom));
        assert_eq!(
            restart_reason(&State::Exited, false, &oom),
            RestartReason::Oom
        );
        let plain = after(Some(kill), None);
        assert_eq!(
            restart_reason(&State::Exited, false, &plain),
            RestartReason::Signal
        );
        assert_eq!(
            restart_reason(&State::Exited, true, &oom),
            RestartReason::Manual
        );
    }

    #[test]
    fn a_failed_stop_is_health_after_checks_and_watchdog_after_a_hang() {
        let failed = stopping(AfterStop::Failed { healthy: false });
        let term = ExitStatus::Signal {
            signal: 15,
            core_dumped: false,
        };
        let health = after(Some(term), Some(ExitReason::Health));
        assert_eq!(
            restart_reason(&failed, false, &health),
            RestartReason::Health
        );
        let hang = after(Some(term), None);
        assert_eq!(
            restart_reason(&failed, false, &hang),
            RestartReason::Watchdog
        );
    }

    #[test]
    fn counts_add_up_per_reason_and_serialize_as_plain_data() {
        let mut c = Counters::default();
        c.restarts.add(RestartReason::Exit);
        c.restarts.add(RestartReason::Exit);
        c.restarts.add(RestartReason::Manual);
        assert_eq!(c.restarts.get(RestartReason::Exit), 2);
        assert_eq!(c.restarts.get(RestartReason::Manual), 1);
        assert_eq!(c.restarts.get(RestartReason::Oom), 0);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Counters>(&json).unwrap(), c);
    }

    #[test]
    fn a_stopping_instance_is_up_and_a_stopped_one_is_not() {
        assert!(is_up(InstanceState::Stopping));
        assert!(is_up(InstanceState::Starting));
        assert!(!is_up(InstanceState::Stopped));
        assert!(!is_up(InstanceState::Backoff));
    }

    #[test]
    fn memory_is_read_from_the_cgroup_files_that_exist() {
        let t = crate::test_support::TempDir::new("metrics-memory");
        let dir = t.join("web@0.1");
        std::fs::create_dir_all(&dir).unwrap();
        // No memory controller: no file, no figure.
        assert_eq!(cgroup::memory(&dir), cgroup::Memory::default());
        std::fs::write(dir.join("memory.current"), "8388608\n").unwrap();
        let m = cgroup::memory(&dir);
        assert_eq!((m.current, m.peak), (Some(8_388_608), None));
        std::fs::write(dir.join("memory.peak"), "16777216\n").unwrap();
        assert_eq!(cgroup::memory(&dir).peak, Some(16_777_216));
        std::fs::write(dir.join("memory.peak"), "garbage\n").unwrap();
        assert_eq!(cgroup::memory(&dir).peak, None);
        // A cgroup removed meanwhile.
        assert_eq!(cgroup::memory(&t.join("gone")), cgroup::Memory::default());
    }

    #[test]
    fn exit_codes_are_numbers_as_a_shell_shows_them() {
        assert_eq!(exit_code(ExitStatus::Code(3)), 3);
        assert_eq!(exit_code(SEGV), 139);
    }
}
