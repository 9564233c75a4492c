//! The vector index: a trait any backend implements (the exact index here,
//! the LanceDB table in the `stele-vectors` crate), and [`ExactIndex`], an
//! exact cosine search over every vector held in memory — the reference
//! that ANN recall is measured against and the fallback when no other
//! backend is built.
//!
//! An index is a derived index: it is folded from `EmbeddingComputed`
//! (upserts) and `ContextArchived` (removals) facts and records the seq it
//! has reached, so it is rebuilt from the journal without calling a model.

use std::collections::HashMap;

use super::ContextError;

/// One row: an item's vector and the metadata searches filter on.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorRow {
    /// `owner/id`.
    pub key: String,
    /// The owner.
    pub owner: String,
    /// The memory type.
    pub memory_type: String,
    /// The vector (any length; the index normalizes it).
    pub vector: Vec<f32>,
}

/// A vector index.
pub trait VectorIndex: Send + Sync + std::fmt::Debug {
    /// The backend's name (`exact`, `lancedb`).
    fn backend(&self) -> &'static str;

    /// Inserts or replaces rows (one batch).
    ///
    /// # Errors
    /// The backend failed (e.g. its table is gone).
    fn upsert(&mut self, rows: Vec<VectorRow>) -> Result<(), ContextError>;

    /// Removes rows by key.
    ///
    /// # Errors
    /// The backend failed.
    fn remove(&mut self, keys: &[String]) -> Result<(), ContextError>;

    /// The `k` rows most similar to `query` (cosine, best first) among those
    /// owned by one of `owners` (empty: any) that `allow` accepts.
    ///
    /// # Errors
    /// The backend failed.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        owners: &[String],
        allow: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<(String, f32)>, ContextError>;

    /// Rows held.
    fn len(&self) -> usize;

    /// Whether it holds no row.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last seq folded into it.
    fn seq(&self) -> u64;

    /// The hash of the event at [`seq`](Self::seq), when the index
    /// persists across restarts: the service checks it against the journal
    /// before trusting what the index holds.
    fn seq_hash(&self) -> Option<[u8; 32]> {
        None
    }

    /// Whether other processes (other nodes following the same journal)
    /// write to the same index, as with a Qdrant collection. A shared
    /// index may be ahead of this process's copy of the journal; it is
    /// then trusted rather than rebuilt, and cleared only when the event at
    /// its seq is here and has another hash.
    fn shared(&self) -> bool {
        false
    }

    /// Records the last event folded into it (its seq and hash).
    ///
    /// # Errors
    /// The backend failed to persist it.
    fn set_seq(&mut self, seq: u64, hash: [u8; 32]) -> Result<(), ContextError>;

    /// Forgets every row and the seq (the index is then rebuilt from the
    /// journal).
    ///
    /// # Errors
    /// The backend failed.
    fn clear(&mut self) -> Result<(), ContextError>;

    /// Makes what was folded so far durable (a no-op for an index in
    /// memory).
    ///
    /// # Errors
    /// The backend failed.
    fn flush(&mut self) -> Result<(), ContextError> {
        Ok(())
    }
}

/// Normalizes `v` to unit length (a zero vector stays zero).
#[must_use]
pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

/// The dot product (cosine of normalized vectors); 0 for different lengths.
#[must_use]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Decodes a journaled vector (f32 little-endian).
///
/// # Errors
/// A length that is not a multiple of 4.
pub fn decode(bytes: &[u8]) -> Result<Vec<f32>, ContextError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ContextError::Invalid {
            what: "embedding",
            reason: format!("{} bytes is not a whole number of f32", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Encodes a vector for the journal.
#[must_use]
pub fn encode(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Exact cosine search over vectors in memory.
#[derive(Debug, Default, Clone)]
pub struct ExactIndex {
    rows: HashMap<String, (String, Vec<f32>)>,
    seq: u64,
}

impl ExactIndex {
    /// An empty index.
    #[must_use]
    pub fn new() -> ExactIndex {
        ExactIndex::default()
    }
}

/// The `k` best of `scored`, best first, ties by key.
#[must_use]
pub fn top_k(mut scored: Vec<(String, f32)>, k: usize) -> Vec<(String, f32)> {
    let cmp = |a: &(String, f32), b: &(String, f32)| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    if scored.len() > k && k > 0 {
        scored.select_nth_unstable_by(k - 1, cmp);
        scored.truncate(k);
    }
    scored.sort_by(cmp);
    scored.truncate(k);
    scored
}

impl VectorIndex for ExactIndex {
    fn backend(&self) -> &'static str {
        "exact"
    }

    fn upsert(&mut self, rows: Vec<VectorRow>) -> Result<(), ContextError> {
        for r in rows {
            self.rows.insert(r.key, (r.owner, normalized(r.vector)));
        }
        Ok(())
    }

    fn remove(&mut self, keys: &[String]) -> Result<(), ContextError> {
        for k in keys {
            self.rows.remove(k);
        }
        Ok(())
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        owners: &[String],
        allow: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<(String, f32)>, ContextError> {
        let q = normalized(query.to_vec());
        // Score everything (no allocation per row), then check `allow` in
        // descending score order until k rows pass.
        let mut scored: Vec<(f32, &String)> = self
            .rows
            .iter()
            .filter(|(_, (owner, _))| owners.is_empty() || owners.contains(owner))
            .map(|(key, (_, v))| (dot(&q, v), key))
            .collect();
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        Ok(scored
            .into_iter()
            .filter(|(_, key)| allow(key))
            .take(k)
            .map(|(s, key)| (key.clone(), s))
            .collect())
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn set_seq(&mut self, seq: u64, _hash: [u8; 32]) -> Result<(), ContextError> {
        self.seq = seq;
        Ok(())
    }

    fn clear(&mut self) -> Result<(), ContextError> {
        *self = ExactIndex::default();
        Ok(())
    }
}
