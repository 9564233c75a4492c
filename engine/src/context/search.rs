//! Search over the context store: keyword (BM25 over an inverted index
//! kept beside the store), temporal (a time range ranked by recency and
//! importance), similarity (a [`VectorIndex`]) and hybrid (keyword and
//! similarity, weighted). Every mode returns only what the reader may read
//! ([`ReadGate`]: its own items, public ones, and those shared with it,
//! each class checked by the Cedar gate) and ranks relevance × importance.
//! Similarity and hybrid fall back to keyword when no vector index is
//! available (or it fails), and say so in [`Found::note`].
//!
//! Why hand-written BM25 and not tantivy: the index is a fold of the
//! journal kept in memory beside the store, updated per fact in
//! microseconds; tantivy's segment/commit model, its build cost and its
//! own files would add a second store to keep consistent for no gain at
//! this size (BENCHMARKS.md `## Context`).

use std::collections::HashMap;

use stele_projections::context::{ContextStore, Item, item_key};

use super::ContextError;
use super::ops::ReadGate;
use super::score::Scoring;
use super::vector::{VectorIndex, top_k};

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalization.
const B: f64 = 0.75;
/// Most results of one search.
pub const MAX_LIMIT: usize = 1000;

const STOPWORDS: [&str; 32] = [
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it", "its",
    "of", "on", "or", "that", "the", "this", "to", "was", "were", "what", "when", "where", "which", "who",
    "will", "with",
];

/// The terms of a text: lower-cased alphanumeric runs of two or more
/// characters, stop words dropped.
#[must_use]
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// The inverted index of every live item's content and tags.
#[derive(Debug, Default, Clone)]
pub struct KeywordIndex {
    keys: Vec<String>,
    ids: HashMap<String, u32>,
    free: Vec<u32>,
    lens: Vec<u32>,
    /// Each doc's distinct terms, so a removal touches only its postings.
    terms_of: Vec<Vec<String>>,
    postings: HashMap<String, HashMap<u32, u32>>,
    total_len: u64,
    docs: u64,
}

impl KeywordIndex {
    /// The index of every live item of `store`.
    #[must_use]
    pub fn build(store: &ContextStore) -> KeywordIndex {
        let mut k = KeywordIndex::default();
        for a in store.agents.values() {
            for item in a.items.values() {
                k.insert(item);
            }
        }
        k
    }

    /// Indexes (or re-indexes) an item.
    pub fn insert(&mut self, item: &Item) {
        let key = item_key(&item.owner, &item.id);
        self.remove(&key);
        let mut terms = tokenize(&item.content);
        for t in &item.tags {
            terms.extend(tokenize(t));
        }
        let doc = if let Some(d) = self.free.pop() {
            self.keys[d as usize].clone_from(&key);
            d
        } else {
            self.keys.push(key.clone());
            self.lens.push(0);
            self.terms_of.push(Vec::new());
            u32::try_from(self.keys.len() - 1).expect("fewer than 4 billion items")
        };
        let len = u32::try_from(terms.len()).unwrap_or(u32::MAX);
        self.lens[doc as usize] = len;
        self.total_len += u64::from(len);
        self.docs += 1;
        let mut distinct = terms.clone();
        distinct.sort_unstable();
        distinct.dedup();
        for t in terms {
            *self.postings.entry(t).or_default().entry(doc).or_default() += 1;
        }
        self.terms_of[doc as usize] = distinct;
        self.ids.insert(key, doc);
    }

    /// Drops an item (no-op when absent).
    pub fn remove(&mut self, key: &str) {
        let Some(doc) = self.ids.remove(key) else {
            return;
        };
        for t in std::mem::take(&mut self.terms_of[doc as usize]) {
            if let Some(p) = self.postings.get_mut(&t) {
                p.remove(&doc);
                if p.is_empty() {
                    self.postings.remove(&t);
                }
            }
        }
        self.total_len -= u64::from(self.lens[doc as usize]);
        self.docs -= 1;
        self.lens[doc as usize] = 0;
        self.free.push(doc);
    }

    /// Items indexed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// BM25 scores of the items matching any term of `text` that `allow`
    /// accepts, unsorted.
    pub fn scores(&self, text: &str, allow: &mut dyn FnMut(&str) -> bool) -> Vec<(String, f32)> {
        self.doc_scores(text)
            .into_iter()
            .filter_map(|(doc, s)| {
                let key = &self.keys[doc as usize];
                allow(key).then(|| (key.clone(), s as f32))
            })
            .collect()
    }

    /// The matches of `text` best first — descending BM25, then ascending
    /// key — produced lazily: a heap of (score, doc) gives the scores in
    /// order, and only a run of equal scores the consumer reaches is
    /// sorted by key. Taking the first k of n matches costs O(n + k log n)
    /// and copies no key.
    #[must_use]
    pub fn ranked(&self, text: &str) -> Ranked<'_> {
        Ranked {
            keys: &self.keys,
            heap: self
                .doc_scores(text)
                .into_iter()
                .map(|(doc, s)| Candidate { score: s as f32, doc })
                .collect(),
            tied: Vec::new(),
            tied_score: 0.0,
        }
    }

    /// (doc, BM25) of every doc matching a term of `text`, unsorted. The
    /// scores accumulate in a dense array over the doc numbers (a doc's
    /// terms in sorted order, as before): no hashing per posting.
    fn doc_scores(&self, text: &str) -> Vec<(u32, f64)> {
        let mut terms = tokenize(text);
        terms.sort();
        terms.dedup();
        if self.docs == 0 || terms.is_empty() {
            return Vec::new();
        }
        let avg = self.total_len as f64 / self.docs as f64;
        let mut acc = vec![0.0_f64; self.keys.len()];
        let mut matched: Vec<u32> = Vec::new();
        for t in &terms {
            let Some(p) = self.postings.get(t) else {
                continue;
            };
            let df = p.len() as f64;
            let idf = ((self.docs as f64 - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (&doc, &tf) in p {
                let tf = f64::from(tf);
                let len = f64::from(self.lens[doc as usize]);
                let a = &mut acc[doc as usize];
                // Every term's share is positive (idf > 0, tf ≥ 1): a zero
                // is a doc not seen yet.
                if *a == 0.0 {
                    matched.push(doc);
                }
                *a += idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg.max(1.0)));
            }
        }
        matched.into_iter().map(|doc| (doc, acc[doc as usize])).collect()
    }
}

/// A keyword match: its BM25 and its doc, ordered by score (the doc only
/// makes the order total; [`Ranked`] orders equal scores by key).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    doc: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.doc.cmp(&self.doc))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// [`KeywordIndex::ranked`]: (key, BM25), best first, ties by key.
#[derive(Debug)]
pub struct Ranked<'a> {
    keys: &'a [String],
    heap: std::collections::BinaryHeap<Candidate>,
    /// The rest of the current run of equal scores, by descending key (the
    /// next one is last).
    tied: Vec<&'a str>,
    tied_score: f32,
}

impl<'a> Iterator for Ranked<'a> {
    type Item = (&'a str, f32);

    fn next(&mut self) -> Option<(&'a str, f32)> {
        if self.tied.is_empty() {
            let first = self.heap.pop()?;
            self.tied_score = first.score;
            self.tied.push(&self.keys[first.doc as usize]);
            while let Some(c) = self.heap.peek()
                && c.score.total_cmp(&first.score).is_eq()
            {
                self.tied.push(&self.keys[c.doc as usize]);
                self.heap.pop();
            }
            self.tied.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.tied.pop().map(|k| (k, self.tied_score))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.heap.len() + self.tied.len();
        (n, Some(n))
    }
}

/// The search modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// BM25 over content and tags.
    Keyword,
    /// Items stored in a time range, newest and most important first.
    Temporal,
    /// Cosine similarity of embeddings.
    Similarity,
    /// Keyword and similarity, weighted.
    Hybrid,
}

impl Mode {
    /// Parses `keyword`, `temporal`, `similarity` or `hybrid`.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(s: &str) -> Result<Mode, ContextError> {
        Ok(match s {
            "keyword" => Mode::Keyword,
            "temporal" => Mode::Temporal,
            "similarity" | "vector" => Mode::Similarity,
            "hybrid" => Mode::Hybrid,
            _ => {
                return Err(ContextError::Invalid {
                    what: "search mode",
                    reason: format!("{s:?} is not one of keyword, temporal, similarity, hybrid"),
                });
            }
        })
    }

    /// The name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Mode::Keyword => "keyword",
            Mode::Temporal => "temporal",
            Mode::Similarity => "similarity",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// A search.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The text (unused by temporal search).
    pub text: String,
    /// The mode.
    pub mode: Mode,
    /// Most results.
    pub limit: usize,
    /// Only items stored at or after this time, ms.
    pub from_ms: Option<u64>,
    /// Only items stored before this time, ms.
    pub to_ms: Option<u64>,
    /// Only these memory types (empty: all).
    pub types: Vec<String>,
    /// Only items carrying every one of these tags.
    pub tags: Vec<String>,
    /// Weight of keyword relevance in hybrid search (similarity gets the rest).
    pub keyword_weight: f32,
    /// The reader's clock, ms: recency and importance are computed at it.
    pub now_ms: u64,
}

impl Query {
    /// A query of `mode` for `text` at `now_ms`, 10 results, hybrid weight 0.5.
    #[must_use]
    pub fn new(text: &str, mode: Mode, now_ms: u64) -> Query {
        Query {
            text: text.to_owned(),
            mode,
            limit: 10,
            from_ms: None,
            to_ms: None,
            types: Vec::new(),
            tags: Vec::new(),
            keyword_weight: 0.5,
            now_ms,
        }
    }
}

/// One result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    /// `owner/id`.
    pub key: String,
    /// The owner.
    pub owner: String,
    /// The id.
    pub id: String,
    /// The memory type.
    pub memory_type: String,
    /// The item's access level.
    pub level: String,
    /// The text.
    pub content: String,
    /// When it was stored, ms.
    pub stored_ms: u64,
    /// The final score (relevance × (1 + importance)).
    pub score: f32,
    /// The relevance of the mode, in [0, 1].
    pub relevance: f32,
    /// The importance at `now_ms`.
    pub importance: f32,
}

/// What a search found.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Found {
    /// The results, best first.
    pub hits: Vec<Hit>,
    /// The mode that ran (`keyword` when similarity fell back).
    pub mode: String,
    /// Why the mode asked for did not run, when it did not.
    pub note: Option<String>,
}

/// Everything one search reads.
#[derive(Debug)]
pub struct Sources<'a> {
    /// The store.
    pub store: &'a ContextStore,
    /// Its keyword index.
    pub keywords: &'a KeywordIndex,
    /// The vector index, when there is one.
    pub vectors: Option<&'a dyn VectorIndex>,
    /// The query's embedding (similarity and hybrid), when one was computed.
    pub query_vector: Option<&'a [f32]>,
    /// Importance policies.
    pub scoring: &'a Scoring,
}

fn passes(item: &Item, q: &Query) -> bool {
    q.from_ms.is_none_or(|f| item.stored_ms >= f)
        && q.to_ms.is_none_or(|t| item.stored_ms < t)
        && (q.types.is_empty() || q.types.contains(&item.memory_type))
        && q.tags.iter().all(|t| item.tags.contains(t))
}

/// Runs `q` for the reader of `gate`.
///
/// # Errors
/// A limit of 0 or over [`MAX_LIMIT`], a weight outside [0, 1], an empty
/// text for a text mode.
pub fn search(src: &Sources<'_>, gate: &mut ReadGate<'_>, q: &Query) -> Result<Found, ContextError> {
    if q.limit == 0 || q.limit > MAX_LIMIT {
        return Err(ContextError::Invalid {
            what: "limit",
            reason: format!("{} is outside 1..={MAX_LIMIT}", q.limit),
        });
    }
    if !(0.0..=1.0).contains(&q.keyword_weight) {
        return Err(ContextError::Invalid {
            what: "keyword weight",
            reason: format!("{} is outside 0..=1", q.keyword_weight),
        });
    }
    if q.mode != Mode::Temporal && tokenize(&q.text).is_empty() {
        return Err(ContextError::Invalid {
            what: "query",
            reason: format!("{:?} has no searchable word", q.text),
        });
    }
    let store = src.store;
    let mut allow = |key: &str| {
        store
            .item_by_key(key)
            .is_some_and(|item| passes(item, q) && gate.allows(store, item))
    };
    let mut note = None;
    let mut mode = q.mode;
    let vectors = match (q.mode, src.vectors, src.query_vector) {
        (Mode::Similarity | Mode::Hybrid, Some(v), Some(qv)) => {
            match v.search(qv, q.limit * 4, &[], &mut allow) {
                Ok(found) => Some(found),
                Err(e) => {
                    note = Some(format!("vector index unavailable ({e}); keyword search instead"));
                    None
                }
            }
        }
        (Mode::Similarity | Mode::Hybrid, None, _) => {
            note = Some("no vector index; keyword search instead".to_owned());
            None
        }
        (Mode::Similarity | Mode::Hybrid, Some(_), None) => {
            note = Some("the query has no embedding; keyword search instead".to_owned());
            None
        }
        _ => None,
    };
    if vectors.is_none() && matches!(mode, Mode::Similarity | Mode::Hybrid) {
        mode = Mode::Keyword;
    }
    if mode == Mode::Keyword {
        return Ok(Found {
            hits: keyword_ranked(src, q, &mut allow),
            mode: mode.name().to_owned(),
            note,
        });
    }
    let relevance: Vec<(String, f32)> = match mode {
        Mode::Keyword => Vec::new(),
        Mode::Similarity => vectors.unwrap_or_default(),
        Mode::Hybrid => {
            let kw = normalize(src.keywords.scores(&q.text, &mut allow));
            let mut merged: HashMap<String, f32> = HashMap::new();
            for (k, s) in kw {
                *merged.entry(k).or_default() += q.keyword_weight * s;
            }
            for (k, s) in vectors.unwrap_or_default() {
                *merged.entry(k).or_default() += (1.0 - q.keyword_weight) * s.max(0.0);
            }
            merged.into_iter().collect()
        }
        Mode::Temporal => {
            let mut out = Vec::new();
            for a in store.agents.values() {
                for item in a.items.values() {
                    let key = item_key(&item.owner, &item.id);
                    if allow(&key) {
                        // In range is a result, however old: a floor
                        // keeps a decayed recency above zero.
                        out.push((key, 1e-6 + src.scoring.recency(item, q.now_ms) as f32));
                    }
                }
            }
            out
        }
    };
    // Nothing unrelated is a result: a zero (or negative) relevance is none.
    let ranked: Vec<(String, f32)> = relevance
        .into_iter()
        .filter(|(_, rel)| *rel > 0.0)
        .filter_map(|(key, rel)| {
            let item = store.item_by_key(&key)?;
            let imp = src.scoring.importance(item, q.now_ms) as f32;
            Some((key, rel * (1.0 + imp)))
        })
        .collect();
    let hits = top_k(ranked, q.limit)
        .into_iter()
        .filter_map(|(key, score)| {
            let item = store.item_by_key(&key)?;
            let importance = src.scoring.importance(item, q.now_ms) as f32;
            Some(Hit {
                owner: item.owner.clone(),
                id: item.id.clone(),
                memory_type: item.memory_type.clone(),
                level: item.level.clone(),
                content: item.content.clone(),
                stored_ms: item.stored_ms,
                relevance: score / (1.0 + importance),
                importance,
                score,
                key,
            })
        })
        .collect();
    Ok(Found {
        hits,
        mode: mode.name().to_owned(),
        note,
    })
}

/// Keyword search ranked without checking every match: candidates are
/// taken in descending BM25 order (lazily, from [`KeywordIndex::ranked`]'s
/// heap) and checked (scope, gate, filters) only
/// until no unchecked one can beat the k-th result — a final score is at
/// most relevance × (1 + the largest type weight), importance being at
/// most the weight. Exact, and cheap when common terms match thousands.
fn keyword_ranked(src: &Sources<'_>, q: &Query, allow: &mut dyn FnMut(&str) -> bool) -> Vec<Hit> {
    let bound = 1.0 + src.scoring.max_weight() as f32;
    let mut best: Vec<(String, f32)> = Vec::new();
    let mut top_raw = 0.0_f32;
    for (key, rel) in src.keywords.ranked(&q.text) {
        if rel <= 0.0 {
            break;
        }
        if best.len() == q.limit && best.last().is_some_and(|(_, kth)| rel * bound < *kth) {
            break;
        }
        if !allow(key) {
            continue;
        }
        let Some(item) = src.store.item_by_key(key) else {
            continue;
        };
        top_raw = top_raw.max(rel);
        let score = rel * (1.0 + src.scoring.importance(item, q.now_ms) as f32);
        let at = best.partition_point(|(k, s)| *s > score || (*s == score && k.as_str() < key));
        if at < q.limit {
            best.insert(at, (key.to_owned(), score));
            best.truncate(q.limit);
        }
    }
    best.into_iter()
        .filter_map(|(key, score)| {
            let item = src.store.item_by_key(&key)?;
            let importance = src.scoring.importance(item, q.now_ms) as f32;
            // Relevance relative to the best visible match.
            let relevance = score / (1.0 + importance) / top_raw.max(f32::MIN_POSITIVE);
            Some(Hit {
                owner: item.owner.clone(),
                id: item.id.clone(),
                memory_type: item.memory_type.clone(),
                level: item.level.clone(),
                content: item.content.clone(),
                stored_ms: item.stored_ms,
                relevance,
                importance,
                score: relevance * (1.0 + importance),
                key,
            })
        })
        .collect()
}

/// Scales scores so the best is 1.
fn normalize(mut v: Vec<(String, f32)>) -> Vec<(String, f32)> {
    let max = v.iter().map(|(_, s)| *s).fold(0.0_f32, f32::max);
    if max > 0.0 {
        for (_, s) in &mut v {
            *s /= max;
        }
    }
    v
}

/// The reader's own items, newest first, at most `limit` (for `retrieve`:
/// an agent's recent context without a query). A walk of the agent's
/// seq-ordered index ([`AgentContext::by_seq`](stele_projections::context::AgentContext::by_seq))
/// from its newest end, stopping once `limit` items passed the type filter
/// and the gate: O(limit + skipped), whatever the store's size.
#[must_use]
pub fn recent(store: &ContextStore, gate: &mut ReadGate<'_>, types: &[String], limit: usize) -> Vec<Item> {
    let Some(a) = store.agents.get(&gate.requester().agent) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(limit.min(a.items.len()));
    for (_, id) in a.by_seq.iter().rev() {
        if out.len() == limit {
            break;
        }
        // The fold keeps the index and the items equal; a miss is skipped.
        let Some(i) = a.items.get(id) else {
            continue;
        };
        if (types.is_empty() || types.contains(&i.memory_type)) && gate.allows(store, i) {
            out.push(i.clone());
        }
    }
    out
}

/// What [`recent`] returns, by one pass over all of the agent's items
/// keeping the newest `limit` in a heap (O(items)): the reference the
/// index walk is property-tested against, and the baseline of the
/// `context` bench.
#[must_use]
pub fn recent_scan(
    store: &ContextStore,
    gate: &mut ReadGate<'_>,
    types: &[String],
    limit: usize,
) -> Vec<Item> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let me = gate.requester().agent.clone();
    let Some(a) = store.agents.get(&me) else {
        return Vec::new();
    };
    let mut newest: BinaryHeap<Reverse<(u64, &str)>> = BinaryHeap::with_capacity(limit + 1);
    for i in a.items.values() {
        if !(types.is_empty() || types.contains(&i.memory_type)) {
            continue;
        }
        if newest.len() == limit && newest.peek().is_some_and(|Reverse((s, _))| *s >= i.stored_seq) {
            continue;
        }
        if !gate.allows(store, i) {
            continue;
        }
        newest.push(Reverse((i.stored_seq, i.id.as_str())));
        if newest.len() > limit {
            newest.pop();
        }
    }
    let mut out: Vec<Item> = newest
        .into_iter()
        .filter_map(|Reverse((_, id))| a.items.get(id).cloned())
        .collect();
    out.sort_by_key(|i| Reverse(i.stored_seq));
    out
}
