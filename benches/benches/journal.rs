//! Criterion benches of the journal's hot paths, each next to what it is
//! built from, so ratios can be read off a single run:
//!
//! - `encode`: rkyv encoding of an `Annotated` body with ~200 bytes of text
//!   and a run id (249 bytes encoded; `EventBody::encode`), then the
//!   canonical bytes around it (290 bytes; `event::canonical_bytes`) and the
//!   stored record (427 bytes; `event::encode_record`);
//! - `hash`: `event::event_hash` (BLAKE3) over those canonical bytes;
//! - `sign`: one Ed25519 signature of an event hash (`NodeKey::sign`), and
//!   256 of them spread over the cores with rayon, as the writer signs a big
//!   group, per signature;
//! - `verify_batch`: ed25519-dalek `verify_batch` of 64 and 1024 signatures
//!   beside verifying the same signatures one by one, per signature;
//! - `append`: `Journal::append` (1 event) and `Journal::append_many` (16 and
//!   256 events, one group each) from a single appender on a real journal in
//!   a tempdir, `Durability::Sync` and `::Buffered`, per event; beside each,
//!   plain fjall batches of as many records of the same size with the same
//!   persist mode (`SyncData`, `Buffer`) — what the journal adds on top of
//!   its storage;
//! - `read`: `Reader::range` over a 10,000-event journal touching every
//!   hash, and `Reader::stream` over one of its four streams (warm cache);
//! - `follow`: `Reader::follow(Seq(1))` catching up over the same journal;
//! - `merkle`: one `Reader::inclusion_proof` in the ~10,000-leaf tree, its
//!   offline check (`merkle::verify_inclusion`), and `verify::verify` of the
//!   whole journal (chain, hashes, batched signatures, checkpoint), per event.
//!
//! Not measured here: group commit across concurrent appenders (see
//! `stele bench journal --writers N`), cold-cache reads, restart time.
//!
//! Sample sizes and measurement times are small so that the whole file runs
//! in under three minutes on two cores; pass a filter and criterion options
//! (`-- append --measurement-time 10`) for tighter figures of one group.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use rayon::prelude::*;
use stele_journal::event::{canonical_bytes, encode_record, event_hash};
use stele_journal::keys::NodeKey;
use stele_journal::{
    Append, Durability, EventBody, Hash, Journal, Options, Reader, Seq, StreamId, merkle, verify,
};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Events appended to the journal that the read, follow and merkle groups use.
const READ_EVENTS: u64 = 10_000;
/// Streams those events are spread over, round robin.
const READ_STREAMS: u64 = 4;
/// Events per `append_many` call (1 is a plain `append`).
const APPEND_BATCHES: [usize; 3] = [1, 16, 256];
/// Signatures of one group signed over the cores, as the writer does.
const SIGN_GROUP: usize = 256;
/// Signatures per ed25519 batch.
const VERIFY_BATCHES: [usize; 2] = [64, 1024];
/// A fixed timestamp (2023-11-14), so the benched bytes never change.
const AT_NS: i64 = 1_700_000_000_000_000_000;

/// An `Annotated` body of 188 bytes of text and a run id (249 bytes encoded),
/// different per `i`; about what `stele bench journal` appends.
fn body(i: u64) -> EventBody {
    EventBody::Annotated {
        text: format!("bench event {i:010} {}", "x".repeat(165)),
        run: Some(format!("run-{:04}", i % 16)),
    }
}

fn stream(i: u64) -> StreamId {
    StreamId::new(format!("agent:bench-{}", i % READ_STREAMS)).expect("a valid stream id")
}

fn append(i: u64) -> Append {
    Append {
        stream: stream(i),
        cause: None,
        body: body(i),
    }
}

/// One event taken apart: its body bytes, canonical bytes, hash, signature and
/// stored record.
struct Sample {
    body: EventBody,
    body_bytes: Vec<u8>,
    stream: StreamId,
    prev: Hash,
    canonical: Vec<u8>,
    hash: Hash,
    key: NodeKey,
    sig: [u8; 64],
    record: Vec<u8>,
}

fn sample() -> Sample {
    let body = body(42);
    let body_bytes = body.encode().expect("the bench body encodes");
    let stream = stream(42);
    let prev = Hash([7; 32]);
    let canonical = canonical_bytes(Seq(42), AT_NS, &stream, Some(Seq(41)), &body_bytes);
    let hash = event_hash(&prev, &canonical);
    let key = NodeKey::generate();
    let sig = key.sign(&hash);
    let record = encode_record(&prev, &hash, key.id(), &sig, &canonical);
    Sample {
        body,
        body_bytes,
        stream,
        prev,
        canonical,
        hash,
        key,
        sig,
        record,
    }
}

/// A current-thread runtime: the journal's writer runs on its own threads,
/// the runtime only awaits acknowledgements and drives followers.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// Opens a journal; blocking, so never from inside the runtime.
fn open_journal(dir: &Path, durability: Durability) -> Journal {
    Journal::open(
        dir.join("journal"),
        Options {
            durability,
            ..Options::default()
        },
    )
    .expect("the bench journal opens")
}

fn bench_encode(c: &mut Criterion) {
    let s = sample();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(s.body_bytes.len() as u64));
    g.bench_function("body", |b| {
        b.iter(|| black_box(&s.body).encode().expect("encodes"));
    });
    g.throughput(Throughput::Bytes(s.canonical.len() as u64));
    g.bench_function("canonical_bytes", |b| {
        b.iter(|| {
            canonical_bytes(
                black_box(Seq(42)),
                black_box(AT_NS),
                black_box(&s.stream),
                black_box(Some(Seq(41))),
                black_box(&s.body_bytes),
            )
        });
    });
    g.throughput(Throughput::Bytes(s.record.len() as u64));
    g.bench_function("record", |b| {
        b.iter(|| {
            encode_record(
                black_box(&s.prev),
                black_box(&s.hash),
                s.key.id(),
                black_box(&s.sig),
                black_box(&s.canonical),
            )
        });
    });
    g.finish();
}

fn bench_hash(c: &mut Criterion) {
    let s = sample();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(s.canonical.len() as u64));
    g.bench_function("event_hash", |b| {
        b.iter(|| event_hash(black_box(&s.prev), black_box(&s.canonical)));
    });
    g.finish();
}

fn bench_sign(c: &mut Criterion) {
    let s = sample();
    let mut g = c.benchmark_group("sign");
    g.throughput(Throughput::Elements(1));
    g.bench_function("node_key", |b| b.iter(|| s.key.sign(black_box(&s.hash))));
    // What the writer does with a big group: the signatures spread over the
    // cores with rayon. Per signature, against `node_key`.
    let hashes: Vec<Hash> = (0..SIGN_GROUP as u64)
        .map(|i| event_hash(&Hash::ZERO, &i.to_le_bytes()))
        .collect();
    g.throughput(Throughput::Elements(SIGN_GROUP as u64));
    g.bench_function(BenchmarkId::new("rayon", SIGN_GROUP), |b| {
        b.iter(|| {
            hashes
                .par_iter()
                .map(|h| s.key.sign(black_box(h)))
                .collect::<Vec<_>>()
        });
    });
    g.finish();
}

fn bench_verify_batch(c: &mut Criterion) {
    let key = NodeKey::generate();
    let vk = VerifyingKey::from_bytes(&key.public_key()).expect("a valid public key");
    let mut g = c.benchmark_group("verify_batch");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for n in VERIFY_BATCHES {
        // As in a journal: distinct event hashes, one signing key.
        let hashes: Vec<Hash> = (0..n as u64)
            .map(|i| event_hash(&Hash::ZERO, &i.to_le_bytes()))
            .collect();
        let msgs: Vec<&[u8]> = hashes.iter().map(|h| &h.0[..]).collect();
        let sigs: Vec<Signature> = hashes
            .iter()
            .map(|h| Signature::from_bytes(&key.sign(h)))
            .collect();
        let keys = vec![vk; n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("batch", n), |b| {
            b.iter(|| {
                ed25519_dalek::verify_batch(black_box(&msgs), &sigs, &keys).expect("signatures verify")
            });
        });
        g.bench_function(BenchmarkId::new("single", n), |b| {
            b.iter(|| {
                for (m, s) in msgs.iter().zip(&sigs) {
                    vk.verify(black_box(m), s).expect("signature verifies");
                }
            });
        });
    }
    g.finish();
}

fn bench_append(c: &mut Criterion) {
    let rt = runtime();
    // The baseline writes real records of the journal's size.
    let value = sample().record;
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let modes = [
        (Durability::Sync, PersistMode::SyncData, "sync"),
        (Durability::Buffered, PersistMode::Buffer, "buffered"),
    ];
    for (durability, persist, mode) in modes {
        for n in APPEND_BATCHES {
            g.throughput(Throughput::Elements(n as u64));

            let dir = tempdir();
            let journal = open_journal(dir.path(), durability);
            let batch: Vec<Append> = (0..n as u64).map(append).collect();
            g.bench_function(BenchmarkId::new(format!("journal_{mode}"), n), |b| {
                if n == 1 {
                    b.iter_batched(
                        || batch[0].clone(),
                        |a| rt.block_on(journal.append(a)).expect("append"),
                        BatchSize::SmallInput,
                    );
                } else {
                    b.iter_batched(
                        || batch.clone(),
                        |a| rt.block_on(journal.append_many(a)).expect("append_many"),
                        BatchSize::SmallInput,
                    );
                }
            });
            journal.close();

            let dir = tempdir();
            let db = Database::builder(dir.path())
                .manual_journal_persist(true)
                .open()
                .expect("fjall opens");
            let events = db
                .keyspace("events", KeyspaceCreateOptions::default)
                .expect("a keyspace");
            let mut seq = 0u64;
            g.bench_function(BenchmarkId::new(format!("fjall_{mode}"), n), |b| {
                b.iter(|| {
                    let mut wb = db.batch().durability(Some(persist));
                    for _ in 0..n {
                        seq += 1;
                        wb.insert(&events, seq.to_be_bytes(), value.as_slice());
                    }
                    wb.commit().expect("fjall batch commits");
                });
            });
        }
    }
    g.finish();
}

/// A journal of [`READ_EVENTS`] annotations (plus `JournalOpened` and the
/// automatic checkpoint), kept open, with its reader and head seq.
struct Prepared {
    _dir: TempDir,
    journal: Journal,
    reader: Reader,
    head: u64,
}

fn prepare_read_journal(rt: &Runtime) -> Prepared {
    let dir = tempdir();
    let journal = open_journal(dir.path(), Durability::Sync);
    let all: Vec<Append> = (0..READ_EVENTS).map(append).collect();
    rt.block_on(async {
        for chunk in all.chunks(256) {
            journal
                .append_many(chunk.to_vec())
                .await
                .expect("prepare: append");
        }
    });
    let reader = journal.reader();
    let head = reader.head().seq.0;
    assert!(head > READ_EVENTS, "every prepared event is committed");
    Prepared {
        _dir: dir,
        journal,
        reader,
        head,
    }
}

fn bench_read_follow_merkle(c: &mut Criterion) {
    let rt = runtime();
    let p = prepare_read_journal(&rt);
    let (reader, head) = (&p.reader, p.head);

    let mut g = c.benchmark_group("read");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(head));
    g.bench_function("range", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for e in reader.range(Seq(1), Seq(u64::MAX)) {
                black_box(e.expect("a stored event").hash());
                n += 1;
            }
            assert_eq!(n, head, "range yields every event");
        });
    });
    let one = stream(0);
    let in_stream = READ_EVENTS.div_ceil(READ_STREAMS);
    g.throughput(Throughput::Elements(in_stream));
    g.bench_function("stream", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for e in reader.stream(&one, Seq(1)) {
                black_box(e.expect("a stored event").hash());
                n += 1;
            }
            assert_eq!(n, in_stream, "stream yields every event of the stream");
        });
    });
    g.finish();

    let mut g = c.benchmark_group("follow");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(head));
    g.bench_function("catch_up", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut f = reader.follow(Seq(1));
                for _ in 0..head {
                    let e = f
                        .next()
                        .await
                        .expect("the follower ends only when the writer stops");
                    black_box(e.expect("a stored event").hash());
                }
            });
        });
    });
    g.finish();

    let mut g = c.benchmark_group("merkle");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let size = head;
    g.throughput(Throughput::Elements(1));
    let mut next = 0u64;
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| {
            // Every leaf in turn: proofs differ in shape across the tree.
            next = next % size + 1;
            reader.inclusion_proof(Seq(next), size).expect("a proof")
        });
    });
    let seq = Seq(size / 2 + 1);
    let leaf = reader.get(seq).expect("read").expect("stored").hash();
    let proof: Vec<merkle::Digest> = reader
        .inclusion_proof(seq, size)
        .expect("a proof")
        .into_iter()
        .map(|h| h.0)
        .collect();
    let root = reader.root_at(size).expect("a root");
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            merkle::verify_inclusion(black_box(&leaf.0), seq.0 - 1, size, black_box(&proof), &root.0)
                .expect("the proof verifies");
        });
    });
    g.throughput(Throughput::Elements(head));
    // ~0.1 s an iteration: linear sampling would not fit the measurement time.
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("verify_journal", |b| {
        b.iter(|| {
            let report = verify(reader, &|_, _| {});
            assert!(report.ok, "the bench journal verifies: {:?}", report.error);
        });
    });
    g.finish();
    p.journal.close();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = bench_encode, bench_hash, bench_sign, bench_verify_batch, bench_append, bench_read_follow_merkle
}
criterion_main!(benches);
