//! `journal::Error`: every way the journal can fail, with the seq, path,
//! expected and found values a user needs to act on it.

use std::path::PathBuf;

use crate::ids::Seq;

/// Errors of the journal crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input from outside (an id, a hash, a body) is not acceptable.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was being parsed.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// An event body is larger than [`crate::limits::MAX_BODY_BYTES`].
    #[error("event body is {size_bytes} bytes, over the limit of {limit_bytes}")]
    BodyTooLarge {
        /// Encoded size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },

    /// An append names a cause that is not an earlier event.
    #[error("cause {cause} is not an earlier event (the event would be seq {seq})")]
    BadCause {
        /// The cause given.
        cause: Seq,
        /// The seq the event would have had.
        seq: Seq,
    },

    /// An I/O error on a file of the data directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The storage engine failed.
    #[error("storage ({context}): {message}")]
    Storage {
        /// What the journal was doing.
        context: &'static str,
        /// fjall's message.
        message: String,
    },

    /// Another process holds the data directory.
    #[error(
        "{path} is in use by another stele process; stop it, or use a command that talks to it through <data>/control.sock (append, checkpoint, keys rotate, events, tail)"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
    },

    /// A durable write failed earlier; the journal accepts no more writes.
    #[error(
        "journal is poisoned after a storage failure ({cause}); no write is accepted until it is reopened"
    )]
    Poisoned {
        /// The first failure.
        cause: String,
    },

    /// The writer task has stopped (the journal was closed).
    #[error("journal writer has stopped")]
    Closed,

    /// Stored bytes do not decode.
    #[error("event {seq}: corrupt record: {reason}")]
    Corrupt {
        /// The seq (storage key) of the record.
        seq: Seq,
        /// What is wrong with it.
        reason: String,
    },

    /// The chain, a hash, a signature or a checkpoint does not verify.
    #[error("event {seq}: {reason}")]
    Tampered {
        /// The first seq that fails.
        seq: Seq,
        /// What was expected and what was found.
        reason: String,
    },

    /// The recovered journal is behind its acknowledged head.
    #[error(
        "journal is shorter than acknowledged: head file says seq {acknowledged} ({hash}), storage has only {found}; events were lost or removed"
    )]
    Shortened {
        /// Acknowledged head from the head file.
        acknowledged: Seq,
        /// Hash of the acknowledged head.
        hash: String,
        /// Head found in storage.
        found: Seq,
    },

    /// A key file is missing, malformed or readable by others.
    #[error("key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Something asked about a seq the journal does not have.
    #[error("seq {seq} is out of range (the journal has {head} events)")]
    OutOfRange {
        /// The seq asked for.
        seq: Seq,
        /// The head.
        head: Seq,
    },

    /// Opening was refused; fjall's journal files as they were found are
    /// kept for recovery.
    #[error("{source}; the storage journal files as found before this open are kept in {kept}")]
    Refused {
        /// Why it was refused.
        source: Box<Error>,
        /// Where the copy is.
        kept: PathBuf,
    },

    /// A Merkle computation or proof failed.
    #[error("merkle: {0}")]
    Merkle(String),
}

/// Result alias of the journal crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn storage(context: &'static str) -> impl FnOnce(fjall::Error) -> Error {
        move |e| Error::Storage {
            context,
            message: e.to_string(),
        }
    }
}
