//! Property tests on the real journal: encode/decode round trips, chain and
//! index invariants over random append sequences, Merkle checkpoints and
//! proofs against an independent RFC 6962 recomputation, and that any single
//! byte flip of a record is detected.

use proptest::prelude::*;
use stele_journal::event::{canonical_bytes, encode_record, event_hash};
use stele_journal::keys::NodeKey;
use stele_journal::merkle;
use stele_journal::{Append, Durability, EventBody, EventRef, Journal, Options, RunId, Seq, StreamId};

fn body_strategy() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (".{0,300}", proptest::option::of("[a-z0-9-]{1,20}"))
            .prop_map(|(text, run)| EventBody::Annotated { text, run }),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(size, root)| EventBody::CheckpointSigned { size, root }),
        (any::<[u8; 8]>(), any::<[u8; 8]>(), any::<[u8; 32]>(), ".{0,40}").prop_map(
            |(previous, key, public_key, reason)| {
                EventBody::KeyRotated {
                    previous,
                    key,
                    public_key,
                    reason,
                }
            }
        ),
        (
            any::<u32>(),
            ".{0,40}",
            any::<[u8; 8]>(),
            any::<[u8; 32]>(),
            any::<u64>()
        )
            .prop_map(|(format_version, software, key, public_key, recovered_head)| {
                EventBody::JournalOpened {
                    format_version,
                    software,
                    key,
                    public_key,
                    recovered_head,
                }
            }),
    ]
}

/// Naive MTH straight from RFC 6962 section 2.1, with BLAKE3.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => *blake3::hash(b"").as_bytes(),
        1 => {
            let mut h = blake3::Hasher::new();
            h.update(&[0]);
            h.update(&leaves[0]);
            *h.finalize().as_bytes()
        }
        n => {
            let k = (n - 1).next_power_of_two().max(1);
            let k = if k >= n { k / 2 } else { k };
            let mut h = blake3::Hasher::new();
            h.update(&[1]);
            h.update(&mth(&leaves[..k]));
            h.update(&mth(&leaves[k..]));
            *h.finalize().as_bytes()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip_and_are_deterministic(
        body in body_strategy(),
        seq in 1u64..u64::MAX,
        at in any::<i64>(),
        cause in proptest::option::of(1u64..u64::MAX),
        stream in "[a-z:]{1,30}",
        prev in any::<[u8; 32]>(),
    ) {
        let stream = StreamId::new(stream).expect("valid id");
        let bytes = body.encode().expect("encodes");
        prop_assert_eq!(&bytes, &body.encode().expect("encodes twice"), "encoding is deterministic");
        let canonical = canonical_bytes(Seq(seq), at, &stream, cause.map(Seq), &bytes);
        let prev = stele_journal::Hash(prev);
        let hash = event_hash(&prev, &canonical);
        let key = NodeKey::generate();
        let record = encode_record(&prev, &hash, key.id(), &key.sign(&hash), &canonical);
        let e = EventRef::parse(Seq(seq), record).expect("parses");
        let ev = e.to_event().expect("decodes");
        prop_assert_eq!(ev.body, body);
        prop_assert_eq!(ev.seq, Seq(seq));
        prop_assert_eq!(ev.at, at);
        prop_assert_eq!(ev.cause, cause.map(Seq));
        prop_assert_eq!(ev.stream, stream);
        prop_assert_eq!(e.computed_hash(), hash);
        stele_journal::verify::check_signature(&e, &key.public_key()).expect("signature verifies");
    }

    #[test]
    fn any_single_byte_flip_of_a_record_is_detected(
        body in body_strategy(),
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let stream = StreamId::new("s").expect("id");
        let canonical = canonical_bytes(Seq(7), 42, &stream, None, &body.encode().expect("encodes"));
        let prev = stele_journal::Hash([3; 32]);
        let hash = event_hash(&prev, &canonical);
        let key = NodeKey::generate();
        let mut record = encode_record(&prev, &hash, key.id(), &key.sign(&hash), &canonical);
        let i = index.index(record.len());
        record[i] ^= flip;
        let detected = match EventRef::parse(Seq(7), record) {
            Err(_) => true,
            Ok(e) => {
                stele_journal::verify::check_one(&e, Some(&prev)).is_err()
                    || e.key() != key.id()
                    || stele_journal::verify::check_signature(&e, &key.public_key()).is_err()
            }
        };
        prop_assert!(detected, "flip at byte {} went unnoticed", i);
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), seq in any::<u64>()) {
        let _ = EventRef::parse(Seq(seq), bytes);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: u8,
        run: Option<u8>,
        cause_back: Option<u8>,
        text: String,
    },
    Many(u8),
    Checkpoint,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..4, proptest::option::of(0u8..3), proptest::option::of(0u8..5), "[a-z ]{0,40}")
            .prop_map(|(stream, run, cause_back, text)| Op::Append { stream, run, cause_back, text }),
        2 => (2u8..20).prop_map(Op::Many),
        1 => Just(Op::Checkpoint),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn journal_invariants_hold_for_random_histories(
        ops in proptest::collection::vec(op_strategy(), 1..60),
        interval in prop_oneof![Just(0u64), 2u64..25],
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(tmp.path(), Options {
            durability: Durability::Buffered,
            checkpoint_interval: interval,
            ..Options::default()
        }).expect("open");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            for op in &ops {
                let head = journal.reader().head().seq.0;
                match op {
                    Op::Append { stream, run, cause_back, text } => {
                        let cause = cause_back.and_then(|b| head.checked_sub(u64::from(b))).filter(|c| *c > 0).map(Seq);
                        journal.append(Append {
                            stream: StreamId::new(format!("s{stream}")).expect("id"),
                            cause,
                            body: EventBody::Annotated { text: text.clone(), run: run.map(|r| format!("run-{r}")) },
                        }).await.expect("append");
                    }
                    Op::Many(n) => {
                        let batch: Vec<Append> = (0..*n).map(|i| Append {
                            stream: StreamId::new("many").expect("id"),
                            cause: None,
                            body: EventBody::Annotated { text: format!("{i}"), run: None },
                        }).collect();
                        let receipts = journal.append_many(batch).await.expect("append many");
                        for w in receipts.windows(2) {
                            assert_eq!(w[1].seq.0, w[0].seq.0 + 1, "append_many is contiguous");
                        }
                    }
                    Op::Checkpoint => { journal.checkpoint().await.expect("checkpoint"); }
                }
            }
        });
        let reader = journal.reader();
        let report = stele_journal::verify(&reader, &|_, _| {});
        prop_assert!(report.ok, "verify: {:?}", report.error);
        let events: Vec<EventRef> = reader.range(Seq(1), Seq(u64::MAX)).map(|e| e.expect("read")).collect();
        prop_assert_eq!(events.len() as u64, reader.head().seq.0);
        let mut prev = stele_journal::Hash::ZERO;
        let mut at = i64::MIN;
        for (i, e) in events.iter().enumerate() {
            prop_assert_eq!(e.seq().0, i as u64 + 1, "gapless");
            prop_assert_eq!(e.prev(), prev, "chained");
            prop_assert!(e.at() >= at, "time never goes back");
            if let Some(c) = e.cause() { prop_assert!(c < e.seq()); }
            prev = e.hash();
            at = e.at();
        }
        // Indexes agree with a scan.
        for s in ["s0", "s1", "s2", "s3", "many", "system"] {
            let id = StreamId::new(s).expect("id");
            let via_index: Vec<u64> = reader.stream(&id, Seq(1)).map(|e| e.expect("read").seq().0).collect();
            let via_scan: Vec<u64> = events.iter().filter(|e| e.stream() == s).map(|e| e.seq().0).collect();
            prop_assert_eq!(via_index, via_scan, "stream index of {}", s);
        }
        for r in 0..3 {
            let id = RunId::new(format!("run-{r}")).expect("id");
            let via_index: Vec<u64> = reader.run(&id, Seq(1)).map(|e| e.expect("read").seq().0).collect();
            let via_scan: Vec<u64> = events.iter().filter_map(|e| match e.to_event().expect("decode").body {
                EventBody::Annotated { run: Some(x), .. } if x == id.as_str() => Some(e.seq().0),
                _ => None,
            }).collect();
            prop_assert_eq!(via_index, via_scan, "run index of run-{}", r);
        }
        // Merkle: checkpoints, roots and proofs against the naive recomputation.
        let hashes: Vec<[u8; 32]> = events.iter().map(|e| e.hash().0).collect();
        let n = hashes.len() as u64;
        for cp in reader.checkpoints().expect("checkpoints") {
            prop_assert_eq!(cp.root.0, mth(&hashes[..cp.size as usize]), "checkpoint at size {}", cp.size);
            prop_assert_eq!(cp.seq.0, cp.size + 1, "a checkpoint covers everything before it");
        }
        if interval >= 2 {
            let cps = reader.checkpoints().expect("checkpoints");
            prop_assert!(n < interval || !cps.is_empty(), "automatic checkpoints every {} events", interval);
        }
        for size in [1, n / 2 + 1, n] {
            prop_assert_eq!(reader.root_at(size).expect("root").0, mth(&hashes[..size as usize]));
            for seq in [1, size / 2 + 1, size] {
                let proof: Vec<[u8; 32]> = reader.inclusion_proof(Seq(seq), size).expect("proof").iter().map(|h| h.0).collect();
                prop_assert!(merkle::verify_inclusion(&hashes[seq as usize - 1], seq - 1, size, &proof, &mth(&hashes[..size as usize])).is_ok());
            }
            for m in [1, size / 3 + 1, size] {
                let proof: Vec<[u8; 32]> = reader.consistency_proof(m, size).expect("proof").iter().map(|h| h.0).collect();
                prop_assert!(merkle::verify_consistency(m, size, &mth(&hashes[..m as usize]), &mth(&hashes[..size as usize]), &proof).is_ok());
            }
        }
    }
}
