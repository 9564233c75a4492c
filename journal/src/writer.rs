//! The writer pipeline: the only code that assigns seqs, chains hashes and
//! signs. Two threads, so that signing the next group overlaps the fsync of
//! the current one:
//!
//! 1. **sequencer** (owns the chain head, the signing key and the Merkle
//!    frontier): drains every waiting command, assigns seqs and timestamps,
//!    chains hashes, adds checkpoints, signs the group (with a helper signer
//!    thread taking a share when it is big enough) and hands it on;
//! 2. **committer**: writes the group as one fjall batch, makes it durable
//!    (`Durability::Sync`) or hands it to the OS (`Buffered`), records the
//!    head file, publishes the new head to followers, then acknowledges.
//!
//! A storage failure poisons the journal: the failing group and everything
//! after it is refused; nothing is guessed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::event::{EventBody, canonical_bytes, encode_record, event_hash};
use crate::head::{HeadFile, HeadRecord};
use crate::ids::{Hash, KeyId, Seq, StreamId};
use crate::keys::NodeKey;
use crate::limits::{
    BUFFERED_SYNC_INTERVAL_MS, MAX_GROUP_BYTES, MAX_GROUP_EVENTS, MERKLE_STORED_MIN_LEVEL, PARALLEL_SIGN_MIN,
    PIPELINE_DEPTH,
};
use crate::merkle::Frontier;
use crate::store::{CheckpointInfo, KeyInfo, Store};

/// When an append is acknowledged relative to fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync before the acknowledgement: an acknowledged event survives
    /// power loss. The default.
    #[default]
    Sync,
    /// Acknowledge once the OS has the bytes; a flusher makes them durable
    /// every [`BUFFERED_SYNC_INTERVAL_MS`]. An acknowledged event survives a
    /// process crash (kill -9), but power loss can lose up to that window.
    Buffered,
}

/// What an appender gets back once its event is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    /// The assigned seq.
    pub seq: Seq,
    /// The event's hash.
    pub hash: Hash,
    /// Its timestamp (ns since the epoch).
    pub at: i64,
}

/// The committed head, as published to followers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    /// Last committed seq.
    pub seq: Seq,
    /// Its hash.
    pub hash: Hash,
}

/// An event ready for the writer: validated and encoded by the appender.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) stream: StreamId,
    pub(crate) cause: Option<Seq>,
    pub(crate) run: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// Where a command's outcome goes.
pub(crate) type Ack = oneshot::Sender<Result<Vec<Receipt>>>;

pub(crate) enum Command {
    Append {
        items: Vec<Prepared>,
        ack: oneshot::Sender<Result<Vec<Receipt>>>,
    },
    Checkpoint {
        ack: oneshot::Sender<Result<Vec<Receipt>>>,
    },
    RotateKey {
        key: Box<NodeKey>,
        reason: String,
        ack: oneshot::Sender<Result<Vec<Receipt>>>,
    },
    Sync {
        ack: oneshot::Sender<Result<Vec<Receipt>>>,
    },
    Open {
        software: String,
        ack: oneshot::Sender<Result<Vec<Receipt>>>,
    },
}

impl Command {
    fn into_ack(self) -> oneshot::Sender<Result<Vec<Receipt>>> {
        match self {
            Command::Append { ack, .. }
            | Command::Checkpoint { ack }
            | Command::RotateKey { ack, .. }
            | Command::Sync { ack }
            | Command::Open { ack, .. } => ack,
        }
    }
}

/// Counters of the writer, read by benches and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events committed.
    pub events: AtomicU64,
    /// Group commits.
    pub commits: AtomicU64,
    /// fdatasyncs issued (commits in Sync mode, flushes in Buffered).
    pub fsyncs: AtomicU64,
    /// How long each durable write took, µs: a group commit under
    /// `Durability::Sync` (batch write + fdatasync), a flush otherwise.
    pub durable_us: Log2Histogram,
    /// Events per group commit.
    pub group_events: Log2Histogram,
}

/// A lock-free histogram over power-of-two buckets, for metrics: bucket
/// `i` counts the values `v` with `2^(i-1) < v <= 2^i` (bucket 0: `v <= 1`;
/// the last bucket also holds everything larger).
#[derive(Debug, Default)]
pub struct Log2Histogram {
    /// Counts per bucket.
    pub buckets: [AtomicU64; 32],
    /// Sum of the values observed.
    pub sum: AtomicU64,
}

impl Log2Histogram {
    /// Records one value.
    pub fn observe(&self, v: u64) {
        let i = (64 - v.saturating_sub(1).leading_zeros()) as usize;
        self.buckets[i.min(31)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// `(upper bound, count)` per bucket (not cumulative), and the sum.
    #[must_use]
    pub fn read(&self) -> (Vec<(u64, u64)>, u64) {
        let b = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| (1u64 << i, c.load(Ordering::Relaxed)))
            .collect();
        (b, self.sum.load(Ordering::Relaxed))
    }
}

/// Shared fail-stop flag.
#[derive(Debug, Default)]
pub(crate) struct Poison(Mutex<Option<String>>);

impl Poison {
    pub(crate) fn check(&self) -> Result<()> {
        match &*self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some(cause) => Err(Error::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }
    fn set(&self, cause: &Error) {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.is_none() {
            tracing::error!(%cause, "journal poisoned");
            *g = Some(cause.to_string());
        }
    }
}

/// The sequencer's state: everything it owns.
pub(crate) struct Sequencer {
    pub(crate) head: Head,
    pub(crate) last_at: i64,
    pub(crate) key: NodeKey,
    pub(crate) frontier: Frontier,
    pub(crate) last_checkpoint: u64,
    pub(crate) checkpoint_interval: u64,
}

struct Signed {
    seq: Seq,
    hash: Hash,
    prev: Hash,
    key: KeyId,
    canonical: Vec<u8>,
    stream: String,
    run: Option<String>,
    signer: usize,
}

pub(crate) struct Group {
    events: Vec<Signed>,
    records: Vec<Vec<u8>>,
    nodes: Vec<(u8, u64, [u8; 32])>,
    keys: Vec<KeyInfo>,
    checkpoints: Vec<CheckpointInfo>,
    head: Head,
    frontier: Frontier,
    acks: Vec<(Ack, Vec<Receipt>)>,
    sync_requested: bool,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Sequencer {
    fn push(
        &mut self,
        g: &mut Group,
        signers: &mut Vec<NodeKey>,
        stream: &StreamId,
        cause: Option<Seq>,
        run: Option<String>,
        body: &[u8],
    ) -> Receipt {
        let seq = self.head.seq.next();
        let at = now_ns().max(self.last_at);
        let canonical = canonical_bytes(seq, at, stream, cause, body);
        let hash = event_hash(&self.head.hash, &canonical);
        if signers.last().is_none_or(|k| k.id() != self.key.id()) {
            signers.push(self.key.clone());
        }
        g.events.push(Signed {
            seq,
            hash,
            prev: self.head.hash,
            key: self.key.id(),
            canonical,
            stream: stream.as_str().to_owned(),
            run,
            signer: signers.len() - 1,
        });
        // Low levels are recomputed from `events` when a proof needs them.
        g.nodes.extend(
            self.frontier
                .push(&hash.0)
                .into_iter()
                .filter(|(level, _, _)| *level >= MERKLE_STORED_MIN_LEVEL),
        );
        self.head = Head { seq, hash };
        self.last_at = at;
        Receipt { seq, hash, at }
    }

    fn push_body(&mut self, g: &mut Group, signers: &mut Vec<NodeKey>, body: &EventBody) -> Result<Receipt> {
        let bytes = body.encode()?;
        Ok(self.push(g, signers, &StreamId::system(), None, None, &bytes))
    }

    fn checkpoint(&mut self, g: &mut Group, signers: &mut Vec<NodeKey>) -> Result<Receipt> {
        let size = self.frontier.size();
        let root = Hash(self.frontier.root());
        let r = self.push_body(g, signers, &EventBody::CheckpointSigned { size, root: root.0 })?;
        g.checkpoints.push(CheckpointInfo {
            size,
            seq: r.seq,
            root,
        });
        self.last_checkpoint = size;
        Ok(r)
    }

    fn maybe_checkpoint(&mut self, g: &mut Group, signers: &mut Vec<NodeKey>) -> Result<()> {
        if self.checkpoint_interval >= 2
            && self.frontier.size() - self.last_checkpoint >= self.checkpoint_interval
        {
            self.checkpoint(g, signers)?;
        }
        Ok(())
    }

    /// Turns one command into events of the group. Errors are per command.
    fn apply(&mut self, g: &mut Group, signers: &mut Vec<NodeKey>, cmd: Command) {
        let (result, ack) = match cmd {
            Command::Append { items, ack } => {
                let next = self.head.seq.next();
                let bad = items
                    .iter()
                    .enumerate()
                    .find(|(i, p)| p.cause.is_some_and(|c| c.0 == 0 || c.0 >= next.0 + *i as u64));
                let r = if let Some((i, p)) = bad {
                    Err(Error::BadCause {
                        cause: p.cause.unwrap_or_default(),
                        seq: Seq(next.0 + i as u64),
                    })
                } else {
                    Ok(items
                        .into_iter()
                        .map(|p| self.push(g, signers, &p.stream, p.cause, p.run, &p.body))
                        .collect())
                };
                (r, ack)
            }
            Command::Checkpoint { ack } => (self.checkpoint(g, signers).map(|r| vec![r]), ack),
            Command::RotateKey { key, reason, ack } => {
                let body = EventBody::KeyRotated {
                    previous: self.key.id().0,
                    key: key.id().0,
                    public_key: key.public_key(),
                    reason,
                };
                let r = self.push_body(g, signers, &body);
                if r.is_ok() {
                    g.keys.push(KeyInfo {
                        id: key.id(),
                        public_key: key.public_key(),
                        since: self.head.seq.next(),
                    });
                    self.key = *key;
                }
                (r.map(|r| vec![r]), ack)
            }
            Command::Sync { ack } => {
                g.sync_requested = true;
                (Ok(vec![]), ack)
            }
            Command::Open { software, ack } => {
                let recovered_head = self.head.seq.0;
                let body = EventBody::JournalOpened {
                    format_version: u32::from(crate::event::RECORD_VERSION),
                    software,
                    key: self.key.id().0,
                    public_key: self.key.public_key(),
                    recovered_head,
                };
                let r = self.push_body(g, signers, &body);
                if r.is_ok() && recovered_head == 0 {
                    g.keys.push(KeyInfo {
                        id: self.key.id(),
                        public_key: self.key.public_key(),
                        since: Seq(1),
                    });
                }
                (r.map(|r| vec![r]), ack)
            }
        };
        match result {
            Ok(receipts) => g.acks.push((ack, receipts)),
            Err(e) => {
                let _ = ack.send(Err(e));
            }
        }
        if let Err(e) = self.maybe_checkpoint(g, signers) {
            tracing::error!(%e, "checkpoint failed");
        }
    }
}

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) poison: Arc<Poison>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) head_tx: watch::Sender<Head>,
    pub(crate) head_file: Arc<Mutex<HeadFile>>,
    pub(crate) durability: Durability,
}

/// Work for the helper signer: keys and hashes, and where to send the signatures.
type SignJob = (Vec<(NodeKey, Hash)>, std_mpsc::SyncSender<Vec<[u8; 64]>>);

/// Percent of a big group the helper signer takes; the sequencer, which also
/// chains and hands off, signs the rest meanwhile. A dedicated thread that
/// blocks on a channel (instead of a work-stealing pool that spins) leaves
/// the second core to the committer and the appenders when it is idle.
/// Measured on 2 cores with 64 writers (BENCHMARKS.md): 20% beat 0% (all
/// on the sequencer), 35%, 40%, and rayon over both cores.
const HELPER_SHARE_PERCENT: usize = 20;

fn run_helper_signer(jobs: std_mpsc::Receiver<SignJob>) {
    for (job, reply) in jobs {
        let _ = reply.send(job.iter().map(|(k, h)| k.sign(h)).collect());
    }
}

/// Runs the sequencer until every sender is gone.
pub(crate) fn run_sequencer(
    mut st: Sequencer,
    mut rx: mpsc::Receiver<Command>,
    out: std_mpsc::SyncSender<Group>,
    poison: Arc<Poison>,
) {
    let (helper, jobs) = std_mpsc::channel::<SignJob>();
    // If the helper cannot start, the sequencer signs everything itself.
    let _helper_thread = std::thread::Builder::new()
        .name("stele-signer".into())
        .spawn(move || run_helper_signer(jobs));
    while let Some(first) = rx.blocking_recv() {
        let mut cmds = vec![first];
        let mut n = 0usize;
        let mut bytes = 0usize;
        while n < MAX_GROUP_EVENTS && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(c) => {
                    if let Command::Append { items, .. } = &c {
                        n += items.len();
                        bytes += items.iter().map(|p| p.body.len()).sum::<usize>();
                    }
                    cmds.push(c);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = poison.check() {
            for c in cmds {
                let _ = c.into_ack().send(Err(Error::Poisoned { cause: e.to_string() }));
            }
            continue;
        }
        let mut g = Group {
            events: Vec::with_capacity(n + 1),
            records: Vec::new(),
            nodes: Vec::new(),
            keys: Vec::new(),
            checkpoints: Vec::new(),
            head: st.head,
            frontier: Frontier::new(),
            acks: Vec::with_capacity(cmds.len()),
            sync_requested: false,
        };
        let mut signers = Vec::with_capacity(1);
        for c in cmds {
            st.apply(&mut g, &mut signers, c);
        }
        let n = g.events.len();
        // A share of a big group goes to the helper signer; the sequencer
        // signs the rest itself meanwhile.
        let helper_share = if n >= PARALLEL_SIGN_MIN {
            n * HELPER_SHARE_PERCENT / 100
        } else {
            0
        };
        let (mine, theirs) = g.events.split_at(n - helper_share);
        let pending = (!theirs.is_empty()).then(|| {
            let job: Vec<(NodeKey, Hash)> = theirs
                .iter()
                .map(|e| (signers[e.signer].clone(), e.hash))
                .collect();
            let (tx, rx) = std_mpsc::sync_channel(1);
            helper.send((job, tx)).map(|()| rx)
        });
        let mut sigs: Vec<[u8; 64]> = mine.iter().map(|e| signers[e.signer].sign(&e.hash)).collect();
        match pending {
            Some(Ok(rx)) => match rx.recv() {
                Ok(theirs_sigs) => sigs.extend(theirs_sigs),
                Err(_) => sigs.extend(theirs.iter().map(|e| signers[e.signer].sign(&e.hash))),
            },
            Some(Err(_)) => sigs.extend(theirs.iter().map(|e| signers[e.signer].sign(&e.hash))),
            None => {}
        }
        g.records = g
            .events
            .iter()
            .zip(&sigs)
            .map(|(e, sig)| encode_record(&e.prev, &e.hash, e.key, sig, &e.canonical))
            .collect();
        g.head = st.head;
        g.frontier = st.frontier.clone();
        if out.send(g).is_err() {
            break;
        }
    }
}

/// Runs the committer until the sequencer is gone.
pub(crate) fn run_committer(sh: Arc<Shared>, rx: std_mpsc::Receiver<Group>) {
    for g in rx {
        let acks = g.acks;
        // One span per group commit (exported with `[otel]`); `run_id` when
        // the whole group is one run's facts.
        let span = match (g.events.first(), g.events.last()) {
            (Some(first), Some(last)) => tracing::info_span!(
                "journal.commit",
                events = g.events.len(),
                first_seq = first.seq.0,
                last_seq = last.seq.0,
                run_id = tracing::field::Empty,
            ),
            _ => tracing::Span::none(),
        };
        if !span.is_disabled()
            && let Some(run) = g.events.first().and_then(|e| e.run.as_deref())
            && g.events.iter().all(|e| e.run.as_deref() == Some(run))
        {
            span.record("run_id", run);
        }
        let _in_commit = span.enter();
        let result = (|| {
            sh.poison.check()?;
            if g.events.is_empty() {
                if g.sync_requested {
                    sync_now(&sh)?;
                }
                return Ok(());
            }
            let mut b = sh.store.batch().durability(Some(match sh.durability {
                Durability::Sync => fjall::PersistMode::SyncData,
                Durability::Buffered => fjall::PersistMode::Buffer,
            }));
            for (e, record) in g.events.iter().zip(g.records) {
                sh.store
                    .put_event(&mut b, e.seq, record, &e.stream, e.run.as_deref());
            }
            for (level, index, hash) in &g.nodes {
                sh.store.put_node(&mut b, *level, *index, hash);
            }
            for k in &g.keys {
                sh.store.put_key(&mut b, k);
            }
            for cp in &g.checkpoints {
                sh.store.put_checkpoint(&mut b, cp);
            }
            sh.store.put_head(&mut b, g.head.seq, &g.head.hash, &g.frontier);
            let started = std::time::Instant::now();
            b.commit().map_err(Error::storage("group commit"))?;
            if sh.durability == Durability::Sync {
                sh.stats.durable_us.observe(elapsed_us(started));
            }
            sh.stats.group_events.observe(g.events.len() as u64);
            sh.stats.commits.fetch_add(1, Ordering::Relaxed);
            sh.stats
                .events
                .fetch_add(g.events.len() as u64, Ordering::Relaxed);
            if sh.durability == Durability::Sync {
                sh.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                let mut hf = sh
                    .head_file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                hf.write(HeadRecord {
                    seq: g.head.seq,
                    hash: g.head.hash,
                })?;
                if !g.checkpoints.is_empty() {
                    hf.sync()?;
                }
            }
            sh.head_tx.send_replace(g.head);
            if g.sync_requested {
                sync_now(&sh)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                for (ack, receipts) in acks {
                    let _ = ack.send(Ok(receipts));
                }
            }
            Err(e) => {
                if !matches!(e, Error::Poisoned { .. }) {
                    sh.poison.set(&e);
                }
                let msg = match &e {
                    Error::Poisoned { cause } => cause.clone(),
                    other => other.to_string(),
                };
                for (ack, _) in acks {
                    let _ = ack.send(Err(Error::Poisoned { cause: msg.clone() }));
                }
            }
        }
    }
    if let Err(e) = sync_now(&sh) {
        sh.poison.set(&e);
    }
}

fn elapsed_us(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Makes everything committed so far durable and records it in the head file.
pub(crate) fn sync_now(sh: &Shared) -> Result<()> {
    sh.poison.check()?;
    let head = *sh.head_tx.borrow();
    let started = std::time::Instant::now();
    sh.store
        .db
        .persist(fjall::PersistMode::SyncData)
        .map_err(Error::storage("fsync"))
        .inspect_err(|e| sh.poison.set(e))?;
    sh.stats.durable_us.observe(elapsed_us(started));
    sh.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    let mut hf = sh
        .head_file
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    hf.write(HeadRecord {
        seq: head.seq,
        hash: head.hash,
    })?;
    hf.sync()
}

/// In Buffered mode: syncs every interval while the journal is open.
pub(crate) fn run_flusher(sh: Arc<Shared>, stop: std_mpsc::Receiver<()>) {
    let mut synced = sh.head_tx.borrow().seq;
    loop {
        match stop.recv_timeout(Duration::from_millis(BUFFERED_SYNC_INTERVAL_MS)) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let head = sh.head_tx.borrow().seq;
        if head != synced {
            if sync_now(&sh).is_err() {
                return;
            }
            synced = head;
        }
    }
}

pub(crate) fn pipeline_channel() -> (std_mpsc::SyncSender<Group>, std_mpsc::Receiver<Group>) {
    std_mpsc::sync_channel(PIPELINE_DEPTH)
}
