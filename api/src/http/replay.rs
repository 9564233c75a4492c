//! Replay, time travel, forks and policy backtests over HTTP — the same
//! library calls as `stele at`, `stele diff`, `stele replay`, `stele fork`
//! and `stele policy backtest` (`stele_replay`, `crate::views`), on the
//! daemon's journal:
//!
//! - `GET /v1/at/{seq}?view=&run=&step=`: a view's state as of a seq;
//! - `GET /v1/diff?from=&to=&view=&run=`: what changed between two seqs;
//! - `POST /v1/runs/{id}/replay`: the replay report, against the daemon's
//!   policy set (`stele up --policies`, or the last reload; a step decided
//!   by a set it held before is decided under that one);
//! - `POST /v1/runs/{id}/fork`: a new run from a run's state at a seq,
//!   optionally with its next journaled input replaced, driven by the
//!   daemon like any run (202 with the new run's id);
//! - `POST /v1/policy/backtest`: the journaled decisions evaluated against
//!   a policy set given as text in the body — never a server path, so no
//!   request reaches a file.
//!
//! Folds, replays and backtests are CPU work: they run on the blocking
//! pool. Not here: the CLI's rendering (`crate::replay_cmd`).

use std::collections::BTreeMap;
use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stele_engine::policy::PolicyGate;
use stele_journal::{Reader, Seq};
use stele_projections::SnapshotStore;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, JsonBody, OptionalJsonBody, PathParam, QueryParams};

/// Largest policy set a backtest takes (bytes of text, every file and the
/// schema together).
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Largest body of a backtest: the policy text and its JSON escaping.
pub const MAX_BACKTEST_BODY_BYTES: usize = 2 * MAX_POLICY_BYTES;
/// Most policy files in one backtest.
pub const MAX_POLICY_FILES: usize = 256;
/// Largest body of a fork: the edit and its JSON escaping.
pub const MAX_FORK_BODY_BYTES: usize = 2 * stele_replay::fork::MAX_EDIT_BYTES as usize;

/// `?view=&run=&step=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AtQuery {
    /// The view: journal, registry, scheduler, execution, runs, context, or
    /// run (with `run`). Default journal.
    #[serde(default)]
    pub view: Option<String>,
    /// With `view=run`: the run (`run-<n>`).
    #[serde(default)]
    pub run: Option<String>,
    /// With `view=run`: up to the end of its step K.
    #[serde(default)]
    pub step: Option<u32>,
}

/// A view's state as of a seq.
#[derive(Debug, Serialize, ToSchema)]
pub struct AtState {
    /// The view.
    pub view: String,
    /// The seq it is as of.
    pub seq: u64,
    /// How it was obtained (snapshot used, events folded).
    pub how: String,
    /// The state (as `stele at --json` prints it).
    #[schema(value_type = Object)]
    pub state: Value,
}

/// `?from=&to=&view=&run=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The earlier seq, or `head`.
    pub from: String,
    /// The later seq, or `head`.
    pub to: String,
    /// The view (as for `/v1/at`). Default journal.
    #[serde(default)]
    pub view: Option<String>,
    /// With `view=run`: the run.
    #[serde(default)]
    pub run: Option<String>,
}

/// What changed between two seqs (as `stele diff --json` prints it).
#[derive(Debug, Serialize, ToSchema)]
pub struct DiffAnswer {
    /// The view.
    pub view: String,
    /// The earlier seq.
    pub from: u64,
    /// The later seq.
    pub to: u64,
    /// Field-level changes: `{path, before, after}`.
    #[schema(value_type = Vec<Object>)]
    pub changes: Value,
}

/// A fork to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// The seq of the origin's state to start from: its journaled inputs up
    /// to here are fed again.
    pub at: u64,
    /// Replaces the first journaled input after `at`: a completion
    /// `{"content", "tool_calls"?: [{"name", "arguments"}]}` or a tool
    /// result `{"ok"?, "output"}`, whichever that input is.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub edit: Option<Value>,
}

/// A fork that was started.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForkAccepted {
    /// The new run.
    pub run: String,
    /// The run it was forked from.
    pub origin: String,
    /// The seq it was forked at.
    pub at: u64,
    /// BLAKE3 (hex) of the edit, if any (as recorded in `RunForked`).
    pub edit_hash: Option<String>,
    /// Where to follow it.
    pub follow: String,
}

/// A backtest: a policy set as text, and the seqs to look at.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BacktestRequest {
    /// The policy files by name (`tools.cedar` → its text), evaluated in
    /// name order as `stele policy check` reads a directory. Names only
    /// label errors; no file is read.
    pub policies: BTreeMap<String, String>,
    /// The schema's text (`*.cedarschema`); default the built-in schema.
    #[serde(default)]
    pub schema: Option<String>,
    /// First seq (default 1).
    #[serde(default)]
    pub from: Option<u64>,
    /// Last seq (default the head).
    #[serde(default)]
    pub to: Option<u64>,
}

fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::internal(&e.into())
}

/// A seq given as text: a number or `head`; 404 beyond the head.
fn seq_param(reader: &Reader, name: &str, text: &str) -> ApiResult<Seq> {
    let head = reader.head().seq;
    let seq = if text == "head" {
        head
    } else {
        text.parse()
            .map(Seq)
            .map_err(|_| ApiError::bad_request(format!("{name} must be a number or `head`, not {text:?}")))?
    };
    if seq > head {
        return Err(ApiError::not_found(format!(
            "{name} {seq} is beyond the journal's head {head}"
        )));
    }
    Ok(seq)
}

/// Checks a view, run and step before any fold: 400 for a bad combination.
fn view_param(view: Option<&str>, run: Option<&str>, step: Option<u32>) -> ApiResult<String> {
    let view = view.unwrap_or("journal");
    let known = [
        "journal",
        "registry",
        "scheduler",
        "execution",
        "runs",
        "context",
        "run",
    ];
    if !known.contains(&view) {
        return Err(ApiError::bad_request(format!(
            "unknown view {view:?}; known views: {}",
            crate::views::VIEW_NAMES
        )));
    }
    if view != "run" && (run.is_some() || step.is_some()) {
        return Err(ApiError::bad_request(format!(
            "run and step go with view=run, not view={view}"
        )));
    }
    if view == "run" {
        let Some(run) = run else {
            return Err(ApiError::bad_request(
                "view=run needs run=RUN (list runs at /v1/runs)",
            ));
        };
        stele_journal::RunId::new(run.to_owned()).map_err(|e| ApiError::bad_request(format!("run: {e}")))?;
    }
    Ok(view.to_owned())
}

/// A fold's failure: a run with nothing at the seq is a 404, the rest ours.
fn fold_error(e: &anyhow::Error) -> ApiError {
    let message = format!("{e:#}");
    if message.contains("has no event at or before") {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_run", message)
    } else {
        ApiError::internal(e)
    }
}

/// A view's state as of a seq (`stele at SEQ --view NAME --json`).
#[utoipa::path(get, path = "/v1/at/{seq}", tag = "replay",
    params(("seq" = String, Path, description = "A seq, or `head`"), AtQuery),
    responses((status = 200, description = "The state as of the seq", body = AtState),
              (status = 400, description = "A bad seq, view, run or step", body = ErrorBody),
              (status = 404, description = "The seq is beyond the head, or the run has no event at or before it", body = ErrorBody)))]
pub async fn at(
    State(s): State<AppState>,
    PathParam(seq): PathParam<String>,
    QueryParams(q): QueryParams<AtQuery>,
) -> ApiResult<Json<AtState>> {
    let reader = s.journal.reader();
    let at = seq_param(&reader, "seq", &seq)?;
    let view = view_param(q.view.as_deref(), q.run.as_deref(), q.step)?;
    let data = s.data.clone();
    tokio::task::spawn_blocking(move || {
        let store = SnapshotStore::new(data.as_path());
        let v = crate::views::state_value(&reader, &store, &view, at, q.run.as_deref(), q.step)
            .map_err(|e| fold_error(&e))?;
        Ok(Json(AtState {
            view,
            seq: v.seq.0,
            how: v.how,
            state: v.value,
        }))
    })
    .await
    .map_err(internal)?
}

/// What changed in a view between two seqs (`stele diff --json`).
#[utoipa::path(get, path = "/v1/diff", tag = "replay", params(DiffQuery),
    responses((status = 200, description = "The field-level changes", body = DiffAnswer),
              (status = 400, description = "A missing or bad seq, view or run", body = ErrorBody),
              (status = 404, description = "A seq beyond the head, or the run has no event at or before it", body = ErrorBody)))]
pub async fn diff(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<DiffQuery>,
) -> ApiResult<Json<DiffAnswer>> {
    let reader = s.journal.reader();
    let from = seq_param(&reader, "from", &q.from)?;
    let to = seq_param(&reader, "to", &q.to)?;
    let view = view_param(q.view.as_deref(), q.run.as_deref(), None)?;
    let data = s.data.clone();
    tokio::task::spawn_blocking(move || {
        let store = SnapshotStore::new(data.as_path());
        let run = q.run.as_deref();
        let a =
            crate::views::state_value(&reader, &store, &view, from, run, None).map_err(|e| fold_error(&e))?;
        let b =
            crate::views::state_value(&reader, &store, &view, to, run, None).map_err(|e| fold_error(&e))?;
        let changes =
            serde_json::to_value(stele_replay::diff_values(&a.value, &b.value)).map_err(internal)?;
        Ok(Json(DiffAnswer {
            view,
            from: from.0,
            to: to.0,
            changes,
        }))
    })
    .await
    .map_err(internal)?
}

/// A replay crate error as an answer: no such run 404, a run that cannot
/// be replayed or forked as asked (or a bad edit) 422, the rest ours.
fn replay_error(e: stele_replay::Error) -> ApiError {
    match e {
        stele_replay::Error::Run { ref reason, .. } if reason.starts_with("no such run") => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_run", e.to_string())
        }
        stele_replay::Error::Run { .. } | stele_replay::Error::Event { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot_replay", e.to_string())
        }
        stele_replay::Error::Edit { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_edit", e.to_string())
        }
        other => ApiError::internal(&other.into()),
    }
}

/// The run, checked to be a run id; 409 while the daemon drives it.
fn run_param(s: &AppState, id: &str) -> ApiResult<()> {
    stele_journal::RunId::new(id.to_owned()).map_err(|e| ApiError::bad_request(format!("run: {e}")))?;
    if s.runs.driving(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_busy",
            format!("{id} is being driven now; replay or fork it once it parks or finishes"),
        ));
    }
    Ok(())
}

/// Replay a run through the current deciders (the daemon's policy set) and
/// compare every fact (`stele replay RUN --json`). No effect is performed.
/// A step the journal says an earlier set of this daemon decided (it was
/// reloaded since) is decided again under that set.
#[utoipa::path(post, path = "/v1/runs/{id}/replay", tag = "replay",
    params(("id" = String, Path, description = "The run id (run-<n>)")),
    responses((status = 200, description = "The report: `divergence` is null when every fact was reproduced, else the first divergent seq with a field-level diff and the path to it", body = Object),
              (status = 400, description = "A malformed run id", body = ErrorBody),
              (status = 404, description = "No such run", body = ErrorBody),
              (status = 409, description = "The run is being driven now", body = ErrorBody),
              (status = 422, description = "Not a reasoning run, or no policy set is loaded", body = ErrorBody)))]
pub async fn replay(State(s): State<AppState>, PathParam(id): PathParam<String>) -> ApiResult<Json<Value>> {
    run_param(&s, &id)?;
    let gates = s
        .runs
        .gates()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_policies", format!("{e:#}")))?;
    let reader = s.journal.reader();
    let data = s.data.clone();
    tokio::task::spawn_blocking(move || {
        let mut recorded = stele_replay::load_run(&reader, &SnapshotStore::new(data.as_path()), &id)
            .map_err(replay_error)?;
        recorded
            .load_mcp(&reader, &crate::replay_cmd::mcp_servers())
            .map_err(replay_error)?;
        let report = stele_replay::replay_under(&recorded, &gates, &crate::replay_cmd::settings(), None)
            .map_err(replay_error)?;
        serde_json::to_value(&report).map(Json).map_err(internal)
    })
    .await
    .map_err(internal)?
}

/// Fork a run at a seq into a new run (`stele fork RUN --at SEQ [--edit]`):
/// the origin's journaled inputs up to the seq are fed again, the next one
/// is replaced by `edit` when given, and the daemon drives the new run live
/// from there. The origin is only read.
#[utoipa::path(post, path = "/v1/runs/{id}/fork", tag = "replay",
    params(("id" = String, Path, description = "The run to fork (run-<n>)")),
    request_body(content = ForkRequest, content_type = "application/json"),
    responses((status = 202, description = "Forked: the new run's RunStarted and RunForked are durable; the run is being driven", body = ForkAccepted),
              (status = 400, description = "A malformed run id or body", body = ErrorBody),
              (status = 404, description = "No such run, or the seq is beyond the head", body = ErrorBody),
              (status = 409, description = "The run is being driven now", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "The seq is before the run, the edit does not fit the next input, or the agent cannot run here", body = ErrorBody)))]
pub async fn fork(
    State(s): State<AppState>,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<ForkRequest>,
) -> ApiResult<Response> {
    run_param(&s, &id)?;
    let reader = s.journal.reader();
    let at = Seq(body.at);
    if at > reader.head().seq {
        return Err(ApiError::not_found(format!(
            "seq {at} is beyond the journal's head {}",
            reader.head().seq
        )));
    }
    let data = s.data.clone();
    let origin_id = id.clone();
    let (origin, edit) = tokio::task::spawn_blocking(move || {
        let origin = stele_replay::load_run(&reader, &SnapshotStore::new(data.as_path()), &origin_id)
            .map_err(replay_error)?;
        let edit = body
            .edit
            .map(|v| {
                let text = match v {
                    Value::String(t) => t,
                    v => v.to_string(),
                };
                stele_replay::Edit::parse(Path::new("(request body: edit)"), &text, &origin, at)
            })
            .transpose()
            .map_err(replay_error)?;
        Ok::<_, ApiError>((origin, edit))
    })
    .await
    .map_err(internal)??;
    let edit_hash = edit
        .as_ref()
        .map(|e| hex::encode(blake3::hash(e.canonical().as_bytes()).as_bytes()));
    let desk = s.runs.clone();
    // In a task of its own: a request timeout must not drop a fork half begun.
    let forked = tokio::spawn(async move { desk.fork(origin, at, edit).await })
        .await
        .map_err(internal)?;
    let (run, _drive) = forked.map_err(|e| {
        let message = format!("{e:#}");
        if message.contains("shutting down") {
            ApiError::unavailable(message)
        } else {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot_fork", message)
        }
    })?;
    let follow = format!("/v1/runs/{run}");
    Ok((
        StatusCode::ACCEPTED,
        Json(ForkAccepted {
            run,
            origin: id,
            at: at.0,
            edit_hash,
            follow,
        }),
    )
        .into_response())
}

/// Re-evaluate every journaled authorization request against a policy set
/// given as text and list each verdict that would flip (`stele policy
/// backtest --json`).
#[utoipa::path(post, path = "/v1/policy/backtest", tag = "replay",
    request_body(content = BacktestRequest, content_type = "application/json"),
    responses((status = 200, description = "The backtest: evaluated, flips (seq, request, old and new verdict and determining policies), unreadable requests", body = Object),
              (status = 400, description = "A malformed body, an empty or too large policy set, or from > to", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "The policies or the schema do not compile (every problem named)", body = ErrorBody)))]
pub async fn backtest(
    State(s): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<Option<BacktestRequest>>,
) -> ApiResult<Json<Value>> {
    let Some(body) = body else {
        return Err(ApiError::bad_request(
            "a backtest needs a body: {\"policies\": {\"NAME.cedar\": \"TEXT\", …}, \"schema\"?, \"from\"?, \"to\"?}",
        ));
    };
    if body.policies.is_empty() {
        return Err(ApiError::bad_request(
            "`policies` is empty: give at least one policy file",
        ));
    }
    if body.policies.len() > MAX_POLICY_FILES {
        return Err(ApiError::bad_request(format!(
            "{} policy files; at most {MAX_POLICY_FILES} are accepted",
            body.policies.len()
        )));
    }
    let size: usize = body
        .policies
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + body.schema.as_ref().map_or(0, String::len);
    if size > MAX_POLICY_BYTES {
        return Err(ApiError::bad_request(format!(
            "the policy set is {size} bytes; at most {MAX_POLICY_BYTES} are accepted"
        )));
    }
    if let Some(name) = body.policies.keys().find(|k| k.trim().is_empty()) {
        return Err(ApiError::bad_request(format!(
            "a policy file name is empty: {name:?}"
        )));
    }
    let reader = s.journal.reader();
    let head = reader.head().seq;
    let from = Seq(body.from.unwrap_or(1).max(1));
    let to = body.to.map_or(head, Seq).min(head);
    if body.from.is_some() && body.to.is_some() && from > to {
        return Err(ApiError::bad_request(format!("from {from} is after to {to}")));
    }
    tokio::task::spawn_blocking(move || {
        let files: Vec<(String, String)> = body.policies.into_iter().collect();
        let gate = PolicyGate::from_sources(body.schema.as_deref(), &files).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_policies",
                e.to_string(),
            )
        })?;
        let bt =
            stele_replay::backtest(&reader, &gate, from, to).map_err(|e| internal(anyhow::Error::from(e)))?;
        serde_json::to_value(&bt).map(Json).map_err(internal)
    })
    .await
    .map_err(internal)?
}
