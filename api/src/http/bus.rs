//! `/v1/bus/…`: the daemon's bus over HTTP — send, publish, ask and stats,
//! the operations of `stele bus send|publish|ask|stats`, run by the same
//! handler as its unix socket (`crate::bus_cmd::handle`):
//!
//! - `POST /v1/bus/send`: a direct message (to `agent` or `agent@instance`);
//! - `POST /v1/bus/publish`: a message to a topic's subscribers (here, or
//!   a peer's with `topic@instance`); send and publish may wait `wait_ms`
//!   for room in a full mailbox;
//! - `POST /v1/bus/ask`: a request, answered with its response (or 504 when
//!   none comes within `timeout_ms`, which is at most `[http]
//!   request_timeout`);
//! - `GET /v1/bus/stats`: counters, mailboxes, subscriptions, peers.
//!
//! The bus runs only when `[bus] policies` is configured; without it these
//! routes answer 409 `bus_not_enabled` saying so. `from` is the sending
//! agent: the operate scope lets the caller send as any agent, and the
//! bus's Cedar gate (`message_send`) and rate limits decide for that agent.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use stele_engine::bus::{Bus, BusError, RejectCode};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, JsonBody};
use crate::bus_cmd::Request;

/// Largest body of a send, publish or ask: a payload at the bus's largest
/// limit, JSON-escaped (the bus refuses payloads over `[bus]
/// max_payload_bytes` itself, with 413).
pub const MAX_BUS_BODY_BYTES: usize = 2 * 1024 * 1024;
/// How long an ask waits by default (as `stele bus ask`).
pub const DEFAULT_ASK_TIMEOUT_MS: u64 = 30_000;

/// A direct message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// The sending agent.
    pub from: String,
    /// The recipient: `agent`, or `agent@instance` for a peer.
    pub to: String,
    /// The payload (text; sealed with AES-256-GCM on the bus).
    pub message: String,
    /// Its lifetime, ms (default `[bus] message_ttl`).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// When the mailbox is full, wait up to this many ms for room (in turn
    /// with other waiting senders; default 0: refused at once; at most 1 s
    /// under `[http] request_timeout`).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// A message to a topic.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// The sending agent.
    pub from: String,
    /// The topic (`a.b.c`, or `a.b.c@instance` for a peer's); every agent
    /// subscribed to a matching pattern gets it.
    pub topic: String,
    /// The payload (text).
    pub message: String,
    /// When a subscriber's mailbox is full, wait up to this many ms for
    /// room (as for a send).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// A request that waits for its response.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    /// The asking agent.
    pub from: String,
    /// The agent asked (`agent` or `agent@instance`).
    pub to: String,
    /// The question (text).
    pub message: String,
    /// How long to wait for the response, ms (default 30000; at most
    /// `[http] request_timeout`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn bus(s: &AppState) -> ApiResult<Bus> {
    s.bus.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "bus_not_enabled",
            "this stele up runs no bus: set `[bus] policies = \"DIR\"` (the Cedar policies of its message_send gate) in the config and restart `stele up`",
        )
    })
}

/// A failed bus operation, by what the bus said.
fn bus_error(e: &anyhow::Error) -> ApiError {
    let message = format!("{e:#}");
    let Some(b) = e.downcast_ref::<BusError>() else {
        return ApiError::internal(e);
    };
    let (status, code) = match b {
        BusError::Rejected { code, .. } => match code {
            RejectCode::PolicyDenied => (StatusCode::FORBIDDEN, "policy_denied"),
            RejectCode::RateLimited => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                e.retry_after_s = Some(1);
                return e;
            }
            RejectCode::Oversize => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            RejectCode::Misaddressed => (StatusCode::NOT_FOUND, "misaddressed"),
            RejectCode::MailboxFull => (StatusCode::CONFLICT, "mailbox_full"),
            other => (StatusCode::UNPROCESSABLE_ENTITY, other.name()),
        },
        BusError::Invalid(m) if m.starts_with("no agent named") => (StatusCode::NOT_FOUND, "unknown_agent"),
        BusError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        BusError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "ask_timeout"),
        BusError::Peer { .. } => (StatusCode::BAD_GATEWAY, "peer_unreachable"),
        BusError::Stopped => return ApiError::unavailable(message),
        _ => return ApiError::internal(e),
    };
    ApiError::new(status, code, message)
}

/// A `wait_ms` checked against the request timeout: the send must be
/// decided before the HTTP request itself times out.
fn wait_ms(s: &AppState, wait_ms: Option<u64>) -> ApiResult<Option<u64>> {
    let ceiling = s.request_timeout.saturating_sub(Duration::from_secs(1));
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    match wait_ms {
        Some(w) if w > ceiling_ms => Err(ApiError::bad_request(format!(
            "wait_ms is {w}; it must be at most {ceiling_ms} (1 s under [http] request_timeout)"
        ))),
        w => Ok(w),
    }
}

/// Hands `request` to the bus's own handler, in a task of its own (a
/// request timeout must not drop a send half done).
async fn call(bus: Bus, request: Request) -> ApiResult<Json<Value>> {
    tokio::spawn(async move { crate::bus_cmd::handle(&bus, request).await })
        .await
        .map_err(|e| ApiError::internal(&e.into()))?
        .map(Json)
        .map_err(|e| bus_error(&e))
}

/// Send a direct message (`stele bus send --json`).
#[utoipa::path(post, path = "/v1/bus/send", tag = "bus",
    request_body(content = SendBody, content_type = "application/json"),
    responses((status = 200, description = "Accepted and journaled: `{id, seq, hash, delivered}`", body = Object),
              (status = 400, description = "A malformed agent or address", body = ErrorBody),
              (status = 403, description = "The bus's policy gate denied the message (the reason is named)", body = ErrorBody),
              (status = 404, description = "No such sender or recipient here", body = ErrorBody),
              (status = 409, description = "The bus is not enabled, or the recipient's mailbox is full", body = ErrorBody),
              (status = 413, description = "The body or payload is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape, or another refusal (its code says which)", body = ErrorBody),
              (status = 429, description = "The sender is over its rate limit", body = ErrorBody)))]
pub async fn send(State(s): State<AppState>, JsonBody(b): JsonBody<SendBody>) -> ApiResult<Json<Value>> {
    let bus = bus(&s)?;
    call(
        bus,
        Request::Send {
            from: b.from,
            to: b.to,
            message: b.message,
            ttl_ms: b.ttl_ms,
            wait_ms: wait_ms(&s, b.wait_ms)?,
        },
    )
    .await
}

/// Publish to a topic (`stele bus publish --json`).
#[utoipa::path(post, path = "/v1/bus/publish", tag = "bus",
    request_body(content = PublishBody, content_type = "application/json"),
    responses((status = 200, description = "Accepted and journaled: `{id, seq, hash, delivered}` (the subscribers it reached)", body = Object),
              (status = 400, description = "A malformed agent or topic", body = ErrorBody),
              (status = 403, description = "The bus's policy gate denied the message", body = ErrorBody),
              (status = 404, description = "No such sender here", body = ErrorBody),
              (status = 409, description = "The bus is not enabled", body = ErrorBody),
              (status = 413, description = "The body or payload is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape, or another refusal", body = ErrorBody),
              (status = 429, description = "The sender is over its rate limit", body = ErrorBody)))]
pub async fn publish(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<PublishBody>,
) -> ApiResult<Json<Value>> {
    let bus = bus(&s)?;
    call(
        bus,
        Request::Publish {
            from: b.from,
            topic: b.topic,
            message: b.message,
            wait_ms: wait_ms(&s, b.wait_ms)?,
        },
    )
    .await
}

/// Send a request and wait for its response (`stele bus ask --json`).
#[utoipa::path(post, path = "/v1/bus/ask", tag = "bus",
    request_body(content = AskBody, content_type = "application/json"),
    responses((status = 200, description = "The response: `{id, from, pattern, request, text, …}`", body = Object),
              (status = 400, description = "A malformed agent, or a timeout of 0 or over [http] request_timeout", body = ErrorBody),
              (status = 403, description = "The bus's policy gate denied the request", body = ErrorBody),
              (status = 404, description = "No such sender or recipient here", body = ErrorBody),
              (status = 409, description = "The bus is not enabled, or the recipient's mailbox is full", body = ErrorBody),
              (status = 413, description = "The body or payload is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape, or another refusal", body = ErrorBody),
              (status = 429, description = "The sender is over its rate limit", body = ErrorBody),
              (status = 504, description = "No response came within timeout_ms (a MessageExpired is journaled)", body = ErrorBody)))]
pub async fn ask(State(s): State<AppState>, JsonBody(b): JsonBody<AskBody>) -> ApiResult<Json<Value>> {
    let bus = bus(&s)?;
    let timeout_ms = b.timeout_ms.unwrap_or(DEFAULT_ASK_TIMEOUT_MS);
    // The response must come back before the request itself times out.
    let ceiling = s.request_timeout.saturating_sub(Duration::from_secs(1));
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    if timeout_ms == 0 || timeout_ms > ceiling_ms {
        return Err(ApiError::bad_request(format!(
            "timeout_ms is {timeout_ms}; it must be from 1 to {ceiling_ms} (1 s under [http] request_timeout)"
        )));
    }
    call(
        bus,
        Request::Ask {
            from: b.from,
            to: b.to,
            message: b.message,
            timeout_ms,
        },
    )
    .await
}

/// The bus's counters, mailboxes, subscriptions, open requests and peers
/// (`stele bus stats --json`).
#[utoipa::path(get, path = "/v1/bus/stats", tag = "bus",
    responses((status = 200, description = "The bus's stats", body = Object),
              (status = 409, description = "The bus is not enabled", body = ErrorBody)))]
pub async fn stats(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let bus = bus(&s)?;
    call(bus, Request::Stats).await
}
