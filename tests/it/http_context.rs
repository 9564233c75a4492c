//! The context store and the bus over the HTTP API of a real `stele up`:
//! every `/v1/context/{agent}…` route with its scope and its errors (bad
//! agent names, unknown items and owners, bad modes, levels and bodies, the
//! Cedar gate's denials as 403 with their reason), `stele context
//! search|show|stats` printing through the daemon what they print without
//! one (on a copy of the same journal), and `/v1/bus/send|publish|ask|stats`
//! with an error case each, plus the 409 of a daemon that runs no bus.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::up::{Up, WAIT, verify};
use crate::{run_bounded, stele};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn policies() -> String {
    root().join("fixtures/policies").display().to_string()
}

fn token(name: &str, scope: &str) -> (String, String) {
    let r = run_bounded(&["token", "create", name, "--scope", scope, "--json"]);
    assert_eq!(r.code, Some(0), "token create: {r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("token JSON");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["config"].as_str().expect("config").to_owned(),
    )
}

/// A process agent of `priority` (never run here: only registered).
fn definition(dir: &Path, name: &str, priority: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\npriority = \"{priority}\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 32\ncpu_cores = 0.25\nexecution_timeout = \"10s\"\n[runs]\nkind = \"process\"\ntier = \"native\"\ncommand = \"/bin/true\"\n"
        ),
    )
    .expect("agent file");
    path
}

/// `stele --data DATA --config CONFIG ARGS…` with `STELE_TOKEN` (when
/// given): exit status, stdout, stderr.
fn cli(data: &Path, config: &Path, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = stele();
    cmd.arg("--data").arg(data).arg("--config").arg(config).args(args);
    cmd.env_remove("STELE_TOKEN");
    if let Some(t) = token {
        cmd.env("STELE_TOKEN", t);
    }
    let out = cmd.output().expect("run stele");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Api {
    base: String,
    agent: ureq::Agent,
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = r.expect("HTTP request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Api {
    fn new(up: &Up) -> Api {
        Api {
            base: up.http.clone(),
            agent: up.http(),
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        reply(req.call())
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "PATCH" => self.agent.patch(url),
            _ => self.agent.post(url),
        }
        .header("content-type", content_type);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        reply(req.send(body))
    }

    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send("POST", path, token, "application/json", &body.to_string())
    }

    fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send("PATCH", path, token, "application/json", &body.to_string())
    }

    /// A POST declaring a body of `len` bytes is refused (413) before any
    /// of it is sent.
    fn too_large(&self, path: &str, token: &str, len: usize) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
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
}

/// The answer is `status` with error `code` and a message containing each
/// of `words`.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str, words: &[&str]) {
    assert_eq!(got.0, status, "expected {status} {code}, got {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{} {}", got.0, got.1);
    for w in words {
        assert!(message.contains(w), "{w:?} not in {message:?}");
    }
}

/// `cp -a from to`.
fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// The reader's clock every compared command is run at: the same
/// importance, recency and retention on both sides.
const NOW: &str = "1900000000000";

#[test]
fn context_routes_do_what_the_cli_does_and_the_cli_goes_through_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (read, l1) = token("reader", "read");
    let (operate, l2) = token("operator", "operate");
    let config = dir.path().join("stele.toml");
    std::fs::write(&config, format!("{}\n{l1}\n\n{l2}\n", crate::up::CONFIG)).expect("config");
    let data = dir.path().join("data");

    // A store built without a daemon: carol is registered with high
    // priority (confidential grants reach her), bob is not registered.
    let carol = definition(dir.path(), "carol", "high");
    let (ok, _, err) = cli(
        &data,
        &config,
        None,
        &["agent", "register", carol.to_str().expect("utf-8")],
    );
    assert!(ok, "register carol: {err}");
    let p = policies();
    for args in [
        &["alice", "the deploy key rotates monthly", "--id", "k1"][..],
        &[
            "alice",
            "rust is a public fact",
            "--id",
            "p1",
            "--level",
            "public",
        ],
        &["alice", "the launch codes", "--id", "s1", "--level", "secret"],
        &[
            "alice",
            "the merger is confidential",
            "--id",
            "c1",
            "--level",
            "confidential",
            "--type",
            "semantic",
        ],
        &[
            "bob",
            "bob keeps notes on the deploy",
            "--id",
            "b1",
            "--type",
            "episodic",
        ],
    ] {
        let mut a = vec!["context", "store"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--policies", &p]);
        let (ok, _, err) = cli(&data, &config, None, &a);
        assert!(ok, "{a:?}: {err}");
    }
    let (ok, _, err) = cli(
        &data,
        &config,
        None,
        &[
            "context",
            "share",
            "alice",
            "c1",
            "--with",
            "carol",
            "--level",
            "confidential",
            "--policies",
            &p,
        ],
    );
    assert!(ok, "share: {err}");

    // The same journal twice: one served by a daemon, one opened by the CLI.
    let twin = tempfile::tempdir().expect("tempdir");
    let twin_data = twin.path().join("data");
    copy_dir(&data, &twin_data);
    let up = Up::start_with(dir.path(), None, &["--policies", &p]);
    let api = Api::new(&up);
    let (r, o) = (Some(read.as_str()), Some(operate.as_str()));

    // The CLI through the daemon prints what it prints without one, JSON
    // and human; the searches journal their accesses on both sides alike.
    for args in [
        &["search", "alice", "deploy", "--mode", "keyword"][..],
        &[
            "search",
            "alice",
            "deploy key",
            "--mode",
            "hybrid",
            "--limit",
            "3",
        ],
        &["search", "carol", "merger", "--mode", "similarity"],
        &["search", "bob", "", "--mode", "temporal", "--type", "episodic"],
        &["show", "alice"],
        &["show", "alice", "--type", "semantic"],
        &["stats", "alice"],
        &["stats", "carol"],
        &["stats", "nobody"],
    ] {
        for json in [true, false] {
            let mut a = vec!["context"];
            a.extend_from_slice(args);
            a.extend_from_slice(&["--now", NOW, "--policies", &p]);
            if json {
                a.push("--json");
            }
            let via = cli(&data, &config, Some(&operate), &a);
            let local = cli(&twin_data, &config, None, &a);
            assert!(via.0 && local.0, "{a:?}: daemon {via:?}, local {local:?}");
            if json && args[0] == "show" {
                // `seq` is the journal's head: the daemon journaled its own
                // start, so its head is later; the items are the same.
                let mut v: Value = serde_json::from_str(via.1.trim()).expect("JSON");
                let mut l: Value = serde_json::from_str(local.1.trim()).expect("JSON");
                assert!(v["seq"].as_u64() >= l["seq"].as_u64(), "{v} {l}");
                v["seq"] = Value::Null;
                l["seq"] = Value::Null;
                assert_eq!(v, l, "{a:?}");
                assert!(!v["items"].as_array().expect("items").is_empty(), "{v}");
            } else {
                assert_eq!(via.1, local.1, "{a:?}");
                assert_eq!(via.2, local.2, "{a:?}");
            }
        }
    }
    // An error is the same sentence either way.
    let bad = [
        "context",
        "search",
        "alice",
        "x",
        "--mode",
        "fuzzy",
        "--policies",
        &p,
    ];
    let via = cli(&data, &config, Some(&operate), &bad);
    let local = cli(&twin_data, &config, None, &bad);
    assert!(!via.0 && !local.0, "{via:?} {local:?}");
    assert!(via.2.contains("search mode: \"fuzzy\" is not one of"), "{via:?}");
    assert_eq!(via.2, local.2);
    // A change through the CLI is the daemon's: the HTTP API sees it.
    let (ok, out, err) = cli(
        &data,
        &config,
        Some(&operate),
        &[
            "context",
            "store",
            "alice",
            "stored through the daemon",
            "--id",
            "d1",
            "--json",
            "--policies",
            &p,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"{"agent":"alice","id":"d1"}"#);

    // show and stats: read scope.
    let (status, shown) = api.get("/v1/context/alice", r);
    assert_eq!(status, 200, "{shown}");
    let ids: Vec<&str> = shown["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["d1", "c1", "s1", "p1", "k1"], "newest first: {shown}");
    let (status, semantic) = api.get("/v1/context/alice?type=semantic&now_ms=1900000000000", r);
    assert_eq!(status, 200, "{semantic}");
    assert_eq!(semantic["items"].as_array().map(Vec::len), Some(1), "{semantic}");
    let (status, empty) = api.get("/v1/context/nobody", r);
    assert_eq!(status, 200, "an agent without items has none: {empty}");
    assert_eq!(empty["items"], json!([]));
    let (status, stats) = api.get("/v1/context/alice/stats", r);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["items"], 5, "{stats}");
    assert_eq!(stats["grants_given"], 1, "{stats}");
    assert_error(&api.get("/v1/context/alice", None), 401, "unauthorized", &[]);
    assert_error(
        &api.get("/v1/context/bad%20name", r),
        400,
        "bad_request",
        &["agent name"],
    );
    assert_error(
        &api.get("/v1/context/alice?type=dreams", r),
        400,
        "bad_request",
        &["dreams"],
    );
    assert_error(
        &api.get("/v1/context/alice?bogus=1", r),
        400,
        "bad_request",
        &["bogus"],
    );
    assert_error(
        &api.get("/v1/context/alice/stats?now_ms=soon", r),
        400,
        "bad_request",
        &[],
    );

    // search: read scope; the reader sees only what it may.
    let (status, found) = api.post(
        "/v1/context/bob/search",
        r,
        &json!({"query": "deploy", "mode": "keyword"}),
    );
    assert_eq!(status, 200, "{found}");
    let keys: Vec<&str> = found["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["bob/b1"], "bob never sees alice's restricted k1: {found}");
    // Without a body every default holds: a hybrid search for nothing,
    // which the search refuses as the CLI does for `search alice`.
    assert_error(
        &api.send("POST", "/v1/context/alice/search", r, "application/json", ""),
        400,
        "bad_request",
        &["no searchable word"],
    );
    assert_error(
        &api.post("/v1/context/alice/search", r, &json!({"mode": "fuzzy"})),
        400,
        "bad_request",
        &["search mode", "fuzzy"],
    );
    assert_error(
        &api.post("/v1/context/alice/search", r, &json!({"limit": 0})),
        400,
        "bad_request",
        &["0"],
    );
    assert_error(
        &api.post("/v1/context/alice/search", r, &json!({"from": "yesterday"})),
        400,
        "bad_request",
        &["from", "yesterday"],
    );
    assert_error(
        &api.send(
            "POST",
            "/v1/context/alice/search",
            r,
            "application/json",
            "{\"query\": ",
        ),
        400,
        "invalid_body",
        &[],
    );
    assert_error(
        &api.post("/v1/context/alice/search", r, &json!({"limit": "ten"})),
        422,
        "unprocessable",
        &["limit"],
    );

    // store: operate scope.
    let item =
        json!({"content": "a fresh note", "id": "n1", "type": "working", "tags": ["t"], "importance": 0.9});
    assert_error(
        &api.post("/v1/context/alice/items", r, &item),
        403,
        "forbidden",
        &["operate"],
    );
    let (status, stored) = api.post("/v1/context/alice/items", o, &item);
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored, json!({"agent": "alice", "id": "n1"}));
    assert_error(
        &api.post("/v1/context/alice/items", o, &item),
        409,
        "exists",
        &["n1"],
    );
    assert_error(
        &api.post(
            "/v1/context/alice/items",
            o,
            &json!({"content": "x", "level": "cosmic"}),
        ),
        400,
        "bad_request",
        &["cosmic"],
    );
    assert_error(
        &api.post(
            "/v1/context/alice/items",
            o,
            &json!({"content": "x", "importance": 7}),
        ),
        400,
        "bad_request",
        &["importance"],
    );
    assert_error(
        &api.post(
            "/v1/context/alice/items",
            o,
            &json!({"content": "x", "colour": "red"}),
        ),
        422,
        "unprocessable",
        &["colour"],
    );
    assert_error(
        &api.post("/v1/context/alice/items", o, &json!({})),
        422,
        "unprocessable",
        &["content"],
    );
    assert_error(
        &api.send("POST", "/v1/context/alice/items", o, "text/plain", "note"),
        415,
        "unsupported_media_type",
        &[],
    );
    // Over [http] max_body by its declared length; over the route's own
    // limit (an item's content at its limit, escaped) by what is sent.
    api.too_large("/v1/context/alice/items", &operate, (1 << 20) + 1);
    assert_error(
        &api.post(
            "/v1/context/alice/items",
            o,
            &json!({"content": "x".repeat(200_000)}),
        ),
        413,
        "too_large",
        &[],
    );
    assert_error(
        &api.post(
            "/v1/context/alice/items",
            o,
            &json!({"content": "x".repeat(70_000)}),
        ),
        400,
        "bad_request",
        &["content"],
    );

    // update.
    let (status, updated) = api.patch("/v1/context/alice/items/n1", o, &json!({"importance": 0.2}));
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated, json!({"updated": "alice/n1"}));
    assert_error(
        &api.patch("/v1/context/alice/items/nope", o, &json!({"content": "x"})),
        404,
        "unknown_item",
        &["alice", "nope"],
    );
    assert_error(
        &api.patch("/v1/context/alice/items/n1", r, &json!({})),
        403,
        "forbidden",
        &[],
    );

    // share: the gate's denial is a 403 with its reason.
    let (status, shared) = api.post(
        "/v1/context/alice/items/k1/share",
        o,
        &json!({"with": "bob", "level": "restricted"}),
    );
    assert_eq!(status, 200, "{shared}");
    assert_eq!(
        shared,
        json!({"shared": "alice/k1", "with": "bob", "level": "restricted"})
    );
    assert_error(
        &api.post(
            "/v1/context/alice/items/s1/share",
            o,
            &json!({"with": "bob", "level": "secret"}),
        ),
        403,
        "denied",
        &["secret items are never shared"],
    );
    assert_error(
        &api.post("/v1/context/alice/items/s1/share", o, &json!({"with": "bob"})),
        400,
        "bad_request",
        &["less restrictive"],
    );
    assert_error(
        &api.post(
            "/v1/context/alice/items/k1/share",
            o,
            &json!({"with": "bad name"}),
        ),
        400,
        "bad_request",
        &["bad name"],
    );

    // feedback: as the agent named in the path, with its registered
    // priority: carol (high) may read the confidential item shared with
    // her, bob (unregistered: normal) may not even with a grant.
    let (status, rated) = api.post(
        "/v1/context/carol/feedback",
        o,
        &json!({"item": "alice/c1", "score": 0.5}),
    );
    assert_eq!(status, 200, "{rated}");
    assert_eq!(rated, json!({"feedback": "alice/c1", "score": 0.5}));
    let (status, _) = api.post(
        "/v1/context/alice/items/c1/share",
        o,
        &json!({"with": "bob", "level": "confidential"}),
    );
    assert_eq!(status, 200);
    assert_error(
        &api.post(
            "/v1/context/bob/feedback",
            o,
            &json!({"item": "alice/c1", "score": 0.5}),
        ),
        403,
        "denied",
        &["bob", "alice/c1", "high or critical priority"],
    );
    assert_error(
        &api.post(
            "/v1/context/bob/feedback",
            o,
            &json!({"item": "ghost/m-1", "score": 1}),
        ),
        404,
        "unknown_item",
        &["ghost", "m-1"],
    );
    assert_error(
        &api.post(
            "/v1/context/bob/feedback",
            o,
            &json!({"item": "alice-c1", "score": 1}),
        ),
        400,
        "bad_request",
        &["owner/id"],
    );
    assert_error(
        &api.post(
            "/v1/context/bob/feedback",
            o,
            &json!({"item": "bob/b1", "score": -3}),
        ),
        400,
        "bad_request",
        &["score"],
    );

    // archive: everything stored before a time leaves the live store.
    let (status, archived) = api.post("/v1/context/bob/archive", o, &json!({"before": "4000000000000"}));
    assert_eq!(status, 200, "{archived}");
    assert_eq!(archived, json!({"agent": "bob", "archived": 1}));
    let (status, none) = api.send("POST", "/v1/context/bob/archive", o, "application/json", "");
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["archived"], 0, "{none}");
    assert_error(
        &api.post("/v1/context/bob/archive", o, &json!({"before": "someday"})),
        400,
        "bad_request",
        &["before", "someday"],
    );
    assert_error(
        &api.post("/v1/context/bob/archive", r, &json!({})),
        403,
        "forbidden",
        &[],
    );

    // Every change above is in the daemon's journal, and it verifies.
    let (status, after) = api.get("/v1/context/bob/stats", r);
    assert_eq!(status, 200);
    assert_eq!(
        (after["items"].as_u64(), after["archived_items"].as_u64()),
        (Some(0), Some(1)),
        "{after}"
    );
    drop(up);
    verify(&data);
}

/// Polls `stele bus recv` (through the daemon's bus socket) until `agent`
/// has a message; returns it.
fn first_message(data: &Path, config: &Path, agent: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = cli(data, config, None, &["bus", "recv", "--agent", agent, "--json"]);
        assert!(ok, "bus recv: {err}");
        let v: Value = serde_json::from_str(out.trim()).expect("recv JSON");
        if let Some(m) = v.as_array().and_then(|a| a.first()) {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "nothing reached {agent}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bus_routes_send_publish_ask_and_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (read, l1) = token("bus-reader", "read");
    let (operate, l2) = token("bus-operator", "operate");
    let config = dir.path().join("stele.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[bus]\npolicies = {:?}\n\n{l1}\n\n{l2}\n",
            crate::up::CONFIG,
            policies()
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    for name in ["alice", "bob"] {
        let file = definition(dir.path(), name, "normal");
        let (ok, _, err) = cli(
            &data,
            &config,
            None,
            &["agent", "register", file.to_str().expect("utf-8")],
        );
        assert!(ok, "register {name}: {err}");
    }
    let up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let api = Api::new(&up);
    let (r, o) = (Some(read.as_str()), Some(operate.as_str()));

    // send
    let (status, sent) = api.post(
        "/v1/bus/send",
        o,
        &json!({"from": "alice", "to": "bob", "message": "hello bob"}),
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["delivered"], json!(["bob"]), "{sent}");
    assert!(sent["seq"].as_u64().is_some_and(|s| s > 0), "{sent}");
    let got = first_message(&data, &config, "bob");
    assert_eq!(got["text"], "hello bob", "{got}");
    let (ok, _, err) = cli(
        &data,
        &config,
        None,
        &["bus", "ack", "--agent", "bob", got["id"].as_str().expect("id")],
    );
    assert!(ok, "ack: {err}");
    assert_error(
        &api.post(
            "/v1/bus/send",
            o,
            &json!({"from": "mallory", "to": "bob", "message": "x"}),
        ),
        404,
        "unknown_agent",
        &["mallory"],
    );
    assert_error(
        &api.post(
            "/v1/bus/send",
            r,
            &json!({"from": "alice", "to": "bob", "message": "x"}),
        ),
        403,
        "forbidden",
        &[],
    );

    // publish
    let (ok, _, err) = cli(
        &data,
        &config,
        None,
        &["bus", "subscribe", "--agent", "bob", "news.*"],
    );
    assert!(ok, "subscribe: {err}");
    let (status, published) = api.post(
        "/v1/bus/publish",
        o,
        &json!({"from": "alice", "topic": "news.today", "message": "extra"}),
    );
    assert_eq!(status, 200, "{published}");
    assert_eq!(published["delivered"], json!(["bob"]), "{published}");
    assert_error(
        &api.post(
            "/v1/bus/publish",
            o,
            &json!({"from": "alice", "topic": "news..bad", "message": "x"}),
        ),
        400,
        "bad_request",
        &["news..bad"],
    );
    let news = first_message(&data, &config, "bob");
    let (ok, _, err) = cli(
        &data,
        &config,
        None,
        &["bus", "ack", "--agent", "bob", news["id"].as_str().expect("id")],
    );
    assert!(ok, "ack: {err}");

    // ask: bob answers from another thread through the bus socket.
    let (d2, c2) = (data.clone(), config.clone());
    let answerer = std::thread::spawn(move || {
        let q = first_message(&d2, &c2, "bob");
        let id = q["id"].as_str().expect("request id").to_owned();
        let (ok, _, err) = cli(
            &d2,
            &c2,
            None,
            &["bus", "reply", "--agent", "bob", "--request", &id, "forty-two"],
        );
        assert!(ok, "reply: {err}");
        (q["text"].as_str().unwrap_or_default().to_owned(), id)
    });
    let (status, answer) = api.post(
        "/v1/bus/ask",
        o,
        &json!({"from": "alice", "to": "bob", "message": "the answer?", "timeout_ms": 20000}),
    );
    let (question, _) = answerer.join().expect("answerer");
    assert_eq!(question, "the answer?");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["text"], "forty-two", "{answer}");
    // Nobody answers this one: a 504 naming the request after timeout_ms.
    assert_error(
        &api.post(
            "/v1/bus/ask",
            o,
            &json!({"from": "bob", "to": "alice", "message": "hello?", "timeout_ms": 300}),
        ),
        504,
        "ask_timeout",
        &["timed out"],
    );
    assert_error(
        &api.post(
            "/v1/bus/ask",
            o,
            &json!({"from": "alice", "to": "bob", "message": "x", "timeout_ms": 3600000}),
        ),
        400,
        "bad_request",
        &["timeout_ms", "request_timeout"],
    );

    // stats: read scope.
    let (status, stats) = api.get("/v1/bus/stats", r);
    assert_eq!(status, 200, "{stats}");
    assert!(
        stats["sent"].as_u64().is_some_and(|n| n >= 4),
        "send, publish, ask, reply: {stats}"
    );
    assert_eq!(stats["responses"], 1, "{stats}");
    assert_error(&api.get("/v1/bus/stats", None), 401, "unauthorized", &[]);
    drop(up);
    verify(&data);

    // A daemon without [bus] policies runs no bus, and says how to get one.
    let plain = tempfile::tempdir().expect("tempdir");
    let up = Up::start_with(plain.path(), None, &["--policies", &policies()]);
    let api = Api::new(&up);
    assert_error(
        &api.get("/v1/bus/stats", None),
        409,
        "bus_not_enabled",
        &["[bus] policies"],
    );
    assert_error(
        &api.post(
            "/v1/bus/send",
            None,
            &json!({"from": "a", "to": "b", "message": "x"}),
        ),
        409,
        "bus_not_enabled",
        &["[bus] policies"],
    );
}
