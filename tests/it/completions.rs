//! The shell completions shipped in `contrib/completions/` (installed by the .deb and the .rpm)
//! are exactly what `warden completions SHELL` prints: committed, so that `cargo deb` and
//! `cargo generate-rpm` need no generation step after `cargo build --release`, and checked here,
//! so that a change to the command line cannot leave them stale. `scripts/update-completions`
//! rewrites them.

use std::process::{Command, Stdio};

use crate::common::{TIMEOUT, stderr_of, wait_output, warden_bin};

/// The shells the packages install completions for, and the file each one's is in.
const SHIPPED: &[(&str, &str)] = &[
    ("bash", "contrib/completions/warden.bash"),
    ("zsh", "contrib/completions/_warden"),
    ("fish", "contrib/completions/warden.fish"),
];

#[test]
fn shipped_completions_match_the_binary() {
    let _test = this_test!();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for (shell, file) in SHIPPED {
        let child = Command::new(warden_bin())
            .args(["completions", shell])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn warden");
        let out = wait_output(child, TIMEOUT);
        assert!(
            out.status.success(),
            "warden completions {shell}: {:?}: {}",
            out.status,
            stderr_of(&out)
        );
        assert!(
            !out.stdout.is_empty(),
            "warden completions {shell} printed nothing"
        );
        let shipped = std::fs::read(root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e} (run scripts/update-completions)"));
        if shipped != out.stdout {
            stale.push(*file);
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from `warden completions SHELL`: run scripts/update-completions and commit",
        stale.join(", ")
    );
}
