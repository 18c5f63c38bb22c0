//! Fuzz target `config`: arbitrary bytes into `warden::fuzzing::config`, which feeds them to the
//! parser the daemon runs and asserts what it must guarantee (see its documentation). The
//! regression test `tests/it/fuzz_regressions.rs` replays every saved input through the same
//! function on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden::fuzzing::config(data));
