//! Tests of `[program.NAME]` reading: every key, the defaults, and every diagnostic at its
//! exact line and column.

use std::path::Path;

use nix::sys::signal::Signal;

use super::*;
use crate::config::Config;
use crate::error::Error;
use nix::sys::resource::Resource;

const FILE: &str = "/etc/warden/warden.toml";

fn parse(text: &str) -> Config {
    match Config::parse(Path::new(FILE), text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid configuration, got:\n{e}"),
    }
}

/// Every diagnostic as `LINE:COLUMN: key: message` (the file name stripped).
fn errors(text: &str) -> Vec<String> {
    match Config::parse(Path::new(FILE), text) {
        Err(Error::Config(d)) => d
            .iter()
            .map(|d| {
                d.to_string()
                    .trim_start_matches(FILE)
                    .trim_start_matches(':')
                    .to_string()
            })
            .collect(),
        other => panic!("expected config errors, got {other:?}"),
    }
}

fn one(text: &str) -> ProgramSpec {
    let mut c = parse(text);
    assert_eq!(c.programs.len(), 1, "{:?}", c.programs);
    c.programs.remove(0)
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(ToString::to_string).collect()
}

/// Checks `errs` against `(prefix, fragment)` pairs, one per diagnostic, in order.
fn check(errs: &[String], expected: &[(&str, &str)]) {
    for (i, (prefix, fragment)) in expected.iter().enumerate() {
        let Some(e) = errs.get(i) else {
            panic!(
                "missing diagnostic {i} {prefix:?}; got:\n{}",
                errs.join("\n")
            );
        };
        assert!(
            e.starts_with(prefix) && e.contains(fragment),
            "diagnostic {i}: expected {prefix:?} … {fragment:?}, got {e:?}; all:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(
        errs.len(),
        expected.len(),
        "extra diagnostics:\n{}",
        errs.join("\n")
    );
}

#[test]
fn reads_every_program_key() {
    let p = one(r#"[program.web]
command = ["/usr/bin/web", "--port", "8080"]
instances = 3
directory = "srv"
user = "www-data"
group = "adm"
umask = "027"
env = { RUST_LOG = "info", PATH = "/usr/bin:/bin", EMPTY = "" }
clean_env = true
limits = { nofile = 4096, core = 0, nproc = 100, memlock = "64K", as = "unlimited", fsize = "1G", stack = 8388608, cpu = "infinity" }
restart = "on-failure"
backoff_initial = "250ms"
backoff_max = "1m"
backoff_reset = "5s"
max_restarts = 10
restart_window = "2m"
stop_signal = "SIGINT"
stop_timeout = "3s"
ready = "notify"
start_timeout = "20s"
watchdog = "30s"
stdout = "/var/log/web.out"
stderr = "null"
log_max_bytes = "512K"
log_keep = 2
"#);
    assert_eq!(p.name, "web");
    assert_eq!(p.exec.command, argv(&["/usr/bin/web", "--port", "8080"]));
    assert_eq!(p.instances, 3);
    assert_eq!(p.exec.directory, Some(PathBuf::from("/etc/warden/srv")));
    assert_eq!(p.exec.user.as_deref(), Some("www-data"));
    assert_eq!(p.exec.group.as_deref(), Some("adm"));
    assert_eq!(p.exec.umask, Some(0o027));
    assert_eq!(
        p.exec.env,
        vec![
            ("RUST_LOG".to_string(), "info".to_string()),
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]
    );
    assert!(p.exec.clean_env);
    assert_eq!(
        p.exec.limits,
        Limits {
            nofile: Some(4096),
            core: Some(0),
            nproc: Some(100),
            memlock: Some(64 << 10),
            address_space: Some(u64::MAX),
            fsize: Some(1 << 30),
            stack: Some(8 << 20),
            cpu: Some(u64::MAX),
        }
    );
    assert_eq!(p.policy.restart, Restart::OnFailure);
    assert_eq!(p.policy.backoff_initial, Duration::from_millis(250));
    assert_eq!(p.policy.backoff_max, Duration::from_secs(60));
    assert_eq!(p.policy.backoff_reset, Duration::from_secs(5));
    assert_eq!(p.policy.max_restarts, 10);
    assert_eq!(p.policy.restart_window, Duration::from_secs(120));
    assert_eq!(p.policy.stop, StopWith::Signal(Signal::SIGINT));
    assert_eq!(p.policy.stop_timeout, Duration::from_secs(3));
    assert_eq!(p.policy.readiness, Readiness::Notify);
    assert_eq!(p.policy.start_timeout, Some(Duration::from_secs(20)));
    assert_eq!(p.policy.watchdog, Some(Duration::from_secs(30)));
    assert_eq!(p.stdout, OutputSpec::File("/var/log/web.out".into()));
    assert_eq!(p.stderr, OutputSpec::Null);
    assert_eq!(p.log_max_bytes, 512 << 10);
    assert_eq!(p.log_keep, 2);
}

#[test]
fn defaults() {
    let p = one("[program.a]\ncommand = [\"/bin/true\"]\n");
    let mut expected = ProgramSpec::new("a", argv(&["/bin/true"]));
    expected.source = Some(FILE.into());
    assert_eq!(p, expected);
    assert_eq!(p.instances, 1);
    assert_eq!(p.exec.directory, None);
    assert_eq!(p.exec.umask, None);
    assert!(p.exec.env.is_empty() && !p.exec.clean_env);
    assert!(p.exec.limits.is_empty());
    assert_eq!(p.policy.stop, StopWith::Signal(Signal::SIGTERM));
    assert_eq!((p.stdout, p.stderr), (OutputSpec::Log, OutputSpec::Log));
    assert_eq!(p.log_max_bytes, 10 * 1024 * 1024);
    assert_eq!(p.log_keep, 5);
    // The config's defaults are the state machine's, by construction.
    assert_eq!(p.policy, crate::policy::Policy::default());
}

#[test]
fn programs_keep_file_order() {
    let c = parse(
        "[program.zeta]\ncommand = \"z\"\n[program.alpha]\ncommand = \"a\"\n[program.mid]\ncommand = \"m\"\n",
    );
    let names: Vec<_> = c.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    assert!(parse("").programs.is_empty());
    assert!(parse("[program]\n").programs.is_empty());
}

#[test]
fn command_string_is_split_shell_style() {
    let p = one(r#"[program.a]
command = "/bin/prog 'a b' \"c d\" e\\ f $HOME *.txt # a comment"
"#);
    assert_eq!(
        p.exec.command,
        argv(&["/bin/prog", "a b", "c d", "e f", "$HOME", "*.txt"])
    );
    let p = one("[program.a]\ncommand = '  /bin/sleep   10 '\n");
    assert_eq!(p.exec.command, argv(&["/bin/sleep", "10"]));
}

#[test]
fn env_and_limits_as_sub_tables() {
    let p = one(
        "[program.a]\ncommand = [\"/bin/true\"]\n[program.a.env]\nB = \"2\"\nA = \"1\"\n[program.a.limits]\nnofile = \"unlimited\"\ncore = \"unlimited\"\n",
    );
    assert_eq!(
        p.exec.env,
        vec![("B".into(), "2".into()), ("A".into(), "1".into())]
    );
    assert_eq!(p.exec.limits.nofile, Some(libc::RLIM_INFINITY));
    assert_eq!(
        p.exec.limits.iter().collect::<Vec<_>>(),
        [
            (Resource::RLIMIT_NOFILE, u64::MAX),
            (Resource::RLIMIT_CORE, u64::MAX)
        ]
    );
}

#[test]
fn limits_iterate_in_a_fixed_order() {
    let l = Limits {
        cpu: Some(10),
        nofile: Some(1024),
        address_space: Some(1 << 30),
        ..Limits::default()
    };
    assert_eq!(
        l.iter().collect::<Vec<_>>(),
        [
            (Resource::RLIMIT_NOFILE, 1024),
            (Resource::RLIMIT_AS, 1 << 30),
            (Resource::RLIMIT_CPU, 10)
        ]
    );
    assert!(Limits::default().is_empty());
}

#[test]
fn readiness_and_optional_durations() {
    let p = |body: &str| one(&format!("[program.a]\ncommand = \"x\"\n{body}\n"));
    assert_eq!(
        p("ready = \"2s\"").policy.readiness,
        Readiness::After(Duration::from_secs(2))
    );
    assert_eq!(
        p("ready = 3").policy.readiness,
        Readiness::After(Duration::from_secs(3))
    );
    assert_eq!(
        p("ready = \"immediate\"").policy.readiness,
        Readiness::Immediate
    );
    assert_eq!(
        p("ready = \"notify\"\nstart_timeout = \"0\"")
            .policy
            .start_timeout,
        None
    );
    assert_eq!(p("start_timeout = \"0s\"").policy.start_timeout, None);
    assert_eq!(p("start_timeout = 0").policy.start_timeout, None);
    assert_eq!(p("start_timeout = \"infinity\"").policy.start_timeout, None);
    assert_eq!(
        p("ready = \"notify\"\nstart_timeout = 5")
            .policy
            .start_timeout,
        Some(Duration::from_secs(5))
    );
    // A disabled watchdog needs no notify; nor does a disabled start_timeout (above).
    assert_eq!(p("watchdog = \"0s\"").policy.watchdog, None);
    assert_eq!(
        p("ready = \"notify\"\nwatchdog = \"1500ms\"")
            .policy
            .watchdog,
        Some(Duration::from_millis(1500))
    );
}

#[test]
fn stop_signal_names() {
    let sig = |name: &str| {
        one(&format!(
            "[program.a]\ncommand = \"x\"\nstop_signal = {name:?}\n"
        ))
        .policy
        .stop
    };
    assert_eq!(sig("TERM"), StopWith::Signal(Signal::SIGTERM));
    assert_eq!(sig("SIGTERM"), StopWith::Signal(Signal::SIGTERM));
    assert_eq!(sig("INT"), StopWith::Signal(Signal::SIGINT));
    assert_eq!(sig("QUIT"), StopWith::Signal(Signal::SIGQUIT));
    assert_eq!(sig("HUP"), StopWith::Signal(Signal::SIGHUP));
    assert_eq!(sig("USR1"), StopWith::Signal(Signal::SIGUSR1));
    assert_eq!(sig("SIGUSR2"), StopWith::Signal(Signal::SIGUSR2));
    assert_eq!(sig("KILL"), StopWith::Signal(Signal::SIGKILL));
    assert_eq!(sig("WINCH"), StopWith::Signal(Signal::SIGWINCH));
    assert_eq!(sig("sigquit"), StopWith::Signal(Signal::SIGQUIT));
    assert_eq!(parse_signal("TERMINATE"), None);
    assert_eq!(parse_signal("SIG"), None);
    assert_eq!(parse_signal(""), None);
    assert_eq!(parse_signal("15"), None);
}

#[test]
fn sizes() {
    use crate::config::parse_size;
    assert_eq!(parse_size("10M"), Some(10 << 20));
    assert_eq!(parse_size("512K"), Some(512 << 10));
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("2T"), Some(2 << 40));
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("10MiB"), Some(10 << 20));
    assert_eq!(parse_size("10 mb"), Some(10 << 20));
    assert_eq!(parse_size("0"), Some(0));
    assert_eq!(parse_size(""), None);
    assert_eq!(parse_size("M"), None);
    assert_eq!(parse_size("10X"), None);
    assert_eq!(parse_size("10iB"), None);
    assert_eq!(parse_size("-1"), None);
    assert_eq!(parse_size("1.5M"), None);
    assert_eq!(parse_size("99999999999T"), None);
    let p = |v: &str| {
        one(&format!(
            "[program.a]\ncommand = \"x\"\nlog_max_bytes = {v}\n"
        ))
        .log_max_bytes
    };
    assert_eq!(p("\"10M\""), 10 << 20);
    assert_eq!(p("1_048_576"), 1 << 20);
    assert_eq!(p("0x400"), 1024);
}

#[test]
fn names() {
    assert!(valid_program_name("web"));
    assert!(valid_program_name("Web_1.2-x"));
    assert!(valid_program_name(&"a".repeat(64)));
    assert!(!valid_program_name(&"a".repeat(65)));
    assert!(!valid_program_name(""));
    assert!(!valid_program_name("a b"));
    assert!(!valid_program_name("a/b"));
    assert!(!valid_program_name("é"));
    assert!(!valid_program_name(".."));
    // A quoted dotted name is one name.
    assert_eq!(one("[program.\"a.b\"]\ncommand = \"x\"\n").name, "a.b");
    let long = "b".repeat(65);
    check(
        &errors(&format!(
            "[program.{long}]\ncommand = \"x\"\n[program.\"\"]\ncommand = \"x\"\n"
        )),
        &[
            ("1:10: program.bbbb", "invalid program name"),
            ("3:10: program.: ", "invalid program name \"\""),
        ],
    );
}

#[test]
fn scale_program_names_a_program() {
    let c = parse("[daemon]\nscale_program = \"web\"\n[program.web]\ncommand = \"x\"\n");
    assert_eq!(c.daemon.scale_program.as_deref(), Some("web"));
    assert_eq!(parse("").daemon.scale_program, None);
    check(
        &errors(
            "[daemon]\nscale_program = \"wbe\"\n[program.web]\ncommand = \"x\"\n[program.db]\ncommand = \"y\"\n",
        ),
        &[(
            "2:17: daemon.scale_program: ",
            "there is no [program.wbe] table (the programs are \"web\", \"db\")",
        )],
    );
    check(
        &errors("[daemon]\nscale_program = \"web\"\n"),
        &[("2:17: daemon.scale_program: ", "(no program is defined)")],
    );
    check(
        &errors("[daemon]\nscale_program = 1\n"),
        &[(
            "2:17: daemon.scale_program: ",
            "expected a string, found integer",
        )],
    );
}

#[test]
fn every_error_with_line_and_column() {
    let text = r#"[program.web]
command = []
instances = 10001
restart = "sometimes"
backoff_initial = "1m"
stop_signal = "TERMINATE"
stop_timout = "5s"
watchdog = "5s"
max_restarts = -1
[program."bad name"]
command = "/bin/sh -c 'unbalanced"
ready = "soon"
start_timeout = "forever"
log_max_bytes = "10 parsecs"
log_keep = 1.5
env = { "A=B" = "x", GOOD = 1 }
limits = { nofile = -1, cores = 0, stack = "big" }
umask = "999"
stdout = ""
directory = ""
[program.c]
command = ["/bin/x", 5]
restart_window = "0s"
backoff_max = "10ms"
clean_env = "yes"
user = ""
log_max_bytes = 0
[program.d]
instances = 0
[daemon]
scale_program = "nope"
"#;
    check(
        &errors(text),
        &[
            ("2:11: program.web.command: ", "must not be empty"),
            (
                "3:13: program.web.instances: ",
                "must be between 0 and 10000",
            ),
            (
                "4:11: program.web.restart: ",
                "\"sometimes\" is not one of \"always\", \"on-failure\", \"never\"",
            ),
            (
                "5:19: program.web.backoff_initial: ",
                "must not be longer than backoff_max (30s)",
            ),
            (
                "6:15: program.web.stop_signal: ",
                "unknown signal \"TERMINATE\"",
            ),
            (
                "7:1: program.web.stop_timout: ",
                "unknown key (did you mean \"stop_timeout\"?)",
            ),
            (
                "8:12: program.web.watchdog: ",
                "requires ready = \"notify\"",
            ),
            (
                "9:16: program.web.max_restarts: ",
                "must be between 0 and 1000000",
            ),
            (
                "10:10: program.bad name: ",
                "invalid program name \"bad name\"",
            ),
            ("11:11: program.bad name.command: ", "unbalanced quote"),
            (
                "12:9: program.bad name.ready: ",
                "\"soon\" is not \"immediate\", \"notify\", \"health\" or a duration",
            ),
            (
                "13:17: program.bad name.start_timeout: ",
                "invalid duration \"forever\"",
            ),
            (
                "14:17: program.bad name.log_max_bytes: ",
                "\"10 parsecs\" is not a size",
            ),
            (
                "15:12: program.bad name.log_keep: ",
                "expected an integer, found float",
            ),
            (
                "16:9: program.bad name.env.A=B: ",
                "not a valid environment variable name",
            ),
            (
                "16:29: program.bad name.env.GOOD: ",
                "expected a string, found integer",
            ),
            (
                "17:21: program.bad name.limits.nofile: ",
                "must not be negative",
            ),
            (
                "17:25: program.bad name.limits.cores: ",
                "unknown key (did you mean \"core\"?)",
            ),
            (
                "17:44: program.bad name.limits.stack: ",
                "\"big\" is not a size",
            ),
            ("18:9: program.bad name.umask: ", "is not an octal mode"),
            (
                "19:10: program.bad name.stdout: ",
                "must be \"log\", \"null\" or a file path",
            ),
            ("20:13: program.bad name.directory: ", "must not be empty"),
            (
                "22:22: program.c.command: ",
                "expected a string, found integer",
            ),
            (
                "23:18: program.c.restart_window: ",
                "must be longer than zero",
            ),
            (
                "24:15: program.c.backoff_max: ",
                "must not be shorter than backoff_initial (100ms)",
            ),
            (
                "25:13: program.c.clean_env: ",
                "expected true or false, found string",
            ),
            ("26:8: program.c.user: ", "must not be empty"),
            (
                "27:17: program.c.log_max_bytes: ",
                "must be at least 1 byte",
            ),
            ("28:10: program.d.command: ", "required"),
            (
                "31:17: daemon.scale_program: ",
                "there is no [program.nope] table",
            ),
        ],
    );
}

#[test]
fn wrong_shapes() {
    check(
        &errors("program = 3\n"),
        &[("1:11: program: ", "expected a table, found integer")],
    );
    check(
        &errors("[program]\na = 1\n"),
        &[("2:5: program.a: ", "expected a table, found integer")],
    );
    check(
        &errors("[[program]]\ncommand = \"x\"\n"),
        &[("1:", "program: expected a table, found array")],
    );
    check(
        &errors("[program.a]\ncommand = 7\n"),
        &[(
            "2:11: program.a.command: ",
            "expected an array of strings or a string, found integer",
        )],
    );
    check(
        &errors("[program.a]\ncommand = [\"\", \"x\"]\n"),
        &[("2:11: program.a.command: ", "must not be an empty string")],
    );
    check(
        &errors("[program.a]\ncommand = \"  \"\n"),
        &[("2:11: program.a.command: ", "must not be empty")],
    );
    check(
        &errors("[program.a]\ncommand = \"x\"\nenv = 1\n"),
        &[("3:7: program.a.env: ", "expected a table, found integer")],
    );
    check(
        &errors("[program.a]\ncommand = \"x\"\nlimits = { nofile = true }\n"),
        &[(
            "3:21: program.a.limits.nofile: ",
            "expected an integer or \"unlimited\", found boolean",
        )],
    );
    check(
        &errors("[program.a]\ncommand = \"x\"\nlimits = { nproc = \"1K\" }\n"),
        &[(
            "3:20: program.a.limits.nproc: ",
            "\"1K\" is not a number or \"unlimited\"",
        )],
    );
    // A wrong `ready` is reported once, not again through `watchdog`.
    check(
        &errors("[program.a]\ncommand = \"x\"\nready = \"later\"\nwatchdog = \"1s\"\n"),
        &[("3:9: program.a.ready: ", "is not \"immediate\"")],
    );
    // So is a wrong backoff.
    check(
        &errors(
            "[program.a]\ncommand = \"x\"\nbackoff_initial = \"soon\"\nbackoff_max = \"1ms\"\n",
        ),
        &[("3:19: program.a.backoff_initial: ", "invalid duration")],
    );
    check(
        &errors("[program.a]\ncommand = \"x\"\nwatchdog = \"1s\"\nready = \"3s\"\n"),
        &[("3:12: program.a.watchdog: ", "requires ready = \"notify\"")],
    );
}

#[test]
fn duplicate_programs_are_a_syntax_error() {
    let errs = errors("[program.a]\ncommand = \"x\"\n[program.a]\ncommand = \"y\"\n");
    // Named, and once: not again for the `command` under the second header.
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("3:10: program.a: duplicate table"),
        "{errs:?}"
    );
}

#[test]
fn output_files_are_paths_and_keywords_are_not_misread() {
    check(
        &errors("[program.a]\ncommand = \"x\"\nstdout = \"nul\"\nstderr = \"a\\u0000b\"\n"),
        &[
            ("3:10: program.a.stdout: ", "(did you mean \"null\"?)"),
            ("4:10: program.a.stderr: ", "must not contain a NUL byte"),
        ],
    );
    check(
        &errors("[program.a]\ncommand = \"x\"\nstdout = \"web.out\"\n"),
        &[(
            "3:10: program.a.stdout: ",
            "write a path such as \"./web.out\"",
        )],
    );
    let c = Config::parse(
        Path::new(FILE),
        "[program.a]\ncommand = \"x\"\nstdout = \"./web.out\"\n",
    )
    .unwrap();
    assert_eq!(
        c.programs[0].stdout,
        OutputSpec::File(Path::new(FILE).parent().unwrap().join("./web.out"))
    );
}

#[test]
fn ready_durations_are_bounded() {
    check(
        &errors("[program.a]\ncommand = \"x\"\nready = \"2years\"\n"),
        &[("3:9: program.a.ready: ", "at most 365 days")],
    );
    check(
        &errors("[program.a]\ncommand = \"x\"\nstop_timeout = 9223372036854775807\n"),
        &[("3:16: program.a.stop_timeout: ", "at most 365 days")],
    );
}

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/warden.toml");
    let c = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<_> = c.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ticker", "notifier"]);
    assert_eq!(c.programs[0].instances, 2);
    assert_eq!(c.programs[1].policy.readiness, Readiness::Notify);
    assert_eq!(c.daemon.scale_program.as_deref(), Some("ticker"));
}

/// `start_timeout` set without `ready = "notify"` would be ignored: an error, like `watchdog`.
/// Two programs writing the same output file: an error at the second.
#[test]
fn start_timeout_needs_notify_and_output_files_are_not_shared() {
    let errs = errors("[program.a]\ncommand = \"x\"\nstart_timeout = \"5s\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("3:17: program.a.start_timeout: requires ready = \"notify\""),
        "{errs:?}"
    );
    let errs = errors(
        "[program.a]\ncommand = \"x\"\nstdout = \"/var/log/x.log\"\nstderr = \"/var/log/x.log\"\n\
         [program.b]\ncommand = \"y\"\nstderr = \"/var/log/x.log\"\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("7:10: program.b.stderr: /var/log/x.log is also program.a's output file"),
        "{errs:?}"
    );
}

// --- [program.NAME.health] -------------------------------------------------------------------

#[test]
fn a_health_table_is_read_with_its_defaults() {
    let p = one(
        "[program.web]\ncommand = \"/bin/web\"\nready = \"health\"\n\
         [program.web.health]\nhttp = \"http://127.0.0.1:8080/healthz\"\n",
    );
    assert_eq!(p.policy.readiness, Readiness::Health);
    let h = p.health.expect("health");
    assert_eq!(
        (h.interval, h.timeout, h.retries, h.start_period),
        (
            Duration::from_secs(10),
            Duration::from_secs(2),
            3,
            Duration::ZERO
        )
    );
    assert_eq!(h.probe.to_string(), "http http://127.0.0.1:8080/healthz");
    let p = one("[program.db]\ncommand = \"/bin/db\"\n\
         health = { exec = \"pg_isready -q\", interval = \"1s\", timeout = \"500ms\", \
         retries = 5, start_period = \"30s\" }\n");
    let h = p.health.expect("health");
    assert_eq!(
        h.probe,
        crate::config::Probe::Exec(argv(&["pg_isready", "-q"]))
    );
    assert_eq!(
        (h.interval, h.timeout, h.retries, h.start_period),
        (
            Duration::from_secs(1),
            Duration::from_millis(500),
            5,
            Duration::from_secs(30)
        )
    );
    // start_timeout bounds the first pass too.
    let p = one(
        "[program.w]\ncommand = \"/bin/w\"\nready = \"health\"\nstart_timeout = \"5s\"\n\
         health.tcp = \"[::1]:5432\"\n",
    );
    assert_eq!(p.policy.start_timeout, Some(Duration::from_secs(5)));
}

#[test]
fn health_mistakes_are_reported_at_their_line_and_column() {
    let errs = errors(
        "[program.a]\ncommand = \"/bin/a\"\nready = \"health\"\n\
         [program.b]\ncommand = \"/bin/b\"\n\
         [program.b.health]\ntcp = \"127.0.0.1:1\"\nhttp = \"http://x/\"\n\
         [program.c]\ncommand = \"/bin/c\"\n\
         [program.c.health]\ninterval = \"0s\"\nhttp = \"https://x/\"\nretries = 0\nintervall = 1\n\
         [program.d]\ncommand = \"/bin/d\"\nhealth = {}\n",
    );
    check(
        &errs,
        &[
            (
                "3:9: program.a.ready: ",
                "needs a health check: add a [program.a.health] table",
            ),
            (
                "8:8: program.b.health.http: ",
                "only one check per program: tcp and http",
            ),
            (
                "12:12: program.c.health.interval: ",
                "must be longer than zero",
            ),
            ("13:8: program.c.health.http: ", "https is not supported"),
            ("14:11: program.c.health.retries: ", "between 1 and 1000"),
            (
                "15:1: program.c.health.intervall: ",
                "unknown key (did you mean \"interval\"?)",
            ),
            ("18:10: program.d.health: ", "needs one check"),
        ],
    );
}
