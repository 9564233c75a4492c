//! `POST /v1/policy/reload` (scope admin): replaces the policy set of the
//! daemon's gate while it runs — `stele policy reload` calls it.
//!
//! Without a body (or without `policies` in it) the daemon loads its own
//! directory (`stele up --policies`) again; with one, the set is the texts
//! in the body (as `POST /v1/policy/backtest` takes them: never a server
//! path). Either way the set is compiled and validated strictly first; an
//! invalid one is refused (422, every problem with file, line:column and
//! policy id) and the set in force stays, with nothing journaled. A valid
//! one is journaled (`PolicySetLoaded { old, new, policies, source }`) and
//! then put in force (`crate::up_runs::Desk::reload`); the set already in
//! force is not journaled again (the answer says `changed: false`).
//!
//! Not here: compiling (`stele_engine::policy`), the swap and the event
//! (`crate::up_runs`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use stele_engine::policy::PolicyGate;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, OptionalJsonBody};
use super::replay::{MAX_POLICY_BYTES, MAX_POLICY_FILES};

/// Largest body of a reload: the policy text and its JSON escaping.
pub const MAX_RELOAD_BODY_BYTES: usize = 2 * MAX_POLICY_BYTES;
/// Longest `source` label, in bytes (it is journaled).
pub const MAX_SOURCE_BYTES: usize = 4096;

/// A reload: nothing (the daemon's own directory again), or a policy set
/// as text.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// The policy files by name (`tools.cedar` → its text), compiled in
    /// name order as a directory is; absent: the daemon's own directory is
    /// loaded again. Names are hashed with the texts, as a directory's
    /// base names are, so the same files give the same set hash.
    #[serde(default)]
    pub policies: Option<BTreeMap<String, String>>,
    /// The schema's text (`*.cedarschema`); default the built-in schema.
    #[serde(default)]
    pub schema: Option<String>,
    /// Where the set came from, as journaled in `PolicySetLoaded.source`
    /// (the CLI sends the directory it read); default `(request)`.
    #[serde(default)]
    pub source: Option<String>,
}

/// Replace the policy set in force: journaled as `PolicySetLoaded`, then
/// taken by every later decision, runs in flight included (`stele policy
/// reload`).
#[utoipa::path(post, path = "/v1/policy/reload", tag = "runtime",
    request_body(content = Option<ReloadRequest>, content_type = "application/json", description = "Optional (none, or `null`, is `{}`): without `policies` the daemon's own directory is loaded again"),
    responses((status = 200, description = "The set in force: changed, old and new set hashes, policies, source, the PolicySetLoaded seq (null when the set was already in force), message", body = Object),
              (status = 400, description = "A malformed body, an empty or too large policy set", body = ErrorBody),
              (status = 413, description = "The body is too large", body = ErrorBody),
              (status = 422, description = "The policies or the schema do not compile or validate (every problem named); the old set stays in force", body = ErrorBody)))]
pub async fn reload(
    State(s): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<Option<ReloadRequest>>,
) -> ApiResult<Json<Value>> {
    let body = body.unwrap_or_default();
    let invalid =
        |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policies", message);
    let reloaded = match body.policies {
        None => {
            if body.schema.is_some() || body.source.is_some() {
                return Err(ApiError::bad_request(
                    "`schema` and `source` come with `policies`; without them the daemon's own directory is loaded",
                ));
            }
            let dir = s.runs.policy_dir().display().to_string();
            let gate = load_blocking(&s, None).await?.map_err(|e| invalid(e.to_string()))?;
            s.runs.reload(gate, dir).await
        }
        Some(policies) => {
            check_size(&policies, body.schema.as_deref())?;
            let source = body.source.unwrap_or_else(|| "(request)".to_owned());
            if source.len() > MAX_SOURCE_BYTES || source.trim().is_empty() {
                return Err(ApiError::bad_request(format!(
                    "`source` must be 1 to {MAX_SOURCE_BYTES} bytes of text"
                )));
            }
            let files: Vec<(String, String)> = policies.into_iter().collect();
            let gate = load_blocking(&s, Some((body.schema, files)))
                .await?
                .map_err(|e| invalid(e.to_string()))?;
            s.runs.reload(gate, source).await
        }
    }
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({
        "changed": reloaded.seq.is_some(),
        "old": reloaded.old,
        "new": reloaded.new,
        "policies": reloaded.policies,
        "source": reloaded.source,
        "seq": reloaded.seq,
        "message": reloaded.describe(),
    })))
}

/// A set as text: the schema, if given, and (file name, text) pairs.
type SetTexts = (Option<String>, Vec<(String, String)>);

/// Compiles the set on the blocking pool: the texts given, or the daemon's
/// directory.
async fn load_blocking(
    s: &AppState,
    texts: Option<SetTexts>,
) -> ApiResult<Result<PolicyGate, stele_engine::policy::PolicyError>> {
    let dir = s.runs.policy_dir().to_owned();
    tokio::task::spawn_blocking(move || match texts {
        None => PolicyGate::load(&dir),
        Some((schema, files)) => PolicyGate::from_sources(schema.as_deref(), &files),
    })
    .await
    .map_err(|e| ApiError::internal(&anyhow::anyhow!("the policy loader task failed: {e}")))
}

/// The limits `POST /v1/policy/backtest` applies to a set given as text.
fn check_size(policies: &BTreeMap<String, String>, schema: Option<&str>) -> ApiResult<()> {
    if policies.is_empty() {
        return Err(ApiError::bad_request(
            "`policies` is empty: give at least one policy file (an empty set denies everything)",
        ));
    }
    if policies.len() > MAX_POLICY_FILES {
        return Err(ApiError::bad_request(format!(
            "{} policy files; at most {MAX_POLICY_FILES} are accepted",
            policies.len()
        )));
    }
    let size: usize =
        policies.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + schema.map_or(0, str::len);
    if size > MAX_POLICY_BYTES {
        return Err(ApiError::bad_request(format!(
            "the policy set is {size} bytes; at most {MAX_POLICY_BYTES} are accepted"
        )));
    }
    if let Some(name) = policies.keys().find(|k| k.trim().is_empty()) {
        return Err(ApiError::bad_request(format!(
            "a policy file name is empty: {name:?}"
        )));
    }
    Ok(())
}
