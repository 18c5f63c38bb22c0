//! The deploy bench's second load: `wrk` (Debian's), bounded (`-t1 -c CONNECTIONS -d SECS
//! --latency`), as fast as it goes, and its summary parsed. wrk counts for the whole run only:
//! its p99 covers the seconds before and after the restart too, and it cannot say which request
//! failed when; the bench's own client ([`crate::load`]) can.
//!
//! It must not interpret the figures beyond parsing them.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What wrk printed: requests answered, socket errors by kind, non-2xx/3xx answers, p99.
#[derive(Default, Clone)]
pub struct WrkFigures {
    pub requests: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub non2xx: u64,
    pub p99_ms: Option<f64>,
}

impl WrkFigures {
    /// Requests that failed: socket errors of every kind and answers other than 2xx or 3xx.
    pub fn failed(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.non2xx
    }
}

/// A running wrk and where its output goes.
pub struct Wrk {
    child: Child,
    out: PathBuf,
    seconds: u64,
}

impl Wrk {
    /// The command line, for the header.
    pub fn describe(connections: usize, seconds: u64) -> String {
        format!("wrk -t1 -c{connections} -d{seconds}s --latency http://ADDR/")
    }

    /// Starts `wrk` against `addr` for `seconds`, its output to `dir/wrk.out`.
    pub fn start(
        wrk: &Path,
        addr: SocketAddr,
        connections: usize,
        seconds: u64,
        dir: &Path,
    ) -> Result<Wrk, String> {
        let out = dir.join("wrk.out");
        let file = File::create(&out).map_err(|e| format!("cannot create: {e}"))?;
        let err = file.try_clone().map_err(|e| format!("dup: {e}"))?;
        let child = Command::new(wrk)
            .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
            .arg("--latency")
            .arg(format!("http://{addr}/"))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", wrk.display()))?;
        Ok(Wrk {
            child,
            out,
            seconds,
        })
    }

    /// Waits for wrk to end (bounded: its duration and 10 s more) and parses what it printed.
    pub fn finish(mut self) -> Result<WrkFigures, String> {
        let deadline = Instant::now() + Duration::from_secs(self.seconds + 10);
        let status = loop {
            if let Some(s) = self.child.try_wait().map_err(|e| format!("wait: {e}"))? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err("wrk overran its duration; killed".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        if !status.success() {
            return Err(format!("wrk {status}: {}", text.trim()));
        }
        parse(&text).ok_or_else(|| format!("cannot read wrk's output: {}", text.trim()))
    }
}

/// wrk's summary: `N requests in …`, `Socket errors: connect A, read B, write C, timeout D`,
/// `Non-2xx or 3xx responses: E` and the `99%` line of `--latency`.
fn parse(text: &str) -> Option<WrkFigures> {
    let mut f = WrkFigures::default();
    let mut found = false;
    for line in text.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            f.requests = n.trim().parse().ok()?;
            found = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (kind, n) = (words.next()?, words.next()?.parse().ok()?);
                match kind {
                    "connect" => f.connect = n,
                    "read" => f.read = n,
                    "write" => f.write = n,
                    "timeout" => f.timeout = n,
                    _ => {}
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            f.non2xx = n.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("99%") {
            f.p99_ms = millis(v.trim());
        }
    }
    found.then_some(f)
}

/// wrk's `1.23ms`, `456.00us`, `2.00s`, `1.00m` in ms.
fn millis(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(n * scale)
}
