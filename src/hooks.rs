//! Exit hooks, atexit-style: last registered, first run; exactly once; only in the process that
//! registered them.
//!
//! Each hook remembers the pid of the process that registered it. When hooks run, those of
//! another process are discarded unrun: a child forked after registration (a worker) inherits the
//! registry but must never run its parent's clean-up — the classic bug of Python daemon recipes
//! that register `atexit` before forking and delete the pidfile from the wrong process. The
//! launcher and the intermediate fork of the daemon sequence leave with `_exit` and run nothing.
//!
//! Hooks run on every orderly way out: [`exit`], the drop of the
//! [`DaemonHandle`](crate::DaemonHandle) (normal return from `main`, or unwinding from a panic in
//! the thread that owns it), and a signal-initiated shutdown that ends in one of those. Nothing
//! can run them on `SIGKILL`, `abort()`, a crash by `SIGSEGV`/`SIGBUS`, or with `panic = "abort"`;
//! for those the pidfile lock dies with the process and the next start takes the stale file over.
//!
//! Each hook runs on a thread of its own so that a deadline can be enforced: a hook that
//! overruns its own deadline, or the remaining total shutdown deadline, is abandoned (logged) and
//! the next one runs. A hook that panics or returns an error is logged and does not stop the
//! others. This module never calls `process::exit` itself except in [`exit`], whose job it is.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type HookFn = Box<dyn FnOnce() -> Result<(), String> + Send + 'static>;

struct Hook {
    name: String,
    owner: u32,
    deadline: Option<Duration>,
    run: HookFn,
}

struct Registry {
    hooks: Vec<Hook>,
    /// Hooks that must run after every other one (the pidfile removal), LIFO among themselves.
    last: Vec<Hook>,
    total: Duration,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    hooks: Vec::new(),
    last: Vec::new(),
    total: Duration::from_secs(30),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock cannot leave the Vec inconsistent; keep going.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a hook may return: `()` or a `Result` whose error is logged.
pub trait HookOutcome {
    /// Converts into the registry's uniform form.
    fn into_outcome(self) -> Result<(), String>;
}

impl HookOutcome for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> HookOutcome for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// Registers `f` to run at exit in this process.
pub fn on_exit<F, R>(name: &str, f: F)
where
    F: FnOnce() -> R + Send + 'static,
    R: HookOutcome,
{
    push(name, None, f, false);
}

/// Registers `f` to run at exit in this process, abandoned if it takes longer than `deadline`.
pub fn on_exit_with_deadline<F, R>(name: &str, deadline: Duration, f: F)
where
    F: FnOnce() -> R + Send + 'static,
    R: HookOutcome,
{
    push(name, Some(deadline), f, false);
}

/// Registers a hook that runs after all ordinary hooks (used for the pidfile).
pub(crate) fn on_exit_last<F>(name: &str, f: F)
where
    F: FnOnce() + Send + 'static,
{
    push(name, None, f, true);
}

fn push<F, R>(name: &str, deadline: Option<Duration>, f: F, last: bool)
where
    F: FnOnce() -> R + Send + 'static,
    R: HookOutcome,
{
    let hook = Hook {
        name: name.to_string(),
        owner: std::process::id(),
        deadline,
        run: Box::new(move || f().into_outcome()),
    };
    let mut r = registry();
    if last {
        r.last.push(hook);
    } else {
        r.hooks.push(hook);
    }
}

/// Sets the deadline for running all hooks together (default 30 s).
pub fn set_total_deadline(total: Duration) {
    registry().total = total;
}

/// How many hooks this process would run now.
pub fn pending() -> usize {
    let me = std::process::id();
    let r = registry();
    r.hooks
        .iter()
        .chain(&r.last)
        .filter(|h| h.owner == me)
        .count()
}

/// Runs this process's hooks, last registered first, then the built-in final ones. Each runs
/// at most once: a second call finds none. Hooks registered by another process are dropped unrun.
pub fn run_exit_hooks() {
    let me = std::process::id();
    let (mut hooks, mut last, total) = {
        let mut r = registry();
        (
            std::mem::take(&mut r.hooks),
            std::mem::take(&mut r.last),
            r.total,
        )
    };
    hooks.retain(|h| h.owner == me);
    last.retain(|h| h.owner == me);
    // A deadline too far to represent is no deadline.
    let deadline = Instant::now().checked_add(total);
    for hook in hooks.into_iter().rev() {
        let left = deadline.map_or(total, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            log::error!(
                "exit hook {:?} skipped: shutdown deadline of {total:?} passed",
                hook.name
            );
            continue;
        }
        run_one(hook, left);
    }
    // The final hooks are cheap and must run even after the deadline (the pidfile).
    for hook in last.into_iter().rev() {
        run_one(hook, Duration::from_secs(5));
    }
}

fn run_one(hook: Hook, left: Duration) {
    let limit = hook.deadline.map_or(left, |d| d.min(left));
    let name = hook.name;
    let run = hook.run;
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("exit-hook {name}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        log::error!("exit hook {name:?} not run: cannot start a thread: {e}");
        return;
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(Ok(()))) => log::debug!("exit hook {name:?} done"),
        Ok(Ok(Err(e))) => log::error!("exit hook {name:?} failed: {e}"),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            log::error!("exit hook {name:?} panicked: {msg}");
        }
        Err(_) => log::error!("exit hook {name:?} abandoned after {limit:?}"),
    }
}

/// Runs the exit hooks, then exits the process with `code`.
pub fn exit(code: i32) -> ! {
    run_exit_hooks();
    log::logger().flush();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A total deadline too far to represent as an `Instant` means no deadline, not a panic.
    #[test]
    fn an_unrepresentable_total_deadline_is_no_deadline() {
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        on_exit("flag", move || r.store(true, Ordering::SeqCst));
        set_total_deadline(Duration::MAX);
        run_exit_hooks();
        set_total_deadline(Duration::from_secs(30));
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(pending(), 0);
    }
}
