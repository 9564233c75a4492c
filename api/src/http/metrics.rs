//! Prometheus `/metrics` (OpenMetrics text, `prometheus-client`).
//!
//! Counters of facts come from the journal, not from the code paths that
//! produced them: a task follows the journal from seq 1 and counts each
//! committed event, so after a restart every counter is already right and
//! agrees with `stele events`. Gauges that describe *now* (agents by state,
//! queue depth, NATS lag, journal size, the writer's latency histograms)
//! are read when scraped. HTTP request counters are the server's own.
//! Nothing here decides anything or appends.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use stele_journal::{ArchivedEventBody, EventRef, Journal, Seq};

/// Label sets: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// Tasks (or runs) remembered for a latency pairing at most; the oldest
/// half is dropped past it, so a journal of abandoned tasks cannot grow it.
const MAX_PENDING: usize = 100_000;

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    events: Family<Labels, Counter>,
    folded_seq: Gauge,
    scheduling: Histogram,
    policy: Family<Labels, Counter>,
    policy_latency: Histogram,
    tools: Family<Labels, Counter>,
    tokens: Family<Labels, Counter>,
    sandbox_starts: Family<Labels, Counter>,
    tasks_finished: Family<Labels, Counter>,
    breakers: Family<Labels, Gauge>,
    http_requests: Family<Labels, Counter>,
    http_latency: Family<Labels, Histogram>,
    // Read at scrape time.
    head: Gauge,
    journal_bytes: Gauge,
    agents: Family<Labels, Gauge>,
    queued: Gauge,
    running: Gauge,
    nats_lag: Gauge,
    nats_connected: Gauge,
    sse_clients: Gauge,
    sse_lagged: Counter,
    data: PathBuf,
}

/// The writer's power-of-two histogram as a Prometheus histogram.
#[derive(Debug)]
struct WriterHistogram {
    journal: Journal,
    which: Which,
    /// Multiplier from the recorded unit to the exported one.
    scale: f64,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    DurableUs,
    GroupEvents,
}

impl TypedMetric for WriterHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for WriterHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.journal.stats();
        let h = match self.which {
            Which::DurableUs => &stats.durable_us,
            Which::GroupEvents => &stats.group_events,
        };
        let (raw, sum) = h.read();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(raw.len());
        for (i, (upper, n)) in raw.iter().enumerate() {
            cumulative += n;
            // The last bucket holds everything larger: it is +Inf.
            #[allow(clippy::cast_precision_loss)]
            let le = if i + 1 == raw.len() {
                f64::MAX
            } else {
                *upper as f64 * self.scale
            };
            buckets.push((le, *n));
        }
        #[allow(clippy::cast_precision_loss)]
        encoder.encode_histogram::<NoLabelSet>(sum as f64 * self.scale, cumulative, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 100 µs … ~52 s.
    exponential_buckets(0.0001, 2.0, 20)
}

impl Metrics {
    /// Registers every family; `journal` supplies the writer's counters.
    pub fn new(journal: &Journal, data: PathBuf) -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            events: Family::default(),
            folded_seq: Gauge::default(),
            scheduling: Histogram::new(latency_buckets()),
            policy: Family::default(),
            policy_latency: Histogram::new(latency_buckets()),
            tools: Family::default(),
            tokens: Family::default(),
            sandbox_starts: Family::default(),
            tasks_finished: Family::default(),
            breakers: Family::default(),
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            head: Gauge::default(),
            journal_bytes: Gauge::default(),
            agents: Family::default(),
            queued: Gauge::default(),
            running: Gauge::default(),
            nats_lag: Gauge::default(),
            nats_connected: Gauge::default(),
            sse_clients: Gauge::default(),
            sse_lagged: Counter::default(),
            data,
        };
        {
            let mut r = m
                .registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let r = r.sub_registry_with_prefix("stele");
            r.register(
                "journal_appends",
                "Events committed to the journal, by kind (rate() gives appends/s)",
                m.events.clone(),
            );
            r.register("journal_head_seq", "The journal's committed head", m.head.clone());
            r.register(
                "metrics_folded_seq",
                "The last seq the metrics have counted",
                m.folded_seq.clone(),
            );
            r.register_with_unit(
                "journal_size",
                "Bytes of the journal's storage (DATA/db)",
                Unit::Bytes,
                m.journal_bytes.clone(),
            );
            r.register_with_unit(
                "journal_fsync",
                "Durable writes of the writer: group commit with fdatasync (Sync) or flush (Buffered)",
                Unit::Seconds,
                WriterHistogram {
                    journal: journal.clone(),
                    which: Which::DurableUs,
                    scale: 1e-6,
                },
            );
            r.register(
                "journal_batch_events",
                "Events per group commit",
                WriterHistogram {
                    journal: journal.clone(),
                    which: Which::GroupEvents,
                    scale: 1.0,
                },
            );
            r.register("agents", "Registered agents by lifecycle state", m.agents.clone());
            r.register(
                "tasks_queued",
                "Tasks waiting for a slot (queue depth)",
                m.queued.clone(),
            );
            r.register("tasks_running", "Tasks placed on a slot", m.running.clone());
            r.register(
                "tasks_finished",
                "Tasks finished, by outcome",
                m.tasks_finished.clone(),
            );
            r.register_with_unit(
                "scheduling_latency",
                "From TaskQueued to TaskPlaced, by the events' timestamps",
                Unit::Seconds,
                m.scheduling.clone(),
            );
            r.register(
                "policy_decisions",
                "Policy gate decisions, by verdict",
                m.policy.clone(),
            );
            r.register_with_unit(
                "policy_decision_latency",
                "From ActionProposed to its run's PolicyDecided, by the events' timestamps",
                Unit::Seconds,
                m.policy_latency.clone(),
            );
            r.register("tool_calls", "Tool calls, by tool", m.tools.clone());
            r.register(
                "inference_tokens",
                "Tokens of completions received, by kind (prompt, completion)",
                m.tokens.clone(),
            );
            r.register(
                "sandbox_starts",
                "Processes started for tasks, by confinement tier",
                m.sandbox_starts.clone(),
            );
            r.register(
                "breaker_state",
                "Circuit breakers: 1 for each tool's current state",
                m.breakers.clone(),
            );
            r.register(
                "nats_publish_lag",
                "Events committed but not yet acknowledged by JetStream",
                m.nats_lag.clone(),
            );
            r.register(
                "nats_connected",
                "1 while the NATS publisher is connected",
                m.nats_connected.clone(),
            );
            r.register("sse_clients", "Open live event streams", m.sse_clients.clone());
            r.register(
                "sse_lagged",
                "Times a live event stream fell behind the shared feed's buffer ([http] sse_buffer) and caught up from the journal",
                m.sse_lagged.clone(),
            );
            r.register(
                "http_requests",
                "HTTP requests, by method, route and status",
                m.http_requests.clone(),
            );
            r.register_with_unit(
                "http_request_duration",
                "HTTP request latency, by route",
                Unit::Seconds,
                m.http_latency.clone(),
            );
        }
        m
    }

    /// Counts the journal from seq 1 and then live, until the journal ends.
    pub async fn follow(self: Arc<Self>, journal: Journal) {
        let mut pending = Pending::default();
        let mut follow = journal.reader().follow(Seq(1));
        while let Some(e) = follow.next().await {
            match e {
                Ok(e) => self.count(&e, &mut pending),
                Err(e) => {
                    tracing::error!(error = %e, "metrics: the journal follow stream failed");
                    return;
                }
            }
        }
    }

    fn count(&self, e: &EventRef, pending: &mut Pending) {
        let body = e.body();
        self.events
            .get_or_create(&vec![("kind", body.kind().to_owned())])
            .inc();
        #[allow(clippy::cast_possible_wrap)]
        self.folded_seq.set(e.seq().0 as i64);
        let at = e.at();
        match body {
            ArchivedEventBody::TaskQueued { task, .. } => pending.insert_task(task.as_str(), at),
            ArchivedEventBody::TaskPlaced { task, .. } => {
                if let Some(q) = pending.tasks.remove(task.as_str()) {
                    self.scheduling.observe(seconds(at - q));
                }
            }
            ArchivedEventBody::TaskFinished { task, outcome, .. } => {
                pending.tasks.remove(task.as_str());
                self.tasks_finished
                    .get_or_create(&vec![("outcome", outcome_name(outcome).to_owned())])
                    .inc();
            }
            ArchivedEventBody::ActionProposed { run, .. } => pending.insert_run(run.as_str(), at),
            ArchivedEventBody::PolicyDecided { run, verdict, .. } => {
                self.policy
                    .get_or_create(&vec![("verdict", verdict.to_string())])
                    .inc();
                if let Some(run) = run.as_ref()
                    && let Some(p) = pending.runs.remove(run.as_str())
                {
                    self.policy_latency.observe(seconds(at - p));
                }
            }
            ArchivedEventBody::ToolCalled { tool, .. } => {
                self.tools.get_or_create(&vec![("tool", tool.to_string())]).inc();
            }
            ArchivedEventBody::CompletionReceived {
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                self.tokens
                    .get_or_create(&vec![("kind", "prompt".to_owned())])
                    .inc_by(u64::from(prompt_tokens.to_native()));
                self.tokens
                    .get_or_create(&vec![("kind", "completion".to_owned())])
                    .inc_by(u64::from(completion_tokens.to_native()));
            }
            ArchivedEventBody::ProcessStarted { confinement, .. } => {
                self.sandbox_starts
                    .get_or_create(&vec![("tier", tier(confinement.as_str()).to_owned())])
                    .inc();
            }
            ArchivedEventBody::BreakerChanged { tool, from, to, .. } => {
                self.breakers
                    .get_or_create(&vec![("tool", tool.to_string()), ("state", from.to_string())])
                    .set(0);
                self.breakers
                    .get_or_create(&vec![("tool", tool.to_string()), ("state", to.to_string())])
                    .set(1);
            }
            ArchivedEventBody::RunFinished { run, .. } => {
                pending.runs.remove(run.as_str());
            }
            _ => {}
        }
    }

    /// One HTTP request served.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.http_latency
            .get_or_create(&vec![("route", route.to_owned())])
            .observe(seconds);
    }

    /// The open SSE streams gauge.
    pub fn sse_clients(&self) -> &Gauge {
        &self.sse_clients
    }

    /// Live event streams that fell behind the shared feed.
    pub fn sse_lagged(&self) -> &Counter {
        &self.sse_lagged
    }

    /// The exposition, after reading the gauges of now from `status` (the
    /// runtime's status answer) and the journal.
    pub fn render(&self, journal: &Journal, status: &Value) -> String {
        #[allow(clippy::cast_possible_wrap)]
        self.head.set(journal.reader().head().seq.0 as i64);
        #[allow(clippy::cast_possible_wrap)]
        self.journal_bytes.set(dir_bytes(&self.data.join("db")) as i64);
        self.agents.clear();
        if let Some(by_state) = status["agents"].as_object() {
            for (state, n) in by_state {
                self.agents
                    .get_or_create(&vec![("state", state.clone())])
                    .set(n.as_i64().unwrap_or(0));
            }
        }
        self.queued.set(status["tasks"]["queued"].as_i64().unwrap_or(0));
        self.running.set(status["tasks"]["running"].as_i64().unwrap_or(0));
        self.nats_lag.set(status["nats"]["lag"].as_i64().unwrap_or(0));
        self.nats_connected
            .set(i64::from(status["nats"]["connected"].as_bool().unwrap_or(false)));
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }
}

fn outcome_name(o: &stele_journal::event::ArchivedTaskOutcome) -> &'static str {
    use stele_journal::event::ArchivedTaskOutcome as O;
    match o {
        O::Completed => "completed",
        O::Failed => "failed",
        O::TimedOut => "timed_out",
        O::Cancelled => "cancelled",
    }
}

/// The tier word of a `ProcessStarted` confinement description.
fn tier(confinement: &str) -> &'static str {
    let c = confinement.to_ascii_lowercase();
    if c.contains("gvisor") || c.contains("runsc") {
        "gvisor"
    } else if c.contains("docker") || c.contains("container") {
        "docker"
    } else {
        "native"
    }
}

fn seconds(ns: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let s = ns.max(0) as f64 / 1e9;
    s
}

/// Bytes of the files under `dir` (0 if unreadable).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Start timestamps waiting for their pair.
#[derive(Debug, Default)]
struct Pending {
    tasks: HashMap<String, i64>,
    runs: HashMap<String, i64>,
}

impl Pending {
    fn insert_task(&mut self, task: &str, at: i64) {
        bounded_insert(&mut self.tasks, task, at);
    }

    fn insert_run(&mut self, run: &str, at: i64) {
        bounded_insert(&mut self.runs, run, at);
    }
}

fn bounded_insert(map: &mut HashMap<String, i64>, key: &str, at: i64) {
    if map.len() >= MAX_PENDING {
        let mut ats: Vec<i64> = map.values().copied().collect();
        ats.sort_unstable();
        let cut = ats[ats.len() / 2];
        map.retain(|_, v| *v > cut);
    }
    map.insert(key.to_owned(), at);
}
