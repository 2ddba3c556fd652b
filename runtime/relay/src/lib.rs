//! The relay: the publishers by name, and the worker that claims due events from the outbox,
//! publishes each through its publisher, and records the outcome.
//!
//! # What it owns
//! - [`publisher`]: the [`Publisher`](publisher::Publisher) enum: the native Redis Stream
//!   backend or a sandboxed component, behind one interface.
//! - [`registry`]: the configured publishers, built and started, by name; rebuilt for a new
//!   configuration, keeping the unchanged ones.
//! - [`worker`]: the loop ([`Relay`], [`Relay::run`]: a state and its named steps), the
//!   shares it claims, publishes and settles; `busy`: which publishers have batches in
//!   flight.
//! - [`clock`]: where "now" comes from (a test can hold it still).
//! - [`backoff`]: the retry schedule.
//! - [`health`]: which publishers are healthy (checked on an interval).
//! - [`metrics`]: what `GET /metrics` reports (Prometheus text format), from plain counts and
//!   samples; [`scrape`]: what a scrape copies in from the registry and the health board.
//! - [`otlp`]: the publish spans sent to an OpenTelemetry collector, and [`trace_context`]:
//!   the spans themselves, parented by an event's `traceparent`.
//!
//! # Extending it
//! A new kind of publisher is a variant of [`Publisher`](publisher::Publisher) built in
//! [`registry`]; a new metric goes in [`metrics`], fed plain counts by the worker (or plain
//! samples by [`scrape`]): `metrics` uses nothing else of this crate.
//!
//! Guarantees: every event is published **at least once**. Duplicates happen only when a
//! worker dies (or stalls past its lease) after publishing and before recording it; the
//! stream entry's `event_id` is the key consumers drop duplicates by.
//!
//! # Example
//! A worker over the outbox and publishers of `broadcaster.toml`, until Ctrl-C (what
//! `broadcaster run` does, which also runs the configuration checks that need several
//! layers, reloads on SIGHUP and serves nothing):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use broadcaster_config::Config;
//! use broadcaster_outbox::OutboxStore;
//! use broadcaster_relay::registry::PublisherRegistry;
//! use broadcaster_relay::{Relay, RunOptions};
//!
//! # async fn relay() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load("broadcaster.toml".as_ref())?;
//! let store = OutboxStore::connect(&config.outbox.url).await?;
//! let registry = Arc::new(PublisherRegistry::build(&config, None).await?);
//! let relay = Arc::new(Relay::new(store, registry, &config.relay));
//!
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     let _ = stop.send(true);
//! });
//! let options =
//!     RunOptions { batch_size: config.relay.batch_size, interval: config.relay.interval.0, max_iterations: 0 };
//! let report = relay.run(options, shutdown).await;
//! println!("{} published, {} failed", report.totals.published, report.totals.failed);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod backoff;
pub(crate) mod busy;
pub mod clock;
pub mod health;
pub mod metrics;
pub mod otlp;
pub mod publisher;
pub mod registry;
pub mod scrape;
pub mod trace_context;
pub mod worker;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, SystemClock};
pub use health::HealthBoard;
pub use worker::{BatchReport, COMPONENT_PIPELINE_DEPTH, PIPELINE_DEPTH, Relay, RelayReport, RunOptions};
