//! [`ContextService`]: the context store of one journal, live. It owns the
//! folded store, its keyword index and the vector index ([`Live`]); each
//! operation decides against them (`ops`), appends the facts to the
//! agent's `context:<agent>` stream, and folds the committed events back
//! in, so what a search sees is exactly what the journal says. Embeddings
//! are computed after an item is durable and journaled as
//! `EmbeddingComputed`; reads journal their gate decisions and a
//! `ContextAccessed`.
//!
//! One operation at a time per service (a mutex held across decide and
//! append), so ids and checks never race. The gate is a [`LiveGate`]: each
//! operation takes the set in force when it begins (a daemon's policy
//! reload reaches the next operation).

use std::sync::Arc;

use stele_journal::{Append, ArchivedEventBody, EventBody, EventRef, Journal, Reader, Seq};
use stele_projections::Projection;
use stele_projections::context::{ContextStore, Item, item_key};
use tokio::sync::Mutex;

use super::embed::Embedder;
use super::ops::{self, Changes, NewItem, ReadGate, Rejected, Requester};
use super::score::Scoring;
use super::search::{self, Found, KeywordIndex, Mode, Query, Sources};
use super::vector::{self, VectorIndex, VectorRow};
use super::{AccessLevel, ContextError};
use crate::policy::LiveGate;

/// The store and its indexes, folded to `seq`.
#[derive(Debug, Default)]
pub struct Live {
    /// The projection.
    pub store: ContextStore,
    /// The last seq folded.
    pub seq: Seq,
    /// The keyword index of the live items.
    pub keywords: KeywordIndex,
    /// The vector index (`None`: similarity search falls back to keyword).
    pub vectors: Option<Box<dyn VectorIndex>>,
    /// The last error of the vector index; it is dropped after one
    /// (searches fall back to keyword) and rebuilt on the next start.
    pub vector_error: Option<String>,
}

impl Live {
    /// An empty store with `vectors` as its vector index.
    #[must_use]
    pub fn new(vectors: Option<Box<dyn VectorIndex>>) -> Live {
        Live {
            vectors,
            ..Live::default()
        }
    }

    /// Folds one committed event into the store and both indexes.
    pub fn apply(&mut self, e: &EventRef) {
        if e.seq() <= self.seq {
            return;
        }
        // What the fact removes, before the store forgets it.
        let removed: Vec<String> = match e.body() {
            ArchivedEventBody::ContextArchived { agent, archive } => archive
                .items
                .iter()
                .map(|id| item_key(agent.as_str(), id.as_str()))
                .collect(),
            _ => Vec::new(),
        };
        self.store.apply(e);
        self.seq = e.seq();
        // A persistent vector index already holds what it folded before.
        let vectors_behind = self.vectors.as_ref().is_some_and(|v| v.seq() < e.seq().0);
        let vec_result = match e.body() {
            ArchivedEventBody::ContextStored { agent, item } => {
                if let Some(it) = self.store.item(agent.as_str(), item.id.as_str()) {
                    self.keywords.insert(it);
                }
                Ok(())
            }
            ArchivedEventBody::ContextUpdated { agent, item, .. } => {
                if let Some(it) = self.store.item(agent.as_str(), item.as_str()) {
                    self.keywords.insert(it);
                }
                Ok(())
            }
            ArchivedEventBody::ContextArchived { .. } => {
                for k in &removed {
                    self.keywords.remove(k);
                }
                match &mut self.vectors {
                    Some(v) if vectors_behind => v.remove(&removed),
                    _ => Ok(()),
                }
            }
            ArchivedEventBody::EmbeddingComputed {
                agent,
                item,
                vector: bytes,
                ..
            } => match (&mut self.vectors, self.store.item(agent.as_str(), item.as_str())) {
                (Some(v), Some(it)) if vectors_behind => {
                    vector::decode(bytes.as_slice()).and_then(|vector| {
                        v.upsert(vec![VectorRow {
                            key: item_key(&it.owner, &it.id),
                            owner: it.owner.clone(),
                            memory_type: it.memory_type.clone(),
                            vector,
                        }])
                    })
                }
                _ => Ok(()),
            },
            _ => return,
        };
        let vec_result = vec_result.and_then(|()| match &mut self.vectors {
            Some(v) if vectors_behind => v.set_seq(e.seq().0, e.hash().0),
            _ => Ok(()),
        });
        if let Err(err) = vec_result {
            self.vector_error = Some(err.to_string());
            self.vectors = None;
        }
    }

    /// Checks that a persistent vector index was folded from this journal
    /// (the event at its seq has the hash it recorded); otherwise it is
    /// cleared and rebuilt from the journal by the next fold.
    ///
    /// # Errors
    /// Reading the journal failed.
    pub fn check_vectors(&mut self, reader: &Reader) -> Result<(), ContextError> {
        let Some(v) = &mut self.vectors else {
            return Ok(());
        };
        let at = v.seq();
        if at == 0 {
            return Ok(());
        }
        let recorded = reader.get(Seq(at))?.map(|e| e.hash().0);
        if recorded.is_none() && v.shared() && at > reader.head().seq.0 {
            // Another node folded events this one has not received yet.
            tracing::info!(
                seq = at,
                head = reader.head().seq.0,
                backend = v.backend(),
                "the shared vector index is ahead of this journal; keeping it"
            );
            return Ok(());
        }
        if recorded.is_none() || recorded != v.seq_hash() {
            tracing::warn!(
                seq = at,
                backend = v.backend(),
                "the vector index does not match this journal at its seq; rebuilding it from the journal"
            );
            if let Err(err) = v.clear() {
                self.vector_error = Some(err.to_string());
                self.vectors = None;
            }
        }
        Ok(())
    }

    /// Folds every event after `seq` up to the journal's head.
    ///
    /// # Errors
    /// Reading the journal failed.
    pub fn catch_up(&mut self, reader: &Reader) -> Result<(), ContextError> {
        let head = reader.head().seq;
        if head <= self.seq {
            return Ok(());
        }
        for e in reader.range(self.seq.next(), head) {
            self.apply(&e?);
        }
        Ok(())
    }
}

/// What `stats` reports for an agent.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// The agent.
    pub agent: String,
    /// Live items.
    pub items: u64,
    /// Their bytes (id, content, tags).
    pub bytes: u64,
    /// Live items per memory type.
    pub by_type: std::collections::BTreeMap<String, u64>,
    /// Items past their type's retention at `now_ms` (eligible for archiving).
    pub eligible_for_archive: u64,
    /// Items with an embedding.
    pub embedded: u64,
    /// Items shared with other agents (grants given).
    pub grants_given: u64,
    /// Items others shared with this agent.
    pub shared_with_me: u64,
    /// Archives and what they hold.
    pub archives: u64,
    /// Items archived.
    pub archived_items: u64,
    /// JSON bytes of the archived items.
    pub archived_bytes: u64,
    /// Their compressed bytes.
    pub archived_compressed_bytes: u64,
    /// Mean importance of the live items at `now_ms`.
    pub mean_importance: f64,
}

/// Stats of `agent` at `now_ms`.
#[must_use]
pub fn stats(store: &ContextStore, scoring: &Scoring, agent: &str, now_ms: u64) -> Stats {
    let mut s = Stats {
        agent: agent.to_owned(),
        ..Stats::default()
    };
    if let Some(a) = store.agents.get(agent) {
        s.items = a.items.len() as u64;
        s.bytes = a.bytes;
        let mut importance = 0.0;
        for it in a.items.values() {
            *s.by_type.entry(it.memory_type.clone()).or_default() += 1;
            if ops::eligible(it, None, now_ms, scoring) {
                s.eligible_for_archive += 1;
            }
            if it.embedding.is_some() {
                s.embedded += 1;
            }
            if store
                .grants
                .get(&item_key(agent, &it.id))
                .is_some_and(|g| !g.is_empty())
            {
                s.grants_given += 1;
            }
            importance += scoring.importance(it, now_ms);
        }
        if !a.items.is_empty() {
            s.mean_importance = importance / a.items.len() as f64;
        }
        s.archives = a.archives.len() as u64;
        for ar in &a.archives {
            s.archived_items += ar.items;
            s.archived_bytes += ar.original_bytes;
            s.archived_compressed_bytes += ar.compressed_bytes;
        }
    }
    s.shared_with_me = store.shared_with.get(agent).map_or(0, |k| k.len() as u64);
    s
}

/// See the module documentation.
#[derive(Debug)]
pub struct ContextService {
    journal: Journal,
    live: Mutex<Live>,
    /// The policy set in force, taken once per operation (a daemon's
    /// reload swaps it for the next operation).
    gate: LiveGate,
    embedder: Arc<dyn Embedder>,
    scoring: Scoring,
}

impl ContextService {
    /// A service over `journal`, folding what it holds first.
    ///
    /// # Errors
    /// Reading the journal failed.
    pub fn open(
        journal: Journal,
        gate: impl Into<LiveGate>,
        embedder: Arc<dyn Embedder>,
        scoring: Scoring,
        vectors: Option<Box<dyn VectorIndex>>,
    ) -> Result<ContextService, ContextError> {
        let mut live = Live::new(vectors);
        live.check_vectors(&journal.reader())?;
        live.catch_up(&journal.reader())?;
        Ok(ContextService {
            journal,
            live: Mutex::new(live),
            gate: gate.into(),
            embedder,
            scoring,
        })
    }

    /// The importance policies.
    #[must_use]
    pub fn scoring(&self) -> &Scoring {
        &self.scoring
    }

    /// The live state (locked while the guard lives).
    pub async fn live(&self) -> tokio::sync::MutexGuard<'_, Live> {
        self.live.lock().await
    }

    async fn commit(&self, live: &mut Live, agent: &str, facts: Vec<EventBody>) -> Result<(), ContextError> {
        if facts.is_empty() {
            return Ok(());
        }
        let stream = ops::stream_of(agent)?;
        let appends = facts
            .into_iter()
            .map(|body| Append {
                stream: stream.clone(),
                cause: None,
                body,
            })
            .collect();
        self.journal.append_many(appends).await?;
        live.catch_up(&self.journal.reader())
    }

    async fn settle(&self, live: &mut Live, agent: &str, decided: ops::Decided) -> Result<(), ContextError> {
        match decided {
            Ok(facts) => self.commit(live, agent, facts).await,
            Err(Rejected { facts, error }) => {
                self.commit(live, agent, facts).await?;
                Err(error)
            }
        }
    }

    async fn embed_item(&self, live: &mut Live, owner: &str, id: &str) -> Result<(), ContextError> {
        let Some(item) = live.store.item(owner, id) else {
            return Ok(());
        };
        let texts = vec![item.content.clone()];
        let mut v = self.embedder.embed(&texts).await?;
        let vector = v
            .pop()
            .ok_or_else(|| ContextError::Embedding("the embedder returned nothing".into()))?;
        self.commit(
            live,
            owner,
            vec![EventBody::EmbeddingComputed {
                agent: owner.to_owned(),
                item: id.to_owned(),
                model: self.embedder.model(),
                vector: vector::encode(&vector),
            }],
        )
        .await
    }

    /// Stores an item in the requester's context and embeds it. Returns its id.
    ///
    /// # Errors
    /// Bad input, a taken id, the gate's denial (journaled), the journal,
    /// or the embedder (the item is stored then, without an embedding).
    pub async fn store(&self, requester: &Requester, new: NewItem) -> Result<String, ContextError> {
        let mut live = self.live.lock().await;
        match ops::store(&live.store, &self.gate.current(), requester, new) {
            Ok((facts, id)) => {
                self.commit(&mut live, &requester.agent, facts).await?;
                self.embed_item(&mut live, &requester.agent, &id)
                    .await
                    .map_err(|e| {
                        ContextError::Embedding(format!("{id} was stored without an embedding: {e}"))
                    })?;
                Ok(id)
            }
            Err(Rejected { facts, error }) => {
                self.commit(&mut live, &requester.agent, facts).await?;
                Err(error)
            }
        }
    }

    /// Stores many items of one agent in one journal batch (and their
    /// embeddings in a second). Returns their ids.
    ///
    /// # Errors
    /// As [`store`](Self::store); nothing is stored when one is refused.
    pub async fn store_many(
        &self,
        requester: &Requester,
        items: Vec<NewItem>,
    ) -> Result<Vec<String>, ContextError> {
        let mut live = self.live.lock().await;
        let mut scratch = live.store.clone();
        let mut facts = Vec::new();
        let mut ids = Vec::new();
        let stream = ops::stream_of(&requester.agent)?;
        let set = self.gate.current();
        for (i, new) in items.into_iter().enumerate() {
            let (f, id) = ops::store(&scratch, &set, requester, new).map_err(|r| r.error)?;
            for body in &f {
                let seq = Seq(live.seq.0 + 1 + i as u64);
                let e = stele_journal::event::detached_event(seq, 0, &stream, None, body)?;
                scratch.apply(&e);
            }
            facts.extend(f);
            ids.push(id);
        }
        self.commit(&mut live, &requester.agent, facts).await?;
        let texts: Vec<String> = ids
            .iter()
            .filter_map(|id| live.store.item(&requester.agent, id).map(|i| i.content.clone()))
            .collect();
        let vectors = self.embedder.embed(&texts).await?;
        let model = self.embedder.model();
        let facts = ids
            .iter()
            .zip(vectors)
            .map(|(id, v)| EventBody::EmbeddingComputed {
                agent: requester.agent.clone(),
                item: id.clone(),
                model: model.clone(),
                vector: vector::encode(&v),
            })
            .collect();
        self.commit(&mut live, &requester.agent, facts).await?;
        Ok(ids)
    }

    /// Updates an item (re-embedding it when its content changed).
    ///
    /// # Errors
    /// As [`ops::update`], the journal, the embedder.
    pub async fn update(
        &self,
        requester: &Requester,
        owner: &str,
        id: &str,
        changes: Changes,
    ) -> Result<(), ContextError> {
        let mut live = self.live.lock().await;
        let content_changed = changes.content.is_some();
        let d = ops::update(&live.store, &self.gate.current(), requester, owner, id, changes);
        self.settle(&mut live, owner, d).await?;
        if content_changed {
            self.embed_item(&mut live, owner, id).await?;
        }
        Ok(())
    }

    /// Feedback on an item.
    ///
    /// # Errors
    /// As [`ops::feedback`], the journal.
    pub async fn feedback(
        &self,
        requester: &Requester,
        owner: &str,
        id: &str,
        score_permille: i32,
    ) -> Result<(), ContextError> {
        let mut live = self.live.lock().await;
        let d = ops::feedback(
            &live.store,
            &self.gate.current(),
            requester,
            owner,
            id,
            score_permille,
        );
        self.settle(&mut live, owner, d).await
    }

    /// Shares the requester's item with another agent.
    ///
    /// # Errors
    /// As [`ops::share`], the journal.
    pub async fn share(
        &self,
        requester: &Requester,
        id: &str,
        with: &str,
        level: AccessLevel,
    ) -> Result<(), ContextError> {
        let mut live = self.live.lock().await;
        let d = ops::share(&live.store, &self.gate.current(), requester, id, with, level);
        self.settle(&mut live, &requester.agent, d).await
    }

    /// Archives the requester's items stored before `before_ms` (or past
    /// their retention at `now_ms`). Returns how many.
    ///
    /// # Errors
    /// As [`ops::archive`], the journal.
    pub async fn archive(
        &self,
        requester: &Requester,
        before_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<usize, ContextError> {
        let mut live = self.live.lock().await;
        match ops::archive(
            &live.store,
            &self.gate.current(),
            requester,
            before_ms,
            now_ms,
            &self.scoring,
        ) {
            Ok((facts, n)) => {
                self.commit(&mut live, &requester.agent, facts).await?;
                Ok(n)
            }
            Err(Rejected { facts, error }) => {
                self.commit(&mut live, &requester.agent, facts).await?;
                Err(error)
            }
        }
    }

    /// Searches what the requester may read; journals the gate's decisions
    /// and the access.
    ///
    /// # Errors
    /// A bad query, the journal.
    pub async fn search(&self, requester: &Requester, q: &Query) -> Result<Found, ContextError> {
        let query_vector = match q.mode {
            Mode::Similarity | Mode::Hybrid => {
                let texts = vec![q.text.clone()];
                // The query's vector is not a fact: the results are.
                self.embedder.embed(&texts).await.ok().and_then(|mut v| v.pop())
            }
            _ => None,
        };
        let mut live = self.live.lock().await;
        // What other writers of this journal committed since (a service
        // lives as long as the process).
        live.catch_up(&self.journal.reader())?;
        let set = self.gate.current();
        let mut gate = ReadGate::new(&set, requester);
        let mut found = {
            let src = Sources {
                store: &live.store,
                keywords: &live.keywords,
                vectors: live.vectors.as_deref(),
                query_vector: query_vector.as_deref(),
                scoring: &self.scoring,
            };
            search::search(&src, &mut gate, q)?
        };
        if found.note.is_some()
            && let Some(e) = &live.vector_error
        {
            found.note = Some(format!("vector index unavailable ({e}); keyword search instead"));
        }
        let mut facts = gate.into_facts();
        facts.push(ops::accessed(
            requester,
            found.hits.iter().map(|h| h.key.clone()).collect(),
            &format!("search {}: {}", q.mode.name(), q.text),
            q.now_ms,
        ));
        self.commit(&mut live, &requester.agent, facts).await?;
        Ok(found)
    }

    /// The requester's newest items (of `types`, when given), journaled as
    /// an access.
    ///
    /// # Errors
    /// The journal.
    pub async fn retrieve(
        &self,
        requester: &Requester,
        types: &[String],
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<Item>, ContextError> {
        let mut live = self.live.lock().await;
        live.catch_up(&self.journal.reader())?;
        let set = self.gate.current();
        let mut gate = ReadGate::new(&set, requester);
        let items = search::recent(&live.store, &mut gate, types, limit);
        let mut facts = gate.into_facts();
        facts.push(ops::accessed(
            requester,
            items.iter().map(|i| item_key(&i.owner, &i.id)).collect(),
            "retrieve",
            now_ms,
        ));
        self.commit(&mut live, &requester.agent, facts).await?;
        Ok(items)
    }

    /// Stats of `agent` at `now_ms`, after folding what the journal holds.
    ///
    /// # Errors
    /// Reading the journal.
    pub async fn stats(&self, agent: &str, now_ms: u64) -> Result<Stats, ContextError> {
        let mut live = self.live.lock().await;
        live.catch_up(&self.journal.reader())?;
        Ok(stats(&live.store, &self.scoring, agent, now_ms))
    }
}
