//! New rows: the event to store ([`NewEvent`]), its row's column values checked and converted
//! once for either database ([`Columns`]), and which rows of a group of requests are new
//! ([`decide_requests`]).
//!
//! Below both databases: [`super::sqlite`], [`super::postgres`] and [`super::extensions`]
//! insert what this module decides, and [`super::enqueue`], the public enqueue API above them,
//! calls into them.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::StoreError;
use broadcaster_core::event::{OutboxEvent, Payload, truncate_to_micros};

/// An event to store, and when it may be published.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event (its `id` must be a UUID; new ones get a fresh one).
    pub event: OutboxEvent,
    /// The earliest publish time; `None` means now.
    pub scheduled_at: Option<DateTime<Utc>>,
}

impl NewEvent {
    /// An event of `event_type` from `source`, with a fresh UUID, created now, with the seed's
    /// defaults: `application/json`, 3 retries, the default publisher, due now.
    pub fn new(event_type: impl Into<String>, source: impl Into<String>) -> Self {
        Self { event: OutboxEvent::new(event_type, source), scheduled_at: None }
    }

    /// Sets `data`.
    pub fn data(mut self, data: Value) -> Self {
        self.event.data = Payload::Json(data);
        self
    }

    /// Sets `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = subject.into();
        self
    }

    /// Sets the publisher (`publisher_backend`); empty means `default`.
    pub fn publisher(mut self, publisher: impl Into<String>) -> Self {
        self.event.publisher_backend = publisher.into();
        self
    }

    /// Sets the earliest publish time.
    pub fn scheduled_at(mut self, at: DateTime<Utc>) -> Self {
        self.scheduled_at = Some(at);
        self
    }

    /// Sets how many attempts the event gets.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.event.max_retries = max_retries;
        self
    }

    /// Adds a CloudEvents extension attribute (`traceparent`, …), kept in order of name.
    /// Stored in `broadcaster_event_extensions` in the same transaction as the event.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.event.extensions.retain(|(n, _)| *n != name);
        self.event.extensions.push((name, value.into()));
        broadcaster_core::extension_attributes::sort(&mut self.event.extensions);
        self
    }

    /// Sets the per-event extras for the publisher.
    pub fn publisher_config(mut self, config: Map<String, Value>) -> Self {
        self.event.publisher_config = config;
        self
    }
}

impl NewEvent {
    /// Checks that this event can be stored as it is (a UUID id, a payload a JSON column
    /// holds, extension attributes within their bounds), without storing it: the same check
    /// an enqueue makes, for a caller that wants to refuse a bad event before it queues it.
    pub fn check_storable(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        Columns::of(self, now).map(drop)
    }
}

/// The column values of a new row, checked and converted once for either database.
#[derive(Clone)]
pub(crate) struct Columns<'a> {
    pub id: uuid::Uuid,
    pub event: &'a OutboxEvent,
    pub data: Option<&'a Value>,
    pub created_at: DateTime<Utc>,
    pub scheduled_at: DateTime<Utc>,
    pub text_data: Option<Value>,
}

impl<'a> Columns<'a> {
    pub fn of(new: &'a NewEvent, now: DateTime<Utc>) -> Result<Self, StoreError> {
        let event = &new.event;
        let id = super::parse_id(&event.id).map_err(|_| {
            StoreError::Unstorable(format!(
                "event id {:?} is not a UUID, and the outbox stores UUID ids (leave `id` out to get a new one)",
                event.id
            ))
        })?;
        let (data, text_data) = match &event.data {
            Payload::None => (None, None),
            Payload::Json(value) => (Some(value), None),
            // A JSON column holds a text payload as a JSON string, as Django would.
            Payload::Text(text) => (None, Some(Value::String(text.clone()))),
            Payload::Binary(_) => {
                return Err(StoreError::Unstorable(
                    "binary data (data_base64) cannot be stored: the outbox's `data` column is JSON".into(),
                ));
            }
        };
        for (column, value, max) in [
            ("event_type", &event.event_type, 255),
            ("source", &event.source, 255),
            ("subject", &event.subject, 255),
            ("data_content_type", &event.data_content_type, 100),
            ("data_schema", &event.data_schema, 200),
            ("publisher_backend", &event.publisher_backend, 100),
            ("spec_version", &event.spec_version, 10),
        ] {
            if value.chars().count() > max {
                return Err(StoreError::Unstorable(format!(
                    "{column} is {} characters; the column holds at most {max}",
                    value.chars().count()
                )));
            }
        }
        // PostgreSQL's text and jsonb cannot hold NUL; refused on every outbox, so an event is
        // storable or not whichever database holds it.
        let texts = [
            ("event_type", &event.event_type),
            ("source", &event.source),
            ("subject", &event.subject),
            ("data_content_type", &event.data_content_type),
            ("data_schema", &event.data_schema),
            ("publisher_backend", &event.publisher_backend),
            ("spec_version", &event.spec_version),
        ];
        if let Some((column, _)) = texts.iter().find(|(_, value)| value.contains('\0')) {
            return Err(StoreError::Unstorable(format!(
                "{column} contains a NUL character, which the outbox cannot store"
            )));
        }
        let data_nul = match &event.data {
            Payload::Json(value) => holds_nul(value),
            Payload::Text(text) => text.contains('\0'),
            Payload::None | Payload::Binary(_) => false,
        };
        if data_nul || event.publisher_config.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)) {
            let column = if data_nul { "data" } else { "publisher_config" };
            return Err(StoreError::Unstorable(format!(
                "{column} holds a NUL character (\\u0000), which the outbox cannot store"
            )));
        }
        broadcaster_core::extension_attributes::check(&event.extensions, event.publisher_config.keys())
            .map_err(|err| StoreError::Unstorable(err.to_string()))?;
        if event.event_type.is_empty() || event.source.is_empty() {
            return Err(StoreError::Unstorable("an event needs a type and a source".into()));
        }
        let created_at = truncate_to_micros(event.created_at.with_timezone(&Utc));
        Ok(Self {
            id,
            event,
            data,
            created_at,
            scheduled_at: truncate_to_micros(new.scheduled_at.unwrap_or(now)),
            text_data,
        })
    }

    /// The data to store: JSON, a text payload as a JSON string, or none.
    pub fn data_value(&self) -> Option<&Value> {
        self.data.or(self.text_data.as_ref())
    }
}

/// Decides a group of requests from the ids already stored (id, publisher_backend as stored):
/// per request its answer (per row whether it is new, or why the request is refused: one of
/// its ids is another publisher's, stored or taken by an earlier request of the group), and
/// the rows to insert, in order.
#[allow(clippy::type_complexity)]
pub(crate) fn decide_requests<'c, 'e>(
    checked: &'c [Result<Vec<Columns<'e>>, StoreError>],
    stored: Vec<(uuid::Uuid, String)>,
) -> (Vec<Result<Vec<bool>, StoreError>>, Vec<&'c Columns<'e>>) {
    use broadcaster_core::routing::publisher_for;
    use std::collections::HashMap;
    // Whose each id is, as the group goes: stored ones, then each accepted request's.
    let mut owner: HashMap<uuid::Uuid, String> =
        stored.into_iter().map(|(id, publisher)| (id, publisher_for(&publisher).to_string())).collect();
    let mut answers = Vec::with_capacity(checked.len());
    let mut rows = Vec::new();
    for request in checked {
        let columns = match request {
            Ok(columns) => columns,
            Err(err) => {
                answers.push(Err(StoreError::Unstorable(err.to_string())));
                continue;
            }
        };
        // Row by row against the owners so far and this request's own rows.
        let mut mine: HashMap<uuid::Uuid, &str> = HashMap::new();
        let mut new = Vec::with_capacity(columns.len());
        let mut taken = None;
        for row in columns {
            let publisher = publisher_for(&row.event.publisher_backend);
            match owner.get(&row.id).map(String::as_str).or_else(|| mine.get(&row.id).copied()) {
                Some(other) if other != publisher => {
                    taken = Some((row.id, other.to_string()));
                    break;
                }
                Some(_) => new.push(false),
                None => {
                    mine.insert(row.id, publisher);
                    new.push(true);
                }
            }
        }
        if let Some((id, publisher)) = taken {
            answers.push(Err(StoreError::IdTaken { id: id.to_string(), publisher }));
            continue;
        }
        for (row, first) in columns.iter().zip(&new) {
            if *first {
                owner.insert(row.id, publisher_for(&row.event.publisher_backend).to_string());
                rows.push(row);
            }
        }
        answers.push(Ok(new));
    }
    (answers, rows)
}

/// Whether a JSON value holds a NUL character in a string or a key.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(publisher: &str) -> NewEvent {
        NewEvent::new("order.created", "/shop").publisher(publisher)
    }

    fn id_of(event: &NewEvent) -> uuid::Uuid {
        uuid::Uuid::parse_str(&event.event.id).unwrap()
    }

    /// `decide_requests` over `requests` with `stored` (event, publisher as stored) in the
    /// table: the answers, and the ids of the rows to insert.
    fn decide(
        requests: &[&[NewEvent]],
        stored: &[(&NewEvent, &str)],
    ) -> (Vec<Result<Vec<bool>, StoreError>>, Vec<uuid::Uuid>) {
        let now = broadcaster_core::event::now_micros();
        let checked: Vec<Result<Vec<Columns<'_>>, StoreError>> =
            requests.iter().map(|events| events.iter().map(|e| Columns::of(e, now)).collect()).collect();
        let stored = stored.iter().map(|(event, publisher)| (id_of(event), publisher.to_string())).collect();
        let (answers, rows) = decide_requests(&checked, stored);
        (answers, rows.iter().map(|row| row.id).collect())
    }

    #[test]
    fn an_id_stored_for_the_same_publisher_is_answered_not_new_and_not_inserted_again() {
        let (stored, fresh) = (event("tenant-a"), event("tenant-a"));
        let (answers, rows) = decide(&[&[stored.clone(), fresh.clone()]], &[(&stored, "tenant-a")]);
        assert_eq!(answers[0].as_ref().unwrap(), &[false, true]);
        assert_eq!(rows, [id_of(&fresh)]);
    }

    #[test]
    fn a_request_reusing_an_id_stored_for_another_publisher_is_refused_whole() {
        let taken = event("tenant-b");
        let mut stolen = taken.clone();
        stolen.event.publisher_backend = "tenant-a".into();
        let (answers, rows) = decide(&[&[event("tenant-a"), stolen]], &[(&taken, "tenant-b")]);
        match &answers[0] {
            Err(StoreError::IdTaken { id, publisher }) => {
                assert_eq!((id.as_str(), publisher.as_str()), (taken.event.id.as_str(), "tenant-b"));
            }
            other => panic!("expected IdTaken, got {other:?}"),
        }
        assert!(rows.is_empty(), "its first, new event is not inserted either: {rows:?}");
    }

    #[test]
    fn an_id_taken_by_an_earlier_request_of_the_group_refuses_a_later_one_of_another_publisher() {
        let first = event("tenant-a");
        let mut second = first.clone();
        second.event.publisher_backend = "tenant-b".into();
        let (answers, rows) = decide(&[std::slice::from_ref(&first), &[second]], &[]);
        assert_eq!(answers[0].as_ref().unwrap(), &[true]);
        assert!(matches!(answers[1], Err(StoreError::IdTaken { ref publisher, .. }) if publisher == "tenant-a"));
        assert_eq!(rows, [id_of(&first)]);
    }

    #[test]
    fn an_id_repeated_within_a_request_or_the_group_is_new_once() {
        let once = event("tenant-a");
        let (answers, rows) = decide(&[&[once.clone(), once.clone()], std::slice::from_ref(&once)], &[]);
        assert_eq!(answers[0].as_ref().unwrap(), &[true, false]);
        assert_eq!(answers[1].as_ref().unwrap(), &[false]);
        assert_eq!(rows, [id_of(&once)]);
    }

    #[test]
    fn the_default_publisher_is_one_publisher_whether_stored_empty_or_by_name() {
        let stored = event("");
        let mut named = stored.clone();
        named.event.publisher_backend = "default".into();
        let (answers, rows) = decide(&[&[named]], &[(&stored, "")]);
        assert_eq!(answers[0].as_ref().unwrap(), &[false]);
        assert!(rows.is_empty());
    }

    #[test]
    fn an_unstorable_request_is_refused_alone() {
        let mut nul = event("tenant-a");
        nul.event.subject = "a\0b".into();
        let fine = event("tenant-a");
        let (answers, rows) = decide(&[&[nul], std::slice::from_ref(&fine)], &[]);
        assert!(matches!(answers[0], Err(StoreError::Unstorable(_))), "{:?}", answers[0]);
        assert_eq!(answers[1].as_ref().unwrap(), &[true]);
        assert_eq!(rows, [id_of(&fine)]);
    }
}
