//! Projections on the real journal: folding from scratch equals a snapshot
//! plus the tail for random histories and cut points; damaged, stale and
//! foreign snapshots are ignored rather than trusted; `stele at` renders a
//! view as of any seq.

use proptest::prelude::*;
use stele_journal::{Append, Durability, EventBody, Journal, Options, Reader, Seq, StreamId};
use stele_projections::{JournalView, Projection, SnapshotStore, fold_range, maintain_snapshots, state_at};

fn history(dir: &std::path::Path, notes: &[(u8, Option<u8>)], checkpoint_interval: u64) -> Reader {
    let journal = Journal::open(
        dir,
        Options {
            durability: Durability::Buffered,
            checkpoint_interval,
            ..Options::default()
        },
    )
    .expect("open");
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
    rt.block_on(async {
        for (i, (stream, run)) in notes.iter().enumerate() {
            journal
                .append(Append {
                    stream: StreamId::new(format!("s{stream}")).expect("id"),
                    cause: None,
                    body: EventBody::Annotated {
                        text: format!("note {i}"),
                        run: run.map(|r| format!("run-{r}")),
                    },
                })
                .await
                .expect("append");
            if i % 17 == 16 {
                journal.rotate_key("test").await.expect("rotate");
            }
        }
    });
    journal.reader()
}

fn scratch(reader: &Reader, to: Seq) -> JournalView {
    let mut v = JournalView::default();
    fold_range(reader, &mut v, Seq::ZERO, to).expect("fold");
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_tail_equals_folding_from_scratch(
        notes in proptest::collection::vec((0u8..4, proptest::option::of(0u8..3)), 1..80),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        interval in prop_oneof![Just(0u64), 5u64..30],
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let reader = history(tmp.path(), &notes, interval);
        let head = reader.head().seq.0;
        let store = SnapshotStore::new(tmp.path());

        // Snapshot at a random cut, then fold the tail.
        let cut = Seq(cut.index(head as usize) as u64 + 1);
        let at_cut = scratch(&reader, cut);
        let hash = reader.get(cut).expect("read").expect("event").hash();
        store.save(cut, hash, &at_cut).expect("save");
        let loaded = store.load::<JournalView>(cut).expect("load");
        prop_assert_eq!(&loaded.state, &at_cut, "a snapshot round-trips");
        let mut resumed = loaded.state;
        fold_range(&reader, &mut resumed, cut, Seq(head)).expect("fold tail");
        let full = scratch(&reader, Seq(head));
        prop_assert_eq!(&resumed, &full);
        prop_assert_eq!(
            serde_json::to_vec(&resumed).expect("json"),
            serde_json::to_vec(&full).expect("json"),
            "byte-identical state"
        );

        // state_at any seq equals folding from scratch to it, snapshot or not.
        let at = Seq(at.index(head as usize) as u64 + 1);
        let folded = state_at::<JournalView>(&reader, &store, at).expect("state at");
        prop_assert_eq!(&folded.state, &scratch(&reader, at));
        prop_assert_eq!(folded.from_snapshot, (cut <= at).then_some(cut));

        // Maintenance snapshots every K and still agrees.
        let m = maintain_snapshots::<JournalView>(&reader, &store, 7, 3).expect("maintain");
        prop_assert_eq!(&m.state, &full);
        prop_assert!(store.list::<JournalView>().expect("list").len() <= 3);
    }
}

#[test]
fn damaged_stale_and_foreign_snapshots_are_ignored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let notes: Vec<(u8, Option<u8>)> = (0..40).map(|i| (i % 3, Some(i % 2))).collect();
    let reader = history(tmp.path(), &notes, 0);
    let head = reader.head().seq;
    let store = SnapshotStore::new(tmp.path());
    let truth = scratch(&reader, head);

    // A snapshot whose recorded hash is not the journal's: from another journal.
    let mut wrong = scratch(&reader, Seq(20));
    wrong.events += 1000;
    store
        .save(Seq(20), stele_journal::Hash([7; 32]), &wrong)
        .expect("save");
    let f = state_at::<JournalView>(&reader, &store, head).expect("state");
    assert_eq!(f.from_snapshot, None, "a foreign snapshot is not used");
    assert_eq!(f.state, truth);

    // A damaged snapshot file.
    let good = scratch(&reader, Seq(30));
    let hash = reader.get(Seq(30)).expect("read").expect("event").hash();
    let path = store.save(Seq(30), hash, &good).expect("save");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 5;
    bytes[last] ^= 0x20;
    std::fs::write(&path, &bytes).expect("write");
    let err = store.load::<JournalView>(Seq(30)).expect_err("damaged");
    assert!(err.to_string().contains("checksum"), "{err}");
    let f = state_at::<JournalView>(&reader, &store, head).expect("state");
    assert_eq!(f.from_snapshot, None, "a damaged snapshot is not used");
    assert_eq!(f.state, truth);

    // A good one is used.
    store.save(Seq(30), hash, &good).expect("save");
    let f = state_at::<JournalView>(&reader, &store, head).expect("state");
    assert_eq!(f.from_snapshot, Some(Seq(30)));
    assert_eq!(f.folded_events, head.0 - 30);
    assert_eq!(f.state, truth);
    assert!(state_at::<JournalView>(&reader, &store, head.next()).is_err());
}

#[test]
fn journal_view_counts_what_happened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let notes: Vec<(u8, Option<u8>)> = (0..20).map(|i| (i % 2, (i < 5).then_some(1))).collect();
    let reader = history(tmp.path(), &notes, 10);
    let v = scratch(&reader, reader.head().seq);
    assert_eq!(v.events, reader.head().seq.0);
    assert_eq!(v.by_kind["annotated"], 20);
    assert_eq!(v.by_kind["key_rotated"], 1);
    assert_eq!(v.by_stream["s0"], 10);
    assert_eq!(v.runs["run-1"].events, 5);
    assert_eq!(v.keys.len(), 2, "first key and the rotated one");
    assert_eq!(v.opens, 1);
    assert!(v.checkpoints >= 2);
    assert_eq!(JournalView::NAME, "journal");
}

#[test]
fn stele_at_renders_a_view_as_of_any_seq() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let run = |args: &[&str]| {
        crate::stele()
            .arg("--data")
            .arg(d)
            .args(args)
            .output()
            .expect("run stele")
    };
    for i in 0..5 {
        assert!(
            run(&["journal", "append", "--text", &format!("n{i}"), "--run", "r"])
                .status
                .success()
        );
    }
    let o = run(&["at", "3", "--view", "journal", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["events"], 3);
    assert_eq!(v["head_seq"], 3);
    let o = run(&["at", "head", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["runs"]["r"]["events"], 5);
    assert_eq!(v["opens"], 5, "each append opened the journal");
    for (args, needle) in [
        (vec!["at", "999"], "beyond the journal's head"),
        (vec!["at", "2", "--view", "nope"], "unknown view"),
        (vec!["at", "x"], "must be a number"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle) && err.trim().lines().count() == 1, "{err}");
    }
    assert!(
        !d.join("snapshots").exists(),
        "a read-only command writes no snapshot"
    );
}
