//! `neorun`: the device process. It verifies neoc bundles and runs them —
//! one request (`predict`), a health check (`check`), a file (`batch`), a
//! benchmark (`bench`), or an HTTP server (`serve`); and installs them into
//! the device's model store (`install`, `status`, `rollback`, `commit`, `gc`).
//!
//! The engines, kernels and codecs are the `neoc-runtime` library's; this
//! crate holds what only the device process needs: the CLI, settings, the
//! transport-neutral inference layer (admission, batching), the live model
//! table, HTTP, metrics and shutdown.

mod alarms;
#[cfg(feature = "s3")]
mod awsenv;
mod capture;
mod cli;
mod commands;
mod control;
mod cpus;
mod endpoints;
mod exit;
mod http;
mod infer;
mod jobs;
mod lazy;
mod metrics;
mod models;
mod modelstore;
mod settings;
mod shutdown;
mod sigv4;
#[cfg(test)]
mod testing;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

fn main() -> ExitCode {
    neoc_runtime::tune_allocator();
    let cli = Cli::parse();
    // a command whose output is piped into `head` ends quietly when the pipe
    // closes, as Unix tools do (Rust ignores SIGPIPE, so println! would
    // panic); only commands that use no sockets (the server's and the
    // registry client's must never kill the process)
    #[cfg(unix)]
    if matches!(
        cli.command,
        Command::Status(_) | Command::Journal(_) | Command::Predict(_) | Command::Check(_) | Command::Bench(_)
    ) {
        // SAFETY: restoring the default disposition of one signal, before any thread starts
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result: Result<(), Failure> = match cli.command {
        Command::Predict(a) => commands::predict::run(a),
        Command::Check(a) => commands::check::run(a),
        Command::Batch(a) => commands::batch::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Serve(a) => settings::Serve::resolve(*a).and_then(commands::serve::run),
        Command::Container(a) => commands::container::run(a),
        Command::Endpoint(a) => commands::client::endpoint(a),
        Command::Journal(a) => commands::client::journal(a),
        Command::Install(a) => commands::store::install(a),
        Command::Status(a) => commands::store::status(a),
        Command::Rollback(a) => commands::store::rollback(a),
        Command::Commit(a) => commands::store::commit(a),
        Command::Gc(a) => commands::store::gc(a),
    };
    exit::report(result)
}
