//! Test harness for Broadcaster's integration tests: a real `redis-server` per test on a
//! free port, and the paths of the components built for the tests.
//!
//! # Layout
//! - [`RedisServer`]: spawns `redis-server --save ""` on a free port, kills it on drop, and
//!   can stop and restart it on the same port (for outage tests).
//! - [`TlsRedisServer`]: the same with a TLS port, its certificates made by the test with the
//!   `openssl` command line; [`RedisServer::add_acl_user`] adds an ACL user limited to some
//!   keys.
//! - [`SentinelGroup`]: a master, a replica and three Sentinels (`redis-server --sentinel`),
//!   for failover tests.
//! - [`RedisCluster`]: three masters (and a replica each) joined by
//!   `redis-cli --cluster create`.
//! - [`TestDatabase`]: a fresh PostgreSQL database per test on the local server, dropped
//!   afterwards.
//! - [`TestOutbox`]: an empty outbox database of either kind ([`OutboxKind`]).
//! - [`process_output`]: a child process's stderr line by line, and waiting for a line.
//! - [`components`]: paths of the shipped and test-only `.wasm` components, built by
//!   `build.rs` (Rust) and `scripts/build-polyglot` (Python, JavaScript).
#![deny(missing_docs)]

mod outbox;
mod postgres;
pub mod process_output;
mod redis_cluster;
mod redis_sentinel;
mod redis_server;
mod tls_redis_server;

pub use outbox::{OutboxKind, TestOutbox};
pub use postgres::{TestDatabase, server_url as postgres_server_url};
pub use redis_cluster::{RedisCluster, SlotMove};
pub use redis_sentinel::{SENTINEL_MASTER, SentinelGroup};
pub use redis_server::RedisServer;
pub use tls_redis_server::TlsRedisServer;

/// Paths of the components built by `build.rs` for `wasm32-wasip2`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));

    /// A Python or JavaScript component built by `scripts/build-polyglot`, by file name without
    /// `.wasm` (`python-redis-stream`, `js-raiser`): the shipped ones are in `components/dist/`,
    /// the test-only ones in `tests/test-components/dist/`.
    ///
    /// Panics, saying how to build it, when it is missing.
    pub fn polyglot(name: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let candidates = [root.join("components/dist"), root.join("tests/test-components/dist")];
        candidates
            .iter()
            .map(|dir| dir.join(format!("{name}.wasm")))
            .find(|path| path.exists())
            .unwrap_or_else(|| panic!("{name}.wasm is not built: run scripts/build-polyglot (scripts/test does)"))
            .display()
            .to_string()
    }
}
