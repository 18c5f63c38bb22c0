//! Cancelling one job: what [`JobHandle::cancel`](super::JobHandle::cancel) and
//! [`JobHandle::cancel_and_kill`](super::JobHandle::cancel_and_kill) report.
//!
//! Plain data: the I/O thread carries a cancellation out (`engine::cancel`), the handle asks for
//! it and waits one turn of that thread's loop for the answer.

/// What became of a job asked to be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancel {
    /// It had not started: it was removed from the queue (or taken back from the worker it was
    /// sent to, which had not started it) and its outcome is [`JobError::Cancelled`](super::JobError::Cancelled).
    Removed,
    /// It was running and [`JobHandle::cancel_and_kill`](super::JobHandle::cancel_and_kill)
    /// asked for it: its worker was killed and is replaced, its outcome is
    /// [`JobError::Cancelled`](super::JobError::Cancelled), and the other jobs that worker held
    /// (not started) are sent again — they do not fail.
    Killed,
    /// It is running and was left to run ([`JobHandle::cancel`](super::JobHandle::cancel) never
    /// kills): its outcome will be its own.
    Running,
    /// It had its outcome already (or the pool is gone): nothing was done.
    Finished,
}
