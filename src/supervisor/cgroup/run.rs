//! cgroup mode, the loop's side: entering it at the first `run`, the cgroup of each spawn and
//! its limits, OOM attribution, and what `status` says.

use std::ffi::CString;
use std::path::PathBuf;

use super::{Hierarchy, instance_name};
use crate::config::CgroupMode;
use crate::lifecycle::Event;
use crate::policy::ExitReason;
use crate::supervisor::Supervisor;
use crate::supervisor::handoff::state::CgroupRec;
use crate::supervisor::program::ProgramDef;
use crate::supervisor::sources;
use crate::supervisor::table::{ProgramId, SlotPos};

/// What the supervisor knows of cgroup mode besides the groups' part.
#[derive(Debug, Default)]
pub(crate) struct CgroupState {
    /// What was asked ([`Supervisor::set_cgroups`]); the library's default is off.
    pub(crate) asked: Option<CgroupMode>,
    /// The mode was decided ([`Supervisor::decide_tracking`]).
    pub(crate) decided: bool,
    /// Why process groups are in force, when they are (for the log and `status`).
    pub(crate) why_not: Option<String>,
    /// Limits already said not to be applied, by program and key: said once per program.
    pub(crate) told: std::collections::HashSet<(String, &'static str)>,
    /// PID-namespace mode was asked ([`Supervisor::set_pid_namespace`]).
    pub(crate) pid_namespace: bool,
    /// Why it is not in force although asked.
    pub(crate) ns_why_not: Option<String>,
    /// cgroup mode is expected ([`Supervisor::expect_cgroup_mode`]): falling back is a warning.
    pub(crate) expected: bool,
    /// cgroup mode asked and expected, and not in force: why (for `warden start`).
    pub(crate) fallback: Option<String>,
    /// A tree made as root for this process, now another user ([`DelegatedCgroups`]).
    pub(crate) delegated: Option<DelegatedCgroups>,
}

/// Whether `event` says an instance's processes are all gone (when its cgroup was emptied).
pub(crate) fn ends(event: &Event) -> bool {
    matches!(event, Event::Exited { .. } | Event::GroupEmpty)
}

/// A spawn's cgroup: what the child joins, and what the groups record.
type SpawnCgroup = Option<(CString, (PathBuf, u64))>;

impl Supervisor {
    /// Whether to run each instance in a cgroup v2 of its own: [`CgroupMode::Auto`] where
    /// warden may create cgroups (a delegated subtree, or as root), with process groups and
    /// the guard as the fallback; [`CgroupMode::Off`] (the library's default) keeps to process
    /// groups. Decided when [`run`](Self::run) first starts programs; cgroup mode moves this
    /// process into a leaf cgroup of its own (see the `cgroup` module of the supervisor).
    pub fn set_cgroups(&mut self, mode: CgroupMode) {
        self.cgroup.asked = Some(mode);
    }

    /// Decides the tracking mode now, as [`set_cgroups`](Self::set_cgroups) and
    /// [`set_pid_namespace`](Self::set_pid_namespace) asked: enters cgroup mode if asked and
    /// possible (moving this process into its leaf cgroup), then PID-namespace mode, and logs
    /// the modes in force. [`run`](Self::run) does it before it first starts programs if it was
    /// not done; the `warden` binary does it before it reports readiness. Once only.
    pub fn decide_tracking(&mut self) {
        if self.groups.hierarchy().is_some() || self.cgroup.decided {
            return;
        }
        self.cgroup.decided = true;
        self.decide_cgroups();
        // After the cgroups: entering cgroup mode replaces a guard already running.
        self.decide_pid_namespace();
    }

    /// The cgroup half of [`decide_tracking`](Self::decide_tracking).
    fn decide_cgroups(&mut self) {
        let why = match self.cgroup.asked {
            None => return,
            Some(CgroupMode::Off) => "cgroups = \"off\"".to_string(),
            Some(CgroupMode::Auto) => match self
                .cgroup
                .delegated
                .take()
                .map_or_else(Hierarchy::set_up_here, |d| Ok((d.hierarchy, d.cleaned)))
            {
                Ok((h, cleaned)) => {
                    for line in cleaned {
                        log::warn!("{line}");
                    }
                    let base = h.base.display().to_string();
                    let controllers = h.controllers.join(" ");
                    match self.groups.enter_cgroup_mode(
                        self.poll.registry(),
                        sources::CGROUPS,
                        h,
                        false,
                    ) {
                        Ok(()) => {
                            log::info!(
                                "tracking: cgroup (each instance in a cgroup of its own under {base}; controllers: {})",
                                if controllers.is_empty() {
                                    "none"
                                } else {
                                    &controllers
                                }
                            );
                            return;
                        }
                        Err(e) => format!("inotify: {e}"),
                    }
                }
                Err(why) => why,
            },
        };
        let expected = self.cgroup.expected || nix::unistd::geteuid().is_root();
        if self.cgroup.asked == Some(CgroupMode::Auto) && expected {
            log::warn!("tracking: process groups and the guard ({why})");
            self.cgroup.fallback = Some(why.clone());
        } else {
            log::info!("tracking: process groups and the guard ({why})");
        }
        self.cgroup.why_not = Some(why);
    }

    /// Says that cgroup mode is expected to be possible — warden was started as root and has
    /// since dropped its privileges (`[daemon] user`) —, so that falling back to process groups
    /// is logged as a warning and said by [`unapplicable_limits`](Self::unapplicable_limits),
    /// as it is when this process runs as root.
    pub fn expect_cgroup_mode(&mut self) {
        self.cgroup.expected = true;
    }

    /// cgroup mode as `warden upgrade` hands it over, if in force.
    pub(in crate::supervisor) fn cgroup_rec(&self) -> Option<CgroupRec> {
        self.groups.hierarchy().map(|h| CgroupRec {
            parent: h.parent.clone(),
            base: h.base.clone(),
            groups: self.groups.tracked_cgroups(),
        })
    }

    /// Takes cgroup mode over from an earlier image (`warden upgrade`), if it was in force.
    pub(in crate::supervisor) fn adopt_cgroups(&mut self, rec: Option<&CgroupRec>) {
        self.cgroup.decided = true;
        let Some(rec) = rec else {
            // The instances run where the earlier image put them: the mode cannot change now.
            self.cgroup.why_not = Some(
                "process-group mode carried over by warden upgrade; restart warden to change it"
                    .into(),
            );
            return;
        };
        let h = Hierarchy::adopt(rec.parent.clone(), rec.base.clone());
        let registry = self.poll.registry();
        if let Err(e) = self
            .groups
            .enter_cgroup_mode(registry, sources::CGROUPS, h, true)
        {
            // The cgroups still hold the instances; without the watch, emptied cgroups are
            // found at the next reap or deadline instead.
            log::error!("cannot watch the instances' cgroups after the upgrade: inotify: {e}");
            return;
        }
        for (pgid, dir, base) in &rec.groups {
            self.groups.adopt_cgroup(*pgid, dir.clone(), *base);
        }
    }

    /// The tracking mode `status` shows: `"cgroup"` or `"process-group"`, and the base cgroup.
    pub(in crate::supervisor) fn tracking(&self) -> (String, Option<String>) {
        match self.groups.hierarchy() {
            Some(h) => ("cgroup".into(), Some(h.base.display().to_string())),
            None => ("process-group".into(), None),
        }
    }

    /// The cgroup of the next spawn of slot `pos` of program `p` (cgroup mode), made now with
    /// its limits; logs once per program each limit that cannot be applied.
    ///
    /// Errors: the cgroup cannot be made.
    pub(in crate::supervisor) fn spawn_cgroup(
        &mut self,
        p: ProgramId,
        pos: SlotPos,
    ) -> crate::Result<SpawnCgroup> {
        let prog = &self.table[p];
        let (def, slot) = (&prog.def, &prog[pos]);
        let name = instance_name(&def.name, slot.index.0, slot.id.0);
        let made = self
            .groups
            .cgroup_for(&name, &def.cgroup)
            .map_err(|e| crate::Error::os("mkdir of the instance's cgroup", e))?;
        let Some(((dir, base), failed)) = made else {
            if !def.cgroup.is_empty() {
                let why = self.cgroup.why_not.clone().unwrap_or_default();
                let failed: Vec<String> = def
                    .cgroup
                    .files()
                    .into_iter()
                    .map(|(key, ..)| format!("{key}: warden runs without cgroups ({why})"))
                    .collect();
                self.tell_unapplied(p, failed);
            }
            return Ok(None);
        };
        self.tell_unapplied(p, failed);
        let procs = super::procs_of(&dir).ok_or_else(|| {
            crate::Error::os("cgroup path", std::io::ErrorKind::InvalidInput.into())
        })?;
        Ok(Some((procs, (dir, base))))
    }

    /// Every limit of a live program that cannot be applied in the tracking mode in force
    /// (`web: memory_max: the memory controller is not enabled for …`), once the mode is
    /// decided: the `warden` binary passes them to `warden start` before readiness, so that an
    /// operator sees them where they started warden, not only in the log. A `pid_namespace`
    /// asked and not in force comes first (`pid_namespace cannot be applied: …`), then cgroup
    /// mode not in force where it was expected (as root, or see
    /// [`expect_cgroup_mode`](Self::expect_cgroup_mode)).
    pub fn unapplicable_limits(&self) -> Vec<String> {
        let mut out: Vec<String> = self.pid_namespace_problem().into_iter().collect();
        if let Some(why) = &self.cgroup.fallback {
            out.push(format!(
                "cgroups = \"auto\": warden runs without cgroups, with process groups and the \
                 guard ({why})"
            ));
        }
        for p in self.table.live_programs() {
            out.extend(self.limits_unapplicable_to(&self.table[p].def));
        }
        out
    }

    /// The limits of `def` that cannot be applied in the tracking mode in force, as
    /// [`unapplicable_limits`](Self::unapplicable_limits) says them (`web: memory_max cannot be
    /// applied: …`): also for a program a reload is about to add or change.
    pub(crate) fn limits_unapplicable_to(&self, def: &ProgramDef) -> Vec<String> {
        let hierarchy = self.groups.hierarchy();
        let mut out = Vec::new();
        for (key, _, controller, _) in def.cgroup.files() {
            let why = match hierarchy {
                Some(h) => h
                    .unavailable
                    .iter()
                    .find(|(c, _)| c == controller)
                    .map(|(_, why)| why.clone()),
                None => Some(format!(
                    "warden runs without cgroups ({})",
                    self.cgroup.why_not.clone().unwrap_or_default()
                )),
            };
            if let Some(why) = why {
                out.push(format!("{}: {key} cannot be applied: {why}", def.name));
            }
        }
        out
    }

    /// Logs each of `failed` (`KEY: reason`) not told yet for program `p`.
    fn tell_unapplied(&mut self, p: ProgramId, failed: Vec<String>) {
        let name = self.table[p].def.name.clone();
        for line in failed {
            let key = ["memory_max", "memory_high", "pids_max", "cpu_max"]
                .into_iter()
                .find(|k| line.starts_with(k))
                .unwrap_or("");
            if self.cgroup.told.insert((name.clone(), key)) {
                crate::log::about!(
                    log::Level::Warn,
                    &name,
                    None,
                    None,
                    "{name}: limit not applied: {line}"
                );
            }
        }
    }

    /// After a step on an event that `ended` the instance's processes ([`ends`]): an instance whose cgroup emptied after the OOM killer struck it
    /// records [`ExitReason::Oom`] as the reason of its last exit; returns the line to log.
    pub(in crate::supervisor) fn note_oom(
        &mut self,
        p: ProgramId,
        pos: SlotPos,
        ended: bool,
    ) -> Option<String> {
        if !ended {
            return None;
        }
        let slot = &mut self.table[p][pos];
        if !self.groups.take_oom((p, slot.id)) {
            return None;
        }
        slot.inst.last_reason = Some(ExitReason::Oom);
        Some("killed by the OOM killer (oom_kill in its cgroup's memory.events)".into())
    }
}

/// warden's cgroup tree made while still root, for a warden that then runs as another user
/// (`[daemon] user`): the calling process moved into its `supervisor` leaf (its children, the
/// daemon among them, are born there), and the tree delegated to that user as systemd's
/// `Delegate=yes` does, so that it can make, fill and kill the instances' cgroups. Given to
/// [`Supervisor::use_delegated_cgroups`] in the process that runs as the user.
#[derive(Debug)]
pub struct DelegatedCgroups {
    hierarchy: Hierarchy,
    cleaned: Vec<String>,
}

impl DelegatedCgroups {
    /// Makes the tree in this process's cgroup and delegates it to `uid`:`gid`.
    ///
    /// Errors: why cgroup mode cannot be had (as [`Supervisor::decide_tracking`] would say),
    /// or a `chown` that failed (the tree is then removed).
    pub fn make(uid: u32, gid: u32) -> Result<DelegatedCgroups, String> {
        let (hierarchy, cleaned) = Hierarchy::set_up_here()?;
        if let Err(e) = hierarchy.delegate(uid, gid) {
            hierarchy.tear_down();
            return Err(e);
        }
        Ok(DelegatedCgroups { hierarchy, cleaned })
    }
}

impl Supervisor {
    /// Uses `tree`, made by [`DelegatedCgroups::make`] before this process dropped its
    /// privileges, when [`decide_tracking`](Self::decide_tracking) enters cgroup mode.
    pub fn use_delegated_cgroups(&mut self, tree: DelegatedCgroups) {
        self.cgroup.delegated = Some(tree);
    }
}
