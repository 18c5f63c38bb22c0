//! Environment files (`env_file`): systemd's `EnvironmentFile=` syntax → variables.
//!
//! This file owns the syntax and the reading of one file; the supervisor calls [`EnvFile::load`]
//! at each spawn (in the parent, before the fork) and `warden check` calls it through
//! [`super::preflight`]. It must not cache what it read (an edit applies at the next spawn), nor
//! log: the caller says what failed, once.
//!
//! # Syntax (as systemd's `parse_env_file`)
//!
//! One `KEY=VALUE` assignment per line. Blank lines, lines whose first non-blank character is
//! `#` or `;` (comments), and lines without `=` are ignored. Blanks around the key and around
//! the value are dropped; blanks inside an unquoted value are kept, and so are quotes after its
//! first character (`A=x "y"` is `x "y"`). An unquoted backslash keeps the next character
//! (`\\` is `\`); a backslash at the end of a line continues the value on the next one. A
//! value opening with `'` runs to the next `'`, verbatim, across lines; one opening with `"`
//! runs to the next unescaped `"`, where `\"`, `\\`, `` \` `` and `\$` stand for the character,
//! a backslash-newline is dropped, and any other backslash is kept with what follows. Quoted and
//! unquoted pieces next to each other join (`A='a'"b"c` is `abc`). Nothing is expanded.
//!
//! # Where warden is stricter than systemd
//!
//! systemd logs and ignores an assignment whose name is not a shell variable name
//! (`[A-Za-z_][A-Za-z0-9_]*`, so also `export A=b`) and reads an unclosed quote to the end of
//! the file; warden refuses both, so that `warden check` finds the variable that would silently
//! be missing. Like systemd, a NUL byte or a key or value that is not UTF-8 is an error.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One `env_file` entry: a path, and whether a missing file is fine (written with a leading `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvFile {
    /// The file, absolute once read from a configuration file (a relative path is taken from
    /// the directory of the file that names it).
    pub path: PathBuf,
    /// Written `-PATH`: a missing file (`ENOENT`) is skipped; any other problem is still an error.
    pub optional: bool,
}

impl EnvFile {
    /// A required file.
    pub fn new(path: impl Into<PathBuf>) -> EnvFile {
        EnvFile {
            path: path.into(),
            optional: false,
        }
    }

    /// `entry` as written in `env_file` (`"-PATH"` is optional), relative to `base`.
    pub(crate) fn from_entry(entry: &str, base: &Path) -> EnvFile {
        let (optional, path) = match entry.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        EnvFile {
            path: base.join(path),
            optional,
        }
    }

    /// Reads and parses the file: its assignments in file order (a later one of the same name
    /// replaces the earlier one in place). An optional file that does not exist is empty.
    ///
    /// Errors: [`Error::Io`] when the file cannot be read, [`Error::Invalid`] (`what` is
    /// `env_file`) naming `PATH:LINE:COLUMN` for a syntax error.
    pub fn load(&self) -> Result<Vec<(String, String)>> {
        let bytes = match crate::files::read_regular(&self.path) {
            Ok(b) => b,
            Err(e) if self.optional && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(Error::io("cannot read env_file", &self.path, e)),
        };
        parse(&bytes).map_err(|e| Error::Invalid {
            what: "env_file",
            reason: format!(
                "{}:{}:{}: {}",
                self.path.display(),
                e.line,
                e.column,
                e.message
            ),
        })
    }
}

/// A syntax error at a 1-based line and column (columns count bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// Where the scanner is, as systemd's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    SingleQuote,
    DoubleQuote,
    DoubleQuoteEscape,
    Comment,
}

/// A line and column in the text.
#[derive(Debug, Clone, Copy, Default)]
struct Pos {
    line: usize,
    column: usize,
}

/// The assignment being read.
#[derive(Debug, Default)]
struct Pending {
    key: Vec<u8>,
    value: Vec<u8>,
    /// Where the key starts.
    at: Pos,
    /// Where an open quote is.
    quote: Pos,
    /// Length of the value before its unquoted trailing blanks, while there are some.
    trailing_blank: Option<usize>,
    /// Length of the key before its trailing blanks.
    key_blank: Option<usize>,
}

fn is_blank(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_newline(c: u8) -> bool {
    matches!(c, b'\n' | b'\r')
}

/// Whether `name` is a shell variable name, as systemd's `env_name_is_valid`.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|c| c == b'_' || c.is_ascii_alphabetic())
        && bytes.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}

/// Parses an environment file's contents (see the module's documentation).
pub(crate) fn parse(text: &[u8]) -> std::result::Result<Vec<(String, String)>, SyntaxError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut state = State::PreKey;
    let mut cur = Pending::default();
    let mut pos = Pos { line: 1, column: 0 };
    for &c in text {
        pos.column += 1;
        if c == 0 {
            return Err(error(pos, "contains a NUL byte".into()));
        }
        state = step(state, c, pos, &mut cur, &mut out)?;
        if c == b'\n' {
            pos.line += 1;
            pos.column = 0;
        }
    }
    match state {
        State::SingleQuote | State::DoubleQuote | State::DoubleQuoteEscape => Err(error(
            cur.quote,
            "this quote is never closed (systemd would read to the end of the file)".into(),
        )),
        State::PreValue | State::Value | State::ValueEscape => {
            finish(&mut cur, &mut out)?;
            Ok(out)
        }
        State::PreKey | State::Key | State::Comment => Ok(out),
    }
}

fn error(at: Pos, message: String) -> SyntaxError {
    SyntaxError {
        line: at.line,
        column: at.column.max(1),
        message,
    }
}

/// One byte of the state machine; an assignment is stored when its line ends.
fn step(
    state: State,
    c: u8,
    pos: Pos,
    cur: &mut Pending,
    out: &mut Vec<(String, String)>,
) -> std::result::Result<State, SyntaxError> {
    Ok(match state {
        State::PreKey | State::Key | State::Comment => step_key(state, c, pos, cur),
        State::PreValue | State::Value if is_newline(c) => {
            finish(cur, out)?;
            State::PreKey
        }
        State::PreValue | State::Value | State::ValueEscape => step_unquoted(state, c, pos, cur),
        State::SingleQuote | State::DoubleQuote | State::DoubleQuoteEscape => {
            step_quoted(state, c, cur)
        }
    })
}

/// Before the `=`: blanks, comments, the key.
fn step_key(state: State, c: u8, pos: Pos, cur: &mut Pending) -> State {
    match state {
        State::PreKey if c == b'#' || c == b';' => State::Comment,
        State::PreKey if is_blank(c) => State::PreKey,
        State::PreKey => {
            *cur = Pending {
                key: vec![c],
                at: pos,
                ..Pending::default()
            };
            State::Key
        }
        State::Key if is_newline(c) => State::PreKey,
        State::Key if c == b'=' => State::PreValue,
        State::Key => {
            if !is_blank(c) {
                cur.key_blank = None;
            } else if cur.key_blank.is_none() {
                cur.key_blank = Some(cur.key.len());
            }
            cur.key.push(c);
            State::Key
        }
        State::Comment if is_newline(c) => State::PreKey,
        _ => State::Comment,
    }
}

/// After the `=`, outside quotes (a newline is handled by [`step`]).
fn step_unquoted(state: State, c: u8, pos: Pos, cur: &mut Pending) -> State {
    match state {
        State::PreValue if c == b'\'' || c == b'"' => {
            cur.quote = pos;
            if c == b'\'' {
                State::SingleQuote
            } else {
                State::DoubleQuote
            }
        }
        State::ValueEscape => {
            if !is_newline(c) {
                cur.value.push(c);
            }
            State::Value
        }
        _ if c == b'\\' => {
            cur.trailing_blank = None;
            State::ValueEscape
        }
        State::PreValue if is_blank(c) => State::PreValue,
        _ => {
            if !is_blank(c) {
                cur.trailing_blank = None;
            } else if cur.trailing_blank.is_none() {
                cur.trailing_blank = Some(cur.value.len());
            }
            cur.value.push(c);
            State::Value
        }
    }
}

/// Inside single or double quotes.
fn step_quoted(state: State, c: u8, cur: &mut Pending) -> State {
    match state {
        State::SingleQuote if c == b'\'' => State::PreValue,
        State::DoubleQuote if c == b'"' => State::PreValue,
        State::DoubleQuote if c == b'\\' => State::DoubleQuoteEscape,
        State::DoubleQuoteEscape => {
            if b"\"\\`$".contains(&c) {
                cur.value.push(c);
            } else if c != b'\n' {
                cur.value.extend([b'\\', c]);
            }
            State::DoubleQuote
        }
        _ => {
            cur.value.push(c);
            state
        }
    }
}

/// Stores the assignment read so far (trailing blanks of the key and of an unquoted value
/// dropped), replacing an earlier one of the same name.
fn finish(
    cur: &mut Pending,
    out: &mut Vec<(String, String)>,
) -> std::result::Result<(), SyntaxError> {
    let mut cur = std::mem::take(cur);
    if let Some(n) = cur.key_blank {
        cur.key.truncate(n);
    }
    if let Some(n) = cur.trailing_blank {
        cur.value.truncate(n);
    }
    let at = cur.at;
    let key = String::from_utf8(cur.key).map_err(|_| error(at, "the name is not UTF-8".into()))?;
    if !valid_name(&key) {
        let hint = if key.starts_with("export ") {
            " (systemd does not accept `export`: remove it)"
        } else {
            ""
        };
        return Err(error(
            at,
            format!(
                "{key:?} is not a variable name (letters, digits and '_', not starting with a \
                 digit){hint}"
            ),
        ));
    }
    let value = String::from_utf8(cur.value)
        .map_err(|_| error(at, format!("the value of {key} is not UTF-8")))?;
    match out.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => out.push((key, value)),
    }
    Ok(())
}

#[cfg(test)]
#[path = "env_file_tests.rs"]
mod tests;
