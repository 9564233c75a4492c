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
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use stele_engine::config::VectorBackend;
use stele_engine::context::ops::Requester;
use stele_engine::context::score::Scoring;
use stele_engine::context::vector::{ExactIndex, VectorIndex};
use stele_engine::context::{ContextService, embed};
use stele_engine::policy::{LiveGate, PolicyGate};

use crate::client::Daemon;
use crate::context_ops::{
    self, ArchiveRequest, FeedbackRequest, Op, SearchRequest, ShareRequest, StoreRequest, UpdateRequest,
};
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
    /// The reader's clock (RFC 3339 or ms since the epoch; default the
    /// system clock): importance, recency and retention are computed as of
    /// it, and a search journals it with the access.
    #[arg(long, global = true)]
    pub now: Option<String>,
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
/// once none does. `gate`: the live set the service decides with (the
/// daemon's, which a policy reload swaps; a run's driver gate); `None`
/// loads `policies`. The first opener's gate serves the others.
pub fn service(
    journal: stele_journal::Journal,
    policies: &Path,
    gate: Option<LiveGate>,
) -> Result<Arc<ContextService>> {
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
    let gate = match gate {
        Some(g) => g,
        None => PolicyGate::load(policies)
            .with_context(|| format!("loading policies {}", policies.display()))?
            .into(),
    };
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

/// A command as the operation it runs, and its options.
fn op_of(cmd: ContextCmd) -> (String, Op, Common) {
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
        } => (
            agent,
            Op::Store(StoreRequest {
                content,
                memory_type,
                level,
                id,
                tags,
                importance,
            }),
            common,
        ),
        ContextCmd::Show {
            agent,
            memory_type,
            common,
        } => (
            agent,
            Op::Show {
                memory_type,
                now_ms: None,
            },
            common,
        ),
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
        } => (
            agent,
            Op::Search(SearchRequest {
                query,
                mode,
                limit,
                from,
                to,
                types,
                keyword_weight,
                now_ms: None,
            }),
            common,
        ),
        ContextCmd::Update {
            agent,
            item,
            content,
            importance,
            memory_type,
            common,
        } => (
            agent,
            Op::Update {
                item,
                changes: UpdateRequest {
                    content,
                    importance,
                    memory_type,
                },
            },
            common,
        ),
        ContextCmd::Feedback {
            agent,
            item,
            score,
            common,
        } => (agent, Op::Feedback(FeedbackRequest { item, score }), common),
        ContextCmd::Share {
            agent,
            item,
            with,
            level,
            common,
        } => (
            agent,
            Op::Share {
                item,
                grant: ShareRequest { with, level },
            },
            common,
        ),
        ContextCmd::Archive {
            agent,
            before,
            common,
        } => (
            agent,
            Op::Archive(ArchiveRequest { before, now_ms: None }),
            common,
        ),
        ContextCmd::Stats { agent, common } => (agent, Op::Stats { now_ms: None }, common),
    }
}

/// Sets the reader's clock of `op` (the CLI's, or `--now`).
fn at_clock(op: &mut Op, now: u64) {
    match op {
        Op::Show { now_ms, .. } | Op::Stats { now_ms } => *now_ms = Some(now),
        Op::Search(s) => s.now_ms = Some(now),
        Op::Archive(a) => a.now_ms = Some(now),
        Op::Store(_) | Op::Update { .. } | Op::Feedback(_) | Op::Share { .. } => {}
    }
}

/// `op` of `agent` through a running daemon: the same operation on its
/// context service (and its policy set). Returns the document and its text.
fn via(d: &Daemon, agent: &str, op: &Op) -> Result<(serde_json::Value, String)> {
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let base = format!("/v1/context/{}", enc(agent));
    let json = "application/json";
    let answer = match op {
        Op::Store(s) => d.post(&format!("{base}/items"), json, &serde_json::to_string(s)?)?,
        Op::Show { memory_type, now_ms } => {
            let mut query = vec![];
            if let Some(t) = memory_type {
                query.push(format!("type={}", enc(t)));
            }
            if let Some(n) = now_ms {
                query.push(format!("now_ms={n}"));
            }
            d.get(&format!("{base}?{}", query.join("&")))?
        }
        Op::Search(s) => d.post(&format!("{base}/search"), json, &serde_json::to_string(s)?)?,
        Op::Update { item, changes } => d.patch(
            &format!("{base}/items/{}", enc(item)),
            json,
            &serde_json::to_string(changes)?,
        )?,
        Op::Feedback(f) => d.post(&format!("{base}/feedback"), json, &serde_json::to_string(f)?)?,
        Op::Share { item, grant } => d.post(
            &format!("{base}/items/{}/share", enc(item)),
            json,
            &serde_json::to_string(grant)?,
        )?,
        Op::Archive(a) => d.post(&format!("{base}/archive"), json, &serde_json::to_string(a)?)?,
        Op::Stats { now_ms } => d.get(&format!(
            "{base}/stats{}",
            now_ms.map(|n| format!("?now_ms={n}")).unwrap_or_default()
        ))?,
    };
    answer.ok_text()
}

/// `stele context …`. With `stele up` running the operation is the
/// daemon's (`/v1/context/…`, its policy set); otherwise this process opens
/// the journal and runs the same operation. The output is the same.
pub fn run(data: &Path, cmd: ContextCmd) -> Result<ExitCode> {
    let (agent, mut op, common) = op_of(cmd);
    let now = match &common.now {
        Some(t) => context_ops::parse_time("now", t)?,
        None => context_ops::now_ms(),
    };
    at_clock(&mut op, now);
    let (value, text) = if let Some(d) = Daemon::find(data) {
        via(&d, &agent, &op)?
    } else {
        let rt = runtime()?;
        let journal = open_writer(data)?;
        let requester = if op.needs_requester() {
            Some(context_ops::requester(data, &journal.reader(), &agent)?)
        } else {
            None
        };
        let svc = service(journal, &common.policies, None)?;
        let v = rt.block_on(context_ops::execute(&svc, &agent, requester.as_ref(), op.clone()))?;
        let text = v.to_string();
        (v, text)
    };
    if common.json {
        println!("{text}");
    } else {
        let (out, note) = context_ops::render(&op, &value);
        if let Some(n) = note {
            eprintln!("note: {n}");
        }
        println!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The knowledge bridge of one reasoning run: its tools answer
/// `recall_knowledge` and `store_knowledge` from the context store (the
/// model sees them when the agent's tool profile matches their names),
/// knowledge relevant to its input is recalled before its first step
/// ([`recalled`]) and, through its driver's `StepRecall`, what is relevant
/// to each later step and new to the run before that step; what the run
/// learned is stored as episodic memory when it ends ([`learned_async`],
/// also after an approval or a timeout let it go on to its end).
#[derive(Debug, Clone)]
pub struct Bridge {
    service: Arc<ContextService>,
    requester: Requester,
}

/// The knowledge a run of `driver`'s agent is given before each step after
/// the first (a fork's steps past the journaled prefix).
///
/// # Errors
/// The context service cannot be opened.
pub fn step_recall(
    journal: &stele_journal::Journal,
    policies: &Path,
    driver: &stele_engine::reasoning::Driver,
) -> Result<Arc<dyn stele_engine::reasoning::StepKnowledge>> {
    Ok(Arc::new(stele_engine::context::rag::StepRecall {
        service: service(journal.clone(), policies, Some(driver.gate.clone()))?,
        requester: Requester {
            agent: driver.agent.clone(),
            priority: driver.priority.clone(),
        },
    }))
}

/// Puts the knowledge tools in front of `driver`'s tools and into `spec`,
/// and the agent's knowledge before each later step into `driver`.
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
    let service = service(journal.clone(), policies, Some(driver.gate.clone()))?;
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
    driver.knowledge = Some(Arc::new(rag::StepRecall {
        service: service.clone(),
        requester: requester.clone(),
    }));
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
