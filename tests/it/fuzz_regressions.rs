//! Replays the fuzz targets' seed corpora (`fuzz/seeds/TARGET/`) and every input a fuzzer found
//! a fault with (`fuzz/regressions/TARGET/`) through the same entry points the targets call
//! (`warden::fuzzing`), on stable, in the normal suite: no nightly toolchain, no libFuzzer.
//! Each input must neither panic nor break what its entry point asserts. The fuzzers
//! themselves run with `scripts/fuzz` (see the README's "Fuzzing").

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Every file in `fuzz/seeds/TARGET` and `fuzz/regressions/TARGET`, sorted; with how many came
/// from each.
fn inputs(target: &str) -> (Vec<PathBuf>, usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut found = Vec::new();
    let mut regressions = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
            .collect();
        files.sort();
        if dir == "regressions" {
            regressions = files.len();
        }
        found.extend(files);
    }
    (found, regressions)
}

/// Runs `check` on every input of `target`; fails naming every input that panicked.
fn replay(target: &str, check: fn(&[u8])) -> (usize, usize) {
    let (files, regressions) = inputs(target);
    assert!(
        files.len() > regressions,
        "no seed inputs for {target} in fuzz/seeds/{target}"
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", f.display()));
        }
    }
    assert!(failed.is_empty(), "{target}: {failed:#?}");
    (files.len(), regressions)
}

#[test]
fn config_inputs_replay_cleanly() {
    replay("config", warden::fuzzing::config);
}

#[test]
fn control_request_inputs_replay_cleanly() {
    replay("control_request", warden::fuzzing::control);
}

#[test]
fn pool_frame_inputs_replay_cleanly() {
    replay("pool_frame", warden::fuzzing::pool::stream);
}

#[test]
fn notify_inputs_replay_cleanly() {
    replay("notify", warden::fuzzing::notify);
}

/// The seeds are what they claim to be: the example configuration is among them and valid,
/// some request lines are accepted and some refused, and the pool seeds hold real frames. A
/// seed directory of junk would make the fuzzers start from nothing.
#[test]
fn seeds_exercise_the_parsers() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/config/example-warden.toml"),
    )
    .unwrap();
    warden::config::Config::parse(Path::new(warden::fuzzing::CONFIG_PATH), &example)
        .expect("the example configuration seed is valid");
    let (lines, _) = inputs("control_request");
    let accepted = lines
        .iter()
        .filter(|f| warden::control::Request::parse_line(&std::fs::read(f).unwrap()).is_ok())
        .count();
    assert!(
        accepted >= 5 && accepted < lines.len(),
        "{accepted} of {}",
        lines.len()
    );
    let (streams, _) = inputs("pool_frame");
    let frames: usize = streams
        .iter()
        .map(|f| {
            let data = std::fs::read(f).unwrap();
            warden::fuzzing::pool::receive(&data[3..], &[4096], 4096)
                .frames
                .len()
        })
        .sum();
    assert!(frames >= 10, "{frames} frames in the pool seeds");
}
