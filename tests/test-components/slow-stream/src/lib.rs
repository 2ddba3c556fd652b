//! Writes the seed's entry to `stream_name`, after sleeping `delay_ms` (a slow backend).

use std::time::Duration;

use broadcaster_guest::{Backend, OutboxEvent, PublishError, export_backend, redis_stream};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    stream_name: String,
    delay_ms: u64,
}

struct Slow(Options);

impl Backend for Slow {
    type Options = Options;

    fn init(options: Options) -> Result<Self, String> {
        Ok(Slow(options))
    }

    fn publish(&mut self, event: &OutboxEvent) -> Result<(), PublishError> {
        std::thread::sleep(Duration::from_millis(self.0.delay_ms));
        let fields = broadcaster_guest::stream_fields(event)?;
        redis_stream::xadd(&self.0.stream_name, &fields, None)?;
        Ok(())
    }

    fn health_check(&mut self) -> bool {
        redis_stream::ping().is_ok()
    }
}

export_backend!(Slow);
