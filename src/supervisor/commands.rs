//! The supervisor's side of the control plane: carrying out requests that arrive on the control
//! socket, waiting (without blocking the loop) until they have taken effect, rolling restarts,
//! and transactional reloads.
//!
//! A request that must wait — stop, start, restart, scale, reload — becomes a [`Waiter`] checked
//! after every turn of the loop; while it waits, the client gets a progress line whenever the set
//! of instances still pending changes. A rolling restart replaces one instance at a time and moves
//! on only once the replacement is up (`ready` for notify or timed readiness, `running` for
//! immediate), so at least N−1 instances serve throughout.
//!
//! A reload is computed as a [`ReloadPlan`] first; everything it needs (users, groups, output
//! files) is resolved before anything changes, so an error leaves the running configuration
//! untouched. Unchanged programs are not touched at all: same processes, same pids.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::json;

use super::{
    ExecState, OutputSpec, ProgramDef, Readiness, Supervisor, Work, new_slot, output::RotatingFile,
    spawn::Prepared, state,
};
use crate::control::server::{ConnId, Incoming};
use crate::control::{
    Command, DaemonInfo, ErrorKind, InstanceInfo, ProgramInfo, Reply, StatusReport,
};
use crate::error::{Error, Result};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Goal {
    /// Every instance up (ready, or running when readiness is immediate).
    Up,
    /// Every instance down.
    Down,
    /// What a reload asked for: like `Up`, except that instances stopped by hand stay down.
    Applied,
}

pub(super) struct Waiter {
    conn: ConnId,
    /// The request, as logged when it failed (`None`: not logged).
    what: Option<String>,
    programs: Vec<usize>,
    goal: Goal,
    result: serde_json::Value,
    last_progress: String,
}

pub(super) struct Rollout {
    program: usize,
    pending: VecDeque<usize>,
    current: Option<usize>,
    /// Leave instances stopped by hand alone (a reload), instead of starting them again (an
    /// operator's `restart`).
    keep_stopped: bool,
}

/// Whether an instance counts as serving.
fn serving(state: &state::State, readiness: Readiness) -> bool {
    match state {
        state::State::Ready { .. } => true,
        state::State::Running { .. } => readiness == Readiness::Immediate,
        _ => false,
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
    /// Handles what a control connection sent.
    pub(super) fn handle_control(&mut self, incoming: Vec<Incoming>) {
        for Incoming {
            conn,
            peer,
            request: req,
        } in incoming
        {
            log::debug!(
                "control: uid {} pid {}: {:?}",
                peer.uid,
                peer.pid,
                req.command
            );
            // A write is logged when asked and, if it fails, again with the reason: an operator
            // reading the log must see that `scale web 20000` was refused, and why. A reload
            // logs its own outcome; a status that fails changes nothing and is not logged.
            let mut what = None;
            if req.command.writes() {
                let asked = format!(
                    "{} by uid {} (pid {})",
                    describe(&req.command),
                    peer.uid,
                    peer.pid
                );
                log::info!("control: {asked}");
                if !matches!(req.command, Command::Reload { .. }) {
                    what = Some(asked);
                }
            }
            self.handle_command(conn, what, req.command);
        }
    }

    /// Sends the final `reply` to a request; a failure is logged with its reason when `what`
    /// names the request.
    fn reply(&mut self, conn: ConnId, what: Option<&str>, reply: Reply) {
        log_refusal(what, &reply);
        if let Some(c) = self.control.as_mut() {
            c.reply(conn, &reply, self.poll.registry());
        }
    }

    fn programs_named(&self, names: &[String]) -> std::result::Result<Vec<usize>, String> {
        if names.is_empty() {
            return Ok(self.live_programs());
        }
        let mut v = Vec::new();
        for n in names {
            match self.find(n) {
                Ok(p) => v.push(p),
                Err(_) => return Err(format!("no program named {n:?}")),
            }
        }
        Ok(v)
    }

    pub(super) fn live_programs(&self) -> Vec<usize> {
        (0..self.programs.len())
            .filter(|&p| !self.programs[p].removed)
            .collect()
    }

    fn handle_command(&mut self, conn: ConnId, what: Option<String>, command: Command) {
        let what = what.as_deref();
        if self.shutdown.is_some() && command.writes() {
            // A program started now would outlive the reverse-order stop already past it.
            self.reply(
                conn,
                what,
                Reply::failed(ErrorKind::Busy, "warden is shutting down"),
            );
            return;
        }
        match command {
            Command::Status { programs } => match self.programs_named(&programs) {
                Ok(ps) => {
                    let report = self.status_report(&ps);
                    self.reply(
                        conn,
                        what,
                        Reply::done(serde_json::to_value(report).unwrap_or_default()),
                    );
                }
                Err(e) => self.reply(conn, what, Reply::failed(ErrorKind::NoSuchProgram, e)),
            },
            Command::Start { programs }
            | Command::Stop { programs }
            | Command::Restart { programs }
                if programs.is_empty() =>
            {
                self.reply(
                    conn,
                    what,
                    Reply::failed(ErrorKind::BadRequest, "name at least one program"),
                )
            }
            Command::Start { programs } => match self.programs_named(&programs) {
                Ok(ps) => {
                    for &p in &ps {
                        let name = self.programs[p].def.name.clone();
                        let _ = self.start_program(&name);
                    }
                    self.wait(conn, what, ps, Goal::Up, json!({ "started": programs }));
                }
                Err(e) => self.reply(conn, what, Reply::failed(ErrorKind::NoSuchProgram, e)),
            },
            Command::Stop { programs } => match self.programs_named(&programs) {
                Ok(ps) => {
                    for &p in &ps {
                        // A stop beats a rolling restart in progress: the rollout would start
                        // the instances it has not reached yet again.
                        if self.rollouts.iter().any(|r| r.program == p) {
                            log::info!(
                                "{}: rolling restart cancelled by stop",
                                self.programs[p].def.name
                            );
                            self.rollouts.retain(|r| r.program != p);
                        }
                        let name = self.programs[p].def.name.clone();
                        let _ = self.stop_program(&name);
                    }
                    self.wait(conn, what, ps, Goal::Down, json!({ "stopped": programs }));
                }
                Err(e) => self.reply(conn, what, Reply::failed(ErrorKind::NoSuchProgram, e)),
            },
            Command::Restart { programs } => match self.programs_named(&programs) {
                Ok(ps) => {
                    for &p in &ps {
                        self.begin_rollout(p, false);
                    }
                    self.wait(conn, what, ps, Goal::Up, json!({ "restarted": programs }));
                }
                Err(e) => self.reply(conn, what, Reply::failed(ErrorKind::NoSuchProgram, e)),
            },
            Command::Scale { program, instances } => match self.scale(&program, instances) {
                Ok(()) => {
                    let p = self.find(&program).expect("just scaled");
                    self.wait(
                        conn,
                        what,
                        vec![p],
                        Goal::Up,
                        json!({ "program": program, "instances": instances }),
                    );
                }
                // `scale` fails for an unknown name or a count beyond the limit (a bad request).
                Err(e) => {
                    let kind = match self.find(&program) {
                        Err(_) => ErrorKind::NoSuchProgram,
                        Ok(_) => ErrorKind::BadRequest,
                    };
                    self.reply(conn, what, Reply::failed(kind, e.to_string()))
                }
            },
            Command::Reload { dry_run } => match self.reload(dry_run) {
                Ok((plan, touched)) => {
                    let result = serde_json::to_value(&plan).unwrap_or_default();
                    if dry_run || touched.is_empty() {
                        self.reply(conn, what, Reply::done(result));
                    } else {
                        self.wait(conn, what, touched, Goal::Applied, result);
                    }
                }
                Err((kind, e)) => self.reply(conn, what, Reply::failed(kind, e)),
            },
            Command::ReopenLogs => match self.reopen_logs() {
                Ok(()) => self.reply(conn, what, Reply::done(json!({ "reopened": true }))),
                Err(errors) => {
                    let denied = errors.iter().any(Error::is_permission_denied);
                    let kind = if denied {
                        ErrorKind::IoDenied
                    } else {
                        ErrorKind::Io
                    };
                    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    self.reply(conn, what, Reply::failed(kind, text.join("\n")));
                }
            },
        }
    }

    fn wait(
        &mut self,
        conn: ConnId,
        what: Option<&str>,
        programs: Vec<usize>,
        goal: Goal,
        result: serde_json::Value,
    ) {
        self.waiters.push(Waiter {
            conn,
            what: what.map(str::to_string),
            programs,
            goal,
            result,
            last_progress: String::new(),
        });
        self.check_waiters();
    }

    /// Answers the waiters whose goal is reached, and reports progress to the others.
    pub(super) fn check_waiters(&mut self) {
        let mut waiters = std::mem::take(&mut self.waiters);
        waiters.retain_mut(|w| {
            if !self.control.as_ref().is_some_and(|c| c.is_open(w.conn)) {
                return false;
            }
            if self.control.as_ref().is_some_and(|c| c.peer_gone(w.conn)) {
                // The client gave up (its timeout) or closed: stop reporting to it.
                if let Some(c) = self.control.as_mut() {
                    c.close(w.conn, self.poll.registry());
                }
                return false;
            }
            let mut pending = Vec::new();
            let mut failed = Vec::new();
            let up = matches!(w.goal, Goal::Up | Goal::Applied);
            for &p in &w.programs {
                let prog = &self.programs[p];
                let rolling = self.rollouts.iter().any(|r| r.program == p);
                for s in &prog.slots {
                    let tag = format!("{}[{}]", prog.def.name, s.index);
                    let st = &s.inst.state;
                    match w.goal {
                        _ if up && s.retiring => {
                            pending.push(format!("{tag} ({}, retiring)", st.name()))
                        }
                        // Stopped by hand, and a reload keeps it so.
                        Goal::Applied if s.inst.manual_stop => {}
                        _ if up && matches!(st, state::State::Fatal) => {
                            failed.push(format!("{tag} is fatal"))
                        }
                        _ if up && matches!(st, state::State::Stopped) => {
                            failed.push(format!("{tag} is stopped"))
                        }
                        _ if up && matches!(&s.exec, ExecState::Failed(_)) => {
                            if let ExecState::Failed(why) = &s.exec {
                                failed.push(format!("{tag}: {why}"));
                            }
                        }
                        _ if up && matches!(st, state::State::Exited) => {
                            failed.push(format!("{tag} exited"))
                        }
                        _ if up && !serving(st, prog.def.policy.readiness) => {
                            pending.push(format!("{tag} ({})", st.name()))
                        }
                        _ if up && s.exec == ExecState::Pending => {
                            pending.push(format!("{tag} (exec)"))
                        }
                        Goal::Down if st.is_up() || matches!(st, state::State::Spawning) => {
                            pending.push(format!("{tag} ({})", st.name()))
                        }
                        _ => {}
                    }
                }
                if up && rolling && pending.is_empty() {
                    pending.push(format!("{} (rolling restart)", prog.def.name));
                }
            }
            let reply = if !failed.is_empty() && pending.is_empty() {
                Some(Reply::failed(ErrorKind::Failed, failed.join("; ")))
            } else if pending.is_empty() {
                Some(Reply::done(w.result.clone()))
            } else {
                None
            };
            if let Some(r) = reply {
                log_refusal(w.what.as_deref(), &r);
                if let Some(c) = self.control.as_mut() {
                    c.reply(w.conn, &r, self.poll.registry());
                }
                return false;
            }
            let text = format!("waiting for {}", pending.join(", "));
            if text != w.last_progress {
                if let Some(c) = self.control.as_mut() {
                    c.progress(w.conn, &text, self.poll.registry());
                }
                w.last_progress = text;
            }
            true
        });
        waiters.append(&mut self.waiters);
        self.waiters = waiters;
    }

    /// Starts (or restarts from the top) a rolling restart of program `p`. With `keep_stopped`
    /// (a reload), instances stopped by hand are left down; an operator's `restart` starts them.
    pub(super) fn begin_rollout(&mut self, p: usize, keep_stopped: bool) {
        self.rollouts.retain(|r| r.program != p);
        let pending: VecDeque<usize> = self.programs[p]
            .slots
            .iter()
            .filter(|s| !s.retiring)
            .map(|s| s.index)
            .collect();
        log::info!(
            "{}: rolling restart of {} instance(s)",
            self.programs[p].def.name,
            pending.len()
        );
        self.rollouts.push(Rollout {
            program: p,
            pending,
            current: None,
            keep_stopped,
        });
        self.advance_rollouts();
    }

    /// Moves every rolling restart forward: the next instance is restarted only once the
    /// previous replacement serves.
    pub(super) fn advance_rollouts(&mut self) {
        let mut rollouts = std::mem::take(&mut self.rollouts);
        rollouts.retain_mut(|r| loop {
            let p = r.program;
            if let Some(index) = r.current {
                let Some(pos) = self.slot_pos(p, index) else {
                    r.current = None;
                    continue;
                };
                let prog = &self.programs[p];
                let slot = &prog.slots[pos];
                let st = &slot.inst.state;
                if slot.retiring {
                    // Scaled away while being replaced: nothing left to wait for.
                    r.current = None;
                    continue;
                }
                if let ExecState::Failed(why) = &slot.exec {
                    log::error!("{}[{index}]: rolling restart stopped: {why}", prog.def.name);
                    return false;
                }
                if serving(st, prog.def.policy.readiness) && slot.exec == ExecState::Done {
                    r.current = None;
                } else if matches!(
                    st,
                    state::State::Fatal | state::State::Exited | state::State::Stopped
                ) {
                    log::error!("{}[{index}]: rolling restart stopped: the instance did not come back ({})", prog.def.name, st.name());
                    return false;
                } else {
                    return true;
                }
            }
            match r.pending.pop_front() {
                Some(index) => {
                    let Some(pos) = self.slot_pos(p, index) else {
                        continue;
                    };
                    let slot = &self.programs[p].slots[pos];
                    // A slot scaled away since the rollout began is stopping for good: a
                    // `Restart` would bring it back (and keep `scale` waiting for ever).
                    if slot.retiring {
                        continue;
                    }
                    if r.keep_stopped && slot.inst.manual_stop {
                        log::info!(
                            "{}[{index}]: stopped by hand; stays stopped (new settings apply at its next start)",
                            self.programs[p].def.name
                        );
                        continue;
                    }
                    self.apply(p, pos, state::Event::Restart);
                    r.current = Some(index);
                }
                None => {
                    log::info!("{}: rolling restart done", self.programs[p].def.name);
                    return false;
                }
            }
        });
        rollouts.append(&mut self.rollouts);
        self.rollouts = rollouts;
    }

    /// The `status` result for programs `ps`.
    pub(super) fn status_report(&self, ps: &[usize]) -> StatusReport {
        let names: Vec<&str> = ps
            .iter()
            .map(|&p| self.programs[p].def.name.as_str())
            .collect();
        StatusReport {
            daemon: DaemonInfo {
                running: DaemonInfo::answered(),
                state: DaemonInfo::running_state(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_secs: self.started_at.elapsed().as_secs_f64(),
                config: self.config_path.clone(),
            },
            instances: self
                .status()
                .into_iter()
                .filter(|s| names.contains(&s.program.as_str()))
                .map(|s| InstanceInfo {
                    program: s.program,
                    index: s.index,
                    pid: s.pid,
                    state: s.state.to_string(),
                    uptime_secs: s.uptime.map(|d| d.as_secs_f64()),
                    restarts: s.restarts,
                    last_exit: s.last_exit.map(Into::into),
                    status: s.status_text,
                })
                .collect(),
            // A program scaled to 0 has no instance to show, but it is there all the same.
            programs: ps
                .iter()
                .map(|&p| ProgramInfo {
                    program: self.programs[p].def.name.clone(),
                    instances: self.programs[p].def.instances,
                    file: self.programs[p]
                        .def
                        .source
                        .as_ref()
                        .map(|f| f.display().to_string()),
                })
                .collect(),
        }
    }

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

    /// Adds a program whose resources were already resolved, starting it if the loop runs.
    pub(super) fn add_prepared(
        &mut self,
        def: ProgramDef,
        prepared: Option<Prepared>,
        files: [Option<RotatingFile>; 2],
    ) {
        let slots = (0..def.instances as usize).map(new_slot).collect();
        self.programs.push(super::Program {
            def,
            prepared,
            slots,
            files,
            removed: false,
        });
        if self.started && self.shutdown.is_none() {
            let p = self.programs.len() - 1;
            for i in 0..self.programs[p].slots.len() {
                self.apply(p, i, state::Event::Start);
            }
        }
    }

    /// Drops the instances of removed programs once they are down.
    pub(super) fn sweep_removed(&mut self) {
        for prog in self.programs.iter_mut().filter(|p| p.removed) {
            prog.slots
                .retain(|s| s.inst.state.is_up() || matches!(s.inst.state, state::State::Spawning));
            if prog.slots.is_empty() {
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

/// Logs a failed `reply` to the request `what` (when named), with the daemon's reason.
fn log_refusal(what: Option<&str>, reply: &Reply) {
    if let (Some(what), Reply::Failed { error, .. }) = (what, reply) {
        log::warn!("control: {what} failed: {}", error.replace('\n', "; "));
    }
}

fn describe(c: &Command) -> String {
    match c {
        Command::Status { .. } => "status".into(),
        Command::Start { programs } => format!("start {}", programs.join(" ")),
        Command::Stop { programs } => format!("stop {}", programs.join(" ")),
        Command::Restart { programs } => format!("restart {}", programs.join(" ")),
        Command::Scale { program, instances } => format!("scale {program} {instances}"),
        Command::Reload { dry_run: true } => "reload --dry-run".into(),
        Command::Reload { dry_run: false } => "reload".into(),
        Command::ReopenLogs => "reopen-logs".into(),
    }
}

pub(super) fn monotonic_usec() -> u128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u128 * 1_000_000 + t.tv_nsec() as u128 / 1_000)
        .unwrap_or(0)
}
