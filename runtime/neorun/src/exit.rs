//! Exit codes, decided here and nowhere else, and the one error type the
//! subcommands return.

use std::process::ExitCode;

use neoc_runtime::LoadError;

/// Printed under `--help`.
pub const EXIT_HELP: &str = "Exit status: 0 success; 1 other error; 2 usage error; \
3 bundle refused (signature, digest, format, target or runtime version); 4 bad request.";

/// Why a subcommand failed; each kind has its own exit code.
#[derive(Debug)]
pub enum Failure {
    /// The bundle did not pass its checks (exit 3).
    Refused(LoadError),
    /// The request or input file was malformed (exit 4).
    BadRequest(String),
    /// A flag's value that cannot work, found after parsing (exit 2, as
    /// clap's own usage errors).
    Usage(String),
    /// Anything else: files, the environment (exit 1).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Other(e)
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Failure {
        Failure::Refused(e)
    }
}

/// Prints the failure on stderr and gives its exit code.
pub fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(e)) => {
            eprintln!("error: bundle refused: {e}");
            ExitCode::from(3)
        }
        Err(Failure::BadRequest(m)) => {
            eprintln!("error: bad request: {m}");
            ExitCode::from(4)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
