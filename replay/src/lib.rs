//! Replay: feed a run's journaled inputs back through the current deciders
//! and report the first divergence; time travel over a run (`RunState`),
//! structural diffs of any two states, forks and policy backtests.
//!
//! - [`run`]: `replay` of a reasoning run — the engine's own driver
//!   (`stele_engine::reasoning::Driver`, the ORGA loop and the Cedar gate)
//!   with a provider and a tool runner that serve the journaled
//!   completions and tool results, a paused clock, and a sink that compares
//!   every produced fact with the recorded one;
//! - [`diff`]: field-level structural diffs of two JSON values (divergences,
//!   `stele diff`);
//! - [`view`]: a run's state and conversation as of any seq or step;
//! - [`fork`]: a new run from another run's state at a seq, optionally with
//!   the next journaled input replaced, continuing live;
//! - [`backtest`]: every journaled policy request re-evaluated against
//!   another Cedar policy set, and the verdicts that flip.
//!
//! Replay never performs an effect: every outside fact is served from the
//! journal; when the journal has none, the replay says so instead of asking
//! the world. Only [`fork`] performs effects, once it is past the journaled
//! prefix, through the runners the caller hands it.

pub mod backtest;
pub mod diff;
pub mod fork;
pub mod run;
pub mod view;

pub use backtest::{Backtest, Flip, backtest};
pub use diff::{FieldDiff, diff_values};
pub use fork::{Edit, ForkOutcome, fork};
pub use run::{Divergence, RecordedRun, Report, Settings, load_run, replay, replay_under};
pub use view::RunState;

/// Errors of the replay crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the journal failed.
    #[error(transparent)]
    Journal(#[from] stele_journal::Error),
    /// Folding a projection failed.
    #[error(transparent)]
    Projections(#[from] stele_projections::Error),
    /// The run cannot be replayed or forked as asked.
    #[error("{run}: {reason}")]
    Run {
        /// The run.
        run: String,
        /// What is wrong, and the fix if there is one.
        reason: String,
    },
    /// A journaled event is not what the replay needs.
    #[error("event {seq}: {reason}")]
    Event {
        /// Its seq.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A fork's edit file is unreadable or of the wrong shape.
    #[error("{path}: {reason}")]
    Edit {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The async runtime could not start.
    #[error("starting the replay runtime: {0}")]
    Runtime(String),
    /// The journal refused a fork's facts.
    #[error("recording the fork: {0}")]
    Record(String),
}

/// Result alias of the replay crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
