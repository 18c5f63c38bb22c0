//! The pool's I/O thread: one mio event loop that owns every worker socket, output pipe, pidfd,
//! timer and per-worker [`Instance`], and the only code that talks to workers.
//!
//! It is not generic: jobs arrive already encoded, with a type-erased completion ([`Sink`]) that
//! decodes the result in the typed layer. The API threads and this thread share only
//! [`Shared`]: the bounded queue of jobs not yet sent, the flags (`closed`, `stop`), counters
//! and a stats snapshot, under one mutex, plus a `mio::Waker`.
//!
//! **Ordering rules.**
//! - Each job's sink is called exactly once, on this thread: it is moved out of the job when
//!   called, and a job is always in exactly one place — the shared queue, a worker's in-flight
//!   list, or the requeue list.
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
//!   after the sinks of that turn have run, so `join` returns only after every callback.
//! - Exit statuses come from the fork server (its `X` messages) or from a pidfd per exec'd worker
//!   followed by `waitpid(pid)`: never `waitpid(-1)`, which would steal the host's children. A
//!   worker whose socket reaches end of stream unasked is `SIGKILL`ed (its process group) so
//!   that the status always comes; if the fork server itself dies, its workers died with it
//!   (`PR_SET_PDEATHSIG`) and are finalized at once as killed, and the pool turns fatal. The
//!   fork server itself is reaped when its pidfd turns readable, not when its socket closes:
//!   a dying process closes its descriptors before it becomes a zombie.
//! - `terminate` cancels every unfinished job at once (sinks called with `Cancelled`) before the
//!   workers are killed, so results that still arrive find no job and are dropped.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::PoolStats;
use super::claim::{self, Claim};
use super::frame::{self, InBuf};
use super::pace::Pace;
use super::zygote::{self, Reply, Request, Zygote};
use crate::lifecycle::{Action, Event, Instance, State};
use crate::policy::{ExitStatus, Jitter, Policy};
use crate::stream::LineFramer;
use crate::sys::memfd::SharedWords;
use crate::sys::{self, ChildSetup};

/// Where a job's outcome goes; called exactly once, on the I/O thread.
///
/// A sink dropped without being called (a job lost to a bug, e.g. a panic of the I/O thread)
/// delivers [`Failure::Fatal`] from its destructor, so that a waiter never waits forever.
pub(crate) struct Sink(Option<Deliver>);

/// The boxed completion inside a [`Sink`].
type Deliver = Box<dyn FnOnce(Raw<'_>) + Send>;

impl Sink {
    /// A sink running `f` with the outcome.
    pub(crate) fn new(f: impl FnOnce(Raw<'_>) + Send + 'static) -> Sink {
        Sink(Some(Box::new(f)))
    }

    /// For a job that was refused (its submitter gets it back): it will never have an outcome.
    pub(crate) fn defuse(&mut self) {
        self.0 = None;
    }

    /// Delivers the outcome.
    pub(crate) fn call(mut self, raw: Raw<'_>) {
        if let Some(f) = self.0.take() {
            f(raw);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let why = "the pool stopped before this job had an outcome".to_string();
            // May run while unwinding: a second panic must not abort the process.
            let _ = catch_unwind(AssertUnwindSafe(|| f(Raw::Failed(Failure::Fatal(why)))));
        }
    }
}

/// A job's outcome before decoding.
pub(crate) enum Raw<'a> {
    /// The worker's answer: postcard of `Wire<O, E>` (or `Vec<Wire<O, E>>` for a chunk).
    Done(&'a [u8]),
    /// The job did not get an answer.
    Failed(Failure),
    /// The job could not be encoded; it never reached the pool.
    Codec(String),
}

/// Why a job got no answer from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The worker died while running it.
    WorkerDied(ExitStatus),
    /// It ran longer than its timeout; the worker was killed.
    TimedOut,
    /// `terminate()` came first.
    Cancelled,
    /// The pool cannot run jobs any more; why.
    Fatal(String),
}

/// One job (or chunk), encoded, with its completion.
pub(crate) struct Job {
    /// [`frame::JOB`] or [`frame::CHUNK`].
    pub(crate) kind: u8,
    /// The frame body after the id.
    pub(crate) body: Vec<u8>,
    /// How many jobs this is (a chunk's length, else 1).
    pub(crate) items: u32,
    /// A per-job timeout: `None` uses the pool's, `Some(None)` means none.
    pub(crate) timeout: Option<Option<Duration>>,
    /// Retries left after a worker death or timeout.
    pub(crate) retries: u32,
    /// The completion.
    pub(crate) sink: Sink,
}

/// How the I/O thread is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// Every job is done: stop the workers gracefully, then leave.
    Graceful,
    /// Cancel every unfinished job, kill the workers, leave.
    Terminate,
}

/// What the API threads and the I/O thread share.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Submitters blocked on a full queue wait here.
    pub(crate) not_full: Condvar,
    /// `join` and `terminate` wait here for progress and for the I/O thread's end.
    pub(crate) changed: Condvar,
    waker: Waker,
    wake_pending: AtomicBool,
    /// [`crate::pool::Pool::revive`] was called: restart the retired worker slots.
    pub(crate) revive: AtomicBool,
}

/// The shared state under [`Shared`]'s mutex.
pub(crate) struct Inner {
    /// Jobs accepted but not yet sent to a worker (requeued ones at the front).
    pub(crate) queue: VecDeque<Job>,
    /// The queue's bound for `submit`.
    pub(crate) capacity: usize,
    /// Submitters waiting on `not_full`.
    pub(crate) blocked: usize,
    /// Threads waiting on `changed`.
    pub(crate) waiting: usize,
    /// No new jobs are accepted.
    pub(crate) closed: bool,
    /// The I/O thread is asked to stop.
    pub(crate) stop: Option<StopMode>,
    /// Jobs accepted (each chunk counts once).
    pub(crate) accepted: u64,
    /// Jobs whose sink has run.
    pub(crate) finished: u64,
    /// The I/O thread has ended (or never could start).
    pub(crate) io_done: bool,
    /// The latest snapshot, published by the I/O thread.
    pub(crate) stats: PoolStats,
    /// Run once when the I/O thread ends (see [`Shared::on_io_done`]), by id.
    io_done_wakers: Vec<(u64, Box<dyn FnOnce() + Send>)>,
    next_waker: u64,
}

impl Shared {
    /// The shared state and the waker of `poll`.
    pub(crate) fn new(poll: &Poll, capacity: usize) -> std::io::Result<Shared> {
        Ok(Shared {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                capacity,
                blocked: 0,
                waiting: 0,
                closed: false,
                stop: None,
                accepted: 0,
                finished: 0,
                io_done: false,
                stats: PoolStats::default(),
                io_done_wakers: Vec::new(),
                next_waker: 0,
            }),
            not_full: Condvar::new(),
            changed: Condvar::new(),
            waker: Waker::new(poll.registry(), WAKER)?,
            wake_pending: AtomicBool::new(false),
            revive: AtomicBool::new(false),
        })
    }

    /// Marks the I/O thread as ended, wakes every thread waiting on the condition variables and
    /// runs the registered wakers. Idempotent.
    fn mark_io_done(&self) {
        let mut inner = self.lock();
        let first = !inner.io_done;
        inner.io_done = true;
        let wakers = std::mem::take(&mut inner.io_done_wakers);
        drop(inner);
        if first {
            self.changed.notify_all();
            self.not_full.notify_all();
        }
        for (_, wake) in wakers {
            wake();
        }
    }

    /// Ends the pool's I/O: closes the pool, applies `update` (under the lock), fails every job
    /// still queued with `failure()` (outside the lock: a sink may run a user's callback), then
    /// marks the I/O thread ended — so that woken waiters find every outcome delivered.
    pub(crate) fn finish_io(&self, failure: impl Fn() -> Failure, update: impl FnOnce(&mut Inner)) {
        let orphans: Vec<Job> = {
            let mut inner = self.lock();
            inner.closed = true;
            update(&mut inner);
            inner.queue.drain(..).collect()
        };
        for job in orphans {
            // May run while the I/O thread unwinds: a panicking callback must neither abort
            // the process nor keep the end from being marked.
            let sink = job.sink;
            let raw = Raw::Failed(failure());
            if catch_unwind(AssertUnwindSafe(|| sink.call(raw))).is_err() {
                log::error!("pool: a job callback panicked (its job failed with the pool's end)");
            }
        }
        self.mark_io_done();
    }

    /// Registers `wake` to run once when the I/O thread ends, for a waiter that cannot sleep on
    /// the condition variables (`imap_unordered` sleeps on its channel). Returns `None`, without
    /// registering, if it has ended already.
    pub(crate) fn on_io_done(&self, wake: Box<dyn FnOnce() + Send>) -> Option<u64> {
        let mut inner = self.lock();
        if inner.io_done {
            return None;
        }
        let id = inner.next_waker;
        inner.next_waker += 1;
        inner.io_done_wakers.push((id, wake));
        Some(id)
    }

    /// Unregisters a waker that is no longer needed.
    pub(crate) fn forget_io_done(&self, id: u64) {
        self.lock().io_done_wakers.retain(|(i, _)| *i != id);
    }

    /// Locks the shared state (a panic elsewhere does not poison the pool).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the I/O thread, at most once per turn of its loop.
    pub(crate) fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }
}

/// The frozen settings of the loop.
#[derive(Debug, Clone)]
pub(crate) struct Config {
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
        outq: VecDeque<Request>,
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

/// The pool's ends of a worker being started (forked by the fork server, or exec'd).
pub(crate) struct Pending {
    slot: usize,
    claims: SharedWords,
    sock: std::os::unix::net::UnixStream,
    out: File,
    err: File,
}

const WAKER: Token = Token(0);
const ZYGOTE: Token = Token(1);
/// The pidfd of a fork server whose socket closed but that was not reaped yet.
const ZYGOTE_PIDFD: Token = Token(2);
const FIRST_TOKEN: usize = 3;
/// Bytes read from one output pipe per turn before serving others.
const PIPE_BUDGET: usize = 256 * 1024;
/// Longest captured output line; longer ones are split.
const MAX_LINE: usize = 16 * 1024;
/// How long a stopping pool waits for its workers before giving up on them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// RSS is read at most this often per worker…
const RSS_PERIOD: Duration = Duration::from_millis(100);
/// …or after this many results, whichever comes first.
const RSS_RESULTS: u32 = 64;

/// What a token belongs to.
enum Owner {
    Sock { slot: usize, generation: u64 },
    Pidfd { slot: usize, generation: u64 },
    Pipe(Pipe),
}

/// A worker's stdout or stderr, read into the log line by line.
struct Pipe {
    file: File,
    framer: LineFramer,
    slot: usize,
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
    sock_open: bool,
    pidfd: Option<(OwnedFd, Token)>,
    out: Vec<u8>,
    out_pos: usize,
    writable: bool,
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
    /// No new jobs: it is being recycled or stopped.
    draining: bool,
    /// Recycle once idle.
    recycle: bool,
    shutdown_sent: bool,
    killed: bool,
    /// The pool asked it to go: its exit is not a death.
    expected: bool,
    /// The id of the job whose timeout killed it.
    timed_out: Option<u64>,
    /// Poll `waitpid` (no pidfd on this kernel).
    reap_poll: bool,
}

struct Slot {
    inst: Instance,
    proc: Option<Proc>,
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
}

/// The I/O thread's state. See the module documentation.
pub(crate) struct Engine {
    cfg: Config,
    shared: Arc<Shared>,
    poll: Poll,
    spawner: Spawner,
    slots: Vec<Slot>,
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
    pub(crate) fn new(cfg: Config, shared: Arc<Shared>, poll: Poll, spawner: Spawner) -> Engine {
        let fatal = match &spawner {
            Spawner::Inert(why) => Some(why.clone()),
            _ => None,
        };
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        let slots = (0..cfg.workers)
            .map(|_| Slot {
                inst: Instance::new(),
                proc: None,
            })
            .collect();
        Engine {
            cfg,
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
        // dropped after `serve`'s frame, hence after the engine and every sink it still held
        // (a dropped sink delivers its outcome): by the time waiters are woken, every outcome
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
            for i in 0..self.slots.len() {
                self.apply(i, Event::Start);
            }
        }
        let mut events = Events::with_capacity(256);
        loop {
            self.now = Instant::now();
            self.take_jobs();
            self.assign();
            self.flush_all();
            self.check_timers();
            self.publish();
            if self.finished() {
                break;
            }
            let timeout = if self.pipe_backlog.is_empty() {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != ErrorKind::Interrupted
            {
                log::error!("pool {}: epoll_wait failed: {e}", self.cfg.name);
                self.fatal
                    .get_or_insert_with(|| format!("epoll_wait failed: {e}"));
                self.stopping = Some(StopMode::Terminate);
            }
            self.now = Instant::now();
            for ev in events.iter() {
                self.dispatch(ev);
            }
            self.drain_pipe_backlog();
        }
        self.cleanup();
        self.publish();
    }

    // ----- the shared queue -------------------------------------------------------------

    /// Reads the flags, puts requeued jobs back at the front, and takes as many jobs as the
    /// workers have room for.
    fn take_jobs(&mut self) {
        self.shared.wake_pending.store(false, Ordering::Release);
        if self.shared.revive.load(Ordering::Relaxed)
            && self.shared.revive.swap(false, Ordering::AcqRel)
        {
            self.revive();
        }
        let window = self.window();
        let room: usize = if self.fatal.is_some() || self.stopping.is_some() {
            0
        } else {
            self.slots
                .iter()
                .filter_map(|s| s.proc.as_ref())
                .filter(|p| eligible(p))
                .map(|p| window.saturating_sub(p.inflight.len()))
                .sum()
        };
        let mut failed: Vec<(Job, Failure)> = Vec::new();
        let mut inner = self.shared.lock();
        for job in self.requeue.drain(..).rev() {
            inner.queue.push_front(job);
        }
        let asked = inner.stop;
        let fail = match (&self.fatal, self.stopping.or(asked)) {
            (_, Some(StopMode::Terminate)) => Some(Failure::Cancelled),
            (Some(why), _) => Some(Failure::Fatal(why.clone())),
            _ => None,
        };
        if let Some(f) = fail {
            failed.extend(inner.queue.drain(..).map(|j| (j, f.clone())));
        } else {
            let n = room.min(inner.queue.len());
            self.intake.extend(inner.queue.drain(..n));
        }
        self.queue_empty = inner.queue.is_empty();
        // Blocked submitters are woken once the queue is down to half (not on every job taken),
        // so that a producer faster than the workers refills in batches instead of being woken
        // and put back to sleep for each job.
        if inner.blocked > 0
            && (inner.queue.len() <= inner.capacity / 2 || inner.closed)
            && (n_taken(&self.intake, &failed) || inner.closed)
        {
            self.shared.not_full.notify_all();
        }
        drop(inner);
        for (job, f) in failed {
            self.complete(job.sink, Raw::Failed(f));
        }
        if let Some(mode) = asked
            && self.stopping != Some(StopMode::Terminate)
            && self.stopping != Some(mode)
        {
            self.begin_stop(mode);
        }
    }

    /// Jobs a worker may hold now (see `pace`).
    fn window(&self) -> usize {
        self.pace.window(self.cfg.pipeline)
    }

    /// Sends taken jobs to the eligible workers with the fewest in flight, idle ones first,
    /// each up to the window; then lets idle workers take back jobs waiting in busy ones.
    fn assign(&mut self) {
        let window = self.window();
        let mut jobs = std::mem::take(&mut self.intake);
        for job in jobs.drain(..) {
            match self.least_loaded(window) {
                Some(i) => self.send_job(i, job),
                None => self.requeue.push(job),
            }
        }
        self.intake = jobs;
        if self.queue_empty && self.requeue.is_empty() && self.stopping.is_none() {
            self.rebalance(window);
        }
    }

    /// The eligible worker with the fewest jobs, if it holds fewer than `window`.
    fn least_loaded(&self, window: usize) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.proc.as_ref().map(|p| (i, p)))
            .filter(|(_, p)| eligible(p) && p.inflight.len() < window)
            .min_by_key(|(_, p)| p.inflight.len())
            .map(|(i, _)| i)
    }

    /// Nothing is left to send, yet a worker is idle while another holds jobs it has not
    /// started (behind a long one, or given to the first worker up at start-up): take them
    /// back (revoke their claim words, which fails for a job the worker has just started) and
    /// send them to the idle worker — half of what the busiest holder waits on, up to the
    /// window. So a job waits behind another only while every worker is busy.
    fn rebalance(&mut self, window: usize) {
        loop {
            let Some(idle) = self.slots.iter().position(|s| {
                s.proc
                    .as_ref()
                    .is_some_and(|p| eligible(p) && p.inflight.is_empty())
            }) else {
                return;
            };
            // The holder with the most jobs waiting behind its first one.
            let Some(victim) = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.proc.as_ref().map(|p| (i, p)))
                .filter(|(i, p)| *i != idle && p.sock_open && !p.killed && p.inflight.len() > 1)
                .max_by_key(|(_, p)| p.inflight.len())
                .map(|(i, _)| i)
            else {
                return;
            };
            // Within the idle worker's quota of jobs, if it is recycled by job count.
            let quota = match (self.cfg.max_jobs_per_worker, &self.slots[idle].proc) {
                (Some(m), Some(p)) => m.saturating_sub(p.jobs_sent) as usize,
                _ => usize::MAX,
            };
            let p = self.slots[victim].proc.as_mut().expect("checked above");
            let want = (p.inflight.len() / 2).clamp(1, window).min(quota);
            let mut taken = Vec::new();
            // Never the first: it is running, or about to.
            while taken.len() < want && p.inflight.len() > 1 {
                let s = &p.inflight[1];
                if !claim::revoke(p.claims.words(), s.word as usize, s.id) {
                    break; // the worker got there first: it is moving on by itself
                }
                let sent = p.inflight.remove(1).expect("checked above");
                p.free_words.push(sent.word);
                taken.push(sent.job);
            }
            if taken.is_empty() {
                return;
            }
            self.counters.moved += taken.len() as u64;
            for job in taken {
                self.send_job(idle, job);
            }
        }
    }

    fn send_job(&mut self, slot: usize, job: Job) {
        let seq = self.next_id;
        self.next_id += 1;
        let now = self.now;
        let p = self.slots[slot].proc.as_mut().expect("eligible worker");
        let word = p
            .free_words
            .pop()
            .expect("a free claim word per job in flight");
        let id = frame::job_id(seq, word);
        claim::queue(p.claims.words(), word as usize, id);
        frame::put_header(&mut p.out, job.kind, 8 + job.body.len());
        p.out.extend_from_slice(&id.to_le_bytes());
        p.out.extend_from_slice(&job.body);
        let behind = !p.inflight.is_empty();
        if !behind {
            p.running_since = now;
        }
        p.inflight.push_back(Sent {
            id,
            word,
            sent_at: now,
            behind,
            job,
        });
        p.jobs_sent += 1;
        if self
            .cfg
            .max_jobs_per_worker
            .is_some_and(|m| p.jobs_sent >= m)
        {
            // Its quota is in flight: no more jobs; recycled once they are answered, so that a
            // worker never runs more than `max_jobs_per_worker` jobs even with pipelining.
            p.recycle = true;
            p.draining = true;
            log::info!(
                "{}[{slot}]: recycling worker (pid {}) after {} jobs",
                self.cfg.name,
                p.pid,
                p.jobs_sent
            );
        }
    }

    /// Publishes counters and the stats snapshot, and wakes whoever waits for them.
    fn publish(&mut self) {
        let pids = if self.pids_dirty {
            self.pids_dirty = false;
            Some(
                self.slots
                    .iter()
                    .map(|s| s.proc.as_ref().map(|p| p.pid))
                    .collect::<Vec<_>>(),
            )
        } else {
            None
        };
        let workers = self.slots.iter().filter(|s| s.proc.is_some()).count();
        let retired_slots: Vec<usize> =
            if self.stopping.is_some() || (self.fatal.is_some() && !self.fatal_from_slots) {
                Vec::new()
            } else {
                (0..self.slots.len())
                    .filter(|&i| retired(&self.slots[i]))
                    .collect()
            };
        let busy = self
            .slots
            .iter()
            .filter(|s| s.proc.as_ref().is_some_and(|p| !p.inflight.is_empty()))
            .count();
        let in_flight: usize = self
            .slots
            .iter()
            .filter_map(|s| s.proc.as_ref())
            .map(|p| p.inflight.len())
            .sum();
        let restarts: u64 = self.slots.iter().map(|s| u64::from(s.inst.restarts)).sum();
        let zygote = match &self.spawner {
            Spawner::Fork {
                zygote: Some(z), ..
            } => Some(z.pid),
            _ => None,
        };
        let delta = std::mem::take(&mut self.counters.finished_delta);
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        inner.finished += delta;
        let s = &mut inner.stats;
        if let Some(pids) = pids {
            s.worker_pids = pids;
        }
        s.workers = workers;
        s.retired = retired_slots;
        s.busy = busy;
        s.in_flight = in_flight;
        s.completed = self.counters.completed;
        s.worker_deaths = self.counters.worker_deaths;
        s.restarts = restarts;
        s.recycled = self.counters.recycled;
        s.timed_out = self.counters.timed_out;
        s.requeued = self.counters.requeued;
        s.retried = self.counters.retried;
        s.moved = self.counters.moved;
        s.fatal.clone_from(&self.fatal);
        s.fork_server_pid = zygote;
        s.queued = inner.queue.len();
        s.accepted = inner.accepted;
        let notify = inner.waiting > 0 && (delta > 0 || self.fatal.is_some());
        drop(guard);
        if notify {
            self.shared.changed.notify_all();
        }
    }

    fn complete(&mut self, sink: Sink, raw: Raw<'_>) {
        call_sink(&self.cfg.name, sink, raw);
        self.counters.finished_delta += 1;
    }

    // ----- events -----------------------------------------------------------------------

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
                Some(Owner::Pipe(_)) => self.read_pipe(token),
                None => {}
            },
        }
    }

    fn is_current(&self, slot: usize, generation: u64) -> bool {
        self.slots[slot]
            .proc
            .as_ref()
            .is_some_and(|p| p.generation == generation)
    }

    /// Reads results until the socket is drained; handles end of stream.
    fn read_sock(&mut self, slot: usize) {
        let mut eof = false;
        loop {
            let Some(p) = self.slots[slot].proc.as_mut() else {
                return;
            };
            if !p.sock_open {
                return;
            }
            let room = p.inbuf.spare(64 * 1024);
            let cap = room.len();
            match (&p.sock).read(room) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    p.inbuf.filled(n);
                    if !self.take_results(slot) {
                        return;
                    }
                    if n < cap {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            self.sock_closed(slot);
        } else {
            self.after_results(slot);
        }
    }

    /// Completes the jobs whose results are in the buffer; `false` after a protocol error
    /// (the worker is being killed).
    fn take_results(&mut self, slot: usize) -> bool {
        let name = &self.cfg.name;
        let now = self.now;
        let p = self.slots[slot].proc.as_mut().expect("live worker");
        let mut done = 0u64;
        let mut bad = None;
        loop {
            let f = match frame::parse(p.inbuf.data()) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(c) => {
                    bad = Some(c.0);
                    break;
                }
            };
            if f.kind != frame::RESULT && f.kind != frame::CHUNK_RESULT {
                bad = Some(format!("unexpected frame kind {}", f.kind));
                break;
            }
            let body = &p.inbuf.data()[frame::HEADER..frame::HEADER + f.len];
            let id = frame::read_id(body);
            if id.is_some() && p.inflight.is_empty() {
                // The result of a job cancelled by terminate() while the worker ran it: dropped,
                // as the module says — not a protocol error.
                p.inbuf.consume(frame::HEADER + f.len);
                continue;
            }
            if id.is_none() || p.inflight.front().map(|s| s.id) != id {
                bad = Some(format!("result for job {id:?} out of order"));
                break;
            }
            let sent = p.inflight.pop_front().expect("checked above");
            p.free_words.push(sent.word);
            if sent.behind {
                self.pace
                    .gap(now.saturating_duration_since(p.running_since));
            } else {
                self.pace.turn(now.saturating_duration_since(sent.sent_at));
            }
            self.counters.completed += u64::from(sent.job.items);
            call_sink(name, sent.job.sink, Raw::Done(&body[8..]));
            done += 1;
            p.inbuf.consume(frame::HEADER + f.len);
            p.jobs_done += 1;
            p.results_since_rss += 1;
            p.running_since = now;
        }
        self.counters.finished_delta += done;
        if let Some(why) = bad {
            log::error!(
                "{}[{slot}]: protocol error from worker (pid {}): {why}; killing it",
                self.cfg.name,
                p.pid
            );
            self.kill(slot);
            return false;
        }
        true
    }

    /// Recycling checks and graceful stops once results came in.
    fn after_results(&mut self, slot: usize) {
        let now = self.now;
        let max_rss = self.cfg.max_rss_bytes;
        let page = self.page_size;
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        if !p.draining
            && let Some(limit) = max_rss
            && p.results_since_rss > 0
            && (p.results_since_rss >= RSS_RESULTS
                || now.saturating_duration_since(p.rss_checked) >= RSS_PERIOD)
        {
            p.results_since_rss = 0;
            p.rss_checked = now;
            if let Some(rss) = rss_bytes(p.pid, page)
                && rss > limit
            {
                p.recycle = true;
                p.draining = true;
                log::info!(
                    "{}[{slot}]: recycling worker (pid {}): RSS {rss} bytes > {limit}",
                    self.cfg.name,
                    p.pid
                );
            }
        }
        if p.draining && p.inflight.is_empty() && !p.shutdown_sent && !p.killed {
            if p.recycle {
                // Idle now: a manual-restart step (not a failure); its stop action sends the
                // Shutdown frame through `ask_stop`.
                p.recycle = false;
                p.expected = true;
                self.counters.recycled += 1;
                self.apply(slot, Event::Restart);
            }
            if self.slots[slot]
                .proc
                .as_ref()
                .is_some_and(|p| !p.shutdown_sent && !p.killed)
            {
                self.send_shutdown(slot);
            }
        }
    }

    /// The worker's socket reached end of stream: make sure the process is gone, then wait for
    /// its exit status (or finalize now if no status will ever come).
    fn sock_closed(&mut self, slot: usize) {
        let fork_server_gone = matches!(self.spawner, Spawner::Fork { zygote: None, .. });
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        p.sock_open = false;
        let _ = self.poll.registry().deregister(&mut p.sock);
        self.owners.remove(&p.sock_token);
        let no_pidfd = p.pidfd.is_none();
        if !p.shutdown_sent && !p.killed {
            self.kill(slot);
        }
        if fork_server_gone {
            // Its workers died with it (PDEATHSIG = SIGKILL); nobody will report them.
            let status = ExitStatus::Signal {
                signal: libc::SIGKILL,
                core_dumped: false,
            };
            self.finalize(slot, status);
        } else if no_pidfd && let Spawner::ExecSelf { .. } = self.spawner {
            if let Some(p) = self.slots[slot].proc.as_mut() {
                p.reap_poll = true;
            }
            self.try_reap(slot);
        }
    }

    /// `waitpid(pid, WNOHANG)` for an exec'd worker; finalizes it if it has exited.
    fn try_reap(&mut self, slot: usize) {
        let Some(p) = self.slots[slot].proc.as_ref() else {
            return;
        };
        let status = match waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
            Ok(WaitStatus::Signaled(_, sig, core)) => ExitStatus::Signal {
                signal: sig as i32,
                core_dumped: core,
            },
            Err(nix::errno::Errno::ECHILD) => {
                // Someone else (the host's own `waitpid(-1)`) reaped it.
                log::warn!(
                    "{}[{slot}]: worker (pid {}) was reaped by someone else",
                    self.cfg.name,
                    p.pid
                );
                ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                }
            }
            _ => return,
        };
        self.finalize(slot, status);
    }

    /// The worker has exited with `status`: read what it left, resolve its jobs, feed the
    /// state machine.
    fn finalize(&mut self, slot: usize, status: ExitStatus) {
        if self.slots[slot].proc.as_ref().is_some_and(|p| p.sock_open) {
            // Results written just before the exit are still in the socket.
            loop {
                let p = self.slots[slot].proc.as_mut().expect("live worker");
                let room = p.inbuf.spare(64 * 1024);
                match (&p.sock).read(room) {
                    Ok(0) => break,
                    Ok(n) => {
                        p.inbuf.filled(n);
                        if !self.take_results(slot) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let Some(mut p) = self.slots[slot].proc.take() else {
            return;
        };
        self.pids_dirty = true;
        if p.sock_open {
            let _ = self.poll.registry().deregister(&mut p.sock);
            self.owners.remove(&p.sock_token);
        }
        if let Some((fd, token)) = p.pidfd.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.owners.remove(&token);
        }
        if !p.expected {
            self.counters.worker_deaths += 1;
        }
        // The job it was running is the one its claim word says it started (or the one it timed
        // out on); every other job it held never started: sent again, first.
        let mut jobs = std::mem::take(&mut p.inflight);
        let running = jobs.iter().position(|s| {
            p.timed_out == Some(s.id)
                || claim::state(p.claims.words(), s.word as usize, s.id) == Claim::Started
        });
        if let Some(front) = running.and_then(|i| jobs.remove(i)) {
            let failure = if self.stopping == Some(StopMode::Terminate) {
                Failure::Cancelled
            } else if p.timed_out == Some(front.id) {
                Failure::TimedOut
            } else {
                Failure::WorkerDied(status)
            };
            let retry = failure != Failure::Cancelled && front.job.retries > 0;
            if failure != Failure::TimedOut {
                log::warn!(
                    "{}[{slot}]: worker (pid {}) died ({status}) while running a job{}",
                    self.cfg.name,
                    p.pid,
                    if retry { "; retrying it" } else { "" }
                );
            }
            if retry {
                let mut job = front.job;
                job.retries -= 1;
                self.counters.retried += 1;
                self.requeue.push(job);
            } else {
                self.complete(front.job.sink, Raw::Failed(failure));
            }
        }
        for sent in jobs {
            if self.stopping == Some(StopMode::Terminate) {
                self.complete(sent.job.sink, Raw::Failed(Failure::Cancelled));
            } else {
                self.counters.requeued += 1;
                self.requeue.push(sent.job);
            }
        }
        drop(p);
        self.apply(slot, Event::Exited { status });
    }

    // ----- writing ----------------------------------------------------------------------

    fn flush_all(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i]
                .proc
                .as_ref()
                .is_some_and(|p| p.out_pos < p.out.len() && !p.writable)
            {
                self.flush(i);
            }
        }
    }

    /// Writes what the worker's outgoing buffer holds, without blocking; asks for a writable
    /// event when the socket is full.
    fn flush(&mut self, slot: usize) {
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        if !p.sock_open {
            p.out.clear();
            p.out_pos = 0;
            return;
        }
        while p.out_pos < p.out.len() {
            match (&p.sock).write(&p.out[p.out_pos..]) {
                Ok(n) => p.out_pos += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // A dead peer: the read side sees end of stream and handles it.
                Err(_) => {
                    p.out_pos = p.out.len();
                }
            }
        }
        let pending = p.out_pos < p.out.len();
        if !pending {
            p.out.clear();
            p.out_pos = 0;
        } else if p.out_pos > (1 << 20) {
            p.out.drain(..p.out_pos);
            p.out_pos = 0;
        }
        if pending != p.writable {
            p.writable = pending;
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = p.sock_token;
            let _ = self
                .poll
                .registry()
                .reregister(&mut p.sock, token, interest);
        }
    }

    fn send_shutdown(&mut self, slot: usize) {
        if let Some(p) = self.slots[slot].proc.as_mut() {
            frame::put_header(&mut p.out, frame::SHUTDOWN, 0);
            p.shutdown_sent = true;
            p.draining = true;
            p.expected = true;
        }
        self.flush(slot);
    }

    // ----- timers -----------------------------------------------------------------------

    fn job_deadline(&self, p: &Proc) -> Option<Instant> {
        if p.killed {
            return None;
        }
        let front = p.inflight.front()?;
        let per_job = front.job.timeout.unwrap_or(self.cfg.job_timeout)?;
        let limit = per_job.saturating_mul(front.job.items.max(1));
        p.running_since.checked_add(limit)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.stop_deadline;
        if let Some((_, None)) = self.dead_zygote {
            // No pidfd for it (Linux < 5.3): retry the reap shortly.
            let soon = self.now + Duration::from_millis(5);
            next = Some(next.map_or(soon, |n| n.min(soon)));
        }
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for s in &self.slots {
            consider(s.inst.deadline(&self.cfg.policy));
            if let Some(p) = &s.proc {
                consider(self.job_deadline(p));
                if p.reap_poll {
                    consider(Some(self.now + Duration::from_millis(5)));
                }
            }
        }
        next
    }

    fn check_timers(&mut self) {
        let now = self.now;
        if let Some((_, None)) = self.dead_zygote {
            self.reap_dead_zygote(Duration::ZERO);
        }
        for i in 0..self.slots.len() {
            if self.slots[i]
                .inst
                .deadline(&self.cfg.policy)
                .is_some_and(|d| d <= now)
            {
                self.apply(i, Event::Tick);
            }
            let Some(p) = self.slots[i].proc.as_ref() else {
                continue;
            };
            if p.reap_poll {
                self.try_reap(i);
                continue;
            }
            if self.job_deadline(p).is_some_and(|d| d <= now) {
                self.time_out(i);
            }
        }
        if self.stop_deadline.is_some_and(|d| d <= now) {
            self.stop_deadline = None;
            for i in 0..self.slots.len() {
                if let Some(p) = self.slots[i].proc.take() {
                    log::error!(
                        "{}[{i}]: worker (pid {}) did not go away after SIGKILL; abandoning it",
                        self.cfg.name,
                        p.pid
                    );
                    for sent in p.inflight {
                        self.complete(sent.job.sink, Raw::Failed(Failure::Cancelled));
                    }
                    self.slots[i].inst = Instance::new();
                }
            }
        }
    }

    /// The running job of `slot` ran out of time: kill the worker; the job fails `TimedOut`
    /// once the worker is reaped.
    fn time_out(&mut self, slot: usize) {
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        let front = p.inflight.front().expect("a running job");
        p.timed_out = Some(front.id);
        p.expected = true;
        p.draining = true;
        log::warn!(
            "{}[{slot}]: a job ran out of time after {}; killing worker (pid {})",
            self.cfg.name,
            crate::policy::fmt_duration(self.now.saturating_duration_since(p.running_since)),
            p.pid
        );
        self.counters.timed_out += 1;
        self.kill(slot);
        // Replaced like a manual restart: a job's timeout is not the worker's crash loop.
        self.apply(slot, Event::Restart);
    }

    // ----- the state machine ------------------------------------------------------------

    /// Feeds `event` to the slot's instance and carries out the actions, including the events
    /// they cause in turn (a synchronous spawn's `Spawned`).
    fn apply(&mut self, slot: usize, event: Event) {
        let mut events = vec![event];
        while let Some(ev) = events.pop() {
            let jitter = self.jitter.next_unit();
            let actions = self.slots[slot]
                .inst
                .step(&self.cfg.policy, ev, self.now, jitter);
            for action in actions {
                match action {
                    Action::Spawn => match self.spawn(slot) {
                        Ok(Some(pid)) => events.push(Event::Spawned { pid }),
                        Ok(None) => {}
                        Err(e) => {
                            log::error!("{}[{slot}]: cannot start a worker: {e}", self.cfg.name);
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
                        log::log!(level, "{}[{slot}]: {message}", self.cfg.name);
                    }
                }
            }
        }
        self.check_fatal();
    }

    /// A graceful stop: the worker's "stop signal" is a `Shutdown` frame once it is idle.
    fn ask_stop(&mut self, slot: usize) {
        if self.stopping == Some(StopMode::Terminate) {
            self.kill(slot);
            return;
        }
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        p.draining = true;
        p.expected = true;
        if !p.killed && !p.shutdown_sent && p.inflight.is_empty() {
            self.send_shutdown(slot);
        }
    }

    /// `SIGKILL` to the worker's process group, through the fork server for forked workers
    /// (it alone knows whether the pid is still theirs).
    fn kill(&mut self, slot: usize) {
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        p.killed = true;
        p.draining = true;
        let pid = p.pid;
        match &mut self.spawner {
            Spawner::Fork { outq, .. } => {
                outq.push_back(Request::kill(pid, libc::SIGKILL));
                self.flush_zygote();
            }
            _ => {
                // We reap only after the pidfd says the worker exited, so normally the pid and
                // its process group are still the worker's; but a host program's `waitpid(-1)`
                // may have reaped it behind our back.
                match &p.pidfd {
                    Some((fd, _)) => {
                        // Probe first: while the worker still holds its pid (a zombie does
                        // too), neither the pid nor its group id can have been reused, so the
                        // group may be signalled; then the worker itself, through the pidfd.
                        match sys::pidfd::pidfd_send_signal(fd.as_fd(), 0) {
                            Ok(()) => {
                                let _ = nix::sys::signal::killpg(
                                    Pid::from_raw(pid),
                                    nix::sys::signal::SIGKILL,
                                );
                                let _ = sys::pidfd::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                            }
                            // Reaped by someone else: nothing of ours to signal.
                            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                            // The call itself is refused (a seccomp filter): by pid, as before.
                            Err(_) => kill_by_pid(pid),
                        }
                    }
                    // No pidfds (kernel before 5.3): by pid, as before them.
                    None => kill_by_pid(pid),
                }
            }
        }
    }

    /// Restarts every retired slot — stopped after a crash loop, or by a restart policy that
    /// does not restart — with its crash-loop count reset; and if the pool had turned fatal only
    /// because every slot was retired, it runs jobs again.
    fn revive(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.fatal_from_slots {
            log::info!("pool {}: revived; accepting jobs again", self.cfg.name);
            self.fatal = None;
            self.fatal_from_slots = false;
        }
        if self.fatal.is_some() {
            return; // the fork server is gone (or worse): nothing can be started
        }
        for i in 0..self.slots.len() {
            if retired(&self.slots[i]) {
                log::info!("{}[{i}]: reviving the retired worker slot", self.cfg.name);
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
                self.cfg.name,
                self.cfg.policy.max_restarts,
                crate::policy::fmt_duration(self.cfg.policy.restart_window)
            )
        } else {
            format!(
                "pool {}: no worker left{last} (restart = {})",
                self.cfg.name,
                self.cfg.policy.restart.name()
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
            for i in 0..self.slots.len() {
                if let Some(p) = self.slots[i].proc.as_mut() {
                    let jobs = std::mem::take(&mut p.inflight);
                    for sent in jobs {
                        self.complete(sent.job.sink, Raw::Failed(Failure::Cancelled));
                    }
                }
            }
            for job in std::mem::take(&mut self.requeue) {
                self.complete(job.sink, Raw::Failed(Failure::Cancelled));
            }
            for job in std::mem::take(&mut self.intake) {
                self.complete(job.sink, Raw::Failed(Failure::Cancelled));
            }
            self.stop_deadline = Some(self.now + STOP_GRACE);
        }
        let event = match mode {
            StopMode::Graceful => Event::Stop,
            StopMode::Terminate => Event::Kill,
        };
        for i in 0..self.slots.len() {
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

    // ----- spawning ---------------------------------------------------------------------

    /// Starts a worker for `slot`: `Ok(Some(pid))` when it is up now, `Ok(None)` when the fork
    /// server will answer later.
    fn spawn(&mut self, slot: usize) -> std::io::Result<Option<i32>> {
        if let Some(why) = &self.fatal {
            return Err(std::io::Error::other(why.clone()));
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let (out_r, out_w) = output_pipe()?;
        let (err_r, err_w) = output_pipe()?;
        let (claims, claims_fd) = SharedWords::create(self.cfg.pipeline)?;
        match &mut self.spawner {
            Spawner::Fork {
                zygote,
                outq,
                pending,
                next_token,
                ..
            } => {
                if zygote.is_none() {
                    return Err(std::io::Error::other("the fork server is gone"));
                }
                let token = *next_token;
                *next_token += 1;
                pending.insert(
                    token,
                    Pending {
                        slot,
                        claims,
                        sock: ours,
                        out: out_r,
                        err: err_r,
                    },
                );
                outq.push_back(Request::spawn(
                    token,
                    theirs.into(),
                    out_w,
                    err_w,
                    claims_fd,
                ));
                self.flush_zygote();
                Ok(None)
            }
            Spawner::ExecSelf { arg0, args } => {
                use std::os::unix::process::CommandExt;
                let mut cmd = std::process::Command::new("/proc/self/exe");
                cmd.arg0(&*arg0)
                    .args(args.iter())
                    .env(super::WORKER_ENV, &self.cfg.name)
                    .env(super::INDEX_ENV, slot.to_string())
                    .stdin(std::process::Stdio::null())
                    .stdout(out_w)
                    .stderr(err_w)
                    .process_group(0);
                sys::pre_exec(
                    &mut cmd,
                    ChildSetup {
                        parent: std::process::id() as i32,
                        pdeathsig: Some(libc::SIGKILL),
                        ..ChildSetup::default()
                    },
                );
                // The socket goes to 3 first: the claim words must not sit on 3 then.
                let claims_fd = sys::fd::dup_at_least(claims_fd.as_fd(), 5)?;
                sys::fd::pre_exec_fd(&mut cmd, theirs.as_raw_fd(), 3);
                sys::fd::pre_exec_fd(&mut cmd, claims_fd.as_raw_fd(), 4);
                let child = cmd.spawn()?;
                let pid = child.id() as i32;
                // Dropping `Child` neither waits nor kills: we reap by pid after the pidfd.
                drop(child);
                drop(cmd);
                drop(theirs);
                drop(claims_fd);
                let pidfd = match sys::pidfd::pidfd_open(pid) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        log::debug!("pidfd_open: {e}; polling waitpid instead");
                        None
                    }
                };
                let ends = Pending {
                    slot,
                    claims,
                    sock: ours,
                    out: out_r,
                    err: err_r,
                };
                self.attach(ends, pid, pidfd);
                Ok(Some(pid))
            }
            Spawner::Inert(why) => Err(std::io::Error::other(why.clone())),
        }
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    /// Takes a started worker into the loop.
    fn attach(&mut self, ends: Pending, pid: i32, pidfd: Option<OwnedFd>) {
        let Pending {
            slot,
            claims,
            sock,
            out,
            err,
        } = ends;
        let generation = self.next_gen;
        self.next_gen += 1;
        let mut sock = mio::net::UnixStream::from_std(sock);
        let sock_token = self.token();
        let reg = self.poll.registry();
        if let Err(e) = reg.register(&mut sock, sock_token, Interest::READABLE) {
            log::error!("{}[{slot}]: epoll_ctl: {e}", self.cfg.name);
        }
        self.owners
            .insert(sock_token, Owner::Sock { slot, generation });
        for file in [out, err] {
            let t = self.token();
            let fd = file.as_raw_fd();
            if self
                .poll
                .registry()
                .register(&mut SourceFd(&fd), t, Interest::READABLE)
                .is_ok()
            {
                let pipe = Pipe {
                    file,
                    framer: LineFramer::new(MAX_LINE),
                    slot,
                };
                self.owners.insert(t, Owner::Pipe(pipe));
            }
        }
        let pidfd = pidfd.and_then(|fd| {
            let t = self.token();
            let raw = fd.as_raw_fd();
            self.poll
                .registry()
                .register(&mut SourceFd(&raw), t, Interest::READABLE)
                .ok()?;
            self.owners.insert(t, Owner::Pidfd { slot, generation });
            Some((fd, t))
        });
        let reap_poll = pidfd.is_none() && matches!(self.spawner, Spawner::ExecSelf { .. });
        self.slots[slot].proc = Some(Proc {
            generation,
            pid,
            sock,
            sock_token,
            sock_open: true,
            pidfd,
            out: Vec::new(),
            out_pos: 0,
            writable: false,
            inbuf: InBuf::new(64 * 1024),
            inflight: VecDeque::new(),
            claims,
            free_words: (0..self.cfg.pipeline as u32).rev().collect(),
            running_since: self.now,
            jobs_done: 0,
            jobs_sent: 0,
            results_since_rss: 0,
            rss_checked: self.now,
            draining: self.stopping.is_some(),
            recycle: false,
            shutdown_sent: false,
            killed: false,
            expected: false,
            timed_out: None,
            reap_poll,
        });
        self.pids_dirty = true;
    }

    // ----- the fork server --------------------------------------------------------------

    fn flush_zygote(&mut self) {
        let Spawner::Fork {
            zygote: Some(z),
            outq,
            writable,
            ..
        } = &mut self.spawner
        else {
            return;
        };
        while let Some(req) = outq.front() {
            match req.send(z.ctl.as_fd()) {
                Ok(()) => {
                    outq.pop_front();
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    *writable = true;
                    return;
                }
                Err(e) => {
                    log::error!("pool {}: cannot reach the fork server: {e}", self.cfg.name);
                    outq.clear();
                    return;
                }
            }
        }
        *writable = false;
    }

    fn read_zygote(&mut self) {
        loop {
            let Spawner::Fork {
                zygote: Some(z), ..
            } = &self.spawner
            else {
                return;
            };
            match zygote::receive(z.ctl.as_fd()) {
                Ok(None) => return,
                Ok(Some(reply)) => self.on_reply(reply),
                Err(_) => {
                    self.zygote_died();
                    return;
                }
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Spawned { token, pid } => {
                let Spawner::Fork { pending, .. } = &mut self.spawner else {
                    return;
                };
                if let Some(p) = pending.remove(&token) {
                    let slot = p.slot;
                    self.attach(p, pid, None);
                    self.apply(slot, Event::Spawned { pid });
                }
            }
            Reply::Failed { token, errno } => {
                let Spawner::Fork { pending, .. } = &mut self.spawner else {
                    return;
                };
                if let Some(p) = pending.remove(&token) {
                    let e = std::io::Error::from_raw_os_error(errno);
                    log::error!("{}[{}]: fork failed: {e}", self.cfg.name, p.slot);
                    self.apply(p.slot, Event::SpawnFailed);
                }
            }
            Reply::Exited { pid, status } => {
                let slot = self
                    .slots
                    .iter()
                    .position(|s| s.proc.as_ref().is_some_and(|p| p.pid == pid));
                if let Some(slot) = slot {
                    self.finalize(slot, status);
                }
            }
        }
    }

    /// The fork server is gone: no worker can be started any more, and the live ones died
    /// with it. The pool fails every job from now on.
    fn zygote_died(&mut self) {
        let Spawner::Fork {
            zygote, pending, ..
        } = &mut self.spawner
        else {
            return;
        };
        let Some(z) = zygote.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&z.ctl.as_raw_fd()));
        let pending: Vec<usize> = pending.drain().map(|(_, p)| p.slot).collect();
        // Its socket closes while it exits, before it is a zombie: a reap now may come too
        // early. If so, its pidfd says when; without one (Linux < 5.3), the timers retry.
        let status = reap_child(z.pid, None, Duration::ZERO);
        let why = format!(
            "pool {}: the fork server (pid {}) exited{}; no worker can be started",
            self.cfg.name,
            z.pid,
            status.map(|s| format!(" ({s})")).unwrap_or_default()
        );
        if self.stopping.is_none() {
            log::error!("{why}");
            self.fatal.get_or_insert(why);
        }
        // Whatever made the pool fatal before, revive() cannot undo this.
        self.fatal_from_slots = false;
        let Zygote { ctl, pid, pidfd } = z;
        drop(ctl);
        if status.is_none() {
            let pidfd = pidfd.filter(|fd| {
                self.poll
                    .registry()
                    .register(
                        &mut SourceFd(&fd.as_raw_fd()),
                        ZYGOTE_PIDFD,
                        Interest::READABLE,
                    )
                    .is_ok()
            });
            self.dead_zygote = Some((pid, pidfd));
        }
        self.pids_dirty = true;
        for slot in pending {
            self.apply(slot, Event::SpawnFailed);
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].proc.is_some() {
                let status = ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                };
                self.finalize(slot, status);
            }
            self.apply(slot, Event::Stop);
        }
    }

    // ----- output capture ---------------------------------------------------------------

    fn read_pipe(&mut self, token: Token) {
        let name = &self.cfg.name;
        let Some(Owner::Pipe(pipe)) = self.owners.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        let mut eof = false;
        loop {
            match pipe.file.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let slot = pipe.slot;
                    pipe.framer
                        .push(&buf[..n], &mut |line| log::info!("{name}[{slot}] {line}"));
                    total += n;
                    if total >= PIPE_BUDGET {
                        self.pipe_backlog.push(token);
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof && let Some(Owner::Pipe(mut pipe)) = self.owners.remove(&token) {
            let slot = pipe.slot;
            pipe.framer
                .finish(&mut |line| log::info!("{name}[{slot}] {line}"));
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.file.as_raw_fd()));
        }
    }

    fn drain_pipe_backlog(&mut self) {
        for token in std::mem::take(&mut self.pipe_backlog) {
            self.read_pipe(token);
        }
    }

    /// After the loop: output drained, fork server closed and reaped.
    fn cleanup(&mut self) {
        let tokens: Vec<Token> = self
            .owners
            .iter()
            .filter(|(_, o)| matches!(o, Owner::Pipe(_)))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.read_pipe(t);
        }
        self.stop_zygote();
    }

    /// Reaps the fork server whose socket closed earlier, waiting at most `wait`.
    fn reap_dead_zygote(&mut self, wait: Duration) {
        let Some((pid, pidfd)) = &self.dead_zygote else {
            return;
        };
        let pid = *pid;
        if let Some(status) = reap_child(pid, pidfd.as_ref().map(|fd| fd.as_fd()), wait) {
            log::debug!(
                "pool {}: fork server (pid {pid}) reaped ({status})",
                self.cfg.name
            );
        } else if matches!(
            waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        ) {
            return; // not exited yet: its pidfd (or the timers) will say when
        }
        if let Some(fd) = pidfd {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.dead_zygote = None;
    }

    fn stop_zygote(&mut self) {
        self.reap_dead_zygote(Duration::from_secs(3));
        if let Spawner::Fork { zygote, .. } = &mut self.spawner
            && let Some(z) = zygote.take()
        {
            let Zygote { ctl, pid, pidfd } = z;
            drop(ctl); // end of stream: it kills and reaps its workers, then exits
            let pidfd = pidfd.as_ref().map(|fd| fd.as_fd());
            if reap_child(pid, pidfd, Duration::from_secs(3)).is_none() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                reap_child(pid, pidfd, Duration::from_secs(3));
            }
            self.pids_dirty = true;
        }
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

fn n_taken(intake: &[Job], failed: &[(Job, Failure)]) -> bool {
    !intake.is_empty() || !failed.is_empty()
}

/// Whether a slot is retired: no worker and none coming (a crash loop, or a policy that does
/// not restart), until [`crate::pool::Pool::revive`].
fn retired(s: &Slot) -> bool {
    s.proc.is_none() && matches!(s.inst.state, State::Fatal | State::Exited)
}

/// Whether a worker may be given new jobs.
fn eligible(p: &Proc) -> bool {
    p.sock_open && !p.draining && !p.killed
}

/// Calls a sink, containing a panic of the user's callback so that the I/O thread survives.
fn call_sink(name: &str, sink: Sink, raw: Raw<'_>) {
    if catch_unwind(AssertUnwindSafe(|| sink.call(raw))).is_err() {
        log::error!("pool {name}: a job callback panicked (the pool carries on)");
    }
}

/// `SIGKILL` to worker `pid`'s process group and to the worker, by number.
fn kill_by_pid(pid: i32) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
}

/// A pipe for a worker's stdout or stderr: our end non-blocking, theirs blocking (a worker's
/// `println!` must wait, not fail, when the pipe is full).
fn output_pipe() -> std::io::Result<(File, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((File::from(r), w))
}

/// Resident set size of `pid` from `/proc/PID/statm` (its second field, in pages).
fn rss_bytes(pid: i32, page: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

/// Reaps our direct child `pid`, waiting at most `wait` — asleep on its pidfd until it exits
/// when there is one, else in 1 ms steps (Linux < 5.3); its status, or `None` if it is still
/// running (or was not ours).
pub(crate) fn reap_child(
    pid: i32,
    pidfd: Option<std::os::fd::BorrowedFd<'_>>,
    wait: Duration,
) -> Option<ExitStatus> {
    let until = Instant::now() + wait;
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, core)) => {
                return Some(ExitStatus::Signal {
                    signal: sig as i32,
                    core_dumped: core,
                });
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
            Ok(_) => {}
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match pidfd {
            Some(fd) => {
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
