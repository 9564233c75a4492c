//! The reasoning loop and its driver in-process, on the scripted provider:
//! retries journaled with their backoff, a stuck loop stopped, the step
//! limit, a text answer — each run's facts checked in order.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stele_engine::orga::{AgentLoop, RunSpec};
use stele_engine::policy::PolicyGate;
use stele_engine::process::{Launcher, detect_confinement};
use stele_engine::reasoning::{Driver, Sink, Stop};
use stele_engine::scripted::ScriptedProvider;
use stele_engine::tools::{self, ToolBox};
use stele_journal::EventBody;

#[derive(Default)]
struct Memory(Vec<EventBody>);

impl Sink for Memory {
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<stele_journal::Seq>, String>> + Send + 'a>> {
        self.0.extend(facts);
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn driver(script: &str, workspace: &Path) -> Driver {
    let gate = PolicyGate::from_sources(
        None,
        &[(
            "all.cedar".into(),
            "@id(\"all-tools\")\npermit (principal, action == Action::\"invoke_tool\", resource);".into(),
        )],
    )
    .expect("gate");
    Driver {
        provider: Arc::new(ScriptedProvider::from_json("test", script).expect("script")),
        gate: Arc::new(gate).into(),
        tools: Arc::new(ToolBox {
            workspace: workspace.to_owned(),
            memory_mb: 64,
            cpu_cores: 0.5,
            timeout: Duration::from_secs(10),
            launcher: Launcher {
                program: env!("CARGO_BIN_EXE_stele").into(),
            },
            confinement: detect_confinement(),
            sandbox: stele_engine::tools::CommandSandbox::Native,
        }),
        agent: "tester".into(),
        priority: "normal".into(),
        knowledge: None,
    }
}

fn spec() -> RunSpec {
    let mut s = RunSpec::new("run-1", "tester", "scripted");
    s.tools = tools::builtin();
    s
}

fn kinds(facts: &[EventBody]) -> Vec<&'static str> {
    facts.iter().map(EventBody::kind).collect()
}

fn drive(script: &str, spec: RunSpec) -> (Stop, Vec<EventBody>) {
    let ws = tempfile::tempdir().expect("ws");
    let d = driver(script, ws.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut sink = Memory::default();
    let stop = rt
        .block_on(d.drive(AgentLoop::start(spec, "hello".into(), None), &mut sink))
        .expect("drive");
    (stop, sink.0)
}

#[test]
fn a_text_answer_finishes_the_run() {
    let (stop, facts) = drive(r#"{"answers": [{"content": "hi there"}]}"#, spec());
    let Stop::Finished(f) = stop else { panic!("parked") };
    assert_eq!(
        (f.outcome.as_str(), f.answer.as_str(), f.steps),
        ("completed", "hi there", 1)
    );
    assert_eq!(
        kinds(&facts),
        [
            "run_started",
            "phase_entered",
            "tools_offered",
            "completion_received",
            "run_finished"
        ]
    );
}

#[test]
fn failed_attempts_are_journaled_with_their_backoff_then_retried() {
    let script = r#"{"answers": [{"error": "status:500"}]}"#;
    let (stop, facts) = drive(script, spec());
    let Stop::Finished(f) = stop else { panic!("parked") };
    assert_eq!(f.outcome, "failed");
    let failed: Vec<(u32, u64)> = facts
        .iter()
        .filter_map(|e| match e {
            EventBody::CompletionFailed {
                attempt, retry_in_ms, ..
            } => Some((*attempt, *retry_in_ms)),
            _ => None,
        })
        .collect();
    // 3 attempts: backoffs 500 ms and 1 s, then no retry.
    assert_eq!(failed, [(1, 500), (2, 1000), (3, 0)]);
}

#[test]
fn the_same_action_again_and_again_is_a_stuck_loop() {
    let call = r#"{"content": "again", "tool_calls": [{"name": "list_dir", "arguments": {"path": "."}}]}"#;
    let script = format!(r#"{{"answers": [{call}, {call}, {call}, {call}, {call}]}}"#);
    let (stop, facts) = drive(&script, spec());
    let Stop::Finished(f) = stop else { panic!("parked") };
    assert_eq!(f.outcome, "stuck", "{}", f.answer);
    assert_eq!(f.steps, 3);
    assert_eq!(facts.iter().filter(|e| e.kind() == "tool_returned").count(), 3);
}

#[test]
fn the_step_limit_ends_a_run_that_never_answers() {
    let answers: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"content": "", "tool_calls": [{{"name": "list_dir", "arguments": {{"path": "d{i}"}}}}]}}"#))
        .collect();
    let script = format!(r#"{{"answers": [{}]}}"#, answers.join(","));
    let mut s = spec();
    s.max_steps = 4;
    let (stop, facts) = drive(&script, s);
    let Stop::Finished(f) = stop else { panic!("parked") };
    assert_eq!(f.outcome, "step_limit");
    assert_eq!(f.steps, 4);
    // The failing tool (no such directory) is a result the model sees, not a crash.
    assert!(
        facts
            .iter()
            .any(|e| matches!(e, EventBody::ToolReturned { ok: false, .. }))
    );
}
