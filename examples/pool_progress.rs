//! Progress from inside jobs: a progress bar over a `map`, fed by messages the jobs send while
//! they run.
//!
//! Each job "processes" a file of some number of blocks and reports every block it finishes
//! through its `JobContext`; `map_with_messages` hands those messages to a callback on this
//! thread, which advances an `indicatif` bar — so the bar moves while the jobs run, not only as
//! they finish. The worker waits in `send` if this thread falls more than `BOUND` messages
//! behind on one job: memory stays bounded however chatty the jobs are.
//!
//! Run with `cargo run --example pool_progress`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use warden::pool::{JobContext, Pool};

/// One unit of work: a named file of `blocks` blocks.
#[derive(Debug, Serialize, Deserialize)]
struct File {
    name: String,
    blocks: u64,
}

/// What a job reports while it runs.
#[derive(Debug, Serialize, Deserialize)]
enum Progress {
    /// One more block done.
    Block,
}

/// Messages each job may have unread before its worker waits.
const BOUND: usize = 16;

/// The handler: works through the blocks, reporting each; returns a checksum.
fn process(file: File, ctx: &JobContext<'_>) -> Result<u64, String> {
    let mut sum = 0u64;
    for b in 0..file.blocks {
        std::thread::sleep(Duration::from_millis(2)); // the real work would be here
        sum = sum
            .wrapping_mul(31)
            .wrapping_add(b ^ file.name.len() as u64);
        ctx.send(&Progress::Block).map_err(|e| e.to_string())?;
    }
    Ok(sum)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing in main, while the process is single-threaded (the default start method forks).
    let pool = Pool::builder_with_context("progress", process)
        .workers(4)
        .build()?;
    let files: Vec<File> = (0..24)
        .map(|i| File {
            name: format!("file-{i:02}.dat"),
            blocks: 20 + (i * 7) % 40,
        })
        .collect();
    let total: u64 = files.iter().map(|f| f.blocks).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} blocks, {per_sec}, eta {eta}",
    )?);
    let outcomes = pool.map_with_messages(files, BOUND, |_job, msg: Result<Progress, _>| {
        if let Ok(Progress::Block) = msg {
            bar.inc(1);
        }
    })?;
    bar.finish();
    let failed = outcomes.iter().filter(|o| o.is_err()).count();
    println!("{} files processed, {failed} failed", outcomes.len());
    pool.close();
    pool.join();
    Ok(())
}
