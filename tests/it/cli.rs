//! What a new operator meets first, tried as one would: `--help`, the bundled example
//! configuration run as the README says (a first terminal runs it, a second one talks to it),
//! and the licence files `Cargo.toml` declares.
//!
//! The example run starts the real binary on a copy of `examples/warden.toml` in a sandbox (its
//! relative pidfile then lands in the sandbox), as `nobody` when the tests run as root, so that
//! the unprivileged case is the one tested; every process is killed by pid at the end.

use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::Value;

fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn help_describes_the_command_and_shows_the_environment_variable_right() {
    let _test = this_test!();
    for env in [None, Some("/somewhere/else.toml")] {
        let mut c = Command::new(warden_bin());
        c.arg("--help").env_remove("WARDEN_CONFIG");
        if let Some(v) = env {
            c.env("WARDEN_CONFIG", v);
        }
        let out = wait_output(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            TIMEOUT,
        );
        assert!(out.status.success());
        let help = stdout_of(&out);
        let first = help.lines().next().unwrap();
        // The command's own words, not the crate's description (with its Markdown backticks).
        assert!(!first.contains('`'), "{first}");
        assert!(!first.contains("framework"), "{first}");
        assert!(
            first.contains("supervis") && first.contains("daemon"),
            "{first}"
        );
        assert!(help.contains("[env: WARDEN_CONFIG]"), "{help}");
        assert!(!help.contains("WARDEN_CONFIG="), "{help}");
        assert!(help.contains("warden(8)"), "{help}");
    }
    let out = wait_output(
        Command::new(warden_bin())
            .args(["start", "--help"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
        TIMEOUT,
    );
    let help = stdout_of(&out);
    assert!(help.contains("wait until every instance"), "{help}");
    assert!(help.contains("ready_timeout"), "{help}");
}

#[test]
fn timeouts_take_the_configuration_duration_syntax() {
    let _test = this_test!();
    // Parsed before anything else happens: no configuration or daemon needed to see it.
    for (value, ok) in [
        ("5", true),
        ("1m 30s", true),
        ("250ms", true),
        ("5 parsecs", false),
        ("400days", false),
    ] {
        let out = wait_output(
            Command::new(warden_bin())
                .args([
                    "-c",
                    "/nonexistent/warden.toml",
                    "stop",
                    "--timeout",
                    value,
                    "x",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            TIMEOUT,
        );
        let err = stderr_of(&out);
        if ok {
            // Accepted; then the missing file: exit 6.
            assert_eq!(out.status.code(), Some(6), "{value:?}: {err}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{value:?}: {err}");
            assert!(err.contains("--timeout"), "{value:?}: {err}");
        }
    }
}

#[test]
fn the_licence_files_cargo_toml_declares_exist() {
    let _test = this_test!();
    let manifest = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"MIT OR Apache-2.0\""));
    let mit = std::fs::read_to_string(manifest_dir().join("LICENSE-MIT")).unwrap();
    assert!(mit.starts_with("MIT License") && mit.contains("the warden developers"));
    let apache = std::fs::read_to_string(manifest_dir().join("LICENSE-APACHE")).unwrap();
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
}

/// `warden ARGS…` on `config`, as nobody when the tests run as root.
fn command(config: &std::path::Path, args: &[&str]) -> Command {
    let mut c = if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(warden_bin());
        c
    } else {
        Command::new(warden_bin())
    };
    c.arg("-c")
        .arg(config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    c
}

#[test]
fn the_bundled_example_runs_and_answers_a_second_terminal() {
    let test = this_test!();
    if !std::path::Path::new("/usr/bin/python3").exists() {
        test.skip("no python3");
        return;
    }
    let mut sb = test.sandbox("");
    std::fs::copy(manifest_dir().join("examples/warden.toml"), &sb.config).unwrap();
    let config = sb.config.clone();
    // The first terminal: `warden -c examples/warden.toml run` (its log on stderr).
    let mut run = command(&config, &["run"]);
    run.stdout(Stdio::null()).stderr(Stdio::null());
    let warden = sb.spawn(run);
    let status = |sb: &mut Sandbox, args: &[&str]| {
        let o = sb.output(command(&config, args));
        (o.status.code().unwrap_or(-1), o)
    };
    assert!(
        wait_until(TIMEOUT, || status(&mut sb, &["status"]).0 == 0),
        "warden -c examples/warden.toml status never answered 0"
    );
    // Its pidfile and control socket are beside the configuration, where its user may write.
    // `status` answers 0 from the pidfile's lock as soon as it is taken, which is before the
    // control socket is bound: wait for the socket.
    assert!(
        wait_until(TIMEOUT, || sb.path("warden.sock").exists()),
        "no control socket beside the configuration"
    );
    assert!(sb.path("warden.pid").exists());
    assert!(
        wait_until(TIMEOUT, || status(
            &mut sb,
            &["status", "ticker", "notifier"]
        )
        .0 == 0),
        "the example's programs never came up: {}",
        stdout_of(&status(&mut sb, &["status"]).1)
    );
    let (_, o) = status(&mut sb, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["daemon"]["pid"].as_i64(), Some(warden.into()), "{v:#}");
    for i in v["instances"].as_array().unwrap() {
        sb.track(i["pid"].as_i64().unwrap() as i32);
    }
    // The second terminal's commands, each confirmed.
    let (c, o) = status(&mut sb, &["stop", "ticker"]);
    assert_eq!(
        (c, stdout_of(&o).as_str()),
        (0, "ticker: stopped\n"),
        "{}",
        stderr_of(&o)
    );
    assert_eq!(status(&mut sb, &["status", "ticker"]).0, 150);
    let (c, o) = status(&mut sb, &["start", "ticker"]);
    assert_eq!(
        (c, stdout_of(&o).as_str()),
        (0, "ticker: started\n"),
        "{}",
        stderr_of(&o)
    );
    let (c, o) = status(&mut sb, &["scale", "ticker", "3"]);
    assert_eq!(
        (c, stdout_of(&o).as_str()),
        (0, "ticker: scaled to 3 instances\n"),
        "{}",
        stderr_of(&o)
    );
    let (c, o) = status(&mut sb, &["reload", "--dry-run"]);
    assert_eq!(c, 0, "{}", stderr_of(&o));
    let (c, o) = status(&mut sb, &["stop"]);
    assert_eq!(c, 0, "{}", stderr_of(&o));
    assert!(
        sb.wait_child(warden, TIMEOUT).is_some(),
        "warden run did not exit after stop"
    );
    assert!(!sb.path("warden.pid").exists() && !sb.path("warden.sock").exists());
    assert_no_process(&sb);
}

/// `examples/minimal.rs`, the daemon a developer copies: it starts, says why it cannot start in
/// words (Display, not Debug), logs, answers signals and runs its exit hook.
#[test]
fn the_minimal_example_daemonizes_logs_and_reports_errors_in_words() {
    let test = this_test!();
    let mut sb = test.sandbox("");
    let bin = example("minimal");
    let start = |sb: &mut Sandbox| {
        let mut c = Command::new(&bin);
        c.arg(&sb.dir).stdin(Stdio::null());
        sb.output(c)
    };
    let out = start(&mut sb);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let pid: i32 = sb.read("minimal.pid").trim().parse().unwrap();
    sb.track(pid);
    let out = start(&mut sb);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        format!("minimal: already running (pid {pid})\n")
    );
    assert!(
        sb.read("minimal.log")
            .contains(&format!("ready (pid {pid})"))
    );
    signal(pid, nix::sys::signal::Signal::SIGHUP);
    assert!(wait_until(TIMEOUT, || sb
        .read("minimal.log")
        .contains("reload")));
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_until(TIMEOUT, || !alive(pid)));
    assert_eq!(sb.read("state"), "saved\n", "the exit hook ran");
    assert!(!sb.path("minimal.pid").exists(), "the pidfile is removed");
    assert!(sb.read("minimal.log").contains("stopping"));
}
