//! Bearer-token authentication and scopes. Tokens are configured by the
//! BLAKE3 of their text (`[[http.tokens]]`), never stored in clear; a
//! request's token is hashed and compared in constant time. Each route
//! names the least scope it needs (`read` < `operate` < `admin`); with no
//! tokens configured there is no authentication, and the server refuses to
//! listen anywhere but loopback. Which route needs what is [`ROUTES`]: the
//! router takes each route's check from it ([`access`]) and the OpenAPI
//! document each operation's `security`, so the two cannot disagree.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use stele_engine::config::{HttpScope, HttpToken};

use super::error::ApiError;

/// Who may call an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (liveness, readiness, the API document).
    Public,
    /// A bearer token of at least this scope (when tokens are configured).
    Token(HttpScope),
}

const READ: Access = Access::Token(HttpScope::Read);
const OPERATE: Access = Access::Token(HttpScope::Operate);
const ADMIN: Access = Access::Token(HttpScope::Admin);

/// Every operation of the HTTP API — method, route, who may call it. Reads
/// need `read` (and so do replays and searches, which take a body but
/// change nothing), changes `operate`, shutdown and the policy reload
/// `admin`.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/health", Access::Public),
    ("GET", "/ready", Access::Public),
    ("GET", "/v1/openapi.json", Access::Public),
    ("GET", "/metrics", READ),
    ("GET", "/v1/status", READ),
    ("POST", "/v1/shutdown", ADMIN),
    ("POST", "/v1/policy/reload", ADMIN),
    ("GET", "/v1/agents", READ),
    ("POST", "/v1/agents", OPERATE),
    ("GET", "/v1/agents/{name}", READ),
    ("POST", "/v1/agents/{name}/stop", OPERATE),
    ("GET", "/v1/runs", READ),
    ("POST", "/v1/runs", OPERATE),
    ("GET", "/v1/runs/{id}", READ),
    ("POST", "/v1/runs/{id}/approve", OPERATE),
    ("POST", "/v1/runs/{id}/reject", OPERATE),
    ("POST", "/v1/runs/{id}/replay", READ),
    ("POST", "/v1/runs/{id}/fork", OPERATE),
    ("GET", "/v1/at/{seq}", READ),
    ("GET", "/v1/diff", READ),
    ("POST", "/v1/policy/backtest", OPERATE),
    ("GET", "/v1/events", READ),
    ("GET", "/v1/events/{seq}", READ),
    ("GET", "/v1/events/stream", READ),
    ("POST", "/v1/journal/verify", OPERATE),
    ("POST", "/v1/journal/checkpoint", OPERATE),
    ("GET", "/v1/journal/proof/inclusion", READ),
    ("GET", "/v1/journal/proof/consistency", READ),
    ("POST", "/v1/audit/export", OPERATE),
    ("POST", "/v1/audit/verify", OPERATE),
    ("GET", "/v1/context/{agent}", READ),
    ("GET", "/v1/context/{agent}/stats", READ),
    ("POST", "/v1/context/{agent}/search", READ),
    ("POST", "/v1/context/{agent}/items", OPERATE),
    ("PATCH", "/v1/context/{agent}/items/{item}", OPERATE),
    ("POST", "/v1/context/{agent}/items/{item}/share", OPERATE),
    ("POST", "/v1/context/{agent}/feedback", OPERATE),
    ("POST", "/v1/context/{agent}/archive", OPERATE),
    ("POST", "/v1/bus/send", OPERATE),
    ("POST", "/v1/bus/publish", OPERATE),
    ("POST", "/v1/bus/ask", OPERATE),
    ("GET", "/v1/bus/stats", READ),
];

/// Who may call `method` (upper case) on `route` (as the router spells it,
/// `{param}` and all); `None` for an operation [`ROUTES`] does not list.
#[must_use]
pub fn access(method: &str, route: &str) -> Option<Access> {
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, a)| *a)
}

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<(blake3::Hash, HttpToken)>,
}

/// Who a request authenticated as (a request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `anonymous` without authentication.
    pub name: String,
    /// What it may do.
    pub scope: HttpScope,
}

impl Tokens {
    /// From the configuration (hashes were checked when it was read).
    ///
    /// # Errors
    /// A hash that is not 64 hex digits.
    pub fn new(tokens: &[HttpToken]) -> anyhow::Result<Tokens> {
        let tokens = tokens
            .iter()
            .map(|t| {
                blake3::Hash::from_hex(&t.hash)
                    .map(|h| (h, t.clone()))
                    .map_err(|e| anyhow::anyhow!("[http] token {}: bad hash: {e}", t.name))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Tokens { tokens })
    }

    /// Whether any token is configured (authentication is on).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The token whose hash `presented` has.
    fn find(&self, presented: &str) -> Option<&HttpToken> {
        let h = blake3::hash(presented.as_bytes());
        // blake3::Hash compares in constant time.
        self.tokens.iter().find(|(k, _)| *k == h).map(|(_, t)| t)
    }

    /// Checks a request's `Authorization` header against `need`.
    ///
    /// # Errors
    /// 401 for a missing, malformed or unknown token; 403 for a scope below
    /// `need`.
    pub fn check(&self, authorization: Option<&[u8]>, need: HttpScope) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller {
                name: "anonymous".into(),
                scope: HttpScope::Admin,
            });
        }
        let Some(raw) = authorization else {
            return Err(unauthorized(
                "this endpoint needs `Authorization: Bearer <token>`",
            ));
        };
        let token = std::str::from_utf8(raw)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
        let t = self
            .find(token)
            .ok_or_else(|| unauthorized("the bearer token is not known to this server"))?;
        if t.scope < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token {} has scope {} but this needs {}",
                    t.name,
                    t.scope.name(),
                    need.name()
                ),
            ));
        }
        Ok(Caller {
            name: t.name.clone(),
            scope: t.scope,
        })
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Middleware state: the tokens and the scope the wrapped routes need.
#[derive(Clone, Debug)]
pub struct Need {
    /// The tokens.
    pub tokens: Arc<Tokens>,
    /// The least scope.
    pub scope: HttpScope,
}

/// The middleware: authenticates, checks the scope, records the caller.
pub async fn require(State(need): State<Need>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let caller = need.tokens.check(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(axum::http::HeaderValue::as_bytes),
        need.scope,
    )?;
    tracing::debug!(token = %caller.name, scope = caller.scope.name(), path = %req.uri().path(), "authenticated");
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// A new random token (`stele_` + 64 hex digits) and its BLAKE3 hex.
///
/// # Errors
/// The OS random source failed.
pub fn create_token() -> anyhow::Result<(String, String)> {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
    let token = format!("stele_{}", hex::encode(bytes));
    let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
    Ok((token, hash))
}

/// `stele token create NAME --scope S`.
///
/// # Errors
/// A bad name; the random source failed.
pub fn token_create(name: &str, scope: &str, json: bool) -> anyhow::Result<std::process::ExitCode> {
    // Checked as the configuration will check it.
    let entry = format!(
        "name = {name:?}\nhash = \"{}\"\nscope = {scope:?}\n",
        "0".repeat(64)
    );
    let _: HttpToken = toml::from_str(&entry).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let (token, hash) = create_token()?;
    let line = format!("[[http.tokens]]\nname = {name:?}\nhash = \"{hash}\"\nscope = {scope:?}");
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "scope": scope, "token": token, "hash": hash, "config": line})
        );
    } else {
        println!(
            "token (shown once; give it to the client as `Authorization: Bearer <token>` or STELE_TOKEN):"
        );
        println!("{token}");
        println!();
        println!("add to stele.toml:");
        println!("{line}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
