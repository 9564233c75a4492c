//! The runtime decider: what `stele up` decides, composed from the
//! lifecycle rules and the scheduler decider, over three projections (the
//! agent registry, the scheduler view, the execution view).
//!
//! Every input from the world reaches it as a [`RuntimeCommand`]: an
//! operator's registration or stop, a timer that fired, a journal event
//! that matched an event-driven agent's filter, a process that started,
//! was sampled or exited, a recovery after a crash, a shutdown step. It
//! answers with facts to append and with [`Effect`]s for the runners
//! (start a process, stop one, arm a timer). It never reads the clock and
//! performs nothing; the daemon in `api` performs the effects and feeds
//! their results back as commands.
//!
//! Decisions are taken in batches: a [`Batch`] folds each command's facts
//! into working copies (O(1) clones of persistent maps) so the next command
//! of the batch sees them, and the daemon appends the whole batch as one
//! journal group. A rejected command leaves no trace in the batch.
//!
//! Rules beyond the lifecycle diagram and the scheduler:
//! - one active (queued or running) task per agent; a trigger that arrives
//!   while one is active is coalesced (a timer still records its tick);
//! - placing a task moves its agent to Running, preempting it to Suspended,
//!   finishing it back to Ready (a Suspended agent whose queued task is
//!   cancelled stays Suspended until it is placed again);
//! - a request (a run started over HTTP, a parked run's continuation)
//!   queues a task like any other ([`RuntimeCommand::Requested`]), with a
//!   `TaskRequested` saying what it asks as data; after it ends only a
//!   stop request applies to its agent;
//! - after a task ends: an agent asked to stop terminates; an ephemeral
//!   agent terminates; a persistent one is restarted after a backoff of
//!   1 s × 2^failures (at most 60 s); scheduled and event-driven agents wait
//!   for their next trigger;
//! - preemption stops the process (SIGTERM, then SIGKILL after the grace)
//!   and the task queues again: it restarts from scratch when placed, and
//!   the journal says so with a second `ProcessStarted`;
//! - a health probe's first failure, each further failure and its
//!   recovery are recorded; at `retries` failures in a row the process is
//!   stopped and its run ends as failed;
//! - once a shutdown has closed admission, nothing is queued or placed and
//!   nothing restarts; ended tasks release their resources without a
//!   placement pass; the last step cancels what is still queued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stele_journal::event::detached_event;
use stele_journal::{
    AgentState, EventBody, EventRef, ProcessExit, RuntimeHost, Seq, StreamId, TaskOutcome, TaskPriority,
    TaskRequest,
};
use stele_projections::scheduler::TaskState;
use stele_projections::{AgentRegistry, ExecutionView, Projection, SchedulerView};

use crate::agent::{AgentDefinition, ExecutionMode, Priority};
use crate::lifecycle::{agent_stream, allowed};
use crate::scheduler::{self, HostCapacity, Placement, SchedulerCommand, SchedulerRejection, SlotCapacity};

/// The longest a persistent agent waits before a restart.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// The names of the shutdown steps, in order (step 1 first).
pub const SHUTDOWN_STEPS: [&str; 6] = [
    "stop-admission",
    "signal-agents",
    "force-kill",
    "flush-metrics",
    "release-resources",
    "clear-queue",
];

/// The state the runtime decides over: three projections and the parsed
/// definitions of the registered agents.
#[derive(Clone, Debug, Default)]
pub struct RuntimeState {
    /// Agents and their lifecycle states.
    pub registry: AgentRegistry,
    /// Tasks, queue, slots.
    pub scheduler: SchedulerView,
    /// Host, admission, live processes, timers.
    pub execution: ExecutionView,
    definitions: BTreeMap<String, Arc<AgentDefinition>>,
    /// The event-driven agents among `definitions`: the only ones each
    /// committed event is matched against.
    event_driven: std::collections::BTreeSet<String>,
}

impl RuntimeState {
    /// Assembles the state from folded projections.
    #[must_use]
    pub fn new(registry: AgentRegistry, scheduler: SchedulerView, execution: ExecutionView) -> RuntimeState {
        let definitions: BTreeMap<String, Arc<AgentDefinition>> = registry
            .agents
            .iter()
            .filter_map(|(name, a)| parse_registered(&a.definition).map(|d| (name.clone(), d)))
            .collect();
        let event_driven = definitions
            .iter()
            .filter(|(_, d)| matches!(d.mode, ExecutionMode::EventDriven { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        RuntimeState {
            registry,
            scheduler,
            execution,
            definitions,
            event_driven,
        }
    }

    /// Applies one committed event to every part.
    pub fn apply(&mut self, e: &EventRef) {
        self.registry.apply(e);
        self.scheduler.apply(e);
        self.execution.apply(e);
        if let stele_journal::ArchivedEventBody::AgentRegistered {
            agent, definition, ..
        } = e.body()
        {
            self.event_driven.remove(agent.as_str());
            match parse_registered(definition.as_str()) {
                Some(d) => {
                    if matches!(d.mode, ExecutionMode::EventDriven { .. }) {
                        self.event_driven.insert(agent.to_string());
                    }
                    self.definitions.insert(agent.to_string(), d);
                }
                None => {
                    self.definitions.remove(agent.as_str());
                }
            }
        }
    }

    /// The parsed definition of a registered agent.
    #[must_use]
    pub fn definition(&self, agent: &str) -> Option<&Arc<AgentDefinition>> {
        self.definitions.get(agent)
    }

    /// The host the last runtime start recorded, as the scheduler sees it.
    #[must_use]
    pub fn host(&self) -> Option<HostCapacity> {
        host_of(&self.execution)
    }

    /// Event-driven agents (not terminated) whose filter matches an event of
    /// `kind` on `stream`. An agent is never triggered by its own events:
    /// those on its stream or about one of its tasks (`run`).
    #[must_use]
    pub fn triggered_by(&self, kind: &str, stream: &str, run: Option<&str>) -> Vec<String> {
        if self.event_driven.is_empty() {
            return Vec::new();
        }
        let own_task_agent = run
            .and_then(|r| self.scheduler.tasks.get(r))
            .map(|t| t.agent.as_str());
        self.event_driven
            .iter()
            .filter_map(|name| Some((name, self.definitions.get(name)?)))
            .filter(|(name, def)| {
                matches!(&def.mode, ExecutionMode::EventDriven { filter } if filter.matches(kind, stream))
                    && stream.strip_prefix("agent:") != Some(name.as_str())
                    && own_task_agent != Some(name.as_str())
                    && self
                        .registry
                        .agents
                        .get(name.as_str())
                        .is_some_and(|a| !matches!(a.state, AgentState::Terminated | AgentState::Failed))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Scheduled agents that are not terminated, with their intervals: the
    /// timers a starting runtime arms.
    #[must_use]
    pub fn interval_timers(&self) -> Vec<(String, Duration)> {
        self.definitions
            .iter()
            .filter_map(|(name, def)| match def.mode {
                ExecutionMode::Scheduled { interval } => Some((name.clone(), interval)),
                _ => None,
            })
            .filter(|(name, _)| {
                self.registry
                    .agents
                    .get(name)
                    .is_some_and(|a| !matches!(a.state, AgentState::Terminated | AgentState::Failed))
            })
            .collect()
    }
}

/// The host of the last `RuntimeStarted` in `exec`, as the scheduler sees it.
fn host_of(exec: &ExecutionView) -> Option<HostCapacity> {
    let h = exec.host.as_ref()?;
    Some(HostCapacity {
        slots: h
            .slot_memory_mb
            .iter()
            .zip(&h.slot_cpu_millis)
            .map(|(&memory_mb, &cpu_millis)| SlotCapacity {
                memory_mb,
                cpu_millis,
            })
            .collect(),
        placement: Placement::from_name(&h.placement).unwrap_or(Placement::FirstFit),
    })
}

fn parse_registered(source: &str) -> Option<Arc<AgentDefinition>> {
    AgentDefinition::parse(std::path::Path::new("(registered)"), source)
        .ok()
        .map(Arc::new)
}

/// One line about how a process ended.
fn exit_summary(exit: &ProcessExit) -> String {
    match (exit.code, exit.signal) {
        _ if exit.timed_out => format!("timed out after {} ms", exit.wall_ms),
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "ended".to_owned(),
    }
}

/// An input to the runtime.
#[derive(Clone, Debug)]
pub enum RuntimeCommand {
    /// A runtime starts on this journal: records the host, recovers the
    /// runs a crash interrupted, queues what should run.
    Start {
        /// Its process id.
        pid: u32,
        /// Its software version.
        software: String,
        /// The host from configuration.
        host: HostCapacity,
        /// How processes are confined.
        confinement: String,
        /// BLAKE3 of the effective configuration.
        config_hash: [u8; 32],
        /// For each task that had a process: what was done about it (the
        /// daemon kills orphans before deciding).
        orphans: BTreeMap<String, String>,
    },
    /// Register an agent.
    Register {
        /// The validated definition.
        definition: Box<AgentDefinition>,
        /// Its TOML.
        source: String,
        /// Whether its program can be started here (`Err` says why not).
        startable: Result<(), String>,
    },
    /// Stop an agent for good.
    Stop {
        /// The agent.
        agent: String,
        /// Why.
        reason: String,
    },
    /// A timer fired (`interval` or `restart`).
    TimerFired {
        /// The agent.
        agent: String,
        /// Which timer.
        timer: String,
    },
    /// A committed event matched an event-driven agent's filter.
    Triggered {
        /// The agent.
        agent: String,
        /// The event.
        by: Seq,
    },
    /// Queue a task of `agent` on behalf of a request (a run started over
    /// HTTP, a parked run's continuation): its trigger is `request <what>`
    /// ([`stele_projections::execution::REQUEST_TRIGGER`]). It takes a slot
    /// like any task (priority, limits, placement, preemption); the agent
    /// may be in any state but must have no active task; its end applies
    /// no execution-mode rule (an ephemeral agent is not terminated by it,
    /// a persistent one not restarted).
    Requested {
        /// The agent.
        agent: String,
        /// What is asked: journaled as data (`TaskRequested`) and in words
        /// in the trigger ([`request_words`]).
        request: TaskRequest,
    },
    /// A task's process started.
    ProcessStarted {
        /// The task.
        task: String,
        /// Its pid.
        pid: u32,
        /// Its start time (ticks since boot).
        start_ticks: u64,
        /// Limits in force.
        confinement: String,
    },
    /// A task's process could not be started.
    SpawnFailed {
        /// The task.
        task: String,
        /// Why.
        error: String,
    },
    /// A resource sample.
    Sampled {
        /// The task.
        task: String,
        /// RSS, KiB.
        rss_kb: u64,
        /// CPU, ms.
        cpu_ms: u64,
    },
    /// A health probe of a task's process ran.
    HealthProbe {
        /// The task.
        task: String,
        /// Whether it passed.
        ok: bool,
        /// Its outcome.
        detail: String,
    },
    /// A task's process ended.
    ProcessExited {
        /// The task.
        task: String,
        /// How.
        exit: ProcessExit,
    },
    /// The next shutdown step (must follow the last one recorded).
    Shutdown {
        /// 1–6.
        step: u32,
        /// What the daemon did in this step (steps 3–5 report effects).
        detail: String,
    },
}

/// Why a command was refused; nothing of it is appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeRejection {
    /// The lifecycle refused.
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::Rejection),
    /// The scheduler refused.
    #[error(transparent)]
    Scheduler(#[from] SchedulerRejection),
    /// No runtime has started on this journal.
    #[error("no runtime has started on this journal (stele up records its host first)")]
    NotStarted,
    /// A shutdown has closed admission.
    #[error("the runtime is shutting down; no new work is admitted")]
    ShuttingDown,
    /// The agent already terminated.
    #[error("agent {agent} has terminated")]
    Terminated {
        /// The agent.
        agent: String,
    },
    /// The agent has an active task (one task per agent at a time).
    #[error("agent {agent} has an active task ({task}); one task per agent runs at a time")]
    Busy {
        /// The agent.
        agent: String,
        /// Its active task.
        task: String,
    },
    /// Too many requests wait for a slot already (the daemon's bound).
    #[error("{limit} requests already wait for a slot; try again when some have run")]
    TooManyRequests {
        /// The bound.
        limit: usize,
    },
    /// A report about a task that has no live process.
    #[error("task {task} has no live process")]
    NoProcess {
        /// The task.
        task: String,
    },
    /// Shutdown steps out of order.
    #[error("shutdown step {step} cannot follow step {last}")]
    StepOutOfOrder {
        /// Asked.
        step: u32,
        /// Last recorded.
        last: u32,
    },
}

/// A fact to append.
#[derive(Clone, Debug)]
pub struct Fact {
    /// Its stream.
    pub stream: StreamId,
    /// The event that caused it, when known before appending.
    pub cause: Option<Seq>,
    /// The fact.
    pub body: EventBody,
}

/// Something the daemon must do once the batch's facts are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Start the task's process.
    Start {
        /// The task.
        task: String,
        /// Its agent.
        agent: String,
    },
    /// Stop the task's process (SIGTERM, SIGKILL after the grace).
    Stop {
        /// The task.
        task: String,
    },
    /// Fire the agent's `restart` timer after `after`.
    ArmRestart {
        /// The agent.
        agent: String,
        /// The backoff.
        after: Duration,
    },
    /// Fire the agent's `interval` timer every `every`.
    ArmInterval {
        /// The agent.
        agent: String,
        /// The interval.
        every: Duration,
    },
    /// Cancel the agent's timers.
    Disarm {
        /// The agent.
        agent: String,
    },
}

/// A batch of decisions over one state. See the module documentation.
#[derive(Debug)]
pub struct Batch<'a> {
    state: &'a RuntimeState,
    sched: SchedulerView,
    exec: ExecutionView,
    states: BTreeMap<String, AgentState>,
    definitions: BTreeMap<String, Arc<AgentDefinition>>,
    facts: Vec<Fact>,
    effects: Vec<Effect>,
}

impl<'a> Batch<'a> {
    /// A batch over `state`.
    #[must_use]
    pub fn new(state: &'a RuntimeState) -> Batch<'a> {
        Batch {
            state,
            sched: state.scheduler.clone(),
            exec: state.execution.clone(),
            states: BTreeMap::new(),
            definitions: BTreeMap::new(),
            facts: Vec::new(),
            effects: Vec::new(),
        }
    }

    /// Facts decided so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.facts.len()
    }

    /// Whether no fact has been decided.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// The facts and effects of every accepted command, in order.
    #[must_use]
    pub fn finish(self) -> (Vec<Fact>, Vec<Effect>) {
        (self.facts, self.effects)
    }

    /// Decides one command; its facts (indices `start..end` of the batch)
    /// are returned as a range, or nothing changes.
    ///
    /// # Errors
    /// [`RuntimeRejection`]: the batch is as it was before the call.
    pub fn decide(&mut self, command: RuntimeCommand) -> Result<std::ops::Range<usize>, RuntimeRejection> {
        let saved = (
            self.sched.clone(),
            self.exec.clone(),
            self.states.clone(),
            self.definitions.clone(),
            self.facts.len(),
            self.effects.len(),
        );
        let start = self.facts.len();
        match self.command(command) {
            Ok(()) => Ok(start..self.facts.len()),
            Err(e) => {
                let (sched, exec, states, definitions, facts, effects) = saved;
                self.sched = sched;
                self.exec = exec;
                self.states = states;
                self.definitions = definitions;
                self.facts.truncate(facts);
                self.effects.truncate(effects);
                Err(e)
            }
        }
    }

    // ---- reading through the batch's overlay ----

    fn agent_state(&self, agent: &str) -> Option<AgentState> {
        self.states
            .get(agent)
            .copied()
            .or_else(|| self.state.registry.agents.get(agent).map(|a| a.state))
    }

    fn definition(&self, agent: &str) -> Option<Arc<AgentDefinition>> {
        self.definitions
            .get(agent)
            .or_else(|| self.state.definitions.get(agent))
            .cloned()
    }

    fn host(&self) -> Result<HostCapacity, RuntimeRejection> {
        host_of(&self.exec).ok_or(RuntimeRejection::NotStarted)
    }

    fn task_agent(&self, task: &str) -> Option<String> {
        self.sched.tasks.get(task).map(|t| t.agent.clone())
    }

    // ---- emitting ----

    fn emit(&mut self, stream: StreamId, cause: Option<Seq>, body: EventBody) {
        // Fold into the working copies through the projections themselves,
        // so the batch and the views can never disagree.
        let e = detached_event(Seq(1), 0, &stream, cause, &body).expect("runtime facts are bounded");
        self.sched.apply(&e);
        self.exec.apply(&e);
        match &body {
            EventBody::AgentStateChanged { agent, to, .. } => {
                self.states.insert(agent.clone(), *to);
                if *to == AgentState::Terminated {
                    self.effects.push(Effect::Disarm { agent: agent.clone() });
                }
            }
            EventBody::AgentRegistered { agent, .. } => {
                self.states.insert(agent.clone(), AgentState::Initializing);
            }
            _ => {}
        }
        self.facts.push(Fact { stream, cause, body });
    }

    fn transition(&mut self, agent: &str, to: AgentState, reason: String) -> Result<(), RuntimeRejection> {
        let from = self
            .agent_state(agent)
            .ok_or_else(|| crate::lifecycle::Rejection::UnknownAgent { agent: agent.into() })?;
        if !allowed(from, to) {
            return Err(crate::lifecycle::Rejection::IllegalTransition {
                agent: agent.into(),
                from: from.name(),
                to: to.name(),
            }
            .into());
        }
        self.emit(
            agent_stream(agent),
            None,
            EventBody::AgentStateChanged {
                agent: agent.to_owned(),
                from,
                to,
                reason,
            },
        );
        Ok(())
    }

    /// Runs the scheduler decider on the working view and follows its facts
    /// with the lifecycle changes and effects they imply.
    fn schedule(&mut self, command: SchedulerCommand, cause: Option<Seq>) -> Result<(), RuntimeRejection> {
        let host = self.host()?;
        let facts = scheduler::decide(&self.sched, &host, command)?;
        self.scheduler_facts(facts, cause)
    }

    fn scheduler_facts(&mut self, facts: Vec<EventBody>, cause: Option<Seq>) -> Result<(), RuntimeRejection> {
        let stream = scheduler::scheduler_stream();
        for body in facts {
            let follow = match &body {
                EventBody::TaskPlaced { task, slot } => Some((task.clone(), Follow::Placed(*slot))),
                EventBody::TaskPreempted { task, by } => Some((task.clone(), Follow::Preempted(by.clone()))),
                EventBody::TaskFinished {
                    task,
                    outcome,
                    detail,
                } => Some((task.clone(), Follow::Finished(*outcome, detail.clone()))),
                _ => None,
            };
            let was_running = follow.as_ref().is_some_and(|(task, _)| {
                matches!(
                    self.sched.tasks.get(task).map(|t| t.state),
                    Some(TaskState::Running { .. })
                )
            });
            self.emit(stream.clone(), cause, body);
            let Some((task, follow)) = follow else { continue };
            let Some(agent) = self.task_agent(&task) else {
                continue;
            };
            let state = self.agent_state(&agent);
            match follow {
                Follow::Placed(slot) => {
                    if matches!(state, Some(AgentState::Ready | AgentState::Suspended)) {
                        self.transition(
                            &agent,
                            AgentState::Running,
                            format!("{task} placed on slot {slot}"),
                        )?;
                    }
                    self.effects.push(Effect::Start { task, agent });
                }
                Follow::Preempted(by) => {
                    if state == Some(AgentState::Running) {
                        self.transition(&agent, AgentState::Suspended, format!("{task} preempted by {by}"))?;
                    }
                    self.effects.push(Effect::Stop { task });
                }
                Follow::Finished(outcome, detail) => {
                    if was_running && state == Some(AgentState::Running) {
                        let how = outcome_name(outcome);
                        self.transition(&agent, AgentState::Ready, format!("{task} {how}: {detail}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends a task: through the scheduler (which then places what fits), or
    /// directly once admission is closed (no placement pass).
    fn finish_task(
        &mut self,
        task: &str,
        outcome: TaskOutcome,
        detail: String,
    ) -> Result<(), RuntimeRejection> {
        if self.exec.admission_closed {
            let Some(view) = self.sched.tasks.get(task) else {
                return Err(if self.sched.ever_queued(task) {
                    SchedulerRejection::AlreadyFinished { task: task.into() }
                } else {
                    SchedulerRejection::UnknownTask { task: task.into() }
                }
                .into());
            };
            if matches!(view.state, TaskState::Finished { .. }) {
                return Err(SchedulerRejection::AlreadyFinished { task: task.into() }.into());
            }
            let body = EventBody::TaskFinished {
                task: task.to_owned(),
                outcome,
                detail,
            };
            self.scheduler_facts(vec![body], None)
        } else {
            self.schedule(
                SchedulerCommand::Finish {
                    task: task.to_owned(),
                    outcome,
                    detail,
                },
                None,
            )
        }
    }

    /// Queues a run of `agent` (admission must be open).
    fn enqueue(&mut self, agent: &str, trigger: String, cause: Option<Seq>) -> Result<(), RuntimeRejection> {
        if self.exec.admission_closed {
            return Err(RuntimeRejection::ShuttingDown);
        }
        let def = self
            .definition(agent)
            .ok_or_else(|| crate::lifecycle::Rejection::UnknownAgent { agent: agent.into() })?;
        self.schedule(
            SchedulerCommand::Enqueue {
                agent: agent.to_owned(),
                priority: task_priority(def.priority),
                memory_mb: def.limits.memory_mb,
                cpu_millis: cpu_millis(def.limits.cpu_cores),
                trigger,
            },
            cause,
        )
    }

    /// Whether `task` was queued by a request ([`RuntimeCommand::Requested`]).
    fn requested_task(&self, task: &str) -> bool {
        self.exec.live.get(task).is_some_and(|t| t.requested)
    }

    /// Queues a task of `agent` for a request (see [`RuntimeCommand::Requested`]).
    fn requested(&mut self, agent: &str, request: TaskRequest) -> Result<(), RuntimeRejection> {
        if self.exec.admission_closed {
            return Err(RuntimeRejection::ShuttingDown);
        }
        if self.definition(agent).is_none() {
            return Err(crate::lifecycle::Rejection::UnknownAgent { agent: agent.into() }.into());
        }
        if let Some(task) = self.exec.agents.get(agent).and_then(|a| a.active_task.clone()) {
            return Err(RuntimeRejection::Busy {
                agent: agent.to_owned(),
                task,
            });
        }
        let trigger = format!(
            "{}{}",
            stele_projections::execution::REQUEST_TRIGGER,
            request_words(&request)
        );
        let first = self.facts.len();
        self.enqueue(agent, trigger, None)?;
        let task = self.facts[first..]
            .iter()
            .find_map(|f| match &f.body {
                EventBody::TaskQueued { task, .. } => Some(task.clone()),
                _ => None,
            })
            .expect("an enqueue that succeeds queues a task");
        self.emit(
            scheduler::scheduler_stream(),
            None,
            EventBody::TaskRequested {
                task,
                agent: agent.to_owned(),
                request: Box::new(request),
            },
        );
        Ok(())
    }

    /// What happens to an agent after its task ended; after a requested
    /// task only a stop request applies.
    fn after_run(
        &mut self,
        agent: &str,
        outcome: TaskOutcome,
        summary: &str,
        requested: bool,
    ) -> Result<(), RuntimeRejection> {
        let Some(def) = self.definition(agent) else {
            return Ok(());
        };
        let state = self.agent_state(agent);
        let stop_requested = self.exec.agents.get(agent).is_some_and(|a| a.stop_requested);
        if state != Some(AgentState::Ready) {
            return Ok(()); // suspended (cancelled while queued) or already gone
        }
        if stop_requested {
            return self.transition(agent, AgentState::Terminated, "stopped by request".into());
        }
        if requested {
            return Ok(());
        }
        match def.mode {
            ExecutionMode::Ephemeral if outcome != TaskOutcome::Cancelled || !self.exec.admission_closed => {
                self.transition(
                    agent,
                    AgentState::Terminated,
                    format!("ephemeral run ended: {summary}"),
                )
            }
            ExecutionMode::Persistent if !self.exec.admission_closed => {
                let failures = self.exec.agents.get(agent).map_or(0, |a| a.consecutive_failures);
                self.effects.push(Effect::ArmRestart {
                    agent: agent.to_owned(),
                    after: restart_backoff(failures),
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn command(&mut self, command: RuntimeCommand) -> Result<(), RuntimeRejection> {
        match command {
            RuntimeCommand::Start {
                pid,
                software,
                host,
                confinement,
                config_hash,
                orphans,
            } => self.start(pid, software, &host, confinement, config_hash, &orphans),
            RuntimeCommand::Register {
                definition,
                source,
                startable,
            } => self.register(*definition, source, startable),
            RuntimeCommand::Stop { agent, reason } => self.stop(&agent, reason),
            RuntimeCommand::TimerFired { agent, timer } => self.timer(&agent, timer),
            RuntimeCommand::Triggered { agent, by } => {
                if self.exec.admission_closed {
                    return Err(RuntimeRejection::ShuttingDown);
                }
                let active = self.exec.agents.get(&agent).and_then(|a| a.active_task.clone());
                if active.is_none() && self.agent_state(&agent) == Some(AgentState::Ready) {
                    self.enqueue(&agent, format!("event {}", by.0), Some(by))?;
                }
                Ok(())
            }
            RuntimeCommand::Requested { agent, request } => self.requested(&agent, request),
            RuntimeCommand::ProcessStarted {
                task,
                pid,
                start_ticks,
                confinement,
            } => {
                let agent = self
                    .exec
                    .live
                    .get(&task)
                    .map(|t| t.agent.clone())
                    .ok_or_else(|| RuntimeRejection::NoProcess { task: task.clone() })?;
                self.emit(
                    agent_stream(&agent),
                    None,
                    EventBody::ProcessStarted {
                        task,
                        agent,
                        pid,
                        start_ticks,
                        confinement,
                    },
                );
                Ok(())
            }
            RuntimeCommand::Sampled { task, rss_kb, cpu_ms } => {
                let agent = self.live_process_agent(&task)?;
                self.emit(
                    agent_stream(&agent),
                    None,
                    EventBody::ResourcesSampled { task, rss_kb, cpu_ms },
                );
                Ok(())
            }
            RuntimeCommand::SpawnFailed { task, error } => {
                let agent = self
                    .task_agent(&task)
                    .ok_or_else(|| RuntimeRejection::NoProcess { task: task.clone() })?;
                let running = matches!(
                    self.sched.tasks.get(&task).map(|t| t.state),
                    Some(TaskState::Running { .. })
                );
                if !running {
                    return Err(RuntimeRejection::NoProcess { task });
                }
                let requested = self.requested_task(&task);
                self.finish_task(&task, TaskOutcome::Failed, format!("cannot start: {error}"))?;
                self.after_run(&agent, TaskOutcome::Failed, "cannot start", requested)
            }
            RuntimeCommand::ProcessExited { task, exit } => self.exited(task, exit),
            RuntimeCommand::HealthProbe { task, ok, detail } => self.probed(task, ok, detail),
            RuntimeCommand::Shutdown { step, detail } => self.shutdown(step, detail),
        }
    }

    fn live_process_agent(&self, task: &str) -> Result<String, RuntimeRejection> {
        match self.exec.live.get(task) {
            Some(t) if t.pid.is_some() => Ok(t.agent.clone()),
            _ => Err(RuntimeRejection::NoProcess { task: task.into() }),
        }
    }

    fn start(
        &mut self,
        pid: u32,
        software: String,
        host: &HostCapacity,
        confinement: String,
        config_hash: [u8; 32],
        orphans: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeRejection> {
        if host.slots.is_empty() {
            return Err(SchedulerRejection::NoSlots.into());
        }
        self.emit(
            runtime_stream(),
            None,
            EventBody::RuntimeStarted {
                pid,
                software,
                host: Box::new(RuntimeHost {
                    slot_memory_mb: host.slots.iter().map(|s| s.memory_mb).collect(),
                    slot_cpu_millis: host.slots.iter().map(|s| s.cpu_millis).collect(),
                    placement: host.placement.name().into(),
                    confinement,
                    config_hash,
                }),
            },
        );
        // Runs a crash interrupted: their process (if any) is gone or was
        // killed by the daemon; each gets a RunInterrupted.
        let interrupted: Vec<(String, String, bool)> = self
            .exec
            .live
            .iter()
            .filter_map(|(task, live)| {
                let running = matches!(
                    self.sched.tasks.get(task).map(|t| t.state),
                    Some(TaskState::Running { .. })
                );
                (running || live.pid.is_some()).then(|| (task.clone(), live.agent.clone(), running))
            })
            .collect();
        for (task, agent, running) in interrupted {
            let detail = orphans
                .get(&task)
                .cloned()
                .unwrap_or_else(|| "no process of it was running".to_owned());
            self.emit(
                agent_stream(&agent),
                None,
                EventBody::RunInterrupted {
                    task: task.clone(),
                    agent: agent.clone(),
                    detail,
                },
            );
            if !running {
                continue; // preempted and queued: it runs again when placed
            }
            let requested = self.requested_task(&task);
            self.finish_task(
                &task,
                TaskOutcome::Failed,
                "interrupted: the runtime ended".into(),
            )?;
            if requested {
                continue; // its request ended with the runtime
            }
            if self.exec.agents.get(&agent).is_some_and(|a| a.stop_requested) {
                if self.agent_state(&agent) == Some(AgentState::Ready) {
                    self.transition(&agent, AgentState::Terminated, "stopped by request".into())?;
                }
                continue;
            }
            let rerun = self.definition(&agent).is_some_and(|d| {
                matches!(
                    d.mode,
                    ExecutionMode::Ephemeral | ExecutionMode::Persistent | ExecutionMode::EventDriven { .. }
                )
            });
            if rerun && self.agent_state(&agent) == Some(AgentState::Ready) {
                self.enqueue(&agent, format!("recovery of {task}"), None)?;
            }
        }
        // Work that should be running: ephemeral agents that have not run
        // yet and persistent agents, when they have no task; suspended
        // agents whose queued task a shutdown cancelled.
        let agents: Vec<String> = self.state.registry.agents.keys().cloned().collect();
        for agent in agents {
            let state = self.agent_state(&agent);
            let active = self.exec.agents.get(&agent).and_then(|a| a.active_task.clone());
            let Some(def) = self.definition(&agent) else {
                continue;
            };
            if active.is_some() {
                continue;
            }
            let wants = match state {
                Some(AgentState::Ready) => {
                    matches!(def.mode, ExecutionMode::Ephemeral | ExecutionMode::Persistent)
                }
                Some(AgentState::Suspended) => true,
                _ => false,
            };
            if wants {
                self.enqueue(&agent, "startup".into(), None)?;
            }
        }
        Ok(())
    }

    fn register(
        &mut self,
        definition: AgentDefinition,
        source: String,
        startable: Result<(), String>,
    ) -> Result<(), RuntimeRejection> {
        let agent = definition.name.clone();
        if let Some(state) = self.agent_state(&agent)
            && state != AgentState::Terminated
        {
            return Err(crate::lifecycle::Rejection::AlreadyRegistered {
                agent,
                state: state.name(),
            }
            .into());
        }
        if self.exec.admission_closed {
            return Err(RuntimeRejection::ShuttingDown);
        }
        let host = self.host()?;
        let definition_hash = *blake3::hash(source.as_bytes()).as_bytes();
        let def = Arc::new(definition);
        self.definitions.insert(agent.clone(), Arc::clone(&def));
        self.emit(
            agent_stream(&agent),
            None,
            EventBody::AgentRegistered {
                agent: agent.clone(),
                definition: source,
                definition_hash,
            },
        );
        let memory_mb = def.limits.memory_mb;
        let cpu = cpu_millis(def.limits.cpu_cores);
        let fits = host
            .slots
            .iter()
            .any(|s| s.memory_mb >= memory_mb && s.cpu_millis >= u64::from(cpu));
        let problem = match startable {
            Err(why) => Some(why),
            Ok(()) if !fits => Some(format!(
                "needs {memory_mb} MB and {cpu} mcpu, more than any worker slot has"
            )),
            Ok(()) => None,
        };
        if let Some(why) = problem {
            return self.transition(&agent, AgentState::Failed, why);
        }
        self.transition(&agent, AgentState::Ready, "definition valid".into())?;
        match def.mode {
            ExecutionMode::Ephemeral | ExecutionMode::Persistent => {
                self.enqueue(&agent, "registered".into(), None)
            }
            ExecutionMode::Scheduled { interval } => {
                self.effects.push(Effect::ArmInterval {
                    agent,
                    every: interval,
                });
                Ok(())
            }
            ExecutionMode::EventDriven { .. } => Ok(()),
        }
    }

    fn stop(&mut self, agent: &str, reason: String) -> Result<(), RuntimeRejection> {
        let state = self
            .agent_state(agent)
            .ok_or_else(|| crate::lifecycle::Rejection::UnknownAgent { agent: agent.into() })?;
        if state == AgentState::Terminated {
            return Err(RuntimeRejection::Terminated { agent: agent.into() });
        }
        let runs = self.exec.agents.get(agent).cloned().unwrap_or_default();
        let Some(task) = runs.active_task else {
            return self.transition(agent, AgentState::Terminated, reason);
        };
        let running = matches!(
            self.sched.tasks.get(&task).map(|t| t.state),
            Some(TaskState::Running { .. })
        );
        if running {
            if !runs.stop_requested {
                self.emit(
                    agent_stream(agent),
                    None,
                    EventBody::AgentStopRequested {
                        agent: agent.to_owned(),
                        reason,
                    },
                );
                self.effects.push(Effect::Stop { task });
            }
            return Ok(());
        }
        self.finish_task(&task, TaskOutcome::Cancelled, format!("agent stopped: {reason}"))?;
        self.transition(agent, AgentState::Terminated, reason)
    }

    fn timer(&mut self, agent: &str, timer: String) -> Result<(), RuntimeRejection> {
        if self.exec.admission_closed {
            return Err(RuntimeRejection::ShuttingDown);
        }
        let state = self
            .agent_state(agent)
            .ok_or_else(|| crate::lifecycle::Rejection::UnknownAgent { agent: agent.into() })?;
        if matches!(state, AgentState::Terminated | AgentState::Failed) {
            return Err(RuntimeRejection::Terminated { agent: agent.into() });
        }
        let runs = self.exec.agents.get(agent).cloned().unwrap_or_default();
        let tick = if timer == "restart" {
            runs.restart_ticks + 1
        } else {
            runs.interval_ticks + 1
        };
        self.emit(
            agent_stream(agent),
            None,
            EventBody::TimerFired {
                agent: agent.to_owned(),
                timer: timer.clone(),
                tick,
            },
        );
        if runs.active_task.is_none() && state == AgentState::Ready && !runs.stop_requested {
            self.enqueue(agent, format!("{timer} tick {tick}"), None)?;
        }
        Ok(())
    }

    fn probed(&mut self, task: String, ok: bool, detail: String) -> Result<(), RuntimeRejection> {
        let agent = self.live_process_agent(&task)?;
        let previous = self.exec.live.get(&task).map_or(0, |t| t.health_failures);
        let retries = self
            .definition(&agent)
            .and_then(|d| d.health.as_ref().map(|h| h.retries))
            .unwrap_or(u32::MAX);
        if ok && previous == 0 {
            return Ok(()); // healthy and was healthy: nothing new
        }
        let failures = if ok { 0 } else { previous.saturating_add(1) };
        self.emit(
            agent_stream(&agent),
            None,
            EventBody::HealthChecked {
                task: task.clone(),
                agent,
                ok,
                failures,
                detail,
            },
        );
        if failures == retries {
            self.effects.push(Effect::Stop { task });
        }
        Ok(())
    }

    fn exited(&mut self, task: String, exit: ProcessExit) -> Result<(), RuntimeRejection> {
        let agent = self.live_process_agent(&task)?;
        let unhealthy = {
            let failures = self.exec.live.get(&task).map_or(0, |t| t.health_failures);
            let retries = self
                .definition(&agent)
                .and_then(|d| d.health.as_ref().map(|h| h.retries));
            retries.is_some_and(|r| failures >= r)
        };
        let mut summary = exit_summary(&exit);
        if unhealthy {
            summary = format!("unhealthy (health probe failed), {summary}");
        }
        let outcome = if exit.timed_out {
            TaskOutcome::TimedOut
        } else if unhealthy {
            TaskOutcome::Failed
        } else if exit.stopped {
            TaskOutcome::Cancelled
        } else if exit.code == Some(0) {
            TaskOutcome::Completed
        } else {
            TaskOutcome::Failed
        };
        self.emit(
            agent_stream(&agent),
            None,
            EventBody::ProcessExited {
                task: task.clone(),
                exit: Box::new(exit),
            },
        );
        let running = matches!(
            self.sched.tasks.get(&task).map(|t| t.state),
            Some(TaskState::Running { .. })
        );
        // The process of a preempted placement: the task waits in the queue,
        // or has been placed again and its new process starts now.
        let stale = self
            .exec
            .live
            .get(&task)
            .is_some_and(|t| t.process_placement != t.placements);
        if !running || stale {
            return Ok(());
        }
        let requested = self.requested_task(&task);
        self.finish_task(&task, outcome, summary.clone())?;
        self.after_run(&agent, outcome, &summary, requested)
    }

    fn shutdown(&mut self, step: u32, detail: String) -> Result<(), RuntimeRejection> {
        let last = self.exec.shutdown_step;
        if step != last + 1 || !(1..=6).contains(&step) {
            return Err(RuntimeRejection::StepOutOfOrder { step, last });
        }
        let name = SHUTDOWN_STEPS[step as usize - 1].to_owned();
        let running: Vec<String> = self
            .exec
            .live
            .iter()
            .filter(|(_, t)| t.pid.is_some())
            .map(|(task, _)| task.clone())
            .collect();
        let queued: Vec<String> = self
            .exec
            .live
            .keys()
            .filter(|task| {
                matches!(
                    self.sched.tasks.get(*task).map(|t| t.state),
                    Some(TaskState::Queued)
                )
            })
            .cloned()
            .collect();
        let detail = match step {
            1 => format!(
                "admission closed; {} running, {} queued{}",
                running.len(),
                queued.len(),
                suffix(&detail)
            ),
            2 => format!("asked to stop: {}{}", list(&running), suffix(&detail)),
            5 => {
                let (mb, mcpu) = self
                    .sched
                    .slots
                    .values()
                    .fold((0, 0), |(m, c), u| (m + u.memory_mb, c + u.cpu_millis));
                format!(
                    "no process left; slots still reserve {mb} MB and {mcpu} mcpu{}",
                    suffix(&detail)
                )
            }
            6 => format!("cancelled: {}{}", list(&queued), suffix(&detail)),
            _ => detail,
        };
        self.emit(
            runtime_stream(),
            None,
            EventBody::ShutdownStep { step, name, detail },
        );
        match step {
            1 => {
                let agents: Vec<String> = self.state.registry.agents.keys().cloned().collect();
                for agent in agents {
                    self.effects.push(Effect::Disarm { agent });
                }
            }
            2 => {
                for task in running {
                    self.effects.push(Effect::Stop { task });
                }
            }
            6 => {
                for task in queued {
                    self.finish_task(
                        &task,
                        TaskOutcome::Cancelled,
                        "shutdown: the queue was cleared".into(),
                    )?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

enum Follow {
    Placed(u32),
    Preempted(String),
    Finished(TaskOutcome, String),
}

fn suffix(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!("; {extra}")
    }
}

fn list(tasks: &[String]) -> String {
    if tasks.is_empty() {
        "none".to_owned()
    } else {
        tasks.join(", ")
    }
}

fn outcome_name(o: TaskOutcome) -> &'static str {
    match o {
        TaskOutcome::Completed => "completed",
        TaskOutcome::Failed => "failed",
        TaskOutcome::TimedOut => "timed out",
        TaskOutcome::Cancelled => "cancelled",
    }
}

/// What a request asks, in words: the trigger of its task after
/// `request ` (`run over HTTP: <input>`, `continue run-3: call-1 approved
/// by alice (reason: fine)`, `continue run-3: timed-out approvals
/// rejected`).
#[must_use]
pub fn request_words(request: &TaskRequest) -> String {
    match request {
        TaskRequest::Run { input } => format!("run over HTTP: {input}"),
        TaskRequest::Decision {
            run,
            call,
            approved,
            approver,
            reason,
        } => {
            let verdict = if *approved { "approved" } else { "rejected" };
            if reason.is_empty() {
                format!("continue {run}: {call} {verdict} by {approver}")
            } else {
                format!("continue {run}: {call} {verdict} by {approver} (reason: {reason})")
            }
        }
        TaskRequest::Expiry { run } => format!("continue {run}: timed-out approvals rejected"),
    }
}

/// Decides one command on its own (a batch of one).
///
/// # Errors
/// [`RuntimeRejection`].
pub fn decide(
    state: &RuntimeState,
    command: RuntimeCommand,
) -> Result<(Vec<Fact>, Vec<Effect>), RuntimeRejection> {
    let mut batch = Batch::new(state);
    batch.decide(command)?;
    Ok(batch.finish())
}

/// The backoff before a persistent agent's restart after `failures`
/// consecutive failed runs: 1 s, 2 s, 4 s, … at most [`MAX_RESTART_BACKOFF`].
#[must_use]
pub fn restart_backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_RESTART_BACKOFF)
}

/// The stream runtime-wide facts go to.
///
/// # Panics
/// Never: a constant valid id.
#[must_use]
pub fn runtime_stream() -> StreamId {
    StreamId::new("runtime").expect("valid stream id")
}

/// The task priority of an agent priority.
#[must_use]
pub fn task_priority(p: Priority) -> TaskPriority {
    match p {
        Priority::Critical => TaskPriority::Critical,
        Priority::High => TaskPriority::High,
        Priority::Normal => TaskPriority::Normal,
        Priority::Low => TaskPriority::Low,
    }
}

/// Cores as thousandths of a core (at least 1).
#[must_use]
pub fn cpu_millis(cores: f64) -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let m = (cores * 1000.0).round() as u32;
    m.max(1)
}
