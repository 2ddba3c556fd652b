//! `broadcaster.toml`: the outbox location and the named publishers.
//!
//! Loading is strict: an unknown key, a value of the wrong type, or a publisher that names
//! neither a `backend` nor a `component` is an error that names the file and the key path
//! (`publishers.tenant-a.limits.memory`). Every value can be overridden from the environment
//! (see [`env`]).
//!
//! # What it owns
//! The shapes only: [`Config`] and its sections ([`RelayConfig`], [`ServerConfig`],
//! [`TelemetryConfig`], [`WasmConfig`], [`PublisherConfig`] with its [`Grants`] and
//! [`Limits`]), and the checks that need nothing but the file (ranges, names, one of
//! `backend` or `component`). What a grant or a native backend's options mean belongs to the
//! layer that uses them (`broadcaster-host`, `broadcaster-redis`); the `broadcaster` crate's
//! `checks` module runs those checks on a loaded file. This crate depends on no runtime crate
//! but `broadcaster-core`.
//!
//! # Extending it
//! A new key is a field in its section's struct (`deny_unknown_fields` keeps typos errors),
//! with a default that works and a doc comment; its check goes in `Config::validate` if it
//! needs only the file, or in `broadcaster::checks` if another layer knows what it means. The
//! environment override follows by itself (`BROADCASTER_<SECTION>_<KEY>`).
//!
//! # Example
//! ```
//! use broadcaster_config::{Config, PublisherKind};
//!
//! let config = Config::from_toml(r#"
//!     [publishers.default]
//!     backend = "redis-stream"
//!     [publishers.tenant-a]
//!     component = "components/router.wasm"
//!     limits = { memory = "32MiB" }
//! "#, "/etc/broadcaster/broadcaster.toml".as_ref(), Vec::new()).unwrap();
//! let tenant = &config.publishers["tenant-a"];
//! assert_eq!(tenant.limits.memory.0, 32 << 20);
//! assert!(matches!(config.kind_of("tenant-a", tenant).unwrap(), PublisherKind::Component(_)));
//! assert_eq!(config.outbox.url, "sqlite://broadcaster.db");
//! ```

#![deny(missing_docs)]

pub mod env;
mod publishers;
mod relay;
mod server;
mod stored;
pub mod telemetry;
pub use broadcaster_core::units;
mod wasm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use broadcaster_core::routing::DEFAULT_PUBLISHER;
pub use publishers::default_timeout;
pub use publishers::{ApiOrigin, Grants, Limits, PublisherConfig, PublisherKind};
pub use relay::RelayConfig;
pub use server::{ServerConfig, TokenConfig};
pub use stored::{StoredComponents, hex_digest, parse_hex_digest};
pub use telemetry::TelemetryConfig;
pub use units::{ByteSize, Seconds};
pub use wasm::{Allocator, LiveBounds, WasmConfig};

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "broadcaster.toml";

/// A configuration that could not be loaded. Always names the file, and the key when there is
/// one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is unknown, missing, or has a value of the wrong type or range.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key path, for example `publishers.tenant-a.limits.memory`.
        key: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A `BROADCASTER_…` environment variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// Why.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[outbox]`.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `[publishers.<name>]`, by name.
    #[serde(default)]
    pub publishers: BTreeMap<String, PublisherConfig>,
    /// `[relay]`: how the worker claims, retries and checks health.
    #[serde(default)]
    pub relay: RelayConfig,
    /// `[wasm]`: compile cache and instance allocation for components.
    #[serde(default)]
    pub wasm: WasmConfig,
    /// `[server]`: the HTTP service of `broadcaster serve`.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[tokens.<name>]`: bearer tokens for HTTP ingest, by name.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
    /// `[telemetry]`: where the publish spans go (OTLP export, off by default).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The directory relative component paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this was loaded from.
    #[serde(skip)]
    pub path: PathBuf,
    /// A digest of each section of the TOML it was read from, `BROADCASTER_…` overrides
    /// applied: what a reload compares section by section ([`Config::section`]). Digests, not
    /// the TOML: 100,000 publishers' sections would be hundreds of MiB kept for a comparison.
    #[serde(skip)]
    pub sections: SectionDigests,
    /// The bytes of the stored components its catalog publishers run, by SHA-256.
    #[serde(skip)]
    pub stored_components: StoredComponents,
}

/// The SHA-256 of each top-level section and of each `[publishers.<name>]` of a
/// configuration, over its values with table keys in sorted order (so the order keys are
/// written in does not matter, as it does not to their meaning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SectionDigests {
    top: BTreeMap<String, [u8; 32]>,
    publishers: std::collections::HashMap<String, [u8; 32]>,
}

impl SectionDigests {
    /// The digests of `table`'s sections.
    pub fn of(table: &toml::Table) -> Self {
        let mut digests = Self::default();
        for (name, value) in table {
            if name == "publishers"
                && let toml::Value::Table(publishers) = value
            {
                digests.publishers.extend(publishers.iter().map(|(name, value)| (name.clone(), digest(value))));
            }
            digests.top.insert(name.clone(), digest(value));
        }
        digests
    }
}

/// The SHA-256 of a TOML value, its tables' keys sorted.
fn digest(value: &toml::Value) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    fn feed(hasher: &mut Sha256, value: &toml::Value) {
        let text = |hasher: &mut Sha256, text: &str| {
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        };
        match value {
            toml::Value::String(s) => {
                hasher.update(b"s");
                text(hasher, s);
            }
            toml::Value::Integer(i) => {
                hasher.update(b"i");
                hasher.update(i.to_le_bytes());
            }
            toml::Value::Float(f) => {
                hasher.update(b"f");
                hasher.update(f.to_bits().to_le_bytes());
            }
            toml::Value::Boolean(b) => hasher.update(if *b { b"T" } else { b"F" }),
            toml::Value::Datetime(d) => {
                hasher.update(b"d");
                text(hasher, &d.to_string());
            }
            toml::Value::Array(items) => {
                hasher.update(b"a");
                hasher.update((items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| feed(hasher, item));
            }
            toml::Value::Table(table) => {
                hasher.update(b"t");
                hasher.update((table.len() as u64).to_le_bytes());
                let mut entries: Vec<_> = table.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (key, value) in entries {
                    text(hasher, key);
                    feed(hasher, value);
                }
            }
        }
    }
    let mut hasher = Sha256::new();
    feed(&mut hasher, value);
    hasher.finalize().into()
}

/// `[outbox]`: where events are stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// `sqlite://broadcaster.db` (the default, a file next to where the worker runs) or
    /// `postgres://user@host/db`.
    #[serde(default = "default_outbox_url")]
    pub url: String,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { url: default_outbox_url() }
    }
}

fn default_outbox_url() -> String {
    "sqlite://broadcaster.db".to_string()
}

impl Config {
    /// Loads `path`, applies `BROADCASTER_…` overrides from the process environment, and
    /// checks its shapes (the checks that need another layer, such as a grant or a native
    /// backend's options, are `broadcaster::checks`', run by every command that loads it).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_path_buf(), cause })?;
        Self::from_toml(&text, path, std::env::vars())
    }

    /// Parses `text` as if read from `path`, with `vars` as the environment.
    pub fn from_toml(
        text: &str,
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string().trim_end().to_string(),
        })?;
        let overrides = env::apply_overrides(&mut table, vars)?;
        let sections = SectionDigests::of(&table);
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let key = err.path().to_string();
            // toml adds an "in `table`" line; the key path says it better.
            let mut message = err.into_inner().to_string().lines().next().unwrap_or_default().to_string();
            // A key the file does not have may come from the environment: say which variable.
            if let Some(o) = overrides.iter().find(|o| key == o.key || key.starts_with(&format!("{}.", o.key))) {
                message.push_str(&format!(" (set by environment variable {})", o.var));
            }
            ConfigError::Invalid { path: path.to_path_buf(), key, message }
        })?;
        config.path = path.to_path_buf();
        config.sections = sections;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let relay = |key: &str, message: &str| ConfigError::Invalid {
            path: self.path.clone(),
            key: format!("relay.{key}"),
            message: message.to_string(),
        };
        if self.relay.batch_size == 0 {
            return Err(relay("batch_size", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.relay.retry_jitter) {
            return Err(relay("retry_jitter", "must be between 0 and 1"));
        }
        if self.relay.lease_timeout.0 < Duration::from_secs(1) {
            return Err(relay("lease_timeout", "must be at least 1s (and longer than the slowest batch)"));
        }
        if self.relay.retry_cap.0 < self.relay.retry_base.0 {
            return Err(relay("retry_cap", "must not be shorter than retry_base"));
        }
        if self.relay.health_interval.0.is_zero() {
            return Err(relay("health_interval", "must be more than 0s"));
        }
        self.validate_server()?;
        for (name, publisher) in &self.publishers {
            self.validate_publisher(name, publisher)?;
        }
        Ok(())
    }

    /// The checks of one `[publishers.<name>]` that need nothing but its section.
    fn validate_publisher(&self, name: &str, publisher: &PublisherConfig) -> Result<(), ConfigError> {
        {
            self.kind_of(name, publisher)?;
            let invalid = |key: &str, message: String| ConfigError::Invalid {
                path: self.path.clone(),
                key: if key.is_empty() { format!("publishers.{name}") } else { format!("publishers.{name}.{key}") },
                message,
            };
            if !valid_publisher_name(name) {
                return Err(invalid(
                    "",
                    "a publisher name is 1 to 100 characters of letters, digits, `-`, `_` and `.`".into(),
                ));
            }
            if publisher.backend.is_some() && !publisher.grants.is_empty() {
                return Err(invalid(
                    "grants",
                    "grants are for components; the native backend takes its connection from `options`".into(),
                ));
            }
            if publisher.limits.memory.0 < 1024 * 1024 {
                return Err(invalid("limits.memory", "must be at least 1MiB".into()));
            }
            if publisher.limits.call_timeout.0.is_zero() {
                return Err(invalid("limits.call_timeout", "must be more than 0s".into()));
            }
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { path: self.path.clone(), key, message };
        self.server.listen_addr().map_err(|message| invalid("server.listen".into(), message))?;
        if self.server.max_body.0 < 1024 {
            return Err(invalid("server.max_body".into(), "must be at least 1KiB".into()));
        }
        if self.server.max_batch_events == 0 {
            return Err(invalid("server.max_batch_events".into(), "must be at least 1".into()));
        }
        for (name, token) in &self.tokens {
            let key = |k: &str| format!("tokens.{name}.{k}");
            if !valid_publisher_name(name) {
                return Err(invalid(
                    format!("tokens.{name}"),
                    "a token name is 1 to 100 characters of letters, digits, `-`, `_` and `.`".into(),
                ));
            }
            let secret_ok = matches!(&token.secret, toml::Value::Table(t)
                if t.len() == 1 && ["secret", "secret_file", "sha256"].iter().any(|k| t.get(*k).is_some_and(toml::Value::is_str)));
            if !secret_ok {
                return Err(invalid(
                    key("secret"),
                    "the token is not written in the config: use { secret = \"ENV_VAR\" }, \
                     { secret_file = \"path\" } or { sha256 = \"<hex SHA-256 of the token>\" }"
                        .into(),
                ));
            }
            if token.publishers.is_empty() && !token.admin {
                return Err(invalid(
                    format!("tokens.{name}"),
                    "the token reaches nothing: list the publishers it may send to in `publishers`, like \
                     [\"tenant-a\", \"tenant-a-*\"], or make it an operator's token with `admin = true`"
                        .into(),
                ));
            }
            if let Some(rate) = token.rate
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(invalid(key("rate"), "must be a number of events per second above 0".into()));
            }
            if token.burst == Some(0) {
                return Err(invalid(key("burst"), "must be at least 1".into()));
            }
            if token.burst.is_some() && token.rate.is_none() {
                return Err(invalid(key("burst"), "is the headroom above `rate`: set `rate` too".into()));
            }
        }
        Ok(())
    }

    /// The digest of a top-level section (`outbox`, `relay`, …) as read, overrides applied
    /// (`None` when absent): two configurations with the same digest there have the same
    /// values there, and so mean the same thing.
    pub fn section(&self, name: &str) -> Option<[u8; 32]> {
        self.sections.top.get(name).copied()
    }

    /// The digest of `[publishers.<name>]` as read, overrides applied.
    pub fn publisher_section(&self, name: &str) -> Option<[u8; 32]> {
        self.sections.publishers.get(name).copied()
    }

    /// What publisher `name` runs, with its component path resolved.
    pub fn kind_of(&self, name: &str, publisher: &PublisherConfig) -> Result<PublisherKind, ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: self.path.clone(),
            key: format!("publishers.{name}{key}"),
            message: message.to_string(),
        };
        if let Some(digest) = publisher.api.as_ref().and_then(|api| api.component) {
            return Ok(PublisherKind::Stored(digest));
        }
        match (&publisher.backend, &publisher.component) {
            (Some(_), Some(_)) => {
                Err(invalid("", "set either `backend` (a native backend) or `component` (a .wasm file), not both"))
            }
            (None, None) => {
                Err(invalid("", "set `backend = \"redis-stream\"` or `component = \"path/to/backend.wasm\"`"))
            }
            (Some(backend), None) if backend == "redis-stream" => Ok(PublisherKind::RedisStream),
            (Some(_), None) => Err(invalid(
                ".backend",
                "unknown native backend; the only one is \"redis-stream\" (use `component` for a wasm backend)",
            )),
            (None, Some(path)) => Ok(PublisherKind::Component(self.base_dir.join(path))),
        }
    }
}

fn valid_publisher_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Converts TOML to JSON, keeping key order (datetimes become their TOML text).
pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
        }
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => items.iter().map(toml_to_json).collect(),
        toml::Value::Table(table) => table_to_json(table),
    }
}

/// Converts a TOML table to a JSON object, keeping key order.
pub fn table_to_json(table: &toml::Table) -> serde_json::Value {
    serde_json::Value::Object(table.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
}

#[cfg(test)]
mod tests;
