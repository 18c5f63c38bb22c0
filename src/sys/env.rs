//! The environment (`stdlib.h`): changed only while the process has one thread, since another
//! thread could be reading it.

use std::ffi::OsStr;

use super::require_single_thread;
use crate::error::Error;

/// `setenv(3)`, only while single-threaded (another thread could be reading the environment).
pub fn setenv(key: &OsStr, value: &OsStr) -> Result<(), Error> {
    require_single_thread()?;
    // SAFETY: the process has one thread (checked above), so no other thread reads or writes
    // the environment concurrently.
    unsafe { std::env::set_var(key, value) };
    Ok(())
}

/// `unsetenv(3)` of each of `keys` that is set, only while single-threaded (checked once).
pub fn unsetenv_all(keys: &[&str]) -> Result<(), Error> {
    let present: Vec<&&str> = keys
        .iter()
        .filter(|k| std::env::var_os(k).is_some())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    require_single_thread()?;
    for key in present {
        // SAFETY: single-threaded, as in `setenv`.
        unsafe { std::env::remove_var(key) };
    }
    Ok(())
}

/// `clearenv(3)` keeping the variables named in `keep`, only while single-threaded.
pub fn clearenv_except(keep: &[&str]) -> Result<(), Error> {
    require_single_thread()?;
    for (key, _) in std::env::vars_os() {
        if !keep.iter().any(|k| OsStr::new(k) == key) {
            // SAFETY: single-threaded, as in `setenv`.
            unsafe { std::env::remove_var(&key) };
        }
    }
    Ok(())
}
