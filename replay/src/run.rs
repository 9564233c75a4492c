//! Replay of a reasoning run: the engine's own driver
//! (`stele_engine::reasoning::Driver`: the ORGA loop, the retries, the
//! Cedar gate) is run again with effect runners that serve the journal —
//! [`Served`] answers each completion attempt with the next journaled
//! `CompletionReceived` or `CompletionFailed`, [`ServedTools`] answers each
//! tool call with its journaled `ToolReturned`, [`ServedKnowledge`] each
//! step's recalled knowledge with its journaled `ContextHydrated` (no
//! context search) — on a current-thread tokio runtime whose clock is
//! paused, so a retry's backoff passes without waiting. Approvals are fed
//! back from the journaled `ApprovalDecided`s.
//!
//! Every fact the driver records goes to a comparing sink instead of the
//! journal: fact k must equal the run's k-th recorded fact (its
//! `Annotated` notes and `RunForked` marker are not the deciders' and are
//! skipped). That includes the tools the model was offered
//! (`ToolsOffered`): the replay offers what `stele run` would from the
//! agent's profile as registered, the configured bus, and the MCP tools of
//! the discovery journaled before the run ([`RecordedRun::load_mcp`]); a
//! different list is reported naming the tools added, removed or changed.
//! (A run recorded before tool lists were journaled has none to compare.)
//! The first difference stops the replay and becomes a
//! [`Divergence`]: the seq, both bodies, a field-level diff and the events
//! that led there.
//!
//! No effect is performed: the served provider and tool runner have no
//! live fallback in a replay, and run out with an error the comparison
//! then reports.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use stele_engine::agent::AgentDefinition;
use stele_engine::llm::{
    Completion, CompletionFuture, CompletionRequest, Provider, ProviderError, ToolCall, ToolSpec,
};
use stele_engine::orga::{AgentLoop, RunSpec, ToolOutcome};
use stele_engine::policy::{LiveGate, PolicyGate};
use stele_engine::reasoning::{Driver, KnowledgeFuture, KnowledgeRequest, Sink, StepKnowledge, Stop};
use stele_engine::tools::{CallContext, ToolResult, ToolRunner};
use stele_journal::{Event, EventBody, Reader, RunId, Seq};
use stele_projections::{AgentRegistry, SnapshotStore, state_at};

use crate::diff::{FieldDiff, diff_values};
use crate::{Error, Result};

/// Events before a divergence shown as the path leading to it.
pub const PATH_EVENTS: usize = 12;

/// What the configuration contributes to a run's spec (the same values
/// `stele run` takes from `[inference]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The model when the agent names none and no completion recorded one.
    pub default_model: String,
    /// Most tokens per completion.
    pub max_tokens: u32,
    /// Attempts per completion.
    pub max_attempts: u32,
    /// Whether the bus runs here (`[bus] policies`): its builtins are then
    /// offered to runs whose profile matches them, as `stele run` offers
    /// them.
    pub bus_builtins: bool,
}

/// A run as the journal holds it.
#[derive(Clone, Debug)]
pub struct RecordedRun {
    /// The run id.
    pub run: String,
    /// The agent.
    pub agent: String,
    /// The operator's input.
    pub input: String,
    /// `RunStarted.parent` (`run@seq` for a fork).
    pub parent: Option<String>,
    /// The agent's definition as registered when the run started.
    pub definition: AgentDefinition,
    /// Every event of the run, in seq order.
    pub events: Vec<Event>,
    /// The MCP tools its start was offered, rebuilt from the journaled
    /// discovery before it ([`RecordedRun::load_mcp`]; none until then).
    pub mcp: Vec<ToolSpec>,
}

impl RecordedRun {
    /// The facts the deciders produced, in order: the run's events without
    /// operators' notes and the fork marker.
    #[must_use]
    pub fn facts(&self) -> Vec<&Event> {
        self.events.iter().filter(|e| is_decided(&e.body)).collect()
    }

    /// The model its completions recorded, if any.
    #[must_use]
    pub fn recorded_model(&self) -> Option<&str> {
        self.events.iter().find_map(|e| match &e.body {
            EventBody::CompletionReceived { model, .. } => Some(model.as_str()),
            _ => None,
        })
    }

    /// The spec the run is replayed with: the agent's definition as
    /// registered, the model its completions recorded, `settings` for the
    /// rest. Its tools are offered as `stele run` layers them, each source
    /// filtered by the agent's tool profile: the built-in tools, the MCP
    /// tools of [`RecordedRun::mcp`], the bus builtins (when
    /// `settings.bus_builtins`), the knowledge tools.
    ///
    /// # Errors
    /// The agent does not run a reasoning loop.
    pub fn spec(&self, run: &str, settings: &Settings) -> Result<RunSpec> {
        let mut spec = self.base_spec(run, settings)?;
        let patterns = self.profile();
        let offered = |t: &ToolSpec| {
            patterns
                .iter()
                .any(|p| stele_engine::tools::glob_match(p, &t.name))
        };
        spec.tools.extend(self.mcp.iter().filter(|t| offered(t)).cloned());
        if settings.bus_builtins {
            spec.tools.extend(
                stele_engine::bus::builtins::specs()
                    .into_iter()
                    .filter(|t| offered(t)),
            );
        }
        spec.tools.extend(
            stele_engine::context::rag::specs()
                .into_iter()
                .filter(|t| offered(t)),
        );
        Ok(spec)
    }

    /// [`RecordedRun::spec`] with the built-in tools only: what a fork
    /// offers (its live runners past its prefix are the agent's tool box),
    /// and so what a fork is replayed with.
    ///
    /// # Errors
    /// The agent does not run a reasoning loop.
    pub fn base_spec(&self, run: &str, settings: &Settings) -> Result<RunSpec> {
        let model = self.recorded_model().unwrap_or(&settings.default_model);
        let mut spec = stele_engine::reasoning::spec_for(&self.definition, run, model, settings.max_tokens)
            .map_err(|reason| Error::Run {
            run: self.run.clone(),
            reason,
        })?;
        if let Some(m) = self.recorded_model() {
            m.clone_into(&mut spec.model);
        }
        spec.max_attempts = settings.max_attempts;
        Ok(spec)
    }

    /// The agent's tool profile (`[runs] tools`; empty offers every tool).
    fn profile(&self) -> Vec<String> {
        match &self.definition.runs {
            stele_engine::Runs::Reasoning { tools, .. } if !tools.is_empty() => tools.clone(),
            _ => vec!["*".to_owned()],
        }
    }

    /// Fills [`RecordedRun::mcp`]: for each of `servers` (the configured
    /// MCP servers) the profile reaches, the accepted tools of its last
    /// journaled discovery before the run started. No server is contacted.
    ///
    /// # Errors
    /// The journal cannot be read, or a journaled listing is unreadable.
    pub fn load_mcp(&mut self, reader: &Reader, servers: &[String]) -> Result<()> {
        let start = self.events.first().map_or(Seq(1), |e| e.seq);
        let patterns = self.profile();
        let mut mcp = Vec::new();
        for server in servers {
            let specs =
                stele_engine::mcp::hub::journaled_specs(reader, server, &patterns, start).map_err(|e| {
                    Error::Run {
                        run: self.run.clone(),
                        reason: format!("the MCP tools its start was offered: {e}"),
                    }
                })?;
            mcp.extend(specs);
        }
        self.mcp = mcp;
        Ok(())
    }

    /// The provider its completions recorded (`replay` when none did).
    #[must_use]
    pub fn provider_name(&self) -> String {
        self.events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::CompletionReceived { provider, .. } => Some(provider.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "replay".to_owned())
    }

    /// The context its start loaded: the facts between `RunStarted` and
    /// the first phase (`PolicyDecided` and `ContextHydrated` per reference).
    #[must_use]
    pub fn hydration(&self) -> Vec<&Event> {
        self.facts()
            .into_iter()
            .skip(1)
            .take_while(|e| {
                matches!(
                    e.body,
                    EventBody::PolicyDecided { .. } | EventBody::ContextHydrated { .. }
                )
            })
            .collect()
    }

    /// The agent's priority as a policy attribute (as `stele run` gives it).
    #[must_use]
    pub fn priority(&self) -> String {
        format!("{:?}", self.definition.priority).to_lowercase()
    }
}

/// Whether a run event is a decider's fact (compared by replay): not an
/// operator's note, the fork marker, or a fact a tool's effect journaled
/// (a `run_command` container's: the replay serves the call's result and
/// starts no container).
fn is_decided(body: &EventBody) -> bool {
    !matches!(
        body,
        EventBody::Annotated { .. }
            | EventBody::RunForked { .. }
            | EventBody::SandboxStarted { .. }
            | EventBody::SandboxExited { .. }
            | EventBody::SandboxReaped { .. }
    )
}

/// Reads run `run` and the definition of its agent as registered when it
/// started.
///
/// # Errors
/// No such run; not a reasoning run; its agent was not registered; reading
/// the journal failed.
pub fn load_run(reader: &Reader, store: &SnapshotStore, run: &str) -> Result<RecordedRun> {
    let bad = |reason: String| Error::Run {
        run: run.to_owned(),
        reason,
    };
    let id = RunId::new(run.to_owned()).map_err(|e| bad(e.to_string()))?;
    let mut events = Vec::new();
    for e in reader.run(&id, Seq(1)) {
        events.push(e?.to_event()?);
    }
    let first = events
        .first()
        .ok_or_else(|| bad("no such run in this journal (list them with `stele runs`)".into()))?;
    let EventBody::RunStarted {
        agent, input, parent, ..
    } = &first.body
    else {
        return Err(bad(format!(
            "not a reasoning run: its first event (seq {}) is {}, not run_started",
            first.seq,
            first.body.kind()
        )));
    };
    let registry = state_at::<AgentRegistry>(reader, store, first.seq)?.state;
    let entry = registry.agents.get(agent).ok_or_else(|| {
        bad(format!(
            "its agent {agent} was not registered when it started (seq {})",
            first.seq
        ))
    })?;
    let definition = AgentDefinition::parse(
        Path::new(&format!("(agent {agent} as registered)")),
        &entry.definition,
    )
    .map_err(|e| {
        bad(format!(
            "the registered definition of {agent} no longer parses: {e}"
        ))
    })?;
    Ok(RecordedRun {
        run: run.to_owned(),
        agent: agent.clone(),
        input: input.clone(),
        parent: parent.clone(),
        definition,
        events,
        mcp: Vec::new(),
    })
}

// ---------------------------------------------------------------------------
// Served effect runners

/// A provider answering from journaled completions, in order; past them it
/// asks `live` (a fork) or fails (a replay: nothing is asked of the world).
#[derive(Debug)]
pub struct Served {
    name: String,
    answers: Mutex<VecDeque<Result<Completion, ProviderError>>>,
    live: Option<Arc<dyn Provider>>,
    /// Whether the last answer came from `answers` (not `live`).
    journaled: std::sync::atomic::AtomicBool,
}

impl Served {
    /// Serves `answers`, then `live` if given.
    #[must_use]
    pub fn new(
        name: String,
        answers: VecDeque<Result<Completion, ProviderError>>,
        live: Option<Arc<dyn Provider>>,
    ) -> Served {
        Served {
            name,
            answers: Mutex::new(answers),
            live,
            journaled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Answers not yet served.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Provider for Served {
    fn name(&self) -> &str {
        &self.name
    }

    fn served_from_journal(&self) -> bool {
        self.journaled.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn complete<'a>(&'a self, request: &'a CompletionRequest) -> CompletionFuture<'a> {
        let next = self
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        self.journaled.store(
            next.is_some() || self.live.is_none(),
            std::sync::atomic::Ordering::SeqCst,
        );
        Box::pin(async move {
            match (next, &self.live) {
                (Some(answer), _) => answer,
                (None, Some(live)) => live.complete(request).await,
                (None, None) => Err(ProviderError::Config(
                    "replay: the journal holds no further completion for this run (replay performs no inference)"
                        .into(),
                )),
            }
        })
    }
}

/// What undoing a call recorded: the compensation captured before it ran
/// (`SagaStepRecorded`), or why none could be (the call then failed
/// without running).
pub type Captured = Result<String, String>;

/// The text a call that failed for want of a compensation is answered with
/// (the driver's wording; the reason follows).
const NOT_CAPTURED: &str = "not run: its compensation could not be recorded: ";

/// A tool runner answering from journaled results (by call id, in order),
/// the journaled saga captures and compensation results, and a clock that
/// reads the journal; for other calls it asks `live` (a fork) or reports
/// that the journal has no result (a replay: nothing runs).
#[derive(Debug)]
pub struct ServedTools {
    results: Mutex<BTreeMap<String, VecDeque<ToolOutcome>>>,
    captures: Mutex<BTreeMap<String, VecDeque<Captured>>>,
    compensations: Mutex<VecDeque<(bool, String)>>,
    max_output: usize,
    clock: Option<Arc<ReplayClock>>,
    live: Option<Arc<dyn ToolRunner>>,
}

impl ServedTools {
    /// Serves the tool results, saga captures and compensation results
    /// among `facts` (outputs as journaled, i.e. already bounded to
    /// `max_output`), then `live` if given.
    #[must_use]
    pub fn new<'a>(
        facts: impl IntoIterator<Item = &'a Event>,
        max_output: usize,
        clock: Option<Arc<ReplayClock>>,
        live: Option<Arc<dyn ToolRunner>>,
    ) -> ServedTools {
        let mut results: BTreeMap<String, VecDeque<ToolOutcome>> = BTreeMap::new();
        let mut captures: BTreeMap<String, VecDeque<Captured>> = BTreeMap::new();
        let mut compensations = VecDeque::new();
        for e in facts {
            match &e.body {
                EventBody::SagaStepRecorded {
                    call_id,
                    compensation,
                    ..
                } => captures
                    .entry(call_id.clone())
                    .or_default()
                    .push_back(Ok(compensation.clone())),
                EventBody::SagaCompensated { ok, detail, .. } => {
                    compensations.push_back((*ok, detail.clone()))
                }
                _ => {}
            }
            if let Some(r) = tool_result_of(e) {
                if let Some(why) = r.output.strip_prefix(NOT_CAPTURED).filter(|_| !r.ok) {
                    captures
                        .entry(r.call_id.clone())
                        .or_default()
                        .push_back(Err(why.to_owned()));
                }
                results.entry(r.call_id.clone()).or_default().push_back(r);
            }
        }
        ServedTools {
            results: Mutex::new(results),
            captures: Mutex::new(captures),
            compensations: Mutex::new(compensations),
            max_output,
            clock,
            live,
        }
    }

    /// Adds one result to serve (a fork's edit).
    pub fn push(&self, r: ToolOutcome) {
        self.results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(r.call_id.clone())
            .or_default()
            .push_back(r);
    }
}

impl ToolRunner for ServedTools {
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        ctx: &'a CallContext,
    ) -> Pin<Box<dyn Future<Output = ToolOutcome> + Send + 'a>> {
        let served = self
            .results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&call.id)
            .and_then(VecDeque::pop_front);
        Box::pin(async move {
            match (served, &self.live) {
                (Some(mut r), _) => {
                    r.output = unbounded(&r.output, self.max_output);
                    r
                }
                (None, Some(live)) => live.run(call, ctx).await,
                (None, None) => ToolOutcome {
                    call_id: call.id.clone(),
                    ok: false,
                    output: format!(
                        "replay: the journal holds no result for call {} (replay runs no tool)",
                        call.id
                    ),
                    duration_ms: 0,
                },
            }
        })
    }

    fn compensation<'a>(
        &'a self,
        call: &'a ToolCall,
    ) -> Pin<Box<dyn Future<Output = Option<Captured>> + Send + 'a>> {
        let served = self
            .captures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&call.id)
            .and_then(VecDeque::pop_front);
        Box::pin(async move {
            match (served, &self.live) {
                (Some(c), _) => Some(c),
                (None, Some(live)) if !self.has_result(&call.id) => live.compensation(call).await,
                (None, _) => None,
            }
        })
    }

    fn compensate<'a>(&'a self, action: &'a str) -> Pin<Box<dyn Future<Output = ToolResult> + Send + 'a>> {
        let served = self
            .compensations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        Box::pin(async move {
            match (served, &self.live) {
                (Some((true, detail)), _) => Ok(detail),
                (Some((false, detail)), _) => Err(detail),
                (None, Some(live)) => live.compensate(action).await,
                (None, None) => {
                    Err("replay: the journal holds no result for this compensation (replay runs none)".into())
                }
            }
        })
    }

    fn clock_ms(&self) -> u64 {
        match (&self.clock, &self.live) {
            (Some(c), _) => c.now_ms(),
            (None, Some(live)) => live.clock_ms(),
            (None, None) => 0,
        }
    }
}

impl ServedTools {
    /// Whether a journaled result for `call_id` is still to be served (its
    /// capture, if it had one, was served with it).
    fn has_result(&self, call_id: &str) -> bool {
        self.results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(call_id)
            .is_some_and(|q| !q.is_empty())
    }
}

/// The knowledge a run was given before its later steps, served from its
/// journaled `ContextHydrated` facts (reference `knowledge:<agent>`,
/// recorded after an `observing` phase): the step after that observation
/// gets its content again. A step whose start the facts hold without such
/// a fact got none. For any other step (past a fork's prefix) it asks
/// `live`, or answers none (a replay searches nothing).
#[derive(Debug)]
pub struct ServedKnowledge {
    by_step: BTreeMap<u32, String>,
    decided: BTreeSet<u32>,
    live: Option<Arc<dyn StepKnowledge>>,
}

impl ServedKnowledge {
    /// Serves the knowledge among `facts`, then `live` if given.
    #[must_use]
    pub fn new<'a>(
        facts: impl IntoIterator<Item = &'a Event>,
        live: Option<Arc<dyn StepKnowledge>>,
    ) -> ServedKnowledge {
        let mut by_step = BTreeMap::new();
        let mut decided = BTreeSet::new();
        let mut observed = None;
        for e in facts {
            match &e.body {
                EventBody::PhaseEntered { step, phase, .. } => {
                    observed = (phase == "observing").then_some(*step);
                    if phase == "reasoning" {
                        decided.insert(*step);
                    }
                }
                EventBody::ContextHydrated {
                    reference, content, ..
                } if reference.starts_with(stele_engine::context::rag::KNOWLEDGE_REFERENCE) => {
                    if let Some(step) = observed {
                        by_step.insert(step + 1, content.clone());
                        decided.insert(step + 1);
                    }
                }
                _ => {}
            }
        }
        ServedKnowledge {
            by_step,
            decided,
            live,
        }
    }
}

impl StepKnowledge for ServedKnowledge {
    fn recall<'a>(&'a self, request: &'a KnowledgeRequest<'a>) -> KnowledgeFuture<'a> {
        let served = self.by_step.get(&request.step).cloned();
        let decided = self.decided.contains(&request.step);
        Box::pin(async move {
            match (served, &self.live) {
                (Some(content), _) => Ok(Some(content)),
                (None, Some(live)) if !decided => live.recall(request).await,
                (None, _) => Ok(None),
            }
        })
    }
}

/// The clock a replay's driver reads (for the circuit breakers): the
/// journal's. A reading the run depended on is journaled in the
/// `RunBreakerChanged` it led to; a reading that changed nothing is not.
/// So the clock answers with the `at_ms` of a breaker change among the
/// facts the driver is about to produce (up to the next tool result, or
/// up to the next phase once the results are in), and otherwise with the
/// time the last matched fact was journaled — never later than the
/// original reading, so a time-out that had not elapsed then has not now.
#[derive(Debug)]
pub struct ReplayClock {
    marks: Vec<Mark>,
    times: Vec<u64>,
    pos: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
enum Mark {
    Phase,
    Returned,
    Breaker(u64),
    Other,
}

impl ReplayClock {
    /// A clock over a run's facts (those the comparison walks).
    #[must_use]
    pub fn new(facts: &[&Event]) -> ReplayClock {
        ReplayClock {
            marks: facts
                .iter()
                .map(|e| match &e.body {
                    EventBody::PhaseEntered { .. } => Mark::Phase,
                    EventBody::ToolReturned { .. } => Mark::Returned,
                    EventBody::RunBreakerChanged { at_ms, .. } => Mark::Breaker(*at_ms),
                    _ => Mark::Other,
                })
                .collect(),
            times: Vec::new(),
            pos: std::sync::atomic::AtomicUsize::new(0),
        }
        .with_times(facts)
    }

    fn with_times(mut self, facts: &[&Event]) -> ReplayClock {
        self.times = facts
            .iter()
            .map(|e| u64::try_from(e.at / 1_000_000).unwrap_or(0))
            .collect();
        self
    }

    fn set(&self, pos: usize) {
        self.pos.store(pos, std::sync::atomic::Ordering::SeqCst);
    }

    /// See the type's documentation.
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        let pos = self.pos.load(std::sync::atomic::Ordering::SeqCst);
        let at_returns = matches!(self.marks.get(pos), Some(Mark::Returned));
        for (i, m) in self.marks.iter().enumerate().skip(pos) {
            match m {
                Mark::Breaker(at_ms) => return *at_ms,
                Mark::Phase if i > pos => break,
                Mark::Returned if i > pos && !at_returns => break,
                _ => {}
            }
        }
        pos.checked_sub(1)
            .and_then(|p| self.times.get(p))
            .copied()
            .unwrap_or(0)
    }
}

/// An output that [`stele_engine::orga::bounded`] turns back into the
/// journaled `recorded`: the loop bounds what a tool returns, and the
/// journal holds the bounded text, so a served result is padded to the
/// length the note `… [N more bytes]` says (cut where the original was cut).
#[must_use]
pub fn unbounded(recorded: &str, max: usize) -> String {
    if recorded.len() <= max {
        return recorded.to_owned();
    }
    let Some(at) = recorded.rfind("… [") else {
        return recorded.to_owned();
    };
    let (prefix, note) = recorded.split_at(at);
    let Some(n) = note
        .strip_prefix("… [")
        .and_then(|r| r.strip_suffix(" more bytes]"))
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return recorded.to_owned();
    };
    let gap = max.saturating_sub(prefix.len());
    if prefix.len() > max || gap > 3 {
        return recorded.to_owned();
    }
    // The cut fell `gap` bytes before `max` because a character straddled
    // it: start the padding with a character that does the same.
    let first = match gap {
        0 => "",
        1 => "é",
        2 => "€",
        _ => "😀",
    };
    if n < first.len() {
        return recorded.to_owned();
    }
    let mut out = String::with_capacity(prefix.len() + n);
    out.push_str(prefix);
    out.push_str(first);
    out.extend(std::iter::repeat_n('x', n - first.len()));
    out
}

/// A `Duration` as its `Debug` form writes it (`2s`, `1.5s`, `250ms`, `3µs`, `7ns`).
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = text.split_at(split);
    let scale: u128 = match unit {
        "s" => 1_000_000_000,
        "ms" => 1_000_000,
        "µs" => 1_000,
        "ns" => 1,
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let mut nanos = int.parse::<u128>().ok()?.checked_mul(scale)?;
    let mut place = scale;
    for d in frac.chars() {
        place /= 10;
        nanos += u128::from(d.to_digit(10)?) * place;
    }
    let nanos = u64::try_from(nanos).ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The provider error a `CompletionFailed` recorded, rebuilt from its text
/// (the loop journals `error.to_string()`), so the loop takes the same
/// retry decision and records the same fact. A text of no known shape
/// becomes `Malformed`, whose different text the comparison then reports.
#[must_use]
pub fn provider_error(text: &str) -> ProviderError {
    if let Some(d) = text
        .strip_prefix("no answer within ")
        .and_then(parse_debug_duration)
    {
        return ProviderError::Timeout(d);
    }
    if let Some(rest) = text.strip_prefix("cannot reach the provider: ") {
        return ProviderError::Connect(rest.to_owned());
    }
    if let Some(rest) = text.strip_prefix("rate limited (HTTP 429)") {
        let retry_after = rest.strip_prefix(", retry after ").and_then(parse_debug_duration);
        return ProviderError::RateLimited { retry_after };
    }
    if let Some((status, body)) = text
        .strip_prefix("HTTP ")
        .and_then(|r| r.split_once(": "))
        .and_then(|(s, b)| Some((s.parse::<u16>().ok()?, b)))
    {
        return ProviderError::Status {
            status,
            body: body.to_owned(),
        };
    }
    if let Some(rest) = text.strip_prefix("malformed answer: ") {
        return ProviderError::Malformed(rest.to_owned());
    }
    if let Some(rest) = text.strip_prefix("provider configuration: ") {
        return ProviderError::Config(rest.to_owned());
    }
    if let Some(step) = text
        .strip_prefix("the script has no answer for step ")
        .and_then(|s| s.parse().ok())
    {
        return ProviderError::ScriptExhausted(step);
    }
    ProviderError::Malformed(text.to_owned())
}

/// The context a run's start loaded, decided again by `gate`: each
/// reference's read is checked by the current policies (the decision is
/// the replayed fact), and its journaled content is served when they still
/// allow it. The file is not read again.
#[must_use]
pub fn rehydrate(recorded: &RecordedRun, gate: &PolicyGate) -> Vec<EventBody> {
    rehydrate_as(recorded, gate, &recorded.run)
}

/// [`rehydrate`] for run `run` (a fork of `recorded`): its facts name
/// `run`, so they are indexed under the run whose stream holds them, not
/// under the origin.
#[must_use]
pub fn rehydrate_as(recorded: &RecordedRun, gate: &PolicyGate, run: &str) -> Vec<EventBody> {
    let mut out = Vec::new();
    let mut allowed = false;
    for (i, e) in recorded.hydration().into_iter().enumerate() {
        match &e.body {
            EventBody::PolicyDecided { request, .. } => {
                let path = serde_json::from_str::<Value>(request)
                    .ok()
                    .and_then(|v| v["context"]["args"]["path"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let call = ToolCall {
                    id: format!("hydrate-{}", i + 1),
                    name: "read_file".into(),
                    arguments: serde_json::json!({ "path": path }).to_string(),
                };
                let checked =
                    stele_engine::reasoning::check(gate, run, &recorded.agent, &recorded.priority(), &call);
                allowed = matches!(checked.gate, stele_engine::orga::Gate::Allow { .. });
                out.push(checked.decided);
            }
            // Recalled knowledge: no file decision precedes it.
            EventBody::ContextHydrated { reference, .. }
                if reference.starts_with(stele_engine::context::rag::KNOWLEDGE_REFERENCE) =>
            {
                out.push(renamed(&e.body, run));
            }
            other => {
                if allowed {
                    out.push(renamed(other, run));
                }
            }
        }
    }
    out
}

/// A hydration fact as run `run` records it.
fn renamed(body: &EventBody, run: &str) -> EventBody {
    let mut body = body.clone();
    if let EventBody::ContextHydrated { run: r, .. } = &mut body {
        run.clone_into(r);
    }
    body
}

/// A journaled completion as the provider gave it.
///
/// # Errors
/// Its `tool_calls` is not the JSON array the loop writes.
pub fn completion_of(e: &Event) -> Result<Option<Result<Completion, ProviderError>>> {
    Ok(match &e.body {
        EventBody::CompletionReceived {
            content,
            tool_calls,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            ..
        } => {
            let tool_calls: Vec<ToolCall> = serde_json::from_str(tool_calls).map_err(|err| Error::Event {
                seq: e.seq.0,
                reason: format!("tool_calls is not a JSON array of {{id, name, arguments}}: {err}"),
            })?;
            Some(Ok(Completion {
                content: content.clone(),
                tool_calls,
                finish_reason: finish_reason.clone(),
                prompt_tokens: *prompt_tokens,
                completion_tokens: *completion_tokens,
            }))
        }
        EventBody::CompletionFailed { error, .. } => Some(Err(provider_error(error))),
        _ => None,
    })
}

/// A journaled tool result.
#[must_use]
pub fn tool_result_of(e: &Event) -> Option<ToolOutcome> {
    match &e.body {
        EventBody::ToolReturned {
            call_id,
            ok,
            output,
            duration_ms,
            ..
        } => Some(ToolOutcome {
            call_id: call_id.clone(),
            ok: *ok,
            output: output.clone(),
            duration_ms: *duration_ms,
        }),
        _ => None,
    }
}

/// A journaled approval decision: (call, approved, approver, reason).
pub type Approval = (String, bool, String, String);

/// A journaled approval decision.
#[must_use]
pub fn approval_of(e: &Event) -> Option<Approval> {
    match &e.body {
        EventBody::ApprovalDecided {
            call_id,
            approved,
            approver,
            reason,
            ..
        } => Some((call_id.clone(), *approved, approver.clone(), reason.clone())),
        _ => None,
    }
}

/// How a driven run ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "ended", rename_all = "snake_case")]
pub enum Ended {
    /// It finished.
    Finished {
        /// `completed`, `failed`, `stuck`, …
        outcome: String,
        /// The answer or the error.
        answer: String,
        /// Steps taken.
        steps: u32,
    },
    /// It waits for decisions on these calls (call id, reason).
    Parked {
        /// The calls.
        awaiting: Vec<(String, String)>,
    },
}

/// Drives a run from its start through `driver` (with the context
/// `hydration` loaded before its first completion), feeding `approvals` to
/// it whenever it parks.
///
/// # Errors
/// The sink refused facts, or an approval named a call that is not waiting.
pub async fn drive_from_start(
    driver: &Driver,
    spec: RunSpec,
    input: String,
    parent: Option<String>,
    hydration: Vec<EventBody>,
    mut approvals: VecDeque<Approval>,
    sink: &mut dyn Sink,
) -> Result<Ended, String> {
    let lp = AgentLoop::start_hydrated(spec, input, parent, hydration);
    let mut stop = driver.drive(lp, sink).await?;
    loop {
        match stop {
            Stop::Finished(f) => {
                return Ok(Ended::Finished {
                    outcome: f.outcome,
                    answer: f.answer,
                    steps: f.steps,
                });
            }
            Stop::Parked(p) => match approvals.pop_front() {
                None => {
                    return Ok(Ended::Parked {
                        awaiting: p.awaiting(),
                    });
                }
                Some((call, approved, approver, reason)) => {
                    stop = driver
                        .decide(p, &call, approved, &approver, &reason, sink)
                        .await?;
                }
            },
        }
    }
}

/// A current-thread runtime with a paused clock: sleeps (retry backoffs)
/// end at once, and nothing waits on the wall clock.
///
/// # Errors
/// The runtime could not be built.
pub fn paused_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))
}

// ---------------------------------------------------------------------------
// Comparison

/// A test hook: a decider deliberately changed. It sees each produced fact
/// (with its index among the run's facts) before the comparison and may
/// alter it.
pub type Perturb<'a> = &'a mut (dyn FnMut(usize, &mut EventBody) + Send);

struct Compare<'a, 'p> {
    expected: &'a [&'a Event],
    pos: usize,
    clock: Arc<ReplayClock>,
    perturb: Option<Perturb<'p>>,
    /// (index, the replayed fact that differs; None: the replay produced
    /// nothing there).
    mismatch: Option<(usize, Option<EventBody>)>,
    /// The sets the next step's decisions are made under.
    sets: &'a Sets,
    /// Whether the run journaled its tool lists: one recorded before
    /// `ToolsOffered` existed has none, and the replay's are not compared.
    offers_recorded: bool,
}

const DIVERGED: &str = "replay diverged";

impl Sink for Compare<'_, '_> {
    fn record<'s>(
        &'s mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Seq>, String>> + Send + 's>> {
        let given = facts.len();
        let mut seqs = Vec::with_capacity(given);
        for mut fact in facts {
            if !self.offers_recorded && matches!(fact, EventBody::ToolsOffered { .. }) {
                continue;
            }
            if let Some(p) = self.perturb.as_mut() {
                p(self.pos, &mut fact);
            }
            match self.expected.get(self.pos) {
                Some(e) if e.body == fact => {
                    seqs.push(e.seq);
                    self.pos += 1;
                    self.clock.set(self.pos);
                }
                _ => {
                    self.mismatch = Some((self.pos, Some(fact)));
                    return Box::pin(async { Err(DIVERGED.to_owned()) });
                }
            }
        }
        self.sets.follow(self.expected.get(self.pos).copied());
        // A fact passed over has no seq: then none at all (see `Sink::record`).
        if seqs.len() != given {
            seqs.clear();
        }
        Box::pin(async move { Ok(seqs) })
    }
}

/// One event on the path to a divergence.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PathEvent {
    /// Its seq.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// One line about it.
    pub summary: String,
}

/// Where replay and journal part.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Divergence {
    /// The position among the run's facts (0-based).
    pub index: usize,
    /// The seq of the recorded fact there (`None`: the replay produced a
    /// fact after the run's last one).
    pub seq: Option<u64>,
    /// The recorded body (`None`: the journal has none there).
    pub recorded: Option<Value>,
    /// The replayed body (`None`: the replay produced none there).
    pub replayed: Option<Value>,
    /// Field by field.
    pub fields: Vec<FieldDiff>,
    /// What happened, in a sentence.
    pub note: String,
    /// The run's events before it (the last [`PATH_EVENTS`]), and how
    /// many earlier ones are not shown.
    pub path: Vec<PathEvent>,
    /// Earlier events of the run not in `path`.
    pub path_omitted: usize,
}

/// The result of a replay.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The run.
    pub run: String,
    /// Facts compared and found identical.
    pub identical: usize,
    /// Facts the run recorded.
    pub recorded: usize,
    /// Calls still awaiting approval where the replay stopped.
    pub awaiting: Vec<String>,
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
}

impl Report {
    /// Whether every fact was reproduced.
    #[must_use]
    pub fn is_identical(&self) -> bool {
        self.divergence.is_none()
    }
}

/// One line about an event (for paths and steppers).
#[must_use]
pub fn summary(body: &EventBody) -> String {
    fn cut(s: &str) -> String {
        let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if one.chars().count() > 60 {
            format!("{}…", one.chars().take(59).collect::<String>())
        } else {
            one
        }
    }
    match body {
        EventBody::RunStarted {
            agent, input, parent, ..
        } => format!(
            "{agent} asked {:?}{}",
            cut(input),
            parent
                .as_ref()
                .map(|p| format!(" (fork of {p})"))
                .unwrap_or_default()
        ),
        EventBody::RunForked { origin, at, edit, .. } => format!(
            "forked from {origin} at seq {at}{}",
            if edit.is_empty() {
                ""
            } else {
                " with an edited input"
            }
        ),
        EventBody::PhaseEntered { step, phase, .. } => format!("step {step}: {phase}"),
        EventBody::CompletionReceived {
            step,
            content,
            tool_calls,
            ..
        } => {
            let calls: Vec<ToolCall> = serde_json::from_str(tool_calls).unwrap_or_default();
            let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
            if names.is_empty() {
                format!("step {step}: answered {:?}", cut(content))
            } else {
                format!("step {step}: {:?} → calls {}", cut(content), names.join(", "))
            }
        }
        EventBody::CompletionFailed {
            step, attempt, error, ..
        } => {
            format!("step {step}: attempt {attempt} failed: {}", cut(error))
        }
        EventBody::ActionProposed {
            call_id,
            tool,
            arguments,
            ..
        } => {
            format!("{call_id}: {tool} {}", cut(arguments))
        }
        EventBody::PolicyDecided {
            verdict,
            policies,
            detail,
            ..
        } => format!("{verdict} by [{}] {}", policies.join(", "), cut(detail)),
        EventBody::ToolCalled { call_id, tool, .. } => format!("{call_id}: {tool} dispatched"),
        EventBody::ToolReturned {
            call_id, ok, output, ..
        } => {
            format!("{call_id}: {} {}", if *ok { "ok" } else { "error" }, cut(output))
        }
        EventBody::ApprovalRequested { call_id, reason, .. } => {
            format!("{call_id} awaits approval: {}", cut(reason))
        }
        EventBody::ApprovalDecided {
            call_id,
            approved,
            approver,
            ..
        } => format!(
            "{call_id} {} by {approver}",
            if *approved { "approved" } else { "rejected" }
        ),
        EventBody::RunFinished {
            outcome,
            answer,
            steps,
            ..
        } => {
            format!("{outcome} after {steps} steps: {}", cut(answer))
        }
        EventBody::Annotated { text, .. } => cut(text),
        EventBody::ToolsOffered { step, offered, .. } => format!(
            "step {step}: offers {}",
            cut(&offered
                .tools
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "))
        ),
        other => cut(&serde_json::to_string(other).unwrap_or_default()),
    }
}

fn body_json(b: &EventBody) -> Value {
    serde_json::to_value(b).unwrap_or(Value::Null)
}

/// Replays `recorded` through the current deciders with `gate` and
/// compares every fact. `perturb` is a test hook (see [`Perturb`]).
///
/// # Errors
/// The run's spec cannot be built, a journaled completion is unreadable,
/// or the runtime did not start. A divergence is not an error: it is in the
/// report.
pub fn replay(
    recorded: &RecordedRun,
    gate: Arc<PolicyGate>,
    settings: &Settings,
    perturb: Option<Perturb<'_>>,
) -> Result<Report> {
    replay_under(recorded, &[gate], settings, perturb)
}

/// The policy sets a replay decides under. The journal says which set
/// made each decision (`PolicyDecided.policy_set`), not what it held: a
/// step's decisions are made again under the given set with that hash, so
/// a run that spans a policy reload replays identically when every set it
/// ran under is given; a step decided by a set not given is decided by the
/// first, and the difference is the divergence it should be.
#[derive(Debug)]
struct Sets {
    gates: Vec<Arc<PolicyGate>>,
    /// What the driver decides with: swapped before each step's decisions.
    live: LiveGate,
}

impl Sets {
    fn new(gates: &[Arc<PolicyGate>]) -> Option<Sets> {
        let first = gates.first()?;
        Some(Sets {
            gates: gates.to_vec(),
            live: LiveGate::new(Arc::clone(first)),
        })
    }

    /// The given set with hash `hash`, else the first.
    fn by_hash(&self, hash: &str) -> &Arc<PolicyGate> {
        self.gates
            .iter()
            .find(|g| g.hash() == hash)
            .unwrap_or(&self.gates[0])
    }

    /// Before the decision `next` (the run's next journaled fact): puts the
    /// set that made it in force, when it is a decision.
    fn follow(&self, next: Option<&Event>) {
        if self.gates.len() > 1
            && let Some(EventBody::PolicyDecided { policy_set, .. }) = next.map(|e| &e.body)
        {
            self.live.replace(Arc::clone(self.by_hash(policy_set)));
        }
    }
}

/// [`replay`] under several policy sets, the first the current one: each
/// step's decisions are made again under the set (of `gates`) whose hash
/// the journal recorded for them, so a run that spans a policy reload
/// replays identically given the sets before and after it.
///
/// # Errors
/// As [`replay`]; also no set at all.
pub fn replay_under(
    recorded: &RecordedRun,
    gates: &[Arc<PolicyGate>],
    settings: &Settings,
    perturb: Option<Perturb<'_>>,
) -> Result<Report> {
    let sets = Sets::new(gates).ok_or_else(|| Error::Run {
        run: recorded.run.clone(),
        reason: "no policy set to replay its decisions with".to_owned(),
    })?;
    // A fork was offered the built-in tools only (`fork::fork`).
    let spec = if recorded.parent.is_some() {
        recorded.base_spec(&recorded.run, settings)?
    } else {
        recorded.spec(&recorded.run, settings)?
    };
    let facts = recorded.facts();
    let mut answers = VecDeque::new();
    let mut approvals = VecDeque::new();
    for e in &facts {
        if let Some(c) = completion_of(e)? {
            answers.push_back(c);
        }
        approvals.extend(approval_of(e));
    }
    // The start's reads were decided by the set of the first of them.
    let start_set = recorded.hydration().into_iter().find_map(|e| match &e.body {
        EventBody::PolicyDecided { policy_set, .. } => Some(policy_set.clone()),
        _ => None,
    });
    let hydration = rehydrate(recorded, sets.by_hash(start_set.as_deref().unwrap_or_default()));
    let clock = Arc::new(ReplayClock::new(&facts));
    let driver = Driver {
        provider: Arc::new(Served::new(recorded.provider_name(), answers, None)),
        gate: sets.live.clone(),
        tools: Arc::new(ServedTools::new(
            facts.iter().copied(),
            spec.max_tool_output,
            Some(Arc::clone(&clock)),
            None,
        )),
        agent: recorded.agent.clone(),
        priority: recorded.priority(),
        knowledge: Some(Arc::new(ServedKnowledge::new(facts.iter().copied(), None))),
    };
    let mut sink = Compare {
        expected: &facts,
        pos: 0,
        clock,
        perturb,
        mismatch: None,
        sets: &sets,
        offers_recorded: facts
            .iter()
            .any(|e| matches!(e.body, EventBody::ToolsOffered { .. })),
    };
    let rt = paused_runtime()?;
    let ended = rt.block_on(drive_from_start(
        &driver,
        spec,
        recorded.input.clone(),
        recorded.parent.clone(),
        hydration,
        approvals,
        &mut sink,
    ));
    let (index, replayed, note, awaiting) = match (ended, sink.mismatch.take()) {
        (_, Some((index, replayed))) => {
            let note = mismatch_note(facts.get(index).copied(), replayed.as_ref());
            (index, replayed, note, Vec::new())
        }
        (Ok(ended), None) if sink.pos == facts.len() => {
            return Ok(Report {
                run: recorded.run.clone(),
                identical: sink.pos,
                recorded: facts.len(),
                awaiting: match ended {
                    Ended::Parked { awaiting } => awaiting.into_iter().map(|(c, _)| c).collect(),
                    Ended::Finished { .. } => Vec::new(),
                },
                divergence: None,
            });
        }
        (Ok(ended), None) => {
            let how = match ended {
                Ended::Finished { .. } => "finished".to_owned(),
                Ended::Parked { awaiting } => format!(
                    "parked awaiting {} with no journaled decision left",
                    awaiting
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            (
                sink.pos,
                None,
                format!("the replay {how} here, but the journal goes on"),
                Vec::new(),
            )
        }
        (Err(why), None) => (sink.pos, None, format!("the replay stopped: {why}"), Vec::new()),
    };
    let rec = facts.get(index);
    let recorded_json = rec.map(|e| body_json(&e.body));
    let replayed_json = replayed.as_ref().map(body_json);
    let fields = diff_values(
        recorded_json.as_ref().unwrap_or(&Value::Null),
        replayed_json.as_ref().unwrap_or(&Value::Null),
    );
    // The path: the run's events before the divergent one.
    let before: Vec<&Event> = match rec {
        Some(r) => recorded.events.iter().filter(|e| e.seq < r.seq).collect(),
        None => recorded.events.iter().collect(),
    };
    let omitted = before.len().saturating_sub(PATH_EVENTS);
    let path = before[omitted..]
        .iter()
        .map(|e| PathEvent {
            seq: e.seq.0,
            kind: e.body.kind().to_owned(),
            summary: summary(&e.body),
        })
        .collect();
    Ok(Report {
        run: recorded.run.clone(),
        identical: index,
        recorded: facts.len(),
        awaiting,
        divergence: Some(Divergence {
            index,
            seq: rec.map(|e| e.seq.0),
            recorded: recorded_json,
            replayed: replayed_json,
            fields,
            note,
            path,
            path_omitted: omitted,
        }),
    })
}

/// What a mismatch between the recorded fact (`None`: the run recorded
/// no more) and the replayed one (`None`: the replay produced none) is, in a
/// sentence; a tool list that differs names the tools.
fn mismatch_note(recorded: Option<&Event>, replayed: Option<&EventBody>) -> String {
    let Some(e) = recorded else {
        return format!(
            "the replay produced a {} after the run's last recorded fact",
            kind_of(replayed)
        );
    };
    if let Some(why) = replayed.and_then(|r| offered_change(&e.body, r)) {
        return format!(
            "the replay offers the model other tools than seq {} recorded: {why}",
            e.seq
        );
    }
    if let EventBody::ToolsOffered { step, offered, .. } = &e.body {
        let names: Vec<&str> = offered.tools.iter().map(|t| t.name.as_str()).collect();
        return format!(
            "the run recorded the tools offered at step {step} ({}), but the replay {} there",
            names.join(", "),
            if replayed.is_some() {
                "offers the same tools as before"
            } else {
                "produced nothing"
            }
        );
    }
    format!(
        "the replay produced a different {} than seq {}",
        kind_of(replayed),
        e.seq
    )
}

/// What differs between a recorded and a replayed `ToolsOffered`, naming
/// the tools (`None`: they are not both tool lists, or the lists are equal).
fn offered_change(recorded: &EventBody, replayed: &EventBody) -> Option<String> {
    let (
        EventBody::ToolsOffered {
            step, offered: was, ..
        },
        EventBody::ToolsOffered { offered: now, .. },
    ) = (recorded, replayed)
    else {
        return None;
    };
    let why = stele_engine::offered::change(was, now);
    (!why.is_empty()).then(|| format!("at step {step}, {why}"))
}

fn kind_of(b: Option<&EventBody>) -> &'static str {
    b.map_or("nothing", EventBody::kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbounded_round_trips_through_bounded() {
        let max = 16;
        for original in [
            "short".to_owned(),
            "x".repeat(40),
            format!("{}{}", "a".repeat(15), "é".repeat(10)),
            format!("{}{}", "a".repeat(14), "€".repeat(10)),
            format!("{}{}", "a".repeat(13), "😀".repeat(10)),
        ] {
            let recorded = stele_engine::orga::bounded(&original, max);
            let served = unbounded(&recorded, max);
            assert_eq!(stele_engine::orga::bounded(&served, max), recorded, "{original}");
        }
    }

    /// A provider that always fails (retryably), to stand for the world.
    #[derive(Debug)]
    struct Down;

    impl Provider for Down {
        fn name(&self) -> &str {
            "down"
        }
        fn complete<'a>(&'a self, _: &'a CompletionRequest) -> CompletionFuture<'a> {
            Box::pin(async { Err(ProviderError::Connect("refused".into())) })
        }
    }

    #[test]
    fn only_journaled_answers_skip_the_backoff() {
        let request = CompletionRequest {
            model: "m".into(),
            messages: Vec::new(),
            tools: Vec::new(),
            max_tokens: 0,
        };
        let journaled = VecDeque::from([Err(ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        })]);
        let served = Served::new("p".into(), journaled, Some(Arc::new(Down)));
        let rt = paused_runtime().expect("runtime");
        assert!(rt.block_on(served.complete(&request)).is_err());
        assert!(
            served.served_from_journal(),
            "a journaled failure was waited when recorded"
        );
        assert!(rt.block_on(served.complete(&request)).is_err());
        assert!(!served.served_from_journal(), "a live failure backs off");
        // A replay has no live provider: everything is the journal's.
        let replay = Served::new("p".into(), VecDeque::new(), None);
        assert!(rt.block_on(replay.complete(&request)).is_err());
        assert!(replay.served_from_journal());
    }

    #[test]
    fn provider_errors_round_trip_through_their_text() {
        for e in [
            ProviderError::Timeout(Duration::from_millis(1500)),
            ProviderError::Timeout(Duration::from_secs(60)),
            ProviderError::Connect("refused".into()),
            ProviderError::RateLimited { retry_after: None },
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_millis(10)),
            },
            ProviderError::Status {
                status: 503,
                body: "busy: try later".into(),
            },
            ProviderError::Malformed("no choices".into()),
            ProviderError::Config("no key".into()),
            ProviderError::ScriptExhausted(4),
        ] {
            let back = provider_error(&e.to_string());
            assert_eq!(back, e, "{e}");
        }
    }
}
