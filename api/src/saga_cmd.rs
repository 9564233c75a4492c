//! `stele saga show RUN` and `stele saga recover RUN`: a run's saga as the
//! journal tells it (`stele_engine::saga::SagaLog`), and the recovery of a
//! run whose process died mid-way — what its saga still owes is
//! compensated, exactly once per journal record, and the run is recorded
//! `interrupted`. Owning the journal is what says no other process drives
//! the run: one process holds a data directory at a time.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use stele_engine::reasoning::Sink;
use stele_engine::saga::SagaLog;
use stele_engine::tools::ToolRunner;
use stele_journal::EventBody;
use stele_projections::{RunsView, SnapshotStore, state_at};

use crate::journal_cmd::{open_reader, open_writer, runtime};
use crate::run_cmd::{definition, driver, expire, run_events};
use stele_engine::reasoning::JournalSink;

/// `stele saga show RUN`.
pub fn show(data: &Path, run: &str, json: bool) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let events = run_events(&reader, run)?;
    if events.is_empty() {
        bail!("no run named {run}");
    }
    let log = SagaLog::fold(run, &events);
    if json {
        println!("{}", serde_json::to_string(&log)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{run}: saga {} ({} compensable step{}), run {}",
        log.state,
        log.steps.len(),
        if log.steps.len() == 1 { "" } else { "s" },
        log.outcome.as_deref().unwrap_or("not finished")
    );
    for s in &log.steps {
        let forward = match s.forward_ok {
            Some(true) => "ran",
            Some(false) => "failed",
            None => "no result",
        };
        println!(
            "  seq {:<6} step {:<3} {:<10} {:<12} {forward}",
            s.seq, s.step, s.call_id, s.tool
        );
        println!(
            "      undo: {}",
            stele_engine::orga::bounded(&s.compensation, 160)
        );
        match (&s.compensating_seq, &s.compensated) {
            (_, Some((seq, ok, detail))) => {
                println!(
                    "      compensated at seq {seq}: {} — {detail}",
                    if *ok { "ok" } else { "FAILED" }
                );
            }
            (Some(seq), None) => println!("      compensation started at seq {seq}, no result yet"),
            (None, None) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `stele saga recover RUN`.
pub fn recover(data: &Path, run: &str, policies: &Path) -> Result<ExitCode> {
    let journal = open_writer(data)
        .with_context(|| "recovering needs the journal; is another stele process (run, up) using it?")?;
    // A parked run whose approval timed out goes on first.
    if let Some(x) = expire(data, &journal, run, policies)? {
        for (call, why) in &x.calls {
            println!("{run}: {call} {why}");
        }
    }
    let reader = journal.reader();
    let events = run_events(&reader, run)?;
    if events.is_empty() {
        bail!("no run named {run}");
    }
    let log = SagaLog::fold(run, &events);
    if log.outcome.as_deref() == Some("completed") {
        println!("{run} completed; its saga is committed: nothing to recover");
        return Ok(ExitCode::SUCCESS);
    }
    if log.outcome.is_none() && !log.awaiting.is_empty() {
        println!(
            "{run} is parked awaiting approval of {:?}; it is not interrupted: nothing to recover",
            log.awaiting
        );
        return Ok(ExitCode::SUCCESS);
    }
    let pending = log.pending();
    if log.outcome.is_some() && pending.is_empty() {
        println!(
            "{run} finished {}; nothing to recover",
            log.outcome.as_deref().unwrap_or("?")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runs = state_at::<RunsView>(&reader, &SnapshotStore::new(data), reader.head().seq)?.state;
    let view = runs
        .runs
        .get(run)
        .with_context(|| format!("no run named {run}"))?;
    let def = definition(data, &journal, &view.agent)?;
    let (_, tools) = driver(&def, policies, &journal)?;
    let mut sink = JournalSink::new(&journal, run)?;
    let rt = runtime()?;
    let reason = "the process driving the run died before it finished (stele saga recover)";
    rt.block_on(async {
        for step in pending {
            let rerun = step.compensating_seq.is_some();
            if !rerun {
                sink.record(vec![EventBody::SagaCompensating {
                    run: run.to_owned(),
                    call_id: step.call_id.clone(),
                    action: step.compensation.clone(),
                    reason: reason.to_owned(),
                }])
                .await
                .map_err(anyhow::Error::msg)?;
            }
            let (ok, detail) = match tools.compensate(&step.compensation).await {
                Ok(d) => (true, d),
                Err(e) => (false, e),
            };
            let detail = if rerun {
                format!("re-run after an interruption (idempotent): {detail}")
            } else {
                detail
            };
            println!(
                "{run}: compensated {} ({}): {} — {detail}",
                step.call_id,
                step.tool,
                if ok { "ok" } else { "FAILED" }
            );
            sink.record(vec![EventBody::SagaCompensated {
                run: run.to_owned(),
                call_id: step.call_id.clone(),
                ok,
                detail,
            }])
            .await
            .map_err(anyhow::Error::msg)?;
        }
        if log.outcome.is_none() {
            sink.record(vec![EventBody::RunFinished {
                run: run.to_owned(),
                outcome: "interrupted".into(),
                answer: reason.to_owned(),
                steps: log.run_steps,
                prompt_tokens: log.prompt_tokens,
                completion_tokens: log.completion_tokens,
            }])
            .await
            .map_err(anyhow::Error::msg)?;
            println!("{run} interrupted; see: stele saga show {run}");
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
