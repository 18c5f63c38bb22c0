//! The `status` report: the daemon, every instance and every program asked about, as the
//! control protocol describes them, and the library's own snapshot ([`Supervisor::status`]).
//! Read-only: it must not change anything it reports.

use std::time::Instant;

use super::program::HealthStatus;
use super::table::ProgramId;
use super::{InstanceState, InstanceStatus, Supervisor};
use crate::control::{DaemonInfo, HealthInfo, InstanceInfo, LastExit, ProgramInfo, StatusReport};
use crate::lifecycle::State;

impl Supervisor {
    /// A snapshot of every instance, programs in the order they were added.
    pub fn status(&self) -> Vec<InstanceStatus> {
        let now = Instant::now();
        self.table
            .live_programs()
            .into_iter()
            .flat_map(|id| {
                let p = &self.table[id];
                let unready = self.waiting_for(id);
                p.slots().iter().map(move |s| {
                    let waiting = s.hold.is_some() && s.is_down();
                    let state = if waiting {
                        InstanceState::Waiting
                    } else {
                        InstanceState::of(&s.inst.state)
                    };
                    (p, s, state, waiting.then(|| unready.clone()))
                })
            })
            .map(|(p, s, state, waiting)| InstanceStatus {
                program: p.def.name.clone(),
                index: s.index.0,
                pid: s.main_pid.or(s.inst.state.pid()),
                state,
                waiting_reason: waiting
                    .as_ref()
                    .and_then(|_| s.hold.as_ref()?.reason.clone()),
                waiting_for: waiting.unwrap_or_default(),
                incoming: s.incoming,
                retiring: s.retiring,
                uptime: s.up_since.filter(|_| s.inst.state.is_up()).map(|t| now - t),
                restarts: s.inst.restarts,
                last_exit: s.inst.last_exit,
                last_reason: s.inst.last_reason,
                health: s.health.as_ref().map(|t| {
                    let v = t.view();
                    HealthStatus {
                        state: v.state,
                        failures: v.failures,
                        retries: p.checker.as_ref().map_or(0, |c| c.spec.retries),
                        last_error: v.last_error,
                    }
                }),
                // Its last `STATUS=` line described a process stopped by hand since.
                status_text: s
                    .status_text
                    .clone()
                    .filter(|_| s.inst.state != State::Stopped),
            })
            .collect()
    }

    /// The `status` result for programs `ps`.
    pub(super) fn status_report(&self, ps: &[ProgramId]) -> StatusReport {
        let names: Vec<&str> = ps
            .iter()
            .map(|&p| self.table[p].def.name.as_str())
            .collect();
        StatusReport {
            daemon: self.daemon_info(),
            instances: self
                .status()
                .into_iter()
                .filter(|s| names.contains(&s.program.as_str()))
                .map(instance_info)
                .collect(),
            // A program scaled to 0 has no instance to show, but it is there all the same.
            programs: ps.iter().map(|&p| self.program_info(p)).collect(),
            sockets: self.socket_infos(),
        }
    }

    /// This daemon, as `status` shows it.
    fn daemon_info(&self) -> DaemonInfo {
        DaemonInfo {
            running: DaemonInfo::answered(),
            state: DaemonInfo::running_state(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.plane.started_at.elapsed().as_secs_f64(),
            config: self.plane.config_path.clone(),
            tracking: Some(self.tracking().0),
            cgroup: self.tracking().1,
            pid_namespace: self.namespace_name(),
        }
    }

    /// Program `p`, as `status` shows it.
    fn program_info(&self, p: ProgramId) -> ProgramInfo {
        let def = &self.table[p].def;
        ProgramInfo {
            program: def.name.clone(),
            instances: def.instances,
            file: def.source.as_ref().map(|f| f.display().to_string()),
            after: def.after.clone(),
            requires: def.requires.clone(),
            update: (def.rollout.update != crate::policy::Update::Replace)
                .then(|| def.rollout.update.name().to_string()),
            rolled_back: self.table[p].rolled_back.clone(),
        }
    }
}

/// One instance, as `status` shows it.
fn instance_info(s: InstanceStatus) -> InstanceInfo {
    InstanceInfo {
        program: s.program,
        index: s.index,
        pid: s.pid,
        state: s.state.to_string(),
        uptime_secs: s.uptime.map(|d| d.as_secs_f64()),
        restarts: s.restarts,
        last_exit: s.last_exit.map(|e| {
            let mut e = LastExit::from(e);
            e.set_reason(s.last_reason.map(|r| r.to_string()));
            e
        }),
        health: s.health.map(|h| HealthInfo {
            state: h.state.to_string(),
            failures: h.failures,
            retries: h.retries,
            last_error: h.last_error,
        }),
        status: s.status_text,
        waiting_for: s.waiting_for,
        waiting_reason: s.waiting_reason,
        incoming: s.incoming,
        retiring: s.retiring,
    }
}
