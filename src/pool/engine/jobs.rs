//! Job scheduling: taking jobs from the shared queue as workers have room, assigning them to
//! the least-loaded worker, moving unstarted ones to idle workers, writing them to the sockets,
//! and publishing counters for the API threads.
//!
//! It must not decide a worker's fate (see `workers`) nor decode results (see `results`).

use std::io::{ErrorKind, Write};
use std::sync::atomic::Ordering;

use mio::Interest;

use super::shared::{Failure, Job, Raw};
use super::{Engine, Sent, SlotIndex, StopMode, eligible, retired};
use crate::pool::PoolStats;
use crate::pool::claim;
use crate::pool::frame;

impl Engine {
    /// Reads the flags, puts requeued jobs back at the front, and takes as many jobs as the
    /// workers have room for.
    pub(super) fn take_jobs(&mut self) {
        self.shared.rearm_wake();
        if self.shared.revive.load(Ordering::Relaxed)
            && self.shared.revive.swap(false, Ordering::AcqRel)
        {
            self.revive();
        }
        let window = self.window();
        let room: usize = if self.fatal.is_some() || self.stopping.is_some() {
            0
        } else {
            self.slots
                .iter()
                .filter_map(|s| s.proc.as_ref())
                .filter(|p| eligible(p))
                .map(|p| window.saturating_sub(p.inflight.len()))
                .sum()
        };
        let mut failed: Vec<(Job, Failure)> = Vec::new();
        let mut inner = self.shared.lock();
        for job in self.requeue.drain(..).rev() {
            inner.queue.push_front(job);
        }
        let asked = inner.stop;
        let refusal = queue_refusal(self.fatal.as_deref(), self.stopping.or(asked));
        if let Some(f) = refusal.map(|f| self.refusal(f)) {
            failed.extend(inner.queue.drain(..).map(|j| (j, f.clone())));
        } else {
            let n = room.min(inner.queue.len());
            self.intake.extend(inner.queue.drain(..n));
        }
        self.queue_empty = inner.queue.is_empty();
        let took_any = !self.intake.is_empty() || !failed.is_empty();
        let room = wake_submitters(
            inner.blocked + inner.room_wakers.len(),
            inner.queue.len(),
            inner.capacity,
            inner.closed,
            took_any,
        )
        .then(|| std::mem::take(&mut inner.room_wakers));
        drop(inner);
        if let Some(room) = room {
            self.shared.not_full.notify_all();
            room.into_iter().for_each(std::task::Waker::wake);
        }
        for (job, f) in failed {
            self.complete(job.completion, Raw::Failed(f));
        }
        if let Some(mode) = asked
            && self.stopping != Some(StopMode::Terminate)
            && self.stopping != Some(mode)
        {
            self.begin_stop(mode);
        }
    }

    /// Jobs a worker may hold now (see `pace`).
    pub(super) fn window(&self) -> usize {
        self.pace.window(self.settings.pipeline)
    }

    /// Sends taken jobs to the eligible workers with the fewest in flight, idle ones first,
    /// each up to the window; then lets idle workers take back jobs waiting in busy ones.
    pub(super) fn assign(&mut self) {
        let window = self.window();
        let mut jobs = std::mem::take(&mut self.intake);
        for job in jobs.drain(..) {
            match self.least_loaded(window) {
                Some(i) => self.send_job(i, job),
                None => self.requeue.push(job),
            }
        }
        self.intake = jobs;
        if self.queue_empty && self.requeue.is_empty() && self.stopping.is_none() {
            self.rebalance(window);
        }
    }

    /// The eligible worker with the fewest jobs, if it holds fewer than `window`.
    pub(super) fn least_loaded(&self, window: usize) -> Option<SlotIndex> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.proc.as_ref().map(|p| (i, p)))
            .filter(|(_, p)| eligible(p) && p.inflight.len() < window)
            .min_by_key(|(_, p)| p.inflight.len())
            .map(|(i, _)| SlotIndex(i))
    }

    /// Nothing is left to send, yet a worker is idle while another holds jobs it has not
    /// started (behind a long one, or given to the first worker up at start-up): take them
    /// back (revoke their claim words, which fails for a job the worker has just started) and
    /// send them to the idle worker — half of what the busiest holder waits on, up to the
    /// window. So a job waits behind another only while every worker is busy.
    pub(super) fn rebalance(&mut self, window: usize) {
        loop {
            let idle = self.slots.iter().position(|s| {
                s.proc
                    .as_ref()
                    .is_some_and(|p| eligible(p) && p.inflight.is_empty())
            });
            let Some(idle) = idle.map(SlotIndex) else {
                return;
            };
            // The holder with the most jobs waiting behind its first one.
            let Some(victim) = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.proc.as_ref().map(|p| (i, p)))
                .filter(|(i, p)| {
                    *i != idle.0 && p.sock_open && !p.phase.is_killed() && p.inflight.len() > 1
                })
                .max_by_key(|(_, p)| p.inflight.len())
                .map(|(i, _)| i)
            else {
                return;
            };
            // Within the idle worker's quota of jobs, if it is recycled by job count.
            let quota = match (self.settings.max_jobs_per_worker, &self.slots[idle].proc) {
                (Some(m), Some(p)) => m.saturating_sub(p.jobs_sent) as usize,
                _ => usize::MAX,
            };
            let p = self.slots[victim].proc.as_mut().expect("checked above");
            let want = jobs_to_move(p.inflight.len(), window, quota);
            let mut taken = Vec::new();
            // Never the first: it is running, or about to.
            while taken.len() < want && p.inflight.len() > 1 {
                let s = &p.inflight[1];
                if !claim::revoke(p.claims.words(), s.word as usize, s.id) {
                    break; // the worker got there first: it is moving on by itself
                }
                let sent = p.inflight.remove(1).expect("checked above");
                p.free_words.push(sent.word);
                taken.push(sent.job);
            }
            if taken.is_empty() {
                return;
            }
            self.counters.moved += taken.len() as u64;
            for job in taken {
                self.send_job(idle, job);
            }
        }
    }

    pub(super) fn send_job(&mut self, slot: SlotIndex, job: Job) {
        let seq = self.next_id;
        self.next_id += 1;
        let now = self.now;
        let p = self.slots[slot].proc.as_mut().expect("eligible worker");
        let word = p
            .free_words
            .pop()
            .expect("a free claim word per job in flight");
        let id = frame::job_id(seq, word);
        claim::queue(p.claims.words(), word as usize, id);
        let mut job = job;
        if let Some(sink) = job.completion.messages() {
            // This attempt starts with the full credit carried in its frame.
            sink.state().restart();
        }
        frame::put_header(&mut p.out, job.kind, 8 + job.body.len());
        p.out.extend_from_slice(&id.to_le_bytes());
        p.out.extend_from_slice(&job.body);
        let behind = !p.inflight.is_empty();
        if !behind {
            p.running_since = now;
        }
        p.inflight.push_back(Sent {
            id,
            word,
            sent_at: now,
            behind,
            job,
        });
        p.jobs_sent += 1;
        if self
            .settings
            .max_jobs_per_worker
            .is_some_and(|m| p.jobs_sent >= m)
        {
            // Its quota is in flight: no more jobs; recycled once they are answered, so that a
            // worker never runs more than `max_jobs_per_worker` jobs even with pipelining.
            p.phase = p.phase.recycle();
            log::info!(
                "{}[{slot}]: recycling worker (pid {}) after {} jobs",
                self.settings.name,
                p.pid,
                p.jobs_sent
            );
        }
    }

    /// Gives message credit back to each worker whose running job's receiver has consumed a
    /// batch (see `credit`). Only the first job a worker holds can be sending messages.
    pub(super) fn grant_credits(&mut self) {
        for slot in &mut self.slots {
            let Some(p) = slot.proc.as_mut() else {
                continue;
            };
            let Some(front) = p.inflight.front_mut() else {
                continue;
            };
            let id = front.id;
            if let Some(n) = front
                .job
                .completion
                .messages()
                .and_then(|s| s.state().due())
            {
                frame::put_header(&mut p.out, frame::CREDIT, 12);
                p.out.extend_from_slice(&id.to_le_bytes());
                p.out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }

    /// Publishes counters and the stats snapshot, and wakes whoever waits for them.
    pub(super) fn publish(&mut self) {
        let pids = if self.pids_dirty {
            self.pids_dirty = false;
            Some(
                self.slots
                    .iter()
                    .map(|s| s.proc.as_ref().map(|p| p.pid))
                    .collect::<Vec<_>>(),
            )
        } else {
            None
        };
        let figures = self.slot_figures();
        let zygote = self.fork_server_pid();
        let delta = std::mem::take(&mut self.counters.finished_delta);
        let mut guard = self.shared.lock();
        let inner = &mut *guard;
        inner.finished += delta;
        let s = &mut inner.stats;
        if let Some(pids) = pids {
            s.worker_pids = pids;
        }
        self.write_stats(s, figures);
        s.fork_server_pid = zygote;
        s.queued = inner.queue.len();
        s.accepted = inner.accepted;
        let notify = inner.waiting > 0 && (delta > 0 || self.fatal.is_some());
        drop(guard);
        if notify {
            self.shared.changed.notify_all();
        }
    }

    /// What the worker slots look like now, for the stats snapshot.
    fn slot_figures(&self) -> SlotFigures {
        let retired_slots: Vec<usize> =
            if self.stopping.is_some() || (self.fatal.is_some() && !self.fatal_from_slots) {
                Vec::new()
            } else {
                (0..self.slots.len())
                    .filter(|&i| retired(&self.slots[i]))
                    .collect()
            };
        let procs = || self.slots.iter().filter_map(|s| s.proc.as_ref());
        SlotFigures {
            workers: procs().count(),
            retired: retired_slots,
            busy: procs().filter(|p| !p.inflight.is_empty()).count(),
            in_flight: procs().map(|p| p.inflight.len()).sum(),
            restarts: self.slots.iter().map(|s| u64::from(s.inst.restarts)).sum(),
        }
    }

    /// Writes the slot figures, this thread's counters and the fatal error into `s` (under the
    /// lock: plain stores).
    fn write_stats(&self, s: &mut PoolStats, figures: SlotFigures) {
        s.workers = figures.workers;
        s.retired = figures.retired;
        s.busy = figures.busy;
        s.in_flight = figures.in_flight;
        s.completed = self.counters.completed;
        s.worker_deaths = self.counters.worker_deaths;
        s.restarts = figures.restarts;
        s.recycled = self.counters.recycled;
        s.timed_out = self.counters.timed_out;
        s.requeued = self.counters.requeued;
        s.retried = self.counters.retried;
        s.moved = self.counters.moved;
        s.cancelled = self.counters.cancelled;
        s.failure.clone_from(&self.failure);
        s.fatal.clone_from(&self.fatal);
    }

    pub(super) fn flush_all(&mut self) {
        for i in SlotIndex::all(self.slots.len()) {
            if self.slots[i]
                .proc
                .as_ref()
                .is_some_and(|p| p.out_pos < p.out.len() && !p.write_interest)
            {
                self.flush(i);
            }
        }
    }

    /// Writes what the worker's outgoing buffer holds, without blocking; asks for a writable
    /// event when the socket is full.
    pub(super) fn flush(&mut self, slot: SlotIndex) {
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        if !p.sock_open {
            p.out.clear();
            p.out_pos = 0;
            return;
        }
        while p.out_pos < p.out.len() {
            match (&p.sock).write(&p.out[p.out_pos..]) {
                Ok(n) => p.out_pos += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // A dead peer: the read side sees end of stream and handles it.
                Err(_) => {
                    p.out_pos = p.out.len();
                }
            }
        }
        let pending = p.out_pos < p.out.len();
        if !pending {
            p.out.clear();
            p.out_pos = 0;
        } else if p.out_pos > (1 << 20) {
            p.out.drain(..p.out_pos);
            p.out_pos = 0;
        }
        if pending != p.write_interest {
            p.write_interest = pending;
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = p.sock_token;
            let _ = self
                .poll
                .registry()
                .reregister(&mut p.sock, token, interest);
        }
    }

    pub(super) fn send_shutdown(&mut self, slot: SlotIndex) {
        if let Some(p) = self.slots[slot].proc.as_mut() {
            frame::put_header(&mut p.out, frame::SHUTDOWN, 0);
            p.phase = p.phase.shutdown_sent();
        }
        self.flush(slot);
    }
}

/// The worker slots' part of [`PoolStats`], computed before the lock is taken.
struct SlotFigures {
    workers: usize,
    retired: Vec<usize>,
    busy: usize,
    in_flight: usize,
    restarts: u64,
}

/// What becomes of the jobs in the shared queue when none may be sent: all cancelled while the
/// pool terminates (even a fatal one), all failed with the reason once it is fatal; `None`
/// while it runs jobs.
fn queue_refusal(fatal: Option<&str>, stop: Option<StopMode>) -> Option<Failure> {
    match (fatal, stop) {
        (_, Some(StopMode::Terminate)) => Some(Failure::Cancelled),
        (Some(why), _) => Some(Failure::Fatal(why.to_string())),
        _ => None,
    }
}

/// Whether submitters blocked on a full queue are woken after an intake that left `queued` of
/// `capacity` jobs and took (or failed) some, `took_any`. Only once the queue is down to half,
/// not on every job taken, so that a producer faster than the workers refills in batches
/// instead of being woken and put back to sleep for each job; always once the pool is closed.
fn wake_submitters(
    blocked: usize,
    queued: usize,
    capacity: usize,
    closed: bool,
    took_any: bool,
) -> bool {
    blocked > 0 && (closed || (queued <= capacity / 2 && took_any))
}

/// How many of the `held` jobs of the busiest worker an idle one takes over: half, at least one,
/// at most a `window` and the idle worker's remaining job `quota`.
fn jobs_to_move(held: usize, window: usize, quota: usize) -> usize {
    (held / 2).clamp(1, window).min(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminating_pool_cancels_the_queue_even_when_fatal() {
        let stop = Some(StopMode::Terminate);
        assert_eq!(queue_refusal(Some("gone"), stop), Some(Failure::Cancelled));
        assert_eq!(queue_refusal(None, stop), Some(Failure::Cancelled));
    }

    #[test]
    fn a_fatal_pool_fails_the_queue_with_its_reason() {
        let fatal = Some(Failure::Fatal("gone".into()));
        assert_eq!(queue_refusal(Some("gone"), None), fatal);
        assert_eq!(queue_refusal(Some("gone"), Some(StopMode::Graceful)), fatal);
    }

    #[test]
    fn a_running_or_gracefully_stopping_pool_refuses_nothing() {
        assert_eq!(queue_refusal(None, None), None);
        assert_eq!(queue_refusal(None, Some(StopMode::Graceful)), None);
    }

    #[test]
    fn submitters_are_woken_once_the_queue_is_down_to_half() {
        assert!(!wake_submitters(1, 6, 10, false, true));
        assert!(wake_submitters(1, 5, 10, false, true));
        assert!(wake_submitters(1, 0, 10, false, true));
    }

    #[test]
    fn submitters_are_not_woken_by_an_intake_that_took_nothing() {
        assert!(!wake_submitters(1, 0, 10, false, false));
    }

    #[test]
    fn a_closed_pool_wakes_every_blocked_submitter() {
        assert!(wake_submitters(1, 10, 10, true, false));
        assert!(!wake_submitters(0, 10, 10, true, false));
    }

    #[test]
    fn an_idle_worker_takes_half_of_the_busiest_ones_jobs_within_window_and_quota() {
        assert_eq!(jobs_to_move(8, 32, usize::MAX), 4);
        assert_eq!(jobs_to_move(2, 32, usize::MAX), 1);
        assert_eq!(jobs_to_move(100, 8, usize::MAX), 8);
        assert_eq!(jobs_to_move(8, 32, 3), 3);
        assert_eq!(jobs_to_move(8, 32, 0), 0);
    }
}
