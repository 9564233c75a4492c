//! The criterion benches of stele; this library is empty on purpose.
//!
//! Each bench file lives in `benches/benches/` and says at its top what it
//! measures and what it compares with:
//!
//! - `journal.rs`: encoding, hashing, signing, ed25519 batch verification,
//!   appends (Sync and Buffered, beside plain fjall batches), range and
//!   stream reads, followers, Merkle proofs and whole-journal verification.
//! - `scheduler.rs`: scheduler decisions over 2k- and 10k-task views (beside
//!   a plain FIFO push), and the registry and scheduler folds (beside only
//!   opening each event's body).
//!
//! Run one with `cargo bench -p stele-benches --bench journal` (or
//! `--bench scheduler`); the figures that matter are copied, with the
//! command and the machine, into `BENCHMARKS.md`.
