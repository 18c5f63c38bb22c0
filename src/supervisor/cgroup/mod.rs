//! cgroup v2 per instance: the hierarchy warden makes for itself, and the files of one
//! instance's cgroup (`cgroup.events`, `cgroup.kill`, `memory.events`, the limits).
//!
//! # Layout
//!
//! warden finds the cgroup v2 mount in `/proc/self/mountinfo` (file system type `cgroup2`) and
//! its own cgroup in `/proc/self/cgroup` (the `0::/PATH` line); that cgroup is the *parent*.
//! Under systemd with `Delegate=yes` it is the unit's cgroup, which warden may write; as root
//! anywhere else it is wherever warden was started (the root of the hierarchy in a container
//! or a plain boot). In it warden makes, for its pid `PID`:
//!
//! ```text
//! PARENT/warden-PID/              warden's base
//!                   supervisor/   warden itself (and its guard): a process may not sit in a
//!                                 cgroup that has children
//!                   programs/     one cgroup per instance, NAME@INDEX.SLOT (NAME@INDEX.SLOT-2,
//!                                 … while an old one with that name still holds processes),
//!                                 which holds the instance's exec health checks too
//! ```
//!
//! Each spawn of an instance joins `programs/NAME@INDEX.SLOT` in the child, before anything
//! else (`sys::child`), so nothing it forks can leave it (a process may move itself only where
//! it may write, and no worker may write warden's tree unless it runs as root and tries).
//!
//! A base whose `supervisor` leaf holds no process (and that is older than a second) was left
//! by a warden killed together with its guard: the next warden to start in the same parent
//! kills what is left in it (`cgroup.kill`) and removes it. The leaf decides, not the pid in the
//! name: wardens in other PID namespaces (containers, `unshare --pid`) may share the parent, and
//! their pids mean nothing here — two may even have the same one, hence `warden-PID-2`, ….
//!
//! Mode detection never guesses: cgroup mode needs the mount, write access to the parent,
//! `cgroup.kill` (Linux 5.14) and moving warden into its leaf; anything missing means process
//! groups and the guard, with the reason in the log. Every function takes its paths as
//! arguments, so unit tests run against a fake tree in a temporary directory.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::CgroupLimits;

mod run;
pub use run::DelegatedCgroups;
pub(crate) use run::{CgroupState, ends};

/// The controllers warden enables for instances when the parent offers them.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// warden's subtree of a cgroup v2 hierarchy. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    /// The cgroup warden was started in.
    pub(crate) parent: PathBuf,
    /// `PARENT/warden-PID`.
    pub(crate) base: PathBuf,
    /// The controllers enabled for instances (`programs/cgroup.subtree_control`).
    pub(crate) controllers: Vec<String>,
    /// Why each of [`CONTROLLERS`] that is not enabled is not (for the messages of limits that
    /// cannot be applied).
    pub(crate) unavailable: Vec<(String, String)>,
}

#[cfg(test)]
pub(crate) use crate::config::preflight::v2_mount;
pub(crate) use crate::config::preflight::v2_mount_root;

/// The cgroup v2 path of the process whose `/proc/PID/cgroup` is `text` (the `0::` line).
pub(crate) fn own_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
        .filter(|p| p.starts_with('/') && !p.ends_with(" (deleted)"))
}

/// The directory of cgroup `path` (as `own_path` gives it) under `mount`.
pub(crate) fn dir_of(mount: &Path, path: &str) -> PathBuf {
    match path.trim_start_matches('/') {
        "" => mount.to_path_buf(),
        rel => mount.join(rel),
    }
}

/// The directory of this process's cgroup `own` (as `/proc/self/cgroup` names it) under the
/// cgroup2 mount point `mount`, which shows cgroup `root` (see [`v2_mount_root`]); `Err` when
/// the mount does not show it — a file system mounted outside this cgroup namespace (root
/// `/..`), or a bind mount of another subtree.
pub(crate) fn own_dir(mount: &Path, root: &str, own: &str) -> Result<PathBuf, String> {
    let rel = Path::new(own).strip_prefix(root).map_err(|_| {
        format!(
            "warden's cgroup {own} is not under the cgroup2 mount {} (which shows {root}{})",
            mount.display(),
            if root.starts_with("/..") {
                ": a cgroup namespace whose cgroup file system was mounted outside it"
            } else {
                ""
            }
        )
    })?;
    Ok(dir_of(mount, &rel.to_string_lossy()))
}

/// The cgroup directory name of one instance's slot: `NAME@INDEX.SLOT` (`@` is not in program
/// names, so two slots never share a name).
pub(crate) fn instance_name(program: &str, index: usize, slot: u32) -> String {
    format!("{program}@{index}.{slot}")
}

impl Hierarchy {
    /// Finds the hierarchy from `/proc/self` and makes warden's subtree in it, moving this
    /// process into its leaf. `Err` is the reason cgroup mode is not possible, for the log.
    pub(crate) fn set_up_here() -> Result<(Hierarchy, Vec<String>), String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let (mount, root) = v2_mount_root(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| own_path(&t))
            .ok_or("/proc/self/cgroup names no cgroup v2 path")?;
        let pid = std::process::id();
        let dir = own_dir(&mount, &root, &own)?;
        // A last check before anything moves: warden is in the directory found.
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.lines().any(|l| l.trim() == pid.to_string()) {
            return Err(format!(
                "{} does not list warden (pid {pid}): its own cgroup {own} is not where \
                 {} shows it",
                dir.join("cgroup.procs").display(),
                mount.display()
            ));
        }
        Hierarchy::set_up(&dir, pid)
    }

    /// Makes `PARENT/warden-PID` with its `supervisor` and `programs` children, moves process
    /// `pid` into `supervisor`, enables what it can of [`CONTROLLERS`] for `programs`, after
    /// killing and removing what a dead warden left in `parent`. Returns the hierarchy and the
    /// lines to log about what was cleaned up.
    pub(crate) fn set_up(parent: &Path, pid: u32) -> Result<(Hierarchy, Vec<String>), String> {
        Hierarchy::set_up_with(parent, pid, &|d| fs::create_dir(d))
    }

    /// [`set_up`](Self::set_up), making directories with `mkdir`.
    pub(crate) fn set_up_with(
        parent: &Path,
        pid: u32,
        mkdir: MakeDir<'_>,
    ) -> Result<(Hierarchy, Vec<String>), String> {
        let cleaned = clean_stale(parent);
        let at = |p: &Path, e: io::Error| format!("{}: {e}", p.display());
        let base = make_base(parent, pid, mkdir).map_err(|e| {
            format!(
                "cannot create {}",
                at(&parent.join(format!("warden-{pid}")), e)
            )
        })?;
        for dir in [base.join("supervisor"), base.join("programs")] {
            match mkdir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    remove_tree(&base);
                    return Err(format!("cannot create {}", at(&dir, e)));
                }
            }
        }
        if !base.join("programs/cgroup.kill").exists() {
            remove_tree(&base);
            return Err(format!(
                "{} has no cgroup.kill (Linux 5.14 or later is needed)",
                base.join("programs").display()
            ));
        }
        let procs = base.join("supervisor/cgroup.procs");
        if let Err(e) = fs::write(&procs, pid.to_string()) {
            remove_tree(&base);
            return Err(format!("cannot move warden into {}", at(&procs, e)));
        }
        let mut h = Hierarchy {
            parent: parent.to_path_buf(),
            base,
            controllers: Vec::new(),
            unavailable: Vec::new(),
        };
        h.enable_controllers();
        Ok((h, cleaned))
    }

    /// Delegates the tree to `uid`:`gid`, as systemd's `Delegate=yes` does: the base, its leaf
    /// and `programs` (which it creates cgroups in), with the files a delegate writes
    /// (`cgroup.procs`, `cgroup.subtree_control`, and `programs`' `cgroup.kill`).
    ///
    /// Errors: a `chown` that failed, naming the path.
    pub(crate) fn delegate(&self, uid: u32, gid: u32) -> Result<(), String> {
        let (supervisor, programs) = (self.base.join("supervisor"), self.programs());
        let paths = [
            self.base.clone(),
            self.base.join("cgroup.procs"),
            self.base.join("cgroup.subtree_control"),
            supervisor.join("cgroup.procs"),
            supervisor,
            programs.join("cgroup.procs"),
            programs.join("cgroup.subtree_control"),
            programs.join("cgroup.kill"),
            programs,
        ];
        let owner = (
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
        for p in paths {
            nix::unistd::chown(&p, owner.0, owner.1)
                .map_err(|e| format!("cannot delegate {} to uid {uid}: chown: {e}", p.display()))?;
        }
        Ok(())
    }

    /// The hierarchy an earlier image of this process made (`warden upgrade`).
    pub(crate) fn adopt(parent: PathBuf, base: PathBuf) -> Hierarchy {
        let mut h = Hierarchy {
            parent,
            base,
            controllers: Vec::new(),
            unavailable: Vec::new(),
        };
        h.read_controllers();
        h
    }

    /// `programs`: where the instances' cgroups are.
    pub(crate) fn programs(&self) -> PathBuf {
        self.base.join("programs")
    }

    /// Enables each of [`CONTROLLERS`] the parent offers down to `programs`, and records why
    /// the others are not.
    fn enable_controllers(&mut self) {
        let offered = read_words(&self.parent.join("cgroup.controllers"));
        let chain = [
            self.parent.clone(),
            self.base.clone(),
            self.base.join("programs"),
        ];
        for c in CONTROLLERS {
            if !offered.iter().any(|o| o == c) {
                continue;
            }
            for dir in &chain {
                let file = dir.join("cgroup.subtree_control");
                if read_words(&file).iter().any(|w| w == c) {
                    continue;
                }
                if let Err(e) = fs::write(&file, format!("+{c}")) {
                    log::debug!("cannot enable {c} in {}: {e}", file.display());
                    break;
                }
            }
        }
        self.read_controllers();
    }

    /// Reads which controllers `programs` has, and why the others are missing.
    fn read_controllers(&mut self) {
        let programs = self.base.join("programs");
        self.controllers = read_words(&programs.join("cgroup.subtree_control"));
        let offered = read_words(&self.parent.join("cgroup.controllers"));
        self.unavailable = CONTROLLERS
            .iter()
            .filter(|c| !self.controllers.iter().any(|e| e == *c))
            .map(|c| {
                let why = if offered.iter().any(|o| o == c) {
                    format!(
                        "warden could not enable the {c} controller for {} (is {} holding other processes?)",
                        programs.display(),
                        self.parent.display()
                    )
                } else {
                    crate::config::preflight::missing_controller(c, &self.parent)
                };
                (c.to_string(), why)
            })
            .collect();
    }

    /// Creates (or reuses) the cgroup `name` under `programs` and writes `limits` into it;
    /// returns its directory and, for each limit not applied, `KEY: reason`.
    pub(crate) fn instance(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> io::Result<(PathBuf, Vec<String>)> {
        let dir = new_cgroup(&self.programs(), name)?;
        let failed = apply_limits(&dir, limits, &self.unavailable);
        Ok((dir, failed))
    }

    /// At the end of a shutdown, every instance down: moves this process back to the parent
    /// and removes the subtree (what cannot be removed now, a later warden removes).
    pub(crate) fn tear_down(&self) {
        let _ = fs::write(
            self.parent.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        remove_tree(&self.base);
    }
}

/// The `cgroup.procs` of cgroup `dir` as a C string, for a child that joins it itself before
/// `exec`; `None` for a path with a NUL byte.
pub(crate) fn procs_of(dir: &Path) -> Option<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()
}

/// Makes cgroup `name` in `parent`, never reusing one: an empty one left behind is removed and
/// made anew (a cgroup keeps what was done to it, limits and a `cgroup.kill` under way); one
/// that still holds processes — an instance of a program removed and added again while it
/// stops — leaves the name to `NAME-2`, ….
fn new_cgroup(parent: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 1..=64 {
        let dir = match n {
            1 => parent.join(name),
            n => parent.join(format!("{name}-{n}")),
        };
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if fs::remove_dir(&dir).is_ok() && fs::create_dir(&dir).is_ok() {
                    return Ok(dir);
                }
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
    Err(io::Error::new(
        ErrorKind::AlreadyExists,
        format!("{}: 64 names taken", parent.join(name).display()),
    ))
}

/// Writes each limit of `limits` into cgroup `dir`; returns `KEY: reason` for each one not
/// applied: its controller `unavailable` (with the reason given there), or the write failed.
pub(crate) fn apply_limits(
    dir: &Path,
    limits: &CgroupLimits,
    unavailable: &[(String, String)],
) -> Vec<String> {
    let mut failed = Vec::new();
    for (key, file, controller, value) in limits.files() {
        if let Some((_, why)) = unavailable.iter().find(|(c, _)| c == controller) {
            failed.push(format!("{key}: {why}"));
            continue;
        }
        if let Err(e) = fs::write(dir.join(file), &value) {
            failed.push(format!(
                "{key}: cannot write {value:?} to {}: {e}",
                dir.join(file).display()
            ));
        }
    }
    failed
}

/// Whether cgroup `dir` (or a descendant) has a process: `populated 1` in its
/// `cgroup.events`. A cgroup that is gone has none.
pub(crate) fn populated(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(text) => key_value(&text, "populated") == Some(1),
        Err(e) => e.kind() != ErrorKind::NotFound && e.raw_os_error() != Some(libc::ENODEV),
    }
}

/// `SIGKILL`s every process of cgroup `dir` and its descendants (`cgroup.kill`), `setsid` and
/// double forks notwithstanding.
pub(crate) fn kill(dir: &Path) {
    if let Err(e) = fs::write(dir.join("cgroup.kill"), "1")
        && e.kind() != ErrorKind::NotFound
    {
        log::warn!("cannot kill cgroup {}: {e}", dir.display());
    }
}

/// Sends `signal` to every process of cgroup `dir` outside process group `pgid`, which the caller signals as a group (so that no process gets it twice: a
/// second `SIGINT` or `SIGTERM` means "hurry" to some programs). A process listed there is a
/// live member (or a zombie not reaped yet, which holds its pid), so its pid is no one else's.
///
/// The cgroups a program made below its own are walked too (`cgroup.kill` is recursive; the
/// stop signal must be as well). Returns every pid listed, reached by this signal or by the
/// group's, so that the caller signals none of them again.
pub(crate) fn signal(dir: &Path, pgid: i32, signal: nix::sys::signal::Signal) -> Vec<i32> {
    use nix::unistd::{Pid, getpgid};
    let mut listed = Vec::new();
    members(dir, &mut listed, 0);
    for &pid in &listed {
        if getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() != pgid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }
    listed
}

/// The processes of cgroup `dir` and of the cgroups below it (to a depth of 16), as this
/// process's PID namespace numbers them. A process of a PID namespace this one cannot see is
/// listed as 0 by the kernel: left out, since `kill(0, …)` would signal our own group.
fn members(dir: &Path, out: &mut Vec<i32>, depth: usize) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            text.lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .filter(|&p| p > 0),
        );
    }
    if depth >= 16 {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                members(&e.path(), out, depth + 1);
            }
        }
    }
}

/// How many processes of cgroup `dir` the OOM killer killed (`oom_kill` in `memory.events`);
/// 0 without the memory controller.
pub(crate) fn oom_kills(dir: &Path) -> u64 {
    fs::read_to_string(dir.join("memory.events"))
        .ok()
        .and_then(|t| key_value(&t, "oom_kill"))
        .unwrap_or(0)
}

/// The value of `key` in a flat-keyed cgroup file (`KEY VALUE` lines).
fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The space-separated words of a file (`cgroup.controllers`); none if it cannot be read.
fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|t| t.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Removes cgroup `dir` and its descendants, deepest first (a cgroup directory is removed with
/// `rmdir` once it has no process and no child; its files go with it).
pub(crate) fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// How old a base must be before it may be judged stale: a younger one may be one that a warden
/// (in another PID namespace, where its pid means nothing to us) is still setting up.
const SETTING_UP: Duration = Duration::from_secs(1);

/// The pid a base's name `warden-PID` or `warden-PID-N` holds (as its warden saw itself), if it
/// is one.
fn base_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("warden-")?;
    let (pid, n) = rest.split_once('-').unwrap_or((rest, "2"));
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Whether `base` is a warden's base that no warden uses any more: it has `programs`, its
/// `supervisor` leaf holds no process (a live warden is in it, with its guard, whatever PID
/// namespace it sees from), and it is older than [`SETTING_UP`].
fn stale(base: &Path) -> bool {
    let supervisor = base.join("supervisor");
    // A warden's shape: its two children; or its leaf alone, as a warden that ran as
    // `[daemon] user` leaves it at its stop (it may not move itself out to remove it).
    let shaped = base.join("programs").is_dir()
        || (supervisor.is_dir()
            && fs::read_dir(base).is_ok_and(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .count()
                    == 1
            }));
    shaped
        && !populated(&supervisor)
        && fs::metadata(base)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= SETTING_UP))
}

/// Kills and removes every `warden-PID` base in `parent` that no warden uses ([`stale`]): what
/// a warden killed together with its guard left. Judged by the cgroups, not by the pid in the
/// name, which another PID namespace's warden may share. Waits for the killed cgroups to empty
/// (bounded, 1 s). Returns one line per base, for the log.
pub(crate) fn clean_stale(parent: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for e in entries.flatten() {
        // A warden's base by its name (the pid in it is the one its warden saw itself as, which
        // may be anyone's here): judged by its cgroups below.
        if e.file_name().to_str().and_then(base_pid).is_none() {
            continue;
        }
        let base = e.path();
        if !stale(&base) {
            continue;
        }
        let programs = base.join("programs");
        let left = populated(&programs);
        if left {
            kill(&programs);
            let deadline = Instant::now() + Duration::from_secs(1);
            while populated(&programs) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        remove_tree(&base);
        lines.push(if left {
            format!(
                "killed what a warden that is gone left in {} (its supervisor cgroup holds no \
                 process) and removed it",
                base.display()
            )
        } else {
            format!(
                "removed {}: its warden is gone (its supervisor cgroup holds no process)",
                base.display()
            )
        });
    }
    lines
}

/// Makes (with `mkdir`) warden's base in `parent`: `warden-PID`, or `warden-PID-2`, … when
/// that name exists — a warden of another PID namespace with the same pid, or one left too
/// recently to be judged stale. Making the directory is the claim: two wardens never share a
/// base.
fn make_base(parent: &Path, pid: u32, mkdir: MakeDir<'_>) -> io::Result<PathBuf> {
    for n in 1..=64 {
        let base = match n {
            1 => parent.join(format!("warden-{pid}")),
            n => parent.join(format!("warden-{pid}-{n}")),
        };
        match mkdir(&base) {
            Ok(()) => return Ok(base),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(ErrorKind::AlreadyExists))
}

/// How cgroup directories are made: `fs::create_dir`, or in unit tests a fake that also makes
/// the interface files the kernel would.
pub(crate) type MakeDir<'a> = &'a dyn Fn(&Path) -> io::Result<()>;

/// A cgroup's memory use, in bytes (the `/metrics` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `memory.current`.
    pub(crate) current: Option<u64>,
    /// `memory.peak` (Linux 5.19).
    pub(crate) peak: Option<u64>,
}

/// Cgroup `dir`'s memory use now and at its peak, each `None` where its file is absent (no
/// memory controller; `memory.peak` before Linux 5.19) or holds no number. Read when asked:
/// nothing polls it.
pub(crate) fn memory(dir: &Path) -> Memory {
    let read = |file: &str| fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok();
    Memory {
        current: read("memory.current"),
        peak: read("memory.peak"),
    }
}

#[cfg(test)]
mod tests;
