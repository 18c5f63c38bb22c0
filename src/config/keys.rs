//! The key table: every key the reader accepts, table by table. It is the one list that
//! documentation and tooling may be generated or checked from (warden.toml(5) is checked against
//! it by a test). The reader enforces it: a [`Section`](super::read::Section) may read only the
//! keys of its table, so a key added to the reader but not here fails every test that reads it.

/// One table of the configuration file and the keys it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTable {
    /// The table's name as written in the file: `""` for the top level, `"daemon"`,
    /// `"program.NAME"`, `"program.NAME.limits"`. `NAME` stands for any program name.
    pub table: &'static str,
    /// The keys it accepts, in the order the documentation gives them.
    pub keys: &'static [&'static str],
}

/// The top level of the file.
pub(crate) const TOP: KeyTable = KeyTable {
    table: "",
    keys: &["include", "daemon", "program", "socket"],
};

/// The top level of a drop-in file read through `include`: `[program.NAME]` tables only. Not in
/// [`KEYS`]: it is a subset of [`TOP`], not a table of its own.
pub(crate) const DROP_IN: KeyTable = KeyTable {
    table: "",
    keys: &["program"],
};

/// `[daemon]`.
pub(crate) const DAEMON: KeyTable = KeyTable {
    table: "daemon",
    keys: &[
        "pidfile",
        "directory",
        "umask",
        "user",
        "group",
        "stdout",
        "stderr",
        "log",
        "log_level",
        "log_format",
        "syslog_facility",
        "syslog_ident",
        "ready_timeout",
        "shutdown_timeout",
        "exit_on_fatal",
        "scale_program",
        "control_socket",
        "control_group",
        "metrics",
        "cgroups",
        "pid_namespace",
    ],
};

/// `[program.NAME]`.
pub(crate) const PROGRAM: KeyTable = KeyTable {
    table: "program.NAME",
    keys: &[
        "command",
        "instances",
        "directory",
        "user",
        "group",
        "umask",
        "env",
        "env_file",
        "clean_env",
        "limits",
        "memory_max",
        "memory_high",
        "pids_max",
        "cpu_max",
        "health",
        "sockets",
        "after",
        "requires",
        "restart",
        "backoff_initial",
        "backoff_max",
        "backoff_reset",
        "max_restarts",
        "restart_window",
        "stop_signal",
        "stop_timeout",
        "ready",
        "start_timeout",
        "watchdog",
        "stdout",
        "stderr",
        "log_max_bytes",
        "log_keep",
        "update",
        "probation",
    ],
};

/// `[program.NAME.limits]` (also written inline, `limits = { nofile = 4096 }`).
pub(crate) const LIMITS: KeyTable = KeyTable {
    table: "program.NAME.limits",
    keys: &[
        "nofile", "core", "nproc", "memlock", "as", "fsize", "stack", "cpu",
    ],
};

/// `[program.NAME.health]`.
pub(crate) const HEALTH: KeyTable = KeyTable {
    table: "program.NAME.health",
    keys: &[
        "exec",
        "tcp",
        "http",
        "interval",
        "timeout",
        "retries",
        "start_period",
    ],
};

/// `[socket.NAME]`.
pub(crate) const SOCKET: KeyTable = KeyTable {
    table: "socket.NAME",
    keys: &["listen", "backlog", "mode", "user", "group"],
};

/// Every table with a fixed set of keys. `[program.NAME.env]` is free-form (any variable name)
/// and so is not listed.
pub const KEYS: &[KeyTable] = &[TOP, DAEMON, PROGRAM, LIMITS, HEALTH, SOCKET];

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that sets every key of the table once: the reader must know every one of them
    /// (an entry here that the reader does not read is reported as an unknown key).
    #[test]
    fn the_reader_accepts_every_key_of_the_table() {
        let values = |table: &KeyTable| -> Vec<String> {
            table
                .keys
                .iter()
                .map(|k| {
                    let v = match *k {
                        "command" => "[\"/bin/true\"]",
                        "instances" | "max_restarts" | "log_keep" | "nofile" | "core" | "nproc"
                        | "memlock" | "as" | "fsize" | "stack" | "cpu" => "1",
                        "env" => "{ A = \"b\" }",
                        "env_file" => "[\"-./a.env\"]",
                        "after" | "requires" | "sockets" => "[]",
                        "limits" | "health" => return String::new(),
                        "clean_env" | "exit_on_fatal" => "false",
                        "pid_namespace" => "true",
                        "restart" => "\"always\"",
                        "stop_signal" => "\"TERM\"",
                        "ready" => "\"notify\"",
                        "umask" => "\"022\"",
                        "log" => "\"stderr\"",
                        "log_level" => "\"info\"",
                        "log_format" => "\"json\"",
                        "syslog_facility" => "\"daemon\"",
                        "scale_program" => "\"p\"",
                        "metrics" => "\"127.0.0.1:9464\"",
                        "log_max_bytes" => "\"1M\"",
                        "backoff_initial" | "backoff_max" | "backoff_reset" | "restart_window"
                        | "stop_timeout" | "start_timeout" | "watchdog" | "ready_timeout"
                        | "shutdown_timeout" | "probation" => "\"1s\"",
                        "update" => "\"surge\"",
                        "cgroups" => "\"auto\"",
                        "memory_max" => "\"64M\"",
                        "memory_high" => "\"32M\"",
                        "pids_max" => "64",
                        "cpu_max" => "\"50%\"",
                        "user" | "group" | "syslog_ident" | "control_group" => "\"x\"",
                        "stdout" | "stderr" => "\"./out\"",
                        _ => "\"./path\"",
                    };
                    format!("{k} = {v}\n")
                })
                .collect()
        };
        let mut text = String::from("[daemon]\n");
        text.extend(values(&DAEMON));
        // A program's stdout and stderr may share a file; the daemon's are separate keys.
        text.push_str("[program.p]\n");
        text.extend(
            values(&PROGRAM)
                .into_iter()
                .map(|l| l.replace("./out", "./p.out")),
        );
        text.push_str("[program.p.limits]\n");
        text.extend(values(&LIMITS));
        text.push_str("[program.p.health]\n");
        text.extend(values(&HEALTH));
        text.push_str("[socket.s]\n");
        text.extend(values(&SOCKET));
        let r = crate::config::Config::parse(std::path::Path::new("/etc/warden/t.toml"), &text);
        if let Err(crate::Error::Config(d)) = &r {
            let unknown: Vec<_> = d
                .iter()
                .map(|d| d.to_string())
                .filter(|d| d.contains("unknown key"))
                .collect();
            assert!(unknown.is_empty(), "{unknown:#?}\n{text}");
        }
    }

    #[test]
    fn no_table_lists_a_key_twice() {
        for t in KEYS {
            let mut keys = t.keys.to_vec();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), t.keys.len(), "{}", t.table);
        }
    }
}
