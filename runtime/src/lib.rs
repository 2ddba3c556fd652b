//! Broadcaster: a transactional-outbox relay whose publishers are the native Redis Stream
//! backend or sandboxed WebAssembly components.
//!
//! This crate is the library behind the `broadcaster` binary; a Rust application can use it
//! to publish events through the configured publishers.
//!
//! # Layout
//! The runtime is a workspace of crates, one per layer; each depends only on those below it
//! (ARCHITECTURE.md has the map, CONTRIBUTING.md says where new things go):
//! - `broadcaster-core` ([`event`], [`outcome`], [`routing`], [`extension_attributes`],
//!   [`cloudevent_input`], units and secrets): the vocabulary every layer shares.
//! - `broadcaster-config` ([`config`]): `broadcaster.toml` and its `BROADCASTER_…` environment
//!   overrides, as shapes; the checks that need another layer are in [`checks`].
//! - `broadcaster-outbox` ([`outbox`]): the `outbox_events` table (django-broadcaster's) on
//!   SQLite or PostgreSQL: migrate, enqueue (also inside your own transaction), claim, settle,
//!   operate.
//! - `broadcaster-redis` ([`redis_options`], [`redis_endpoint`], [`redis_connector`],
//!   [`stream_client`], [`memory_pressure`], and the native backend
//!   [`publisher::redis_stream`]): everything that speaks to a Redis.
//! - `broadcaster-host` ([`host`]): the WebAssembly host: engine, component checks, sandboxed
//!   instances, and the capability table ([`host::capabilities`]) bound to each publisher's
//!   grants.
//! - `broadcaster-relay` ([`relay`], [`publisher`], [`registry`], [`metrics`], [`otlp`],
//!   [`trace_context`]): the publishers by name and the worker loop.
//! - `broadcaster-server` ([`server`]): the HTTP service of `broadcaster serve`.
//! - this crate: the command line (`main.rs` and `cli/`, one file per command), [`checks`]
//!   (a configuration checked across the layers), [`reload`] (live configuration changes),
//!   [`tenants`] (tenants defined through the admin API, stored in the outbox database),
//!   and the paths above, re-exported so code written against the single crate still
//!   compiles.
//!
//! # Example
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use broadcaster::{config::Config, event::{OutboxEvent, Payload}, registry::PublisherRegistry};
//!
//! let config = broadcaster::checks::load_config("broadcaster.toml".as_ref())?;
//! let publishers = PublisherRegistry::build(&config, None).await?;
//! let mut event = OutboxEvent::new("order.created", "shop");
//! event.data = Payload::Json(serde_json::json!({"order": 42}));
//! publishers.route(&event.publisher_backend)?.publish(&event).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod checks;
pub mod reload;
pub mod tenants;

pub use broadcaster_config as config;
pub use broadcaster_core::{cloudevent_input, event, extension_attributes, outcome, routing};
pub use broadcaster_host as host;
pub use broadcaster_outbox as outbox;
pub use broadcaster_redis::client as stream_client;
pub use broadcaster_redis::connector as redis_connector;
pub use broadcaster_redis::endpoint as redis_endpoint;
pub use broadcaster_redis::memory_pressure;
pub use broadcaster_redis::options as redis_options;
pub use broadcaster_relay as relay;
pub use broadcaster_relay::{metrics, otlp, publisher, registry, trace_context};
pub use broadcaster_server as server;

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
    if let Some(err) = error.downcast_ref::<tenants::TenantError>() {
        return err.is_bad_input();
    }
    error.is::<config::ConfigError>()
        || error.is::<cloudevent_input::InputError>()
        || error.is::<host::ComponentError>()
        || error.is::<registry::UnknownPublisher>()
}
