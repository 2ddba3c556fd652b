//! `[server]` and `[tokens.<name>]`: the HTTP service of `broadcaster serve` and who may
//! send events through it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, Seconds};

/// `[server]`: where `broadcaster serve` listens and what a request may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The largest request body accepted; a larger one is answered 413 before it is read
    /// whole. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// The most events one batch request may carry (413 beyond). Default 1000.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: u32,
    /// How old the backlog gauges of `/metrics` may be: the outbox is counted at most this
    /// often, however many scrapers ask. Default 5 s.
    #[serde(default = "default_backlog_refresh")]
    pub backlog_refresh: Seconds,
    /// The largest component `PUT /v1/admin/components` accepts (413 beyond). Default 50 MiB.
    #[serde(default = "default_max_component")]
    pub max_component: ByteSize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body: default_max_body(),
            max_batch_events: default_max_batch_events(),
            backlog_refresh: default_backlog_refresh(),
            max_component: default_max_component(),
        }
    }
}

impl ServerConfig {
    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|_| format!("{:?} is not an address to listen on like \"127.0.0.1:8080\"", self.listen))
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_max_component() -> ByteSize {
    ByteSize(50 * 1024 * 1024)
}
fn default_max_batch_events() -> u32 {
    1000
}
fn default_backlog_refresh() -> Seconds {
    Seconds(Duration::from_secs(5))
}

/// `[tokens.<name>]`: a bearer token for HTTP ingest (the publishers it may send to, and its
/// rate limit) or for the operators' endpoints (`admin`), or both. The token itself is never written in the file: `secret` is
/// `{ secret = "ENV_VAR" }`, `{ secret_file = "path" }`, or `{ sha256 = "<hex digest of the
/// token>" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Where the token comes from (checked when the server starts).
    pub secret: toml::Value,
    /// The publishers this token may send to: names or patterns (`tenant-a-*`). Default none
    /// (then the token must be `admin`).
    #[serde(default)]
    pub publishers: Vec<String>,
    /// Whether this token reaches the operators' endpoints (the status page). Default false.
    #[serde(default)]
    pub admin: bool,
    /// Events per second this token may send, on average; none means no limit.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Events this token may send at once above its rate. Default: one second's worth of
    /// `rate` (at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}
