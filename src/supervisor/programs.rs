//! Program-table maintenance that commands and reloads share with `Supervisor::add`: adding
//! a program whose resources are resolved, opening its output files, and dropping the
//! instances of removed programs once they are down. It decides no policy of its own.

use super::table::InstanceIndex;
use super::table::{Program, ProgramId};
use super::{OutputSpec, ProgramDef, Supervisor, output::RotatingFile, spawn::Prepared};
use crate::error::{Error, Result};
use crate::lifecycle::{Event, State};

impl Supervisor {
    /// Adds a program whose resources were already resolved, starting it if the loop runs.
    pub(super) fn add_prepared(
        &mut self,
        def: ProgramDef,
        prepared: Option<Prepared>,
        files: [Option<RotatingFile>; 2],
    ) -> ProgramId {
        let p = self.table.push(Program::new(def, prepared, files));
        if self.started && !self.shutdown.active() {
            for i in self.table[p].positions() {
                self.apply(p, i, Event::Start);
            }
        }
        p
    }

    /// Drops the instances of removed programs once they are down.
    pub(super) fn sweep_removed(&mut self) {
        for prog in self.table.programs_mut().iter_mut().filter(|p| p.removed) {
            prog.retain_slots(|s| s.inst.state.is_up() || matches!(s.inst.state, State::Spawning));
            if prog.slots().is_empty() {
                // A tombstone keeps only its name: no open output file, no resolved spec.
                prog.files = [None, None];
                prog.prepared = None;
            }
        }
    }
}

/// Opens the output files of `def`.
pub(super) fn open_files(def: &ProgramDef) -> Result<[Option<RotatingFile>; 2]> {
    let stdout = match &def.stdout {
        OutputSpec::File(p) => Some(RotatingFile::open(p, def.log_max_bytes, def.log_keep)?),
        _ => None,
    };
    let stderr = match &def.stderr {
        OutputSpec::File(p) if def.stdout != def.stderr => {
            Some(RotatingFile::open(p, def.log_max_bytes, def.log_keep)?)
        }
        _ => None,
    };
    Ok([stdout, stderr])
}

/// Operations on running programs: scale, start, stop, restart (the library's API; the control
/// commands call them).
impl Supervisor {
    /// Sets the number of instances of `program`: new ones start, the highest indices stop.
    pub fn scale(&mut self, program: &str, instances: u32) -> Result<()> {
        if instances > crate::config::MAX_INSTANCES {
            return Err(Error::Invalid {
                what: "instances",
                reason: format!("{instances} is more than {}", crate::config::MAX_INSTANCES),
            });
        }
        let p = self.table.find(program)?;
        let target = instances as usize;
        let live = self.table[p].live_indices();
        if target > live.len() {
            for index in live.len()..target {
                // Reuse a retiring slot with this index, if one is still stopping.
                let pos = self.table[p].slot_for_index(InstanceIndex(index));
                self.apply(p, pos, Event::Start);
            }
        } else {
            // A surge replacement must not outlive the instance it was to replace.
            if self.cancel_rollout(p) {
                log::info!("{program}: rolling restart cancelled by scale");
            }
            for &index in live.iter().filter(|i| i.0 >= target) {
                let pos = self.table.slot_pos(p, index).expect("live slot");
                let slot = &mut self.table[p][pos];
                slot.retiring = true;
                // Held down (`waiting`) with no process: no change of state tells that it is
                // gone, the event does.
                if slot.hold.take().is_some() && slot.inst.state == State::Stopped {
                    self.publish_about(p, pos, crate::control::events::What::Stopped);
                }
                self.apply(p, pos, Event::Stop);
            }
            self.table[p].remove_retired();
        }
        self.table[p].def.instances = instances;
        log::info!("{program}: scaled to {instances} instance(s)");
        Ok(())
    }

    /// Starts every instance of `program` (a manual start, resetting backoff and crash loops),
    /// and first what it requires, transitively; an instance whose dependencies are not ready
    /// yet waits for them (`waiting`).
    pub fn start_program(&mut self, program: &str) -> Result<()> {
        let p = self.table.find(program)?;
        for q in self.with_requirements(&[p]) {
            self.cancel_stops_for(q);
            for pos in self.table[q].positions() {
                if !self.table[q][pos].retiring {
                    self.apply(q, pos, Event::Start);
                }
            }
        }
        Ok(())
    }

    /// Stops every instance of `program` and keeps them down until started again; what
    /// requires it (transitively) is stopped first and waits for it (`waiting`).
    pub fn stop_program(&mut self, program: &str) -> Result<()> {
        let p = self.table.find(program)?;
        for pos in self.table[p].positions() {
            let slot = &mut self.table[p][pos];
            // Held down and stopped already: no change of state tells it, the event does.
            let was_waiting = slot.hold.take().is_some() && slot.inst.state == State::Stopped;
            if was_waiting {
                self.publish_about(p, pos, crate::control::events::What::Stopped);
            }
        }
        self.stop_with_requirers(p);
        Ok(())
    }

    /// Restarts every instance of `program` at once (not counted as failures).
    pub fn restart_program(&mut self, program: &str) -> Result<()> {
        self.each_instance(program, || Event::Restart)
    }

    fn each_instance(&mut self, program: &str, event: impl Fn() -> Event) -> Result<()> {
        let p = self.table.find(program)?;
        for pos in self.table[p].positions() {
            if !self.table[p][pos].retiring {
                self.apply(p, pos, event());
            }
        }
        Ok(())
    }

    /// `SIGTTIN` (`up`) or `SIGTTOU`: one instance more or less of the `scale_program`.
    pub(super) fn scale_by_signal(&mut self, up: bool) {
        let Some(name) = self.scale_program.clone() else {
            log::warn!("SIGTTIN/SIGTTOU ignored: no scale_program is configured");
            return;
        };
        let n = self
            .table
            .programs()
            .iter()
            .find(|p| p.def.name == name)
            .map_or(0, |p| p.def.instances);
        let n = if up {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        if let Err(e) = self.scale(&name, n) {
            log::error!("cannot scale {name}: {e}");
        }
    }
}
