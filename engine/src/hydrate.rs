//! Deterministic pre-hydration: before a run's first completion, the files
//! its task names are loaded into its context, so the model starts with
//! them instead of spending a step asking.
//!
//! - [`references`] is pure: the same task text always yields the same
//!   candidates, in order of first mention (words that look like relative
//!   paths: a `/` or a file extension, only `A-Za-z0-9._/-`, no `..`, no
//!   URL), at most [`MAX_REFERENCES`].
//! - [`hydrate`] is the effect: each candidate that is a regular file of the
//!   workspace goes through the policy gate exactly as a `read_file` call
//!   would (its `PolicyDecided` is journaled, conditions such as
//!   `max_bytes` apply), and an allowed one is read through the same tool.
//!   What was loaded is journaled as `ContextHydrated` with the BLAKE3 of
//!   the whole file, so a replay serves it and never reads the disk.
//!
//! Not here: where the context goes in the conversation
//! (`crate::orga::AgentLoop::start_hydrated`).

use serde_json::json;
use stele_journal::EventBody;

use crate::llm::ToolCall;
use crate::orga::{Gate, bounded};
use crate::policy::PolicyGate;
use crate::reasoning::check;
use crate::tools::{CallContext, ToolBox};

/// Most references loaded for one task.
pub const MAX_REFERENCES: usize = 4;
/// Most bytes of one reference put into the context (and the journal).
pub const MAX_HYDRATED_BYTES: usize = 16 * 1024;

/// The candidate references of a task, in order of first mention.
#[must_use]
pub fn references(input: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in input.split_whitespace() {
        let w = word
            .trim_matches(|c: char| "\"'`()[]{}<>,;:!?".contains(c))
            .trim_end_matches('.');
        let plausible = !w.is_empty()
            && !w.starts_with('/')
            && !w.starts_with('-')
            && !w.contains("://")
            && !w.split('/').any(|part| part == "..")
            && w.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
            && (w.contains('/') || has_extension(w));
        if plausible && !out.iter().any(|o| o == w) {
            out.push(w.to_owned());
            if out.len() == MAX_REFERENCES {
                break;
            }
        }
    }
    out
}

fn has_extension(w: &str) -> bool {
    w.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && !ext.is_empty()
            && ext.len() <= 8
            && ext.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// Loads the task's references that are files of the workspace; returns
/// the facts to start the run with (per reference: its `PolicyDecided`,
/// then `ContextHydrated` when allowed and read).
pub async fn hydrate(
    gate: &PolicyGate,
    tools: &ToolBox,
    run: &str,
    agent: &str,
    priority: &str,
    input: &str,
) -> Vec<EventBody> {
    let mut facts = Vec::new();
    for (i, reference) in references(input).into_iter().enumerate() {
        let Ok(full) = tools.resolve(&reference) else {
            continue;
        };
        let Ok(meta) = tokio::fs::metadata(&full).await else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let call = ToolCall {
            id: format!("hydrate-{}", i + 1),
            name: "read_file".into(),
            arguments: json!({ "path": reference }).to_string(),
        };
        let checked = check(gate, run, agent, priority, &call);
        facts.push(checked.decided);
        let Gate::Allow { arguments } = checked.gate else {
            continue;
        };
        // Read before the run's first step: no `ToolCalled` to point at.
        let ctx = CallContext {
            run: run.to_owned(),
            cause: None,
        };
        let Ok(content) = tools.call(&ctx, &call.id, "read_file", &arguments).await else {
            continue;
        };
        let Ok(bytes) = tokio::fs::read(&full).await else {
            continue;
        };
        facts.push(EventBody::ContextHydrated {
            run: run.to_owned(),
            reference,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            size_bytes: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            content: bounded(&content, MAX_HYDRATED_BYTES),
        });
    }
    facts
}
