//! The Cedar policy gate on real policy files: the fixture set's verdicts at
//! every enforcement point, default deny, forbid reasons, approval with
//! timeout, conditions (merged, conflicting), fail-closed errors, load errors
//! naming file, position and policy id, canonical requests, the set hash,
//! and `stele policy check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use stele_engine::policy::{
    AuthzRequest, DEFAULT_SCHEMA, Entity, GateDecision, Point, PolicyError, PolicyGate, Verdict,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies")
}

fn gate() -> PolicyGate {
    PolicyGate::load(&fixtures()).expect("the fixture policies load")
}

fn agent(id: &str, priority: &str) -> Entity {
    Entity {
        kind: "Agent".into(),
        id: id.into(),
        attrs: json!({ "priority": priority }),
    }
}

fn bare(kind: &str, id: &str) -> Entity {
    Entity {
        kind: kind.into(),
        id: id.into(),
        attrs: Value::Null,
    }
}

fn tool_call(priority: &str, tool: &str, in_workspace: Option<bool>) -> AuthzRequest {
    let mut context = json!({ "args": { "path": "notes.md", "encoding": "utf-8" } });
    if let Some(w) = in_workspace {
        context["in_workspace"] = json!(w);
    }
    AuthzRequest {
        point: Point::ToolInvocation,
        principal: agent("alice", priority),
        action: "invoke_tool".into(),
        resource: bare("Tool", tool),
        context,
    }
}

fn req(point: Point, principal: Entity, action: &str, resource: Entity, context: Value) -> AuthzRequest {
    AuthzRequest {
        point,
        principal,
        action: action.into(),
        resource,
        context,
    }
}

fn deny(reason: &str) -> Verdict {
    Verdict::Deny {
        reason: reason.into(),
    }
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Writes `files` into a fresh directory.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).expect("write policy file");
    }
    d
}

fn load_err(files: &[(&str, &str)]) -> String {
    let d = dir_with(files);
    match PolicyGate::load(d.path()) {
        Ok(g) => panic!("expected a load error, loaded {:?}", g.ids()),
        Err(e) => e.to_string(),
    }
}

/// The policies of `fixtures/policies`, counted from their `@id`
/// annotations (other issues add files there).
fn fixture_policy_count() -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies");
    std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .map(|p| {
            std::fs::read_to_string(&p)
                .expect("policy file")
                .lines()
                .filter(|l| l.trim_start().starts_with("@id("))
                .count()
        })
        .sum()
}

#[test]
fn fixture_set_loads_with_the_embedded_schema() {
    let g = gate();
    assert_eq!(g.len(), fixture_policy_count(), "{:?}", g.ids());
    assert!(g.warnings().is_empty(), "{:?}", g.warnings());
    for id in [
        "read-in-workspace",
        "no-commands-for-low-priority",
        "write-needs-approval",
    ] {
        assert!(g.ids().contains(&id.to_owned()), "{id} in {:?}", g.ids());
    }
    let schema = std::fs::read_to_string(fixtures().join("stele.cedarschema")).expect("fixture schema");
    assert_eq!(
        schema, DEFAULT_SCHEMA,
        "fixtures/policies/stele.cedarschema is a copy of engine/src/policy/stele.cedarschema"
    );
    let info = g
        .policies()
        .find(|p| p.id == "write-needs-approval")
        .expect("listed");
    assert_eq!(info.effect, "permit");
    assert!(info.file.ends_with("tools.cedar"), "{}", info.file);
    assert_eq!((info.line, info.column), (24, 1));
    assert_eq!(info.approval_timeout, Some(Duration::from_secs(600)));
}

#[test]
fn fixture_verdicts_at_every_enforcement_point() {
    let g = gate();
    let cases: Vec<(&str, AuthzRequest, Verdict, Vec<String>)> = vec![
        (
            "read in the workspace, capped",
            tool_call("low", "read_file", Some(true)),
            Verdict::AllowWithConditions {
                conditions: BTreeMap::from([("max_bytes".into(), "65536".into())]),
            },
            ids(&["read-in-workspace"]),
        ),
        (
            "read outside the workspace",
            tool_call("critical", "read_file", Some(false)),
            deny("file tools work inside the agent's workspace only"),
            ids(&["files-stay-in-workspace"]),
        ),
        (
            "read without a resolved path",
            tool_call("critical", "read_file", None),
            deny("file tools work inside the agent's workspace only"),
            ids(&["files-stay-in-workspace"]),
        ),
        (
            "low priority runs a command",
            tool_call("low", "run_command", None),
            deny("low-priority agents may not run commands"),
            ids(&["no-commands-for-low-priority"]),
        ),
        (
            "normal priority runs a command",
            tool_call("normal", "run_command", None),
            Verdict::Allow,
            ids(&["run-command"]),
        ),
        (
            "write needs approval",
            tool_call("high", "write_file", Some(true)),
            Verdict::RequireApproval {
                reason: "writing a file needs an operator's approval".into(),
                timeout: Some(Duration::from_secs(600)),
            },
            ids(&["write-needs-approval"]),
        ),
        (
            "a tool no policy names",
            tool_call("critical", "launch_rocket", None),
            deny("no policy permits invoke_tool on Tool::\"launch_rocket\""),
            vec![],
        ),
        (
            "operator registers an agent",
            req(
                Point::AgentCreation,
                bare("Operator", "ops"),
                "create_agent",
                agent("hello", "normal"),
                json!({"mode": "ephemeral", "memory_mb": 32, "cpu_millis": 250}),
            ),
            Verdict::Allow,
            ids(&["operators-create-agents"]),
        ),
        (
            "an agent spawns a high-priority agent",
            req(
                Point::AgentCreation,
                agent("alice", "high"),
                "create_agent",
                agent("helper", "high"),
                json!({"mode": "ephemeral", "memory_mb": 32, "cpu_millis": 250}),
            ),
            deny("no policy permits create_agent on Agent::\"helper\""),
            vec![],
        ),
        (
            "an agent too large",
            req(
                Point::AgentCreation,
                bare("Operator", "ops"),
                "create_agent",
                agent("big", "normal"),
                json!({"mode": "persistent", "memory_mb": 8192, "cpu_millis": 250}),
            ),
            deny("an agent may not ask for more than 4096 MB"),
            ids(&["agent-memory-cap"]),
        ),
        (
            "a direct message",
            req(
                Point::MessageSend,
                agent("alice", "low"),
                "send_message",
                agent("bob", "normal"),
                json!({"pattern": "direct", "size_bytes": 120}),
            ),
            Verdict::Allow,
            ids(&["agents-message-agents"]),
        ),
        (
            "low priority publishes to ops",
            req(
                Point::MessageSend,
                agent("alice", "low"),
                "send_message",
                bare("Topic", "ops"),
                json!({"pattern": "publish", "size_bytes": 120}),
            ),
            deny("only high and critical agents publish to ops"),
            ids(&["ops-topic-needs-high-priority"]),
        ),
        (
            "an oversized publish to ops by a low agent: both forbids",
            req(
                Point::MessageSend,
                agent("alice", "low"),
                "send_message",
                bare("Topic", "ops"),
                json!({"pattern": "publish", "size_bytes": 2_000_000}),
            ),
            deny("messages are at most 1 MiB; only high and critical agents publish to ops"),
            ids(&["message-size-cap", "ops-topic-needs-high-priority"]),
        ),
        (
            "allocation within limits",
            req(
                Point::ResourceAllocation,
                agent("alice", "normal"),
                "allocate",
                bare("Resource", "host"),
                json!({"memory_mb": 512, "cpu_millis": 500}),
            ),
            Verdict::Allow,
            ids(&["allocate-within-limits"]),
        ),
        (
            "a large allocation",
            req(
                Point::ResourceAllocation,
                agent("alice", "normal"),
                "allocate",
                bare("Resource", "host"),
                json!({"memory_mb": 4096, "cpu_millis": 500}),
            ),
            deny("no policy permits allocate on Resource::\"host\""),
            vec![],
        ),
        (
            "a large allocation by a critical agent",
            req(
                Point::ResourceAllocation,
                agent("alice", "critical"),
                "allocate",
                bare("Resource", "host"),
                json!({"memory_mb": 4096, "cpu_millis": 500}),
            ),
            Verdict::Allow,
            ids(&["critical-allocates-more"]),
        ),
        (
            "reading someone else's secret",
            req(
                Point::DataAccess,
                agent("alice", "high"),
                "read_data",
                Entity {
                    kind: "Data".into(),
                    id: "k1".into(),
                    attrs: json!({"classification": "secret", "owner": {"type": "Agent", "id": "bob"}}),
                },
                Value::Null,
            ),
            deny("no policy permits read_data on Data::\"k1\""),
            vec![],
        ),
        (
            "reading one's own secret",
            req(
                Point::DataAccess,
                agent("alice", "high"),
                "read_data",
                Entity {
                    kind: "Data".into(),
                    id: "k1".into(),
                    attrs: json!({"classification": "secret", "owner": {"type": "Agent", "id": "alice"}}),
                },
                json!({}),
            ),
            Verdict::Allow,
            ids(&["owner-reads-and-writes"]),
        ),
        (
            "reading public data one also owns: two permits",
            req(
                Point::DataAccess,
                agent("alice", "high"),
                "read_data",
                Entity {
                    kind: "Data".into(),
                    id: "k2".into(),
                    attrs: json!({"owner": {"type": "Agent", "id": "alice"}}),
                },
                json!({}),
            ),
            Verdict::Allow,
            ids(&["owner-reads-and-writes", "read-non-secret"]),
        ),
    ];
    for (what, r, verdict, policies) in cases {
        let d = g.decide(&r);
        assert_eq!(
            d,
            GateDecision {
                verdict,
                policies,
                errors: vec![]
            },
            "{what}: {}",
            r.canonical_json()
        );
        // Deterministic, and what a backtest re-evaluates gives the same.
        let again = AuthzRequest::from_canonical_json(&r.canonical_json()).expect("round trip");
        assert_eq!(
            g.decide(&again),
            d,
            "{what}: re-evaluated from the journaled form"
        );
    }
}

#[test]
fn verdict_names_and_details_are_what_the_journal_stores() {
    let cases = [
        (Verdict::Allow, "allow", ""),
        (deny("no"), "deny", "no"),
        (
            Verdict::AllowWithConditions {
                conditions: BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
            },
            "allow_with_conditions",
            "a=1; b=2",
        ),
        (
            Verdict::RequireApproval {
                reason: "ask".into(),
                timeout: Some(Duration::from_secs(90)),
            },
            "require_approval",
            "ask (timeout 1m 30s)",
        ),
        (
            Verdict::RequireApproval {
                reason: "ask".into(),
                timeout: None,
            },
            "require_approval",
            "ask",
        ),
    ];
    for (v, name, detail) in cases {
        assert_eq!((v.name(), v.detail().as_str()), (name, detail));
    }
    assert!(Verdict::Allow.allows() && !deny("x").allows());
    for p in Point::ALL {
        assert_eq!(Point::from_name(p.name()), Some(p));
    }
}

const TOOL_POLICIES: &str = r#"
@id("allow-echo")
permit (principal, action == Action::"invoke_tool", resource == Tool::"echo");

@id("deny-echo-for-low")
@reason("low agents are quiet")
forbid (principal, action == Action::"invoke_tool", resource == Tool::"echo")
when { principal.priority == "low" };

@id("deny-without-reason")
forbid (principal, action == Action::"invoke_tool", resource == Tool::"shout");
"#;

#[test]
fn allow_forbid_and_default_deny_from_a_directory() {
    let d = dir_with(&[("tools.cedar", TOOL_POLICIES)]);
    let g = PolicyGate::load(d.path()).expect("loads");
    assert_eq!(
        g.ids(),
        ids(&["allow-echo", "deny-echo-for-low", "deny-without-reason"])
    );
    let echo = g.decide(&tool_call("normal", "echo", None));
    assert_eq!(
        (echo.verdict, echo.policies),
        (Verdict::Allow, ids(&["allow-echo"]))
    );
    let low = g.decide(&tool_call("low", "echo", None));
    assert_eq!(
        (low.verdict, low.policies),
        (deny("low agents are quiet"), ids(&["deny-echo-for-low"]))
    );
    let shout = g.decide(&tool_call("normal", "shout", None));
    assert_eq!(shout.verdict, deny("forbidden by deny-without-reason"));
    let other = g.decide(&tool_call("normal", "whisper", None));
    assert_eq!(
        other.verdict,
        deny("no policy permits invoke_tool on Tool::\"whisper\"")
    );
    assert!(other.policies.is_empty() && other.errors.is_empty());

    // No policy at all: everything is denied.
    let empty = PolicyGate::deny_all();
    assert_eq!(empty.len(), 0);
    assert!(
        !empty
            .decide(&tool_call("critical", "echo", None))
            .verdict
            .allows()
    );
    let empty_dir = dir_with(&[]);
    assert_eq!(
        PolicyGate::load(empty_dir.path())
            .expect("empty dir loads")
            .hash(),
        empty.hash()
    );
}

#[test]
fn approval_takes_the_shortest_timeout_and_every_reason() {
    let g = PolicyGate::from_sources(
        None,
        &[(
            "a.cedar".into(),
            r#"
@id("ask-ops") @approval("ops must agree") @approval_timeout("1h")
permit (principal, action == Action::"invoke_tool", resource == Tool::"deploy");

@id("ask-security") @approval("security must agree") @approval_timeout("15m")
permit (principal, action == Action::"invoke_tool", resource == Tool::"deploy");

@id("ask-no-timeout") @approval
permit (principal, action == Action::"invoke_tool", resource == Tool::"rollback");

@id("cap") @conditions("max_bytes=10")
permit (principal, action == Action::"invoke_tool", resource == Tool::"rollback");
"#
            .into(),
        )],
    )
    .expect("loads");
    let d = g.decide(&tool_call("normal", "deploy", None));
    assert_eq!(
        d.verdict,
        Verdict::RequireApproval {
            reason: "ops must agree; security must agree".into(),
            timeout: Some(Duration::from_secs(15 * 60)),
        }
    );
    assert_eq!(d.policies, ids(&["ask-ops", "ask-security"]));
    // Approval wins over another permit's conditions.
    let d = g.decide(&tool_call("normal", "rollback", None));
    assert_eq!(
        d.verdict,
        Verdict::RequireApproval {
            reason: "approval required by ask-no-timeout".into(),
            timeout: None,
        }
    );
    assert_eq!(d.policies, ids(&["ask-no-timeout", "cap"]));
}

#[test]
fn conditions_merge_and_a_conflict_denies() {
    let g = PolicyGate::from_sources(
        None,
        &[(
            "c.cedar".into(),
            r#"
@id("cap-bytes") @conditions("max_bytes=4096")
permit (principal, action == Action::"invoke_tool", resource == Tool::"read_file");

@id("read-only") @conditions("mode=ro; max_bytes=4096")
permit (principal, action == Action::"invoke_tool", resource == Tool::"read_file");

@id("small") @conditions("max_bytes=1024")
permit (principal, action == Action::"invoke_tool", resource == Tool::"read_file")
when { principal.priority == "low" };
"#
            .into(),
        )],
    )
    .expect("loads");
    let d = g.decide(&tool_call("normal", "read_file", None));
    assert_eq!(
        d.verdict,
        Verdict::AllowWithConditions {
            conditions: BTreeMap::from([("max_bytes".into(), "4096".into()), ("mode".into(), "ro".into())]),
        }
    );
    assert_eq!(d.verdict.detail(), "max_bytes=4096; mode=ro");
    let d = g.decide(&tool_call("low", "read_file", None));
    let reason = "conflicting conditions: `max_bytes` is \"4096\" in cap-bytes and \"1024\" in small";
    assert_eq!(d.verdict, deny(reason));
    assert_eq!(d.errors, vec![reason.to_owned()]);
    assert_eq!(d.policies, ids(&["cap-bytes", "read-only", "small"]));
}

#[test]
fn an_evaluation_error_fails_closed_and_is_reported() {
    // Cedar alone would allow (the other permit holds); an overflow in any
    // policy denies.
    let g = PolicyGate::from_sources(
        None,
        &[(
            "e.cedar".into(),
            r#"
@id("allow-alloc")
permit (principal, action == Action::"allocate", resource);

@id("overflows")
forbid (principal, action == Action::"allocate", resource)
when { context.memory_mb * 9223372036854775807 > 0 };
"#
            .into(),
        )],
    )
    .expect("loads");
    let r = req(
        Point::ResourceAllocation,
        agent("alice", "normal"),
        "allocate",
        bare("Resource", "host"),
        json!({"memory_mb": 2, "cpu_millis": 1}),
    );
    let d = g.decide(&r);
    assert_eq!(d.policies, ids(&["overflows"]));
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(
        d.errors[0].contains("overflows") && d.errors[0].contains("overflow"),
        "{:?}",
        d.errors
    );
    match &d.verdict {
        Verdict::Deny { reason } => assert!(reason.starts_with("policy evaluation failed: "), "{reason}"),
        other => panic!("expected deny, got {other:?}"),
    }
    // Without the overflow the permit decides.
    let ok = g.decide(&AuthzRequest {
        context: json!({"memory_mb": 0, "cpu_millis": 1}),
        ..r
    });
    assert_eq!(ok.verdict, Verdict::Allow);
}

#[test]
fn requests_that_do_not_fit_the_schema_are_denied_with_the_error() {
    let g = gate();
    let cases: Vec<(&str, AuthzRequest, &str)> = vec![
        (
            "unknown action",
            AuthzRequest {
                action: "teleport".into(),
                ..tool_call("high", "read_file", Some(true))
            },
            "unknown action `teleport`",
        ),
        (
            "unknown principal type",
            AuthzRequest {
                principal: bare("Robot", "r2"),
                ..tool_call("high", "read_file", Some(true))
            },
            "principal type `Robot` is not in the schema",
        ),
        (
            "missing required attribute",
            AuthzRequest {
                principal: bare("Agent", "alice"),
                ..tool_call("high", "read_file", Some(true))
            },
            "priority",
        ),
        (
            "attribute of the wrong type",
            AuthzRequest {
                principal: Entity {
                    attrs: json!({"priority": 3}),
                    ..agent("alice", "x")
                },
                ..tool_call("high", "read_file", Some(true))
            },
            "priority",
        ),
        (
            "context of the wrong type",
            AuthzRequest {
                context: json!({"args": {"max_bytes": "lots"}, "in_workspace": true}),
                ..tool_call("high", "read_file", Some(true))
            },
            "invoke_tool",
        ),
        (
            "context not an object",
            AuthzRequest {
                context: json!([1, 2]),
                ..tool_call("high", "read_file", Some(true))
            },
            "not a JSON object",
        ),
        (
            "principal type the action does not apply to",
            AuthzRequest {
                principal: bare("Operator", "ops"),
                ..tool_call("high", "run_command", None)
            },
            "Operator",
        ),
    ];
    for (what, r, needle) in cases {
        let d = g.decide(&r);
        match &d.verdict {
            Verdict::Deny { reason } => {
                assert!(reason.starts_with("invalid request: "), "{what}: {reason}");
                assert!(
                    reason.contains(needle),
                    "{what}: {reason:?} should mention {needle:?}"
                );
            }
            other => panic!("{what}: expected deny, got {other:?}"),
        }
        assert_eq!(d.errors.len(), 1, "{what}: {:?}", d.errors);
        assert!(d.policies.is_empty(), "{what}");
    }
    // Undeclared attributes (tool arguments, agent fields) are invisible to
    // policies and change nothing.
    let plain = tool_call("low", "read_file", Some(true));
    let mut noisy = plain.clone();
    noisy.principal.attrs["description"] = json!("has extras");
    noisy.context["args"]["flags"] = json!(["-r"]);
    noisy.context["trace_id"] = json!(7);
    assert_eq!(g.decide(&noisy), g.decide(&plain));
}

#[test]
fn a_syntax_error_names_the_file_and_position() {
    let e = load_err(&[
        ("good.cedar", TOOL_POLICIES),
        (
            "bad.cedar",
            "@id(\"fine\")\npermit (principal, action, resource);\n\n@id(\"broken\")\npermit (principal, action, resource)\n  when { principal.priority = \"low\" };\n",
        ),
    ]);
    assert!(e.contains("bad.cedar:6:10: "), "{e}");
    assert!(e.contains("'=' is not a valid operator"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn a_schema_violation_names_the_policy_and_position() {
    let e = load_err(&[(
        "v.cedar",
        "// header\n@id(\"uses-nope\")\npermit (principal is Agent, action == Action::\"invoke_tool\", resource)\nwhen { principal.nope == 1 };\n",
    )]);
    assert!(e.contains("v.cedar:4:8: policy `uses-nope`: "), "{e}");
    assert!(e.contains("attribute `nope`"), "{e}");

    let e = load_err(&[(
        "a.cedar",
        "@id(\"flies\")\npermit (principal, action == Action::\"fly\", resource);\n",
    )]);
    assert!(e.contains("a.cedar:2:30: policy `flies`: "), "{e}");
    assert!(e.contains("unrecognized action `Action::\"fly\"`"), "{e}");

    // Context attributes are checked too, against the action's declaration.
    let e = load_err(&[(
        "c.cedar",
        "@id(\"ctx\")\npermit (principal, action == Action::\"allocate\", resource)\nwhen { context.gpus > 0 };\n",
    )]);
    assert!(e.contains("c.cedar:3:8: policy `ctx`: "), "{e}");
}

#[test]
fn ids_are_required_valid_and_unique() {
    let e = load_err(&[(
        "n.cedar",
        "@id(\"ok\") permit (principal, action, resource);\n\n  permit (principal, action, resource);\n",
    )]);
    assert!(
        e.ends_with("n.cedar:3:3: no @id(\"…\") annotation; every policy needs one: decisions cite it"),
        "{e}"
    );
    assert!(!e.contains("policy `"), "no id to name: {e}");

    let e = load_err(&[
        (
            "a.cedar",
            "@id(\"twice\") permit (principal, action, resource);\n",
        ),
        (
            "b.cedar",
            "\n@id(\"twice\") forbid (principal, action, resource);\n",
        ),
    ]);
    assert!(
        e.contains("b.cedar:2:1: policy `twice`: duplicate policy id, first used at "),
        "{e}"
    );
    assert!(e.contains("a.cedar:1:1"), "{e}");

    let e = load_err(&[(
        "s.cedar",
        "@id(\"has space\") permit (principal, action, resource);\n",
    )]);
    assert!(
        e.contains("s.cedar:1:1: policy `has space`: @id contains ' '"),
        "{e}"
    );
}

#[test]
fn gate_annotations_are_checked_at_load() {
    let cases = [
        (
            "@id(\"f\") @approval(\"x\") forbid (principal, action, resource);",
            "@approval on a forbid",
        ),
        (
            "@id(\"p\") @reason(\"x\") permit (principal, action, resource);",
            "@reason on a permit",
        ),
        (
            "@id(\"t\") @approval(\"x\") @approval_timeout(\"soon\") permit (principal, action, resource);",
            "@approval_timeout(\"soon\")",
        ),
        (
            "@id(\"t2\") @approval_timeout(\"5m\") permit (principal, action, resource);",
            "@approval_timeout without @approval",
        ),
        (
            "@id(\"c\") @conditions(\"max_bytes\") permit (principal, action, resource);",
            "is not key=value",
        ),
        (
            "@id(\"c2\") @conditions(\"a=1; a=2\") permit (principal, action, resource);",
            "`a` given twice",
        ),
        (
            "@id(\"both\") @approval(\"x\") @conditions(\"a=1\") permit (principal, action, resource);",
            "@approval and @conditions on one policy",
        ),
    ];
    for (text, needle) in cases {
        let e = load_err(&[("x.cedar", text)]);
        assert!(e.contains("x.cedar:1:1: policy `"), "{e}");
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }
}

#[test]
fn schema_problems_are_positioned_and_one_schema_per_directory() {
    let e = load_err(&[("s.cedarschema", "entity Agent = {\n  priority: Strin,\n};\n")]);
    assert!(e.contains("s.cedarschema:2:13: schema: "), "{e}");
    assert!(e.contains("Strin"), "{e}");

    let e = load_err(&[("ns.cedarschema", "namespace Acme { entity Agent; }\n")]);
    assert!(e.contains("ns.cedarschema: schema: namespace `Acme`"), "{e}");

    let e = load_err(&[
        ("a.cedarschema", DEFAULT_SCHEMA),
        ("b.cedarschema", DEFAULT_SCHEMA),
    ]);
    assert!(e.contains("b.cedarschema: a second schema"), "{e}");

    // A custom schema: policies are validated against it, requests too.
    let d = dir_with(&[
        (
            "custom.cedarschema",
            "entity User = { admin: Bool };\nentity Doc;\naction view appliesTo { principal: User, resource: Doc };\n",
        ),
        (
            "p.cedar",
            "@id(\"admins-view\") permit (principal, action == Action::\"view\", resource) when { principal.admin };\n",
        ),
    ]);
    let g = PolicyGate::load(d.path()).expect("custom schema loads");
    assert!(g.schema_name().ends_with("custom.cedarschema"));
    let view = |admin: bool| {
        g.decide(&req(
            Point::DataAccess,
            Entity {
                kind: "User".into(),
                id: "u".into(),
                attrs: json!({ "admin": admin }),
            },
            "view",
            bare("Doc", "d"),
            Value::Null,
        ))
        .verdict
    };
    assert_eq!(view(true), Verdict::Allow);
    assert!(!view(false).allows());

    let missing = std::env::temp_dir().join("stele-no-such-policy-dir");
    match PolicyGate::load(&missing) {
        Err(PolicyError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn canonical_json_is_sorted_stable_and_round_trips() {
    let mut a = tool_call("low", "read_file", Some(true));
    a.context = json!({"z": 1, "args": {"path": "p", "b": [ {"y": 1, "x": "é\n"} ]}});
    let text = a.canonical_json();
    assert_eq!(
        text,
        r#"{"action":"invoke_tool","context":{"args":{"b":[{"x":"é\n","y":1}],"path":"p"},"z":1},"point":"tool_invocation","principal":{"attrs":{"priority":"low"},"id":"alice","kind":"Agent"},"resource":{"attrs":null,"id":"read_file","kind":"Tool"}}"#
    );
    // The same request built in another key order gives the same bytes.
    let mut b = a.clone();
    b.context = serde_json::from_str(r#"{"args": {"b": [{"x": "é\n", "y": 1}], "path": "p"}, "z": 1}"#)
        .expect("json");
    assert_eq!(b.canonical_json(), text);
    let back = AuthzRequest::from_canonical_json(&text).expect("parses");
    assert_eq!(back, a);
    assert_eq!(back.canonical_json(), text);

    for (bad, needle) in [
        ("[]", "not a JSON object"),
        ("{", "not JSON"),
        (
            &text.replace("tool_invocation", "teleport")[..],
            "unknown enforcement point",
        ),
        (&text.replace("\"action\"", "\"verb\"")[..], "no `action`"),
        (
            &text.replace("\"z\":1}", "\"z\":1},\"extra\":0")[..],
            "unknown key `extra`",
        ),
    ] {
        let e = AuthzRequest::from_canonical_json(bad).expect_err(bad).to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }
}

#[test]
fn the_hash_changes_iff_the_content_does() {
    let files = [
        ("tools.cedar", TOOL_POLICIES),
        ("more.cedar", "@id(\"m\") permit (principal, action, resource);\n"),
    ];
    let a = dir_with(&files);
    let b = dir_with(&files);
    let ha = PolicyGate::load(a.path()).expect("a").hash();
    assert_eq!(ha.len(), 64);
    assert_eq!(
        PolicyGate::load(b.path()).expect("b").hash(),
        ha,
        "where it lives does not count"
    );
    let owned: Vec<(String, String)> = files.iter().map(|(n, t)| ((*n).into(), (*t).into())).collect();
    assert_eq!(
        PolicyGate::from_sources(None, &owned).expect("sources").hash(),
        ha
    );

    let changed = |files: &[(&str, &str)]| PolicyGate::load(dir_with(files).path()).expect("loads").hash();
    assert_ne!(
        changed(&[
            files[0],
            ("more.cedar", "@id(\"m\") permit (principal, action, resource); ")
        ]),
        ha
    );
    assert_ne!(
        changed(&[files[0], ("other.cedar", files[1].1)]),
        ha,
        "a renamed file"
    );
    assert_ne!(changed(&[files[0]]), ha, "a removed file");
    assert_ne!(
        changed(&[files[0], files[1], ("s.cedarschema", DEFAULT_SCHEMA)]),
        ha,
        "a schema file"
    );
    assert_ne!(PolicyGate::deny_all().hash(), ha);
}

#[test]
fn one_gate_serves_many_threads() {
    let g = Arc::new(gate());
    let expected = g.decide(&tool_call("low", "run_command", None));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let g = Arc::clone(&g);
            std::thread::spawn(move || {
                (0..200)
                    .map(|_| g.decide(&tool_call("low", "run_command", None)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for d in h.join().expect("thread") {
            assert_eq!(d, expected);
        }
    }
}

#[test]
fn stele_policy_check_lists_ids_or_the_error() {
    let dir = fixtures();
    let dir_s = dir.to_str().expect("utf-8 path");
    let run = crate::run_bounded(&["policy", "check", dir_s]);
    run.no_panic("policy check");
    assert_eq!(run.code, Some(0), "{run:?}");
    let out = format!("{run:?}");
    for id in gate().ids() {
        assert!(out.contains(&id), "{id} listed: {out}");
    }

    let json_run = crate::run_bounded(&["policy", "check", dir_s, "--json"]);
    assert_eq!(json_run.code, Some(0), "{json_run:?}");
    let v: Value = serde_json::from_str(&json_run.stdout).expect("one JSON object");
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["hash"], json!(gate().hash()));
    assert_eq!(
        v["policies"].as_array().expect("policies").len(),
        fixture_policy_count()
    );

    let bad = dir_with(&[(
        "bad.cedar",
        "@id(\"x\")\npermit (principal, action, resource)\n  when { 1 = 1 };\n",
    )]);
    let bad_s = bad.path().to_str().expect("utf-8 path");
    let run = crate::run_bounded(&["policy", "check", bad_s]);
    run.no_panic("policy check on a broken set");
    assert_ne!(run.code, Some(0), "{run:?}");
    let err = run.stderr.trim_end();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("bad.cedar:3:10: "), "{err}");

    let run = crate::run_bounded(&["policy", "check", bad_s, "--json"]);
    assert_ne!(run.code, Some(0), "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(v["ok"], json!(false));
    assert_eq!(v["problems"][0]["line"], json!(3));
}

#[test]
fn a_set_too_large_to_merge_decides_the_same() {
    // 300 resource-agnostic policies × 350 resource-scoped ones is more
    // copies than the gate makes: requests are then evaluated in two parts,
    // and Cedar's rule must still hold across them.
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!(
            "@id(\"cap-{i}\") @conditions(\"max_bytes=65536\")\n\
             permit (principal, action == Action::\"invoke_tool\", resource)\n\
             when {{ context.args has max_bytes && context.args.max_bytes == {i} }};\n"
        ));
    }
    for i in 0..350 {
        text.push_str(&format!(
            "@id(\"tool-{i}\")\npermit (principal, action == Action::\"invoke_tool\", resource == Tool::\"t{i}\");\n"
        ));
    }
    text.push_str(
        "@id(\"quiet\") @reason(\"low agents may not\")\n\
         forbid (principal, action == Action::\"invoke_tool\", resource)\n\
         when { principal.priority == \"low\" };\n",
    );
    let g = PolicyGate::from_sources(None, &[("big.cedar".into(), text)]).expect("loads");
    assert_eq!(g.len(), 651);
    let call = |priority: &str, tool: &str, max_bytes: i64| {
        let mut r = tool_call(priority, tool, None);
        r.context["args"]["max_bytes"] = json!(max_bytes);
        g.decide(&r)
    };
    let d = call("normal", "t7", 100_000);
    assert_eq!((d.verdict, d.policies), (Verdict::Allow, ids(&["tool-7"])));
    let d = call("normal", "t7", 12);
    assert_eq!(
        d.verdict,
        Verdict::AllowWithConditions {
            conditions: BTreeMap::from([("max_bytes".into(), "65536".into())])
        }
    );
    assert_eq!(d.policies, ids(&["cap-12", "tool-7"]));
    let d = call("normal", "unlisted", 12);
    assert_eq!(d.policies, ids(&["cap-12"]));
    let d = call("low", "t7", 12);
    assert_eq!(
        (d.verdict, d.policies),
        (deny("low agents may not"), ids(&["quiet"]))
    );
    let d = call("normal", "unlisted", 100_000);
    assert_eq!(
        d.verdict,
        deny("no policy permits invoke_tool on Tool::\"unlisted\"")
    );
}
