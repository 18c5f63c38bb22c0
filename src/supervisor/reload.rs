//! Transactional reloads: what changed between the running configuration and the new one (a
//! [`ReloadPlan`]), and carrying it out.
//!
//! Everything a reload needs (users, groups, output files) is resolved before anything changes,
//! so an error leaves the running configuration untouched. Unchanged programs are not touched at
//! all: same processes, same pids. Changed programs are restarted by a rollout
//! ([`super::rollout`]); programs stopped by hand stay stopped.

use serde::Serialize;

use super::health::Checker;
use super::programs::open_files;
use super::rollout::Previous;
use super::table::{InstanceIndex, ProgramId};
use super::{ProgramDef, Supervisor, Work, output::RotatingFile, spawn::Prepared};
use crate::control::ErrorKind;
use crate::error::Error;
use crate::lifecycle::Event;

/// What a reloader produces: the new programs and daemon-level settings.
#[derive(Debug, Clone)]
pub struct ReloadSet {
    /// Every program of the new configuration, in order.
    pub programs: Vec<ProgramDef>,
    /// The new `scale_program`.
    pub scale_program: Option<String>,
    /// The new `[socket.NAME]` tables; `None` leaves the held sockets as they are (a reloader
    /// that does not manage sockets).
    pub sockets: Option<Vec<crate::config::SocketSpec>>,
    /// Remarks about settings that cannot change while running.
    pub notes: Vec<String>,
    /// Changed settings that `warden upgrade` cannot carry over either (each a message saying
    /// so): the upgrade is refused while there are any. Settings a reload cannot apply but the
    /// new image of an upgrade can (or keeps as they run, saying so) are not among them.
    pub upgrade_blockers: Vec<String>,
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
    /// Programs whose health check changed (and perhaps their count), but nothing they are
    /// restarted for: the new check applies from now on, to the running instances too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_changed: Vec<String>,
    /// Programs left alone.
    pub unchanged: Vec<String>,
    /// Sockets to bind and hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets_added: Vec<String>,
    /// Sockets to close (the instances that have them keep their copies until they exit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets_removed: Vec<String>,
    /// Sockets whose address changed: bound anew; the programs that receive them restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets_moved: Vec<String>,
    /// Sockets whose backlog, mode or owner changed: updated in place, nothing restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets_updated: Vec<String>,
    /// Settings that take effect only when warden restarts.
    pub notes: Vec<String>,
    /// Limits of the programs added or changed that cannot be applied (`web: memory_max cannot
    /// be applied: …`), as `warden start` warns of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The new configuration's start order, in levels (`after`, `requires`): each level's
    /// programs start in parallel once the levels before are ready. Edges are not settings a
    /// program restarts for: they apply to future starts.
    pub start_order: Vec<Vec<String>>,
}

impl ReloadPlan {
    /// What a reload from `old` (the running programs, in order) to `new` does. A program is
    /// matched by name: new ones are added, missing ones removed; a change of settings
    /// restarts it (or only updates it, when it is stopped by hand); a change of count alone
    /// scales it; a move to another file alone changes nothing.
    pub(super) fn diff(old: &[Running<'_>], new: &ReloadSet) -> ReloadPlan {
        let names: Vec<&str> = new.programs.iter().map(|d| d.name.as_str()).collect();
        let edges: Vec<Vec<&str>> = new
            .programs
            .iter()
            .map(|d| {
                d.after
                    .iter()
                    .chain(&d.requires)
                    .map(String::as_str)
                    .collect()
            })
            .collect();
        let mut plan = ReloadPlan {
            notes: new.notes.clone(),
            start_order: crate::config::graph::start_order(&names, &edges),
            ..ReloadPlan::default()
        };
        for def in &new.programs {
            let name = def.name.clone();
            match old.iter().find(|r| r.def.name == def.name) {
                None => plan.added.push(name),
                Some(r) if !same_config(r.def, def) && r.stopped_by_hand => {
                    plan.changed_stopped.push(name)
                }
                Some(r) if !same_config(r.def, def) => plan.changed.push(name),
                Some(r) if r.def.instances != def.instances => {
                    if r.def.health != def.health {
                        plan.health_changed.push(name.clone());
                    }
                    plan.scaled.push((name, r.def.instances, def.instances))
                }
                Some(r) if r.def.health != def.health => plan.health_changed.push(name),
                Some(_) => plan.unchanged.push(name),
            }
        }
        for r in old {
            if !new.programs.iter().any(|d| d.name == r.def.name) {
                plan.removed.push(r.def.name.clone());
            }
        }
        plan
    }

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
        v.extend(
            self.health_changed
                .iter()
                .map(|n| format!("update {n} (health check; restarts nothing)")),
        );
        v.extend(self.sockets_added.iter().map(|n| format!("add socket {n}")));
        v.extend(
            self.sockets_removed
                .iter()
                .map(|n| format!("remove socket {n}")),
        );
        v.extend(
            self.sockets_moved
                .iter()
                .map(|n| format!("move socket {n} (to its new address)")),
        );
        v.extend(
            self.sockets_updated
                .iter()
                .map(|n| format!("update socket {n} (restarts nothing)")),
        );
        v.extend(self.unchanged.iter().map(|n| format!("keep {n}")));
        v.extend(self.notes.iter().cloned());
        v
    }
}

/// What the configuration file holds that `warden upgrade` cannot carry over (see
/// [`Supervisor::pending_changes`]).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// What `warden reload` would apply first, one line each.
    pub(super) reload: Vec<String>,
    /// `[daemon]` settings only a restart of warden applies, one message each.
    pub(super) daemon: Vec<String>,
}

/// A program of the running configuration, as [`ReloadPlan::diff`] sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Running<'a> {
    /// Its settings.
    pub def: &'a ProgramDef,
    /// Every instance of it was stopped by hand and is kept down (see [`all_stopped_by_hand`]).
    pub stopped_by_hand: bool,
}

/// A program of the new configuration, resolved: its settings, its prepared exec and its
/// output files.
type Resolved = (ProgramDef, Option<Prepared>, [Option<RotatingFile>; 2]);

/// A program's new health check, resolved (`None`: it has none any more).
type NewChecker = (String, Option<Checker>);

/// A failure past the point where everything was resolved (a program that vanished): the
/// supervisor's fault, not the configuration's.
fn internal(e: Error) -> (ErrorKind, String) {
    (ErrorKind::Failed, e.to_string())
}

/// Whether a program whose live instances were `stopped by hand` (one flag each) counts as
/// stopped by hand: it has at least one instance, and each was.
pub(super) fn all_stopped_by_hand(mut instances: impl Iterator<Item = bool>) -> bool {
    let mut any = false;
    instances.all(|manual| {
        any = true;
        manual
    }) && any
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
        && a.sockets == b.sockets
        && a.stdout == b.stdout
        && a.stderr == b.stderr
        && a.log_max_bytes == b.log_max_bytes
        && a.log_keep == b.log_keep
        && a.cgroup == b.cgroup
}

impl Supervisor {
    /// Re-reads the configuration through the reloader and applies the difference (unless
    /// `dry_run`). Returns the plan and the programs to wait for.
    pub(super) fn reload(
        &mut self,
        dry_run: bool,
    ) -> std::result::Result<(ReloadPlan, Vec<ProgramId>), (ErrorKind, String)> {
        if self.plane.reloader.is_none() {
            return Err((
                ErrorKind::Failed,
                "this supervisor has no configuration to reload".into(),
            ));
        }
        self.notify_manager(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        let result = (self.plane.reloader.as_mut().expect("checked"))();
        let set = match result {
            Ok(s) => s,
            Err(e) => {
                log::error!("reload rejected, keeping the running configuration:\n{e}");
                self.notify_manager("READY=1\nSTATUS=running (reload rejected)");
                return Err((ErrorKind::InvalidConfig, e));
            }
        };
        let mut plan = ReloadPlan::diff(&self.running(), &set);
        self.plan_sockets(&set, &mut plan);
        plan.warnings = self.reload_warnings(&set, &plan);
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
                self.events
                    .publish(super::events::Event::reload_applied(&plan));
                Ok((plan, touched))
            }
            Err((kind, e)) => {
                log::error!("reload failed, nothing changed: {e}");
                Err((kind, e))
            }
        }
    }

    /// The limits of the programs `plan` adds or changes that cannot be applied (those of the
    /// others were said when they started).
    fn reload_warnings(&self, set: &ReloadSet, plan: &ReloadPlan) -> Vec<String> {
        let new = |name: &String| {
            plan.added.contains(name)
                || plan.changed.contains(name)
                || plan.changed_stopped.contains(name)
        };
        set.programs
            .iter()
            .filter(|def| new(&def.name))
            .flat_map(|def| self.limits_unapplicable_to(def))
            .collect()
    }

    /// What keeps `warden upgrade` from carrying the configuration file over as it is: what a
    /// reload would change now besides instance counts (a `scale` is carried) — programs added,
    /// removed or changed, sockets —, and the changed `[daemon]` settings the upgrade cannot
    /// apply ([`ReloadSet::upgrade_blockers`]). Both empty when it can.
    pub(super) fn pending_changes(&mut self) -> std::result::Result<Pending, String> {
        let Some(reloader) = self.plane.reloader.as_mut() else {
            return Ok(Pending::default());
        };
        let set = reloader()?;
        let mut plan = ReloadPlan::diff(&self.running(), &set);
        self.plan_sockets(&set, &mut plan);
        // The `[daemon]` notes are not changes a reload applies: the blockers say which count.
        plan.notes.clear();
        let reload = plan
            .lines()
            .into_iter()
            .filter(|l| !l.starts_with("keep ") && !l.starts_with("scale "))
            .collect();
        Ok(Pending {
            reload,
            daemon: set.upgrade_blockers,
        })
    }

    /// The live programs as [`ReloadPlan::diff`] sees them, in order.
    fn running(&self) -> Vec<Running<'_>> {
        self.table
            .live_programs()
            .into_iter()
            .map(|p| Running {
                def: &self.table[p].def,
                stopped_by_hand: self.stopped_by_hand(p),
            })
            .collect()
    }

    /// Whether every instance of program `p` was stopped by hand (`warden stop PROG`) and is
    /// kept down: a reload must not start it again.
    pub(super) fn stopped_by_hand(&self, p: ProgramId) -> bool {
        all_stopped_by_hand(
            self.table[p]
                .slots()
                .iter()
                .filter(|s| !s.retiring)
                .map(|s| s.inst.manual_stop),
        )
    }

    /// Carries out `plan`, computed from `set`: resolves every new or changed program first,
    /// then removes, replaces, scales. Returns the programs to wait for.
    fn apply_reload(
        &mut self,
        set: ReloadSet,
        plan: &ReloadPlan,
    ) -> std::result::Result<Vec<ProgramId>, (ErrorKind, String)> {
        let prepared = self.prepare_reload(&set, plan)?;
        let checkers = self.prepare_checkers(&set)?;
        let sockets = self.prepare_sockets(&set, plan)?;
        self.install_sockets(sockets, plan);
        // A reload that applies ends every program's "rolled back" mark (it may set it again).
        for p in self.table.ids() {
            self.table[p].rolled_back = None;
        }
        let mut touched = Vec::new();
        for name in &plan.removed {
            let p = self.table.find(name).map_err(internal)?;
            self.cancel_rollout(p);
            let _ = self.stop_program(name);
            self.table[p].removed = true;
        }
        for (def, prep, files) in prepared {
            if plan.added.contains(&def.name) {
                touched.push(self.add_prepared(def, prep, files));
                continue;
            }
            let stays_stopped = plan.changed_stopped.contains(&def.name);
            if let Some(p) = self.replace_program(def, prep, files, stays_stopped)? {
                touched.push(p);
            }
        }
        for (name, from, to) in &plan.scaled {
            let p = self.table.find(name).map_err(internal)?;
            // A program stopped by hand stays stopped: its new instances too.
            if to > from && self.stopped_by_hand(p) {
                self.add_stopped_instances(p, *to);
            } else {
                self.scale(name, *to).map_err(internal)?;
            }
            touched.push(p);
        }
        // Where each program is defined is not a setting (`same_config` ignores it), so an
        // unchanged program whose table moved to another file is only told its new file; and
        // so are its edges.
        for def in &set.programs {
            if let Ok(p) = self.table.find(&def.name) {
                let running = &mut self.table[p].def;
                running.source.clone_from(&def.source);
                // Edges apply to future starts: a new edge restarts nothing.
                running.after.clone_from(&def.after);
                running.requires.clone_from(&def.requires);
                running.rollout = def.rollout;
            }
        }
        for (name, checker) in checkers {
            self.set_checker(&name, checker);
        }
        self.scale_program = set.scale_program;
        Ok(touched)
    }

    /// Resolves the health check of every program of `set` whose check is new or changed.
    fn prepare_checkers(
        &self,
        set: &ReloadSet,
    ) -> std::result::Result<Vec<NewChecker>, (ErrorKind, String)> {
        let mut out = Vec::new();
        for def in &set.programs {
            let running = self.table.find(&def.name).ok().map(|p| &self.table[p]);
            if running.is_some_and(|r| r.def.health == def.health && !r.removed) {
                continue;
            }
            let checker = Checker::prepare(def).map_err(|e| self.reload_error(&def.name, &e))?;
            out.push((def.name.clone(), checker));
        }
        Ok(out)
    }

    /// Gives program `name` its new health check; its running instances' checks start over.
    pub(super) fn set_checker(&mut self, name: &str, checker: Option<Checker>) {
        let Ok(p) = self.table.find(name) else {
            return;
        };
        self.table[p].def.health = checker.as_ref().map(|c| c.spec.clone());
        self.table[p].checker = checker;
        let now = std::time::Instant::now();
        for pos in self.table[p].positions() {
            self.reset_health(p, pos, now);
        }
    }

    /// Resolves users and groups and opens the output files of every program `plan` adds or
    /// changes, before anything changes: a typo in a user name must not leave half a reload
    /// behind.
    fn prepare_reload(
        &self,
        set: &ReloadSet,
        plan: &ReloadPlan,
    ) -> std::result::Result<Vec<Resolved>, (ErrorKind, String)> {
        let mut prepared = Vec::new();
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
        Ok(prepared)
    }

    /// Gives a changed program its new settings and count: fewer instances first, then a
    /// rolling restart (unless it `stays_stopped`), then more instances. Returns the program
    /// when there is something to wait for.
    fn replace_program(
        &mut self,
        def: ProgramDef,
        prep: Option<Prepared>,
        files: [Option<RotatingFile>; 2],
        stays_stopped: bool,
    ) -> std::result::Result<Option<ProgramId>, (ErrorKind, String)> {
        let p = self.table.find(&def.name).map_err(internal)?;
        let instances = def.instances;
        let name = def.name.clone();
        let previous = {
            let prog = &mut self.table[p];
            let previous = Previous {
                def: std::mem::replace(&mut prog.def, def),
                prepared: std::mem::replace(&mut prog.prepared, prep),
                spec_gen: prog.spec_gen,
            };
            prog.files = files;
            prog.spec_gen += 1;
            previous
        };
        let live = self.table[p].live_indices().len();
        // Fewer instances first, so that the rollout does not replace the ones about to go.
        if (instances as usize) < live {
            self.scale(&name, instances).map_err(internal)?;
        }
        if !stays_stopped {
            self.begin_rollout(p, true, Some(previous));
        }
        if (instances as usize) > live && stays_stopped {
            self.add_stopped_instances(p, instances);
        } else if (instances as usize) > live {
            self.scale(&name, instances).map_err(internal)?;
        }
        Ok((!stays_stopped || instances as usize != live).then_some(p))
    }

    /// Scales program `p`, kept down by hand, up to `instances` without starting anything:
    /// each new instance is `stopped` (by hand), as if `warden stop PROG` had been run
    /// after it was created, so that it starts with the others at the next `start PROG`. An
    /// instance with that index still stopping after an earlier scale-down is kept instead,
    /// and stays down once stopped.
    fn add_stopped_instances(&mut self, p: ProgramId, instances: u32) {
        let live = self.table[p].live_indices().len();
        for index in live..instances as usize {
            let pos = self.table[p].slot_for_index(InstanceIndex(index));
            // From `exited` a stop makes the instance `stopped` (by hand); from `stopping` it
            // turns a pending restart into staying down.
            self.apply(p, pos, Event::Stop);
        }
        self.table[p].def.instances = instances;
        let name = &self.table[p].def.name;
        log::info!("{name}: scaled to {instances} instance(s), kept stopped");
    }

    /// How a reload reports what stopped it before anything changed: a name that does not
    /// resolve is the configuration's fault (`FILE: program.NAME.KEY: …`), an output file that
    /// cannot be opened is an I/O error.
    fn reload_error(&self, program: &str, e: &Error) -> (ErrorKind, String) {
        let file = if self.plane.config_path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.plane.config_path)
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

#[cfg(test)]
mod tests {
    //! The reload diff's specification: one test per kind of change.

    use std::path::PathBuf;

    use super::*;
    use crate::supervisor::{ExecSpec, Restart};

    fn program(name: &str, instances: u32, command: &str) -> ProgramDef {
        let spec = ExecSpec::new(vec![command.to_string()]);
        ProgramDef::new(name, instances, Work::Exec(spec))
    }

    fn running(def: &ProgramDef) -> Running<'_> {
        Running {
            def,
            stopped_by_hand: false,
        }
    }

    fn stopped(def: &ProgramDef) -> Running<'_> {
        Running {
            def,
            stopped_by_hand: true,
        }
    }

    fn set(programs: &[&ProgramDef]) -> ReloadSet {
        ReloadSet {
            sockets: None,
            programs: programs.iter().map(|&d| d.clone()).collect(),
            scale_program: None,
            notes: Vec::new(),
            upgrade_blockers: Vec::new(),
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_configuration_keeps_every_program() {
        let (web, db) = (program("web", 2, "web"), program("db", 1, "db"));
        let plan = ReloadPlan::diff(&[running(&web), running(&db)], &set(&[&web, &db]));
        assert_eq!(plan.unchanged, names(&["web", "db"]));
        assert_eq!(plan.lines(), vec!["keep web", "keep db"]);
    }

    #[test]
    fn a_new_program_is_added_and_a_missing_one_removed() {
        let (web, db) = (program("web", 1, "web"), program("db", 1, "db"));
        let plan = ReloadPlan::diff(&[running(&web)], &set(&[&db]));
        assert_eq!(plan.added, names(&["db"]));
        assert_eq!(plan.removed, names(&["web"]));
        assert_eq!(plan.lines(), vec!["add db", "remove web"]);
    }

    #[test]
    fn a_changed_command_restarts_the_program() {
        let old = program("web", 2, "web-v1");
        let new = program("web", 2, "web-v2");
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.changed, names(&["web"]));
        assert_eq!(plan.lines(), vec!["restart web (changed)"]);
    }

    #[test]
    fn a_changed_policy_restarts_the_program() {
        let old = program("web", 1, "web");
        let mut new = old.clone();
        new.policy.restart = Restart::Never;
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.changed, names(&["web"]));
    }

    #[test]
    fn a_changed_health_check_restarts_nothing() {
        use crate::config::{HealthSpec, Probe, parse_host_port};
        let old = program("web", 1, "web");
        let mut new = old.clone();
        new.health = Some(HealthSpec::new(Probe::Tcp(
            parse_host_port("127.0.0.1:80").unwrap(),
        )));
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.health_changed, names(&["web"]));
        assert!(plan.changed.is_empty() && plan.unchanged.is_empty());
        assert_eq!(
            plan.lines(),
            vec!["update web (health check; restarts nothing)"]
        );
        // With a new count too: scaled, and the check updated.
        let mut more = new.clone();
        more.instances = 3;
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&more]));
        assert_eq!(plan.health_changed, names(&["web"]));
        assert_eq!(plan.scaled, vec![("web".to_string(), 1, 3)]);
        // With a changed command: one restart, which takes the new check along.
        let mut both = new.clone();
        both.work = Work::Exec(ExecSpec::new(vec!["web2".into()]));
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&both]));
        assert_eq!(plan.changed, names(&["web"]));
        assert!(plan.health_changed.is_empty());
    }

    #[test]
    fn a_changed_env_file_list_restarts_the_program() {
        let old = program("web", 1, "web");
        let mut new = old.clone();
        if let Work::Exec(spec) = &mut new.work {
            spec.env_files = vec![crate::config::EnvFile::new("/etc/default/web")];
        }
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.changed, names(&["web"]));
    }

    #[test]
    fn a_change_to_a_program_stopped_by_hand_only_updates_it() {
        let old = program("web", 1, "web-v1");
        let new = program("web", 1, "web-v2");
        let plan = ReloadPlan::diff(&[stopped(&old)], &set(&[&new]));
        assert_eq!(plan.changed_stopped, names(&["web"]));
        assert!(plan.changed.is_empty());
        assert_eq!(plan.lines(), vec!["update web (changed; stays stopped)"]);
    }

    #[test]
    fn a_new_instance_count_alone_scales_the_program() {
        let old = program("web", 2, "web");
        let new = program("web", 5, "web");
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.scaled, vec![("web".to_string(), 2, 5)]);
        assert_eq!(plan.lines(), vec!["scale web 2 -> 5"]);
    }

    #[test]
    fn a_program_stopped_by_hand_is_scaled_too() {
        let old = program("web", 2, "web");
        let new = program("web", 1, "web");
        let plan = ReloadPlan::diff(&[stopped(&old)], &set(&[&new]));
        assert_eq!(plan.scaled, vec![("web".to_string(), 2, 1)]);
    }

    #[test]
    fn a_changed_command_with_a_new_count_is_a_restart_not_a_scale() {
        let old = program("web", 2, "web-v1");
        let new = program("web", 3, "web-v2");
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.changed, names(&["web"]));
        assert!(plan.scaled.is_empty());
    }

    #[test]
    fn a_program_moved_to_another_drop_in_file_is_kept_running() {
        let mut old = program("web", 2, "web");
        old.source = Some(PathBuf::from("/etc/warden/warden.toml"));
        let mut new = old.clone();
        new.source = Some(PathBuf::from("/etc/warden/conf.d/web.toml"));
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.unchanged, names(&["web"]));
        assert_eq!(plan.lines(), vec!["keep web"]);
    }

    #[test]
    fn a_moved_program_with_a_new_count_is_only_scaled() {
        let mut old = program("web", 2, "web");
        old.source = Some(PathBuf::from("/etc/warden/warden.toml"));
        let mut new = program("web", 4, "web");
        new.source = Some(PathBuf::from("/etc/warden/conf.d/web.toml"));
        let plan = ReloadPlan::diff(&[running(&old)], &set(&[&new]));
        assert_eq!(plan.scaled, vec![("web".to_string(), 2, 4)]);
    }

    #[test]
    fn the_plan_follows_the_new_order_then_the_old_for_removals() {
        let (a, b, c, d) = (
            program("a", 1, "a"),
            program("b", 1, "b"),
            program("c", 1, "c"),
            program("d", 1, "d"),
        );
        let plan = ReloadPlan::diff(&[running(&a), running(&b), running(&c)], &set(&[&d, &b]));
        assert_eq!(plan.added, names(&["d"]));
        assert_eq!(plan.unchanged, names(&["b"]));
        assert_eq!(plan.removed, names(&["a", "c"]));
    }

    #[test]
    fn notes_are_passed_through_last() {
        let web = program("web", 1, "web");
        let mut new = set(&[&web]);
        new.notes = names(&["pidfile takes effect when warden restarts"]);
        let plan = ReloadPlan::diff(&[running(&web)], &new);
        assert_eq!(
            plan.lines(),
            vec!["keep web", "pidfile takes effect when warden restarts"]
        );
    }

    #[test]
    fn stopped_by_hand_means_every_live_instance_and_at_least_one() {
        assert!(all_stopped_by_hand([true, true].into_iter()));
        assert!(!all_stopped_by_hand([true, false].into_iter()));
        assert!(!all_stopped_by_hand(std::iter::empty()));
    }
}
