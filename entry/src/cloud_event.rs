//! The seed's `OutboxEvent.to_cloud_event()` rendered with `json.dumps`: the CloudEvents 1.0
//! JSON format with the attributes in the seed's order.

use crate::pyjson;

/// The payload of an event, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventData<'a> {
    /// JSON text already rendered as `json.dumps` renders it (what the host hands to
    /// backends); it is copied into the document unchanged.
    JsonText(&'a str),
    /// A parsed JSON value; rendered with [`pyjson`].
    Json(&'a serde_json::Value),
    /// A text payload that is not JSON: rendered as a JSON string under `data`.
    Text(&'a str),
    /// A binary payload: rendered as base64 under `data_base64`, as the CloudEvents JSON
    /// format requires.
    Binary(&'a [u8]),
}

/// The attributes of a CloudEvent, borrowed, in the shape the seed renders.
///
/// Optional attributes are `None` when absent; the seed leaves out an empty `subject` or
/// `dataschema`, so callers map an empty outbox column to `None`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloudEvent<'a> {
    /// `id` (the outbox row's UUID, hyphenated).
    pub id: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `specversion`.
    pub specversion: &'a str,
    /// `type`.
    pub event_type: &'a str,
    /// `time`: `created_at` as Python's `isoformat()` renders it.
    pub time: Option<&'a str>,
    /// `subject`.
    pub subject: Option<&'a str>,
    /// `datacontenttype`.
    pub datacontenttype: Option<&'a str>,
    /// `dataschema`.
    pub dataschema: Option<&'a str>,
    /// `data`; `None` for JSON `null`, which the seed leaves out.
    pub data: Option<EventData<'a>>,
    /// Extension attributes (name, value), rendered as strings after `dataschema`, and as
    /// stream fields of their own after the `publisher_config` ones (sorted by name in every
    /// event Broadcaster reads: the outbox keeps them in `broadcaster_event_extensions`).
    pub extensions: &'a [(String, String)],
}

impl CloudEvent<'_> {
    /// The event as the seed's `json.dumps(event.to_cloud_event())`.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        let mut first = true;
        let mut key = |out: &mut String, name: &str| {
            if !first {
                out.push_str(", ");
            }
            first = false;
            pyjson::write_str(out, name);
            out.push_str(": ");
        };
        out.push('{');
        for (name, value) in [
            ("specversion", Some(self.specversion)),
            ("type", Some(self.event_type)),
            ("source", Some(self.source)),
            ("id", Some(self.id)),
            ("time", self.time),
            ("subject", self.subject),
            ("datacontenttype", self.datacontenttype),
            ("dataschema", self.dataschema),
        ] {
            if let Some(value) = value {
                key(&mut out, name);
                pyjson::write_str(&mut out, value);
            }
        }
        for (name, value) in self.extensions {
            key(&mut out, name);
            pyjson::write_str(&mut out, value);
        }
        match self.data {
            None => {}
            Some(EventData::JsonText(text)) => {
                key(&mut out, "data");
                out.push_str(text);
            }
            Some(EventData::Json(value)) => {
                key(&mut out, "data");
                pyjson::write_value(&mut out, value);
            }
            Some(EventData::Text(text)) => {
                key(&mut out, "data");
                pyjson::write_str(&mut out, text);
            }
            Some(EventData::Binary(bytes)) => {
                key(&mut out, "data_base64");
                out.push('"');
                out.push_str(&base64(bytes));
                out.push('"');
            }
        }
        out.push('}');
        out
    }
}

/// Standard base64 with padding (RFC 4648 §4), as `data_base64` requires.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: Option<EventData<'_>>) -> CloudEvent<'_> {
        CloudEvent {
            id: "id-1",
            source: "src",
            specversion: "1.0",
            event_type: "t",
            time: Some("2026-11-29T10:00:00.000001+00:00"),
            subject: None,
            datacontenttype: Some("application/json"),
            dataschema: None,
            data,
            extensions: &[],
        }
    }

    #[test]
    fn absent_attributes_and_null_data_are_left_out() {
        assert_eq!(
            event(None).to_json(),
            r#"{"specversion": "1.0", "type": "t", "source": "src", "id": "id-1", "time": "2026-11-29T10:00:00.000001+00:00", "datacontenttype": "application/json"}"#
        );
    }

    #[test]
    fn present_attributes_follow_the_seed_order() {
        let value = serde_json::json!({"b": 1, "a": "é"});
        let mut e = event(Some(EventData::Json(&value)));
        e.subject = Some("order/1");
        e.dataschema = Some("https://example.com/s.json");
        assert_eq!(
            e.to_json(),
            r#"{"specversion": "1.0", "type": "t", "source": "src", "id": "id-1", "time": "2026-11-29T10:00:00.000001+00:00", "subject": "order/1", "datacontenttype": "application/json", "dataschema": "https://example.com/s.json", "data": {"b": 1, "a": "\u00e9"}}"#
        );
    }

    #[test]
    fn binary_data_goes_to_data_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let json = event(Some(EventData::Binary(&[0xff, 0x00]))).to_json();
        assert!(json.ends_with(r#""data_base64": "/wA="}"#), "{json}");
    }

    #[test]
    fn json_text_is_spliced_unchanged() {
        let json = event(Some(EventData::JsonText("[1, 2]"))).to_json();
        assert!(json.ends_with(r#""data": [1, 2]}"#), "{json}");
    }
}
