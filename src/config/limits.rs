//! `limits` in `[program.NAME]`: resource limits (`RLIMIT_*`), as [`Limits`], and the cgroup
//! limits `memory_max`, `memory_high`, `pids_max`, `cpu_max`, as [`CgroupLimits`]; and how they
//! are read. Rlimits are applied in the child before exec (`sys::child`), cgroup limits to the
//! instance's cgroup before its spawn (`supervisor::cgroup`); this file only describes them.

use nix::sys::resource::Resource;
use toml::de::{DeTable, DeValue};

use super::read::{Section, size_value};
use crate::error::diag::Collector;

/// Resource limits (`limits = { nofile = 4096, core = 0 }`), each `None` when not set.
///
/// A value is a number, or `"unlimited"` (also `"infinity"`), stored as `u64::MAX`, which is
/// `RLIM_INFINITY`. The byte-valued limits (`core`, `memlock`, `as`, `fsize`, `stack`) also
/// accept sizes such as `"64M"`; `cpu` counts seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// `nofile` (`RLIMIT_NOFILE`): open file descriptors.
    pub nofile: Option<u64>,
    /// `core` (`RLIMIT_CORE`): core dump size in bytes.
    pub core: Option<u64>,
    /// `nproc` (`RLIMIT_NPROC`): processes of the user.
    pub nproc: Option<u64>,
    /// `memlock` (`RLIMIT_MEMLOCK`): locked memory in bytes.
    pub memlock: Option<u64>,
    /// `as` (`RLIMIT_AS`): address space in bytes.
    pub address_space: Option<u64>,
    /// `fsize` (`RLIMIT_FSIZE`): largest file created, in bytes.
    pub fsize: Option<u64>,
    /// `stack` (`RLIMIT_STACK`): stack size in bytes.
    pub stack: Option<u64>,
    /// `cpu` (`RLIMIT_CPU`): CPU time in seconds.
    pub cpu: Option<u64>,
}

impl Limits {
    /// The limits that are set, with their resource, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (Resource, u64)> + use<> {
        [
            (Resource::RLIMIT_NOFILE, self.nofile),
            (Resource::RLIMIT_CORE, self.core),
            (Resource::RLIMIT_NPROC, self.nproc),
            (Resource::RLIMIT_MEMLOCK, self.memlock),
            (Resource::RLIMIT_AS, self.address_space),
            (Resource::RLIMIT_FSIZE, self.fsize),
            (Resource::RLIMIT_STACK, self.stack),
            (Resource::RLIMIT_CPU, self.cpu),
        ]
        .into_iter()
        .filter_map(|(r, v)| v.map(|v| (r, v)))
    }

    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// `limits`: a table of resource limits.
pub(super) fn read_limits(c: &mut Collector<'_>, prefix: &str, t: &DeTable<'_>) -> Limits {
    let mut s = Section::new(prefix, t, super::keys::LIMITS);
    let limits = Limits {
        nofile: limit(c, &mut s, "nofile", false),
        core: limit(c, &mut s, "core", true),
        nproc: limit(c, &mut s, "nproc", false),
        memlock: limit(c, &mut s, "memlock", true),
        address_space: limit(c, &mut s, "as", true),
        fsize: limit(c, &mut s, "fsize", true),
        stack: limit(c, &mut s, "stack", true),
        cpu: limit(c, &mut s, "cpu", false),
    };
    s.finish(c);
    limits
}

/// One resource limit: a non-negative integer, `"unlimited"`/`"infinity"`, or (for a byte-valued
/// limit) a size such as `"64M"`.
fn limit(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    key: &'static str,
    bytes: bool,
) -> Option<u64> {
    let name = s.key(key);
    let v = s.raw(key)?;
    let result = match v.get_ref() {
        DeValue::String(text) if text == "unlimited" || text == "infinity" => Ok(u64::MAX),
        DeValue::String(_) if bytes => size_value(v.get_ref()),
        DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| "must not be negative".to_string()),
        DeValue::String(text) => Err(format!("{text:?} is not a number or \"unlimited\"")),
        other => Err(format!(
            "expected an integer or \"unlimited\", found {}",
            other.type_str()
        )),
    };
    match result {
        Ok(n) => Some(n),
        Err(msg) => {
            c.at(v.span(), &name, msg);
            None
        }
    }
}

/// The cgroup v2 limits of a program's instances (`memory_max`, `memory_high`, `pids_max`,
/// `cpu_max` in `[program.NAME]`), each `None` when not set. Each instance has a cgroup of its
/// own, so each limit is per instance. Applied only in cgroup mode and where the controller is
/// enabled; warden says which one it could not apply, never ignores one silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgroupLimits {
    /// `memory_max` → `memory.max`: the hard memory limit in bytes (the OOM killer acts
    /// beyond it).
    pub memory_max: Option<u64>,
    /// `memory_high` → `memory.high`: the throttling threshold in bytes.
    pub memory_high: Option<u64>,
    /// `pids_max` → `pids.max`: how many processes and threads.
    pub pids_max: Option<u64>,
    /// `cpu_max` → `cpu.max`: CPU bandwidth.
    pub cpu_max: Option<CpuMax>,
}

/// `cpu_max`: `quota` microseconds of CPU time every `period` microseconds (`"50%"` is 50000 of
/// 100000; `"200%"` two CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// Microseconds of CPU time per period, at least 1000.
    pub quota_us: u64,
    /// The period in microseconds, 1000 to 1000000.
    pub period_us: u64,
}

impl CgroupLimits {
    /// Each limit that is set, as (key, the cgroup file, the controller, the value written),
    /// in a fixed order.
    pub fn files(&self) -> Vec<(&'static str, &'static str, &'static str, String)> {
        let mut v = Vec::new();
        if let Some(n) = self.memory_max {
            v.push(("memory_max", "memory.max", "memory", n.to_string()));
        }
        if let Some(n) = self.memory_high {
            v.push(("memory_high", "memory.high", "memory", n.to_string()));
        }
        if let Some(n) = self.pids_max {
            v.push(("pids_max", "pids.max", "pids", n.to_string()));
        }
        if let Some(c) = self.cpu_max {
            v.push((
                "cpu_max",
                "cpu.max",
                "cpu",
                format!("{} {}", c.quota_us, c.period_us),
            ));
        }
        v
    }

    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == CgroupLimits::default()
    }
}

/// `[daemon] cgroups`: whether warden runs each instance in a cgroup v2 of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CgroupMode {
    /// `"auto"` (the default): cgroups where warden may create them (a delegated subtree, or
    /// the unified hierarchy as root), process groups and the guard otherwise.
    #[default]
    Auto,
    /// `"off"`: process groups and the guard only.
    Off,
}

/// The default `cpu_max` period: 100 ms, the kernel's.
const CPU_PERIOD_US: u64 = 100_000;

/// Parses `cpu_max`: `"N%"` (N > 0, may exceed 100 for more than one CPU; a decimal fraction is
/// allowed, `"12.5%"`) or `"QUOTA PERIOD"` in microseconds. The error is the message for the
/// diagnostic.
pub fn parse_cpu_max(text: &str) -> Result<CpuMax, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a CPU limit (write a percentage of one CPU such as \"50%\", or \"QUOTA PERIOD\" in microseconds such as \"50000 100000\")"
        )
    };
    let m = if let Some(pct) = t.strip_suffix('%') {
        let pct: f64 = pct.trim().parse().map_err(|_| bad())?;
        if !pct.is_finite() || pct <= 0.0 {
            return Err(format!("{text:?}: the percentage must be more than 0"));
        }
        let quota = (pct / 100.0 * CPU_PERIOD_US as f64).round();
        if quota > u32::MAX as f64 {
            return Err(format!("{text:?} is too large"));
        }
        CpuMax {
            quota_us: quota as u64,
            period_us: CPU_PERIOD_US,
        }
    } else {
        let mut words = t.split_whitespace();
        let (Some(q), Some(p), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let (Ok(quota_us), Ok(period_us)) = (q.parse::<u64>(), p.parse::<u64>()) else {
            return Err(bad());
        };
        if !(1000..=1_000_000).contains(&period_us) {
            return Err(format!(
                "{text:?}: the period must be 1000 to 1000000 microseconds"
            ));
        }
        CpuMax {
            quota_us,
            period_us,
        }
    };
    if m.quota_us < 1000 {
        return Err(format!(
            "{text:?}: the quota must be at least 1000 microseconds (1ms) per period"
        ));
    }
    Ok(m)
}

/// `memory_max`, `memory_high`, `pids_max`, `cpu_max` of `[program.NAME]`.
pub(super) fn read_cgroup_limits(c: &mut Collector<'_>, s: &mut Section<'_, '_>) -> CgroupLimits {
    let positive = |c: &mut Collector<'_>, s: &mut Section<'_, '_>, key: &'static str| {
        let v = s.raw(key)?;
        let n = match key {
            "pids_max" => match v.get_ref() {
                DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                    .map_err(|_| "must be a positive number of processes".to_string()),
                other => Err(format!("expected an integer, found {}", other.type_str())),
            },
            _ => size_value(v.get_ref()),
        };
        match n {
            Ok(0) => {
                c.at(v.span(), &s.key(key), "must be more than 0");
                None
            }
            Ok(n) => Some(n),
            Err(msg) => {
                c.at(v.span(), &s.key(key), msg);
                None
            }
        }
    };
    for key in ["memory_max", "memory_high", "pids_max", "cpu_max"] {
        if let Some(span) = s.span(key) {
            c.note(&s.key(key), span);
        }
    }
    let mut l = CgroupLimits {
        memory_max: positive(c, s, "memory_max"),
        memory_high: positive(c, s, "memory_high"),
        pids_max: positive(c, s, "pids_max"),
        cpu_max: None,
    };
    if let Some(v) = s.string(c, "cpu_max") {
        match parse_cpu_max(v.get_ref()) {
            Ok(m) => l.cpu_max = Some(m),
            Err(msg) => c.at(v.span(), &s.key("cpu_max"), msg),
        }
    }
    if let (Some(high), Some(max), Some(span)) =
        (l.memory_high, l.memory_max, s.span("memory_high"))
        && high > max
    {
        c.at(
            span,
            &s.key("memory_high"),
            "is above memory_max: it would never throttle (leave it out, or make it lower)",
        );
    }
    l
}

#[cfg(test)]
mod cgroup_tests {
    use super::*;

    #[test]
    fn cpu_max_reads_percentages_and_quota_period_pairs() {
        let m = |q, p| CpuMax {
            quota_us: q,
            period_us: p,
        };
        assert_eq!(parse_cpu_max("50%"), Ok(m(50_000, 100_000)));
        assert_eq!(parse_cpu_max("200%"), Ok(m(200_000, 100_000)));
        assert_eq!(parse_cpu_max("12.5%"), Ok(m(12_500, 100_000)));
        assert_eq!(parse_cpu_max("50000 100000"), Ok(m(50_000, 100_000)));
        assert_eq!(parse_cpu_max(" 2000  10000 "), Ok(m(2000, 10_000)));
        for bad in [
            "",
            "0%",
            "-5%",
            "x%",
            "50",
            "50000",
            "1 2 3",
            "500 100000",
            "50000 999",
            "50000 2000000",
            "0.5%",
            "nan%",
        ] {
            assert!(parse_cpu_max(bad).is_err(), "{bad:?}");
        }
    }

    fn read(text: &str) -> Result<crate::config::Config, Vec<String>> {
        crate::config::Config::parse(std::path::Path::new("/etc/warden/w.toml"), text).map_err(
            |e| match e {
                crate::Error::Config(d) => d.iter().map(ToString::to_string).collect(),
                other => vec![other.to_string()],
            },
        )
    }

    #[test]
    fn the_cgroup_keys_are_read_and_bad_values_named_at_their_place() {
        let c = read(
            "[daemon]\ncgroups = \"off\"\n[program.w]\ncommand = \"x\"\nmemory_max = \"64M\"\n\
             memory_high = 1048576\npids_max = 16\ncpu_max = \"150%\"\n",
        )
        .unwrap();
        assert_eq!(c.daemon.cgroups, CgroupMode::Off);
        let l = c.programs[0].cgroup;
        assert_eq!(l.memory_max, Some(64 << 20));
        assert_eq!(l.memory_high, Some(1 << 20));
        assert_eq!(l.pids_max, Some(16));
        assert_eq!(l.cpu_max.map(|m| m.quota_us), Some(150_000));
        let d = read("[program.w]\ncommand = \"x\"\n").unwrap();
        assert_eq!(d.daemon.cgroups, CgroupMode::Auto);
        assert!(d.programs[0].cgroup.is_empty());
        let errs = read(
            "[daemon]\ncgroups = \"yes\"\n[program.w]\ncommand = \"x\"\nmemory_max = \"lots\"\n\
             pids_max = 0\ncpu_max = \"fast\"\nmemory_high = \"2G\"\n[program.v]\ncommand = \"x\"\n\
             memory_max = \"1G\"\nmemory_high = \"2G\"\npids_max = \"9\"\n",
        )
        .unwrap_err();
        let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
        assert!(has("w.toml:2:11: daemon.cgroups"), "{errs:#?}");
        assert!(
            has(":5:14: program.w.memory_max: \"lots\" is not a size"),
            "{errs:#?}"
        );
        assert!(
            has(":6:12: program.w.pids_max: must be more than 0"),
            "{errs:#?}"
        );
        assert!(
            has(":7:11: program.w.cpu_max: \"fast\" is not a CPU limit"),
            "{errs:#?}"
        );
        assert!(
            has(":12:15: program.v.memory_high: is above memory_max"),
            "{errs:#?}"
        );
        assert!(
            has(":13:12: program.v.pids_max: expected an integer"),
            "{errs:#?}"
        );
        assert_eq!(errs.len(), 6, "{errs:#?}");
    }

    #[test]
    fn the_limits_map_to_their_files() {
        let l = CgroupLimits {
            memory_max: Some(1 << 20),
            memory_high: Some(1 << 19),
            pids_max: Some(64),
            cpu_max: Some(CpuMax {
                quota_us: 50_000,
                period_us: 100_000,
            }),
        };
        let f: Vec<_> = l.files().into_iter().map(|(_, f, _, v)| (f, v)).collect();
        assert_eq!(
            f,
            [
                ("memory.max", "1048576".to_string()),
                ("memory.high", "524288".to_string()),
                ("pids.max", "64".to_string()),
                ("cpu.max", "50000 100000".to_string()),
            ]
        );
        assert!(CgroupLimits::default().is_empty());
    }
}
