//! The bundle's files as data: their JSON shapes, the one rendering of each
//! (the writer writes it, the verifier re-renders what it verified and
//! compares bytes), and the decoding of an event record back into checked
//! parts. docs/VERIFYING.md describes every field.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::event::{CANONICAL_HEADER_BYTES, CANONICAL_VERSION, EventBody, EventRef, encode_record};
use crate::ids::{Hash, KeyId, Seq};

/// Format tag of `manifest.json`.
pub const BUNDLE_FORMAT: &str = "stele-audit-bundle-v1";
/// Format tag of `keys.json`.
pub const KEYS_FORMAT: &str = "stele-audit-keys-v1";
/// Format tag of `checkpoints.json`.
pub const CHECKPOINTS_FORMAT: &str = "stele-audit-checkpoints-v1";
/// Format tag of `proofs.json`.
pub const PROOFS_FORMAT: &str = "stele-audit-proofs-v1";

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The events, one JSON record a line.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The key history.
pub const KEYS_FILE: &str = "keys.json";
/// The covering and the latest checkpoint events.
pub const CHECKPOINTS_FILE: &str = "checkpoints.json";
/// The Merkle proofs.
pub const PROOFS_FILE: &str = "proofs.json";

/// What an export holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Selection {
    /// Every event `from..=to`, contiguous: the chain links are checked.
    Range {
        /// First seq.
        from: u64,
        /// Last seq.
        to: u64,
    },
    /// The events whose body names this run (`stele events --run`), up to
    /// the covering checkpoint.
    Run {
        /// The run id.
        run: String,
    },
    /// The events of one agent: on stream `agent:<agent>`, or whose body
    /// names the agent, or whose run is a task queued for it.
    Agent {
        /// The agent's name.
        agent: String,
    },
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::Range { from, to } => write!(f, "events {from}..={to}"),
            Selection::Run { run } => write!(f, "run {run}"),
            Selection::Agent { agent } => write!(f, "agent {agent}"),
        }
    }
}

/// The manifest: what was selected, what the bundle holds, the BLAKE3 of
/// every other file. Every field is checked against what the verifier
/// finds, and the file must be exactly its own rendering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// What was selected.
    pub selection: Selection,
    /// Stream prefixes whose events' bodies are withheld.
    pub redact: Vec<String>,
    /// What `events.jsonl` holds.
    pub events: EventCounts,
    /// The checkpoint the events are proven against.
    pub checkpoint: CheckpointRef,
    /// The newest checkpoint at export time.
    pub latest_checkpoint: CheckpointRef,
    /// Keys in `keys.json`.
    pub keys: u64,
    /// Derived files beside the events (e.g. `ocsf.jsonl`) and what made them.
    pub attachments: BTreeMap<String, serde_json::Value>,
    /// Every other file of the bundle: size and BLAKE3.
    pub files: BTreeMap<String, FileEntry>,
}

/// Counts of `events.jsonl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventCounts {
    /// Records.
    pub count: u64,
    /// Of which redacted.
    pub redacted: u64,
    /// Seq of the first.
    pub first_seq: u64,
    /// Seq of the last.
    pub last_seq: u64,
}

/// A checkpoint: the tree size it commits to and the seq of its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRef {
    /// Events covered (`1..=size`).
    pub size: u64,
    /// Seq of the `CheckpointSigned` event (`size + 1`).
    pub seq: u64,
}

/// A file of the bundle as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Length.
    pub bytes: u64,
    /// BLAKE3 of the content, hex.
    pub blake3: String,
}

/// One key of the key history, as derived from the key events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Key id (hex).
    pub id: String,
    /// Ed25519 public key (hex).
    pub public_key: String,
    /// Seq of the event that introduced it (`JournalOpened` at 1, or a `KeyRotated`).
    pub introduced_at: u64,
    /// First seq it signs.
    pub active_from: u64,
    /// Last seq it signs (the next rotation), or null while it is the newest.
    pub active_to: Option<u64>,
}

/// An event of the bundle, decoded and checked against its own bytes.
#[derive(Clone, Debug)]
pub struct BundleEvent {
    /// Position.
    pub seq: Seq,
    /// Nanoseconds since the Unix epoch.
    pub at: i64,
    /// Stream.
    pub stream: String,
    /// Cause.
    pub cause: Option<Seq>,
    /// Hash of event seq-1.
    pub prev: Hash,
    /// This event's hash.
    pub hash: Hash,
    /// Signing key.
    pub key: KeyId,
    /// Signature over `hash`.
    pub sig: [u8; 64],
    /// The content, or what stands in for it.
    pub content: Content,
}

/// An event's content in a bundle.
#[derive(Clone, Debug)]
pub enum Content {
    /// Everything: the validated record (whose hash was recomputed by the
    /// verifier) and its decoded body.
    Full {
        /// The record.
        record: EventRef,
        /// The decoded body.
        body: EventBody,
    },
    /// Body withheld: the canonical header, and the body's length and BLAKE3.
    Redacted {
        /// Canonical bytes up to and including the stream.
        header: Vec<u8>,
        /// Length of the withheld body.
        body_bytes: u64,
        /// BLAKE3 of the withheld body.
        body_blake3: [u8; 32],
    },
}

impl BundleEvent {
    /// From a stored record, redacted or not.
    ///
    /// # Errors
    /// A body that does not deserialize.
    pub fn from_record(record: EventRef, redact: bool) -> crate::Result<BundleEvent> {
        let seq = record.seq();
        let content = if redact {
            let canonical = record.canonical();
            let body = record.body_bytes();
            Content::Redacted {
                header: canonical[..canonical.len() - body.len()].to_vec(),
                body_bytes: body.len() as u64,
                body_blake3: *blake3::hash(body).as_bytes(),
            }
        } else {
            let body = rkyv::deserialize::<EventBody, rkyv::rancor::Error>(record.body()).map_err(|e| {
                crate::Error::Corrupt {
                    seq,
                    reason: format!("body does not deserialize: {e}"),
                }
            })?;
            Content::Full {
                record: record.clone(),
                body,
            }
        };
        Ok(BundleEvent {
            seq,
            at: record.at(),
            stream: record.stream().to_owned(),
            cause: record.cause(),
            prev: record.prev(),
            hash: record.hash(),
            key: record.key(),
            sig: record.sig(),
            content,
        })
    }

    /// The decoded body, unless redacted.
    #[must_use]
    pub fn body(&self) -> Option<&EventBody> {
        match &self.content {
            Content::Full { body, .. } => Some(body),
            Content::Redacted { .. } => None,
        }
    }

    /// The validated record, unless redacted.
    #[must_use]
    pub fn record(&self) -> Option<&EventRef> {
        match &self.content {
            Content::Full { record, .. } => Some(record),
            Content::Redacted { .. } => None,
        }
    }
}

#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    at: i64,
    stream: &'a str,
    cause: Option<u64>,
    kind: Option<&'static str>,
    body: Option<&'a EventBody>,
    prev: String,
    hash: String,
    key: String,
    sig: String,
    canonical: Option<String>,
    redacted: Option<RedactedJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactedJson {
    header: String,
    body_bytes: u64,
    body_blake3: String,
}

/// Lower-case hex (a table lookup per byte: `hex::encode` builds its
/// string a char at a time, which showed up in profiles of `verify`).
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn line_out(e: &BundleEvent) -> LineOut<'_> {
    let (kind, body, canonical, redacted) = match &e.content {
        Content::Full { record, body } => (
            Some(body.kind()),
            Some(body),
            Some(B64.encode(record.canonical())),
            None,
        ),
        Content::Redacted {
            header,
            body_bytes,
            body_blake3,
        } => (
            None,
            None,
            None,
            Some(RedactedJson {
                header: B64.encode(header),
                body_bytes: *body_bytes,
                body_blake3: to_hex(body_blake3),
            }),
        ),
    };
    LineOut {
        seq: e.seq.0,
        at: e.at,
        stream: &e.stream,
        cause: e.cause.map(|c| c.0),
        kind,
        body,
        prev: to_hex(&e.prev.0),
        hash: to_hex(&e.hash.0),
        key: to_hex(&e.key.0),
        sig: to_hex(&e.sig),
        canonical,
        redacted,
    }
}

/// The `events.jsonl` line of an event, without the newline.
#[must_use]
pub fn render_line(e: &BundleEvent) -> Vec<u8> {
    serde_json::to_vec(&line_out(e)).expect("event records serialize")
}

/// An event record as read (the body itself is not needed: the verifier
/// re-renders it from the canonical bytes and compares).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineIn<'a> {
    seq: u64,
    at: i64,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    cause: Option<u64>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[allow(dead_code)] // present for deny_unknown_fields; checked by re-rendering
    body: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    sig: Cow<'a, str>,
    #[serde(borrow)]
    canonical: Option<Cow<'a, str>>,
    redacted: Option<RedactedJson>,
}

fn hex_n<const N: usize>(what: &str, s: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N {
        return Err(format!("`{what}` is {} hex digits, expected {}", s.len(), 2 * N));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|e| format!("`{what}` is not hex: {e}"))?;
    Ok(out)
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    B64.decode(s).map_err(|e| format!("`{what}` is not base64: {e}"))
}

/// Parses a canonical header (`version, seq, at, cause flag, cause, stream
/// length, stream`), which must be exactly `bytes` long when `exact`.
fn parse_header(bytes: &[u8], exact: bool) -> Result<(u64, i64, Option<u64>, &str), String> {
    if bytes.len() < CANONICAL_HEADER_BYTES {
        return Err(format!("canonical header is {} bytes, too short", bytes.len()));
    }
    if bytes[0] != CANONICAL_VERSION {
        return Err(format!(
            "canonical version {} (this verifier reads {CANONICAL_VERSION})",
            bytes[0]
        ));
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let cause = match bytes[17] {
        0 => None,
        1 => Some(u64_at(18)),
        f => return Err(format!("cause flag is {f}, expected 0 or 1")),
    };
    let n = usize::from(u16::from_le_bytes([bytes[26], bytes[27]]));
    let end = CANONICAL_HEADER_BYTES + n;
    if end > bytes.len() || (exact && end != bytes.len()) {
        return Err(format!(
            "canonical header says the stream is {n} bytes, which does not fit its {} bytes",
            bytes.len()
        ));
    }
    let stream = std::str::from_utf8(&bytes[CANONICAL_HEADER_BYTES..end])
        .map_err(|e| format!("stream is not UTF-8: {e}"))?;
    Ok((u64_at(1), u64_at(9).cast_signed(), cause, stream))
}

impl LineIn<'_> {
    /// Decodes and checks the record against its own bytes: the header
    /// fields match the JSON fields, the hash is recomputed (unless
    /// redacted), the body validates and decodes. Signatures, keys and
    /// proofs are the caller's.
    pub(crate) fn decode(&self) -> Result<BundleEvent, String> {
        let prev = Hash(hex_n("prev", &self.prev)?);
        let hash = Hash(hex_n("hash", &self.hash)?);
        let key = KeyId(hex_n("key", &self.key)?);
        let sig: [u8; 64] = hex_n("sig", &self.sig)?;
        let header_matches = |seq: u64, at: i64, cause: Option<u64>, stream: &str| -> Result<(), String> {
            let mismatch = |field: &str, canon: String, json: String| {
                Err(format!("`{field}` is {json} but the canonical bytes say {canon}"))
            };
            if seq != self.seq {
                return mismatch("seq", seq.to_string(), self.seq.to_string());
            }
            if at != self.at {
                return mismatch("at", at.to_string(), self.at.to_string());
            }
            if cause != self.cause {
                return mismatch("cause", format!("{cause:?}"), format!("{:?}", self.cause));
            }
            if stream != self.stream {
                return mismatch("stream", format!("{stream:?}"), format!("{:?}", self.stream));
            }
            Ok(())
        };
        let content = match (&self.canonical, &self.redacted) {
            (Some(c), None) => {
                let canonical = b64("canonical", c)?;
                let (seq, at, cause, stream) = parse_header(&canonical, false)?;
                header_matches(seq, at, cause, stream)?;
                let record =
                    EventRef::parse(Seq(self.seq), encode_record(&prev, &hash, key, &sig, &canonical))
                        .map_err(|e| match e {
                            crate::Error::Corrupt { reason, .. } => format!("canonical bytes: {reason}"),
                            e => e.to_string(),
                        })?;
                let computed = record.computed_hash();
                if computed != hash {
                    return Err(format!(
                        "hash mismatch: BLAKE3(domain, prev, canonical) is {}, the record says {}; the event was modified",
                        computed.to_hex(),
                        hash.to_hex()
                    ));
                }
                let body = rkyv::deserialize::<EventBody, rkyv::rancor::Error>(record.body())
                    .map_err(|e| format!("body does not deserialize: {e}"))?;
                if self.kind.as_deref() != Some(body.kind()) {
                    return Err(format!(
                        "`kind` is {:?} but the canonical body is a {}",
                        self.kind,
                        body.kind()
                    ));
                }
                Content::Full { record, body }
            }
            (None, Some(r)) => {
                let header = b64("redacted.header", &r.header)?;
                let (seq, at, cause, stream) = parse_header(&header, true)?;
                header_matches(seq, at, cause, stream)?;
                if self.kind.is_some() {
                    return Err("a redacted record has a `kind`; it must be null".into());
                }
                Content::Redacted {
                    header,
                    body_bytes: r.body_bytes,
                    body_blake3: hex_n("redacted.body_blake3", &r.body_blake3)?,
                }
            }
            (Some(_), Some(_)) => return Err("both `canonical` and `redacted` are set".into()),
            (None, None) => return Err("neither `canonical` nor `redacted` is set".into()),
        };
        Ok(BundleEvent {
            seq: Seq(self.seq),
            at: self.at,
            stream: self.stream.clone().into_owned(),
            cause: self.cause.map(Seq),
            prev,
            hash,
            key,
            sig,
            content,
        })
    }
}

/// Where two renderings first differ, named by the JSON field around it.
pub(crate) fn first_difference(found: &[u8], expected: &[u8]) -> String {
    let at = found
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| found.len().min(expected.len()));
    // The last `"name":` before the difference in the expected rendering.
    let before = &expected[..at.min(expected.len())];
    let field = before
        .windows(2)
        .rposition(|w| w == b"\":")
        .and_then(|end| {
            let start = before[..end].iter().rposition(|&c| c == b'"')?;
            std::str::from_utf8(&before[start + 1..end]).ok()
        })
        .unwrap_or("?");
    let snippet = |b: &[u8]| {
        let s = &b[at.min(b.len())..(at + 24).min(b.len())];
        String::from_utf8_lossy(s).into_owned()
    };
    format!(
        "byte {} (in `{field}`): found {:?}, expected {:?}",
        at + 1,
        snippet(found),
        snippet(expected)
    )
}

#[derive(Serialize)]
struct KeysOut<'a> {
    format: &'static str,
    keys: &'a [KeyEntry],
    events: Vec<LineOut<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysIn<'a> {
    pub(crate) format: String,
    pub(crate) keys: Vec<KeyEntry>,
    #[serde(borrow)]
    pub(crate) events: Vec<LineIn<'a>>,
}

fn pretty(v: &impl Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("bundle files serialize");
    out.push(b'\n');
    out
}

/// `keys.json`.
#[must_use]
pub fn render_keys(keys: &[KeyEntry], events: &[BundleEvent]) -> Vec<u8> {
    pretty(&KeysOut {
        format: KEYS_FORMAT,
        keys,
        events: events.iter().map(line_out).collect(),
    })
}

/// A checkpoint of `checkpoints.json`.
#[derive(Serialize)]
struct CheckpointOut<'a> {
    size: u64,
    root: String,
    event: LineOut<'a>,
}

#[derive(Serialize)]
struct CheckpointsOut<'a> {
    format: &'static str,
    covering: CheckpointOut<'a>,
    latest: CheckpointOut<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointIn<'a> {
    pub(crate) size: u64,
    pub(crate) root: String,
    #[serde(borrow)]
    pub(crate) event: LineIn<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointsIn<'a> {
    pub(crate) format: String,
    #[serde(borrow)]
    pub(crate) covering: CheckpointIn<'a>,
    #[serde(borrow)]
    pub(crate) latest: CheckpointIn<'a>,
}

/// `checkpoints.json`: each checkpoint as (size, root, event).
#[must_use]
pub fn render_checkpoints(
    covering: (u64, &Hash, &BundleEvent),
    latest: (u64, &Hash, &BundleEvent),
) -> Vec<u8> {
    fn one<'a>((size, root, e): (u64, &Hash, &'a BundleEvent)) -> CheckpointOut<'a> {
        CheckpointOut {
            size,
            root: root.to_hex(),
            event: line_out(e),
        }
    }
    pretty(&CheckpointsOut {
        format: CHECKPOINTS_FORMAT,
        covering: one(covering),
        latest: one(latest),
    })
}

/// `proofs.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proofs {
    /// [`PROOFS_FORMAT`].
    pub format: String,
    /// Multiproof of every event of `events.jsonl` in the covering tree.
    pub events: EventsProof,
    /// Multiproof of the key events (and the covering checkpoint event,
    /// when the latest tree holds it) in the latest tree.
    pub anchors: AnchorsProof,
    /// RFC 6962 consistency proof from the covering tree to the latest.
    pub consistency: ConsistencyProof,
}

/// See [`Proofs::events`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsProof {
    /// Tree size (the covering checkpoint's).
    pub size: u64,
    /// Subtree hashes, depth first, left to right (hex).
    pub hashes: Vec<String>,
}

/// See [`Proofs::anchors`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorsProof {
    /// Tree size (the latest checkpoint's).
    pub size: u64,
    /// The proven events' seqs.
    pub seqs: Vec<u64>,
    /// Subtree hashes, depth first, left to right (hex).
    pub hashes: Vec<String>,
}

/// See [`Proofs::consistency`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The covering tree's size.
    pub old_size: u64,
    /// The latest tree's size.
    pub new_size: u64,
    /// RFC 6962 `PROOF(old, D[new])`, deepest first (hex).
    pub hashes: Vec<String>,
}

/// `proofs.json`.
#[must_use]
pub fn render_proofs(p: &Proofs) -> Vec<u8> {
    pretty(p)
}

/// `manifest.json`.
#[must_use]
pub fn render_manifest(m: &Manifest) -> Vec<u8> {
    pretty(m)
}

/// Hex digests of a proof.
pub(crate) fn hex_list(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// Parses hex digests of a proof.
pub(crate) fn parse_hex_list(what: &str, hashes: &[String]) -> Result<Vec<[u8; 32]>, String> {
    hashes
        .iter()
        .enumerate()
        .map(|(i, h)| hex_n(&format!("{what}[{i}]"), h))
        .collect()
}

/// `hex_n` for the verifier.
pub(crate) fn parse_hex<const N: usize>(what: &str, s: &str) -> Result<[u8; N], String> {
    hex_n(what, s)
}
