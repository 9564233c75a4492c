//! Folding: a projection's state as of any seq, from the newest usable
//! snapshot at or before it plus the events after it; and the snapshot
//! maintenance that a process owning the journal runs every K events.

use stele_journal::{Reader, Seq};

use crate::snapshot::SnapshotStore;
use crate::{Error, Projection, Result};

/// A projection's state as of `seq`, and how it was obtained.
#[derive(Clone, Debug)]
pub struct Folded<P> {
    /// The state after applying every event up to `seq`.
    pub state: P,
    /// The last event applied (0: none).
    pub seq: Seq,
    /// The snapshot it started from, if any.
    pub from_snapshot: Option<Seq>,
    /// Events folded after the snapshot.
    pub folded_events: u64,
}

/// Applies events `(after, to]` to `state`; returns how many were applied.
///
/// # Errors
/// Reading the journal failed.
pub fn fold_range<P: Projection>(reader: &Reader, state: &mut P, after: Seq, to: Seq) -> Result<u64> {
    let mut n = 0;
    if to <= after {
        return Ok(0);
    }
    for e in reader.range(after.next(), to) {
        state.apply(&e?);
        n += 1;
    }
    Ok(n)
}

/// The newest snapshot at or before `at` that loads and still matches the
/// journal (the event at its seq has the hash it recorded).
fn usable_snapshot<P: Projection>(
    reader: &Reader,
    store: &SnapshotStore,
    at: Seq,
) -> Result<Option<crate::snapshot::Snapshot<P>>> {
    for seq in store.list::<P>()? {
        if seq > at || seq.0 == 0 {
            continue;
        }
        let Ok(snap) = store.load::<P>(seq) else {
            continue; // damaged or of another version: refold instead
        };
        match reader.get(seq)? {
            Some(e) if e.hash() == snap.hash => return Ok(Some(snap)),
            _ => {} // from another journal, or a journal rewritten since
        }
    }
    Ok(None)
}

/// The state of `P` as of `at`: the newest usable snapshot at or before
/// it, then the events after it.
///
/// # Errors
/// `at` beyond the head; reading the journal failed.
pub fn state_at<P: Projection>(reader: &Reader, store: &SnapshotStore, at: Seq) -> Result<Folded<P>> {
    let head = reader.head().seq;
    if at > head {
        return Err(Error::BeyondHead { seq: at, head });
    }
    let (mut state, from) = match usable_snapshot::<P>(reader, store, at)? {
        Some(s) => (s.state, Some(s.seq)),
        None => (P::default(), None),
    };
    let folded_events = fold_range(reader, &mut state, from.unwrap_or(Seq::ZERO), at)?;
    Ok(Folded {
        state,
        seq: at,
        from_snapshot: from,
        folded_events,
    })
}

/// Brings `P`'s snapshots up to the head: folds forward from the newest
/// usable snapshot, saving one at every multiple of `every` on the way, and
/// keeps the newest `keep`. Returns the state at the head.
///
/// # Errors
/// Reading the journal or writing a snapshot failed.
pub fn maintain_snapshots<P: Projection>(
    reader: &Reader,
    store: &SnapshotStore,
    every: u64,
    keep: usize,
) -> Result<Folded<P>> {
    let head = reader.head().seq;
    let (mut state, from) = match usable_snapshot::<P>(reader, store, head)? {
        Some(s) => (s.state, Some(s.seq)),
        None => (P::default(), None),
    };
    let start = from.unwrap_or(Seq::ZERO);
    let mut n = 0;
    if head > start {
        for e in reader.range(start.next(), head) {
            let e = e?;
            state.apply(&e);
            n += 1;
            if every > 0 && e.seq().0 % every == 0 {
                store.save(e.seq(), e.hash(), &state)?;
            }
        }
    }
    store.prune::<P>(keep.max(1))?;
    Ok(Folded {
        state,
        seq: head,
        from_snapshot: from,
        folded_events: n,
    })
}
