//! stele's journal: the signed, hash-chained, group-committed event log that
//! everything else is a projection of.
//!
//! - [`event`]: the event, its canonical bytes, hash and stored record;
//! - [`ids`]: `Seq`, `StreamId`, `RunId`, `Hash`, `KeyId`;
//! - [`journal`]: [`Journal`] (write handle) and [`Reader`] (reads, follow,
//!   proofs);
//! - [`merkle`]: RFC 6962 checkpoints and proofs, checkable offline;
//! - [`verify`]: whole-journal verification;
//! - [`export`]: audit bundles and their offline verifier;
//! - `writer`, `store`, `head`, [`keys`]: the writer pipeline, the fjall
//!   layout, the head file, the node keys.
//!
//! This crate knows nothing of agents, schedulers or policies: it stores
//! facts, proves them, and serves them back.

#![warn(missing_docs)]

pub mod error;
pub mod event;
pub mod export;
mod head;
pub mod ids;
pub mod journal;
pub mod keys;
pub mod limits;
pub mod merkle;
mod preflight;
mod store;
pub mod verify;
mod writer;

pub use error::{Error, Result};
pub use event::{
    AgentState, ArchivedAgentState, ArchivedEventBody, Event, EventBody, EventRef, ProcessExit, RuntimeHost,
    TaskOutcome, TaskPriority, TaskRequest, ToolList, ToolOffer,
};
pub use export::{BundleReport, Selection, verify_bundle};
pub use head::HeadRecord;
pub use ids::{Hash, KeyId, RunId, Seq, StreamId};
pub use journal::{Append, Follow, Journal, Options, Reader};
pub use store::{CheckpointInfo, KeyInfo};
pub use verify::{VerifyReport, verify};
pub use writer::{Durability, Head, Receipt, Stats};
