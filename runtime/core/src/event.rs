//! The event a publisher publishes: an outbox row's CloudEvent plus its bookkeeping.

use broadcaster_entry::{CloudEvent, EventData, FieldCollision, stream_entry};
use chrono::{DateTime, FixedOffset, Timelike, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The payload of an event.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Payload {
    /// No data (the outbox's `data` is SQL NULL or JSON `null`).
    #[default]
    None,
    /// A JSON value, what the outbox stores.
    Json(Value),
    /// Text that is not JSON (only from `broadcaster send`).
    Text(String),
    /// Binary data (only from `broadcaster send` with `data_base64`).
    Binary(Vec<u8>),
}

/// One event on its way to a publisher. Column for column the seed's `OutboxEvent`, minus
/// the relay's own bookkeeping (status, timestamps other than `created_at`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// CloudEvent `id`: the row's UUID rendered hyphenated, or any string for `send`.
    pub id: String,
    /// `specversion` (`spec_version` column), `1.0`.
    pub spec_version: String,
    /// `type` (`event_type` column).
    pub event_type: String,
    /// `source`.
    pub source: String,
    /// `subject`; empty means absent.
    pub subject: String,
    /// `datacontenttype` (`data_content_type`); empty means absent.
    pub data_content_type: String,
    /// `dataschema` (`data_schema`); empty means absent.
    pub data_schema: String,
    /// `data`.
    pub data: Payload,
    /// `created_at`: rendered as the CloudEvent `time` and the stream's `timestamp`.
    pub created_at: DateTime<FixedOffset>,
    /// Failed attempts so far.
    pub retry_count: u32,
    /// Attempts allowed before the event fails.
    pub max_retries: u32,
    /// The publisher name; empty means `default`.
    pub publisher_backend: String,
    /// Per-event extras: one more stream field each for the Redis Stream backends.
    pub publisher_config: Map<String, Value>,
    /// CloudEvent extension attributes (only from `broadcaster send`; the outbox has none).
    pub extensions: Vec<(String, String)>,
}

impl OutboxEvent {
    /// A new event of `event_type` from `source`, with a fresh id, created now, with the
    /// seed's defaults (`application/json`, 3 retries).
    pub fn new(event_type: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            id: Uuid::new_v4().to_string(),
            spec_version: "1.0".into(),
            event_type: event_type.into(),
            source: source.into(),
            subject: String::new(),
            data_content_type: "application/json".into(),
            data_schema: String::new(),
            data: Payload::None,
            created_at: now_micros().fixed_offset(),
            retry_count: 0,
            max_retries: 3,
            publisher_backend: String::new(),
            publisher_config: Map::new(),
            extensions: Vec::new(),
        }
    }

    /// `created_at` as Python's `isoformat()` renders it.
    pub fn time(&self) -> String {
        isoformat(&self.created_at)
    }

    /// The data as JSON text rendered like `json.dumps`, when it is JSON.
    pub fn data_json_text(&self) -> Option<String> {
        match &self.data {
            Payload::Json(value) => Some(broadcaster_entry::pyjson::to_string(value)),
            _ => None,
        }
    }

    /// The CloudEvent, borrowing from `self`; `time` is [`Self::time`].
    pub fn cloud_event<'a>(&'a self, time: &'a str) -> CloudEvent<'a> {
        fn present(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        CloudEvent {
            id: &self.id,
            source: &self.source,
            specversion: &self.spec_version,
            event_type: &self.event_type,
            time: Some(time),
            subject: present(&self.subject),
            datacontenttype: present(&self.data_content_type),
            dataschema: present(&self.data_schema),
            data: match &self.data {
                Payload::None | Payload::Json(Value::Null) => None,
                Payload::Json(value) => Some(EventData::Json(value)),
                Payload::Text(text) => Some(EventData::Text(text)),
                Payload::Binary(bytes) => Some(EventData::Binary(bytes)),
            },
            extensions: &self.extensions,
        }
    }

    /// The seed's `json.dumps(event.to_cloud_event())`.
    pub fn cloud_event_json(&self) -> String {
        self.cloud_event(&self.time()).to_json()
    }

    /// The fields of the seed's stream entry for this event.
    pub fn stream_fields(&self) -> Result<Vec<(String, String)>, FieldCollision> {
        let time = self.time();
        let extras = self.publisher_config.iter().map(|(k, v)| (k.clone(), stream_entry::extra_value(v))).collect();
        stream_entry::fields(&self.cloud_event(&time), extras)
    }
}

/// Now, truncated to microseconds (what Python's `datetime` and the database columns hold).
pub fn now_micros() -> DateTime<Utc> {
    truncate_to_micros(Utc::now())
}

/// `t` with its sub-microsecond part dropped.
pub fn truncate_to_micros<Tz: chrono::TimeZone>(t: DateTime<Tz>) -> DateTime<Tz> {
    let nanos = t.nanosecond();
    t.with_nanosecond(nanos - nanos % 1000).expect("nanoseconds below a second stay valid")
}

/// Renders `t` as Python's `datetime.isoformat()` does for an aware datetime:
/// `2026-11-29T10:00:00.123456+00:00`, the fraction left out when it is zero, the offset as
/// `+HH:MM` (with `:SS` only when it has seconds).
pub fn isoformat(t: &DateTime<FixedOffset>) -> String {
    let micros = t.nanosecond() / 1000 % 1_000_000;
    let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    let offset = t.offset().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.unsigned_abs();
    out.push_str(&format!("{sign}{:02}:{:02}", offset / 3600, offset / 60 % 60));
    if !offset.is_multiple_of(60) {
        out.push_str(&format!(":{:02}", offset % 60));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn isoformat_matches_python() {
        assert_eq!(isoformat(&at("2026-11-29T10:00:00Z")), "2026-11-29T10:00:00+00:00");
        assert_eq!(isoformat(&at("2026-11-29T10:00:00.123456Z")), "2026-11-29T10:00:00.123456+00:00");
        assert_eq!(isoformat(&at("2026-11-29T10:00:00.000001Z")), "2026-11-29T10:00:00.000001+00:00");
        assert_eq!(isoformat(&at("2026-11-29T10:00:00.5+02:00")), "2026-11-29T10:00:00.500000+02:00");
        assert_eq!(isoformat(&at("2026-11-29T10:00:00-05:30")), "2026-11-29T10:00:00-05:30");
        // Sub-microsecond digits are dropped, as Python's datetime cannot hold them.
        assert_eq!(isoformat(&at("2026-11-29T10:00:00.123456789Z")), "2026-11-29T10:00:00.123456+00:00");
        let odd = FixedOffset::east_opt(3600 + 30).unwrap().with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(isoformat(&odd), "2026-01-02T03:04:05+01:00:30");
    }

    #[test]
    fn stream_fields_render_the_seed_entry() {
        let mut event = OutboxEvent::new("order.created", "shop");
        event.id = "0b9d6a5e-0000-4000-8000-000000000001".into();
        event.created_at = at("2026-11-29T10:00:00.25Z");
        event.data = Payload::Json(serde_json::json!({"n": 1}));
        event.publisher_config.insert("tenant".into(), "a".into());
        event.publisher_config.insert("priority".into(), 2.into());
        let fields = event.stream_fields().unwrap();
        let value = |k: &str| fields.iter().find(|(f, _)| f == k).unwrap().1.clone();
        assert_eq!(value("timestamp"), "2026-11-29T10:00:00.250000+00:00");
        assert_eq!(value("tenant"), "a");
        assert_eq!(value("priority"), "2");
        assert_eq!(
            value("cloud_event"),
            r#"{"specversion": "1.0", "type": "order.created", "source": "shop", "id": "0b9d6a5e-0000-4000-8000-000000000001", "time": "2026-11-29T10:00:00.250000+00:00", "datacontenttype": "application/json", "data": {"n": 1}}"#
        );
    }

    #[test]
    fn json_null_data_is_left_out_like_none() {
        let mut event = OutboxEvent::new("t", "s");
        event.data = Payload::Json(Value::Null);
        assert!(!event.cloud_event_json().contains("\"data\""));
    }
}
