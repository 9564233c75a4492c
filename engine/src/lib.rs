//! The engine: deciders (pure functions from a projection's state and a
//! command to new facts) and effect runners (LLM inference, tools,
//! sandboxes, the bus) that perform effects and journal their results.
//!
//! - [`agent`]: agent definitions (TOML) and their validation;
//! - [`config`]: `stele.toml` and its environment overrides;
//! - [`lifecycle`]: the lifecycle decider (registration, transitions);
//! - [`scheduler`]: the scheduler decider (priority queue, placement, preemption);
//! - [`llm`]: what the reasoning loop exchanges with inference providers;
//! - [`openai`]: the OpenAI chat-completions provider (HTTP, one attempt per
//!   call, typed failures);
//! - [`scripted`]: the scripted provider answering from a JSON fixture (demo,
//!   deterministic tests);
//! - [`orga`]: the reasoning loop (Observe–Reason–Gate–Act) as a typestate
//!   machine whose transitions record their facts;
//! - [`policy`]: the Cedar policy gate (policy sets validated against a
//!   schema, verdicts at every enforcement point, default deny);
//! - [`reasoning`]: the driver of a reasoning run (provider, gate, tools)
//!   and its rebuild from the journal;
//! - [`tools`]: the built-in tools and tool profiles;
//! - [`runtime`]: the runtime decider `stele up` runs: lifecycle + scheduler +
//!   execution modes, recovery and shutdown, answering with facts and effects;
//! - [`process`]: the native process effect runner (rlimits / cgroup v2,
//!   timeouts, bounded output, sampling).
//!
//! Deciders never read the clock, draw randomness or touch the network;
//! whatever they need from the world arrives as a journaled event.

pub mod agent;
pub mod config;
pub mod lifecycle;
pub mod llm;
pub mod openai;
pub mod orga;
pub mod policy;
pub mod process;
pub mod reasoning;
pub mod runtime;
pub mod scheduler;
pub mod scripted;
pub mod tools;

pub use agent::{AgentDefinition, DefinitionError, ExecutionMode, Priority, ResourceLimits, Runs};
pub use config::Config;
pub use lifecycle::{LifecycleCommand, Rejection, agent_stream, decide};
