//! The offline verifier of a bundle: needs the directory and nothing else
//! (no fjall, no data directory, no private key).
//!
//! Order of the checks, each stopping at the first failure, which is named
//! by file, line and seq: the manifest (its own canonical form) and the
//! size and BLAKE3 of every file it lists; `keys.json` (the key history is
//! re-derived from the key events, whose hashes and signatures are
//! checked); `checkpoints.json` (both checkpoint events: hash, signature by
//! the key active at their seq, body = the declared size and root);
//! `proofs.json` (consistency from the covering tree to the latest, the
//! key events' multiproof in the latest tree); `events.jsonl` line by line
//! (canonical header = JSON fields, hash recomputed, JSON = the rendering
//! of the canonical bytes, signed by the key active at its seq, selection
//! and redaction rules, chain links for a range; signatures in parallel
//! ed25519 batches); the events' multiproof in the covering tree; and the
//! manifest's counts. Every file is compared byte for byte with the
//! rendering of what was verified, so no byte of a bundle goes unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;
use std::time::Instant;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use rayon::prelude::*;

use super::format::{
    self, BUNDLE_FORMAT, CHECKPOINTS_FILE, CHECKPOINTS_FORMAT, CheckpointRef, CheckpointsIn, EVENTS_FILE,
    KEYS_FILE, KEYS_FORMAT, KeysIn, LineIn, MANIFEST_FILE, Manifest, PROOFS_FILE, PROOFS_FORMAT, Proofs,
    Selection,
};
use super::{
    Attachment, BundleEvent, Content, KeyHistory, MAX_LINE_BYTES, MAX_PROOFS_BYTES, MAX_SMALL_FILE_BYTES,
    VERIFY_CHUNK_LINES, agent_member, multiproof, redacted_stream,
};
use crate::event::ArchivedEventBody;
use crate::ids::{Hash, Seq};
use crate::merkle;
use crate::verify::Progress;

/// How to verify.
#[derive(Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// Require this Ed25519 public key to be the first key of the journal
    /// (the root of the rotation chain) or the signer of the latest
    /// checkpoint.
    pub trusted_key: Option<[u8; 32]>,
    /// Attachments this verifier can re-render (others are checked by
    /// their BLAKE3 only and listed as unchecked).
    pub attachments: &'a [&'a dyn Attachment],
    /// Called with (events checked, events in the bundle).
    pub progress: Progress<'a>,
}

impl std::fmt::Debug for VerifyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("trusted_key", &self.trusted_key.map(hex::encode))
            .field("attachments", &self.attachments.len())
            .finish_non_exhaustive()
    }
}

impl Default for VerifyOptions<'_> {
    fn default() -> Self {
        VerifyOptions {
            trusted_key: None,
            attachments: &[],
            progress: &|_, _| {},
        }
    }
}

/// The first thing that failed: which file, where, and what.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// File of the bundle (or the bundle directory itself).
    pub file: String,
    /// Line of `events.jsonl` (1-based).
    pub line: Option<u64>,
    /// Seq of the event concerned.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        match (self.line, self.seq) {
            (Some(l), Some(s)) => write!(f, " line {l} (seq {s})")?,
            (Some(l), None) => write!(f, " line {l}")?,
            (None, Some(s)) => write!(f, " (seq {s})")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.reason)
    }
}

fn fail(file: &str, reason: impl Into<String>) -> Failure {
    Failure {
        file: file.to_owned(),
        line: None,
        seq: None,
        reason: reason.into(),
    }
}

fn fail_seq(file: &str, seq: Seq, reason: impl Into<String>) -> Failure {
    Failure {
        seq: Some(seq.0),
        ..fail(file, reason)
    }
}

/// The outcome of [`verify_bundle`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BundleReport {
    /// Everything verified.
    pub ok: bool,
    /// What the bundle says it selected.
    pub selection: Option<String>,
    /// Events in `events.jsonl` that verified.
    pub events: u64,
    /// Of which redacted.
    pub redacted: u64,
    /// First and last seq.
    pub first_seq: Option<u64>,
    /// Last seq.
    pub last_seq: Option<u64>,
    /// The covering checkpoint's tree size and root.
    pub checkpoint_size: Option<u64>,
    /// Its root (hex).
    pub checkpoint_root: Option<String>,
    /// The latest checkpoint's tree size.
    pub latest_size: Option<u64>,
    /// Its root (hex).
    pub latest_root: Option<String>,
    /// The first key of the journal (hex): the root of the key history.
    pub root_key: Option<String>,
    /// The public key that signed the latest checkpoint (hex).
    pub latest_key: Option<String>,
    /// Keys in the history.
    pub keys: u64,
    /// Attachments re-rendered and compared.
    pub attachments_checked: Vec<String>,
    /// Attachments only hash-checked (this verifier cannot render them).
    pub attachments_unchecked: Vec<String>,
    /// Events of an agent subset whose membership could not be checked
    /// (a redacted event hides what ties them to the agent).
    pub membership_unchecked: u64,
    /// The first failure.
    pub failure: Option<Failure>,
    /// The failure as one line.
    pub error: Option<String>,
    /// Events verified per second.
    pub events_per_s: f64,
}

/// Verifies the bundle in `dir`; names the first failure.
#[must_use]
pub fn verify_bundle(dir: &Path, opts: &VerifyOptions<'_>) -> BundleReport {
    let started = Instant::now();
    let mut report = BundleReport::default();
    let result = run(dir, opts, &mut report);
    let secs = started.elapsed().as_secs_f64();
    report.events_per_s = if secs > 0.0 {
        report.events as f64 / secs
    } else {
        0.0
    };
    match result {
        Ok(()) => report.ok = true,
        Err(f) => {
            report.error = Some(f.to_string());
            report.failure = Some(f);
        }
    }
    report
}

fn read_limited(dir: &Path, name: &str, limit: u64) -> Result<Vec<u8>, Failure> {
    let path = dir.join(name);
    let f = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail(name, "missing"),
        _ => fail(name, format!("cannot read: {e}")),
    })?;
    let mut out = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| fail(name, format!("cannot read: {e}")))?;
    if out.len() as u64 > limit {
        return Err(fail(name, format!("larger than the limit of {limit} bytes")));
    }
    Ok(out)
}

fn hash_file(dir: &Path, name: &str) -> Result<(u64, String), Failure> {
    let path = dir.join(name);
    let mut f = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail(name, "missing (the manifest lists it)"),
        _ => fail(name, format!("cannot read: {e}")),
    })?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| fail(name, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, h.finalize().to_hex().to_string()))
}

fn canonical_form(name: &str, found: &[u8], expected: &[u8]) -> Result<(), Failure> {
    if found == expected {
        return Ok(());
    }
    Err(fail(
        name,
        format!(
            "does not match the rendering of what it holds, {}",
            format::first_difference(found, expected)
        ),
    ))
}

/// A plain file name that is not one of the bundle's own files.
fn attachment_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && ![
            MANIFEST_FILE,
            EVENTS_FILE,
            KEYS_FILE,
            CHECKPOINTS_FILE,
            PROOFS_FILE,
        ]
        .contains(&name)
}

/// Checks one signature.
fn sig_ok(vk: &VerifyingKey, hash: &Hash, sig: &[u8; 64]) -> bool {
    vk.verify(&hash.0, &Signature::from_bytes(sig)).is_ok()
}

/// The checkpoint parts verified from `checkpoints.json`.
struct Checkpoint {
    size: u64,
    root: [u8; 32],
    event: BundleEvent,
    signer: [u8; 32],
}

fn run(dir: &Path, opts: &VerifyOptions<'_>, report: &mut BundleReport) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(fail(
            &dir.display().to_string(),
            "no such bundle directory (expected a directory written by `stele audit export`)",
        ));
    }

    // 1. The manifest and the files it lists.
    let mbytes = read_limited(dir, MANIFEST_FILE, MAX_SMALL_FILE_BYTES)?;
    let manifest: Manifest = serde_json::from_slice(&mbytes)
        .map_err(|e| fail(MANIFEST_FILE, format!("not a bundle manifest: {e}")))?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(fail(
            MANIFEST_FILE,
            format!(
                "format {:?}, this verifier reads {BUNDLE_FORMAT:?}",
                manifest.format
            ),
        ));
    }
    canonical_form(MANIFEST_FILE, &mbytes, &format::render_manifest(&manifest))?;
    report.selection = Some(manifest.selection.to_string());
    if let Some(bad) = manifest.attachments.keys().find(|n| !attachment_name_ok(n)) {
        return Err(fail(
            MANIFEST_FILE,
            format!("attachment name {bad:?} is not a plain file name"),
        ));
    }
    let mut expected: BTreeSet<&str> = [EVENTS_FILE, KEYS_FILE, CHECKPOINTS_FILE, PROOFS_FILE].into();
    expected.extend(manifest.attachments.keys().map(String::as_str));
    for name in &expected {
        if !manifest.files.contains_key(*name) {
            return Err(fail(MANIFEST_FILE, format!("`files` does not list {name}")));
        }
    }
    for (name, entry) in &manifest.files {
        if !expected.contains(name.as_str()) {
            return Err(fail(
                MANIFEST_FILE,
                format!("`files` lists {name:?}, which is not a file of this bundle"),
            ));
        }
        let (bytes, blake3) = hash_file(dir, name)?;
        if blake3 != entry.blake3 || bytes != entry.bytes {
            return Err(fail(
                name,
                format!(
                    "BLAKE3 {blake3} ({bytes} bytes) differs from the manifest's {} ({} bytes); the file was changed",
                    entry.blake3, entry.bytes
                ),
            ));
        }
    }
    for r in &manifest.redact {
        if r.is_empty() {
            return Err(fail(MANIFEST_FILE, "`redact` holds an empty prefix"));
        }
    }

    // 2. The key history.
    let kbytes = read_limited(dir, KEYS_FILE, MAX_SMALL_FILE_BYTES)?;
    let keys_in: KeysIn<'_> =
        serde_json::from_slice(&kbytes).map_err(|e| fail(KEYS_FILE, format!("not a key history: {e}")))?;
    if keys_in.format != KEYS_FORMAT {
        return Err(fail(
            KEYS_FILE,
            format!("format {:?}, expected {KEYS_FORMAT:?}", keys_in.format),
        ));
    }
    let mut key_events = Vec::with_capacity(keys_in.events.len());
    for (i, l) in keys_in.events.iter().enumerate() {
        let e = l
            .decode()
            .map_err(|r| fail(KEYS_FILE, format!("key event {}: {r}", i + 1)))?;
        key_events.push(e);
    }
    let history = KeyHistory::derive(&key_events).map_err(|(i, r)| match key_events.get(i) {
        Some(e) => fail_seq(KEYS_FILE, e.seq, r),
        None => fail(KEYS_FILE, r),
    })?;
    for e in &key_events {
        let (id, vk) = history
            .active_at(e.seq)
            .ok_or_else(|| fail_seq(KEYS_FILE, e.seq, "no key is active at this seq"))?;
        if id != e.key || !sig_ok(vk, &e.hash, &e.sig) {
            return Err(fail_seq(
                KEYS_FILE,
                e.seq,
                format!("key event's signature does not verify with key {id}"),
            ));
        }
    }
    if keys_in.keys != history.entries {
        let i = keys_in
            .keys
            .iter()
            .zip(&history.entries)
            .position(|(a, b)| a != b)
            .unwrap_or(keys_in.keys.len().min(history.entries.len()));
        return Err(fail(
            KEYS_FILE,
            format!(
                "`keys[{i}]` is {:?}, but the key events say {:?}",
                keys_in.keys.get(i),
                history.entries.get(i)
            ),
        ));
    }
    canonical_form(
        KEYS_FILE,
        &kbytes,
        &format::render_keys(&history.entries, &key_events),
    )?;
    report.root_key = Some(hex::encode(history.root_public_key()));
    report.keys = history.entries.len() as u64;

    // 3. The checkpoints.
    let cbytes = read_limited(dir, CHECKPOINTS_FILE, MAX_SMALL_FILE_BYTES)?;
    let cps: CheckpointsIn<'_> = serde_json::from_slice(&cbytes)
        .map_err(|e| fail(CHECKPOINTS_FILE, format!("not a checkpoints file: {e}")))?;
    if cps.format != CHECKPOINTS_FORMAT {
        return Err(fail(
            CHECKPOINTS_FILE,
            format!("format {:?}, expected {CHECKPOINTS_FORMAT:?}", cps.format),
        ));
    }
    let check_cp = |label: &str, cp: &format::CheckpointIn<'_>| -> Result<Checkpoint, Failure> {
        let bad = |r: String| fail(CHECKPOINTS_FILE, format!("{label} checkpoint: {r}"));
        let root: [u8; 32] = format::parse_hex("root", &cp.root).map_err(bad)?;
        let e = cp.event.decode().map_err(bad)?;
        let Some(record) = e.record() else {
            return Err(bad("a checkpoint event must not be redacted".into()));
        };
        match record.body() {
            ArchivedEventBody::CheckpointSigned { size, root: r } => {
                if size.to_native() != cp.size || *r != root {
                    return Err(bad(format!(
                        "the signed event commits to size {} root {}, the file says size {} root {}",
                        size.to_native(),
                        hex::encode(r),
                        cp.size,
                        cp.root
                    )));
                }
            }
            other => {
                return Err(bad(format!(
                    "seq {} is a {}, not a checkpoint",
                    e.seq,
                    other.kind()
                )));
            }
        }
        if e.seq.0 != cp.size + 1 {
            return Err(bad(format!(
                "a checkpoint of {} events must be event {}, it is {}",
                cp.size,
                cp.size + 1,
                e.seq
            )));
        }
        let (id, vk) = history
            .active_at(e.seq)
            .ok_or_else(|| bad(format!("no key is active at seq {}", e.seq)))?;
        if id != e.key {
            return Err(bad(format!(
                "signed by key {}, but the key active at seq {} is {id}",
                e.key, e.seq
            )));
        }
        if !sig_ok(vk, &e.hash, &e.sig) {
            return Err(bad(format!("signature does not verify with key {id}")));
        }
        Ok(Checkpoint {
            size: cp.size,
            root,
            signer: vk.to_bytes(),
            event: e,
        })
    };
    let covering = check_cp("covering", &cps.covering)?;
    let latest = check_cp("latest", &cps.latest)?;
    if latest.size < covering.size {
        return Err(fail(
            CHECKPOINTS_FILE,
            format!(
                "the latest checkpoint ({}) is older than the covering one ({})",
                latest.size, covering.size
            ),
        ));
    }
    canonical_form(
        CHECKPOINTS_FILE,
        &cbytes,
        &format::render_checkpoints(
            (covering.size, &Hash(covering.root), &covering.event),
            (latest.size, &Hash(latest.root), &latest.event),
        ),
    )?;
    for (what, found, cp) in [
        ("checkpoint", manifest.checkpoint, &covering),
        ("latest_checkpoint", manifest.latest_checkpoint, &latest),
    ] {
        let derived = CheckpointRef {
            size: cp.size,
            seq: cp.event.seq.0,
        };
        if found != derived {
            return Err(fail(
                MANIFEST_FILE,
                format!("`{what}` is {found:?}, but checkpoints.json holds {derived:?}"),
            ));
        }
    }
    report.checkpoint_size = Some(covering.size);
    report.checkpoint_root = Some(hex::encode(covering.root));
    report.latest_size = Some(latest.size);
    report.latest_root = Some(hex::encode(latest.root));
    report.latest_key = Some(hex::encode(latest.signer));
    if let Some(t) = opts.trusted_key
        && t != history.root_public_key()
        && t != latest.signer
    {
        return Err(fail(
            CHECKPOINTS_FILE,
            format!(
                "the trusted key {} is neither the journal's first key {} nor the signer {} of the latest checkpoint",
                hex::encode(t),
                hex::encode(history.root_public_key()),
                hex::encode(latest.signer)
            ),
        ));
    }

    // 4. Consistency and the anchors.
    let pbytes = read_limited(dir, PROOFS_FILE, MAX_PROOFS_BYTES)?;
    let proofs: Proofs =
        serde_json::from_slice(&pbytes).map_err(|e| fail(PROOFS_FILE, format!("not a proofs file: {e}")))?;
    if proofs.format != PROOFS_FORMAT {
        return Err(fail(
            PROOFS_FILE,
            format!("format {:?}, expected {PROOFS_FORMAT:?}", proofs.format),
        ));
    }
    canonical_form(PROOFS_FILE, &pbytes, &format::render_proofs(&proofs))?;
    if proofs.events.size != covering.size
        || proofs.consistency.old_size != covering.size
        || proofs.consistency.new_size != latest.size
        || proofs.anchors.size != latest.size
    {
        return Err(fail(
            PROOFS_FILE,
            format!(
                "tree sizes (events {}, consistency {}→{}, anchors {}) do not match the checkpoints ({} and {})",
                proofs.events.size,
                proofs.consistency.old_size,
                proofs.consistency.new_size,
                proofs.anchors.size,
                covering.size,
                latest.size
            ),
        ));
    }
    let consistency = format::parse_hex_list("consistency.hashes", &proofs.consistency.hashes)
        .map_err(|r| fail(PROOFS_FILE, r))?;
    if covering.size > 0 {
        merkle::verify_consistency(
            covering.size,
            latest.size,
            &covering.root,
            &latest.root,
            &consistency,
        )
        .map_err(|e| {
            fail(
                PROOFS_FILE,
                format!("consistency proof from {} to {}: {e}", covering.size, latest.size),
            )
        })?;
    }
    let mut anchored: BTreeMap<u64, [u8; 32]> = key_events.iter().map(|e| (e.seq.0, e.hash.0)).collect();
    if covering.event.seq.0 <= latest.size {
        anchored.insert(covering.event.seq.0, covering.event.hash.0);
    }
    let expected_anchors: Vec<u64> = anchored.keys().copied().collect();
    if proofs.anchors.seqs != expected_anchors {
        return Err(fail(
            PROOFS_FILE,
            format!(
                "`anchors.seqs` is {:?}, but the key and checkpoint events are {expected_anchors:?}",
                proofs.anchors.seqs
            ),
        ));
    }
    if let Some(s) = expected_anchors.iter().find(|s| **s > latest.size) {
        return Err(fail_seq(
            KEYS_FILE,
            Seq(*s),
            format!(
                "key event is not in the latest checkpoint's tree of {}",
                latest.size
            ),
        ));
    }
    let anchor_leaves: Vec<(u64, [u8; 32])> = anchored.iter().map(|(s, h)| (s - 1, *h)).collect();
    let anchor_hashes =
        format::parse_hex_list("anchors.hashes", &proofs.anchors.hashes).map_err(|r| fail(PROOFS_FILE, r))?;
    multiproof::verify(&anchor_leaves, latest.size, &anchor_hashes, &latest.root).map_err(|e| {
        fail(
            PROOFS_FILE,
            format!("anchors proof (key events in the latest tree): {e}"),
        )
    })?;

    // 5. The events.
    let mut checked: Vec<(&dyn Attachment, BufReader<File>)> = Vec::new();
    for (name, desc) in &manifest.attachments {
        match opts.attachments.iter().find(|a| a.file_name() == name) {
            Some(a) => {
                if &a.describe() != desc {
                    return Err(fail(
                        MANIFEST_FILE,
                        format!(
                            "attachment {name} is described as {desc}, but this verifier renders {}",
                            a.describe()
                        ),
                    ));
                }
                let f = File::open(dir.join(name)).map_err(|e| fail(name, format!("cannot read: {e}")))?;
                checked.push((*a, BufReader::new(f)));
                report.attachments_checked.push(name.clone());
            }
            None => report.attachments_unchecked.push(name.clone()),
        }
    }
    let ctx = Ctx {
        history: &history,
        renderers: checked.iter().map(|(a, _)| *a).collect(),
    };
    let mut state = Walk {
        manifest: &manifest,
        covering_size: covering.size,
        known: anchored
            .iter()
            .map(|(s, h)| (*s, *h))
            .chain([(latest.event.seq.0, latest.event.hash.0)])
            .collect(),
        key_seqs: key_events.iter().map(|e| e.seq.0).collect(),
        prev: None,
        last: None,
        tasks: BTreeSet::new(),
        seen_redacted: false,
        leaves: Vec::new(),
    };
    let file =
        File::open(dir.join(EVENTS_FILE)).map_err(|e| fail(EVENTS_FILE, format!("cannot read: {e}")))?;
    let mut rd = BufReader::with_capacity(1 << 20, file);
    let mut line_no = 0u64;
    let total = manifest.events.count;
    let mut next = read_chunk(&mut rd, 0);
    loop {
        // The earliest failure wins: a read error concerns later lines
        // than the chunk before it, so it surfaces only once that is checked.
        let lines = next?;
        if lines.is_empty() {
            break;
        }
        let first_no = line_no + 1;
        // Check this chunk on all cores while the next one is read.
        let (results, read) = rayon::join(
            || -> Vec<Result<Checked, Failure>> {
                lines
                    .par_iter()
                    .enumerate()
                    .map(|(i, l)| ctx.check_line(l, first_no + i as u64))
                    .collect()
            },
            || read_chunk(&mut rd, line_no + lines.len() as u64),
        );
        next = read;
        let mut sigs: Vec<(u64, Seq, Hash, [u8; 64], VerifyingKey)> = Vec::with_capacity(results.len());
        let mut first_fail: Option<Failure> = None;
        for (i, r) in results.into_iter().enumerate() {
            let no = first_no + i as u64;
            let step = r.and_then(|c| {
                state.step(&c.event, no, report)?;
                for ((a, rd), expected) in checked.iter_mut().zip(&c.attachments) {
                    let mut found = Vec::new();
                    rd.by_ref()
                        .take(MAX_LINE_BYTES as u64 + 1)
                        .read_until(b'\n', &mut found)
                        .map_err(|e| fail(a.file_name(), format!("cannot read: {e}")))?;
                    if found.pop() != Some(b'\n') || found != *expected {
                        return Err(Failure {
                            line: Some(no),
                            seq: Some(c.event.seq.0),
                            ..fail(
                                a.file_name(),
                                format!(
                                    "does not match the rendering of event {}, {}",
                                    c.event.seq,
                                    format::first_difference(&found, expected)
                                ),
                            )
                        });
                    }
                }
                Ok(c)
            });
            match step {
                Ok(c) => sigs.push((no, c.event.seq, c.event.hash, c.event.sig, c.key)),
                Err(f) => {
                    first_fail = Some(f);
                    break;
                }
            }
        }
        if let Some((no, seq)) = first_bad_signature(&sigs)
            && first_fail.as_ref().and_then(|f| f.line).is_none_or(|l| no < l)
        {
            let (id, _) = history.active_at(seq).expect("checked per line");
            let entry = history.entries.iter().find(|k| k.id == id.to_hex());
            let span = entry.map_or_else(String::new, |k| {
                format!(
                    " (active for seqs {}..={})",
                    k.active_from,
                    k.active_to.map_or_else(|| "".to_owned(), |t| t.to_string())
                )
            });
            return Err(Failure {
                line: Some(no),
                seq: Some(seq.0),
                ..fail(
                    EVENTS_FILE,
                    format!(
                        "signature does not verify with key {id}{span}; the event was not signed by it or was changed"
                    ),
                )
            });
        }
        if let Some(f) = first_fail {
            return Err(f);
        }
        line_no += lines.len() as u64;
        report.events = line_no;
        (opts.progress)(line_no, total);
    }
    for (a, rd) in &mut checked {
        let mut rest = [0u8; 1];
        if rd
            .read(&mut rest)
            .map_err(|e| fail(a.file_name(), format!("cannot read: {e}")))?
            != 0
        {
            return Err(fail(a.file_name(), "has more lines than events.jsonl"));
        }
    }
    let Some(last) = state.last else {
        return Err(fail(EVENTS_FILE, "holds no events"));
    };
    if let Selection::Range { to, .. } = manifest.selection
        && last.0 != to
    {
        return Err(fail(
            EVENTS_FILE,
            format!("the range ends at {to}, but the last event is {last}; events are missing"),
        ));
    }

    // 6. The events' membership in the covering tree.
    let event_hashes =
        format::parse_hex_list("events.hashes", &proofs.events.hashes).map_err(|r| fail(PROOFS_FILE, r))?;
    multiproof::verify(&state.leaves, covering.size, &event_hashes, &covering.root).map_err(|e| {
        fail(
            PROOFS_FILE,
            format!("events proof (events in the covering tree): {e}"),
        )
    })?;

    // 7. The manifest's counts.
    let derived = format::EventCounts {
        count: report.events,
        redacted: report.redacted,
        first_seq: state.leaves.first().map_or(0, |l| l.0 + 1),
        last_seq: last.0,
    };
    if manifest.events != derived {
        return Err(fail(
            MANIFEST_FILE,
            format!(
                "`events` is {:?}, but events.jsonl holds {derived:?}",
                manifest.events
            ),
        ));
    }
    if manifest.keys != report.keys {
        return Err(fail(
            MANIFEST_FILE,
            format!("`keys` is {}, but keys.json holds {}", manifest.keys, report.keys),
        ));
    }
    report.first_seq = Some(derived.first_seq);
    report.last_seq = Some(derived.last_seq);
    Ok(())
}

/// Up to [`VERIFY_CHUNK_LINES`] lines of `events.jsonl` (without their
/// newlines); `before` lines were read already.
fn read_chunk(rd: &mut BufReader<File>, before: u64) -> Result<Vec<Vec<u8>>, Failure> {
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(VERIFY_CHUNK_LINES);
    while lines.len() < VERIFY_CHUNK_LINES {
        let mut buf = Vec::new();
        let n = rd
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| fail(EVENTS_FILE, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            let why = if buf.len() > MAX_LINE_BYTES {
                format!("longer than the limit of {MAX_LINE_BYTES} bytes")
            } else {
                "does not end with a newline".to_owned()
            };
            return Err(Failure {
                line: Some(before + lines.len() as u64 + 1),
                ..fail(EVENTS_FILE, why)
            });
        }
        buf.pop();
        lines.push(buf);
    }
    Ok(lines)
}

/// What the parallel part needs.
struct Ctx<'a> {
    history: &'a KeyHistory,
    renderers: Vec<&'a dyn Attachment>,
}

struct Checked {
    event: BundleEvent,
    key: VerifyingKey,
    attachments: Vec<Vec<u8>>,
}

impl Ctx<'_> {
    /// Everything about one line that needs no other line.
    fn check_line(&self, line: &[u8], no: u64) -> Result<Checked, Failure> {
        let at = |seq: Option<u64>, reason: String| Failure {
            line: Some(no),
            seq,
            ..fail(EVENTS_FILE, reason)
        };
        let parsed: LineIn<'_> =
            serde_json::from_slice(line).map_err(|e| at(None, format!("not an event record: {e}")))?;
        let event = parsed.decode().map_err(|r| at(Some(parsed_seq(line)), r))?;
        let seq = Some(event.seq.0);
        let rendered = format::render_line(&event);
        if rendered != line {
            return Err(at(
                seq,
                format!(
                    "the record does not match the rendering of its canonical bytes, {}",
                    format::first_difference(line, &rendered)
                ),
            ));
        }
        let (id, vk) = self
            .history
            .active_at(event.seq)
            .ok_or_else(|| at(seq, "no key of keys.json is active at this seq".into()))?;
        if id != event.key {
            return Err(at(
                seq,
                format!(
                    "signed by key {}, but the key active at seq {} is {id}",
                    event.key, event.seq
                ),
            ));
        }
        let attachments = self.renderers.iter().map(|a| a.render(&event)).collect();
        Ok(Checked {
            key: *vk,
            event,
            attachments,
        })
    }
}

/// The seq of a record that failed to decode, for the message (0 if even
/// that is unreadable).
fn parsed_seq(line: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    serde_json::from_slice::<SeqOnly>(line).map_or(0, |s| s.seq)
}

/// The cross-line state of the walk over `events.jsonl`.
struct Walk<'a> {
    manifest: &'a Manifest,
    covering_size: u64,
    /// Hashes of the events `keys.json` and `checkpoints.json` hold.
    known: BTreeMap<u64, [u8; 32]>,
    key_seqs: BTreeSet<u64>,
    prev: Option<Hash>,
    last: Option<Seq>,
    tasks: BTreeSet<String>,
    seen_redacted: bool,
    leaves: Vec<(u64, [u8; 32])>,
}

impl Walk<'_> {
    fn step(&mut self, e: &BundleEvent, no: u64, report: &mut BundleReport) -> Result<(), Failure> {
        let bad = |reason: String| Failure {
            line: Some(no),
            seq: Some(e.seq.0),
            ..fail(EVENTS_FILE, reason)
        };
        match (&self.manifest.selection, self.last) {
            (Selection::Range { from, .. }, None) if e.seq.0 != *from => {
                return Err(bad(format!(
                    "the range starts at {from}, but the first event is {}",
                    e.seq
                )));
            }
            (Selection::Range { .. }, Some(last)) if e.seq != last.next() => {
                return Err(bad(format!(
                    "expected event {} next; the range must be contiguous",
                    last.next()
                )));
            }
            (_, Some(last)) if e.seq <= last => {
                return Err(bad(format!(
                    "seqs must increase; the previous line is event {last}"
                )));
            }
            _ => {}
        }
        if let (Selection::Range { .. }, Some(prev)) = (&self.manifest.selection, self.prev)
            && e.prev != prev
        {
            return Err(bad(format!(
                "prev is {}, but the previous event's hash is {}; the chain is broken",
                e.prev.to_hex(),
                prev.to_hex()
            )));
        }
        if e.seq.0 > self.covering_size {
            return Err(bad(format!(
                "not in the covering checkpoint's tree of {} events",
                self.covering_size
            )));
        }
        if let Some(h) = self.known.get(&e.seq.0)
            && *h != e.hash.0
        {
            return Err(bad(format!(
                "hash differs from the same event in keys.json/checkpoints.json ({})",
                hex::encode(h)
            )));
        }
        let hidden = redacted_stream(&e.stream, &self.manifest.redact);
        match &e.content {
            Content::Full { record, .. } => {
                if hidden {
                    return Err(bad(format!(
                        "stream {} matches a redaction prefix of the manifest, but the body is present",
                        e.stream
                    )));
                }
                let body = record.body();
                match body {
                    ArchivedEventBody::KeyRotated { .. } if !self.key_seqs.contains(&e.seq.0) => {
                        return Err(bad("a key rotation that keys.json does not hold".into()));
                    }
                    ArchivedEventBody::JournalOpened { key, .. }
                        if e.seq.0 > 1 && crate::KeyId(*key) != e.key =>
                    {
                        return Err(bad(format!(
                            "journal reopened with key {}, but it is signed by the active key {}; keys change only by KeyRotated",
                            crate::KeyId(*key),
                            e.key
                        )));
                    }
                    ArchivedEventBody::CheckpointSigned { size, .. } if size.to_native() + 1 != e.seq.0 => {
                        return Err(bad(format!(
                            "checkpoint covers {} events, expected {} (all events before it)",
                            size.to_native(),
                            e.seq.0 - 1
                        )));
                    }
                    _ => {}
                }
                match &self.manifest.selection {
                    Selection::Run { run } if body.run() != Some(run.as_str()) => {
                        return Err(bad(format!("the event is not part of run {run}")));
                    }
                    Selection::Agent { agent } if !agent_member(&e.stream, body, agent, &mut self.tasks) => {
                        if !self.seen_redacted {
                            return Err(bad(format!("the event is not one of agent {agent}'s")));
                        }
                        report.membership_unchecked += 1;
                    }
                    _ => {}
                }
            }
            Content::Redacted { .. } => {
                if !hidden {
                    return Err(bad(format!(
                        "the body is withheld, but stream {} matches no redaction prefix of the manifest",
                        e.stream
                    )));
                }
                self.seen_redacted = true;
                report.redacted += 1;
            }
        }
        self.prev = Some(e.hash);
        self.last = Some(e.seq);
        self.leaves.push((e.seq.0 - 1, e.hash.0));
        Ok(())
    }
}

/// The first bad signature by line: the batches of
/// [`crate::verify::first_bad_signature`] (coalesced by key, ZIP 215
/// rules, on all cores), shared with `stele journal verify`.
fn first_bad_signature(items: &[(u64, Seq, Hash, [u8; 64], VerifyingKey)]) -> Option<(u64, Seq)> {
    crate::verify::first_bad_signature(items, |p| crate::verify::Signed {
        msg: &p.2.0,
        sig: &p.3,
        key: p.4.as_bytes(),
    })
    .map(|i| (items[i].0, items[i].1))
}
