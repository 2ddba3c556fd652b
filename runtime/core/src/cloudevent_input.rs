//! Events given on the command line: a CloudEvent JSON document (structured mode, CloudEvents
//! 1.0 or 0.3), parsed with the CloudEvents SDK, or flags.

use chrono::{DateTime, FixedOffset};
use cloudevents::event::{AttributesReader, Data, ExtensionValue};
use serde_json::{Map, Value};

use crate::event::{OutboxEvent, Payload, truncate_to_micros};

/// Input that is not a usable event. The message says what to fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Parses one CloudEvent JSON document into an event (not yet routed to a publisher).
///
/// `time` becomes `created_at` (now when absent); extension attributes are kept as text,
/// sorted by name.
pub fn parse_cloud_event_json(text: &str) -> Result<OutboxEvent, InputError> {
    let parsed: cloudevents::Event =
        serde_json::from_str(text).map_err(|err| InputError(format!("not a CloudEvent JSON document: {err}")))?;
    Ok(from_cloud_event(&parsed))
}

/// The event a parsed CloudEvent is (not yet routed to a publisher): `time` becomes
/// `created_at` (now when absent); extension attributes are kept as text, sorted by name (the
/// SDK holds them in a hash map; the outbox reads them back sorted, so every way an event
/// takes renders them in one order).
pub fn from_cloud_event(parsed: &cloudevents::Event) -> OutboxEvent {
    let mut event = OutboxEvent::new(parsed.ty(), parsed.source().to_string());
    event.id = parsed.id().to_string();
    event.spec_version = parsed.specversion().to_string();
    event.subject = parsed.subject().unwrap_or_default().to_string();
    event.data_content_type = parsed.datacontenttype().unwrap_or_default().to_string();
    event.data_schema = parsed.dataschema().map(|u| u.to_string()).unwrap_or_default();
    if let Some(time) = parsed.time() {
        event.created_at = truncate_to_micros(time.fixed_offset());
    }
    event.data = match parsed.data() {
        None => Payload::None,
        Some(Data::Json(value)) => Payload::Json(value.clone()),
        Some(Data::String(text)) => Payload::Text(text.clone()),
        Some(Data::Binary(bytes)) => Payload::Binary(bytes.clone()),
    };
    if parsed.datacontenttype().is_none() && matches!(event.data, Payload::Json(_)) {
        // The seed always writes a content type; keep JSON data labelled as JSON.
        event.data_content_type = "application/json".into();
    }
    event.extensions = parsed
        .iter_extensions()
        .map(|(name, value)| {
            let text = match value {
                ExtensionValue::String(s) => s.clone(),
                ExtensionValue::Boolean(b) => b.to_string(),
                ExtensionValue::Integer(i) => i.to_string(),
            };
            (name.to_string(), text)
        })
        .collect();
    crate::extension_attributes::sort(&mut event.extensions);
    event
}

/// Parses events for the outbox from stdin text: one CloudEvent JSON document, or JSON Lines
/// (one document per line; blank lines skipped). A document without an `id` gets a new UUID
/// (the outbox's ids are UUIDs). Errors name the line.
pub fn parse_many_for_outbox(text: &str) -> Result<Vec<OutboxEvent>, InputError> {
    let documents: Vec<(usize, Value)> = match serde_json::from_str::<Value>(text) {
        Ok(value) => vec![(0, value)],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map(|value| (i + 1, value))
                    .map_err(|err| InputError(format!("stdin line {}: not JSON: {err}", i + 1)))
            })
            .collect::<Result<_, _>>()?,
    };
    if documents.is_empty() {
        return Err(InputError("stdin is empty: expected CloudEvent JSON (one document, or JSON Lines)".into()));
    }
    documents
        .into_iter()
        .map(|(line, mut value)| {
            let at = |err: InputError| {
                if line == 0 { err } else { InputError(format!("stdin line {line}: {}", err.0)) }
            };
            let Value::Object(map) = &mut value else {
                return Err(at(InputError("expected a JSON object (a CloudEvent)".into())));
            };
            if !map.contains_key("id") {
                map.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
            }
            parse_cloud_event_json(&value.to_string()).map_err(at)
        })
        .collect()
}

/// Parses `--data`: JSON text.
pub fn parse_data_flag(text: &str) -> Result<Value, InputError> {
    serde_json::from_str(text)
        .map_err(|err| InputError(format!("--data is not valid JSON ({err}); quote a string as '\"text\"'")))
}

/// Parses `--publisher-config`: a JSON object.
pub fn parse_publisher_config(text: &str) -> Result<Map<String, Value>, InputError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(InputError(format!(
            "--publisher-config must be a JSON object like '{{\"key\": \"value\"}}', got {other}"
        ))),
        Err(err) => Err(InputError(format!("--publisher-config is not valid JSON: {err}"))),
    }
}

/// Parses an RFC 3339 time (`2026-11-29T10:00:00Z`).
pub fn parse_time(flag: &str, text: &str) -> Result<DateTime<FixedOffset>, InputError> {
    DateTime::parse_from_rfc3339(text)
        .map(truncate_to_micros)
        .map_err(|err| InputError(format!("{flag} {text:?} is not an RFC 3339 time like 2026-11-29T10:00:00Z: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_cloud_event_keeps_its_attributes_and_sorts_its_extensions() {
        let event = parse_cloud_event_json(
            r#"{"specversion":"1.0","id":"abc","type":"order.created","source":"/shop","subject":"o/1",
                "time":"2026-11-29T10:00:00.5+02:00","datacontenttype":"application/json",
                "data":{"total":1.5},"tenant":"a","priority":3}"#,
        )
        .unwrap();
        assert_eq!(event.id, "abc");
        assert_eq!(event.subject, "o/1");
        assert_eq!(event.time(), "2026-11-29T08:00:00.500000+00:00");
        assert_eq!(event.data, Payload::Json(serde_json::json!({"total": 1.5})));
        assert_eq!(
            event.extensions,
            [("priority".to_string(), "3".to_string()), ("tenant".to_string(), "a".to_string())],
            "extensions are sorted by name"
        );
    }

    #[test]
    fn binary_data_arrives_as_bytes() {
        let event = parse_cloud_event_json(
            r#"{"specversion":"1.0","id":"b","type":"t","source":"s","datacontenttype":"application/octet-stream","data_base64":"/wA="}"#,
        )
        .unwrap();
        assert_eq!(event.data, Payload::Binary(vec![0xff, 0]));
    }

    #[test]
    fn a_document_without_type_is_refused_with_the_reason() {
        let err = parse_cloud_event_json(r#"{"specversion":"1.0","id":"x","source":"s"}"#).unwrap_err();
        assert!(err.0.contains("not a CloudEvent") && err.0.contains("type"), "{err}");
    }

    #[test]
    fn stdin_takes_one_document_or_json_lines_and_fills_in_ids() {
        let one =
            parse_many_for_outbox("{\n  \"specversion\": \"1.0\", \"type\": \"t\", \"source\": \"s\"\n}").unwrap();
        assert_eq!(one.len(), 1);
        assert!(uuid::Uuid::parse_str(&one[0].id).is_ok());
        let lines = "{\"specversion\":\"1.0\",\"type\":\"a\",\"source\":\"s\"}\n\n{\"specversion\":\"1.0\",\"type\":\"b\",\"source\":\"s\",\"id\":\"x\"}\n";
        let many = parse_many_for_outbox(lines).unwrap();
        assert_eq!((many[0].event_type.as_str(), many[1].id.as_str()), ("a", "x"));
        let bad =
            parse_many_for_outbox("{\"specversion\":\"1.0\",\"type\":\"a\",\"source\":\"s\"}\n{oops\n").unwrap_err();
        assert!(bad.0.starts_with("stdin line 2"), "{bad}");
        let missing = parse_many_for_outbox(
            "{\"specversion\":\"1.0\",\"source\":\"s\"}\n{\"specversion\":\"1.0\",\"source\":\"s\"}",
        )
        .unwrap_err();
        assert!(missing.0.starts_with("stdin line 1") && missing.0.contains("type"), "{missing}");
    }

    #[test]
    fn flags_are_checked() {
        assert!(parse_data_flag("{oops").unwrap_err().0.contains("--data"));
        assert!(parse_publisher_config("[1]").unwrap_err().0.contains("JSON object"));
        assert!(parse_time("--scheduled-at", "tomorrow").unwrap_err().0.contains("RFC 3339"));
    }
}
