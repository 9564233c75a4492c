//! The scheduler decider: no slot is ever over-committed, no queued task
//! could be placed or preempt its way in, every task ends exactly once —
//! property-tested over random commands, both placement strategies — and a
//! data-driven preemption scenario, folded through the real journal.

use std::collections::BTreeMap;

use proptest::prelude::*;
use stele_engine::scheduler::{
    HostCapacity, Placement, SchedulerCommand, SlotCapacity, decide, fit, preemption_plan, scheduler_stream,
};
use stele_journal::event::detached_event;
use stele_journal::{EventBody, Seq, TaskOutcome, TaskPriority};
use stele_projections::scheduler::TaskState;
use stele_projections::{Projection, SchedulerView};

fn host(placement: Placement) -> HostCapacity {
    HostCapacity {
        slots: vec![
            SlotCapacity {
                memory_mb: 1024,
                cpu_millis: 2000,
            },
            SlotCapacity {
                memory_mb: 512,
                cpu_millis: 1000,
            },
            SlotCapacity {
                memory_mb: 2048,
                cpu_millis: 1000,
            },
        ],
        placement,
    }
}

fn apply_all(view: &mut SchedulerView, facts: &[EventBody], seq: &mut u64) {
    for f in facts {
        *seq += 1;
        let e = detached_event(Seq(*seq), 0, &scheduler_stream(), None, f).expect("event");
        view.apply(&e);
    }
}

fn check_invariants(view: &SchedulerView, cap: &HostCapacity) -> Result<(), TestCaseError> {
    for (slot, usage) in &view.slots {
        let c = cap.slots[*slot as usize];
        prop_assert!(
            usage.memory_mb <= c.memory_mb,
            "slot {} memory over-committed",
            slot
        );
        prop_assert!(
            usage.cpu_millis <= c.cpu_millis,
            "slot {} cpu over-committed",
            slot
        );
        let sum: u64 = usage.tasks.iter().map(|t| view.tasks[t].memory_mb).sum();
        prop_assert_eq!(sum, usage.memory_mb);
    }
    for (_, _, id) in &view.queue {
        let t = &view.tasks[id];
        prop_assert_eq!(t.state, TaskState::Queued);
        prop_assert!(fit(view, cap, t).is_none(), "{} is queued but fits", id);
        prop_assert!(
            preemption_plan(view, cap, t).is_none(),
            "{} is queued behind lower priorities",
            id
        );
    }
    Ok(())
}

fn priority() -> impl Strategy<Value = TaskPriority> {
    prop_oneof![
        Just(TaskPriority::Critical),
        Just(TaskPriority::High),
        Just(TaskPriority::Normal),
        Just(TaskPriority::Low),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(TaskPriority, u64, u32),
    Finish(prop::sample::Index, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (priority(), 1u64..900, 1u32..1500).prop_map(|(p, m, c)| Op::Enqueue(p, m, c)),
        2 => (any::<prop::sample::Index>(), 0u8..4).prop_map(|(i, o)| Op::Finish(i, o)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn scheduling_never_overcommits_or_strands_a_higher_priority(
        ops in proptest::collection::vec(op(), 1..80),
        best_fit in any::<bool>(),
    ) {
        let cap = host(if best_fit { Placement::BestFit } else { Placement::FirstFit });
        let mut view = SchedulerView::default();
        let mut seq = 0;
        let mut terminal: BTreeMap<String, u32> = BTreeMap::new();
        for op in ops {
            let cmd = match op {
                Op::Enqueue(priority, memory_mb, cpu_millis) => SchedulerCommand::Enqueue {
                    agent: format!("a{}", memory_mb % 5),
                    priority,
                    memory_mb,
                    cpu_millis,
                    trigger: "test".into(),
                },
                Op::Finish(i, o) => {
                    if view.tasks.is_empty() { continue; }
                    let id = view.tasks.keys().nth(i.index(view.tasks.len())).expect("id").clone();
                    let outcome = [TaskOutcome::Completed, TaskOutcome::Failed, TaskOutcome::TimedOut, TaskOutcome::Cancelled][o as usize];
                    SchedulerCommand::Finish { task: id, outcome, detail: "test".into() }
                }
            };
            let before = view.clone();
            match decide(&view, &cap, cmd) {
                Ok(facts) => {
                    for f in &facts {
                        if let EventBody::TaskFinished { task, .. } = f {
                            *terminal.entry(task.clone()).or_default() += 1;
                        }
                    }
                    apply_all(&mut view, &facts, &mut seq);
                }
                Err(_) => prop_assert_eq!(&view, &before, "a rejection changes nothing"),
            }
            check_invariants(&view, &cap)?;
        }
        // Cancel everything left: every task ends exactly once.
        let open: Vec<String> = view.tasks.iter().filter(|(_, t)| !matches!(t.state, TaskState::Finished { .. })).map(|(id, _)| id.clone()).collect();
        for id in open {
            let facts = decide(&view, &cap, SchedulerCommand::Finish { task: id.clone(), outcome: TaskOutcome::Cancelled, detail: "drain".into() }).expect("cancel");
            for f in &facts {
                if let EventBody::TaskFinished { task, .. } = f {
                    *terminal.entry(task.clone()).or_default() += 1;
                }
            }
            apply_all(&mut view, &facts, &mut seq);
            check_invariants(&view, &cap)?;
        }
        prop_assert_eq!(terminal.len(), view.tasks.len(), "every task ended");
        prop_assert!(terminal.values().all(|n| *n == 1), "exactly once: {:?}", terminal);
        prop_assert!(view.slots.values().all(|s| s.tasks.is_empty() && s.memory_mb == 0 && s.cpu_millis == 0));
    }
}

#[test]
fn a_critical_task_preempts_the_newest_lowest_priority_work() {
    let cap = HostCapacity {
        slots: vec![SlotCapacity {
            memory_mb: 1000,
            cpu_millis: 1000,
        }],
        placement: Placement::FirstFit,
    };
    let mut view = SchedulerView::default();
    let mut seq = 0;
    let mut run = |view: &mut SchedulerView, cmd| {
        let facts = decide(view, &cap, cmd).expect("accepted");
        apply_all(view, &facts, &mut seq);
        facts
            .iter()
            .map(|f| match f {
                EventBody::TaskQueued { task, .. } => format!("queued {task}"),
                EventBody::TaskPlaced { task, slot } => format!("placed {task}@{slot}"),
                EventBody::TaskPreempted { task, by } => format!("preempted {task} by {by}"),
                EventBody::TaskFinished { task, outcome, .. } => format!("finished {task} {outcome:?}"),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let enqueue = |p, m| SchedulerCommand::Enqueue {
        agent: "a".into(),
        priority: p,
        memory_mb: m,
        cpu_millis: 100,
        trigger: "test".into(),
    };
    assert_eq!(
        run(&mut view, enqueue(TaskPriority::Low, 400)),
        "queued task-0, placed task-0@0"
    );
    assert_eq!(
        run(&mut view, enqueue(TaskPriority::Low, 400)),
        "queued task-1, placed task-1@0"
    );
    // Any strictly higher priority may suspend lower work (newest first).
    assert_eq!(
        run(&mut view, enqueue(TaskPriority::Normal, 300)),
        "queued task-2, preempted task-1 by task-2, placed task-2@0"
    );
    // A critical task suspends the remaining low-priority task, not the normal one.
    assert_eq!(
        run(&mut view, enqueue(TaskPriority::Critical, 500)),
        "queued task-3, preempted task-0 by task-3, placed task-3@0"
    );
    // When it ends, the oldest waiting low-priority task gets the room.
    assert_eq!(
        run(
            &mut view,
            SchedulerCommand::Finish {
                task: "task-3".into(),
                outcome: TaskOutcome::Completed,
                detail: "exit 0".into()
            }
        ),
        "finished task-3 Completed, placed task-0@0"
    );
    assert_eq!(view.history["a"].preempted, 2);
    assert_eq!(view.history["a"].completed, 1);
    assert_eq!(
        view.tasks["task-1"].state,
        TaskState::Queued,
        "waits for room again"
    );
    let err = decide(&view, &cap, enqueue(TaskPriority::Critical, 5000)).expect_err("too large");
    assert!(err.to_string().contains("more than any slot has"), "{err}");
    let err = decide(
        &view,
        &cap,
        SchedulerCommand::Finish {
            task: "task-1".into(),
            outcome: TaskOutcome::Completed,
            detail: String::new(),
        },
    )
    .expect_err("queued");
    assert!(err.to_string().contains("not running"), "{err}");
}

#[test]
fn best_fit_packs_and_first_fit_takes_the_lowest_slot() {
    let enqueue = |m| SchedulerCommand::Enqueue {
        agent: "a".into(),
        priority: TaskPriority::Normal,
        memory_mb: m,
        cpu_millis: 100,
        trigger: "t".into(),
    };
    for (placement, expected_slot) in [(Placement::FirstFit, 0), (Placement::BestFit, 1)] {
        let facts = decide(&SchedulerView::default(), &host(placement), enqueue(500)).expect("ok");
        assert!(
            facts.contains(&EventBody::TaskPlaced {
                task: "task-0".into(),
                slot: expected_slot
            }),
            "{placement:?}: {facts:?}"
        );
    }
}
