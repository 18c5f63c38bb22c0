//! `cargo bench --bench pool`: warden's job pool against Python's `multiprocessing.Pool`, side
//! by side and interleaved in one run (issue 5, section 4), plus a raw socketpair ping-pong as
//! the physical limit of this machine.
//!
//! Both pools have 2 workers and run `x + 1` (or echo 64 KiB). Each round runs every figure on
//! warden, then the same figure in `python3 benches/pool_py.py`; the table shows the median
//! over rounds (`POOL_BENCH_ROUNDS`, default 3). The pools are built first, while this process
//! is single-threaded (the `Fork` start method requires it).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use warden::pool::{Policy, Pool, StartMethod};

const WORKERS: usize = 2;

#[derive(Default, Clone, Copy, Debug)]
struct Figure {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

/// One job in flight: submit, wait, repeat.
fn one_in_flight(pool: &Pool<u64, u64, ()>, n: u64) -> Figure {
    let mut lat = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let r = pool.submit(i).unwrap().wait();
        lat.push(t.elapsed());
        assert_eq!(r, Ok(i + 1));
    }
    let el = t0.elapsed();
    lat.sort();
    Figure {
        rate: n as f64 / el.as_secs_f64(),
        p50_us: pct(&lat, 0.5),
        p99_us: pct(&lat, 0.99),
    }
}

/// Many in flight through callbacks (`apply_async`), waiting for the last one.
fn many_apply_async(pool: &Pool<u64, u64, ()>, n: u64) -> Figure {
    let left = Arc::new((Mutex::new(n), Condvar::new()));
    let sum = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    for i in 0..n {
        let (left, sum) = (left.clone(), sum.clone());
        pool.apply_async(i, move |o| {
            sum.fetch_add(o.unwrap(), Ordering::Relaxed);
            let mut l = left.0.lock().unwrap();
            *l -= 1;
            if *l == 0 {
                left.1.notify_all();
            }
        })
        .unwrap();
    }
    let mut l = left.0.lock().unwrap();
    while *l > 0 {
        l = left.1.wait(l).unwrap();
    }
    let el = t0.elapsed();
    assert_eq!(sum.load(Ordering::Relaxed), n * (n + 1) / 2);
    Figure {
        rate: n as f64 / el.as_secs_f64(),
        ..Figure::default()
    }
}

/// Many in flight through handles: submit all, then wait for each.
fn many_submit(pool: &Pool<u64, u64, ()>, n: u64) -> Figure {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n).map(|i| pool.submit(i).unwrap()).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.wait(), Ok(i as u64 + 1));
    }
    Figure {
        rate: n as f64 / t0.elapsed().as_secs_f64(),
        ..Figure::default()
    }
}

fn imap(pool: &Pool<u64, u64, ()>, n: u64) -> Figure {
    let t0 = Instant::now();
    let count = pool.imap_unordered(0..n).unwrap().count();
    assert_eq!(count as u64, n);
    Figure {
        rate: n as f64 / t0.elapsed().as_secs_f64(),
        ..Figure::default()
    }
}

fn map_default_chunks(pool: &Pool<u64, u64, ()>, n: u64) -> Figure {
    let t0 = Instant::now();
    let r = pool.map_chunked(0..n, 0).unwrap();
    let el = t0.elapsed();
    assert_eq!(r.last(), Some(&Ok(n)));
    Figure {
        rate: n as f64 / el.as_secs_f64(),
        ..Figure::default()
    }
}

fn bytes_one_in_flight(pool: &Pool<ByteBuf, ByteBuf, ()>, n: u64) -> Figure {
    let payload: Vec<u8> = (0..65536).map(|i| i as u8).collect();
    let t0 = Instant::now();
    for _ in 0..n {
        let r = pool.submit(ByteBuf::from(payload.clone())).unwrap().wait();
        assert_eq!(r.map(|b| b.len()), Ok(65536));
    }
    Figure {
        rate: n as f64 / t0.elapsed().as_secs_f64(),
        ..Figure::default()
    }
}

/// One 1.5 s job, then forty 20 ms jobs, on 2 workers (issue 12's head-of-line case): jobs/s
/// over the wall time from the first submit to the last outcome. With no head-of-line blocking
/// the wall time is the long job's, 1.5 s (41 jobs / 1.5 s = 27 /s).
fn long_and_short(pool: &Pool<u64, u64, ()>) -> Figure {
    let t0 = Instant::now();
    let mut handles = vec![pool.submit(1500).unwrap()];
    handles.extend((0..40).map(|_| pool.submit(20).unwrap()));
    for h in handles {
        assert!(h.wait().is_ok());
    }
    Figure {
        rate: 41.0 / t0.elapsed().as_secs_f64(),
        ..Figure::default()
    }
}

/// Four 0.5 s jobs submitted to a pool at its first use, while its 2 workers are still
/// starting (issue 12's start-up burst): jobs/s over the wall time from the first submit to
/// the last outcome; balanced, that is about 1.0 s (4 /s).
fn startup_burst(pools: &Mutex<Vec<Pool<u64, u64, ()>>>) -> Figure {
    let Some(pool) = pools.lock().unwrap().pop() else {
        return Figure::default();
    };
    let t0 = Instant::now();
    let handles: Vec<_> = (0..4).map(|_| pool.submit(500).unwrap()).collect();
    for h in handles {
        assert!(h.wait().is_ok());
    }
    let el = t0.elapsed();
    drop(pool);
    Figure {
        rate: 4.0 / el.as_secs_f64(),
        ..Figure::default()
    }
}

/// From SIGKILL of the worker running a job to that job's outcome, in µs.
fn killed_job_resolution(pool: &Pool<u64, u64, ()>, last: &mut i32) -> f64 {
    let h = pool.submit(60_000).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        // The snapshot lags outcomes by up to one loop turn: wait for the new worker's pid.
        let s = pool.stats();
        if s.busy == 1
            && let Some(pid) = s.worker_pids[0]
            && pid != *last
        {
            *last = pid;
            break pid;
        }
        assert!(Instant::now() < until, "the job never started");
        std::thread::sleep(Duration::from_millis(1));
    };
    // Let the worker read the job and start sleeping in it.
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let o = h.wait();
    let el = t.elapsed();
    assert!(
        matches!(o, Err(warden::pool::JobError::WorkerDied(_))),
        "{o:?}"
    );
    el.as_secs_f64() * 1e6
}

/// A raw round trip over a socketpair between two threads, one 8-byte message in flight.
fn raw_ping_pong(n: u64) -> Figure {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 8];
    let mut lat = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        a.write_all(&i.to_le_bytes()).unwrap();
        a.read_exact(&mut buf).unwrap();
        lat.push(t.elapsed());
    }
    let el = t0.elapsed();
    drop(a);
    echo.join().unwrap();
    lat.sort();
    Figure {
        rate: n as f64 / el.as_secs_f64(),
        p50_us: pct(&lat, 0.5),
        p99_us: pct(&lat, 0.99),
    }
}

/// Raw pipelined messages: one thread writes 8-byte messages (one write each), another reads
/// them in bulk.
fn raw_pipelined(n: u64) -> Figure {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < n * 8 {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k as u64,
            }
        }
    });
    let t0 = Instant::now();
    for i in 0..n {
        a.write_all(&i.to_le_bytes()).unwrap();
    }
    reader.join().unwrap();
    Figure {
        rate: n as f64 / t0.elapsed().as_secs_f64(),
        ..Figure::default()
    }
}

/// Runs `python3 benches/pool_py.py FIGURE N` and parses its JSON line.
fn python(figure: &str, n: u64) -> Option<Figure> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pool_py.py");
    let out = Command::new("python3")
        .args([script, figure, &n.to_string(), &WORKERS.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "python {figure}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> f64 {
        let key = format!("\"{k}\": ");
        text.find(&key)
            .map(|i| &text[i + key.len()..])
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Some(Figure {
        rate: field("rate"),
        p50_us: field("p50_us"),
        p99_us: field("p99_us"),
    })
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

fn main() {
    // `cargo test --all-targets` runs benchmark binaries too, without `--bench`: a benchmark is
    // not a test, so say so and leave.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("this is a benchmark: run it with `cargo bench --bench NAME`");
        return;
    }
    // Build every pool first, while single-threaded.
    let inc = Pool::builder("inc", |x: u64| -> Result<u64, ()> { Ok(x + 1) })
        .workers(WORKERS)
        .build()
        .expect("inc pool");
    let bytes = Pool::builder("bytes", |b: ByteBuf| -> Result<ByteBuf, ()> { Ok(b) })
        .workers(WORKERS)
        .build()
        .expect("bytes pool");
    let sleepy = Pool::builder("sleepy", |ms: u64| -> Result<u64, ()> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    })
    .workers(1)
    .pipeline(1)
    .policy(Policy {
        max_restarts: 1000,
        ..Policy::default()
    })
    .start_method(StartMethod::Fork)
    .build()
    .expect("sleepy pool");
    let sleeper = |ms: u64| -> Result<u64, ()> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ms)
    };
    let mixed = Pool::builder("mixed", sleeper)
        .workers(WORKERS)
        .build()
        .expect("mixed pool");
    let rounds: usize = std::env::var("POOL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // One fresh pool per round for the start-up burst (built now, first used in its round).
    let bursts = Mutex::new(
        (0..rounds)
            .map(|i| {
                Pool::builder(format!("burst{i}"), sleeper)
                    .workers(WORKERS)
                    .build()
                    .expect("burst pool")
            })
            .collect::<Vec<_>>(),
    );
    // Warm up: workers started.
    inc.map(0..1000).unwrap();
    mixed.map([1, 1]).unwrap();
    bytes
        .submit(ByteBuf::from(vec![0u8; 16]))
        .unwrap()
        .wait()
        .unwrap();
    sleepy.submit(0).unwrap().wait().unwrap();

    let quick = std::env::var_os("POOL_BENCH_QUICK").is_some();
    let scale = |n: u64| if quick { (n / 10).max(100) } else { n };
    type Run<'a> = Box<dyn Fn() -> Figure + 'a>;
    type Fig<'a> = (&'a str, Run<'a>, Option<(&'a str, u64)>);
    // (name, warden run, python figure and n)
    let figures: Vec<Fig<'_>> = vec![
        (
            "one job in flight",
            Box::new(|| one_in_flight(&inc, scale(20_000))),
            Some(("one", scale(5_000))),
        ),
        (
            "many in flight (apply_async)",
            Box::new(|| many_apply_async(&inc, scale(500_000))),
            Some(("many", scale(50_000))),
        ),
        (
            "many in flight (submit+wait)",
            Box::new(|| many_submit(&inc, scale(500_000))),
            None,
        ),
        (
            "imap_unordered, chunksize 1",
            Box::new(|| imap(&inc, scale(200_000))),
            Some(("imap", scale(50_000))),
        ),
        (
            "map, default chunking",
            Box::new(|| map_default_chunks(&inc, scale(1_000_000))),
            Some(("map", scale(1_000_000))),
        ),
        (
            "64 KiB payload, one in flight",
            Box::new(|| bytes_one_in_flight(&bytes, scale(3_000))),
            Some(("bytes", scale(1_000))),
        ),
        (
            "1.5 s + 40 x 20 ms jobs",
            Box::new(|| long_and_short(&mixed)),
            Some(("mixed", 40)),
        ),
        (
            "4 x 0.5 s at start-up",
            Box::new(|| startup_burst(&bursts)),
            Some(("burst", 4)),
        ),
        (
            "raw socketpair ping-pong",
            Box::new(|| raw_ping_pong(scale(100_000))),
            None,
        ),
        (
            "raw socketpair pipelined",
            Box::new(|| raw_pipelined(scale(2_000_000))),
            None,
        ),
    ];
    // POOL_BENCH_ONLY=substring runs only the matching figures (for profiling).
    let only = std::env::var("POOL_BENCH_ONLY").ok();
    let figures: Vec<_> = figures
        .into_iter()
        .filter(|f| only.as_deref().is_none_or(|o| f.0.contains(o)))
        .collect();
    let mut ours: Vec<Vec<Figure>> = vec![Vec::new(); figures.len()];
    let mut theirs: Vec<Vec<Figure>> = vec![Vec::new(); figures.len()];
    let mut kills = Vec::new();
    let mut last_killed = 0;
    let python_too = std::env::var_os("POOL_BENCH_NO_PYTHON").is_none();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (k, (name, run, py)) in figures.iter().enumerate() {
            let f = run();
            eprintln!(
                "  warden {name}: {} p50 {:.1} µs p99 {:.1} µs",
                fmt_rate(f.rate),
                f.p50_us,
                f.p99_us
            );
            ours[k].push(f);
            if let Some((fig, n)) = py
                && python_too
                && let Some(f) = python(fig, *n)
            {
                eprintln!(
                    "  python {name}: {} p50 {:.1} µs p99 {:.1} µs",
                    fmt_rate(f.rate),
                    f.p50_us,
                    f.p99_us
                );
                theirs[k].push(f);
            }
        }
        if only.is_none() {
            for _ in 0..3 {
                kills.push(killed_job_resolution(&sleepy, &mut last_killed));
            }
        }
    }
    let med = |v: &[Figure], f: fn(&Figure) -> f64| median(v.iter().map(f).collect());
    let best = |v: &[Figure]| v.iter().map(|f| f.rate).fold(0.0, f64::max);
    println!();
    println!(
        "warden pool vs Python {} multiprocessing.Pool, {WORKERS} workers, {rounds} interleaved rounds",
        python_version()
    );
    println!("(median of the rounds, and best = each side's least disturbed round)");
    println!(
        "{:<31} {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | latency median (warden | python)",
        "figure", "warden", "python", "ratio", "best", "py best", "ratio"
    );
    for (k, (name, _, _)) in figures.iter().enumerate() {
        let (w, p) = (med(&ours[k], |f| f.rate), med(&theirs[k], |f| f.rate));
        let (wb, pb) = (best(&ours[k]), best(&theirs[k]));
        let or_dash = |v: f64, s: String| if v > 0.0 { s } else { "-".to_string() };
        let mut lat = String::new();
        if med(&ours[k], |f| f.p50_us) > 0.0 {
            lat = format!(
                "p50 {:.0} µs, p99 {:.0} µs",
                med(&ours[k], |f| f.p50_us),
                med(&ours[k], |f| f.p99_us)
            );
            if p > 0.0 {
                lat += &format!(
                    " | p50 {:.0} µs, p99 {:.0} µs",
                    med(&theirs[k], |f| f.p50_us),
                    med(&theirs[k], |f| f.p99_us)
                );
            }
        }
        println!(
            "{name:<31} {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | {lat}",
            fmt_rate(w),
            or_dash(p, fmt_rate(p)),
            or_dash(p, format!("{:.1}×", w / p)),
            fmt_rate(wb),
            or_dash(pb, fmt_rate(pb)),
            or_dash(pb, format!("{:.1}×", wb / pb)),
        );
    }
    if only.is_some() {
        // A graceful end, so that profilers that write their data at exit (callgrind) see the
        // workers too: dropping a pool kills them.
        inc.close();
        inc.join();
        return;
    }
    for (name, jobs) in [
        ("1.5 s + 40 x 20 ms jobs", 41.0),
        ("4 x 0.5 s at start-up", 4.0),
    ] {
        if let Some(k) = figures.iter().position(|f| f.0 == name) {
            let wall = |r: f64| {
                if r > 0.0 {
                    format!("{:.2} s", jobs / r)
                } else {
                    "-".into()
                }
            };
            println!(
                "{name:<31} wall time: warden {}, python {} (median)",
                wall(med(&ours[k], |f| f.rate)),
                wall(med(&theirs[k], |f| f.rate))
            );
        }
    }
    let kill_med = median(kills.clone());
    let kill_max = kills.iter().cloned().fold(0.0, f64::max);
    println!(
        "{:<31} median {:.2} ms, max {:.2} ms over {} kills (Python: the job is lost, join() hangs)",
        "killed worker's job resolved",
        kill_med / 1e3,
        kill_max / 1e3,
        kills.len()
    );
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        println!(
            "load average at the end: {} on {} CPUs (other load on a shared machine skews the medians)",
            l.join(" "),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let at = |name: &str| figures.iter().position(|f| f.0 == name).unwrap();
    let (one, many) = (at("one job in flight"), at("many in flight (apply_async)"));
    let (map, big) = (
        at("map, default chunking"),
        at("64 KiB payload, one in flight"),
    );
    let (pp, pipe) = (
        at("raw socketpair ping-pong"),
        at("raw socketpair pipelined"),
    );
    let rate = |k: usize| med(&ours[k], |f| f.rate);
    let py = |k: usize| med(&theirs[k], |f| f.rate);
    // The least disturbed one-in-flight round, with its own p99.
    let one_best = ours[one]
        .iter()
        .copied()
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
        .unwrap_or_default();
    println!();
    println!("fraction of the physical limit measured in this run (medians):");
    println!(
        "  one in flight / raw ping-pong:          {:.0} %",
        100.0 * rate(one) / rate(pp)
    );
    println!(
        "  many in flight / raw pipelined writes:  {:.0} %",
        100.0 * rate(many) / rate(pipe)
    );
    println!();
    println!("targets (issue 5): median [best round]");
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "  one in flight >= 20 k/s, p99 <= 200 µs: {} p99 {:.0} µs [{} p99 {:.0} µs]  {} [{}]",
        fmt_rate(rate(one)),
        med(&ours[one], |f| f.p99_us),
        fmt_rate(one_best.rate),
        one_best.p99_us,
        check(rate(one) >= 20e3 && med(&ours[one], |f| f.p99_us) <= 200.0),
        check(one_best.rate >= 20e3 && one_best.p99_us <= 200.0),
    );
    println!(
        "  many in flight >= 500 k/s:              {} [{}]  {} [{}]",
        fmt_rate(rate(many)),
        fmt_rate(best(&ours[many])),
        check(rate(many) >= 500e3),
        check(best(&ours[many]) >= 500e3),
    );
    println!(
        "  map >= Python's default-chunked map:    {} vs {}  {}",
        fmt_rate(rate(map)),
        fmt_rate(py(map)),
        check(rate(map) >= py(map))
    );
    println!(
        "  64 KiB payloads >= 3x Python:           {:.1}x [{:.1}x]  {}",
        rate(big) / py(big).max(1e-9),
        best(&ours[big]) / best(&theirs[big]).max(1e-9),
        check(rate(big) >= 3.0 * py(big))
    );
    println!(
        "  killed job resolved <= 10 ms:           median {:.2} ms, max {:.2} ms  {}",
        kill_med / 1e3,
        kill_max / 1e3,
        check(kill_max <= 10_000.0)
    );
    drop(figures);
    drop(inc);
    drop(bytes);
    drop(sleepy);
    drop(mixed);
}

fn python_version() -> String {
    Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace("Python ", "")
        })
        .unwrap_or_default()
}
