//! The supervisor: one single-threaded event loop that owns every worker process, every timer
//! and every pipe, and keeps a pool of workers alive by policy.
//!
//! Everything that happens reaches the loop as a readable descriptor — the signal self-pipe
//! (`SIGCHLD` among others), the private notify socket, the control socket, each worker's exec
//! report and stdout and stderr pipes — through one `epoll` instance (mio), each token mapped to
//! its `Source` (`sources.rs`). The poll timeout is the nearest deadline of any instance (a
//! backoff, a stop timeout, a readiness or watchdog limit) and infinite when there is none: an
//! idle supervisor makes no wakeups at all.
//!
//! # What is decided where
//!
//! Each instance's restart, backoff, crash-loop and stop logic is the pure function
//! [`Instance::step`](crate::lifecycle::Instance::step); `apply` here feeds it events and carries out the actions it returns
//! (spawn, signal a process group, log one line per change, `transition_line`). Loop-level
//! decisions are made in the parts, each on its own data: the shutdown order and deadline
//! (`shutdown.rs`, pure), what a reaped pid means and `MAINPID=` bookkeeping (`table.rs`),
//! `MAINPID=` attribution (`notify.rs`), stray killing (`reap.rs`), output routing
//! (`capture.rs`), commands, reloads and rollouts (`commands.rs`).
//!
//! # No zombies, no orphans
//!
//! The supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so grandchildren orphaned by
//! a worker are re-parented to it, and on every `SIGCHLD` it reaps with `waitpid(-1, WNOHANG)`
//! until nothing is left; stopping a worker signals its whole process group, and an instance is
//! down only once that group is empty (see [`crate::lifecycle`]); workers die with the
//! supervisor (`PR_SET_PDEATHSIG`), and their process groups with it through a guard process
//! (`groups`: a small shell script, exec'd) — even when the supervisor is killed with `SIGKILL`,
//! and when a supervisor is dropped without a completed shutdown. Spawn workers from the thread
//! that runs the loop: the kernel sends the death signal when the *thread* that forked them
//! exits. The guard is a child of this process (`/bin/sh`, `argv[0]` `warden-guard`): a host
//! program that reaps children with `waitpid(-1)` may reap it too, and the supervisor then
//! starts another.

mod capture;
mod cgroup;
mod commands;
mod deps;
mod events;
mod groups;
mod guard;
mod handoff;
mod health;
pub mod metrics;
pub(crate) mod notify;
pub(crate) mod output;
mod pidns;
mod program;
mod programs;
mod reap;
mod reload;
mod rollout;
mod shutdown;
mod snapshot;
pub mod sockets;
mod sources;
mod spawn;
mod status;
mod table;
#[cfg(test)]
mod tests;
mod waiters;

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::event::Event as PollEvent;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub use crate::config::OutputSpec;
use crate::control::server::ControlServer;
use crate::error::{Error, Result};
use crate::lifecycle::{Action, Event, State};
use crate::log::LogHandle;
use crate::policy::Jitter;
pub use crate::policy::{ExitStatus, Policy, Readiness, Restart, StopWith};
use crate::signals::{SignalEvent, Signals};
use capture::{Capture, Stream};
pub use cgroup::DelegatedCgroups;
pub use handoff::{DaemonRec, Handoff, Inherited, KeptDaemon, STATE_FORMAT, release_signals};
use notify::NotifySocket;
pub use program::{HealthStatus, InstanceState, InstanceStatus, ProgramDef, RunExit, Work};
pub use reload::{ReloadPlan, ReloadSet, Reloader};
use shutdown::ShutdownState;
use sources::{Source, Sources};
pub use spawn::{ExecSpec, WorkerContext, WorkerFn};
use spawn::{Prepared, SpawnRequest, StdioPlan};
use table::{ExecState, InstanceIndex, Owner, ProgramId, SlotPos, Table};

/// The report pipe of a worker still on its way to `exec` (see
/// [`crate::sys::spawn::read_exec_report`]).
struct ExecReport {
    fd: OwnedFd,
    /// The instance it was spawned for.
    owner: Owner,
    /// The worker's pid: a report for an instance's earlier process is not its current one's.
    pid: i32,
}

/// The supervisor. See the module documentation.
pub struct Supervisor {
    poll: Poll,
    /// What each token stands for.
    sources: Sources,
    /// Programs, instances and the pid index.
    table: Table,
    /// Output pipes and where their lines go.
    capture: Capture,
    /// Exec reports of workers still on their way to `exec`.
    exec_reports: HashMap<Token, ExecReport>,
    notify: NotifySocket,
    /// Every worker process group not yet known to be empty, and the guard process.
    groups: groups::Groups,
    /// The shutdown under way and its bounds.
    shutdown: ShutdownState,
    scale_program: Option<String>,
    /// Spreads restart delays.
    jitter: Jitter,
    started: bool,
    registered_signals: Option<i32>,
    /// Our own service manager (systemd).
    manager: ServiceManager,
    /// The control socket and what its requests left in progress.
    plane: ControlPlane,
    /// Stops waiting for what requires their program to be down (`deps.rs`).
    deps_deferred: Vec<deps::DeferredStop>,
    /// Health checks under way (`health/`).
    checks: health::Checks,
    /// Listening sockets held for programs (`sockets.rs`).
    sockets: Vec<sockets::HeldSocket>,
    /// `warden upgrade` may make `run` return (`handoff/`).
    upgradable: bool,
    /// State changes waiting for `warden events` subscribers (`events.rs`).
    events: events::EventBus,
    /// `GET /metrics`, when served (`metrics/`).
    metrics: Option<metrics::MetricsServer>,
    /// cgroup mode: what was asked, why it is not in force (`cgroup/`).
    cgroup: cgroup::CgroupState,
}

/// The control side of the supervisor: the socket server, the requests waiting for their
/// effect, rolling restarts under way and what a reload needs. The files that answer control
/// requests (`commands.rs`, `waiters.rs`, `rollout.rs`, `reload.rs`, `status.rs`) work on this
/// part and on the [`Table`]; the loop's other parts are not theirs.
struct ControlPlane {
    server: Option<ControlServer>,
    waiters: Vec<waiters::Waiter>,
    rollouts: Vec<rollout::Rollout>,
    reloader: Option<Reloader>,
    /// When the supervisor was built (status: warden's uptime).
    started_at: Instant,
    /// The configuration file, for error messages (`FILE: program.NAME.KEY: …`); empty if none.
    config_path: String,
    /// How many rollouts failed on probation so far: each is numbered, and a request fails
    /// when a program it waits on is rolled back by one numbered above what it saw first.
    rollbacks: u64,
    /// An upgrade asked and not carried out yet (`handoff/`).
    upgrade: handoff::UpgradeRequest,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.table.programs().iter().map(|p| &p.def.name).collect();
        f.debug_struct("Supervisor")
            .field("programs", &names)
            .field("shutdown", &self.shutdown.mode)
            .finish()
    }
}

impl Supervisor {
    /// Creates the event loop and the notify socket and makes this process a child subreaper.
    pub fn new() -> Result<Supervisor> {
        let notify = NotifySocket::bind().map_err(|e| Error::os("bind notify socket", e))?;
        Supervisor::with_notify(notify)
    }

    /// As [`Supervisor::new`], on an existing notify socket.
    fn with_notify(notify: NotifySocket) -> Result<Supervisor> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
        let poll = Poll::new().map_err(|e| Error::os("epoll_create", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&notify.as_raw_fd()),
                sources::NOTIFY,
                Interest::READABLE,
            )
            .map_err(|e| Error::os("epoll_ctl", e))?;
        Ok(Supervisor {
            poll,
            sources: Sources::new(),
            table: Table::default(),
            capture: Capture::default(),
            exec_reports: HashMap::new(),
            notify,
            groups: groups::Groups::new(sources::GUARD),
            shutdown: ShutdownState::default(),
            scale_program: None,
            jitter: Jitter::from_entropy(),
            started: false,
            registered_signals: None,
            manager: ServiceManager::default(),
            plane: ControlPlane {
                server: None,
                waiters: Vec::new(),
                rollouts: Vec::new(),
                reloader: None,
                started_at: Instant::now(),
                config_path: String::new(),
                rollbacks: 0,
                upgrade: handoff::UpgradeRequest::default(),
            },
            deps_deferred: Vec::new(),
            checks: health::Checks::default(),
            sockets: Vec::new(),
            upgradable: false,
            events: events::EventBus::default(),
            metrics: None,
            cgroup: cgroup::CgroupState::default(),
        })
    }

    /// Sends `OutputSpec::Log` lines through this log handle (default: the `log` facade).
    pub fn set_log(&mut self, log: LogHandle) {
        self.capture.log = Some(log);
    }

    /// Pings our own service manager (`WATCHDOG=1`) every `interval` from the loop, as a
    /// deadline like any other (systemd asks for half of `WATCHDOG_USEC`).
    pub fn set_service_watchdog(&mut self, notifier: crate::daemon::Notifier, interval: Duration) {
        self.manager.watchdog = Some(ManagerWatchdog {
            notifier,
            interval,
            next: Instant::now() + interval,
        });
    }

    /// Tells our own service manager (systemd) about reloads (`RELOADING=1`, `READY=1`).
    pub fn set_notifier(&mut self, notifier: crate::daemon::Notifier) {
        self.manager.notifier = Some(notifier);
    }

    fn notify_manager(&self, msg: &str) {
        if let Some(n) = &self.manager.notifier {
            let _ = n.notify(msg);
        }
    }

    /// Serves the control socket from this loop.
    pub fn set_control(&mut self, mut server: ControlServer) -> Result<()> {
        server
            .register(self.poll.registry(), sources::CONTROL, sources::FIRST_CONN)
            .map_err(|e| Error::os("epoll_ctl", e))?;
        self.plane.server = Some(server);
        Ok(())
    }

    /// How `SIGHUP` and the `reload` command re-read the configuration. Without one, `SIGHUP`
    /// makes [`Supervisor::run`] return [`RunExit::Reload`].
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.plane.reloader = Some(reloader);
    }

    /// The configuration file named in status reports.
    pub fn set_config_path(&mut self, path: impl Into<String>) {
        self.plane.config_path = path.into();
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
        self.shutdown.kill_strays = yes;
    }

    /// Bounds a graceful shutdown: once `total` has passed since it began, every worker still
    /// running gets `SIGKILL` (its whole process group), as in a fast shutdown. When the shutdown
    /// completes, what is left of `total` becomes the exit hooks' total deadline
    /// ([`crate::hooks::set_total_deadline`]), so that the whole graceful shutdown, hooks
    /// included, takes about `total` at most (the final hooks, such as the pidfile removal, still
    /// run after it). Default: no bound; each stop still ends with `SIGKILL` after its program's
    /// `stop_timeout`.
    pub fn set_shutdown_timeout(&mut self, total: Duration) {
        self.shutdown.timeout = Some(total);
    }

    /// Stops serving the control socket and `/metrics`, and removes their socket files (at
    /// exit; not at `warden upgrade`, which hands them over).
    pub fn close_control(&mut self) {
        self.end_events();
        if let Some(c) = self.plane.server.take() {
            c.remove_file();
        }
        if let Some(m) = self.metrics.take() {
            m.remove_file();
        }
    }

    /// The program that `SIGTTIN`/`SIGTTOU` scale up and down.
    pub fn set_scale_program(&mut self, name: Option<String>) {
        self.scale_program = name;
    }

    /// Adds a program; its instances start when [`Supervisor::run`] starts (or now, if it runs).
    ///
    /// Users, groups and output files are resolved and opened here, so mistakes surface at once.
    /// The sockets it names must be held already ([`Supervisor::hold_socket`]), and it must be
    /// exec'd to receive any.
    pub fn add(&mut self, def: ProgramDef) -> Result<()> {
        if self.table.find(&def.name).is_ok() {
            return Err(Error::Invalid {
                what: "program",
                reason: format!("a program named {:?} already exists", def.name),
            });
        }
        self.check_sockets(&def)?;
        let prepared = match &def.work {
            Work::Exec(spec) => Some(Prepared::exec(spec)?),
            Work::Fn(_) => None,
        };
        let files = programs::open_files(&def)?;
        let checker = health::Checker::prepare(&def)?;
        let p = self.add_prepared(def, prepared, files);
        self.table[p].checker = checker;
        Ok(())
    }

    /// Runs the loop until a shutdown completes ([`RunExit::Shutdown`]) or a reload is asked
    /// ([`RunExit::Reload`]). The first call starts every program, in order.
    pub fn run(&mut self, signals: &mut Signals) -> Result<RunExit> {
        self.register_signals(signals)?;
        if !self.started {
            self.check_edges()?;
            self.decide_tracking();
            self.started = true;
            for p in self.table.ids() {
                for i in self.table[p].positions() {
                    self.apply(p, i, Event::Start);
                }
            }
        }
        // Signals that arrived before registration would not wake an edge-triggered poll.
        let mut reload = self.handle_signals(signals);
        let mut events = Events::with_capacity(256);
        loop {
            if let Some(exit) = self.settle(reload) {
                return Ok(exit);
            }
            reload = false;
            let timeout = if self.capture.has_backlog() {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::os("epoll_wait", e)),
            }
            for ev in events.iter() {
                reload |= self.dispatch(ev, signals);
            }
            self.read_backlog();
        }
    }

    fn register_signals(&mut self, signals: &Signals) -> Result<()> {
        let fd = signals.as_raw_fd();
        if self.registered_signals != Some(fd) {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), sources::SIGNALS, Interest::READABLE)
                .map_err(|e| Error::os("epoll_ctl", e))?;
            self.registered_signals = Some(fd);
        }
        Ok(())
    }

    /// The top of each turn: timers, then every loop-level judgement, before the loop sleeps.
    /// Returns why `run` returns, if it does now.
    ///
    /// Every change of state is judged here whichever path made it: an event (judged at the top
    /// of the next turn, with no wait in between) or a timer in `tick` (a respawn that fails at
    /// once and ends in `fatal`, a timed readiness that becomes `ready`). A waiter or a rollout
    /// left for the next wake-up would answer at some unrelated later event.
    fn settle(&mut self, reload: bool) -> Option<RunExit> {
        self.tick();
        self.advance_rollouts();
        self.sweep_removed();
        self.advance_deps();
        self.check_waiters();
        self.advance_shutdown();
        self.enforce_shutdown_deadline();
        self.deliver_events();
        if self.shutdown.active() && self.table.all_down() {
            self.finish_shutdown();
            self.drain_all_pipes();
            return Some(RunExit::Shutdown);
        }
        if std::mem::take(&mut self.plane.upgrade.asked) {
            return Some(RunExit::Upgrade);
        }
        (reload && !self.shutdown.active()).then_some(RunExit::Reload)
    }

    /// Hands one readiness event to the part that owns its source; returns whether a reload
    /// was asked.
    fn dispatch(&mut self, ev: &PollEvent, signals: &mut Signals) -> bool {
        let Some(source) = self.sources.get(ev.token(), self.plane.server.as_ref()) else {
            return false;
        };
        match source {
            Source::Signals => return self.handle_signals(signals),
            Source::Notify => self.handle_notify(),
            Source::Guard => self.groups.guard_event(
                self.poll.registry(),
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                ev.is_writable(),
            ),
            Source::Control => {
                if let Some(c) = self.plane.server.as_mut() {
                    c.accept(self.poll.registry());
                }
            }
            Source::Conn(id) => self.control_event(id, ev.is_readable(), ev.is_writable()),
            Source::ExecReport => self.read_exec_report(ev.token()),
            Source::Pipe => self.read_pipe(ev.token()),
            Source::Check => self.check_event(ev.token()),
            Source::Metrics | Source::MetricsConn => self.metrics_event(ev.token()),
            Source::Cgroups => self.cgroup_event(),
        }
        false
    }

    fn control_event(
        &mut self,
        id: crate::control::server::ConnId,
        readable: bool,
        writable: bool,
    ) {
        let Some(c) = self.plane.server.as_mut() else {
            return;
        };
        if writable {
            c.flush(id, self.poll.registry());
        }
        if readable {
            let incoming = c.readable(id, self.poll.registry());
            self.handle_control(incoming);
        }
    }

    /// The nearest deadline of anything: instances (their state machine's and their health
    /// check's, in one pass: this runs on every turn), checks under way, the manager's
    /// watchdog, the shutdown, idle control connections.
    fn next_deadline(&self) -> Option<Instant> {
        self.table
            .programs()
            .iter()
            .flat_map(|p| {
                let policy = &p.def.policy;
                p.slots().iter().filter_map(move |s| {
                    let check = s
                        .health
                        .as_ref()
                        .filter(|_| health::checked(&s.inst.state, policy.readiness))
                        .and_then(health::Tracker::due);
                    match (s.inst.deadline(policy), check) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                })
            })
            .chain(self.checks.next_deadline())
            .chain(self.rollout_deadline())
            .chain(self.manager.watchdog.as_ref().map(|w| w.next))
            .chain(self.shutdown.next_deadline())
            .chain(self.groups.next_sweep())
            .chain(self.metrics_deadline())
            .chain(
                self.plane
                    .server
                    .as_ref()
                    .and_then(ControlServer::next_deadline),
            )
            .min()
    }

    fn tick(&mut self) {
        self.sweep_groups();
        let now = Instant::now();
        if let Some(c) = self.plane.server.as_mut() {
            c.expire_idle(now, self.poll.registry());
        }
        if let Some(w) = self.manager.watchdog.as_mut().filter(|w| w.next <= now) {
            let _ = w.notifier.notify("WATCHDOG=1");
            w.next = now + w.interval;
        }
        for p in self.table.ids() {
            for i in self.table[p].positions() {
                let prog = &self.table[p];
                let due = prog[i]
                    .inst
                    .deadline(&prog.def.policy)
                    .is_some_and(|d| d <= now);
                if due {
                    self.apply(p, i, Event::Tick);
                }
            }
        }
        self.expire_checks(now);
        self.expire_metrics(now);
        self.run_checks(now);
    }

    /// Feeds `event` to instance `pos` of program `p` and carries out the actions, including the
    /// events they cause (a spawn's result); then logs the change ([`transition_line`]).
    fn apply(&mut self, p: ProgramId, pos: SlotPos, event: Event) {
        if self.hold_start(p, pos, &event) {
            return;
        }
        let slot = &self.table[p][pos];
        let before = InstanceState::of(&slot.inst.state);
        let first_start = slot.inst.last_exit.is_none() && slot.inst.state == State::Exited;
        let pid_before = slot.inst.state.pid();
        let mut notes: Vec<(log::Level, String)> = Vec::new();
        let mut news = FailureNews::Nothing;
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = Instant::now();
            let jitter = self.jitter.next_unit();
            let old_pid = self.table[p][pos].inst.state.pid();
            let mark = metrics::Mark::of(&self.table[p][pos], &event);
            let ended = cgroup::ends(&event);
            let actions = self.table[p].step(pos, event, now, jitter);
            if let Some(line) = self.note_oom(p, pos, ended) {
                notes.push((log::Level::Warn, line));
            }
            mark.count(&mut self.table[p][pos]);
            for action in actions {
                if let Some(next) = self.carry_out(p, pos, action, &mut notes, &mut news) {
                    queue.push_back(next);
                }
            }
            let new_pid = self.table[p][pos].inst.state.pid();
            self.table.track_pid_change(p, pos, old_pid, new_pid, now);
            if new_pid != old_pid {
                self.reset_health(p, pos, now);
            }
        }
        let slot = &self.table[p][pos];
        let change = Change {
            tag: format!("{}[{}]", self.table[p].def.name, slot.index),
            before,
            after: InstanceState::of(&slot.inst.state),
            pid_before,
            pid_after: slot.inst.state.pid(),
            first_start,
        };
        // Only a spawn failure the log has already told: said at debug, unless it gives up.
        let quiet = news == FailureNews::Repeated && change.after != InstanceState::Fatal;
        let (name, index) = (self.table[p].def.name.as_str(), slot.index);
        let pid = change.pid_after.or(change.pid_before);
        for (level, line) in transition_line(&change, &notes) {
            let level = if quiet { log::Level::Debug } else { level };
            crate::log::about!(level, name, Some(index.0), pid, "{line}");
        }
        self.publish_change(p, pos, &change, &notes);
        self.judge_end(p, pos, &change);
    }

    /// Carries out one action of instance `pos`; returns the event it causes, if any.
    fn carry_out(
        &mut self,
        p: ProgramId,
        pos: SlotPos,
        action: Action,
        notes: &mut Vec<(log::Level, String)>,
        news: &mut FailureNews,
    ) -> Option<Event> {
        match action {
            Action::Spawn => match self.spawn(p, pos) {
                Ok(pid) => return Some(Event::Spawned { pid }),
                Err(e) => {
                    let slot = &mut self.table[p][pos];
                    match slot.spawn_failed(format!("cannot start: {e}"), Instant::now()) {
                        Some(note) => {
                            notes.push((log::Level::Error, note));
                            *news = FailureNews::Told;
                        }
                        None if *news == FailureNews::Nothing => *news = FailureNews::Repeated,
                        None => {}
                    }
                    return Some(Event::SpawnFailed);
                }
            },
            Action::Stop { pid } => {
                let sig = match self.table[p].def.policy.stop {
                    StopWith::Signal(sig) => sig,
                    // Not a supervisor setting: the pool's; a signal is what remains.
                    StopWith::Request => Signal::SIGTERM,
                };
                self.signal(p, pos, pid, sig)
            }
            Action::Kill { pid } => self.signal(p, pos, pid, Signal::SIGKILL),
            Action::Log { level, message } => notes.push((level, message)),
        }
        None
    }

    /// Starts instance `pos`'s process and watches what it hands back; returns its pid.
    fn spawn(&mut self, p: ProgramId, pos: SlotPos) -> Result<i32> {
        // The guard exists before the first worker does (and again after it died).
        self.groups.ensure_guard(self.poll.registry());
        let (index, id) = (self.table[p][pos].index, self.table[p][pos].id);
        let cgroup = self.spawn_cgroup(p, pos)?;
        let (procs, dir) = cgroup.unzip();
        let started = self.start_process(p, index, procs)?;
        self.table[p][pos].spec_gen = self.table[p].spec_gen;
        // The worker leads a new process group (set up in the child before anything else), in
        // its own cgroup in cgroup mode (joined first).
        self.groups
            .add_in(self.poll.registry(), started.pid, (p, id), dir);
        let registry = self.poll.registry();
        for (stream, file) in [
            (Stream::Stdout, started.stdout),
            (Stream::Stderr, started.stderr),
        ] {
            if let Some(file) = file {
                let owner = ((p, index), started.pid);
                self.capture
                    .add(&mut self.sources, registry, file, owner, stream)?;
            }
        }
        self.table[p][pos].exec = match started.exec_report {
            Some(fd) => {
                let token = self
                    .sources
                    .add(registry, fd.as_raw_fd(), Source::ExecReport)?;
                let owner = (p, id);
                let pid = started.pid;
                self.exec_reports
                    .insert(token, ExecReport { fd, owner, pid });
                ExecState::Pending
            }
            None => ExecState::Done,
        };
        Ok(started.pid)
    }

    /// Forks (and, for an exec'd program, execs) instance `index` of program `p`.
    fn start_process(
        &self,
        p: ProgramId,
        index: InstanceIndex,
        cgroup_procs: Option<std::ffi::CString>,
    ) -> Result<spawn::Started> {
        let prog = &self.table[p];
        let def = &prog.def;
        let plan = |o: &OutputSpec| {
            if *o == OutputSpec::Null {
                StdioPlan::Null
            } else {
                StdioPlan::Pipe
            }
        };
        let notify_env = self.notify.env_value();
        let sockets = self.sockets_of(def);
        let request = SpawnRequest {
            program: &def.name,
            index,
            sockets: &sockets,
            notify_socket: (def.policy.readiness == Readiness::Notify)
                .then_some(notify_env.as_str()),
            watchdog: def.policy.watchdog,
            stdout: plan(&def.stdout),
            stderr: plan(&def.stderr),
            checked_pid: None,
            cgroup_procs,
            pid_namespace: None,
        };
        // PID-namespace mode: created in the guard's namespace (see `pidns`).
        self.groups.spawn_in_namespace(|pid_namespace| {
            let request = SpawnRequest {
                pid_namespace,
                ..request
            };
            match (&def.work, &prog.prepared) {
                (Work::Exec(_), Some(prepared)) => spawn::spawn_exec(prepared, &request),
                (Work::Fn(f), _) => spawn::spawn_fn(f, &request),
                (Work::Exec(_), None) => unreachable!("exec programs are prepared when added"),
            }
        })
    }

    /// A worker's exec happened (nothing to do) or failed: say why. The child then exits 127,
    /// which the ordinary exit path handles (restart, backoff, crash-loop limit).
    fn read_exec_report(&mut self, token: Token) {
        let Some(ExecReport { fd, owner, pid }) = self.exec_reports.remove(&token) else {
            return;
        };
        let p = owner.0;
        self.sources
            .remove(self.poll.registry(), token, fd.as_raw_fd());
        let report = crate::sys::spawn::read_exec_report(&fd);
        // The slot keeps its index across respawns: the exit 127 may be reaped (and the
        // instance started again) before this report is read.
        let slot = self.table.locate(owner);
        let current = slot.filter(|&pos| self.table[p][pos].inst.state.pid() == Some(pid));
        let exec = match report {
            Ok(None) => ExecState::Done,
            Ok(Some((errno, step))) => {
                let why = spawn::exec_failure(&self.table[p].def.work, step, errno);
                let index = slot.map(|pos| self.table[p][pos].index.0);
                let shown = index.map_or(String::from("?"), |i| i.to_string());
                let name = self.table[p].def.name.as_str();
                crate::log::about!(
                    log::Level::Error,
                    name,
                    index,
                    Some(pid),
                    "{name}[{shown}]: {why}"
                );
                ExecState::Failed(why)
            }
            Err(_) => return,
        };
        if let Some(pos) = current {
            self.table[p][pos].exec = exec;
        }
    }

    fn signal(&mut self, p: ProgramId, pos: SlotPos, pid: i32, sig: Signal) {
        let slot = &self.table[p][pos];
        // The worker leads its own process group: signal the group while it is known to exist
        // (its id cannot be reused while members remain, even after the leader was reaped), then
        // the process itself until it is reaped, in case it left the group, and the MAINPID= of
        // a forking service. A reaped pid is free for reuse and is never signalled. No process
        // gets the signal twice: a second SIGTERM or SIGINT means "hurry" to many programs.
        let in_group = self.groups.contains(pid);
        let mut reached = Vec::new();
        if in_group {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid), sig);
            // cgroup mode: the signal reaches every process of the instance, in its group or
            // not (as systemd's KillMode=control-group).
            reached = self.groups.signal_cgroup(pid, sig);
        }
        let reached = |x: i32| {
            reached.contains(&x)
                || (in_group
                    && nix::unistd::getpgid(Some(Pid::from_raw(x)))
                        .is_ok_and(|g| g.as_raw() == pid))
        };
        if self.table.owner(pid) == Some((p, slot.id)) && !reached(pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
        }
        if slot.main_pid.is_none_or(|m| !reached(m)) {
            slot.signal_main(sig);
        }
    }

    /// Handles pending signal events; returns whether a reload was asked.
    fn handle_signals(&mut self, signals: &mut Signals) -> bool {
        let mut reload = false;
        for event in signals.pending() {
            match event {
                SignalEvent::ChildExited => self.reap(),
                SignalEvent::GracefulShutdown => {
                    let deadline = self
                        .shutdown
                        .timeout
                        .map(|t| format!(" (deadline {t:?})"))
                        .unwrap_or_default();
                    log::info!(
                        "graceful shutdown: stopping programs in reverse dependency order{deadline}"
                    );
                    self.shutdown(false);
                }
                SignalEvent::FastShutdown => {
                    log::info!("fast shutdown: killing every worker");
                    self.shutdown(true);
                }
                SignalEvent::Reload | SignalEvent::AddWorker | SignalEvent::RemoveWorker
                    if self.shutdown.active() =>
                {
                    log::warn!("{event:?} ignored: warden is shutting down");
                }
                SignalEvent::Reload if self.plane.reloader.is_some() => {
                    log::info!("SIGHUP: reloading the configuration");
                    let _ = self.reload(false);
                }
                SignalEvent::Reload => reload = true,
                SignalEvent::ReopenLogs => {
                    let _ = self.reopen_logs(); // each failure is logged
                }
                SignalEvent::Upgrade => self.request_upgrade(None),
                SignalEvent::AddWorker => self.scale_by_signal(true),
                SignalEvent::RemoveWorker => self.scale_by_signal(false),
                _ => {}
            }
        }
        reload
    }
}

/// Our own service manager: told about reloads (`RELOADING=1`, `READY=1`), and pinged for its
/// watchdog from the loop.
#[derive(Default)]
struct ServiceManager {
    notifier: Option<crate::daemon::Notifier>,
    watchdog: Option<ManagerWatchdog>,
}

/// Our own service manager's watchdog (`WATCHDOG=1` every `interval`).
struct ManagerWatchdog {
    notifier: crate::daemon::Notifier,
    interval: Duration,
    next: Instant,
}

/// One instance's change across an `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    /// `NAME[INDEX]`.
    tag: String,
    before: InstanceState,
    after: InstanceState,
    pid_before: Option<i32>,
    pid_after: Option<i32>,
    /// Its very first start (never exited before, and `exited` before): shown as `new`.
    first_start: bool,
}

/// What the failed spawns of one `apply` (a spawn and its immediate retry) were worth saying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureNews {
    /// No spawn failed.
    Nothing,
    /// Every failure repeated a reason the log has told already.
    Repeated,
    /// At least one failure is told in full (or summarised).
    Told,
}

/// The log lines for one `apply`: one grep-able line per state change, `NAME[INDEX]: OLD -> NEW
/// (pid N): why; why`, at the most severe note's level (`Info` without notes); without a change,
/// each note on its own line, `NAME[INDEX] (pid N): note`.
///
/// An exit followed by an immediate respawn leaves the state as it was, but it is a change all
/// the same (a new pid): it is logged as one, or the line would name the new pid as the one that
/// exited.
fn transition_line(change: &Change, notes: &[(log::Level, String)]) -> Vec<(log::Level, String)> {
    let tag = &change.tag;
    let pid_note = change
        .pid_after
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    let changed = change.before != change.after
        || change.first_start
        || change.pid_after != change.pid_before;
    if !changed {
        return notes
            .iter()
            .map(|(level, message)| (*level, format!("{tag}{pid_note}: {message}")))
            .collect();
    }
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
    let from = if change.first_start {
        "new"
    } else {
        change.before.name()
    };
    let after = change.after;
    vec![(level, format!("{tag}: {from} -> {after}{pid_note}{why}"))]
}
