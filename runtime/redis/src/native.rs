//! The native Redis Stream backend: the seed's `RedisStreamBackend`, same option names and
//! defaults, same entry.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::client::{StreamCallError, StreamClient, StreamClients};
use crate::endpoint::RedisEndpoint;
use crate::options::{ClusterOptions, ConnectionOptionError, ConnectionOptions, SentinelOptions, TlsOptions};
use broadcaster_core::event::OutboxEvent;
use broadcaster_core::outcome::{Health, PublishError};
use broadcaster_core::secrets::SecretOption;

/// The seed's `OPTIONS` for `RedisStreamBackend`, with its defaults, and the connection
/// options of [`crate::options`] (`url`, `username`, `tls`; `password` may be a
/// secret reference).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamOptions {
    /// Redis server host name. Default `localhost`.
    pub host: Option<String>,
    /// Redis server port. Default 6379.
    pub port: Option<u16>,
    /// Redis database number. Default 0.
    pub db: Option<i64>,
    /// The server as a URL (`redis://`, `rediss://`, `redis+unix://`), instead of
    /// `host`/`port`/`db`.
    pub url: Option<String>,
    /// ACL user. Default none (the `default` user).
    pub username: Option<String>,
    /// Redis password, or a secret reference. Default none.
    pub password: Option<SecretOption>,
    /// TLS to the server (`{ ca_file, client_cert, client_key, insecure }`). Default none.
    pub tls: Option<TlsOptions>,
    /// Hold the publisher down (events wait) once Redis uses this fraction of its
    /// `maxmemory` (`INFO memory`). Default none: only `OOM` replies hold it down.
    pub max_memory_ratio: Option<f64>,
    /// After each batch, wait until this many replicas have it (Redis `WAIT`); fewer is a
    /// transient error, so nothing acknowledged is lost when the master fails. Default none.
    pub wait_replicas: Option<u32>,
    /// Redis Sentinel (`{ master, addresses }`) instead of `url`/`host`/`port`. Default none.
    pub sentinel: Option<SentinelOptions>,
    /// Redis Cluster (`{ nodes }`) instead of `url`/`host`/`port`. Default none.
    pub cluster: Option<ClusterOptions>,
    /// The stream entries are appended to. Default `events`.
    #[serde(default = "default_stream_name")]
    pub stream_name: String,
    /// Approximate most entries kept in the stream (`MAXLEN ~`). Default 10000.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// Seconds to wait for a connection. Default 5.
    #[serde(default = "default_seconds")]
    pub connect_timeout: f64,
    /// Seconds to wait for a reply. Default 5.
    #[serde(default = "default_seconds")]
    pub socket_timeout: f64,
}

fn default_stream_name() -> String {
    "events".to_string()
}
fn default_max_len() -> u64 {
    10_000
}
fn default_seconds() -> f64 {
    5.0
}

impl RedisStreamOptions {
    /// The options from `[publishers.<name>.options]`; the error names the option.
    pub fn from_table(options: &toml::Table) -> Result<Self, ConnectionOptionError> {
        let invalid = |key: &str, message: String| ConnectionOptionError { key: key.to_string(), message };
        let parsed: Self = serde_path_to_error::deserialize(toml::Value::Table(options.clone())).map_err(|err| {
            let path = err.path().to_string();
            invalid(&path, err.into_inner().to_string())
        })?;
        for (name, value) in [("connect_timeout", parsed.connect_timeout), ("socket_timeout", parsed.socket_timeout)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(invalid(name, format!("must be a positive number of seconds, got {value}")));
            }
        }
        if parsed.stream_name.is_empty() {
            return Err(invalid("stream_name", "cannot be empty".into()));
        }
        parsed.connection().check()?;
        Ok(parsed)
    }

    /// The connection options, as written.
    pub fn connection(&self) -> ConnectionOptions<'_> {
        ConnectionOptions {
            host: self.host.as_deref(),
            port: self.port,
            db: self.db,
            url: self.url.as_deref(),
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            tls: self.tls.as_ref(),
            max_memory_ratio: self.max_memory_ratio,
            wait_replicas: self.wait_replicas,
            sentinel: self.sentinel.as_ref(),
            cluster: self.cluster.as_ref(),
            connect_timeout: Duration::from_secs_f64(self.connect_timeout),
            socket_timeout: Duration::from_secs_f64(self.socket_timeout),
        }
    }

    /// The server these options point at: secrets resolved from the environment, files
    /// relative to `base_dir`.
    pub fn endpoint(&self, base_dir: &Path) -> Result<RedisEndpoint, String> {
        let env = |name: &str| std::env::var(name).ok();
        self.connection().endpoint(base_dir, &env).map_err(|err| err.to_string())
    }
}

/// The native backend for one publisher name.
#[derive(Debug)]
pub struct RedisStreamPublisher {
    options: RedisStreamOptions,
    client: StreamClient,
}

impl RedisStreamPublisher {
    /// A publisher writing through `client` with `options` (`client` connects to
    /// `options.endpoint(…)`; it may be shared with other publishers of the same server).
    pub fn new(options: RedisStreamOptions, client: StreamClient) -> Self {
        Self { options, client }
    }

    /// The publisher of `[publishers.<name>.options]`, writing through the client of its
    /// server in `clients` (native publishers are the operator's own: they share one
    /// connection per server). Secrets are read from the environment, files relative to
    /// `base_dir` (the config file's folder). The error names the option.
    pub fn from_options(options: &toml::Table, base_dir: &Path, clients: &mut StreamClients) -> Result<Self, String> {
        let options = RedisStreamOptions::from_table(options).map_err(|err| err.to_string())?;
        let client = clients.shared(options.endpoint(base_dir)?).map_err(|err| err.to_string())?;
        Ok(Self::new(options, client))
    }

    /// The stream this publisher appends to.
    pub fn stream_name(&self) -> &str {
        &self.options.stream_name
    }

    /// `XADD` the seed's entry for `event`.
    pub async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let fields = event.stream_fields().map_err(|err| PublishError::Permanent(err.to_string()))?;
        let id = self
            .client
            .xadd(&self.options.stream_name, &fields, Some(self.options.max_len))
            .await
            .map_err(call_error)?;
        tracing::debug!(event_id = %event.id, stream = %self.options.stream_name, entry_id = %id, "published");
        Ok(())
    }

    /// `XADD`s the entries of `events` in one pipelined round trip.
    pub async fn publish_batch(&self, events: &[OutboxEvent]) -> Vec<Result<(), PublishError>> {
        let mut results: Vec<Result<(), PublishError>> = Vec::with_capacity(events.len());
        let mut entries = Vec::with_capacity(events.len());
        let mut slots = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match event.stream_fields() {
                Ok(fields) => {
                    entries.push((self.options.stream_name.as_str(), fields));
                    slots.push(i);
                    results.push(Ok(()));
                }
                Err(err) => results.push(Err(PublishError::Permanent(err.to_string()))),
            }
        }
        if entries.is_empty() {
            return results;
        }
        let replies = self.client.xadd_pipeline(&entries, Some(self.options.max_len)).await;
        for (slot, reply) in slots.into_iter().zip(replies) {
            if let Err(err) = reply {
                results[slot] = Err(call_error(err));
            }
        }
        results
    }

    /// The longest one call can take (connect and reply timeouts).
    pub fn longest_call(&self) -> Duration {
        let endpoint = self.client.endpoint();
        endpoint.connect_timeout + endpoint.socket_timeout
    }

    /// `PING` within the socket timeout, and Redis not out of memory
    /// ([`StreamClient::ready`]).
    pub async fn health(&self) -> Health {
        match self.client.ready().await {
            Ok(()) => Health::up(format!("{} stream {}", self.client.endpoint(), self.options.stream_name)),
            Err(err) => Health::down(err.to_string()),
        }
    }
}

fn call_error(err: StreamCallError) -> PublishError {
    if err.is_transient() { PublishError::Transient(err.to_string()) } else { PublishError::Permanent(err.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let o = RedisStreamOptions::from_table(&toml::Table::new()).unwrap();
        let endpoint = o.endpoint(Path::new(".")).unwrap();
        assert_eq!((endpoint.to_string(), endpoint.password), ("redis://localhost:6379/0".to_string(), None));
        assert_eq!((o.stream_name.as_str(), o.max_len), ("events", 10_000));
        assert_eq!((o.connect_timeout, o.socket_timeout), (5.0, 5.0));
    }

    #[test]
    fn a_misspelt_option_is_named() {
        let table: toml::Table = toml::from_str("prot = 1").unwrap();
        let err = RedisStreamOptions::from_table(&table).unwrap_err().to_string();
        assert!(err.contains("option `prot`") && err.contains("unknown field"), "{err}");
        let table: toml::Table = toml::from_str("socket_timeout = 0").unwrap();
        let err = RedisStreamOptions::from_table(&table).unwrap_err().to_string();
        assert!(err.contains("socket_timeout"), "{err}");
    }

    #[test]
    fn a_url_beside_host_names_the_key() {
        let table: toml::Table = toml::from_str("url = \"redis://a:1/0\"\nhost = \"b\"").unwrap();
        let err = RedisStreamOptions::from_table(&table).unwrap_err().to_string();
        assert_eq!(err, "option `host`: give either `url` or `host`/`port`/`db`, not both");
        let table: toml::Table = toml::from_str("tls = { ca_fil = \"x\" }").unwrap();
        let err = RedisStreamOptions::from_table(&table).unwrap_err().to_string();
        assert!(err.contains("option `tls.ca_fil`"), "{err}");
    }
}
