//! The head file: the last acknowledged (seq, hash), kept outside fjall.
//!
//! fjall recovery drops a corrupt tail batch silently. That is right for a
//! torn, unacknowledged write, but a damaged *acknowledged* batch would make
//! the journal silently shorter. The writer records each acknowledged head
//! here after the commit is durable, and `open` refuses a journal whose
//! storage is behind it.
//!
//! Format: two 64-byte slots written alternately, so a torn write of one slot
//! leaves the other intact. A slot is `magic (8) | counter u64 LE | seq u64
//! LE | hash (32) | check (8)` where `check` is the first 8 bytes of BLAKE3
//! over the first 56 bytes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ids::{Hash, Seq};

const MAGIC: &[u8; 8] = b"STELEHD1";
const SLOT_BYTES: usize = 64;

/// An acknowledged head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadRecord {
    /// The last acknowledged seq.
    pub seq: Seq,
    /// Its hash.
    pub hash: Hash,
}

/// The open head file.
#[derive(Debug)]
pub(crate) struct HeadFile {
    path: PathBuf,
    file: File,
    counter: u64,
}

fn encode_slot(counter: u64, head: HeadRecord) -> [u8; SLOT_BYTES] {
    let mut s = [0u8; SLOT_BYTES];
    s[..8].copy_from_slice(MAGIC);
    s[8..16].copy_from_slice(&counter.to_le_bytes());
    s[16..24].copy_from_slice(&head.seq.0.to_le_bytes());
    s[24..56].copy_from_slice(&head.hash.0);
    let check = blake3::hash(&s[..56]);
    s[56..].copy_from_slice(&check.as_bytes()[..8]);
    s
}

fn decode_slot(s: &[u8]) -> Option<(u64, HeadRecord)> {
    if s.len() != SLOT_BYTES || &s[..8] != MAGIC || blake3::hash(&s[..56]).as_bytes()[..8] != s[56..] {
        return None;
    }
    let counter = u64::from_le_bytes(s[8..16].try_into().ok()?);
    let seq = Seq(u64::from_le_bytes(s[16..24].try_into().ok()?));
    let hash = Hash(s[24..56].try_into().ok()?);
    Some((counter, HeadRecord { seq, hash }))
}

impl HeadFile {
    /// Creates a head file for a new journal (head 0).
    pub(crate) fn create(path: &Path) -> Result<HeadFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(Error::io(path))?;
        let mut h = HeadFile {
            path: path.to_owned(),
            file,
            counter: 0,
        };
        h.write(HeadRecord {
            seq: Seq::ZERO,
            hash: Hash::ZERO,
        })?;
        h.write(HeadRecord {
            seq: Seq::ZERO,
            hash: Hash::ZERO,
        })?;
        h.sync()?;
        Ok(h)
    }

    /// Opens an existing head file and reads the newest valid slot.
    pub(crate) fn open(path: &Path) -> Result<(HeadFile, HeadRecord)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(Error::io(path))?;
        let mut buf = vec![0u8; 2 * SLOT_BYTES];
        let n = file.read_at(&mut buf, 0).map_err(Error::io(path))?;
        buf.truncate(n);
        let best = buf
            .chunks(SLOT_BYTES)
            .filter_map(decode_slot)
            .max_by_key(|(counter, _)| *counter)
            .ok_or_else(|| Error::Tampered {
                seq: Seq::ZERO,
                reason: format!(
                    "head file {} is damaged (no valid slot); the acknowledged head is unknown",
                    path.display()
                ),
            })?;
        Ok((
            HeadFile {
                path: path.to_owned(),
                file,
                counter: best.0,
            },
            best.1,
        ))
    }

    /// Records a new acknowledged head (not synced; see [`HeadFile::sync`]).
    pub(crate) fn write(&mut self, head: HeadRecord) -> Result<()> {
        self.counter += 1;
        let slot = encode_slot(self.counter, head);
        let offset = (self.counter % 2) * SLOT_BYTES as u64;
        self.file
            .write_all_at(&slot, offset)
            .map_err(Error::io(&self.path))
    }

    /// Makes the head file durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(Error::io(&self.path))
    }
}
