//! The projections a journal-owning process (`stele tail`, `stele up`) keeps
//! current as events commit, snapshotting each every `snapshot_every`
//! events so that later starts and `stele at` fold only a tail; and the
//! state of any view as of any seq as JSON (`stele at`, `stele diff`,
//! `stele step`), including one run's (`--view run --run RUN`), folded
//! from that run's own events through the run index.

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

/// The views `stele at` and `stele diff` know, for messages.
pub const VIEW_NAMES: &str = "journal, registry, scheduler, execution, runs, context, run (with --run RUN)";

/// What a view's state was read from.
pub struct ViewState {
    /// The state as JSON.
    pub value: serde_json::Value,
    /// The seq it is as of.
    pub seq: Seq,
    /// How it was obtained (snapshot used, events folded).
    pub how: String,
}

fn folded_state<P: Projection>(reader: &Reader, store: &SnapshotStore, at: Seq) -> Result<ViewState> {
    let f = stele_projections::state_at::<P>(reader, store, at)?;
    let from = f
        .from_snapshot
        .map_or_else(|| "no snapshot".to_owned(), |s| format!("snapshot at {s}"));
    Ok(ViewState {
        value: serde_json::to_value(&f.state)?,
        seq: f.seq,
        how: format!("{from}, {} events folded", f.folded_events),
    })
}

/// The state of view `view` as of `at` (`run`: the run `run`, up to the
/// end of its step `step` when given), through the newest usable snapshot.
pub fn state_value(
    reader: &Reader,
    store: &SnapshotStore,
    view: &str,
    at: Seq,
    run: Option<&str>,
    step: Option<u32>,
) -> Result<ViewState> {
    use stele_projections::RunsView;
    if view != "run" && (run.is_some() || step.is_some()) {
        anyhow::bail!("--run and --step go with --view run, not --view {view}");
    }
    match view {
        ExecutionView::NAME => folded_state::<ExecutionView>(reader, store, at),
        JournalView::NAME => folded_state::<JournalView>(reader, store, at),
        AgentRegistry::NAME => folded_state::<AgentRegistry>(reader, store, at),
        SchedulerView::NAME => folded_state::<SchedulerView>(reader, store, at),
        RunsView::NAME => folded_state::<RunsView>(reader, store, at),
        stele_projections::ContextStore::NAME => {
            folded_state::<stele_projections::ContextStore>(reader, store, at)
        }
        "run" => {
            let Some(run) = run else {
                anyhow::bail!("--view run needs --run RUN (list runs with `stele runs`)");
            };
            let head = reader.head().seq;
            if at > head {
                anyhow::bail!("seq {at} is beyond the journal's head {head}");
            }
            let id = stele_journal::RunId::new(run.to_owned())?;
            let mut events = Vec::new();
            for e in reader.run(&id, stele_journal::Seq(1)) {
                let e = e?;
                if e.seq() > at {
                    break;
                }
                events.push(e.to_event()?);
            }
            if events.is_empty() {
                anyhow::bail!("run {run} has no event at or before seq {at}");
            }
            let upto = stele_replay::view::upto(&events, at.0, step);
            let state = stele_replay::RunState::fold(upto.iter().copied());
            let how = format!(
                "{} of the run's events{}",
                upto.len(),
                step.map(|k| format!(", up to the end of step {k}"))
                    .unwrap_or_default()
            );
            Ok(ViewState {
                value: serde_json::to_value(&state)?,
                seq: Seq(state.seq),
                how,
            })
        }
        _ => anyhow::bail!("unknown view {view:?}; known views: {VIEW_NAMES}"),
    }
}

/// A seq argument: a number or `head`.
pub fn parse_seq(reader: &Reader, text: &str) -> Result<Seq> {
    if text == "head" {
        return Ok(reader.head().seq);
    }
    text.parse()
        .map(Seq)
        .map_err(|_| anyhow::anyhow!("SEQ must be a number or `head`, not {text:?}"))
}
