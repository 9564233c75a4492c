//! Newtypes for the journal's identifiers: [`Seq`], [`StreamId`], [`RunId`],
//! [`Hash`], [`KeyId`]. Parsing and validation of outside input lives here;
//! encoding and storage do not.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::limits::MAX_ID_BYTES;

/// A gapless global position in the journal; the first event is 1.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The position before the first event (an empty journal's head).
    pub const ZERO: Seq = Seq(0);

    /// The next position.
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }

    /// Big-endian key bytes, so that fjall's byte order is seq order.
    #[must_use]
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A BLAKE3 digest: an event hash, a Merkle root, a key fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev` of the first event.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lower-case hex, 64 characters.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 6 bytes as hex, for human output.
    #[must_use]
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Hash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = hex::decode(s.trim()).map_err(|e| Error::InvalidInput {
            what: "hash",
            reason: format!("{s:?} is not hex: {e}"),
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| Error::InvalidInput {
            what: "hash",
            reason: format!("expected 32 bytes, found {}", b.len()),
        })?;
        Ok(Hash(arr))
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which signing key signed an event: the first 8 bytes of
/// BLAKE3(`stele/key/v1` || public key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of an Ed25519 public key.
    #[must_use]
    pub fn of(public_key: &[u8; 32]) -> KeyId {
        let mut h = blake3::Hasher::new();
        h.update(crate::event::KEY_ID_DOMAIN);
        h.update(public_key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.finalize().as_bytes()[..8]);
        KeyId(id)
    }

    /// Lower-case hex, 16 characters.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

fn validate_id(what: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::InvalidInput {
            what,
            reason: "must not be empty".into(),
        });
    }
    if s.len() > MAX_ID_BYTES {
        return Err(Error::InvalidInput {
            what,
            reason: format!("{} bytes is longer than the limit of {MAX_ID_BYTES}", s.len()),
        });
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(Error::InvalidInput {
            what,
            reason: format!("{s:?} contains {c:?}; allowed are ASCII letters, digits and . _ - : /"),
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier: 1 to 128 bytes of ASCII
            /// letters, digits and `. _ - : /`.
            ///
            /// # Errors
            /// [`Error::InvalidInput`] naming what is wrong with it.
            pub fn new(s: impl Into<String>) -> Result<Self, Error> {
                let s = s.into();
                validate_id($what, &s)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// What an event is about: `system`, `agent:<name>`, `run:<id>`, a bus
    /// topic. Streams are indexed: reading one stream never scans others.
    StreamId,
    "stream id"
);

string_id!(
    /// One execution of an agent. Events that carry a run id are indexed by it.
    RunId,
    "run id"
);

impl StreamId {
    /// The stream of the journal's own facts (opened, keys, checkpoints).
    #[must_use]
    pub fn system() -> StreamId {
        StreamId("system".to_owned())
    }
}
