//! Reasoning runs through the binary: the scripted provider, the Cedar gate
//! on every proposed call (allowed with conditions, denied, needing an
//! approval), real tools in a workspace, parking on an approval and
//! resuming in another process, every step journaled.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::stele;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    agent: PathBuf,
    workspace: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    std::fs::create_dir_all(&workspace).expect("ws");
    std::fs::write(workspace.join("notes.txt"), "Please summarise this workspace.\n").expect("notes");
    let agent = dir.path().join("assistant.toml");
    let text = std::fs::read_to_string(root().join("fixtures/reasoning/assistant.toml")).expect("fixture");
    let text = text
        .replace(
            "workspace = \"stele-workspace\"",
            &format!("workspace = {:?}", workspace.display().to_string()),
        )
        .replace(
            "script = \"fixtures/scripts/demo.json\"",
            &format!(
                "script = {:?}",
                root().join("fixtures/scripts/demo.json").display().to_string()
            ),
        );
    std::fs::write(&agent, text).expect("agent");
    Setup {
        data: dir.path().join("data"),
        agent,
        workspace,
        _dir: dir,
    }
}

fn cli(s: &Setup, args: &[&str]) -> std::process::Output {
    stele()
        .arg("--data")
        .arg(&s.data)
        .args(args)
        .args([
            "--policies",
            root().join("fixtures/policies").to_str().expect("utf8"),
        ])
        .output()
        .expect("run stele")
}

fn events(s: &Setup, run: &str) -> Vec<Value> {
    let out = stele()
        .arg("--data")
        .arg(&s.data)
        .args(["events", "--json", "--run", run])
        .output()
        .expect("events");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn kinds(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .map(|e| e["body"]["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn a_run_is_gated_parks_for_approval_and_resumes_in_another_process() {
    let s = setup();
    let out = cli(
        &s,
        &[
            "run",
            s.agent.to_str().expect("utf8"),
            "--input",
            "summarise the workspace",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "parked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parked: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(parked["run"], "run-1");
    let call = parked["awaiting"][0]["call"].as_str().expect("call").to_owned();

    let ev = events(&s, "run-1");
    let decisions: Vec<(String, String)> = ev
        .iter()
        .filter(|e| e["body"]["kind"] == "policy_decided")
        .map(|e| {
            let req: Value =
                serde_json::from_str(e["body"]["request"].as_str().expect("request")).expect("req");
            (
                req["resource"]["id"].as_str().expect("tool").to_owned(),
                e["body"]["verdict"].as_str().expect("verdict").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("read_file".to_owned(), "allow_with_conditions".to_owned()),
            ("run_command".to_owned(), "deny".to_owned()),
            ("write_file".to_owned(), "require_approval".to_owned()),
        ]
    );
    // The determining policies are named, the policy set is identified.
    let deny = ev.iter().find(|e| e["body"]["verdict"] == "deny").expect("deny");
    assert_eq!(deny["body"]["policies"][0], "no-commands-for-low-priority");
    assert_eq!(deny["body"]["policy_set"].as_str().expect("hash").len(), 64);
    // The read ran, with the condition applied, and its result is journaled.
    let called: Vec<&Value> = ev.iter().filter(|e| e["body"]["kind"] == "tool_called").collect();
    assert_eq!(called.len(), 1, "only the allowed call ran before parking");
    let args: Value =
        serde_json::from_str(called[0]["body"]["arguments"].as_str().expect("args")).expect("json");
    assert_eq!(args["max_bytes"], 65536);
    let returned = ev
        .iter()
        .find(|e| e["body"]["kind"] == "tool_returned")
        .expect("returned");
    assert_eq!(returned["body"]["output"], "Please summarise this workspace.\n");
    assert!(
        !s.workspace.join("summary.md").exists(),
        "nothing written before approval"
    );
    let k = kinds(&ev);
    assert_eq!(k.first().map(String::as_str), Some("run_started"));
    assert_eq!(k.last().map(String::as_str), Some("approval_requested"));

    // Another process approves: the run is rebuilt from the journal and goes on.
    let out = cli(
        &s,
        &[
            "approve",
            "run-1",
            &call,
            "--as",
            "alice",
            "--reason",
            "looks fine",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "approve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(done["outcome"], "completed");
    let summary = std::fs::read_to_string(s.workspace.join("summary.md")).expect("summary written");
    assert!(summary.starts_with("# Summary"));
    let ev = events(&s, "run-1");
    let approval = ev
        .iter()
        .find(|e| e["body"]["kind"] == "approval_decided")
        .expect("decided");
    assert_eq!(approval["body"]["approver"], "alice");
    assert_eq!(approval["body"]["approved"], true);
    let finished = ev
        .iter()
        .find(|e| e["body"]["kind"] == "run_finished")
        .expect("finished");
    assert_eq!(finished["body"]["outcome"], "completed");
    assert_eq!(finished["body"]["prompt_tokens"], 182 + 296 + 371 + 455);
    // No effect was repeated by the rebuild: one read, one write.
    assert_eq!(
        ev.iter().filter(|e| e["body"]["kind"] == "tool_called").count(),
        2
    );

    // Approving again is refused clearly; the journal verifies.
    let again = cli(&s, &["approve", "run-1", &call]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no call"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let verify = stele()
        .arg("--data")
        .arg(&s.data)
        .args(["journal", "verify"])
        .output()
        .expect("verify");
    assert!(verify.status.success());
}

#[test]
fn a_rejected_call_is_not_run_and_the_model_is_told() {
    let s = setup();
    let out = cli(
        &s,
        &["run", s.agent.to_str().expect("utf8"), "--input", "go", "--json"],
    );
    assert_eq!(out.status.code(), Some(3));
    let parked: Value = serde_json::from_slice(&out.stdout).expect("json");
    let call = parked["awaiting"][0]["call"].as_str().expect("call").to_owned();
    let out = cli(
        &s,
        &["reject", "run-1", &call, "--as", "bob", "--reason", "not now"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.workspace.join("summary.md").exists());
    let ev = events(&s, "run-1");
    let decided = ev
        .iter()
        .find(|e| e["body"]["kind"] == "approval_decided")
        .expect("decided");
    assert_eq!(decided["body"]["approved"], false);
    assert_eq!(
        ev.iter().filter(|e| e["body"]["kind"] == "tool_called").count(),
        1
    );
}

#[test]
fn bad_run_inputs_get_clear_errors() {
    let s = setup();
    let out = cli(&s, &["run", "nobody", "--input", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent named nobody"));
    let out = cli(&s, &["approve", "run-9", "call-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run named run-9"));
    // A process agent is not a reasoning agent.
    let hello = root().join("fixtures/agents/hello.toml");
    let out = cli(&s, &["run", hello.to_str().expect("utf8"), "--input", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not run a reasoning loop"));
}

#[test]
fn files_the_task_names_are_pre_hydrated_gated_and_journaled_with_their_hash() {
    let s = setup();
    std::fs::write(s.workspace.join("plan.md"), "step one\n").expect("plan");
    let out = cli(
        &s,
        &[
            "run",
            s.agent.to_str().expect("utf8"),
            "--input",
            "Summarise notes.txt, plan.md, ../outside.txt and missing.md.",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&s, "run-1");
    let k = kinds(&ev);
    // Before the first completion: a gate decision and the loaded context
    // per file of the workspace the task names (not the path leaving it,
    // not the missing file).
    let first_completion = k
        .iter()
        .position(|x| x == "completion_received")
        .expect("completion");
    let hydrated: Vec<&Value> = ev[..first_completion]
        .iter()
        .filter(|e| e["body"]["kind"] == "context_hydrated")
        .collect();
    let refs: Vec<&str> = hydrated
        .iter()
        .map(|e| e["body"]["reference"].as_str().expect("ref"))
        .collect();
    assert_eq!(refs, ["notes.txt", "plan.md"]);
    assert_eq!(
        hydrated[1]["body"]["blake3"].as_str().expect("hash"),
        blake3::hash(b"step one\n").to_hex().as_str()
    );
    assert_eq!(hydrated[1]["body"]["content"], "step one\n");
    let gated = ev[..first_completion]
        .iter()
        .filter(|e| e["body"]["kind"] == "policy_decided")
        .count();
    assert_eq!(gated, 2, "each loaded file passed the gate as a read_file");
    assert_eq!(
        stele_engine::hydrate::references("Summarise notes.txt, plan.md, ../outside.txt and missing.md."),
        ["notes.txt", "plan.md", "missing.md"]
    );
    // The run rebuilds in another process with its hydrated context.
    let call = serde_json::from_slice::<Value>(&out.stdout).expect("json")["awaiting"][0]["call"]
        .as_str()
        .expect("call")
        .to_owned();
    let out = cli(&s, &["approve", "run-1", &call, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
