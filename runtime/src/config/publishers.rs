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

/// `[publishers.<name>.grants]`: the capabilities granted to a component, by grant key
/// (`redis`, `http`). Each value is read by its capability (see
/// [`crate::host::capabilities`]), which checks it when the configuration is loaded.
/// Anything not granted is not available.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Grants(toml::Table);

impl Grants {
    /// The grant under `key`, as written.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.0.get(key)
    }

    /// Whether `key` is granted.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The grants, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &toml::Value)> {
        self.0.iter()
    }
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
    /// Wall-clock deadline for one `health-check` call (at most `call_timeout`). Default
    /// 500 ms.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: Seconds,
    /// Most log lines per second, over all calls (more are dropped and counted). Default 100.
    #[serde(default = "default_log_rate")]
    pub log_rate: u64,
    /// Most log bytes per second, over all calls (more are dropped and counted). Default
    /// 64 KiB.
    #[serde(default = "default_log_bytes")]
    pub log_rate_bytes: ByteSize,
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
    /// Longest stream name a backend may write to. Default 1 KiB.
    #[serde(default = "default_stream_name_bytes")]
    pub stream_name_bytes: ByteSize,
    /// Most fields (pairs) in one stream entry. Default 1000.
    #[serde(default = "default_entry_fields")]
    pub entry_fields: u64,
    /// Largest stream entry (stream name, field names and values). Default 1 MiB.
    #[serde(default = "default_entry_bytes")]
    pub entry_bytes: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: default_memory(),
            call_timeout: default_call_timeout(),
            health_timeout: default_health_timeout(),
            log_rate: default_log_rate(),
            log_rate_bytes: default_log_bytes(),
            fuel: None,
            host_calls: default_host_calls(),
            host_call_bytes: default_host_call_bytes(),
            log_lines: default_log_lines(),
            log_bytes: default_log_bytes(),
            host_call_timeout: default_host_call_timeout(),
            stream_name_bytes: default_stream_name_bytes(),
            entry_fields: default_entry_fields(),
            entry_bytes: default_entry_bytes(),
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
fn default_stream_name_bytes() -> ByteSize {
    ByteSize(1024)
}
fn default_entry_fields() -> u64 {
    1000
}
fn default_entry_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_health_timeout() -> Seconds {
    Seconds(Duration::from_millis(500))
}
fn default_log_rate() -> u64 {
    100
}
