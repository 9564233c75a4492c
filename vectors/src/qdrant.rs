//! The vector index on a Qdrant server, spoken to over its REST API with a
//! blocking HTTP client (ureq; HTTPS through rustls with ring), for
//! deployments where several stele nodes share one index. It implements
//! [`stele_engine::context::vector::VectorIndex`]; the gRPC API and
//! Qdrant's own clients are not used.
//!
//! Layout on the server:
//! - the collection (`[context.qdrant] collection`, `stele_context` by
//!   default): one unnamed vector per point, cosine distance, its size taken
//!   from the first row written; a keyword payload index on `owner`. A
//!   point's id is a UUID derived from BLAKE3 of its key (`owner/id`,
//!   [`point_id`]); its payload holds `key`, `owner` and `memory_type`.
//! - the marker collection `<collection>_stele_marker`: one point (id 1,
//!   a one-dimensional vector) whose payload records the `seq` and `hash`
//!   of the last event whose effects are in the collection, and the
//!   collection's name. It lives on the server, so every node sharing the
//!   collection reads the same marker; the context service checks its hash
//!   against the journal on open and clears the collection when it does
//!   not match.
//!
//! It is a derived index, like the LanceDB one: rows come only from
//! journaled `EmbeddingComputed` (upserts) and `ContextArchived`
//! (removals) facts. On open, a collection without a readable marker cannot
//! say what it holds and is dropped to be rebuilt from the journal; a
//! collection that stele could not have made (named vectors, another
//! distance) is refused with an error and left alone.
//!
//! Writes are batched: upserts and removals wait in memory and are sent
//! once [`QdrantOptions::batch_rows`] are waiting, on
//! [`flush`](VectorIndex::flush) and on drop — deletes by point id, then
//! upserts in requests of at most [`FLOATS_PER_REQUEST`] floats, each with
//! `wait=true`, then the marker. Waiting rows are searched exactly beside
//! the collection, so an update is visible to this node's next search at
//! once. A crash loses only waiting rows, which the next open folds again
//! from the journal (upserts and removals are idempotent).
//!
//! Every failure — transport, an HTTP status other than 2xx, an answer
//! that is not the JSON Qdrant documents — is a [`ContextError::Vector`]
//! naming the method, the URL and what Qdrant said.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use stele_engine::context::ContextError;
use stele_engine::context::vector::{VectorIndex, VectorRow, normalized};

use crate::pending::{Waiting, merged_search};

/// The default collection.
pub const DEFAULT_COLLECTION: &str = "stele_context";
/// The marker collection's name is the collection's followed by this.
pub const MARKER_SUFFIX: &str = "_stele_marker";
/// The id of the marker point in the marker collection.
pub const MARKER_ID: u64 = 1;
/// Floats per upsert request (about 3 MB of JSON), well under Qdrant's
/// default limit of 32 MB per request.
pub const FLOATS_PER_REQUEST: usize = 256 * 1024;
/// Point ids per delete or retrieve request.
const IDS_PER_REQUEST: usize = 1024;
/// The largest answer read (searches ask for keys and scores only).
const MAX_ANSWER_BYTES: u64 = 64 << 20;
/// Characters of an unexpected answer quoted in an error.
const QUOTE_CHARS: usize = 200;
/// Context of the BLAKE3 key derivation of point ids.
const POINT_ID_CONTEXT: &str = "stele context vector point id v1";

/// Where and how a [`QdrantIndex`] reaches its server.
#[derive(Clone)]
pub struct QdrantOptions {
    /// Base URL of the REST API, e.g. `http://qdrant.internal:6333`.
    pub url: String,
    /// The collection (its marker is in `<collection>_stele_marker`).
    pub collection: String,
    /// Sent as the `api-key` header when set.
    pub api_key: Option<String>,
    /// Waiting rows (upserts plus removals) that trigger a write.
    pub batch_rows: usize,
    /// Time limit of one request, connection included.
    pub timeout_ms: u64,
}

impl QdrantOptions {
    /// The defaults for the server at `url`: collection
    /// [`DEFAULT_COLLECTION`], no API key, writes per 1,024 rows, 30 s per
    /// request.
    #[must_use]
    pub fn new(url: &str) -> QdrantOptions {
        QdrantOptions {
            url: url.trim_end_matches('/').to_owned(),
            collection: DEFAULT_COLLECTION.to_owned(),
            api_key: None,
            batch_rows: 1024,
            timeout_ms: 30_000,
        }
    }
}

impl fmt::Debug for QdrantOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QdrantOptions")
            .field("url", &self.url)
            .field("collection", &self.collection)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("batch_rows", &self.batch_rows)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The point id of `key`: the first 16 bytes of a BLAKE3 key derivation,
/// written as a UUID (version 8, "custom").
#[must_use]
pub fn point_id(key: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key(POINT_ID_CONTEXT);
    h.update(key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// The REST client: every call returns the `result` of a 2xx answer or an
/// error naming the request and what the server said.
struct Client {
    agent: ureq::Agent,
    base: String,
    api_key: Option<String>,
}

/// The start of `text`, for an error message.
fn quote(text: &str) -> String {
    let t = text.trim();
    if t.chars().count() > QUOTE_CHARS {
        format!("{:?}…", t.chars().take(QUOTE_CHARS).collect::<String>())
    } else {
        format!("{t:?}")
    }
}

impl Client {
    fn new(options: &QdrantOptions) -> Result<Client, ContextError> {
        let base = options.url.trim_end_matches('/').to_owned();
        let scheme_ok = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        if scheme_ok.is_none_or(str::is_empty) {
            return Err(ContextError::Vector(format!(
                "Qdrant URL {base:?} must start with http:// or https:// and name a host"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(options.timeout_ms.max(1))))
            .build()
            .into();
        Ok(Client {
            agent,
            base,
            api_key: options.api_key.clone(),
        })
    }

    fn fail(&self, method: Method, path: &str, what: &str, detail: &str) -> ContextError {
        ContextError::Vector(format!(
            "Qdrant {} {}{path} ({what}): {detail}",
            method.name(),
            self.base
        ))
    }

    /// Sends one request; `(status, body)` whatever the status.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        what: &str,
    ) -> Result<(u16, Vec<u8>), ContextError> {
        let url = format!("{}{path}", self.base);
        let key = self.api_key.as_deref();
        let answer = match (method, body) {
            (Method::Get | Method::Delete, _) => {
                let mut r = match method {
                    Method::Get => self.agent.get(&url),
                    _ => self.agent.delete(&url),
                };
                if let Some(k) = key {
                    r = r.header("api-key", k);
                }
                r.call()
            }
            (Method::Put | Method::Post, body) => {
                let mut r = match method {
                    Method::Put => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                if let Some(k) = key {
                    r = r.header("api-key", k);
                }
                r.content_type("application/json").send(body.unwrap_or(b"{}"))
            }
        };
        let mut answer = answer.map_err(|e| {
            self.fail(
                method,
                path,
                what,
                &format!("{e} (is Qdrant running and reachable at {}?)", self.base),
            )
        })?;
        let status = answer.status().as_u16();
        let bytes = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| {
                self.fail(
                    method,
                    path,
                    what,
                    &format!("reading the answer (HTTP {status}): {e}"),
                )
            })?;
        Ok((status, bytes))
    }

    /// The `result` of the answer; `None` for a 404 when `missing_ok`.
    fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        what: &str,
        missing_ok: bool,
    ) -> Result<Option<Value>, ContextError> {
        let (status, bytes) = self.send(method, path, body, what)?;
        let text = String::from_utf8_lossy(&bytes);
        let parsed = serde_json::from_slice::<Value>(&bytes);
        if !(200..300).contains(&status) {
            if status == 404 && missing_ok {
                return Ok(None);
            }
            // Qdrant's errors are `{"status": {"error": "…"}, "time": …}`;
            // a proxy in front of it may answer anything.
            let said = match &parsed {
                Ok(v) => match v.pointer("/status/error").and_then(Value::as_str) {
                    Some(e) => e.to_owned(),
                    None => quote(&text),
                },
                Err(_) => quote(&text),
            };
            let hint = match status {
                401 | 403 => " (check the API key: [context.qdrant] api_key_env)",
                _ => "",
            };
            return Err(self.fail(method, path, what, &format!("HTTP {status}: {said}{hint}")));
        }
        let v = parsed.map_err(|e| {
            self.fail(
                method,
                path,
                what,
                &format!(
                    "HTTP {status} with an answer that is not JSON ({e}): {}",
                    quote(&text)
                ),
            )
        })?;
        match v.get("result") {
            Some(r) => Ok(Some(r.clone())),
            None => Err(self.fail(
                method,
                path,
                what,
                &format!(
                    "HTTP {status} with an answer without \"result\": {}",
                    quote(&text)
                ),
            )),
        }
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        what: &str,
    ) -> Result<Value, ContextError> {
        self.call_inner(method, path, body, what, false)
            .map(|r| r.unwrap_or(Value::Null))
    }

    fn call_found(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        what: &str,
    ) -> Result<Option<Value>, ContextError> {
        self.call_inner(method, path, body, what, true)
    }

    /// A write with `wait=true`: its result must say `completed`.
    fn write(&self, method: Method, path: &str, body: &[u8], what: &str) -> Result<(), ContextError> {
        let r = self.call(method, path, Some(body), what)?;
        match r.get("status").and_then(Value::as_str) {
            Some("completed") => Ok(()),
            other => Err(self.fail(
                method,
                path,
                what,
                &format!(
                    "the operation was not completed (status {other:?}, answer {})",
                    quote(&r.to_string())
                ),
            )),
        }
    }

    fn malformed(
        &self,
        method: Method,
        path: &str,
        what: &str,
        found: &Value,
        expected: &str,
    ) -> ContextError {
        self.fail(
            method,
            path,
            what,
            &format!(
                "malformed answer: expected {expected}, found {}",
                quote(&found.to_string())
            ),
        )
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ContextError> {
    serde_json::to_vec(v).map_err(|e| ContextError::Vector(format!("encoding a Qdrant request: {e}")))
}

#[derive(Serialize)]
struct Payload<'a> {
    key: &'a str,
    owner: &'a str,
    memory_type: &'a str,
}

#[derive(Serialize)]
struct Point<'a> {
    id: String,
    vector: &'a [f32],
    payload: Payload<'a>,
}

#[derive(Serialize)]
struct Upsert<'a> {
    points: Vec<Point<'a>>,
}

#[derive(Serialize)]
struct Search<'a> {
    vector: &'a [f32],
    limit: usize,
    with_payload: [&'static str; 1],
    with_vector: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<Value>,
}

/// See the module documentation.
pub struct QdrantIndex {
    client: Client,
    collection: String,
    marker: String,
    dim: Option<usize>,
    /// Whether the collection exists on the server, as far as this index
    /// knows (it made it, or found it on open).
    created: bool,
    /// Whether the marker collection exists, likewise.
    marker_made: bool,
    /// Upserts not written yet.
    waiting: BTreeMap<String, Waiting>,
    /// Removals not written yet.
    removed: BTreeSet<String>,
    seq: u64,
    hash: Option<[u8; 32]>,
    committed_seq: u64,
    batch_rows: usize,
}

impl fmt::Debug for QdrantIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QdrantIndex")
            .field("url", &self.client.base)
            .field("collection", &self.collection)
            .field("dim", &self.dim)
            .field("waiting", &self.waiting.len())
            .field("removed", &self.removed.len())
            .field("seq", &self.seq)
            .field("committed_seq", &self.committed_seq)
            .finish_non_exhaustive()
    }
}

impl QdrantIndex {
    /// Opens the index in `options.collection` on the server.
    ///
    /// A collection without a readable marker is dropped (it is rebuilt
    /// from the journal); a missing collection is made by the first write.
    ///
    /// # Errors
    /// The server cannot be reached or answers with an error, or the
    /// collection exists with a shape stele does not write (named vectors,
    /// a distance other than cosine).
    pub fn open(options: &QdrantOptions) -> Result<QdrantIndex, ContextError> {
        let client = Client::new(options)?;
        let collection = options.collection.clone();
        if collection.is_empty()
            || collection.contains(['/', '?', '#', '%'])
            || collection.contains(char::is_whitespace)
        {
            return Err(ContextError::Vector(format!(
                "Qdrant collection name {collection:?} is empty or holds /, ?, #, % or a space"
            )));
        }
        let mut index = QdrantIndex {
            client,
            marker: format!("{collection}{MARKER_SUFFIX}"),
            collection,
            dim: None,
            created: false,
            marker_made: false,
            waiting: BTreeMap::new(),
            removed: BTreeSet::new(),
            seq: 0,
            hash: None,
            committed_seq: 0,
            batch_rows: options.batch_rows.max(1),
        };
        let Some(dim) = index.collection_size()? else {
            index.drop_marker()?;
            return Ok(index);
        };
        index.dim = Some(dim);
        index.created = true;
        let Some((seq, hash)) = index.read_marker()? else {
            tracing::warn!(
                url = %index.client.base,
                collection = %index.collection,
                "Qdrant collection without a valid marker in {}; rebuilding it from the journal",
                index.marker
            );
            index.clear()?;
            return Ok(index);
        };
        index.marker_made = true;
        index.seq = seq;
        index.committed_seq = seq;
        index.hash = Some(hash);
        Ok(index)
    }

    /// The collection.
    #[must_use]
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The base URL of the server.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.client.base
    }

    fn path(&self, rest: &str) -> String {
        format!("/collections/{}{rest}", self.collection)
    }

    /// The vector size of the collection, `None` when it does not exist.
    fn collection_size(&self) -> Result<Option<usize>, ContextError> {
        let path = self.path("");
        let what = "reading the collection";
        let Some(info) = self.client.call_found(Method::Get, &path, None, what)? else {
            return Ok(None);
        };
        let Some(vectors) = info.pointer("/config/params/vectors") else {
            return Err(self.client.malformed(
                Method::Get,
                &path,
                what,
                &info,
                "result.config.params.vectors",
            ));
        };
        let (Some(size), Some(distance)) = (
            vectors.get("size").and_then(Value::as_u64),
            vectors.get("distance").and_then(Value::as_str),
        ) else {
            return Err(self.client.fail(
                Method::Get,
                &path,
                what,
                &format!(
                    "the collection's vectors are {} and not one unnamed vector with a size and a distance: it was not made by stele; name another [context.qdrant] collection",
                    quote(&vectors.to_string())
                ),
            ));
        };
        if distance != "Cosine" {
            return Err(self.client.fail(
                Method::Get,
                &path,
                what,
                &format!(
                    "the collection uses {distance} distance, not Cosine: it was not made by stele; name another [context.qdrant] collection"
                ),
            ));
        }
        usize::try_from(size).map(Some).map_err(|_| {
            self.client.malformed(
                Method::Get,
                &path,
                what,
                vectors,
                "a vector size that fits in memory",
            )
        })
    }

    /// The marker, `None` when it is missing or does not parse.
    fn read_marker(&self) -> Result<Option<(u64, [u8; 32])>, ContextError> {
        let path = format!("/collections/{}/points/{MARKER_ID}", self.marker);
        let Some(point) = self
            .client
            .call_found(Method::Get, &path, None, "reading the seq marker")?
        else {
            return Ok(None);
        };
        let payload = point.get("payload");
        let seq = payload.and_then(|p| p.get("seq")).and_then(Value::as_u64);
        let hash = payload.and_then(|p| p.get("hash")).and_then(Value::as_str);
        let named = payload.and_then(|p| p.get("collection")).and_then(Value::as_str);
        let (Some(seq), Some(hash), Some(named)) = (seq, hash, named) else {
            return Ok(None);
        };
        let mut h = [0u8; 32];
        if named != self.collection || hex::decode_to_slice(hash, &mut h).is_err() {
            return Ok(None);
        }
        Ok(Some((seq, h)))
    }

    fn drop_marker(&mut self) -> Result<(), ContextError> {
        let path = format!("/collections/{}", self.marker);
        self.marker_made = false;
        self.client
            .call_found(Method::Delete, &path, None, "dropping the seq marker")
            .map(|_| ())
    }

    fn write_marker(&mut self) -> Result<(), ContextError> {
        let Some(hash) = self.hash else {
            return self.drop_marker();
        };
        let coll = format!("/collections/{}", self.marker);
        if !self.marker_made {
            self.ensure(&coll, 1, "making the seq marker collection")?;
            self.marker_made = true;
        }
        let body = to_json(&json!({
            "points": [{
                "id": MARKER_ID,
                "vector": [1.0],
                "payload": {
                    "seq": self.committed_seq,
                    "hash": hex::encode(hash),
                    "collection": self.collection,
                },
            }]
        }))?;
        self.client.write(
            Method::Put,
            &format!("{coll}/points?wait=true"),
            &body,
            "writing the seq marker",
        )
    }

    /// Makes the collection at `coll` with vectors of `size` (cosine)
    /// unless it exists; another node making it first is fine when the size
    /// matches.
    fn ensure(&self, coll: &str, size: usize, what: &str) -> Result<(), ContextError> {
        let body = to_json(&json!({ "vectors": { "size": size, "distance": "Cosine" } }))?;
        let made = self.client.call(Method::Put, coll, Some(&body), what);
        let Err(err) = made else {
            return Ok(());
        };
        // It may exist already (made by another node, or before this open).
        let found = self.client.call_found(Method::Get, coll, None, what)?;
        match found.as_ref().and_then(|i| i.pointer("/config/params/vectors/size")).and_then(Value::as_u64) {
            Some(s) if usize::try_from(s).ok() == Some(size) => Ok(()),
            Some(s) => Err(self.client.fail(
                Method::Put,
                coll,
                what,
                &format!(
                    "the collection exists with vectors of {s} dimensions, the index writes {size} (the embedder changed? delete the collection to rebuild it)"
                ),
            )),
            None => Err(err),
        }
    }

    fn ensure_collection(&mut self) -> Result<(), ContextError> {
        if self.created {
            return Ok(());
        }
        let Some(dim) = self.dim else {
            return Ok(());
        };
        self.ensure(&self.path(""), dim, "making the collection")?;
        let body = to_json(&json!({ "field_name": "owner", "field_schema": "keyword" }))?;
        self.client.write(
            Method::Put,
            &self.path("/index?wait=true"),
            &body,
            "making the owner payload index",
        )?;
        self.created = true;
        Ok(())
    }

    /// Writes the waiting removals and upserts, then the marker.
    fn commit(&mut self) -> Result<(), ContextError> {
        if self.waiting.is_empty() && self.removed.is_empty() {
            if self.committed_seq != self.seq {
                self.committed_seq = self.seq;
                self.write_marker()?;
            }
            return Ok(());
        }
        if !self.created {
            // Another node may have made it since this index was opened.
            if let Some(size) = self.collection_size()? {
                let dim = *self.dim.get_or_insert(size);
                if dim != size {
                    return Err(ContextError::Vector(format!(
                        "the Qdrant collection {} at {} holds vectors of {size} dimensions, the index writes {dim} (the embedder changed? delete the collection to rebuild it)",
                        self.collection, self.client.base
                    )));
                }
                self.created = true;
            }
        }
        if !self.waiting.is_empty() {
            self.ensure_collection()?;
        }
        if self.created && !self.removed.is_empty() {
            let ids: Vec<String> = self.removed.iter().map(|k| point_id(k)).collect();
            for chunk in ids.chunks(IDS_PER_REQUEST) {
                let body = to_json(&json!({ "points": chunk }))?;
                self.client.write(
                    Method::Post,
                    &self.path("/points/delete?wait=true"),
                    &body,
                    "deleting points",
                )?;
            }
        }
        let dim = self.dim.unwrap_or(1).max(1);
        let per_request = (FLOATS_PER_REQUEST / dim).max(1);
        let rows: Vec<(&String, &Waiting)> = self.waiting.iter().collect();
        for chunk in rows.chunks(per_request) {
            let body = to_json(&Upsert {
                points: chunk
                    .iter()
                    .map(|(key, w)| Point {
                        id: point_id(key),
                        vector: &w.vector,
                        payload: Payload {
                            key,
                            owner: &w.owner,
                            memory_type: &w.memory_type,
                        },
                    })
                    .collect(),
            })?;
            self.client.write(
                Method::Put,
                &self.path("/points?wait=true"),
                &body,
                "upserting points",
            )?;
        }
        self.waiting.clear();
        self.removed.clear();
        self.committed_seq = self.seq;
        self.write_marker()
    }

    /// Searches the collection: up to `fetch` rows, best first, and whether
    /// it had fewer (the collection is exhausted).
    fn search_collection(
        &self,
        query: &[f32],
        fetch: usize,
        owners: &[String],
    ) -> Result<(Vec<(String, f32)>, bool), ContextError> {
        if !self.created {
            return Ok((Vec::new(), true));
        }
        if Some(query.len()) != self.dim {
            return Err(ContextError::Vector(format!(
                "a query of {} dimensions against the Qdrant collection {} of {} (the embedder changed? delete the collection to rebuild it)",
                query.len(),
                self.collection,
                self.dim.unwrap_or(0)
            )));
        }
        let filter =
            (!owners.is_empty()).then(|| json!({ "must": [{ "key": "owner", "match": { "any": owners } }] }));
        let body = to_json(&Search {
            vector: query,
            limit: fetch,
            with_payload: ["key"],
            with_vector: false,
            filter,
        })?;
        let path = self.path("/points/search");
        let what = "searching";
        let found = self.client.call(Method::Post, &path, Some(&body), what)?;
        let Some(hits) = found.as_array() else {
            return Err(self
                .client
                .malformed(Method::Post, &path, what, &found, "an array of points"));
        };
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            let key = hit.pointer("/payload/key").and_then(Value::as_str);
            let score = hit.get("score").and_then(Value::as_f64);
            let (Some(key), Some(score)) = (key, score) else {
                return Err(self.client.malformed(
                    Method::Post,
                    &path,
                    what,
                    hit,
                    "a point with payload.key and score",
                ));
            };
            #[allow(clippy::cast_possible_truncation)] // a cosine, within -1..=1
            out.push((key.to_owned(), score as f32));
        }
        let exhausted = out.len() < fetch;
        Ok((out, exhausted))
    }

    /// Rows in the collection (exact count).
    fn count(&self) -> Result<usize, ContextError> {
        if !self.created {
            return Ok(0);
        }
        let path = self.path("/points/count");
        let what = "counting points";
        let body = to_json(&json!({ "exact": true }))?;
        let r = self.client.call(Method::Post, &path, Some(&body), what)?;
        r.get("count")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                self.client
                    .malformed(Method::Post, &path, what, &r, "result.count")
            })
    }

    /// Which of `keys` the collection holds.
    fn existing<'a>(&self, keys: impl Iterator<Item = &'a String>) -> Result<HashSet<String>, ContextError> {
        let mut found = HashSet::new();
        if !self.created {
            return Ok(found);
        }
        let by_id: HashMap<String, &String> = keys.map(|k| (point_id(k), k)).collect();
        let ids: Vec<&String> = by_id.keys().collect();
        let path = self.path("/points");
        let what = "retrieving points";
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let body = to_json(&json!({ "ids": chunk, "with_payload": false, "with_vector": false }))?;
            let r = self.client.call(Method::Post, &path, Some(&body), what)?;
            let Some(points) = r.as_array() else {
                return Err(self
                    .client
                    .malformed(Method::Post, &path, what, &r, "an array of points"));
            };
            for p in points {
                let id = p.get("id").and_then(Value::as_str).map(str::to_ascii_lowercase);
                match id.as_ref().and_then(|id| by_id.get(id)) {
                    Some(key) => {
                        found.insert((*key).clone());
                    }
                    None => {
                        return Err(self.client.malformed(
                            Method::Post,
                            &path,
                            what,
                            p,
                            "a point with one of the ids asked for",
                        ));
                    }
                }
            }
        }
        Ok(found)
    }

    fn exact_len(&self) -> Result<usize, ContextError> {
        let count = self.count()?;
        let present = self.existing(self.waiting.keys().chain(self.removed.iter()))?;
        let added = self.waiting.keys().filter(|k| !present.contains(*k)).count();
        let gone = self.removed.iter().filter(|k| present.contains(*k)).count();
        Ok((count + added).saturating_sub(gone))
    }
}

impl VectorIndex for QdrantIndex {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    fn shared(&self) -> bool {
        true
    }

    fn upsert(&mut self, rows: Vec<VectorRow>) -> Result<(), ContextError> {
        for r in rows {
            let dim = *self.dim.get_or_insert(r.vector.len());
            if r.vector.len() != dim || dim == 0 {
                return Err(ContextError::Vector(format!(
                    "{}: an embedding of {} dimensions, the Qdrant collection {} holds {dim} (the embedder changed? delete the collection to rebuild it)",
                    r.key,
                    r.vector.len(),
                    self.collection
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
        if self.waiting.len() + self.removed.len() >= self.batch_rows {
            self.commit()?;
        }
        Ok(())
    }

    fn remove(&mut self, keys: &[String]) -> Result<(), ContextError> {
        for k in keys {
            self.waiting.remove(k);
            self.removed.insert(k.clone());
        }
        if self.waiting.len() + self.removed.len() >= self.batch_rows {
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
        let mut fetch = |n: usize| self.search_collection(&q, n, owners);
        merged_search(&q, k, owners, &self.waiting, &shadowed, &mut fetch, allow)
    }

    /// Asks the server (an exact count, plus which waiting keys it holds);
    /// when that fails, the error is logged and the rows waiting are
    /// counted.
    fn len(&self) -> usize {
        match self.exact_len() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "counting the Qdrant vector index failed");
                self.waiting.len()
            }
        }
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

    /// Drops the marker, then the collection (a crash in between leaves a
    /// collection without a marker, which the next open drops).
    fn clear(&mut self) -> Result<(), ContextError> {
        self.drop_marker()?;
        let path = self.path("");
        self.client
            .call_found(Method::Delete, &path, None, "dropping the collection")?;
        self.created = false;
        self.dim = None;
        self.waiting.clear();
        self.removed.clear();
        self.seq = 0;
        self.hash = None;
        self.committed_seq = 0;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ContextError> {
        self.commit()
    }
}

impl Drop for QdrantIndex {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "flushing the Qdrant vector index on close failed; the next open folds the rest from the journal");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a server written here that speaks the subset of Qdrant's
    //! REST wire format the index uses (request and answer shapes as
    //! Qdrant documents them, `{"status": {"error": …}}` errors, 404 for
    //! what does not exist), in memory. No real Qdrant runs in these tests.

    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

    use axum::extract::{Path, Query, Request, State};
    use axum::http::StatusCode;
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post, put};
    use axum::{Json, Router};

    use stele_engine::context::vector::dot;

    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// HTTP 500 with Qdrant's error JSON.
        Internal,
        /// HTTP 200 with a body that is not JSON.
        Malformed,
        /// HTTP 200 with JSON but no `result`.
        NoResult,
        /// Searches answer points without a payload key and with a score
        /// that is not a number.
        BadHits,
    }

    #[derive(Debug)]
    struct Coll {
        vectors: Value,
        points: BTreeMap<String, (Value, Vec<f32>, Value)>,
        indexes: BTreeMap<String, Value>,
    }

    impl Coll {
        fn size(&self) -> Option<usize> {
            self.vectors
                .get("size")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
        }
    }

    #[derive(Debug, Default)]
    struct Fake {
        api_key: Option<String>,
        fault: Option<Fault>,
        collections: BTreeMap<String, Coll>,
        /// `METHOD path?query` of each request.
        log: Vec<String>,
        /// The bodies of searches.
        searches: Vec<Value>,
        ops: u64,
    }

    type Shared = Arc<Mutex<Fake>>;

    fn lock(s: &Shared) -> MutexGuard<'_, Fake> {
        s.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(result: Value) -> Response {
        Json(json!({ "result": result, "status": "ok", "time": 0.000_12 })).into_response()
    }

    fn error(status: StatusCode, message: &str) -> Response {
        (
            status,
            Json(json!({ "status": { "error": message }, "time": 0.000_01 })),
        )
            .into_response()
    }

    fn missing(name: &str) -> Response {
        error(
            StatusCode::NOT_FOUND,
            &format!("Not found: Collection `{name}` doesn't exist!"),
        )
    }

    /// A point id as Qdrant accepts it: an unsigned integer or a UUID.
    fn id_key(id: &Value) -> Result<String, String> {
        let bad = || {
            format!(
                "Format error in JSON body: value {id} is not a valid point ID, valid values are either an unsigned integer or a UUID"
            )
        };
        match id {
            Value::Number(n) => n.as_u64().map(|n| n.to_string()).ok_or_else(bad),
            Value::String(s) => {
                let uuid = s.len() == 36
                    && s.char_indices().all(|(i, c)| {
                        if [8, 13, 18, 23].contains(&i) {
                            c == '-'
                        } else {
                            c.is_ascii_hexdigit()
                        }
                    });
                if uuid {
                    Ok(s.to_ascii_lowercase())
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }

    fn op(f: &mut Fake, q: &BTreeMap<String, String>) -> Value {
        f.ops += 1;
        let status = if q.get("wait").map(String::as_str) == Some("true") {
            "completed"
        } else {
            "acknowledged"
        };
        json!({ "operation_id": f.ops, "status": status })
    }

    fn select(payload: &Value, with: Option<&Value>) -> Value {
        match with {
            Some(Value::Bool(true)) => payload.clone(),
            Some(Value::Array(fields)) => {
                let mut out = serde_json::Map::new();
                for f in fields.iter().filter_map(Value::as_str) {
                    if let Some(v) = payload.get(f) {
                        out.insert(f.to_owned(), v.clone());
                    }
                }
                Value::Object(out)
            }
            _ => Value::Null,
        }
    }

    /// Whether `payload` passes `filter` (`must` of `match.any` and
    /// `match.value`, what the index sends).
    fn passes(payload: &Value, filter: Option<&Value>) -> Result<bool, String> {
        let Some(filter) = filter.filter(|f| !f.is_null()) else {
            return Ok(true);
        };
        let Some(must) = filter.get("must").and_then(Value::as_array) else {
            return Err("Format error in JSON body: filter".into());
        };
        for cond in must {
            let (Some(key), Some(m)) = (cond.get("key").and_then(Value::as_str), cond.get("match")) else {
                return Err("Format error in JSON body: condition".into());
            };
            let v = payload.get(key);
            let ok = match (m.get("any").and_then(Value::as_array), m.get("value")) {
                (Some(any), _) => v.is_some_and(|v| any.contains(v)),
                (None, Some(value)) => v == Some(value),
                _ => return Err("Format error in JSON body: match".into()),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
        let (key, fault) = {
            let mut f = lock(&s);
            let uri = req.uri().to_string();
            f.log.push(format!("{} {uri}", req.method()));
            (f.api_key.clone(), f.fault)
        };
        if let Some(key) = key
            && req.headers().get("api-key").and_then(|v| v.to_str().ok()) != Some(key.as_str())
        {
            // Qdrant answers a missing or wrong key in plain text.
            return (StatusCode::UNAUTHORIZED, "Invalid api-key").into_response();
        }
        let search = req.uri().path().ends_with("/points/search");
        match fault {
            Some(Fault::Internal) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Service internal error: No space left on device (os error 28)",
            ),
            Some(Fault::Malformed) => (StatusCode::OK, "{\"result\": [tru").into_response(),
            Some(Fault::NoResult) => Json(json!({ "status": "ok", "time": 0.0 })).into_response(),
            Some(Fault::BadHits) if search => answer(json!([{ "id": 1, "version": 0, "score": "high" }])),
            _ => next.run(req).await,
        }
    }

    async fn get_collection(State(s): State<Shared>, Path(name): Path<String>) -> Response {
        let f = lock(&s);
        let Some(c) = f.collections.get(&name) else {
            return missing(&name);
        };
        let schema: serde_json::Map<String, Value> = c
            .indexes
            .iter()
            .map(|(k, t)| (k.clone(), json!({ "data_type": t, "points": c.points.len() })))
            .collect();
        answer(json!({
            "status": "green",
            "optimizer_status": "ok",
            "indexed_vectors_count": 0,
            "points_count": c.points.len(),
            "segments_count": 1,
            "config": {
                "params": {
                    "vectors": c.vectors,
                    "shard_number": 1,
                    "replication_factor": 1,
                    "write_consistency_factor": 1,
                    "on_disk_payload": true
                },
                "hnsw_config": { "m": 16, "ef_construct": 100, "full_scan_threshold": 10000 }
            },
            "payload_schema": schema
        }))
    }

    async fn put_collection(
        State(s): State<Shared>,
        Path(name): Path<String>,
        Json(body): Json<Value>,
    ) -> Response {
        let mut f = lock(&s);
        if f.collections.contains_key(&name) {
            return error(
                StatusCode::CONFLICT,
                &format!("Wrong input: Collection `{name}` already exists!"),
            );
        }
        let Some(vectors) = body.get("vectors").filter(|v| v.is_object()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: missing field `vectors`",
            );
        };
        f.collections.insert(
            name,
            Coll {
                vectors: vectors.clone(),
                points: BTreeMap::new(),
                indexes: BTreeMap::new(),
            },
        );
        answer(json!(true))
    }

    async fn delete_collection(State(s): State<Shared>, Path(name): Path<String>) -> Response {
        let existed = lock(&s).collections.remove(&name).is_some();
        answer(json!(existed))
    }

    async fn put_index(
        State(s): State<Shared>,
        Path(name): Path<String>,
        Query(q): Query<BTreeMap<String, String>>,
        Json(body): Json<Value>,
    ) -> Response {
        let mut f = lock(&s);
        let (Some(field), Some(schema)) = (
            body.get("field_name").and_then(Value::as_str),
            body.get("field_schema"),
        ) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: missing field `field_name`",
            );
        };
        let Some(c) = f.collections.get_mut(&name) else {
            return missing(&name);
        };
        c.indexes.insert(field.to_owned(), schema.clone());
        let r = op(&mut f, &q);
        answer(r)
    }

    async fn upsert(
        State(s): State<Shared>,
        Path(name): Path<String>,
        Query(q): Query<BTreeMap<String, String>>,
        Json(body): Json<Value>,
    ) -> Response {
        let mut f = lock(&s);
        let Some(c) = f.collections.get_mut(&name) else {
            return missing(&name);
        };
        let Some(points) = body.get("points").and_then(Value::as_array) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: missing field `points`",
            );
        };
        let Some(size) = c.size() else {
            return error(
                StatusCode::BAD_REQUEST,
                "Wrong input: Not existing vector name error: ",
            );
        };
        let cosine = c.vectors.get("distance").and_then(Value::as_str) == Some("Cosine");
        for p in points {
            let key = match p.get("id").map(id_key) {
                Some(Ok(k)) => k,
                Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "Format error in JSON body: missing field `id`",
                    );
                }
            };
            #[allow(clippy::cast_possible_truncation)]
            let vector: Option<Vec<f32>> = p
                .get("vector")
                .and_then(Value::as_array)
                .and_then(|v| v.iter().map(|x| x.as_f64().map(|x| x as f32)).collect());
            let Some(vector) = vector else {
                return error(StatusCode::BAD_REQUEST, "Format error in JSON body: vector");
            };
            if vector.len() != size {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "Wrong input: Vector dimension error: expected dim: {size}, got {}",
                        vector.len()
                    ),
                );
            }
            // Qdrant normalizes vectors of a cosine collection on upsert.
            let vector = if cosine { normalized(vector) } else { vector };
            let payload = p.get("payload").cloned().unwrap_or(json!({}));
            c.points.insert(key, (p["id"].clone(), vector, payload));
        }
        let r = op(&mut f, &q);
        answer(r)
    }

    async fn retrieve(
        State(s): State<Shared>,
        Path(name): Path<String>,
        Json(body): Json<Value>,
    ) -> Response {
        let f = lock(&s);
        let Some(c) = f.collections.get(&name) else {
            return missing(&name);
        };
        let Some(ids) = body.get("ids").and_then(Value::as_array) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: missing field `ids`",
            );
        };
        let mut out = Vec::new();
        for id in ids {
            let key = match id_key(id) {
                Ok(k) => k,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            if let Some((id, _, payload)) = c.points.get(&key) {
                out.push(
                    json!({ "id": id, "payload": select(payload, body.get("with_payload")), "vector": null }),
                );
            }
        }
        answer(Value::Array(out))
    }

    async fn get_point(State(s): State<Shared>, Path((name, id)): Path<(String, String)>) -> Response {
        let f = lock(&s);
        let Some(c) = f.collections.get(&name) else {
            return missing(&name);
        };
        let id_value = id.parse::<u64>().map_or_else(|_| json!(id), |n| json!(n));
        let key = match id_key(&id_value) {
            Ok(k) => k,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        match c.points.get(&key) {
            Some((id, _, payload)) => answer(json!({ "id": id, "payload": payload, "vector": null })),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("Not found: No point with id {id} found"),
            ),
        }
    }

    async fn delete_points(
        State(s): State<Shared>,
        Path(name): Path<String>,
        Query(q): Query<BTreeMap<String, String>>,
        Json(body): Json<Value>,
    ) -> Response {
        let mut f = lock(&s);
        let Some(c) = f.collections.get_mut(&name) else {
            return missing(&name);
        };
        let Some(ids) = body.get("points").and_then(Value::as_array) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: points or filter",
            );
        };
        for id in ids {
            match id_key(id) {
                Ok(k) => {
                    c.points.remove(&k);
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            }
        }
        let r = op(&mut f, &q);
        answer(r)
    }

    async fn search(State(s): State<Shared>, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
        let mut f = lock(&s);
        f.searches.push(body.clone());
        let Some(c) = f.collections.get(&name) else {
            return missing(&name);
        };
        #[allow(clippy::cast_possible_truncation)]
        let query: Option<Vec<f32>> = body
            .get("vector")
            .and_then(Value::as_array)
            .and_then(|v| v.iter().map(|x| x.as_f64().map(|x| x as f32)).collect());
        let (Some(query), Some(limit)) = (query, body.get("limit").and_then(Value::as_u64)) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Format error in JSON body: missing field `vector` or `limit`",
            );
        };
        if Some(query.len()) != c.size() {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Wrong input: Vector dimension error: expected dim: {:?}, got {}",
                    c.size(),
                    query.len()
                ),
            );
        }
        let q = normalized(query);
        let mut hits = Vec::new();
        for (id, v, payload) in c.points.values() {
            match passes(payload, body.get("filter")) {
                Ok(true) => hits.push((dot(&q, v), id, payload)),
                Ok(false) => {}
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            }
        }
        hits.sort_by(|a, b| b.0.total_cmp(&a.0));
        let out: Vec<Value> = hits
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(score, id, payload)| {
                json!({ "id": id, "version": 1, "score": score, "payload": select(payload, body.get("with_payload")), "vector": null })
            })
            .collect();
        answer(Value::Array(out))
    }

    async fn count(State(s): State<Shared>, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
        let f = lock(&s);
        let Some(c) = f.collections.get(&name) else {
            return missing(&name);
        };
        let mut n = 0;
        for (_, _, payload) in c.points.values() {
            match passes(payload, body.get("filter")) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            }
        }
        answer(json!({ "count": n }))
    }

    /// The wire-format server, on a thread of its own until dropped.
    struct Server {
        addr: SocketAddr,
        state: Shared,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl Server {
        fn start(api_key: Option<&str>) -> Server {
            let state: Shared = Arc::new(Mutex::new(Fake {
                api_key: api_key.map(str::to_owned),
                ..Fake::default()
            }));
            let app = Router::new()
                .route(
                    "/collections/{name}",
                    get(get_collection).put(put_collection).delete(delete_collection),
                )
                .route("/collections/{name}/index", put(put_index))
                .route("/collections/{name}/points", put(upsert).post(retrieve))
                .route("/collections/{name}/points/delete", post(delete_points))
                .route("/collections/{name}/points/search", post(search))
                .route("/collections/{name}/points/count", post(count))
                .route("/collections/{name}/points/{id}", get(get_point))
                .layer(middleware::from_fn_with_state(state.clone(), guard))
                .with_state(state.clone());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
            listener.set_nonblocking(true).expect("non-blocking listener");
            let addr = listener.local_addr().expect("local address");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("test runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            });
            Server {
                addr,
                state,
                stop: Some(stop),
            }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn fake(&self) -> MutexGuard<'_, Fake> {
            lock(&self.state)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    fn row(key: &str, owner: &str, v: Vec<f32>) -> VectorRow {
        VectorRow {
            key: key.into(),
            owner: owner.into(),
            memory_type: "semantic".into(),
            vector: v,
        }
    }

    fn options(server: &Server, batch_rows: usize) -> QdrantOptions {
        QdrantOptions {
            collection: "ctx".into(),
            api_key: server.fake().api_key.clone(),
            batch_rows,
            timeout_ms: 10_000,
            ..QdrantOptions::new(&server.url())
        }
    }

    /// The message of a `ContextError::Vector`.
    fn vector_error<T: fmt::Debug>(r: Result<T, ContextError>) -> String {
        match r {
            Err(ContextError::Vector(m)) => m,
            other => panic!("expected a vector index error, found {other:?}"),
        }
    }

    fn keys(hits: &[(String, f32)]) -> Vec<&str> {
        hits.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn point_ids_are_uuids_derived_from_the_key() {
        let a = point_id("ops/slo");
        assert_eq!(a, point_id("ops/slo"), "deterministic");
        assert_ne!(a, point_id("ops/sla"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'8', "version 8: {a}");
        assert!(
            matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
            "RFC 9562 variant: {a}"
        );
        assert!(id_key(&json!(a)).is_ok(), "the wire-format server accepts it");
    }

    #[test]
    fn full_cycle_upsert_search_remove_marker_clear() -> Result<(), ContextError> {
        let server = Server::start(Some("sekret"));
        let o = options(&server, 3);
        {
            let mut idx = QdrantIndex::open(&o)?;
            assert_eq!(idx.seq(), 0);
            assert!(idx.is_empty());
            idx.upsert(vec![row("a/1", "a", vec![1.0, 0.0, 0.0])])?;
            // Waiting rows are searched before anything is written.
            assert!(server.fake().collections.is_empty(), "nothing written yet");
            let hits = idx.search(&[1.0, 0.1, 0.0], 5, &[], &mut |_| true)?;
            assert_eq!(keys(&hits), ["a/1"]);
            // The third waiting row makes a batch: the collection is made
            // from the first row's width and the rows are written.
            idx.upsert(vec![
                row("a/2", "a", vec![0.0, 1.0, 0.0]),
                row("b/1", "b", vec![0.9, 0.1, 0.0]),
            ])?;
            {
                let f = server.fake();
                let c = f.collections.get("ctx").expect("the collection was made");
                assert_eq!(c.vectors, json!({ "size": 3, "distance": "Cosine" }));
                assert_eq!(c.indexes.get("owner"), Some(&json!("keyword")));
                assert_eq!(c.points.len(), 3);
                let (_, _, payload) = c.points.get(&point_id("a/1")).expect("a/1 under its derived id");
                assert_eq!(
                    *payload,
                    json!({ "key": "a/1", "owner": "a", "memory_type": "semantic" })
                );
                assert!(
                    f.log.iter().any(|l| l == "PUT /collections/ctx/points?wait=true"),
                    "upserts wait: {:?}",
                    f.log
                );
            }
            idx.set_seq(7, [7; 32])?;
            idx.remove(&["a/2".to_owned()])?;
            assert_eq!(idx.len(), 2, "a waiting removal of a written row counts");
            idx.flush()?;
            let f = server.fake();
            assert_eq!(f.collections["ctx"].points.len(), 2);
            let marker = &f.collections[&format!("ctx{MARKER_SUFFIX}")].points[&MARKER_ID.to_string()];
            assert_eq!(
                marker.2,
                json!({ "seq": 7, "hash": hex::encode([7; 32]), "collection": "ctx" })
            );
        }
        // Another index (another node) reads the marker from the server.
        let mut idx = QdrantIndex::open(&o)?;
        assert_eq!(idx.seq(), 7);
        assert_eq!(idx.seq_hash(), Some([7; 32]));
        assert_eq!(idx.len(), 2);
        let all = idx.search(&[1.0, 0.0, 0.0], 5, &[], &mut |_| true)?;
        assert_eq!(keys(&all), ["a/1", "b/1"]);
        assert!(
            (all[0].1 - 1.0).abs() < 1e-4,
            "cosine of identical vectors: {}",
            all[0].1
        );
        let only_b = idx.search(&[1.0, 0.0, 0.0], 5, &["b".to_owned()], &mut |_| true)?;
        assert_eq!(keys(&only_b), ["b/1"]);
        assert_eq!(
            server
                .fake()
                .searches
                .last()
                .and_then(|s| s.get("filter"))
                .cloned(),
            Some(json!({ "must": [{ "key": "owner", "match": { "any": ["b"] } }] }))
        );
        let denied = idx.search(&[1.0, 0.0, 0.0], 5, &[], &mut |k| k != "a/1")?;
        assert_eq!(keys(&denied), ["b/1"]);

        // When `allow` rejects the best rows, the search fetches more.
        let rows: Vec<VectorRow> = (0..40u8)
            .map(|i| row(&format!("c/{i:02}"), "c", vec![f32::from(i) * 0.01, 0.0, 1.0]))
            .collect();
        idx.upsert(rows)?;
        idx.set_seq(9, [9; 32])?;
        idx.flush()?;
        let before = server.fake().searches.len();
        let late = idx.search(&[0.0, 0.0, 1.0], 3, &["c".to_owned()], &mut |k| k >= "c/30")?;
        assert_eq!(keys(&late), ["c/30", "c/31", "c/32"]);
        let limits: Vec<Value> = server.fake().searches[before..]
            .iter()
            .map(|s| s["limit"].clone())
            .collect();
        assert_eq!(limits, [json!(20), json!(80)], "a second, larger fetch");

        // A waiting upsert shadows the row written before it.
        idx.upsert(vec![row("b/1", "b", vec![0.0, 1.0, 0.0])])?;
        let moved = idx.search(&[0.0, 1.0, 0.0], 1, &["b".to_owned()], &mut |_| true)?;
        assert_eq!(keys(&moved), ["b/1"]);
        assert!(
            (moved[0].1 - 1.0).abs() < 1e-4,
            "the waiting vector is searched: {}",
            moved[0].1
        );

        idx.clear()?;
        assert_eq!(idx.seq(), 0);
        assert!(idx.is_empty());
        assert!(
            server.fake().collections.is_empty(),
            "collection and marker dropped"
        );
        drop(idx);
        let idx = QdrantIndex::open(&o)?;
        assert_eq!((idx.seq(), idx.seq_hash()), (0, None));
        assert!(idx.is_empty());
        Ok(())
    }

    #[test]
    fn a_collection_without_its_marker_is_rebuilt() -> Result<(), ContextError> {
        let server = Server::start(None);
        let o = options(&server, 100);
        {
            let mut idx = QdrantIndex::open(&o)?;
            idx.upsert(vec![row("a/1", "a", vec![1.0, 0.0])])?;
            idx.set_seq(3, [3; 32])?;
        }
        assert!(server.fake().collections.contains_key("ctx"), "written on drop");
        server.fake().collections.remove(&format!("ctx{MARKER_SUFFIX}"));
        let idx = QdrantIndex::open(&o)?;
        assert_eq!(idx.seq(), 0);
        assert!(idx.is_empty());
        assert!(
            !server.fake().collections.contains_key("ctx"),
            "dropped to be rebuilt"
        );
        Ok(())
    }

    #[test]
    fn widths_and_foreign_collections_are_refused() -> Result<(), ContextError> {
        let server = Server::start(None);
        let o = options(&server, 1);
        let mut idx = QdrantIndex::open(&o)?;
        idx.upsert(vec![row("a/1", "a", vec![1.0, 0.0])])?;
        let err = vector_error(idx.upsert(vec![row("a/2", "a", vec![1.0, 0.0, 0.0])]));
        assert!(err.contains("3 dimensions") && err.contains("holds 2"), "{err}");
        let err = vector_error(idx.search(&[1.0, 0.0, 0.0], 1, &[], &mut |_| true));
        assert!(err.contains("3 dimensions"), "{err}");
        drop(idx);

        // A collection stele did not make is left alone.
        server.fake().collections.insert(
            "theirs".into(),
            Coll {
                vectors: json!({ "text": { "size": 3, "distance": "Cosine" } }),
                points: BTreeMap::new(),
                indexes: BTreeMap::new(),
            },
        );
        let theirs = QdrantOptions {
            collection: "theirs".into(),
            ..o.clone()
        };
        let err = vector_error(QdrantIndex::open(&theirs));
        assert!(
            err.contains("not made by stele") && err.contains("/collections/theirs"),
            "{err}"
        );
        assert!(server.fake().collections.contains_key("theirs"));
        Ok(())
    }

    #[test]
    fn server_errors_name_the_url_and_what_qdrant_said() -> Result<(), ContextError> {
        let server = Server::start(None);
        let o = options(&server, 100);
        let url = server.url();
        let mut idx = QdrantIndex::open(&o)?;
        idx.upsert(vec![row("a/1", "a", vec![1.0, 0.0])])?;
        idx.set_seq(1, [1; 32])?;
        idx.flush()?;

        server.fake().fault = Some(Fault::Internal);
        idx.upsert(vec![row("a/2", "a", vec![0.0, 1.0])])?;
        let err = vector_error(idx.flush());
        assert!(
            err.contains(&format!("{url}/collections/ctx/points?wait=true"))
                && err.contains("HTTP 500")
                && err.contains("No space left on device"),
            "{err}"
        );
        let err = vector_error(idx.search(&[1.0, 0.0], 1, &[], &mut |_| true));
        assert!(
            err.contains("POST") && err.contains("/points/search") && err.contains("HTTP 500"),
            "{err}"
        );

        server.fake().fault = Some(Fault::BadHits);
        let err = vector_error(idx.search(&[1.0, 0.0], 1, &[], &mut |_| true));
        assert!(
            err.contains("malformed answer") && err.contains("payload.key"),
            "{err}"
        );

        server.fake().fault = Some(Fault::Malformed);
        let err = vector_error(QdrantIndex::open(&o));
        assert!(
            err.contains(&format!("GET {url}/collections/ctx"))
                && err.contains("not JSON")
                && err.contains("[tru"),
            "{err}"
        );

        server.fake().fault = Some(Fault::NoResult);
        let err = vector_error(QdrantIndex::open(&o));
        assert!(err.contains("without \"result\""), "{err}");

        server.fake().fault = None;
        drop(idx);
        assert_eq!(
            QdrantIndex::open(&o)?.seq(),
            1,
            "the failed writes left the last marker"
        );
        Ok(())
    }

    #[test]
    fn a_wrong_api_key_is_named() {
        let server = Server::start(Some("sekret"));
        let o = QdrantOptions {
            api_key: Some("guess".into()),
            ..options(&server, 10)
        };
        let err = vector_error(QdrantIndex::open(&o));
        assert!(
            err.contains("HTTP 401") && err.contains("Invalid api-key") && err.contains("api_key_env"),
            "{err}"
        );
        let err = vector_error(QdrantIndex::open(&QdrantOptions { api_key: None, ..o }));
        assert!(err.contains("HTTP 401"), "{err}");
    }

    #[test]
    fn an_unreachable_server_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = vector_error(QdrantIndex::open(&QdrantOptions::new(&url)));
        assert!(
            err.contains(&format!("GET {url}/collections/{DEFAULT_COLLECTION}")) && err.contains("reachable"),
            "{err}"
        );
        let err = vector_error(QdrantIndex::open(&QdrantOptions::new("qdrant:6333")));
        assert!(err.contains("http://"), "{err}");
    }
}
