//! An outbox event as a backend sees it: the WIT `outbox-event`, with JSON rendered as
//! `json.dumps` renders it so that backends can splice it unchanged.

use super::bindings;
use broadcaster_core::event::{OutboxEvent, Payload};

/// The WIT view of `event`.
pub fn to_wit(event: &OutboxEvent) -> bindings::OutboxEvent {
    fn present(s: &str) -> Option<String> {
        (!s.is_empty()).then(|| s.to_string())
    }
    bindings::OutboxEvent {
        event: bindings::CloudEvent {
            id: event.id.clone(),
            source: event.source.clone(),
            specversion: event.spec_version.clone(),
            type_: event.event_type.clone(),
            datacontenttype: present(&event.data_content_type),
            dataschema: present(&event.data_schema),
            subject: present(&event.subject),
            time: Some(event.time()),
            data: match &event.data {
                Payload::None | Payload::Json(serde_json::Value::Null) => None,
                Payload::Json(value) => Some(bindings::EventData::Json(broadcaster_entry::pyjson::to_string(value))),
                Payload::Text(text) => Some(bindings::EventData::Text(text.clone())),
                Payload::Binary(bytes) => Some(bindings::EventData::Binary(bytes.clone())),
            },
            extensions: event.extensions.clone(),
        },
        retry_count: event.retry_count,
        max_retries: event.max_retries,
        publisher_config: event
            .publisher_config
            .iter()
            .map(|(k, v)| (k.clone(), broadcaster_entry::pyjson::to_string(v)))
            .collect(),
    }
}
