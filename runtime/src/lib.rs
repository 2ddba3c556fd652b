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
//! - [`publisher`]: the [`Publisher`](publisher::Publisher) enum, errors, health, and the
//!   native Redis Stream backend ([`publisher::redis_stream`]).
//! - [`host`]: the WebAssembly host: engine, component checks, sandboxed instances, and the
//!   capabilities (`redis-stream`, `log`) bound to each publisher's grants.
//! - [`registry`]: builds every configured publisher and routes events to them.
//! - [`outbox`]: the `outbox_events` table (django-broadcaster's) on SQLite or PostgreSQL:
//!   migrate, enqueue (also inside your own transaction), claim, settle, operate.
//! - [`relay`]: the worker loop: leases, backoff, health gating, fencing.
//! - [`stream_client`]: the reconnecting Redis connection both kinds of publisher use.
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
pub mod host;
pub mod outbox;
pub mod publisher;
pub mod registry;
pub mod relay;
pub mod stream_client;
