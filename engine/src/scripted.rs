//! The scripted provider: answers from a JSON fixture, for the README demo
//! and for deterministic tests of the reasoning loop.
//!
//! ```json
//! {"model": "scripted",
//!  "answers": [
//!    {"content": "Reading the notes.",
//!     "tool_calls": [{"name": "read_file", "arguments": {"path": "notes.txt"}}]},
//!    {"error": "rate_limited:2s", "times": 1, "content": "done"},
//!    {"content": "final answer", "usage": {"prompt_tokens": 12, "completion_tokens": 3}}],
//!  "by_input": [{"contains": "weather", "answers": [{"content": "Sunny."}]}]}
//! ```
//!
//! Answer k (0-based) answers the request whose conversation holds k
//! assistant messages, so the answer is a function of the request: runs are
//! deterministic and independent of each other. `by_input` picks another
//! list of answers when the first user message contains a text (first
//! match wins; `answers` otherwise). Tool call ids are `call-<k>-<i>`;
//! `arguments` is a JSON object (encoded compactly) or a string sent as is
//! (to script malformed arguments). Token counts default to characters / 4,
//! rounded up. Past the last answer: [`ProviderError::ScriptExhausted`].
//!
//! `error` scripts a failed attempt: `rate_limited` (or
//! `rate_limited:<duration>` for a `Retry-After`), `timeout`, `connect`,
//! `malformed`, `status:<400-599>`. Without `times` every attempt at that
//! step fails; with `times: n` the first n attempts at each distinct
//! request fail and later ones get the answer — the one piece of state
//! here, counted for the provider's lifetime, so that the loop's retries
//! can be tested.
//!
//! Errors in the file are [`ProviderError::Config`] naming the file, line
//! and column.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::InferenceConfig;
use crate::llm::{Completion, CompletionFuture, CompletionRequest, Provider, ProviderError, Role, ToolCall};

/// Largest fixture file read (4 MiB): scripts are written by hand.
pub const MAX_SCRIPT_BYTES: u64 = 4 << 20;

/// Distinct requests whose attempts are counted for `times`; past it the
/// counts start again (a bound on memory for long-lived providers).
const MAX_COUNTED_REQUESTS: usize = 65_536;

/// Timeout reported by a scripted `timeout` when none is configured.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A provider answering from a script.
#[derive(Debug)]
pub struct ScriptedProvider {
    source: String,
    model: String,
    answers: Vec<Answer>,
    by_input: Vec<InputScript>,
    timeout: Duration,
    attempts: Mutex<BTreeMap<[u8; 32], u32>>,
}

impl ScriptedProvider {
    /// Loads `[inference] script`; a scripted `timeout` reports
    /// `[inference] timeout`.
    ///
    /// # Errors
    /// [`ProviderError::Config`] naming the file (and line and column).
    pub fn from_config(config: &InferenceConfig) -> Result<ScriptedProvider, ProviderError> {
        let mut p = ScriptedProvider::load(&config.script)?;
        p.timeout = config.timeout;
        Ok(p)
    }

    /// Loads the script at `path`.
    ///
    /// # Errors
    /// [`ProviderError::Config`] naming the file (and line and column).
    pub fn load(path: &Path) -> Result<ScriptedProvider, ProviderError> {
        let shown = path.display().to_string();
        let cannot = |e: std::io::Error| ProviderError::Config(format!("cannot read script {shown}: {e}"));
        let size = std::fs::metadata(path).map_err(cannot)?.len();
        if size > MAX_SCRIPT_BYTES {
            return Err(ProviderError::Config(format!(
                "script {shown} is {size} bytes, more than the {MAX_SCRIPT_BYTES} allowed"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(cannot)?;
        ScriptedProvider::from_json(&shown, &text)
    }

    /// A script from JSON text; `source` names it in errors.
    ///
    /// # Errors
    /// [`ProviderError::Config`] naming `source`, line and column.
    pub fn from_json(source: &str, text: &str) -> Result<ScriptedProvider, ProviderError> {
        let start = text.len() - text.trim_start().len();
        if !text[start..].starts_with('{') && !text[start..].is_empty() {
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(ProviderError::Config(format!(
                "{source}:{line}:{column}: a script is a JSON object like {{\"answers\": [...]}}"
            )));
        }
        let file: ScriptFile = serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full);
            ProviderError::Config(format!(
                "{source}:{}:{}: {message}",
                e.line().max(1),
                e.column().max(1)
            ))
        })?;
        if file.answers.is_empty() && file.by_input.is_empty() {
            return Err(ProviderError::Config(format!(
                "{source}: the script has no answers (give \"answers\" or \"by_input\")"
            )));
        }
        Ok(ScriptedProvider {
            source: source.to_owned(),
            model: file.model,
            answers: file.answers,
            by_input: file.by_input,
            timeout: DEFAULT_TIMEOUT,
            attempts: Mutex::new(BTreeMap::new()),
        })
    }

    /// The model the script says it is (`"model"`, default `scripted`).
    #[must_use]
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Where the script came from.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The answer to `request` (what [`Provider::complete`] returns).
    ///
    /// # Errors
    /// The scripted failure, or [`ProviderError::ScriptExhausted`].
    pub fn answer(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        let step = request.assistant_turns();
        let step_u32 = u32::try_from(step).unwrap_or(u32::MAX);
        let answers = self.answers_for(request)?;
        let Some(answer) = answers.get(step) else {
            return Err(ProviderError::ScriptExhausted(step_u32));
        };
        if let Some(failure) = &answer.error {
            let fails = match answer.times {
                None => true,
                Some(times) => self.count_attempt(request) <= times,
            };
            if fails {
                return Err(failure.to_error(self.timeout));
            }
        }
        let tool_calls: Vec<ToolCall> = answer
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: format!("call-{step}-{i}"),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect();
        let finish_reason = answer.finish_reason.clone().unwrap_or_else(|| {
            if tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            }
            .to_owned()
        });
        let produced: usize = answer.content.chars().count()
            + tool_calls
                .iter()
                .map(|c| c.name.chars().count() + c.arguments.chars().count())
                .sum::<usize>();
        let usage = answer.usage.unwrap_or_default();
        Ok(Completion {
            content: answer.content.clone(),
            tool_calls,
            finish_reason,
            prompt_tokens: usage
                .prompt_tokens
                .unwrap_or_else(|| tokens(prompt_chars(request))),
            completion_tokens: usage.completion_tokens.unwrap_or_else(|| tokens(produced)),
        })
    }

    fn answers_for(&self, request: &CompletionRequest) -> Result<&[Answer], ProviderError> {
        if !self.by_input.is_empty() {
            let input = request
                .messages
                .iter()
                .find(|m| m.role == Role::User)
                .map_or("", |m| m.content.as_str());
            if let Some(s) = self.by_input.iter().find(|s| input.contains(&s.contains)) {
                return Ok(&s.answers);
            }
            if self.answers.is_empty() {
                let start: String = input.chars().take(60).collect();
                return Err(ProviderError::Config(format!(
                    "script {}: no by_input entry matches the input {start:?} and there are no default answers",
                    self.source
                )));
            }
        }
        Ok(&self.answers)
    }

    /// Counts an attempt at `request`; returns the count including it.
    fn count_attempt(&self, request: &CompletionRequest) -> u32 {
        let bytes = serde_json::to_vec(request).unwrap_or_default();
        let key = *blake3::hash(&bytes).as_bytes();
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if attempts.len() >= MAX_COUNTED_REQUESTS && !attempts.contains_key(&key) {
            attempts.clear();
        }
        let n = attempts.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
}

impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }

    fn complete<'a>(&'a self, request: &'a CompletionRequest) -> CompletionFuture<'a> {
        Box::pin(std::future::ready(self.answer(request)))
    }
}

/// Characters / 4, rounded up.
fn tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

fn prompt_chars(request: &CompletionRequest) -> usize {
    let messages: usize = request
        .messages
        .iter()
        .map(|m| {
            m.content.chars().count()
                + m.tool_calls
                    .iter()
                    .map(|c| c.name.chars().count() + c.arguments.chars().count())
                    .sum::<usize>()
        })
        .sum();
    let tools: usize = request
        .tools
        .iter()
        .map(|t| t.name.chars().count() + t.description.chars().count() + t.parameters.chars().count())
        .sum();
    messages + tools
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    #[serde(default = "default_model")]
    model: String,
    #[serde(default)]
    answers: Vec<Answer>,
    #[serde(default)]
    by_input: Vec<InputScript>,
}

fn default_model() -> String {
    "scripted".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputScript {
    contains: String,
    answers: Vec<Answer>,
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "AnswerFile")]
struct Answer {
    content: String,
    tool_calls: Vec<ScriptedCall>,
    finish_reason: Option<String>,
    error: Option<Failure>,
    times: Option<u32>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerFile {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<ScriptedCall>,
    finish_reason: Option<String>,
    error: Option<Failure>,
    times: Option<u32>,
    usage: Option<Usage>,
}

impl TryFrom<AnswerFile> for Answer {
    type Error = String;

    fn try_from(f: AnswerFile) -> Result<Answer, String> {
        match (&f.error, f.times) {
            (None, Some(_)) => return Err("\"times\" needs an \"error\" to repeat".into()),
            (Some(_), Some(0)) => return Err("\"times\" must be at least 1 (leave it out: always)".into()),
            _ => {}
        }
        Ok(Answer {
            content: f.content,
            tool_calls: f.tool_calls,
            finish_reason: f.finish_reason,
            error: f.error,
            times: f.times,
            usage: f.usage,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    name: String,
    #[serde(default = "empty_arguments", deserialize_with = "arguments")]
    arguments: String,
}

fn empty_arguments() -> String {
    "{}".into()
}

fn arguments<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        v @ Value::Object(_) => Ok(v.to_string()),
        _ => Err(serde::de::Error::custom(
            "arguments must be a JSON object, or a string sent as is",
        )),
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

/// A scripted failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    RateLimited(Option<Duration>),
    Timeout,
    Connect,
    Malformed,
    Status(u16),
}

impl Failure {
    fn parse(s: &str) -> Result<Failure, String> {
        let expected =
            "expected rate_limited, rate_limited:<duration>, timeout, connect, malformed or status:<400-599>";
        match s {
            "rate_limited" => return Ok(Failure::RateLimited(None)),
            "timeout" => return Ok(Failure::Timeout),
            "connect" => return Ok(Failure::Connect),
            "malformed" => return Ok(Failure::Malformed),
            _ => {}
        }
        if let Some(d) = s.strip_prefix("rate_limited:") {
            return humantime::parse_duration(d)
                .map(|d| Failure::RateLimited(Some(d)))
                .map_err(|e| format!("error {s:?}: {d:?} is not a duration like \"2s\": {e}"));
        }
        if let Some(code) = s.strip_prefix("status:") {
            return match code.parse::<u16>() {
                Ok(429) => Err(format!("error {s:?}: write \"rate_limited\" for HTTP 429")),
                Ok(c @ 400..=599) => Ok(Failure::Status(c)),
                _ => Err(format!("error {s:?}: the status must be 400 to 599")),
            };
        }
        Err(format!("unknown error {s:?}; {expected}"))
    }

    fn to_error(&self, timeout: Duration) -> ProviderError {
        match self {
            Failure::RateLimited(after) => ProviderError::RateLimited { retry_after: *after },
            Failure::Timeout => ProviderError::Timeout(timeout),
            Failure::Connect => ProviderError::Connect("scripted connection failure".into()),
            Failure::Malformed => ProviderError::Malformed("scripted malformed answer".into()),
            Failure::Status(status) => ProviderError::Status {
                status: *status,
                body: "scripted failure".into(),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Failure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Failure, D::Error> {
        let s = String::deserialize(d)?;
        Failure::parse(&s).map_err(serde::de::Error::custom)
    }
}
