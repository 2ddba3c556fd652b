//! Routes each event to a Redis stream chosen by its type, writing the seed's entry.
//!
//! Options (`[publishers.<name>.options]`):
//! - `routes` (required): a table of event-type pattern → stream, tried in the order
//!   written; `*` matches any run of characters, `?` one character
//!   (`{ "order.*" = "tenant-a:orders", "user.created" = "tenant-a:users" }`).
//! - `fallback` (optional): the stream for events no route matches. Without it such an
//!   event fails permanently.
//! - `max_len` (default `10000`): trim each stream to about this many entries.
//!
//! Every stream named must be inside the publisher's `grants.redis.streams`; one that is
//! not fails the event permanently with the stream's name (and writes nothing).

use broadcaster_guest::{Backend, OutboxEvent, PublishError, export_backend, log, redis_stream};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    routes: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default = "default_max_len")]
    max_len: u64,
}

fn default_max_len() -> u64 {
    10_000
}

struct Router {
    routes: Vec<(String, String)>,
    fallback: Option<String>,
    max_len: u64,
}

impl Router {
    fn stream_for(&self, event_type: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(pattern, _)| broadcaster_guest::glob_match(pattern, event_type))
            .map(|(_, stream)| stream.as_str())
            .or(self.fallback.as_deref())
    }
}

impl Backend for Router {
    type Options = Options;

    fn init(options: Options) -> Result<Self, String> {
        if options.routes.is_empty() {
            return Err("option `routes`: needs at least one `\"pattern\" = \"stream\"` entry".into());
        }
        let mut routes = Vec::with_capacity(options.routes.len());
        for (pattern, stream) in options.routes {
            let stream = match stream {
                serde_json::Value::String(s) if !s.is_empty() => s,
                other => {
                    return Err(format!(
                        "option `routes.{pattern}`: expected a stream name (a non-empty string), got {other}"
                    ));
                }
            };
            if pattern.is_empty() {
                return Err("option `routes`: a pattern cannot be empty".into());
            }
            routes.push((pattern, stream));
        }
        if options.fallback.as_deref() == Some("") {
            return Err("option `fallback`: cannot be empty (leave it out to have no fallback)".into());
        }
        Ok(Self { routes, fallback: options.fallback, max_len: options.max_len })
    }

    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
        let Some(stream) = self.stream_for(&event.event.type_) else {
            return Err(PublishError::Permanent(format!(
                "no route matches event type {:?} and there is no `fallback` stream",
                event.event.type_
            )));
        };
        let fields = broadcaster_guest::stream_fields(event)?;
        let entry = redis_stream::xadd(stream, &fields, Some(self.max_len))?;
        log::debug(&format!("event {} -> {stream} ({entry})", event.event.id));
        Ok(())
    }

    fn health_check(&mut self) -> bool {
        redis_stream::ping().is_ok()
    }
}

export_backend!(Router);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_tried_in_order_then_the_fallback() {
        let router = Router {
            routes: vec![("order.created".into(), "a:created".into()), ("order.*".into(), "a:orders".into())],
            fallback: Some("a:other".into()),
            max_len: 10,
        };
        assert_eq!(router.stream_for("order.created"), Some("a:created"));
        assert_eq!(router.stream_for("order.paid"), Some("a:orders"));
        assert_eq!(router.stream_for("user.created"), Some("a:other"));
    }
}
