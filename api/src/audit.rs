//! `stele audit export|verify|report`: compliance exports of the journal.
//!
//! The bundle itself (its files, proofs and offline verifier) is
//! `stele_journal::export`; this module opens the journal (or a private
//! snapshot of it while another process owns it), makes the checkpoint an
//! export needs, prints progress and results, and holds the two things that
//! interpret events for outsiders: the OCSF mapping ([`OCSF_MAP`], one
//! table) and the framework reports ([`FRAMEWORKS`]).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stele_journal::export::{self, Attachment, BundleEvent, Selection, VerifyOptions};
use stele_journal::{ArchivedEventBody, EventBody, EventRef, Reader, Seq};

use crate::cli::{AuditCmd, AuditExportArgs, AuditFormat, AuditReportArgs, AuditVerifyArgs, Framework};

pub fn run(data: &Path, cmd: &AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Export(a) => export_cmd(data, a),
        AuditCmd::Verify(a) => verify_cmd(a),
        AuditCmd::Report(a) => report_cmd(data, a),
    }
}

// ---------------------------------------------------------------------------
// Opening the journal, owned or not

/// A reader of the journal, and what keeps its private copy alive.
struct Opened {
    reader: Reader,
    _snapshot: Option<Snapshot>,
    /// Another process owns the data directory.
    owned: bool,
}

fn is_locked(e: &stele_journal::Error) -> bool {
    matches!(e, stele_journal::Error::Locked { .. })
}

/// Opens the journal for reading. When another stele process owns the data
/// directory (`stele up`, `stele tail`), reads a private snapshot of it.
fn open(data: &Path) -> Result<Opened> {
    match Reader::open(data) {
        Ok(reader) => Ok(Opened {
            reader,
            _snapshot: None,
            owned: false,
        }),
        Err(e) if is_locked(&e) => {
            let mut last = None;
            for _ in 0..SNAPSHOT_ATTEMPTS {
                let snap = Snapshot::take(data)?;
                match Reader::open(&snap.dir) {
                    Ok(reader) => {
                        return Ok(Opened {
                            reader,
                            _snapshot: Some(snap),
                            owned: true,
                        });
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(anyhow::anyhow!(
                "{} is in use by another stele process, and no consistent snapshot of it could be read ({})",
                data.display(),
                last.map_or_else(String::new, |e| e.to_string())
            ))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("opening journal {}", data.display()))),
    }
}

/// Snapshots tried before giving up (a copy taken while the owner flushes
/// or compacts can be inconsistent; the journal's open checks refuse it).
const SNAPSHOT_ATTEMPTS: usize = 5;

/// A private copy of a data directory another process owns: `HEAD` first
/// (so the copy is never behind it), then `db/` with its immutable table
/// files hard-linked and everything else copied. Only files are read from
/// the owner's directory; the copy lives beside it as
/// `.read-copy-<pid>-audit-<n>` (removed on drop; stale ones are removed by
/// the next read-only open) and is then opened like any journal: fjall
/// recovers it, and the open's checks (meta head, head file, tail chain and
/// signatures) refuse a copy torn by a concurrent flush, which is retried.
struct Snapshot {
    dir: PathBuf,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Snapshot {
    fn take(data: &Path) -> Result<Snapshot> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(".read-copy-{}-audit-{n}", std::process::id());
        let dir = data.join(&name);
        let snap = match Snapshot::fill(data, dir) {
            Ok(s) => s,
            Err(_) => Snapshot::fill(data, std::env::temp_dir().join(&name))?,
        };
        Ok(snap)
    }

    fn fill(data: &Path, dir: PathBuf) -> Result<Snapshot> {
        let _ = std::fs::remove_dir_all(&dir);
        let snap = Snapshot { dir };
        std::fs::create_dir_all(&snap.dir).with_context(|| format!("creating {}", snap.dir.display()))?;
        let head = data.join("HEAD");
        std::fs::copy(&head, snap.dir.join("HEAD")).with_context(|| format!("copying {}", head.display()))?;
        copy_tree(&data.join("db"), &snap.dir.join("db"), false)?;
        Ok(snap)
    }
}

fn copy_tree(from: &Path, to: &Path, immutable: bool) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let Ok(ty) = entry.file_type() else { continue };
        let name = entry.file_name();
        if ty.is_dir() {
            copy_tree(&src, &dst, immutable || name == "tables" || name == "blobs")?;
        } else if name == "lock" {
            std::fs::File::create(&dst)?;
        } else if immutable {
            // Written once, never changed in place; a compaction may delete
            // one meanwhile, which the open then reports.
            if std::fs::hard_link(&src, &dst).is_err() {
                let _ = std::fs::copy(&src, &dst);
            }
        } else {
            match std::fs::copy(&src, &dst) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("copying {}", src.display())),
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// export

fn progress_bar(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} events ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

fn parse_redact(rules: &[String]) -> Result<Vec<String>> {
    rules
        .iter()
        .map(|r| match r.split_once('=') {
            Some(("stream", p)) if !p.is_empty() => Ok(p.to_owned()),
            Some(("stream", _)) => bail!("--redact {r:?}: the stream prefix is empty"),
            _ => bail!("--redact {r:?}: expected stream=PREFIX (e.g. --redact stream=agent:billing)"),
        })
        .collect()
}

fn selection(a: &AuditExportArgs) -> Result<Selection> {
    Ok(match (a.from, a.to, &a.run, &a.agent) {
        (Some(from), Some(to), None, None) => Selection::Range { from, to },
        (None, None, Some(run), None) => Selection::Run { run: run.clone() },
        (None, None, None, Some(agent)) => Selection::Agent { agent: agent.clone() },
        _ => bail!("choose one of --from SEQ --to SEQ, --run RUN or --agent NAME"),
    })
}

/// Appends a checkpoint: as the owner when the directory is free, else
/// through the owning process's control socket.
fn make_checkpoint(data: &Path, owned: bool) -> Result<u64> {
    if owned {
        let v = crate::control::call(data, &crate::control::Request::Checkpoint, |_| Ok(()))
            .context("asking the owning process for a checkpoint")?;
        return v["receipt"]["seq"]
            .as_u64()
            .context("checkpoint reply without seq");
    }
    let journal = crate::journal_cmd::open_writer(data)?;
    let r = crate::journal_cmd::runtime()?.block_on(journal.checkpoint())?;
    journal.close();
    Ok(r.seq.0)
}

fn export_cmd(data: &Path, a: &AuditExportArgs) -> Result<ExitCode> {
    let sel = selection(a)?;
    let redact = parse_redact(&a.redact)?;
    let mut opened = open(data)?;
    let mut plan = export::plan(&opened.reader, sel.clone())?;
    let mut made = None;
    if export::covering_checkpoint(&opened.reader, plan.last)?.is_none() {
        // An export is proven against a signed checkpoint: make one.
        let owned = opened.owned;
        drop(opened);
        let seq = make_checkpoint(data, owned).map_err(|e| {
            anyhow::anyhow!(
                "no checkpoint covers event {} and none could be made here ({e:#}); make one with `stele --data {} journal checkpoint` and export again",
                plan.last,
                data.display()
            )
        })?;
        made = Some(seq);
        opened = open(data)?;
        plan = export::plan(&opened.reader, sel)?;
    }
    let ocsf = Ocsf;
    let attachments: Vec<&dyn Attachment> = match a.format {
        AuditFormat::Jsonl => vec![],
        AuditFormat::Ocsf => vec![&ocsf],
    };
    let bar = progress_bar(plan.count, "exporting", a.json);
    let progress = |done: u64, _: u64| bar.set_position(done);
    let summary = export::write_bundle(&opened.reader, &plan, &redact, &attachments, &a.out, &progress)?;
    bar.finish_and_clear();
    let m = &summary.manifest;
    if a.json {
        println!(
            "{}",
            json!({
                "ok": true,
                "out": summary.out.display().to_string(),
                "selection": m.selection,
                "events": m.events,
                "checkpoint": m.checkpoint,
                "latest_checkpoint": m.latest_checkpoint,
                "checkpoint_made": made,
                "keys": m.keys,
                "files": m.files,
                "events_per_s": summary.events_per_s,
            })
        );
    } else {
        if let Some(seq) = made {
            println!("made checkpoint at seq {seq} (the newest did not cover the export)");
        }
        println!(
            "exported {} ({} events{}, seqs {}..={}) to {}; proven against checkpoint {} (tree of {}), consistent with the latest (tree of {}); {:.0} events/s",
            m.selection,
            m.events.count,
            if m.events.redacted > 0 {
                format!(", {} redacted", m.events.redacted)
            } else {
                String::new()
            },
            m.events.first_seq,
            m.events.last_seq,
            summary.out.display(),
            m.checkpoint.seq,
            m.checkpoint.size,
            m.latest_checkpoint.size,
            summary.events_per_s
        );
        println!("check it offline: stele audit verify {}", summary.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// verify

fn verify_cmd(a: &AuditVerifyArgs) -> Result<ExitCode> {
    let trusted_key = match &a.trusted_key {
        Some(k) => Some(
            hex::decode(k)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .with_context(|| format!("--trusted-key {k:?} is not a 32-byte hex Ed25519 public key"))?,
        ),
        None => None,
    };
    let total = std::fs::read_to_string(a.dir.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["events"]["count"].as_u64())
        .unwrap_or(0);
    let bar = progress_bar(total, "verifying", a.json);
    let progress = |done: u64, _: u64| bar.set_position(done);
    let ocsf = Ocsf;
    let attachments: [&dyn Attachment; 1] = [&ocsf];
    let report = export::verify_bundle(
        &a.dir,
        &VerifyOptions {
            trusted_key,
            attachments: &attachments,
            progress: &progress,
        },
    );
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.ok {
        println!(
            "ok: {} — {} events{} verified (seqs {}..={}): hashes, signatures of {} key(s) from the journal's first key {}, membership in checkpoint tree {} (root {}), consistent with tree {} signed by {}; {:.0} events/s",
            report.selection.as_deref().unwrap_or("?"),
            report.events,
            if report.redacted > 0 {
                format!(" ({} redacted: authenticity and position only)", report.redacted)
            } else {
                String::new()
            },
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.keys,
            short(report.root_key.as_deref()),
            report.checkpoint_size.unwrap_or(0),
            short(report.checkpoint_root.as_deref()),
            report.latest_size.unwrap_or(0),
            short(report.latest_key.as_deref()),
            report.events_per_s
        );
        for f in &report.attachments_unchecked {
            println!("note: {f} was checked by its BLAKE3 only (this build does not render it)");
        }
        if report.membership_unchecked > 0 {
            println!(
                "note: {} events' membership in the selection could not be checked (a redacted event hides what ties them to it)",
                report.membership_unchecked
            );
        }
    } else {
        eprintln!(
            "bundle verification failed: {}",
            report.error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn short(h: Option<&str>) -> &str {
    h.map_or("?", |h| &h[..h.len().min(12)])
}

// ---------------------------------------------------------------------------
// OCSF

/// OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// Version of [`OCSF_MAP`]; a bundle records it, and a verifier re-renders
/// `ocsf.jsonl` only with the same mapping.
pub const OCSF_MAPPING: u32 = 1;

/// An OCSF event class.
#[derive(Debug, Clone, Copy)]
pub struct OcsfClass {
    pub class_uid: u32,
    pub class_name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
}

pub const PROCESS_ACTIVITY: OcsfClass = OcsfClass {
    class_uid: 1007,
    class_name: "Process Activity",
    category_uid: 1,
    category_name: "System Activity",
};
pub const SCHEDULED_JOB_ACTIVITY: OcsfClass = OcsfClass {
    class_uid: 1006,
    class_name: "Scheduled Job Activity",
    category_uid: 1,
    category_name: "System Activity",
};
pub const APPLICATION_LIFECYCLE: OcsfClass = OcsfClass {
    class_uid: 6002,
    class_name: "Application Lifecycle",
    category_uid: 6,
    category_name: "Application Activity",
};
pub const API_ACTIVITY: OcsfClass = OcsfClass {
    class_uid: 6003,
    class_name: "API Activity",
    category_uid: 6,
    category_name: "Application Activity",
};
/// For policy verdicts once the policy gate records them: `policy_decided`
/// → activity 1 Access Grant / 2 Access Deny. Not produced by this build
/// yet; the row joins [`OCSF_MAP`] with the event.
#[allow(dead_code)]
pub const WEB_RESOURCE_ACCESS_ACTIVITY: OcsfClass = OcsfClass {
    class_uid: 6004,
    class_name: "Web Resource Access Activity",
    category_uid: 6,
    category_name: "Application Activity",
};
pub const BASE_EVENT: OcsfClass = OcsfClass {
    class_uid: 0,
    class_name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};

/// The activity of a row: fixed, or chosen from the body.
#[derive(Debug, Clone, Copy)]
pub enum OcsfActivity {
    Fixed(u32, &'static str),
    /// `agent_state_changed`: install (→ initializing), start (→ running),
    /// stop (→ suspended, failed), remove (→ terminated), other (→ ready).
    ByNewState,
}

/// The mapping of event kinds to OCSF classes, in one place (README
/// "Audit exports" shows it as a table). `api` is the operation of an API
/// Activity record.
pub const OCSF_MAP: &[(&str, OcsfClass, OcsfActivity, &str)] = &[
    (
        "process_started",
        PROCESS_ACTIVITY,
        OcsfActivity::Fixed(1, "Launch"),
        "",
    ),
    (
        "process_exited",
        PROCESS_ACTIVITY,
        OcsfActivity::Fixed(2, "Terminate"),
        "",
    ),
    (
        "run_interrupted",
        PROCESS_ACTIVITY,
        OcsfActivity::Fixed(2, "Terminate"),
        "",
    ),
    (
        "task_queued",
        SCHEDULED_JOB_ACTIVITY,
        OcsfActivity::Fixed(1, "Create"),
        "",
    ),
    (
        "task_placed",
        SCHEDULED_JOB_ACTIVITY,
        OcsfActivity::Fixed(6, "Start"),
        "",
    ),
    (
        "task_preempted",
        SCHEDULED_JOB_ACTIVITY,
        OcsfActivity::Fixed(5, "Disable"),
        "",
    ),
    (
        "task_finished",
        SCHEDULED_JOB_ACTIVITY,
        OcsfActivity::Fixed(2, "Update"),
        "",
    ),
    (
        "timer_fired",
        SCHEDULED_JOB_ACTIVITY,
        OcsfActivity::Fixed(99, "Other"),
        "",
    ),
    (
        "agent_registered",
        API_ACTIVITY,
        OcsfActivity::Fixed(1, "Create"),
        "agent.register",
    ),
    (
        "agent_stop_requested",
        API_ACTIVITY,
        OcsfActivity::Fixed(4, "Delete"),
        "agent.stop",
    ),
    (
        "annotated",
        API_ACTIVITY,
        OcsfActivity::Fixed(1, "Create"),
        "journal.append",
    ),
    (
        "key_rotated",
        API_ACTIVITY,
        OcsfActivity::Fixed(3, "Update"),
        "keys.rotate",
    ),
    (
        "checkpoint_signed",
        API_ACTIVITY,
        OcsfActivity::Fixed(1, "Create"),
        "journal.checkpoint",
    ),
    (
        "agent_state_changed",
        APPLICATION_LIFECYCLE,
        OcsfActivity::ByNewState,
        "",
    ),
    (
        "journal_opened",
        APPLICATION_LIFECYCLE,
        OcsfActivity::Fixed(3, "Start"),
        "",
    ),
    (
        "runtime_started",
        APPLICATION_LIFECYCLE,
        OcsfActivity::Fixed(3, "Start"),
        "",
    ),
    (
        "shutdown_step",
        APPLICATION_LIFECYCLE,
        OcsfActivity::Fixed(4, "Stop"),
        "",
    ),
    (
        "resources_sampled",
        BASE_EVENT,
        OcsfActivity::Fixed(99, "Other"),
        "",
    ),
    ("health_checked", BASE_EVENT, OcsfActivity::Fixed(99, "Other"), ""),
];

/// The OCSF attachment (`ocsf.jsonl`): one record per exported event.
#[derive(Debug, Clone, Copy)]
pub struct Ocsf;

fn ocsf_row(kind: &str) -> (OcsfClass, OcsfActivity, &'static str) {
    OCSF_MAP
        .iter()
        .find(|r| r.0 == kind)
        .map_or((BASE_EVENT, OcsfActivity::Fixed(99, "Other"), ""), |r| {
            (r.1, r.2, r.3)
        })
}

/// (status_id, status) of an outcome.
fn status(ok: bool) -> (u32, &'static str) {
    if ok { (1, "Success") } else { (2, "Failure") }
}

impl Ocsf {
    /// The OCSF record of one exported event.
    pub fn record(e: &BundleEvent) -> Value {
        let time_ms = e.at.div_euclid(1_000_000);
        let mut unmapped = json!({
            "stele": {
                "seq": e.seq.0,
                "stream": e.stream,
                "cause": e.cause.map(|c| c.0),
                "kind": e.body().map(EventBody::kind),
            }
        });
        let Some(body) = e.body() else {
            // Redacted: only what the bundle shows.
            unmapped["stele"]["redacted"] = json!(true);
            return base_record(BASE_EVENT, (0, "Unknown"), e, time_ms, "redacted event", unmapped);
        };
        let (class, activity, api_op) = ocsf_row(body.kind());
        let activity = match activity {
            OcsfActivity::Fixed(id, name) => (id, name),
            OcsfActivity::ByNewState => match body {
                EventBody::AgentStateChanged { to, .. } => match to.name() {
                    "initializing" => (1, "Install"),
                    "running" => (3, "Start"),
                    "suspended" | "failed" => (4, "Stop"),
                    "terminated" => (2, "Remove"),
                    _ => (99, "Other"),
                },
                _ => (99, "Other"),
            },
        };
        let mut r = base_record(class, activity, e, time_ms, &message(body), unmapped);
        let stele = json!({"name": "stele", "vendor_name": "stele"});
        let actor = json!({"app_name": "stele"});
        let device = json!({"type_id": 0, "type": "Unknown"});
        match class.class_uid {
            1007 => {
                let (pid, task, agent) = match body {
                    EventBody::ProcessStarted { pid, task, agent, .. } => {
                        (Some(*pid), task.clone(), Some(agent))
                    }
                    EventBody::ProcessExited { task, .. } | EventBody::RunInterrupted { task, .. } => {
                        (None, task.clone(), None)
                    }
                    _ => (None, String::new(), None),
                };
                r["actor"] = actor;
                r["device"] = device;
                r["process"] = json!({"pid": pid, "uid": task, "name": agent});
                if let EventBody::ProcessExited { exit, .. } = body {
                    if let Some(c) = exit.code {
                        r["exit_code"] = json!(c);
                    }
                    let (id, name) = status(exit.code == Some(0) && exit.signal.is_none() && !exit.timed_out);
                    r["status_id"] = json!(id);
                    r["status"] = json!(name);
                }
            }
            1006 => {
                let (task, agent) = match body {
                    EventBody::TaskQueued { task, agent, .. } => (task.clone(), agent.clone()),
                    EventBody::TimerFired { agent, timer, .. } => (format!("{agent}/{timer}"), agent.clone()),
                    other => (
                        other
                            .run_id()
                            .ok()
                            .flatten()
                            .map(|r| r.to_string())
                            .unwrap_or_default(),
                        String::new(),
                    ),
                };
                r["actor"] = actor;
                r["device"] = device;
                r["job"] = json!({"name": task, "file": {"name": agent, "type_id": 0}});
                if let EventBody::TaskFinished { outcome, .. } = body {
                    let (id, name) = status(matches!(outcome, stele_journal::TaskOutcome::Completed));
                    r["status_id"] = json!(id);
                    r["status"] = json!(name);
                }
            }
            6003 => {
                r["actor"] = actor;
                r["api"] = json!({"operation": api_op, "service": {"name": "stele"}});
                r["src_endpoint"] = json!({"name": "stele", "svc_name": "stele"});
                r["resources"] = json!([{"uid": e.stream, "type": "stream"}]);
            }
            6002 => {
                let app = match body {
                    EventBody::AgentStateChanged { agent, .. } => {
                        json!({"name": agent, "vendor_name": "stele"})
                    }
                    _ => stele,
                };
                r["app"] = app;
            }
            _ => {}
        }
        if let EventBody::HealthChecked { ok, .. } = body {
            let (id, name) = status(*ok);
            r["status_id"] = json!(id);
            r["status"] = json!(name);
        }
        r
    }
}

fn base_record(
    class: OcsfClass,
    (activity_id, activity_name): (u32, &str),
    e: &BundleEvent,
    time_ms: i64,
    message: &str,
    unmapped: Value,
) -> Value {
    json!({
        "class_uid": class.class_uid,
        "class_name": class.class_name,
        "category_uid": class.category_uid,
        "category_name": class.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": u64::from(class.class_uid) * 100 + u64::from(activity_id),
        "type_name": format!("{}: {activity_name}", class.class_name),
        "severity_id": 1,
        "severity": "Informational",
        "time": time_ms,
        "message": message,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "stele", "vendor_name": "stele"},
            "uid": e.hash.to_hex(),
            "sequence": e.seq.0,
            "log_name": "stele journal",
            "original_time": e.at.to_string(),
        },
        "unmapped": unmapped,
    })
}

/// A one-line description of a body for OCSF `message` and reports.
fn message(body: &EventBody) -> String {
    match body {
        EventBody::Annotated { text, .. } => text.clone(),
        EventBody::AgentRegistered { agent, .. } => format!("agent {agent} registered"),
        EventBody::AgentStateChanged {
            agent,
            from,
            to,
            reason,
        } => {
            format!("agent {agent}: {} -> {} ({reason})", from.name(), to.name())
        }
        EventBody::AgentStopRequested { agent, reason } => {
            format!("stop of agent {agent} requested ({reason})")
        }
        EventBody::ProcessStarted { task, agent, pid, .. } => {
            format!("{task} of {agent} started as pid {pid}")
        }
        EventBody::ProcessExited { task, exit } => {
            format!("{task} exited (code {:?}, signal {:?})", exit.code, exit.signal)
        }
        EventBody::TaskFinished {
            task,
            outcome,
            detail,
        } => format!("{task} finished: {outcome:?} ({detail})"),
        EventBody::ShutdownStep { step, name, .. } => format!("shutdown step {step}/6: {name}"),
        EventBody::KeyRotated { reason, .. } => format!("signing key rotated ({reason})"),
        EventBody::CheckpointSigned { size, .. } => format!("checkpoint over {size} events"),
        other => other.kind().replace('_', " "),
    }
}

impl Attachment for Ocsf {
    fn file_name(&self) -> &'static str {
        "ocsf.jsonl"
    }

    fn describe(&self) -> Value {
        json!({"schema": "OCSF", "version": OCSF_VERSION, "mapping": OCSF_MAPPING})
    }

    fn render(&self, event: &BundleEvent) -> Vec<u8> {
        serde_json::to_vec(&Ocsf::record(event)).expect("OCSF records serialize")
    }
}

// ---------------------------------------------------------------------------
// reports

/// What a framework asks about. Each topic is recognised from event kinds;
/// a topic whose events this build does not produce yet says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    AccessDecisions,
    DeniedActions,
    DataAccess,
    HumanApprovals,
    KeyRotations,
    AgentRegistrations,
    AgentStops,
    ProcessRuns,
    ProcessFailures,
    Shutdowns,
    Checkpoints,
    Recoveries,
}

impl Topic {
    fn title(self) -> &'static str {
        match self {
            Topic::AccessDecisions => "access decisions (policy verdicts)",
            Topic::DeniedActions => "denied actions",
            Topic::DataAccess => "data access (context and knowledge reads)",
            Topic::HumanApprovals => "human approvals",
            Topic::KeyRotations => "signing key rotations",
            Topic::AgentRegistrations => "agent registrations",
            Topic::AgentStops => "agent stops (requested, terminated)",
            Topic::ProcessRuns => "process runs",
            Topic::ProcessFailures => "process and task failures",
            Topic::Shutdowns => "runtime shutdown steps",
            Topic::Checkpoints => "signed Merkle checkpoints",
            Topic::Recoveries => "journal openings and crash recoveries",
        }
    }

    /// Whether this build records events for the topic at all.
    fn produced(self) -> bool {
        !matches!(
            self,
            Topic::AccessDecisions | Topic::DeniedActions | Topic::DataAccess | Topic::HumanApprovals
        )
    }

    fn matches(self, body: &ArchivedEventBody) -> bool {
        match (self, body) {
            (Topic::KeyRotations, ArchivedEventBody::KeyRotated { .. })
            | (Topic::AgentRegistrations, ArchivedEventBody::AgentRegistered { .. })
            | (Topic::AgentStops, ArchivedEventBody::AgentStopRequested { .. })
            | (Topic::ProcessRuns, ArchivedEventBody::ProcessStarted { .. })
            | (Topic::Shutdowns, ArchivedEventBody::ShutdownStep { .. })
            | (Topic::Checkpoints, ArchivedEventBody::CheckpointSigned { .. })
            | (
                Topic::Recoveries,
                ArchivedEventBody::JournalOpened { .. } | ArchivedEventBody::RunInterrupted { .. },
            ) => true,
            (Topic::AgentStops, ArchivedEventBody::AgentStateChanged { to, .. }) => {
                to.to_native() == stele_journal::AgentState::Terminated
            }
            (Topic::ProcessFailures, ArchivedEventBody::ProcessExited { exit, .. }) => {
                exit.code.as_ref().map(|c| c.to_native()) != Some(0)
                    || exit.signal.is_some()
                    || exit.timed_out
            }
            (Topic::ProcessFailures, ArchivedEventBody::TaskFinished { outcome, .. }) => matches!(
                outcome.to_native(),
                stele_journal::TaskOutcome::Failed | stele_journal::TaskOutcome::TimedOut
            ),
            (Topic::ProcessFailures, ArchivedEventBody::HealthChecked { ok, .. }) => !*ok,
            _ => false,
        }
    }
}

/// A framework: its title and, per requirement, the topics it asks about.
pub struct FrameworkDef {
    pub name: &'static str,
    pub title: &'static str,
    pub sections: &'static [(&'static str, &'static [Topic])],
}

pub const FRAMEWORKS: &[FrameworkDef] = &[
    FrameworkDef {
        name: "hipaa",
        title: "HIPAA Security Rule (45 CFR 164.308, 164.312)",
        sections: &[
            (
                "164.312(a)(1) access control",
                &[
                    Topic::AccessDecisions,
                    Topic::DeniedActions,
                    Topic::HumanApprovals,
                ],
            ),
            (
                "164.312(b) audit controls",
                &[Topic::DataAccess, Topic::ProcessRuns, Topic::Checkpoints],
            ),
            (
                "164.312(c)(1) integrity",
                &[Topic::Checkpoints, Topic::KeyRotations],
            ),
            (
                "164.308(a)(1)(ii)(D) information system activity review",
                &[
                    Topic::AgentRegistrations,
                    Topic::AgentStops,
                    Topic::ProcessFailures,
                    Topic::Shutdowns,
                    Topic::Recoveries,
                ],
            ),
        ],
    },
    FrameworkDef {
        name: "gdpr",
        title: "GDPR (Regulation (EU) 2016/679)",
        sections: &[
            (
                "Art. 30 records of processing activities",
                &[Topic::DataAccess, Topic::ProcessRuns, Topic::AgentRegistrations],
            ),
            (
                "Art. 32 security of processing",
                &[
                    Topic::AccessDecisions,
                    Topic::DeniedActions,
                    Topic::KeyRotations,
                    Topic::Checkpoints,
                ],
            ),
            (
                "Art. 22 human involvement in automated decisions",
                &[Topic::HumanApprovals],
            ),
            (
                "Art. 5(2) accountability",
                &[Topic::AgentStops, Topic::ProcessFailures, Topic::Recoveries],
            ),
        ],
    },
    FrameworkDef {
        name: "sox",
        title: "SOX section 404 IT general controls",
        sections: &[
            (
                "access to programs and data",
                &[Topic::AccessDecisions, Topic::DeniedActions, Topic::KeyRotations],
            ),
            (
                "program changes",
                &[
                    Topic::AgentRegistrations,
                    Topic::AgentStops,
                    Topic::HumanApprovals,
                ],
            ),
            (
                "computer operations",
                &[
                    Topic::ProcessRuns,
                    Topic::ProcessFailures,
                    Topic::Shutdowns,
                    Topic::Recoveries,
                ],
            ),
            (
                "integrity of the audit trail",
                &[Topic::Checkpoints, Topic::DataAccess],
            ),
        ],
    },
];

/// Seqs listed per item of a report (the count is always complete).
const REPORT_SEQS: usize = 100;

#[derive(Default)]
struct Tally {
    count: u64,
    seqs: Vec<u64>,
}

impl Tally {
    fn add(&mut self, seq: Seq) {
        self.count += 1;
        if self.seqs.len() < REPORT_SEQS {
            self.seqs.push(seq.0);
        }
    }
}

fn report_cmd(data: &Path, a: &AuditReportArgs) -> Result<ExitCode> {
    let known: Vec<&str> = OCSF_MAP.iter().map(|r| r.0).collect();
    let custom_kinds: Vec<String> = match (&a.framework, &a.kinds) {
        (Framework::Custom, Some(k)) => {
            let kinds: Vec<String> = k
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(bad) = kinds.iter().find(|k| !known.contains(&k.as_str())) {
                bail!(
                    "--kinds: unknown event kind {bad:?}; known kinds: {}",
                    known.join(", ")
                );
            }
            if kinds.is_empty() {
                bail!("--kinds names no event kind");
            }
            kinds
        }
        (Framework::Custom, None) => {
            bail!("--framework custom needs --kinds KIND,KIND (e.g. --kinds key_rotated,agent_registered)")
        }
        (_, Some(_)) => bail!("--kinds is only for --framework custom"),
        _ => vec![],
    };
    let opened = open(data)?;
    let reader = &opened.reader;
    let head = reader.head().seq.0;
    let from = a.from.unwrap_or(1);
    let to = a.to.unwrap_or(head);
    if from == 0 {
        bail!("--from must be at least 1 (the first event is seq 1)");
    }
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    if to > head {
        bail!("--to {to} is beyond the head of the journal (seq {head})");
    }
    let def = FRAMEWORKS.iter().find(|f| f.name == framework_name(a.framework));
    let topics: Vec<Topic> = def
        .map(|d| {
            let mut t: Vec<Topic> = Vec::new();
            for (_, ts) in d.sections {
                for x in *ts {
                    if !t.contains(x) {
                        t.push(*x);
                    }
                }
            }
            t
        })
        .unwrap_or_default();
    let mut by_topic: Vec<Tally> = topics.iter().map(|_| Tally::default()).collect();
    let mut by_kind: BTreeMap<String, Tally> = custom_kinds
        .iter()
        .map(|k| (k.clone(), Tally::default()))
        .collect();
    let mut total = 0u64;
    for e in reader.range(Seq(from), Seq(to)) {
        let e: EventRef = e?;
        total += 1;
        let body = e.body();
        for (t, tally) in topics.iter().zip(by_topic.iter_mut()) {
            if t.matches(body) {
                tally.add(e.seq());
            }
        }
        if let Some(t) = by_kind.get_mut(body.kind()) {
            t.add(e.seq());
        }
    }
    let covering = export::covering_checkpoint(reader, Seq(to))?;
    let item = |title: &str, produced: bool, t: &Tally| {
        let status = if t.count > 0 {
            "recorded"
        } else if produced {
            "none recorded"
        } else {
            "none recorded (not yet produced by this build)"
        };
        json!({"title": title, "count": t.count, "status": status, "seqs": t.seqs,
               "more_seqs": t.count.saturating_sub(t.seqs.len() as u64)})
    };
    let sections: Vec<Value> = match def {
        Some(d) => d
            .sections
            .iter()
            .map(|(req, ts)| {
                let items: Vec<Value> = ts
                    .iter()
                    .map(|t| {
                        let i = topics.iter().position(|x| x == t).expect("collected above");
                        item(t.title(), t.produced(), &by_topic[i])
                    })
                    .collect();
                json!({"requirement": req, "items": items})
            })
            .collect(),
        None => vec![json!({
            "requirement": "custom selection of event kinds",
            "items": by_kind.iter().map(|(k, t)| item(k, true, t)).collect::<Vec<_>>(),
        })],
    };
    let doc = json!({
        "framework": framework_name(a.framework),
        "title": def.map_or("custom report", |d| d.title),
        "journal": data.display().to_string(),
        "range": {"from": from, "to": to, "events": total},
        "head": head,
        "checkpoint": covering.map(|c| json!({"seq": c.seq.0, "size": c.size, "root": c.root.to_hex()})),
        "software": format!("stele {}", env!("CARGO_PKG_VERSION")),
        "sections": sections,
    });
    let text = if a.json {
        serde_json::to_string_pretty(&doc)? + "\n"
    } else {
        markdown(&doc)
    };
    match &a.out {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("report written to {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn framework_name(f: Framework) -> &'static str {
    match f {
        Framework::Hipaa => "hipaa",
        Framework::Gdpr => "gdpr",
        Framework::Sox => "sox",
        Framework::Custom => "custom",
    }
}

fn markdown(doc: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Audit report: {}\n", doc["title"].as_str().unwrap_or("?"));
    let _ = writeln!(
        s,
        "Journal `{}`, events {}..={} ({} events; head {}), {}.",
        doc["journal"].as_str().unwrap_or("?"),
        doc["range"]["from"],
        doc["range"]["to"],
        doc["range"]["events"],
        doc["head"],
        doc["software"].as_str().unwrap_or("?")
    );
    match doc["checkpoint"].as_object() {
        Some(c) => {
            let _ = writeln!(
                s,
                "The range is covered by the signed checkpoint at seq {} (tree of {} events, root `{}`); `stele audit export --from {} --to {}` gives an auditor the proofs.\n",
                c["seq"],
                c["size"],
                c["root"].as_str().unwrap_or("?"),
                doc["range"]["from"],
                doc["range"]["to"]
            );
        }
        None => {
            let _ = writeln!(
                s,
                "No signed checkpoint covers the end of the range yet (`stele journal checkpoint` makes one).\n"
            );
        }
    }
    for sec in doc["sections"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "## {}\n", sec["requirement"].as_str().unwrap_or("?"));
        let _ = writeln!(s, "| what | count | events (seq) |\n|---|---|---|");
        for it in sec["items"].as_array().into_iter().flatten() {
            let count = it["count"].as_u64().unwrap_or(0);
            let cell = if count == 0 {
                it["status"].as_str().unwrap_or("").to_owned()
            } else {
                count.to_string()
            };
            let mut seqs: Vec<String> = it["seqs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.to_string())
                .collect();
            let more = it["more_seqs"].as_u64().unwrap_or(0);
            if more > 0 {
                seqs.push(format!("… and {more} more"));
            }
            let _ = writeln!(
                s,
                "| {} | {cell} | {} |",
                it["title"].as_str().unwrap_or("?"),
                seqs.join(", ")
            );
        }
        s.push('\n');
    }
    s
}
