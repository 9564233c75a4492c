//! The scheduler decider: a priority queue over worker slots with
//! resource-aware placement (first-fit or best-fit) and priority preemption.
//!
//! `decide(&SchedulerView, &HostCapacity, command)` returns the facts —
//! `TaskQueued`, `TaskPlaced`, `TaskPreempted`, `TaskFinished` — and never
//! reads the clock: timer ticks and event triggers reach it as commands
//! derived from journaled events, so replay needs no clock. After every
//! command it places what it can, in priority then FIFO order:
//!
//! 1. a slot where the task fits in the free resources (first fit: the
//!    lowest slot; best fit: the slot left with the least, normalised);
//! 2. otherwise, the slot where suspending the fewest strictly-lower-priority
//!    running tasks (lowest priority, newest first) makes it fit; those are
//!    preempted (they release their resources and queue again);
//! 3. otherwise it waits.
//!
//! Invariants (property-tested): no slot is ever over-committed; no queued
//! task could be placed or could preempt its way in; every queued task ends
//! in exactly one `TaskFinished`.

use stele_journal::event::detached_event;
use stele_journal::{EventBody, Seq, StreamId, TaskOutcome, TaskPriority};
use stele_projections::scheduler::{TaskState, TaskView};
use stele_projections::{Projection, SchedulerView};

/// How a slot is chosen among those where a task fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// The lowest-numbered slot: fastest.
    FirstFit,
    /// The slot left with the least free (memory and CPU, normalised): densest.
    BestFit,
}

/// One worker slot's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct SlotCapacity {
    /// Memory.
    pub memory_mb: u64,
    /// CPU, thousandths of a core.
    pub cpu_millis: u64,
}

/// The host as the scheduler sees it (from configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCapacity {
    /// Worker slots, by index.
    pub slots: Vec<SlotCapacity>,
    /// Placement strategy.
    pub placement: Placement,
}

/// What the scheduler is asked to do.
#[derive(Clone, Debug)]
pub enum SchedulerCommand {
    /// Queue a run of an agent.
    Enqueue {
        /// The agent.
        agent: String,
        /// Its priority.
        priority: TaskPriority,
        /// Memory to reserve.
        memory_mb: u64,
        /// CPU to reserve, thousandths of a core.
        cpu_millis: u32,
        /// Why (`registered`, `timer`, `event <seq>`, …).
        trigger: String,
    },
    /// A task ended (a runner's report) or is cancelled.
    Finish {
        /// The task.
        task: String,
        /// How.
        outcome: TaskOutcome,
        /// Detail.
        detail: String,
    },
}

/// Why a command was refused; nothing is appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerRejection {
    /// The host has no slots.
    #[error("the host has no worker slots configured")]
    NoSlots,
    /// Larger than every slot: it could never run.
    #[error("a task of {agent} needs {memory_mb} MB and {cpu_millis} mcpu, more than any slot has")]
    TooLarge {
        /// The agent.
        agent: String,
        /// Asked memory.
        memory_mb: u64,
        /// Asked CPU.
        cpu_millis: u32,
    },
    /// No such task.
    #[error("no task {task}")]
    UnknownTask {
        /// The id.
        task: String,
    },
    /// It already ended.
    #[error("task {task} has already finished")]
    AlreadyFinished {
        /// The id.
        task: String,
    },
    /// Only a running task can complete, fail or time out.
    #[error("task {task} is not running; only cancelling is possible")]
    NotRunning {
        /// The id.
        task: String,
    },
}

fn free(view: &SchedulerView, cap: &HostCapacity, slot: usize) -> (u64, u64) {
    let c = cap.slots[slot];
    let used = view.slots.get(&(slot as u32)).cloned().unwrap_or_default();
    (
        c.memory_mb.saturating_sub(used.memory_mb),
        c.cpu_millis.saturating_sub(used.cpu_millis),
    )
}

fn fits_total(cap: &SlotCapacity, memory_mb: u64, cpu_millis: u32) -> bool {
    memory_mb <= cap.memory_mb && u64::from(cpu_millis) <= cap.cpu_millis
}

/// A slot where `t` fits in the free resources now.
#[must_use]
pub fn fit(view: &SchedulerView, cap: &HostCapacity, t: &TaskView) -> Option<u32> {
    let candidates = (0..cap.slots.len()).filter(|&s| {
        let (m, c) = free(view, cap, s);
        t.memory_mb <= m && u64::from(t.cpu_millis) <= c
    });
    let chosen = match cap.placement {
        Placement::FirstFit => candidates.min(),
        Placement::BestFit => candidates.min_by(|&a, &b| {
            let left = |s: usize| {
                let (m, c) = free(view, cap, s);
                let total = cap.slots[s];
                (m - t.memory_mb) as f64 / total.memory_mb.max(1) as f64
                    + (c - u64::from(t.cpu_millis)) as f64 / total.cpu_millis.max(1) as f64
            };
            left(a).total_cmp(&left(b)).then(a.cmp(&b))
        }),
    };
    chosen.map(|s| s as u32)
}

/// The slot and the running tasks to suspend (fewest, lowest priority and
/// newest first) so that `t` fits; only strictly lower priorities yield.
#[must_use]
pub fn preemption_plan(view: &SchedulerView, cap: &HostCapacity, t: &TaskView) -> Option<(u32, Vec<String>)> {
    let mut best: Option<(u32, Vec<String>)> = None;
    for slot in 0..cap.slots.len() {
        if !fits_total(&cap.slots[slot], t.memory_mb, t.cpu_millis) {
            continue;
        }
        let (mut m, mut c) = free(view, cap, slot);
        let mut victims: Vec<(&String, &TaskView)> = view
            .slots
            .get(&(slot as u32))
            .map(|s| {
                s.tasks
                    .iter()
                    .filter_map(|id| view.tasks.get(id).map(|v| (id, v)))
                    .filter(|(_, v)| v.priority > t.priority)
                    .collect()
            })
            .unwrap_or_default();
        victims.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then(b.1.number.cmp(&a.1.number)));
        let mut chosen = Vec::new();
        for (id, v) in victims {
            if t.memory_mb <= m && u64::from(t.cpu_millis) <= c {
                break;
            }
            m += v.memory_mb;
            c += u64::from(v.cpu_millis);
            chosen.push(id.clone());
        }
        if t.memory_mb <= m && u64::from(t.cpu_millis) <= c && !chosen.is_empty() {
            let better = best.as_ref().is_none_or(|(_, b)| chosen.len() < b.len());
            if better {
                best = Some((slot as u32, chosen));
            }
        }
    }
    best
}

struct Decision<'a> {
    sim: SchedulerView,
    facts: Vec<EventBody>,
    stream: &'a StreamId,
}

impl Decision<'_> {
    fn emit(&mut self, body: EventBody) {
        // Fold the fact into the working copy through the projection itself,
        // so the decider and the view can never disagree.
        let e = detached_event(Seq(1), 0, self.stream, None, &body).expect("scheduler facts are small");
        self.sim.apply(&e);
        self.facts.push(body);
    }
}

/// The stream scheduler facts go to.
///
/// # Panics
/// Never: the id is a constant valid stream id.
#[must_use]
pub fn scheduler_stream() -> StreamId {
    StreamId::new("scheduler").expect("valid stream id")
}

/// Decides one command, then places what it can.
///
/// # Errors
/// A [`SchedulerRejection`]; nothing is appended.
pub fn decide(
    view: &SchedulerView,
    cap: &HostCapacity,
    command: SchedulerCommand,
) -> Result<Vec<EventBody>, SchedulerRejection> {
    if cap.slots.is_empty() {
        return Err(SchedulerRejection::NoSlots);
    }
    let stream = scheduler_stream();
    let mut d = Decision {
        sim: view.clone(),
        facts: Vec::new(),
        stream: &stream,
    };
    match command {
        SchedulerCommand::Enqueue {
            agent,
            priority,
            memory_mb,
            cpu_millis,
            trigger,
        } => {
            if !cap.slots.iter().any(|s| fits_total(s, memory_mb, cpu_millis)) {
                return Err(SchedulerRejection::TooLarge {
                    agent,
                    memory_mb,
                    cpu_millis,
                });
            }
            let task = format!("task-{}", view.next_task);
            d.emit(EventBody::TaskQueued {
                task,
                agent,
                priority,
                memory_mb,
                cpu_millis,
                trigger,
            });
        }
        SchedulerCommand::Finish {
            task,
            outcome,
            detail,
        } => {
            let t = view
                .tasks
                .get(&task)
                .ok_or_else(|| SchedulerRejection::UnknownTask { task: task.clone() })?;
            match (t.state, outcome) {
                (TaskState::Finished { .. }, _) => return Err(SchedulerRejection::AlreadyFinished { task }),
                (TaskState::Queued, o) if o != TaskOutcome::Cancelled => {
                    return Err(SchedulerRejection::NotRunning { task });
                }
                _ => {}
            }
            d.emit(EventBody::TaskFinished {
                task,
                outcome,
                detail,
            });
        }
    }
    place(&mut d, cap);
    Ok(d.facts)
}

fn place(d: &mut Decision<'_>, cap: &HostCapacity) {
    // Each pass places or preempts in priority order; preempted tasks queue
    // again with a lower priority than their preemptor, so passes end.
    let bound = d.sim.tasks.len() * 2 + 2;
    for _ in 0..bound {
        let mut changed = false;
        // Tasks that could not be placed in this pass. A later task of equal
        // or lower priority that needs at least as much cannot be placed
        // either, as long as nothing changed; if something did, another
        // pass follows, and the last pass changes nothing, so skipping is
        // exact where it matters.
        let mut failed: Vec<(TaskPriority, u64, u32)> = Vec::new();
        let queue: Vec<String> = d.sim.queue.iter().map(|(_, _, id)| id.clone()).collect();
        for id in queue {
            let Some(t) = d.sim.tasks.get(&id).cloned() else {
                continue;
            };
            if t.state != TaskState::Queued {
                continue;
            }
            if failed
                .iter()
                .any(|&(p, m, c)| p <= t.priority && m <= t.memory_mb && c <= t.cpu_millis)
            {
                continue;
            }
            if let Some(slot) = fit(&d.sim, cap, &t) {
                d.emit(EventBody::TaskPlaced { task: id, slot });
                changed = true;
            } else if let Some((slot, victims)) = preemption_plan(&d.sim, cap, &t) {
                for v in victims {
                    d.emit(EventBody::TaskPreempted {
                        task: v,
                        by: id.clone(),
                    });
                }
                d.emit(EventBody::TaskPlaced { task: id, slot });
                changed = true;
            } else {
                // Keep only the minimal failures: a dominated one adds nothing.
                failed.retain(|&(p, m, c)| !(t.priority <= p && t.memory_mb <= m && t.cpu_millis <= c));
                failed.push((t.priority, t.memory_mb, t.cpu_millis));
            }
        }
        if !changed {
            return;
        }
    }
}
