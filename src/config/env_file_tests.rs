//! The specification of the environment-file syntax: one test per rule of systemd's
//! `parse_env_file`, and each place where warden is stricter.

use super::*;

fn vars(text: &str) -> Vec<(String, String)> {
    parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
}

fn one(text: &str) -> String {
    let v = vars(text);
    assert_eq!(v.len(), 1, "{text:?} → {v:?}");
    v[0].1.clone()
}

fn err(text: &str) -> SyntaxError {
    parse(text.as_bytes()).expect_err(text)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn assignments_are_read_in_file_order() {
    assert_eq!(vars("A=1\nB=2\n"), pairs(&[("A", "1"), ("B", "2")]));
}

#[test]
fn the_last_line_needs_no_newline() {
    assert_eq!(vars("A=1\nB=2"), pairs(&[("A", "1"), ("B", "2")]));
}

#[test]
fn a_later_assignment_replaces_an_earlier_one_in_place() {
    assert_eq!(vars("A=1\nB=2\nA=3\n"), pairs(&[("A", "3"), ("B", "2")]));
}

#[test]
fn blank_lines_comments_and_lines_without_equals_are_ignored() {
    let text = "\n  \n# a comment\n; another\n   # indented\nNOEQUALS\nif [ -x x ]; then\nA=1\n";
    assert_eq!(vars(text), pairs(&[("A", "1")]));
}

#[test]
fn a_comment_ending_in_a_backslash_does_not_continue() {
    assert_eq!(vars("# x \\\nA=1\n"), pairs(&[("A", "1")]));
}

#[test]
fn a_hash_after_the_equals_sign_is_part_of_the_value() {
    assert_eq!(one("A=#x\n"), "#x");
    assert_eq!(one("A=x # not a comment\n"), "x # not a comment");
}

#[test]
fn blanks_around_key_and_value_are_dropped_inside_kept() {
    assert_eq!(vars("  A  =  x  y \t\n"), pairs(&[("A", "x  y")]));
}

#[test]
fn an_empty_value_is_an_empty_string() {
    assert_eq!(one("A=\n"), "");
    assert_eq!(one("A="), "");
    assert_eq!(one("A=   \n"), "");
}

#[test]
fn an_unquoted_backslash_keeps_the_next_character() {
    assert_eq!(one(r"A=a\\b\$c\x"), r"a\b$cx");
    // An escaped blank is not trailing blank.
    assert_eq!(one("A=a\\ \n"), "a ");
}

#[test]
fn a_backslash_newline_continues_an_unquoted_value() {
    assert_eq!(one("A=one \\\ntwo\n"), "one two");
}

#[test]
fn quotes_after_the_first_character_of_an_unquoted_value_are_kept() {
    assert_eq!(one("A=x \"y\" 'z'\n"), "x \"y\" 'z'");
}

#[test]
fn single_quotes_are_verbatim_and_may_span_lines() {
    assert_eq!(one("A='  a \\n $x \"\n b '\n"), "  a \\n $x \"\n b ");
}

#[test]
fn double_quotes_unescape_only_what_a_shell_does() {
    assert_eq!(one(r#"A="q\" b\\ d\$ t\` o\n""#), r#"q" b\ d$ t` o\n"#);
}

#[test]
fn a_backslash_newline_in_double_quotes_is_dropped() {
    assert_eq!(one("A=\"one \\\ntwo\"\n"), "one two");
}

#[test]
fn double_quotes_may_span_lines() {
    assert_eq!(one("A=\"a\nb\"\nB=2\n".split("B=").next().unwrap()), "a\nb");
    assert_eq!(vars("A=\"a\nb\"\nB=2\n")[1], ("B".into(), "2".into()));
}

#[test]
fn adjacent_quoted_and_unquoted_pieces_join() {
    assert_eq!(one("A='a'\"b\"c\n"), "abc");
    assert_eq!(one("A='a' \"b\"  \n"), "ab");
}

#[test]
fn carriage_returns_end_lines() {
    assert_eq!(vars("A=1\r\nB=2\r\n"), pairs(&[("A", "1"), ("B", "2")]));
}

#[test]
fn nothing_is_expanded() {
    assert_eq!(one("A=$HOME ${X} $(id) ~\n"), "$HOME ${X} $(id) ~");
}

#[test]
fn utf8_values_are_kept() {
    assert_eq!(one("GREETING=grüß dich\n"), "grüß dich");
}

#[test]
fn a_name_that_is_not_a_variable_name_is_an_error_at_its_line() {
    let e = err("A=1\n\n  1A=2\n");
    assert_eq!((e.line, e.column), (3, 3));
    assert!(
        e.message.contains("\"1A\" is not a variable name"),
        "{}",
        e.message
    );
    assert!(err("A-B=1").message.contains("not a variable name"));
    assert!(err("==1").message.contains("\"=\" is not a variable name"));
    // As in systemd, a line's first character always starts the key, even `=`: no `=` follows.
    assert_eq!(vars("=1\n"), Vec::new());
}

#[test]
fn export_is_refused_with_a_hint() {
    let e = err("export A=1\n");
    assert!(
        e.message.contains("systemd does not accept `export`"),
        "{}",
        e.message
    );
}

#[test]
fn an_unclosed_quote_is_an_error_where_it_opens() {
    let e = err("A=1\nB=\"abc\nC=2\n");
    assert_eq!((e.line, e.column), (2, 3));
    assert!(e.message.contains("never closed"));
    assert_eq!(err("A='x").line, 1);
}

#[test]
fn a_nul_byte_is_an_error() {
    let e = parse(b"A=1\nB=x\0y\n").unwrap_err();
    assert_eq!((e.line, e.column), (2, 4));
}

#[test]
fn a_value_that_is_not_utf8_is_an_error_but_a_comment_may_be_anything() {
    assert!(
        parse(b"A=\xff\n")
            .unwrap_err()
            .message
            .contains("not UTF-8")
    );
    assert_eq!(parse(b"# \xff\nA=1\n").unwrap(), pairs(&[("A", "1")]));
}

#[test]
fn a_leading_dash_makes_an_entry_optional_and_relative_paths_follow_the_file() {
    let base = Path::new("/etc/warden");
    assert_eq!(
        EnvFile::from_entry("-/etc/web/optional.env", base),
        EnvFile {
            path: "/etc/web/optional.env".into(),
            optional: true
        }
    );
    assert_eq!(
        EnvFile::from_entry("web.env", base),
        EnvFile {
            path: "/etc/warden/web.env".into(),
            optional: false
        }
    );
}

#[test]
fn load_skips_a_missing_optional_file_and_names_a_missing_required_one() {
    let dir = crate::test_support::TempDir::new("env-file-load");
    let missing = dir.path().join("missing.env");
    let optional = EnvFile {
        path: missing.clone(),
        optional: true,
    };
    assert_eq!(optional.load().unwrap(), Vec::new());
    let e = EnvFile::new(&missing).load().unwrap_err().to_string();
    assert!(
        e.contains("missing.env") && e.contains("No such file"),
        "{e}"
    );
    let bad = dir.path().join("bad.env");
    std::fs::write(&bad, "A=1\nexport B=2\n").unwrap();
    let e = EnvFile::new(&bad).load().unwrap_err().to_string();
    assert!(e.contains("bad.env:2:1: "), "{e}");
    // Optional means "may be missing", not "may be broken".
    let e = EnvFile {
        path: bad,
        optional: true,
    }
    .load()
    .unwrap_err();
    assert!(e.to_string().contains(":2:1:"));
}

/// Any text: parsing never panics, and what it returns is well-formed.
#[test]
fn arbitrary_bytes_never_panic_and_names_are_valid() {
    let alphabet = b"AB_1 =\t\n\r#;'\"\\$x\xc3\xa9\xff";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 24) as usize;
        let mut s = seed;
        let text: Vec<u8> = (0..len)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                alphabet[(s >> 33) as usize % alphabet.len()]
            })
            .collect();
        if let Ok(vars) = parse(&text) {
            for (k, _) in &vars {
                assert!(valid_name(k), "{text:?} gave {k:?}");
            }
            let mut names: Vec<_> = vars.iter().map(|(k, _)| k).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), vars.len());
        }
    }
}

/// `value` written as a systemd environment file would carry it, in `style`: 0 single-quoted,
/// 1 double-quoted, 2 unquoted with backslashes; `None` where the style cannot carry it (a `'`
/// in single quotes, a line break unquoted).
fn render(value: &str, style: u8) -> Option<String> {
    match style {
        0 if value.contains('\'') => None,
        0 => Some(format!("'{value}'")),
        1 => {
            let mut s = String::from("\"");
            for c in value.chars() {
                if "\"\\`$".contains(c) {
                    s.push('\\');
                }
                s.push(c);
            }
            Some(s + "\"")
        }
        _ if value.contains(['\n', '\r']) => None,
        _ => Some(
            value
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() {
                        c.to_string()
                    } else {
                        format!("\\{c}")
                    }
                })
                .collect(),
        ),
    }
}

proptest::proptest! {
    /// Any names and values, written in any of systemd's three styles among blank lines,
    /// comments and blanks around `=`, read back as written.
    #[test]
    fn generated_files_read_back_as_generated(
        vars in proptest::collection::btree_map(
            "[A-Za-z_][A-Za-z0-9_]{0,6}",
            "[ a\\\\'\"$`#;=\n\r\té]{0,8}",
            0..6,
        ),
        styles in proptest::collection::vec(0u8..3, 6),
        padded in proptest::collection::vec(proptest::bool::ANY, 6),
    ) {
        let mut text = String::from("# generated\n\n");
        let mut want = Vec::new();
        for (i, (k, v)) in vars.iter().enumerate() {
            let Some(r) = (0..3).find_map(|n| render(v, (styles[i] + n) % 3)) else {
                continue;
            };
            let sep = if padded[i] { " = " } else { "=" };
            text.push_str(&format!("{k}{sep}{r}\n; between\n"));
            want.push((k.clone(), v.clone()));
        }
        proptest::prop_assert_eq!(parse(text.as_bytes()).map_err(|e| e.message), Ok(want), "{}", text);
    }
}
