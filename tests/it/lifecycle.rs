//! The agent lifecycle: the decider allows exactly the seed's transitions,
//! a refused command appends nothing, and the registry projection folds the
//! facts into the states an operator sees — data-driven, property-tested,
//! and end to end through `stele agent`.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use stele_engine::lifecycle::allowed;
use stele_engine::{AgentDefinition, LifecycleCommand, agent_stream, decide};
use stele_journal::event::detached_event;
use stele_journal::{AgentState, EventBody, Seq};
use stele_projections::{AgentRegistry, Projection};

fn definition(name: &str) -> (AgentDefinition, String) {
    let source = format!(
        "name = \"{name}\"\npriority = \"normal\"\n[mode]\nkind = \"ephemeral\"\n[limits]\nmemory_mb = 8\ncpu_cores = 0.5\nexecution_timeout = \"5s\"\n[runs]\nkind = \"process\"\ncommand = \"/bin/true\"\n"
    );
    (
        AgentDefinition::parse(Path::new("inline.toml"), &source).expect("valid"),
        source,
    )
}

/// Decides and folds; returns the facts (empty when rejected) and the error.
fn step(reg: &mut AgentRegistry, seq: &mut u64, cmd: LifecycleCommand) -> Result<Vec<EventBody>, String> {
    let facts = decide(reg, cmd).map_err(|r| r.to_string())?;
    for body in &facts {
        let agent = match body {
            EventBody::AgentRegistered { agent, .. } | EventBody::AgentStateChanged { agent, .. } => agent,
            other => panic!("unexpected fact {other:?}"),
        };
        *seq += 1;
        let e = detached_event(Seq(*seq), 0, &agent_stream(agent), None, body).expect("event");
        reg.apply(&e);
    }
    Ok(facts)
}

fn render(reg: &AgentRegistry) -> String {
    reg.agents
        .iter()
        .map(|(n, a)| format!("{n}={}", a.state.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn transition(agent: &str, to: AgentState) -> LifecycleCommand {
    LifecycleCommand::Transition {
        agent: agent.into(),
        to,
        reason: "test".into(),
    }
}

#[test]
fn lifecycle_script_renders_the_expected_states() {
    use AgentState::*;
    let mut reg = AgentRegistry::default();
    let mut seq = 0;
    let register = |n: &str| {
        let (definition, source) = definition(n);
        LifecycleCommand::Register {
            definition: Box::new(definition),
            source,
        }
    };
    // (command, expected rendering or error)
    let script: Vec<(LifecycleCommand, &str)> = vec![
        (register("a"), "a=ready"),
        (register("b"), "a=ready b=ready"),
        (
            register("a"),
            "error: agent a is already registered (ready); stop it before registering it again",
        ),
        (transition("a", Running), "a=running b=ready"),
        (
            transition("a", Terminated),
            "error: agent a cannot go from running to terminated",
        ),
        (transition("a", Suspended), "a=suspended b=ready"),
        (
            transition("a", Ready),
            "error: agent a cannot go from suspended to ready",
        ),
        (transition("a", Running), "a=running b=ready"),
        (transition("a", Ready), "a=ready b=ready"),
        (
            LifecycleCommand::Stop {
                agent: "b".into(),
                reason: "done".into(),
            },
            "a=ready b=terminated",
        ),
        (
            transition("b", Ready),
            "error: agent b cannot go from terminated to ready",
        ),
        (register("b"), "a=ready b=ready"),
        (
            transition("zed", Running),
            "error: no agent named zed is registered",
        ),
    ];
    for (i, (cmd, expected)) in script.into_iter().enumerate() {
        let before = render(&reg);
        let got = match step(&mut reg, &mut seq, cmd) {
            Ok(_) => render(&reg),
            Err(e) => {
                assert_eq!(render(&reg), before, "step {i}: a rejection changes nothing");
                format!("error: {e}")
            }
        };
        assert_eq!(got, expected, "step {i}");
    }
    assert_eq!(
        reg.agents["b"].registered_seq, 10,
        "re-registration starts a new entry"
    );
}

#[test]
fn the_transition_table_is_the_seed_diagram() {
    use AgentState::*;
    let all = [Initializing, Ready, Running, Suspended, Terminated, Failed];
    let edges: Vec<(AgentState, AgentState)> = all
        .iter()
        .flat_map(|&f| all.iter().map(move |&t| (f, t)))
        .filter(|&(f, t)| allowed(f, t))
        .collect();
    assert_eq!(
        edges,
        vec![
            (Initializing, Ready),
            (Initializing, Failed),
            (Ready, Running),
            (Ready, Terminated),
            (Running, Ready),
            (Running, Suspended),
            (Suspended, Running),
            (Suspended, Terminated),
            (Failed, Terminated),
        ]
    );
}

fn state_strategy() -> impl Strategy<Value = AgentState> {
    prop_oneof![
        Just(AgentState::Initializing),
        Just(AgentState::Ready),
        Just(AgentState::Running),
        Just(AgentState::Suspended),
        Just(AgentState::Terminated),
        Just(AgentState::Failed),
    ]
}

proptest! {
    #[test]
    fn random_commands_only_ever_take_legal_transitions(
        cmds in proptest::collection::vec((0u8..3, 0u8..3, state_strategy()), 1..120)
    ) {
        let mut reg = AgentRegistry::default();
        let mut model: BTreeMap<String, AgentState> = BTreeMap::new();
        let mut seq = 0;
        for (op, who, to) in cmds {
            let name = format!("agent-{who}");
            let cmd = match op {
                0 => { let (definition, source) = definition(&name); LifecycleCommand::Register {
            definition: Box::new(definition),
            source,
        } }
                1 => transition(&name, to),
                _ => LifecycleCommand::Stop { agent: name.clone(), reason: "stop".into() },
            };
            let before = model.get(&name).copied();
            match step(&mut reg, &mut seq, cmd) {
                Ok(facts) => {
                    for f in &facts {
                        if let EventBody::AgentStateChanged { from, to, .. } = f {
                            prop_assert!(allowed(*from, *to), "{:?} -> {:?}", from, to);
                        }
                    }
                    let after = reg.agents[&name].state;
                    match op {
                        0 => prop_assert!(before.is_none_or(|s| s == AgentState::Terminated)),
                        _ => prop_assert!(allowed(before.expect("known"), after)),
                    }
                    model.insert(name, after);
                }
                Err(_) => prop_assert_eq!(reg.agents.get(&name).map(|a| a.state), before),
            }
        }
        let folded: BTreeMap<String, AgentState> = reg.agents.iter().map(|(n, a)| (n.clone(), a.state)).collect();
        prop_assert_eq!(folded, model);
    }
}

#[test]
fn stele_agent_register_list_stop_through_the_binary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/agents");
    let run = |args: &[&str]| {
        crate::stele()
            .arg("--data")
            .arg(d)
            .args(args)
            .output()
            .expect("run")
    };
    for f in ["hello.toml", "heartbeat.toml"] {
        let o = run(&["agent", "register", fixtures.join(f).to_str().expect("utf8")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = run(&[
        "agent",
        "register",
        fixtures.join("hello.toml").to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already registered"));
    let o = run(&["agent", "stop", "hello"]);
    assert!(o.status.success());
    let o = run(&["agent", "stop", "hello"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot go from terminated to terminated"));
    let o = run(&["agent", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["hello"]["state"], "terminated");
    assert_eq!(v["heartbeat"]["state"], "ready");
    assert!(
        v["heartbeat"]["definition"]
            .as_str()
            .expect("text")
            .contains("interval = \"30s\"")
    );
    // Time travel: before the stop, hello was ready.
    let events = run(&["events", "--stream", "agent:hello", "--json"]);
    let seqs: Vec<u64> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    assert_eq!(seqs.len(), 3, "registered, ready, terminated");
    let o = run(&["at", &(seqs[2] - 1).to_string(), "--view", "registry", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["agents"]["hello"]["state"], "ready");
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n").expect("write");
    let o = run(&["agent", "register", bad.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.toml:1:1: missing field"));
    assert_eq!(run(&["journal", "verify"]).status.code(), Some(0));
}
