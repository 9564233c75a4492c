//! The reasoning loop's overheads, on the scripted provider, one process.
//!
//! - `reasoning/gate/check`: one proposed call through the Cedar gate as
//!   the driver does it (`reasoning::check`: the `AuthzRequest` built from
//!   the call, decided on the 19 fixture policies, the `PolicyDecided` fact
//!   built with the canonical request).
//! - `reasoning/gate/baseline_decide`: `PolicyGate::decide` alone on the
//!   same request built once — the floor `check` adds its work to.
//! - `reasoning/gate/check_and_append`: the same, plus appending the fact to
//!   a real journal (buffered durability: no fsync in the figure, but the
//!   writer's CPU — encode, hash, chain, sign, fjall batch — is), 64 facts
//!   per `append_many`, reported per action. The issue's target: < 20 µs.
//! - `reasoning/loop/iteration`: one Observe–Reason–Gate–Act iteration of
//!   a 64-step run (scripted completion with one tool call, gate, a no-op
//!   tool runner, observe), facts recorded to memory; reported per
//!   iteration. Target < 200 µs.
//! - `reasoning/baseline/scripted_completion`: the scripted provider alone
//!   answering one request of the same size — the floor, for the ratio.
//! - `reasoning/concurrent/1000_runs`: 1,000 runs of 4 steps each driven
//!   concurrently on a multi-threaded runtime; prints the process's peak RSS
//!   (`VmHWM`) after the bench so memory stays bounded.

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stele_engine::llm::ToolCall;
use stele_engine::orga::{AgentLoop, RunSpec, ToolOutcome};
use stele_engine::policy::PolicyGate;
use stele_engine::reasoning::{self, Driver, Sink, Stop};
use stele_engine::scripted::ScriptedProvider;
use stele_engine::tools::{CallContext, ToolRunner, builtin};
use stele_journal::{Append, Durability, EventBody, Journal, Options, Seq, StreamId};

/// A tool that does nothing: the loop's overhead without a tool's.
#[derive(Debug)]
struct NoOp;

impl ToolRunner for NoOp {
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        _ctx: &'a CallContext,
    ) -> Pin<Box<dyn Future<Output = ToolOutcome> + Send + 'a>> {
        Box::pin(async move {
            ToolOutcome {
                call_id: call.id.clone(),
                ok: true,
                output: "ok".into(),
                duration_ms: 0,
            }
        })
    }

    fn clock_ms(&self) -> u64 {
        0
    }
}

/// Counts facts and drops them.
#[derive(Default)]
struct Count(usize);

impl Sink for Count {
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Seq>, String>> + Send + 'a>> {
        self.0 += facts.len();
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn fixture_gate() -> PolicyGate {
    PolicyGate::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies"))
        .expect("fixture policies")
}

fn script(steps: usize) -> String {
    let mut answers: Vec<String> = (0..steps)
        .map(|i| {
            format!(
                r#"{{"content": "step {i}", "tool_calls": [{{"name": "list_dir", "arguments": {{"path": "d{i}"}}}}], "usage": {{"prompt_tokens": 100, "completion_tokens": 10}}}}"#
            )
        })
        .collect();
    answers.push(r#"{"content": "done"}"#.into());
    format!(r#"{{"answers": [{}]}}"#, answers.join(","))
}

fn driver(steps: usize) -> Driver {
    Driver {
        provider: Arc::new(ScriptedProvider::from_json("bench", &script(steps)).expect("script")),
        gate: Arc::new(fixture_gate()).into(),
        tools: Arc::new(NoOp),
        agent: "bench".into(),
        priority: "normal".into(),
        knowledge: None,
    }
}

fn spec(run: &str, steps: usize) -> RunSpec {
    let mut s = RunSpec::new(run, "bench", "scripted");
    s.tools = builtin();
    s.max_steps = u32::try_from(steps + 1).expect("steps");
    s
}

fn call() -> ToolCall {
    ToolCall {
        id: "call-1-0".into(),
        name: "read_file".into(),
        arguments: r#"{"path":"notes.txt"}"#.into(),
    }
}

fn gate(c: &mut Criterion) {
    let gate = fixture_gate();
    let mut g = c.benchmark_group("reasoning/gate");
    g.throughput(Throughput::Elements(1));
    let request = reasoning::tool_request("alice", "normal", &call());
    g.bench_function("baseline_decide", |b| {
        b.iter(|| black_box(gate.decide(black_box(&request))));
    });
    g.bench_function("check", |b| {
        b.iter(|| {
            black_box(reasoning::check(
                &gate,
                "run-1",
                "alice",
                "normal",
                black_box(&call()),
            ))
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .expect("journal");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let stream = StreamId::new("run:run-1").expect("stream");
    const BATCH: u64 = 64;
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("check_and_append", |b| {
        b.iter(|| {
            let appends: Vec<Append> = (0..BATCH)
                .map(|_| Append {
                    stream: stream.clone(),
                    cause: None,
                    body: reasoning::check(&gate, "run-1", "alice", "normal", &call()).decided,
                })
                .collect();
            rt.block_on(journal.append_many(appends)).expect("append")
        });
    });
    g.finish();
}

fn iteration(c: &mut Criterion) {
    const STEPS: usize = 64;
    let d = driver(STEPS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut g = c.benchmark_group("reasoning/loop");
    g.throughput(Throughput::Elements(STEPS as u64));
    g.bench_function("iteration", |b| {
        b.iter(|| {
            let mut sink = Count::default();
            let stop = rt
                .block_on(d.drive(
                    AgentLoop::start(spec("run-1", STEPS), "go".into(), None),
                    &mut sink,
                ))
                .expect("drive");
            assert!(matches!(stop, Stop::Finished(ref f) if f.outcome == "completed"));
            sink.0
        });
    });
    g.finish();
    let mut g = c.benchmark_group("reasoning/baseline");
    g.throughput(Throughput::Elements(1));
    let lp = AgentLoop::start(spec("run-1", STEPS), "go".into(), None);
    let request = lp.request();
    g.bench_function("scripted_completion", |b| {
        b.iter(|| {
            rt.block_on(d.provider.complete(black_box(&request)))
                .expect("answer")
        });
    });
    g.finish();
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn concurrent(c: &mut Criterion) {
    const RUNS: usize = 1000;
    const STEPS: usize = 4;
    let d = Arc::new(driver(STEPS));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let before = peak_rss_kib();
    let mut g = c.benchmark_group("reasoning/concurrent");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(RUNS as u64));
    g.bench_function("1000_runs", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..RUNS)
                    .map(|i| {
                        let d = d.clone();
                        tokio::spawn(async move {
                            let mut sink = Count::default();
                            let lp = AgentLoop::start(spec(&format!("run-{i}"), STEPS), "go".into(), None);
                            d.drive(lp, &mut sink).await.map(|_| sink.0)
                        })
                    })
                    .collect();
                let mut facts = 0;
                for t in tasks {
                    facts += t.await.expect("join").expect("drive");
                }
                facts
            })
        });
    });
    g.finish();
    let started = Instant::now();
    let after = peak_rss_kib();
    println!(
        "reasoning/concurrent/1000_runs: peak RSS {after} KiB ({before} KiB before the bench; read in {:?})",
        started.elapsed()
    );
}

criterion_group!(benches, gate, iteration, concurrent);
criterion_main!(benches);
