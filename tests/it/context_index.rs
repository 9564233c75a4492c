//! The context store's retrieval index (`AgentContext::by_seq`) against the
//! linear scan it replaced and against an independent model, over random
//! sequences of stores, re-stores, updates (type changes), shares across
//! agents, feedback and archives: the index always lists exactly the live
//! items, survives a snapshot (saved, loaded, then the tail folded) equal
//! to a full fold, and `search::recent` (the index walk) returns what
//! `search::recent_scan` does — the requester's own newest items of the
//! asked types that the gate lets it read, never another agent's, shared
//! or not. The gate is the real Cedar set of `fixtures/policies` plus one
//! policy hiding secret items from low-priority readers, so the walk also
//! skips items the gate denies.

use std::collections::BTreeSet;
use std::path::Path;

use crate::context::{cli, ok_json};

use proptest::prelude::*;
use stele_engine::context::ops::{ReadGate, Requester};
use stele_engine::context::search::{self, KeywordIndex};
use stele_engine::context::service::Live;
use stele_engine::policy::PolicyGate;
use stele_journal::event::{ContextArchive, ContextItem, detached_event};
use stele_journal::{EventBody, EventRef, Seq, StreamId};
use stele_projections::context::{ContextStore, LEVELS, MEMORY_TYPES};
use stele_projections::{Projection, SnapshotStore};

const AGENTS: [&str; 3] = ["ann", "bob", "cy"];
const PRIORITIES: [&str; 3] = ["low", "normal", "high"];
/// Words of the items' texts: `w0` … `w11`.
const VOCAB: u8 = 12;

fn text(words: &[u8]) -> String {
    words
        .iter()
        .map(|w| format!("w{w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fixture policies and `forbid` secret reads by low-priority agents.
fn gate(dir: &Path) -> PolicyGate {
    let fixtures = crate::context::root().join("fixtures/policies");
    for f in std::fs::read_dir(&fixtures).expect("fixtures/policies") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, dir.join(f.file_name().expect("name"))).expect("copy policy");
    }
    std::fs::write(
        dir.join("low_priority_secrets.cedar"),
        r#"@id("low-priority-reads-no-secret")
forbid (principal, action == Action::"read_data", resource)
when { resource has classification && resource.classification == "secret" &&
       principal.priority == "low" };
"#,
    )
    .expect("write policy");
    PolicyGate::load(dir).expect("policies with the extra forbid")
}

#[derive(Clone, Debug)]
enum Op {
    Store {
        agent: usize,
        id: u8,
        ty: usize,
        level: usize,
        words: Vec<u8>,
    },
    Update {
        agent: usize,
        id: u8,
        ty: Option<usize>,
    },
    Share {
        agent: usize,
        id: u8,
        with: usize,
        level: usize,
    },
    Feedback {
        agent: usize,
        id: u8,
    },
    Archive {
        agent: usize,
        ids: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS.len();
    let id = 0_u8..12;
    prop_oneof![
        5 => (
            agent.clone(),
            id.clone(),
            0..MEMORY_TYPES.len(),
            0..LEVELS.len(),
            proptest::collection::vec(0_u8..VOCAB, 1..8),
        )
            .prop_map(|(agent, id, ty, level, words)| Op::Store { agent, id, ty, level, words }),
        2 => (agent.clone(), id.clone(), proptest::option::of(0..MEMORY_TYPES.len()))
            .prop_map(|(agent, id, ty)| Op::Update { agent, id, ty }),
        2 => (agent.clone(), id.clone(), 0..AGENTS.len(), 0..LEVELS.len())
            .prop_map(|(agent, id, with, level)| Op::Share { agent, id, with, level }),
        1 => (agent.clone(), id.clone()).prop_map(|(agent, id)| Op::Feedback { agent, id }),
        1 => (agent, proptest::collection::vec(id, 0..5)).prop_map(|(agent, ids)| Op::Archive { agent, ids }),
    ]
}

fn body(op: &Op) -> EventBody {
    let name = |id: &u8| format!("m-{id}");
    match op {
        Op::Store {
            agent,
            id,
            ty,
            level,
            words,
        } => EventBody::ContextStored {
            agent: AGENTS[*agent].into(),
            item: Box::new(ContextItem {
                id: name(id),
                memory_type: MEMORY_TYPES[*ty].into(),
                level: LEVELS[*level].into(),
                content: text(words),
                importance_permille: 500,
                ..ContextItem::default()
            }),
        },
        Op::Update { agent, id, ty } => EventBody::ContextUpdated {
            agent: AGENTS[*agent].into(),
            item: name(id),
            content: Some(format!("item {id}, updated")),
            importance_permille: None,
            memory_type: ty.map(|t| MEMORY_TYPES[t].to_owned()),
        },
        Op::Share {
            agent,
            id,
            with,
            level,
        } => EventBody::ContextShared {
            agent: AGENTS[*agent].into(),
            item: name(id),
            with: AGENTS[*with].into(),
            level: LEVELS[*level].into(),
        },
        Op::Feedback { agent, id } => EventBody::ContextFeedbackGiven {
            agent: AGENTS[*agent].into(),
            item: name(id),
            score_permille: 300,
        },
        Op::Archive { agent, ids } => EventBody::ContextArchived {
            agent: AGENTS[*agent].into(),
            archive: Box::new(ContextArchive {
                before_ms: 0,
                items: ids.iter().map(name).collect(),
                original_bytes: 0,
                codec: "lz4".into(),
                compressed: Vec::new(),
            }),
        },
    }
}

fn events(ops: &[Op]) -> Vec<EventRef> {
    let stream = StreamId::new("context:prop").expect("stream");
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let seq = i as u64 + 1;
            detached_event(Seq(seq), seq as i64 * 1_000_000, &stream, None, &body(op)).expect("event")
        })
        .collect()
}

fn fold(events: &[EventRef]) -> ContextStore {
    let mut s = ContextStore::default();
    for e in events {
        s.apply(e);
    }
    s
}

/// The index lists exactly the live items, as (stored_seq, id).
fn assert_index_exact(s: &ContextStore) {
    for (agent, a) in &s.agents {
        let live: BTreeSet<(u64, String)> = a.items.values().map(|i| (i.stored_seq, i.id.clone())).collect();
        let indexed: BTreeSet<(u64, String)> = a.by_seq.iter().cloned().collect();
        assert_eq!(indexed, live, "the retrieval index of {agent}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_retrieval_index_walk_equals_the_scan(
        ops in proptest::collection::vec(op(), 1..80),
        cut in any::<prop::sample::Index>(),
        queries in proptest::collection::vec(
            (0..AGENTS.len(), 0..PRIORITIES.len(), proptest::collection::vec(0..MEMORY_TYPES.len(), 0..3), 0_usize..8),
            1..12,
        ),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let gate = gate(dir.path());
        let events = events(&ops);
        let full = fold(&events);
        assert_index_exact(&full);

        // A snapshot at any seq, loaded and followed by the tail, is the
        // full fold, index included.
        let k = cut.index(events.len());
        let snaps = SnapshotStore::new(&dir.path().join("data"));
        let head = fold(&events[..=k]);
        snaps.save(events[k].seq(), events[k].hash(), &head).expect("save snapshot");
        let mut resumed = snaps.load::<ContextStore>(events[k].seq()).expect("load snapshot").state;
        for e in &events[k + 1..] {
            resumed.apply(e);
        }
        prop_assert_eq!(&resumed, &full);

        for (agent, priority, types, limit) in queries {
            let me = Requester { agent: AGENTS[agent].into(), priority: PRIORITIES[priority].into() };
            let types: Vec<String> = types.iter().map(|t| MEMORY_TYPES[*t].to_owned()).collect();
            let walked = search::recent(&full, &mut ReadGate::new(&gate, &me), &types, limit);
            let scanned = search::recent_scan(&full, &mut ReadGate::new(&gate, &me), &types, limit);
            prop_assert_eq!(&walked, &scanned);

            // The model: own live items of the types, secrets hidden from a
            // low-priority reader, newest `limit` by stored seq.
            let mut model: Vec<(u64, String)> = full
                .agents
                .get(&me.agent)
                .map(|a| {
                    a.items
                        .values()
                        .filter(|i| types.is_empty() || types.contains(&i.memory_type))
                        .filter(|i| !(i.level == "secret" && me.priority == "low"))
                        .map(|i| (i.stored_seq, i.id.clone()))
                        .collect()
                })
                .unwrap_or_default();
            model.sort_by(|a, b| b.cmp(a));
            model.truncate(limit);
            let got: Vec<(u64, String)> = walked.iter().map(|i| (i.stored_seq, i.id.clone())).collect();
            prop_assert_eq!(got, model);
            // Never another agent's item, even one shared with the reader.
            prop_assert!(walked.iter().all(|i| i.owner == me.agent));
        }
    }

    /// The keyword index kept per fact (as the service folds) ranks every
    /// query exactly as the index built from the final store, sorted:
    /// descending BM25, ties by key — the lazy heap order of `ranked`.
    #[test]
    fn keyword_ranking_is_the_sorted_scores(
        ops in proptest::collection::vec(op(), 1..80),
        queries in proptest::collection::vec(proptest::collection::vec(0_u8..VOCAB + 2, 1..4), 1..6),
    ) {
        let events = events(&ops);
        let mut live = Live::new(None);
        for e in &events {
            live.apply(e);
        }
        let built = KeywordIndex::build(&fold(&events));
        prop_assert_eq!(live.keywords.len(), live.store.len());
        for words in queries {
            // Two past the vocabulary: "item" and "updated" (update texts).
            let q = words
                .iter()
                .map(|w| match *w {
                    w if w < VOCAB => format!("w{w}"),
                    w if w == VOCAB => "item".to_owned(),
                    _ => "updated".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let mut sorted = built.scores(&q, &mut |_| true);
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let ranked: Vec<(String, f32)> =
                live.keywords.ranked(&q).map(|(k, s)| (k.to_owned(), s)).collect();
            prop_assert_eq!(ranked, sorted, "query {}", q);
        }
    }
}

fn shown(data: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["context", "show", "alice", "--json"];
    args.extend_from_slice(extra);
    let v = ok_json(&cli(data, &args));
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Through the binary: `stele context show` lists the index newest first
/// (an update keeps an item's place, an archive empties it, a later store
/// heads it), and `stele at --view context` shows the index itself.
#[test]
fn the_cli_shows_items_newest_first_from_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    for (text, ty) in [
        ("first note", "episodic"),
        ("second note", "semantic"),
        ("third note", "episodic"),
    ] {
        ok_json(&cli(
            &data,
            &["context", "store", "alice", text, "--type", ty, "--json"],
        ));
    }
    ok_json(&cli(
        &data,
        &[
            "context",
            "update",
            "alice",
            "m-1",
            "--content",
            "first note, revised",
            "--json",
        ],
    ));
    assert_eq!(shown(&data, &[]), ["m-3", "m-2", "m-1"]);
    assert_eq!(shown(&data, &["--type", "episodic"]), ["m-3", "m-1"]);
    let archived = ok_json(&cli(
        &data,
        &[
            "context",
            "archive",
            "alice",
            "--before",
            "4000000000000",
            "--json",
        ],
    ));
    assert_eq!(archived["archived"], 3);
    assert!(shown(&data, &[]).is_empty());
    ok_json(&cli(
        &data,
        &["context", "store", "alice", "fourth note", "--json"],
    ));
    assert_eq!(shown(&data, &[]), ["m-4"]);

    let at = crate::stele()
        .arg("--data")
        .arg(&data)
        .args(["at", "head", "--view", "context", "--json"])
        .output()
        .expect("at");
    let v = ok_json(&at);
    let state = if v.get("state").is_some() { &v["state"] } else { &v };
    let index = &state["agents"]["alice"]["by_seq"];
    let entries = index.as_array().expect("by_seq is a list");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0][1], "m-4", "{index}");
    assert_eq!(
        entries[0][0], state["agents"]["alice"]["items"]["m-4"]["stored_seq"],
        "{state}"
    );
}
