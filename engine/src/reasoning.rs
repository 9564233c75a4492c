//! The driver of a reasoning run: it performs what the typestate loop
//! (`crate::orga`) cannot — the completion, the policy check, the tool
//! calls — and records the loop's facts through a [`Sink`] before each
//! effect, so an effect never happens without its intent in the journal.
//!
//! - Completions: one attempt per call to the provider; failures are
//!   recorded (`CompletionFailed`) and retried with the loop's backoff.
//! - Policy: every proposed call becomes an `AuthzRequest` (principal the
//!   agent with its priority, action `invoke_tool`, resource the tool,
//!   context the call's arguments and whether its `path` stays in the
//!   workspace), decided by the Cedar gate; the decision is journaled with
//!   the full request and the determining policies. `allow_with_conditions`
//!   overrides arguments with the conditions (values that parse as JSON
//!   are JSON); a `max_*` condition is a cap (`max_bytes=1024` lowers a
//!   larger or missing `max_bytes` to 1024, keeps a smaller one).
//! - Tools: allowed calls run concurrently; each result is journaled.
//! - Approval: the run parks; [`resume`] rebuilds it from its journaled
//!   facts (no effect is repeated) and a decision continues it.
//! - Knowledge: after each observation that goes on to another step, the
//!   driver's optional [`StepKnowledge`] is asked for knowledge relevant to
//!   what the run now works on and not yet in its conversation; what it
//!   returns is journaled (`ContextHydrated`, `knowledge:<agent>`) between
//!   the `observing` and the next `reasoning` phase, and the next
//!   completion sees it. A replay serves it from the journal.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};
use stele_journal::{ArchivedEventBody, EventBody, EventRef, Seq};
use tracing::Instrument as _;

use crate::agent::{AgentDefinition, Runs};
use crate::llm::{Completion, Message, Provider, ProviderError, ToolCall};
use crate::orga::{
    AgentLoop, ApprovalOutcome, AwaitingApproval, Checked, Finished, Gate, GateOutcome, Observed, Observing,
    Reasoned, Reasoning, RunSpec, ToolDispatching, ToolOutcome,
};
use crate::policy::{AuthzRequest, Entity, LiveGate, Point, PolicyGate, Verdict};
use crate::tools::{self, ToolRunner};

/// Where the loop's facts go (the journal, or a replay's comparison).
pub trait Sink: Send {
    /// Records facts in order; returns once they are durable, with the seq
    /// of each, in order (a replay's comparison: the seqs of the journaled
    /// facts they matched), or no seqs at all when it has none to give (a
    /// test's memory; a fact passed over): the driver then ties no effect
    /// fact to its call.
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Seq>, String>> + Send + 'a>>;
}

/// The sink of a live run: appends its facts, in order and in one batch
/// per call, to the run's stream `run:<id>`.
#[derive(Debug)]
pub struct JournalSink {
    journal: stele_journal::Journal,
    stream: stele_journal::StreamId,
}

impl JournalSink {
    /// The sink of run `run`.
    ///
    /// # Errors
    /// `run` does not make a valid stream id.
    pub fn new(journal: &stele_journal::Journal, run: &str) -> Result<JournalSink, stele_journal::Error> {
        Ok(JournalSink {
            journal: journal.clone(),
            stream: stele_journal::StreamId::new(format!("run:{run}"))?,
        })
    }
}

impl Sink for JournalSink {
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Seq>, String>> + Send + 'a>> {
        Box::pin(async move {
            if facts.is_empty() {
                return Ok(Vec::new());
            }
            let appends = facts
                .into_iter()
                .map(|body| stele_journal::Append {
                    stream: self.stream.clone(),
                    cause: None,
                    body,
                })
                .collect();
            self.journal
                .append_many(appends)
                .await
                .map(|receipts| receipts.iter().map(|r| r.seq).collect())
                .map_err(|e| e.to_string())
        })
    }
}

/// Largest search text the driver builds for a step's knowledge (bytes).
pub const KNOWLEDGE_QUERY_BYTES: usize = 2048;

/// What the driver asks a [`StepKnowledge`] before a run's next step.
#[derive(Debug)]
pub struct KnowledgeRequest<'a> {
    /// The run.
    pub run: &'a str,
    /// The agent (whose knowledge is recalled).
    pub agent: &'a str,
    /// The step about to begin (2 and later).
    pub step: u32,
    /// What the run is now working on: this step's assistant text and tool
    /// results, then the input, at most [`KNOWLEDGE_QUERY_BYTES`].
    pub query: String,
    /// The conversation so far: what is in it is not new.
    pub conversation: &'a [Message],
    /// The driver's clock reading (ms since the Unix epoch).
    pub now_ms: u64,
}

/// What a [`StepKnowledge`] answers: the text to inject (`None`: nothing
/// new is relevant), or why it could not recall (the run goes on without).
pub type KnowledgeFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send + 'a>>;

/// Knowledge injected before each reasoning step after the first: an
/// effect runner (a live one searches the agent's context; a replay's
/// serves what the journal holds), asked once per step that follows an
/// observation.
pub trait StepKnowledge: Send + Sync + std::fmt::Debug {
    /// The knowledge for `request.step`, or `None`.
    fn recall<'a>(&'a self, request: &'a KnowledgeRequest<'a>) -> KnowledgeFuture<'a>;
}

/// How a drive ended.
#[derive(Debug)]
pub enum Stop {
    /// The run finished.
    Finished(Finished),
    /// The run waits for a human decision.
    Parked(AgentLoop<AwaitingApproval>),
}

/// The run spec of a reasoning agent.
///
/// # Errors
/// The agent does not run a reasoning loop.
pub fn spec_for(
    def: &AgentDefinition,
    run: &str,
    default_model: &str,
    max_tokens: u32,
) -> Result<RunSpec, String> {
    let Runs::Reasoning {
        model,
        system,
        tools,
        max_steps,
        ..
    } = &def.runs
    else {
        return Err(format!("agent {} does not run a reasoning loop", def.name));
    };
    let mut spec = RunSpec::new(run, &def.name, model.as_deref().unwrap_or(default_model));
    spec.system.clone_from(system);
    let patterns = if tools.is_empty() {
        vec!["*".to_owned()]
    } else {
        tools.clone()
    };
    spec.tools = tools::profile(&patterns);
    if let Some(m) = max_steps {
        spec.max_steps = *m;
    }
    spec.max_tokens = max_tokens;
    Ok(spec)
}

/// The policy request for a proposed call.
#[must_use]
pub fn tool_request(agent: &str, priority: &str, call: &ToolCall) -> AuthzRequest {
    let args: Value = serde_json::from_str(&call.arguments).unwrap_or(Value::Null);
    let mut policy_args = Map::new();
    if let Some(o) = args.as_object() {
        for (k, v) in o {
            policy_args.insert(k.clone(), v.clone());
        }
        if let Some(Value::String(content)) = o.get("content") {
            policy_args.insert("size_bytes".into(), Value::from(content.len()));
        }
    }
    let mut context = Map::new();
    if let Some(Value::String(path)) = args.get("path") {
        let p = Path::new(path);
        let inside = !p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir));
        context.insert("in_workspace".into(), Value::Bool(inside));
    }
    context.insert("args".into(), Value::Object(policy_args));
    // An MCP tool names its server (the MCP client's own check adds the
    // SchemaPin status).
    if let Some((server, _)) = crate::mcp::split_tool_name(&call.name) {
        context.insert("mcp_server".into(), Value::String(server.to_owned()));
    }
    AuthzRequest {
        point: Point::ToolInvocation,
        principal: Entity {
            kind: "Agent".into(),
            id: agent.to_owned(),
            attrs: serde_json::json!({ "priority": priority }),
        },
        action: Point::ToolInvocation.default_action().to_owned(),
        resource: Entity {
            kind: "Tool".into(),
            id: call.name.clone(),
            attrs: Value::Object(Map::new()),
        },
        context: Value::Object(context),
    }
}

/// The arguments after a policy's conditions.
#[must_use]
pub fn apply_conditions(arguments: &str, conditions: &BTreeMap<String, String>) -> String {
    let mut args: Map<String, Value> = serde_json::from_str(arguments).unwrap_or_default();
    for (k, v) in conditions {
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        // A `max_*` condition is a cap: a smaller value the call asked for stays.
        let asked_less = k.starts_with("max_")
            && matches!((args.get(k).and_then(Value::as_f64), value.as_f64()), (Some(a), Some(c)) if a <= c);
        if !asked_less {
            args.insert(k.clone(), value);
        }
    }
    Value::Object(args).to_string()
}

/// The loop's gate answer for a journaled verdict.
fn gate_of(verdict: &Verdict, arguments: &str) -> Gate {
    match verdict {
        Verdict::Allow => Gate::Allow {
            arguments: arguments.to_owned(),
        },
        Verdict::AllowWithConditions { conditions } => Gate::Allow {
            arguments: apply_conditions(arguments, conditions),
        },
        Verdict::Deny { reason } => Gate::Deny {
            reason: reason.clone(),
        },
        Verdict::RequireApproval { reason, timeout } => Gate::Approval {
            reason: reason.clone(),
            timeout_ms: timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        },
    }
}

/// Checks one proposed call.
#[must_use]
pub fn check(gate: &PolicyGate, run: &str, agent: &str, priority: &str, call: &ToolCall) -> Checked {
    let request = tool_request(agent, priority, call);
    let decision = gate.decide(&request);
    let mut detail = decision.verdict.detail();
    if !decision.errors.is_empty() {
        detail = format!("{detail} (errors: {})", decision.errors.join("; "));
    }
    Checked {
        call_id: call.id.clone(),
        gate: gate_of(&decision.verdict, &call.arguments),
        decided: EventBody::PolicyDecided {
            run: Some(run.to_owned()),
            point: Point::ToolInvocation.name().to_owned(),
            request: request.canonical_json(),
            verdict: decision.verdict.name().to_owned(),
            detail,
            policies: decision.policies,
            policy_set: gate.hash(),
        },
    }
}

/// Performs a run's effects.
#[derive(Debug)]
pub struct Driver {
    /// The inference provider.
    pub provider: Arc<dyn Provider>,
    /// The policy gate: the set in force at each decision (a daemon's
    /// reload swaps it under a run in flight).
    pub gate: LiveGate,
    /// The agent's tools: a [`ToolBox`](crate::tools::ToolBox) running them, or a replay's
    /// journaled results.
    pub tools: Arc<dyn ToolRunner>,
    /// The agent.
    pub agent: String,
    /// The agent's priority (a policy attribute).
    pub priority: String,
    /// Knowledge recalled before each step after the first (none: no
    /// injection between steps).
    pub knowledge: Option<Arc<dyn StepKnowledge>>,
}

impl Driver {
    /// Drives a run in the reasoning phase until it finishes or parks.
    ///
    /// # Errors
    /// The sink failed (the journal refused the facts): the run stops where
    /// it is, and nothing after the last recorded fact happened.
    pub async fn drive(&self, lp: AgentLoop<Reasoning>, sink: &mut dyn Sink) -> Result<Stop, String> {
        let span = tracing::info_span!("orga.run", run_id = lp.run(), agent = %self.agent);
        self.drive_loop(lp, sink).instrument(span).await
    }

    /// The loop of [`Driver::drive`]: one span per phase (`orga.reason`,
    /// `orga.gate`, `orga.act`, `orga.observe`, `orga.finish`), each with
    /// the run id and the step.
    async fn drive_loop(&self, mut lp: AgentLoop<Reasoning>, sink: &mut dyn Sink) -> Result<Stop, String> {
        loop {
            let (run, step) = (lp.run().to_owned(), lp.step());
            let completion = async {
                sink.record(lp.take_facts()).await?;
                self.complete(&mut lp, sink).await
            }
            .instrument(tracing::info_span!("orga.reason", run_id = %run, step))
            .await?;
            let completion = match completion {
                Ok(c) => c,
                Err(e) => return self.finish(lp.give_up(&e), sink).await,
            };
            let mut check_phase = match lp.reasoned(self.provider.name(), completion) {
                Reasoned::Done(f) => return self.finish(f, sink).await,
                Reasoned::Gate(g) => g,
            };
            let gated = async {
                sink.record(check_phase.take_facts()).await?;
                // One set decides the whole step, whatever a reload does meanwhile.
                let gate = self.gate.current();
                let checks: Vec<Checked> = check_phase
                    .proposed()
                    .iter()
                    .map(|c| check(&gate, &run, &self.agent, &self.priority, c))
                    .collect();
                tracing::Span::current().record("calls", checks.len());
                match check_phase.checked(checks) {
                    GateOutcome::Dispatch(d) => Ok::<_, String>(Ok(d)),
                    GateOutcome::Park(mut p) => {
                        sink.record(p.take_facts()).await?;
                        Ok(Err(p))
                    }
                }
            }
            .instrument(tracing::info_span!("orga.gate", run_id = %run, step, calls = tracing::field::Empty))
            .await?;
            let dispatch = match gated {
                Ok(d) => d,
                Err(parked) => return Ok(Stop::Parked(parked)),
            };
            match self.act_and_observe(dispatch, sink).await? {
                Observed::Next(next) => lp = next,
                Observed::Done(f) => return self.finish(f, sink).await,
            }
        }
    }

    /// Continues a parked run after a decision on one call.
    ///
    /// # Errors
    /// The call is not awaiting approval (the run is handed back), or the
    /// sink failed.
    pub async fn decide(
        &self,
        parked: AgentLoop<AwaitingApproval>,
        call_id: &str,
        approved: bool,
        approver: &str,
        reason: &str,
        sink: &mut dyn Sink,
    ) -> Result<Stop, String> {
        let span = tracing::info_span!("orga.decided", run_id = parked.run(), agent = %self.agent, call_id, approved);
        self.continue_decided(parked.decided(call_id, approved, approver, reason), sink)
            .instrument(span)
            .await
    }

    async fn continue_decided(
        &self,
        outcome: Result<ApprovalOutcome, (Box<AgentLoop<AwaitingApproval>>, String)>,
        sink: &mut dyn Sink,
    ) -> Result<Stop, String> {
        match outcome {
            Err((_, why)) => Err(why),
            Ok(ApprovalOutcome::StillWaiting(mut p)) => {
                sink.record(p.take_facts()).await?;
                Ok(Stop::Parked(p))
            }
            Ok(ApprovalOutcome::Dispatch(d)) => match self.act_and_observe(d, sink).await? {
                Observed::Next(next) => Box::pin(self.drive_loop(next, sink)).await,
                Observed::Done(f) => self.finish(f, sink).await,
            },
        }
    }

    /// Ends a run: a run that did not complete first rolls its saga back,
    /// newest step first (`SagaCompensating` before each compensation runs,
    /// `SagaCompensated` after), then its last facts (`RunFinished`) are
    /// recorded.
    ///
    /// # Errors
    /// The sink failed.
    pub async fn finish(&self, f: Finished, sink: &mut dyn Sink) -> Result<Stop, String> {
        let span = tracing::info_span!("orga.finish", run_id = %f.run, outcome = %f.outcome);
        self.finish_run(f, sink).instrument(span).await
    }

    async fn finish_run(&self, f: Finished, sink: &mut dyn Sink) -> Result<Stop, String> {
        let reason = format!(
            "the run ended {}: {}",
            f.outcome,
            crate::orga::bounded(&f.answer, 200)
        );
        for step in &f.compensations {
            sink.record(vec![EventBody::SagaCompensating {
                run: f.run.clone(),
                call_id: step.call_id.clone(),
                action: step.compensation.clone(),
                reason: reason.clone(),
            }])
            .await?;
            let (ok, detail) = match self.tools.compensate(&step.compensation).await {
                Ok(d) => (true, d),
                Err(e) => (false, e),
            };
            sink.record(vec![EventBody::SagaCompensated {
                run: f.run.clone(),
                call_id: step.call_id.clone(),
                ok,
                detail,
            }])
            .await?;
        }
        sink.record(f.facts.clone()).await?;
        Ok(Stop::Finished(f))
    }

    async fn complete(
        &self,
        lp: &mut AgentLoop<Reasoning>,
        sink: &mut dyn Sink,
    ) -> Result<Result<Completion, ProviderError>, String> {
        let mut attempt = 1;
        loop {
            let request = lp.request();
            match self.provider.complete(&request).await {
                Ok(c) => return Ok(Ok(c)),
                Err(e) => match lp.failed(attempt, &e) {
                    Some(wait) => {
                        sink.record(lp.take_facts()).await?;
                        // A journaled failure's backoff was waited when it
                        // was recorded; a replay or a fork does not wait it.
                        if !self.provider.served_from_journal() {
                            tokio::time::sleep(wait).await;
                        }
                        attempt += 1;
                    }
                    None => {
                        sink.record(lp.take_facts()).await?;
                        return Ok(Err(e));
                    }
                },
            }
        }
    }

    async fn act_and_observe(
        &self,
        d: AgentLoop<ToolDispatching>,
        sink: &mut dyn Sink,
    ) -> Result<Observed, String> {
        let (run, step) = (d.run().to_owned(), d.step());
        let (d, results) = self
            .act(d, sink)
            .instrument(tracing::info_span!("orga.act", run_id = %run, step, calls = tracing::field::Empty))
            .await?;
        self.observe(d, results, sink)
            .instrument(tracing::info_span!("orga.observe", run_id = %run, step))
            .await
    }

    /// Hands the results to the loop and records what it made of them.
    async fn observe(
        &self,
        d: AgentLoop<ToolDispatching>,
        results: Vec<ToolOutcome>,
        sink: &mut dyn Sink,
    ) -> Result<Observed, String> {
        let now_ms = self.tools.clock_ms();
        let mut observing = d.returned_at(results, now_ms);
        sink.record(observing.take_facts()).await?;
        let knowledge = self.step_knowledge(&observing).await;
        Ok(observing.observe_with(knowledge))
    }

    /// The knowledge for the step after `observing`, when the run goes on
    /// and the driver has a [`StepKnowledge`]. A failed recall is logged
    /// and the run goes on without it.
    async fn step_knowledge(&self, observing: &AgentLoop<Observing>) -> Option<String> {
        let knowledge = self.knowledge.as_ref()?;
        if !observing.continues() {
            return None;
        }
        let request = KnowledgeRequest {
            run: observing.run(),
            agent: &self.agent,
            step: observing.step() + 1,
            query: observing.recall_text(KNOWLEDGE_QUERY_BYTES),
            conversation: observing.messages(),
            now_ms: self.tools.clock_ms(),
        };
        let span = tracing::info_span!("orga.knowledge", run_id = request.run, step = request.step);
        match knowledge.recall(&request).instrument(span).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    run_id = request.run,
                    step = request.step,
                    "no knowledge recalled: {e}"
                );
                None
            }
        }
    }

    /// Runs the allowed calls (their intent recorded first).
    async fn act(
        &self,
        mut d: AgentLoop<ToolDispatching>,
        sink: &mut dyn Sink,
    ) -> Result<(AgentLoop<ToolDispatching>, Vec<ToolOutcome>), String> {
        // A clock reading only matters (and is only journaled) when a
        // breaker is not closed.
        let now_ms = if d.breakers_open() {
            self.tools.clock_ms()
        } else {
            0
        };
        let calls = d.dispatch(now_ms);
        tracing::Span::current().record("calls", calls.len());
        // Compensable calls record what undoes them before they run; one
        // whose compensation cannot be captured fails without running.
        let mut runnable = Vec::with_capacity(calls.len());
        let mut failed = Vec::new();
        for call in calls {
            match self.tools.compensation(&call).await {
                None => runnable.push(call),
                Some(Ok(action)) => {
                    d.saga_step(&call.id, &call.name, action);
                    runnable.push(call);
                }
                Some(Err(why)) => failed.push(ToolOutcome {
                    call_id: call.id.clone(),
                    ok: false,
                    output: format!("not run: its compensation could not be recorded: {why}"),
                    duration_ms: 0,
                }),
            }
        }
        // The intent is durable before any tool runs; each call's effect
        // facts (a container's) name its run and are caused by its
        // `ToolCalled`.
        let facts = d.take_facts();
        let called: BTreeMap<String, usize> = facts
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f {
                EventBody::ToolCalled { call_id, .. } => Some((call_id.clone(), i)),
                _ => None,
            })
            .collect();
        let recorded = facts.len();
        let seqs = sink.record(facts).await?;
        // A seq per fact, or none at all (a sink that gives none).
        let seqs = if seqs.len() == recorded { seqs } else { Vec::new() };
        let contexts: Vec<tools::CallContext> = runnable
            .iter()
            .map(|c| tools::CallContext {
                run: d.run().to_owned(),
                cause: called.get(&c.id).and_then(|i| seqs.get(*i)).copied(),
            })
            .collect();
        let mut results = futures::future::join_all(
            runnable
                .iter()
                .zip(&contexts)
                .map(|(c, ctx)| self.run_tool(c, ctx)),
        )
        .await;
        results.extend(failed);
        Ok((d, results))
    }

    async fn run_tool(&self, call: &ToolCall, ctx: &tools::CallContext) -> ToolOutcome {
        self.tools.run(call, ctx).await
    }
}

/// Where a rebuilt run stands.
#[derive(Debug)]
pub enum Resumed {
    /// It waits for approval.
    Parked(AgentLoop<AwaitingApproval>),
    /// It is in its reasoning phase (a crash interrupted it, or it was
    /// never driven): drive it on.
    Reasoning(AgentLoop<Reasoning>),
    /// Its process died while its tools ran: some results are not in the
    /// journal, so the run cannot go on as if they were. End it with
    /// [`AgentLoop::interrupted`] and [`Driver::finish`] (which rolls its
    /// saga back).
    Interrupted(AgentLoop<ToolDispatching>),
    /// It had finished (or was rolling its saga back to finish).
    Finished,
}

/// Rebuilds a run from its journaled facts (in seq order) by feeding the
/// recorded results back through the loop: no provider, gate or tool is
/// called, and no clock is read (the breakers get the journaled readings).
/// The facts the rebuild produces are the ones already journaled, so they
/// are dropped.
///
/// # Errors
/// The facts do not form a run the loop can rebuild (names the seq).
pub fn resume(spec: RunSpec, events: &[EventRef]) -> Result<Resumed, String> {
    refold(spec, events).map(|(r, _)| r)
}

/// [`resume`], also returning every fact the rebuild produced, in order:
/// the loop's own (phases, the tools offered, proposals, verdicts, calls, results, breaker
/// changes, saga steps, hydration, knowledge between steps, the end) and, where the loop only takes
/// a journaled input without producing it (`CompletionFailed`,
/// `RunForked`, a `RunFinished` after the provider gave up), that input.
/// A run rebuilt without divergence yields exactly its journaled facts,
/// minus the rollback the driver records outside the loop
/// (`SagaCompensating`, `SagaCompensated`).
///
/// # Errors
/// As [`resume`].
#[allow(clippy::too_many_lines)] // one pass over the run, phase by phase
pub fn refold(spec: RunSpec, events: &[EventRef]) -> Result<(Resumed, Vec<EventBody>), String> {
    let mut out = Vec::new();
    let bad = |e: &EventRef, why: &str| format!("seq {}: {why}", e.seq().0);
    let fact = |e: &EventRef| {
        e.to_event()
            .map(|ev| ev.body)
            .map_err(|err| bad(e, &err.to_string()))
    };
    // A call's container facts are its effect's, not the loop's.
    let mut it = events.iter().filter(|e| !is_effect_fact(e.body())).peekable();
    let first = it.next().ok_or("the run has no events")?;
    let ArchivedEventBody::RunStarted { input, parent, .. } = first.body() else {
        return Err(bad(first, "a run starts with RunStarted"));
    };
    // Pre-hydration: the facts between RunStarted and the first phase.
    let mut hydration = Vec::new();
    let mut forked = Vec::new();
    while let Some(e) = it.peek() {
        match e.body() {
            ArchivedEventBody::PolicyDecided { .. } | ArchivedEventBody::ContextHydrated { .. } => {
                hydration.push(fact(e)?);
                it.next();
            }
            ArchivedEventBody::RunForked { .. } => {
                forked.push(fact(e)?);
                it.next();
            }
            _ => break,
        }
    }
    let mut lp = AgentLoop::start_hydrated(
        spec,
        input.to_string(),
        parent.as_ref().map(|p| p.to_string()),
        hydration,
    );
    // The tool list the journal last recorded for the run (the loop records
    // its own where its spec's differs; a live step compares with this one).
    let mut journaled_offer = None;
    // RunStarted, then what a fork journaled right after it.
    let mut started = lp.take_facts();
    let rest = started.split_off(1);
    out.extend(started);
    out.extend(forked);
    out.extend(rest);
    loop {
        out.extend(lp.take_facts());
        // Reasoning: skip failed attempts, take the completion.
        let completion = loop {
            let Some(e) = it.next() else {
                return Ok((Resumed::Reasoning(lp), out));
            };
            match e.body() {
                ArchivedEventBody::PhaseEntered { .. } => {}
                // The list the journal holds is what a later step compares with.
                ArchivedEventBody::ToolsOffered { offered, .. } => {
                    journaled_offer = Some(offered.list_hash);
                    lp.offered_was(journaled_offer);
                }
                ArchivedEventBody::CompletionFailed { .. } | ArchivedEventBody::RunForked { .. } => {
                    out.push(fact(e)?);
                }
                ArchivedEventBody::RunFinished { .. } => {
                    out.push(fact(e)?);
                    return Ok((Resumed::Finished, out));
                }
                ArchivedEventBody::SagaCompensating { .. } => return Ok((Resumed::Finished, out)),
                ArchivedEventBody::CompletionReceived {
                    content,
                    tool_calls,
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    ..
                } => {
                    let tool_calls: Vec<ToolCall> =
                        serde_json::from_str(tool_calls.as_str()).map_err(|err| bad(e, &err.to_string()))?;
                    break (
                        e,
                        Completion {
                            content: content.to_string(),
                            tool_calls,
                            finish_reason: finish_reason.to_string(),
                            prompt_tokens: prompt_tokens.to_native(),
                            completion_tokens: completion_tokens.to_native(),
                        },
                    );
                }
                _ => return Err(bad(e, "expected a completion")),
            }
        };
        let (at, completion) = completion;
        let ArchivedEventBody::CompletionReceived { provider, .. } = at.body() else {
            return Err(bad(at, "expected a completion"));
        };
        let mut gate = match lp.reasoned(provider.as_str(), completion) {
            Reasoned::Done(f) => {
                out.extend(f.facts);
                return Ok((Resumed::Finished, out));
            }
            Reasoned::Gate(g) => g,
        };
        out.extend(gate.take_facts());
        // Policy: the journaled decisions, in the order of the proposals.
        let proposed = gate.proposed().to_vec();
        let mut checks = Vec::new();
        for call in &proposed {
            let decided = loop {
                let e = it.next().ok_or("the run ends inside its policy check")?;
                match e.body() {
                    ArchivedEventBody::ActionProposed { .. } | ArchivedEventBody::PhaseEntered { .. } => {}
                    ArchivedEventBody::PolicyDecided { verdict, detail, .. } => {
                        break (e, verdict.to_string(), detail.to_string());
                    }
                    _ => return Err(bad(e, "expected a policy decision")),
                }
            };
            let (e, verdict, detail) = decided;
            let gate_answer = match verdict.as_str() {
                "allow" => Gate::Allow {
                    arguments: call.arguments.clone(),
                },
                "allow_with_conditions" => Gate::Allow {
                    arguments: apply_conditions(&call.arguments, &parse_conditions(&detail)),
                },
                "deny" => Gate::Deny { reason: detail },
                "require_approval" => Gate::Approval {
                    reason: detail,
                    timeout_ms: 0,
                },
                other => return Err(bad(e, &format!("unknown verdict {other:?}"))),
            };
            checks.push(Checked {
                call_id: call.id.clone(),
                gate: gate_answer,
                decided: fact(e)?,
            });
        }
        let mut dispatch = match gate.checked(checks) {
            GateOutcome::Dispatch(d) => d,
            GateOutcome::Park(mut p) => {
                out.extend(p.take_facts());
                loop {
                    let Some(e) = it.next() else {
                        return Ok((Resumed::Parked(p), out));
                    };
                    match e.body() {
                        ArchivedEventBody::ApprovalRequested { .. } => {}
                        ArchivedEventBody::RunFinished { .. } => {
                            out.push(fact(e)?);
                            return Ok((Resumed::Finished, out));
                        }
                        ArchivedEventBody::SagaCompensating { .. } => return Ok((Resumed::Finished, out)),
                        ArchivedEventBody::ApprovalDecided {
                            call_id,
                            approved,
                            approver,
                            reason,
                            ..
                        } => match p.decided(call_id.as_str(), *approved, approver.as_str(), reason.as_str())
                        {
                            Ok(ApprovalOutcome::StillWaiting(mut q)) => {
                                out.extend(q.take_facts());
                                p = q;
                            }
                            Ok(ApprovalOutcome::Dispatch(d)) => break d,
                            Err((_, why)) => return Err(bad(e, &why)),
                        },
                        _ => return Err(bad(e, "expected an approval decision")),
                    }
                }
            }
        };
        // Dispatch: the intents, the breakers' journaled clock reading (a
        // breaker that went half-open), the saga steps recorded.
        let mut dispatch_ms = 0;
        let mut saga = Vec::new();
        while let Some(e) = it.peek() {
            match e.body() {
                ArchivedEventBody::ToolCalled { .. } | ArchivedEventBody::PhaseEntered { .. } => {}
                ArchivedEventBody::RunBreakerChanged { at_ms, .. } => dispatch_ms = at_ms.to_native(),
                ArchivedEventBody::SagaStepRecorded {
                    call_id,
                    tool,
                    compensation,
                    ..
                } => saga.push((call_id.to_string(), tool.to_string(), compensation.to_string())),
                _ => break,
            }
            it.next();
        }
        // The calls it returns ran then; their results follow.
        let _running = dispatch.dispatch(dispatch_ms);
        for (call_id, tool, compensation) in saga {
            dispatch.saga_step(&call_id, &tool, compensation);
        }
        out.extend(dispatch.take_facts());
        // Tools: the journaled results (and the reading a breaker change
        // after them was decided with).
        let mut results = Vec::new();
        let mut returned_ms = 0;
        let mut answered = 0;
        while let Some(e) = it.peek() {
            match e.body() {
                ArchivedEventBody::ToolCalled { .. } | ArchivedEventBody::PhaseEntered { .. } => {}
                ArchivedEventBody::RunBreakerChanged { at_ms, .. } => returned_ms = at_ms.to_native(),
                ArchivedEventBody::ToolReturned {
                    call_id,
                    ok,
                    output,
                    duration_ms,
                    ..
                } => {
                    answered += 1;
                    results.push(ToolOutcome {
                        call_id: call_id.to_string(),
                        ok: *ok,
                        output: output.to_string(),
                        duration_ms: duration_ms.to_native(),
                    });
                }
                _ => break,
            }
            it.next();
        }
        let allowed = dispatch.allowed();
        if it.peek().is_none() && answered < allowed {
            // The journal ends with calls unanswered: the process died while
            // they ran.
            return Ok((Resumed::Interrupted(dispatch), out));
        }
        let mut observing = dispatch.returned_at(results, returned_ms);
        out.extend(observing.take_facts());
        // Knowledge recalled for the next step, journaled before its phase.
        let mut knowledge = None;
        if let Some(e) = it.peek()
            && let ArchivedEventBody::ContextHydrated {
                reference, content, ..
            } = e.body()
            && reference
                .as_str()
                .starts_with(crate::context::rag::KNOWLEDGE_REFERENCE)
        {
            knowledge = Some(content.to_string());
            it.next();
        }
        match observing.observe_with(knowledge) {
            Observed::Next(next) => {
                lp = next;
                lp.offered_was(journaled_offer);
            }
            Observed::Done(f) => {
                out.extend(f.facts);
                return Ok((Resumed::Finished, out));
            }
        }
    }
}

/// Whether a run's event is a fact its tools' effects journaled (a
/// `run_command` container's `SandboxStarted`, `SandboxExited`, or the
/// `SandboxReaped` of its orphan), not one of the loop's: a rebuild and a
/// replay pass over them; the tool's result is what the loop took.
#[must_use]
pub fn is_effect_fact(body: &ArchivedEventBody) -> bool {
    matches!(
        body,
        ArchivedEventBody::SandboxStarted { .. }
            | ArchivedEventBody::SandboxExited { .. }
            | ArchivedEventBody::SandboxReaped { .. }
    )
}

/// Conditions as `Verdict::detail` writes them (`k=v; k=v`).
fn parse_conditions(detail: &str) -> BTreeMap<String, String> {
    detail
        .split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The approvals a run waits on: call id → (requested at, timeout), in
/// ms (the request time is the journal's stamp of `ApprovalRequested`; a
/// timeout of 0 is none).
fn waiting_approvals(events: &[EventRef]) -> BTreeMap<String, (u64, u64)> {
    let mut waiting: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in events {
        match e.body() {
            ArchivedEventBody::ApprovalRequested {
                call_id, timeout_ms, ..
            } => {
                let at_ms = u64::try_from(e.at() / 1_000_000).unwrap_or(0);
                waiting.insert(call_id.to_string(), (at_ms, timeout_ms.to_native()));
            }
            ArchivedEventBody::ApprovalDecided { call_id, .. } => {
                waiting.remove(call_id.as_str());
            }
            ArchivedEventBody::RunFinished { .. } => waiting.clear(),
            _ => {}
        }
    }
    waiting
}

/// When the earliest approval a run waits on times out (ms since the Unix
/// epoch), if any has a timeout: what a daemon arms a timer for.
#[must_use]
pub fn next_approval_deadline(events: &[EventRef]) -> Option<u64> {
    waiting_approvals(events)
        .values()
        .filter(|(_, timeout_ms)| *timeout_ms > 0)
        .map(|(at_ms, timeout_ms)| at_ms.saturating_add(*timeout_ms))
        .min()
}

/// The approvals of a run that have timed out at `now_ms` (ms since the
/// Unix epoch): requested with a timeout (the policy's
/// `@approval_timeout`), not decided, the run not finished, and
/// `requested at + timeout ≤ now`. The request time is the journal's stamp
/// of its `ApprovalRequested`. Returns (call id, the reason to record).
#[must_use]
pub fn expired_approvals(events: &[EventRef], now_ms: u64) -> Vec<(String, String)> {
    waiting_approvals(events)
        .into_iter()
        .filter(|(_, (at_ms, timeout_ms))| *timeout_ms > 0 && at_ms.saturating_add(*timeout_ms) <= now_ms)
        .map(|(call, (at_ms, timeout_ms))| {
            let stamp = |ms: u64| {
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
            };
            let why = format!(
                "no decision within {} (requested {}, expired {}): rejected by the timeout",
                humantime::format_duration(std::time::Duration::from_millis(timeout_ms)),
                stamp(at_ms),
                stamp(at_ms.saturating_add(timeout_ms)),
            );
            (call, why)
        })
        .collect()
}
