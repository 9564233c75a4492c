//! Events over HTTP: a page of the journal (`GET /v1/events`, filtered by
//! seq range, stream, run and kind, with cursor pagination), one event
//! (`GET /v1/events/{seq}`), and the live feed over server-sent events
//! (`GET /v1/events/stream`), resumable with `Last-Event-ID` and fed by the
//! journal's `follow()`, so a client sees every event once, in order, with
//! no gap. Reading only: nothing here appends.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stele_journal::{EventBody, EventRef, RunId, Seq, StreamId};
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
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let permit = Arc::clone(&s.streams).try_acquire_owned().map_err(|_| {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many live event streams are open ([http] max_streams)",
        );
        e.retry_after_s = Some(5);
        e
    })?;
    let reader = s.journal.reader();
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not a seq"))?,
        ),
        None => None,
    };
    let from = match (resume, q.from) {
        (Some(last), _) => last + 1,
        (None, Some(f)) => f.max(1),
        (None, None) => reader.head().seq.0 + 1,
    };
    let only_stream = q
        .stream
        .map(StreamId::new)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("stream: {e}")))?;
    let only_kind = q.kind.as_deref().map(kind_of).transpose()?;
    let follow = reader.follow(Seq(from));
    let metrics = Arc::clone(&s.metrics);
    metrics.sse_clients().inc();
    let guard = StreamGuard {
        metrics,
        _permit: permit,
    };
    let events = futures::stream::unfold((follow, guard), move |(mut follow, guard)| {
        let only_stream = only_stream.clone();
        async move {
            loop {
                match follow.next().await? {
                    Ok(e) => {
                        if only_stream.as_ref().is_some_and(|st| e.stream() != st.as_str())
                            || only_kind.is_some_and(|k| e.body().kind() != k)
                        {
                            continue;
                        }
                        let ev = match event_json(&e).and_then(|v| Ok(serde_json::to_string(&v)?)) {
                            Ok(data) => SseEvent::default().id(e.seq().0.to_string()).data(data),
                            Err(err) => SseEvent::default()
                                .event("error")
                                .data(format!("event {}: {err:#}", e.seq().0)),
                        };
                        return Some((Ok(ev), (follow, guard)));
                    }
                    Err(err) => {
                        // The journal failed; say so and end the stream.
                        let ev = SseEvent::default().event("error").data(err.to_string());
                        return Some((Ok(ev), (follow, guard)));
                    }
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
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
