//! The context and knowledge system (the seed's Agent Context Manager, RAG
//! engine and vector search) over the `context` projection
//! (`stele_projections::context::ContextStore`).
//!
//! - [`ops`]: the decider — store, update, share, feedback, archive and the
//!   journaled reads — every change a fact, every access checked by the
//!   Cedar gate at the `data_access` point (`read_data`/`write_data` on a
//!   `Data` whose `classification` is the access level);
//! - [`score`]: importance from journaled facts only (base, log-scaled
//!   accesses, exponential recency per memory type, feedback, type weights),
//!   against an explicit `now`;
//! - [`search`]: the keyword (BM25) index, temporal, similarity and hybrid
//!   search, filtered by agent scope and access level; similarity falls
//!   back to keyword when the vector index is unavailable;
//! - [`vector`]: the vector index trait and the exact (brute-force cosine)
//!   index, folded from `EmbeddingComputed` facts;
//! - [`embed`]: embedders as effect runners — the deterministic local
//!   feature-hashing embedder and an OpenAI-compatible `/embeddings` client;
//! - [`rag`]: query analysis, retrieval, ranking and context assembly within
//!   a token budget, and the knowledge bridge: the `recall_knowledge` and
//!   `store_knowledge` tools of the reasoning loop;
//! - [`service`]: [`service::ContextService`], which owns the live indexes,
//!   appends the facts to a journal and folds them in.
//!
//! Not here: the fold itself (projections), the CLI (`api/src/context_cmd.rs`),
//! the LanceDB table (the `stele-vectors` crate).

pub mod embed;
pub mod ops;
pub mod rag;
pub mod score;
pub mod search;
pub mod service;
pub mod vector;

use std::fmt;

pub use ops::{NewItem, Requester};
pub use search::{Hit, Mode, Query};
pub use service::ContextService;

/// The six memory types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryType {
    /// Recent interactions and immediate context.
    ShortTerm,
    /// Persistent knowledge and learned patterns.
    LongTerm,
    /// Active processing and temporary state.
    Working,
    /// Experiences with events and outcomes.
    Episodic,
    /// Concepts, relationships, structured knowledge.
    Semantic,
    /// Knowledge meant for other agents.
    SharedKnowledge,
}

impl MemoryType {
    /// Every type, in the journaled order of `stele_projections::context::MEMORY_TYPES`.
    pub const ALL: [MemoryType; 6] = [
        MemoryType::ShortTerm,
        MemoryType::LongTerm,
        MemoryType::Working,
        MemoryType::Episodic,
        MemoryType::Semantic,
        MemoryType::SharedKnowledge,
    ];

    /// The journaled name (`short_term`, …).
    #[must_use]
    pub fn name(self) -> &'static str {
        stele_projections::context::MEMORY_TYPES[self as usize]
    }

    /// Parses a journaled name (also accepts `-` for `_`).
    ///
    /// # Errors
    /// [`ContextError::Invalid`] naming the accepted values.
    pub fn parse(s: &str) -> Result<MemoryType, ContextError> {
        let norm = s.replace('-', "_");
        MemoryType::ALL
            .into_iter()
            .find(|t| t.name() == norm)
            .ok_or_else(|| ContextError::Invalid {
                what: "memory type",
                reason: format!(
                    "{s:?} is not one of {}",
                    stele_projections::context::MEMORY_TYPES.join(", ")
                ),
            })
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The four access levels, least restrictive first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessLevel {
    /// Every agent may read it.
    Public,
    /// Its owner and the agents it is shared with.
    Restricted,
    /// Its owner and the agents of high or critical priority it is shared with.
    Confidential,
    /// Its owner alone; never shared.
    Secret,
}

impl AccessLevel {
    /// Every level.
    pub const ALL: [AccessLevel; 4] = [
        AccessLevel::Public,
        AccessLevel::Restricted,
        AccessLevel::Confidential,
        AccessLevel::Secret,
    ];

    /// The journaled name (the `Data` entity's `classification`).
    #[must_use]
    pub fn name(self) -> &'static str {
        stele_projections::context::LEVELS[self as usize]
    }

    /// Parses a journaled name.
    ///
    /// # Errors
    /// [`ContextError::Invalid`] naming the accepted values.
    pub fn parse(s: &str) -> Result<AccessLevel, ContextError> {
        AccessLevel::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| ContextError::Invalid {
                what: "access level",
                reason: format!(
                    "{s:?} is not one of {}",
                    stele_projections::context::LEVELS.join(", ")
                ),
            })
    }
}

impl fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the context system refuses or fails at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// An input was not acceptable.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was wrong.
        what: &'static str,
        /// Why, and what is accepted.
        reason: String,
    },
    /// No such live item.
    #[error("agent {agent} has no context item {item} (list them with `stele context show {agent}`)")]
    NotFound {
        /// The owner.
        agent: String,
        /// The item id.
        item: String,
    },
    /// The id is taken.
    #[error("agent {agent} already has a context item {item}; update it instead")]
    Exists {
        /// The owner.
        agent: String,
        /// The item id.
        item: String,
    },
    /// The policy gate denied the access.
    #[error("{agent} may not {action} {item}: {reason}")]
    Denied {
        /// The agent asking.
        agent: String,
        /// `read_data` or `write_data` (and what for).
        action: String,
        /// The item key.
        item: String,
        /// The gate's reason.
        reason: String,
    },
    /// The embedder failed.
    #[error("embedding: {0}")]
    Embedding(String),
    /// The vector index failed.
    #[error("vector index: {0}")]
    Vector(String),
    /// The journal refused the facts.
    #[error(transparent)]
    Journal(#[from] stele_journal::Error),
}
