//! `warden healthcheck`: one exit status for a container runtime's probe (Docker's
//! `HEALTHCHECK`, a Kubernetes exec probe): 0 when every instance is up and ready and passes its
//! health check, 1 otherwise — also when no daemon answers — with one line per reason.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use warden::config::Config;
use warden::control::client::Client;
use warden::control::{Command, Reply, StatusReport};

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
        println!("healthy: {} instance(s) ready", report.instances.len());
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
        Err(e) => Err(format!("warden does not answer: {e}")),
    }
}

/// Why the instances of `report` are not all healthy, one line each (`web[1]: starting`,
/// `db[0]: health failing 2/3: connect: ECONNREFUSED`); empty when they are. An instance is
/// healthy when it is `ready`, or `running` (a program without a readiness check), and its
/// health check, if it has one, is not failing. A program scaled to 0 has nothing to be.
pub(super) fn problems(report: &StatusReport) -> Vec<String> {
    report
        .instances
        .iter()
        // A surge replacement starting, or an instance stopping for good, is no problem: the
        // instance with that index that stays is judged.
        .filter(|i| i.is_configured())
        .filter_map(|i| {
            let tag = format!("{}[{}]", i.program, i.index);
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
