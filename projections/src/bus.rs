//! The bus view: every agent's mailbox (messages delivered and neither
//! acknowledged nor expired), topic subscriptions, open requests, the key
//! epoch and highest nonce counter of every sender, the message ids still
//! inside their lifetime (replay protection), pinned peer instances and
//! counters — folded from `MessageSent`, `MessageDelivered`,
//! `MessageAcknowledged`, `MessageExpired`, `MessageRejected`,
//! `TopicSubscribed`, `BusKeyRotated` and `BusPeerPinned`.
//!
//! A mailbox entry names the seq of its `MessageSent`; the payload stays in
//! the journal (ciphertext) and is read from there when the recipient takes
//! it. Because the mailboxes are this fold, a restarted bus holds exactly
//! what was delivered and not acknowledged: nothing delivered is lost,
//! nothing acknowledged comes back.
//!
//! What is not here: the routing decisions, keys, encryption and the policy
//! gate (`stele_engine::bus`).

use imbl::{OrdMap, OrdSet};

use stele_journal::{ArchivedEventBody, EventRef};

use crate::Projection;

/// One delivered message waiting in a mailbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailEntry {
    /// The seq of its `MessageSent` (where the envelope is).
    pub sent_seq: u64,
    /// The seq of its `MessageDelivered`.
    pub delivered_seq: u64,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// A request waiting for its response.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenRequest {
    /// Who asked (`agent`, or `agent@instance`).
    pub requester: String,
    /// Who was asked.
    pub recipient: String,
    /// When the requester stops waiting, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// A sender's key state as the journal records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SenderKeys {
    /// The current key epoch.
    pub epoch: u32,
    /// The highest nonce counter used in that epoch, if any.
    pub last_counter: Option<u64>,
}

/// Counters for `stele bus stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BusCounters {
    /// `MessageSent` events (sent here and received from peers).
    pub sent: u64,
    /// Of those, received from peer instances.
    pub received_remote: u64,
    /// `MessageDelivered` events.
    pub delivered: u64,
    /// `MessageAcknowledged` events.
    pub acknowledged: u64,
    /// `MessageExpired` events.
    pub expired: u64,
    /// Responses sent.
    pub responses: u64,
    /// `MessageRejected` events by code.
    pub rejected: OrdMap<String, u64>,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BusView {
    /// Agent → message id → entry.
    pub mailboxes: OrdMap<String, OrdMap<String, MailEntry>>,
    /// Topic pattern → subscribed agents.
    pub subscriptions: OrdMap<String, OrdSet<String>>,
    /// Request id → the open request.
    pub requests: OrdMap<String, OpenRequest>,
    /// `origin/sender` → key epoch and last nonce counter.
    pub senders: OrdMap<String, SenderKeys>,
    /// Message ids within their lifetime → (seq of `MessageSent`, expiry
    /// ms). Pruned by the journal's own time, so the fold stays pure.
    pub live: OrdMap<String, (u64, u64)>,
    /// Expiry ms → ids expiring then (the pruning index of `live`).
    pub expiring: OrdMap<u64, OrdSet<String>>,
    /// Agent → its current key epoch (absent: 0), as rotations set it.
    pub epochs: OrdMap<String, u32>,
    /// Peer instance → pinned Ed25519 public key (hex).
    pub peers: OrdMap<String, String>,
    /// Counters.
    pub counters: BusCounters,
}

impl BusView {
    /// The mailbox of `agent` (empty when it has none).
    #[must_use]
    pub fn mailbox(&self, agent: &str) -> OrdMap<String, MailEntry> {
        self.mailboxes.get(agent).cloned().unwrap_or_default()
    }

    /// How many messages wait for `agent`.
    #[must_use]
    pub fn depth(&self, agent: &str) -> usize {
        self.mailboxes.get(agent).map_or(0, OrdMap::len)
    }

    /// Whether `message` was seen within its lifetime.
    #[must_use]
    pub fn seen(&self, message: &str) -> bool {
        self.live.contains_key(message)
    }

    fn prune(&mut self, now_ms: u64) {
        while let Some(&(at, _)) = self.expiring.get_min() {
            if at >= now_ms {
                break;
            }
            if let Some(ids) = self.expiring.remove(&at) {
                for id in ids {
                    self.live.remove(&id);
                }
            }
        }
    }
}

fn event_ms(e: &EventRef) -> u64 {
    u64::try_from(e.at() / 1_000_000).unwrap_or(0)
}

impl Projection for BusView {
    const NAME: &'static str = "bus";
    const VERSION: u32 = 1;

    fn apply(&mut self, e: &EventRef) {
        match e.body() {
            ArchivedEventBody::MessageSent { message, envelope } => {
                let expires = envelope.expires_at_ms.to_native();
                self.prune(event_ms(e));
                self.counters.sent += 1;
                if !envelope.remote_hash.is_empty() {
                    self.counters.received_remote += 1;
                }
                self.live.insert(message.to_string(), (e.seq().0, expires));
                self.expiring
                    .entry(expires)
                    .or_default()
                    .insert(message.to_string());
                let key = format!("{}/{}", envelope.origin, envelope.sender);
                let s = self.senders.entry(key).or_default();
                let epoch = envelope.epoch.to_native();
                let counter = envelope.counter.to_native();
                if epoch > s.epoch {
                    s.epoch = epoch;
                    s.last_counter = Some(counter);
                } else if epoch == s.epoch {
                    s.last_counter = Some(s.last_counter.map_or(counter, |c| c.max(counter)));
                }
                match envelope.pattern.as_str() {
                    "request" => {
                        let requester = if envelope.remote_hash.is_empty() {
                            envelope.sender.to_string()
                        } else {
                            format!("{}@{}", envelope.sender, envelope.origin)
                        };
                        self.requests.insert(
                            message.to_string(),
                            OpenRequest {
                                requester,
                                recipient: envelope.recipient.to_string(),
                                expires_at_ms: expires,
                            },
                        );
                    }
                    "response" => {
                        self.counters.responses += 1;
                        if let Some(r) = envelope.request.as_ref() {
                            self.requests.remove(r.as_str());
                        }
                    }
                    _ => {}
                }
            }
            ArchivedEventBody::MessageDelivered {
                message,
                recipient,
                remote,
            } => {
                self.counters.delivered += 1;
                if !remote.is_empty() {
                    return;
                }
                let Some(&(sent_seq, expires_at_ms)) = self.live.get(message.as_str()) else {
                    return;
                };
                self.mailboxes.entry(recipient.to_string()).or_default().insert(
                    message.to_string(),
                    MailEntry {
                        sent_seq,
                        delivered_seq: e.seq().0,
                        expires_at_ms,
                    },
                );
            }
            ArchivedEventBody::MessageAcknowledged { message, recipient } => {
                self.counters.acknowledged += 1;
                self.take(recipient.as_str(), message.as_str());
            }
            ArchivedEventBody::MessageExpired {
                message, recipient, ..
            } => {
                self.counters.expired += 1;
                self.take(recipient.as_str(), message.as_str());
                if let Some(r) = self.requests.get(message.as_str())
                    && r.requester == recipient.as_str()
                {
                    self.requests.remove(message.as_str());
                }
            }
            ArchivedEventBody::MessageRejected { code, .. } => {
                *self.counters.rejected.entry(code.to_string()).or_default() += 1;
            }
            ArchivedEventBody::TopicSubscribed {
                agent,
                pattern,
                active,
            } => {
                if *active {
                    self.subscriptions
                        .entry(pattern.to_string())
                        .or_default()
                        .insert(agent.to_string());
                } else if let Some(set) = self.subscriptions.get_mut(pattern.as_str()) {
                    set.remove(agent.as_str());
                    if set.is_empty() {
                        self.subscriptions.remove(pattern.as_str());
                    }
                }
            }
            ArchivedEventBody::BusKeyRotated { agent, epoch, .. } => {
                self.epochs.insert(agent.to_string(), epoch.to_native());
            }
            ArchivedEventBody::BusPeerPinned { peer, public_key, .. } => {
                self.peers.insert(peer.to_string(), hex::encode(public_key));
            }
            _ => {}
        }
    }
}

impl BusView {
    fn take(&mut self, recipient: &str, message: &str) {
        if let Some(mb) = self.mailboxes.get_mut(recipient) {
            mb.remove(message);
            if mb.is_empty() {
                self.mailboxes.remove(recipient);
            }
        }
    }

    /// The key epoch of a local agent (0 before any rotation).
    #[must_use]
    pub fn epoch(&self, agent: &str) -> u32 {
        self.epochs.get(agent).copied().unwrap_or(0)
    }

    /// The key epoch and next unused nonce counter of a local sender: one
    /// past the highest counter journaled in the current epoch, 0 in a new
    /// epoch.
    #[must_use]
    pub fn next_nonce(&self, origin: &str, agent: &str) -> (u32, u64) {
        let epoch = self.epoch(agent);
        match self.senders.get(&format!("{origin}/{agent}")) {
            Some(s) if s.epoch == epoch => (epoch, s.last_counter.map_or(0, |c| c + 1)),
            _ => (epoch, 0),
        }
    }
}
