//! The engine: deciders (pure functions from a projection's state and a
//! command to new facts) and effect runners (LLM inference, tools,
//! sandboxes, the bus) that perform effects and journal their results.
//!
//! - [`agent`]: agent definitions (TOML) and their validation;
//! - [`config`]: `stele.toml` and its environment overrides;
//! - [`lifecycle`]: the lifecycle decider (registration, transitions);
//! - [`scheduler`]: the scheduler decider (priority queue, placement, preemption).
//!
//! Deciders never read the clock, draw randomness or touch the network;
//! whatever they need from the world arrives as a journaled event. The
//! registry, lifecycle, scheduler and runners arrive with the engine issue.

pub mod agent;
pub mod config;
pub mod lifecycle;
pub mod scheduler;

pub use agent::{AgentDefinition, DefinitionError, ExecutionMode, Priority, ResourceLimits, Runs};
pub use config::Config;
pub use lifecycle::{LifecycleCommand, Rejection, agent_stream, decide};
