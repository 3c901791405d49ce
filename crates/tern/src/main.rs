//! `tern`: the MQTT broker and its tools in one binary.
//!
//! Thin over the libraries: this file parses the command line, sets up
//! logging, and hands over to one module per subcommand: `serve` (the broker,
//! over `tern-broker`), `pub` and `sub` (over `tern-client`), `bench` (a
//! load generator over `tern-codec`), `passwd` (password files), `store`
//! (salvage of a damaged data file), `backup` (a running broker's data
//! file, over its HTTP listener) and `import` (a Mosquitto configuration).

mod backup;
mod bench;
mod connect_args;
mod exit;
mod import;
mod logging;
mod man;
mod output;
mod passwd;
mod publish;
mod serve;
mod store;
mod subscribe;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Publish a message (like mosquitto_pub).
    Pub(publish::PubArgs),
    /// Subscribe and print messages (like mosquitto_sub).
    Sub(subscribe::SubArgs),
    /// Load-test a broker: connections, throughput, latency (any broker).
    Bench(bench::BenchArgs),
    /// Manage a password file (like mosquitto_passwd).
    Passwd(passwd::PasswdArgs),
    /// Work on a data directory while the broker is stopped (salvage).
    Store(store::StoreArgs),
    /// Copy a running broker's data file: sessions, queues, retained messages.
    Backup(backup::BackupArgs),
    /// Write the tern.toml of a Mosquitto configuration (mosquitto.conf).
    Import(import::ImportArgs),
    /// Write the manual pages into DIR (for packaging).
    #[command(hide = true)]
    Man { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            // Logging starts once the configuration says how.
            match serve::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Pub(args) => {
            logging::for_client(args.connect.debug);
            run_tool("tern pub", publish::run(args))
        }
        Command::Sub(args) => {
            logging::for_client(args.connect.debug);
            run_tool("tern sub", subscribe::run(args))
        }
        Command::Bench(args) => {
            logging::to_stderr("warn");
            bench::main(args)
        }
        Command::Passwd(args) => match passwd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern passwd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Store(args) => {
            logging::to_stderr("warn");
            store::run(args)
        }
        Command::Backup(args) => {
            logging::to_stderr("warn");
            run_tool("tern backup", backup::run(args))
        }
        Command::Import(args) => import::run(args),
        Command::Man { dir } => match man::write_all(Cli::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern man: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs a client tool on a small runtime and maps its failure to an exit code.
fn run_tool(name: &str, tool: impl Future<Output = Result<(), exit::Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::Failure::Other(format!("cannot start: {e}")).report(name),
    };
    match runtime.block_on(tool) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(name),
    }
}
