//! `include`: the drop-in files a configuration pulls in — the patterns read from the top
//! level, expanded in a stable order, and each drop-in read and merged (its `[program.NAME]`
//! tables only), every problem at its place.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::read::Section;
use super::*;
use crate::error::diag::{Collector, Place};

/// Reads the top-level `include`: an array of non-empty glob patterns, each with its span.
pub(super) fn read_include(
    c: &mut Collector<'_>,
    root: &mut Section<'_, '_>,
) -> Vec<Spanned<String>> {
    let Some(v) = root.raw("include") else {
        return Vec::new();
    };
    let DeValue::Array(items) = v.get_ref() else {
        c.at(
            v.span(),
            "include",
            format!(
                "expected an array of glob patterns such as [\"conf.d/*.toml\"], found {}",
                v.get_ref().type_str()
            ),
        );
        return Vec::new();
    };
    let mut patterns = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(s) if s.is_empty() => {
                c.at(item.span(), "include", "a pattern must not be empty")
            }
            DeValue::String(s) if s.contains('\0') => {
                c.at(item.span(), "include", "must not contain a NUL byte")
            }
            DeValue::String(s) => patterns.push(Spanned::new(item.span(), s.to_string())),
            other => c.at(
                item.span(),
                "include",
                format!("expected a string, found {}", other.type_str()),
            ),
        }
    }
    patterns
}

/// Reads each matched drop-in: the programs it defines join `programs` (one already defined is
/// reported in the drop-in instead), its places join `places`. Returns the files read and the
/// drop-ins' diagnostics.
pub(super) fn read_drop_ins(
    matched: &[PathBuf],
    main: &Path,
    source: &Path,
    files: &mut HashMap<PathBuf, String>,
    programs: &mut Vec<ProgramSpec>,
    places: &mut BTreeMap<String, Place>,
) -> (Vec<PathBuf>, Vec<diag::Diagnostic>) {
    let mut included = Vec::new();
    let mut drop_in_diags = Vec::new();
    for file in matched {
        let text = match read_drop_in(file, source) {
            DropIn::Text(t) => t,
            DropIn::Skip => continue,
            DropIn::Problem(d) => {
                drop_in_diags.extend(d.0);
                continue;
            }
        };
        included.push(file.clone());
        let mut dc = Collector::new(file, &text);
        let found = read_drop_in_programs(&mut dc, &text, main, files);
        let mut dplaces = dc.take_places();
        for (p, span) in found {
            let table = format!("[program.{}]", p.name);
            if let Some(first) = places.get(&table) {
                dc.at(
                    span,
                    &format!("program.{}", p.name),
                    format!(
                        "defined twice: [program.{}] is already defined at {}:{}:{} (a program \
                         is defined in one file only)",
                        p.name,
                        first.file.display(),
                        first.line,
                        first.column
                    ),
                );
                dplaces.retain(|(k, _)| !of_program(k, &p.name));
                continue;
            }
            programs.push(p);
        }
        places.extend(dplaces);
        drop_in_diags.extend(dc.finish().0);
    }
    (included, drop_in_diags)
}

/// Expands the `include` patterns: each pattern's matches sorted by path, pattern by pattern,
/// every path once (where first matched), the main file (`main`) left out. A malformed pattern
/// or a directory that cannot be searched is reported at the pattern.
pub(super) fn expand(
    c: &mut Collector<'_>,
    patterns: &[Spanned<String>],
    base: &Path,
    main: &Path,
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let Some(matched) = matches_of(c, pattern, base) else {
            continue;
        };
        for p in matched {
            if !out.contains(&p) && p != main {
                out.push(p);
            }
        }
    }
    out
}

/// The paths one `include` pattern matches, sorted; `None` (reported) when it is malformed.
pub(super) fn matches_of(
    c: &mut Collector<'_>,
    pattern: &Spanned<String>,
    base: &Path,
) -> Option<Vec<PathBuf>> {
    // `*` must not cross a `/`. Leading dots are filtered below rather than by the glob crate,
    // whose own filter panics on a file name that is not UTF-8.
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let text = pattern.get_ref();
    let full = absolute_pattern(c, pattern, base)?;
    let last_dot = text.rsplit('/').next().is_some_and(|l| l.starts_with('.'));
    let paths = match glob::glob_with(&full, options) {
        Ok(p) => p,
        Err(e) => {
            c.at(
                pattern.span(),
                "include",
                format!("{text:?} is not a valid glob pattern: {}", e.msg),
            );
            return None;
        }
    };
    let mut matched = Vec::new();
    for entry in paths {
        match entry {
            Ok(p) => {
                let hidden = p
                    .file_name()
                    .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
                if !hidden || last_dot {
                    matched.push(p);
                }
            }
            Err(e) => c.at(
                pattern.span(),
                "include",
                format!("cannot search {}: {}", e.path().display(), e.error()),
            ),
        }
    }
    matched.sort();
    Some(matched)
}

/// A valid `include` pattern made absolute (a relative one is taken from `base`, escaped);
/// `None` (reported) when it is not a valid pattern or `base` is not UTF-8.
pub(super) fn absolute_pattern(
    c: &mut Collector<'_>,
    pattern: &Spanned<String>,
    base: &Path,
) -> Option<String> {
    let text = pattern.get_ref();
    if let Err(e) = glob::Pattern::new(text) {
        c.at(
            pattern.span(),
            "include",
            format!(
                "{text:?} is not a valid glob pattern: {} (at character {})",
                e.msg,
                e.pos + 1
            ),
        );
        return None;
    }
    if Path::new(text).is_absolute() {
        return Some(text.clone());
    }
    let Some(dir) = base.to_str() else {
        c.at(
            pattern.span(),
            "include",
            format!(
                "the directory {} is not UTF-8, so a relative pattern cannot be \
                 expanded in it: write an absolute one",
                base.display()
            ),
        );
        return None;
    };
    let dir = glob::Pattern::escape(dir);
    Some(format!("{}/{text}", dir.trim_end_matches('/')))
}

/// What reading one matched drop-in gave.
pub(super) enum DropIn {
    /// Its text.
    Text(String),
    /// A directory, or the main file under another name: not read.
    Skip,
    /// It could not be read, is not a regular file, or is not UTF-8.
    Problem(Diagnostics),
}

/// Reads the drop-in at `path`. It is opened without blocking (a FIFO matched by a pattern must
/// not hang the reader) and judged by what was opened, not by an earlier look at the path.
pub(super) fn read_drop_in(path: &Path, main: &Path) -> DropIn {
    let problem = |message: String| {
        DropIn::Problem(Diagnostics(vec![Diagnostic::new(None, path, "", message)]))
    };
    let opened = crate::files::open_read(path, crate::files::Allow::RegularOrDirectory);
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => return problem(format!("cannot read this included file: {e}")),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return problem(format!("cannot read this included file: {e}")),
    };
    if meta.is_dir() {
        return DropIn::Skip;
    }
    if std::fs::metadata(main).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino()) {
        return DropIn::Skip;
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.read_to_end(&mut bytes) {
        return problem(format!("cannot read this included file: {e}"));
    }
    match utf8(path, bytes) {
        Ok(text) => DropIn::Text(text),
        Err(d) => DropIn::Problem(d),
    }
}

/// Reads the programs of a drop-in (`c` reports in it), refusing anything else at its top
/// level. `main` is the including file, for messages.
pub(super) fn read_drop_in_programs(
    c: &mut Collector<'_>,
    text: &str,
    main: &Path,
    files: &mut HashMap<PathBuf, String>,
) -> Vec<(ProgramSpec, std::ops::Range<usize>)> {
    let file = c.file();
    let (doc, syntax) = DeTable::parse_recoverable(text);
    syntax_errors(c, text, &syntax);
    let mut root = Section::new("", doc.get_ref(), keys::DROP_IN);
    let programs = match root.table(c, "program") {
        Some(t) => program::read_programs(c, t, &base_dir(file), file, files),
        None => Vec::new(),
    };
    if syntax.is_empty() {
        for (k, _) in doc.get_ref().iter() {
            let key: &str = k.get_ref();
            let message = match key {
                "program" => continue,
                "daemon" => format!(
                    "a drop-in file holds [program.NAME] tables only: [daemon] belongs in {}",
                    main.display()
                ),
                "include" => format!(
                    "a drop-in file cannot include others: include is read in {} only",
                    main.display()
                ),
                "socket" => format!(
                    "a drop-in file holds [program.NAME] tables only: [socket.NAME] belongs in {}",
                    main.display()
                ),
                _ => "unknown key: a drop-in file holds [program.NAME] tables only".to_string(),
            };
            c.at(k.span(), key, message);
        }
    }
    programs
}
