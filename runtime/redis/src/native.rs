//! The native Redis Stream backend: the seed's `RedisStreamBackend`, same option names and
//! defaults, same entry.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::client::{StreamCallError, StreamClient, StreamClients};
use crate::endpoint::RedisEndpoint;
use crate::options::{
    CONNECTION_KEYS, ConnectionOptionError, RedisConnection, deserialize_beside_connection, keys_beside_connection,
};
use broadcaster_core::event::OutboxEvent;
use broadcaster_core::outcome::{Health, PublishError};

/// The seed's `OPTIONS` for `RedisStreamBackend`, with its defaults: the connection (the
/// seed's `host`, `port`, `db`, `password`, timeouts, and `url`, `username`, `tls`, … beside
/// them) and the stream.
#[derive(Debug, Clone)]
pub struct RedisStreamOptions {
    /// The Redis written to, with the keys and defaults of a component's `redis` grant.
    pub connection: RedisConnection,
    /// The stream entries are appended to. Default `events`.
    pub stream_name: String,
    /// Approximate most entries kept in the stream (`MAXLEN ~`). Default 10000.
    pub max_len: u64,
}

/// Every key of the options, for the message refusing another.
static OPTION_KEYS: [&str; CONNECTION_KEYS.len() + 2] = keys_beside_connection(&["stream_name", "max_len"]);

impl<'de> Deserialize<'de> for RedisStreamOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The options' own keys; the others are the connection's.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct StreamKeys {
            #[serde(default = "default_stream_name")]
            stream_name: String,
            #[serde(default = "default_max_len")]
            max_len: u64,
        }
        let (connection, StreamKeys { stream_name, max_len }) =
            deserialize_beside_connection(deserializer, "RedisStreamOptions", &OPTION_KEYS)?;
        Ok(Self { connection, stream_name, max_len })
    }
}

fn default_stream_name() -> String {
    "events".to_string()
}
fn default_max_len() -> u64 {
    10_000
}

impl RedisStreamOptions {
    /// The options from `[publishers.<name>.options]`; the error names the option.
    pub fn from_table(options: &toml::Table) -> Result<Self, ConnectionOptionError> {
        let invalid = |key: &str, message: String| ConnectionOptionError { key: key.to_string(), message };
        let parsed: Self = serde_path_to_error::deserialize(toml::Value::Table(options.clone())).map_err(|err| {
            let path = err.path().to_string();
            invalid(&path, err.into_inner().to_string())
        })?;
        if parsed.stream_name.is_empty() {
            return Err(invalid("stream_name", "cannot be empty".into()));
        }
        parsed.connection.check()?;
        Ok(parsed)
    }

    /// The server these options point at: secrets resolved from the environment, files
    /// relative to `base_dir`.
    pub fn endpoint(&self, base_dir: &Path) -> Result<RedisEndpoint, String> {
        let env = |name: &str| std::env::var(name).ok();
        self.connection.endpoint(base_dir, &env).map_err(|err| err.to_string())
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
        assert_eq!(
            (endpoint.connect_timeout, endpoint.socket_timeout),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
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
