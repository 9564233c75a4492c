//! Node signing keys: Ed25519 keys stored in `<data>/keys/<id>.key` with mode
//! 0600, created on first use. What keys are *valid* is not decided here: the
//! journal's own `JournalOpened` and `KeyRotated` events are the registry.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::OsRng;

use crate::error::{Error, Result};
use crate::ids::{Hash, KeyId};

const KEY_FILE_HEADER: &str = "stele-ed25519-secret-v1";

/// A signing key of this node.
#[derive(Clone)]
pub struct NodeKey {
    id: KeyId,
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.id)
    }
}

impl NodeKey {
    /// A fresh key from the OS random source.
    #[must_use]
    pub fn generate() -> NodeKey {
        NodeKey::from_signing(SigningKey::generate(&mut OsRng))
    }

    fn from_signing(signing: SigningKey) -> NodeKey {
        NodeKey {
            id: KeyId::of(signing.verifying_key().as_bytes()),
            signing,
        }
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The Ed25519 public key.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs an event hash.
    #[must_use]
    pub fn sign(&self, hash: &Hash) -> [u8; 64] {
        self.signing.sign(&hash.0).to_bytes()
    }
}

/// The key files of a data directory.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
}

impl Keyring {
    /// Opens (creating with mode 0700) `<data>/keys`.
    ///
    /// # Errors
    /// I/O errors with the path.
    pub fn open(data_dir: &Path) -> Result<Keyring> {
        let dir = data_dir.join("keys");
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(Error::io(&dir))?;
        }
        Ok(Keyring { dir })
    }

    /// Path of a key's file.
    #[must_use]
    pub fn path_of(&self, id: KeyId) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    /// Loads a key, refusing a file that group or others can read.
    ///
    /// # Errors
    /// [`Error::Key`] when missing, malformed, not matching its id, or too
    /// permissive.
    pub fn load(&self, id: KeyId) -> Result<NodeKey> {
        let path = self.path_of(id);
        let key_err = |reason: String| Error::Key {
            path: path.clone(),
            reason,
        };
        let meta = fs::metadata(&path).map_err(|e| key_err(format!("cannot read: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_err(format!(
                "mode {mode:o} lets group or others read the node key; run `chmod 600 {}`",
                path.display()
            )));
        }
        let text = fs::read_to_string(&path).map_err(|e| key_err(format!("cannot read: {e}")))?;
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(key_err(format!("first line is not {KEY_FILE_HEADER:?}")));
        }
        let secret = lines
            .next()
            .ok_or_else(|| key_err("no secret line".into()))
            .and_then(|l| hex::decode(l.trim()).map_err(|e| key_err(format!("secret is not hex: {e}"))))?;
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|s: Vec<u8>| key_err(format!("secret is {} bytes, expected 32", s.len())))?;
        let key = NodeKey::from_signing(SigningKey::from_bytes(&secret));
        if key.id != id {
            return Err(key_err(format!("file holds key {}, not {id}", key.id)));
        }
        Ok(key)
    }

    /// Writes a new key file (mode 0600, synced) and returns the key.
    ///
    /// # Errors
    /// I/O errors with the path.
    pub fn create(&self, key: &NodeKey) -> Result<()> {
        let path = self.path_of(key.id);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io(&path))?;
        writeln!(f, "{KEY_FILE_HEADER}\n{}", hex::encode(key.signing.to_bytes()))
            .map_err(Error::io(&path))?;
        f.sync_all().map_err(Error::io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io(&self.dir))?;
        Ok(())
    }
}
