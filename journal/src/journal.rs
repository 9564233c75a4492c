//! The public face of the journal: [`Journal`] (the write handle, which owns
//! the writer pipeline) and [`Reader`] (reads, proofs, the live follower).
//!
//! Data directory layout: `db/` (fjall), `keys/` (node keys, 0600), `HEAD`
//! (the acknowledged head, see `head`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::event::{EventBody, EventRef};
use crate::head::{HeadFile, HeadRecord};
use crate::ids::{Hash, KeyId, RunId, Seq, StreamId};
use crate::keys::{Keyring, NodeKey};
use crate::limits::{APPEND_QUEUE_CAPACITY, DEFAULT_CHECKPOINT_INTERVAL, FOLLOW_CHUNK, TAIL_CHECK_EVENTS};
use crate::merkle;
use crate::store::{CheckpointInfo, KeyInfo, STORE_FORMAT, Store};
use crate::writer::{self, Command, Durability, Head, Poison, Prepared, Receipt, Sequencer, Shared, Stats};

/// How to open a journal for writing.
#[derive(Clone, Debug)]
pub struct Options {
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Automatic checkpoint every this many events; 0 disables (≥ 2 otherwise).
    pub checkpoint_interval: u64,
    /// Recorded in `JournalOpened`.
    pub software: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            software: format!("stele {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// One event to append.
#[derive(Clone, Debug)]
pub struct Append {
    /// What it is about.
    pub stream: StreamId,
    /// The event that caused it.
    pub cause: Option<Seq>,
    /// The fact.
    pub body: EventBody,
}

impl Append {
    fn prepare(self) -> Result<Prepared> {
        let run = self.body.run_id()?.map(|r| r.as_str().to_owned());
        Ok(Prepared {
            stream: self.stream,
            cause: self.cause,
            run,
            body: self.body.encode()?,
        })
    }
}

/// The read side of a journal: cheap to clone, safe to share.
#[derive(Clone, Debug)]
pub struct Reader {
    store: Store,
    head_rx: watch::Receiver<Head>,
    _read_only_head: Option<Arc<watch::Sender<Head>>>,
    dir: PathBuf,
    // Declared last: dropped after the store that lives in it.
    _copy: Option<Arc<crate::preflight::ReadCopy>>,
}

/// The write handle. Cloning is cheap; the writer stops when the last clone
/// is dropped (after committing what was sent).
#[derive(Clone, Debug)]
pub struct Journal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: Option<mpsc::Sender<Command>>,
    reader: Reader,
    stats: Arc<Stats>,
    poison: Arc<Poison>,
    keyring: Keyring,
    threads: Mutex<Vec<JoinHandle<()>>>,
    flusher_stop: Option<std_mpsc::Sender<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        self.flusher_stop.take();
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in threads {
            let _ = t.join();
        }
    }
}

fn db_dir(dir: &Path) -> PathBuf {
    dir.join("db")
}
fn head_path(dir: &Path) -> PathBuf {
    dir.join("HEAD")
}

/// What the head file says.
enum HeadState {
    /// No head file, or an empty one: nothing was ever acknowledged.
    Absent,
    /// A head file with no valid slot.
    Damaged(Error),
    /// The newest valid slot.
    Valid(HeadFile, HeadRecord),
}

fn read_head(path: &Path) -> HeadState {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HeadState::Absent,
        Ok(m) if m.len() == 0 => HeadState::Absent,
        _ => match HeadFile::open(path) {
            Ok((hf, rec)) => HeadState::Valid(hf, rec),
            Err(e) => HeadState::Damaged(e),
        },
    }
}

/// Fails fast, before any copying or recovery, when another process holds
/// the storage lock (the same `flock` fjall takes).
fn check_not_locked(dir: &Path, db: &Path) -> Result<()> {
    let lock = db.join("lock");
    let Ok(f) = std::fs::File::open(&lock) else {
        return Ok(());
    };
    match f.try_lock_shared() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.to_owned() }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Io {
            path: lock,
            source: e,
        }),
    }
}

/// Creates a fresh journal: storage with its format marker, then the head
/// file. A crash in between leaves a state [`open_checked`] completes.
fn create_fresh(dir: &Path) -> Result<(Store, HeadFile, Head)> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let store = Store::open(&db_dir(dir))?;
    store.write_format()?;
    let hf = create_head(dir)?;
    Ok((store, hf, Head::default()))
}

fn create_head(dir: &Path) -> Result<HeadFile> {
    let path = head_path(dir);
    if path.exists() {
        std::fs::remove_file(&path).map_err(Error::io(&path))?;
    }
    let hf = HeadFile::create(&path)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))?;
    Ok(hf)
}

/// Opens storage and checks it against the head file and its own tail.
///
/// A journal is created in two steps (storage, then the head file) and a
/// process can die between them. Since nothing is acknowledged before the
/// head file exists, "no head file and no events" is an interrupted
/// creation and is completed; "no head file but events" is tampering.
fn open_checked(dir: &Path, create: bool) -> Result<(Store, HeadFile, Head)> {
    let db = db_dir(dir);
    let head = read_head(&head_path(dir));
    if !db.exists() {
        return match head {
            HeadState::Valid(_, rec) if rec.seq.0 > 0 => Err(Error::Tampered {
                seq: Seq::ZERO,
                reason: format!(
                    "{} acknowledges {} events but the event storage {} is missing",
                    head_path(dir).display(),
                    rec.seq,
                    db.display()
                ),
            }),
            HeadState::Damaged(e) => Err(e),
            _ if !create => Err(Error::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no journal here"),
            }),
            _ => create_fresh(dir),
        };
    }
    check_not_locked(dir, &db)?;
    crate::preflight::check_versions(&db)?;
    // Readers open a private copy already (see `Reader::open`); writers keep
    // fjall's journal files aside in case recovery truncates them.
    let copy = if create {
        crate::preflight::JournalFilesCopy::take(dir, &db)?
    } else {
        None
    };
    let never_acknowledged = matches!(head, HeadState::Absent);
    match open_existing(dir, head, create) {
        Err(Error::Storage { message, .. }) if never_acknowledged && create => {
            // Storage that fjall cannot open and no head file: a creation
            // killed inside fjall. Nothing was ever acknowledged; keep the
            // remains aside and start again.
            if let Some(c) = copy {
                c.discard();
            }
            let aside = dir.join("recovery").join("incomplete-db");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::create_dir_all(dir.join("recovery")).map_err(Error::io(dir))?;
            std::fs::rename(&db, &aside).map_err(Error::io(&db))?;
            tracing::warn!(%message, aside = %aside.display(), "completing an interrupted journal creation");
            create_fresh(dir)
        }
        Ok(opened) => {
            if let Some(c) = copy {
                c.discard();
            }
            Ok(opened)
        }
        Err(e @ (Error::Tampered { .. } | Error::Shortened { .. } | Error::Corrupt { .. })) => {
            Err(match copy {
                Some(c) => c.keep(e),
                None => e,
            })
        }
        Err(e) => {
            if let Some(c) = copy {
                c.discard();
            }
            Err(e)
        }
    }
}

fn open_existing(dir: &Path, head_state: HeadState, create: bool) -> Result<(Store, HeadFile, Head)> {
    let store = Store::open(&db_dir(dir)).map_err(|e| match e {
        Error::Locked { .. } => Error::Locked { path: dir.to_owned() },
        e => e,
    })?;
    let (seq, hash) = store.head()?;
    let last = store.last_event_seq()?;
    let empty = seq.0 == 0 && last.0 == 0;
    match store.format()? {
        Some(STORE_FORMAT) => {}
        Some(f) => {
            return Err(Error::Corrupt {
                seq: Seq::ZERO,
                reason: format!("storage format {f}, this build reads {STORE_FORMAT}"),
            });
        }
        None if empty && create => {
            // Interrupted creation: finish it.
            store.write_format()?;
        }
        None if empty => {}
        None => {
            return Err(Error::Corrupt {
                seq: Seq::ZERO,
                reason: "storage has no format marker; not a stele journal".into(),
            });
        }
    }
    let (hf, acked) = match head_state {
        HeadState::Valid(hf, rec) => (hf, rec),
        HeadState::Damaged(e) => return Err(e),
        HeadState::Absent if empty => {
            let hf = create_head(dir)?;
            (
                hf,
                HeadRecord {
                    seq: Seq::ZERO,
                    hash: Hash::ZERO,
                },
            )
        }
        HeadState::Absent => {
            return Err(Error::Tampered {
                seq: Seq::ZERO,
                reason: format!(
                    "head file {} is missing but storage holds {last} events; the acknowledged head is unknown, so a shortened journal could not be detected",
                    head_path(dir).display()
                ),
            });
        }
    };
    if last != seq {
        return Err(Error::Tampered {
            seq: seq.min(last).next(),
            reason: format!("meta head is seq {seq} but the last stored event is {last}"),
        });
    }
    if acked.seq > seq {
        return Err(Error::Shortened {
            acknowledged: acked.seq,
            hash: acked.hash.to_hex(),
            found: seq,
        });
    }
    if seq.0 > 0 {
        let e = store.get(seq)?.ok_or(Error::OutOfRange { seq, head: seq })?;
        if e.hash() != hash {
            return Err(Error::Tampered {
                seq,
                reason: format!(
                    "meta head hash {} differs from the stored event's {}",
                    hash.short(),
                    e.hash().short()
                ),
            });
        }
    }
    if acked.seq.0 > 0 {
        let e = store.get(acked.seq)?.ok_or(Error::OutOfRange {
            seq: acked.seq,
            head: seq,
        })?;
        if e.hash() != acked.hash {
            return Err(Error::Tampered {
                seq: acked.seq,
                reason: format!(
                    "acknowledged as {} but storage has {}; the event was replaced",
                    acked.hash.short(),
                    e.hash().short()
                ),
            });
        }
    }
    check_tail(&store, seq)?;
    Ok((store, hf, Head { seq, hash }))
}

/// Chain, hash and signature of the last events.
fn check_tail(store: &Store, head: Seq) -> Result<()> {
    if head.0 == 0 {
        return Ok(());
    }
    let from = Seq(head.0.saturating_sub(TAIL_CHECK_EVENTS - 1).max(1));
    let keys: Vec<KeyInfo> = store.keys()?;
    let mut prev: Option<Hash> = if from.0 == 1 {
        Some(Hash::ZERO)
    } else {
        store.get(Seq(from.0 - 1))?.map(|e| e.hash())
    };
    let mut expected = from;
    for e in store.range(from, head) {
        let e = e?;
        if e.seq() != expected {
            return Err(Error::Tampered {
                seq: expected,
                reason: format!("event {expected} is missing (found {} next)", e.seq()),
            });
        }
        crate::verify::check_one(&e, prev.as_ref())?;
        let key = keys
            .iter()
            .find(|k| k.id == e.key())
            .ok_or_else(|| Error::Tampered {
                seq: e.seq(),
                reason: format!("signed by unknown key {}", e.key()),
            })?;
        crate::verify::check_signature(&e, &key.public_key)?;
        prev = Some(e.hash());
        expected = expected.next();
    }
    if expected != head.next() {
        return Err(Error::Tampered {
            seq: expected,
            reason: format!("event {expected} is missing; the head is {head}"),
        });
    }
    Ok(())
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` for writing, checks its
    /// tail, starts the writer and appends `JournalOpened`.
    ///
    /// Blocks until the `JournalOpened` event is durable: call it from a
    /// blocking context (e.g. `spawn_blocking`), not from an async task.
    ///
    /// # Errors
    /// Storage, key, lock and integrity errors; see [`Error`].
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Journal> {
        let dir = dir.as_ref().to_owned();
        if options.checkpoint_interval == 1 {
            return Err(Error::InvalidInput {
                what: "checkpoint interval",
                reason: "must be 0 (off) or at least 2".into(),
            });
        }
        let (store, head_file, head) = open_checked(&dir, true)?;
        let keyring = Keyring::open(&dir)?;
        let key = match store.active_key()? {
            Some(id) => keyring.load(id)?,
            None if head.seq.0 == 0 => {
                let k = NodeKey::generate();
                keyring.create(&k)?;
                k
            }
            None => {
                return Err(Error::Corrupt {
                    seq: head.seq,
                    reason: "the journal has events but no active key in meta".into(),
                });
            }
        };
        let frontier = store.frontier()?;
        if frontier.size() != head.seq.0 {
            return Err(Error::Corrupt {
                seq: head.seq,
                reason: format!(
                    "merkle frontier has {} leaves, head is {}",
                    frontier.size(),
                    head.seq
                ),
            });
        }
        let last_checkpoint = store.checkpoints()?.last().map_or(0, |c| c.size);
        let last_at = match store.get(head.seq)? {
            Some(e) => e.at(),
            None => 0,
        };
        let (head_tx, head_rx) = watch::channel(head);
        let poison = Arc::new(Poison::default());
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            store: store.clone(),
            poison: poison.clone(),
            stats: stats.clone(),
            head_tx,
            head_file: Arc::new(Mutex::new(head_file)),
            durability: options.durability,
        });
        let seqr = Sequencer {
            head,
            last_at,
            key,
            frontier,
            last_checkpoint,
            checkpoint_interval: options.checkpoint_interval,
        };
        let (tx, rx) = mpsc::channel(APPEND_QUEUE_CAPACITY);
        let (gtx, grx) = writer::pipeline_channel();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(Error::io(&dir))
        };
        let mut threads = Vec::new();
        let p = poison.clone();
        threads.push(spawn(
            "stele-sequencer",
            Box::new(move || writer::run_sequencer(seqr, rx, gtx, p)),
        )?);
        let sh = shared.clone();
        threads.push(spawn(
            "stele-committer",
            Box::new(move || writer::run_committer(sh, grx)),
        )?);
        let flusher_stop = if options.durability == Durability::Buffered {
            let (stop_tx, stop_rx) = std_mpsc::channel();
            let sh = shared.clone();
            threads.push(spawn(
                "stele-flusher",
                Box::new(move || writer::run_flusher(sh, stop_rx)),
            )?);
            Some(stop_tx)
        } else {
            None
        };
        let reader = Reader {
            store,
            head_rx,
            _read_only_head: None,
            dir: dir.clone(),
            _copy: None,
        };
        let journal = Journal {
            inner: Arc::new(Inner {
                tx: Some(tx),
                reader,
                stats,
                poison,
                keyring,
                threads: Mutex::new(threads),
                flusher_stop,
            }),
        };
        let (ack, rx) = oneshot::channel();
        journal.send_blocking(Command::Open {
            software: options.software,
            ack,
        })?;
        rx.blocking_recv().map_err(|_| Error::Closed)??;
        Ok(journal)
    }

    fn sender(&self) -> Result<&mpsc::Sender<Command>> {
        self.inner.poison.check()?;
        self.inner.tx.as_ref().ok_or(Error::Closed)
    }

    fn send_blocking(&self, cmd: Command) -> Result<()> {
        self.sender()?.blocking_send(cmd).map_err(|_| Error::Closed)
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Vec<Receipt>>>) -> Command,
    ) -> Result<Vec<Receipt>> {
        let (ack, rx) = oneshot::channel();
        self.sender()?.send(make(ack)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Appends one event; returns once it is committed (durable under
    /// `Durability::Sync`).
    ///
    /// # Errors
    /// Invalid input, poisoned or closed journal.
    pub async fn append(&self, event: Append) -> Result<Receipt> {
        let mut r = self.append_many(vec![event]).await?;
        r.pop().ok_or(Error::Closed)
    }

    /// Appends events atomically: contiguous seqs, one commit, all or none.
    ///
    /// # Errors
    /// As [`Journal::append`].
    pub async fn append_many(&self, events: Vec<Append>) -> Result<Vec<Receipt>> {
        let items = events
            .into_iter()
            .map(Append::prepare)
            .collect::<Result<Vec<_>>>()?;
        self.call(|ack| Command::Append { items, ack }).await
    }

    /// [`Journal::append`] for synchronous callers (not from an async task).
    ///
    /// # Errors
    /// As [`Journal::append`].
    pub fn append_blocking(&self, event: Append) -> Result<Receipt> {
        let items = vec![event.prepare()?];
        let (ack, rx) = oneshot::channel();
        self.send_blocking(Command::Append { items, ack })?;
        rx.blocking_recv()
            .map_err(|_| Error::Closed)??
            .pop()
            .ok_or(Error::Closed)
    }

    /// Appends a `CheckpointSigned` over everything so far.
    ///
    /// # Errors
    /// Poisoned or closed journal.
    pub async fn checkpoint(&self) -> Result<Receipt> {
        self.call(|ack| Command::Checkpoint { ack })
            .await?
            .pop()
            .ok_or(Error::Closed)
    }

    /// Generates a new node key, stores it (0600), and appends `KeyRotated`
    /// signed by the old key; later events are signed by the new one.
    ///
    /// # Errors
    /// Key file I/O, poisoned or closed journal.
    pub async fn rotate_key(&self, reason: &str) -> Result<(KeyId, Receipt)> {
        let key = NodeKey::generate();
        self.inner.keyring.create(&key)?;
        let id = key.id();
        let reason = reason.to_owned();
        let r = self
            .call(|ack| Command::RotateKey {
                key: Box::new(key),
                reason,
                ack,
            })
            .await?;
        Ok((id, r.into_iter().next().ok_or(Error::Closed)?))
    }

    /// Makes everything acknowledged so far durable (a no-op cost in Sync mode
    /// beyond one fsync).
    ///
    /// # Errors
    /// Storage failure (which poisons).
    pub async fn sync(&self) -> Result<()> {
        self.call(|ack| Command::Sync { ack }).await.map(|_| ())
    }

    /// The read side.
    #[must_use]
    pub fn reader(&self) -> Reader {
        self.inner.reader.clone()
    }

    /// Writer counters.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Stops the writer after it has committed everything sent, and waits.
    pub fn close(self) {
        drop(self);
    }
}

impl Reader {
    /// Opens a journal for reading only: no writer starts, nothing is
    /// appended, no private key is needed, and no file of `dir` is changed —
    /// the storage engine recovers a private copy (tables hard-linked), so
    /// even a damaged journal is left exactly as found. Storage is checked
    /// as in [`Journal::open`].
    ///
    /// # Errors
    /// As [`Journal::open`]; a missing journal is an I/O error naming `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Reader> {
        let dir = dir.as_ref().to_owned();
        if !db_dir(&dir).exists() {
            // Nothing to copy: report what is (not) there.
            let (store, _hf, head) = open_checked(&dir, false)?;
            return Ok(Reader::read_only(store, head, dir, None));
        }
        let copy = crate::preflight::ReadCopy::make(&dir)?;
        let (store, _hf, head) = open_checked(copy.path(), false).map_err(|e| match e {
            // Name the real directory, not the copy.
            Error::Locked { .. } => Error::Locked { path: dir.clone() },
            e => e,
        })?;
        Ok(Reader::read_only(store, head, dir, Some(Arc::new(copy))))
    }

    fn read_only(
        store: Store,
        head: Head,
        dir: PathBuf,
        copy: Option<Arc<crate::preflight::ReadCopy>>,
    ) -> Reader {
        let (tx, rx) = watch::channel(head);
        Reader {
            store,
            head_rx: rx,
            _read_only_head: Some(Arc::new(tx)),
            dir,
            _copy: copy,
        }
    }

    /// The data directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The committed head.
    #[must_use]
    pub fn head(&self) -> Head {
        *self.head_rx.borrow()
    }

    /// One event.
    ///
    /// # Errors
    /// Corrupt record or storage failure.
    pub fn get(&self, seq: Seq) -> Result<Option<EventRef>> {
        self.store.get(seq)
    }

    /// Events `from..=to` in order (`to` clamped to the head).
    pub fn range(&self, from: Seq, to: Seq) -> impl Iterator<Item = Result<EventRef>> + '_ {
        let to = to.min(self.head().seq);
        self.store.range(from.max(Seq(1)), to)
    }

    /// Events of one stream from `from`, in order.
    pub fn stream(&self, stream: &StreamId, from: Seq) -> impl Iterator<Item = Result<EventRef>> + '_ {
        self.indexed(&self.store.by_stream, stream.as_str(), from)
    }

    /// Events of one run from `from`, in order.
    pub fn run(&self, run: &RunId, from: Seq) -> impl Iterator<Item = Result<EventRef>> + '_ {
        self.indexed(&self.store.by_run, run.as_str(), from)
    }

    fn indexed<'a>(
        &'a self,
        ks: &'a fjall::Keyspace,
        id: &str,
        from: Seq,
    ) -> impl Iterator<Item = Result<EventRef>> + 'a {
        let head = self.head().seq;
        self.store
            .index_seqs(ks, id, from)
            .take_while(move |s| s.as_ref().map_or(true, |s| *s <= head))
            .map(move |s| {
                let s = s?;
                self.store.get(s)?.ok_or_else(|| Error::Tampered {
                    seq: s,
                    reason: "the index names this event but it is not stored".into(),
                })
            })
    }

    /// A live follower from `from`: catches up from disk, then yields new
    /// events as they commit, without gaps or duplicates.
    #[must_use]
    pub fn follow(&self, from: Seq) -> Follow {
        Follow {
            reader: self.clone(),
            next: from.max(Seq(1)),
            buf: VecDeque::new(),
            ended: false,
        }
    }

    /// Registered keys, oldest first.
    ///
    /// # Errors
    /// Storage failure.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        self.store.keys()
    }

    /// Checkpoints, by size.
    ///
    /// # Errors
    /// Storage failure.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        self.store.checkpoints()
    }

    /// Merkle root over events `1..=size`.
    ///
    /// # Errors
    /// `size` beyond the head; missing nodes.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        self.check_size(size)?;
        merkle::root_at(&self.store, size).map(Hash).map_err(proof_err)
    }

    /// Inclusion proof of `seq` in the tree of `size` events.
    ///
    /// # Errors
    /// `seq` or `size` out of range.
    pub fn inclusion_proof(&self, seq: Seq, size: u64) -> Result<Vec<Hash>> {
        self.check_size(size)?;
        if seq.0 == 0 || seq.0 > size {
            return Err(Error::OutOfRange { seq, head: Seq(size) });
        }
        merkle::inclusion_proof(&self.store, seq.0 - 1, size)
            .map(|p| p.into_iter().map(Hash).collect())
            .map_err(proof_err)
    }

    /// Consistency proof that the tree of `old_size` is a prefix of `new_size`.
    ///
    /// # Errors
    /// Sizes out of range or not `0 < old ≤ new`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        self.check_size(new_size)?;
        merkle::consistency_proof(&self.store, old_size, new_size)
            .map(|p| p.into_iter().map(Hash).collect())
            .map_err(proof_err)
    }

    fn check_size(&self, size: u64) -> Result<()> {
        let head = self.head().seq;
        if size > head.0 {
            return Err(Error::OutOfRange { seq: Seq(size), head });
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The acknowledged head recorded in the head file.
    ///
    /// # Errors
    /// Missing or damaged head file.
    pub fn acknowledged_head(&self) -> Result<HeadRecord> {
        HeadFile::open(&head_path(&self.dir)).map(|(_, h)| h)
    }
}

fn proof_err(e: merkle::ProofFailure<Error>) -> Error {
    match e {
        merkle::ProofFailure::Merkle(m) => Error::Merkle(m.to_string()),
        merkle::ProofFailure::Source(e) => e,
    }
}

/// A live follower; see [`Reader::follow`].
#[derive(Debug)]
pub struct Follow {
    reader: Reader,
    next: Seq,
    buf: VecDeque<EventRef>,
    ended: bool,
}

impl Follow {
    /// The next event: immediately if committed, otherwise when it commits.
    /// `None` once the writer has stopped and every committed event was
    /// yielded.
    pub async fn next(&mut self) -> Option<Result<EventRef>> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Some(Ok(e));
            }
            if self.ended {
                return None;
            }
            let head = self.reader.head_rx.borrow_and_update().seq;
            if self.next <= head {
                let to = Seq((self.next.0 + FOLLOW_CHUNK as u64 - 1).min(head.0));
                for e in self.reader.store.range(self.next, to) {
                    match e {
                        Ok(e) => self.buf.push_back(e),
                        Err(e) => {
                            self.ended = true;
                            return Some(Err(e));
                        }
                    }
                }
                if self.buf.len() as u64 != to.0 - self.next.0 + 1 {
                    self.ended = true;
                    return Some(Err(Error::Tampered {
                        seq: self.next,
                        reason: format!("events {}..={to} are committed but not all stored", self.next),
                    }));
                }
                self.next = to.next();
                continue;
            }
            if self.reader.head_rx.changed().await.is_err() {
                // Writer gone: yield what it committed last, then end.
                self.ended = self.reader.head_rx.borrow().seq < self.next;
            }
        }
    }
}
