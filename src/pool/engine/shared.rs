//! The hand-off between the API threads and the I/O thread: jobs with their completions, and
//! the one mutex-guarded [`Shared`] state with the waker.
//!
//! This module owns the types that cross threads; it never talks to a worker, and the only
//! completions it calls itself are those of jobs still queued when the I/O thread ends.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mio::{Poll, Waker};

use super::WAKER;
use super::credit::MessageSink;
use crate::policy::ExitStatus;
use crate::pool::{Cancel, PoolError, PoolStats};

/// Where a job's outcome goes; called exactly once, on the I/O thread.
///
/// A completion dropped without being called (a job lost to a bug, e.g. a panic of the I/O thread)
/// delivers [`Failure::Fatal`] from its destructor, so that a waiter never waits forever.
pub(crate) struct Completion {
    deliver: Option<Deliver>,
    /// Where the job's messages go, if someone receives them (see `credit`).
    messages: Option<MessageSink>,
}

/// The boxed completion inside a [`Completion`].
type Deliver = Box<dyn FnOnce(Raw<'_>) + Send>;

impl Completion {
    /// A completion running `f` with the outcome.
    pub(crate) fn new(f: impl FnOnce(Raw<'_>) + Send + 'static) -> Completion {
        Completion {
            deliver: Some(Box::new(f)),
            messages: None,
        }
    }

    /// The same completion, for a job whose messages go to `sink`.
    pub(crate) fn with_messages(mut self, sink: MessageSink) -> Completion {
        self.messages = Some(sink);
        self
    }

    /// The job's message receiver, if any.
    pub(crate) fn messages(&mut self) -> Option<&mut MessageSink> {
        self.messages.as_mut()
    }

    /// For a job that was refused (its submitter gets it back): it will never have an outcome.
    pub(crate) fn defuse(&mut self) {
        self.deliver = None;
    }

    /// Delivers the outcome.
    pub(crate) fn call(mut self, raw: Raw<'_>) {
        if let Some(f) = self.deliver.take() {
            f(raw);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(f) = self.deliver.take() {
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
    /// The pool refuses jobs for this reason (a failed initializer).
    Pool(PoolError),
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
    /// What a [`CancelRequest`] names the job by; [`NO_TICKET`] for jobs that cannot be
    /// cancelled one by one (chunks, callbacks).
    pub(crate) ticket: u64,
    /// The completion.
    pub(crate) completion: Completion,
}

/// The ticket of a job that is never cancelled one by one.
pub(crate) const NO_TICKET: u64 = 0;

/// A request to cancel jobs, by ticket, answered on `reply` (one [`Cancel`] per ticket, in
/// order) by the I/O thread; dropped unanswered when it ends (the waiter then knows the jobs are
/// finished).
pub(crate) struct CancelRequest {
    pub(crate) tickets: Vec<u64>,
    /// Kill the workers running any of them.
    pub(crate) kill: bool,
    pub(crate) reply: SyncSender<Vec<Cancel>>,
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
    /// `Inner::cancels` may hold requests: read by the I/O thread without the lock.
    pub(crate) cancel_pending: AtomicBool,
}

/// The shared state under [`Shared`]'s mutex.
pub(crate) struct Inner {
    /// Jobs accepted but not yet sent to a worker (requeued ones at the front).
    pub(crate) queue: VecDeque<Job>,
    /// The queue's bound for `submit`.
    pub(crate) capacity: usize,
    /// Submitters waiting on `not_full`.
    pub(crate) blocked: usize,
    /// Async submitters waiting for room (`submit_async`): woken with `not_full`.
    pub(crate) room_wakers: Vec<std::task::Waker>,
    /// Threads waiting on `changed`.
    pub(crate) waiting: usize,
    /// No new jobs are accepted.
    pub(crate) closed: bool,
    /// The I/O thread is asked to stop.
    pub(crate) stop: Option<StopMode>,
    /// Jobs accepted (each chunk counts once).
    pub(crate) accepted: u64,
    /// Jobs whose completion has run.
    pub(crate) finished: u64,
    /// The I/O thread has ended (or never could start).
    pub(crate) io_done: bool,
    /// The latest snapshot, published by the I/O thread.
    pub(crate) stats: PoolStats,
    /// Cancellations asked for and not yet carried out by the I/O thread.
    pub(crate) cancels: Vec<CancelRequest>,
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
                room_wakers: Vec::new(),
                waiting: 0,
                closed: false,
                stop: None,
                accepted: 0,
                finished: 0,
                io_done: false,
                stats: PoolStats::default(),
                cancels: Vec::new(),
                io_done_wakers: Vec::new(),
                next_waker: 0,
            }),
            not_full: Condvar::new(),
            changed: Condvar::new(),
            waker: Waker::new(poll.registry(), WAKER)?,
            wake_pending: AtomicBool::new(false),
            revive: AtomicBool::new(false),
            cancel_pending: AtomicBool::new(false),
        })
    }

    /// Marks the I/O thread as ended, wakes every thread waiting on the condition variables and
    /// runs the registered wakers. Idempotent.
    fn mark_io_done(&self) {
        let mut inner = self.lock();
        let first = !inner.io_done;
        inner.io_done = true;
        let wakers = std::mem::take(&mut inner.io_done_wakers);
        // Unanswered: their waiters learn that every job has its outcome now.
        let cancels = std::mem::take(&mut inner.cancels);
        drop(inner);
        drop(cancels);
        if first {
            self.changed.notify_all();
            self.wake_submitters();
        }
        for (_, wake) in wakers {
            wake();
        }
    }

    /// Ends the pool's I/O: closes the pool, applies `update` (under the lock), fails every job
    /// still queued with `failure()` (outside the lock: a completion may run a user's callback), then
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
            let completion = job.completion;
            let raw = Raw::Failed(failure());
            if catch_unwind(AssertUnwindSafe(|| completion.call(raw))).is_err() {
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

    /// Wakes every submitter waiting for room, blocked or async (the pool closed, or its queue
    /// drained).
    pub(crate) fn wake_submitters(&self) {
        self.not_full.notify_all();
        let wakers = std::mem::take(&mut self.lock().room_wakers);
        wakers.into_iter().for_each(std::task::Waker::wake);
    }

    /// Asks the I/O thread to cancel the jobs of `tickets` and waits for its answer (one turn of
    /// its loop); every job counts as [`Cancel::Finished`] once the I/O thread has ended.
    pub(crate) fn cancel(&self, tickets: Vec<u64>, kill: bool) -> Vec<Cancel> {
        let n = tickets.len();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        {
            let mut inner = self.lock();
            if inner.io_done {
                return vec![Cancel::Finished; n];
            }
            inner.cancels.push(CancelRequest {
                tickets,
                kill,
                reply,
            });
            self.cancel_pending.store(true, Ordering::Release);
        }
        self.wake();
        answer.recv().unwrap_or_else(|_| vec![Cancel::Finished; n])
    }

    /// Locks the shared state (a panic elsewhere does not poison the pool).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on [`Shared::changed`] while `blocked` holds, counted in `waiting` (so that the
    /// I/O thread knows someone waits for progress), and returns the guard.
    pub(crate) fn wait_while<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        mut blocked: impl FnMut(&Inner) -> bool,
    ) -> MutexGuard<'a, Inner> {
        while blocked(&inner) {
            inner.waiting += 1;
            inner = self
                .changed
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
            inner.waiting -= 1;
        }
        inner
    }

    /// Called by the I/O thread at the start of each turn: the next [`Shared::wake`] wakes it
    /// again.
    pub(super) fn rearm_wake(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }

    /// Wakes the I/O thread, at most once per turn of its loop.
    pub(crate) fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }
}
