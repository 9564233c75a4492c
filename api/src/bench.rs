//! `stele bench journal`: W concurrent appenders of ~200-byte `Annotated`
//! events, ack latency percentiles, fsyncs and mean group size; with
//! `--baseline`, plain fjall batch writes of the same record size, batch size
//! and durability measured in the same run, and the ratio.
//!
//! `stele bench scheduler`: N agents registered through the lifecycle
//! decider (resident memory per agent), then M scheduling decisions through
//! the scheduler decider, the journal and the view as a runtime's decision
//! loop makes them (decider-only latency percentiles, end-to-end decisions/s,
//! acknowledgement latency; with `--baseline`, the same groups of facts
//! appended with no deciding), registry and scheduler fold rates over the
//! whole journal beside a plain read, and restart time from scratch and from
//! the newest snapshot (with `--restart-events`, after filling the journal
//! to that many events).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use stele_engine::lifecycle::{self, LifecycleCommand, agent_stream};
use stele_engine::scheduler::{self, HostCapacity, Placement, SchedulerCommand, SlotCapacity};
use stele_engine::{AgentDefinition, Priority};
use stele_journal::event::detached_event;
use stele_journal::{
    Append, Durability, EventBody, Journal, Options, Seq, StreamId, TaskOutcome, TaskPriority,
};
use stele_projections::{AgentRegistry, Projection, SchedulerView, SnapshotStore, fold_range, state_at};

use crate::cli::{BenchJournalArgs, BenchSchedulerArgs, DurabilityArg};

#[derive(Debug, serde::Serialize)]
struct Report {
    events: u64,
    writers: u64,
    durability: &'static str,
    seconds: f64,
    events_per_s: f64,
    ack_latency_us_p50: u64,
    ack_latency_us_p99: u64,
    ack_latency_us_max: u64,
    fsyncs: u64,
    commits: u64,
    mean_batch: f64,
    /// Reopening the journal after the run: fjall recovery, head and tail
    /// checks, and the durable `JournalOpened` append.
    restart_ms: f64,
    /// Peak resident memory of the process (VmHWM).
    max_rss_mb: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_events_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_baseline: Option<f64>,
}

fn note(writer: u64, i: u64) -> String {
    // ~200 bytes of body, different per event.
    format!("bench writer {writer:04} event {i:010} {}", "x".repeat(160))
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Buffered => Durability::Buffered,
        }
    }
}

pub fn journal(data: Option<&Path>, args: &BenchJournalArgs) -> Result<ExitCode> {
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(args.events >= args.writers, "--events must be at least --writers");
    let tmp;
    let dir = match data {
        Some(d) => d.to_owned(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary data directory")?;
            tmp.path().join("journal")
        }
    };
    let durability = Durability::from(args.durability);
    let open = || {
        Journal::open(
            &dir,
            Options {
                durability,
                ..Options::default()
            },
        )
        .with_context(|| format!("opening journal {}", dir.display()))
    };
    let journal = open()?;
    let ack_log = match &args.ack_log {
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening ack log {}", p.display()))?,
        ))),
        None => None,
    };
    // The appenders only wait for acknowledgements: one runtime thread for
    // all of them leaves the cores to the writer (measured faster on 2 cores).
    // No I/O driver: its unpark writes an eventfd on every wake (one syscall
    // per acknowledgement); the plain thread parker coalesces them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime")?;
    let stats_before = (
        journal.stats().fsyncs.load(Ordering::Relaxed),
        journal.stats().commits.load(Ordering::Relaxed),
        journal.stats().events.load(Ordering::Relaxed),
    );
    let per_writer = args.events / args.writers;
    let extra = args.events % args.writers;
    let started = Instant::now();
    let latencies: Histogram<u64> = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..args.writers {
            let journal = journal.clone();
            let ack_log = ack_log.clone();
            let n = per_writer + u64::from(w < extra);
            let stream = StreamId::new(format!("bench:{w}"))?;
            tasks.push(tokio::spawn(async move {
                let mut lat =
                    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("latency histogram")?;
                for i in 0..n {
                    let t = Instant::now();
                    let r = journal
                        .append(Append {
                            stream: stream.clone(),
                            cause: None,
                            body: EventBody::Annotated {
                                text: note(w, i),
                                run: None,
                            },
                        })
                        .await?;
                    lat.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                    if let Some(log) = &ack_log {
                        let mut f = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        writeln!(f, "{}", r.seq).context("writing ack log")?;
                    }
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("latency histogram")?;
        for t in tasks {
            all.add(t.await.context("bench writer panicked")??)
                .context("merging latency histograms")?;
        }
        anyhow::Ok(all)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let fsyncs = journal.stats().fsyncs.load(Ordering::Relaxed) - stats_before.0;
    let commits = journal.stats().commits.load(Ordering::Relaxed) - stats_before.1;
    let committed = journal.stats().events.load(Ordering::Relaxed) - stats_before.2;
    drop(journal);
    let reopen = Instant::now();
    let journal = open()?;
    let restart_ms = reopen.elapsed().as_secs_f64() * 1e3;
    drop(journal);
    let pct = |p: f64| -> u64 { latencies.value_at_quantile(p) };
    let mean_batch = if commits > 0 {
        committed as f64 / commits as f64
    } else {
        0.0
    };
    let mut report = Report {
        events: args.events,
        writers: args.writers,
        durability: match durability {
            Durability::Sync => "sync",
            Durability::Buffered => "buffered",
        },
        seconds,
        events_per_s: args.events as f64 / seconds,
        ack_latency_us_p50: pct(0.50),
        ack_latency_us_p99: pct(0.99),
        ack_latency_us_max: latencies.max(),
        fsyncs,
        commits,
        mean_batch,
        restart_ms,
        max_rss_mb: max_rss_mb(),
        baseline_events_per_s: None,
        ratio_to_baseline: None,
    };
    if args.baseline {
        let b = baseline(args.events, mean_batch.round().max(1.0) as u64, durability)?;
        report.baseline_events_per_s = Some(b);
        report.ratio_to_baseline = Some(report.events_per_s / b);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} events, {} writers, {}: {:.0} events/s in {:.2} s; ack latency p50 {} us, p99 {} us, max {} us; {} fsyncs, mean group {:.1}; restart {:.1} ms; max rss {:.0} MB",
            report.events,
            report.writers,
            report.durability,
            report.events_per_s,
            report.seconds,
            report.ack_latency_us_p50,
            report.ack_latency_us_p99,
            report.ack_latency_us_max,
            report.fsyncs,
            report.mean_batch,
            report.restart_ms,
            report.max_rss_mb
        );
        if let (Some(b), Some(r)) = (report.baseline_events_per_s, report.ratio_to_baseline) {
            println!(
                "baseline (plain fjall batches of {:.0}, same durability): {b:.0} events/s; ratio {r:.2}",
                report.mean_batch
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Peak resident set size from /proc (0 where unavailable).
fn max_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Plain fjall: the same number of ~350-byte records (the size of a signed
/// bench event) in batches of `batch`, one persist per batch, no hashing,
/// signing or indexing. Returns events/s.
fn baseline(events: u64, batch: u64, durability: Durability) -> Result<f64> {
    let tmp = tempfile::tempdir().context("creating baseline directory")?;
    let db = fjall::Database::builder(tmp.path())
        .manual_journal_persist(true)
        .open()
        .context("opening baseline fjall")?;
    let ks = db
        .keyspace("events", fjall::KeyspaceCreateOptions::default)
        .context("baseline keyspace")?;
    let value = vec![0xabu8; 350];
    let mode = match durability {
        Durability::Sync => fjall::PersistMode::SyncData,
        Durability::Buffered => fjall::PersistMode::Buffer,
    };
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < events {
        let mut b = db.batch().durability(Some(mode));
        for _ in 0..batch.min(events - seq) {
            seq += 1;
            b.insert(&ks, seq.to_be_bytes(), value.clone());
        }
        b.commit().context("baseline commit")?;
    }
    if durability == Durability::Buffered {
        db.persist(fjall::PersistMode::SyncData)
            .context("baseline final sync")?;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------
// `stele bench scheduler`
// ---------------------------------------------------------------------------

/// Each worker slot the bench schedules on: 32 GiB and 16 cores.
const BENCH_SLOT: SlotCapacity = SlotCapacity {
    memory_mb: 32 * 1024,
    cpu_millis: 16_000,
};

/// Agents registered per journal group.
const REGISTER_BATCH: usize = 256;

/// Decisions per journal group while filling the journal for `--restart-events`.
const FILL_BATCH: u64 = 1024;

#[derive(Debug, serde::Serialize)]
struct SchedulerReport {
    agents: u64,
    tasks: u64,
    slots: u64,
    open_tasks: u64,
    max_batch: u64,
    durability: &'static str,
    /// Parsing, deciding, appending and folding the registrations.
    register_seconds: f64,
    /// Resident memory before and after registering the agents, and the
    /// difference per agent (registry, journal buffers, allocator slack).
    rss_before_kb: u64,
    rss_after_register_kb: u64,
    rss_bytes_per_agent: f64,
    rss_after_decisions_kb: u64,
    /// Peak resident memory of the whole run (VmHWM).
    max_rss_mb: f64,
    decisions: u64,
    enqueues: u64,
    finishes: u64,
    cancels: u64,
    facts: u64,
    placements: u64,
    preemptions: u64,
    queued_max: u64,
    queued_at_end: u64,
    running_at_end: u64,
    /// `scheduler::decide` alone, per decision.
    decide_latency_us_p50: f64,
    decide_latency_us_p99: f64,
    decide_latency_us_p999: f64,
    decide_latency_us_max: f64,
    /// Folding a decision's facts into the view (`apply_body`).
    fold_latency_us_p50: f64,
    fold_latency_us_p99: f64,
    /// First decision to last acknowledgement.
    seconds: f64,
    decisions_per_s: f64,
    events_per_s: f64,
    /// From the start of a decision to the acknowledgement of its group.
    ack_latency_us_p50: u64,
    ack_latency_us_p99: u64,
    ack_latency_us_max: u64,
    appends: u64,
    mean_decisions_per_append: f64,
    fsyncs: u64,
    /// The same groups of facts appended with no deciding, in a fresh
    /// journal, same process (`--baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_decisions_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_baseline: Option<f64>,
    journal_events: u64,
    /// Reading every event (the floor of any fold).
    read_events_per_s: f64,
    /// Folding every event of the journal into a fresh `AgentRegistry`.
    registry_fold_events_per_s: f64,
    registry_fold_ratio_to_read: f64,
    /// Folding every event of the journal into a fresh `SchedulerView`.
    scheduler_fold_events_per_s: f64,
    snapshot_every: u64,
    /// The newest snapshot a journal-owning process would hold.
    snapshot_seq: u64,
    snapshot_bytes: u64,
    /// Writing both snapshots (JSON, fsynced): what the owner pays every
    /// `snapshot_every` events.
    snapshot_write_ms: f64,
    /// Reopening the journal (fjall recovery, checks, `JournalOpened`);
    /// medians of the rounds.
    restart_open_ms: f64,
    /// Reopen + both views folded from the first event.
    restart_scratch_ms: f64,
    /// Reopen + both views from the newest snapshot plus the tail.
    restart_snapshot_ms: f64,
    restart_tail_events: u64,
}

/// SplitMix64: a deterministic sequence, so every run decides the same.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A registered agent as the workload enqueues it.
#[derive(Debug)]
struct AgentSpec {
    name: String,
    priority: TaskPriority,
    memory_mb: u64,
    cpu_millis: u32,
}

/// Bench agent `i`'s definition: 5% critical, 15% high, 50% normal, 30%
/// low; 64 MB–1 GiB; 0.1–2 cores.
fn bench_definition(i: u64) -> String {
    let mut rng = SplitMix(i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let priority = match rng.below(100) {
        0..5 => "critical",
        5..20 => "high",
        20..70 => "normal",
        _ => "low",
    };
    let memory_mb = 64 * (1 + rng.below(16));
    let cpu_cores = (1 + rng.below(20)) as f64 / 10.0;
    format!(
        "name = \"bench-{i:05}\"\npriority = \"{priority}\"\ndescription = \"stele bench scheduler\"\n\n\
         [mode]\nkind = \"ephemeral\"\n\n\
         [limits]\nmemory_mb = {memory_mb}\ncpu_cores = {cpu_cores:.1}\ndisk_io_mbps = 10\nnetwork_io_mbps = 0\nexecution_timeout = \"60s\"\n\n\
         [runs]\nkind = \"process\"\ncommand = \"/bin/true\"\n"
    )
}

fn spec_of(d: &AgentDefinition) -> AgentSpec {
    AgentSpec {
        name: d.name.clone(),
        priority: match d.priority {
            Priority::Critical => TaskPriority::Critical,
            Priority::High => TaskPriority::High,
            Priority::Normal => TaskPriority::Normal,
            Priority::Low => TaskPriority::Low,
        },
        memory_mb: d.limits.memory_mb,
        // As the runtime reserves it: thousandths of a core, at least one.
        cpu_millis: ((d.limits.cpu_cores * 1000.0).round() as u32).max(1),
    }
}

/// Open task ids with O(1) insertion, removal and random choice.
#[derive(Debug, Default)]
struct Pool {
    ids: Vec<String>,
    at: std::collections::HashMap<String, usize>,
}

impl Pool {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn insert(&mut self, id: &str) {
        if !self.at.contains_key(id) {
            self.at.insert(id.to_owned(), self.ids.len());
            self.ids.push(id.to_owned());
        }
    }

    fn remove(&mut self, id: &str) {
        let Some(i) = self.at.remove(id) else { return };
        let last = self.ids.pop().expect("the map and the list hold the same ids");
        if i < self.ids.len() {
            self.at.insert(last.clone(), i);
            self.ids[i] = last;
        }
    }

    fn pick(&self, rng: &mut SplitMix) -> Option<&str> {
        (!self.ids.is_empty()).then(|| self.ids[rng.below(self.ids.len() as u64) as usize].as_str())
    }
}

/// What a busy runtime asks its scheduler: enqueue runs of random agents
/// while fewer than `open` tasks are open; otherwise finish a random
/// running task (85% completed, 10% failed, 5% timed out) or, one time in
/// ten, cancel a random queued one.
#[derive(Debug)]
struct Workload {
    agents: Vec<AgentSpec>,
    rng: SplitMix,
    open: usize,
    queued: Pool,
    running: Pool,
    enqueues: u64,
    finishes: u64,
    cancels: u64,
    placements: u64,
    preemptions: u64,
}

impl Workload {
    fn next(&mut self) -> SchedulerCommand {
        let open = self.queued.len() + self.running.len();
        if open < self.open || open == 0 {
            self.enqueues += 1;
            let a = &self.agents[self.rng.below(self.agents.len() as u64) as usize];
            return SchedulerCommand::Enqueue {
                agent: a.name.clone(),
                priority: a.priority,
                memory_mb: a.memory_mb,
                cpu_millis: a.cpu_millis,
                trigger: "bench".into(),
            };
        }
        let cancel = self.rng.below(10) == 0 && self.queued.len() > 0 || self.running.len() == 0;
        if cancel {
            self.cancels += 1;
            let task = self.queued.pick(&mut self.rng).expect("open tasks").to_owned();
            return SchedulerCommand::Finish {
                task,
                outcome: TaskOutcome::Cancelled,
                detail: "bench".into(),
            };
        }
        self.finishes += 1;
        let outcome = match self.rng.below(20) {
            0..17 => TaskOutcome::Completed,
            17..19 => TaskOutcome::Failed,
            _ => TaskOutcome::TimedOut,
        };
        let task = self
            .running
            .pick(&mut self.rng)
            .expect("running tasks")
            .to_owned();
        SchedulerCommand::Finish {
            task,
            outcome,
            detail: "bench".into(),
        }
    }

    fn observe(&mut self, fact: &EventBody) {
        match fact {
            EventBody::TaskQueued { task, .. } => self.queued.insert(task),
            EventBody::TaskPlaced { task, .. } => {
                self.placements += 1;
                self.queued.remove(task);
                self.running.insert(task);
            }
            EventBody::TaskPreempted { task, .. } => {
                self.preemptions += 1;
                self.running.remove(task);
                self.queued.insert(task);
            }
            EventBody::TaskFinished { task, .. } => {
                self.queued.remove(task);
                self.running.remove(task);
            }
            _ => {}
        }
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).context("latency histogram")
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

type InFlight = (
    tokio::task::JoinHandle<stele_journal::Result<Vec<stele_journal::Receipt>>>,
    Vec<Instant>,
);

/// Journal groups a decision loop keeps in flight: two, so the journal
/// signs one while it commits the other (its own pipeline is a rendezvous).
const PIPELINE_GROUPS: usize = 2;

/// The decision loop a runtime runs: decide a command against the view,
/// fold the facts into the view at once (the loop is the only writer of
/// scheduler facts, so its view is the journal's plus what is in flight),
/// and hand the facts to the journal — a new group whenever fewer than
/// `PIPELINE_GROUPS` are in flight, else once `max_batch` decisions wait.
struct DecisionLoop<'a> {
    journal: &'a Journal,
    rt: &'a tokio::runtime::Runtime,
    cap: HostCapacity,
    view: SchedulerView,
    workload: Workload,
    stream: StreamId,
    max_batch: u64,
    pending: Vec<Append>,
    pending_started: Vec<Instant>,
    inflight: std::collections::VecDeque<InFlight>,
    decide_ns: Histogram<u64>,
    fold_ns: Histogram<u64>,
    ack_us: Histogram<u64>,
    decisions: u64,
    facts: u64,
    appends: u64,
    queued_max: u64,
    /// The groups as appended, for the baseline.
    groups: Option<Vec<Vec<EventBody>>>,
}

impl DecisionLoop<'_> {
    fn step(&mut self) -> Result<()> {
        let command = self.workload.next();
        let started = Instant::now();
        let facts =
            scheduler::decide(&self.view, &self.cap, command).context("the bench workload was rejected")?;
        let decided = Instant::now();
        for f in &facts {
            self.view.apply_body(f);
            self.workload.observe(f);
        }
        self.fold_ns.saturating_record(elapsed_ns(decided));
        self.decide_ns
            .saturating_record(u64::try_from((decided - started).as_nanos()).unwrap_or(u64::MAX));
        self.decisions += 1;
        self.facts += facts.len() as u64;
        self.queued_max = self.queued_max.max(self.workload.queued.len() as u64);
        self.pending.extend(facts.into_iter().map(|body| Append {
            stream: self.stream.clone(),
            cause: None,
            body,
        }));
        self.pending_started.push(started);
        while self.inflight.front().is_some_and(|(h, _)| h.is_finished()) {
            self.wait_oldest()?;
        }
        if self.inflight.len() < PIPELINE_GROUPS {
            self.send();
        } else if self.pending_started.len() as u64 >= self.max_batch {
            self.wait_oldest()?;
            self.send();
        }
        Ok(())
    }

    fn send(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        if let Some(groups) = &mut self.groups {
            groups.push(batch.iter().map(|a| a.body.clone()).collect());
        }
        let journal = self.journal.clone();
        let handle = self.rt.spawn(async move { journal.append_many(batch).await });
        self.inflight
            .push_back((handle, std::mem::take(&mut self.pending_started)));
        self.appends += 1;
    }

    fn wait_oldest(&mut self) -> Result<()> {
        if let Some((handle, started)) = self.inflight.pop_front() {
            self.rt
                .block_on(handle)
                .context("the append task panicked")?
                .context("appending scheduler facts")?;
            for s in started {
                self.ack_us
                    .saturating_record(u64::try_from(s.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
        }
        Ok(())
    }

    /// Sends what waits and waits for every acknowledgement.
    fn finish(&mut self) -> Result<()> {
        if self.inflight.len() >= PIPELINE_GROUPS {
            self.wait_oldest()?;
        }
        self.send();
        while !self.inflight.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }
}

/// Resident memory now, from /proc (0 where unavailable).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Registers `n` agents through the lifecycle decider, `REGISTER_BATCH` per
/// group; folds each acknowledged fact into the registry with its seq.
fn register_agents(
    journal: &Journal,
    rt: &tokio::runtime::Runtime,
    n: u64,
) -> Result<(AgentRegistry, Vec<AgentSpec>)> {
    let mut registry = AgentRegistry::default();
    let mut specs = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let path = Path::new("<bench>");
    let mut i = 0;
    while i < n {
        let mut appends = Vec::new();
        for k in i..n.min(i + REGISTER_BATCH as u64) {
            let source = bench_definition(k);
            let definition = AgentDefinition::parse(path, &source)?;
            specs.push(spec_of(&definition));
            let stream = agent_stream(&definition.name);
            let facts = lifecycle::decide(
                &registry,
                LifecycleCommand::Register {
                    definition: Box::new(definition),
                    source,
                },
            )?;
            appends.extend(facts.into_iter().map(|body| Append {
                stream: stream.clone(),
                cause: None,
                body,
            }));
        }
        let receipts = rt.block_on(journal.append_many(appends.clone()))?;
        for (a, r) in appends.iter().zip(&receipts) {
            registry.apply(&detached_event(r.seq, r.at, &a.stream, None, &a.body)?);
        }
        i = n.min(i + REGISTER_BATCH as u64);
    }
    Ok((registry, specs))
}

/// Appends the recorded groups to a fresh journal, `PIPELINE_GROUPS` in
/// flight as in the decision loop, with no deciding; returns the seconds.
fn baseline_groups(
    groups: Vec<Vec<EventBody>>,
    durability: Durability,
    rt: &tokio::runtime::Runtime,
) -> Result<f64> {
    let tmp = tempfile::tempdir().context("creating the baseline directory")?;
    let journal = Journal::open(
        tmp.path().join("journal"),
        Options {
            durability,
            ..Options::default()
        },
    )
    .context("opening the baseline journal")?;
    let stream = scheduler::scheduler_stream();
    let batches: Vec<Vec<Append>> = groups
        .into_iter()
        .map(|g| {
            g.into_iter()
                .map(|body| Append {
                    stream: stream.clone(),
                    cause: None,
                    body,
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut inflight: std::collections::VecDeque<tokio::task::JoinHandle<stele_journal::Result<_>>> =
        std::collections::VecDeque::new();
    for batch in batches {
        if inflight.len() >= PIPELINE_GROUPS
            && let Some(h) = inflight.pop_front()
        {
            rt.block_on(h).context("the append task panicked")??;
        }
        let j = journal.clone();
        inflight.push_back(rt.spawn(async move { j.append_many(batch).await }));
    }
    for h in inflight {
        rt.block_on(h).context("the append task panicked")??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Folds the whole journal into a fresh `P`, saving a snapshot at `at` on
/// the way (none at 0); returns the events folded, the seconds folding and
/// the milliseconds writing the snapshot.
fn fold_and_snapshot<P: Projection>(
    reader: &stele_journal::Reader,
    store: &SnapshotStore,
    at: Seq,
    head: Seq,
) -> Result<(u64, f64, f64)> {
    let mut state = P::default();
    let started = Instant::now();
    let mut n = fold_range(reader, &mut state, Seq::ZERO, at)?;
    let mut seconds = started.elapsed().as_secs_f64();
    let mut write_ms = 0.0;
    if at > Seq::ZERO {
        let hash = reader.get(at)?.context("reading the snapshot's event")?.hash();
        let started = Instant::now();
        store.save(at, hash, &state)?;
        write_ms = started.elapsed().as_secs_f64() * 1e3;
    }
    let started = Instant::now();
    n += fold_range(reader, &mut state, at, head)?;
    seconds += started.elapsed().as_secs_f64();
    Ok((n, seconds, write_ms))
}

/// Restarts measured per variant (the median is reported).
const RESTART_ROUNDS: usize = 3;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

pub fn scheduler(data: Option<&Path>, args: &BenchSchedulerArgs) -> Result<ExitCode> {
    ensure!(args.agents >= 1, "--agents must be at least 1");
    ensure!(args.slots >= 1, "--slots must be at least 1");
    ensure!(args.batch >= 1, "--batch must be at least 1");
    let tmp;
    let dir = match data {
        Some(d) => {
            let empty = std::fs::read_dir(d).map_or(true, |mut e| e.next().is_none());
            ensure!(
                empty,
                "{} is not empty; the bench registers its own agents and needs a new data directory",
                d.display()
            );
            d.to_owned()
        }
        None => {
            tmp = tempfile::tempdir().context("creating a temporary data directory")?;
            tmp.path().join("data")
        }
    };
    let durability = Durability::from(args.durability);
    let open = || {
        Journal::open(
            &dir,
            Options {
                durability,
                ..crate::journal_cmd::journal_options()
            },
        )
        .with_context(|| format!("opening journal {}", dir.display()))
    };
    // One worker runs the appends and their acknowledgements while this
    // thread decides. No I/O driver: its unpark writes an eventfd per wake.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .context("starting the async runtime")?;
    let journal = open()?;

    // Registration, and the memory it costs.
    let rss_before_kb = rss_kb();
    let started = Instant::now();
    let (registry, specs) = register_agents(&journal, &rt, args.agents)?;
    let register_seconds = started.elapsed().as_secs_f64();
    let rss_after_register_kb = rss_kb();
    ensure!(
        registry.agents.len() as u64 == args.agents,
        "registered {} agents, expected {}",
        registry.agents.len(),
        args.agents
    );

    // The decision loop.
    let mut lp = DecisionLoop {
        journal: &journal,
        rt: &rt,
        cap: HostCapacity {
            slots: vec![BENCH_SLOT; usize::try_from(args.slots).context("--slots")?],
            placement: Placement::BestFit,
        },
        view: SchedulerView::default(),
        workload: Workload {
            agents: specs,
            rng: SplitMix(0x5ce1e),
            open: usize::try_from(args.open).context("--open")?,
            queued: Pool::default(),
            running: Pool::default(),
            enqueues: 0,
            finishes: 0,
            cancels: 0,
            placements: 0,
            preemptions: 0,
        },
        stream: scheduler::scheduler_stream(),
        max_batch: args.batch,
        pending: Vec::new(),
        pending_started: Vec::new(),
        inflight: std::collections::VecDeque::new(),
        decide_ns: histogram()?,
        fold_ns: histogram()?,
        ack_us: histogram()?,
        decisions: 0,
        facts: 0,
        appends: 0,
        queued_max: 0,
        groups: args.baseline.then(Vec::new),
    };
    let fsyncs_before = journal.stats().fsyncs.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..args.tasks {
        lp.step()?;
    }
    lp.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    let fsyncs = journal.stats().fsyncs.load(Ordering::Relaxed) - fsyncs_before;
    let rss_after_decisions_kb = rss_kb();
    let w = &lp.workload;
    let mut report = SchedulerReport {
        agents: args.agents,
        tasks: args.tasks,
        slots: args.slots,
        open_tasks: args.open,
        max_batch: args.batch,
        durability: match durability {
            Durability::Sync => "sync",
            Durability::Buffered => "buffered",
        },
        register_seconds,
        rss_before_kb,
        rss_after_register_kb,
        rss_bytes_per_agent: rss_after_register_kb.saturating_sub(rss_before_kb) as f64 * 1024.0
            / args.agents as f64,
        rss_after_decisions_kb,
        max_rss_mb: 0.0,
        decisions: lp.decisions,
        enqueues: w.enqueues,
        finishes: w.finishes,
        cancels: w.cancels,
        facts: lp.facts,
        placements: w.placements,
        preemptions: w.preemptions,
        queued_max: lp.queued_max,
        queued_at_end: w.queued.len() as u64,
        running_at_end: w.running.len() as u64,
        decide_latency_us_p50: us(lp.decide_ns.value_at_quantile(0.50)),
        decide_latency_us_p99: us(lp.decide_ns.value_at_quantile(0.99)),
        decide_latency_us_p999: us(lp.decide_ns.value_at_quantile(0.999)),
        decide_latency_us_max: us(lp.decide_ns.max()),
        fold_latency_us_p50: us(lp.fold_ns.value_at_quantile(0.50)),
        fold_latency_us_p99: us(lp.fold_ns.value_at_quantile(0.99)),
        seconds,
        decisions_per_s: lp.decisions as f64 / seconds,
        events_per_s: lp.facts as f64 / seconds,
        ack_latency_us_p50: lp.ack_us.value_at_quantile(0.50),
        ack_latency_us_p99: lp.ack_us.value_at_quantile(0.99),
        ack_latency_us_max: lp.ack_us.max(),
        appends: lp.appends,
        mean_decisions_per_append: if lp.appends > 0 {
            lp.decisions as f64 / lp.appends as f64
        } else {
            0.0
        },
        fsyncs,
        baseline_decisions_per_s: None,
        ratio_to_baseline: None,
        journal_events: 0,
        read_events_per_s: 0.0,
        registry_fold_events_per_s: 0.0,
        registry_fold_ratio_to_read: 0.0,
        scheduler_fold_events_per_s: 0.0,
        snapshot_every: 0,
        snapshot_seq: 0,
        snapshot_bytes: 0,
        snapshot_write_ms: 0.0,
        restart_open_ms: 0.0,
        restart_scratch_ms: 0.0,
        restart_snapshot_ms: 0.0,
        restart_tail_events: 0,
    };
    if let Some(groups) = lp.groups.take() {
        let b = lp.decisions as f64 / baseline_groups(groups, durability, &rt)?;
        report.baseline_decisions_per_s = Some(b);
        report.ratio_to_baseline = Some(report.decisions_per_s / b);
    }

    // Fill the journal for the restart measurement (not measured).
    lp.max_batch = FILL_BATCH;
    while journal.reader().head().seq.0 < args.restart_events {
        for _ in 0..FILL_BATCH {
            lp.step()?;
        }
    }
    lp.finish()?;
    drop(lp);
    drop(registry);

    // Fold rates over the whole journal, after one unmeasured read so
    // every pass finds the same caches; on the way, each view is
    // snapshotted where a journal-owning process would last have done it
    // (the last multiple of `snapshot_every`).
    let reader = journal.reader();
    let head = reader.head().seq;
    report.journal_events = head.0;
    let read_all = || -> Result<u64> {
        let mut n = 0u64;
        for e in reader.range(Seq(1), head) {
            e?;
            n += 1;
        }
        Ok(n)
    };
    read_all()?;
    let started = Instant::now();
    let read = read_all()?;
    report.read_events_per_s = read as f64 / started.elapsed().as_secs_f64();
    let every = crate::cli::config().journal.snapshot_every;
    let at = Seq(head.0.checked_div(every).map_or(0, |k| k * every));
    report.snapshot_every = every;
    report.snapshot_seq = at.0;
    let store = SnapshotStore::new(&dir);
    let (n, seconds, write_ms) = fold_and_snapshot::<AgentRegistry>(&reader, &store, at, head)?;
    report.registry_fold_events_per_s = n as f64 / seconds;
    report.registry_fold_ratio_to_read = report.registry_fold_events_per_s / report.read_events_per_s;
    report.snapshot_write_ms += write_ms;
    let (n, seconds, write_ms) = fold_and_snapshot::<SchedulerView>(&reader, &store, at, head)?;
    report.scheduler_fold_events_per_s = n as f64 / seconds;
    report.snapshot_write_ms += write_ms;
    if at > Seq::ZERO {
        for sub in [AgentRegistry::NAME, SchedulerView::NAME] {
            let path = dir.join("snapshots").join(sub).join(format!("{:020}.snap", at.0));
            report.snapshot_bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
        }
    }
    drop(reader);

    // Restart: reopen, then both views from scratch or from the snapshots.
    drop(journal);
    let no_snapshots = tempfile::tempdir().context("creating an empty snapshot directory")?;
    let restart = |store: &SnapshotStore| -> Result<(f64, f64, u64, AgentRegistry, SchedulerView)> {
        let started = Instant::now();
        let journal = open()?;
        let open_ms = started.elapsed().as_secs_f64() * 1e3;
        let reader = journal.reader();
        let head = reader.head().seq;
        let registry = state_at::<AgentRegistry>(&reader, store, head)?;
        let view = state_at::<SchedulerView>(&reader, store, head)?;
        let total_ms = started.elapsed().as_secs_f64() * 1e3;
        drop(journal);
        Ok((
            open_ms,
            total_ms,
            registry.folded_events.max(view.folded_events),
            registry.state,
            view.state,
        ))
    };
    // Alternate the two, three rounds each, and keep the medians: the first
    // reopen after a writer also pays for fjall's recovery.
    let (mut opens, mut scratch, mut snap) = (Vec::new(), Vec::new(), Vec::new());
    let mut tail = 0;
    for _ in 0..RESTART_ROUNDS {
        let (open_ms, ms, _, registry_a, view_a) = restart(&SnapshotStore::new(no_snapshots.path()))?;
        opens.push(open_ms);
        scratch.push(ms);
        let (open_ms, ms, t, registry_b, view_b) = restart(&store)?;
        opens.push(open_ms);
        snap.push(ms);
        tail = t;
        ensure!(
            registry_a == registry_b && view_a == view_b,
            "the views rebuilt from the snapshots differ from the views folded from scratch"
        );
    }
    report.restart_open_ms = median(&mut opens);
    report.restart_scratch_ms = median(&mut scratch);
    report.restart_snapshot_ms = median(&mut snap);
    report.restart_tail_events = tail;

    report.max_rss_mb = max_rss_mb();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_scheduler(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_scheduler(r: &SchedulerReport) {
    println!(
        "registered {} agents in {:.2} s; rss {} -> {} kB: {:.0} bytes/agent; peak rss {:.0} MB",
        r.agents,
        r.register_seconds,
        r.rss_before_kb,
        r.rss_after_register_kb,
        r.rss_bytes_per_agent,
        r.max_rss_mb
    );
    println!(
        "{} decisions ({} enqueue, {} finish, {} cancel) on {} slots, {} open, {}: {} facts, {} placements, {} preemptions, queue max {}",
        r.decisions,
        r.enqueues,
        r.finishes,
        r.cancels,
        r.slots,
        r.open_tasks,
        r.durability,
        r.facts,
        r.placements,
        r.preemptions,
        r.queued_max
    );
    println!(
        "decide p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} us; fold p50 {:.2} us, p99 {:.2} us",
        r.decide_latency_us_p50,
        r.decide_latency_us_p99,
        r.decide_latency_us_p999,
        r.decide_latency_us_max,
        r.fold_latency_us_p50,
        r.fold_latency_us_p99
    );
    println!(
        "end to end: {:.0} decisions/s, {:.0} events/s in {:.2} s; ack p50 {} us, p99 {} us, max {} us; {} appends ({:.1} decisions each), {} fsyncs",
        r.decisions_per_s,
        r.events_per_s,
        r.seconds,
        r.ack_latency_us_p50,
        r.ack_latency_us_p99,
        r.ack_latency_us_max,
        r.appends,
        r.mean_decisions_per_append,
        r.fsyncs
    );
    if let (Some(b), Some(ratio)) = (r.baseline_decisions_per_s, r.ratio_to_baseline) {
        println!("baseline (the same groups appended, no deciding): {b:.0} decisions/s; ratio {ratio:.2}");
    }
    println!(
        "fold over {} events: read {:.0}/s, registry {:.0}/s ({:.2} of read), scheduler {:.0}/s",
        r.journal_events,
        r.read_events_per_s,
        r.registry_fold_events_per_s,
        r.registry_fold_ratio_to_read,
        r.scheduler_fold_events_per_s
    );
    println!(
        "restart: open {:.1} ms; from scratch {:.1} ms; from the snapshots at {} ({} bytes, written in {:.1} ms) + {} events {:.1} ms",
        r.restart_open_ms,
        r.restart_scratch_ms,
        r.snapshot_seq,
        r.snapshot_bytes,
        r.snapshot_write_ms,
        r.restart_tail_events,
        r.restart_snapshot_ms
    );
}
