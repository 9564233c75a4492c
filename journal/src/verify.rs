//! Verification: walk the chain from seq 1, re-hash every event, check every
//! signature (ed25519 batches coalesced by key, spread over the cores:
//! [`first_bad_signature`], shared with the bundle verifier) against the
//! key the chain itself declares, check every checkpoint's Merkle root, and
//! compare the end with the meta head and the head file. Stops at the first
//! bad seq and says what was expected and what was found. Memory is bounded:
//! events stream from disk, signatures are held one window at a time.

use std::collections::BTreeMap;
use std::time::Instant;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::event::{ArchivedEventBody, EventRef};
use crate::ids::{Hash, KeyId, Seq};
use crate::journal::Reader;
use crate::limits::VERIFY_BATCH;
use crate::merkle::Frontier;

/// The outcome of [`verify`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    /// Everything verified.
    pub ok: bool,
    /// Events that verified.
    pub events: u64,
    /// Head seq of the journal.
    pub head_seq: u64,
    /// Head hash (hex).
    pub head_hash: String,
    /// The first seq that failed.
    pub first_bad_seq: Option<u64>,
    /// What failed there.
    pub error: Option<String>,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Keys seen in the chain.
    pub keys: u64,
    /// Throughput.
    pub events_per_s: f64,
}

/// Checks an event's hash and its link to `prev` (when known).
///
/// # Errors
/// [`Error::Tampered`] with expected and found values.
pub fn check_one(e: &EventRef, prev: Option<&Hash>) -> Result<()> {
    if let Some(prev) = prev
        && e.prev() != *prev
    {
        return Err(Error::Tampered {
            seq: e.seq(),
            reason: format!(
                "prev hash mismatch (expected {}, found {}); the chain is broken before this event",
                prev.short(),
                e.prev().short()
            ),
        });
    }
    let computed = e.computed_hash();
    if computed != e.hash() {
        return Err(Error::Tampered {
            seq: e.seq(),
            reason: format!(
                "hash mismatch (expected {}, found {}); the event was modified after it was written",
                computed.short(),
                e.hash().short()
            ),
        });
    }
    Ok(())
}

/// Checks one signature.
///
/// # Errors
/// [`Error::Tampered`].
pub fn check_signature(e: &EventRef, public_key: &[u8; 32]) -> Result<()> {
    let vk = VerifyingKey::from_bytes(public_key).map_err(|err| Error::Tampered {
        seq: e.seq(),
        reason: format!("key {} is not a valid Ed25519 public key: {err}", e.key()),
    })?;
    vk.verify(&e.hash().0, &Signature::from_bytes(&e.sig()))
        .map_err(|_| Error::Tampered {
            seq: e.seq(),
            reason: format!("signature does not verify with key {}", e.key()),
        })
}

struct PendingSig {
    seq: Seq,
    hash: Hash,
    sig: [u8; 64],
    key: VerifyingKey,
}

/// One signature for [`first_bad_signature`]: the signed message (an
/// event hash), the signature and the signer's public key.
pub(crate) struct Signed<'a> {
    pub(crate) msg: &'a [u8; 32],
    pub(crate) sig: &'a [u8; 64],
    pub(crate) key: &'a [u8; 32],
}

/// The index of the first of `items` whose signature does not verify, or
/// `None` when all do; `parts` says where each item's message, signature
/// and key are. Shared by `stele journal verify` ([`verify`]) and the
/// offline bundle verifier (`export::check`).
///
/// Batches of [`VERIFY_BATCH`] run on all cores (rayon). Each batch
/// coalesces its signatures by key (ed25519-zebra): one point per key
/// instead of one per signature in the multiscalar multiplication, and a
/// journal is signed by a handful of keys, so a batch costs about half of
/// an uncoalesced one. Its rules are ZIP 215's (the cofactored equation of
/// RFC 8032 §5.1.7), under which every signature valid by the cofactorless
/// check is valid too, and a batch agrees with checking one by one. A
/// failed batch is searched one by one with the same rules, so the index is
/// exact; and a failed batch never passes, whatever happens.
pub(crate) fn first_bad_signature<T: Sync>(
    items: &[T],
    parts: impl Fn(&T) -> Signed<'_> + Sync,
) -> Option<usize> {
    use ed25519_zebra::{VerificationKey, VerificationKeyBytes, batch};
    items
        .par_chunks(VERIFY_BATCH)
        .enumerate()
        .filter_map(|(n, chunk)| {
            let mut batch = batch::Verifier::new();
            for item in chunk {
                let s = parts(item);
                batch.queue((
                    VerificationKeyBytes::from(*s.key),
                    Signature::from_bytes(s.sig),
                    s.msg,
                ));
            }
            if batch.verify(rand_core::OsRng).is_ok() {
                return None;
            }
            let one_ok = |item: &T| {
                let s = parts(item);
                VerificationKey::try_from(VerificationKeyBytes::from(*s.key))
                    .and_then(|k| k.verify(&Signature::from_bytes(s.sig), s.msg))
                    .is_ok()
            };
            let at = chunk.iter().position(|item| !one_ok(item)).unwrap_or(0);
            Some(n * VERIFY_BATCH + at)
        })
        .min()
}

/// Verifies `pending`; returns the first bad seq and why.
fn flush_sigs(pending: &mut Vec<PendingSig>) -> Option<(Seq, Error)> {
    let bad = first_bad_signature(pending, |p| Signed {
        msg: &p.hash.0,
        sig: &p.sig,
        key: p.key.as_bytes(),
    })
    .map(|i| {
        let p = &pending[i];
        (
            p.seq,
            Error::Tampered {
                seq: p.seq,
                reason: format!(
                    "signature does not verify with key {}; the event was not signed by it or was changed",
                    KeyId::of(p.key.as_bytes())
                ),
            },
        )
    });
    pending.clear();
    bad
}

/// Progress callback: (events done, events total).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Walks and checks the whole journal.
#[must_use]
pub fn verify(reader: &Reader, progress: Progress<'_>) -> VerifyReport {
    let started = Instant::now();
    let head = reader.head();
    let mut report = VerifyReport {
        ok: false,
        events: 0,
        head_seq: head.seq.0,
        head_hash: head.hash.to_hex(),
        first_bad_seq: None,
        error: None,
        checkpoints: 0,
        keys: 0,
        events_per_s: 0.0,
    };
    let result = walk(reader, head.seq, &mut report, progress);
    let secs = started.elapsed().as_secs_f64();
    report.events_per_s = if secs > 0.0 {
        report.events as f64 / secs
    } else {
        0.0
    };
    match result {
        Ok(()) => report.ok = true,
        Err((seq, e)) => {
            report.first_bad_seq = Some(seq.0);
            report.error = Some(e.to_string());
        }
    }
    report
}

fn walk(
    reader: &Reader,
    head: Seq,
    report: &mut VerifyReport,
    progress: Progress<'_>,
) -> Result<(), (Seq, Error)> {
    let window = VERIFY_BATCH * rayon::current_num_threads().max(1) * 2;
    let mut pending: Vec<PendingSig> = Vec::with_capacity(window);
    let mut keys: BTreeMap<KeyId, VerifyingKey> = BTreeMap::new();
    let mut active: Option<KeyId> = None;
    let mut frontier = Frontier::new();
    let mut prev = Hash::ZERO;
    let mut expected = Seq(1);
    let mut verified_upto = 0u64;

    // Any structural failure first settles the signatures before it, so the
    // *first* bad seq is reported.
    let fail = |pending: &mut Vec<PendingSig>, seq: Seq, e: Error| -> (Seq, Error) {
        match flush_sigs(pending) {
            Some((bad, why)) if bad < seq => (bad, why),
            _ => (seq, e),
        }
    };

    for item in reader.store().range(Seq(1), Seq(u64::MAX)) {
        let e = match item {
            Ok(e) => e,
            Err(err) => return Err(fail(&mut pending, expected, err)),
        };
        let seq = e.seq();
        if seq != expected {
            let err = Error::Tampered {
                seq: expected,
                reason: format!("event {expected} is missing (the next stored event is {seq})"),
            };
            return Err(fail(&mut pending, expected, err));
        }
        if let Err(err) = check_one(&e, Some(&prev)) {
            return Err(fail(&mut pending, seq, err));
        }
        if let Err(err) = check_body(&e, &mut keys, &mut active, &frontier) {
            return Err(fail(&mut pending, seq, err));
        }
        if matches!(e.body(), ArchivedEventBody::CheckpointSigned { .. }) {
            report.checkpoints += 1;
        }
        let key = match keys.get(&e.key()) {
            Some(k) if active_at(&e, active) => *k,
            _ => {
                let err = Error::Tampered {
                    seq,
                    reason: format!(
                        "signed by key {}, but the active key here is {}",
                        e.key(),
                        active.map_or_else(|| "none".into(), |k| k.to_string())
                    ),
                };
                return Err(fail(&mut pending, seq, err));
            }
        };
        if let ArchivedEventBody::KeyRotated { key: new, .. } = e.body() {
            active = Some(KeyId(*new));
        }
        pending.push(PendingSig {
            seq,
            hash: e.hash(),
            sig: e.sig(),
            key,
        });
        frontier.push(&e.hash().0);
        prev = e.hash();
        expected = seq.next();
        if pending.len() >= window {
            if let Some(bad) = flush_sigs(&mut pending) {
                return Err(bad);
            }
            verified_upto = seq.0;
            report.events = verified_upto;
            progress(verified_upto, head.0);
        }
    }
    if let Some(bad) = flush_sigs(&mut pending) {
        return Err(bad);
    }
    report.events = expected.0 - 1;
    report.keys = keys.len() as u64;
    progress(report.events, head.0);
    let _ = verified_upto;
    if expected.0 - 1 != head.0 || prev != reader.head().hash {
        return Err((
            expected,
            Error::Tampered {
                seq: expected,
                reason: format!("the chain ends at {} but the head is {}", expected.0 - 1, head),
            },
        ));
    }
    match reader.acknowledged_head() {
        Ok(acked) if acked.seq > head => Err((
            head.next(),
            Error::Shortened {
                acknowledged: acked.seq,
                hash: acked.hash.to_hex(),
                found: head,
            },
        )),
        Ok(_) => Ok(()),
        Err(err) => Err((head.next(), err)),
    }
}

/// The event's key must be the active one (a `KeyRotated` event is signed by
/// the previous key, which is still active at that point).
fn active_at(e: &EventRef, active: Option<KeyId>) -> bool {
    active == Some(e.key())
}

fn check_body(
    e: &EventRef,
    keys: &mut BTreeMap<KeyId, VerifyingKey>,
    active: &mut Option<KeyId>,
    frontier: &Frontier,
) -> Result<()> {
    let seq = e.seq();
    let bad = |reason: String| Error::Tampered { seq, reason };
    let parse_key = |id: &[u8; 8], pk: &[u8; 32]| -> Result<(KeyId, VerifyingKey)> {
        let id = KeyId(*id);
        if KeyId::of(pk) != id {
            return Err(bad(format!("key id {id} does not match its public key")));
        }
        let vk = VerifyingKey::from_bytes(pk).map_err(|err| bad(format!("invalid public key: {err}")))?;
        Ok((id, vk))
    };
    match e.body() {
        ArchivedEventBody::JournalOpened { key, public_key, .. } => {
            let (id, vk) = parse_key(key, public_key)?;
            if seq.0 == 1 {
                keys.insert(id, vk);
                *active = Some(id);
            } else if *active != Some(id) {
                return Err(bad(format!(
                    "journal reopened with key {id}, but the active key is {}; keys change only by KeyRotated",
                    active.map_or_else(|| "none".into(), |k| k.to_string())
                )));
            }
        }
        ArchivedEventBody::KeyRotated {
            previous,
            key,
            public_key,
            ..
        } => {
            if *active != Some(KeyId(*previous)) || e.key() != KeyId(*previous) {
                return Err(bad("key rotation not signed by the active key".into()));
            }
            let (id, vk) = parse_key(key, public_key)?;
            keys.insert(id, vk);
        }
        ArchivedEventBody::CheckpointSigned { size, root } => {
            let size = size.to_native();
            if size != frontier.size() {
                return Err(bad(format!(
                    "checkpoint covers {size} events, expected {} (all events before it)",
                    frontier.size()
                )));
            }
            let computed = frontier.root();
            if computed != *root {
                return Err(bad(format!(
                    "checkpoint root mismatch (expected {}, found {})",
                    hex::encode(&computed[..6]),
                    hex::encode(&root[..6])
                )));
            }
        }
        ArchivedEventBody::Annotated { .. }
        | ArchivedEventBody::AgentRegistered { .. }
        | ArchivedEventBody::AgentStateChanged { .. }
        | ArchivedEventBody::TaskQueued { .. }
        | ArchivedEventBody::TaskPlaced { .. }
        | ArchivedEventBody::TaskPreempted { .. }
        | ArchivedEventBody::TaskFinished { .. }
        | ArchivedEventBody::RuntimeStarted { .. }
        | ArchivedEventBody::TimerFired { .. }
        | ArchivedEventBody::AgentStopRequested { .. }
        | ArchivedEventBody::ProcessStarted { .. }
        | ArchivedEventBody::ResourcesSampled { .. }
        | ArchivedEventBody::ProcessExited { .. }
        | ArchivedEventBody::RunInterrupted { .. }
        | ArchivedEventBody::ShutdownStep { .. }
        | ArchivedEventBody::HealthChecked { .. }
        | ArchivedEventBody::RunStarted { .. }
        | ArchivedEventBody::PhaseEntered { .. }
        | ArchivedEventBody::CompletionReceived { .. }
        | ArchivedEventBody::CompletionFailed { .. }
        | ArchivedEventBody::ActionProposed { .. }
        | ArchivedEventBody::PolicyDecided { .. }
        | ArchivedEventBody::ToolCalled { .. }
        | ArchivedEventBody::ToolReturned { .. }
        | ArchivedEventBody::BreakerChanged { .. }
        | ArchivedEventBody::ApprovalRequested { .. }
        | ArchivedEventBody::ApprovalDecided { .. }
        | ArchivedEventBody::RunFinished { .. }
        | ArchivedEventBody::PolicySetLoaded { .. }
        | ArchivedEventBody::RunForked { .. }
        | ArchivedEventBody::RunBreakerChanged { .. }
        | ArchivedEventBody::SagaStepRecorded { .. }
        | ArchivedEventBody::SagaCompensating { .. }
        | ArchivedEventBody::SagaCompensated { .. }
        | ArchivedEventBody::ContextHydrated { .. }
        | ArchivedEventBody::SandboxStarted { .. }
        | ArchivedEventBody::SandboxExited { .. }
        | ArchivedEventBody::SandboxReaped { .. }
        | ArchivedEventBody::MessageSent { .. }
        | ArchivedEventBody::MessageDelivered { .. }
        | ArchivedEventBody::MessageAcknowledged { .. }
        | ArchivedEventBody::MessageExpired { .. }
        | ArchivedEventBody::MessageRejected { .. }
        | ArchivedEventBody::TopicSubscribed { .. }
        | ArchivedEventBody::BusKeyRotated { .. }
        | ArchivedEventBody::BusPeerPinned { .. }
        | ArchivedEventBody::ContextStored { .. }
        | ArchivedEventBody::ContextUpdated { .. }
        | ArchivedEventBody::ContextAccessed { .. }
        | ArchivedEventBody::ContextFeedbackGiven { .. }
        | ArchivedEventBody::ContextShared { .. }
        | ArchivedEventBody::ContextArchived { .. }
        | ArchivedEventBody::EmbeddingComputed { .. }
        | ArchivedEventBody::McpServerConnected { .. }
        | ArchivedEventBody::McpToolsListed { .. }
        | ArchivedEventBody::McpToolVerified { .. }
        | ArchivedEventBody::McpKeyPinned { .. }
        | ArchivedEventBody::McpKeyUnpinned { .. }
        | ArchivedEventBody::McpToolCalled { .. }
        | ArchivedEventBody::McpToolReturned { .. }
        | ArchivedEventBody::McpResourceRead { .. }
        | ArchivedEventBody::McpKeyDiscovered { .. }
        | ArchivedEventBody::ToolsOffered { .. }
        | ArchivedEventBody::TaskRequested { .. } => {}
    }
    if seq.0 == 1 && !matches!(e.body(), ArchivedEventBody::JournalOpened { .. }) {
        return Err(bad("the first event is not JournalOpened".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    /// (message, signature, public key) of `n` messages signed by two keys.
    fn signed(n: usize) -> Vec<([u8; 32], [u8; 64], [u8; 32])> {
        let keys = [SigningKey::from_bytes(&[7; 32]), SigningKey::from_bytes(&[9; 32])];
        (0..n)
            .map(|i| {
                let msg = *blake3::hash(&i.to_le_bytes()).as_bytes();
                let k = &keys[i % 2];
                (msg, k.sign(&msg).to_bytes(), k.verifying_key().to_bytes())
            })
            .collect()
    }

    fn first_bad(items: &[([u8; 32], [u8; 64], [u8; 32])]) -> Option<usize> {
        first_bad_signature(items, |(msg, sig, key)| Signed { msg, sig, key })
    }

    #[test]
    fn batches_find_the_first_bad_signature_exactly() {
        let n = VERIFY_BATCH * 2 + 300;
        let good = signed(n);
        assert_eq!(first_bad(&good), None);
        assert_eq!(first_bad(&good[..1]), None);
        assert_eq!(first_bad(&[]), None);
        // A changed message, a changed signature, the other key: each found
        // at its index, the earliest winning across batches.
        for bad in [0, VERIFY_BATCH - 1, VERIFY_BATCH, n - 1] {
            for how in 0..3 {
                let mut items = good.clone();
                match how {
                    0 => items[bad].0[5] ^= 1,
                    1 => items[bad].1[40] ^= 0x10,
                    // Neighbours are signed by the other key.
                    _ => items[bad].2 = good[bad ^ 1].2,
                }
                assert_eq!(first_bad(&items), Some(bad), "item {bad}, change {how}");
            }
        }
        let mut two = good.clone();
        two[VERIFY_BATCH + 7].1[3] ^= 1;
        two[VERIFY_BATCH * 2 + 1].0[0] ^= 1;
        assert_eq!(first_bad(&two), Some(VERIFY_BATCH + 7));
        // Any other 32 bytes as the key (a non-canonical encoding) fail too.
        let mut not_a_key = good;
        not_a_key[9].2 = [0xff; 32];
        assert_eq!(first_bad(&not_a_key), Some(9));
    }
}
