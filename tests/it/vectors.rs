//! The LanceDB vector index (`stele-vectors`) under the context service:
//! similarity search on the fixture corpus, an index rebuilt from the
//! journal equal to the live one, an index reopened from disk without
//! folding again, an index of another journal refused and rebuilt, the
//! keyword fallback when its table is deleted under a running service, and
//! the `[context] vector_backend` choices through the `stele` binary.

use std::path::Path;
use std::sync::Arc;

use stele_engine::context::ContextService;
use stele_engine::context::embed::HashEmbedder;
use stele_engine::context::score::Scoring;
use stele_engine::context::search::{Mode, Query};
use stele_engine::context::vector::VectorIndex;
use stele_journal::{Journal, Options};
use stele_vectors::{LanceIndex, MARKER, TABLE};

use crate::context::{Env, NOW, cli, env_with_index, gate, keys, load_corpus, ok_json, who};

fn lance(dir: &Path) -> Box<dyn VectorIndex> {
    Box::new(LanceIndex::open(dir, stele_vectors::Options::default()).expect("open the LanceDB index"))
}

fn env_lance() -> Env {
    env_with_index(|tmp| Some(lance(&tmp.join("vectors"))))
}

const QUERIES: [&str; 4] = [
    "what does SLO mean",
    "disk space on nodes",
    "memory limit for workers",
    "expiry renewals",
];

fn similar(svc: &ContextService, rt: &tokio::runtime::Runtime, q: &str) -> Vec<String> {
    let mut query = Query::new(q, Mode::Similarity, NOW);
    query.limit = 50;
    let found = rt
        .block_on(svc.search(&who("ops", "normal"), &query))
        .expect("search");
    assert_eq!(found.mode, "similarity", "{found:?}");
    let mut keys: Vec<String> = found.hits.into_iter().map(|h| h.key).collect();
    // Rankings mix in importance, which the searches' journaled accesses
    // change: compare sets.
    keys.sort();
    keys
}

fn service(journal: &Journal, vectors: Box<dyn VectorIndex>) -> ContextService {
    ContextService::open(
        journal.clone(),
        gate(),
        Arc::new(HashEmbedder),
        Scoring::default(),
        Some(vectors),
    )
    .expect("service")
}

fn backend(svc: &ContextService, rt: &tokio::runtime::Runtime) -> (Option<&'static str>, usize, u64) {
    let l = rt.block_on(svc.live());
    (
        l.vectors.as_ref().map(|v| v.backend()),
        l.vectors.as_ref().map_or(0, |v| v.len()),
        l.vectors.as_ref().map_or(0, |v| v.seq()),
    )
}

#[test]
fn lancedb_search_finds_the_corpus_and_a_rebuild_equals_the_live_index() {
    let e = env_lance();
    load_corpus(&e);
    let top = keys(&e, &who("ops", "normal"), "what does SLO mean", Mode::Similarity);
    assert_eq!(top.first().map(String::as_str), Some("ops/glossary"), "{top:?}");
    let live: Vec<Vec<String>> = QUERIES.iter().map(|q| similar(&e.svc, &e.rt, q)).collect();
    let (name, rows, seq) = backend(&e.svc, &e.rt);
    assert_eq!(name, Some("lancedb"));
    assert_eq!(rows, 10, "one row per corpus item");

    // A second index in a fresh directory, folded from the journal alone.
    let rebuilt = service(&e.journal, lance(&e.dir.path().join("rebuilt")));
    assert_eq!(backend(&rebuilt, &e.rt).1, rows);
    for (q, want) in QUERIES.iter().zip(&live) {
        assert_eq!(&similar(&rebuilt, &e.rt, q), want, "{q}");
    }
    drop(rebuilt);

    // The live index, closed and reopened: it starts at the seq it
    // committed (nothing to fold again) and answers the same.
    let Env {
        dir,
        journal,
        svc,
        rt,
    } = e;
    drop(svc);
    let marker = std::fs::read_to_string(dir.path().join("vectors").join(MARKER)).expect("marker");
    assert!(marker.contains(&format!("\"seq\":{seq}")), "{marker}");
    let reopened =
        LanceIndex::open(&dir.path().join("vectors"), stele_vectors::Options::default()).expect("reopen");
    assert_eq!(reopened.seq(), seq);
    assert_eq!(reopened.len(), rows);
    let svc = service(&journal, Box::new(reopened));
    for (q, want) in QUERIES.iter().zip(&live) {
        assert_eq!(&similar(&svc, &rt, q), want, "{q}");
    }
}

#[test]
fn an_index_of_another_journal_is_rebuilt_not_trusted() {
    let e = env_lance();
    load_corpus(&e);
    let shared = e.dir.path().join("vectors");
    let Env { dir, svc, rt, .. } = e;
    drop(svc);
    // Another journal, with one item only, pointed at the same directory:
    // the hash recorded at the index's seq is not this journal's.
    let other = Journal::open(dir.path().join("other"), Options::default()).expect("journal");
    let svc = service(&other, lance(&shared));
    assert_eq!(
        backend(&svc, &rt),
        (Some("lancedb"), 0, 0),
        "cleared, nothing to fold"
    );
    rt.block_on(svc.store(
        &who("ops", "normal"),
        stele_engine::context::NewItem {
            id: Some("only".into()),
            memory_type: stele_engine::context::MemoryType::Semantic,
            level: stele_engine::context::AccessLevel::Restricted,
            content: "SLO means service level objective".into(),
            tags: Vec::new(),
            importance_permille: 500,
            session: String::new(),
        },
    ))
    .expect("store");
    assert_eq!(similar(&svc, &rt, "what does SLO mean"), ["ops/only"]);
}

#[test]
fn a_deleted_vector_table_falls_back_to_keyword_and_is_rebuilt_on_open() {
    let e = env_lance();
    load_corpus(&e);
    // What the index finds before the table is lost (only related items:
    // a zero relevance is no result).
    let want = similar(&e.svc, &e.rt, "what does SLO mean");
    assert!(want.contains(&"ops/glossary".to_owned()), "{want:?}");
    let vectors = e.dir.path().join("vectors");
    // Commit what waits, then delete the table under the running service.
    e.rt.block_on(e.svc.live())
        .vectors
        .as_mut()
        .expect("index")
        .flush()
        .expect("flush");
    std::fs::remove_dir_all(vectors.join(format!("{TABLE}.lance"))).expect("delete the table");
    let mut q = Query::new("what does SLO mean", Mode::Similarity, NOW);
    q.limit = 50;
    let found =
        e.rt.block_on(e.svc.search(&who("ops", "normal"), &q))
            .expect("search still answers");
    assert_eq!(found.mode, "keyword", "{found:?}");
    assert!(
        found
            .note
            .as_deref()
            .is_some_and(|n| n.contains("vector index unavailable")),
        "{found:?}"
    );
    assert_eq!(found.hits.first().map(|h| h.id.as_str()), Some("glossary"));
    // The next open finds no table and folds everything again.
    let Env { journal, svc, rt, .. } = e;
    drop(svc);
    let svc = service(&journal, lance(&vectors));
    let (name, rows, _) = backend(&svc, &rt);
    assert_eq!((name, rows), (Some("lancedb"), 10));
    assert_eq!(similar(&svc, &rt, "what does SLO mean"), want);
}

#[test]
fn the_binary_keeps_its_lancedb_index_in_the_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    for (id, text) in [
        ("slo", "SLO means service level objective"),
        ("disk", "node 3 ran out of disk space during the deploy"),
        ("oom", "the worker was killed for exceeding its memory limit"),
    ] {
        ok_json(&cli(
            &data,
            &[
                "context", "store", "ops", text, "--type", "semantic", "--id", id, "--json",
            ],
        ));
    }
    let marker = data.join("vectors").join(MARKER);
    assert!(
        marker.exists(),
        "the index committed at exit: {}",
        marker.display()
    );
    let found = ok_json(&cli(
        &data,
        &[
            "context",
            "search",
            "ops",
            "what does SLO mean",
            "--mode",
            "similarity",
            "--json",
        ],
    ));
    assert_eq!(found["mode"], "similarity", "{found}");
    assert_eq!(found["hits"][0]["id"], "slo", "{found}");

    // The exact in-memory backend answers the same; qdrant is refused.
    let with_backend = |backend: &str| {
        crate::stele()
            .env("STELE_CONTEXT_VECTOR_BACKEND", backend)
            .arg("--data")
            .arg(&data)
            .args([
                "context",
                "search",
                "ops",
                "what does SLO mean",
                "--mode",
                "similarity",
                "--json",
            ])
            .args([
                "--policies",
                crate::context::root()
                    .join("fixtures/policies")
                    .to_str()
                    .expect("utf8"),
            ])
            .output()
            .expect("run stele")
    };
    let exact = ok_json(&with_backend("exact"));
    assert_eq!(exact["hits"][0]["id"], "slo", "{exact}");
    let qdrant = with_backend("qdrant");
    assert!(!qdrant.status.success());
    let err = String::from_utf8_lossy(&qdrant.stderr);
    assert!(err.contains("vector_backend") && err.contains("qdrant"), "{err}");
}
