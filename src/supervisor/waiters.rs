//! Requests waiting until they have taken effect: a [`Waiter`] per request, checked after
//! every turn of the loop, never blocking it.
//!
//! While it waits, the client gets a progress line whenever the set of instances still pending
//! changes; once nothing is pending it gets its final reply (done, or failed with the instances
//! that cannot come up). A client that gave up (its timeout) or closed is dropped unanswered.
//! This file must not change any instance: it only watches.

use super::commands::log_refusal;
use super::snapshot::{InstanceView, ProgramView, serving};
use super::table::ProgramId;
use super::{ExecState, Supervisor};
use crate::control::server::ConnId;
use crate::control::{ErrorKind, Reply};
use crate::lifecycle::State;

/// What a waiting request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Goal {
    /// Every instance up (ready, or running when readiness is immediate).
    Up,
    /// Every instance down.
    Down,
    /// What a reload asked for: like `Up`, except that instances stopped by hand stay down.
    Applied,
}

/// A request waiting until it has taken effect.
#[derive(Debug)]
pub(super) struct Waiter {
    conn: ConnId,
    /// The request, as logged when it failed (`None`: not logged).
    what: Option<String>,
    programs: Vec<ProgramId>,
    goal: Goal,
    /// The reply's result once the goal is met.
    result: serde_json::Value,
    /// The progress line sent last.
    last_progress: String,
    /// Rollbacks numbered above this fail it (see [`Waiter::since`]).
    since: u64,
    /// Why it is answered at once: a `Down` goal one of whose programs another request
    /// started again ([`Waiter::started_again`]).
    superseded: Option<String>,
}

/// Where a waiter's client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// Connected and listening.
    Open,
    /// It gave up (its timeout) or closed its end: the connection is to be closed.
    Gone,
    /// The connection is closed already.
    Closed,
}

/// How far a goal is reached (see [`evaluate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Every instance is where the goal wants it.
    Met,
    /// Nothing is pending, but some instances cannot get there: why, `; `-separated.
    Failed(String),
    /// Some instances are on their way: the progress line (`waiting for web[0] (starting)`).
    Pending(String),
}

/// What to do for a waiter after a turn of the loop (see [`Waiter::check`]).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    /// Forget it: its connection is closed.
    Forget,
    /// Close its connection and forget it, unanswered.
    Close,
    /// Send the final reply and forget it.
    Answer(Reply),
    /// Send this progress line and keep waiting.
    Progress(String),
    /// Keep waiting, silently: nothing changed.
    Keep,
}

/// Where one instance stands with respect to a goal.
enum Standing {
    Met,
    Pending(String),
    Failed(String),
}

/// How far `goal` is reached for `programs`, with the progress and error texts the client sees.
pub(super) fn evaluate(goal: Goal, programs: &[ProgramView<'_>]) -> Verdict {
    let mut pending = Vec::new();
    let mut failed = Vec::new();
    for program in programs {
        for instance in &program.instances {
            match standing(goal, program, instance) {
                Standing::Met => {}
                Standing::Pending(why) => pending.push(why),
                Standing::Failed(why) => failed.push(why),
            }
        }
        if goal != Goal::Down && program.rolling && pending.is_empty() {
            pending.push(format!("{} (rolling restart)", program.name));
        }
    }
    match (pending.is_empty(), failed.is_empty()) {
        (false, _) => Verdict::Pending(format!("waiting for {}", pending.join(", "))),
        (true, false) => Verdict::Failed(failed.join("; ")),
        (true, true) => Verdict::Met,
    }
}

/// The verdict for a request waiting on `programs` since rollback `since`, if one of them was
/// rolled back after it: pending while the rollback runs, then failed with why.
fn rolled_back(programs: &[ProgramView<'_>], since: u64) -> Option<Verdict> {
    let program = programs.iter().find(|p| p.rolled_back.0 > since)?;
    Some(if program.rolling {
        Verdict::Pending(format!("waiting for {} (rolling back)", program.name))
    } else {
        let why = program.rolled_back.1.unwrap_or("rolled back");
        Verdict::Failed(why.to_string())
    })
}

/// Where `instance` of `program` stands with respect to `goal`.
fn standing(goal: Goal, program: &ProgramView<'_>, instance: &InstanceView<'_>) -> Standing {
    let tag = format!("{}[{}]", program.name, instance.index);
    let state = instance.state;
    match goal {
        Goal::Down if state.is_up() || *state == State::Spawning => {
            Standing::Pending(format!("{tag} ({})", state.name()))
        }
        Goal::Down => Standing::Met,
        _ if instance.retiring => Standing::Pending(format!("{tag} ({}, retiring)", state.name())),
        // Stopped by hand, and a reload keeps it so.
        Goal::Applied if instance.manual_stop => Standing::Met,
        // A reload applies edges to future starts; it does not wait for them.
        Goal::Applied if instance.held => Standing::Met,
        _ if instance.held => Standing::Pending(format!("{tag} (waiting)")),
        _ => standing_up(program, instance, tag),
    }
}

/// Where `instance` (tagged `tag`) stands with respect to being up and serving.
fn standing_up(program: &ProgramView<'_>, instance: &InstanceView<'_>, tag: String) -> Standing {
    let state = instance.state;
    match (state, instance.exec) {
        // Why, where it is known: the exec that failed, or the last exit.
        (State::Fatal, ExecState::Failed(why)) => {
            Standing::Failed(format!("{tag} is fatal: {why}"))
        }
        (State::Fatal, _) => Standing::Failed(match instance.last_exit {
            Some(exit) => format!("{tag} is fatal (last exit: {exit})"),
            None => format!("{tag} is fatal"),
        }),
        (State::Stopped, _) => Standing::Failed(format!("{tag} is stopped")),
        (_, ExecState::Failed(why)) => Standing::Failed(format!("{tag}: {why}")),
        (State::Exited, _) => Standing::Failed(format!("{tag} exited")),
        _ if !serving(state, program.readiness) => {
            Standing::Pending(format!("{tag} ({})", state.name()))
        }
        (_, ExecState::Pending) => Standing::Pending(format!("{tag} (exec)")),
        _ => Standing::Met,
    }
}

impl Waiter {
    /// A request from `conn` (logged as `what` if it fails) waiting for `goal` on `programs`,
    /// answered with `result` once it is met.
    pub fn new(
        conn: ConnId,
        what: Option<&str>,
        programs: Vec<ProgramId>,
        goal: Goal,
        result: serde_json::Value,
    ) -> Waiter {
        Waiter {
            conn,
            what: what.map(str::to_string),
            programs,
            goal,
            result,
            last_progress: String::new(),
            since: u64::MAX,
            superseded: None,
        }
    }

    /// Another request started program `p` (named `name`) again: a wait for it to go down
    /// will not end, and fails at its next check (`web was started again by another request`).
    pub fn started_again(&mut self, p: ProgramId, name: &str) {
        if self.goal == Goal::Down && self.programs.contains(&p) && self.superseded.is_none() {
            self.superseded = Some(format!("{name} was started again by another request"));
        }
    }

    /// Fails once one of its programs is rolled back by a rollout numbered above `since`
    /// (answered once the rollback is over): `rolled back web: web[0] exited with status 1
    /// after 0.4s`.
    pub fn since(mut self, since: u64) -> Waiter {
        self.since = since;
        self
    }

    /// What to do now that its client stands at `link` and its programs look like `programs`:
    /// a progress line goes out only when it differs from the last one sent.
    pub fn check(&mut self, link: Link, programs: &[ProgramView<'_>]) -> Decision {
        match link {
            Link::Closed => return Decision::Forget,
            Link::Gone => return Decision::Close,
            Link::Open => {}
        }
        if let Some(why) = &self.superseded {
            return Decision::Answer(Reply::failed(ErrorKind::Failed, why.clone()));
        }
        let verdict = match rolled_back(programs, self.since) {
            Some(verdict) => verdict,
            None => evaluate(self.goal, programs),
        };
        match verdict {
            Verdict::Met => Decision::Answer(Reply::done(self.result.clone())),
            Verdict::Failed(why) => Decision::Answer(Reply::failed(ErrorKind::Failed, why)),
            Verdict::Pending(line) if line != self.last_progress => {
                self.last_progress.clone_from(&line);
                Decision::Progress(line)
            }
            Verdict::Pending(_) => Decision::Keep,
        }
    }
}

impl Supervisor {
    /// A request started `programs` again: the requests waiting for them to stop are answered
    /// that they were (at the next check of the waiters).
    pub(super) fn started_again(&mut self, programs: &[ProgramId]) {
        for &p in programs {
            let name = self.table[p].def.name.clone();
            for w in &mut self.plane.waiters {
                w.started_again(p, &name);
            }
        }
    }

    /// Answers the waiters whose goal is reached, and reports progress to the others.
    pub(super) fn check_waiters(&mut self) {
        let mut waiters = std::mem::take(&mut self.plane.waiters);
        waiters.retain_mut(|w| {
            let link = self.link(w.conn);
            let programs: Vec<ProgramView<'_>> =
                w.programs.iter().map(|&p| self.program_view(p)).collect();
            let decision = w.check(link, &programs);
            drop(programs);
            self.carry_out_decision(w, decision)
        });
        waiters.append(&mut self.plane.waiters);
        self.plane.waiters = waiters;
    }

    /// Where the client on `conn` stands.
    fn link(&self, conn: ConnId) -> Link {
        match &self.plane.server {
            Some(c) if c.is_open(conn) && c.peer_gone(conn) => Link::Gone,
            Some(c) if c.is_open(conn) => Link::Open,
            _ => Link::Closed,
        }
    }

    /// Carries out `decision` for waiter `w`; whether it keeps waiting.
    fn carry_out_decision(&mut self, w: &Waiter, decision: Decision) -> bool {
        let registry = self.poll.registry();
        match decision {
            Decision::Forget => false,
            Decision::Close => {
                if let Some(c) = self.plane.server.as_mut() {
                    c.close(w.conn, registry);
                }
                false
            }
            Decision::Answer(reply) => {
                log_refusal(w.what.as_deref(), &reply);
                if let Some(c) = self.plane.server.as_mut() {
                    c.reply(w.conn, &reply, registry);
                }
                false
            }
            Decision::Progress(line) => {
                if let Some(c) = self.plane.server.as_mut() {
                    c.progress(w.conn, &line, registry);
                }
                true
            }
            Decision::Keep => true,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Waiter goals' specification: hand-built snapshots in, the client's texts out.

    use serde_json::json;

    use super::*;
    use crate::lifecycle::AfterStop;
    use crate::supervisor::Readiness;
    use crate::supervisor::snapshot::fake::{self, Program};

    fn verdict(goal: Goal, programs: &[&Program]) -> Verdict {
        let views: Vec<ProgramView<'_>> = programs.iter().map(|p| p.view()).collect();
        evaluate(goal, &views)
    }

    fn pending(line: &str) -> Verdict {
        Verdict::Pending(line.to_string())
    }

    fn failed(why: &str) -> Verdict {
        Verdict::Failed(why.to_string())
    }

    #[test]
    fn up_is_met_when_every_instance_is_ready() {
        let web = Program::new("web", 2, fake::ready());
        assert_eq!(verdict(Goal::Up, &[&web]), Verdict::Met);
    }

    #[test]
    fn up_waits_for_starting_instances_and_names_their_state() {
        let mut web = Program::new("web", 2, fake::ready());
        web.at(1).state = fake::starting();
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            pending("waiting for web[1] (starting)")
        );
    }

    #[test]
    fn up_waits_for_the_exec_of_a_serving_instance() {
        let mut web = Program::new("web", 1, fake::ready());
        web.at(0).exec = ExecState::Pending;
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            pending("waiting for web[0] (exec)")
        );
    }

    #[test]
    fn running_is_up_only_with_immediate_readiness() {
        let mut web = Program::new("web", 1, fake::running());
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            pending("waiting for web[0] (running)")
        );
        web.readiness = Readiness::Immediate;
        assert_eq!(verdict(Goal::Up, &[&web]), Verdict::Met);
    }

    #[test]
    fn a_fatal_instance_fails_up() {
        let mut web = Program::new("web", 2, fake::ready());
        web.at(0).state = State::Fatal;
        assert_eq!(verdict(Goal::Up, &[&web]), failed("web[0] is fatal"));
        // With why, where it is known.
        web.at(0).last_exit = Some(crate::policy::ExitStatus::Code(127));
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            failed("web[0] is fatal (last exit: exit code 127)")
        );
        web.at(0).exec = ExecState::Failed("cannot execute /nope: No such file".into());
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            failed("web[0] is fatal: cannot execute /nope: No such file")
        );
    }

    #[test]
    fn a_stopped_instance_fails_up() {
        let mut web = Program::new("web", 1, State::Stopped);
        web.at(0).manual_stop = true;
        assert_eq!(verdict(Goal::Up, &[&web]), failed("web[0] is stopped"));
    }

    #[test]
    fn an_exited_instance_fails_up() {
        let web = Program::new("web", 1, State::Exited);
        assert_eq!(verdict(Goal::Up, &[&web]), failed("web[0] exited"));
    }

    #[test]
    fn a_failed_exec_fails_up_with_its_reason() {
        let mut web = Program::new("web", 1, fake::starting());
        web.at(0).exec = ExecState::Failed("exec ./web: No such file or directory".into());
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            failed("web[0]: exec ./web: No such file or directory")
        );
    }

    #[test]
    fn failures_are_reported_only_once_nothing_is_pending() {
        let mut web = Program::new("web", 3, fake::ready());
        web.at(0).state = State::Fatal;
        web.at(1).state = fake::starting();
        web.at(2).state = State::Exited;
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            pending("waiting for web[1] (starting)")
        );
        web.at(1).state = fake::ready();
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            failed("web[0] is fatal; web[2] exited")
        );
    }

    #[test]
    fn a_retiring_instance_is_waited_for_until_it_is_gone() {
        let mut web = Program::new("web", 2, fake::ready());
        web.at(1).retiring = true;
        web.at(1).state = fake::stopping(AfterStop::Stay);
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            pending("waiting for web[1] (stopping, retiring)")
        );
    }

    #[test]
    fn a_rolling_restart_is_waited_for_after_its_instances() {
        let mut web = Program::new("web", 2, fake::ready());
        web.rolling = true;
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            pending("waiting for web (rolling restart)")
        );
        web.at(0).state = fake::restarting();
        assert_eq!(
            verdict(Goal::Up, &[&web]),
            pending("waiting for web[0] (stopping)")
        );
    }

    #[test]
    fn pending_instances_of_several_programs_share_one_line() {
        let mut web = Program::new("web", 1, fake::starting());
        let mut api = Program::new("api", 1, fake::ready());
        api.rolling = true;
        web.at(0).state = fake::starting();
        assert_eq!(
            verdict(Goal::Up, &[&web, &api]),
            pending("waiting for web[0] (starting)")
        );
        web.at(0).state = fake::ready();
        assert_eq!(
            verdict(Goal::Up, &[&web, &api]),
            pending("waiting for api (rolling restart)")
        );
    }

    #[test]
    fn applied_leaves_instances_stopped_by_hand_alone() {
        let mut web = Program::new("web", 2, fake::ready());
        web.at(0).state = State::Stopped;
        web.at(0).manual_stop = true;
        assert_eq!(verdict(Goal::Applied, &[&web]), Verdict::Met);
        assert_eq!(verdict(Goal::Up, &[&web]), failed("web[0] is stopped"));
    }

    #[test]
    fn down_waits_for_live_and_spawning_instances() {
        let mut web = Program::new("web", 3, State::Stopped);
        web.at(0).state = fake::stopping(AfterStop::Stay);
        web.at(1).state = State::Spawning;
        assert_eq!(
            verdict(Goal::Down, &[&web]),
            pending("waiting for web[0] (stopping), web[1] (starting)")
        );
    }

    #[test]
    fn down_is_met_by_any_state_without_a_process() {
        let mut web = Program::new("web", 4, State::Stopped);
        web.at(1).state = State::Exited;
        web.at(2).state = State::Fatal;
        web.at(3).state = State::Backoff {
            until: std::time::Instant::now(),
        };
        web.rolling = true;
        assert_eq!(verdict(Goal::Down, &[&web]), Verdict::Met);
    }

    fn waiter(goal: Goal) -> Waiter {
        Waiter::new(
            7,
            Some("start web"),
            vec![ProgramId(0)],
            goal,
            json!({ "started": ["web"] }),
        )
    }

    #[test]
    fn a_met_goal_is_answered_with_the_result() {
        let web = Program::new("web", 1, fake::ready());
        let decision = waiter(Goal::Up).check(Link::Open, &[web.view()]);
        let done = Reply::done(json!({ "started": ["web"] }));
        assert_eq!(decision, Decision::Answer(done));
    }

    #[test]
    fn a_failed_goal_is_answered_with_the_reasons() {
        let web = Program::new("web", 1, State::Fatal);
        let decision = waiter(Goal::Up).check(Link::Open, &[web.view()]);
        let reply = Reply::failed(ErrorKind::Failed, "web[0] is fatal");
        assert_eq!(decision, Decision::Answer(reply));
    }

    #[test]
    fn progress_is_sent_only_when_it_changes() {
        let mut web = Program::new("web", 2, fake::starting());
        let mut w = waiter(Goal::Up);
        let line = "waiting for web[0] (starting), web[1] (starting)";
        assert_eq!(
            w.check(Link::Open, &[web.view()]),
            Decision::Progress(line.into())
        );
        assert_eq!(w.check(Link::Open, &[web.view()]), Decision::Keep);
        web.at(0).state = fake::ready();
        let line = "waiting for web[1] (starting)";
        assert_eq!(
            w.check(Link::Open, &[web.view()]),
            Decision::Progress(line.into())
        );
    }

    #[test]
    fn a_stop_whose_program_is_started_again_fails_at_once_and_no_other_wait_does() {
        let mut web = Program::new("web", 1, fake::stopping(AfterStop::Restart));
        web.at(0).manual_stop = false;
        let mut stop = waiter(Goal::Down);
        let mut start = waiter(Goal::Up);
        let mut other = waiter(Goal::Down);
        for w in [&mut stop, &mut start] {
            w.started_again(ProgramId(0), "web");
        }
        other.started_again(ProgramId(1), "api");
        let reply = Reply::failed(
            ErrorKind::Failed,
            "web was started again by another request",
        );
        assert_eq!(
            stop.check(Link::Open, &[web.view()]),
            Decision::Answer(reply)
        );
        let line = "waiting for web[0] (stopping)";
        for w in [&mut start, &mut other] {
            assert_eq!(
                w.check(Link::Open, &[web.view()]),
                Decision::Progress(line.into())
            );
        }
        // A client that gave up is closed all the same.
        assert_eq!(stop.check(Link::Gone, &[web.view()]), Decision::Close);
    }

    #[test]
    fn a_client_that_timed_out_is_closed_unanswered() {
        let web = Program::new("web", 1, fake::ready());
        let decision = waiter(Goal::Up).check(Link::Gone, &[web.view()]);
        assert_eq!(decision, Decision::Close);
    }

    #[test]
    fn a_closed_connection_is_forgotten() {
        let web = Program::new("web", 1, fake::ready());
        let decision = waiter(Goal::Up).check(Link::Closed, &[web.view()]);
        assert_eq!(decision, Decision::Forget);
    }
}
