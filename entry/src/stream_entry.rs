//! The fields of the seed's Redis Stream entry:
//!
//! ```text
//! XADD <stream_name> MAXLEN ~ <max_len> * event_id <id> event_type <type> source <source>
//!      timestamp <time> cloud_event <json> [<publisher_config key> <value> ...]
//!      [<extension name> <value> ...]
//! ```
//!
//! The extension attributes (`traceparent`, …) come last, one field each, named as the
//! attribute is; an event without extensions has exactly the seed's fields.

use crate::{CloudEvent, pyjson};

/// The five fields every entry starts with; a `publisher_config` key may not reuse one.
pub const RESERVED_FIELDS: [&str; 5] = ["event_id", "event_type", "source", "timestamp", "cloud_event"];

/// A field name used twice in one entry: a `publisher_config` key that would overwrite one of
/// the [`RESERVED_FIELDS`], or an extension attribute named like a reserved field or like one
/// of the event's `publisher_config` keys.
///
/// The seed silently let such a key overwrite the field (so a consumer read a forged
/// `event_id`); Broadcaster refuses the event instead: a permanent error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCollision {
    /// The offending key or extension name.
    pub key: String,
    /// Whether it is an extension attribute (else a `publisher_config` key).
    pub extension: bool,
}

impl std::fmt::Display for FieldCollision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.extension {
            write!(
                f,
                "extension attribute {:?} collides with the stream field of the same name \
                 (reserved: event_id, event_type, source, timestamp, cloud_event, and the event's \
                 publisher_config keys)",
                self.key
            )
        } else {
            write!(
                f,
                "publisher_config key {:?} collides with the stream field of the same name \
                 (reserved: event_id, event_type, source, timestamp, cloud_event)",
                self.key
            )
        }
    }
}

impl std::error::Error for FieldCollision {}

/// The entry's fields, in order: the five reserved ones, then `extras` (the event's
/// `publisher_config`, already turned into field values with [`extra_value`] or
/// [`extra_value_from_json_text`]), then one per extension attribute of `event`, in its order.
pub fn fields(event: &CloudEvent<'_>, extras: Vec<(String, String)>) -> Result<Vec<(String, String)>, FieldCollision> {
    if let Some((key, _)) = extras.iter().find(|(k, _)| RESERVED_FIELDS.contains(&k.as_str())) {
        return Err(FieldCollision { key: key.clone(), extension: false });
    }
    if let Some((name, _)) = event
        .extensions
        .iter()
        .find(|(name, _)| RESERVED_FIELDS.contains(&name.as_str()) || extras.iter().any(|(k, _)| k == name))
    {
        return Err(FieldCollision { key: name.clone(), extension: true });
    }
    let mut fields = Vec::with_capacity(5 + extras.len() + event.extensions.len());
    fields.push(("event_id".to_string(), event.id.to_string()));
    fields.push(("event_type".to_string(), event.event_type.to_string()));
    fields.push(("source".to_string(), event.source.to_string()));
    fields.push(("timestamp".to_string(), event.time.unwrap_or_default().to_string()));
    fields.push(("cloud_event".to_string(), event.to_json()));
    fields.extend(extras);
    fields.extend(event.extensions.iter().cloned());
    Ok(fields)
}

/// The field value for one `publisher_config` value: a string as it is, anything else as
/// its JSON text (`json.dumps`).
pub fn extra_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => pyjson::to_string(other),
    }
}

/// The field value for one `publisher_config` value given as JSON text (the form the host
/// passes to backends): a JSON string is unquoted, anything else is kept as it is.
pub fn extra_value_from_json_text(json_text: &str) -> String {
    if json_text.starts_with('"')
        && let Ok(serde_json::Value::String(s)) = serde_json::from_str(json_text)
    {
        return s;
    }
    json_text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> CloudEvent<'static> {
        CloudEvent {
            id: "e1",
            source: "s",
            specversion: "1.0",
            event_type: "t",
            time: Some("2026-01-01T00:00:00+00:00"),
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            extensions: &[],
        }
    }

    #[test]
    fn reserved_fields_come_first_then_extras_in_order() {
        let f = fields(&event(), vec![("b".into(), "1".into()), ("a".into(), "x".into())]).unwrap();
        let names: Vec<_> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["event_id", "event_type", "source", "timestamp", "cloud_event", "b", "a"]);
        assert_eq!(f[3].1, "2026-01-01T00:00:00+00:00");
    }

    #[test]
    fn an_extra_named_like_a_reserved_field_is_refused() {
        let err = fields(&event(), vec![("event_id".into(), "forged".into())]).unwrap_err();
        assert_eq!(err.key, "event_id");
        assert!(err.to_string().contains("collides"));
    }

    #[test]
    fn extension_attributes_come_last_one_field_each() {
        let extensions =
            [("traceparent".to_string(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string())];
        let event = CloudEvent { extensions: &extensions, ..event() };
        let f = fields(&event, vec![("tenant".into(), "a".into())]).unwrap();
        let names: Vec<_> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["event_id", "event_type", "source", "timestamp", "cloud_event", "tenant", "traceparent"]);
        assert_eq!(f[6].1, extensions[0].1);
        assert!(f[4].1.contains(r#""traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01""#));
    }

    #[test]
    fn an_extension_named_like_a_stream_field_or_a_publisher_config_key_is_refused() {
        let reserved = [("timestamp".to_string(), "x".to_string())];
        let err = fields(&CloudEvent { extensions: &reserved, ..event() }, Vec::new()).unwrap_err();
        assert_eq!((err.key.as_str(), err.extension), ("timestamp", true));
        assert!(err.to_string().starts_with("extension attribute \"timestamp\" collides"), "{err}");
        let tenant = [("tenant".to_string(), "x".to_string())];
        let err = fields(&CloudEvent { extensions: &tenant, ..event() }, vec![("tenant".into(), "a".into())]);
        assert_eq!(err.unwrap_err().key, "tenant");
    }

    #[test]
    fn extra_values_are_strings_or_json_text() {
        assert_eq!(extra_value(&json!("plain")), "plain");
        assert_eq!(extra_value(&json!(5)), "5");
        assert_eq!(extra_value(&json!(1.0)), "1.0");
        assert_eq!(extra_value(&json!({"k": [true, null]})), r#"{"k": [true, null]}"#);
        assert_eq!(extra_value_from_json_text(r#""plain \u00e9""#), "plain é");
        assert_eq!(extra_value_from_json_text("5"), "5");
        assert_eq!(extra_value_from_json_text(r#"{"k": 1}"#), r#"{"k": 1}"#);
    }
}
