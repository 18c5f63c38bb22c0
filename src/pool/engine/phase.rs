//! Where a live worker stands between taking jobs and being gone: one [`Phase`] instead of six
//! flags, with its transitions as pure functions.
//!
//! This module only names the phases and moves between them; it sends nothing and kills
//! nothing: the engine does, then records the step here.
//!
//! # Order
//!
//! A worker moves only forward: [`Phase::Serving`] → ([`Phase::Recycling`] or
//! [`Phase::Draining`]) → [`Phase::Stopping`] → [`Phase::ShutdownSent`] → [`Phase::Killed`],
//! skipping steps as events come. [`Phase::Killed`] is final; it remembers whether the pool meant
//! the worker to go, so that its exit is not counted as a death.

/// A live worker's phase. See the module documentation for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Takes new jobs.
    Serving,
    /// Its job quota is in flight or its RSS is over the limit: no new jobs; replaced once idle.
    Recycling,
    /// Started while the pool stops: no new jobs, not asked to go yet; shut down once idle.
    Draining,
    /// Asked to go (the state machine's stop): no new jobs; shut down once idle.
    Stopping,
    /// The `Shutdown` frame is written: it exits once it reads it.
    ShutdownSent,
    /// `SIGKILL`ed. `expected`: the pool meant it to go (a stop or a job's timeout came first).
    Killed { expected: bool },
}

impl Phase {
    /// The phase of a worker just attached, while the pool is stopping or not.
    pub(super) fn attached(pool_stopping: bool) -> Phase {
        if pool_stopping {
            Phase::Draining
        } else {
            Phase::Serving
        }
    }

    /// Whether it may be given new jobs.
    pub(super) fn takes_jobs(self) -> bool {
        self == Phase::Serving
    }

    /// Whether its exit is not a death: the pool asked it to go.
    pub(super) fn is_expected(self) -> bool {
        matches!(
            self,
            Phase::Stopping | Phase::ShutdownSent | Phase::Killed { expected: true }
        )
    }

    /// Whether it was `SIGKILL`ed.
    pub(super) fn is_killed(self) -> bool {
        matches!(self, Phase::Killed { .. })
    }

    /// Whether it is on its way out by a shutdown frame or a kill: nothing more to ask of it.
    pub(super) fn is_going(self) -> bool {
        matches!(self, Phase::ShutdownSent | Phase::Killed { .. })
    }

    /// Whether it takes no new jobs and gets a shutdown frame once idle.
    pub(super) fn shuts_down_when_idle(self) -> bool {
        matches!(self, Phase::Recycling | Phase::Draining | Phase::Stopping)
    }

    /// To be replaced once idle (a serving worker; any other is leaving anyway).
    pub(super) fn recycle(self) -> Phase {
        match self {
            Phase::Serving => Phase::Recycling,
            other => other,
        }
    }

    /// Asked to go: no new jobs, and its exit is expected.
    pub(super) fn stop(self) -> Phase {
        match self {
            Phase::Serving | Phase::Recycling | Phase::Draining | Phase::Stopping => {
                Phase::Stopping
            }
            Phase::ShutdownSent => Phase::ShutdownSent,
            Phase::Killed { .. } => Phase::Killed { expected: true },
        }
    }

    /// The shutdown frame is written (a killed worker stays killed).
    pub(super) fn shutdown_sent(self) -> Phase {
        match self {
            Phase::Killed { .. } => Phase::Killed { expected: true },
            _ => Phase::ShutdownSent,
        }
    }

    /// `SIGKILL` is sent: expected if it was asked to go before.
    pub(super) fn kill(self) -> Phase {
        Phase::Killed {
            expected: self.is_expected(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::{self, *};

    const ALL: [Phase; 7] = [
        Serving,
        Recycling,
        Draining,
        Stopping,
        ShutdownSent,
        Killed { expected: false },
        Killed { expected: true },
    ];

    #[test]
    fn a_worker_attached_while_the_pool_stops_takes_no_jobs() {
        assert!(Phase::attached(false).takes_jobs());
        assert!(!Phase::attached(true).takes_jobs());
        assert!(!Phase::attached(true).is_expected());
    }

    #[test]
    fn only_a_serving_worker_takes_jobs() {
        for p in ALL {
            assert_eq!(p.takes_jobs(), p == Serving, "{p:?}");
        }
    }

    #[test]
    fn recycling_is_not_expected_until_the_worker_is_asked_to_stop() {
        let p = Serving.recycle();
        assert_eq!(p, Recycling);
        assert!(!p.is_expected());
        assert!(p.shuts_down_when_idle());
        assert!(p.stop().is_expected());
    }

    #[test]
    fn recycling_a_leaving_worker_changes_nothing() {
        for p in ALL.into_iter().filter(|p| *p != Serving) {
            assert_eq!(p.recycle(), p);
        }
    }

    #[test]
    fn a_stop_makes_every_exit_expected_and_never_undoes_a_kill_or_a_shutdown() {
        for p in ALL {
            let s = p.stop();
            assert!(s.is_expected(), "{p:?}");
            assert_eq!(s.is_killed(), p.is_killed(), "{p:?}");
            assert_eq!(s == ShutdownSent, p == ShutdownSent, "{p:?}");
        }
    }

    #[test]
    fn a_kill_is_a_death_unless_the_worker_was_asked_to_go() {
        assert_eq!(Serving.kill(), Killed { expected: false });
        assert_eq!(Recycling.kill(), Killed { expected: false });
        assert_eq!(Draining.kill(), Killed { expected: false });
        assert_eq!(Stopping.kill(), Killed { expected: true });
        assert_eq!(ShutdownSent.kill(), Killed { expected: true });
        assert_eq!(
            Killed { expected: false }.kill(),
            Killed { expected: false }
        );
    }

    #[test]
    fn a_shutdown_frame_makes_the_exit_expected_and_keeps_a_kill() {
        assert_eq!(Stopping.shutdown_sent(), ShutdownSent);
        assert_eq!(Draining.shutdown_sent(), ShutdownSent);
        assert_eq!(
            Killed { expected: false }.shutdown_sent(),
            Killed { expected: true }
        );
    }

    #[test]
    fn a_worker_leaving_by_shutdown_or_kill_is_asked_nothing_more() {
        for p in ALL {
            assert_eq!(p.is_going(), p == ShutdownSent || p.is_killed(), "{p:?}");
            assert!(!(p.is_going() && p.shuts_down_when_idle()), "{p:?}");
        }
        assert!(!Serving.shuts_down_when_idle());
    }
}
