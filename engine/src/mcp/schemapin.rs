//! SchemaPin: a tool's schema signed by its provider's key, verified over
//! the canonical schema, and the key pinned per tool domain on first use.
//!
//! Following the SchemaPin specification (v1.x): ECDSA over P-256 with
//! SHA-256, the signature DER-encoded and then Base64, public keys as PEM
//! (SubjectPublicKeyInfo), a key's fingerprint `sha256:<hex>` of its SPKI
//! DER, and the canonical form of a schema as UTF-8 JSON without
//! insignificant whitespace and with object keys sorted recursively.
//!
//! What is signed, for an MCP tool: the JSON object `{name, description,
//! inputSchema}` of the tool as `tools/list` serves it (`description`
//! only when present). The signature and the provider's key travel in the
//! tool's `_meta` as `schemapin.org/signature` and
//! `schemapin.org/public_key`. A server configured with `well_known` has its
//! provider's key fetched from the provider's `/.well-known/schemapin.json`
//! (RFC 8615 discovery: `public_key_pem`, `revoked_keys` as fingerprints,
//! `developer_name`) instead: that key alone checks its tools' signatures,
//! and a key the document revokes is refused ([`Status::Revoked`]). Either
//! way the first key seen for a domain is pinned, and from then on only that
//! key is accepted — trust on first use.
//!
//! This module is pure: no I/O, no clock. [`Pins`] is folded from the
//! journal's `McpKeyPinned` / `McpKeyUnpinned` events; [`assess`] decides
//! one tool.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use stele_journal::{ArchivedEventBody, EventRef};

use crate::config::ToolVerification;

/// `_meta` key of a tool's signature (Base64 of the DER ECDSA signature).
pub const META_SIGNATURE: &str = "schemapin.org/signature";
/// `_meta` key of the provider's public key (PEM).
pub const META_PUBLIC_KEY: &str = "schemapin.org/public_key";
/// Where a provider publishes its key, under its origin (RFC 8615).
pub const WELL_KNOWN_PATH: &str = "/.well-known/schemapin.json";
/// Largest `.well-known/schemapin.json` document read.
pub const MAX_WELL_KNOWN_BYTES: usize = 64 * 1024;
/// Most revoked keys a document may list.
pub const MAX_REVOKED_KEYS: usize = 1024;

/// The URL of a provider's discovery document from what `[[mcp.servers]]
/// well_known` says: an origin (`https://tools.example`) gets
/// [`WELL_KNOWN_PATH`] appended; a URL already ending in it is kept.
///
/// # Errors
/// Not an `http://` or `https://` URL with a host.
pub fn well_known_url(given: &str) -> Result<String, String> {
    let given = given.trim();
    let rest = given
        .strip_prefix("https://")
        .or_else(|| given.strip_prefix("http://"))
        .ok_or_else(|| format!("{given:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{given:?} has no host"));
    }
    if given.contains(['?', '#']) {
        return Err(format!(
            "{given:?} has a query or fragment; give the origin or the document's URL"
        ));
    }
    if given.ends_with(WELL_KNOWN_PATH) {
        Ok(given.to_owned())
    } else {
        Ok(format!("{}{WELL_KNOWN_PATH}", given.trim_end_matches('/')))
    }
}

/// A provider's key as its `.well-known/schemapin.json` publishes it.
#[derive(Clone, Debug)]
pub struct Discovered {
    /// Where it was fetched from.
    pub url: String,
    /// The document's `developer_name` (empty when absent).
    pub developer: String,
    /// Its `public_key_pem`, parsed.
    pub key: Key,
    /// Its `revoked_keys`: fingerprints (`sha256:<hex>`) never to trust.
    pub revoked: Vec<String>,
}

impl Discovered {
    /// Parses a discovery document fetched from `url`.
    ///
    /// # Errors
    /// Not a JSON object, no usable `public_key_pem`, a malformed
    /// `revoked_keys`, or over the size limits; the message names the field.
    pub fn parse(url: &str, body: &[u8]) -> Result<Discovered, String> {
        if body.len() > MAX_WELL_KNOWN_BYTES {
            return Err(format!(
                "the document is {} bytes, over the limit of {MAX_WELL_KNOWN_BYTES}",
                body.len()
            ));
        }
        let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let Some(doc) = doc.as_object() else {
            return Err("not a JSON object".into());
        };
        let pem = doc
            .get("public_key_pem")
            .and_then(Value::as_str)
            .ok_or("no public_key_pem (a string) in it")?;
        let key = Key::from_pem(pem).map_err(|e| format!("public_key_pem: {e}"))?;
        let revoked = match doc.get("revoked_keys") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_REVOKED_KEYS => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .filter(|f| f.starts_with("sha256:"))
                        .map(str::to_owned)
                        .ok_or_else(|| format!("revoked_keys: {v} is not a fingerprint \"sha256:<hex>\""))
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(a)) => {
                return Err(format!(
                    "revoked_keys lists {} keys, over the limit of {MAX_REVOKED_KEYS}",
                    a.len()
                ));
            }
            Some(other) => return Err(format!("revoked_keys is {other}, not an array")),
        };
        Ok(Discovered {
            url: url.to_owned(),
            developer: doc
                .get("developer_name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            key,
            revoked,
        })
    }

    /// Whether the document revokes the key of `fingerprint`.
    #[must_use]
    pub fn revokes(&self, fingerprint: &str) -> bool {
        self.revoked.iter().any(|r| r == fingerprint)
    }
}

/// The canonical form of a JSON value: keys sorted (by their UTF-8 bytes)
/// at every depth, no whitespace, strings and numbers as `serde_json`
/// writes them.
#[must_use]
pub fn canonical(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json keeps insertion order here (cedar turns on
    // `preserve_order`), so inserting in sorted order is what sorts.
    sorted(value).to_string()
}

/// The signed part of a tool as `tools/list` serves it.
#[must_use]
pub fn signed_schema(tool: &Value) -> Value {
    let mut out = Map::new();
    for key in ["name", "description", "inputSchema"] {
        if let Some(v) = tool.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

/// SHA-256 of `text`, lower-case hex.
#[must_use]
pub fn sha256_hex(text: &[u8]) -> String {
    hex::encode(Sha256::digest(text))
}

/// A provider's public key.
#[derive(Clone)]
pub struct Key {
    /// As given (PEM).
    pub pem: String,
    /// `sha256:<hex>` of its SubjectPublicKeyInfo DER.
    pub fingerprint: String,
    key: VerifyingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Parses a PEM public key (an ECDSA P-256 SubjectPublicKeyInfo).
    ///
    /// # Errors
    /// Not PEM, or not a P-256 key.
    pub fn from_pem(pem: &str) -> Result<Key, String> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| format!("not an ECDSA P-256 public key in PEM (SubjectPublicKeyInfo): {e}"))?;
        let der = key
            .to_public_key_der()
            .map_err(|e| format!("the key does not encode as SubjectPublicKeyInfo: {e}"))?;
        Ok(Key {
            pem: pem.trim().to_owned(),
            fingerprint: format!("sha256:{}", sha256_hex(der.as_bytes())),
            key,
        })
    }

    /// Checks a Base64 DER signature over `message`.
    ///
    /// # Errors
    /// The signature is malformed or does not verify.
    pub fn verify(&self, message: &[u8], signature_b64: &str) -> Result<(), String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|e| format!("the signature is not Base64: {e}"))?;
        let sig = DerSignature::try_from(der.as_slice())
            .map_err(|e| format!("the signature is not a DER ECDSA signature: {e}"))?;
        self.key
            .verify(message, &sig)
            .map_err(|_| "the signature does not match the schema under this key".to_owned())
    }
}

/// A pinned key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pin {
    /// `sha256:<hex>`.
    pub fingerprint: String,
    /// PEM.
    pub public_key_pem: String,
    /// The server it was first seen on.
    pub server: String,
    /// The seq of its `McpKeyPinned`.
    pub seq: u64,
}

/// The pinned key of each tool domain: the fold of `McpKeyPinned` and
/// `McpKeyUnpinned`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pins {
    /// Domain → its pin.
    pub domains: BTreeMap<String, Pin>,
}

impl Pins {
    /// Folds one event (others are ignored).
    pub fn apply(&mut self, e: &EventRef) {
        match e.body() {
            ArchivedEventBody::McpKeyPinned {
                domain,
                fingerprint,
                public_key_pem,
                server,
            } => {
                self.domains.insert(
                    domain.to_string(),
                    Pin {
                        fingerprint: fingerprint.to_string(),
                        public_key_pem: public_key_pem.to_string(),
                        server: server.to_string(),
                        seq: e.seq().0,
                    },
                );
            }
            ArchivedEventBody::McpKeyUnpinned { domain, .. } => {
                self.domains.remove(domain.as_str());
            }
            _ => {}
        }
    }
}

/// What SchemaPin says of one tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Signed by the key pinned for its domain.
    Verified,
    /// Signed, and its domain had no pin: the key is pinned now.
    FirstUse,
    /// No signature (or no key).
    Unsigned,
    /// Signed validly, but by another key than the one pinned.
    KeyChanged,
    /// The signature does not match the schema (tampered, or mis-signed).
    InvalidSignature,
    /// The key or signature cannot be read.
    BadKey,
    /// The provider's discovery document revokes the key (the one it
    /// signs with, or the one pinned for its domain).
    Revoked,
}

impl Status {
    /// Its journaled name (and `context.mcp_verification` in policies).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Status::Verified => "verified",
            Status::FirstUse => "first_use",
            Status::Unsigned => "unsigned",
            Status::KeyChanged => "key_changed",
            Status::InvalidSignature => "invalid_signature",
            Status::BadKey => "bad_key",
            Status::Revoked => "revoked",
        }
    }

    /// The status of a journaled name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Status> {
        [
            Status::Verified,
            Status::FirstUse,
            Status::Unsigned,
            Status::KeyChanged,
            Status::InvalidSignature,
            Status::BadKey,
            Status::Revoked,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Whether the tool is offered under `mode`: `strict` takes only a
    /// schema signed by the pinned (or first-seen) key; `warn` takes every
    /// tool (and the status is journaled).
    #[must_use]
    pub fn accepted(self, mode: ToolVerification) -> bool {
        match mode {
            ToolVerification::Warn => true,
            ToolVerification::Strict => matches!(self, Status::Verified | Status::FirstUse),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The verdict on one tool.
#[derive(Clone, Debug)]
pub struct Assessment {
    /// The status.
    pub status: Status,
    /// The key that signed it (when one was given and parsed).
    pub key: Option<Key>,
    /// SHA-256 of the canonical schema.
    pub schema_hash: String,
    /// Whether it is offered under the mode it was assessed with.
    pub accepted: bool,
    /// Why, in words.
    pub detail: String,
}

/// Assesses one tool (as `tools/list` served it) of `domain` against the
/// pins: signature over the canonical schema, then the key against the pin.
/// With `discovered` (the provider's `.well-known` document), its key is
/// the one the signature is checked with (a key in the tool's `_meta` is
/// ignored), and a revoked key — discovered or pinned — is refused.
#[must_use]
pub fn assess(
    pins: &Pins,
    domain: &str,
    tool: &Value,
    mode: ToolVerification,
    discovered: Option<&Discovered>,
) -> Assessment {
    let canonical = canonical(&signed_schema(tool));
    let schema_hash = sha256_hex(canonical.as_bytes());
    let meta = tool.get("_meta");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    let done = |status: Status, key: Option<Key>, detail: String| Assessment {
        status,
        key,
        schema_hash: schema_hash.clone(),
        accepted: status.accepted(mode),
        detail,
    };
    let (signature, key) = match discovered {
        Some(d) => {
            let Some(signature) = field(META_SIGNATURE) else {
                return done(
                    Status::Unsigned,
                    None,
                    format!("no {META_SIGNATURE} in the tool's _meta"),
                );
            };
            if d.revokes(&d.key.fingerprint) {
                let detail = format!(
                    "the key {} published at {} is listed there as revoked",
                    d.key.fingerprint, d.url
                );
                return done(Status::Revoked, Some(d.key.clone()), detail);
            }
            (signature, d.key.clone())
        }
        None => {
            let (Some(signature), Some(pem)) = (field(META_SIGNATURE), field(META_PUBLIC_KEY)) else {
                return done(
                    Status::Unsigned,
                    None,
                    format!("no {META_SIGNATURE} and {META_PUBLIC_KEY} in the tool's _meta"),
                );
            };
            match Key::from_pem(pem) {
                Ok(k) => (signature, k),
                Err(e) => return done(Status::BadKey, None, e),
            }
        }
    };
    if let Err(e) = key.verify(canonical.as_bytes(), signature) {
        let status = if e.starts_with("the signature does not match") {
            Status::InvalidSignature
        } else {
            Status::BadKey
        };
        let e = match discovered {
            Some(d) => format!("{e} (the key published at {})", d.url),
            None => e,
        };
        return done(status, Some(key), e);
    }
    if let (Some(d), Some(pin)) = (discovered, pins.domains.get(domain))
        && d.revokes(&pin.fingerprint)
    {
        let detail = format!(
            "{domain} is pinned to {} (seq {}), which {} lists as revoked; unpin it to trust {}",
            pin.fingerprint, pin.seq, d.url, key.fingerprint
        );
        return done(Status::Revoked, Some(key), detail);
    }
    match pins.domains.get(domain) {
        None => {
            let detail = format!(
                "signed by {}; first key seen for {domain}, pinned now",
                key.fingerprint
            );
            done(Status::FirstUse, Some(key), detail)
        }
        Some(pin) if pin.fingerprint == key.fingerprint => {
            let detail = format!("signed by the key pinned for {domain}");
            done(Status::Verified, Some(key), detail)
        }
        Some(pin) => {
            let detail = format!(
                "signed by {}, but {domain} is pinned to {} (seq {}); unpin it to trust the new key",
                key.fingerprint, pin.fingerprint, pin.seq
            );
            done(Status::KeyChanged, Some(key), detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_at_every_depth_without_whitespace() {
        let v: Value = serde_json::from_str(
            r#"{ "name": "calculate_sum", "description": "Calculates the sum",
                 "parameters": { "b": "integer", "a": "integer", "z": [ {"y": 1, "x": 2} ] } }"#,
        )
        .expect("json");
        assert_eq!(
            canonical(&v),
            r#"{"description":"Calculates the sum","name":"calculate_sum","parameters":{"a":"integer","b":"integer","z":[{"x":2,"y":1}]}}"#
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in [
            "verified",
            "first_use",
            "unsigned",
            "key_changed",
            "invalid_signature",
            "bad_key",
            "revoked",
        ] {
            assert_eq!(Status::from_name(s).map(Status::name), Some(s));
        }
        assert!(Status::FirstUse.accepted(ToolVerification::Strict));
        assert!(!Status::Unsigned.accepted(ToolVerification::Strict));
        assert!(Status::KeyChanged.accepted(ToolVerification::Warn));
    }

    #[test]
    fn an_unsigned_tool_is_refused_under_strict_only() {
        let tool = serde_json::json!({"name": "t", "inputSchema": {"type": "object"}});
        let strict = assess(&Pins::default(), "d", &tool, ToolVerification::Strict, None);
        assert_eq!(strict.status, Status::Unsigned);
        assert!(!strict.accepted);
        assert!(assess(&Pins::default(), "d", &tool, ToolVerification::Warn, None).accepted);
    }

    #[test]
    fn a_malformed_key_is_bad_key() {
        let tool = serde_json::json!({"name": "t", "inputSchema": {}, "_meta": {
            META_SIGNATURE: "AAAA", META_PUBLIC_KEY: "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}});
        let a = assess(&Pins::default(), "d", &tool, ToolVerification::Strict, None);
        assert_eq!(a.status, Status::BadKey, "{}", a.detail);
    }

    #[test]
    fn well_known_urls_take_an_origin_or_the_document() {
        assert_eq!(
            well_known_url("https://tools.example").as_deref(),
            Ok("https://tools.example/.well-known/schemapin.json")
        );
        assert_eq!(
            well_known_url("http://127.0.0.1:8080/").as_deref(),
            Ok("http://127.0.0.1:8080/.well-known/schemapin.json")
        );
        assert_eq!(
            well_known_url("https://x.example/.well-known/schemapin.json").as_deref(),
            Ok("https://x.example/.well-known/schemapin.json")
        );
        assert!(well_known_url("tools.example").is_err());
        assert!(well_known_url("https://").is_err());
    }

    #[test]
    fn discovery_documents_name_the_bad_field() {
        let e = Discovered::parse("u", b"[]").expect_err("array");
        assert_eq!(e, "not a JSON object");
        let e = Discovered::parse("u", br#"{"developer_name": "x"}"#).expect_err("no key");
        assert!(e.contains("public_key_pem"), "{e}");
        let e = Discovered::parse("u", br#"{"public_key_pem": "nope"}"#).expect_err("bad key");
        assert!(e.starts_with("public_key_pem: "), "{e}");
        assert!(
            Discovered::parse("u", b"not json")
                .expect_err("json")
                .starts_with("not JSON")
        );
    }
}
