//! Program-table maintenance that commands and reloads share with `Supervisor::add`: adding
//! a program whose resources are resolved, opening its output files, and dropping the
//! instances of removed programs once they are down. It decides no policy of its own.

use super::table::{Program, ProgramId};
use super::{OutputSpec, ProgramDef, Supervisor, output::RotatingFile, spawn::Prepared};
use crate::error::Result;
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
