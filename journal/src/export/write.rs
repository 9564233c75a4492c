//! Writing a bundle from a [`Reader`]: resolve the selection, prove it
//! against the checkpoint that covers it, write the files into a temporary
//! directory beside `--out`, and rename it into place once complete.
//!
//! The writer does not verify the journal (that is `stele journal verify`
//! and, for the bundle, [`super::verify_bundle`]); it needs a checkpoint
//! covering the last selected event and says so when there is none.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use super::format::{
    self, AnchorsProof, BUNDLE_FORMAT, CHECKPOINTS_FILE, CheckpointRef, ConsistencyProof, EVENTS_FILE,
    EventCounts, EventsProof, FileEntry, KEYS_FILE, MANIFEST_FILE, Manifest, PROOFS_FILE, PROOFS_FORMAT,
    Proofs, Selection,
};
use super::{
    Attachment, BundleEvent, EXPORT_CHUNK_EVENTS, KeyHistory, agent_member, multiproof, redacted_stream,
};
use crate::error::{Error, Result};
use crate::event::EventRef;
use crate::ids::{RunId, Seq, StreamId};
use crate::journal::Reader;
use crate::merkle::{self, Digest, NodeSource};
use crate::store::{CheckpointInfo, Store};
use crate::verify::Progress;

/// A resolved selection: which events an export holds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What was asked for.
    pub selection: Selection,
    /// The seqs of a subset (`None`: the whole range `first..=last`).
    seqs: Option<Vec<Seq>>,
    /// First selected seq.
    pub first: Seq,
    /// Last selected seq: the covering checkpoint must cover it.
    pub last: Seq,
    /// Selected events.
    pub count: u64,
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput {
        what: "export selection",
        reason,
    }
}

/// Resolves a selection against the journal, refusing empty or impossible
/// ones with a one-line reason.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad selection; storage errors.
pub fn plan(reader: &Reader, selection: Selection) -> Result<Plan> {
    let head = reader.head().seq;
    let (seqs, first, last) = match &selection {
        Selection::Range { from, to } => {
            if *from == 0 {
                return Err(invalid(
                    "--from must be at least 1 (the first event is seq 1)".into(),
                ));
            }
            if from > to {
                return Err(invalid(format!("--from {from} is after --to {to}")));
            }
            if *to > head.0 {
                return Err(invalid(format!(
                    "--to {to} is beyond the head of the journal (seq {head})"
                )));
            }
            (None, Seq(*from), Seq(*to))
        }
        Selection::Run { run } => {
            let id = RunId::new(run.clone())?;
            let seqs: Vec<Seq> = reader
                .run(&id, Seq(1))
                .map(|e| e.map(|e| e.seq()))
                .collect::<Result<_>>()?;
            if seqs.is_empty() {
                return Err(invalid(format!("run {run} has no events in this journal")));
            }
            (Some(seqs.clone()), seqs[0], seqs[seqs.len() - 1])
        }
        Selection::Agent { agent } => {
            StreamId::new(format!("agent:{agent}")).map_err(|e| match e {
                Error::InvalidInput { reason, .. } => invalid(format!("agent name {agent:?}: {reason}")),
                e => e,
            })?;
            let mut tasks = BTreeSet::new();
            let mut seqs = Vec::new();
            for e in reader.range(Seq(1), head) {
                let e = e?;
                if agent_member(e.stream(), e.body(), agent, &mut tasks) {
                    seqs.push(e.seq());
                }
            }
            if seqs.is_empty() {
                return Err(invalid(format!("agent {agent} has no events in this journal")));
            }
            (Some(seqs.clone()), seqs[0], seqs[seqs.len() - 1])
        }
    };
    let count = seqs
        .as_ref()
        .map_or(last.0 - first.0 + 1, |s: &Vec<Seq>| s.len() as u64);
    Ok(Plan {
        selection,
        seqs,
        first,
        last,
        count,
    })
}

/// The oldest checkpoint whose tree holds event `last`.
///
/// # Errors
/// Storage errors.
pub fn covering_checkpoint(reader: &Reader, last: Seq) -> Result<Option<CheckpointInfo>> {
    Ok(reader.checkpoints()?.into_iter().find(|c| c.size >= last.0))
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// Where.
    pub out: PathBuf,
    /// The manifest as written.
    pub manifest: Manifest,
    /// Events written per second.
    pub events_per_s: f64,
}

/// `MTH(D[lo:hi])` from the store. Ranges of the RFC 6962 recursion start
/// at a multiple of a power of two at least their length, so every node of
/// the subtree lies at an aligned address of the whole tree.
struct Offset<'a> {
    store: &'a Store,
    base: u64,
}

impl NodeSource for Offset<'_> {
    type Error = Error;
    fn node(&self, level: u8, index: u64) -> Result<Digest> {
        debug_assert_eq!(self.base % (1 << level), 0, "subtree must be aligned");
        NodeSource::node(self.store, level, index + (self.base >> level))
    }
}

fn subtree(store: &Store, lo: u64, hi: u64) -> Result<Digest> {
    merkle::root_at(&Offset { store, base: lo }, hi - lo).map_err(|e| match e {
        merkle::ProofFailure::Merkle(m) => Error::Merkle(m.to_string()),
        merkle::ProofFailure::Source(e) => e,
    })
}

fn prove(store: &Store, indices: &[u64], size: u64) -> Result<Vec<Digest>> {
    multiproof::prove(indices, size, &mut |lo, hi| subtree(store, lo, hi))?
        .map_err(|e| Error::Merkle(e.to_string()))
}

/// A file being written, hashed as it goes.
struct Hashed {
    path: PathBuf,
    file: BufWriter<File>,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl Hashed {
    fn create(path: PathBuf) -> Result<Hashed> {
        let file = File::create(&path).map_err(Error::io(&path))?;
        Ok(Hashed {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            bytes: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.file.write_all(bytes).map_err(Error::io(&self.path))
    }

    fn finish(self) -> Result<FileEntry> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(&self.path)(e.into_error()))?;
        file.sync_all().map_err(Error::io(&self.path))?;
        Ok(FileEntry {
            bytes: self.bytes,
            blake3: self.hasher.finalize().to_hex().to_string(),
        })
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8], files: &mut BTreeMap<String, FileEntry>) -> Result<()> {
    let mut f = Hashed::create(dir.join(name))?;
    f.write(bytes)?;
    files.insert(name.to_owned(), f.finish()?);
    Ok(())
}

fn event_at(reader: &Reader, seq: Seq) -> Result<EventRef> {
    reader.get(seq)?.ok_or_else(|| Error::Tampered {
        seq,
        reason: "the event is not stored".into(),
    })
}

/// Refuses an `--out` that exists and is not an empty directory.
fn check_out(out: &Path) -> Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::InvalidInput {
                    what: "--out",
                    reason: format!(
                        "{} exists and is not empty; choose a new directory",
                        out.display()
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if out.exists() => Err(Error::InvalidInput {
            what: "--out",
            reason: format!("{} exists and is not a directory", out.display()),
        }),
        Err(e) => Err(Error::io(out)(e)),
    }
}

/// Writes the bundle of `plan` into `out` (which must not exist or be an
/// empty directory). Redacts the bodies of events on streams starting with
/// one of `redact`; renders each attachment beside the events.
///
/// # Errors
/// [`Error::InvalidInput`] when no checkpoint covers the selection or
/// `out` is taken; storage and I/O errors.
pub fn write_bundle(
    reader: &Reader,
    plan: &Plan,
    redact: &[String],
    attachments: &[&dyn Attachment],
    out: &Path,
    progress: Progress<'_>,
) -> Result<ExportSummary> {
    let started = Instant::now();
    if let Some(p) = redact.iter().find(|p| p.is_empty()) {
        return Err(Error::InvalidInput {
            what: "--redact",
            reason: format!("empty stream prefix {p:?} would redact everything; name a prefix"),
        });
    }
    check_out(out)?;
    let checkpoints = reader.checkpoints()?;
    let covering = checkpoints
        .iter()
        .find(|c| c.size >= plan.last.0)
        .copied()
        .ok_or_else(|| Error::InvalidInput {
            what: "export",
            reason: format!(
                "no checkpoint covers event {} (the newest covers {}); make one with `stele journal checkpoint`",
                plan.last,
                checkpoints
                    .last()
                    .map_or_else(|| "nothing".to_owned(), |c| format!("1..={}", c.size))
            ),
        })?;
    let latest = *checkpoints.last().expect("a covering checkpoint exists");

    let name = out
        .file_name()
        .map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(Error::io(&tmp))?;
    let result = write_into(
        reader,
        plan,
        redact,
        attachments,
        &tmp,
        covering,
        latest,
        progress,
    );
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir(out).map_err(Error::io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(Error::io(out))?;
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(parent))?;
    let secs = started.elapsed().as_secs_f64();
    Ok(ExportSummary {
        out: out.to_owned(),
        events_per_s: if secs > 0.0 { plan.count as f64 / secs } else { 0.0 },
        manifest,
    })
}

/// The next [`EXPORT_CHUNK_EVENTS`] events of `source`.
fn read_chunk(source: &mut dyn Iterator<Item = Result<EventRef>>) -> Result<Vec<EventRef>> {
    let mut chunk = Vec::with_capacity(EXPORT_CHUNK_EVENTS);
    while chunk.len() < EXPORT_CHUNK_EVENTS {
        match source.next() {
            Some(e) => chunk.push(e?),
            None => break,
        }
    }
    Ok(chunk)
}

/// One event rendered: its line, its attachments' lines, redacted or not.
type Rendered = (Vec<u8>, Vec<Vec<u8>>, bool);

/// Where rendered chunks of `events.jsonl` go, in order.
struct Sink<'a> {
    plan: &'a Plan,
    events: &'a mut Hashed,
    extra: &'a mut Vec<Hashed>,
    leaves: Vec<u64>,
    redacted: u64,
    /// The next seq of a range.
    expected: Seq,
    done: u64,
}

impl Sink<'_> {
    /// Writes a chunk's lines with one write per file: BLAKE3 hashes a
    /// large input on all its SIMD lanes, a line at a time one block after
    /// another (15% of an export's CPU, in profiles).
    fn write(
        &mut self,
        chunk: &[EventRef],
        rendered: Vec<Result<Rendered>>,
        progress: Progress<'_>,
    ) -> Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(
            rendered
                .iter()
                .map(|r| r.as_ref().map_or(0, |(l, _, _)| l.len() + 1))
                .sum(),
        );
        let mut extra_bufs: Vec<Vec<u8>> = vec![Vec::new(); self.extra.len()];
        let written = self.lines(chunk, rendered, &mut buf, &mut extra_bufs);
        // What came before a failure is written, as a line at a time did.
        self.events.write(&buf)?;
        for (f, b) in self.extra.iter_mut().zip(&extra_bufs) {
            f.write(b)?;
        }
        written?;
        self.done += chunk.len() as u64;
        progress(self.done, self.plan.count);
        Ok(())
    }

    fn lines(
        &mut self,
        chunk: &[EventRef],
        rendered: Vec<Result<Rendered>>,
        buf: &mut Vec<u8>,
        extra_bufs: &mut [Vec<u8>],
    ) -> Result<()> {
        for (r, item) in chunk.iter().zip(rendered) {
            let (line, lines, hide) = item?;
            if self.plan.seqs.is_none() {
                if r.seq() != self.expected {
                    return Err(Error::Tampered {
                        seq: self.expected,
                        reason: format!(
                            "event {} is missing (the next stored event is {})",
                            self.expected,
                            r.seq()
                        ),
                    });
                }
                self.expected = self.expected.next();
            }
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            for (b, l) in extra_bufs.iter_mut().zip(lines) {
                b.extend_from_slice(&l);
                b.push(b'\n');
            }
            self.leaves.push(r.seq().0 - 1);
            self.redacted += u64::from(hide);
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn write_into(
    reader: &Reader,
    plan: &Plan,
    redact: &[String],
    attachments: &[&dyn Attachment],
    dir: &Path,
    covering: CheckpointInfo,
    latest: CheckpointInfo,
    progress: Progress<'_>,
) -> Result<Manifest> {
    let store = reader.store();
    let mut files = BTreeMap::new();

    // events.jsonl (and the attachments, line for line)
    let mut events = Hashed::create(dir.join(EVENTS_FILE))?;
    let mut extra: Vec<Hashed> = attachments
        .iter()
        .map(|a| Hashed::create(dir.join(a.file_name())))
        .collect::<Result<_>>()?;
    let mut sink = Sink {
        plan,
        events: &mut events,
        extra: &mut extra,
        leaves: Vec::with_capacity(usize::try_from(plan.count).unwrap_or(0)),
        redacted: 0,
        expected: plan.first,
        done: 0,
    };
    let mut source: Box<dyn Iterator<Item = Result<EventRef>> + '_> = match &plan.seqs {
        None => Box::new(reader.range(plan.first, plan.last)),
        Some(seqs) => Box::new(seqs.iter().map(|s| event_at(reader, *s))),
    };
    // A pipeline: chunk k is rendered on all cores while this thread writes
    // chunk k-1 and reads chunk k+1 (then helps render). The earliest
    // failure wins: what was rendered before a read error is written first.
    let mut next = read_chunk(source.as_mut());
    let mut pending: Option<(Vec<EventRef>, Vec<Result<Rendered>>)> = None;
    loop {
        let chunk = match std::mem::replace(&mut next, Ok(Vec::new())) {
            Ok(c) => c,
            Err(e) => {
                if let Some((c, r)) = pending.take() {
                    sink.write(&c, r, progress)?;
                }
                return Err(e);
            }
        };
        if chunk.is_empty() {
            break;
        }
        let mut rendered: Vec<Result<Rendered>> = Vec::new();
        let mut written: Result<()> = Ok(());
        rayon::in_place_scope(|s| {
            s.spawn(|_| {
                rendered = chunk
                    .par_iter()
                    .map(|r| {
                        let hide = redacted_stream(r.stream(), redact);
                        let ev = BundleEvent::from_record(r.clone(), hide)?;
                        let lines = attachments.iter().map(|a| a.render(&ev)).collect();
                        Ok((format::render_line(&ev), lines, hide))
                    })
                    .collect();
            });
            if let Some((c, r)) = pending.take() {
                written = sink.write(&c, r, progress);
            }
            next = read_chunk(source.as_mut());
        });
        written?;
        pending = Some((chunk, rendered));
    }
    if let Some((c, r)) = pending.take() {
        sink.write(&c, r, progress)?;
    }
    drop(source);
    let Sink {
        leaves,
        redacted,
        expected,
        ..
    } = sink;
    if plan.seqs.is_none() && expected != plan.last.next() {
        return Err(Error::Tampered {
            seq: expected,
            reason: format!("event {expected} is missing; the range ends at {}", plan.last),
        });
    }
    files.insert(EVENTS_FILE.to_owned(), events.finish()?);
    for (a, f) in attachments.iter().zip(extra) {
        files.insert(a.file_name().to_owned(), f.finish()?);
    }

    // keys.json: JournalOpened at 1 and every rotation the latest tree holds
    let key_seqs: Vec<Seq> = reader
        .keys()?
        .iter()
        .map(|k| {
            if k.since.0 <= 1 {
                Seq(1)
            } else {
                Seq(k.since.0 - 1)
            }
        })
        .filter(|s| s.0 <= latest.size)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let key_events: Vec<BundleEvent> = key_seqs
        .iter()
        .map(|s| BundleEvent::from_record(event_at(reader, *s)?, false))
        .collect::<Result<_>>()?;
    let history = KeyHistory::derive(&key_events).map_err(|(i, reason)| Error::Corrupt {
        seq: key_events.get(i).map_or(Seq(1), |e| e.seq),
        reason: format!("the key events do not form a key history: {reason}"),
    })?;
    write_file(
        dir,
        KEYS_FILE,
        &format::render_keys(&history.entries, &key_events),
        &mut files,
    )?;

    // checkpoints.json
    let cp_event = |c: &CheckpointInfo| BundleEvent::from_record(event_at(reader, c.seq)?, false);
    let (cov_ev, lat_ev) = (cp_event(&covering)?, cp_event(&latest)?);
    write_file(
        dir,
        CHECKPOINTS_FILE,
        &format::render_checkpoints(
            (covering.size, &covering.root, &cov_ev),
            (latest.size, &latest.root, &lat_ev),
        ),
        &mut files,
    )?;

    // proofs.json
    let events_proof = prove(store, &leaves, covering.size)?;
    let mut anchor_seqs: BTreeSet<u64> = key_seqs.iter().map(|s| s.0).collect();
    if covering.seq.0 <= latest.size {
        anchor_seqs.insert(covering.seq.0);
    }
    let anchor_seqs: Vec<u64> = anchor_seqs.into_iter().collect();
    let anchor_idx: Vec<u64> = anchor_seqs.iter().map(|s| s - 1).collect();
    let anchors_proof = prove(store, &anchor_idx, latest.size)?;
    let consistency = reader.consistency_proof(covering.size, latest.size)?;
    let proofs = Proofs {
        format: PROOFS_FORMAT.into(),
        events: EventsProof {
            size: covering.size,
            hashes: format::hex_list(&events_proof),
        },
        anchors: AnchorsProof {
            size: latest.size,
            seqs: anchor_seqs,
            hashes: format::hex_list(&anchors_proof),
        },
        consistency: ConsistencyProof {
            old_size: covering.size,
            new_size: latest.size,
            hashes: consistency.iter().map(|h| h.to_hex()).collect(),
        },
    };
    write_file(dir, PROOFS_FILE, &format::render_proofs(&proofs), &mut files)?;

    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        selection: plan.selection.clone(),
        redact: redact.to_vec(),
        events: EventCounts {
            count: plan.count,
            redacted,
            first_seq: plan.first.0,
            last_seq: plan.last.0,
        },
        checkpoint: CheckpointRef {
            size: covering.size,
            seq: covering.seq.0,
        },
        latest_checkpoint: CheckpointRef {
            size: latest.size,
            seq: latest.seq.0,
        },
        keys: history.entries.len() as u64,
        attachments: attachments
            .iter()
            .map(|a| (a.file_name().to_owned(), a.describe()))
            .collect(),
        files,
    };
    let mut m = Hashed::create(dir.join(MANIFEST_FILE))?;
    m.write(&format::render_manifest(&manifest))?;
    m.finish()?;
    Ok(manifest)
}
