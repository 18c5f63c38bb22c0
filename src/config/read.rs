//! The syntax layer: typed reads from a parsed TOML table, recording a diagnostic for every key
//! that is unknown, of the wrong type or out of range, instead of stopping at the first.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::keys::KeyTable;
use crate::error::diag::Collector;

pub(crate) type Table<'i> = DeTable<'i>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Reads values out of one table, remembering which keys were consumed.
pub(crate) struct Section<'t, 'i> {
    pub(crate) name: String,
    table: &'t Table<'i>,
    /// The keys this table may have ([`super::keys`]): reading any other is a bug.
    allowed: KeyTable,
    known: Vec<&'static str>,
}

impl<'t, 'i> Section<'t, 'i> {
    pub(crate) fn new(name: impl Into<String>, table: &'t Table<'i>, allowed: KeyTable) -> Self {
        Section {
            name: name.into(),
            table,
            allowed,
            known: Vec::new(),
        }
    }

    /// The dotted name of `key` in this section, for diagnostics. A key that is not a bare TOML
    /// key is shown quoted: an empty key (legal TOML, `"" = 1`) would otherwise be named by
    /// nothing at all, and `"log file"` or `"a.b"` would read as something else.
    pub(crate) fn key(&self, key: &str) -> String {
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let key = if bare {
            key.to_string()
        } else {
            format!("{key:?}")
        };
        if self.name.is_empty() {
            key
        } else {
            format!("{}.{key}", self.name)
        }
    }

    /// The raw value of `key`, marking it known.
    ///
    /// # Panics
    /// When `key` is not in the section's key table: the table is what warden.toml(5) is
    /// checked against, so a key the reader accepts must be listed there.
    pub(crate) fn raw(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        assert!(
            self.allowed.keys.contains(&key),
            "config key {key:?} is read but missing from config::keys for [{}]",
            self.allowed.table
        );
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

/// The longest duration any key accepts: a year. Deadlines are computed as `now + duration`,
/// and microsecond counts (`WATCHDOG_USEC`) from it; a larger value would overflow them (and
/// means "never", which the keys that allow it spell `"infinity"`).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration as every duration key of the configuration does, and as the command
/// line's `--timeout` does: a string `humantime` understands (`"2s"`, `"150ms"`, `"1m 30s"`,
/// `"2h"`), or bare digits counting seconds (`"30"`, as a TOML integer `30` is), at most
/// [`MAX_DURATION`]. The error is a message for humans, naming the text.
///
/// ```
/// use std::time::Duration;
/// use warden::config::parse_duration;
///
/// assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
/// assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("5 parsecs").is_err());
/// assert!(parse_duration("400days").is_err()); // above MAX_DURATION
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration {s:?}: too many seconds"))
            .and_then(bounded_duration);
    }
    humantime::parse_duration(t)
        .map_err(|e| {
            format!("invalid duration {s:?}: {e} (write e.g. \"500ms\", \"10s\", \"1m 30s\")")
        })
        .and_then(bounded_duration)
}

/// A duration value: a string [`parse_duration`] accepts or a bare integer counting seconds, at
/// most [`MAX_DURATION`]. The error is the message for the diagnostic.
pub(crate) fn duration_value(v: &DeValue<'_>) -> Result<Duration, String> {
    match v {
        DeValue::String(s) => parse_duration(s),
        DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
            .map(Duration::from_secs)
            .map_err(|_| "must be a non-negative number of seconds".to_string())
            .and_then(bounded_duration),
        other => Err(format!(
            "expected a duration string such as \"10s\", found {}",
            other.type_str()
        )),
    }
}

/// `d`, or the message saying it is above [`MAX_DURATION`].
pub(crate) fn bounded_duration(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        Err("is too long: at most 365 days (8760h)".to_string())
    } else {
        Ok(d)
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

/// The dotted key a syntax error at byte `offset` of `source` is about (TOML's parser reports
/// "duplicate key" with the place only), and whether it names a table header (`[a.b]`).
///
/// A small reading of TOML keys — bare, `"basic"` or `'literal'` segments joined by dots — on
/// the error's line: in a header, the segments up to the one at `offset`; in a `key = value`
/// line, the key prefixed by the table of the closest header above (and, for an error inside
/// an inline table, followed by the inner key at `offset`). `None` when nothing there reads as
/// a key.
pub(crate) fn key_at(source: &str, offset: usize) -> Option<(String, bool)> {
    let offset = offset.min(source.len());
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..]
        .find('\n')
        .map_or(source.len(), |i| offset + i);
    let line = &source[line_start..line_end];
    let at = offset - line_start;
    let first = line.len() - line.trim_start().len();
    if line[first..].starts_with('[') {
        let open = if line[first..].starts_with("[[") {
            2
        } else {
            1
        };
        let (segs, _) = dotted_key(line, first + open);
        let segs = upto(segs, at);
        return (!segs.is_empty()).then(|| (segs.join("."), true));
    }
    let (segs, end) = dotted_key(line, first);
    if segs.is_empty() {
        return None;
    }
    let mut key: Vec<String> = table_above(source, line_start);
    if at < end {
        key.extend(upto(segs, at));
    } else {
        key.extend(segs.into_iter().map(|(s, _)| s));
        key.extend(dotted_key(line, at).0.into_iter().map(|(s, _)| s));
    }
    Some((key.join("."), false))
}

/// The segments up to and including the one that contains `at` (all when none does).
fn upto(segs: Vec<(String, Range<usize>)>, at: usize) -> Vec<String> {
    let n = segs
        .iter()
        .position(|(_, r)| r.contains(&at))
        .map_or(segs.len(), |i| i + 1);
    segs.into_iter().take(n).map(|(s, _)| s).collect()
}

/// The key of the closest table header (`[a.b]` or `[[a.b]]`) before byte `before`; empty for
/// the root table. A line that starts with `[` but does not end its key with `]` (a line of a
/// multi-line array) is not a header.
fn table_above(source: &str, before: usize) -> Vec<String> {
    for line in source[..before].lines().rev() {
        let first = line.len() - line.trim_start().len();
        if !line[first..].starts_with('[') {
            continue;
        }
        let open = if line[first..].starts_with("[[") {
            2
        } else {
            1
        };
        let (segs, end) = dotted_key(line, first + open);
        if !segs.is_empty() && line[end..].trim_start().starts_with(']') {
            return segs.into_iter().map(|(s, _)| s).collect();
        }
    }
    Vec::new()
}

/// Reads a dotted key starting at byte `i` of `line`: its segments (unquoted) with their byte
/// ranges, and where the key ends.
fn dotted_key(line: &str, mut i: usize) -> (Vec<(String, Range<usize>)>, usize) {
    let b = line.as_bytes();
    let skip = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let mut segs = Vec::new();
    loop {
        i = skip(i);
        let start = i;
        let seg = match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                let mut j = i + 1;
                let mut text = String::new();
                while j < b.len() && b[j] != q {
                    if q == b'"' && b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    let ch = line[j..].chars().next().expect("in bounds");
                    text.push(ch);
                    j += ch.len_utf8();
                }
                i = (j + 1).min(b.len());
                text
            }
            _ => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-')
                {
                    i += 1;
                }
                line[start..i].to_string()
            }
        };
        if i == start {
            break;
        }
        segs.push((seg, start..i));
        let after = skip(i);
        if b.get(after) == Some(&b'.') {
            i = after + 1;
        } else {
            break;
        }
    }
    (segs, i)
}

/// The known key closest to a misspelt one, if any is close.
pub(crate) fn closest(word: &str, known: &[&'static str]) -> Option<&'static str> {
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

    /// Found by the `config` fuzz target: `"" = 21` was reported as `FILE:1:1: unknown key`,
    /// naming no key at all.
    #[test]
    fn unknown_keys_that_are_not_bare_are_named_quoted() {
        let text = "\"\" = 21\n[daemon]\n\"log file\" = 1\n\"a.b\" = 2\n";
        let d = match crate::config::Config::parse(Path::new("/w.toml"), text) {
            Err(crate::Error::Config(d)) => d,
            other => panic!("{other:?}"),
        };
        let got: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            got,
            [
                "/w.toml:1:1: \"\": unknown key",
                "/w.toml:3:1: daemon.\"log file\": unknown key",
                "/w.toml:4:1: daemon.\"a.b\": unknown key",
            ]
        );
    }

    #[test]
    fn key_at_names_the_key_of_a_place() {
        let src = "a = 1\n[daemon]\numask = \"022\"\n[program.\"we b\"]\nx.y = { z = 1 }\n";
        let at = |needle: &str| key_at(src, src.find(needle).unwrap());
        assert_eq!(at("a ="), Some(("a".into(), false)));
        assert_eq!(at("daemon]"), Some(("daemon".into(), true)));
        assert_eq!(at("umask"), Some(("daemon.umask".into(), false)));
        assert_eq!(at("program."), Some(("program".into(), true)));
        assert_eq!(at("\"we b\""), Some(("program.we b".into(), true)));
        assert_eq!(at("y ="), Some(("program.we b.x.y".into(), false)));
        assert_eq!(at("z ="), Some(("program.we b.x.y.z".into(), false)));
        // A multi-line array's line is not a header.
        let src = "[t]\nv = [\n  [1, 2],\n]\nw = 1\n";
        assert_eq!(
            key_at(src, src.find("w =").unwrap()),
            Some(("t.w".into(), false))
        );
        assert_eq!(key_at("= 1\n", 0), None);
    }

    #[test]
    fn durations_are_bounded() {
        let int = |n: u64| {
            let text = format!("x = {n}");
            let doc = DeTable::parse(&text).unwrap();
            duration_value(doc.get_ref().get("x").unwrap().get_ref())
        };
        assert_eq!(int(5), Ok(Duration::from_secs(5)));
        // A string of digits means seconds too, as on the command line (`--timeout 5`).
        let doc = DeTable::parse("x = \"5\"").unwrap();
        assert_eq!(
            duration_value(doc.get_ref().get("x").unwrap().get_ref()),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(parse_duration(" 90 "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .contains("invalid duration \"5x\"")
        );
        assert!(parse_duration("99999999999999999999").is_err());
        assert_eq!(int(365 * 24 * 3600), Ok(MAX_DURATION));
        assert_eq!(
            int(365 * 24 * 3600 + 1),
            Err("is too long: at most 365 days (8760h)".to_string())
        );
        let err = DeTable::parse("x = 18446744073709551615");
        // Beyond i64: TOML itself refuses it, or it reads and is refused here.
        if let Ok(doc) = err {
            assert!(duration_value(doc.get_ref().get("x").unwrap().get_ref()).is_err());
        }
        let doc = DeTable::parse("x = \"400days\"").unwrap();
        assert!(
            duration_value(doc.get_ref().get("x").unwrap().get_ref())
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(closest("pidfil", &["pidfile", "umask"]), Some("pidfile"));
        assert_eq!(closest("zzzzzz", &["pidfile", "umask"]), None);
    }
}
