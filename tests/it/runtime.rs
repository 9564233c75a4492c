//! The runtime decider, data-driven: commands in, facts and effects out,
//! folded into the state the next command sees — no clock, no processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use stele_engine::AgentDefinition;
use stele_engine::runtime::{Batch, Effect, RuntimeCommand, RuntimeRejection, RuntimeState, decide};
use stele_engine::scheduler::{HostCapacity, Placement, SlotCapacity};
use stele_journal::event::detached_event;
use stele_journal::{EventBody, ProcessExit, Seq, TaskRequest};

struct World {
    state: RuntimeState,
    seq: u64,
    log: Vec<String>,
}

fn line(b: &EventBody) -> String {
    match b {
        EventBody::AgentStateChanged { agent, from, to, .. } => {
            format!("{agent}: {}->{}", from.name(), to.name())
        }
        EventBody::TaskQueued {
            task, agent, trigger, ..
        } => format!("queued {task} {agent} ({trigger})"),
        EventBody::TaskPlaced { task, slot } => format!("placed {task} slot {slot}"),
        EventBody::TaskPreempted { task, by } => format!("preempted {task} by {by}"),
        EventBody::TaskFinished { task, outcome, .. } => format!("finished {task} {outcome:?}"),
        EventBody::TimerFired { agent, timer, tick } => format!("timer {agent} {timer} {tick}"),
        EventBody::ProcessExited { task, .. } => format!("exited {task}"),
        EventBody::ShutdownStep { step, name, .. } => format!("shutdown {step} {name}"),
        EventBody::TaskRequested { task, request, .. } => {
            format!(
                "requested {task}: {}",
                stele_engine::runtime::request_words(request)
            )
        }
        other => other.kind().to_owned(),
    }
}

impl World {
    fn new() -> World {
        let mut w = World {
            state: RuntimeState::default(),
            seq: 0,
            log: Vec::new(),
        };
        w.ok(RuntimeCommand::Start {
            pid: 1,
            software: "test".into(),
            host: HostCapacity {
                slots: vec![SlotCapacity {
                    memory_mb: 100,
                    cpu_millis: 1000,
                }],
                placement: Placement::FirstFit,
            },
            confinement: "rlimits".into(),
            config_hash: [0; 32],
            orphans: BTreeMap::new(),
        });
        w
    }

    /// Decides, folds the facts, returns (fact lines, effects).
    fn ok(&mut self, c: RuntimeCommand) -> (Vec<String>, Vec<Effect>) {
        let (facts, effects) = decide(&self.state, c).expect("accepted");
        let mut lines = Vec::new();
        for f in facts {
            self.seq += 1;
            let e = detached_event(Seq(self.seq), 0, &f.stream, f.cause, &f.body).expect("event");
            self.state.apply(&e);
            lines.push(line(&f.body));
        }
        self.log.extend(lines.clone());
        (lines, effects)
    }

    fn register(
        &mut self,
        name: &str,
        priority: &str,
        mode: &str,
        memory_mb: u64,
    ) -> (Vec<String>, Vec<Effect>) {
        let source = format!(
            "name = \"{name}\"\npriority = \"{priority}\"\n[mode]\n{mode}\n[limits]\nmemory_mb = {memory_mb}\ncpu_cores = 0.5\nexecution_timeout = \"5s\"\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\n"
        );
        let definition = AgentDefinition::parse(Path::new("t.toml"), &source).expect("definition");
        self.ok(RuntimeCommand::Register {
            definition: Box::new(definition),
            source,
            startable: Ok(()),
        })
    }

    fn started(&mut self, task: &str) {
        self.ok(RuntimeCommand::ProcessStarted {
            task: task.into(),
            pid: 4242,
            start_ticks: 7,
            confinement: "rlimits".into(),
        });
    }

    fn exited(&mut self, task: &str, code: i32, stopped: bool) -> (Vec<String>, Vec<Effect>) {
        self.ok(RuntimeCommand::ProcessExited {
            task: task.into(),
            exit: ProcessExit {
                code: Some(code),
                stopped,
                ..ProcessExit::default()
            },
        })
    }
}

#[test]
fn an_ephemeral_agent_runs_once_and_terminates() {
    let mut w = World::new();
    let (facts, effects) = w.register("once", "normal", "kind = \"ephemeral\"", 10);
    assert_eq!(
        facts,
        [
            "agent_registered",
            "once: initializing->ready",
            "queued task-0 once (registered)",
            "placed task-0 slot 0",
            "once: ready->running",
        ]
    );
    assert_eq!(
        effects,
        [Effect::Start {
            task: "task-0".into(),
            agent: "once".into()
        }]
    );
    w.started("task-0");
    let (facts, effects) = w.exited("task-0", 0, false);
    assert_eq!(
        facts,
        [
            "exited task-0",
            "finished task-0 Completed",
            "once: running->ready",
            "once: ready->terminated"
        ]
    );
    assert_eq!(effects, [Effect::Disarm { agent: "once".into() }]);
}

#[test]
fn a_persistent_agent_restarts_with_growing_backoff() {
    let mut w = World::new();
    w.register("keeper", "normal", "kind = \"persistent\"", 10);
    let mut backoffs = Vec::new();
    for round in 1..=4 {
        let task = format!("task-{}", round - 1);
        w.started(&task);
        let (_, effects) = w.exited(&task, 1, false);
        let Some(Effect::ArmRestart { after, .. }) = effects.first() else {
            panic!("expected a restart timer, got {effects:?}")
        };
        backoffs.push(*after);
        let (facts, _) = w.ok(RuntimeCommand::TimerFired {
            agent: "keeper".into(),
            timer: "restart".into(),
        });
        assert_eq!(facts[0], format!("timer keeper restart {round}"));
        assert!(facts[1].starts_with(&format!("queued task-{round} keeper (restart tick {round})")));
    }
    assert_eq!(
        backoffs,
        [2, 4, 8, 16].map(Duration::from_secs),
        "1 s × 2^consecutive failures"
    );
    // A success resets the streak.
    w.started("task-4");
    let (_, effects) = w.exited("task-4", 0, false);
    assert_eq!(
        effects,
        [Effect::ArmRestart {
            agent: "keeper".into(),
            after: Duration::from_secs(1)
        }]
    );
}

#[test]
fn preemption_suspends_and_resumes_through_the_lifecycle() {
    let mut w = World::new();
    w.register("hog", "low", "kind = \"persistent\"", 80);
    w.started("task-0");
    let (facts, effects) = w.register("vip", "critical", "kind = \"ephemeral\"", 50);
    assert_eq!(
        facts[2..],
        [
            "queued task-1 vip (registered)",
            "preempted task-0 by task-1",
            "hog: running->suspended",
            "placed task-1 slot 0",
            "vip: ready->running",
        ]
    );
    assert!(effects.contains(&Effect::Stop {
        task: "task-0".into()
    }));
    // The preempted process ends: recorded, but its task stays queued.
    let (facts, _) = w.exited("task-0", 143, true);
    assert_eq!(facts, ["exited task-0"]);
    w.started("task-1");
    let (facts, effects) = w.exited("task-1", 0, false);
    assert_eq!(
        facts,
        [
            "exited task-1",
            "finished task-1 Completed",
            "vip: running->ready",
            "placed task-0 slot 0",
            "hog: suspended->running",
            "vip: ready->terminated",
        ]
    );
    assert!(effects.contains(&Effect::Start {
        task: "task-0".into(),
        agent: "hog".into()
    }));
}

#[test]
fn triggers_while_a_task_is_active_are_coalesced() {
    let mut w = World::new();
    let (_, effects) = w.register("tick", "low", "kind = \"scheduled\"\ninterval = \"1s\"", 10);
    assert_eq!(
        effects,
        [Effect::ArmInterval {
            agent: "tick".into(),
            every: Duration::from_secs(1)
        }]
    );
    let fire = || RuntimeCommand::TimerFired {
        agent: "tick".into(),
        timer: "interval".into(),
    };
    let (facts, _) = w.ok(fire());
    assert_eq!(
        facts[..2],
        ["timer tick interval 1", "queued task-0 tick (interval tick 1)"]
    );
    // Still running: the tick is recorded, nothing is queued.
    let (facts, _) = w.ok(fire());
    assert_eq!(facts, ["timer tick interval 2"]);
}

#[test]
fn stop_of_a_running_agent_waits_for_its_task() {
    let mut w = World::new();
    w.register("svc", "normal", "kind = \"persistent\"", 10);
    w.started("task-0");
    let (facts, effects) = w.ok(RuntimeCommand::Stop {
        agent: "svc".into(),
        reason: "maintenance".into(),
    });
    assert_eq!(facts, ["agent_stop_requested"]);
    assert_eq!(
        effects,
        [Effect::Stop {
            task: "task-0".into()
        }]
    );
    let (facts, effects) = w.exited("task-0", 143, true);
    assert_eq!(
        facts,
        [
            "exited task-0",
            "finished task-0 Cancelled",
            "svc: running->ready",
            "svc: ready->terminated"
        ]
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::ArmRestart { .. })));
    let err = decide(
        &w.state,
        RuntimeCommand::Stop {
            agent: "svc".into(),
            reason: "again".into(),
        },
    )
    .expect_err("terminated");
    assert!(matches!(err, RuntimeRejection::Terminated { .. }));
}

#[test]
fn a_rejected_command_leaves_the_batch_untouched() {
    let w = World::new();
    let mut batch = Batch::new(&w.state);
    let source = "name = \"a\"\npriority = \"low\"\n[mode]\nkind = \"event-driven\"\nfilter = {}\n[limits]\nmemory_mb = 1\ncpu_cores = 0.1\nexecution_timeout = \"1s\"\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\n";
    let def = || Box::new(AgentDefinition::parse(Path::new("a.toml"), source).expect("def"));
    let first = batch
        .decide(RuntimeCommand::Register {
            definition: def(),
            source: source.into(),
            startable: Ok(()),
        })
        .expect("first");
    assert_eq!(first, 0..2);
    // The same name again in the same batch: the batch's own facts count.
    let err = batch
        .decide(RuntimeCommand::Register {
            definition: def(),
            source: source.into(),
            startable: Ok(()),
        })
        .expect_err("duplicate");
    assert!(err.to_string().contains("already registered"), "{err}");
    assert_eq!(batch.len(), 2);
    let err = batch
        .decide(RuntimeCommand::Shutdown {
            step: 3,
            detail: String::new(),
        })
        .expect_err("out of order");
    assert!(matches!(
        err,
        RuntimeRejection::StepOutOfOrder { step: 3, last: 0 }
    ));
    assert_eq!(batch.len(), 2);
}

#[test]
fn shutdown_closes_admission_and_clears_the_queue() {
    let mut w = World::new();
    w.register("big", "normal", "kind = \"persistent\"", 90);
    w.started("task-0");
    w.register("waits", "normal", "kind = \"ephemeral\"", 50);
    let (facts, effects) = w.ok(RuntimeCommand::Shutdown {
        step: 1,
        detail: String::new(),
    });
    assert_eq!(facts, ["shutdown 1 stop-admission"]);
    assert_eq!(effects.len(), 2, "every agent's timers disarmed: {effects:?}");
    let (_, effects) = w.ok(RuntimeCommand::Shutdown {
        step: 2,
        detail: String::new(),
    });
    assert_eq!(
        effects,
        [Effect::Stop {
            task: "task-0".into()
        }]
    );
    // The stopped process ends: no placement of the queued task, no restart.
    let (facts, effects) = w.exited("task-0", 143, true);
    assert_eq!(
        facts,
        [
            "exited task-0",
            "finished task-0 Cancelled",
            "big: running->ready"
        ]
    );
    assert!(effects.is_empty(), "{effects:?}");
    for step in 3..=5 {
        w.ok(RuntimeCommand::Shutdown {
            step,
            detail: "done".into(),
        });
    }
    let (facts, _) = w.ok(RuntimeCommand::Shutdown {
        step: 6,
        detail: String::new(),
    });
    assert_eq!(facts, ["shutdown 6 clear-queue", "finished task-1 Cancelled"]);
    let err = decide(
        &w.state,
        RuntimeCommand::TimerFired {
            agent: "big".into(),
            timer: "restart".into(),
        },
    )
    .expect_err("closed");
    assert!(matches!(err, RuntimeRejection::ShuttingDown));
}

#[test]
fn health_probes_record_changes_and_stop_after_the_retries() {
    let mut w = World::new();
    let source = "name = \"svc\"\npriority = \"normal\"\n[mode]\nkind = \"persistent\"\n[limits]\nmemory_mb = 10\ncpu_cores = 0.5\nexecution_timeout = \"1h\"\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\n[health]\ncommand = \"/bin/true\"\ninterval = \"1s\"\ntimeout = \"1s\"\nretries = 2\n";
    let definition = AgentDefinition::parse(Path::new("svc.toml"), source).expect("definition");
    w.ok(RuntimeCommand::Register {
        definition: Box::new(definition),
        source: source.into(),
        startable: Ok(()),
    });
    w.started("task-0");
    let probe = |ok: bool| RuntimeCommand::HealthProbe {
        task: "task-0".into(),
        ok,
        detail: "probe".into(),
    };
    assert_eq!(w.ok(probe(true)).0.len(), 0, "healthy and was healthy: nothing");
    let (facts, effects) = w.ok(probe(false));
    assert_eq!(facts, ["health_checked"]);
    assert!(effects.is_empty());
    let (facts, _) = w.ok(probe(true));
    assert_eq!(facts, ["health_checked"], "recovery is recorded");
    w.ok(probe(false));
    let (_, effects) = w.ok(probe(false));
    assert_eq!(
        effects,
        [Effect::Stop {
            task: "task-0".into()
        }]
    );
    let (facts, effects) = w.exited("task-0", 143, true);
    assert_eq!(facts[1], "finished task-0 Failed");
    assert!(matches!(effects[0], Effect::ArmRestart { .. }));
}

#[test]
fn the_end_of_a_preempted_process_never_ends_its_next_placement() {
    let mut w = World::new();
    w.register("hog", "low", "kind = \"persistent\"", 80);
    w.started("task-0");
    w.register("vip", "critical", "kind = \"ephemeral\"", 50);
    w.started("task-1");
    // vip ends before hog's stopped process does: hog is placed again…
    let (facts, _) = w.exited("task-1", 0, false);
    assert!(facts.contains(&"placed task-0 slot 0".to_owned()), "{facts:?}");
    // …and then the old process's end arrives: recorded, nothing else.
    let (facts, effects) = w.exited("task-0", 143, true);
    assert_eq!(facts, ["exited task-0"]);
    assert!(effects.is_empty(), "{effects:?}");
    // The new process is the task's: its end ends the task.
    w.started("task-0");
    let (facts, _) = w.exited("task-0", 1, false);
    assert_eq!(
        facts[..3],
        ["exited task-0", "finished task-0 Failed", "hog: running->ready"]
    );
}

#[test]
fn a_request_queues_a_task_that_applies_no_mode_rule() {
    let mut w = World::new();
    let requested = |agent: &str, request: TaskRequest| RuntimeCommand::Requested {
        agent: agent.into(),
        request,
    };
    let run = |input: &str| TaskRequest::Run { input: input.into() };
    // An event-driven agent waits for its event; a request runs it now,
    // through the queue and a slot like any task.
    w.register(
        "watch",
        "normal",
        "kind = \"event-driven\"\nfilter = { kinds = [\"annotated\"] }",
        60,
    );
    let (facts, effects) = w.ok(requested("watch", run("hi")));
    // What it asks is journaled as data beside the trigger's words.
    assert_eq!(
        facts,
        [
            "queued task-0 watch (request run over HTTP: hi)",
            "placed task-0 slot 0",
            "watch: ready->running",
            "requested task-0: run over HTTP: hi",
        ]
    );
    assert_eq!(
        effects,
        [Effect::Start {
            task: "task-0".into(),
            agent: "watch".into()
        }]
    );
    // One task per agent: a second request is refused, not queued.
    let busy = decide(&w.state, requested("watch", run("again"))).expect_err("busy");
    assert!(
        matches!(&busy, RuntimeRejection::Busy { agent, task } if agent == "watch" && task == "task-0"),
        "{busy:?}"
    );
    // Another agent's request waits in the queue for the slot.
    w.register(
        "other",
        "normal",
        "kind = \"event-driven\"\nfilter = { kinds = [\"annotated\"] }",
        60,
    );
    let decision = TaskRequest::Decision {
        run: "run-1".into(),
        call: "call-1-0".into(),
        approved: true,
        approver: "bob".into(),
        reason: "looks fine".into(),
    };
    let (facts, _) = w.ok(requested("other", decision));
    assert_eq!(
        facts,
        [
            "queued task-1 other (request continue run-1: call-1-0 approved by bob (reason: looks fine))",
            "requested task-1: continue run-1: call-1-0 approved by bob (reason: looks fine)",
        ]
    );
    w.started("task-0");
    let (facts, effects) = w.exited("task-0", 0, false);
    assert_eq!(
        facts,
        [
            "exited task-0",
            "finished task-0 Completed",
            "watch: running->ready",
            "placed task-1 slot 0",
            "other: ready->running",
        ]
    );
    assert_eq!(
        effects,
        [Effect::Start {
            task: "task-1".into(),
            agent: "other".into()
        }]
    );
    // An ephemeral agent's own run terminates it; a request still runs it
    // (no lifecycle change) and leaves it as it was.
    w.started("task-1");
    w.exited("task-1", 0, false);
    w.register("once", "normal", "kind = \"ephemeral\"", 10);
    w.started("task-2");
    let (facts, _) = w.exited("task-2", 0, false);
    assert_eq!(facts.last().map(String::as_str), Some("once: ready->terminated"));
    let (facts, _) = w.ok(requested("once", run("once more")));
    assert_eq!(
        facts,
        [
            "queued task-3 once (request run over HTTP: once more)",
            "placed task-3 slot 0",
            "requested task-3: run over HTTP: once more",
        ]
    );
    w.started("task-3");
    let (facts, effects) = w.exited("task-3", 1, false);
    assert_eq!(facts, ["exited task-3", "finished task-3 Failed"]);
    assert!(effects.is_empty(), "{effects:?}");
    // Unknown agents and a closed admission are refused.
    let unknown = decide(&w.state, requested("nobody", run("x"))).expect_err("unknown");
    assert!(unknown.to_string().contains("nobody"), "{unknown}");
    w.ok(RuntimeCommand::Shutdown {
        step: 1,
        detail: String::new(),
    });
    let closed = decide(&w.state, requested("watch", run("x"))).expect_err("closed");
    assert!(matches!(closed, RuntimeRejection::ShuttingDown), "{closed:?}");
}
