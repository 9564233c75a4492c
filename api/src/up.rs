//! `stele up`: the runtime daemon.
//!
//! One *core* task owns the journal handle and the runtime state (registry,
//! scheduler and execution views, folded from snapshot + tail). Everything
//! else talks to it over one channel: the HTTP API (`crate::http`, through
//! [`Handle`]), the process
//! runners' reports, timers, signals. The core drains what waits, decides
//! it as one [`Batch`] (the runtime decider in `stele_engine::runtime`),
//! appends the batch's facts as one journal group, folds the committed
//! events (from the journal's follow stream, so events appended by others
//! through the control socket are seen too, and event-driven agents are
//! triggered by them), answers the callers, and only then performs the
//! effects: a process starts only after the `TaskPlaced` that allows it is
//! durable.
//!
//! Start-up journals the policy set it compiled (`PolicySetLoaded`, `old`
//! empty), kills orphans of a crashed predecessor (a recorded pid whose
//! start time still matches), records `RuntimeStarted`, interrupts the runs
//! that were in flight and reschedules them per their mode. Shutdown (first
//! SIGTERM/SIGINT or `POST /v1/shutdown`) runs the six steps of
//! `stele_engine::runtime::SHUTDOWN_STEPS`, each an event; a second signal
//! kills what is still running at once; SIGHUP reloads the policy
//! directory (`crate::up_runs::Desk::reload_dir`). The daemon has one
//! policy set, a `LiveGate` every decision point asks per decision: the
//! runs, the bus (`[bus] policies` turns it on), the context store and
//! `join_network`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stele_engine::process::{self, Confinement, Launcher, ProcessEvent, ProcessSpec};
use stele_engine::runtime::{Batch, Effect, RuntimeCommand, RuntimeRejection, RuntimeState};
use stele_engine::sandbox::{
    ContainerOptions, DockerHost, ExecEvent, ExecHandle, NativeExecutor, Sandboxes, TaskSpec,
};
use stele_engine::{AgentDefinition, Config, ExecutionMode, Runs};
use stele_journal::{
    AgentState, Append, EventRef, Follow, Journal, ProcessExit, Reader, Receipt, Seq, TaskRequest,
};
use stele_projections::scheduler::TaskState;
use stele_projections::{Folded, JournalView, Projection, SnapshotStore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::journal_cmd::{open_writer, runtime};
use crate::up_runs::{Cancel, Desk, Lease, TaskEnd};
use crate::views;

/// The file that tells clients where the daemon listens.
pub fn up_file(data: &Path) -> PathBuf {
    data.join("up.json")
}

/// The policy directory of reasoning runs when `--policies` is not given.
pub const DEFAULT_POLICIES: &str = "fixtures/policies";

/// What a reasoning task's run reports as its confinement.
const IN_PROCESS: &str = "in-process (a reasoning run driven by stele up)";

/// Largest batch of commands decided and appended together.
const MAX_BATCH: usize = 4096;

/// Most requests (runs started over HTTP, continuations) waiting for a slot
/// at once; one more is refused (503) rather than queued.
pub const MAX_WAITING_REQUESTS: usize = 1024;

type Reply = oneshot::Sender<Result<Vec<Receipt>, RuntimeRejection>>;

enum Input {
    Command(RuntimeCommand, Option<Reply>),
    /// Queue a task of `agent` for a request; `lease` gets the task once
    /// it is placed (dropped if it ends unplaced).
    Request {
        agent: String,
        request: TaskRequest,
        lease: oneshot::Sender<Lease>,
        reply: Reply,
    },
    Exited(String, ProcessExit),
    /// A sandbox could not start its task (after its handle was kept).
    SpawnFailed(String, String),
    Query(Query, oneshot::Sender<Value>),
    /// A signal or a shutdown request; `force` for a second signal.
    Shutdown {
        force: bool,
    },
    /// The shutdown sequence is done.
    Exit,
}

#[derive(Debug, Clone, Copy)]
enum Query {
    Status,
    Agents,
    LiveProcesses,
    KillAll,
}

/// Runs the daemon until it is shut down.
pub fn up(
    data: &Path,
    agents_dir: Option<&Path>,
    http_port: Option<u16>,
    policies: Option<&Path>,
) -> Result<ExitCode> {
    let config = crate::cli::config().clone();
    // Definitions first: a bad file is reported before anything starts.
    let definitions = match agents_dir {
        Some(dir) => load_agents(dir)?,
        None => Vec::new(),
    };
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let journal = open_writer(data).map_err(|e| {
        let owner = std::fs::read_to_string(up_file(data)).unwrap_or_default();
        if owner.is_empty() {
            e
        } else {
            e.context(format!(
                "a stele runtime already runs on {}: {}",
                data.display(),
                owner.trim()
            ))
        }
    })?;
    let launcher = Launcher::current().context("finding the stele binary (the process launcher)")?;
    let confinement = process::detect_confinement();
    // The daemon's one policy set (reasoning runs, the bus, the context
    // store, join_network), compiled once: --policies, else [bus] policies,
    // else the default. A directory named must load; the default one may
    // be absent (then reasoning runs are refused, naming why).
    let named = policies.or(config.bus.policies.as_deref());
    let policy_dir = named.unwrap_or(Path::new(DEFAULT_POLICIES));
    if let (Some(given), Some(bus)) = (policies, config.bus.policies.as_deref())
        && !same_dir(given, bus)
    {
        eprintln!(
            "stele up: the bus decides with the daemon's policy set ({}), not [bus] policies ({}): one set, reloaded as one",
            given.display(),
            bus.display()
        );
    }
    let gate = match crate::run_cmd::load_gate(policy_dir) {
        Ok(g) => Ok(g),
        Err(e) if named.is_some() => return Err(e),
        Err(e) => {
            eprintln!("stele up: reasoning runs are off: {e:#}");
            Err(format!("{e:#}"))
        }
    };
    let desk = Desk::new(data, journal.clone(), policy_dir, gate);
    let policy_dir = policy_dir.to_owned();
    let rt = runtime()?;
    let code = rt.block_on(async move {
        let port = http_port.unwrap_or(config.runtime.http_port);
        let listener = crate::http::bind(&config, port).await?;
        let (addr, scheme) = (listener.addr, listener.scheme());
        let (tx, rx) = mpsc::unbounded_channel();
        let nats_cfg = config.nats.clone();
        let mut core = Core::load(
            data,
            journal,
            config,
            launcher,
            confinement,
            (tx.clone(), rx),
            desk.clone(),
        )?;
        // Runs begun by requests and continuations take scheduler slots.
        desk.attach(Handle(tx.clone()));
        // The set in force from here on, journaled before anything (an
        // approval timer armed at start) can decide with it.
        desk.announce().await?;
        core.start().await?;
        // The JetStream feed, when configured: it follows the journal from its
        // cursor; NATS outages never touch the runtime.
        let nats_status = nats_cfg
            .enabled
            .then(|| Arc::new(crate::nats::PublisherStatus::default()));
        core.nats.clone_from(&nats_status);
        let nats_task = nats_status.clone().map(|status| {
            let (reader, data, cfg) = (core.journal.reader(), data.to_owned(), nats_cfg.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::nats::run_publisher(reader, &data, &cfg, status.clone()).await {
                    let msg = format!("NATS publisher stopped: {e:#}");
                    status.set_error(&msg);
                    eprintln!("stele up: {msg}");
                }
            })
        });
        let head_reader = core.journal.reader();
        for (file, def, source) in definitions {
            core.register_from_dir(&file, def, source).await?;
        }
        let _control = crate::control::Server::start(data, core.journal.clone())?;
        let bus_daemon =
            crate::bus_cmd::start_daemon(data, core.journal.clone(), &core.config, desk.live()).await?;
        // Runs are offered the bus builtins only when the bus runs.
        if let Some(b) = &bus_daemon {
            desk.offer_bus(b.bus().clone());
        }
        let desk_for_signals = desk.clone();
        let server = crate::http::start(
            listener,
            crate::http::Parts {
                runtime: Handle(tx.clone()),
                journal: core.journal.clone(),
                data: data.to_owned(),
                config: core.config.http.clone(),
                tier: core.config.security.default_sandbox_tier,
                runs: desk,
                policies: policy_dir,
                bus: bus_daemon.as_ref().map(|b| b.bus().clone()),
            },
        )?;
        write_up_file(data, addr, scheme)?;
        signals(tx.clone())?;
        reload_on_hangup(desk_for_signals)?;
        println!(
            "stele up: data {}, HTTP API on {scheme}://{addr}/v1, {}",
            data.display(),
            core.confinement.describe()
        );
        let result = core.run().await;
        if let (Some(task), Some(status)) = (nats_task, &nats_status) {
            // Let it publish the shutdown's events (5 s at most), then stop it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while status.published_seq.load(Ordering::Relaxed) < head_reader.head().seq.0
                && !task.is_finished()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            task.abort();
        }
        drop(server);
        let _ = std::fs::remove_file(up_file(data));
        result
    });
    drop(rt);
    code
}

/// Whether two paths name one directory (as given when either cannot be
/// resolved).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn write_up_file(data: &Path, addr: std::net::SocketAddr, scheme: &str) -> Result<()> {
    let path = up_file(data);
    let tmp = data.join("up.json.tmp");
    let tls_cert = crate::cli::config()
        .http
        .tls_cert
        .as_ref()
        .map(|p| p.display().to_string());
    let body =
        json!({"pid": std::process::id(), "http": addr.to_string(), "scheme": scheme, "tls_cert": tls_cert})
            .to_string();
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn signals(tx: mpsc::UnboundedSender<Input>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        let mut force = false;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if tx.send(Input::Shutdown { force }).is_err() {
                return;
            }
            force = true;
        }
    });
    Ok(())
}

/// On SIGHUP the daemon reloads its own policy directory
/// (`stele up --policies`), as `stele policy reload` without `--policies`
/// does; the outcome (or why the old set stays) goes to stderr.
fn reload_on_hangup(desk: Desk) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match desk.reload_dir().await {
                Ok(r) => eprintln!("stele up: SIGHUP: {}", r.describe()),
                Err(e) => eprintln!("stele up: SIGHUP: the policy set was not reloaded: {e:#}"),
            }
        }
    });
    Ok(())
}

/// Every `*.toml` in `dir`, parsed; the first bad one is an error.
fn load_agents(dir: &Path) -> Result<Vec<(PathBuf, AgentDefinition, String)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading agents directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let def = AgentDefinition::load(&f)?;
        let source = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        out.push((f, def, source));
    }
    Ok(out)
}

/// Whether the program of a definition can be started here.
pub fn startable(def: &AgentDefinition) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match &def.runs {
        Runs::Process { workdir, .. }
            if def.tier(crate::cli::config().security.default_sandbox_tier)
                != stele_engine::config::SandboxTier::Native =>
        {
            // A container tier: the command is a path in the image, checked
            // when the container starts; the workdir is inside it too.
            match workdir {
                Some(w) if !w.is_absolute() => Err(format!("workdir {} must be absolute", w.display())),
                _ => Ok(()),
            }
        }
        Runs::Process { command, workdir, .. } => {
            let meta =
                std::fs::metadata(command).map_err(|e| format!("command {}: {e}", command.display()))?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return Err(format!("command {} is not an executable file", command.display()));
            }
            if let Some(w) = workdir
                && !w.is_dir()
            {
                return Err(format!("workdir {} is not a directory", w.display()));
            }
            Ok(())
        }
        // Driven inside the daemon (`crate::up_runs`); its workspace is
        // created when a run begins.
        Runs::Reasoning { .. } => Ok(()),
        #[allow(unreachable_patterns)]
        _ => Err("the native runner cannot run this kind of agent".into()),
    }
}

/// The start time (clock ticks since boot) of a live process.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised command name.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the process group of a recorded process if it is still the same
/// process (pid and start time), and says what was done.
fn reap_orphan(pid: u32, recorded_start: u64) -> String {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    match start_ticks(pid) {
        Some(t) if t == recorded_start => {
            let Ok(raw) = i32::try_from(pid) else {
                return format!("process {pid}: not a valid pid");
            };
            match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
                Ok(()) => format!("orphan process group {pid} was still running and was killed"),
                Err(e) => format!("orphan process group {pid} was still running; killing it failed: {e}"),
            }
        }
        Some(_) => format!("process {pid} had exited (its pid is now another process's)"),
        None => format!("process {pid} had exited"),
    }
}

struct Core {
    data: PathBuf,
    journal: Journal,
    reader: Reader,
    store: SnapshotStore,
    state: RuntimeState,
    journal_view: Folded<JournalView>,
    applied: Seq,
    follow: Follow,
    config: Config,
    launcher: Launcher,
    confinement: Confinement,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    /// Commands the core itself produced (triggers, spawn failures).
    internal: VecDeque<RuntimeCommand>,
    procs: HashMap<String, ExecHandle>,
    /// The executors of the three sandbox tiers.
    sandboxes: Sandboxes,
    /// This journal's `stele.owner` container label.
    owner: String,
    /// Placed tasks whose previous process is still ending.
    deferred: HashSet<String>,
    /// Deferred tasks whose previous process has now ended.
    respawn: Vec<String>,
    timers: HashMap<String, Vec<AbortHandle>>,
    shutdown: Option<Arc<AtomicBool>>,
    started_at_seq: Seq,
    /// The NATS publisher's progress, when `[nats] enabled`.
    nats: Option<Arc<crate::nats::PublisherStatus>>,
    /// Reasoning runs (scheduler tasks, HTTP starts, approvals).
    desk: Desk,
    /// Tasks of reasoning agents being driven, with their stop signal.
    reasoning: HashMap<String, Cancel>,
    /// What queued each task of a reasoning agent not yet started.
    triggers: HashMap<String, String>,
    /// Requests waiting for their task's placement, by agent (one task
    /// per agent, so at most one each).
    leases: HashMap<String, oneshot::Sender<Lease>>,
}

impl Core {
    fn load(
        data: &Path,
        journal: Journal,
        config: Config,
        launcher: Launcher,
        confinement: Confinement,
        (tx, rx): (mpsc::UnboundedSender<Input>, mpsc::UnboundedReceiver<Input>),
        desk: Desk,
    ) -> Result<Core> {
        let reader = journal.reader();
        let store = SnapshotStore::new(data);
        let registry = views::load(&reader, &store)?;
        let scheduler = views::load(&reader, &store)?;
        let execution = views::load(&reader, &store)?;
        let journal_view: Folded<JournalView> = views::load(&reader, &store)?;
        let head = reader.head().seq;
        for (name, seq) in [
            ("registry", registry.seq),
            ("scheduler", scheduler.seq),
            ("execution", execution.seq),
            ("journal", journal_view.seq),
        ] {
            if seq != head {
                bail!(
                    "the {name} view was folded to {} but the head is {}",
                    seq.0,
                    head.0
                );
            }
        }
        let state = RuntimeState::new(registry.state, scheduler.state, execution.state);
        let follow = reader.follow(head.next());
        let owner = crate::sandbox_cmd::journal_owner(&journal)?;
        let sandboxes = Sandboxes::new(
            NativeExecutor {
                launcher: launcher.clone(),
                confinement: confinement.clone(),
            },
            DockerHost::from_env(),
        );
        Ok(Core {
            data: data.to_owned(),
            journal,
            reader,
            store,
            state,
            journal_view,
            applied: head,
            follow,
            config,
            launcher,
            confinement,
            tx,
            rx,
            internal: VecDeque::new(),
            procs: HashMap::new(),
            sandboxes,
            owner,
            deferred: HashSet::new(),
            respawn: Vec::new(),
            timers: HashMap::new(),
            shutdown: None,
            started_at_seq: head,
            nats: None,
            desk,
            reasoning: HashMap::new(),
            triggers: HashMap::new(),
            leases: HashMap::new(),
        })
    }

    /// Records the start, recovering what a crash interrupted.
    async fn start(&mut self) -> Result<()> {
        let mut orphans = BTreeMap::new();
        // Containers first (found by label; each removal is a
        // `SandboxReaped`): a container's recorded pid is gone after it.
        // Without a dockerd socket there is nothing to reap.
        let host = self.sandboxes.host().clone();
        if host.socket().exists() {
            let stream = stele_journal::StreamId::new(crate::sandbox_cmd::SANDBOX_STREAM)?;
            match crate::sandbox_cmd::reap_and_record(&host, &self.journal, &self.owner, &stream).await {
                Ok(reaped) => {
                    for r in reaped {
                        eprintln!("stele up: {} (task {})", r.detail, r.task);
                        // A run's calls may leave several containers.
                        orphans
                            .entry(r.task)
                            .and_modify(|d: &mut String| {
                                d.push_str("; ");
                                d.push_str(&r.detail);
                            })
                            .or_insert(r.detail);
                    }
                }
                Err(e) => eprintln!("stele up: sandbox containers of a predecessor not checked: {e:#}"),
            }
        }
        for (task, live) in &self.state.execution.live {
            if let Some(pid) = live.pid
                && !orphans.contains_key(task)
            {
                orphans.insert(task.clone(), reap_orphan(pid, live.start_ticks));
            }
        }
        // Requests queued before this start whose requester is gone: the
        // desk does what they ask once their task is placed (which the
        // start itself may do), so their leases are taken first.
        self.adopt_requests()?;
        let effective = toml::to_string(&self.config).unwrap_or_default();
        let command = RuntimeCommand::Start {
            pid: std::process::id(),
            software: format!("stele {}", env!("CARGO_PKG_VERSION")),
            host: self.config.scheduler.host(),
            confinement: self.confinement.describe(),
            config_hash: *blake3::hash(effective.as_bytes()).as_bytes(),
            orphans,
        };
        self.decide_batch(vec![(command, None)]).await?;
        for (agent, every) in self.state.interval_timers() {
            self.arm_interval(agent, every);
        }
        // Parked runs survive restarts; their approval timeouts still run.
        self.desk.arm_parked()?;
        Ok(())
    }

    async fn register_from_dir(&mut self, file: &Path, def: AgentDefinition, source: String) -> Result<()> {
        let hash = hex::encode(blake3::hash(source.as_bytes()).as_bytes());
        if let Some(existing) = self.state.registry.agents.get(&def.name)
            && !matches!(existing.state, AgentState::Terminated)
        {
            if existing.definition_hash != hash {
                eprintln!(
                    "stele up: {}: agent {} is registered with another definition; stop it to register this one",
                    file.display(),
                    def.name
                );
            }
            return Ok(());
        }
        let startable = startable(&def);
        let (reply, answer) = oneshot::channel();
        let command = RuntimeCommand::Register {
            definition: Box::new(def),
            source,
            startable,
        };
        self.decide_batch(vec![(command, Some(reply))]).await?;
        if let Ok(Err(e)) = answer.await {
            bail!("{}: {e}", file.display());
        }
        Ok(())
    }

    async fn run(mut self) -> Result<ExitCode> {
        loop {
            let mut batch: Vec<(RuntimeCommand, Option<Reply>)> = Vec::new();
            while let Some(c) = self.internal.pop_front() {
                batch.push((c, None));
            }
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    e = self.follow.next() => {
                        self.fold(e)?;
                        continue;
                    }
                    input = self.rx.recv() => {
                        let Some(input) = input else { return Ok(ExitCode::SUCCESS) };
                        if self.take(input, &mut batch) {
                            return self.finish();
                        }
                    }
                }
            }
            // Group what else waits into the same batch.
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(input) => {
                        if self.take(input, &mut batch) {
                            return self.finish();
                        }
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.decide_batch(batch).await?;
            }
        }
    }

    fn finish(mut self) -> Result<ExitCode> {
        self.desk.disarm_all();
        for timers in self.timers.values() {
            for t in timers {
                t.abort();
            }
        }
        self.timers.clear();
        let head = self.reader.head();
        println!(
            "stele up: stopped at seq {} ({} events this run)",
            head.seq.0,
            head.seq.0 - self.started_at_seq.0
        );
        Ok(ExitCode::SUCCESS)
    }

    /// Handles one input; true when the daemon should exit.
    fn take(&mut self, input: Input, batch: &mut Vec<(RuntimeCommand, Option<Reply>)>) -> bool {
        match input {
            Input::Command(c, reply) => batch.push((c, reply)),
            Input::Request {
                agent,
                request,
                lease,
                reply,
            } => {
                if let Some(e) = self.refuse_request(&agent) {
                    let _ = reply.send(Err(e));
                } else {
                    self.leases.insert(agent.clone(), lease);
                    batch.push((RuntimeCommand::Requested { agent, request }, Some(reply)));
                }
            }
            Input::SpawnFailed(task, error) => {
                self.procs.remove(&task);
                self.reasoning.remove(&task);
                if self.deferred.remove(&task) {
                    self.respawn.push(task.clone());
                }
                batch.push((RuntimeCommand::SpawnFailed { task, error }, None));
            }
            Input::Exited(task, exit) => {
                self.procs.remove(&task);
                self.reasoning.remove(&task);
                if self.deferred.remove(&task) {
                    self.respawn.push(task.clone());
                }
                batch.push((RuntimeCommand::ProcessExited { task, exit }, None));
            }
            Input::Query(q, reply) => {
                let _ = reply.send(self.query(q));
            }
            Input::Shutdown { force } => self.begin_shutdown(force),
            Input::Exit => return true,
        }
        false
    }

    fn fold(&mut self, e: Option<stele_journal::Result<EventRef>>) -> Result<()> {
        let Some(e) = e else {
            bail!("the journal's follow stream ended")
        };
        let e = e?;
        if e.seq() <= self.applied {
            return Ok(());
        }
        // A requested task that ends before it was started (cancelled in
        // the queue): its requester hears so (the lease is dropped).
        if let stele_journal::ArchivedEventBody::TaskFinished { task, .. } = e.body()
            && matches!(
                self.state.scheduler.tasks.get(task.as_str()).map(|t| t.state),
                Some(TaskState::Queued)
            )
            && let Some(live) = self.state.execution.live.get(task.as_str())
            && live.requested
        {
            self.leases.remove(&live.agent);
        }
        self.state.apply(&e);
        if let stele_journal::ArchivedEventBody::TaskQueued {
            task, agent, trigger, ..
        } = e.body()
            && self
                .state
                .definition(agent.as_str())
                .is_some_and(|d| matches!(d.runs, Runs::Reasoning { .. }))
        {
            self.triggers.insert(task.to_string(), trigger.to_string());
        }
        self.journal_view.state.apply(&e);
        self.journal_view.seq = e.seq();
        self.applied = e.seq();
        views::snapshot_if_due(&self.store, &e, &self.state.registry)?;
        views::snapshot_if_due(&self.store, &e, &self.state.scheduler)?;
        views::snapshot_if_due(&self.store, &e, &self.state.execution)?;
        views::snapshot_if_due(&self.store, &e, &self.journal_view.state)?;
        if !self.state.execution.admission_closed {
            for agent in self
                .state
                .triggered_by(e.body().kind(), e.stream(), e.body().run())
            {
                self.internal
                    .push_back(RuntimeCommand::Triggered { agent, by: e.seq() });
            }
        }
        Ok(())
    }

    /// Decides a batch, appends its facts, folds them, answers, performs.
    async fn decide_batch(&mut self, commands: Vec<(RuntimeCommand, Option<Reply>)>) -> Result<()> {
        // A request may name an agent its requester registered a moment
        // ago through the journal: fold up to the head first.
        if commands
            .iter()
            .any(|(c, _)| matches!(c, RuntimeCommand::Requested { .. }))
        {
            let head = self.reader.head().seq;
            while self.applied < head {
                let e = self.follow.next().await;
                self.fold(e)?;
            }
        }
        let mut batch = Batch::new(&self.state);
        let mut answers = Vec::with_capacity(commands.len());
        for (command, reply) in commands {
            let what = format!("{command:?}");
            let requested = match &command {
                RuntimeCommand::Requested { agent, .. } => Some(agent.clone()),
                _ => None,
            };
            match batch.decide(command) {
                Ok(range) => answers.push((reply, Ok(range))),
                Err(e) => {
                    if let Some(agent) = requested {
                        self.leases.remove(&agent);
                    }
                    if reply.is_none() {
                        tracing::debug!(command = %what.chars().take(200).collect::<String>(), error = %e, "refused");
                    }
                    answers.push((reply, Err(e)));
                }
            }
        }
        let (facts, effects) = batch.finish();
        let receipts = if facts.is_empty() {
            Vec::new()
        } else {
            let appends = facts
                .into_iter()
                .map(|f| Append {
                    stream: f.stream,
                    cause: f.cause,
                    body: f.body,
                })
                .collect();
            match self.journal.append_many(appends).await {
                Ok(r) => r,
                Err(e) => {
                    // Fail-stop: nothing of this batch is acknowledged.
                    for (reply, _) in answers {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(RuntimeRejection::NotStarted));
                        }
                    }
                    return Err(anyhow::Error::new(e).context("appending the runtime's decisions"));
                }
            }
        };
        if let Some(last) = receipts.last() {
            while self.applied < last.seq {
                let e = self.follow.next().await;
                self.fold(e)?;
            }
        }
        for (reply, answer) in answers {
            if let Some(reply) = reply {
                let _ = reply.send(answer.map(|range| receipts[range].to_vec()));
            }
        }
        for effect in effects {
            self.perform(effect);
        }
        for task in std::mem::take(&mut self.respawn) {
            let placed = matches!(
                self.state.scheduler.tasks.get(&task).map(|t| t.state),
                Some(TaskState::Running { .. })
            );
            if let (true, Some(live)) = (placed, self.state.execution.live.get(&task)) {
                let agent = live.agent.clone();
                self.spawn(task, &agent);
            }
        }
        Ok(())
    }

    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::Start { task, agent } => {
                if self.procs.contains_key(&task) || self.reasoning.contains_key(&task) {
                    self.deferred.insert(task);
                } else {
                    self.spawn(task, &agent);
                }
            }
            Effect::Stop { task } => {
                self.deferred.remove(&task);
                if let Some(cancel) = self.reasoning.get(&task) {
                    // Stopped and queued again: it was preempted.
                    let preempted = matches!(
                        self.state.scheduler.tasks.get(&task).map(|t| t.state),
                        Some(TaskState::Queued)
                    );
                    let why = if preempted {
                        format!("{task} was preempted by a higher-priority task")
                    } else {
                        format!("{task} was asked to stop")
                    };
                    cancel.send_replace(Some(why));
                }
                if let Some(p) = self.procs.get(&task) {
                    p.stop(self.config.runtime.stop_grace);
                }
            }
            Effect::ArmRestart { agent, after } => {
                let tx = self.tx.clone();
                let name = agent.clone();
                let handle = tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(Input::Command(
                        RuntimeCommand::TimerFired {
                            agent: name,
                            timer: "restart".into(),
                        },
                        None,
                    ));
                });
                self.timers.entry(agent).or_default().push(handle.abort_handle());
            }
            Effect::ArmInterval { agent, every } => self.arm_interval(agent, every),
            Effect::Disarm { agent } => {
                for t in self.timers.remove(&agent).unwrap_or_default() {
                    t.abort();
                }
            }
        }
    }

    fn arm_interval(&mut self, agent: String, every: Duration) {
        let tx = self.tx.clone();
        let name = agent.clone();
        let handle = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                let command = RuntimeCommand::TimerFired {
                    agent: name.clone(),
                    timer: "interval".into(),
                };
                if tx.send(Input::Command(command, None)).is_err() {
                    return;
                }
            }
        });
        self.timers.entry(agent).or_default().push(handle.abort_handle());
    }

    fn spawn(&mut self, task: String, agent: &str) {
        let Some(def) = self.state.definition(agent).cloned() else {
            self.internal.push_back(RuntimeCommand::SpawnFailed {
                task,
                error: format!("agent {agent} has no usable definition"),
            });
            return;
        };
        if self.state.execution.live.get(&task).is_some_and(|t| t.requested) {
            self.spawn_requested(task, &def);
            return;
        }
        if matches!(def.runs, Runs::Reasoning { .. }) {
            self.spawn_reasoning(task, (*def).clone());
            return;
        }
        let Runs::Process {
            command,
            args,
            env,
            workdir,
            image,
            network,
            ..
        } = &def.runs
        else {
            self.internal.push_back(RuntimeCommand::SpawnFailed {
                task,
                error: "the native runner cannot run this kind of agent".into(),
            });
            return;
        };
        let tier = def.tier(self.config.security.default_sandbox_tier);
        // A named network is a policy decision, journaled before the
        // container is created; without a permit the container has none.
        let decision = network
            .as_ref()
            .filter(|_| def.limits.network_io_mbps > 0 && tier != stele_engine::config::SandboxTier::Native)
            .map(|name| self.network_decision(&task, &def, tier, name));
        let joined = decision.as_ref().and_then(|(name, _)| name.clone());
        let spec = TaskSpec {
            task: task.clone(),
            agent: agent.to_owned(),
            command: command.display().to_string(),
            args: args.clone(),
            env: env.clone(),
            workdir: workdir.clone(),
            memory_mb: def.limits.memory_mb,
            cpu_cores: def.limits.cpu_cores,
            timeout: def.limits.execution_timeout,
            output_limit: usize::try_from(self.config.runtime.output_limit).unwrap_or(usize::MAX),
            sample_every: self.config.runtime.sample_interval,
            container: ContainerOptions {
                image: image.clone(),
                // A named network only for an agent allowed network I/O
                // whose policy permits it (`join_network`).
                network: joined,
                pids_limit: None,
                tmpfs_mb: None,
                owner: self.owner.clone(),
                ..ContainerOptions::default()
            },
        };
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let started = match (decision, self.sandboxes.container(tier)) {
            (Some((_, fact)), Some(executor)) => {
                let (journal, stream) = (self.journal.clone(), stele_engine::agent_stream(agent));
                executor.start_after(
                    spec,
                    events_tx,
                    Box::pin(async move {
                        journal
                            .append(Append {
                                stream,
                                cause: None,
                                body: fact,
                            })
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("journaling its network's policy decision: {e}"))
                    }),
                )
            }
            _ => self.sandboxes.executor(tier).start(spec, events_tx),
        };
        match started {
            Ok(handle) => {
                self.procs.insert(task.clone(), handle);
                let tx = self.tx.clone();
                let journal = self.journal.clone();
                let stream = stele_engine::agent_stream(agent);
                let probe = def.health.clone().map(|h| Probe {
                    check: h,
                    task: task.clone(),
                    launcher: self.launcher.clone(),
                    confinement: self.confinement.clone(),
                    host: self.sandboxes.host().clone(),
                    container: None,
                    tx: self.tx.clone(),
                });
                tokio::spawn(async move {
                    // A sandbox's own facts are durable before the runtime
                    // hears of the start or exit they belong to.
                    let record = |body: stele_journal::EventBody| {
                        let (journal, stream) = (journal.clone(), stream.clone());
                        async move {
                            if let Err(e) = journal
                                .append(Append {
                                    stream,
                                    cause: None,
                                    body,
                                })
                                .await
                            {
                                eprintln!("stele up: journaling a sandbox report: {e}");
                            }
                        }
                    };
                    let mut prober: Option<tokio::task::JoinHandle<()>> = None;
                    while let Some(ev) = events.recv().await {
                        if matches!(ev, ExecEvent::Exited { .. } | ExecEvent::Failed(_))
                            && let Some(p) = prober.take()
                        {
                            p.abort();
                        }
                        let input = match ev {
                            ExecEvent::Started {
                                pid,
                                confinement,
                                sandbox,
                            } => {
                                // A container's probe runs inside it.
                                let container = sandbox.as_ref().map(|s| s.container.clone());
                                if let Some(sandbox) = sandbox {
                                    record(stele_journal::EventBody::SandboxStarted {
                                        task: task.clone(),
                                        sandbox,
                                    })
                                    .await;
                                }
                                if let Some(p) = &probe {
                                    let p = Probe {
                                        container,
                                        ..p.clone()
                                    };
                                    prober = Some(tokio::spawn(p.run()));
                                }
                                Input::Command(
                                    RuntimeCommand::ProcessStarted {
                                        task: task.clone(),
                                        pid,
                                        start_ticks: start_ticks(pid).unwrap_or(0),
                                        confinement,
                                    },
                                    None,
                                )
                            }
                            ExecEvent::Sampled { rss_kb, cpu_ms } => Input::Command(
                                RuntimeCommand::Sampled {
                                    task: task.clone(),
                                    rss_kb,
                                    cpu_ms,
                                },
                                None,
                            ),
                            ExecEvent::Exited { report: r, sandbox } => {
                                if let Some(exit) = sandbox {
                                    record(stele_journal::EventBody::SandboxExited {
                                        task: task.clone(),
                                        exit,
                                    })
                                    .await;
                                }
                                Input::Exited(
                                    task.clone(),
                                    ProcessExit {
                                        code: r.code,
                                        signal: r.signal,
                                        timed_out: r.timed_out,
                                        stopped: r.stopped,
                                        stdout: r.stdout,
                                        stderr: r.stderr,
                                        output_dropped: r.stdout_dropped + r.stderr_dropped,
                                        wall_ms: r.wall_ms,
                                        cpu_ms: r.cpu_ms,
                                        max_rss_kb: r.max_rss_kb,
                                    },
                                )
                            }
                            ExecEvent::Failed(error) => Input::SpawnFailed(task.clone(), error),
                        };
                        if tx.send(input).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => self.internal.push_back(RuntimeCommand::SpawnFailed {
                task,
                error: e.to_string(),
            }),
        }
    }

    /// Begins a run of a reasoning agent for `task` inside the daemon; its
    /// end comes back as the task's exit (completed or parked: code 0;
    /// another outcome: 1; stopped: `stopped`; past `execution_timeout`:
    /// cancelled and `timed_out`).
    /// Whether task `task` of `def` may join the container network `name`:
    /// the Cedar gate decides `join_network` on `Network::"<name>"` (point
    /// `resource_allocation`, context `tier` and `network_io_mbps`). Returns
    /// the network to join (`None`: no network) and the `PolicyDecided` to
    /// journal before the container is created. Without a loaded policy set,
    /// or on a verdict other than allow, there is no network.
    fn network_decision(
        &self,
        task: &str,
        def: &AgentDefinition,
        tier: stele_engine::config::SandboxTier,
        name: &str,
    ) -> (Option<String>, stele_journal::EventBody) {
        use stele_engine::policy::{AuthzRequest, Entity, Point, Verdict};
        let request = AuthzRequest {
            point: Point::ResourceAllocation,
            principal: Entity {
                kind: "Agent".into(),
                id: def.name.clone(),
                attrs: json!({"priority": format!("{:?}", def.priority).to_lowercase()}),
            },
            action: "join_network".into(),
            resource: Entity {
                kind: "Network".into(),
                id: name.to_owned(),
                attrs: Value::Null,
            },
            context: json!({
                "tier": stele_engine::sandbox::tier_name(tier),
                "network_io_mbps": def.limits.network_io_mbps,
            }),
        };
        let (joined, verdict, detail, policies, policy_set) = match self.desk.gate() {
            Ok(gate) => {
                let d = gate.decide(&request);
                let mut detail = d.verdict.detail();
                if !d.errors.is_empty() {
                    detail = format!("{detail} (errors: {})", d.errors.join("; "));
                }
                let joined = match &d.verdict {
                    Verdict::Allow | Verdict::AllowWithConditions { .. } => Some(name.to_owned()),
                    Verdict::RequireApproval { .. } => {
                        detail = format!(
                            "{detail}; nobody approves at a container's start, so it gets no network"
                        );
                        None
                    }
                    Verdict::Deny { .. } => None,
                };
                (
                    joined,
                    d.verdict.name().to_owned(),
                    detail,
                    d.policies,
                    gate.hash(),
                )
            }
            Err(e) => (
                None,
                "deny".to_owned(),
                format!("{e:#}"),
                Vec::new(),
                String::new(),
            ),
        };
        let fact = stele_journal::EventBody::PolicyDecided {
            run: Some(task.to_owned()),
            point: request.point.name().to_owned(),
            request: request.canonical_json(),
            verdict,
            detail,
            policies,
            policy_set,
        };
        (joined, fact)
    }

    /// Why a request for a slot of `agent` is refused before it is
    /// decided: one already waits for that agent, or too many wait.
    fn refuse_request(&self, agent: &str) -> Option<RuntimeRejection> {
        if self.leases.contains_key(agent) {
            let task = self
                .state
                .execution
                .agents
                .get(agent)
                .and_then(|a| a.active_task.clone())
                .unwrap_or_else(|| "a queued request".into());
            return Some(RuntimeRejection::Busy {
                agent: agent.to_owned(),
                task,
            });
        }
        (self.leases.len() >= MAX_WAITING_REQUESTS).then_some(RuntimeRejection::TooManyRequests {
            limit: MAX_WAITING_REQUESTS,
        })
    }

    /// Hands a placed requested task to the request waiting for it (the
    /// desk drives its run while the task holds the slot, and reports the
    /// end, which comes back as the task's exit like a reasoning task's).
    fn spawn_requested(&mut self, task: String, def: &AgentDefinition) {
        // Its trigger was kept by the fold like any reasoning task's; a
        // requested task's run takes its input from the request instead.
        self.triggers.remove(&task);
        let Some(waiter) = self.leases.remove(&def.name) else {
            if self
                .state
                .execution
                .live
                .get(&task)
                .is_some_and(|t| t.attempts > 0)
            {
                self.end_done_request(task);
            } else {
                self.internal.push_back(RuntimeCommand::SpawnFailed {
                    task,
                    error: "the request that queued it is gone (it was withdrawn, or queued before requests were journaled with what they ask)"
                        .into(),
                });
            }
            return;
        };
        let cancel = crate::up_runs::cancel_signal();
        let (done, ended) = oneshot::channel();
        let lease = Lease {
            task: task.clone(),
            cancel: cancel.clone(),
            done,
        };
        if waiter.send(lease).is_err() {
            self.internal.push_back(RuntimeCommand::SpawnFailed {
                task,
                error: "the request that queued it was withdrawn".into(),
            });
            return;
        }
        self.reasoning.insert(task.clone(), cancel.clone());
        // No process of its own: a restart never reaps it.
        self.internal.push_back(RuntimeCommand::ProcessStarted {
            task: task.clone(),
            pid: std::process::id(),
            start_ticks: 0,
            confinement: IN_PROCESS.into(),
        });
        let (tx, timeout) = (self.tx.clone(), def.limits.execution_timeout);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let watchdog = Watchdog::arm(started, &cancel, timeout, &task);
            let end = ended
                .await
                .unwrap_or_else(|_| TaskEnd::Failed("the request's drive ended without a report".into()));
            let exit = watchdog.exit(&end);
            let _ = tx.send(Input::Exited(task, exit));
        });
    }

    /// Takes the lease of every requested task still queued from before
    /// this start that was never placed (no process started for it), and
    /// hands it to the desk with what its `TaskRequested` asks: the desk
    /// does it when the task is placed, with nobody waiting on it. A task
    /// without a `TaskRequested` (queued by an older stele) is not taken;
    /// its placement fails it, saying so.
    fn adopt_requests(&mut self) -> Result<()> {
        let waiting: Vec<(String, String)> = self
            .state
            .execution
            .live
            .iter()
            .filter(|(task, live)| {
                live.requested
                    && live.attempts == 0
                    && matches!(
                        self.state.scheduler.tasks.get(task.as_str()).map(|t| t.state),
                        Some(TaskState::Queued)
                    )
            })
            .map(|(task, live)| (task.clone(), live.agent.clone()))
            .collect();
        for (task, agent) in waiting {
            // A task's facts are indexed under it: read only its own.
            let id = stele_journal::RunId::new(task.clone())?;
            let mut asked = None;
            for e in self.reader.run(&id, Seq(1)) {
                let e = e.with_context(|| format!("reading the facts of {task}"))?;
                if matches!(e.body(), stele_journal::ArchivedEventBody::TaskRequested { .. })
                    && let stele_journal::EventBody::TaskRequested { request, .. } = e
                        .to_event()
                        .with_context(|| format!("decoding event {}", e.seq().0))?
                        .body
                {
                    asked = Some(*request);
                    break;
                }
            }
            let Some(request) = asked else {
                continue;
            };
            let (lease, placed) = oneshot::channel();
            self.leases.insert(agent.clone(), lease);
            eprintln!(
                "stele up: {task} (queued before this start) will {} when placed",
                stele_engine::runtime::request_words(&request)
            );
            self.desk.adopt(task, agent, request, placed);
        }
        Ok(())
    }

    /// Ends a requested task placed again after its earlier placement was
    /// stopped by a preemption (before a restart, or since): the request was
    /// acted on then — its run ended as that placement's exit says — and a
    /// request is done once, so the task ends `cancelled` at once, its exit
    /// saying why.
    fn end_done_request(&mut self, task: String) {
        let earlier = stele_journal::RunId::new(task.clone())
            .ok()
            .and_then(|id| {
                self.reader
                    .run(&id, Seq(1))
                    .filter_map(Result::ok)
                    .filter_map(|e| match e.body() {
                        stele_journal::ArchivedEventBody::ProcessExited { exit, .. } => {
                            let out = if exit.stdout.is_empty() {
                                &exit.stderr
                            } else {
                                &exit.stdout
                            };
                            Some(out.to_string())
                        }
                        _ => None,
                    })
                    .last()
            })
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| "its drive was stopped".into());
        self.internal.push_back(RuntimeCommand::ProcessStarted {
            task: task.clone(),
            pid: std::process::id(),
            start_ticks: 0,
            confinement: IN_PROCESS.into(),
        });
        let exit = ProcessExit {
            code: Some(0),
            stopped: true,
            stdout: stele_engine::orga::bounded(
                &format!(
                    "{task}: its request was acted on by an earlier placement, stopped when the task was preempted ({earlier}); a request is done once, so the task ends here"
                ),
                1000,
            ),
            ..ProcessExit::default()
        };
        let _ = self.tx.send(Input::Exited(task, exit));
    }

    fn spawn_reasoning(&mut self, task: String, def: AgentDefinition) {
        let agent = def.name.clone();
        let trigger = self.trigger_of(&task);
        let input = crate::up_runs::trigger_input(&self.journal, &agent, &task, trigger.as_deref());
        let cancel = crate::up_runs::cancel_signal();
        self.reasoning.insert(task.clone(), cancel.clone());
        let (desk, tx, timeout) = (self.desk.clone(), self.tx.clone(), def.limits.execution_timeout);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let (run, handle) = match desk.start(def, input, cancel.clone(), true).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Input::SpawnFailed(task, format!("{e:#}")));
                    return;
                }
            };
            let _ = tx.send(Input::Command(
                RuntimeCommand::ProcessStarted {
                    task: task.clone(),
                    pid: std::process::id(),
                    // No process of its own: a restart never reaps it.
                    start_ticks: 0,
                    confinement: IN_PROCESS.into(),
                },
                None,
            ));
            let watchdog = Watchdog::arm(started, &cancel, timeout, &run);
            let end = match handle.await {
                Ok(Ok(s)) => TaskEnd::Settled(s),
                Ok(Err(e)) => TaskEnd::Failed(format!("{e:#}")),
                Err(e) => TaskEnd::Failed(format!("the run's task failed: {e}")),
            };
            let exit = watchdog.exit(&end);
            let _ = tx.send(Input::Exited(task, exit));
        });
    }

    /// What queued `task`: seen by the fold, or (queued before a restart)
    /// its `TaskQueued` on the scheduler's stream.
    fn trigger_of(&mut self, task: &str) -> Option<String> {
        if let Some(t) = self.triggers.remove(task) {
            return Some(t);
        }
        let stream = stele_engine::scheduler::scheduler_stream();
        self.reader
            .stream(&stream, Seq(1))
            .filter_map(Result::ok)
            .find_map(|e| match e.body() {
                stele_journal::ArchivedEventBody::TaskQueued { task: t, trigger, .. }
                    if t.as_str() == task =>
                {
                    Some(trigger.to_string())
                }
                _ => None,
            })
    }

    fn begin_shutdown(&mut self, force: bool) {
        if let Some(forced) = &self.shutdown {
            if force {
                forced.store(true, Ordering::SeqCst);
                self.kill_all();
            }
            return;
        }
        let forced = Arc::new(AtomicBool::new(force));
        self.shutdown = Some(Arc::clone(&forced));
        // Runs driven outside the scheduler end with the daemon (journaled
        // `cancelled`); parked runs stay parked.
        self.desk.close("the runtime is shutting down");
        let tx = self.tx.clone();
        let grace = self.config.runtime.stop_grace;
        let journal = self.journal.clone();
        tokio::spawn(async move {
            if let Err(e) = shutdown_sequence(&tx, &journal, grace, &forced).await {
                eprintln!("stele up: shutdown: {e:#}");
            }
            let _ = tx.send(Input::Exit);
        });
    }

    fn kill_all(&self) -> Vec<String> {
        let mut killed = Vec::new();
        for (task, p) in &self.procs {
            if p.kill() {
                killed.push(task.clone());
            }
        }
        for (task, cancel) in &self.reasoning {
            cancel.send_replace(Some("the runtime was forced to stop".into()));
            killed.push(task.clone());
        }
        self.desk.cancel_detached("the runtime was forced to stop");
        killed.sort();
        killed
    }

    fn query(&self, q: Query) -> Value {
        match q {
            Query::Status => self.status(),
            Query::Agents => self.agents(),
            Query::LiveProcesses => json!(self.procs.len() + self.reasoning.len() + self.desk.detached()),
            Query::KillAll => json!(self.kill_all()),
        }
    }

    fn status(&self) -> Value {
        let s = &self.state;
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for a in s.registry.agents.values() {
            *by_state.entry(a.state.name()).or_default() += 1;
        }
        let host = s.host();
        let slots: Vec<Value> = host
            .map(|h| {
                h.slots
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let used = u32::try_from(i).ok().and_then(|i| s.scheduler.slots.get(&i));
                        json!({
                            "slot": i,
                            "memory_mb": c.memory_mb,
                            "cpu_millis": c.cpu_millis,
                            "used_memory_mb": used.map_or(0, |u| u.memory_mb),
                            "used_cpu_millis": used.map_or(0, |u| u.cpu_millis),
                            "tasks": used.map(|u| u.tasks.iter().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut queued = 0;
        let mut running = Vec::new();
        for (task, live) in &s.execution.live {
            match s.scheduler.tasks.get(task).map(|t| t.state) {
                Some(TaskState::Queued) => queued += 1,
                Some(TaskState::Running { slot }) => running.push(json!({
                    "task": task, "agent": live.agent, "slot": slot, "pid": live.pid,
                    "rss_kb": live.rss_kb, "cpu_ms": live.cpu_ms,
                })),
                _ => {}
            }
        }
        json!({
            "running": true,
            "pid": std::process::id(),
            "data": self.data.display().to_string(),
            "head": self.applied.0,
            "events_this_run": self.applied.0 - self.started_at_seq.0,
            "confinement": self.confinement.describe(),
            "placement": s.execution.host.as_ref().map(|h| h.placement.clone()),
            "shutting_down": s.execution.admission_closed,
            "shutdown_step": s.execution.shutdown_step,
            "agents": by_state,
            "tasks": {"queued": queued, "running": running.len()},
            "running_tasks": running,
            "slots": slots,
            "nats": self.nats.as_ref().map(|s| s.to_json()),
        })
    }

    fn agents(&self) -> Value {
        let s = &self.state;
        let list: Vec<Value> = s
            .registry
            .agents
            .iter()
            .map(|(name, a)| {
                let def = s.definition(name);
                let runs = s.execution.agents.get(name);
                json!({
                    "name": name,
                    "state": a.state.name(),
                    "priority": def.map(|d| format!("{:?}", d.priority).to_lowercase()),
                    "mode": def.map(|d| mode_name(&d.mode)),
                    "active_task": runs.and_then(|r| r.active_task.clone()),
                    "runs": runs.map_or(0, |r| r.runs),
                    "last_exit": runs.and_then(|r| r.last_exit.clone()),
                    "registered_seq": a.registered_seq,
                    "changed_seq": a.changed_seq,
                    "last_reason": a.last_reason,
                })
            })
            .collect();
        Value::Array(list)
    }
}

/// A drive's execution timeout: fires the drive's stop signal when it runs
/// past `timeout`, and turns the drive's end into its task's exit.
struct Watchdog {
    started: tokio::time::Instant,
    cancel: Cancel,
    timed_out: Arc<AtomicBool>,
    timer: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    /// Arms the timer for `who` (a task or run), started at `started`.
    fn arm(started: tokio::time::Instant, cancel: &Cancel, timeout: Duration, who: &str) -> Watchdog {
        let timed_out = Arc::new(AtomicBool::new(false));
        let timer = {
            let (cancel, timed_out, who) = (cancel.clone(), Arc::clone(&timed_out), who.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                timed_out.store(true, Ordering::SeqCst);
                cancel.send_replace(Some(format!(
                    "{who} ran past its execution_timeout of {}",
                    humantime::format_duration(timeout)
                )));
            })
        };
        Watchdog {
            started,
            cancel: cancel.clone(),
            timed_out,
            timer,
        }
    }

    /// Disarms the timer; the exit of a drive that ended with `end`.
    fn exit(self, end: &TaskEnd) -> ProcessExit {
        self.timer.abort();
        let timed_out = self.timed_out.load(Ordering::SeqCst);
        let asked = self.cancel.borrow().is_some();
        let wall_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        reasoning_exit(end, asked && !timed_out, timed_out, wall_ms)
    }
}

/// The exit a reasoning task reports: code 0 when its run completed or
/// parked on an approval, 1 otherwise; the run's summary as its output.
fn reasoning_exit(end: &TaskEnd, stopped: bool, timed_out: bool, wall_ms: u64) -> ProcessExit {
    let (code, stdout, stderr) = match end {
        TaskEnd::Settled(s) => {
            let ok = s.outcome == "completed" || !s.awaiting.is_empty();
            (i32::from(!ok), s.summary(), String::new())
        }
        TaskEnd::Failed(e) => (1, String::new(), e.clone()),
    };
    ProcessExit {
        code: Some(code),
        signal: None,
        timed_out,
        stopped,
        stdout,
        stderr,
        output_dropped: 0,
        wall_ms,
        cpu_ms: 0,
        max_rss_kb: 0,
    }
}

/// A task's health probe loop (see `stele_engine::agent::HealthCheck`):
/// a native task's probe is a confined process on the host; a container's
/// runs inside the container (a Docker exec), where its task's files,
/// processes and network are.
#[derive(Clone)]
struct Probe {
    check: stele_engine::agent::HealthCheck,
    task: String,
    launcher: Launcher,
    confinement: Confinement,
    host: DockerHost,
    /// The task's container (container tiers).
    container: Option<String>,
    tx: mpsc::UnboundedSender<Input>,
}

impl Probe {
    /// Probes every interval until aborted (when the task's process exits).
    async fn run(self) {
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.check.interval,
            self.check.interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (ok, detail) = self.once().await;
            let command = RuntimeCommand::HealthProbe {
                task: self.task.clone(),
                ok,
                detail,
            };
            if self.tx.send(Input::Command(command, None)).is_err() {
                return;
            }
        }
    }

    async fn once(&self) -> (bool, String) {
        if let Some(container) = &self.container {
            let command: Vec<String> = std::iter::once(self.check.command.display().to_string())
                .chain(self.check.args.iter().cloned())
                .collect();
            return match stele_engine::sandbox::exec_in(
                &self.host,
                container,
                command,
                self.check.timeout,
                256,
            )
            .await
            {
                Err(e) => (false, format!("probe cannot run in the container: {e}")),
                Ok(r) => {
                    let status = match r.code {
                        None if r.still_running => format!(
                            "timed out after {} in the container and is still running there \
                             (its image's `timeout` did not end it)",
                            humantime::format_duration(self.check.timeout)
                        ),
                        None => format!(
                            "timed out after {} in the container (killed there at the deadline)",
                            humantime::format_duration(self.check.timeout)
                        ),
                        Some(c) => format!("exited with code {c} in the container"),
                    };
                    let output = r.output.trim();
                    let detail = if output.is_empty() {
                        status
                    } else {
                        format!("{status}: {output}")
                    };
                    (r.code == Some(0), detail)
                }
            };
        }
        let spec = ProcessSpec {
            task: format!("{}-probe", self.task),
            command: self.check.command.display().to_string(),
            args: self.check.args.clone(),
            env: BTreeMap::new(),
            workdir: None,
            memory_mb: 64,
            cpu_cores: 0.1,
            timeout: self.check.timeout,
            output_limit: 256,
            sample_every: self.check.timeout + Duration::from_secs(1),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Err(e) = process::spawn(spec, &self.launcher, &self.confinement, tx) {
            return (false, format!("probe cannot start: {e}"));
        }
        while let Some(ev) = rx.recv().await {
            if let ProcessEvent::Exited(r) = ev {
                let output = format!("{}{}", r.stdout.trim(), r.stderr.trim());
                let detail = if output.is_empty() {
                    r.summary()
                } else {
                    format!("{}: {output}", r.summary())
                };
                return (r.success(), detail);
            }
        }
        (false, "the probe ended without a report".into())
    }
}

pub fn mode_name(m: &ExecutionMode) -> String {
    match m {
        ExecutionMode::Ephemeral => "ephemeral".into(),
        ExecutionMode::Persistent => "persistent".into(),
        ExecutionMode::Scheduled { interval } => {
            format!("scheduled every {}", humantime::format_duration(*interval))
        }
        ExecutionMode::EventDriven { .. } => "event-driven".into(),
    }
}

async fn ask(tx: &mpsc::UnboundedSender<Input>, q: Query) -> Result<Value> {
    let (reply, answer) = oneshot::channel();
    tx.send(Input::Query(q, reply))
        .map_err(|_| anyhow::anyhow!("the runtime core stopped"))?;
    answer.await.context("the runtime core stopped")
}

async fn command(tx: &mpsc::UnboundedSender<Input>, c: RuntimeCommand) -> Result<Vec<Receipt>> {
    let (reply, answer) = oneshot::channel();
    tx.send(Input::Command(c, Some(reply)))
        .map_err(|_| anyhow::anyhow!("the runtime core stopped"))?;
    Ok(answer.await.context("the runtime core stopped")??)
}

/// The six steps, each recorded by the core as a `ShutdownStep`.
async fn shutdown_sequence(
    tx: &mpsc::UnboundedSender<Input>,
    journal: &Journal,
    grace: Duration,
    forced: &AtomicBool,
) -> Result<()> {
    let step = |n: u32, detail: String| RuntimeCommand::Shutdown { step: n, detail };
    command(tx, step(1, String::new())).await?;
    command(
        tx,
        step(2, format!("grace {}", humantime::format_duration(grace))),
    )
    .await?;
    // Step 3: wait for the processes to end within the grace; kill the rest.
    let deadline = tokio::time::Instant::now() + grace;
    let mut killed: Vec<String> = Vec::new();
    loop {
        let live = ask(tx, Query::LiveProcesses).await?.as_u64().unwrap_or(0);
        if live == 0 {
            break;
        }
        if (forced.load(Ordering::SeqCst) || tokio::time::Instant::now() >= deadline)
            && let Value::Array(k) = ask(tx, Query::KillAll).await?
        {
            killed.extend(k.into_iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.sort();
    killed.dedup();
    let three = if killed.is_empty() {
        "every process ended within the grace".to_owned()
    } else {
        format!("killed (SIGKILL): {}", killed.join(", "))
    };
    command(tx, step(3, three)).await?;
    journal.sync().await.context("flushing the journal")?;
    let head = journal.reader().head();
    command(tx, step(4, format!("journal synced through seq {}", head.seq.0))).await?;
    command(
        tx,
        step(5, "process cgroups and pipes closed by their runners".into()),
    )
    .await?;
    command(tx, step(6, String::new())).await?;
    Ok(())
}

// ---- what the HTTP API (crate::http) asks of the core ----

/// The core's handle for the HTTP API.
#[derive(Clone, Debug)]
pub struct Handle(mpsc::UnboundedSender<Input>);

impl Handle {
    /// The status answer (`stele status --json`).
    pub async fn status(&self) -> Result<Value> {
        ask(&self.0, Query::Status).await
    }

    /// Every agent with its state.
    pub async fn agents(&self) -> Result<Value> {
        ask(&self.0, Query::Agents).await
    }

    /// Decides and appends one command; the outer error is the core gone.
    pub async fn command(&self, c: RuntimeCommand) -> Result<Result<Vec<Receipt>, RuntimeRejection>> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Input::Command(c, Some(reply)))
            .map_err(|_| anyhow::anyhow!("the runtime core stopped"))?;
        answer.await.context("the runtime core stopped")
    }

    /// Queues a task of `agent` for a request (journaled as data in its
    /// `TaskRequested`, in words in its `TaskQueued` trigger); once both
    /// are durable the answer holds where its [`Lease`] comes when it is
    /// placed (an error there: it ended unplaced). The outer error is the
    /// core gone.
    pub(crate) async fn request(
        &self,
        agent: &str,
        request: TaskRequest,
    ) -> Result<Result<oneshot::Receiver<Lease>, RuntimeRejection>> {
        let (reply, answer) = oneshot::channel();
        let (lease, placed) = oneshot::channel();
        self.0
            .send(Input::Request {
                agent: agent.to_owned(),
                request,
                lease,
                reply,
            })
            .map_err(|_| anyhow::anyhow!("the runtime core stopped"))?;
        Ok(answer.await.context("the runtime core stopped")?.map(|_| placed))
    }

    /// Begins the graceful shutdown.
    pub fn shutdown(&self) -> Result<()> {
        self.0
            .send(Input::Shutdown { force: false })
            .map_err(|_| anyhow::anyhow!("the runtime core stopped"))
    }
}
