//! A typed process pool on supervised workers: `multiprocessing.Pool` for Rust, where a worker's
//! death fails only its own job and the pool lives on.
//!
//! This module owns the public API ([`Pool`], [`PoolBuilder`], [`JobHandle`], outcomes and
//! stats) and the typed layer that encodes jobs and decodes results. Everything that touches
//! workers lives on the pool's **I/O thread** (`engine`), which owns every worker socket, output
//! pipe, timer and per-worker restart state machine ([`crate::lifecycle::Instance`], the same
//! policy as supervised programs). The API hands jobs over through a bounded queue and a
//! waker; outcomes come back through per-job handles, callbacks (run on the I/O thread) or
//! channels.
//!
//! ```no_run
//! use std::time::Duration;
//! use warden::pool::{Pool, StartMethod};
//!
//! fn main() -> Result<(), warden::Error> {
//!     // First thing in main: see "Start methods" below.
//!     let pool = Pool::builder("squares", |x: u64| -> Result<u64, String> { Ok(x * x) })
//!         .workers(4)
//!         .job_timeout(Some(Duration::from_secs(5)))
//!         .start_method(StartMethod::Fork)
//!         .build()?;
//!     let h = pool.submit(3).expect("open");
//!     assert_eq!(h.wait(), Ok(9)); // or `h.await` in async code
//!     let all = pool.map(0..1000u64).expect("open");
//!     assert!(all.iter().enumerate().all(|(i, r)| *r == Ok((i * i) as u64)));
//!     for (i, r) in pool.imap(0..1000u64).expect("open").enumerate() {
//!         assert_eq!(r, Ok((i * i) as u64)); // in input order, a bounded window in flight
//!     }
//!     let within = pool.map_timeout(0..10u64, Duration::from_secs(1)).expect("open");
//!     assert_eq!(within.len(), 10); // what was unfinished at 1 s is Err(Cancelled)
//!     pool.close();
//!     pool.join();
//!     Ok(())
//! }
//! ```
//!
//! # Outcomes
//!
//! Every accepted job gets exactly one [`Outcome`], exactly once: the handler's value, its error
//! ([`JobError::Handler`]), a panic caught in the worker (which survives and serves the next
//! job), [`JobError::WorkerDied`] when the worker died while running it (the pool replaces the
//! worker; the other jobs it held had not started — each worker marks a job started in memory
//! shared with the pool before running it — and are sent again, first),
//! [`JobError::TimedOut`], [`JobError::Cancelled`] (the job was cancelled, see below, or
//! [`Pool::terminate`] came first), [`JobError::Pool`] when a worker's
//! [initializer](PoolBuilder::initializer) failed ([`PoolError::Initializer`]), or
//! [`JobError::Fatal`] when the pool can no longer run anything (every worker in a crash loop,
//! the fork server gone). Jobs marked idempotent ([`JobOptions::retries`]) are retried after a
//! death or a timeout instead.
//!
//! # Waiting, awaiting, cancelling
//!
//! A [`JobHandle`] is waited for ([`JobHandle::wait`], [`JobHandle::wait_timeout`]) or awaited:
//! it is a [`Future`], woken by the I/O thread when the outcome arrives —
//! no thread per wait and no runtime dependency, so it works under tokio, async-std or smol;
//! [`Pool::submit_async`] waits for room in a full queue without blocking the thread.
//! [`Pool::map_async`] gives a [`MapResult`]: `get(timeout)` as in Python (on timeout the
//! result comes back and the jobs go on), `.await`, or cancel what is left;
//! [`Pool::map_timeout`] cancels whatever is unfinished at its deadline. [`Pool::imap`] (input
//! order) and [`Pool::imap_unordered`] stream outcomes with a bounded window of jobs in the pool
//! (an endless input is fine), as iterators or as streams ([`Imap::next_async`],
//! `futures_core::Stream`).
//!
//! [`JobHandle::cancel`] removes a job that has not started — from the queue, or from the
//! worker it was sent to, through the same claim word that lets an idle worker take jobs over —
//! and leaves a running one; [`JobHandle::cancel_and_kill`] also cancels a running job by
//! killing its worker, which is replaced (a restart the pool asked for: not a death, not part
//! of a crash loop) while the jobs it held and had not started run elsewhere. Either way the
//! job's outcome is [`JobError::Cancelled`], and [`Cancel`] says what was done.
//!
//! # Per-worker initializer
//!
//! [`PoolBuilder::initializer`] runs once in each worker process before its first job (also in
//! every replacement and recycled worker, under both start methods): load a model, open a
//! connection, keep it in a `static`. If it fails, the pool says so once in the log and fails
//! every job not yet sent with [`PoolError::Initializer`] instead of restarting the worker
//! over and over; [`Pool::revive`] tries again.
//!
//! # Compared with Python's pools
//!
//! | | `multiprocessing.Pool` | `ProcessPoolExecutor` | `warden::pool` |
//! |---|---|---|---|
//! | a worker dies mid-job | that job hangs for ever | every pending future fails (`BrokenProcessPool`), the pool is unusable | that job fails (`WorkerDied`), the worker is replaced, the jobs it held are sent again |
//! | job timeout | none (only `get(timeout)` on the caller's side) | none | per job: the worker is killed and replaced |
//! | one result | `apply_async().get(t)` | `submit().result(t)` | [`Pool::submit`]: [`JobHandle::wait_timeout`], or `.await` |
//! | async | no | `asyncio.wrap_future` (a thread hop) | `JobHandle`, `MapResult` are futures; `imap` is a stream |
//! | `map` | `map`, `map_async().get(t)`, `chunksize` | `map(timeout, chunksize)` | [`Pool::map`], [`Pool::map_async`] + [`MapResult::get`], [`Pool::map_timeout`], [`Pool::map_chunked`] |
//! | streamed | `imap` (ordered), `imap_unordered`: both read the whole input ahead (unbounded) | `as_completed`, `map` (also submit every job first) | [`Pool::imap`], [`Pool::imap_unordered`]: bounded window, endless input |
//! | cancel one job | no | `Future.cancel()`, only if not running | [`JobHandle::cancel`] (not started), [`JobHandle::cancel_and_kill`] (running: its worker replaced) |
//! | initializer | `initializer=`; a failing one restarts workers for ever | `initializer=`; a failure breaks the pool | [`PoolBuilder::initializer`]: failure reported once, jobs fail with it, [`Pool::revive`] |
//! | recycling | `maxtasksperchild` | `max_tasks_per_child` | [`PoolBuilder::max_jobs_per_worker`], [`PoolBuilder::max_rss_bytes`] |
//! | backpressure | none (unbounded queue) | none | bounded queue: `submit` blocks, `try_submit` gives the job back |
//! | messages from a job | a `Manager().Queue()` (a server process, unbounded, lost silently with its worker) | the same | [`JobContext::send`] through [`Pool::builder_with_context`]: typed, in order, bounded per job (the worker waits), `Incomplete` if its worker died; received on a [`Messages`] stream, a callback, or [`Pool::map_with_messages`] |
//! | start | fork, spawn, forkserver | the same | [`StartMethod::Fork`] (a fork server), [`StartMethod::ExecSelf`] |
//!
//! # Start methods
//!
//! - [`StartMethod::Fork`] (default, fastest start): `build()` forks a *fork server* while the
//!   process is still single-threaded, and every worker is forked from it, inheriting the
//!   handler. `build()` fails with a clear error if the process already has threads (a tokio
//!   runtime, a logger thread...). Build every `Fork` pool first thing in `main`: the pool's I/O
//!   thread starts at its first use (or [`Pool::start`]), so several pools can be built in a row.
//! - [`StartMethod::ExecSelf`]: each worker re-executes the current binary (`/proc/self/exe`,
//!   same arguments) with `WARDEN_POOL_WORKER=<pool name>`, its socket on descriptor 3 and the
//!   claim words it shares with the pool (a `memfd`) on descriptor 4. Works
//!   from a multi-threaded program. **In the worker process your `main` runs again up to the
//!   same `Pool::builder(name, ..).build()` call, which then serves jobs and exits instead of
//!   returning** — like Python's `if __name__ == "__main__"`. So build the pool early in `main`,
//!   before side effects (opening files, binding ports, printing); anything done before it is
//!   done again in every worker. Any *other* pool built in a worker process is inert (its jobs
//!   fail with [`JobError::Fatal`]) so workers never start pools of their own.
//!
//! Workers run in their own process group, die with the pool (`PR_SET_PDEATHSIG`), have their
//! stdout and stderr captured into the log (`NAME[INDEX] line`, at info level), and are restarted
//! by the [`Policy`]: the first restart immediately, then with backoff; a crash loop (more than
//! `max_restarts` unhealthy deaths within `restart_window`) stops that worker, and when every
//! worker is stopped the pool fails all jobs with [`JobError::Fatal`] rather than hang. A job
//! timeout, a recycle ([`PoolBuilder::max_jobs_per_worker`], [`PoolBuilder::max_rss_bytes`]) or a
//! stop is a restart the pool asked for and never counts towards the crash loop. A worker is
//! stopped gracefully with a `Shutdown` frame once idle (`policy.stop` is set to
//! [`StopWith::Request`](crate::policy::StopWith::Request));
//! `policy.stop_timeout` bounds it before `SIGKILL`.
//!
//! # Retired slots
//!
//! A worker slot whose worker dies more than `policy.max_restarts` times within
//! `policy.restart_window` — whatever the cause: a crashing handler, or someone killing the
//! worker from outside (the OOM killer, an operator's `kill -9`) — is **retired for good**: no
//! worker runs in it again, and the other slots carry the load. (A policy that does not restart,
//! `Restart::Never`, retires a slot at its worker's first exit.) [`PoolStats::retired`] lists
//! retired slots; the log says `NAME[INDEX]: ... fatal` when it happens. When every slot is
//! retired, jobs fail with [`JobError::Fatal`]. [`Pool::revive`] brings retired slots back
//! (fresh crash-loop counts) and, if the pool had turned fatal only for that reason, makes it
//! run jobs again: for example after the cause (a bad input, memory pressure) is gone. Jobs
//! that failed meanwhile are not re-run.
//!
//! # Messages from a running job
//!
//! What a Python program does with a `multiprocessing.Queue` handed to its workers — report
//! progress or partial results while a job runs — a handler built with
//! [`Pool::builder_with_context`] does through its [`JobContext`]: `ctx.send(&message)`. The
//! receiver, and the message type `M`, are chosen per submission:
//! [`Pool::submit_with_messages`] (a blocking [`Messages`] stream beside the handle),
//! [`Pool::apply_async_with_messages`] (a callback on the I/O thread) or
//! [`Pool::map_with_messages`] (a callback on the calling thread, e.g. a progress bar:
//! `examples/pool_progress.rs`). A job's messages arrive in the order sent and all before its
//! outcome. Each receiver has a bound: the worker blocks in `send` while that many of the job's
//! messages are unconsumed, so memory stays bounded however chatty the job (credit travels back
//! on the worker's socket; see `context`). Messages are lost only with the worker: when it dies
//! or is killed on a timeout mid-job, those it had not written are missing — its outcome is
//! [`JobError::WorkerDied`] or [`JobError::TimedOut`], and [`Messages::status`] says
//! [`MessageStatus::Incomplete`]. A retried job (see [`JobOptions::retries`]) sends its messages
//! again. Time a job spends waiting in `send` for its receiver counts towards its timeout. Plain `Fn(J)` handlers are unchanged; a job submitted without a receiver, or in a
//! `map_chunked` chunk, has nobody listening ([`JobContext::listened`]) and its sends return at
//! once.
//!
//! # Threads and ordering
//!
//! [`Pool`] is `Send + Sync`: share it by reference or `Arc`. Callbacks ([`Pool::apply_async`]) run
//! on the I/O thread: keep them short and never block in them (they may submit: a submission from a
//! callback never waits for room). `submit` blocks while the queue is full; `join` returns only
//! after every accepted job's outcome has been delivered, callbacks included.

mod builder;
mod cancel;
mod claim;
mod codec;
mod context;
mod engine;
mod error;
pub(crate) mod frame;
mod handle;
mod imap;
mod init;
mod map;
mod messages;
mod pace;
mod submit;
mod worker;
mod zygote;

use std::fmt;
use std::marker::PhantomData;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::builder::PoolBuilder;
pub use self::cancel::Cancel;
use self::codec::{codec_errors, decode_chunk, decode_one, encode_chunk, encode_exact};
pub use self::context::{Handler, JobContext, SendError, WithContext};
use self::engine::{Completion, Engine, Failure, Job, NO_TICKET, Raw, Shared, StopMode};
pub use self::error::{Closed, JobError, Outcome, PoolError, TrySubmitError};
pub use self::handle::JobHandle;
pub use self::imap::{Imap, ImapUnordered};
pub use self::map::MapResult;
pub use self::messages::{MessageError, MessageStatus, Messages, WithMessages};
pub use crate::policy::{ExitStatus, Policy};

/// The environment variable that makes a process an exec-self worker of the pool it names.
pub const WORKER_ENV: &str = "WARDEN_POOL_WORKER";
/// The environment variable holding an exec-self worker's index (informational).
pub const INDEX_ENV: &str = "WARDEN_POOL_INDEX";

/// How workers are started; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMethod {
    /// Forked from a fork server created by `build()` (the process must be single-threaded then).
    #[default]
    Fork,
    /// The current executable re-executed in the worker role; works from any process.
    ExecSelf,
}

/// Per-job settings for [`Pool::submit_with`] and [`Pool::apply_async_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobOptions {
    timeout: Option<Option<Duration>>,
    retries: u32,
}

impl JobOptions {
    /// The pool's defaults: its job timeout, no retry.
    pub fn new() -> JobOptions {
        JobOptions::default()
    }

    /// This job's timeout instead of the pool's (`None`: no timeout).
    pub fn timeout(mut self, timeout: Option<Duration>) -> JobOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the job idempotent: after a worker death or a timeout it is run again, up to
    /// `retries` more times, before its outcome is that failure.
    pub fn retries(mut self, retries: u32) -> JobOptions {
        self.retries = retries;
        self
    }
}

/// A snapshot of the pool, from [`Pool::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Live worker processes.
    pub workers: usize,
    /// Workers with at least one job in flight.
    pub busy: usize,
    /// Jobs accepted and not yet sent to a worker.
    pub queued: usize,
    /// Jobs sent to workers and not answered yet.
    pub in_flight: usize,
    /// Jobs (and chunks) accepted so far.
    pub accepted: u64,
    /// Jobs answered by a worker (a chunk counts each of its jobs), including handler errors
    /// and panics.
    pub completed: u64,
    /// Workers that died without being asked to (killed, crashed, exited).
    pub worker_deaths: u64,
    /// Worker restarts of any cause (deaths, timeouts, recycling).
    pub restarts: u64,
    /// Workers replaced by `max_jobs_per_worker` or `max_rss_bytes`.
    pub recycled: u64,
    /// Jobs that timed out.
    pub timed_out: u64,
    /// Jobs sent again because the worker holding them (not yet started) died.
    pub requeued: u64,
    /// Idempotent jobs run again after a death or timeout.
    pub retried: u64,
    /// Jobs taken back from a worker before it started them (it was busy with a longer job, or
    /// got more than its share at start-up) and sent to an idle one.
    pub moved: u64,
    /// Jobs cancelled one by one ([`JobHandle::cancel`], [`JobHandle::cancel_and_kill`],
    /// [`MapResult::cancel`], a [`Pool::map_timeout`] deadline); not those of `terminate`.
    pub cancelled: u64,
    /// Each worker slot's pid, when it has a live process.
    pub worker_pids: Vec<Option<i32>>,
    /// Worker slots retired for good (see "Retired slots" in the module documentation): their
    /// worker died more than `policy.max_restarts` times within `policy.restart_window` — killed
    /// from outside counts too — or exited under a policy that does not restart it. Empty
    /// again after [`Pool::revive`].
    pub retired: Vec<usize>,
    /// The fork server's pid ([`StartMethod::Fork`]).
    pub fork_server_pid: Option<i32>,
    /// Why the pool can no longer run jobs, if so.
    pub fatal: Option<String>,
    /// The failure every job now fails with ([`JobError::Pool`]), if any: a failed
    /// [initializer](PoolBuilder::initializer). `fatal` says it in words too.
    pub failure: Option<PoolError>,
}

/// A pool of worker processes running one handler; see the module documentation.
///
/// Dropping the pool terminates it: unfinished jobs are cancelled, workers and the fork server
/// are killed and reaped, and the I/O thread is joined. Call [`Pool::close`] then
/// [`Pool::join`] first to let the jobs finish.
pub struct Pool<J, O, E> {
    name: String,
    workers: usize,
    pipeline: usize,
    queue_capacity: usize,
    shared: Arc<Shared>,
    engine: Mutex<Option<Engine>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    started: Once,
    _types: PhantomData<fn(J) -> (O, E)>,
}

impl<J, O, E> fmt::Debug for Pool<J, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("pipeline", &self.pipeline)
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

impl<J, O, E> Pool<J, O, E>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    /// Starts building a pool named `name` (used in log lines and by exec-self workers) around
    /// `handler`.
    pub fn builder<F>(name: impl Into<String>, handler: F) -> PoolBuilder<J, O, E, F>
    where
        F: Fn(J) -> std::result::Result<O, E> + Send + Sync + 'static,
    {
        PoolBuilder::new(name.into(), handler)
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of worker slots.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Starts the I/O thread and the workers now; otherwise they start at the first use.
    pub fn start(&self) {
        self.started.call_once(|| {
            let engine = self
                .engine
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let Some(engine) = engine else { return };
            let spawned = std::thread::Builder::new()
                .name(format!("pool-{}", self.name))
                .spawn(move || engine.run());
            match spawned {
                Ok(h) => *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(h),
                Err(e) => {
                    log::error!("pool {}: cannot start its I/O thread: {e}", self.name);
                    let why = format!("cannot start the I/O thread: {e}");
                    self.shared.finish_io(
                        || Failure::Fatal(why.clone()),
                        |inner| inner.stats.fatal = Some(why.clone()),
                    );
                }
            }
        });
    }

    /// Submits a job; blocks while the queue is full. Returns a handle on its outcome, or the
    /// job back if the pool is closed.
    pub fn submit(&self, job: J) -> std::result::Result<JobHandle<O, E>, Closed<J>> {
        self.submit_with(job, JobOptions::default())
    }

    /// [`Pool::submit`] with per-job options (timeout, retries).
    pub fn submit_with(
        &self,
        job: J,
        options: JobOptions,
    ) -> std::result::Result<JobHandle<O, E>, Closed<J>> {
        let (handle, completion, ticket) = JobHandle::new(&self.shared);
        match self.enqueue(job, options, completion, Admit::Wait, ticket) {
            Ok(()) => Ok(handle),
            Err(TrySubmitError::Closed(j) | TrySubmitError::Full(j)) => Err(Closed(j)),
        }
    }

    /// Submits a job unless the queue is full or the pool closed, giving the job back then.
    pub fn try_submit(&self, job: J) -> std::result::Result<JobHandle<O, E>, TrySubmitError<J>> {
        let (handle, completion, ticket) = JobHandle::new(&self.shared);
        self.enqueue(
            job,
            JobOptions::default(),
            completion,
            Admit::Refuse,
            ticket,
        )?;
        Ok(handle)
    }

    /// Submits a job whose outcome is passed to `callback`, exactly once, on the pool's I/O
    /// thread (keep it short; it must not block). Blocks while the queue is full. (A job that
    /// cannot be serialized never reaches the pool: its `Codec` outcome is delivered at once,
    /// on the calling thread.)
    pub fn apply_async<C>(&self, job: J, callback: C) -> std::result::Result<(), Closed<J>>
    where
        C: FnOnce(Outcome<O, E>) + Send + 'static,
    {
        self.apply_async_with(job, JobOptions::default(), callback)
    }

    /// [`Pool::apply_async`] with per-job options.
    pub fn apply_async_with<C>(
        &self,
        job: J,
        options: JobOptions,
        callback: C,
    ) -> std::result::Result<(), Closed<J>>
    where
        C: FnOnce(Outcome<O, E>) + Send + 'static,
    {
        let completion = Completion::new(move |raw: Raw<'_>| callback(decode_one(raw)));
        self.enqueue(job, options, completion, Admit::Wait, NO_TICKET)
            .map_err(|e| Closed(e.into_job()))
    }

    /// Runs every job and returns the outcomes in input order (one job per frame: a worker's
    /// death fails only the job it was running).
    ///
    /// Fails only if the pool is already closed; if it is closed midway, the jobs not yet
    /// submitted get [`JobError::Cancelled`].
    pub fn map<I>(&self, jobs: I) -> std::result::Result<Vec<Outcome<O, E>>, Closed>
    where
        I: IntoIterator<Item = J>,
    {
        let jobs: Vec<J> = jobs.into_iter().collect();
        let total = jobs.len();
        let (tx, rx) = mpsc::channel::<(usize, Outcome<O, E>)>();
        let mut sent = 0;
        for (i, job) in jobs.into_iter().enumerate() {
            let tx = tx.clone();
            let completion = Completion::new(move |raw: Raw<'_>| {
                let _ = tx.send((i, decode_one(raw)));
            });
            if self
                .enqueue(
                    job,
                    JobOptions::default(),
                    completion,
                    Admit::Wait,
                    NO_TICKET,
                )
                .is_err()
            {
                if sent == 0 {
                    return Err(Closed(()));
                }
                break;
            }
            sent += 1;
        }
        drop(tx);
        let mut out: Vec<Option<Outcome<O, E>>> = (0..total).map(|_| None).collect();
        for (i, o) in rx.iter() {
            out[i] = Some(o);
        }
        Ok(fill_missing(out, sent))
    }

    /// Like [`Pool::map`], but sends jobs in chunks of `chunksize` (0: Python's default,
    /// `ceil(len / (4 × workers))`), one frame and one result frame per chunk — much faster for
    /// small jobs. The chunk is the unit of failure: if its worker dies or it times out (the
    /// timeout is per job × chunk length), every job of the chunk gets that outcome.
    pub fn map_chunked<I>(
        &self,
        jobs: I,
        chunksize: usize,
    ) -> std::result::Result<Vec<Outcome<O, E>>, Closed>
    where
        I: IntoIterator<Item = J>,
    {
        let jobs: Vec<J> = jobs.into_iter().collect();
        let total = jobs.len();
        let size = if chunksize == 0 {
            total.div_ceil(4 * self.workers).max(1)
        } else {
            chunksize
        };
        let (tx, rx) = mpsc::channel::<(usize, Vec<Outcome<O, E>>)>();
        let mut sent = 0;
        for (c, chunk) in jobs.chunks(size).enumerate() {
            let start = c * size;
            let count = chunk.len();
            let body = match encode_chunk(chunk) {
                Ok(body) => body,
                Err(why) => {
                    // Reported at once: this chunk never reaches the pool.
                    let _ = tx.send((start, codec_errors(&why, count)));
                    sent = start + count;
                    continue;
                }
            };
            let tx = tx.clone();
            let completion = Completion::new(move |raw: Raw<'_>| {
                let _ = tx.send((start, decode_chunk(raw, count)));
            });
            let job = Job {
                kind: frame::CHUNK,
                body,
                items: count as u32,
                timeout: None,
                retries: 0,
                ticket: NO_TICKET,
                completion,
            };
            if self.enqueue_job(job, Admit::Wait).is_err() {
                if sent == 0 {
                    return Err(Closed(()));
                }
                break;
            }
            sent = start + count;
        }
        drop(tx);
        let mut out: Vec<Option<Outcome<O, E>>> = (0..total).map(|_| None).collect();
        for (start, outcomes) in rx.iter() {
            for (k, o) in outcomes.into_iter().enumerate() {
                out[start + k] = Some(o);
            }
        }
        Ok(fill_missing(out, sent))
    }

    /// Brings retired worker slots back (see "Retired slots" in the module documentation): each
    /// gets a new worker with its crash-loop count reset, and a pool that had turned
    /// [`JobError::Fatal`] only because every slot was retired runs jobs again. Does nothing for
    /// a pool whose fork server is gone, or once the pool is stopping.
    ///
    /// Asynchronous: the pool's I/O thread carries it out at its next turn; `stats().retired`
    /// is empty (and `stats().fatal` cleared) once it has.
    pub fn revive(&self) {
        self.start();
        self.shared
            .revive
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.wake();
    }

    /// Stops accepting jobs; the accepted ones still run. Blocked submitters get their job back.
    pub fn close(&self) {
        let mut inner = self.shared.lock();
        inner.closed = true;
        drop(inner);
        self.shared.wake_submitters();
    }

    /// Waits until every job accepted so far has its outcome delivered (callbacks included).
    /// If the pool is closed, then also stops the workers gracefully and waits until they, the
    /// fork server and the I/O thread are gone.
    ///
    /// # Panics
    ///
    /// When called from a pool callback (it would wait for the thread running it).
    pub fn join(&self) {
        assert_not_io_thread("join");
        if self.shared.lock().accepted > 0 {
            self.start();
        }
        let mut inner = self.shared.wait_while(self.shared.lock(), |i| {
            i.finished < i.accepted && !i.io_done
        });
        if inner.closed {
            inner.stop.get_or_insert(StopMode::Graceful);
            drop(inner);
            self.shared.wake();
            self.wait_io_done();
        }
    }

    /// Stops now: unfinished jobs (queued or running) get [`JobError::Cancelled`], the workers
    /// are killed, and this returns once they, the fork server and the I/O thread are gone.
    ///
    /// # Panics
    ///
    /// When called from a pool callback (it would wait for the thread running it).
    pub fn terminate(&self) {
        assert_not_io_thread("terminate");
        let mut inner = self.shared.lock();
        inner.closed = true;
        inner.stop = Some(StopMode::Terminate);
        drop(inner);
        self.shared.wake_submitters();
        self.shared.wake();
        self.wait_io_done();
    }

    fn wait_io_done(&self) {
        let unstarted = self
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(engine) = unstarted {
            // Never started: no worker exists; dropping it stops the fork server. Later calls to
            // `start` find nothing to run.
            drop(engine);
            self.shared.finish_io(
                || Failure::Cancelled,
                |inner| inner.stats.fork_server_pid = None,
            );
            return;
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            if h.join().is_err() {
                log::error!("pool {}: the I/O thread panicked", self.name);
            }
        } else {
            drop(self.shared.wait_while(self.shared.lock(), |i| !i.io_done));
        }
    }

    /// A snapshot of the pool's state and counters.
    ///
    /// The I/O thread publishes it once per turn of its loop, after that turn's outcomes were
    /// delivered: right after an outcome arrives, the snapshot may still show the state before.
    pub fn stats(&self) -> PoolStats {
        let inner = self.shared.lock();
        let mut s = inner.stats.clone();
        s.queued = inner.queue.len();
        s.accepted = inner.accepted;
        s
    }

    /// Encodes and enqueues one job, named by `ticket` for a cancellation.
    fn enqueue(
        &self,
        job: J,
        options: JobOptions,
        completion: Completion,
        admit: Admit,
        ticket: u64,
    ) -> std::result::Result<(), TrySubmitError<J>> {
        let body = match encode_exact(&job) {
            Ok(body) => body,
            Err(e) => {
                // Reported at once, on this thread: the job never reaches the pool.
                completion.call(Raw::Codec(format!("job {e}")));
                return Ok(());
            }
        };
        let job_ = Job {
            kind: frame::JOB,
            body,
            items: 1,
            timeout: options.timeout,
            retries: options.retries,
            ticket,
            completion,
        };
        match self.enqueue_job(job_, admit) {
            Ok(()) => Ok(()),
            Err((_, true)) => Err(TrySubmitError::Full(job)),
            Err((_, false)) => Err(TrySubmitError::Closed(job)),
        }
    }

    /// Puts an encoded job on the queue: `Err((job, full))` when it was not taken (its completion then
    /// defused: a refused job has no outcome, its submitter gets it back).
    fn enqueue_job(&self, job: Job, admit: Admit) -> std::result::Result<(), (Job, bool)> {
        let refused = self.try_enqueue(job, admit);
        refused.map_err(|(mut job, full)| {
            job.completion.defuse();
            (job, full)
        })
    }

    fn try_enqueue(&self, job: Job, admit: Admit) -> std::result::Result<(), (Job, bool)> {
        self.start();
        let on_io = engine::ON_IO_THREAD.with(|f| f.get()) || admit == Admit::Over;
        let mut inner = self.shared.lock();
        loop {
            if inner.closed || inner.io_done {
                return Err((job, false));
            }
            if inner.queue.len() < inner.capacity || on_io {
                break;
            }
            if admit == Admit::Refuse {
                return Err((job, true));
            }
            inner.blocked += 1;
            inner = self
                .shared
                .not_full
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
            inner.blocked -= 1;
        }
        inner.queue.push_back(job);
        inner.accepted += 1;
        drop(inner);
        self.shared.wake();
        Ok(())
    }
}

impl<J, O, E> Drop for Pool<J, O, E> {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.closed = true;
        inner.stop = Some(StopMode::Terminate);
        drop(inner);
        self.shared.wake_submitters();
        self.shared.wake();
        let unstarted = self
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(unstarted);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// How a submission treats a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Wait for room (`submit`).
    Wait,
    /// Give the job back (`try_submit`).
    Refuse,
    /// Take it over the queue's bound: for submitters that bound their jobs in flight
    /// themselves (an async `imap` window) or hold them all anyway (`map_async`), and must not
    /// block.
    Over,
}

/// `Pool` is shared across threads by reference or `Arc`; handles move to other threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Pool<u64, u64, String>>();
    send::<JobHandle<u64, String>>();
    send::<MapResult<u64, String>>();
    send::<Imap<'static, u64, u64, String, std::ops::Range<u64>>>();
    send::<ImapUnordered<'static, u64, u64, String, std::ops::Range<u64>>>();
};

fn assert_not_io_thread(what: &str) {
    assert!(
        !engine::ON_IO_THREAD.with(|f| f.get()),
        "Pool::{what} called from a pool callback, which runs on the pool's I/O thread and \
         would wait for itself"
    );
}

/// The outcomes of a `map`, input order: a job with no outcome was sent (index below `sent`) and
/// lost with the I/O thread, or never sent because the pool closed meanwhile.
fn fill_missing<O, E>(out: Vec<Option<Outcome<O, E>>>, sent: usize) -> Vec<Outcome<O, E>> {
    out.into_iter()
        .enumerate()
        .map(|(i, o)| {
            o.unwrap_or(Err(if i < sent {
                JobError::Fatal("the pool's I/O thread is gone".into())
            } else {
                JobError::Cancelled
            }))
        })
        .collect()
}
