//! `/health` (liveness: the process answers and its core runs) and `/ready`
//! (it can do its job: the journal takes a durable write, the NATS feed is
//! connected if configured, dockerd answers if a container tier is
//! configured), both in the seed's `HealthStatus` shape: overall status,
//! component health, resource utilisation, recent errors. Nothing here
//! changes state except the bounded list of recent errors.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use stele_engine::config::SandboxTier;
use utoipa::ToSchema;

/// Recent errors kept.
const RECENT_ERRORS: usize = 20;
/// The longest one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The whole answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `healthy`, `degraded` (works, something optional is down) or
    /// `unhealthy`.
    pub overall_status: SystemStatus,
    /// Each component by name.
    pub component_health: BTreeMap<String, ComponentHealth>,
    /// What the runtime holds now.
    pub resource_utilization: ResourceUtilization,
    /// The latest errors, newest last.
    pub recent_errors: Vec<ErrorSummary>,
}

/// An overall or component status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SystemStatus {
    /// Works.
    Healthy,
    /// Works, with something optional down.
    Degraded,
    /// Does not work.
    Unhealthy,
}

/// One component.
#[derive(Debug, Serialize, ToSchema)]
pub struct ComponentHealth {
    /// Its status.
    pub status: SystemStatus,
    /// What was found.
    pub message: String,
    /// Whether readiness needs it.
    pub required: bool,
}

/// What the runtime holds.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ResourceUtilization {
    /// The journal's committed head.
    pub journal_head_seq: u64,
    /// Registered agents.
    pub agents: u64,
    /// Tasks waiting for a slot.
    pub tasks_queued: u64,
    /// Tasks running.
    pub tasks_running: u64,
    /// Memory reserved by placed tasks, MiB, over all slots.
    pub slot_memory_used_mb: u64,
    /// Memory of all slots, MiB.
    pub slot_memory_total_mb: u64,
    /// CPU reserved by placed tasks, millicores.
    pub slot_cpu_used_millis: u64,
    /// CPU of all slots, millicores.
    pub slot_cpu_total_millis: u64,
    /// Resident memory of this process, KiB.
    pub process_rss_kb: u64,
    /// Open live event streams.
    pub sse_clients: u64,
}

/// One recent error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorSummary {
    /// When (RFC 3339).
    pub at: String,
    /// Where: `http`, `journal`, `nats`, `docker`, …
    pub component: String,
    /// What.
    pub message: String,
}

/// The health state kept between requests.
#[derive(Debug)]
pub struct Health {
    recent: Mutex<VecDeque<ErrorSummary>>,
    /// Whether a container tier is configured (dockerd is checked).
    container_tier: Option<SandboxTier>,
    /// Whether readiness needs dockerd. The sandbox runner sets this when
    /// it runs containers; until then dockerd is reported but optional.
    pub containers_required: std::sync::atomic::AtomicBool,
    docker_socket: PathBuf,
}

impl Health {
    /// For a configuration's default sandbox tier.
    pub fn new(tier: SandboxTier) -> Health {
        let docker_socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        Health {
            recent: Mutex::new(VecDeque::new()),
            container_tier: (tier != SandboxTier::Native).then_some(tier),
            containers_required: std::sync::atomic::AtomicBool::new(false),
            docker_socket,
        }
    }

    /// Records an error (the oldest is dropped past [`RECENT_ERRORS`]).
    pub fn record(&self, component: &str, message: String) {
        let mut r = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() == RECENT_ERRORS {
            r.pop_front();
        }
        r.push_back(ErrorSummary {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            component: component.to_owned(),
            message,
        });
    }

    fn recent(&self) -> Vec<ErrorSummary> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Liveness: the core answered (`status` is its answer) or not.
    pub fn liveness(&self, status: Result<&Value, String>, sse_clients: u64) -> HealthStatus {
        let mut components: BTreeMap<String, ComponentHealth> = BTreeMap::new();
        let util = match status {
            Ok(s) => {
                components.insert("runtime".into(), ok("the runtime core answers", true));
                utilization(s, sse_clients)
            }
            Err(e) => {
                components.insert("runtime".into(), down(e, true));
                ResourceUtilization::default()
            }
        };
        self.finish(components, util)
    }

    /// Readiness: every component checked now.
    pub async fn readiness(
        &self,
        journal: &stele_journal::Journal,
        status: Result<&Value, String>,
        sse_clients: u64,
    ) -> HealthStatus {
        let mut components: BTreeMap<String, ComponentHealth> = BTreeMap::new();
        let util = match status {
            Ok(s) => {
                components.insert("runtime".into(), ok("the runtime core answers", true));
                if s["shutting_down"].as_bool() == Some(true) {
                    components.insert("admission".into(), down("shutting down".into(), true));
                }
                if let Some(Value::Object(n)) = s.get("nats") {
                    let c = if n.get("connected").and_then(Value::as_bool) == Some(true) {
                        ok(
                            &format!(
                                "connected; {} events behind",
                                n.get("lag").and_then(Value::as_u64).unwrap_or(0)
                            ),
                            true,
                        )
                    } else {
                        down(
                            format!(
                                "not connected: {}",
                                n.get("last_error").and_then(Value::as_str).unwrap_or("not yet")
                            ),
                            true,
                        )
                    };
                    components.insert("nats".into(), c);
                }
                utilization(s, sse_clients)
            }
            Err(e) => {
                components.insert("runtime".into(), down(e, true));
                ResourceUtilization::default()
            }
        };
        let journal_check = match tokio::time::timeout(CHECK_TIMEOUT, journal.sync()).await {
            Ok(Ok(())) => ok("takes durable writes", true),
            Ok(Err(e)) => down(format!("cannot write: {e}"), true),
            Err(_) => down(format!("a sync took longer than {CHECK_TIMEOUT:?}"), true),
        };
        components.insert("journal".into(), journal_check);
        if let Some(tier) = self.container_tier {
            let required = self
                .containers_required
                .load(std::sync::atomic::Ordering::Relaxed);
            let c = match tokio::time::timeout(CHECK_TIMEOUT, docker_ping(&self.docker_socket)).await {
                Ok(Ok(())) => ok(&format!("dockerd answers (tier {tier:?})"), required),
                Ok(Err(e)) => down(
                    format!("dockerd at {}: {e}", self.docker_socket.display()),
                    required,
                ),
                Err(_) => down(
                    format!("dockerd did not answer within {CHECK_TIMEOUT:?}"),
                    required,
                ),
            };
            components.insert("docker".into(), c);
        }
        for (name, c) in &components {
            if c.status != SystemStatus::Healthy {
                self.record(name, c.message.clone());
            }
        }
        self.finish(components, util)
    }

    fn finish(
        &self,
        components: BTreeMap<String, ComponentHealth>,
        util: ResourceUtilization,
    ) -> HealthStatus {
        let overall = components
            .values()
            .map(|c| match (c.status, c.required) {
                (SystemStatus::Healthy, _) => SystemStatus::Healthy,
                (_, false) => SystemStatus::Degraded,
                (s, true) => s,
            })
            .max()
            .unwrap_or(SystemStatus::Healthy);
        HealthStatus {
            overall_status: overall,
            component_health: components,
            resource_utilization: util,
            recent_errors: self.recent(),
        }
    }
}

fn ok(message: &str, required: bool) -> ComponentHealth {
    ComponentHealth {
        status: SystemStatus::Healthy,
        message: message.to_owned(),
        required,
    }
}

fn down(message: String, required: bool) -> ComponentHealth {
    ComponentHealth {
        status: SystemStatus::Unhealthy,
        message,
        required,
    }
}

fn utilization(s: &Value, sse_clients: u64) -> ResourceUtilization {
    let mut u = ResourceUtilization {
        journal_head_seq: s["head"].as_u64().unwrap_or(0),
        agents: s["agents"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum()),
        tasks_queued: s["tasks"]["queued"].as_u64().unwrap_or(0),
        tasks_running: s["tasks"]["running"].as_u64().unwrap_or(0),
        process_rss_kb: rss_kb(),
        sse_clients,
        ..ResourceUtilization::default()
    };
    for slot in s["slots"].as_array().into_iter().flatten() {
        u.slot_memory_total_mb += slot["memory_mb"].as_u64().unwrap_or(0);
        u.slot_memory_used_mb += slot["used_memory_mb"].as_u64().unwrap_or(0);
        u.slot_cpu_total_millis += slot["cpu_millis"].as_u64().unwrap_or(0);
        u.slot_cpu_used_millis += slot["used_cpu_millis"].as_u64().unwrap_or(0);
    }
    u
}

/// This process's resident set, KiB (`/proc/self/status`).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `GET /_ping` on dockerd's unix socket.
async fn docker_ping(socket: &std::path::Path) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await
        .map_err(|e| format!("cannot write: {e}"))?;
    let mut buf = Vec::new();
    s.take(4096)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.") && text.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {}",
            text.lines().next().unwrap_or("(empty)")
        ))
    }
}
