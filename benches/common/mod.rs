//! The harness the benchmarks share (`mod common;` in each bench): the bench `main` (the
//! `--bench` guard, the stop flag, the child subreaper and the cleanup at the end), option
//! parsing, the temp dir, the shuffling generator, percentiles, the machine description for
//! headers, and C helpers compiled at run time. Process work (`/proc`, killing what a run left)
//! is in [`procs`], table printing in [`table`].
//!
//! It must not measure anything itself: what a figure is, and when it is read, stays in the
//! bench that reports it. Not every bench uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod procs;
pub mod table;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Runs a bench and exits: the common `main`.
///
/// Without the `--bench` argument that `cargo bench` passes (as under `cargo test
/// --all-targets`), it prints a note and exits 0: minutes of benchmarking have no place in a
/// test run. Otherwise it turns SIGINT and SIGTERM into a flag `body` polls (see [`Stop`]),
/// makes the bench a child subreaper (so every process a run starts, and everything those
/// orphan, stays its child), runs `body(stop, subreaper_ok)`, prints its error if any, and
/// SIGKILLs by pid whatever is left (descendants, and processes whose argv holds `marker`) —
/// after a normal end, an error, a panic (the guard's `Drop`) or Ctrl-C.
pub fn bench_main(
    name: &str,
    marker: Option<String>,
    body: impl FnOnce(&Stop, bool) -> Result<(), String>,
) -> ! {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: skipped (no --bench argument: run it with `cargo bench --bench {name}`)");
        std::process::exit(0);
    }
    let stop = Stop::install();
    let subreaper = nix::sys::prctl::set_child_subreaper(true);
    let guard = procs::KillOnDrop(marker);
    let code = match body(&stop, subreaper.is_ok()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    };
    drop(guard);
    std::process::exit(code);
}

/// Set when the bench gets SIGINT or SIGTERM: loops check it and give up ("interrupted").
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    fn install() -> Stop {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&flag)) {
                eprintln!("bench: cannot handle signal {sig}: {e}");
            }
        }
        Stop(flag)
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err("interrupted")` once the flag is set.
    pub fn check(&self) -> Result<(), String> {
        if self.is_set() {
            Err("interrupted".into())
        } else {
            Ok(())
        }
    }
}

/// One command-line option as the bench sees it.
pub struct Arg {
    /// `--runs` for `--runs 5` and `--runs=5`; any other argument as it was given.
    pub key: String,
    /// The value of a key in `with_value` (inline or the next argument; `None` if there is
    /// none); always `None` for other keys.
    pub value: Option<String>,
}

/// The command line after the program name, minus the `--bench` cargo adds: the options, and
/// the arguments as given (for the header to echo).
pub fn parse_args(with_value: &[&str]) -> (Vec<Arg>, Vec<String>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = Vec::new();
    let mut given = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] != "--bench" {
            given.push(args[i].clone());
        }
        let (key, inline) = match args[i].split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (args[i].clone(), None),
        };
        let value = if with_value.contains(&key.as_str()) {
            inline.or_else(|| {
                i += 1;
                let v = args.get(i).cloned();
                given.extend(v.clone());
                v
            })
        } else {
            None
        };
        out.push(Arg { key, value });
        i += 1;
    }
    (out, given)
}

/// A seed from the clock, odd (xorshift needs a non-zero state).
pub fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// A small xorshift generator for the order of each round (no dependency needed).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Nearest-rank percentile; `None` for no data. Infinite values sort last.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// A private directory `$TMPDIR/warden-bench-NAME.PID`, removed at the end — after every
/// process the bench started is gone ([`procs::kill_everything`]), so nothing writes there any
/// more.
pub struct TempDir {
    path: PathBuf,
    marker: Option<String>,
}

impl TempDir {
    pub fn new(bench: &str, marker: Option<String>) -> Result<TempDir, String> {
        let path =
            std::env::temp_dir().join(format!("warden-bench-{bench}.{}", std::process::id()));
        fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir { path, marker })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        procs::kill_everything(self.marker.as_deref());
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Creates `parent/name` and returns it.
pub fn make_dir(parent: &Path, name: &str) -> Result<PathBuf, String> {
    let d = parent.join(name);
    fs::create_dir(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    Ok(d)
}

/// Names another `warden` binary to measure instead of this package's release build, to compare
/// builds (a static one, another linker, an older version) with the same bench.
pub const WARDEN_BIN_VAR: &str = "WARDEN_BENCH_BIN";

/// The `warden` binary to measure: `$WARDEN_BENCH_BIN`, or this package's release build.
pub fn warden_bin() -> PathBuf {
    std::env::var_os(WARDEN_BIN_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_warden")))
}

/// Whether `$WARDEN_BENCH_BIN` names the binary measured.
pub fn warden_bin_overridden() -> bool {
    std::env::var_os(WARDEN_BIN_VAR).is_some()
}

/// The CPU's model name from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The file's text, trimmed; `?` if it cannot be read.
pub fn read_trim(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

/// The three load averages of `/proc/loadavg`: other work on the machine skews every figure.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// "PACKAGE VERSION" from dpkg, or `None` when the package is not installed.
pub fn package_version(package: &str) -> Option<String> {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("{package} {}", String::from_utf8_lossy(&o.stdout).trim()))
}

/// Compiles `benches/NAME.c` into `dir/NAME` with `cc -O2`.
pub fn compile_c(name: &str, dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("benches/{name}.c"));
    let out = dir.join(name);
    let status = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !status.success() {
        return Err(format!("cc -O2 {} failed: {status}", src.display()));
    }
    Ok(out)
}

/// Looks for an executable in `$PATH` and the sbin directories (not always on a user's PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
