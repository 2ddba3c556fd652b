//! A backend for the batch tests. Its `publish-batch` attempts every event, in one raw
//! `xadd-batch` call (no splitting, no stopping at a transient error: the host must cope),
//! and returns what the options ask for.
//!
//! Each event says what happens to it in `data`: `outcome` is `"ok"` (the default: the seed's
//! entry is appended to `data.stream`, or to the `stream_name` option), `"transient"` or
//! `"permanent"` (that error, without writing), or `"panic"` (a trap).
//!
//! Options: `stream_name`; `results` = `"exact"` (default), `"one-more"` (a result too many),
//! `"one-fewer"` (the last event's result left out).

use broadcaster_guest::bindings::broadcaster::backend::redis_stream as raw;
use broadcaster_guest::{Backend, OutboxEvent, PublishError, export_backend, redis_stream};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    stream_name: String,
    #[serde(default)]
    results: Results,
}

#[derive(serde::Deserialize, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Results {
    #[default]
    Exact,
    OneMore,
    OneFewer,
}

struct Batcher(Options);

impl Backend for Batcher {
    type Options = Options;

    fn init(options: Options) -> Result<Self, String> {
        Ok(Batcher(options))
    }

    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
        self.publish_batch(std::slice::from_ref(event)).pop().unwrap_or(Ok(()))
    }

    fn publish_batch(&mut self, events: &[OutboxEvent]) -> Vec<Result<(), PublishError>> {
        let mut results = Vec::with_capacity(events.len());
        let (mut entries, mut slots) = (Vec::new(), Vec::new());
        for (i, event) in events.iter().enumerate() {
            let data = broadcaster_guest::data_json(event).unwrap_or_default();
            let message = data["message"].as_str().unwrap_or("scripted failure").to_string();
            match data["outcome"].as_str().unwrap_or("ok") {
                "transient" => results.push(Err(PublishError::Transient(message))),
                "permanent" => results.push(Err(PublishError::Permanent(message))),
                "panic" => panic!("{message}"),
                _ => match broadcaster_guest::stream_fields(event) {
                    Ok(fields) => {
                        let stream = data["stream"].as_str().unwrap_or(&self.0.stream_name).to_string();
                        entries.push(raw::XaddEntry { stream, fields, max_len: None });
                        slots.push(i);
                        results.push(Ok(()));
                    }
                    Err(err) => results.push(Err(err)),
                },
            }
        }
        if !entries.is_empty() {
            match raw::xadd_batch(&entries) {
                Ok(replies) => {
                    for (slot, reply) in slots.into_iter().zip(replies) {
                        if let Err(err) = reply {
                            results[slot] = Err(err.into());
                        }
                    }
                }
                Err(err) => {
                    let refused = format!("xadd-batch refused: {}", redis_stream::describe(&err));
                    for slot in slots {
                        results[slot] = Err(PublishError::Permanent(refused.clone()));
                    }
                }
            }
        }
        match self.0.results {
            Results::Exact => {}
            Results::OneMore => results.push(Ok(())),
            Results::OneFewer => {
                results.pop();
            }
        }
        results
    }

    fn health_check(&mut self) -> bool {
        redis_stream::ping().is_ok()
    }
}

export_backend!(Batcher);
