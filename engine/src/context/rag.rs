//! The RAG pipeline and the knowledge bridge of the reasoning loop.
//!
//! Pipeline ([`recall`]): query analysis ([`analyze`]: searchable terms,
//! a time window from words like "today" or "last week", a memory type from
//! words like "happened" or "concept"), retrieval (hybrid search through
//! the [`ContextService`], so access control and the journaled access
//! apply), ranking (relevance × importance, done by the search), and
//! context assembly ([`assemble`]) within a token budget (4 characters a
//! token, the usual estimate for English text).
//!
//! Bridge: [`KnowledgeTools`], a tool runner in front of another (as the
//! bus's `BusTools` is), answers `recall_knowledge` and `store_knowledge`
//! calls itself — their results return to the run as `ToolReturned`, so a
//! replay serves them and never searches or stores again — and
//! [`record_run`] stores a finished run's learnings as episodic memory.
//! [`StepRecall`] is the driver's [`StepKnowledge`]: before each step after
//! the first it recalls what is relevant to the step's tool results and
//! not yet in the conversation ([`is_seen`]: an item is known once its
//! `[owner/id · ` header appears in any message — an injection, or a
//! `recall_knowledge` answer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Value, json};

use super::ops::{NewItem, Requester};
use super::search::{Found, Mode, Query, tokenize};
use super::service::ContextService;
use super::{AccessLevel, ContextError, MemoryType};
use crate::llm::{Message, ToolCall, ToolSpec};
use crate::orga::ToolOutcome;
use crate::reasoning::{KnowledgeFuture, KnowledgeRequest, StepKnowledge};
use crate::tools::{CallContext, CompensationFuture, ToolResult, ToolRunner};

/// The knowledge tools' names.
pub const KNOWLEDGE_TOOLS: [&str; 2] = ["recall_knowledge", "store_knowledge"];
/// Token budget of a `recall_knowledge` answer when the call names none.
pub const DEFAULT_BUDGET_TOKENS: usize = 1000;
/// How a `ContextHydrated` fact of recalled knowledge (not a workspace
/// file) names its reference: `knowledge:<agent>`. A replay serves such a
/// fact as journaled (no file decision precedes it).
pub const KNOWLEDGE_REFERENCE: &str = "knowledge:";
/// Knowledge items recalled for a run's input before its first step.
pub const RECALL_ON_START: usize = 5;
/// Most new knowledge items injected before a later step.
pub const RECALL_PER_STEP: usize = 3;
/// Token budget of the knowledge injected before a later step.
pub const STEP_BUDGET_TOKENS: usize = 500;
/// Hits looked at before a later step (the best ones may already be in the
/// conversation).
pub const STEP_CANDIDATES: usize = 50;
/// Least relevance (in [0, 1], before importance) of an item injected
/// before a later step: below it a hit is noise (a stray shared feature of
/// the hash embedder), not knowledge about the step.
pub const MIN_STEP_RELEVANCE: f32 = 0.2;
/// Largest budget a call may ask for.
pub const MAX_BUDGET_TOKENS: usize = 8000;
/// Characters per token of the budget's estimate.
pub const CHARS_PER_TOKEN: usize = 4;

/// Whether `name` is a knowledge tool.
#[must_use]
pub fn is_knowledge_tool(name: &str) -> bool {
    KNOWLEDGE_TOOLS.contains(&name)
}

/// The knowledge tools as the model sees them.
#[must_use]
pub fn specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "recall_knowledge".into(),
            description: "Search your memory and the knowledge shared with you; returns the most relevant items."
                .into(),
            parameters: json!({"type": "object", "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer"},
                "max_tokens": {"type": "integer"}
            }, "required": ["query"]})
            .to_string(),
        },
        ToolSpec {
            name: "store_knowledge".into(),
            description: "Remember something for later runs (memory_type: long_term, episodic, semantic, shared_knowledge, working, short_term).".into(),
            parameters: json!({"type": "object", "properties": {
                "content": {"type": "string"},
                "memory_type": {"type": "string"},
                "importance": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}}
            }, "required": ["content"]})
            .to_string(),
        },
    ]
}

/// What [`analyze`] makes of a request for knowledge.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// The searchable terms.
    pub terms: Vec<String>,
    /// Only items stored after this time, when the text names a window.
    pub from_ms: Option<u64>,
    /// Only this memory type, when the text points at one.
    pub memory_type: Option<MemoryType>,
}

const HOUR_MS: u64 = 3_600_000;

/// Query analysis (pure): terms, time window, memory type.
#[must_use]
pub fn analyze(text: &str, now_ms: u64) -> Analysis {
    let terms = tokenize(text);
    let lower = text.to_lowercase();
    let window_ms = if lower.contains("last hour") {
        Some(HOUR_MS)
    } else if lower.contains("today") {
        Some(24 * HOUR_MS)
    } else if lower.contains("yesterday") {
        Some(48 * HOUR_MS)
    } else if lower.contains("last week") || lower.contains("this week") {
        Some(7 * 24 * HOUR_MS)
    } else {
        None
    };
    let has = |words: &[&str]| terms.iter().any(|t| words.contains(&t.as_str()));
    let memory_type = if has(&["happened", "experience", "episode", "outcome", "incident"]) {
        Some(MemoryType::Episodic)
    } else if has(&["concept", "definition", "means", "meaning", "relationship"]) {
        Some(MemoryType::Semantic)
    } else {
        None
    };
    Analysis {
        terms,
        from_ms: window_ms.map(|w| now_ms.saturating_sub(w)),
        memory_type,
    }
}

/// Context assembled for a prompt.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Assembled {
    /// The text, one item per paragraph, best first.
    pub text: String,
    /// The items used (`owner/id`), in order.
    pub used: Vec<String>,
    /// Estimated tokens of `text`.
    pub tokens: usize,
    /// Items left out for the budget.
    pub left_out: usize,
}

/// Assembles `found` into at most `budget_tokens` (estimated): whole items
/// in rank order; the first item that does not fit is cut to the room left
/// when that room is at least a quarter of the budget, and assembly stops.
#[must_use]
pub fn assemble(found: &Found, budget_tokens: usize) -> Assembled {
    let budget = budget_tokens * CHARS_PER_TOKEN;
    let mut out = Assembled::default();
    for (i, h) in found.hits.iter().enumerate() {
        let head = format!("[{} · {} · {:.2}] ", h.key, h.memory_type, h.score);
        let entry = format!("{head}{}\n", h.content);
        let room = budget.saturating_sub(out.text.len());
        if entry.len() <= room {
            out.text.push_str(&entry);
            out.used.push(h.key.clone());
            continue;
        }
        if room >= budget / 4 && room > head.len() + 16 {
            let cut = crate::orga::bounded(&h.content, room - head.len() - 2);
            out.text.push_str(&head);
            out.text.push_str(&cut);
            out.text.push('\n');
            out.used.push(h.key.clone());
            out.left_out = found.hits.len() - i - 1;
        } else {
            out.left_out = found.hits.len() - i;
        }
        break;
    }
    // Never over budget, whatever `bounded` appends.
    if out.text.len() > budget {
        out.text = crate::orga::bounded(&out.text, budget);
    }
    out.tokens = out.text.len().div_ceil(CHARS_PER_TOKEN);
    out
}

/// The pipeline: analyze `text`, search (hybrid), assemble within
/// `budget_tokens`. The search is journaled as the requester's access.
///
/// # Errors
/// A text with no searchable word, the journal.
pub async fn recall(
    service: &ContextService,
    requester: &Requester,
    text: &str,
    limit: usize,
    budget_tokens: usize,
    now_ms: u64,
) -> Result<(Found, Assembled), ContextError> {
    let found = retrieve(service, requester, text, limit, now_ms).await?;
    let assembled = assemble(&found, budget_tokens);
    Ok((found, assembled))
}

/// Query analysis and retrieval: the hybrid search of [`recall`], with
/// the analysis's hints dropped when they find nothing.
async fn retrieve(
    service: &ContextService,
    requester: &Requester,
    text: &str,
    limit: usize,
    now_ms: u64,
) -> Result<Found, ContextError> {
    let a = analyze(text, now_ms);
    let mut q = Query::new(text, Mode::Hybrid, now_ms);
    q.limit = limit;
    q.from_ms = a.from_ms;
    if let Some(t) = a.memory_type {
        q.types = vec![t.name().to_owned()];
    }
    let mut found = service.search(requester, &q).await?;
    if found.hits.is_empty() && (q.from_ms.is_some() || !q.types.is_empty()) {
        // The hints were too narrow: search without them.
        q.from_ms = None;
        q.types.clear();
        found = service.search(requester, &q).await?;
    }
    Ok(found)
}

/// Whether the item `key` (`owner/id`) is already in `conversation`: its
/// header as [`assemble`] writes it (`[owner/id · `) is in a message — an
/// earlier injection or a `recall_knowledge` answer.
#[must_use]
pub fn is_seen(key: &str, conversation: &[Message]) -> bool {
    let header = format!("[{key} · ");
    conversation.iter().any(|m| m.content.contains(&header))
}

/// The knowledge for a later step of a run: the hybrid search of `text`,
/// without the items already in `conversation` and the hits below
/// [`MIN_STEP_RELEVANCE`], at most [`RECALL_PER_STEP`] items assembled
/// within [`STEP_BUDGET_TOKENS`]. `None` when nothing new is relevant (a
/// text with no searchable word included).
///
/// # Errors
/// The search failed (the journal, the gate).
pub async fn recall_new(
    service: &ContextService,
    requester: &Requester,
    text: &str,
    conversation: &[Message],
    now_ms: u64,
) -> Result<Option<Assembled>, ContextError> {
    if tokenize(text).is_empty() {
        return Ok(None);
    }
    let mut found = retrieve(service, requester, text, STEP_CANDIDATES, now_ms).await?;
    found
        .hits
        .retain(|h| h.relevance >= MIN_STEP_RELEVANCE && !is_seen(&h.key, conversation));
    found.hits.truncate(RECALL_PER_STEP);
    let assembled = assemble(&found, STEP_BUDGET_TOKENS);
    Ok((!assembled.used.is_empty()).then_some(assembled))
}

/// The live [`StepKnowledge`] of a run: [`recall_new`] over the agent's
/// context (the search journaled as its access, like any other).
#[derive(Clone, Debug)]
pub struct StepRecall {
    /// The context store.
    pub service: Arc<ContextService>,
    /// The agent whose run it is.
    pub requester: Requester,
}

impl StepKnowledge for StepRecall {
    fn recall<'a>(&'a self, request: &'a KnowledgeRequest<'a>) -> KnowledgeFuture<'a> {
        Box::pin(async move {
            recall_new(
                &self.service,
                &self.requester,
                &request.query,
                request.conversation,
                request.now_ms,
            )
            .await
            .map(|a| a.map(|a| a.text))
            .map_err(|e| e.to_string())
        })
    }
}

/// Stores what a finished run learned as an episodic memory of its agent:
/// the task, the outcome and the answer. Returns the item id.
///
/// # Errors
/// As [`ContextService::store`].
pub async fn record_run(
    service: &ContextService,
    requester: &Requester,
    run: &str,
    input: &str,
    outcome: &str,
    answer: &str,
) -> Result<String, ContextError> {
    let content = format!(
        "Run {run} ({outcome}). Task: {}\nResult: {}",
        crate::orga::bounded(input, 2000),
        crate::orga::bounded(answer, 4000)
    );
    service
        .store(
            requester,
            NewItem {
                id: Some(format!("{run}-learned")),
                memory_type: MemoryType::Episodic,
                level: AccessLevel::Restricted,
                content,
                tags: vec!["run".into(), outcome.to_owned()],
                importance_permille: if outcome == "completed" { 600 } else { 400 },
                session: run.to_owned(),
            },
        )
        .await
}

/// A tool runner that answers the knowledge tools from a
/// [`ContextService`] and hands every other call to `inner`.
#[derive(Clone, Debug)]
pub struct KnowledgeTools {
    /// The context store.
    pub service: Arc<ContextService>,
    /// The agent whose run calls them.
    pub requester: Requester,
    /// The run (stored knowledge records it as its session).
    pub run: String,
    /// Every other tool.
    pub inner: Arc<dyn ToolRunner>,
}

fn arg_text(args: &Value, key: &str) -> Result<String, String> {
    args.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("argument {key:?} (a string) is missing"))
}

fn arg_usize(args: &Value, key: &str, default: usize, max: usize) -> Result<usize, String> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("{key} must be an integer from 1 to {max}, found {v}")),
    }
}

impl KnowledgeTools {
    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        let args: Value =
            serde_json::from_str(&call.arguments).map_err(|e| format!("the arguments are not JSON: {e}"))?;
        let now_ms = self.inner.clock_ms();
        match call.name.as_str() {
            "recall_knowledge" => {
                let query = arg_text(&args, "query")?;
                let limit = arg_usize(&args, "limit", 5, 50)?;
                let budget = arg_usize(&args, "max_tokens", DEFAULT_BUDGET_TOKENS, MAX_BUDGET_TOKENS)?;
                let (found, a) = recall(&self.service, &self.requester, &query, limit, budget, now_ms)
                    .await
                    .map_err(|e| e.to_string())?;
                if a.used.is_empty() {
                    return Ok(format!("no knowledge matches {query:?}"));
                }
                let mut text = a.text;
                if let Some(note) = found.note {
                    text = format!("({note})\n{text}");
                }
                Ok(text)
            }
            "store_knowledge" => {
                let content = arg_text(&args, "content")?;
                let memory_type = match args.get("memory_type").and_then(Value::as_str) {
                    Some(t) => MemoryType::parse(t).map_err(|e| e.to_string())?,
                    None => MemoryType::LongTerm,
                };
                let importance = match args.get("importance") {
                    None | Some(Value::Null) => 500,
                    Some(v) => {
                        let f = v
                            .as_f64()
                            .filter(|f| (0.0..=1.0).contains(f))
                            .ok_or_else(|| format!("importance must be a number from 0 to 1, found {v}"))?;
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // in 0..=1000
                        let p = (f * 1000.0).round() as u32;
                        p
                    }
                };
                let tags = match args.get("tags") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|t| t.as_str().map(str::to_owned).ok_or("tags must be strings"))
                        .collect::<Result<Vec<_>, _>>()?,
                    Some(v) => return Err(format!("tags must be an array of strings, found {v}")),
                };
                let level = if memory_type == MemoryType::SharedKnowledge {
                    AccessLevel::Public
                } else {
                    AccessLevel::Restricted
                };
                let id = self
                    .service
                    .store(
                        &self.requester,
                        NewItem {
                            id: None,
                            memory_type,
                            level,
                            content,
                            tags,
                            importance_permille: importance,
                            session: self.run.clone(),
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "stored as {}/{id} ({memory_type}, {level})",
                    self.requester.agent
                ))
            }
            other => Err(format!("{other} is not a knowledge tool")),
        }
    }
}

impl ToolRunner for KnowledgeTools {
    #[allow(clippy::disallowed_methods)] // an effect runner measures how long the effect took
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        ctx: &'a CallContext,
    ) -> Pin<Box<dyn Future<Output = ToolOutcome> + Send + 'a>> {
        if !is_knowledge_tool(&call.name) {
            return self.inner.run(call, ctx);
        }
        Box::pin(async move {
            let started = std::time::Instant::now();
            let (ok, output) = match self.call(call).await {
                Ok(o) => (true, o),
                Err(e) => (false, e),
            };
            ToolOutcome {
                call_id: call.id.clone(),
                ok,
                output,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
        })
    }

    fn compensation<'a>(&'a self, call: &'a ToolCall) -> CompensationFuture<'a> {
        if is_knowledge_tool(&call.name) {
            // A memory is a fact of the journal; nothing undoes it.
            return Box::pin(async { None });
        }
        self.inner.compensation(call)
    }

    fn compensate<'a>(&'a self, action: &'a str) -> Pin<Box<dyn Future<Output = ToolResult> + Send + 'a>> {
        self.inner.compensate(action)
    }

    fn clock_ms(&self) -> u64 {
        self.inner.clock_ms()
    }
}
