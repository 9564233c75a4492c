//! The on-disk layout on fjall: keyspaces, key encodings, and the read side
//! (point reads, range reads by seq, by stream and by run).
//!
//! Keyspaces:
//! - `events`: seq (u64 BE) → record (see `event`)
//! - `by_stream`: stream || 0x00 || seq BE → empty
//! - `by_run`: run || 0x00 || seq BE → empty
//! - `merkle`: level u8 || index u64 BE → perfect-subtree hash, for levels
//!   ≥ `MERKLE_STORED_MIN_LEVEL` (lower subtrees are recomputed from their
//!   few events when a proof needs them)
//! - `meta`: `head` → seq BE || hash; `frontier` → Merkle frontier at head;
//!   `key/<id>` → public key || first seq; `key/active` → id;
//!   `checkpoint/<size BE>` → seq BE || root
//!
//! Everything a group commit changes is written in one fjall batch, so the
//! keyspaces never disagree after a crash.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch};

use crate::error::{Error, Result};
use crate::event::EventRef;
use crate::ids::{Hash, KeyId, Seq};
use crate::limits::MERKLE_STORED_MIN_LEVEL;
use crate::merkle::{Digest, Frontier, NodeSource};

pub(crate) const META_HEAD: &[u8] = b"head";
pub(crate) const META_FRONTIER: &[u8] = b"frontier";
pub(crate) const META_ACTIVE_KEY: &[u8] = b"key/active";
pub(crate) const META_FORMAT: &[u8] = b"format";
const KEY_PREFIX: &[u8] = b"key/id/";
const CHECKPOINT_PREFIX: &[u8] = b"checkpoint/";

/// Storage format version of the keyspace layout.
pub const STORE_FORMAT: u32 = 1;

/// A registered key: its public half and the first seq it signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub id: KeyId,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
    /// First event signed with it.
    pub since: Seq,
}

/// A checkpoint position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Events covered (1..=size).
    pub size: u64,
    /// The seq of the `CheckpointSigned` event.
    pub seq: Seq,
    /// The Merkle root.
    pub root: Hash,
}

#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) db: Database,
    pub(crate) events: Keyspace,
    pub(crate) by_stream: Keyspace,
    pub(crate) by_run: Keyspace,
    pub(crate) merkle: Keyspace,
    pub(crate) meta: Keyspace,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn index_key(id: &str, seq: Seq) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 9);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_key());
    k
}

fn seq_from_key(k: &[u8]) -> Option<Seq> {
    let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(Seq(u64::from_be_bytes(tail)))
}

impl Store {
    pub(crate) fn open(dir: &Path) -> Result<Store> {
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .max_journaling_size(crate::limits::MAX_STORAGE_JOURNAL_BYTES)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => Error::Locked { path: dir.to_owned() },
                e => Error::Storage {
                    context: "open",
                    message: e.to_string(),
                },
            })?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(Error::storage("open keyspace"))
        };
        Ok(Store {
            events: ks("events")?,
            by_stream: ks("by_stream")?,
            by_run: ks("by_run")?,
            merkle: ks("merkle")?,
            meta: ks("meta")?,
            db,
        })
    }

    /// Marks new storage as a stele journal of this format, durably.
    pub(crate) fn write_format(&self) -> Result<()> {
        self.meta
            .insert(META_FORMAT, STORE_FORMAT.to_be_bytes())
            .map_err(Error::storage("write format"))?;
        self.db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(Error::storage("create"))
    }

    pub(crate) fn batch(&self) -> OwnedWriteBatch {
        self.db.batch()
    }

    // ---- write helpers (into a batch) ----

    pub(crate) fn put_event(
        &self,
        b: &mut OwnedWriteBatch,
        seq: Seq,
        record: Vec<u8>,
        stream: &str,
        run: Option<&str>,
    ) {
        b.insert(&self.events, seq.to_key(), record);
        b.insert(&self.by_stream, index_key(stream, seq), []);
        if let Some(run) = run {
            b.insert(&self.by_run, index_key(run, seq), []);
        }
    }

    pub(crate) fn put_node(&self, b: &mut OwnedWriteBatch, level: u8, index: u64, hash: &Digest) {
        let mut k = [0u8; 9];
        k[0] = level;
        k[1..].copy_from_slice(&index.to_be_bytes());
        b.insert(&self.merkle, k, hash.to_vec());
    }

    pub(crate) fn put_head(&self, b: &mut OwnedWriteBatch, seq: Seq, hash: &Hash, frontier: &Frontier) {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&seq.to_key());
        v.extend_from_slice(&hash.0);
        b.insert(&self.meta, META_HEAD, v);
        b.insert(&self.meta, META_FRONTIER, frontier.encode());
    }

    pub(crate) fn put_key(&self, b: &mut OwnedWriteBatch, info: &KeyInfo) {
        let mut k = KEY_PREFIX.to_vec();
        k.extend_from_slice(&info.id.0);
        let mut v = info.public_key.to_vec();
        v.extend_from_slice(&info.since.to_key());
        b.insert(&self.meta, k, v);
        b.insert(&self.meta, META_ACTIVE_KEY, info.id.0.to_vec());
    }

    pub(crate) fn put_checkpoint(&self, b: &mut OwnedWriteBatch, cp: &CheckpointInfo) {
        let mut k = CHECKPOINT_PREFIX.to_vec();
        k.extend_from_slice(&cp.size.to_be_bytes());
        let mut v = cp.seq.to_key().to_vec();
        v.extend_from_slice(&cp.root.0);
        b.insert(&self.meta, k, v);
    }

    // ---- reads ----

    fn meta_get(&self, key: &[u8]) -> Result<Option<fjall::Slice>> {
        self.meta.get(key).map_err(Error::storage("read meta"))
    }

    /// The head recorded in meta: (seq, hash), (0, zero) when empty.
    pub(crate) fn head(&self) -> Result<(Seq, Hash)> {
        match self.meta_get(META_HEAD)? {
            None => Ok((Seq::ZERO, Hash::ZERO)),
            Some(v) if v.len() == 40 => {
                let seq = seq_from_key(&v[..8]).unwrap_or_default();
                let hash = Hash(v[8..40].try_into().map_err(|_| Error::Corrupt {
                    seq: Seq::ZERO,
                    reason: "meta head malformed".into(),
                })?);
                Ok((seq, hash))
            }
            Some(v) => Err(Error::Corrupt {
                seq: Seq::ZERO,
                reason: format!("meta head is {} bytes, expected 40", v.len()),
            }),
        }
    }

    pub(crate) fn frontier(&self) -> Result<Frontier> {
        match self.meta_get(META_FRONTIER)? {
            None => Ok(Frontier::new()),
            Some(v) => Frontier::decode(&v).map_err(|e| Error::Corrupt {
                seq: Seq::ZERO,
                reason: format!("meta frontier: {e}"),
            }),
        }
    }

    pub(crate) fn format(&self) -> Result<Option<u32>> {
        Ok(self
            .meta_get(META_FORMAT)?
            .and_then(|v| <[u8; 4]>::try_from(&v[..]).ok())
            .map(u32::from_be_bytes))
    }

    pub(crate) fn active_key(&self) -> Result<Option<KeyId>> {
        Ok(self
            .meta_get(META_ACTIVE_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(KeyId))
    }

    pub(crate) fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for kv in self.meta.prefix(KEY_PREFIX) {
            let (k, v) = kv.into_inner().map_err(Error::storage("read keys"))?;
            let id: [u8; 8] = k[KEY_PREFIX.len()..].try_into().map_err(|_| Error::Corrupt {
                seq: Seq::ZERO,
                reason: "meta key id malformed".into(),
            })?;
            if v.len() != 40 {
                return Err(Error::Corrupt {
                    seq: Seq::ZERO,
                    reason: "meta key entry malformed".into(),
                });
            }
            out.push(KeyInfo {
                id: KeyId(id),
                public_key: v[..32].try_into().unwrap_or([0; 32]),
                since: seq_from_key(&v[32..]).unwrap_or_default(),
            });
        }
        out.sort_by_key(|k| k.since);
        Ok(out)
    }

    pub(crate) fn checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        let mut out = Vec::new();
        for kv in self.meta.prefix(CHECKPOINT_PREFIX) {
            let (k, v) = kv.into_inner().map_err(Error::storage("read checkpoints"))?;
            let size = seq_from_key(&k).unwrap_or_default().0;
            if v.len() != 40 {
                return Err(Error::Corrupt {
                    seq: Seq::ZERO,
                    reason: "meta checkpoint entry malformed".into(),
                });
            }
            out.push(CheckpointInfo {
                size,
                seq: seq_from_key(&v[..8]).unwrap_or_default(),
                root: Hash(v[8..40].try_into().unwrap_or([0; 32])),
            });
        }
        Ok(out)
    }

    pub(crate) fn get(&self, seq: Seq) -> Result<Option<EventRef>> {
        match self.events.get(seq.to_key()).map_err(|e| Error::Corrupt {
            seq,
            reason: format!("storage read failed: {e}"),
        })? {
            None => Ok(None),
            Some(v) => EventRef::parse(seq, v).map(Some),
        }
    }

    /// The last stored event key, independent of meta.
    pub(crate) fn last_event_seq(&self) -> Result<Seq> {
        match self.events.last_key_value() {
            None => Ok(Seq::ZERO),
            Some(g) => {
                let k = g.key().map_err(Error::storage("read last event"))?;
                seq_from_key(&k).ok_or_else(|| Error::Corrupt {
                    seq: Seq::ZERO,
                    reason: format!("event key of {} bytes", k.len()),
                })
            }
        }
    }

    /// Events with seq in `[from, to]`, in order.
    pub(crate) fn range(&self, from: Seq, to: Seq) -> impl Iterator<Item = Result<EventRef>> + '_ {
        self.events.range(from.to_key()..=to.to_key()).map(move |kv| {
            let (k, v) = kv.into_inner().map_err(|e| Error::Storage {
                context: "range read",
                message: e.to_string(),
            })?;
            let seq = seq_from_key(&k).ok_or_else(|| Error::Corrupt {
                seq: from,
                reason: format!("event key of {} bytes", k.len()),
            })?;
            EventRef::parse(seq, v)
        })
    }

    /// Seqs of a stream's (or run's) events from `from`, in order.
    pub(crate) fn index_seqs(
        &self,
        index: &Keyspace,
        id: &str,
        from: Seq,
    ) -> impl Iterator<Item = Result<Seq>> + '_ {
        let start = index_key(id, from);
        let end = index_key(id, Seq(u64::MAX));
        index.range(start..=end).map(|kv| {
            let k = kv.key().map_err(Error::storage("index read"))?;
            seq_from_key(&k).ok_or_else(|| Error::Corrupt {
                seq: Seq::ZERO,
                reason: "index key malformed".into(),
            })
        })
    }

    pub(crate) fn node(&self, level: u8, index: u64) -> Result<Digest> {
        if level < MERKLE_STORED_MIN_LEVEL {
            return self.computed_node(level, index);
        }
        let mut k = [0u8; 9];
        k[0] = level;
        k[1..].copy_from_slice(&index.to_be_bytes());
        let v = self
            .merkle
            .get(k)
            .map_err(Error::storage("read merkle node"))?
            .ok_or_else(|| Error::Merkle(format!("node level {level} index {index} is missing")))?;
        v[..]
            .try_into()
            .map_err(|_| Error::Merkle(format!("node level {level} index {index} is malformed")))
    }
}

impl Store {
    /// A perfect subtree below the stored levels, from its events' hashes
    /// (at most 2^(MERKLE_STORED_MIN_LEVEL-1) event reads).
    fn computed_node(&self, level: u8, index: u64) -> Result<Digest> {
        let width = 1u64 << level;
        let first = Seq(index * width + 1);
        let last = Seq(first.0 + width - 1);
        let mut hashes = Vec::with_capacity(usize::try_from(width).unwrap_or(0));
        for e in self.range(first, last) {
            hashes.push(crate::merkle::leaf_hash(&e?.hash().0));
        }
        if hashes.len() as u64 != width {
            return Err(Error::Merkle(format!(
                "node level {level} index {index}: events {first}..={last} are not all stored"
            )));
        }
        while hashes.len() > 1 {
            hashes = hashes
                .chunks(2)
                .map(|pair| crate::merkle::node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(hashes[0])
    }
}

impl NodeSource for Store {
    type Error = Error;
    fn node(&self, level: u8, index: u64) -> Result<Digest> {
        Store::node(self, level, index)
    }
}
