//! The pool's half of message credit (see `pool::context` for the rule): a job's receiver as the
//! I/O thread sees it, and the credit it hands back to the worker as the receiver consumes.
//!
//! This module owns the accounting only — how many messages a receiver has consumed and how many
//! of those were already given back as credit — and the delivery of a message body to the
//! receiver. It never decodes a message (the typed layer's closure does) and never blocks: a
//! receiver's buffer is bounded by the credit, not by waiting here.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::shared::Shared;

/// What the I/O thread calls with each message body of a job.
type Deliver = Box<dyn FnMut(&[u8]) + Send>;

/// A job's message receiver, type-erased; carried by the job's `Completion`.
pub(crate) struct MessageSink {
    deliver: Deliver,
    state: Arc<SinkState>,
}

impl MessageSink {
    /// A receiver delivering with `deliver`, which must report consumption through `state`.
    pub(crate) fn new(state: Arc<SinkState>, deliver: impl FnMut(&[u8]) + Send + 'static) -> Self {
        MessageSink {
            deliver: Box::new(deliver),
            state,
        }
    }

    /// Hands one message body to the receiver (a panic of a user callback is contained).
    pub(crate) fn deliver(&mut self, name: &str, body: &[u8]) {
        if catch_unwind(AssertUnwindSafe(|| (self.deliver)(body))).is_err() {
            log::error!("pool {name}: a message callback panicked (the pool carries on)");
            self.state.note_consumed(1);
        }
    }

    /// The accounting shared with the receiver.
    pub(crate) fn state(&self) -> &SinkState {
        &self.state
    }
}

/// How much of a job's messages its receiver has consumed, and how much credit went back.
pub(crate) struct SinkState {
    /// Messages the receiver may hold unconsumed: the worker's initial credit.
    bound: u32,
    /// Messages consumed so far.
    consumed: AtomicU64,
    /// The `consumed` count up to which credit was given back (or the attempt started).
    credited: AtomicU64,
    /// Wakes the I/O thread when credit is due.
    shared: Arc<Shared>,
}

impl SinkState {
    /// The accounting of a receiver holding at most `bound` messages (at least 1).
    pub(crate) fn new(bound: u32, shared: Arc<Shared>) -> SinkState {
        SinkState {
            bound: bound.max(1),
            consumed: AtomicU64::new(0),
            credited: AtomicU64::new(0),
            shared,
        }
    }

    /// The worker's initial credit.
    pub(crate) fn bound(&self) -> u32 {
        self.bound
    }

    /// Credit goes back in batches of half the bound, not one frame per message.
    fn batch(&self) -> u64 {
        u64::from(self.bound).div_ceil(2)
    }

    /// `n` messages consumed on the I/O thread (by a callback): credit follows at the end of the
    /// loop turn, no wake-up needed.
    pub(crate) fn note_consumed(&self, n: u64) {
        self.consumed.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` messages consumed on another thread: wakes the I/O thread when that makes credit
    /// due.
    pub(crate) fn consume(&self, n: u64) {
        if n == 0 {
            return;
        }
        let now = self.consumed.fetch_add(n, Ordering::AcqRel) + n;
        let credited = self.credited.load(Ordering::Acquire);
        let batch = self.batch();
        if now.saturating_sub(credited) >= batch && (now - n).saturating_sub(credited) < batch {
            self.shared.wake();
        }
    }

    /// A new attempt of the job starts with the full initial credit: what was consumed before
    /// it earns none.
    pub(crate) fn restart(&self) {
        let c = self.consumed.load(Ordering::Acquire);
        self.credited.store(c, Ordering::Release);
    }

    /// The credit to give back now, if a batch is due (I/O thread only).
    pub(crate) fn due(&self) -> Option<u32> {
        let c = self.consumed.load(Ordering::Acquire);
        let credited = self.credited.load(Ordering::Acquire);
        let n = c.saturating_sub(credited);
        if n == 0 || n < self.batch() {
            return None;
        }
        self.credited.store(c, Ordering::Release);
        Some(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(bound: u32) -> SinkState {
        let poll = mio::Poll::new().unwrap();
        SinkState::new(bound, Arc::new(Shared::new(&poll, 1).unwrap()))
    }

    #[test]
    fn credit_goes_back_in_half_bound_batches_of_what_was_consumed() {
        let s = state(8);
        s.consume(3);
        assert_eq!(s.due(), None);
        s.consume(1);
        assert_eq!(s.due(), Some(4));
        assert_eq!(s.due(), None, "given once");
        s.note_consumed(5);
        assert_eq!(s.due(), Some(5));
    }

    #[test]
    fn a_bound_of_one_credits_every_message() {
        let s = state(0);
        assert_eq!(s.bound(), 1);
        s.consume(1);
        assert_eq!(s.due(), Some(1));
    }

    #[test]
    fn a_new_attempt_earns_nothing_from_earlier_consumption() {
        let s = state(2);
        s.consume(1);
        s.restart();
        assert_eq!(s.due(), None);
        s.consume(1);
        assert_eq!(s.due(), Some(1));
    }
}
