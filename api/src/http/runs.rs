//! `/v1/runs` changes: start a reasoning run, approve or reject a call a
//! run waits on. The runs are driven by the daemon's
//! [`Desk`](crate::up_runs::Desk); these handlers check the request, hand
//! it over and answer 202 with the run id (a start once its scheduler task
//! is placed and `RunStarted` durable; a decision once checked, its
//! continuation queued as a task) — follow the run with
//! `GET /v1/runs/{id}` (its `driving` field) or the live event stream
//! (`/v1/events/stream?run=`). Not here: reading runs (`handlers.rs`).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, JsonBody, PathParam};
use crate::up_runs::{DecideError, SlotError, StartError};

/// Largest run input accepted (bytes).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// A run to start: a registered agent by name, or an inline definition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The registered agent's name (or omit it and give `definition`).
    #[serde(default)]
    pub agent: Option<String>,
    /// An agent definition (TOML text), registered first unless the same
    /// text is registered.
    #[serde(default)]
    pub definition: Option<String>,
    /// What to ask it.
    pub input: String,
}

/// A run that was started (or continued).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunAccepted {
    /// The run id.
    pub run: String,
    /// Where to follow it.
    pub follow: String,
}

/// A decision on a call a run waits on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The call id (as `GET /v1/runs/{id}` lists under `awaiting`).
    pub call: String,
    /// Recorded with the decision.
    #[serde(default)]
    pub reason: Option<String>,
    /// Who decides, recorded when the API runs without tokens; with tokens
    /// the approver is the token's name.
    #[serde(default)]
    pub approver: Option<String>,
}

fn accepted(run: String) -> Response {
    let follow = format!("/v1/runs/{run}");
    (StatusCode::ACCEPTED, Json(RunAccepted { run, follow })).into_response()
}

fn refused(message: String) -> ApiError {
    let code = if message.starts_with("no run named") || message.starts_with("no agent named") {
        (StatusCode::NOT_FOUND, "unknown")
    } else if message.contains("has expired") {
        (StatusCode::GONE, "approval_expired")
    } else if message.contains("awaiting approval")
        || message.contains("has finished")
        || message.contains("is not parked")
    {
        (StatusCode::CONFLICT, "not_awaiting")
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, "rejected")
    };
    ApiError::new(code.0, code.1, message)
}

/// Start a reasoning run as a scheduler task of its agent: a task is
/// queued (`TaskQueued`, trigger `request run over HTTP: <input>`) and the
/// run begins when it is placed on a slot (priority, memory and CPU limits,
/// placement and preemption as for any task); it holds the slot while it
/// drives and frees it when it finishes or parks. The answer comes once the
/// task is placed and `RunStarted` is durable; while the agent has an
/// active task (one per agent) the start waits for it to end.
#[utoipa::path(post, path = "/v1/runs", tag = "runs",
    request_body(content = StartRun, content_type = "application/json"),
    responses((status = 202, description = "Started: its task is placed and RunStarted is durable; the run is being driven in that slot", body = RunAccepted),
              (status = 400, description = "Neither or both of agent and definition, an empty or too large input, a definition that does not parse", body = ErrorBody),
              (status = 404, description = "No such agent", body = ErrorBody),
              (status = 409, description = "The agent's task (one per agent at a time) stayed active for as long as a start waits, [http] request_timeout: code agent_busy", body = ErrorBody),
              (status = 422, description = "The agent cannot run here (not a reasoning agent, no policy set)", body = ErrorBody),
              (status = 503, description = "Too many requests wait for a slot (code queue_full), or the runtime is shutting down", body = ErrorBody)))]
pub async fn start(State(s): State<AppState>, JsonBody(body): JsonBody<StartRun>) -> ApiResult<Response> {
    if body.input.len() > MAX_INPUT_BYTES {
        return Err(ApiError::bad_request(format!(
            "the input is {} bytes; at most {MAX_INPUT_BYTES} are accepted",
            body.input.len()
        )));
    }
    let (agent, source) = match (&body.agent, &body.definition) {
        (Some(a), None) if !a.is_empty() => (a.clone(), None),
        (None, Some(d)) => (String::new(), Some(d.as_str())),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `agent` (a registered name) and `definition` (TOML text)",
            ));
        }
    };
    let source = source.map(str::to_owned);
    let desk = s.runs.clone();
    // In a task of its own: a request timeout must not drop a run half begun.
    let begun = tokio::spawn(async move {
        let def = desk
            .definition(&agent, source.as_deref())
            .await
            .map_err(StartError::Run)?;
        desk.start_requested(def, body.input).await
    })
    .await
    .map_err(|e| ApiError::internal(&e.into()))?;
    let run = begun.map_err(|e| match e {
        StartError::Slot(e) => slot_refused(&e),
        StartError::Run(e) => {
            let message = format!("{e:#}");
            if message.starts_with("no agent named") {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_agent", message)
            } else if e.downcast_ref::<stele_engine::agent::DefinitionError>().is_some() {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_definition", message)
            } else if message.contains("shutting down") {
                ApiError::unavailable(message)
            } else {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot_run", message)
            }
        }
    })?;
    Ok(accepted(run))
}

/// A request that got no scheduler slot.
fn slot_refused(e: &SlotError) -> ApiError {
    use stele_engine::runtime::RuntimeRejection as R;
    let message = e.to_string();
    match e {
        SlotError::Refused(R::Busy { .. }) => ApiError::new(StatusCode::CONFLICT, "agent_busy", message),
        SlotError::Refused(R::TooManyRequests { .. }) => {
            let mut e = ApiError::unavailable(message);
            e.code = "queue_full";
            e
        }
        SlotError::Refused(R::ShuttingDown) => {
            let mut e = ApiError::unavailable(message);
            e.code = "shutting_down";
            e
        }
        SlotError::Refused(R::Lifecycle(stele_engine::lifecycle::Rejection::UnknownAgent { .. })) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_agent", message)
        }
        SlotError::Refused(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot_run", message),
        SlotError::Gone(_) => ApiError::unavailable(message),
    }
}

async fn decide(
    s: &AppState,
    run: &str,
    caller: Option<Caller>,
    body: Decision,
    approved: bool,
) -> ApiResult<Response> {
    let approver = match caller {
        Some(c) if s.tokens.enabled() => c.name,
        _ => body
            .approver
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "anonymous".into()),
    };
    let reason = body.reason.unwrap_or_default();
    let (desk, id, call) = (s.runs.clone(), run.to_owned(), body.call);
    // In a task of its own: a request timeout must not drop a decision
    // half taken (an expiry it resolves first drives the run on).
    let decided = tokio::spawn(async move { desk.decide(&id, &call, approved, &approver, &reason).await })
        .await
        .map_err(|e| ApiError::internal(&e.into()))?;
    match decided {
        Ok(()) => Ok(accepted(run.to_owned())),
        Err(DecideError::Busy(m)) => Err(ApiError::new(StatusCode::CONFLICT, "run_busy", m)),
        Err(DecideError::Refused(e)) => Err(refused(format!("{e:#}"))),
    }
}

/// Approve a call a parked run waits on; the run goes on as a scheduler
/// task of its agent (`TaskQueued` with trigger `request continue …`, then
/// `TaskPlaced`), once the agent has no other active task and a slot fits.
#[utoipa::path(post, path = "/v1/runs/{id}/approve", tag = "runs",
    params(("id" = String, Path, description = "The run id (run-<n>)")),
    request_body(content = Decision, content_type = "application/json"),
    responses((status = 202, description = "Checked; the run goes on in a scheduler task of its agent (queued now, the decision journaled when placed)", body = RunAccepted),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "The run does not wait on that call, or is being driven now", body = ErrorBody),
              (status = 410, description = "The approval timed out (the run went on without it)", body = ErrorBody)))]
pub async fn approve(
    State(s): State<AppState>,
    PathParam(id): PathParam<String>,
    caller: Option<Extension<Caller>>,
    JsonBody(body): JsonBody<Decision>,
) -> ApiResult<Response> {
    decide(&s, &id, caller.map(|Extension(c)| c), body, true).await
}

/// Reject a call a parked run waits on; the run goes on without it, as a
/// scheduler task of its agent (queued and placed like an approval's).
#[utoipa::path(post, path = "/v1/runs/{id}/reject", tag = "runs",
    params(("id" = String, Path, description = "The run id (run-<n>)")),
    request_body(content = Decision, content_type = "application/json"),
    responses((status = 202, description = "Checked; the run goes on in a scheduler task of its agent (queued now, the decision journaled when placed)", body = RunAccepted),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "The run does not wait on that call, or is being driven now", body = ErrorBody),
              (status = 410, description = "The approval timed out (the run went on without it)", body = ErrorBody)))]
pub async fn reject(
    State(s): State<AppState>,
    PathParam(id): PathParam<String>,
    caller: Option<Extension<Caller>>,
    JsonBody(body): JsonBody<Decision>,
) -> ApiResult<Response> {
    decide(&s, &id, caller.map(|Extension(c)| c), body, false).await
}
