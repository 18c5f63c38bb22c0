//! Dependencies between programs at run time (`after`, `requires`): holding instances
//! `waiting` until what they start after is ready, stopping what requires a program before it,
//! and starting held instances again.
//!
//! # Rules
//!
//! - A start (`Event::Start`, `Event::Restart`) of an instance that is down while one of the
//!   programs it starts after is not ready — every live instance serving, by that program's
//!   `ready` ([`super::snapshot::serving`]) — holds it instead ([`Hold`]): its state shows as
//!   `waiting`. Each turn, held instances whose dependencies are all ready are started
//!   ([`Supervisor::advance_deps`]). An automatic restart after a crash is not held: the
//!   dependency is judged when an instance is started, not while it runs.
//! - A program stopped by hand or `fatal` takes down what requires it, transitively: each such
//!   program is stopped (and held, with the reason, `db stopped`) only once everything that
//!   requires *it* is down, and the program stopped by hand itself last. `after` alone takes
//!   nothing down.
//! - Starting a program by hand starts what it requires, transitively.
//!
//! # Policy and execution
//!
//! The decisions are pure functions of plain views ([`unready`], [`gone`], [`closure`]),
//! unit-tested below; the `impl Supervisor` feeds them and applies their answers through
//! `apply`. The graceful shutdown's order is `shutdown.rs`'s. This file must not step an
//! instance except through `apply`, nor read configuration text.

use super::Supervisor;
use super::snapshot::ProgramView;
use super::table::{Hold, ProgramId};
use crate::config::graph;
use crate::error::{Error, Result};
use crate::lifecycle::{Event, State};

/// A stop waiting for what requires the program to be down first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeferredStop {
    /// The program to stop.
    pub(super) program: ProgramId,
    /// Why, when it is stopped for a program it requires (held with this reason); `None` for
    /// the program stopped by hand itself.
    pub(super) because: Option<(ProgramId, String)>,
}

/// The names of `deps` that are not ready: some live instance does not serve.
pub(super) fn unready<'a>(deps: &[ProgramView<'a>]) -> Vec<&'a str> {
    deps.iter()
        .filter(|d| {
            d.instances
                .iter()
                .any(|i| !i.retiring && !i.serves(d.readiness))
        })
        .map(|d| d.name)
        .collect()
}

/// Whether `program` is down for good, and how: `fatal` when an instance gave up, `stopped`
/// when one is stopped (by hand, or held by its own dependencies). Retiring instances do not
/// count.
pub(super) fn gone(program: &ProgramView<'_>) -> Option<&'static str> {
    let live = || program.instances.iter().filter(|i| !i.retiring);
    if live().any(|i| *i.state == State::Fatal) {
        Some("fatal")
    } else if live().any(|i| *i.state == State::Stopped) {
        Some("stopped")
    } else {
        None
    }
}

/// `start` and everything reachable from it through `next`, each once, `start` first.
pub(super) fn closure(start: &[usize], next: impl Fn(usize) -> Vec<usize>) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    let mut todo: Vec<usize> = start.to_vec();
    while let Some(i) = todo.pop() {
        if !out.contains(&i) {
            out.push(i);
            todo.extend(next(i));
        }
    }
    out
}

/// What makes the edges `named` (`named[i]`: what `names[i]` starts after) impossible to meet:
/// a name of no program, or programs that wait for each other (named in cycle order).
fn edge_problem(names: &[&str], named: &[Vec<&str>]) -> Option<String> {
    for (name, deps) in names.iter().zip(named) {
        if let Some(unknown) = deps.iter().find(|d| !names.contains(d)) {
            return Some(format!(
                "program {name} starts after {unknown:?}, which is no program"
            ));
        }
    }
    let cycle = graph::find_cycle(&graph::index_edges(names, named))?;
    let mut path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
    path.push(path[0]);
    Some(format!(
        "programs wait for each other: {}",
        path.join(" -> ")
    ))
}

impl Supervisor {
    /// Refuses edges that could never be met, before anything starts: a name of no program
    /// and programs that wait for each other (`warden.toml` is checked when it is read; this
    /// is for programs built in code).
    pub(super) fn check_edges(&self) -> Result<()> {
        let ids = self.table.live_programs();
        let names: Vec<&str> = ids
            .iter()
            .map(|&p| self.table[p].def.name.as_str())
            .collect();
        let named: Vec<Vec<&str>> = ids
            .iter()
            .map(|&p| {
                let def = &self.table[p].def;
                def.after
                    .iter()
                    .chain(&def.requires)
                    .map(String::as_str)
                    .collect()
            })
            .collect();
        match edge_problem(&names, &named) {
            Some(reason) => Err(Error::Invalid {
                what: "program dependencies",
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The live programs named in `names`.
    fn named(&self, names: &[String]) -> Vec<ProgramId> {
        names
            .iter()
            .filter_map(|n| self.table.find(n).ok())
            .filter(|&q| !self.table[q].removed)
            .collect()
    }

    /// The live programs `p` starts after (`after` and `requires`).
    pub(super) fn starts_after(&self, p: ProgramId) -> Vec<ProgramId> {
        let def = &self.table[p].def;
        let mut v = self.named(&def.after);
        v.extend(self.named(&def.requires));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The live programs that start after `p` (`after` or `requires` naming it).
    pub(super) fn dependents(&self, p: ProgramId) -> Vec<ProgramId> {
        self.table
            .live_programs()
            .into_iter()
            .filter(|&q| self.starts_after(q).contains(&p))
            .collect()
    }

    /// The live programs that require `p`.
    fn requirers(&self, p: ProgramId) -> Vec<ProgramId> {
        self.table
            .live_programs()
            .into_iter()
            .filter(|&q| self.named(&self.table[q].def.requires).contains(&p))
            .collect()
    }

    /// The programs `p` starts after that are not ready, by name.
    pub(super) fn unready_deps(&self, p: ProgramId) -> Vec<String> {
        let views: Vec<ProgramView<'_>> = self
            .starts_after(p)
            .into_iter()
            .map(|q| self.program_view(q))
            .collect();
        unready(&views).into_iter().map(str::to_string).collect()
    }

    /// What an instance of `p` held down waits for: the programs it starts after that are not
    /// ready, or about to be stopped (a stop waiting for `p` to be down first), by name.
    pub(super) fn waiting_for(&self, p: ProgramId) -> Vec<String> {
        self.starts_after(p)
            .into_iter()
            .filter(|&q| {
                self.deps_deferred.iter().any(|d| d.program == q)
                    || !unready(&[self.program_view(q)]).is_empty()
            })
            .map(|q| self.table[q].def.name.clone())
            .collect()
    }

    /// `ps` and what they require, transitively.
    pub(super) fn with_requirements(&self, ps: &[ProgramId]) -> Vec<ProgramId> {
        let start: Vec<usize> = ps.iter().map(|p| p.0).collect();
        let next = |i: usize| {
            let req = &self.table[ProgramId(i)].def.requires;
            self.named(req).into_iter().map(|q| q.0).collect()
        };
        closure(&start, next).into_iter().map(ProgramId).collect()
    }

    /// The gate in front of every start: a start of down instance `pos` of `p` whose
    /// dependencies are not ready holds it instead. Returns whether it was held.
    pub(super) fn hold_start(&mut self, p: ProgramId, pos: super::SlotPos, event: &Event) -> bool {
        if !matches!(event, Event::Start | Event::Restart) || !self.table[p][pos].is_down() {
            return false;
        }
        let unready = self.unready_deps(p);
        if unready.is_empty() {
            return false;
        }
        let slot = &mut self.table[p][pos];
        if slot.hold.is_none() {
            slot.hold = Some(Hold { reason: None });
            let (name, index) = (&self.table[p].def.name, self.table[p][pos].index);
            crate::log::about!(
                log::Level::Info,
                name,
                Some(index.0),
                None,
                "{name}[{index}]: waiting for {}",
                unready.join(", ")
            );
            let held = super::events::Held {
                waiting_for: unready,
                reason: None,
            };
            self.publish_about(p, pos, held.event());
        }
        true
    }

    /// Stops `p` by hand, after everything that requires it (transitively), which is held.
    pub(super) fn stop_with_requirers(&mut self, p: ProgramId) {
        self.deps_deferred.retain(|d| d.program != p);
        let name = self.table[p].def.name.clone();
        self.cascade(p, &format!("{name} stopped"));
        self.deps_deferred.push(DeferredStop {
            program: p,
            because: None,
        });
        self.advance_deferred_stops();
    }

    /// Starting `p` by hand cancels the stops waiting for it, and those made for it.
    pub(super) fn cancel_stops_for(&mut self, p: ProgramId) {
        self.deps_deferred
            .retain(|d| d.program != p && d.because.as_ref().is_none_or(|(q, _)| *q != p));
    }

    /// Asks every program that requires `p` (transitively) and is up to stop, held with
    /// `reason`, once what requires it is down.
    fn cascade(&mut self, p: ProgramId, reason: &str) {
        let next = |i: usize| {
            let r = self.requirers(ProgramId(i));
            r.into_iter().map(|q| q.0).collect()
        };
        let reached = closure(&[p.0], next);
        for q in reached.into_iter().skip(1).map(ProgramId) {
            let queued = self.deps_deferred.iter().any(|d| d.program == q);
            let up = self.table[q]
                .slots()
                .iter()
                .any(|s| s.hold.is_none() && super::shutdown::needs_stop(&s.inst.state));
            if up && !queued {
                self.deps_deferred.push(DeferredStop {
                    program: q,
                    because: Some((p, reason.to_string())),
                });
            }
        }
    }

    /// Carries out each deferred stop whose program has nothing up that requires it.
    fn advance_deferred_stops(&mut self) {
        let mut i = 0;
        while i < self.deps_deferred.len() {
            let p = self.deps_deferred[i].program;
            let clear = self
                .requirers(p)
                .iter()
                .all(|&q| self.table[q].slots().iter().all(|s| s.is_down()));
            if !clear {
                i += 1;
                continue;
            }
            let d = self.deps_deferred.remove(i);
            for pos in self.table[p].positions() {
                if self.table[p][pos].retiring {
                    continue;
                }
                if let Some((_, reason)) = &d.because {
                    let reason = Some(reason.clone());
                    self.table[p][pos].hold = Some(Hold { reason });
                }
                self.apply(p, pos, Event::Stop);
            }
        }
    }

    /// One turn of dependency upkeep (not during a shutdown): programs gone for good take
    /// down what requires them, deferred stops go ahead, held instances whose dependencies
    /// are ready start.
    pub(super) fn advance_deps(&mut self) {
        if self.shutdown.active() {
            return;
        }
        let live = self.table.live_programs();
        let requiring = live.iter().any(|&p| !self.table[p].def.requires.is_empty());
        for p in live.into_iter().filter(|_| requiring) {
            if let Some(how) = gone(&self.program_view(p)) {
                let name = self.table[p].def.name.clone();
                self.cascade(p, &format!("{name} {how}"));
            }
        }
        self.advance_deferred_stops();
        for p in self.table.live_programs() {
            // Most turns hold nothing: skip the edge lookups for them (this runs every turn).
            if !self.table[p].slots().iter().any(|s| s.hold.is_some()) {
                continue;
            }
            // A dependency about to be stopped is no reason to start again.
            let after = self.starts_after(p);
            let stopping = self
                .deps_deferred
                .iter()
                .any(|d| after.contains(&d.program));
            if stopping || !self.unready_deps(p).is_empty() {
                continue;
            }
            for pos in self.table[p].positions() {
                let slot = &mut self.table[p][pos];
                if slot.inst.state.is_up() {
                    slot.hold = None;
                } else if slot.hold.is_some() && slot.is_down() {
                    slot.hold = None;
                    self.apply(p, pos, Event::Start);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::fake::{self, Program};
    use super::*;
    use crate::policy::Readiness;

    fn views<'a>(ps: &'a [&'a Program]) -> Vec<ProgramView<'a>> {
        ps.iter().map(|p| p.view()).collect()
    }

    #[test]
    fn a_dependency_is_ready_when_every_instance_serves() {
        let mut db = Program::new("db", 2, fake::ready());
        assert!(unready(&views(&[&db])).is_empty());
        db.at(1).state = fake::starting();
        assert_eq!(unready(&views(&[&db])), ["db"]);
    }

    #[test]
    fn running_counts_as_ready_only_with_immediate_readiness() {
        let mut db = Program::new("db", 1, fake::running());
        assert_eq!(unready(&views(&[&db])), ["db"]);
        db.readiness = Readiness::Immediate;
        assert!(unready(&views(&[&db])).is_empty());
    }

    #[test]
    fn retiring_instances_do_not_hold_dependents() {
        let mut db = Program::new("db", 2, fake::ready());
        db.at(1).state = fake::starting();
        db.at(1).retiring = true;
        assert!(unready(&views(&[&db])).is_empty());
    }

    #[test]
    fn a_program_scaled_to_zero_is_ready() {
        let db = Program::new("db", 0, fake::ready());
        assert!(unready(&views(&[&db])).is_empty());
    }

    #[test]
    fn every_unready_dependency_is_named() {
        let db = Program::new("db", 1, State::Exited);
        let cache = Program::new("cache", 1, fake::ready());
        let queue = Program::new("queue", 1, State::Stopped);
        assert_eq!(unready(&views(&[&db, &cache, &queue])), ["db", "queue"]);
    }

    #[test]
    fn fatal_or_stopped_instances_make_a_program_gone() {
        let mut db = Program::new("db", 2, fake::ready());
        assert_eq!(gone(&db.view()), None);
        db.at(0).state = State::Stopped;
        assert_eq!(gone(&db.view()), Some("stopped"));
        db.at(1).state = State::Fatal;
        assert_eq!(gone(&db.view()), Some("fatal"));
    }

    #[test]
    fn exited_and_restarting_instances_are_not_gone() {
        let mut db = Program::new("db", 2, State::Exited);
        db.at(1).state = fake::restarting();
        assert_eq!(gone(&db.view()), None);
    }

    #[test]
    fn the_closure_follows_edges_transitively_once_each() {
        // 0 -> 1 -> 2 -> 0, 3 alone.
        let next = |i: usize| match i {
            0 => vec![1],
            1 => vec![2],
            2 => vec![0],
            _ => vec![],
        };
        let mut c = closure(&[0], next);
        assert_eq!(c[0], 0);
        c.sort_unstable();
        assert_eq!(c, [0, 1, 2]);
        assert_eq!(closure(&[3], next), [3]);
    }

    #[test]
    fn edges_built_in_code_are_refused_when_they_can_never_be_met() {
        let names = ["db", "api", "web"];
        let ok = [vec![], vec!["db"], vec!["api", "db"]];
        assert_eq!(super::edge_problem(&names, &ok), None);
        let unknown = [vec![], vec!["dbx"], vec![]];
        assert_eq!(
            super::edge_problem(&names, &unknown).as_deref(),
            Some("program api starts after \"dbx\", which is no program")
        );
        let cycle = [vec!["web"], vec!["db"], vec!["api"]];
        assert_eq!(
            super::edge_problem(&names, &cycle).as_deref(),
            Some("programs wait for each other: db -> web -> api -> db")
        );
        let itself = [vec![], vec!["api"], vec![]];
        assert_eq!(
            super::edge_problem(&names, &itself).as_deref(),
            Some("programs wait for each other: api -> api")
        );
    }
}
