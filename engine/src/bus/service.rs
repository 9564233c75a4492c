//! [`Bus`]: the handle, and the task that owns the bus (Service + Handle).
//!
//! The task takes commands from a bounded queue and works in batches: it
//! drains what waits (up to [`MAX_BATCH`](super::MAX_BATCH)), decides each
//! command against its view plus what the batch already decided (policy,
//! rate limit, mailbox room, replay), seals and signs the accepted messages
//! (spread over two threads for larger batches), appends every fact of the
//! batch with one `append_many`, folds the committed events back into its
//! view from the journal's follow stream, and only then answers the callers
//! and hands messages for peers to the NATS link. So nothing is answered,
//! and nothing leaves the process, before its facts are durable.
//!
//! What is on the critical path of one send: the Cedar decision (~6 µs),
//! the token bucket, AES-256-GCM of the payload (~1 µs per KiB with AES-NI),
//! one Ed25519 signature (~17 µs, parallel within a batch), and the
//! journal's group commit, which signs each event again and fsyncs once per
//! batch — most of the cost (BENCHMARKS.md, `## Bus`).
//!
//! The policy gate is a [`LiveGate`]: each send is decided by the set in
//! force when it is decided, so a daemon's policy reload (`stele policy
//! reload`, SIGHUP) reaches the bus from the next decision on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use stele_journal::event::BusEnvelope;
use stele_journal::{Append, ArchivedEventBody, EventBody, EventRef, Journal, Reader, Seq, StreamId};
use stele_projections::{AgentRegistry, BusView, Projection, SnapshotStore, maintain_snapshots, state_at};
use tokio::sync::{Notify, mpsc, oneshot};

use super::crypto::{self, BusKeys, ContentKey, Header};
use super::rate::{Bucket, RateLimit};
use super::remote::{Frame, RemoteLink};
use super::{
    BusError, COMMAND_QUEUE, EXPIRY_TICK, MAX_BATCH, MAX_RECEIVE, MAX_WAITING, Pattern, RejectCode,
    RequestId, WhenFull, topic,
};
use crate::config::BusConfig;
use crate::policy::{AuthzRequest, Entity, LiveGate, Point};

/// A message to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The sending agent (registered here).
    pub from: String,
    /// An agent, `agent@peer`, or (for [`Pattern::Publish`]) a topic or
    /// `topic@peer`.
    pub to: String,
    /// How it travels (`Response` goes through [`Bus::respond`]).
    pub pattern: Pattern,
    /// The builtin that sends it (`send_to`, `ask`, …; empty otherwise).
    pub builtin: String,
    /// Where it comes from, for correlation (`run-3/call_1`, `cli`).
    pub context: String,
    /// The plaintext.
    pub payload: Vec<u8>,
    /// Its lifetime (default `[bus] message_ttl`; a request's timeout).
    pub ttl: Option<Duration>,
}

/// A message accepted by the bus.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sent {
    /// The message id (a request's [`RequestId`]).
    pub id: String,
    /// The seq of its `MessageSent`.
    pub seq: u64,
    /// The hash (hex) of its `MessageSent`.
    pub hash: String,
    /// The mailboxes it was delivered to (`agent@peer` once a peer has it).
    pub delivered: Vec<String>,
}

/// A message taken from a mailbox (or a request's response), decrypted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Received {
    /// The message id.
    pub id: String,
    /// The sender (`agent@peer` from another instance).
    pub from: String,
    /// The recipient as addressed (agent or topic).
    pub to: String,
    /// `direct`, `publish`, `request`, `response`.
    pub pattern: String,
    /// For a response: the request it answers.
    pub request: Option<String>,
    /// The payload as text (lossy for non-UTF-8 bytes).
    pub text: String,
    /// The seq of its `MessageSent`.
    pub seq: u64,
    /// For a message from a peer: the hash of the peer's `MessageSent`.
    pub remote_hash: String,
}

/// `stele bus stats`.
pub type BusStats = Value;

type Reply<T> = oneshot::Sender<Result<T, BusError>>;

/// Snapshots of the bus view kept.
const SNAPSHOTS_KEPT: usize = 3;

pub(crate) enum Command {
    Send {
        msg: Outgoing,
        response: Option<oneshot::Sender<Received>>,
        reply: Reply<Sent>,
        /// Until when (ms since the Unix epoch) it may wait for room in a
        /// full mailbox here; `None`: refused at once.
        wait_until: Option<u64>,
    },
    Respond {
        from: String,
        request: RequestId,
        payload: Vec<u8>,
        reply: Reply<Sent>,
    },
    Receive {
        agent: String,
        max: usize,
        reply: Reply<Vec<Received>>,
    },
    Ack {
        agent: String,
        ids: Vec<String>,
        reply: Reply<usize>,
    },
    Subscribe {
        agent: String,
        pattern: String,
        active: bool,
        reply: Reply<()>,
    },
    Rotate {
        agent: String,
        reason: String,
        reply: Reply<u32>,
    },
    Cancel {
        request: RequestId,
        reason: String,
        reply: Reply<()>,
    },
    Accept {
        frame: Box<Frame>,
        full: WhenFull,
        reply: Reply<Sent>,
    },
    Delivered {
        message: String,
        recipient: String,
        remote: String,
    },
    Attach {
        link: RemoteLink,
    },
    Stats {
        reply: Reply<Value>,
    },
}

/// The handle of the bus: cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    tx: mpsc::Sender<Command>,
    notify: Arc<Notify>,
    origin: String,
    public_key: [u8; 32],
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bus command")
    }
}

#[allow(clippy::disallowed_methods)] // the bus is an effect runner: expiry and rate limits read the clock
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The deadline of a wait for room (none for a zero wait).
fn deadline(wait: Duration) -> Option<u64> {
    (!wait.is_zero()).then(|| now_ms().saturating_add(ms(wait)))
}

/// A stream id for bus events about `name` (an agent, `agent@peer` or a
/// topic): characters a stream id does not allow become `_`.
fn stream(name: &str) -> StreamId {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    StreamId::new(format!("bus:{clean}")).unwrap_or_else(|_| StreamId::system())
}

impl Bus {
    /// Starts the bus task over `journal`: loads (or creates) the node's bus
    /// secret from `data`, folds the bus view and the agent registry from
    /// the journal, records the peers of `config` it has not pinned yet.
    ///
    /// # Errors
    /// Key file, journal reads, or a peer key in `config` that is not hex
    /// of 32 bytes.
    pub async fn start(
        journal: Journal,
        data: &Path,
        gate: impl Into<LiveGate>,
        config: BusConfig,
    ) -> Result<(Bus, tokio::task::JoinHandle<()>), BusError> {
        let every = crate::config::JournalConfig::default().snapshot_every;
        Bus::start_snapshotted(journal, data, gate, config, every).await
    }

    /// [`Bus::start`] with the bus view restored from its newest usable
    /// snapshot in `<data>/snapshots/bus` plus the events after it (the
    /// agent registry likewise, from `snapshots/registry`), and a snapshot
    /// of the view written every `every` events (`[journal]
    /// snapshot_every`; 0: none written).
    ///
    /// # Errors
    /// As [`Bus::start`]; a snapshot that cannot be written.
    pub async fn start_snapshotted(
        journal: Journal,
        data: &Path,
        gate: impl Into<LiveGate>,
        config: BusConfig,
        every: u64,
    ) -> Result<(Bus, tokio::task::JoinHandle<()>), BusError> {
        let keys = BusKeys::open(data)?;
        Bus::start_inner(
            journal,
            keys,
            gate.into(),
            config,
            Some((SnapshotStore::new(data), every)),
        )
        .await
    }

    /// [`Bus::start`] with given keys (benches, tests).
    ///
    /// # Errors
    /// As [`Bus::start`].
    pub async fn start_with_keys(
        journal: Journal,
        keys: BusKeys,
        gate: impl Into<LiveGate>,
        config: BusConfig,
    ) -> Result<(Bus, tokio::task::JoinHandle<()>), BusError> {
        Bus::start_inner(journal, keys, gate.into(), config, None).await
    }

    async fn start_inner(
        journal: Journal,
        keys: BusKeys,
        gate: LiveGate,
        config: BusConfig,
        snapshots: Option<(SnapshotStore, u64)>,
    ) -> Result<(Bus, tokio::task::JoinHandle<()>), BusError> {
        let reader = journal.reader();
        let view_err = |e: stele_projections::Error| BusError::View(e.to_string());
        let (mut view, mut registry, head, from_snapshot) = match &snapshots {
            Some((store, every)) => {
                let v = maintain_snapshots::<BusView>(&reader, store, *every, SNAPSHOTS_KEPT)
                    .map_err(view_err)?;
                let r = state_at::<AgentRegistry>(&reader, store, v.seq).map_err(view_err)?;
                (v.state, r.state, v.seq, v.from_snapshot)
            }
            None => {
                let mut view = BusView::default();
                let mut registry = AgentRegistry::default();
                let head = reader.head().seq;
                for e in reader.range(Seq(1), head) {
                    let e = e?;
                    view.apply(&e);
                    registry.apply(&e);
                }
                (view, registry, head, None)
            }
        };
        let mut follow = reader.follow(head.next());
        let mut pins = Vec::new();
        for (peer, key) in &config.peers {
            let bytes = hex::decode(key)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    BusError::Invalid(format!(
                        "[bus.peers] {peer}: {key:?} is not a hex Ed25519 public key of 32 bytes"
                    ))
                })?;
            if view.peers.get(peer).map(String::as_str) != Some(key.as_str()) {
                pins.push(Append {
                    stream: stream(&format!("peer:{peer}")),
                    cause: None,
                    body: EventBody::BusPeerPinned {
                        peer: peer.clone(),
                        public_key: bytes,
                        source: "config".into(),
                    },
                });
            }
        }
        let mut folded = head;
        if !pins.is_empty() {
            let receipts = journal.append_many(pins).await?;
            let last = receipts.last().map_or(head, |r| r.seq);
            catch_up(&mut follow, last, &mut view, &mut registry).await?;
            folded = last;
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let notify = Arc::new(Notify::new());
        let bus = Bus {
            tx,
            notify: notify.clone(),
            origin: config.name.clone(),
            public_key: keys.public_key(),
        };
        let task = Task {
            journal,
            reader,
            follow,
            folded,
            keys,
            gate,
            config,
            view,
            registry,
            buckets: BTreeMap::new(),
            counters: BTreeMap::new(),
            waiters: BTreeMap::new(),
            defs: BTreeMap::new(),
            notify,
            link: None,
            parked: VecDeque::new(),
            retry_now: false,
            snapshots,
            from_snapshot,
        };
        let handle = tokio::spawn(task.run(rx));
        Ok((bus, handle))
    }

    /// This instance's name on the bus.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The node's bus identity (what peers pin).
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, BusError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| BusError::Stopped)?;
        rx.await.map_err(|_| BusError::Stopped)?
    }

    /// Sends a direct message or publishes to a topic. Returns once the
    /// message and its deliveries are durable.
    ///
    /// # Errors
    /// [`BusError::Rejected`] (journaled), [`BusError::Invalid`], a stopped bus.
    pub async fn send(&self, msg: Outgoing) -> Result<Sent, BusError> {
        self.send_wait(msg, Duration::ZERO).await
    }

    /// [`Bus::send`] that, when a recipient's mailbox here is full, waits
    /// up to `wait` for room (senders to one mailbox go in the order they
    /// came) instead of being refused at once; at the deadline it is
    /// refused (`mailbox_full`, journaled) as without waiting. The bus
    /// goes on with other traffic meanwhile.
    ///
    /// # Errors
    /// As [`Bus::send`].
    pub async fn send_wait(&self, msg: Outgoing, wait: Duration) -> Result<Sent, BusError> {
        if msg.pattern == Pattern::Response || msg.pattern == Pattern::Request {
            return Err(BusError::Invalid(format!(
                "use request/respond for a {} message",
                msg.pattern.name()
            )));
        }
        let wait_until = deadline(wait);
        self.call(|reply| Command::Send {
            msg,
            response: None,
            reply,
            wait_until,
        })
        .await
    }

    /// Sends a request and waits for its response up to `timeout`. A request
    /// that times out is recorded as `MessageExpired` (`request timed out`);
    /// a late response is refused.
    ///
    /// # Errors
    /// [`BusError::Timeout`], [`BusError::Rejected`], [`BusError::Invalid`].
    pub async fn request(&self, mut msg: Outgoing, timeout: Duration) -> Result<Received, BusError> {
        let (id, rx) = self.start_request(&mut msg, timeout, Duration::ZERO).await?;
        self.wait_response(id, rx, timeout, "request timed out").await
    }

    /// Sends a request (waiting up to `wait` for room in a full mailbox
    /// here, as [`Bus::send_wait`]); the receiver gets its response.
    pub(crate) async fn start_request(
        &self,
        msg: &mut Outgoing,
        timeout: Duration,
        wait: Duration,
    ) -> Result<(RequestId, oneshot::Receiver<Received>), BusError> {
        let wait_until = deadline(wait);
        msg.pattern = Pattern::Request;
        msg.ttl = Some(timeout);
        let (tx, rx) = oneshot::channel();
        let sent = self
            .call(|reply| Command::Send {
                msg: msg.clone(),
                response: Some(tx),
                reply,
                wait_until,
            })
            .await?;
        Ok((RequestId(sent.id), rx))
    }

    pub(crate) async fn wait_response(
        &self,
        id: RequestId,
        rx: oneshot::Receiver<Received>,
        timeout: Duration,
        reason: &str,
    ) -> Result<Received, BusError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) | Err(_) => {
                self.cancel(&id, reason).await?;
                Err(BusError::Timeout { request: id, timeout })
            }
        }
    }

    /// Stops waiting for a request's response, recording why.
    ///
    /// # Errors
    /// A stopped bus.
    pub async fn cancel(&self, request: &RequestId, reason: &str) -> Result<(), BusError> {
        self.call(|reply| Command::Cancel {
            request: request.clone(),
            reason: reason.to_owned(),
            reply,
        })
        .await
    }

    /// Answers a request delivered to `from`.
    ///
    /// # Errors
    /// The request is unknown, not addressed to `from`, or no longer open.
    pub async fn respond(&self, from: &str, request: &RequestId, payload: Vec<u8>) -> Result<Sent, BusError> {
        self.call(|reply| Command::Respond {
            from: from.to_owned(),
            request: request.clone(),
            payload,
            reply,
        })
        .await
    }

    /// The messages waiting in `agent`'s mailbox (oldest first, at most
    /// `max`), decrypted. They stay there until acknowledged.
    ///
    /// # Errors
    /// A stopped bus; a journaled envelope that does not open (names it).
    pub async fn receive(&self, agent: &str, max: usize) -> Result<Vec<Received>, BusError> {
        self.call(|reply| Command::Receive {
            agent: agent.to_owned(),
            max: max.clamp(1, MAX_RECEIVE),
            reply,
        })
        .await
    }

    /// [`Bus::receive`], waiting up to `wait` for a first message.
    ///
    /// # Errors
    /// As [`Bus::receive`].
    pub async fn receive_wait(
        &self,
        agent: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Received>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let got = self.receive(agent, max).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Acknowledges delivered messages: they leave the mailbox for good.
    ///
    /// # Errors
    /// An id that is not in `agent`'s mailbox (nothing is acknowledged).
    pub async fn ack(&self, agent: &str, ids: Vec<String>) -> Result<usize, BusError> {
        self.call(|reply| Command::Ack {
            agent: agent.to_owned(),
            ids,
            reply,
        })
        .await
    }

    /// Subscribes `agent` to a topic pattern (or unsubscribes it).
    ///
    /// # Errors
    /// A bad pattern, an unknown agent.
    pub async fn subscribe(&self, agent: &str, pattern: &str, active: bool) -> Result<(), BusError> {
        self.call(|reply| Command::Subscribe {
            agent: agent.to_owned(),
            pattern: pattern.to_owned(),
            active,
            reply,
        })
        .await
    }

    /// Moves `agent`'s content key to the next epoch; returns it.
    ///
    /// # Errors
    /// An unknown agent.
    pub async fn rotate_key(&self, agent: &str, reason: &str) -> Result<u32, BusError> {
        self.call(|reply| Command::Rotate {
            agent: agent.to_owned(),
            reason: reason.to_owned(),
            reply,
        })
        .await
    }

    /// Accepts an envelope from outside (a peer instance): verified against
    /// the pinned key of its origin, opened, checked against replay and
    /// addressing, gated by policy, then delivered. Every refusal is a
    /// journaled `MessageRejected`.
    ///
    /// # Errors
    /// [`BusError::Rejected`] saying why.
    pub async fn accept(&self, frame: Frame) -> Result<Sent, BusError> {
        self.accept_with(frame, WhenFull::Refuse).await
    }

    /// [`Bus::accept`], saying what to do when a recipient's mailbox is
    /// full: refuse (journaled) or, for a message the link can have
    /// redelivered, [`WhenFull::Defer`] — nothing journaled.
    ///
    /// # Errors
    /// [`BusError::Rejected`] saying why; [`BusError::Deferred`].
    pub async fn accept_with(&self, frame: Frame, full: WhenFull) -> Result<Sent, BusError> {
        self.call(|reply| Command::Accept {
            frame: Box::new(frame),
            full,
            reply,
        })
        .await
    }

    /// Counters, mailbox depths, subscriptions, open requests, peers.
    ///
    /// # Errors
    /// A stopped bus.
    pub async fn stats(&self) -> Result<Value, BusError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    pub(crate) async fn attach(&self, link: RemoteLink) -> Result<(), BusError> {
        self.tx
            .send(Command::Attach { link })
            .await
            .map_err(|_| BusError::Stopped)
    }

    pub(crate) async fn remote_delivered(&self, message: String, recipient: String, remote: String) {
        let _ = self
            .tx
            .send(Command::Delivered {
                message,
                recipient,
                remote,
            })
            .await;
    }
}

async fn catch_up(
    follow: &mut stele_journal::Follow,
    to: Seq,
    view: &mut BusView,
    registry: &mut AgentRegistry,
) -> Result<(), BusError> {
    loop {
        match follow.next().await {
            Some(Ok(e)) => {
                view.apply(&e);
                registry.apply(&e);
                if e.seq() >= to {
                    return Ok(());
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(BusError::Stopped),
        }
    }
}

fn priority_name(p: crate::agent::Priority) -> &'static str {
    match p {
        crate::agent::Priority::Critical => "critical",
        crate::agent::Priority::High => "high",
        crate::agent::Priority::Normal => "normal",
        crate::agent::Priority::Low => "low",
    }
}

/// What an accepted command does once its facts are durable.
enum After {
    Sent {
        reply: Reply<Sent>,
        id: String,
        /// Index of its `MessageSent` in the batch's appends.
        at: usize,
        delivered: Vec<String>,
        /// The peer it goes to, once durable.
        forward: Option<String>,
    },
    Response {
        waiter: oneshot::Sender<Received>,
        received: Received,
        at: usize,
    },
    Unit(Reply<()>),
    Count(Reply<usize>, usize),
    Epoch(Reply<u32>, u32),
    Fail(Reply<Sent>, BusError),
    None,
}

/// A message decided but not yet sealed.
struct Plan {
    header: Header,
    builtin: String,
    context: String,
    payload: Vec<u8>,
    key: ContentKey,
    remote_hash: String,
}

struct Task {
    journal: Journal,
    reader: Reader,
    follow: stele_journal::Follow,
    /// The last seq folded into `view` and `registry`.
    folded: Seq,
    keys: BusKeys,
    /// The policy set in force, asked once per decision (a daemon's reload
    /// swaps it for the next decision).
    gate: LiveGate,
    config: BusConfig,
    view: BusView,
    registry: AgentRegistry,
    buckets: BTreeMap<String, Bucket>,
    /// Next nonce counter per local sender in its current epoch.
    counters: BTreeMap<String, (u32, u64)>,
    /// Requests someone waits on: id → where the response goes.
    waiters: BTreeMap<String, oneshot::Sender<Received>>,
    /// Parsed definitions by agent: (definition hash, priority, rate).
    defs: BTreeMap<String, (String, String, RateLimit)>,
    notify: Arc<Notify>,
    link: Option<RemoteLink>,
    /// Sends waiting for room in a full mailbox, in the order they came.
    parked: VecDeque<Parked>,
    /// Room was made (acks, expiries) while sends wait: decide again at
    /// once rather than at the next tick.
    retry_now: bool,
    /// Where the view's snapshots go, and every how many events.
    snapshots: Option<(SnapshotStore, u64)>,
    /// The snapshot the view was restored from at start.
    from_snapshot: Option<Seq>,
}

/// A send waiting for room in a full mailbox.
struct Parked {
    msg: Outgoing,
    response: Option<oneshot::Sender<Received>>,
    reply: Reply<Sent>,
    /// Ms since the Unix epoch.
    until: u64,
}

/// What one batch accumulates.
#[derive(Default)]
struct Batch {
    appends: Vec<Append>,
    after: Vec<After>,
    /// Mailbox depth added by this batch.
    depth: BTreeMap<String, usize>,
    /// Message ids this batch accepted (replays within a batch).
    ids: BTreeSet<String>,
    /// Messages to seal: (index of the MessageSent in appends, plan).
    seal: Vec<(usize, Plan)>,
    /// Mailbox entries this batch removes (acks, expiries).
    taken: BTreeSet<(String, String)>,
    /// Mailboxes with senders waiting for room: later senders queue behind.
    blocked: BTreeSet<String>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut commands = Vec::new();
            if !std::mem::take(&mut self.retry_now) {
                tokio::select! {
                    c = rx.recv() => match c {
                        Some(c) => commands.push(c),
                        None => return,
                    },
                    _ = tick.tick() => {}
                }
            }
            while commands.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.batch(commands).await {
                tracing_like_log(&format!("bus: stopping: {e}"));
                return;
            }
        }
    }

    async fn batch(&mut self, commands: Vec<Command>) -> Result<(), BusError> {
        // What others appended since (an agent registered by a run, say)
        // is folded before deciding on it.
        let head = self.reader.head().seq;
        if head > self.folded {
            self.fold_to(head).await?;
        }
        let now = now_ms();
        let mut b = Batch::default();
        self.retry_parked(now, &mut b);
        for c in commands {
            self.decide(c, now, &mut b);
        }
        self.expire_due(now, &mut b);
        self.retry_now = !self.parked.is_empty() && !b.taken.is_empty();
        if b.appends.is_empty() && b.after.iter().all(|a| matches!(a, After::None)) {
            return Ok(());
        }
        // Seal and sign (in parallel for larger batches).
        let sealed = seal_all(&self.keys, std::mem::take(&mut b.seal));
        for (at, envelope) in sealed {
            match envelope {
                Ok(env) => {
                    if let EventBody::MessageSent { envelope, .. } = &mut b.appends[at].body {
                        **envelope = env;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let receipts = if b.appends.is_empty() {
            Vec::new()
        } else {
            match self.journal.append_many(std::mem::take(&mut b.appends)).await {
                Ok(r) => r,
                Err(e) => {
                    let msg = e.to_string();
                    for a in b.after {
                        fail(a, &msg);
                    }
                    return Err(e.into());
                }
            }
        };
        if let Some(last) = receipts.last() {
            self.fold_to(last.seq).await?;
            self.notify.notify_waiters();
        }
        for a in b.after {
            match a {
                After::Sent {
                    reply,
                    id,
                    at,
                    delivered,
                    forward,
                } => {
                    let r = &receipts[at];
                    if let (Some(peer), Some(link)) = (forward, self.link.as_ref())
                        && let Ok(Some(e)) = self.reader.get(r.seq)
                        && let Some(frame) = frame_of(&e)
                    {
                        link.forward(peer, frame);
                    }
                    let _ = reply.send(Ok(Sent {
                        id,
                        seq: r.seq.0,
                        hash: r.hash.to_hex(),
                        delivered,
                    }));
                }
                After::Response {
                    waiter,
                    mut received,
                    at,
                } => {
                    received.seq = receipts[at].seq.0;
                    let _ = waiter.send(received);
                }
                After::Unit(r) => {
                    let _ = r.send(Ok(()));
                }
                After::Count(r, n) => {
                    let _ = r.send(Ok(n));
                }
                After::Epoch(r, n) => {
                    let _ = r.send(Ok(n));
                }
                After::Fail(r, e) => {
                    let _ = r.send(Err(e));
                }
                After::None => {}
            }
        }
        Ok(())
    }

    async fn fold_to(&mut self, to: Seq) -> Result<(), BusError> {
        loop {
            match self.follow.next().await {
                Some(Ok(e)) => {
                    let seq = e.seq();
                    self.view.apply(&e);
                    self.registry.apply(&e);
                    self.folded = seq;
                    if let Some((store, every)) = &self.snapshots
                        && *every > 0
                        && seq.0.is_multiple_of(*every)
                    {
                        store
                            .save(seq, e.hash(), &self.view)
                            .and_then(|_| store.prune::<BusView>(SNAPSHOTS_KEPT))
                            .map_err(|e| BusError::View(e.to_string()))?;
                    }
                    if seq >= to {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(BusError::Stopped),
            }
        }
    }

    fn decide(&mut self, c: Command, now: u64, b: &mut Batch) {
        match c {
            Command::Send {
                msg,
                response,
                reply,
                wait_until,
            } => {
                if let Some(until) = wait_until
                    && until > now
                    && self.parked.len() < MAX_WAITING
                    && let Some(recipients) = self.must_wait(&msg, b)
                {
                    b.blocked.extend(recipients);
                    self.parked.push_back(Parked {
                        msg,
                        response,
                        reply,
                        until,
                    });
                    return;
                }
                self.decide_send_now(msg, response, reply, now, b);
            }
            Command::Respond {
                from,
                request,
                payload,
                reply,
            } => match self.decide_respond(&from, &request, payload, now, b) {
                Ok((at, id, delivered, forward)) => b.after.push(After::Sent {
                    reply,
                    id,
                    at,
                    delivered,
                    forward,
                }),
                Err(e) => b.after.push(After::Fail(reply, e)),
            },
            Command::Receive { agent, max, reply } => {
                let _ = reply.send(self.receive(&agent, max));
            }
            Command::Ack { agent, ids, reply } => {
                let mailbox = self.view.mailbox(&agent);
                let missing: Vec<&String> = ids
                    .iter()
                    .filter(|id| {
                        !mailbox.contains_key(id.as_str())
                            || b.taken.contains(&(agent.clone(), (*id).clone()))
                    })
                    .collect();
                if !missing.is_empty() {
                    let _ = reply.send(Err(BusError::Invalid(format!(
                        "not in the mailbox of {agent}: {} (already acknowledged, expired, or never delivered)",
                        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ))));
                    return;
                }
                let n = ids.len();
                for id in ids {
                    b.taken.insert((agent.clone(), id.clone()));
                    b.appends.push(Append {
                        stream: stream(&agent),
                        cause: mailbox.get(&id).map(|m| Seq(m.delivered_seq)),
                        body: EventBody::MessageAcknowledged {
                            message: id,
                            recipient: agent.clone(),
                        },
                    });
                }
                b.after.push(After::Count(reply, n));
            }
            Command::Subscribe {
                agent,
                pattern,
                active,
                reply,
            } => {
                if let Err(e) = topic::check_pattern(&pattern).and_then(|()| self.known(&agent)) {
                    let _ = reply.send(Err(e));
                    return;
                }
                b.appends.push(Append {
                    stream: stream(&agent),
                    cause: None,
                    body: EventBody::TopicSubscribed {
                        agent,
                        pattern,
                        active,
                    },
                });
                b.after.push(After::Unit(reply));
            }
            Command::Rotate { agent, reason, reply } => {
                if let Err(e) = self.known(&agent) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let epoch = self.epoch_of(&agent) + 1;
                self.counters.insert(agent.clone(), (epoch, 0));
                b.appends.push(Append {
                    stream: stream(&agent),
                    cause: None,
                    body: EventBody::BusKeyRotated { agent, epoch, reason },
                });
                b.after.push(After::Epoch(reply, epoch));
            }
            Command::Cancel {
                request,
                reason,
                reply,
            } => {
                self.waiters.remove(&request.0);
                if let Some(open) = self.view.requests.get(&request.0) {
                    b.appends.push(Append {
                        stream: stream(&open.requester),
                        cause: self.view.live.get(&request.0).map(|(s, _)| Seq(*s)),
                        body: EventBody::MessageExpired {
                            message: request.0.clone(),
                            recipient: open.requester.clone(),
                            reason,
                        },
                    });
                }
                b.after.push(After::Unit(reply));
            }
            Command::Accept { frame, full, reply } => match self.decide_accept(*frame, full, now, b) {
                Ok(Some((at, id, delivered))) => b.after.push(After::Sent {
                    reply,
                    id,
                    at,
                    delivered,
                    forward: None,
                }),
                Ok(None) => {}
                Err(e) => b.after.push(After::Fail(reply, e)),
            },
            Command::Delivered {
                message,
                recipient,
                remote,
            } => {
                b.appends.push(Append {
                    stream: stream(&recipient),
                    cause: self.view.live.get(&message).map(|(s, _)| Seq(*s)),
                    body: EventBody::MessageDelivered {
                        message,
                        recipient,
                        remote,
                    },
                });
                b.after.push(After::None);
            }
            Command::Attach { link } => {
                self.link = Some(link);
            }
            Command::Stats { reply } => {
                let _ = reply.send(Ok(self.stats()));
            }
        }
    }

    fn decide_send_now(
        &mut self,
        msg: Outgoing,
        response: Option<oneshot::Sender<Received>>,
        reply: Reply<Sent>,
        now: u64,
        b: &mut Batch,
    ) {
        match self.decide_send(&msg, now, b) {
            Ok((at, id, delivered, forward)) => {
                if let Some(w) = response {
                    self.waiters.insert(id.clone(), w);
                }
                b.after.push(After::Sent {
                    reply,
                    id,
                    at,
                    delivered,
                    forward,
                });
            }
            Err(e) => b.after.push(After::Fail(reply, e)),
        }
    }

    /// The mailboxes here a send would go to.
    fn recipients_of(&self, msg: &Outgoing) -> Vec<String> {
        let name = match msg.to.split_once('@') {
            Some((_, peer)) if peer != self.config.name => return Vec::new(),
            Some((name, _)) => name,
            None => msg.to.as_str(),
        };
        if msg.pattern == Pattern::Publish {
            self.local_recipients(Some(name), None)
        } else {
            self.local_recipients(None, Some(name))
        }
    }

    /// Whether a recipient's mailbox has no room for one more (counting
    /// what this batch delivers).
    fn any_full(&self, recipients: &[String], b: &Batch) -> bool {
        let capacity = self.config.mailbox_capacity as usize;
        recipients
            .iter()
            .any(|r| self.view.depth(r) + b.depth.get(r).copied().unwrap_or(0) >= capacity)
    }

    /// The recipients a send that may wait must wait for: some mailbox is
    /// full, or others already wait for it (first come, first served). A
    /// send the gate would refuse anyway does not wait (nothing is
    /// journaled here; the send's own decision is).
    fn must_wait(&mut self, msg: &Outgoing, b: &Batch) -> Option<Vec<String>> {
        let recipients = self.recipients_of(msg);
        if recipients.is_empty()
            || !(recipients.iter().any(|r| b.blocked.contains(r)) || self.any_full(&recipients, b))
        {
            return None;
        }
        let (priority, _) = self.profile(&msg.from)?;
        let allowed = self
            .gate(
                &mut Batch::default(),
                &msg.from,
                &priority,
                &msg.to,
                msg.pattern,
                &msg.builtin,
                &msg.context,
                msg.payload.len(),
            )
            .is_ok();
        allowed.then_some(recipients)
    }

    /// Decides the waiting sends again, oldest first: those with room (and
    /// nobody waiting ahead of them) go; those past their deadline are
    /// decided as any send (refused, journaled, while still full); the
    /// others wait on.
    fn retry_parked(&mut self, now: u64, b: &mut Batch) {
        for p in std::mem::take(&mut self.parked) {
            if p.reply.is_closed() {
                continue; // its caller gave up
            }
            if p.until > now {
                let recipients = self.recipients_of(&p.msg);
                if recipients.iter().any(|r| b.blocked.contains(r)) || self.any_full(&recipients, b) {
                    b.blocked.extend(recipients);
                    self.parked.push_back(p);
                    continue;
                }
            }
            self.decide_send_now(p.msg, p.response, p.reply, now, b);
        }
    }

    fn known(&self, agent: &str) -> Result<(), BusError> {
        if self.registry.agents.contains_key(agent) {
            Ok(())
        } else {
            Err(BusError::Invalid(format!(
                "no agent named {agent:?} is registered on this instance (`stele agent list`)"
            )))
        }
    }

    fn epoch_of(&self, agent: &str) -> u32 {
        self.counters
            .get(agent)
            .map_or_else(|| self.view.epoch(agent), |(e, _)| *e)
    }

    /// Priority and rate limit of a registered agent.
    fn profile(&mut self, agent: &str) -> Option<(String, RateLimit)> {
        let entry = self.registry.agents.get(agent)?;
        if let Some((hash, priority, rate)) = self.defs.get(agent)
            && *hash == entry.definition_hash
        {
            return Some((priority.clone(), *rate));
        }
        let def = crate::agent::AgentDefinition::parse(Path::new("(registered)"), &entry.definition).ok();
        let (priority, rate) = match def {
            Some(d) => (
                priority_name(d.priority).to_owned(),
                RateLimit {
                    per_second: if d.limits.messages_per_second == 0 {
                        self.config.messages_per_second
                    } else {
                        d.limits.messages_per_second
                    },
                    burst: if d.limits.message_burst == 0 {
                        self.config.burst
                    } else {
                        d.limits.message_burst
                    },
                },
            ),
            None => (
                "normal".to_owned(),
                RateLimit {
                    per_second: self.config.messages_per_second,
                    burst: self.config.burst,
                },
            ),
        };
        self.defs.insert(
            agent.to_owned(),
            (entry.definition_hash.clone(), priority.clone(), rate),
        );
        Some((priority, rate))
    }

    fn reject(
        &self,
        b: &mut Batch,
        message: &str,
        sender: &str,
        recipient: &str,
        code: RejectCode,
        reason: String,
    ) -> BusError {
        b.appends.push(Append {
            stream: stream(sender),
            cause: None,
            body: EventBody::MessageRejected {
                message: message.to_owned(),
                sender: sender.to_owned(),
                recipient: recipient.to_owned(),
                code: code.name().to_owned(),
                reason: reason.clone(),
            },
        });
        b.after.push(After::None);
        BusError::Rejected {
            message: message.to_owned(),
            code,
            reason,
        }
    }

    fn next_header(
        &mut self,
        from: &str,
        to: &str,
        pattern: Pattern,
        request: Option<String>,
        expires: u64,
    ) -> Header {
        let origin = self.config.name.clone();
        let (epoch, counter) = match self.counters.get(from) {
            Some(&(e, c)) => (e, c),
            None => self.view.next_nonce(&origin, from),
        };
        self.counters.insert(from.to_owned(), (epoch, counter + 1));
        Header {
            origin,
            sender: from.to_owned(),
            recipient: to.to_owned(),
            pattern: pattern.name().to_owned(),
            request,
            epoch,
            counter,
            expires_at_ms: expires,
        }
    }

    /// The policy decision of a send; journaled in any case.
    #[allow(clippy::too_many_arguments)] // the request's parts, each from a different place
    fn gate(
        &self,
        b: &mut Batch,
        from: &str,
        priority: &str,
        to: &str,
        pattern: Pattern,
        builtin: &str,
        context: &str,
        size: usize,
    ) -> Result<(), String> {
        let (kind, id) = if pattern == Pattern::Publish {
            ("Topic", to)
        } else {
            ("Agent", to)
        };
        let policy_pattern = match pattern {
            Pattern::Direct => "direct",
            Pattern::Publish => "publish",
            Pattern::Request | Pattern::Response => "request",
        };
        let mut ctx = serde_json::Map::new();
        ctx.insert("pattern".into(), json!(policy_pattern));
        ctx.insert("size_bytes".into(), json!(size));
        if !builtin.is_empty() {
            ctx.insert("builtin".into(), json!(builtin));
        }
        if let Some((_, peer)) = to.split_once('@') {
            ctx.insert("peer".into(), json!(peer));
        }
        if !context.is_empty() {
            ctx.insert("correlation".into(), json!(context));
        }
        let request = AuthzRequest {
            point: Point::MessageSend,
            principal: Entity {
                kind: "Agent".into(),
                id: from.to_owned(),
                attrs: json!({ "priority": priority }),
            },
            action: Point::MessageSend.default_action().to_owned(),
            resource: Entity {
                kind: kind.into(),
                id: id.to_owned(),
                attrs: if kind == "Agent" {
                    json!({ "priority": "normal" })
                } else {
                    Value::Null
                },
            },
            context: Value::Object(ctx),
        };
        // One set decides this send (and its hash is journaled with it).
        let gate = self.gate.current();
        let decision = gate.decide(&request);
        let mut detail = decision.verdict.detail();
        if !decision.errors.is_empty() {
            detail = format!("{detail} (errors: {})", decision.errors.join("; "));
        }
        let allowed = decision.verdict.allows();
        b.appends.push(Append {
            stream: stream(from),
            cause: None,
            body: EventBody::PolicyDecided {
                run: None,
                point: Point::MessageSend.name().to_owned(),
                request: request.canonical_json(),
                verdict: decision.verdict.name().to_owned(),
                detail: detail.clone(),
                policies: decision.policies,
                policy_set: gate.hash(),
            },
        });
        if allowed {
            Ok(())
        } else if decision.verdict.name() == "require_approval" {
            Err(format!(
                "needs a human approval, which bus sends cannot wait for: {detail}"
            ))
        } else {
            Err(detail)
        }
    }

    #[allow(clippy::type_complexity)]
    fn decide_send(
        &mut self,
        msg: &Outgoing,
        now: u64,
        b: &mut Batch,
    ) -> Result<(usize, String, Vec<String>, Option<String>), BusError> {
        let (priority, rate) = self.profile(&msg.from).ok_or_else(|| {
            BusError::Invalid(format!(
                "no agent named {:?} is registered on this instance to send from",
                msg.from
            ))
        })?;
        // Where does it go?
        // `agent@peer` and `topic@peer` go over the NATS link; the peer
        // delivers to its agent, or to its subscribers of the topic.
        let (remote_peer, local_target) = match msg.to.split_once('@') {
            Some((name, peer)) if peer != self.config.name => {
                if msg.pattern == Pattern::Publish {
                    topic::check_topic(name)?;
                }
                if self.link.is_none() {
                    return Err(BusError::Invalid(format!(
                        "{} is on instance {peer:?}, and this bus has no NATS link (`[bus] nats = true`)",
                        msg.to
                    )));
                }
                if !self.view.peers.contains_key(peer) {
                    return Err(BusError::Invalid(format!(
                        "instance {peer:?} is not a pinned peer (add it to [bus.peers])"
                    )));
                }
                (Some((name.to_owned(), peer.to_owned())), None)
            }
            Some((name, _)) => (None, Some(name.to_owned())),
            None => (None, Some(msg.to.clone())),
        };
        // A topic published here has subscribers, not one target agent.
        let (local_topic, local_target) = match (msg.pattern, local_target) {
            (Pattern::Publish, Some(t)) => {
                topic::check_topic(&t)?;
                (Some(t), None)
            }
            (_, t) => (None, t),
        };
        let max = usize::try_from(self.config.max_payload_bytes).unwrap_or(usize::MAX);
        let claimed = format!("(unsent):{}", msg.from);
        if msg.payload.len() > max {
            return Err(self.reject(
                b,
                &claimed,
                &msg.from,
                &msg.to,
                RejectCode::Oversize,
                format!(
                    "the payload is {} bytes, over the limit of {max}",
                    msg.payload.len()
                ),
            ));
        }
        if let Some(t) = &local_target
            && self.known(t).is_err()
        {
            return Err(self.reject(
                b,
                &claimed,
                &msg.from,
                &msg.to,
                RejectCode::Misaddressed,
                format!("no agent named {t:?} on instance {}", self.config.name),
            ));
        }
        if let Err(why) = self.gate(
            b,
            &msg.from,
            &priority,
            &msg.to,
            msg.pattern,
            &msg.builtin,
            &msg.context,
            msg.payload.len(),
        ) {
            return Err(self.reject(b, &claimed, &msg.from, &msg.to, RejectCode::PolicyDenied, why));
        }
        let bucket = self
            .buckets
            .entry(msg.from.clone())
            .or_insert_with(|| Bucket::new(rate, now));
        if bucket.limit() != rate {
            *bucket = Bucket::new(rate, now);
        }
        if let Err(wait) = bucket.take(now) {
            return Err(self.reject(
                b,
                &claimed,
                &msg.from,
                &msg.to,
                RejectCode::RateLimited,
                format!(
                    "{} sends at most {}/s with bursts of {}; next token in {wait} ms",
                    msg.from, rate.per_second, rate.burst
                ),
            ));
        }
        // Recipients here.
        let recipients = self.local_recipients(local_topic.as_deref(), local_target.as_deref());
        let capacity = self.config.mailbox_capacity as usize;
        let full: Vec<&String> = recipients
            .iter()
            .filter(|r| self.view.depth(r) + b.depth.get(*r).copied().unwrap_or(0) >= capacity)
            .collect();
        if !full.is_empty() {
            let list = full.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            return Err(self.reject(
                b,
                &claimed,
                &msg.from,
                &msg.to,
                RejectCode::MailboxFull,
                format!(
                    "the mailbox of {list} is full ({capacity} messages); retry once it acknowledges some"
                ),
            ));
        }
        let ttl = msg.ttl.map_or_else(|| ms(self.config.message_ttl), ms);
        let expires = now.saturating_add(ttl);
        let addressed = match &remote_peer {
            Some((name, peer)) => format!("{name}@{peer}"),
            None => local_target
                .clone()
                .or(local_topic)
                .unwrap_or_else(|| msg.to.clone()),
        };
        let header = self.next_header(&msg.from, &addressed, msg.pattern, None, expires);
        let key = match &remote_peer {
            Some((_, peer)) => self.peer_key(peer, &header.origin, &msg.from, header.epoch)?,
            None => self.keys.local_key(&header.origin, &msg.from, header.epoch),
        };
        let id = header.id();
        let at = self.push_sent(
            b,
            Plan {
                header,
                builtin: msg.builtin.clone(),
                context: msg.context.clone(),
                payload: msg.payload.clone(),
                key,
                remote_hash: String::new(),
            },
            &msg.from,
        );
        for r in &recipients {
            *b.depth.entry(r.clone()).or_default() += 1;
            b.appends.push(Append {
                stream: stream(r),
                cause: None,
                body: EventBody::MessageDelivered {
                    message: id.clone(),
                    recipient: r.clone(),
                    remote: String::new(),
                },
            });
        }
        let forward = remote_peer.map(|(_, peer)| peer);
        Ok((at, id, recipients, forward))
    }

    /// The mailboxes here a message goes to: the subscribers of `topic`,
    /// or `target`, or none (a message for a peer).
    fn local_recipients(&self, topic: Option<&str>, target: Option<&str>) -> Vec<String> {
        match (topic, target) {
            (Some(t), _) => {
                let mut set = BTreeSet::new();
                for (pattern, agents) in &self.view.subscriptions {
                    if topic::matches(pattern, t) {
                        set.extend(agents.iter().cloned());
                    }
                }
                set.into_iter().collect()
            }
            (None, Some(t)) => vec![t.to_owned()],
            (None, None) => Vec::new(),
        }
    }

    fn peer_key(&self, peer: &str, origin: &str, agent: &str, epoch: u32) -> Result<ContentKey, BusError> {
        let pinned = self
            .view
            .peers
            .get(peer)
            .and_then(|k| hex::decode(k).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| BusError::Invalid(format!("instance {peer:?} is not a pinned peer")))?;
        self.keys.peer_key(&pinned, origin, agent, epoch)
    }

    /// Appends the `MessageSent` (its envelope is filled in by sealing) and
    /// returns its index in the batch.
    fn push_sent(&self, b: &mut Batch, plan: Plan, from: &str) -> usize {
        let at = b.appends.len();
        let id = plan.header.id();
        b.ids.insert(id.clone());
        b.appends.push(Append {
            stream: stream(from),
            cause: None,
            body: EventBody::MessageSent {
                message: id,
                envelope: Box::new(BusEnvelope {
                    origin: String::new(),
                    sender: String::new(),
                    recipient: String::new(),
                    pattern: String::new(),
                    builtin: String::new(),
                    request: None,
                    context: String::new(),
                    epoch: 0,
                    counter: 0,
                    expires_at_ms: 0,
                    ciphertext: Vec::new(),
                    signer: [0; 32],
                    signature: [0; 64],
                    remote_hash: String::new(),
                }),
            },
        });
        b.seal.push((at, plan));
        at
    }

    #[allow(clippy::type_complexity)]
    fn decide_respond(
        &mut self,
        from: &str,
        request: &RequestId,
        payload: Vec<u8>,
        now: u64,
        b: &mut Batch,
    ) -> Result<(usize, String, Vec<String>, Option<String>), BusError> {
        let Some(open) = self.view.requests.get(&request.0).cloned() else {
            let why = if self.view.seen(&request.0) {
                format!("request {request} is no longer open (answered, timed out or cancelled)")
            } else {
                format!("no request {request} is known here")
            };
            return Err(self.reject(
                b,
                &format!("(response):{request}"),
                from,
                &request.0,
                RejectCode::Expired,
                why,
            ));
        };
        let addressed_to_me =
            open.recipient == from || open.recipient == format!("{from}@{}", self.config.name);
        if !addressed_to_me {
            return Err(BusError::Invalid(format!(
                "request {request} was sent to {}, not to {from}",
                open.recipient
            )));
        }
        let max = usize::try_from(self.config.max_payload_bytes).unwrap_or(usize::MAX);
        if payload.len() > max {
            return Err(self.reject(
                b,
                &format!("(response):{request}"),
                from,
                &open.requester,
                RejectCode::Oversize,
                format!("the payload is {} bytes, over the limit of {max}", payload.len()),
            ));
        }
        let remote = open
            .requester
            .split_once('@')
            .map(|(a, p)| (a.to_owned(), p.to_owned()));
        let header = self.next_header(
            from,
            &open.requester,
            Pattern::Response,
            Some(request.0.clone()),
            open.expires_at_ms.max(now),
        );
        let key = match &remote {
            Some((_, peer)) => self.peer_key(peer, &header.origin, from, header.epoch)?,
            None => self.keys.local_key(&header.origin, from, header.epoch),
        };
        let id = header.id();
        let text = String::from_utf8_lossy(&payload).into_owned();
        let at = self.push_sent(
            b,
            Plan {
                header,
                builtin: String::new(),
                context: format!("response to {request}"),
                payload,
                key,
                remote_hash: String::new(),
            },
            from,
        );
        let mut delivered = Vec::new();
        if remote.is_none() {
            self.deliver_response(b, &id, &open.requester, request, from, text, at, &mut delivered);
        }
        // The request leaves the requester's mailbox of pending asks: the
        // responder's copy is acknowledged by answering it.
        if self.view.mailbox(from).contains_key(&request.0)
            && !b.taken.contains(&(from.to_owned(), request.0.clone()))
        {
            b.taken.insert((from.to_owned(), request.0.clone()));
            b.appends.push(Append {
                stream: stream(from),
                cause: None,
                body: EventBody::MessageAcknowledged {
                    message: request.0.clone(),
                    recipient: from.to_owned(),
                },
            });
        }
        let forward = remote.map(|(_, peer)| peer);
        Ok((at, id, delivered, forward))
    }

    /// Delivers a response to its requester: straight to a waiting caller
    /// (delivered and acknowledged at once), else into its mailbox.
    #[allow(clippy::too_many_arguments)]
    fn deliver_response(
        &mut self,
        b: &mut Batch,
        id: &str,
        requester: &str,
        request: &RequestId,
        from: &str,
        text: String,
        at: usize,
        delivered: &mut Vec<String>,
    ) {
        b.appends.push(Append {
            stream: stream(requester),
            cause: None,
            body: EventBody::MessageDelivered {
                message: id.to_owned(),
                recipient: requester.to_owned(),
                remote: String::new(),
            },
        });
        delivered.push(requester.to_owned());
        if let Some(waiter) = self.waiters.remove(&request.0) {
            b.appends.push(Append {
                stream: stream(requester),
                cause: None,
                body: EventBody::MessageAcknowledged {
                    message: id.to_owned(),
                    recipient: requester.to_owned(),
                },
            });
            b.after.push(After::Response {
                waiter,
                received: Received {
                    id: id.to_owned(),
                    from: from.to_owned(),
                    to: requester.to_owned(),
                    pattern: "response".into(),
                    request: Some(request.0.clone()),
                    text,
                    seq: 0,
                    remote_hash: String::new(),
                },
                at,
            });
        } else {
            *b.depth.entry(requester.to_owned()).or_default() += 1;
        }
    }

    #[allow(clippy::too_many_lines)] // one check after the other, in the order the docs give
    fn decide_accept(
        &mut self,
        f: Frame,
        full: WhenFull,
        now: u64,
        b: &mut Batch,
    ) -> Result<Option<(usize, String, Vec<String>)>, BusError> {
        let claimed_sender = format!("{}@{}", f.sender, f.origin);
        let header = Header {
            origin: f.origin.clone(),
            sender: f.sender.clone(),
            recipient: f.recipient.clone(),
            pattern: f.pattern.clone(),
            request: f.request.clone(),
            epoch: f.epoch,
            counter: f.counter,
            expires_at_ms: f.expires_at_ms,
        };
        let id = f.id.clone();
        let rej = |t: &mut Task, b: &mut Batch, code: RejectCode, why: String| {
            t.reject(b, &id, &claimed_sender, &f.recipient, code, why)
        };
        // 1. Who signed it: the pinned key of its origin.
        let local = f.origin == self.config.name;
        let pinned: Option<[u8; 32]> = if local {
            Some(self.keys.public_key())
        } else {
            self.view
                .peers
                .get(&f.origin)
                .and_then(|k| hex::decode(k).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
        };
        let pinned = match pinned {
            Some(p) => p,
            None if self.config.pin_on_first_contact => {
                b.appends.push(Append {
                    stream: stream(&format!("peer:{}", f.origin)),
                    cause: None,
                    body: EventBody::BusPeerPinned {
                        peer: f.origin.clone(),
                        public_key: f.signer,
                        source: "first_contact".into(),
                    },
                });
                b.after.push(After::None);
                self.view.peers.insert(f.origin.clone(), hex::encode(f.signer));
                f.signer
            }
            None => {
                return Err(rej(
                    self,
                    b,
                    RejectCode::UnknownPeer,
                    format!(
                        "instance {:?} is not a pinned peer (add it to [bus.peers])",
                        f.origin
                    ),
                ));
            }
        };
        if f.signer != pinned {
            return Err(rej(
                self,
                b,
                RejectCode::BadSignature,
                format!(
                    "signed by key {}, but the pinned key of {:?} is {}",
                    &hex::encode(f.signer)[..16],
                    f.origin,
                    &hex::encode(pinned)[..16]
                ),
            ));
        }
        // 2. Addressing: the id names the header; the recipient is here.
        if header.id() != id {
            return Err(rej(
                self,
                b,
                RejectCode::Tampered,
                format!("the id does not match its header (expected {})", header.id()),
            ));
        }
        let Some(pattern) = Pattern::from_name(&f.pattern) else {
            return Err(rej(
                self,
                b,
                RejectCode::Misaddressed,
                format!("unknown pattern {:?}", f.pattern),
            ));
        };
        let target = match f.recipient.split_once('@') {
            Some((agent, inst)) if inst == self.config.name => agent.to_owned(),
            Some((_, inst)) => {
                return Err(rej(
                    self,
                    b,
                    RejectCode::Misaddressed,
                    format!("addressed to instance {inst:?}, this is {:?}", self.config.name),
                ));
            }
            None if local => f.recipient.clone(),
            None => {
                return Err(rej(
                    self,
                    b,
                    RejectCode::Misaddressed,
                    format!(
                        "{:?} does not name an agent of this instance (agent@{})",
                        f.recipient, self.config.name
                    ),
                ));
            }
        };
        // 3. Open it (the AEAD authenticates ciphertext and header).
        let key = if local {
            self.keys.local_key(&f.origin, &f.sender, f.epoch)
        } else {
            self.keys.peer_key(&pinned, &f.origin, &f.sender, f.epoch)?
        };
        let plaintext = match key.open(&header, &f.ciphertext) {
            Ok(p) => p,
            Err(e) => return Err(rej(self, b, RejectCode::Tampered, e.to_string())),
        };
        // 4. The signature.
        if let Err(why) = crypto::verify(&pinned, &header.signed_digest(&f.ciphertext), &f.signature) {
            return Err(rej(self, b, RejectCode::BadSignature, why));
        }
        // 5. Fresh and new.
        if self.view.seen(&id) || b.ids.contains(&id) {
            return Err(rej(
                self,
                b,
                RejectCode::Replayed,
                format!("message {id} was already accepted; a copy is never delivered twice"),
            ));
        }
        if f.expires_at_ms <= now {
            return Err(rej(
                self,
                b,
                RejectCode::Expired,
                format!("it expired {} ms ago", now - f.expires_at_ms),
            ));
        }
        let max = usize::try_from(self.config.max_payload_bytes).unwrap_or(usize::MAX);
        if plaintext.len() > max {
            return Err(rej(
                self,
                b,
                RejectCode::Oversize,
                format!(
                    "the payload is {} bytes, over the limit of {max}",
                    plaintext.len()
                ),
            ));
        }
        // 6. Responses go to their waiting requester.
        if pattern == Pattern::Response {
            let Some(request) = f.request.clone() else {
                return Err(rej(
                    self,
                    b,
                    RejectCode::Misaddressed,
                    "a response without its request".into(),
                ));
            };
            if !self.view.requests.contains_key(&request) {
                return Err(rej(
                    self,
                    b,
                    RejectCode::Expired,
                    format!("request {request} is no longer open (answered, timed out or cancelled)"),
                ));
            }
            if self.known(&target).is_err() {
                return Err(rej(
                    self,
                    b,
                    RejectCode::Misaddressed,
                    format!("no agent named {target:?} here"),
                ));
            }
            let at = Task::push_received(b, &f, header.clone());
            let mut delivered = Vec::new();
            let text = String::from_utf8_lossy(&plaintext).into_owned();
            self.deliver_response(
                b,
                &id,
                &target,
                &RequestId(request),
                &claimed_sender,
                text,
                at,
                &mut delivered,
            );
            return Ok(Some((at, id, delivered)));
        }
        // 7. The recipients and the gate.
        let recipients: Vec<String> = if pattern == Pattern::Publish {
            if let Err(e) = topic::check_topic(&target) {
                return Err(rej(self, b, RejectCode::Misaddressed, e.to_string()));
            }
            self.local_recipients(Some(&target), None)
        } else {
            if self.known(&target).is_err() {
                return Err(rej(
                    self,
                    b,
                    RejectCode::Misaddressed,
                    format!("no agent named {target:?} on instance {}", self.config.name),
                ));
            }
            vec![target.clone()]
        };
        let capacity = self.config.mailbox_capacity as usize;
        let no_room = |t: &Task, b: &Batch| {
            recipients
                .iter()
                .find(|r| t.view.depth(r) + b.depth.get(*r).copied().unwrap_or(0) >= capacity)
                .cloned()
        };
        // Held back, not refused: the link has it redelivered. Unless the
        // gate would refuse it anyway (asked on a scratch batch, as for a
        // local send that waits: nothing is journaled for a message not
        // taken).
        // Senders here waiting for room (`blocked`) go first: a held-back
        // message queues behind them.
        if full == WhenFull::Defer
            && let Some(r) = recipients
                .iter()
                .find(|r| b.blocked.contains(*r))
                .cloned()
                .or_else(|| no_room(self, b))
            && self
                .gate(
                    &mut Batch::default(),
                    &claimed_sender,
                    "remote",
                    &target,
                    pattern,
                    &f.builtin,
                    &f.context,
                    plaintext.len(),
                )
                .is_ok()
        {
            return Err(BusError::Deferred {
                message: id,
                recipient: r,
                capacity,
            });
        }
        if let Err(why) = self.gate(
            b,
            &claimed_sender,
            "remote",
            &target,
            pattern,
            &f.builtin,
            &f.context,
            plaintext.len(),
        ) {
            return Err(rej(self, b, RejectCode::PolicyDenied, why));
        }
        if let Some(r) = no_room(self, b) {
            let why = match full {
                WhenFull::RefuseAfter { deliveries, held_ms } => format!(
                    "the mailbox of {r} is full ({capacity} messages) and stayed full while the message was held back ({deliveries} deliveries over {held_ms} ms); it would expire before the next"
                ),
                WhenFull::Refuse | WhenFull::Defer => {
                    format!("the mailbox of {r} is full ({capacity} messages)")
                }
            };
            return Err(rej(self, b, RejectCode::MailboxFull, why));
        }
        let at = Task::push_received(b, &f, header);
        for r in &recipients {
            *b.depth.entry(r.clone()).or_default() += 1;
            b.appends.push(Append {
                stream: stream(r),
                cause: None,
                body: EventBody::MessageDelivered {
                    message: id.clone(),
                    recipient: r.clone(),
                    remote: String::new(),
                },
            });
        }
        Ok(Some((at, id, recipients)))
    }

    /// Journals a received envelope exactly as its sender sealed it.
    fn push_received(b: &mut Batch, f: &Frame, header: Header) -> usize {
        let at = b.appends.len();
        b.ids.insert(f.id.clone());
        b.appends.push(Append {
            stream: stream(&format!("{}@{}", f.sender, f.origin)),
            cause: None,
            body: EventBody::MessageSent {
                message: f.id.clone(),
                envelope: Box::new(BusEnvelope {
                    origin: header.origin,
                    sender: header.sender,
                    recipient: header.recipient,
                    pattern: header.pattern,
                    builtin: f.builtin.clone(),
                    request: header.request,
                    context: f.context.clone(),
                    epoch: header.epoch,
                    counter: header.counter,
                    expires_at_ms: header.expires_at_ms,
                    ciphertext: f.ciphertext.clone(),
                    signer: f.signer,
                    signature: f.signature,
                    remote_hash: if f.event_hash.is_empty() {
                        "(none)".into()
                    } else {
                        f.event_hash.clone()
                    },
                }),
            },
        });
        at
    }

    fn expire_due(&mut self, now: u64, b: &mut Batch) {
        let mut due = Vec::new();
        for (agent, mailbox) in &self.view.mailboxes {
            for (id, m) in mailbox {
                if m.expires_at_ms <= now && !b.taken.contains(&(agent.clone(), id.clone())) {
                    due.push((agent.clone(), id.clone(), m.sent_seq));
                }
            }
        }
        for (agent, id, seq) in due {
            b.taken.insert((agent.clone(), id.clone()));
            b.appends.push(Append {
                stream: stream(&agent),
                cause: Some(Seq(seq)),
                body: EventBody::MessageExpired {
                    message: id,
                    recipient: agent,
                    reason: "ttl".into(),
                },
            });
            b.after.push(After::None);
        }
        // Open requests nobody waits for any more (the requester's process
        // ended, or the bus restarted) expire at their deadline.
        let stale: Vec<(String, String)> = self
            .view
            .requests
            .iter()
            .filter(|(id, r)| r.expires_at_ms <= now && !self.waiters.contains_key(*id))
            .map(|(id, r)| (id.clone(), r.requester.clone()))
            .collect();
        for (id, requester) in stale {
            if b.taken.insert((requester.clone(), format!("request:{id}"))) {
                b.appends.push(Append {
                    stream: stream(&requester),
                    cause: self.view.live.get(&id).map(|(s, _)| Seq(*s)),
                    body: EventBody::MessageExpired {
                        message: id,
                        recipient: requester,
                        reason: "request timed out".into(),
                    },
                });
                b.after.push(After::None);
            }
        }
    }

    fn receive(&self, agent: &str, max: usize) -> Result<Vec<Received>, BusError> {
        let mailbox = self.view.mailbox(agent);
        let mut entries: Vec<(&String, &stele_projections::bus::MailEntry)> = mailbox.iter().collect();
        entries.sort_by_key(|(_, m)| m.delivered_seq);
        let mut out = Vec::new();
        for (id, m) in entries.into_iter().take(max) {
            let e = self.reader.get(Seq(m.sent_seq))?.ok_or_else(|| {
                BusError::Invalid(format!(
                    "message {id}: its MessageSent (seq {}) is missing",
                    m.sent_seq
                ))
            })?;
            out.push(self.open_event(&e)?);
        }
        Ok(out)
    }

    /// Decrypts the message journaled in `e` (a `MessageSent`).
    fn open_event(&self, e: &EventRef) -> Result<Received, BusError> {
        let ArchivedEventBody::MessageSent { message, envelope } = e.body() else {
            return Err(BusError::Invalid(format!(
                "seq {} is not a MessageSent",
                e.seq().0
            )));
        };
        let header = Header {
            origin: envelope.origin.to_string(),
            sender: envelope.sender.to_string(),
            recipient: envelope.recipient.to_string(),
            pattern: envelope.pattern.to_string(),
            request: envelope.request.as_ref().map(|r| r.to_string()),
            epoch: envelope.epoch.to_native(),
            counter: envelope.counter.to_native(),
            expires_at_ms: envelope.expires_at_ms.to_native(),
        };
        let key = if header.origin == self.config.name {
            self.keys.local_key(&header.origin, &header.sender, header.epoch)
        } else {
            let peer = self
                .view
                .peers
                .get(&header.origin)
                .and_then(|k| hex::decode(k).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    BusError::Invalid(format!("message {message}: its origin is not a pinned peer"))
                })?;
            self.keys
                .peer_key(&peer, &header.origin, &header.sender, header.epoch)?
        };
        let plaintext = key
            .open(&header, envelope.ciphertext.as_slice())
            .map_err(|err| BusError::Crypto(format!("message {message} (seq {}): {err}", e.seq().0)))?;
        let from = if header.origin == self.config.name {
            header.sender.clone()
        } else {
            format!("{}@{}", header.sender, header.origin)
        };
        Ok(Received {
            id: message.to_string(),
            from,
            to: header.recipient,
            pattern: header.pattern,
            request: header.request,
            text: String::from_utf8_lossy(&plaintext).into_owned(),
            seq: e.seq().0,
            remote_hash: envelope.remote_hash.to_string(),
        })
    }

    fn stats(&self) -> Value {
        let v = &self.view;
        let mailboxes: serde_json::Map<String, Value> = v
            .mailboxes
            .iter()
            .map(|(a, m)| (a.clone(), json!(m.len())))
            .collect();
        let subscriptions: serde_json::Map<String, Value> = v
            .subscriptions
            .iter()
            .map(|(p, a)| (p.clone(), json!(a.iter().collect::<Vec<_>>())))
            .collect();
        json!({
            "instance": self.config.name,
            "public_key": hex::encode(self.keys.public_key()),
            "sent": v.counters.sent,
            "received_remote": v.counters.received_remote,
            "delivered": v.counters.delivered,
            "acknowledged": v.counters.acknowledged,
            "expired": v.counters.expired,
            "responses": v.counters.responses,
            "rejected": v.counters.rejected,
            "mailboxes": mailboxes,
            "subscriptions": subscriptions,
            "open_requests": v.requests.len(),
            "peers": v.peers,
            "waiting": self.parked.len(),
            "view_from_snapshot": self.from_snapshot.map(|s| s.0),
            "nats": self.link.is_some(),
        })
    }
}

fn fail(a: After, msg: &str) {
    let e = || BusError::Invalid(format!("the journal refused the batch: {msg}"));
    match a {
        After::Sent { reply, .. } | After::Fail(reply, _) => {
            let _ = reply.send(Err(e()));
        }
        After::Unit(r) => {
            let _ = r.send(Err(e()));
        }
        After::Count(r, _) => {
            let _ = r.send(Err(e()));
        }
        After::Epoch(r, _) => {
            let _ = r.send(Err(e()));
        }
        After::Response { .. } | After::None => {}
    }
}

fn tracing_like_log(msg: &str) {
    eprintln!("{msg}");
}

/// Seals and signs planned messages; batches of 16 or more use two threads.
fn seal_all(keys: &BusKeys, plans: Vec<(usize, Plan)>) -> Vec<(usize, Result<BusEnvelope, BusError>)> {
    let one = |(at, p): (usize, Plan)| -> (usize, Result<BusEnvelope, BusError>) {
        let r = p.key.seal(&p.header, &p.payload).map(|ciphertext| {
            let signature = keys.sign(&p.header.signed_digest(&ciphertext));
            BusEnvelope {
                origin: p.header.origin,
                sender: p.header.sender,
                recipient: p.header.recipient,
                pattern: p.header.pattern,
                builtin: p.builtin,
                request: p.header.request,
                context: p.context,
                epoch: p.header.epoch,
                counter: p.header.counter,
                expires_at_ms: p.header.expires_at_ms,
                ciphertext,
                signer: keys.public_key(),
                signature,
                remote_hash: p.remote_hash,
            }
        });
        (at, r)
    };
    if plans.len() < 16 {
        return plans.into_iter().map(one).collect();
    }
    let mut plans = plans;
    let second = plans.split_off(plans.len() / 2);
    std::thread::scope(|s| {
        let h = s.spawn(|| second.into_iter().map(one).collect::<Vec<_>>());
        let mut out: Vec<_> = plans.into_iter().map(one).collect();
        match h.join() {
            Ok(rest) => out.extend(rest),
            Err(_) => out.push((
                usize::MAX,
                Err(BusError::Crypto("a sealing thread panicked".into())),
            )),
        }
        out
    })
}

/// A peer's copy of a message as journaled here (for the NATS link).
pub(crate) fn frame_of(e: &EventRef) -> Option<Frame> {
    let ArchivedEventBody::MessageSent { message, envelope } = e.body() else {
        return None;
    };
    Some(Frame {
        id: message.to_string(),
        origin: envelope.origin.to_string(),
        sender: envelope.sender.to_string(),
        recipient: envelope.recipient.to_string(),
        pattern: envelope.pattern.to_string(),
        builtin: envelope.builtin.to_string(),
        request: envelope.request.as_ref().map(|r| r.to_string()),
        context: envelope.context.to_string(),
        epoch: envelope.epoch.to_native(),
        counter: envelope.counter.to_native(),
        expires_at_ms: envelope.expires_at_ms.to_native(),
        ciphertext: envelope.ciphertext.to_vec(),
        signer: envelope.signer,
        signature: envelope.signature,
        event_hash: e.hash().to_hex(),
        event_seq: e.seq().0,
    })
}
