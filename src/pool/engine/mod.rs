//! The pool's I/O thread: one mio event loop that owns every worker socket, output pipe, pidfd,
//! timer and per-worker [`Instance`], and the only code that talks to workers.
//!
//! It is not generic: jobs arrive already encoded, with a type-erased [`Completion`] that
//! decodes the result in the typed layer. The API threads and this thread share only
//! [`Shared`]: the bounded queue of jobs not yet sent, the flags (`closed`, `stop`), counters
//! and a stats snapshot, under one mutex, plus a `mio::Waker`.
//!
//! # Files
//!
//! This file keeps the loop (`serve`), event dispatch, the state-machine glue (`apply`) and the
//! stop; it must not hold the pieces below, and they must not call each other's internals
//! except through the `Engine` methods named here.
//! - `shared`: the hand-off with the API threads ([`Shared`], [`Job`], [`Completion`]).
//! - `credit`: a job's message receiver and the credit given back as it consumes.
//! - `jobs`: scheduling — take, assign, rebalance, write jobs, publish stats.
//! - `cancel`: cancelling one job, wherever it waits or runs.
//! - `refuse`: refusing jobs after a worker's initializer failed.
//! - `results`: reading a worker's socket and completing its jobs; recycling checks.
//! - `workers`: spawn, attach, timers, kill, reap, finalize.
//! - `phase`: a live worker's [`Phase`](phase::Phase) and its pure transitions.
//! - `zygote_link`: the fork server's requests, replies, death and reaping.
//! - `output`: capture of the workers' stdout and stderr into the log.
//!
//! # Ordering rules
//!
//! - Each job's completion is called exactly once, on this thread: it is moved out of the job
//!   when called, and a job is always in exactly one place — the shared queue, a worker's in-flight
//!   list, or the requeue list.
//! - Results come as frames on the socket or, when small, in the job's result slot in the memory
//!   shared with the worker (`claim`, "Result slots"): slot results are taken at the start of each
//!   turn, before each frame read, and when the worker is finalized; before sleeping this thread
//!   marks itself asleep in every worker's memory and looks once more, so a slot result is never
//!   left waiting (the worker wakes it with a `NOTIFY` frame).
//! - A worker's in-flight list is in send order; results must arrive in that order (the worker
//!   runs jobs one at a time, see `worker`), so the first unanswered job is the running one, and
//!   its running time starts when its predecessor's result arrives (or when it was sent to an
//!   idle worker). The job timeout is measured from there.
//! - A worker is finalized (its jobs resolved) only once its exit status is known, and only after
//!   what is left in its socket has been read: results written just before death still count.
//!   Then the job it was running — the one its claim word says it started (`claim`), none if
//!   it died idle — fails (`WorkerDied`, `TimedOut`) or is retried, and every other job it held,
//!   which never started, goes back to the *front* of the queue: jobs written to a worker that
//!   was already dying are sent again, never failed.
//! - Jobs are taken from the shared queue only when some worker has room in the window (`pace`:
//!   1 for jobs longer than a round trip, up to the pipeline for tiny ones), so the queue's
//!   bound is real backpressure, and jobs wait in the one parent-side queue, not bound to a
//!   worker. When the queue is empty and a worker idles while another holds jobs it has not
//!   started, those are taken back through their claim words (`claim::revoke`, which fails for
//!   a job just started) and sent to the idle one: a job waits behind another only while every
//!   worker is busy. Counters are published (and waiters woken) once per loop turn,
//!   after the completions of that turn have run, so `join` returns only after every callback.
//! - Exit statuses come from the fork server (its `X` messages) or from a pidfd per exec'd worker
//!   followed by `waitpid(pid)`: never `waitpid(-1)`, which would steal the host's children. A
//!   worker whose socket reaches end of stream unasked is `SIGKILL`ed (its process group) so
//!   that the status always comes; if the fork server itself dies, its workers died with it
//!   (`PR_SET_PDEATHSIG`) and are finalized at once as killed, and the pool turns fatal. The
//!   fork server itself is reaped when its pidfd turns readable, not when its socket closes:
//!   a dying process closes its descriptors before it becomes a zombie.
//! - `terminate` cancels every unfinished job at once (completions called with `Cancelled`)
//!   before the workers are killed, so results that still arrive find no job and are dropped.

mod cancel;
mod credit;
mod jobs;
mod output;
mod phase;
mod refuse;
mod results;
mod shared;
mod workers;
mod zygote_link;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

pub(crate) use self::credit::{MessageSink, SinkState};
use self::output::OutputPipe;
use self::phase::Phase;
pub(crate) use self::shared::{Completion, Failure, Job, NO_TICKET, Raw, Shared, StopMode};
pub(crate) use self::zygote_link::Pending;
use super::frame::InBuf;
use super::pace::Pace;
use super::zygote::{ToZygote, Zygote};
use crate::lifecycle::{Action, Event, Instance, State};
use crate::policy::{Jitter, Policy};
use crate::pool::PoolError;
use crate::sys::memfd::SharedWords;

/// The frozen settings of the loop.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) workers: usize,
    pub(crate) pipeline: usize,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) max_jobs_per_worker: Option<u64>,
    pub(crate) max_rss_bytes: Option<u64>,
    pub(crate) policy: Policy,
}

/// How workers are started.
pub(crate) enum Spawner {
    /// Forked by the fork server.
    Fork {
        zygote: Option<Zygote>,
        /// Requests not sent yet (the socket was full).
        outq: VecDeque<ToZygote>,
        writable: bool,
        /// Spawns asked for, by token.
        pending: HashMap<u64, Pending>,
        next_token: u64,
    },
    /// `/proc/self/exe` re-executed in the worker role.
    ExecSelf { arg0: OsString, args: Vec<OsString> },
    /// A pool built inside another pool's exec-self worker: it never runs anything.
    Inert(String),
}

const WAKER: Token = Token(0);
const ZYGOTE: Token = Token(1);
/// The pidfd of a fork server whose socket closed but that was not reaped yet.
const ZYGOTE_PIDFD: Token = Token(2);
const FIRST_TOKEN: usize = 3;
/// How long a stopping pool waits for its workers before giving up on them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a token belongs to.
enum Owner {
    Sock { slot: SlotIndex, generation: u64 },
    Pidfd { slot: SlotIndex, generation: u64 },
    OutputPipe(OutputPipe),
}

/// A job on its way through a worker.
struct Sent {
    id: u64,
    /// Its claim word.
    word: u32,
    /// When it was written.
    sent_at: Instant,
    /// The worker held other jobs then: it starts when the one before it is answered.
    behind: bool,
    job: Job,
}

/// One live worker process and the pool's ends of it.
struct Proc {
    generation: u64,
    pid: i32,
    sock: mio::net::UnixStream,
    sock_token: Token,
    /// The socket has not reached end of stream (and is registered). Independent of `phase`:
    /// a worker may die, and its socket close, in any phase.
    sock_open: bool,
    /// How its exit status will come.
    reaper: Reaper,
    /// Bytes for the worker not written yet, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// The socket is registered for writable events (`out` has bytes the socket refused).
    /// Independent of `phase`: it mirrors the outgoing buffer, which any phase may fill.
    write_interest: bool,
    inbuf: InBuf,
    inflight: VecDeque<Sent>,
    /// The claim words shared with the worker, and those not holding an in-flight job.
    claims: SharedWords,
    free_words: Vec<u32>,
    /// When the first in-flight job started running.
    running_since: Instant,
    jobs_done: u64,
    jobs_sent: u64,
    results_since_rss: u32,
    rss_checked: Instant,
    /// Serving, on its way out, or killed (see `phase`).
    phase: Phase,
    /// The id of the job whose timeout killed it.
    timed_out: Option<u64>,
    /// The id of the running job whose cancellation killed it.
    cancelled: Option<u64>,
    /// Its initializer failed: the reason it sent.
    init_failed: Option<String>,
}

/// How a worker's exit status comes.
enum Reaper {
    /// The fork server reports it (its `X` message).
    ForkServer,
    /// An exec'd worker's pidfd turns readable; then `waitpid(pid)`.
    Pidfd(OwnedFd, Token),
    /// An exec'd worker without a pidfd (Linux < 5.3): `waitpid(pid, WNOHANG)` on a short timer.
    PollWaitpid,
}

struct WorkerSlot {
    inst: Instance,
    proc: Option<Proc>,
}

/// A worker slot's position in [`Engine`]'s slots: the `N` of `pool[N]` in log lines and of
/// [`crate::pool::INDEX_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SlotIndex(pub(crate) usize);

impl SlotIndex {
    /// Every slot of a pool of `n`, in order.
    fn all(n: usize) -> impl Iterator<Item = SlotIndex> {
        (0..n).map(SlotIndex)
    }
}

impl std::fmt::Display for SlotIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Index<SlotIndex> for Vec<WorkerSlot> {
    type Output = WorkerSlot;
    fn index(&self, i: SlotIndex) -> &WorkerSlot {
        &self[i.0]
    }
}

impl std::ops::IndexMut<SlotIndex> for Vec<WorkerSlot> {
    fn index_mut(&mut self, i: SlotIndex) -> &mut WorkerSlot {
        &mut self[i.0]
    }
}

/// Counters of this thread, published into [`PoolStats`].
#[derive(Debug, Default, Clone)]
struct Counters {
    finished_delta: u64,
    completed: u64,
    worker_deaths: u64,
    recycled: u64,
    timed_out: u64,
    requeued: u64,
    retried: u64,
    moved: u64,
    cancelled: u64,
}

/// The I/O thread's state. See the module documentation.
pub(crate) struct Engine {
    settings: Settings,
    shared: Arc<Shared>,
    poll: Poll,
    spawner: Spawner,
    slots: Vec<WorkerSlot>,
    owners: HashMap<Token, Owner>,
    pipe_backlog: Vec<Token>,
    next_token: usize,
    next_id: u64,
    next_gen: u64,
    requeue: Vec<Job>,
    intake: Vec<Job>,
    /// The shared queue was empty after the last intake.
    queue_empty: bool,
    /// Observed job latencies: the pipeline window.
    pace: Pace,
    counters: Counters,
    fatal: Option<String>,
    /// `fatal` is set only because every slot is retired: [`Engine::revive`] may clear it.
    fatal_from_slots: bool,
    /// The failure jobs are refused with (an initializer's); `fatal` says it in words.
    failure: Option<PoolError>,
    stopping: Option<StopMode>,
    stop_deadline: Option<Instant>,
    /// Spreads restart delays.
    jitter: Jitter,
    now: Instant,
    pids_dirty: bool,
    /// A fork server whose control socket closed before it could be reaped (its exit is not
    /// complete when its descriptors close): reaped when its pidfd turns readable.
    dead_zygote: Option<(i32, Option<OwnedFd>)>,
    page_size: u64,
}

impl Engine {
    /// The loop's state; nothing runs until [`Engine::run`].
    pub(crate) fn new(
        settings: Settings,
        shared: Arc<Shared>,
        poll: Poll,
        spawner: Spawner,
    ) -> Engine {
        let fatal = match &spawner {
            Spawner::Inert(why) => Some(why.clone()),
            _ => None,
        };
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        let slots = (0..settings.workers)
            .map(|_| WorkerSlot {
                inst: Instance::new(),
                proc: None,
            })
            .collect();
        Engine {
            settings,
            shared,
            poll,
            spawner,
            slots,
            owners: HashMap::new(),
            pipe_backlog: Vec::new(),
            next_token: FIRST_TOKEN,
            next_id: 1,
            next_gen: 1,
            requeue: Vec::new(),
            intake: Vec::new(),
            queue_empty: true,
            pace: Pace::default(),
            counters: Counters::default(),
            fatal,
            fatal_from_slots: false,
            failure: None,
            stopping: None,
            stop_deadline: None,
            jitter: Jitter::from_entropy(),
            now: Instant::now(),
            pids_dirty: true,
            dead_zygote: None,
            page_size,
        }
    }

    /// The fork server's pid, if there is one.
    pub(crate) fn fork_server_pid(&self) -> Option<i32> {
        match &self.spawner {
            Spawner::Fork {
                zygote: Some(z), ..
            } => Some(z.pid),
            _ => None,
        }
    }

    /// Runs the loop until the pool is stopped and every worker is gone.
    pub(crate) fn run(self) {
        ON_IO_THREAD.with(|f| f.set(true));
        // Whatever way this thread ends — a panic included — waiters in join(), wait() and
        // imap_unordered must learn that it did, or they would wait for ever. The guard is
        // dropped after `serve`'s frame, hence after the engine and every completion it still held
        // (a dropped completion delivers its outcome): by the time waiters are woken, every outcome
        // that will ever exist has been delivered.
        let _done = IoDoneOnExit(Arc::clone(&self.shared));
        self.serve();
    }

    fn serve(mut self) {
        if let Spawner::Fork {
            zygote: Some(z), ..
        } = &self.spawner
        {
            let fd = z.ctl.as_raw_fd();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut SourceFd(&fd), ZYGOTE, interest)
            {
                self.fatal = Some(format!("cannot watch the fork server: {e}"));
            }
        }
        if self.fatal.is_none() {
            for i in SlotIndex::all(self.slots.len()) {
                self.apply(i, Event::Start);
            }
        }
        let mut events = Events::with_capacity(256);
        loop {
            self.now = Instant::now();
            self.drain_slots();
            self.take_jobs();
            self.take_cancels();
            self.assign();
            self.grant_credits();
            self.flush_all();
            self.check_timers();
            self.publish();
            if self.finished() {
                break;
            }
            self.wait(&mut events);
            self.now = Instant::now();
            for ev in events.iter() {
                self.dispatch(ev);
            }
            self.drain_pipe_backlog();
        }
        self.cleanup();
        self.publish();
    }

    /// Waits for events until the next deadline (not at all while output is backlogged, or a
    /// result already waits in a slot).
    fn wait(&mut self, events: &mut Events) {
        let mut timeout = if self.pipe_backlog.is_empty() {
            self.next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        // Results left in slots from now on wake this thread (see `claim`).
        let asleep = timeout != Some(Duration::ZERO);
        if asleep && self.set_asleep(true) {
            timeout = Some(Duration::ZERO);
        }
        let polled = self.poll.poll(events, timeout);
        if asleep {
            self.set_asleep(false);
        }
        if let Err(e) = polled
            && e.kind() != ErrorKind::Interrupted
        {
            log::error!("pool {}: epoll_wait failed: {e}", self.settings.name);
            self.fatal
                .get_or_insert_with(|| format!("epoll_wait failed: {e}"));
            self.stopping = Some(StopMode::Terminate);
        }
    }

    fn complete(&mut self, completion: Completion, raw: Raw<'_>) {
        call_completion(&self.settings.name, completion, raw);
        self.counters.finished_delta += 1;
    }

    fn dispatch(&mut self, ev: &mio::event::Event) {
        let token = ev.token();
        match token {
            WAKER => {}
            ZYGOTE_PIDFD => self.reap_dead_zygote(Duration::ZERO),
            ZYGOTE => {
                if ev.is_writable() {
                    self.flush_zygote();
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read_zygote();
                }
            }
            _ => match self.owners.get(&token) {
                Some(&Owner::Sock { slot, generation }) => {
                    if !self.is_current(slot, generation) {
                        return;
                    }
                    if ev.is_writable() {
                        self.flush(slot);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read_sock(slot);
                    }
                }
                Some(&Owner::Pidfd { slot, generation }) if self.is_current(slot, generation) => {
                    self.try_reap(slot);
                }
                Some(Owner::Pidfd { .. }) => {}
                Some(Owner::OutputPipe(_)) => self.read_pipe(token),
                None => {}
            },
        }
    }

    fn is_current(&self, slot: SlotIndex, generation: u64) -> bool {
        self.slots[slot]
            .proc
            .as_ref()
            .is_some_and(|p| p.generation == generation)
    }

    /// Feeds `event` to the slot's instance and carries out the actions, including the events
    /// they cause in turn (a synchronous spawn's `Spawned`).
    fn apply(&mut self, slot: SlotIndex, event: Event) {
        let mut events = vec![event];
        while let Some(ev) = events.pop() {
            let jitter = self.jitter.next_unit();
            let actions = self.slots[slot]
                .inst
                .step(&self.settings.policy, ev, self.now, jitter);
            for action in actions {
                match action {
                    Action::Spawn => match self.spawn(slot) {
                        Ok(Some(pid)) => events.push(Event::Spawned { pid }),
                        Ok(None) => {}
                        Err(e) => {
                            log::error!(
                                "{}[{slot}]: cannot start a worker: {e}",
                                self.settings.name
                            );
                            events.push(Event::SpawnFailed);
                        }
                    },
                    Action::Stop { pid } => {
                        if self.slots[slot].proc.as_ref().is_some_and(|p| p.pid == pid) {
                            self.ask_stop(slot);
                        }
                    }
                    Action::Kill { pid } => {
                        if self.slots[slot].proc.as_ref().is_some_and(|p| p.pid == pid) {
                            self.kill(slot);
                        }
                    }
                    Action::Log { level, message } => {
                        log::log!(level, "{}[{slot}]: {message}", self.settings.name);
                    }
                }
            }
        }
        self.check_fatal();
    }

    /// A graceful stop: the worker's "stop signal" is a `Shutdown` frame once it is idle.
    fn ask_stop(&mut self, slot: SlotIndex) {
        if self.stopping == Some(StopMode::Terminate) {
            self.kill(slot);
            return;
        }
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        p.phase = p.phase.stop();
        if p.phase == Phase::Stopping && p.inflight.is_empty() {
            self.send_shutdown(slot);
        }
    }

    /// Restarts every retired slot — stopped after a crash loop, or by a restart policy that
    /// does not restart — with its crash-loop count reset; and if the pool had turned fatal only
    /// because every slot was retired, it runs jobs again.
    fn revive(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.revive_after_initializer();
        if self.fatal_from_slots {
            log::info!("pool {}: revived; accepting jobs again", self.settings.name);
            self.fatal = None;
            self.fatal_from_slots = false;
        }
        if self.fatal.is_some() {
            return; // the fork server is gone (or worse): nothing can be started
        }
        for i in SlotIndex::all(self.slots.len()) {
            if retired(&self.slots[i]) {
                log::info!(
                    "{}[{i}]: reviving the retired worker slot",
                    self.settings.name
                );
                self.apply(i, Event::Start);
            }
        }
    }

    fn check_fatal(&mut self) {
        if self.fatal.is_some() || self.stopping.is_some() || self.slots.is_empty() {
            return;
        }
        let all_down = self
            .slots
            .iter()
            .all(|s| s.proc.is_none() && matches!(s.inst.state, State::Fatal | State::Exited));
        if !all_down {
            return;
        }
        let last = self.slots.iter().filter_map(|s| s.inst.last_exit).last();
        let last = last.map(|s| format!(" (last: {s})")).unwrap_or_default();
        let why = if self.slots.iter().any(|s| s.inst.state == State::Fatal) {
            format!(
                "pool {}: every worker is down after a crash loop{last}: more than {} restarts \
                 within {}; the pool gave up",
                self.settings.name,
                self.settings.policy.max_restarts,
                crate::policy::fmt_duration(self.settings.policy.restart_window)
            )
        } else {
            format!(
                "pool {}: no worker left{last} (restart = {})",
                self.settings.name,
                self.settings.policy.restart.name()
            )
        };
        log::error!("{why}");
        self.fatal = Some(why);
        self.fatal_from_slots = true;
    }

    fn begin_stop(&mut self, mode: StopMode) {
        self.stopping = Some(mode);
        self.stop_deadline = None;
        if mode == StopMode::Terminate {
            // Unfinished jobs are cancelled now; results that still arrive find no job.
            for i in SlotIndex::all(self.slots.len()) {
                if let Some(p) = self.slots[i].proc.as_mut() {
                    let jobs = std::mem::take(&mut p.inflight);
                    for sent in jobs {
                        self.complete(sent.job.completion, Raw::Failed(Failure::Cancelled));
                    }
                }
            }
            for job in std::mem::take(&mut self.requeue) {
                self.complete(job.completion, Raw::Failed(Failure::Cancelled));
            }
            for job in std::mem::take(&mut self.intake) {
                self.complete(job.completion, Raw::Failed(Failure::Cancelled));
            }
            self.stop_deadline = Some(self.now + STOP_GRACE);
        }
        let event = match mode {
            StopMode::Graceful => Event::Stop,
            StopMode::Terminate => Event::Kill,
        };
        for i in SlotIndex::all(self.slots.len()) {
            self.apply(i, event.clone());
        }
    }

    /// Whether the loop can end: stopped, and no worker left or coming.
    fn finished(&self) -> bool {
        if self.stopping.is_none() {
            return false;
        }
        let pending = match &self.spawner {
            Spawner::Fork { pending, .. } => !pending.is_empty(),
            _ => false,
        };
        !pending && self.slots.iter().all(|s| s.proc.is_none())
    }

    /// After the loop: output drained, fork server closed and reaped.
    fn cleanup(&mut self) {
        let tokens: Vec<Token> = self
            .owners
            .iter()
            .filter(|(_, o)| matches!(o, Owner::OutputPipe(_)))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.read_pipe(t);
        }
        self.stop_zygote();
    }
}

/// Marks the I/O thread finished when dropped (see [`Engine::run`]).
struct IoDoneOnExit(Arc<Shared>);

impl Drop for IoDoneOnExit {
    /// Jobs still queued (only after a panic of the I/O thread: a normal end has resolved them)
    /// fail, the pool closes, and waiters learn that the thread ended.
    fn drop(&mut self) {
        self.0.finish_io(
            || Failure::Fatal("the pool's I/O thread ended before this job ran".into()),
            |_| {},
        );
    }
}

impl Drop for Engine {
    /// An engine that never ran (the pool was dropped unused) still has a fork server to stop.
    fn drop(&mut self) {
        self.stop_zygote();
    }
}

thread_local! {
    /// Set on the I/O thread: a callback that submits must not block on a full queue (only
    /// this thread could make room).
    pub(crate) static ON_IO_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a slot is retired: no worker and none coming (a crash loop, or a policy that does
/// not restart), until [`crate::pool::Pool::revive`].
fn retired(s: &WorkerSlot) -> bool {
    s.proc.is_none() && matches!(s.inst.state, State::Fatal | State::Exited)
}

/// Whether a worker may be given new jobs.
fn eligible(p: &Proc) -> bool {
    p.sock_open && p.phase.takes_jobs()
}

/// Calls a completion, containing a panic of the user's callback so that the I/O thread survives.
fn call_completion(name: &str, completion: Completion, raw: Raw<'_>) {
    if catch_unwind(AssertUnwindSafe(|| completion.call(raw))).is_err() {
        log::error!("pool {name}: a job callback panicked (the pool carries on)");
    }
}
