//! `stele run`, `stele approve`, `stele reject`, `stele runs`: reasoning
//! runs driven in this process (which owns the journal while it runs).
//! The loop, the gate and the tools are `stele_engine`'s; this file wires
//! them to the journal and prints. Every command that touches a parked run
//! first resolves its approvals whose policy timeout has passed, as
//! rejected by the timeout (approver `expired`), and lets the run go on.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use stele_engine::agent::AgentDefinition;
use stele_engine::breaker::BreakerConfig;
use stele_engine::config::{InferenceConfig, ProviderKind};
use stele_engine::hydrate;
use stele_engine::llm::Provider;
use stele_engine::openai::OpenAiProvider;
use stele_engine::orga::{AgentLoop, RunSpec};
use stele_engine::policy::PolicyGate;
use stele_engine::reasoning::{self, Driver, Resumed, Sink, Stop};
use stele_engine::scripted::ScriptedProvider;
use stele_engine::tools::ToolBox;
use stele_engine::{LifecycleCommand, Runs, agent_stream};
use stele_journal::{Append, EventBody, EventRef, Journal, RunId, Seq, StreamId};
use stele_projections::{AgentRegistry, RunsView, SnapshotStore, state_at};

use crate::journal_cmd::{open_reader, open_writer, runtime};

/// Exit code of a run that waits for an approval.
pub const PARKED: u8 = 3;

/// Appends a run's facts to its stream `run:<id>`.
pub(crate) struct JournalSink {
    journal: Journal,
    stream: StreamId,
}

impl JournalSink {
    /// The sink of run `run`.
    pub(crate) fn new(journal: &Journal, run: &str) -> Result<JournalSink> {
        Ok(JournalSink {
            journal: journal.clone(),
            stream: StreamId::new(format!("run:{run}"))?,
        })
    }
}

impl Sink for JournalSink {
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if facts.is_empty() {
                return Ok(());
            }
            let appends = facts
                .into_iter()
                .map(|body| Append {
                    stream: self.stream.clone(),
                    cause: None,
                    body,
                })
                .collect();
            self.journal
                .append_many(appends)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

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

fn load_gate(policies: &Path) -> Result<Arc<PolicyGate>> {
    Ok(Arc::new(PolicyGate::load(policies)?))
}

/// The driver of an agent's runs, and its tools (for hydration and
/// compensations outside a drive).
pub(crate) fn driver(def: &AgentDefinition, policies: &Path) -> Result<(Driver, Arc<ToolBox>)> {
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
    let tools = Arc::new(ToolBox {
        workspace,
        memory_mb: def.limits.memory_mb,
        cpu_cores: def.limits.cpu_cores,
        timeout: def.limits.execution_timeout,
        launcher: stele_engine::process::Launcher::current().context("finding the stele binary")?,
        confinement: stele_engine::process::detect_confinement(),
    });
    let driver = Driver {
        provider: provider(cfg, def)?,
        gate: load_gate(policies)?,
        tools: tools.clone(),
        agent: def.name.clone(),
        priority: format!("{:?}", def.priority).to_lowercase(),
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
    let reader = journal.reader();
    let registry = state_at::<AgentRegistry>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let path = PathBuf::from(agent);
    if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
        let def = AgentDefinition::load(&path)?;
        let source = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let hash = hex::encode(blake3::hash(source.as_bytes()).as_bytes());
        match registry.agents.get(&def.name) {
            Some(a) if a.definition_hash == hash && a.state != stele_journal::AgentState::Terminated => {}
            _ => {
                let facts = stele_engine::decide(
                    &registry,
                    LifecycleCommand::Register {
                        definition: Box::new(def.clone()),
                        source,
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
                runtime()?.block_on(journal.append_many(appends))?;
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
    let reader = journal.reader();
    let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let run_id = runs.next_run();
    let (driver, tools) = driver(&def, policies)?;
    let spec = spec(&def, &run_id)?;
    // The knowledge bridge (recall_knowledge / store_knowledge, learnings).
    let (driver, spec, knowledge) = crate::context_cmd::bridge(journal, policies, &def, &run_id, driver, spec)?;
    let mut sink = JournalSink::new(journal, &run_id)?;
    let rt = runtime()?;
    let hydration = rt.block_on(hydrate::hydrate(
        &driver.gate,
        &tools,
        &run_id,
        &driver.agent,
        &driver.priority,
        input,
    ));
    let lp = AgentLoop::start_hydrated(spec, input.to_owned(), None, hydration);
    let stop = rt
        .block_on(driver.drive(lp, &mut sink))
        .map_err(|e| anyhow::anyhow!("{run_id}: {e}"))?;
    crate::context_cmd::learned(&rt, &knowledge, &stop, input);
    Ok(stop)
}

/// `stele run AGENT --input TEXT`.
pub fn run(data: &Path, agent: &str, input: &str, policies: &Path, json: bool) -> Result<ExitCode> {
    let journal = open_writer(data)?;
    let stop = start(data, &journal, agent, input, policies)?;
    Ok(report(&stop, json))
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
    let def = definition(data, journal, &view.agent)?;
    let mut parked = match reasoning::resume(spec(&def, run)?, &events)
        .map_err(|e| anyhow::anyhow!("rebuilding {run}: {e}"))?
    {
        Resumed::Parked(p) => p,
        _ => bail!("{run} has approvals that timed out but is not parked"),
    };
    let (driver, _) = driver(&def, policies)?;
    let mut sink = JournalSink::new(journal, run)?;
    let rt = runtime()?;
    let mut calls = Vec::new();
    for (call, why) in expired {
        let stop = rt
            .block_on(driver.decide(parked, &call, false, "expired", &why, &mut sink))
            .map_err(|e| anyhow::anyhow!("{run}: {e}"))?;
        calls.push((call, why));
        match stop {
            Stop::Parked(p) => parked = p,
            other => return Ok(Some(Expired { calls, stop: other })),
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
    if let Some(expired) = expire(data, journal, run, policies)?
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
    let def = definition(data, journal, &view.agent)?;
    let events = run_events(&reader, run)?;
    let parked = match reasoning::resume(spec(&def, run)?, &events)
        .map_err(|e| anyhow::anyhow!("rebuilding {run}: {e}"))?
    {
        Resumed::Parked(p) => p,
        Resumed::Reasoning(_) | Resumed::Interrupted(_) => {
            bail!("{run} is not parked: its process died mid-run (`stele saga recover {run}` ends it)")
        }
        Resumed::Finished => bail!("{run} has finished"),
    };
    let (driver, _) = driver(&def, policies)?;
    let mut sink = JournalSink::new(journal, run)?;
    runtime()?
        .block_on(driver.decide(parked, call, approved, approver, reason, &mut sink))
        .map_err(|e| anyhow::anyhow!("{run}: {e}"))
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
    let journal = open_writer(data)?;
    let stop = decide_on(data, &journal, run, call, approved, approver, reason, policies)?;
    Ok(report(&stop, json))
}

/// `stele runs`. When this process can own the journal, parked runs whose
/// approvals timed out are resolved first (and said so on stderr).
pub fn list(data: &Path, policies: &Path, json: bool) -> Result<ExitCode> {
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
    if json {
        println!("{}", serde_json::to_string(&runs.runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (id, r) in &runs.runs {
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
