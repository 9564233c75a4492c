//! The scheduler's view: every task, the queue in priority order, what each
//! worker slot has reserved, and per-agent run history — folded from
//! `TaskQueued`, `TaskPlaced`, `TaskPreempted` and `TaskFinished`. The
//! scheduler decider in `engine` decides over it.
//!
//! Its maps are persistent (`imbl`, ordered like `BTreeMap`): cloning the
//! view is O(1), so the decider can fold its own facts into a working copy
//! without copying thousands of tasks per decision.

use imbl::{OrdMap, OrdSet};

use stele_journal::{ArchivedEventBody, EventRef, TaskOutcome, TaskPriority};

use crate::Projection;

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TaskState {
    /// Waiting for room.
    Queued,
    /// Holding resources on a slot.
    Running {
        /// The slot.
        slot: u32,
    },
    /// Ended.
    Finished {
        /// How.
        outcome: TaskOutcome,
    },
}

/// One task.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskView {
    /// Its number (`task-<n>`): FIFO order within a priority.
    pub number: u64,
    /// The agent it runs.
    pub agent: String,
    /// Its priority.
    pub priority: TaskPriority,
    /// Reserved memory.
    pub memory_mb: u64,
    /// Reserved CPU (thousandths of a core).
    pub cpu_millis: u32,
    /// Where it is.
    pub state: TaskState,
    /// Times it was preempted.
    pub preemptions: u32,
}

/// What a slot has reserved.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotUsage {
    /// Reserved memory.
    pub memory_mb: u64,
    /// Reserved CPU.
    pub cpu_millis: u64,
    /// Tasks running there.
    pub tasks: OrdSet<String>,
}

/// An agent's runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunHistory {
    /// Tasks queued.
    pub queued: u64,
    /// Ended, by outcome.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Timed out.
    pub timed_out: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Times preempted.
    pub preempted: u64,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchedulerView {
    /// Tasks by id.
    pub tasks: OrdMap<String, TaskView>,
    /// Queued tasks in the order they are considered: (priority, number).
    pub queue: OrdSet<(TaskPriority, u64, String)>,
    /// Reservations by slot.
    pub slots: OrdMap<u32, SlotUsage>,
    /// The next task number.
    pub next_task: u64,
    /// Per-agent history.
    pub history: OrdMap<String, RunHistory>,
}

impl SchedulerView {
    fn release(&mut self, task: &str) {
        let Some(t) = self.tasks.get(task) else { return };
        if let TaskState::Running { slot } = t.state
            && let Some(s) = self.slots.get_mut(&slot)
        {
            s.memory_mb = s.memory_mb.saturating_sub(t.memory_mb);
            s.cpu_millis = s.cpu_millis.saturating_sub(u64::from(t.cpu_millis));
            s.tasks.remove(task);
        }
    }
}

impl Projection for SchedulerView {
    const NAME: &'static str = "scheduler";
    const VERSION: u32 = 1;

    fn apply(&mut self, e: &EventRef) {
        match e.body() {
            ArchivedEventBody::TaskQueued {
                task,
                agent,
                priority,
                memory_mb,
                cpu_millis,
                ..
            } => {
                let number = self.next_task;
                self.next_task += 1;
                let priority = priority.to_native();
                self.queue.insert((priority, number, task.to_string()));
                self.history.entry(agent.to_string()).or_default().queued += 1;
                self.tasks.insert(
                    task.to_string(),
                    TaskView {
                        number,
                        agent: agent.to_string(),
                        priority,
                        memory_mb: memory_mb.to_native(),
                        cpu_millis: cpu_millis.to_native(),
                        state: TaskState::Queued,
                        preemptions: 0,
                    },
                );
            }
            ArchivedEventBody::TaskPlaced { task, slot } => {
                let slot = slot.to_native();
                let Some(t) = self.tasks.get_mut(task.as_str()) else {
                    return;
                };
                self.queue.remove(&(t.priority, t.number, task.to_string()));
                t.state = TaskState::Running { slot };
                let s = self.slots.entry(slot).or_default();
                s.memory_mb += t.memory_mb;
                s.cpu_millis += u64::from(t.cpu_millis);
                s.tasks.insert(task.to_string());
            }
            ArchivedEventBody::TaskPreempted { task, .. } => {
                self.release(task.as_str());
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    t.state = TaskState::Queued;
                    t.preemptions += 1;
                    self.queue.insert((t.priority, t.number, task.to_string()));
                    self.history.entry(t.agent.clone()).or_default().preempted += 1;
                }
            }
            ArchivedEventBody::TaskFinished { task, outcome, .. } => {
                self.release(task.as_str());
                if let Some(t) = self.tasks.get_mut(task.as_str()) {
                    self.queue.remove(&(t.priority, t.number, task.to_string()));
                    let outcome = outcome.to_native();
                    t.state = TaskState::Finished { outcome };
                    let h = self.history.entry(t.agent.clone()).or_default();
                    match outcome {
                        TaskOutcome::Completed => h.completed += 1,
                        TaskOutcome::Failed => h.failed += 1,
                        TaskOutcome::TimedOut => h.timed_out += 1,
                        TaskOutcome::Cancelled => h.cancelled += 1,
                    }
                }
            }
            _ => {}
        }
    }
}
