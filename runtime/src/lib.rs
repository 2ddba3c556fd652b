//! Broadcaster: a transactional-outbox relay whose publishers are the native Redis Stream
//! backend or sandboxed WebAssembly components.
//!
//! This crate is the library behind the `broadcaster` binary; a Rust application can use it
//! to publish events through the configured publishers.
//!
//! # Layout
//! - [`config`]: `broadcaster.toml` and its `BROADCASTER_…` environment overrides.
//! - [`event`]: the event model (an outbox row's CloudEvent) and its rendering.
//! - [`cloudevent_input`]: events given as CloudEvent JSON or command-line flags.
//! - [`extension_attributes`]: the extension attributes an event may carry (bounds, names,
//!   the W3C `traceparent`), and [`trace_context`]: the relay's publish spans, parented by it.
//! - [`outcome`]: what publishing comes to ([`PublishError`](outcome::PublishError),
//!   [`Attempt`](outcome::Attempt), [`Health`](outcome::Health)); a leaf both kinds of
//!   publisher answer in.
//! - [`routing`]: which publisher an event goes to (`''` → `default`), written once.
//! - [`publisher`]: the [`Publisher`](publisher::Publisher) enum and the native Redis Stream
//!   backend ([`publisher::redis_stream`]).
//! - [`host`]: the WebAssembly host: engine, component checks, sandboxed instances, and the
//!   capability table ([`host::capabilities`]: WASI, `log`, `redis-stream`, `http`) bound to
//!   each publisher's grants.
//! - [`metrics`]: what `GET /metrics` reports (Prometheus text format).
//! - [`otlp`]: the publish spans sent to an OpenTelemetry collector (`[telemetry]`).
//! - [`registry`]: keeps the configured publishers, built and started, by name; rebuilds
//!   them for a new configuration, keeping the unchanged ones.
//! - [`reload`]: live configuration changes (`SIGHUP`, `POST /v1/admin/reload`): all or
//!   nothing, applied while the other publishers keep publishing.
//! - [`outbox`]: the `outbox_events` table (django-broadcaster's) on SQLite or PostgreSQL:
//!   migrate, enqueue (also inside your own transaction), claim, settle, operate.
//! - [`relay`]: the worker loop: leases, backoff, health gating, fencing.
//! - [`server`]: the HTTP service of `broadcaster serve`: ingest, `/metrics`, probes.
//! - [`stream_client`]: the reconnecting Redis connection both kinds of publisher use, and
//!   [`redis_options`]: the connection options they share (`url`, ACL user, TLS, Sentinel,
//!   Cluster), resolved into a [`redis_endpoint`]; and
//!   [`memory_pressure`]: Redis out of memory holds publishers down like an outage, and
//!   [`redis_connector`]: one server, Sentinel or Cluster behind the same client.
//! - `main.rs` and `cli/`: the command line (one file per command).
//!
//! # Example
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use broadcaster::{config::Config, event::{OutboxEvent, Payload}, registry::PublisherRegistry};
//!
//! let config = Config::load("broadcaster.toml".as_ref())?;
//! let publishers = PublisherRegistry::build(&config, None).await?;
//! let mut event = OutboxEvent::new("order.created", "shop");
//! event.data = Payload::Json(serde_json::json!({"order": 42}));
//! publishers.route(&event.publisher_backend)?.publish(&event).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cloudevent_input;
pub mod config;
pub mod event;
pub mod extension_attributes;
pub mod host;
pub mod memory_pressure;
pub mod metrics;
pub mod otlp;
pub mod outbox;
pub mod outcome;
pub mod publisher;
pub mod redis_connector;
pub mod redis_endpoint;
pub mod redis_options;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod routing;
pub mod server;
pub mod stream_client;
pub mod trace_context;

/// Whether `error` is one of this library's errors that blames the input (a configuration,
/// a component file, an option, an event, a database URL) rather than the world (a database
/// or Redis that failed, the machine). Each error type decides for itself; the command line
/// exits 2 for these.
pub fn is_bad_input(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(err) = error.downcast_ref::<outbox::StoreError>() {
        return err.is_bad_input();
    }
    if let Some(err) = error.downcast_ref::<registry::RegistryError>() {
        return err.is_bad_input();
    }
    error.is::<config::ConfigError>()
        || error.is::<cloudevent_input::InputError>()
        || error.is::<host::ComponentError>()
        || error.is::<registry::UnknownPublisher>()
}
