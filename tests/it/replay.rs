//! Replay and time travel end to end: the recorded runs of
//! `fixtures/runs/` replay identically through the current deciders with
//! no effect possible (the determinism guard); a deliberately changed
//! decider diverges at the expected seq with a field-level diff; `at`
//! equals a fold from scratch at random seqs; a fork with an edited
//! completion takes the other branch and leaves the original verifying;
//! `policy backtest` flips exactly the verdicts the fixture change flips;
//! `stele step` and `stele diff` work from a pipe.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;
use stele_engine::policy::PolicyGate;
use stele_journal::{EventBody, Reader, Seq};
use stele_projections::{
    AgentRegistry, ExecutionView, JournalView, Projection, RunsView, SchedulerView, SnapshotStore,
    fold_range, maintain_snapshots, state_at,
};
use stele_replay::{RunState, Settings};

use crate::{TIMEOUT, run_bounded, stele};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

/// A copy of the recorded-runs journal (opening one may write to its dir).
fn fixture_journal() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    copy_dir(&root().join("fixtures/runs/journal"), &dir);
    (tmp, dir)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(root().join("fixtures/runs/expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn fixture_policies() -> PathBuf {
    root().join("fixtures/runs/policies")
}

fn settings() -> Settings {
    let c = stele_engine::config::InferenceConfig::default();
    Settings {
        default_model: c.model,
        max_tokens: c.max_tokens,
        max_attempts: c.max_retries + 1,
        bus_builtins: false,
    }
}

fn s(data: &Path, args: &[&str]) -> crate::Run {
    let mut all = vec!["--data", data.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let r = run_bounded(&all);
    r.no_panic(&args.join(" "));
    r
}

#[test]
fn every_fixture_run_replays_identically_with_no_effect_possible() {
    let (tmp, data) = fixture_journal();
    let policies = fixture_policies();
    let runs = expected()["runs"].as_object().expect("runs").clone();
    assert!(runs.len() >= 4, "the fixture holds the recorded runs");
    for (run, want) in &runs {
        // The network and process spawning unavailable: the provider
        // configured is an OpenAI endpoint at an unroutable address, PATH
        // is empty, the agents' workspaces do not exist (cwd is empty).
        let cwd = tmp.path().join("empty");
        std::fs::create_dir_all(&cwd).expect("mkdir");
        let mut cmd: Command = stele();
        cmd.current_dir(&cwd)
            .env("STELE_INFERENCE_PROVIDER", "openai")
            .env("STELE_INFERENCE_BASE_URL", "http://10.255.255.1:9/v1")
            .env("PATH", "/nonexistent")
            .args(["--data", data.to_str().expect("utf-8")])
            .args(["replay", run, "--json", "--policies"])
            .arg(&policies)
            .stdin(Stdio::null());
        let out = cmd.output().expect("run stele replay");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{run}: {stdout}\n{stderr}");
        let report: Value = serde_json::from_str(stdout.trim()).expect("report JSON");
        assert!(report["divergence"].is_null(), "{run}: {report}");
        assert_eq!(report["identical"], want["facts"], "{run}: {report}");
        assert_eq!(report["recorded"], want["facts"], "{run}: {report}");
        assert_eq!(report["awaiting"], want["awaiting"], "{run}: {report}");
        assert!(
            !cwd.join("stele-workspace").exists(),
            "{run}: replay touched a workspace"
        );
    }
    // Human output says so too.
    let r = s(
        &data,
        &["replay", "run-3", "--policies", policies.to_str().expect("utf-8")],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("run-3: identical — 19 facts"), "{}", r.stdout);
}

#[test]
fn a_changed_decider_diverges_at_the_expected_seq_with_a_field_diff() {
    let (_tmp, data) = fixture_journal();
    let reader = Reader::open(&data).expect("open");
    let recorded = stele_replay::load_run(&reader, &SnapshotStore::new(&data), "run-1").expect("load run-1");
    // Where a changed gate must show: the run_command denial.
    let denial = recorded
        .events
        .iter()
        .find(|e| matches!(&e.body, EventBody::PolicyDecided { verdict, .. } if verdict == "deny"))
        .expect("run-1 has a denial")
        .seq;
    let gate = Arc::new(PolicyGate::load(&fixture_policies()).expect("policies"));
    // The test-only hook: a gate that allows what it denied.
    let mut flip = |_: usize, b: &mut EventBody| {
        if let EventBody::PolicyDecided { verdict, .. } = b
            && verdict == "deny"
        {
            "allow".clone_into(verdict);
        }
    };
    let report =
        stele_replay::replay(&recorded, Arc::clone(&gate), &settings(), Some(&mut flip)).expect("replay");
    let d = report.divergence.expect("a divergence");
    assert_eq!(d.seq, Some(denial.0), "{d:?}");
    assert_eq!(d.fields.len(), 1, "one field differs: {:?}", d.fields);
    assert_eq!(d.fields[0].path, "verdict");
    assert_eq!(d.fields[0].before, Some(Value::from("deny")));
    assert_eq!(d.fields[0].after, Some(Value::from("allow")));
    assert_eq!(
        d.path.last().map(|p| p.kind.as_str()),
        Some("action_proposed"),
        "{:?}",
        d.path
    );
    assert_eq!(report.identical, d.index);
    // Unchanged, the same replay is identical.
    let same = stele_replay::replay(&recorded, gate, &settings(), None).expect("replay");
    assert!(same.is_identical(), "{:?}", same.divergence);

    // Through the binary, a changed policy set is a changed decider: the
    // first decision it makes differently is reported with both sides.
    let r = s(
        &data,
        &[
            "replay",
            "run-1",
            "--policies",
            root().join("fixtures/policies-backtest").to_str().expect("utf-8"),
        ],
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    let first_decision = recorded
        .events
        .iter()
        .find(|e| matches!(e.body, EventBody::PolicyDecided { .. }))
        .expect("a decision")
        .seq;
    assert!(
        r.stdout
            .starts_with(&format!("run-1 diverges at seq {first_decision} ")),
        "{}",
        r.stdout
    );
    for part in [
        "field",
        "recorded",
        "replayed",
        "policy_set",
        "path to it",
        "action_proposed",
    ] {
        assert!(r.stdout.contains(part), "{part} missing:\n{}", r.stdout);
    }
}

fn json_of<P: Projection>(p: &P) -> Value {
    serde_json::to_value(p).expect("state serializes")
}

fn snapshot_equals_scratch<P: Projection>(reader: &Reader, store: &SnapshotStore, at: Seq) {
    let with = state_at::<P>(reader, store, at).expect("state_at");
    let mut scratch = P::default();
    fold_range(reader, &mut scratch, Seq::ZERO, at).expect("fold");
    assert_eq!(json_of(&with.state), json_of(&scratch), "{} at {at}", P::NAME);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn at_equals_a_fold_from_scratch(seqs in proptest::collection::vec(1u64..=1_000, 1..6)) {
        let (_tmp, data) = fixture_journal();
        let reader = Reader::open(&data).expect("open");
        let head = reader.head().seq.0;
        let store = SnapshotStore::new(&data);
        maintain_snapshots::<JournalView>(&reader, &store, 7, 100).expect("snapshots");
        maintain_snapshots::<AgentRegistry>(&reader, &store, 7, 100).expect("snapshots");
        maintain_snapshots::<RunsView>(&reader, &store, 7, 100).expect("snapshots");
        maintain_snapshots::<SchedulerView>(&reader, &store, 7, 100).expect("snapshots");
        maintain_snapshots::<ExecutionView>(&reader, &store, 7, 100).expect("snapshots");
        let run1 = stele_replay::load_run(&reader, &store, "run-1").expect("run-1");
        for s in seqs {
            let at = Seq(1 + s % head);
            snapshot_equals_scratch::<JournalView>(&reader, &store, at);
            snapshot_equals_scratch::<AgentRegistry>(&reader, &store, at);
            snapshot_equals_scratch::<RunsView>(&reader, &store, at);
            snapshot_equals_scratch::<SchedulerView>(&reader, &store, at);
            snapshot_equals_scratch::<ExecutionView>(&reader, &store, at);
            // A run's state from its index equals a fold over the whole
            // journal that keeps its events.
            let mut scratch = RunState::default();
            for e in reader.range(Seq(1), at) {
                let e = e.expect("read").to_event().expect("decode");
                if e.body.run_id().expect("run id").is_some_and(|r| r.as_str() == "run-1") {
                    scratch.apply(&e);
                }
            }
            let indexed = RunState::fold(stele_replay::view::upto(&run1.events, at.0, None));
            prop_assert_eq!(indexed, scratch);
        }
    }
}

#[test]
fn at_run_step_diff_and_step_answer_from_a_pipe() {
    let (_tmp, data) = fixture_journal();
    let r = s(
        &data,
        &[
            "at", "head", "--view", "run", "--run", "run-1", "--step", "1", "--json",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let state: Value = serde_json::from_str(r.stdout.trim()).expect("json");
    assert_eq!(state["step"], 1);
    assert_eq!(state["phase"], "observing");
    assert_eq!(state["conversation"].as_array().map(Vec::len), Some(3), "{state}");
    let r = s(&data, &["at", "head", "--view", "run", "--json"]);
    assert_eq!(r.code, Some(2), "an error exits 2");
    assert!(r.stderr.contains("--view run needs --run RUN"), "{}", r.stderr);

    let reader = Reader::open(&data).expect("open");
    let run1 = stele_replay::load_run(&reader, &SnapshotStore::new(&data), "run-1").expect("run-1");
    let (a, b) = (
        run1.events[2].seq.0.to_string(),
        run1.events[12].seq.0.to_string(),
    );
    let r = s(
        &data,
        &["diff", &a, &b, "--view", "run", "--run", "run-1", "--json"],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let d: Value = serde_json::from_str(r.stdout.trim()).expect("json");
    let paths: Vec<&str> = d["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert!(paths.contains(&"step") && paths.contains(&"seq"), "{paths:?}");
    let r = s(&data, &["diff", "1", "1", "--view", "registry"]);
    assert!(r.stdout.contains("is the same"), "{}", r.stdout);

    let mut child = stele()
        .args(["--data", data.to_str().expect("utf-8"), "step", "run-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"n\nn\ns\np\ne\nq\n")
        .expect("write commands");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(started.elapsed() < TIMEOUT, "stele step hung");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("[3/"), "{text}");
    assert!(text.contains("\"run\": \"run-1\""), "state shown: {text}");
    assert!(
        text.contains("[2/") && text.contains("\"hash\""),
        "back, then the event: {text}"
    );
}

#[test]
fn backtest_flips_exactly_the_expected_verdicts() {
    let (_tmp, data) = fixture_journal();
    // What the fixture change must flip, read from the journal itself.
    let reader = Reader::open(&data).expect("open");
    let mut want = Vec::new();
    let mut total = 0;
    for e in reader.range(Seq(1), reader.head().seq) {
        let e = e.expect("read").to_event().expect("decode");
        if let EventBody::PolicyDecided { request, verdict, .. } = &e.body {
            total += 1;
            let tool = serde_json::from_str::<Value>(request).expect("request")["resource"]["id"].clone();
            if (tool == "run_command" && verdict == "deny")
                || (tool == "write_file" && verdict == "require_approval")
            {
                want.push((e.seq.0, verdict.clone()));
            }
        }
    }
    assert_eq!(
        want.len(),
        4,
        "the fixture journal has 2 denials and 2 approvals to flip"
    );
    let r = s(
        &data,
        &[
            "policy",
            "backtest",
            "--json",
            "--policies",
            root().join("fixtures/policies-backtest").to_str().expect("utf-8"),
        ],
    );
    assert_eq!(r.code, Some(1), "flips exit 1: {r:?}");
    let bt: Value = serde_json::from_str(r.stdout.trim()).expect("json");
    assert_eq!(bt["evaluated"], total);
    let got: Vec<(u64, String)> = bt["flips"]
        .as_array()
        .expect("flips")
        .iter()
        .map(|f| {
            assert_eq!(f["new_verdict"], "allow", "{f}");
            (
                f["seq"].as_u64().expect("seq"),
                f["old_verdict"].as_str().expect("old").to_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(bt["unreadable"].as_array().is_some_and(Vec::is_empty));
    let f = &bt["flips"][0];
    assert_eq!(
        f["old_policies"],
        serde_json::json!(["no-commands-for-low-priority"])
    );
    assert_eq!(f["new_policies"], serde_json::json!(["run-command"]));
    // The policies the runs were decided with flip nothing (exit 0); a range
    // that holds none of the flips neither.
    let same = s(
        &data,
        &[
            "policy",
            "backtest",
            "--policies",
            fixture_policies().to_str().expect("utf-8"),
        ],
    );
    assert_eq!(same.code, Some(0), "{same:?}");
    assert!(
        same.stdout.contains(&format!("0 of {total} recorded decisions")),
        "{}",
        same.stdout
    );
    let before = (want[0].0 - 1).to_string();
    let none = s(
        &data,
        &[
            "policy",
            "backtest",
            "--to",
            &before,
            "--policies",
            root().join("fixtures/policies-backtest").to_str().expect("utf-8"),
        ],
    );
    assert_eq!(none.code, Some(0), "{none:?}");
}

/// A fresh journal with the demo run recorded by the real binary, in `dir`
/// (the agent's workspace and script paths are relative to it).
fn record_demo(dir: &Path) -> PathBuf {
    std::os::unix::fs::symlink(root().join("fixtures"), dir.join("fixtures")).expect("link fixtures");
    std::fs::create_dir_all(dir.join("stele-workspace")).expect("workspace");
    std::fs::write(
        dir.join("stele-workspace/notes.txt"),
        "Please summarise this workspace.\n",
    )
    .expect("notes");
    let data = dir.join("data");
    let run = |args: &[&str]| {
        let out = stele()
            .current_dir(dir)
            .args(["--data", data.to_str().expect("utf-8")])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run stele");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[
        "run",
        "fixtures/reasoning/assistant.toml",
        "--input",
        "summarise the notes",
    ]);
    assert_eq!(code, Some(3), "the demo parks on its write: {out}");
    let (code, out) = run(&["approve", "run-1", "call-2-0", "--as", "alice"]);
    assert_eq!(code, Some(0), "{out}");
    data
}

#[test]
fn fork_with_an_edited_completion_takes_the_other_branch_and_leaves_the_original() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = record_demo(tmp.path());
    let reader = Reader::open(&data).expect("open");
    let original: Vec<_> = reader
        .run(
            &stele_journal::RunId::new("run-1".to_owned()).expect("id"),
            Seq(1),
        )
        .map(|e| e.expect("read").hash())
        .collect();
    // Fork at the end of step 1 (its `observing` phase).
    let at = {
        let run1 = stele_replay::load_run(&reader, &SnapshotStore::new(&data), "run-1").expect("run-1");
        run1.events
            .iter()
            .find(|e| matches!(&e.body, EventBody::PhaseEntered { phase, .. } if phase == "observing"))
            .expect("step 1 observes")
            .seq
    };
    drop(reader);
    let edit_file = tmp.path().join("edit.json");
    std::fs::write(
        &edit_file,
        r#"{"content": "Nothing more to do: the notes only ask for a summary."}"#,
    )
    .expect("edit");
    let out = stele()
        .current_dir(tmp.path())
        .args(["--data", data.to_str().expect("utf-8"), "fork", "run-1", "--at"])
        .arg(at.0.to_string())
        .arg("--edit")
        .arg(&edit_file)
        .arg("--json")
        .output()
        .expect("fork");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(f["run"], "run-2");
    assert_eq!(f["ended"]["ended"], "finished");
    assert_eq!(f["ended"]["outcome"], "completed");
    assert_eq!(
        f["ended"]["steps"], 2,
        "the edit answers at step 2 instead of calling run_command"
    );
    assert_eq!(
        f["ended"]["answer"],
        "Nothing more to do: the notes only ask for a summary."
    );

    let reader = Reader::open(&data).expect("open");
    let forked: Vec<_> = reader
        .run(
            &stele_journal::RunId::new("run-2".to_owned()).expect("id"),
            Seq(1),
        )
        .map(|e| e.expect("read").to_event().expect("decode"))
        .collect();
    let EventBody::RunStarted { parent, .. } = &forked[0].body else {
        panic!("a fork starts with RunStarted: {:?}", forked[0].body);
    };
    assert_eq!(parent.as_deref(), Some(format!("run-1@{at}").as_str()));
    let EventBody::RunForked {
        origin,
        at: fork_at,
        edit,
        edit_hash,
        ..
    } = &forked[1].body
    else {
        panic!("RunForked follows RunStarted: {:?}", forked[1].body);
    };
    assert_eq!((origin.as_str(), *fork_at), ("run-1", at.0));
    assert_eq!(
        forked[1].cause,
        Some(at),
        "RunForked points at the origin's event"
    );
    assert_eq!(edit_hash, &hex::encode(blake3::hash(edit.as_bytes()).as_bytes()));
    assert_eq!(f["edit_hash"].as_str(), Some(edit_hash.as_str()));
    assert!(
        !forked
            .iter()
            .any(|e| matches!(&e.body, EventBody::ActionProposed { tool, .. } if tool == "run_command")),
        "the fork took the other branch"
    );
    let now: Vec<_> = reader
        .run(
            &stele_journal::RunId::new("run-1".to_owned()).expect("id"),
            Seq(1),
        )
        .map(|e| e.expect("read").hash())
        .collect();
    assert_eq!(now, original, "the origin is untouched");
    drop(reader);
    let v = s(&data, &["journal", "verify"]);
    assert_eq!(v.code, Some(0), "{v:?}");
    for run in ["run-1", "run-2"] {
        let r = s(
            &data,
            &[
                "replay",
                run,
                "--policies",
                root().join("fixtures/policies").to_str().expect("utf-8"),
            ],
        );
        assert_eq!(r.code, Some(0), "{run} replays identically: {r:?}");
    }
    // An edit of the wrong shape is refused with the file and the shape.
    std::fs::write(&edit_file, r#"{"text": "x"}"#).expect("edit");
    let bad = s(
        &data,
        &[
            "fork",
            "run-1",
            "--at",
            &at.0.to_string(),
            "--edit",
            edit_file.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(bad.code, Some(2), "an error exits 2");
    assert!(
        bad.stderr.contains("edit.json") && bad.stderr.contains("is a completion, expected"),
        "{}",
        bad.stderr
    );
}

/// A fork feeds a run's journaled failed attempts again without waiting
/// their retry backoffs (they were waited when recorded): on a paused
/// clock, forking a run with a rate-limited attempt (recorded by the
/// binary, 2 s backoff) at its end leaves the clock short of the backoff.
#[test]
fn a_fork_never_waits_a_recorded_backoff() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(root().join("fixtures"), tmp.path().join("fixtures")).expect("link fixtures");
    std::fs::create_dir_all(tmp.path().join("stele-workspace")).expect("workspace");
    std::fs::write(
        tmp.path().join("retry.json"),
        r#"{"model": "scripted", "answers": [{"error": "rate_limited:2s", "times": 1, "content": "done"}]}"#,
    )
    .expect("script");
    let agent = std::fs::read_to_string(root().join("fixtures/reasoning/assistant.toml"))
        .expect("agent")
        .replace("fixtures/scripts/demo.json", "retry.json");
    std::fs::write(tmp.path().join("retry.toml"), agent).expect("agent");
    let data = tmp.path().join("data");
    let out = stele()
        .current_dir(tmp.path())
        .args(["--data", data.to_str().expect("utf-8")])
        .args(["run", "retry.toml", "--input", "go"])
        .stdin(Stdio::null())
        .output()
        .expect("run stele");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let journal = stele_journal::Journal::open(&data, stele_journal::Options::default()).expect("journal");
    let reader = journal.reader();
    let store = SnapshotStore::new(&data);
    let runs = state_at::<RunsView>(&reader, &store, reader.head().seq)
        .expect("runs")
        .state;
    let (origin, waited_ms) = runs
        .runs
        .keys()
        .filter_map(|run| {
            let rec = stele_replay::load_run(&reader, &store, run).ok()?;
            let ms: u64 = rec
                .events
                .iter()
                .map(|e| match &e.body {
                    EventBody::CompletionFailed { retry_in_ms, .. } => *retry_in_ms,
                    _ => 0,
                })
                .sum();
            (ms > 0).then_some((rec, ms))
        })
        .next()
        .expect("a fixture run retried its provider");
    let at = origin.events.last().expect("events").seq;
    let gate = Arc::new(PolicyGate::load(&fixture_policies()).expect("policies"));
    let live = stele_replay::fork::Live {
        provider: Arc::new(
            stele_engine::scripted::ScriptedProvider::from_json(
                "live",
                r#"{"model": "scripted", "answers": [{"content": "live"}]}"#,
            )
            .expect("script"),
        ),
        tools: Arc::new(stele_engine::tools::ToolBox {
            workspace: data.clone(),
            memory_mb: 64,
            cpu_cores: 0.5,
            timeout: std::time::Duration::from_secs(10),
            launcher: stele_engine::process::Launcher {
                program: PathBuf::from("/nonexistent"),
            },
            confinement: stele_engine::process::detect_confinement(),
            sandbox: stele_engine::tools::CommandSandbox::Native,
        }),
        gate: gate.into(),
        knowledge: None,
        started: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let (outcome, elapsed) = rt.block_on(async {
        let t = tokio::time::Instant::now();
        let outcome = stele_replay::fork(&origin, at, None, "run-99", &settings(), live, &journal)
            .await
            .expect("fork");
        (outcome, t.elapsed())
    });
    assert!(outcome.served > 0, "{outcome:?}");
    assert!(
        elapsed.as_millis() < u128::from(waited_ms),
        "the fork waited {elapsed:?} of the {waited_ms} ms of backoff {} recorded",
        origin.run
    );
    // The fork reproduced the origin's outcome from its journaled inputs.
    let forked = stele_replay::load_run(&reader, &store, "run-99").expect("fork recorded");
    let failed = |r: &stele_replay::RecordedRun| {
        r.events
            .iter()
            .filter(|e| matches!(e.body, EventBody::CompletionFailed { .. }))
            .count()
    };
    assert_eq!(failed(&forked), failed(&origin));
    journal.close();
}

/// The `tools_offered` facts of a run's events (`--json` lines).
fn offers(data: &Path, run: &str) -> Vec<Value> {
    let r = s(data, &["events", "--run", run, "--json"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    r.stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("event JSON"))
        .filter(|e| e["body"]["kind"] == "tools_offered")
        .collect()
}

fn names(offer: &Value) -> Vec<&str> {
    offer["body"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect()
}

#[test]
fn the_offered_tools_are_journaled_once_and_a_changed_profile_diverges_naming_the_tool() {
    let (_tmp, data) = fixture_journal();
    let reader = Reader::open(&data).expect("open");
    let mut recorded = stele_replay::load_run(&reader, &SnapshotStore::new(&data), "run-1").expect("run-1");
    // Once, right after the first reasoning phase: the list did not change
    // in later steps, so it is not recorded again.
    let at: Vec<usize> = recorded
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.body, EventBody::ToolsOffered { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "one list for the run");
    assert!(
        matches!(&recorded.events[at[0] - 1].body, EventBody::PhaseEntered { step: 1, phase, .. } if phase == "reasoning"),
        "{:?}",
        recorded.events[at[0] - 1].body
    );
    let offer_seq = recorded.events[at[0]].seq;
    let EventBody::ToolsOffered { step, offered, .. } = &recorded.events[at[0]].body else {
        unreachable!("filtered above")
    };
    assert_eq!(*step, 1);
    let offered_names: Vec<&str> = offered.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        offered_names,
        ["read_file", "list_dir", "write_file", "run_command"]
    );
    // What was recorded is the list of what the model was sent.
    let spec = recorded.spec("run-1", &settings()).expect("spec");
    assert_eq!(**offered, stele_engine::offered::list(&spec.tools));

    // `stele events` shows it in words.
    let r = s(&data, &["events", "--run", "run-1"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("tools_offered"))
        .expect("a tools_offered line");
    assert!(
        line.contains(&format!(
            "run-1 step 1: 4 tools offered (list {}): read_file, list_dir, write_file, run_command",
            &hex::encode(offered.list_hash)[..12]
        )),
        "{line}"
    );

    // Unchanged, the replay reproduces it.
    let gate = Arc::new(PolicyGate::load(&fixture_policies()).expect("policies"));
    let same = stele_replay::replay(&recorded, Arc::clone(&gate), &settings(), None).expect("replay");
    assert!(same.is_identical(), "{:?}", same.divergence);

    // The profile changed since the recording: the replay names the tool.
    let profile = |recorded: &mut stele_replay::RecordedRun, tools: &[&str]| {
        let stele_engine::Runs::Reasoning { tools: t, .. } = &mut recorded.definition.runs else {
            panic!("a reasoning agent")
        };
        *t = tools.iter().map(|s| (*s).to_owned()).collect();
    };
    profile(&mut recorded, &["read_file", "list_dir", "run_command"]);
    let report = stele_replay::replay(&recorded, Arc::clone(&gate), &settings(), None).expect("replay");
    let d = report.divergence.expect("a divergence");
    assert_eq!(d.seq, Some(offer_seq.0), "{d:?}");
    assert_eq!(
        d.note,
        format!(
            "the replay offers the model other tools than seq {offer_seq} recorded: at step 1, tool `write_file` removed"
        )
    );
    // A wider profile offers more (the knowledge tools too).
    profile(&mut recorded, &["*"]);
    let report = stele_replay::replay(&recorded, gate, &settings(), None).expect("replay");
    let d = report.divergence.expect("a divergence");
    assert_eq!(d.seq, Some(offer_seq.0), "{d:?}");
    assert!(
        d.note.contains("`recall_knowledge`") && d.note.ends_with(" added"),
        "{}",
        d.note
    );
}

/// A fresh journal holding run-1 of an agent whose profile also names the
/// bus builtin `ask` (offered only where the bus runs), parked on its
/// write's approval; and the agent file.
fn record_with_ask(dir: &Path) -> (PathBuf, PathBuf) {
    std::os::unix::fs::symlink(root().join("fixtures"), dir.join("fixtures")).expect("link fixtures");
    std::fs::create_dir_all(dir.join("stele-workspace")).expect("workspace");
    std::fs::write(
        dir.join("stele-workspace/notes.txt"),
        "Please summarise this workspace.\n",
    )
    .expect("notes");
    let text = std::fs::read_to_string(root().join("fixtures/reasoning/assistant.toml")).expect("agent");
    let profile = "tools = [\"read_file\", \"list_dir\", \"write_file\", \"run_command\"]";
    assert!(text.contains(profile), "the fixture agent's profile moved");
    let agent = dir.join("asker.toml");
    std::fs::write(
        &agent,
        text.replace(
            profile,
            "tools = [\"read_file\", \"list_dir\", \"write_file\", \"run_command\", \"ask\"]",
        ),
    )
    .expect("write agent");
    let data = dir.join("data");
    let out = stele()
        .current_dir(dir)
        .args(["--data", data.to_str().expect("utf-8")])
        .args(["run", "asker.toml", "--input", "summarise the notes"])
        .stdin(Stdio::null())
        .output()
        .expect("run stele");
    assert_eq!(
        out.status.code(),
        Some(3),
        "parks on its write: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (data, agent)
}

#[test]
fn a_run_continued_where_other_tools_are_offered_records_the_new_list_and_replay_names_the_tool() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, _agent) = record_with_ask(tmp.path());
    let bus_policies = root().join("fixtures/policies");
    let policies = bus_policies.to_str().expect("utf-8");
    let first = offers(&data, "run-1");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        names(&first[0]),
        ["read_file", "list_dir", "write_file", "run_command"],
        "no bus in the recording process: no `ask`"
    );

    // Replayed where the bus runs, the same run is offered `ask` too.
    let replay_with_bus = |run: &str| {
        let out = stele()
            .current_dir(tmp.path())
            .env("STELE_BUS_POLICIES", &bus_policies)
            .args(["--data", data.to_str().expect("utf-8"), "replay", run])
            .stdin(Stdio::null())
            .output()
            .expect("replay");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = replay_with_bus("run-1");
    assert_eq!(code, Some(1), "{out}");
    let seq = first[0]["seq"].as_u64().expect("seq");
    assert!(
        out.starts_with(&format!(
            "run-1 diverges at seq {seq} (fact 3 of {}): the replay offers the model other tools than seq {seq} recorded: at step 1, tool `ask` added\n",
            s(&data, &["events", "--run", "run-1", "--json"]).stdout.lines().count()
        )),
        "{out}"
    );
    // Where it was recorded (no bus), it verifies.
    let r = s(&data, &["replay", "run-1", "--policies", policies]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("run-1: identical"), "{}", r.stdout);

    // The approval (of step 3's write) is given in a process where the bus
    // runs: the run's next step is offered `ask` as well, and that new list is journaled; the
    // steps between did not change it and recorded none.
    let out = stele()
        .current_dir(tmp.path())
        .env("STELE_BUS_POLICIES", &bus_policies)
        .args(["--data", data.to_str().expect("utf-8")])
        .args(["approve", "run-1", "call-2-0", "--as", "alice"])
        .stdin(Stdio::null())
        .output()
        .expect("approve");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = offers(&data, "run-1");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], first[0]);
    assert_eq!(after[1]["body"]["step"], 4);
    assert_eq!(
        names(&after[1]),
        ["read_file", "list_dir", "write_file", "run_command", "ask"]
    );
    assert_ne!(after[1]["body"]["list_hash"], after[0]["body"]["list_hash"]);
    // A replay recomputes one list for the whole run: without the bus it
    // reaches step 4 and says the run recorded a new list there.
    let r = s(&data, &["replay", "run-1", "--policies", policies]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let seq4 = after[1]["seq"].as_u64().expect("seq");
    assert!(
        r.stdout.starts_with(&format!("run-1 diverges at seq {seq4} ")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(
            "the run recorded the tools offered at step 4 (read_file, list_dir, write_file, run_command, ask), but the replay offers the same tools as before there"
        ),
        "{}",
        r.stdout
    );
}
