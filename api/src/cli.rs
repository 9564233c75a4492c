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
        /// The Cedar policy directory of reasoning runs, compiled at start
        /// (default fixtures/policies; without it reasoning runs are refused).
        #[arg(long)]
        policies: Option<PathBuf>,
    },
    /// Run a reasoning agent (a registered name, or its .toml file, which
    /// is registered first) on an input until it answers or waits for an
    /// approval (exit 3).
    Run {
        /// The agent's name or definition file.
        agent: String,
        /// What to ask it.
        #[arg(long)]
        input: String,
        /// The Cedar policy directory (schema + *.cedar).
        #[arg(long, default_value = "fixtures/policies")]
        policies: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Approve a call a run waits on; the run goes on.
    Approve(DecideArgs),
    /// Reject a call a run waits on; the run goes on without it.
    Reject(DecideArgs),
    /// List reasoning runs (resolving approvals whose timeout passed).
    Runs {
        /// JSON.
        #[arg(long)]
        json: bool,
        /// The Cedar policy directory (for runs that go on after a timeout).
        #[arg(long, default_value = "fixtures/policies")]
        policies: PathBuf,
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
        /// `execution` (host, live processes, timers, failure streaks),
        /// `runs` (every reasoning run) or `run` (one run's conversation,
        /// actions and state: with --run).
        #[arg(long, default_value = "journal")]
        view: String,
        /// With `--view run`: the run.
        #[arg(long)]
        run: Option<String>,
        /// With `--view run`: as of the end of the run's step K.
        #[arg(long, value_name = "K")]
        step: Option<u32>,
        /// Compact JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a run: its journaled inputs (completions, tool results,
    /// approvals, clock readings) fed through the current deciders (the
    /// reasoning loop, the Cedar gate) with no effect performed, every
    /// produced fact compared with the recorded one. Exit 0 when identical,
    /// 1 at the first divergence (seq, field-level diff, the path to it).
    Replay(crate::replay_cmd::ReplayArgs),
    /// What changed in a view between two seqs: a field-level diff of the
    /// two states.
    Diff(crate::replay_cmd::DiffArgs),
    /// Step through a run's events, forward and back, showing each event
    /// and the run's state (keys on a terminal; one command per line from
    /// a pipe: n, p, e, s, g N, q).
    Step {
        /// The run.
        run: String,
    },
    /// Start a new run from a run's state at a seq, optionally replacing
    /// the next journaled input (--edit FILE); it continues live. Recorded
    /// as the new run's events (RunForked points back); the origin is
    /// untouched.
    Fork(crate::replay_cmd::ForkArgs),
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
    /// The reasoning demo: scripted multi-step runs on the fixture provider
    /// (a tool call, a denied action, an approval given by a named demo
    /// operator, a compensated saga), then where to look. `--journal`: the
    /// short journal tour instead (append, checkpoint, verify, prove).
    Demo {
        /// The journal tour instead of the reasoning demo.
        #[arg(long)]
        journal: bool,
        /// The Cedar policy directory (schema + *.cedar).
        #[arg(long, default_value = "fixtures/policies")]
        policies: PathBuf,
    },
    /// A run's saga: its compensable steps and their rollback.
    #[command(subcommand)]
    Saga(SagaCmd),
    /// Compliance exports: offline-verifiable bundles of the journal (with
    /// OCSF for SIEMs), their offline verification, framework reports.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Publish the journal to NATS JetStream (CloudEvents 1.0 JSON on
    /// `<prefix>.<kind>.<stream>`), from the cursor `DATA/nats.cursor`, then
    /// live, until Ctrl-C. Works whether or not another process owns the
    /// data directory. `[nats]` in stele.toml configures the rest.
    Publish(PublishArgs),
    /// Print the events of a NATS JetStream stream live, from any seq.
    Subscribe(SubscribeArgs),
    /// Cedar policy sets: validate a directory as the gate loads it.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Print the HTTP API's OpenAPI 3.1 document (docs/openapi.json holds a
    /// copy: `stele openapi > docs/openapi.json`).
    Openapi,
    /// Bearer tokens of the HTTP API.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Sandboxes: the base image, and one command in a sandbox (native,
    /// docker or gvisor tier), journaled.
    #[command(subcommand)]
    Sandbox(crate::sandbox_cmd::SandboxCmd),
    /// The communication bus: send, publish, ask, reply, recv, ack,
    /// subscribe, rotate, builtin, key, stats.
    #[command(subcommand)]
    Bus(crate::bus_cmd::BusCmd),
    /// Agents' memory and knowledge: store, show, search, update, feedback,
    /// share, archive, stats — every change and read journaled, checked by
    /// the Cedar gate.
    #[command(subcommand)]
    Context(crate::context_cmd::ContextCmd),
    /// MCP servers: their tools with SchemaPin status, calls through the
    /// Cedar gate, resources, pinned keys — every step journaled.
    #[command(subcommand)]
    Mcp(crate::mcp_cmd::McpCmd),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a new random token: prints the token (shown once; give it to
    /// the client) and the `[[http.tokens]]` entry for stele.toml, which
    /// holds only its BLAKE3 hash.
    Create {
        /// Who holds it (1-64 of A-Z a-z 0-9 - _ . @).
        name: String,
        /// What it may do: read < operate < admin.
        #[arg(long, value_parser = ["read", "operate", "admin"], default_value = "read")]
        scope: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SagaCmd {
    /// The saga of a run: each compensable step, what undoes it, whether it
    /// was compensated (and how), the saga's state.
    Show {
        /// The run.
        run: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ends a run whose process died mid-way: compensates what its saga
    /// still owes (newest first; a compensation whose intent is journaled
    /// but not its result is re-run — compensations are idempotent) and
    /// records it `interrupted`.
    Recover {
        /// The run.
        run: String,
        /// The Cedar policy directory (schema + *.cedar).
        #[arg(long, default_value = "fixtures/policies")]
        policies: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Load DIR (`*.cedar` and at most one `*.cedarschema`, else the embedded
    /// schema), validate it strictly, and list each policy with what it does,
    /// or every problem with its file, line:column and policy id. Exit 0 when
    /// the set loads, 1 when it does not.
    Check {
        /// The policy directory.
        dir: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Re-evaluate every journaled policy decision (PolicyDecided holds the
    /// full request) against the policy set of --policies and list each
    /// verdict that would flip (seq, request, old → new verdict, determining
    /// policies), with a summary count. Exit 0 when nothing flips, 1 when
    /// something does (or a request cannot be evaluated again).
    Backtest(crate::replay_cmd::BacktestArgs),
    /// Replace the policy set of the running `stele up` (scope admin with
    /// `[http] tokens`): without --policies the daemon loads its own
    /// directory again; with it, DIR is checked here (every problem with its
    /// file, line:column and policy id) and its texts are sent. The daemon
    /// validates the set, journals `PolicySetLoaded` (old and new set hash)
    /// and puts it in force for every later decision, runs in flight
    /// included. An invalid set changes nothing (exit 1); the set already in
    /// force is not journaled again. Also: SIGHUP to the daemon.
    Reload {
        /// The policy directory to put in force (default: the daemon's own).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
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
#[command(args_conflicts_with_subcommands = true)]
pub struct PublishArgs {
    /// NATS server URL (default: `[nats] url`).
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Start at this seq instead of after the cursor (what the stream
    /// already holds is never published twice).
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    #[command(subcommand)]
    pub command: Option<PublishCmd>,
}

#[derive(Debug, Subcommand)]
pub enum PublishCmd {
    /// Measure the publisher against the journal's append rate and a raw
    /// JetStream publish of same-size messages, in a temporary journal.
    Bench(PublishBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct PublishBenchArgs {
    /// NATS server URL (default: `[nats] url`).
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Events appended in each phase.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 64)]
    pub writers: u64,
    /// Acknowledge appends after fsync (sync) or before (buffered).
    #[arg(long, value_enum, default_value = "sync")]
    pub durability: DurabilityArg,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// NATS server URL (default: `[nats] url`).
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The JetStream stream (default: `[nats] stream`).
    #[arg(long)]
    pub stream: Option<String>,
    /// First journal seq to print (default: only events published from now on).
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// Subject filter, e.g. 'stele.task_finished.>' (default: `<prefix>.>`).
    #[arg(long, value_name = "SUBJECT")]
    pub filter: Option<String>,
    /// Each event as `stele events --json` prints it.
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

#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The run.
    pub run: String,
    /// The call awaiting a decision.
    pub call: String,
    /// Why.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Who decides (default: $USER).
    #[arg(long = "as")]
    pub approver: Option<String>,
    /// The Cedar policy directory.
    #[arg(long, default_value = "fixtures/policies")]
    pub policies: PathBuf,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

impl DecideArgs {
    fn approver(&self) -> String {
        self.approver
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "operator".into())
    }
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
pub enum AuditCmd {
    /// Write a self-contained bundle an auditor can verify offline: the
    /// events with their hashed bytes, the key history, the signed
    /// checkpoints, Merkle proofs and a manifest (docs/VERIFYING.md). Makes a
    /// checkpoint first when none covers the export.
    Export(AuditExportArgs),
    /// Verify a bundle offline (no journal needed); names the first failure.
    /// Exit 0 when it verifies, 1 when it does not.
    Verify(AuditVerifyArgs),
    /// What a compliance framework asks about, with counts and seqs.
    Report(AuditReportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuditFormat {
    /// events.jsonl and the proofs.
    Jsonl,
    /// Also ocsf.jsonl: each event as an OCSF 1.3.0 record.
    Ocsf,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["from", "run", "agent"])))]
pub struct AuditExportArgs {
    /// First seq of a contiguous range (with --to).
    #[arg(long, requires = "to", conflicts_with_all = ["run", "agent"])]
    pub from: Option<u64>,
    /// Last seq of the range.
    #[arg(long, requires = "from")]
    pub to: Option<u64>,
    /// The events of one run (task), each proven without revealing the others.
    #[arg(long, conflicts_with = "agent")]
    pub run: Option<String>,
    /// The events of one agent: its stream `agent:NAME`, events naming it,
    /// and the runs of its tasks.
    #[arg(long)]
    pub agent: Option<String>,
    /// `ocsf` adds ocsf.jsonl beside events.jsonl.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: AuditFormat,
    /// Withhold the bodies of events on streams starting with PREFIX
    /// (`stream=PREFIX`, repeatable); their hashes, signatures and proofs stay.
    #[arg(long, value_name = "stream=PREFIX")]
    pub redact: Vec<String>,
    /// The bundle directory to create (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AuditVerifyArgs {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Require this Ed25519 public key (hex) to be the journal's first key
    /// or the signer of the latest checkpoint.
    #[arg(long)]
    pub trusted_key: Option<String>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Framework {
    /// HIPAA Security Rule.
    Hipaa,
    /// GDPR.
    Gdpr,
    /// SOX section 404 IT general controls.
    Sox,
    /// The event kinds of --kinds.
    Custom,
}

#[derive(Debug, clap::Args)]
pub struct AuditReportArgs {
    /// Which framework's questions to answer.
    #[arg(long, value_enum)]
    pub framework: Framework,
    /// First seq (default 1).
    #[arg(long)]
    pub from: Option<u64>,
    /// Last seq (default: the head).
    #[arg(long)]
    pub to: Option<u64>,
    /// For `custom`: event kinds, comma-separated (e.g. key_rotated,agent_registered).
    #[arg(long)]
    pub kinds: Option<String>,
    /// JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Write to FILE instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Concurrent appenders against the journal.
    Journal(BenchJournalArgs),
    /// Agents registered, scheduling decisions through the decider, the
    /// journal and the view, fold rates and restart time.
    Scheduler(BenchSchedulerArgs),
    /// Start-to-exit overhead of `true` in the docker (runc) and gvisor
    /// (runsc) tiers against a native spawn, in the same run.
    Sandbox(crate::sandbox_cmd::BenchSandboxArgs),
    /// `stele at` at random seqs of a large journal with snapshots, against
    /// folding from scratch (in a temporary journal unless --data is given).
    At(crate::replay_cmd::BenchAtArgs),
    /// Bus routing throughput and latency, with and without the journal,
    /// and the cost of sealing a message.
    Bus(crate::bus_cmd::BenchBusArgs),
    /// MCP call overhead over stdio: the test server's own time, the
    /// client's round trip and the journaled call, in the same run.
    Mcp(crate::mcp_cmd::BenchMcpArgs),
    /// The HTTP API of a real `stele up` on 127.0.0.1: GET /v1/events
    /// streaming rate, SSE fan-out under appends, GET /v1/agents latency at
    /// a fixed rate (open loop), each beside a baseline.
    Http(crate::bench_http::BenchHttpArgs),
    /// The LanceDB vector index (ANN) against exact search in the same run:
    /// insert rate, index build time, search latency, recall@k.
    #[cfg(feature = "lancedb")]
    Vectors(crate::vector_bench::BenchVectorsArgs),
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

#[derive(Debug, clap::Args)]
pub struct BenchSchedulerArgs {
    /// Logical agents to register.
    #[arg(long, default_value_t = 10_000)]
    pub agents: u64,
    /// Scheduling decisions (enqueue, finish, cancel) to make.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: u64,
    /// Worker slots (32 GiB, 16 cores each).
    #[arg(long, default_value_t = 8)]
    pub slots: u64,
    /// Tasks kept open (queued or running): enqueue below it, finish above.
    #[arg(long, default_value_t = 1000)]
    pub open: u64,
    /// Most decisions in one journal group.
    #[arg(long, default_value_t = 256)]
    pub batch: u64,
    /// Acknowledge after fsync (sync) or before (buffered).
    #[arg(long, value_enum, default_value = "sync")]
    pub durability: DurabilityArg,
    /// Also append the same groups of facts with no deciding, in a fresh journal.
    #[arg(long)]
    pub baseline: bool,
    /// Before measuring the restart, keep scheduling (unmeasured) until the
    /// journal holds this many events.
    #[arg(long, default_value_t = 0)]
    pub restart_events: u64,
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
    // Flushes the exported spans ([otel]) when the command is done.
    let _telemetry = crate::http::telemetry::init(&loaded.log, &loaded.otel)?;
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
        Command::At {
            seq,
            view,
            run,
            step,
            json,
        } => journal_cmd::at(&data, &seq, &view, run.as_deref(), step, json),
        Command::Replay(args) => crate::replay_cmd::replay(&data, &args),
        Command::Diff(args) => crate::replay_cmd::diff(&data, &args),
        Command::Step { run } => crate::step::step(&data, &run),
        Command::Fork(args) => crate::replay_cmd::fork(&data, &args),
        Command::Policy(PolicyCmd::Backtest(args)) => crate::replay_cmd::backtest(&data, &args),
        Command::Bench(BenchCmd::At(args)) => crate::replay_cmd::bench_at(cli.data.as_deref(), &args),
        Command::Keys(KeysCmd::Show { json }) => journal_cmd::keys_show(&data, json),
        Command::Keys(KeysCmd::Export { out }) => journal_cmd::keys_export(&data, out.as_deref()),
        Command::Keys(KeysCmd::Rotate { reason }) => journal_cmd::keys_rotate(&data, &reason),
        Command::Bench(BenchCmd::Journal(args)) => bench::journal(cli.data.as_deref(), &args),
        Command::Bench(BenchCmd::Scheduler(args)) => bench::scheduler(cli.data.as_deref(), &args),
        Command::Bench(BenchCmd::Sandbox(args)) => crate::sandbox_cmd::bench(&args),
        Command::Sandbox(cmd) => crate::sandbox_cmd::run(&data, &cmd),
        Command::Bus(cmd) => crate::bus_cmd::run(&data, cmd),
        Command::Context(cmd) => crate::context_cmd::run(&data, cmd),
        Command::Mcp(cmd) => crate::mcp_cmd::run(&data, &cmd),
        Command::Bench(BenchCmd::Mcp(args)) => crate::mcp_cmd::bench(&args),
        Command::Bench(BenchCmd::Http(args)) => crate::bench_http::bench(&args),
        Command::Bench(BenchCmd::Bus(args)) => crate::bus_cmd::bench(&args),
        #[cfg(feature = "lancedb")]
        Command::Bench(BenchCmd::Vectors(args)) => crate::vector_bench::run(&args),
        Command::Demo { journal: true, .. } => journal_cmd::demo(&data),
        Command::Demo {
            journal: false,
            policies,
        } => crate::demo::run(&data, &policies),
        Command::Saga(SagaCmd::Show { run, json }) => crate::saga_cmd::show(&data, &run, json),
        Command::Saga(SagaCmd::Recover { run, policies }) => crate::saga_cmd::recover(&data, &run, &policies),
        Command::Audit(cmd) => crate::audit::run(&data, &cmd),
        Command::Publish(args) => crate::nats::publish_cmd(&data, &args),
        Command::Subscribe(args) => crate::nats::subscribe_cmd(&args),
        Command::Policy(PolicyCmd::Check { dir, json }) => crate::policy_cmd::check(&dir, json),
        Command::Policy(PolicyCmd::Reload { policies, json }) => {
            crate::policy_cmd::reload(&data, policies.as_deref(), json)
        }
        Command::Openapi => {
            print!("{}", crate::http::openapi_text()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCmd::Create { name, scope, json }) => {
            crate::http::auth::token_create(&name, &scope, json)
        }
        Command::Config(ConfigCmd::Show) => {
            print!("{}", toml::to_string_pretty(config())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Up {
            agents,
            port,
            policies,
        } => crate::up::up(&data, agents.as_deref(), port, policies.as_deref()),
        Command::Run {
            agent,
            input,
            policies,
            json,
        } => crate::run_cmd::run(&data, &agent, &input, &policies, json),
        Command::Approve(a) => crate::run_cmd::decide(
            &data,
            &a.run,
            &a.call,
            true,
            &a.approver(),
            &a.reason,
            &a.policies,
            a.json,
        ),
        Command::Reject(a) => crate::run_cmd::decide(
            &data,
            &a.run,
            &a.call,
            false,
            &a.approver(),
            &a.reason,
            &a.policies,
            a.json,
        ),
        Command::Runs { json, policies } => crate::run_cmd::list(&data, &policies, json),
        Command::Status { json } => crate::agent_cmd::status(&data, json),
        Command::Down { no_wait } => crate::agent_cmd::down(&data, no_wait),
        Command::Agent(AgentCmd::Validate { files, json }) => crate::agent_cmd::validate(&files, json),
        Command::Agent(AgentCmd::Register { file }) => crate::agent_cmd::register(&data, &file),
        Command::Agent(AgentCmd::List { json }) => crate::agent_cmd::list(&data, json),
        Command::Agent(AgentCmd::Stop { name, reason }) => crate::agent_cmd::stop(&data, &name, reason),
    }
}
