//! The context store (`stele_engine::context`).
//!
//! - `context/retrieve_100k`: an agent's 10 newest items out of 100,000
//!   (gate-checked, a walk of the agent's seq-ordered index from its
//!   newest end). Target: < 5 ms average. Beside it
//!   `context/retrieve_100k_scan`: the same answer by the linear pass over
//!   every item that it replaced (`search::recent_scan`).
//! - `context/keyword_100k`: a three-term BM25 search over the same
//!   100,000 items, top 10, access-checked. Target: < 5 ms average.
//! - `context/vector_exact/{10k,100k}`: exact cosine top-10 over 384-dim
//!   vectors (the in-memory index; no ANN is built here, so its recall@10
//!   is 1 by construction).
//! - `context/update_visible_10k`: `store` (decide, append durably, fold,
//!   embed, append the embedding, fold) then a keyword search that must
//!   return the new item, over a journal of 10,000 items. Target: < 10 ms.
//! - Baseline in the same run: `context/baseline_fold_item`, folding one
//!   `ContextStored` into the store and indexes (what any update costs
//!   before I/O).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use stele_engine::context::embed::{HASH_DIMS, HashEmbedder};
use stele_engine::context::ops::{ReadGate, Requester};
use stele_engine::context::score::Scoring;
use stele_engine::context::search::{self, KeywordIndex, Mode, Query, Sources};
use stele_engine::context::service::Live;
use stele_engine::context::vector::{self, ExactIndex, VectorIndex, VectorRow};
use stele_engine::context::{AccessLevel, ContextService, MemoryType, NewItem};
use stele_engine::policy::PolicyGate;
use stele_journal::event::{ContextItem, detached_event};
use stele_journal::{Durability, EventBody, Journal, Options, Seq, StreamId};

const VOCAB: usize = 5_000;

/// A deterministic pseudo-random stream (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Roughly Zipf: small ids far more often.
    fn word(&mut self) -> String {
        let r = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        format!("w{}", ((VOCAB as f64).powf(r)) as usize)
    }
}

fn text(rng: &mut Rng, words: usize) -> String {
    (0..words).map(|_| rng.word()).collect::<Vec<_>>().join(" ")
}

fn gate() -> PolicyGate {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    PolicyGate::load(&root.join("fixtures/policies")).expect("policies")
}

/// 100,000 items of one agent folded into a store and its keyword index.
fn live(n: u64) -> Live {
    let mut live = Live::new(None);
    let stream = StreamId::new("context:bench").expect("stream");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 1..=n {
        let body = EventBody::ContextStored {
            agent: "bench".into(),
            item: Box::new(ContextItem {
                id: format!("m-{i}"),
                memory_type: MemoryType::ALL[(i % 6) as usize].name().into(),
                level: "restricted".into(),
                content: text(&mut rng, 20),
                tags: Vec::new(),
                importance_permille: (i % 1000) as u32,
                session: String::new(),
            }),
        };
        let e = detached_event(Seq(i), (i as i64) * 1_000_000, &stream, None, &body).expect("event");
        live.apply(&e);
    }
    live
}

fn bench(c: &mut Criterion) {
    let gate = gate();
    let me = Requester::normal("bench");
    let scoring = Scoring::default();
    let mut g = c.benchmark_group("context");
    g.sample_size(30);

    let l = live(100_000);
    g.bench_function("retrieve_100k", |b| {
        b.iter(|| {
            let mut rg = ReadGate::new(&gate, &me);
            black_box(search::recent(&l.store, &mut rg, &[], 10))
        });
    });
    g.bench_function("retrieve_100k_scan", |b| {
        b.iter(|| {
            let mut rg = ReadGate::new(&gate, &me);
            black_box(search::recent_scan(&l.store, &mut rg, &[], 10))
        });
    });
    {
        let mut rg = ReadGate::new(&gate, &me);
        let walked = search::recent(&l.store, &mut rg, &[], 10);
        let mut rg = ReadGate::new(&gate, &me);
        assert_eq!(walked, search::recent_scan(&l.store, &mut rg, &[], 10));
        assert_eq!(walked.len(), 10);
    }
    let q = Query {
        limit: 10,
        ..Query::new("w17 w230 w1200", Mode::Keyword, 200_000)
    };
    g.bench_function("keyword_100k", |b| {
        b.iter(|| {
            let mut rg = ReadGate::new(&gate, &me);
            let src = Sources {
                store: &l.store,
                keywords: &l.keywords,
                vectors: None,
                query_vector: None,
                scoring: &scoring,
            };
            black_box(search::search(&src, &mut rg, &q).expect("search"))
        });
    });
    g.bench_function("baseline_fold_item", |b| {
        let stream = StreamId::new("context:bench").expect("stream");
        let mut rng = Rng(7);
        let mut seq = 200_000;
        b.iter_batched(
            || {
                seq += 1;
                let body = EventBody::ContextStored {
                    agent: "other".into(),
                    item: Box::new(ContextItem {
                        id: format!("x-{seq}"),
                        memory_type: "episodic".into(),
                        level: "restricted".into(),
                        content: text(&mut rng, 20),
                        ..ContextItem::default()
                    }),
                };
                detached_event(Seq(seq), 0, &stream, None, &body).expect("event")
            },
            |e| {
                let mut k = KeywordIndex::default();
                let mut s = stele_projections::context::ContextStore::default();
                stele_projections::Projection::apply(&mut s, &e);
                for a in s.agents.values() {
                    for it in a.items.values() {
                        k.insert(it);
                    }
                }
                black_box(k.len())
            },
            BatchSize::SmallInput,
        );
    });
    drop(l);

    for n in [10_000_usize, 100_000] {
        let mut idx = ExactIndex::new();
        let mut rng = Rng(11);
        let rows = (0..n)
            .map(|i| VectorRow {
                key: format!("bench/m-{i}"),
                owner: "bench".into(),
                memory_type: "semantic".into(),
                vector: HashEmbedder::vector(&text(&mut rng, 12)),
            })
            .collect();
        idx.upsert(rows).expect("upsert");
        let query = HashEmbedder::vector("w3 w40 w700");
        assert_eq!(query.len(), HASH_DIMS);
        g.bench_function(format!("vector_exact/{}k", n / 1000), |b| {
            b.iter(|| black_box(idx.search(&query, 10, &[], &mut |_| true).expect("search")));
        });
        black_box(vector::dot(&query, &query));
    }

    // Update → visible, on a real journal (durable appends).
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(
        dir.path(),
        Options {
            durability: Durability::Sync,
            ..Options::default()
        },
    )
    .expect("journal");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let svc = ContextService::open(
        journal,
        Arc::new(gate),
        Arc::new(HashEmbedder),
        scoring.clone(),
        Some(Box::new(ExactIndex::new())),
    )
    .expect("service");
    let mut rng = Rng(3);
    for _ in 0..10 {
        let items = (0..1000)
            .map(|_| NewItem {
                level: AccessLevel::Restricted,
                ..NewItem::text(MemoryType::Semantic, &text(&mut rng, 20))
            })
            .collect();
        rt.block_on(svc.store_many(&me, items)).expect("seed");
    }
    let mut n = 0_u64;
    g.bench_function("update_visible_10k", |b| {
        b.iter(|| {
            n += 1;
            let word = format!("fresh{n}");
            let id = rt
                .block_on(svc.store(
                    &me,
                    NewItem::text(MemoryType::Semantic, &format!("{word} knowledge")),
                ))
                .expect("store");
            let found = rt
                .block_on(svc.search(&me, &Query::new(&word, Mode::Keyword, 0)))
                .expect("search");
            assert_eq!(found.hits.first().map(|h| h.id.as_str()), Some(id.as_str()));
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
