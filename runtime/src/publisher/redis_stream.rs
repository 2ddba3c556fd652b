//! The native Redis Stream backend: the seed's `RedisStreamBackend`, same option names and
//! defaults, same entry.

use std::time::Duration;

use serde::Deserialize;

use crate::event::OutboxEvent;
use crate::outcome::{Health, PublishError};
use crate::stream_client::{RedisEndpoint, StreamCallError, StreamClient, StreamClients};

/// The seed's `OPTIONS` for `RedisStreamBackend`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamOptions {
    /// Redis server host name. Default `localhost`.
    #[serde(default = "crate::config::default_redis_host")]
    pub host: String,
    /// Redis server port. Default 6379.
    #[serde(default = "crate::config::default_redis_port")]
    pub port: u16,
    /// Redis database number. Default 0.
    #[serde(default)]
    pub db: i64,
    /// Redis password. Default none.
    #[serde(default)]
    pub password: Option<String>,
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
    pub fn from_table(options: &toml::Table) -> Result<Self, String> {
        let parsed: Self = serde_path_to_error::deserialize(toml::Value::Table(options.clone())).map_err(|err| {
            let path = err.path().to_string();
            format!("option `{path}`: {}", err.into_inner())
        })?;
        for (name, value) in [("connect_timeout", parsed.connect_timeout), ("socket_timeout", parsed.socket_timeout)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("option `{name}`: must be a positive number of seconds, got {value}"));
            }
        }
        if parsed.stream_name.is_empty() {
            return Err("option `stream_name`: cannot be empty".into());
        }
        Ok(parsed)
    }

    /// The server these options point at.
    pub fn endpoint(&self) -> RedisEndpoint {
        let server = (self.host.as_str(), self.port, self.db);
        let (connect, socket) =
            (Duration::from_secs_f64(self.connect_timeout), Duration::from_secs_f64(self.socket_timeout));
        RedisEndpoint::new(server, self.password.as_deref(), connect, socket)
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
    /// `options.endpoint()`; it may be shared with other publishers of the same server).
    pub fn new(options: RedisStreamOptions, client: StreamClient) -> Self {
        Self { options, client }
    }

    /// The publisher of `[publishers.<name>.options]`, writing through the client of its
    /// server in `clients` (native publishers are the operator's own: they share one
    /// connection per server). The error names the option.
    pub fn from_options(options: &toml::Table, clients: &mut StreamClients) -> Result<Self, String> {
        let options = RedisStreamOptions::from_table(options)?;
        let client = clients.shared(options.endpoint()).map_err(|err| err.to_string())?;
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

    /// `PING` within the socket timeout.
    pub async fn health(&self) -> Health {
        match self.client.ping().await {
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
        assert_eq!((o.host.as_str(), o.port, o.db, o.password.as_deref()), ("localhost", 6379, 0, None));
        assert_eq!((o.stream_name.as_str(), o.max_len), ("events", 10_000));
        assert_eq!((o.connect_timeout, o.socket_timeout), (5.0, 5.0));
    }

    #[test]
    fn a_misspelt_option_is_named() {
        let table: toml::Table = toml::from_str("prot = 1").unwrap();
        let err = RedisStreamOptions::from_table(&table).unwrap_err();
        assert!(err.contains("option `prot`") && err.contains("unknown field"), "{err}");
        let table: toml::Table = toml::from_str("socket_timeout = 0").unwrap();
        let err = RedisStreamOptions::from_table(&table).unwrap_err();
        assert!(err.contains("socket_timeout"), "{err}");
    }
}
