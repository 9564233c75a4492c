//! Policy gate decisions on a prebuilt gate of 20 policies (the 19 of
//! `fixtures/policies` plus one), one core.
//!
//! - `policy/decide/*`: [`PolicyGate::decide`] on a prebuilt
//!   [`AuthzRequest`] — request checked against the schema and pruned,
//!   Cedar entities and request built, evaluated, verdict mapped. The
//!   issue's target is ≥ 200,000 decisions/s (≤ 5 µs each).
//! - `policy/decide_with_request/read_file`: the same with the
//!   `AuthzRequest` (JSON attributes and context) built in each iteration,
//!   as an enforcement point does.
//! - `policy/baseline/cedar_prebuilt`: Cedar alone: `is_authorized` over the
//!   same 20 policies with the request and entities built once, outside the
//!   loop — the floor `decide` adds its work to, for the ratio.
//! - `policy/baseline/cedar_empty_set`: `is_authorized` on an empty set.
//!
//! Each bench runs twice: `policy/…` in wall time, `policy_cpu/…` in the
//! benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which other
//! processes on a shared machine do not inflate by preempting it.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::path::Path;
use std::str::FromStr;

use cedar_policy as cedar;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nix::time::{ClockId, clock_gettime};
use serde_json::{Value, json};
use stele_engine::policy::{AuthzRequest, Entity, Point, PolicyGate, Verdict};

/// One more policy, to make 20.
const EXTRA: &str = r#"
@id("no-fetch-for-low-priority")
@reason("low-priority agents may not fetch URLs")
forbid (principal, action == Action::"invoke_tool", resource == Tool::"fetch")
when { principal.priority == "low" };
"#;

fn sources() -> (String, Vec<(String, String)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies");
    let schema = std::fs::read_to_string(dir.join("stele.cedarschema")).expect("fixture schema");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("policy file"))
        })
        .collect();
    files.push(("zz-bench.cedar".into(), EXTRA.into()));
    (schema, files)
}

fn tool_request(priority: &str, tool: &str) -> AuthzRequest {
    AuthzRequest {
        point: Point::ToolInvocation,
        principal: Entity {
            kind: "Agent".into(),
            id: "alice".into(),
            attrs: json!({"priority": priority}),
        },
        action: "invoke_tool".into(),
        resource: Entity {
            kind: "Tool".into(),
            id: tool.into(),
            attrs: Value::Null,
        },
        context: json!({"args": {"path": "notes/today.md", "max_bytes": 1_000_000}, "in_workspace": true}),
    }
}

/// The calling thread's CPU time, in nanoseconds.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, started: u64) -> u64 {
        thread_cpu_ns() - started
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, as wall time's.
        WallTime.formatter()
    }
}

fn wall(c: &mut Criterion) {
    bench(c, "policy");
}

fn cpu(c: &mut Criterion<ThreadCpuTime>) {
    bench(c, "policy_cpu");
}

fn bench<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let (schema, files) = sources();
    let gate = PolicyGate::from_sources(Some(&schema), &files).expect("the bench set loads");
    assert_eq!(gate.len(), 20, "20 policies");

    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));

    let read = tool_request("normal", "read_file");
    assert!(matches!(
        gate.decide(&read).verdict,
        Verdict::AllowWithConditions { .. }
    ));
    g.bench_function("decide/read_file_allow_with_conditions", |b| {
        b.iter(|| black_box(gate.decide(black_box(&read))))
    });
    let run = tool_request("low", "run_command");
    assert!(matches!(gate.decide(&run).verdict, Verdict::Deny { .. }));
    g.bench_function("decide/run_command_forbid", |b| {
        b.iter(|| black_box(gate.decide(black_box(&run))))
    });
    let unknown = tool_request("high", "launch_rocket");
    assert!(gate.decide(&unknown).policies.is_empty());
    g.bench_function("decide/unknown_tool_default_deny", |b| {
        b.iter(|| black_box(gate.decide(black_box(&unknown))))
    });
    g.bench_function("decide_with_request/read_file", |b| {
        b.iter(|| black_box(gate.decide(&tool_request(black_box("normal"), black_box("read_file")))))
    });

    // Cedar alone, same policies, request and entities prebuilt.
    let text: String = files
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let set = cedar::PolicySet::from_str(&text).expect("cedar parses the set");
    assert_eq!(set.num_of_policies(), 20);
    let agent = cedar::EntityUid::from_str(r#"Agent::"alice""#).expect("uid");
    let tool = cedar::EntityUid::from_str(r#"Tool::"read_file""#).expect("uid");
    let action = cedar::EntityUid::from_str(r#"Action::"invoke_tool""#).expect("uid");
    let principal = cedar::Entity::new(
        agent.clone(),
        HashMap::from([(
            "priority".to_owned(),
            cedar::RestrictedExpression::new_string("normal".into()),
        )]),
        HashSet::new(),
    )
    .expect("entity");
    let entities = cedar::Entities::from_entities([principal, cedar::Entity::with_uid(tool.clone())], None)
        .expect("entities");
    let args = cedar::RestrictedExpression::new_record([
        (
            "path".to_owned(),
            cedar::RestrictedExpression::new_string("notes/today.md".into()),
        ),
        (
            "max_bytes".to_owned(),
            cedar::RestrictedExpression::new_long(1_000_000),
        ),
    ])
    .expect("record");
    let context = cedar::Context::from_pairs([
        ("args".to_owned(), args),
        (
            "in_workspace".to_owned(),
            cedar::RestrictedExpression::new_bool(true),
        ),
    ])
    .expect("context");
    let request = cedar::Request::new(agent, action, tool, context, None).expect("request");
    let authorizer = cedar::Authorizer::new();
    assert_eq!(
        authorizer.is_authorized(&request, &set, &entities).decision(),
        cedar::Decision::Allow
    );
    g.bench_function("baseline/cedar_prebuilt", |b| {
        b.iter(|| black_box(authorizer.is_authorized(black_box(&request), &set, &entities)))
    });
    let empty = cedar::PolicySet::new();
    g.bench_function("baseline/cedar_empty_set", |b| {
        b.iter(|| black_box(authorizer.is_authorized(black_box(&request), &empty, &entities)))
    });
    g.finish();
}

criterion_group!(wall_time, wall);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu
}
criterion_main!(wall_time, cpu_time);
