//! The loop's side of health checks: starting the checks that are due, driving their sockets
//! and output pipes, ending exec checks (by their exit, or by `SIGKILL` to their whole process
//! group at their timeout), and handing each verdict to the instance's state machine.
//!
//! It owns the checks under way ([`Checks`]) and each slot's [`Tracker`]; it changes an
//! instance only through [`Supervisor::apply`] with `HealthPassed` or `Unhealthy`. A result
//! that arrives for a process that is no longer the instance's (it was restarted meanwhile) is
//! dropped, and a check of an instance that stopped being checked is cancelled.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::probe::NetProbe;
use super::{Outcome, Target, Tracker, Verdict, checked};
use crate::control::events::What;
use crate::policy::{ExitStatus, Restart, fmt_duration};
use crate::supervisor::Supervisor;
use crate::supervisor::events::Event;
use crate::supervisor::sources::Source;
use crate::supervisor::spawn::{self, SpawnRequest, StdioPlan};
use crate::supervisor::table::{InstanceIndex, Owner, ProgramId, SlotPos};

/// The most output of an exec check that is kept (its end), for the error's last line.
const OUTPUT_TAIL: usize = 1024;

/// The checks under way, by token.
#[derive(Default)]
pub(crate) struct Checks {
    running: HashMap<Token, Running>,
    /// Exec checks' pids, until reaped.
    pids: HashMap<i32, Token>,
}

/// One check under way.
struct Running {
    owner: Owner,
    /// The instance's main pid when the check began: a result for another process is stale.
    instance_pid: i32,
    deadline: Instant,
    timeout: Duration,
    work: Work,
}

enum Work {
    Net(NetProbe),
    Exec(ExecCheck),
}

/// An exec check's process.
struct ExecCheck {
    pid: i32,
    /// Its argv\[0\], for errors.
    program: String,
    /// Its stdout and stderr; `None` once at end of file.
    output: Option<File>,
    /// The end of what it wrote.
    tail: Vec<u8>,
    /// Says whether its exec failed.
    report: OwnedFd,
}

impl Checks {
    /// The nearest check timeout.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.running.values().map(|r| r.deadline).min()
    }

    /// Whether no check runs.
    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Supervisor {
    /// Starts every check that is due, and cancels those of instances no longer checked.
    pub(in crate::supervisor) fn run_checks(&mut self, now: Instant) {
        self.cancel_stale_checks();
        for p in self.table.ids() {
            if self.table[p].checker.is_none() || self.shutdown.active() {
                continue;
            }
            for pos in self.table[p].positions() {
                let prog = &self.table[p];
                let slot = &prog[pos];
                let due = slot.health.as_ref().and_then(Tracker::due);
                if due.is_some_and(|d| d <= now)
                    && checked(&slot.inst.state, prog.def.policy.readiness)
                {
                    self.begin_check(p, pos, now);
                }
            }
        }
    }

    /// Every instance's checks start over (an upgrade's new image, or an image that runs on
    /// after its checks under way were cancelled for one).
    pub(in crate::supervisor) fn restart_all_health(&mut self, now: Instant) {
        for p in self.table.ids() {
            for pos in self.table[p].positions() {
                self.reset_health(p, pos, now);
            }
        }
    }

    /// A new process of instance `pos` (or none): its checks start over.
    pub(in crate::supervisor) fn reset_health(&mut self, p: ProgramId, pos: SlotPos, now: Instant) {
        let jitter = self.jitter.next_unit();
        let prog = &mut self.table[p];
        let spec = prog.checker.as_ref().map(|c| c.spec.clone());
        let slot = &mut prog[pos];
        slot.health = match (spec, slot.inst.state.pid()) {
            (Some(spec), Some(_)) => Some(Tracker::new(&spec, now, jitter)),
            _ => None,
        };
    }

    fn begin_check(&mut self, p: ProgramId, pos: SlotPos, now: Instant) {
        let slot = &mut self.table[p][pos];
        let (Some(tracker), Some(instance_pid)) = (slot.health.as_mut(), slot.inst.state.pid())
        else {
            return;
        };
        tracker.begin(now);
        let (owner, index) = ((p, slot.id), slot.index);
        let Some(checker) = self.table[p].checker.as_ref() else {
            return;
        };
        let timeout = checker.spec.timeout;
        let started = match &checker.target {
            Target::Exec(prepared) => {
                let prepared = prepared.clone();
                self.start_exec_check(owner, (index, instance_pid), &prepared)
            }
            target => NetProbe::start(target).map(Work::Net),
        };
        let mut work = match started {
            Ok(w) => w,
            Err(error) => return self.check_done(owner, instance_pid, Err(error)),
        };
        // As far as the socket allows now: a loopback connection is often made within the
        // connect call, so a TCP check usually ends here, without a wake-up of its own.
        if let Work::Net(probe) = &mut work
            && let Some(outcome) = probe.ready()
        {
            return self.check_done(owner, instance_pid, outcome);
        }
        let registry = self.poll.registry();
        let (fd, interest) = match &work {
            Work::Net(probe) => (probe.fd(), probe.interest()),
            Work::Exec(e) => match &e.output {
                Some(f) => (f.as_raw_fd(), Interest::READABLE),
                None => unreachable!("an exec check starts with its output pipe"),
            },
        };
        let token = match self.sources.add_with(registry, fd, Source::Check, interest) {
            Ok(t) => t,
            Err(e) => {
                if let Work::Exec(ex) = &work {
                    let _ = killpg(Pid::from_raw(ex.pid), Signal::SIGKILL);
                }
                return self.check_done(owner, instance_pid, Err(e.to_string()));
            }
        };
        if let Work::Exec(e) = &work {
            self.checks.pids.insert(e.pid, token);
        }
        let deadline = now + timeout;
        let running = Running {
            owner,
            instance_pid,
            deadline,
            timeout,
            work,
        };
        self.checks.running.insert(token, running);
    }

    /// Spawns an exec check for `owner`, in its own process group tracked like a worker's (so
    /// that it dies with warden too).
    fn start_exec_check(
        &mut self,
        owner: Owner,
        (index, instance_pid): (InstanceIndex, i32),
        prepared: &spawn::Prepared,
    ) -> std::result::Result<Work, String> {
        let (p, _) = owner;
        // The process `status` shows: the instance's `MAINPID=` once it gave one.
        let checked = (self.table.locate(owner))
            .and_then(|pos| self.table[p][pos].main_pid)
            .unwrap_or(instance_pid);
        let request = SpawnRequest {
            program: &self.table[p].def.name,
            index,
            sockets: &[],
            notify_socket: None,
            watchdog: None,
            stdout: StdioPlan::Pipe,
            stderr: StdioPlan::Pipe,
            checked_pid: Some(checked),
            // cgroup mode: in the instance's cgroup, so that what a check leaves behind (a
            // `setsid` child) is the instance's and is killed with it.
            cgroup_procs: self.groups.cgroup_procs(instance_pid),
            pid_namespace: None,
        };
        self.groups.ensure_guard(self.poll.registry());
        let started = spawn::spawn_check(prepared, &request).map_err(|e| e.to_string())?;
        self.groups.add(self.poll.registry(), started.pid, owner);
        let output = started.stdout.expect("a check's output pipe");
        let _ = nix::fcntl::fcntl(
            &output,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        Ok(Work::Exec(ExecCheck {
            pid: started.pid,
            program: prepared.program().to_string(),
            output: Some(output),
            tail: Vec::new(),
            report: started.exec_report.expect("an exec report"),
        }))
    }

    /// A check's socket or output pipe is ready.
    pub(in crate::supervisor) fn check_event(&mut self, token: Token) {
        let Some(running) = self.checks.running.get_mut(&token) else {
            return;
        };
        match &mut running.work {
            Work::Net(probe) => {
                let before = probe.interest();
                match probe.ready() {
                    Some(outcome) => self.end_check(token, outcome),
                    None if probe.interest() != before => {
                        let fd = probe.fd();
                        let interest = probe.interest();
                        let registry = self.poll.registry();
                        let _ = registry.reregister(&mut SourceFd(&fd), token, interest);
                    }
                    None => {}
                }
            }
            Work::Exec(e) => {
                if read_output(e)
                    && let Some(f) = e.output.take()
                {
                    self.sources
                        .remove(self.poll.registry(), token, f.as_raw_fd());
                }
            }
        }
    }

    /// `pid` was reaped: if it was an exec check, the check is over. Returns whether it was.
    pub(in crate::supervisor) fn check_exited(&mut self, pid: i32, status: ExitStatus) -> bool {
        let Some(token) = self.checks.pids.remove(&pid) else {
            return false;
        };
        // What is left of its process group (a helper it started) goes with it.
        if self.groups.has_members(self.poll.registry(), pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let Some(Running {
            work: Work::Exec(e),
            ..
        }) = self.checks.running.get_mut(&token)
        else {
            return true;
        };
        read_output(e);
        let outcome = exec_outcome(e, status);
        self.end_check(token, outcome);
        true
    }

    /// Fails every check past its timeout; an exec check's whole process group gets `SIGKILL`.
    pub(in crate::supervisor) fn expire_checks(&mut self, now: Instant) {
        let late: Vec<Token> = self
            .checks
            .running
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in late {
            let Some(r) = self.checks.running.get(&token) else {
                continue;
            };
            let after = fmt_duration(r.timeout);
            let error = match &r.work {
                Work::Net(probe) => format!("timed out after {after} {}", probe.waiting_for()),
                Work::Exec(e) => {
                    // Its leader is not reaped yet (the check would have ended), so the group
                    // id is still its own.
                    let _ = killpg(Pid::from_raw(e.pid), Signal::SIGKILL);
                    format!("timed out after {after}; process group killed")
                }
            };
            self.end_check(token, Err(error));
        }
    }

    /// Cancels every check under way (before `warden upgrade` hands the loop over): exec
    /// checks' process groups are killed, sockets closed; each instance checks again from its
    /// first check in the new image.
    pub(in crate::supervisor) fn cancel_all_checks(&mut self) {
        let all: Vec<Token> = self.checks.running.keys().copied().collect();
        for token in all {
            if let Some(Running {
                work: Work::Exec(e),
                ..
            }) = self.checks.running.get(&token)
            {
                let _ = killpg(Pid::from_raw(e.pid), Signal::SIGKILL);
            }
            self.forget_check(token);
        }
    }

    /// Cancels the checks of instances that are no longer checked (stopping, or restarted).
    fn cancel_stale_checks(&mut self) {
        if self.checks.is_empty() {
            return;
        }
        let stale: Vec<Token> = self
            .checks
            .running
            .iter()
            .filter(|(_, r)| !self.still_checked(r.owner, r.instance_pid))
            .map(|(&t, _)| t)
            .collect();
        for token in stale {
            if let Some(Running {
                work: Work::Exec(e),
                ..
            }) = self.checks.running.get(&token)
            {
                let _ = killpg(Pid::from_raw(e.pid), Signal::SIGKILL);
            }
            self.forget_check(token);
        }
    }

    fn still_checked(&self, owner: Owner, instance_pid: i32) -> bool {
        let prog = &self.table[owner.0];
        prog.checker.is_some()
            && self.table.locate(owner).is_some_and(|pos| {
                let state = &prog[pos].inst.state;
                state.pid() == Some(instance_pid) && checked(state, prog.def.policy.readiness)
            })
    }

    /// Removes a check's record and socket or pipe; an exec check's pid stays known until it
    /// is reaped.
    fn forget_check(&mut self, token: Token) -> Option<Running> {
        let running = self.checks.running.remove(&token)?;
        let registry = self.poll.registry();
        match &running.work {
            Work::Net(probe) => self.sources.remove(registry, token, probe.fd()),
            Work::Exec(e) => {
                if let Some(f) = &e.output {
                    self.sources.remove(registry, token, f.as_raw_fd());
                }
            }
        }
        Some(running)
    }

    /// The check under `token` ended with `outcome`.
    fn end_check(&mut self, token: Token, outcome: Outcome) {
        if let Some(r) = self.forget_check(token) {
            self.check_done(r.owner, r.instance_pid, outcome);
        }
    }

    /// Records `outcome` for instance `owner` (if its process is still `instance_pid`) and acts
    /// on the verdict.
    fn check_done(&mut self, owner: Owner, instance_pid: i32, outcome: Outcome) {
        let p = owner.0;
        let Some(pos) = self.table.locate(owner) else {
            return;
        };
        if self.table[p][pos].inst.state.pid() != Some(instance_pid) {
            return;
        }
        let now = Instant::now();
        let jitter = self.jitter.next_unit();
        let prog = &mut self.table[p];
        let Some(spec) = prog.checker.as_ref().map(|c| c.spec.clone()) else {
            return;
        };
        let restart = prog.def.policy.restart;
        let (index, name) = (prog[pos].index.0, prog.def.name.clone());
        let subject = (name.as_str(), Some(index), Some(instance_pid));
        if outcome.is_err() {
            prog[pos].counters.health_failures += 1;
        }
        let Some(tracker) = prog[pos].health.as_mut() else {
            return;
        };
        let before = tracker.view();
        let verdict = tracker.finish(&spec, outcome, now, jitter);
        let after = tracker.view();
        let last_pass = tracker.last_pass();
        log_change(subject, &before, &after, spec.retries);
        if before.state != after.state && after.state != "starting" {
            self.events.publish(Event::Instance {
                program: name.clone(),
                instance: index,
                pid: Some(instance_pid),
                what: What::Health {
                    state: after.state.to_string(),
                    failures: after.failures,
                    error: after.last_error.clone(),
                },
            });
        }
        match verdict {
            Verdict::Nothing => {}
            Verdict::FirstPass => self.apply(p, pos, crate::lifecycle::Event::HealthPassed),
            Verdict::Unhealthy { failures, error } => {
                let what = match restart {
                    Restart::Never => "stopping (restart = never)",
                    Restart::Always | Restart::OnFailure => "restarting",
                };
                let line = format!("health check failed {failures} times ({error}); {what}");
                say(subject, log::Level::Warn, &line);
                self.table[p][pos].health_error = Some(error);
                self.apply(p, pos, crate::lifecycle::Event::Unhealthy { last_pass });
            }
        }
    }
}

/// Logs `NAME[INDEX]: line` about `subject` (program, instance, process).
fn say(subject: (&str, Option<usize>, Option<i32>), level: log::Level, line: &str) {
    let (name, index, pid) = subject;
    let shown = index.unwrap_or_default();
    crate::log::about!(level, name, index, pid, "{name}[{shown}]: {line}");
}

/// Logs a change of a check's run: the first failure of a run (info), each further one (debug),
/// and a pass after failures (info). `Unhealthy` is logged by the caller.
/// `subject`: the program, instance and process the lines are about.
fn log_change(
    subject: (&str, Option<usize>, Option<i32>),
    before: &super::HealthView,
    after: &super::HealthView,
    retries: u32,
) {
    use log::Level::{Debug, Info};
    let error = after.last_error.as_deref().unwrap_or("");
    match (before.state, after.state) {
        (_, "failing") if after.failures >= retries => {}
        (_, "failing") => {
            let level = if before.state == "failing" {
                Debug
            } else {
                Info
            };
            let line = format!(
                "health check failed ({error}); {} of {retries}",
                after.failures
            );
            say(subject, level, &line);
        }
        ("failing", "passing") => say(subject, Info, "health check passing again"),
        _ => {}
    }
}

/// Reads what an exec check wrote, keeping the end; `true` at end of file.
fn read_output(e: &mut ExecCheck) -> bool {
    let Some(f) = e.output.as_mut() else {
        return true;
    };
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                e.tail.extend_from_slice(&buf[..n]);
                if e.tail.len() > OUTPUT_TAIL {
                    let cut = e.tail.len() - OUTPUT_TAIL;
                    e.tail.drain(..cut);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The outcome of an exec check that exited with `status`: exit code 0 passes; otherwise the
/// status and the last line it printed.
fn exec_outcome(e: &ExecCheck, status: ExitStatus) -> Outcome {
    if let Ok(Some((errno, step))) = crate::sys::spawn::read_exec_report(&e.report) {
        let err = std::io::Error::from_raw_os_error(errno);
        return Err(match step {
            crate::sys::spawn::ExecStep::Exec => format!("cannot execute {}: {err}", e.program),
            crate::sys::spawn::ExecStep::Chdir => format!("cannot change directory: {err}"),
            _ => format!("cannot set up the check: {err}"),
        });
    }
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&e.tail);
    match text.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => {
            let line: String = line.chars().take(200).collect();
            Err(format!("{status}: {line}"))
        }
        None => Err(status.to_string()),
    }
}
