//! Receiving a job's messages: [`Messages`] (a blocking stream per job), callbacks on the I/O
//! thread, and `map` with a message callback on the calling thread; the typed layer over
//! `engine::credit`.
//!
//! This module owns decoding messages (the message type `M` is chosen per call, like a channel's:
//! the handler must send that type) and reporting their consumption, which is what gives the
//! worker its credit back (see `context`). It never blocks the I/O thread: a stream's buffer
//! holds at most the bound given at submission, because the worker cannot send more than that
//! ahead of the consumer.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{decode_one, encode_exact};
use super::context::{JobContext, WithContext};
use super::engine::{Completion, Job, MessageSink, NO_TICKET, Raw, SinkState};
use super::{Closed, JobHandle, JobOptions, Outcome, Pool, PoolBuilder, TrySubmitError, frame};

/// A message that could not be decoded as the receiver's type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes did not decode as `M` (the handler sent another type?).
    Codec(String),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Codec(why) => write!(f, "message {why}"),
        }
    }
}

impl std::error::Error for MessageError {}

/// Where a job's message stream stands; from [`Messages::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// The job has no outcome yet: more messages may come.
    Open,
    /// The worker answered the job: every message it sent is in the stream (messages come
    /// before the outcome).
    Complete,
    /// The job ended without an answer (its worker died or was killed on a timeout, or the job
    /// was cancelled): messages it had not written yet are missing.
    Incomplete,
}

fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, MessageError> {
    frame::decode(bytes).map_err(MessageError::Codec)
}

/// The buffer between the I/O thread and a [`Messages`] stream.
struct Queue {
    state: Mutex<QueueState>,
    cv: Condvar,
    sink: Arc<SinkState>,
}

struct QueueState {
    items: VecDeque<Vec<u8>>,
    status: MessageStatus,
    /// The stream was dropped: messages are counted consumed as they come.
    gone: bool,
    waiting: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The I/O thread: one message body.
    fn push(&self, body: &[u8]) {
        let mut st = self.lock();
        if st.gone {
            drop(st);
            self.sink.note_consumed(1);
            return;
        }
        st.items.push_back(body.to_vec());
        let notify = st.waiting;
        drop(st);
        if notify {
            self.cv.notify_all();
        }
    }

    /// The job's outcome is there: no message will follow.
    fn finish(&self, status: MessageStatus) {
        let mut st = self.lock();
        st.status = status;
        drop(st);
        self.cv.notify_all();
    }
}

/// The messages of one job, in the order it sent them; from [`Pool::submit_with_messages`].
///
/// An iterator that blocks for the next message and ends once the job has its outcome (every
/// message comes before it); [`Messages::status`] then says whether the stream is whole. The
/// worker blocks while `bound` messages wait here unread, so read it (or drop it: the rest are
/// then discarded as they come) for the job to go on.
pub struct Messages<M> {
    queue: Arc<Queue>,
    _type: PhantomData<fn() -> M>,
}

impl<M> fmt::Debug for Messages<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.queue.lock();
        f.debug_struct("Messages")
            .field("buffered", &st.items.len())
            .field("status", &st.status)
            .finish()
    }
}

impl<M: DeserializeOwned> Messages<M> {
    /// Waits at most `timeout` for the next message: `Ok(None)` once the stream has ended,
    /// `Err(())` if nothing came in time.
    #[allow(clippy::result_unit_err)]
    pub fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Result<M, MessageError>>, ()> {
        self.take(Some(Instant::now() + timeout)).ok_or(())
    }

    /// Takes the next message, waiting until `deadline`; `None` when the deadline passed first,
    /// `Some(None)` at the end of the stream.
    fn take(&mut self, deadline: Option<Instant>) -> Option<Option<Result<M, MessageError>>> {
        let mut st = self.queue.lock();
        loop {
            if let Some(body) = st.items.pop_front() {
                drop(st);
                self.queue.sink.consume(1);
                return Some(Some(decode(&body)));
            }
            if st.status != MessageStatus::Open {
                return Some(None);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return None;
            }
            st.waiting = true;
            st = match left {
                None => self
                    .queue
                    .cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(l) => {
                    self.queue
                        .cv
                        .wait_timeout(st, l)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

impl<M> Messages<M> {
    /// Whether the job has ended, and if so whether every message it sent is in this stream.
    pub fn status(&self) -> MessageStatus {
        self.queue.lock().status
    }
}

impl<M: DeserializeOwned> Iterator for Messages<M> {
    type Item = Result<M, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.take(None).flatten()
    }
}

impl<M> Drop for Messages<M> {
    fn drop(&mut self) {
        let mut st = self.queue.lock();
        st.gone = true;
        let n = st.items.len() as u64;
        st.items.clear();
        drop(st);
        self.queue.sink.consume(n);
    }
}

/// What `map_with_messages`'s jobs report to its calling thread.
enum Event<O, E> {
    /// A message body of job `.0`, and its receiver's accounting.
    Message(usize, Vec<u8>, Arc<SinkState>),
    /// Job `.0`'s outcome.
    Done(usize, Outcome<O, E>),
}

/// A job's handle and its message stream; from [`Pool::submit_with_messages`].
pub type WithMessages<O, E, M> = (JobHandle<O, E>, Messages<M>);

/// The stream status a job's raw outcome leaves.
fn status_of(raw: &Raw<'_>) -> MessageStatus {
    match raw {
        Raw::Done(_) => MessageStatus::Complete,
        Raw::Failed(_) | Raw::Codec(_) => MessageStatus::Incomplete,
    }
}

/// The largest bound: the credit travels as a `u32`.
fn bound_of(bound: usize) -> u32 {
    u32::try_from(bound).unwrap_or(u32::MAX).max(1)
}

impl<J, O, E> Pool<J, O, E>
where
    J: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + Send + 'static,
{
    /// [`Pool::builder`] for a handler that is given a [`JobContext`], through which it sends
    /// messages to the job's receiver while it runs (see [`Pool::submit_with_messages`]).
    pub fn builder_with_context<F>(
        name: impl Into<String>,
        handler: F,
    ) -> PoolBuilder<J, O, E, WithContext<F>>
    where
        F: Fn(J, &JobContext<'_>) -> std::result::Result<O, E> + Send + Sync + 'static,
    {
        PoolBuilder::new(name.into(), WithContext(handler))
    }

    /// Submits a job whose messages ([`JobContext::send`]) come, decoded as `M`, through the
    /// returned [`Messages`] stream, in order and all before the outcome. At most `bound` (at
    /// least 1) messages wait unread: the worker blocks in `send` while the stream is that far
    /// behind — so read the stream, or drop it (the rest is then discarded), or the job waits.
    /// Blocks while the queue is full.
    pub fn submit_with_messages<M>(
        &self,
        job: J,
        bound: usize,
    ) -> std::result::Result<WithMessages<O, E, M>, Closed<J>>
    where
        M: DeserializeOwned,
    {
        let sink = Arc::new(SinkState::new(bound_of(bound), Arc::clone(&self.shared)));
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                status: MessageStatus::Open,
                gone: false,
                waiting: false,
            }),
            cv: Condvar::new(),
            sink: Arc::clone(&sink),
        });
        let (handle, inner, ticket) = JobHandle::new(&self.shared);
        let (ours, theirs) = (Arc::clone(&queue), Arc::clone(&queue));
        let completion = Completion::new(move |raw: Raw<'_>| {
            ours.finish(status_of(&raw));
            inner.call(raw);
        })
        .with_messages(MessageSink::new(sink, move |body| theirs.push(body)));
        self.enqueue_listened(job, completion, ticket)
            .map_err(|e| Closed(e.into_job()))?;
        let messages = Messages {
            queue,
            _type: PhantomData,
        };
        Ok((handle, messages))
    }

    /// [`Pool::apply_async`] for a job whose messages go, decoded as `M` and in order, to
    /// `on_message`, then its outcome to `on_outcome` — both on the pool's I/O thread (keep them
    /// short). The worker may run at most `bound` messages ahead of `on_message`.
    pub fn apply_async_with_messages<M, G, C>(
        &self,
        job: J,
        bound: usize,
        mut on_message: G,
        on_outcome: C,
    ) -> std::result::Result<(), Closed<J>>
    where
        M: DeserializeOwned,
        G: FnMut(Result<M, MessageError>) + Send + 'static,
        C: FnOnce(Outcome<O, E>) + Send + 'static,
    {
        let sink = Arc::new(SinkState::new(bound_of(bound), Arc::clone(&self.shared)));
        let counted = Arc::clone(&sink);
        let deliver = move |body: &[u8]| {
            on_message(decode(body));
            counted.note_consumed(1);
        };
        let completion = Completion::new(move |raw: Raw<'_>| on_outcome(decode_one(raw)))
            .with_messages(MessageSink::new(sink, deliver));
        self.enqueue_listened(job, completion, NO_TICKET)
            .map_err(|e| Closed(e.into_job()))
    }

    /// [`Pool::map`] whose jobs' messages go, decoded as `M`, to `on_message(input index,
    /// message)` on the calling thread while the jobs run (each job's in order; a progress bar,
    /// say). Each job may run at most `bound` messages ahead of `on_message`. Jobs are
    /// submitted from a helper thread meanwhile, so a full queue never stops messages. If
    /// `on_message` panics, it is not called again; the jobs run to the end, then the panic
    /// goes on.
    pub fn map_with_messages<M, I, G>(
        &self,
        jobs: I,
        bound: usize,
        mut on_message: G,
    ) -> std::result::Result<Vec<Outcome<O, E>>, Closed>
    where
        M: DeserializeOwned,
        I: IntoIterator<Item = J>,
        G: FnMut(usize, Result<M, MessageError>),
    {
        let jobs: Vec<J> = jobs.into_iter().collect();
        let total = jobs.len();
        let (tx, rx) = mpsc::channel::<Event<O, E>>();
        let mut out: Vec<Option<Outcome<O, E>>> = (0..total).map(|_| None).collect();
        let mut panicked = None;
        let sent = std::thread::scope(|scope| {
            let submitter = scope.spawn(move || self.submit_mapped(jobs, bound, tx));
            for event in rx.iter() {
                match event {
                    Event::Message(i, body, sink) => {
                        // A panicking callback is not called again, but messages are still
                        // consumed to the end: the workers must not wait for it for ever.
                        if panicked.is_none() {
                            let call = AssertUnwindSafe(|| on_message(i, decode(&body)));
                            panicked = catch_unwind(call).err();
                        }
                        sink.consume(1);
                    }
                    Event::Done(i, outcome) => out[i] = Some(outcome),
                }
            }
            submitter.join().unwrap_or(0)
        });
        if let Some(payload) = panicked {
            resume_unwind(payload);
        }
        if sent == 0 && total > 0 {
            return Err(Closed(()));
        }
        Ok(super::fill_missing(out, sent))
    }

    /// `map_with_messages`'s submitting thread: each job with its messages and outcome sent as
    /// [`Event`]s; how many jobs were accepted.
    fn submit_mapped(&self, jobs: Vec<J>, bound: usize, tx: mpsc::Sender<Event<O, E>>) -> usize {
        let mut sent = 0;
        for (i, job) in jobs.into_iter().enumerate() {
            let sink = Arc::new(SinkState::new(bound_of(bound), Arc::clone(&self.shared)));
            let (done, msgs, state) = (tx.clone(), tx.clone(), Arc::clone(&sink));
            let deliver = move |body: &[u8]| {
                let _ = msgs.send(Event::Message(i, body.to_vec(), Arc::clone(&state)));
            };
            let completion = Completion::new(move |raw: Raw<'_>| {
                let _ = done.send(Event::Done(i, decode_one(raw)));
            })
            .with_messages(MessageSink::new(sink, deliver));
            if self.enqueue_listened(job, completion, NO_TICKET).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    }

    /// Encodes a job whose messages someone receives (its frame carries the initial credit) and
    /// enqueues it.
    fn enqueue_listened(
        &self,
        job: J,
        mut completion: Completion,
        ticket: u64,
    ) -> std::result::Result<(), TrySubmitError<J>> {
        let bound = completion.messages().map_or(1, |s| s.state().bound());
        let encoded = match encode_exact(&job) {
            Ok(encoded) => encoded,
            Err(e) => {
                completion.call(Raw::Codec(format!("job {e}")));
                return Ok(());
            }
        };
        let mut body = Vec::with_capacity(4 + encoded.len());
        body.extend_from_slice(&bound.to_le_bytes());
        body.extend_from_slice(&encoded);
        let options = JobOptions::default();
        let queued = Job {
            kind: frame::JOB_M,
            body,
            items: 1,
            timeout: options.timeout,
            retries: options.retries,
            completion,
            ticket,
        };
        match self.enqueue_job(queued, super::Admit::Wait) {
            Ok(()) => Ok(()),
            Err((_, true)) => Err(TrySubmitError::Full(job)),
            Err((_, false)) => Err(TrySubmitError::Closed(job)),
        }
    }
}
