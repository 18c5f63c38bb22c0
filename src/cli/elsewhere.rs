//! A warden daemon that runs this very configuration file but is not where the file now says
//! (its `pidfile` or `control_socket` was edited since it started): found in `/proc`, so that
//! `start` does not start a second daemon beside it, and `stop` and `status` do not call it
//! "not running".
//!
//! A process is such a daemon when its name is `warden`, its command line names this file
//! (`-c FILE`, `--config FILE`, or none for the default path; a relative path is taken from its
//! working directory, which a daemon has changed: those are missed) with a verb that serves
//! (`start`, `run`, `restart`, `resume`), and it has a locked file open (`/proc/locks`) that is
//! not the pidfile the file names: a daemon, its old pidfile; a command has none.

use std::path::{Path, PathBuf};

use warden::config::DEFAULT_PATH;

/// The pid of a warden daemon, other than this process, that runs the file at `config` with
/// a pidfile other than `pidfile` (a daemon, or a start, holding that one is the ordinary case:
/// `already running`).
pub fn daemon_running(config: &Path, pidfile: &Path) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::canonicalize(config).ok()?;
    let me = std::process::id() as i32;
    // Locked files, by inode (`/proc/locks` names the locker, which for a daemon is the
    // launcher it forked from: its descriptors tell whose lock it is now). Read before the
    // pidfile is looked at: a lock listed was taken on a file that existed by then.
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let ours = std::fs::metadata(pidfile).ok().map(|m| m.ino());
    let locked: Vec<u64> = locks
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(5)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .filter(|&ino| Some(ino) != ours)
        .collect();
    let holds_lock = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::metadata(fd.path()).ok())
                .any(|m| m.is_file() && locked.contains(&m.ino()))
        })
    };
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "warden")
        })
        .find(|&pid| serves(pid, &want) && holds_lock(pid))
}

/// Whether process `pid`'s command line serves the configuration file `want` (canonical).
fn serves(pid: i32, want: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let verb = ["start", "run", "restart", "resume"];
    if !args.iter().skip(1).any(|a| verb.contains(&a.as_str())) {
        return false;
    }
    let file = config_arg(&args).unwrap_or_else(|| DEFAULT_PATH.to_string());
    let file = PathBuf::from(file);
    let file = if file.is_absolute() {
        file
    } else {
        match std::fs::read_link(format!("/proc/{pid}/cwd")) {
            Ok(cwd) => cwd.join(file),
            Err(_) => return false,
        }
    };
    std::fs::canonicalize(&file).is_ok_and(|f| f == want)
}

/// The value of `-c`/`--config` in `args` (`-c FILE`, `-cFILE`, `--config FILE`,
/// `--config=FILE`), if given.
fn config_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--config" => return it.next().cloned(),
            "--" => return None,
            _ => {}
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
        if let Some(v) = a
            .strip_prefix("-c")
            .filter(|v| !v.is_empty() && !a.starts_with("--"))
        {
            return Some(v.to_string());
        }
    }
    None
}

/// What to tell an operator about daemon `pid`, found running `config` elsewhere.
pub fn hint(config: &Path, pid: i32) -> String {
    format!(
        "warden (pid {pid}) runs {} but not at the pidfile and control socket the file now names: \
         was pidfile or control_socket changed since it started? Revert the change, or stop it \
         by its pid (kill {pid}) and start again",
        config.display()
    )
}

#[cfg(test)]
mod tests {
    use super::config_arg;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_configuration_is_read_from_every_spelling_of_its_option() {
        for (a, want) in [
            (&["warden", "-c", "/a.toml", "start"][..], Some("/a.toml")),
            (&["warden", "-c/b.toml", "run"][..], Some("/b.toml")),
            (
                &["warden", "--config", "c.toml", "start"][..],
                Some("c.toml"),
            ),
            (
                &["warden", "--config=/d.toml", "resume"][..],
                Some("/d.toml"),
            ),
            (&["warden", "start"][..], None),
            (&["warden", "--", "-c", "x"][..], None),
        ] {
            assert_eq!(config_arg(&args(a)).as_deref(), want, "{a:?}");
        }
    }
}
