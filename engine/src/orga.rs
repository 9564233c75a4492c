//! The reasoning loop — Observe, Reason, Gate, Act — as a typestate
//! machine. `AgentLoop<Phase>` is the run's state in one phase; every
//! transition consumes `self` and returns the loop in the next phase, so a
//! phase cannot be skipped or repeated: there is no way to dispatch a tool
//! call that did not go through the policy check.
//!
//! ```text
//! start ─► Reasoning ─reasoned─► PolicyCheck ─checked─► ToolDispatching ─returned─► Observing ─observe─► Reasoning …
//!              │ (no tool call: the answer)         └─► AwaitingApproval ─decided─┘                 └─► Finished
//!              └──────────────────────────────► Finished (also: provider gave up)
//! ```
//!
//! Right after entering a reasoning phase the loop records the tools the
//! step's completions are offered (`ToolsOffered`: each tool's name and
//! schema hash, see `crate::offered`): at the first step, and at a later
//! one only when the list differs from the one recorded last — a run
//! rebuilt by a process that offers other tools (a rebuild tells the loop
//! what its journal holds with [`AgentLoop::offered_was`]).
//!
//! Between an observation and the next reasoning step the driver may hand
//! in knowledge recalled for what the run is now working on
//! ([`AgentLoop::observe_with`]): it is recorded as a `ContextHydrated`
//! fact (reference `knowledge:<agent>`) after the `observing` phase and
//! before the next `reasoning` one, and becomes a system message the next
//! completion sees.
//!
//! The loop is pure: it never calls the provider, the gate or a tool. The
//! driver does (`crate::reasoning`), and hands the results in; every
//! transition records its facts (`take_facts`) — phase entries, the
//! completion with its token counts, each proposed action, each verdict,
//! each call and result — which the driver appends to the journal. Replay
//! feeds the journaled results back through the same transitions and
//! compares the facts.
//!
//! Skipping the policy check does not compile:
//!
//! ```compile_fail
//! use stele_engine::orga::{AgentLoop, RunSpec};
//! let spec = RunSpec::new("run-1", "a", "m");
//! let reasoning = AgentLoop::start(spec, "hi".into(), None);
//! // A loop in the Reasoning phase has no `returned`: tools run only
//! // after `reasoned` → `checked`.
//! let _ = reasoning.returned(Vec::new());
//! ```

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use stele_journal::{EventBody, ToolList};

use crate::breaker::{Admission, BreakerConfig, Breakers, Transition};
use crate::llm::{Completion, CompletionRequest, Message, ProviderError, Role, ToolCall, ToolSpec};

/// Phase marker: asking the model.
#[derive(Debug)]
pub struct Reasoning;
/// Phase marker: the proposed actions go through the policy gate.
#[derive(Debug)]
pub struct PolicyCheck;
/// Phase marker: parked until a human decides.
#[derive(Debug)]
pub struct AwaitingApproval;
/// Phase marker: the allowed calls run.
#[derive(Debug)]
pub struct ToolDispatching;
/// Phase marker: the results are looked at; stop or go round again.
#[derive(Debug)]
pub struct Observing;

/// What a run is allowed to do and with what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// The run id (its events carry it).
    pub run: String,
    /// The agent.
    pub agent: String,
    /// The model.
    pub model: String,
    /// The system prompt.
    pub system: String,
    /// Tools the model sees (already filtered by the agent's profile).
    pub tools: Vec<ToolSpec>,
    /// Most loop iterations.
    pub max_steps: u32,
    /// Most tokens per completion (0: provider default).
    pub max_tokens: u32,
    /// Attempts per completion before the run fails.
    pub max_attempts: u32,
    /// The same action proposed this many times means the run is stuck.
    pub stuck_after: u32,
    /// Bytes of a tool result kept in the conversation and the journal.
    pub max_tool_output: usize,
    /// The thresholds of each tool's circuit breaker.
    pub breakers: BreakerConfig,
}

impl RunSpec {
    /// A spec with the defaults: 16 steps, 3 attempts, stuck after 3 equal
    /// actions, 16 KiB of tool output.
    #[must_use]
    pub fn new(run: &str, agent: &str, model: &str) -> RunSpec {
        RunSpec {
            run: run.to_owned(),
            agent: agent.to_owned(),
            model: model.to_owned(),
            system: String::new(),
            tools: Vec::new(),
            max_steps: 16,
            max_tokens: 0,
            max_attempts: 3,
            stuck_after: 3,
            max_tool_output: 16 * 1024,
            breakers: BreakerConfig::default(),
        }
    }
}

/// The gate's answer for one proposed call, as the loop needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Run it with these arguments (the proposed ones, or as the policy's
    /// conditions changed them).
    Allow {
        /// JSON arguments.
        arguments: String,
    },
    /// Do not run it; the model is told why.
    Deny {
        /// Why.
        reason: String,
    },
    /// A human must approve it first.
    Approval {
        /// Why.
        reason: String,
        /// How long the run waits, ms.
        timeout_ms: u64,
    },
}

/// One call's check: the verdict and the `PolicyDecided` fact recording it.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The call.
    pub call_id: String,
    /// The verdict.
    pub gate: Gate,
    /// The decision as journaled (`EventBody::PolicyDecided`).
    pub decided: EventBody,
}

/// A tool's result, from the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutcome {
    /// The call.
    pub call_id: String,
    /// Success.
    pub ok: bool,
    /// Output or error.
    pub output: String,
    /// Duration, ms.
    pub duration_ms: u64,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The run.
    pub run: String,
    /// `completed`, `failed`, `stuck`, `step_limit`, `cancelled`.
    pub outcome: String,
    /// The answer or the error.
    pub answer: String,
    /// Steps taken.
    pub steps: u32,
    /// The facts not yet taken (the last ones, `RunFinished` included).
    pub facts: Vec<EventBody>,
    /// The saga's compensations still to run, newest first — what undoes
    /// the run's effects when it did not complete (empty when it did).
    /// The driver runs them before it records `facts`.
    pub compensations: Vec<SagaStep>,
}

/// A compensable step of the run's saga, as `SagaStepRecorded` journals it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaStep {
    /// The call whose effect it undoes.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The compensating action (JSON `{tool, arguments}`).
    pub compensation: String,
}

#[derive(Clone, Debug)]
struct State {
    spec: Arc<RunSpec>,
    /// The list `spec.tools` makes (what the model is offered).
    offer: Arc<ToolList>,
    /// The hash of the list last recorded (`ToolsOffered`) for this run.
    offered: Option<[u8; 32]>,
    step: u32,
    messages: Vec<Message>,
    /// Calls proposed this step, in order.
    proposed: Vec<ToolCall>,
    /// Verdicts of this step, by call id.
    gates: BTreeMap<String, Gate>,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// How often each (tool, arguments) was proposed: stuck-loop detection.
    seen: BTreeMap<(String, String), u32>,
    /// Each tool's circuit breaker.
    breakers: Breakers,
    /// Calls of this step an open breaker refused: call id → why.
    refused: BTreeMap<String, String>,
    /// The saga's compensable steps, oldest first.
    saga: Vec<SagaStep>,
    facts: Vec<EventBody>,
}

/// The run in phase `P`. See the module documentation.
#[derive(Debug)]
pub struct AgentLoop<P> {
    s: State,
    _phase: PhantomData<P>,
}

impl<P> AgentLoop<P> {
    fn into<Q>(self) -> AgentLoop<Q> {
        AgentLoop {
            s: self.s,
            _phase: PhantomData,
        }
    }

    /// The facts recorded since the last call, to append in order.
    pub fn take_facts(&mut self) -> Vec<EventBody> {
        std::mem::take(&mut self.s.facts)
    }

    /// The run id.
    #[must_use]
    pub fn run(&self) -> &str {
        &self.s.spec.run
    }

    /// The current step (1-based).
    #[must_use]
    pub fn step(&self) -> u32 {
        self.s.step
    }

    /// The conversation so far.
    #[must_use]
    pub fn messages(&self) -> &[Message] {
        &self.s.messages
    }

    fn phase(&mut self, phase: &str) {
        let body = EventBody::PhaseEntered {
            run: self.s.spec.run.clone(),
            step: self.s.step,
            phase: phase.to_owned(),
        };
        self.s.facts.push(body);
    }

    /// Records the tools the step's completions will be offered
    /// (`ToolsOffered`), unless the run last recorded this same list.
    fn offer_tools(&mut self) {
        let s = &mut self.s;
        if s.offered == Some(s.offer.list_hash) {
            return;
        }
        s.offered = Some(s.offer.list_hash);
        s.facts.push(EventBody::ToolsOffered {
            run: s.spec.run.clone(),
            step: s.step,
            offered: Box::new((*s.offer).clone()),
        });
    }

    /// Takes note that the run's journal last recorded the list with hash
    /// `list_hash` (`None`: none yet). A rebuild says so after each phase
    /// it feeds, so the next live step records its list only when it
    /// differs from the journaled one.
    pub fn offered_was(&mut self, list_hash: Option<[u8; 32]>) {
        self.s.offered = list_hash;
    }

    fn breaker_fact(&mut self, t: Transition) {
        self.s.facts.push(EventBody::RunBreakerChanged {
            run: self.s.spec.run.clone(),
            step: self.s.step,
            tool: t.tool,
            from: t.from.to_owned(),
            to: t.to.to_owned(),
            reason: t.reason,
            at_ms: t.at_ms,
        });
    }

    /// The saga's compensable steps so far, oldest first.
    #[must_use]
    pub fn saga(&self) -> &[SagaStep] {
        &self.s.saga
    }

    /// Whether any tool's breaker is open or half-open (only then does
    /// dispatch need a clock reading).
    #[must_use]
    pub fn breakers_open(&self) -> bool {
        self.s.breakers.any_open()
    }

    /// Ends the run because the process driving it died (a crash): its
    /// saga is compensated like a failure's.
    #[must_use]
    pub fn interrupted(self, reason: &str) -> Finished {
        self.finish("interrupted", reason.to_owned())
    }

    fn finish(mut self, outcome: &str, answer: String) -> Finished {
        let s = &mut self.s;
        let compensations = if outcome == "completed" {
            Vec::new()
        } else {
            s.saga.iter().rev().cloned().collect()
        };
        s.facts.push(EventBody::RunFinished {
            run: s.spec.run.clone(),
            outcome: outcome.to_owned(),
            answer: answer.clone(),
            steps: s.step,
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
        });
        Finished {
            run: s.spec.run.clone(),
            outcome: outcome.to_owned(),
            answer,
            steps: s.step,
            facts: std::mem::take(&mut s.facts),
            compensations,
        }
    }

    /// Ends the run from any phase (an operator's cancel, a shutdown).
    #[must_use]
    pub fn cancel(self, reason: &str) -> Finished {
        self.finish("cancelled", reason.to_owned())
    }
}

/// What the model's answer leads to.
#[derive(Debug)]
pub enum Reasoned {
    /// It proposed actions: check them.
    Gate(AgentLoop<PolicyCheck>),
    /// It answered: the run is done.
    Done(Finished),
}

impl AgentLoop<Reasoning> {
    /// Starts a run: `RunStarted`, then the first reasoning phase.
    #[must_use]
    pub fn start(spec: RunSpec, input: String, parent: Option<String>) -> AgentLoop<Reasoning> {
        AgentLoop::start_hydrated(spec, input, parent, Vec::new())
    }

    /// Starts a run with context pre-hydrated from its task's references:
    /// `RunStarted`, the hydration's facts as given (its `PolicyDecided`
    /// and `ContextHydrated` events, from `crate::hydrate`), then the first
    /// reasoning phase. Each `ContextHydrated` becomes a system message
    /// before the input, so the first completion already sees it.
    #[must_use]
    pub fn start_hydrated(
        spec: RunSpec,
        input: String,
        parent: Option<String>,
        hydration: Vec<EventBody>,
    ) -> AgentLoop<Reasoning> {
        let mut messages = Vec::new();
        if !spec.system.is_empty() {
            messages.push(Message::text(Role::System, spec.system.clone()));
        }
        for fact in &hydration {
            if let EventBody::ContextHydrated {
                reference,
                blake3,
                content,
                ..
            } = fact
            {
                messages.push(context_message(reference, blake3, content));
            }
        }
        messages.push(Message::text(Role::User, input.clone()));
        let mut facts = vec![EventBody::RunStarted {
            run: spec.run.clone(),
            agent: spec.agent.clone(),
            input,
            parent,
        }];
        facts.extend(hydration);
        let breakers = Breakers::new(spec.breakers);
        let offer = Arc::new(crate::offered::list(&spec.tools));
        let mut lp = AgentLoop {
            s: State {
                spec: Arc::new(spec),
                offer,
                offered: None,
                step: 1,
                messages,
                proposed: Vec::new(),
                gates: BTreeMap::new(),
                prompt_tokens: 0,
                completion_tokens: 0,
                seen: BTreeMap::new(),
                breakers,
                refused: BTreeMap::new(),
                saga: Vec::new(),
                facts,
            },
            _phase: PhantomData,
        };
        lp.phase("reasoning");
        lp.offer_tools();
        lp
    }

    /// What to ask the provider.
    #[must_use]
    pub fn request(&self) -> CompletionRequest {
        CompletionRequest {
            model: self.s.spec.model.clone(),
            messages: self.s.messages.clone(),
            tools: self.s.spec.tools.clone(),
            max_tokens: self.s.spec.max_tokens,
        }
    }

    /// Records a failed attempt; returns the backoff before the next one, or
    /// `None` when the run should give up (not retryable, or out of
    /// attempts). The backoff is 500 ms × 2^(attempt-1), or what a rate
    /// limit asked for, at most 30 s.
    pub fn failed(&mut self, attempt: u32, error: &ProviderError) -> Option<Duration> {
        let retry = error.retryable() && attempt < self.s.spec.max_attempts;
        let backoff = match error {
            ProviderError::RateLimited {
                retry_after: Some(after),
            } => *after,
            _ => Duration::from_millis(500u64 << attempt.saturating_sub(1).min(6)),
        }
        .min(Duration::from_secs(30));
        let wait = retry.then_some(backoff);
        self.s.facts.push(EventBody::CompletionFailed {
            run: self.s.spec.run.clone(),
            step: self.s.step,
            attempt,
            error: error.to_string(),
            retry_in_ms: wait.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        });
        wait
    }

    /// The provider could not answer: the run fails.
    #[must_use]
    pub fn give_up(self, error: &ProviderError) -> Finished {
        self.finish("failed", format!("inference failed: {error}"))
    }

    /// The provider answered.
    #[must_use]
    pub fn reasoned(mut self, provider: &str, completion: Completion) -> Reasoned {
        let s = &mut self.s;
        s.prompt_tokens += u64::from(completion.prompt_tokens);
        s.completion_tokens += u64::from(completion.completion_tokens);
        let calls_json = serde_json::to_string(&completion.tool_calls).unwrap_or_else(|_| "[]".into());
        s.facts.push(EventBody::CompletionReceived {
            run: s.spec.run.clone(),
            step: s.step,
            provider: provider.to_owned(),
            model: s.spec.model.clone(),
            content: completion.content.clone(),
            tool_calls: calls_json,
            finish_reason: completion.finish_reason.clone(),
            prompt_tokens: completion.prompt_tokens,
            completion_tokens: completion.completion_tokens,
        });
        s.messages.push(Message {
            role: Role::Assistant,
            content: completion.content.clone(),
            tool_calls: completion.tool_calls.clone(),
            tool_call_id: None,
        });
        if completion.tool_calls.is_empty() {
            return Reasoned::Done(self.finish("completed", completion.content));
        }
        s.proposed = completion.tool_calls;
        s.gates.clear();
        let mut gate: AgentLoop<PolicyCheck> = self.into();
        gate.phase("policy_check");
        let proposed = gate.s.proposed.clone();
        for call in proposed {
            *gate
                .s
                .seen
                .entry((call.name.clone(), call.arguments.clone()))
                .or_default() += 1;
            gate.s.facts.push(EventBody::ActionProposed {
                run: gate.s.spec.run.clone(),
                step: gate.s.step,
                call_id: call.id,
                tool: call.name,
                arguments: call.arguments,
            });
        }
        Reasoned::Gate(gate)
    }
}

/// What the policy check leads to.
#[derive(Debug)]
pub enum GateOutcome {
    /// Run what was allowed.
    Dispatch(AgentLoop<ToolDispatching>),
    /// Wait for a human first.
    Park(AgentLoop<AwaitingApproval>),
}

impl AgentLoop<PolicyCheck> {
    /// The calls to check, in order.
    #[must_use]
    pub fn proposed(&self) -> &[ToolCall] {
        &self.s.proposed
    }

    /// Hands in one verdict per proposed call (missing ones are denied:
    /// fail closed).
    #[must_use]
    pub fn checked(mut self, checks: Vec<Checked>) -> GateOutcome {
        let mut by_id: BTreeMap<String, Checked> =
            checks.into_iter().map(|c| (c.call_id.clone(), c)).collect();
        let proposed = self.s.proposed.clone();
        let mut awaiting = Vec::new();
        for call in &proposed {
            let gate = match by_id.remove(&call.id) {
                Some(c) => {
                    self.s.facts.push(c.decided);
                    c.gate
                }
                None => Gate::Deny {
                    reason: "no policy decision was made for this call".into(),
                },
            };
            if let Gate::Approval { reason, timeout_ms } = &gate {
                awaiting.push(EventBody::ApprovalRequested {
                    run: self.s.spec.run.clone(),
                    step: self.s.step,
                    call_id: call.id.clone(),
                    reason: reason.clone(),
                    timeout_ms: *timeout_ms,
                });
            }
            self.s.gates.insert(call.id.clone(), gate);
        }
        if awaiting.is_empty() {
            let mut d: AgentLoop<ToolDispatching> = self.into();
            d.phase("tool_dispatching");
            GateOutcome::Dispatch(d)
        } else {
            self.s.facts.extend(awaiting);
            GateOutcome::Park(self.into())
        }
    }
}

impl AgentLoop<AwaitingApproval> {
    /// The calls waiting for a decision: (call id, reason).
    #[must_use]
    pub fn awaiting(&self) -> Vec<(String, String)> {
        self.s
            .gates
            .iter()
            .filter_map(|(id, g)| match g {
                Gate::Approval { reason, .. } => Some((id.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// A decision on one waiting call. Once none waits, the calls run.
    ///
    /// # Errors
    /// The call is not waiting; the loop is handed back unchanged.
    pub fn decided(
        mut self,
        call_id: &str,
        approved: bool,
        approver: &str,
        reason: &str,
    ) -> Result<ApprovalOutcome, (Box<AgentLoop<AwaitingApproval>>, String)> {
        let arguments = self
            .s
            .proposed
            .iter()
            .find(|c| c.id == call_id)
            .map(|c| c.arguments.clone());
        match (self.s.gates.get(call_id), arguments) {
            (Some(Gate::Approval { .. }), Some(arguments)) => {
                self.s.facts.push(EventBody::ApprovalDecided {
                    run: self.s.spec.run.clone(),
                    step: self.s.step,
                    call_id: call_id.to_owned(),
                    approved,
                    approver: approver.to_owned(),
                    reason: reason.to_owned(),
                });
                let gate = if approved {
                    Gate::Allow { arguments }
                } else {
                    Gate::Deny {
                        reason: format!("rejected by {approver}: {reason}"),
                    }
                };
                self.s.gates.insert(call_id.to_owned(), gate);
                if self.awaiting().is_empty() {
                    let mut d: AgentLoop<ToolDispatching> = self.into();
                    d.phase("tool_dispatching");
                    Ok(ApprovalOutcome::Dispatch(d))
                } else {
                    Ok(ApprovalOutcome::StillWaiting(self))
                }
            }
            _ => Err((Box::new(self), format!("call {call_id} is not awaiting approval"))),
        }
    }
}

/// After an approval decision.
#[derive(Debug)]
pub enum ApprovalOutcome {
    /// Every call is decided.
    Dispatch(AgentLoop<ToolDispatching>),
    /// Others still wait.
    StillWaiting(AgentLoop<AwaitingApproval>),
}

impl AgentLoop<ToolDispatching> {
    /// How many proposed calls the gate allowed (each gets a `ToolCalled`
    /// and a `ToolReturned`).
    #[must_use]
    pub fn allowed(&self) -> usize {
        self.s
            .proposed
            .iter()
            .filter(|c| matches!(self.s.gates.get(&c.id), Some(Gate::Allow { .. })))
            .count()
    }

    /// [`dispatch`](Self::dispatch) without a clock reading: an open breaker
    /// stays open.
    pub fn calls(&mut self) -> Vec<ToolCall> {
        self.dispatch(0)
    }

    /// The calls to run (allowed, with their arguments, and admitted by
    /// their tool's circuit breaker at `now_ms`), recording a `ToolCalled`
    /// for each allowed call and a `RunBreakerChanged` for each breaker that
    /// went half-open — call this once, before running them. A call an open
    /// breaker refuses is not returned; its refusal is its result.
    pub fn dispatch(&mut self, now_ms: u64) -> Vec<ToolCall> {
        let mut out = Vec::new();
        self.s.breakers.begin_step();
        self.s.refused.clear();
        let proposed = self.s.proposed.clone();
        for call in &proposed {
            let Some(Gate::Allow { arguments }) = self.s.gates.get(&call.id).cloned() else {
                continue;
            };
            let (admission, transition) = self.s.breakers.admit(&call.name, now_ms);
            if let Some(t) = transition {
                self.breaker_fact(t);
            }
            self.s.facts.push(EventBody::ToolCalled {
                run: self.s.spec.run.clone(),
                step: self.s.step,
                call_id: call.id.clone(),
                tool: call.name.clone(),
                arguments: arguments.clone(),
            });
            match admission {
                Admission::Run | Admission::Probe => out.push(ToolCall {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments,
                }),
                Admission::Refuse(why) => {
                    self.s.refused.insert(call.id.clone(), why);
                }
            }
        }
        out
    }

    /// Records a compensable step of the saga (`SagaStepRecorded`): what
    /// undoes `call_id`, captured before it runs. Call it after
    /// [`dispatch`](Self::dispatch) and record the facts before the effect.
    pub fn saga_step(&mut self, call_id: &str, tool: &str, compensation: String) {
        self.s.facts.push(EventBody::SagaStepRecorded {
            run: self.s.spec.run.clone(),
            step: self.s.step,
            call_id: call_id.to_owned(),
            tool: tool.to_owned(),
            compensation: compensation.clone(),
        });
        self.s.saga.push(SagaStep {
            call_id: call_id.to_owned(),
            tool: tool.to_owned(),
            compensation,
        });
    }

    /// [`returned_at`](Self::returned_at) without a clock reading (a breaker
    /// that opens is stamped 0).
    #[must_use]
    pub fn returned(self, results: Vec<ToolOutcome>) -> AgentLoop<Observing> {
        self.returned_at(results, 0)
    }

    /// Hands in the results of the calls that ran, read at `now_ms`; denied
    /// and refused calls are answered with their reason so the model sees
    /// every call answered. Each result feeds its tool's breaker; a state
    /// change is recorded (`RunBreakerChanged`) after the call's
    /// `ToolReturned`.
    #[must_use]
    pub fn returned_at(mut self, results: Vec<ToolOutcome>, now_ms: u64) -> AgentLoop<Observing> {
        let max = self.s.spec.max_tool_output;
        let mut by_id: BTreeMap<String, ToolOutcome> =
            results.into_iter().map(|r| (r.call_id.clone(), r)).collect();
        let proposed = self.s.proposed.clone();
        for call in &proposed {
            let content = match self.s.gates.get(&call.id) {
                Some(Gate::Allow { .. }) => {
                    let refused = self.s.refused.remove(&call.id);
                    let r = match &refused {
                        Some(why) => ToolOutcome {
                            call_id: call.id.clone(),
                            ok: false,
                            output: why.clone(),
                            duration_ms: 0,
                        },
                        None => by_id.remove(&call.id).unwrap_or(ToolOutcome {
                            call_id: call.id.clone(),
                            ok: false,
                            output: "the tool did not report a result".into(),
                            duration_ms: 0,
                        }),
                    };
                    let output = bounded(&r.output, max);
                    self.s.facts.push(EventBody::ToolReturned {
                        run: self.s.spec.run.clone(),
                        step: self.s.step,
                        call_id: call.id.clone(),
                        ok: r.ok,
                        output: output.clone(),
                        duration_ms: r.duration_ms,
                    });
                    if refused.is_none()
                        && let Some(t) = self.s.breakers.record(&call.name, r.ok, now_ms)
                    {
                        self.breaker_fact(t);
                    }
                    if r.ok { output } else { format!("error: {output}") }
                }
                Some(Gate::Deny { reason }) => format!("denied by policy: {reason}"),
                Some(Gate::Approval { reason, .. }) => format!("not run: awaiting approval ({reason})"),
                None => "not run".to_owned(),
            };
            self.s.messages.push(Message {
                role: Role::Tool,
                content,
                tool_calls: Vec::new(),
                tool_call_id: Some(call.id.clone()),
            });
        }
        let mut o: AgentLoop<Observing> = self.into();
        o.phase("observing");
        o
    }
}

/// What observing leads to.
#[derive(Debug)]
pub enum Observed {
    /// Another round.
    Next(AgentLoop<Reasoning>),
    /// The run stops (stuck or out of steps).
    Done(Finished),
}

impl AgentLoop<Observing> {
    /// Why the run stops here, if it does: (outcome, answer).
    fn ending(&self) -> Option<(&'static str, String)> {
        let stuck_after = self.s.spec.stuck_after;
        if let Some(((tool, _), n)) = self.s.seen.iter().find(|(_, n)| **n >= stuck_after) {
            return Some(("stuck", format!("proposed the same {tool} call {n} times")));
        }
        if self.s.step >= self.s.spec.max_steps {
            return Some((
                "step_limit",
                format!("no answer within {} steps", self.s.spec.max_steps),
            ));
        }
        None
    }

    /// Whether [`observe`](Self::observe) goes round again (so knowledge
    /// for the next step is worth recalling).
    #[must_use]
    pub fn continues(&self) -> bool {
        self.ending().is_none()
    }

    /// What the run is now working on, as a search text for the knowledge
    /// of its next step: this step's assistant text and tool results, then
    /// the input, at most `max_bytes` (cut at a character boundary).
    #[must_use]
    pub fn recall_text(&self, max_bytes: usize) -> String {
        let messages = &self.s.messages;
        let last_assistant = messages.iter().rposition(|m| m.role == Role::Assistant);
        let mut parts: Vec<&str> = Vec::new();
        if let Some(i) = last_assistant {
            parts.push(&messages[i].content);
            parts.extend(
                messages[i + 1..]
                    .iter()
                    .filter(|m| m.role == Role::Tool)
                    .map(|m| m.content.as_str()),
            );
        }
        if let Some(input) = messages.iter().find(|m| m.role == Role::User) {
            parts.push(&input.content);
        }
        let mut text = String::new();
        for p in parts.into_iter().filter(|p| !p.trim().is_empty()) {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(p);
            if text.len() >= max_bytes {
                break;
            }
        }
        if text.len() > max_bytes {
            let mut end = max_bytes;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }

    /// Decides whether to go round again: a run that proposes the same
    /// action `stuck_after` times is stuck; one that used `max_steps` stops.
    #[must_use]
    pub fn observe(self) -> Observed {
        self.observe_with(None)
    }

    /// [`observe`](Self::observe), with `knowledge` recalled for the next
    /// step: when the run goes on, it is recorded as a `ContextHydrated`
    /// (reference `knowledge:<agent>`, its BLAKE3 and size) before the next
    /// `reasoning` phase and added as a system message, so the next
    /// completion sees it. Ignored when the run stops here.
    #[must_use]
    pub fn observe_with(mut self, knowledge: Option<String>) -> Observed {
        if let Some((outcome, why)) = self.ending() {
            return Observed::Done(self.finish(outcome, why));
        }
        self.s.step += 1;
        self.s.proposed.clear();
        self.s.gates.clear();
        if let Some(content) = knowledge.filter(|c| !c.is_empty()) {
            let reference = format!(
                "{}{}",
                crate::context::rag::KNOWLEDGE_REFERENCE,
                self.s.spec.agent
            );
            let blake3 = blake3::hash(content.as_bytes()).to_hex().to_string();
            self.s
                .messages
                .push(context_message(&reference, &blake3, &content));
            self.s.facts.push(EventBody::ContextHydrated {
                run: self.s.spec.run.clone(),
                reference,
                blake3,
                size_bytes: u64::try_from(content.len()).unwrap_or(u64::MAX),
                content,
            });
        }
        let mut r: AgentLoop<Reasoning> = self.into();
        r.phase("reasoning");
        r.offer_tools();
        Observed::Next(r)
    }
}

/// The system message that carries loaded context (a file, recalled
/// knowledge) into the conversation.
fn context_message(reference: &str, blake3: &str, content: &str) -> Message {
    let short = blake3.get(..12).unwrap_or(blake3);
    Message::text(
        Role::System,
        format!("Context loaded from {reference} (blake3 {short}):\n{content}"),
    )
}

/// At most `max` bytes of `s`, cut at a character boundary, with a note of
/// what was cut.
#[must_use]
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop observing the result of one `read_file` call at step 1.
    fn observing(max_steps: u32, output: &str) -> AgentLoop<Observing> {
        let mut spec = RunSpec::new("run-1", "alice", "m");
        spec.max_steps = max_steps;
        let lp = AgentLoop::start(spec, "how long are backups kept?".into(), None);
        let completion = Completion {
            content: "Reading the notes.".into(),
            tool_calls: vec![ToolCall {
                id: "call-1".into(),
                name: "read_file".into(),
                arguments: "{}".into(),
            }],
            finish_reason: "tool_calls".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
        };
        let Reasoned::Gate(gate) = lp.reasoned("p", completion) else {
            panic!("a tool call is gated")
        };
        let checks = vec![Checked {
            call_id: "call-1".into(),
            gate: Gate::Allow {
                arguments: "{}".into(),
            },
            decided: EventBody::Annotated {
                run: None,
                text: "allowed".into(),
            },
        }];
        let GateOutcome::Dispatch(mut d) = gate.checked(checks) else {
            panic!("allowed calls dispatch")
        };
        let _ = d.calls();
        let mut o = d.returned(vec![ToolOutcome {
            call_id: "call-1".into(),
            ok: true,
            output: output.into(),
            duration_ms: 0,
        }]);
        let _ = o.take_facts();
        o
    }

    #[test]
    fn knowledge_goes_between_the_observation_and_the_next_phase() {
        let o = observing(4, "the restore drill runbook");
        assert!(o.continues());
        let text = "[alice/m-2 · long_term · 0.9] runbook\n";
        let Observed::Next(mut r) = o.observe_with(Some(text.into())) else {
            panic!("the run goes on")
        };
        let facts = r.take_facts();
        assert!(
            matches!(&facts[..], [
                EventBody::ContextHydrated { reference, size_bytes, blake3, content, .. },
                EventBody::PhaseEntered { step: 2, phase, .. },
            ] if reference == "knowledge:alice" && phase == "reasoning" && content == text
                && *size_bytes == text.len() as u64
                && *blake3 == blake3::hash(text.as_bytes()).to_hex().as_str()),
            "{facts:?}"
        );
        let last = r.request().messages.pop().expect("messages");
        assert_eq!(last.role, Role::System);
        assert!(
            last.content
                .starts_with("Context loaded from knowledge:alice (blake3 ")
        );
    }

    #[test]
    fn knowledge_is_dropped_when_the_run_stops_and_the_search_text_is_bounded() {
        let o = observing(1, &"é".repeat(2000));
        assert!(!o.continues(), "one step allowed");
        let text = o.recall_text(101);
        assert!(text.starts_with("Reading the notes.\néé"), "{text}");
        assert!(text.len() <= 101);
        let Observed::Done(f) = o.observe_with(Some("knowledge".into())) else {
            panic!("the step limit ends it")
        };
        assert_eq!(f.outcome, "step_limit");
        assert!(
            !f.facts
                .iter()
                .any(|b| matches!(b, EventBody::ContextHydrated { .. })),
            "{:?}",
            f.facts
        );
        // The search text is this step's work, then the input.
        let o = observing(4, "drill log");
        assert_eq!(
            o.recall_text(1000),
            "Reading the notes.\ndrill log\nhow long are backups kept?"
        );
    }
}
