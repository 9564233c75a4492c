//! The bus's keys and cryptography: the node's bus secret, the per-agent
//! content keys derived from it, AES-256-GCM sealing, Ed25519 envelope
//! signatures, and the pairwise secret with a pinned peer instance.
//!
//! # Keys
//!
//! One 32-byte secret per node, `<data>/keys/bus.secret` (mode 0600, made
//! from the OS random source on first use, refused when group or others can
//! read it). From it, with BLAKE3's `derive_key` (each use its own context
//! string):
//!
//! - the node's **bus identity**, an Ed25519 key: it signs every envelope
//!   this node seals; the sending agent is inside the signed bytes, so the
//!   signature binds (node, agent, message). Peers pin its public key;
//! - the **content key** of a local agent at an epoch,
//!   `derive_key("stele bus content key v1", secret || epoch || agent)`.
//!   Rotation is the event `BusKeyRotated` naming the new epoch; the key
//!   itself never leaves the process and is never journaled.
//!
//! Across instances the content key of `(origin, agent, epoch)` is derived
//! the same way from the X25519 secret the two nodes share: each converts
//! its Ed25519 identity to X25519 (the birational map, as libsodium's
//! `crypto_sign_ed25519_*_to_curve25519`), so pinning a peer's identity key
//! also fixes the key agreement with it; no other key is exchanged.
//!
//! # Nonces
//!
//! A 96-bit GCM nonce is `epoch (u32 BE) || counter (u64 BE)`, where the
//! counter counts the messages one sender sealed in one epoch. The bus
//! allocates counters in its single task; on start it resumes one past the
//! highest counter journaled for that (sender, epoch) — every sealed
//! envelope is journaled in the same atomic batch as its `MessageSent`
//! before any copy of it leaves the process, so a counter can only be
//! reused for a ciphertext nobody ever saw (its batch was never
//! committed). Each content key is used with each nonce at most once; the
//! epoch rotates a key long before 2^64 messages.
//!
//! The envelope header (origin, id, sender, recipient, pattern, request,
//! epoch, counter, expiry) is the AEAD's associated data, so ciphertext
//! cannot be moved to another address; the signature covers the header and
//! the ciphertext.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rand_core::{OsRng, RngCore};

use super::BusError;

const SECRET_FILE: &str = "bus.secret";
const SECRET_HEADER: &str = "stele-bus-secret-v1";
const IDENTITY_CONTEXT: &str = "stele bus identity key v1";
const CONTENT_CONTEXT: &str = "stele bus content key v1";
const PEER_CONTEXT: &str = "stele bus peer content key v1";
const SIGN_DOMAIN: &[u8] = b"stele/bus/envelope/v1";

/// The addressing of a message: what the AEAD binds and the signature
/// covers besides the ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sealing instance.
    pub origin: String,
    /// The sending agent.
    pub sender: String,
    /// The recipient agent (`agent@instance`) or topic.
    pub recipient: String,
    /// `direct`, `publish`, `request`, `response`.
    pub pattern: String,
    /// The request a response answers.
    pub request: Option<String>,
    /// The sender's key epoch.
    pub epoch: u32,
    /// The nonce counter.
    pub counter: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Header {
    /// The message id: `m:<origin>:<sender>:<epoch>:<counter>` — unique
    /// because (sender, epoch, counter) is, and checkable against the rest
    /// of the header.
    #[must_use]
    pub fn id(&self) -> String {
        format!(
            "m:{}:{}:{}:{}",
            self.origin, self.sender, self.epoch, self.counter
        )
    }

    /// The GCM nonce (see the module documentation).
    #[must_use]
    pub fn nonce(&self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.epoch.to_be_bytes());
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        n
    }

    /// The associated data: every field, length-prefixed.
    #[must_use]
    pub fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        for part in [
            self.origin.as_bytes(),
            self.sender.as_bytes(),
            self.recipient.as_bytes(),
            self.pattern.as_bytes(),
            self.request.as_deref().unwrap_or("").as_bytes(),
        ] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(part);
        }
        out.push(u8::from(self.request.is_some()));
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.counter.to_le_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        out
    }

    /// The 32-byte digest the signature is over.
    #[must_use]
    pub fn signed_digest(&self, ciphertext: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(SIGN_DOMAIN);
        h.update(&self.aad());
        h.update(&u64::try_from(ciphertext.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(ciphertext);
        *h.finalize().as_bytes()
    }
}

/// A content key (AES-256-GCM), derived, never stored.
#[derive(Clone)]
pub struct ContentKey(Aes256Gcm);

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

impl ContentKey {
    fn derive(context: &str, material: &[u8; 32], origin: &str, agent: &str, epoch: u32) -> ContentKey {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(material);
        h.update(&epoch.to_le_bytes());
        h.update(&u32::try_from(origin.len()).unwrap_or(u32::MAX).to_le_bytes());
        h.update(origin.as_bytes());
        h.update(agent.as_bytes());
        let key = *h.finalize().as_bytes();
        ContentKey(Aes256Gcm::new(&key.into()))
    }

    /// Encrypts `plaintext` under the header's nonce, binding the header.
    ///
    /// # Errors
    /// [`BusError::Crypto`] (only for absurd sizes).
    pub fn seal(&self, header: &Header, plaintext: &[u8]) -> Result<Vec<u8>, BusError> {
        let aad = header.aad();
        self.0
            .encrypt(
                Nonce::from_slice(&header.nonce()),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| BusError::Crypto("encryption failed".into()))
    }

    /// Decrypts and authenticates.
    ///
    /// # Errors
    /// [`BusError::Crypto`] when the ciphertext, tag or header was changed.
    pub fn open(&self, header: &Header, ciphertext: &[u8]) -> Result<Vec<u8>, BusError> {
        let aad = header.aad();
        self.0
            .decrypt(
                Nonce::from_slice(&header.nonce()),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                BusError::Crypto(
                    "the ciphertext does not authenticate (changed after sealing, or sealed for another address)"
                        .into(),
                )
            })
    }
}

/// The node's bus keys.
#[derive(Clone)]
pub struct BusKeys {
    secret: [u8; 32],
    identity: SigningKey,
}

impl std::fmt::Debug for BusKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BusKeys({})", hex::encode(self.public_key()))
    }
}

impl BusKeys {
    /// Keys from a secret.
    #[must_use]
    pub fn from_secret(secret: [u8; 32]) -> BusKeys {
        let seed = blake3::derive_key(IDENTITY_CONTEXT, &secret);
        BusKeys {
            secret,
            identity: SigningKey::from_bytes(&seed),
        }
    }

    /// Fresh keys from the OS random source (tests, benches).
    #[must_use]
    pub fn generate() -> BusKeys {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        BusKeys::from_secret(secret)
    }

    /// The path of a data directory's bus secret.
    #[must_use]
    pub fn path(data: &Path) -> PathBuf {
        data.join("keys").join(SECRET_FILE)
    }

    /// Loads `<data>/keys/bus.secret`, creating it (0600) when absent.
    ///
    /// # Errors
    /// [`BusError::Keys`] naming the file: unreadable, malformed, or
    /// readable by group or others.
    pub fn open(data: &Path) -> Result<BusKeys, BusError> {
        let path = BusKeys::path(data);
        let err = |reason: String| BusError::Keys {
            path: path.clone(),
            reason,
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                let mode = fs::metadata(&path)
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "mode {:o} lets others read it; run `chmod 600 {}`",
                        mode & 0o777,
                        path.display()
                    )));
                }
                let mut lines = text.lines();
                if lines.next() != Some(SECRET_HEADER) {
                    return Err(err(format!("the first line is not {SECRET_HEADER:?}")));
                }
                let raw = lines
                    .next()
                    .ok_or_else(|| err("the secret line is missing".into()))?;
                let bytes =
                    hex::decode(raw.trim()).map_err(|e| err(format!("the secret is not hex: {e}")))?;
                let secret: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| err("the secret is not 32 bytes".into()))?;
                Ok(BusKeys::from_secret(secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = data.join("keys");
                if !dir.exists() {
                    fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                        .map_err(|e| err(e.to_string()))?;
                }
                let keys = BusKeys::generate();
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| err(e.to_string()))?;
                writeln!(f, "{SECRET_HEADER}\n{}", hex::encode(keys.secret))
                    .map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                Ok(keys)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The node's bus identity (Ed25519 public key).
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.identity.verifying_key().to_bytes()
    }

    /// The content key of a local agent at an epoch.
    #[must_use]
    pub fn local_key(&self, origin: &str, agent: &str, epoch: u32) -> ContentKey {
        ContentKey::derive(CONTENT_CONTEXT, &self.secret, origin, agent, epoch)
    }

    /// The content key of `(origin, agent, epoch)` shared with a peer whose
    /// identity key is `peer` (either side computes the same key).
    ///
    /// # Errors
    /// [`BusError::Crypto`] when `peer` is not a valid Ed25519 point.
    pub fn peer_key(
        &self,
        peer: &[u8; 32],
        origin: &str,
        agent: &str,
        epoch: u32,
    ) -> Result<ContentKey, BusError> {
        let vk = VerifyingKey::from_bytes(peer)
            .map_err(|e| BusError::Crypto(format!("peer key {} is not valid: {e}", hex::encode(peer))))?;
        let shared = vk
            .to_montgomery()
            .mul_clamped(self.identity.to_scalar_bytes())
            .to_bytes();
        if shared == [0u8; 32] {
            return Err(BusError::Crypto(
                "the peer key gives a degenerate shared secret".into(),
            ));
        }
        Ok(ContentKey::derive(PEER_CONTEXT, &shared, origin, agent, epoch))
    }

    /// Signs the envelope digest with the node's identity.
    #[must_use]
    pub fn sign(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.identity.sign(digest).to_bytes()
    }
}

/// Checks a signature of `signer` over `digest`.
///
/// # Errors
/// A message naming what failed.
pub fn verify(signer: &[u8; 32], digest: &[u8; 32], signature: &[u8; 64]) -> Result<(), String> {
    let vk = VerifyingKey::from_bytes(signer).map_err(|e| format!("signer key is not valid: {e}"))?;
    vk.verify(digest, &Signature::from_bytes(signature))
        .map_err(|_| "the Ed25519 signature does not verify".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            origin: "a".into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            pattern: "direct".into(),
            request: None,
            epoch: 0,
            counter: 7,
            expires_at_ms: 1,
        }
    }

    #[test]
    fn peer_keys_agree_and_differ_from_others() {
        let (a, b, c) = (BusKeys::generate(), BusKeys::generate(), BusKeys::generate());
        let h = header();
        let ct = a
            .peer_key(&b.public_key(), "a", "alice", 0)
            .and_then(|k| k.seal(&h, b"hi"))
            .expect("seal");
        let pt = b
            .peer_key(&a.public_key(), "a", "alice", 0)
            .and_then(|k| k.open(&h, &ct))
            .expect("open");
        assert_eq!(pt, b"hi");
        let wrong = c.peer_key(&a.public_key(), "a", "alice", 0).expect("key");
        assert!(wrong.open(&h, &ct).is_err());
    }

    #[test]
    fn header_change_breaks_open() {
        let k = BusKeys::generate();
        let h = header();
        let key = k.local_key("a", "alice", 0);
        let ct = key.seal(&h, b"x").expect("seal");
        let mut moved = h.clone();
        moved.recipient = "eve".into();
        assert!(key.open(&moved, &ct).is_err());
        assert!(k.local_key("a", "alice", 1).open(&h, &ct).is_err());
    }
}
