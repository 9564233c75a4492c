//! The tool list a reasoning run's model is offered, as the journal records
//! it (`ToolsOffered`): each tool's name and the BLAKE3 of its canonical
//! JSON schema, and one hash over the whole list. Pure: the loop
//! (`crate::orga`) records the list, replay compares it and names what
//! changed ([`change`]). Nothing here decides what is offered; that is the
//! agent's tool profile and the sources layered on it (`reasoning::spec_for`,
//! MCP, the bus, the knowledge tools).

use std::collections::BTreeMap;

use serde_json::Value;
use stele_journal::{ToolList, ToolOffer};

use crate::llm::ToolSpec;

/// Domain tag of a list hash.
const LIST_DOMAIN: &[u8] = b"stele/tools-offered/v1";

/// The BLAKE3 of a tool's canonical schema: the JSON object `{name,
/// description, parameters}` with its keys sorted at every level, compact
/// (`parameters` as JSON when it parses, else as the string it is).
#[must_use]
pub fn schema_hash(tool: &ToolSpec) -> [u8; 32] {
    let parameters = serde_json::from_str::<Value>(&tool.parameters)
        .unwrap_or_else(|_| Value::String(tool.parameters.clone()));
    let schema = serde_json::json!({
        "name": tool.name,
        "description": tool.description,
        "parameters": parameters,
    });
    *blake3::hash(crate::mcp::schemapin::canonical(&schema).as_bytes()).as_bytes()
}

/// The list `tools` makes, in their order.
#[must_use]
pub fn list(tools: &[ToolSpec]) -> ToolList {
    let tools: Vec<ToolOffer> = tools
        .iter()
        .map(|t| ToolOffer {
            name: t.name.clone(),
            schema_hash: schema_hash(t),
        })
        .collect();
    let mut h = blake3::Hasher::new();
    h.update(LIST_DOMAIN);
    h.update(&u64::try_from(tools.len()).unwrap_or(u64::MAX).to_le_bytes());
    for t in &tools {
        h.update(&u64::try_from(t.name.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(t.name.as_bytes());
        h.update(&t.schema_hash);
    }
    ToolList {
        list_hash: *h.finalize().as_bytes(),
        tools,
    }
}

/// What differs between the list `recorded` and the list `now`, in words
/// naming each tool: added, removed, with a changed schema, or (when the
/// same tools are offered) the order. Empty when the lists are equal.
#[must_use]
pub fn change(recorded: &ToolList, now: &ToolList) -> String {
    if recorded.list_hash == now.list_hash && recorded.tools == now.tools {
        return String::new();
    }
    let before: BTreeMap<&str, &[u8; 32]> = recorded
        .tools
        .iter()
        .map(|t| (t.name.as_str(), &t.schema_hash))
        .collect();
    let after: BTreeMap<&str, &[u8; 32]> = now
        .tools
        .iter()
        .map(|t| (t.name.as_str(), &t.schema_hash))
        .collect();
    let short = |h: &[u8; 32]| hex::encode(&h[..6]);
    let mut parts = Vec::new();
    let added: Vec<&str> = now
        .tools
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !before.contains_key(n))
        .collect();
    if !added.is_empty() {
        parts.push(format!("{} added", quoted(&added)));
    }
    let removed: Vec<&str> = recorded
        .tools
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !after.contains_key(n))
        .collect();
    if !removed.is_empty() {
        parts.push(format!("{} removed", quoted(&removed)));
    }
    for t in &now.tools {
        if let Some(old) = before.get(t.name.as_str())
            && **old != t.schema_hash
        {
            parts.push(format!(
                "{} changed its schema (blake3 {} → {})",
                quoted(&[t.name.as_str()]),
                short(old),
                short(&t.schema_hash)
            ));
        }
    }
    if parts.is_empty() {
        let order = |l: &ToolList| {
            l.tools
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        parts.push(format!(
            "the same tools in another order ({} → {})",
            order(recorded),
            order(now)
        ));
    }
    parts.join("; ")
}

fn quoted(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("tool{} {}", if names.len() == 1 { "" } else { "s" }, q.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: format!("does {name}"),
            parameters: parameters.into(),
        }
    }

    #[test]
    fn the_schema_hash_ignores_key_order_and_spacing_but_not_content() {
        let a = tool(
            "read_file",
            r#"{"type":"object","properties":{"path":{"type":"string"}}}"#,
        );
        let b = tool(
            "read_file",
            r#"{ "properties": { "path": { "type": "string" } }, "type": "object" }"#,
        );
        assert_eq!(schema_hash(&a), schema_hash(&b));
        let c = tool(
            "read_file",
            r#"{"type":"object","properties":{"path":{"type":"integer"}}}"#,
        );
        assert_ne!(schema_hash(&a), schema_hash(&c));
        let mut d = a.clone();
        d.description = "something else".into();
        assert_ne!(
            schema_hash(&a),
            schema_hash(&d),
            "the description is what the model reads"
        );
    }

    #[test]
    fn equal_lists_hash_equal_and_any_change_is_named() {
        let p = r#"{"type":"object"}"#;
        let one = list(&[tool("read_file", p), tool("write_file", p)]);
        assert_eq!(one, list(&[tool("read_file", p), tool("write_file", p)]));
        assert_eq!(change(&one, &one), "");

        let fewer = list(&[tool("read_file", p)]);
        assert_ne!(one.list_hash, fewer.list_hash);
        assert_eq!(change(&one, &fewer), "tool `write_file` removed");
        assert_eq!(change(&fewer, &one), "tool `write_file` added");

        let changed = list(&[tool("read_file", p), tool("write_file", r#"{"type":"string"}"#)]);
        let why = change(&one, &changed);
        assert!(
            why.starts_with("tool `write_file` changed its schema (blake3 "),
            "{why}"
        );

        let swapped = list(&[tool("write_file", p), tool("read_file", p)]);
        assert_ne!(one.list_hash, swapped.list_hash);
        assert_eq!(
            change(&one, &swapped),
            "the same tools in another order (read_file, write_file → write_file, read_file)"
        );

        let both = list(&[tool("list_dir", p), tool("read_file", p), tool("run_command", p)]);
        assert_eq!(
            change(&one, &both),
            "tools `list_dir`, `run_command` added; tool `write_file` removed"
        );
        assert_ne!(list(&[]).list_hash, fewer.list_hash);
    }
}
