//! The engine: deciders (pure functions from a projection's state and a
//! command to new facts) and effect runners (LLM inference, tools,
//! sandboxes, the bus) that perform effects and journal their results.
//!
//! - [`agent`]: agent definitions (TOML) and their validation;
//! - [`config`]: `stele.toml` and its environment overrides;
//! - [`lifecycle`]: the lifecycle decider (registration, transitions);
//! - [`scheduler`]: the scheduler decider (priority queue, placement, preemption);
//! - [`llm`]: what the reasoning loop exchanges with inference providers;
//! - [`nats`]: NATS connections from `[nats]` (URL, TLS, credentials), shared
//!   by the binary's JetStream feed and the bus's link to peers;
//! - [`openai`]: the OpenAI chat-completions provider (HTTP, one attempt per
//!   call, typed failures);
//! - [`scripted`]: the scripted provider answering from a JSON fixture (demo,
//!   deterministic tests);
//! - [`offered`]: the tool list offered to a model as the journal records
//!   it (names, schema hashes, a list hash) and the words for a change;
//! - [`orga`]: the reasoning loop (Observe–Reason–Gate–Act) as a typestate
//!   machine whose transitions record their facts;
//! - [`policy`]: the Cedar policy gate (policy sets validated against a
//!   schema, verdicts at every enforcement point, default deny);
//! - [`reasoning`]: the driver of a reasoning run (provider, gate, tools)
//!   and its rebuild from the journal;
//! - [`bus`]: the communication bus (direct, pub/sub, request/response;
//!   AES-256-GCM, Ed25519, rate limits, the Cedar gate; peers over NATS)
//!   and the builtins `ask`, `delegate`, `send_to`, `parallel`, `race`;
//! - [`breaker`]: per-tool circuit breakers of a run (pure, clock readings
//!   handed in and journaled);
//! - [`saga`]: compensable steps of a run and their rollback, exactly once
//!   per journal record;
//! - [`context`]: the context store's decider, importance, search (BM25,
//!   temporal, vectors, hybrid), embedders, the RAG pipeline and the
//!   knowledge tools;
//! - [`hydrate`]: deterministic pre-hydration of a run's context from its
//!   task's references;
//! - [`tools`]: the built-in tools and tool profiles;
//! - [`mcp`]: the MCP client (stdio and streamable HTTP servers), SchemaPin
//!   verification with keys pinned per tool domain, and the tool runner
//!   that offers MCP tools to reasoning runs;
//! - [`runtime`]: the runtime decider `stele up` runs: lifecycle + scheduler +
//!   execution modes, recovery and shutdown, answering with facts and effects;
//! - [`process`]: the native process effect runner (rlimits / cgroup v2,
//!   timeouts, bounded output, sampling).
//! - [`sandbox`]: the executor trait and its three tiers (native, docker
//!   with runc, gvisor with runsc through dockerd's API), orphan reaping by
//!   label, the locally built base image.
//!
//! Deciders never read the clock, draw randomness or touch the network;
//! whatever they need from the world arrives as a journaled event.

pub mod agent;
pub mod breaker;
pub mod bus;
pub mod config;
pub mod context;
pub mod hydrate;
pub mod lifecycle;
pub mod llm;
pub mod mcp;
pub mod nats;
pub mod offered;
pub mod openai;
pub mod orga;
pub mod policy;
pub mod process;
pub mod reasoning;
pub mod runtime;
pub mod saga;
pub mod sandbox;
pub mod scheduler;
pub mod scripted;
pub mod tools;

pub use agent::{AgentDefinition, DefinitionError, ExecutionMode, Priority, ResourceLimits, Runs};
pub use config::Config;
pub use lifecycle::{LifecycleCommand, Rejection, agent_stream, decide};
