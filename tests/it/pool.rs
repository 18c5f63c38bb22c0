//! The job pool, from the outside: each test runs one scenario of `tests/fixtures/pool_scenarios.rs` as a real
//! program (the pool's `Fork` start method must be built in a single-threaded process, which
//! this multi-threaded test harness is not), under a hard timeout, then checks the `key=value`
//! lines it printed and that every worker and fork server pid it reported is gone.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest any scenario may take before it is killed and the test fails.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The scenario driver, `tests/fixtures/pool_scenarios.rs`.
fn fixture() -> PathBuf {
    crate::common::example("pool_scenarios")
}

/// What a scenario printed.
struct Run {
    kv: HashMap<String, String>,
    stderr: String,
}

impl Run {
    fn get(&self, key: &str) -> &str {
        self.kv
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in the output; stderr:\n{}", self.stderr))
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key).parse().unwrap()
    }
}

/// Runs `pool --scenario NAME` with a watchdog; asserts `result=ok` and that no pid it reported
/// survives it.
fn scenario(name: &str) -> Run {
    let dir = std::env::temp_dir().join(format!("warden-pool-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let start = Instant::now();
    let mut child = Command::new(fixture())
        .args(["--scenario", name, "--dir"])
        .arg(&dir)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("scenario {name} hung for {TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("scenario {name}: {:?}, {status}", start.elapsed());
    let kv: HashMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let run = Run { kv, stderr };
    assert_eq!(
        run.get("result"),
        "ok",
        "scenario {name} failed ({status}); stdout:\n{stdout}\nstderr:\n{}",
        run.stderr
    );
    assert!(status.success(), "scenario {name}: {status}");
    let pids: Vec<i32> = run
        .get("pids")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let ours = fixture();
    let ours = ours.file_name().unwrap().to_str().unwrap();
    let survivors = |pids: &[i32]| -> Vec<i32> {
        pids.iter()
            .copied()
            .filter(|p| {
                // A pid still there and still running our program (not reused by another).
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == ours)
            })
            .collect()
    };
    let until = Instant::now() + Duration::from_secs(5);
    while !survivors(&pids).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        survivors(&pids),
        Vec::<i32>::new(),
        "pool processes survived {name}"
    );
    run
}

#[test]
fn results_equal_a_sequential_run_for_100k_jobs() {
    let _test = this_test!();
    let r = scenario("sequential");
    assert_eq!(r.num("map_mismatches"), 0);
    assert_eq!(r.num("imap_count"), 100_000);
    assert_eq!(r.num("imap_mismatches"), 0);
}

#[test]
fn map_keeps_input_order_also_chunked() {
    let _test = this_test!();
    scenario("map_order");
}

#[test]
fn sigkill_mid_job_fails_that_job_alone_and_callbacks_fire_once() {
    let _test = this_test!();
    let r = scenario("kill_busy");
    assert!(
        r.get("victim").contains("WorkerDied"),
        "{}",
        r.get("victim")
    );
    assert_eq!(r.num("worker_deaths"), 1);
    // The target is 10 ms; allow for a loaded CI machine running tests in parallel.
    assert!(
        r.num("resolve_us") < 200_000,
        "resolved after {} µs",
        r.num("resolve_us")
    );
}

#[test]
fn sigkill_of_an_idle_worker_loses_nothing() {
    let _test = this_test!();
    let r = scenario("kill_idle");
    assert_eq!(r.num("lost"), 0);
    assert_eq!(r.num("worker_deaths"), 1);
}

#[test]
fn jobs_submitted_right_after_an_idle_worker_is_killed_are_sent_again_not_failed() {
    let _test = this_test!();
    let r = scenario("kill_idle_submit");
    assert_eq!(r.num("lost"), 0);
    assert_eq!(r.num("worker_deaths"), 5);
}

/// One long job and forty short ones on two workers: the short jobs never wait behind the long
/// one (structural: they all finish first, none on the long job's worker), on a fresh pool and
/// once the pipeline has opened wide for tiny jobs.
#[test]
fn short_jobs_do_not_wait_behind_a_long_one_while_a_worker_is_free() {
    let _test = this_test!();
    let r = scenario("head_of_line");
    for phase in ["fresh", "warm"] {
        assert_eq!(r.num(&format!("{phase}_after_long")), 0);
        assert_eq!(r.num(&format!("{phase}_on_long_worker")), 0);
    }
}

/// Jobs submitted right after `build()` are shared by the workers as they come up, not all given
/// to the first one up.
#[test]
fn a_burst_right_after_build_is_shared_by_the_workers() {
    let _test = this_test!();
    let r = scenario("startup_burst");
    assert_eq!(r.num("unbalanced"), 0);
}

/// A job's messages (issue 17, section 4) arrive in order and before its outcome, through a
/// stream, a callback on the I/O thread, and `map_with_messages`.
#[test]
fn messages_from_a_job_arrive_in_order_before_its_outcome() {
    let _test = this_test!();
    let r = scenario("messages_order");
    assert_eq!(r.num("stream_count"), 1000);
    assert_eq!(r.get("callback_at_outcome"), "Some(500)");
    assert_eq!(r.num("map_messages"), 1000);
}

/// A slow consumer (bound 4): the worker, which records how many messages it has sent, is never
/// more than 4 ahead of what was consumed — and does run ahead.
#[test]
fn a_slow_message_consumer_holds_the_worker_within_the_bound() {
    let _test = this_test!();
    let r = scenario("messages_backpressure");
    assert_eq!(r.num("consumed"), 40);
    assert!(r.num("ahead_max") <= 4, "ran {} ahead", r.num("ahead_max"));
}

/// SIGKILL mid-job: the messages written before arrive, the stream ends `Incomplete`, the outcome
/// is `WorkerDied`.
#[test]
fn a_worker_killed_mid_job_ends_its_message_stream_as_incomplete() {
    let _test = this_test!();
    let r = scenario("messages_worker_death");
    assert_eq!(r.get("status"), "Incomplete");
    assert!(
        r.get("outcome").contains("WorkerDied"),
        "{}",
        r.get("outcome")
    );
}

/// Small results are left in shared memory (result slots), not sent: a worker that dies right
/// after answering five jobs that way still has them all counted, each run once (issue 17,
/// section 5).
#[test]
fn results_left_in_shared_memory_survive_the_worker_and_count_once() {
    let _test = this_test!();
    let r = scenario("slot_results_survive_death");
    assert_eq!(r.num("lost"), 0);
    assert_eq!(r.num("ran_twice"), 0);
    assert_eq!(r.num("ran"), 100);
}

#[test]
fn a_panicking_handler_fails_its_job_and_the_worker_serves_the_next() {
    let _test = this_test!();
    let r = scenario("panic");
    assert!(r.get("panic").contains("Panicked(\"boom\")"));
}

#[test]
fn an_output_that_cannot_be_serialized_is_a_codec_error_not_a_crash() {
    let _test = this_test!();
    let r = scenario("codec");
    assert_eq!(r.num("codec_errors"), 10);
    assert_eq!(r.num("deaths"), 0);
    // In a chunk only the odd (unencodable) items fail.
    assert_eq!(r.num("chunk_codec"), 20);
    assert_eq!(r.num("chunk_ok"), 20);
}

#[test]
fn a_job_timeout_kills_the_worker_and_the_pool_continues() {
    let _test = this_test!();
    let r = scenario("timeout");
    assert_eq!(r.num("timed_out"), 2);
    let ms = r.num("timed_out_ms");
    assert!(
        (300..5000).contains(&ms),
        "timed out after {ms} ms (timeout 300 ms)"
    );
}

#[test]
fn close_then_join_returns_after_the_last_job() {
    let _test = this_test!();
    let r = scenario("close_join");
    assert_eq!(r.num("done_at_join"), 50);
}

#[test]
fn terminate_cancels_unfinished_jobs_and_leaves_no_worker() {
    let _test = this_test!();
    let r = scenario("terminate");
    assert_eq!(r.num("cancelled"), 10);
}

#[test]
fn imap_unordered_ends_when_another_thread_terminates_the_pool() {
    let _test = this_test!();
    let r = scenario("imap_terminate");
    assert_eq!(r.num("seen"), 10);
    assert!(r.num("cancelled") >= 9, "cancelled={}", r.num("cancelled"));
}

#[test]
fn a_full_queue_blocks_submit_and_try_submit_gives_the_job_back() {
    let _test = this_test!();
    let r = scenario("backpressure");
    assert_eq!(r.get("try_submit"), "full");
    assert!(r.num("blocked_ms") >= 150);
}

#[test]
fn workers_are_recycled_by_job_count_without_failures() {
    let _test = this_test!();
    let r = scenario("recycle");
    assert_eq!(r.num("failed"), 0);
    assert!(r.num("distinct_pids") >= 10);
    assert!(r.num("recycled") >= 8);
}

#[test]
fn workers_are_recycled_by_rss_without_failures() {
    let _test = this_test!();
    let r = scenario("recycle_rss");
    assert_eq!(r.num("failed"), 0);
    assert!(r.num("recycled") >= 1);
}

#[test]
fn an_idempotent_job_is_retried_after_its_worker_dies() {
    let _test = this_test!();
    let r = scenario("retries");
    assert_eq!(r.get("outcome"), "Ok(9)");
}

#[test]
fn a_crash_loop_fails_new_jobs_as_fatal_instead_of_hanging() {
    let _test = this_test!();
    let r = scenario("crash_loop");
    assert!(r.get("after").contains("crash loop"));
}

/// A slot whose worker is killed from outside too often is retired: visible in the stats, and
/// brought back by `revive()` (also from a pool that had turned fatal that way).
#[test]
fn a_retired_slot_is_listed_and_revive_brings_it_back() {
    let _test = this_test!();
    let r = scenario("retire_revive");
    assert_eq!(r.get("retired_one"), "[0]");
    assert_eq!(r.num("pids_after_revive"), 2);
    assert!(
        r.get("all_retired").contains("Fatal"),
        "{}",
        r.get("all_retired")
    );
    assert_eq!(r.get("after_revive"), "Ok(10)");
}

#[test]
fn worker_output_is_captured_into_the_log() {
    let _test = this_test!();
    let r = scenario("output");
    assert!(
        r.stderr.contains("output[0] hello from a worker"),
        "stderr:\n{}",
        r.stderr
    );
}

#[test]
fn several_fork_pools_can_be_built_in_a_row() {
    let _test = this_test!();
    scenario("two_pools");
}

#[test]
fn exec_self_works_from_a_program_with_several_threads() {
    let _test = this_test!();
    let r = scenario("exec_threads");
    assert!(r.num("threads_at_build") >= 4);
    assert!(r.get("victim").contains("WorkerDied"));
}

#[test]
fn fork_from_a_multi_threaded_program_is_refused_clearly() {
    let _test = this_test!();
    let r = scenario("fork_threads");
    let e = r.get("error");
    assert!(
        e.contains("single-threaded") && e.contains("ExecSelf"),
        "{e}"
    );
}

#[test]
fn dropping_a_busy_pool_cancels_its_jobs_once_and_leaves_nothing() {
    let _test = this_test!();
    let r = scenario("drop_busy");
    assert!(r.num("cancelled") >= 90);
}

#[test]
fn a_killed_fork_server_is_reaped_not_left_a_zombie() {
    let _test = this_test!();
    let r = scenario("zygote_reaped");
    assert_eq!(r.num("fatal"), 6);
    assert_eq!(r.num("zombies"), 0);
}

/// The pool inside a real warden daemon: daemonize, build the pool (its fork server forked while
/// the daemon is single-threaded), serve jobs on SIGHUP, survive a worker's SIGKILL, and leave
/// nothing behind on SIGTERM.
#[test]
fn pool_inside_a_warden_daemon() {
    let test = this_test!();
    use crate::common::{Sandbox, alive, children_of, signal, wait_until};
    use nix::sys::signal::Signal;
    let mut sb = test.sandbox("");
    let mut cmd = Command::new(crate::common::example("pool_daemon"));
    cmd.arg("--dir").arg(&sb.dir).stdin(Stdio::null());
    let out = sb.output(cmd);
    assert!(
        out.status.success(),
        "launcher: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = sb
        .read("app.pid")
        .trim()
        .parse()
        .expect("pidfile written before the launcher returns");
    sb.track(pid);
    let run = |sb: &Sandbox| -> HashMap<String, String> {
        let _ = std::fs::remove_file(sb.path("result.txt"));
        signal(pid, Signal::SIGHUP);
        assert!(
            wait_until(crate::common::TIMEOUT, || sb.path("result.txt").exists()),
            "no result"
        );
        sb.read("result.txt")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let expected: u64 = (0..10_000u64).map(|x| x * x).sum();
    let first = run(&sb);
    assert_eq!(first["sum"], expected.to_string());
    assert_eq!(first["errors"], "0");
    let workers: Vec<i32> = first["pids"]
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    let fork_server: i32 = first["fork_server"].parse().unwrap();
    assert_eq!(workers.len(), 2);
    for &w in workers.iter().chain([&fork_server]) {
        sb.track(w);
    }
    let victim = workers[0];
    signal(victim, Signal::SIGKILL);
    // The pool learns of the death asynchronously (end of stream on the worker's socket, the fork
    // server's report); jobs written to the dying worker meanwhile never started there and are
    // sent again (see the `kill_idle_submit` scenario). Here the next run waits until the pool
    // has replaced the worker, which it shows by asking its fork server (the workers' parent)
    // for one, so that the replacement is checked too.
    let replaced = || {
        let live: Vec<i32> = children_of(fork_server)
            .into_iter()
            .filter(|&c| alive(c))
            .collect();
        !alive(victim) && live.len() == 2 && !live.contains(&victim)
    };
    assert!(
        wait_until(crate::common::TIMEOUT, replaced),
        "worker {victim} not replaced; the fork server's children: {:?}",
        children_of(fork_server)
    );
    let second = run(&sb);
    assert_eq!(second["sum"], expected.to_string(), "{second:?}");
    assert_eq!(second["errors"], "0");
    assert!(
        !second["pids"].split(',').any(|p| p == victim.to_string()),
        "{second:?}"
    );
    // A worker killed by a real-time signal (which nix's wait status cannot name) is seen to
    // die and replaced too: the fork server does not lose its exit, nor fail on it.
    let victim: i32 = second["pids"].split(',').next().unwrap().parse().unwrap();
    let rt = format!("-{}", libc::SIGRTMIN() + 2);
    let killed = Command::new("kill")
        .args([&rt, &victim.to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()), "kill {rt} {victim}");
    assert!(
        wait_until(crate::common::TIMEOUT, || !alive(victim)
            && children_of(fork_server)
                .iter()
                .filter(|&&c| alive(c))
                .count()
                == 2),
        "worker {victim} not replaced; the fork server's children: {:?}",
        children_of(fork_server)
    );
    let third = run(&sb);
    assert_eq!(third["sum"], expected.to_string(), "{third:?}");
    assert_eq!(third["errors"], "0");
    signal(pid, Signal::SIGTERM);
    assert!(
        wait_until(crate::common::TIMEOUT, || !alive(pid)),
        "daemon still alive"
    );
    for p in second["pids"]
        .split(',')
        .map(|p| p.parse::<i32>().unwrap())
        .chain([fork_server])
    {
        assert!(
            wait_until(crate::common::TIMEOUT, || !alive(p)),
            "pool process {p} survived the daemon"
        );
    }
    assert!(!sb.path("app.pid").exists(), "pidfile removed");
}

/// Job handles, `map_async` and both imaps awaited under a tokio runtime: every outcome right,
/// no thread started to wait (200 handles pending at once on a current-thread runtime), and
/// `submit_async` on a full queue waits as a future, not blocking the runtime's thread.
#[test]
fn handles_and_streams_are_awaited_under_tokio_without_a_thread_per_wait() {
    let _test = this_test!();
    let r = scenario("async_await");
    assert_eq!(r.get("submit_async_pending"), "true");
    assert_eq!(r.get("submit_async"), "Ok(10)");
    assert_eq!(r.num("handles_ok"), 200);
    assert_eq!(r.num("threads_during"), r.num("threads_base"));
    assert_eq!(r.num("map_async_ok"), 500);
    assert_eq!(r.num("imap_in_order"), 3000);
    assert_eq!(r.num("imap_unordered_ok"), 3000);
}

/// `map_timeout` cancels what is unfinished at its deadline, killing and replacing the workers
/// that ran it; `map_async().get(t)` gives the result back on timeout with the jobs running.
#[test]
fn map_timeout_cancels_the_unfinished_jobs_and_get_gives_the_result_back() {
    let _test = this_test!();
    let r = scenario("map_timeout");
    assert_eq!(r.num("ok"), 4);
    assert_eq!(r.num("cancelled"), 6);
    assert_eq!(r.get("workers_replaced"), "true");
    assert_eq!(r.num("worker_deaths"), 0);
    assert_eq!(r.get("get_timed_out"), "true");
}

/// Cancelling one job: a queued one is removed, a running one is left to run by `cancel()` and
/// killed by `cancel_and_kill()` — its worker replaced, the jobs it held sent again.
#[test]
fn a_queued_job_is_cancelled_and_a_running_one_only_with_kill() {
    let _test = this_test!();
    let r = scenario("cancel");
    assert_eq!(r.get("cancel_queued"), "Removed");
    assert_eq!(r.get("cancel_running"), "Running");
    assert_eq!(r.get("cancel_in_worker"), "Removed");
    assert_eq!(r.get("cancel_kill"), "Killed");
    assert_eq!(r.get("replaced"), "true");
    assert_eq!(r.num("cancelled"), 2);
    assert_eq!(r.num("worker_deaths"), 0);
    if r.num("held_by_worker") == 4 {
        assert_eq!(
            r.num("requeued"),
            2,
            "the killed worker's jobs were not sent again"
        );
    }
}

/// Ordered `imap` over an endless input: input order, and never more than its window of jobs
/// pulled and not yet yielded.
#[test]
fn ordered_imap_over_an_endless_input_keeps_order_within_its_window() {
    let _test = this_test!();
    let r = scenario("imap_ordered");
    assert_eq!(r.num("yielded"), 20_000);
    assert_eq!(r.num("out_of_order"), 0);
    assert!(r.num("max_ahead") <= r.num("window"));
    assert!(r.num("pulled") <= 20_000 + r.num("window"));
}

/// The initializer runs once in every worker before its first job, recycled ones included,
/// under both start methods.
#[test]
fn the_initializer_runs_once_in_each_worker_under_both_start_methods() {
    let _test = this_test!();
    for s in ["init_fork", "init_exec"] {
        let r = scenario(s);
        assert!(r.num("workers_served") >= 8, "{s}");
        assert!(r.num("initialized") >= r.num("workers_served"), "{s}");
    }
}

/// A failing initializer is reported once, fails the jobs with `PoolError::Initializer`,
/// restarts no worker, and `revive()` recovers once its cause is gone.
#[test]
fn a_failing_initializer_is_reported_once_without_a_restart_loop() {
    let _test = this_test!();
    for s in ["init_fail_fork", "init_fail_exec"] {
        let r = scenario(s);
        assert_eq!(r.num("failed_with_initializer"), 10, "{s}");
        assert_eq!(r.num("init_attempts"), 2, "{s}");
        assert_eq!(r.num("worker_deaths"), 0, "{s}");
        let reports = r
            .stderr
            .lines()
            .filter(|l| l.contains("the initializer failed in worker"))
            .count();
        assert_eq!(reports, 1, "{s}: reported {reports} times:\n{}", r.stderr);
        assert!(r.get("after_revive").starts_with("Ok("), "{s}");
    }
}
