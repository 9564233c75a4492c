//! The execution view: what the runtime is doing with real processes —
//! the host it schedules on (from the last `RuntimeStarted`), whether it is
//! admitting work, each agent's active task, timers and failure streak, and
//! each live task's process and latest resource sample. Folded from
//! `RuntimeStarted`, `TimerFired`, `AgentStopRequested`, `Task*`,
//! `Process*`, `ResourcesSampled`, `RunInterrupted` and `ShutdownStep`.
//!
//! Finished tasks leave the view (their history is in the scheduler view
//! and in the journal), so its size follows the live work, not the past.
//! Maps are persistent (`imbl`): the runtime decider clones the view per
//! batch of decisions in O(1).

use imbl::OrdMap;

use stele_journal::{ArchivedEventBody, EventRef, TaskOutcome};

use crate::Projection;

/// The host as the last runtime start recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostView {
    /// Memory of each worker slot, MB.
    pub slot_memory_mb: Vec<u64>,
    /// CPU of each worker slot, thousandths of a core.
    pub slot_cpu_millis: Vec<u64>,
    /// Placement strategy name.
    pub placement: String,
    /// How processes are confined.
    pub confinement: String,
    /// The `RuntimeStarted` event.
    pub started_seq: u64,
    /// Its process id.
    pub pid: u32,
}

/// One agent's execution bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRuns {
    /// The task queued or running for it (at most one at a time).
    pub active_task: Option<String>,
    /// An operator asked it to stop; it terminates when its task ends.
    pub stop_requested: bool,
    /// Interval timer firings.
    pub interval_ticks: u64,
    /// Restart timer firings.
    pub restart_ticks: u64,
    /// Failed or timed-out runs since the last completed one.
    pub consecutive_failures: u32,
    /// Tasks that ended, any outcome.
    pub runs: u64,
    /// How the last process ended (`exit 0`, `signal 9`, …).
    pub last_exit: Option<String>,
}

/// A task that has not ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveTask {
    /// The agent.
    pub agent: String,
    /// Its process, while one runs.
    pub pid: Option<u32>,
    /// The process's start time (clock ticks since boot).
    pub start_ticks: u64,
    /// The `ProcessStarted` event.
    pub started_seq: u64,
    /// Latest resident memory sample, KiB.
    pub rss_kb: u64,
    /// Latest CPU time sample, ms.
    pub cpu_ms: u64,
    /// Samples taken.
    pub samples: u64,
    /// Processes started for it (more than one after preemption).
    pub attempts: u32,
    /// Health probes failed in a row (0: healthy or no probe).
    #[serde(default)]
    pub health_failures: u32,
    /// Times it was placed on a slot.
    #[serde(default)]
    pub placements: u32,
    /// The placement the current process was started for: when it differs
    /// from `placements`, the process belongs to a placement that was
    /// preempted, and its end does not end the task.
    #[serde(default)]
    pub process_placement: u32,
    /// Queued by a request (its trigger starts with [`REQUEST_TRIGGER`]: a
    /// run started over HTTP, or a parked run's continuation): its end
    /// applies no execution-mode rule to its agent.
    #[serde(default)]
    pub requested: bool,
}

/// How the trigger of a task queued by a request begins (`request run …`,
/// `request continue …`).
pub const REQUEST_TRIGGER: &str = "request ";

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecutionView {
    /// The host of the last runtime start.
    pub host: Option<HostView>,
    /// Whether a shutdown has closed admission (until the next start).
    pub admission_closed: bool,
    /// The last shutdown step recorded since the last start (0: none).
    pub shutdown_step: u32,
    /// Agents with any execution history, by name.
    pub agents: OrdMap<String, AgentRuns>,
    /// Tasks that have not ended, by id.
    pub live: OrdMap<String, LiveTask>,
}

impl ExecutionView {
    fn agent_mut(&mut self, agent: &str) -> &mut AgentRuns {
        self.agents.entry(agent.to_owned()).or_default()
    }
}

impl Projection for ExecutionView {
    const NAME: &'static str = "execution";
    const VERSION: u32 = 1;

    fn apply(&mut self, e: &EventRef) {
        let seq = e.seq().0;
        match e.body() {
            ArchivedEventBody::RuntimeStarted { pid, host, .. } => {
                self.host = Some(HostView {
                    slot_memory_mb: host.slot_memory_mb.iter().map(|m| m.to_native()).collect(),
                    slot_cpu_millis: host.slot_cpu_millis.iter().map(|c| c.to_native()).collect(),
                    placement: host.placement.to_string(),
                    confinement: host.confinement.to_string(),
                    started_seq: seq,
                    pid: pid.to_native(),
                });
                self.admission_closed = false;
                self.shutdown_step = 0;
            }
            ArchivedEventBody::ShutdownStep { step, .. } => {
                self.admission_closed = true;
                self.shutdown_step = step.to_native();
            }
            ArchivedEventBody::TimerFired { agent, timer, .. } => {
                let a = self.agent_mut(agent.as_str());
                if timer.as_str() == "restart" {
                    a.restart_ticks += 1;
                } else {
                    a.interval_ticks += 1;
                }
            }
            ArchivedEventBody::AgentStopRequested { agent, .. } => {
                self.agent_mut(agent.as_str()).stop_requested = true;
            }
            ArchivedEventBody::AgentRegistered { agent, .. } => {
                // A fresh registration (after termination) starts clean.
                self.agents.insert(agent.to_string(), AgentRuns::default());
            }
            ArchivedEventBody::TaskQueued {
                task, agent, trigger, ..
            } => {
                self.agent_mut(agent.as_str()).active_task = Some(task.to_string());
                self.live.insert(
                    task.to_string(),
                    LiveTask {
                        agent: agent.to_string(),
                        requested: trigger.as_str().starts_with(REQUEST_TRIGGER),
                        ..LiveTask::default()
                    },
                );
            }
            ArchivedEventBody::ProcessStarted {
                task,
                pid,
                start_ticks,
                ..
            } => {
                if let Some(t) = self.live.get_mut(task.as_str()) {
                    t.health_failures = 0;
                    t.process_placement = t.placements;
                    t.pid = Some(pid.to_native());
                    t.start_ticks = start_ticks.to_native();
                    t.started_seq = seq;
                    t.attempts += 1;
                }
            }
            ArchivedEventBody::TaskPlaced { task, .. } => {
                if let Some(t) = self.live.get_mut(task.as_str()) {
                    t.placements += 1;
                }
            }
            ArchivedEventBody::ResourcesSampled { task, rss_kb, cpu_ms } => {
                if let Some(t) = self.live.get_mut(task.as_str()) {
                    t.rss_kb = rss_kb.to_native();
                    t.cpu_ms = cpu_ms.to_native();
                    t.samples += 1;
                }
            }
            ArchivedEventBody::ProcessExited { task, exit } => {
                let summary = match (exit.code.as_ref(), exit.signal.as_ref()) {
                    (Some(c), _) => format!("exit {}", c.to_native()),
                    (None, Some(s)) => format!("signal {}", s.to_native()),
                    (None, None) => "unknown".to_owned(),
                };
                if let Some(t) = self.live.get_mut(task.as_str()) {
                    t.pid = None;
                    let agent = t.agent.clone();
                    self.agent_mut(&agent).last_exit = Some(summary);
                }
            }
            ArchivedEventBody::HealthChecked { task, failures, .. } => {
                if let Some(t) = self.live.get_mut(task.as_str()) {
                    t.health_failures = failures.to_native();
                }
            }
            ArchivedEventBody::RunInterrupted { task, .. } => {
                if let Some(t) = self.live.get_mut(task.as_str()) {
                    t.pid = None;
                }
            }
            ArchivedEventBody::TaskFinished { task, outcome, .. } => {
                if let Some(t) = self.live.remove(task.as_str()) {
                    let a = self.agent_mut(&t.agent);
                    if a.active_task.as_deref() == Some(task.as_str()) {
                        a.active_task = None;
                    }
                    a.runs += 1;
                    match outcome.to_native() {
                        TaskOutcome::Completed => a.consecutive_failures = 0,
                        TaskOutcome::Failed | TaskOutcome::TimedOut => a.consecutive_failures += 1,
                        TaskOutcome::Cancelled => {}
                    }
                }
            }
            _ => {}
        }
    }
}
