//! Each event says what happens to it in `data.outcome`:
//! `"ok"` (or no outcome: the seed's entry is written to `stream_name`), `"transient"`,
//! `"permanent"` (errors with `data.message`), `"panic"` (a trap).

use broadcaster_guest::{Backend, OutboxEvent, PublishError, export_backend, redis_stream};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    stream_name: String,
}

struct Scripted(Options);

impl Backend for Scripted {
    type Options = Options;

    fn init(options: Options) -> Result<Self, String> {
        Ok(Scripted(options))
    }

    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
        let data = broadcaster_guest::data_json(event).unwrap_or_default();
        let message = data["message"].as_str().unwrap_or("scripted failure").to_string();
        match data["outcome"].as_str().unwrap_or("ok") {
            "transient" => Err(PublishError::Transient(message)),
            "permanent" => Err(PublishError::Permanent(message)),
            "panic" => panic!("{message}"),
            _ => {
                let fields = broadcaster_guest::stream_fields(event)?;
                redis_stream::xadd(&self.0.stream_name, &fields, None)?;
                Ok(())
            }
        }
    }

    fn health_check(&mut self) -> bool {
        redis_stream::ping().is_ok()
    }
}

export_backend!(Scripted);
