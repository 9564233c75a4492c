//! Replay: feed a run's journaled inputs back through the current deciders
//! and report the first divergence; time travel (`at`, `diff`), forks and
//! policy backtests.
//!
//! Replay never performs an effect: every outside fact is served from the
//! journal. Built by the replay issue.
