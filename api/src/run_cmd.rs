//! `stele run`, `stele approve`, `stele reject`, `stele runs`: reasoning
//! runs driven in this process (which owns the journal while it runs).
//! The loop, the gate and the tools are `stele_engine`'s; this file wires
//! them to the journal and prints. Every command that touches a parked run
//! first resolves its approvals whose policy timeout has passed, as
//! rejected by the timeout (approver `expired`), and lets the run go on.
//!
//! When `stele up` runs (it owns the journal), `stele run|approve|reject`
//! go through its HTTP API instead (`crate::up_runs` drives the run there)
//! and follow the run until it settles, printing the same output with the
//! same exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use stele_engine::agent::AgentDefinition;
use stele_engine::breaker::BreakerConfig;
use stele_engine::bus::BusTools;
use stele_engine::bus::service::Bus;
use stele_engine::config::{InferenceConfig, ProviderKind, SandboxTier};
use stele_engine::hydrate;
use stele_engine::llm::Provider;
use stele_engine::openai::OpenAiProvider;
use stele_engine::orga::{AgentLoop, Reasoning, RunSpec};
use stele_engine::policy::{LiveGate, PolicyGate};
use stele_engine::reasoning::{self, Driver, JournalSink, Resumed, Sink, Stop};
use stele_engine::sandbox::{ContainerExecutor, DockerHost};
use stele_engine::scripted::ScriptedProvider;
use stele_engine::tools::{CallContext, CommandSandbox, SandboxJournal, ToolBox};
use stele_engine::{LifecycleCommand, Runs, agent_stream};
use stele_journal::{Append, EventRef, Journal, RunId, Seq, StreamId};
use stele_projections::{AgentRegistry, RunsView, SnapshotStore, state_at};

use crate::client::Daemon;
use crate::journal_cmd::{open_reader, open_writer, runtime};

/// Exit code of a run that waits for an approval.
pub const PARKED: u8 = 3;

fn provider(cfg: &InferenceConfig, def: &AgentDefinition) -> Result<Arc<dyn Provider>> {
    Ok(match cfg.provider {
        ProviderKind::Scripted => {
            let script = match &def.runs {
                Runs::Reasoning { script: Some(s), .. } => s.clone(),
                _ => cfg.script.clone(),
            };
            Arc::new(ScriptedProvider::load(&script)?)
        }
        ProviderKind::Openai => Arc::new(OpenAiProvider::from_config(cfg)?),
    })
}

/// The Cedar policy set in `policies`, compiled.
pub(crate) fn load_gate(policies: &Path) -> Result<Arc<PolicyGate>> {
    Ok(Arc::new(PolicyGate::load(policies).with_context(|| {
        format!("loading the policies in {}", policies.display())
    })?))
}

/// The driver of an agent's runs, and its tools (for hydration and
/// compensations outside a drive).
pub(crate) fn driver(
    def: &AgentDefinition,
    policies: &Path,
    journal: &Journal,
) -> Result<(Driver, Arc<ToolBox>)> {
    driver_with(def, load_gate(policies)?.into(), journal)
}

/// [`driver`] with a policy gate already loaded (the daemon's). The agent's
/// `run_command` runs in its sandbox tier (`[runs] tier`, else `[security]
/// default_sandbox_tier`); its containers carry `journal`'s owner label.
pub(crate) fn driver_with(
    def: &AgentDefinition,
    gate: LiveGate,
    journal: &Journal,
) -> Result<(Driver, Arc<ToolBox>)> {
    let cfg = &crate::cli::config().inference;
    let Runs::Reasoning { workspace, .. } = &def.runs else {
        bail!(
            "agent {} does not run a reasoning loop (its [runs] kind is not \"reasoning\")",
            def.name
        );
    };
    std::fs::create_dir_all(workspace)
        .with_context(|| format!("creating workspace {}", workspace.display()))?;
    let workspace = workspace
        .canonicalize()
        .with_context(|| format!("workspace {}", workspace.display()))?;
    let tier = def.tier(crate::cli::config().security.default_sandbox_tier);
    let sandbox = match tier {
        SandboxTier::Native => CommandSandbox::Native,
        SandboxTier::Docker | SandboxTier::Gvisor => CommandSandbox::Container {
            executor: ContainerExecutor::new(DockerHost::from_env(), tier),
            image: match &def.runs {
                Runs::Reasoning { image, .. } => image.clone(),
                _ => None,
            },
            owner: crate::sandbox_cmd::journal_owner(journal)?,
            agent: def.name.clone(),
            // A call's container facts go to its run's stream, caused by
            // the call's `ToolCalled`.
            journal: {
                let journal = journal.clone();
                SandboxJournal::new(move |ctx: &CallContext, body| {
                    let journal = journal.clone();
                    let stream = StreamId::new(format!("run:{}", ctx.run));
                    let cause = ctx.cause;
                    async move {
                        let stream = stream.map_err(|e| e.to_string())?;
                        journal
                            .append(Append { stream, cause, body })
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                })
            },
        },
    };
    let tools = Arc::new(ToolBox {
        workspace,
        memory_mb: def.limits.memory_mb,
        cpu_cores: def.limits.cpu_cores,
        timeout: def.limits.execution_timeout,
        launcher: stele_engine::process::Launcher::current().context("finding the stele binary")?,
        confinement: stele_engine::process::detect_confinement(),
        sandbox,
    });
    let driver = Driver {
        provider: provider(cfg, def)?,
        gate,
        tools: tools.clone(),
        agent: def.name.clone(),
        priority: format!("{:?}", def.priority).to_lowercase(),
        knowledge: None,
    };
    Ok((driver, tools))
}

pub(crate) fn spec(def: &AgentDefinition, run: &str) -> Result<RunSpec> {
    let config = crate::cli::config();
    let cfg = &config.inference;
    let mut spec = reasoning::spec_for(def, run, &cfg.model, cfg.max_tokens).map_err(anyhow::Error::msg)?;
    spec.max_attempts = cfg.max_retries + 1;
    spec.breakers = BreakerConfig::from(&config.tools);
    Ok(spec)
}

/// The registered definition of `agent`, registering `file` first when given.
pub(crate) fn definition(data: &Path, journal: &Journal, agent: &str) -> Result<AgentDefinition> {
    let path = PathBuf::from(agent);
    let source = if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Some((path, text))
    } else {
        None
    };
    let source = source.as_ref().map(|(p, t)| (p.as_path(), t.as_str()));
    runtime()?.block_on(definition_async(data, journal, agent, source))
}

/// The definition of a run's agent: parsed from `source` (a file's path
/// and text, registered first unless the same text is registered), or the
/// one registered as `agent`.
pub(crate) async fn definition_async(
    data: &Path,
    journal: &Journal,
    agent: &str,
    source: Option<(&Path, &str)>,
) -> Result<AgentDefinition> {
    let reader = journal.reader();
    let registry = state_at::<AgentRegistry>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    if let Some((path, source)) = source {
        let def = AgentDefinition::parse(path, source)?;
        let hash = hex::encode(blake3::hash(source.as_bytes()).as_bytes());
        match registry.agents.get(&def.name) {
            Some(a) if a.definition_hash == hash && a.state != stele_journal::AgentState::Terminated => {}
            _ => {
                let facts = stele_engine::decide(
                    &registry,
                    LifecycleCommand::Register {
                        definition: Box::new(def.clone()),
                        source: source.to_owned(),
                    },
                )?;
                let stream = agent_stream(&def.name);
                let appends = facts
                    .into_iter()
                    .map(|body| Append {
                        stream: stream.clone(),
                        cause: None,
                        body,
                    })
                    .collect();
                journal.append_many(appends).await?;
            }
        }
        return Ok(def);
    }
    let entry = registry.agents.get(agent).with_context(|| {
        format!("no agent named {agent} is registered (give its .toml file to register it)")
    })?;
    AgentDefinition::parse(Path::new(&format!("(registered {agent})")), &entry.definition).map_err(Into::into)
}

pub(crate) fn report(stop: &Stop, json: bool) -> ExitCode {
    match stop {
        Stop::Finished(f) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"run": f.run, "outcome": f.outcome, "answer": f.answer, "steps": f.steps})
                );
            } else {
                println!("{} {} after {} steps", f.run, f.outcome, f.steps);
                println!("{}", f.answer);
                println!("(the whole run: stele events --run {})", f.run);
            }
            if f.outcome == "completed" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Stop::Parked(p) => {
            let waiting = p.awaiting();
            if json {
                let calls: Vec<_> = waiting
                    .iter()
                    .map(|(c, r)| serde_json::json!({"call": c, "reason": r}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"run": p.run(), "outcome": "awaiting_approval", "awaiting": calls})
                );
            } else {
                for (call, reason) in &waiting {
                    println!("{} awaits approval of {call}: {reason}", p.run());
                    println!(
                        "  stele approve {} {call}    or    stele reject {} {call}",
                        p.run(),
                        p.run()
                    );
                }
            }
            ExitCode::from(PARKED)
        }
    }
}

/// A run's tools: what the model is offered (`spec.tools`) and what
/// performs each call (`driver.tools`), layered in one order for every
/// path that starts or continues a run, so a run continued after an
/// approval (or a restart) is offered exactly what it was offered before
/// it parked.
pub(crate) struct Stack {
    /// The driver, its tools layered.
    pub driver: Driver,
    /// The run's spec, every offered tool in it.
    pub spec: RunSpec,
    /// The built-in tools (hydration, compensations outside a drive).
    pub tools: Arc<ToolBox>,
    /// The knowledge bridge (stores what the run learned).
    pub knowledge: crate::context_cmd::Bridge,
}

/// Assembles the tools of run `run` of `def`, each layer filtered by the
/// agent's tool profile (`[runs] tools`): the built-in tools, then its MCP
/// servers' tools (`[mcp] servers`; discovered, verified, journaled), then
/// the bus builtins (`send_to`, `ask`, `delegate`, `parallel`, `race`) when
/// `bus` is given — the bus runs only when `[bus] policies` is set — and
/// the knowledge tools in front.
///
/// # Errors
/// The agent is not a reasoning agent, its provider, workspace, MCP hub or
/// context service cannot be set up.
pub(crate) async fn stack(
    journal: &Journal,
    def: &AgentDefinition,
    run: &str,
    gate: LiveGate,
    policies: &Path,
    bus: Option<&Bus>,
) -> Result<Stack> {
    let (driver, tools) = driver_with(def, gate, journal)?;
    let spec = spec(def, run)?;
    // MCP tools of the agent's profile (discovered, SchemaPin-verified, journaled).
    let (mut driver, mut spec) = crate::mcp_cmd::bridge(journal, def, driver, spec).await?;
    // The bus builtins, when the bus runs.
    if let Some(bus) = bus {
        let patterns = profile(def);
        let offered: Vec<_> = stele_engine::bus::builtins::specs()
            .into_iter()
            .filter(|t| {
                patterns
                    .iter()
                    .any(|p| stele_engine::tools::glob_match(p, &t.name))
            })
            .collect();
        if !offered.is_empty() {
            spec.tools.extend(offered);
            driver.tools = Arc::new(BusTools {
                bus: bus.clone(),
                agent: def.name.clone(),
                run: run.to_owned(),
                inner: driver.tools.clone(),
            });
        }
    }
    // The knowledge bridge (recall_knowledge / store_knowledge, learnings).
    let (driver, spec, knowledge) = crate::context_cmd::bridge(journal, policies, def, run, driver, spec)?;
    Ok(Stack {
        driver,
        spec,
        tools,
        knowledge,
    })
}

/// The agent's tool profile (`[runs] tools`; empty offers every tool).
fn profile(def: &AgentDefinition) -> Vec<String> {
    match &def.runs {
        Runs::Reasoning { tools, .. } if !tools.is_empty() => tools.clone(),
        _ => vec!["*".to_owned()],
    }
}

/// The bus a run driven in this process sends through: started over
/// `journal` when `[bus] policies` is set (the builtins are then offered),
/// none otherwise.
///
/// # Errors
/// The bus's policies do not load, or the bus cannot start.
pub(crate) async fn local_bus(data: &Path, journal: &Journal) -> Result<Option<Bus>> {
    let config = &crate::cli::config().bus;
    let Some(policies) = &config.policies else {
        return Ok(None);
    };
    let gate = PolicyGate::load(policies)
        .with_context(|| format!("[bus] policies: loading {}", policies.display()))?;
    // The bus task ends when the last handle (the run's) is dropped.
    let (bus, _task) = Bus::start(journal.clone(), data, Arc::new(gate), config.clone()).await?;
    Ok(Some(bus))
}

/// A run whose `RunStarted` (and pre-hydration) is durable, ready to drive.
pub(crate) struct Begun {
    /// The run id.
    pub run: String,
    /// Its driver (with the knowledge tools in front of the agent's).
    pub driver: Driver,
    /// The loop, in its reasoning phase.
    pub lp: AgentLoop<Reasoning>,
    /// What stores the run's learnings when it finishes.
    pub knowledge: crate::context_cmd::Bridge,
    /// The input.
    pub input: String,
}

/// Begins run `run-<n>` of `def` on `journal`: the task's references are
/// pre-hydrated and `RunStarted` is journaled (so the next run id is taken
/// once this returns; callers that may begin runs concurrently serialize
/// calls to it).
pub(crate) async fn begin(
    data: &Path,
    journal: &Journal,
    def: &AgentDefinition,
    input: &str,
    gate: LiveGate,
    policies: &Path,
    bus: Option<&Bus>,
) -> Result<Begun> {
    let reader = journal.reader();
    let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let run_id = runs.next_run();
    let Stack {
        driver,
        spec,
        tools,
        knowledge,
    } = stack(journal, def, &run_id, gate, policies, bus).await?;
    let mut hydration = hydrate::hydrate(
        &driver.gate.current(),
        &tools,
        &run_id,
        &driver.agent,
        &driver.priority,
        input,
    )
    .await;
    // The agent's knowledge relevant to the task, before the first step.
    if let Some(fact) = crate::context_cmd::recalled(&knowledge, &run_id, input, now_ms()).await {
        hydration.push(fact);
    }
    let mut lp = AgentLoop::start_hydrated(spec, input.to_owned(), None, hydration);
    let mut sink = JournalSink::new(journal, &run_id)?;
    sink.record(lp.take_facts())
        .await
        .map_err(|e| anyhow::anyhow!("{run_id}: {e}"))?;
    Ok(Begun {
        run: run_id,
        driver,
        lp,
        knowledge,
        input: input.to_owned(),
    })
}

/// Starts run `run-<n>` of `agent` on `journal` and drives it until it
/// finishes or parks: the task's references are pre-hydrated first.
pub(crate) fn start(
    data: &Path,
    journal: &Journal,
    agent: &str,
    input: &str,
    policies: &Path,
) -> Result<Stop> {
    let def = definition(data, journal, agent)?;
    let gate: LiveGate = load_gate(policies)?.into();
    runtime()?.block_on(async {
        let bus = local_bus(data, journal).await?;
        let begun = begin(data, journal, &def, input, gate, policies, bus.as_ref()).await?;
        let mut sink = JournalSink::new(journal, &begun.run)?;
        let stop = begun
            .driver
            .drive(begun.lp, &mut sink)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", begun.run))?;
        crate::context_cmd::learned_async(&begun.knowledge, &stop, &begun.input).await;
        Ok(stop)
    })
}

/// `stele run AGENT --input TEXT`.
/// With `stele up` running the run is the daemon's (see [`run_via`]).
pub fn run(data: &Path, agent: &str, input: &str, policies: &Path, json: bool) -> Result<ExitCode> {
    if let Some(daemon) = Daemon::find(data) {
        return run_via(&daemon, agent, input, json);
    }
    let journal = open_writer(data)?;
    let stop = start(data, &journal, agent, input, policies)?;
    Ok(report(&stop, json))
}

/// `stele run` through a running daemon (`POST /v1/runs`): an agent's
/// `.toml` file is sent as an inline definition (its relative paths are
/// the daemon's), a name as is; then the run is followed until it settles.
fn run_via(daemon: &Daemon, agent: &str, input: &str, json: bool) -> Result<ExitCode> {
    let path = Path::new(agent);
    let body = if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::json!({"definition": text, "input": input})
    } else {
        serde_json::json!({"agent": agent, "input": input})
    };
    let started = daemon
        .post("/v1/runs", "application/json", &body.to_string())?
        .ok()?;
    let run = started["run"]
        .as_str()
        .context("the runtime's answer to POST /v1/runs has no run id")?;
    follow(daemon, run, json)
}

/// How often a client polls a run the daemon drives.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits until the daemon no longer drives `run` (it finished or parked)
/// and reports it as the direct path does, with the same exit codes.
fn follow(daemon: &Daemon, run: &str, json: bool) -> Result<ExitCode> {
    loop {
        let v = daemon.get(&format!("/v1/runs/{run}"))?.ok()?;
        let awaiting = v["awaiting"].as_object().filter(|a| !a.is_empty());
        if !v["driving"].as_bool().unwrap_or(false) && (v["state"] == "finished" || awaiting.is_some()) {
            return Ok(report_view(run, &v, json));
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// [`report`] from the daemon's view of a run (`GET /v1/runs/{id}`).
fn report_view(run: &str, v: &serde_json::Value, json: bool) -> ExitCode {
    let waiting: Vec<(String, String)> = v["awaiting"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(c, r)| (c.clone(), r.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if waiting.is_empty() {
        let outcome = v["outcome"].as_str().unwrap_or("unknown");
        let answer = v["answer"].as_str().unwrap_or_default();
        let steps = v["steps"].as_u64().or_else(|| v["step"].as_u64()).unwrap_or(0);
        if json {
            println!(
                "{}",
                serde_json::json!({"run": run, "outcome": outcome, "answer": answer, "steps": steps})
            );
        } else {
            println!("{run} {outcome} after {steps} steps");
            println!("{answer}");
            println!("(the whole run: stele events --run {run})");
        }
        return if outcome == "completed" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    if json {
        let calls: Vec<_> = waiting
            .iter()
            .map(|(c, r)| serde_json::json!({"call": c, "reason": r}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"run": run, "outcome": "awaiting_approval", "awaiting": calls})
        );
    } else {
        for (call, reason) in &waiting {
            println!("{run} awaits approval of {call}: {reason}");
            println!("  stele approve {run} {call}    or    stele reject {run} {call}");
        }
    }
    ExitCode::from(PARKED)
}

/// The events of run `run`, in seq order.
pub(crate) fn run_events(reader: &stele_journal::Reader, run: &str) -> Result<Vec<EventRef>> {
    Ok(reader
        .run(&RunId::new(run.to_owned())?, Seq(1))
        .collect::<stele_journal::Result<_>>()?)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What resolving a run's timed-out approvals did.
pub(crate) struct Expired {
    /// The calls rejected by the timeout, with the recorded reason.
    pub calls: Vec<(String, String)>,
    /// Where the run stands after.
    pub stop: Stop,
}

/// Resolves the approvals of `run` whose timeout has passed as rejected
/// (approver `expired`); the run goes on as it would after a rejection.
/// `None` when none has expired.
pub(crate) fn expire(data: &Path, journal: &Journal, run: &str, policies: &Path) -> Result<Option<Expired>> {
    let gate: LiveGate = load_gate(policies)?.into();
    // Nothing expired: no bus to start.
    if reasoning::expired_approvals(&run_events(&journal.reader(), run)?, now_ms()).is_empty() {
        return Ok(None);
    }
    runtime()?.block_on(async {
        let bus = local_bus(data, journal).await?;
        expire_async(data, journal, run, gate, policies, bus.as_ref()).await
    })
}

/// [`expire`] on a loaded gate.
pub(crate) async fn expire_async(
    data: &Path,
    journal: &Journal,
    run: &str,
    gate: LiveGate,
    policies: &Path,
    bus: Option<&Bus>,
) -> Result<Option<Expired>> {
    let reader = journal.reader();
    let events = run_events(&reader, run)?;
    let expired = reasoning::expired_approvals(&events, now_ms());
    if expired.is_empty() {
        return Ok(None);
    }
    let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let view = runs
        .runs
        .get(run)
        .with_context(|| format!("no run named {run}"))?;
    let def = definition_async(data, journal, &view.agent, None).await?;
    let Stack {
        driver,
        spec,
        knowledge,
        ..
    } = stack(journal, &def, run, gate, policies, bus).await?;
    let mut parked =
        match reasoning::resume(spec, &events).map_err(|e| anyhow::anyhow!("rebuilding {run}: {e}"))? {
            Resumed::Parked(p) => p,
            _ => bail!("{run} has approvals that timed out but is not parked"),
        };
    let mut sink = JournalSink::new(journal, run)?;
    let mut calls = Vec::new();
    for (call, why) in expired {
        let stop = driver
            .decide(parked, &call, false, "expired", &why, &mut sink)
            .await
            .map_err(|e| anyhow::anyhow!("{run}: {e}"))?;
        calls.push((call, why));
        match stop {
            Stop::Parked(p) => parked = p,
            other => {
                // It went on to its end: what it learned is stored.
                crate::context_cmd::learned_async(&knowledge, &other, &run_input(&events)).await;
                return Ok(Some(Expired { calls, stop: other }));
            }
        }
    }
    Ok(Some(Expired {
        calls,
        stop: Stop::Parked(parked),
    }))
}

/// Decides a call run `run` waits on (after resolving timed-out approvals:
/// deciding an expired one is an error naming the expiry).
#[allow(clippy::too_many_arguments)] // one per CLI argument
pub(crate) fn decide_on(
    data: &Path,
    journal: &Journal,
    run: &str,
    call: &str,
    approved: bool,
    approver: &str,
    reason: &str,
    policies: &Path,
) -> Result<Stop> {
    let gate: LiveGate = load_gate(policies)?.into();
    runtime()?.block_on(async {
        let bus = local_bus(data, journal).await?;
        let Prepared {
            driver,
            parked,
            knowledge,
            input,
        } = prepare_decision(data, journal, run, call, gate, policies, bus.as_ref()).await?;
        let mut sink = JournalSink::new(journal, run)?;
        let stop = driver
            .decide(parked, call, approved, approver, reason, &mut sink)
            .await
            .map_err(|e| anyhow::anyhow!("{run}: {e}"))?;
        crate::context_cmd::learned_async(&knowledge, &stop, &input).await;
        Ok(stop)
    })
}

/// A parked run rebuilt for a decision.
pub(crate) struct Prepared {
    /// Its driver, its tools layered as when it parked.
    pub driver: Driver,
    /// The run, parked.
    pub parked: AgentLoop<stele_engine::orga::AwaitingApproval>,
    /// What stores the run's learnings when it finishes.
    pub knowledge: crate::context_cmd::Bridge,
    /// Its input.
    pub input: String,
}

/// A run's input, as its `RunStarted` (its first event) journaled it.
pub(crate) fn run_input(events: &[EventRef]) -> String {
    match events.first().map(EventRef::body) {
        Some(stele_journal::ArchivedEventBody::RunStarted { input, .. }) => input.to_string(),
        _ => String::new(),
    }
}

/// Checks that `run` is parked on `call` (after resolving its timed-out
/// approvals) and rebuilds it from its journaled facts, with its driver.
pub(crate) async fn prepare_decision(
    data: &Path,
    journal: &Journal,
    run: &str,
    call: &str,
    gate: LiveGate,
    policies: &Path,
    bus: Option<&Bus>,
) -> Result<Prepared> {
    if let Some(expired) = expire_async(data, journal, run, gate.clone(), policies, bus).await?
        && let Some((_, why)) = expired.calls.iter().find(|(c, _)| c == call)
    {
        bail!("the approval of {call} in {run} has expired: {why}; the run went on without it");
    }
    let reader = journal.reader();
    let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let view = runs
        .runs
        .get(run)
        .with_context(|| format!("no run named {run}"))?;
    if !view.awaiting.contains_key(call) {
        let waiting: Vec<&String> = view.awaiting.keys().collect();
        bail!(
            "{run} is {} and has no call {call} awaiting approval (awaiting: {waiting:?})",
            view.state
        );
    }
    let def = definition_async(data, journal, &view.agent, None).await?;
    let events = run_events(&reader, run)?;
    // The same tools the run was offered before it parked.
    let Stack {
        driver,
        spec,
        knowledge,
        ..
    } = stack(journal, &def, run, gate, policies, bus).await?;
    let parked =
        match reasoning::resume(spec, &events).map_err(|e| anyhow::anyhow!("rebuilding {run}: {e}"))? {
            Resumed::Parked(p) => p,
            Resumed::Reasoning(_) | Resumed::Interrupted(_) => {
                bail!("{run} is not parked: its process died mid-run (`stele saga recover {run}` ends it)")
            }
            Resumed::Finished => bail!("{run} has finished"),
        };
    Ok(Prepared {
        driver,
        parked,
        knowledge,
        input: run_input(&events),
    })
}

/// `stele approve|reject RUN CALL`.
#[allow(clippy::too_many_arguments)] // one per CLI argument
pub fn decide(
    data: &Path,
    run: &str,
    call: &str,
    approved: bool,
    approver: &str,
    reason: &str,
    policies: &Path,
    json: bool,
) -> Result<ExitCode> {
    if let Some(daemon) = Daemon::find(data) {
        let body = serde_json::json!({"call": call, "reason": reason, "approver": approver});
        let verb = if approved { "approve" } else { "reject" };
        daemon
            .post(
                &format!("/v1/runs/{run}/{verb}"),
                "application/json",
                &body.to_string(),
            )?
            .ok()?;
        return follow(&daemon, run, json);
    }
    let journal = open_writer(data)?;
    let stop = decide_on(data, &journal, run, call, approved, approver, reason, policies)?;
    Ok(report(&stop, json))
}

/// `stele runs`. When this process can own the journal, parked runs whose
/// approvals timed out are resolved first (and said so on stderr).
pub fn list(data: &Path, policies: &Path, json: bool) -> Result<ExitCode> {
    if let Some(daemon) = Daemon::find(data) {
        // The daemon resolves timed-out approvals itself (its timers).
        let runs: std::collections::BTreeMap<String, stele_projections::runs::RunView> =
            serde_json::from_value(daemon.get("/v1/runs")?.ok()?)
                .context("the runtime's answer to GET /v1/runs")?;
        return print_runs(&runs, json);
    }
    if let Ok(journal) = open_writer(data) {
        let reader = journal.reader();
        let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
        let parked: Vec<String> = runs
            .runs
            .iter()
            .filter(|(_, r)| !r.awaiting.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for run in parked {
            if let Some(x) = expire(data, &journal, &run, policies)? {
                for (call, why) in &x.calls {
                    eprintln!("{run}: {call} {why}");
                }
                match &x.stop {
                    Stop::Finished(f) => eprintln!("{run}: went on and finished {}", f.outcome),
                    Stop::Parked(p) => eprintln!("{run}: went on and waits again: {:?}", p.awaiting()),
                }
            }
        }
        drop(journal);
    }
    let reader = open_reader(data)?;
    let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let runs: std::collections::BTreeMap<String, stele_projections::runs::RunView> =
        runs.runs.into_iter().collect();
    print_runs(&runs, json)
}

fn print_runs(
    runs: &std::collections::BTreeMap<String, stele_projections::runs::RunView>,
    json: bool,
) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (id, r) in runs {
        let awaiting: Vec<&String> = r.awaiting.keys().collect();
        println!(
            "{id:<10} {:<20} {:<18} step {:<3} {}{}",
            r.agent,
            r.state,
            r.step,
            r.outcome.as_deref().unwrap_or(""),
            if awaiting.is_empty() {
                String::new()
            } else {
                format!(" awaiting {awaiting:?}")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
