//! Property tests (proptest, on stable, in the normal suite) for the parsers the fuzz targets
//! attack and for the supervisor's pure state machine:
//!
//! * config: files generated key by key from [`warden::config::KEYS`] with typed values, rendered
//!   to TOML, read back by `Config::parse` into exactly the specs they describe;
//! * control: any request, serialized as the client does, reads back equal; a duplicated key
//!   never does;
//! * pool frames: any sequence of frames, received in any split, decodes to what was encoded;
//!   arbitrary bytes never panic the decoder;
//! * notify: generated datagrams parse to what was put in;
//! * state machine: no sequence of events leaves an instance in an impossible state, backoff
//!   never exceeds its cap, a stopped program is never restarted, a `Tick` before the deadline
//!   changes nothing.
//!
//! Case counts are kept small enough that the whole file runs in a few seconds; raise them for
//! a deeper run with `PROPTEST_CASES=5000 cargo test --test integration properties` (per property).

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunConfig, TestRunner};

/// The case count for a property: `default`, or `$PROPTEST_CASES` when set.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

mod config {
    use super::*;
    use warden::config::{
        Config, DaemonSpec, EnvFile, HealthSpec, HostPort, HttpServer, HttpTarget, KEYS, Listen,
        LogSpec, OutputSpec, Probe, ProgramSpec, Readiness, Restart, SYSLOG_FACILITIES, SocketSpec,
    };

    /// The file the generated text is read as; relative paths resolve against its directory.
    pub const FILE: &str = "/etc/warden/prop.toml";
    const BASE: &str = "/etc/warden";

    /// A typed value for one key.
    #[derive(Debug, Clone)]
    pub enum Val {
        /// A string (written as a TOML string).
        Str(String),
        /// An integer.
        Int(u64),
        /// A boolean.
        Bool(bool),
        /// A duration in milliseconds, and how to write it (0: "Nms", 1: "N.NNNs"-free
        /// humantime such as "1s 250ms", 2: a bare integer of seconds when whole).
        Dur(u64, u8),
        /// A duration where zero and "infinity" mean none.
        OptDur(Option<u64>, u8),
        /// `command` as an array.
        Argv(Vec<String>),
        /// `command` as one string of plain words.
        Words(Vec<String>),
        /// `env`, and whether it is written as a sub-table.
        Env(Vec<(String, String)>, bool),
        /// `limits`: (key, value), and whether written as a sub-table.
        Limits(Vec<(&'static str, Limit)>, bool),
        /// `ready`.
        Ready(Readiness, u8),
        /// A byte size: the number, and the unit shift used to write it (0, 10, 20, 30).
        Size(u64, u8),
        /// `stop_signal`: the name as written and the number it means.
        Signal(&'static str, i32),
        /// `umask` as written, and its value.
        Umask(String, u32),
        /// `stdout`/`stderr` of a program.
        Output(Out),
        /// `after`/`requires` as generated: picks among the programs before this one (so that
        /// the graph has no cycle), resolved by [`file`] into [`Val::Names`].
        Deps(Vec<prop::sample::Index>),
        /// `after`/`requires`: program names.
        Names(Vec<String>),
        /// `health`: its keys, the probe they mean, and whether written as a sub-table.
        Health(Vec<(&'static str, Val)>, Probe, bool),
        /// `sockets` as generated: picks among the file's sockets, resolved by [`file`] into
        /// [`Val::Names`].
        SockPicks(Vec<prop::sample::Index>),
    }

    /// One resource limit.
    #[derive(Debug, Clone)]
    pub enum Limit {
        /// An integer.
        Int(u64),
        /// `"unlimited"` or `"infinity"`.
        Unlimited(bool),
        /// A size string: the number and the unit shift.
        Size(u64, u8),
    }

    /// A program's output.
    #[derive(Debug, Clone)]
    pub enum Out {
        Log,
        Null,
        /// A path relative to the program's own directory: `dir/NAME.out`.
        File(String),
    }

    /// A generated `[socket.NAME]` table: its name, its keys, and what they mean.
    pub type GenSocket = (String, Vec<(&'static str, Val)>, SocketSpec);

    /// One generated file.
    #[derive(Debug, Clone)]
    pub struct File {
        pub daemon: Option<Vec<(&'static str, Val)>>,
        pub programs: Vec<(String, Vec<(&'static str, Val)>)>,
        /// `[socket.NAME]` tables: the name, its keys, and what they mean.
        pub sockets: Vec<GenSocket>,
    }

    fn text() -> impl Strategy<Value = String> {
        // Any printable or control character but NUL, including quotes, backslashes, non-ASCII.
        proptest::collection::vec(
            prop_oneof![
                4 => proptest::char::range('a', 'z'),
                1 => proptest::char::range('\u{1}', '\u{7f}'),
                1 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
            ],
            1..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn path() -> impl Strategy<Value = String> {
        ("(/|\\./)?[a-zé _-]{1,8}(/[a-z0-9.]{1,8}){0,2}").prop_filter("not only dots", |p| {
            !p.split('/').any(|s| s == "." || s == "..") || p.starts_with("./")
        })
    }

    fn millis(max: u64) -> impl Strategy<Value = u64> {
        prop_oneof![0..=2_000u64, 0..=max]
    }

    fn dur(min: u64, max: u64) -> BoxedStrategy<Val> {
        (millis(max).prop_map(move |m| m.clamp(min, max)), 0u8..3)
            .prop_map(|(m, style)| Val::Dur(m, style))
            .boxed()
    }

    fn size() -> impl Strategy<Value = (u64, u8)> {
        (
            0u64..5000,
            prop_oneof![Just(0u8), Just(10), Just(20), Just(30)],
        )
    }

    /// A value for `key` of table `table` (as named in [`KEYS`]). Panics for a key it does not
    /// know: a key added to the reader's table must get a generator here.
    fn value(table: &str, key: &'static str) -> BoxedStrategy<Val> {
        const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
        match (table, key) {
            ("daemon", "pidfile" | "directory" | "stdout" | "stderr" | "control_socket") => {
                path().prop_map(Val::Str).boxed()
            }
            ("daemon" | "program.NAME", "umask") => (
                prop_oneof![0u32..=0o777, Just(0), Just(0o777)],
                any::<bool>(),
            )
                .prop_map(|(m, long)| {
                    let s = if long {
                        format!("{m:04o}")
                    } else {
                        format!("{m:03o}")
                    };
                    Val::Umask(s, m)
                })
                .boxed(),
            ("daemon", "user" | "group" | "control_group" | "syslog_ident")
            | ("program.NAME", "user" | "group") => text().prop_map(Val::Str).boxed(),
            ("daemon", "log") => prop_oneof![
                Just(Val::Str("stderr".into())),
                Just(Val::Str("syslog".into())),
                path().prop_map(|p| Val::Str(if p.contains('/') { p } else { format!("./{p}") })),
            ]
            .boxed(),
            ("daemon", "log_level") => {
                proptest::sample::select(vec!["off", "error", "warn", "info", "debug", "trace"])
                    .prop_map(|s| Val::Str(s.into()))
                    .boxed()
            }
            ("daemon", "log_format") => proptest::sample::select(vec!["text", "json"])
                .prop_map(|s| Val::Str(s.into()))
                .boxed(),
            ("daemon", "syslog_facility") => proptest::sample::select(SYSLOG_FACILITIES.to_vec())
                .prop_map(|s| Val::Str(s.into()))
                .boxed(),
            ("daemon", "ready_timeout") => dur(1, YEAR_MS),
            ("daemon", "shutdown_timeout") => dur(0, YEAR_MS),
            ("daemon", "exit_on_fatal") => any::<bool>().prop_map(Val::Bool).boxed(),
            ("daemon", "pid_namespace") => any::<bool>().prop_map(Val::Bool).boxed(),
            // Chosen among the generated programs once they exist (see `file`).
            ("daemon", "scale_program") => Just(Val::Str(String::new())).boxed(),
            ("daemon", "metrics") => prop_oneof![
                (1u16..=65535).prop_map(|p| Val::Str(format!("127.0.0.1:{p}"))),
                (1u16..=65535).prop_map(|p| Val::Str(format!("[::1]:{p}"))),
                "[a-z]{1,8}".prop_map(|n| Val::Str(format!("/run/{n}.sock"))),
            ]
            .boxed(),
            ("program.NAME", "command") => prop_oneof![
                (
                    "[a-z/][a-z0-9/._-]{0,10}",
                    proptest::collection::vec(text(), 0..4)
                )
                    .prop_map(|(first, rest)| {
                        let mut argv = vec![first];
                        argv.extend(rest);
                        Val::Argv(argv)
                    }),
                proptest::collection::vec("[a-zA-Z0-9/._=-]{1,8}", 1..5).prop_map(Val::Words),
            ]
            .boxed(),
            ("program.NAME", "instances") => (0u64..=10_000).prop_map(Val::Int).boxed(),
            ("program.NAME", "max_restarts") => (0u64..=1_000_000).prop_map(Val::Int).boxed(),
            ("program.NAME", "log_keep") => (0u64..=1_000).prop_map(Val::Int).boxed(),
            ("program.NAME", "directory") => path().prop_map(Val::Str).boxed(),
            ("program.NAME", "env") => (
                proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,8}", text(), 0..5),
                any::<bool>(),
            )
                .prop_flat_map(|(m, sub)| {
                    let pairs: Vec<(String, String)> = m.into_iter().collect();
                    Just(pairs)
                        .prop_shuffle()
                        .prop_map(move |p| Val::Env(p, sub))
                })
                .boxed(),
            ("program.NAME", "env_file") => proptest::collection::vec(
                (
                    any::<bool>(),
                    path().prop_filter("no dash", |p| !p.starts_with('-')),
                ),
                0..4,
            )
            .prop_map(|v| {
                let entries = v
                    .into_iter()
                    .map(|(optional, p)| if optional { format!("-{p}") } else { p });
                Val::Argv(entries.collect())
            })
            .boxed(),
            ("program.NAME", "clean_env") => any::<bool>().prop_map(Val::Bool).boxed(),
            ("program.NAME", "after" | "requires") => {
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3)
                    .prop_map(Val::Deps)
                    .boxed()
            }
            ("program.NAME", "limits") => {
                let limit_keys = KEYS
                    .iter()
                    .find(|t| t.table == "program.NAME.limits")
                    .expect("a limits table in KEYS")
                    .keys;
                let each: Vec<BoxedStrategy<Option<(&'static str, Limit)>>> = limit_keys
                    .iter()
                    .map(|&k| proptest::option::of(limit(k).prop_map(move |l| (k, l))).boxed())
                    .collect();
                (each, any::<bool>())
                    .prop_map(|(v, sub)| Val::Limits(v.into_iter().flatten().collect(), sub))
                    .boxed()
            }
            ("program.NAME", "health") => health(),
            ("program.NAME", "sockets") => {
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3)
                    .prop_map(Val::SockPicks)
                    .boxed()
            }
            // memory_high is drawn below every memory_max (a higher one is an error).
            ("program.NAME", "memory_max") => (1u64..5000, prop_oneof![Just(30u8)])
                .prop_map(|(n, shift)| Val::Size(n, shift))
                .boxed(),
            ("program.NAME", "memory_high") => {
                (1u64..1024, prop_oneof![Just(0u8), Just(10), Just(20)])
                    .prop_map(|(n, shift)| Val::Size(n, shift))
                    .boxed()
            }
            ("program.NAME", "pids_max") => (1u64..=4_194_304).prop_map(Val::Int).boxed(),
            ("program.NAME", "cpu_max") => prop_oneof![
                (1u64..=6400).prop_map(|p| Val::Str(format!("{p}%"))),
                (1000u64..=2_000_000, 1000u64..=1_000_000)
                    .prop_map(|(q, p)| Val::Str(format!("{q} {p}"))),
            ]
            .boxed(),
            ("daemon", "cgroups") => proptest::sample::select(vec!["auto", "off"])
                .prop_map(|s| Val::Str(s.into()))
                .boxed(),
            ("program.NAME", "update") => proptest::sample::select(vec!["replace", "surge"])
                .prop_map(|s| Val::Str(s.into()))
                .boxed(),
            ("program.NAME", "probation") => dur(0, YEAR_MS),
            ("program.NAME", "restart") => {
                proptest::sample::select(vec!["always", "on-failure", "never"])
                    .prop_map(|s| Val::Str(s.into()))
                    .boxed()
            }
            ("program.NAME", "backoff_initial" | "backoff_max") => dur(0, 3_600_000),
            ("program.NAME", "backoff_reset" | "stop_timeout") => dur(0, YEAR_MS),
            ("program.NAME", "restart_window") => dur(1, YEAR_MS),
            ("program.NAME", "stop_signal") => proptest::sample::select(vec![
                ("TERM", 15),
                ("SIGINT", 2),
                ("quit", 3),
                ("HUP", 1),
                ("sigusr1", 10),
                ("KILL", 9),
            ])
            .prop_map(|(n, s)| Val::Signal(n, s))
            .boxed(),
            ("program.NAME", "ready") => prop_oneof![
                Just(Readiness::Immediate),
                Just(Readiness::Notify),
                (1u64..=600_000).prop_map(|m| Readiness::After(Duration::from_millis(m))),
            ]
            .prop_flat_map(|r| (Just(r), 0u8..2))
            .prop_map(|(r, s)| Val::Ready(r, s))
            .boxed(),
            ("program.NAME", "start_timeout" | "watchdog") => {
                (proptest::option::of(1u64..=YEAR_MS), 0u8..3)
                    .prop_map(|(d, s)| Val::OptDur(d, s))
                    .boxed()
            }
            ("program.NAME", "stdout" | "stderr") => prop_oneof![
                Just(Out::Log),
                Just(Out::Null),
                "[a-z]{1,6}".prop_map(Out::File),
            ]
            .prop_map(Val::Output)
            .boxed(),
            ("program.NAME", "log_max_bytes") => size()
                .prop_map(|(n, shift)| Val::Size(n.max(1), shift))
                .boxed(),
            _ => panic!(
                "no generator for key {key:?} of table {table:?}: KEYS gained a key; teach \
                 tests/it/properties.rs its values"
            ),
        }
    }

    /// The `[socket.NAME]` table number `i`: a Unix socket (with its optional file keys) or a
    /// TCP one, at an address no other table of the file uses.
    fn socket(i: usize) -> BoxedStrategy<GenSocket> {
        let name = format!("s{i}");
        let unix = (
            proptest::option::of(1u64..=65_535),
            proptest::option::of(0u32..=0o777),
            proptest::option::of("[a-z]{1,8}"),
            proptest::option::of("[a-z]{1,8}"),
        )
            .prop_map(move |(backlog, mode, user, group)| {
                let path = format!("/run/w/s{i}.sock");
                let mut spec = SocketSpec::new(format!("s{i}"), Listen::Unix(path.clone().into()));
                let mut keys = vec![("listen", Val::Str(path))];
                if let Some(b) = backlog {
                    spec.backlog = b as u32;
                    keys.push(("backlog", Val::Int(b)));
                }
                if let Some(m) = mode {
                    spec.mode = m;
                    keys.push(("mode", Val::Umask(format!("{m:04o}"), m)));
                }
                if let Some(u) = user {
                    spec.user = Some(u.clone());
                    keys.push(("user", Val::Str(u)));
                }
                if let Some(g) = group {
                    spec.group = Some(g.clone());
                    keys.push(("group", Val::Str(g)));
                }
                (keys, spec)
            });
        let tcp = (1u16..=65_535, proptest::option::of(1u64..=65_535)).prop_map(
            move |(port, backlog)| {
                let addr = format!("127.0.0.{}:{port}", i + 1);
                let listen = Listen::Tcp(addr.parse().expect("an address"));
                let mut spec = SocketSpec::new(format!("s{i}"), listen);
                let mut keys = vec![("listen", Val::Str(addr))];
                if let Some(b) = backlog {
                    spec.backlog = b as u32;
                    keys.push(("backlog", Val::Int(b)));
                }
                (keys, spec)
            },
        );
        prop_oneof![unix, tcp]
            .prop_flat_map(|(keys, spec)| (Just(keys).prop_shuffle(), Just(spec)))
            .prop_map(move |(keys, spec)| (name.clone(), keys, spec))
            .boxed()
    }

    /// A `health` table: one probe, each other key present or not, in a shuffled order.
    fn health() -> BoxedStrategy<Val> {
        const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
        let word = "[a-z][a-z0-9_-]{0,7}";
        let host = prop_oneof![
            Just("127.0.0.1".to_string()),
            Just("::1".to_string()),
            Just("localhost".to_string()),
        ];
        let hp = (host, 1u16..=65535).prop_map(|(host, port)| HostPort { host, port });
        let url_text = |hp: &HostPort| hp.to_string();
        let probe = prop_oneof![
            proptest::collection::vec(word, 1..4)
                .prop_map(|a| (("exec", Val::Argv(a.clone())), Probe::Exec(a))),
            hp.clone()
                .prop_map(move |hp| (("tcp", Val::Str(url_text(&hp))), Probe::Tcp(hp))),
            (hp, "[a-z0-9/]{0,8}").prop_map(move |(hp, path)| {
                let text = format!("http://{}/{path}", url_text(&hp));
                let target = HttpTarget {
                    server: HttpServer::Tcp(hp),
                    path: format!("/{path}"),
                };
                (("http", Val::Str(text)), Probe::Http(target))
            }),
            (word, "[a-z0-9/]{0,8}").prop_map(|(sock, path)| {
                let text = format!("http+unix:///run/{sock}.sock:/{path}");
                let target = HttpTarget {
                    server: HttpServer::Unix(PathBuf::from(format!("/run/{sock}.sock"))),
                    path: format!("/{path}"),
                };
                (("http", Val::Str(text)), Probe::Http(target))
            }),
        ];
        let opt = |k: &'static str, v: BoxedStrategy<Val>| {
            proptest::option::of(v.prop_map(move |v| (k, v))).boxed()
        };
        let others = vec![
            opt("interval", dur(1, YEAR_MS)),
            opt("timeout", dur(1, YEAR_MS)),
            opt("retries", (1u64..=1000).prop_map(Val::Int).boxed()),
            opt("start_period", dur(0, YEAR_MS)),
        ];
        (probe, others, any::<bool>())
            .prop_flat_map(|((first, probe), others, sub)| {
                let mut keys: Vec<(&'static str, Val)> = others.into_iter().flatten().collect();
                keys.push(first);
                (Just(keys).prop_shuffle(), Just(probe), Just(sub))
            })
            .prop_map(|(keys, probe, sub)| Val::Health(keys, probe, sub))
            .boxed()
    }

    /// An `env_file` entry as the reader takes it: `-PATH` is optional, relative to `base`.
    fn env_file(base: &Path, entry: &str) -> EnvFile {
        let (optional, path) = match entry.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let mut f = EnvFile::new(base.join(path));
        f.optional = optional;
        f
    }

    fn limit(key: &'static str) -> BoxedStrategy<Limit> {
        let bytes = matches!(key, "core" | "memlock" | "as" | "fsize" | "stack");
        let plain = prop_oneof![
            any::<u64>().prop_map(Limit::Int),
            (0u64..100_000).prop_map(Limit::Int),
            any::<bool>().prop_map(Limit::Unlimited),
        ];
        if bytes {
            prop_oneof![plain, size().prop_map(|(n, s)| Limit::Size(n, s))].boxed()
        } else {
            plain.boxed()
        }
    }

    /// Every key of `table` from [`KEYS`], each present or not, in a shuffled order.
    fn table(table: &'static str) -> BoxedStrategy<Vec<(&'static str, Val)>> {
        let keys = KEYS
            .iter()
            .find(|t| t.table == table)
            .unwrap_or_else(|| panic!("no table {table:?} in KEYS"))
            .keys;
        let each: Vec<BoxedStrategy<Option<(&'static str, Val)>>> = keys
            .iter()
            .map(|&k| proptest::option::of(value(table, k).prop_map(move |v| (k, v))).boxed())
            .collect();
        each.prop_map(|v| v.into_iter().flatten().collect::<Vec<_>>())
            .prop_shuffle()
            .boxed()
    }

    fn program_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,11}"
    }

    /// A whole valid file: the keys of every table in [`KEYS`] with values consistent across
    /// keys (backoff_initial ≤ backoff_max, timeouts only with ready = "notify", a
    /// scale_program that exists).
    pub fn file() -> impl Strategy<Value = File> {
        let top = KEYS.iter().find(|t| t.table.is_empty()).expect("top level");
        // `include` is left out: drop-ins are files on disk, which `Config::parse` of a text
        // does not read (src/config/include_tests.rs covers them).
        assert_eq!(
            top.keys,
            ["include", "daemon", "program", "socket"],
            "new top-level keys: teach tests/it/properties.rs about them"
        );
        let sockets = (0usize..3).prop_flat_map(|n| (0..n).map(socket).collect::<Vec<_>>());
        (
            proptest::option::of(table("daemon")),
            proptest::collection::btree_set(program_name(), 0..4),
            proptest::collection::vec(table("program.NAME"), 4),
            any::<prop::sample::Index>(),
            sockets,
        )
            .prop_map(|(daemon, names, tables, pick, sockets)| {
                let names: Vec<String> = names.into_iter().collect();
                let socket_names: Vec<String> = sockets.iter().map(|s| s.0.clone()).collect();
                let programs: Vec<(String, Vec<(&'static str, Val)>)> = names
                    .iter()
                    .zip(tables)
                    .enumerate()
                    .map(|(i, (name, t))| {
                        let t = resolve_deps(consistent(t), &names[..i], &socket_names);
                        (name.clone(), t)
                    })
                    .collect();
                let daemon = daemon.map(|mut d| {
                    d.retain(|(k, _)| *k != "scale_program" || !programs.is_empty());
                    for (k, v) in &mut d {
                        if *k == "scale_program" {
                            *v = Val::Str(programs[pick.index(programs.len())].0.clone());
                        }
                    }
                    d
                });
                File {
                    daemon,
                    programs,
                    sockets,
                }
            })
    }

    /// `after`/`requires` name programs among `before` (those earlier in the file: no cycle),
    /// and `sockets` sockets among `sockets`: each once, in the order picked.
    fn resolve_deps(
        t: Vec<(&'static str, Val)>,
        before: &[String],
        sockets: &[String],
    ) -> Vec<(&'static str, Val)> {
        let pick = |picks: Vec<prop::sample::Index>, among: &[String]| {
            let mut names: Vec<String> = Vec::new();
            for i in picks.iter().filter(|_| !among.is_empty()) {
                let n = &among[i.index(among.len())];
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
            Val::Names(names)
        };
        t.into_iter()
            .map(|(k, v)| match v {
                Val::Deps(picks) => (k, pick(picks, before)),
                Val::SockPicks(picks) => (k, pick(picks, sockets)),
                other => (k, other),
            })
            .collect()
    }

    /// Makes one program's keys agree with each other.
    fn consistent(mut t: Vec<(&'static str, Val)>) -> Vec<(&'static str, Val)> {
        let get = |t: &[(&str, Val)], key: &str| {
            t.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
        };
        if let (Some(Val::Dur(a, sa)), Some(Val::Dur(b, sb))) =
            (get(&t, "backoff_initial"), get(&t, "backoff_max"))
            && a > b
        {
            for (k, v) in &mut t {
                match *k {
                    "backoff_initial" => *v = Val::Dur(b, sb),
                    "backoff_max" => *v = Val::Dur(a, sa),
                    _ => {}
                }
            }
        }
        let initial = match get(&t, "backoff_initial") {
            Some(Val::Dur(m, _)) => m,
            _ => 100,
        };
        let max = match get(&t, "backoff_max") {
            Some(Val::Dur(m, _)) => m,
            _ => 30_000,
        };
        if initial > max {
            // One side is the default: move the written one inside it.
            for (k, v) in &mut t {
                match *k {
                    "backoff_initial" => *v = Val::Dur(max, 0),
                    "backoff_max" => *v = Val::Dur(initial, 0),
                    _ => {}
                }
            }
        }
        let timed = ["start_timeout", "watchdog"]
            .iter()
            .any(|k| matches!(get(&t, k), Some(Val::OptDur(Some(_), _))));
        let notify = matches!(get(&t, "ready"), Some(Val::Ready(Readiness::Notify, _)));
        if timed && !notify {
            t.retain(|(k, _)| *k != "ready");
            t.push(("ready", Val::Ready(Readiness::Notify, 0)));
        }
        if get(&t, "command").is_none() {
            t.push(("command", Val::Argv(vec!["/bin/true".into()])));
        }
        t
    }

    /// A TOML string literal for `s`: a basic string with escapes, or a literal string when
    /// `s` allows one (the reader must take both).
    fn quote(s: &str) -> String {
        let literal_ok = !s.contains('\'') && !s.chars().any(|c| c.is_control());
        if literal_ok && s.len() % 2 == 1 {
            return format!("'{s}'");
        }
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn fmt_dur(ms: u64, style: u8) -> String {
        match style {
            2 if ms.is_multiple_of(1000) => format!("{}", ms / 1000),
            1 if ms >= 1000 && !ms.is_multiple_of(1000) => {
                format!("\"{}s {}ms\"", ms / 1000, ms % 1000)
            }
            1 if ms.is_multiple_of(60_000) && ms > 0 => format!("\"{}m\"", ms / 60_000),
            _ => format!("\"{ms}ms\""),
        }
    }

    fn fmt_size(n: u64, shift: u8) -> String {
        match shift {
            0 => format!("{n}"),
            10 => format!("\"{n}K\""),
            20 => format!("\"{n}MiB\""),
            _ => format!("\"{n}g\""),
        }
    }

    /// The program's output file for `stem`, distinct across programs (one writer per file).
    fn out_file(program: &str, stem: &str) -> String {
        format!("logs/{program}/{stem}.out")
    }

    fn render_val(program: &str, v: &Val) -> String {
        match v {
            Val::Str(s) => quote(s),
            Val::Int(n) => n.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Dur(ms, style) => fmt_dur(*ms, *style),
            Val::OptDur(None, style) => {
                if style % 2 == 0 {
                    "\"infinity\"".into()
                } else {
                    "0".into()
                }
            }
            Val::OptDur(Some(ms), style) => fmt_dur(*ms, *style),
            Val::Argv(a) => format!(
                "[{}]",
                a.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            ),
            Val::Words(w) => quote(&w.join(" ")),
            Val::Env(pairs, _) => format!(
                "{{ {} }}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", quote(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Val::Limits(l, _) => format!(
                "{{ {} }}",
                l.iter()
                    .map(|(k, v)| format!("{k} = {}", render_limit(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Val::Health(keys, _, _) => format!(
                "{{ {} }}",
                keys.iter()
                    .map(|(k, v)| format!("{k} = {}", render_val(program, v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Val::Ready(Readiness::Immediate, _) => "\"immediate\"".into(),
            Val::Ready(Readiness::Notify, _) => "\"notify\"".into(),
            Val::Ready(Readiness::Health, _) => "\"health\"".into(),
            Val::Ready(Readiness::After(d), style) => fmt_dur(d.as_millis() as u64, *style),
            Val::Size(n, shift) => fmt_size(*n, *shift),
            Val::Signal(name, _) => quote(name),
            Val::Umask(s, _) => quote(s),
            Val::Output(Out::Log) => "\"log\"".into(),
            Val::Output(Out::Null) => "\"null\"".into(),
            Val::Output(Out::File(stem)) => quote(&out_file(program, stem)),
            Val::Names(names) => format!(
                "[{}]",
                names
                    .iter()
                    .map(|n| quote(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Val::Deps(_) | Val::SockPicks(_) => unreachable!("resolved by file()"),
        }
    }

    fn render_limit(l: &Limit) -> String {
        match l {
            Limit::Int(n) => n.to_string(),
            Limit::Unlimited(true) => "\"unlimited\"".into(),
            Limit::Unlimited(false) => "\"infinity\"".into(),
            Limit::Size(n, shift) => fmt_size(*n, *shift),
        }
    }

    fn header_name(name: &str) -> String {
        if name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            name.to_string()
        } else {
            format!("\"{name}\"")
        }
    }

    /// The file as TOML text.
    pub fn render(f: &File) -> String {
        let mut out = String::from("# generated by tests/it/properties.rs\n");
        for (name, keys, _) in &f.sockets {
            out.push_str(&format!("[socket.{name}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {}\n", render_val("", v)));
            }
        }
        if let Some(d) = &f.daemon {
            out.push_str("[daemon]\n");
            for (k, v) in d {
                out.push_str(&format!("{k} = {}\n", render_val("", v)));
            }
        }
        for (name, keys) in &f.programs {
            let h = header_name(name);
            out.push_str(&format!("\n[program.{h}]\n"));
            let mut subtables = Vec::new();
            for (k, v) in keys {
                match v {
                    Val::Env(pairs, true) => subtables.push(format!(
                        "[program.{h}.env]\n{}",
                        pairs
                            .iter()
                            .map(|(k, v)| format!("{k} = {}\n", quote(v)))
                            .collect::<String>()
                    )),
                    Val::Limits(l, true) => subtables.push(format!(
                        "[program.{h}.limits]\n{}",
                        l.iter()
                            .map(|(k, v)| format!("{k} = {}\n", render_limit(v)))
                            .collect::<String>()
                    )),
                    Val::Health(keys, _, true) => subtables.push(format!(
                        "[program.{h}.health]\n{}",
                        keys.iter()
                            .map(|(k, v)| format!("{k} = {}\n", render_val(name, v)))
                            .collect::<String>()
                    )),
                    v => out.push_str(&format!("{k} = {}\n", render_val(name, v))),
                }
            }
            for s in subtables {
                out.push_str(&s);
            }
        }
        out
    }

    fn dur_of(v: &Val) -> Duration {
        match v {
            Val::Dur(ms, _) => Duration::from_millis(*ms),
            other => panic!("not a duration: {other:?}"),
        }
    }

    fn limit_value(l: &Limit) -> u64 {
        match l {
            Limit::Int(n) => *n,
            Limit::Unlimited(_) => u64::MAX,
            Limit::Size(n, shift) => n << shift,
        }
    }

    /// What the reader must make of the file, computed from the model alone.
    pub fn expected(f: &File) -> (DaemonSpec, Vec<ProgramSpec>) {
        let base = Path::new(BASE);
        let mut d = DaemonSpec::default();
        let mut socket = None;
        for (k, v) in f.daemon.iter().flatten() {
            let s = || match v {
                Val::Str(s) => s.clone(),
                other => panic!("{k}: {other:?}"),
            };
            match *k {
                "pidfile" => d.pidfile = base.join(s()),
                "directory" => d.directory = base.join(s()),
                "umask" => {
                    let Val::Umask(_, m) = v else { panic!() };
                    d.umask = *m;
                }
                "user" => d.user = Some(s()),
                "group" => d.group = Some(s()),
                "stdout" => d.stdout = base.join(s()),
                "stderr" => d.stderr = base.join(s()),
                "log" => {
                    d.log = match s().as_str() {
                        "stderr" => LogSpec::Stderr,
                        "syslog" => LogSpec::Syslog,
                        p => LogSpec::File(base.join(p)),
                    }
                }
                "log_level" => d.log_level = s().parse().expect("a level"),
                "log_format" => {
                    d.log_format = match s().as_str() {
                        "json" => warden::log::LogFormat::Json,
                        _ => warden::log::LogFormat::Text,
                    }
                }
                "syslog_facility" => d.syslog_facility = s(),
                "syslog_ident" => d.syslog_ident = s(),
                "ready_timeout" => d.ready_timeout = dur_of(v),
                "shutdown_timeout" => d.shutdown_timeout = dur_of(v),
                "exit_on_fatal" => d.exit_on_fatal = matches!(v, Val::Bool(true)),
                "pid_namespace" => d.pid_namespace = matches!(v, Val::Bool(true)),
                "scale_program" => d.scale_program = Some(s()),
                "control_socket" => socket = Some(base.join(s())),
                "control_group" => d.control_group = Some(s()),
                "metrics" => {
                    d.metrics = Some(match s() {
                        p if p.starts_with('/') => Listen::Unix(PathBuf::from(p)),
                        a => Listen::Tcp(a.parse().expect("an address")),
                    })
                }
                "cgroups" => {
                    d.cgroups = match s().as_str() {
                        "off" => warden::config::CgroupMode::Off,
                        _ => warden::config::CgroupMode::Auto,
                    }
                }
                other => panic!("daemon.{other} has no expectation"),
            }
        }
        d.control_socket = socket.unwrap_or_else(|| {
            d.pidfile
                .parent()
                .map_or_else(|| PathBuf::from("warden.sock"), |p| p.join("warden.sock"))
        });
        let programs = f
            .programs
            .iter()
            .map(|(name, keys)| {
                let mut p = ProgramSpec::new(name.clone(), Vec::new());
                p.source = Some(PathBuf::from(FILE));
                for (k, v) in keys {
                    match (*k, v) {
                        ("command", Val::Argv(a)) => p.exec.command = a.clone(),
                        ("command", Val::Words(w)) => p.exec.command = w.clone(),
                        ("instances", Val::Int(n)) => p.instances = *n as u32,
                        ("directory", Val::Str(s)) => p.exec.directory = Some(base.join(s)),
                        ("user", Val::Str(s)) => p.exec.user = Some(s.clone()),
                        ("group", Val::Str(s)) => p.exec.group = Some(s.clone()),
                        ("umask", Val::Umask(_, m)) => p.exec.umask = Some(*m),
                        ("env", Val::Env(pairs, _)) => p.exec.env = pairs.clone(),
                        ("env_file", Val::Argv(a)) => {
                            p.exec.env_files = a.iter().map(|e| env_file(base, e)).collect()
                        }
                        ("clean_env", Val::Bool(b)) => p.exec.clean_env = *b,
                        ("after", Val::Names(n)) => p.after = n.clone(),
                        ("requires", Val::Names(n)) => p.requires = n.clone(),
                        ("sockets", Val::Names(n)) => p.sockets = n.clone(),
                        ("limits", Val::Limits(l, _)) => {
                            for (lk, lv) in l {
                                let n = Some(limit_value(lv));
                                match *lk {
                                    "nofile" => p.exec.limits.nofile = n,
                                    "core" => p.exec.limits.core = n,
                                    "nproc" => p.exec.limits.nproc = n,
                                    "memlock" => p.exec.limits.memlock = n,
                                    "as" => p.exec.limits.address_space = n,
                                    "fsize" => p.exec.limits.fsize = n,
                                    "stack" => p.exec.limits.stack = n,
                                    "cpu" => p.exec.limits.cpu = n,
                                    other => panic!("limits.{other} has no expectation"),
                                }
                            }
                        }
                        ("health", Val::Health(keys, probe, _)) => {
                            let mut h = HealthSpec::new(probe.clone());
                            for (hk, hv) in keys {
                                match (*hk, hv) {
                                    ("interval", v) => h.interval = dur_of(v),
                                    ("timeout", v) => h.timeout = dur_of(v),
                                    ("start_period", v) => h.start_period = dur_of(v),
                                    ("retries", Val::Int(n)) => h.retries = *n as u32,
                                    ("exec" | "tcp" | "http", _) => {}
                                    other => panic!("health.{other:?} has no expectation"),
                                }
                            }
                            p.health = Some(h);
                        }
                        ("restart", Val::Str(s)) => {
                            p.policy.restart = match s.as_str() {
                                "always" => Restart::Always,
                                "on-failure" => Restart::OnFailure,
                                _ => Restart::Never,
                            }
                        }
                        ("backoff_initial", v) => p.policy.backoff_initial = dur_of(v),
                        ("backoff_max", v) => p.policy.backoff_max = dur_of(v),
                        ("backoff_reset", v) => p.policy.backoff_reset = dur_of(v),
                        ("max_restarts", Val::Int(n)) => p.policy.max_restarts = *n as u32,
                        ("restart_window", v) => p.policy.restart_window = dur_of(v),
                        ("stop_signal", Val::Signal(_, n)) => {
                            p.policy.stop = warden::policy::StopWith::Signal(
                                nix::sys::signal::Signal::try_from(*n).unwrap(),
                            )
                        }
                        ("stop_timeout", v) => p.policy.stop_timeout = dur_of(v),
                        ("update", Val::Str(s)) => {
                            p.rollout.update = if s == "surge" {
                                warden::policy::Update::Surge
                            } else {
                                warden::policy::Update::Replace
                            }
                        }
                        ("probation", v) => p.rollout.probation = Some(dur_of(v)),
                        ("memory_max", Val::Size(n, shift)) => {
                            p.cgroup.memory_max = Some(n << shift)
                        }
                        ("memory_high", Val::Size(n, shift)) => {
                            p.cgroup.memory_high = Some(n << shift)
                        }
                        ("pids_max", Val::Int(n)) => p.cgroup.pids_max = Some(*n),
                        ("cpu_max", Val::Str(s)) => {
                            p.cgroup.cpu_max = Some(warden::config::parse_cpu_max(s).unwrap())
                        }
                        ("ready", Val::Ready(r, _)) => p.policy.readiness = *r,
                        ("start_timeout", Val::OptDur(d, _)) => {
                            p.policy.start_timeout = d.map(Duration::from_millis)
                        }
                        ("watchdog", Val::OptDur(d, _)) => {
                            p.policy.watchdog = d.map(Duration::from_millis)
                        }
                        ("stdout" | "stderr", Val::Output(o)) => {
                            let o = match o {
                                Out::Log => OutputSpec::Log,
                                Out::Null => OutputSpec::Null,
                                Out::File(stem) => {
                                    OutputSpec::File(base.join(out_file(name, stem)))
                                }
                            };
                            if *k == "stdout" {
                                p.stdout = o;
                            } else {
                                p.stderr = o;
                            }
                        }
                        ("log_max_bytes", Val::Size(n, shift)) => p.log_max_bytes = n << shift,
                        ("log_keep", Val::Int(n)) => p.log_keep = *n as u32,
                        (k, v) => panic!("program.{k} = {v:?} has no expectation"),
                    }
                }
                p
            })
            .collect();
        (d, programs)
    }

    /// Parses `text` as [`FILE`].
    pub fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new(FILE), text).map_err(|e| e.to_string())
    }
}

proptest! {
    #![proptest_config(RunConfig { cases: cases(200), failure_persistence: None, ..RunConfig::default() })]

    /// A file generated from the key table reads back as exactly the specs it describes; and
    /// `locate` (what `stop` and `status` use on a broken file) finds the same pidfile and
    /// control socket.
    #[test]
    fn generated_configs_read_back_as_generated(f in config::file()) {
        let text = config::render(&f);
        let c = config::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n--- file:\n{text}")))?;
        let (daemon, programs) = config::expected(&f);
        prop_assert_eq!(&c.daemon, &daemon, "file:\n{}", text);
        prop_assert_eq!(&c.programs, &programs, "file:\n{}", text);
        let sockets: Vec<_> = f.sockets.iter().map(|s| s.2.clone()).collect();
        prop_assert_eq!(&c.sockets, &sockets, "file:\n{}", text);
        let located = warden::config::locate(Path::new(config::FILE), &text);
        prop_assert_eq!(located.pidfile, daemon.pidfile);
        prop_assert_eq!(located.control_socket, daemon.control_socket);
    }

    /// Arbitrary text never panics the reader, and every diagnostic has a place or says why
    /// not (the fuzz target's check, on proptest's inputs).
    #[test]
    fn arbitrary_text_never_panics_the_config_reader(s in "(\\[|\\]|[a-z_.]{1,8}|=|\"|'|\\{|\\}|,| |\n|[0-9]{1,3}|\\\\|é)*") {
        warden::fuzzing::config(s.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Control requests
// ---------------------------------------------------------------------------------------------

mod control {
    use super::*;
    use warden::control::{Command, Request, VERSION};

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z][a-z0-9_.-]{0,10}",
            1 => any::<String>(),
        ]
    }

    fn names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(name(), 0..5)
    }

    pub fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            names().prop_map(|programs| Command::Status { programs }),
            names().prop_map(|programs| Command::Start { programs }),
            names().prop_map(|programs| Command::Stop { programs }),
            names().prop_map(|programs| Command::Restart { programs }),
            (name(), any::<u32>())
                .prop_map(|(program, instances)| Command::Scale { program, instances }),
            any::<bool>().prop_map(|dry_run| Command::Reload { dry_run }),
            Just(Command::ReopenLogs),
        ]
    }

    pub fn request() -> impl Strategy<Value = Request> {
        command().prop_map(|command| Request {
            v: VERSION,
            command,
        })
    }
}

proptest! {
    #![proptest_config(RunConfig { cases: cases(500), failure_persistence: None, ..RunConfig::default() })]

    /// A request serialized as the client writes it is one line, and the server's parser reads
    /// it back as the same request.
    #[test]
    fn requests_read_back_as_sent(r in control::request()) {
        let line = serde_json::to_string(&r).unwrap();
        prop_assert!(!line.contains('\n'), "{}", line);
        prop_assert_eq!(warden::control::Request::parse_line(line.as_bytes()), Ok(r));
    }

    /// A request line with any key written twice is refused, whatever the values — the
    /// duplicate never silently wins.
    #[test]
    fn a_duplicated_key_is_always_refused(
        r in control::request(),
        which in any::<prop::sample::Index>(),
        value in prop_oneof![Just("1".to_string()), Just("\"stop\"".to_string()), Just("[]".to_string())],
    ) {
        let line = serde_json::to_string(&r).unwrap();
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line).unwrap();
        let keys: Vec<&String> = object.keys().collect();
        let key = keys[which.index(keys.len())];
        let doubled = format!("{},{}:{value}}}", &line[..line.len() - 1], serde_json::to_string(key).unwrap());
        let e = warden::control::Request::parse_line(doubled.as_bytes()).unwrap_err();
        prop_assert!(e.contains("duplicate key"), "{} -> {}", doubled, e);
    }

    /// A field the command does not have is refused, beside every command.
    #[test]
    fn an_unknown_field_is_always_refused(r in control::request(), key in "[a-z_]{1,10}", value in 0u32..3) {
        let mut v = serde_json::to_value(&r).unwrap();
        prop_assume!(v.get(&key).is_none());
        prop_assume!(!["programs", "program", "instances", "dry_run"].contains(&key.as_str()));
        v[&key] = value.into();
        let e = warden::control::Request::parse_line(v.to_string().as_bytes()).unwrap_err();
        prop_assert!(e.contains("unknown field"), "{} -> {}", v, e);
    }

    /// A command written as a number (serde would take it for a variant's index) is refused.
    #[test]
    fn a_command_written_as_a_number_is_refused(r in control::request(), n in 0u64..10) {
        let mut v = serde_json::to_value(&r).unwrap();
        v["cmd"] = n.into();
        let e = warden::control::Request::parse_line(v.to_string().as_bytes()).unwrap_err();
        prop_assert!(e.contains("must be a string"), "{}", e);
    }

    /// Arbitrary bytes never panic the parser, and whatever it accepts reads back (the fuzz
    /// target's check, on proptest's inputs).
    #[test]
    fn arbitrary_lines_never_panic_the_request_parser(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "\\{(\"(v|cmd|programs|program|instances|dry_run)\":(1|\"status\"|\"stop\"|\\[\"a\"\\]|true|null|-1|2),?){0,5}\\}"
                .prop_map(String::into_bytes),
        ]
    ) {
        warden::fuzzing::control(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Pool frames
// ---------------------------------------------------------------------------------------------

mod frames {
    use super::*;
    use warden::fuzzing::pool::{Outcome, Sample};

    pub fn sample() -> impl Strategy<Value = Sample> {
        prop_oneof![
            Just(Sample::Unit),
            any::<u64>().prop_map(Sample::Num),
            any::<i32>().prop_map(Sample::Signed),
            any::<String>().prop_map(Sample::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Sample::Bytes),
            (
                any::<u32>(),
                any::<String>(),
                proptest::collection::vec(any::<String>(), 0..4),
                any::<Option<bool>>()
            )
                .prop_map(|(id, name, tags, flag)| Sample::Record {
                    id,
                    name,
                    tags,
                    flag
                }),
        ]
    }

    pub fn outcome() -> impl Strategy<Value = Outcome<Sample, String>> {
        prop_oneof![
            sample().prop_map(Outcome::Ok),
            any::<String>().prop_map(Outcome::Err),
            any::<String>().prop_map(Outcome::Panicked),
            any::<String>().prop_map(Outcome::Codec),
        ]
    }

    /// One frame to send, as the model remembers it.
    #[derive(Debug, Clone)]
    pub enum Sent {
        Job(u64, Sample),
        Chunk(u64, Vec<Sample>),
        Result(u64, Outcome<Sample, String>),
        ChunkResult(u64, Vec<Outcome<Sample, String>>),
        Shutdown,
    }

    pub fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            (any::<u64>(), sample()).prop_map(|(i, s)| Sent::Job(i, s)),
            (any::<u64>(), proptest::collection::vec(sample(), 0..6))
                .prop_map(|(i, s)| Sent::Chunk(i, s)),
            (any::<u64>(), outcome()).prop_map(|(i, o)| Sent::Result(i, o)),
            (any::<u64>(), proptest::collection::vec(outcome(), 0..6))
                .prop_map(|(i, o)| Sent::ChunkResult(i, o)),
            Just(Sent::Shutdown),
        ]
    }
}

proptest! {
    #![proptest_config(RunConfig { cases: cases(300), failure_persistence: None, ..RunConfig::default() })]

    /// Frames encoded as the pool and the workers encode them, received in reads of any sizes,
    /// come out whole, in order, and decode to what was sent.
    #[test]
    fn frames_decode_to_what_was_encoded(
        sent in proptest::collection::vec(frames::sent(), 1..8),
        reads in proptest::collection::vec(1usize..5000, 1..6),
        min_room in prop_oneof![Just(1usize), Just(7), Just(4096), Just(16 * 1024)],
    ) {
        use warden::fuzzing::pool::*;
        use frames::Sent;
        let mut stream = Vec::new();
        for s in &sent {
            stream.extend(match s {
                Sent::Job(id, v) => job_frame(*id, v).unwrap(),
                Sent::Chunk(id, v) => chunk_frame(*id, v).unwrap(),
                Sent::Result(id, o) => result_frame(*id, o.clone()).unwrap(),
                Sent::ChunkResult(id, o) => chunk_result_frame(*id, o.clone()),
                Sent::Shutdown => shutdown_frame(),
            });
        }
        let got = receive(&stream, &reads, min_room);
        prop_assert_eq!(&got.corrupt, &None);
        prop_assert_eq!(got.pending, 0);
        prop_assert_eq!(got.frames.len(), sent.len());
        for (f, s) in got.frames.iter().zip(&sent) {
            match s {
                Sent::Job(id, v) => {
                    prop_assert_eq!(f.kind, JOB);
                    prop_assert_eq!(read_id(&f.body), Some(*id));
                    prop_assert_eq!(decode::<Sample>(&f.body[8..]), Ok(v.clone()));
                }
                Sent::Chunk(id, v) => {
                    prop_assert_eq!(f.kind, CHUNK);
                    prop_assert_eq!(read_id(&f.body), Some(*id));
                    prop_assert_eq!(u32::from_le_bytes(f.body[8..12].try_into().unwrap()) as usize, v.len());
                    prop_assert_eq!(decode::<Vec<Sample>>(&f.body[12..]), Ok(v.clone()));
                }
                Sent::Result(id, o) => {
                    prop_assert_eq!(f.kind, RESULT);
                    prop_assert_eq!(read_id(&f.body), Some(*id));
                    prop_assert_eq!(decode_outcome::<Sample, String>(&f.body[8..]), Ok(o.clone()));
                }
                Sent::ChunkResult(id, o) => {
                    prop_assert_eq!(f.kind, CHUNK_RESULT);
                    prop_assert_eq!(read_id(&f.body), Some(*id));
                    prop_assert_eq!(decode_outcomes::<Sample, String>(&f.body[8..]), Ok(o.clone()));
                }
                Sent::Shutdown => {
                    prop_assert_eq!(f.kind, SHUTDOWN);
                    prop_assert!(f.body.is_empty());
                }
            }
        }
        // A stream cut anywhere gives the whole frames before the cut and waits for the rest.
        let cut = stream.len() / 2;
        let part = receive(&stream[..cut], &reads, min_room);
        prop_assert_eq!(&part.corrupt, &None);
        prop_assert!(part.frames.len() <= sent.len());
        prop_assert_eq!(&part.frames[..], &got.frames[..part.frames.len()]);
    }

    /// Arbitrary bytes never panic the frame decoder or break its rules (the fuzz target's
    /// check, on proptest's inputs).
    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            // Mostly well-formed: a valid header and body with bytes flipped.
            (frames::sent(), any::<u64>(), any::<u8>()).prop_map(|(s, at, to)| {
                use frames::Sent;
                use warden::fuzzing::pool::*;
                let mut b = vec![0, 1, 2];
                b.extend(match s {
                    Sent::Job(id, v) => job_frame(id, &v).unwrap(),
                    Sent::Chunk(id, v) => chunk_frame(id, &v).unwrap(),
                    Sent::Result(id, o) => result_frame(id, o).unwrap(),
                    Sent::ChunkResult(id, o) => chunk_result_frame(id, o),
                    Sent::Shutdown => shutdown_frame(),
                });
                let i = 3 + (at as usize) % (b.len() - 3);
                b[i] = to;
                b
            }),
        ]
    ) {
        warden::fuzzing::pool::stream(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Notify datagrams
// ---------------------------------------------------------------------------------------------

mod notify {
    use super::*;

    /// What a datagram says: each key at most once, with a value that means something.
    #[derive(Debug, Clone)]
    pub struct Says {
        pub ready: Option<bool>,
        pub stopping: Option<bool>,
        pub watchdog: Option<bool>,
        pub status: Option<String>,
        pub main_pid: Option<i32>,
        /// Lines warden ignores: other keys, lines without `=`, non-UTF-8 bytes.
        pub noise: Vec<Vec<u8>>,
    }

    pub fn says() -> impl Strategy<Value = Says> {
        (
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            proptest::option::of("[^\n\r]{0,300}"),
            proptest::option::of(2i32..=i32::MAX),
            proptest::collection::vec(
                prop_oneof![
                    "(X_[A-Z]{1,6}|ERRNO|BUSERROR|EXTEND_TIMEOUT_USEC|FDSTORE)=[^\n]{0,10}"
                        .prop_map(String::into_bytes),
                    "[^\n=]{0,12}".prop_map(String::into_bytes),
                    proptest::collection::vec(0x80u8..=0xff, 1..6),
                ],
                0..4,
            ),
        )
            .prop_map(
                |(ready, stopping, watchdog, status, main_pid, noise)| Says {
                    ready,
                    stopping,
                    watchdog,
                    status,
                    main_pid,
                    noise,
                },
            )
    }

    pub fn lines(s: &Says) -> Vec<Vec<u8>> {
        let flag = |k: &str, v: Option<bool>| {
            v.map(|b| format!("{k}={}", if b { "1" } else { "0" }).into_bytes())
        };
        let mut out: Vec<Vec<u8>> = [
            flag("READY", s.ready),
            flag("STOPPING", s.stopping),
            s.watchdog
                .map(|b| if b { "WATCHDOG=1" } else { "WATCHDOG=trigger" }.into()),
            s.status
                .as_ref()
                .map(|t| format!("STATUS={t}").into_bytes()),
            s.main_pid.map(|p| format!("MAINPID={p}").into_bytes()),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.extend(s.noise.iter().cloned());
        out
    }
}

proptest! {
    #![proptest_config(RunConfig { cases: cases(500), failure_persistence: None, ..RunConfig::default() })]

    /// A datagram of `KEY=VALUE` lines, in any order, among lines warden ignores and with any
    /// line ending, parses to exactly what its lines say.
    #[test]
    fn datagrams_parse_to_what_was_put_in(
        says in notify::says(),
        order in any::<prop::sample::Index>(),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
        pid in 1i32..=i32::MAX,
    ) {
        let mut lines = notify::lines(&says);
        let turn = order.index(lines.len().max(1));
        lines.rotate_left(turn);
        let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut data = lines.join(sep);
        if trailing {
            data.extend_from_slice(sep);
        }
        let m = warden::fuzzing::NotifyMessage::parse(pid, &data);
        prop_assert_eq!(m.pid, pid);
        prop_assert_eq!(m.ready, says.ready == Some(true));
        prop_assert_eq!(m.stopping, says.stopping == Some(true));
        prop_assert_eq!(m.watchdog, says.watchdog == Some(true));
        prop_assert_eq!(m.watchdog_trigger, says.watchdog == Some(false));
        prop_assert_eq!(m.status, says.status.map(|s| s.chars().take(256).collect::<String>()));
        prop_assert_eq!(m.main_pid, says.main_pid);
    }

    /// Arbitrary bytes never panic the notify parser or break its rules.
    #[test]
    fn arbitrary_datagrams_never_panic_the_notify_parser(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "((READY|STOPPING|WATCHDOG|STATUS|MAINPID)=(1|0|trigger|-?[0-9]{1,12}|é)?\n?){0,6}".prop_map(String::into_bytes),
        ]
    ) {
        warden::fuzzing::notify(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// The supervisor's state machine
// ---------------------------------------------------------------------------------------------

mod machine {
    use super::*;
    use std::time::Instant;
    use warden::lifecycle::{Action, AfterStop, Event, Instance, State};
    use warden::policy::{ExitStatus, Policy, Readiness, Restart};

    /// An event as generated: `Spawned` gets a fresh pid when it is applied.
    #[derive(Debug, Clone)]
    pub enum Ev {
        Start,
        Stop,
        Restart,
        Kill,
        Spawned,
        SpawnFailed,
        Exited(ExitStatus),
        LeaderExited(ExitStatus),
        GroupEmpty,
        Ready,
        WatchdogPing,
        Tick,
    }

    fn status() -> impl Strategy<Value = ExitStatus> {
        prop_oneof![
            Just(ExitStatus::Code(0)),
            (1i32..3).prop_map(ExitStatus::Code),
            Just(ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            }),
        ]
    }

    pub fn event() -> impl Strategy<Value = Ev> {
        prop_oneof![
            2 => Just(Ev::Start),
            1 => Just(Ev::Stop),
            1 => Just(Ev::Restart),
            1 => Just(Ev::Kill),
            5 => Just(Ev::Spawned),
            1 => Just(Ev::SpawnFailed),
            5 => status().prop_map(Ev::Exited),
            1 => status().prop_map(Ev::LeaderExited),
            2 => Just(Ev::GroupEmpty),
            2 => Just(Ev::Ready),
            1 => Just(Ev::WatchdogPing),
            6 => Just(Ev::Tick),
        ]
    }

    /// How far the clock moves before an event, in milliseconds.
    pub fn advance() -> impl Strategy<Value = u64> {
        prop_oneof![
            2 => Just(0u64),
            3 => 1u64..200,
            3 => 200u64..5_000,
            1 => 5_000u64..120_000,
        ]
    }

    fn ms(max: u64) -> impl Strategy<Value = Duration> {
        (0..=max).prop_map(Duration::from_millis)
    }

    pub fn policy() -> impl Strategy<Value = Policy> {
        (
            prop_oneof![
                Just(Restart::Always),
                Just(Restart::OnFailure),
                Just(Restart::Never)
            ],
            ms(2_000),
            prop_oneof![Just(Duration::ZERO), ms(300), ms(60_000)],
            ms(5_000),
            prop_oneof![0u32..6, 50u32..1000],
            ms(120_000).prop_map(|d| d.max(Duration::from_millis(1))),
            ms(20_000),
            prop_oneof![
                Just(Readiness::Immediate),
                Just(Readiness::Notify),
                ms(5_000).prop_map(Readiness::After),
            ],
            proptest::option::of(ms(20_000)),
            proptest::option::of(ms(20_000).prop_map(|d| d.max(Duration::from_millis(1)))),
        )
            .prop_map(
                |(restart, initial, extra, reset, max_restarts, window, stop, ready, start, wd)| {
                    Policy {
                        restart,
                        backoff_initial: initial,
                        backoff_max: initial + extra,
                        backoff_reset: reset,
                        max_restarts,
                        restart_window: window,
                        stop_timeout: stop,
                        readiness: ready,
                        start_timeout: start,
                        watchdog: wd,
                        ..Policy::default()
                    }
                },
            )
    }

    /// How often interesting situations came up over a whole run, so that the properties are
    /// known not to hold only because nothing happened.
    #[derive(Debug, Default)]
    pub struct Seen {
        pub fatal: usize,
        pub backoff: usize,
        pub killed: usize,
        pub ready: usize,
        pub stopped_steps: usize,
        pub stopped_state: usize,
        pub due_ticks: usize,
        pub early_ticks: usize,
        pub capped: usize,
    }

    fn same(a: &Instance, b: &Instance) -> bool {
        a.state == b.state
            && a.restarts == b.restarts
            && a.last_exit == b.last_exit
            && a.manual_stop == b.manual_stop
    }

    /// Runs `events` on a fresh instance under `policy`, checking every rule after every step.
    pub fn run(
        policy: &Policy,
        events: &[(Ev, u64, f64)],
        seen: &mut Seen,
    ) -> Result<(), TestCaseError> {
        let start = Instant::now();
        let mut now = start;
        let mut inst = Instance::new();
        let mut next_pid = 1000;
        let mut pids: Vec<i32> = Vec::new();
        let mut adopted: Option<i32> = None;
        let mut sigkilled: Vec<i32> = Vec::new();
        let mut stopped = false;
        for (i, (ev, advance, jitter)) in events.iter().enumerate() {
            now += Duration::from_millis(*advance);
            let event = match ev {
                Ev::Start => Event::Start,
                Ev::Stop => Event::Stop,
                Ev::Restart => Event::Restart,
                Ev::Kill => Event::Kill,
                Ev::Spawned => {
                    next_pid += 1;
                    pids.push(next_pid);
                    Event::Spawned { pid: next_pid }
                }
                Ev::SpawnFailed => Event::SpawnFailed,
                Ev::Exited(s) => Event::Exited { status: *s },
                Ev::LeaderExited(s) => Event::LeaderExited { status: *s },
                Ev::GroupEmpty => Event::GroupEmpty,
                Ev::Ready => Event::Ready,
                Ev::WatchdogPing => Event::WatchdogPing,
                Ev::Tick => Event::Tick,
            };
            let before = inst.clone();
            let deadline = inst.deadline(policy);
            let actions = inst.step(policy, event.clone(), now, *jitter);
            let after = &inst.state;
            // The message of a failed rule: built only when one fails.
            let at = || {
                format!(
                    "step {i}: {event:?} at +{:?} in {:?} -> {after:?}, {actions:?}",
                    now - start,
                    before.state
                )
            };

            match event {
                Event::Stop | Event::Kill => stopped = true,
                Event::Start | Event::Restart => stopped = false,
                Event::Spawned { pid } if before.state == State::Spawning => adopted = Some(pid),
                _ => {}
            }
            for a in &actions {
                if let Action::Stop { pid } | Action::Kill { pid } = a {
                    prop_assert!(
                        pids.contains(pid),
                        "signal to a pid never spawned; {}",
                        at()
                    );
                    let kill = warden::policy::StopWith::Signal(nix::sys::signal::Signal::SIGKILL);
                    if matches!(a, Action::Kill { .. }) || policy.stop == kill {
                        sigkilled.push(*pid);
                    }
                }
            }

            // A spawn is asked for exactly when the instance enters `Spawning`.
            let spawns = actions.iter().filter(|a| **a == Action::Spawn).count();
            prop_assert!(spawns <= 1, "{}", at());
            if spawns == 1 {
                prop_assert_eq!(after, &State::Spawning, "{}", at());
            }
            if *after == State::Spawning && before.state != State::Spawning {
                prop_assert_eq!(spawns, 1, "{}", at());
            }

            // A stopped program is never restarted: nothing spawns until a start or restart,
            // and it stays down (a pid that raced the stop is only being stopped).
            if stopped {
                seen.stopped_steps += 1;
                prop_assert_eq!(spawns, 0, "a stopped program was restarted; {}", at());
                prop_assert!(
                    matches!(
                        after,
                        State::Exited
                            | State::Stopped
                            | State::Fatal
                            | State::Stopping {
                                then: AfterStop::Stay,
                                ..
                            }
                    ),
                    "a stopped program is {after:?}; {}",
                    at()
                );
            }
            prop_assert_eq!(inst.manual_stop, stopped, "{}", at());

            // The state agrees with the policy, the pids and the clock.
            match *after {
                State::Running { pid, since } => {
                    prop_assert_eq!(policy.readiness, Readiness::Immediate, "{}", at());
                    prop_assert_eq!(Some(pid), adopted, "{}", at());
                    prop_assert!(since <= now, "{}", at());
                }
                State::Starting { pid, since } => {
                    prop_assert!(policy.readiness != Readiness::Immediate, "{}", at());
                    prop_assert_eq!(Some(pid), adopted, "{}", at());
                    prop_assert!(since <= now, "{}", at());
                }
                State::Ready {
                    pid,
                    since,
                    ready_at,
                } => {
                    seen.ready += 1;
                    prop_assert!(policy.readiness != Readiness::Immediate, "{}", at());
                    prop_assert_eq!(Some(pid), adopted, "{}", at());
                    prop_assert!(since <= ready_at && ready_at <= now, "{}", at());
                }
                State::Backoff { until } => {
                    seen.backoff += 1;
                    if !matches!(before.state, State::Backoff { .. }) {
                        // Backoff never exceeds its cap, and is a real wait.
                        prop_assert!(until > now, "{}", at());
                        prop_assert!(
                            until - now <= policy.backoff_max,
                            "backoff beyond its cap; {}",
                            at()
                        );
                        if until - now == policy.backoff_max {
                            seen.capped += 1;
                        }
                    }
                }
                State::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed,
                    ..
                } => {
                    prop_assert!(pids.contains(&pid), "{}", at());
                    prop_assert!(since <= now, "{}", at());
                    prop_assert!(kill_at <= since + policy.stop_timeout, "{}", at());
                    if killed {
                        seen.killed += 1;
                        prop_assert!(kill_at <= now, "{}", at());
                        prop_assert!(sigkilled.contains(&pid), "killed without SIGKILL; {}", at());
                    }
                }
                State::Fatal => {
                    if before.state != State::Fatal {
                        seen.fatal += 1;
                        prop_assert!(
                            actions.iter().any(|a| matches!(a, Action::Log { level: log::Level::Error, message } if message.contains("fatal"))),
                            "went fatal without saying so; {}", at()
                        );
                    }
                }
                // `stopped` is the state of a stop by hand, and of nothing else.
                State::Stopped => {
                    seen.stopped_state += 1;
                    prop_assert!(stopped, "stopped without a stop; {}", at());
                }
                State::Exited | State::Spawning => {}
            }
            prop_assert!(inst.restarts >= before.restarts, "{}", at());

            // The loop sleeps until `deadline`: a tick before it (or with none) changes
            // nothing, and a tick at or after it always does something.
            if event == Event::Tick {
                match deadline {
                    Some(d) if d <= now => {
                        seen.due_ticks += 1;
                        prop_assert!(!same(&before, &inst), "a due tick did nothing; {}", at());
                    }
                    _ => {
                        seen.early_ticks += 1;
                        prop_assert!(
                            same(&before, &inst) && actions.is_empty(),
                            "an early tick acted; {}",
                            at()
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// No sequence of events leaves an instance in an impossible state; backoff never exceeds its
/// cap; a stopped program is never restarted; ticks act exactly when a deadline is due. One
/// runner for the whole run, so that it can also check that the generated sequences reached
/// the situations the rules are about.
#[test]
fn the_state_machine_keeps_its_rules_under_any_events() {
    let config = RunConfig {
        cases: cases(200),
        failure_persistence: None,
        ..RunConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let seen = std::cell::RefCell::new(machine::Seen::default());
    let strategy = (
        machine::policy(),
        proptest::collection::vec((machine::event(), machine::advance(), 0.0f64..1.0), 1..150),
    );
    let result = runner.run(&strategy, |(policy, events)| {
        machine::run(&policy, &events, &mut seen.borrow_mut())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let seen = seen.into_inner();
    assert!(
        seen.fatal > 0
            && seen.backoff > 0
            && seen.capped > 0
            && seen.killed > 0
            && seen.ready > 0
            && seen.stopped_steps > 0
            && seen.stopped_state > 0
            && seen.due_ticks > 0
            && seen.early_ticks > 0,
        "the generated events did not reach every situation: {seen:?}"
    );
}
