//! Command-line definitions (clap) and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use crate::{bench, journal_cmd, proof};

/// stele: a runtime for autonomous agents whose single source of truth is a
/// signed, hash-chained journal.
#[derive(Debug, Parser)]
#[command(name = "stele", version, about)]
pub struct Cli {
    /// Data directory holding the journal and the node keys.
    #[arg(long, global = true, env = "STELE_DATA")]
    pub data: Option<PathBuf>,
    /// Configuration file (default: ./stele.toml if present, else the
    /// embedded defaults); `STELE_<SECTION>_<KEY>` variables override it.
    #[arg(long, global = true, env = "STELE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

pub const DEFAULT_DATA: &str = "./stele-data";

impl Cli {
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the runtime: load the configuration, open the journal, recover,
    /// register the agents of --agents DIR, run them, serve the HTTP control
    /// API on 127.0.0.1. SIGTERM/SIGINT shut it down gracefully (a second
    /// signal kills what still runs).
    Up {
        /// Register every `*.toml` agent definition in this directory
        /// (agents already registered with the same definition are kept).
        #[arg(long)]
        agents: Option<PathBuf>,
        /// HTTP port on 127.0.0.1 (default `[runtime] http_port`; 0: any).
        #[arg(long)]
        port: Option<u16>,
    },
    /// The running runtime's state: agents, tasks, slots, processes.
    Status {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shut the running runtime down gracefully (as SIGTERM does).
    Down {
        /// Return at once instead of waiting until it has stopped.
        #[arg(long)]
        no_wait: bool,
    },
    /// Append to, verify, checkpoint and prove the journal.
    #[command(subcommand)]
    Journal(JournalCmd),
    /// List events.
    Events(EventsArgs),
    /// Follow the journal live: print events as they commit.
    Tail(TailArgs),
    /// A projection's state as of a seq (from the newest snapshot at or
    /// before it, plus the events after it).
    At {
        /// The seq, or `head`.
        seq: String,
        /// The view: `journal` (counts by kind and stream, runs, keys,
        /// checkpoints), `registry` (agents and their lifecycle states),
        /// `scheduler` (tasks, queue, slot reservations, run history) or
        /// `execution` (host, live processes, timers, failure streaks).
        #[arg(long, default_value = "journal")]
        view: String,
        /// Compact JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show, export and rotate the node's signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Agent definitions.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// The effective configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Whole-system benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// A short scripted session on the data directory: append, checkpoint,
    /// verify, prove and check a proof.
    Demo,
}

#[derive(Debug, Subcommand)]
pub enum JournalCmd {
    /// Append an operator note (an `Annotated` event); prints seq and hash.
    Append {
        /// The stream it belongs to.
        #[arg(long, default_value = "ops")]
        stream: String,
        /// The note.
        #[arg(long)]
        text: String,
        /// A run id it is about (indexed).
        #[arg(long)]
        run: Option<String>,
        /// The seq of the event that caused it.
        #[arg(long)]
        cause: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify the whole chain, every signature and every checkpoint.
    Verify {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Append a Merkle checkpoint now.
    Checkpoint {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Produce an inclusion or consistency proof.
    #[command(subcommand)]
    Prove(ProveCmd),
    /// Check a proof file offline (no journal needed).
    CheckProof {
        /// The proof (JSON, as written by `prove`).
        file: PathBuf,
        /// Require the checkpoint to be signed by this public key (hex).
        #[arg(long)]
        trusted_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProveCmd {
    /// Prove that event SEQ is in the tree of SIZE events.
    Inclusion {
        /// The event.
        seq: u64,
        /// Tree size; default: the newest checkpoint covering SEQ, else the head.
        #[arg(long)]
        size: Option<u64>,
        /// Print compact JSON (the proof file format).
        #[arg(long)]
        json: bool,
        /// Write the proof to FILE.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Prove that the tree of M events is a prefix of the tree of N events.
    Consistency {
        /// Old size.
        m: u64,
        /// New size.
        n: u64,
        /// Print compact JSON.
        #[arg(long)]
        json: bool,
        /// Write the proof to FILE.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// First seq.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Most events to print.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Only this stream.
    #[arg(long, conflicts_with = "run")]
    pub stream: Option<String>,
    /// Only this run.
    #[arg(long)]
    pub run: Option<String>,
    /// JSON lines with every field.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// First seq (default: after the current head).
    #[arg(long)]
    pub from: Option<u64>,
    /// JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// List the keys the journal has used.
    Show {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export the public keys (JSON) for offline verifiers.
    Export {
        /// Write to FILE instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate a new node key; the rotation is an event signed by the old key.
    Rotate {
        /// Why.
        #[arg(long, default_value = "operator rotation")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the effective configuration (file + environment + defaults) as TOML.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Register an agent from its definition (an `AgentRegistered` event and
    /// its move to Ready).
    Register {
        /// The TOML definition.
        file: PathBuf,
    },
    /// List registered agents and their lifecycle state.
    List {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop an agent for good (from ready, suspended or failed).
    Stop {
        /// The agent's name.
        name: String,
        /// Why.
        #[arg(long, default_value = "stopped by operator")]
        reason: String,
    },
    /// Check agent definition files; prints one line per file.
    Validate {
        /// TOML definitions.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object per file.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Concurrent appenders against the journal.
    Journal(BenchJournalArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DurabilityArg {
    /// fsync before acknowledging.
    Sync,
    /// Acknowledge before fsync.
    Buffered,
}

#[derive(Debug, clap::Args)]
pub struct BenchJournalArgs {
    /// Events to append in total.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 64)]
    pub writers: u64,
    /// Acknowledge after fsync (sync) or before (buffered).
    #[arg(long, value_enum, default_value = "sync")]
    pub durability: DurabilityArg,
    /// Write each acknowledged seq to FILE, one per line, as it is acknowledged.
    #[arg(long)]
    pub ack_log: Option<PathBuf>,
    /// Also measure plain fjall batch writes of the same size and durability.
    #[arg(long)]
    pub baseline: bool,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The effective configuration, loaded once per process.
static CONFIG: std::sync::OnceLock<stele_engine::Config> = std::sync::OnceLock::new();

/// The effective configuration (defaults until `run` has loaded it).
pub fn config() -> &'static stele_engine::Config {
    CONFIG.get_or_init(stele_engine::Config::default)
}

fn load_config(explicit: Option<&std::path::Path>) -> Result<stele_engine::Config> {
    let default = std::path::Path::new("stele.toml");
    Ok(match explicit {
        Some(p) => stele_engine::Config::load(p)?,
        None if default.exists() => stele_engine::Config::load(default)?,
        None => stele_engine::Config::defaults_with_env()?,
    })
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let data = cli.data_dir();
    let loaded = load_config(cli.config.as_deref())?;
    let _ = CONFIG.set(loaded);
    match cli.command {
        Command::Journal(JournalCmd::Append {
            stream,
            text,
            run,
            cause,
            json,
        }) => journal_cmd::append(&data, &stream, text, run, cause, json),
        Command::Journal(JournalCmd::Verify { json }) => journal_cmd::verify(&data, json),
        Command::Journal(JournalCmd::Checkpoint { json }) => journal_cmd::checkpoint(&data, json),
        Command::Journal(JournalCmd::Prove(ProveCmd::Inclusion { seq, size, json, out })) => {
            proof::prove_inclusion(&data, seq, size, json, out.as_deref())
        }
        Command::Journal(JournalCmd::Prove(ProveCmd::Consistency { m, n, json, out })) => {
            proof::prove_consistency(&data, m, n, json, out.as_deref())
        }
        Command::Journal(JournalCmd::CheckProof {
            file,
            trusted_key,
            json,
        }) => proof::check_proof(&file, trusted_key.as_deref(), json),
        Command::Events(args) => journal_cmd::events(&data, &args),
        Command::Tail(args) => journal_cmd::tail(&data, &args),
        Command::At { seq, view, json } => journal_cmd::at(&data, &seq, &view, json),
        Command::Keys(KeysCmd::Show { json }) => journal_cmd::keys_show(&data, json),
        Command::Keys(KeysCmd::Export { out }) => journal_cmd::keys_export(&data, out.as_deref()),
        Command::Keys(KeysCmd::Rotate { reason }) => journal_cmd::keys_rotate(&data, &reason),
        Command::Bench(BenchCmd::Journal(args)) => bench::journal(cli.data.as_deref(), &args),
        Command::Demo => journal_cmd::demo(&data),
        Command::Config(ConfigCmd::Show) => {
            print!("{}", toml::to_string_pretty(config())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Up { agents, port } => crate::up::up(&data, agents.as_deref(), port),
        Command::Status { json } => crate::agent_cmd::status(&data, json),
        Command::Down { no_wait } => crate::agent_cmd::down(&data, no_wait),
        Command::Agent(AgentCmd::Validate { files, json }) => crate::agent_cmd::validate(&files, json),
        Command::Agent(AgentCmd::Register { file }) => crate::agent_cmd::register(&data, &file),
        Command::Agent(AgentCmd::List { json }) => crate::agent_cmd::list(&data, json),
        Command::Agent(AgentCmd::Stop { name, reason }) => crate::agent_cmd::stop(&data, &name, reason),
    }
}
