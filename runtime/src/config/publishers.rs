//! `[publishers.<name>]`: what each publisher runs, what it may use, and its limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, Seconds};

/// `[publishers.<name>]`: one publisher. Exactly one of `backend` and `component` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    /// A native backend by name; only `redis-stream` exists.
    pub backend: Option<String>,
    /// A WebAssembly component file implementing `broadcaster:backend/publisher`; a relative
    /// path is relative to the config file.
    pub component: Option<PathBuf>,
    /// `[publishers.<name>.options]`: the backend's own options. For the native
    /// `redis-stream` the seed's option names; for a component, handed to its `init` as JSON.
    #[serde(default)]
    pub options: toml::Table,
    /// `[publishers.<name>.grants]`: capabilities a component may use. None by default.
    #[serde(default)]
    pub grants: Grants,
    /// `[publishers.<name>.limits]`: resource limits for a component.
    #[serde(default)]
    pub limits: Limits,
}

/// What a publisher's configuration asks to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherKind {
    /// The native Redis Stream backend.
    RedisStream,
    /// A WebAssembly component, by resolved path.
    Component(PathBuf),
}

/// Capabilities granted to a component. Anything not granted is not available.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `redis = { host, port, db, password, streams = ["tenant-a:*"] }`.
    pub redis: Option<RedisGrant>,
    /// `http = { allow = ["https://hooks.example.com"], timeout, max_response_bytes }`.
    pub http: Option<HttpGrant>,
}

/// Outbound HTTP a component may make (`wasi:http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Origins it may call: `scheme://host[:port]`, `*.` for subdomains. A private or
    /// loopback address is reachable only through an entry that names it.
    pub allow: Vec<String>,
    /// Longest time for one request, connection to last byte. Default 5 s.
    #[serde(default = "default_timeout")]
    pub timeout: Seconds,
    /// Largest response body read. Default 1 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: ByteSize,
}

fn default_max_response_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}

/// The Redis a component may write to, and which streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisGrant {
    /// Server host name or address. Default `localhost`.
    #[serde(default = "default_redis_host")]
    pub host: String,
    /// Server port. Default 6379.
    #[serde(default = "default_redis_port")]
    pub port: u16,
    /// Database number. Default 0.
    #[serde(default)]
    pub db: i64,
    /// Password (`AUTH`); never shown to the component. Default none.
    pub password: Option<String>,
    /// Stream name patterns the component may `XADD` to; `*` matches any run of characters,
    /// `?` one character. Required: an empty list allows nothing.
    pub streams: Vec<String>,
    /// Seconds to wait for a connection. Default 5.
    #[serde(default = "default_timeout")]
    pub connect_timeout: Seconds,
    /// Seconds to wait for a reply. Default 5.
    #[serde(default = "default_timeout")]
    pub socket_timeout: Seconds,
}

pub(crate) fn default_redis_host() -> String {
    "localhost".to_string()
}
pub(crate) fn default_redis_port() -> u16 {
    6379
}
pub(crate) fn default_timeout() -> Seconds {
    Seconds(Duration::from_secs(5))
}

/// Resource limits for one component publisher. Every limit applies to one call into the
/// component (`init`, `publish`, `health-check`); hitting one traps the call, which fails
/// with a message naming the limit, and the instance is replaced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most linear memory the instance may use (`"64MiB"`, or bytes). Default 64 MiB.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Wall-clock deadline for one call (`"2s"`, `"500ms"`, or seconds). Default 2 s.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: Seconds,
    /// CPU budget of one call in wasmtime fuel units (about one per instruction). Default:
    /// none (only the deadline bounds CPU). Turning it on for any publisher meters them all.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Most host calls (`xadd`, `ping`, `log`, …) in one call. Default 1000.
    #[serde(default = "default_host_calls")]
    pub host_calls: u64,
    /// Most bytes passed to host calls in one call (stream names, fields, log text). Default
    /// 16 MiB.
    #[serde(default = "default_host_call_bytes")]
    pub host_call_bytes: ByteSize,
    /// Most log lines (log calls, and lines printed to stdout/stderr) in one call. Default 100.
    #[serde(default = "default_log_lines")]
    pub log_lines: u64,
    /// Most log bytes in one call. Default 64 KiB.
    #[serde(default = "default_log_bytes")]
    pub log_bytes: ByteSize,
    /// Longest time one host capability call may take (time inside the host is not bounded
    /// by the guest's own limits); then it returns an `unavailable` error. Default 1 s.
    #[serde(default = "default_host_call_timeout")]
    pub host_call_timeout: Seconds,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: default_memory(),
            call_timeout: default_call_timeout(),
            fuel: None,
            host_calls: default_host_calls(),
            host_call_bytes: default_host_call_bytes(),
            log_lines: default_log_lines(),
            log_bytes: default_log_bytes(),
            host_call_timeout: default_host_call_timeout(),
        }
    }
}

fn default_memory() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}
fn default_call_timeout() -> Seconds {
    Seconds(Duration::from_secs(2))
}
fn default_host_calls() -> u64 {
    1000
}
fn default_host_call_bytes() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}
fn default_log_lines() -> u64 {
    100
}
fn default_log_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_host_call_timeout() -> Seconds {
    Seconds(Duration::from_secs(1))
}
