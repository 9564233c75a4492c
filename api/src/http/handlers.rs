//! The `/v1` handlers for the runtime: status, agents, runs, shutdown.
//! Each is thin: it validates the request, asks the core (through
//! [`crate::up::Handle`]) or reads a projection, and shapes the answer.
//! Nothing here decides or appends by itself.

use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stele_engine::runtime::{RuntimeCommand, RuntimeRejection};
use stele_engine::{AgentDefinition, Rejection};
use stele_journal::Receipt;
use stele_projections::{RunsView, SnapshotStore, state_at};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, OptionalJsonBody, PathParam, body_error};

/// The runtime's state: head, agents by state, tasks, slots, NATS feed.
#[utoipa::path(get, path = "/v1/status", tag = "runtime",
    responses((status = 200, description = "The runtime's state", body = Object),
              (status = 503, description = "The runtime core stopped", body = ErrorBody)))]
pub async fn status(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    s.runtime
        .status()
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))
}

/// Every registered agent with its lifecycle state.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, description = "The agents", body = [Object]),
              (status = 503, description = "The runtime core stopped", body = ErrorBody)))]
pub async fn agents(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    s.runtime
        .agents()
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))
}

/// One agent.
#[utoipa::path(get, path = "/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    responses((status = 200, description = "The agent", body = Object),
              (status = 404, description = "No such agent", body = ErrorBody)))]
pub async fn agent(State(s): State<AppState>, PathParam(name): PathParam<String>) -> ApiResult<Json<Value>> {
    let all = s
        .runtime
        .agents()
        .await
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
    all.as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == name.as_str()))
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_agent",
                format!("no agent named {name:?}"),
            )
        })
}

/// What a registration answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// The agent's name.
    pub agent: String,
    /// Its lifecycle state after registration (`ready`, or `failed` when
    /// it cannot run here).
    pub state: Value,
    /// The seqs of the events recorded.
    pub seqs: Vec<u64>,
}

/// Whether a content type is one of `allowed` (parameters ignored).
fn content_type_is(headers: &HeaderMap, allowed: &[&str]) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| allowed.iter().any(|a| t.trim().eq_ignore_ascii_case(a)))
}

/// Register an agent from its TOML definition (the body).
#[utoipa::path(post, path = "/v1/agents", tag = "agents",
    request_body(content = String, content_type = "application/toml", description = "The agent definition"),
    responses((status = 201, description = "Registered", body = Registered),
              (status = 400, description = "Not a valid definition (line:column named)", body = ErrorBody),
              (status = 409, description = "Already registered", body = ErrorBody),
              (status = 413, description = "Larger than a definition may be", body = ErrorBody),
              (status = 415, description = "Not application/toml", body = ErrorBody)))]
pub async fn register(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    if !content_type_is(&headers, &["application/toml", "text/plain", "text/x-toml"]) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "an agent definition is sent as `Content-Type: application/toml`",
        ));
    }
    let body = body.map_err(|e| body_error(&e))?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_definition",
            "the body is not UTF-8 TOML",
        )
    })?;
    let def = AgentDefinition::parse(Path::new("(request body)"), text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_definition", e.to_string()))?;
    let name = def.name.clone();
    let can_start = crate::up::startable(&def);
    let c = RuntimeCommand::Register {
        definition: Box::new(def),
        source: text.to_owned(),
        startable: can_start,
    };
    let receipts = command(&s, c).await?;
    let state = s
        .runtime
        .agents()
        .await
        .ok()
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|a| a["name"] == name.as_str())
                .map(|a| a["state"].clone())
        })
        .unwrap_or(Value::Null);
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            agent: name,
            state,
            seqs: seqs(&receipts),
        }),
    )
        .into_response())
}

/// Why an agent is stopped.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    /// Recorded with the stop (default "stopped by operator").
    #[serde(default)]
    pub reason: Option<String>,
}

/// Stop an agent for good.
#[utoipa::path(post, path = "/v1/agents/{name}/stop", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    request_body(content = Option<StopBody>, content_type = "application/json"),
    responses((status = 200, description = "Stop recorded", body = Object),
              (status = 404, description = "No such agent", body = ErrorBody),
              (status = 409, description = "Already terminated", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody)))]
pub async fn stop(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
    OptionalJsonBody(body): OptionalJsonBody<StopBody>,
) -> ApiResult<Json<Value>> {
    let reason = body.reason.unwrap_or_else(|| "stopped by operator".into());
    let receipts = command(
        &s,
        RuntimeCommand::Stop {
            agent: name.clone(),
            reason,
        },
    )
    .await?;
    Ok(Json(json!({"agent": name, "seqs": seqs(&receipts)})))
}

/// Shut the runtime down gracefully (the six steps).
#[utoipa::path(post, path = "/v1/shutdown", tag = "runtime",
    responses((status = 202, description = "Shutdown begun", body = Object)))]
pub async fn shutdown(State(s): State<AppState>) -> ApiResult<Response> {
    s.runtime
        .shutdown()
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"shutting_down": true}))).into_response())
}

/// Reasoning runs, by id.
#[utoipa::path(get, path = "/v1/runs", tag = "runs",
    responses((status = 200, description = "Runs by id: agent, state, step, awaiting approvals, outcome", body = Object)))]
pub async fn runs(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let runs = runs_view(&s).await?;
    serde_json::to_value(&runs.runs)
        .map(Json)
        .map_err(|e| ApiError::internal(&e.into()))
}

/// One run.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run id (run-<n>)")),
    responses((status = 200, description = "The run", body = Object),
              (status = 404, description = "No such run", body = ErrorBody)))]
/// The body is the run's view plus `driving` (the daemon drives it now)
/// and, once it finished, `steps`.
pub async fn run(State(s): State<AppState>, PathParam(id): PathParam<String>) -> ApiResult<Json<Value>> {
    let runs = runs_view(&s).await?;
    let r = runs
        .runs
        .get(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_run", format!("no run {id:?}")))?;
    let mut v = serde_json::to_value(r).map_err(|e| ApiError::internal(&e.into()))?;
    // Whether the daemon drives it now (false: finished or parked, settled).
    v["driving"] = Value::Bool(s.runs.driving(&id));
    if r.finished_seq > 0
        && let Ok(Some(e)) = s.journal.reader().get(stele_journal::Seq(r.finished_seq))
        && let stele_journal::ArchivedEventBody::RunFinished { steps, .. } = e.body()
    {
        v["steps"] = json!(steps.to_native());
    }
    Ok(Json(v))
}

async fn runs_view(s: &AppState) -> ApiResult<RunsView> {
    let reader = s.journal.reader();
    let data = s.data.clone();
    tokio::task::spawn_blocking(move || {
        let head = reader.head().seq;
        state_at::<RunsView>(&reader, &SnapshotStore::new(data.as_path()), head).map(|f| f.state)
    })
    .await
    .map_err(|e| ApiError::internal(&e.into()))?
    .map_err(|e| ApiError::internal(&e.into()))
}

fn seqs(receipts: &[Receipt]) -> Vec<u64> {
    receipts.iter().map(|r| r.seq.0).collect()
}

/// Sends a command to the core; a rejection becomes its API error.
async fn command(s: &AppState, c: RuntimeCommand) -> ApiResult<Vec<Receipt>> {
    match s.runtime.command(c).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(rejection(&e)),
        Err(e) => Err(ApiError::unavailable(format!("{e:#}"))),
    }
}

fn rejection(e: &RuntimeRejection) -> ApiError {
    let (status, code) = match e {
        RuntimeRejection::Lifecycle(Rejection::UnknownAgent { .. }) => {
            (StatusCode::NOT_FOUND, "unknown_agent")
        }
        RuntimeRejection::Lifecycle(Rejection::AlreadyRegistered { .. }) => {
            (StatusCode::CONFLICT, "already_registered")
        }
        RuntimeRejection::Lifecycle(Rejection::IllegalTransition { .. }) => {
            (StatusCode::CONFLICT, "illegal_transition")
        }
        RuntimeRejection::Terminated { .. } => (StatusCode::CONFLICT, "terminated"),
        RuntimeRejection::ShuttingDown => {
            let mut e = ApiError::unavailable(e.to_string());
            e.code = "shutting_down";
            return e;
        }
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
    };
    ApiError::new(status, code, e.to_string())
}
