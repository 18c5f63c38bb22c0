//! `limits` in `[program.NAME]`: resource limits (`RLIMIT_*`), as [`Limits`], and how they are
//! read. Applied in the child before exec (`sys::child`); this file only describes them.

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
