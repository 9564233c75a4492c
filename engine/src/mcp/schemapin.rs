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
//! `schemapin.org/public_key` (`.well-known` discovery needs a network the
//! runtime does not assume; the first key seen for a domain is pinned, and
//! from then on only that key is accepted — trust on first use).
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
#[must_use]
pub fn assess(pins: &Pins, domain: &str, tool: &Value, mode: ToolVerification) -> Assessment {
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
    let (Some(signature), Some(pem)) = (field(META_SIGNATURE), field(META_PUBLIC_KEY)) else {
        return done(
            Status::Unsigned,
            None,
            format!("no {META_SIGNATURE} and {META_PUBLIC_KEY} in the tool's _meta"),
        );
    };
    let key = match Key::from_pem(pem) {
        Ok(k) => k,
        Err(e) => return done(Status::BadKey, None, e),
    };
    if let Err(e) = key.verify(canonical.as_bytes(), signature) {
        let status = if e.starts_with("the signature does not match") {
            Status::InvalidSignature
        } else {
            Status::BadKey
        };
        return done(status, Some(key), e);
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
        let strict = assess(&Pins::default(), "d", &tool, ToolVerification::Strict);
        assert_eq!(strict.status, Status::Unsigned);
        assert!(!strict.accepted);
        assert!(assess(&Pins::default(), "d", &tool, ToolVerification::Warn).accepted);
    }

    #[test]
    fn a_malformed_key_is_bad_key() {
        let tool = serde_json::json!({"name": "t", "inputSchema": {}, "_meta": {
            META_SIGNATURE: "AAAA", META_PUBLIC_KEY: "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}});
        let a = assess(&Pins::default(), "d", &tool, ToolVerification::Strict);
        assert_eq!(a.status, Status::BadKey, "{}", a.detail);
    }
}
