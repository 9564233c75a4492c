//! `stele policy check DIR`: loads a policy directory exactly as the gate
//! does (parse, annotations, strict validation against the schema) and
//! lists its policies, or every problem with its file, position and policy
//! id. Deciding lives in `stele_engine::policy`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use stele_engine::policy::{PolicyError, PolicyGate, PolicyInfo};

/// What a policy does when it is determining, in a few words.
fn outcome(p: &PolicyInfo) -> String {
    if let Some(a) = &p.approval {
        return match p.approval_timeout {
            Some(t) => format!("approval, timeout {}: {a}", humantime::format_duration(t)),
            None => format!("approval: {a}"),
        };
    }
    if !p.conditions.is_empty() {
        let c: Vec<String> = p.conditions.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return format!("conditions: {}", c.join("; "));
    }
    match (&p.reason, p.effect) {
        (Some(r), _) => format!("deny: {r}"),
        (None, "forbid") => format!("deny: forbidden by {}", p.id),
        _ => "allow".into(),
    }
}

pub fn check(dir: &Path, json: bool) -> Result<ExitCode> {
    let gate = match PolicyGate::load(dir) {
        Ok(g) => g,
        Err(e) => {
            let problems: Vec<String> = match &e {
                PolicyError::Invalid { problems } => problems.iter().map(ToString::to_string).collect(),
                other => vec![other.to_string()],
            };
            if json {
                let list: Vec<serde_json::Value> = match &e {
                    PolicyError::Invalid { problems } => problems
                        .iter()
                        .map(|p| {
                            json!({"file": p.file, "line": p.line, "column": p.column,
                                "policy": p.policy, "message": p.message})
                        })
                        .collect(),
                    other => vec![json!({"message": other.to_string()})],
                };
                println!(
                    "{}",
                    json!({"ok": false, "dir": dir, "error": e.to_string(), "problems": list})
                );
            } else {
                for p in problems {
                    eprintln!("error: {p}");
                }
            }
            return Ok(ExitCode::from(1));
        }
    };
    let permits = gate.policies().filter(|p| p.effect == "permit").count();
    let forbids = gate.len() - permits;
    if json {
        let policies: Vec<serde_json::Value> = gate
            .policies()
            .map(|p| {
                json!({"id": p.id, "effect": p.effect, "file": p.file, "line": p.line,
                    "column": p.column, "reason": p.reason, "approval": p.approval,
                    "approval_timeout_ms": p.approval_timeout.map(|t| t.as_millis() as u64),
                    "conditions": p.conditions})
            })
            .collect();
        let warnings: Vec<String> = gate.warnings().iter().map(ToString::to_string).collect();
        println!(
            "{}",
            json!({"ok": true, "dir": dir, "schema": gate.schema_name(), "hash": gate.hash(),
                "permits": permits, "forbids": forbids, "policies": policies, "warnings": warnings})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("schema {}", gate.schema_name());
    let width = gate.policies().map(|p| p.id.len()).max().unwrap_or(0);
    for p in gate.policies() {
        let file = Path::new(&p.file)
            .file_name()
            .map_or(p.file.clone(), |f| f.to_string_lossy().into_owned());
        let at = format!("{file}:{}:{}", p.line, p.column);
        println!("{:<6}  {:<width$}  {at:<20}  {}", p.effect, p.id, outcome(p));
    }
    for w in gate.warnings() {
        println!("warning: {w}");
    }
    println!(
        "ok: {} policies ({permits} permit, {forbids} forbid), {} warnings, set {}",
        gate.len(),
        gate.warnings().len(),
        gate.hash()
    );
    Ok(ExitCode::SUCCESS)
}
