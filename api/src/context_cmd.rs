//! `stele context …`: an agent's memory and knowledge (store, show,
//! search, update, feedback, share, archive, stats) over the journal, through
//! `stele_engine::context::ContextService` — every change and every read is
//! journaled on stream `context:<agent>`, checked by the Cedar gate of
//! `--policies`. The vector index is the one `[context] vector_backend`
//! names ([`vector_index`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use stele_engine::config::VectorBackend;
use stele_engine::context::ops::{Changes, Requester};
use stele_engine::context::score::Scoring;
use stele_engine::context::search::{Mode, Query};
use stele_engine::context::vector::{ExactIndex, VectorIndex};
use stele_engine::context::{AccessLevel, ContextService, MemoryType, NewItem, embed};
use stele_engine::policy::PolicyGate;
use stele_projections::{AgentRegistry, SnapshotStore, state_at};

use crate::journal_cmd::{open_writer, runtime};

/// Options every context command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The Cedar policy directory (schema + *.cedar).
    #[arg(long, default_value = "fixtures/policies", global = true)]
    pub policies: PathBuf,
    /// One JSON document.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContextCmd {
    /// Store an item in AGENT's context; prints its id.
    Store {
        /// The owner.
        agent: String,
        /// The text.
        content: String,
        /// short_term, long_term, working, episodic, semantic, shared_knowledge.
        #[arg(long = "type", default_value = "long_term")]
        memory_type: String,
        /// public, restricted, confidential, secret.
        #[arg(long, default_value = "restricted")]
        level: String,
        /// The id (default: `m-<n>`).
        #[arg(long)]
        id: Option<String>,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Base importance, 0 to 1.
        #[arg(long, default_value_t = 0.5)]
        importance: f64,
        #[command(flatten)]
        common: Common,
    },
    /// AGENT's live items (newest first) as folded from the journal; reads
    /// nothing into the journal.
    Show {
        /// The agent.
        agent: String,
        /// Only this memory type.
        #[arg(long = "type")]
        memory_type: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Search what AGENT may read (its own items, public ones, those shared
    /// with it), ranked by relevance × importance.
    Search {
        /// The reading agent.
        agent: String,
        /// The query (ignored by temporal search).
        #[arg(default_value = "")]
        query: String,
        /// keyword, temporal, similarity, hybrid.
        #[arg(long, default_value = "hybrid")]
        mode: String,
        /// Most results.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Only items stored at or after this time (RFC 3339, or ms since the epoch).
        #[arg(long)]
        from: Option<String>,
        /// Only items stored before this time.
        #[arg(long)]
        to: Option<String>,
        /// Only this memory type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Weight of keyword relevance in hybrid search, 0 to 1.
        #[arg(long, default_value_t = 0.5)]
        keyword_weight: f32,
        #[command(flatten)]
        common: Common,
    },
    /// Change an item of AGENT (content, importance, memory type).
    Update {
        /// The owner.
        agent: String,
        /// The item id.
        item: String,
        /// New text.
        #[arg(long)]
        content: Option<String>,
        /// New base importance, 0 to 1.
        #[arg(long)]
        importance: Option<f64>,
        /// New memory type.
        #[arg(long = "type")]
        memory_type: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Rate an item AGENT may read: SCORE from -1 to 1.
    Feedback {
        /// The agent giving it.
        agent: String,
        /// The item, `owner/id`.
        item: String,
        /// -1 to 1.
        #[arg(allow_hyphen_values = true)]
        score: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Share AGENT's item with another agent at an access level.
    Share {
        /// The owner.
        agent: String,
        /// The item id.
        item: String,
        /// The agent it is shared with.
        #[arg(long)]
        with: String,
        /// public, restricted, confidential (never secret).
        #[arg(long, default_value = "restricted")]
        level: String,
        #[command(flatten)]
        common: Common,
    },
    /// Archive AGENT's items stored before a time (default: those past
    /// their type's retention); they leave the live store, compressed into
    /// the journal.
    Archive {
        /// The owner.
        agent: String,
        /// RFC 3339 or ms since the epoch.
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Items, bytes, types, archiving eligibility, grants, archives.
    Stats {
        /// The agent.
        agent: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Milliseconds since the Unix epoch (the reader's clock, journaled with
/// each read).
fn now_ms() -> u64 {
    crate::run_cmd::now_ms()
}

fn parse_time(what: &str, text: &str) -> Result<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("--{what} {text:?}: not RFC 3339 (2026-01-02T03:04:05Z) or ms since the epoch")
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .with_context(|| format!("--{what} {text:?} is before 1970"))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn permille(what: &str, v: f64, min: f64) -> Result<i32> {
    if !(min..=1.0).contains(&v) {
        bail!("{what} must be from {min} to 1, found {v}");
    }
    #[allow(clippy::cast_possible_truncation)] // within -1000..=1000
    Ok((v * 1000.0).round() as i32)
}

/// The requester: the agent's priority from its registered definition
/// (`normal` when it is not registered).
fn requester(data: &Path, journal: &stele_journal::Journal, agent: &str) -> Result<Requester> {
    let reader = journal.reader();
    let registry = state_at::<AgentRegistry>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
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

/// The vector index `[context]` asks for, in the journal's data directory
/// `data` (a relative `vector_data_path` is inside it).
///
/// # Errors
/// A backend this build does not have, or the index cannot be opened.
pub fn vector_index(data: &Path) -> Result<Box<dyn VectorIndex>> {
    let config = &crate::cli::config().context;
    match config.vector_backend {
        VectorBackend::Lancedb => {
            let dir = data.join(&config.vector_data_path);
            lancedb_index(&dir)
        }
        VectorBackend::Qdrant => qdrant_index(config.qdrant.as_ref()),
        VectorBackend::Exact => Ok(Box::new(ExactIndex::new())),
    }
}

#[cfg(feature = "vector-qdrant")]
fn qdrant_index(config: Option<&stele_engine::config::QdrantConfig>) -> Result<Box<dyn VectorIndex>> {
    let Some(q) = config else {
        bail!(
            "[context] vector_backend = \"qdrant\" needs a [context.qdrant] section (host, port; collection, https, api_key_env optional)"
        );
    };
    let api_key = match &q.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Some(key.trim().to_owned()),
            _ => {
                bail!("[context.qdrant] api_key_env = {var:?}: that environment variable is not set or empty")
            }
        },
        None => None,
    };
    let scheme = if q.https { "https" } else { "http" };
    // An IPv6 address goes in brackets.
    let host = if q.host.contains(':') && !q.host.starts_with('[') {
        format!("[{}]", q.host)
    } else {
        q.host.clone()
    };
    let options = stele_vectors::QdrantOptions {
        collection: q.collection.clone(),
        api_key,
        ..stele_vectors::QdrantOptions::new(&format!("{scheme}://{host}:{}", q.port))
    };
    let index = stele_vectors::QdrantIndex::open(&options).with_context(|| {
        format!(
            "opening the Qdrant vector index (collection {:?} at {})",
            options.collection, options.url
        )
    })?;
    Ok(Box::new(index))
}

#[cfg(not(feature = "vector-qdrant"))]
fn qdrant_index(_: Option<&stele_engine::config::QdrantConfig>) -> Result<Box<dyn VectorIndex>> {
    bail!(
        "[context] vector_backend = \"qdrant\": this stele is built without the vector-qdrant feature; use \"lancedb\" or \"exact\""
    )
}

#[cfg(feature = "lancedb")]
fn lancedb_index(dir: &Path) -> Result<Box<dyn VectorIndex>> {
    let index = stele_vectors::LanceIndex::open(dir, stele_vectors::Options::default())
        .with_context(|| format!("opening the LanceDB vector index in {}", dir.display()))?;
    Ok(Box::new(index))
}

#[cfg(not(feature = "lancedb"))]
fn lancedb_index(dir: &Path) -> Result<Box<dyn VectorIndex>> {
    tracing::warn!(
        dir = %dir.display(),
        "this stele is built without the lancedb feature: similarity search uses the exact in-memory index"
    );
    Ok(Box::new(ExactIndex::new()))
}

/// The context service of `journal` with the gate of `policies`: shared by
/// everything in this process that uses it at the same time (the daemon's
/// concurrent runs see one folded store and one vector index), opened again
/// once none does.
pub fn service(journal: stele_journal::Journal, policies: &Path) -> Result<Arc<ContextService>> {
    type Services = Vec<((PathBuf, PathBuf), std::sync::Weak<ContextService>)>;
    static SERVICES: std::sync::Mutex<Services> = std::sync::Mutex::new(Vec::new());
    let key = (journal.reader().dir().to_owned(), policies.to_owned());
    let mut services = SERVICES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    services.retain(|(_, s)| s.strong_count() > 0);
    if let Some(s) = services
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, s)| s.upgrade())
    {
        return Ok(s);
    }
    let config = &crate::cli::config().context;
    let gate = Arc::new(
        PolicyGate::load(policies).with_context(|| format!("loading policies {}", policies.display()))?,
    );
    let scoring = Scoring::from_config(config)?;
    let embedder: Arc<dyn embed::Embedder> = Arc::from(embed::from_config(config)?);
    let vectors = vector_index(journal.reader().dir())?;
    let service = Arc::new(ContextService::open(
        journal,
        gate,
        embedder,
        scoring,
        Some(vectors),
    )?);
    services.push((key, Arc::downgrade(&service)));
    Ok(service)
}

fn print(json: bool, value: &serde_json::Value, human: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{human}");
    }
}

/// `stele context …`.
#[allow(clippy::too_many_lines)] // one arm per subcommand
pub fn run(data: &Path, cmd: ContextCmd) -> Result<ExitCode> {
    let rt = runtime()?;
    let journal = open_writer(data)?;
    match cmd {
        ContextCmd::Store {
            agent,
            content,
            memory_type,
            level,
            id,
            tags,
            importance,
            common,
        } => {
            let req = requester(data, &journal, &agent)?;
            let svc = service(journal, &common.policies)?;
            let new = NewItem {
                id,
                memory_type: MemoryType::parse(&memory_type)?,
                level: AccessLevel::parse(&level)?,
                content,
                tags,
                importance_permille: u32::try_from(permille("--importance", importance, 0.0)?)?,
                session: String::new(),
            };
            let id = rt.block_on(svc.store(&req, new))?;
            print(
                common.json,
                &serde_json::json!({"agent": agent, "id": id}),
                &format!("stored {agent}/{id}"),
            );
        }
        ContextCmd::Show {
            agent,
            memory_type,
            common,
        } => {
            let svc = service(journal, &common.policies)?;
            let live = rt.block_on(svc.live());
            let now = now_ms();
            let mut items: Vec<_> = live
                .store
                .agents
                .get(&agent)
                .map(|a| {
                    a.items
                        .values()
                        .filter(|i| memory_type.as_ref().is_none_or(|t| &i.memory_type == t))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            items.sort_by_key(|i| std::cmp::Reverse(i.stored_seq));
            if common.json {
                let v: Vec<_> = items
                    .iter()
                    .map(|i| {
                        let mut v = serde_json::to_value(i).unwrap_or_default();
                        v["importance"] = serde_json::json!(svc.scoring().importance(i, now));
                        v
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"agent": agent, "seq": live.seq.0, "items": v})
                );
            } else {
                if items.is_empty() {
                    println!("{agent} has no live context items");
                }
                for i in &items {
                    println!(
                        "{:<12} {:<16} {:<12} imp {:.2}  acc {:<3} {}",
                        i.id,
                        i.memory_type,
                        i.level,
                        svc.scoring().importance(i, now),
                        i.accesses,
                        stele_engine::orga::bounded(&i.content.replace('\n', " "), 80)
                    );
                }
            }
        }
        ContextCmd::Search {
            agent,
            query,
            mode,
            limit,
            from,
            to,
            types,
            keyword_weight,
            common,
        } => {
            let req = requester(data, &journal, &agent)?;
            let svc = service(journal, &common.policies)?;
            let mut q = Query::new(&query, Mode::parse(&mode)?, now_ms());
            q.limit = limit;
            q.from_ms = from.as_deref().map(|t| parse_time("from", t)).transpose()?;
            q.to_ms = to.as_deref().map(|t| parse_time("to", t)).transpose()?;
            for t in &types {
                q.types.push(MemoryType::parse(t)?.name().to_owned());
            }
            q.keyword_weight = keyword_weight;
            let found = rt.block_on(svc.search(&req, &q))?;
            if common.json {
                println!("{}", serde_json::to_value(&found)?);
            } else {
                if let Some(n) = &found.note {
                    eprintln!("note: {n}");
                }
                if found.hits.is_empty() {
                    println!("no results");
                }
                for (i, h) in found.hits.iter().enumerate() {
                    println!(
                        "{:>2}. {:<24} {:.3}  {}",
                        i + 1,
                        h.key,
                        h.score,
                        stele_engine::orga::bounded(&h.content.replace('\n', " "), 80)
                    );
                }
            }
        }
        ContextCmd::Update {
            agent,
            item,
            content,
            importance,
            memory_type,
            common,
        } => {
            let req = requester(data, &journal, &agent)?;
            let svc = service(journal, &common.policies)?;
            let changes = Changes {
                content,
                importance_permille: importance
                    .map(|i| permille("--importance", i, 0.0).and_then(|p| Ok(u32::try_from(p)?)))
                    .transpose()?,
                memory_type: memory_type.as_deref().map(MemoryType::parse).transpose()?,
            };
            rt.block_on(svc.update(&req, &agent, &item, changes))?;
            print(
                common.json,
                &serde_json::json!({"updated": format!("{agent}/{item}")}),
                &format!("updated {agent}/{item}"),
            );
        }
        ContextCmd::Feedback {
            agent,
            item,
            score,
            common,
        } => {
            let Some((owner, id)) = item.split_once('/') else {
                bail!("item {item:?}: give it as owner/id");
            };
            let req = requester(data, &journal, &agent)?;
            let svc = service(journal, &common.policies)?;
            rt.block_on(svc.feedback(&req, owner, id, permille("score", score, -1.0)?))?;
            print(
                common.json,
                &serde_json::json!({"feedback": item, "score": score}),
                &format!("feedback {score} on {item}"),
            );
        }
        ContextCmd::Share {
            agent,
            item,
            with,
            level,
            common,
        } => {
            let req = requester(data, &journal, &agent)?;
            let svc = service(journal, &common.policies)?;
            let level = AccessLevel::parse(&level)?;
            rt.block_on(svc.share(&req, &item, &with, level))?;
            print(
                common.json,
                &serde_json::json!({"shared": format!("{agent}/{item}"), "with": with, "level": level.name()}),
                &format!("shared {agent}/{item} with {with} ({level})"),
            );
        }
        ContextCmd::Archive {
            agent,
            before,
            common,
        } => {
            let req = requester(data, &journal, &agent)?;
            let svc = service(journal, &common.policies)?;
            let before = before.as_deref().map(|t| parse_time("before", t)).transpose()?;
            let n = rt.block_on(svc.archive(&req, before, now_ms()))?;
            print(
                common.json,
                &serde_json::json!({"agent": agent, "archived": n}),
                &format!("archived {n} items of {agent}"),
            );
        }
        ContextCmd::Stats { agent, common } => {
            let svc = service(journal, &common.policies)?;
            let s = rt.block_on(svc.stats(&agent, now_ms()))?;
            if common.json {
                println!("{}", serde_json::to_value(&s)?);
            } else {
                println!(
                    "{agent}: {} items, {} bytes, {} embedded, mean importance {:.2}",
                    s.items, s.bytes, s.embedded, s.mean_importance
                );
                for (t, n) in &s.by_type {
                    println!("  {t:<16} {n}");
                }
                println!("  eligible for archiving: {}", s.eligible_for_archive);
                println!(
                    "  shared by {agent}: {}, shared with {agent}: {}",
                    s.grants_given, s.shared_with_me
                );
                println!(
                    "  archives: {} ({} items, {} bytes → {} compressed)",
                    s.archives, s.archived_items, s.archived_bytes, s.archived_compressed_bytes
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The knowledge bridge of one reasoning run: its tools answer
/// `recall_knowledge` and `store_knowledge` from the context store (the
/// model sees them when the agent's tool profile matches their names), and
/// what the run learned is stored as episodic memory when it ends.
#[derive(Debug)]
pub struct Bridge {
    service: Arc<ContextService>,
    requester: Requester,
}

/// Puts the knowledge tools in front of `driver`'s tools and into `spec`.
pub fn bridge(
    journal: &stele_journal::Journal,
    policies: &Path,
    def: &stele_engine::AgentDefinition,
    run: &str,
    mut driver: stele_engine::reasoning::Driver,
    mut spec: stele_engine::orga::RunSpec,
) -> Result<(
    stele_engine::reasoning::Driver,
    stele_engine::orga::RunSpec,
    Bridge,
)> {
    use stele_engine::context::rag;
    let service = service(journal.clone(), policies)?;
    let requester = Requester {
        agent: driver.agent.clone(),
        priority: driver.priority.clone(),
    };
    let patterns = match &def.runs {
        stele_engine::Runs::Reasoning { tools, .. } if !tools.is_empty() => tools.clone(),
        _ => vec!["*".to_owned()],
    };
    spec.tools.extend(rag::specs().into_iter().filter(|t| {
        patterns
            .iter()
            .any(|p| stele_engine::tools::glob_match(p, &t.name))
    }));
    driver.tools = Arc::new(rag::KnowledgeTools {
        service: service.clone(),
        requester: requester.clone(),
        run: run.to_owned(),
        inner: driver.tools.clone(),
    });
    Ok((driver, spec, Bridge { service, requester }))
}

/// The knowledge relevant to a run's `input`, recalled before its first
/// reasoning step (the RAG pipeline, within the default token budget) as a
/// `ContextHydrated` fact (`knowledge:<agent>`, the BLAKE3 and size of
/// what the model sees). `None` when nothing matches; a failed recall is
/// reported, not fatal (the run goes on without it). The search itself is
/// journaled on the agent's `context:` stream.
pub async fn recalled(
    bridge: &Bridge,
    run: &str,
    input: &str,
    now_ms: u64,
) -> Option<stele_journal::EventBody> {
    use stele_engine::context::rag;
    match rag::recall(
        &bridge.service,
        &bridge.requester,
        input,
        rag::RECALL_ON_START,
        rag::DEFAULT_BUDGET_TOKENS,
        now_ms,
    )
    .await
    {
        Ok((_, a)) if !a.used.is_empty() => Some(stele_journal::EventBody::ContextHydrated {
            run: run.to_owned(),
            reference: format!("{}{}", rag::KNOWLEDGE_REFERENCE, bridge.requester.agent),
            blake3: blake3::hash(a.text.as_bytes()).to_hex().to_string(),
            size_bytes: u64::try_from(a.text.len()).unwrap_or(u64::MAX),
            content: a.text,
        }),
        Ok(_) => None,
        Err(e) => {
            eprintln!("warning: {run}: no knowledge recalled for the input: {e}");
            None
        }
    }
}

/// Stores what a finished run learned as an episodic memory of its agent
/// (a parked run has not finished: nothing yet). A failure is reported,
/// not fatal: the run itself is journaled.
pub async fn learned_async(bridge: &Bridge, stop: &stele_engine::reasoning::Stop, input: &str) {
    let stele_engine::reasoning::Stop::Finished(f) = stop else {
        return;
    };
    let stored = stele_engine::context::rag::record_run(
        &bridge.service,
        &bridge.requester,
        &f.run,
        input,
        &f.outcome,
        &f.answer,
    )
    .await;
    if let Err(e) = stored {
        eprintln!("warning: {}: the run's learnings were not stored: {e}", f.run);
    }
}
