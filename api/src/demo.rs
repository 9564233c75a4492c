//! `stele demo`: the README's main job — two scripted reasoning runs on the
//! fixture provider, on the embedded defaults, that exercise what the
//! runtime is for: context pre-hydrated from the task, a tool call allowed
//! with a policy condition, a denied action, approvals given by a named
//! demo operator (journaled as such), and a saga rolled back when the
//! second run fails. It ends by verifying the journal and printing where to
//! look. Rerunnable: it resets its workspace files and starts new runs.
//!
//! Everything runs through the same code as `stele run` / `stele approve`
//! (`crate::run_cmd`); nothing here decides anything.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use stele_engine::reasoning::Stop;
use stele_journal::{ArchivedEventBody, Journal, Reader};

use crate::journal_cmd::open_writer;
use crate::run_cmd::{decide_on, run_events, start};

/// Who approves in the demo (recorded as the approver).
const OPERATOR: &str = "demo-operator";
const WORKSPACE: &str = "stele-workspace";
const NOTES: &str = "Please summarise this workspace for the team, and prepare the release notes.\n";
const CHANGELOG: &str = "# Changelog\n\n## 0.1.0\n- First release.\n";

/// `stele demo`.
pub fn run(data: &Path, policies: &Path) -> Result<ExitCode> {
    for f in [
        "fixtures/reasoning/assistant.toml",
        "fixtures/reasoning/release.toml",
    ] {
        if !Path::new(f).is_file() {
            bail!("{f} not found: run the demo from the root of the stele repository");
        }
    }
    let ws = Path::new(WORKSPACE);
    std::fs::create_dir_all(ws).with_context(|| format!("creating {WORKSPACE}"))?;
    std::fs::write(ws.join("notes.txt"), NOTES).context("writing the demo's notes.txt")?;
    std::fs::write(ws.join("CHANGELOG.md"), CHANGELOG).context("writing the demo's CHANGELOG.md")?;
    let journal = open_writer(data)?;
    println!("== stele demo: reasoning runs on the scripted provider");
    println!(
        "   data {}, workspace ./{WORKSPACE}, policies {}",
        data.display(),
        policies.display()
    );

    println!("\n== 1. assistant: read, a denied command, an approved write");
    let stop = start(
        data,
        &journal,
        "fixtures/reasoning/assistant.toml",
        "Summarise notes.txt for the team.",
        policies,
    )?;
    let first = approve_all(data, &journal, stop, policies)?;
    narrate(&journal.reader(), &first)?;

    println!("\n== 2. release-writer: two approved writes, then the provider fails: the saga is compensated");
    let stop = start(
        data,
        &journal,
        "fixtures/reasoning/release.toml",
        "Prepare release notes from notes.txt and add them to CHANGELOG.md.",
        policies,
    )?;
    let second = approve_all(data, &journal, stop, policies)?;
    narrate(&journal.reader(), &second)?;
    let restored = std::fs::read_to_string(ws.join("CHANGELOG.md")).context("reading CHANGELOG.md")?;
    let draft_gone = !ws.join("drafts/release-notes.md").exists();
    println!(
        "   workspace after the rollback: CHANGELOG.md {}, drafts/release-notes.md {}",
        if restored == CHANGELOG {
            "restored"
        } else {
            "NOT restored"
        },
        if draft_gone { "removed" } else { "STILL THERE" }
    );
    if restored != CHANGELOG || !draft_gone {
        bail!("the saga of {second} did not restore the workspace");
    }

    println!("\n== 3. verify the journal");
    let reader = journal.reader();
    let report = stele_journal::verify(&reader, &|_, _| {});
    if !report.ok {
        bail!("verify failed: {:?}", report.error);
    }
    println!(
        "   ok: {} events, chain, hashes and signatures verified",
        report.events
    );
    drop(reader);
    drop(journal);

    let d = data.display();
    println!("\n== where to look");
    println!("   stele --data {d} events --run {first}          # every step of the first run");
    println!("   stele --data {d} events --run {second}");
    println!("   stele --data {d} saga show {second}            # compensable steps and their rollback");
    println!("   stele --data {d} runs                           # runs, state, outcome");
    println!(
        "   stele --data {d} audit export --run {first} --out /tmp/{first}-audit   # offline-verifiable bundle"
    );
    println!("   stele --data {d} journal verify");
    Ok(ExitCode::SUCCESS)
}

/// Drives a run to its end, approving each call it waits on as the demo
/// operator. Returns the run id.
fn approve_all(data: &Path, journal: &Journal, mut stop: Stop, policies: &Path) -> Result<String> {
    loop {
        match stop {
            Stop::Finished(f) => {
                println!("   {} finished {} after {} steps", f.run, f.outcome, f.steps);
                return Ok(f.run);
            }
            Stop::Parked(p) => {
                let run = p.run().to_owned();
                let (call, reason) = p
                    .awaiting()
                    .into_iter()
                    .next()
                    .context("a parked run waits on no call")?;
                println!("   {run} parked: {call} needs approval ({reason})");
                println!("   {OPERATOR} approves {call}");
                drop(p);
                stop = decide_on(
                    data,
                    journal,
                    &run,
                    &call,
                    true,
                    OPERATOR,
                    "approved by the demo operator",
                    policies,
                )?;
            }
        }
    }
}

/// One line per fact of the run that a reader of the demo cares about.
fn narrate(reader: &Reader, run: &str) -> Result<()> {
    println!("   -- {run}, from the journal:");
    for e in run_events(reader, run)? {
        let seq = e.seq().0;
        let line = match e.body() {
            ArchivedEventBody::ContextHydrated {
                reference,
                blake3,
                size_bytes,
                ..
            } => format!(
                "pre-hydrated {reference} ({} bytes, blake3 {}…)",
                size_bytes.to_native(),
                &blake3.as_str()[..12.min(blake3.len())]
            ),
            ArchivedEventBody::ActionProposed { tool, arguments, .. } => {
                format!(
                    "model proposes {tool} {}",
                    stele_engine::orga::bounded(arguments.as_str(), 60)
                )
            }
            ArchivedEventBody::PolicyDecided {
                verdict,
                detail,
                policies,
                point,
                ..
            } => {
                let ids: Vec<&str> = policies.iter().map(|p| p.as_str()).collect();
                format!("policy {point}: {verdict} by {ids:?} {detail}")
            }
            ArchivedEventBody::ApprovalRequested { call_id, .. } => {
                format!("parked: {call_id} awaits approval")
            }
            ArchivedEventBody::ApprovalDecided {
                call_id,
                approved,
                approver,
                ..
            } => format!(
                "{call_id} {} by {approver}",
                if *approved { "approved" } else { "rejected" }
            ),
            ArchivedEventBody::ToolReturned {
                call_id, ok, output, ..
            } => format!(
                "{call_id} returned {}: {}",
                if *ok { "ok" } else { "error" },
                stele_engine::orga::bounded(output.as_str().trim(), 60)
            ),
            ArchivedEventBody::CompletionFailed { error, .. } => format!("completion failed: {error}"),
            ArchivedEventBody::SagaStepRecorded { call_id, tool, .. } => {
                format!("saga: {call_id} ({tool}) recorded its compensation before running")
            }
            ArchivedEventBody::SagaCompensated {
                call_id, ok, detail, ..
            } => format!(
                "saga: compensated {call_id}: {} — {detail}",
                if *ok { "ok" } else { "FAILED" }
            ),
            ArchivedEventBody::RunBreakerChanged { tool, from, to, .. } => {
                format!("breaker of {tool}: {from} → {to}")
            }
            ArchivedEventBody::RunFinished { outcome, .. } => format!("run finished: {outcome}"),
            _ => continue,
        };
        println!("   seq {seq:<5} {line}");
    }
    Ok(())
}
