//! The `stele` binary: the command line over the journal (and, as they land,
//! the engine, replay and audit). Parsing and output live here; every
//! decision lives in the library crates.

mod agent_cmd;
mod bench;
mod cli;
mod control;
mod journal_cmd;
mod proof;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Quiet by default: errors reach the user as one line on stderr;
    // STELE_LOG_LEVEL (e.g. `debug`) turns logs on.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STELE_LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
