//! Helpers the benchmarks share (`mod common;` in each bench).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Compiles `benches/NAME.c` into `dir/NAME` with `cc -O2`.
pub fn compile_c(name: &str, dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("benches/{name}.c"));
    let out = dir.join(name);
    let status = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !status.success() {
        return Err(format!("cc -O2 {} failed: {status}", src.display()));
    }
    Ok(out)
}

/// Looks for an executable in `$PATH` and the sbin directories (not always on a user's PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
