//! `tern`: the MQTT broker and its tools in one binary.
//!
//! Thin over the libraries: this file parses the command line, sets up
//! logging, and hands over to `tern-broker`. Each subcommand has its own module.

mod serve;

use clap::{Parser, Subcommand};

/// Tern: an MQTT 3.1 / 3.1.1 / 5.0 broker and toolkit.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
///
/// Failures to write a log line are ignored rather than reported with
/// `eprintln!`, which panics when stderr is a closed pipe (`tern serve | head`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
}
