//! The context operations as `stele context …` and the HTTP API
//! (`/v1/context/…`, `crate::http::context`) both run them: a typed request
//! in, the JSON document `--json` prints out ([`execute`]), and the human
//! rendering of that document ([`render`]). The CLI prints the same whether
//! it opened the journal itself or asked a running `stele up`, because both
//! sides build the document here and the CLI renders only the document.
//!
//! The acting agent (the *requester*) is the agent the caller names: the
//! CLI's `AGENT` argument, the HTTP path's `{agent}`. Its priority (a policy
//! attribute) is its registered definition's, `normal` when it is not
//! registered ([`requester`]); the Cedar gate then decides what it may read
//! and write. Not here: argument parsing (`context_cmd`), routes and status
//! codes (`http::context`).

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stele_engine::context::ops::{Changes, Requester};
use stele_engine::context::search::{Mode, Query};
use stele_engine::context::{AccessLevel, ContextError, ContextService, MemoryType, NewItem};
use stele_projections::{AgentRegistry, SnapshotStore, state_at};
use utoipa::ToSchema;

/// An item to store (`stele context store`, `POST /v1/context/{agent}/items`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreRequest {
    /// The text (at most 64 KiB).
    pub content: String,
    /// short_term, long_term, working, episodic, semantic, shared_knowledge
    /// (default long_term).
    #[serde(rename = "type", default = "long_term")]
    pub memory_type: String,
    /// public, restricted, confidential, secret (default restricted).
    #[serde(default = "restricted")]
    pub level: String,
    /// The id (default `m-<n>`): 1–64 of ASCII letters, digits, `. _ -`.
    #[serde(default)]
    pub id: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Base importance, 0 to 1 (default 0.5).
    #[serde(default = "half")]
    pub importance: f64,
}

/// A search (`stele context search`, `POST /v1/context/{agent}/search`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query (ignored by temporal search).
    #[serde(default)]
    pub query: String,
    /// keyword, temporal, similarity, hybrid (default hybrid).
    #[serde(default = "hybrid")]
    pub mode: String,
    /// Most results (default 10, at most 1000).
    #[serde(default = "ten")]
    pub limit: usize,
    /// Only items stored at or after this time (RFC 3339, or ms since the
    /// epoch as text).
    #[serde(default)]
    pub from: Option<String>,
    /// Only items stored before this time.
    #[serde(default)]
    pub to: Option<String>,
    /// Only these memory types.
    #[serde(default)]
    pub types: Vec<String>,
    /// Weight of keyword relevance in hybrid search, 0 to 1 (default 0.5).
    #[serde(default = "half_f32")]
    pub keyword_weight: f32,
    /// The reader's clock, ms since the epoch (default the server's):
    /// recency and importance are computed at it, and it is journaled with
    /// the access.
    #[serde(default)]
    pub now_ms: Option<u64>,
}

/// Changes to an item (`stele context update`, `PATCH
/// /v1/context/{agent}/items/{item}`); what is absent stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// New text.
    #[serde(default)]
    pub content: Option<String>,
    /// New base importance, 0 to 1.
    #[serde(default)]
    pub importance: Option<f64>,
    /// New memory type.
    #[serde(rename = "type", default)]
    pub memory_type: Option<String>,
}

/// A rating (`stele context feedback`, `POST /v1/context/{agent}/feedback`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The item rated, `owner/id` (one the agent may read).
    pub item: String,
    /// -1 to 1.
    pub score: f64,
}

/// A grant (`stele context share`, `POST
/// /v1/context/{agent}/items/{item}/share`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// The agent it is shared with.
    pub with: String,
    /// public, restricted, confidential (never secret; default restricted).
    #[serde(default = "restricted")]
    pub level: String,
}

/// An archiving (`stele context archive`, `POST
/// /v1/context/{agent}/archive`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRequest {
    /// Archive the items stored before this time (RFC 3339, or ms since the
    /// epoch as text); default those past their type's retention.
    #[serde(default)]
    pub before: Option<String>,
    /// The clock retention is measured at, ms since the epoch (default the
    /// server's).
    #[serde(default)]
    pub now_ms: Option<u64>,
}

impl Default for SearchRequest {
    /// Every default: hybrid, 10 results, weight 0.5, the server's clock.
    fn default() -> SearchRequest {
        SearchRequest {
            query: String::new(),
            mode: hybrid(),
            limit: ten(),
            from: None,
            to: None,
            types: Vec::new(),
            keyword_weight: half_f32(),
            now_ms: None,
        }
    }
}

fn long_term() -> String {
    "long_term".into()
}
fn restricted() -> String {
    "restricted".into()
}
fn hybrid() -> String {
    "hybrid".into()
}
fn half() -> f64 {
    0.5
}
fn half_f32() -> f32 {
    0.5
}
fn ten() -> usize {
    10
}

/// One context operation of an agent.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store an item.
    Store(StoreRequest),
    /// The agent's live items, newest first.
    Show {
        /// Only this memory type.
        memory_type: Option<String>,
        /// The clock importance is computed at.
        now_ms: Option<u64>,
    },
    /// Search what the agent may read.
    Search(SearchRequest),
    /// Change an item of the agent.
    Update {
        /// The item id.
        item: String,
        /// What changes.
        changes: UpdateRequest,
    },
    /// Rate an item the agent may read.
    Feedback(FeedbackRequest),
    /// Share an item of the agent.
    Share {
        /// The item id.
        item: String,
        /// With whom and at what level.
        grant: ShareRequest,
    },
    /// Archive the agent's old items.
    Archive(ArchiveRequest),
    /// The agent's counts.
    Stats {
        /// The clock eligibility and importance are computed at.
        now_ms: Option<u64>,
    },
}

impl Op {
    /// Whether it acts as the agent (and so needs its [`requester`]).
    #[must_use]
    pub fn needs_requester(&self) -> bool {
        !matches!(self, Op::Show { .. } | Op::Stats { .. })
    }
}

/// Milliseconds since the Unix epoch (the reader's clock when none is
/// given; journaled with each read).
#[must_use]
pub fn now_ms() -> u64 {
    crate::run_cmd::now_ms()
}

/// A time given as RFC 3339 or ms since the epoch; `what` names it.
///
/// # Errors
/// Neither form, or before 1970.
pub fn parse_time(what: &'static str, text: &str) -> Result<u64, ContextError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let invalid = |reason: String| ContextError::Invalid { what, reason };
    let t = humantime::parse_rfc3339_weak(text).map_err(|_| {
        invalid(format!(
            "{text:?} is not RFC 3339 (2026-01-02T03:04:05Z) or ms since the epoch"
        ))
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| invalid(format!("{text:?} is before 1970")))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `v` (from `min` to 1) in thousandths.
fn permille(what: &'static str, v: f64, min: f64) -> Result<i32, ContextError> {
    if !(min..=1.0).contains(&v) {
        return Err(ContextError::Invalid {
            what,
            reason: format!("must be from {min} to 1, found {v}"),
        });
    }
    #[allow(clippy::cast_possible_truncation)] // within -1000..=1000
    Ok((v * 1000.0).round() as i32)
}

fn unsigned_permille(what: &'static str, v: f64) -> Result<u32, ContextError> {
    // From 0 to 1: never negative.
    Ok(permille(what, v, 0.0)?.unsigned_abs())
}

/// The requester `agent`, with the priority of its registered definition
/// in the journal of `data` (`normal` when it is not registered).
///
/// # Errors
/// Folding the registry, or a registered definition that no longer parses.
pub fn requester(data: &Path, reader: &stele_journal::Reader, agent: &str) -> Result<Requester> {
    let registry = state_at::<AgentRegistry>(reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let priority = match registry.agents.get(agent) {
        Some(e) => {
            let def = stele_engine::AgentDefinition::parse(
                Path::new(&format!("(registered {agent})")),
                &e.definition,
            )?;
            format!("{:?}", def.priority).to_lowercase()
        }
        None => "normal".to_owned(),
    };
    Ok(Requester {
        agent: agent.to_owned(),
        priority,
    })
}

/// Runs `op` of `agent` on `svc`, acting as `requester` (required when
/// [`Op::needs_requester`]). Returns the document `--json` prints. Input
/// that is not acceptable is a [`ContextError::Invalid`] (a 400 over HTTP).
///
/// # Errors
/// Bad input, the gate's denial, no such item, the journal, the embedder.
#[allow(clippy::too_many_lines)] // one arm per operation
pub async fn execute(
    svc: &ContextService,
    agent: &str,
    requester: Option<&Requester>,
    op: Op,
) -> Result<Value> {
    // Every operation names an agent: one that cannot have a context is
    // refused the same way for all of them.
    stele_engine::context::ops::stream_of(agent)?;
    let req =
        || requester.ok_or_else(|| anyhow::anyhow!("context operation of {agent} without its requester"));
    Ok(match op {
        Op::Store(s) => {
            let new = NewItem {
                id: s.id,
                memory_type: MemoryType::parse(&s.memory_type)?,
                level: AccessLevel::parse(&s.level)?,
                content: s.content,
                tags: s.tags,
                importance_permille: unsigned_permille("importance", s.importance)?,
                session: String::new(),
            };
            let id = svc.store(req()?, new).await?;
            json!({"agent": agent, "id": id})
        }
        Op::Show { memory_type, now_ms } => {
            let memory_type = memory_type
                .as_deref()
                .map(MemoryType::parse)
                .transpose()?
                .map(|t| t.name().to_owned());
            let now = now_ms.unwrap_or_else(self::now_ms);
            let live = svc.live().await;
            // Newest first: the agent's seq-ordered index, walked from its end.
            let items: Vec<_> = live
                .store
                .agents
                .get(agent)
                .map(|a| {
                    a.by_seq
                        .iter()
                        .rev()
                        .filter_map(|(_, id)| a.items.get(id))
                        .filter(|i| memory_type.as_ref().is_none_or(|t| &i.memory_type == t))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let v = items
                .iter()
                .map(|i| {
                    let mut v = serde_json::to_value(i)?;
                    v["importance"] = json!(svc.scoring().importance(i, now));
                    Ok(v)
                })
                .collect::<Result<Vec<_>>>()?;
            json!({"agent": agent, "seq": live.seq.0, "items": v})
        }
        Op::Search(s) => {
            let mut q = Query::new(
                &s.query,
                Mode::parse(&s.mode)?,
                s.now_ms.unwrap_or_else(self::now_ms),
            );
            q.limit = s.limit;
            q.from_ms = s.from.as_deref().map(|t| parse_time("from", t)).transpose()?;
            q.to_ms = s.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
            for t in &s.types {
                q.types.push(MemoryType::parse(t)?.name().to_owned());
            }
            q.keyword_weight = s.keyword_weight;
            serde_json::to_value(svc.search(req()?, &q).await?)?
        }
        Op::Update { item, changes } => {
            let changes = Changes {
                content: changes.content,
                importance_permille: changes
                    .importance
                    .map(|i| unsigned_permille("importance", i))
                    .transpose()?,
                memory_type: changes
                    .memory_type
                    .as_deref()
                    .map(MemoryType::parse)
                    .transpose()?,
            };
            svc.update(req()?, agent, &item, changes).await?;
            json!({"updated": format!("{agent}/{item}")})
        }
        Op::Feedback(f) => {
            let Some((owner, id)) = f.item.split_once('/') else {
                return Err(ContextError::Invalid {
                    what: "item",
                    reason: format!("{:?}: give it as owner/id", f.item),
                }
                .into());
            };
            svc.feedback(req()?, owner, id, permille("score", f.score, -1.0)?)
                .await?;
            json!({"feedback": f.item, "score": f.score})
        }
        Op::Share { item, grant } => {
            let level = AccessLevel::parse(&grant.level)?;
            svc.share(req()?, &item, &grant.with, level).await?;
            json!({"shared": format!("{agent}/{item}"), "with": grant.with, "level": level.name()})
        }
        Op::Archive(a) => {
            let before = a.before.as_deref().map(|t| parse_time("before", t)).transpose()?;
            let n = svc
                .archive(req()?, before, a.now_ms.unwrap_or_else(self::now_ms))
                .await?;
            json!({"agent": agent, "archived": n})
        }
        Op::Stats { now_ms } => {
            serde_json::to_value(svc.stats(agent, now_ms.unwrap_or_else(self::now_ms)).await?)?
        }
    })
}

/// What `op`'s human output is, given its document `v`: the lines for
/// stdout and a note for stderr.
#[must_use]
pub fn render(op: &Op, v: &Value) -> (String, Option<String>) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let f = |v: &Value| v.as_f64().unwrap_or_default();
    let line = |text: &Value| stele_engine::orga::bounded(&s(text).replace('\n', " "), 80);
    let mut out = Vec::new();
    let mut note = None;
    match op {
        Op::Store(_) => out.push(format!("stored {}/{}", s(&v["agent"]), s(&v["id"]))),
        Op::Show { .. } => {
            let items = v["items"].as_array().map(Vec::as_slice).unwrap_or_default();
            if items.is_empty() {
                out.push(format!("{} has no live context items", s(&v["agent"])));
            }
            for i in items {
                out.push(format!(
                    "{:<12} {:<16} {:<12} imp {:.2}  acc {:<3} {}",
                    s(&i["id"]),
                    s(&i["memory_type"]),
                    s(&i["level"]),
                    f(&i["importance"]),
                    i["accesses"].as_u64().unwrap_or_default(),
                    line(&i["content"])
                ));
            }
        }
        Op::Search(_) => {
            note = v["note"].as_str().map(str::to_owned);
            let hits = v["hits"].as_array().map(Vec::as_slice).unwrap_or_default();
            if hits.is_empty() {
                out.push("no results".to_owned());
            }
            for (i, h) in hits.iter().enumerate() {
                out.push(format!(
                    "{:>2}. {:<24} {:.3}  {}",
                    i + 1,
                    s(&h["key"]),
                    f(&h["score"]),
                    line(&h["content"])
                ));
            }
        }
        Op::Update { .. } => out.push(format!("updated {}", s(&v["updated"]))),
        Op::Feedback(_) => out.push(format!("feedback {} on {}", f(&v["score"]), s(&v["feedback"]))),
        Op::Share { .. } => out.push(format!(
            "shared {} with {} ({})",
            s(&v["shared"]),
            s(&v["with"]),
            s(&v["level"])
        )),
        Op::Archive(_) => out.push(format!(
            "archived {} items of {}",
            v["archived"].as_u64().unwrap_or_default(),
            s(&v["agent"])
        )),
        Op::Stats { .. } => {
            let n = |k: &str| v[k].as_u64().unwrap_or_default();
            let agent = s(&v["agent"]);
            out.push(format!(
                "{agent}: {} items, {} bytes, {} embedded, mean importance {:.2}",
                n("items"),
                n("bytes"),
                n("embedded"),
                f(&v["mean_importance"])
            ));
            for (t, k) in v["by_type"].as_object().into_iter().flatten() {
                out.push(format!("  {t:<16} {}", k.as_u64().unwrap_or_default()));
            }
            out.push(format!("  eligible for archiving: {}", n("eligible_for_archive")));
            out.push(format!(
                "  shared by {agent}: {}, shared with {agent}: {}",
                n("grants_given"),
                n("shared_with_me")
            ));
            out.push(format!(
                "  archives: {} ({} items, {} bytes → {} compressed)",
                n("archives"),
                n("archived_items"),
                n("archived_bytes"),
                n("archived_compressed_bytes")
            ));
        }
    }
    (out.join("\n"), note)
}
