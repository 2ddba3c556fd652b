//! The seed's rendering of an event: `to_cloud_event()` JSON and the Redis Stream fields.

use broadcaster_entry::{CloudEvent as Attrs, EventData as Data, stream_entry};

use crate::{EventData, OutboxEvent, PublishError};

fn attrs(event: &OutboxEvent) -> Attrs<'_> {
    let ce = &event.event;
    Attrs {
        id: &ce.id,
        source: &ce.source,
        specversion: &ce.specversion,
        event_type: &ce.type_,
        time: ce.time.as_deref(),
        subject: ce.subject.as_deref(),
        datacontenttype: ce.datacontenttype.as_deref(),
        dataschema: ce.dataschema.as_deref(),
        data: ce.data.as_ref().map(|data| match data {
            // The host renders JSON as `json.dumps` does, so it is spliced as it is.
            EventData::Json(text) => Data::JsonText(text),
            EventData::Text(text) => Data::Text(text),
            EventData::Binary(bytes) => Data::Binary(bytes),
        }),
        extensions: &ce.extensions,
    }
}

/// The seed's `json.dumps(event.to_cloud_event())`, byte for byte.
pub fn to_cloud_event(event: &OutboxEvent) -> String {
    attrs(event).to_json()
}

/// The seed's stream entry fields: `event_id`, `event_type`, `source`, `timestamp`,
/// `cloud_event`, then one per `publisher_config` key (strings as they are, other values
/// as JSON), then one per extension attribute (`traceparent`, …), as the native backend
/// writes them. A key that collides with the first five, or an extension named like one of
/// them or like a `publisher_config` key, is a permanent error.
pub fn stream_fields(event: &OutboxEvent) -> Result<Vec<(String, String)>, PublishError> {
    let extras =
        event.publisher_config.iter().map(|(k, v)| (k.clone(), stream_entry::extra_value_from_json_text(v))).collect();
    stream_entry::fields(&attrs(event), extras).map_err(|err| PublishError::Permanent(err.to_string()))
}

/// The event's data parsed as JSON, when it is JSON.
pub fn data_json(event: &OutboxEvent) -> Option<serde_json::Value> {
    match &event.event.data {
        Some(EventData::Json(text)) => serde_json::from_str(text).ok(),
        _ => None,
    }
}
