//! Per-tool circuit breakers of a reasoning run, driven in-process on the
//! scripted provider with real tools and a real journal: a failing tool
//! opens its breaker, the next call is refused (the model is told), the open
//! timeout lets a probe through, a good probe closes it, a bad one opens it
//! again — every change a `RunBreakerChanged` with the clock reading it was
//! decided with — and rebuilding the run from its journaled facts produces
//! exactly those facts again (no clock read).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use stele_engine::breaker::BreakerConfig;
use stele_engine::orga::{AgentLoop, RunSpec};
use stele_engine::policy::PolicyGate;
use stele_engine::process::{Launcher, detect_confinement};
use stele_engine::reasoning::{self, Driver, Resumed, Sink, Stop};
use stele_engine::scripted::ScriptedProvider;
use stele_engine::tools::{self, ToolBox};
use stele_journal::{Append, EventBody, Journal, Options, RunId, Seq, StreamId};

struct JournalSink(Journal);

impl Sink for JournalSink {
    fn record<'a>(
        &'a mut self,
        facts: Vec<EventBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Seq>, String>> + Send + 'a>> {
        Box::pin(async move {
            if facts.is_empty() {
                return Ok(Vec::new());
            }
            let appends = facts
                .into_iter()
                .map(|body| Append {
                    stream: StreamId::new("run:run-1").expect("stream"),
                    cause: None,
                    body,
                })
                .collect();
            self.0
                .append_many(appends)
                .await
                .map(|receipts| receipts.iter().map(|r| r.seq).collect())
                .map_err(|e| e.to_string())
        })
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
    s.breakers = BreakerConfig {
        failures: 2,
        open_timeout_ms: 300,
        half_open_probes: 1,
    };
    s
}

fn read(path: &str) -> String {
    format!(
        r#"{{"content": "", "tool_calls": [{{"name": "read_file", "arguments": {{"path": "{path}"}}}}]}}"#
    )
}

/// Drives `script` on a journal in a tempdir; returns the stop, the
/// journaled facts of run-1 and the rebuilt ones.
fn drive(script: &str) -> (Stop, Vec<EventBody>, Vec<EventBody>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&ws).expect("ws");
    std::fs::write(ws.join("notes.txt"), "notes\n").expect("notes");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let journal = Journal::open(dir.path().join("data"), Options::default()).expect("journal");
    let d = driver(script, &ws);
    let mut sink = JournalSink(journal.clone());
    let stop = rt
        .block_on(d.drive(AgentLoop::start(spec(), "hello".into(), None), &mut sink))
        .expect("drive");
    let reader = journal.reader();
    let events: Vec<_> = reader
        .run(&RunId::new("run-1").expect("id"), Seq(1))
        .collect::<Result<_, _>>()
        .expect("events");
    let journaled: Vec<EventBody> = events
        .iter()
        .map(|e| e.to_event().expect("event").body)
        .filter(|b| {
            !matches!(
                b,
                EventBody::SagaCompensating { .. } | EventBody::SagaCompensated { .. }
            )
        })
        .collect();
    let (resumed, rebuilt) = reasoning::refold(spec(), &events).expect("refold");
    assert!(matches!(resumed, Resumed::Finished), "{resumed:?}");
    (stop, journaled, rebuilt)
}

/// Rebuilt facts equal journaled ones (names the first difference).
fn same(rebuilt: &[EventBody], journaled: &[EventBody]) {
    for (i, (r, j)) in rebuilt.iter().zip(journaled).enumerate() {
        assert_eq!(r, j, "fact {i} differs");
    }
    assert_eq!(rebuilt.len(), journaled.len(), "as many facts");
}

fn transitions(facts: &[EventBody]) -> Vec<(String, String, u64)> {
    facts
        .iter()
        .filter_map(|e| match e {
            EventBody::RunBreakerChanged { from, to, at_ms, .. } => Some((from.clone(), to.clone(), *at_ms)),
            _ => None,
        })
        .collect()
}

fn outputs(facts: &[EventBody]) -> Vec<(bool, String)> {
    facts
        .iter()
        .filter_map(|e| match e {
            EventBody::ToolReturned { ok, output, .. } => Some((*ok, output.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failing_tool_opens_its_breaker_is_refused_then_a_probe_closes_it() {
    // Two failures open it; the third call is refused; a rate limit makes
    // the loop wait 500 ms (> the 300 ms open timeout), so the fourth call
    // is a probe; it succeeds and closes the breaker.
    let script = format!(
        r#"{{"answers": [{}, {}, {}, {}, {{"content": "done"}}]}}"#,
        read("missing-1.txt"),
        read("missing-2.txt"),
        read("notes.txt"),
        read("notes.txt").replacen('{', r#"{"error": "rate_limited:500ms", "times": 1, "#, 1),
    );
    let (stop, journaled, rebuilt) = drive(&script);
    let Stop::Finished(f) = stop else { panic!("parked") };
    assert_eq!(f.outcome, "completed", "{}", f.answer);
    let t = transitions(&journaled);
    let states: Vec<(&str, &str)> = t.iter().map(|(a, b, _)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        states,
        [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    );
    assert!(t[1].2 >= t[0].2 + 300, "half-open before the open timeout: {t:?}");
    let out = outputs(&journaled);
    assert_eq!(out.len(), 4);
    assert!(!out[0].0 && !out[1].0, "the missing files fail: {out:?}");
    assert!(
        !out[2].0 && out[2].1.contains("circuit breaker of read_file is open"),
        "{out:?}"
    );
    assert_eq!(out[3], (true, "notes\n".to_owned()), "the probe ran");
    // The rebuild reaches the same facts from the journal alone.
    same(&rebuilt, &journaled);
}

#[test]
fn a_failed_probe_opens_the_breaker_again() {
    let script = format!(
        r#"{{"answers": [{}, {}, {}, {{"content": "done"}}]}}"#,
        read("missing-1.txt"),
        read("missing-2.txt"),
        read("missing-3.txt").replacen('{', r#"{"error": "rate_limited:500ms", "times": 1, "#, 1),
    );
    let (stop, journaled, rebuilt) = drive(&script);
    let Stop::Finished(f) = stop else { panic!("parked") };
    assert_eq!(f.outcome, "completed");
    let t = transitions(&journaled);
    let states: Vec<(&str, &str)> = t.iter().map(|(a, b, _)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        states,
        [("closed", "open"), ("open", "half_open"), ("half_open", "open")]
    );
    same(&rebuilt, &journaled);
}

#[test]
fn breaker_thresholds_come_from_the_tools_section() {
    let cfg = stele_engine::config::Config::parse(
        Path::new("stele.toml"),
        "[tools]\nbreaker_failures = 5\nbreaker_open_timeout = \"2s\"\nbreaker_half_open_probes = 2\n",
        &[],
    )
    .expect("config");
    assert_eq!(
        BreakerConfig::from(&cfg.tools),
        BreakerConfig {
            failures: 5,
            open_timeout_ms: 2000,
            half_open_probes: 2
        }
    );
    let err =
        stele_engine::config::Config::parse(Path::new("stele.toml"), "[tools]\nbreaker_failures = 0\n", &[])
            .expect_err("0 refused");
    assert!(err.to_string().contains("out of range"), "{err}");
}
