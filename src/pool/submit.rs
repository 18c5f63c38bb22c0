//! Submitting from async code: [`Pool::submit_async`] waits for room in the pool's queue as a
//! future (woken when the I/O thread drains the queue, or the pool closes) instead of blocking
//! the executor's thread as [`Pool::submit`] would.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::engine::Shared;
use super::{Closed, JobHandle, Pool, TrySubmitError};

impl<J, O, E> Pool<J, O, E>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    /// [`Pool::submit`] for async code: while the queue is full, waits for room without
    /// blocking the thread; then returns the job's handle, itself awaited for the outcome:
    /// `pool.submit_async(job).await?.await`. Gives the job back if the pool is closed.
    pub async fn submit_async(&self, job: J) -> std::result::Result<JobHandle<O, E>, Closed<J>> {
        let mut job = job;
        loop {
            match self.try_submit(job) {
                Ok(handle) => return Ok(handle),
                Err(TrySubmitError::Closed(j)) => return Err(Closed(j)),
                Err(TrySubmitError::Full(j)) => {
                    job = j;
                    Room(&self.shared).await;
                }
            }
        }
    }
}

/// Ready once the queue has room or the pool no longer takes jobs.
struct Room<'a>(&'a Shared);

impl Future for Room<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.0.lock();
        if inner.closed || inner.io_done || inner.queue.len() < inner.capacity {
            return Poll::Ready(());
        }
        inner.room_wakers.push(cx.waker().clone());
        Poll::Pending
    }
}
