//! Agent definitions: the TOML files operators write (`fixtures/agents/`)
//! and their validated form. Parsing is pure; a bad definition gets an error
//! naming the file, the line and column, and the field.
//!
//! ```toml
//! name = "heartbeat"
//! priority = "normal"                 # critical | high | normal | low
//! description = "writes a heartbeat"  # optional
//!
//! [mode]
//! kind = "scheduled"                  # ephemeral | persistent | scheduled | event-driven
//! interval = "30s"                    # scheduled only
//!
//! [limits]
//! memory_mb = 64
//! cpu_cores = 0.25
//! disk_io_mbps = 10
//! network_io_mbps = 0
//! execution_timeout = "10s"
//!
//! [runs]
//! kind = "process"
//! command = "/bin/sh"
//! args = ["-c", "date"]
//! tier = "gvisor"                    # optional: native | docker | gvisor
//!                                     # (default: [security] default_sandbox_tier)
//!
//! [health]                            # optional probe while it runs
//! command = "/bin/sh"
//! args = ["-c", "test -e /tmp/ready"]
//! interval = "10s"
//! timeout = "2s"
//! retries = 3
//! ```
//!
//! What an agent runs is an open enum: an LLM reasoning loop and sandbox
//! tiers join it with their issues.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::SandboxTier;

/// Largest definition file read.
pub const MAX_DEFINITION_BYTES: usize = 64 * 1024;

/// A validated agent definition.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefinition {
    /// Unique agent name: 1–64 of `a-z 0-9 - _ .`.
    #[serde(deserialize_with = "agent_name")]
    pub name: String,
    /// Scheduling priority.
    pub priority: Priority,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// When it runs.
    pub mode: ExecutionMode,
    /// What it may use.
    pub limits: ResourceLimits,
    /// What it runs.
    pub runs: Runs,
    /// A probe run while its process runs (persistent agents mostly).
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

/// A health probe: a command run every `interval` while the agent's process
/// runs; exit 0 within `timeout` is healthy. After `retries` failures in a
/// row the process is stopped and its run ends as failed (a persistent
/// agent then restarts with backoff). Failures and recoveries are events.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Absolute path of the probe.
    #[serde(deserialize_with = "absolute_path")]
    pub command: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Time between probes.
    #[serde(deserialize_with = "interval")]
    pub interval: Duration,
    /// Longest a probe may take.
    #[serde(deserialize_with = "probe_timeout")]
    pub timeout: Duration,
    /// Failures in a row that make the process unhealthy (1–100).
    #[serde(deserialize_with = "retries")]
    pub retries: u32,
}

/// Scheduling priority, highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// May preempt everything below it.
    Critical,
    /// Before normal work.
    High,
    /// The default class.
    Normal,
    /// Whenever there is room.
    Low,
}

/// When an agent runs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExecutionMode {
    /// Once, then it terminates.
    Ephemeral,
    /// Long-running; restarted with backoff when it exits.
    Persistent,
    /// Every `interval` (timer ticks enter the journal as events).
    Scheduled {
        /// Time between runs, e.g. `"30s"`, `"5m"`.
        #[serde(deserialize_with = "interval")]
        interval: Duration,
    },
    /// Whenever a committed journal event matches the filter.
    EventDriven {
        /// Which events trigger a run.
        filter: EventFilter,
    },
}

/// Matches journal events; an empty list matches everything on that axis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Event kinds (`annotated`, `checkpoint_signed`, …).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Stream prefixes (`agent:`, `ops`, …).
    #[serde(default)]
    pub streams: Vec<String>,
}

impl EventFilter {
    /// Whether an event of `kind` on `stream` matches.
    #[must_use]
    pub fn matches(&self, kind: &str, stream: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && (self.streams.is_empty() || self.streams.iter().any(|s| stream.starts_with(s.as_str())))
    }
}

/// The seed's resource limits.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Memory ceiling.
    #[serde(deserialize_with = "memory_mb")]
    pub memory_mb: u64,
    /// CPU share, in cores (0 < cores ≤ 1024).
    #[serde(deserialize_with = "cpu_cores")]
    pub cpu_cores: f64,
    /// Disk bandwidth (0: unlimited).
    #[serde(default)]
    pub disk_io_mbps: u64,
    /// Network bandwidth (0: none unless policy allows).
    #[serde(default)]
    pub network_io_mbps: u64,
    /// Longest a run may take.
    #[serde(deserialize_with = "execution_timeout")]
    pub execution_timeout: Duration,
    /// Sustained bus sends per second (0: the `[bus]` default).
    #[serde(default)]
    pub messages_per_second: u32,
    /// Bus sends in a burst (0: the `[bus]` default).
    #[serde(default)]
    pub message_burst: u32,
}

/// What an agent runs. Open: more kinds arrive with their issues.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Runs {
    /// A native process.
    Process {
        /// Absolute path of the program.
        #[serde(deserialize_with = "absolute_path")]
        command: PathBuf,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Extra environment (ordered, so the definition hashes the same).
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Working directory (for the container tiers: a directory inside
        /// the container; default `/work`, a size-limited tmpfs).
        #[serde(default)]
        workdir: Option<PathBuf>,
        /// Where it runs: `native`, `docker` (runc) or `gvisor` (runsc);
        /// default `[security] default_sandbox_tier`. In a container tier
        /// `command` is a path inside the image.
        #[serde(default, deserialize_with = "sandbox_tier")]
        tier: Option<SandboxTier>,
        /// The container image (container tiers; default: the newest image
        /// `stele sandbox image build` made).
        #[serde(default, deserialize_with = "sandbox_image")]
        image: Option<String>,
        /// A Docker network the container joins (container tiers). Used only
        /// when `[limits] network_io_mbps` is above 0; otherwise, and by
        /// default, the container has no network at all.
        #[serde(default, deserialize_with = "sandbox_network")]
        network: Option<String>,
    },
    /// An LLM reasoning loop (Observe–Reason–Gate–Act) with tools.
    Reasoning {
        /// The model (default: `[inference] model`).
        #[serde(default)]
        model: Option<String>,
        /// The system prompt.
        #[serde(default)]
        system: String,
        /// Tool profile: glob patterns of the built-in tools the model sees
        /// (`read_*`, `write_file`, `*`).
        #[serde(default)]
        tools: Vec<String>,
        /// The directory its file tools work in (a relative path is taken
        /// from the directory stele runs in; created if missing).
        workspace: PathBuf,
        /// Most loop iterations (default 16).
        #[serde(default)]
        max_steps: Option<u32>,
        /// The scripted provider's fixture (overrides `[inference] script`).
        #[serde(default)]
        script: Option<PathBuf>,
        /// Where its `run_command` tool runs: `native`, `docker` or
        /// `gvisor`; default `[security] default_sandbox_tier`. In a
        /// container tier the workspace is mounted at `/work` and `command`
        /// is a program of the image.
        #[serde(default, deserialize_with = "sandbox_tier")]
        tier: Option<SandboxTier>,
        /// The image of `run_command`'s containers (container tiers;
        /// default: the newest image `stele sandbox image build` made).
        #[serde(default, deserialize_with = "sandbox_image")]
        image: Option<String>,
    },
}

/// A definition that does not parse or validate.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct DefinitionError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line of the offending value (1 when unknown).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

fn agent_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "name {s:?} must be 1 to 64 characters of a-z, 0-9, '-', '_' and '.'"
        )))
    }
}

fn sandbox_tier<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SandboxTier>, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "native" => Ok(Some(SandboxTier::Native)),
        "docker" => Ok(Some(SandboxTier::Docker)),
        "gvisor" => Ok(Some(SandboxTier::Gvisor)),
        _ => Err(serde::de::Error::custom(format!(
            "tier {s:?} is not a sandbox tier; use \"native\", \"docker\" or \"gvisor\""
        ))),
    }
}

/// Docker's reference grammar, loosely: what may name an image or a network
/// without being taken for an option or a path.
fn docker_name(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} must be 1 to 255 characters of A-Z a-z 0-9 - _ . : / @, starting with a letter or digit"
        ))
    }
}

fn sandbox_image<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    docker_name("image", &s).map_err(serde::de::Error::custom)?;
    Ok(Some(s))
}

fn sandbox_network<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    docker_name("network", &s).map_err(serde::de::Error::custom)?;
    if matches!(s.as_str(), "host" | "bridge" | "default") || s.starts_with("container:") {
        return Err(serde::de::Error::custom(format!(
            "network {s:?} is not allowed: name a network made for the agent (`host`, `bridge`, `default` and `container:` share more than a network)"
        )));
    }
    Ok(Some(s))
}

fn memory_mb<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("memory_mb must be greater than 0"));
    }
    Ok(v)
}

pub(crate) fn cpu_cores<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v > 0.0 && v <= 1024.0) {
        return Err(serde::de::Error::custom(format!(
            "cpu_cores {v} must be more than 0 and at most 1024"
        )));
    }
    Ok(v)
}

fn positive_duration<'de, D: Deserializer<'de>>(field: &str, d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{field} {s:?} is not a duration like \"30s\" or \"5m\": {e}"
        ))
    })?;
    if v.is_zero() {
        return Err(serde::de::Error::custom(format!(
            "{field} must be greater than 0"
        )));
    }
    Ok(v)
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive_duration("interval", d)
}

fn probe_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive_duration("timeout", d)
}

fn retries<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if !(1..=100).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "retries must be 1 to 100, not {v}"
        )));
    }
    Ok(v)
}

fn execution_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive_duration("execution_timeout", d)
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let p = PathBuf::deserialize(d)?;
    if !p.is_absolute() {
        return Err(serde::de::Error::custom(format!(
            "{} must be an absolute path",
            p.display()
        )));
    }
    Ok(p)
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, column)
}

impl AgentDefinition {
    /// The sandbox tier its process (a reasoning agent: its `run_command`
    /// tool) runs in: the one its `[runs]` names, else `default`
    /// (`[security] default_sandbox_tier`).
    #[must_use]
    pub fn tier(&self, default: SandboxTier) -> SandboxTier {
        match &self.runs {
            Runs::Process { tier: Some(t), .. } | Runs::Reasoning { tier: Some(t), .. } => *t,
            _ => default,
        }
    }

    /// Parses and validates a definition; `path` is only used in errors.
    ///
    /// # Errors
    /// [`DefinitionError`] with the line, column and field.
    pub fn parse(path: &Path, text: &str) -> Result<AgentDefinition, DefinitionError> {
        let error = |e: &toml::de::Error, field: &str| {
            let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
            let message = e.message().trim();
            // The field's path (`limits.memory_mb`), unless the message
            // names it already or the error is about the whole document.
            let last = field.rsplit('.').next().unwrap_or(field);
            let message = if last.is_empty() || message.contains(last) {
                message.to_owned()
            } else {
                format!("{field}: {message}")
            };
            DefinitionError {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let document = toml::Deserializer::parse(text).map_err(|e| error(&e, ""))?;
        serde_path_to_error::deserialize(document).map_err(|e| error(e.inner(), &e.path().to_string()))
    }

    /// Reads and parses a definition file (at most [`MAX_DEFINITION_BYTES`]).
    ///
    /// # Errors
    /// [`DefinitionError`] for unreadable, oversized, non-UTF-8 or invalid files.
    pub fn load(path: &Path) -> Result<AgentDefinition, DefinitionError> {
        let at_start = |message: String| DefinitionError {
            path: path.to_owned(),
            line: 1,
            column: 1,
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| at_start(format!("cannot read: {e}")))?;
        if bytes.len() > MAX_DEFINITION_BYTES {
            return Err(at_start(format!(
                "{} bytes, over the limit of {MAX_DEFINITION_BYTES}",
                bytes.len()
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| at_start(format!("not UTF-8: {e}")))?;
        AgentDefinition::parse(path, &text)
    }
}
