//! Sagas, approval timeouts and the demo through the real binary: a failed
//! run compensates its writes newest first; a run killed with SIGKILL in the
//! middle is recovered (`stele saga recover`) with each compensation run
//! exactly once, also when the recovery itself died after journaling a
//! compensation's intent; an approval left past its policy timeout is
//! rejected by the timeout; `stele demo` runs (twice) and its journal
//! verifies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stele;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Setup {
    dir: tempfile::TempDir,
    data: PathBuf,
    ws: PathBuf,
    agent: PathBuf,
    policies: PathBuf,
}

const PERMIT_ALL: &str =
    "@id(\"all-tools\")\npermit (principal, action == Action::\"invoke_tool\", resource);\n";

/// An agent (normal priority) on `script`, a workspace, policies `cedar`.
fn setup(script: &str, cedar: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).expect("ws");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies");
    std::fs::write(policies.join("tools.cedar"), cedar).expect("cedar");
    let script_path = dir.path().join("script.json");
    std::fs::write(&script_path, script).expect("script");
    let agent = dir.path().join("writer.toml");
    std::fs::write(
        &agent,
        format!(
            "name = \"writer\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\ntier = \"native\"\nworkspace = {:?}\nscript = {:?}\nmax_steps = 8\n",
            ws.display().to_string(),
            script_path.display().to_string()
        ),
    )
    .expect("agent");
    Setup {
        data: dir.path().join("data"),
        ws,
        agent,
        policies,
        dir,
    }
}

fn cli(s: &Setup, args: &[&str]) -> Output {
    stele()
        .arg("--data")
        .arg(&s.data)
        .args(args)
        .arg("--policies")
        .arg(&s.policies)
        .stdin(Stdio::null())
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

fn bodies<'a>(ev: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ev.iter()
        .map(|e| &e["body"])
        .filter(|b| b["kind"] == kind)
        .collect()
}

fn write(path: &str, content: &str) -> String {
    serde_json::json!({"content": "", "tool_calls": [{"name": "write_file", "arguments": {"path": path, "content": content}}]})
        .to_string()
}

fn saga_json(s: &Setup, run: &str) -> Value {
    let out = stele()
        .arg("--data")
        .arg(&s.data)
        .args(["saga", "show", run, "--json"])
        .output()
        .expect("saga show");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn verify(data: &Path) {
    let out = stele()
        .arg("--data")
        .arg(data)
        .args(["journal", "verify"])
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_failed_run_compensates_its_writes_newest_first() {
    let script = format!(
        r#"{{"answers": [{}, {}, {{"error": "status:400"}}]}}"#,
        write("new.txt", "fresh"),
        write("old.txt", "overwritten")
    );
    let s = setup(&script, PERMIT_ALL);
    std::fs::write(s.ws.join("old.txt"), "original").expect("old");
    let out = cli(&s, &["run", s.agent.to_str().expect("utf8"), "--input", "write"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The effects are undone: the new file is gone, the old one is back.
    assert!(!s.ws.join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(s.ws.join("old.txt")).expect("old"),
        "original"
    );
    let ev = events(&s, "run-1");
    let steps: Vec<&str> = bodies(&ev, "saga_step_recorded")
        .iter()
        .map(|b| b["call_id"].as_str().expect("id"))
        .collect();
    assert_eq!(steps, ["call-0-0", "call-1-0"]);
    let compensated: Vec<(&str, bool)> = bodies(&ev, "saga_compensated")
        .iter()
        .map(|b| (b["call_id"].as_str().expect("id"), b["ok"].as_bool().expect("ok")))
        .collect();
    assert_eq!(
        compensated,
        [("call-1-0", true), ("call-0-0", true)],
        "newest first"
    );
    // Each intent precedes its call's effect; the run ends after its rollback.
    let kinds: Vec<&str> = ev
        .iter()
        .map(|e| e["body"]["kind"].as_str().expect("kind"))
        .collect();
    let first_step = kinds
        .iter()
        .position(|k| *k == "saga_step_recorded")
        .expect("step");
    let first_return = kinds.iter().position(|k| *k == "tool_returned").expect("ret");
    assert!(first_step < first_return);
    assert_eq!(kinds.last(), Some(&"run_finished"));
    let saga = saga_json(&s, "run-1");
    assert_eq!(saga["state"], "compensated");
    assert_eq!(saga["outcome"], "failed");
    verify(&s.data);
}

#[test]
fn a_run_killed_mid_saga_is_recovered_with_each_compensation_once() {
    // Write a file, then run a command that marks that it started and
    // sleeps: kill -9 while it sleeps (its ToolCalled is durable by then:
    // intent before effect).
    let sleep = serde_json::json!({"content": "", "tool_calls": [{"name": "run_command", "arguments": {"command": "sh", "args": ["-c", "touch started && sleep 5"]}}]});
    let script = format!(
        r#"{{"answers": [{}, {sleep}, {{"content": "done"}}]}}"#,
        write("a.txt", "A")
    );
    let s = setup(&script, PERMIT_ALL);
    let mut child = stele()
        .arg("--data")
        .arg(&s.data)
        .args([
            "run",
            s.agent.to_str().expect("utf8"),
            "--input",
            "go",
            "--policies",
        ])
        .arg(&s.policies)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while !s.ws.join("started").exists() {
        assert!(started.elapsed() < crate::TIMEOUT, "the command never started");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "stele ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let _ = child.wait();
    assert!(s.ws.join("a.txt").exists(), "the write happened before the kill");

    // Recovery compensates once and ends the run `interrupted`.
    let out = cli(&s, &["saga", "recover", "run-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !s.ws.join("a.txt").exists(),
        "compensated: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ev = events(&s, "run-1");
    assert_eq!(bodies(&ev, "saga_compensating").len(), 1);
    assert_eq!(bodies(&ev, "saga_compensated").len(), 1);
    let finished = bodies(&ev, "run_finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["outcome"], "interrupted");

    // Again: nothing more happens.
    std::fs::write(s.ws.join("a.txt"), "written later by someone else").expect("later");
    let out = cli(&s, &["saga", "recover", "run-1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to recover"));
    assert!(s.ws.join("a.txt").exists(), "a compensation never runs twice");
    let ev = events(&s, "run-1");
    assert_eq!(bodies(&ev, "saga_compensated").len(), 1);
    assert_eq!(saga_json(&s, "run-1")["state"], "compensated");
    verify(&s.data);
}

#[test]
fn a_compensation_whose_intent_is_journaled_but_not_its_result_is_rerun_once() {
    let script = format!(
        r#"{{"answers": [{}, {{"content": "", "tool_calls": [{{"name": "run_command", "arguments": {{"command": "sleep", "args": ["5"]}}}}]}}]}}"#,
        write("a.txt", "A")
    );
    let s = setup(&script, PERMIT_ALL);
    // Make the journal hold: the step recorded, the write done, then a
    // recovery that died right after journaling its compensation's intent.
    // Built with the library on the real journal, as the binary writes it.
    {
        let journal =
            stele_journal::Journal::open(&s.data, stele_journal::Options::default()).expect("journal");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let stream = stele_journal::StreamId::new("run:run-1").expect("stream");
        let compensation =
            serde_json::json!({"tool": "restore_file", "arguments": {"path": "a.txt", "existed": false}})
                .to_string();
        let bodies = vec![
            stele_journal::EventBody::RunStarted {
                run: "run-1".into(),
                agent: "writer".into(),
                input: "go".into(),
                parent: None,
            },
            stele_journal::EventBody::SagaStepRecorded {
                run: "run-1".into(),
                step: 1,
                call_id: "call-0-0".into(),
                tool: "write_file".into(),
                compensation: compensation.clone(),
            },
            stele_journal::EventBody::ToolReturned {
                run: "run-1".into(),
                step: 1,
                call_id: "call-0-0".into(),
                ok: true,
                output: "wrote 1 bytes to a.txt".into(),
                duration_ms: 1,
            },
            stele_journal::EventBody::SagaCompensating {
                run: "run-1".into(),
                call_id: "call-0-0".into(),
                action: compensation,
                reason: "the process driving the run died".into(),
            },
        ];
        rt.block_on(
            journal.append_many(
                bodies
                    .into_iter()
                    .map(|body| stele_journal::Append {
                        stream: stream.clone(),
                        cause: None,
                        body,
                    })
                    .collect(),
            ),
        )
        .expect("append");
    }
    // The run's agent must be registered for recovery to find its workspace.
    let reg = stele()
        .arg("--data")
        .arg(&s.data)
        .args(["agent", "register", s.agent.to_str().expect("utf8")])
        .output()
        .expect("register");
    assert!(reg.status.success(), "{}", String::from_utf8_lossy(&reg.stderr));
    std::fs::write(s.ws.join("a.txt"), "A").expect("the write's effect");
    let out = cli(&s, &["saga", "recover", "run-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.ws.join("a.txt").exists(), "the compensation was re-run");
    let ev = events(&s, "run-1");
    assert_eq!(bodies(&ev, "saga_compensating").len(), 1, "no second intent");
    let done = bodies(&ev, "saga_compensated");
    assert_eq!(done.len(), 1);
    assert!(
        done[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("re-run after an interruption"),
        "{}",
        done[0]["detail"]
    );
    verify(&s.data);
}

/// The fixture policies with the write approval's timeout set to 1 s.
fn fast_timeout_policies(dir: &Path) -> PathBuf {
    let p = dir.join("fast-policies");
    std::fs::create_dir_all(&p).expect("dir");
    for e in std::fs::read_dir(root().join("fixtures/policies")).expect("fixtures") {
        let e = e.expect("entry");
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        std::fs::write(
            p.join(e.file_name()),
            text.replace("@approval_timeout(\"10m\")", "@approval_timeout(\"1s\")"),
        )
        .expect("copy");
    }
    assert!(
        std::fs::read_to_string(p.join("tools.cedar"))
            .expect("tools")
            .contains("@approval_timeout(\"1s\")")
    );
    p
}

fn demo_agent(s: &Setup) -> PathBuf {
    std::fs::write(s.ws.join("notes.txt"), "Please summarise this workspace.\n").expect("notes");
    let text = std::fs::read_to_string(root().join("fixtures/reasoning/assistant.toml")).expect("fixture");
    let text = text
        .replace(
            "workspace = \"stele-workspace\"",
            &format!("workspace = {:?}", s.ws.display().to_string()),
        )
        .replace(
            "script = \"fixtures/scripts/demo.json\"",
            &format!(
                "script = {:?}",
                root().join("fixtures/scripts/demo.json").display().to_string()
            ),
        );
    let agent = s.dir.path().join("assistant.toml");
    std::fs::write(&agent, text).expect("agent");
    agent
}

#[test]
fn an_approval_left_past_its_timeout_is_rejected_by_the_timeout() {
    let mut s = setup("{}", PERMIT_ALL);
    s.policies = fast_timeout_policies(s.dir.path());
    let agent = demo_agent(&s);
    let out = cli(
        &s,
        &["run", agent.to_str().expect("utf8"), "--input", "go", "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parked: Value = serde_json::from_slice(&out.stdout).expect("json");
    let call = parked["awaiting"][0]["call"].as_str().expect("call").to_owned();
    let requested = bodies(&events(&s, "run-1"), "approval_requested")[0].clone();
    assert_eq!(requested["timeout_ms"], 1000);
    std::thread::sleep(Duration::from_millis(1200));
    // Approving now is refused, naming the expiry; the run went on without it.
    let out = cli(&s, &["approve", "run-1", &call, "--as", "alice"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has expired") && err.contains("rejected by the timeout"),
        "{err}"
    );
    let ev = events(&s, "run-1");
    let decided = bodies(&ev, "approval_decided");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["approver"], "expired");
    assert_eq!(decided[0]["approved"], false);
    assert!(!s.ws.join("summary.md").exists(), "the write never ran");
    assert_eq!(bodies(&ev, "run_finished")[0]["outcome"], "completed");
    verify(&s.data);
}

#[test]
fn stele_runs_resolves_a_timed_out_approval() {
    let mut s = setup("{}", PERMIT_ALL);
    s.policies = fast_timeout_policies(s.dir.path());
    let agent = demo_agent(&s);
    let out = cli(&s, &["run", agent.to_str().expect("utf8"), "--input", "go"]);
    assert_eq!(out.status.code(), Some(3));
    // Before the timeout: still parked, nothing decided.
    let out = cli(&s, &["runs", "--json"]);
    let runs: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(runs["run-1"]["state"], "awaiting_approval");
    std::thread::sleep(Duration::from_millis(1200));
    let out = cli(&s, &["runs", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected by the timeout"));
    let runs: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(runs["run-1"]["state"], "finished");
    let ev = events(&s, "run-1");
    assert_eq!(bodies(&ev, "approval_decided")[0]["approver"], "expired");
}

#[test]
fn the_demo_runs_twice_on_one_data_directory_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(root().join("fixtures"), dir.path().join("fixtures")).expect("link");
    for round in 1..=2 {
        let out = stele()
            .current_dir(dir.path())
            .arg("demo")
            .stdin(Stdio::null())
            .output()
            .expect("demo");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "round {round}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "pre-hydrated notes.txt",
            "deny by [\"no-commands-for-low-priority\"]",
            "approved by demo-operator",
            "saga: compensated",
            "CHANGELOG.md restored",
            "stele --data ./stele-data saga show",
            "audit export --run",
        ] {
            assert!(text.contains(want), "round {round}: no {want:?} in\n{text}");
        }
    }
    verify(&dir.path().join("stele-data"));
    let runs = stele()
        .current_dir(dir.path())
        .args(["runs", "--json"])
        .output()
        .expect("runs");
    let runs: Value = serde_json::from_slice(&runs.stdout).expect("json");
    let outcomes: Vec<&str> = ["run-1", "run-2", "run-3", "run-4"]
        .iter()
        .map(|r| runs[r]["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(outcomes, ["completed", "failed", "completed", "failed"]);
}
