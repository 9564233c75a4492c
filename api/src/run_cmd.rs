//! `stele run`, `stele approve`, `stele reject`, `stele runs`: reasoning
//! runs driven in this process (which owns the journal while it runs).
//! The loop, the gate and the tools are `stele_engine`'s; this file wires
//! them to the journal and prints.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use stele_engine::agent::AgentDefinition;
use stele_engine::config::{InferenceConfig, ProviderKind};
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

struct JournalSink {
    journal: Journal,
    stream: StreamId,
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

fn driver(def: &AgentDefinition, policies: &Path) -> Result<Driver> {
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
    Ok(Driver {
        provider: provider(cfg, def)?,
        gate: load_gate(policies)?,
        tools: ToolBox {
            workspace,
            memory_mb: def.limits.memory_mb,
            cpu_cores: def.limits.cpu_cores,
            timeout: def.limits.execution_timeout,
            launcher: stele_engine::process::Launcher::current().context("finding the stele binary")?,
            confinement: stele_engine::process::detect_confinement(),
        },
        agent: def.name.clone(),
        priority: format!("{:?}", def.priority).to_lowercase(),
    })
}

fn spec(def: &AgentDefinition, run: &str) -> Result<RunSpec> {
    let cfg = &crate::cli::config().inference;
    let mut spec = reasoning::spec_for(def, run, &cfg.model, cfg.max_tokens).map_err(anyhow::Error::msg)?;
    spec.max_attempts = cfg.max_retries + 1;
    Ok(spec)
}

/// The registered definition of `agent`, registering `file` first when given.
fn definition(data: &Path, journal: &Journal, agent: &str) -> Result<AgentDefinition> {
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

fn report(stop: &Stop, json: bool) -> ExitCode {
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

/// `stele run AGENT --input TEXT`.
pub fn run(data: &Path, agent: &str, input: &str, policies: &Path, json: bool) -> Result<ExitCode> {
    let journal = open_writer(data)?;
    let def = definition(data, &journal, agent)?;
    let reader = journal.reader();
    let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let run_id = runs.next_run();
    let driver = driver(&def, policies)?;
    let lp = AgentLoop::start(spec(&def, &run_id)?, input.to_owned(), None);
    let mut sink = JournalSink {
        journal: journal.clone(),
        stream: StreamId::new(format!("run:{run_id}"))?,
    };
    let stop = runtime()?
        .block_on(driver.drive(lp, &mut sink))
        .map_err(|e| anyhow::anyhow!("{run_id}: {e}"))?;
    Ok(report(&stop, json))
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
    let def = definition(data, &journal, &view.agent)?;
    let events: Vec<EventRef> = reader
        .run(&RunId::new(run.to_owned())?, Seq(1))
        .collect::<stele_journal::Result<_>>()?;
    let parked = match reasoning::resume(spec(&def, run)?, &events)
        .map_err(|e| anyhow::anyhow!("rebuilding {run}: {e}"))?
    {
        Resumed::Parked(p) => p,
        Resumed::Reasoning(_) => bail!("{run} is not parked"),
        Resumed::Finished => bail!("{run} has finished"),
    };
    let driver = driver(&def, policies)?;
    let mut sink = JournalSink {
        journal: journal.clone(),
        stream: StreamId::new(format!("run:{run}"))?,
    };
    let stop = runtime()?
        .block_on(driver.decide(parked, call, approved, approver, reason, &mut sink))
        .map_err(|e| anyhow::anyhow!("{run}: {e}"))?;
    Ok(report(&stop, json))
}

/// `stele runs`.
pub fn list(data: &Path, json: bool) -> Result<ExitCode> {
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
