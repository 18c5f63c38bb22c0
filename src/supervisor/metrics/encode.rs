//! The metrics text: a [`Scrape`] (plain numbers the supervisor gathered at the request) →
//! OpenMetrics 1.0 or Prometheus 0.0.4 text, through `prometheus-client`'s registry, built anew
//! for each scrape and dropped after it.
//!
//! Pure: it reads no clock and no file, and knows nothing of the loop; what each metric means is
//! listed in warden(8), METRICS, and in [`encode`].

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::{RestartCounts, RestartReason};
use crate::supervisor::InstanceState;

/// Every state an instance can show, in the order `warden status` documents them: each gets a
/// `warden_instance_state` sample, 1 for the current one and 0 for the others.
const STATES: [InstanceState; 9] = [
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Ready,
    InstanceState::Backoff,
    InstanceState::Stopping,
    InstanceState::Exited,
    InstanceState::Stopped,
    InstanceState::Fatal,
    InstanceState::Waiting,
];

/// What one scrape reports, gathered by the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scrape {
    /// warden itself.
    pub(crate) warden: WardenFacts,
    /// Every instance of every program, in status order.
    pub(crate) instances: Vec<InstanceFacts>,
}

/// warden's own figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WardenFacts {
    /// The version (`build_info`).
    pub(crate) version: &'static str,
    /// When the supervisor started, in Unix seconds.
    pub(crate) start_time: f64,
    /// Seconds since then.
    pub(crate) uptime: f64,
    /// Resident memory (`VmRSS`), when `/proc/self/status` could be read.
    pub(crate) rss_bytes: Option<u64>,
    /// Open descriptors (`/proc/self/fd`), when it could be read.
    pub(crate) open_fds: Option<u64>,
    /// Open control connections.
    pub(crate) control_connections: u64,
}

/// One instance's figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InstanceFacts {
    /// The program's name (label `program`).
    pub(crate) program: String,
    /// The instance's index (label `instance`).
    pub(crate) instance: usize,
    /// Where it is.
    pub(crate) state: InstanceState,
    /// A process of it runs (starting, running or ready).
    pub(crate) up: bool,
    /// It serves: `ready`, or `running` without a readiness check.
    pub(crate) ready: bool,
    /// Restarts counted by reason.
    pub(crate) restarts: RestartCounts,
    /// The last exit code (128 + N after signal N); `None` before the first exit.
    pub(crate) last_exit_code: Option<i64>,
    /// When its current process started, in Unix seconds; `None` while none runs.
    pub(crate) start_time: Option<f64>,
    /// Seconds left before the next spawn while in backoff; 0 otherwise.
    pub(crate) backoff: f64,
    /// Failed health checks.
    pub(crate) health_failures: u64,
    /// Its cgroup's `memory.current`, in bytes, where warden can read it.
    pub(crate) memory: Option<u64>,
    /// Its cgroup's `memory.peak`, in bytes, where warden can read it.
    pub(crate) memory_peak: Option<u64>,
}

/// Which text to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
    /// Prometheus text 0.0.4 (`text/plain; version=0.0.4`).
    Prometheus,
}

impl Format {
    /// The format a client asks for in its `Accept` header, q-values honoured: the acceptable
    /// one with the higher q (`q=0`: not acceptable), OpenMetrics on a tie only when the client
    /// names `application/openmetrics-text` itself (as Prometheus does); Prometheus text
    /// otherwise — without the header, for `*/*`, and when neither is acceptable.
    pub(crate) fn from_accept(accept: Option<&[u8]>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let accept = String::from_utf8_lossy(accept);
        let ranges: Vec<(&str, f32)> = accept.split(',').filter_map(media_range).collect();
        let (om, named) = quality(&ranges, "application", "openmetrics-text");
        let (text, _) = quality(&ranges, "text", "plain");
        if om > text || (om > 0.0 && om == text && named) {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// Its `Content-Type`.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
        }
    }
}

/// One range of an `Accept` header: its media type (lower case) and its q-value (1 unless
/// given; one that does not parse counts as 1, as if absent).
fn media_range(part: &str) -> Option<(&str, f32)> {
    let mut it = part.split(';');
    let media = it.next()?.trim();
    if media.is_empty() {
        return None;
    }
    let q = it
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
        .and_then(|(_, v)| v.trim().parse::<f32>().ok())
        .map_or(1.0, |q| q.clamp(0.0, 1.0));
    Some((media, q))
}

/// The q-value `ranges` give `kind/sub` — that of its most specific matching range (`kind/sub`,
/// then `kind/*`, then `*/*`; the highest among equals), 0 when none matches — and whether a
/// range names it exactly.
fn quality(ranges: &[(&str, f32)], kind: &str, sub: &str) -> (f32, bool) {
    let specificity = |media: &str| {
        let (k, s) = media.split_once('/')?;
        let (k, s) = (k.trim(), s.trim());
        if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(sub) {
            Some(2)
        } else if k.eq_ignore_ascii_case(kind) && s == "*" {
            Some(1)
        } else if k == "*" && s == "*" {
            Some(0)
        } else {
            None
        }
    };
    let best = ranges
        .iter()
        .filter_map(|&(m, q)| Some((specificity(m)?, q)))
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    match best {
        Some((spec, q)) => (q, spec == 2),
        None => (0.0, false),
    }
}

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn labels(i: &InstanceFacts) -> Labels {
    vec![
        ("program", i.program.clone()),
        ("instance", i.instance.to_string()),
    ]
}

fn with(mut l: Labels, key: &'static str, value: &str) -> Labels {
    l.push((key, value.to_string()));
    l
}

fn gauge(v: f64) -> FloatGauge {
    let g = FloatGauge::default();
    g.set(v);
    g
}

fn int_gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

/// The text of `scrape` in `format`.
pub(crate) fn encode(scrape: Scrape, format: Format) -> String {
    let mut r = Registry::default();
    register_warden(&mut r, &scrape.warden);
    r.register_collector(Box::new(Instances(scrape.instances)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = match format {
        Format::OpenMetrics => text::encode(&mut out, &r),
        Format::Prometheus => prometheus_text::encode(&mut out, &r),
    };
    out
}

/// warden's own metrics: `warden_build_info`, `warden_start_time_seconds`,
/// `warden_uptime_seconds`, `warden_resident_memory_bytes`, `warden_open_fds`,
/// `warden_control_connections`.
fn register_warden(r: &mut Registry, w: &WardenFacts) {
    r.register(
        "warden_build",
        "warden's version",
        Info::new(vec![("version", w.version.to_string())]),
    );
    let start = "When warden's supervisor started, in Unix time";
    r.register_with_unit(
        "warden_start_time",
        start,
        Unit::Seconds,
        gauge(w.start_time),
    );
    let up = "How long warden's supervisor has been running";
    r.register_with_unit("warden_uptime", up, Unit::Seconds, gauge(w.uptime));
    if let Some(rss) = w.rss_bytes {
        let help = "warden's resident memory (VmRSS)";
        r.register_with_unit("warden_resident_memory", help, Unit::Bytes, int_gauge(rss));
    }
    if let Some(fds) = w.open_fds {
        let help = "Descriptors warden has open";
        r.register("warden_open_fds", help, int_gauge(fds));
    }
    let help = "Open connections to the control socket";
    r.register(
        "warden_control_connections",
        help,
        int_gauge(w.control_connections),
    );
}

/// The per-instance families, labelled `program` and `instance`, in status order: a collector
/// that writes each sample as it goes (a `Family` would keep a map, and lose the order).
#[derive(Debug)]
struct Instances(Vec<InstanceFacts>);

/// One sample's value.
enum Sample {
    Int(i64),
    Float(f64),
    Count(u64),
}

/// One family: name, help, unit, type.
type Desc = (&'static str, &'static str, Option<Unit>, MetricType);

impl Instances {
    /// Writes family `d` with the samples `f` gives for each instance.
    fn family(
        &self,
        enc: &mut DescriptorEncoder,
        d: Desc,
        f: impl Fn(&InstanceFacts) -> Vec<(Labels, Sample)>,
    ) -> std::fmt::Result {
        let (name, help, unit, kind) = d;
        let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, sample) in self.0.iter().flat_map(f) {
            let e = m.encode_family(&labels)?;
            match sample {
                Sample::Int(v) => ConstGauge::new(v).encode(e)?,
                Sample::Float(v) => ConstGauge::new(v).encode(e)?,
                Sample::Count(v) => ConstCounter::new(v).encode(e)?,
            }
        }
        Ok(())
    }
}

impl Collector for Instances {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.encode_now(&mut enc)?;
        self.encode_history(&mut enc)?;
        self.encode_memory(&mut enc)
    }
}

impl Instances {
    /// Where each instance is: up, ready, state.
    fn encode_now(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        use MetricType::Gauge;
        let help = "1 while a process of the instance runs (starting, running, ready or stopping).";
        self.family(enc, ("warden_instance_up", help, None, Gauge), |i| {
            vec![(labels(i), Sample::Int(i64::from(i.up)))]
        })?;
        let help = "1 while the instance serves: ready, or running without a readiness check.";
        self.family(enc, ("warden_instance_ready", help, None, Gauge), |i| {
            vec![(labels(i), Sample::Int(i64::from(i.ready)))]
        })?;
        let help = "The instance's state (label state): 1 for the current one, 0 for the others.";
        self.family(enc, ("warden_instance_state", help, None, Gauge), |i| {
            STATES
                .iter()
                .map(|&s| {
                    (
                        with(labels(i), "state", s.name()),
                        Sample::Int(i64::from(s == i.state)),
                    )
                })
                .collect()
        })?;
        Ok(())
    }

    /// What happened to each instance: restarts, last exit, start, backoff, health failures.
    fn encode_history(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let help =
            "Restarts of the instance by reason: exit, signal, health, watchdog, oom, manual";
        self.family(
            enc,
            ("warden_instance_restarts", help, None, Counter),
            |i| {
                RestartReason::ALL
                    .iter()
                    .map(|&r| {
                        (
                            with(labels(i), "reason", r.name()),
                            Sample::Count(i.restarts.get(r)),
                        )
                    })
                    .collect()
            },
        )?;
        let help = "How the last process ended: its exit code, or 128 + N after signal N.";
        self.family(
            enc,
            ("warden_instance_last_exit_code", help, None, Gauge),
            |i| {
                i.last_exit_code
                    .map(|c| (labels(i), Sample::Int(c)))
                    .into_iter()
                    .collect()
            },
        )?;
        let help = "When the instance's current process started, in Unix time.";
        let d = (
            "warden_instance_start_time",
            help,
            Some(Unit::Seconds),
            Gauge,
        );
        self.family(enc, d, |i| {
            i.start_time
                .map(|t| (labels(i), Sample::Float(t)))
                .into_iter()
                .collect()
        })?;
        let help = "Time left before the instance is started again, while it backs off.";
        let d = ("warden_instance_backoff", help, Some(Unit::Seconds), Gauge);
        self.family(enc, d, |i| vec![(labels(i), Sample::Float(i.backoff))])?;
        let help = "Failed health checks of the instance.";
        let d = ("warden_instance_health_check_failures", help, None, Counter);
        self.family(enc, d, |i| {
            vec![(labels(i), Sample::Count(i.health_failures))]
        })
    }
}

impl Instances {
    /// What each instance's cgroup uses: families written only when some instance has a
    /// figure (cgroup mode with the memory controller), samples only for those that have.
    fn encode_memory(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        use MetricType::Gauge;
        let bytes = |v: u64| Sample::Int(i64::try_from(v).unwrap_or(i64::MAX));
        if self.0.iter().any(|i| i.memory.is_some()) {
            let help = "Memory the instance's cgroup uses now (memory.current).";
            let d = ("warden_instance_memory", help, Some(Unit::Bytes), Gauge);
            self.family(enc, d, |i| {
                i.memory
                    .map(|m| (labels(i), bytes(m)))
                    .into_iter()
                    .collect()
            })?;
        }
        if self.0.iter().any(|i| i.memory_peak.is_some()) {
            let help = "The most memory the instance's cgroup has used (memory.peak).";
            let d = (
                "warden_instance_memory_peak",
                help,
                Some(Unit::Bytes),
                Gauge,
            );
            let f = |i: &InstanceFacts| i.memory_peak.map(|m| (labels(i), bytes(m)));
            self.family(enc, d, |i| f(i).into_iter().collect())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Scrape {
        let mut restarts = RestartCounts::default();
        restarts.add(RestartReason::Exit);
        restarts.add(RestartReason::Exit);
        restarts.add(RestartReason::Manual);
        Scrape {
            warden: WardenFacts {
                version: "1.2.3",
                start_time: 1_700_000_000.0,
                uptime: 12.5,
                rss_bytes: Some(4096),
                open_fds: Some(9),
                control_connections: 1,
            },
            instances: vec![InstanceFacts {
                program: "web".into(),
                instance: 0,
                state: InstanceState::Ready,
                up: true,
                ready: true,
                restarts,
                last_exit_code: Some(137),
                start_time: Some(1_700_000_010.0),
                backoff: 0.0,
                health_failures: 4,
                memory: None,
                memory_peak: None,
            }],
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn openmetrics_names_units_and_ends_with_eof() {
        let text = encode(facts(), Format::OpenMetrics);
        let l = lines(&text);
        assert_eq!(l.last(), Some(&"# EOF"));
        assert!(
            l.contains(&"warden_build_info{version=\"1.2.3\"} 1"),
            "{text}"
        );
        assert!(
            l.contains(&"# UNIT warden_uptime_seconds seconds"),
            "{text}"
        );
        assert!(l.contains(&"warden_uptime_seconds 12.5"), "{text}");
        assert!(
            l.contains(
                &"warden_instance_restarts_total{program=\"web\",instance=\"0\",reason=\"exit\"} 2"
            ),
            "{text}"
        );
        assert!(
            l.contains(&"warden_instance_last_exit_code{program=\"web\",instance=\"0\"} 137"),
            "{text}"
        );
    }

    #[test]
    fn prometheus_text_has_no_eof_and_types_info_as_gauge() {
        let text = encode(facts(), Format::Prometheus);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(text.contains("# TYPE warden_build_info gauge"), "{text}");
        assert!(text.contains("warden_resident_memory_bytes 4096"), "{text}");
    }

    #[test]
    fn every_state_and_every_reason_has_a_sample_and_never_a_pid() {
        let text = encode(facts(), Format::OpenMetrics);
        for s in STATES {
            let on = if s == InstanceState::Ready { "1" } else { "0" };
            let want = format!(
                "warden_instance_state{{program=\"web\",instance=\"0\",state=\"{}\"}} {on}",
                s.name()
            );
            assert!(text.lines().any(|l| l.starts_with(&want)), "{want}\n{text}");
        }
        for r in RestartReason::ALL {
            let want = format!("reason=\"{}\"}}", r.name());
            assert!(text.contains(&want), "{want}\n{text}");
        }
        // `oom` is reserved: present, and 0.
        assert!(text.contains("reason=\"oom\"} 0"), "{text}");
        assert!(!text.contains("pid"), "{text}");
    }

    #[test]
    fn absent_figures_are_left_out_not_zero() {
        let mut s = facts();
        s.instances[0].last_exit_code = None;
        s.instances[0].start_time = None;
        s.warden.rss_bytes = None;
        let text = encode(s, Format::OpenMetrics);
        assert!(!text.contains("warden_instance_last_exit_code{"), "{text}");
        assert!(
            !text.contains("warden_instance_start_time_seconds{"),
            "{text}"
        );
        assert!(!text.contains("warden_resident_memory"), "{text}");
    }

    #[test]
    fn accept_picks_openmetrics_only_when_asked() {
        let prom = b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some(b"APPLICATION/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some(b"text/plain")), Format::Prometheus);
        assert_eq!(Format::from_accept(Some(b"*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        let both = b"text/plain, application/openmetrics-text";
        assert_eq!(Format::from_accept(Some(both)), Format::OpenMetrics);
    }

    #[test]
    fn accept_honours_q_values() {
        let pick = |a: &str| Format::from_accept(Some(a.as_bytes()));
        // q=0: not acceptable.
        let refused = "application/openmetrics-text;q=0, text/plain";
        assert_eq!(pick(refused), Format::Prometheus);
        assert_eq!(
            pick("application/openmetrics-text; q=0"),
            Format::Prometheus
        );
        // The higher q wins, whatever the order.
        let prefers_text = "text/plain;q=1,application/openmetrics-text;q=0.5";
        assert_eq!(pick(prefers_text), Format::Prometheus);
        let prefers_om = "text/plain;q=0.3, application/openmetrics-text;version=1.0.0;q=0.5";
        assert_eq!(pick(prefers_om), Format::OpenMetrics);
        // Prometheus 2.x and 3.x.
        let prom3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                     application/openmetrics-text;version=0.0.1;q=0.5,\
                     text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(pick(prom3), Format::OpenMetrics);
        // The most specific range decides: text/plain refused, OpenMetrics through */*.
        assert_eq!(pick("text/plain;q=0, */*;q=0.1"), Format::OpenMetrics);
        assert_eq!(
            pick("application/*;q=0.9, text/*;q=0.8"),
            Format::OpenMetrics
        );
        assert_eq!(
            pick("*/*;q=0.5, application/openmetrics-text;q=0"),
            Format::Prometheus
        );
        // A q that does not parse counts as 1.
        assert_eq!(
            pick("text/plain;q=x, application/openmetrics-text;q=0.9"),
            Format::Prometheus
        );
    }

    #[test]
    fn memory_gauges_are_written_only_for_instances_that_have_them() {
        let mut s = facts();
        let mut other = s.instances[0].clone();
        other.instance = 1;
        s.instances[0].memory = Some(1_048_576);
        s.instances[0].memory_peak = Some(4_194_304);
        s.instances.push(other);
        let text = encode(s, Format::OpenMetrics);
        let l = lines(&text);
        assert!(
            l.contains(&"# UNIT warden_instance_memory_bytes bytes"),
            "{text}"
        );
        assert!(
            l.contains(&"warden_instance_memory_bytes{program=\"web\",instance=\"0\"} 1048576"),
            "{text}"
        );
        assert!(
            l.contains(
                &"warden_instance_memory_peak_bytes{program=\"web\",instance=\"0\"} 4194304"
            ),
            "{text}"
        );
        assert!(
            !text.contains("memory_bytes{program=\"web\",instance=\"1\"}"),
            "{text}"
        );
        // Where no instance has a figure (no memory controller), no family at all.
        let text = encode(facts(), Format::OpenMetrics);
        assert!(!text.contains("warden_instance_memory"), "{text}");
    }
}
