//! The HTTP API of `stele up`: `/v1` (the CLI's operations: status, agents,
//! runs, events and the live feed, journal verification and proofs, audit
//! bundles), `/health`, `/ready`, `/metrics` and `/v1/openapi.json`.
//!
//! `up.rs` binds the listener ([`bind`]: loopback unless tokens are
//! configured, TLS when a certificate is) and starts the server ([`start`])
//! with the handles it needs: the core's [`crate::up::Handle`] and the
//! journal. The layers, outermost first: declared length → body limit
//! (`[http] max_body`, the ceiling of every route's own) → the body read
//! whole (`read_body`) → request metrics (on routed requests) → (for every
//! route but the live stream) load shedding at `max_concurrent` and the
//! request timeout → per-route bearer-token scope → handler.
//! Every failure answers `{"error": {"code", "message"}}`.
//!
//! Replay, time travel, fork and backtest are in [`replay`]: `/v1/at/{seq}`,
//! `/v1/diff`, `/v1/runs/{id}/replay`, `/v1/runs/{id}/fork`,
//! `/v1/policy/backtest`.
//! The policy reload (`POST /v1/policy/reload`, scope admin) is in
//! [`policy`]. An agent's context store (`/v1/context/{agent}…`, the
//! operations of `stele context`) is in [`context`]; the bus
//! (`/v1/bus/send|publish|ask|stats`, when `[bus] policies` runs one) in
//! [`bus`].

pub mod auth;
pub mod bus;
pub mod context;
pub mod error;
pub mod events;
pub mod handlers;
pub mod health;
pub mod journal;
pub mod metrics;
pub mod policy;
pub mod replay;
pub mod runs;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use stele_engine::config::{HttpConfig, SandboxTier};
use stele_journal::Journal;
use tower::ServiceBuilder;
use utoipa::OpenApi;

use self::auth::{Access, Need, Tokens};
use self::error::{ApiError, ErrorBody, ErrorDetail};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The runtime core.
    pub runtime: crate::up::Handle,
    /// The journal (reads, checkpoints, syncs).
    pub journal: Journal,
    /// The data directory.
    pub data: Arc<PathBuf>,
    /// `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// `/health`, `/ready` and the recent errors.
    pub health: Arc<health::Health>,
    /// Slots of the live event streams.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// The shared live feed the event streams read from.
    pub feed: Arc<events::Feed>,
    /// The daemon's reasoning runs.
    pub runs: crate::up_runs::Desk,
    /// The context store (`/v1/context`), opened on first use.
    pub context: Arc<context::Context>,
    /// The bus (`/v1/bus`), when `[bus] policies` runs one.
    pub bus: Option<stele_engine::bus::Bus>,
    /// `[http] request_timeout` (what a bus ask may wait at most).
    pub request_timeout: Duration,
    tokens: Arc<Tokens>,
}

/// What [`start`] needs from `stele up`.
pub struct Parts {
    /// The core's handle.
    pub runtime: crate::up::Handle,
    /// The journal.
    pub journal: Journal,
    /// The data directory.
    pub data: PathBuf,
    /// `[http]`.
    pub config: HttpConfig,
    /// `[security] default_sandbox_tier` (whether dockerd is checked).
    pub tier: SandboxTier,
    /// The daemon's reasoning runs.
    pub runs: crate::up_runs::Desk,
    /// The policy directory of the daemon (`stele up --policies`): the
    /// context store's gate.
    pub policies: PathBuf,
    /// The bus, when `[bus] policies` runs one.
    pub bus: Option<stele_engine::bus::Bus>,
}

/// A bound listener, not yet serving.
#[derive(Debug)]
pub struct Listener {
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Listener {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Binds `[http] bind` on `port`, refusing a non-loopback address without
/// tokens, and loads the TLS certificate when configured.
///
/// # Errors
/// The refusal, a bad certificate or key, or the bind failing.
pub async fn bind(config: &stele_engine::Config, port: u16) -> Result<Listener> {
    let cfg = &config.http;
    if !cfg.bind.is_loopback() && cfg.tokens.is_empty() {
        bail!(
            "refusing to serve the HTTP API on {} without authentication: add [[http.tokens]] (`stele token create NAME --scope read`) or bind 127.0.0.1",
            cfg.bind
        );
    }
    Tokens::new(&cfg.tokens)?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            // One process-wide crypto provider: ring, as for every other
            // rustls user in stele. Installed already is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "[http] loading the TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        _ => None,
    };
    let listener = std::net::TcpListener::bind((cfg.bind, port))
        .with_context(|| format!("binding the HTTP API on {}:{port}", cfg.bind))?;
    listener
        .set_nonblocking(true)
        .context("setting the HTTP listener non-blocking")?;
    let addr = listener.local_addr()?;
    Ok(Listener { listener, tls, addr })
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct Server {
    handle: axum_server::Handle<SocketAddr>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Serves the API on `listener`.
///
/// # Errors
/// Bad token configuration; the listener cannot be handed to the server.
pub fn start(listener: Listener, parts: Parts) -> Result<Server> {
    let metrics = Arc::new(metrics::Metrics::new(&parts.journal, parts.data.clone()));
    let follow = tokio::spawn(Arc::clone(&metrics).follow(parts.journal.clone()));
    let feed = Arc::new(events::Feed::new(
        parts.journal.reader(),
        parts.config.sse_buffer as usize,
    ));
    let state = AppState {
        runtime: parts.runtime,
        journal: parts.journal,
        data: Arc::new(parts.data),
        metrics,
        health: Arc::new(health::Health::new(parts.tier)),
        streams: Arc::new(tokio::sync::Semaphore::new(parts.config.max_streams as usize)),
        feed,
        runs: parts.runs,
        context: Arc::new(context::Context::new(parts.policies)),
        bus: parts.bus,
        request_timeout: parts.config.request_timeout,
        tokens: Arc::new(Tokens::new(&parts.config.tokens)?),
    };
    let app = router(state, &parts.config);
    let handle = axum_server::Handle::new();
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let serve = match listener.tls {
        Some(tls) => {
            let server = axum_server::from_tcp_rustls(listener.listener, tls)
                .context("handing the listener to the HTTPS server")?
                .handle(handle.clone());
            tokio::spawn(async move {
                if let Err(e) = server.serve(make).await {
                    tracing::error!(error = %e, "HTTPS API stopped");
                }
            })
        }
        None => {
            let server = axum_server::from_tcp(listener.listener)
                .context("handing the listener to the HTTP server")?
                .handle(handle.clone());
            tokio::spawn(async move {
                if let Err(e) = server.serve(make).await {
                    tracing::error!(error = %e, "HTTP API stopped");
                }
            })
        }
    };
    Ok(Server {
        handle,
        tasks: vec![serve.abort_handle(), follow.abort_handle()],
    })
}

/// The whole router over `state`.
pub fn router(state: AppState, cfg: &HttpConfig) -> Router {
    let tokens = Arc::clone(&state.tokens);
    // Each route's check comes from the one table the OpenAPI document
    // declares from (auth::ROUTES); a route missing there, or public, has
    // no business asking for a token check.
    let need = |method: &str, route: &str| {
        let Some(Access::Token(scope)) = auth::access(method, route) else {
            panic!("{method} {route}: not a token-checked route of auth::ROUTES");
        };
        middleware::from_fn_with_state(
            Need {
                tokens: Arc::clone(&tokens),
                scope,
            },
            auth::require,
        )
    };
    // [http] max_body is the ceiling of every route's own limit, as it is
    // for a declared Content-Length (`declared_length`): a chunked body
    // gets no further than one that says its length.
    let max_body = usize::try_from(cfg.max_body).unwrap_or(usize::MAX);
    let limited =
        Router::new()
            .route(
                "/v1/status",
                get(handlers::status.layer(need("GET", "/v1/status"))),
            )
            .route(
                "/v1/agents",
                get(handlers::agents.layer(need("GET", "/v1/agents"))).post(
                    handlers::register
                        .layer(need("POST", "/v1/agents"))
                        .layer(DefaultBodyLimit::max(
                            stele_engine::agent::MAX_DEFINITION_BYTES.min(max_body),
                        )),
                ),
            )
            .route(
                "/v1/agents/{name}",
                get(handlers::agent.layer(need("GET", "/v1/agents/{name}"))),
            )
            .route(
                "/v1/agents/{name}/stop",
                post(handlers::stop.layer(need("POST", "/v1/agents/{name}/stop"))),
            )
            .route(
                "/v1/shutdown",
                post(handlers::shutdown.layer(need("POST", "/v1/shutdown"))),
            )
            .route(
                "/v1/policy/reload",
                post(
                    policy::reload
                        .layer(need("POST", "/v1/policy/reload"))
                        .layer(DefaultBodyLimit::max(policy::MAX_RELOAD_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/runs",
                get(handlers::runs.layer(need("GET", "/v1/runs")))
                    .post(runs::start.layer(need("POST", "/v1/runs"))),
            )
            .route(
                "/v1/runs/{id}",
                get(handlers::run.layer(need("GET", "/v1/runs/{id}"))),
            )
            .route(
                "/v1/runs/{id}/approve",
                post(runs::approve.layer(need("POST", "/v1/runs/{id}/approve"))),
            )
            .route(
                "/v1/runs/{id}/reject",
                post(runs::reject.layer(need("POST", "/v1/runs/{id}/reject"))),
            )
            .route("/v1/at/{seq}", get(replay::at.layer(need("GET", "/v1/at/{seq}"))))
            .route("/v1/diff", get(replay::diff.layer(need("GET", "/v1/diff"))))
            .route(
                "/v1/runs/{id}/replay",
                post(replay::replay.layer(need("POST", "/v1/runs/{id}/replay"))),
            )
            .route(
                "/v1/runs/{id}/fork",
                post(
                    replay::fork
                        .layer(need("POST", "/v1/runs/{id}/fork"))
                        .layer(DefaultBodyLimit::max(replay::MAX_FORK_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/policy/backtest",
                post(replay::backtest.layer(need("POST", "/v1/policy/backtest")).layer(
                    DefaultBodyLimit::max(replay::MAX_BACKTEST_BODY_BYTES.min(max_body)),
                )),
            )
            .route(
                "/v1/context/{agent}",
                get(context::show.layer(need("GET", "/v1/context/{agent}"))),
            )
            .route(
                "/v1/context/{agent}/stats",
                get(context::stats.layer(need("GET", "/v1/context/{agent}/stats"))),
            )
            .route(
                "/v1/context/{agent}/search",
                post(
                    context::search
                        .layer(need("POST", "/v1/context/{agent}/search"))
                        .layer(DefaultBodyLimit::max(
                            context::MAX_SEARCH_BODY_BYTES.min(max_body),
                        )),
                ),
            )
            .route(
                "/v1/context/{agent}/items",
                post(
                    context::store
                        .layer(need("POST", "/v1/context/{agent}/items"))
                        .layer(DefaultBodyLimit::max(context::MAX_ITEM_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/context/{agent}/items/{item}",
                patch(
                    context::update
                        .layer(need("PATCH", "/v1/context/{agent}/items/{item}"))
                        .layer(DefaultBodyLimit::max(context::MAX_ITEM_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/context/{agent}/items/{item}/share",
                post(
                    context::share
                        .layer(need("POST", "/v1/context/{agent}/items/{item}/share"))
                        .layer(DefaultBodyLimit::max(context::MAX_SMALL_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/context/{agent}/feedback",
                post(
                    context::feedback
                        .layer(need("POST", "/v1/context/{agent}/feedback"))
                        .layer(DefaultBodyLimit::max(context::MAX_SMALL_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/context/{agent}/archive",
                post(
                    context::archive
                        .layer(need("POST", "/v1/context/{agent}/archive"))
                        .layer(DefaultBodyLimit::max(context::MAX_SMALL_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/bus/send",
                post(
                    bus::send
                        .layer(need("POST", "/v1/bus/send"))
                        .layer(DefaultBodyLimit::max(bus::MAX_BUS_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/bus/publish",
                post(
                    bus::publish
                        .layer(need("POST", "/v1/bus/publish"))
                        .layer(DefaultBodyLimit::max(bus::MAX_BUS_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/bus/ask",
                post(
                    bus::ask
                        .layer(need("POST", "/v1/bus/ask"))
                        .layer(DefaultBodyLimit::max(bus::MAX_BUS_BODY_BYTES.min(max_body))),
                ),
            )
            .route(
                "/v1/bus/stats",
                get(bus::stats.layer(need("GET", "/v1/bus/stats"))),
            )
            .route("/v1/events", get(events::list.layer(need("GET", "/v1/events"))))
            .route(
                "/v1/events/{seq}",
                get(events::one.layer(need("GET", "/v1/events/{seq}"))),
            )
            .route(
                "/v1/journal/verify",
                post(journal::verify.layer(need("POST", "/v1/journal/verify"))),
            )
            .route(
                "/v1/journal/checkpoint",
                post(journal::checkpoint.layer(need("POST", "/v1/journal/checkpoint"))),
            )
            .route(
                "/v1/journal/proof/inclusion",
                get(journal::inclusion.layer(need("GET", "/v1/journal/proof/inclusion"))),
            )
            .route(
                "/v1/journal/proof/consistency",
                get(journal::consistency.layer(need("GET", "/v1/journal/proof/consistency"))),
            )
            .route(
                "/v1/audit/export",
                post(journal::audit_export.layer(need("POST", "/v1/audit/export"))),
            )
            .route(
                "/v1/audit/verify",
                post(journal::audit_verify.layer(need("POST", "/v1/audit/verify"))),
            )
            .route("/metrics", get(prometheus.layer(need("GET", "/metrics"))))
            .route("/v1/openapi.json", get(openapi))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(overloaded))
                    .load_shed()
                    .concurrency_limit(cfg.max_concurrent as usize)
                    .timeout(cfg.request_timeout),
            );
    Router::new()
        .route(
            "/v1/events/stream",
            get(events::stream.layer(need("GET", "/v1/events/stream"))),
        )
        .merge(limited)
        // After routing, so the matched route labels the request metrics.
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(cfg.request_timeout, read_body))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(cfg.max_body, declared_length))
        .with_state(state)
}

/// Reads the whole request body (at most `[http] max_body`, within
/// `request_timeout`) before the route sees it, and hands it on buffered: a
/// route that takes no body (every GET, verify, 404, 405, a refused token)
/// would otherwise leave it unread, and a connection closed with unread
/// bytes is reset — the client can lose the answer. A route's own smaller
/// limit still applies when its handler reads the buffer.
async fn read_body(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    // The body limit travels in the extensions.
    let mut read = Request::new(body);
    *read.extensions_mut() = parts.extensions.clone();
    match tokio::time::timeout(timeout, axum::body::Bytes::from_request(read, &())).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => error::body_error(&e).into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the body did not arrive within [http] request_timeout",
        )
        .into_response(),
    }
}

/// Refuses a body whose declared length is over the limit before reading
/// any of it (the body limit above catches bodies without a length).
async fn declared_length(State(max_body): State<u64>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared
        && n > max_body
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is {n} bytes; [http] max_body is {max_body}"),
        )
        .into_response();
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; the API is described at /v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see /v1/openapi.json",
    )
}

async fn overloaded(e: tower::BoxError) -> ApiError {
    if e.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took longer than [http] request_timeout",
        )
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "the server is serving [http] max_concurrent requests; retry shortly",
        );
        e.retry_after_s = Some(1);
        e
    } else {
        ApiError::internal(&anyhow::anyhow!("{e}"))
    }
}

/// Counts every routed request and records server errors among the recent
/// ones.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let status = response.status();
    s.metrics
        .request(&method, &route, status.as_u16(), started.elapsed().as_secs_f64());
    if status.is_server_error() {
        s.health.record("http", format!("{method} {path}: {status}"));
    }
    response
}

/// Liveness: the process answers and its core runs.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = health::HealthStatus),
              (status = 503, description = "The runtime core stopped", body = health::HealthStatus)))]
async fn health(State(s): State<AppState>) -> Response {
    let status = core_status(&s).await;
    let h = s.health.liveness(status.as_ref().map_err(Clone::clone), sse(&s));
    health_answer(&h)
}

/// Readiness: the journal takes a durable write, NATS is connected if
/// configured, dockerd answers if a container tier is configured.
#[utoipa::path(get, path = "/ready", tag = "operations", security(()),
    responses((status = 200, description = "Ready", body = health::HealthStatus),
              (status = 503, description = "Not ready; the components say why", body = health::HealthStatus)))]
async fn ready(State(s): State<AppState>) -> Response {
    let status = core_status(&s).await;
    let h = s
        .health
        .readiness(&s.journal, status.as_ref().map_err(Clone::clone), sse(&s))
        .await;
    health_answer(&h)
}

fn sse(s: &AppState) -> u64 {
    u64::try_from(s.metrics.sse_clients().get()).unwrap_or(0)
}

async fn core_status(s: &AppState) -> Result<serde_json::Value, String> {
    match tokio::time::timeout(Duration::from_secs(2), s.runtime.status()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the runtime core did not answer within 2s".into()),
    }
}

fn health_answer(h: &health::HealthStatus) -> Response {
    let code = if h.overall_status == health::SystemStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(h)).into_response()
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text", body = String)))]
async fn prometheus(State(s): State<AppState>) -> Response {
    let status = core_status(&s).await.unwrap_or_default();
    let text = s.metrics.render(&s.journal, &status);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "stele",
        description = "The HTTP API of `stele up`: the runtime's operations over its signed, hash-chained journal. Errors are `{\"error\": {\"code\", \"message\"}}`. With `[http] tokens` configured every route but /health, /ready and /v1/openapi.json needs `Authorization: Bearer <token>`; each operation's `security` names the least scope it needs: read (reads, replays, searches), operate (changes) or admin (shutdown, policy reload). A token of a lower scope gets 403, none or an unknown one 401."
    ),
    paths(
        handlers::status, handlers::agents, handlers::agent, handlers::register, handlers::stop,
        handlers::shutdown, handlers::runs, handlers::run, runs::start, runs::approve, runs::reject,
        events::list, events::one, events::stream,
        journal::verify, journal::checkpoint, journal::inclusion, journal::consistency,
        journal::audit_export, journal::audit_verify,
        replay::at, replay::diff, replay::replay, replay::fork, replay::backtest, policy::reload,
        context::show, context::stats, context::search, context::store, context::update,
        context::share, context::feedback, context::archive,
        bus::send, bus::publish, bus::ask, bus::stats,
        health, ready, prometheus, openapi,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Scopes),
    tags(
        (name = "runtime", description = "The runtime's state, shutdown and policy reload"),
        (name = "agents", description = "Agent registration and lifecycle"),
        (name = "runs", description = "Reasoning runs"),
        (name = "events", description = "The journal's events, paged and live"),
        (name = "journal", description = "Verification, checkpoints, Merkle proofs"),
        (name = "audit", description = "Offline-verifiable audit bundles"),
        (name = "replay", description = "Replay, time travel, forks and policy backtests"),
        (name = "context", description = "Agents' memory and knowledge: show, search, store, update, share, feedback, archive, stats"),
        (name = "bus", description = "The bus: direct messages, topics, requests, stats"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme, and on every operation the scope it needs
/// as [`auth::ROUTES`] says — the table the router enforces.
struct Scopes;

impl utoipa::Modify for Scopes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of `[[http.tokens]]` (`stele token create NAME --scope read|operate|admin`); the scopes listed on an operation are the least it needs (read < operate < admin)",
                    ))
                    .build(),
            ),
        );
        doc.security = None;
        for (route, item) in &mut doc.paths.paths {
            for (method, op) in [
                ("GET", &mut item.get),
                ("POST", &mut item.post),
                ("PATCH", &mut item.patch),
                ("PUT", &mut item.put),
                ("DELETE", &mut item.delete),
            ] {
                let Some(op) = op.as_mut() else { continue };
                // An operation the table misses keeps no `security`; the
                // tests refuse such a document.
                op.security = auth::access(method, route).map(|a| {
                    vec![match a {
                        Access::Public => SecurityRequirement::default(),
                        Access::Token(scope) => SecurityRequirement::new("bearer", [scope.name()]),
                    }]
                });
            }
        }
    }
}

/// The document as `stele openapi` prints it (and docs/openapi.json holds).
///
/// # Errors
/// Serialization failed.
pub fn openapi_text() -> Result<String> {
    Ok(ApiDoc::openapi().to_pretty_json()? + "\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The table the router enforces and the document's operations are the
    /// same set, and every operation declares what the table says.
    #[test]
    fn every_documented_operation_is_in_the_scope_table_and_back() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_text().expect("document")).expect("JSON");
        let mut documented = BTreeSet::new();
        for (route, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let method = method.to_uppercase();
                let access = auth::access(&method, route)
                    .unwrap_or_else(|| panic!("{method} {route} is documented but not in auth::ROUTES"));
                let declared = &op["security"];
                let expected = match access {
                    Access::Public => serde_json::json!([{}]),
                    Access::Token(s) => serde_json::json!([{"bearer": [s.name()]}]),
                };
                assert_eq!(declared, &expected, "{method} {route}");
                documented.insert((method, route.clone()));
            }
        }
        let table: BTreeSet<(String, String)> = auth::ROUTES
            .iter()
            .map(|(m, r, _)| ((*m).to_owned(), (*r).to_owned()))
            .collect();
        assert_eq!(documented, table, "auth::ROUTES and the document differ");
    }
}
