//! The link between the buses of two instances over NATS — the remote bus
//! behind the same [`Bus`] handle: an address `agent@peer` (or, for a
//! publish, `topic@peer`: the peer delivers to its subscribers) routes
//! through it, and agent code or builtins do not change.
//!
//! Subjects (`stele-bus.` is its own token, so the stream never overlaps
//! the journal feed's `stele.>`):
//!
//! - `stele-bus.msg.<instance>` — JetStream stream `STELE_BUS`: direct
//!   messages, publishes and late responses for an instance, published with
//!   `Nats-Msg-Id` = message id (the server drops duplicates) and consumed
//!   by the durable consumer `bus-<instance>`, acknowledged only after the
//!   receiving bus journaled it (or journaled why it refused it), so a
//!   restart of either side loses nothing. A message whose recipient's
//!   mailbox is full is not refused but held back: NAKed with a delay
//!   growing from [`HOLD_FIRST_DELAY`] to [`HOLD_MAX_DELAY`] so JetStream
//!   redelivers it, and later messages to the same recipient wait behind
//!   it (in order while this instance runs). Only when it would expire
//!   before the next delivery (or after [`HOLD_MAX_DELIVERIES`]) is it
//!   refused, journaled as `mailbox_full`. Any other failure is logged and
//!   the message redelivered; a stopped bus ends the link;
//! - `stele-bus.ask.<instance>` — core NATS request/reply for requests: the
//!   reply carries the response envelope;
//! - `stele-bus.receipt.<instance>` — the receiver tells the sender the
//!   seq and hash of its `MessageSent`; the sender journals them in its
//!   `MessageDelivered`, so the audit trail follows the hop both ways.
//!
//! Every envelope crossing is the exact sealed, signed envelope the
//! sending instance journaled, plus the hash of that event. The receiving
//! instance checks the signature against the key it pinned for the origin
//! (`[bus.peers]`, or first contact) before its policy gate runs — see
//! [`Bus::accept`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::service::Bus;
use super::{BusError, RequestId, WhenFull};
use crate::config::NatsConfig;

/// The JetStream stream of the bus.
pub const STREAM: &str = "STELE_BUS";
/// The subject prefix of the bus (a token of its own).
pub const PREFIX: &str = "stele-bus";
/// Frames waiting to be forwarded at most.
const FORWARD_QUEUE: usize = 4096;
/// Largest frame accepted from NATS (a sealed maximal payload in hex).
const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;
/// How long JetStream keeps bus messages nobody consumed.
const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long JetStream waits for the ack of a delivered message before it
/// redelivers it.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The redelivery delay of a message held back the first time (a full
/// mailbox, or a failure worth retrying); it doubles with each delivery.
pub const HOLD_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest redelivery delay of a held-back message.
pub const HOLD_MAX_DELAY: Duration = Duration::from_secs(5);
/// Deliveries of one message held back for a full mailbox at most (about
/// 80 minutes at [`HOLD_MAX_DELAY`]) when its own expiry is later still;
/// then it is refused, journaled.
pub const HOLD_MAX_DELIVERIES: u64 = 1000;
/// A held-back message not seen again for this long (another consumer took
/// it, the stream dropped it) no longer holds back those behind it.
const HOLD_FORGET: Duration = Duration::from_secs(60);

/// An envelope on the wire: the journaled envelope, hex for bytes, plus the
/// seq and hash of the sender's `MessageSent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    /// The message id.
    pub id: String,
    /// The sealing instance.
    pub origin: String,
    /// The sending agent.
    pub sender: String,
    /// `agent@instance` or a topic.
    pub recipient: String,
    /// `direct`, `publish`, `request`, `response`.
    pub pattern: String,
    /// The builtin that sent it.
    pub builtin: String,
    /// For a response: its request.
    pub request: Option<String>,
    /// Correlation context.
    pub context: String,
    /// Key epoch.
    pub epoch: u32,
    /// Nonce counter.
    pub counter: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// AES-256-GCM ciphertext and tag.
    #[serde(with = "hex_vec")]
    pub ciphertext: Vec<u8>,
    /// The signing instance's Ed25519 public key.
    #[serde(with = "hex_array")]
    pub signer: [u8; 32],
    /// The signature.
    #[serde(with = "hex_array")]
    pub signature: [u8; 64],
    /// Hash (hex) of the sender's `MessageSent`.
    pub event_hash: String,
    /// Seq of the sender's `MessageSent`.
    pub event_seq: u64,
}

impl Frame {
    /// Parses a frame from NATS.
    ///
    /// # Errors
    /// [`BusError::Invalid`] saying what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Frame, BusError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(BusError::Invalid(format!(
                "a bus frame of {} bytes is over the limit of {MAX_FRAME_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| BusError::Invalid(format!("not a bus frame: {e}")))
    }

    /// The frame as JSON.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        let n = v.len();
        <[u8; N]>::try_from(v).map_err(|_| serde::de::Error::custom(format!("{n} bytes, expected {N}")))
    }
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    id: String,
    recipient: String,
    /// `<instance>:<seq>:<hash>` of the receiver's `MessageSent`.
    remote: String,
}

#[derive(Serialize, Deserialize)]
struct AskReply {
    /// The response envelope.
    response: Option<Frame>,
    /// Why there is none.
    error: Option<String>,
}

/// The bus's side of the link: it hands journaled envelopes to the task
/// that talks to NATS.
#[derive(Clone, Debug)]
pub struct RemoteLink {
    tx: mpsc::Sender<(String, Frame)>,
}

impl RemoteLink {
    /// Queues a journaled envelope for `peer`. A full queue drops it for
    /// now: it stays journaled and undelivered, which `stele bus stats`
    /// shows.
    pub(crate) fn forward(&self, peer: String, frame: Frame) {
        let _ = self.tx.try_send((peer, frame));
    }
}

/// Where responses to asks from peers go: request id → reply subject.
type Pending = Arc<Mutex<BTreeMap<String, async_nats::Subject>>>;

/// Connects the bus to NATS with the settings of `[nats]` (`url`, TLS and
/// credentials: [`crate::nats::connect`], the same connection the event
/// feed makes): creates the `STELE_BUS` stream if missing, starts
/// consuming this instance's messages, answering asks and collecting
/// receipts, and attaches the link to `bus`. The returned task ends when
/// the bus stops.
///
/// # Errors
/// [`BusError::Peer`] (peer `nats`) when NATS cannot be reached, refuses
/// TLS or the credentials (the message says which), or refuses the stream
/// or consumer; a file or variable `[nats]` names that cannot be used.
pub async fn connect(bus: Bus, cfg: &NatsConfig) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let me = bus.origin().to_owned();
    let url = &cfg.url;
    let nats_err = |reason: String| BusError::Peer {
        peer: "nats".into(),
        reason,
    };
    let client = crate::nats::connect(cfg, &format!("stele-bus-{me}"))
        .await
        .map_err(|e| nats_err(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.into(),
            description: Some("stele bus envelopes between instances".into()),
            subjects: vec![format!("{PREFIX}.msg.>")],
            max_age: STREAM_MAX_AGE,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err(format!("stream {STREAM} on {url}: {e}")))?;
    let consumer = stream
        .get_or_create_consumer(
            &format!("bus-{me}"),
            consumer::pull::Config {
                durable_name: Some(format!("bus-{me}")),
                filter_subject: format!("{PREFIX}.msg.{me}"),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats_err(format!("consumer bus-{me} on {url}: {e}")))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| nats_err(format!("consuming {PREFIX}.msg.{me} on {url}: {e}")))?;
    let mut asks = client
        .subscribe(format!("{PREFIX}.ask.{me}"))
        .await
        .map_err(|e| nats_err(format!("subscribing to {PREFIX}.ask.{me} on {url}: {e}")))?;
    let mut receipts = client
        .subscribe(format!("{PREFIX}.receipt.{me}"))
        .await
        .map_err(|e| nats_err(format!("subscribing to {PREFIX}.receipt.{me} on {url}: {e}")))?;
    let (tx, mut rx) = mpsc::channel::<(String, Frame)>(FORWARD_QUEUE);
    bus.attach(RemoteLink { tx }).await?;
    let pending: Pending = Arc::default();
    let mut held = Held::default();

    let handle = tokio::spawn(async move {
        loop {
            tokio::select! {
                out = rx.recv() => {
                    let Some((peer, frame)) = out else { return };
                    let (client, js, bus, pending) = (client.clone(), js.clone(), bus.clone(), pending.clone());
                    tokio::spawn(async move { send_out(&client, &js, &bus, &pending, &peer, frame).await });
                }
                m = messages.next() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            // The pull stream reconnects by itself (missed
                            // heartbeats, a server restart).
                            tracing::warn!(error = %e, "bus: receiving from {PREFIX}.msg.{me}");
                            continue;
                        }
                        None => return,
                    };
                    let receipt = match take(&bus, &me, &mut held, &m).await {
                        Taken::Done(receipt) => receipt,
                        Taken::Later(delay) => {
                            if let Err(e) = m.ack_with(jetstream::AckKind::Nak(Some(delay))).await {
                                tracing::warn!(error = %e, "bus: asking NATS to redeliver a held-back message");
                            }
                            continue;
                        }
                        Taken::Stop => return,
                    };
                    if let Err(e) = m.ack().await {
                        // It comes again and is refused as a replay (journaled).
                        tracing::warn!(error = %e, "bus: acknowledging a message to NATS");
                        continue;
                    }
                    if let Some((origin, r)) = receipt {
                        let body = serde_json::to_vec(&r).unwrap_or_default();
                        let _ = client.publish(format!("{PREFIX}.receipt.{origin}"), body.into()).await;
                    }
                }
                a = asks.next() => {
                    let Some(a) = a else { return };
                    let Some(reply) = a.reply.clone() else { continue };
                    let answer = match Frame::parse(&a.payload) {
                        Ok(frame) => {
                            let (id, origin, recipient) = (frame.id.clone(), frame.origin.clone(), frame.recipient.clone());
                            match bus.accept(frame).await {
                                Ok(sent) => {
                                    // The response, when the agent answers, goes to `reply`.
                                    if let Ok(mut p) = pending.lock() {
                                        p.insert(id.clone(), reply.clone());
                                    }
                                    let r = Receipt { id, recipient, remote: format!("{me}:{}:{}", sent.seq, sent.hash) };
                                    let body = serde_json::to_vec(&r).unwrap_or_default();
                                    let _ = client.publish(format!("{PREFIX}.receipt.{origin}"), body.into()).await;
                                    None
                                }
                                Err(e) => Some(e.to_string()),
                            }
                        }
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(error) = answer {
                        let body = serde_json::to_vec(&AskReply { response: None, error: Some(error) }).unwrap_or_default();
                        let _ = client.publish(reply, body.into()).await;
                    }
                }
                r = receipts.next() => {
                    let Some(r) = r else { return };
                    if let Ok(r) = serde_json::from_slice::<Receipt>(&r.payload) {
                        bus.remote_delivered(r.id, r.recipient, r.remote).await;
                    }
                }
            }
        }
    });
    Ok(handle)
}

/// Messages held back, by recipient (`agent@instance` or topic): their
/// stream seqs and when each was last seen (ms since the Unix epoch). A
/// message to a recipient with an earlier one held back waits behind it.
#[derive(Default)]
struct Held(BTreeMap<String, BTreeMap<u64, u64>>);

impl Held {
    /// Whether a message earlier than `seq` to `recipient` is held back.
    fn behind(&mut self, recipient: &str, seq: u64, now: u64) -> bool {
        let forget = u64::try_from(HOLD_FORGET.as_millis()).unwrap_or(u64::MAX);
        let Some(seqs) = self.0.get_mut(recipient) else {
            return false;
        };
        seqs.retain(|_, seen| now.saturating_sub(*seen) < forget);
        let earlier = seqs.range(..seq).next().is_some();
        if seqs.is_empty() {
            self.0.remove(recipient);
        }
        earlier
    }

    fn hold(&mut self, recipient: &str, seq: u64, now: u64) {
        self.0.entry(recipient.to_owned()).or_default().insert(seq, now);
    }

    fn release(&mut self, recipient: &str, seq: u64) {
        if let Some(seqs) = self.0.get_mut(recipient) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.0.remove(recipient);
            }
        }
    }
}

/// What became of a message from NATS.
enum Taken {
    /// Journaled (delivered, or refused): acknowledge it; send the receipt
    /// to the origin, if any.
    Done(Option<(String, Receipt)>),
    /// Not taken: have NATS redeliver it after this delay.
    Later(Duration),
    /// The bus stopped: end the link.
    Stop,
}

/// The redelivery delay after the `delivery`-th delivery (1-based):
/// [`HOLD_FIRST_DELAY`], doubling, at most [`HOLD_MAX_DELAY`].
fn hold_delay(delivery: u64) -> Duration {
    let doublings = u32::try_from(delivery.saturating_sub(1).min(16)).unwrap_or(16);
    HOLD_FIRST_DELAY
        .saturating_mul(1u32 << doublings)
        .min(HOLD_MAX_DELAY)
}

/// How long a message was held back before its `delivery`-th delivery
/// (the delays before it, as [`hold_delay`] gives them).
fn held_for(delivery: u64) -> Duration {
    let doubling = (1..delivery.min(16)).map(hold_delay).sum::<Duration>();
    let capped = delivery.saturating_sub(16);
    doubling.saturating_add(HOLD_MAX_DELAY.saturating_mul(u32::try_from(capped).unwrap_or(u32::MAX)))
}

/// Offers one message from NATS to the bus, holding it back (in order per
/// recipient) while its recipient's mailbox is full.
async fn take(bus: &Bus, me: &str, held: &mut Held, m: &jetstream::Message) -> Taken {
    let frame = match Frame::parse(&m.payload) {
        Ok(f) => f,
        Err(e) => {
            // Not a frame: nothing to journal it under, and it never parses.
            tracing::warn!(error = %e, "bus: dropping what came on {PREFIX}.msg.{me}");
            return Taken::Done(None);
        }
    };
    let (seq, delivery) = match m.info() {
        Ok(i) => (i.stream_sequence, u64::try_from(i.delivered).unwrap_or(1).max(1)),
        Err(e) => {
            tracing::warn!(error = %e, "bus: a message from NATS without its delivery info");
            (0, 1)
        }
    };
    let now = now_ms();
    let delay = hold_delay(delivery);
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    // The last delivery before it would expire, or the bound: refuse it then.
    let last = now.saturating_add(delay_ms) >= frame.expires_at_ms || delivery >= HOLD_MAX_DELIVERIES;
    let full = if last {
        WhenFull::RefuseAfter {
            deliveries: delivery,
            held_ms: u64::try_from(held_for(delivery).as_millis()).unwrap_or(u64::MAX),
        }
    } else {
        WhenFull::Defer
    };
    let recipient = frame.recipient.clone();
    if !last && held.behind(&recipient, seq, now) {
        held.hold(&recipient, seq, now);
        return Taken::Later(delay);
    }
    let (id, origin) = (frame.id.clone(), frame.origin.clone());
    match bus.accept_with(frame, full).await {
        Ok(sent) => {
            held.release(&recipient, seq);
            let remote = format!("{me}:{}:{}", sent.seq, sent.hash);
            Taken::Done(Some((
                origin,
                Receipt {
                    id,
                    recipient,
                    remote,
                },
            )))
        }
        Err(BusError::Deferred { .. }) => {
            held.hold(&recipient, seq, now);
            Taken::Later(delay)
        }
        // Refused and journaled: never redeliver it.
        Err(BusError::Rejected { .. }) => {
            held.release(&recipient, seq);
            Taken::Done(None)
        }
        Err(BusError::Stopped) => Taken::Stop,
        Err(e) if last => {
            // Nothing to journal it under (it failed before a refusal could
            // be decided), and it has had its chances.
            tracing::error!(error = %e, message = %id, "bus: dropping a message from {origin} after {delivery} deliveries");
            held.release(&recipient, seq);
            Taken::Done(None)
        }
        Err(e) => {
            tracing::warn!(error = %e, message = %id, "bus: taking a message from {origin}; NATS redelivers it in {} ms", delay.as_millis());
            Taken::Later(delay)
        }
    }
}

/// Carries one journaled envelope to `peer`.
async fn send_out(
    client: &async_nats::Client,
    js: &jetstream::Context,
    bus: &Bus,
    pending: &Pending,
    peer: &str,
    frame: Frame,
) {
    match frame.pattern.as_str() {
        "request" => {
            let id = RequestId(frame.id.clone());
            let wait = Duration::from_millis(frame.expires_at_ms.saturating_sub(now_ms()).max(1));
            let request = async_nats::Request::new()
                .payload(frame.to_json().into())
                .timeout(Some(wait));
            let reply = client.send_request(format!("{PREFIX}.ask.{peer}"), request).await;
            let outcome = match reply {
                Ok(m) => match serde_json::from_slice::<AskReply>(&m.payload) {
                    Ok(AskReply {
                        response: Some(r), ..
                    }) => bus.accept(r).await.map(|_| ()).map_err(|e| e.to_string()),
                    Ok(AskReply { error, .. }) => Err(format!(
                        "refused by {peer}: {}",
                        error.unwrap_or_else(|| "no reason given".into())
                    )),
                    Err(e) => Err(format!("{peer} answered something that is not a reply: {e}")),
                },
                Err(e) => Err(format!("no answer from {peer}: {e}")),
            };
            if let Err(why) = outcome {
                let _ = bus.cancel(&id, &why).await;
            }
        }
        "response" => {
            let reply = frame
                .request
                .as_ref()
                .and_then(|r| pending.lock().ok().and_then(|mut p| p.remove(r)));
            match reply {
                Some(subject) => {
                    let body = serde_json::to_vec(&AskReply {
                        response: Some(frame),
                        error: None,
                    })
                    .unwrap_or_default();
                    let _ = client.publish(subject, body.into()).await;
                }
                None => publish(js, peer, &frame).await,
            }
        }
        _ => publish(js, peer, &frame).await,
    }
}

async fn publish(js: &jetstream::Context, peer: &str, frame: &Frame) {
    let msg = jetstream::message::PublishMessage::build()
        .payload(frame.to_json().into())
        .message_id(frame.id.clone());
    if let Ok(ack) = js.send_publish(format!("{PREFIX}.msg.{peer}"), msg).await {
        let _ = ack.await;
    }
}

#[allow(clippy::disallowed_methods)] // the link is an effect runner
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_delays_double_from_the_first_to_the_ceiling() {
        let ms = |d: u64| hold_delay(d).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [100, 200, 400, 800]);
        assert_eq!([ms(7), ms(8), ms(1000), ms(u64::MAX)], [5000, 5000, 5000, 5000]);
        assert_eq!(held_for(1), Duration::ZERO);
        assert_eq!(held_for(5).as_millis(), 100 + 200 + 400 + 800);
        // Past the doubling, every delivery adds the ceiling.
        assert_eq!(held_for(21) - held_for(20), HOLD_MAX_DELAY);
        assert_eq!(held_for(17) - held_for(16), HOLD_MAX_DELAY);
    }

    #[test]
    fn a_message_waits_behind_an_earlier_one_held_for_its_recipient_only() {
        let mut h = Held::default();
        h.hold("bob@b", 7, 1_000);
        assert!(h.behind("bob@b", 9, 1_000), "9 queues behind 7");
        assert!(!h.behind("bob@b", 7, 1_000), "7 itself is first");
        assert!(!h.behind("bob@b", 5, 1_000), "an earlier one goes first");
        assert!(!h.behind("carol@b", 9, 1_000), "another recipient is not held up");
        h.release("bob@b", 7);
        assert!(!h.behind("bob@b", 9, 1_000), "released");
        // One not seen again for a long while no longer holds others up.
        h.hold("bob@b", 11, 1_000);
        let later = 1_000 + u64::try_from(HOLD_FORGET.as_millis()).expect("ms");
        assert!(!h.behind("bob@b", 12, later));
    }
}
