//! The HTTP API of `stele up` end to end, against the real binary with
//! bearer tokens on: every route, its scope, and its errors (401, 403, 404,
//! 405, 409, 413, 415, 422, 400), cursor pagination, SSE resume with
//! `Last-Event-ID` (no gap, no duplicate), `/metrics` after appends,
//! `/health` and `/ready`, proofs and audit bundles checked by the CLI, the
//! refusal to listen beyond loopback without tokens, the checked-in OpenAPI
//! document and the scope each of its operations declares (checked against
//! what the router enforces), and the deployment manifests.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{TIMEOUT, run_bounded, stele};

const WAIT: Duration = Duration::from_secs(30);

struct Tokens {
    read: String,
    operate: String,
    admin: String,
}

struct Daemon {
    child: Option<Child>,
    data: PathBuf,
    config: PathBuf,
    base: String,
    addr: String,
    agent: ureq::Agent,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn token(name: &str, scope: &str) -> (String, String) {
    let r = run_bounded(&["token", "create", name, "--scope", scope, "--json"]);
    r.no_panic("token create");
    assert_eq!(r.code, Some(0), "token create: {r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("token JSON");
    let t = v["token"].as_str().expect("token").to_owned();
    assert!(t.starts_with("stele_") && t.len() == 70, "{t}");
    // The config line holds the hash, never the token.
    let line = v["config"].as_str().expect("config line").to_owned();
    assert!(!line.contains(&t) && line.contains(v["hash"].as_str().expect("hash")));
    (t, line)
}

fn start(dir: &Path, extra_config: &str) -> Daemon {
    let data = dir.join("data");
    let config = dir.join("stele.toml");
    std::fs::write(
        &config,
        format!("[runtime]\nhttp_port = 0\nstop_grace = \"2s\"\n\n[security]\ndefault_sandbox_tier = \"native\"\n\n{extra_config}"),
    )
    .expect("config");
    let child = stele()
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn stele up");
    let mut d = Daemon {
        child: Some(child),
        data,
        config,
        base: String::new(),
        addr: String::new(),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into(),
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(d.data.join("up.json"))
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && v["pid"].as_u64() == d.child.as_ref().map(|c| u64::from(c.id()))
        {
            d.addr = v["http"].as_str().expect("http").to_owned();
            d.base = format!("http://{}", d.addr);
            return d;
        }
        if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().expect("wait")) {
            panic!("stele up exited early: {status}");
        }
        assert!(Instant::now() < deadline, "stele up did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status, body text and parsed JSON (Null if not JSON) of one request.
struct Reply {
    status: u16,
    text: String,
    json: Value,
    headers: ureq::http::HeaderMap,
}

impl Daemon {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<(&str, Vec<u8>)>) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some((ct, bytes)) => {
                let req = req.header("content-type", ct).body(bytes).expect("request");
                self.agent.run(req)
            }
            None => self.agent.run(req.body(()).expect("request")),
        };
        let mut r = result.expect("HTTP request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.body_mut().read_to_string().expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            text,
            json,
            headers,
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call("GET", path, token, None)
    }

    fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.call(
            "POST",
            path,
            token,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        stele()
            .arg("--data")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run stele")
    }

    fn append(&self, n: usize) {
        for i in 0..n {
            let out = self.cli(&[
                "journal",
                "append",
                "--stream",
                "ops",
                "--text",
                &format!("note {i}"),
            ]);
            assert!(
                out.status.success(),
                "append: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// An error reply: the status and the code of `{"error": {"code", "message"}}`.
fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}, got: {}", r.text);
    assert_eq!(r.json["error"]["code"], code, "{}", r.text);
    assert!(
        r.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.text
    );
}

/// Reads `count` SSE events from `/v1/events/stream`; `(id, data)` pairs.
fn sse(addr: &str, token: &str, query: &str, last_event_id: Option<u64>, count: usize) -> Vec<(u64, Value)> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut req = format!(
        "GET /v1/events/stream{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(id) = last_event_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.contains(" 200 "), "SSE status: {line}");
    let mut out = Vec::new();
    let mut id = None;
    while out.len() < count {
        line.clear();
        assert!(
            r.read_line(&mut line).expect("read SSE") > 0,
            "SSE stream ended early"
        );
        // Chunked framing: chunk-size lines are hex digits only; skip them.
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")) {
            id = Some(v.trim().parse::<u64>().expect("numeric id"));
        } else if let Some(v) = l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")) {
            let data: Value = serde_json::from_str(v).expect("event JSON");
            out.push((id.take().expect("id before data"), data));
        }
    }
    out
}

#[test]
fn http_api_end_to_end_with_bearer_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (read, l1) = token("reader", "read");
    let (operate, l2) = token("operator", "operate");
    let (admin, l3) = token("root", "admin");
    let t = Tokens { read, operate, admin };
    let d = start(dir.path(), &format!("{l1}\n\n{l2}\n\n{l3}\n"));
    let (r, o, a) = (
        Some(t.read.as_str()),
        Some(t.operate.as_str()),
        Some(t.admin.as_str()),
    );

    // Liveness and readiness need no token.
    let h = d.get("/health", None);
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.json["overall_status"], "healthy", "{}", h.text);
    assert!(h.json["component_health"]["runtime"]["status"] == "healthy");
    assert!(h.json["resource_utilization"]["journal_head_seq"].as_u64() > Some(0));
    let ready = d.get("/ready", None);
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(
        ready.json["component_health"]["journal"]["status"], "healthy",
        "{}",
        ready.text
    );
    assert!(ready.json["recent_errors"].is_array());

    // Authentication and scopes.
    let none = d.get("/v1/status", None);
    assert_error(&none, 401, "unauthorized");
    assert_eq!(
        none.headers.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_error(
        &d.get("/v1/status", Some("stele_not-a-token")),
        401,
        "unauthorized",
    );
    let mut bad_scheme = d.agent.get(format!("{}/v1/status", d.base));
    bad_scheme = bad_scheme.header("authorization", format!("Basic {}", t.read));
    assert_eq!(bad_scheme.call().expect("request").status().as_u16(), 401);
    let st = d.get("/v1/status", r);
    assert_eq!(st.status, 200, "{}", st.text);
    assert!(st.json["head"].as_u64() > Some(0));
    let agent_toml = "name = \"idle\"\npriority = \"low\"\n\n[mode]\nkind = \"event-driven\"\nfilter = { kinds = [\"never\"] }\n\n[limits]\nmemory_mb = 8\ncpu_cores = 0.1\nexecution_timeout = \"1s\"\n\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\nargs = []\n";
    let toml_body = || Some(("application/toml", agent_toml.as_bytes().to_vec()));
    assert_error(&d.call("POST", "/v1/agents", r, toml_body()), 403, "forbidden");
    assert_error(
        &d.call(
            "POST",
            "/v1/agents",
            o,
            Some(("application/json", b"{}".to_vec())),
        ),
        415,
        "unsupported_media_type",
    );
    let reg = d.call("POST", "/v1/agents", o, toml_body());
    assert_eq!(reg.status, 201, "{}", reg.text);
    assert_eq!(reg.json["agent"], "idle");
    assert_error(
        &d.call("POST", "/v1/agents", o, toml_body()),
        409,
        "already_registered",
    );
    let one = d.get("/v1/agents/idle", r);
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["state"], "ready", "{}", one.text);
    assert_error(&d.get("/v1/agents/nobody", r), 404, "unknown_agent");
    assert_eq!(d.get("/v1/agents", r).json.as_array().map(Vec::len), Some(1));
    assert_error(&d.post_json("/v1/shutdown", o, &json!({})), 403, "forbidden");
    // A policy reload needs admin; the daemon's own directory (the default,
    // absent from this cwd) does not load: refused, nothing changes.
    assert_error(&d.call("POST", "/v1/policy/reload", o, None), 403, "forbidden");
    assert_error(
        &d.call("POST", "/v1/policy/reload", a, None),
        422,
        "invalid_policies",
    );

    // Unknown routes and methods.
    assert_error(&d.get("/v1/nope", r), 404, "not_found");
    assert_error(
        &d.call("DELETE", "/v1/agents", r, None),
        405,
        "method_not_allowed",
    );

    // Events: paging by cursor, by kind, with bad parameters refused.
    d.append(25);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/events?kind=annotated&limit=10&cursor={c}"),
            None => "/v1/events?kind=annotated&limit=10".into(),
        };
        let p = d.get(&q, r);
        assert_eq!(p.status, 200, "{}", p.text);
        pages += 1;
        for e in p.json["events"].as_array().expect("events") {
            assert_eq!(e["body"]["kind"], "annotated");
            seen.push(e["seq"].as_u64().expect("seq"));
        }
        match p.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(seen.len(), 25, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(pages, 3);
    let all = d.get("/v1/events?from=1&to=5", r);
    let seqs: Vec<u64> = all.json["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(all.json["next_cursor"], Value::Null);
    let by_stream = d.get("/v1/events?stream=ops&limit=1000", r);
    assert_eq!(by_stream.json["events"].as_array().map(Vec::len), Some(25));
    for bad in [
        "/v1/events?cursor=xyz",
        "/v1/events?kind=nonsense",
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?from=abc",
        "/v1/events?stream=ops&run=r",
        "/v1/events?bogus=1",
    ] {
        assert_error(&d.get(bad, r), 400, "bad_request");
    }
    let first = d.get("/v1/events/1", r);
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["seq"], 1);
    assert_eq!(first.json["hash"].as_str().map(str::len), Some(64));
    assert_error(&d.get("/v1/events/999999", r), 404, "not_found");
    assert_error(&d.get("/v1/events/abc", r), 400, "bad_request");

    // SSE: read part, reconnect with Last-Event-ID, append while away: every
    // seq exactly once, in order.
    let head = d.get("/v1/status", r).json["head"].as_u64().expect("head");
    let part = sse(&d.addr, &t.read, "?from=1", None, 10);
    let last = part.last().expect("events").0;
    d.append(5);
    let rest_count = usize::try_from(head + 5 - last).expect("count");
    let rest = sse(&d.addr, &t.read, "?from=1", Some(last), rest_count);
    let ids: Vec<u64> = part.iter().chain(&rest).map(|(id, _)| *id).collect();
    let want: Vec<u64> = (1..=head + 5).collect();
    assert_eq!(ids, want, "SSE gap or duplicate");
    for (id, data) in part.iter().chain(&rest) {
        assert_eq!(data["seq"].as_u64(), Some(*id));
    }
    let only = sse(&d.addr, &t.read, "?from=1&kind=annotated", None, 30);
    assert!(only.iter().all(|(_, e)| e["body"]["kind"] == "annotated"));
    assert_error(
        &d.call("GET", "/v1/events/stream", None, None),
        401,
        "unauthorized",
    );

    // Metrics, counted from the journal.
    let m = d.get("/metrics", r);
    assert_eq!(m.status, 200);
    assert_error(&d.get("/metrics", None), 401, "unauthorized");
    let text = &m.text;
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    };
    assert!((value("stele_journal_appends_total{kind=\"annotated\"}") - 30.0).abs() < f64::EPSILON);
    #[allow(clippy::cast_precision_loss)]
    let head_now = d.get("/v1/status", r).json["head"].as_u64().expect("head") as f64;
    assert!(value("stele_journal_head_seq") >= head_now - 1.0);
    assert!(value("stele_journal_size_bytes") > 0.0);
    assert!(value("stele_journal_batch_events_count") >= 1.0);
    assert!(value("stele_journal_fsync_seconds_count") >= 1.0);
    assert!((value("stele_agents{state=\"ready\"}") - 1.0).abs() < f64::EPSILON);
    for family in [
        "stele_tasks_queued",
        "stele_tasks_running",
        "stele_scheduling_latency_seconds",
        "stele_policy_decisions",
        "stele_policy_decision_latency_seconds",
        "stele_tool_calls",
        "stele_inference_tokens",
        "stele_sandbox_starts",
        "stele_nats_publish_lag",
        "stele_http_requests_total{method=\"GET\",route=\"/v1/events\",status=\"200\"}",
    ] {
        assert!(text.contains(family), "no {family} in:\n{text}");
    }

    // Journal verification, checkpoints and proofs (checked by the CLI).
    let v = d.call("POST", "/v1/journal/verify", o, None);
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.json["ok"], true, "{}", v.text);
    assert_error(&d.call("POST", "/v1/journal/verify", r, None), 403, "forbidden");
    let cp = d.call("POST", "/v1/journal/checkpoint", o, None);
    assert_eq!(cp.status, 200, "{}", cp.text);
    let proof = d.get("/v1/journal/proof/inclusion?seq=3", r);
    assert_eq!(proof.status, 200, "{}", proof.text);
    let pf = dir.path().join("proof.json");
    std::fs::write(&pf, &proof.text).expect("proof file");
    let out = d.cli(&["journal", "check-proof", pf.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "check-proof: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_error(&d.get("/v1/journal/proof/inclusion", r), 400, "bad_request");
    assert_error(
        &d.get("/v1/journal/proof/inclusion?seq=999999", r),
        404,
        "not_found",
    );
    let cons = d.get("/v1/journal/proof/consistency?m=2&n=10", r);
    assert_eq!(cons.status, 200, "{}", cons.text);
    assert_error(
        &d.get("/v1/journal/proof/consistency?m=10&n=2", r),
        404,
        "not_found",
    );

    // Audit bundles under DATA/exports, by name only.
    let body = json!({"selection": {"type": "range", "from": 1, "to": 10}, "name": "first-ten"});
    let ex = d.post_json("/v1/audit/export", o, &body);
    assert_eq!(ex.status, 201, "{}", ex.text);
    assert_eq!(ex.json["manifest"]["events"]["count"], 10, "{}", ex.text);
    let bundle = d.data.join("exports/first-ten");
    let out = d.cli(&["audit", "verify", bundle.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "audit verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_error(&d.post_json("/v1/audit/export", o, &body), 409, "exists");
    for name in ["../escape", "a/b", ".hidden", ""] {
        let b = json!({"selection": {"type": "range", "from": 1, "to": 2}, "name": name});
        assert_error(&d.post_json("/v1/audit/export", o, &b), 400, "bad_request");
    }
    assert!(!dir.path().join("data/escape").exists() && !dir.path().join("escape").exists());
    let av = d.post_json("/v1/audit/verify", o, &json!({"name": "first-ten"}));
    assert_eq!(av.status, 200, "{}", av.text);
    assert_eq!(av.json["ok"], true, "{}", av.text);
    assert_error(
        &d.post_json("/v1/audit/verify", o, &json!({"name": "missing"})),
        404,
        "not_found",
    );
    assert_error(
        &d.post_json("/v1/audit/verify", o, &json!({"name": "../../etc"})),
        400,
        "bad_request",
    );
    // Malformed bodies.
    assert_error(
        &d.call(
            "POST",
            "/v1/audit/export",
            o,
            Some(("application/json", b"{not json".to_vec())),
        ),
        400,
        "invalid_body",
    );
    assert_error(
        &d.post_json("/v1/audit/export", o, &json!({"selection": 7})),
        422,
        "unprocessable",
    );
    assert_error(
        &d.call(
            "POST",
            "/v1/audit/export",
            o,
            Some(("text/plain", b"{}".to_vec())),
        ),
        415,
        "unsupported_media_type",
    );
    // Over [http] max_body (1 MiB): refused from its Content-Length, before
    // any of it is read.
    let mut conn = TcpStream::connect(&d.addr).expect("connect");
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(
        conn,
        "POST /v1/audit/export HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        d.addr,
        t.operate,
        2 << 20
    )
    .expect("write");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut conn, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too_large\""), "{answer}");

    // Runs (none yet) and the OpenAPI document.
    let runs = d.get("/v1/runs", r);
    assert_eq!(runs.status, 200, "{}", runs.text);
    assert_error(&d.get("/v1/runs/run-9", r), 404, "unknown_run");
    let doc = d.get("/v1/openapi.json", None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["openapi"], "3.1.0");

    // The CLI client uses STELE_TOKEN.
    let out = stele()
        .arg("--data")
        .arg(&d.data)
        .arg("--config")
        .arg(&d.config)
        .args(["status", "--json"])
        .env("STELE_TOKEN", &t.read)
        .output()
        .expect("stele status");
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing refused reached the journal, and it verifies after all this.
    let ev = d.get("/v1/events?kind=agent_registered", r);
    assert_eq!(ev.json["events"].as_array().map(Vec::len), Some(1));
    // Shutdown needs admin.
    let sd = d.post_json("/v1/shutdown", a, &json!({}));
    assert_eq!(sd.status, 202, "{}", sd.text);
    let mut d = d;
    let mut child = d.child.take().expect("child");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "stele up did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = d.cli(&["journal", "verify"]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn listening_beyond_loopback_needs_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stele.toml");
    std::fs::write(
        &config,
        "[runtime]\nhttp_port = 0\n\n[http]\nbind = \"0.0.0.0\"\n",
    )
    .expect("config");
    let data = dir.path().join("data");
    let r = run_bounded(&[
        "--data",
        data.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
        "up",
    ]);
    r.no_panic("up on 0.0.0.0");
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr
            .contains("refusing to serve the HTTP API on 0.0.0.0 without authentication"),
        "{r:?}"
    );
    // A bad token entry is refused with its place.
    std::fs::write(
        &config,
        "[[http.tokens]]\nname = \"x\"\nhash = \"abc\"\nscope = \"read\"\n",
    )
    .expect("config");
    let r = run_bounded(&["--config", config.to_str().expect("utf-8"), "config", "show"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("64 lowercase hex digits"), "{r:?}");
}

#[test]
fn the_checked_in_openapi_document_is_current() {
    let r = run_bounded(&["openapi"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        checked_in == r.stdout,
        "docs/openapi.json is out of date with the code; regenerate it: `cargo run -p stele -- openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&checked_in).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/status",
        "/v1/agents",
        "/v1/agents/{name}",
        "/v1/agents/{name}/stop",
        "/v1/events",
        "/v1/events/{seq}",
        "/v1/events/stream",
        "/v1/runs",
        "/v1/journal/verify",
        "/v1/journal/proof/inclusion",
        "/v1/audit/export",
        "/v1/audit/verify",
        "/v1/policy/reload",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains(p), "{p} missing from the OpenAPI document");
    }
}

#[test]
fn deployment_manifests_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut kinds = BTreeSet::new();
    let mut config_toml = None;
    let mut probes = BTreeSet::new();
    for f in ["statefulset.yaml", "service.yaml", "configmap.yaml"] {
        let path = root.join("deploy/k8s").join(f);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", path.display()))
                .to_owned();
            assert!(
                v["apiVersion"].is_string() && v["metadata"]["name"].is_string(),
                "{}",
                path.display()
            );
            if kind == "ConfigMap" {
                config_toml = v["data"]["stele.toml"].as_str().map(str::to_owned);
            }
            if kind == "StatefulSet" {
                let spec = &v["spec"];
                assert_eq!(spec["replicas"], 1, "one writer per journal volume");
                assert!(
                    spec["volumeClaimTemplates"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                );
                let c = &spec["template"]["spec"]["containers"][0];
                for probe in ["livenessProbe", "readinessProbe"] {
                    probes.insert(c[probe]["httpGet"]["path"].as_str().unwrap_or("").to_owned());
                }
                assert_eq!(spec["template"]["spec"]["securityContext"]["runAsNonRoot"], true);
            }
            kinds.insert(kind);
        }
    }
    assert_eq!(
        kinds,
        ["ConfigMap", "Service", "StatefulSet"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    assert_eq!(
        probes,
        ["/health", "/ready"].into_iter().map(str::to_owned).collect()
    );
    // The ConfigMap's stele.toml is a configuration stele accepts.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("stele.toml");
    std::fs::write(&cfg, config_toml.expect("stele.toml in the ConfigMap")).expect("write");
    let r = run_bounded(&["--config", cfg.to_str().expect("utf-8"), "config", "show"]);
    assert_eq!(r.code, Some(0), "the ConfigMap's stele.toml: {r:?}");
    let docker = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(
        docker.contains("USER ") && !docker.contains("USER root"),
        "non-root"
    );
    assert!(
        docker.contains("VOLUME") && docker.matches("FROM ").count() >= 2,
        "multi-stage, data volume"
    );
}

/// Every operation of the served OpenAPI document declares the least scope
/// it needs, and the router enforces exactly that: without a token 401, with
/// a token one scope lower 403, with a token of the declared scope past the
/// check (whatever the handler then makes of a request with nothing in it);
/// the public ones answer without a token. Shutdown (admin) goes last.
#[test]
fn every_operation_declares_the_scope_the_router_enforces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (read, l1) = token("reader", "read");
    let (operate, l2) = token("operator", "operate");
    let (admin, l3) = token("root", "admin");
    let d = start(dir.path(), &format!("{l1}\n\n{l2}\n\n{l3}\n"));
    let of = |scope: &str| match scope {
        "read" => read.as_str(),
        "operate" => operate.as_str(),
        "admin" => admin.as_str(),
        other => panic!("unknown scope {other:?} in the document"),
    };
    let below = |scope: &str| match scope {
        "operate" => Some("read"),
        "admin" => Some("operate"),
        _ => None,
    };

    let doc = d.get("/v1/openapi.json", None);
    assert_eq!(doc.status, 200, "{}", doc.text);
    let doc = doc.json;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{doc}"
    );
    // (method, route, declared scope; None: public)
    let mut ops: Vec<(String, String, Option<String>)> = Vec::new();
    for (route, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let security = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {route} declares no security"));
            assert_eq!(security.len(), 1, "{method} {route}: {security:?}");
            let req = security[0].as_object().expect("a requirement");
            let scope = if req.is_empty() {
                None
            } else {
                let scopes = req["bearer"].as_array().expect("bearer scopes");
                assert_eq!(scopes.len(), 1, "{method} {route}: {scopes:?}");
                Some(scopes[0].as_str().expect("scope").to_owned())
            };
            ops.push((method.to_uppercase(), route.clone(), scope));
        }
    }
    let public: Vec<&str> = ops
        .iter()
        .filter(|(_, _, s)| s.is_none())
        .map(|(_, r, _)| r.as_str())
        .collect();
    assert_eq!(public, ["/health", "/ready", "/v1/openapi.json"]);
    for scope in ["read", "operate", "admin"] {
        assert!(
            ops.iter().any(|(_, _, s)| s.as_deref() == Some(scope)),
            "no operation needs {scope}"
        );
    }
    ops.sort_by_key(|(m, r, _)| (m == "POST" && r == "/v1/shutdown", r.clone()));

    for (method, route, scope) in &ops {
        let path = route
            .replace("{seq}", "1")
            .replace("{name}", "nobody")
            .replace("{agent}", "nobody")
            .replace("{id}", "run-0")
            .replace("{item}", "item-0");
        let body = (method != "GET").then(|| ("application/json", b"{}".to_vec()));
        let what = format!("{method} {route}");
        let Some(scope) = scope else {
            let r = d.call(method, &path, None, body);
            assert!(
                r.status != 401 && r.status != 403,
                "{what} is public: {} {}",
                r.status,
                r.text
            );
            continue;
        };
        let r = d.call(method, &path, None, body.clone());
        assert_eq!(r.status, 401, "{what} without a token: {}", r.text);
        assert_eq!(r.json["error"]["code"], "unauthorized", "{what}: {}", r.text);
        if let Some(lower) = below(scope) {
            let r = d.call(method, &path, Some(of(lower)), body.clone());
            assert_eq!(
                r.status, 403,
                "{what} declares {scope} but a {lower} token got: {}",
                r.text
            );
            assert_eq!(r.json["error"]["code"], "forbidden", "{what}: {}", r.text);
            assert!(
                r.json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("this needs {scope}"))),
                "{what}: {}",
                r.text
            );
        }
        if route == "/v1/events/stream" {
            // An endless stream: one event through proves the token passed.
            assert_eq!(sse(&d.addr, of(scope), "?from=1", None, 1).len(), 1);
            continue;
        }
        let r = d.call(method, &path, Some(of(scope)), body);
        assert!(
            r.status != 401 && r.json["error"]["code"] != "forbidden",
            "{what} declares {scope}, and a {scope} token was refused: {} {}",
            r.status,
            r.text
        );
        if route == "/v1/shutdown" {
            assert_eq!(r.status, 202, "{}", r.text);
        }
    }
}
