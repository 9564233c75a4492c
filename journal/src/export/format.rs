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

/// The record as serde renders it: inside `keys.json` and
/// `checkpoints.json`, and the reference [`render_line`] is checked against
/// (the format is this struct's compact JSON).
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
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

fn push_b64(out: &mut Vec<u8>, bytes: &[u8]) {
    let at = out.len();
    out.resize(
        at + base64::encoded_len(bytes.len(), true).expect("an event fits"),
        0,
    );
    let n = B64
        .encode_slice(bytes, &mut out[at..])
        .expect("sized by encoded_len");
    out.truncate(at + n);
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

/// The `events.jsonl` line of an event, without the newline: the compact
/// JSON of the fields in docs/VERIFYING.md's order. Written directly (the
/// hex and base64 strings need no escaping, so serde's scan of them for
/// escapes is skipped; the stream and the body go through serde), byte for
/// byte what serde writes for the same record — a test checks that.
#[must_use]
pub fn render_line(e: &BundleEvent) -> Vec<u8> {
    use std::io::Write as _;
    let canonical_len = match &e.content {
        Content::Full { record, .. } => record.canonical().len(),
        Content::Redacted { header, .. } => header.len(),
    };
    let mut out = Vec::with_capacity(640 + canonical_len * 2);
    let json = "event records serialize";
    write!(out, "{{\"seq\":{},\"at\":{},\"stream\":", e.seq.0, e.at).expect(json);
    serde_json::to_writer(&mut out, &e.stream).expect(json);
    match e.cause {
        Some(c) => write!(out, ",\"cause\":{}", c.0).expect(json),
        None => out.extend_from_slice(b",\"cause\":null"),
    }
    match &e.content {
        Content::Full { body, .. } => {
            out.extend_from_slice(b",\"kind\":");
            serde_json::to_writer(&mut out, body.kind()).expect(json);
            out.extend_from_slice(b",\"body\":");
            serde_json::to_writer(&mut out, body).expect(json);
        }
        Content::Redacted { .. } => out.extend_from_slice(b",\"kind\":null,\"body\":null"),
    }
    for (name, bytes) in [
        (&b",\"prev\":\""[..], &e.prev.0[..]),
        (&b"\",\"hash\":\""[..], &e.hash.0[..]),
        (&b"\",\"key\":\""[..], &e.key.0[..]),
        (&b"\",\"sig\":\""[..], &e.sig[..]),
    ] {
        out.extend_from_slice(name);
        push_hex(&mut out, bytes);
    }
    match &e.content {
        Content::Full { record, .. } => {
            out.extend_from_slice(b"\",\"canonical\":\"");
            push_b64(&mut out, record.canonical());
            out.extend_from_slice(b"\",\"redacted\":null}");
        }
        Content::Redacted {
            header,
            body_bytes,
            body_blake3,
        } => {
            out.extend_from_slice(b"\",\"canonical\":null,\"redacted\":{\"header\":\"");
            push_b64(&mut out, header);
            write!(out, "\",\"body_bytes\":{body_bytes},\"body_blake3\":\"").expect(json);
            push_hex(&mut out, body_blake3);
            out.extend_from_slice(b"\"}}");
        }
    }
    out
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
    // Lower-case digits only, as written; anything else goes to `hex` for
    // its message (`hex` itself decodes a digit at a time: slow in profiles).
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => {
                hex::decode_to_slice(s, &mut out).map_err(|e| format!("`{what}` is not hex: {e}"))?;
                return Ok(out);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::detached_event;
    use crate::ids::StreamId;

    /// The hand-written rendering is serde's, byte for byte: full and
    /// redacted records, with and without a cause, strings that need
    /// escaping in the stream and the body.
    #[test]
    fn render_line_is_the_serde_rendering() {
        let bodies = [
            EventBody::Annotated {
                text: "plain".into(),
                run: None,
            },
            EventBody::Annotated {
                text: "quote \" backslash \\ newline \n tab \t nul \u{0} é 🚀 \u{7f}".into(),
                run: Some("run-1".into()),
            },
        ];
        let mut n = 0u64;
        for body in &bodies {
            for cause in [None, Some(Seq(3))] {
                for stream in ["ops", "agent:a/b.c-d_e"] {
                    n += 1;
                    let stream = StreamId::new(stream).expect("stream id");
                    let record =
                        detached_event(Seq(n), -5 + n.cast_signed(), &stream, cause, body).expect("event");
                    for redact in [false, true] {
                        let mut e = BundleEvent::from_record(record.clone(), redact).expect("bundle event");
                        e.sig = [u8::try_from(n).expect("small"); 64];
                        let reference = serde_json::to_vec(&line_out(&e)).expect("serde");
                        assert_eq!(
                            String::from_utf8(render_line(&e)).expect("utf-8"),
                            String::from_utf8(reference).expect("utf-8")
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn hex_n_decodes_lower_case_and_names_bad_digits() {
        assert_eq!(hex_n::<2>("x", "0aff"), Ok([0x0a, 0xff]));
        // Upper case decodes (the re-rendering then tells it from what was written).
        assert_eq!(hex_n::<2>("x", "0AFF"), Ok([0x0a, 0xff]));
        assert!(
            hex_n::<2>("x", "0g00")
                .expect_err("bad digit")
                .contains("`x` is not hex")
        );
        assert!(
            hex_n::<2>("x", "0a")
                .expect_err("short")
                .contains("is 2 hex digits, expected 4")
        );
    }
}
