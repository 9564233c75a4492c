//! `stele bench journal`: W concurrent appenders of ~200-byte `Annotated`
//! events, ack latency percentiles, fsyncs and mean group size; with
//! `--baseline`, plain fjall batch writes of the same record size, batch size
//! and durability measured in the same run, and the ratio.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use stele_journal::{Append, Durability, EventBody, Journal, Options, StreamId};

use crate::cli::{BenchJournalArgs, DurabilityArg};

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
    let durability = match args.durability {
        DurabilityArg::Sync => Durability::Sync,
        DurabilityArg::Buffered => Durability::Buffered,
    };
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
