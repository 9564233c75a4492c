//! A run's state as of any of its events: its phase and step, the
//! conversation as the journal records it, the actions of the current step
//! with their verdicts and results, what awaits approval, tokens, outcome.
//! `stele at SEQ --view run --run RUN [--step K]`, `stele diff … --view run`
//! and `stele step RUN` show it.
//!
//! It is a fold over the run's own events (read through the journal's run
//! index, so as of any seq it reads only that run's events, never the whole
//! journal before it); it decides nothing and reads only recorded facts.

use std::collections::BTreeMap;

use stele_engine::llm::ToolCall;
use stele_journal::{Event, EventBody};

/// One entry of the conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Turn {
    /// The event it comes from.
    pub seq: u64,
    /// The step.
    pub step: u32,
    /// `user`, `assistant`, `tool`.
    pub role: String,
    /// Text.
    pub content: String,
    /// An assistant's tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A tool message's call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
}

/// A proposed action of the current step.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Action {
    /// The tool.
    pub tool: String,
    /// Arguments as proposed.
    pub arguments: String,
    /// The gate's verdict (empty: not decided yet).
    pub verdict: String,
    /// Its determining policies.
    pub policies: Vec<String>,
    /// `proposed`, `decided`, `awaiting_approval`, `approved`, `rejected`,
    /// `dispatched`, `returned`.
    pub status: String,
    /// The result, once returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Whether it succeeded, once returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunState {
    /// The run.
    pub run: String,
    /// The agent.
    pub agent: String,
    /// `RunStarted.parent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The last event applied.
    pub seq: u64,
    /// Events applied.
    pub events: u64,
    /// The step.
    pub step: u32,
    /// The phase (`reasoning`, `policy_check`, …, `finished`).
    pub phase: String,
    /// `running`, `awaiting_approval`, `finished`.
    pub state: String,
    /// The conversation, as recorded.
    pub conversation: Vec<Turn>,
    /// The actions of the current step, by call id.
    pub actions: BTreeMap<String, Action>,
    /// Calls awaiting approval, with the reason.
    pub awaiting: BTreeMap<String, String>,
    /// Failed completion attempts so far.
    pub failed_attempts: u32,
    /// Prompt tokens so far.
    pub prompt_tokens: u64,
    /// Completion tokens so far.
    pub completion_tokens: u64,
    /// How it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Its answer (or error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

impl RunState {
    /// The state after `events` (a run's events in seq order).
    #[must_use]
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> RunState {
        let mut s = RunState::default();
        for e in events {
            s.apply(e);
        }
        s
    }

    /// Applies one event of the run (others are counted and ignored).
    pub fn apply(&mut self, e: &Event) {
        self.seq = e.seq.0;
        self.events += 1;
        match &e.body {
            EventBody::RunStarted {
                run,
                agent,
                input,
                parent,
            } => {
                self.run.clone_from(run);
                self.agent.clone_from(agent);
                self.parent.clone_from(parent);
                self.state = "running".into();
                self.step = 1;
                self.conversation.push(Turn {
                    seq: e.seq.0,
                    step: 1,
                    role: "user".into(),
                    content: input.clone(),
                    ..Turn::default()
                });
            }
            EventBody::PhaseEntered { step, phase, .. } => {
                if *step != self.step {
                    self.actions.clear();
                }
                self.step = *step;
                self.phase.clone_from(phase);
            }
            EventBody::CompletionReceived {
                step,
                content,
                tool_calls,
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                self.prompt_tokens += u64::from(*prompt_tokens);
                self.completion_tokens += u64::from(*completion_tokens);
                self.conversation.push(Turn {
                    seq: e.seq.0,
                    step: *step,
                    role: "assistant".into(),
                    content: content.clone(),
                    tool_calls: serde_json::from_str(tool_calls).unwrap_or_default(),
                    call_id: None,
                });
            }
            EventBody::CompletionFailed { .. } => self.failed_attempts += 1,
            EventBody::ActionProposed {
                call_id,
                tool,
                arguments,
                ..
            } => {
                self.actions.insert(
                    call_id.clone(),
                    Action {
                        tool: tool.clone(),
                        arguments: arguments.clone(),
                        status: "proposed".into(),
                        ..Action::default()
                    },
                );
            }
            EventBody::PolicyDecided {
                request,
                verdict,
                policies,
                ..
            } => {
                // The decision is for the first proposed action of its tool
                // not yet decided (the loop checks calls in order).
                let tool = serde_json::from_str::<serde_json::Value>(request)
                    .ok()
                    .and_then(|v| v["resource"]["id"].as_str().map(str::to_owned));
                if let Some(a) = self
                    .actions
                    .values_mut()
                    .find(|a| a.verdict.is_empty() && Some(&a.tool) == tool.as_ref())
                {
                    a.verdict.clone_from(verdict);
                    a.policies.clone_from(policies);
                    a.status = "decided".into();
                }
            }
            EventBody::ApprovalRequested { call_id, reason, .. } => {
                self.awaiting.insert(call_id.clone(), reason.clone());
                self.state = "awaiting_approval".into();
                self.phase = "awaiting_approval".into();
                if let Some(a) = self.actions.get_mut(call_id) {
                    a.status = "awaiting_approval".into();
                }
            }
            EventBody::ApprovalDecided {
                call_id, approved, ..
            } => {
                self.awaiting.remove(call_id);
                if self.awaiting.is_empty() {
                    self.state = "running".into();
                }
                if let Some(a) = self.actions.get_mut(call_id) {
                    a.status = if *approved { "approved" } else { "rejected" }.into();
                }
            }
            EventBody::ToolCalled { call_id, .. } => {
                if let Some(a) = self.actions.get_mut(call_id) {
                    a.status = "dispatched".into();
                }
            }
            EventBody::ToolReturned {
                step,
                call_id,
                ok,
                output,
                ..
            } => {
                if let Some(a) = self.actions.get_mut(call_id) {
                    a.status = "returned".into();
                    a.output = Some(output.clone());
                    a.ok = Some(*ok);
                }
                self.conversation.push(Turn {
                    seq: e.seq.0,
                    step: *step,
                    role: "tool".into(),
                    content: if *ok {
                        output.clone()
                    } else {
                        format!("error: {output}")
                    },
                    tool_calls: Vec::new(),
                    call_id: Some(call_id.clone()),
                });
            }
            EventBody::RunFinished { outcome, answer, .. } => {
                self.state = "finished".into();
                self.phase = "finished".into();
                self.outcome = Some(outcome.clone());
                self.answer = Some(answer.clone());
                self.awaiting.clear();
            }
            _ => {}
        }
    }
}

/// The events of a run up to `seq` and, when `step` is given, up to the
/// end of that step (before the first event of a later step).
#[must_use]
pub fn upto(events: &[Event], seq: u64, step: Option<u32>) -> Vec<&Event> {
    let mut out = Vec::new();
    for e in events.iter().take_while(|e| e.seq.0 <= seq) {
        if let Some(k) = step
            && step_of(&e.body).is_some_and(|s| s > k)
        {
            break;
        }
        out.push(e);
    }
    out
}

/// The step an event is about, when it names one.
#[must_use]
pub fn step_of(body: &EventBody) -> Option<u32> {
    match body {
        EventBody::PhaseEntered { step, .. }
        | EventBody::CompletionReceived { step, .. }
        | EventBody::CompletionFailed { step, .. }
        | EventBody::ActionProposed { step, .. }
        | EventBody::ToolCalled { step, .. }
        | EventBody::ToolReturned { step, .. }
        | EventBody::ApprovalRequested { step, .. }
        | EventBody::ApprovalDecided { step, .. } => Some(*step),
        _ => None,
    }
}
