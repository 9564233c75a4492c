//! The context store: every agent's memory and knowledge items (six memory
//! types, four access levels), the sharing grants between agents, the
//! archives, and per-item access counts, last access and feedback — folded
//! from `ContextStored`, `ContextUpdated`, `ContextAccessed`,
//! `ContextFeedbackGiven`, `ContextShared`, `ContextArchived` and
//! `EmbeddingComputed`.
//!
//! Times are the journal's: an item's `stored_ms` is its event's `at`, an
//! access's time is the `now_ms` the reader journaled. Nothing here scores,
//! searches or checks policies (that is `stele_engine::context`); the
//! archived items' compressed bytes stay in their `ContextArchived` event
//! and only its seq and sizes are kept here.

use imbl::{OrdMap, OrdSet, Vector};

use stele_journal::{ArchivedEventBody, EventRef};

use crate::Projection;

/// The memory types, as journaled.
pub const MEMORY_TYPES: [&str; 6] = [
    "short_term",
    "long_term",
    "working",
    "episodic",
    "semantic",
    "shared_knowledge",
];

/// The access levels, as journaled, least restrictive first.
pub const LEVELS: [&str; 4] = ["public", "restricted", "confidential", "secret"];

/// The key of an item across agents: `owner/id`.
#[must_use]
pub fn item_key(owner: &str, id: &str) -> String {
    format!("{owner}/{id}")
}

/// One item of the live store.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// The owning agent.
    pub owner: String,
    /// Its id (unique per owner).
    pub id: String,
    /// One of [`MEMORY_TYPES`].
    pub memory_type: String,
    /// One of [`LEVELS`].
    pub level: String,
    /// The text.
    pub content: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Base importance, thousandths.
    pub importance_permille: u32,
    /// The session or run it came from (empty: none).
    pub session: String,
    /// When it was stored (the event's time), ms since the Unix epoch.
    pub stored_ms: u64,
    /// The `ContextStored` event.
    pub stored_seq: u64,
    /// The last `ContextUpdated` (0: never updated).
    pub updated_seq: u64,
    /// Journaled reads of it.
    pub accesses: u64,
    /// The reader's clock at the last read (0: never read).
    pub last_access_ms: u64,
    /// Sum of the feedback given, thousandths.
    pub feedback_permille: i64,
    /// The embedder and the seq of its last `EmbeddingComputed`, if any.
    pub embedding: Option<(String, u64)>,
}

impl Item {
    /// Bytes the item takes in the store's accounting: id, content and tags.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        let tags: usize = self.tags.iter().map(String::len).sum();
        (self.id.len() + self.content.len() + tags) as u64
    }
}

/// One `ContextArchived`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveEntry {
    /// The event holding the compressed items.
    pub seq: u64,
    /// The cut-off it archived before, ms.
    pub before_ms: u64,
    /// How many items.
    pub items: u64,
    /// Their JSON size.
    pub original_bytes: u64,
    /// Compressed size.
    pub compressed_bytes: u64,
}

/// A grant: `with` may read an item at `level`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// The access level of the grant.
    pub level: String,
    /// The `ContextShared` event.
    pub seq: u64,
}

/// One agent's context.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentContext {
    /// Live items by id.
    pub items: OrdMap<String, Item>,
    /// The retrieval index: every live item as `(stored_seq, id)`, so the
    /// newest items are the last entries and "the N newest" is a walk from
    /// the end, not a pass over `items`. Kept by the fold with `items`.
    pub by_seq: OrdSet<(u64, String)>,
    /// Archives, oldest first.
    pub archives: Vector<ArchiveEntry>,
    /// Sum of the live items' [`Item::size_bytes`].
    pub bytes: u64,
    /// Items ever stored (numbers the next id, `m-<stored + 1>`).
    pub stored: u64,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContextStore {
    /// Agents by name.
    pub agents: OrdMap<String, AgentContext>,
    /// Grants by item key (`owner/id`), then grantee.
    pub grants: OrdMap<String, OrdMap<String, Grant>>,
    /// The reverse of `grants`: grantee → item keys.
    pub shared_with: OrdMap<String, OrdSet<String>>,
    /// Keys of live items whose level is `public`.
    pub public: OrdSet<String>,
    /// The latest journal time seen by the store, ms (a default "now").
    pub last_ms: u64,
}

impl ContextStore {
    /// A live item.
    #[must_use]
    pub fn item(&self, owner: &str, id: &str) -> Option<&Item> {
        self.agents.get(owner)?.items.get(id)
    }

    /// A live item by key (`owner/id`).
    #[must_use]
    pub fn item_by_key(&self, key: &str) -> Option<&Item> {
        let (owner, id) = key.split_once('/')?;
        self.item(owner, id)
    }

    /// The grant of `key` to `agent`, if any.
    #[must_use]
    pub fn grant(&self, key: &str, agent: &str) -> Option<&Grant> {
        self.grants.get(key)?.get(agent)
    }

    /// Live items in the store, all agents.
    #[must_use]
    pub fn len(&self) -> usize {
        self.agents.values().map(|a| a.items.len()).sum()
    }

    /// Whether no agent has a live item.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&mut self, owner: &str, id: &str) -> Option<Item> {
        let a = self.agents.get_mut(owner)?;
        let old = a.items.remove(id)?;
        a.by_seq.remove(&(old.stored_seq, old.id.clone()));
        a.bytes = a.bytes.saturating_sub(old.size_bytes());
        let key = item_key(owner, id);
        self.public.remove(&key);
        if let Some(grantees) = self.grants.remove(&key) {
            for g in grantees.keys() {
                if let Some(set) = self.shared_with.get_mut(g) {
                    set.remove(&key);
                }
            }
        }
        Some(old)
    }
}

fn ms_of(at_ns: i64) -> u64 {
    u64::try_from(at_ns / 1_000_000).unwrap_or(0)
}

impl Projection for ContextStore {
    const NAME: &'static str = "context";
    /// 2: [`AgentContext::by_seq`] (older snapshots lack it and are refolded).
    const VERSION: u32 = 2;

    #[allow(clippy::too_many_lines)] // one arm per fact
    fn apply(&mut self, e: &EventRef) {
        let at_ms = ms_of(e.at());
        self.last_ms = self.last_ms.max(at_ms);
        match e.body() {
            ArchivedEventBody::ContextStored { agent, item } => {
                let (owner, id) = (agent.as_str(), item.id.as_str());
                // A second store of an id replaces the first (deciders
                // refuse it; the fold stays total).
                let _ = self.remove(owner, id);
                let new = Item {
                    owner: owner.to_owned(),
                    id: id.to_owned(),
                    memory_type: item.memory_type.to_string(),
                    level: item.level.to_string(),
                    content: item.content.to_string(),
                    tags: item.tags.iter().map(ToString::to_string).collect(),
                    importance_permille: item.importance_permille.to_native(),
                    session: item.session.to_string(),
                    stored_ms: at_ms,
                    stored_seq: e.seq().0,
                    ..Item::default()
                };
                if new.level == "public" {
                    self.public.insert(item_key(owner, id));
                }
                let a = self.agents.entry(owner.to_owned()).or_default();
                a.stored += 1;
                a.bytes += new.size_bytes();
                a.by_seq.insert((new.stored_seq, id.to_owned()));
                a.items.insert(id.to_owned(), new);
            }
            ArchivedEventBody::ContextUpdated {
                agent,
                item,
                content,
                importance_permille,
                memory_type,
            } => {
                if let Some(a) = self.agents.get_mut(agent.as_str())
                    && let Some(it) = a.items.get_mut(item.as_str())
                {
                    let before = it.size_bytes();
                    if let Some(c) = content.as_ref() {
                        it.content = c.to_string();
                    }
                    if let Some(i) = importance_permille.as_ref() {
                        it.importance_permille = i.to_native();
                    }
                    if let Some(t) = memory_type.as_ref() {
                        it.memory_type = t.to_string();
                    }
                    it.updated_seq = e.seq().0;
                    a.bytes = a.bytes.saturating_sub(before) + it.size_bytes();
                }
            }
            ArchivedEventBody::ContextAccessed { items, now_ms, .. } => {
                let now = now_ms.to_native();
                for key in items.iter() {
                    let Some((owner, id)) = key.as_str().split_once('/') else {
                        continue;
                    };
                    if let Some(it) = self.agents.get_mut(owner).and_then(|a| a.items.get_mut(id)) {
                        it.accesses += 1;
                        it.last_access_ms = it.last_access_ms.max(now);
                    }
                }
            }
            ArchivedEventBody::ContextFeedbackGiven {
                agent,
                item,
                score_permille,
            } => {
                if let Some(it) = self
                    .agents
                    .get_mut(agent.as_str())
                    .and_then(|a| a.items.get_mut(item.as_str()))
                {
                    it.feedback_permille = it
                        .feedback_permille
                        .saturating_add(i64::from(score_permille.to_native()));
                }
            }
            ArchivedEventBody::ContextShared {
                agent,
                item,
                with,
                level,
            } => {
                if self.item(agent.as_str(), item.as_str()).is_none() {
                    return;
                }
                let key = item_key(agent.as_str(), item.as_str());
                self.grants.entry(key.clone()).or_default().insert(
                    with.to_string(),
                    Grant {
                        level: level.to_string(),
                        seq: e.seq().0,
                    },
                );
                self.shared_with.entry(with.to_string()).or_default().insert(key);
            }
            ArchivedEventBody::ContextArchived { agent, archive } => {
                let mut n = 0;
                for id in archive.items.iter() {
                    if self.remove(agent.as_str(), id.as_str()).is_some() {
                        n += 1;
                    }
                }
                let entry = ArchiveEntry {
                    seq: e.seq().0,
                    before_ms: archive.before_ms.to_native(),
                    items: n,
                    original_bytes: archive.original_bytes.to_native(),
                    compressed_bytes: archive.compressed.len() as u64,
                };
                self.agents
                    .entry(agent.to_string())
                    .or_default()
                    .archives
                    .push_back(entry);
            }
            ArchivedEventBody::EmbeddingComputed {
                agent, item, model, ..
            } => {
                if let Some(it) = self
                    .agents
                    .get_mut(agent.as_str())
                    .and_then(|a| a.items.get_mut(item.as_str()))
                {
                    it.embedding = Some((model.to_string(), e.seq().0));
                }
            }
            _ => {}
        }
    }
}
