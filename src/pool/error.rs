//! What a job or a submission can fail with: [`Outcome`] and [`JobError`] for a job,
//! [`PoolError`] for the pool as a whole, [`Closed`] and [`TrySubmitError`] for a submission
//! the pool refused.
//!
//! Plain data and its `Display`: nothing here runs jobs or talks to the I/O thread.

use std::fmt;

use super::engine::Failure;
use crate::policy::ExitStatus;

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
    /// The job was cancelled before it finished: by
    /// [`JobHandle::cancel`](super::JobHandle::cancel) (not started yet),
    /// [`JobHandle::cancel_and_kill`](super::JobHandle::cancel_and_kill),
    /// [`MapResult::cancel`](super::MapResult::cancel) and its kind, by a
    /// [`Pool::map_timeout`](super::Pool::map_timeout) deadline, or because
    /// [`Pool::terminate`](super::Pool::terminate) was called.
    Cancelled,
    /// The pool cannot run jobs any more; the reason.
    Fatal(String),
    /// The pool refuses jobs because of this failure (see [`PoolError`]).
    Pool(PoolError),
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
            JobError::Cancelled => f.write_str("the job was cancelled"),
            JobError::Fatal(m) => write!(f, "the pool cannot run jobs: {m}"),
            JobError::Pool(e) => write!(f, "the pool refuses jobs: {e}"),
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
            Failure::Pool(e) => JobError::Pool(e),
        }
    }
}

/// A failure of the pool as a whole, that every job after it fails with
/// ([`JobError::Pool`]); also in [`PoolStats::failure`](super::PoolStats::failure).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The [initializer](super::PoolBuilder::initializer) failed (returned an error or
    /// panicked) in worker slot `worker`, so the pool refuses jobs: the slot is not restarted,
    /// the jobs queued and submitted since fail with this error, and the log says so once. Jobs
    /// already running on other workers finish; [`Pool::revive`](super::Pool::revive) clears
    /// it and starts the stopped workers again (for example once the database is back).
    Initializer {
        /// The worker slot (the `N` of `NAME[N]` in the log) whose initializer failed first.
        worker: usize,
        /// Its error (`Display`) or panic message.
        reason: String,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Initializer { worker, reason } => {
                write!(f, "the initializer failed in worker {worker}: {reason}")
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// The pool no longer accepts jobs ([`Pool::close`](super::Pool::close) or
/// [`Pool::terminate`](super::Pool::terminate) was called); the job is given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed<T = ()>(pub T);

impl<T> fmt::Display for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the pool is closed to new jobs")
    }
}

impl<T: fmt::Debug> std::error::Error for Closed<T> {}

/// Why [`Pool::try_submit`](super::Pool::try_submit) did not take the job; the job is given back.
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
