//! Audit bundles: a range or a subset of the journal written as a directory
//! an outsider can check offline, and the offline checker.
//!
//! A bundle holds `events.jsonl` (every field of each event plus its exact
//! hashed bytes, base64), `keys.json` (the key history: the events that
//! introduced each key, so activation seqs come from the chain),
//! `checkpoints.json` (the signed checkpoint covering the events and the
//! newest one), `proofs.json` (a batched inclusion proof of the events
//! against the covering checkpoint, one of the key events against the
//! newest, and the consistency proof between the two) and `manifest.json`
//! (selection, counts, BLAKE3 of every other file). docs/VERIFYING.md
//! specifies all of it byte by byte.
//!
//! - [`write`]: [`plan`] a selection, find its [`covering_checkpoint`],
//!   [`write_bundle`];
//! - [`check`]: [`verify_bundle`] needs only the directory — no fjall, no
//!   data directory;
//! - [`format`]: the files as data and their one rendering (the verifier
//!   re-renders what it verified and compares bytes, so no byte of a bundle
//!   goes unchecked);
//! - [`multiproof`]: batched RFC 6962 inclusion proofs.
//!
//! What is not here: the OCSF mapping and the compliance reports (they
//! interpret agents and processes; they live in the `stele` binary and
//! plug in as an [`Attachment`]), and opening or checkpointing a journal.

pub mod check;
pub mod format;
pub mod multiproof;
pub mod write;

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;

pub use check::{BundleReport, Failure, VerifyOptions, verify_bundle};
pub use format::{BundleEvent, Content, KeyEntry, Manifest, Selection};
pub use write::{ExportSummary, Plan, covering_checkpoint, plan, write_bundle};

use crate::event::ArchivedEventBody;
use crate::ids::{KeyId, Seq};

/// Size of the archived body's root object: a verifier that reads the
/// fixed fields of `JournalOpened`, `KeyRotated` and `CheckpointSigned`
/// without rkyv finds them at `body.len() - ARCHIVED_BODY_BYTES`
/// (docs/VERIFYING.md).
pub use crate::event::ARCHIVED_BODY_BYTES;

/// Longest line of `events.jsonl` the verifier reads: a maximal body as
/// JSON (escaped, up to 6× its bytes) plus its canonical bytes in base64.
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Largest `manifest.json`, `keys.json` or `checkpoints.json`.
pub const MAX_SMALL_FILE_BYTES: u64 = 64 << 20;
/// Largest `proofs.json` (a scattered subset of a huge journal has
/// `k·log2(n)` hashes).
pub const MAX_PROOFS_BYTES: u64 = 1 << 30;
/// Events rendered per step of an export (in parallel), bounding memory.
pub const EXPORT_CHUNK_EVENTS: usize = 4096;
/// Lines checked per step of a verification (in parallel), bounding memory.
pub const VERIFY_CHUNK_LINES: usize = 8192;

/// A file derived from the exported events, written beside them (e.g.
/// `ocsf.jsonl`): one line per event of `events.jsonl`, in order. The
/// writer renders it; a verifier that knows the same attachment re-renders
/// it from the verified events and compares.
pub trait Attachment: Sync {
    /// File name in the bundle.
    fn file_name(&self) -> &'static str;
    /// What the manifest records about it (e.g. schema and mapping version).
    fn describe(&self) -> serde_json::Value;
    /// The line for one event, without the newline.
    fn render(&self, event: &BundleEvent) -> Vec<u8>;
}

/// The key history derived from the key events: who signs which seqs.
#[derive(Debug, Clone)]
pub(crate) struct KeyHistory {
    pub(crate) entries: Vec<KeyEntry>,
    ids: Vec<KeyId>,
    keys: Vec<VerifyingKey>,
    pub(crate) seqs: Vec<Seq>,
}

impl KeyHistory {
    /// Derives the history: `JournalOpened` at seq 1 introduces the first
    /// key; each `KeyRotated` (signed by the active key, naming it as
    /// `previous`) ends it and introduces the next from the following seq.
    /// Signatures are the caller's. Errors name the index of the event.
    pub(crate) fn derive(events: &[BundleEvent]) -> Result<KeyHistory, (usize, String)> {
        let mut h = KeyHistory {
            entries: Vec::new(),
            ids: Vec::new(),
            keys: Vec::new(),
            seqs: Vec::new(),
        };
        for (i, e) in events.iter().enumerate() {
            let fail = |m: String| (i, m);
            let record = e
                .record()
                .ok_or_else(|| fail("a key event must not be redacted".into()))?;
            let (id, pk) = match record.body() {
                ArchivedEventBody::JournalOpened { key, public_key, .. } if i == 0 => {
                    if e.seq != Seq(1) {
                        return Err(fail(format!(
                            "the first key event must be JournalOpened at seq 1, found seq {}",
                            e.seq
                        )));
                    }
                    if e.key != KeyId(*key) {
                        return Err(fail(format!(
                            "JournalOpened introduces key {} but is signed by {}",
                            KeyId(*key),
                            e.key
                        )));
                    }
                    (KeyId(*key), *public_key)
                }
                ArchivedEventBody::KeyRotated {
                    previous,
                    key,
                    public_key,
                    ..
                } if i > 0 => {
                    let last = h.seqs.last().copied().unwrap_or_default();
                    if e.seq <= last {
                        return Err(fail(format!(
                            "key event at seq {} is not after seq {last}",
                            e.seq
                        )));
                    }
                    let active = *h.ids.last().expect("i > 0");
                    if KeyId(*previous) != active || e.key != active {
                        return Err(fail(format!(
                            "rotation at seq {} names previous key {} and is signed by {}, but the active key is {active}",
                            e.seq,
                            KeyId(*previous),
                            e.key
                        )));
                    }
                    if let Some(prev) = h.entries.last_mut() {
                        prev.active_to = Some(e.seq.0);
                    }
                    (KeyId(*key), *public_key)
                }
                other => {
                    return Err(fail(format!(
                        "seq {} is a {}, expected {}",
                        e.seq,
                        other.kind(),
                        if i == 0 {
                            "journal_opened at seq 1"
                        } else {
                            "key_rotated"
                        }
                    )));
                }
            };
            if KeyId::of(&pk) != id {
                return Err(fail(format!("key id {id} does not match its public key")));
            }
            let vk = VerifyingKey::from_bytes(&pk)
                .map_err(|err| fail(format!("key {id} is not a valid Ed25519 public key: {err}")))?;
            h.entries.push(KeyEntry {
                id: id.to_hex(),
                public_key: hex::encode(pk),
                introduced_at: e.seq.0,
                active_from: if i == 0 { 1 } else { e.seq.0 + 1 },
                active_to: None,
            });
            h.ids.push(id);
            h.keys.push(vk);
            h.seqs.push(e.seq);
        }
        if h.entries.is_empty() {
            return Err((
                0,
                "no key events: the first must be JournalOpened at seq 1".into(),
            ));
        }
        Ok(h)
    }

    /// The key that signs `seq`.
    pub(crate) fn active_at(&self, seq: Seq) -> Option<(KeyId, &VerifyingKey)> {
        let i = self
            .entries
            .partition_point(|k| k.active_from <= seq.0)
            .checked_sub(1)?;
        Some((self.ids[i], &self.keys[i]))
    }

    /// The first key's public key (the root of the rotation chain).
    pub(crate) fn root_public_key(&self) -> [u8; 32] {
        self.keys[0].to_bytes()
    }
}

/// The agent named by a body's `agent` field, if it has one.
fn agent_field(body: &ArchivedEventBody) -> Option<&str> {
    match body {
        ArchivedEventBody::AgentRegistered { agent, .. }
        | ArchivedEventBody::AgentStateChanged { agent, .. }
        | ArchivedEventBody::TaskQueued { agent, .. }
        | ArchivedEventBody::TimerFired { agent, .. }
        | ArchivedEventBody::AgentStopRequested { agent, .. }
        | ArchivedEventBody::ProcessStarted { agent, .. }
        | ArchivedEventBody::RunInterrupted { agent, .. }
        | ArchivedEventBody::HealthChecked { agent, .. } => Some(agent.as_str()),
        _ => None,
    }
}

/// The membership rule of [`Selection::Agent`], applied in seq order:
/// the event is on stream `agent:<agent>`, or its body names the agent, or
/// its run is a task queued for the agent (`tasks` collects those from the
/// `TaskQueued` events seen so far; a task's other events come after it).
pub(crate) fn agent_member(
    stream: &str,
    body: &ArchivedEventBody,
    agent: &str,
    tasks: &mut BTreeSet<String>,
) -> bool {
    if let ArchivedEventBody::TaskQueued { task, agent: a, .. } = body
        && a.as_str() == agent
    {
        tasks.insert(task.as_str().to_owned());
    }
    stream.strip_prefix("agent:") == Some(agent)
        || agent_field(body) == Some(agent)
        || body.run().is_some_and(|r| tasks.contains(r))
}

/// Whether `stream` matches one of the redaction prefixes.
pub(crate) fn redacted_stream(stream: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| stream.starts_with(p.as_str()))
}
