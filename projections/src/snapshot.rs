//! Snapshot files: a projection's state as of seq N, stored as
//! `<data>/snapshots/<name>/<seq, 20 digits>.snap`.
//!
//! Format: the line `stele-snapshot-v1`, one JSON header line
//! (`name`, `version`, `seq`, `hash` of the event at `seq`, `payload_blake3`),
//! then the state as JSON. A snapshot is used only if its header, checksum
//! and version match and the journal's event at `seq` still has `hash`
//! (see `fold`), so a stale, foreign or damaged snapshot costs a refold,
//! never a wrong state. Files are written to a temporary name, synced and
//! renamed, so a crash leaves either the old set or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use stele_journal::{Hash, Seq};

use crate::{Error, Projection, Result};

const MAGIC: &str = "stele-snapshot-v1";

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    name: String,
    version: u32,
    seq: u64,
    hash: Hash,
    payload_blake3: String,
}

/// The snapshot directory of a data directory.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// A loaded snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot<P> {
    /// The state as of `seq`.
    pub state: P,
    /// The last event folded into it.
    pub seq: Seq,
    /// That event's hash, as recorded when the snapshot was taken.
    pub hash: Hash,
}

fn snap_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Snapshot {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

impl SnapshotStore {
    /// The store under `<data>/snapshots`.
    #[must_use]
    pub fn new(data_dir: &Path) -> SnapshotStore {
        SnapshotStore {
            dir: data_dir.join("snapshots"),
        }
    }

    fn dir_of<P: Projection>(&self) -> PathBuf {
        self.dir.join(P::NAME)
    }

    fn path_of<P: Projection>(&self, seq: Seq) -> PathBuf {
        self.dir_of::<P>().join(format!("{:020}.snap", seq.0))
    }

    /// Writes a snapshot of `state` as of `seq` (whose event hash is `hash`).
    ///
    /// # Errors
    /// I/O errors, with the path.
    pub fn save<P: Projection>(&self, seq: Seq, hash: Hash, state: &P) -> Result<PathBuf> {
        let dir = self.dir_of::<P>();
        std::fs::create_dir_all(&dir).map_err(|e| snap_err(&dir, e.to_string()))?;
        let payload = serde_json::to_vec(state).map_err(|e| snap_err(&dir, e.to_string()))?;
        let header = Header {
            name: P::NAME.to_owned(),
            version: P::VERSION,
            seq: seq.0,
            hash,
            payload_blake3: blake3::hash(&payload).to_hex().to_string(),
        };
        let path = self.path_of::<P>(seq);
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{MAGIC}")?;
            serde_json::to_writer(&mut f, &header)?;
            writeln!(f)?;
            f.write_all(&payload)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| snap_err(&path, e.to_string()))?;
        Ok(path)
    }

    /// Seqs of the stored snapshots of `P`, newest first.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn list<P: Projection>(&self) -> Result<Vec<Seq>> {
        let dir = self.dir_of::<P>();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(snap_err(&dir, e.to_string())),
        };
        let mut seqs: Vec<Seq> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".snap")?;
                stem.parse::<u64>().ok().map(Seq)
            })
            .collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(seqs)
    }

    /// Loads and checks one snapshot (not yet against the journal).
    ///
    /// # Errors
    /// [`Error::Snapshot`] saying what is wrong with the file.
    pub fn load<P: Projection>(&self, seq: Seq) -> Result<Snapshot<P>> {
        let path = self.path_of::<P>(seq);
        let bytes = std::fs::read(&path).map_err(|e| snap_err(&path, e.to_string()))?;
        let mut parts = bytes.splitn(3, |b| *b == b'\n');
        let magic = parts.next().unwrap_or_default();
        if magic != MAGIC.as_bytes() {
            return Err(snap_err(&path, format!("does not start with {MAGIC:?}")));
        }
        let header: Header = serde_json::from_slice(parts.next().unwrap_or_default())
            .map_err(|e| snap_err(&path, format!("bad header: {e}")))?;
        let payload = parts.next().unwrap_or_default();
        if header.name != P::NAME || header.version != P::VERSION || header.seq != seq.0 {
            return Err(snap_err(
                &path,
                format!(
                    "is {} v{} at seq {}, expected {} v{} at seq {seq}",
                    header.name,
                    header.version,
                    header.seq,
                    P::NAME,
                    P::VERSION
                ),
            ));
        }
        let found = blake3::hash(payload).to_hex().to_string();
        if found != header.payload_blake3 {
            return Err(snap_err(
                &path,
                format!(
                    "payload checksum {found} differs from the header's {}",
                    header.payload_blake3
                ),
            ));
        }
        let state: P =
            serde_json::from_slice(payload).map_err(|e| snap_err(&path, format!("bad state: {e}")))?;
        Ok(Snapshot {
            state,
            seq,
            hash: header.hash,
        })
    }

    /// Removes all but the newest `keep` snapshots of `P`.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn prune<P: Projection>(&self, keep: usize) -> Result<()> {
        for seq in self.list::<P>()?.into_iter().skip(keep) {
            let path = self.path_of::<P>(seq);
            std::fs::remove_file(&path).map_err(|e| snap_err(&path, e.to_string()))?;
        }
        Ok(())
    }
}
