//! A typed process pool on supervised workers: `multiprocessing.Pool` for Rust, where a worker's
//! death fails only its own job and the pool lives on.
//!
//! This module owns the public API ([`Pool`], [`PoolBuilder`], [`JobHandle`], outcomes and
//! stats) and the typed layer that encodes jobs and decodes results. Everything that touches
//! workers lives on the pool's **I/O thread** (`engine`), which owns every worker socket, output
//! pipe, timer and per-worker restart state machine ([`crate::lifecycle::Instance`], the
//! same policy as supervised programs). The API hands jobs over through a bounded queue and a
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
//!     assert_eq!(h.wait(), Ok(9));
//!     let all = pool.map(0..1000u64).expect("open");
//!     assert!(all.iter().enumerate().all(|(i, r)| *r == Ok((i * i) as u64)));
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
//! [`JobError::TimedOut`], [`JobError::Cancelled`] after [`Pool::terminate`], or
//! [`JobError::Fatal`] when the pool can no longer run anything (every worker in a crash loop,
//! the fork server gone). Jobs marked idempotent ([`JobOptions::retries`]) are retried after a
//! death or a timeout instead.
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
//! **Threads and ordering.** [`Pool`] is `Send + Sync`: share it by reference or `Arc`. Callbacks
//! ([`Pool::apply_async`]) run on the I/O thread: keep them short and never block in them (they
//! may submit: a submission from a callback never waits for room). `submit` blocks while the
//! queue is full; `join` returns only after every accepted job's outcome has been delivered,
//! callbacks included.

mod claim;
mod engine;
pub(crate) mod frame;
mod pace;
mod worker;
mod zygote;

use std::fmt;
use std::marker::PhantomData;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
pub use crate::policy::{ExitStatus, Policy};
use engine::{Engine, Failure, Job, Raw, Shared, Sink, Spawner, StopMode};
use frame::Wire;

/// The environment variable that makes a process an exec-self worker of the pool it names.
pub const WORKER_ENV: &str = "WARDEN_POOL_WORKER";
/// The environment variable holding an exec-self worker's index (informational).
pub const INDEX_ENV: &str = "WARDEN_POOL_INDEX";

/// A job's outcome: the handler's output, or why there is none.
pub type Outcome<O, E> = std::result::Result<O, JobError<E>>;

/// Why a job has no output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError<E> {
    /// The handler returned this error.
    Handler(E),
    /// The handler panicked with this message; the worker caught it and carries on.
    Panicked(String),
    /// The worker died while running this job (it was the one running); the pool replaced it.
    WorkerDied(ExitStatus),
    /// The job ran longer than its timeout; its worker was killed and replaced.
    TimedOut,
    /// [`Pool::terminate`] was called before the job finished.
    Cancelled,
    /// The pool cannot run jobs any more; the reason.
    Fatal(String),
    /// The job or its result could not be (de)serialized.
    Codec(String),
}

impl<E: fmt::Display> fmt::Display for JobError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Handler(e) => write!(f, "the job failed: {e}"),
            JobError::Panicked(m) => write!(f, "the job panicked: {m}"),
            JobError::WorkerDied(s) => write!(f, "the worker died running the job ({s})"),
            JobError::TimedOut => f.write_str("the job timed out; its worker was killed"),
            JobError::Cancelled => f.write_str("the job was cancelled (pool terminated)"),
            JobError::Fatal(m) => write!(f, "the pool cannot run jobs: {m}"),
            JobError::Codec(m) => write!(f, "serialization failed: {m}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for JobError<E> {}

impl<E> From<Failure> for JobError<E> {
    fn from(f: Failure) -> JobError<E> {
        match f {
            Failure::WorkerDied(s) => JobError::WorkerDied(s),
            Failure::TimedOut => JobError::TimedOut,
            Failure::Cancelled => JobError::Cancelled,
            Failure::Fatal(m) => JobError::Fatal(m),
        }
    }
}

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

/// The pool no longer accepts jobs ([`Pool::close`] or [`Pool::terminate`] was called); the job
/// is given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed<T = ()>(pub T);

impl<T> fmt::Display for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the pool is closed to new jobs")
    }
}

impl<T: fmt::Debug> std::error::Error for Closed<T> {}

/// Why [`Pool::try_submit`] did not take the job; the job is given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrySubmitError<J> {
    /// The queue is full.
    Full(J),
    /// The pool is closed.
    Closed(J),
}

impl<J> TrySubmitError<J> {
    /// The job that was not taken.
    pub fn into_job(self) -> J {
        match self {
            TrySubmitError::Full(j) | TrySubmitError::Closed(j) => j,
        }
    }
}

impl<J> fmt::Display for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("the pool's queue is full"),
            TrySubmitError::Closed(_) => f.write_str("the pool is closed to new jobs"),
        }
    }
}

impl<J: fmt::Debug> std::error::Error for TrySubmitError<J> {}

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
}

/// Builds a [`Pool`]; from [`Pool::builder`].
pub struct PoolBuilder<J, O, E, F> {
    name: String,
    handler: F,
    workers: usize,
    pipeline: usize,
    queue_capacity: usize,
    job_timeout: Option<Duration>,
    max_jobs_per_worker: Option<u64>,
    max_rss_bytes: Option<u64>,
    start_method: StartMethod,
    policy: Policy,
    _types: PhantomData<fn(J) -> (O, E)>,
}

impl<J, O, E, F> fmt::Debug for PoolBuilder<J, O, E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("pipeline", &self.pipeline)
            .field("queue_capacity", &self.queue_capacity)
            .field("job_timeout", &self.job_timeout)
            .field("max_jobs_per_worker", &self.max_jobs_per_worker)
            .field("max_rss_bytes", &self.max_rss_bytes)
            .field("start_method", &self.start_method)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<J, O, E, F> PoolBuilder<J, O, E, F>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    F: Fn(J) -> std::result::Result<O, E> + Send + Sync + 'static,
{
    /// Number of worker processes (default: the number of CPUs).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The most jobs in flight per worker, to hide the round trip (default 32, at most 65536; 1
    /// disables pipelining).
    ///
    /// The pool uses this much only for jobs shorter than a round trip: the window adapts to
    /// observed job latency (1 job at a time for jobs of a millisecond or more, like Python's
    /// pool), and a job a worker has not started is moved to a worker that falls idle. So a job
    /// never waits behind a long one while another worker is free.
    pub fn pipeline(mut self, n: usize) -> Self {
        self.pipeline = n;
        self
    }

    /// Jobs accepted but not yet sent before `submit` blocks (default 1024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// The default per-job timeout, from when the job starts running (default none). A chunk
    /// of `map_chunked` gets this much per job in it.
    pub fn job_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Replace a worker (gracefully, between jobs) after it has answered this many jobs.
    pub fn max_jobs_per_worker(mut self, n: Option<u64>) -> Self {
        self.max_jobs_per_worker = n;
        self
    }

    /// Replace a worker (gracefully, between jobs) once its resident memory exceeds this many
    /// bytes; checked at most every 100 ms or 64 results. The jobs already sent to it (at most
    /// [`PoolBuilder::pipeline`]) still run there first: lower the pipeline for a tighter bound.
    pub fn max_rss_bytes(mut self, bytes: Option<u64>) -> Self {
        self.max_rss_bytes = bytes;
        self
    }

    /// How workers are started (default [`StartMethod::Fork`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// The restart policy of each worker: backoff and crash-loop limit (readiness is always
    /// immediate and there is no watchdog for pool workers).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Builds the pool. In an exec-self worker process of this pool, serves jobs and exits
    /// instead of returning.
    ///
    /// Errors: an invalid setting ([`Error::Invalid`]), [`StartMethod::Fork`] in a process that
    /// already has threads ([`Error::Invalid`] saying so), or a failed system call.
    pub fn build(self) -> Result<Pool<J, O, E>> {
        self.validate()?;
        let mut spawner = None;
        if let Some(role) = std::env::var_os(WORKER_ENV) {
            if role == *self.name {
                self.become_worker();
            }
            spawner = Some(Spawner::Inert(format!(
                "pool {}: this process is an exec-self worker of pool {:?}; pools built in a \
                 worker do not run",
                self.name,
                role.to_string_lossy()
            )));
        }
        let spawner = match spawner {
            Some(s) => s,
            None => match self.start_method {
                StartMethod::Fork => self.fork_server()?,
                StartMethod::ExecSelf => {
                    let mut args = std::env::args_os();
                    let arg0 = args.next().unwrap_or_else(|| "warden-pool-worker".into());
                    Spawner::ExecSelf {
                        arg0,
                        args: args.collect(),
                    }
                }
            },
        };
        let poll = mio::Poll::new().map_err(|e| Error::os("epoll_create", e))?;
        let shared =
            Arc::new(Shared::new(&poll, self.queue_capacity).map_err(|e| Error::os("eventfd", e))?);
        let mut policy = self.policy.clone();
        policy.readiness = crate::policy::Readiness::Immediate;
        policy.watchdog = None;
        // A worker is asked to stop with a Shutdown frame once idle, not with a signal.
        policy.stop = crate::policy::StopWith::Request;
        let cfg = engine::Config {
            name: self.name.clone(),
            workers: self.workers,
            pipeline: self.pipeline,
            job_timeout: self.job_timeout,
            max_jobs_per_worker: self.max_jobs_per_worker,
            max_rss_bytes: self.max_rss_bytes,
            policy,
        };
        let engine = Engine::new(cfg, Arc::clone(&shared), poll, spawner);
        {
            let mut inner = shared.lock();
            inner.stats.fork_server_pid = engine.fork_server_pid();
            inner.stats.worker_pids = vec![None; self.workers];
        }
        Ok(Pool {
            name: self.name,
            workers: self.workers,
            pipeline: self.pipeline,
            queue_capacity: self.queue_capacity,
            shared,
            engine: Mutex::new(Some(engine)),
            thread: Mutex::new(None),
            started: Once::new(),
            _types: PhantomData,
        })
    }

    fn validate(&self) -> Result<()> {
        let invalid = |what, reason: &str| {
            Err(Error::Invalid {
                what,
                reason: reason.to_string(),
            })
        };
        if self.name.is_empty() || self.name.contains(['\0', '=']) {
            return invalid("pool name", "it must be non-empty, without '=' or NUL");
        }
        if self.workers == 0 {
            return invalid("pool workers", "at least one worker is needed");
        }
        if self.pipeline == 0 || self.pipeline > frame::MAX_WORDS {
            return invalid(
                "pool pipeline",
                "between 1 and 65536 jobs in flight per worker",
            );
        }
        if self.queue_capacity == 0 {
            return invalid(
                "pool queue_capacity",
                "the queue must hold at least one job",
            );
        }
        if self.max_jobs_per_worker == Some(0) {
            return invalid("pool max_jobs_per_worker", "must be at least 1");
        }
        Ok(())
    }

    /// Forks the fork server, refusing (with the way out) in a multi-threaded process.
    fn fork_server(&self) -> Result<Spawner> {
        match crate::sys::require_single_thread() {
            Err(Error::MultiThreaded(threads)) => {
                return Err(Error::Invalid {
                    what: "pool start method",
                    reason: format!(
                        "StartMethod::Fork needs a single-threaded process, but this one has \
                     {threads} threads (fork(2) would copy only the calling thread, with any \
                     lock another thread holds). Build the pool at the start of main, before \
                     any thread or async runtime starts, or use StartMethod::ExecSelf"
                    ),
                });
            }
            other => other?,
        }
        let handler = &self.handler;
        let entry =
            move |sock: std::os::fd::OwnedFd, claims: crate::sys::memfd::SharedWords| -> i32 {
                let stop = worker::serve::<J, O, E, F>(&sock, &claims, handler);
                if let worker::Stop::Broken(why) = &stop {
                    eprintln!("warden pool worker: {why}");
                }
                stop.code()
            };
        let z = zygote::start(&entry).map_err(|e| match e {
            Error::MultiThreaded(n) => Error::Invalid {
                what: "pool start method",
                reason: format!(
                    "StartMethod::Fork needs a single-threaded process, but this one has {n} \
                     threads; build the pool before starting threads, or use \
                     StartMethod::ExecSelf"
                ),
            },
            e => e,
        })?;
        Ok(Spawner::Fork {
            zygote: Some(z),
            outq: Default::default(),
            writable: false,
            pending: Default::default(),
            next_token: 1,
        })
    }

    /// This process is an exec-self worker of this pool: serve descriptor 3 (with the claim
    /// words of descriptor 4), then exit.
    fn become_worker(&self) -> ! {
        let inherited = crate::sys::fd::claim_inherited_socket(3)
            .and_then(|sock| Ok((sock, crate::sys::memfd::SharedWords::map_inherited(4)?)));
        let code = match inherited {
            Ok((sock, claims)) => {
                let stop = worker::serve::<J, O, E, F>(&sock, &claims, &self.handler);
                if let worker::Stop::Broken(why) = &stop {
                    eprintln!("warden pool {} worker: {why}", self.name);
                }
                stop.code()
            }
            Err(e) => {
                eprintln!(
                    "warden pool {}: started as a worker ({WORKER_ENV}={}) but {e}",
                    self.name, self.name
                );
                2
            }
        };
        worker::flush_stdio();
        std::process::exit(code)
    }
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
        PoolBuilder {
            name: name.into(),
            handler,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pipeline: 32,
            queue_capacity: 1024,
            job_timeout: None,
            max_jobs_per_worker: None,
            max_rss_bytes: None,
            start_method: StartMethod::Fork,
            policy: Policy::default(),
            _types: PhantomData,
        }
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
        let (handle, sink) = JobHandle::new();
        match self.enqueue(job, options, sink, true) {
            Ok(()) => Ok(handle),
            Err(TrySubmitError::Closed(j) | TrySubmitError::Full(j)) => Err(Closed(j)),
        }
    }

    /// Submits a job unless the queue is full or the pool closed, giving the job back then.
    pub fn try_submit(&self, job: J) -> std::result::Result<JobHandle<O, E>, TrySubmitError<J>> {
        let (handle, sink) = JobHandle::new();
        self.enqueue(job, JobOptions::default(), sink, false)?;
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
        let sink = Sink::new(move |raw: Raw<'_>| callback(decode_one(raw)));
        self.enqueue(job, options, sink, true)
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
            let sink = Sink::new(move |raw: Raw<'_>| {
                let _ = tx.send((i, decode_one(raw)));
            });
            if self
                .enqueue(job, JobOptions::default(), sink, true)
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
            let mut body = Vec::with_capacity(4 + count * 4);
            body.extend_from_slice(&(count as u32).to_le_bytes());
            if let Err(e) = frame::encode_into(chunk, &mut body) {
                // Reported at once: this chunk never reaches the pool.
                let why = format!("job {e}");
                let _ = tx.send((
                    start,
                    (0..count)
                        .map(|_| Err(JobError::Codec(why.clone())))
                        .collect(),
                ));
                sent = start + count;
                continue;
            }
            let tx = tx.clone();
            let sink = Sink::new(move |raw: Raw<'_>| {
                let _ = tx.send((start, decode_chunk(raw, count)));
            });
            let job = Job {
                kind: frame::CHUNK,
                body,
                items: count as u32,
                timeout: None,
                retries: 0,
                sink,
            };
            if self.enqueue_job(job, true).is_err() {
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

    /// Runs every job and yields `(input index, outcome)` as jobs finish, keeping a bounded
    /// number of jobs in the pool at a time (so an endless iterator is fine).
    pub fn imap_unordered<I>(
        &self,
        jobs: I,
    ) -> std::result::Result<ImapUnordered<'_, J, O, E, I::IntoIter>, Closed>
    where
        I: IntoIterator<Item = J>,
    {
        if self.shared.lock().closed {
            return Err(Closed(()));
        }
        let (tx, rx) = mpsc::channel();
        // Woken (a `None` on the channel) when the I/O thread ends, instead of polling for it.
        let end = tx.clone();
        let waker = self.shared.on_io_done(Box::new(move || {
            let _ = end.send(None);
        }));
        Ok(ImapUnordered {
            pool: self,
            input: jobs.into_iter(),
            next: 0,
            outstanding: 0,
            window: self.queue_capacity.max(2 * self.workers * self.pipeline),
            tx,
            rx,
            exhausted: false,
            closed_at: None,
            waker,
            ended: waker.is_none(),
        })
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
        self.shared.not_full.notify_all();
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
        let mut inner = self.shared.lock();
        while inner.finished < inner.accepted && !inner.io_done {
            inner.waiting += 1;
            inner = self
                .shared
                .changed
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
            inner.waiting -= 1;
        }
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
        self.shared.not_full.notify_all();
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
            let mut inner = self.shared.lock();
            while !inner.io_done {
                inner.waiting += 1;
                inner = self
                    .shared
                    .changed
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner);
                inner.waiting -= 1;
            }
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

    /// Encodes and enqueues one job.
    fn enqueue(
        &self,
        job: J,
        options: JobOptions,
        sink: Sink,
        block: bool,
    ) -> std::result::Result<(), TrySubmitError<J>> {
        let body = match encode_exact(&job) {
            Ok(body) => body,
            Err(e) => {
                // Reported at once, on this thread: the job never reaches the pool.
                sink.call(Raw::Codec(format!("job {e}")));
                return Ok(());
            }
        };
        let job_ = Job {
            kind: frame::JOB,
            body,
            items: 1,
            timeout: options.timeout,
            retries: options.retries,
            sink,
        };
        match self.enqueue_job(job_, block) {
            Ok(()) => Ok(()),
            Err((_, true)) => Err(TrySubmitError::Full(job)),
            Err((_, false)) => Err(TrySubmitError::Closed(job)),
        }
    }

    /// Puts an encoded job on the queue: `Err((job, full))` when it was not taken (its sink then
    /// defused: a refused job has no outcome, its submitter gets it back).
    fn enqueue_job(&self, job: Job, block: bool) -> std::result::Result<(), (Job, bool)> {
        let refused = self.try_enqueue(job, block);
        refused.map_err(|(mut job, full)| {
            job.sink.defuse();
            (job, full)
        })
    }

    fn try_enqueue(&self, job: Job, block: bool) -> std::result::Result<(), (Job, bool)> {
        self.start();
        let on_io = engine::ON_IO_THREAD.with(|f| f.get());
        let mut inner = self.shared.lock();
        loop {
            if inner.closed || inner.io_done {
                return Err((job, false));
            }
            if inner.queue.len() < inner.capacity || on_io {
                break;
            }
            if !block {
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
        self.shared.not_full.notify_all();
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

/// Encodes `value` into an exactly-sized `Vec`, through a per-thread scratch buffer that keeps
/// its capacity: a large job costs one allocation and one copy instead of a buffer grown by
/// doubling (a reallocation and copy per step).
fn encode_exact<T: Serialize + ?Sized>(value: &T) -> std::result::Result<Vec<u8>, String> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            frame::encode_into(value, &mut buf)?;
            let out = buf.to_vec();
            if buf.capacity() > 4 << 20 {
                *buf = Vec::new(); // don't keep a huge buffer forever
            }
            Ok(out)
        }
        // Re-entered (a Serialize impl that submits): fall back to a fresh buffer.
        Err(_) => {
            let mut buf = Vec::new();
            frame::encode_into(value, &mut buf)?;
            Ok(buf)
        }
    })
}

/// `Pool` is shared across threads by reference or `Arc`; handles move to other threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<Pool<u64, u64, String>>();
    send::<JobHandle<u64, String>>();
};

fn assert_not_io_thread(what: &str) {
    assert!(
        !engine::ON_IO_THREAD.with(|f| f.get()),
        "Pool::{what} called from a pool callback, which runs on the pool's I/O thread and \
         would wait for itself"
    );
}

/// Decodes one job's outcome.
fn decode_one<O: DeserializeOwned, E: DeserializeOwned>(raw: Raw<'_>) -> Outcome<O, E> {
    match raw {
        Raw::Done(bytes) => match frame::decode::<Wire<O, E>>(bytes) {
            Ok(w) => from_wire(w),
            Err(e) => Err(JobError::Codec(format!("result {e}"))),
        },
        Raw::Failed(f) => Err(f.into()),
        Raw::Codec(m) => Err(JobError::Codec(m)),
    }
}

/// Decodes the outcomes of a chunk of `count` jobs.
fn decode_chunk<O: DeserializeOwned, E: DeserializeOwned>(
    raw: Raw<'_>,
    count: usize,
) -> Vec<Outcome<O, E>> {
    match raw {
        Raw::Done(bytes) => match frame::decode::<Vec<Wire<O, E>>>(bytes) {
            Ok(ws) if ws.len() == count => ws.into_iter().map(from_wire).collect(),
            Ok(ws) => {
                let why = format!("chunk of {count} jobs answered with {} results", ws.len());
                (0..count)
                    .map(|_| Err(JobError::Codec(why.clone())))
                    .collect()
            }
            Err(e) => (0..count)
                .map(|_| Err(JobError::Codec(format!("result {e}"))))
                .collect(),
        },
        Raw::Failed(f) => (0..count).map(|_| Err(f.clone().into())).collect(),
        Raw::Codec(m) => (0..count)
            .map(|_| Err(JobError::Codec(m.clone())))
            .collect(),
    }
}

fn from_wire<O, E>(w: Wire<O, E>) -> Outcome<O, E> {
    match w {
        Wire::Ok(o) => Ok(o),
        Wire::Err(e) => Err(JobError::Handler(e)),
        Wire::Panicked(m) => Err(JobError::Panicked(m)),
        Wire::Codec(m) => Err(JobError::Codec(m)),
    }
}

/// The state of a [`JobHandle`]'s slot.
struct HandleState<O, E> {
    outcome: Option<Outcome<O, E>>,
    waiting: bool,
}

struct HandleSlot<O, E> {
    state: Mutex<HandleState<O, E>>,
    cv: Condvar,
}

/// The outcome of a submitted job, to come. Dropping it does not cancel the job.
pub struct JobHandle<O, E> {
    slot: Arc<HandleSlot<O, E>>,
}

impl<O, E> fmt::Debug for JobHandle<O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<O, E> JobHandle<O, E>
where
    O: DeserializeOwned + Send + 'static,
    E: DeserializeOwned + Send + 'static,
{
    fn new() -> (JobHandle<O, E>, Sink) {
        let slot = Arc::new(HandleSlot {
            state: Mutex::new(HandleState {
                outcome: None,
                waiting: false,
            }),
            cv: Condvar::new(),
        });
        let theirs = Arc::clone(&slot);
        let sink = Sink::new(move |raw: Raw<'_>| {
            let outcome = decode_one(raw);
            let mut st = theirs.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.outcome = Some(outcome);
            let notify = st.waiting;
            drop(st);
            if notify {
                theirs.cv.notify_all();
            }
        });
        (JobHandle { slot }, sink)
    }
}

impl<O, E> JobHandle<O, E> {
    /// Waits for the outcome.
    pub fn wait(self) -> Outcome<O, E> {
        let mut st = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(o) = st.outcome.take() {
                return o;
            }
            st.waiting = true;
            st = self
                .slot
                .cv
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits at most `timeout`; gives the handle back if the outcome is not there yet.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Outcome<O, E>, Self> {
        let deadline = Instant::now() + timeout;
        {
            let mut st = self
                .slot
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(o) = st.outcome.take() {
                    return Ok(o);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st.waiting = true;
                st = self
                    .slot
                    .cv
                    .wait_timeout(st, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        Err(self)
    }

    /// The outcome if it is there, else the handle back.
    pub fn try_get(self) -> std::result::Result<Outcome<O, E>, Self> {
        let taken = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outcome
            .take();
        taken.ok_or(self)
    }

    /// Whether the outcome is there.
    pub fn is_finished(&self) -> bool {
        self.slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outcome
            .is_some()
    }
}

/// Outcomes as jobs finish, with their input index; from [`Pool::imap_unordered`].
pub struct ImapUnordered<'p, J, O, E, I> {
    pool: &'p Pool<J, O, E>,
    input: I,
    next: usize,
    outstanding: usize,
    window: usize,
    /// `Some` per outcome; `None` once, when the I/O thread has ended.
    tx: mpsc::Sender<Option<(usize, Outcome<O, E>)>>,
    rx: mpsc::Receiver<Option<(usize, Outcome<O, E>)>>,
    exhausted: bool,
    closed_at: Option<usize>,
    /// The registration of the end-of-I/O-thread waker.
    waker: Option<u64>,
    /// The I/O thread has ended: no outcome will come that is not already on the channel.
    ended: bool,
}

impl<J, O, E, I> Drop for ImapUnordered<'_, J, O, E, I> {
    fn drop(&mut self) {
        if let Some(id) = self.waker.take() {
            self.pool.shared.forget_io_done(id);
        }
    }
}

impl<J, O, E, I> fmt::Debug for ImapUnordered<'_, J, O, E, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("submitted", &self.next)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl<J, O, E, I> Iterator for ImapUnordered<'_, J, O, E, I>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = J>,
{
    type Item = (usize, Outcome<O, E>);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(i) = self.closed_at.take() {
            return Some((i, Err(JobError::Cancelled)));
        }
        while !self.exhausted && self.outstanding < self.window {
            let Some(job) = self.input.next() else {
                self.exhausted = true;
                break;
            };
            let i = self.next;
            self.next += 1;
            let tx = self.tx.clone();
            let sink = Sink::new(move |raw: Raw<'_>| {
                let _ = tx.send(Some((i, decode_one(raw))));
            });
            if self
                .pool
                .enqueue(job, JobOptions::default(), sink, true)
                .is_err()
            {
                // Closed midway: this job is reported cancelled, the rest are not taken.
                self.exhausted = true;
                if self.outstanding == 0 {
                    return Some((i, Err(JobError::Cancelled)));
                }
                self.closed_at = Some(i);
                break;
            }
            self.outstanding += 1;
        }
        if self.outstanding == 0 {
            return self.closed_at.take().map(|i| (i, Err(JobError::Cancelled)));
        }
        loop {
            let got = if self.ended {
                // Every sink runs (or is dropped) before the I/O thread ends: what is not on
                // the channel now never will be.
                self.rx.try_recv().ok()
            } else {
                self.rx.recv().ok()
            };
            match got {
                Some(Some(item)) => {
                    self.outstanding -= 1;
                    return Some(item);
                }
                Some(None) => self.ended = true,
                None => return None,
            }
        }
    }
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
