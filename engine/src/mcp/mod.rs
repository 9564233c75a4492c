//! The MCP client: servers from `[mcp] servers` (stdio programs or
//! streamable-HTTP endpoints, through the `rmcp` SDK), their tools checked
//! against SchemaPin before any is offered, and every discovery,
//! verification, pin, call and result journaled.
//!
//! - [`schemapin`]: canonical schemas, ECDSA P-256 signatures, key
//!   fingerprints, the pins (a fold of the journal) and the verdict on one
//!   tool — pure;
//! - [`hub`]: [`McpHub`], the effect runner: connections (lazy, at most
//!   `max_concurrent_connections`, each within `connection_timeout_s`),
//!   `tools/list` + verification, `tools/call` through the Cedar gate,
//!   `resources/list|read`, every request within `call_timeout_s`;
//! - [`runner`]: [`McpTools`], the tool runner that serves `mcp__*` calls of
//!   a reasoning run through the hub and hands every other call on.
//!
//! MCP tools reach the model as `mcp__<server>__<tool>`, so agents' tool
//! profiles (`tools = ["mcp__files__*"]`) select them like built-in tools.
//! Their results come back as the run's `ToolReturned`, so a replay serves
//! them from the journal and never starts a server.
//!
//! Streams: `mcp:<server>` holds a server's facts (connected, tools
//! listed, each tool verified, policy decisions, calls, results, resource
//! reads); `mcp` holds the pins (`McpKeyPinned`, `McpKeyUnpinned`).

pub mod hub;
pub mod runner;
pub mod schemapin;

pub use hub::{Approval, Caller, McpHub, OfferedTool, ServerTools};
pub use runner::McpTools;

/// The prefix of an MCP tool's name as the model sees it.
pub const TOOL_PREFIX: &str = "mcp__";
/// The stream of the pins.
pub const PIN_STREAM: &str = "mcp";
/// Largest tool output (text) journaled and returned; more is cut.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Largest tool listing (JSON) a server may serve: it is journaled whole.
pub const MAX_TOOLS_JSON_BYTES: usize = 512 * 1024;
/// Most tools one server may list.
pub const MAX_TOOLS: usize = 256;

/// The model-facing name of `tool` on `server`.
#[must_use]
pub fn tool_name(server: &str, tool: &str) -> String {
    format!("{TOOL_PREFIX}{server}__{tool}")
}

/// `(server, tool)` of a model-facing name (`mcp__<server>__<tool>`).
/// Server names never hold `__` (`[a-z0-9-]`), so the first `__` after the
/// prefix ends the server.
#[must_use]
pub fn split_tool_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(TOOL_PREFIX)?;
    let (server, tool) = rest.split_once("__")?;
    (!server.is_empty() && !tool.is_empty()).then_some((server, tool))
}

/// Whether a model may be offered an MCP tool named `tool` (OpenAI-style
/// function names: ASCII letters, digits, `_`, `-`, and the whole
/// `mcp__<server>__<tool>` at most 64 characters).
#[must_use]
pub fn offerable_name(server: &str, tool: &str) -> bool {
    !tool.is_empty()
        && tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && tool_name(server, tool).len() <= 64
}

/// `text` cut to at most `max` bytes on a character boundary, with a note
/// of how much was cut.
#[must_use]
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes cut)", &text[..end], text.len() - end)
}

/// What went wrong talking to an MCP server.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// No server of that name is configured.
    #[error("no MCP server named {name:?} in [mcp] servers (configured: {known})")]
    UnknownServer {
        /// The name asked for.
        name: String,
        /// The configured names.
        known: String,
    },
    /// The configuration is unusable.
    #[error("[mcp]: {0}")]
    Config(String),
    /// Starting or initializing the server failed.
    #[error("MCP server {server}: cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The server.
        server: String,
        /// Its command line or URL.
        endpoint: String,
        /// Why (with the end of its stderr, for a program).
        reason: String,
    },
    /// A request failed or timed out.
    #[error("MCP server {server}: {request} failed: {reason}")]
    Request {
        /// The server.
        server: String,
        /// `tools/list`, `tools/call NAME`, …
        request: String,
        /// Why.
        reason: String,
    },
    /// The server served something over a limit.
    #[error("MCP server {server}: {what}")]
    Limit {
        /// The server.
        server: String,
        /// What was over which limit.
        what: String,
    },
    /// No connection slot became free in time.
    #[error(
        "MCP server {server}: all {slots} connection slots ([mcp] max_concurrent_connections) stayed busy for {waited_s} s"
    )]
    Busy {
        /// The server.
        server: String,
        /// The limit.
        slots: u32,
        /// How long it waited.
        waited_s: u64,
    },
    /// The journal refused a fact.
    #[error("journal: {0}")]
    Journal(#[from] stele_journal::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = tool_name("files", "read_text_file");
        assert_eq!(n, "mcp__files__read_text_file");
        assert_eq!(split_tool_name(&n), Some(("files", "read_text_file")));
        assert_eq!(split_tool_name("mcp__a__b__c"), Some(("a", "b__c")));
        assert_eq!(split_tool_name("read_file"), None);
        assert_eq!(split_tool_name("mcp____x"), None);
        assert!(offerable_name("files", "read_text_file"));
        assert!(!offerable_name("files", "a.b"));
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("aé", 2), "a… (2 more bytes cut)");
    }
}
