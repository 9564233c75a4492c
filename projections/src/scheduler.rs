//! The scheduler's view: every task, the queue in priority order, what each
//! worker slot has reserved, and per-agent run history — folded from
//! `TaskQueued`, `TaskPlaced`, `TaskPreempted` and `TaskFinished`. The
//! scheduler decider in `engine` decides over it.
//!
//! `tasks` and `history` are the state; the queue and the slots are indexes
//! derived from `tasks`, kept in the shape the decider reads them in:
//!
//! - the queue, one FIFO (by task number) per priority, each entry carrying
//!   the task's demand, so a scan for the first task that fits reads no map;
//! - per slot, the running tasks ordered by (priority, number) — a
//!   preemption plan walks them from the back (lowest priority, newest
//!   first) — and the reservations summed per priority, so "could any
//!   lower-priority work make room?" is a handful of additions.
//!
//! Finished tasks stay in `tasks` (with their outcome) only while they are
//! among the last [`FINISHED_KEPT`] to finish, by task number; older ones
//! are dropped and live on in their agent's `history` counts, so the view
//! (and its snapshot) stays bounded however long the journal grows. The
//! rule depends only on the facts, so a view rebuilt from a snapshot plus
//! the tail equals one folded from scratch.
//!
//! Snapshots store the indexes for readers but are loaded from `tasks`,
//! `next_task` and `history` alone (the indexes are rebuilt), and two views
//! are equal when those are. Cloning the view is O(1): `tasks` and
//! `history` are persistent maps (`imbl`), and the indexes are contiguous
//! vectors behind `Arc`s, copied on the first write after a clone — one
//! priority's queue (entries hold `Arc<str>` ids: no allocation per task) or
//! one slot's running list. The decider itself never writes the view.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use imbl::OrdMap;

use stele_journal::{ArchivedEventBody, EventBody, EventRef, TaskOutcome, TaskPriority};

use crate::Projection;

/// How many finished tasks the view keeps (the highest-numbered ones).
pub const FINISHED_KEPT: usize = 1024;

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

/// Priorities, highest first; `rank(p)` indexes arrays of this length.
pub const PRIORITIES: [TaskPriority; 4] = [
    TaskPriority::Critical,
    TaskPriority::High,
    TaskPriority::Normal,
    TaskPriority::Low,
];

/// The position of `p` in [`PRIORITIES`]: 0 for critical, 3 for low.
#[must_use]
pub fn rank(p: TaskPriority) -> usize {
    match p {
        TaskPriority::Critical => 0,
        TaskPriority::High => 1,
        TaskPriority::Normal => 2,
        TaskPriority::Low => 3,
    }
}

/// Memory and CPU reserved together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reserved {
    /// Memory.
    pub memory_mb: u64,
    /// CPU, thousandths of a core.
    pub cpu_millis: u64,
}

impl Reserved {
    fn add(&mut self, memory_mb: u64, cpu_millis: u32) {
        self.memory_mb += memory_mb;
        self.cpu_millis += u64::from(cpu_millis);
    }

    fn sub(&mut self, memory_mb: u64, cpu_millis: u32) {
        self.memory_mb = self.memory_mb.saturating_sub(memory_mb);
        self.cpu_millis = self.cpu_millis.saturating_sub(u64::from(cpu_millis));
    }
}

/// A queued task as the decider scans it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedTask {
    /// FIFO position within its priority.
    pub number: u64,
    /// The task id.
    pub task: Arc<str>,
    /// Memory it needs.
    pub memory_mb: u64,
    /// CPU it needs.
    pub cpu_millis: u32,
}

/// A running task as a preemption plan walks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTask {
    /// Its priority.
    pub priority: TaskPriority,
    /// Its number (age).
    pub number: u64,
    /// The task id.
    pub task: String,
    /// Memory it holds.
    pub memory_mb: u64,
    /// CPU it holds.
    pub cpu_millis: u32,
}

/// The tasks running on a slot, ordered by (priority, number): the last one
/// is the first to yield (lowest priority, newest). Serialized as their ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunningTasks(Vec<RunningTask>);

impl RunningTasks {
    /// The ids, in (priority, number) order.
    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|t| &t.task)
    }

    /// The tasks, in (priority, number) order.
    #[must_use]
    pub fn as_slice(&self) -> &[RunningTask] {
        &self.0
    }

    /// How many.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// None.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, priority: TaskPriority, number: u64) -> Result<usize, usize> {
        self.0
            .binary_search_by(|r| (rank(r.priority), r.number).cmp(&(rank(priority), number)))
    }
}

impl serde::Serialize for RunningTasks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// What a slot has reserved.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SlotUsage {
    /// Reserved memory.
    pub memory_mb: u64,
    /// Reserved CPU.
    pub cpu_millis: u64,
    /// Tasks running there.
    pub tasks: RunningTasks,
    /// Reservations by priority rank.
    #[serde(skip)]
    by_rank: [Reserved; 4],
}

impl SlotUsage {
    /// Running tasks ordered by (priority, number): the last one is the
    /// first to yield (lowest priority, newest).
    #[must_use]
    pub fn running(&self) -> &[RunningTask] {
        self.tasks.as_slice()
    }

    /// Reserved by tasks of priority `p`.
    #[must_use]
    pub fn reserved_by(&self, p: TaskPriority) -> Reserved {
        self.by_rank[rank(p)]
    }

    /// Reserved by tasks of strictly lower priority than `p`: what a task
    /// of priority `p` could take by preemption.
    #[must_use]
    pub fn reserved_below(&self, p: TaskPriority) -> Reserved {
        let mut r = Reserved::default();
        for b in &self.by_rank[rank(p) + 1..] {
            r.memory_mb += b.memory_mb;
            r.cpu_millis += b.cpu_millis;
        }
        r
    }

    fn add(&mut self, t: RunningTask) {
        self.memory_mb += t.memory_mb;
        self.cpu_millis += u64::from(t.cpu_millis);
        self.by_rank[rank(t.priority)].add(t.memory_mb, t.cpu_millis);
        match self.tasks.position(t.priority, t.number) {
            Ok(i) => self.tasks.0[i] = t,
            Err(i) => self.tasks.0.insert(i, t),
        }
    }

    fn remove(&mut self, priority: TaskPriority, number: u64) -> Option<String> {
        let i = self.tasks.position(priority, number).ok()?;
        let t = self.tasks.0.remove(i);
        self.memory_mb = self.memory_mb.saturating_sub(t.memory_mb);
        self.cpu_millis = self.cpu_millis.saturating_sub(u64::from(t.cpu_millis));
        self.by_rank[rank(priority)].sub(t.memory_mb, t.cpu_millis);
        Some(t.task)
    }
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
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "Stored")]
pub struct SchedulerView {
    /// Tasks by id.
    pub tasks: OrdMap<String, TaskView>,
    /// The next task number.
    pub next_task: u64,
    /// Per-agent history.
    pub history: OrdMap<String, RunHistory>,
    /// Queued tasks by priority rank, each FIFO by number.
    #[serde(serialize_with = "serialize_queue")]
    queue: Queue,
    /// Reservations by slot (every slot ever used; read-only: shared
    /// until written, like the queue).
    #[serde(serialize_with = "serialize_slots")]
    pub slots: OrdMap<u32, Arc<SlotUsage>>,
    /// The finished tasks kept, by number (an index of `tasks`).
    #[serde(skip)]
    finished: OrdMap<u64, String>,
}

/// What a snapshot is loaded from; the indexes are rebuilt.
#[derive(serde::Deserialize)]
struct Stored {
    tasks: OrdMap<String, TaskView>,
    next_task: u64,
    history: OrdMap<String, RunHistory>,
}

impl From<Stored> for SchedulerView {
    fn from(s: Stored) -> SchedulerView {
        let mut view = SchedulerView {
            tasks: s.tasks,
            next_task: s.next_task,
            history: s.history,
            ..SchedulerView::default()
        };
        let (queue, slots) = view.derive_indexes();
        view.queue = queue;
        view.slots = slots;
        view.finished = view.derive_finished();
        view
    }
}

fn serialize_queue<S: serde::Serializer>(queue: &Queue, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        PRIORITIES
            .iter()
            .zip(queue)
            .flat_map(|(p, q)| q.iter().map(move |t| (p, t.number, &*t.task))),
    )
}

fn serialize_slots<S: serde::Serializer>(
    slots: &OrdMap<u32, Arc<SlotUsage>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(slots.iter().map(|(k, v)| (k, &**v)))
}

/// Two views are equal when their tasks, numbering and history are: the
/// queue and the slots are derived from the tasks.
impl PartialEq for SchedulerView {
    fn eq(&self, other: &SchedulerView) -> bool {
        self.tasks == other.tasks && self.next_task == other.next_task && self.history == other.history
    }
}

impl Eq for SchedulerView {}

/// Per priority rank, shared until written (a clone of the view copies
/// nothing; the first write after one copies that rank's entries, which hold
/// no owned strings).
type Queue = [Arc<VecDeque<QueuedTask>>; 4];

fn queue_position(q: &VecDeque<QueuedTask>, number: u64) -> Result<usize, usize> {
    q.binary_search_by(|t| t.number.cmp(&number))
}

fn enqueue(queue: &mut Queue, priority: TaskPriority, t: QueuedTask) {
    let q = Arc::make_mut(&mut queue[rank(priority)]);
    // Numbers only grow: new tasks go to the back without a search.
    if q.back().is_none_or(|b| b.number < t.number) {
        q.push_back(t);
        return;
    }
    match queue_position(q, t.number) {
        Ok(i) => q[i] = t,
        Err(i) => q.insert(i, t),
    }
}

/// Updates `agent`'s history: one lookup and no allocation for a known agent.
fn record(history: &mut OrdMap<String, RunHistory>, agent: &str, f: impl FnOnce(&mut RunHistory)) {
    if let Some(h) = history.get_mut(agent) {
        f(h);
        return;
    }
    let mut h = RunHistory::default();
    f(&mut h);
    history.insert(agent.to_owned(), h);
}

fn dequeue(queue: &mut Queue, priority: TaskPriority, number: u64) -> Option<Arc<str>> {
    let i = queue_position(&queue[rank(priority)], number).ok()?;
    let q = Arc::make_mut(&mut queue[rank(priority)]);
    // Placement mostly takes the oldest task.
    if i == 0 {
        return q.pop_front().map(|t| t.task);
    }
    q.remove(i).map(|t| t.task)
}

/// Where a task was before a fact moved it, with its id as that index held
/// it (moving it on needs no new allocation in the common cases).
enum Detached {
    Queued(Arc<str>),
    Running(String),
    Nowhere,
}

/// Takes `t` out of the queue or off its slot.
fn detach(queue: &mut Queue, slots: &mut OrdMap<u32, Arc<SlotUsage>>, t: &TaskView) -> Detached {
    match t.state {
        TaskState::Queued => dequeue(queue, t.priority, t.number).map_or(Detached::Nowhere, Detached::Queued),
        TaskState::Running { slot } => slots
            .get_mut(&slot)
            .and_then(|s| Arc::make_mut(s).remove(t.priority, t.number))
            .map_or(Detached::Nowhere, Detached::Running),
        TaskState::Finished { .. } => Detached::Nowhere,
    }
}

impl SchedulerView {
    /// Queued tasks of priority `p`, oldest first.
    #[must_use]
    pub fn queued(&self, p: TaskPriority) -> &VecDeque<QueuedTask> {
        &self.queue[rank(p)]
    }

    /// Every queued task in the order they are considered: (priority, number).
    pub fn queue(&self) -> impl Iterator<Item = (TaskPriority, &QueuedTask)> {
        PRIORITIES
            .iter()
            .zip(&self.queue)
            .flat_map(|(p, q)| q.iter().map(move |t| (*p, t)))
    }

    /// How many tasks are queued.
    #[must_use]
    pub fn queue_len(&self) -> usize {
        self.queue.iter().map(|q| q.len()).sum()
    }

    /// What slot `slot` has reserved (none: never used).
    #[must_use]
    pub fn slot(&self, slot: u32) -> Option<&SlotUsage> {
        self.slots.get(&slot).map(|u| &**u)
    }

    /// Folds one fact given as a native body: the same transitions as
    /// [`Projection::apply`] (the scheduler view does not read the seq or the
    /// time), for a process that folds the facts it decided without reading
    /// them back from the journal.
    pub fn apply_body(&mut self, body: &EventBody) {
        match body {
            EventBody::TaskQueued {
                task,
                agent,
                priority,
                memory_mb,
                cpu_millis,
                ..
            } => self.queued_fact(task, agent, *priority, *memory_mb, *cpu_millis),
            EventBody::TaskPlaced { task, slot } => self.placed_fact(task, *slot),
            EventBody::TaskPreempted { task, .. } => self.preempted_fact(task),
            EventBody::TaskFinished { task, outcome, .. } => self.finished_fact(task, *outcome),
            _ => {}
        }
    }

    /// The queue and slots as derived from `tasks` alone. Slots that no
    /// task holds are left out.
    fn derive_indexes(&self) -> (Queue, OrdMap<u32, Arc<SlotUsage>>) {
        let mut queue: [VecDeque<QueuedTask>; 4] = Default::default();
        let mut slots: BTreeMap<u32, SlotUsage> = BTreeMap::new();
        for (id, t) in &self.tasks {
            match t.state {
                TaskState::Queued => queue[rank(t.priority)].push_back(QueuedTask {
                    number: t.number,
                    task: Arc::from(id.as_str()),
                    memory_mb: t.memory_mb,
                    cpu_millis: t.cpu_millis,
                }),
                TaskState::Running { slot } => slots.entry(slot).or_default().add(RunningTask {
                    priority: t.priority,
                    number: t.number,
                    task: id.clone(),
                    memory_mb: t.memory_mb,
                    cpu_millis: t.cpu_millis,
                }),
                TaskState::Finished { .. } => {}
            }
        }
        for q in &mut queue {
            q.make_contiguous().sort_by_key(|t| t.number);
        }
        (
            queue.map(Arc::new),
            slots.into_iter().map(|(s, u)| (s, Arc::new(u))).collect(),
        )
    }

    /// The finished tasks by number, from `tasks` alone.
    fn derive_finished(&self) -> OrdMap<u64, String> {
        self.tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, TaskState::Finished { .. }))
            .map(|(id, t)| (t.number, id.clone()))
            .collect()
    }

    /// Checks the queue, slot and finished indexes against `tasks` (for
    /// tests).
    ///
    /// # Errors
    /// What differs.
    pub fn check_indexes(&self) -> Result<(), String> {
        let (queue, slots) = self.derive_indexes();
        if queue != self.queue {
            return Err(format!(
                "queue {:?} differs from the tasks' {queue:?}",
                self.queue
            ));
        }
        let used: BTreeMap<u32, &SlotUsage> = self
            .slots
            .iter()
            .filter(|(_, u)| !u.tasks.is_empty() || u.memory_mb != 0 || u.cpu_millis != 0)
            .map(|(s, u)| (*s, &**u))
            .collect();
        let derived: BTreeMap<u32, &SlotUsage> = slots.iter().map(|(s, u)| (*s, &**u)).collect();
        if used != derived {
            return Err(format!("slots {used:?} differ from the tasks' {derived:?}"));
        }
        let finished = self.derive_finished();
        if finished != self.finished {
            return Err(format!(
                "finished {:?} differs from the tasks' {finished:?}",
                self.finished
            ));
        }
        if finished.len() > FINISHED_KEPT {
            return Err(format!(
                "{} finished tasks kept, more than {FINISHED_KEPT}",
                finished.len()
            ));
        }
        Ok(())
    }

    fn queued_fact(
        &mut self,
        task: &str,
        agent: &str,
        priority: TaskPriority,
        memory_mb: u64,
        cpu_millis: u32,
    ) {
        // A repeated id replaces the task (the decider never emits one).
        if let Some(old) = self.tasks.get(task) {
            detach(&mut self.queue, &mut self.slots, old);
            self.finished.remove(&old.number);
        }
        let number = self.next_task;
        self.next_task += 1;
        record(&mut self.history, agent, |h| h.queued += 1);
        enqueue(
            &mut self.queue,
            priority,
            QueuedTask {
                number,
                task: Arc::from(task),
                memory_mb,
                cpu_millis,
            },
        );
        self.tasks.insert(
            task.to_owned(),
            TaskView {
                number,
                agent: agent.to_owned(),
                priority,
                memory_mb,
                cpu_millis,
                state: TaskState::Queued,
                preemptions: 0,
            },
        );
    }

    fn placed_fact(&mut self, task: &str, slot: u32) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        let id = match detach(&mut self.queue, &mut self.slots, t) {
            Detached::Queued(id) => String::from(&*id),
            Detached::Running(id) => id,
            Detached::Nowhere => task.to_owned(),
        };
        t.state = TaskState::Running { slot };
        Arc::make_mut(self.slots.entry(slot).or_default()).add(RunningTask {
            priority: t.priority,
            number: t.number,
            task: id,
            memory_mb: t.memory_mb,
            cpu_millis: t.cpu_millis,
        });
    }

    fn preempted_fact(&mut self, task: &str) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        let id: Arc<str> = match detach(&mut self.queue, &mut self.slots, t) {
            Detached::Queued(id) => id,
            Detached::Running(id) => Arc::from(id),
            Detached::Nowhere => Arc::from(task),
        };
        t.state = TaskState::Queued;
        t.preemptions += 1;
        let entry = QueuedTask {
            number: t.number,
            task: id,
            memory_mb: t.memory_mb,
            cpu_millis: t.cpu_millis,
        };
        enqueue(&mut self.queue, t.priority, entry);
        record(&mut self.history, &t.agent, |h| h.preempted += 1);
    }

    fn finished_fact(&mut self, task: &str, outcome: TaskOutcome) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        detach(&mut self.queue, &mut self.slots, t);
        t.state = TaskState::Finished { outcome };
        record(&mut self.history, &t.agent, |h| match outcome {
            TaskOutcome::Completed => h.completed += 1,
            TaskOutcome::Failed => h.failed += 1,
            TaskOutcome::TimedOut => h.timed_out += 1,
            TaskOutcome::Cancelled => h.cancelled += 1,
        });
        self.finished.insert(t.number, task.to_owned());
        while self.finished.len() > FINISHED_KEPT {
            let Some(&(number, ref oldest)) = self.finished.get_min() else {
                break;
            };
            let oldest = oldest.clone();
            self.finished.remove(&number);
            self.tasks.remove(&oldest);
        }
    }

    /// Whether `task` was queued once, though it may have been dropped
    /// from the view since it finished (see [`FINISHED_KEPT`]).
    #[must_use]
    pub fn ever_queued(&self, task: &str) -> bool {
        self.tasks.contains_key(task)
            || task
                .strip_prefix("task-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < self.next_task)
    }
}

impl Projection for SchedulerView {
    const NAME: &'static str = "scheduler";
    // 2: finished tasks beyond FINISHED_KEPT are dropped.
    const VERSION: u32 = 2;

    fn apply(&mut self, e: &EventRef) {
        match e.body() {
            ArchivedEventBody::TaskQueued {
                task,
                agent,
                priority,
                memory_mb,
                cpu_millis,
                ..
            } => self.queued_fact(
                task.as_str(),
                agent.as_str(),
                priority.to_native(),
                memory_mb.to_native(),
                cpu_millis.to_native(),
            ),
            ArchivedEventBody::TaskPlaced { task, slot } => self.placed_fact(task.as_str(), slot.to_native()),
            ArchivedEventBody::TaskPreempted { task, .. } => self.preempted_fact(task.as_str()),
            ArchivedEventBody::TaskFinished { task, outcome, .. } => {
                self.finished_fact(task.as_str(), outcome.to_native());
            }
            _ => {}
        }
    }
}
