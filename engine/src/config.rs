//! `stele.toml`: the runtime configuration (the seed's `[runtime]`,
//! `[security]`, `[context]`, `[mcp]` sections, plus `[journal]`,
//! `[scheduler]`, `[nats]`, `[inference]`, `[http]`, `[log]`, `[otel]` and `[tools]`), with
//! `STELE_<SECTION>_<KEY>` environment overrides. Unknown sections and keys
//! are errors; file errors name the file, line and column, environment
//! errors name the variable.
//!
//! Sections whose components are not built yet are parsed and validated
//! now so that a deployment's file is checked from day one; the component
//! issues wire them in.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Scheduler and runtime sizing.
    pub runtime: RuntimeConfig,
    /// Sandboxing and policy.
    pub security: SecurityConfig,
    /// Agent memory and the vector index.
    pub context: ContextConfig,
    /// MCP servers.
    pub mcp: McpConfig,
    /// The event log.
    pub journal: JournalConfig,
    /// Worker slots and placement.
    pub scheduler: SchedulerConfig,
    /// The NATS JetStream event feed.
    pub nats: NatsConfig,
    /// The inference provider of the reasoning loop.
    pub inference: InferenceConfig,
    /// The HTTP API of `stele up`: bind address, tokens, TLS, limits.
    pub http: HttpConfig,
    /// Logging: level and format.
    pub log: LogConfig,
    /// OpenTelemetry trace export.
    pub otel: OtelConfig,
    /// The reasoning loop's tools: per-tool circuit breakers.
    pub tools: ToolsConfig,
    /// The communication bus: limits, this instance's name, pinned peers.
    pub bus: BusConfig,
}

/// `[runtime]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Logical agents held at once.
    pub max_concurrent_agents: u32,
    /// Scheduler worker threads.
    pub scheduler_threads: u32,
    /// Bus buffer, bytes.
    pub message_buffer_size: u64,
    /// Housekeeping interval.
    pub gc_interval_ms: u64,
    /// Port of the HTTP control API on 127.0.0.1 (0: any free port; the
    /// one chosen is written to `<data>/up.json`).
    pub http_port: u16,
    /// How long a process asked to stop (SIGTERM) may take before SIGKILL.
    #[serde(with = "duration_text")]
    pub stop_grace: std::time::Duration,
    /// How often a running process's memory and CPU are sampled.
    #[serde(with = "duration_text")]
    pub sample_interval: std::time::Duration,
    /// Bytes of stdout and of stderr kept per run; the rest is counted.
    #[serde(deserialize_with = "byte_size")]
    pub output_limit: u64,
}

/// `[scheduler]`: the host as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Worker slots (each runs any number of tasks that fit in it), 1–1024.
    #[serde(deserialize_with = "slot_count")]
    pub slots: u32,
    /// Memory of each slot.
    #[serde(deserialize_with = "byte_size")]
    pub slot_memory: u64,
    /// CPU of each slot, in cores (0 < cores ≤ 1024).
    #[serde(deserialize_with = "crate::agent::cpu_cores")]
    pub slot_cpu_cores: f64,
    /// `first-fit`, `best-fit` or `spread`.
    pub placement: crate::scheduler::Placement,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            slots: 2,
            slot_memory: 1 << 30,
            slot_cpu_cores: 1.0,
            placement: crate::scheduler::Placement::FirstFit,
        }
    }
}

impl SchedulerConfig {
    /// The host capacity the scheduler decides against.
    #[must_use]
    pub fn host(&self) -> crate::scheduler::HostCapacity {
        crate::scheduler::HostCapacity {
            slots: (0..self.slots)
                .map(|_| crate::scheduler::SlotCapacity {
                    memory_mb: self.slot_memory >> 20,
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    cpu_millis: (self.slot_cpu_cores * 1000.0).round() as u64,
                })
                .collect(),
            placement: self.placement,
        }
    }
}

/// Durations written as text (`"30s"`, `"5m"`, `"250ms"`).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let v = humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\": {e}")))?;
        if v.is_zero() {
            return Err(serde::de::Error::custom("a duration of zero is not allowed here"));
        }
        Ok(v)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_agents: 10_000,
            scheduler_threads: 8,
            message_buffer_size: 1_048_576,
            gc_interval_ms: 100,
            http_port: 7411,
            stop_grace: std::time::Duration::from_secs(30),
            sample_interval: std::time::Duration::from_secs(5),
            output_limit: 64 * 1024,
        }
    }
}

/// Where agents run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxTier {
    /// A process with rlimits.
    Native,
    /// A Docker (runc) container.
    Docker,
    /// A gVisor (runsc) container.
    Gvisor,
}

/// `[security]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Tier for agents that do not name one.
    pub default_sandbox_tier: SandboxTier,
    /// Enforce the Cedar policies (false: evaluate and journal, but allow).
    pub enforce_policies: bool,
    /// Keep the audit views.
    pub audit_enabled: bool,
    /// Signature provider; stele signs with ed25519-dalek.
    #[serde(deserialize_with = "crypto_provider")]
    pub crypto_provider: String,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            default_sandbox_tier: SandboxTier::Gvisor,
            enforce_policies: true,
            audit_enabled: true,
            crypto_provider: "dalek".into(),
        }
    }
}

/// Vector index backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorBackend {
    /// Embedded LanceDB (the default).
    Lancedb,
    /// A Qdrant server.
    Qdrant,
    /// Exact search over every vector in memory, rebuilt from the journal at
    /// each start (no ANN index, no files).
    Exact,
}

/// `[context]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextConfig {
    /// Vector index backend.
    pub vector_backend: VectorBackend,
    /// LanceDB storage path; a relative path is inside the data directory.
    pub vector_data_path: PathBuf,
    /// Embedding width.
    pub embedding_dimension: u32,
    /// Context cache size, e.g. `"1GB"`.
    #[serde(deserialize_with = "byte_size")]
    pub context_cache_size: u64,
    /// Retention of knowledge items.
    pub knowledge_retention_days: u32,
    /// Only with `vector_backend = "qdrant"`.
    pub qdrant: Option<QdrantConfig>,
    /// The embedder: `hash` (deterministic, local, 384 dimensions) or
    /// `openai` (an OpenAI-compatible `/embeddings` endpoint).
    pub embedder: String,
    /// The embeddings model (`openai` only).
    pub embedding_model: String,
    /// Base URL of the embeddings endpoint (`openai` only).
    pub embedding_base_url: String,
    /// The environment variable holding the endpoint's key (`openai` only).
    pub embedding_api_key_env: String,
    /// Per memory type (`[context.memory.episodic]` …): retention,
    /// half-life, weight; absent keys keep the defaults of
    /// `stele_engine::context::score`.
    pub memory: std::collections::BTreeMap<String, MemoryTypeConfig>,
}

/// `[context.memory.<type>]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryTypeConfig {
    /// Items older than this are eligible for archiving, days.
    pub retention_days: Option<u32>,
    /// Half-life of the recency factor, hours.
    pub half_life_hours: Option<f64>,
    /// Multiplier of the importance of items of this type.
    pub weight: Option<f64>,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            vector_backend: VectorBackend::Lancedb,
            vector_data_path: PathBuf::from("vectors"),
            embedding_dimension: 1536,
            context_cache_size: 1 << 30,
            knowledge_retention_days: 365,
            qdrant: None,
            embedder: "hash".into(),
            embedding_model: "text-embedding-3-small".into(),
            embedding_base_url: "https://api.openai.com/v1".into(),
            embedding_api_key_env: "OPENAI_API_KEY".into(),
            memory: std::collections::BTreeMap::new(),
        }
    }
}

/// `[context.qdrant]`: the Qdrant server of `vector_backend = "qdrant"`,
/// spoken to over its REST API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QdrantConfig {
    /// Host name.
    pub host: String,
    /// Port of the REST API (Qdrant's default: 6333).
    pub port: u16,
    /// Speak HTTPS (rustls, the webpki root certificates) instead of HTTP.
    #[serde(default)]
    pub https: bool,
    /// The collection holding the vectors; the seq marker lives in
    /// `<collection>_stele_marker`.
    #[serde(default = "default_qdrant_collection", deserialize_with = "qdrant_collection")]
    pub collection: String,
    /// The environment variable holding the API key (none: no key is sent).
    #[serde(
        default,
        deserialize_with = "qdrant_key_env",
        skip_serializing_if = "Option::is_none"
    )]
    pub api_key_env: Option<String>,
}

fn default_qdrant_collection() -> String {
    "stele_context".into()
}

fn qdrant_collection<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty()
        || s.len() > 200
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(serde::de::Error::custom(format!(
            "collection {s:?} must be 1 to 200 ASCII letters, digits, _ or -"
        )));
    }
    Ok(s)
}

fn qdrant_key_env<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    env_var_name(d).map(Some)
}

/// How strictly MCP tool schemas are verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolVerification {
    /// Unverified tools are refused.
    Strict,
    /// Unverified tools are allowed and the fact is journaled.
    Warn,
}

/// `[mcp]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Discover servers from the config.
    pub discovery_enabled: bool,
    /// Schema verification.
    pub tool_verification: ToolVerification,
    /// Connect timeout.
    pub connection_timeout_s: u64,
    /// Open connections at most.
    pub max_concurrent_connections: u32,
    /// Time limit of one request to a server (`tools/list`, `tools/call`,
    /// `resources/list`, `resources/read`), seconds.
    pub call_timeout_s: u64,
    /// The servers (`[[mcp.servers]]`), each started (stdio) or reached
    /// (streamable HTTP) when its tools are first needed.
    pub servers: Vec<McpServerConfig>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            discovery_enabled: true,
            tool_verification: ToolVerification::Strict,
            connection_timeout_s: 30,
            max_concurrent_connections: 100,
            call_timeout_s: 60,
            servers: Vec::new(),
        }
    }
}

/// One MCP server of `[[mcp.servers]]`: a program speaking MCP over its
/// stdin/stdout (`command`, `args`, `env`) or a streamable-HTTP endpoint
/// (`url`), exactly one of the two.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "McpServerToml")]
pub struct McpServerConfig {
    /// Its name: `[a-z0-9-]`, 1 to 32 characters; its tools reach the
    /// model as `mcp__<name>__<tool>`.
    pub name: String,
    /// The program (stdio transport).
    pub command: Option<String>,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables set for it (besides the inherited environment).
    pub env: std::collections::BTreeMap<String, String>,
    /// The endpoint (streamable HTTP transport).
    pub url: Option<String>,
    /// The SchemaPin tool domain its keys are pinned under (default: the
    /// name).
    pub domain: Option<String>,
    /// Where the provider publishes its SchemaPin key: the URL of its
    /// `/.well-known/schemapin.json` (given as the origin, e.g.
    /// `https://tools.example`, or as the document's full URL). When set,
    /// tool signatures are checked against the key fetched from there (at
    /// each connection, journaled as `McpKeyDiscovered`) instead of the key
    /// a tool's `_meta` carries, and a key the document lists as revoked is
    /// refused.
    pub well_known: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpServerToml {
    name: String,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    url: Option<String>,
    domain: Option<String>,
    well_known: Option<String>,
}

impl TryFrom<McpServerToml> for McpServerConfig {
    type Error = String;

    fn try_from(t: McpServerToml) -> Result<Self, String> {
        let name_ok = (1..=32).contains(&t.name.len())
            && t.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "mcp server name {:?} is invalid; use 1 to 32 of a-z, 0-9 and -",
                t.name
            ));
        }
        match (&t.command, &t.url) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "mcp server {}: give either command or url, not both",
                    t.name
                ));
            }
            (None, None) => {
                return Err(format!(
                    "mcp server {}: give command (a program speaking MCP on stdio) or url (streamable HTTP)",
                    t.name
                ));
            }
            (None, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                return Err(format!(
                    "mcp server {}: url {url:?} is not http:// or https://",
                    t.name
                ));
            }
            _ => {}
        }
        if t.domain.as_deref().is_some_and(str::is_empty) {
            return Err(format!("mcp server {}: domain is empty", t.name));
        }
        let well_known = match t.well_known {
            None => None,
            Some(w) => Some(
                crate::mcp::schemapin::well_known_url(&w)
                    .map_err(|e| format!("mcp server {}: well_known: {e}", t.name))?,
            ),
        };
        Ok(McpServerConfig {
            name: t.name,
            command: t.command,
            args: t.args,
            env: t.env,
            url: t.url,
            domain: t.domain,
            well_known,
        })
    }
}

/// When appends are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityConfig {
    /// After fdatasync.
    Sync,
    /// Before fdatasync (50 ms loss window on power failure).
    Buffered,
}

/// `[journal]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// When appends are acknowledged.
    pub durability: DurabilityConfig,
    /// Events between automatic Merkle checkpoints (0: off, else ≥ 2).
    #[serde(deserialize_with = "checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Events between projection snapshots (0: off).
    pub snapshot_every: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            durability: DurabilityConfig::Sync,
            checkpoint_interval: 10_000,
            snapshot_every: 10_000,
        }
    }
}

/// `[nats]`: the JetStream event feed (`stele publish`, and the publisher
/// task of `stele up` when `enabled`). Off by default.
///
/// Checked as it is read: names, subjects and the URL have the shapes NATS
/// accepts, `cert` and `key` come together, `max_pending` is 1–16384, and
/// `duplicate_window` is not longer than a non-zero `max_age` (the server
/// refuses that). The section-wide checks report the position of `[nats]`.
///
/// No secret is ever in the file: authentication is one of a `.creds` file
/// (`credentials`), an NKey seed file (`nkey`), or `user` with the password
/// in the environment variable named by `password_env`, or a token in the
/// variable named by `token_env`; a URL holding `user:password@` is refused.
/// [`NatsConfig::auth`] resolves them when connecting.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "NatsConfigFile")]
pub struct NatsConfig {
    /// Run the publisher inside `stele up`.
    pub enabled: bool,
    /// Server URL(s), comma separated: `nats://host:port`, `tls://host:port`.
    pub url: String,
    /// The JetStream stream the events go to.
    pub stream: String,
    /// First subject token(s): events go to `<prefix>.<kind>.<stream>`.
    pub subject_prefix: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// A file holding the seed (`SU…`) of an NKey user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey: Option<PathBuf>,
    /// User name of user/password authentication (with `password_env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The NAME of the environment variable holding `user`'s password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The NAME of the environment variable holding a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The stream's retention policy (only when the publisher creates it:
    /// NATS cannot change the retention of an existing stream).
    pub retention: NatsRetention,
    /// How long the stream keeps a message (0: forever).
    #[serde(serialize_with = "ser_duration_or_zero")]
    pub max_age: std::time::Duration,
    /// The stream's deduplication window (`Nats-Msg-Id`): a publisher that
    /// restarts within it never stores an event twice.
    #[serde(with = "duration_text")]
    pub duplicate_window: std::time::Duration,
    /// Publishes awaiting their acknowledgement at once (the pipeline depth).
    pub max_pending: u32,
    /// TLS: `tls = true` requires it with the system roots; a `[nats.tls]`
    /// table adds a CA and a client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTlsConfig>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: false,
            url: "nats://127.0.0.1:4222".into(),
            stream: "STELE".into(),
            subject_prefix: "stele".into(),
            credentials: None,
            nkey: None,
            user: None,
            password_env: None,
            token_env: None,
            retention: NatsRetention::Limits,
            max_age: std::time::Duration::from_secs(7 * 24 * 3600),
            duplicate_window: std::time::Duration::from_secs(120),
            max_pending: 256,
            tls: None,
        }
    }
}

/// `[nats]` as written; [`NatsConfig`] after the checks across fields.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NatsConfigFile {
    enabled: bool,
    #[serde(deserialize_with = "nats_url")]
    url: String,
    #[serde(deserialize_with = "nats_stream_name")]
    stream: String,
    #[serde(deserialize_with = "nats_subject_prefix")]
    subject_prefix: String,
    credentials: Option<PathBuf>,
    nkey: Option<PathBuf>,
    user: Option<String>,
    #[serde(deserialize_with = "nats_env_name")]
    password_env: Option<String>,
    #[serde(deserialize_with = "nats_env_name")]
    token_env: Option<String>,
    retention: NatsRetention,
    #[serde(deserialize_with = "duration_or_zero")]
    max_age: std::time::Duration,
    #[serde(with = "duration_text")]
    duplicate_window: std::time::Duration,
    #[serde(deserialize_with = "nats_max_pending")]
    max_pending: u32,
    #[serde(deserialize_with = "nats_tls")]
    tls: Option<NatsTlsConfig>,
}

impl Default for NatsConfigFile {
    fn default() -> Self {
        let d = NatsConfig::default();
        NatsConfigFile {
            enabled: d.enabled,
            url: d.url,
            stream: d.stream,
            subject_prefix: d.subject_prefix,
            credentials: d.credentials,
            nkey: d.nkey,
            user: d.user,
            password_env: d.password_env,
            token_env: d.token_env,
            retention: d.retention,
            max_age: d.max_age,
            duplicate_window: d.duplicate_window,
            max_pending: d.max_pending,
            tls: d.tls,
        }
    }
}

impl TryFrom<NatsConfigFile> for NatsConfig {
    type Error = String;

    fn try_from(f: NatsConfigFile) -> Result<Self, String> {
        if !f.max_age.is_zero() && f.duplicate_window > f.max_age {
            return Err(format!(
                "[nats] duplicate_window ({}) must not be longer than max_age ({}); NATS refuses such a stream",
                humantime::format_duration(f.duplicate_window),
                humantime::format_duration(f.max_age)
            ));
        }
        if f.user.is_some() != f.password_env.is_some() {
            return Err("[nats] user and password_env come together: set both or neither".into());
        }
        if f.user.as_deref().is_some_and(str::is_empty) {
            return Err("[nats] user is empty".into());
        }
        let ways: Vec<&str> = [
            ("credentials", f.credentials.is_some()),
            ("nkey", f.nkey.is_some()),
            ("user", f.user.is_some()),
            ("token_env", f.token_env.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if ways.len() > 1 {
            return Err(format!(
                "[nats] sets {}: choose one way to authenticate",
                ways.join(" and ")
            ));
        }
        Ok(NatsConfig {
            enabled: f.enabled,
            url: f.url,
            stream: f.stream,
            subject_prefix: f.subject_prefix,
            credentials: f.credentials,
            nkey: f.nkey,
            user: f.user,
            password_env: f.password_env,
            token_env: f.token_env,
            retention: f.retention,
            max_age: f.max_age,
            duplicate_window: f.duplicate_window,
            max_pending: f.max_pending,
            tls: f.tls,
        })
    }
}

/// How a NATS client authenticates, its secrets read by
/// [`NatsConfig::auth`]. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No authentication (or only a TLS client certificate).
    Anonymous,
    /// A `.creds` file (user JWT and NKey seed), read by the client.
    Credentials(PathBuf),
    /// An NKey user: the seed read from `nkey`.
    NKey { seed: String, file: PathBuf },
    /// User and password (from the variable named by `password_env`).
    UserPassword { user: String, password: String },
    /// A token (from the variable named by `token_env`).
    Token(String),
}

impl NatsAuth {
    /// What it is, for messages: `the credentials file /x.creds`, `user
    /// "u" (password from $NATS_PASSWORD)`; never a secret.
    #[must_use]
    pub fn describe(&self, cfg: &NatsConfig) -> String {
        match self {
            NatsAuth::Anonymous => "no credentials".into(),
            NatsAuth::Credentials(p) => format!("the credentials file {}", p.display()),
            NatsAuth::NKey { file, .. } => format!("the NKey seed in {}", file.display()),
            NatsAuth::UserPassword { user, .. } => format!(
                "user {user:?} (password from ${})",
                cfg.password_env.as_deref().unwrap_or("?")
            ),
            NatsAuth::Token(_) => format!("the token from ${}", cfg.token_env.as_deref().unwrap_or("?")),
        }
    }
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::Anonymous => f.write_str("Anonymous"),
            NatsAuth::Credentials(p) => f.debug_tuple("Credentials").field(p).finish(),
            NatsAuth::NKey { file, .. } => f.debug_struct("NKey").field("file", file).finish_non_exhaustive(),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
            NatsAuth::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// Longest NKey seed file read (a seed is 58 characters).
const MAX_NKEY_FILE_BYTES: u64 = 4096;

impl NatsConfig {
    /// Reads the secrets of the configured authentication: the NKey seed
    /// file, or the variable named by `password_env` or `token_env` (looked
    /// up with `env`). The `.creds` file is read by the client itself.
    ///
    /// # Errors
    /// A message naming the file or variable and what is wrong with it.
    pub fn auth(&self, env: impl Fn(&str) -> Option<String>) -> Result<NatsAuth, String> {
        if let Some(c) = &self.credentials {
            return Ok(NatsAuth::Credentials(c.clone()));
        }
        if let Some(file) = &self.nkey {
            use std::io::Read as _;
            let mut text = String::new();
            std::fs::File::open(file)
                .and_then(|f| f.take(MAX_NKEY_FILE_BYTES).read_to_string(&mut text))
                .map_err(|e| {
                    format!(
                        "[nats] nkey: cannot read the NKey seed file {}: {e}",
                        file.display()
                    )
                })?;
            let seed = text.trim();
            if !(seed.starts_with("SU") && seed.len() == 58) {
                return Err(format!(
                    "[nats] nkey: {} does not hold an NKey user seed (58 characters starting with SU, as `nk -gen user` writes)",
                    file.display()
                ));
            }
            return Ok(NatsAuth::NKey {
                seed: seed.to_owned(),
                file: file.clone(),
            });
        }
        let secret = |var: &str, what: &str| {
            env(var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("[nats] {what}: the environment variable {var} is not set (or empty)"))
        };
        if let (Some(user), Some(var)) = (&self.user, &self.password_env) {
            return Ok(NatsAuth::UserPassword {
                user: user.clone(),
                password: secret(var, "password_env")?,
            });
        }
        if let Some(var) = &self.token_env {
            return Ok(NatsAuth::Token(secret(var, "token_env")?));
        }
        Ok(NatsAuth::Anonymous)
    }
}

/// The retention policy of the JetStream stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsRetention {
    /// Kept until `max_age` (or the server's limits): every subscriber can
    /// read from any seq.
    Limits,
    /// Kept while a consumer has not acknowledged it.
    Interest,
    /// Removed once one consumer acknowledges it.
    Workqueue,
}

/// `[nats.tls]` (or `tls = true`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// Refuse a connection without TLS.
    pub require: bool,
    /// PEM file of the CA(s) to trust besides the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (with `key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

fn nats_tls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NatsTlsConfig>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = NatsTlsConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false, or a table with require, ca, cert, key")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<NatsTlsConfig, E> {
            Ok(NatsTlsConfig {
                require: v,
                ..NatsTlsConfig::default()
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<NatsTlsConfig, A::Error> {
            NatsTlsConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    let tls = d.deserialize_any(V)?;
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(serde::de::Error::custom(
            "tls needs both cert and key for a client certificate, or neither",
        ));
    }
    Ok(Some(tls))
}

fn nats_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    for one in s.split(',') {
        let one = one.trim();
        let rest = match one.split_once("://") {
            Some((scheme, rest)) => {
                if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
                    return Err(serde::de::Error::custom(format!(
                        "url {one:?}: scheme {scheme:?} is not one of nats, tls, ws, wss"
                    )));
                }
                rest
            }
            None => one,
        };
        if rest.split('/').next().unwrap_or_default().contains('@') {
            // Say nothing of the value: it holds a secret.
            return Err(serde::de::Error::custom(
                "url holds credentials (user:password@ or token@); put them in the environment \
                 and name the variable with password_env (and user) or token_env",
            ));
        }
        let host_port = rest.split('/').next().unwrap_or_default();
        let bad = host_port.is_empty()
            || host_port.chars().any(char::is_whitespace)
            || host_port
                .rsplit_once(':')
                .is_some_and(|(h, p)| (h.contains(':') && !h.ends_with(']')) || p.parse::<u16>().is_err());
        if bad {
            return Err(serde::de::Error::custom(format!(
                "url {one:?} is not a NATS server address like \"nats://127.0.0.1:4222\""
            )));
        }
    }
    Ok(s)
}

fn nats_env_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 128;
    if !ok {
        // Say nothing of the value: it may be a secret pasted in by mistake.
        return Err(serde::de::Error::custom(
            "must be the NAME of the environment variable holding the secret \
             (letters, digits and _, like \"NATS_PASSWORD\"), never the secret itself",
        ));
    }
    if s.to_ascii_uppercase().starts_with("STELE_NATS_") {
        return Err(serde::de::Error::custom(format!(
            "{s:?} cannot hold a secret: STELE_NATS_* variables override [nats] settings; name another variable, like \"NATS_PASSWORD\""
        )));
    }
    Ok(Some(s))
}

fn nats_stream_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(serde::de::Error::custom(format!(
            "stream {s:?} must be 1 to 64 ASCII letters, digits, _ or -"
        )));
    }
    Ok(s)
}

fn nats_subject_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
    };
    if s.len() > 64 || !s.split('.').all(token_ok) {
        return Err(serde::de::Error::custom(format!(
            "subject_prefix {s:?} must be dot-separated tokens of ASCII letters, digits, _ - : (no wildcards, at most 64 bytes)"
        )));
    }
    Ok(s)
}

fn nats_max_pending<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if !(1..=16_384).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "max_pending must be 1 to 16384, not {v}"
        )));
    }
    Ok(v)
}

/// A duration as text, or 0 (as a number or text) for "unlimited".
fn duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(0) => Ok(std::time::Duration::ZERO),
        Raw::Number(n) => Err(serde::de::Error::custom(format!(
            "{n} needs a unit: write a duration like \"7d\", or 0 for unlimited"
        ))),
        Raw::Text(t) if t.trim() == "0" => Ok(std::time::Duration::ZERO),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration like \"7d\" (or 0 for unlimited): {e}"
            ))
        }),
    }
}

fn ser_duration_or_zero<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.is_zero() {
        s.serialize_str("0")
    } else {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

fn crypto_provider<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "dalek" | "ring" => Ok(s),
        other => Err(serde::de::Error::custom(format!(
            "crypto_provider {other:?} is not available; stele signs with \"dalek\" (\"ring\" is accepted as an alias)"
        ))),
    }
}

fn slot_count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if !(1..=1024).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "slots must be 1 to 1024, not {v}"
        )));
    }
    Ok(v)
}

fn checkpoint_interval<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 1 {
        return Err(serde::de::Error::custom(
            "checkpoint_interval must be 0 (off) or at least 2",
        ));
    }
    Ok(v)
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not a size like \"512MB\" or \"1GB\""))
        }),
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "KIB" => 1 << 10,
        "MB" | "MIB" => 1 << 20,
        "GB" | "GIB" => 1 << 30,
        "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Which inference provider answers the reasoning loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Answers from a fixture file (`script`): deterministic, offline.
    Scripted,
    /// An HTTP server speaking the OpenAI chat-completions format.
    Openai,
}

/// `[inference]`: the provider the reasoning loop asks, and how.
///
/// The API key is never in the file: `api_key_env` names the environment
/// variable that holds it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// `scripted` (the default) or `openai`.
    pub provider: ProviderKind,
    /// The API root; requests go to `<base_url>/chat/completions`.
    #[serde(deserialize_with = "inference_base_url")]
    pub base_url: String,
    /// The NAME of the environment variable holding the API key (not the
    /// key). Not needed when `base_url` is a loopback address.
    #[serde(deserialize_with = "env_var_name")]
    pub api_key_env: String,
    /// The model asked for when the agent names none.
    #[serde(deserialize_with = "non_empty_model")]
    pub model: String,
    /// How long one attempt (the whole HTTP request) may take.
    #[serde(with = "duration_text")]
    pub timeout: std::time::Duration,
    /// Retries after a failed attempt that may succeed on retry (0–100).
    #[serde(deserialize_with = "max_retries")]
    pub max_retries: u32,
    /// The scripted provider's fixture (JSON).
    pub script: PathBuf,
    /// Most tokens one completion may generate when the agent sets none.
    pub max_tokens: u32,
    /// `openai`: ask for the answer as a stream (server-sent events),
    /// assembled into the same completion (default false: whole).
    pub stream: bool,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            provider: ProviderKind::Scripted,
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            model: "gpt-4o-mini".into(),
            timeout: std::time::Duration::from_secs(60),
            max_retries: 3,
            script: PathBuf::from("fixtures/scripts/demo.json"),
            max_tokens: 1024,
            stream: false,
        }
    }
}

fn inference_base_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let trimmed = s.trim_end_matches('/');
    let bad = |why: &str| {
        serde::de::Error::custom(format!(
            "base_url {s:?} {why}; write the API root like \"https://api.openai.com/v1\""
        ))
    };
    let Some(rest) = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
    else {
        return Err(bad("is not an http:// or https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || rest.chars().any(char::is_whitespace) {
        return Err(bad("has no host"));
    }
    if authority.contains('@') {
        return Err(bad(
            "holds credentials; put the key in the variable named by api_key_env",
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("has a query or fragment"));
    }
    Ok(trimmed.to_owned())
}

fn env_var_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 128;
    if !ok {
        // Say nothing of the value: it may be a key pasted in by mistake.
        return Err(serde::de::Error::custom(
            "api_key_env must be the NAME of the environment variable holding the key \
             (letters, digits and _, like \"OPENAI_API_KEY\"), never the key itself",
        ));
    }
    Ok(s)
}

fn non_empty_model<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(serde::de::Error::custom("model must not be empty"));
    }
    Ok(s)
}

fn max_retries<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v > 100 {
        return Err(serde::de::Error::custom(format!(
            "max_retries must be 0 to 100, not {v}"
        )));
    }
    Ok(v)
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// In the file.
    #[error("{}:{line}:{column}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// In an environment override.
    #[error("environment {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

/// Who a bearer token lets in: `read` < `operate` < `admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpScope {
    /// Read the journal, the views, the status and the metrics.
    Read,
    /// Also change what runs: register and stop agents, verify, export.
    Operate,
    /// Also stop the runtime.
    Admin,
}

impl HttpScope {
    /// Its name in the configuration.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            HttpScope::Read => "read",
            HttpScope::Operate => "operate",
            HttpScope::Admin => "admin",
        }
    }
}

/// One `[[http.tokens]]` entry: a bearer token by the BLAKE3 of its text.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToken {
    /// Who holds it (logged, never the token).
    #[serde(deserialize_with = "token_name")]
    pub name: String,
    /// BLAKE3 of the token, 64 lowercase hex digits (`stele token create`
    /// prints it).
    #[serde(deserialize_with = "token_hash")]
    pub hash: String,
    /// What it may do.
    pub scope: HttpScope,
}

fn token_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(serde::de::Error::custom(format!(
            "token name {s:?} must be 1-64 characters of A-Z a-z 0-9 - _ . @"
        )));
    }
    Ok(s)
}

fn token_hash<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        return Err(serde::de::Error::custom(format!(
            "token hash {s:?} is not 64 lowercase hex digits (the BLAKE3 of the token, as `stele token create` prints it)"
        )));
    }
    Ok(s)
}

/// `[http]`: the HTTP API of `stele up` (the port is `[runtime] http_port`).
///
/// Checked as it is read: token names are unique, `tls_cert` and `tls_key`
/// come together, limits are in range. Binding anywhere but loopback
/// without tokens is refused when the server starts.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "HttpConfigFile")]
pub struct HttpConfig {
    /// The address to listen on.
    pub bind: std::net::IpAddr,
    /// Bearer tokens; none: no authentication (loopback only).
    pub tokens: Vec<HttpToken>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body.
    pub max_body: u64,
    /// Longest a request may take (not the live event stream).
    #[serde(with = "duration_text")]
    pub request_timeout: std::time::Duration,
    /// Requests served at once; more are refused with 429.
    pub max_concurrent: u32,
    /// Live event streams (SSE) open at once; more are refused with 429.
    pub max_streams: u32,
    /// Batches of committed events the shared live feed keeps for streams
    /// that are behind; a stream further behind reads from the journal.
    pub sse_buffer: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            tokens: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_body: 1 << 20,
            request_timeout: std::time::Duration::from_secs(30),
            max_concurrent: 256,
            max_streams: 256,
            sse_buffer: 512,
        }
    }
}

/// `[http]` as written; [`HttpConfig`] after the checks across fields.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpConfigFile {
    bind: std::net::IpAddr,
    tokens: Vec<HttpToken>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(deserialize_with = "byte_size")]
    max_body: u64,
    #[serde(with = "duration_text")]
    request_timeout: std::time::Duration,
    max_concurrent: u32,
    max_streams: u32,
    sse_buffer: u32,
}

impl Default for HttpConfigFile {
    fn default() -> Self {
        let d = HttpConfig::default();
        HttpConfigFile {
            bind: d.bind,
            tokens: d.tokens,
            tls_cert: d.tls_cert,
            tls_key: d.tls_key,
            max_body: d.max_body,
            request_timeout: d.request_timeout,
            max_concurrent: d.max_concurrent,
            max_streams: d.max_streams,
            sse_buffer: d.sse_buffer,
        }
    }
}

impl TryFrom<HttpConfigFile> for HttpConfig {
    type Error = String;

    fn try_from(f: HttpConfigFile) -> Result<Self, String> {
        let mut names = std::collections::BTreeSet::new();
        for t in &f.tokens {
            if !names.insert(t.name.as_str()) {
                return Err(format!("[http] tokens: the name {:?} is used twice", t.name));
            }
        }
        if f.tls_cert.is_some() != f.tls_key.is_some() {
            return Err("[http] tls_cert and tls_key come together: set both or neither".into());
        }
        if !(1..=(64 << 20)).contains(&f.max_body) {
            return Err(format!("[http] max_body must be 1 B-64 MiB, not {}", f.max_body));
        }
        for (name, v) in [
            ("max_concurrent", f.max_concurrent),
            ("max_streams", f.max_streams),
            ("sse_buffer", f.sse_buffer),
        ] {
            if !(1..=65_536).contains(&v) {
                return Err(format!("[http] {name} must be 1-65536, not {v}"));
            }
        }
        Ok(HttpConfig {
            bind: f.bind,
            tokens: f.tokens,
            tls_cert: f.tls_cert,
            tls_key: f.tls_key,
            max_body: f.max_body,
            request_timeout: f.request_timeout,
            max_concurrent: f.max_concurrent,
            max_streams: f.max_streams,
            sse_buffer: f.sse_buffer,
        })
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per record.
    Json,
}

/// `[log]` (`STELE_LOG_LEVEL`, `STELE_LOG_FORMAT`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `off`, `info`, `stele=debug,info`, …
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "off".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[otel]`: OpenTelemetry trace export over OTLP/HTTP (protobuf).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// The collector's OTLP/HTTP traces URL (`http://host:4318/v1/traces`),
    /// used as given; none: no export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// A `tracing` filter choosing the exported spans (independent of
    /// `[log] level`): `info` exports the ORGA phases and journal commits.
    pub level: String,
    /// Longest one export (with its retries) may take; also the bound on
    /// the flush at exit.
    #[serde(with = "duration_text")]
    pub timeout: std::time::Duration,
    /// How long spans wait in the batch before they are sent.
    #[serde(with = "duration_text")]
    pub batch_delay: std::time::Duration,
    /// Extra resource attributes (`deployment.environment = "prod"`), beside
    /// `service.name`, `service.version`, `service.instance.id` and those of
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub resource: std::collections::BTreeMap<String, String>,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: None,
            service_name: "stele".into(),
            level: "info".into(),
            timeout: std::time::Duration::from_secs(10),
            batch_delay: std::time::Duration::from_secs(1),
            resource: std::collections::BTreeMap::new(),
        }
    }
}

/// `[tools]`: the circuit breaker each tool of a reasoning run has.
///
/// A tool whose calls fail `breaker_failures` times in a row opens its
/// breaker: further calls are refused (the model is told) until
/// `breaker_open_timeout` has passed; then calls go through as probes, and
/// `breaker_half_open_probes` successes close it again (a failed probe opens
/// it again).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    /// Failures in a row that open a tool's breaker (1–1000).
    #[serde(deserialize_with = "breaker_count")]
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls.
    #[serde(with = "duration_text")]
    pub breaker_open_timeout: std::time::Duration,
    /// Successful probes that close a half-open breaker (1–1000).
    #[serde(deserialize_with = "breaker_count")]
    pub breaker_half_open_probes: u32,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            breaker_failures: 3,
            breaker_open_timeout: std::time::Duration::from_secs(30),
            breaker_half_open_probes: 1,
        }
    }
}

/// `[bus]`: the communication bus (`stele_engine::bus`). Agents of this
/// instance are addressed as `agent`, those of a peer as `agent@peer`.
///
/// ```toml
/// [bus]
/// name = "coordinator"          # this instance's name (peers address it)
/// mailbox_capacity = 1024       # messages waiting per agent (1–1000000)
/// message_ttl = "5m"            # unacknowledged messages expire after this
/// max_payload_bytes = 65536     # largest payload (1–524288)
/// messages_per_second = 1000    # default rate per agent ([limits] overrides)
/// burst = 100                   # default burst per agent
/// nats = false                  # link to peers over [nats] url
/// pin_on_first_contact = false  # pin an unknown peer's key when it first writes
/// policies = "policies"         # Cedar policy directory; `stele up` runs the bus only with one
///
/// [bus.peers]
/// worker = "<hex Ed25519 public key of its bus identity>"
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// This instance's name: 1–64 of `a-z 0-9 - _`.
    #[serde(deserialize_with = "bus_name")]
    pub name: String,
    /// Messages waiting in one mailbox at most; a send to a full mailbox
    /// fails (the sender sees why).
    #[serde(deserialize_with = "bus_capacity")]
    pub mailbox_capacity: u32,
    /// How long a message waits for its acknowledgement before it expires.
    #[serde(with = "duration_text")]
    pub message_ttl: std::time::Duration,
    /// Largest payload, bytes.
    #[serde(deserialize_with = "bus_payload")]
    pub max_payload_bytes: u64,
    /// Default sustained rate of an agent's sends (its definition's
    /// `[limits] messages_per_second` overrides).
    #[serde(deserialize_with = "bus_rate")]
    pub messages_per_second: u32,
    /// Default burst of an agent's sends (`[limits] message_burst` overrides).
    #[serde(deserialize_with = "bus_rate")]
    pub burst: u32,
    /// Carry messages to and from peers over NATS (`[nats] url`).
    pub nats: bool,
    /// Pin the key of a peer not in `peers` when it first writes (recorded
    /// as `BusPeerPinned`); off: unknown peers are refused.
    pub pin_on_first_contact: bool,
    /// Peer instances: name → hex Ed25519 public key of its bus identity
    /// (`stele bus key` prints an instance's).
    pub peers: std::collections::BTreeMap<String, String>,
    /// The Cedar policy directory the bus's `message_send` gate loads.
    /// `stele up` runs the bus only when this is set.
    pub policies: Option<PathBuf>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            name: "local".into(),
            mailbox_capacity: 1024,
            message_ttl: std::time::Duration::from_secs(300),
            max_payload_bytes: 64 * 1024,
            messages_per_second: 1000,
            burst: 100,
            nats: false,
            pin_on_first_contact: false,
            peers: std::collections::BTreeMap::new(),
            policies: None,
        }
    }
}

fn bus_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(serde::de::Error::custom(format!(
            "{s:?} is not an instance name: 1 to 64 of a-z 0-9 - _"
        )));
    }
    Ok(s)
}

fn bus_capacity<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if (1..=1_000_000).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "{n} is out of range; 1 to 1000000"
        )))
    }
}

fn bus_payload<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if (1..=512 * 1024).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "{n} is out of range; 1 to 524288 bytes"
        )))
    }
}

fn bus_rate<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if (1..=10_000_000).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "{n} is out of range; 1 to 10000000"
        )))
    }
}

fn breaker_count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if (1..=1000).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "{n} is out of range; a breaker count is 1 to 1000"
        )))
    }
}

const SECTIONS: [&str; 13] = [
    "bus",
    "runtime",
    "security",
    "context",
    "mcp",
    "journal",
    "scheduler",
    "nats",
    "inference",
    "http",
    "log",
    "otel",
    "tools",
];

fn env_value(raw: &str) -> toml::Value {
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return toml::Value::Float(f);
    }
    toml::Value::String(raw.to_owned())
}

impl Config {
    /// Parses `text` (from `path`, for errors) and applies the overrides in
    /// `env` (`STELE_<SECTION>_<KEY>=value`, other variables ignored).
    ///
    /// # Errors
    /// [`ConfigError`] naming the place of the first problem.
    pub fn parse(path: &Path, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file_err = |e: toml::de::Error| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |s| crate::agent::line_column(text, s.start));
            ConfigError::File {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        };
        // The file alone first, so its errors carry positions.
        let from_file: Config = toml::from_str(text).map_err(file_err)?;
        let overrides: Vec<(&String, &str, String, &String)> = env
            .iter()
            .filter_map(|(var, value)| {
                let lower = var.strip_prefix("STELE_")?.to_ascii_lowercase();
                let section = SECTIONS.iter().find(|s| lower.starts_with(&format!("{s}_")))?;
                Some((var, *section, lower[section.len() + 1..].to_owned(), value))
            })
            .collect();
        if overrides.is_empty() {
            return Ok(from_file);
        }
        let mut table: toml::Table = toml::from_str(text).map_err(file_err)?;
        for (var, section, key, raw) in &overrides {
            let entry = table
                .entry((*section).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = entry.as_table_mut() else {
                return Err(ConfigError::Env {
                    var: (*var).clone(),
                    message: format!("[{section}] is not a table in the file"),
                });
            };
            t.insert(key.clone(), env_value(raw));
            // Check each override on its own, so the error names it.
            let one = toml::Table::from_iter([((*section).to_owned(), toml::Value::Table(t.clone()))]);
            Config::deserialize(one).map_err(|e| ConfigError::Env {
                var: (*var).clone(),
                message: e.message().trim().to_owned(),
            })?;
        }
        Config::deserialize(table).map_err(|e| ConfigError::Env {
            var: "STELE_*".into(),
            message: e.message().trim().to_owned(),
        })
    }

    /// Loads `path` with the process environment's overrides.
    ///
    /// # Errors
    /// Unreadable file or [`ConfigError`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            line: 1,
            column: 1,
            message: format!("cannot read: {e}"),
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::parse(path, &text, &env)
    }

    /// The embedded defaults with the process environment's overrides.
    ///
    /// # Errors
    /// [`ConfigError::Env`].
    pub fn defaults_with_env() -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::parse(Path::new("(defaults)"), "", &env)
    }
}
