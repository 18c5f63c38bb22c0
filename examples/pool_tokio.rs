//! A job pool under a tokio runtime: build the pool *before* the runtime, then `.await` it.
//!
//! `StartMethod::Fork` needs a single-threaded process at `build()` time, and a tokio runtime
//! starts threads — so `main` builds the pool first, then the runtime, instead of using
//! `#[tokio::main]` (which would start the runtime before any of `main` runs). (With
//! `StartMethod::ExecSelf`, the order would not matter for correctness, but building first still
//! keeps the runtime out of the worker processes, which re-run `main` up to `build()`.)
//!
//! Async code awaits the pool directly: a `JobHandle` is a `Future` (woken by the pool's I/O
//! thread; no thread per wait, nothing tokio-specific), `map_async` returns a future of every
//! outcome, and `imap` streams outcomes in input order (`next_async`, or `futures::Stream`).
//!
//! Run with `cargo run --example pool_tokio`.

use std::sync::Arc;
use std::time::Duration;

use warden::pool::{JobError, Pool};

type Squares = Pool<u64, u64, String>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The pool, while the process is still single-threaded.
    let pool: Arc<Squares> = Arc::new(
        Pool::builder("tokio-squares", |x: u64| -> Result<u64, String> {
            if x == 13 {
                return Err("unlucky".to_string());
            }
            // CPU-heavy work would go here; 1000 stands for a job that takes too long.
            std::thread::sleep(Duration::from_millis(if x == 1000 { 60_000 } else { 5 }));
            Ok(x * x)
        })
        .workers(2)
        .build()?,
    );
    // 2. The runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // One job per task: `submit_async` waits (without blocking the thread) while the
        // pool's queue is full (1024 jobs by default); the handle is awaited.
        let tasks: Vec<_> = (0..20u64)
            .map(|x| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    match pool.submit_async(x).await {
                        Ok(handle) => (x, handle.await),
                        Err(_) => (x, Err(JobError::Cancelled)),
                    }
                })
            })
            .collect();
        for t in tasks {
            match t.await.expect("task") {
                (x, Ok(y)) => println!("{x}² = {y}"),
                (x, Err(e)) => println!("{x}: {e}"),
            }
        }
        // Every outcome of a map, awaited; in input order.
        let all = pool.map_async(100..110u64).expect("open").await;
        println!("map_async: {all:?}");
        // Outcomes in input order as they come, without blocking the runtime.
        let mut stream = pool.imap(200..205u64).expect("open");
        while let Some(outcome) = stream.next_async().await {
            println!("imap: {outcome:?}");
        }
        // A deadline on one job: give up after 200 ms, killing the worker that runs it (the
        // pool replaces it).
        let mut slow = pool.submit(1000).expect("open");
        match tokio::time::timeout(Duration::from_millis(200), &mut slow).await {
            Ok(outcome) => println!("slow job: {outcome:?}"),
            Err(_elapsed) => {
                let how = slow.cancel_and_kill(); // Cancel::Killed: it was running
                println!("slow job: {:?} ({how:?})", slow.await);
            }
        }
    });
    // 3. Shut down: the runtime first (no more submissions), then the pool.
    drop(runtime);
    pool.close();
    pool.join();
    Ok(())
}
