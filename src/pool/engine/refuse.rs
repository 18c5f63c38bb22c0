//! Refusing jobs after a worker's initializer failed: the first failure (an `INIT_FAILED` frame,
//! see `pool::init`) is logged once and turns the pool to failing every job it has not sent
//! with [`PoolError::Initializer`]; the slot is stopped instead of restarted, so a failing
//! initializer never becomes a crash loop of identical restarts. `revive` undoes it.
//!
//! It must not touch sockets or the queue itself: `take_jobs` fails the queue through
//! [`Engine::refusal`].

use super::shared::Failure;
use super::{Engine, SlotIndex};
use crate::lifecycle::{Event, State};
use crate::pool::PoolError;

impl Engine {
    /// The initializer of `slot`'s worker (`pid`) failed with `reason`, and the worker has
    /// exited: the first failure makes the pool refuse jobs; the slot stays down either way.
    pub(super) fn initializer_failed(&mut self, slot: SlotIndex, pid: i32, reason: String) {
        if self.failure.is_none() && self.fatal.is_none() {
            let err = PoolError::Initializer {
                worker: slot.0,
                reason,
            };
            log::error!(
                "pool {}: {err} (pid {pid}); the pool refuses jobs, and restarts no worker, \
                 until revive()",
                self.settings.name
            );
            self.fatal = Some(format!("pool {}: {err}", self.settings.name));
            self.failure = Some(err);
        } else {
            log::info!(
                "{}[{slot}]: the initializer failed in this worker too (pid {pid}): {reason}",
                self.settings.name
            );
        }
        // Down until revive(), not restarted: before `Exited`, so that the exit ends a stop.
        self.apply(slot, Event::Stop);
    }

    /// What the jobs the pool cannot run fail with: the initializer's failure rather than the
    /// words of `fatal` that say it.
    pub(super) fn refusal(&self, f: Failure) -> Failure {
        match (f, &self.failure) {
            (Failure::Fatal(_), Some(e)) => Failure::Pool(e.clone()),
            (f, _) => f,
        }
    }

    /// `revive()` after an initializer failure: jobs are accepted again, and the slots it
    /// stopped start again (running the initializer again).
    pub(super) fn revive_after_initializer(&mut self) {
        if self.failure.take().is_none() {
            return;
        }
        log::info!(
            "pool {}: revived after the initializer failure; accepting jobs again",
            self.settings.name
        );
        self.fatal = None;
        for i in SlotIndex::all(self.slots.len()) {
            if self.slots[i].proc.is_none() && self.slots[i].inst.state == State::Stopped {
                self.apply(i, Event::Start);
            }
        }
    }
}
