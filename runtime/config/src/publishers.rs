//! `[publishers.<name>]`: what each publisher runs, what it may use, and its limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[cfg(doc)]
use super::Config;
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
    /// Set for a publisher defined in the outbox database's catalog (the admin API,
    /// `broadcaster tenants`) rather than in the file; see [`Config::insert_api_publisher`].
    #[serde(skip)]
    pub api: Option<ApiOrigin>,
}

/// Where a publisher of the catalog comes from: its version, and the stored component it
/// runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiOrigin {
    /// The version in force.
    pub version: i64,
    /// The SHA-256 of the stored component it runs (none for a native backend).
    pub component: Option<[u8; 32]>,
}

impl PublisherConfig {
    /// Whether it runs a WebAssembly component (a file's or a stored one).
    pub fn runs_component(&self) -> bool {
        self.component.is_some() || self.api.as_ref().is_some_and(|api| api.component.is_some())
    }
}

/// What a publisher's configuration asks to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherKind {
    /// The native Redis Stream backend.
    RedisStream,
    /// A WebAssembly component, by resolved path.
    Component(PathBuf),
    /// A WebAssembly component stored in the catalog, by the SHA-256 of its bytes
    /// ([`crate::StoredComponents`]).
    Stored([u8; 32]),
}

/// `[publishers.<name>.grants]`: the capabilities granted to a component, by grant key
/// (`redis`, `http`). Each value is read by its capability (see
/// `broadcaster_host::capabilities`), which checks it when the configuration is loaded.
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

/// The timeout an `http` grant has when it names none (5s).
pub fn default_timeout() -> Seconds {
    Seconds(Duration::from_secs(5))
}

/// Resource limits for one component publisher. Every limit applies to one call into the
/// component (`init`, `publish`, `health-check`); hitting one traps the call, which fails
/// with a message naming the limit, and the instance is replaced.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most linear memory the instance may use (`"64MiB"`, or bytes). Default 64 MiB.
    pub memory: ByteSize,
    /// Wall-clock deadline for one call (`"2s"`, `"500ms"`, or seconds). Default 2 s.
    pub call_timeout: Seconds,
    /// CPU budget of one call in wasmtime fuel units (about one per instruction). Default:
    /// none (only the deadline bounds CPU). Turning it on for any publisher meters them all.
    pub fuel: Option<u64>,
    /// Most host calls (`xadd`, `ping`, `log`, …) in one call. Default 1000.
    pub host_calls: u64,
    /// Most bytes passed to host calls in one call (stream names, fields, log text). Default
    /// 16 MiB.
    pub host_call_bytes: ByteSize,
    /// Wall-clock deadline for one `health-check` call (at most `call_timeout`). Default
    /// 500 ms.
    pub health_timeout: Seconds,
    /// Most log lines per second, over all calls (more are dropped and counted). Default 100.
    pub log_rate: u64,
    /// Most log bytes per second, over all calls (more are dropped and counted). Default
    /// 64 KiB.
    pub log_rate_bytes: ByteSize,
    /// Most log lines (log calls, and lines printed to stdout/stderr) in one call. Default 100.
    pub log_lines: u64,
    /// Most log bytes in one call. Default 64 KiB.
    pub log_bytes: ByteSize,
    /// Longest time one host capability call may take (time inside the host is not bounded
    /// by the guest's own limits); then it returns an `unavailable` error. Default 1 s.
    pub host_call_timeout: Seconds,
    /// Longest stream name a backend may write to. Default 1 KiB.
    pub stream_name_bytes: ByteSize,
    /// Most fields (pairs) in one stream entry. Default 1000.
    pub entry_fields: u64,
    /// Largest stream entry (stream name, field names and values). Default 1 MiB.
    pub entry_bytes: ByteSize,
    /// Most entries one `xadd-batch` call may pass (contract 0.2.0). Default 1000.
    pub xadd_batch_entries: u64,
    /// Most bytes (stream names, field names and values of every entry) one `xadd-batch`
    /// call may pass; measured before anything is copied. Default 16 MiB.
    pub xadd_batch_bytes: ByteSize,
    /// Longest deadline of one `publish-batch` call (contract 0.2.0): such a call gets
    /// `call_timeout` per event, at most this and at least `call_timeout`. Default 10 s.
    pub batch_timeout: Seconds,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: ByteSize(64 * 1024 * 1024),
            call_timeout: Seconds(Duration::from_secs(2)),
            health_timeout: Seconds(Duration::from_millis(500)),
            log_rate: 100,
            log_rate_bytes: ByteSize(64 * 1024),
            fuel: None,
            host_calls: 1000,
            host_call_bytes: ByteSize(16 * 1024 * 1024),
            log_lines: 100,
            log_bytes: ByteSize(64 * 1024),
            host_call_timeout: Seconds(Duration::from_secs(1)),
            stream_name_bytes: ByteSize(1024),
            entry_fields: 1000,
            entry_bytes: ByteSize(1024 * 1024),
            xadd_batch_entries: 1000,
            xadd_batch_bytes: ByteSize(16 * 1024 * 1024),
            batch_timeout: Seconds(Duration::from_secs(10)),
        }
    }
}
