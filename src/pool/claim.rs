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

use std::sync::atomic::{AtomicU64, Ordering};

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

/// Where job `id` of word `i` stands.
pub(crate) fn state(words: &[AtomicU64], i: usize, id: u64) -> Claim {
    let w = words[i].load(Ordering::Acquire);
    if w >> 2 != id {
        return Claim::Other;
    }
    match w & 3 {
        QUEUED => Claim::Queued,
        STARTED => Claim::Started,
        REVOKED => Claim::Revoked,
        _ => Claim::Other,
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
