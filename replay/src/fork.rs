//! Forks: a new run that starts from another run's state at a seq.
//!
//! The new run (a fresh id) is driven from its start by the engine's
//! driver, like a replay, with the origin's journaled inputs up to the seq
//! served again (completions, tool results, approval decisions), so it
//! reaches the origin's state there; the first journaled input after the
//! seq is replaced by the edit when one is given; from then on the live
//! effect runners the caller hands in answer (the configured provider, the
//! agent's tools, the agent's knowledge between steps). Every fact goes to
//! the new run's stream: its
//! `RunStarted` names the origin as `parent` (`run@seq`), and a `RunForked`
//! right after it records origin, seq and the edit with its BLAKE3 hash,
//! caused by the origin's event at the seq. The origin is only read.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use stele_engine::llm::{Completion, Provider, ToolCall};
use stele_engine::orga::ToolOutcome;
use stele_engine::policy::LiveGate;
use stele_engine::reasoning::{Driver, Sink, StepKnowledge};
use stele_engine::tools::ToolRunner;
use stele_journal::{Append, Event, EventBody, Journal, Seq, StreamId};

use crate::run::{
    Ended, RecordedRun, Served, ServedKnowledge, ServedTools, Settings, approval_of, completion_of,
    drive_from_start, rehydrate_as, tool_result_of,
};
use crate::{Error, Result};

/// Largest edit file read.
pub const MAX_EDIT_BYTES: u64 = 1 << 20;

/// A replacement for the next journaled input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "replaces", rename_all = "snake_case")]
pub enum Edit {
    /// A different completion.
    Completion(Completion),
    /// A different tool result.
    ToolResult {
        /// The call it answers (the journaled result's).
        call_id: String,
        /// Success.
        ok: bool,
        /// Output or error.
        output: String,
        /// Duration, ms.
        duration_ms: u64,
    },
}

/// A completion as an edit file gives it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionFile {
    content: String,
    #[serde(default)]
    tool_calls: Vec<CallFile>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallFile {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    arguments: Option<serde_json::Value>,
}

/// A tool result as an edit file gives it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolResultFile {
    #[serde(default = "yes")]
    ok: bool,
    output: String,
    #[serde(default)]
    duration_ms: u64,
}

fn yes() -> bool {
    true
}

/// The shapes an edit file may have, for error messages.
pub const COMPLETION_SHAPE: &str = r#"{"content": "…", "tool_calls": [{"name": "read_file", "arguments": {"path": "…"}}]} (tool_calls, finish_reason, prompt_tokens, completion_tokens optional)"#;
/// See [`COMPLETION_SHAPE`].
pub const TOOL_RESULT_SHAPE: &str = r#"{"ok": true, "output": "…"} (ok, duration_ms optional)"#;

/// The first journaled input of `origin` after `at`: a completion attempt
/// or a tool result.
fn next_input(origin: &RecordedRun, at: Seq) -> Option<&Event> {
    origin.facts().into_iter().find(|e| {
        e.seq > at
            && matches!(
                e.body,
                EventBody::CompletionReceived { .. }
                    | EventBody::CompletionFailed { .. }
                    | EventBody::ToolReturned { .. }
            )
    })
}

impl Edit {
    /// Reads `path` as a replacement for the first journaled input of
    /// `origin` after `at`: a completion when that is a completion attempt,
    /// a tool result when it is a tool result.
    ///
    /// # Errors
    /// The file is unreadable, too large, not JSON of the expected shape,
    /// or there is no input after `at` to replace.
    pub fn load(path: &Path, origin: &RecordedRun, at: Seq) -> Result<Edit> {
        let bad = |reason: String| Error::Edit {
            path: path.to_owned(),
            reason,
        };
        let size = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.len();
        if size > MAX_EDIT_BYTES {
            return Err(bad(format!("{size} bytes, over the {MAX_EDIT_BYTES}-byte limit")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Edit::parse(path, &text, origin, at)
    }

    /// [`load`](Self::load) on text already read; `source` names where it
    /// came from in errors (a file, `(request body)`).
    ///
    /// # Errors
    /// Not JSON of the expected shape, or no input after `at` to replace.
    pub fn parse(source: &Path, text: &str, origin: &RecordedRun, at: Seq) -> Result<Edit> {
        let bad = |reason: String| Error::Edit {
            path: source.to_owned(),
            reason,
        };
        if text.len() as u64 > MAX_EDIT_BYTES {
            return Err(bad(format!(
                "{} bytes, over the {MAX_EDIT_BYTES}-byte limit",
                text.len()
            )));
        }
        let next = next_input(origin, at).ok_or_else(|| Error::Run {
            run: origin.run.clone(),
            reason: format!("no journaled completion or tool result after seq {at} to replace"),
        })?;
        match &next.body {
            EventBody::ToolReturned { call_id, .. } => {
                let f: ToolResultFile = serde_json::from_str(text).map_err(|e| {
                    bad(format!(
                        "the next input (seq {}) is a tool result, expected {TOOL_RESULT_SHAPE}: {e}",
                        next.seq
                    ))
                })?;
                Ok(Edit::ToolResult {
                    call_id: call_id.clone(),
                    ok: f.ok,
                    output: f.output,
                    duration_ms: f.duration_ms,
                })
            }
            _ => {
                let f: CompletionFile = serde_json::from_str(text).map_err(|e| {
                    bad(format!(
                        "the next input (seq {}) is a completion, expected {COMPLETION_SHAPE}: {e}",
                        next.seq
                    ))
                })?;
                let step = origin
                    .facts()
                    .into_iter()
                    .filter(|e| e.seq <= next.seq)
                    .filter(|e| matches!(e.body, EventBody::CompletionReceived { .. }))
                    .count();
                let tool_calls: Vec<ToolCall> = f
                    .tool_calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| ToolCall {
                        id: c.id.unwrap_or_else(|| format!("call-edit-{step}-{i}")),
                        name: c.name,
                        arguments: match c.arguments {
                            None => "{}".to_owned(),
                            Some(serde_json::Value::String(s)) => s,
                            Some(v) => v.to_string(),
                        },
                    })
                    .collect();
                let finish_reason = f.finish_reason.unwrap_or_else(|| {
                    if tool_calls.is_empty() {
                        "stop"
                    } else {
                        "tool_calls"
                    }
                    .to_owned()
                });
                Ok(Edit::Completion(Completion {
                    content: f.content,
                    tool_calls,
                    finish_reason,
                    prompt_tokens: f.prompt_tokens,
                    completion_tokens: f.completion_tokens,
                }))
            }
        }
    }

    /// The edit as recorded in `RunForked.edit` (compact JSON).
    #[must_use]
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What the fork did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ForkOutcome {
    /// The new run.
    pub run: String,
    /// The origin.
    pub origin: String,
    /// The seq it was forked at.
    pub at: u64,
    /// BLAKE3 (hex) of the edit, if any.
    pub edit_hash: Option<String>,
    /// Journaled inputs of the origin served again (the edit included).
    pub served: usize,
    /// How the new run stands.
    pub ended: Ended,
}

/// Appends the fork's facts to its stream, with the `RunForked` marker
/// right after `RunStarted`.
struct ForkSink {
    journal: Journal,
    stream: StreamId,
    marker: Option<(EventBody, Seq)>,
    started: Option<Arc<tokio::sync::Notify>>,
}

impl Sink for ForkSink {
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Seq>, String>> + Send + 'a>> {
        Box::pin(async move {
            let mut appends = Vec::with_capacity(facts.len() + 1);
            // Where the marker goes among the appends (its seq is not one
            // of the facts').
            let mut marker_at = None;
            for body in facts {
                let started = matches!(body, EventBody::RunStarted { .. });
                appends.push(Append {
                    stream: self.stream.clone(),
                    cause: None,
                    body,
                });
                if started && let Some((marker, at)) = self.marker.take() {
                    marker_at = Some(appends.len());
                    appends.push(Append {
                        stream: self.stream.clone(),
                        cause: Some(at),
                        body: marker,
                    });
                }
            }
            if appends.is_empty() {
                return Ok(Vec::new());
            }
            let receipts = self
                .journal
                .append_many(appends)
                .await
                .map_err(|e| e.to_string())?;
            if self.marker.is_none()
                && let Some(started) = self.started.take()
            {
                started.notify_one();
            }
            Ok(receipts
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != marker_at)
                .map(|(_, r)| r.seq)
                .collect())
        })
    }
}

/// The live effect runners a fork continues with.
#[derive(Debug, Clone)]
pub struct Live {
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// The tools.
    pub tools: Arc<dyn ToolRunner>,
    /// The gate (a daemon's fork sees its reloads).
    pub gate: LiveGate,
    /// The knowledge recalled before a step past the prefix (none: no
    /// injection there).
    pub knowledge: Option<Arc<dyn StepKnowledge>>,
    /// Told once the new run's start (`RunStarted` and `RunForked`) is
    /// durable, so a caller that drives the fork in a task of its own can
    /// answer with the new run while it goes on.
    pub started: Option<Arc<tokio::sync::Notify>>,
}

/// Forks `origin` at `at` into run `new_run`, appending to `journal`. See
/// the module documentation.
///
/// # Errors
/// `at` is before the origin started, the spec cannot be built, a
/// journaled completion is unreadable, or the journal refused the facts.
pub async fn fork(
    origin: &RecordedRun,
    at: Seq,
    edit: Option<Edit>,
    new_run: &str,
    settings: &Settings,
    live: Live,
    journal: &Journal,
) -> Result<ForkOutcome> {
    let started = origin.events.first().map_or(Seq::ZERO, |e| e.seq);
    if at < started {
        return Err(Error::Run {
            run: origin.run.clone(),
            reason: format!("it starts at seq {started}; fork at that seq or later, not {at}"),
        });
    }
    let spec = origin.base_spec(new_run, settings)?;
    let prefix: Vec<&Event> = origin.facts().into_iter().filter(|e| e.seq <= at).collect();
    let mut answers = VecDeque::new();
    let mut approvals = VecDeque::new();
    let mut served = 0;
    for e in &prefix {
        if let Some(c) = completion_of(e)? {
            answers.push_back(c);
            served += 1;
        }
        if tool_result_of(e).is_some() {
            served += 1;
        }
        approvals.extend(approval_of(e));
    }
    let tools = ServedTools::new(
        prefix.iter().copied(),
        spec.max_tool_output,
        None,
        Some(live.tools),
    );
    let (edit_json, edit_hash) = match &edit {
        None => (String::new(), String::new()),
        Some(edit) => {
            let json = edit.canonical();
            let hash = hex::encode(blake3::hash(json.as_bytes()).as_bytes());
            (json, hash)
        }
    };
    match edit {
        None => {}
        Some(Edit::Completion(c)) => {
            answers.push_back(Ok(c));
            served += 1;
        }
        Some(Edit::ToolResult {
            call_id,
            ok,
            output,
            duration_ms,
        }) => {
            tools.push(ToolOutcome {
                call_id,
                ok,
                output,
                duration_ms,
            });
            served += 1;
        }
    }
    let hydration = if origin.hydration().iter().all(|e| e.seq <= at) {
        rehydrate_as(origin, &live.gate.current(), new_run)
    } else {
        Vec::new()
    };
    let driver = Driver {
        provider: Arc::new(Served::new(
            live.provider.name().to_owned(),
            answers,
            Some(live.provider),
        )),
        gate: live.gate,
        tools: Arc::new(tools),
        agent: origin.agent.clone(),
        priority: origin.priority(),
        knowledge: Some(Arc::new(ServedKnowledge::new(
            prefix.iter().copied(),
            live.knowledge,
        ))),
    };
    let stream = StreamId::new(format!("run:{new_run}")).map_err(|e| Error::Run {
        run: new_run.to_owned(),
        reason: e.to_string(),
    })?;
    let marker = EventBody::RunForked {
        run: new_run.to_owned(),
        origin: origin.run.clone(),
        at: at.0,
        edit: edit_json,
        edit_hash: edit_hash.clone(),
    };
    let mut sink = ForkSink {
        journal: journal.clone(),
        stream,
        marker: Some((marker, at)),
        started: live.started,
    };
    let ended = drive_from_start(
        &driver,
        spec,
        origin.input.clone(),
        Some(format!("{}@{}", origin.run, at.0)),
        hydration,
        approvals,
        &mut sink,
    )
    .await
    .map_err(Error::Record)?;
    Ok(ForkOutcome {
        run: new_run.to_owned(),
        origin: origin.run.clone(),
        at: at.0,
        edit_hash: (!edit_hash.is_empty()).then_some(edit_hash),
        served,
        ended,
    })
}
