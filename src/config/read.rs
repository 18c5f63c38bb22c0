//! The syntax layer: typed reads from a parsed TOML table, recording a diagnostic for every key
//! that is unknown, of the wrong type or out of range, instead of stopping at the first.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::Collector;

pub(crate) type Table<'i> = DeTable<'i>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Reads values out of one table, remembering which keys were consumed.
pub(crate) struct Section<'t, 'i> {
    pub(crate) name: String,
    table: &'t Table<'i>,
    known: Vec<&'static str>,
}

impl<'t, 'i> Section<'t, 'i> {
    pub(crate) fn new(name: impl Into<String>, table: &'t Table<'i>) -> Self {
        Section {
            name: name.into(),
            table,
            known: Vec::new(),
        }
    }

    pub(crate) fn key(&self, key: &str) -> String {
        if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        }
    }

    /// The raw value of `key`, marking it known.
    pub(crate) fn raw(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        self.known.push(key);
        self.table.get(key)
    }

    /// Reports every key of the table that no read asked for.
    pub(crate) fn finish(self, c: &mut Collector<'_>) {
        for (k, _) in self.table.iter() {
            if !self
                .known
                .iter()
                .any(|known| *known == k.get_ref().as_ref())
            {
                let mut msg = "unknown key".to_string();
                if let Some(hint) = closest(k.get_ref(), &self.known) {
                    msg.push_str(&format!(" (did you mean {hint:?}?)"));
                }
                c.at(k.span(), &self.key(k.get_ref()), msg);
            }
        }
    }

    pub(crate) fn string(
        &mut self,
        c: &mut Collector<'_>,
        key: &'static str,
    ) -> Option<Spanned<String>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Spanned::new(v.span(), s.to_string())),
            other => {
                c.at(
                    v.span(),
                    &self.key(key),
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, c: &mut Collector<'_>, key: &'static str) -> Option<bool> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                c.at(
                    v.span(),
                    &self.key(key),
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub(crate) fn integer(
        &mut self,
        c: &mut Collector<'_>,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let v = self.raw(key)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            other => {
                c.at(
                    v.span(),
                    &self.key(key),
                    format!("expected an integer, found {}", other.type_str()),
                );
                return None;
            }
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                c.at(
                    v.span(),
                    &self.key(key),
                    format!("must be between {min} and {max}"),
                );
                None
            }
        }
    }

    /// A path; a relative one is taken relative to `base` (the configuration file's directory).
    pub(crate) fn path(
        &mut self,
        c: &mut Collector<'_>,
        key: &'static str,
        base: &Path,
    ) -> Option<PathBuf> {
        let s = self.string(c, key)?;
        if s.get_ref().is_empty() {
            c.at(s.span(), &self.key(key), "must not be empty");
            return None;
        }
        if s.get_ref().contains('\0') {
            c.at(s.span(), &self.key(key), "must not contain a NUL byte");
            return None;
        }
        Some(base.join(s.get_ref()))
    }

    /// A duration such as `"2s"`, `"150ms"` or `"1m 30s"`; a bare integer counts seconds.
    pub(crate) fn duration(
        &mut self,
        c: &mut Collector<'_>,
        key: &'static str,
    ) -> Option<Duration> {
        let v = self.raw(key)?;
        match duration_value(v.get_ref()) {
            Ok(d) => Some(d),
            Err(msg) => {
                c.at(v.span(), &self.key(key), msg);
                None
            }
        }
    }

    /// A byte size: a non-negative integer, or a string such as `"512K"`, `"10M"`, `"1G"`
    /// (see [`parse_size`]).
    pub(crate) fn size(&mut self, c: &mut Collector<'_>, key: &'static str) -> Option<u64> {
        let v = self.raw(key)?;
        match size_value(v.get_ref()) {
            Ok(n) => Some(n),
            Err(msg) => {
                c.at(v.span(), &self.key(key), msg);
                None
            }
        }
    }

    /// True when the table has `key`, whether or not it was read (and without marking it known).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// The span of `key`'s value, if present (without marking it known).
    pub(crate) fn span(&self, key: &str) -> Option<Range<usize>> {
        self.table.get(key).map(Spanned::span)
    }

    /// One of `choices`.
    pub(crate) fn choice(
        &mut self,
        c: &mut Collector<'_>,
        key: &'static str,
        choices: &[&'static str],
    ) -> Option<&'static str> {
        let s = self.string(c, key)?;
        match choices.iter().find(|ch| **ch == s.get_ref()) {
            Some(ch) => Some(ch),
            None => {
                let list = choices
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                c.at(
                    s.span(),
                    &self.key(key),
                    format!("{:?} is not one of {list}", s.get_ref()),
                );
                None
            }
        }
    }

    /// A sub-table.
    pub(crate) fn table(
        &mut self,
        c: &mut Collector<'_>,
        key: &'static str,
    ) -> Option<&'t Table<'i>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                c.at(
                    v.span(),
                    &self.key(key),
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }
}

/// A duration value: a string `humantime` understands (`"2s"`, `"150ms"`, `"1m 30s"`) or a bare
/// integer counting seconds. The error is the message for the diagnostic.
pub(crate) fn duration_value(v: &DeValue<'_>) -> Result<Duration, String> {
    match v {
        DeValue::String(s) => humantime::parse_duration(s).map_err(|e| {
            format!("invalid duration {s:?}: {e} (write e.g. \"500ms\", \"10s\", \"1m 30s\")")
        }),
        DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
            .map(Duration::from_secs)
            .map_err(|_| "must be a non-negative number of seconds".to_string()),
        other => Err(format!(
            "expected a duration string such as \"10s\", found {}",
            other.type_str()
        )),
    }
}

/// A byte-size value: a non-negative integer or a string accepted by [`parse_size`].
pub(crate) fn size_value(v: &DeValue<'_>) -> Result<u64, String> {
    match v {
        DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| "must be a non-negative number of bytes".to_string()),
        DeValue::String(s) => parse_size(s).ok_or_else(|| {
            format!(
                "{s:?} is not a size (write a number of bytes, or e.g. \"512K\", \"10M\", \"1G\")"
            )
        }),
        other => Err(format!(
            "expected a size such as \"10M\" or an integer, found {}",
            other.type_str()
        )),
    }
}

/// Parses a byte size: digits, optionally followed by a binary unit `K`, `M`, `G` or `T`
/// (case-insensitive, ×1024 each; a trailing `B` or `iB` is allowed, so `"10M"`, `"10MB"` and
/// `"10MiB"` all mean 10 × 2²⁰). `None` when malformed or larger than `u64::MAX`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let shift = match s[digits..].trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// The known key closest to a misspelt one, if any is close.
fn closest(word: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(closest("pidfil", &["pidfile", "umask"]), Some("pidfile"));
        assert_eq!(closest("zzzzzz", &["pidfile", "umask"]), None);
    }
}
