//! The supervisor's side of the control plane: carrying out requests that arrive on the control
//! socket, one method per command.
//!
//! A request that must wait — stop, start, restart, scale, reload — is handed to a waiter
//! ([`super::waiters`]) once the command has been set going; the others are answered at once.
//! Every write is logged when asked and, if it fails, again with the reason. This file decides
//! nothing about when a goal is met, how a rollout moves on or what a reload changes: it builds
//! requests into calls on the supervisor and replies.

use serde_json::json;

use super::Supervisor;
use super::table::ProgramId;
use super::waiters::{Goal, Waiter};
use crate::control::server::{ConnId, Incoming};
use crate::control::{Command, ErrorKind, Reply};
use crate::error::Error;

/// Who asked: the connection to answer, and the request as logged when it fails (`None`: a
/// failure is not logged).
#[derive(Debug, Clone, Copy)]
struct Caller<'a> {
    conn: ConnId,
    what: Option<&'a str>,
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
            let caller = Caller {
                conn,
                what: what.as_deref(),
            };
            self.handle_command(caller, req.command);
        }
    }

    /// Sends the final `reply` to `caller`; a failure is logged with its reason when the
    /// caller's request is named.
    fn reply(&mut self, caller: Caller<'_>, reply: Reply) {
        log_refusal(caller.what, &reply);
        if let Some(c) = self.plane.server.as_mut() {
            c.reply(caller.conn, &reply, self.poll.registry());
        }
    }

    /// Makes `caller` wait for `goal` on `programs`, answered with `result` once met.
    fn wait_for(
        &mut self,
        caller: Caller<'_>,
        programs: Vec<ProgramId>,
        goal: Goal,
        result: serde_json::Value,
    ) {
        let since = self.plane.rollbacks;
        self.wait_since(caller, programs, goal, result, since);
    }

    /// As [`Self::wait_for`], failing if one of `programs` is rolled back after the rollback
    /// numbered `since` (`ControlPlane::rollbacks`, read before the request changed anything).
    fn wait_since(
        &mut self,
        caller: Caller<'_>,
        programs: Vec<ProgramId>,
        goal: Goal,
        result: serde_json::Value,
        since: u64,
    ) {
        let waiter = Waiter::new(caller.conn, caller.what, programs, goal, result).since(since);
        self.plane.waiters.push(waiter);
        self.check_waiters();
    }

    /// The programs `names` (every live one when empty); an unknown name answers `caller`
    /// with `NoSuchProgram` and gives `None`.
    fn programs_named(&mut self, caller: Caller<'_>, names: &[String]) -> Option<Vec<ProgramId>> {
        if names.is_empty() {
            return Some(self.table.live_programs());
        }
        let mut v = Vec::new();
        for n in names {
            match self.table.find(n) {
                Ok(p) => v.push(p),
                Err(_) => {
                    let reply =
                        Reply::failed(ErrorKind::NoSuchProgram, format!("no program named {n:?}"));
                    self.reply(caller, reply);
                    return None;
                }
            }
        }
        Some(v)
    }

    fn handle_command(&mut self, caller: Caller<'_>, command: Command) {
        if self.shutdown.active() && command.writes() {
            // A program started now would outlive the reverse-order stop already past it.
            let reply = Reply::failed(ErrorKind::Busy, "warden is shutting down");
            self.reply(caller, reply);
            return;
        }
        match command {
            Command::Status { programs } => self.on_status(caller, &programs),
            Command::Upgrade => self.request_upgrade(Some(caller.conn)),
            Command::Start { programs }
            | Command::Stop { programs }
            | Command::Restart { programs }
                if programs.is_empty() =>
            {
                let reply = Reply::failed(ErrorKind::BadRequest, "name at least one program");
                self.reply(caller, reply);
            }
            Command::Start { programs } => self.on_start(caller, programs),
            Command::Stop { programs } => self.on_stop(caller, programs),
            Command::Restart { programs } => self.on_restart(caller, programs),
            Command::Scale { program, instances } => self.on_scale(caller, program, instances),
            Command::Reload { dry_run } => self.on_reload(caller, dry_run),
            Command::ReopenLogs => self.on_reopen_logs(caller),
            Command::Events => self.on_events(caller.conn),
        }
    }

    /// `status [PROG…]`: answered at once.
    fn on_status(&mut self, caller: Caller<'_>, programs: &[String]) {
        let Some(ps) = self.programs_named(caller, programs) else {
            return;
        };
        let report = self.status_report(&ps);
        let result = serde_json::to_value(report).unwrap_or_default();
        self.reply(caller, Reply::done(result));
    }

    /// `start PROG…` (and what they require): answered once every instance is up.
    fn on_start(&mut self, caller: Caller<'_>, programs: Vec<String>) {
        let Some(ps) = self.programs_named(caller, &programs) else {
            return;
        };
        for &p in &ps {
            let name = self.table[p].def.name.clone();
            let _ = self.start_program(&name);
        }
        // What they require is started too: a requirement that cannot come up fails the start.
        let ps = self.with_requirements(&ps);
        // A `stop` of them still waiting will not end: it is told so.
        self.started_again(&ps);
        self.wait_for(caller, ps, Goal::Up, json!({ "started": programs }));
    }

    /// `stop PROG…`: answered once every instance is down.
    fn on_stop(&mut self, caller: Caller<'_>, programs: Vec<String>) {
        let Some(ps) = self.programs_named(caller, &programs) else {
            return;
        };
        for &p in &ps {
            // A stop beats a rolling restart in progress: the rollout would start the instances
            // it has not reached yet again.
            if self.cancel_rollout(p) {
                let name = &self.table[p].def.name;
                log::info!("{name}: rolling restart cancelled by stop");
            }
            let name = self.table[p].def.name.clone();
            let _ = self.stop_program(&name);
        }
        self.wait_for(caller, ps, Goal::Down, json!({ "stopped": programs }));
    }

    /// `restart PROG…`: a rolling restart of each, answered once all are done.
    fn on_restart(&mut self, caller: Caller<'_>, programs: Vec<String>) {
        let Some(ps) = self.programs_named(caller, &programs) else {
            return;
        };
        let since = self.plane.rollbacks;
        for &p in &ps {
            self.begin_rollout(p, false, None);
        }
        let result = json!({ "restarted": programs });
        self.wait_since(caller, ps, Goal::Up, result, since);
    }

    /// `scale PROG N`: answered once the instances kept are up and the others gone.
    fn on_scale(&mut self, caller: Caller<'_>, program: String, instances: u32) {
        let before = self
            .table
            .find(&program)
            .map(|p| self.table[p].live_indices().len());
        match self.scale(&program, instances) {
            Ok(()) => {
                let p = self.table.find(&program).expect("just scaled");
                let result = json!({ "program": program, "instances": instances });
                // No new instance to wait for: those left are as they were (maybe `waiting`).
                if before.is_ok_and(|b| instances as usize <= b) {
                    return self.reply(caller, Reply::done(result));
                }
                self.wait_for(caller, vec![p], Goal::Up, result);
            }
            // `scale` fails for an unknown name or a count beyond the limit (a bad request).
            Err(e) => {
                let kind = match self.table.find(&program) {
                    Err(_) => ErrorKind::NoSuchProgram,
                    Ok(_) => ErrorKind::BadRequest,
                };
                self.reply(caller, Reply::failed(kind, e.to_string()));
            }
        }
    }

    /// `reload [--dry-run]`: answered with the plan, once it is applied.
    fn on_reload(&mut self, caller: Caller<'_>, dry_run: bool) {
        let since = self.plane.rollbacks;
        match self.reload(dry_run) {
            Ok((plan, touched)) => {
                let result = serde_json::to_value(&plan).unwrap_or_default();
                if dry_run || touched.is_empty() {
                    self.reply(caller, Reply::done(result));
                } else {
                    self.wait_since(caller, touched, Goal::Applied, result, since);
                }
            }
            Err((kind, e)) => self.reply(caller, Reply::failed(kind, e)),
        }
    }

    /// `reopen-logs`: answered at once, with every file that could not be reopened.
    fn on_reopen_logs(&mut self, caller: Caller<'_>) {
        match self.reopen_logs() {
            Ok(()) => self.reply(caller, Reply::done(json!({ "reopened": true }))),
            Err(errors) => {
                let kind = if errors.iter().any(Error::is_permission_denied) {
                    ErrorKind::IoDenied
                } else {
                    ErrorKind::Io
                };
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                self.reply(caller, Reply::failed(kind, text.join("\n")));
            }
        }
    }
}

/// Logs a failed `reply` to the request `what` (when named), with the daemon's reason.
pub(super) fn log_refusal(what: Option<&str>, reply: &Reply) {
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
        Command::Upgrade => "upgrade".into(),
        Command::Events => "events".into(),
    }
}
