//! What the reasoning loop exchanges with an inference provider: the
//! request (model, messages, tools), the completion (text, tool calls,
//! token counts) and the provider's typed failures. Providers are effect
//! runners: a completion is journaled when it arrives and served from the
//! journal on replay, so nothing here needs to be deterministic — but
//! everything here must serialize to the same bytes for the same value
//! (ordered maps, no floats in what is hashed).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The operator's input.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// One message of a conversation (the OpenAI chat-completions shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who.
    pub role: Role,
    /// Text (empty for an assistant message that only calls tools).
    pub content: String,
    /// Tool calls an assistant message makes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with text only.
    #[must_use]
    pub fn text(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool call proposed by the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (answers refer to it).
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its arguments: a JSON object, as text exactly as received.
    pub arguments: String,
}

/// A tool as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments (as text, so it hashes the same).
    pub parameters: String,
}

/// What the loop asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The model.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools the model may call (already filtered by the agent's profile).
    pub tools: Vec<ToolSpec>,
    /// Most tokens to generate (0: the provider's default).
    pub max_tokens: u32,
}

impl CompletionRequest {
    /// Assistant messages in the conversation: how many times the model has
    /// answered so far (the scripted provider's step).
    #[must_use]
    pub fn assistant_turns(&self) -> usize {
        self.messages.iter().filter(|m| m.role == Role::Assistant).count()
    }
}

/// A completion.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The text.
    pub content: String,
    /// Tool calls, in the order given.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped (`stop`, `tool_calls`, `length`, …).
    pub finish_reason: String,
    /// Prompt tokens counted by the provider.
    pub prompt_tokens: u32,
    /// Completion tokens counted by the provider.
    pub completion_tokens: u32,
}

/// Why a completion failed. Each says whether retrying can help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("cannot reach the provider: {0}")]
    Connect(String),
    /// Rate limited (HTTP 429).
    #[error("rate limited (HTTP 429){}", .retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        /// What the provider asked for.
        retry_after: Option<Duration>,
    },
    /// Another HTTP error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer is not a valid completion.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The provider is misconfigured (no key, bad URL, unknown fixture).
    #[error("provider configuration: {0}")]
    Config(String),
    /// A scripted provider ran out of answers.
    #[error("the script has no answer for step {0}")]
    ScriptExhausted(u32),
}

impl ProviderError {
    /// Whether a retry may succeed.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Timeout(_) | ProviderError::Connect(_) | ProviderError::RateLimited { .. } => true,
            ProviderError::Status { status, .. } => *status >= 500,
            ProviderError::Malformed(_) | ProviderError::Config(_) | ProviderError::ScriptExhausted(_) => {
                false
            }
        }
    }
}

/// A boxed future of a completion.
pub type CompletionFuture<'a> = Pin<Box<dyn Future<Output = Result<Completion, ProviderError>> + Send + 'a>>;

/// An inference provider: one attempt per call (the loop retries, and
/// journals each failed attempt).
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Name for events (`openai`, `scripted`).
    fn name(&self) -> &str;
    /// One attempt at a completion.
    fn complete<'a>(&'a self, request: &'a CompletionRequest) -> CompletionFuture<'a>;
    /// Whether the answer just given was served from the journal (a replay,
    /// a fork's journaled prefix) rather than asked of the world: the
    /// driver then does not wait a failure's retry backoff again — it was
    /// waited when the failure was recorded.
    fn served_from_journal(&self) -> bool {
        false
    }
}

/// Free-form key/value conditions attached to an allowed action (from the
/// policy's annotations), ordered so they hash the same.
pub type Conditions = BTreeMap<String, String>;

/// The provider `[inference]` selects: the scripted one (its fixture
/// loaded and checked now) or the OpenAI chat-completions one (its key read
/// now from the variable `api_key_env` names).
///
/// # Errors
/// [`ProviderError::Config`]: an unreadable or invalid script, a bad base
/// URL, or a missing key (naming the variable).
pub fn provider_from_config(
    config: &crate::config::InferenceConfig,
) -> Result<std::sync::Arc<dyn Provider>, ProviderError> {
    Ok(match config.provider {
        crate::config::ProviderKind::Scripted => {
            std::sync::Arc::new(crate::scripted::ScriptedProvider::from_config(config)?)
        }
        crate::config::ProviderKind::Openai => {
            std::sync::Arc::new(crate::openai::OpenAiProvider::from_config(config)?)
        }
    })
}
