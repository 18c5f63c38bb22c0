//! The deploy bench's load: a bounded HTTP/1.1 client over loopback that records every request
//! (when it was due, when it ended, how it ended). `--connections` threads, one request per
//! connection (`Connection: close`, as the server answers), each on a fixed schedule so that
//! together they send `rate` requests per second; a thread that falls behind sends at once, and
//! the latency still counts from the moment the request was due.
//!
//! It must not interpret the records (the bench does) nor touch any process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::common::procs::mono_ns;

/// Bound on connecting, and on each read and write of a request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `200`, answered by this pid.
    Ok(u32),
    /// The connection was refused, or timed out.
    Connect,
    /// Writing the request or reading the answer failed (reset, timeout, closed with no answer).
    Read,
    /// Answered with a status other than 200.
    Status(u16),
}

/// One request: when it was due and when it ended (CLOCK_MONOTONIC, ns), and how.
pub struct Record {
    pub due: i64,
    pub end: i64,
    pub outcome: Outcome,
}

/// The client threads while they run.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts `connections` threads sending `rate` requests per second in all to `addr`.
    pub fn start(addr: SocketAddr, rate: u32, connections: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let step = 1_000_000_000 / i64::from(rate.max(1));
        let period = step * connections as i64;
        let t0 = mono_ns();
        let threads = (0..connections)
            .map(|k| {
                let stop = Arc::clone(&stop);
                let first = t0 + step * k as i64;
                std::thread::spawn(move || client(addr, first, period, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the threads (each finishes the request it is in) and returns every record.
    pub fn finish(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.threads {
            all.extend(t.join().unwrap_or_default());
        }
        all.sort_by_key(|r| r.due);
        all
    }
}

/// One connection's schedule: a request every `period` ns from `first`, until `stop`.
fn client(addr: SocketAddr, first: i64, period: i64, stop: &AtomicBool) -> Vec<Record> {
    let mut records = Vec::new();
    let mut due = first;
    while !stop.load(Ordering::Relaxed) {
        let now = mono_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos((due - now) as u64));
        }
        let (end, outcome) = request(addr);
        records.push(Record { due, end, outcome });
        due += period;
    }
    records
}

/// `GET /` on a new connection to `addr`: when it ended (CLOCK_MONOTONIC, ns) and how.
pub fn request(addr: SocketAddr) -> (i64, Outcome) {
    let outcome = exchange(addr);
    (mono_ns(), outcome)
}

fn exchange(addr: SocketAddr) -> Outcome {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
        return Outcome::Connect;
    };
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_nodelay(true);
    if conn
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return Outcome::Read;
    }
    let mut answer = Vec::with_capacity(256);
    if conn.read_to_end(&mut answer).is_err() {
        return Outcome::Read;
    }
    parse(&answer)
}

/// The outcome an answer stands for: its status, and with 200 the pid in the body (`pid=N`).
fn parse(answer: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(answer);
    let Some(code) = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
    else {
        return Outcome::Read;
    };
    if code != 200 {
        return Outcome::Status(code);
    }
    let pid = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| body.trim().strip_prefix("pid="))
        .and_then(|p| p.parse().ok());
    match pid {
        Some(pid) => Outcome::Ok(pid),
        // A 200 without its body was cut short.
        None => Outcome::Read,
    }
}

/// The records as TSV, times in ms from `t_restart`: `due`, `end`, `latency` (from `due`) and
/// `outcome` (`ok PID`, `connect`, `read`, `status CODE`), after a comment line giving the
/// moment the restart command returned.
pub fn tsv(records: &[Record], t_restart: i64, t_return: i64) -> String {
    let ms = |t: i64| (t - t_restart) as f64 / 1e6;
    let mut out = format!(
        "# restart returned at {:.3} ms\ndue\tend\tlatency\toutcome\n",
        ms(t_return)
    );
    for r in records {
        let outcome = match r.outcome {
            Outcome::Ok(pid) => format!("ok {pid}"),
            Outcome::Connect => "connect".into(),
            Outcome::Read => "read".into(),
            Outcome::Status(c) => format!("status {c}"),
        };
        out.push_str(&format!(
            "{:.3}\t{:.3}\t{:.3}\t{outcome}\n",
            ms(r.due),
            ms(r.end),
            (r.end - r.due) as f64 / 1e6
        ));
    }
    out
}

/// A client asking warden's control socket for `status` over and over, one connection per
/// request, recording when each answer came; [`ControlLoad::finish`] gives the longest time
/// between two answers.
pub struct ControlLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<i64>>,
}

impl ControlLoad {
    /// Starts asking `sock`.
    pub fn start(sock: std::path::PathBuf) -> ControlLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                if ask_status(&sock) {
                    answers.push(mono_ns());
                }
            }
            answers
        });
        ControlLoad { stop, thread }
    }

    /// Stops; the longest time between two answers, ms (`None` without two answers).
    pub fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let answers = self.thread.join().ok()?;
        answers
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1e6)
            .reduce(f64::max)
    }
}

/// One `status` request; whether a reply line came back (within 5 s).
fn ask_status(sock: &std::path::Path) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    if s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.contains("\"ok\":true")
}
