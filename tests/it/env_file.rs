//! Environment files (`env_file`) against a running daemon: variables applied in order under
//! `env`, an optional file that is missing, an edit applied by `warden restart`, a required file
//! that is missing (the instance stays down, the reason is logged once and shown in `status`,
//! and it starts once the file appears), and `warden check` naming a broken file's line.
//!
//! Each program is a script in the sandbox that writes its environment to a file, then sleeps
//! (`SANDBOX/sleep`), so that the sandbox finds and kills it at drop. Waits are bounded polls.

use crate::common::*;
use serde_json::Value;

/// A script that writes its environment to `SANDBOX/NAME.out` (whole, then renamed into place),
/// then sleeps.
fn env_dumper(sb: &Sandbox, name: &str) -> String {
    let out = sb.path(&format!("{name}.out"));
    let out = path_str(&out);
    script(
        sb,
        &format!("{name}.sh"),
        &format!(
            "#!/bin/sh\nenv > {out}.tmp && mv {out}.tmp {out}\nexec {}/sleep 1000\n",
            dir(sb)
        ),
    );
    let path = sb.path(&format!("{name}.sh"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path_str(&path)
}

/// The variable `key` in the environment dumped to `SANDBOX/NAME.out`, once the file is there.
fn dumped(sb: &Sandbox, name: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(sb.path(&format!("{name}.out"))).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Waits (bounded) until the dumped `key` is `want`.
fn wait_dumped(sb: &Sandbox, name: &str, key: &str, want: &str) {
    assert!(
        wait_until(TIMEOUT, || dumped(sb, name, key).as_deref() == Some(want)),
        "{key} of {name}: {:?}, want {want:?}; log:\n{}",
        dumped(sb, name, key),
        log(sb)
    );
}

/// `warden status --json`: the first instance of `program`.
fn instance(sb: &mut Sandbox, program: &str) -> Value {
    let out = sb.run(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["instances"]
        .as_array()
        .and_then(|is| is.iter().find(|i| i["program"] == program).cloned())
        .unwrap_or(Value::Null)
}

fn write(sb: &Sandbox, name: &str, text: &str) {
    std::fs::write(sb.path(name), text).unwrap();
}

#[test]
fn env_files_apply_in_order_under_env_and_an_edit_applies_after_restart() {
    let test = this_test!();
    let sb = test.sandbox("");
    write(
        &sb,
        "a.env",
        "# shared with a systemd unit\nA=from_a\nB=from_a\nC=from_a\nQ=\"two  words\" 'and more'\n",
    );
    write(&sb, "b.env", "B=from_b\nC=from_b\n");
    let cmd = env_dumper(&sb, "w");
    // b.env is relative: taken from the configuration file's directory (the sandbox).
    let tables = format!(
        "[program.w]\ncommand = [\"{cmd}\"]\nenv_file = [\"{d}/a.env\", \"b.env\", \"-{d}/missing.env\"]\nenv = {{ C = \"from_env\" }}\n",
        d = dir(&sb)
    );
    let mut sb = sb;
    sb.write_config(&format!("#TABLES\n{tables}"));
    sb.start();
    wait_dumped(&sb, "w", "C", "from_env");
    assert_eq!(dumped(&sb, "w", "A").as_deref(), Some("from_a"));
    assert_eq!(
        dumped(&sb, "w", "B").as_deref(),
        Some("from_b"),
        "later file wins"
    );
    assert_eq!(dumped(&sb, "w", "Q").as_deref(), Some("two  wordsand more"));
    assert_eq!(dumped(&sb, "w", "WARDEN_PROGRAM").as_deref(), Some("w"));

    // An edit applies at the next start, not before.
    write(&sb, "a.env", "A=edited\n");
    std::fs::remove_file(sb.path("w.out")).unwrap();
    let out = sb.run(&["restart", "w"]);
    assert_exit(&out, 0);
    wait_dumped(&sb, "w", "A", "edited");
    assert_eq!(dumped(&sb, "w", "C").as_deref(), Some("from_env"));
    assert_exit(&sb.run(&["stop"]), 0);
}

#[test]
fn a_missing_required_env_file_keeps_the_instance_down_said_once_until_the_file_appears() {
    let test = this_test!();
    let sb = test.sandbox("");
    let cmd = env_dumper(&sb, "w");
    let tables = format!(
        "[program.w]\ncommand = [\"{cmd}\"]\nenv_file = [\"{d}/late.env\"]\n\
         backoff_initial = \"20ms\"\nbackoff_max = \"50ms\"\nmax_restarts = 100000\n",
        d = dir(&sb)
    );
    let mut sb = sb;
    sb.write_config(&format!("#TABLES\n{tables}"));
    sb.start();
    // Retried by the restart policy, again and again…
    assert!(
        wait_until(TIMEOUT, || instance(&mut sb, "w")["restarts"]
            .as_u64()
            .is_some_and(|r| r >= 10)),
        "no retries: {}\nlog:\n{}",
        instance(&mut sb, "w"),
        log(&sb)
    );
    // …never started, the reason shown in status…
    let i = instance(&mut sb, "w");
    assert!(i["pid"].is_null(), "{i}");
    assert!(!sb.path("w.out").exists());
    let status = i["status"].as_str().unwrap_or_default().to_string();
    assert!(
        status.contains("late.env") && status.contains("No such file"),
        "status: {i}"
    );
    let table = stdout_of(&sb.run(&["status"]));
    assert!(table.contains("late.env"), "{table}");
    // …and logged once, not once per attempt.
    let said = log(&sb).matches("cannot read env_file").count();
    assert_eq!(said, 1, "log:\n{}", log(&sb));

    // The file appears: the next retry starts it, and the status line is gone.
    write(&sb, "late.env", "LATE=here\n");
    wait_dumped(&sb, "w", "LATE", "here");
    assert!(
        wait_until(TIMEOUT, || instance(&mut sb, "w")["status"].is_null()),
        "{}",
        instance(&mut sb, "w")
    );
    assert_exit(&sb.run(&["stop"]), 0);
}

#[test]
fn check_names_the_line_of_a_broken_env_file_and_a_missing_required_one() {
    let test = this_test!();
    let sb = test.sandbox("");
    write(&sb, "bad.env", "A=1\n\nexport B=2\n");
    let tables = format!(
        "[program.w]\ncommand = [\"/bin/true\"]\nenv_file = [\"bad.env\", \"{d}/gone.env\", \"-{d}/maybe.env\"]\n",
        d = dir(&sb)
    );
    let mut sb = sb;
    sb.write_config(&format!("#TABLES\n{tables}"));
    let out = sb.run(&["check"]);
    let err = stderr_of(&out);
    // The place of `env_file` in warden.toml, then the env file's own line and column.
    let config = path_str(&sb.config);
    let bad = path_str(&sb.path("bad.env"));
    assert!(
        err.contains(&format!("{config}:"))
            && err.contains(&format!(
                "program.w.env_file: invalid env_file: {bad}:3:1: "
            )),
        "{err}"
    );
    assert!(err.contains("systemd does not accept `export`"), "{err}");
    assert!(err.contains("gone.env: No such file or directory"), "{err}");
    assert!(
        !err.contains("maybe.env"),
        "an optional file may be missing: {err}"
    );
    // Warnings: the file itself is valid (the env files may be fixed before a start).
    assert_exit(&out, 0);
}
