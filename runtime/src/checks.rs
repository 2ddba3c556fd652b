//! A configuration checked across the layers. `broadcaster-config` knows the shapes of
//! `broadcaster.toml` and checks what needs nothing else (ranges, names, one of `backend` or
//! `component`); the values whose meaning belongs to another layer are checked here, where
//! every layer is in reach: a component's grants (the host's capability table), a native
//! backend's options (the Redis layer) and the OTLP endpoint (the relay's exporter). Every
//! command that loads a configuration, and every reload, goes through [`load_config`].

use std::path::Path;

use crate::config::{Config, ConfigError, PublisherConfig};

/// Loads `path` as [`Config::load`] does, then checks it across the layers ([`check`]).
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    check(&config)?;
    Ok(config)
}

/// Checks what `broadcaster-config` cannot check alone: the OTLP endpoint, each component's
/// grants and each native publisher's options. The error names the file and the key, as the
/// shape checks' errors do.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid { path: config.path.clone(), key, message };
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        crate::otlp::traces_url(endpoint).map_err(|err| invalid("telemetry.otlp_endpoint".into(), err.reason))?;
    }
    for (name, publisher) in &config.publishers {
        check_publisher(config, name, publisher)?;
    }
    Ok(())
}

/// The checks of [`check`] for one publisher (a catalog definition is checked with them
/// before it is stored).
pub fn check_publisher(config: &Config, name: &str, publisher: &PublisherConfig) -> Result<(), ConfigError> {
    let path = if publisher.api.is_some() { "catalog".into() } else { config.path.clone() };
    let invalid = |key: String, message: String| ConfigError::Invalid { path: path.clone(), key, message };
    crate::host::capabilities::check_grants(&publisher.grants)
        .map_err(|err| invalid(format!("publishers.{name}.grants.{}", err.key), err.message))?;
    if publisher.backend.is_some() {
        crate::publisher::RedisStreamOptions::from_table(&publisher.options)
            .map_err(|err| invalid(format!("publishers.{name}.options.{}", err.key), err.message))?;
    }
    Ok(())
}
