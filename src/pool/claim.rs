//! Claim words: which of the jobs sent to a worker it has started, known to the pool without a
//! message.
//!
//! This module owns the meaning of the words a worker shares with the pool
//! ([`crate::sys::memfd::SharedWords`], one array per worker, one word per job in flight). It does
//! no I/O and knows nothing of sockets or processes. A word holds a job id and a state:
//!
//! - the pool *queues* job `id` in a free word before it writes the job's frame (the id names
//!   the word);
//! - the worker *starts* it — queued → started, one compare-and-swap — before it runs the
//!   handler, and skips the job if that fails;
//! - the pool may *revoke* a job the worker has not started — queued → revoked, the same
//!   compare-and-swap — and send it to another worker.
//!
//! # Why it is race-free
//!
//! Start and revoke are compare-and-swaps from the same queued value, so exactly one of them wins:
//! a job runs at most once, even when the pool moves it while the worker reaches it. When a worker
//! dies, a job whose word says *started* is the one it was running (it runs one job at a time);
//! every other job it held never started and is sent again. A word reused for a later job holds
//! that job's id, so a stale frame never matches it.
//!
//! # Result slots
//!
//! Beside the claim words lie one *sleeping* word and, per claim word, a result slot
//! ([`SLOT_WORDS`] words: the length, then up to [`SLOT_BYTES`] bytes). A worker whose encoded
//! result fits *finishes* the job there — slot written, then started → done — instead of
//! sending a result frame: no system call, no wake-up. It sends a (bodiless) `NOTIFY` frame only
//! if the pool said it was going to sleep (and takes that word back: one wake-up per sleep). Both
//! sides use sequentially consistent accesses for
//! the done word and the sleeping word (a store, then a load of the other's word), so at least one
//! of them sees the other: either the pool sees the result before it sleeps, or the worker sees
//! it sleeping and wakes it. A done word outlives the worker, so a job finished there just before
//! a death is still a result, never a `WorkerDied`. Jobs are finished in order, so done jobs are
//! always the first ones a worker holds.

use std::sync::atomic::{AtomicU64, Ordering};

/// The worker answered the job in its result slot (see "Result slots").
const DONE: u64 = 0;
const QUEUED: u64 = 1;
const STARTED: u64 = 2;
const REVOKED: u64 = 3;

/// Where a job stands, as its word says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Sent, not started.
    Queued,
    /// The worker started it.
    Started,
    /// The pool took it back before it started.
    Revoked,
    /// The worker finished it in its result slot.
    Done,
    /// The word holds another job (or nothing).
    Other,
}

fn word(id: u64, state: u64) -> u64 {
    (id << 2) | state
}

/// The pool: job `id` is about to be sent in word `i`.
pub(crate) fn queue(words: &[AtomicU64], i: usize, id: u64) {
    words[i].store(word(id, QUEUED), Ordering::Release);
}

/// The worker: starts job `id` of word `i`; `false` if the pool revoked it (or the word is not
/// this job's: skip it).
pub(crate) fn start(words: &[AtomicU64], i: usize, id: u64) -> bool {
    let Some(w) = words.get(i) else {
        return false;
    };
    w.compare_exchange(
        word(id, QUEUED),
        word(id, STARTED),
        Ordering::AcqRel,
        Ordering::Acquire,
    )
    .is_ok()
}

/// The pool: takes job `id` of word `i` back; `false` if the worker started it first.
pub(crate) fn revoke(words: &[AtomicU64], i: usize, id: u64) -> bool {
    words[i]
        .compare_exchange(
            word(id, QUEUED),
            word(id, REVOKED),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
}

/// Words per result slot: the byte length, then the bytes.
pub(crate) const SLOT_WORDS: usize = 8;
/// The largest result that fits a slot.
pub(crate) const SLOT_BYTES: usize = (SLOT_WORDS - 1) * 8;

/// The shared array's length for `n` claim words: the words, the sleeping word, the slots.
pub(crate) fn layout_len(n: usize) -> usize {
    n * (1 + SLOT_WORDS) + 1
}

/// The number of claim words in a shared array of `len` words (laid out by [`layout_len`]).
pub(crate) fn claim_count(len: usize) -> usize {
    len.saturating_sub(1) / (1 + SLOT_WORDS)
}

/// The worker: job `id` of word `i` ran and its encoded result is `bytes` (at most
/// [`SLOT_BYTES`]); writes the slot, then marks the job done. `true` if the pool is (about to
/// be) asleep and no result woke it yet: the worker must then wake it (a `NOTIFY` frame).
pub(crate) fn finish(words: &[AtomicU64], i: usize, id: u64, bytes: &[u8]) -> bool {
    let n = claim_count(words.len());
    let slot = &words[n + 1 + i * SLOT_WORDS..n + 1 + (i + 1) * SLOT_WORDS];
    slot[0].store(bytes.len() as u64, Ordering::Relaxed);
    for (w, chunk) in slot[1..].iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    words[i].store(word(id, DONE), Ordering::SeqCst);
    // Taken, not just read: one wake-up per sleep is enough, the pool drains every slot.
    words[n].swap(0, Ordering::SeqCst) != 0
}

/// The pool: the result of job `id` of word `i` if the worker finished it in its slot, copied
/// into `out`; its length.
pub(crate) fn take_result(
    words: &[AtomicU64],
    i: usize,
    id: u64,
    out: &mut [u8; SLOT_BYTES],
) -> Option<usize> {
    if words[i].load(Ordering::SeqCst) != word(id, DONE) {
        return None;
    }
    let n = claim_count(words.len());
    let slot = &words[n + 1 + i * SLOT_WORDS..n + 1 + (i + 1) * SLOT_WORDS];
    let len = (slot[0].load(Ordering::Relaxed) as usize).min(SLOT_BYTES);
    for (w, chunk) in slot[1..].iter().zip(out.chunks_mut(8)) {
        chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    Some(len)
}

/// The pool: it is going to sleep (`true`: results must wake it) or is awake again.
pub(crate) fn set_sleeping(words: &[AtomicU64], asleep: bool) {
    let n = claim_count(words.len());
    words[n].store(u64::from(asleep), Ordering::SeqCst);
}

/// Where job `id` of word `i` stands.
pub(crate) fn state(words: &[AtomicU64], i: usize, id: u64) -> Claim {
    let w = words[i].load(Ordering::Acquire);
    if w >> 2 != id {
        return Claim::Other;
    }
    match w & 3 {
        DONE => Claim::Done,
        QUEUED => Claim::Queued,
        STARTED => Claim::Started,
        _ => Claim::Revoked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn start_and_revoke_exclude_each_other() {
        let w = words(2);
        queue(&w, 0, 7);
        assert_eq!(state(&w, 0, 7), Claim::Queued);
        assert!(start(&w, 0, 7));
        assert!(!revoke(&w, 0, 7));
        assert_eq!(state(&w, 0, 7), Claim::Started);
        queue(&w, 1, 8);
        assert!(revoke(&w, 1, 8));
        assert!(!start(&w, 1, 8));
        assert_eq!(state(&w, 1, 8), Claim::Revoked);
    }

    #[test]
    fn a_reused_word_does_not_match_a_stale_frame() {
        let w = words(1);
        queue(&w, 0, 1);
        assert!(revoke(&w, 0, 1));
        queue(&w, 0, 2); // reused for a later job before the worker read job 1's frame
        assert!(!start(&w, 0, 1));
        assert_eq!(state(&w, 0, 1), Claim::Other);
        assert!(start(&w, 0, 2));
        assert!(!start(&w, 5, 2), "out of range: skipped, no panic");
    }

    #[test]
    fn a_finished_result_is_read_back_whole_and_only_for_its_job() {
        let w = words(layout_len(4));
        assert_eq!(claim_count(w.len()), 4);
        queue(&w, 2, 9);
        assert!(start(&w, 2, 9));
        let mut out = [0u8; SLOT_BYTES];
        assert_eq!(take_result(&w, 2, 9, &mut out), None, "running, not done");
        let result: Vec<u8> = (1..=13).collect();
        assert!(!finish(&w, 2, 9, &result), "the pool is awake");
        assert_eq!(state(&w, 2, 9), Claim::Done);
        assert!(!revoke(&w, 2, 9), "a done job is not taken back");
        assert_eq!(take_result(&w, 2, 10, &mut out), None, "another job's word");
        assert_eq!(take_result(&w, 2, 9, &mut out), Some(13));
        assert_eq!(&out[..13], &result[..]);
        let full = [7u8; SLOT_BYTES];
        queue(&w, 3, 11);
        assert!(start(&w, 3, 11));
        finish(&w, 3, 11, &full);
        assert_eq!(take_result(&w, 3, 11, &mut out), Some(SLOT_BYTES));
        assert_eq!(out, full);
    }

    #[test]
    fn a_worker_finishing_while_the_pool_sleeps_must_wake_it() {
        let w = words(layout_len(1));
        set_sleeping(&w, true);
        queue(&w, 0, 5);
        assert!(start(&w, 0, 5));
        assert!(finish(&w, 0, 5, b"x"));
        queue(&w, 0, 7);
        assert!(start(&w, 0, 7));
        assert!(!finish(&w, 0, 7, b"z"), "woken once per sleep");
        set_sleeping(&w, false);
        queue(&w, 0, 6);
        assert!(start(&w, 0, 6));
        assert!(!finish(&w, 0, 6, b"y"));
    }

    #[test]
    fn exactly_one_of_a_racing_start_and_revoke_wins() {
        for round in 0..2000u64 {
            let w = std::sync::Arc::new(words(1));
            queue(&w, 0, round + 1);
            let w2 = std::sync::Arc::clone(&w);
            let t = std::thread::spawn(move || start(&w2, 0, round + 1));
            let revoked = revoke(&w, 0, round + 1);
            let started = t.join().unwrap();
            assert!(started != revoked);
        }
    }
}
