//! `warden healthcheck`: one exit status for a container runtime's probe (Docker's
//! `HEALTHCHECK`, a Kubernetes exec probe): 0 when every instance is up and ready and passes its
//! health check, 1 otherwise — also when no daemon answers — with one line per reason. A
//! one-shot job that has done its work (`exited` with code 0, not restarted) is healthy.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use warden::config::Config;
use warden::control::client::{Client, ClientError};
use warden::control::{Command, InstanceInfo, LastExit, Reply, StatusReport};

use super::exit;

/// How long the whole probe may take: probes have their own timeout, and a daemon that cannot
/// answer within this is not healthy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `warden healthcheck [PROGRAM…]`.
pub fn healthcheck(config: &Config, programs: Vec<String>) -> ExitCode {
    let report = match fetch(config, programs) {
        Ok(r) => r,
        Err(why) => {
            println!("unhealthy: {why}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let problems = problems(&report);
    if problems.is_empty() {
        let done = report.instances.iter().filter(|i| finished(i)).count();
        let up = report.instances.len() - done;
        let done = if done > 0 {
            format!(", {done} one-shot job(s) done")
        } else {
            String::new()
        };
        println!("healthy: {up} instance(s) ready{done}");
        ExitCode::from(exit::OK)
    } else {
        for p in &problems {
            println!("unhealthy: {p}");
        }
        ExitCode::from(exit::FAILURE)
    }
}

/// The daemon's status report, or why there is none.
fn fetch(config: &Config, programs: Vec<String>) -> Result<StatusReport, String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let socket = &config.daemon.control_socket;
    let mut client = Client::connect_timeout(socket, PROBE_TIMEOUT)
        .map_err(|e| format!("warden does not answer on {}: {e}", socket.display()))?;
    let left = deadline.saturating_duration_since(Instant::now());
    match client.request(Command::Status { programs }, left, |_| {}) {
        Ok(Reply::Done { result, .. }) => {
            serde_json::from_value(result).map_err(|e| format!("unexpected status reply: {e}"))
        }
        Ok(Reply::Failed { error, .. }) => Err(error),
        Ok(Reply::Progress { .. } | Reply::Event { .. }) => {
            Err("unexpected progress reply".to_string())
        }
        // The time left is a hair under the probe's: say the probe's, rounded.
        Err(ClientError::Timeout { .. }) => Err(format!(
            "warden does not answer: timed out after {}",
            warden::policy::fmt_duration(PROBE_TIMEOUT)
        )),
        Err(e) => Err(format!("warden does not answer: {e}")),
    }
}

/// Why the instances of `report` are not all healthy, one line each (`web[1]: starting`,
/// `db[0]: health failing 2/3: connect: ECONNREFUSED`); empty when they are. An instance is
/// healthy when it is `ready`, or `running` (a program without a readiness check), and its
/// health check, if it has one, is not failing; or when it is a one-shot job that is done
/// ([`finished`]). A program scaled to 0 has nothing to be.
pub(super) fn problems(report: &StatusReport) -> Vec<String> {
    report
        .instances
        .iter()
        // A surge replacement starting, or an instance stopping for good, is no problem: the
        // instance with that index that stays is judged.
        .filter(|i| i.is_configured())
        .filter_map(|i| {
            let tag = format!("{}[{}]", i.program, i.index);
            if finished(i) {
                return None;
            }
            if i.state != "ready" && i.state != "running" {
                return Some(format!("{tag}: {}", i.state_text()));
            }
            match &i.health {
                Some(h) if h.state == "failing" => Some(format!("{tag}: health {}", h.text())),
                _ => None,
            }
        })
        .collect()
}

/// A one-shot job that did its work: `exited` (not restarted by its `restart` policy) with
/// code 0, and not ended by warden (a failing health check). `exited` after a failure, and a
/// program never started, are not.
fn finished(i: &InstanceInfo) -> bool {
    i.state == "exited"
        && matches!(
            i.last_exit,
            Some(LastExit::Code {
                code: 0,
                reason: None
            })
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden::control::{DaemonInfo, HealthInfo, InstanceInfo};

    fn inst(program: &str, state: &str, health: Option<(&str, u32)>) -> InstanceInfo {
        InstanceInfo {
            program: program.into(),
            index: 0,
            pid: Some(1),
            state: state.into(),
            uptime_secs: None,
            restarts: 0,
            last_exit: None,
            status: None,
            waiting_for: Vec::new(),
            waiting_reason: None,
            incoming: false,
            retiring: false,
            health: health.map(|(state, failures)| HealthInfo {
                state: state.into(),
                failures,
                retries: 3,
                last_error: (failures > 0).then(|| "HTTP 500".to_string()),
            }),
        }
    }

    fn report(instances: Vec<InstanceInfo>) -> StatusReport {
        StatusReport {
            daemon: DaemonInfo {
                running: true,
                state: "running".into(),
                pid: 1,
                version: "0".into(),
                uptime_secs: 0.0,
                config: String::new(),
                tracking: None,
                cgroup: None,
                pid_namespace: None,
            },
            instances,
            programs: Vec::new(),
            sockets: Vec::new(),
        }
    }

    #[test]
    fn a_surge_replacement_starting_and_the_instance_it_replaced_stopping_are_no_problem() {
        let mut new = inst("web", "starting", None);
        new.incoming = true;
        let mut old = inst("web", "stopping", None);
        old.retiring = true;
        let r = report(vec![inst("web", "ready", None), new, old]);
        assert_eq!(problems(&r), Vec::<String>::new());
    }

    #[test]
    fn ready_and_running_instances_with_passing_or_starting_checks_are_healthy() {
        let r = report(vec![
            inst("a", "ready", None),
            inst("b", "running", Some(("passing", 0))),
            inst("c", "ready", Some(("starting", 0))),
        ]);
        assert!(problems(&r).is_empty());
        assert!(problems(&report(Vec::new())).is_empty());
    }

    #[test]
    fn a_one_shot_job_done_is_healthy_but_not_one_that_failed_or_never_ran() {
        let exited = |last_exit| InstanceInfo {
            last_exit,
            ..inst("j", "exited", None)
        };
        let code = |code, reason: Option<&str>| {
            Some(LastExit::Code {
                code,
                reason: reason.map(String::from),
            })
        };
        assert!(problems(&report(vec![exited(code(0, None))])).is_empty());
        for bad in [
            code(3, None),
            code(0, Some("health")),
            Some(LastExit::Signal {
                signal: 9,
                name: "SIGKILL".into(),
                core_dumped: false,
                reason: None,
            }),
            None,
        ] {
            assert_eq!(problems(&report(vec![exited(bad)])), ["j[0]: exited"]);
        }
    }

    #[test]
    fn every_other_state_and_a_failing_check_is_a_reason() {
        let mut waiting = inst("w", "waiting", None);
        waiting.waiting_for = vec!["db".into()];
        let r = report(vec![
            inst("a", "starting", None),
            inst("b", "ready", Some(("failing", 2))),
            inst("c", "fatal", None),
            waiting,
        ]);
        assert_eq!(
            problems(&r),
            vec![
                "a[0]: starting",
                "b[0]: health failing 2/3: HTTP 500",
                "c[0]: fatal",
                "w[0]: waiting (for db)",
            ]
        );
    }
}
