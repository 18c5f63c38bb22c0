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
use super::waiters::Goal;
use crate::control::server::{ConnId, Incoming};
use crate::control::{Command, ErrorKind, Reply};
use crate::error::Error;

impl Supervisor {
    /// Handles what a control connection sent.
    pub(super) fn handle_control(&mut self, incoming: Vec<Incoming>) {
        for Incoming::Request(conn, peer, req) in incoming {
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
                        if self.cancel_rollout(p) {
                            log::info!(
                                "{}: rolling restart cancelled by stop",
                                self.programs[p].def.name
                            );
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
    }
}
