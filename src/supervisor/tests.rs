//! The loop's own pure policy: what `apply` logs for a change.

use log::Level;

use super::*;

fn change(before: InstanceState, after: InstanceState) -> Change {
    Change {
        tag: "web[0]".into(),
        before,
        after,
        pid_before: None,
        pid_after: None,
        first_start: false,
    }
}

fn note(level: Level, text: &str) -> (Level, String) {
    (level, text.to_string())
}

#[test]
fn a_state_change_is_one_line_with_the_new_pid() {
    let c = Change {
        pid_after: Some(42),
        ..change(InstanceState::Backoff, InstanceState::Running)
    };
    assert_eq!(
        transition_line(&c, &[]),
        [(
            Level::Info,
            "web[0]: backoff -> running (pid 42)".to_string()
        )]
    );
}

#[test]
fn the_notes_give_the_reason_and_the_worst_level() {
    let c = change(InstanceState::Running, InstanceState::Backoff);
    let notes = [
        note(Level::Info, "exited with status 1"),
        note(Level::Warn, "restarting in 1s"),
    ];
    assert_eq!(
        transition_line(&c, &notes),
        [(
            Level::Warn,
            "web[0]: running -> backoff: exited with status 1; restarting in 1s".to_string()
        )]
    );
}

#[test]
fn the_first_start_is_from_new() {
    let c = Change {
        first_start: true,
        pid_after: Some(7),
        ..change(InstanceState::Exited, InstanceState::Running)
    };
    assert_eq!(
        transition_line(&c, &[]),
        [(Level::Info, "web[0]: new -> running (pid 7)".to_string())]
    );
}

#[test]
fn a_respawn_in_the_same_state_is_a_change_all_the_same() {
    let c = Change {
        pid_before: Some(1),
        pid_after: Some(2),
        ..change(InstanceState::Running, InstanceState::Running)
    };
    let lines = transition_line(&c, &[note(Level::Warn, "exited with status 1")]);
    assert_eq!(
        lines,
        [(
            Level::Warn,
            "web[0]: running -> running (pid 2): exited with status 1".to_string()
        )]
    );
}

#[test]
fn without_a_change_each_note_is_its_own_line() {
    let c = Change {
        pid_before: Some(5),
        pid_after: Some(5),
        ..change(InstanceState::Ready, InstanceState::Ready)
    };
    let notes = [note(Level::Warn, "a"), note(Level::Info, "b")];
    assert_eq!(
        transition_line(&c, &notes),
        [
            (Level::Warn, "web[0] (pid 5): a".to_string()),
            (Level::Info, "web[0] (pid 5): b".to_string()),
        ]
    );
}

#[test]
fn nothing_is_logged_without_a_change_or_a_note() {
    let c = change(InstanceState::Stopped, InstanceState::Stopped);
    assert!(transition_line(&c, &[]).is_empty());
}

#[test]
fn instance_states_keep_their_status_names() {
    let now = std::time::Instant::now();
    let names: Vec<&str> = [
        State::Spawning,
        State::Starting { pid: 1, since: now },
        State::Running { pid: 1, since: now },
        State::Backoff { until: now },
        State::Exited,
        State::Stopped,
        State::Fatal,
    ]
    .iter()
    .map(|s| InstanceState::of(s).name())
    .collect();
    assert_eq!(
        names,
        [
            "starting", "starting", "running", "backoff", "exited", "stopped", "fatal"
        ]
    );
    assert_eq!(InstanceState::Ready.to_string(), "ready");
    assert_eq!(InstanceState::Stopping.to_string(), "stopping");
}
