//! The OpenAI chat-completions provider: one `POST <base_url>/chat/completions`
//! per [`Provider::complete`] call, over HTTP/1.1 (rustls on ring for
//! https), the answer whole or (`[inference] stream = true`) streamed as
//! server-sent events and assembled into the same [`Completion`].
//!
//! What lives here: the wire shape of the request (messages with
//! `tool_calls` / `tool_call_id`, tools with their JSON Schema), the strict
//! parse of the answer (every wrong field named by its path, e.g.
//! `choices[0].message.tool_calls[1].function.arguments is not a string`),
//! the mapping of transport failures onto [`ProviderError`] (connect,
//! timeout of the whole attempt, 429 with `Retry-After` / `retry-after-ms`,
//! other statuses with the start of their body), and the bound on the size
//! of an answer (a stream's bytes count the same).
//!
//! A stream (`stream: true`, `stream_options.include_usage`) is a sequence
//! of `data: <chunk JSON>` events ending with `data: [DONE]`: content and
//! refusal deltas are concatenated, tool-call deltas are joined by their
//! `index` (id and name from the first delta that has them, arguments
//! appended), `finish_reason` and `usage` are taken where they come. The
//! result is the completion the whole answer would have given, so what is
//! journaled does not depend on the transport. A stream cut before its
//! `[DONE]` — the connection broken, or closed early — is a
//! [`ProviderError::Connect`] naming how many events came (retryable, and
//! journaled as every failed attempt is); a wrong chunk names its field
//! (`stream event 3: choices[0].delta.tool_calls[0].index is missing`).
//!
//! What does not: retries and backoff (the reasoning loop owns them and
//! journals each failed attempt), journaling, replay. The API key is read
//! once from the environment variable named in the configuration, sent only
//! as a bearer token header marked sensitive, and never printed (`Debug`
//! says only whether one is set).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::Serialize;
use serde_json::Value;

use crate::config::InferenceConfig;
use crate::llm::{Completion, CompletionFuture, CompletionRequest, Provider, ProviderError, Role, ToolCall};

/// Largest answer body read (8 MiB). A chat completion is a few KiB; this
/// bounds memory against a broken or hostile server, and an answer past it
/// is [`ProviderError::Malformed`].
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Bytes of an error answer (non-2xx) read: enough for any JSON error
/// object; the rest is not waited for.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Characters of an error body kept in [`ProviderError::Status`].
pub const MAX_ERROR_BODY_CHARS: usize = 500;

/// Characters of a non-JSON body quoted in a [`ProviderError::Malformed`].
const QUOTE_CHARS: usize = 60;

/// An API key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    #[must_use]
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// What an [`OpenAiProvider`] is built from (see
/// [`OpenAiProvider::from_config`] for the usual way).
#[derive(Clone, Debug)]
pub struct OpenAiSettings {
    /// The API root, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The key; required unless `base_url` is a loopback address.
    pub api_key: Option<ApiKey>,
    /// The model used when a request names none.
    pub model: String,
    /// How long one attempt (connect, send, the whole answer) may take.
    pub timeout: Duration,
    /// `max_tokens` sent when a request sets 0 (0 here too: not sent).
    pub max_tokens: u32,
    /// Whole answers, or streamed ones.
    pub transport: Transport,
}

/// How an answer comes: whole, or as a stream of server-sent events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// One JSON body.
    #[default]
    Whole,
    /// `stream: true`: `data:` events assembled into the completion.
    Streamed,
}

/// The OpenAI chat-completions provider.
pub struct OpenAiProvider {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    api_key: Option<ApiKey>,
    model: String,
    timeout: Duration,
    max_tokens: u32,
    transport: Transport,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_tokens", &self.max_tokens)
            .field("transport", &self.transport)
            .field(
                "api_key",
                &if self.api_key.is_some() { "<set>" } else { "<none>" },
            )
            .finish()
    }
}

impl OpenAiProvider {
    /// From `[inference]`, the key read from the process environment
    /// variable `api_key_env`.
    ///
    /// # Errors
    /// [`ProviderError::Config`]: a bad base URL, or no key (naming the
    /// variable) for a server that is not on a loopback address.
    pub fn from_config(config: &InferenceConfig) -> Result<OpenAiProvider, ProviderError> {
        OpenAiProvider::from_config_env(config, |name| std::env::var(name).ok())
    }

    /// As [`OpenAiProvider::from_config`], with `env` looking variables up
    /// (tests pass their own).
    ///
    /// # Errors
    /// As [`OpenAiProvider::from_config`].
    pub fn from_config_env(
        config: &InferenceConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<OpenAiProvider, ProviderError> {
        let api_key = env(&config.api_key_env)
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .map(ApiKey);
        let endpoint = endpoint(&config.base_url)?;
        if api_key.is_none() && !is_loopback(&endpoint) {
            return Err(ProviderError::Config(format!(
                "no API key for {}: the environment variable {} ([inference] api_key_env) is not set or empty",
                config.base_url, config.api_key_env
            )));
        }
        OpenAiProvider::new(OpenAiSettings {
            base_url: config.base_url.clone(),
            api_key,
            model: config.model.clone(),
            timeout: config.timeout,
            max_tokens: config.max_tokens,
            transport: if config.stream {
                Transport::Streamed
            } else {
                Transport::Whole
            },
        })
    }

    /// From explicit settings.
    ///
    /// # Errors
    /// [`ProviderError::Config`]: a bad base URL, no key for a server that
    /// is not on a loopback address, a zero timeout, or an HTTP client that
    /// cannot be built.
    pub fn new(settings: OpenAiSettings) -> Result<OpenAiProvider, ProviderError> {
        let endpoint = endpoint(&settings.base_url)?;
        let loopback = is_loopback(&endpoint);
        if settings.api_key.is_none() && !loopback {
            return Err(ProviderError::Config(format!(
                "no API key for {}; only a loopback server may be used without one",
                settings.base_url
            )));
        }
        if settings.timeout.is_zero() {
            return Err(ProviderError::Config("the timeout must not be zero".into()));
        }
        // reqwest builds its TLS configuration with the process's default
        // rustls crypto provider; install ring's unless one is installed
        // (an error here only means another thread won the race).
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("stele/", env!("CARGO_PKG_VERSION")))
            // A redirect would turn the POST into a GET elsewhere: report it.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30));
        if loopback {
            // A local server is reached directly, whatever HTTP_PROXY says.
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {}", chain(&e))))?;
        Ok(OpenAiProvider {
            client,
            endpoint,
            api_key: settings.api_key,
            model: settings.model,
            timeout: settings.timeout,
            max_tokens: settings.max_tokens,
            transport: settings.transport,
        })
    }

    /// Where requests go (`<base_url>/chat/completions`).
    #[must_use]
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The request body for `request`, as sent (see the module doc).
    ///
    /// # Errors
    /// [`ProviderError::Config`] when a tool's `parameters` is not a JSON
    /// object.
    pub fn request_body(&self, request: &CompletionRequest) -> Result<Vec<u8>, ProviderError> {
        let model = if request.model.is_empty() {
            &self.model
        } else {
            &request.model
        };
        let max_tokens = if request.max_tokens == 0 {
            self.max_tokens
        } else {
            request.max_tokens
        };
        let wire = WireRequest {
            model,
            messages: request.messages.iter().map(WireMessage::from).collect(),
            tools: request
                .tools
                .iter()
                .map(|t| {
                    Ok(WireTool {
                        kind: "function",
                        function: WireToolDef {
                            name: &t.name,
                            description: &t.description,
                            parameters: tool_parameters(&t.name, &t.parameters)?,
                        },
                    })
                })
                .collect::<Result<_, ProviderError>>()?,
            max_tokens: (max_tokens > 0).then_some(max_tokens),
            stream: (self.transport == Transport::Streamed).then_some(true),
            stream_options: (self.transport == Transport::Streamed)
                .then_some(StreamOptions { include_usage: true }),
        };
        serde_json::to_vec(&wire)
            .map_err(|e| ProviderError::Config(format!("cannot encode the request: {e}")))
    }

    async fn attempt(&self, body: Vec<u8>) -> Result<Completion, ProviderError> {
        let mut req = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            // bearer_auth marks the header sensitive (never in debug output).
            req = req.bearer_auth(key.expose());
        }
        let response = req
            .send()
            .await
            .map_err(|e| send_error(&self.endpoint, self.timeout, &e))?;
        let status = response.status();
        if status.as_u16() == 429 {
            return Err(ProviderError::RateLimited {
                retry_after: retry_after(|name| header_text(response.headers(), name), now()),
            });
        }
        if !status.is_success() {
            let (body, _) = read_bounded(response, MAX_ERROR_BODY_BYTES).await?;
            return Err(ProviderError::Status {
                status: status.as_u16(),
                body: error_summary(&body),
            });
        }
        let too_large = || {
            ProviderError::Malformed(format!(
                "the answer is larger than {} MiB",
                MAX_RESPONSE_BYTES >> 20
            ))
        };
        // A declared length past the bound is refused before reading.
        if response
            .content_length()
            .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > MAX_RESPONSE_BYTES))
        {
            return Err(too_large());
        }
        // A server that answers a stream request whole is read whole.
        let event_stream = header_text(response.headers(), "content-type")
            .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        if self.transport == Transport::Streamed && event_stream {
            return read_stream(response).await;
        }
        let (body, complete) = read_bounded(response, MAX_RESPONSE_BYTES).await?;
        if !complete {
            return Err(too_large());
        }
        parse_completion(&body)
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    fn complete<'a>(&'a self, request: &'a CompletionRequest) -> CompletionFuture<'a> {
        Box::pin(async move {
            let body = self.request_body(request)?;
            match tokio::time::timeout(self.timeout, self.attempt(body)).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Timeout(self.timeout)),
            }
        })
    }
}

/// The wall clock, for an HTTP-date in `Retry-After`.
// An effect runner: it reads the clock to turn a date into a wait.
#[allow(clippy::disallowed_methods)]
fn now() -> SystemTime {
    SystemTime::now()
}

fn endpoint(base_url: &str) -> Result<reqwest::Url, ProviderError> {
    let text = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let url = reqwest::Url::parse(&text)
        .map_err(|e| ProviderError::Config(format!("base_url {base_url:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ProviderError::Config(format!(
            "base_url {base_url:?} is not an http:// or https:// URL with a host"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ProviderError::Config(format!(
            "base_url for {} holds credentials; give the key through api_key_env",
            url.host_str().unwrap_or_default()
        )));
    }
    Ok(url)
}

/// Whether `url` points at this machine (127.0.0.0/8, ::1, `localhost`).
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost"),
    }
}

fn tool_parameters(tool: &str, text: &str) -> Result<Value, ProviderError> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({"type": "object", "properties": {}}));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ProviderError::Config(format!("tool {tool:?}: parameters is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ProviderError::Config(format!(
            "tool {tool:?}: parameters is not a JSON object (a JSON Schema)"
        )));
    }
    Ok(v)
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    /// The last chunk carries `usage` (empty `choices`).
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    /// `null` for an assistant message that only calls tools.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> From<&'a crate::llm::Message> for WireMessage<'a> {
    fn from(m: &'a crate::llm::Message) -> Self {
        let only_calls = m.role == Role::Assistant && m.content.is_empty() && !m.tool_calls.is_empty();
        WireMessage {
            role: m.role,
            content: (!only_calls).then_some(m.content.as_str()),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| WireToolCall {
                    id: &c.id,
                    kind: "function",
                    function: WireFunction {
                        name: &c.name,
                        arguments: &c.arguments,
                    },
                })
                .collect(),
            tool_call_id: m.tool_call_id.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireToolDef<'a>,
}

#[derive(Serialize)]
struct WireToolDef<'a> {
    name: &'a str,
    description: &'a str,
    parameters: Value,
}

/// Reads at most `limit` bytes of the body; `false` when there was more.
async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        ProviderError::Connect(format!(
            "the connection broke while reading the answer: {}",
            chain(&e)
        ))
    })? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// The wait a 429 asks for: `retry-after-ms` (OpenAI's, fractional
/// milliseconds) first, then `Retry-After` as seconds or an HTTP-date
/// (a date in the past is no wait). `None` when absent or unreadable.
/// `header` looks a header up by its lower-case name.
#[must_use]
pub fn retry_after<'h>(header: impl Fn(&str) -> Option<&'h str>, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| header(name).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|t| t.parse::<f64>().ok())
        && ms.is_finite()
        && (0.0..1e12).contains(&ms)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// One line saying what an error body says: an OpenAI error object's
/// message (with its type and code), else the start of the text.
fn error_summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(&text)
        && let Some(err) = v.get("error")
    {
        let message = match err {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        if let Some(message) = message {
            let mut tags = Vec::new();
            for key in ["type", "code", "param"] {
                match err.get(key) {
                    Some(Value::String(s)) if !s.is_empty() => tags.push(format!("{key} {s}")),
                    Some(Value::Number(n)) => tags.push(format!("{key} {n}")),
                    _ => {}
                }
            }
            let line = if tags.is_empty() {
                message
            } else {
                format!("{message} ({})", tags.join(", "))
            };
            return one_line(&line, MAX_ERROR_BODY_CHARS);
        }
    }
    if text.trim().is_empty() {
        return "(empty body)".into();
    }
    one_line(&text, MAX_ERROR_BODY_CHARS)
}

/// `s` on one line (whitespace runs become one space), at most `max`
/// characters (`…` marks a cut).
fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, word) in s.split_whitespace().enumerate() {
        if n > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > max {
        out = out.chars().take(max).collect();
        out.push('…');
    }
    out
}

fn malformed(reason: impl Into<String>) -> ProviderError {
    ProviderError::Malformed(reason.into())
}

/// Parses a chat-completions answer, naming the first wrong field by path.
///
/// # Errors
/// [`ProviderError::Malformed`] with the reason.
pub fn parse_completion(body: &[u8]) -> Result<Completion, ProviderError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        if e.is_eof() {
            malformed(format!(
                "the body ends before its JSON does ({} bytes, truncated?): {e}",
                body.len()
            ))
        } else {
            let start: String = String::from_utf8_lossy(body).chars().take(QUOTE_CHARS).collect();
            malformed(format!("the body is not JSON ({e}); it starts {start:?}"))
        }
    })?;
    let Value::Object(root) = &v else {
        return Err(malformed(format!(
            "the body is {} instead of a JSON object",
            kind(&v)
        )));
    };
    let Some(choices) = root.get("choices") else {
        if let Some(err) = root.get("error") {
            return Err(malformed(format!(
                "the answer is an error instead of choices: {}",
                error_summary(&serde_json::to_vec(&serde_json::json!({ "error": err })).unwrap_or_default())
            )));
        }
        return Err(malformed("choices is missing"));
    };
    let Value::Array(choices) = choices else {
        return Err(malformed(format!(
            "choices is {} instead of an array",
            kind(choices)
        )));
    };
    let Some(choice) = choices.first() else {
        return Err(malformed("choices is empty"));
    };
    let Value::Object(choice) = choice else {
        return Err(malformed(format!(
            "choices[0] is {} instead of an object",
            kind(choice)
        )));
    };
    let message = match choice.get("message") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(malformed(format!(
                "choices[0].message is {} instead of an object",
                kind(other)
            )));
        }
        None => return Err(malformed("choices[0].message is missing")),
    };
    let content = match message.get("content") {
        None | Some(Value::Null) => match message.get("refusal") {
            // A refusal is the model's answer; show it as one.
            Some(Value::String(r)) => r.clone(),
            _ => String::new(),
        },
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(malformed(format!(
                "choices[0].message.content is {} instead of a string or null",
                kind(other)
            )));
        }
    };
    let tool_calls = match message.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(i, c)| tool_call(i, c))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(malformed(format!(
                "choices[0].message.tool_calls is {} instead of an array",
                kind(other)
            )));
        }
    };
    let finish_reason = match choice.get("finish_reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(malformed(format!(
                "choices[0].finish_reason is {} instead of a string",
                kind(other)
            )));
        }
    };
    let (prompt_tokens, completion_tokens) = match root.get("usage") {
        None | Some(Value::Null) => (0, 0),
        Some(Value::Object(u)) => (
            token_count(u.get("prompt_tokens"), "usage.prompt_tokens")?,
            token_count(u.get("completion_tokens"), "usage.completion_tokens")?,
        ),
        Some(other) => {
            return Err(malformed(format!(
                "usage is {} instead of an object",
                kind(other)
            )));
        }
    };
    Ok(Completion {
        content,
        tool_calls,
        finish_reason,
        prompt_tokens,
        completion_tokens,
    })
}

fn tool_call(i: usize, v: &Value) -> Result<ToolCall, ProviderError> {
    let at = format!("choices[0].message.tool_calls[{i}]");
    let Value::Object(call) = v else {
        return Err(malformed(format!("{at} is {} instead of an object", kind(v))));
    };
    let string =
        |obj: &serde_json::Map<String, Value>, path: &str, key: &str| -> Result<String, ProviderError> {
            match obj.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                None => Err(malformed(format!("{path}.{key} is missing"))),
                Some(other) => Err(malformed(format!(
                    "{path}.{key} is {} instead of a string",
                    kind(other)
                ))),
            }
        };
    let id = string(call, &at, "id")?;
    match call.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "function" => {}
        Some(other) => {
            return Err(malformed(format!(
                "{at}.type is {other} instead of \"function\" (the only kind stele runs)"
            )));
        }
    }
    let function = match call.get("function") {
        Some(Value::Object(f)) => f,
        Some(other) => {
            return Err(malformed(format!(
                "{at}.function is {} instead of an object",
                kind(other)
            )));
        }
        None => return Err(malformed(format!("{at}.function is missing"))),
    };
    let at = format!("{at}.function");
    Ok(ToolCall {
        id,
        name: string(function, &at, "name")?,
        arguments: string(function, &at, "arguments")?,
    })
}

fn token_count(v: Option<&Value>, path: &str) -> Result<u32, ProviderError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| malformed(format!("{path} is {n}, not a count of tokens"))),
        Some(other) => Err(malformed(format!(
            "{path} is {} instead of a number",
            kind(other)
        ))),
    }
}

/// "a string", "null", … for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An error and its sources on one line, each said once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    one_line(&parts.join(": "), 1000)
}

fn send_error(endpoint: &reqwest::Url, timeout: Duration, e: &reqwest::Error) -> ProviderError {
    if e.is_builder() {
        return ProviderError::Config(format!("cannot build the request: {}", chain(e)));
    }
    if e.is_timeout() {
        return ProviderError::Timeout(timeout);
    }
    // reqwest's own line only repeats the URL; say what failed under it.
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let what = if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    };
    ProviderError::Connect(one_line(&format!("POST {endpoint}: {what}"), 1000))
}

/// Reads a chat-completions stream to its `data: [DONE]` (at most
/// [`MAX_RESPONSE_BYTES`]) and assembles the completion.
async fn read_stream(mut response: reqwest::Response) -> Result<Completion, ProviderError> {
    let mut assembly = Assembly::default();
    let mut events = EventLines::default();
    let mut read = 0usize;
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            ProviderError::Connect(format!(
                "the connection broke while reading the stream, after {} events: {}",
                assembly.events,
                chain(&e)
            ))
        })?;
        let Some(chunk) = chunk else {
            break;
        };
        read += chunk.len();
        if read > MAX_RESPONSE_BYTES {
            return Err(malformed(format!(
                "the stream is larger than {} MiB",
                MAX_RESPONSE_BYTES >> 20
            )));
        }
        for data in events.push(&chunk) {
            if assembly.add(&data)? {
                return assembly.finish();
            }
        }
    }
    if let Some(data) = events.end()
        && assembly.add(&data)?
    {
        return assembly.finish();
    }
    Err(ProviderError::Connect(format!(
        "the stream ended before its `data: [DONE]` after {} events (cut mid-way)",
        assembly.events
    )))
}

/// Server-sent events split from the bytes as they come: the `data` of each
/// event (its `data:` lines joined by newlines), other fields ignored.
#[derive(Default)]
struct EventLines {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    /// `data:` lines of the event being read.
    data: Vec<String>,
}

impl EventLines {
    /// Takes `bytes`; returns the data of every event they complete.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.partial.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(std::mem::take(&mut self.data).join("\n"));
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                self.data.push(String::from_utf8_lossy(rest).into_owned());
            }
            // `event:`, `id:`, `retry:` and `:` comments carry nothing here.
        }
        out
    }

    /// The event the stream ended in without its blank line, if any.
    fn end(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.partial);
        if let Some(d) = rest.strip_prefix(b"data:") {
            let d = d.strip_prefix(b" ").unwrap_or(d);
            self.data
                .push(String::from_utf8_lossy(d).trim_end_matches('\r').to_owned());
        }
        (!self.data.is_empty()).then(|| std::mem::take(&mut self.data).join("\n"))
    }
}

/// A tool call as its deltas have built it so far.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// The completion a stream builds.
#[derive(Default)]
struct Assembly {
    events: usize,
    content: String,
    refusal: String,
    calls: Vec<PartialCall>,
    finish_reason: String,
    prompt_tokens: u32,
    completion_tokens: u32,
}

impl Assembly {
    /// Adds one event's data; `true` at `[DONE]`.
    fn add(&mut self, data: &str) -> Result<bool, ProviderError> {
        self.events += 1;
        let k = self.events;
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let bad = |what: String| malformed(format!("stream event {k}: {what}"));
        let v: Value = serde_json::from_str(data).map_err(|e| {
            let start: String = data.chars().take(QUOTE_CHARS).collect();
            bad(format!("the data is not JSON ({e}); it starts {start:?}"))
        })?;
        let Value::Object(root) = &v else {
            return Err(bad(format!("the data is {} instead of a JSON object", kind(&v))));
        };
        if let Some(err) = root.get("error") {
            return Err(bad(format!(
                "the stream carried an error: {}",
                error_summary(&serde_json::to_vec(&serde_json::json!({ "error": err })).unwrap_or_default())
            )));
        }
        match root.get("usage") {
            None | Some(Value::Null) => {}
            Some(Value::Object(u)) => {
                self.prompt_tokens = token_count(u.get("prompt_tokens"), "usage.prompt_tokens")
                    .map_err(|e| bad(e.to_string()))?;
                self.completion_tokens = token_count(u.get("completion_tokens"), "usage.completion_tokens")
                    .map_err(|e| bad(e.to_string()))?;
            }
            Some(other) => return Err(bad(format!("usage is {} instead of an object", kind(other)))),
        }
        let choices = match root.get("choices") {
            None | Some(Value::Null) => return Ok(false),
            Some(Value::Array(c)) => c,
            Some(other) => return Err(bad(format!("choices is {} instead of an array", kind(other)))),
        };
        for (i, choice) in choices.iter().enumerate() {
            let Value::Object(choice) = choice else {
                return Err(bad(format!(
                    "choices[{i}] is {} instead of an object",
                    kind(choice)
                )));
            };
            // Only the first choice is asked for (n = 1).
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            match choice.get("finish_reason") {
                None | Some(Value::Null) => {}
                Some(Value::String(r)) => r.clone_into(&mut self.finish_reason),
                Some(other) => {
                    return Err(bad(format!(
                        "choices[{i}].finish_reason is {} instead of a string",
                        kind(other)
                    )));
                }
            }
            let delta = match choice.get("delta") {
                None | Some(Value::Null) => continue,
                Some(Value::Object(d)) => d,
                Some(other) => {
                    return Err(bad(format!(
                        "choices[{i}].delta is {} instead of an object",
                        kind(other)
                    )));
                }
            };
            for (key, into) in [("content", &mut self.content), ("refusal", &mut self.refusal)] {
                match delta.get(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(t)) => into.push_str(t),
                    Some(other) => {
                        return Err(bad(format!(
                            "choices[{i}].delta.{key} is {} instead of a string or null",
                            kind(other)
                        )));
                    }
                }
            }
            match delta.get("tool_calls") {
                None | Some(Value::Null) => {}
                Some(Value::Array(calls)) => {
                    for (j, call) in calls.iter().enumerate() {
                        self.call_delta(call, &format!("choices[{i}].delta.tool_calls[{j}]"))
                            .map_err(bad)?;
                    }
                }
                Some(other) => {
                    return Err(bad(format!(
                        "choices[{i}].delta.tool_calls is {} instead of an array",
                        kind(other)
                    )));
                }
            }
        }
        Ok(false)
    }

    /// One tool-call delta: joined to the call its `index` names (a new
    /// call is the next index).
    fn call_delta(&mut self, call: &Value, at: &str) -> Result<(), String> {
        let Value::Object(call) = call else {
            return Err(format!("{at} is {} instead of an object", kind(call)));
        };
        let index = match call.get("index") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("{at}.index is {n}, not an index"))?,
            None => return Err(format!("{at}.index is missing")),
            Some(other) => return Err(format!("{at}.index is {} instead of a number", kind(other))),
        };
        if index > self.calls.len() {
            return Err(format!(
                "{at}.index is {index}, but only {} tool calls were begun",
                self.calls.len()
            ));
        }
        if index == self.calls.len() {
            self.calls.push(PartialCall::default());
        }
        let text =
            |obj: &serde_json::Map<String, Value>, path: &str, key: &str| -> Result<Option<String>, String> {
                match obj.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => Err(format!("{path}.{key} is {} instead of a string", kind(other))),
                }
            };
        match call.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "function" => {}
            Some(other) => {
                return Err(format!(
                    "{at}.type is {other} instead of \"function\" (the only kind stele runs)"
                ));
            }
        }
        let part = &mut self.calls[index];
        if let Some(id) = text(call, at, "id")?
            && part.id.is_empty()
        {
            part.id = id;
        }
        match call.get("function") {
            None | Some(Value::Null) => {}
            Some(Value::Object(f)) => {
                let at = format!("{at}.function");
                if let Some(name) = text(f, &at, "name")?
                    && part.name.is_empty()
                {
                    part.name = name;
                }
                if let Some(args) = text(f, &at, "arguments")? {
                    part.arguments.push_str(&args);
                }
            }
            Some(other) => return Err(format!("{at}.function is {} instead of an object", kind(other))),
        }
        Ok(())
    }

    /// The completion, once `[DONE]` came.
    fn finish(self) -> Result<Completion, ProviderError> {
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (i, c) in self.calls.into_iter().enumerate() {
            if c.id.is_empty() || c.name.is_empty() {
                return Err(malformed(format!(
                    "the stream's tool call {i} has no {}",
                    if c.id.is_empty() { "id" } else { "function name" }
                )));
            }
            tool_calls.push(ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            });
        }
        Ok(Completion {
            // As in a whole answer: a refusal is the model's answer.
            content: if self.content.is_empty() {
                self.refusal
            } else {
                self.content
            },
            tool_calls,
            finish_reason: self.finish_reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        })
    }
}
