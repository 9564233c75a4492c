//! The context store end to end on a real journal and the real Cedar gate
//! of `fixtures/policies`: the fold of every operation, access control
//! across agents and levels, archiving and retention, importance from
//! journaled facts, search ranking on `fixtures/context/corpus.json`, the
//! vector index rebuilt from the journal, the keyword fallback, the OpenAI
//! embeddings client against a local HTTP server, `stele at --view
//! context`, and the knowledge bridge in a scripted-provider run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use stele_engine::context::embed::{Embedder, HashEmbedder, OpenAiEmbedder};
use stele_engine::context::ops::{Changes, Requester, unarchive};
use stele_engine::context::score::Scoring;
use stele_engine::context::search::{Mode, Query};
use stele_engine::context::vector::{ExactIndex, VectorIndex};
use stele_engine::context::{AccessLevel, ContextError, ContextService, MemoryType, NewItem};
use stele_engine::policy::PolicyGate;
use stele_journal::{EventBody, Journal, Options, Seq};
use stele_projections::context::ContextStore;
use stele_projections::{SnapshotStore, state_at};

use crate::stele;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) journal: Journal,
    pub(crate) svc: ContextService,
    pub(crate) rt: tokio::runtime::Runtime,
}

pub(crate) fn gate() -> Arc<PolicyGate> {
    Arc::new(PolicyGate::load(&root().join("fixtures/policies")).expect("policies"))
}

fn env_with(vectors: bool) -> Env {
    env_with_index(|_| vectors.then(|| Box::new(ExactIndex::new()) as Box<_>))
}

/// A journal in a temporary directory and a context service over it with
/// the vector index `vectors` makes (given the temporary directory).
pub(crate) fn env_with_index(vectors: impl FnOnce(&Path) -> Option<Box<dyn VectorIndex>>) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path().join("data"), Options::default()).expect("journal");
    let svc = ContextService::open(
        journal.clone(),
        gate(),
        Arc::new(HashEmbedder),
        Scoring::default(),
        vectors(dir.path()),
    )
    .expect("service");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    Env {
        dir,
        journal,
        svc,
        rt,
    }
}

fn env() -> Env {
    env_with(true)
}

pub(crate) fn who(agent: &str, priority: &str) -> Requester {
    Requester {
        agent: agent.into(),
        priority: priority.into(),
    }
}

fn item(id: &str, t: MemoryType, level: AccessLevel, content: &str) -> NewItem {
    NewItem {
        id: Some(id.into()),
        memory_type: t,
        level,
        content: content.into(),
        tags: Vec::new(),
        importance_permille: 500,
        session: String::new(),
    }
}

pub(crate) const NOW: u64 = 4_000_000_000_000;

pub(crate) fn keys(e: &Env, r: &Requester, text: &str, mode: Mode) -> Vec<String> {
    let mut q = Query::new(text, mode, NOW);
    q.limit = 50;
    let found = e.rt.block_on(e.svc.search(r, &q)).expect("search");
    found.hits.into_iter().map(|h| h.key).collect()
}

fn bodies(j: &Journal) -> Vec<EventBody> {
    let r = j.reader();
    r.range(Seq(1), r.head().seq)
        .map(|e| e.expect("event").to_event().expect("decode").body)
        .collect()
}

/// Stores [`item`] `id` for `r` through the service.
fn store(e: &Env, r: &Requester, id: &str, t: MemoryType, level: AccessLevel, content: &str) {
    e.rt.block_on(e.svc.store(r, item(id, t, level, content)))
        .expect("store");
}

/// The context store folded afresh from `e`'s journal, up to its head.
fn fold(e: &Env) -> ContextStore {
    let reader = e.journal.reader();
    state_at::<ContextStore>(
        &reader,
        &SnapshotStore::new(&e.dir.path().join("data")),
        reader.head().seq,
    )
    .expect("fold")
    .state
}

#[test]
fn every_operation_is_a_fact_and_the_fold_follows_it() {
    let e = env();
    let alice = who("alice", "normal");
    let id =
        e.rt.block_on(e.svc.store(
            &alice,
            NewItem::text(MemoryType::LongTerm, "the cache lives on node 7"),
        ))
        .expect("store");
    assert_eq!(id, "m-1");
    e.rt.block_on(e.svc.update(
        &alice,
        "alice",
        "m-1",
        Changes {
            content: Some("the cache lives on node 9".into()),
            importance_permille: Some(900),
            memory_type: Some(MemoryType::Semantic),
        },
    ))
    .expect("update");
    e.rt.block_on(e.svc.feedback(&alice, "alice", "m-1", 800))
        .expect("feedback");
    e.rt.block_on(e.svc.share(&alice, "m-1", "bob", AccessLevel::Restricted))
        .expect("share");
    let hits = keys(&e, &alice, "cache node", Mode::Keyword);
    assert_eq!(hits, vec!["alice/m-1"]);

    let store = fold(&e);
    let it = store.item("alice", "m-1").expect("item");
    assert_eq!(it.content, "the cache lives on node 9");
    assert_eq!(it.memory_type, "semantic");
    assert_eq!(it.importance_permille, 900);
    assert_eq!(it.feedback_permille, 800);
    assert_eq!(it.accesses, 1);
    assert_eq!(it.last_access_ms, NOW);
    assert!(it.embedding.as_ref().is_some_and(|(m, _)| m == "hash-384"));
    assert_eq!(
        store.grant("alice/m-1", "bob").map(|g| g.level.as_str()),
        Some("restricted")
    );
    assert_eq!(store.agents["alice"].bytes, it.size_bytes());
    // The live service's store is the fold of the journal.
    assert_eq!(e.rt.block_on(e.svc.live()).store, store);

    let kinds: Vec<&str> = bodies(&e.journal).iter().map(EventBody::kind).collect::<Vec<_>>();
    for k in [
        "context_stored",
        "embedding_computed",
        "context_updated",
        "context_feedback_given",
        "context_shared",
        "context_accessed",
        "policy_decided",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }

    // Archive: the item leaves the live store; its JSON is in the event.
    let n =
        e.rt.block_on(e.svc.archive(&alice, Some(NOW), NOW))
            .expect("archive");
    assert_eq!(n, 1);
    let archived = bodies(&e.journal)
        .into_iter()
        .find_map(|b| match b {
            EventBody::ContextArchived { archive, .. } => Some(archive),
            _ => None,
        })
        .expect("archived");
    let items = unarchive(&archived.codec, &archived.compressed).expect("unarchive");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].content, "the cache lives on node 9");
    let live = e.rt.block_on(e.svc.live());
    assert!(live.store.item("alice", "m-1").is_none());
    assert!(live.store.grants.is_empty(), "grants of archived items go");
    assert_eq!(live.store.agents["alice"].archives.len(), 1);
    assert_eq!(live.keywords.len(), 0);
    assert_eq!(live.vectors.as_ref().map(|v| v.len()), Some(0));
}

#[test]
fn bad_input_is_refused_with_what_and_where() {
    let e = env();
    let alice = who("alice", "normal");
    let err = |r: Result<String, ContextError>| r.expect_err("refused").to_string();
    let mut bad_id = item("a/b", MemoryType::Working, AccessLevel::Restricted, "x");
    assert!(err(e.rt.block_on(e.svc.store(&alice, bad_id.clone()))).contains("contains '/'"));
    bad_id.id = Some("ok".into());
    bad_id.content = "  ".into();
    assert!(err(e.rt.block_on(e.svc.store(&alice, bad_id))).contains("content: it is empty"));
    store(
        &e,
        &alice,
        "x",
        MemoryType::Working,
        AccessLevel::Restricted,
        "once",
    );
    assert!(
        err(e.rt.block_on(e.svc.store(
            &alice,
            item("x", MemoryType::Working, AccessLevel::Restricted, "twice")
        )))
        .contains("already has a context item x")
    );
    let missing =
        e.rt.block_on(e.svc.feedback(&alice, "alice", "nope", 10))
            .expect_err("missing");
    assert!(
        missing
            .to_string()
            .contains("agent alice has no context item nope"),
        "{missing}"
    );
    assert!(
        MemoryType::parse("dreams")
            .expect_err("bad type")
            .to_string()
            .contains("short_term")
    );
    assert!(
        AccessLevel::parse("top")
            .expect_err("bad level")
            .to_string()
            .contains("secret")
    );
}

#[test]
fn an_agent_never_sees_what_it_may_not_read() {
    let e = env();
    let alice = who("alice", "normal");
    let bob = who("bob", "normal");
    let carol = who("carol", "high");
    for (id, level) in [
        ("pub", AccessLevel::Public),
        ("res", AccessLevel::Restricted),
        ("conf", AccessLevel::Confidential),
        ("sec", AccessLevel::Secret),
    ] {
        store(
            &e,
            &alice,
            id,
            MemoryType::LongTerm,
            level,
            &format!("zebra migration notes, {id} level"),
        );
    }
    let all_modes = |r: &Requester| -> Vec<Vec<String>> {
        [Mode::Keyword, Mode::Similarity, Mode::Hybrid, Mode::Temporal]
            .into_iter()
            .map(|m| {
                let mut k = keys(&e, r, "zebra migration", m);
                k.sort();
                k
            })
            .collect()
    };
    let owner_sees: Vec<String> = ["alice/conf", "alice/pub", "alice/res", "alice/sec"]
        .map(String::from)
        .to_vec();
    for seen in all_modes(&alice) {
        assert_eq!(seen, owner_sees);
    }
    for r in [&bob, &carol] {
        for seen in all_modes(r) {
            assert_eq!(seen, vec!["alice/pub"], "{} before any share", r.agent);
        }
    }
    // Restricted: a grant opens it to the grantee only.
    e.rt.block_on(e.svc.share(&alice, "res", "bob", AccessLevel::Restricted))
        .expect("share");
    for seen in all_modes(&bob) {
        assert_eq!(seen, vec!["alice/pub", "alice/res"]);
    }
    for seen in all_modes(&carol) {
        assert_eq!(seen, vec!["alice/pub"]);
    }
    // Confidential: a grant opens it to high or critical priority only.
    e.rt.block_on(e.svc.share(&alice, "conf", "bob", AccessLevel::Confidential))
        .expect("share");
    e.rt.block_on(e.svc.share(&alice, "conf", "carol", AccessLevel::Confidential))
        .expect("share");
    for seen in all_modes(&bob) {
        assert_eq!(seen, vec!["alice/pub", "alice/res"], "bob is normal priority");
    }
    for seen in all_modes(&carol) {
        assert_eq!(seen, vec!["alice/conf", "alice/pub"]);
    }
    // Secret: never shared, by policy; the denial is journaled.
    let denied =
        e.rt.block_on(e.svc.share(&alice, "sec", "carol", AccessLevel::Secret))
            .expect_err("secret share");
    assert!(
        denied.to_string().contains("secret items are never shared"),
        "{denied}"
    );
    assert!(bodies(&e.journal).iter().any(|b| matches!(b,
        EventBody::PolicyDecided { verdict, policies, .. }
            if verdict == "deny" && policies.contains(&"context-secret-never-shared".to_owned()))));
    // A less restrictive share than the item's own level is refused.
    let lower =
        e.rt.block_on(e.svc.share(&alice, "conf", "bob", AccessLevel::Public))
            .expect_err("downgrade");
    assert!(lower.to_string().contains("less restrictive"), "{lower}");
    // Bob may not write alice's item, nor rate what he cannot read.
    let w =
        e.rt.block_on(e.svc.update(
            &bob,
            "alice",
            "pub",
            Changes {
                content: Some("defaced".into()),
                ..Changes::default()
            },
        ))
        .expect_err("write");
    assert!(matches!(w, ContextError::Denied { .. }), "{w}");
    let f =
        e.rt.block_on(e.svc.feedback(&bob, "alice", "sec", 1000))
            .expect_err("feedback");
    assert!(matches!(f, ContextError::Denied { .. }), "{f}");
}

#[test]
fn archive_cuts_at_a_time_and_retention_is_per_type() {
    let e = env();
    let alice = who("alice", "normal");
    store(
        &e,
        &alice,
        "old",
        MemoryType::Episodic,
        AccessLevel::Restricted,
        "first deploy",
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let cut = e.rt.block_on(e.svc.live()).store.last_ms + 5;
    std::thread::sleep(std::time::Duration::from_millis(20));
    store(
        &e,
        &alice,
        "new",
        MemoryType::Episodic,
        AccessLevel::Restricted,
        "second deploy",
    );
    store(
        &e,
        &alice,
        "chat",
        MemoryType::ShortTerm,
        AccessLevel::Restricted,
        "hello there",
    );
    store(
        &e,
        &alice,
        "facts",
        MemoryType::LongTerm,
        AccessLevel::Restricted,
        "pi is 3.14",
    );
    assert_eq!(
        e.rt.block_on(e.svc.archive(&alice, Some(cut), NOW))
            .expect("archive"),
        1
    );
    let live = e.rt.block_on(e.svc.live()).store.clone();
    assert!(live.item("alice", "old").is_none() && live.item("alice", "new").is_some());

    // Two days on: short-term (1 day) is past retention, episodic (90) and
    // long-term (365) are not.
    let later = live.last_ms + 2 * 86_400_000;
    let stats = e.rt.block_on(e.svc.stats("alice", later)).expect("stats");
    assert_eq!(stats.items, 3);
    assert_eq!(stats.eligible_for_archive, 1);
    assert_eq!(stats.archives, 1);
    assert_eq!(stats.archived_items, 1);
    assert!(stats.archived_compressed_bytes > 0);
    assert_eq!(
        e.rt.block_on(e.svc.archive(&alice, None, later))
            .expect("retention"),
        1
    );
    let live = e.rt.block_on(e.svc.live()).store.clone();
    assert!(live.item("alice", "chat").is_none());
    assert!(live.item("alice", "new").is_some() && live.item("alice", "facts").is_some());
    // A year and a day on, long-term goes too.
    let year = live.last_ms + 366 * 86_400_000;
    assert_eq!(
        e.rt.block_on(e.svc.archive(&alice, None, year))
            .expect("retention"),
        2
    );
}

#[test]
fn importance_comes_from_journaled_facts_only() {
    let e = env();
    let alice = who("alice", "normal");
    for id in ["a", "b"] {
        store(
            &e,
            &alice,
            id,
            MemoryType::Episodic,
            AccessLevel::Restricted,
            "same words here",
        );
    }
    let scoring = Scoring::default();
    let score = |id: &str, now: u64| {
        let live = e.rt.block_on(e.svc.live());
        scoring.importance(live.store.item("alice", id).expect("item"), now)
    };
    let t0 = e.rt.block_on(e.svc.live()).store.last_ms;
    assert!(
        (score("a", t0) - score("b", t0)).abs() < 1e-6,
        "stored ms apart: nearly equal"
    );
    // Reads raise it (log-scaled), feedback raises it, age lowers it.
    e.rt.block_on(e.svc.retrieve(&alice, &[], 1, t0))
        .expect("retrieve"); // newest: b
    assert!(score("b", t0) > score("a", t0));
    e.rt.block_on(e.svc.feedback(&alice, "alice", "a", 1000))
        .expect("feedback");
    e.rt.block_on(e.svc.feedback(&alice, "alice", "a", 1000))
        .expect("feedback");
    assert!(score("a", t0) > score("b", t0));
    let week = 7 * 86_400_000;
    assert!(score("a", t0 + week) < score("a", t0));
    // Half-life per type: one week for episodic — the recency factor halves.
    let live = e.rt.block_on(e.svc.live());
    let it = live.store.item("alice", "a").expect("item");
    let r0 = scoring.recency(it, it.stored_ms);
    let r1 = scoring.recency(it, it.stored_ms + week);
    assert!((r0 - 1.0).abs() < 1e-9 && (r1 - 0.5).abs() < 1e-9, "{r0} {r1}");
    // The same journal folded again gives the same scores.
    let refolded = fold(&e);
    for id in ["a", "b"] {
        let x = refolded.item("alice", id).expect("item");
        assert_eq!(
            scoring.importance(x, NOW),
            scoring.importance(live.store.item("alice", id).expect("item"), NOW)
        );
    }
}

pub(crate) fn load_corpus(e: &Env) -> Value {
    let corpus: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/context/corpus.json")).expect("corpus"),
    )
    .expect("corpus json");
    let agent = corpus["agent"].as_str().expect("agent");
    let items = corpus["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| NewItem {
            id: Some(i["id"].as_str().expect("id").into()),
            memory_type: MemoryType::parse(i["type"].as_str().expect("type")).expect("type"),
            level: AccessLevel::parse(i["level"].as_str().unwrap_or("restricted")).expect("level"),
            content: i["content"].as_str().expect("content").into(),
            tags: Vec::new(),
            importance_permille: (i["importance"].as_f64().expect("importance") * 1000.0) as u32,
            session: String::new(),
        })
        .collect();
    e.rt.block_on(e.svc.store_many(&who(agent, "normal"), items))
        .expect("store corpus");
    corpus
}

#[test]
fn search_ranks_the_fixture_corpus() {
    let e = env();
    let corpus = load_corpus(&e);
    let ops = who("ops", "normal");
    // Temporal: a range with nothing in it is empty; the whole range has
    // all; a week on, working and short-term memory (half-lives of
    // hours) have decayed the most.
    let now = e.rt.block_on(e.svc.live()).store.last_ms + 7 * 86_400_000;
    let mut q = Query::new("", Mode::Temporal, now);
    q.limit = 100;
    q.to_ms = Some(1);
    assert!(
        e.rt.block_on(e.svc.search(&ops, &q))
            .expect("temporal")
            .hits
            .is_empty()
    );
    q.to_ms = None;
    let hits = e.rt.block_on(e.svc.search(&ops, &q)).expect("temporal").hits;
    assert_eq!(hits.len(), 10);
    let types: Vec<&str> = hits.iter().map(|h| h.memory_type.as_str()).collect();
    assert_eq!(types[0], "long_term", "{hits:?}");
    assert_eq!(
        &types[8..],
        ["working", "short_term"],
        "hours of half-life decay first: {hits:?}"
    );
    for q in corpus["queries"].as_array().expect("queries") {
        let text = q["query"].as_str().expect("query");
        let mode = Mode::parse(q["mode"].as_str().expect("mode")).expect("mode");
        let top = format!("ops/{}", q["top"].as_str().expect("top"));
        let found = keys(&e, &ops, text, mode);
        assert_eq!(found.first(), Some(&top), "{text:?} ({mode:?}) ranked {found:?}");
    }
    // Type filter.
    let mut q = Query::new("deploy", Mode::Keyword, NOW);
    q.types = vec!["working".into()];
    let hits = e.rt.block_on(e.svc.search(&ops, &q)).expect("typed").hits;
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        vec!["scratch"]
    );
}

#[test]
fn similarity_falls_back_to_keyword_without_a_vector_index() {
    let e = env_with(false);
    load_corpus(&e);
    let ops = who("ops", "normal");
    let found =
        e.rt.block_on(
            e.svc
                .search(&ops, &Query::new("liveness probe", Mode::Similarity, NOW)),
        )
        .expect("search");
    assert_eq!(found.mode, "keyword");
    assert!(
        found
            .note
            .as_deref()
            .is_some_and(|n| n.contains("no vector index")),
        "{found:?}"
    );
    assert_eq!(found.hits.first().map(|h| h.id.as_str()), Some("probe"));
}

#[test]
fn the_vector_index_rebuilt_from_the_journal_equals_the_live_one() {
    let e = env();
    load_corpus(&e);
    let ops = who("ops", "normal");
    let queries = [
        "disk space on nodes",
        "memory limit for workers",
        "expiry renewals",
    ];
    let live: Vec<Vec<String>> = queries
        .iter()
        .map(|q| keys(&e, &ops, q, Mode::Similarity))
        .collect();
    // A new service folds the same journal: the embeddings are read from
    // EmbeddingComputed, no model is called (this embedder refuses).
    #[derive(Debug)]
    struct Refuses;
    impl Embedder for Refuses {
        fn model(&self) -> String {
            "refuses".into()
        }
        fn embed<'a>(&'a self, texts: &'a [String]) -> stele_engine::context::embed::Embedded<'a> {
            let v = texts.iter().map(|t| HashEmbedder::vector(t)).collect::<Vec<_>>();
            // Queries are embedded (they are not facts); items are not.
            Box::pin(async move {
                if v.len() == 1 {
                    Ok(v)
                } else {
                    Err(ContextError::Embedding("a rebuild called the model".into()))
                }
            })
        }
    }
    let rebuilt = ContextService::open(
        e.journal.clone(),
        gate(),
        Arc::new(Refuses),
        Scoring::default(),
        Some(Box::new(ExactIndex::new())),
    )
    .expect("rebuild");
    let (live_len, live_seq) = {
        let l = e.rt.block_on(e.svc.live());
        (
            l.vectors.as_ref().map(|v| v.len()),
            l.vectors.as_ref().map(|v| v.seq()),
        )
    };
    {
        let r = e.rt.block_on(rebuilt.live());
        assert_eq!(r.vectors.as_ref().map(|v| v.len()), live_len);
        assert_eq!(r.vectors.as_ref().map(|v| v.seq()), live_seq);
    }
    for (q, want) in queries.iter().zip(&live) {
        let mut query = Query::new(q, Mode::Similarity, NOW);
        query.limit = 50;
        let got: Vec<String> =
            e.rt.block_on(rebuilt.search(&ops, &query))
                .expect("search")
                .hits
                .into_iter()
                .map(|h| h.key)
                .collect();
        // Rankings include importance, and the live searches journaled
        // accesses: compare the sets, and the top by similarity.
        let mut a = got.clone();
        let mut b = want.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{q}");
    }
}

/// An index other nodes write to too (like a Qdrant collection).
#[derive(Debug)]
struct SharedIndex(ExactIndex, bool);

impl VectorIndex for SharedIndex {
    fn backend(&self) -> &'static str {
        "shared-test"
    }
    fn upsert(&mut self, rows: Vec<stele_engine::context::vector::VectorRow>) -> Result<(), ContextError> {
        self.0.upsert(rows)
    }
    fn remove(&mut self, keys: &[String]) -> Result<(), ContextError> {
        self.0.remove(keys)
    }
    fn search(
        &self,
        query: &[f32],
        k: usize,
        owners: &[String],
        allow: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<(String, f32)>, ContextError> {
        self.0.search(query, k, owners, allow)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn seq(&self) -> u64 {
        self.0.seq()
    }
    fn shared(&self) -> bool {
        self.1
    }
    fn set_seq(&mut self, seq: u64, hash: [u8; 32]) -> Result<(), ContextError> {
        self.0.set_seq(seq, hash)
    }
    fn clear(&mut self) -> Result<(), ContextError> {
        self.0.clear()
    }
}

#[test]
fn a_shared_index_ahead_of_the_journal_is_kept_and_a_local_one_rebuilt() {
    let e = env();
    load_corpus(&e);
    let head = e.journal.reader().head().seq.0;
    let live_len = e.rt.block_on(e.svc.live()).vectors.as_ref().map(|v| v.len());
    let ahead = |shared: bool| {
        let mut index = ExactIndex::new();
        index
            .upsert(vec![stele_engine::context::vector::VectorRow {
                key: "ops/from-another-node".into(),
                owner: "ops".into(),
                memory_type: "semantic".into(),
                vector: vec![1.0, 0.0, 0.0],
            }])
            .expect("upsert");
        index.set_seq(head + 1_000, [7; 32]).expect("seq");
        let svc = ContextService::open(
            e.journal.clone(),
            gate(),
            Arc::new(HashEmbedder),
            Scoring::default(),
            Some(Box::new(SharedIndex(index, shared))),
        )
        .expect("open");
        let live = e.rt.block_on(svc.live());
        let v = live.vectors.as_ref().expect("an index");
        (v.len(), v.seq())
    };
    // Shared: another node folded events this journal has not received
    // yet; the index is trusted as it is.
    assert_eq!(ahead(true), (1, head + 1_000));
    // Local: an index ahead of its own journal belongs to something else
    // (a restored backup, another data dir); it is rebuilt from the journal.
    let (len, seq) = ahead(false);
    assert_eq!(Some(len), live_len);
    assert!(seq <= head, "{seq} > {head}");
}

/// A local HTTP server speaking the embeddings wire format: answers each
/// POST with one vector per input ([len, 1, 0]) and records the request.
fn embeddings_server(status: u16) -> (String, std::thread::JoinHandle<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        let mut len = 0;
        let mut line = String::new();
        let mut request_line = String::new();
        reader.read_line(&mut request_line).expect("request line");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).expect("body");
        let req: Value = serde_json::from_slice(&body).expect("request json");
        let data: Vec<Value> = req["input"]
            .as_array()
            .expect("input")
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| serde_json::json!({"index": i, "embedding": [t.as_str().expect("text").len(), 1, 0]}))
            .collect();
        let answer = if status == 200 {
            serde_json::json!({"data": data}).to_string()
        } else {
            "{\"error\": {\"message\": \"quota exceeded\"}}".to_owned()
        };
        write!(
            s,
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .expect("answer");
        serde_json::json!({"line": request_line.trim(), "body": req})
    });
    (url, handle)
}

#[test]
fn the_openai_embedder_speaks_the_wire_format() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (url, server) = embeddings_server(200);
    let emb = OpenAiEmbedder::new(&url, "text-embedding-3-small", None).expect("embedder");
    let texts = vec!["a".to_owned(), "abcd".to_owned()];
    let v = rt.block_on(emb.embed(&texts)).expect("embed");
    assert_eq!(
        v,
        vec![vec![1.0, 1.0, 0.0], vec![4.0, 1.0, 0.0]],
        "answers placed by index"
    );
    let seen = server.join().expect("server");
    assert_eq!(seen["line"], "POST /v1/embeddings HTTP/1.1");
    assert_eq!(seen["body"]["model"], "text-embedding-3-small");
    assert_eq!(emb.model(), "openai:text-embedding-3-small");

    let (url, server) = embeddings_server(429);
    let emb = OpenAiEmbedder::new(&url, "m", None).expect("embedder");
    let err = rt.block_on(emb.embed(&texts)).expect_err("429");
    assert!(
        err.to_string().contains("429") && err.to_string().contains("quota exceeded"),
        "{err}"
    );
    server.join().expect("server");
    // A remote server needs a key.
    let err = OpenAiEmbedder::new("https://api.example.invalid/v1", "m", None).expect_err("no key");
    assert!(err.to_string().contains("no API key"), "{err}");
    // Malformed answers name the field.
    let err = stele_engine::context::embed::parse_answer(br#"{"data": [{"embedding": [1, "x"]}]}"#, 1)
        .expect_err("bad");
    assert!(
        err.to_string().contains("data[0].embedding[1] is not a number"),
        "{err}"
    );
}

pub(crate) fn cli(data: &Path, args: &[&str]) -> std::process::Output {
    stele()
        .arg("--data")
        .arg(data)
        .args(args)
        .args([
            "--policies",
            root().join("fixtures/policies").to_str().expect("utf8"),
        ])
        .output()
        .expect("run stele")
}

pub(crate) fn ok_json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Asserts that a `stele` call succeeded, showing its output if not.
fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON report of a `stele run` (or `approve`) that parked its run
/// for an approval (exit status 3).
fn parked_report(out: &std::process::Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(3),
        "the write parks: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `stele context store librarian TEXT`: knowledge a run will recall.
fn store_knowledge(data: &Path, text: &str) {
    ok_json(&cli(data, &["context", "store", "librarian", text, "--json"]));
}

/// `stele run AGENT --input INPUT --json`, which must succeed: its report.
fn run_agent(data: &Path, agent: &Path, input: &str) -> Value {
    ok_json(&cli(
        data,
        &["run", agent.to_str().expect("utf8"), "--input", input, "--json"],
    ))
}

/// The librarian's episodic memory (`stele context show --type episodic`).
fn episodic(data: &Path) -> Value {
    ok_json(&cli(
        data,
        &["context", "show", "librarian", "--type", "episodic", "--json"],
    ))
}

/// The tools `fixtures/context/librarian.toml` offers.
const LIBRARIAN_TOOLS: &str = "[\"recall_knowledge\", \"store_knowledge\", \"read_file\"]";

/// `fixtures/context/librarian.toml` written to `dir`, working in `ws` on
/// the scripted answers of `script`, offered `tools`.
fn librarian(dir: &Path, ws: &Path, script: &Path, tools: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("fixtures/context/librarian.toml"))
        .expect("fixture")
        .replace(
            "workspace = \"stele-workspace\"",
            &format!("workspace = {:?}", ws.display().to_string()),
        )
        .replace(
            "script = \"fixtures/context/knowledge.json\"",
            &format!("script = {:?}", script.display().to_string()),
        )
        .replace(&format!("tools = {LIBRARIAN_TOOLS}"), &format!("tools = {tools}"));
    assert!(text.contains(&format!("tools = {tools}")), "{text}");
    let agent = dir.join("librarian.toml");
    std::fs::write(&agent, text).expect("agent");
    agent
}

#[test]
fn the_cli_stores_searches_shares_archives_and_at_shows_any_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let stored = ok_json(&cli(
        &data,
        &[
            "context",
            "store",
            "alice",
            "the build cache lives on node 7",
            "--json",
        ],
    ));
    assert_eq!(stored["id"], "m-1");
    let head_after_store: u64 = {
        let r = stele_journal::Reader::open(&data).expect("reader");
        r.head().seq.0
    };
    ok_json(&cli(
        &data,
        &[
            "context",
            "store",
            "alice",
            "public holiday calendar",
            "--level",
            "public",
            "--json",
        ],
    ));
    let found = ok_json(&cli(
        &data,
        &["context", "search", "bob", "calendar cache", "--json"],
    ));
    let hits: Vec<&str> = found["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["key"].as_str().expect("key"))
        .collect();
    assert_eq!(hits, vec!["alice/m-2"], "bob sees only the public item");
    ok_json(&cli(
        &data,
        &["context", "share", "alice", "m-1", "--with", "bob", "--json"],
    ));
    let found = ok_json(&cli(
        &data,
        &["context", "search", "bob", "cache", "--mode", "keyword", "--json"],
    ));
    assert_eq!(found["hits"][0]["key"], "alice/m-1");
    let stats = ok_json(&cli(&data, &["context", "stats", "alice", "--json"]));
    assert_eq!(stats["items"], 2);
    assert_eq!(stats["grants_given"], 1);
    let bad = cli(&data, &["context", "store", "alice", "x", "--type", "dreams"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("memory type: \"dreams\" is not one of"));

    // `stele at` any seq: the store as of just after the first item.
    let at = stele()
        .arg("--data")
        .arg(&data)
        .args(["at", &head_after_store.to_string(), "--view", "context", "--json"])
        .output()
        .expect("at");
    let v = ok_json(&at);
    let state = if v.get("state").is_some() { &v["state"] } else { &v };
    let items = &state["agents"]["alice"]["items"];
    assert!(
        items.get("m-1").is_some() && items.get("m-2").is_none(),
        "{state}"
    );

    let archived = ok_json(&cli(
        &data,
        &[
            "context",
            "archive",
            "alice",
            "--before",
            "4000000000000",
            "--json",
        ],
    ));
    assert_eq!(archived["archived"], 2);
    let shown = ok_json(&cli(&data, &["context", "show", "alice", "--json"]));
    assert_eq!(shown["items"].as_array().map(Vec::len), Some(0));
}

#[test]
fn the_knowledge_bridge_stores_and_recalls_in_a_scripted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Knowledge the run will recall.
    store_knowledge(&data, "Database backups are kept for thirty days.");
    let agent = librarian(
        dir.path(),
        &dir.path().join("ws"),
        &root().join("fixtures/context/knowledge.json"),
        LIBRARIAN_TOOLS,
    );
    let run = run_agent(&data, &agent, "where is staging?");
    assert_eq!(run["outcome"], "completed", "{run}");
    let returned: Vec<Value> = run_events_json(&data, "run-1")
        .into_iter()
        .filter(|e| e["body"]["kind"] == "tool_returned")
        .map(|e| e["body"].clone())
        .collect();
    assert_eq!(returned.len(), 3, "{returned:?}");
    assert!(returned.iter().all(|r| r["ok"] == true), "{returned:?}");
    let outputs: Vec<&str> = returned
        .iter()
        .map(|r| r["output"].as_str().expect("output"))
        .collect();
    assert!(
        outputs
            .iter()
            .any(|o| o.starts_with("stored as librarian/m-2 (semantic")),
        "{outputs:?}"
    );
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("librarian/m-1") && o.contains("thirty days")),
        "{outputs:?}"
    );
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("librarian/m-2") && o.contains("eu-west-3")),
        "{outputs:?}"
    );
    // The run's learnings are episodic memory now.
    let shown = episodic(&data);
    assert_eq!(shown["items"][0]["id"], "run-1-learned");
    assert!(
        shown["items"][0]["content"]
            .as_str()
            .expect("content")
            .contains("eu-west-3")
    );
    // And the run replays without searching or storing again.
    assert_success(&cli(&data, &["replay", "run-1"]));
}

#[test]
fn knowledge_is_injected_before_the_first_step_and_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    store_knowledge(&data, BACKUPS);
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        r#"{"model": "scripted", "answers": [{"content": "Thirty days."}]}"#,
    )
    .expect("script");
    let agent = librarian(dir.path(), &dir.path().join("ws"), &script, LIBRARIAN_TOOLS);
    let run = run_agent(&data, &agent, STEPS_INPUT);
    assert_eq!(run["outcome"], "completed", "{run}");
    let events = run_events_json(&data, "run-1");
    // RunStarted, then the recalled knowledge, before the first phase.
    assert_eq!(events[0]["body"]["kind"], "run_started");
    let hydrated = &events[1]["body"];
    assert_eq!(hydrated["kind"], "context_hydrated", "{events:?}");
    assert_eq!(hydrated["reference"], "knowledge:librarian");
    let content = hydrated["content"].as_str().expect("content");
    assert!(
        content.contains("librarian/m-1") && content.contains("thirty days"),
        "{content}"
    );
    assert_eq!(
        hydrated["blake3"].as_str().expect("blake3"),
        blake3::hash(content.as_bytes()).to_hex().as_str()
    );
    assert_eq!(hydrated["size_bytes"], content.len());
    assert_eq!(events[2]["body"]["kind"], "phase_entered");
    // The replay serves the recalled knowledge as journaled: identical.
    assert_success(&cli(&data, &["replay", "run-1"]));
}

/// The knowledge items of the step-knowledge tests: the first answers the
/// input, the second what the run's first tool result is about.
const BACKUPS: &str = "Database backups are kept for thirty days in the vault.";
const RUNBOOK: &str = "The restore drill runbook lives at ops/restore.md; page the oncall first.";
const STEPS_INPUT: &str = "how long are database backups kept?";
/// The input of the approval tests: the answer is to be written to a file.
const WRITE_INPUT: &str = "write it down: how long backups are kept";

/// A workspace whose files the script of `fixtures/scripts/knowledge_steps.json` reads.
fn drill_workspace(dir: &Path) -> PathBuf {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).expect("ws");
    std::fs::write(ws.join("notes.txt"), "Next week we run the restore drill.\n").expect("notes");
    std::fs::write(ws.join("drill.txt"), "The restore drill needs its runbook.\n").expect("drill");
    ws
}

/// `fixtures/context/librarian.toml` working in `ws` on the step-knowledge
/// script, offered `tools`.
fn steps_librarian(dir: &Path, ws: &Path, tools: &str) -> PathBuf {
    librarian(
        dir,
        ws,
        &root().join("fixtures/scripts/knowledge_steps.json"),
        tools,
    )
}

/// A provider that records each request before the script answers it.
#[derive(Debug)]
struct Recording {
    inner: stele_engine::scripted::ScriptedProvider,
    seen: std::sync::Mutex<Vec<stele_engine::llm::CompletionRequest>>,
}

impl stele_engine::llm::Provider for Recording {
    fn name(&self) -> &str {
        "recording"
    }

    fn complete<'a>(
        &'a self,
        request: &'a stele_engine::llm::CompletionRequest,
    ) -> stele_engine::llm::CompletionFuture<'a> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(request.clone());
        self.inner.complete(request)
    }
}

/// How many messages of `request` carry item `key` (its header).
fn mentions(request: &stele_engine::llm::CompletionRequest, key: &str) -> usize {
    let header = format!("[{key} · ");
    request
        .messages
        .iter()
        .filter(|m| m.content.contains(&header))
        .count()
}

#[test]
fn the_driver_injects_new_knowledge_before_each_later_step() {
    use stele_engine::context::rag;
    use stele_engine::llm::Role;
    use stele_engine::orga::{AgentLoop, RunSpec};
    use stele_engine::reasoning::{self, Driver, JournalSink, Resumed, Stop};

    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path().join("data"), Options::default()).expect("journal");
    let svc = Arc::new(
        ContextService::open(
            journal.clone(),
            gate(),
            Arc::new(HashEmbedder),
            Scoring::default(),
            Some(Box::new(ExactIndex::new())),
        )
        .expect("service"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let me = who("librarian", "normal");
    for (id, text) in [("m-1", BACKUPS), ("m-2", RUNBOOK)] {
        rt.block_on(svc.store(&me, item(id, MemoryType::LongTerm, AccessLevel::Restricted, text)))
            .expect("store");
    }
    let ws = drill_workspace(dir.path());
    // The knowledge of the input, loaded before the first step as `stele run` does.
    let (_, first) = rt
        .block_on(rag::recall(
            &svc,
            &me,
            STEPS_INPUT,
            rag::RECALL_ON_START,
            rag::DEFAULT_BUDGET_TOKENS,
            NOW,
        ))
        .expect("recall");
    assert_eq!(
        first.used,
        vec!["librarian/m-1"],
        "the input recalls the backups item only: {}",
        first.text
    );
    let hydration = vec![EventBody::ContextHydrated {
        run: "run-1".into(),
        reference: "knowledge:librarian".into(),
        blake3: blake3::hash(first.text.as_bytes()).to_hex().to_string(),
        size_bytes: first.text.len() as u64,
        content: first.text.clone(),
    }];
    let script =
        std::fs::read_to_string(root().join("fixtures/scripts/knowledge_steps.json")).expect("script");
    let provider = Arc::new(Recording {
        inner: stele_engine::scripted::ScriptedProvider::from_json("steps", &script).expect("script"),
        seen: std::sync::Mutex::new(Vec::new()),
    });
    let mut spec = RunSpec::new("run-1", "librarian", "scripted-knowledge-steps");
    spec.tools = stele_engine::tools::profile(&["read_file".to_owned()]);
    let all_tools = PolicyGate::from_sources(
        None,
        &[(
            "all.cedar".into(),
            "@id(\"all-tools\")\npermit (principal, action == Action::\"invoke_tool\", resource);".into(),
        )],
    )
    .expect("gate");
    let driver = Driver {
        provider: provider.clone(),
        gate: Arc::new(all_tools).into(),
        tools: Arc::new(stele_engine::tools::ToolBox {
            workspace: ws.canonicalize().expect("ws"),
            memory_mb: 64,
            cpu_cores: 0.5,
            timeout: std::time::Duration::from_secs(10),
            launcher: stele_engine::process::Launcher {
                program: env!("CARGO_BIN_EXE_stele").into(),
            },
            confinement: stele_engine::process::detect_confinement(),
            sandbox: stele_engine::tools::CommandSandbox::Native,
        }),
        agent: "librarian".into(),
        priority: "normal".into(),
        knowledge: Some(Arc::new(rag::StepRecall {
            service: svc.clone(),
            requester: me.clone(),
        })),
    };
    let lp = AgentLoop::start_hydrated(spec.clone(), STEPS_INPUT.into(), None, hydration);
    let mut sink = JournalSink::new(&journal, "run-1").expect("sink");
    let stop = rt.block_on(driver.drive(lp, &mut sink)).expect("drive");
    let Stop::Finished(f) = stop else {
        panic!("the run parked")
    };
    assert_eq!((f.outcome.as_str(), f.steps), ("completed", 3), "{}", f.answer);

    let seen = provider
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(seen.len(), 3, "one completion per step");
    // Step 1 sees what the input recalled, not the runbook.
    assert_eq!(mentions(&seen[0], "librarian/m-1"), 1);
    assert_eq!(mentions(&seen[0], "librarian/m-2"), 0);
    // Step 2: the runbook (relevant to the notes just read) is a system
    // message after the tool result; the backups item is not repeated.
    let injected = seen[1].messages.last().expect("messages");
    assert_eq!(injected.role, Role::System, "{injected:?}");
    assert!(
        injected
            .content
            .starts_with("Context loaded from knowledge:librarian")
            && injected.content.contains(RUNBOOK),
        "{}",
        injected.content
    );
    assert_eq!(seen[1].messages[seen[1].messages.len() - 2].role, Role::Tool);
    assert_eq!(mentions(&seen[1], "librarian/m-1"), 1);
    assert_eq!(mentions(&seen[1], "librarian/m-2"), 1);
    // Step 3: the drill log is about the runbook again, but it is already
    // in the conversation: nothing is injected twice.
    assert_eq!(
        seen[2].messages.len(),
        seen[1].messages.len() + 2,
        "only the assistant turn and its tool result were added"
    );
    assert_eq!(mentions(&seen[2], "librarian/m-1"), 1);
    assert_eq!(mentions(&seen[2], "librarian/m-2"), 1);

    // The journal: the knowledge sits between step 1's observation and
    // step 2's reasoning, and the run rebuilds from it exactly.
    let reader = journal.reader();
    let events: Vec<stele_journal::EventRef> = reader
        .run(
            &stele_journal::RunId::new("run-1".to_owned()).expect("id"),
            Seq(1),
        )
        .collect::<stele_journal::Result<_>>()
        .expect("events");
    let journaled: Vec<EventBody> = events
        .iter()
        .map(|e| e.to_event().expect("decode").body)
        .collect();
    let observing = journaled
        .iter()
        .position(|b| matches!(b, EventBody::PhaseEntered { step: 1, phase, .. } if phase == "observing"))
        .expect("step 1 observes");
    assert!(
        matches!(&journaled[observing + 1], EventBody::ContextHydrated { reference, content, .. }
            if reference == "knowledge:librarian" && content.contains(RUNBOOK) && !content.contains(BACKUPS)),
        "{:?}",
        journaled[observing + 1]
    );
    assert!(
        matches!(&journaled[observing + 2], EventBody::PhaseEntered { step: 2, phase, .. } if phase == "reasoning"),
        "{:?}",
        journaled[observing + 2]
    );
    let knowledge = journaled
        .iter()
        .filter(|b| matches!(b, EventBody::ContextHydrated { .. }))
        .count();
    assert_eq!(knowledge, 2, "the start's and step 2's");
    let (resumed, rebuilt) = reasoning::refold(spec, &events).expect("refold");
    assert!(matches!(resumed, Resumed::Finished), "{resumed:?}");
    assert_eq!(rebuilt, journaled, "the rebuild yields the journaled facts");
}

/// The `knowledge:librarian` facts of run `run`, in order, with their
/// position among the run's events.
fn knowledge_facts(events: &[Value]) -> Vec<(usize, String)> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e["body"]["kind"] == "context_hydrated" && e["body"]["reference"] == "knowledge:librarian"
        })
        .map(|(i, e)| (i, e["body"]["content"].as_str().expect("content").to_owned()))
        .collect()
}

fn run_events_json(data: &Path, run: &str) -> Vec<Value> {
    let out = stele()
        .arg("--data")
        .arg(data)
        .args(["events", "--json", "--run", run])
        .output()
        .expect("events");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .collect()
}

/// Asserts that `stele replay RUN` reproduces the run identically.
fn replays_identically(data: &Path, run: &str) {
    let replay = cli(data, &["replay", run]);
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success() && text.contains("identical"),
        "{text}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
}

#[test]
fn knowledge_is_injected_before_each_later_step_replays_and_forks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    for text in [BACKUPS, RUNBOOK] {
        store_knowledge(&data, text);
    }
    let ws = drill_workspace(dir.path());
    let agent = steps_librarian(dir.path(), &ws, LIBRARIAN_TOOLS);
    let run = run_agent(&data, &agent, STEPS_INPUT);
    assert_eq!(run["outcome"], "completed", "{run}");
    assert_eq!(run["steps"], 3, "{run}");
    let events = run_events_json(&data, "run-1");
    let kinds: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e["body"]["kind"], e["body"]["phase"]))
        .collect();
    let knowledge = knowledge_facts(&events);
    assert_eq!(knowledge.len(), 2, "{kinds:?}");
    // Before the first step: the backups item (the input is about it).
    assert_eq!(knowledge[0].0, 1, "{kinds:?}");
    assert!(
        knowledge[0].1.contains("[librarian/m-1 · ") && !knowledge[0].1.contains("[librarian/m-2 · "),
        "{}",
        knowledge[0].1
    );
    // Before step 2: the runbook (the notes read in step 1 are about the
    // drill), right after step 1's observation and before step 2's reasoning.
    let at = knowledge[1].0;
    assert_eq!(events[at - 1]["body"]["kind"], "phase_entered");
    assert_eq!(events[at - 1]["body"]["phase"], "observing");
    assert_eq!(events[at - 1]["body"]["step"], 1);
    assert_eq!(events[at + 1]["body"]["phase"], "reasoning");
    assert_eq!(events[at + 1]["body"]["step"], 2);
    assert!(
        knowledge[1].1.contains("[librarian/m-2 · ") && !knowledge[1].1.contains("[librarian/m-1 · "),
        "nothing already injected is injected again: {}",
        knowledge[1].1
    );
    assert_eq!(
        events[at]["body"]["blake3"].as_str().expect("blake3"),
        blake3::hash(knowledge[1].1.as_bytes()).to_hex().as_str()
    );
    // The replay serves each step's knowledge from the journal: identical.
    replays_identically(&data, "run-1");

    // Its learnings are in the store now, and relevant to step 2: a fork
    // after step 2's knowledge gets the journaled one (no new search).
    let step2 = events[at + 1]["seq"].as_u64().expect("seq");
    let fork = cli(&data, &["fork", "run-1", "--at", &step2.to_string(), "--json"]);
    assert!(fork.status.success(), "{}", String::from_utf8_lossy(&fork.stderr));
    let forked = run_events_json(&data, "run-2");
    let served = knowledge_facts(&forked);
    assert!(served.len() >= 2, "{forked:?}");
    assert_eq!(served[0].1, knowledge[0].1, "the start's knowledge, as journaled");
    assert_eq!(
        served[1].1, knowledge[1].1,
        "step 2's knowledge is the journaled one"
    );
    // Past the prefix the fork recalls live: run-1's learnings are new.
    assert!(
        served[2..]
            .iter()
            .any(|(_, c)| c.contains("[librarian/run-1-learned · ")),
        "{served:?}"
    );
    assert_eq!(
        forked.last().expect("events")["body"]["outcome"],
        "completed",
        "{forked:?}"
    );
    replays_identically(&data, "run-2");
    // The fork's facts are its own: the origin replays as before.
    assert_eq!(run_events_json(&data, "run-1").len(), events.len());
    replays_identically(&data, "run-1");
}

#[test]
fn a_run_approved_later_stores_its_learnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ws = drill_workspace(dir.path());
    let agent = steps_librarian(dir.path(), &ws, "[\"read_file\", \"write_file\"]");
    let v = parked_report(&cli(
        &data,
        &[
            "run",
            agent.to_str().expect("utf8"),
            "--input",
            WRITE_INPUT,
            "--json",
        ],
    ));
    let call = v["awaiting"][0]["call"].as_str().expect("call").to_owned();
    // Parked: nothing learned yet.
    let shown = episodic(&data);
    assert_eq!(shown["items"].as_array().map(Vec::len), Some(0), "{shown}");
    let approved = ok_json(&cli(
        &data,
        &[
            "approve", "run-1", &call, "--as", "alice", "--reason", "fine", "--json",
        ],
    ));
    assert_eq!(approved["outcome"], "completed", "{approved}");
    let shown = episodic(&data);
    assert_eq!(shown["items"][0]["id"], "run-1-learned", "{shown}");
    let content = shown["items"][0]["content"].as_str().expect("content");
    assert!(
        content.contains("(completed)") && content.contains("thirty days"),
        "{content}"
    );
}

#[test]
fn a_run_approved_through_the_daemon_stores_its_learnings() {
    use crate::up::Up;
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = drill_workspace(dir.path());
    let agent = steps_librarian(dir.path(), &ws, "[\"read_file\", \"write_file\"]");
    let policies = root().join("fixtures/policies").display().to_string();
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies]);
    let v = parked_report(&up.cli(&[
        "run",
        agent.to_str().expect("utf8"),
        "--input",
        WRITE_INPUT,
        "--json",
    ]));
    let run = v["run"].as_str().expect("run").to_owned();
    let call = v["awaiting"][0]["call"].as_str().expect("call").to_owned();
    assert_success(&up.cli(&[
        "approve", &run, &call, "--as", "alice", "--reason", "fine", "--json",
    ]));
    let learned = format!("{run}-learned");
    let stored: Vec<Value> = up
        .events()
        .into_iter()
        .filter(|e| e["body"]["kind"] == "context_stored" && e["body"]["id"] == learned.as_str())
        .collect();
    assert_eq!(stored.len(), 1, "the daemon stored what {run} learned");
    assert_eq!(stored[0]["stream"], "context:librarian");
    assert_eq!(stored[0]["body"]["memory_type"], "episodic");
    up.signal(15);
    assert!(up.wait_exit().success());
}
