//! The vector index on LanceDB: one embedded table
//! (`context_vectors`: `key`, `owner`, `memory_type`, `vector`) in
//! `[context] vector_data_path`, implementing
//! [`stele_engine::context::vector::VectorIndex`].
//!
//! It is a derived index. Rows come only from journaled
//! `EmbeddingComputed` facts (upserts) and `ContextArchived` facts
//! (removals), folded by the context service, so it is rebuilt from the
//! journal without calling a model. Beside the table, `stele-index.json`
//! records the seq and hash of the last event whose effects are in the
//! table; the service checks that hash against the journal on open and
//! rebuilds the index when it does not match (another journal, a restored
//! backup) or when the table is gone.
//!
//! Writes are batched: upserts and removals wait in memory and are
//! committed to LanceDB as one delete plus one append once
//! [`Options::batch_rows`] are waiting, on [`flush`](VectorIndex::flush)
//! and on drop. Waiting rows are searched exactly alongside the table, so
//! an update is visible to the next search at once. A crash loses only
//! waiting rows, which the next open folds again from the journal (upserts
//! and removals are idempotent).
//!
//! Searches use an ANN index once one is built ([`LanceIndex::build_ann`],
//! automatically when the table reaches [`Options::ann_min_rows`]); LanceDB
//! searches rows added since then exactly and merges them in. Cosine
//! distance on unit vectors; the score returned is the cosine similarity.
//!
//! LanceDB is async; this index owns a small tokio runtime and blocks the
//! calling thread on it, so it can be used from sync code and from inside
//! another runtime alike.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use arrow_array::{
    Array, FixedSizeListArray, Float32Array, RecordBatch, RecordBatchIterator, RecordBatchReader, StringArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lancedb::index::Index;
use lancedb::index::vector::{IvfHnswSqIndexBuilder, IvfPqIndexBuilder};
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::{Connection, DistanceType, Table};
use stele_engine::context::ContextError;
use stele_engine::context::vector::{VectorIndex, VectorRow, normalized};

use crate::pending::{Waiting, merged_search};

/// The table's name.
pub const TABLE: &str = "context_vectors";
/// The marker file beside the table.
pub const MARKER: &str = "stele-index.json";

/// Tuning of a [`LanceIndex`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Waiting rows (upserts plus removals) that trigger a commit.
    pub batch_rows: usize,
    /// Table rows from which an ANN index is built automatically (0: never).
    pub ann_min_rows: usize,
    /// IVF partitions probed per search.
    pub nprobes: usize,
    /// Candidates re-ranked with full vectors, as a multiple of `k`
    /// (0: no refinement).
    pub refine_factor: u32,
    /// HNSW search breadth.
    pub ef: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            batch_rows: 4096,
            ann_min_rows: 100_000,
            nprobes: 20,
            refine_factor: 0,
            ef: 64,
        }
    }
}

/// The kind of ANN index [`LanceIndex::build_ann`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnKind {
    /// IVF partitions with an HNSW graph per partition over scalar-quantized
    /// vectors (the default: best recall for its speed).
    IvfHnswSq,
    /// IVF partitions with product quantization (smallest).
    IvfPq,
}

impl AnnKind {
    /// Parses `ivf_hnsw_sq` or `ivf_pq`.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(s: &str) -> Result<AnnKind, ContextError> {
        match s {
            "ivf_hnsw_sq" | "hnsw" => Ok(AnnKind::IvfHnswSq),
            "ivf_pq" | "pq" => Ok(AnnKind::IvfPq),
            other => Err(ContextError::Invalid {
                what: "ANN index kind",
                reason: format!("{other:?} is not one of ivf_hnsw_sq, ivf_pq"),
            }),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    seq: u64,
    hash: String,
}

/// See the crate documentation.
pub struct LanceIndex {
    dir: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    db: Connection,
    table: Option<Table>,
    dim: Option<usize>,
    /// Keys in the table (committed).
    keys: HashSet<String>,
    /// Upserts not committed yet.
    waiting: BTreeMap<String, Waiting>,
    /// Removals not committed yet (keys in the table).
    removed: HashSet<String>,
    seq: u64,
    hash: Option<[u8; 32]>,
    committed_seq: u64,
    has_ann: bool,
    options: Options,
}

impl fmt::Debug for LanceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LanceIndex")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .field("rows", &self.keys.len())
            .field("waiting", &self.waiting.len())
            .field("removed", &self.removed.len())
            .field("seq", &self.seq)
            .field("committed_seq", &self.committed_seq)
            .field("has_ann", &self.has_ann)
            .finish_non_exhaustive()
    }
}

fn lance_err(what: &str) -> impl Fn(lancedb::Error) -> ContextError + '_ {
    move |e| ContextError::Vector(format!("LanceDB {what}: {e}"))
}

fn arrow_err(e: ArrowError) -> ContextError {
    ContextError::Vector(format!("building a LanceDB batch: {e}"))
}

fn schema(dim: usize) -> Result<SchemaRef, ContextError> {
    let dim = i32::try_from(dim)
        .map_err(|_| ContextError::Vector(format!("an embedding of {dim} dimensions is too wide")))?;
    Ok(Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("memory_type", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim),
            false,
        ),
    ])))
}

/// A SQL string literal (single quotes doubled).
fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn in_list(column: &str, values: &[&str]) -> String {
    let list: Vec<String> = values.iter().map(|v| sql_str(v)).collect();
    format!("{column} IN ({})", list.join(", "))
}

impl LanceIndex {
    /// Opens (or creates) the index in `dir`.
    ///
    /// A table without its marker file (or a marker that does not parse)
    /// cannot say what it holds: it is dropped and rebuilt from the journal.
    ///
    /// # Errors
    /// The directory cannot be created, or LanceDB fails.
    pub fn open(dir: &Path, options: Options) -> Result<LanceIndex, ContextError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ContextError::Vector(format!("creating {}: {e}", dir.display())))?;
        let dir = &std::fs::canonicalize(dir)
            .map_err(|e| ContextError::Vector(format!("resolving {}: {e}", dir.display())))?;
        claim(dir);
        let opened = LanceIndex::open_claimed(dir, options);
        if opened.is_err() {
            release(dir);
        }
        opened
    }

    fn open_claimed(dir: &Path, options: Options) -> Result<LanceIndex, ContextError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stele-lancedb")
            .enable_all()
            .build()
            .map_err(|e| ContextError::Vector(format!("starting the LanceDB runtime: {e}")))?;
        let uri = dir
            .to_str()
            .ok_or_else(|| ContextError::Vector(format!("{} is not valid UTF-8", dir.display())))?
            .to_owned();
        let db = block(&rt, async move { lancedb::connect(&uri).execute().await })
            .map_err(lance_err("opening the database"))?;
        let mut index = LanceIndex {
            dir: dir.to_owned(),
            rt: Some(rt),
            db,
            table: None,
            dim: None,
            keys: HashSet::new(),
            waiting: BTreeMap::new(),
            removed: HashSet::new(),
            seq: 0,
            hash: None,
            committed_seq: 0,
            has_ann: false,
            options,
        };
        let names = index.run(|db, _| async move { db.table_names().execute().await })?;
        if !names.iter().any(|n| n == TABLE) {
            index.remove_marker()?;
            return Ok(index);
        }
        let marker = std::fs::read(index.dir.join(MARKER))
            .ok()
            .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
            .and_then(|m| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&m.hash, &mut h).ok()?;
                Some((m.seq, h))
            });
        let Some((seq, hash)) = marker else {
            tracing::warn!(dir = %index.dir.display(), "vector table without a valid {MARKER}; rebuilding it from the journal");
            index.clear()?;
            return Ok(index);
        };
        let table = index
            .run(|db, _| async move { db.open_table(TABLE).execute().await })
            .map_err(|e| ContextError::Vector(format!("opening {TABLE}: {e}")))?;
        let t = table.clone();
        let (dim, keys, has_ann) = index.run(move |_, _| async move {
            let schema = t.schema().await?;
            let dim = match schema.field_with_name("vector").map(|f| f.data_type().clone()) {
                Ok(DataType::FixedSizeList(_, n)) => usize::try_from(n).ok(),
                _ => None,
            };
            let mut keys = HashSet::new();
            let mut stream = t.query().select(Select::columns(&["key"])).execute().await?;
            while let Some(batch) = stream.try_next().await? {
                if let Some(col) = batch
                    .column_by_name("key")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                {
                    keys.extend(col.iter().flatten().map(str::to_owned));
                }
            }
            let has_ann = !t.list_indices().await?.is_empty();
            Ok::<_, lancedb::Error>((dim, keys, has_ann))
        })?;
        let Some(dim) = dim else {
            tracing::warn!(dir = %index.dir.display(), "vector table without a fixed-size vector column; rebuilding it");
            index.clear()?;
            return Ok(index);
        };
        index.table = Some(table);
        index.dim = Some(dim);
        index.keys = keys;
        index.has_ann = has_ann;
        index.seq = seq;
        index.committed_seq = seq;
        index.hash = Some(hash);
        Ok(index)
    }

    /// The directory holding the table.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an ANN index is built.
    #[must_use]
    pub fn has_ann(&self) -> bool {
        self.has_ann
    }

    /// The tuning in use (searches read it each time).
    pub fn options_mut(&mut self) -> &mut Options {
        &mut self.options
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    /// Runs `f(db, table)` to completion on the index's runtime.
    fn run<F, Fut, T>(&self, f: F) -> Result<T, ContextError>
    where
        F: FnOnce(Connection, Option<Table>) -> Fut,
        Fut: Future<Output = Result<T, lancedb::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.db.clone(), self.table.clone());
        block(self.runtime(), fut).map_err(lance_err("operation"))
    }

    fn remove_marker(&self) -> Result<(), ContextError> {
        match std::fs::remove_file(self.dir.join(MARKER)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContextError::Vector(format!("removing {MARKER}: {e}"))),
        }
    }

    fn write_marker(&self) -> Result<(), ContextError> {
        let Some(hash) = self.hash else {
            return self.remove_marker();
        };
        let marker = Marker {
            seq: self.committed_seq,
            hash: hex::encode(hash),
        };
        let path = self.dir.join(MARKER);
        let tmp = self.dir.join(format!("{MARKER}.tmp"));
        let bytes = serde_json::to_vec(&marker).map_err(|e| ContextError::Vector(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| ContextError::Vector(format!("writing {}: {e}", path.display())))
    }

    fn batch(&self, rows: &[(&String, &Waiting)]) -> Result<RecordBatch, ContextError> {
        let dim = self.dim.unwrap_or(0);
        let keys = StringArray::from_iter_values(rows.iter().map(|(k, _)| k.as_str()));
        let owners = StringArray::from_iter_values(rows.iter().map(|(_, w)| w.owner.as_str()));
        let types = StringArray::from_iter_values(rows.iter().map(|(_, w)| w.memory_type.as_str()));
        let values = Float32Array::from_iter_values(rows.iter().flat_map(|(_, w)| w.vector.iter().copied()));
        let vectors = FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, true)),
            i32::try_from(dim).map_err(|_| ContextError::Vector("embedding too wide".into()))?,
            Arc::new(values),
            None,
        )
        .map_err(arrow_err)?;
        RecordBatch::try_new(
            schema(dim)?,
            vec![
                Arc::new(keys),
                Arc::new(owners),
                Arc::new(types),
                Arc::new(vectors),
            ],
        )
        .map_err(arrow_err)
    }

    /// Commits the waiting upserts and removals: one delete of every
    /// replaced or removed key, one append of the upserts, then the marker.
    fn commit(&mut self) -> Result<(), ContextError> {
        if self.waiting.is_empty() && self.removed.is_empty() {
            if self.committed_seq != self.seq {
                self.committed_seq = self.seq;
                self.write_marker()?;
            }
            return Ok(());
        }
        let mut gone: Vec<&str> = self.removed.iter().map(String::as_str).collect();
        gone.extend(
            self.waiting
                .keys()
                .filter(|k| self.keys.contains(k.as_str()))
                .map(String::as_str),
        );
        let deletes: Vec<String> = gone.chunks(512).map(|c| in_list("key", c)).collect();
        let rows: Vec<(&String, &Waiting)> = self.waiting.iter().collect();
        let batch = if rows.is_empty() {
            None
        } else {
            Some(self.batch(&rows)?)
        };
        let dim = self.dim;
        let table = self.table.clone();
        let table = self.run(move |db, _| async move {
            let table = match table {
                Some(t) => t,
                None => {
                    let dim = dim.unwrap_or(0);
                    let schema = schema(dim).map_err(|e| lancedb::Error::InvalidInput {
                        message: e.to_string(),
                    })?;
                    db.create_empty_table(TABLE, schema).execute().await?
                }
            };
            for pred in deletes {
                table.delete(pred.as_str()).await?;
            }
            if let Some(batch) = batch {
                let schema = batch.schema();
                let reader: Box<dyn RecordBatchReader + Send> =
                    Box::new(RecordBatchIterator::new(vec![Ok(batch)], schema));
                table.add(reader).execute().await?;
            }
            Ok(table)
        })?;
        self.table = Some(table);
        for k in std::mem::take(&mut self.removed) {
            self.keys.remove(&k);
        }
        for k in std::mem::take(&mut self.waiting).into_keys() {
            self.keys.insert(k);
        }
        self.committed_seq = self.seq;
        self.write_marker()?;
        if !self.has_ann && self.options.ann_min_rows > 0 && self.keys.len() >= self.options.ann_min_rows {
            self.build_ann(AnnKind::IvfHnswSq)?;
        }
        Ok(())
    }

    /// Builds (or rebuilds) the ANN index over the table's vectors, after
    /// committing what waits. Partitions: about √rows.
    ///
    /// # Errors
    /// LanceDB failed (e.g. too few rows to train on).
    pub fn build_ann(&mut self, kind: AnnKind) -> Result<(), ContextError> {
        self.commit()?;
        let rows = self.keys.len();
        if rows < 256 {
            return Err(ContextError::Vector(format!(
                "an ANN index needs at least 256 rows to train on; the table holds {rows}"
            )));
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let partitions = ((rows as f64).sqrt() as u32).clamp(1, 4096);
        let dim = self.dim.unwrap_or(0);
        let index = match kind {
            AnnKind::IvfHnswSq => Index::IvfHnswSq(
                IvfHnswSqIndexBuilder::default()
                    .distance_type(DistanceType::Cosine)
                    .num_partitions(partitions),
            ),
            AnnKind::IvfPq => {
                // Sub-vectors of 8 dimensions when the width allows it.
                let sub = if dim.is_multiple_of(8) { dim / 8 } else { 1 };
                Index::IvfPq(
                    IvfPqIndexBuilder::default()
                        .distance_type(DistanceType::Cosine)
                        .num_partitions(partitions)
                        .num_sub_vectors(u32::try_from(sub).unwrap_or(1)),
                )
            }
        };
        self.run(move |_, table| async move {
            match table {
                Some(t) => t.create_index(&["vector"], index).replace(true).execute().await,
                None => Ok(()),
            }
        })?;
        self.has_ann = true;
        Ok(())
    }

    /// Searches the committed table: up to `fetch` rows, best first.
    fn search_table(
        &self,
        query: &[f32],
        fetch: usize,
        owners: &[String],
    ) -> Result<Vec<(String, f32)>, ContextError> {
        if self.table.is_none() || self.keys.is_empty() {
            return Ok(Vec::new());
        }
        if Some(query.len()) != self.dim {
            return Err(ContextError::Vector(format!(
                "a query of {} dimensions against an index of {} (the embedder changed? delete {} to rebuild it)",
                query.len(),
                self.dim.unwrap_or(0),
                self.dir.display()
            )));
        }
        let query = query.to_vec();
        let filter = (!owners.is_empty()).then(|| {
            let o: Vec<&str> = owners.iter().map(String::as_str).collect();
            in_list("owner", &o)
        });
        let o = self.options.clone();
        self.run(move |_, table| async move {
            let Some(t) = table else {
                return Ok(Vec::new());
            };
            let mut q = t
                .vector_search(query)?
                .distance_type(DistanceType::Cosine)
                .select(Select::columns(&["key"]))
                .limit(fetch)
                .nprobes(o.nprobes)?
                .ef(o.ef);
            if o.refine_factor > 0 {
                q = q.refine_factor(o.refine_factor);
            }
            if let Some(f) = filter {
                q = q.only_if(f);
            }
            let mut out = Vec::with_capacity(fetch);
            let mut stream = q.execute().await?;
            while let Some(batch) = stream.try_next().await? {
                let keys = batch
                    .column_by_name("key")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>());
                let dist = batch
                    .column_by_name("_distance")
                    .and_then(|c| c.as_any().downcast_ref::<Float32Array>());
                if let (Some(keys), Some(dist)) = (keys, dist) {
                    for i in 0..keys.len() {
                        if keys.is_valid(i) {
                            out.push((keys.value(i).to_owned(), 1.0 - dist.value(i)));
                        }
                    }
                }
            }
            Ok(out)
        })
    }
}

/// The directories an index of this process has open: one at a time per
/// directory, so two writers never interleave their commits (a second open
/// waits until the first index is dropped and has committed).
static OPEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static CLOSED: Condvar = Condvar::new();

fn claim(dir: &Path) {
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    while open.iter().any(|d| d == dir) {
        open = CLOSED.wait(open).unwrap_or_else(PoisonError::into_inner);
    }
    open.push(dir.to_owned());
}

fn release(dir: &Path) {
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    open.retain(|d| d != dir);
    CLOSED.notify_all();
}

/// Runs `fut` on `rt` and blocks this thread until it is done (usable from
/// inside another runtime: the future runs on `rt`'s threads).
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T, lancedb::Error>> + Send + 'static,
) -> Result<T, lancedb::Error> {
    let handle = rt.spawn(fut);
    match futures::executor::block_on(handle) {
        Ok(r) => r,
        Err(join) => Err(lancedb::Error::Runtime {
            message: format!("LanceDB task failed: {join}"),
        }),
    }
}

impl VectorIndex for LanceIndex {
    fn backend(&self) -> &'static str {
        "lancedb"
    }

    fn upsert(&mut self, rows: Vec<VectorRow>) -> Result<(), ContextError> {
        for r in rows {
            let dim = *self.dim.get_or_insert(r.vector.len());
            if r.vector.len() != dim || dim == 0 {
                return Err(ContextError::Vector(format!(
                    "{}: an embedding of {} dimensions, the index holds {dim} (the embedder changed? delete {} to rebuild it)",
                    r.key,
                    r.vector.len(),
                    self.dir.display()
                )));
            }
            self.removed.remove(&r.key);
            self.waiting.insert(
                r.key,
                Waiting {
                    owner: r.owner,
                    memory_type: r.memory_type,
                    vector: normalized(r.vector),
                },
            );
        }
        if self.waiting.len() + self.removed.len() >= self.options.batch_rows {
            self.commit()?;
        }
        Ok(())
    }

    fn remove(&mut self, keys: &[String]) -> Result<(), ContextError> {
        for k in keys {
            self.waiting.remove(k);
            if self.keys.contains(k) {
                self.removed.insert(k.clone());
            }
        }
        if self.waiting.len() + self.removed.len() >= self.options.batch_rows {
            self.commit()?;
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
        let shadowed = |key: &str| self.waiting.contains_key(key) || self.removed.contains(key);
        let mut fetch = |n: usize| {
            let raw = self.search_table(&q, n, owners)?;
            // Fewer rows than asked for: the table has no more to give.
            let exhausted = raw.len() < n || n >= self.keys.len();
            Ok((raw, exhausted))
        };
        merged_search(&q, k, owners, &self.waiting, &shadowed, &mut fetch, allow)
    }

    fn len(&self) -> usize {
        self.keys.len() - self.removed.len()
            + self
                .waiting
                .keys()
                .filter(|k| !self.keys.contains(k.as_str()))
                .count()
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn seq_hash(&self) -> Option<[u8; 32]> {
        self.hash
    }

    fn set_seq(&mut self, seq: u64, hash: [u8; 32]) -> Result<(), ContextError> {
        self.seq = seq;
        self.hash = Some(hash);
        Ok(())
    }

    fn clear(&mut self) -> Result<(), ContextError> {
        self.run(|db, _| async move {
            let names = db.table_names().execute().await?;
            if names.iter().any(|n| n == TABLE) {
                db.drop_table(TABLE, &[]).await?;
            }
            Ok(())
        })?;
        self.table = None;
        self.dim = None;
        self.keys.clear();
        self.waiting.clear();
        self.removed.clear();
        self.seq = 0;
        self.hash = None;
        self.committed_seq = 0;
        self.has_ann = false;
        self.remove_marker()
    }

    fn flush(&mut self) -> Result<(), ContextError> {
        self.commit()
    }
}

impl Drop for LanceIndex {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "flushing the vector index on close failed; the next open folds the rest from the journal");
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        release(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, owner: &str, v: Vec<f32>) -> VectorRow {
        VectorRow {
            key: key.into(),
            owner: owner.into(),
            memory_type: "semantic".into(),
            vector: v,
        }
    }

    #[test]
    fn upsert_search_remove_survive_reopen() -> Result<(), ContextError> {
        let dir = tempfile::tempdir().map_err(|e| ContextError::Vector(e.to_string()))?;
        let opts = Options {
            batch_rows: 2,
            ..Options::default()
        };
        {
            let mut idx = LanceIndex::open(dir.path(), opts.clone())?;
            idx.upsert(vec![row("a/1", "a", vec![1.0, 0.0, 0.0])])?;
            // Waiting rows are searched before any commit.
            let hits = idx.search(&[1.0, 0.1, 0.0], 5, &[], &mut |_| true)?;
            assert_eq!(hits[0].0, "a/1");
            idx.upsert(vec![
                row("a/2", "a", vec![0.0, 1.0, 0.0]),
                row("b/1", "b", vec![0.9, 0.1, 0.0]),
            ])?;
            idx.set_seq(7, [7; 32])?;
            idx.remove(&["a/2".to_owned()])?;
            idx.flush()?;
            assert_eq!(idx.len(), 2);
        }
        let idx = LanceIndex::open(dir.path(), opts)?;
        assert_eq!(idx.seq(), 7);
        assert_eq!(idx.seq_hash(), Some([7; 32]));
        assert_eq!(idx.len(), 2);
        let all = idx.search(&[1.0, 0.0, 0.0], 5, &[], &mut |_| true)?;
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a/1", "b/1"]);
        assert!(
            (all[0].1 - 1.0).abs() < 1e-4,
            "cosine of identical vectors: {}",
            all[0].1
        );
        let only_b = idx.search(&[1.0, 0.0, 0.0], 5, &["b".to_owned()], &mut |_| true)?;
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].0, "b/1");
        let denied = idx.search(&[1.0, 0.0, 0.0], 5, &[], &mut |k| k != "a/1")?;
        assert_eq!(denied.len(), 1);
        Ok(())
    }

    #[test]
    fn missing_marker_means_rebuild() -> Result<(), ContextError> {
        let dir = tempfile::tempdir().map_err(|e| ContextError::Vector(e.to_string()))?;
        {
            let mut idx = LanceIndex::open(dir.path(), Options::default())?;
            idx.upsert(vec![row("a/1", "a", vec![1.0, 0.0])])?;
            idx.set_seq(3, [3; 32])?;
        }
        std::fs::remove_file(dir.path().join(MARKER)).map_err(|e| ContextError::Vector(e.to_string()))?;
        let idx = LanceIndex::open(dir.path(), Options::default())?;
        assert_eq!(idx.seq(), 0);
        assert!(idx.is_empty());
        Ok(())
    }

    #[test]
    fn wrong_width_is_refused() -> Result<(), ContextError> {
        let dir = tempfile::tempdir().map_err(|e| ContextError::Vector(e.to_string()))?;
        let mut idx = LanceIndex::open(dir.path(), Options::default())?;
        idx.upsert(vec![row("a/1", "a", vec![1.0, 0.0])])?;
        let err = idx.upsert(vec![row("a/2", "a", vec![1.0, 0.0, 0.0])]);
        assert!(matches!(err, Err(ContextError::Vector(m)) if m.contains("3 dimensions")));
        Ok(())
    }
}
