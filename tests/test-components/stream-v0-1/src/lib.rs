//! The `redis-stream` backend as shipped before contract 0.2.0: bindings generated straight
//! from `wit/backend@0.1.0` (no guest SDK, which has moved on), `publish` once per event, one
//! `xadd` each. The host must keep loading and running components like this one unchanged.
//!
//! Options: `stream_name` (default `"events"`), `max_len` (default `10000`).

use std::cell::RefCell;

use broadcaster_entry::{CloudEvent as Attrs, EventData as Data, stream_entry};

wit_bindgen::generate!({
    path: "../../../wit/backend@0.1.0",
    world: "publisher",
    generate_all,
});

use broadcaster::backend::redis_stream;
use broadcaster::backend::types::{EventData, OutboxEvent, PublishError};
use exports::broadcaster::backend::backend::Guest;

#[derive(serde::Deserialize)]
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

thread_local! {
    static OPTIONS: RefCell<Option<Options>> = const { RefCell::new(None) };
}

/// The seed's stream fields for `event`, as the 0.1.0 guest SDK rendered them.
fn stream_fields(event: &OutboxEvent) -> Result<Vec<(String, String)>, PublishError> {
    let ce = &event.event;
    let attrs = Attrs {
        id: &ce.id,
        source: &ce.source,
        specversion: &ce.specversion,
        event_type: &ce.type_,
        time: ce.time.as_deref(),
        subject: ce.subject.as_deref(),
        datacontenttype: ce.datacontenttype.as_deref(),
        dataschema: ce.dataschema.as_deref(),
        data: ce.data.as_ref().map(|data| match data {
            EventData::Json(text) => Data::JsonText(text),
            EventData::Text(text) => Data::Text(text),
            EventData::Binary(bytes) => Data::Binary(bytes),
        }),
        extensions: &ce.extensions,
    };
    let extras =
        event.publisher_config.iter().map(|(k, v)| (k.clone(), stream_entry::extra_value_from_json_text(v))).collect();
    stream_entry::fields(&attrs, extras).map_err(|err| PublishError::Permanent(err.to_string()))
}

struct Component;

impl Guest for Component {
    fn init(options: String) -> Result<(), String> {
        let options: Options = serde_json::from_str(&options).map_err(|err| format!("options: {err}"))?;
        OPTIONS.with(|cell| *cell.borrow_mut() = Some(options));
        Ok(())
    }

    fn publish(event: OutboxEvent) -> Result<(), PublishError> {
        let fields = stream_fields(&event)?;
        let (stream, max_len) = OPTIONS.with(|cell| {
            let options = cell.borrow();
            let options = options.as_ref().expect("init ran");
            (options.stream_name.clone(), options.max_len)
        });
        redis_stream::xadd(&stream, &fields, Some(max_len)).map(drop).map_err(|err| match err {
            redis_stream::Error::Unavailable(m) => PublishError::Transient(format!("Redis is unavailable: {m}")),
            redis_stream::Error::StreamDenied(s) => {
                PublishError::Permanent(format!("stream {s:?} is outside the streams granted to this publisher"))
            }
            redis_stream::Error::NotGranted => PublishError::Permanent("this publisher has no `redis` grant".into()),
            redis_stream::Error::Rejected(m) => PublishError::Permanent(format!("Redis rejected the entry: {m}")),
        })
    }

    fn health_check() -> bool {
        redis_stream::ping().is_ok()
    }
}

export!(Component);
