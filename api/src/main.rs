//! The `stele` binary: the command line over the journal (and, as they land,
//! the engine, replay and audit). Parsing and output live here; every
//! decision lives in the library crates.

mod agent_cmd;
mod audit;
mod bench;
mod bench_http;
mod bus_cmd;
mod cli;
mod client;
mod context_cmd;
mod context_ops;
mod control;
mod demo;
mod http;
mod journal_cmd;
mod mcp_cmd;
mod nats;
mod policy_cmd;
mod proof;
mod replay_cmd;
mod run_cmd;
mod saga_cmd;
mod sandbox_cmd;
mod step;
mod up;
mod up_runs;
#[cfg(feature = "lancedb")]
mod vector_bench;
mod views;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Hidden: `stele __confine …` is the process runner's launcher
    // (stele_engine::process); it confines itself and execs the task's
    // command, returning only if that failed.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == stele_engine::process::CONFINE_SUBCOMMAND)
    {
        let rest: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        let e = stele_engine::process::confine_and_exec(&rest);
        eprintln!("error: cannot start confined command: {e}");
        return ExitCode::from(127);
    }
    quiet_on_closed_stdout();
    let cli = cli::Cli::parse();
    // Logging is set up by `cli::run` once the configuration is loaded:
    // quiet by default (`[log] level = "off"`); errors reach the user as one
    // line on stderr; STELE_LOG_LEVEL (e.g. `debug`) and STELE_LOG_FORMAT
    // (`json`) turn logs on.
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) if is_closed_stdout(&e) => ExitCode::from(BROKEN_PIPE_EXIT),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The exit status of a process killed by SIGPIPE (128 + 13), what a shell
/// pipeline such as `stele events | head` expects from a writer whose reader
/// went away.
const BROKEN_PIPE_EXIT: u8 = 141;

/// `print!` panics when stdout is a closed pipe (`stele at … | head`). The
/// reader going away is not an error of stele's: leave quietly with the
/// status a SIGPIPE-killed writer has. Every other panic keeps the default
/// report. (Resetting SIGPIPE itself would also kill the daemon when a
/// client hangs up on a socket, so the signal stays ignored.)
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(i32::from(BROKEN_PIPE_EXIT));
        }
        default(info);
    }));
}

/// Whether a command failed only because its stdout reader went away: a
/// bare `BrokenPipe` from a `writeln!(out, …)?`. Failures on sockets and
/// child pipes always carry context (what was being reached), so they stay
/// errors.
fn is_closed_stdout(e: &anyhow::Error) -> bool {
    let broken = std::io::ErrorKind::BrokenPipe;
    e.chain().count() == 1
        && (e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == broken)
            || e.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(broken)))
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
