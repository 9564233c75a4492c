//! A schema-driven fuzz of the whole HTTP API. One real `stele up` (bearer
//! tokens on, the fixture policies loaded, the scripted `assistant` agent)
//! takes, for every operation in the checked-in `docs/openapi.json`, a fixed
//! number of requests generated from the operation's schema by a seeded rng:
//! valid ones, and malformed or boundary ones — wrong JSON types, missing and
//! extra fields, huge, overflowing and negative numbers, invalid UTF-8,
//! truncated and short bodies, oversize bodies (declared and chunked), wrong
//! content types, bad path parameters (non-numeric, huge, `../`, invalid
//! UTF-8), bad query parameters and headers, wrong methods, and missing,
//! malformed, unknown or under-scoped tokens — plus a burst over
//! `[http] max_concurrent`.
//!
//! Every request must get an answer within [`ANSWER_TIMEOUT`] (no reset, no
//! hang), never a 5xx, and every 4xx is the documented
//! `{"error": {"code", "message"}}` with a message naming what was wrong.
//! Afterwards the daemon is healthy, `stele journal verify` passes, and every
//! event a request got acknowledged (registrations, stops, checkpoints, runs
//! started, decisions, forks) is in the journal. Requests go over raw TCP so
//! that bodies and headers can be anything HTTP/1.1 carries.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::up::{CONFIG, Up, WAIT, dump, verify};
use crate::up_runs::{assistant, policies};
use crate::{run_bounded, stele};

/// The rng's seed: the same requests on every run.
const SEED: u64 = 0x5e1e_f022;
/// Requests generated per operation (the first ones cover every kind of
/// case the operation has; the rest are drawn at random).
const CASES_PER_OP: usize = 150;
/// Longest a request may go unanswered before it counts as a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(25);
/// `[http] max_body` of the daemon under test (the default).
const MAX_BODY: usize = 1 << 20;
/// `[http] max_concurrent` of the daemon under test: small, so the burst
/// at the end is shed.
const MAX_CONCURRENT: usize = 4;
/// The operations whose valid requests the fuzz builds from what the
/// daemon holds (registered agents, parked runs, bundles, the fixture
/// policies): each must succeed at least once.
const VALID_KNOWN: &[&str] = &[
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /v1/openapi.json",
    "GET /v1/status",
    "GET /v1/agents",
    "POST /v1/agents",
    "GET /v1/agents/{name}",
    "POST /v1/agents/{name}/stop",
    "GET /v1/runs",
    "POST /v1/runs",
    "GET /v1/runs/{id}",
    "POST /v1/runs/{id}/replay",
    "POST /v1/runs/{id}/fork",
    "GET /v1/at/{seq}",
    "GET /v1/diff",
    "POST /v1/policy/backtest",
    "GET /v1/events",
    "GET /v1/events/{seq}",
    "GET /v1/events/stream",
    "POST /v1/journal/verify",
    "POST /v1/journal/checkpoint",
    "GET /v1/journal/proof/inclusion",
    "GET /v1/journal/proof/consistency",
    "POST /v1/audit/export",
    "POST /v1/audit/verify",
    "GET /v1/context/{agent}",
    "GET /v1/context/{agent}/stats",
    "POST /v1/context/{agent}/items",
    "POST /v1/context/{agent}/search",
    "PATCH /v1/context/{agent}/items/{item}",
    "POST /v1/context/{agent}/items/{item}/share",
    "POST /v1/context/{agent}/feedback",
    "POST /v1/context/{agent}/archive",
];
/// The agent whose context valid requests store, search and change.
const CONTEXT_AGENT: &str = "fuzz-ctx";
/// Most valid run starts and forks (each is a run the daemon drives).
const MAX_VALID_RUNS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Public,
    Read,
    Operate,
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Path,
    Query,
    Header,
}

#[derive(Clone, Debug)]
struct Param {
    name: String,
    loc: Loc,
    required: bool,
    schema: Value,
}

#[derive(Clone, Debug)]
enum BodySpec {
    /// `application/json` with its (resolved) schema; `schema_name` is the
    /// component it refers to.
    Json {
        schema: Value,
        schema_name: String,
        nullable: bool,
    },
    /// `application/toml`: an agent definition.
    Toml,
}

#[derive(Clone, Debug)]
struct Op {
    method: String,
    path: String,
    params: Vec<Param>,
    body: Option<BodySpec>,
    scope: Scope,
    /// The other methods the path takes.
    siblings: Vec<String>,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }
}

/// The scope an operation needs, as the document declares it: `security:
/// [{}]` public, `[{"bearer": [scope]}]` that scope (the router enforces
/// the same table; `http::every_operation_declares_the_scope_the_router_enforces`).
fn scope_of(method: &str, path: &str, op: &Value) -> Scope {
    let req = op["security"]
        .as_array()
        .and_then(|s| s.first())
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{method} {path} declares no security"));
    if req.is_empty() {
        return Scope::Public;
    }
    match req["bearer"][0].as_str() {
        Some("read") => Scope::Read,
        Some("operate") => Scope::Operate,
        Some("admin") => Scope::Admin,
        other => panic!("{method} {path}: unknown scope {other:?}"),
    }
}

fn resolve(doc: &Value, schema: &Value) -> (Value, Option<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().expect("a $ref names a component").to_owned();
        let target = &doc["components"]["schemas"][&name];
        assert!(target.is_object(), "dangling $ref {r}");
        return (target.clone(), Some(name));
    }
    (schema.clone(), None)
}

/// Every operation of the document.
fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let methods: Vec<String> = item.as_object().expect("path item").keys().cloned().collect();
        for (method, op) in item.as_object().expect("path item") {
            let params = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| Param {
                            name: p["name"].as_str().expect("param name").to_owned(),
                            loc: match p["in"].as_str() {
                                Some("path") => Loc::Path,
                                Some("query") => Loc::Query,
                                Some("header") => Loc::Header,
                                other => panic!("{method} {path}: parameter in {other:?}"),
                            },
                            required: p["required"] == true,
                            schema: p["schema"].clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let body =
                op["requestBody"]["content"].as_object().map(|content| {
                    if content.contains_key("application/toml") {
                        BodySpec::Toml
                    } else {
                        let schema = &content.get("application/json").unwrap_or_else(|| {
                            panic!("{method} {path}: a body that is neither JSON nor TOML")
                        })["schema"];
                        // `Option<T>` bodies are `oneOf: [null, T]`; an
                        // optional body may also be `null` (as good as none).
                        let (inner, nullable) = match schema["oneOf"].as_array() {
                            Some(alts) => (
                                alts.iter()
                                    .find(|a| a["type"] != "null")
                                    .expect("a non-null alternative")
                                    .clone(),
                                true,
                            ),
                            None => (schema.clone(), op["requestBody"]["required"] != true),
                        };
                        let (schema, name) = resolve(doc, &inner);
                        BodySpec::Json {
                            schema,
                            schema_name: name.unwrap_or_default(),
                            nullable,
                        }
                    }
                });
            ops.push(Op {
                method: method.clone(),
                path: path.clone(),
                params,
                body,
                scope: scope_of(method, path, op),
                siblings: methods.clone(),
            });
        }
    }
    ops
}

fn types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A value of none of `schema`'s types.
fn wrong_type(schema: &Value, rng: &mut StdRng) -> Value {
    let ts = types(schema);
    let candidates = [
        ("string", json!("not-the-right-type")),
        ("integer", json!(7)),
        ("number", json!(2.5)),
        ("boolean", json!(true)),
        ("array", json!([1, "two"])),
        ("object", json!({"nested": {"x": 1}})),
    ];
    let wrong: Vec<&Value> = candidates
        .iter()
        .filter(|(t, v)| {
            // 2.5 is a number, not an integer; 7 is both.
            let fits = ts.contains(t)
                || (ts.contains(&"number") && v.is_number())
                || (ts.contains(&"integer") && v.is_u64());
            !fits
        })
        .map(|(_, v)| v)
        .collect();
    (*wrong.choose(rng).expect("some type is wrong")).clone()
}

/// A value of `schema`'s type, with nothing about its meaning.
fn generic_value(schema: &Value, rng: &mut StdRng) -> Value {
    let ts = types(schema);
    if ts.contains(&"integer") {
        json!(rng.gen_range(1..20))
    } else if ts.contains(&"number") {
        json!(f64::from(rng.gen_range(0u8..=10)) / 10.0)
    } else if ts.contains(&"boolean") {
        json!(rng.gen_bool(0.5))
    } else if ts.contains(&"array") {
        json!([])
    } else if ts.contains(&"object") {
        json!({})
    } else {
        json!(format!("fuzz-{}", rng.gen_range(0..1000)))
    }
}

/// What the daemon holds that valid requests refer to.
#[derive(Default)]
struct World {
    head: u64,
    /// Agents the fuzz registered and has not stopped.
    stoppable: Vec<String>,
    runs: Vec<String>,
    bundles: Vec<String>,
    /// Context items stored (ids of [`CONTEXT_AGENT`]'s items).
    items: Vec<String>,
    valid_runs: usize,
    counter: u64,
    policies: Vec<(String, String)>,
    agent_template: String,
}

impl World {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}", self.counter)
    }

    fn seq(&self, rng: &mut StdRng) -> u64 {
        rng.gen_range(1..=self.head.max(1))
    }
}

/// A process agent that never runs (no event matches its filter).
fn idle_agent(name: &str) -> String {
    format!(
        "name = \"{name}\"\npriority = \"low\"\n\n[mode]\nkind = \"event-driven\"\nfilter = {{ kinds = [\"never\"] }}\n\n[limits]\nmemory_mb = 8\ncpu_cores = 0.1\nexecution_timeout = \"1s\"\n\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\nargs = []\n"
    )
}

#[derive(Clone, Debug)]
enum Body {
    None,
    Bytes(Vec<u8>),
    /// Declares `declared` bytes, sends `bytes` (fewer), then closes its
    /// sending half.
    Short {
        declared: usize,
        bytes: Vec<u8>,
    },
    /// Declares `declared` bytes and sends none: the server must answer
    /// from the declaration alone.
    DeclaredOnly(usize),
    Chunked(Vec<u8>),
}

/// What a case must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Anything but a 5xx.
    Any,
    /// A 4xx.
    ClientError,
    Status(u16),
}

#[derive(Clone, Debug)]
struct Case {
    what: String,
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    content_type: Option<String>,
    body: Body,
    expect: Expect,
    /// The error message must contain this (case-insensitively).
    hint: Option<String>,
    /// For approve/reject: the call decided.
    call: Option<String>,
}

/// One answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        if t.len() > 400 {
            format!("{}…", prefix(&t, 400))
        } else {
            t.into_owned()
        }
    }
}

/// Sends `case` on a fresh connection and reads the answer (the status
/// line and headers only for an event stream).
fn send(addr: &str, case: &Case) -> Result<Answer, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        case.method, case.target
    )
    .into_bytes();
    for (k, v) in &case.headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    if let Some(ct) = &case.content_type {
        head.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    match &case.body {
        Body::None => {}
        Body::Bytes(b) => head.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes()),
        Body::Short { declared, .. } | Body::DeclaredOnly(declared) => {
            head.extend_from_slice(format!("Content-Length: {declared}\r\n").as_bytes());
        }
        Body::Chunked(_) => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    s.write_all(&head).map_err(|e| format!("writing the head: {e}"))?;
    // A server may answer before it reads the whole body (413) and close;
    // a write failing then is fine as long as the answer arrives.
    let _ = match &case.body {
        Body::None | Body::DeclaredOnly(_) => Ok(()),
        Body::Bytes(b) => s.write_all(b),
        Body::Short { bytes, .. } => s.write_all(bytes).and_then(|()| s.shutdown(Shutdown::Write)),
        Body::Chunked(b) => (|| {
            for chunk in b.chunks(64 * 1024) {
                s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                s.write_all(chunk)?;
                s.write_all(b"\r\n")?;
            }
            s.write_all(b"0\r\n\r\n")
        })(),
    };
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "connection closed before an answer ({} bytes)",
                    buf.len()
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the answer after {:?}: {e}", started.elapsed())),
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: buf[header_end + 4..].to_vec(),
    };
    if answer
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream"))
    {
        return Ok(answer);
    }
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.body.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the body after {:?}: {e}", started.elapsed())),
        }
    }
    if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        answer.body = dechunk(&answer.body).ok_or("a malformed chunked body")?;
    }
    if let Some(n) = answer
        .header("content-length")
        .and_then(|n| n.parse::<usize>().ok())
        && n != answer.body.len()
    {
        return Err(format!(
            "content-length {n} but {} bytes arrived",
            answer.body.len()
        ));
    }
    Ok(answer)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Checks an answer against the rules every answer obeys and the case's
/// own expectation.
fn check(case: &Case, a: &Answer) -> Result<(), String> {
    if a.status >= 500 {
        return Err(format!("a {} (server error)", a.status));
    }
    match case.expect {
        Expect::Any => {}
        Expect::ClientError if (400..500).contains(&a.status) => {}
        Expect::ClientError => return Err(format!("{} where a 4xx was due", a.status)),
        Expect::Status(s) if s == a.status => {}
        Expect::Status(s) => return Err(format!("{} where {s} was due", a.status)),
    }
    if !(400..500).contains(&a.status) {
        return Ok(());
    }
    if !a
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return Err(format!(
            "a {} with content-type {:?}, not JSON",
            a.status,
            a.header("content-type")
        ));
    }
    let v = a.json();
    let ok_shape = v.as_object().is_some_and(|o| o.len() == 1)
        && v["error"].as_object().is_some_and(|o| o.len() == 2)
        && v["error"]["code"]
            .as_str()
            .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        && v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty());
    if !ok_shape {
        return Err(format!(
            "a {} not of the shape {{\"error\": {{\"code\", \"message\"}}}}",
            a.status
        ));
    }
    let message = v["error"]["message"].as_str().unwrap_or_default();
    if let Some(h) = &case.hint
        && !message.to_lowercase().contains(&h.to_lowercase())
    {
        return Err(format!("the message does not name {h:?}"));
    }
    if a.status == 401 && a.header("www-authenticate") != Some("Bearer") {
        return Err("a 401 without `WWW-Authenticate: Bearer`".into());
    }
    if a.status == 429 && a.header("retry-after").is_none() {
        return Err("a 429 without Retry-After".into());
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_string(q: &[(String, String)]) -> String {
    if q.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = q.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    format!("?{}", parts.join("&"))
}

/// A valid request's parts before they are mutated: path values (already
/// encoded), query pairs, headers and the JSON or TOML body.
#[derive(Clone, Debug, Default)]
struct Parts {
    path: BTreeMap<String, String>,
    query: Vec<(String, String)>,
    headers: Vec<(String, Vec<u8>)>,
    json: Option<Value>,
    toml: Option<String>,
    call: Option<String>,
}

struct Tokens {
    read: String,
    operate: String,
    admin: String,
}

impl Tokens {
    fn for_scope(&self, s: Scope) -> Option<&str> {
        match s {
            Scope::Public => None,
            Scope::Read => Some(&self.read),
            Scope::Operate => Some(&self.operate),
            Scope::Admin => Some(&self.admin),
        }
    }
}

struct Fuzz {
    addr: String,
    tokens: Tokens,
    rng: StdRng,
    world: World,
    acks: Vec<Ack>,
    failures: Vec<String>,
    sent: usize,
    /// Per operation: how many answers were 2xx, 4xx.
    tally: BTreeMap<String, (usize, usize)>,
}

/// What an answer acknowledged as durable.
#[derive(Debug)]
enum Ack {
    /// Events by seq that mention `about` (an agent).
    Seqs {
        seqs: Vec<u64>,
        about: String,
        /// One of them has one of these kinds.
        kinds: &'static [&'static str],
    },
    Checkpoint {
        seq: u64,
        hash: String,
    },
    RunStarted {
        run: String,
    },
    Decided {
        run: String,
        call: Option<String>,
    },
    Forked {
        run: String,
        origin: String,
    },
}

impl Fuzz {
    /// A request outside the fuzz (reading what valid requests refer to).
    fn get(&self, target: &str) -> Value {
        let case = Case {
            what: "helper".into(),
            method: "GET".into(),
            target: target.into(),
            headers: vec![(
                "Authorization".into(),
                format!("Bearer {}", self.tokens.read).into_bytes(),
            )],
            content_type: None,
            body: Body::None,
            expect: Expect::Any,
            hint: None,
            call: None,
        };
        let a = send(&self.addr, &case).unwrap_or_else(|e| panic!("GET {target}: {e}"));
        assert_eq!(a.status, 200, "GET {target}: {}", a.text());
        a.json()
    }

    fn refresh(&mut self) {
        self.world.head = self.get("/v1/status")["head"].as_u64().expect("head");
    }

    /// A run the daemon parked on an approval, and the call it waits on.
    fn parked(&mut self) -> Option<(String, String)> {
        let runs = self.world.runs.clone();
        for run in runs {
            let v = self.get(&format!("/v1/runs/{run}"));
            if v["driving"] == false
                && let Some(call) = v["awaiting"].as_object().and_then(|a| a.keys().next())
            {
                return Some((run, call.clone()));
            }
        }
        None
    }

    /// A settled run and a seq of it to fork at.
    fn forkable(&mut self) -> Option<(String, u64)> {
        let mut runs = self.world.runs.clone();
        runs.shuffle(&mut self.rng);
        for run in runs {
            let v = self.get(&format!("/v1/runs/{run}"));
            if v["driving"] == true {
                continue;
            }
            let page = self.get(&format!("/v1/events?run={run}&limit=6"));
            let seqs: Vec<u64> = page["events"]
                .as_array()
                .map(|es| es.iter().filter_map(|e| e["seq"].as_u64()).collect())
                .unwrap_or_default();
            if let Some(s) = seqs.get(seqs.len().saturating_sub(2)) {
                return Some((run, *s));
            }
        }
        None
    }

    /// Valid parts for `op`: the world supplies what they refer to.
    fn valid(&mut self, op: &Op, kind: Kind) -> Parts {
        let mut p = Parts::default();
        let head = self.world.head.max(1);
        for param in &op.params {
            let v = match (param.loc, param.name.as_str()) {
                (Loc::Path, "name") if op.path.ends_with("/stop") => {
                    // Each valid stop takes an agent of its own.
                    let agent = if kind == Kind::Valid {
                        self.world.stoppable.pop()
                    } else {
                        self.world.stoppable.last().cloned()
                    };
                    agent.unwrap_or_else(|| self.world.fresh("nobody"))
                }
                (Loc::Path, "name") => "assistant".to_owned(),
                (Loc::Path, "agent") => CONTEXT_AGENT.to_owned(),
                (Loc::Path, "item") => self
                    .world
                    .items
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or_else(|| "m-1".into()),
                (Loc::Path, "id") => self
                    .world
                    .runs
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or_else(|| "run-1".into()),
                (Loc::Path, "seq") if types(&param.schema).contains(&"string") => {
                    if self.rng.gen_bool(0.3) {
                        "head".into()
                    } else {
                        self.world.seq(&mut self.rng).to_string()
                    }
                }
                (Loc::Path, "seq") => self.world.seq(&mut self.rng).to_string(),
                (Loc::Path, _) => match generic_value(&param.schema, &mut self.rng) {
                    Value::String(s) => s,
                    v => v.to_string(),
                },
                (Loc::Header, _) => {
                    if self.rng.gen_bool(0.5) {
                        p.headers.push((
                            param.name.clone(),
                            self.world.seq(&mut self.rng).to_string().into_bytes(),
                        ));
                    }
                    continue;
                }
                (Loc::Query, name) => {
                    if !param.required && self.rng.gen_bool(0.4) {
                        continue;
                    }
                    match (op.path.as_str(), name) {
                        ("/v1/events", "stream" | "run") | ("/v1/at/{seq}", "run" | "step") => continue,
                        ("/v1/events", "from") => "1".into(),
                        ("/v1/events", "to") => self.world.seq(&mut self.rng).to_string(),
                        ("/v1/events", "limit") => self.rng.gen_range(1..=1000).to_string(),
                        ("/v1/events", "cursor") => self.world.seq(&mut self.rng).to_string(),
                        (_, "kind") => ["annotated", "agent_registered", "run_started"]
                            .choose(&mut self.rng)
                            .expect("kinds")
                            .to_string(),
                        (_, "view") => ["journal", "registry", "scheduler", "execution", "runs", "context"]
                            .choose(&mut self.rng)
                            .expect("views")
                            .to_string(),
                        ("/v1/diff", "from") => "1".into(),
                        ("/v1/diff", "to") => "head".into(),
                        ("/v1/diff", "run") => continue,
                        ("/v1/events/stream", "from") => self.world.seq(&mut self.rng).to_string(),
                        ("/v1/events/stream", "stream") => "ops".into(),
                        ("/v1/journal/proof/inclusion", "seq") => "1".into(),
                        ("/v1/journal/proof/inclusion", "size") => head.to_string(),
                        ("/v1/journal/proof/consistency", "m") => "1".into(),
                        ("/v1/journal/proof/consistency", "n") => head.to_string(),
                        _ => match generic_value(&param.schema, &mut self.rng) {
                            Value::String(s) => s,
                            v => v.to_string(),
                        },
                    }
                }
            };
            if param.loc == Loc::Path {
                p.path.insert(param.name.clone(), enc(&v));
            } else {
                p.query.push((param.name.clone(), v));
            }
        }
        match &op.body {
            None => {}
            Some(BodySpec::Toml) => {
                let name = self.world.fresh("fuzz-agent");
                p.toml = Some(self.world.agent_template.replace("{NAME}", &name));
            }
            Some(BodySpec::Json {
                schema, schema_name, ..
            }) => {
                p.json = Some(self.valid_json(op, kind, schema, schema_name, &mut p));
            }
        }
        p
    }

    fn valid_json(&mut self, op: &Op, kind: Kind, schema: &Value, schema_name: &str, p: &mut Parts) -> Value {
        // Finding a parked or settled run takes requests: only for the
        // cases that are valid.
        let valid = kind == Kind::Valid;
        let head = self.world.head.max(1);
        match schema_name {
            "StartRun" => {
                if valid && self.world.valid_runs < MAX_VALID_RUNS {
                    self.world.valid_runs += 1;
                    json!({"agent": "assistant", "input": "Summarise the workspace"})
                } else {
                    json!({"agent": self.world.fresh("nobody"), "input": "x"})
                }
            }
            "Decision" => match if valid { self.parked() } else { None } {
                Some((run, call)) => {
                    p.path.insert("id".into(), enc(&run));
                    p.call = Some(call.clone());
                    json!({"call": call, "reason": "fuzz", "approver": "fuzz"})
                }
                None => json!({"call": "call_none"}),
            },
            "ForkRequest" => {
                if valid
                    && self.world.valid_runs < MAX_VALID_RUNS
                    && let Some((run, at)) = self.forkable()
                {
                    self.world.valid_runs += 1;
                    p.path.insert("id".into(), enc(&run));
                    json!({"at": at})
                } else {
                    // Before any run: refused, so only valid cases fork.
                    json!({"at": 0})
                }
            }
            "ExportRequest" => {
                let name = self.world.fresh("fuzz-bundle");
                self.world.bundles.push(name.clone());
                json!({
                    "selection": {"type": "range", "from": 1, "to": head.min(20)},
                    "name": name,
                    "ocsf": self.rng.gen_bool(0.5),
                    "redact": ["run:"],
                })
            }
            "AuditVerifyRequest" => {
                let name = self
                    .world
                    .bundles
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or_else(|| "none-yet".into());
                json!({"name": name})
            }
            "BacktestRequest" => {
                let policies: serde_json::Map<String, Value> = self
                    .world
                    .policies
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                json!({"policies": policies, "from": 1, "to": head})
            }
            "StopBody" => json!({"reason": "stopped by the fuzz"}),
            "StoreRequest" => json!({"content": "notes the fuzz keeps", "tags": ["fuzz"]}),
            "SearchRequest" => json!({"query": "notes"}),
            "UpdateRequest" => json!({"content": "notes the fuzz changed"}),
            "ShareRequest" => json!({"with": "fuzz-ctx-peer"}),
            "FeedbackRequest" => {
                let item = p
                    .path
                    .get("item")
                    .cloned()
                    .or_else(|| self.world.items.last().cloned());
                json!({"item": format!("{CONTEXT_AGENT}/{}", item.unwrap_or_else(|| "m-1".into())), "score": 0.5})
            }
            other => {
                // An operation this test has no knowledge of: a value of
                // each required property's type.
                let _ = (op, other);
                let mut o = serde_json::Map::new();
                for r in schema["required"].as_array().into_iter().flatten() {
                    let name = r.as_str().expect("required name");
                    o.insert(
                        name.into(),
                        generic_value(&schema["properties"][name], &mut self.rng),
                    );
                }
                Value::Object(o)
            }
        }
    }

    fn target(op: &Op, p: &Parts) -> String {
        let mut path = op.path.clone();
        for (k, v) in &p.path {
            path = path.replace(&format!("{{{k}}}"), v);
        }
        assert!(
            !path.contains('{'),
            "{}: a path parameter was not filled: {path}",
            op.name()
        );
        path + &query_string(&p.query)
    }

    /// The case kinds `op` has.
    fn kinds(op: &Op) -> Vec<Kind> {
        let mut k = vec![Kind::Valid, Kind::WrongMethod];
        if op.scope != Scope::Public {
            k.extend([
                Kind::AuthMissing,
                Kind::AuthScheme,
                Kind::AuthUnknown,
                Kind::AuthBytes,
                Kind::AuthHuge,
            ]);
        }
        if op.scope > Scope::Read {
            k.push(Kind::AuthLowScope);
        }
        if op.params.iter().any(|p| p.loc == Loc::Path) {
            k.extend([Kind::PathBad, Kind::PathTraversal]);
        }
        if op.params.iter().any(|p| p.loc == Loc::Query) {
            k.extend([Kind::QueryWrongType, Kind::QueryDuplicate, Kind::QueryOdd]);
        }
        if op.params.iter().any(|p| p.loc == Loc::Query && p.required) {
            k.push(Kind::QueryMissing);
        }
        k.push(Kind::QueryExtra);
        if op.params.iter().any(|p| p.loc == Loc::Header) {
            k.push(Kind::HeaderBad);
        }
        match &op.body {
            None => k.push(Kind::UnwantedBody),
            Some(BodySpec::Json { .. }) => k.extend([
                Kind::JsonWrongType,
                Kind::JsonMissing,
                Kind::JsonExtra,
                Kind::JsonHugeString,
                Kind::JsonHugeNumber,
                Kind::JsonNegative,
                Kind::JsonNotObject,
                Kind::InvalidUtf8,
                Kind::Truncated,
                Kind::ShortBody,
                Kind::DeepNesting,
                Kind::OversizeDeclared,
                Kind::OversizeChunked,
                Kind::ContentType,
            ]),
            Some(BodySpec::Toml) => k.extend([
                Kind::TomlWrongType,
                Kind::TomlMissing,
                Kind::TomlExtra,
                Kind::TomlHuge,
                Kind::TomlNegative,
                Kind::TomlNonFinite,
                Kind::InvalidUtf8,
                Kind::Truncated,
                Kind::ShortBody,
                Kind::OversizeDeclared,
                Kind::OversizeChunked,
                Kind::OversizeRoute,
                Kind::ContentType,
            ]),
        }
        k
    }

    /// Case `i` of `op`.
    fn case(&mut self, op: &Op, i: usize) -> Case {
        let kinds = Fuzz::kinds(op);
        let kind = if i < kinds.len() {
            kinds[i]
        } else if self.rng.gen_bool(0.25) {
            Kind::Valid
        } else {
            *kinds.choose(&mut self.rng).expect("kinds")
        };
        let mut p = self.valid(op, kind);
        let mut case = Case {
            what: format!("{kind:?}"),
            method: op.method.to_uppercase(),
            target: String::new(),
            headers: Vec::new(),
            content_type: None,
            body: Body::None,
            expect: Expect::Any,
            hint: None,
            call: None,
        };
        let token = self.tokens.for_scope(op.scope).map(str::to_owned);
        let mut auth: Option<Vec<u8>> = token.as_ref().map(|t| format!("Bearer {t}").into_bytes());
        let secured = op.scope != Scope::Public;
        // The body, as the valid request would send it.
        let mut body_bytes: Option<Vec<u8>> = None;
        match &op.body {
            Some(BodySpec::Json { .. }) => {
                case.content_type = Some("application/json".into());
                body_bytes = p.json.as_ref().map(|v| v.to_string().into_bytes());
            }
            Some(BodySpec::Toml) => {
                case.content_type = Some("application/toml".into());
                body_bytes = p.toml.clone().map(String::into_bytes);
            }
            None => {}
        }
        match kind {
            Kind::Valid => {}
            Kind::WrongMethod => {
                let m = ["get", "post", "put", "delete", "patch"]
                    .iter()
                    .find(|m| !op.siblings.iter().any(|s| s == *m))
                    .expect("a method the path does not take");
                case.method = m.to_uppercase();
                case.expect = Expect::Status(405);
            }
            Kind::AuthMissing => {
                auth = None;
                case.expect = Expect::Status(401);
            }
            Kind::AuthScheme => {
                auth = Some(format!("Basic {}", token.clone().unwrap_or_default()).into_bytes());
                case.expect = Expect::Status(401);
            }
            Kind::AuthUnknown => {
                auth = Some(
                    b"Bearer stele_0000000000000000000000000000000000000000000000000000000000000000".to_vec(),
                );
                case.expect = Expect::Status(401);
            }
            Kind::AuthBytes => {
                auth = Some(b"Bearer \xff\xfe\x80stele".to_vec());
                case.expect = Expect::Status(401);
            }
            Kind::AuthHuge => {
                auth = Some(format!("Bearer {}", "A".repeat(8 * 1024)).into_bytes());
                case.expect = Expect::Status(401);
            }
            Kind::AuthLowScope => {
                let below = if op.scope == Scope::Admin {
                    Scope::Operate
                } else {
                    Scope::Read
                };
                auth = self
                    .tokens
                    .for_scope(below)
                    .map(|t| format!("Bearer {t}").into_bytes());
                case.expect = Expect::Status(403);
                case.hint = Some(format!("needs {}", scope_name(op.scope)));
            }
            Kind::PathBad => {
                let params: Vec<&Param> = op.params.iter().filter(|p| p.loc == Loc::Path).collect();
                let param = *params.choose(&mut self.rng).expect("a path param");
                let integer = types(&param.schema).contains(&"integer");
                let (value, hint) = *[
                    ("abc", Some("abc")),
                    ("-1", Some("-1")),
                    ("18446744073709551616", Some("18446744073709551616")),
                    (
                        "99999999999999999999999999999",
                        Some("99999999999999999999999999999"),
                    ),
                    ("1.5", Some("1.5")),
                    ("0x10", Some("0x10")),
                    ("%FF%FE", None),
                    ("%00", None),
                    ("%20", None),
                    ("0", None),
                    ("18446744073709551615", None),
                ]
                .choose(&mut self.rng)
                .expect("values");
                let long = "x".repeat(self.rng.gen_range(200..4000));
                let (value, hint) = if self.rng.gen_bool(0.15) {
                    (long.as_str(), Some(long.as_str()))
                } else {
                    (value, hint)
                };
                p.path.insert(param.name.clone(), value.to_owned());
                if integer && hint.is_some() {
                    case.expect = Expect::Status(400);
                    case.hint = hint.map(str::to_owned);
                }
            }
            Kind::PathTraversal => {
                let params: Vec<&Param> = op.params.iter().filter(|p| p.loc == Loc::Path).collect();
                let param = *params.choose(&mut self.rng).expect("a path param");
                let value = *[
                    "..%2F..%2F..%2Fetc%2Fpasswd",
                    "%2E%2E",
                    "..",
                    "../../etc/passwd",
                    "..%5C..%5Cwindows",
                    "a%2Fb",
                    "%2Fetc%2Fpasswd",
                ]
                .choose(&mut self.rng)
                .expect("values");
                p.path.insert(param.name.clone(), value.to_owned());
                // A name with a slash names nothing: no agent, run, item or
                // seq has one (and a raw one leaves the route). `..` alone
                // is a legal name (agent names allow dots); that it never
                // reaches a file is checked after the storm.
                if value != ".." && value != "%2E%2E" {
                    case.expect = Expect::ClientError;
                }
            }
            Kind::QueryWrongType => {
                let qs: Vec<&Param> = op
                    .params
                    .iter()
                    .filter(|p| p.loc == Loc::Query && types(&p.schema).contains(&"integer"))
                    .collect();
                if let Some(param) = qs.choose(&mut self.rng) {
                    let bad = *["abc", "-1", "1.5", "18446744073709551616", "", "1e3", " 1"]
                        .choose(&mut self.rng)
                        .expect("values");
                    p.query.retain(|(k, _)| k != &param.name);
                    p.query.push((param.name.clone(), bad.into()));
                    case.expect = Expect::Status(400);
                    case.hint = Some(param.name.clone());
                } else {
                    // String parameters only: a value that means nothing.
                    let param = op
                        .params
                        .iter()
                        .find(|p| p.loc == Loc::Query)
                        .expect("a query param");
                    p.query.retain(|(k, _)| k != &param.name);
                    p.query.push((param.name.clone(), "\u{202e}nonsense\u{0}".into()));
                }
            }
            Kind::QueryDuplicate => {
                let param = op
                    .params
                    .iter()
                    .filter(|p| p.loc == Loc::Query)
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng)
                    .map(|p| (*p).clone())
                    .expect("a query param");
                p.query.retain(|(k, _)| k != &param.name);
                p.query.push((param.name.clone(), "1".into()));
                p.query.push((param.name.clone(), "2".into()));
                case.expect = Expect::Status(400);
                case.hint = Some(param.name.clone());
            }
            Kind::QueryOdd => {
                let param = op
                    .params
                    .iter()
                    .filter(|p| p.loc == Loc::Query)
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng)
                    .map(|p| (*p).clone())
                    .expect("a query param");
                let value = [
                    "x".repeat(self.rng.gen_range(1000..6000)),
                    "../../etc/passwd".into(),
                    "'; drop table events; --".into(),
                    "run:../../x".into(),
                    "\u{1F980}\u{0}\u{202e}".into(),
                    "head".into(),
                    "0".into(),
                    "18446744073709551615".into(),
                ]
                .choose(&mut self.rng)
                .expect("values")
                .clone();
                p.query.retain(|(k, _)| k != &param.name);
                p.query.push((param.name, value));
            }
            Kind::QueryMissing => {
                let required: Vec<String> = op
                    .params
                    .iter()
                    .filter(|p| p.loc == Loc::Query && p.required)
                    .map(|p| p.name.clone())
                    .collect();
                let name = required.choose(&mut self.rng).expect("a required param").clone();
                p.query.retain(|(k, _)| *k != name);
                case.expect = Expect::Status(400);
                case.hint = Some(name);
            }
            Kind::QueryExtra => {
                let extra = format!("fuzz_extra_{}", self.rng.gen_range(0..100));
                p.query.push((extra.clone(), "1".into()));
                // Operations with query parameters refuse unknown ones; the
                // rest do not read the query at all.
                if op.params.iter().any(|p| p.loc == Loc::Query) {
                    case.expect = Expect::Status(400);
                    case.hint = Some(extra);
                }
            }
            Kind::HeaderBad => {
                let param = op
                    .params
                    .iter()
                    .find(|p| p.loc == Loc::Header)
                    .expect("a header param");
                let (v, expect): (&[u8], Expect) = *[
                    (&b"abc"[..], Expect::Status(400)),
                    (&b"-1"[..], Expect::Status(400)),
                    (&b"18446744073709551616"[..], Expect::Status(400)),
                    (&b"\xff\xfe"[..], Expect::Status(400)),
                    (&b""[..], Expect::Status(400)),
                    (&b"18446744073709551615"[..], Expect::Any),
                    (&b"0"[..], Expect::Any),
                ]
                .choose(&mut self.rng)
                .expect("values");
                p.headers.retain(|(k, _)| k != &param.name);
                p.headers.push((param.name.clone(), v.to_vec()));
                case.expect = expect;
            }
            Kind::UnwantedBody => {
                case.content_type = Some(
                    (*["application/json", "text/plain", "application/octet-stream"]
                        .choose(&mut self.rng)
                        .expect("types"))
                    .to_owned(),
                );
                body_bytes = Some(b"{\"unexpected\": [1, 2, \xff]}".to_vec());
            }
            Kind::JsonWrongType
            | Kind::JsonMissing
            | Kind::JsonExtra
            | Kind::JsonHugeString
            | Kind::JsonHugeNumber
            | Kind::JsonNegative
            | Kind::JsonNotObject
            | Kind::DeepNesting => {
                let Some(BodySpec::Json { schema, nullable, .. }) = &op.body else {
                    unreachable!("JSON kinds are only drawn for JSON bodies")
                };
                let (v, expect, hint) =
                    self.mutate_json(kind, schema, *nullable, p.json.clone().unwrap_or(json!({})));
                body_bytes = Some(v);
                case.expect = expect;
                case.hint = hint;
            }
            Kind::TomlWrongType
            | Kind::TomlMissing
            | Kind::TomlExtra
            | Kind::TomlHuge
            | Kind::TomlNegative
            | Kind::TomlNonFinite => {
                let name = self.world.fresh("fuzz-bad");
                let (text, hint) = mutate_toml(kind, &idle_agent(&name), &mut self.rng);
                body_bytes = Some(text.into_bytes());
                case.expect = Expect::Status(400);
                case.hint = hint;
            }
            Kind::InvalidUtf8 => {
                let mut b = body_bytes.clone().unwrap_or_default();
                // Into the middle of a string value (after the first quote
                // of a value) or anywhere in TOML.
                let at = b.iter().position(|c| *c == b':').map_or(b.len() / 2, |i| i + 1);
                b.splice(at..at, b"\"\xff\xfe\xc3\x28\"".iter().copied());
                body_bytes = Some(b);
                case.expect = Expect::Status(400);
            }
            Kind::Truncated => {
                let b = body_bytes.clone().unwrap_or_default();
                let cut = self.rng.gen_range(1..b.len().max(2));
                body_bytes = Some(b[..cut.min(b.len())].to_vec());
                case.expect = Expect::ClientError;
            }
            Kind::ShortBody => {
                let b = body_bytes.take().unwrap_or_default();
                case.body = Body::Short {
                    declared: b.len() + self.rng.gen_range(1..4096),
                    bytes: b,
                };
                case.expect = Expect::ClientError;
            }
            Kind::OversizeDeclared => {
                body_bytes = None;
                case.body = Body::DeclaredOnly(MAX_BODY + self.rng.gen_range(1..1 << 30));
                case.expect = Expect::Status(413);
                case.hint = Some("max_body".into());
            }
            Kind::OversizeChunked => {
                let mut b = b"{\"pad\": \"".to_vec();
                b.resize(MAX_BODY + 64 * 1024, b'x');
                body_bytes = None;
                case.body = Body::Chunked(b);
                case.expect = Expect::Status(413);
            }
            Kind::OversizeRoute => {
                // Under [http] max_body, over what this route takes.
                let mut text = p.toml.clone().unwrap_or_default();
                text.push_str(&format!("# {}\n", "x".repeat(MAX_BODY / 2)));
                body_bytes = Some(text.into_bytes());
                case.expect = Expect::Status(413);
            }
            Kind::ContentType => {
                let (ct, expect) = *[
                    (Some("text/plain"), Expect::Status(415)),
                    (None, Expect::Status(415)),
                    (Some("application/x-www-form-urlencoded"), Expect::Status(415)),
                    (Some("multipart/form-data; boundary=x"), Expect::Status(415)),
                    (Some("garbage"), Expect::Status(415)),
                    (Some("application/json; charset=latin1"), Expect::Any),
                ]
                .choose(&mut self.rng)
                .expect("types");
                case.content_type = ct.map(str::to_owned);
                if matches!(op.body, Some(BodySpec::Toml))
                    && ct.is_some_and(|c| c.starts_with("application/json"))
                {
                    case.expect = Expect::Status(415);
                } else if matches!(op.body, Some(BodySpec::Toml)) && ct == Some("text/plain") {
                    // TOML is text: a definition may come as text/plain.
                    case.expect = Expect::Any;
                } else {
                    case.expect = expect;
                }
                // A body-optional operation takes an empty body of any type.
                if matches!(op.body, Some(BodySpec::Json { nullable: true, .. })) && body_bytes.is_none() {
                    case.expect = Expect::Any;
                }
            }
        }
        if let Some(a) = auth {
            case.headers.push(("Authorization".into(), a));
        }
        case.headers.extend(p.headers.clone());
        if matches!(case.body, Body::None)
            && let Some(b) = body_bytes
        {
            case.body = Body::Bytes(b);
        }
        if !secured && case.expect == Expect::Status(401) {
            case.expect = Expect::Any;
        }
        case.target = Fuzz::target(op, &p);
        case.call = p.call;
        case
    }

    /// A JSON body mutated as `kind` says, what it must get, and what the
    /// error must name.
    fn mutate_json(
        &mut self,
        kind: Kind,
        schema: &Value,
        nullable: bool,
        valid: Value,
    ) -> (Vec<u8>, Expect, Option<String>) {
        let mut v = valid;
        let props: Vec<(String, Value)> = schema["properties"]
            .as_object()
            .map(|o| o.iter().map(|(k, s)| (k.clone(), s.clone())).collect())
            .unwrap_or_default();
        let required: Vec<String> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let of_type = |t: &str| -> Vec<(String, Value)> {
            props
                .iter()
                .filter(|(_, s)| types(s).contains(&t))
                .cloned()
                .collect()
        };
        let client = Expect::ClientError;
        match kind {
            Kind::JsonWrongType if !props.is_empty() => {
                let (name, s) = props.choose(&mut self.rng).expect("props").clone();
                v[&name] = wrong_type(&s, &mut self.rng);
                (v.to_string().into_bytes(), client, Some(name))
            }
            Kind::JsonMissing if !required.is_empty() => {
                let name = required.choose(&mut self.rng).expect("required").clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove(&name);
                }
                (v.to_string().into_bytes(), client, Some(name))
            }
            Kind::JsonHugeString if !of_type("string").is_empty() => {
                let (name, _) = of_type("string").choose(&mut self.rng).expect("strings").clone();
                v[&name] = json!("\u{00e9}".repeat(self.rng.gen_range(40_000..200_000)));
                (v.to_string().into_bytes(), Expect::Any, None)
            }
            Kind::JsonHugeNumber if !of_type("integer").is_empty() => {
                let (name, _) = of_type("integer").choose(&mut self.rng).expect("ints").clone();
                let (text, expect, hint) = *[
                    ("18446744073709551616", client, Some(name.as_str())),
                    ("1e400", client, None),
                    ("123456789012345678901234567890", client, Some(name.as_str())),
                    ("18446744073709551615", Expect::Any, None),
                    ("9007199254740993", Expect::Any, None),
                ]
                .choose(&mut self.rng)
                .expect("numbers");
                let hint = hint.map(str::to_owned);
                v[&name] = json!("__NUMBER__");
                let text = v.to_string().replace("\"__NUMBER__\"", text);
                (text.into_bytes(), expect, hint)
            }
            Kind::JsonNegative if !of_type("integer").is_empty() => {
                let (name, _) = of_type("integer").choose(&mut self.rng).expect("ints").clone();
                v[&name] = json!(-self.rng.gen_range(1i64..i64::MAX));
                (v.to_string().into_bytes(), client, Some(name))
            }
            Kind::JsonNotObject => {
                let (body, expect) = *[
                    ("[]", client),
                    ("\"a string\"", client),
                    ("42", client),
                    ("true", client),
                    ("null", if nullable { Expect::Any } else { client }),
                    ("{}", if required.is_empty() { Expect::Any } else { client }),
                ]
                .choose(&mut self.rng)
                .expect("bodies");
                (body.as_bytes().to_vec(), expect, None)
            }
            Kind::DeepNesting => {
                let depth = self.rng.gen_range(200..20_000);
                let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                match props.choose(&mut self.rng) {
                    Some((name, _)) => {
                        v[name] = json!("__DEEP__");
                        let text = v.to_string().replace("\"__DEEP__\"", &deep);
                        (text.into_bytes(), client, None)
                    }
                    None => (deep.into_bytes(), client, None),
                }
            }
            // JsonExtra, and the kinds above on a schema without such a
            // property: an unknown field.
            _ => {
                let extra = format!("fuzz_extra_{}", self.rng.gen_range(0..100));
                match v.as_object_mut() {
                    Some(o) => {
                        o.insert(extra.clone(), json!({"x": [1, 2, 3]}));
                    }
                    None => v = json!({ extra.clone(): 1 }),
                }
                (v.to_string().into_bytes(), client, Some(extra))
            }
        }
    }

    fn run_case(&mut self, op: &Op, case: &Case) {
        self.sent += 1;
        let answer = match send(&self.addr, case) {
            Ok(a) => a,
            Err(e) => {
                self.failures.push(format!(
                    "{} [{}] {}: no answer: {e}",
                    op.name(),
                    case.what,
                    short(&case.target)
                ));
                return;
            }
        };
        let t = self.tally.entry(op.name()).or_default();
        if (200..300).contains(&answer.status) {
            t.0 += 1;
        } else if (400..500).contains(&answer.status) {
            t.1 += 1;
        }
        if let Err(e) = check(case, &answer) {
            self.failures.push(format!(
                "{} [{}] {}: {e}: {}",
                op.name(),
                case.what,
                short(&case.target),
                answer.text()
            ));
        }
        self.acknowledge(op, case, &answer);
    }

    /// Records what a successful change acknowledged, and what later valid
    /// requests may refer to.
    fn acknowledge(&mut self, op: &Op, case: &Case, a: &Answer) {
        if !(200..300).contains(&a.status) || op.method != "post" {
            return;
        }
        let v = a.json();
        let seqs = |v: &Value| -> Vec<u64> {
            v["seqs"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default()
        };
        match op.path.as_str() {
            "/v1/agents" => {
                let agent = v["agent"].as_str().expect("registered agent").to_owned();
                self.acks.push(Ack::Seqs {
                    seqs: seqs(&v),
                    about: agent.clone(),
                    kinds: &["agent_registered"],
                });
                if agent.starts_with("fuzz-agent-") {
                    self.world.stoppable.push(agent);
                }
            }
            "/v1/agents/{name}/stop" => self.acks.push(Ack::Seqs {
                seqs: seqs(&v),
                about: v["agent"].as_str().expect("stopped agent").to_owned(),
                // A ready agent terminates at once; a running one is asked to.
                kinds: &["agent_state_changed", "agent_stop_requested"],
            }),
            "/v1/journal/checkpoint" => self.acks.push(Ack::Checkpoint {
                seq: v["seq"].as_u64().expect("checkpoint seq"),
                hash: v["hash"].as_str().expect("checkpoint hash").to_owned(),
            }),
            "/v1/audit/export" => {
                if let Some(seq) = v["checkpoint_made"].as_u64() {
                    self.acks.push(Ack::Seqs {
                        seqs: vec![seq],
                        about: String::new(),
                        kinds: &["checkpoint_signed"],
                    });
                }
            }
            "/v1/context/{agent}/items" => {
                if let Some(id) = v["id"].as_str() {
                    self.world.items.push(id.to_owned());
                }
            }
            "/v1/runs" => {
                let run = v["run"].as_str().expect("run").to_owned();
                self.acks.push(Ack::RunStarted { run: run.clone() });
                self.world.runs.push(run);
            }
            "/v1/runs/{id}/approve" | "/v1/runs/{id}/reject" => self.acks.push(Ack::Decided {
                run: v["run"].as_str().expect("run").to_owned(),
                call: case.call.clone(),
            }),
            "/v1/runs/{id}/fork" => {
                let run = v["run"].as_str().expect("run").to_owned();
                self.acks.push(Ack::Forked {
                    run: run.clone(),
                    origin: v["origin"].as_str().expect("origin").to_owned(),
                });
                self.world.runs.push(run);
            }
            _ => {}
        }
    }
}

/// The longest prefix of `s` of at most `n` bytes that ends on a character.
fn prefix(s: &str, n: usize) -> &str {
    let end = (0..=n.min(s.len()))
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    &s[..end]
}

fn short(target: &str) -> String {
    if target.len() > 160 {
        format!("{}…", prefix(target, 160))
    } else {
        target.to_owned()
    }
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Public => "none",
        Scope::Read => "read",
        Scope::Operate => "operate",
        Scope::Admin => "admin",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Valid,
    WrongMethod,
    AuthMissing,
    AuthScheme,
    AuthUnknown,
    AuthBytes,
    AuthHuge,
    AuthLowScope,
    PathBad,
    PathTraversal,
    QueryWrongType,
    QueryDuplicate,
    QueryOdd,
    QueryMissing,
    QueryExtra,
    HeaderBad,
    UnwantedBody,
    JsonWrongType,
    JsonMissing,
    JsonExtra,
    JsonHugeString,
    JsonHugeNumber,
    JsonNegative,
    JsonNotObject,
    DeepNesting,
    TomlWrongType,
    TomlMissing,
    TomlExtra,
    TomlHuge,
    TomlNegative,
    TomlNonFinite,
    InvalidUtf8,
    Truncated,
    ShortBody,
    OversizeDeclared,
    OversizeChunked,
    OversizeRoute,
    ContentType,
}

/// An agent definition mutated as `kind` says, and what the error must
/// name.
fn mutate_toml(kind: Kind, valid: &str, rng: &mut StdRng) -> (String, Option<String>) {
    let edits: &[(&str, &str, Option<&str>)] = match kind {
        Kind::TomlWrongType => &[
            ("priority = \"low\"", "priority = 5", Some("priority")),
            ("memory_mb = 8", "memory_mb = \"lots\"", Some("memory_mb")),
            ("cpu_cores = 0.1", "cpu_cores = [0.1]", Some("cpu_cores")),
            // Fields of a tagged table (`[runs]`, `kind = …`) are named by
            // their table: serde reads them from a buffer without a path.
            ("args = []", "args = \"-x\"", Some("runs")),
            (
                "execution_timeout = \"1s\"",
                "execution_timeout = 1",
                Some("execution_timeout"),
            ),
        ],
        Kind::TomlMissing => &[
            ("name = ", "# name = ", Some("name")),
            ("command = \"/bin/true\"", "", Some("command")),
            ("memory_mb = 8", "", Some("memory_mb")),
        ],
        Kind::TomlExtra => &[
            (
                "priority = \"low\"",
                "priority = \"low\"\nfuzz_extra = 1",
                Some("fuzz_extra"),
            ),
            ("memory_mb = 8", "memory_mb = 8\nswap_mb = 8", Some("swap_mb")),
        ],
        Kind::TomlHuge => &[
            (
                "memory_mb = 8",
                "memory_mb = 99999999999999999999999",
                Some("memory_mb"),
            ),
            (
                "memory_mb = 8",
                "memory_mb = 18446744073709551616",
                Some("memory_mb"),
            ),
            ("cpu_cores = 0.1", "cpu_cores = 1e308", Some("cpu_cores")),
            (
                "execution_timeout = \"1s\"",
                "execution_timeout = \"99999999999999999999y\"",
                Some("execution_timeout"),
            ),
        ],
        Kind::TomlNegative => &[
            ("memory_mb = 8", "memory_mb = -1", Some("memory_mb")),
            ("cpu_cores = 0.1", "cpu_cores = -0.5", Some("cpu_cores")),
            (
                "execution_timeout = \"1s\"",
                "execution_timeout = \"-1s\"",
                Some("execution_timeout"),
            ),
            ("memory_mb = 8", "memory_mb = 0", Some("memory_mb")),
        ],
        _ => &[
            ("cpu_cores = 0.1", "cpu_cores = nan", Some("cpu_cores")),
            ("cpu_cores = 0.1", "cpu_cores = inf", Some("cpu_cores")),
            ("cpu_cores = 0.1", "cpu_cores = -inf", Some("cpu_cores")),
        ],
    };
    let (from, to, hint) = *edits.choose(rng).expect("edits");
    assert!(valid.contains(from), "the template has {from:?}");
    (valid.replacen(from, to, 1), hint.map(str::to_owned))
}

fn token(name: &str, scope: &str) -> (String, String) {
    let r = run_bounded(&["token", "create", name, "--scope", scope, "--json"]);
    r.no_panic("token create");
    assert_eq!(r.code, Some(0), "token create: {r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("token JSON");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["config"].as_str().expect("config line").to_owned(),
    )
}

fn fixture_policies() -> Vec<(String, String)> {
    let dir = PathBuf::from(policies());
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("fixture policies")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .map(|p| {
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("policy"),
            )
        })
        .collect();
    files.sort();
    files
}

/// A burst over `[http] max_concurrent`: every request answered, the shed
/// ones with a 429 of the documented shape.
fn burst(fuzz: &mut Fuzz) {
    let addr = fuzz.addr.clone();
    let operate = fuzz.tokens.operate.clone();
    let answers: Vec<Result<Answer, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..MAX_CONCURRENT * 6)
            .map(|_| {
                let (addr, operate) = (addr.clone(), operate.clone());
                s.spawn(move || {
                    let case = Case {
                        what: "Burst".into(),
                        method: "POST".into(),
                        target: "/v1/journal/verify".into(),
                        headers: vec![("Authorization".into(), format!("Bearer {operate}").into_bytes())],
                        content_type: None,
                        body: Body::None,
                        expect: Expect::Any,
                        hint: None,
                        call: None,
                    };
                    send(&addr, &case)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("burst thread"))
            .collect()
    });
    let mut shed = 0;
    for a in answers {
        fuzz.sent += 1;
        match a {
            Ok(a) => {
                if a.status == 429 {
                    shed += 1;
                }
                let case = Case {
                    what: "Burst".into(),
                    method: "POST".into(),
                    target: "/v1/journal/verify".into(),
                    headers: Vec::new(),
                    content_type: None,
                    body: Body::None,
                    expect: Expect::Any,
                    hint: None,
                    call: None,
                };
                if let Err(e) = check(&case, &a) {
                    fuzz.failures.push(format!("burst: {e}: {}", a.text()));
                } else if a.status != 200 && a.status != 429 {
                    fuzz.failures.push(format!("burst: {}: {}", a.status, a.text()));
                }
            }
            Err(e) => fuzz.failures.push(format!("burst: no answer: {e}")),
        }
    }
    eprintln!("api fuzz: burst of {}: {shed} shed with 429", MAX_CONCURRENT * 6);
}

/// Checks every acknowledged event against the journal's events.
fn check_acks(acks: &[Ack], events: &[Value]) -> Vec<String> {
    let by_seq: BTreeMap<u64, &Value> = events
        .iter()
        .filter_map(|e| Some((e["seq"].as_u64()?, e)))
        .collect();
    let in_run = |run: &str, kind: &str| {
        events
            .iter()
            .filter(|e| e["stream"] == format!("run:{run}") && e["body"]["kind"] == kind)
            .collect::<Vec<_>>()
    };
    let mut missing = Vec::new();
    for ack in acks {
        let ok = match ack {
            Ack::Seqs { seqs, about, kinds } => {
                !seqs.is_empty()
                    && seqs.iter().all(|s| by_seq.contains_key(s))
                    && seqs.iter().any(|s| {
                        by_seq.get(s).is_some_and(|e| {
                            kinds.iter().any(|k| e["body"]["kind"] == *k)
                                && e.to_string().contains(about.as_str())
                        })
                    })
            }
            Ack::Checkpoint { seq, hash } => by_seq
                .get(seq)
                .is_some_and(|e| e["hash"] == hash.as_str() && e["body"]["kind"] == "checkpoint_signed"),
            Ack::RunStarted { run } => !in_run(run, "run_started").is_empty(),
            Ack::Decided { run, call } => in_run(run, "approval_decided")
                .iter()
                .any(|e| call.as_ref().is_none_or(|c| e.to_string().contains(c.as_str()))),
            Ack::Forked { run, origin } => in_run(run, "run_forked")
                .iter()
                .any(|e| e.to_string().contains(origin.as_str())),
        };
        if !ok {
            missing.push(format!("{ack:?}"));
        }
    }
    missing
}

#[test]
fn every_operation_survives_a_storm_of_malformed_requests() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (read, l1) = token("fuzz-reader", "read");
    let (operate, l2) = token("fuzz-operator", "operate");
    let (admin, l3) = token("fuzz-root", "admin");
    std::fs::write(
        dir.path().join("stele.toml"),
        format!(
            "{CONFIG}\n[http]\nrequest_timeout = \"20s\"\nmax_concurrent = {MAX_CONCURRENT}\n\n{l1}\n\n{l2}\n\n{l3}\n"
        ),
    )
    .expect("config");
    let (agent_file, _workspace) = assistant(dir.path());
    let mut up = Up::start_with(dir.path(), None, &["--policies", &policies()]);
    let addr = up.http.trim_start_matches("http://").to_owned();

    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&doc_path).expect("docs/openapi.json")).expect("JSON");
    let ops = operations(&doc);
    assert!(ops.len() >= 29, "only {} operations in the document", ops.len());

    let mut fuzz = Fuzz {
        addr,
        tokens: Tokens { read, operate, admin },
        rng: StdRng::seed_from_u64(SEED),
        world: World {
            policies: fixture_policies(),
            agent_template: idle_agent("{NAME}"),
            ..World::default()
        },
        acks: Vec::new(),
        failures: Vec::new(),
        sent: 0,
        tally: BTreeMap::new(),
    };

    // Set up what valid requests refer to: the assistant registered, a run
    // parked on its approval.
    let definition = std::fs::read_to_string(&agent_file).expect("agent");
    let register = Case {
        what: "Setup".into(),
        method: "POST".into(),
        target: "/v1/agents".into(),
        headers: vec![(
            "Authorization".into(),
            format!("Bearer {}", fuzz.tokens.operate).into_bytes(),
        )],
        content_type: Some("application/toml".into()),
        body: Body::Bytes(definition.into_bytes()),
        expect: Expect::Status(201),
        hint: None,
        call: None,
    };
    let agents_op = ops
        .iter()
        .find(|o| o.method == "post" && o.path == "/v1/agents")
        .expect("POST /v1/agents")
        .clone();
    fuzz.run_case(&agents_op, &register);
    let runs_op = ops
        .iter()
        .find(|o| o.method == "post" && o.path == "/v1/runs")
        .expect("POST /v1/runs")
        .clone();
    let start = Case {
        what: "Setup".into(),
        method: "POST".into(),
        target: "/v1/runs".into(),
        headers: register.headers.clone(),
        content_type: Some("application/json".into()),
        body: Body::Bytes(
            json!({"agent": "assistant", "input": "Summarise the workspace"})
                .to_string()
                .into_bytes(),
        ),
        expect: Expect::Status(202),
        hint: None,
        call: None,
    };
    fuzz.run_case(&runs_op, &start);
    assert!(fuzz.failures.is_empty(), "setup: {:?}", fuzz.failures);
    let deadline = Instant::now() + WAIT;
    while fuzz.parked().is_none() {
        assert!(Instant::now() < deadline, "the setup run did not park");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The storm: round by round, one case of every operation each round,
    // so what valid requests change (agents, runs, bundles) feeds the next.
    // Shutdown is fuzzed without its admin token (anything with it stops
    // the daemon); it is called with it, and a junk body, at the end.
    for round in 0..CASES_PER_OP {
        fuzz.refresh();
        for op in &ops {
            let mut case = fuzz.case(op, round);
            if op.path == "/v1/shutdown"
                && case.method == op.method.to_uppercase()
                && case.headers.iter().any(|(k, v)| {
                    k == "Authorization" && *v == format!("Bearer {}", fuzz.tokens.admin).into_bytes()
                })
            {
                case.headers.retain(|(k, _)| k != "Authorization");
                case.headers.push((
                    "Authorization".into(),
                    format!("Bearer {}", fuzz.tokens.operate).into_bytes(),
                ));
                if case.expect == Expect::Any {
                    case.expect = Expect::Status(403);
                    case.hint = Some("needs admin".into());
                }
            }
            fuzz.run_case(op, &case);
        }
    }
    burst(&mut fuzz);

    // Still healthy, and no server error recorded.
    let health = fuzz.get("/health");
    assert_eq!(health["overall_status"], "healthy", "{health}");
    let ready = fuzz.get("/ready");
    assert_eq!(ready["overall_status"], "healthy", "{ready}");
    assert!(
        !ready["recent_errors"].to_string().contains("\"http\""),
        "server errors were recorded: {ready}"
    );
    fuzz.get("/v1/status");

    let ok_ops: Vec<String> = fuzz
        .tally
        .iter()
        .filter(|(_, (ok, _))| *ok > 0)
        .map(|(k, _)| k.clone())
        .collect();
    eprintln!(
        "api fuzz: {} requests over {} operations in {:?}; {} acknowledged changes; 2xx/4xx per operation: {:?}",
        fuzz.sent,
        ops.len(),
        started.elapsed(),
        fuzz.acks.len(),
        fuzz.tally
    );
    assert!(
        fuzz.failures.is_empty(),
        "{} of {} requests broke the rules:\n{}",
        fuzz.failures.len(),
        fuzz.sent,
        fuzz.failures
            .iter()
            .take(80)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every operation whose valid requests this test builds from what the
    // daemon holds took at least one of them (the decisions only while a
    // run is parked: at least one of the two). The others get requests of
    // their schema's types, and are held to the same rules above.
    for name in VALID_KNOWN {
        assert!(
            ok_ops.iter().any(|o| o == name),
            "{name} never succeeded: the fuzz's valid requests are not valid"
        );
    }
    let generic: Vec<String> = ops
        .iter()
        .map(Op::name)
        .filter(|n| !ok_ops.contains(n) && !VALID_KNOWN.contains(&n.as_str()))
        .collect();
    eprintln!("api fuzz: operations with no valid request built here (schema types only): {generic:?}");
    assert!(
        ok_ops
            .iter()
            .any(|o| o.ends_with("/approve") || o.ends_with("/reject")),
        "no decision succeeded"
    );

    // Shutdown with its token and a junk body: accepted, the daemon stops.
    let shutdown = Case {
        what: "Shutdown".into(),
        method: "POST".into(),
        target: "/v1/shutdown?fuzz=1".into(),
        headers: vec![(
            "Authorization".into(),
            format!("Bearer {}", fuzz.tokens.admin).into_bytes(),
        )],
        content_type: Some("application/json".into()),
        body: Body::Bytes(b"{\"not\": [\"read\"".to_vec()),
        expect: Expect::Status(202),
        hint: None,
        call: None,
    };
    let a = send(&fuzz.addr, &shutdown).expect("shutdown answered");
    check(&shutdown, &a).unwrap_or_else(|e| panic!("shutdown: {e}: {}", a.text()));
    assert!(up.wait_exit().success(), "stele up did not exit cleanly");

    verify(&up.data);
    let out = stele()
        .arg("--data")
        .arg(&up.data)
        .args(["events", "--json"])
        .output()
        .expect("stele events");
    assert!(
        out.status.success(),
        "events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect();
    let missing = check_acks(&fuzz.acks, &events);
    assert!(
        missing.is_empty(),
        "acknowledged but not in the journal: {missing:#?}\n{}",
        dump(&events)
    );
    // No path parameter reached a file: nothing named after the traversal
    // values exists anywhere under the test's directory, and nothing but
    // what the test and the daemon made sits beside the data directory.
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                !["passwd", "windows", ".."].iter().any(|bad| name.contains(bad)),
                "a traversal value reached the filesystem: {}",
                entry.path().display()
            );
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["assistant.toml", "data", "stele.toml", "ws"],
        "files beside the data directory"
    );
    eprintln!("api fuzz: done in {:?}", started.elapsed());
}
