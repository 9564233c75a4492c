//! The scheduler decider: no slot is ever over-committed, no queued task
//! could be placed or preempt its way in, every task ends exactly once —
//! property-tested over random commands, both placement strategies; every
//! decision equals a naive reference (fold each fact, restart from the top),
//! also after the capacity changed under a view; folding native bodies
//! equals folding stored events; a snapshot round-trips with its indexes
//! rebuilt; a data-driven preemption scenario; and `stele bench scheduler`
//! run end to end on a temporary journal.

use std::collections::BTreeMap;

use proptest::prelude::*;
use stele_engine::scheduler::{
    HostCapacity, Placement, SchedulerCommand, SlotCapacity, decide, fit, preemption_plan, scheduler_stream,
};
use stele_journal::event::detached_event;
use stele_journal::{EventBody, Seq, TaskOutcome, TaskPriority};
use stele_projections::scheduler::{FINISHED_KEPT, TaskState};
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
        let sum: u64 = usage
            .running()
            .iter()
            .map(|t| view.tasks[&*t.task].memory_mb)
            .sum();
        prop_assert_eq!(sum, usage.memory_mb);
    }
    for (_, q) in view.queue() {
        let t = &view.tasks[&*q.task];
        prop_assert_eq!(t.state, TaskState::Queued);
        prop_assert!(fit(view, cap, t).is_none(), "{} is queued but fits", q.task);
        prop_assert!(
            preemption_plan(view, cap, t).is_none(),
            "{} is queued behind lower priorities",
            q.task
        );
    }
    if let Err(e) = view.check_indexes() {
        return Err(TestCaseError::fail(e));
    }
    Ok(())
}

/// The scheduler as first written, kept as the oracle: fold every fact into
/// a copy of the view and look for the first queued task (priority, FIFO)
/// that fits or can preempt its way in, again from the top after each
/// placement. `decide` must return exactly its facts.
fn reference_decide(
    view: &SchedulerView,
    cap: &HostCapacity,
    cmd: SchedulerCommand,
) -> Option<Vec<EventBody>> {
    let mut sim = view.clone();
    let mut facts = Vec::new();
    let mut seq = 0;
    let mut emit = |sim: &mut SchedulerView, f: EventBody| {
        apply_all(sim, std::slice::from_ref(&f), &mut seq);
        facts.push(f);
    };
    match cmd {
        SchedulerCommand::Enqueue {
            agent,
            priority,
            memory_mb,
            cpu_millis,
            trigger,
        } => {
            let fits_somewhere = cap
                .slots
                .iter()
                .any(|s| memory_mb <= s.memory_mb && u64::from(cpu_millis) <= s.cpu_millis);
            if cap.slots.is_empty() || !fits_somewhere {
                return None;
            }
            let task = format!("task-{}", sim.next_task);
            emit(
                &mut sim,
                EventBody::TaskQueued {
                    task,
                    agent,
                    priority,
                    memory_mb,
                    cpu_millis,
                    trigger,
                },
            );
        }
        SchedulerCommand::Finish {
            task,
            outcome,
            detail,
        } => {
            let t = sim.tasks.get(&task)?;
            match t.state {
                TaskState::Finished { .. } => return None,
                TaskState::Queued if outcome != TaskOutcome::Cancelled => return None,
                _ => {}
            }
            emit(
                &mut sim,
                EventBody::TaskFinished {
                    task,
                    outcome,
                    detail,
                },
            );
        }
    }
    loop {
        let next = sim.queue().find_map(|(_, q)| {
            let t = &sim.tasks[&*q.task];
            if let Some(slot) = fit(&sim, cap, t) {
                Some((q.task.to_string(), slot, Vec::new()))
            } else {
                preemption_plan(&sim, cap, t).map(|(slot, victims)| (q.task.to_string(), slot, victims))
            }
        });
        let Some((task, slot, victims)) = next else {
            break;
        };
        for v in victims {
            emit(
                &mut sim,
                EventBody::TaskPreempted {
                    task: v,
                    by: task.clone(),
                },
            );
        }
        emit(&mut sim, EventBody::TaskPlaced { task, slot });
    }
    Some(facts)
}

fn placement() -> impl Strategy<Value = Placement> {
    prop_oneof![
        Just(Placement::FirstFit),
        Just(Placement::BestFit),
        Just(Placement::Spread)
    ]
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

fn command(view: &SchedulerView, op: &Op) -> Option<SchedulerCommand> {
    Some(match op {
        Op::Enqueue(priority, memory_mb, cpu_millis) => SchedulerCommand::Enqueue {
            agent: format!("a{}", memory_mb % 5),
            priority: *priority,
            memory_mb: *memory_mb,
            cpu_millis: *cpu_millis,
            trigger: "test".into(),
        },
        Op::Finish(i, o) => {
            if view.tasks.is_empty() {
                return None;
            }
            let id = view
                .tasks
                .keys()
                .nth(i.index(view.tasks.len()))
                .expect("id")
                .clone();
            let outcome = [
                TaskOutcome::Completed,
                TaskOutcome::Failed,
                TaskOutcome::TimedOut,
                TaskOutcome::Cancelled,
            ][*o as usize];
            SchedulerCommand::Finish {
                task: id,
                outcome,
                detail: "test".into(),
            }
        }
    })
}

/// Folds `facts` both ways — as stored events and as native bodies — and
/// checks they agree.
fn fold_both(view: &mut SchedulerView, facts: &[EventBody], seq: &mut u64) -> Result<(), TestCaseError> {
    let mut native = view.clone();
    for f in facts {
        native.apply_body(f);
    }
    apply_all(view, facts, seq);
    prop_assert_eq!(&native, &*view, "apply_body and apply agree");
    prop_assert_eq!(
        serde_json::to_string(&native).expect("json"),
        serde_json::to_string(&*view).expect("json")
    );
    Ok(())
}

fn smaller_host(placement: Placement) -> HostCapacity {
    HostCapacity {
        slots: vec![
            SlotCapacity {
                memory_mb: 700,
                cpu_millis: 1500,
            },
            SlotCapacity {
                memory_mb: 2048,
                cpu_millis: 600,
            },
        ],
        placement,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn scheduling_never_overcommits_or_strands_a_higher_priority(
        ops in proptest::collection::vec(op(), 1..80),
        placement in placement(),
    ) {
        let cap = host(placement);
        let mut view = SchedulerView::default();
        let mut seq = 0;
        let mut terminal: BTreeMap<String, u32> = BTreeMap::new();
        for op in ops {
            let Some(cmd) = command(&view, &op) else { continue };
            let before = view.clone();
            let reference = reference_decide(&view, &cap, cmd.clone());
            match decide(&view, &cap, cmd) {
                Ok(facts) => {
                    prop_assert_eq!(Some(&facts), reference.as_ref(), "the same facts as the reference");
                    for f in &facts {
                        if let EventBody::TaskFinished { task, .. } = f {
                            *terminal.entry(task.clone()).or_default() += 1;
                        }
                    }
                    fold_both(&mut view, &facts, &mut seq)?;
                }
                Err(_) => {
                    prop_assert!(reference.is_none(), "the reference accepts what decide rejects");
                    prop_assert_eq!(&view, &before, "a rejection changes nothing");
                }
            }
            check_invariants(&view, &cap)?;
        }
        // A snapshot round-trips, indexes rebuilt.
        let loaded: SchedulerView = serde_json::from_str(&serde_json::to_string(&view).expect("json")).expect("load");
        prop_assert_eq!(&loaded, &view);
        prop_assert!(loaded.check_indexes().is_ok());
        prop_assert_eq!(loaded.queue().collect::<Vec<_>>(), view.queue().collect::<Vec<_>>());
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
        prop_assert!(view.slots.values().all(|s| s.running().is_empty() && s.tasks.is_empty() && s.memory_mb == 0 && s.cpu_millis == 0));
        prop_assert_eq!(view.queue_len(), 0);
    }

    /// After a restart with another capacity the view is not what this
    /// capacity would have decided (slots may even be over-committed):
    /// decisions still match the reference, and once they have run the
    /// invariants hold again for every slot that is not over-committed.
    #[test]
    fn a_changed_capacity_is_decided_like_the_reference(
        before in proptest::collection::vec(op(), 1..60),
        after in proptest::collection::vec(op(), 1..40),
        placement in placement(),
    ) {
        let mut view = SchedulerView::default();
        let mut seq = 0;
        for (i, ops) in [before, after].into_iter().enumerate() {
            let cap = if i == 0 { host(placement) } else { smaller_host(placement) };
            for op in ops {
                let Some(cmd) = command(&view, &op) else { continue };
                let reference = reference_decide(&view, &cap, cmd.clone());
                match decide(&view, &cap, cmd) {
                    Ok(facts) => {
                        prop_assert_eq!(Some(&facts), reference.as_ref());
                        fold_both(&mut view, &facts, &mut seq)?;
                    }
                    Err(_) => prop_assert!(reference.is_none()),
                }
                if let Err(e) = view.check_indexes() {
                    return Err(TestCaseError::fail(e));
                }
            }
        }
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
    for (placement, expected_slot) in [
        (Placement::FirstFit, 0),
        (Placement::BestFit, 1),
        (Placement::Spread, 2),
    ] {
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

#[test]
fn spread_places_equal_tasks_on_different_slots_and_first_fit_stacks_them() {
    let equal = |placement| HostCapacity {
        slots: vec![
            SlotCapacity {
                memory_mb: 1024,
                cpu_millis: 1000,
            };
            3
        ],
        placement,
    };
    let slots_of = |placement| {
        let cap = equal(placement);
        let mut view = SchedulerView::default();
        let mut seq = 0;
        for _ in 0..3 {
            let cmd = SchedulerCommand::Enqueue {
                agent: "a".into(),
                priority: TaskPriority::Normal,
                memory_mb: 100,
                cpu_millis: 100,
                trigger: "t".into(),
            };
            let facts = decide(&view, &cap, cmd).expect("ok");
            apply_all(&mut view, &facts, &mut seq);
        }
        let mut slots: Vec<u32> = view
            .tasks
            .values()
            .map(|t| match t.state {
                TaskState::Running { slot } => slot,
                other => panic!("not placed: {other:?}"),
            })
            .collect();
        slots.sort_unstable();
        slots
    };
    assert_eq!(slots_of(Placement::Spread), [0, 1, 2]);
    assert_eq!(slots_of(Placement::FirstFit), [0, 0, 0]);
    assert_eq!(slots_of(Placement::BestFit), [0, 0, 0]);
}

/// However many tasks finish, the view keeps the last FINISHED_KEPT of
/// them (and every agent's counts); the dropped ones are still known as
/// finished; a view loaded from a snapshot taken anywhere, plus the tail,
/// equals the one folded from scratch.
#[test]
fn the_view_keeps_only_the_latest_finished_tasks() {
    let cap = host(Placement::FirstFit);
    let n = FINISHED_KEPT + 300;
    let mut facts = Vec::new();
    let mut view = SchedulerView::default();
    let mut seq = 0;
    for i in 0..n {
        let enqueue = SchedulerCommand::Enqueue {
            agent: format!("a{}", i % 3),
            priority: TaskPriority::Normal,
            memory_mb: 10,
            cpu_millis: 10,
            trigger: "t".into(),
        };
        let placed = decide(&view, &cap, enqueue).expect("enqueue");
        apply_all(&mut view, &placed, &mut seq);
        facts.extend(placed);
        let finish = SchedulerCommand::Finish {
            task: format!("task-{i}"),
            outcome: TaskOutcome::Completed,
            detail: "done".into(),
        };
        let finished = decide(&view, &cap, finish).expect("finish");
        apply_all(&mut view, &finished, &mut seq);
        facts.extend(finished);
        if i % 97 == 0 {
            view.check_indexes().expect("indexes");
        }
    }
    view.check_indexes().expect("indexes");
    assert_eq!(view.tasks.len(), FINISHED_KEPT);
    let oldest_kept = n - FINISHED_KEPT;
    assert!(view.tasks.contains_key(&format!("task-{oldest_kept}")));
    assert!(!view.tasks.contains_key(&format!("task-{}", oldest_kept - 1)));
    let completed: u64 = view.history.values().map(|h| h.completed).sum();
    assert_eq!(completed, n as u64, "the counts keep every task");
    // A dropped task is finished, not unknown; a task never queued is unknown.
    let again = |task: &str| {
        decide(
            &view,
            &cap,
            SchedulerCommand::Finish {
                task: task.into(),
                outcome: TaskOutcome::Cancelled,
                detail: "again".into(),
            },
        )
        .expect_err("rejected")
        .to_string()
    };
    assert!(again("task-0").contains("already"), "{}", again("task-0"));
    assert!(
        again(&format!("task-{n}")).contains("no task"),
        "{}",
        again(&format!("task-{n}"))
    );
    // Snapshot + tail at several cuts equals the whole fold.
    for cut in [0, 1, facts.len() / 3, facts.len() / 2 + 1, facts.len() - 1] {
        let mut head = SchedulerView::default();
        let mut s = 0;
        apply_all(&mut head, &facts[..cut], &mut s);
        let mut loaded: SchedulerView =
            serde_json::from_str(&serde_json::to_string(&head).expect("json")).expect("load");
        apply_all(&mut loaded, &facts[cut..], &mut s);
        assert_eq!(loaded, view, "cut at {cut}");
        loaded.check_indexes().expect("indexes after load");
    }
}

#[test]
fn bench_scheduler_reports_consistent_figures_on_a_journal_that_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let run = crate::run_bounded(&[
        "--data",
        data,
        "bench",
        "scheduler",
        "--agents",
        "200",
        "--tasks",
        "500",
        "--open",
        "300",
        "--json",
    ]);
    run.no_panic("bench scheduler");
    assert_eq!(run.code, Some(0), "bench scheduler failed: {}", run.stderr);
    let r: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    let n = |k: &str| -> f64 { r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}")) };
    assert_eq!(n("agents"), 200.0);
    assert_eq!(n("decisions"), 500.0, "one decision per task command");
    assert_eq!(n("enqueues") + n("finishes") + n("cancels"), n("decisions"));
    assert!(n("facts") >= n("decisions"), "every decision has a fact");
    assert!(n("preemptions") > 0.0, "the workload preempts: {r}");
    assert!(n("queued_at_end") + n("running_at_end") <= n("open_tasks"));
    assert!(n("decide_latency_us_p50") <= n("decide_latency_us_p99"));
    assert!(n("decide_latency_us_p99") <= n("decide_latency_us_max"));
    assert!(n("ack_latency_us_p50") <= n("ack_latency_us_p99"));
    assert!(n("appends") >= 1.0 && n("appends") <= n("decisions"));
    // JournalOpened, two facts per registration, the scheduler's facts, and
    // possibly checkpoints.
    let least = 1.0 + 2.0 * n("agents") + n("facts");
    assert!(n("journal_events") >= least, "{} < {least}", n("journal_events"));
    for k in [
        "rss_bytes_per_agent",
        "decisions_per_s",
        "registry_fold_events_per_s",
        "read_events_per_s",
        "scheduler_fold_events_per_s",
        "restart_scratch_ms",
        "restart_snapshot_ms",
        "restart_open_ms",
    ] {
        assert!(n(k) > 0.0, "{k} in {r}");
    }

    let verify = crate::run_bounded(&["--data", data, "journal", "verify", "--json"]);
    verify.no_panic("journal verify");
    assert_eq!(
        verify.code,
        Some(0),
        "the bench's journal verifies: {}",
        verify.stdout
    );

    // The scheduler view folded by `stele at` agrees with the bench.
    let at = crate::run_bounded(&["--data", data, "at", "head", "--view", "scheduler", "--json"]);
    assert_eq!(at.code, Some(0), "{}", at.stderr);
    let view: serde_json::Value = serde_json::from_str(at.stdout.trim()).expect("view");
    let tasks = view["tasks"].as_object().expect("tasks");
    assert_eq!(tasks.len() as f64, n("enqueues"));
    let running = tasks
        .values()
        .filter(|t| t["state"]["state"] == "running")
        .count();
    assert_eq!(running as f64, n("running_at_end"));
    assert_eq!(
        view["queue"].as_array().expect("queue").len() as f64,
        n("queued_at_end")
    );
    let at = crate::run_bounded(&["--data", data, "at", "head", "--view", "registry", "--json"]);
    assert_eq!(at.code, Some(0), "{}", at.stderr);
    let registry: serde_json::Value = serde_json::from_str(at.stdout.trim()).expect("registry");
    assert_eq!(registry["agents"].as_object().expect("agents").len(), 200);
}
