//! The `patientflow` binary: parses the command line and maps the outcome to an exit code.

use std::process::ExitCode;

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
