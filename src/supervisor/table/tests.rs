//! The child table's specification: ids, slot lookup and the pid index kept in step.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::supervisor::program::Work;

fn program(name: &str, instances: u32) -> Program {
    let def = ProgramDef::new(name, instances, Work::Fn(Arc::new(|_| 0)));
    Program::new(def, None, [None, None])
}

fn table_with(instances: u32) -> (Table, ProgramId) {
    let mut t = Table::default();
    let p = t.push(program("web", instances));
    (t, p)
}

fn run(t: &mut Table, p: ProgramId, pos: SlotPos, pid: i32) {
    t[p][pos].inst.state = State::Running {
        pid,
        since: Instant::now(),
    };
}

#[test]
fn a_program_starts_with_one_slot_per_instance_in_index_order() {
    let (t, p) = table_with(3);
    let indices: Vec<InstanceIndex> = t[p].slots().iter().map(|s| s.index).collect();
    assert_eq!(
        indices,
        [InstanceIndex(0), InstanceIndex(1), InstanceIndex(2)]
    );
    assert_eq!(t[p].live_indices(), indices);
}

#[test]
fn find_skips_removed_programs() {
    let (mut t, p) = table_with(1);
    assert_eq!(t.find("web").unwrap(), p);
    t[p].removed = true;
    assert!(t.find("web").is_err());
    let again = t.push(program("web", 1));
    assert_eq!(t.find("web").unwrap(), again);
    assert_eq!(t.live_programs(), [again]);
}

#[test]
fn a_slot_is_found_by_index_whatever_its_position() {
    let (mut t, p) = table_with(3);
    t[p][SlotPos(1)].retiring = true;
    t[p].remove_retired();
    assert_eq!(t.slot_pos(p, InstanceIndex(2)), Some(SlotPos(1)));
    assert_eq!(t.slot_pos(p, InstanceIndex(1)), None);
    assert_eq!(t[p][SlotPos(1)].index, InstanceIndex(2));
}

#[test]
fn a_retiring_slot_is_kept_while_its_process_runs() {
    let (mut t, p) = table_with(2);
    run(&mut t, p, SlotPos(1), 100);
    t[p][SlotPos(1)].retiring = true;
    t[p].remove_retired();
    assert_eq!(t[p].slots().len(), 2);
    assert_eq!(t[p].live_indices(), [InstanceIndex(0)]);
}

#[test]
fn slot_for_index_reuses_a_retiring_slot_or_adds_one() {
    let (mut t, p) = table_with(2);
    t[p][SlotPos(1)].retiring = true;
    assert_eq!(t[p].slot_for_index(InstanceIndex(1)), SlotPos(1));
    assert!(!t[p][SlotPos(1)].retiring);
    assert_eq!(t[p].slot_for_index(InstanceIndex(2)), SlotPos(2));
    assert_eq!(t[p][SlotPos(2)].index, InstanceIndex(2));
}

#[test]
fn a_new_pid_replaces_the_old_one_in_the_index() {
    let (mut t, p) = table_with(2);
    let now = Instant::now();
    t.track_pid_change(p, SlotPos(1), None, Some(100), now);
    assert_eq!(t.owner(100), Some((p, SlotId(1))));
    assert_eq!(t[p][SlotPos(1)].up_since, Some(now));
    t.track_pid_change(p, SlotPos(1), Some(100), Some(200), now);
    assert_eq!(t.owner(100), None);
    assert_eq!(t.owner(200), Some((p, SlotId(1))));
    t.track_pid_change(p, SlotPos(1), Some(200), None, now);
    assert_eq!(t.owner(200), None);
}

#[test]
fn a_new_process_starts_without_the_previous_main_pid_or_status() {
    let (mut t, p) = table_with(1);
    let now = Instant::now();
    let pos = SlotPos(0);
    t.track_pid_change(p, pos, None, Some(100), now);
    run(&mut t, p, pos, 100);
    t.set_main_pid(p, pos, 150, None);
    t[p][pos].status_text = Some("busy".into());
    assert_eq!(t.owner(150), Some((p, SlotId(0))));
    t.track_pid_change(p, pos, Some(100), Some(300), now);
    assert_eq!(t.owner(150), None);
    assert_eq!(t[p][pos].main_pid, None);
    assert_eq!(t[p][pos].status_text, None);
}

#[test]
fn a_second_main_pid_replaces_the_first() {
    let (mut t, p) = table_with(1);
    let pos = SlotPos(0);
    t.track_pid_change(p, pos, None, Some(100), Instant::now());
    run(&mut t, p, pos, 100);
    t.set_main_pid(p, pos, 150, None);
    t.set_main_pid(p, pos, 160, None);
    assert_eq!(t.owner(150), None);
    assert_eq!(t.owner(160), Some((p, SlotId(0))));
    // The worker itself named as MAINPID stays indexed when replaced.
    t.set_main_pid(p, pos, 100, None);
    t.set_main_pid(p, pos, 170, None);
    assert_eq!(t.owner(100), Some((p, SlotId(0))));
}

#[test]
fn the_worker_reaped_without_a_main_pid_ends_the_instance() {
    let (mut t, p) = table_with(1);
    let pos = SlotPos(0);
    t.track_pid_change(p, pos, None, Some(100), Instant::now());
    run(&mut t, p, pos, 100);
    assert_eq!(t.reaped(p, pos, 100), Reaped::End);
    assert_eq!(t.owner(100), None);
}

#[test]
fn the_main_pid_reaped_while_its_launcher_runs_is_told_apart() {
    let (mut t, p) = table_with(1);
    let pos = SlotPos(0);
    t.track_pid_change(p, pos, None, Some(100), Instant::now());
    run(&mut t, p, pos, 100);
    t.set_main_pid(p, pos, 150, None);
    assert_eq!(t.reaped(p, pos, 150), Reaped::MainWhileLauncherRuns);
    assert_eq!(t[p][pos].main_pid, None);
    assert_eq!(t.owner(150), None);
    assert_eq!(t.owner(100), Some((p, SlotId(0))));
    assert_eq!(t.reaped(p, pos, 100), Reaped::End);
}

#[test]
fn the_main_pid_reaped_after_its_launcher_ends_the_instance() {
    let (mut t, p) = table_with(1);
    let pos = SlotPos(0);
    run(&mut t, p, pos, 100);
    t.set_main_pid(p, pos, 150, None);
    t[p][pos].launcher_gone = true;
    assert_eq!(t.reaped(p, pos, 150), Reaped::End);
}

#[test]
fn a_pid_the_instance_no_longer_owns_is_stale() {
    let (mut t, p) = table_with(1);
    let pos = SlotPos(0);
    run(&mut t, p, pos, 100);
    assert_eq!(t.reaped(p, pos, 99), Reaped::Stale);
}

#[test]
fn a_spawn_failure_is_told_once_per_reason_and_shown_as_status_until_a_spawn_succeeds() {
    let (mut t, p) = table_with(1);
    let pos = SlotPos(0);
    let t0 = Instant::now();
    let missing = "cannot start: cannot read env_file /etc/a: No such file or directory";
    let slot = &mut t[p][pos];
    assert_eq!(slot.spawn_failed(missing.into(), t0), Some(missing.into()));
    for s in 1..10 {
        let now = t0 + std::time::Duration::from_secs(s);
        assert_eq!(slot.spawn_failed(missing.into(), now), None);
    }
    assert_eq!(slot.status_text.as_deref(), Some(missing));
    // Another reason is news.
    let other = "cannot start: /etc/a:2:1: \"export A\" is not a variable name";
    assert_eq!(slot.spawn_failed(other.into(), t0), Some(other.into()));
    // Past the summary interval, the count of repeats.
    let later = t0 + SPAWN_FAILURE_SUMMARY_EVERY;
    let summary = slot.spawn_failed(other.into(), later).expect("a summary");
    assert!(
        summary.ends_with("(1 failed start since the last report)"),
        "{summary}"
    );
    // A spawn that succeeds clears the status, and the same reason is news again after it.
    t.track_pid_change(p, pos, None, Some(100), later);
    assert_eq!(t[p][pos].status_text, None);
    let again = t[p][pos].spawn_failed(missing.into(), later);
    assert_eq!(again, Some(missing.into()));
}
