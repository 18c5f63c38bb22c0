//! Tests of `include`: drop-in files found by glob, read in order, holding programs only, every
//! problem at its file, line and column. Each test works in a directory of its own under the
//! system's temporary directory, removed at the end (also on failure).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::*;

/// A temporary directory with a main file and drop-ins, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("warden-include-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Writes `text` at `rel` (creating directories) and returns its path.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Writes the main file `warden.toml` and loads it.
    fn load(&self, main: &str) -> Result<Config> {
        let p = self.write("warden.toml", main);
        Config::load(&p)
    }

    /// Like [`Dir::load`], expecting errors: each as a string, the directory shown as `DIR`.
    fn errors(&self, main: &str) -> Vec<String> {
        match self.load(main) {
            Err(Error::Config(d)) => d
                .iter()
                .map(|d| d.to_string().replace(&self.0.display().to_string(), "DIR"))
                .collect(),
            other => panic!("expected config errors, got {other:?}"),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn program(name: &str) -> String {
    format!("[program.{name}]\ncommand = \"/bin/true\"\n")
}

fn names(c: &Config) -> Vec<&str> {
    c.programs.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn drop_ins_load_pattern_by_pattern_each_sorted_after_the_main_file() {
    let d = Dir::new("order");
    d.write("conf.d/b.toml", &program("b"));
    d.write("conf.d/a.toml", &program("a"));
    d.write(
        "conf.d/c.toml",
        &format!("{}{}", program("c2"), program("c1")),
    );
    d.write("conf.d/notes.txt", &program("txt"));
    d.write("more/z.toml", &program("z"));
    let c = d
        .load(&format!(
            "include = [\"more/*.toml\", \"conf.d/*.toml\", \"conf.d/a.toml\"]\n{}",
            program("main")
        ))
        .unwrap();
    // The main file's programs first, then pattern by pattern, each pattern's files sorted,
    // each file's programs in file order; a file matched twice is read where first matched.
    assert_eq!(names(&c), ["main", "z", "a", "b", "c2", "c1"]);
    assert_eq!(
        c.included,
        [
            d.path("more/z.toml"),
            d.path("conf.d/a.toml"),
            d.path("conf.d/b.toml"),
            d.path("conf.d/c.toml")
        ]
    );
    let source = |name: &str| {
        c.programs
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .source
            .clone()
    };
    assert_eq!(source("main"), Some(d.path("warden.toml")));
    assert_eq!(source("c1"), Some(d.path("conf.d/c.toml")));
}

#[test]
fn patterns_and_paths_are_relative_to_the_file_they_are_written_in() {
    // The directory's name holds glob characters: it must be taken literally.
    let d = Dir::new("base[1]*");
    d.write(
        "conf.d/web.toml",
        "[program.web]\ncommand = \"/bin/true\"\ndirectory = \"work\"\nstdout = \"./web.out\"\n",
    );
    // An absolute pattern is taken as written (its own glob characters are its own business).
    let other = Dir::new("elsewhere");
    let abs = other.write("abs.toml", &program("abs"));
    let c = d
        .load(&format!(
            "include = [\"conf.d/*.toml\", {:?}]\n[daemon]\npidfile = \"run/w.pid\"\n",
            abs.display().to_string()
        ))
        .unwrap();
    assert_eq!(names(&c), ["web", "abs"]);
    let web = &c.programs[0];
    assert_eq!(web.exec.directory, Some(d.path("conf.d/work")));
    assert_eq!(web.stdout, OutputSpec::File(d.path("conf.d/web.out")));
    assert_eq!(c.daemon.pidfile, d.path("run/w.pid"));
}

#[test]
fn a_pattern_that_matches_nothing_is_no_error_and_directories_and_hidden_files_are_skipped() {
    let d = Dir::new("empty");
    let c = d.load("include = [\"conf.d/*.toml\"]\n").unwrap();
    assert!(c.programs.is_empty() && c.included.is_empty());
    std::fs::create_dir_all(d.path("conf.d/sub.toml")).unwrap();
    d.write("conf.d/.web.toml", &program("hidden"));
    d.write("conf.d/.web.toml.swp", "\u{0}garbage");
    // A file name that is not UTF-8 (the glob crate's own dot filter panics on one).
    std::fs::write(
        d.path("conf.d")
            .join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        "x",
    )
    .unwrap();
    let c = d.load("include = [\"conf.d/*\"]\n").unwrap();
    assert!(c.programs.is_empty(), "{:?}", c.programs);
    assert!(c.included.is_empty(), "{:?}", c.included);
    // A pattern that asks for dot files gets them.
    let c = d.load("include = [\"conf.d/.*.toml\"]\n").unwrap();
    assert_eq!(names(&c), ["hidden"]);
    // The main file is not its own drop-in.
    let c = d
        .load(&format!("include = [\"*.toml\"]\n{}", program("main")))
        .unwrap();
    assert_eq!(names(&c), ["main"]);
}

#[test]
fn a_program_defined_twice_names_both_files_and_places() {
    let d = Dir::new("twice");
    d.write("conf.d/1.toml", &format!("# one\n{}", program("web")));
    d.write(
        "conf.d/2.toml",
        &format!("{}\n{}", program("db"), program("web")),
    );
    let errs = d.errors(&format!(
        "include = [\"conf.d/*.toml\"]\n\n{}",
        program("db")
    ));
    let twice = |at: &str, name: &str, first: &str| {
        format!(
            "DIR/conf.d/2.toml:{at}: program.{name}: defined twice: [program.{name}] is already \
             defined at DIR/{first} (a program is defined in one file only)"
        )
    };
    assert_eq!(
        errs,
        [
            twice("1:10", "db", "warden.toml:3:10"),
            twice("4:10", "web", "conf.d/1.toml:2:10"),
        ]
    );
}

#[test]
fn a_drop_in_holds_programs_only() {
    let d = Dir::new("only");
    d.write(
        "conf.d/bad.toml",
        "include = [\"x/*.toml\"]\nbogus = 1\n[daemon]\nuser = \"x\"\n[program.ok]\ncommand = \"/bin/true\"\nfoo = 2\n\
         [socket.web]\nlisten = \"/run/web.sock\"\n",
    );
    let errs = d.errors("include = [\"conf.d/*.toml\"]\n");
    assert_eq!(
        errs,
        [
            "DIR/conf.d/bad.toml:1:1: include: a drop-in file cannot include others: include is \
             read in DIR/warden.toml only",
            "DIR/conf.d/bad.toml:2:1: bogus: unknown key: a drop-in file holds [program.NAME] \
             tables only",
            "DIR/conf.d/bad.toml:3:2: daemon: a drop-in file holds [program.NAME] tables only: \
             [daemon] belongs in DIR/warden.toml",
            "DIR/conf.d/bad.toml:7:1: program.ok.foo: unknown key",
            "DIR/conf.d/bad.toml:8:2: socket: a drop-in file holds [program.NAME] tables only: \
             [socket.NAME] belongs in DIR/warden.toml",
        ]
    );
}

#[test]
fn every_problem_of_every_file_at_its_place_main_file_first() {
    let d = Dir::new("every");
    d.write(
        "conf.d/a.toml",
        "[program.a]\ncommand = \"/bin/true\"\ninstances = -1\n",
    );
    d.write("conf.d/b.toml", "[program.b\n");
    std::fs::write(d.path("conf.d/c.toml"), b"# caf\xe9\n").unwrap();
    nix::unistd::mkfifo(&d.path("conf.d/d.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    d.write(
        "conf.d/e.toml",
        &format!(
            "[program.e]\ncommand = \"/bin/true\"\nstdout = \"{}\"\n",
            d.path("shared.out").display()
        ),
    );
    let errs = d.errors(
        "include = [\"conf.d/*.toml\", \"[z\", 3]\n[program.m]\ncommand = \"/bin/true\"\nstdout = \"./shared.out\"\n[daemon]\nscale_program = \"e\"\numask = \"9\"\n",
    );
    let want = [
        "DIR/warden.toml:1:29: include: \"[z\" is not a valid glob pattern",
        "DIR/warden.toml:1:35: include: expected a string, found integer",
        "DIR/warden.toml:7:9: daemon.umask:",
        "DIR/conf.d/a.toml:3:13: program.a.instances: must be between 0 and 10000",
        // The recovered part of a file with a syntax error is still read.
        "DIR/conf.d/b.toml:1:10: program.b.command: required",
        "DIR/conf.d/b.toml:1:11: unclosed table",
        "DIR/conf.d/c.toml:1:6: byte 5 is not UTF-8",
        "DIR/conf.d/d.toml: cannot read this included file: it is a FIFO, not a regular file",
        "DIR/conf.d/e.toml:3:10: program.e.stdout: DIR/shared.out is also program.m's output file",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (e, w) in errs.iter().zip(want) {
        assert!(
            e.starts_with(w),
            "{e:?} does not start with {w:?}; all: {errs:#?}"
        );
    }
}

#[test]
fn include_is_an_array_of_patterns() {
    let d = Dir::new("shape");
    assert_eq!(
        d.errors("include = \"conf.d/*.toml\"\n"),
        [
            "DIR/warden.toml:1:11: include: expected an array of glob patterns such as \
          [\"conf.d/*.toml\"], found string"
        ]
    );
    assert_eq!(
        d.errors("include = [\"\"]\n"),
        ["DIR/warden.toml:1:12: include: a pattern must not be empty"]
    );
    assert_eq!(
        d.errors("include = [\"a/[!\"]\n"),
        [
            "DIR/warden.toml:1:12: include: \"a/[!\" is not a valid glob pattern: invalid range \
          pattern (at character 3)"
        ]
    );
}

#[test]
fn scale_program_may_name_a_drop_in_program() {
    let d = Dir::new("scale");
    d.write("conf.d/w.toml", &program("w"));
    let c = d
        .load("include = [\"conf.d/*.toml\"]\n[daemon]\nscale_program = \"w\"\n")
        .unwrap();
    assert_eq!(c.daemon.scale_program.as_deref(), Some("w"));
}

#[test]
fn preflight_reports_accounts_among_the_files_own_errors_in_load_order() {
    let d = Dir::new("preflight");
    d.write(
        "conf.d/b.toml",
        "[program.b]\ncommand = \"/bin/true\"\nuser = \"warden-no-such-user\"\n",
    );
    std::fs::write(d.path("conf.d/a.toml"), b"# caf\xe9\n").unwrap();
    let main = d.write(
        "warden.toml",
        "include = [\"conf.d/*.toml\"]\n[daemon]\ngroup = \"warden-no-such-group\"\numask = \"9\"\n",
    );
    let r = preflight::check(&main).unwrap();
    let errs: Vec<String> = r
        .errors
        .iter()
        .map(|e| e.to_string().replace(&d.0.display().to_string(), "DIR"))
        .collect();
    let want = [
        "DIR/warden.toml:3:9: daemon.group: unknown group \"warden-no-such-group\"",
        "DIR/warden.toml:4:9: daemon.umask:",
        // In load order, also a file that could not be read (and so defines nothing).
        "DIR/conf.d/a.toml:1:6: byte 5 is not UTF-8",
        "DIR/conf.d/b.toml:3:8: program.b.user: unknown user \"warden-no-such-user\"",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (e, w) in errs.iter().zip(want) {
        assert!(
            e.starts_with(w),
            "{e:?} does not start with {w:?}; all: {errs:#?}"
        );
    }
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}
