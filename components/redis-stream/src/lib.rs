//! django-broadcaster's `RedisStreamBackend` as a component.
//!
//! Writes the same entry as Broadcaster's native `redis-stream` backend, field for field,
//! through the `redis-stream` capability: the server, its password and the streams this
//! publisher may write to come from `[publishers.<name>.grants] redis`, not from options.
//!
//! A batch is appended in one round trip to Redis (`xadd-batch`, a pipeline of `XADD`s).
//!
//! Options (`[publishers.<name>.options]`):
//! - `stream_name` (default `"events"`): the stream to append to; must be in the grant.
//! - `max_len` (default `10000`): trim the stream to about this many entries (`MAXLEN ~`).

use broadcaster_guest::{Backend, OutboxEvent, PublishError, export_backend, redis_stream};
use serde::Deserialize;

/// Connection options of the native backend, refused here with a pointer to the grant.
const CONNECTION_OPTIONS: &[&str] = &["host", "port", "db", "password", "connect_timeout", "socket_timeout"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_stream_name")]
    stream_name: String,
    #[serde(default = "default_max_len")]
    max_len: u64,
}

fn default_stream_name() -> String {
    "events".to_string()
}

fn default_max_len() -> u64 {
    10_000
}

struct RedisStream {
    options: Options,
}

impl Backend for RedisStream {
    type Options = serde_json::Map<String, serde_json::Value>;

    fn init(raw: Self::Options) -> Result<Self, String> {
        if let Some(key) = raw.keys().find(|k| CONNECTION_OPTIONS.contains(&k.as_str())) {
            return Err(format!(
                "option `{key}`: a component does not connect by itself; set the Redis server in \
                 `[publishers.<name>.grants] redis = {{ host, port, db, password, streams }}`"
            ));
        }
        let options: Options = serde_json::from_value(serde_json::Value::Object(raw))
            .map_err(|err| format!("options: {err} (known options: stream_name, max_len)"))?;
        if options.stream_name.is_empty() {
            return Err("option `stream_name`: cannot be empty".into());
        }
        Ok(Self { options })
    }

    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
        let fields = broadcaster_guest::stream_fields(event)?;
        redis_stream::xadd(&self.options.stream_name, &fields, Some(self.options.max_len))?;
        Ok(())
    }

    fn publish_batch(&mut self, events: &[OutboxEvent]) -> Vec<Result<(), PublishError>> {
        let mut results: Vec<Result<(), PublishError>> = Vec::with_capacity(events.len());
        let mut entries = Vec::with_capacity(events.len());
        let mut slots = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match broadcaster_guest::stream_fields(event) {
                Ok(fields) => {
                    entries.push(redis_stream::XaddEntry {
                        stream: self.options.stream_name.clone(),
                        fields,
                        max_len: Some(self.options.max_len),
                    });
                    slots.push(i);
                    results.push(Ok(()));
                }
                Err(err) => results.push(Err(err)),
            }
        }
        for (slot, reply) in slots.into_iter().zip(redis_stream::xadd_batch(&entries)) {
            if let Err(err) = reply {
                results[slot] = Err(err.into());
            }
        }
        broadcaster_guest::until_transient(results)
    }

    fn health_check(&mut self) -> bool {
        redis_stream::ping().is_ok()
    }
}

export_backend!(RedisStream);
