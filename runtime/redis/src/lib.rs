//! Broadcaster's Redis layer: everything that speaks to a Redis, in one crate with fixed file
//! roles.
//!
//! # What it owns
//! - [`options`]: one connection type, [`RedisConnection`](options::RedisConnection), as
//!   written (`host`/`port`/`db` or `url`, ACL user, password as a secret, `tls`, `sentinel`,
//!   `cluster`, timeouts, `max_memory_ratio`), embedded by the native backend's `options` and a
//!   component's `redis` grant, checked when the configuration loads.
//! - [`endpoint`]: those options resolved into how to reach the Redis.
//! - [`connector`]: one server, a Sentinel-watched master or a Cluster behind one connection.
//! - [`client`]: the reconnecting stream client both kinds of publisher use
//!   ([`StreamClient`](client::StreamClient), shared per endpoint by
//!   [`StreamClients`](client::StreamClients)).
//! - [`memory_pressure`]: Redis out of memory holds publishers down like an outage.
//! - [`native`]: the native `redis-stream` backend (the seed's `RedisStreamBackend`).
//!
//! # Extending it
//! A new connection option is a field of [`RedisConnection`](options::RedisConnection) with
//! its check in [`options`], its key in [`CONNECTION_KEYS`](options::CONNECTION_KEYS) and an
//! arm reading it in `options/table.rs`, and what it resolves to in [`endpoint`]; both kinds
//! of publisher get it at once. A new command the publishers send
//! goes in [`client`], bounded by the socket timeout like the others.
//!
//! # Example
//! ```
//! use broadcaster_redis::native::RedisStreamOptions;
//!
//! let options: toml::Table = toml::from_str(r#"
//!     host = "localhost"
//!     stream_name = "events"
//! "#).unwrap();
//! let options = RedisStreamOptions::from_table(&options).unwrap();
//! assert_eq!(options.stream_name, "events");
//! ```
#![deny(missing_docs)]

pub mod client;
pub mod connector;
pub mod endpoint;
pub mod memory_pressure;
pub mod native;
pub mod options;
