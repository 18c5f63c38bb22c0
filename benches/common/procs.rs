//! Processes as the benches see them, through `/proc`: liveness, the process tree, argv
//! markers, the counters the figures read (context switches, CPU time, PSS), reaping, and
//! killing by pid everything a run left behind.
//!
//! It must not signal anything but the bench's own descendants and the processes whose argv
//! holds the bench's marker; never by name.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

/// CLOCK_MONOTONIC in ns: the clock the bench's C child stamps its start with.
pub fn mono_ns() -> i64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
/// parentheses): field 3 of proc(5), the state, is index 0.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// State letter and parent pid from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: the fields start after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `/proc/PID` exists and is neither a zombie nor dead.
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X')
}

/// utime + stime of `pid` in clock ticks (`/proc/PID/stat` fields 14 and 15): every thread,
/// not its children.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    user_system_ticks(pid).map(|(u, s)| u + s)
}

/// utime and stime of `pid` in clock ticks, apart: time in the program, time in the kernel.
pub fn user_system_ticks(pid: i32) -> Option<(u64, u64)> {
    let f = stat_fields(pid)?;
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), for [`cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

/// Voluntary + nonvoluntary context switches over every thread of `pid`.
pub fn ctx_switches(pid: i32) -> Option<u64> {
    ctx_switches_split(pid).map(|(v, n)| v + n)
}

/// Voluntary and nonvoluntary context switches over every thread of `pid`: a voluntary one is a
/// sleep (the thread waited for something, then woke), a nonvoluntary one a preemption (on a
/// busy machine, other work's doing as much as the thread's).
pub fn ctx_switches_split(pid: i32) -> Option<(u64, u64)> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut voluntary, mut nonvoluntary) = (0, 0);
    for t in tasks.flatten() {
        let status = fs::read_to_string(t.path().join("status")).ok()?;
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                voluntary += v.trim().parse::<u64>().ok()?;
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                nonvoluntary += v.trim().parse::<u64>().ok()?;
            }
        }
    }
    Some((voluntary, nonvoluntary))
}

/// `Pss:` of `/proc/PID/smaps_rollup`, in kB.
pub fn pss_kb(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A live process and its parent.
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
}

/// Every live process.
pub fn procs() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (state, ppid) = proc_stat(pid)?;
            (state != 'Z' && state != 'X').then_some(Proc { pid, ppid })
        })
        .collect()
}

/// Parent pid → child pids, over `ps`.
pub fn children_map(ps: &[Proc]) -> HashMap<i32, Vec<i32>> {
    let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in ps {
        kids.entry(p.ppid).or_default().push(p.pid);
    }
    kids
}

/// Every process (zombies included) whose parent is this bench: the bench is a subreaper, so
/// orphans land here.
pub fn our_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == me))
        .collect()
}

pub fn cmdline(pid: i32) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// Whether `marker` is a whole argument of `pid`'s argv.
pub fn has_marker(pid: i32, marker: &str) -> bool {
    // A marker is followed by the end of its argument (NUL), so "…-1" does not match "…-12".
    let mut needle = marker.as_bytes().to_vec();
    needle.push(0);
    cmdline(pid)
        .windows(needle.len())
        .any(|w| w == needle.as_slice())
}

/// Whether some argument of `pid`'s argv contains `prefix`.
pub fn has_prefix(pid: i32, prefix: &str) -> bool {
    cmdline(pid)
        .windows(prefix.len())
        .any(|w| w == prefix.as_bytes())
}

/// Live processes whose argv holds `marker` as a whole argument: the children of one run.
pub fn marker_pids(marker: &str) -> Vec<i32> {
    procs()
        .into_iter()
        .map(|p| p.pid)
        .filter(|&p| has_marker(p, marker))
        .collect()
}

/// `main` and its descendants, minus the processes whose argv holds `marker` and whatever runs
/// under them: a supervisor's own processes without the children it supervises.
pub fn tree_without_marked(main: i32, marker: &str) -> Vec<i32> {
    let kids = children_map(&procs());
    let mut own = Vec::new();
    let mut todo = vec![main];
    while let Some(p) = todo.pop() {
        if has_marker(p, marker) {
            continue;
        }
        own.push(p);
        todo.extend(kids.get(&p).into_iter().flatten());
    }
    own.sort_unstable();
    own
}

/// Reaps every dead child of the bench (orphans come here: the bench is a subreaper).
pub fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// SIGKILLs, by pid, every descendant of the bench and every process whose argv contains
/// `marker` (children that escaped the tree), until none is left (bounded, 5 s), reaping as it
/// goes.
pub fn kill_everything(marker: Option<&str>) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        reap();
        let ps = procs();
        let kids = children_map(&ps);
        let mut targets: HashSet<i32> = HashSet::new();
        let mut todo: Vec<i32> = kids.get(&me).cloned().unwrap_or_default();
        while let Some(p) = todo.pop() {
            if targets.insert(p) {
                todo.extend(kids.get(&p).into_iter().flatten());
            }
        }
        if let Some(marker) = marker {
            targets.extend(
                ps.iter()
                    .map(|p| p.pid)
                    .filter(|&p| p != me && has_prefix(p, marker)),
            );
        }
        if targets.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("bench: could not kill every process: {targets:?} remain");
            return;
        }
        for &p in &targets {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills whatever the bench started when it ends, however it ends ([`kill_everything`], then
/// a last reap).
pub struct KillOnDrop(pub Option<String>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_everything(self.0.as_deref());
        reap();
    }
}

/// CPU time of every thread of `pid`, in ns: the sum of the first field of
/// `/proc/PID/task/TID/schedstat` (exact, where the kernel has schedstats), else utime + stime
/// of `/proc/PID/stat` (clock ticks, 10 ms each at the usual 100 Hz).
pub fn cpu_ns(pid: i32) -> Option<u64> {
    let exact = fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .and_then(|tasks| {
            let mut sum = 0u64;
            for t in tasks.flatten() {
                let text = fs::read_to_string(t.path().join("schedstat")).ok()?;
                sum += text.split_whitespace().next()?.parse::<u64>().ok()?;
            }
            Some(sum)
        });
    exact.or_else(|| cpu_ticks(pid).map(|t| t * 1_000_000_000 / ticks_per_second()))
}
