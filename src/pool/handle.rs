//! Waiting for outcomes: [`JobHandle`] (one job's outcome, to come) and [`ImapUnordered`]
//! (outcomes as jobs finish, with a bounded number in the pool).
//!
//! A handle is filled by its job's completion on the I/O thread and read by the API thread; it
//! never cancels its job.

use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::decode_one;
use super::engine::{Completion, Raw};
use super::{JobError, JobOptions, Outcome, Pool};

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
    pub(super) fn new() -> (JobHandle<O, E>, Completion) {
        let slot = Arc::new(HandleSlot {
            state: Mutex::new(HandleState {
                outcome: None,
                waiting: false,
            }),
            cv: Condvar::new(),
        });
        let theirs = Arc::clone(&slot);
        let completion = Completion::new(move |raw: Raw<'_>| {
            let outcome = decode_one(raw);
            let mut st = theirs.lock();
            st.outcome = Some(outcome);
            let notify = st.waiting;
            drop(st);
            if notify {
                theirs.cv.notify_all();
            }
        });
        (JobHandle { slot }, completion)
    }
}

impl<O, E> HandleSlot<O, E> {
    fn lock(&self) -> MutexGuard<'_, HandleState<O, E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the outcome, waiting for it until `deadline` (with `None`, for as long as it takes);
    /// `None` once the deadline passed without it.
    fn take(&self, deadline: Option<Instant>) -> Option<Outcome<O, E>> {
        let mut st = self.lock();
        loop {
            if let Some(o) = st.outcome.take() {
                return Some(o);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return None;
            }
            st.waiting = true;
            st = match left {
                None => self.cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    self.cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

impl<O, E> JobHandle<O, E> {
    /// Waits for the outcome.
    pub fn wait(self) -> Outcome<O, E> {
        self.slot
            .take(None)
            .expect("a wait without a deadline ends only with the outcome")
    }

    /// Waits at most `timeout`; gives the handle back if the outcome is not there yet.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Outcome<O, E>, Self> {
        match self.slot.take(Some(Instant::now() + timeout)) {
            Some(o) => Ok(o),
            None => Err(self),
        }
    }

    /// The outcome if it is there, else the handle back.
    pub fn try_get(self) -> std::result::Result<Outcome<O, E>, Self> {
        let taken = self.slot.lock().outcome.take();
        taken.ok_or(self)
    }

    /// Whether the outcome is there.
    pub fn is_finished(&self) -> bool {
        self.slot.lock().outcome.is_some()
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

impl<'p, J, O, E, I> ImapUnordered<'p, J, O, E, I>
where
    O: Send + 'static,
    E: Send + 'static,
{
    /// Outcomes of `input` run in `pool`, registered for the end of the I/O thread.
    pub(super) fn new(pool: &'p Pool<J, O, E>, input: I) -> Self {
        let (tx, rx) = mpsc::channel();
        // Woken (a `None` on the channel) when the I/O thread ends, instead of polling for it.
        let end = tx.clone();
        let waker = pool.shared.on_io_done(Box::new(move || {
            let _ = end.send(None);
        }));
        ImapUnordered {
            pool,
            input,
            next: 0,
            outstanding: 0,
            window: pool.queue_capacity.max(2 * pool.workers * pool.pipeline),
            tx,
            rx,
            exhausted: false,
            closed_at: None,
            waker,
            ended: waker.is_none(),
        }
    }
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
            let completion = Completion::new(move |raw: Raw<'_>| {
                let _ = tx.send(Some((i, decode_one(raw))));
            });
            if self
                .pool
                .enqueue(job, JobOptions::default(), completion, true)
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
                // Every completion runs (or is dropped) before the I/O thread ends: what is not on
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
