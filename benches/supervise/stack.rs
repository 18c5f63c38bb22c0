//! Figure 7: SIGTERM to the supervisor → the supervisor and every program of a 3-level stack
//! gone (issue 14 §4: "the shutdown time of the 16-program stack before and after parallel
//! stop").
//!
//! The stack is the lead's: 2 `db`, 6 `api` (each after both dbs), 8 `web` (`web{i}` requires
//! `api{i % 6}`), 16 children that each take `--stop-delay` (0.2 s) to exit after SIGTERM
//! (`child ... stop-delay=MS`). A supervisor that stops level by level, each level in parallel,
//! needs about 3 × the delay; one that stops one program at a time, 16 ×.
//!
//! Peers that can say the same thing: supervisord, with one `[program:x]` per level
//! (`numprocs`) and `priority` 100/200/300 — it stops groups in reverse priority order, one
//! group at a time, the processes of a group together; s6, which has no order at all: on
//! SIGTERM s6-svscan brings every service down at once (a floor, not the same stack). runit and
//! daemontools do not stop their services on SIGTERM (figure 5), so they are not run.
//!
//! The time is from `kill(SIGTERM)` on the main process until it is gone (reaped or a zombie)
//! and no process holds the run's marker, polled every millisecond, bounded 30 s.
//!
//! The "before" figure is this bench against an older warden: `WARDEN_BENCH_BIN=PATH`.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::common::procs::{alive, mono_ns};
use super::{
    Ctx, Kind, Options, Place, Results, launch, push, wait_gone, wait_up, write, write_service,
};

/// How long the stack may take to go.
const STACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The poll interval while it goes (its figure is in seconds).
const STACK_POLL: Duration = Duration::from_millis(1);
/// Programs per level: db, api, web.
const LEVELS: [(&str, usize); 3] = [("db", 2), ("api", 6), ("web", 8)];
const STACK: usize = 16;

/// Whether figure 7 runs for `k`.
pub(super) fn supports(k: Kind) -> bool {
    matches!(k, Kind::Warden | Kind::S6 | Kind::Supervisord)
}

/// One figure-7 run of `k`.
pub(super) fn stack_run(
    ctx: &mut Ctx<'_>,
    opts: &Options,
    k: Kind,
    results: &mut Results,
) -> Result<(), String> {
    let place = Place::new(ctx, k, "stack")?;
    let args = [
        ctx.child.display().to_string(),
        place.out.display().to_string(),
        place.marker.clone(),
        format!("stop-delay={}", opts.stop_delay.as_millis()),
    ];
    let mut cmd = std::process::Command::new(&ctx.tools[&k]);
    match k {
        Kind::Warden => {
            let config = place.dir.join("warden.toml");
            let mut text = place.warden_daemon_table();
            for (level, n) in LEVELS {
                for i in 0..n {
                    text += &format!("\n[program.{level}{i}]\ncommand = {args:?}\n");
                    match level {
                        "api" => text += "after = [\"db0\", \"db1\"]\n",
                        "web" => text += &format!("requires = [\"api{}\"]\n", i % 6),
                        _ => {}
                    }
                }
            }
            write(&config, &text)?;
            cmd.arg("-c").arg(&config).arg("run");
        }
        Kind::Supervisord => {
            let config = place.dir.join("supervisord.conf");
            let logs = place.dir.join("childlog");
            super::mkdir(&logs)?;
            let mut text = format!(
                "[supervisord]\nnodaemon=true\nlogfile={}\npidfile={}\nchildlogdir={}\nminfds=4096\n",
                place.dir.join("supervisord.log").display(),
                place.dir.join("supervisord.pid").display(),
                logs.display(),
            );
            for (priority, (level, n)) in LEVELS.into_iter().enumerate() {
                text += &format!(
                    "\n[program:{level}]\ncommand={}\nnumprocs={n}\npriority={}\n\
                     process_name=%(program_name)s_%(process_num)d\nstartsecs=0\nautorestart=true\n",
                    args.join(" "),
                    (priority + 1) * 100,
                );
            }
            write(&config, &text)?;
            cmd.arg("-n").arg("-c").arg(&config);
        }
        Kind::S6 => {
            let scan = place.dir.join("service");
            super::mkdir(&scan)?;
            let script = format!(
                "#!/bin/sh\nexec '{}' '{}' '{}' '{}'\n",
                args[0], args[1], args[2], args[3]
            );
            for (level, n) in LEVELS {
                for i in 0..n {
                    write_service(&scan, &format!("{level}{i}"), &script)?;
                }
            }
            cmd.arg(&scan);
        }
        _ => return Err(format!("{} cannot express the stack here", k.slug())),
    }
    let run = launch(k, place, cmd)?;
    let up = wait_up(ctx, &run, STACK, super::START_TIMEOUT)?;
    // Every level is up once all 16 have reported (a dependent starts only after what it
    // waits for); settle so that the supervisor has seen them all running.
    ctx.sleep(opts.settle)?;
    let children: Vec<i32> = up.iter().map(|c| c.0).filter(|&p| alive(p)).collect();
    if children.len() != STACK {
        results.note(
            k,
            format!(
                "stack: only {} of {STACK} alive before SIGTERM",
                children.len()
            ),
        );
    }
    // The supervisor's own processes first (checked last: the list is popped from the end),
    // its main process at the very front: it must be gone too.
    let mut watch: Vec<i32> = vec![run.main];
    watch.extend(super::own_pids(&run).into_iter().filter(|&p| p != run.main));
    watch.extend(children);
    let t_term = mono_ns();
    kill(Pid::from_raw(run.main), Signal::SIGTERM).map_err(|e| format!("kill -TERM: {e}"))?;
    let gone_at = wait_gone(watch, &run.marker, STACK_TIMEOUT, STACK_POLL);
    push(
        &mut results.stack_s,
        k,
        gone_at.map_or(f64::INFINITY, |t| (t - t_term) as f64 / 1e9),
    );
    ctx.check()
}
