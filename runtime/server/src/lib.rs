//! The HTTP service of `broadcaster serve`: event ingest for tenants, metrics and probes for
//! operators.
//!
//! - `POST /v1/publishers/{name}/events` ([`ingest`]): CloudEvents over HTTP (structured,
//!   binary, batch), committed to the outbox before the answer; bearer tokens ([`tokens`]).
//! - `GET /metrics`: [`broadcaster_relay::metrics`] in the Prometheus text format.
//! - `GET /healthz`: the process answers. `GET /readyz`: the outbox answers (503 otherwise),
//!   with every publisher's health as JSON detail.
//! - `GET /` and `GET /v1/status` ([`status_page`]): the operators' status page and its data,
//!   for admin tokens.
//! - `POST /v1/admin/reload` (`admin.rs`): a live reload (`broadcaster::reload`, through [`LiveReload`]), for admin tokens.
//! - `/v1/admin/components`, `/v1/admin/publishers…`, `/v1/admin/tokens…` ([`tenant_admin`]):
//!   the tenants' catalog in the outbox database, through [`tenant_admin::TenantAdmin`].
//! - [`group_commit`]: requests that arrive together share one transaction.
//! - [`api_error`]: the one shape of every error answer.
//!
//! # Extending it
//! An endpoint is a handler in the file of its audience (`ingest.rs` for tenants, `admin.rs`
//! and `status_page/` for operators) and one route in [`router`]; a bad input is an
//! [`ApiError`](api_error::ApiError) with a stable `code`, never a bare status. Admin
//! endpoints check the token with `status_page::require_admin` first. The server writes the
//! outbox through the relay's [`OutboxStore`] (group commit) and reads the relay's state; what
//! needs the binary (a reload) comes through a trait defined here ([`LiveReload`]).
//!
//! ```no_run
//! # async fn example(config: broadcaster_config::Config, relay: std::sync::Arc<broadcaster_relay::Relay>) -> anyhow::Result<()> {
//! use broadcaster_server::{ServerState, serve};
//!
//! let state = ServerState::new(&config, &relay)?;
//! let listener = tokio::net::TcpListener::bind(config.server.listen_addr().map_err(anyhow::Error::msg)?).await?;
//! serve(listener, state, std::future::pending()).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod admin;
pub mod api_error;
pub mod group_commit;
pub mod ingest;
pub mod status_page;
pub mod tenant_admin;
pub mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

use api_error::ApiError;
use broadcaster_config::{Config, ConfigError};
use broadcaster_core::event::now_micros;
use broadcaster_outbox::OutboxStore;
use broadcaster_relay::metrics::Metrics;
use broadcaster_relay::registry::PublisherRegistry;
use broadcaster_relay::{HealthBoard, Relay};
use tokens::TokenTable;

/// A live reload, as `POST /v1/admin/reload` asks for one. The server defines it and only
/// calls it; the `broadcaster` crate's `Reloader` implements it (reading the configuration
/// again needs every layer, which the server does not depend on).
pub trait LiveReload: Send + Sync + std::fmt::Debug {
    /// Reads the configuration again and applies it, logging the outcome: what changed (as
    /// JSON, for the answer), or why nothing did.
    fn reload_for_admin(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + '_>>;
}

/// How long `/readyz` waits for the outbox before calling it unreachable.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a request may hold (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Most bytes in a body.
    pub max_body: usize,
    /// Most events in a batch.
    pub max_batch_events: u32,
    /// Most bytes in an uploaded component.
    pub max_component: usize,
}

/// What the handlers share.
#[derive(Debug)]
pub struct ServerState {
    store: OutboxStore,
    writer: group_commit::GroupCommit,
    /// The relay, for its publishers now (a reload replaces them).
    relay: Arc<Relay>,
    health: Arc<HealthBoard>,
    metrics: Arc<Metrics>,
    /// The tokens in force; a reload replaces them ([`ServerState::replace_tokens`]).
    tokens: std::sync::RwLock<Arc<TokenTable>>,
    limits: IngestLimits,
    backlog_refresh: Duration,
    /// When the backlog gauges were last counted (one count at a time).
    backlog_counted: tokio::sync::Mutex<Option<Instant>>,
    /// What `POST /v1/admin/reload` calls, when set.
    reloader: std::sync::OnceLock<Arc<dyn LiveReload>>,
    /// What the tenant admin endpoints call, when the database has a catalog.
    tenant_admin: std::sync::OnceLock<Arc<dyn tenant_admin::TenantAdmin>>,
    status: status_page::StatusPage,
}

impl ServerState {
    /// The state for serving `relay`'s outbox and publishers with `config`'s `[server]` and
    /// `[tokens]` (their secrets read from the process environment).
    pub fn new(config: &Config, relay: &Arc<Relay>) -> Result<Arc<Self>, ConfigError> {
        let tokens = TokenTable::from_config(config, &|name| std::env::var(name).ok())?;
        Ok(Self::with_tokens(config, relay, tokens))
    }

    /// The same with `tokens` already read.
    pub fn with_tokens(config: &Config, relay: &Arc<Relay>, tokens: TokenTable) -> Arc<Self> {
        Arc::new(Self {
            store: relay.store().clone(),
            writer: group_commit::GroupCommit::start(
                relay.store().clone(),
                if relay.store().display_url().starts_with("sqlite") { 1 } else { 2 },
            ),
            relay: relay.clone(),
            health: relay.health_board(),
            metrics: relay.metrics().clone(),
            tokens: std::sync::RwLock::new(Arc::new(tokens)),
            limits: IngestLimits {
                max_body: usize::try_from(config.server.max_body.0).unwrap_or(usize::MAX),
                max_batch_events: config.server.max_batch_events,
                max_component: usize::try_from(config.server.max_component.0).unwrap_or(usize::MAX),
            },
            backlog_refresh: config.server.backlog_refresh.0,
            backlog_counted: tokio::sync::Mutex::default(),
            reloader: std::sync::OnceLock::new(),
            tenant_admin: std::sync::OnceLock::new(),
            status: status_page::StatusPage::default(),
        })
    }

    /// Whether no token is configured (ingest then refuses every request).
    pub fn has_no_tokens(&self) -> bool {
        self.tokens().is_empty()
    }

    /// Lets `POST /v1/admin/reload` reload through `reloader` (once).
    pub fn set_reloader(&self, reloader: Arc<dyn LiveReload>) {
        let _ = self.reloader.set(reloader);
    }

    /// Lets the tenant admin endpoints work through `tenants` (once).
    pub fn set_tenant_admin(&self, tenants: Arc<dyn tenant_admin::TenantAdmin>) {
        let _ = self.tenant_admin.set(tenants);
    }

    /// The tokens in force.
    pub fn tokens(&self) -> Arc<TokenTable> {
        self.tokens.read().expect("tokens lock").clone()
    }

    /// Puts `next` in force (a reload); a token whose secret, rate and burst did not change
    /// keeps what its rate limit had left.
    pub fn replace_tokens(&self, next: TokenTable) {
        let mut tokens = self.tokens.write().expect("tokens lock");
        next.keep_buckets_of(&tokens);
        *tokens = Arc::new(next);
    }

    /// The publishers in force.
    pub fn registry(&self) -> Arc<PublisherRegistry> {
        self.relay.registry()
    }
}

/// The routes.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/publishers/{name}/events", post(ingest::post_events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(status_page::page))
        .route("/v1/status", get(status_page::status))
        .route("/v1/admin/reload", post(admin::reload))
        .route("/v1/admin/components", put(tenant_admin::put_component))
        .route("/v1/admin/publishers", get(tenant_admin::publishers))
        .route(
            "/v1/admin/publishers/{name}",
            get(tenant_admin::publisher).put(tenant_admin::put_publisher).delete(tenant_admin::remove_publisher),
        )
        .route("/v1/admin/publishers/{name}/rollback", post(tenant_admin::rollback))
        .route("/v1/admin/tokens", post(tenant_admin::make_token))
        .route("/v1/admin/tokens/{name}", delete(tenant_admin::revoke_token))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then lets the requests in
/// progress finish. The status page's throughput sampler runs meanwhile, and is stopped before
/// this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut background = tokio::task::JoinSet::new();
    background.spawn(status_page::sample_throughput(state.clone()));
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    background.shutdown().await;
    served
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let registry = state.registry();
    broadcaster_relay::scrape::refresh_publishers(&state.metrics, &registry, &state.health);
    {
        let mut counted = state.backlog_counted.lock().await;
        if counted.is_none_or(|at| at.elapsed() >= state.backlog_refresh) {
            match tokio::time::timeout(READY_TIMEOUT, state.store.backlog()).await {
                Ok(Ok(backlog)) => {
                    state.metrics.set_backlog(registry.iter().map(|(name, _)| name), &backlog, now_micros());
                    *counted = Some(Instant::now());
                }
                Ok(Err(err)) => {
                    tracing::warn!(%err, "metrics: counting the backlog failed; the gauges keep their last values")
                }
                Err(_) => tracing::warn!(
                    "metrics: counting the backlog took over {READY_TIMEOUT:?}; the gauges keep their last values"
                ),
            }
        }
    }
    ([(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)], state.metrics.render()).into_response()
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    let outbox = match tokio::time::timeout(READY_TIMEOUT, state.store.verify()).await {
        Ok(Ok(())) => serde_json::json!({ "ready": true, "url": state.store.display_url() }),
        Ok(Err(err)) => {
            serde_json::json!({ "ready": false, "url": state.store.display_url(), "error": err.to_string() })
        }
        Err(_) => serde_json::json!({
            "ready": false,
            "url": state.store.display_url(),
            "error": format!("no answer within {READY_TIMEOUT:?}"),
        }),
    };
    let ready = outbox["ready"] == true;
    let registry = state.registry();
    // With many publishers (a platform's tenants), only those not known to be healthy are
    // named, and the healthy ones counted: a probe every few seconds must stay small.
    let everything = registry.len() <= status_page::PUBLISHERS_SHOWN;
    let mut healthy_omitted = 0usize;
    let publishers: serde_json::Map<String, serde_json::Value> = registry
        .iter()
        .filter_map(|(name, _)| {
            let detail = match state.health.last(name) {
                Some(h) if h.healthy && !everything => {
                    healthy_omitted += 1;
                    return None;
                }
                Some(h) => serde_json::json!({ "healthy": h.healthy, "idle": h.idle, "detail": h.detail }),
                None => serde_json::json!({ "healthy": null, "idle": null, "detail": "not checked yet" }),
            };
            Some((name.to_string(), detail))
        })
        .collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = serde_json::json!({ "ready": ready, "outbox": outbox, "publishers": publishers });
    if !everything {
        body["publishers_healthy_not_listed"] = healthy_omitted.into();
    }
    (status, axum::Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "events and /v1/admin/reload are sent with POST; /, /v1/status, /metrics, /healthz and /readyz answer GET",
    )
    .into_response()
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: POST /v1/publishers/{name}/events, POST /v1/admin/reload, GET / (status page), \
         GET /v1/status, GET /metrics, GET /healthz, GET /readyz",
    )
    .into_response()
}
