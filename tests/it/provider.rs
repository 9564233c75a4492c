//! The inference providers as the reasoning loop meets them: the OpenAI
//! chat-completions provider against a local axum server speaking that wire
//! format (text and tool-call answers, the request as sent, garbage,
//! truncated and mistyped answers, 429/500/400, a slow server, a refused
//! connection, oversized answers), the scripted provider on the fixtures in
//! `fixtures/scripts/`, and the `[inference]` configuration.
//!
//! No assertion is timed; `HANG_GUARD` only turns a hang into a failure.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use stele_engine::config::{Config, InferenceConfig, ProviderKind};
use stele_engine::llm::{
    Completion, CompletionRequest, Message, Provider, ProviderError, Role, ToolCall, ToolSpec,
    provider_from_config,
};
use stele_engine::openai::{
    ApiKey, OpenAiProvider, OpenAiSettings, Transport, parse_completion, retry_after,
};
use stele_engine::scripted::ScriptedProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a single provider call may take in these tests before it counts
/// as hung (the slow-server test's provider timeout is far below it).
const HANG_GUARD: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(name: &str) -> PathBuf {
    root().join("fixtures/scripts").join(name)
}

// ---------------------------------------------------------------- server

/// What the local server answers.
#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body2,
    delay: Duration,
}

#[derive(Clone)]
enum Body2 {
    Bytes(Vec<u8>),
    /// Sent chunked (no Content-Length), in pieces of this size.
    Chunked(Vec<u8>, usize),
}

impl Canned {
    fn json(v: &Value) -> Canned {
        Canned::raw(200, v.to_string())
    }

    fn raw(status: u16, body: impl Into<Vec<u8>>) -> Canned {
        Canned {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: Body2::Bytes(body.into()),
            delay: Duration::ZERO,
        }
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Clone)]
struct ServerState {
    answer: Arc<Mutex<Canned>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A local chat-completions server on 127.0.0.1:0; stopped when dropped.
struct Server {
    base_url: String,
    state: ServerState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(answer: Canned) -> Server {
        let state = ServerState {
            answer: Arc::new(Mutex::new(answer)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        }
    }

    fn set(&self, answer: Canned) {
        *self.state.answer.lock().expect("answer lock") = answer;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }
}

async fn handle(
    State(state): State<ServerState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    state.seen.lock().expect("seen lock").push(Seen {
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let answer = state.answer.lock().expect("answer lock").clone();
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = Response::builder().status(StatusCode::from_u16(answer.status).expect("status"));
    for (name, value) in &answer.headers {
        response = response.header(*name, HeaderValue::from_str(value).expect("header value"));
    }
    let body = match answer.body {
        Body2::Bytes(b) => Body::from(b),
        Body2::Chunked(b, size) => {
            let pieces: Vec<Result<Bytes, std::io::Error>> =
                b.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            Body::from_stream(futures::stream::iter(pieces))
        }
    };
    response.body(body).expect("response")
}

// ---------------------------------------------------------------- helpers

fn openai(base_url: &str, key: Option<&str>, timeout: Duration) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiSettings {
        base_url: base_url.to_owned(),
        api_key: key.map(ApiKey::new),
        model: "gpt-test".into(),
        timeout,
        max_tokens: 256,
        transport: Transport::Whole,
    })
    .expect("provider")
}

/// [`openai`] asking for streamed answers.
fn openai_streamed(base_url: &str, timeout: Duration) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiSettings {
        base_url: base_url.to_owned(),
        api_key: None,
        model: "gpt-test".into(),
        timeout,
        max_tokens: 256,
        transport: Transport::Streamed,
    })
    .expect("provider")
}

/// A server-sent event stream of `events` (each a `data:` payload), as a
/// chunked body in pieces of `piece` bytes (lines split across chunks).
fn sse_answer(events: &[String], piece: usize) -> Canned {
    let mut text = String::from(": keep-alive comment\n\n");
    for e in events {
        text.push_str(&format!("data: {e}\r\n\r\n"));
    }
    Canned {
        status: 200,
        headers: vec![("content-type", "text/event-stream".into())],
        body: Body2::Chunked(text.into_bytes(), piece),
        delay: Duration::ZERO,
    }
}

async fn complete(p: &dyn Provider, req: &CompletionRequest) -> Result<Completion, ProviderError> {
    tokio::time::timeout(HANG_GUARD, p.complete(req))
        .await
        .unwrap_or_else(|_| panic!("the provider hung for {HANG_GUARD:?}"))
}

fn simple_request() -> CompletionRequest {
    CompletionRequest {
        model: String::new(),
        messages: vec![
            Message::text(Role::System, "You are terse."),
            Message::text(Role::User, "Say hello."),
        ],
        tools: Vec::new(),
        max_tokens: 0,
    }
}

/// A conversation with one tool round trip, and one tool offered.
fn tool_request() -> CompletionRequest {
    CompletionRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![
            Message::text(Role::System, "You help with files."),
            Message::text(Role::User, "What do the notes say?"),
            Message {
                role: Role::Assistant,
                content: String::new(),
                tool_calls: vec![ToolCall {
                    id: "call_abc".into(),
                    name: "read_file".into(),
                    arguments: r#"{"path":"notes.txt"}"#.into(),
                }],
                tool_call_id: None,
            },
            Message {
                role: Role::Tool,
                content: "buy milk".into(),
                tool_calls: Vec::new(),
                tool_call_id: Some("call_abc".into()),
            },
        ],
        tools: vec![ToolSpec {
            name: "read_file".into(),
            description: "Read a file of the workspace.".into(),
            parameters: r#"{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}"#
                .into(),
        }],
        max_tokens: 64,
    }
}

fn text_answer(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    })
}

fn malformed(e: &Result<Completion, ProviderError>) -> String {
    match e {
        Err(ProviderError::Malformed(m)) => m.clone(),
        other => panic!("expected a malformed answer, got {other:?}"),
    }
}

fn one_line(e: &ProviderError) -> String {
    let text = e.to_string();
    assert!(!text.contains('\n'), "error is not one line: {text:?}");
    assert!(!text.is_empty());
    text
}

// ---------------------------------------------------------------- openai: good answers

#[tokio::test]
async fn text_answer_is_parsed_and_defaults_fill_the_request() {
    let server = Server::start(Canned::json(&text_answer("Hello."))).await;
    let p = openai(&server.base_url, None, Duration::from_secs(10));
    assert_eq!(p.name(), "openai");
    let c = complete(&p, &simple_request()).await.expect("completion");
    assert_eq!(
        c,
        Completion {
            content: "Hello.".into(),
            tool_calls: Vec::new(),
            finish_reason: "stop".into(),
            prompt_tokens: 12,
            completion_tokens: 3,
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "one attempt, no retries inside the provider");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(seen[0].authorization, None, "no key configured, none sent");
    // The request named no model and no max_tokens: the provider's own.
    assert_eq!(
        seen[0].body,
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello."}
            ],
            "max_tokens": 256
        })
    );
}

#[tokio::test]
async fn tool_call_answer_and_the_request_wire_shape() {
    let answer = json!({
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.txt\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"b.txt\"}"}}
                ]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 40, "completion_tokens": 20}
    });
    let server = Server::start(Canned::json(&answer)).await;
    let p = openai(&server.base_url, Some("sk-test-123"), Duration::from_secs(10));
    let c = complete(&p, &tool_request()).await.expect("completion");
    assert_eq!(c.content, "Let me look.");
    assert_eq!(c.finish_reason, "tool_calls");
    assert_eq!((c.prompt_tokens, c.completion_tokens), (40, 20));
    assert_eq!(
        c.tool_calls,
        vec![
            ToolCall {
                id: "call_1".into(),
                name: "read_file".into(),
                arguments: r#"{"path":"a.txt"}"#.into()
            },
            ToolCall {
                id: "call_2".into(),
                name: "read_file".into(),
                arguments: r#"{"path":"b.txt"}"#.into()
            },
        ]
    );
    let seen = server.seen();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(
        seen[0].body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You help with files."},
                {"role": "user", "content": "What do the notes say?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"notes.txt\"}"}}
                ]},
                {"role": "tool", "content": "buy milk", "tool_call_id": "call_abc"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "read_file",
                "description": "Read a file of the workspace.",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
            }}],
            "max_tokens": 64
        })
    );
    // The key is never in Debug output.
    let debug = format!("{p:?}");
    assert!(!debug.contains("sk-test-123"), "{debug}");
    assert!(debug.contains("<set>"), "{debug}");
}

#[tokio::test]
async fn null_content_and_missing_usage_are_empty_and_zero() {
    let answer = json!({
        "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}
        ]}, "finish_reason": "tool_calls"}]
    });
    let server = Server::start(Canned::json(&answer)).await;
    let p = openai(&server.base_url, None, Duration::from_secs(10));
    let c = complete(&p, &simple_request()).await.expect("completion");
    assert_eq!(c.content, "");
    assert_eq!(c.tool_calls.len(), 1);
    assert_eq!((c.prompt_tokens, c.completion_tokens), (0, 0));

    // No finish_reason, tool_calls null, usage null: still a completion.
    let answer = json!({"choices": [{"message": {"content": "ok", "tool_calls": null}}], "usage": null});
    server.set(Canned::json(&answer));
    let c = complete(&p, &simple_request()).await.expect("completion");
    assert_eq!((c.content.as_str(), c.finish_reason.as_str()), ("ok", ""));
}

#[tokio::test]
async fn a_tool_spec_that_is_not_json_is_refused_before_sending() {
    let server = Server::start(Canned::json(&text_answer("x"))).await;
    let p = openai(&server.base_url, None, Duration::from_secs(10));
    let mut req = tool_request();
    req.tools[0].parameters = "{not json".into();
    let e = complete(&p, &req).await.expect_err("refused");
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert!(
        one_line(&e).contains("tool \"read_file\": parameters is not JSON"),
        "{e}"
    );
    assert!(server.seen().is_empty(), "nothing sent");
}

// ---------------------------------------------------------------- openai: bad answers

#[tokio::test]
async fn garbage_and_truncated_bodies_are_malformed() {
    let server = Server::start(Canned::raw(200, "<html><body>Bad gateway</body></html>")).await;
    let p = openai(&server.base_url, None, Duration::from_secs(10));
    let r = complete(&p, &simple_request()).await;
    let m = malformed(&r);
    assert!(m.contains("the body is not JSON") && m.contains("<html>"), "{m}");
    assert!(!r.expect_err("err").retryable());

    let full = text_answer("Hello there.").to_string();
    server.set(Canned::raw(200, &full.as_bytes()[..full.len() / 2]));
    let r = complete(&p, &simple_request()).await;
    let m = malformed(&r);
    assert!(m.contains("the body ends before its JSON does"), "{m}");
    one_line(&r.expect_err("err"));

    server.set(Canned::raw(200, ""));
    let m = malformed(&complete(&p, &simple_request()).await);
    assert!(m.contains("ends before its JSON"), "{m}");
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let server = Server::start(Canned::raw(200, "")).await;
    let p = openai(&server.base_url, None, Duration::from_secs(10));
    let call =
        |args: Value| json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": args}});
    let cases: Vec<(Value, &str)> = vec![
        (json!([1, 2]), "the body is an array instead of a JSON object"),
        (json!({}), "choices is missing"),
        (json!({"choices": {}}), "choices is an object instead of an array"),
        (json!({"choices": []}), "choices is empty"),
        (
            json!({"choices": [3]}),
            "choices[0] is a number instead of an object",
        ),
        (json!({"choices": [{}]}), "choices[0].message is missing"),
        (
            json!({"choices": [{"message": {"content": 5}}]}),
            "choices[0].message.content is a number instead of a string or null",
        ),
        (
            json!({"choices": [{"message": {"content": "x", "tool_calls": "no"}}]}),
            "choices[0].message.tool_calls is a string instead of an array",
        ),
        (
            json!({"choices": [{"message": {"content": null, "tool_calls": [call(json!("{}")), call(json!({"a": 1}))]}}]}),
            "choices[0].message.tool_calls[1].function.arguments is an object instead of a string",
        ),
        (
            json!({"choices": [{"message": {"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}),
            "choices[0].message.tool_calls[0].id is missing",
        ),
        (
            json!({"choices": [{"message": {"tool_calls": [{"id": "c", "type": "code", "function": {}}]}}]}),
            "choices[0].message.tool_calls[0].type is \"code\" instead of \"function\"",
        ),
        (
            json!({"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}}]}),
            "choices[0].message.tool_calls[0].function.name is missing",
        ),
        (
            json!({"choices": [{"message": {"content": "x"}, "finish_reason": 1}]}),
            "choices[0].finish_reason is a number instead of a string",
        ),
        (
            json!({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "12"}}),
            "usage.prompt_tokens is a string instead of a number",
        ),
        (
            json!({"choices": [{"message": {"content": "x"}}], "usage": {"completion_tokens": -1}}),
            "usage.completion_tokens is -1, not a count of tokens",
        ),
        (
            json!({"error": {"message": "overloaded", "type": "server_error"}}),
            "the answer is an error instead of choices: overloaded (type server_error)",
        ),
    ];
    for (body, want) in cases {
        server.set(Canned::json(&body));
        let r = complete(&p, &simple_request()).await;
        let m = malformed(&r);
        assert!(m.contains(want), "for {body}: got {m:?}, wanted {want:?}");
        one_line(&r.expect_err("err"));
    }
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    let mut canned = Canned::raw(429, r#"{"error":{"message":"slow down"}}"#);
    canned.headers.push(("retry-after", "7".into()));
    let server = Server::start(canned).await;
    let p = openai(&server.base_url, None, Duration::from_secs(10));
    let e = complete(&p, &simple_request()).await.expect_err("429");
    assert_eq!(
        e,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert!(e.retryable());
    assert_eq!(one_line(&e), "rate limited (HTTP 429), retry after 7s");

    let mut canned = Canned::raw(429, "");
    canned.headers.push(("retry-after-ms", "1500".into()));
    canned.headers.push(("retry-after", "9".into()));
    server.set(canned);
    let e = complete(&p, &simple_request()).await.expect_err("429");
    assert_eq!(
        e,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_millis(1500))
        },
        "retry-after-ms wins"
    );

    server.set(Canned::raw(429, ""));
    let e = complete(&p, &simple_request()).await.expect_err("429");
    assert_eq!(e, ProviderError::RateLimited { retry_after: None });
    assert_eq!(one_line(&e), "rate limited (HTTP 429)");
}

#[test]
fn retry_after_reads_seconds_dates_and_milliseconds() {
    // Sun, 06 Nov 1994 08:49:37 GMT
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
    let at = |pairs: &[(&str, &'static str)]| {
        retry_after(
            |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
            now,
        )
    };
    assert_eq!(at(&[("retry-after", "120")]), Some(Duration::from_secs(120)));
    assert_eq!(
        at(&[("retry-after", "Sun, 06 Nov 1994 08:51:37 GMT")]),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        at(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]),
        Some(Duration::ZERO)
    );
    assert_eq!(
        at(&[("retry-after-ms", "20.5")]),
        Some(Duration::from_micros(20_500))
    );
    assert_eq!(
        at(&[("retry-after-ms", "soon"), ("retry-after", "3")]),
        Some(Duration::from_secs(3))
    );
    assert_eq!(at(&[("retry-after", "soon")]), None);
    assert_eq!(at(&[("retry-after-ms", "-5")]), None);
    assert_eq!(at(&[]), None);
}

#[tokio::test]
async fn server_errors_and_client_errors() {
    let server = Server::start(Canned::raw(500, "upstream exploded\n\n  at line 3")).await;
    let p = openai(&server.base_url, None, Duration::from_secs(10));
    let e = complete(&p, &simple_request()).await.expect_err("500");
    assert_eq!(
        e,
        ProviderError::Status {
            status: 500,
            body: "upstream exploded at line 3".into()
        }
    );
    assert!(e.retryable());
    assert_eq!(one_line(&e), "HTTP 500: upstream exploded at line 3");

    server.set(Canned::raw(
        400,
        r#"{"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
    ));
    let e = complete(&p, &simple_request()).await.expect_err("400");
    assert!(!e.retryable());
    assert_eq!(
        one_line(&e),
        "HTTP 400: The model `gpt-9` does not exist (type invalid_request_error, code model_not_found)"
    );

    // A long body is cut to about 500 characters.
    server.set(Canned::raw(502, "x".repeat(100_000)));
    let e = complete(&p, &simple_request()).await.expect_err("502");
    let ProviderError::Status { status: 502, body } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(body.chars().count(), 501, "500 characters and a mark");
    assert!(body.starts_with("xxx") && body.ends_with('…'), "{body}");
    assert!(e.retryable());

    // A redirect is not followed (it would turn the POST into a GET).
    let mut canned = Canned::raw(302, "");
    canned
        .headers
        .push(("location", "http://127.0.0.1:9/elsewhere".into()));
    server.set(canned);
    let e = complete(&p, &simple_request()).await.expect_err("302");
    assert!(matches!(e, ProviderError::Status { status: 302, .. }), "{e:?}");
    assert_eq!(one_line(&e), "HTTP 302: (empty body)");
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let mut canned = Canned::json(&text_answer("late"));
    canned.delay = Duration::from_secs(60);
    let server = Server::start(canned).await;
    let timeout = Duration::from_millis(300);
    let p = openai(&server.base_url, None, timeout);
    let e = complete(&p, &simple_request()).await.expect_err("timeout");
    assert_eq!(e, ProviderError::Timeout(timeout));
    assert!(e.retryable());
    assert_eq!(one_line(&e), "no answer within 300ms");
}

#[tokio::test]
async fn a_body_that_never_ends_times_out() {
    // Headers at once, then a body that stalls: the timeout covers the whole attempt.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        let _ = sock.read(&mut buf).await;
        let _ = sock
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"choi",
            )
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let timeout = Duration::from_millis(300);
    let p = openai(&format!("http://{addr}/v1"), None, timeout);
    let e = complete(&p, &simple_request()).await.expect_err("timeout");
    assert_eq!(e, ProviderError::Timeout(timeout));
    task.abort();
}

#[tokio::test]
async fn a_connection_closed_mid_body_is_a_connect_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        let _ = sock.read(&mut buf).await;
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"choices\":")
            .await;
        // Dropping the socket closes it 990 bytes early.
    });
    let p = openai(&format!("http://{addr}/v1"), None, Duration::from_secs(10));
    let e = complete(&p, &simple_request()).await.expect_err("cut");
    assert!(matches!(e, ProviderError::Connect(_)), "{e:?}");
    assert!(e.retryable());
    assert!(
        one_line(&e).contains("the connection broke while reading the answer"),
        "{e}"
    );
    task.abort();
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let p = openai(&format!("http://{addr}/v1"), None, Duration::from_secs(10));
    let e = complete(&p, &simple_request()).await.expect_err("refused");
    assert!(matches!(e, ProviderError::Connect(_)), "{e:?}");
    assert!(e.retryable());
    let text = one_line(&e);
    assert!(
        text.starts_with("cannot reach the provider: POST http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
}

#[tokio::test]
async fn oversized_answers_are_malformed() {
    // 9 MiB of valid JSON: with a Content-Length, refused before reading.
    let big = json!({"choices": [{"message": {"content": "x".repeat(9 << 20)}}]}).to_string();
    let server = Server::start(Canned::raw(200, big.clone())).await;
    let p = openai(&server.base_url, None, Duration::from_secs(30));
    let r = complete(&p, &simple_request()).await;
    assert_eq!(malformed(&r), "the answer is larger than 8 MiB");
    // Chunked (no Content-Length): counted while reading.
    let mut canned = Canned::raw(200, "");
    canned.body = Body2::Chunked(big.into_bytes(), 64 << 10);
    server.set(canned);
    let r = complete(&p, &simple_request()).await;
    assert_eq!(malformed(&r), "the answer is larger than 8 MiB");
    // Just under the bound is fine.
    let under = json!({"choices": [{"message": {"content": "y".repeat((8 << 20) - 100)}}]}).to_string();
    let mut canned = Canned::raw(200, "");
    canned.body = Body2::Chunked(under.into_bytes(), 64 << 10);
    server.set(canned);
    let c = complete(&p, &simple_request()).await.expect("under the bound");
    assert_eq!(c.content.len(), (8 << 20) - 100);
}

#[test]
fn parse_completion_is_usable_on_its_own() {
    let c = parse_completion(br#"{"choices":[{"message":{"content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#)
        .expect("parsed");
    assert_eq!(c.content, "I can't help with that.");
}

// ---------------------------------------------------------------- openai: streaming

/// The two-tool-call answer of `tool_call_answer_and_the_request_wire_shape`.
fn two_calls_whole() -> Value {
    json!({
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a.txt\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"b.txt\"}"}}
                ]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 40, "completion_tokens": 20}
    })
}

/// The same answer as a stream's chunks, `[DONE]` last.
fn two_calls_streamed() -> Vec<String> {
    let delta = |d: Value| {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": null}]}).to_string()
    };
    vec![
        delta(json!({"role": "assistant", "content": ""})),
        delta(json!({"content": "Let "})),
        delta(json!({"content": "me look."})),
        delta(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": ""}}]}),
        ),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"pa"}}]})),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "th\":\"a.txt\"}"}}]})),
        delta(
            json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"b.txt\"}"}}]}),
        ),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).to_string(),
        json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}})
            .to_string(),
        "[DONE]".to_owned(),
    ]
}

#[tokio::test]
async fn a_streamed_answer_is_the_completion_the_whole_one_is() {
    let server = Server::start(Canned::json(&two_calls_whole())).await;
    let whole = complete(
        &openai(&server.base_url, None, Duration::from_secs(10)),
        &tool_request(),
    )
    .await
    .expect("whole");
    // Lines split across 7-byte chunks, CRLF line ends, a comment first.
    server.set(sse_answer(&two_calls_streamed(), 7));
    let p = openai_streamed(&server.base_url, Duration::from_secs(10));
    let streamed = complete(&p, &tool_request()).await.expect("streamed");
    assert_eq!(streamed, whole);
    assert_eq!(streamed.tool_calls.len(), 2);
    assert_eq!(streamed.tool_calls[0].arguments, r#"{"path":"a.txt"}"#);
    // Asked for as a stream with usage; the whole request asks for neither.
    let seen = server.seen();
    assert_eq!(seen[0].body.get("stream"), None);
    assert_eq!(seen[1].body["stream"], true);
    assert_eq!(seen[1].body["stream_options"], json!({"include_usage": true}));
    assert_eq!(seen[1].body["messages"], seen[0].body["messages"]);
    // A server that answers a stream request whole is read whole.
    server.set(Canned::json(&two_calls_whole()));
    assert_eq!(complete(&p, &tool_request()).await.expect("whole answer"), whole);
}

#[tokio::test]
async fn a_stream_cut_mid_way_is_a_retryable_connect_error() {
    // Closed cleanly, but before `[DONE]`.
    let mut events = two_calls_streamed();
    events.truncate(4);
    let server = Server::start(sse_answer(&events, 16)).await;
    let p = openai_streamed(&server.base_url, Duration::from_secs(10));
    let e = complete(&p, &simple_request()).await.expect_err("cut");
    assert!(matches!(e, ProviderError::Connect(_)), "{e:?}");
    assert!(e.retryable());
    assert!(
        one_line(&e).contains("the stream ended before its `data: [DONE]` after 4 events"),
        "{e}"
    );
    // The connection broken in the middle of a chunked body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let first = format!("data: {}\n\n", two_calls_streamed()[1]);
    let task = tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        let _ = sock.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = format!("{:x}\r\n{first}\r\n", first.len());
        let _ = sock.write_all(format!("{head}{chunk}").as_bytes()).await;
        let _ = sock.write_all(b"100\r\ndata: {\"choi").await;
        // Dropping the socket breaks the stream mid-chunk.
    });
    let p = openai_streamed(&format!("http://{addr}/v1"), Duration::from_secs(10));
    let e = complete(&p, &simple_request()).await.expect_err("broken");
    assert!(matches!(e, ProviderError::Connect(_)), "{e:?}");
    assert!(e.retryable());
    assert!(
        one_line(&e).contains("the connection broke while reading the stream, after 1 events"),
        "{e}"
    );
    task.abort();
}

/// A sink keeping the facts a drive records.
#[derive(Default)]
struct Facts(Vec<stele_journal::EventBody>);

impl stele_engine::reasoning::Sink for Facts {
    fn record<'a>(
        &'a mut self,
        facts: Vec<stele_journal::EventBody>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<stele_journal::Seq>, String>> + Send + 'a>,
    > {
        self.0.extend(facts);
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[tokio::test]
async fn a_cut_stream_is_journaled_and_retried_like_any_failed_attempt() {
    let mut events = two_calls_streamed();
    events.truncate(3);
    let server = Server::start(sse_answer(&events, 16)).await;
    let ws = tempfile::tempdir().expect("ws");
    let driver = stele_engine::reasoning::Driver {
        provider: Arc::new(openai_streamed(&server.base_url, Duration::from_secs(10))),
        gate: stele_engine::policy::PolicyGate::deny_all().into(),
        tools: Arc::new(stele_engine::tools::ToolBox {
            workspace: ws.path().to_owned(),
            memory_mb: 64,
            cpu_cores: 0.5,
            timeout: Duration::from_secs(10),
            launcher: stele_engine::process::Launcher {
                program: env!("CARGO_BIN_EXE_stele").into(),
            },
            confinement: stele_engine::process::detect_confinement(),
            sandbox: stele_engine::tools::CommandSandbox::Native,
        }),
        agent: "tester".into(),
        priority: "normal".into(),
        knowledge: None,
    };
    let mut spec = stele_engine::orga::RunSpec::new("run-1", "tester", "gpt-test");
    spec.max_attempts = 2;
    let mut sink = Facts::default();
    let stop = tokio::time::timeout(
        HANG_GUARD,
        driver.drive(
            stele_engine::orga::AgentLoop::start(spec, "hello".into(), None),
            &mut sink,
        ),
    )
    .await
    .expect("not hung")
    .expect("drive");
    let stele_engine::reasoning::Stop::Finished(f) = stop else {
        panic!("parked")
    };
    assert_eq!(f.outcome, "failed");
    let failed: Vec<(u32, String)> = sink
        .0
        .iter()
        .filter_map(|e| match e {
            stele_journal::EventBody::CompletionFailed { attempt, error, .. } => {
                Some((*attempt, error.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (i, (attempt, error)) in failed.iter().enumerate() {
        assert_eq!(*attempt, u32::try_from(i + 1).expect("small"));
        assert!(
            error.contains("the stream ended before its `data: [DONE]` after 3 events"),
            "{error}"
        );
    }
    assert_eq!(server.seen().len(), 2, "one request per attempt");
}

#[tokio::test]
async fn a_wrong_stream_chunk_names_its_event_and_field() {
    let server = Server::start(sse_answer(&["{}".to_owned()], 64)).await;
    let p = openai_streamed(&server.base_url, Duration::from_secs(10));
    for (events, want) in [
        (
            vec![r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"name":"x"}}]}}]}"#],
            "stream event 1: choices[0].delta.tool_calls[0].index is missing",
        ),
        (
            vec![
                r#"{"choices":[]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":7}}]}"#,
            ],
            "stream event 2: choices[0].delta.content is a number instead of a string or null",
        ),
        (vec!["not json"], "stream event 1: the data is not JSON"),
        (
            vec![r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1}]}}]}"#],
            "tool_calls[0].index is 1, but only 0 tool calls were begun",
        ),
        (
            vec![
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
                "[DONE]",
            ],
            "the stream's tool call 0 has no id",
        ),
        (
            vec![r#"{"error":{"message":"overloaded"}}"#],
            "stream event 1: the stream carried an error",
        ),
    ] {
        let events: Vec<String> = events.into_iter().map(str::to_owned).collect();
        server.set(sse_answer(&events, 64));
        let m = malformed(&complete(&p, &simple_request()).await);
        assert!(m.contains(want), "{events:?}: got {m:?}, wanted {want:?}");
    }
}

// ---------------------------------------------------------------- openai: configuration

#[test]
fn a_missing_key_names_the_variable_unless_the_server_is_local() {
    let config = InferenceConfig {
        provider: ProviderKind::Openai,
        api_key_env: "STELE_TEST_NO_SUCH_KEY".into(),
        ..InferenceConfig::default()
    };
    let e = OpenAiProvider::from_config_env(&config, |_| None).expect_err("no key");
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    let text = one_line(&e);
    assert!(
        text.contains("STELE_TEST_NO_SUCH_KEY") && text.contains("https://api.openai.com/v1"),
        "{text}"
    );
    // An empty variable is no key either.
    let e = OpenAiProvider::from_config_env(&config, |_| Some("  ".into())).expect_err("empty key");
    assert!(one_line(&e).contains("STELE_TEST_NO_SUCH_KEY"));
    // With the key: fine, and the key does not show.
    let p = OpenAiProvider::from_config_env(&config, |name| {
        (name == "STELE_TEST_NO_SUCH_KEY").then(|| "sk-secret-value".to_owned())
    })
    .expect("with key");
    assert_eq!(p.endpoint(), "https://api.openai.com/v1/chat/completions");
    assert!(!format!("{p:?}").contains("sk-secret-value"));
    // Local servers need no key.
    for base_url in [
        "http://127.0.0.1:8080/v1",
        "http://localhost:1234/v1/",
        "http://[::1]:9/v1",
        "http://127.1.2.3/v1",
    ] {
        let local = InferenceConfig {
            base_url: base_url.into(),
            ..config.clone()
        };
        let p =
            OpenAiProvider::from_config_env(&local, |_| None).unwrap_or_else(|e| panic!("{base_url}: {e}"));
        assert!(p.endpoint().ends_with("/v1/chat/completions"), "{}", p.endpoint());
    }
    // Bad URLs are configuration errors.
    let bad = OpenAiSettings {
        base_url: "ftp://example.com".into(),
        api_key: Some(ApiKey::new("k")),
        model: "m".into(),
        timeout: Duration::from_secs(1),
        max_tokens: 0,
        transport: Transport::Whole,
    };
    let e = OpenAiProvider::new(bad).expect_err("ftp");
    assert!(one_line(&e).contains("not an http:// or https:// URL"), "{e}");
}

// ---------------------------------------------------------------- scripted

/// A conversation at `step` (that many assistant messages, each answered by
/// a tool message), starting with `input`.
fn conversation(input: &str, step: usize) -> CompletionRequest {
    let mut messages = vec![
        Message::text(Role::System, "You help with files."),
        Message::text(Role::User, input),
    ];
    for k in 0..step {
        messages.push(Message {
            role: Role::Assistant,
            content: format!("step {k}"),
            tool_calls: vec![ToolCall {
                id: format!("call-{k}-0"),
                name: "read_file".into(),
                arguments: "{}".into(),
            }],
            tool_call_id: None,
        });
        messages.push(Message {
            role: Role::Tool,
            content: "result".into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(format!("call-{k}-0")),
        });
    }
    CompletionRequest {
        model: "scripted".into(),
        messages,
        tools: Vec::new(),
        max_tokens: 0,
    }
}

#[tokio::test]
async fn scripted_answers_by_step() {
    let p = ScriptedProvider::load(&script("test_steps.json")).expect("load");
    assert_eq!((p.name(), p.model()), ("scripted", "scripted-test"));

    let req0 = conversation("Summarize the notes.", 0);
    let c = complete(&p, &req0).await.expect("step 0");
    assert_eq!(c.content, "Looking at the file.");
    assert_eq!(c.finish_reason, "tool_calls");
    assert_eq!(
        c.tool_calls,
        vec![
            ToolCall {
                id: "call-0-0".into(),
                name: "read_file".into(),
                arguments: r#"{"path":"notes.txt"}"#.into()
            },
            ToolCall {
                id: "call-0-1".into(),
                name: "list_dir".into(),
                arguments: "{}".into()
            },
        ]
    );
    // Default token counts: characters / 4, rounded up.
    let prompt_chars = "You help with files.".len() + "Summarize the notes.".len();
    assert_eq!(c.prompt_tokens as usize, prompt_chars.div_ceil(4));
    let produced = "Looking at the file.".len() + "read_file".len() + 20 + "list_dir".len() + 2;
    assert_eq!(c.completion_tokens as usize, produced.div_ceil(4));
    // A pure function of the request.
    assert_eq!(complete(&p, &req0).await.expect("again"), c);

    // Arguments given as a string are sent as is, even when not JSON.
    let c = complete(&p, &conversation("Summarize the notes.", 1))
        .await
        .expect("step 1");
    assert_eq!(c.tool_calls[0].id, "call-1-0");
    assert_eq!(c.tool_calls[0].arguments, r#"{"text": "#);

    let c = complete(&p, &conversation("Summarize the notes.", 2))
        .await
        .expect("step 2");
    assert_eq!(
        (c.content.as_str(), c.finish_reason.as_str()),
        ("final answer", "stop")
    );
    assert_eq!((c.prompt_tokens, c.completion_tokens), (7, 2));

    let e = complete(&p, &conversation("Summarize the notes.", 3))
        .await
        .expect_err("exhausted");
    assert_eq!(e, ProviderError::ScriptExhausted(3));
    assert!(!e.retryable());
    assert_eq!(one_line(&e), "the script has no answer for step 3");

    // by_input: the first user message selects another list.
    let c = complete(&p, &conversation("How is the weather today?", 0))
        .await
        .expect("weather");
    assert_eq!(c.content, "Sunny.");
    let e = complete(&p, &conversation("How is the weather today?", 1))
        .await
        .expect_err("exhausted");
    assert_eq!(e, ProviderError::ScriptExhausted(1));
}

#[tokio::test]
async fn scripted_errors_and_retries() {
    let config = InferenceConfig {
        script: script("test_errors.json"),
        timeout: Duration::from_secs(5),
        ..InferenceConfig::default()
    };
    let p = ScriptedProvider::from_config(&config).expect("load");
    let req = conversation("first run", 0);
    // Step 0: rate limited twice (per distinct request), then answered.
    for _ in 0..2 {
        let e = complete(&p, &req).await.expect_err("rate limited");
        assert_eq!(
            e,
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            }
        );
    }
    assert_eq!(
        complete(&p, &req).await.expect("third").content,
        "answered after two rate limits"
    );
    assert_eq!(
        complete(&p, &req).await.expect("fourth").content,
        "answered after two rate limits"
    );
    // Another run's request is counted on its own.
    let other = conversation("second run", 0);
    assert!(complete(&p, &other).await.is_err());

    // Step 1: one timeout (the configured one), then the answer.
    let req = conversation("first run", 1);
    assert_eq!(
        complete(&p, &req).await,
        Err(ProviderError::Timeout(Duration::from_secs(5)))
    );
    assert_eq!(
        complete(&p, &req).await.expect("retry").content,
        "answered after a timeout"
    );

    // Steps 2–6 fail on every attempt.
    let always: Vec<(usize, ProviderError, bool)> = vec![
        (
            2,
            ProviderError::Status {
                status: 503,
                body: "scripted failure".into(),
            },
            true,
        ),
        (
            3,
            ProviderError::Malformed("scripted malformed answer".into()),
            false,
        ),
        (
            4,
            ProviderError::Connect("scripted connection failure".into()),
            true,
        ),
        (5, ProviderError::RateLimited { retry_after: None }, true),
        (
            6,
            ProviderError::Status {
                status: 400,
                body: "scripted failure".into(),
            },
            false,
        ),
    ];
    for (step, want, retryable) in always {
        for _ in 0..3 {
            let e = complete(&p, &conversation("first run", step))
                .await
                .expect_err("fails");
            assert_eq!(e, want, "step {step}");
            assert_eq!(e.retryable(), retryable, "step {step}");
            one_line(&e);
        }
    }
    assert_eq!(
        complete(&p, &conversation("first run", 7)).await,
        Err(ProviderError::ScriptExhausted(7))
    );
}

#[test]
fn bad_scripts_name_file_and_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, &str, &str)> = vec![
        (
            "typo.json",
            "{\"answers\": [\n  {\"content\": \"a\"},\n  {\"contnet\": \"b\"}\n]}",
            ":3:12: unknown field `contnet`",
        ),
        (
            "kind.json",
            "{\"answers\": [{\"error\": \"explode\"}]}",
            ":1:33: unknown error \"explode\"; expected rate_limited",
        ),
        (
            "status.json",
            "{\"answers\": [{\"error\": \"status:200\"}]}",
            "the status must be 400 to 599",
        ),
        (
            "times.json",
            "{\"answers\": [{\"content\": \"a\", \"times\": 2}]}",
            "\"times\" needs an \"error\"",
        ),
        (
            "args.json",
            "{\"answers\": [{\"tool_calls\": [{\"name\": \"f\", \"arguments\": [1]}]}]}",
            "arguments must be a JSON object, or a string",
        ),
        (
            "comma.json",
            "{\"answers\": [\n {\"content\": \"a\"},\n]}",
            ":3:1: trailing comma",
        ),
        ("cut.json", "{\"answers\": [{\"content\": \"a\"", ":1:"),
        ("empty.json", "{\"model\": \"m\"}", "the script has no answers"),
        ("top.json", "\n  []", ":2:3: a script is a JSON object"),
        ("blank.json", "", ":1:1: EOF while parsing"),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let e = ScriptedProvider::load(&path).expect_err(name);
        assert!(matches!(e, ProviderError::Config(_)), "{name}: {e:?}");
        let msg = one_line(&e);
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
        assert!(msg.contains(want), "{name}: got {msg:?}, wanted {want:?}");
    }
    let missing = dir.path().join("missing.json");
    let e = ScriptedProvider::load(&missing).expect_err("missing");
    let msg = one_line(&e);
    assert!(
        msg.contains("cannot read script") && msg.contains("missing.json"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_demo_script_reads_is_denied_asks_approval_then_answers() {
    let config = InferenceConfig {
        script: script("demo.json"),
        ..InferenceConfig::default()
    };
    let p = provider_from_config(&config).expect("demo provider");
    assert_eq!(p.name(), "scripted");
    let mut tools = Vec::new();
    for step in 0..4 {
        let c = complete(p.as_ref(), &conversation("Summarize the workspace notes.", step))
            .await
            .expect("demo step");
        assert!(!c.content.is_empty());
        for call in &c.tool_calls {
            let args: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
            assert!(args.is_object());
        }
        tools.push(
            c.tool_calls
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    assert_eq!(tools, ["read_file", "run_command", "write_file", ""]);
    assert_eq!(
        complete(p.as_ref(), &conversation("x", 4)).await,
        Err(ProviderError::ScriptExhausted(4))
    );
}

// ---------------------------------------------------------------- [inference]

#[test]
fn inference_config_defaults_file_and_env() {
    let d = InferenceConfig::default();
    assert_eq!(d.provider, ProviderKind::Scripted);
    assert_eq!(d.base_url, "https://api.openai.com/v1");
    assert_eq!(d.api_key_env, "OPENAI_API_KEY");
    assert_eq!(d.model, "gpt-4o-mini");
    assert_eq!(d.timeout, Duration::from_secs(60));
    assert_eq!(d.max_retries, 3);
    assert_eq!(d.script, PathBuf::from("fixtures/scripts/demo.json"));
    assert_eq!(d.max_tokens, 1024);
    let path = Path::new("stele.toml");
    assert_eq!(Config::parse(path, "", &[]).expect("empty").inference, d);

    let text = "[inference]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1/\"\napi_key_env = \"MY_KEY\"\nmodel = \"llama3\"\ntimeout = \"5s\"\nmax_retries = 0\nscript = \"s.json\"\nmax_tokens = 77\n";
    let c = Config::parse(path, text, &[]).expect("file").inference;
    assert_eq!(
        c,
        InferenceConfig {
            provider: ProviderKind::Openai,
            base_url: "http://127.0.0.1:8000/v1".into(),
            api_key_env: "MY_KEY".into(),
            model: "llama3".into(),
            timeout: Duration::from_secs(5),
            max_retries: 0,
            script: PathBuf::from("s.json"),
            max_tokens: 77,
            stream: false,
        }
    );
    assert!(
        Config::parse(path, "[inference]\nstream = true\n", &[])
            .expect("stream")
            .inference
            .stream
    );

    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let c = Config::parse(
        path,
        "",
        &env(&[
            ("STELE_INFERENCE_PROVIDER", "openai"),
            ("STELE_INFERENCE_API_KEY_ENV", "OTHER_KEY"),
            ("STELE_INFERENCE_TIMEOUT", "250ms"),
            ("STELE_INFERENCE_MAX_TOKENS", "9"),
        ]),
    )
    .expect("env")
    .inference;
    assert_eq!(c.provider, ProviderKind::Openai);
    assert_eq!(c.api_key_env, "OTHER_KEY");
    assert_eq!(c.timeout, Duration::from_millis(250));
    assert_eq!(c.max_tokens, 9);

    // Errors carry the position (file) or the variable (env).
    let bad: Vec<(&str, &str)> = vec![
        (
            "[inference]\nprovider = \"anthropic\"\n",
            "stele.toml:2:12: unknown variant `anthropic`",
        ),
        (
            "[inference]\nbase_url = \"ftp://x\"\n",
            "stele.toml:2:12: base_url \"ftp://x\" is not an http:// or https:// URL",
        ),
        (
            "[inference]\nbase_url = \"https://u:p@example.com/v1\"\n",
            "holds credentials",
        ),
        (
            "[inference]\ntimeout = \"0s\"\n",
            "a duration of zero is not allowed here",
        ),
        (
            "[inference]\nmax_retries = 1000\n",
            "max_retries must be 0 to 100, not 1000",
        ),
        ("[inference]\nmodel = \"\"\n", "model must not be empty"),
        (
            "[inference]\napi_kee_env = \"X\"\n",
            "stele.toml:2:1: unknown field `api_kee_env`",
        ),
    ];
    for (text, want) in bad {
        let e = Config::parse(path, text, &[]).expect_err(text).to_string();
        assert!(e.contains(want), "{text:?}: got {e:?}, wanted {want:?}");
    }
    // A key pasted where its variable's name belongs is refused, and not echoed.
    let e = Config::parse(path, "[inference]\napi_key_env = \"sk-proj-AbC123\"\n", &[])
        .expect_err("a key")
        .to_string();
    assert!(e.contains("stele.toml:2:15: api_key_env must be the NAME"), "{e}");
    assert!(!e.contains("sk-proj-AbC123"), "{e}");
    let e = Config::parse(path, "", &env(&[("STELE_INFERENCE_PROVIDER", "nope")]))
        .expect_err("env")
        .to_string();
    assert!(e.starts_with("environment STELE_INFERENCE_PROVIDER:"), "{e}");
}
