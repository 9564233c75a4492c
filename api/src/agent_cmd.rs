//! `stele agent …`: validate, register, list and stop agents. Registration
//! and stopping run the lifecycle decider in this process, which must own
//! the journal (until `stele up` serves them).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use stele_engine::{AgentDefinition, ExecutionMode, LifecycleCommand, Runs, agent_stream, decide};
use stele_journal::{Append, EventBody, Journal};
use stele_projections::{AgentRegistry, SnapshotStore, state_at};

use crate::journal_cmd::{open_reader, open_writer, runtime};

/// Folds the registry, decides, and appends the facts atomically.
fn decide_and_append(data: &Path, journal: &Journal, command: LifecycleCommand) -> Result<Vec<EventBody>> {
    let reader = journal.reader();
    let registry = state_at::<AgentRegistry>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let stream = agent_stream(command.agent());
    let facts = decide(&registry, command)?;
    let appends: Vec<Append> = facts
        .iter()
        .map(|body| Append {
            stream: stream.clone(),
            cause: None,
            body: body.clone(),
        })
        .collect();
    runtime()?.block_on(journal.append_many(appends))?;
    Ok(facts)
}

pub fn register(data: &Path, file: &Path) -> Result<ExitCode> {
    let definition = AgentDefinition::load(file)?;
    let source = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = definition.name.clone();
    let journal = open_writer(data)?;
    decide_and_append(
        data,
        &journal,
        LifecycleCommand::Register {
            definition: Box::new(definition),
            source,
        },
    )?;
    println!("registered {name} (ready)");
    Ok(ExitCode::SUCCESS)
}

pub fn stop(data: &Path, name: &str, reason: String) -> Result<ExitCode> {
    let journal = open_writer(data)?;
    decide_and_append(
        data,
        &journal,
        LifecycleCommand::Stop {
            agent: name.to_owned(),
            reason,
        },
    )?;
    println!("stopped {name} (terminated)");
    Ok(ExitCode::SUCCESS)
}

pub fn list(data: &Path, json: bool) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let registry = state_at::<AgentRegistry>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    if json {
        println!("{}", serde_json::to_string(&registry.agents)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (name, a) in &registry.agents {
        println!(
            "{name:<24} {:<12} registered at {:<8} last change at {} ({})",
            a.state.name(),
            a.registered_seq,
            a.changed_seq,
            a.last_reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn mode_name(m: &ExecutionMode) -> String {
    match m {
        ExecutionMode::Ephemeral => "ephemeral".into(),
        ExecutionMode::Persistent => "persistent".into(),
        ExecutionMode::Scheduled { interval } => {
            format!("scheduled every {}", humantime::format_duration(*interval))
        }
        ExecutionMode::EventDriven { .. } => "event-driven".into(),
    }
}

pub fn validate(files: &[PathBuf], json: bool) -> Result<ExitCode> {
    let mut bad = 0;
    for f in files {
        match AgentDefinition::load(f) {
            Ok(d) => {
                let runs = match &d.runs {
                    Runs::Process { command, .. } => command.display().to_string(),
                    other => format!("{other:?}"),
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": f, "ok": true, "name": d.name,
                            "priority": format!("{:?}", d.priority).to_lowercase(),
                            "mode": mode_name(&d.mode), "runs": runs})
                    );
                } else {
                    println!(
                        "ok: {} ({}, {}, {:?}) runs {runs}",
                        f.display(),
                        d.name,
                        mode_name(&d.mode),
                        d.priority
                    );
                }
            }
            Err(e) => {
                bad += 1;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": f, "ok": false, "line": e.line,
                            "column": e.column, "error": e.message})
                    );
                } else {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
