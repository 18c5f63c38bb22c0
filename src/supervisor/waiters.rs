//! Requests waiting until they have taken effect: a [`Waiter`] per request, checked after
//! every turn of the loop, never blocking it.
//!
//! While it waits, the client gets a progress line whenever the set of instances still pending
//! changes; once nothing is pending it gets its final reply (done, or failed with the instances
//! that cannot come up). A client that gave up (its timeout) or closed is dropped unanswered.
//! This file must not change any instance: it only watches.

use super::commands::log_refusal;
use super::rollout::serving;
use super::{ExecState, Supervisor, state};
use crate::control::server::ConnId;
use crate::control::{ErrorKind, Reply};

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

impl Supervisor {
    pub(super) fn wait(
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
}
