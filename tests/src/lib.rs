//! Test harness for Broadcaster's integration tests: a real `redis-server` per test on a
//! free port, and the paths of the components built for the tests.
//!
//! # Layout
//! - [`RedisServer`]: spawns `redis-server --save ""` on a free port, kills it on drop, and
//!   can stop and restart it on the same port (for outage tests).
//! - [`TestDatabase`]: a fresh PostgreSQL database per test on the local server, dropped
//!   afterwards.
//! - [`components`]: paths of the shipped and test-only `.wasm` components, built by
//!   `build.rs`.
#![deny(missing_docs)]

mod postgres;
mod redis_server;

pub use postgres::{TestDatabase, server_url as postgres_server_url};
pub use redis_server::RedisServer;

/// Paths of the components built by `build.rs` for `wasm32-wasip2`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}
