//! Carrying rollouts out: replacing, surging, retiring, and rolling a failed rollout back to
//! the program's previous settings.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Next, Rollout};
use crate::lifecycle::Event;
use crate::supervisor::Supervisor;
use crate::supervisor::program::ProgramDef;
use crate::supervisor::programs::open_files;
use crate::supervisor::spawn::Prepared;
use crate::supervisor::table::{InstanceIndex, ProgramId, SlotId};

/// A program's settings before a reload changed them: what a rollback puts back.
pub(in crate::supervisor) struct Previous {
    /// The definition.
    pub(in crate::supervisor) def: ProgramDef,
    /// What was prepared for spawning it.
    pub(in crate::supervisor) prepared: Option<Prepared>,
    /// Its settings' generation.
    pub(in crate::supervisor) spec_gen: u64,
}

impl Supervisor {
    /// Starts (or restarts from the top) a rolling restart of program `p`. With `keep_stopped`
    /// (a reload), instances stopped by hand are left down; an operator's `restart` starts them.
    /// With `previous` (a reload that changed the program), a failure on probation puts those
    /// settings back.
    pub(in crate::supervisor) fn begin_rollout(
        &mut self,
        p: ProgramId,
        keep_stopped: bool,
        previous: Option<Previous>,
    ) {
        self.cancel_rollout(p);
        let rollout = &self.table[p].def.rollout;
        let (update, probation) = (rollout.update, rollout.probation());
        let mut r = Rollout::new(p, &self.program_view(p), keep_stopped, update, probation);
        r.previous = previous;
        let probation = if probation.is_zero() {
            String::new()
        } else {
            format!(
                ", each on probation for {}",
                crate::policy::fmt_duration(probation)
            )
        };
        log::info!(
            "{}: rolling restart of {} instance(s) ({}{probation})",
            self.table[p].def.name,
            r.remaining(),
            update.name(),
        );
        self.plane.rollouts.push(r);
        self.advance_rollouts();
    }

    /// Whether a rolling restart of program `p` is under way.
    pub(in crate::supervisor) fn rolling(&self, p: ProgramId) -> bool {
        self.plane.rollouts.iter().any(|r| r.program == p)
    }

    /// Ends the rolling restart of program `p`, if any (a surge replacement that has not taken
    /// over is stopped); whether there was one.
    pub(in crate::supervisor) fn cancel_rollout(&mut self, p: ProgramId) -> bool {
        let (cancelled, kept) = std::mem::take(&mut self.plane.rollouts)
            .into_iter()
            .partition::<Vec<_>, _>(|r| r.program == p);
        self.plane.rollouts = kept;
        for r in &cancelled {
            self.drop_incoming(r);
        }
        !cancelled.is_empty()
    }

    /// When the nearest probation ends.
    pub(in crate::supervisor) fn rollout_deadline(&self) -> Option<Instant> {
        self.plane
            .rollouts
            .iter()
            .filter_map(Rollout::deadline)
            .min()
    }

    /// Moves every rolling restart forward (and the rollbacks they start).
    pub(in crate::supervisor) fn advance_rollouts(&mut self) {
        let mut done = Vec::new();
        while !self.plane.rollouts.is_empty() {
            let mut rollouts = std::mem::take(&mut self.plane.rollouts);
            rollouts.retain_mut(|r| self.advance_rollout(r));
            done.append(&mut rollouts);
        }
        self.plane.rollouts = done;
    }

    /// Carries out the steps of rollout `r` until it must wait (`true`) or is over (`false`).
    fn advance_rollout(&mut self, r: &mut Rollout) -> bool {
        let p = r.program;
        loop {
            let next = r.next(&self.program_view(p), Instant::now());
            let name = &self.table[p].def.name;
            let what = if r.rollback {
                "rollback"
            } else {
                "rolling restart"
            };
            match next {
                Next::Restart(index) => {
                    let pos = self.table.slot_pos(p, index).expect("in the snapshot");
                    self.apply(p, pos, Event::Restart);
                }
                Next::Surge(index) => {
                    let id = self.surge(p, index);
                    r.surged(id, Instant::now());
                }
                Next::Retire { old, new } => self.retire(p, old, new),
                Next::LeaveStopped(index) => crate::log::about!(
                    log::Level::Info,
                    &name,
                    Some(index.0),
                    None,
                    "{name}[{index}]: stopped by hand; stays stopped (new settings apply at its next start)"
                ),
                Next::Wait => return true,
                Next::Done => {
                    log::info!("{name}: {what} done");
                    return false;
                }
                Next::Failed { index, reason } => {
                    crate::log::about!(
                        log::Level::Error,
                        &name,
                        Some(index.0),
                        None,
                        "{name}[{index}]: {what} stopped: {reason}"
                    );
                    self.drop_incoming(r);
                    return false;
                }
                Next::RollBack { reason } => {
                    self.roll_back(r, reason);
                    return false;
                }
            }
        }
    }

    /// Starts a replacement for instance `index` of program `p` beside it; returns its slot.
    fn surge(&mut self, p: ProgramId, index: InstanceIndex) -> SlotId {
        let pos = self.table[p].push_slot(index);
        self.table[p][pos].incoming = true;
        let id = self.table[p][pos].id;
        let name = &self.table[p].def.name;
        crate::log::about!(
            log::Level::Info,
            name,
            Some(index.0),
            None,
            "{name}[{index}]: starting its replacement beside it (surge)"
        );
        self.apply(p, pos, Event::Start);
        id
    }

    /// The replacement in slot `new` serves: it takes the place of slot `old`, which stops for
    /// good. To an operator it is the same instance restarted: it carries on the old one's
    /// restart count (plus this one, `manual`) and counters.
    fn retire(&mut self, p: ProgramId, old: SlotId, new: SlotId) {
        let carried = self.table[p].locate(old).map(|pos| {
            (
                self.table[p][pos].inst.restarts,
                self.table[p][pos].counters,
            )
        });
        if let Some(pos) = self.table[p].locate(new) {
            let slot = &mut self.table[p][pos];
            slot.incoming = false;
            if let Some((restarts, mut counters)) = carried {
                slot.inst.restarts = restarts.saturating_add(1);
                counters
                    .restarts
                    .add(crate::supervisor::metrics::RestartReason::Manual);
                counters.health_failures += slot.counters.health_failures;
                slot.counters = counters;
            }
        }
        if let Some(pos) = self.table[p].locate(old) {
            self.table[p][pos].retiring = true;
            self.apply(p, pos, Event::Stop);
        }
        self.table[p].remove_retired();
    }

    /// Stops rollout `r`'s surge replacement that has not taken over, if any.
    fn drop_incoming(&mut self, r: &Rollout) {
        let p = r.program;
        let Some(pos) = r.incoming().and_then(|id| self.table[p].locate(id)) else {
            return;
        };
        self.table[p][pos].retiring = true;
        self.apply(p, pos, Event::Stop);
        self.table[p].remove_retired();
    }

    /// Rollout `r` failed on probation for `reason`: its surge replacement that has not taken
    /// over is stopped, the program's previous settings are put back (a reload's rollout), and
    /// the instances already replaced are replaced again with them, the same careful way.
    fn roll_back(&mut self, r: &mut Rollout, reason: String) {
        let p = r.program;
        self.drop_incoming(r);
        let name = self.table[p].def.name.clone();
        self.plane.rollbacks += 1;
        let seq = self.plane.rollbacks;
        self.table[p].rollbacks = (seq, Some(format!("rolled back {name}: {reason}")));
        self.events
            .publish(crate::supervisor::events::Event::RolledBack {
                program: name.clone(),
                reason: reason.clone(),
            });
        let Some(previous) = r.previous.take().filter(|_| !r.rollback) else {
            log::error!(
                "{name}: rolling restart stopped: {reason}; the instances not replaced yet keep running"
            );
            return;
        };
        if let Err(e) = self.check_sockets(&previous.def) {
            log::error!("{name}: rolling restart failed ({reason}) but cannot roll back: {e}");
            return;
        }
        log::error!(
            "{name}: rolling restart failed: {reason}; rolling back to the previous settings"
        );
        self.restore(p, previous);
        self.table[p].rolled_back = Some(reason);
        let restored = self.table[p].spec_gen;
        let indices: VecDeque<InstanceIndex> = self.table[p]
            .slots()
            .iter()
            .filter(|s| !s.retiring && !s.incoming && s.spec_gen != restored)
            .map(|s| s.index)
            .collect();
        let update = self.table[p].def.rollout.update;
        let mut back = Rollout::of(p, indices, true, update, Duration::ZERO);
        back.rollback = true;
        log::info!(
            "{name}: rolling back {} instance(s) ({})",
            back.remaining(),
            update.name()
        );
        self.plane.rollouts.push(back);
    }

    /// Puts `previous` settings back on program `p` (its edges, file and rollout settings stay
    /// as the reload left them); its instance count too.
    fn restore(&mut self, p: ProgramId, previous: Previous) {
        let Previous {
            def,
            prepared,
            spec_gen,
        } = previous;
        let files = match open_files(&def) {
            Ok(files) => Some(files),
            Err(e) => {
                log::error!("{}: output files of the previous settings: {e}", def.name);
                None
            }
        };
        let health_changed = self.table[p].def.health != def.health;
        let instances = def.instances;
        let prog = &mut self.table[p];
        let running = &mut prog.def;
        running.work = def.work;
        running.policy = def.policy;
        running.stdout = def.stdout;
        running.stderr = def.stderr;
        running.log_max_bytes = def.log_max_bytes;
        running.log_keep = def.log_keep;
        running.sockets = def.sockets;
        prog.prepared = prepared;
        prog.spec_gen = spec_gen;
        if let Some(files) = files {
            prog.files = files;
        }
        if health_changed {
            let name = prog.def.name.clone();
            let spec = def.health;
            let mut probe = prog.def.clone();
            probe.health = spec;
            match crate::supervisor::health::Checker::prepare(&probe) {
                Ok(checker) => self.set_checker(&name, checker),
                Err(e) => log::error!("{name}: health check of the previous settings: {e}"),
            }
        }
        if instances != self.table[p].def.instances {
            let name = self.table[p].def.name.clone();
            if let Err(e) = self.scale(&name, instances) {
                log::error!("{name}: cannot scale back to {instances} instance(s): {e}");
            }
        }
    }
}
