//! The `status` report: the daemon, every instance and every program asked about, as the
//! control protocol describes them. Read-only: it must not change anything it reports.

use super::table::ProgramId;
use super::{InstanceStatus, Supervisor};
use crate::control::{DaemonInfo, InstanceInfo, ProgramInfo, StatusReport};

impl Supervisor {
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
        last_exit: s.last_exit.map(Into::into),
        status: s.status_text,
        waiting_for: s.waiting_for,
        waiting_reason: s.waiting_reason,
    }
}
