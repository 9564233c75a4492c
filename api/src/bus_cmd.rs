//! `stele bus …`: the bus for operators and tests — send, publish, ask,
//! reply, recv, ack, subscribe, rotate, key, stats — and the bus of a
//! running `stele up`.
//!
//! While `stele up` owns the data directory and runs the bus (`[bus]
//! policies` set), it serves `<data>/bus.sock` (mode 0600, JSON lines: one
//! request object, one answer `{"ok":true,"result":…}` or
//! `{"ok":false,"error":"…"}`); the commands go through it. Otherwise they
//! open the journal themselves, start the same bus in this process, do
//! their one thing and stop — so the state they decide on is the state they
//! append to either way. `stele bench bus` measures the bus.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stele_engine::bus::{Bus, Outgoing, RequestId, builtins::BusTools};
use stele_engine::bus::{Pattern, remote};
use stele_engine::policy::{LiveGate, PolicyGate};
use stele_journal::Journal;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// Longest request line on the bus socket (a maximal payload, escaped).
const MAX_LINE_BYTES: u64 = 2 * 1024 * 1024;
/// Concurrent connections to the bus socket.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Subcommand)]
pub enum BusCmd {
    /// Send a direct message (to `agent`, or `agent@instance`).
    Send {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// The payload (text).
        message: String,
        /// Its lifetime (default `[bus] message_ttl`).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// When the mailbox is full, wait this long for room (in turn with
        /// other waiting senders) before being refused.
        #[arg(long)]
        wait: Option<humantime::Duration>,
        #[command(flatten)]
        common: Common,
    },
    /// Publish to a topic (delivered to every agent subscribed to a
    /// matching pattern; `topic@instance` to a peer's subscribers).
    Publish {
        #[arg(long)]
        from: String,
        #[arg(long)]
        topic: String,
        message: String,
        /// When a subscriber's mailbox is full, wait this long for room.
        #[arg(long)]
        wait: Option<humantime::Duration>,
        #[command(flatten)]
        common: Common,
    },
    /// Send a request and wait for its response (exit 4 on timeout).
    Ask {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        message: String,
        #[arg(long, default_value = "30s")]
        timeout: humantime::Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Answer a request delivered to `--agent`.
    Reply {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        request: String,
        message: String,
        #[command(flatten)]
        common: Common,
    },
    /// Show (decrypted) what waits in an agent's mailbox; it stays there
    /// until acknowledged.
    Recv {
        #[arg(long)]
        agent: String,
        #[arg(long, default_value_t = 64)]
        max: usize,
        /// Wait this long for a first message.
        #[arg(long)]
        wait: Option<humantime::Duration>,
        /// Acknowledge what is shown.
        #[arg(long)]
        ack: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Acknowledge delivered messages.
    Ack {
        #[arg(long)]
        agent: String,
        ids: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Subscribe an agent to a topic pattern (`a.*.c`, `a.>`).
    Subscribe {
        #[arg(long)]
        agent: String,
        pattern: String,
        /// Unsubscribe instead.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Move an agent's content key to its next epoch.
    Rotate {
        #[arg(long)]
        agent: String,
        #[arg(long, default_value = "operator rotation")]
        reason: String,
        #[command(flatten)]
        common: Common,
    },
    /// Call a builtin (`ask`, `delegate`, `send_to`, `parallel`, `race`)
    /// as a reasoning run would, with JSON arguments.
    Builtin {
        #[arg(long)]
        from: String,
        name: String,
        arguments: String,
        #[command(flatten)]
        common: Common,
    },
    /// This instance's bus identity key (what peers pin).
    Key {
        #[arg(long)]
        json: bool,
    },
    /// Counters, mailboxes, subscriptions, open requests, peers.
    Stats {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The Cedar policy directory (without a running daemon; default
    /// `[bus] policies`, else fixtures/policies).
    #[arg(long)]
    policies: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// What goes over the bus socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    Send {
        from: String,
        to: String,
        message: String,
        ttl_ms: Option<u64>,
        /// Wait this long for room in a full mailbox (absent or 0: no wait).
        #[serde(default)]
        wait_ms: Option<u64>,
    },
    Publish {
        from: String,
        topic: String,
        message: String,
        #[serde(default)]
        wait_ms: Option<u64>,
    },
    Ask {
        from: String,
        to: String,
        message: String,
        timeout_ms: u64,
    },
    Reply {
        agent: String,
        request: String,
        message: String,
    },
    Recv {
        agent: String,
        max: usize,
        wait_ms: u64,
        ack: bool,
    },
    Ack {
        agent: String,
        ids: Vec<String>,
    },
    Subscribe {
        agent: String,
        pattern: String,
        active: bool,
    },
    Rotate {
        agent: String,
        reason: String,
    },
    Builtin {
        from: String,
        name: String,
        arguments: String,
    },
    Stats,
}

fn millis(d: humantime::Duration) -> u64 {
    u64::try_from(Duration::from(d).as_millis()).unwrap_or(u64::MAX)
}

fn socket_path(data: &Path) -> PathBuf {
    data.join("bus.sock")
}

fn key(data: &Path, json: bool) -> Result<ExitCode> {
    let keys = stele_engine::bus::BusKeys::open(data)?;
    let key = hex::encode(keys.public_key());
    if json {
        println!("{}", json!({ "public_key": key }));
    } else {
        println!("{key}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(data: &Path, cmd: BusCmd) -> Result<ExitCode> {
    let (request, common) = match cmd {
        BusCmd::Key { json } => return key(data, json),
        BusCmd::Send {
            from,
            to,
            message,
            ttl,
            wait,
            common,
        } => (
            Request::Send {
                from,
                to,
                message,
                ttl_ms: ttl.map(millis),
                wait_ms: wait.map(millis),
            },
            common,
        ),
        BusCmd::Publish {
            from,
            topic,
            message,
            wait,
            common,
        } => (
            Request::Publish {
                from,
                topic,
                message,
                wait_ms: wait.map(millis),
            },
            common,
        ),
        BusCmd::Ask {
            from,
            to,
            message,
            timeout,
            common,
        } => (
            Request::Ask {
                from,
                to,
                message,
                timeout_ms: u64::try_from(Duration::from(timeout).as_millis()).unwrap_or(u64::MAX),
            },
            common,
        ),
        BusCmd::Reply {
            agent,
            request,
            message,
            common,
        } => (
            Request::Reply {
                agent,
                request,
                message,
            },
            common,
        ),
        BusCmd::Recv {
            agent,
            max,
            wait,
            ack,
            common,
        } => (
            Request::Recv {
                agent,
                max,
                wait_ms: wait.map_or(0, |d| {
                    u64::try_from(Duration::from(d).as_millis()).unwrap_or(u64::MAX)
                }),
                ack,
            },
            common,
        ),
        BusCmd::Ack { agent, ids, common } => (Request::Ack { agent, ids }, common),
        BusCmd::Subscribe {
            agent,
            pattern,
            remove,
            common,
        } => (
            Request::Subscribe {
                agent,
                pattern,
                active: !remove,
            },
            common,
        ),
        BusCmd::Rotate {
            agent,
            reason,
            common,
        } => (Request::Rotate { agent, reason }, common),
        BusCmd::Builtin {
            from,
            name,
            arguments,
            common,
        } => (
            Request::Builtin {
                from,
                name,
                arguments,
            },
            common,
        ),
        BusCmd::Stats { common } => (Request::Stats, common),
    };
    let answer =
        if socket_path(data).exists() && std::os::unix::net::UnixStream::connect(socket_path(data)).is_ok() {
            call_socket(data, &request)
        } else {
            let policies = common
                .policies
                .clone()
                .or_else(|| crate::cli::config().bus.policies.clone())
                .unwrap_or_else(|| PathBuf::from("fixtures/policies"));
            local(data, &policies, &request)
        };
    let (code, value) = match answer {
        Ok(v) => (ExitCode::SUCCESS, v),
        Err(e) => {
            let msg = format!("{e:#}");
            let code = if msg.contains("timed out") { 4 } else { 1 };
            if common.json {
                println!("{}", json!({ "ok": false, "error": msg }));
                return Ok(ExitCode::from(code));
            }
            eprintln!("error: {msg}");
            return Ok(ExitCode::from(code));
        }
    };
    if common.json {
        println!("{}", serde_json::to_string(&value)?);
    } else {
        print_human(&request, &value);
    }
    Ok(code)
}

fn print_human(request: &Request, v: &Value) {
    match request {
        Request::Send { .. } | Request::Publish { .. } | Request::Reply { .. } => {
            println!(
                "{} (seq {}) delivered to [{}]",
                v["id"].as_str().unwrap_or(""),
                v["seq"],
                v["delivered"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
        }
        Request::Ask { .. } => println!("{}", v["text"].as_str().unwrap_or("")),
        Request::Recv { .. } => {
            for m in v.as_array().into_iter().flatten() {
                println!(
                    "{}  from {}  {}{}  {}",
                    m["id"].as_str().unwrap_or(""),
                    m["from"].as_str().unwrap_or(""),
                    m["pattern"].as_str().unwrap_or(""),
                    m["request"]
                        .as_str()
                        .map(|r| format!(" to {r}"))
                        .unwrap_or_default(),
                    m["text"].as_str().unwrap_or("")
                );
            }
        }
        Request::Builtin { .. } => println!("{}", v["output"].as_str().unwrap_or("")),
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

fn call_socket(data: &Path, request: &Request) -> Result<Value> {
    let path = socket_path(data);
    let mut conn = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to the bus of stele up at {}", path.display()))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    conn.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .context("reading the bus's answer")?;
    let v: Value = serde_json::from_str(&answer).with_context(|| format!("the bus answered {answer:?}"))?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err(anyhow!("{}", v["error"].as_str().unwrap_or("the bus failed")))
    }
}

fn local(data: &Path, policies: &Path, request: &Request) -> Result<Value> {
    let gate = PolicyGate::load(policies)
        .with_context(|| format!("loading the bus's policies from {}", policies.display()))?;
    let journal = crate::journal_cmd::open_writer(data)?;
    let config = crate::cli::config().bus.clone();
    let every = crate::cli::config().journal.snapshot_every;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (bus, task) = Bus::start_snapshotted(journal, data, Arc::new(gate), config, every).await?;
        let r = handle(&bus, request.clone()).await;
        drop(bus);
        let _ = task.await;
        r
    })
}

pub(crate) async fn handle(bus: &Bus, request: Request) -> Result<Value> {
    let out = |from: String, to: String, pattern: Pattern, message: String, ttl: Option<Duration>| Outgoing {
        from,
        to,
        pattern,
        builtin: String::new(),
        context: "cli".into(),
        payload: message.into_bytes(),
        ttl,
    };
    Ok(match request {
        Request::Send {
            from,
            to,
            message,
            ttl_ms,
            wait_ms,
        } => serde_json::to_value(
            bus.send_wait(
                out(
                    from,
                    to,
                    Pattern::Direct,
                    message,
                    ttl_ms.map(Duration::from_millis),
                ),
                Duration::from_millis(wait_ms.unwrap_or(0)),
            )
            .await?,
        )?,
        Request::Publish {
            from,
            topic,
            message,
            wait_ms,
        } => serde_json::to_value(
            bus.send_wait(
                out(from, topic, Pattern::Publish, message, None),
                Duration::from_millis(wait_ms.unwrap_or(0)),
            )
            .await?,
        )?,
        Request::Ask {
            from,
            to,
            message,
            timeout_ms,
        } => {
            if timeout_ms == 0 {
                bail!("--timeout must be more than 0");
            }
            let r = bus
                .request(
                    out(from, to, Pattern::Request, message, None),
                    Duration::from_millis(timeout_ms),
                )
                .await?;
            serde_json::to_value(r)?
        }
        Request::Reply {
            agent,
            request,
            message,
        } => serde_json::to_value(
            bus.respond(&agent, &RequestId(request), message.into_bytes())
                .await?,
        )?,
        Request::Recv {
            agent,
            max,
            wait_ms,
            ack,
        } => {
            let got = if wait_ms == 0 {
                bus.receive(&agent, max).await?
            } else {
                bus.receive_wait(&agent, max, Duration::from_millis(wait_ms))
                    .await?
            };
            if ack && !got.is_empty() {
                bus.ack(&agent, got.iter().map(|m| m.id.clone()).collect())
                    .await?;
            }
            serde_json::to_value(got)?
        }
        Request::Ack { agent, ids } => json!({ "acknowledged": bus.ack(&agent, ids).await? }),
        Request::Subscribe {
            agent,
            pattern,
            active,
        } => {
            bus.subscribe(&agent, &pattern, active).await?;
            json!({ "agent": agent, "pattern": pattern, "active": active })
        }
        Request::Rotate { agent, reason } => {
            json!({ "agent": agent, "epoch": bus.rotate_key(&agent, &reason).await? })
        }
        Request::Builtin {
            from,
            name,
            arguments,
        } => {
            if !stele_engine::bus::builtins::is_builtin(&name) {
                bail!(
                    "{name:?} is not a builtin; one of {}",
                    stele_engine::bus::BUILTINS.join(", ")
                );
            }
            let tools = BusTools {
                bus: bus.clone(),
                agent: from,
                run: "cli".into(),
                inner: Arc::new(NoTools),
            };
            let call = stele_engine::llm::ToolCall {
                id: "cli".into(),
                name,
                arguments,
            };
            match tools.call(&call).await {
                Ok(output) => json!({ "ok": true, "output": output }),
                Err(e) => bail!("{e}"),
            }
        }
        Request::Stats => bus.stats().await?,
    })
}

/// The tool runner behind `stele bus builtin`: only builtins exist there.
#[derive(Debug)]
struct NoTools;

impl stele_engine::tools::ToolRunner for NoTools {
    fn run<'a>(
        &'a self,
        call: &'a stele_engine::llm::ToolCall,
        _ctx: &'a stele_engine::tools::CallContext,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = stele_engine::orga::ToolOutcome> + Send + 'a>>
    {
        Box::pin(async move {
            stele_engine::orga::ToolOutcome {
                call_id: call.id.clone(),
                ok: false,
                output: format!("no tool named {:?} here", call.name),
                duration_ms: 0,
            }
        })
    }
}

/// The bus of `stele up`: running while this guard lives.
pub struct Daemon {
    socket: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    bus: Bus,
}

impl Daemon {
    /// The bus it serves (reasoning runs' builtins send through it).
    #[must_use]
    pub fn bus(&self) -> &Bus {
        &self.bus
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts the bus for `stele up` when `[bus] policies` is set: the bus
/// task, the NATS link when `[bus] nats`, and `<data>/bus.sock`. The bus
/// decides with `gate`, the daemon's live policy set (what `stele policy
/// reload` swaps), or why the daemon has none.
///
/// # Errors
/// No policy set, the bus key, NATS unreachable with `[bus] nats = true`,
/// the socket.
pub async fn start_daemon(
    data: &Path,
    journal: Journal,
    config: &stele_engine::Config,
    gate: Result<LiveGate>,
) -> Result<Option<Daemon>> {
    if config.bus.policies.is_none() {
        return Ok(None);
    }
    let gate = gate.context("[bus] policies is set, so the bus runs")?;
    let (bus, task) = Bus::start_snapshotted(
        journal,
        data,
        gate,
        config.bus.clone(),
        config.journal.snapshot_every,
    )
    .await?;
    let mut tasks = vec![task];
    if config.bus.nats {
        let link = remote::connect(bus.clone(), &config.nats)
            .await
            .with_context(|| {
                format!(
                    "[bus] nats = true: linking the bus to NATS at {}",
                    config.nats.url
                )
            })?;
        tasks.push(link);
    }
    let socket = socket_path(data);
    let _ = std::fs::remove_file(&socket);
    let listener =
        tokio::net::UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let served = bus.clone();
    tasks.push(tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                continue;
            };
            let bus = served.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = serve(conn, bus).await;
            });
        }
    }));
    Ok(Some(Daemon { socket, tasks, bus }))
}

async fn serve(conn: tokio::net::UnixStream, bus: Bus) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut lines = tokio::io::BufReader::new(read.take(MAX_LINE_BYTES)).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(r) => match handle(&bus, r).await {
                Ok(v) => json!({ "ok": true, "result": v }),
                Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
            },
            Err(e) => json!({ "ok": false, "error": format!("not a bus request: {e}") }),
        };
        let mut out = answer.to_string();
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------ bench

#[derive(Debug, clap::Args)]
pub struct BenchBusArgs {
    /// Messages sent end to end.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Concurrent senders (each its own agent).
    #[arg(long, default_value_t = 64)]
    pub senders: u64,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Journal durability.
    #[arg(long, value_enum, default_value = "buffered")]
    pub durability: crate::cli::DurabilityArg,
    #[arg(long)]
    pub json: bool,
}

#[allow(clippy::cast_precision_loss)] // rates and means for a report
pub fn bench(args: &BenchBusArgs) -> Result<ExitCode> {
    use hdrhistogram::Histogram;
    use stele_engine::bus::crypto::Header;
    use stele_engine::policy::{AuthzRequest, Entity, Point};
    use stele_journal::{Append, EventBody, Options, StreamId};

    anyhow::ensure!(
        args.senders >= 1 && args.messages >= args.senders,
        "--messages must be at least --senders ≥ 1"
    );
    anyhow::ensure!(args.size <= 64 * 1024, "--size is at most 65536");
    let policies = PathBuf::from("fixtures/policies");
    let gate = Arc::new(
        PolicyGate::load(&policies)
            .with_context(|| format!("loading {} (run from the repository root)", policies.display()))?,
    );
    let payload = vec![b'x'; args.size];
    let keys = stele_engine::bus::BusKeys::generate();

    // 1. The parts of one send, alone.
    let n = 20_000u32;
    let header = |i: u32| Header {
        origin: "bench".into(),
        sender: "s0".into(),
        recipient: "sink".into(),
        pattern: "direct".into(),
        request: None,
        epoch: 0,
        counter: u64::from(i),
        expires_at_ms: u64::MAX,
    };
    let key = keys.local_key("bench", "s0", 0);
    let t = std::time::Instant::now();
    let mut last = Vec::new();
    for i in 0..n {
        last = key.seal(&header(i), &payload)?;
    }
    let seal_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(key.open(&header(n - 1), &last)?);
    }
    let open_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let digest = header(0).signed_digest(&last);
    let t = std::time::Instant::now();
    for _ in 0..n / 4 {
        std::hint::black_box(keys.sign(&digest));
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n / 4);
    let request = AuthzRequest {
        point: Point::MessageSend,
        principal: Entity {
            kind: "Agent".into(),
            id: "s0".into(),
            attrs: json!({"priority": "normal"}),
        },
        action: "send_message".into(),
        resource: Entity {
            kind: "Agent".into(),
            id: "sink".into(),
            attrs: json!({"priority": "normal"}),
        },
        context: json!({"pattern": "direct", "size_bytes": args.size}),
    };
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(gate.decide(&request));
    }
    let gate_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);

    // 2. End to end through the bus and the journal, then the journal alone
    //    with the same events in the same shape.
    let tmp = tempfile::tempdir()?;
    let durability = stele_journal::Durability::from(args.durability);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let journal = Journal::open(
        tmp.path().join("bus"),
        Options {
            durability,
            ..Options::default()
        },
    )?;
    let (e2e_s, latency, events_per_msg) = rt.block_on(async {
        let mut regs = vec![Append {
            stream: StreamId::new("agent:sink")?,
            cause: None,
            body: EventBody::AgentRegistered {
                agent: "sink".into(),
                definition: String::new(),
                definition_hash: [0; 32],
            },
        }];
        for s in 0..args.senders {
            regs.push(Append {
                stream: StreamId::new(format!("agent:s{s}"))?,
                cause: None,
                body: EventBody::AgentRegistered {
                    agent: format!("s{s}"),
                    definition: String::new(),
                    definition_hash: [0; 32],
                },
            });
        }
        journal.append_many(regs).await?;
        let before = journal.reader().head().seq.0;
        let config = stele_engine::config::BusConfig {
            name: "bench".into(),
            mailbox_capacity: 1_000_000,
            messages_per_second: 10_000_000,
            burst: 10_000_000,
            ..Default::default()
        };
        let (bus, task) = Bus::start_with_keys(journal.clone(), keys.clone(), gate.clone(), config).await?;
        let per = args.messages / args.senders;
        let started = std::time::Instant::now();
        let mut handles = Vec::new();
        for s in 0..args.senders {
            let (bus, payload) = (bus.clone(), payload.clone());
            handles.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
                for _ in 0..per {
                    let t = std::time::Instant::now();
                    bus.send(Outgoing {
                        from: format!("s{s}"),
                        to: "sink".into(),
                        pattern: Pattern::Direct,
                        builtin: String::new(),
                        context: String::new(),
                        payload: payload.clone(),
                        ttl: Some(Duration::from_secs(3600)),
                    })
                    .await?;
                    h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                }
                anyhow::Ok(h)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for h in handles {
            all.add(h.await??)?;
        }
        let e2e = started.elapsed().as_secs_f64();
        let events = journal.reader().head().seq.0 - before;
        drop(bus);
        let _ = task.await;
        let sent = (per * args.senders) as f64;
        anyhow::Ok((e2e, all, events as f64 / sent))
    })?;
    let sent = (args.messages / args.senders * args.senders) as f64;
    // The journal alone: the same number of events, of the same kinds and
    // sizes, appended by the same number of writers in groups of the same size.
    let journal = Journal::open(
        tmp.path().join("journal-only"),
        Options {
            durability,
            ..Options::default()
        },
    )?;
    let journal_s = rt.block_on(async {
        let env = stele_journal::event::BusEnvelope {
            origin: "bench".into(),
            sender: "s0".into(),
            recipient: "sink".into(),
            pattern: "direct".into(),
            builtin: String::new(),
            request: None,
            context: String::new(),
            epoch: 0,
            counter: 0,
            expires_at_ms: u64::MAX,
            ciphertext: last.clone(),
            signer: keys.public_key(),
            signature: [7; 64],
            remote_hash: String::new(),
        };
        let per = args.messages / args.senders;
        let started = std::time::Instant::now();
        let mut handles = Vec::new();
        for s in 0..args.senders {
            let (journal, env) = (journal.clone(), env.clone());
            handles.push(tokio::spawn(async move {
                for i in 0..per {
                    let id = format!("m:bench:s{s}:0:{i}");
                    let stream = StreamId::new(format!("bus:s{s}"))?;
                    journal
                        .append_many(vec![
                            Append {
                                stream: stream.clone(),
                                cause: None,
                                body: EventBody::PolicyDecided {
                                    run: None,
                                    point: "message_send".into(),
                                    request: "{\"action\":\"send_message\",\"context\":{\"pattern\":\"direct\",\"size_bytes\":1024},\"point\":\"message_send\",\"principal\":{\"attrs\":{\"priority\":\"normal\"},\"id\":\"s0\",\"kind\":\"Agent\"},\"resource\":{\"attrs\":{\"priority\":\"normal\"},\"id\":\"sink\",\"kind\":\"Agent\"}}".into(),
                                    verdict: "allow".into(),
                                    detail: String::new(),
                                    policies: vec!["agents-message-agents".into()],
                                    policy_set: "0".repeat(64),
                                },
                            },
                            Append {
                                stream: stream.clone(),
                                cause: None,
                                body: EventBody::MessageSent {
                                    message: id.clone(),
                                    envelope: Box::new(env.clone()),
                                },
                            },
                            Append {
                                stream: StreamId::new("bus:sink")?,
                                cause: None,
                                body: EventBody::MessageDelivered {
                                    message: id,
                                    recipient: "sink".into(),
                                    remote: String::new(),
                                },
                            },
                        ])
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for h in handles {
            h.await??;
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    })?;
    let core_us = gate_us + seal_us + sign_us;
    let report = json!({
        "messages": sent,
        "senders": args.senders,
        "payload_bytes": args.size,
        "durability": format!("{:?}", args.durability).to_lowercase(),
        "seal_us": seal_us,
        "open_us": open_us,
        "sign_us": sign_us,
        "gate_us": gate_us,
        "routing_core_us": core_us,
        "routing_core_msgs_per_s_one_core": 1e6 / core_us,
        "routing_core_msgs_per_s_two_cores_sign_parallel": 1e6 / (gate_us + seal_us + sign_us / 2.0),
        "e2e_msgs_per_s": sent / e2e_s,
        "e2e_latency_us_p50": latency.value_at_quantile(0.5),
        "e2e_latency_us_p99": latency.value_at_quantile(0.99),
        "e2e_latency_us_max": latency.max(),
        "events_per_message": events_per_msg,
        "journal_only_msgs_per_s": sent / journal_s,
        "journal_share": journal_s / e2e_s,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}
