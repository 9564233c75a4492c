//! Sagas: a reasoning run's compensable steps and their rollback.
//!
//! A tool may declare a compensation ([`compensation_of`]: `write_file` is
//! undone by `restore_file`). Before such a call runs, the driver captures
//! what undoes it ([`capture`]: the file's previous content, or that it did
//! not exist) and journals it as `SagaStepRecorded` in the same batch as the
//! call's `ToolCalled` — the intent is durable before the effect. A run that
//! completes commits its saga. A run that ends otherwise (failed, stuck,
//! step limit, cancelled) or whose process died (`interrupted`) is rolled
//! back: newest step first, `SagaCompensating` (the intent) is journaled,
//! the compensation runs ([`perform`]), `SagaCompensated` records its
//! result; then `RunFinished`.
//!
//! Exactly once per journal record: [`SagaLog`] folds a run's events and
//! says which steps still need a compensation. A step with a
//! `SagaCompensated` is never compensated again. A step with a
//! `SagaCompensating` but no result (the process died during the
//! compensation) is **re-run**, without a second intent: every
//! compensation sets the file to an absolute state captured before the
//! forward effect (this content, or absent), so running it again leaves
//! exactly what running it once leaves, and the one intent gets its one
//! result. Marking it "unknown" instead would leave the workspace in a
//! state nobody knows, for no gain.
//!
//! Not here: deciding when a run ends (`crate::orga`), appending facts
//! (`crate::reasoning`'s sink).

use serde::Serialize;
use serde_json::{Value, json};
use stele_journal::{ArchivedEventBody, EventRef};

use crate::llm::ToolCall;
use crate::tools::{ToolBox, ToolResult};

/// Largest previous file content a compensation records (and restores); a
/// `write_file` over a bigger file fails before it runs.
pub const MAX_RESTORE_BYTES: u64 = 64 * 1024;

/// The compensating tool of a tool, when it has one.
#[must_use]
pub fn compensation_of(tool: &str) -> Option<&'static str> {
    match tool {
        "write_file" => Some("restore_file"),
        _ => None,
    }
}

/// Captures what undoes `call` (see [`crate::tools::ToolRunner::compensation`]).
pub async fn capture(tools: &ToolBox, call: &ToolCall) -> Option<Result<String, String>> {
    let comp = compensation_of(&call.name)?;
    Some(capture_file(tools, comp, &call.arguments).await)
}

async fn capture_file(tools: &ToolBox, comp: &str, arguments: &str) -> Result<String, String> {
    let args: Value = serde_json::from_str(arguments).map_err(|e| format!("arguments are not JSON: {e}"))?;
    let path = args
        .get("path")
        .and_then(Value::as_str)
        .ok_or("argument \"path\" (a string) is missing")?;
    let full = tools.resolve(path)?;
    let arguments = match tokio::fs::metadata(&full).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({"path": path, "existed": false}),
        Err(e) => return Err(format!("{path}: {e}")),
        Ok(m) if !m.is_file() => return Err(format!("{path} exists and is not a regular file")),
        Ok(m) if m.len() > MAX_RESTORE_BYTES => {
            return Err(format!(
                "{path} is {} bytes; a compensation restores at most {MAX_RESTORE_BYTES}",
                m.len()
            ));
        }
        Ok(_) => {
            let bytes = tokio::fs::read(&full).await.map_err(|e| format!("{path}: {e}"))?;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let content = String::from_utf8(bytes)
                .map_err(|_| format!("{path} is not UTF-8 text; its compensation cannot record it"))?;
            json!({"path": path, "existed": true, "content": content, "blake3": hash})
        }
    };
    Ok(json!({"tool": comp, "arguments": arguments}).to_string())
}

/// Runs a compensating action (see [`crate::tools::ToolRunner::compensate`]).
pub async fn perform(tools: &ToolBox, action: &str) -> ToolResult {
    let action: Value = serde_json::from_str(action).map_err(|e| format!("compensation is not JSON: {e}"))?;
    let tool = action.get("tool").and_then(Value::as_str).unwrap_or_default();
    if tool != "restore_file" {
        return Err(format!("unknown compensating tool {tool:?}"));
    }
    let args = action.get("arguments").cloned().unwrap_or(Value::Null);
    let path = args
        .get("path")
        .and_then(Value::as_str)
        .ok_or("compensation has no \"path\"")?;
    let full = tools.resolve(path)?;
    if args.get("existed").and_then(Value::as_bool) == Some(true) {
        let content = args
            .get("content")
            .and_then(Value::as_str)
            .ok_or("compensation has no \"content\"")?;
        if let Some(parent) = full.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
        }
        tokio::fs::write(&full, content.as_bytes())
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        Ok(format!("restored {path} ({} bytes)", content.len()))
    } else {
        match tokio::fs::remove_file(&full).await {
            Ok(()) => Ok(format!("removed {path} (it did not exist before)")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(format!("{path} is already absent")),
            Err(e) => Err(format!("{path}: {e}")),
        }
    }
}

/// One compensable step as the journal tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoggedStep {
    /// Seq of its `SagaStepRecorded`.
    pub seq: u64,
    /// The run's step.
    pub step: u32,
    /// The call.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The compensating action.
    pub compensation: String,
    /// How the forward call ended (`None`: no `ToolReturned`).
    pub forward_ok: Option<bool>,
    /// Seq of its `SagaCompensating`, when the rollback reached it.
    pub compensating_seq: Option<u64>,
    /// Why it was compensated.
    pub reason: Option<String>,
    /// Its `SagaCompensated`: (seq, ok, detail).
    pub compensated: Option<(u64, bool, String)>,
}

/// A run's saga, folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SagaLog {
    /// The run.
    pub run: String,
    /// `none` (no compensable step), `open` (the run goes on or waits),
    /// `committed` (it completed), `compensated`, `compensation_failed`, or
    /// `needs_recovery` (steps to compensate remain: the run failed or its
    /// process died mid-way — `stele saga recover` finishes it).
    pub state: String,
    /// The run's outcome, when it finished.
    pub outcome: Option<String>,
    /// Steps, oldest first.
    pub steps: Vec<LoggedStep>,
    /// The run's last step number.
    pub run_steps: u32,
    /// Prompt tokens over the run.
    pub prompt_tokens: u64,
    /// Completion tokens over the run.
    pub completion_tokens: u64,
    /// Calls awaiting approval.
    pub awaiting: Vec<String>,
}

impl SagaLog {
    /// Folds a run's events (in seq order).
    #[must_use]
    pub fn fold(run: &str, events: &[EventRef]) -> SagaLog {
        let mut log = SagaLog {
            run: run.to_owned(),
            ..SagaLog::default()
        };
        for e in events {
            let seq = e.seq().0;
            match e.body() {
                ArchivedEventBody::PhaseEntered { step, .. } => log.run_steps = step.to_native(),
                ArchivedEventBody::CompletionReceived {
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => {
                    log.prompt_tokens += u64::from(prompt_tokens.to_native());
                    log.completion_tokens += u64::from(completion_tokens.to_native());
                }
                ArchivedEventBody::SagaStepRecorded {
                    step,
                    call_id,
                    tool,
                    compensation,
                    ..
                } => log.steps.push(LoggedStep {
                    seq,
                    step: step.to_native(),
                    call_id: call_id.to_string(),
                    tool: tool.to_string(),
                    compensation: compensation.to_string(),
                    forward_ok: None,
                    compensating_seq: None,
                    reason: None,
                    compensated: None,
                }),
                ArchivedEventBody::ToolReturned { call_id, ok, .. } => {
                    if let Some(s) = log.step_mut(call_id.as_str()) {
                        s.forward_ok = Some(*ok);
                    }
                }
                ArchivedEventBody::SagaCompensating { call_id, reason, .. } => {
                    if let Some(s) = log.step_mut(call_id.as_str()) {
                        s.compensating_seq = Some(seq);
                        s.reason = Some(reason.to_string());
                    }
                }
                ArchivedEventBody::SagaCompensated {
                    call_id, ok, detail, ..
                } => {
                    if let Some(s) = log.step_mut(call_id.as_str()) {
                        s.compensated = Some((seq, *ok, detail.to_string()));
                    }
                }
                ArchivedEventBody::ApprovalRequested { call_id, .. } => {
                    log.awaiting.push(call_id.to_string())
                }
                ArchivedEventBody::ApprovalDecided { call_id, .. } => {
                    log.awaiting.retain(|c| c != call_id.as_str())
                }
                ArchivedEventBody::RunFinished { outcome, .. } => {
                    log.outcome = Some(outcome.to_string());
                    log.awaiting.clear();
                }
                _ => {}
            }
        }
        log.state = log.state_name().to_owned();
        log
    }

    fn step_mut(&mut self, call_id: &str) -> Option<&mut LoggedStep> {
        self.steps.iter_mut().rev().find(|s| s.call_id == call_id)
    }

    fn state_name(&self) -> &'static str {
        let pending = self.steps.iter().any(|s| s.compensated.is_none());
        let rolled_back = self.steps.iter().any(|s| s.compensating_seq.is_some());
        match self.outcome.as_deref() {
            _ if self.steps.is_empty() => "none",
            Some("completed") => "committed",
            Some(_) | None if pending && (rolled_back || self.outcome.is_some()) => "needs_recovery",
            None if pending => "open",
            _ if self
                .steps
                .iter()
                .any(|s| matches!(s.compensated, Some((_, false, _)))) =>
            {
                "compensation_failed"
            }
            _ => "compensated",
        }
    }

    /// The steps still to compensate, newest first (those with no
    /// `SagaCompensated`; a step whose intent is journaled is re-run).
    #[must_use]
    pub fn pending(&self) -> Vec<&LoggedStep> {
        self.steps
            .iter()
            .rev()
            .filter(|s| s.compensated.is_none())
            .collect()
    }
}
