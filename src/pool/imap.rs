//! Streaming outcomes with a bounded number of jobs in the pool: [`Imap`] (input order) and
//! [`ImapUnordered`] (as jobs finish), each both an [`Iterator`] (blocking) and a stream
//! ([`Imap::poll_next`], [`futures_core::Stream`], [`Imap::next_async`]).
//!
//! Both pull jobs from their input only while fewer than a window of them are submitted and
//! not yet yielded, so memory stays bounded however long the input (an endless iterator is
//! fine). Outcomes arrive in an [`Inbox`] filled by the completions on the I/O thread, which
//! wakes a blocked thread or the polling task; the end of the I/O thread ends the inbox.
//!
//! # Submitting
//!
//! The blocking iterators submit like [`Pool::submit`] (waiting while the pool's queue is full);
//! the async side never blocks: it submits over the queue's bound, which its own window bounds.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::decode_one;
use super::engine::{Completion, NO_TICKET, Raw};
use super::{Admit, Closed, JobError, JobOptions, Outcome, Pool};

impl<J, O, E> Pool<J, O, E>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    /// Runs every job and yields `(input index, outcome)` as jobs finish, keeping a bounded
    /// number of jobs in the pool at a time (so an endless iterator is fine). Also a stream
    /// ([`ImapUnordered::next_async`]).
    pub fn imap_unordered<I>(
        &self,
        jobs: I,
    ) -> std::result::Result<ImapUnordered<'_, J, O, E, I::IntoIter>, Closed>
    where
        I: IntoIterator<Item = J>,
    {
        Ok(ImapUnordered(Feed::new(self, jobs.into_iter())?))
    }

    /// Runs every job and yields the outcomes in input order, like Python's `Pool.imap`, with
    /// at most [`Imap::window`] jobs submitted and not yet yielded — running, queued, or done
    /// and waiting for an earlier one — so memory stays bounded however long the input (an
    /// endless iterator is fine). A slow job holds back the outcomes after it, not the workers,
    /// until the window is full. Also a stream ([`Imap::next_async`]).
    pub fn imap<I>(&self, jobs: I) -> std::result::Result<Imap<'_, J, O, E, I::IntoIter>, Closed>
    where
        I: IntoIterator<Item = J>,
    {
        Ok(Imap {
            feed: Feed::new(self, jobs.into_iter())?,
            held: VecDeque::new(),
        })
    }
}

/// Outcomes as they arrive, for one reader: a blocked thread or a polling task.
pub(super) struct Inbox<T> {
    state: Mutex<InboxState<T>>,
    cv: Condvar,
}

struct InboxState<T> {
    items: VecDeque<T>,
    /// No item will come that is not in `items`.
    ended: bool,
    waiting: bool,
    waker: Option<Waker>,
}

impl<T> Inbox<T> {
    pub(super) fn new() -> Inbox<T> {
        Inbox {
            state: Mutex::new(InboxState {
                items: VecDeque::new(),
                ended: false,
                waiting: false,
                waker: None,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InboxState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, mut st: MutexGuard<'_, InboxState<T>>) {
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

    pub(super) fn push(&self, item: T) {
        let mut st = self.lock();
        st.items.push_back(item);
        self.wake(st);
    }

    /// No more items will come (the I/O thread has ended).
    pub(super) fn end(&self) {
        let mut st = self.lock();
        st.ended = true;
        self.wake(st);
    }

    /// The next item, waiting for it; `None` once ended and empty.
    pub(super) fn recv(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(item) = st.items.pop_front() {
                return Some(item);
            }
            if st.ended {
                return None;
            }
            st.waiting = true;
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next item if there is one; else `cx`'s task is woken when one comes.
    pub(super) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = self.lock();
        if let Some(item) = st.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if st.ended {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The submitting side shared by [`Imap`] and [`ImapUnordered`].
struct Feed<'p, J, O, E, I> {
    pool: &'p Pool<J, O, E>,
    input: I,
    /// Jobs pulled from the input (the next one's index).
    next: usize,
    /// Outcomes yielded.
    yielded: usize,
    /// Jobs submitted whose outcome has not come out of the inbox.
    awaiting: usize,
    window: usize,
    exhausted: bool,
    inbox: Arc<Inbox<(usize, Outcome<O, E>)>>,
    /// The registration of the end-of-I/O-thread waker.
    io_done: Option<u64>,
}

impl<'p, J, O, E, I> Feed<'p, J, O, E, I>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = J>,
{
    fn new(pool: &'p Pool<J, O, E>, input: I) -> std::result::Result<Self, Closed> {
        if pool.shared.lock().closed {
            return Err(Closed(()));
        }
        let inbox = Arc::new(Inbox::new());
        // Ended when the I/O thread ends, instead of polling for it.
        let end = Arc::clone(&inbox);
        let io_done = pool.shared.on_io_done(Box::new(move || end.end()));
        if io_done.is_none() {
            inbox.end();
        }
        Ok(Feed {
            pool,
            input,
            next: 0,
            yielded: 0,
            awaiting: 0,
            window: pool.queue_capacity.max(2 * pool.workers * pool.pipeline),
            exhausted: false,
            inbox,
            io_done,
        })
    }

    /// Submits jobs from the input while fewer than the window are held. A job the pool
    /// refuses (closed midway) gets [`JobError::Cancelled`], and the input is not read further.
    fn fill(&mut self, admit: Admit) {
        while !self.exhausted && self.next - self.yielded < self.window {
            let Some(job) = self.input.next() else {
                self.exhausted = true;
                break;
            };
            let i = self.next;
            self.next += 1;
            self.awaiting += 1;
            let inbox = Arc::clone(&self.inbox);
            let completion = Completion::new(move |raw: Raw<'_>| inbox.push((i, decode_one(raw))));
            let options = JobOptions::default();
            if self
                .pool
                .enqueue(job, options, completion, admit, NO_TICKET)
                .is_err()
            {
                self.exhausted = true;
                self.inbox.push((i, Err(JobError::Cancelled)));
            }
        }
    }

    /// The next outcome to come, in completion order (`cx` `None` blocks for it):
    /// `Ready(None)` when none is awaited (or the I/O thread ended without it).
    fn poll_arrival(
        &mut self,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<(usize, Outcome<O, E>)>> {
        if self.awaiting == 0 {
            return Poll::Ready(None);
        }
        let got = match cx {
            None => self.inbox.recv(),
            Some(cx) => match self.inbox.poll_recv(cx) {
                Poll::Ready(got) => got,
                Poll::Pending => return Poll::Pending,
            },
        };
        if got.is_some() {
            self.awaiting -= 1;
        }
        Poll::Ready(got)
    }
}

impl<J, O, E, I> Drop for Feed<'_, J, O, E, I> {
    fn drop(&mut self) {
        if let Some(id) = self.io_done.take() {
            self.pool.shared.forget_io_done(id);
        }
    }
}

/// Outcomes as jobs finish, with their input index; from [`Pool::imap_unordered`].
///
/// An [`Iterator`] (blocking) and a stream: [`ImapUnordered::poll_next`],
/// [`futures_core::Stream`], [`ImapUnordered::next_async`]. Dropping it stops reading the
/// input; the jobs already submitted (at most [`ImapUnordered::window`]) still run.
pub struct ImapUnordered<'p, J, O, E, I>(Feed<'p, J, O, E, I>);

impl<J, O, E, I> fmt::Debug for ImapUnordered<'_, J, O, E, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("submitted", &self.0.next)
            .field("yielded", &self.0.yielded)
            .finish()
    }
}

impl<J, O, E, I> ImapUnordered<'_, J, O, E, I>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = J>,
{
    /// The most jobs submitted and not yet yielded.
    pub fn window(&self) -> usize {
        self.0.window
    }

    /// The next `(input index, outcome)` as a stream item: `Pending` (with `cx`'s task woken
    /// later) while none has arrived. Never blocks, also not on a full queue.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, Outcome<O, E>)>> {
        self.0.fill(Admit::Over);
        let got = self.0.poll_arrival(Some(cx));
        if let Poll::Ready(Some(_)) = got {
            self.0.yielded += 1;
        }
        got
    }

    /// The next `(input index, outcome)`, awaited: `None` once every job has yielded.
    pub async fn next_async(&mut self) -> Option<(usize, Outcome<O, E>)> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
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
        self.0.fill(Admit::Wait);
        let Poll::Ready(got) = self.0.poll_arrival(None) else {
            unreachable!("a blocking receive is always ready");
        };
        if got.is_some() {
            self.0.yielded += 1;
        }
        got
    }
}

impl<J, O, E, I> futures_core::Stream for ImapUnordered<'_, J, O, E, I>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = J> + Unpin,
{
    type Item = (usize, Outcome<O, E>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        ImapUnordered::poll_next(self.get_mut(), cx)
    }
}

/// Outcomes in input order; from [`Pool::imap`].
///
/// An [`Iterator`] (blocking) and a stream: [`Imap::poll_next`], [`futures_core::Stream`],
/// [`Imap::next_async`]. Dropping it stops reading the input; the jobs already submitted (at
/// most [`Imap::window`]) still run, their outcomes dropped.
pub struct Imap<'p, J, O, E, I> {
    feed: Feed<'p, J, O, E, I>,
    /// The outcomes from the next one to yield on, as far as submitted: `None` until it arrives.
    held: VecDeque<Option<Outcome<O, E>>>,
}

// Nothing in it is ever pinned: outcomes are moved out whole.
impl<J, O, E, I: Unpin> Unpin for Imap<'_, J, O, E, I> {}

impl<J, O, E, I> fmt::Debug for Imap<'_, J, O, E, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("submitted", &self.feed.next)
            .field("yielded", &self.feed.yielded)
            .finish()
    }
}

impl<J, O, E, I> Imap<'_, J, O, E, I>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = J>,
{
    /// The most jobs submitted and not yet yielded: the pool's queue capacity, or twice its
    /// workers × pipeline if that is more.
    pub fn window(&self) -> usize {
        self.feed.window
    }

    /// Jobs submitted and not yet yielded now (at most [`Imap::window`]).
    pub fn held(&self) -> usize {
        self.feed.next - self.feed.yielded
    }

    /// The next outcome in input order; `cx` `None` blocks.
    fn step(
        &mut self,
        admit: Admit,
        mut cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<Outcome<O, E>>> {
        loop {
            if let Some(Some(_)) = self.held.front() {
                self.feed.yielded += 1;
                return Poll::Ready(self.held.pop_front().flatten());
            }
            let before = self.feed.next;
            self.feed.fill(admit);
            let added = self.feed.next - before;
            self.held.extend((0..added).map(|_| None));
            if self.held.front().is_some_and(Option::is_some) {
                continue;
            }
            let arrival = match self.feed.poll_arrival(cx.as_deref_mut()) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(a) => a,
            };
            let Some((i, outcome)) = arrival else {
                return Poll::Ready(None);
            };
            if let Some(slot) = self.held.get_mut(i - self.feed.yielded) {
                *slot = Some(outcome);
            }
        }
    }

    /// The next outcome in input order as a stream item: `Pending` (with `cx`'s task woken
    /// later) until it has arrived. Never blocks, also not on a full queue.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outcome<O, E>>> {
        self.step(Admit::Over, Some(cx))
    }

    /// The next outcome in input order, awaited: `None` once every job has yielded.
    pub async fn next_async(&mut self) -> Option<Outcome<O, E>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

impl<J, O, E, I> Iterator for Imap<'_, J, O, E, I>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = J>,
{
    type Item = Outcome<O, E>;

    fn next(&mut self) -> Option<Outcome<O, E>> {
        let Poll::Ready(got) = self.step(Admit::Wait, None) else {
            unreachable!("a blocking receive is always ready");
        };
        got
    }
}

impl<J, O, E, I> futures_core::Stream for Imap<'_, J, O, E, I>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
    I: Iterator<Item = J> + Unpin,
{
    type Item = Outcome<O, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Imap::poll_next(self.get_mut(), cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::pool::handle::tests::Count;

    #[test]
    fn an_inbox_wakes_its_reader_per_item_and_at_its_end() {
        let inbox = Inbox::<u32>::new();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(inbox.poll_recv(&mut cx).is_pending());
        inbox.push(7);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Ready(Some(7)));
        assert!(inbox.poll_recv(&mut cx).is_pending());
        inbox.end();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Ready(None));
        assert_eq!(inbox.recv(), None);
    }
}
