//! Agent definitions: the fixtures parse, and every kind of bad definition
//! gets an error naming the file, the line and column, and the field.

use std::path::Path;

use stele_engine::{AgentDefinition, ExecutionMode, Priority};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/agents")
}

#[test]
fn fixture_agents_parse() {
    let hb = AgentDefinition::load(&fixtures().join("heartbeat.toml")).expect("heartbeat");
    assert_eq!(hb.name, "heartbeat");
    assert_eq!(hb.priority, Priority::Low);
    assert_eq!(
        hb.mode,
        ExecutionMode::Scheduled {
            interval: std::time::Duration::from_secs(30)
        }
    );
    assert_eq!(hb.limits.memory_mb, 16);
    let w = AgentDefinition::load(&fixtures().join("watcher.toml")).expect("watcher");
    match w.mode {
        ExecutionMode::EventDriven { filter } => {
            assert!(filter.matches("annotated", "ops"));
            assert!(filter.matches("annotated", "ops:deploy"));
            assert!(!filter.matches("checkpoint_signed", "ops"));
            assert!(!filter.matches("annotated", "agent:x"));
        }
        other => panic!("expected event-driven, got {other:?}"),
    }
    for f in ["hello.toml", "sleeper.toml"] {
        AgentDefinition::load(&fixtures().join(f)).expect(f);
    }
    assert!(Priority::Critical < Priority::High && Priority::High < Priority::Low);
}

const GOOD_TAIL: &str = r#"
[mode]
kind = "ephemeral"

[limits]
memory_mb = 8
cpu_cores = 0.5
execution_timeout = "5s"

[runs]
kind = "process"
command = "/bin/true"
"#;

#[test]
fn bad_definitions_name_file_line_and_field() {
    let cases: Vec<(String, usize, &str)> = vec![
        (
            format!("name = \"Bad Name\"\npriority = \"low\"\n{GOOD_TAIL}"),
            1,
            "name \"Bad Name\"",
        ),
        (
            format!("name = \"a\"\npriority = \"urgent\"\n{GOOD_TAIL}"),
            2,
            "unknown variant `urgent`",
        ),
        (
            format!("name = \"a\"\npriority = \"low\"\ncolour = 1\n{GOOD_TAIL}"),
            3,
            "unknown field `colour`",
        ),
        (
            format!(
                "name = \"a\"\npriority = \"low\"\n{}",
                GOOD_TAIL.replace("memory_mb = 8", "memroy_mb = 8")
            ),
            8,
            "unknown field `memroy_mb`",
        ),
        (
            format!(
                "name = \"a\"\npriority = \"low\"\n{}",
                GOOD_TAIL.replace("cpu_cores = 0.5", "cpu_cores = 0")
            ),
            9,
            "cpu_cores 0",
        ),
        (
            format!(
                "name = \"a\"\npriority = \"low\"\n{}",
                GOOD_TAIL.replace("\"5s\"", "\"soon\"")
            ),
            10,
            "execution_timeout \"soon\"",
        ),
        (
            format!(
                "name = \"a\"\npriority = \"low\"\n{}",
                GOOD_TAIL.replace("/bin/true", "true")
            ),
            12, // fields of a tagged table are reported at the table
            "absolute path",
        ),
        (
            format!(
                "name = \"a\"\npriority = \"low\"\n{}",
                GOOD_TAIL.replace("\"ephemeral\"", "\"scheduled\"\ninterval = \"0s\"")
            ),
            4,
            "interval must be greater than 0",
        ),
        (
            "name = \"a\"\npriority = \"low\"\n".to_owned(),
            1,
            "missing field `mode`",
        ),
        ("name = \"a\"\n[mode\n".to_owned(), 2, "unclosed table"),
    ];
    for (text, line, needle) in cases {
        let err = AgentDefinition::parse(Path::new("agents/x.toml"), &text).expect_err(needle);
        let shown = err.to_string();
        assert!(shown.starts_with("agents/x.toml:"), "names the file: {shown}");
        assert_eq!(err.line, line, "line of {needle:?} in:\n{text}\n{shown}");
        assert!(err.message.contains(needle), "{needle:?} in {shown}");
    }
}

#[test]
fn stele_agent_validate_reports_each_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"a\"\npriority = \"never\"\n").expect("write");
    let big = tmp.path().join("big.toml");
    std::fs::write(&big, "#".repeat(stele_engine::agent::MAX_DEFINITION_BYTES + 1)).expect("write");
    let o = crate::stele()
        .args(["agent", "validate", "--json"])
        .arg(fixtures().join("hello.toml"))
        .arg(&bad)
        .arg(&big)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1), "any invalid file fails the command");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["name"], "hello");
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(lines[1]["line"], 2);
    assert!(
        lines[2]["error"]
            .as_str()
            .expect("error")
            .contains("over the limit")
    );
    let o = crate::stele()
        .args(["agent", "validate"])
        .arg(fixtures())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1), "a directory is not a definition");
}
