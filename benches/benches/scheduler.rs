//! Scheduler decider latency with a large view, and the folds the engine's
//! restart and decision loop depend on.
//!
//! - `scheduler/decide_{enqueue,finish}/{2k,10k}_tasks`: one decision over a
//!   view of 2,000 or 10,000 tasks (a full host of 8 slots plus a long
//!   queue), the decider only — no journal append, no fold. The issue's
//!   target is p99 < 100 µs; `stele bench scheduler` measures the p99.
//! - `scheduler/baseline_fifo_push`: the least an enqueue can cost — name
//!   the task, build its `TaskQueued` fact, push it on a FIFO — for the
//!   ratio.
//! - `fold/registry/100k_events`: 10,000 `AgentRegistered` and 90,000
//!   `AgentStateChanged` events folded into a fresh `AgentRegistry` (target
//!   ≥ 1,000,000 events/s), beside `fold/read_body/100k_events`, which only
//!   opens each event's body (the floor of any fold).
//! - `fold/scheduler/{n}_facts`: the scheduler view folded from the facts
//!   that built the 10k-task view.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stele_engine::scheduler::{
    HostCapacity, Placement, SchedulerCommand, SlotCapacity, decide, scheduler_stream,
};
use stele_journal::event::detached_event;
use stele_journal::{
    AgentState, ArchivedEventBody, EventBody, EventRef, Seq, StreamId, TaskOutcome, TaskPriority,
};
use stele_projections::scheduler::TaskState;
use stele_projections::{AgentRegistry, Projection, SchedulerView};

fn host() -> HostCapacity {
    HostCapacity {
        slots: (0..8)
            .map(|_| SlotCapacity {
                memory_mb: 32 * 1024,
                cpu_millis: 16_000,
            })
            .collect(),
        placement: Placement::BestFit,
    }
}

/// A view built by the decider from `tasks` enqueues, and the facts that
/// built it.
fn big_view(cap: &HostCapacity, tasks: u64) -> (SchedulerView, Vec<EventRef>) {
    let mut view = SchedulerView::default();
    let mut events = Vec::new();
    let prios = [TaskPriority::Low, TaskPriority::Normal, TaskPriority::High];
    for i in 0..tasks {
        let cmd = SchedulerCommand::Enqueue {
            agent: format!("agent-{}", i % 1000),
            priority: prios[(i % 3) as usize],
            memory_mb: 100 + i % 400,
            cpu_millis: 50,
            trigger: "bench".into(),
        };
        for f in decide(&view, cap, cmd).expect("accepted") {
            let e = detached_event(Seq(events.len() as u64 + 1), 0, &scheduler_stream(), None, &f)
                .expect("event");
            view.apply(&e);
            events.push(e);
        }
    }
    (view, events)
}

fn decisions(c: &mut Criterion) {
    let cap = host();
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    for (n, name) in [(2_000, "2k_tasks"), (10_000, "10k_tasks")] {
        let (view, _) = big_view(&cap, n);
        let running = view
            .tasks
            .iter()
            .find(|(_, t)| matches!(t.state, TaskState::Running { .. }))
            .map(|(id, _)| id.clone())
            .expect("a running task");
        g.bench_function(format!("decide_enqueue/{name}"), |b| {
            b.iter(|| {
                let cmd = SchedulerCommand::Enqueue {
                    agent: "agent-x".into(),
                    priority: TaskPriority::Normal,
                    memory_mb: 200,
                    cpu_millis: 50,
                    trigger: "bench".into(),
                };
                black_box(decide(black_box(&view), &cap, cmd).expect("ok"))
            });
        });
        g.bench_function(format!("decide_finish/{name}"), |b| {
            b.iter(|| {
                let cmd = SchedulerCommand::Finish {
                    task: running.clone(),
                    outcome: TaskOutcome::Completed,
                    detail: String::new(),
                };
                let facts: Vec<EventBody> = decide(black_box(&view), &cap, cmd).expect("ok");
                black_box(facts)
            });
        });
    }
    g.bench_function("baseline_fifo_push", |b| {
        let mut fifo: VecDeque<EventBody> = VecDeque::with_capacity(1024);
        let mut next = 0u64;
        b.iter(|| {
            if fifo.len() == 1024 {
                fifo.clear();
            }
            fifo.push_back(EventBody::TaskQueued {
                task: format!("task-{next}"),
                agent: "agent-x".into(),
                priority: TaskPriority::Normal,
                memory_mb: 200,
                cpu_millis: 50,
                trigger: "bench".into(),
            });
            next += 1;
            black_box(fifo.back());
        });
    });
    g.finish();
}

/// 10,000 registrations (2 events each, as the lifecycle decider emits them)
/// and 80,000 more state changes: 100,000 events.
fn registry_events() -> Vec<EventRef> {
    let stream = StreamId::new("bench").expect("id");
    let definition = "name = \"x\"\npriority = \"normal\"\n\n[mode]\nkind = \"persistent\"\n\n[limits]\nmemory_mb = 128\ncpu_cores = 0.5\ndisk_io_mbps = 10\nnetwork_io_mbps = 0\nexecution_timeout = \"30s\"\n\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\n";
    let mut bodies = Vec::new();
    for i in 0..10_000u32 {
        let agent = format!("agent-{i:05}");
        bodies.push(EventBody::AgentRegistered {
            agent: agent.clone(),
            definition: definition.replace("\"x\"", &format!("\"{agent}\"")),
            definition_hash: *blake3_like(i),
        });
        bodies.push(EventBody::AgentStateChanged {
            agent,
            from: AgentState::Initializing,
            to: AgentState::Ready,
            reason: "definition valid".into(),
        });
    }
    let cycle = [
        (AgentState::Ready, AgentState::Running, "task-1 placed on slot 0"),
        (
            AgentState::Running,
            AgentState::Suspended,
            "task-1 preempted by task-2",
        ),
        (
            AgentState::Suspended,
            AgentState::Running,
            "task-1 placed on slot 3",
        ),
        (AgentState::Running, AgentState::Ready, "task-1 completed: exit 0"),
    ];
    for k in 0..80_000u32 {
        let (from, to, reason) = cycle[(k / 10_000) as usize % 4];
        bodies.push(EventBody::AgentStateChanged {
            agent: format!("agent-{:05}", k % 10_000),
            from,
            to,
            reason: reason.into(),
        });
    }
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| detached_event(Seq(i as u64 + 1), 0, &stream, None, b).expect("event"))
        .collect()
}

/// A deterministic 32-byte value (the fold does not check the hash).
fn blake3_like(i: u32) -> Box<[u8; 32]> {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(&i.to_le_bytes());
    Box::new(h)
}

fn folds(c: &mut Criterion) {
    let mut g = c.benchmark_group("fold");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let events = registry_events();
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("registry/100k_events", |b| {
        b.iter(|| {
            let mut r = AgentRegistry::default();
            for e in &events {
                r.apply(e);
            }
            black_box(r)
        });
    });
    g.bench_function("read_body/100k_events", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for e in &events {
                if matches!(e.body(), ArchivedEventBody::AgentStateChanged { .. }) {
                    n += 1;
                }
            }
            black_box(n)
        });
    });
    let (_, facts) = big_view(&host(), 10_000);
    g.throughput(Throughput::Elements(facts.len() as u64));
    g.bench_function(format!("scheduler/{}_facts", facts.len()), |b| {
        b.iter(|| {
            let mut v = SchedulerView::default();
            for e in &facts {
                v.apply(e);
            }
            black_box(v)
        });
    });
    g.finish();
}

criterion_group!(benches, decisions, folds);
criterion_main!(benches);
