//! The supervisor: one single-threaded event loop that owns every worker process, every timer
//! and every pipe, and keeps a pool of workers alive by policy.
//!
//! Everything that happens reaches the loop as a readable descriptor — the signal self-pipe
//! (`SIGCHLD` among others), the private notify socket, each worker's stdout and stderr pipes —
//! through one `epoll` instance (mio). The poll timeout is the nearest deadline of any instance
//! (a backoff, a stop timeout, a readiness or watchdog limit) and infinite when there is none: an
//! idle supervisor makes no wakeups at all.
//!
//! Decisions are not made here: each instance's restart, backoff, crash-loop and stop logic is the
//! pure function [`state::Instance::step`]; this loop only feeds it events and carries out the
//! actions it returns (spawn, signal a process group, log a line).
//!
//! No zombies, no orphans: the supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so
//! grandchildren orphaned by a worker are re-parented to it, and on every `SIGCHLD` it reaps with
//! `waitpid(-1, WNOHANG)` until nothing is left; stopping a worker signals its whole process group,
//! and an instance is down only once that group is empty (see [`state`]); workers die with the
//! supervisor (`PR_SET_PDEATHSIG`), and their process groups with it through a guard process
//! (`groups`: a small shell script, exec'd) — even when the supervisor is killed with `SIGKILL`,
//! and when a supervisor is dropped without a completed shutdown. Spawn workers from the thread
//! that runs the loop: the kernel sends the death signal when the *thread* that forked them
//! exits. The guard is a child of this process (`/bin/sh`, `argv[0]` `warden-guard`): a host
//! program that reaps children with `waitpid(-1)` may reap it too, and the supervisor then
//! starts another.

mod commands;
mod groups;
pub mod notify;
pub mod output;
pub mod spawn;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

pub use crate::config::OutputSpec;
use crate::control::server::ControlServer;
use crate::error::{Error, Result};
use crate::lifecycle::{self as state, Action, Event, Instance};
use crate::log::LogHandle;
use crate::policy::Jitter;
pub use crate::policy::{ExitStatus, Policy, Readiness, Restart, StopWith};
use crate::signals::{SignalEvent, Signals};
use crate::stream::{LineFramer, ReadEnd, read_nonblocking};
pub use commands::{ReloadPlan, ReloadSet, Reloader};
use notify::{NotifyMessage, NotifySocket};
use output::RotatingFile;
pub use spawn::{ExecSpec, WorkerContext, WorkerFn};
use spawn::{Prepared, Sink};
use std::ops::ControlFlow;

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
    /// `starting`, `running`, `ready`, `backoff`, `stopping`, `exited`, `stopped` (by hand, kept
    /// down until started again) or `fatal`.
    pub state: &'static str,
    /// How long the current process has been up.
    pub uptime: Option<Duration>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// The last `STATUS=` text it sent.
    pub status_text: Option<String>,
}

/// Why [`Supervisor::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// Every worker has been stopped and reaped.
    Shutdown,
    /// `SIGHUP`: the caller should re-read its configuration, apply it, and call `run` again.
    Reload,
}

const SIGNALS: Token = Token(0);
const NOTIFY: Token = Token(1);
const CONTROL: Token = Token(2);
const GUARD: Token = Token(3);
/// Control connections get tokens from here up.
const FIRST_CONN: usize = 1 << 40;
const FIRST_PIPE: usize = 16;
/// Bytes read from one pipe per wake-up before serving the others.
const READ_BUDGET: usize = 256 * 1024;
/// Longest captured line; longer ones are split.
const MAX_LINE: usize = 16 * 1024;

struct Slot {
    index: usize,
    inst: Instance,
    up_since: Option<Instant>,
    status_text: Option<String>,
    main_pid: Option<i32>,
    /// A pidfd for `main_pid` (Linux 5.3), taken when `MAINPID=` is accepted: that process is
    /// not necessarily our child (its launcher may reap it), so its pid alone could be recycled
    /// under us; the pidfd cannot.
    main_pidfd: Option<std::os::fd::OwnedFd>,
    /// The spawned process (a forking service's launcher) exited and was reaped while its
    /// `MAINPID=` lives on: its pid may be reused and must never be signalled again.
    launcher_gone: bool,
    /// Scaled away: removed once down.
    retiring: bool,
    /// Whether the current process has exec'd: an instance is not "up" for waiting commands
    /// and rolling restarts until it has.
    exec: ExecState,
}

/// What is known of the current process's `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecState {
    /// Forked, exec not yet confirmed.
    Pending,
    /// Exec'd (or a function worker, which has nothing to exec).
    Done,
    /// The exec (or the set-up before it) failed: why.
    Failed(String),
}

struct Program {
    def: ProgramDef,
    prepared: Option<Prepared>,
    slots: Vec<Slot>,
    /// Output files: stdout's, and stderr's when it is another path.
    files: [Option<RotatingFile>; 2],
    /// Removed by a reload: stopping, then kept as an empty tombstone so indices stay stable.
    removed: bool,
}

struct Pipe {
    file: File,
    framer: LineFramer,
    program: usize,
    index: usize,
    stream: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// Stopping programs from the last to the first; the value is how many remain.
    Graceful(usize),
    Fast,
}

/// The supervisor. See the module documentation.
pub struct Supervisor {
    poll: Poll,
    programs: Vec<Program>,
    by_pid: HashMap<i32, (usize, usize)>,
    pipes: HashMap<Token, Pipe>,
    /// Exec reports of workers still on their way to `exec`: (fd, program, index, program path).
    exec_reports: HashMap<Token, (std::os::fd::OwnedFd, usize, usize, i32)>,
    backlog: VecDeque<Token>,
    next_token: usize,
    notify: NotifySocket,
    log: Option<LogHandle>,
    scale_program: Option<String>,
    /// Spreads restart delays.
    jitter: Jitter,
    shutdown: Option<Shutdown>,
    started: bool,
    registered_signals: Option<i32>,
    /// Our own service manager's watchdog: (notifier, ping interval, next ping).
    service_watchdog: Option<(crate::daemon::Notifier, Duration, Instant)>,
    /// Our own service manager, told about reloads.
    notifier: Option<crate::daemon::Notifier>,
    control: Option<ControlServer>,
    waiters: Vec<commands::Waiter>,
    rollouts: Vec<commands::Rollout>,
    reloader: Option<Reloader>,
    started_at: Instant,
    config_path: String,
    kill_strays: bool,
    /// Every worker process group not yet known to be empty, and the guard process.
    groups: groups::Groups,
    /// The bound of a graceful shutdown ([`Supervisor::set_shutdown_timeout`]).
    shutdown_timeout: Option<Duration>,
    /// When the current shutdown began, and when a graceful one escalates to SIGKILL.
    shutdown_began: Option<Instant>,
    shutdown_deadline: Option<Instant>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field(
                "programs",
                &self
                    .programs
                    .iter()
                    .map(|p| &p.def.name)
                    .collect::<Vec<_>>(),
            )
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl Supervisor {
    /// Creates the event loop and the notify socket and makes this process a child subreaper.
    pub fn new() -> Result<Supervisor> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
        let poll = Poll::new().map_err(|e| Error::os("epoll_create", e))?;
        let notify = NotifySocket::bind().map_err(|e| Error::os("bind notify socket", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&notify.as_raw_fd()),
                NOTIFY,
                Interest::READABLE,
            )
            .map_err(|e| Error::os("epoll_ctl", e))?;
        Ok(Supervisor {
            poll,
            programs: Vec::new(),
            by_pid: HashMap::new(),
            pipes: HashMap::new(),
            exec_reports: HashMap::new(),
            backlog: VecDeque::new(),
            next_token: FIRST_PIPE,
            notify,
            log: None,
            scale_program: None,
            jitter: Jitter::from_entropy(),
            shutdown: None,
            started: false,
            registered_signals: None,
            service_watchdog: None,
            notifier: None,
            control: None,
            waiters: Vec::new(),
            rollouts: Vec::new(),
            reloader: None,
            started_at: Instant::now(),
            config_path: String::new(),
            kill_strays: false,
            groups: groups::Groups::new(GUARD),
            shutdown_timeout: None,
            shutdown_began: None,
            shutdown_deadline: None,
        })
    }

    /// Sends `OutputSpec::Log` lines through this log handle (default: the `log` facade).
    pub fn set_log(&mut self, log: LogHandle) {
        self.log = Some(log);
    }

    /// Pings our own service manager (`WATCHDOG=1`) every `interval` from the loop, as a
    /// deadline like any other (systemd asks for half of `WATCHDOG_USEC`).
    pub fn set_service_watchdog(&mut self, notifier: crate::daemon::Notifier, interval: Duration) {
        self.service_watchdog = Some((notifier, interval, Instant::now() + interval));
    }

    /// Tells our own service manager (systemd) about reloads (`RELOADING=1`, `READY=1`).
    pub fn set_notifier(&mut self, notifier: crate::daemon::Notifier) {
        self.notifier = Some(notifier);
    }

    fn notify_manager(&self, msg: &str) {
        if let Some(n) = &self.notifier {
            let _ = n.notify(msg);
        }
    }

    /// Serves the control socket from this loop.
    pub fn set_control(&mut self, mut server: ControlServer) -> Result<()> {
        server
            .register(self.poll.registry(), CONTROL, FIRST_CONN)
            .map_err(|e| Error::os("epoll_ctl", e))?;
        self.control = Some(server);
        Ok(())
    }

    /// How `SIGHUP` and the `reload` command re-read the configuration. Without one, `SIGHUP`
    /// makes [`Supervisor::run`] return [`RunExit::Reload`].
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.reloader = Some(reloader);
    }

    /// The configuration file named in status reports.
    pub fn set_config_path(&mut self, path: impl Into<String>) {
        self.config_path = path.into();
    }

    /// Applies a reload now, as `SIGHUP` does: the plan, or why nothing changed.
    pub fn reload_now(&mut self, dry_run: bool) -> std::result::Result<ReloadPlan, String> {
        self.reload(dry_run)
            .map(|(plan, _)| plan)
            .map_err(|(_, e)| e)
    }

    /// Whether a finished shutdown kills every remaining child of this process — descendants
    /// that escaped their worker's process group and were re-parented here (default off: a
    /// library user's process may have children of its own; the `warden` binary turns it on).
    pub fn set_kill_strays(&mut self, yes: bool) {
        self.kill_strays = yes;
    }

    /// Bounds a graceful shutdown: once `total` has passed since it began, every worker still
    /// running gets `SIGKILL` (its whole process group), as in a fast shutdown. When the shutdown
    /// completes, what is left of `total` becomes the exit hooks' total deadline
    /// ([`crate::hooks::set_total_deadline`]), so that the whole graceful shutdown, hooks
    /// included, takes about `total` at most (the final hooks, such as the pidfile removal, still
    /// run after it). Default: no bound; each stop still ends with `SIGKILL` after its program's
    /// `stop_timeout`.
    pub fn set_shutdown_timeout(&mut self, total: Duration) {
        self.shutdown_timeout = Some(total);
    }

    /// Stops serving the control socket and removes its file (at exit).
    pub fn close_control(&mut self) {
        if let Some(c) = self.control.take() {
            c.remove_file();
        }
    }

    /// The program that `SIGTTIN`/`SIGTTOU` scale up and down.
    pub fn set_scale_program(&mut self, name: Option<String>) {
        self.scale_program = name;
    }

    /// Adds a program; its instances start when [`Supervisor::run`] starts (or now, if it runs).
    ///
    /// Users, groups and output files are resolved and opened here, so mistakes surface at once.
    pub fn add(&mut self, def: ProgramDef) -> Result<()> {
        if self.find(&def.name).is_ok() {
            return Err(Error::Invalid {
                what: "program",
                reason: format!("a program named {:?} already exists", def.name),
            });
        }
        let prepared = match &def.work {
            Work::Exec(spec) => Some(Prepared::exec(spec)?),
            Work::Fn(_) => None,
        };
        let files = commands::open_files(&def)?;
        self.add_prepared(def, prepared, files);
        Ok(())
    }

    /// A snapshot of every instance, programs in start order.
    pub fn status(&self) -> Vec<InstanceStatus> {
        let now = Instant::now();
        self.programs
            .iter()
            .filter(|p| !p.removed)
            .flat_map(|p| {
                p.slots.iter().map(move |s| InstanceStatus {
                    program: p.def.name.clone(),
                    index: s.index,
                    pid: s.main_pid.or(s.inst.state.pid()),
                    state: s.inst.state.name(),
                    uptime: s.up_since.filter(|_| s.inst.state.is_up()).map(|t| now - t),
                    restarts: s.inst.restarts,
                    last_exit: s.inst.last_exit,
                    // Its last `STATUS=` line described a process stopped by hand since.
                    status_text: s
                        .status_text
                        .clone()
                        .filter(|_| s.inst.state != state::State::Stopped),
                })
            })
            .collect()
    }

    /// Runs the loop until a shutdown completes ([`RunExit::Shutdown`]) or a reload is asked
    /// ([`RunExit::Reload`]). The first call starts every program, in order.
    pub fn run(&mut self, signals: &mut Signals) -> Result<RunExit> {
        let fd = signals.as_raw_fd();
        if self.registered_signals != Some(fd) {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), SIGNALS, Interest::READABLE)
                .map_err(|e| Error::os("epoll_ctl", e))?;
            self.registered_signals = Some(fd);
        }
        if !self.started {
            self.started = true;
            for p in 0..self.programs.len() {
                for i in 0..self.programs[p].slots.len() {
                    self.apply(p, i, Event::Start);
                }
            }
        }
        // Signals that arrived before registration would not wake an edge-triggered poll.
        let mut reload = self.handle_signals(signals);
        let mut events = Events::with_capacity(256);
        loop {
            self.tick();
            // Every change of state is judged before the loop sleeps, whichever path made it: an
            // event below (judged at the top of the next turn, with no wait in between) or a
            // timer in `tick` (a respawn that fails at once and ends in `fatal`, a timed
            // readiness that becomes `ready`). A waiter or a rollout left for the next wake-up
            // would answer at some unrelated later event.
            self.advance_rollouts();
            self.sweep_removed();
            self.check_waiters();
            self.advance_shutdown();
            self.enforce_shutdown_deadline();
            if self.shutdown.is_some() && self.all_down() {
                self.finish_shutdown();
                self.drain_all_pipes();
                return Ok(RunExit::Shutdown);
            }
            if reload && self.shutdown.is_none() {
                return Ok(RunExit::Reload);
            }
            reload = false;
            let timeout = if self.backlog.is_empty() {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Sys {
                        call: "epoll_wait",
                        source: e,
                    });
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => reload |= self.handle_signals(signals),
                    NOTIFY => self.handle_notify(),
                    GUARD => self.groups.guard_event(
                        self.poll.registry(),
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    ),
                    CONTROL => {
                        if let Some(c) = self.control.as_mut() {
                            c.accept(self.poll.registry());
                        }
                    }
                    t if t.0 >= FIRST_CONN => {
                        self.control_event(t, ev.is_readable(), ev.is_writable())
                    }
                    t if self.exec_reports.contains_key(&t) => self.read_exec_report(t),
                    t => self.read_pipe(t),
                }
            }
            let backlog: Vec<Token> = self.backlog.drain(..).collect();
            for t in backlog {
                self.read_pipe(t);
            }
        }
    }

    /// Starts a graceful shutdown (as `SIGTERM` does); [`Supervisor::run`] returns once done.
    pub fn shutdown(&mut self, fast: bool) {
        if self.shutdown.is_none() {
            let now = Instant::now();
            self.shutdown_began = Some(now);
            self.shutdown_deadline = self
                .shutdown_timeout
                .filter(|_| !fast)
                .and_then(|t| now.checked_add(t));
        }
        if fast {
            self.shutdown = Some(Shutdown::Fast);
            for p in 0..self.programs.len() {
                for i in 0..self.programs[p].slots.len() {
                    self.apply(p, i, Event::Kill);
                }
            }
        } else if self.shutdown.is_none() {
            self.shutdown = Some(Shutdown::Graceful(self.programs.len()));
        }
    }

    /// Sets the number of instances of `program`: new ones start, the highest indices stop.
    pub fn scale(&mut self, program: &str, instances: u32) -> Result<()> {
        if instances > crate::config::MAX_INSTANCES {
            return Err(Error::Invalid {
                what: "instances",
                reason: format!("{instances} is more than {}", crate::config::MAX_INSTANCES),
            });
        }
        let p = self.find(program)?;
        let target = instances as usize;
        let live: Vec<usize> = self.programs[p]
            .slots
            .iter()
            .filter(|s| !s.retiring)
            .map(|s| s.index)
            .collect();
        if target > live.len() {
            for index in live.len()..target {
                // Reuse a retiring slot with this index, if one is still stopping.
                if let Some(pos) = self.programs[p].slots.iter().position(|s| s.index == index) {
                    self.programs[p].slots[pos].retiring = false;
                    self.apply(p, pos, Event::Start);
                } else {
                    self.programs[p].slots.push(new_slot(index));
                    let pos = self.programs[p].slots.len() - 1;
                    self.apply(p, pos, Event::Start);
                }
            }
        } else {
            for &index in live.iter().filter(|&&i| i >= target) {
                let pos = self.slot_pos(p, index).expect("live slot");
                self.programs[p].slots[pos].retiring = true;
                self.apply(p, pos, Event::Stop);
            }
            self.remove_retired(p);
        }
        self.programs[p].def.instances = instances;
        log::info!("{program}: scaled to {instances} instance(s)");
        Ok(())
    }

    /// Starts every instance of `program` (a manual start, resetting backoff and crash loops).
    pub fn start_program(&mut self, program: &str) -> Result<()> {
        self.each_instance(program, || Event::Start)
    }

    /// Stops every instance of `program` and keeps them down until started again.
    pub fn stop_program(&mut self, program: &str) -> Result<()> {
        self.each_instance(program, || Event::Stop)
    }

    /// Restarts every instance of `program` at once (not counted as failures).
    pub fn restart_program(&mut self, program: &str) -> Result<()> {
        self.each_instance(program, || Event::Restart)
    }

    fn each_instance(&mut self, program: &str, event: impl Fn() -> Event) -> Result<()> {
        let p = self.find(program)?;
        for pos in 0..self.programs[p].slots.len() {
            if !self.programs[p].slots[pos].retiring {
                self.apply(p, pos, event());
            }
        }
        Ok(())
    }

    fn control_event(&mut self, token: Token, readable: bool, writable: bool) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        let Some(id) = c.conn_of(token) else { return };
        if writable {
            c.flush(id, self.poll.registry());
        }
        if readable {
            let incoming = c.readable(id, self.poll.registry());
            self.handle_control(incoming);
        }
    }

    fn find(&self, program: &str) -> Result<usize> {
        self.programs
            .iter()
            .position(|p| p.def.name == program && !p.removed)
            .ok_or_else(|| Error::Invalid {
                what: "program",
                reason: format!("no program named {program:?}"),
            })
    }

    fn slot_pos(&self, p: usize, index: usize) -> Option<usize> {
        self.programs[p].slots.iter().position(|s| s.index == index)
    }

    fn all_down(&self) -> bool {
        self.programs.iter().flat_map(|p| &p.slots).all(|s| {
            !s.inst.state.is_up()
                && !matches!(
                    s.inst.state,
                    state::State::Stopping { .. } | state::State::Spawning
                )
        })
    }

    fn program_down(&self, p: usize) -> bool {
        self.programs[p].slots.iter().all(|s| {
            !s.inst.state.is_up()
                && !matches!(
                    s.inst.state,
                    state::State::Stopping { .. } | state::State::Spawning
                )
        })
    }

    fn advance_shutdown(&mut self) {
        while let Some(Shutdown::Graceful(remaining)) = self.shutdown {
            if remaining == 0 {
                return;
            }
            let p = remaining - 1;
            let needs_stop: Vec<usize> = (0..self.programs[p].slots.len())
                .filter(|&i| {
                    let s = &self.programs[p].slots[i];
                    // An instance stopping *for a restart* (a watchdog or start timeout) gets the
                    // Stop too, which makes it stay down: otherwise it is respawned mid-shutdown.
                    !matches!(
                        s.inst.state,
                        state::State::Stopping {
                            then: state::AfterStop::Stay,
                            ..
                        } | state::State::Exited
                            | state::State::Stopped
                            | state::State::Fatal
                    )
                })
                .collect();
            for i in needs_stop {
                self.apply(p, i, Event::Stop);
            }
            if !self.program_down(p) {
                return;
            }
            self.shutdown = Some(Shutdown::Graceful(p));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.programs
            .iter()
            .flat_map(|p| {
                p.slots
                    .iter()
                    .filter_map(|s| s.inst.deadline(&p.def.policy))
            })
            .chain(self.service_watchdog.as_ref().map(|w| w.2))
            .chain(self.shutdown_deadline)
            .chain(self.control.as_ref().and_then(ControlServer::next_deadline))
            .min()
    }

    /// A graceful shutdown that ran out of `shutdown_timeout` becomes a fast one: SIGKILL to
    /// every instance's process group, and to groups no instance waits for any more.
    fn enforce_shutdown_deadline(&mut self) {
        let Some(deadline) = self.shutdown_deadline else {
            return;
        };
        if !matches!(self.shutdown, Some(Shutdown::Graceful(_))) {
            self.shutdown_deadline = None;
            return;
        }
        if Instant::now() < deadline || self.all_down() {
            return;
        }
        self.shutdown_deadline = None;
        let waited = self
            .shutdown_timeout
            .map(crate::policy::fmt_duration)
            .unwrap_or_default();
        log::warn!("shutdown_timeout ({waited}) passed: killing every remaining worker (SIGKILL)");
        self.shutdown(true);
        self.groups.signal_all(Signal::SIGKILL);
    }

    /// The last step of a shutdown, every instance down: SIGKILL for groups still known to have
    /// members (an instance stops waiting for members that outlive SIGKILL), the strays if asked,
    /// then the guard is let go; the exit hooks get what is left of `shutdown_timeout`.
    fn finish_shutdown(&mut self) {
        let left = self.groups.signal_all(Signal::SIGKILL);
        if left > 0 {
            log::warn!("{left} worker process group(s) still had members: sent SIGKILL");
        }
        // The guard first: it is our child, and no stray.
        self.groups.close_guard(self.poll.registry());
        if self.kill_strays {
            self.kill_strays();
        }
        if let (Some(total), Some(began)) = (self.shutdown_timeout, self.shutdown_began) {
            crate::hooks::set_total_deadline(total.saturating_sub(began.elapsed()));
        }
        self.shutdown_deadline = None;
    }

    fn tick(&mut self) {
        self.sweep_groups();
        let now = Instant::now();
        if let Some(c) = self.control.as_mut() {
            c.expire_idle(now, self.poll.registry());
        }
        if let Some((notifier, interval, next)) =
            self.service_watchdog.as_mut().filter(|w| w.2 <= now)
        {
            let _ = notifier.notify("WATCHDOG=1");
            *next = now + *interval;
        }
        for p in 0..self.programs.len() {
            for i in 0..self.programs[p].slots.len() {
                let due = {
                    let prog = &self.programs[p];
                    prog.slots[i]
                        .inst
                        .deadline(&prog.def.policy)
                        .is_some_and(|d| d <= now)
                };
                if due {
                    self.apply(p, i, Event::Tick);
                }
            }
        }
    }

    /// Feeds `event` to instance `pos` of program `p` and carries out the actions, including the
    /// events they cause (a spawn's result).
    fn apply(&mut self, p: usize, pos: usize, event: Event) {
        let before = self.programs[p].slots[pos].inst.state.name();
        let first_start =
            self.programs[p].slots[pos].inst.last_exit.is_none() && before == "exited";
        let pid_before = self.programs[p].slots[pos].inst.state.pid();
        let mut notes: Vec<(log::Level, String)> = Vec::new();
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = Instant::now();
            let jitter = self.jitter.next_unit();
            let old_pid = self.programs[p].slots[pos].inst.state.pid();
            let actions = {
                let prog = &mut self.programs[p];
                prog.slots[pos]
                    .inst
                    .step(&prog.def.policy, event, now, jitter)
            };
            for action in actions {
                match action {
                    Action::Spawn => match self.spawn(p, pos) {
                        Ok(pid) => queue.push_back(Event::Spawned { pid }),
                        Err(e) => {
                            notes.push((log::Level::Error, format!("cannot start: {e}")));
                            queue.push_back(Event::SpawnFailed);
                        }
                    },
                    Action::Stop { pid } => {
                        let sig = match self.programs[p].def.policy.stop {
                            StopWith::Signal(sig) => sig,
                            // Not a supervisor setting: the pool's; a signal is what remains.
                            StopWith::Request => Signal::SIGTERM,
                        };
                        self.signal(p, pos, pid, sig)
                    }
                    Action::Kill { pid } => self.signal(p, pos, pid, Signal::SIGKILL),
                    Action::Log { level, message } => notes.push((level, message)),
                }
            }
            let slot = &mut self.programs[p].slots[pos];
            let new_pid = slot.inst.state.pid();
            if new_pid != old_pid {
                if let Some(old) = old_pid {
                    self.by_pid.remove(&old);
                }
                if let Some(pid) = new_pid {
                    let key = (p, slot.index);
                    if let Some(main) = slot.main_pid.take()
                        && self.by_pid.get(&main) == Some(&key)
                    {
                        self.by_pid.remove(&main);
                    }
                    slot.main_pidfd = None;
                    self.by_pid.insert(pid, key);
                    slot.up_since = Some(now);
                    slot.launcher_gone = false;
                    slot.status_text = None;
                }
            }
        }
        // One grep-able line per state change: "NAME[INDEX]: OLD -> NEW (pid N): why".
        let slot = &self.programs[p].slots[pos];
        let after = slot.inst.state.name();
        let tag = format!("{}[{}]", self.programs[p].def.name, slot.index);
        let pid_note = slot
            .inst
            .state
            .pid()
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        // An exit followed by an immediate respawn leaves the state name as it was, but it is a
        // change all the same (a new pid): log it as one, or the line would name the new pid
        // as the one that exited.
        if before != after || first_start || slot.inst.state.pid() != pid_before {
            let level = notes
                .iter()
                .map(|(l, _)| *l)
                .min()
                .unwrap_or(log::Level::Info);
            let why: Vec<&str> = notes.iter().map(|(_, m)| m.as_str()).collect();
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            };
            let from = if first_start { "new" } else { before };
            log::log!(level, "{tag}: {from} -> {after}{pid_note}{why}");
        } else {
            for (level, message) in notes {
                log::log!(level, "{tag}{pid_note}: {message}");
            }
        }
    }

    fn spawn(&mut self, p: usize, pos: usize) -> Result<i32> {
        // The guard exists before the first worker does (and again after it died).
        self.groups.ensure_guard(self.poll.registry());
        let prog = &self.programs[p];
        let index = prog.slots[pos].index;
        let def = &prog.def;
        let sink = |o: &OutputSpec| {
            if *o == OutputSpec::Null {
                Sink::Null
            } else {
                Sink::Pipe
            }
        };
        let notify_env = self.notify.env_value();
        let instance = spawn::Instance {
            program: &def.name,
            index,
            notify_socket: (def.policy.readiness == Readiness::Notify)
                .then_some(notify_env.as_str()),
            watchdog: def.policy.watchdog,
            stdout: sink(&def.stdout),
            stderr: sink(&def.stderr),
        };
        let started = match (&def.work, &prog.prepared) {
            (Work::Exec(spec), Some(prepared)) => {
                spawn::spawn_exec(prepared, &instance).map_err(|e| Error::Io {
                    what: "cannot execute",
                    path: PathBuf::from(&spec.command[0]),
                    source: e,
                })?
            }
            (Work::Fn(f), _) => spawn::spawn_fn(f, &instance)?,
            (Work::Exec(_), None) => unreachable!("exec programs are prepared when added"),
        };
        // The worker leads a new process group (set up in the child before anything else).
        self.groups
            .add(self.poll.registry(), started.pid, (p, index));
        for (stream, file) in [(1, started.stdout), (2, started.stderr)] {
            if let Some(file) = file {
                self.add_pipe(file, p, index, stream)?;
            }
        }
        self.programs[p].slots[pos].exec = if started.exec_report.is_some() {
            ExecState::Pending
        } else {
            ExecState::Done
        };
        if let Some(report) = started.exec_report {
            let token = Token(self.next_token);
            self.next_token += 1;
            self.poll
                .registry()
                .register(
                    &mut SourceFd(&report.as_raw_fd()),
                    token,
                    Interest::READABLE,
                )
                .map_err(|e| Error::os("epoll_ctl", e))?;
            self.exec_reports
                .insert(token, (report, p, index, started.pid));
        }
        Ok(started.pid)
    }

    /// A worker's exec happened (nothing to do) or failed: say why. The child then exits 127,
    /// which the ordinary exit path handles (restart, backoff, crash-loop limit).
    fn read_exec_report(&mut self, token: Token) {
        let Some((fd, p, index, pid)) = self.exec_reports.remove(&token) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&fd.as_raw_fd()));
        let report = crate::sys::spawn::read_exec_report(&fd);
        let current = self
            .slot_pos(p, index)
            .filter(|&pos| self.programs[p].slots[pos].inst.state.pid() == Some(pid));
        if let (Some(pos), Ok(None)) = (current, &report) {
            self.programs[p].slots[pos].exec = ExecState::Done;
        }
        if let Ok(Some((errno, step))) = report {
            let def = &self.programs[p].def;
            let what = match (&def.work, step) {
                (Work::Exec(spec), crate::sys::spawn::ExecStep::Exec) => {
                    format!("cannot execute {}", spec.command[0])
                }
                (Work::Exec(spec), crate::sys::spawn::ExecStep::Chdir) => {
                    format!(
                        "cannot change directory to {}",
                        spec.directory
                            .as_deref()
                            .unwrap_or(std::path::Path::new("?"))
                            .display()
                    )
                }
                (_, crate::sys::spawn::ExecStep::Stdio) => "cannot set up stdio".to_string(),
                _ => "cannot set up the process (limits, credentials, process group)".to_string(),
            };
            let why = format!("{what}: {}", std::io::Error::from_raw_os_error(errno));
            log::error!("{}[{index}]: {why}", def.name);
            if let Some(pos) = current {
                self.programs[p].slots[pos].exec = ExecState::Failed(why);
            }
        }
    }

    fn add_pipe(&mut self, file: File, program: usize, index: usize, stream: usize) -> Result<()> {
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::sys("fcntl", e))?;
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll
            .registry()
            .register(&mut SourceFd(&file.as_raw_fd()), token, Interest::READABLE)
            .map_err(|e| Error::os("epoll_ctl", e))?;
        self.pipes.insert(
            token,
            Pipe {
                file,
                framer: LineFramer::new(MAX_LINE),
                program,
                index,
                stream,
            },
        );
        Ok(())
    }

    fn signal(&mut self, p: usize, pos: usize, pid: i32, sig: Signal) {
        let slot = &self.programs[p].slots[pos];
        // The worker leads its own process group: signal the group while it is known to exist
        // (its id cannot be reused while members remain, even after the leader was reaped), then
        // the process itself until it is reaped, in case it left the group, and the MAINPID= of
        // a forking service. A reaped pid is free for reuse and is never signalled.
        if self.groups.contains(pid) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid), sig);
        }
        if self.by_pid.get(&pid) == Some(&(p, slot.index)) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
        }
        slot.signal_main(sig);
    }

    /// Handles pending signal events; returns whether a reload was asked.
    fn handle_signals(&mut self, signals: &mut Signals) -> bool {
        let mut reload = false;
        for event in signals.pending() {
            match event {
                SignalEvent::ChildExited => self.reap(),
                SignalEvent::GracefulShutdown => {
                    log::info!("graceful shutdown: stopping programs in reverse order");
                    self.shutdown(false);
                }
                SignalEvent::FastShutdown => {
                    log::info!("fast shutdown: killing every worker");
                    self.shutdown(true);
                }
                SignalEvent::Reload | SignalEvent::AddWorker | SignalEvent::RemoveWorker
                    if self.shutdown.is_some() =>
                {
                    log::warn!("{event:?} ignored: warden is shutting down");
                }
                SignalEvent::Reload if self.reloader.is_some() => {
                    log::info!("SIGHUP: reloading the configuration");
                    let _ = self.reload(false);
                }
                SignalEvent::Reload => reload = true,
                SignalEvent::ReopenLogs => {
                    let _ = self.reopen_logs(); // each failure is logged
                }
                SignalEvent::AddWorker | SignalEvent::RemoveWorker => {
                    let up = event == SignalEvent::AddWorker;
                    match self.scale_program.clone() {
                        Some(name) => {
                            let n = self
                                .programs
                                .iter()
                                .find(|p| p.def.name == name)
                                .map_or(0, |p| p.def.instances);
                            let n = if up {
                                n.saturating_add(1)
                            } else {
                                n.saturating_sub(1)
                            };
                            if let Err(e) = self.scale(&name, n) {
                                log::error!("cannot scale {name}: {e}");
                            }
                        }
                        None => {
                            log::warn!("SIGTTIN/SIGTTOU ignored: no scale_program is configured")
                        }
                    }
                }
                _ => {}
            }
        }
        reload
    }

    /// Reaps every exited child. Unknown pids are orphans re-parented to us (subreaper).
    fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, core)) => (
                    pid.as_raw(),
                    ExitStatus::Signal {
                        signal: sig as i32,
                        core_dumped: core,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    break;
                }
            };
            // A worker's main process (or a process the state machine refused): its group is now
            // checked for members like any group whose leader is gone.
            self.groups.leader_reaped(pid);
            let Some(&(p, index)) = self.by_pid.get(&pid) else {
                log::debug!("reaped orphan pid {pid} ({status})");
                continue;
            };
            let Some(pos) = self.slot_pos(p, index) else {
                self.by_pid.remove(&pid);
                continue;
            };
            let slot = &self.programs[p].slots[pos];
            if slot.main_pid == Some(pid) {
                // The MAINPID= process ended: that is the worker's end.
                self.by_pid.remove(&pid);
                let launcher_running =
                    !slot.launcher_gone && slot.inst.state.pid().is_some_and(|s| s != pid);
                self.programs[p].slots[pos].main_pid = None;
                self.programs[p].slots[pos].main_pidfd = None;
                if launcher_running {
                    // The launcher is still ours to reap; its exit ends the instance.
                    continue;
                }
                self.main_exited(p, pos, status);
            } else if slot.inst.state.pid() == Some(pid) {
                if slot.main_alive() {
                    // A forking service's launcher exited after naming its main pid.
                    log::debug!(
                        "{}[{index}]: launcher pid {pid} exited ({status}); main pid lives on",
                        self.programs[p].def.name
                    );
                    self.by_pid.remove(&pid);
                    self.programs[p].slots[pos].launcher_gone = true;
                    continue;
                }
                self.by_pid.remove(&pid);
                self.main_exited(p, pos, status);
            } else {
                self.by_pid.remove(&pid);
            }
            self.remove_retired(p);
        }
        self.sweep_groups();
    }

    /// The worker's main process ended: the instance is down if nothing else is left of its
    /// process group (`Exited`); otherwise it stops the rest first (`LeaderExited`).
    fn main_exited(&mut self, p: usize, pos: usize, status: ExitStatus) {
        let pgid = self.programs[p].slots[pos].inst.state.pid();
        let members = pgid.is_some_and(|g| self.groups.has_members(self.poll.registry(), g));
        let event = if members {
            Event::LeaderExited { status }
        } else {
            Event::Exited { status }
        };
        self.apply(p, pos, event);
    }

    /// Forgets the groups whose members are all gone, and tells the instances waiting for them.
    fn sweep_groups(&mut self) {
        for (pgid, (p, index)) in self.groups.sweep(self.poll.registry()) {
            let Some(pos) = self.slot_pos(p, index) else {
                continue;
            };
            if matches!(
                self.programs[p].slots[pos].inst.state,
                state::State::Stopping { pid, reaped: true, .. } if pid == pgid
            ) {
                self.apply(p, pos, Event::GroupEmpty);
                self.remove_retired(p);
            }
        }
    }

    /// At the end of a shutdown, kills the descendants that escaped their worker's process
    /// group (a `setsid` daemon inside a worker) and were re-parented to us — and those that are
    /// re-parented to us when their own parent dies — until no child is left (bounded): no
    /// orphan outlives warden's orderly exit.
    fn kill_strays(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut killed: Vec<i32> = Vec::new();
        loop {
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => break,
                    Err(nix::errno::Errno::ECHILD) => return,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        log::error!("waitpid: {e}");
                        return;
                    }
                }
            }
            let live = children_of_self();
            let fresh: Vec<i32> = live
                .iter()
                .copied()
                .filter(|p| !killed.contains(p))
                .collect();
            if !fresh.is_empty() {
                log::warn!(
                    "killing {} stray descendant(s) left behind by workers: {fresh:?}",
                    fresh.len()
                );
                for &pid in &fresh {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                killed.extend(fresh);
            }
            if Instant::now() >= deadline {
                log::error!("children still running after SIGKILL: {live:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn remove_retired(&mut self, p: usize) {
        self.programs[p].slots.retain(|s| {
            !(s.retiring
                && !s.inst.state.is_up()
                && !matches!(s.inst.state, state::State::Stopping { .. }))
        });
    }

    fn handle_notify(&mut self) {
        loop {
            match self.notify.recv() {
                Ok(Some(msg)) => self.apply_notify(msg),
                Ok(None) => return,
                Err(e) => {
                    log::error!("notify socket: {e}");
                    return;
                }
            }
        }
    }

    fn attribute(&self, pid: i32) -> Option<(usize, usize)> {
        if let Some(&k) = self.by_pid.get(&pid) {
            return Some(k);
        }
        // The sender may be a helper in the worker's process group (systemd-notify from a shell)
        // or a descendant that left it.
        let mut cur = pid;
        for _ in 0..32 {
            let (pgrp, ppid) = notify::pgrp_and_parent(cur)?;
            if let Some(&k) = self.by_pid.get(&pgrp) {
                return Some(k);
            }
            if let Some(&k) = self.by_pid.get(&ppid) {
                return Some(k);
            }
            if ppid <= 1 {
                return None;
            }
            cur = ppid;
        }
        None
    }

    fn apply_notify(&mut self, msg: NotifyMessage) {
        let Some((p, index)) = self.attribute(msg.pid) else {
            log::debug!("notify message from pid {} ignored: not a worker", msg.pid);
            return;
        };
        let Some(pos) = self.slot_pos(p, index) else {
            return;
        };
        if let Some(text) = &msg.status {
            self.programs[p].slots[pos].status_text = Some(text.clone());
        }
        if let Some(main) = msg.main_pid {
            let worker = self.programs[p].slots[pos].inst.state.pid();
            if worker.is_some_and(|w| w == main || descends_from(main, w)) {
                // Taken before the checks' result can go stale for long; a kernel without
                // pidfd_open (before 5.3) falls back to the pid.
                let fd = crate::sys::pidfd::pidfd_open(main).ok();
                let slot = &mut self.programs[p].slots[pos];
                if let Some(old) = slot.main_pid.replace(main)
                    && old != main
                    && Some(old) != worker
                    && self.by_pid.get(&old) == Some(&(p, index))
                {
                    self.by_pid.remove(&old);
                }
                slot.main_pidfd = fd;
                self.by_pid.insert(main, (p, index));
            } else {
                log::warn!(
                    "{}[{index}]: MAINPID={main} ignored: not the worker or one of its descendants",
                    self.programs[p].def.name
                );
            }
        }
        if msg.watchdog {
            self.apply(p, pos, Event::WatchdogPing);
        }
        if msg.ready {
            self.apply(p, pos, Event::Ready);
        }
        if msg.stopping {
            log::info!("{}[{index}]: reports STOPPING=1", self.programs[p].def.name);
        }
        if msg.watchdog_trigger {
            log::warn!(
                "{}[{index}]: WATCHDOG=trigger received; restarting",
                self.programs[p].def.name
            );
            self.apply(p, pos, Event::Restart);
        }
    }

    fn read_pipe(&mut self, token: Token) {
        let Some(pipe) = self.pipes.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        let mut lines: Vec<String> = Vec::new();
        let end = read_nonblocking(
            &mut (&mut *pipe, &mut buf),
            |(pipe, buf)| pipe.file.read(&mut buf[..]),
            |(pipe, buf), n| {
                pipe.framer
                    .push(&buf[..n], &mut |l| lines.push(l.to_string()));
                total += n;
                if total >= READ_BUDGET {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        let eof = end == ReadEnd::Closed;
        match end {
            ReadEnd::Closed => pipe.framer.finish(&mut |l| lines.push(l.to_string())),
            ReadEnd::Paused => self.backlog.push_back(token),
            ReadEnd::Drained => {}
        }
        let (p, index, stream) = (pipe.program, pipe.index, pipe.stream);
        if let Some(pipe) = eof.then(|| self.pipes.remove(&token)).flatten() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.file.as_raw_fd()));
        }
        self.write_lines(p, index, stream, &lines);
    }

    fn write_lines(&mut self, p: usize, index: usize, stream: usize, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let prog = &mut self.programs[p];
        let tag = format!("{}[{index}]", prog.def.name);
        let target = if stream == 1 {
            &prog.def.stdout
        } else {
            &prog.def.stderr
        };
        match target {
            OutputSpec::Null => {}
            OutputSpec::Log => {
                for line in lines {
                    match &self.log {
                        Some(log) => log.write_line(&format!("{tag} {line}")),
                        None => log::info!(target: "warden::output", "{tag} {line}"),
                    }
                }
            }
            OutputSpec::File(_) => {
                let shared = prog.def.stdout == prog.def.stderr;
                let slot = if stream == 1 || shared { 0 } else { 1 };
                if let Some(file) = prog.files[slot].as_mut() {
                    let now = SystemTime::now();
                    let mut failed = None;
                    for (i, line) in lines.iter().enumerate() {
                        if let Err(e) = file.write_line(&output::format_line(&tag, line, now)) {
                            // The rest of the batch would fail the same way: dropped with it.
                            failed = Some((e, lines.len() - i));
                            break;
                        }
                    }
                    report_output_write(&tag, file, failed);
                }
            }
        }
    }

    fn drain_all_pipes(&mut self) {
        let tokens: Vec<Token> = self.pipes.keys().copied().collect();
        for t in tokens {
            self.read_pipe(t);
        }
    }

    /// Reopens the daemon's log file and every program's output file; each failure is logged
    /// and returned (a file that failed keeps being written where it was).
    fn reopen_logs(&mut self) -> std::result::Result<(), Vec<Error>> {
        let mut failed = Vec::new();
        if let Some(log) = &self.log {
            match log.reopen() {
                Ok(()) => log::info!("log files reopened"),
                Err(e) => {
                    log::error!("cannot reopen the log: {e}");
                    failed.push(e);
                }
            }
        }
        for prog in &mut self.programs {
            for file in prog.files.iter_mut().flatten() {
                if let Err(e) = file.reopen() {
                    log::error!("cannot reopen {}: {e}", file.path().display());
                    failed.push(Error::io("cannot reopen output file", file.path(), e));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

fn new_slot(index: usize) -> Slot {
    Slot {
        index,
        inst: Instance::new(),
        up_since: None,
        status_text: None,
        main_pid: None,
        main_pidfd: None,
        launcher_gone: false,
        retiring: false,
        exec: ExecState::Done,
    }
}

impl Slot {
    /// Whether the `MAINPID=` process still exists (through its pidfd when there is one).
    fn main_alive(&self) -> bool {
        match (&self.main_pidfd, self.main_pid) {
            (Some(fd), _) => {
                use std::os::fd::AsFd;
                crate::sys::pidfd::pidfd_send_signal(fd.as_fd(), 0).is_ok()
            }
            (None, Some(pid)) => pid_alive(pid),
            (None, None) => false,
        }
    }

    /// Signals the `MAINPID=` process, if any (through its pidfd when there is one).
    fn signal_main(&self, sig: Signal) {
        match (&self.main_pidfd, self.main_pid) {
            (Some(fd), _) => {
                use std::os::fd::AsFd;
                let _ = crate::sys::pidfd::pidfd_send_signal(fd.as_fd(), sig as i32);
            }
            (None, Some(pid)) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
            (None, None) => {}
        }
    }
}

/// The children of this process: `/proc/self/task/*/children` (one small read per thread),
/// falling back to scanning `/proc/*/stat` on kernels built without it.
fn children_of_self() -> Vec<i32> {
    let mut out = Vec::new();
    let mut found_interface = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                found_interface = true;
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    if !found_interface {
        let me = std::process::id() as i32;
        out = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|&pid| notify::pgrp_and_parent(pid).is_some_and(|(_, ppid)| ppid == me))
                    .collect()
            })
            .unwrap_or_default();
    }
    out
}

/// Whether `pid` descends from `ancestor`, walking parents in `/proc` (bounded).
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut cur = pid;
    for _ in 0..64 {
        match notify::pgrp_and_parent(cur) {
            Some((_, ppid)) if ppid == ancestor => return true,
            Some((_, ppid)) if ppid > 1 => cur = ppid,
            _ => return false,
        }
    }
    false
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
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
        }
    }
}

/// Logs what a batch of writes to a program's output file came to, through its [`Repeated`]
/// state: the first failure of a kind in full, then at most one summary of the dropped lines per
/// [`output::FAILURE_SUMMARY_EVERY`], and the recovery once. `failed`: the error and how many
/// lines it dropped.
///
/// [`Repeated`]: crate::log::repeat::Repeated
fn report_output_write(
    tag: &str,
    file: &mut output::RotatingFile,
    failed: Option<(std::io::Error, usize)>,
) {
    use crate::log::repeat::Verdict;
    let path = file.path().display().to_string();
    let Some((e, dropped)) = failed else {
        if let Some(untold) = file.failures.succeeded() {
            log::info!("{tag}: writing {path} again ({untold} more line(s) were dropped)");
        }
        return;
    };
    let kind = e.raw_os_error().map_or_else(
        || e.kind().to_string(),
        |n| nix::errno::Errno::from_raw(n).to_string(),
    );
    match file.failures.failed(&kind, dropped as u64, Instant::now()) {
        Verdict::First { untold } => {
            let before = if untold > 0 {
                format!(" ({untold} more line(s) were dropped for another error)")
            } else {
                String::new()
            };
            log::error!(
                "{tag}: cannot write {path}: {e}; dropping its output until it can be written \
                 (summarised every {}s){before}",
                output::FAILURE_SUMMARY_EVERY.as_secs()
            );
        }
        Verdict::Summary { count } => {
            log::error!("{count} more line(s) dropped for {tag}: cannot write {path}: {kind}");
        }
        Verdict::Quiet => {}
    }
}
