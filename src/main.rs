//! The `warden` binary: a thin shell over the library. Everything it does is in `src/cli/`;
//! exit statuses are decided in exactly one place, `src/cli/exit.rs`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
