//! The `patientflow` binary: parses the command line and maps the outcome to an exit code.

use std::process::ExitCode;

/// The static musl build (what Azure runs) allocates through mimalloc: musl's malloc serialises the
/// handler's threads (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match patientflow::cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: what failed and why.
            eprintln!("patientflow: {error:#}");
            ExitCode::FAILURE
        }
    }
}
