//! Projections: pure folds over the journal (scheduler view, agent registry,
//! lifecycle, resources, context store, audit views, run timelines), their
//! snapshots, and derived query indexes.
//!
//! Nothing here performs I/O beyond reading the journal and writing
//! snapshots, reads the clock, or decides anything: a projection only
//! applies facts that are already in the journal. Built by the engine issue.
