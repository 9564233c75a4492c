//! Every limit of the journal, in one place, with the reason for it.

/// Longest stream id or run id. Ids are index keys; long keys waste the index.
pub const MAX_ID_BYTES: usize = 128;

/// Largest encoded event body. An event is a fact, not a blob store; bigger
/// payloads belong in a content store with their hash in the event.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Appends waiting for the writer. Bounded so that a burst of appenders is
/// slowed down (backpressure) instead of growing memory without limit.
pub const APPEND_QUEUE_CAPACITY: usize = 1024;

/// Most events the writer puts in one group commit. Bounds the memory and the
/// latency of one commit; under load one fsync still covers this many events.
pub const MAX_GROUP_EVENTS: usize = 4096;

/// Most encoded bytes the writer puts in one group commit.
pub const MAX_GROUP_BYTES: usize = 16 << 20;

/// Signed groups waiting for the committer beyond the one it is committing.
/// 0 (a rendezvous) still overlaps signing group k+1 with committing group k,
/// and lets more appends gather into the next group; on 2 cores it measured
/// as fast as 1 and 2 with fewer fsyncs (BENCHMARKS.md).
pub const PIPELINE_DEPTH: usize = 0;

/// Below this many events a group is signed on the sequencer thread alone;
/// above it a share goes to the helper signer thread.
pub const PARALLEL_SIGN_MIN: usize = 8;

/// Events checked (chain, hash, signature) at the tail when a journal opens.
pub const TAIL_CHECK_EVENTS: u64 = 1024;

/// Signatures verified per ed25519 batch during verification.
pub const VERIFY_BATCH: usize = 1024;

/// Default interval between automatic Merkle checkpoints, in events.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10_000;

/// In `Durability::Buffered`, how often the flusher makes acknowledged
/// events durable: the documented loss window on power failure.
pub const BUFFERED_SYNC_INTERVAL_MS: u64 = 50;

/// Events fetched from disk per step when a follower catches up, so that a
/// slow consumer holds a bounded amount of memory.
pub const FOLLOW_CHUNK: usize = 512;

/// Most bytes fjall keeps in its own journal files before it flushes
/// memtables. Bounds crash-recovery replay, and the copy every open takes of
/// those files (see `preflight`).
pub const MAX_STORAGE_JOURNAL_BYTES: u64 = 64 << 20;

/// Merkle subtree hashes are stored from this level up (subtrees of 8+
/// events); smaller subtrees are recomputed from their events. Saves ~7 of
/// every 8 node writes on the append path for ≤ 8 extra event reads per
/// low-level node of a proof.
pub const MERKLE_STORED_MIN_LEVEL: u8 = 3;
