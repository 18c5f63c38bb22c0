//! `map` without blocking for the whole result: [`Pool::map_async`] returns a [`MapResult`]
//! (Python's `map_async().get(timeout)`, and a [`Future`] of every outcome), and
//! [`Pool::map_timeout`] runs a map under a deadline, cancelling what has not finished by then.
//!
//! A `MapResult` is a list of [`JobHandle`]s: it waits, polls and cancels through them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Admit, Cancel, Closed, JobError, JobHandle, JobOptions, Outcome, Pool};

impl<J, O, E> Pool<J, O, E>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    /// Submits every job at once and returns their outcomes to come, in input order: wait with
    /// [`MapResult::get`] (a timeout, like Python's `map_async().get(t)`) or
    /// [`MapResult::wait`], `.await` it, or cancel what is left ([`MapResult::cancel`],
    /// [`MapResult::cancel_and_kill`]).
    ///
    /// Never blocks: every job is queued now, over the queue's bound if need be (the input is
    /// held in memory anyway, as by [`Pool::map`]); other submitters wait until the queue is
    /// back under its bound. Fails only if the pool is already closed; if it closes midway, the
    /// jobs not submitted get [`JobError::Cancelled`].
    pub fn map_async<I>(&self, jobs: I) -> std::result::Result<MapResult<O, E>, Closed>
    where
        I: IntoIterator<Item = J>,
    {
        if self.shared.lock().closed {
            return Err(Closed(()));
        }
        let mut handles = Vec::new();
        let mut closed = false;
        for job in jobs {
            if closed {
                handles.push(JobHandle::resolved(Err(JobError::Cancelled)));
                continue;
            }
            let (handle, completion, ticket) = JobHandle::new(&self.shared);
            let options = JobOptions::default();
            if self
                .enqueue(job, options, completion, Admit::Over, ticket)
                .is_err()
            {
                closed = true;
                handles.push(JobHandle::resolved(Err(JobError::Cancelled)));
                continue;
            }
            handles.push(handle);
        }
        Ok(MapResult { handles, first: 0 })
    }

    /// [`Pool::map`] under a deadline: the outcomes in input order, where every job not finished
    /// `timeout` after the call is cancelled — removed if it had not started, its worker killed
    /// and replaced if it was running (the jobs that worker held and had not started run
    /// elsewhere) — and gets [`JobError::Cancelled`].
    ///
    /// To leave the unfinished jobs running instead, use [`Pool::map_async`] and
    /// [`MapResult::get`], which gives the result back on timeout.
    pub fn map_timeout<I>(
        &self,
        jobs: I,
        timeout: Duration,
    ) -> std::result::Result<Vec<Outcome<O, E>>, Closed>
    where
        I: IntoIterator<Item = J>,
    {
        let deadline = Instant::now() + timeout;
        let result = self.map_async(jobs)?;
        Ok(
            match result.get(deadline.saturating_duration_since(Instant::now())) {
                Ok(all) => all,
                Err(late) => {
                    late.cancel_and_kill();
                    late.wait()
                }
            },
        )
    }
}

/// The outcomes of [`Pool::map_async`], to come, in input order.
///
/// Dropping it does not cancel the jobs. It is a [`Future`] of every outcome (under any
/// executor: each job's handle wakes the task).
pub struct MapResult<O, E> {
    handles: Vec<JobHandle<O, E>>,
    /// Every handle before this one has its outcome.
    first: usize,
}

impl<O, E> fmt::Debug for MapResult<O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapResult")
            .field("jobs", &self.handles.len())
            .field("finished", &self.finished())
            .finish()
    }
}

impl<O, E> MapResult<O, E> {
    /// How many jobs.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether it has no job.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// How many jobs have their outcome.
    pub fn finished(&self) -> usize {
        self.handles.iter().filter(|h| h.is_finished()).count()
    }

    /// Whether every job has its outcome (Python's `ready()`).
    pub fn ready(&self) -> bool {
        self.handles[self.first..]
            .iter()
            .all(JobHandle::is_finished)
    }

    /// Waits at most `timeout` for every outcome, and returns them in input order; on timeout,
    /// gives the result back with the jobs still running or queued — wait again, or cancel
    /// them ([`MapResult::cancel`], [`MapResult::cancel_and_kill`]).
    pub fn get(mut self, timeout: Duration) -> std::result::Result<Vec<Outcome<O, E>>, Self> {
        let deadline = Instant::now() + timeout;
        while self.first < self.handles.len() {
            if !self.handles[self.first].ready_by(deadline) {
                return Err(self);
            }
            self.first += 1;
        }
        Ok(self.take_all())
    }

    /// Waits for every outcome; returns them in input order.
    pub fn wait(self) -> Vec<Outcome<O, E>> {
        self.handles.into_iter().map(JobHandle::wait).collect()
    }

    /// Cancels every job that has not started (see [`JobHandle::cancel`]); running ones go on.
    /// Returns how many were removed.
    ///
    /// # Panics
    ///
    /// When called from a pool callback (it would wait for the thread running it).
    pub fn cancel(&self) -> usize {
        self.cancel_all(false)
    }

    /// Cancels every job not finished, killing (and replacing) the workers running any of them
    /// (see [`JobHandle::cancel_and_kill`]); each gets [`JobError::Cancelled`]. Returns how many
    /// were cancelled.
    ///
    /// # Panics
    ///
    /// When called from a pool callback (it would wait for the thread running it).
    pub fn cancel_and_kill(&self) -> usize {
        self.cancel_all(true)
    }

    fn cancel_all(&self, kill: bool) -> usize {
        let mut shared = None;
        let mut tickets = Vec::new();
        for h in &self.handles[self.first..] {
            if h.is_finished() {
                continue;
            }
            if let Some((s, t)) = h.ticket() {
                shared.get_or_insert(s);
                tickets.push(t);
            }
        }
        let Some(shared) = shared else {
            return 0;
        };
        super::assert_not_io_thread("cancel");
        shared
            .cancel(tickets, kill)
            .iter()
            .filter(|c| matches!(c, Cancel::Removed | Cancel::Killed))
            .count()
    }

    fn take_all(&mut self) -> Vec<Outcome<O, E>> {
        self.handles
            .iter()
            .map(|h| {
                h.take()
                    .unwrap_or_else(|| Err(JobError::Fatal("outcome taken twice".into())))
            })
            .collect()
    }
}

impl<O, E> Future for MapResult<O, E> {
    type Output = Vec<Outcome<O, E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<Outcome<O, E>>> {
        while self.first < self.handles.len() {
            if !self.handles[self.first].poll_ready(cx) {
                return Poll::Pending;
            }
            self.first += 1;
        }
        Poll::Ready(self.take_all())
    }
}
