//! The agent lifecycle decider: registration and state transitions exactly
//! as the seed's Agent Lifecycle Controller diagram allows them.
//!
//! ```text
//! Initializing → Ready | Failed      Ready → Running | Terminated
//! Running → Suspended | Ready        Suspended → Running | Terminated
//! Failed → Terminated
//! ```
//!
//! `decide` is pure: it reads the registry projection and returns the facts
//! to append, or a [`Rejection`] — an illegal transition is never an event.
//! The caller appends the facts to the agent's stream (`agent:<name>`) in
//! the process that owns the journal, so no other decision interleaves.

use stele_journal::{AgentState, EventBody, StreamId};
use stele_projections::AgentRegistry;

use crate::agent::AgentDefinition;

/// What an operator or the runtime asks of the lifecycle.
#[derive(Clone, Debug)]
pub enum LifecycleCommand {
    /// Register a validated definition (its source text is what is stored).
    Register {
        /// The parsed definition.
        definition: Box<AgentDefinition>,
        /// Its TOML source.
        source: String,
    },
    /// Move an agent to another state.
    Transition {
        /// The agent.
        agent: String,
        /// The state to enter.
        to: AgentState,
        /// Why.
        reason: String,
    },
    /// Stop an agent for good (from Ready, Suspended or Failed).
    Stop {
        /// The agent.
        agent: String,
        /// Why.
        reason: String,
    },
}

impl LifecycleCommand {
    /// The agent the command (and every fact it yields) is about.
    #[must_use]
    pub fn agent(&self) -> &str {
        match self {
            LifecycleCommand::Register { definition, .. } => &definition.name,
            LifecycleCommand::Transition { agent, .. } | LifecycleCommand::Stop { agent, .. } => agent,
        }
    }
}

/// Why a command was refused. Nothing is appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The name is taken by an agent that is not terminated.
    #[error("agent {agent} is already registered ({state}); stop it before registering it again")]
    AlreadyRegistered {
        /// The agent.
        agent: String,
        /// Its state.
        state: &'static str,
    },
    /// No such agent.
    #[error("no agent named {agent} is registered")]
    UnknownAgent {
        /// The name asked for.
        agent: String,
    },
    /// The lifecycle does not allow this move.
    #[error("agent {agent} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The agent.
        agent: String,
        /// Its state.
        from: &'static str,
        /// The state asked for.
        to: &'static str,
    },
}

/// Whether the lifecycle allows `from → to`.
#[must_use]
pub fn allowed(from: AgentState, to: AgentState) -> bool {
    use AgentState::{Failed, Initializing, Ready, Running, Suspended, Terminated};
    matches!(
        (from, to),
        (Initializing, Ready | Failed)
            | (Ready, Running | Terminated)
            | (Running, Suspended | Ready)
            | (Suspended, Running | Terminated)
            | (Failed, Terminated)
    )
}

/// The stream an agent's facts go to.
///
/// # Panics
/// Never for a validated agent name (a subset of the stream id alphabet).
#[must_use]
pub fn agent_stream(agent: &str) -> StreamId {
    StreamId::new(format!("agent:{agent}")).expect("agent names are valid stream ids")
}

fn changed(agent: &str, from: AgentState, to: AgentState, reason: String) -> EventBody {
    EventBody::AgentStateChanged {
        agent: agent.to_owned(),
        from,
        to,
        reason,
    }
}

/// Decides a lifecycle command against the registry.
///
/// # Errors
/// A [`Rejection`] saying why nothing happens.
pub fn decide(registry: &AgentRegistry, command: LifecycleCommand) -> Result<Vec<EventBody>, Rejection> {
    match command {
        LifecycleCommand::Register { definition, source } => {
            let agent = definition.name;
            if let Some(existing) = registry.agents.get(&agent)
                && existing.state != AgentState::Terminated
            {
                return Err(Rejection::AlreadyRegistered {
                    agent,
                    state: existing.state.name(),
                });
            }
            let definition_hash = *blake3::hash(source.as_bytes()).as_bytes();
            Ok(vec![
                EventBody::AgentRegistered {
                    agent: agent.clone(),
                    definition: source,
                    definition_hash,
                },
                changed(
                    &agent,
                    AgentState::Initializing,
                    AgentState::Ready,
                    "definition valid".into(),
                ),
            ])
        }
        LifecycleCommand::Transition { agent, to, reason } => {
            let from = registry
                .agents
                .get(&agent)
                .map(|a| a.state)
                .ok_or_else(|| Rejection::UnknownAgent { agent: agent.clone() })?;
            if !allowed(from, to) {
                return Err(Rejection::IllegalTransition {
                    agent,
                    from: from.name(),
                    to: to.name(),
                });
            }
            Ok(vec![changed(&agent, from, to, reason)])
        }
        LifecycleCommand::Stop { agent, reason } => decide(
            registry,
            LifecycleCommand::Transition {
                agent,
                to: AgentState::Terminated,
                reason,
            },
        ),
    }
}
