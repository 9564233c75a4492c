//! The journal's own audit view: how many events of each kind and stream,
//! the runs seen and their extent, the signing keys and when they took
//! over, and the newest checkpoint. Rendered by `stele at SEQ --view journal`.

use std::collections::BTreeMap;

use stele_journal::{ArchivedEventBody, EventRef};

use crate::Projection;

/// Where a run's events lie in the journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunExtent {
    /// First event of the run.
    pub first_seq: u64,
    /// Last event of the run so far.
    pub last_seq: u64,
    /// Its events.
    pub events: u64,
}

/// A signing key and the first event it signed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeySpan {
    /// Key id (hex).
    pub key: String,
    /// First event signed with it.
    pub since_seq: u64,
}

/// The newest checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointRef {
    /// The `CheckpointSigned` event.
    pub seq: u64,
    /// Events it covers.
    pub size: u64,
    /// Merkle root (hex).
    pub root: String,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalView {
    /// Events applied.
    pub events: u64,
    /// Seq and hash (hex) of the last event applied.
    pub head_seq: u64,
    /// Hash of the last event applied.
    pub head_hash: String,
    /// Time of the first and last event (ns since the epoch).
    pub first_at: i64,
    /// Time of the last event.
    pub last_at: i64,
    /// Events per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Events per stream.
    pub by_stream: BTreeMap<String, u64>,
    /// Runs by id.
    pub runs: BTreeMap<String, RunExtent>,
    /// Signing keys in the order they took over.
    pub keys: Vec<KeySpan>,
    /// Times the journal was opened for writing.
    pub opens: u64,
    /// Checkpoints seen.
    pub checkpoints: u64,
    /// The newest one.
    pub last_checkpoint: Option<CheckpointRef>,
}

impl Projection for JournalView {
    const NAME: &'static str = "journal";
    const VERSION: u32 = 1;

    fn apply(&mut self, e: &EventRef) {
        let seq = e.seq().0;
        if self.events == 0 {
            self.first_at = e.at();
        }
        self.events += 1;
        self.head_seq = seq;
        self.head_hash = e.hash().to_hex();
        self.last_at = e.at();
        *self.by_kind.entry(e.body().kind().to_owned()).or_default() += 1;
        *self.by_stream.entry(e.stream().to_owned()).or_default() += 1;
        match e.body() {
            ArchivedEventBody::JournalOpened { key, .. } => {
                self.opens += 1;
                if self.keys.is_empty() {
                    self.keys.push(KeySpan {
                        key: hex::encode(key),
                        since_seq: seq,
                    });
                }
            }
            ArchivedEventBody::KeyRotated { key, .. } => self.keys.push(KeySpan {
                key: hex::encode(key),
                since_seq: seq + 1,
            }),
            ArchivedEventBody::CheckpointSigned { size, root } => {
                self.checkpoints += 1;
                self.last_checkpoint = Some(CheckpointRef {
                    seq,
                    size: size.to_native(),
                    root: hex::encode(root),
                });
            }
            ArchivedEventBody::Annotated { run, .. } => {
                if let Some(run) = run.as_ref() {
                    let r = self.runs.entry(run.to_string()).or_insert(RunExtent {
                        first_seq: seq,
                        last_seq: seq,
                        events: 0,
                    });
                    r.last_seq = seq;
                    r.events += 1;
                }
            }
            // Facts of other views: counted by kind and stream above.
            _ => {}
        }
    }
}
