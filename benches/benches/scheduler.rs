//! Scheduler decider latency with a large view: 2,000 tasks (a full host
//! plus a long queue), one `Enqueue` and one `Finish` decision each. The
//! decider only — no journal append. The target is p99 < 100 µs.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stele_engine::scheduler::{
    HostCapacity, Placement, SchedulerCommand, SlotCapacity, decide, scheduler_stream,
};
use stele_journal::event::detached_event;
use stele_journal::{EventBody, Seq, TaskOutcome, TaskPriority};
use stele_projections::{Projection, SchedulerView};

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

fn big_view(cap: &HostCapacity, tasks: u64) -> SchedulerView {
    let mut view = SchedulerView::default();
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
            let e = detached_event(Seq(1), 0, &scheduler_stream(), None, &f).expect("event");
            view.apply(&e);
        }
    }
    view
}

fn scheduler(c: &mut Criterion) {
    let cap = host();
    let view = big_view(&cap, 2_000);
    let running = view
        .tasks
        .iter()
        .find(|(_, t)| matches!(t.state, stele_projections::scheduler::TaskState::Running { .. }))
        .map(|(id, _)| id.clone())
        .expect("a running task");
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    g.bench_function("decide_enqueue/2k_tasks", |b| {
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
    g.bench_function("decide_finish/2k_tasks", |b| {
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
    g.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
