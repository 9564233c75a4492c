//! `stele replay`, `stele diff`, `stele fork`, `stele policy backtest` and
//! `stele bench at`: thin wrappers over `stele_replay` that open the
//! journal, load the policies and the configuration, and print human or
//! JSON output. (`stele at` is in `journal_cmd`, `stele step` in `step`.)

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use stele_engine::policy::PolicyGate;
use stele_journal::{Reader, Seq};
use stele_projections::{RunsView, SnapshotStore, state_at};
use stele_replay::diff::render_table;
use stele_replay::run::Ended;
use stele_replay::{Divergence, Edit, Report, Settings};

use crate::journal_cmd::{open_reader, open_writer, runtime};

/// Exit code of a replay that diverged, a backtest that flips verdicts.
pub const DIFFERENT: u8 = 1;

/// `stele replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The run to replay (`run-<n>`; list them with `stele runs`).
    pub run: String,
    /// The Cedar policy directory the gate decides with (the current
    /// deciders: a changed policy set is a changed decider). Given again,
    /// the later ones are sets the run also ran under (it spans a `stele
    /// policy reload`): a step whose decisions the journal says one of
    /// them made (by set hash) is decided again under it.
    #[arg(long, default_value = "fixtures/policies")]
    pub policies: Vec<PathBuf>,
    /// One JSON object (the report).
    #[arg(long)]
    pub json: bool,
}

/// `stele diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The earlier seq (or `head`).
    pub from: String,
    /// The later seq (or `head`).
    pub to: String,
    /// The view (see `stele at --help`).
    #[arg(long, default_value = "journal")]
    pub view: String,
    /// With `--view run`: the run.
    #[arg(long)]
    pub run: Option<String>,
    /// One JSON object: `{view, from, to, changes: [{path, before, after}]}`.
    #[arg(long)]
    pub json: bool,
}

/// `stele fork`.
#[derive(Debug, clap::Args)]
pub struct ForkArgs {
    /// The run to fork from.
    pub run: String,
    /// The seq of its state to start from: its journaled inputs up to here
    /// are fed again, the next one is replaced (--edit) or asked live.
    #[arg(long)]
    pub at: u64,
    /// A JSON file replacing the first journaled input after --at: a
    /// completion `{"content", "tool_calls"?: [{"name", "arguments"}]}` or
    /// a tool result `{"ok"?, "output"}`, whichever that input is.
    #[arg(long)]
    pub edit: Option<PathBuf>,
    /// The Cedar policy directory.
    #[arg(long, default_value = "fixtures/policies")]
    pub policies: PathBuf,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `stele policy backtest`.
#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// The new policy set (a directory as `stele policy check` reads it).
    #[arg(long)]
    pub policies: PathBuf,
    /// First seq (default 1).
    #[arg(long)]
    pub from: Option<u64>,
    /// Last seq (default: the head).
    #[arg(long)]
    pub to: Option<u64>,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `stele bench at`.
#[derive(Debug, clap::Args)]
pub struct BenchAtArgs {
    /// Events in the journal measured.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// A snapshot every this many events.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// `at` calls measured (random seqs).
    #[arg(long, default_value_t = 50)]
    pub samples: u64,
    /// Folds from scratch measured (the baseline; each folds up to the seq).
    #[arg(long, default_value_t = 5)]
    pub baseline_samples: u64,
    /// One JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The configuration's part of a run's spec.
pub fn settings() -> Settings {
    let config = crate::cli::config();
    let cfg = &config.inference;
    Settings {
        default_model: cfg.model.clone(),
        max_tokens: cfg.max_tokens,
        max_attempts: cfg.max_retries + 1,
        bus_builtins: config.bus.policies.is_some(),
    }
}

/// The configured MCP servers (`[mcp] servers`), whose journaled discovery
/// gives a replayed run its MCP tools (`RecordedRun::load_mcp`).
pub fn mcp_servers() -> Vec<String> {
    crate::cli::config()
        .mcp
        .servers
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

fn load_gate(dir: &Path) -> Result<Arc<PolicyGate>> {
    Ok(Arc::new(PolicyGate::load(dir).with_context(|| {
        format!("loading the policies of {}", dir.display())
    })?))
}

/// `stele replay RUN`.
pub fn replay(data: &Path, args: &ReplayArgs) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let mut recorded = stele_replay::load_run(&reader, &SnapshotStore::new(data), &args.run)?;
    recorded.load_mcp(&reader, &mcp_servers())?;
    let gates = args
        .policies
        .iter()
        .map(|dir| load_gate(dir))
        .collect::<Result<Vec<_>>>()?;
    let report = stele_replay::replay_under(&recorded, &gates, &settings(), None)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_report(&report));
    }
    Ok(if report.is_identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(DIFFERENT)
    })
}

/// A replay report for people.
pub fn render_report(r: &Report) -> String {
    let Some(d) = &r.divergence else {
        let parked = if r.awaiting.is_empty() {
            String::new()
        } else {
            format!("; it still awaits approval of {}", r.awaiting.join(", "))
        };
        return format!(
            "{}: identical — {} facts reproduced by the current deciders, no effect performed{parked}\n",
            r.run, r.identical
        );
    };
    render_divergence(&r.run, r.recorded, d)
}

fn render_divergence(run: &str, recorded: usize, d: &Divergence) -> String {
    let at = d
        .seq
        .map_or_else(|| "after its last event".to_owned(), |s| format!("at seq {s}"));
    let mut out = format!(
        "{run} diverges {at} (fact {} of {recorded}): {}\n",
        d.index + 1,
        d.note
    );
    if d.fields.is_empty() {
        out.push_str("  (no field differs)\n");
    } else {
        out.push_str(&render_table(&d.fields, "recorded", "replayed", 60));
    }
    let line = |v: Option<&serde_json::Value>| v.map_or_else(|| "(none)".to_owned(), ToString::to_string);
    out.push_str(&format!("recorded  {}\n", line(d.recorded.as_ref())));
    out.push_str(&format!("replayed  {}\n", line(d.replayed.as_ref())));
    out.push_str(&format!(
        "path to it ({} events of the run before it{}):\n",
        d.path.len(),
        if d.path_omitted > 0 {
            format!(", {} earlier ones not shown", d.path_omitted)
        } else {
            String::new()
        }
    ));
    for p in &d.path {
        out.push_str(&format!("  {:>8}  {:<20} {}\n", p.seq, p.kind, p.summary));
    }
    out
}

/// `stele diff FROM TO --view NAME`.
pub fn diff(data: &Path, args: &DiffArgs) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let store = SnapshotStore::new(data);
    let from = crate::views::parse_seq(&reader, &args.from)?;
    let to = crate::views::parse_seq(&reader, &args.to)?;
    let a = crate::views::state_value(&reader, &store, &args.view, from, args.run.as_deref(), None)?;
    let b = crate::views::state_value(&reader, &store, &args.view, to, args.run.as_deref(), None)?;
    let changes = stele_replay::diff_values(&a.value, &b.value);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"view": args.view, "from": from.0, "to": to.0, "changes": changes})
        );
    } else if changes.is_empty() {
        println!("view {} is the same at seq {from} and seq {to}", args.view);
    } else {
        println!(
            "view {}: {} change{} from seq {from} to seq {to}",
            args.view,
            changes.len(),
            if changes.len() == 1 { "" } else { "s" }
        );
        print!(
            "{}",
            render_table(&changes, &format!("at {from}"), &format!("at {to}"), 60)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `stele fork RUN --at SEQ [--edit FILE]`.
pub fn fork(data: &Path, args: &ForkArgs) -> Result<ExitCode> {
    let journal = open_writer(data)?;
    let reader = journal.reader();
    let store = SnapshotStore::new(data);
    let origin = stele_replay::load_run(&reader, &store, &args.run)?;
    let at = Seq(args.at);
    if at > reader.head().seq {
        anyhow::bail!("seq {at} is beyond the journal's head {}", reader.head().seq);
    }
    let edit = args
        .edit
        .as_deref()
        .map(|p| Edit::load(p, &origin, at))
        .transpose()?;
    let new_run = state_at::<RunsView>(&reader, &store, reader.head().seq)?
        .state
        .next_run();
    let (live_driver, _) = crate::run_cmd::driver(&origin.definition, &args.policies, &journal)?;
    let live = stele_replay::fork::Live {
        knowledge: Some(crate::context_cmd::step_recall(
            &journal,
            &args.policies,
            &live_driver,
        )?),
        provider: live_driver.provider,
        tools: live_driver.tools,
        gate: live_driver.gate,
        started: None,
    };
    let outcome = runtime()?.block_on(stele_replay::fork(
        &origin,
        at,
        edit,
        &new_run,
        &settings(),
        live,
        &journal,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!(
            "{} forked from {} at seq {}{} ({} journaled inputs fed again)",
            outcome.run,
            outcome.origin,
            outcome.at,
            outcome
                .edit_hash
                .as_ref()
                .map(|h| format!(" with an edit (blake3 {})", &h[..12.min(h.len())]))
                .unwrap_or_default(),
            outcome.served
        );
        match &outcome.ended {
            Ended::Finished {
                outcome: how,
                answer,
                steps,
            } => {
                println!("{} {how} after {steps} steps", outcome.run);
                println!("{answer}");
            }
            Ended::Parked { awaiting } => {
                for (call, reason) in awaiting {
                    println!("{} awaits approval of {call}: {reason}", outcome.run);
                }
            }
        }
        println!("(the whole run: stele events --run {})", outcome.run);
    }
    Ok(match &outcome.ended {
        Ended::Finished { outcome, .. } if outcome == "completed" => ExitCode::SUCCESS,
        Ended::Finished { .. } => ExitCode::from(1),
        Ended::Parked { .. } => ExitCode::from(crate::run_cmd::PARKED),
    })
}

/// `stele policy backtest --policies DIR`.
pub fn backtest(data: &Path, args: &BacktestArgs) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let gate = PolicyGate::load(&args.policies)
        .with_context(|| format!("loading the policies of {}", args.policies.display()))?;
    let from = Seq(args.from.unwrap_or(1).max(1));
    let to = args.to.map_or(reader.head().seq, Seq).min(reader.head().seq);
    let bt = stele_replay::backtest(&reader, &gate, from, to)?;
    let changed = !bt.flips.is_empty() || !bt.unreadable.is_empty();
    if args.json {
        println!("{}", serde_json::to_string(&bt)?);
    } else {
        for f in &bt.flips {
            println!(
                "seq {:>8}  {:<9} {} → {}",
                f.seq,
                f.run.as_deref().unwrap_or("-"),
                f.old_verdict,
                f.new_verdict
            );
            println!("    request   {}", f.request);
            println!(
                "    policies  [{}] → [{}]",
                f.old_policies.join(", "),
                f.new_policies.join(", ")
            );
            if !f.new_detail.is_empty() {
                println!("    now       {}", f.new_detail);
            }
        }
        for u in &bt.unreadable {
            println!("seq {:>8}  cannot be evaluated again: {}", u.seq, u.reason);
        }
        println!(
            "{} of {} recorded decisions (seq {}..={}) flip under {} (policy set {}){}",
            bt.flips.len(),
            bt.evaluated,
            bt.from,
            bt.to,
            args.policies.display(),
            &bt.policy_set[..12.min(bt.policy_set.len())],
            if bt.unreadable.is_empty() {
                String::new()
            } else {
                format!("; {} could not be evaluated", bt.unreadable.len())
            }
        );
    }
    Ok(if changed {
        ExitCode::from(DIFFERENT)
    } else {
        ExitCode::SUCCESS
    })
}

/// `stele bench at`: `at` a random seq of a journal of `--events` events
/// with a snapshot every `--snapshot-every`, against folding from scratch.
#[allow(clippy::cast_precision_loss)] // figures for people
pub fn bench_at(dir: Option<&Path>, args: &BenchAtArgs) -> Result<ExitCode> {
    use std::time::Instant;

    use stele_journal::{Append, Durability, EventBody, Journal, Options, StreamId};
    use stele_projections::{JournalView, Projection};

    let tmp = tempfile::tempdir()?;
    let data = dir.map_or_else(|| tmp.path().join("bench-at"), Path::to_path_buf);
    if data.join("db").exists() {
        anyhow::bail!(
            "{} already holds a journal; bench at needs a fresh directory",
            data.display()
        );
    }
    let journal = Journal::open(
        &data,
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )?;
    let rt = runtime()?;
    let t = Instant::now();
    let streams: Vec<StreamId> = (0..64)
        .map(|i| StreamId::new(format!("bench:{i}")))
        .collect::<std::result::Result<_, _>>()?;
    let mut appended = reader_head(&journal.reader());
    while appended < args.events {
        let n = (args.events - appended).min(4096);
        let batch = (0..n)
            .map(|i| Append {
                stream: streams[usize::try_from((appended + i) % 64).unwrap_or(0)].clone(),
                cause: None,
                body: EventBody::Annotated {
                    text: format!("note {}", appended + i),
                    run: None,
                },
            })
            .collect();
        rt.block_on(journal.append_many(batch))?;
        appended = reader_head(&journal.reader());
    }
    let fill_s = t.elapsed().as_secs_f64();
    let reader = journal.reader();
    let head = reader.head().seq;
    // Snapshots every K events, all kept (a long-lived owner keeps the
    // newest few; `at` is this fast where one is within K events).
    let store = SnapshotStore::new(&data);
    let t = Instant::now();
    let mut view = JournalView::default();
    for e in reader.range(Seq(1), head) {
        let e = e?;
        view.apply(&e);
        if args.snapshot_every > 0 && e.seq().0.is_multiple_of(args.snapshot_every) {
            store.save(e.seq(), e.hash(), &view)?;
        }
    }
    let snapshot_s = t.elapsed().as_secs_f64();
    // Random seqs from a fixed-seed generator (splitmix64), the same each run.
    let mut x: u64 = 0x5EED;
    let mut next_seq = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Seq(1 + (z ^ (z >> 31)) % head.0)
    };
    let mut with_snapshots = Vec::new();
    for _ in 0..args.samples {
        let s = next_seq();
        let t = Instant::now();
        let f = state_at::<JournalView>(&reader, &store, s)?;
        with_snapshots.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(f.seq, s, "state_at answers for the seq asked");
    }
    let empty = SnapshotStore::new(&tmp.path().join("no-snapshots"));
    let mut scratch = Vec::new();
    for _ in 0..args.baseline_samples {
        let s = next_seq();
        let t = Instant::now();
        let _ = state_at::<JournalView>(&reader, &empty, s)?;
        scratch.push((t.elapsed().as_secs_f64() * 1e3, s.0));
    }
    journal.close();
    with_snapshots.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() - 1) as f64 * p).round();
        v[usize::try_from(i as u64).unwrap_or(0).min(v.len() - 1)]
    };
    let p50 = pct(&with_snapshots, 0.5);
    let max = with_snapshots.last().copied().unwrap_or(0.0);
    // The baseline per event folded, scaled to the mean seq asked.
    let per_event_ms =
        scratch.iter().map(|(ms, s)| ms / *s as f64).sum::<f64>() / scratch.len().max(1) as f64;
    let scratch_mean_ms = scratch.iter().map(|(ms, _)| ms).sum::<f64>() / scratch.len().max(1) as f64;
    let full_fold_ms = per_event_ms * head.0 as f64;
    let out = serde_json::json!({
        "events": head.0,
        "snapshot_every": args.snapshot_every,
        "fill_s": fill_s,
        "snapshotting_s": snapshot_s,
        "at_ms_p50": p50,
        "at_ms_max": max,
        "scratch_ms_mean": scratch_mean_ms,
        "scratch_ms_per_1m_events": per_event_ms * 1e6,
        "speedup_p50_vs_full_fold": full_fold_ms / p50.max(1e-9),
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "journal of {} events, a snapshot every {} (filled in {fill_s:.1} s, snapshots written in {snapshot_s:.1} s)",
            head.0, args.snapshot_every
        );
        println!(
            "at (with snapshots), {} random seqs: p50 {p50:.2} ms, max {max:.2} ms",
            args.samples
        );
        println!(
            "fold from scratch, {} random seqs: mean {scratch_mean_ms:.1} ms ({:.0} ms per 1M events)",
            args.baseline_samples,
            per_event_ms * 1e6
        );
        println!(
            "at is {:.0}x faster than folding the whole journal from scratch",
            full_fold_ms / p50.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn reader_head(reader: &Reader) -> u64 {
    reader.head().seq.0
}
