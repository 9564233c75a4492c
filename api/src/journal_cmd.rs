//! `stele journal …`, `stele events`, `stele tail`, `stele keys …` and
//! `stele demo`: thin wrappers that open the journal, call the library and
//! print human or JSON output.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use stele_journal::{
    Append, ArchivedEventBody, EventBody, EventRef, Journal, Options, Reader, RunId, Seq, StreamId,
};

use crate::cli::{EventsArgs, TailArgs};

/// Journal options from the `[journal]` section of the configuration.
pub fn journal_options() -> Options {
    let c = &crate::cli::config().journal;
    Options {
        durability: match c.durability {
            stele_engine::config::DurabilityConfig::Sync => stele_journal::Durability::Sync,
            stele_engine::config::DurabilityConfig::Buffered => stele_journal::Durability::Buffered,
        },
        checkpoint_interval: c.checkpoint_interval,
        ..Options::default()
    }
}

pub fn open_writer(data: &Path) -> Result<Journal> {
    Journal::open(data, journal_options()).with_context(|| format!("opening journal {}", data.display()))
}

/// The journal, or the process that owns it (reached over its control socket).
pub enum Owner {
    Local(Journal),
    Remote,
}

fn is_locked(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<stele_journal::Error>(),
        Some(stele_journal::Error::Locked { .. })
    )
}

pub fn writer_or_remote(data: &Path) -> Result<Owner> {
    match open_writer(data) {
        Ok(j) => Ok(Owner::Local(j)),
        Err(e) if is_locked(&e) && crate::control::socket_path(data).exists() => Ok(Owner::Remote),
        Err(e) => Err(e),
    }
}

fn receipt_of(v: &serde_json::Value) -> Result<stele_journal::Receipt> {
    let r = &v["receipt"];
    Ok(stele_journal::Receipt {
        seq: Seq(r["seq"].as_u64().context("reply without seq")?),
        hash: r["hash"].as_str().context("reply without hash")?.parse()?,
        at: r["at"].as_i64().context("reply without at")?,
    })
}

pub fn open_reader(data: &Path) -> Result<Reader> {
    Reader::open(data).with_context(|| format!("opening journal {}", data.display()))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn append(
    data: &Path,
    stream: &str,
    text: String,
    run: Option<String>,
    cause: Option<u64>,
    json: bool,
) -> Result<ExitCode> {
    let stream = StreamId::new(stream).context("--stream")?;
    if let Some(r) = &run {
        RunId::new(r.clone()).context("--run")?;
    }
    let r = match writer_or_remote(data)? {
        Owner::Local(journal) => journal.append_blocking(Append {
            stream,
            cause: cause.map(Seq),
            body: EventBody::Annotated { text, run },
        })?,
        Owner::Remote => {
            let req = crate::control::Request::Append {
                stream: stream.as_str().to_owned(),
                text,
                run,
                cause,
            };
            receipt_of(&crate::control::call(data, &req, |_| Ok(()))?)?
        }
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{} {}", r.seq, r.hash);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn checkpoint(data: &Path, json: bool) -> Result<ExitCode> {
    let r = match writer_or_remote(data)? {
        Owner::Local(journal) => runtime()?.block_on(journal.checkpoint())?,
        Owner::Remote => receipt_of(&crate::control::call(
            data,
            &crate::control::Request::Checkpoint,
            |_| Ok(()),
        )?)?,
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("checkpoint at seq {} ({})", r.seq, r.hash);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(data: &Path, json: bool) -> Result<ExitCode> {
    let reader = match Reader::open(data) {
        Ok(r) => r,
        Err(e) => {
            // Refusing to open is a verification failure, not a usage error.
            let inner = match &e {
                stele_journal::Error::Refused { source, .. } => source.as_ref(),
                other => other,
            };
            let seq = match inner {
                stele_journal::Error::Tampered { seq, .. } | stele_journal::Error::Corrupt { seq, .. } => {
                    Some(seq.0)
                }
                stele_journal::Error::Shortened { found, .. } => Some(found.0 + 1),
                stele_journal::Error::Io { .. } | stele_journal::Error::Locked { .. } => {
                    return Err(anyhow::Error::new(e).context(format!("opening journal {}", data.display())));
                }
                _ => None,
            };
            let msg = format!("{e}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "events": 0, "head_seq": null, "head_hash": null,
                        "first_bad_seq": seq, "error": msg, "events_per_s": 0.0})
                );
            } else {
                eprintln!("verify failed: {msg}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let head = reader.head().seq.0;
    let bar = if !json && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(head);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = |done: u64, _total: u64| bar.set_position(done);
    let report = stele_journal::verify(&reader, &progress);
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.ok {
        println!(
            "ok: {} events, {} checkpoints, {} keys; head {} {} ({:.0} events/s)",
            report.events,
            report.checkpoints,
            report.keys,
            report.head_seq,
            report.head_hash,
            report.events_per_s
        );
    } else {
        eprintln!(
            "verify failed at seq {}: {}",
            report.first_bad_seq.unwrap_or_default(),
            report.error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn rfc3339(at_ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(at_ns).unwrap_or(0));
    humantime::format_rfc3339_micros(t).to_string()
}

fn summary(e: &EventRef) -> String {
    match e.body() {
        ArchivedEventBody::Annotated { text, run } => match run.as_ref() {
            Some(r) => format!("[run {r}] {text}"),
            None => text.to_string(),
        },
        ArchivedEventBody::CheckpointSigned { size, root } => {
            format!("size {} root {}", size.to_native(), hex::encode(&root[..6]))
        }
        ArchivedEventBody::KeyRotated {
            previous,
            key,
            reason,
            ..
        } => format!("{} -> {} ({reason})", hex::encode(previous), hex::encode(key)),
        ArchivedEventBody::JournalOpened {
            software,
            key,
            recovered_head,
            ..
        } => format!(
            "{software}, key {}, recovered head {}",
            hex::encode(key),
            recovered_head.to_native()
        ),
        ArchivedEventBody::AgentRegistered {
            agent,
            definition_hash,
            ..
        } => format!("{agent} (definition {})", hex::encode(&definition_hash[..6])),
        ArchivedEventBody::AgentStateChanged {
            agent,
            from,
            to,
            reason,
        } => format!(
            "{agent}: {} -> {} ({reason})",
            from.to_native().name(),
            to.to_native().name()
        ),
        ArchivedEventBody::TaskQueued {
            task,
            agent,
            priority,
            memory_mb,
            cpu_millis,
            trigger,
        } => format!(
            "{task} for {agent} ({:?}, {} MB, {} mcpu; {trigger})",
            priority.to_native(),
            memory_mb.to_native(),
            cpu_millis.to_native()
        ),
        ArchivedEventBody::TaskPlaced { task, slot } => format!("{task} on slot {}", slot.to_native()),
        ArchivedEventBody::TaskPreempted { task, by } => format!("{task} suspended for {by}"),
        ArchivedEventBody::TaskFinished {
            task,
            outcome,
            detail,
        } => {
            format!("{task} {:?} ({detail})", outcome.to_native())
        }
        ArchivedEventBody::RuntimeStarted { pid, host, .. } => format!(
            "pid {}, {} slots, {}",
            pid.to_native(),
            host.slot_memory_mb.len(),
            host.placement
        ),
        ArchivedEventBody::TimerFired { agent, timer, tick } => {
            format!("{agent}: {timer} tick {}", tick.to_native())
        }
        ArchivedEventBody::AgentStopRequested { agent, reason } => format!("{agent} ({reason})"),
        ArchivedEventBody::ProcessStarted { task, agent, pid, .. } => {
            format!("{task} of {agent}: pid {}", pid.to_native())
        }
        ArchivedEventBody::ResourcesSampled { task, rss_kb, cpu_ms } => format!(
            "{task}: rss {} KiB, cpu {} ms",
            rss_kb.to_native(),
            cpu_ms.to_native()
        ),
        ArchivedEventBody::ProcessExited { task, exit } => {
            let how = match (exit.code.as_ref(), exit.signal.as_ref()) {
                (Some(c), _) => format!("exit {}", c.to_native()),
                (None, Some(s)) => format!("signal {}", s.to_native()),
                (None, None) => "ended".to_owned(),
            };
            let late = if exit.timed_out { ", timed out" } else { "" };
            format!("{task}: {how} after {} ms{late}", exit.wall_ms.to_native())
        }
        ArchivedEventBody::RunInterrupted { task, detail, .. } => format!("{task}: {detail}"),
        ArchivedEventBody::ShutdownStep { step, name, detail } => {
            format!("{}/6 {name}: {detail}", step.to_native())
        }
        ArchivedEventBody::HealthChecked {
            task,
            ok,
            failures,
            detail,
            ..
        } => {
            let verdict = if *ok { "healthy again" } else { "unhealthy" };
            format!("{task}: {verdict} ({} in a row): {detail}", failures.to_native())
        }
        ArchivedEventBody::RunFinished {
            run,
            outcome,
            answer,
            steps,
            ..
        } => format!("{run} {outcome} after {} steps: {answer}", steps.to_native()),
        ArchivedEventBody::PolicyDecided {
            point,
            verdict,
            detail,
            policies,
            ..
        } => {
            let ids: Vec<&str> = policies.iter().map(|p| p.as_str()).collect();
            format!("{point}: {verdict} [{}] {detail}", ids.join(", "))
        }
        ArchivedEventBody::ToolsOffered { run, step, offered } => offered_line(
            run,
            step.to_native(),
            &hex::encode(offered.list_hash),
            offered.tools.iter().map(|t| t.name.as_str()),
        ),
        _ => match e.to_event() {
            // Every other fact: its fields as compact JSON.
            Ok(ev) => {
                let mut v = serde_json::to_value(&ev.body).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.remove("kind");
                }
                v.to_string()
            }
            Err(err) => format!("(undecodable: {err})"),
        },
    }
}

/// A `ToolsOffered` in one line: the run, the step, how many tools, the
/// list hash (its first 12 hex digits) and the tools' names in order.
fn offered_line<'a>(
    run: &str,
    step: u32,
    list_hash_hex: &str,
    names: impl Iterator<Item = &'a str>,
) -> String {
    let names: Vec<&str> = names.collect();
    format!(
        "{run} step {step}: {} tool{} offered (list {}): {}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        list_hash_hex.get(..12).unwrap_or(list_hash_hex),
        names.join(", ")
    )
}

pub fn print_event(out: &mut impl Write, e: &EventRef, json: bool) -> Result<()> {
    if json {
        let ev = e.to_event()?;
        serde_json::to_writer(&mut *out, &ev)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:>8}  {}  {:<16} {:<18} {}  {}",
            e.seq(),
            rfc3339(e.at()),
            e.stream(),
            e.body().kind(),
            e.hash().short(),
            summary(e)
        )?;
    }
    Ok(())
}

/// Prints an event received as JSON from the owning process.
fn print_event_json(out: &mut impl Write, line: &str, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{line}")?;
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(line)?;
    let body = &v["body"];
    let summary = match body["text"].as_str() {
        Some(t) => match body["run"].as_str() {
            Some(r) => format!("[run {r}] {t}"),
            None => t.to_owned(),
        },
        None if body["kind"] == "tools_offered" => offered_line(
            body["run"].as_str().unwrap_or("?"),
            body["step"]
                .as_u64()
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0),
            body["list_hash"].as_str().unwrap_or("?"),
            body["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["name"].as_str()),
        ),
        None => {
            let mut b = body.clone();
            if let Some(o) = b.as_object_mut() {
                o.remove("kind");
            }
            b.to_string()
        }
    };
    writeln!(
        out,
        "{:>8}  {}  {:<16} {:<18} {}  {}",
        v["seq"].as_u64().unwrap_or(0),
        rfc3339(v["at"].as_i64().unwrap_or(0)),
        v["stream"].as_str().unwrap_or("?"),
        body["kind"].as_str().unwrap_or("?"),
        v["hash"].as_str().map_or("?", |h| &h[..h.len().min(12)]),
        summary
    )?;
    Ok(())
}

fn remote_events(data: &Path, request: &crate::control::Request, json: bool) -> Result<()> {
    let stdout = std::io::stdout();
    crate::control::call(data, request, |line| {
        let mut out = stdout.lock();
        print_event_json(&mut out, line, json)?;
        out.flush()?;
        Ok(())
    })?;
    Ok(())
}

pub fn events(data: &Path, args: &EventsArgs) -> Result<ExitCode> {
    if let Some(r) = &args.run {
        RunId::new(r.clone()).context("--run")?;
    }
    if let Some(s) = &args.stream {
        StreamId::new(s.clone()).context("--stream")?;
    }
    let reader = match open_reader(data) {
        Ok(r) => r,
        Err(e) if is_locked(&e) && crate::control::socket_path(data).exists() => {
            let req = crate::control::Request::Events {
                from: args.from,
                limit: args.limit,
                stream: args.stream.clone(),
                run: args.run.clone(),
                follow: false,
            };
            remote_events(data, &req, args.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    let from = Seq(args.from);
    let limit = usize::try_from(args.limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
    let iter: Box<dyn Iterator<Item = stele_journal::Result<EventRef>>> = match (&args.stream, &args.run) {
        (Some(s), _) => Box::new(reader.stream(&StreamId::new(s.clone()).context("--stream")?, from)),
        (None, Some(r)) => Box::new(reader.run(&RunId::new(r.clone()).context("--run")?, from)),
        (None, None) => Box::new(reader.range(from, Seq(u64::MAX))),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for e in iter.take(limit) {
        print_event(&mut out, &e?, args.json)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Snapshots kept per projection.
pub const SNAPSHOTS_KEPT: usize = 3;

/// `stele at SEQ --view NAME [--run RUN --step K]`: a view's state as of
/// a seq, from the newest usable snapshot plus the events after it (a
/// run's state from its own events).
pub fn at(
    data: &Path,
    seq: &str,
    view: &str,
    run: Option<&str>,
    step: Option<u32>,
    json: bool,
) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let at = crate::views::parse_seq(&reader, seq)?;
    let store = stele_projections::SnapshotStore::new(data);
    let state = crate::views::state_value(&reader, &store, view, at, run, step)?;
    if json {
        println!("{}", serde_json::to_string(&state.value)?);
    } else {
        eprintln!("view {view} at seq {} ({})", state.seq, state.how);
        println!("{}", serde_json::to_string_pretty(&state.value)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tail(data: &Path, args: &TailArgs) -> Result<ExitCode> {
    let journal = match writer_or_remote(data)? {
        Owner::Local(j) => j,
        Owner::Remote => {
            // Another process owns the journal: follow it through its socket.
            let req = crate::control::Request::Events {
                from: args.from.unwrap_or(0),
                limit: None,
                stream: None,
                run: None,
                follow: true,
            };
            match remote_events(data, &req, args.json) {
                Err(e) if e.to_string().contains("closed the control socket") => {
                    eprintln!("tail: the stele process owning {} stopped", data.display());
                }
                other => other?,
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    // The tailing process owns the data directory while it runs, and serves
    // the control socket so other commands can append meanwhile.
    let reader = journal.reader();
    let from = args.from.map_or_else(|| reader.head().seq.next(), Seq);
    // The owner keeps the projections' snapshots current as it goes.
    let store = stele_projections::SnapshotStore::new(data);
    let mut views = crate::views::OwnedViews::load(&reader, &store)?;
    let rt = runtime()?;
    rt.block_on(async {
        let _server = crate::control::Server::start(data, journal.clone())?;
        let mut follow = reader.follow(from.min(views.seq().next()));
        let stdout = std::io::stdout();
        loop {
            tokio::select! {
                e = follow.next() => match e {
                    Some(e) => {
                        let e = e?;
                        views.apply(&store, &e)?;
                        if e.seq() >= from {
                            let mut out = stdout.lock();
                            print_event(&mut out, &e, args.json)?;
                            out.flush()?;
                        }
                    }
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        anyhow::Ok(())
    })?;
    drop(journal);
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct KeyJson {
    id: String,
    public_key: String,
    since_seq: u64,
    active: bool,
}

fn key_list(reader: &Reader) -> Result<Vec<KeyJson>> {
    let keys = reader.keys()?;
    let n = keys.len();
    Ok(keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| KeyJson {
            id: k.id.to_hex(),
            public_key: hex::encode(k.public_key),
            since_seq: k.since.0,
            active: i + 1 == n,
        })
        .collect())
}

pub fn keys_show(data: &Path, json: bool) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let keys = key_list(&reader)?;
    if json {
        println!("{}", serde_json::to_string(&keys)?);
    } else {
        for k in keys {
            println!(
                "{}  {}  since seq {}{}",
                k.id,
                k.public_key,
                k.since_seq,
                if k.active { "  (active)" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn keys_export(data: &Path, out: Option<&Path>) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let doc = serde_json::json!({
        "format": "stele-public-keys-v1",
        "algorithm": "ed25519",
        "key_id": "first 8 bytes of BLAKE3(\"stele/key/v1\" || public_key)",
        "keys": key_list(&reader)?,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    match out {
        Some(p) => std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?,
        None => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn keys_rotate(data: &Path, reason: &str) -> Result<ExitCode> {
    match writer_or_remote(data)? {
        Owner::Local(journal) => {
            let (id, r) = runtime()?.block_on(journal.rotate_key(reason))?;
            println!("rotated to key {id} at seq {}", r.seq);
        }
        Owner::Remote => {
            let req = crate::control::Request::RotateKey {
                reason: reason.to_owned(),
            };
            let r = receipt_of(&crate::control::call(data, &req, |_| Ok(()))?)?;
            println!("rotated key at seq {}", r.seq);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn demo(data: &Path) -> Result<ExitCode> {
    println!("== stele demo on {}", data.display());
    {
        let journal = open_writer(data)?;
        let rt = runtime()?;
        rt.block_on(async {
            let run = "demo-run-1".to_owned();
            for (i, text) in [
                "operator starts a demo run",
                "agent asked for weather in Lisbon",
                "tool answered: 21C, clear",
            ]
            .iter()
            .enumerate()
            {
                let r = journal
                    .append(Append {
                        stream: StreamId::new("demo")?,
                        cause: None,
                        body: EventBody::Annotated {
                            text: (*text).to_owned(),
                            run: (i > 0).then(|| run.clone()),
                        },
                    })
                    .await?;
                println!("appended seq {} {}", r.seq, r.hash.short());
            }
            let cp = journal.checkpoint().await?;
            println!("checkpoint at seq {}", cp.seq);
            anyhow::Ok(())
        })?;
    }
    let reader = open_reader(data)?;
    println!("== events");
    let mut out = std::io::stdout().lock();
    for e in reader.range(Seq(1), Seq(u64::MAX)) {
        print_event(&mut out, &e?, false)?;
    }
    drop(out);
    println!("== verify");
    let report = stele_journal::verify(&reader, &|_, _| {});
    if !report.ok {
        bail!("verify failed: {:?}", report.error);
    }
    println!(
        "ok: {} events verified ({:.0}/s)",
        report.events, report.events_per_s
    );
    println!("== prove and check inclusion of the newest note");
    let cp = reader.checkpoints()?.last().copied().context("no checkpoint")?;
    let proof = crate::proof::inclusion(&reader, Seq(cp.size), None)?;
    crate::proof::check_value(&proof, None)?;
    println!(
        "event {} is in the checkpointed tree of {} events (root {})",
        cp.size,
        cp.size,
        cp.root.short()
    );
    Ok(ExitCode::SUCCESS)
}
