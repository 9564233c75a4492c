//! The journal over HTTP: verification, checkpoints, Merkle proofs, and
//! audit bundles written to (and verified in) the server-side directory
//! `DATA/exports/` — a client names a bundle, never a path, so no request
//! reaches outside it. The proofs are the same JSON files `stele journal
//! prove` writes; bundles are the same as `stele audit export`'s.

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stele_journal::Seq;
use stele_journal::export::{self, Attachment, Selection, VerifyOptions};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, JsonBody, QueryParams};

/// Where bundles go, under the data directory.
pub const EXPORTS_DIR: &str = "exports";

/// Verify the whole chain, every signature and every checkpoint.
#[utoipa::path(post, path = "/v1/journal/verify", tag = "journal",
    responses((status = 200, description = "The report (`ok` false names the first bad seq)", body = Object)))]
pub async fn verify(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let reader = s.journal.reader();
    let report = tokio::task::spawn_blocking(move || stele_journal::verify(&reader, &|_, _| {}))
        .await
        .map_err(|e| ApiError::internal(&e.into()))?;
    if !report.ok {
        s.health
            .record("journal", format!("verify failed: {:?}", report.error));
    }
    serde_json::to_value(&report)
        .map(Json)
        .map_err(|e| ApiError::internal(&e.into()))
}

/// Append a Merkle checkpoint now.
#[utoipa::path(post, path = "/v1/journal/checkpoint", tag = "journal",
    responses((status = 200, description = "The checkpoint's seq and hash", body = Object),
              (status = 503, description = "The journal cannot write", body = ErrorBody)))]
pub async fn checkpoint(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let r = s
        .journal
        .checkpoint()
        .await
        .map_err(|e| ApiError::unavailable(format!("making a checkpoint: {e}")))?;
    Ok(Json(json!({"seq": r.seq.0, "hash": r.hash})))
}

/// `?seq=&size=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// The event.
    pub seq: u64,
    /// Tree size (default: the newest checkpoint covering `seq`, else the head).
    pub size: Option<u64>,
}

/// An inclusion proof, as `stele journal prove inclusion --json` writes it
/// (check it offline with `stele journal check-proof`).
#[utoipa::path(get, path = "/v1/journal/proof/inclusion", tag = "journal", params(InclusionQuery),
    responses((status = 200, description = "The proof file", body = Object),
              (status = 400, description = "Missing or bad parameters", body = ErrorBody),
              (status = 404, description = "seq or size beyond the head", body = ErrorBody)))]
pub async fn inclusion(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<InclusionQuery>,
) -> ApiResult<Json<Value>> {
    let reader = s.journal.reader();
    let head = reader.head().seq.0;
    if q.seq == 0 || q.seq > head || q.size.is_some_and(|n| n < q.seq || n > head) {
        return Err(ApiError::not_found(format!(
            "seq {} / size {:?} out of range: the journal has {head} events (1 <= seq <= size <= head)",
            q.seq, q.size
        )));
    }
    let proof = tokio::task::spawn_blocking(move || crate::proof::inclusion(&reader, Seq(q.seq), q.size))
        .await
        .map_err(|e| ApiError::internal(&e.into()))?
        .map_err(|e| ApiError::internal(&e))?;
    serde_json::to_value(&proof)
        .map(Json)
        .map_err(|e| ApiError::internal(&e.into()))
}

/// `?m=&n=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// Old tree size.
    pub m: u64,
    /// New tree size.
    pub n: u64,
}

/// A consistency proof that the tree of `m` events is a prefix of the tree
/// of `n` events.
#[utoipa::path(get, path = "/v1/journal/proof/consistency", tag = "journal", params(ConsistencyQuery),
    responses((status = 200, description = "The roots and the proof", body = Object),
              (status = 400, description = "Missing or bad parameters", body = ErrorBody),
              (status = 404, description = "Sizes out of range", body = ErrorBody)))]
pub async fn consistency(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<ConsistencyQuery>,
) -> ApiResult<Json<Value>> {
    let reader = s.journal.reader();
    let head = reader.head().seq.0;
    if q.m == 0 || q.m > q.n || q.n > head {
        return Err(ApiError::not_found(format!(
            "sizes m={} n={} out of range: need 1 <= m <= n <= {head}",
            q.m, q.n
        )));
    }
    let v = tokio::task::spawn_blocking(move || -> anyhow::Result<Value> {
        Ok(json!({
            "type": "consistency",
            "old_size": q.m,
            "new_size": q.n,
            "old_root": reader.root_at(q.m)?,
            "new_root": reader.root_at(q.n)?,
            "proof": reader.consistency_proof(q.m, q.n)?,
        }))
    })
    .await
    .map_err(|e| ApiError::internal(&e.into()))?
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(v))
}

/// What to export.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// `{"type":"range","from":1,"to":100}`, `{"type":"run","run":"task-3"}`
    /// or `{"type":"agent","agent":"worker"}`.
    #[schema(value_type = Object)]
    pub selection: Selection,
    /// The bundle's name under `DATA/exports/` (`[A-Za-z0-9._-]`, 1–64,
    /// not starting with `.`); default from the selection and the head.
    #[serde(default)]
    pub name: Option<String>,
    /// Also write `ocsf.jsonl` (OCSF 1.3.0 records).
    #[serde(default)]
    pub ocsf: bool,
    /// Withhold the bodies of events on streams starting with these prefixes.
    #[serde(default)]
    pub redact: Vec<String>,
}

/// What an export wrote.
#[derive(Debug, Serialize, ToSchema)]
pub struct Exported {
    /// The bundle's name (pass it to `/v1/audit/verify`).
    pub name: String,
    /// Its path on the server.
    pub path: String,
    /// The manifest.
    #[schema(value_type = Object)]
    pub manifest: Value,
    /// The checkpoint made for it, if none covered the selection.
    pub checkpoint_made: Option<u64>,
}

fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "bundle name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ - and not start with '.'"
        )))
    }
}

fn default_name(sel: &Selection, head: u64) -> String {
    let base = match sel {
        Selection::Range { from, to } => format!("range-{from}-{to}"),
        Selection::Run { run } => format!("run-{run}"),
        Selection::Agent { agent } => format!("agent-{agent}"),
    };
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("{clean}-at-{head}")
}

/// Write an audit bundle under `DATA/exports/`.
#[utoipa::path(post, path = "/v1/audit/export", tag = "audit", request_body = ExportRequest,
    responses((status = 201, description = "Written", body = Exported),
              (status = 400, description = "A bad name or selection", body = ErrorBody),
              (status = 409, description = "A bundle of that name exists", body = ErrorBody),
              (status = 422, description = "A body of the wrong shape", body = ErrorBody)))]
pub async fn audit_export(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<ExportRequest>,
) -> ApiResult<(StatusCode, Json<Exported>)> {
    let reader = s.journal.reader();
    let name = match &req.name {
        Some(n) => n.clone(),
        None => default_name(&req.selection, reader.head().seq.0),
    };
    check_name(&name)?;
    let dir = s.data.join(EXPORTS_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(&anyhow::anyhow!("creating {}: {e}", dir.display())))?;
    let out = dir.join(&name);
    if out.exists() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("a bundle named {name:?} exists; choose another name"),
        ));
    }
    let bad = |e: stele_journal::Error| ApiError::bad_request(e.to_string());
    let sel = req.selection.clone();
    let plan_reader = reader.clone();
    let mut plan = tokio::task::spawn_blocking(move || export::plan(&plan_reader, sel))
        .await
        .map_err(|e| ApiError::internal(&e.into()))?
        .map_err(bad)?;
    let mut made = None;
    if export::covering_checkpoint(&reader, plan.last)
        .map_err(|e| ApiError::internal(&e.into()))?
        .is_none()
    {
        let r = s
            .journal
            .checkpoint()
            .await
            .map_err(|e| ApiError::unavailable(format!("making the checkpoint the export needs: {e}")))?;
        made = Some(r.seq.0);
        let sel = req.selection.clone();
        let plan_reader = reader.clone();
        plan = tokio::task::spawn_blocking(move || export::plan(&plan_reader, sel))
            .await
            .map_err(|e| ApiError::internal(&e.into()))?
            .map_err(bad)?;
    }
    let (ocsf, redact, out2) = (req.ocsf, req.redact.clone(), out.clone());
    let summary = tokio::task::spawn_blocking(move || {
        let o = crate::audit::Ocsf;
        let attachments: Vec<&dyn Attachment> = if ocsf { vec![&o] } else { vec![] };
        export::write_bundle(&reader, &plan, &redact, &attachments, &out2, &|_, _| {})
    })
    .await
    .map_err(|e| ApiError::internal(&e.into()))?
    .map_err(|e| match e {
        stele_journal::Error::InvalidInput { .. } => ApiError::bad_request(e.to_string()),
        e => ApiError::internal(&e.into()),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(Exported {
            name,
            path: summary.out.display().to_string(),
            manifest: serde_json::to_value(&summary.manifest).map_err(|e| ApiError::internal(&e.into()))?,
            checkpoint_made: made,
        }),
    ))
}

/// Which bundle to verify.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditVerifyRequest {
    /// The bundle's name under `DATA/exports/`.
    pub name: String,
    /// Require this Ed25519 public key (64 hex digits) to be the journal's
    /// first key or the latest checkpoint's signer.
    #[serde(default)]
    pub trusted_key: Option<String>,
}

/// Verify a bundle under `DATA/exports/` as an outsider would (reads only
/// the bundle).
#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit", request_body = AuditVerifyRequest,
    responses((status = 200, description = "The report (`ok` false names the failure)", body = Object),
              (status = 400, description = "A bad name or key", body = ErrorBody),
              (status = 404, description = "No such bundle", body = ErrorBody)))]
pub async fn audit_verify(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<AuditVerifyRequest>,
) -> ApiResult<Json<Value>> {
    check_name(&req.name)?;
    let dir: PathBuf = s.data.join(EXPORTS_DIR).join(&req.name);
    if !dir.is_dir() {
        return Err(ApiError::not_found(format!("no bundle named {:?}", req.name)));
    }
    let trusted_key = match &req.trusted_key {
        Some(k) => Some(
            hex::decode(k)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "trusted_key {k:?} is not a 32-byte hex Ed25519 public key"
                    ))
                })?,
        ),
        None => None,
    };
    let report = tokio::task::spawn_blocking(move || {
        let o = crate::audit::Ocsf;
        let attachments: [&dyn Attachment; 1] = [&o];
        export::verify_bundle(
            &dir,
            &VerifyOptions {
                trusted_key,
                attachments: &attachments,
                progress: &|_, _| {},
            },
        )
    })
    .await
    .map_err(|e| ApiError::internal(&e.into()))?;
    serde_json::to_value(&report)
        .map(Json)
        .map_err(|e| ApiError::internal(&e.into()))
}
