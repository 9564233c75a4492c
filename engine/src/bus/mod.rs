//! The communication bus: direct messages with delivery tracking (sent →
//! delivered → acknowledged or expired), topic pub/sub with NATS-style
//! wildcards, request/response with a [`RequestId`] and a timeout — between
//! the agents of one instance and, over NATS, of several.
//!
//! - [`service`]: [`Bus`], the handle, and the task that owns the bus's
//!   state. Every send goes through the Cedar gate (point `message_send`,
//!   the decision journaled) before a message exists, then through the
//!   sender's rate limit and the recipient's bounded mailbox (a sender
//!   may wait, to a deadline, for room: [`Bus::send_wait`]); the message
//!   is sealed (AES-256-GCM) and signed (Ed25519), and `MessageSent` plus
//!   its deliveries are appended in one atomic batch. Refusals are
//!   `MessageRejected` events that say why.
//! - [`crypto`]: keys (node bus secret, per-agent content keys by epoch,
//!   the pairwise key with a pinned peer), nonces, sealing, signatures.
//! - [`topic`]: topic names and wildcard patterns; [`rate`]: token buckets.
//! - [`builtins`]: `ask`, `delegate`, `send_to`, `parallel`, `race` as tool
//!   specs the reasoning loop offers the model, and the runner that
//!   performs them through the bus.
//! - [`remote`]: the link to peer instances over NATS (JetStream for
//!   durable delivery, request/reply for requests).
//!
//! Mailboxes, subscriptions, open requests and nonce counters are the
//! `bus` projection (`stele_projections::bus`): a restarted bus loses
//! nothing delivered and redelivers nothing acknowledged. It starts from
//! the view's newest usable snapshot (`<data>/snapshots/bus`, written every
//! `[journal] snapshot_every` events) plus the events after it.
//!
//! This is an effect runner: it reads the clock (expiry, rate limits) and
//! the OS random source (the node secret, once). Nothing here is a decider
//! of the replayed reasoning loop; its results enter runs as tool results.

pub mod builtins;
pub mod crypto;
pub mod rate;
pub mod remote;
pub mod service;
pub mod topic;

use std::path::PathBuf;
use std::time::Duration;

pub use builtins::{BUILTINS, BusTools};
pub use crypto::BusKeys;
pub use rate::RateLimit;
pub use remote::Frame;
pub use service::{Bus, BusStats, Outgoing, Received, Sent};

/// Messages a batch of the bus task decides and appends at most.
pub const MAX_BATCH: usize = 1024;
/// Commands waiting for the bus task at most (then senders wait).
pub const COMMAND_QUEUE: usize = 4096;
/// Largest payload (plaintext) when the configuration says nothing.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Hard ceiling of `[bus] max_payload_bytes`: a sealed message must fit an
/// event body with room to spare.
pub const MAX_PAYLOAD_CEILING_BYTES: usize = 512 * 1024;
/// Messages one mailbox holds when the configuration says nothing.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;
/// Messages `receive` returns at most per call.
pub const MAX_RECEIVE: usize = 256;
/// How often the bus looks for expired messages and requests.
pub const EXPIRY_TICK: Duration = Duration::from_millis(200);
/// Requests in one `parallel` or `race`.
pub const MAX_FANOUT: usize = 16;
/// Sends waiting for room in full mailboxes at most; beyond, a send to a
/// full mailbox is refused at once even when it may wait.
pub const MAX_WAITING: usize = 4096;
/// How long the builtins (`send_to`, `ask`, `delegate`, `parallel`,
/// `race`) wait for room in a full mailbox before the send is refused.
pub const BUILTIN_SEND_WAIT: Duration = Duration::from_secs(5);

/// A request's id: the message id of the request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// To one agent's mailbox.
    Direct,
    /// To every agent subscribed to a matching pattern.
    Publish,
    /// To one agent, which answers with a response.
    Request,
    /// The answer to a request.
    Response,
}

impl Pattern {
    /// The name journaled and seen by policies.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Direct => "direct",
            Pattern::Publish => "publish",
            Pattern::Request => "request",
            Pattern::Response => "response",
        }
    }

    /// Parses [`Pattern::name`].
    #[must_use]
    pub fn from_name(s: &str) -> Option<Pattern> {
        match s {
            "direct" => Some(Pattern::Direct),
            "publish" => Some(Pattern::Publish),
            "request" => Some(Pattern::Request),
            "response" => Some(Pattern::Response),
            _ => None,
        }
    }
}

/// Why a message was refused, as `MessageRejected.code` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectCode {
    /// The Cedar gate did not allow it.
    PolicyDenied,
    /// The sender is over its rate limit.
    RateLimited,
    /// The recipient's mailbox is full.
    MailboxFull,
    /// The payload is over the size limit.
    Oversize,
    /// The ciphertext or header was changed.
    Tampered,
    /// The signature is not the sender instance's.
    BadSignature,
    /// The message was already accepted.
    Replayed,
    /// It is not addressed to an agent or topic here.
    Misaddressed,
    /// It expired before it arrived.
    Expired,
    /// It came from an instance whose key is not pinned.
    UnknownPeer,
}

impl RejectCode {
    /// The journaled code.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            RejectCode::PolicyDenied => "policy_denied",
            RejectCode::RateLimited => "rate_limited",
            RejectCode::MailboxFull => "mailbox_full",
            RejectCode::Oversize => "oversize",
            RejectCode::Tampered => "tampered",
            RejectCode::BadSignature => "bad_signature",
            RejectCode::Replayed => "replayed",
            RejectCode::Misaddressed => "misaddressed",
            RejectCode::Expired => "expired",
            RejectCode::UnknownPeer => "unknown_peer",
        }
    }
}

/// What [`Bus::accept_with`] does with a peer's message when a
/// recipient's mailbox here is full (or local senders already wait for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse it: a journaled `MessageRejected` (`mailbox_full`). Requests
    /// from peers get this: the asker waits for the answer.
    Refuse,
    /// Take nothing and journal nothing ([`BusError::Deferred`]): the link
    /// has JetStream redeliver it later — backpressure, not loss. A message
    /// the gate would deny is refused (journaled) at once all the same.
    Defer,
    /// Refuse it (journaled, `mailbox_full`), saying it was held back for
    /// `deliveries` deliveries over `held_ms` first.
    RefuseAfter {
        /// Deliveries of the message from NATS so far.
        deliveries: u64,
        /// How long it was held back, ms.
        held_ms: u64,
    },
}

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The message was refused; a `MessageRejected` event says so.
    #[error("message {message} rejected ({}): {reason}", code.name())]
    Rejected {
        /// The message id (as claimed).
        message: String,
        /// Why, as a code.
        code: RejectCode,
        /// Why, for people.
        reason: String,
    },
    /// A peer's message was not taken because a recipient's mailbox is full
    /// ([`WhenFull::Defer`]); nothing is journaled.
    #[error("message {message} held back: the mailbox of {recipient} is full ({capacity} messages)")]
    Deferred {
        /// The message id.
        message: String,
        /// The full mailbox.
        recipient: String,
        /// Its capacity.
        capacity: usize,
    },
    /// A request was not answered in time; a `MessageExpired` says so.
    #[error("request {request} timed out after {} ms without a response", timeout.as_millis())]
    Timeout {
        /// The request.
        request: RequestId,
        /// How long it waited.
        timeout: Duration,
    },
    /// Input that is not a valid agent, topic, pattern or argument.
    #[error("{0}")]
    Invalid(String),
    /// Sealing or opening failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// The bus secret could not be read or created.
    #[error("bus key {path}: {reason}")]
    Keys {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The journal refused the facts (the bus stops).
    #[error("journal: {0}")]
    Journal(#[from] stele_journal::Error),
    /// A peer instance could not be reached.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// The bus view could not be restored from, or written to, its
    /// snapshots.
    #[error("bus view: {0}")]
    View(String),
    /// The bus task has stopped.
    #[error("the bus has stopped")]
    Stopped,
}
