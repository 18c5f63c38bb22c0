//! Waiting for one job's outcome: [`JobHandle`], blocking ([`JobHandle::wait`]), bounded
//! ([`JobHandle::wait_timeout`]) or awaited (it is a [`Future`]), and cancelling it.
//!
//! A handle's slot is filled by its job's completion on the I/O thread, which then wakes a
//! blocked thread (condition variable) or an async task (the [`Waker`] the last poll left):
//! no thread per wait, no runtime of its own, so it works under any executor. The handle never
//! cancels its job unless asked to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::cancel::Cancel;
use super::codec::decode_one;
use super::engine::{Completion, Raw, Shared};
use super::{Outcome, assert_not_io_thread};

/// The state of a [`JobHandle`]'s slot.
struct HandleState<O, E> {
    outcome: Option<Outcome<O, E>>,
    /// A thread sleeps on the condition variable.
    waiting: bool,
    /// The task that polled last, woken with the outcome.
    waker: Option<Waker>,
}

struct HandleSlot<O, E> {
    state: Mutex<HandleState<O, E>>,
    cv: Condvar,
}

/// The job a handle can cancel: its ticket in the pool's hand-off.
struct Ticket {
    shared: Weak<Shared>,
    ticket: u64,
}

/// The outcome of a submitted job, to come. Dropping it does not cancel the job.
///
/// Wait for it blocking ([`JobHandle::wait`], [`JobHandle::wait_timeout`]) or `.await` it: a
/// `JobHandle` is a [`Future`] whose output is the job's [`Outcome`], woken by the pool's I/O
/// thread when the outcome arrives — under tokio, async-std, smol or any executor, with no
/// thread per wait. (It must not be polled again once it has returned its outcome.)
pub struct JobHandle<O, E> {
    slot: Arc<HandleSlot<O, E>>,
    ticket: Option<Ticket>,
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
    /// A handle, the completion that fills it, and the job's ticket, by which the handle
    /// cancels it through `shared`: the address of the slot they share, unique among the jobs
    /// alive (a slot outlives both its job and its handle), and never 0 (`NO_TICKET`).
    pub(super) fn new(shared: &Arc<Shared>) -> (JobHandle<O, E>, Completion, u64) {
        let slot = Arc::new(HandleSlot {
            state: Mutex::new(HandleState {
                outcome: None,
                waiting: false,
                waker: None,
            }),
            cv: Condvar::new(),
        });
        let ticket = Arc::as_ptr(&slot) as usize as u64;
        let theirs = Arc::clone(&slot);
        let completion = Completion::new(move |raw: Raw<'_>| theirs.fill(decode_one(raw)));
        let handle = JobHandle {
            slot,
            ticket: Some(Ticket {
                shared: Arc::downgrade(shared),
                ticket,
            }),
        };
        (handle, completion, ticket)
    }
}

impl<O, E> HandleSlot<O, E> {
    fn lock(&self) -> MutexGuard<'_, HandleState<O, E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the outcome and wakes whoever waits for it.
    fn fill(&self, outcome: Outcome<O, E>) {
        let mut st = self.lock();
        st.outcome = Some(outcome);
        let notify = st.waiting;
        let waker = st.waker.take();
        drop(st);
        if notify {
            self.cv.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits until the outcome is there or `deadline` passes (with `None`, for as long as it
    /// takes); takes it if `take`, else leaves it in place. `Err(())` once the deadline passed
    /// without it, `Ok(None)` when it is there and left.
    fn wait_until(
        &self,
        deadline: Option<Instant>,
        take: bool,
    ) -> std::result::Result<Option<Outcome<O, E>>, ()> {
        let mut st = self.lock();
        loop {
            if st.outcome.is_some() {
                return Ok(if take { st.outcome.take() } else { None });
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(());
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

    /// Whether the outcome is there; if not, `cx`'s task is woken when it comes.
    fn poll_ready(&self, cx: &mut Context<'_>) -> bool {
        let mut st = self.lock();
        if st.outcome.is_some() {
            return true;
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        false
    }
}

impl<O, E> JobHandle<O, E> {
    /// A handle whose outcome is already known (a job the pool never took).
    pub(super) fn resolved(outcome: Outcome<O, E>) -> JobHandle<O, E> {
        let slot = Arc::new(HandleSlot {
            state: Mutex::new(HandleState {
                outcome: Some(outcome),
                waiting: false,
                waker: None,
            }),
            cv: Condvar::new(),
        });
        JobHandle { slot, ticket: None }
    }

    /// Waits for the outcome.
    pub fn wait(self) -> Outcome<O, E> {
        match self.slot.wait_until(None, true) {
            Ok(Some(o)) => o,
            _ => unreachable!("a wait without a deadline ends only with the outcome"),
        }
    }

    /// Waits at most `timeout`; gives the handle back if the outcome is not there yet.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Outcome<O, E>, Self> {
        match self.slot.wait_until(Some(Instant::now() + timeout), true) {
            Ok(Some(o)) => Ok(o),
            _ => Err(self),
        }
    }

    /// The outcome if it is there, else the handle back.
    pub fn try_get(self) -> std::result::Result<Outcome<O, E>, Self> {
        self.take().ok_or(self)
    }

    /// Whether the outcome is there.
    pub fn is_finished(&self) -> bool {
        self.slot.lock().outcome.is_some()
    }

    /// Cancels the job if it has not started: it is removed from the queue (or taken back from
    /// the worker it was sent to) and its outcome becomes
    /// [`JobError::Cancelled`](super::JobError::Cancelled) ([`Cancel::Removed`]). A running job
    /// is left to run ([`Cancel::Running`]); see [`JobHandle::cancel_and_kill`].
    ///
    /// Waits for the pool's I/O thread to carry it out (one turn of its loop).
    ///
    /// # Panics
    ///
    /// When called from a pool callback (it would wait for the thread running it).
    pub fn cancel(&self) -> Cancel {
        self.request_cancel(false)
    }

    /// Cancels the job, running or not: a job not started is removed as by
    /// [`JobHandle::cancel`]; a running job's worker is killed (`SIGKILL`) and replaced — a
    /// restart the pool asked for, not counted towards a crash loop — its outcome becomes
    /// [`JobError::Cancelled`](super::JobError::Cancelled) ([`Cancel::Killed`]), and the other
    /// jobs that worker held, which had not started, are sent again (they do not fail).
    ///
    /// Waits for the pool's I/O thread to carry it out (one turn of its loop); the job's outcome
    /// comes once the killed worker is reaped.
    ///
    /// # Panics
    ///
    /// When called from a pool callback (it would wait for the thread running it).
    pub fn cancel_and_kill(&self) -> Cancel {
        self.request_cancel(true)
    }

    fn request_cancel(&self, kill: bool) -> Cancel {
        if self.is_finished() {
            return Cancel::Finished;
        }
        let Some(shared) = self.ticket.as_ref().and_then(|t| t.shared.upgrade()) else {
            return Cancel::Finished;
        };
        assert_not_io_thread("cancel");
        let ticket = self.ticket.as_ref().map_or(0, |t| t.ticket);
        shared
            .cancel(vec![ticket], kill)
            .pop()
            .unwrap_or(Cancel::Finished)
    }

    /// The job's ticket, if it can be cancelled.
    pub(super) fn ticket(&self) -> Option<(Arc<Shared>, u64)> {
        let t = self.ticket.as_ref()?;
        Some((t.shared.upgrade()?, t.ticket))
    }

    /// Waits until the outcome is there or `deadline` passes; whether it is there.
    pub(super) fn ready_by(&self, deadline: Instant) -> bool {
        self.slot.wait_until(Some(deadline), false).is_ok()
    }

    /// Whether the outcome is there; if not, `cx`'s task is woken when it comes.
    pub(super) fn poll_ready(&self, cx: &mut Context<'_>) -> bool {
        self.slot.poll_ready(cx)
    }

    /// Takes the outcome if it is there.
    pub(super) fn take(&self) -> Option<Outcome<O, E>> {
        self.slot.lock().outcome.take()
    }
}

impl<O, E> Future for JobHandle<O, E> {
    type Output = Outcome<O, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<O, E>> {
        if self.slot.poll_ready(cx)
            && let Some(o) = self.take()
        {
            return Poll::Ready(o);
        }
        Poll::Pending
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;
    use crate::pool::JobError;
    use crate::pool::engine::Failure;

    /// A waker that counts its wakes: an executor of no runtime in particular.
    #[derive(Default)]
    pub(crate) struct Count(pub(crate) AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn shared() -> Arc<Shared> {
        let poll = mio::Poll::new().expect("epoll");
        Arc::new(Shared::new(&poll, 4).expect("eventfd"))
    }

    #[test]
    fn a_pending_handle_is_woken_once_by_its_completion_and_then_ready() {
        let shared = shared();
        let (mut handle, completion, _) = JobHandle::<u64, String>::new(&shared);
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
        completion.call(Raw::Failed(Failure::Cancelled));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            Pin::new(&mut handle).poll(&mut cx),
            Poll::Ready(Err(JobError::Cancelled))
        );
    }

    #[test]
    fn a_completion_dropped_unrun_still_wakes_the_task_with_an_outcome() {
        let shared = shared();
        let (mut handle, completion, _) = JobHandle::<u64, String>::new(&shared);
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut handle).poll(&mut cx).is_pending());
        drop(completion);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            Pin::new(&mut handle).poll(&mut cx),
            Poll::Ready(Err(JobError::Fatal(_)))
        ));
    }

    #[test]
    fn a_finished_handle_is_not_cancelled() {
        let shared = shared();
        let (handle, completion, _) = JobHandle::<u64, String>::new(&shared);
        completion.call(Raw::Failed(Failure::TimedOut));
        assert_eq!(handle.cancel(), Cancel::Finished);
        assert_eq!(handle.wait(), Err(JobError::TimedOut));
    }
}
