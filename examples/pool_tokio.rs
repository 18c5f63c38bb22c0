//! A job pool under a tokio runtime: build the pool *before* the runtime.
//!
//! `StartMethod::Fork` needs a single-threaded process at `build()` time, and a tokio runtime
//! starts threads — so `main` builds the pool first, then the runtime, instead of using
//! `#[tokio::main]` (which would start the runtime before any of `main` runs). Async code
//! awaits outcomes through a oneshot channel filled by the pool's callback. (With
//! `StartMethod::ExecSelf`, the order would not matter for correctness, but building first still
//! keeps the runtime out of the worker processes, which re-run `main` up to `build()`.)
//!
//! Run with `cargo run --example pool_tokio`.

use std::sync::Arc;
use std::time::Duration;

use warden::pool::{JobError, Outcome, Pool};

type Squares = Pool<u64, u64, String>;

/// Runs one job on the pool and awaits its outcome without blocking the runtime.
async fn square(pool: &Squares, x: u64) -> Outcome<u64, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The callback runs on the pool's I/O thread; a oneshot send never blocks it. The submission
    // itself blocks only when the pool's queue is full (1024 jobs by default).
    if pool
        .apply_async(x, move |outcome| {
            let _ = tx.send(outcome);
        })
        .is_err()
    {
        return Err(JobError::Cancelled);
    }
    rx.await
        .unwrap_or_else(|_| Err(JobError::Fatal("the pool went away".into())))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The pool, while the process is still single-threaded.
    let pool: Arc<Squares> = Arc::new(
        Pool::builder("tokio-squares", |x: u64| -> Result<u64, String> {
            if x == 13 {
                return Err("unlucky".to_string());
            }
            std::thread::sleep(Duration::from_millis(5)); // CPU-heavy work would go here
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
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..20u64)
            .map(|x| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move { (x, square(&pool, x).await) })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("task"));
        }
        results
    });
    for (x, outcome) in &results {
        match outcome {
            Ok(y) => println!("{x}² = {y}"),
            Err(e) => println!("{x}: {e}"),
        }
    }
    // 3. Shut down: the runtime first (no more submissions), then the pool.
    drop(runtime);
    pool.close();
    pool.join();
    Ok(())
}
