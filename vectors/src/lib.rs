//! Vector index backends of the context store, each implementing
//! [`stele_engine::context::vector::VectorIndex`] behind a cargo feature:
//! [`LanceIndex`] (feature `lancedb`, embedded; the default backend of the
//! `stele` binary) and, for multi-node deployments, [`QdrantIndex`] on a
//! Qdrant server (feature `qdrant`). Both are derived indexes: their rows
//! come only from journaled `EmbeddingComputed` and `ContextArchived`
//! facts, and they record the seq and hash of the last event folded in, so
//! the context service can check them against the journal and rebuild them
//! from it without calling a model.

#[cfg(any(feature = "lancedb", feature = "qdrant"))]
mod pending;

#[cfg(feature = "lancedb")]
mod lance;

#[cfg(feature = "lancedb")]
pub use lance::{AnnKind, LanceIndex, MARKER, Options, TABLE};

#[cfg(feature = "qdrant")]
mod qdrant;

#[cfg(feature = "qdrant")]
pub use qdrant::{
    DEFAULT_COLLECTION, FLOATS_PER_REQUEST, MARKER_ID, MARKER_SUFFIX, QdrantIndex, QdrantOptions, point_id,
};
