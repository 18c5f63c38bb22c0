//! The supervisor's public model: what a program is ([`ProgramDef`], [`Work`]), what an
//! instance looks like from outside ([`InstanceStatus`], [`InstanceState`]), and why the loop
//! returned ([`RunExit`]).
//!
//! Plain data and conversions only: no process, descriptor or loop state lives here, and nothing
//! here decides anything.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::OutputSpec;
use crate::lifecycle::State;
use crate::policy::{ExitReason, ExitStatus, Policy};

use super::spawn::{ExecSpec, WorkerFn};

/// What a program's workers run.
#[derive(Clone)]
// One per program, built once: boxing the larger variant would save nothing that matters.
#[allow(clippy::large_enum_variant)]
pub enum Work {
    /// An exec'd program.
    Exec(ExecSpec),
    /// A Rust function in a forked child (only while the supervisor is single-threaded).
    Fn(WorkerFn),
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Exec(e) => f.debug_tuple("Exec").field(e).finish(),
            Work::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// One supervised program: N instances of the same work under one policy.
#[derive(Debug, Clone)]
pub struct ProgramDef {
    /// The name, unique in the supervisor.
    pub name: String,
    /// How many instances to run.
    pub instances: u32,
    /// What each instance runs.
    pub work: Work,
    /// Restart, backoff, stop and readiness policy.
    pub policy: Policy,
    /// Where stdout goes.
    pub stdout: OutputSpec,
    /// Where stderr goes.
    pub stderr: OutputSpec,
    /// Rotate output files beyond this size.
    pub log_max_bytes: u64,
    /// Keep this many rotated output files.
    pub log_keep: u32,
    /// The configuration file that defines it (`status --json` shows it as `file`); `None` for
    /// a program built in code. Not a setting: a reload that only moves a program to another
    /// file leaves it running and updates this.
    pub source: Option<PathBuf>,
    /// Start only once every instance of each of these programs is ready; stop before them
    /// (`after`). Not a setting that a reload restarts for: new edges apply to future starts.
    pub after: Vec<String>,
    /// As `after`, and held `waiting` while one of these is stopped by hand or `fatal`, started
    /// again once it is ready (`requires`).
    ///
    /// [`Supervisor::run`](super::Supervisor::run) refuses, before starting anything, a name of
    /// no program and programs that wait for each other ([`Error::Invalid`](crate::Error)).
    pub requires: Vec<String>,
    /// A health check run on each instance while it is up: `retries` failures in a row restart
    /// it; with [`Readiness::Health`](crate::policy::Readiness::Health) its first pass makes
    /// the instance ready. [`Supervisor::add`](super::Supervisor::add) resolves it (host
    /// names, the exec check's user) and fails if it cannot. Not a setting that a reload
    /// restarts for: a new check applies to the next checks.
    pub health: Option<crate::config::HealthSpec>,
    /// The held sockets ([`Supervisor::hold_socket`](super::Supervisor::hold_socket)) each
    /// instance receives as descriptors 3, 4, … in this order, with `LISTEN_FDS`, `LISTEN_PID`
    /// and `LISTEN_FDNAMES` (systemd's socket activation). Exec'd programs only.
    pub sockets: Vec<String>,
    /// How a rolling restart replaces each instance (`update`: stop then start, or start the
    /// new one beside the old and stop the old once the new is ready) and the new instances'
    /// `probation`, within which a failure rolls the rollout back. Not a setting that a reload
    /// restarts for: it applies to the next rollout (including the one the reload starts).
    pub rollout: crate::policy::UpdatePolicy,
    /// The limits of each instance's cgroup (`memory_max`, `memory_high`, `pids_max`,
    /// `cpu_max`), applied in cgroup mode where the controller is enabled; a limit that cannot
    /// be applied is logged at the instance's first start, never ignored silently.
    pub cgroup: crate::config::CgroupLimits,
}

impl ProgramDef {
    /// A program with default policy and output to the log.
    pub fn new(name: impl Into<String>, instances: u32, work: Work) -> ProgramDef {
        ProgramDef {
            name: name.into(),
            instances,
            work,
            policy: Policy::default(),
            stdout: OutputSpec::Log,
            stderr: OutputSpec::Log,
            log_max_bytes: 10 << 20,
            log_keep: 5,
            source: None,
            after: Vec::new(),
            requires: Vec::new(),
            health: None,
            sockets: Vec::new(),
            rollout: crate::policy::UpdatePolicy::default(),
            cgroup: crate::config::CgroupLimits::default(),
        }
    }
}

/// A read-only view of one instance, for `warden status` and library users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The program name.
    pub program: String,
    /// The instance index, from 0.
    pub index: usize,
    /// The main pid, when a process is up.
    pub pid: Option<i32>,
    /// Where the instance is (its [`InstanceState::name`] is what `warden status` shows).
    pub state: InstanceState,
    /// How long the current process has been up.
    pub uptime: Option<Duration>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Why warden ended the last process, when it did on a verdict of its own (`health`).
    pub last_reason: Option<ExitReason>,
    /// Its health check's state, while its process is up and its program has one.
    pub health: Option<HealthStatus>,
    /// The last `STATUS=` text it sent or, after a failed start (a missing `env_file`, a
    /// command not found), why it failed — until a start succeeds.
    pub status_text: Option<String>,
    /// While [`InstanceState::Waiting`]: the programs it waits for that are not ready yet.
    pub waiting_for: Vec<String>,
    /// While [`InstanceState::Waiting`] because a required program was stopped by hand or went
    /// `fatal`: why (`db stopped`, `db fatal`).
    pub waiting_reason: Option<String>,
    /// A surge replacement started beside the instance with the same index during a rolling
    /// restart, not yet in its place.
    pub incoming: bool,
    /// Scaled away or replaced: stopping for good.
    pub retiring: bool,
}

/// One instance's health check, as `warden status` shows it (the text, `failing 2/3: HTTP 500`,
/// is spelt once, by [`HealthInfo::text`](crate::control::HealthInfo::text)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStatus {
    /// `passing`, `failing` or `starting` (no verdict yet, or inside `start_period`).
    pub state: &'static str,
    /// Failures in a row that count towards `retries`.
    pub failures: u32,
    /// The program's `retries`.
    pub retries: u32,
    /// The last failure's error, until a check passes.
    pub last_error: Option<String>,
}

/// Where an instance is, as `warden status` shows it: the state machine's state without its
/// data (a spawn under way shows as `starting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Spawned, not yet running or ready.
    Starting,
    /// Up (not yet ready, for a program with a readiness check).
    Running,
    /// Up and ready.
    Ready,
    /// Waiting to restart.
    Backoff,
    /// Being stopped.
    Stopping,
    /// Never started, or exited and not restarted.
    Exited,
    /// Stopped by hand, kept down until started again.
    Stopped,
    /// Gave up restarting (crash loop, or a start that cannot succeed).
    Fatal,
    /// Held down until the programs it starts after (`after`, `requires`) are ready.
    Waiting,
}

impl InstanceState {
    /// The name `warden status` and its JSON show: `starting`, `running`, `ready`, `backoff`,
    /// `stopping`, `exited`, `stopped`, `fatal` or `waiting`.
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Ready => "ready",
            InstanceState::Backoff => "backoff",
            InstanceState::Stopping => "stopping",
            InstanceState::Exited => "exited",
            InstanceState::Stopped => "stopped",
            InstanceState::Fatal => "fatal",
            InstanceState::Waiting => "waiting",
        }
    }

    /// The state `state` shows as.
    pub fn of(state: &State) -> InstanceState {
        match state {
            State::Exited => InstanceState::Exited,
            State::Stopped => InstanceState::Stopped,
            State::Spawning | State::Starting { .. } => InstanceState::Starting,
            State::Running { .. } => InstanceState::Running,
            State::Ready { .. } => InstanceState::Ready,
            State::Backoff { .. } => InstanceState::Backoff,
            State::Stopping { .. } => InstanceState::Stopping,
            State::Fatal => InstanceState::Fatal,
        }
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`Supervisor::run`](super::Supervisor::run) returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// Every worker has been stopped and reaped.
    Shutdown,
    /// `SIGHUP`: the caller should re-read its configuration, apply it, and call `run` again.
    Reload,
    /// `warden upgrade` or `SIGUSR2`, with [`Supervisor::set_upgradable`](super::Supervisor::set_upgradable):
    /// the caller should check the new binary, then [`Supervisor::export`](super::Supervisor::export)
    /// and execute it, or call [`Supervisor::upgrade_failed`](super::Supervisor::upgrade_failed)
    /// and `run` again.
    Upgrade,
}

impl ProgramDef {
    /// The supervisor's view of a `[program.NAME]` table.
    pub fn from_spec(spec: &crate::config::ProgramSpec) -> ProgramDef {
        ProgramDef {
            name: spec.name.clone(),
            instances: spec.instances,
            work: Work::Exec(spec.exec.clone()),
            policy: spec.policy.clone(),
            stdout: spec.stdout.clone(),
            stderr: spec.stderr.clone(),
            log_max_bytes: spec.log_max_bytes,
            log_keep: spec.log_keep,
            source: spec.source.clone(),
            after: spec.after.clone(),
            requires: spec.requires.clone(),
            health: spec.health.clone(),
            sockets: spec.sockets.clone(),
            rollout: spec.rollout,
            cgroup: spec.cgroup,
        }
    }
}
