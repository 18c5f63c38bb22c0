//! Drift tests: the man pages against the code. The lists come from the code itself — clap's
//! `Verb` for warden(8)'s commands and options, [`warden::config::KEYS`] for warden.toml(5)'s
//! keys, [`super::exit`]'s `ALL` lists for the exit statuses — so that a subcommand, option, key
//! or status added to the code and not to the page fails the suite.
//!
//! The pages are roff: mdoc(7) (`.It Fl -timeout`, `.It Cm pidfile`) or man(7) (`.TP` then
//! `.B \-\-timeout`). [`Page`] reads either into sections and list entries, with each line
//! reduced to the words it renders as (macros dropped, `Fl` arguments given their dash, escapes
//! such as `\-` and `\&` undone), and words are matched whole: `--json` is not found in
//! `--json-foo`.

use std::collections::BTreeSet;

use clap::CommandFactory;

use super::Cli;
use super::exit;

const WARDEN_8: &str = include_str!("../../man/warden.8");
const WARDEN_TOML_5: &str = include_str!("../../man/warden.toml.5");

/// mdoc(7) macros that may appear on a macro line, called or parsed; dropped from the text.
const MDOC_MACROS: &[&str] = &[
    "Ad", "An", "Ap", "Ar", "At", "Bc", "Bd", "Bf", "Bk", "Bl", "Bo", "Bq", "Brc", "Bro", "Brq",
    "Bx", "Cd", "Cm", "D1", "Dc", "Dl", "Do", "Dq", "Dv", "Ec", "Ed", "Ef", "Ek", "El", "Em", "En",
    "Eo", "Er", "Es", "Ev", "Ex", "Fa", "Fc", "Fd", "Fl", "Fn", "Fo", "Ft", "Ic", "In", "It", "Lb",
    "Li", "Lk", "Ms", "Mt", "Nd", "Nm", "No", "Ns", "Oc", "Oo", "Op", "Pa", "Pc", "Pf", "Po", "Pp",
    "Pq", "Qc", "Ql", "Qo", "Qq", "Sh", "Sm", "So", "Sq", "Ss", "St", "Sx", "Sy", "Ta", "Tn", "Ux",
    "Va", "Vt", "Xc", "Xo", "Xr",
];

/// One input line of a page, reduced to what matters here.
#[derive(Debug, Clone)]
struct Line {
    /// The request or macro (`"It"`, `"Sh"`, `"TP"`…), empty for a text line.
    request: String,
    /// The words it renders as.
    text: String,
}

/// A list entry: its head (an `.It` line, or the line after `.TP`) and everything up to the next
/// entry of the same list.
#[derive(Debug, Clone)]
struct Entry {
    head: String,
    body: String,
}

impl Entry {
    /// The first word of the head: the name of what the entry documents.
    fn name(&self) -> &str {
        self.head.split_whitespace().next().unwrap_or("")
    }

    fn text(&self) -> String {
        format!("{}\n{}", self.head, self.body)
    }
}

/// A page (or part of one) as lines.
#[derive(Debug, Clone)]
struct Page {
    lines: Vec<Line>,
}

impl Page {
    fn parse(source: &str) -> Page {
        let lines = source
            .lines()
            .filter(|l| !l.starts_with(".\\\"") && !l.starts_with("'\\\""))
            .map(parse_line)
            .collect();
        Page { lines }
    }

    /// The part of the page under the heading `title` (`.Sh`/`.SH`, or `.Ss`/`.SS` with `sub`),
    /// up to the next heading of the same level or above.
    fn section(&self, title: &str, sub: bool) -> Option<Page> {
        let heading = |l: &Line| match l.request.as_str() {
            "Sh" | "SH" => Some(1),
            "Ss" | "SS" if sub => Some(2),
            _ => None,
        };
        let level = if sub { 2 } else { 1 };
        let start = self
            .lines
            .iter()
            .position(|l| heading(l) == Some(level) && l.text == title)?;
        let end = self.lines[start + 1..]
            .iter()
            .position(|l| heading(l).is_some_and(|h| h <= level))
            .map_or(self.lines.len(), |i| start + 1 + i);
        Some(Page {
            lines: self.lines[start + 1..end].to_vec(),
        })
    }

    /// The entries of the outermost lists (mdoc `.Bl`/`.It`/`.El`; man `.TP`): nested lists
    /// stay inside the body of their entry.
    fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        let mut depth = 0usize;
        let mut after_tp = false;
        for l in &self.lines {
            match l.request.as_str() {
                "Bl" => depth += 1,
                "El" => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        // The list is over: what follows belongs to no entry.
                        out.push(Entry {
                            head: String::new(),
                            body: String::new(),
                        });
                        continue;
                    }
                }
                "It" if depth == 1 => {
                    out.push(Entry {
                        head: l.text.clone(),
                        body: String::new(),
                    });
                    continue;
                }
                "TP" => {
                    after_tp = true;
                    continue;
                }
                // A man(7) paragraph ends a .TP list.
                "SH" | "SS" | "PP" | "LP" | "P" if depth == 0 => {
                    after_tp = false;
                    out.push(Entry {
                        head: String::new(),
                        body: String::new(),
                    });
                    continue;
                }
                _ if after_tp => {
                    after_tp = false;
                    out.push(Entry {
                        head: l.text.clone(),
                        body: String::new(),
                    });
                    continue;
                }
                _ => {}
            }
            if let Some(e) = out.last_mut() {
                e.body.push_str(&l.text);
                e.body.push('\n');
            }
        }
        out.retain(|e| !e.head.is_empty());
        out
    }

    fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Undoes the roff escapes that matter for matching words.
fn unescape(s: &str) -> String {
    s.replace("\\&", "")
        .replace("\\-", "-")
        .replace("\\(dq", "\"")
        .replace("\\(aq", "'")
        .replace("\\e", "\\")
        .replace("\\ ", " ")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
}

/// Splits a macro line's arguments as roff does: on blanks, `"…"` quoting (with `""` for a
/// quote).
fn arguments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        word.push('"');
                    } else {
                        break;
                    }
                } else {
                    word.push(c);
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' || c == '\t' {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    out
}

fn parse_line(raw: &str) -> Line {
    let Some(rest) = raw.strip_prefix('.').or_else(|| raw.strip_prefix('\'')) else {
        return Line {
            request: String::new(),
            text: unescape(raw),
        };
    };
    let args = arguments(rest.trim_start());
    let Some((request, args)) = args.split_first() else {
        return Line {
            request: String::new(),
            text: String::new(),
        };
    };
    // mdoc: `Fl` gives each following argument its dash, up to the next macro.
    let mut words = Vec::new();
    let mut flag = request == "Fl";
    for a in args {
        if MDOC_MACROS.contains(&a.as_str()) {
            flag = a == "Fl";
            continue;
        }
        let a = unescape(a);
        let delimiter = a.len() == 1 && "|,.;:()[]?!".contains(a.as_str());
        if flag && !delimiter {
            words.push(format!("-{a}"));
        } else {
            words.push(a);
        }
    }
    if flag && args.is_empty() {
        words.push("-".into());
    }
    Line {
        request: request.clone(),
        text: words.join(" "),
    }
}

/// Whether `word` occurs in `text` as a whole word: not preceded or followed by a letter, digit,
/// `-` or `_`.
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

/// clap's command tree, built: with the generated `help` subcommand and `--help`/`--version`.
fn cli() -> clap::Command {
    let mut cmd = <Cli as CommandFactory>::command();
    cmd.build();
    cmd
}

/// The long and short options of `cmd`, as written on a command line (`--timeout`, `-c`).
fn flags(arg: &clap::Arg) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(long) = arg.get_long() {
        v.push(format!("--{long}"));
    }
    if let Some(short) = arg.get_short() {
        v.push(format!("-{short}"));
    }
    v
}

/// Generated by clap for every command, documented once under OPTIONS.
fn generated(arg: &clap::Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

#[test]
fn every_subcommand_and_option_is_in_warden_8() {
    let page = Page::parse(WARDEN_8);
    let commands = page
        .section("COMMANDS", false)
        .expect("warden(8) has a COMMANDS section");
    let options = page
        .section("OPTIONS", false)
        .expect("warden(8) has an OPTIONS section");
    let synopsis = page
        .section("SYNOPSIS", false)
        .expect("warden(8) has a SYNOPSIS section")
        .text();
    let entries = commands.entries();
    let option_heads: Vec<String> = options.entries().into_iter().map(|e| e.head).collect();
    let mut missing = Vec::new();
    let mut all_flags = BTreeSet::new();

    let cmd = cli();
    for arg in cmd.get_arguments() {
        all_flags.extend(flags(arg));
    }
    assert!(
        all_flags.contains("--config"),
        "the global option is read from clap"
    );
    let mut seen = 0;
    // A hidden command is internal (`resume`, what `upgrade` executes): not the operator's.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        seen += 1;
        let name = sub.get_name();
        if !has_word(&synopsis, name) {
            missing.push(format!("SYNOPSIS: command {name}"));
        }
        let Some(entry) = entries.iter().find(|e| e.name() == name) else {
            missing.push(format!("COMMANDS: no entry for command {name}"));
            continue;
        };
        let text = entry.text();
        for arg in sub.get_arguments() {
            all_flags.extend(flags(arg));
            if arg.is_global_set() || generated(arg) {
                continue;
            }
            // Its own options, in its own entry.
            for f in flags(arg).iter().filter(|f| f.starts_with("--")) {
                if !has_word(&text, f) {
                    missing.push(format!("COMMANDS, {name}: option {f}"));
                }
            }
            // The values a positional argument takes (e.g. the shells of `completions`).
            if arg.is_positional() {
                for v in arg
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                {
                    if !has_word(&text, v.get_name()) {
                        missing.push(format!("COMMANDS, {name}: value {}", v.get_name()));
                    }
                }
            }
        }
    }
    assert!(seen >= 10, "clap lists {seen} subcommands");
    for f in &all_flags {
        if !option_heads.iter().any(|h| has_word(h, f)) {
            missing.push(format!("OPTIONS: no entry for option {f}"));
        }
    }
    assert!(
        missing.is_empty(),
        "man/warden.8 lacks what the command line has:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_config_key_is_in_warden_toml_5() {
    let page = Page::parse(WARDEN_TOML_5);
    let mut missing = Vec::new();
    for table in warden::config::KEYS {
        let title = if table.table.is_empty() {
            "TOP LEVEL".to_string()
        } else {
            format!("[{}]", table.table)
        };
        let Some(section) = page.section(&title, false) else {
            missing.push(format!("no section {title}"));
            continue;
        };
        let documented: Vec<String> = section
            .entries()
            .iter()
            .map(|e| e.name().to_string())
            .collect();
        for key in table.keys {
            if !documented.iter().any(|d| d == key) {
                missing.push(format!("{title}: no entry for key {key}"));
            }
        }
        // And the other way: a documented key the reader refuses is a lie in the page.
        for d in &documented {
            if !table.keys.contains(&d.as_str()) {
                missing.push(format!(
                    "{title}: documents {d}, which the reader does not accept"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "man/warden.toml.5 and config::KEYS disagree:\n  {}",
        missing.join("\n  ")
    );
}

/// The literal blocks of a page's EXAMPLES section, in order.
fn example_blocks(source: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut in_examples = false;
    let mut current: Option<Vec<String>> = None;
    for line in source.lines() {
        if let Some(title) = line.strip_prefix(".Sh ") {
            in_examples = title.trim() == "EXAMPLES";
            continue;
        }
        if !in_examples {
            continue;
        }
        if line.starts_with(".Bd -literal") {
            current = Some(Vec::new());
        } else if line.starts_with(".Ed") {
            if let Some(b) = current.take() {
                blocks.push(b.join("\n") + "\n");
            }
        } else if let Some(b) = current.as_mut() {
            b.push(unescape(line));
        }
    }
    blocks
}

/// The complete example of warden.toml(5), with its drop-in, is a valid configuration.
#[test]
fn the_example_of_warden_toml_5_is_valid() {
    let blocks = example_blocks(WARDEN_TOML_5);
    assert!(blocks.len() >= 2, "a main file and a drop-in: {blocks:#?}");
    let dir = std::env::temp_dir().join(format!("warden-man-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(dir.join("warden.toml"), &blocks[0]).unwrap();
    std::fs::write(dir.join("conf.d/notifier.toml"), &blocks[1]).unwrap();
    let loaded = warden::config::Config::load(&dir.join("warden.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
    let config = match loaded {
        Ok(c) => c,
        Err(warden::Error::Config(d)) => panic!("the example is invalid:\n{d}"),
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = config.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ticker", "web", "notifier"]);
}

#[test]
fn every_exit_status_is_in_warden_8() {
    let page = Page::parse(WARDEN_8);
    let section = page
        .section("EXIT STATUS", false)
        .expect("warden(8) has an EXIT STATUS section");
    let mut problems = Vec::new();
    for (title, codes) in [
        ("All commands but status", exit::ALL),
        ("status", exit::status::ALL),
    ] {
        let Some(sub) = section.section(title, true) else {
            problems.push(format!("no subsection {title:?}"));
            continue;
        };
        let documented: BTreeSet<String> =
            sub.entries().iter().map(|e| e.name().to_string()).collect();
        let defined: BTreeSet<String> = codes.iter().map(|(_, c)| c.to_string()).collect();
        for (name, code) in codes {
            if !documented.contains(&code.to_string()) {
                problems.push(format!("{title}: status {code} ({name}) is not documented"));
            }
        }
        // And nothing the binary does not return.
        for d in documented.difference(&defined) {
            problems.push(format!("{title}: status {d} is documented but not defined"));
        }
    }
    assert!(
        problems.is_empty(),
        "EXIT STATUS of man/warden.8 and src/cli/exit.rs differ:\n  {}",
        problems.join("\n  ")
    );
}

/// The reader of the pages themselves: what the tests above rely on.
#[test]
fn pages_are_read_as_rendered() {
    let l = parse_line(".It Fl c Ar file , Fl -config Ar file");
    assert_eq!(l.request, "It");
    assert_eq!(l.text, "-c file , --config file");
    assert_eq!(
        parse_line(".Fl h | -help | V | -version").text,
        "-h | --help | -V | --version"
    );
    assert_eq!(
        parse_line(".Op Fl -timeout Ar duration").text,
        "--timeout duration"
    );
    assert_eq!(parse_line(".B \\-\\-dry\\-run").text, "--dry-run");
    assert_eq!(parse_line("\\&.Ql \\(dqx\\(dq").text, ".Ql \"x\"");
    assert_eq!(
        arguments(r#"Sh "EXIT STATUS" x"#),
        ["Sh", "EXIT STATUS", "x"]
    );

    assert!(has_word("use --json here", "--json"));
    assert!(has_word("(--json)", "--json"));
    assert!(!has_word("--json-foo", "--json"));
    assert!(!has_word("x--json", "--json"));
    assert!(!has_word("--jsonx", "--json"));

    let mdoc = Page::parse(
        ".Sh A\n.Bl -tag\n.It Cm one\nbody\n.Bl -tag\n.It Cm nested\n.El\n.It Cm two\n.El\ntail\n.Sh B\n.Bl -tag\n.It Cm three\n.El\n",
    );
    let a = mdoc.section("A", false).unwrap();
    let names: Vec<String> = a.entries().iter().map(|e| e.name().to_string()).collect();
    assert_eq!(names, ["one", "two"]);
    assert!(a.entries()[0].body.contains("nested"));
    assert!(!a.entries()[1].body.contains("tail"));
    assert!(mdoc.section("C", false).is_none());

    let man = Page::parse(
        ".SH OPTIONS\n.TP\n.B \\-\\-timeout\nhow long\n.TP\n.BR \\-c \", \" \\-\\-config\nfile\n.PP\nafter\n",
    );
    let e = man.section("OPTIONS", false).unwrap().entries();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].name(), "--timeout");
    assert!(has_word(&e[1].head, "--config"));
    assert!(!e[1].body.contains("after"));
}
