//! Configuration diagnostics: every problem found in the configuration, each with its file, line
//! and column. A `Collector` works on one file (the main file, or one drop-in read through
//! `include`); the reader runs one per file and concatenates their results in load order.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when the problem is not tied to a place in the file.
    pub line: usize,
    /// 1-based column, 0 when the problem is not tied to a place in the file.
    pub column: usize,
    /// The dotted key concerned (`daemon.umask`), empty for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Diagnostic {
    /// A problem with `key` at `place`, or in `file` without a place when `place` is `None`.
    pub(crate) fn new(
        place: Option<&Place>,
        file: &Path,
        key: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (file, line, column) = match place {
            Some(p) => (p.file.clone(), p.line, p.column),
            None => (file.to_path_buf(), 0, 0),
        };
        Diagnostic {
            file,
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration: file by file (the main file first, then the drop-ins
/// in load order), each file's in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Where a value was written: file, 1-based line and column. The reader records one for each
/// value that only the running system can judge (`user`, `command`, `pidfile`, …), so that
/// [`super::preflight`] can name the place of what it finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) file: PathBuf,
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// Collects diagnostics for one source text, turning byte spans into lines and columns.
pub(crate) struct Collector<'a> {
    file: &'a Path,
    source: &'a str,
    found: Vec<(usize, Diagnostic)>,
    places: Vec<(String, Place)>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(file: &'a Path, source: &'a str) -> Self {
        Collector {
            file,
            source,
            found: Vec::new(),
            places: Vec::new(),
        }
    }

    /// The file this collector reports in.
    pub(crate) fn file(&self) -> &'a Path {
        self.file
    }

    /// The place of byte offset `offset` of the source.
    pub(crate) fn place(&self, offset: usize) -> Place {
        let (line, column) = line_column(self.source, offset);
        Place {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    /// Remembers where the value of `key` (a dotted key) starts.
    pub(crate) fn note(&mut self, key: &str, span: Range<usize>) {
        let place = self.place(span.start);
        self.places.push((key.to_string(), place));
    }

    /// Takes the places noted so far.
    pub(crate) fn take_places(&mut self) -> Vec<(String, Place)> {
        std::mem::take(&mut self.places)
    }

    /// Records a problem at `span` (a byte range of the source).
    pub(crate) fn at(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = line_column(self.source, span.start);
        self.found.push((
            span.start,
            Diagnostic {
                file: self.file.to_path_buf(),
                line,
                column,
                key: key.to_string(),
                message: message.into(),
            },
        ));
    }

    pub(crate) fn finish(mut self) -> Diagnostics {
        self.found.sort_by_key(|(offset, _)| *offset);
        Diagnostics(self.found.into_iter().map(|(_, d)| d).collect())
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 6), (2, 1));
        assert_eq!(line_column(s, 9), (2, 4));
        assert_eq!(line_column(s, 999), (3, 1));
    }
}
