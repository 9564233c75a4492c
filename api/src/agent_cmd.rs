//! `stele agent …`, `stele status`, `stele down`: validate, register, list
//! and stop agents. When `stele up` runs on the data directory, these go
//! through its HTTP control API (the runtime decides, schedules and runs);
//! otherwise registration and stopping run the lifecycle decider in this
//! process, which then owns the journal, and `stele up` schedules the
//! agents when it starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use stele_engine::{AgentDefinition, LifecycleCommand, Runs, agent_stream, decide};
use stele_journal::{Append, EventBody, Journal};
use stele_projections::{AgentRegistry, SnapshotStore, state_at};

use crate::client::Daemon;
use crate::journal_cmd::{open_reader, open_writer, runtime};
use crate::up::mode_name;

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
    if let Some(d) = Daemon::find(data) {
        let v = d
            .post("/v1/agents", "application/toml", &source)?
            .ok()
            .with_context(|| format!("registering {}", file.display()))?;
        println!("registered {name} ({})", v["state"].as_str().unwrap_or("?"));
        return Ok(ExitCode::SUCCESS);
    }
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
    if let Some(d) = Daemon::find(data) {
        let body = serde_json::json!({ "reason": reason }).to_string();
        d.post(&format!("/v1/agents/{name}/stop"), "application/json", &body)?
            .ok()
            .with_context(|| format!("stopping {name}"))?;
        println!("stopping {name} (it terminates when its task has ended)");
        return Ok(ExitCode::SUCCESS);
    }
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
    if let Some(d) = Daemon::find(data) {
        let v = d.get("/v1/agents")?.ok()?;
        if json {
            println!("{v}");
            return Ok(ExitCode::SUCCESS);
        }
        for a in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let s = |k: &str| a[k].as_str().unwrap_or("-").to_owned();
            println!(
                "{:<24} {:<12} {:<10} {:<24} runs {:<5} task {:<10} last {} ({})",
                s("name"),
                s("state"),
                s("priority"),
                s("mode"),
                a["runs"],
                s("active_task"),
                s("last_exit"),
                s("last_reason")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
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

/// `stele status`.
pub fn status(data: &Path, json: bool) -> Result<ExitCode> {
    let Some(d) = Daemon::find(data) else {
        let reader = open_reader(data)?;
        let registry =
            state_at::<AgentRegistry>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
        let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
        for a in registry.agents.values() {
            *by_state.entry(a.state.name()).or_default() += 1;
        }
        if json {
            println!(
                "{}",
                serde_json::json!({"running": false, "data": data.display().to_string(),
                    "head": reader.head().seq.0, "agents": by_state})
            );
        } else {
            println!("runtime: not running on {}", data.display());
            println!("journal: head {}", reader.head().seq.0);
            println!("agents:  {by_state:?}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    let v = d.get("/v1/status")?.ok()?;
    if json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "runtime: running (pid {}) on {}",
        v["pid"],
        v["data"].as_str().unwrap_or("?")
    );
    if v["shutting_down"].as_bool() == Some(true) {
        println!("         shutting down (step {} of 6)", v["shutdown_step"]);
    }
    println!(
        "journal: head {} ({} events since start)",
        v["head"], v["events_this_run"]
    );
    println!("confine: {}", v["confinement"].as_str().unwrap_or("?"));
    println!("agents:  {}", v["agents"]);
    if let Some(n) = v.get("nats").filter(|n| !n.is_null()) {
        println!(
            "nats:    published through seq {} of {} (lag {}), {}",
            n["published_seq"],
            n["head_seq"],
            n["lag"],
            if n["connected"] == true {
                "connected"
            } else {
                "disconnected"
            }
        );
        if let Some(e) = n["last_error"].as_str() {
            println!("         last error: {e}");
        }
    }
    println!(
        "tasks:   {} running, {} queued",
        v["tasks"]["running"], v["tasks"]["queued"]
    );
    for s in v["slots"].as_array().map(Vec::as_slice).unwrap_or_default() {
        println!(
            "slot {}:  {}/{} MB, {}/{} mcpu: {}",
            s["slot"], s["used_memory_mb"], s["memory_mb"], s["used_cpu_millis"], s["cpu_millis"], s["tasks"]
        );
    }
    for t in v["running_tasks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "  {} {} pid {} rss {} KiB cpu {} ms",
            t["task"].as_str().unwrap_or("?"),
            t["agent"].as_str().unwrap_or("?"),
            t["pid"],
            t["rss_kb"],
            t["cpu_ms"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `stele down`.
pub fn down(data: &Path, no_wait: bool) -> Result<ExitCode> {
    let Some(d) = Daemon::find(data) else {
        anyhow::bail!("no stele runtime is running on {}", data.display());
    };
    d.post("/v1/shutdown", "application/json", "{}")?.ok()?;
    if no_wait {
        println!("shutting down (pid {})", d.pid());
        return Ok(ExitCode::SUCCESS);
    }
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", d.pid()));
    let grace = crate::cli::config().runtime.stop_grace;
    let deadline = std::time::Instant::now() + grace + std::time::Duration::from_secs(30);
    while proc_dir.exists() && crate::up::up_file(data).exists() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the runtime (pid {}) has not stopped yet", d.pid());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("stopped");
    Ok(ExitCode::SUCCESS)
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
