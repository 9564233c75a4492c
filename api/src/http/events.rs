//! Events over HTTP: a page of the journal (`GET /v1/events`, filtered by
//! seq range, stream, run and kind, with cursor pagination), one event
//! (`GET /v1/events/{seq}`), and the live feed over server-sent events
//! (`GET /v1/events/stream`), resumable with `Last-Event-ID`. One shared
//! [`Feed`] per daemon follows the journal and renders each event's frame
//! once for every stream; a stream catches up (or, having fallen behind the
//! feed, recovers) from the journal with its own reader and tells the seam
//! by seq, so a client sees every event once, in order, with no gap.
//! Reading only: nothing here appends.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stele_journal::{EventBody, EventRef, Follow, Reader, RunId, Seq, StreamId};
use tokio::sync::broadcast;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, PathParam, QueryParams};

/// Events on one page by default.
pub const DEFAULT_PAGE: u64 = 100;
/// Most events on one page.
pub const MAX_PAGE: u64 = 1000;
/// Most events one page request reads while filtering by kind; past it the
/// page ends early with a cursor, so no request scans without bound.
pub const MAX_SCAN: u64 = 10_000;

/// The filters of `GET /v1/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// First seq (default 1).
    pub from: Option<u64>,
    /// Last seq (default: the head).
    pub to: Option<u64>,
    /// Only this stream (not with `run`).
    pub stream: Option<String>,
    /// Only this run.
    pub run: Option<String>,
    /// Only this kind (`task_finished`, …).
    pub kind: Option<String>,
    /// Most events on the page (1–1000, default 100).
    pub limit: Option<u64>,
    /// Where to go on: `next_cursor` of the previous page (overrides `from`).
    pub cursor: Option<String>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// The events, in seq order, as `stele events --json` prints them.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// Pass as `cursor` for the next page; null when the range is done (up
    /// to the head as of this page: follow the live stream from there).
    pub next_cursor: Option<String>,
    /// The journal's head when the page was read.
    pub head: u64,
}

/// A checked filter.
struct Filter {
    from: Seq,
    to: Seq,
    stream: Option<StreamId>,
    run: Option<RunId>,
    kind: Option<&'static str>,
}

fn kind_of(k: &str) -> ApiResult<&'static str> {
    EventBody::KINDS.iter().copied().find(|x| *x == k).ok_or_else(|| {
        ApiError::bad_request(format!(
            "kind {k:?} is not an event kind; kinds: {}",
            EventBody::KINDS.join(", ")
        ))
    })
}

fn filter(q: &EventsQuery, head: Seq) -> ApiResult<Filter> {
    if q.stream.is_some() && q.run.is_some() {
        return Err(ApiError::bad_request("give stream or run, not both"));
    }
    let from = match &q.cursor {
        Some(c) => c
            .parse::<u64>()
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| ApiError::bad_request(format!("cursor {c:?} is not one this server gave")))?,
        None => q.from.unwrap_or(1).max(1),
    };
    let to = q.to.map_or(head, |t| Seq(t).min(head));
    if let Some(t) = q.to
        && t < q.from.unwrap_or(1)
    {
        return Err(ApiError::bad_request(format!(
            "to ({t}) is before from ({})",
            q.from.unwrap_or(1)
        )));
    }
    Ok(Filter {
        from: Seq(from),
        to,
        stream: q
            .stream
            .clone()
            .map(StreamId::new)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("stream: {e}")))?,
        run: q
            .run
            .clone()
            .map(RunId::new)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("run: {e}")))?,
        kind: q.kind.as_deref().map(kind_of).transpose()?,
    })
}

fn event_json(e: &EventRef) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(e.to_event()?)?)
}

/// A page of the journal.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "A page of events", body = EventsPage),
              (status = 400, description = "A bad filter or cursor", body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Json<EventsPage>> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1-{MAX_PAGE}, not {limit}"
        )));
    }
    let reader = s.journal.reader();
    let head = reader.head().seq;
    let f = filter(&q, head)?;
    tokio::task::spawn_blocking(move || page(&reader, &f, limit, head))
        .await
        .map_err(|e| ApiError::internal(&e.into()))?
        .map(Json)
        .map_err(|e| ApiError::internal(&e))
}

fn page(reader: &stele_journal::Reader, f: &Filter, limit: u64, head: Seq) -> anyhow::Result<EventsPage> {
    let iter: Box<dyn Iterator<Item = stele_journal::Result<EventRef>>> = match (&f.stream, &f.run) {
        (Some(st), _) => Box::new(reader.stream(st, f.from)),
        (None, Some(r)) => Box::new(reader.run(r, f.from)),
        (None, None) => Box::new(reader.range(f.from, f.to)),
    };
    let mut events = Vec::new();
    let mut next = None;
    for (scanned, e) in (0u64..).zip(iter) {
        let e = e?;
        if e.seq() > f.to {
            break;
        }
        if events.len() as u64 == limit || scanned == MAX_SCAN {
            next = Some(e.seq().0.to_string());
            break;
        }
        if f.kind.is_none_or(|k| e.body().kind() == k) {
            events.push(event_json(&e)?);
        }
    }
    Ok(EventsPage {
        events,
        next_cursor: next,
        head: head.0,
    })
}

/// One event.
#[utoipa::path(get, path = "/v1/events/{seq}", tag = "events",
    params(("seq" = u64, Path, description = "The event's seq")),
    responses((status = 200, description = "The event", body = Object),
              (status = 400, description = "Not a seq", body = ErrorBody),
              (status = 404, description = "No such event", body = ErrorBody)))]
pub async fn one(State(s): State<AppState>, PathParam(seq): PathParam<u64>) -> ApiResult<Json<Value>> {
    let reader = s.journal.reader();
    let head = reader.head().seq;
    if seq == 0 || seq > head.0 {
        return Err(ApiError::not_found(format!(
            "no event {seq}: the journal has {} events",
            head.0
        )));
    }
    let e = reader
        .get(Seq(seq))
        .map_err(|e| ApiError::internal(&e.into()))?
        .ok_or_else(|| ApiError::not_found(format!("no event {seq}")))?;
    event_json(&e).map(Json).map_err(|e| ApiError::internal(&e))
}

/// Where a live stream starts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// First seq (default: after the head). `Last-Event-ID` overrides it.
    pub from: Option<u64>,
    /// Only this stream.
    pub stream: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
}

/// Most events in one message of the shared feed.
const FEED_BATCH_EVENTS: usize = 256;
/// Bytes of SSE text after which a message of the shared feed is closed
/// (it ends with the event that crosses it).
const FEED_BATCH_BYTES: usize = 64 << 10;
/// Bytes of SSE text after which a stream writes what it has gathered
/// (several frames go out as one body chunk).
const STREAM_WRITE_BYTES: usize = 256 << 10;
/// Events a stream reads from the journal per step while catching up.
const CATCH_UP_EVENTS: u64 = 256;
/// Idle time after which a stream sends a keep-alive comment (axum's
/// `KeepAlive` default).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The keep-alive comment (axum's `Event::DEFAULT_KEEP_ALIVE`).
const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";

/// Live events as server-sent events: `id` is the seq, `data` the event
/// JSON. Reconnect with `Last-Event-ID` to resume after the last one seen.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq")),
    responses((status = 200, description = "text/event-stream of events", content_type = "text/event-stream", body = String),
              (status = 400, description = "A bad filter or Last-Event-ID", body = ErrorBody),
              (status = 429, description = "Too many open streams", body = ErrorBody)))]
pub async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<StreamQuery>,
) -> ApiResult<Response> {
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not a seq"))?,
        ),
        None => None,
    };
    let filter = StreamFilter {
        stream: q
            .stream
            .map(StreamId::new)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("stream: {e}")))?,
        kind: q.kind.as_deref().map(kind_of).transpose()?,
    };
    let permit = Arc::clone(&s.streams).try_acquire_owned().map_err(|_| {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many live event streams are open ([http] max_streams)",
        );
        e.retry_after_s = Some(5);
        e
    })?;
    // Subscribe before reading the head: every event past the head read
    // below is then either in the feed or found missing by seq.
    let rx = s.feed.subscribe();
    let reader = s.journal.reader();
    let head = reader.head().seq;
    let from = match (resume, q.from) {
        (Some(last), _) => Seq(last.saturating_add(1)),
        (None, Some(f)) => Seq(f.max(1)),
        (None, None) => head.next(),
    };
    let metrics = Arc::clone(&s.metrics);
    metrics.sse_clients().inc();
    let live = Live {
        rx: Some(rx),
        reader,
        filter,
        next: from,
        disk_to: head,
        pending: None,
        done: false,
        last_write: Instant::now(),
        guard: StreamGuard {
            metrics,
            _permit: permit,
        },
    };
    let body = futures::stream::unfold(live, |mut live| async move {
        let chunk = live.chunk().await?;
        live.last_write = Instant::now();
        Some((Ok::<_, Infallible>(chunk), live))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// A stream's query filters.
struct StreamFilter {
    stream: Option<StreamId>,
    kind: Option<&'static str>,
}

impl StreamFilter {
    fn admits(&self, stream: &str, kind: &str) -> bool {
        self.stream.as_ref().is_none_or(|s| s.as_str() == stream) && self.kind.is_none_or(|k| k == kind)
    }
}

/// Appends `e`'s SSE frame to `out`, byte for byte as axum's
/// `Event::default().id(seq).data(json)` renders it, or as
/// `.event("error").data(…)` when the event cannot be rendered.
fn frame(e: &EventRef, out: &mut Vec<u8>) {
    match event_json(e).and_then(|v| Ok(serde_json::to_string(&v)?)) {
        Ok(data) => {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(e.seq().0.to_string().as_bytes());
            out.push(b'\n');
            data_field(out, &data);
        }
        Err(err) => error_frame(out, &format!("event {}: {err:#}", e.seq().0)),
    }
}

/// `event: error` with `message` as its data.
fn error_frame(out: &mut Vec<u8>, message: &str) {
    out.extend_from_slice(b"event: error\n");
    data_field(out, message);
}

/// The data field and the blank line ending the frame: like axum, a
/// `data: ` after every line break in `text`, nothing for empty text.
fn data_field(out: &mut Vec<u8>, text: &str) {
    if !text.is_empty() {
        out.extend_from_slice(b"data: ");
        let mut rest = text.as_bytes();
        while let Some(i) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            out.extend_from_slice(&rest[..=i]);
            out.extend_from_slice(b"data: ");
            rest = &rest[i + 1..];
        }
        out.extend_from_slice(rest);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// One message of the shared feed.
#[derive(Debug)]
enum FeedMsg {
    /// Consecutive committed events, each rendered once.
    Events(FeedBatch),
    /// The follower could not read event `at` and stopped.
    Failed { at: Seq, message: String },
}

/// Consecutive events: their SSE frames back to back in `text`, and what
/// the streams' filters look at.
#[derive(Debug)]
struct FeedBatch {
    text: Bytes,
    events: Vec<FeedEvent>,
}

#[derive(Debug)]
struct FeedEvent {
    seq: Seq,
    /// Where the event's frame ends in the batch's text (it starts where
    /// the previous one ends).
    end: usize,
    stream: Box<str>,
    kind: &'static str,
}

/// The shared live feed of one daemon: a single follower of the journal,
/// started by the first stream and stopped when no stream is left, renders
/// each committed event once and broadcasts the text to every stream.
///
/// The broadcast holds `[http] sse_buffer` messages (of at most
/// [`FEED_BATCH_EVENTS`] events or about [`FEED_BATCH_BYTES`]), so memory
/// stays bounded whatever the clients do: a stream that falls further
/// behind loses messages from the feed (never events: it notices the gap by
/// seq and reads it from the journal, then goes on from the feed). Sending
/// never waits for a stream, so a slow client slows neither the others nor
/// the journal's writer.
#[derive(Debug)]
pub struct Feed {
    shared: Arc<FeedShared>,
}

#[derive(Debug)]
struct FeedShared {
    reader: Reader,
    capacity: usize,
    /// The running follower; subscribing and the follower's decision to
    /// stop (no stream left) both hold this lock.
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    tx: broadcast::Sender<Arc<FeedMsg>>,
    task: tokio::task::AbortHandle,
}

impl Feed {
    /// A feed over `reader` keeping `capacity` messages (at least one) for
    /// streams that are behind. Nothing runs until the first stream.
    #[must_use]
    pub fn new(reader: Reader, capacity: usize) -> Feed {
        Feed {
            shared: Arc::new(FeedShared {
                reader,
                capacity: capacity.max(1),
                running: Mutex::new(None),
            }),
        }
    }

    /// A receiver of every message sent from now on, starting the follower
    /// (from after the head) if none runs. Needs a tokio runtime.
    fn subscribe(&self) -> broadcast::Receiver<Arc<FeedMsg>> {
        let mut running = self.shared.lock();
        if let Some(r) = running.as_ref() {
            return r.tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(self.shared.capacity);
        let from = self.shared.reader.head().seq.next();
        let follow = self.shared.reader.follow(from);
        let task = tokio::spawn(follow_journal(Arc::clone(&self.shared), tx.clone(), follow, from));
        *running = Some(Running {
            tx,
            task: task.abort_handle(),
        });
        rx
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(r) = self.shared.lock().take() {
            r.task.abort();
        }
    }
}

impl FeedShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops the follower of `tx` if no stream is left; true if it stopped.
    fn stop_if_idle(&self, tx: &broadcast::Sender<Arc<FeedMsg>>) -> bool {
        let mut running = self.lock();
        if tx.receiver_count() > 0 {
            return false;
        }
        if running.as_ref().is_some_and(|r| r.tx.same_channel(tx)) {
            *running = None;
        }
        true
    }

    /// Forgets the follower of `tx`, which is ending: once its last sender
    /// is gone the streams see the feed closed.
    fn forget(&self, tx: &broadcast::Sender<Arc<FeedMsg>>) {
        let mut running = self.lock();
        if running.as_ref().is_some_and(|r| r.tx.same_channel(tx)) {
            *running = None;
        }
    }
}

/// The follower: reads each committed event once, renders its frame, and
/// broadcasts batches of what is ready. Ends when the journal's writer has
/// stopped (the streams then finish from the journal), when reading fails
/// (the streams are told), or when no stream is left.
async fn follow_journal(
    shared: Arc<FeedShared>,
    tx: broadcast::Sender<Arc<FeedMsg>>,
    mut follow: Follow,
    from: Seq,
) {
    // The seq the follower reads next.
    let mut next = from;
    loop {
        let Some(first) = follow.next().await else {
            shared.forget(&tx);
            return;
        };
        let mut text = Vec::new();
        let mut events = Vec::new();
        let mut failed = None;
        let mut item = Some(first);
        while let Some(e) = item.take() {
            match e {
                Ok(e) => {
                    next = e.seq().next();
                    frame(&e, &mut text);
                    events.push(FeedEvent {
                        seq: e.seq(),
                        end: text.len(),
                        stream: e.stream().into(),
                        kind: e.body().kind(),
                    });
                }
                Err(err) => failed = Some(err),
            }
            if failed.is_none() && events.len() < FEED_BATCH_EVENTS && text.len() < FEED_BATCH_BYTES {
                // Whatever is ready goes in the same message.
                item = follow.next().now_or_never().flatten();
            }
        }
        if !events.is_empty()
            && tx
                .send(Arc::new(FeedMsg::Events(FeedBatch {
                    text: Bytes::from(text),
                    events,
                })))
                .is_err()
            && shared.stop_if_idle(&tx)
        {
            return;
        }
        if let Some(err) = failed {
            let _ = tx.send(Arc::new(FeedMsg::Failed {
                at: next,
                message: err.to_string(),
            }));
            shared.forget(&tx);
            return;
        }
    }
}

/// One client's stream: catches up from the journal with its own reader,
/// then writes the shared feed's text, filtered; a gap in the feed (it
/// fell behind, or joined while the follower was behind) is read from the
/// journal, so every admitted event goes out once, in seq order.
struct Live {
    /// None once the feed closed.
    rx: Option<broadcast::Receiver<Arc<FeedMsg>>>,
    reader: Reader,
    filter: StreamFilter,
    /// The next seq to consider: every event before it went out (or was
    /// filtered out).
    next: Seq,
    /// Read from the journal through this seq before taking from the feed.
    disk_to: Seq,
    /// A message taken from the feed that waits for a gap to be read.
    pending: Option<Arc<FeedMsg>>,
    /// Ends after what is gathered (and `disk_to`) is written.
    done: bool,
    last_write: Instant,
    guard: StreamGuard,
}

/// What the stream writes next, gathered from several places.
#[derive(Default)]
struct Out {
    parts: Vec<Bytes>,
    len: usize,
}

impl Out {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push(b);
        }
    }

    /// One chunk: the part itself if there is one (no copy), else the parts
    /// joined.
    fn finish(mut self) -> Bytes {
        if self.parts.len() == 1 {
            return self.parts.pop().unwrap_or_default();
        }
        let mut v = Vec::with_capacity(self.len);
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        Bytes::from(v)
    }
}

/// What waiting on the feed gave.
enum Recv {
    Msg(Arc<FeedMsg>),
    /// Nothing ready (only when not waiting).
    Empty,
    /// Messages were lost for this stream; the next one shows the gap.
    Lagged,
    Closed,
    KeepAlive,
}

impl Live {
    /// The next body chunk: what is ready, several frames at once; `None`
    /// at the end.
    async fn chunk(&mut self) -> Option<Bytes> {
        let mut out = Out::default();
        loop {
            if out.len >= STREAM_WRITE_BYTES {
                return Some(out.finish());
            }
            if self.next <= self.disk_to {
                self.read_journal(&mut out);
                continue;
            }
            if self.done {
                return (out.len > 0).then(|| out.finish());
            }
            let msg = match self.pending.take() {
                Some(m) => m,
                None => match self.recv(out.len == 0).await {
                    Recv::Msg(m) => m,
                    Recv::Empty => return Some(out.finish()),
                    Recv::KeepAlive => return Some(Bytes::from_static(KEEP_ALIVE_FRAME)),
                    Recv::Lagged => {
                        self.guard.metrics.sse_lagged().inc();
                        continue;
                    }
                    Recv::Closed => {
                        // The writer stopped: the journal holds the rest.
                        self.rx = None;
                        self.disk_to = self.reader.head().seq;
                        self.done = true;
                        continue;
                    }
                },
            };
            match &*msg {
                FeedMsg::Events(b) => {
                    let first = b.events.first().map_or(self.next, |e| e.seq);
                    if first > self.next {
                        // A gap: read it, then take this message.
                        self.disk_to = Seq(first.0 - 1);
                        self.pending = Some(msg);
                        continue;
                    }
                    self.take(b, &mut out);
                }
                FeedMsg::Failed { at, message } => {
                    if *at > self.next {
                        self.disk_to = Seq(at.0 - 1);
                        self.pending = Some(msg);
                        continue;
                    }
                    let mut v = Vec::new();
                    error_frame(&mut v, message);
                    out.push(Bytes::from(v));
                    self.done = true;
                }
            }
        }
    }

    async fn recv(&mut self, wait: bool) -> Recv {
        let Some(rx) = self.rx.as_mut() else {
            return Recv::Closed;
        };
        let got = if wait {
            match tokio::time::timeout_at(self.last_write + KEEP_ALIVE, rx.recv()).await {
                Ok(got) => got,
                Err(_) => return Recv::KeepAlive,
            }
        } else {
            match rx.try_recv() {
                Ok(m) => Ok(m),
                Err(broadcast::error::TryRecvError::Empty) => return Recv::Empty,
                Err(broadcast::error::TryRecvError::Lagged(n)) => Err(broadcast::error::RecvError::Lagged(n)),
                Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
            }
        };
        match got {
            Ok(m) => Recv::Msg(m),
            Err(broadcast::error::RecvError::Lagged(_)) => Recv::Lagged,
            Err(broadcast::error::RecvError::Closed) => Recv::Closed,
        }
    }

    /// The batch's events from `next` on that the filter admits, as slices
    /// of the shared text (runs of admitted events as one slice).
    fn take(&mut self, b: &FeedBatch, out: &mut Out) {
        let mut start = 0;
        let mut run: Option<(usize, usize)> = None;
        for e in &b.events {
            let begin = std::mem::replace(&mut start, e.end);
            if e.seq < self.next || !self.filter.admits(&e.stream, e.kind) {
                if let Some((a, z)) = run.take() {
                    out.push(b.text.slice(a..z));
                }
                continue;
            }
            run = Some(run.map_or((begin, e.end), |(a, _)| (a, e.end)));
        }
        if let Some((a, z)) = run {
            out.push(b.text.slice(a..z));
        }
        if let Some(last) = b.events.last() {
            self.next = self.next.max(last.seq.next());
        }
    }

    /// Up to [`CATCH_UP_EVENTS`] events from `next` through `disk_to` from
    /// the journal, rendered by this stream. A read failure is written as
    /// an error frame and ends the stream.
    fn read_journal(&mut self, out: &mut Out) {
        let to = Seq(self
            .disk_to
            .0
            .min(self.next.0.saturating_add(CATCH_UP_EVENTS - 1)));
        let from = self.next;
        let mut text = Vec::new();
        let mut failed = None;
        for e in self.reader.range(from, to) {
            match e {
                Ok(e) => {
                    if self.filter.admits(e.stream(), e.body().kind()) {
                        frame(&e, &mut text);
                    }
                    self.next = e.seq().next();
                }
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        if failed.is_none() && self.next <= to {
            failed = Some(format!(
                "events {}..={to} are committed but not all stored",
                self.next
            ));
        }
        if let Some(message) = failed {
            error_frame(&mut text, &message);
            self.done = true;
            self.disk_to = Seq::ZERO;
            self.pending = None;
        }
        out.push(Bytes::from(text));
    }
}

/// Holds a stream's slot and its gauge while the client is connected.
struct StreamGuard {
    metrics: Arc<super::metrics::Metrics>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.sse_clients().dec();
    }
}
