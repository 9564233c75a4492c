//! `stele policy check DIR`: loads a policy directory exactly as the gate
//! does (parse, annotations, strict validation against the schema) and
//! lists its policies, or every problem with its file, position and policy
//! id. `stele policy reload [--policies DIR]`: the same check here, then
//! the set handed to the running daemon (`POST /v1/policy/reload`), which
//! validates it again, journals the change and puts it in force. Deciding
//! lives in `stele_engine::policy`, the swap in `crate::up_runs`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
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

/// Prints a set's problems as `check` does; exit 1.
fn refused(dir: &Path, e: &PolicyError, json: bool) -> ExitCode {
    let problems: Vec<String> = match e {
        PolicyError::Invalid { problems } => problems.iter().map(ToString::to_string).collect(),
        other => vec![other.to_string()],
    };
    if json {
        println!(
            "{}",
            json!({"ok": false, "dir": dir, "error": e.to_string(), "problems": problems,
                "message": "nothing was reloaded: the set in force stays"})
        );
    } else {
        for p in problems {
            eprintln!("error: {p}");
        }
        eprintln!("nothing was reloaded: the set in force stays");
    }
    ExitCode::from(1)
}

/// `stele policy reload [--policies DIR]`: exit 0 when the set is in force
/// (changed or already), 1 when it was refused (nothing changed).
pub fn reload(data: &Path, policies: Option<&Path>, json: bool) -> Result<ExitCode> {
    let Some(daemon) = crate::client::Daemon::find(data) else {
        bail!(
            "no stele up runs on {}: a policy set is reloaded by the running daemon (start one with `stele up --policies DIR`; `stele policy check DIR` checks a directory)",
            data.display()
        );
    };
    let body = match policies {
        None => String::new(),
        Some(dir) => {
            // Checked here first, so problems name this machine's paths.
            if let Err(e) = PolicyGate::load(dir) {
                return Ok(refused(dir, &e, json));
            }
            let texts = match PolicyGate::texts(dir) {
                Ok(t) => t,
                Err(e) => return Ok(refused(dir, &e, json)),
            };
            let source = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
            let files: serde_json::Map<String, serde_json::Value> = texts
                .files
                .into_iter()
                .map(|(name, text)| (name, text.into()))
                .collect();
            json!({"policies": files, "schema": texts.schema, "source": source.display().to_string()})
                .to_string()
        }
    };
    let answer = daemon
        .post("/v1/policy/reload", "application/json", &body)
        .context("asking the daemon to reload its policy set")?;
    if answer.status == 422 {
        let message = answer.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if json {
            println!(
                "{}",
                json!({"ok": false, "error": message, "message": "nothing was reloaded: the set in force stays"})
            );
        } else {
            eprintln!("error: {message}");
            eprintln!("nothing was reloaded: the set in force stays");
        }
        return Ok(ExitCode::from(1));
    }
    let v = answer.ok()?;
    if json {
        let mut v = v;
        v["ok"] = json!(true);
        println!("{v}");
    } else {
        println!("{}", v["message"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}
