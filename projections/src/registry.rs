//! The agent registry: every registered agent, its definition as
//! registered, and its lifecycle state — folded from `AgentRegistered` and
//! `AgentStateChanged`. The lifecycle decider in `engine` reads it.

use std::collections::BTreeMap;

use stele_journal::{AgentState, ArchivedEventBody, EventRef};

use crate::Projection;

/// One agent as the journal knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentEntry {
    /// Current lifecycle state.
    pub state: AgentState,
    /// The definition (TOML) as registered.
    pub definition: String,
    /// BLAKE3 of the definition (hex).
    pub definition_hash: String,
    /// The `AgentRegistered` event.
    pub registered_seq: u64,
    /// The last state change.
    pub changed_seq: u64,
    /// State changes since registration.
    pub transitions: u64,
    /// Reason given for the last change.
    pub last_reason: String,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRegistry {
    /// Agents by name.
    pub agents: BTreeMap<String, AgentEntry>,
}

impl Projection for AgentRegistry {
    const NAME: &'static str = "registry";
    const VERSION: u32 = 1;

    fn apply(&mut self, e: &EventRef) {
        let seq = e.seq().0;
        match e.body() {
            ArchivedEventBody::AgentRegistered {
                agent,
                definition,
                definition_hash,
            } => {
                self.agents.insert(
                    agent.to_string(),
                    AgentEntry {
                        state: AgentState::Initializing,
                        definition: definition.to_string(),
                        definition_hash: hex::encode(definition_hash),
                        registered_seq: seq,
                        changed_seq: seq,
                        transitions: 0,
                        last_reason: "registered".into(),
                    },
                );
            }
            ArchivedEventBody::AgentStateChanged {
                agent, to, reason, ..
            } => {
                if let Some(a) = self.agents.get_mut(agent.as_str()) {
                    a.state = to.to_native();
                    a.changed_seq = seq;
                    a.transitions += 1;
                    // Reuse the string's allocation: state changes are the
                    // bulk of a registry's events.
                    a.last_reason.clear();
                    a.last_reason.push_str(reason.as_str());
                }
            }
            _ => {}
        }
    }
}
