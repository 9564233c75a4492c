//! Replay, time travel and backtests.
//!
//! - `replay/run_10k_events`: `load_run` + `replay` of a recorded reasoning
//!   run of ≥ 10,000 events (1,112 steps of read → decide → call → result
//!   on the scripted provider), every fact compared. Target: < 1 s.
//!   Baseline in the same run: `replay/baseline_read_run_10k`, only reading
//!   and decoding the run's events (what any replay must do).
//! - `replay/at_100k/*`: a view's state at a random seq of a 100,000-event
//!   journal with a snapshot every 10,000 events, against folding from
//!   scratch (the 1M-event figure comes from `stele bench at`).
//! - `replay/backtest/*`: recorded policy requests evaluated against
//!   another policy set: 100,000 distinct requests in memory (`evaluate`),
//!   the same from a journal of 100,000 `PolicyDecided` events
//!   (`backtest`), and 100,000 requests repeating 1,164 distinct ones (each
//!   distinct request is evaluated once). Target: ≥ 100,000 requests/s.
//!   Baselines in the same run: `baseline_previous_backtest_100k`, the
//!   backtest as it was before it read zero-copy on every core (each
//!   decision copied out of the journal, every detail rendered; kept here
//!   verbatim), and `evaluate_100k_in_memory_one_core` (a one-thread pool).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use stele_engine::llm::ToolCall;
use stele_engine::orga::AgentLoop;
use stele_engine::policy::PolicyGate;
use stele_engine::process::{Launcher, detect_confinement};
use stele_engine::reasoning::{Driver, JournalSink, check, spec_for};
use stele_engine::scripted::ScriptedProvider;
use stele_engine::tools::ToolBox;
use stele_engine::{AgentDefinition, LifecycleCommand};
use stele_journal::{Append, Durability, EventBody, Journal, Options, Seq, StreamId};
use stele_projections::{AgentRegistry, JournalView, Projection, SnapshotStore, state_at};
use stele_replay::Settings;

const STEPS: usize = 1_112;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn settings() -> Settings {
    Settings {
        default_model: "scripted".into(),
        max_tokens: 0,
        max_attempts: 4,
        bus_builtins: false,
    }
}

fn all_tools_gate() -> Arc<PolicyGate> {
    Arc::new(
        PolicyGate::from_sources(
            None,
            &[(
                "all.cedar".into(),
                "@id(\"all-tools\")\npermit (principal, action == Action::\"invoke_tool\", resource);".into(),
            )],
        )
        .expect("gate"),
    )
}

/// Records a long run into a fresh journal; returns its directory.
fn record_long_run(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).expect("ws");
    std::fs::write(ws.join("notes.txt"), "notes").expect("notes");
    let source = format!(
        "name = \"long\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\ntools = [\"read_file\"]\nworkspace = \"{}\"\nmax_steps = {}\n",
        ws.display(),
        STEPS + 1
    );
    let def = AgentDefinition::parse(Path::new("long.toml"), &source).expect("definition");
    let mut answers: Vec<serde_json::Value> = (0..STEPS)
        .map(|i| {
            serde_json::json!({"content": format!("step {i}"),
                "tool_calls": [{"name": "read_file", "arguments": {"path": format!("f{i}.txt")}}]})
        })
        .collect();
    answers.push(serde_json::json!({"content": "done"}));
    let script = serde_json::json!({"model": "scripted", "answers": answers}).to_string();
    let journal = Journal::open(
        &data,
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .expect("journal");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let facts = stele_engine::decide(
        &AgentRegistry::default(),
        LifecycleCommand::Register {
            definition: Box::new(def.clone()),
            source,
        },
    )
    .expect("register");
    let appends = facts
        .into_iter()
        .map(|body| Append {
            stream: StreamId::new("agent:long").expect("id"),
            cause: None,
            body,
        })
        .collect();
    rt.block_on(journal.append_many(appends)).expect("append");
    let driver = Driver {
        provider: Arc::new(ScriptedProvider::from_json("bench", &script).expect("script")),
        gate: all_tools_gate().into(),
        tools: Arc::new(ToolBox {
            workspace: ws,
            memory_mb: 64,
            cpu_cores: 0.5,
            timeout: Duration::from_secs(10),
            launcher: Launcher {
                program: PathBuf::from("/nonexistent"),
            },
            confinement: detect_confinement(),
            sandbox: stele_engine::tools::CommandSandbox::Native,
        }),
        agent: "long".into(),
        priority: "normal".into(),
        knowledge: None,
    };
    let mut spec = spec_for(&def, "run-1", "scripted", 0).expect("spec");
    spec.max_attempts = 4;
    let mut sink = JournalSink::new(&journal, "run-1").expect("sink");
    rt.block_on(driver.drive(AgentLoop::start(spec, "go".into(), None), &mut sink))
        .expect("drive");
    rt.block_on(journal.sync()).expect("sync");
    journal.close();
    data
}

fn bench_replay(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = record_long_run(tmp.path());
    let reader = stele_journal::Reader::open(&data).expect("reader");
    let store = SnapshotStore::new(&data);
    let rec = stele_replay::load_run(&reader, &store, "run-1").expect("load");
    let events = rec.events.len() as u64;
    assert!(events >= 10_000, "the run has {events} events");
    let gate = all_tools_gate();
    let report = stele_replay::replay(&rec, Arc::clone(&gate), &settings(), None).expect("replay");
    assert!(report.is_identical(), "{:?}", report.divergence);
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    g.bench_function("run_10k_events", |b| {
        b.iter(|| {
            let rec = stele_replay::load_run(&reader, &store, "run-1").expect("load");
            let r = stele_replay::replay(&rec, Arc::clone(&gate), &settings(), None).expect("replay");
            assert!(r.is_identical());
            black_box(r.identical)
        });
    });
    g.bench_function("baseline_read_run_10k", |b| {
        b.iter(|| {
            black_box(
                stele_replay::load_run(&reader, &store, "run-1")
                    .expect("load")
                    .events
                    .len(),
            )
        });
    });
    g.finish();
}

fn bench_at(c: &mut Criterion) {
    const EVENTS: u64 = 100_000;
    const EVERY: u64 = 10_000;
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let journal = Journal::open(
        &data,
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .expect("journal");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut n = 1;
    while n < EVENTS {
        let batch = (0..4096u64.min(EVENTS - n))
            .map(|i| Append {
                stream: StreamId::new(format!("bench:{}", (n + i) % 64)).expect("id"),
                cause: None,
                body: EventBody::Annotated {
                    text: format!("note {}", n + i),
                    run: None,
                },
            })
            .collect::<Vec<_>>();
        n += batch.len() as u64;
        rt.block_on(journal.append_many(batch)).expect("append");
    }
    let reader = journal.reader();
    let head = reader.head().seq;
    let store = SnapshotStore::new(&data);
    let mut view = JournalView::default();
    for e in reader.range(Seq(1), head) {
        let e = e.expect("read");
        view.apply(&e);
        if e.seq().0.is_multiple_of(EVERY) {
            store.save(e.seq(), e.hash(), &view).expect("snapshot");
        }
    }
    let empty = SnapshotStore::new(&tmp.path().join("none"));
    let mut x = 7u64;
    let mut seq = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        Seq(1 + (x >> 33) % head.0)
    };
    let mut g = c.benchmark_group("replay/at_100k");
    g.sample_size(20);
    g.bench_function("with_snapshots", |b| {
        b.iter_batched(
            &mut seq,
            |s| {
                black_box(
                    state_at::<JournalView>(&reader, &store, s)
                        .expect("at")
                        .folded_events,
                )
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("baseline_fold_from_scratch_at_head", |b| {
        b.iter(|| {
            black_box(
                state_at::<JournalView>(&reader, &empty, head)
                    .expect("at")
                    .folded_events,
            )
        });
    });
    g.finish();
    journal.close();
}

/// The backtest as it was (kept for the baseline): the decisions copied
/// out of the journal one by one, each distinct request parsed, decided and
/// its detail rendered on every core, then the flips.
mod previous {
    use rayon::prelude::*;
    use stele_engine::policy::{AuthzRequest, PolicyGate};
    use stele_journal::{ArchivedEventBody, Reader, Seq};
    use stele_replay::backtest::{Flip, Recorded, Unreadable};

    pub fn recorded(reader: &Reader, from: Seq, to: Seq) -> Vec<Recorded> {
        let mut out = Vec::new();
        for e in reader.range(from, to) {
            let e = e.expect("read");
            if let ArchivedEventBody::PolicyDecided {
                run,
                request,
                verdict,
                policies,
                ..
            } = e.body()
            {
                out.push(Recorded {
                    seq: e.seq().0,
                    run: run.as_ref().map(|r| r.to_string()),
                    request: request.to_string(),
                    verdict: verdict.to_string(),
                    policies: policies.iter().map(|p| p.to_string()).collect(),
                });
            }
        }
        out
    }

    type Answer = (String, Vec<String>, String);

    pub fn evaluate(gate: &PolicyGate, decisions: &[Recorded]) -> (Vec<Flip>, Vec<Unreadable>) {
        let mut distinct: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut texts: Vec<&str> = Vec::new();
        let index: Vec<usize> = decisions
            .iter()
            .map(|r| {
                *distinct.entry(r.request.as_str()).or_insert_with(|| {
                    texts.push(r.request.as_str());
                    texts.len() - 1
                })
            })
            .collect();
        let answers: Vec<Result<Answer, String>> = texts
            .par_iter()
            .with_min_len(64)
            .map(|text| {
                AuthzRequest::from_canonical_json(text)
                    .map(|req| {
                        let d = gate.decide(&req);
                        (d.verdict.name().to_owned(), d.policies, d.verdict.detail())
                    })
                    .map_err(|e| e.to_string())
            })
            .collect();
        let mut flips = Vec::new();
        let mut unreadable = Vec::new();
        for (r, i) in decisions.iter().zip(index) {
            match &answers[i] {
                Err(reason) => unreadable.push(Unreadable {
                    seq: r.seq,
                    reason: reason.clone(),
                }),
                Ok((verdict, policies, detail)) if *verdict != r.verdict => flips.push(Flip {
                    seq: r.seq,
                    run: r.run.clone(),
                    request: r.request.clone(),
                    old_verdict: r.verdict.clone(),
                    new_verdict: verdict.clone(),
                    old_policies: r.policies.clone(),
                    new_policies: policies.clone(),
                    new_detail: detail.clone(),
                }),
                Ok(_) => {}
            }
        }
        (flips, unreadable)
    }
}

fn bench_backtest(c: &mut Criterion) {
    const REQUESTS: u64 = 100_000;
    let new = PolicyGate::load(&root().join("fixtures/policies-backtest")).expect("new set");
    let old = PolicyGate::load(&root().join("fixtures/policies")).expect("old set");
    let tools = ["read_file", "list_dir", "write_file", "run_command"];
    let priorities = ["low", "normal", "high"];
    let decided: Vec<EventBody> = (0..REQUESTS as usize)
        .map(|i| {
            let call = ToolCall {
                id: format!("c{i}"),
                name: tools[i % 4].into(),
                // Every request distinct (its path): no evaluation is shared.
                arguments: serde_json::json!({"path": format!("f{i}.txt"), "command": "du"}).to_string(),
            };
            check(&old, "run-1", "agent", priorities[i % 3], &call).decided
        })
        .collect();
    let recorded: Vec<stele_replay::backtest::Recorded> = decided
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match b {
            EventBody::PolicyDecided {
                request,
                verdict,
                policies,
                ..
            } => Some(stele_replay::backtest::Recorded {
                seq: i as u64 + 1,
                run: None,
                request: request.clone(),
                verdict: verdict.clone(),
                policies: policies.clone(),
            }),
            _ => None,
        })
        .collect();
    let tmp = tempfile::tempdir().expect("tmp");
    let journal = Journal::open(
        tmp.path().join("data"),
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .expect("journal");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    for chunk in decided.chunks(4096) {
        let batch = chunk
            .iter()
            .map(|b| Append {
                stream: StreamId::new("run:run-1").expect("id"),
                cause: None,
                body: b.clone(),
            })
            .collect();
        rt.block_on(journal.append_many(batch)).expect("append");
    }
    let reader = journal.reader();
    let mut g = c.benchmark_group("replay/backtest");
    g.sample_size(10);
    g.throughput(Throughput::Elements(REQUESTS));
    g.bench_function("evaluate_100k_in_memory", |b| {
        b.iter(|| black_box(stele_replay::backtest::evaluate(&new, &recorded).0.len()));
    });
    let one_core = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    g.bench_function("evaluate_100k_in_memory_one_core", |b| {
        b.iter(|| one_core.install(|| black_box(stele_replay::backtest::evaluate(&new, &recorded).0.len())));
    });
    // Requests as a journal repeats them: 1,164 distinct ones, each
    // evaluated once.
    let repeated: Vec<stele_replay::backtest::Recorded> =
        (0..recorded.len()).map(|i| recorded[i % 1_164].clone()).collect();
    g.bench_function("evaluate_100k_repeating_requests", |b| {
        b.iter(|| black_box(stele_replay::backtest::evaluate(&new, &repeated).0.len()));
    });
    g.bench_function("backtest_100k_from_journal", |b| {
        b.iter(|| {
            black_box(
                stele_replay::backtest(&reader, &new, Seq(1), reader.head().seq)
                    .expect("backtest")
                    .flips
                    .len(),
            )
        });
    });
    // Both give the same flips.
    let now = stele_replay::backtest(&reader, &new, Seq(1), reader.head().seq).expect("backtest");
    let before = previous::evaluate(&new, &previous::recorded(&reader, Seq(1), reader.head().seq));
    assert_eq!((now.flips, now.unreadable), before);
    g.bench_function("baseline_previous_backtest_100k", |b| {
        b.iter(|| {
            let decisions = previous::recorded(&reader, Seq(1), reader.head().seq);
            black_box(previous::evaluate(&new, &decisions).0.len())
        });
    });
    g.bench_function("baseline_read_100k_decisions", |b| {
        b.iter(|| {
            black_box(
                stele_replay::backtest::recorded(&reader, Seq(1), reader.head().seq)
                    .expect("read")
                    .len(),
            )
        });
    });
    g.finish();
    journal.close();
}

criterion_group!(benches, bench_replay, bench_at, bench_backtest);
criterion_main!(benches);
