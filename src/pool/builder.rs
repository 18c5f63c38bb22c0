//! [`PoolBuilder`]: the pool's settings, checked and frozen by [`PoolBuilder::build`], which
//! starts the fork server (or prepares exec-self workers) and, in a worker, serves jobs instead.
//!
//! It must not run jobs: the built [`Pool`] and its engine do.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Handler;
use super::engine::{self, Engine, Shared, Spawner};
use super::init::{self, Initializer};
use super::{Policy, Pool, StartMethod, WORKER_ENV, frame, worker, zygote};
use crate::error::{Error, Result};

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
    initializer: Option<Initializer>,
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
            .field("initializer", &self.initializer.is_some())
            .finish()
    }
}

impl<J, O, E, F> PoolBuilder<J, O, E, F>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    F: Handler<J, O, E>,
{
    /// The defaults, for [`Pool::builder`].
    pub(super) fn new(name: String, handler: F) -> Self {
        PoolBuilder {
            name,
            handler,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pipeline: 32,
            queue_capacity: 1024,
            job_timeout: None,
            max_jobs_per_worker: None,
            max_rss_bytes: None,
            start_method: StartMethod::Fork,
            policy: Policy::default(),
            initializer: None,
            _types: PhantomData,
        }
    }

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

    /// Runs `init` once in each worker process before its first job — to load a model or open
    /// a database connection once per worker, kept in a `static` (a `OnceLock`) the handler
    /// reads — under both start methods. A worker that replaces another (after a death, a
    /// timeout, a cancellation, or recycling) runs it again.
    ///
    /// If it fails (returns an error or panics), the pool refuses jobs from then on: the
    /// failure is logged once, the jobs queued or submitted since fail with
    /// [`JobError::Pool`](super::JobError::Pool)`(`[`PoolError::Initializer`](super::PoolError::Initializer)`)`
    /// naming the worker and the reason, no worker is restarted (no crash loop of identical
    /// restarts), and [`PoolStats::failure`](super::PoolStats::failure) says so. Jobs already
    /// running on other workers finish. [`Pool::revive`] accepts jobs again and restarts the
    /// stopped workers, which run the initializer again.
    pub fn initializer<I, R>(mut self, init: I) -> Self
    where
        I: Fn() -> std::result::Result<(), R> + Send + Sync + 'static,
        R: fmt::Display,
    {
        self.initializer = Some(std::sync::Arc::new(move || {
            init().map_err(|e| e.to_string())
        }));
        self
    }

    /// Builds the pool. In an exec-self worker process of this pool, serves jobs and exits
    /// instead of returning.
    ///
    /// Errors: an invalid setting ([`Error::Invalid`]), [`StartMethod::Fork`] in a process that
    /// already has threads ([`Error::Invalid`] saying so), or a failed system call.
    pub fn build(self) -> Result<Pool<J, O, E>> {
        self.validate()?;
        let spawner = self.spawner()?;
        let poll = mio::Poll::new().map_err(|e| Error::os("epoll_create", e))?;
        let shared =
            Arc::new(Shared::new(&poll, self.queue_capacity).map_err(|e| Error::os("eventfd", e))?);
        let settings = self.settings();
        let engine = Engine::new(settings, Arc::clone(&shared), poll, spawner);
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

    /// How this pool's workers will be started: not at all in an exec-self worker of another
    /// pool (in a worker of this one, it serves jobs and never returns), else by the start method.
    fn spawner(&self) -> Result<Spawner> {
        if let Some(role) = std::env::var_os(WORKER_ENV) {
            if role == *self.name {
                self.become_worker();
            }
            return Ok(Spawner::Inert(format!(
                "pool {}: this process is an exec-self worker of pool {:?}; pools built in a \
                 worker do not run",
                self.name,
                role.to_string_lossy()
            )));
        }
        Ok(match self.start_method {
            StartMethod::Fork => self.fork_server()?,
            StartMethod::ExecSelf => {
                let mut args = std::env::args_os();
                let arg0 = args.next().unwrap_or_else(|| "warden-pool-worker".into());
                Spawner::ExecSelf {
                    arg0,
                    args: args.collect(),
                }
            }
        })
    }

    /// The engine's frozen settings; the worker policy with what a pool worker cannot use
    /// (readiness, watchdog, stop signal) replaced.
    fn settings(&self) -> engine::Settings {
        let mut policy = self.policy.clone();
        policy.readiness = crate::policy::Readiness::Immediate;
        policy.watchdog = None;
        // A worker is asked to stop with a Shutdown frame once idle, not with a signal.
        policy.stop = crate::policy::StopWith::Request;
        engine::Settings {
            name: self.name.clone(),
            workers: self.workers,
            pipeline: self.pipeline,
            job_timeout: self.job_timeout,
            max_jobs_per_worker: self.max_jobs_per_worker,
            max_rss_bytes: self.max_rss_bytes,
            policy,
        }
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
        let initializer = self.initializer.as_ref();
        let entry =
            move |sock: std::os::fd::OwnedFd, claims: crate::sys::memfd::SharedWords| -> i32 {
                if let Err(code) = init::run(initializer, &sock) {
                    return code;
                }
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
            Ok((sock, claims)) => 'serve: {
                if let Err(code) = init::run(self.initializer.as_ref(), &sock) {
                    break 'serve code;
                }
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
