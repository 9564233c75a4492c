//! Projections: pure folds over the journal (scheduler view, agent registry,
//! lifecycle, resources, context store, audit views, run timelines), their
//! snapshots, and the fold machinery that rebuilds any of them as of any seq.
//!
//! - [`Projection`]: the trait every view implements — a pure, total
//!   `apply` over committed events;
//! - [`snapshot`]: snapshots of a projection at seq N in
//!   `<data>/snapshots/<name>/`, validated against the journal on load;
//! - [`fold`]: state as of a seq from the newest usable snapshot plus the
//!   tail, and the snapshot maintenance a journal-owning process runs;
//! - [`journal_view`]: the journal's own audit view (counts by kind and
//!   stream, runs, keys, checkpoints);
//! - [`registry`]: the agent registry and each agent's lifecycle state;
//! - [`scheduler`]: tasks, the priority queue, slot reservations, run history;
//! - [`runs`]: reasoning runs, their step, approvals and outcome;
//! - [`execution`]: the host, admission, live processes, timers, failure streaks;
//! - [`bus`]: mailboxes, subscriptions, open requests, nonce counters, peers;
//! - [`context`]: agents' memory and knowledge items, sharing grants, archives.
//!
//! Nothing here reads the clock, draws randomness or decides anything: a
//! projection only applies facts that are already in the journal. The only
//! I/O is reading the journal and reading/writing snapshot files.

pub mod bus;
pub mod context;
pub mod execution;
pub mod fold;
pub mod journal_view;
pub mod registry;
pub mod runs;
pub mod scheduler;
pub mod snapshot;

pub use bus::BusView;
pub use context::ContextStore;
pub use execution::ExecutionView;
pub use fold::{Folded, fold_range, maintain_snapshots, state_at};
pub use journal_view::JournalView;
pub use registry::{AgentEntry, AgentRegistry};
pub use runs::RunsView;
pub use scheduler::SchedulerView;
pub use snapshot::SnapshotStore;

use stele_journal::{EventRef, Seq};

/// A view of the journal, rebuilt by folding events in seq order.
///
/// `apply` is pure and total: it never fails, never performs I/O, never
/// reads the clock, and ignores facts it does not know. Its state never
/// depends on a `HashMap`'s iteration order (use `BTreeMap`), so that two
/// folds of the same events serialize to the same bytes.
pub trait Projection: Default + Clone + serde::Serialize + serde::de::DeserializeOwned {
    /// Stable name: the snapshot directory and the `--view` name.
    const NAME: &'static str;
    /// Bumped when the state's shape or meaning changes; snapshots of
    /// another version are ignored and the state is refolded.
    const VERSION: u32;
    /// Applies one committed event.
    fn apply(&mut self, event: &EventRef);
}

/// Errors of the projections crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the journal failed.
    #[error(transparent)]
    Journal(#[from] stele_journal::Error),
    /// A snapshot file could not be read or written.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A seq beyond the journal's head was asked for.
    #[error("seq {seq} is beyond the journal's head {head}")]
    BeyondHead {
        /// Asked for.
        seq: Seq,
        /// The head.
        head: Seq,
    },
}

/// Result alias of the projections crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
