//! The scheduler decider: a priority queue over worker slots with
//! resource-aware placement (first-fit or best-fit) and priority preemption.
//!
//! `decide(&SchedulerView, &HostCapacity, command)` returns the facts —
//! `TaskQueued`, `TaskPlaced`, `TaskPreempted`, `TaskFinished` — and never
//! reads the clock: timer ticks and event triggers reach it as commands
//! derived from journaled events, so replay needs no clock. After every
//! command it places what it can: repeatedly the first queued task in
//! (priority, FIFO) order that can get in, until none can —
//!
//! 1. on a slot where it fits in the free resources (first fit: the lowest
//!    slot; best fit: the slot left with the least, normalised);
//! 2. otherwise on the slot where suspending the fewest strictly-lower-
//!    priority running tasks (lowest priority, newest first) makes it fit;
//!    those are preempted (they release their resources and queue again);
//! 3. otherwise it waits.
//!
//! How it stays fast (see BENCHMARKS.md): a task of priority p can get in
//! on slot s iff its demand is within its *reach* there, `min(capacity,
//! free + what strictly lower priorities hold)`, which the view keeps summed
//! per priority — a handful of additions, no walk; a preemption plan is only
//! built for a task known to get in. One pass over the queue, level by
//! level, finds every placement in order, because placing a task T of
//! priority p on slot s leaves every higher priority's reach as it was and
//! lowers p's by T: placed by fit, `free` drops by T, which for a higher
//! priority q now counts among what lower priorities hold; placed by
//! preemption, the victims (all below p) move from "held below" to `free`
//! for p and for every q above it. So a task the scan passed cannot get in
//! later in the same decision, and a finished level stays finished;
//! preempted tasks queue again below p and are met when their level comes.
//! (Hence also: a task placed in a decision is never preempted later in it.)
//! The decider never writes the view: it tracks what its own facts change in
//! a small overlay (per-slot reservations, tasks that left or joined the
//! queue), so a decision costs a scan of the queue's demands plus the facts.
//!
//! Invariants (property-tested, and checked against a naive reference that
//! folds every fact and restarts from the top): no slot is ever
//! over-committed; no queued task could be placed or could preempt its way
//! in; every queued task ends in exactly one `TaskFinished`.

use stele_journal::{EventBody, StreamId, TaskOutcome, TaskPriority};
use stele_projections::SchedulerView;
use stele_projections::scheduler::{PRIORITIES, TaskState, TaskView, rank};

/// How a slot is chosen among those where a task fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// The lowest-numbered slot: fastest.
    FirstFit,
    /// The slot left with the least free (memory and CPU, normalised): densest.
    BestFit,
    /// The slot left with the most free (memory and CPU, normalised): load
    /// spread across the slots, so tasks share the host's cores and memory
    /// bandwidth evenly (worst fit).
    Spread,
}

impl Placement {
    /// Its name in configuration and in `RuntimeStarted`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Placement::FirstFit => "first-fit",
            Placement::BestFit => "best-fit",
            Placement::Spread => "spread",
        }
    }

    /// The strategy named `name` (as [`name`](Self::name) writes it).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Placement> {
        [Placement::FirstFit, Placement::BestFit, Placement::Spread]
            .into_iter()
            .find(|p| p.name() == name)
    }
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

/// Memory and CPU, as free room or as a demand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Room {
    memory_mb: u64,
    cpu_millis: u64,
}

impl Room {
    fn of(memory_mb: u64, cpu_millis: u32) -> Room {
        Room {
            memory_mb,
            cpu_millis: u64::from(cpu_millis),
        }
    }

    fn holds(self, demand: Room) -> bool {
        demand.memory_mb <= self.memory_mb && demand.cpu_millis <= self.cpu_millis
    }

    fn plus(self, o: Room) -> Room {
        Room {
            memory_mb: self.memory_mb + o.memory_mb,
            cpu_millis: self.cpu_millis + o.cpu_millis,
        }
    }

    fn minus(self, o: Room) -> Room {
        Room {
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
        }
    }

    fn min(self, o: Room) -> Room {
        Room {
            memory_mb: self.memory_mb.min(o.memory_mb),
            cpu_millis: self.cpu_millis.min(o.cpu_millis),
        }
    }

    fn max(self, o: Room) -> Room {
        Room {
            memory_mb: self.memory_mb.max(o.memory_mb),
            cpu_millis: self.cpu_millis.max(o.cpu_millis),
        }
    }
}

fn total(c: &SlotCapacity) -> Room {
    Room {
        memory_mb: c.memory_mb,
        cpu_millis: c.cpu_millis,
    }
}

fn fits_total(cap: &SlotCapacity, memory_mb: u64, cpu_millis: u32) -> bool {
    total(cap).holds(Room::of(memory_mb, cpu_millis))
}

/// What is left of slot `cap` with `free` room after taking `demand`,
/// normalised: best fit picks the least, spread the most.
fn leftover(cap: &SlotCapacity, free: Room, demand: Room) -> f64 {
    (free.memory_mb - demand.memory_mb) as f64 / cap.memory_mb.max(1) as f64
        + (free.cpu_millis - demand.cpu_millis) as f64 / cap.cpu_millis.max(1) as f64
}

/// Among the slots with `free` room, the one where `demand` fits by the
/// placement strategy.
fn choose_fit(cap: &HostCapacity, free: impl Fn(usize) -> Room, demand: Room) -> Option<u32> {
    let candidates = (0..cap.slots.len()).filter(|&s| free(s).holds(demand));
    let chosen = match cap.placement {
        Placement::FirstFit => candidates.min(),
        Placement::BestFit => candidates.min_by(|&a, &b| {
            let left = |s: usize| leftover(&cap.slots[s], free(s), demand);
            left(a).total_cmp(&left(b)).then(a.cmp(&b))
        }),
        Placement::Spread => candidates.min_by(|&a, &b| {
            let left = |s: usize| leftover(&cap.slots[s], free(s), demand);
            left(b).total_cmp(&left(a)).then(a.cmp(&b))
        }),
    };
    chosen.map(|s| s as u32)
}

fn view_free(view: &SchedulerView, cap: &HostCapacity, slot: usize) -> Room {
    let used = view.slot(slot as u32).map_or(Room::default(), |u| Room {
        memory_mb: u.memory_mb,
        cpu_millis: u.cpu_millis,
    });
    total(&cap.slots[slot]).minus(used)
}

/// A slot where `t` fits in the free resources now.
#[must_use]
pub fn fit(view: &SchedulerView, cap: &HostCapacity, t: &TaskView) -> Option<u32> {
    choose_fit(
        cap,
        |s| view_free(view, cap, s),
        Room::of(t.memory_mb, t.cpu_millis),
    )
}

/// The slot and the running tasks to suspend (fewest, lowest priority and
/// newest first) so that `t` fits; only strictly lower priorities yield.
#[must_use]
pub fn preemption_plan(view: &SchedulerView, cap: &HostCapacity, t: &TaskView) -> Option<(u32, Vec<String>)> {
    let demand = Room::of(t.memory_mb, t.cpu_millis);
    let mut best: Option<(u32, Vec<String>)> = None;
    for slot in 0..cap.slots.len() {
        if !fits_total(&cap.slots[slot], t.memory_mb, t.cpu_millis) {
            continue;
        }
        let mut room = view_free(view, cap, slot);
        let mut chosen = Vec::new();
        let running = view.slot(slot as u32).map_or(&[][..], |u| u.running());
        for v in running.iter().rev().take_while(|v| v.priority > t.priority) {
            if room.holds(demand) {
                break;
            }
            room = room.plus(Room::of(v.memory_mb, v.cpu_millis));
            chosen.push(v.task.to_string());
        }
        if room.holds(demand) && !chosen.is_empty() {
            let better = best.as_ref().is_none_or(|(_, b)| chosen.len() < b.len());
            if better {
                best = Some((slot as u32, chosen));
            }
        }
    }
    best
}

/// The stream scheduler facts go to.
///
/// # Panics
/// Never: the id is a constant valid stream id.
#[must_use]
pub fn scheduler_stream() -> StreamId {
    StreamId::new("scheduler").expect("valid stream id")
}

/// A task that joined the queue during this decision (the enqueued one, or
/// a preempted one).
#[derive(Debug)]
struct Joined {
    number: u64,
    task: String,
    demand: Room,
}

/// A running task of the view chosen to yield.
#[derive(Debug)]
struct Victim<'a> {
    number: u64,
    rank: usize,
    demand: Room,
    task: &'a str,
}

/// A slot as this decision has changed it.
#[derive(Debug)]
struct SlotSim {
    /// Reserved on the slot (as the view says, then as our facts change it).
    used: Room,
    /// Reserved by priority rank.
    by_rank: [Room; 4],
    /// Numbers of the view's running tasks that left it in this decision.
    left: Vec<u64>,
}

/// The decision in progress: the view as read, and an overlay of what the
/// facts so far change. Tasks placed in this decision are never preempted
/// later in it (every later placement has an equal or lower priority), so
/// the overlay only tracks tasks leaving the view's running lists.
struct Decision<'a> {
    view: &'a SchedulerView,
    cap: &'a HostCapacity,
    slots: Vec<SlotSim>,
    /// Numbers of the view's queued tasks that left the queue.
    dequeued: Vec<u64>,
    /// Tasks that joined the queue, by rank, ordered by number.
    joined: [Vec<Joined>; 4],
    facts: Vec<EventBody>,
}

/// Where the next task to place is.
enum Candidate {
    /// In the view's queue at this index.
    Queued(usize),
    /// In `joined` at this index.
    Joined(usize),
}

impl<'a> Decision<'a> {
    fn new(view: &'a SchedulerView, cap: &'a HostCapacity) -> Decision<'a> {
        let slots = (0..cap.slots.len())
            .map(|s| {
                let u = view.slot(s as u32);
                let mut by_rank = [Room::default(); 4];
                if let Some(u) = u {
                    for (r, p) in PRIORITIES.iter().enumerate() {
                        let b = u.reserved_by(*p);
                        by_rank[r] = Room {
                            memory_mb: b.memory_mb,
                            cpu_millis: b.cpu_millis,
                        };
                    }
                }
                SlotSim {
                    used: u.map_or(Room::default(), |u| Room {
                        memory_mb: u.memory_mb,
                        cpu_millis: u.cpu_millis,
                    }),
                    by_rank,
                    left: Vec::new(),
                }
            })
            .collect();
        Decision {
            view,
            cap,
            slots,
            dequeued: Vec::new(),
            joined: Default::default(),
            facts: Vec::new(),
        }
    }

    fn free(&self, s: usize) -> Room {
        total(&self.cap.slots[s]).minus(self.slots[s].used)
    }

    /// Per slot, the most a task of rank `r` could get there by preempting
    /// strictly lower priorities, capped by the slot's capacity.
    fn reach(&self, r: usize) -> Vec<Room> {
        (0..self.slots.len())
            .map(|s| {
                let lower = self.slots[s].by_rank[r + 1..]
                    .iter()
                    .fold(Room::default(), |a, b| a.plus(*b));
                self.free(s).plus(lower).min(total(&self.cap.slots[s]))
            })
            .collect()
    }

    fn reserve(&mut self, s: usize, r: usize, d: Room) {
        let slot = &mut self.slots[s];
        slot.used = slot.used.plus(d);
        slot.by_rank[r] = slot.by_rank[r].plus(d);
    }

    fn release(&mut self, s: usize, r: usize, d: Room) {
        let slot = &mut self.slots[s];
        slot.used = slot.used.minus(d);
        slot.by_rank[r] = slot.by_rank[r].minus(d);
    }

    /// A task that was running in the view stops holding its slot.
    fn leave_slot(&mut self, slot: u32, t: &TaskView) {
        let s = slot as usize;
        if s < self.slots.len() {
            self.release(s, rank(t.priority), Room::of(t.memory_mb, t.cpu_millis));
            self.slots[s].left.push(t.number);
        }
    }

    fn join_queue(&mut self, r: usize, j: Joined) {
        let q = &mut self.joined[r];
        let at = q.partition_point(|o| o.number < j.number);
        q.insert(at, j);
    }

    /// The first task of rank `r` at or after the cursors that can get in
    /// somewhere (fit or preemption).
    fn first_admissible(&self, r: usize, from_queued: usize, from_joined: usize) -> Option<Candidate> {
        let reach = self.reach(r);
        let bound = reach.iter().fold(Room::default(), |a, b| a.max(*b));
        let admissible = |d: Room| bound.holds(d) && reach.iter().any(|v| v.holds(d));
        let view = self.view;
        let queued = view.queued(PRIORITIES[r]);
        let mut hit: Option<(u64, Candidate)> = None;
        for (i, t) in queued.range(from_queued..).enumerate() {
            if admissible(Room::of(t.memory_mb, t.cpu_millis)) && !self.dequeued.contains(&t.number) {
                hit = Some((t.number, Candidate::Queued(from_queued + i)));
                break;
            }
        }
        for (i, j) in self.joined[r].iter().enumerate().skip(from_joined) {
            if hit.as_ref().is_some_and(|(n, _)| *n < j.number) {
                break;
            }
            if admissible(j.demand) {
                return Some(Candidate::Joined(i));
            }
        }
        hit.map(|(_, c)| c)
    }

    /// The slot and the victims for a task of rank `r` needing `demand`,
    /// when it does not fit as things are.
    fn plan(&self, r: usize, demand: Room) -> Option<(usize, Vec<Victim<'a>>)> {
        let mut best: Option<(usize, Vec<Victim<'a>>)> = None;
        for s in 0..self.slots.len() {
            if !total(&self.cap.slots[s]).holds(demand) {
                continue;
            }
            let lower = self.slots[s].by_rank[r + 1..]
                .iter()
                .fold(Room::default(), |a, b| a.plus(*b));
            let mut room = self.free(s);
            if !room.plus(lower).holds(demand) {
                continue;
            }
            let limit = best.as_ref().map_or(usize::MAX, |(_, b)| b.len());
            let view = self.view;
            let running = view.slot(s as u32).map_or(&[][..], |u| u.running());
            let mut chosen = Vec::new();
            for v in running.iter().rev() {
                if room.holds(demand) || chosen.len() >= limit {
                    break;
                }
                let vr = rank(v.priority);
                if vr <= r {
                    break;
                }
                if self.slots[s].left.contains(&v.number) {
                    continue;
                }
                let d = Room::of(v.memory_mb, v.cpu_millis);
                room = room.plus(d);
                chosen.push(Victim {
                    number: v.number,
                    rank: vr,
                    demand: d,
                    task: &v.task,
                });
            }
            if room.holds(demand) && !chosen.is_empty() && chosen.len() < limit {
                best = Some((s, chosen));
            }
        }
        best
    }

    /// Places the task `id` of rank `r` if it can get in; false if not.
    fn place(&mut self, r: usize, id: &str, demand: Room) -> bool {
        if let Some(slot) = choose_fit(self.cap, |s| self.free(s), demand) {
            self.reserve(slot as usize, r, demand);
            self.facts.push(EventBody::TaskPlaced {
                task: id.to_owned(),
                slot,
            });
            return true;
        }
        let Some((s, victims)) = self.plan(r, demand) else {
            return false;
        };
        for v in victims {
            self.release(s, v.rank, v.demand);
            self.slots[s].left.push(v.number);
            self.join_queue(
                v.rank,
                Joined {
                    number: v.number,
                    task: v.task.to_owned(),
                    demand: v.demand,
                },
            );
            self.facts.push(EventBody::TaskPreempted {
                task: v.task.to_owned(),
                by: id.to_owned(),
            });
        }
        self.reserve(s, r, demand);
        self.facts.push(EventBody::TaskPlaced {
            task: id.to_owned(),
            slot: s as u32,
        });
        true
    }

    /// Places what it can, in (priority, FIFO) order.
    fn place_all(&mut self) {
        for (r, priority) in PRIORITIES.iter().enumerate() {
            // Placing a task of rank r lowers what rank r can reach and
            // leaves higher ranks' reach as it was, so the scan of a rank
            // never goes back, and a finished rank stays finished.
            let (mut from_queued, mut from_joined) = (0, 0);
            while let Some(c) = self.first_admissible(r, from_queued, from_joined) {
                let placed = match c {
                    Candidate::Queued(i) => {
                        let view = self.view;
                        let t = &view.queued(*priority)[i];
                        from_queued = i + 1;
                        let placed = self.place(r, &t.task, Room::of(t.memory_mb, t.cpu_millis));
                        if placed {
                            self.dequeued.push(t.number);
                        }
                        placed
                    }
                    Candidate::Joined(i) => {
                        let j = self.joined[r].remove(i);
                        from_joined = i;
                        let placed = self.place(r, &j.task, j.demand);
                        if !placed {
                            self.joined[r].insert(i, j);
                            from_joined = i + 1;
                        }
                        placed
                    }
                };
                debug_assert!(placed, "an admissible task is placed");
            }
        }
    }
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
    let mut d = Decision::new(view, cap);
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
            d.join_queue(
                rank(priority),
                Joined {
                    number: view.next_task,
                    task: task.clone(),
                    demand: Room::of(memory_mb, cpu_millis),
                },
            );
            d.facts.push(EventBody::TaskQueued {
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
            let t = view.tasks.get(&task).ok_or_else(|| {
                if view.ever_queued(&task) {
                    SchedulerRejection::AlreadyFinished { task: task.clone() }
                } else {
                    SchedulerRejection::UnknownTask { task: task.clone() }
                }
            })?;
            match (t.state, outcome) {
                (TaskState::Finished { .. }, _) => return Err(SchedulerRejection::AlreadyFinished { task }),
                (TaskState::Queued, o) if o != TaskOutcome::Cancelled => {
                    return Err(SchedulerRejection::NotRunning { task });
                }
                (TaskState::Queued, _) => d.dequeued.push(t.number),
                (TaskState::Running { slot }, _) => d.leave_slot(slot, t),
            }
            d.facts.push(EventBody::TaskFinished {
                task,
                outcome,
                detail,
            });
        }
    }
    d.place_all();
    Ok(d.facts)
}
