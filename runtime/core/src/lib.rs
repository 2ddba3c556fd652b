//! Broadcaster's shared vocabulary: the types every layer speaks and none owns.
//!
//! # What it owns
//! - [`event`]: the event a publisher publishes (an outbox row's CloudEvent and its
//!   bookkeeping) and its rendering.
//! - [`outcome`]: what publishing comes to ([`PublishError`](outcome::PublishError),
//!   [`Attempt`](outcome::Attempt), [`Health`](outcome::Health)); the native backend and the
//!   wasm host both answer in these terms without knowing each other.
//! - [`routing`]: which publisher an event goes to (`''` → `default`), written once.
//! - [`extension_attributes`]: the CloudEvents extension attributes an event may carry (bounds,
//!   names, the W3C `traceparent`).
//! - [`cloudevent_input`]: events given as CloudEvent JSON or command-line flags.
//! - [`units`]: durations and byte sizes as people write them (`"2s"`, `"32MiB"`).
//! - [`secrets`]: secret references in options (`{ secret = "ENV" }`) and their redaction.
//!
//! # Extending it
//! Only a type that two layers above must share without knowing each other belongs here
//! (the outbox and the Redis layer both use [`event::OutboxEvent`]). It depends on no other
//! runtime crate; a type that needs a database, Redis or wasmtime goes to that layer's crate.
//!
//! # Example
//! ```
//! use broadcaster_core::event::{OutboxEvent, Payload};
//! use broadcaster_core::routing::publisher_for;
//! use broadcaster_core::units::{ByteSize, parse_byte_size};
//!
//! let mut event = OutboxEvent::new("order.created", "shop");
//! event.data = Payload::Json(serde_json::json!({"order": 42}));
//! assert_eq!(publisher_for(&event.publisher_backend), "default");
//! assert_eq!(ByteSize(parse_byte_size("32MiB").unwrap()).to_string(), "32MiB");
//! ```
#![deny(missing_docs)]

pub mod cloudevent_input;
pub mod event;
pub mod extension_attributes;
pub mod outcome;
pub mod routing;
pub mod secrets;
pub mod units;
