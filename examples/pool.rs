//! The job pool, scenario by scenario: `pool --scenario NAME [--dir DIR]`.
//!
//! Each scenario builds a pool, drives it the way a user would (including killing workers from
//! the outside), checks what it sees, and prints `key=value` lines on stdout for
//! `tests/it/pool.rs`, ending with `pids=...` (every worker and fork server pid it saw, which must
//! all be gone once this program has exited) and `result=ok` (or `result=FAIL ...`). Pool logs
//! (restarts, captured worker output) go to stderr. `pool --list` lists the scenarios.
//!
//! The pools here are built as the first thing their scenario does — before any thread — which
//! is what [`StartMethod::Fork`] requires, and what [`StartMethod::ExecSelf`] advises: its
//! workers re-run this `main` with the same arguments up to the same `build()` call.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warden::pool::{ExitStatus, JobError, JobOptions, Outcome, Policy, Pool, StartMethod};

/// What the test handler can be asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Task {
    /// `x * x + 1`.
    Square(u64),
    /// Sleep, then return `id`.
    Sleep { ms: u64, id: u64 },
    /// Write our pid to `path` (atomically), sleep, then return `id`.
    SleepPid { ms: u64, id: u64, path: String },
    /// Return our pid.
    Pid,
    /// Sleep, then return our pid.
    SleepThenPid(u64),
    /// Panic with "boom".
    Panic,
    /// Leave the process with this code, mid-job.
    Exit(i32),
    /// Print a line on stdout, then return our pid.
    Print(String),
    /// Fail with the handler's error.
    Fail(String),
    /// Leak this many MiB (touched, so resident), sleep 20 ms, return our pid.
    Leak(usize),
}

fn handle(task: Task) -> Result<u64, String> {
    match task {
        Task::Square(x) => Ok(x * x + 1),
        Task::Sleep { ms, id } => {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(id)
        }
        Task::SleepPid { ms, id, path } => {
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, std::process::id().to_string()).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(id)
        }
        Task::Pid => Ok(u64::from(std::process::id())),
        Task::SleepThenPid(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(u64::from(std::process::id()))
        }
        Task::Panic => panic!("boom"),
        Task::Exit(code) => std::process::exit(code),
        Task::Print(s) => {
            println!("{s}");
            Ok(u64::from(std::process::id()))
        }
        Task::Fail(s) => Err(s),
        Task::Leak(mib) => {
            std::mem::forget(vec![1u8; mib << 20]);
            std::thread::sleep(Duration::from_millis(20));
            Ok(u64::from(std::process::id()))
        }
    }
}

type TaskPool = Pool<Task, u64, String>;
type Handler = fn(Task) -> Result<u64, String>;
type TaskBuilder = warden::pool::PoolBuilder<Task, u64, String, Handler>;
type Outcomes = Arc<Mutex<Vec<Option<Outcome<u64, String>>>>>;

/// What a scenario reports.
struct Report {
    pids: BTreeSet<i32>,
    failures: Vec<String>,
}

impl Report {
    fn new() -> Report {
        Report {
            pids: BTreeSet::new(),
            failures: Vec::new(),
        }
    }

    fn kv(&self, key: &str, value: impl std::fmt::Display) {
        println!("{key}={value}");
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            eprintln!("CHECK FAILED: {what}");
            self.failures.push(what);
        }
    }

    /// Records every pid the pool shows now.
    fn see<J, O, E>(&mut self, pool: &Pool<J, O, E>)
    where
        J: Serialize + for<'de> Deserialize<'de> + Send + 'static,
        O: Serialize + for<'de> Deserialize<'de> + Send + 'static,
        E: Serialize + for<'de> Deserialize<'de> + Send + 'static,
    {
        let s = pool.stats();
        self.pids.extend(s.worker_pids.iter().flatten());
        self.pids.extend(s.fork_server_pid);
    }

    fn finish(self) -> ! {
        let pids: Vec<String> = self.pids.iter().map(|p| p.to_string()).collect();
        println!("pids={}", pids.join(","));
        if self.failures.is_empty() {
            println!("result=ok");
            std::process::exit(0)
        } else {
            println!("result=FAIL {}", self.failures.join("; "));
            std::process::exit(1)
        }
    }
}

fn builder(name: &str) -> TaskBuilder {
    Pool::builder(name, handle as Handler)
}

fn build(b: TaskBuilder) -> TaskPool {
    match b.build() {
        Ok(p) => p,
        Err(e) => {
            println!("result=FAIL build: {e}");
            std::process::exit(1)
        }
    }
}

/// Waits for `f` to hold, at most `limit`.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

fn read_pid(path: &str, limit: Duration) -> Option<i32> {
    let mut pid = None;
    wait_until(limit, || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.parse().ok());
        pid.is_some()
    });
    pid
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
}

fn sigkill() -> ExitStatus {
    ExitStatus::Signal {
        signal: 9,
        core_dumped: false,
    }
}

fn wait_ok(h: warden::pool::JobHandle<u64, String>) -> Outcome<u64, String> {
    match h.wait_timeout(Duration::from_secs(20)) {
        Ok(o) => o,
        Err(_) => Err(JobError::Fatal("example: no outcome within 20 s".into())),
    }
}

/// Results equal a sequential run, for 100,000 jobs, through `map` and `imap_unordered`.
fn sequential(mut r: Report) -> Report {
    let pool = build(builder("seq").workers(2));
    let n = 100_000u64;
    let expect: Vec<u64> = (0..n).map(|x| x * x + 1).collect();
    let t = Instant::now();
    let got = pool.map((0..n).map(Task::Square)).expect("open");
    r.kv("map_ms", t.elapsed().as_millis());
    let bad = got
        .iter()
        .zip(&expect)
        .filter(|(g, e)| g.as_ref().ok() != Some(e))
        .count();
    r.kv("map_mismatches", bad);
    r.check(
        got.len() == n as usize && bad == 0,
        "map results differ from a sequential run",
    );
    let mut by_index = vec![None; n as usize];
    let mut count = 0;
    for (i, o) in pool.imap_unordered((0..n).map(Task::Square)).expect("open") {
        by_index[i] = o.ok();
        count += 1;
    }
    let bad = by_index
        .iter()
        .zip(&expect)
        .filter(|(g, e)| g.as_ref() != Some(e))
        .count();
    r.kv("imap_count", count);
    r.kv("imap_mismatches", bad);
    r.check(count == n && bad == 0, "imap_unordered results differ");
    let s = pool.stats();
    r.kv("completed", s.completed);
    r.check(s.worker_deaths == 0, "no worker should die");
    r.see(&pool);
    pool.close();
    pool.join();
    r
}

/// `map` keeps input order although jobs finish out of order; so does `map_chunked`.
fn map_order(mut r: Report) -> Report {
    let pool = build(builder("order").workers(2).pipeline(4));
    // Varying durations so that completion order differs from input order.
    let jobs: Vec<Task> = (0..60u64)
        .map(|i| Task::Sleep {
            ms: (i * 7) % 11,
            id: i,
        })
        .collect();
    let got = pool.map(jobs.clone()).expect("open");
    let ids: Vec<u64> = got
        .iter()
        .map(|o| *o.as_ref().unwrap_or(&u64::MAX))
        .collect();
    r.check(
        ids == (0..60).collect::<Vec<_>>(),
        format!("map order: {ids:?}"),
    );
    for chunk in [0usize, 1, 7, 100] {
        let got = pool.map_chunked(jobs.clone(), chunk).expect("open");
        let ids: Vec<u64> = got
            .iter()
            .map(|o| *o.as_ref().unwrap_or(&u64::MAX))
            .collect();
        r.check(
            ids == (0..60).collect::<Vec<_>>(),
            format!("map_chunked({chunk}) order: {ids:?}"),
        );
    }
    let big = pool
        .map_chunked((0..10_000u64).map(Task::Square), 0)
        .expect("open");
    r.check(
        big.iter()
            .enumerate()
            .all(|(i, o)| *o == Ok((i as u64) * (i as u64) + 1)),
        "map_chunked of 10,000",
    );
    // Handler errors and panics inside a chunk stay per job.
    let mixed = vec![
        Task::Square(2),
        Task::Fail("nope".into()),
        Task::Panic,
        Task::Square(3),
    ];
    let got = pool.map_chunked(mixed, 4).expect("open");
    r.check(got[0] == Ok(5), "chunk item 0");
    r.check(
        got[1] == Err(JobError::Handler("nope".into())),
        "chunk item 1",
    );
    r.check(
        matches!(&got[2], Err(JobError::Panicked(m)) if m.contains("boom")),
        "chunk item 2",
    );
    r.check(got[3] == Ok(10), "chunk item 3");
    r.kv("checked", "order");
    r.see(&pool);
    r
}

/// SIGKILL of a worker in the middle of a job: that job alone fails, every callback fires once.
fn kill_busy(mut r: Report, dir: &str) -> Report {
    let pool = build(builder("killbusy").workers(2).pipeline(8));
    pool.start();
    let total = 40u64;
    let victim = 5u64;
    let path = format!("{dir}/victim.pid");
    let calls: Arc<Vec<AtomicU32>> = Arc::new((0..total + 20).map(|_| AtomicU32::new(0)).collect());
    let outcomes: Outcomes = Arc::new(Mutex::new(vec![None; (total + 20) as usize]));
    let resolved_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let submit = |i: u64, task: Task| {
        let (calls, outcomes, resolved_at) = (calls.clone(), outcomes.clone(), resolved_at.clone());
        pool.apply_async(task, move |o| {
            calls[i as usize].fetch_add(1, Ordering::SeqCst);
            if i == victim {
                *resolved_at.lock().unwrap() = Some(Instant::now());
            }
            outcomes.lock().unwrap()[i as usize] = Some(o);
        })
        .expect("open");
    };
    for i in 0..total {
        let task = if i == victim {
            Task::SleepPid {
                ms: 30_000,
                id: i,
                path: path.clone(),
            }
        } else {
            Task::Sleep { ms: 40, id: i }
        };
        submit(i, task);
    }
    let Some(pid) = read_pid(&path, Duration::from_secs(10)) else {
        r.check(false, "the victim job never started");
        return r;
    };
    r.pids.insert(pid);
    r.see(&pool);
    let killed_at = Instant::now();
    kill9(pid);
    let all = wait_until(Duration::from_secs(20), || {
        (0..total).all(|i| calls[i as usize].load(Ordering::SeqCst) >= 1)
    });
    r.check(all, "not every callback fired");
    if let Some(t) = *resolved_at.lock().unwrap() {
        r.kv("resolve_us", t.duration_since(killed_at).as_micros());
    }
    // Later jobs succeed.
    for i in total..total + 20 {
        submit(i, Task::Square(i));
    }
    let later = wait_until(Duration::from_secs(20), || {
        (total..total + 20).all(|i| calls[i as usize].load(Ordering::SeqCst) >= 1)
    });
    r.check(later, "later jobs did not all complete");
    pool.close();
    pool.join();
    let outcomes = outcomes.lock().unwrap();
    for i in 0..total + 20 {
        let n = calls[i as usize].load(Ordering::SeqCst);
        r.check(n == 1, format!("callback of job {i} fired {n} times"));
        let o = &outcomes[i as usize];
        if i == victim {
            r.kv("victim", format!("{o:?}"));
            r.check(
                *o == Some(Err(JobError::WorkerDied(sigkill()))),
                "victim outcome",
            );
        } else if i < total {
            r.check(*o == Some(Ok(i)), format!("job {i}: {o:?}"));
        } else {
            r.check(*o == Some(Ok(i * i + 1)), format!("later job {i}: {o:?}"));
        }
    }
    let s = pool.stats();
    r.kv("requeued", s.requeued);
    r.kv("worker_deaths", s.worker_deaths);
    r.kv("moved", s.moved);
    r.check(s.worker_deaths == 1, "exactly one worker death");
    r
}

/// SIGKILL of an idle worker: nothing is lost, nothing hangs, the worker is replaced.
fn kill_idle(mut r: Report) -> Report {
    let pool = build(builder("killidle").workers(2));
    let warm = pool.map((0..10).map(Task::Square)).expect("open");
    r.check(warm.iter().all(|o| o.is_ok()), "warm-up");
    let before = pool.stats().worker_pids;
    r.see(&pool);
    let victim = before[0].expect("worker 0 is up");
    kill9(victim);
    let replaced = wait_until(Duration::from_secs(10), || {
        let s = pool.stats();
        s.worker_deaths == 1 && s.worker_pids[0].is_some_and(|p| p != victim)
    });
    r.check(replaced, "the idle worker was not replaced");
    r.see(&pool);
    let got = pool.map((0..100).map(Task::Square)).expect("open");
    let lost = got.iter().filter(|o| o.is_err()).count();
    r.kv("lost", lost);
    r.check(lost == 0, "jobs failed after an idle worker died");
    r.kv("worker_deaths", pool.stats().worker_deaths);
    r.see(&pool);
    r
}

/// A panicking handler: the job's outcome is `Panicked`, the same worker serves the next job.
fn panic(mut r: Report) -> Report {
    let pool = build(builder("panic").workers(1).pipeline(1));
    let before = wait_ok(pool.submit(Task::Pid).expect("open"));
    let p = wait_ok(pool.submit(Task::Panic).expect("open"));
    let after = wait_ok(pool.submit(Task::Pid).expect("open"));
    r.kv("panic", format!("{p:?}"));
    r.check(
        matches!(&p, Err(JobError::Panicked(m)) if m == "boom"),
        "panic outcome",
    );
    r.check(
        before.is_ok() && before == after,
        format!("same worker: {before:?} {after:?}"),
    );
    let e = wait_ok(pool.submit(Task::Fail("bad input".into())).expect("open"));
    r.check(
        e == Err(JobError::Handler("bad input".into())),
        "handler error",
    );
    r.check(pool.stats().worker_deaths == 0, "no death");
    r.see(&pool);
    r
}

/// Per-job timeouts (pool default and per-submit override); the pool carries on.
fn timeout(mut r: Report) -> Report {
    let pool = build(
        builder("timeout")
            .workers(1)
            .pipeline(4)
            .job_timeout(Some(Duration::from_millis(300))),
    );
    let t = Instant::now();
    let slow = pool
        .submit(Task::Sleep { ms: 20_000, id: 1 })
        .expect("open");
    let next = pool.submit(Task::Square(4)).expect("open");
    let o = wait_ok(slow);
    let took = t.elapsed();
    r.kv("timed_out_ms", took.as_millis());
    r.check(o == Err(JobError::TimedOut), format!("slow job: {o:?}"));
    r.check(took < Duration::from_secs(5), "the timeout fired late");
    r.check(
        wait_ok(next) == Ok(17),
        "the job queued behind the slow one",
    );
    // Per-job override: shorter and none.
    let short = pool
        .submit_with(
            Task::Sleep { ms: 5_000, id: 2 },
            JobOptions::new().timeout(Some(Duration::from_millis(100))),
        )
        .expect("open");
    r.check(
        wait_ok(short) == Err(JobError::TimedOut),
        "override: shorter",
    );
    let none = pool
        .submit_with(
            Task::Sleep { ms: 500, id: 3 },
            JobOptions::new().timeout(None),
        )
        .expect("open");
    r.check(wait_ok(none) == Ok(3), "override: no timeout");
    r.check(
        wait_ok(pool.submit(Task::Square(2)).expect("open")) == Ok(5),
        "carries on",
    );
    let s = pool.stats();
    r.kv("timed_out", s.timed_out);
    r.check(
        s.timed_out == 2 && s.fatal.is_none(),
        format!("stats: {s:?}"),
    );
    r.see(&pool);
    r
}

/// `close` + `join` return after the last job; submitting after `close` gives the job back.
fn close_join(mut r: Report) -> Report {
    let pool = build(builder("closejoin").workers(2).pipeline(2));
    let done = Arc::new(AtomicU32::new(0));
    for i in 0..50 {
        let done = done.clone();
        pool.apply_async(Task::Sleep { ms: 10, id: i }, move |o| {
            if o.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .expect("open");
    }
    r.see(&pool);
    pool.close();
    match pool.submit(Task::Square(1)) {
        Err(warden::pool::Closed(Task::Square(1))) => {}
        other => r.check(false, format!("submit after close: {other:?}")),
    }
    let t = Instant::now();
    pool.join();
    r.kv("join_ms", t.elapsed().as_millis());
    let n = done.load(Ordering::SeqCst);
    r.kv("done_at_join", n);
    r.check(n == 50, "join returned before every job");
    let s = pool.stats();
    r.check(
        s.worker_pids.iter().all(Option::is_none),
        "workers still up after join",
    );
    r
}

/// `terminate` cancels every unfinished job and leaves no worker.
fn terminate(mut r: Report) -> Report {
    let pool = build(builder("terminate").workers(1).pipeline(2));
    let handles: Vec<_> = (0..10)
        .map(|i| pool.submit(Task::Sleep { ms: 2_000, id: i }).expect("open"))
        .collect();
    wait_until(Duration::from_secs(10), || pool.stats().busy == 1);
    r.see(&pool);
    let t = Instant::now();
    pool.terminate();
    r.kv("terminate_ms", t.elapsed().as_millis());
    r.check(t.elapsed() < Duration::from_secs(2), "terminate was slow");
    let mut cancelled = 0;
    for h in handles {
        match h.try_get() {
            Ok(Err(JobError::Cancelled)) => cancelled += 1,
            other => r.check(false, format!("after terminate: {other:?}")),
        }
    }
    r.kv("cancelled", cancelled);
    r.check(
        pool.submit(Task::Square(1)).is_err(),
        "closed after terminate",
    );
    let s = pool.stats();
    r.check(
        s.worker_pids.iter().all(Option::is_none),
        "workers up after terminate",
    );
    r.check(
        s.fork_server_pid.is_none(),
        "fork server up after terminate",
    );
    r
}

/// `imap_unordered` blocked on unfinished jobs ends when another thread terminates the pool:
/// every job comes out once (cancelled), and the iterator ends without polling for the end.
fn imap_terminate(mut r: Report) -> Report {
    let pool = build(builder("imap_terminate").workers(1).pipeline(2));
    let (seen, cancelled, elapsed) = std::thread::scope(|s| {
        let pool = &pool;
        let t = s.spawn(move || {
            wait_until(Duration::from_secs(10), || pool.stats().busy == 1);
            pool.terminate();
            Instant::now()
        });
        let mut ids = BTreeSet::new();
        let mut cancelled = 0;
        let jobs = (0..10).map(|id| Task::Sleep { ms: 2_000, id });
        for (i, o) in pool.imap_unordered(jobs).expect("open") {
            ids.insert(i);
            if matches!(o, Err(JobError::Cancelled)) {
                cancelled += 1;
            }
        }
        let ended = Instant::now();
        let terminated = t.join().expect("terminating thread");
        (
            ids.len(),
            cancelled,
            ended.saturating_duration_since(terminated),
        )
    });
    r.kv("seen", seen);
    r.kv("cancelled", cancelled);
    r.kv("end_after_terminate_ms", elapsed.as_millis());
    r.check(seen == 10, format!("{seen} of 10 jobs came out"));
    r
}

/// A full queue: `submit` blocks (bounded) and `try_submit` gives the job back.
fn backpressure(mut r: Report) -> Report {
    let pool = build(
        builder("backpressure")
            .workers(1)
            .pipeline(1)
            .queue_capacity(2),
    );
    let first = pool.submit(Task::Sleep { ms: 400, id: 1 }).expect("open");
    r.check(
        wait_until(Duration::from_secs(10), || pool.stats().in_flight == 1),
        "first job never sent",
    );
    r.see(&pool);
    let second = pool.submit(Task::Sleep { ms: 10, id: 2 }).expect("open");
    let third = pool.submit(Task::Sleep { ms: 10, id: 3 }).expect("open");
    match pool.try_submit(Task::Square(7)) {
        Err(warden::pool::TrySubmitError::Full(Task::Square(7))) => r.kv("try_submit", "full"),
        other => r.check(false, format!("try_submit on a full queue: {other:?}")),
    }
    let t = Instant::now();
    let fourth = pool.submit(Task::Square(7)).expect("open");
    let blocked = t.elapsed();
    r.kv("blocked_ms", blocked.as_millis());
    r.check(
        blocked >= Duration::from_millis(150) && blocked < Duration::from_secs(10),
        "submit did not block until there was room",
    );
    r.check(wait_ok(first) == Ok(1), "first");
    r.check(wait_ok(second) == Ok(2), "second");
    r.check(wait_ok(third) == Ok(3), "third");
    r.check(wait_ok(fourth) == Ok(50), "fourth");
    r
}

/// Recycling by job count: worker pids change, no job fails, no death counted.
fn recycle(mut r: Report) -> Report {
    let pool = build(
        builder("recycle")
            .workers(2)
            .pipeline(4)
            .max_jobs_per_worker(Some(10)),
    );
    let got = pool.map((0..100).map(|_| Task::Pid)).expect("open");
    let failed = got.iter().filter(|o| o.is_err()).count();
    let pids: BTreeSet<u64> = got
        .iter()
        .filter_map(|o| o.as_ref().ok().copied())
        .collect();
    r.pids.extend(pids.iter().map(|&p| p as i32));
    r.kv("failed", failed);
    r.kv("distinct_pids", pids.len());
    r.check(failed == 0, "jobs failed while recycling");
    r.check(pids.len() >= 10, "pids did not change every 10 jobs");
    // Every pid answered at most 10 jobs.
    let most = pids
        .iter()
        .map(|p| got.iter().filter(|o| o.as_ref().ok() == Some(p)).count())
        .max()
        .unwrap_or(0);
    r.check(most <= 10, format!("a worker answered {most} jobs"));
    let s = pool.stats();
    r.kv("recycled", s.recycled);
    r.check(
        s.worker_deaths == 0 && s.fatal.is_none(),
        format!("stats: {s:?}"),
    );
    r.see(&pool);
    r
}

/// Recycling by RSS: a leaking worker is replaced between jobs, no job fails.
fn recycle_rss(mut r: Report) -> Report {
    let pool = build(
        builder("recyclerss")
            .workers(1)
            .pipeline(2) // jobs already sent still run on the worker before it is replaced
            .max_rss_bytes(Some(48 << 20)),
    );
    let got = pool.map((0..40).map(|_| Task::Leak(4))).expect("open");
    let failed = got.iter().filter(|o| o.is_err()).count();
    let pids: BTreeSet<u64> = got
        .iter()
        .filter_map(|o| o.as_ref().ok().copied())
        .collect();
    r.pids.extend(pids.iter().map(|&p| p as i32));
    r.kv("failed", failed);
    r.kv("distinct_pids", pids.len());
    let s = pool.stats();
    r.kv("recycled", s.recycled);
    r.check(failed == 0, "jobs failed while recycling by RSS");
    r.check(
        s.recycled >= 1 && pids.len() >= 2,
        "the leaking worker was not replaced",
    );
    r.check(s.worker_deaths == 0, "a recycle is not a death");
    r.see(&pool);
    r
}

/// An idempotent job whose worker is killed is run again and succeeds.
fn retries(mut r: Report, dir: &str) -> Report {
    let pool = build(builder("retries").workers(1));
    let path = format!("{dir}/retry.pid");
    let h = pool
        .submit_with(
            Task::SleepPid {
                ms: 300,
                id: 9,
                path: path.clone(),
            },
            JobOptions::new().retries(1),
        )
        .expect("open");
    let Some(pid) = read_pid(&path, Duration::from_secs(10)) else {
        r.check(false, "the job never started");
        return r;
    };
    r.pids.insert(pid);
    r.see(&pool);
    let _ = std::fs::remove_file(&path);
    kill9(pid);
    let o = wait_ok(h);
    r.kv("outcome", format!("{o:?}"));
    r.check(o == Ok(9), "the retried job");
    let s = pool.stats();
    r.kv("retried", s.retried);
    r.check(s.retried == 1, "one retry");
    r.see(&pool);
    r
}

/// A crash loop ends in `Fatal` outcomes for new jobs, not in a hang.
fn crash_loop(mut r: Report) -> Report {
    let policy = Policy {
        max_restarts: 2,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..Policy::default()
    };
    let pool = build(builder("crashloop").workers(1).policy(policy));
    let t = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        r.see(&pool);
        outcomes.push(wait_ok(pool.submit(Task::Exit(3)).expect("open")));
    }
    for o in &outcomes {
        r.check(
            *o == Err(JobError::WorkerDied(ExitStatus::Code(3))),
            format!("{o:?}"),
        );
    }
    let o = wait_ok(pool.submit(Task::Square(1)).expect("open"));
    r.kv("after", format!("{o:?}"));
    r.check(
        matches!(&o, Err(JobError::Fatal(m)) if m.contains("crash loop")),
        "fatal outcome",
    );
    r.kv("ms", t.elapsed().as_millis());
    r.check(
        wait_until(Duration::from_secs(5), || pool.stats().fatal.is_some()),
        "stats.fatal",
    );
    r
}

/// Worker output is captured into the pool's log, tagged `NAME[INDEX]`.
fn output(mut r: Report) -> Report {
    let pool = build(builder("output").workers(1));
    let o = wait_ok(
        pool.submit(Task::Print("hello from a worker".into()))
            .expect("open"),
    );
    r.check(o.is_ok(), "print job");
    r.see(&pool);
    pool.close();
    pool.join(); // the worker exits, its pipe reaches EOF and is drained
    r
}

/// Several `Fork` pools built in a row (their I/O threads start at first use).
fn two_pools(mut r: Report) -> Report {
    let a = build(builder("first").workers(1));
    let b = Pool::builder("second", |s: String| -> Result<usize, ()> { Ok(s.len()) })
        .workers(1)
        .build();
    let b = match b {
        Ok(b) => b,
        Err(e) => {
            r.check(false, format!("second pool: {e}"));
            return r;
        }
    };
    r.check(
        wait_ok(a.submit(Task::Square(3)).expect("open")) == Ok(10),
        "first pool",
    );
    let n = b.submit("four".to_string()).expect("open").wait();
    r.check(n == Ok(4), "second pool");
    r.see(&a);
    r.see(&b);
    r
}

/// `ExecSelf` from a program that already runs several threads; kill a busy exec'd worker.
fn exec_threads(mut r: Report, dir: &str) -> Report {
    // Side effects before build() happen in every worker too: these threads just park.
    for _ in 0..3 {
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    let pool = build(
        builder("exec")
            .workers(2)
            .start_method(StartMethod::ExecSelf),
    );
    r.kv("threads_at_build", threads);
    r.check(threads >= 4, "the program should have several threads");
    let got = pool.map((0..2000).map(Task::Square)).expect("open");
    r.check(
        got.iter()
            .enumerate()
            .all(|(i, o)| *o == Ok((i as u64) * (i as u64) + 1)),
        "exec-self results",
    );
    let me = std::process::id() as u64;
    let pid = wait_ok(pool.submit(Task::Pid).expect("open"));
    r.check(
        pid.as_ref().is_ok_and(|&p| p != me),
        "the job ran in another process",
    );
    r.see(&pool);
    let path = format!("{dir}/exec.pid");
    let h = pool
        .submit(Task::SleepPid {
            ms: 30_000,
            id: 1,
            path: path.clone(),
        })
        .expect("open");
    let Some(victim) = read_pid(&path, Duration::from_secs(10)) else {
        r.check(false, "the victim job never started");
        return r;
    };
    r.pids.insert(victim);
    kill9(victim);
    let o = wait_ok(h);
    r.kv("victim", format!("{o:?}"));
    r.check(
        o == Err(JobError::WorkerDied(sigkill())),
        "exec-self victim",
    );
    let after = pool.map((0..100).map(Task::Square)).expect("open");
    r.check(after.iter().all(|o| o.is_ok()), "after the kill");
    r.see(&pool);
    pool.close();
    pool.join();
    r
}

/// `Fork` from a multi-threaded program is refused with a clear error.
fn fork_threads(mut r: Report) -> Report {
    std::thread::spawn(|| {
        loop {
            std::thread::park();
        }
    });
    match builder("forkthreads").workers(1).build() {
        Ok(_) => r.check(false, "Fork was accepted in a multi-threaded process"),
        Err(e) => {
            let msg = e.to_string();
            r.kv("error", &msg);
            r.check(
                msg.contains("ExecSelf") && msg.contains("threads"),
                "error names the way out",
            );
        }
    }
    r
}

/// Dropping a busy pool: every callback still fires exactly once (`Cancelled` for unfinished
/// jobs), the drop is quick, and nothing is left behind; an unused pool's fork server is reaped.
fn drop_busy(mut r: Report) -> Report {
    let unused = build(builder("unused").workers(2));
    r.see(&unused);
    let pool = build(builder("dropbusy").workers(2).pipeline(4));
    let calls: Arc<Vec<AtomicU32>> = Arc::new((0..100).map(|_| AtomicU32::new(0)).collect());
    let cancelled = Arc::new(AtomicU32::new(0));
    for i in 0..100u64 {
        let (calls, cancelled) = (calls.clone(), cancelled.clone());
        pool.apply_async(Task::Sleep { ms: 50, id: i }, move |o| {
            calls[i as usize].fetch_add(1, Ordering::SeqCst);
            if o == Err(JobError::Cancelled) {
                cancelled.fetch_add(1, Ordering::SeqCst);
            }
        })
        .expect("open");
    }
    wait_until(Duration::from_secs(10), || pool.stats().busy == 2);
    r.see(&pool);
    let t = Instant::now();
    drop(pool);
    drop(unused);
    r.kv("drop_ms", t.elapsed().as_millis());
    r.check(
        t.elapsed() < Duration::from_secs(3),
        "dropping the pool was slow",
    );
    let once = (0..100).all(|i| calls[i].load(Ordering::SeqCst) == 1);
    r.check(once, "every callback fires exactly once, even on drop");
    let c = cancelled.load(Ordering::SeqCst);
    r.kv("cancelled", c);
    r.check(c >= 90, "the unfinished jobs are cancelled");
    r
}

/// An output postcard cannot encode: a `#[serde(flatten)]` field is written as a map of unknown
/// length, which postcard refuses.
#[derive(Debug, Serialize, Deserialize)]
struct Flat {
    #[serde(flatten)]
    extra: std::collections::BTreeMap<String, u64>,
}

/// What the `codec` scenario's handler returns: a plain value, or one that cannot be encoded.
#[derive(Debug, Serialize, Deserialize)]
enum Shape {
    Plain(u64),
    Flat(Flat),
}

/// An output that fails to serialize is that job's `Codec` outcome: the worker lives on (the
/// same pid answers the next job), no death is counted, and more such jobs than the crash-loop
/// limit never make the pool fatal. In a chunk, only the bad items fail.
fn codec(mut r: Report) -> Report {
    let handler = |x: u64| -> Result<Shape, String> {
        if x % 2 == 1 {
            Ok(Shape::Flat(Flat {
                extra: [("x".to_string(), x)].into(),
            }))
        } else if x == 1000 {
            Ok(Shape::Plain(u64::from(std::process::id())))
        } else {
            Ok(Shape::Plain(x))
        }
    };
    let pool = match Pool::builder("codec", handler)
        .workers(1)
        .policy(Policy {
            max_restarts: 2,
            ..Policy::default()
        })
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            println!("result=FAIL build: {e}");
            std::process::exit(1)
        }
    };
    let pid = |pool: &Pool<u64, Shape, String>| match pool.submit(1000).expect("open").wait() {
        Ok(Shape::Plain(p)) => Some(p),
        _ => None,
    };
    let before = pid(&pool);
    let mut codec = 0;
    for x in 0..10u64 {
        match pool.submit(2 * x + 1).expect("open").wait() {
            Err(JobError::Codec(m)) if m.contains("cannot encode") => codec += 1,
            other => r.check(false, format!("job {}: {other:?}", 2 * x + 1)),
        }
    }
    let after = pid(&pool);
    r.kv("codec_errors", codec);
    r.check(
        before.is_some() && before == after,
        format!("same worker: {before:?} {after:?}"),
    );
    let mapped = pool.map_chunked(0..40u64, 8).expect("open");
    let bad = mapped
        .iter()
        .filter(|o| matches!(o, Err(JobError::Codec(_))))
        .count();
    let good = mapped
        .iter()
        .enumerate()
        .filter(|(i, o)| matches!(o, Ok(Shape::Plain(v)) if *v == *i as u64))
        .count();
    r.kv("chunk_codec", bad);
    r.kv("chunk_ok", good);
    let s = pool.stats();
    r.kv("deaths", s.worker_deaths);
    r.check(s.worker_deaths == 0, "no worker died");
    r.check(
        matches!(pool.submit(2).expect("open").wait(), Ok(Shape::Plain(2))),
        "the pool still serves jobs",
    );
    r.see(&pool);
    r
}

/// The state letter of `/proc/PID/stat` (`Z` for a zombie), or `None` once the pid is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A SIGKILLed fork server is reaped by the pool, while the pool lives on (fatal), and never
/// left a zombie. Six pools, each fork server killed in turn: reaping once, without waiting,
/// when the control socket closes, left it a zombie about one time in three.
fn zygote_reaped(mut r: Report) -> Report {
    let pools: Vec<TaskPool> = (0..6)
        .map(|i| build(builder(&format!("zreap{i}")).workers(1)))
        .collect();
    let mut zombies = 0;
    let mut fatal = 0;
    for pool in &pools {
        r.check(
            wait_ok(pool.submit(Task::Square(2)).expect("open")) == Ok(5),
            "a job before the kill",
        );
        r.see(pool);
        let Some(z) = pool.stats().fork_server_pid else {
            r.check(false, "no fork server pid");
            continue;
        };
        kill9(z);
        if wait_until(Duration::from_secs(10), || pool.stats().fatal.is_some()) {
            fatal += 1;
        }
        // The pool is alive (not dropped): only it can reap its fork server.
        if !wait_until(Duration::from_secs(5), || proc_state(z).is_none()) {
            zombies += 1;
            eprintln!("fork server {z}: state {:?}", proc_state(z));
        }
        let o = wait_ok(pool.submit(Task::Square(2)).expect("open"));
        r.check(
            matches!(&o, Err(JobError::Fatal(m)) if m.contains("fork server")),
            format!("after the fork server's death: {o:?}"),
        );
    }
    r.kv("fatal", fatal);
    r.kv("zombies", zombies);
    r.check(fatal == 6, "every pool went fatal");
    r.check(zombies == 0, "a fork server was left a zombie");
    r
}

/// Jobs submitted right after an idle worker is SIGKILLed: the pool may write them to the dying
/// worker's socket before it learns of the death, but that worker never started them, so they
/// are sent again, never failed with `WorkerDied`. Five rounds of 40 jobs.
fn kill_idle_submit(mut r: Report) -> Report {
    let pool = build(builder("killidlesubmit").workers(2));
    let mut lost = 0;
    let mut deaths = 0;
    for round in 0..5u64 {
        let warm = pool.map((0..10).map(Task::Square)).expect("open");
        r.check(warm.iter().all(|o| o.is_ok()), "warm-up");
        r.see(&pool);
        let Some(victim) = pool.stats().worker_pids[(round % 2) as usize] else {
            r.check(false, "worker not up");
            continue;
        };
        kill9(victim);
        let handles: Vec<_> = (0..40)
            .map(|i| pool.submit(Task::Square(i)).expect("open"))
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let o = wait_ok(h);
            if o != Ok((i * i + 1) as u64) {
                lost += 1;
                eprintln!("round {round} job {i}: {o:?}");
            }
        }
        deaths += 1;
        r.check(
            wait_until(Duration::from_secs(10), || {
                let s = pool.stats();
                s.worker_deaths == deaths && s.workers == 2
            }),
            "the killed worker was not replaced",
        );
    }
    r.see(&pool);
    let s = pool.stats();
    r.kv("lost", lost);
    r.kv("worker_deaths", s.worker_deaths);
    r.kv("requeued", s.requeued);
    r.check(lost == 0, "jobs failed after an idle worker was killed");
    r.check(s.worker_deaths == 5, "one death per round");
    r
}

/// Runs one long job then `shorts` short ones (submitted right after it) on `pool`; returns
/// (the long job's pid, the short jobs' pids, how many short jobs finished after the long one).
fn long_then_shorts(
    pool: &TaskPool,
    long_ms: u64,
    shorts: usize,
    short_ms: u64,
) -> (Option<u64>, Vec<Option<u64>>, usize) {
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    pool.apply_async(Task::SleepThenPid(long_ms), move |r| {
        o.lock().unwrap().push((usize::MAX, r.ok()));
    })
    .expect("open");
    for i in 0..shorts {
        let o = order.clone();
        pool.apply_async(Task::SleepThenPid(short_ms), move |r| {
            o.lock().unwrap().push((i, r.ok()));
        })
        .expect("open");
    }
    wait_until(Duration::from_secs(30), || {
        order.lock().unwrap().len() == shorts + 1
    });
    let order = order.lock().unwrap();
    let long_at = order.iter().position(|(i, _)| *i == usize::MAX);
    let long_pid = long_at.and_then(|at| order[at].1);
    let after_long = long_at.map_or(shorts, |at| order.len() - at - 1);
    let mut pids = vec![None; shorts];
    for &(i, pid) in order.iter().filter(|(i, _)| *i != usize::MAX) {
        pids[i] = pid;
    }
    (long_pid, pids, after_long)
}

/// Head-of-line blocking: one 1.5 s job and forty 20 ms jobs on 2 workers, with the default
/// pipeline (32). A short job may wait behind the long one only while every worker is busy:
/// here the other worker runs all forty (0.8 s) before the long one ends. Checked on a fresh
/// pool (nothing known of job lengths yet), then after 20,000 tiny jobs (which open the
/// pipeline wide), by which worker ran which job and in which order they finished.
fn head_of_line(mut r: Report) -> Report {
    let pool = build(builder("hol").workers(2));
    for phase in ["fresh", "warm"] {
        if phase == "warm" {
            let got = pool.map((0..20_000).map(Task::Square)).expect("open");
            r.check(got.iter().all(|o| o.is_ok()), "warm-up");
        }
        let t = Instant::now();
        let (long_pid, pids, after_long) = long_then_shorts(&pool, 1500, 40, 20);
        r.kv(&format!("{phase}_ms"), t.elapsed().as_millis());
        r.see(&pool);
        let on_long = pids
            .iter()
            .filter(|p| p.is_some() && **p == long_pid)
            .count();
        r.kv(&format!("{phase}_after_long"), after_long);
        r.kv(&format!("{phase}_on_long_worker"), on_long);
        r.check(long_pid.is_some(), format!("{phase}: the long job failed"));
        r.check(
            pids.iter().all(Option::is_some),
            format!("{phase}: a short job failed"),
        );
        r.check(
            after_long == 0,
            format!("{phase}: {after_long} short jobs finished after the long one"),
        );
        r.check(
            on_long == 0,
            format!("{phase}: {on_long} short jobs ran on the long job's worker"),
        );
    }
    r.kv("moved", pool.stats().moved);
    r
}

/// The start-up burst: jobs submitted right after `build()` (the workers still starting) must
/// not all land on the first worker up. Eight pools of 2 workers, four 0.5 s jobs each: every
/// worker runs two of them (1.0 s per pool, where one worker running all four took 2.0 s).
fn startup_burst(mut r: Report) -> Report {
    let pools: Vec<TaskPool> = (0..8)
        .map(|i| build(builder(&format!("burst{i}")).workers(2)))
        .collect();
    let mut unbalanced = 0;
    for (n, pool) in pools.iter().enumerate() {
        let t = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| pool.submit(Task::SleepThenPid(500)).expect("open"))
            .collect();
        let pids: Vec<u64> = handles
            .into_iter()
            .filter_map(|h| wait_ok(h).ok())
            .collect();
        r.check(pids.len() == 4, format!("pool {n}: a job failed"));
        let most = pids
            .iter()
            .map(|p| pids.iter().filter(|q| *q == p).count())
            .max()
            .unwrap_or(0);
        eprintln!("pool {n}: {} ms, pids {pids:?}", t.elapsed().as_millis());
        if most > 2 {
            unbalanced += 1;
        }
        r.see(pool);
        pool.close();
        pool.join();
    }
    r.kv("unbalanced", unbalanced);
    r.check(
        unbalanced == 0,
        format!("{unbalanced} of 8 pools ran 3 or 4 jobs on one worker"),
    );
    r
}

/// Kills slot `slot`'s worker from outside until the slot is retired; `true` once it is.
fn kill_until_retired(r: &mut Report, pool: &TaskPool, slot: usize) -> bool {
    for _ in 0..10 {
        let s = pool.stats();
        if s.retired.contains(&slot) {
            return true;
        }
        let Some(pid) = s.worker_pids[slot] else {
            wait_until(Duration::from_secs(10), || {
                let s = pool.stats();
                s.worker_pids[slot].is_some() || s.retired.contains(&slot)
            });
            continue;
        };
        r.pids.insert(pid);
        kill9(pid);
        wait_until(Duration::from_secs(10), || {
            let s = pool.stats();
            s.worker_pids[slot].is_some_and(|p| p != pid) || s.retired.contains(&slot)
        });
    }
    pool.stats().retired.contains(&slot)
}

/// A slot whose worker is killed from outside more than `max_restarts` times within the window
/// is retired for good: `stats().retired` shows it, the other slot carries on, and `revive()`
/// brings it back; with every slot retired the pool is fatal, and `revive()` makes it run jobs
/// again.
fn retire_revive(mut r: Report) -> Report {
    let policy = Policy {
        max_restarts: 2,
        restart_window: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..Policy::default()
    };
    let pool = build(builder("retire").workers(2).policy(policy));
    r.check(
        wait_ok(pool.submit(Task::Square(1)).expect("open")) == Ok(2),
        "first job",
    );
    r.see(&pool);
    let retired = kill_until_retired(&mut r, &pool, 0);
    r.check(retired, "slot 0 never retired");
    let s = pool.stats();
    r.kv("retired_one", format!("{:?}", s.retired));
    r.check(s.retired == vec![0] && s.fatal.is_none(), format!("{s:?}"));
    let got = pool
        .map((0..20).map(|_| Task::SleepThenPid(5)))
        .expect("open");
    r.check(got.iter().all(Result::is_ok), "slot 1 carries the load");
    pool.revive();
    r.check(
        wait_until(Duration::from_secs(10), || {
            let s = pool.stats();
            s.retired.is_empty() && s.workers == 2
        }),
        "slot 0 not revived",
    );
    r.see(&pool);
    let got = pool
        .map((0..20).map(|_| Task::SleepThenPid(20)))
        .expect("open");
    let pids: BTreeSet<u64> = got
        .iter()
        .filter_map(|o| o.as_ref().ok().copied())
        .collect();
    r.kv("pids_after_revive", pids.len());
    r.check(
        got.iter().all(Result::is_ok) && pids.len() == 2,
        format!("both slots serve jobs after revive: {pids:?}"),
    );
    // Every slot retired: fatal, then revived.
    for slot in [0, 1] {
        let retired = kill_until_retired(&mut r, &pool, slot);
        r.check(retired, format!("slot {slot} never retired"));
    }
    r.check(
        wait_until(Duration::from_secs(10), || pool.stats().fatal.is_some()),
        "fatal with every slot retired",
    );
    let o = wait_ok(pool.submit(Task::Square(2)).expect("open"));
    r.kv("all_retired", format!("{o:?}"));
    r.check(
        matches!(o, Err(JobError::Fatal(_))),
        "jobs fail while every slot is retired",
    );
    pool.revive();
    r.check(
        wait_until(Duration::from_secs(10), || {
            let s = pool.stats();
            s.retired.is_empty() && s.fatal.is_none() && s.workers == 2
        }),
        "the pool was not revived",
    );
    let o = wait_ok(pool.submit(Task::Square(3)).expect("open"));
    r.kv("after_revive", format!("{o:?}"));
    r.check(o == Ok(10), "jobs run again after revive");
    r.see(&pool);
    r
}

const SCENARIOS: &[&str] = &[
    "codec",
    "drop_busy",
    "sequential",
    "map_order",
    "kill_busy",
    "kill_idle",
    "panic",
    "timeout",
    "close_join",
    "imap_terminate",
    "terminate",
    "backpressure",
    "recycle",
    "recycle_rss",
    "retries",
    "crash_loop",
    "output",
    "two_pools",
    "exec_threads",
    "fork_threads",
    "zygote_reaped",
    "kill_idle_submit",
    "head_of_line",
    "startup_burst",
    "retire_revive",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        for s in SCENARIOS {
            println!("{s}");
        }
        return;
    }
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let Some(scenario) = opt("--scenario") else {
        eprintln!("usage: pool --scenario NAME [--dir DIR] | --list");
        std::process::exit(2);
    };
    let dir = opt("--dir").unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let _ = warden::log::init(&warden::log::LogConfig {
        target: warden::log::Target::Stderr,
        level: log::LevelFilter::Info,
    });
    let r = Report::new();
    // Each scenario drops its pool before returning: what `pids=` lists must then be gone.
    let r = match scenario.as_str() {
        "sequential" => sequential(r),
        "drop_busy" => drop_busy(r),
        "codec" => codec(r),
        "map_order" => map_order(r),
        "kill_busy" => kill_busy(r, &dir),
        "kill_idle" => kill_idle(r),
        "panic" => panic(r),
        "timeout" => timeout(r),
        "close_join" => close_join(r),
        "terminate" => terminate(r),
        "imap_terminate" => imap_terminate(r),
        "backpressure" => backpressure(r),
        "recycle" => recycle(r),
        "recycle_rss" => recycle_rss(r),
        "retries" => retries(r, &dir),
        "crash_loop" => crash_loop(r),
        "output" => output(r),
        "two_pools" => two_pools(r),
        "exec_threads" => exec_threads(r, &dir),
        "fork_threads" => fork_threads(r),
        "zygote_reaped" => zygote_reaped(r),
        "kill_idle_submit" => kill_idle_submit(r),
        "head_of_line" => head_of_line(r),
        "startup_burst" => startup_burst(r),
        "retire_revive" => retire_revive(r),
        other => {
            eprintln!("unknown scenario {other:?}; try --list");
            std::process::exit(2);
        }
    };
    r.finish()
}
