//! Replay, time travel, forks and policy backtests over the HTTP API of a
//! real `stele up` with bearer tokens on: `GET /v1/at/{seq}`, `GET
//! /v1/diff`, `POST /v1/runs/{id}/replay` (the same report as `stele
//! replay --json`), `POST /v1/runs/{id}/fork` (the fork takes the edited
//! branch, the origin is untouched) and `POST /v1/policy/backtest` (policy
//! text in the body, the same flips as the CLI), each with its scope and
//! its errors; the journal verifies afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::up::{Up, WAIT, verify};
use crate::up_runs::assistant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn token(name: &str, scope: &str) -> (String, String) {
    let r = crate::run_bounded(&["token", "create", name, "--scope", scope, "--json"]);
    assert_eq!(r.code, Some(0), "token create: {r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("token JSON");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["config"].as_str().expect("config").to_owned(),
    )
}

struct Api<'a> {
    up: &'a Up,
    agent: ureq::Agent,
}

/// Status and body (JSON, or Null).
fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = r.expect("HTTP request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Api<'_> {
    fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.get(format!("{}{path}", self.up.http));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        reply(req.call())
    }

    fn post(&self, path: &str, token: Option<&str>, content_type: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = self.agent.post(format!("{}{path}", self.up.http));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        reply(req.send(body))
    }

    fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.post(path, token, Some("application/json"), &body.to_string())
    }

    /// A POST declaring a body of `len` bytes is refused (413) from its
    /// Content-Length, before any of it is sent.
    fn too_large(&self, path: &str, token: &str, len: usize) {
        use std::io::{Read, Write};
        let addr = self.up.http.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(crate::TIMEOUT)).expect("timeout");
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("\"too_large\""), "{answer}");
    }

    /// Polls `GET /v1/runs/{id}` until the daemon no longer drives the run.
    fn settled(&self, run: &str, token: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, v) = self.get(&format!("/v1/runs/{run}"), Some(token));
            assert_eq!(status, 200, "{v}");
            if v["driving"] == false && (v["state"] == "finished" || v["state"] == "awaiting_approval") {
                return v;
            }
            assert!(Instant::now() < deadline, "{run} did not settle: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "expected {status} {code}, got {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

/// The files of a policy directory as a backtest body's `policies` and
/// `schema`.
fn policy_body(dir: &Path) -> Value {
    let mut policies = serde_json::Map::new();
    let mut schema = None;
    for e in std::fs::read_dir(dir).expect("policy dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&p).expect("policy file");
        if name.ends_with(".cedar") {
            policies.insert(name, Value::String(text));
        } else if name.ends_with(".cedarschema") {
            schema = Some(text);
        }
    }
    json!({"policies": policies, "schema": schema})
}

#[test]
fn replay_at_diff_fork_and_backtest_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (read, l1) = token("reader", "read");
    let (operate, l2) = token("operator", "operate");
    std::fs::write(
        dir.path().join("stele.toml"),
        format!("{}\n{l1}\n\n{l2}\n", crate::up::CONFIG),
    )
    .expect("config");
    let (agent, _workspace) = assistant(dir.path());
    let policies = root().join("fixtures/policies");
    let mut up = Up::start_with(
        dir.path(),
        None,
        &["--policies", policies.to_str().expect("utf-8")],
    );
    let api = Api {
        up: &up,
        agent: up.http(),
    };
    let (r, o) = (Some(read.as_str()), Some(operate.as_str()));
    // A recorded run: the demo parks on its write.
    let definition = std::fs::read_to_string(&agent).expect("agent");
    let (status, v) = api.post_json(
        "/v1/runs",
        o,
        &json!({"definition": definition, "input": "Summarise the workspace"}),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let parked = api.settled(&run, &read);
    assert_eq!(parked["state"], "awaiting_approval", "{parked}");

    // at: a view's state as of a seq, a run's as of a step.
    let (status, head) = api.get("/v1/at/head?view=runs", r);
    assert_eq!(status, 200, "{head}");
    assert!(head["state"]["runs"][&run].is_object(), "{head}");
    let head_seq = head["seq"].as_u64().expect("seq");
    let (status, step1) = api.get(&format!("/v1/at/head?view=run&run={run}&step=1"), r);
    assert_eq!(status, 200, "{step1}");
    assert_eq!(step1["view"], "run");
    assert!(step1["seq"].as_u64().expect("seq") < head_seq, "{step1}");
    let (status, early) = api.get("/v1/at/1", r);
    assert_eq!(status, 200, "{early}");
    assert_eq!(early["seq"], 1);
    assert_error(&api.get("/v1/at/head?view=runs", None), 401, "unauthorized");
    assert_error(&api.get("/v1/at/soon", r), 400, "bad_request");
    assert_error(&api.get("/v1/at/99999999", r), 404, "not_found");
    assert_error(&api.get("/v1/at/head?view=nope", r), 400, "bad_request");
    assert_error(&api.get("/v1/at/head?view=run", r), 400, "bad_request");
    assert_error(
        &api.get(&format!("/v1/at/head?view=journal&run={run}"), r),
        400,
        "bad_request",
    );
    assert_error(&api.get("/v1/at/head?view=run&run=run-77", r), 404, "unknown_run");
    assert_error(
        &api.get("/v1/at/head?view=run&run=bad%20id", r),
        400,
        "bad_request",
    );
    // A path-like run id names no file: it is only looked up in the journal.
    assert_error(
        &api.get("/v1/at/head?view=run&run=..%2F..%2Fetc", r),
        404,
        "unknown_run",
    );
    assert_error(&api.get("/v1/at/head?bogus=1", r), 400, "bad_request");

    // diff: what changed.
    let (status, d) = api.get("/v1/diff?from=1&to=head&view=runs", r);
    assert_eq!(status, 200, "{d}");
    assert!(d["changes"].as_array().is_some_and(|c| !c.is_empty()), "{d}");
    let (status, d) = api.get("/v1/diff?from=head&to=head", r);
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["changes"], json!([]), "{d}");
    assert_error(&api.get("/v1/diff?from=1", r), 400, "bad_request");
    assert_error(&api.get("/v1/diff?from=1&to=99999999", r), 404, "not_found");
    assert_error(&api.get("/v1/diff?from=x&to=head", r), 400, "bad_request");

    // replay: identical, read scope suffices.
    let (status, report) = api.post(&format!("/v1/runs/{run}/replay"), r, None, "");
    assert_eq!(status, 200, "{report}");
    assert!(report["divergence"].is_null(), "{report}");
    assert!(report["identical"].as_u64().is_some_and(|n| n > 5), "{report}");
    assert_eq!(report["identical"], report["recorded"], "{report}");
    assert_error(
        &api.post("/v1/runs/run-99/replay", r, None, ""),
        404,
        "unknown_run",
    );
    assert_error(
        &api.post("/v1/runs/bad%20id/replay", r, None, ""),
        400,
        "bad_request",
    );
    assert_error(
        &api.post("/v1/runs/..%2F..%2Fetc/replay", r, None, ""),
        404,
        "unknown_run",
    );
    assert_error(
        &api.post(&format!("/v1/runs/{run}/replay"), None, None, ""),
        401,
        "unauthorized",
    );

    // fork: at the first completion, the second one replaced by an answer.
    let (status, page) = api.get(
        &format!("/v1/events?run={run}&kind=completion_received&limit=100"),
        r,
    );
    assert_eq!(status, 200, "{page}");
    let completions: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(completions.len() >= 2, "{page}");
    let at = completions[0];
    let fork_path = format!("/v1/runs/{run}/fork");
    // The next input after the first tool result is the second completion.
    let (status, page) = api.get(&format!("/v1/events?run={run}&kind=tool_returned&limit=1"), r);
    assert_eq!(status, 200, "{page}");
    let returned = page["events"][0]["seq"].as_u64().expect("a tool result");
    assert!(at < returned && returned < completions[1], "{page}");
    let body = json!({"at": returned, "edit": {"content": "Forked: nothing else to do."}});
    assert_error(&api.post_json(&fork_path, r, &body), 403, "forbidden");
    assert_error(
        &api.post_json("/v1/runs/run-99/fork", o, &body),
        404,
        "unknown_run",
    );
    assert_error(
        &api.post_json(&fork_path, o, &json!({"at": 99_999_999})),
        404,
        "not_found",
    );
    assert_error(
        &api.post_json(&fork_path, o, &json!({"at": at, "edit": {"bogus": 1}})),
        422,
        "invalid_edit",
    );
    assert_error(
        &api.post_json(&fork_path, o, &json!({"at": 1})),
        422,
        "cannot_fork",
    );
    assert_error(
        &api.post_json(&fork_path, o, &json!({"edit": {}})),
        422,
        "unprocessable",
    );
    assert_error(
        &api.post(&fork_path, o, Some("application/json"), "{"),
        400,
        "invalid_body",
    );
    assert_error(
        &api.post(&fork_path, o, None, "{}"),
        415,
        "unsupported_media_type",
    );
    api.too_large(&fork_path, &operate, 3 << 20);
    let (status, forked) = api.post_json(&fork_path, o, &body);
    assert_eq!(status, 202, "{forked}");
    let new_run = forked["run"].as_str().expect("run").to_owned();
    assert_ne!(new_run, run);
    assert_eq!(forked["origin"], run.as_str());
    assert_eq!(forked["at"], returned);
    assert!(
        forked["edit_hash"].as_str().is_some_and(|h| h.len() == 64),
        "{forked}"
    );
    let done = api.settled(&new_run, &read);
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["outcome"], "completed", "{done}");
    assert_eq!(done["answer"], "Forked: nothing else to do.", "{done}");
    // The origin is untouched and still replays identically.
    let origin = api.settled(&run, &read);
    assert_eq!(origin["state"], "awaiting_approval", "{origin}");
    let (status, again) = api.post(&format!("/v1/runs/{run}/replay"), r, None, "");
    assert_eq!(
        (status, &again["identical"]),
        (200, &report["identical"]),
        "{again}"
    );
    let (status, fork_report) = api.post(&format!("/v1/runs/{new_run}/replay"), r, None, "");
    assert_eq!(status, 200, "{fork_report}");
    assert!(fork_report["divergence"].is_null(), "{fork_report}");

    // backtest: the policy set as text; the changed set flips verdicts.
    let changed = policy_body(&root().join("fixtures/policies-backtest"));
    assert_error(
        &api.post_json("/v1/policy/backtest", r, &changed),
        403,
        "forbidden",
    );
    let (status, bt) = api.post_json("/v1/policy/backtest", o, &changed);
    assert_eq!(status, 200, "{bt}");
    let flips = bt["flips"].as_array().expect("flips");
    assert!(!flips.is_empty(), "{bt}");
    assert!(flips.iter().all(|f| f["new_verdict"] == "allow"), "{bt}");
    assert!(
        flips
            .iter()
            .any(|f| f["old_policies"] == json!(["no-commands-for-low-priority"])),
        "{bt}"
    );
    let same = policy_body(&policies);
    let (status, none) = api.post_json("/v1/policy/backtest", o, &same);
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["flips"], json!([]), "{none}");
    assert_eq!(none["evaluated"], bt["evaluated"]);
    let mut ranged = changed.clone();
    ranged["from"] = json!(5);
    ranged["to"] = json!(2);
    assert_error(
        &api.post_json("/v1/policy/backtest", o, &ranged),
        400,
        "bad_request",
    );
    assert_error(
        &api.post_json("/v1/policy/backtest", o, &json!({"policies": {}})),
        400,
        "bad_request",
    );
    assert_error(
        &api.post_json(
            "/v1/policy/backtest",
            o,
            &json!({"policies": {"bad.cedar": "permit (principal, action, resource"}}),
        ),
        422,
        "invalid_policies",
    );
    assert_error(
        &api.post_json("/v1/policy/backtest", o, &json!({"policies": "../../etc"})),
        422,
        "unprocessable",
    );
    assert_error(&api.post("/v1/policy/backtest", o, None, ""), 400, "bad_request");
    api.too_large("/v1/policy/backtest", &operate, 5 << 20);

    // The same replay report and backtest from the CLI, once the daemon is
    // gone; the journal verifies.
    drop(api);
    up.signal(15);
    let _ = up.wait_exit();
    let cli = up.cli(&[
        "replay",
        &run,
        "--json",
        "--policies",
        policies.to_str().expect("utf-8"),
    ]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli_report: Value = serde_json::from_slice(&cli.stdout).expect("report JSON");
    assert_eq!(cli_report, report);
    let cli = up.cli(&[
        "policy",
        "backtest",
        "--json",
        "--policies",
        root().join("fixtures/policies-backtest").to_str().expect("utf-8"),
    ]);
    let cli_bt: Value = serde_json::from_slice(&cli.stdout).expect("backtest JSON");
    assert_eq!(cli_bt["flips"], bt["flips"]);
    verify(&up.data);
}
