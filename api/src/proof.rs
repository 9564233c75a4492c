//! `stele journal prove …` and `stele journal check-proof`: Merkle proofs as
//! self-contained JSON files. A proof carries the signed checkpoint event
//! (canonical bytes, prev, signature, public key) whose root it proves
//! against, so `check-proof` needs nothing but the file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use stele_journal::event::encode_record;
use stele_journal::merkle;
use stele_journal::{ArchivedEventBody, EventRef, Hash, KeyId, Reader, Seq};

use crate::journal_cmd::open_reader;

const FORMAT: &str = "stele-proof-v1";

/// A signed event, in the parts a verifier needs to check it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignedEvent {
    seq: u64,
    prev: Hash,
    hash: Hash,
    key: String,
    public_key: String,
    sig: String,
    /// Hex of the canonical bytes (what the hash covers after domain and prev).
    canonical: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProofFile {
    Inclusion {
        format: String,
        seq: u64,
        size: u64,
        event_hash: Hash,
        root: Hash,
        proof: Vec<Hash>,
        checkpoint: Option<SignedEvent>,
    },
    Consistency {
        format: String,
        old_size: u64,
        new_size: u64,
        old_root: Hash,
        new_root: Hash,
        proof: Vec<Hash>,
        old_checkpoint: Option<SignedEvent>,
        new_checkpoint: Option<SignedEvent>,
    },
}

fn signed_checkpoint(reader: &Reader, size: u64) -> Result<Option<SignedEvent>> {
    let Some(cp) = reader.checkpoints()?.into_iter().find(|c| c.size == size) else {
        return Ok(None);
    };
    let e = reader
        .get(cp.seq)?
        .with_context(|| format!("checkpoint event {} is missing", cp.seq))?;
    let key = reader
        .keys()?
        .into_iter()
        .find(|k| k.id == e.key())
        .with_context(|| format!("key {} of checkpoint {} is not registered", e.key(), cp.seq))?;
    Ok(Some(SignedEvent {
        seq: e.seq().0,
        prev: e.prev(),
        hash: e.hash(),
        key: e.key().to_hex(),
        public_key: hex::encode(key.public_key),
        sig: hex::encode(e.sig()),
        canonical: hex::encode(e.canonical()),
    }))
}

pub fn inclusion(reader: &Reader, seq: Seq, size: Option<u64>) -> Result<ProofFile> {
    let head = reader.head().seq.0;
    ensure!(
        seq.0 >= 1 && seq.0 <= head,
        "seq {seq} is out of range (the journal has {head} events)"
    );
    let size = match size {
        Some(s) => s,
        None => reader
            .checkpoints()?
            .into_iter()
            .filter(|c| c.size >= seq.0)
            .map(|c| c.size)
            .max()
            .unwrap_or(head),
    };
    let event = reader
        .get(seq)?
        .with_context(|| format!("event {seq} is missing"))?;
    Ok(ProofFile::Inclusion {
        format: FORMAT.into(),
        seq: seq.0,
        size,
        event_hash: event.hash(),
        root: reader.root_at(size)?,
        proof: reader.inclusion_proof(seq, size)?,
        checkpoint: signed_checkpoint(reader, size)?,
    })
}

fn emit(proof: &ProofFile, json: bool, out: Option<&Path>) -> Result<ExitCode> {
    let text = if json {
        serde_json::to_string(proof)?
    } else {
        serde_json::to_string_pretty(proof)?
    };
    match out {
        Some(p) => std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?,
        None => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn prove_inclusion(
    data: &Path,
    seq: u64,
    size: Option<u64>,
    json: bool,
    out: Option<&Path>,
) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    emit(&inclusion(&reader, Seq(seq), size)?, json, out)
}

pub fn prove_consistency(data: &Path, m: u64, n: u64, json: bool, out: Option<&Path>) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let proof = ProofFile::Consistency {
        format: FORMAT.into(),
        old_size: m,
        new_size: n,
        old_root: reader.root_at(m)?,
        new_root: reader.root_at(n)?,
        proof: reader.consistency_proof(m, n)?,
        old_checkpoint: signed_checkpoint(&reader, m)?,
        new_checkpoint: signed_checkpoint(&reader, n)?,
    };
    emit(&proof, json, out)
}

fn hex_array<const N: usize>(what: &str, s: &str) -> Result<[u8; N]> {
    let v = hex::decode(s).with_context(|| format!("{what} is not hex"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("{what} is {} bytes, expected {N}", v.len()))
}

/// Checks a signed checkpoint: hash, signature, key id, and that it commits
/// to (`size`, `root`). Returns the key id.
fn check_checkpoint(cp: &SignedEvent, size: u64, root: &Hash, trusted_key: Option<&str>) -> Result<KeyId> {
    let public_key: [u8; 32] = hex_array("checkpoint public_key", &cp.public_key)?;
    let key = KeyId::of(&public_key);
    ensure!(
        key.to_hex() == cp.key,
        "checkpoint key id {} does not match its public key ({key})",
        cp.key
    );
    if let Some(t) = trusted_key {
        ensure!(
            t.eq_ignore_ascii_case(&cp.public_key),
            "checkpoint is signed by {}, not by the trusted key {t}",
            cp.public_key
        );
    }
    let sig: [u8; 64] = hex_array("checkpoint sig", &cp.sig)?;
    let canonical = hex::decode(&cp.canonical).context("checkpoint canonical is not hex")?;
    let record = encode_record(&cp.prev, &cp.hash, key, &sig, &canonical);
    let e = EventRef::parse(Seq(cp.seq), record).context("checkpoint event")?;
    stele_journal::verify::check_one(&e, None)?;
    stele_journal::verify::check_signature(&e, &public_key)?;
    match e.body() {
        ArchivedEventBody::CheckpointSigned { size: s, root: r } => {
            ensure!(
                s.to_native() == size,
                "checkpoint covers {} events, the proof claims {size}",
                s.to_native()
            );
            ensure!(
                r == &root.0,
                "checkpoint root {} differs from the proof's root {}",
                hex::encode(r),
                root
            );
        }
        other => bail!("event {} is a {}, not a checkpoint", cp.seq, other.kind()),
    }
    Ok(key)
}

fn to_digests(p: &[Hash]) -> Vec<merkle::Digest> {
    p.iter().map(|h| h.0).collect()
}

/// Checks a proof; returns a one-line description of what it proved.
pub fn check_value(proof: &ProofFile, trusted_key: Option<&str>) -> Result<String> {
    match proof {
        ProofFile::Inclusion {
            format,
            seq,
            size,
            event_hash,
            root,
            proof,
            checkpoint,
        } => {
            ensure!(
                format == FORMAT,
                "unknown proof format {format:?} (expected {FORMAT})"
            );
            ensure!(*seq >= 1, "seq must be at least 1");
            merkle::verify_inclusion(&event_hash.0, seq - 1, *size, &to_digests(proof), &root.0)
                .context("inclusion proof")?;
            let signed = match checkpoint {
                Some(cp) => format!(
                    "signed by key {} in checkpoint event {}",
                    check_checkpoint(cp, *size, root, trusted_key)?,
                    cp.seq
                ),
                None if trusted_key.is_some() => {
                    bail!("the proof has no signed checkpoint to check against the trusted key")
                }
                None => "root not signed (no checkpoint at this size)".into(),
            };
            Ok(format!(
                "event {seq} ({}) is in the tree of {size} events with root {}; {signed}",
                event_hash.short(),
                root.short()
            ))
        }
        ProofFile::Consistency {
            format,
            old_size,
            new_size,
            old_root,
            new_root,
            proof,
            old_checkpoint,
            new_checkpoint,
        } => {
            ensure!(
                format == FORMAT,
                "unknown proof format {format:?} (expected {FORMAT})"
            );
            merkle::verify_consistency(*old_size, *new_size, &old_root.0, &new_root.0, &to_digests(proof))
                .context("consistency proof")?;
            let mut signed = Vec::new();
            for (cp, size, root) in [
                (old_checkpoint, old_size, old_root),
                (new_checkpoint, new_size, new_root),
            ] {
                match cp {
                    Some(cp) => {
                        let k = check_checkpoint(cp, *size, root, trusted_key)?;
                        signed.push(format!("root of {size} signed by {k}"));
                    }
                    None if trusted_key.is_some() => {
                        bail!(
                            "the proof has no signed checkpoint for size {size} to check against the trusted key"
                        )
                    }
                    None => signed.push(format!("root of {size} not signed")),
                }
            }
            Ok(format!(
                "the tree of {old_size} events is a prefix of the tree of {new_size}; {}",
                signed.join(", ")
            ))
        }
    }
}

pub fn check_proof(file: &Path, trusted_key: Option<&str>, json: bool) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let proof: ProofFile =
        serde_json::from_str(&text).with_context(|| format!("{}: not a stele proof", file.display()))?;
    match check_value(&proof, trusted_key) {
        Ok(msg) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "message": msg}));
            } else {
                println!("ok: {msg}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "error": format!("{e:#}")}));
            } else {
                eprintln!("proof does not verify: {e:#}");
            }
            Ok(ExitCode::from(1))
        }
    }
}
