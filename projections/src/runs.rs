//! Reasoning runs: each run's agent, step, whether it is running, parked on
//! an approval or finished, and its outcome — folded from `RunStarted`,
//! `PhaseEntered`, `ApprovalRequested`, `ApprovalDecided` and
//! `RunFinished`. Run ids are numbered from it (`run-<n>`).

use imbl::OrdMap;

use stele_journal::{ArchivedEventBody, EventRef};

use crate::Projection;

/// One run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunView {
    /// The agent.
    pub agent: String,
    /// `running`, `awaiting_approval`, `finished`.
    pub state: String,
    /// The current (or last) step.
    pub step: u32,
    /// Calls waiting for a human, with the reason.
    pub awaiting: OrdMap<String, String>,
    /// How it ended.
    pub outcome: Option<String>,
    /// Its answer (or error).
    pub answer: Option<String>,
    /// The `RunStarted` event.
    pub started_seq: u64,
    /// The `RunFinished` event (0: not finished).
    pub finished_seq: u64,
    /// The run it was forked from (`run@seq`).
    pub parent: Option<String>,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunsView {
    /// Runs started, so the next is `run-<started + 1>`.
    pub started: u64,
    /// Runs by id.
    pub runs: OrdMap<String, RunView>,
}

impl RunsView {
    /// The id the next run gets.
    #[must_use]
    pub fn next_run(&self) -> String {
        format!("run-{}", self.started + 1)
    }
}

impl Projection for RunsView {
    const NAME: &'static str = "runs";
    const VERSION: u32 = 1;

    fn apply(&mut self, e: &EventRef) {
        match e.body() {
            ArchivedEventBody::RunStarted {
                run, agent, parent, ..
            } => {
                self.started += 1;
                self.runs.insert(
                    run.to_string(),
                    RunView {
                        agent: agent.to_string(),
                        state: "running".into(),
                        step: 1,
                        started_seq: e.seq().0,
                        parent: parent.as_ref().map(|p| p.to_string()),
                        ..RunView::default()
                    },
                );
            }
            ArchivedEventBody::PhaseEntered { run, step, .. } => {
                if let Some(r) = self.runs.get_mut(run.as_str()) {
                    r.step = step.to_native();
                }
            }
            ArchivedEventBody::ApprovalRequested {
                run, call_id, reason, ..
            } => {
                if let Some(r) = self.runs.get_mut(run.as_str()) {
                    r.awaiting.insert(call_id.to_string(), reason.to_string());
                    r.state = "awaiting_approval".into();
                }
            }
            ArchivedEventBody::ApprovalDecided { run, call_id, .. } => {
                if let Some(r) = self.runs.get_mut(run.as_str()) {
                    r.awaiting.remove(call_id.as_str());
                    if r.awaiting.is_empty() {
                        r.state = "running".into();
                    }
                }
            }
            ArchivedEventBody::RunFinished {
                run, outcome, answer, ..
            } => {
                if let Some(r) = self.runs.get_mut(run.as_str()) {
                    r.state = "finished".into();
                    r.outcome = Some(outcome.to_string());
                    r.answer = Some(answer.to_string());
                    r.finished_seq = e.seq().0;
                    r.awaiting.clear();
                }
            }
            _ => {}
        }
    }
}
