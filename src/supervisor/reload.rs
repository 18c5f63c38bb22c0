//! Transactional reloads: what changed between the running configuration and the new one (a
//! [`ReloadPlan`]), and carrying it out.
//!
//! Everything a reload needs (users, groups, output files) is resolved before anything changes,
//! so an error leaves the running configuration untouched. Unchanged programs are not touched at
//! all: same processes, same pids. Changed programs are restarted by a rollout
//! ([`super::rollout`]); programs stopped by hand stay stopped.

use serde::Serialize;

use super::programs::open_files;
use super::{ProgramDef, Supervisor, Work, new_slot, output::RotatingFile, spawn::Prepared, state};
use crate::control::ErrorKind;
use crate::error::Error;

/// What a reloader produces: the new programs and daemon-level settings.
#[derive(Debug, Clone)]
pub struct ReloadSet {
    /// Every program of the new configuration, in order.
    pub programs: Vec<ProgramDef>,
    /// The new `scale_program`.
    pub scale_program: Option<String>,
    /// Remarks about settings that cannot change while running.
    pub notes: Vec<String>,
}

/// Re-reads the configuration: `Ok(set)`, or every problem found as one message.
pub type Reloader = Box<dyn FnMut() -> std::result::Result<ReloadSet, String>>;

/// What a reload does, program by program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadPlan {
    /// New programs, started.
    pub added: Vec<String>,
    /// Programs no longer configured, stopped.
    pub removed: Vec<String>,
    /// Programs whose settings changed, restarted one instance at a time.
    pub changed: Vec<String>,
    /// Programs whose settings changed while stopped by hand (`warden stop PROG`): they stay
    /// stopped, and the new settings apply at their next start.
    pub changed_stopped: Vec<String>,
    /// Programs whose only change is the number of instances: (name, from, to).
    pub scaled: Vec<(String, u32, u32)>,
    /// Programs left alone.
    pub unchanged: Vec<String>,
    /// Settings that take effect only when warden restarts.
    pub notes: Vec<String>,
}

impl ReloadPlan {
    /// One line per change, for logs and terminals.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        v.extend(self.added.iter().map(|n| format!("add {n}")));
        v.extend(self.removed.iter().map(|n| format!("remove {n}")));
        v.extend(
            self.changed
                .iter()
                .map(|n| format!("restart {n} (changed)")),
        );
        v.extend(
            self.changed_stopped
                .iter()
                .map(|n| format!("update {n} (changed; stays stopped)")),
        );
        v.extend(
            self.scaled
                .iter()
                .map(|(n, a, b)| format!("scale {n} {a} -> {b}")),
        );
        v.extend(self.unchanged.iter().map(|n| format!("keep {n}")));
        v.extend(self.notes.iter().cloned());
        v
    }
}

/// Whether `a` and `b` run the same way. `instances` is compared apart (a change of count
/// alone is a scale, not a restart), and `source` not at all: the file a program is defined in
/// is no setting of it.
fn same_config(a: &ProgramDef, b: &ProgramDef) -> bool {
    let work = match (&a.work, &b.work) {
        (Work::Exec(x), Work::Exec(y)) => x == y,
        (Work::Fn(x), Work::Fn(y)) => std::sync::Arc::ptr_eq(x, y),
        _ => false,
    };
    work && a.policy == b.policy
        && a.stdout == b.stdout
        && a.stderr == b.stderr
        && a.log_max_bytes == b.log_max_bytes
        && a.log_keep == b.log_keep
}

impl Supervisor {
    /// Re-reads the configuration through the reloader and applies the difference (unless
    /// `dry_run`). Returns the plan and the programs to wait for.
    pub(super) fn reload(
        &mut self,
        dry_run: bool,
    ) -> std::result::Result<(ReloadPlan, Vec<usize>), (ErrorKind, String)> {
        if self.reloader.is_none() {
            return Err((
                ErrorKind::Failed,
                "this supervisor has no configuration to reload".into(),
            ));
        }
        self.notify_manager(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        let result = (self.reloader.as_mut().expect("checked"))();
        let set = match result {
            Ok(s) => s,
            Err(e) => {
                log::error!("reload rejected, keeping the running configuration:\n{e}");
                self.notify_manager("READY=1\nSTATUS=running (reload rejected)");
                return Err((ErrorKind::InvalidConfig, e));
            }
        };
        let plan = self.plan(&set);
        if dry_run {
            self.notify_manager("READY=1\nSTATUS=running");
            return Ok((plan, Vec::new()));
        }
        let outcome = self.apply_reload(set, &plan);
        self.notify_manager("READY=1\nSTATUS=running");
        match outcome {
            Ok(touched) => {
                for line in plan.lines().iter().filter(|l| !l.starts_with("keep ")) {
                    log::info!("reload: {line}");
                }
                log::info!("reload applied");
                Ok((plan, touched))
            }
            Err((kind, e)) => {
                log::error!("reload failed, nothing changed: {e}");
                Err((kind, e))
            }
        }
    }

    fn plan(&self, set: &ReloadSet) -> ReloadPlan {
        let mut plan = ReloadPlan {
            notes: set.notes.clone(),
            ..ReloadPlan::default()
        };
        for def in &set.programs {
            match self.find(&def.name) {
                Err(_) => plan.added.push(def.name.clone()),
                Ok(p) => {
                    let old = &self.programs[p].def;
                    if !same_config(old, def) && self.stopped_by_hand(p) {
                        plan.changed_stopped.push(def.name.clone());
                    } else if !same_config(old, def) {
                        plan.changed.push(def.name.clone());
                    } else if old.instances != def.instances {
                        plan.scaled
                            .push((def.name.clone(), old.instances, def.instances));
                    } else {
                        plan.unchanged.push(def.name.clone());
                    }
                }
            }
        }
        for p in self.live_programs() {
            let name = &self.programs[p].def.name;
            if !set.programs.iter().any(|d| &d.name == name) {
                plan.removed.push(name.clone());
            }
        }
        plan
    }

    /// Whether every instance of program `p` was stopped by hand (`warden stop PROG`) and is
    /// kept down: a reload must not start it again.
    fn stopped_by_hand(&self, p: usize) -> bool {
        let mut live = self.programs[p].slots.iter().filter(|s| !s.retiring);
        let mut any = false;
        live.all(|s| {
            any = true;
            s.inst.manual_stop
        }) && any
    }

    fn apply_reload(
        &mut self,
        set: ReloadSet,
        plan: &ReloadPlan,
    ) -> std::result::Result<Vec<usize>, (ErrorKind, String)> {
        // Resolve everything first: a typo in a user name must not leave half a reload behind.
        let mut prepared: Vec<(ProgramDef, Option<Prepared>, [Option<RotatingFile>; 2])> =
            Vec::new();
        for def in set.programs.iter().filter(|d| {
            plan.added.contains(&d.name)
                || plan.changed.contains(&d.name)
                || plan.changed_stopped.contains(&d.name)
        }) {
            let prep = match &def.work {
                Work::Exec(spec) => {
                    Some(Prepared::exec(spec).map_err(|e| self.reload_error(&def.name, &e))?)
                }
                Work::Fn(_) => None,
            };
            let files = open_files(def).map_err(|e| self.reload_error(&def.name, &e))?;
            prepared.push((def.clone(), prep, files));
        }
        let internal = |e: Error| (ErrorKind::Failed, e.to_string());
        let mut touched = Vec::new();
        for name in &plan.removed {
            let p = self.find(name).map_err(internal)?;
            self.rollouts.retain(|r| r.program != p);
            let _ = self.stop_program(name);
            self.programs[p].removed = true;
        }
        for (def, prep, files) in prepared {
            if plan.added.contains(&def.name) {
                self.add_prepared(def, prep, files);
                touched.push(self.programs.len() - 1);
                continue;
            }
            let p = self.find(&def.name).map_err(internal)?;
            let instances = def.instances;
            {
                let prog = &mut self.programs[p];
                prog.def = def;
                prog.prepared = prep;
                prog.files = files;
            }
            let name = self.programs[p].def.name.clone();
            let live = self.programs[p]
                .slots
                .iter()
                .filter(|s| !s.retiring)
                .count();
            // Fewer instances first, so that the rollout does not replace the ones about to go.
            if (instances as usize) < live {
                self.scale(&name, instances).map_err(internal)?;
            }
            let stays_stopped = plan.changed_stopped.contains(&name);
            if !stays_stopped {
                self.begin_rollout(p, true);
            }
            if (instances as usize) > live && stays_stopped {
                self.add_stopped_instances(p, instances);
            } else if (instances as usize) > live {
                self.scale(&name, instances).map_err(internal)?;
            }
            if !stays_stopped || instances as usize != live {
                touched.push(p);
            }
        }
        for (name, from, to) in &plan.scaled {
            let p = self.find(name).map_err(internal)?;
            // A program stopped by hand stays stopped: its new instances too.
            if to > from && self.stopped_by_hand(p) {
                self.add_stopped_instances(p, *to);
            } else {
                self.scale(name, *to).map_err(internal)?;
            }
            touched.push(p);
        }
        // Where each program is defined is not a setting (`same_config` ignores it), so an
        // unchanged program whose table moved to another file is only told its new file.
        for def in &set.programs {
            if let Ok(p) = self.find(&def.name) {
                self.programs[p].def.source.clone_from(&def.source);
            }
        }
        self.scale_program = set.scale_program;
        Ok(touched)
    }

    /// Scales program `p`, kept down by hand, up to `instances` without starting anything:
    /// each new instance is `stopped` (by hand), as if `warden stop PROG` had been run
    /// after it was created, so that it starts with the others at the next `start PROG`. An
    /// instance with that index still stopping after an earlier scale-down is kept instead,
    /// and stays down once stopped.
    fn add_stopped_instances(&mut self, p: usize, instances: u32) {
        let live = self.programs[p]
            .slots
            .iter()
            .filter(|s| !s.retiring)
            .count();
        for index in live..instances as usize {
            let pos = match self.programs[p].slots.iter().position(|s| s.index == index) {
                Some(pos) => {
                    self.programs[p].slots[pos].retiring = false;
                    pos
                }
                None => {
                    self.programs[p].slots.push(new_slot(index));
                    self.programs[p].slots.len() - 1
                }
            };
            // From `exited` a stop makes the instance `stopped` (by hand); from `stopping` it
            // turns a pending restart into staying down.
            self.apply(p, pos, state::Event::Stop);
        }
        self.programs[p].def.instances = instances;
        let name = &self.programs[p].def.name;
        log::info!("{name}: scaled to {instances} instance(s), kept stopped");
    }

    /// How a reload reports what stopped it before anything changed: a name that does not
    /// resolve is the configuration's fault (`FILE: program.NAME.KEY: …`), an output file that
    /// cannot be opened is an I/O error.
    fn reload_error(&self, program: &str, e: &Error) -> (ErrorKind, String) {
        let file = if self.config_path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.config_path)
        };
        match e {
            Error::UnknownUser(_) => (
                ErrorKind::InvalidConfig,
                format!("{file}program.{program}.user: {e}"),
            ),
            Error::UnknownGroup(_) => (
                ErrorKind::InvalidConfig,
                format!("{file}program.{program}.group: {e}"),
            ),
            Error::Invalid { what, reason } => (
                ErrorKind::InvalidConfig,
                format!("{file}program.{program}.{what}: {reason}"),
            ),
            Error::Io { .. } if e.is_permission_denied() => {
                (ErrorKind::IoDenied, format!("program {program}: {e}"))
            }
            Error::Io { .. } => (ErrorKind::Io, format!("program {program}: {e}")),
            _ => (ErrorKind::Failed, format!("program {program}: {e}")),
        }
    }
}

pub(super) fn monotonic_usec() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u128 * 1_000_000 + t.tv_nsec() as u128 / 1_000)
        .unwrap_or(0)
}
