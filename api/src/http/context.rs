//! `/v1/context/{agent}…`: an agent's memory and knowledge over HTTP — the
//! operations of `stele context …`, run by the same code
//! (`crate::context_ops::execute`) on the daemon's one context service:
//!
//! - `GET /v1/context/{agent}?type=&now_ms=`: its live items, newest first;
//! - `GET /v1/context/{agent}/stats?now_ms=`: its counts;
//! - `POST /v1/context/{agent}/search`: what it may read, ranked (each
//!   search is journaled as an access, as a read of the CLI is);
//! - `POST /v1/context/{agent}/items`: store an item (201);
//! - `PATCH /v1/context/{agent}/items/{item}`: change an item;
//! - `POST /v1/context/{agent}/items/{item}/share`: share an item;
//! - `POST /v1/context/{agent}/feedback`: rate an item it may read;
//! - `POST /v1/context/{agent}/archive`: archive its old items.
//!
//! `{agent}` is the requester: the token's scope (read for show, stats and
//! search; operate for changes) lets the caller act, and the daemon's
//! policy set in force (`stele up --policies`, swapped by a policy reload
//! for the next operation) decides what that agent may read and write, with
//! the priority of its registered definition (`normal` when unregistered).
//! The answers are the documents `stele context … --json` prints.
//!
//! The service is the one `crate::context_cmd::service` shares per journal
//! and policy set: opened on the first request, then held for the life of
//! the server, so the daemon's reasoning runs (whose knowledge bridge asks
//! for the same one) and these routes see one folded store and one vector
//! index. Not here: the operations themselves (`crate::context_ops`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use stele_engine::context::{ContextError, ContextService};
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, JsonBody, OptionalJsonBody, PathParam, QueryParams};
use crate::context_ops::{
    self, ArchiveRequest, FeedbackRequest, Op, SearchRequest, ShareRequest, StoreRequest, UpdateRequest,
};

/// Largest body of a store or an update: an item's content at its limit,
/// JSON-escaped, with its tags.
pub const MAX_ITEM_BODY_BYTES: usize = 2 * stele_engine::context::ops::MAX_CONTENT_BYTES + 16 * 1024;
/// Largest body of a search: a query as long as an item, escaped.
pub const MAX_SEARCH_BODY_BYTES: usize = MAX_ITEM_BODY_BYTES;
/// Largest body of a share, feedback or archive (a few names and numbers).
pub const MAX_SMALL_BODY_BYTES: usize = 4 * 1024;

/// The daemon's context service, opened on first use.
#[derive(Debug)]
pub struct Context {
    policies: PathBuf,
    service: tokio::sync::OnceCell<Arc<ContextService>>,
}

impl Context {
    /// Over the policy set of `policies` (the daemon's `--policies`).
    #[must_use]
    pub fn new(policies: PathBuf) -> Context {
        Context {
            policies,
            service: tokio::sync::OnceCell::new(),
        }
    }

    async fn service(
        &self,
        journal: &stele_journal::Journal,
        desk: &crate::up_runs::Desk,
    ) -> ApiResult<Arc<ContextService>> {
        self.service
            .get_or_try_init(|| async {
                // The daemon's live set: a policy reload reaches the next
                // operation.
                let gate = desk.live().map_err(|e| {
                    ApiError::unavailable(format!("the context store cannot be opened: {e:#}"))
                })?;
                let (journal, policies) = (journal.clone(), self.policies.clone());
                tokio::task::spawn_blocking(move || {
                    crate::context_cmd::service(journal, &policies, Some(gate))
                })
                    .await
                    .map_err(|e| ApiError::internal(&e.into()))?
                    .map_err(|e| {
                        ApiError::unavailable(format!(
                            "the context store cannot be opened: {e:#} (start `stele up --policies DIR` with a policy set that loads)"
                        ))
                    })
            })
            .await
            .cloned()
    }
}

/// `?type=&now_ms=` of `GET /v1/context/{agent}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// Only this memory type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub memory_type: Option<String>,
    /// The reader's clock, ms since the epoch (default the server's):
    /// importance is computed at it.
    pub now_ms: Option<u64>,
}

/// `?now_ms=` of `GET /v1/context/{agent}/stats`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// The clock archiving eligibility and importance are computed at, ms
    /// since the epoch (default the server's).
    pub now_ms: Option<u64>,
}

/// A failed context operation: bad input 400, the gate's denial 403 (with
/// its reason), no such item 404, a taken id 409, the embedder 502, the
/// rest ours.
fn context_error(e: &anyhow::Error) -> ApiError {
    let message = format!("{e:#}");
    match e.downcast_ref::<ContextError>() {
        Some(ContextError::Invalid { .. }) => ApiError::bad_request(message),
        Some(ContextError::Denied { .. }) => ApiError::new(StatusCode::FORBIDDEN, "denied", message),
        Some(ContextError::NotFound { .. }) => ApiError::new(StatusCode::NOT_FOUND, "unknown_item", message),
        Some(ContextError::Exists { .. }) => ApiError::new(StatusCode::CONFLICT, "exists", message),
        Some(ContextError::Embedding(_)) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "embedding_failed", message)
        }
        _ => ApiError::internal(e),
    }
}

/// Runs `op` of `agent` on the daemon's service.
async fn run(s: &AppState, agent: String, op: Op) -> ApiResult<Value> {
    let svc = s.context.service(&s.journal, &s.runs).await?;
    let requester = if op.needs_requester() {
        let (data, reader, name) = (s.data.clone(), s.journal.reader(), agent.clone());
        let r = tokio::task::spawn_blocking(move || context_ops::requester(&data, &reader, &name))
            .await
            .map_err(|e| ApiError::internal(&e.into()))?
            .map_err(|e| ApiError::internal(&e))?;
        Some(r)
    } else {
        None
    };
    // In a task of its own: a request timeout must not drop a change half
    // made (the service commits under its lock either way).
    tokio::spawn(async move { context_ops::execute(&svc, &agent, requester.as_ref(), op).await })
        .await
        .map_err(|e| ApiError::internal(&e.into()))?
        .map_err(|e| context_error(&e))
}

/// An agent's live items, newest first, each with its importance now
/// (`stele context show AGENT --json`). Reads nothing into the journal; an
/// agent without items has none.
#[utoipa::path(get, path = "/v1/context/{agent}", tag = "context",
    params(("agent" = String, Path, description = "The agent"), ShowQuery),
    responses((status = 200, description = "`{agent, seq, items: [{owner, id, memory_type, level, content, tags, importance_permille, …, importance}]}`", body = Object),
              (status = 400, description = "A malformed agent name, memory type or query parameter", body = ErrorBody),
              (status = 503, description = "The context store cannot be opened (no policy set)", body = ErrorBody)))]
pub async fn show(
    State(s): State<AppState>,
    PathParam(agent): PathParam<String>,
    QueryParams(q): QueryParams<ShowQuery>,
) -> ApiResult<Json<Value>> {
    let op = Op::Show {
        memory_type: q.memory_type,
        now_ms: q.now_ms,
    };
    run(&s, agent, op).await.map(Json)
}

/// An agent's counts: items, bytes, types, archiving eligibility, grants,
/// archives (`stele context stats AGENT --json`).
#[utoipa::path(get, path = "/v1/context/{agent}/stats", tag = "context",
    params(("agent" = String, Path, description = "The agent"), StatsQuery),
    responses((status = 200, description = "`{agent, items, bytes, by_type, eligible_for_archive, embedded, grants_given, shared_with_me, archives, archived_items, archived_bytes, archived_compressed_bytes, mean_importance}`", body = Object),
              (status = 400, description = "A malformed agent name or query parameter", body = ErrorBody),
              (status = 503, description = "The context store cannot be opened (no policy set)", body = ErrorBody)))]
pub async fn stats(
    State(s): State<AppState>,
    PathParam(agent): PathParam<String>,
    QueryParams(q): QueryParams<StatsQuery>,
) -> ApiResult<Json<Value>> {
    run(&s, agent, Op::Stats { now_ms: q.now_ms }).await.map(Json)
}

/// Search what the agent may read — its own items, public ones, those
/// shared with it — ranked by relevance × importance (`stele context
/// search AGENT --json`). The gate's decisions and the access are
/// journaled on `context:<agent>`; a body may be omitted (every default).
#[utoipa::path(post, path = "/v1/context/{agent}/search", tag = "context",
    params(("agent" = String, Path, description = "The reading agent")),
    request_body(content = SearchRequest, content_type = "application/json"),
    responses((status = 200, description = "`{hits: [{key, owner, id, memory_type, score, relevance, importance, content, …}], mode, note}`", body = Object),
              (status = 400, description = "A malformed agent name, mode, limit, weight, time or memory type", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody)))]
pub async fn search(
    State(s): State<AppState>,
    PathParam(agent): PathParam<String>,
    OptionalJsonBody(body): OptionalJsonBody<SearchRequest>,
) -> ApiResult<Json<Value>> {
    run(&s, agent, Op::Search(body)).await.map(Json)
}

/// Store an item in the agent's context and embed it (`stele context
/// store`); answers its id.
#[utoipa::path(post, path = "/v1/context/{agent}/items", tag = "context",
    params(("agent" = String, Path, description = "The owner")),
    request_body(content = StoreRequest, content_type = "application/json"),
    responses((status = 201, description = "Stored: `{agent, id}`", body = Object),
              (status = 400, description = "A malformed agent name, id, type, level, importance, tag or content", body = ErrorBody),
              (status = 403, description = "The policy gate denied the write (the reason is named)", body = ErrorBody),
              (status = 409, description = "The agent already has an item with that id", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody),
              (status = 502, description = "Stored, but the embedder failed", body = ErrorBody)))]
pub async fn store(
    State(s): State<AppState>,
    PathParam(agent): PathParam<String>,
    JsonBody(body): JsonBody<StoreRequest>,
) -> ApiResult<Response> {
    let v = run(&s, agent, Op::Store(body)).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// Change an item of the agent: content (re-embedded), importance, memory
/// type (`stele context update`).
#[utoipa::path(patch, path = "/v1/context/{agent}/items/{item}", tag = "context",
    params(("agent" = String, Path, description = "The owner"),
           ("item" = String, Path, description = "The item id")),
    request_body(content = UpdateRequest, content_type = "application/json"),
    responses((status = 200, description = "Updated: `{updated: \"agent/item\"}`", body = Object),
              (status = 400, description = "A malformed name, importance, type or content", body = ErrorBody),
              (status = 403, description = "The policy gate denied the write", body = ErrorBody),
              (status = 404, description = "The agent has no such item", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody)))]
pub async fn update(
    State(s): State<AppState>,
    PathParam((agent, item)): PathParam<(String, String)>,
    JsonBody(changes): JsonBody<UpdateRequest>,
) -> ApiResult<Json<Value>> {
    run(&s, agent, Op::Update { item, changes }).await.map(Json)
}

/// Share an item of the agent with another agent at an access level no
/// less restrictive than the item's (`stele context share`).
#[utoipa::path(post, path = "/v1/context/{agent}/items/{item}/share", tag = "context",
    params(("agent" = String, Path, description = "The owner"),
           ("item" = String, Path, description = "The item id")),
    request_body(content = ShareRequest, content_type = "application/json"),
    responses((status = 200, description = "Shared: `{shared: \"agent/item\", with, level}`", body = Object),
              (status = 400, description = "A malformed name or level, sharing with the owner, or a level less restrictive than the item's", body = ErrorBody),
              (status = 403, description = "The policy gate denied it (e.g. secret items are never shared)", body = ErrorBody),
              (status = 404, description = "The agent has no such item", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody)))]
pub async fn share(
    State(s): State<AppState>,
    PathParam((agent, item)): PathParam<(String, String)>,
    JsonBody(grant): JsonBody<ShareRequest>,
) -> ApiResult<Json<Value>> {
    run(&s, agent, Op::Share { item, grant }).await.map(Json)
}

/// Rate an item the agent may read, from -1 to 1 (`stele context
/// feedback`).
#[utoipa::path(post, path = "/v1/context/{agent}/feedback", tag = "context",
    params(("agent" = String, Path, description = "The agent giving it")),
    request_body(content = FeedbackRequest, content_type = "application/json"),
    responses((status = 200, description = "Recorded: `{feedback: \"owner/id\", score}`", body = Object),
              (status = 400, description = "A malformed name, an item not given as owner/id, a score outside -1..1", body = ErrorBody),
              (status = 403, description = "The agent may not read that item (the reason is named)", body = ErrorBody),
              (status = 404, description = "The owner has no such item", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody)))]
pub async fn feedback(
    State(s): State<AppState>,
    PathParam(agent): PathParam<String>,
    JsonBody(body): JsonBody<FeedbackRequest>,
) -> ApiResult<Json<Value>> {
    run(&s, agent, Op::Feedback(body)).await.map(Json)
}

/// Archive the agent's items stored before a time (default: those past
/// their type's retention); they leave the live store, compressed into the
/// journal (`stele context archive`). A body may be omitted.
#[utoipa::path(post, path = "/v1/context/{agent}/archive", tag = "context",
    params(("agent" = String, Path, description = "The owner")),
    request_body(content = ArchiveRequest, content_type = "application/json"),
    responses((status = 200, description = "Archived: `{agent, archived}` (how many)", body = Object),
              (status = 400, description = "A malformed name or time", body = ErrorBody),
              (status = 403, description = "The policy gate denied it", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody)))]
pub async fn archive(
    State(s): State<AppState>,
    PathParam(agent): PathParam<String>,
    OptionalJsonBody(body): OptionalJsonBody<ArchiveRequest>,
) -> ApiResult<Json<Value>> {
    run(&s, agent, Op::Archive(body)).await.map(Json)
}
