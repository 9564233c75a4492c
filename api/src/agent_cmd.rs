//! `stele agent …`: agent definitions. (Registration, listing and stopping
//! arrive with the registry and `stele up`.)

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use stele_engine::{AgentDefinition, ExecutionMode, Runs};

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
