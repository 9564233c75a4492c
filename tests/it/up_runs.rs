//! Reasoning runs inside `stele up`, through the real binary: `stele run`
//! and `stele approve` going through the daemon (the same output and exit
//! codes as the direct path), the same over HTTP (`POST /v1/runs`,
//! `/approve`, `/reject`) with its errors, a parked run surviving a
//! `kill -9` of the daemon and approved after the restart, an approval
//! timeout enforced by the daemon's timer (no client touches the run), a
//! scheduled reasoning agent stopped mid-run (its run journaled
//! `cancelled`, its task `stopped`), and runs started over HTTP and
//! continuations taking scheduler slots (queued, placed, one at a time in
//! one slot), a queued start and a queued continuation each done once
//! after a `kill -9` of the daemon (an expiry's too), and a preempted requested run
//! cancelled, its task ending cleanly when placed again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::up::{Up, WAIT, dump, kind, verify};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn policies() -> String {
    root().join("fixtures/policies").display().to_string()
}

/// A workspace with notes and the fixture `assistant` (demo script: read,
/// a denied command, a write that needs approval, an answer), with
/// absolute paths (the daemon resolves relative ones from its own cwd).
pub(crate) fn assistant(dir: &Path) -> (PathBuf, PathBuf) {
    let workspace = dir.join("ws");
    std::fs::create_dir_all(&workspace).expect("ws");
    std::fs::write(workspace.join("notes.txt"), "Please summarise this workspace.\n").expect("notes");
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
    let file = dir.join("assistant.toml");
    std::fs::write(&file, text).expect("agent");
    (file, workspace)
}

fn out_json(out: &std::process::Output) -> Value {
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn run_events<'a>(ev: &'a [Value], run: &str) -> Vec<&'a Value> {
    ev.iter()
        .filter(|e| e["stream"] == format!("run:{run}"))
        .collect()
}

/// `stele run … --json` against the daemon: parks (exit 3) on the write.
pub(crate) fn run_until_parked(up: &Up, agent: &Path) -> (String, String) {
    let out = up.cli(&[
        "run",
        agent.to_str().expect("utf8"),
        "--input",
        "Summarise the workspace",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stele run through the daemon should park: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = out_json(&out);
    assert_eq!(v["outcome"], "awaiting_approval", "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let call = v["awaiting"][0]["call"].as_str().expect("call").to_owned();
    (run, call)
}

#[test]
fn stele_run_and_approve_go_through_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, workspace) = assistant(dir.path());
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let (run, call) = run_until_parked(&up, &agent);
    // The run is the daemon's: its events are in the daemon's journal.
    let ev = up.events();
    let mine = run_events(&ev, &run);
    assert!(
        mine.iter().any(|e| e["body"]["kind"] == "approval_requested"),
        "{}",
        dump(&ev)
    );
    let denied = mine
        .iter()
        .filter(|e| e["body"]["kind"] == "policy_decided" && e["body"]["verdict"] == "deny")
        .count();
    assert_eq!(
        denied,
        1,
        "the command is denied for a low-priority agent:\n{}",
        dump(&ev)
    );
    // A wrong call is refused clearly; the run still waits.
    let out = up.cli(&["approve", &run, "call_nope"]);
    assert_eq!(out.status.code(), Some(2), "an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no call call_nope awaiting approval"), "{err}");
    // Approve: the run goes on in the daemon; the CLI follows it to the end.
    let out = up.cli(&["approve", &run, &call, "--as", "alice", "--reason", "fine"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "approve: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with(&format!("{run} completed after ")), "{text}");
    assert!(text.contains(&format!("stele events --run {run}")), "{text}");
    assert!(
        workspace.join("summary.md").is_file(),
        "the approved write happened"
    );
    let ev = up.events();
    let decided: Vec<&Value> = run_events(&ev, &run)
        .into_iter()
        .filter(|e| e["body"]["kind"] == "approval_decided")
        .collect();
    assert_eq!(decided.len(), 1, "{}", dump(&ev));
    assert_eq!(decided[0]["body"]["approver"], "alice");
    assert_eq!(decided[0]["body"]["approved"], true);
    // Approving again: the run has finished.
    let out = up.cli(&["approve", &run, &call]);
    assert_eq!(out.status.code(), Some(2), "an error");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is finished"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

fn get(up: &Up, path: &str) -> (u16, Value) {
    let mut r = up.http().get(format!("{}{path}", up.http)).call().expect("GET");
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .read_to_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

fn post(up: &Up, path: &str, body: &Value) -> (u16, Value) {
    let mut r = up
        .http()
        .post(format!("{}{path}", up.http))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("POST");
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .read_to_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

/// Polls `GET /v1/runs/{id}` until the daemon no longer drives the run.
fn settled(up: &Up, run: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = get(up, &format!("/v1/runs/{run}"));
        assert_eq!(status, 200, "{v}");
        if v["driving"] == false && (v["state"] == "finished" || v["state"] == "awaiting_approval") {
            return v;
        }
        assert!(Instant::now() < deadline, "{run} did not settle: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn runs_start_and_are_decided_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, workspace) = assistant(dir.path());
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let definition = std::fs::read_to_string(&agent).expect("agent");
    // Bad requests are clean 4xx.
    let (status, v) = post(&up, "/v1/runs", &json!({"input": "x"}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("exactly one of"),
        "{v}"
    );
    let (status, v) = post(&up, "/v1/runs", &json!({"agent": "nobody", "input": "x"}));
    assert_eq!(status, 404, "{v}");
    let (status, v) = post(&up, "/v1/runs", &json!({"definition": "name = 1", "input": "x"}));
    assert_eq!(status, 400, "{v}");
    let (status, v) = post(&up, "/v1/runs", &json!({"agent": "a", "input": 3}));
    assert_eq!(status, 422, "{v}");
    // Start from an inline definition: 202 with the run id.
    let (status, v) = post(
        &up,
        "/v1/runs",
        &json!({"definition": definition, "input": "Summarise the workspace"}),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let parked = settled(&up, &run);
    let call = parked["awaiting"]
        .as_object()
        .and_then(|a| a.keys().next().cloned())
        .expect("a call awaits approval");
    // Deciding errors.
    let (status, v) = post(&up, "/v1/runs/run-999/approve", &json!({"call": call}));
    assert_eq!(status, 404, "{v}");
    let (status, v) = post(
        &up,
        &format!("/v1/runs/{run}/approve"),
        &json!({"call": "call_nope"}),
    );
    assert_eq!(status, 409, "{v}");
    let (status, v) = post(&up, &format!("/v1/runs/{run}/approve"), &json!({"nope": 1}));
    assert_eq!(status, 422, "{v}");
    // Reject: the run goes on without the write and finishes.
    let (status, v) = post(
        &up,
        &format!("/v1/runs/{run}/reject"),
        &json!({"call": call, "reason": "not now", "approver": "bob"}),
    );
    assert_eq!(status, 202, "{v}");
    let done = settled(&up, &run);
    assert_eq!(done["state"], "finished", "{done}");
    assert!(done["steps"].as_u64().is_some_and(|s| s > 0), "{done}");
    assert!(
        !workspace.join("summary.md").exists(),
        "the rejected write did not happen"
    );
    // A second run of the now registered agent, by name.
    let (status, v) = post(&up, "/v1/runs", &json!({"agent": "assistant", "input": "again"}));
    assert_eq!(status, 202, "{v}");
    assert_ne!(v["run"], run.as_str());
    settled(&up, v["run"].as_str().expect("run"));
    let ev = up.events();
    let decided = kind(&ev, "approval_decided");
    assert_eq!(decided[0]["body"]["approver"], "bob", "{}", dump(&ev));
    assert_eq!(decided[0]["body"]["approved"], false);
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

#[test]
fn a_parked_run_survives_a_daemon_kill_and_is_approved_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, workspace) = assistant(dir.path());
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let (run, call) = run_until_parked(&up, &agent);
    up.signal(9);
    let _ = up.wait_exit();
    drop(up);
    let up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let out = up.cli(&["runs", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs = out_json(&out);
    assert_eq!(runs[&run]["state"], "awaiting_approval", "{runs}");
    let out = up.cli(&["approve", &run, &call, "--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = out_json(&out);
    assert_eq!(v["outcome"], "completed", "{v}");
    assert!(workspace.join("summary.md").is_file());
    drop(up);
    verify(&dir.path().join("data"));
}

/// The fixture policies with the write approval's timeout set to 1 s.
fn fast_timeout_policies(dir: &Path) -> PathBuf {
    let out = dir.join("policies");
    std::fs::create_dir_all(&out).expect("policies dir");
    for entry in std::fs::read_dir(root().join("fixtures/policies")).expect("fixtures") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("policy");
        let name = path.file_name().expect("name");
        std::fs::write(
            out.join(name),
            text.replace("@approval_timeout(\"10m\")", "@approval_timeout(\"1s\")"),
        )
        .expect("write policy");
    }
    out
}

#[test]
fn the_daemon_rejects_an_approval_left_past_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, workspace) = assistant(dir.path());
    let fast = fast_timeout_policies(dir.path());
    let mut up = Up::start_with(dir.path(), None, &["--policies", fast.to_str().expect("utf8")]);
    let (run, call) = run_until_parked(&up, &agent);
    // Nobody touches the run: the daemon's timer resolves it.
    let ev = up.wait_for("the approval to expire and the run to finish", |ev| {
        let mine = run_events(ev, &run);
        mine.iter().any(|e| e["body"]["kind"] == "approval_decided")
            && mine.iter().any(|e| e["body"]["kind"] == "run_finished")
    });
    let mine = run_events(&ev, &run);
    let decided = mine
        .iter()
        .find(|e| e["body"]["kind"] == "approval_decided")
        .expect("decided");
    assert_eq!(decided["body"]["approver"], "expired", "{}", dump(&ev));
    assert_eq!(decided["body"]["approved"], false);
    assert_eq!(decided["body"]["call_id"], call.as_str());
    assert!(
        decided["body"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("rejected by the timeout"),
        "{decided}"
    );
    assert!(!workspace.join("summary.md").exists());
    // Deciding it now is refused: it is no longer awaited.
    let out = up.cli(&["approve", &run, &call]);
    assert_eq!(out.status.code(), Some(2), "an error");
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

/// Whether a `/bin/sleep SECS` (a sleeper's tool call) runs.
fn sleeping(secs: &str) -> bool {
    let cmdline = format!("/bin/sleep\0{secs}\0");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| c == cmdline.as_bytes())
}

/// The agents directory (under `dir`) of an ephemeral reasoning agent
/// `name` whose first step runs `/bin/sleep SECS` natively, under an
/// execution timeout of `timeout`.
fn sleeper_agent(dir: &Path, name: &str, secs: &str, timeout: &str) -> PathBuf {
    let workspace = dir.join("ws");
    std::fs::create_dir_all(&workspace).expect("ws");
    let script = dir.join(format!("{name}.json"));
    std::fs::write(
        &script,
        json!({"model": "scripted", "answers": [
            {"content": "waiting", "tool_calls": [{"name": "run_command", "arguments": {"command": "/bin/sleep", "args": [secs]}}]},
            {"content": "woke up"}
        ]})
        .to_string(),
    )
    .expect("script");
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents).expect("agents");
    std::fs::write(
        agents.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"{timeout}\"\n[runs]\nkind = \"reasoning\"\ntier = \"native\"\ntools = [\"run_command\"]\nworkspace = {:?}\nscript = {:?}\n",
            workspace.display().to_string(),
            script.display().to_string()
        ),
    )
    .expect("agent");
    agents
}

#[test]
fn stopping_a_scheduled_reasoning_agent_cancels_its_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = sleeper_agent(dir.path(), "sleeper", "37", "120s");
    let mut up = Up::start_with(dir.path(), Some(&agents), &["--policies", &policies()]);
    let ev = up.wait_for("the sleeper's tool call", |ev| {
        !kind(ev, "tool_called").is_empty()
    });
    let started = kind(&ev, "run_started");
    assert_eq!(started.len(), 1, "{}", dump(&ev));
    let run = started[0]["body"]["run"].as_str().expect("run").to_owned();
    // Its input says what triggered it.
    let input = started[0]["body"]["input"].as_str().unwrap_or("");
    assert!(input.contains("of agent sleeper, triggered by"), "{input}");
    let deadline = Instant::now() + WAIT;
    while !sleeping("37") {
        assert!(Instant::now() < deadline, "the tool's command never showed up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = up.cli(&["agent", "stop", "sleeper"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = up.wait_for("the run's cancellation and the task's exit", |ev| {
        !kind(ev, "run_finished").is_empty() && !kind(ev, "process_exited").is_empty()
    });
    let finished = kind(&ev, "run_finished");
    assert_eq!(finished[0]["body"]["run"], run.as_str());
    assert_eq!(finished[0]["body"]["outcome"], "cancelled", "{}", dump(&ev));
    let exited = kind(&ev, "process_exited");
    assert_eq!(exited[0]["body"]["stopped"], true, "{}", dump(&ev));
    // The tool's command was stopped with its run.
    let deadline = Instant::now() + WAIT;
    while sleeping("37") {
        assert!(
            Instant::now() < deadline,
            "the cancelled run's command still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ev = up.wait_for("the agent to terminate", |ev| {
        kind(ev, "agent_state_changed")
            .iter()
            .any(|e| e["body"]["agent"] == "sleeper" && e["body"]["to"] == "terminated")
    });
    assert!(
        kind(&ev, "run_finished").len() == 1,
        "no second run:\n{}",
        dump(&ev)
    );
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

#[test]
fn a_reasoning_run_past_its_execution_timeout_is_cancelled_and_its_task_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = sleeper_agent(dir.path(), "dawdler", "43", "2s");
    let mut up = Up::start_with(dir.path(), Some(&agents), &["--policies", &policies()]);
    let ev = up.wait_for("the run's end by its timeout and the task's exit", |ev| {
        !kind(ev, "run_finished").is_empty() && !kind(ev, "process_exited").is_empty()
    });
    let finished = kind(&ev, "run_finished");
    assert_eq!(finished.len(), 1, "{}", dump(&ev));
    assert_eq!(finished[0]["body"]["outcome"], "cancelled", "{}", dump(&ev));
    let text = finished[0].to_string();
    assert!(
        text.contains("ran past its execution_timeout of 2s"),
        "the run says why it ended: {text}"
    );
    let exited = kind(&ev, "process_exited");
    assert_eq!(exited[0]["body"]["timed_out"], true, "{}", dump(&ev));
    assert_eq!(exited[0]["body"]["stopped"], false, "{}", dump(&ev));
    assert_eq!(exited[0]["body"]["code"], 1, "{}", dump(&ev));
    // The timed-out run's command was stopped with it.
    let deadline = Instant::now() + WAIT;
    while sleeping("43") {
        assert!(
            Instant::now() < deadline,
            "the timed-out run's command still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

#[test]
fn an_event_driven_reasoning_agent_gets_its_event_and_the_token_names_the_approver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    std::fs::create_dir_all(&workspace).expect("ws");
    let script = dir.path().join("watcher.json");
    std::fs::write(
        &script,
        json!({"model": "scripted", "answers": [
            {"content": "noting it", "tool_calls": [{"name": "write_file", "arguments": {"path": "seen.txt", "content": "seen"}}]},
            {"content": "noted"}
        ]})
        .to_string(),
    )
    .expect("script");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("agents");
    std::fs::write(
        agents.join("watcher.toml"),
        format!(
            "name = \"watcher\"\npriority = \"normal\"\n[mode]\nkind = \"event-driven\"\nfilter = {{ kinds = [\"annotated\"], streams = [\"ops\"] }}\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\ntools = [\"write_file\"]\nworkspace = {:?}\nscript = {:?}\n",
            workspace.display().to_string(),
            script.display().to_string()
        ),
    )
    .expect("agent");
    // Authentication on: an operate token named `oncall`.
    let out = crate::stele()
        .args(["token", "create", "oncall", "--scope", "operate", "--json"])
        .output()
        .expect("token create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = out_json(&out);
    let token = t["token"].as_str().expect("token").to_owned();
    let line = t["config"].as_str().expect("config line");
    std::fs::write(
        dir.path().join("stele.toml"),
        format!("{}\n{line}\n", crate::up::CONFIG),
    )
    .expect("config");
    let mut up = Up::start_with(dir.path(), Some(&agents), &["--policies", &policies()]);
    let out = up.cli(&[
        "journal",
        "append",
        "--stream",
        "ops",
        "--text",
        "deploy started",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seq = out_json(&out)["seq"].as_u64().expect("seq");
    let ev = up.wait_for("the watcher's run to park", |ev| {
        !kind(ev, "approval_requested").is_empty()
    });
    let started = kind(&ev, "run_started");
    assert_eq!(started.len(), 1, "{}", dump(&ev));
    let run = started[0]["body"]["run"].as_str().expect("run").to_owned();
    let input = started[0]["body"]["input"].as_str().unwrap_or("");
    assert!(
        input.contains(&format!("triggered by event {seq} on stream ops"))
            && input.contains("deploy started"),
        "the input carries the event: {input}"
    );
    let call = kind(&ev, "approval_requested")[0]["body"]["call_id"]
        .as_str()
        .expect("call")
        .to_owned();
    // Without the token: 401; with it the approver is the token's name,
    // whatever the body says.
    let url = format!("{}/v1/runs/{run}/approve", up.http);
    let body = json!({"call": call, "approver": "mallory"}).to_string();
    let r = up
        .http()
        .post(&url)
        .header("content-type", "application/json")
        .send(&body)
        .expect("POST");
    assert_eq!(r.status().as_u16(), 401);
    let r = up
        .http()
        .post(&url)
        .header("content-type", "application/json")
        .header("authorization", &format!("Bearer {token}"))
        .send(&body)
        .expect("POST");
    assert_eq!(r.status().as_u16(), 202);
    let ev = up.wait_for("the run to finish", |ev| !kind(ev, "run_finished").is_empty());
    assert_eq!(
        kind(&ev, "run_finished")[0]["body"]["outcome"],
        "completed",
        "{}",
        dump(&ev)
    );
    let decided = kind(&ev, "approval_decided");
    assert_eq!(decided[0]["body"]["approver"], "oncall", "{}", dump(&ev));
    assert_eq!(
        std::fs::read_to_string(workspace.join("seen.txt")).expect("written"),
        "seen"
    );
    // The task ended when the run parked; the approval finished the run
    // in a task of its own (queued by the request, trigger `request
    // continue …`), which ended with it.
    let ev = up.wait_for("the continuation's task to end", |ev| {
        kind(ev, "process_exited").len() == 2
    });
    let exits = kind(&ev, "process_exited");
    assert!(exits.iter().all(|e| e["body"]["code"] == 0), "{}", dump(&ev));
    let queued = kind(&ev, "task_queued");
    assert_eq!(queued.len(), 2, "{}", dump(&ev));
    assert_eq!(
        queued[1]["body"]["trigger"],
        format!("request continue {run}: {call} approved by oncall"),
        "{}",
        dump(&ev)
    );
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

/// A daemon whose bus runs (`[bus] policies`) and whose MCP server is the
/// signed test server; a run that messages (bus builtin), parks on a write,
/// and after the approval calls an MCP tool: the daemon offers the same
/// tools to the continued run.
#[test]
fn the_daemon_offers_bus_and_mcp_tools_to_started_and_continued_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_policies = dir.path().join("policies");
    std::fs::create_dir_all(&run_policies).expect("policies dir");
    std::fs::copy(
        root().join("fixtures/mcp/policies/mcp.cedar"),
        run_policies.join("mcp.cedar"),
    )
    .expect("copy policy");
    // The bus decides with the daemon's set too: its message rules.
    std::fs::copy(
        root().join("fixtures/policies/messages.cedar"),
        run_policies.join("messages.cedar"),
    )
    .expect("copy policy");
    std::fs::write(
        run_policies.join("run.cedar"),
        "@id(\"write-needs-approval\")\n@approval(\"writing a file needs an operator's approval\")\npermit (principal, action == Action::\"invoke_tool\", resource == Tool::\"write_file\");\n\
         @id(\"runs-message-agents\")\npermit (principal, action == Action::\"invoke_tool\", resource == Tool::\"send_to\");\n",
    )
    .expect("run policy");
    std::fs::write(
        dir.path().join("stele.toml"),
        format!(
            "{}\n[bus]\npolicies = {:?}\n\n[mcp]\ntool_verification = \"strict\"\n\n[[mcp.servers]]\nname = \"signed\"\ncommand = \"python3\"\nargs = [{:?}]\ndomain = \"tools.example\"\nenv = {{ SCHEMAPIN_KEY = \"a\", SCHEMAPIN_MODE = \"signed\" }}\n",
            crate::up::CONFIG,
            policies().as_str(),
            root().join("fixtures/mcp/signed_server.py").display().to_string()
        ),
    )
    .expect("config");
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        r#"{"model": "scripted", "answers": [
  {"content": "Telling myself.", "tool_calls": [{"name": "send_to", "arguments": {"agent": "adder", "message": "started"}}]},
  {"content": "Noting the task.", "tool_calls": [{"name": "write_file", "arguments": {"path": "task.txt", "content": "add 2 and 3"}}]},
  {"content": "Now the sum.", "tool_calls": [{"name": "mcp__signed__add", "arguments": {"a": 2, "b": 3}}]},
  {"content": "2 + 3 = 5."}
]}"#,
    )
    .expect("script");
    let agent = dir.path().join("adder.toml");
    std::fs::write(
        &agent,
        format!(
            "name = \"adder\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 64\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\nsystem = \"You add numbers.\"\ntools = [\"send_to\", \"write_file\", \"mcp__signed__*\"]\nworkspace = {:?}\nscript = {:?}\nmax_steps = 6\n",
            dir.path().join("ws").display().to_string(),
            script.display().to_string()
        ),
    )
    .expect("agent");
    let p = run_policies.display().to_string();
    let mut up = Up::start_with(dir.path(), None, &["--policies", &p]);
    let out = up.cli(&[
        "run",
        agent.to_str().expect("utf8"),
        "--input",
        "add 2 and 3",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "parks on the write: {:?}",
        out_json(&out)
    );
    let v = out_json(&out);
    let run = v["run"].as_str().expect("run").to_owned();
    let call = v["awaiting"][0]["call"].as_str().expect("call").to_owned();
    let out = up.cli(&["approve", &run, &call, "--json"]);
    let v = out_json(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["answer"], "2 + 3 = 5.", "{v}");

    let ev = up.events();
    let returned: Vec<&Value> = run_events(&ev, &run)
        .into_iter()
        .filter(|e| e["body"]["kind"] == "tool_returned")
        .collect();
    assert_eq!(returned.len(), 3, "{}", dump(&ev));
    assert!(
        returned.iter().all(|r| r["body"]["ok"] == true),
        "send_to, the write and the MCP call succeed:\n{}",
        dump(&ev)
    );
    assert_eq!(returned[2]["body"]["output"], "5");
    let sent = kind(&ev, "message_sent");
    assert_eq!(sent.len(), 1, "{}", dump(&ev));
    assert_eq!(
        sent[0]["body"]["context"].as_str().expect("context"),
        format!("{run}/{}", returned[0]["body"]["call_id"].as_str().expect("id"))
    );
    assert_eq!(kind(&ev, "message_delivered").len(), 1, "{}", dump(&ev));
    assert_eq!(kind(&ev, "mcp_tool_called").len(), 1, "{}", dump(&ev));
    up.signal(15);
    assert!(up.wait_exit().success());

    // Replayed without the daemon: identical, nothing sent or called again.
    let config = dir.path().join("stele.toml");
    let r = crate::run_bounded(&[
        "--data",
        up.data.to_str().expect("utf8"),
        "--config",
        config.to_str().expect("utf8"),
        "replay",
        &run,
        "--policies",
        &p,
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    verify(&up.data);
}

/// A reasoning agent `name` (normal priority, 200 MB: one fills the test
/// host's only slot) answering from `answers`, as TOML text.
fn slot_filler(dir: &Path, name: &str, answers: &Value) -> String {
    let workspace = dir.join(format!("{name}-ws"));
    std::fs::create_dir_all(&workspace).expect("ws");
    let script = dir.join(format!("{name}.json"));
    std::fs::write(
        &script,
        json!({"model": "scripted", "answers": answers}).to_string(),
    )
    .expect("script");
    format!(
        "name = \"{name}\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 200\ncpu_cores = 0.5\nexecution_timeout = \"60s\"\n[runs]\nkind = \"reasoning\"\ntier = \"native\"\ntools = [\"run_command\"]\nworkspace = {:?}\nscript = {:?}\n",
        workspace.display().to_string(),
        script.display().to_string()
    )
}

/// The seq of the first event matching `pred`.
fn seq_of(ev: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> u64 {
    ev.iter()
        .find(|e| pred(e))
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or_else(|| panic!("no {what}:\n{}", dump(ev)))
}

fn task_event(ev: &[Value], kind_name: &str, task: &str) -> u64 {
    seq_of(ev, &format!("{kind_name} of {task}"), |e| {
        e["body"]["kind"] == kind_name && e["body"]["task"] == task
    })
}

/// The task a request queued for `agent` whose trigger begins with `what`.
fn requested_task(ev: &[Value], agent: &str, what: &str) -> String {
    let e = ev
        .iter()
        .find(|e| {
            e["body"]["kind"] == "task_queued"
                && e["body"]["agent"] == agent
                && e["body"]["trigger"].as_str().is_some_and(|t| t.starts_with(what))
        })
        .unwrap_or_else(|| panic!("no task queued for {agent} by {what:?}:\n{}", dump(ev)));
    e["body"]["task"].as_str().expect("task").to_owned()
}

/// Runs started over HTTP and continuations take scheduler slots: with one
/// slot that holds one of the agents at a time, three runs (two of one
/// agent) never hold it together — the second agent's run is queued while
/// the first drives and placed only after the first's task finished, and a
/// second start of the busy agent waits for its task to end rather than
/// running beside it; an approved run continues in a task of its own,
/// queued and placed before its next step.
#[test]
fn http_runs_and_continuations_take_scheduler_slots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = slot_filler(
        dir.path(),
        "slow",
        &json!([
            {"content": "waiting", "tool_calls": [{"name": "run_command", "arguments": {"command": "/bin/sleep", "args": ["1"]}}]},
            {"content": "slept"}
        ]),
    );
    let quick = slot_filler(dir.path(), "quick", &json!([{"content": "at once"}]));
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);

    let (status, v) = post(
        &up,
        "/v1/runs",
        &json!({"definition": slow, "input": "sleep a little"}),
    );
    assert_eq!(status, 202, "{v}");
    let slow_run = v["run"].as_str().expect("run").to_owned();
    // Another agent's run waits for the slot (answered once placed), and
    // so does a second run of the busy agent.
    let (quick_run, again_run) = std::thread::scope(|s| {
        let quick_start = s.spawn(|| {
            post(
                &up,
                "/v1/runs",
                &json!({"definition": quick, "input": "be quick"}),
            )
        });
        // The quick run's task queues first.
        up.wait_for("the quick run's task", |ev| {
            ev.iter()
                .any(|e| e["body"]["kind"] == "task_queued" && e["body"]["agent"] == "quick")
        });
        let (status, v) = post(&up, "/v1/runs", &json!({"agent": "slow", "input": "sleep again"}));
        assert_eq!(status, 202, "{v}");
        let again = v["run"].as_str().expect("run").to_owned();
        let (status, v) = quick_start.join().expect("quick start");
        assert_eq!(status, 202, "{v}");
        (v["run"].as_str().expect("run").to_owned(), again)
    });
    for run in [&slow_run, &quick_run, &again_run] {
        assert_eq!(settled(&up, run)["outcome"], "completed", "{run}");
    }

    let ev = up.events();
    let slow_task = requested_task(&ev, "slow", "request run over HTTP: sleep a little");
    let quick_task = requested_task(&ev, "quick", "request run over HTTP: be quick");
    let again_task = requested_task(&ev, "slow", "request run over HTTP: sleep again");
    let started = |run: &str| {
        seq_of(&ev, &format!("{run}'s run_started"), |e| {
            e["body"]["kind"] == "run_started" && e["body"]["run"] == run
        })
    };
    let ended = |run: &str| {
        seq_of(&ev, &format!("{run}'s run_finished"), |e| {
            e["body"]["kind"] == "run_finished" && e["body"]["run"] == run
        })
    };
    // (placed, run started, run finished, task finished) of each, in the
    // order they held the slot: each placed only after the one before
    // finished; each run within its task.
    let mut held: Vec<(u64, u64, u64, u64)> = [
        (&slow_task, &slow_run),
        (&quick_task, &quick_run),
        (&again_task, &again_run),
    ]
    .iter()
    .map(|(task, run)| {
        (
            task_event(&ev, "task_placed", task),
            started(run),
            ended(run),
            task_event(&ev, "task_finished", task),
        )
    })
    .collect();
    held.sort_unstable();
    for (placed, begun, end, done) in &held {
        assert!(
            placed < begun && begun < end && end < done,
            "a run drives inside its placed task:\n{}",
            dump(&ev)
        );
    }
    for pair in held.windows(2) {
        assert!(
            pair[0].3 < pair[1].0,
            "two runs never hold the one slot together:\n{}",
            dump(&ev)
        );
    }
    assert!(
        task_event(&ev, "task_queued", &quick_task) < task_event(&ev, "task_finished", &slow_task),
        "the second run queued while the first drove:\n{}",
        dump(&ev)
    );
    // The tasks ended as their runs did; the agents were not terminated
    // by a requested run (a request applies no execution-mode rule).
    let finished: Vec<_> = kind(&ev, "task_finished")
        .into_iter()
        .filter(|e| {
            [&slow_task, &quick_task, &again_task]
                .iter()
                .any(|t| e["body"]["task"] == t.as_str())
        })
        .collect();
    assert_eq!(finished.len(), 3, "{}", dump(&ev));
    assert!(
        finished.iter().all(|e| e["body"]["outcome"] == "completed"),
        "{}",
        dump(&ev)
    );
    assert!(
        !kind(&ev, "agent_state_changed")
            .iter()
            .any(|e| e["body"]["to"] == "terminated"),
        "{}",
        dump(&ev)
    );

    // A parked run's approval continues it in a task of its own.
    let (agent, _) = assistant(dir.path());
    let (run, call) = run_until_parked(&up, &agent);
    let (status, v) = post(&up, &format!("/v1/runs/{run}/approve"), &json!({"call": call}));
    assert_eq!(status, 202, "{v}");
    assert_eq!(settled(&up, &run)["state"], "finished");
    let ev = up.events();
    let start_task = requested_task(&ev, "assistant", "request run over HTTP: ");
    let cont_task = requested_task(
        &ev,
        "assistant",
        &format!("request continue {run}: {call} approved"),
    );
    assert_ne!(start_task, cont_task);
    let queued = task_event(&ev, "task_queued", &cont_task);
    let placed = task_event(&ev, "task_placed", &cont_task);
    let parked_at = task_event(&ev, "task_finished", &start_task);
    let decided = seq_of(&ev, "the approval", |e| {
        e["body"]["kind"] == "approval_decided" && e["stream"] == format!("run:{run}")
    });
    let steps_after: Vec<u64> = run_events(&ev, &run)
        .iter()
        .filter(|e| e["seq"].as_u64().expect("seq") > parked_at)
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        parked_at < queued && queued < placed && placed < decided,
        "the continuation is queued and placed before its steps:\n{}",
        dump(&ev)
    );
    assert!(
        steps_after.iter().all(|&s| s > placed),
        "no step of the continuation before its TaskPlaced:\n{}",
        dump(&ev)
    );
    let cont_done = task_event(&ev, "task_finished", &cont_task);
    let run_done = seq_of(&ev, "the run's end", |e| {
        e["body"]["kind"] == "run_finished" && e["stream"] == format!("run:{run}")
    });
    assert!(
        run_done < cont_done,
        "the slot is held until the run ends:\n{}",
        dump(&ev)
    );
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

/// `POST` without the helper's `expect`: the client may lose its daemon.
fn post_lossy(up: &Up, path: &str, body: &Value) -> Result<u16, String> {
    up.http()
        .post(format!("{}{path}", up.http))
        .header("content-type", "application/json")
        .send(body.to_string())
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// A slot filler `slow` whose one command sleeps `secs` (the slot stays
/// held); event-driven on an event nobody sends, so that it runs only when
/// asked (a restart queues no run of it).
fn sleeper(dir: &Path, secs: &str) -> String {
    slot_filler(
        dir,
        "slow",
        &json!([
            {"content": "waiting", "tool_calls": [{"name": "run_command", "arguments": {"command": "/bin/sleep", "args": [secs]}}]},
            {"content": "slept"}
        ]),
    )
    .replace(
        "kind = \"ephemeral\"",
        "kind = \"event-driven\"\nfilter = { kinds = [\"never\"] }",
    )
}

/// The `run_started` events whose input is `input`.
fn runs_started<'a>(ev: &'a [Value], input: &str) -> Vec<&'a Value> {
    kind(ev, "run_started")
        .into_iter()
        .filter(|e| e["body"]["input"] == input)
        .collect()
}

fn last_runtime_start(ev: &[Value]) -> u64 {
    kind(ev, "runtime_started")
        .last()
        .and_then(|e| e["seq"].as_u64())
        .expect("a runtime_started")
}

/// A run requested over HTTP, queued behind a busy slot, survives a
/// `kill -9` of the daemon: its `TaskRequested` says what was asked, so
/// after the restart its task is placed and the run begins from it (its
/// client is gone: nobody waits) and completes — once.
#[test]
fn a_queued_http_run_survives_a_daemon_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = sleeper(dir.path(), "30");
    let quick = slot_filler(dir.path(), "quick", &json!([{"content": "at once"}]));
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let (status, v) = post(
        &up,
        "/v1/runs",
        &json!({"definition": slow, "input": "hold the slot"}),
    );
    assert_eq!(status, 202, "{v}");
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            post_lossy(
                &up,
                "/v1/runs",
                &json!({"definition": quick, "input": "be quick"}),
            )
        });
        let ev = up.wait_for("the quick run's request to queue", |ev| {
            ev.iter()
                .any(|e| e["body"]["kind"] == "task_requested" && e["body"]["agent"] == "quick")
        });
        let asked = kind(&ev, "task_requested")
            .into_iter()
            .find(|e| e["body"]["agent"] == "quick")
            .expect("requested");
        assert_eq!(asked["body"]["request"], "run", "{}", dump(&ev));
        assert_eq!(asked["body"]["input"], "be quick", "{}", dump(&ev));
        assert!(runs_started(&ev, "be quick").is_empty(), "{}", dump(&ev));
        up.signal(9);
        let answer = waiting.join().expect("the client thread");
        assert!(answer.is_err(), "the killed daemon answered: {answer:?}");
    });
    let _ = up.wait_exit();
    drop(up);

    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let ev = up.wait_for("the queued run to finish after the restart", |ev| {
        let started = runs_started(ev, "be quick");
        started.first().is_some_and(|s| {
            kind(ev, "run_finished")
                .iter()
                .any(|f| f["body"]["run"] == s["body"]["run"])
        })
    });
    let started = runs_started(&ev, "be quick");
    assert_eq!(started.len(), 1, "the run began once:\n{}", dump(&ev));
    let run = started[0]["body"]["run"].as_str().expect("run").to_owned();
    let done = settled(&up, &run);
    assert_eq!(done["outcome"], "completed", "{done}");
    assert_eq!(done["answer"], "at once", "{done}");
    let ev = up.events();
    let task = requested_task(&ev, "quick", "request run over HTTP: be quick");
    let restart = last_runtime_start(&ev);
    let placed = task_event(&ev, "task_placed", &task);
    let begun = started[0]["seq"].as_u64().expect("seq");
    let finished = task_event(&ev, "task_finished", &task);
    assert!(
        restart < placed && placed < begun && begun < finished,
        "placed after the restart, the run inside its task:\n{}",
        dump(&ev)
    );
    let end = kind(&ev, "task_finished")
        .into_iter()
        .find(|e| e["body"]["task"] == task.as_str())
        .expect("finished");
    assert_eq!(end["body"]["outcome"], "completed", "{}", dump(&ev));
    // The run that held the slot was interrupted by the kill, not repeated.
    assert_eq!(runs_started(&ev, "hold the slot").len(), 1, "{}", dump(&ev));
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

/// An approval whose continuation is queued behind a busy slot survives a
/// `kill -9` of the daemon: after the restart the continuation is placed
/// and the run continues from the journaled decision exactly once (one
/// `ApprovalDecided`, with the approver and the reason), and the trigger
/// of its task names both.
#[test]
fn a_queued_continuation_survives_a_daemon_kill_and_runs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, workspace) = assistant(dir.path());
    let slow = sleeper(dir.path(), "30");
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let (run, call) = run_until_parked(&up, &agent);
    let (status, v) = post(
        &up,
        "/v1/runs",
        &json!({"definition": slow, "input": "hold the slot"}),
    );
    assert_eq!(status, 202, "{v}");
    let (status, v) = post(
        &up,
        &format!("/v1/runs/{run}/approve"),
        &json!({"call": call, "approver": "alice", "reason": "fine by me"}),
    );
    assert_eq!(status, 202, "{v}");
    let ev = up.wait_for("the continuation to queue", |ev| {
        ev.iter()
            .any(|e| e["body"]["kind"] == "task_requested" && e["body"]["run"] == run.as_str())
    });
    let asked = kind(&ev, "task_requested")
        .into_iter()
        .find(|e| e["body"]["run"] == run.as_str())
        .expect("requested");
    assert_eq!(asked["body"]["request"], "decision", "{}", dump(&ev));
    assert_eq!(asked["body"]["call"], call.as_str());
    assert_eq!(asked["body"]["approved"], true);
    assert_eq!(asked["body"]["approver"], "alice");
    assert_eq!(asked["body"]["reason"], "fine by me");
    let cont_task = requested_task(
        &ev,
        "assistant",
        &format!("request continue {run}: {call} approved by alice (reason: fine by me)"),
    );
    assert!(kind(&ev, "approval_decided").is_empty(), "{}", dump(&ev));
    up.signal(9);
    let _ = up.wait_exit();
    drop(up);

    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    up.wait_for("the continuation to finish the run", |ev| {
        kind(ev, "run_finished")
            .iter()
            .any(|e| e["body"]["run"] == run.as_str())
    });
    let done = settled(&up, &run);
    assert_eq!(done["outcome"], "completed", "{done}\n{}", dump(&up.events()));
    assert!(
        workspace.join("summary.md").is_file(),
        "the approved write happened"
    );
    let ev = up.events();
    let decided: Vec<&Value> = run_events(&ev, &run)
        .into_iter()
        .filter(|e| e["body"]["kind"] == "approval_decided")
        .collect();
    assert_eq!(decided.len(), 1, "continued exactly once:\n{}", dump(&ev));
    assert_eq!(decided[0]["body"]["approver"], "alice");
    assert_eq!(decided[0]["body"]["reason"], "fine by me");
    let finished = run_events(&ev, &run)
        .into_iter()
        .filter(|e| e["body"]["kind"] == "run_finished")
        .count();
    assert_eq!(finished, 1, "{}", dump(&ev));
    let restart = last_runtime_start(&ev);
    let placed = task_event(&ev, "task_placed", &cont_task);
    let decided_at = decided[0]["seq"].as_u64().expect("seq");
    assert!(
        restart < placed && placed < decided_at,
        "continued in its task, placed after the restart:\n{}",
        dump(&ev)
    );
    // Deciding again is refused: the run has finished.
    let (status, v) = post(&up, &format!("/v1/runs/{run}/approve"), &json!({"call": call}));
    assert_eq!(status, 409, "{v}");
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

/// A run requested over HTTP whose task is preempted is cancelled (its
/// saga rolled back, the reason journaled); when its task is placed again
/// the request is not done twice: the task ends `cancelled` at once, its
/// exit saying why, and nothing fails.
#[test]
fn a_preempted_http_run_is_cancelled_and_its_task_ends_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = sleeper(dir.path(), "30");
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let (status, v) = post(
        &up,
        "/v1/runs",
        &json!({"definition": slow, "input": "hold the slot"}),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    up.wait_for("the slow run's command", |ev| {
        ev.iter()
            .any(|e| e["body"]["kind"] == "tool_called" && e["body"]["run"] == run.as_str())
    });
    let urgent = dir.path().join("urgent.toml");
    std::fs::write(
        &urgent,
        "name = \"urgent\"\npriority = \"critical\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 100\ncpu_cores = 0.1\nexecution_timeout = \"10s\"\n[runs]\nkind = \"process\"\ncommand = \"/bin/echo\"\nargs = [\"urgent done\"]\n",
    )
    .expect("write");
    let out = up.cli(&["agent", "register", urgent.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = up.wait_for("the slow task to end", |ev| {
        let Some(task) = kind(ev, "task_queued")
            .into_iter()
            .find(|e| e["body"]["agent"] == "slow")
            .and_then(|e| e["body"]["task"].as_str())
        else {
            return false;
        };
        kind(ev, "task_finished")
            .iter()
            .any(|e| e["body"]["task"] == task)
    });
    let task = requested_task(&ev, "slow", "request run over HTTP: hold the slot");
    let preempted = kind(&ev, "task_preempted");
    assert!(
        preempted.iter().any(|e| e["body"]["task"] == task.as_str()),
        "{}",
        dump(&ev)
    );
    // The run was cancelled by the preemption, and says so.
    let done = settled(&up, &run);
    assert_eq!(done["outcome"], "cancelled", "{done}");
    assert!(
        done["answer"].as_str().is_some_and(|a| a.contains("preempted")),
        "{done}"
    );
    // Placed again, the task ends cancelled without doing the request again.
    let placements = kind(&ev, "task_placed")
        .into_iter()
        .filter(|e| e["body"]["task"] == task.as_str())
        .count();
    assert_eq!(placements, 2, "{}", dump(&ev));
    assert_eq!(runs_started(&ev, "hold the slot").len(), 1, "{}", dump(&ev));
    let end = kind(&ev, "task_finished")
        .into_iter()
        .find(|e| e["body"]["task"] == task.as_str())
        .expect("finished");
    assert_eq!(end["body"]["outcome"], "cancelled", "{}", dump(&ev));
    let exits: Vec<&Value> = kind(&ev, "process_exited")
        .into_iter()
        .filter(|e| e["body"]["task"] == task.as_str())
        .collect();
    assert_eq!(exits.len(), 2, "{}", dump(&ev));
    let last = exits[1]["body"]["stdout"].as_str().unwrap_or_default();
    assert!(last.contains("a request is done once"), "{last}");
    assert!(last.contains(&run), "the exit names the cancelled run: {last}");
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}

/// An approval timeout whose continuation (the rejection by the timeout)
/// is queued behind a busy slot survives a `kill -9` of the daemon: after
/// the restart the run is continued from the journaled request once — the
/// timer re-armed at start finds the run claimed, then nothing left to
/// reject.
#[test]
fn a_queued_expiry_survives_a_daemon_kill_and_rejects_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, workspace) = assistant(dir.path());
    let slow = sleeper(dir.path(), "30");
    let fast = fast_timeout_policies(dir.path());
    let args = ["--policies", fast.to_str().expect("utf8")];
    let mut up = Up::start_with(dir.path(), None, &args);
    let (run, call) = run_until_parked(&up, &agent);
    let (status, v) = post(
        &up,
        "/v1/runs",
        &json!({"definition": slow, "input": "hold the slot"}),
    );
    assert_eq!(status, 202, "{v}");
    let ev = up.wait_for("the expiry to queue", |ev| {
        ev.iter().any(|e| {
            e["body"]["kind"] == "task_requested"
                && e["body"]["request"] == "expiry"
                && e["body"]["run"] == run.as_str()
        })
    });
    let task = requested_task(
        &ev,
        "assistant",
        &format!("request continue {run}: timed-out approvals rejected"),
    );
    assert!(kind(&ev, "approval_decided").is_empty(), "{}", dump(&ev));
    up.signal(9);
    let _ = up.wait_exit();
    drop(up);

    let mut up = Up::start_with(dir.path(), None, &args);
    up.wait_for("the run to finish after the restart", |ev| {
        kind(ev, "run_finished")
            .iter()
            .any(|e| e["body"]["run"] == run.as_str())
    });
    settled(&up, &run);
    let ev = up.events();
    let decided: Vec<&Value> = run_events(&ev, &run)
        .into_iter()
        .filter(|e| e["body"]["kind"] == "approval_decided")
        .collect();
    assert_eq!(decided.len(), 1, "rejected once:\n{}", dump(&ev));
    assert_eq!(decided[0]["body"]["approver"], "expired");
    assert_eq!(decided[0]["body"]["call_id"], call.as_str());
    let restart = last_runtime_start(&ev);
    let placed = task_event(&ev, "task_placed", &task);
    let decided_at = decided[0]["seq"].as_u64().expect("seq");
    assert!(
        restart < placed && placed < decided_at,
        "rejected in its task, placed after the restart:\n{}",
        dump(&ev)
    );
    assert!(!workspace.join("summary.md").exists());
    // Nothing more is queued for the run once it has finished.
    let continuations = kind(&ev, "task_requested")
        .into_iter()
        .filter(|e| e["body"]["run"] == run.as_str())
        .count();
    assert_eq!(continuations, 1, "{}", dump(&ev));
    up.signal(15);
    assert!(up.wait_exit().success());
    verify(&up.data);
}
