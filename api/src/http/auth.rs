//! Bearer-token authentication and scopes. Tokens are configured by the
//! BLAKE3 of their text (`[[http.tokens]]`), never stored in clear; a
//! request's token is hashed and compared in constant time. Each route
//! names the least scope it needs (`read` < `operate` < `admin`); with no
//! tokens configured there is no authentication, and the server refuses to
//! listen anywhere but loopback. Not here: which route needs what (the
//! router says it).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use stele_engine::config::{HttpScope, HttpToken};

use super::error::ApiError;

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
