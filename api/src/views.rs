//! The projections a journal-owning process (`stele tail`, `stele up`) keeps
//! current as events commit, snapshotting each every `snapshot_every`
//! events so that later starts and `stele at` fold only a tail.

use anyhow::Result;
use stele_journal::{EventRef, Reader, Seq};
use stele_projections::{
    AgentRegistry, ExecutionView, Folded, JournalView, Projection, SchedulerView, SnapshotStore,
    maintain_snapshots,
};

use crate::journal_cmd::SNAPSHOTS_KEPT;

/// Loads a projection as of the journal's head (newest usable snapshot +
/// tail), writing a fresh snapshot when one is due.
pub fn load<P: Projection>(reader: &Reader, store: &SnapshotStore) -> Result<Folded<P>> {
    Ok(maintain_snapshots(
        reader,
        store,
        crate::cli::config().journal.snapshot_every,
        SNAPSHOTS_KEPT,
    )?)
}

/// Writes `state`'s snapshot when `e` is at a snapshot boundary.
pub fn snapshot_if_due<P: Projection>(store: &SnapshotStore, e: &EventRef, state: &P) -> Result<()> {
    let every = crate::cli::config().journal.snapshot_every;
    if every > 0 && e.seq().0.is_multiple_of(every) {
        store.save(e.seq(), e.hash(), state)?;
        store.prune::<P>(SNAPSHOTS_KEPT)?;
    }
    Ok(())
}

fn apply_one<P: Projection>(f: &mut Folded<P>, store: &SnapshotStore, e: &EventRef) -> Result<()> {
    if e.seq() > f.seq {
        f.state.apply(e);
        f.seq = e.seq();
        snapshot_if_due(store, e, &f.state)?;
    }
    Ok(())
}

/// Every view an owner keeps.
pub struct OwnedViews {
    journal: Folded<JournalView>,
    registry: Folded<AgentRegistry>,
    scheduler: Folded<SchedulerView>,
    execution: Folded<ExecutionView>,
}

impl OwnedViews {
    pub fn load(reader: &Reader, store: &SnapshotStore) -> Result<OwnedViews> {
        Ok(OwnedViews {
            journal: load(reader, store)?,
            registry: load(reader, store)?,
            scheduler: load(reader, store)?,
            execution: load(reader, store)?,
        })
    }

    /// The last seq every view has applied.
    pub fn seq(&self) -> Seq {
        self.journal
            .seq
            .min(self.registry.seq)
            .min(self.scheduler.seq)
            .min(self.execution.seq)
    }

    pub fn apply(&mut self, store: &SnapshotStore, e: &EventRef) -> Result<()> {
        apply_one(&mut self.journal, store, e)?;
        apply_one(&mut self.registry, store, e)?;
        apply_one(&mut self.scheduler, store, e)?;
        apply_one(&mut self.execution, store, e)
    }
}
