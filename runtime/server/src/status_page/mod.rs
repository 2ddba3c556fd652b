//! The operators' status page of `broadcaster serve`: `GET /` (HTML, rendered on the server,
//! refreshed by a small inline script) and `GET /v1/status` (the same data as JSON), both for
//! admin tokens only ([`super::tokens::TokenTable::admin`]).
//!
//! What it shows ([`StatusView`]): every configured publisher with its kind, its last health
//! check, its backlog (counted at most every `server.backlog_refresh`, like `/metrics`), what
//! it published, retried and failed since the process started, and its throughput over the
//! last ten minutes ([`throughput`], sampled by [`sample_throughput`] while the server runs);
//! and the most recently failed events ([`broadcaster_outbox::OutboxBackend::recent_failed`]).
//! Every value from the outbox is tenants' data: [`html`] escapes it and bounds its length.

pub mod html;
pub mod throughput;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{READY_TIMEOUT, ServerState};
use broadcaster_core::event::now_micros;
use broadcaster_core::routing::publisher_for;
use broadcaster_outbox::{Backlog, FailedEvent, Status};
use broadcaster_relay::metrics::OutcomeTotals;
use broadcaster_relay::publisher::Publisher;
use throughput::{SAMPLE_EVERY, Throughput, ThroughputHistory};

/// How many failed events the page lists, newest first.
pub const FAILED_SHOWN: u32 = 50;

/// The longest text the page shows of one value (an error, an id, a name); longer ones are
/// cut, with `…`.
pub const LONGEST_TEXT: usize = 500;

/// The browser's login prompt for the page.
const BASIC_CHALLENGE: &str = "Basic realm=\"broadcaster\", charset=\"UTF-8\"";

/// What the status page keeps between requests: the throughput samples, and the last count of
/// the outbox (reused for `server.backlog_refresh`).
#[derive(Debug)]
pub struct StatusPage {
    started_at: DateTime<Utc>,
    throughput: ThroughputHistory,
    outbox: tokio::sync::Mutex<OutboxCount>,
}

impl Default for StatusPage {
    fn default() -> Self {
        Self { started_at: now_micros(), throughput: ThroughputHistory::default(), outbox: Default::default() }
    }
}

/// The outbox as last counted: its backlog and most recent failures.
#[derive(Debug, Clone, Default)]
struct OutboxCount {
    backlog: Vec<Backlog>,
    failed: Vec<FailedEvent>,
    counted_at: Option<DateTime<Utc>>,
    counted: Option<Instant>,
    error: Option<String>,
}

/// Everything the page shows; `GET /v1/status` is this as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// When this view was made.
    pub generated_at: DateTime<Utc>,
    /// Since when the counts run (the server's start).
    pub counting_since: DateTime<Utc>,
    /// The outbox: where, when it was last counted, and the last count's error if it failed.
    pub outbox: OutboxView,
    /// The configured publishers, by name: every one, or, when there are more than
    /// [`PUBLISHERS_SHOWN`], those with something to show (down, not checked, events waiting
    /// or in flight, outcomes since the start), at most that many.
    pub publishers: Vec<PublisherView>,
    /// Configured publishers left out of `publishers` (healthy or idle, nothing waiting,
    /// nothing published since the start; or past the cap).
    pub publishers_omitted: usize,
    /// Published events per second, per publisher.
    pub throughput: Throughput,
    /// The most recently failed events, newest first (at most [`FAILED_SHOWN`]).
    pub failed_events: Vec<FailedEvent>,
    /// Events waiting (pending, retrying) for names no configured publisher has: a publisher
    /// removed by a reload keeps its events waiting here; by name as stored.
    pub unconfigured: Vec<UnconfiguredView>,
}

/// The most publishers the page lists (see [`StatusView::publishers`]).
pub const PUBLISHERS_SHOWN: usize = 500;

/// One publisher's events in the outbox, as last counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Waiting {
    pending: u64,
    retrying: u64,
    in_flight: u64,
    oldest: Option<DateTime<Utc>>,
}

/// Events waiting for a name no configured publisher has.
#[derive(Debug, Clone, Serialize)]
pub struct UnconfiguredView {
    /// The `publisher_backend` as stored (bounded).
    pub publisher: String,
    /// Whether a reload of this process removed it (its events wait; otherwise they fail
    /// when claimed, as an unknown publisher's).
    pub removed_by_reload: bool,
    /// Pending and retrying events.
    pub waiting: u64,
}

/// The outbox's part of a [`StatusView`].
#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    /// The database URL without its password.
    pub url: String,
    /// When the backlog and failures shown were counted.
    pub counted_at: Option<DateTime<Utc>>,
    /// Why the last count failed (the values shown are then older), if it did.
    pub error: Option<String>,
}

/// One publisher's line.
#[derive(Debug, Clone, Serialize)]
pub struct PublisherView {
    /// Its configured name.
    pub name: String,
    /// `native` or `component`.
    pub kind: &'static str,
    /// What runs it: `redis-stream (native)`, `component router.wasm`.
    pub runs: String,
    /// `healthy`, `idle` (a component publisher with no instance now), `down` or
    /// `not checked`.
    pub health: &'static str,
    /// The last check's detail.
    pub health_detail: String,
    /// Events `pending`.
    pub pending: u64,
    /// Events in `retry`.
    pub retrying: u64,
    /// Events claimed and being published (`processing`).
    pub in_flight: u64,
    /// How long its oldest due event has been due, in seconds; `None` when none is due.
    pub oldest_due_seconds: Option<f64>,
    /// Events published since `counting_since`.
    pub published: u64,
    /// Attempts that failed transiently since then.
    pub retried: u64,
    /// Events given up on since then.
    pub failed: u64,
}

impl StatusPage {
    /// A view of `state` now.
    async fn view(&self, state: &ServerState) -> StatusView {
        let count = self.count_outbox(state).await;
        let now = now_micros();
        let totals = state.metrics.outcome_totals();
        let registry = state.registry();
        // The backlog by publisher, once: O(rows + publishers), not their product.
        let mut backlog: HashMap<&str, Waiting> = HashMap::new();
        for row in &count.backlog {
            let waiting = backlog.entry(publisher_for(&row.publisher_backend)).or_default();
            match row.status {
                Status::Pending => waiting.pending += row.rows,
                Status::Retry => waiting.retrying += row.rows,
                Status::Processing => waiting.in_flight += row.rows,
                _ => continue,
            }
            if matches!(row.status, Status::Pending | Status::Retry) {
                waiting.oldest = match (waiting.oldest, row.oldest_scheduled) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        let everything = registry.len() <= PUBLISHERS_SHOWN;
        let mut publishers = Vec::new();
        let mut publishers_omitted = 0;
        for (name, publisher) in registry.iter() {
            let last = state.health.last(name);
            let waiting = backlog.get(name).copied().unwrap_or_default();
            let outcomes = totals.get(name).copied().unwrap_or_default();
            let quiet = last.as_ref().is_some_and(|h| h.healthy)
                && waiting == Waiting::default()
                && outcomes == OutcomeTotals::default();
            if !everything && (quiet || publishers.len() >= PUBLISHERS_SHOWN) {
                publishers_omitted += 1;
                continue;
            }
            let (health, health_detail) = match last {
                None => ("not checked", "not checked yet".to_string()),
                Some(h) => (
                    match (h.healthy, h.idle) {
                        (true, true) => "idle",
                        (true, false) => "healthy",
                        (false, _) => "down",
                    },
                    h.detail,
                ),
            };
            publishers.push(PublisherView {
                name: name.to_string(),
                kind: match publisher {
                    Publisher::RedisStream(_) => "native",
                    Publisher::Component(_) => "component",
                },
                runs: publisher.kind(),
                health,
                health_detail: bounded(&health_detail),
                pending: waiting.pending,
                retrying: waiting.retrying,
                in_flight: waiting.in_flight,
                oldest_due_seconds: waiting
                    .oldest
                    .filter(|at| *at <= now)
                    .map(|at| (now - at).num_milliseconds() as f64 / 1000.0),
                published: outcomes.published,
                retried: outcomes.retried,
                failed: outcomes.failed,
            });
        }
        let mut unconfigured: BTreeMap<String, u64> = BTreeMap::new();
        for row in &count.backlog {
            if matches!(row.status, Status::Pending | Status::Retry)
                && !registry.contains(publisher_for(&row.publisher_backend))
            {
                *unconfigured.entry(row.publisher_backend.clone()).or_default() += row.rows;
            }
        }
        let unconfigured = unconfigured
            .into_iter()
            .map(|(publisher, waiting)| UnconfiguredView {
                removed_by_reload: state.relay.is_retired(publisher_for(&publisher)),
                publisher: bounded(&publisher),
                waiting,
            })
            .collect();
        let shown: Vec<String> = publishers.iter().map(|p: &PublisherView| p.name.clone()).collect();
        let names: Vec<&str> = shown.iter().map(String::as_str).collect();
        let published = totals.into_iter().map(|(name, t)| (name, t.published)).collect();
        StatusView {
            generated_at: now,
            counting_since: self.started_at,
            outbox: OutboxView { url: state.store.display_url(), counted_at: count.counted_at, error: count.error },
            publishers,
            publishers_omitted,
            throughput: self.throughput.rates(&names, now, &published),
            failed_events: count
                .failed
                .into_iter()
                .map(|f| FailedEvent {
                    id: bounded(&f.id),
                    publisher_backend: bounded(&f.publisher_backend),
                    event_type: bounded(&f.event_type),
                    last_error: bounded(&f.last_error),
                    ..f
                })
                .collect(),
            unconfigured,
        }
    }

    /// The outbox's backlog and recent failures, counted again when the last count is older
    /// than `server.backlog_refresh` (one count at a time). A count that fails or takes over
    /// [`READY_TIMEOUT`] leaves the last values, with the error.
    async fn count_outbox(&self, state: &ServerState) -> OutboxCount {
        let mut count = self.outbox.lock().await;
        if count.counted.is_none_or(|at| at.elapsed() >= state.backlog_refresh) {
            let counting = async { tokio::try_join!(state.store.backlog(), state.store.recent_failed(FAILED_SHOWN)) };
            match tokio::time::timeout(READY_TIMEOUT, counting).await {
                Ok(Ok((backlog, failed))) => {
                    *count = OutboxCount {
                        backlog,
                        failed,
                        counted_at: Some(now_micros()),
                        counted: Some(Instant::now()),
                        error: None,
                    };
                }
                Ok(Err(err)) => {
                    tracing::warn!(%err, "status page: counting the outbox failed; showing the last count");
                    count.error = Some(bounded(&err.to_string()));
                }
                Err(_) => count.error = Some(format!("the outbox did not answer within {READY_TIMEOUT:?}")),
            }
        }
        count.clone()
    }
}

/// `text` cut to [`LONGEST_TEXT`] characters, with `…` when it was longer.
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(LONGEST_TEXT) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// Records every publisher's published total every [`SAMPLE_EVERY`], starting now, for the
/// throughput chart. Runs until dropped (`serve` stops it when it returns).
pub async fn sample_throughput(state: Arc<ServerState>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let published: BTreeMap<String, u64> =
            state.metrics.outcome_totals().into_iter().map(|(name, t)| (name, t.published)).collect();
        state.status.throughput.record(now_micros(), published);
    }
}

/// The name of the admin token `headers` carry, or the refusal to answer: 401 (offering HTTP
/// Basic as well as Bearer, so a browser asks for the token) or 403.
pub(super) fn require_admin(state: &ServerState, headers: &HeaderMap) -> Result<String, Box<Response>> {
    state.tokens().admin(headers).map(|token| token.name.clone()).map_err(|error| {
        let mut response = error.into_response();
        if response.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().append(header::WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE));
        }
        Box::new(response)
    })
}

/// `GET /`: the page, for an admin token (a browser is asked for HTTP Basic credentials).
pub(super) async fn page(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = require_admin(&state, &headers) {
        return *refusal;
    }
    let view = state.status.view(&state).await;
    let mut response = axum::response::Html(html::render(&view)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, html::content_security_policy());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /v1/status`: the page's data as JSON, for an admin token.
pub(super) async fn status(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = require_admin(&state, &headers) {
        return *refusal;
    }
    let view = state.status.view(&state).await;
    let mut response = axum::Json(view).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary_with_an_ellipsis() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(LONGEST_TEXT + 10);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), LONGEST_TEXT + 1);
        assert!(cut.ends_with("é…"));
        assert_eq!(bounded(&"x".repeat(LONGEST_TEXT)), "x".repeat(LONGEST_TEXT));
    }
}
