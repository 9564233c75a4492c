//! [`McpTools`]: the tool runner of a reasoning run for its MCP tools.
//! A call named `mcp__<server>__<tool>` that the run was offered goes to
//! the hub (its own Cedar check, `McpToolCalled`, the call,
//! `McpToolReturned`); every other call goes to `inner`. The driver
//! journals the result as the run's `ToolReturned`, which is what a replay
//! serves: no server is started again.
//!
//! Not here: discovery and verification (the hub does them before the run
//! is offered any MCP tool).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::hub::{Approval, Caller, McpHub};
use super::split_tool_name;
use crate::llm::ToolCall;
use crate::orga::ToolOutcome;
use crate::tools::{CallContext, CompensationFuture, ToolResult, ToolRunner};

/// Serves a run's MCP calls through the hub.
#[derive(Debug, Clone)]
pub struct McpTools {
    /// The hub.
    pub hub: Arc<McpHub>,
    /// The agent (the policy principal).
    pub agent: String,
    /// Its priority (a policy attribute).
    pub priority: String,
    /// The run, for correlation (`run-3/call_1`).
    pub run: String,
    /// The MCP tools the run was offered (`mcp__<server>__<tool>`); others
    /// are refused as unknown.
    pub offered: BTreeSet<String>,
    /// Every other tool.
    pub inner: Arc<dyn ToolRunner>,
}

impl McpTools {
    /// Whether `name` is one of this runner's MCP tools.
    #[must_use]
    pub fn serves(&self, name: &str) -> bool {
        split_tool_name(name).is_some()
    }

    async fn call(&self, call: &ToolCall) -> ToolResult {
        if !self.offered.contains(&call.name) {
            return Err(format!(
                "no tool named {:?} was offered to this run (its tool profile, or SchemaPin, left it out)",
                call.name
            ));
        }
        let (server, tool) =
            split_tool_name(&call.name).ok_or_else(|| format!("{:?} is not an MCP tool", call.name))?;
        let caller = Caller {
            agent: self.agent.clone(),
            priority: self.priority.clone(),
            correlation: format!("{}/{}", self.run, call.id),
        };
        // The driver's gate already decided this call (and parked it for a
        // human when a policy asked for one).
        self.hub
            .call(&caller, Approval::Obtained, server, tool, &call.arguments)
            .await
            .map_err(|e| e.to_string())?
    }
}

impl ToolRunner for McpTools {
    #[allow(clippy::disallowed_methods)] // an effect runner measures how long the effect took
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        ctx: &'a CallContext,
    ) -> Pin<Box<dyn Future<Output = ToolOutcome> + Send + 'a>> {
        if !self.serves(&call.name) {
            return self.inner.run(call, ctx);
        }
        Box::pin(async move {
            let started = std::time::Instant::now();
            let (ok, output) = match self.call(call).await {
                Ok(o) => (true, o),
                Err(e) => (false, e),
            };
            ToolOutcome {
                call_id: call.id.clone(),
                ok,
                output,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
        })
    }

    fn compensation<'a>(&'a self, call: &'a ToolCall) -> CompensationFuture<'a> {
        if self.serves(&call.name) {
            // An MCP tool's effect is the server's; MCP offers no undo.
            return Box::pin(async { None });
        }
        self.inner.compensation(call)
    }

    fn compensate<'a>(&'a self, action: &'a str) -> Pin<Box<dyn Future<Output = ToolResult> + Send + 'a>> {
        self.inner.compensate(action)
    }

    fn clock_ms(&self) -> u64 {
        self.inner.clock_ms()
    }
}

/// Offers a run the MCP tools its agent's profile selects: discovers (and
/// verifies, and journals) the servers the profile can reach, appends
/// their accepted tools to `spec.tools`, and puts an [`McpTools`] in front
/// of `inner`. Servers that fail are left out and returned beside (the run
/// goes on without their tools). A hub without servers changes nothing.
pub async fn attach(
    hub: Arc<McpHub>,
    def: &crate::agent::AgentDefinition,
    spec: &mut crate::orga::RunSpec,
    inner: Arc<dyn ToolRunner>,
) -> (Arc<dyn ToolRunner>, Vec<super::McpError>) {
    let crate::agent::Runs::Reasoning { tools, .. } = &def.runs else {
        return (inner, Vec::new());
    };
    if hub.servers().is_empty() {
        return (inner, Vec::new());
    }
    // The same profile `reasoning::spec_for` applies to the built-in tools.
    let patterns = if tools.is_empty() {
        vec!["*".to_owned()]
    } else {
        tools.clone()
    };
    let (specs, failed) = hub.specs(&patterns).await;
    let offered: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
    spec.tools.extend(specs);
    let runner = McpTools {
        hub,
        agent: def.name.clone(),
        priority: format!("{:?}", def.priority).to_lowercase(),
        run: spec.run.clone(),
        offered,
        inner,
    };
    (Arc::new(runner), failed)
}
