//! Cancelling jobs one by one, on the I/O thread: a job not started is taken out of wherever it
//! waits — the shared queue, this turn's intake, the requeue list, or a worker's in-flight list
//! (through its claim word, as `rebalance` does) — and completed `Cancelled`; a running one is
//! left to run, or its worker is killed and replaced when the request says `kill`.
//!
//! It must not decide anything else of a worker's fate: a killed worker goes the way of a job
//! timeout (`Killed { expected: true }` then the state machine's `Restart`), and `finalize`
//! completes the job `Cancelled` and sends the worker's other jobs again.

use std::sync::atomic::Ordering;

use super::phase::Phase;
use super::shared::{Failure, Job, Raw};
use super::{Engine, SlotIndex};
use crate::lifecycle::Event;
use crate::pool::Cancel;
use crate::pool::claim;

impl Engine {
    /// Carries out the cancellations asked for since the last turn, and answers them.
    pub(super) fn take_cancels(&mut self) {
        // One load per turn on the hot path; the lock only when a request came.
        if !self.shared.cancel_pending.load(Ordering::Acquire)
            || !self.shared.cancel_pending.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let requests = std::mem::take(&mut self.shared.lock().cancels);
        for req in requests {
            let answers: Vec<Cancel> = req
                .tickets
                .iter()
                .map(|&t| self.cancel(t, req.kill))
                .collect();
            let _ = req.reply.try_send(answers);
        }
    }

    /// Cancels the job of `ticket`, wherever it is.
    fn cancel(&mut self, ticket: u64, kill: bool) -> Cancel {
        let queued = {
            let mut inner = self.shared.lock();
            let at = inner.queue.iter().position(|j| j.ticket == ticket);
            at.and_then(|i| inner.queue.remove(i))
        };
        let waiting = queued
            .or_else(|| take_ticket(&mut self.intake, ticket))
            .or_else(|| take_ticket(&mut self.requeue, ticket));
        if let Some(job) = waiting {
            self.cancelled(job);
            return Cancel::Removed;
        }
        for i in SlotIndex::all(self.slots.len()) {
            let Some(p) = self.slots[i].proc.as_mut() else {
                continue;
            };
            let Some(k) = p.inflight.iter().position(|s| s.job.ticket == ticket) else {
                continue;
            };
            let s = &p.inflight[k];
            if claim::revoke(p.claims.words(), s.word as usize, s.id) {
                let sent = p.inflight.remove(k).expect("found above");
                p.free_words.push(sent.word);
                if k == 0 {
                    // The worker skips it and starts the next one now.
                    p.running_since = self.now;
                }
                self.cancelled(sent.job);
                return Cancel::Removed;
            }
            // Finished in its result slot, not drained yet: its outcome is on its way.
            if claim::state(p.claims.words(), s.word as usize, s.id) == claim::Claim::Done {
                return Cancel::Finished;
            }
            if !kill {
                return Cancel::Running;
            }
            let id = s.id;
            self.kill_for_cancel(i, id);
            return Cancel::Killed;
        }
        Cancel::Finished
    }

    fn cancelled(&mut self, job: Job) {
        self.counters.cancelled += 1;
        self.complete(job.completion, Raw::Failed(Failure::Cancelled));
    }

    /// Kills the worker of `slot`, running job `id`: that job fails `Cancelled` once the worker
    /// is reaped, its other jobs are sent again, and the worker is replaced like after a
    /// timeout (not counted towards a crash loop).
    fn kill_for_cancel(&mut self, slot: SlotIndex, id: u64) {
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        p.cancelled = Some(id);
        self.counters.cancelled += 1;
        if p.phase.is_killed() || !p.sock_open {
            return; // already on its way out: its end resolves the job
        }
        log::info!(
            "{}[{slot}]: a running job was cancelled; killing worker (pid {})",
            self.settings.name,
            p.pid
        );
        p.phase = Phase::Killed { expected: true };
        self.kill(slot);
        self.apply(slot, Event::Restart);
    }
}

/// Takes the job of `ticket` out of `jobs`, if it is there.
fn take_ticket(jobs: &mut Vec<Job>, ticket: u64) -> Option<Job> {
    let at = jobs.iter().position(|j| j.ticket == ticket)?;
    Some(jobs.remove(at))
}
