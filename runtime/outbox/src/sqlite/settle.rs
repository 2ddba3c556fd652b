//! SQLite's fenced writes ([`FencedWrites`]): one statement per kind of write, each with its rows
//! as a JSON list, every one conditional on the claim's token.

use super::{format_time, hex_id, json_list};
use crate::{FencedWrites, RowId, StoreError};

/// The fenced writes ([`FencedWrites`]), each `(?1 now, ?2 JSON list of rows, ?3 token)`.
const PUBLISH: &str = "UPDATE outbox_events SET status = 'published', published_at = ?1, updated_at = ?1 \
     WHERE id IN (SELECT value FROM json_each(?2)) AND status = 'processing' AND updated_at = ?3";
const RELEASE: &str = "UPDATE outbox_events \
     SET status = CASE WHEN retry_count > 0 THEN 'retry' ELSE 'pending' END, updated_at = ?1 \
     WHERE id IN (SELECT value FROM json_each(?2)) AND status = 'processing' AND updated_at = ?3";
const WRITE_OUTCOMES: &str = "UPDATE outbox_events SET status = v.status, \
         retry_count = coalesce(v.retry_count, outbox_events.retry_count), last_error = v.last_error, \
         scheduled_at = coalesce(v.scheduled_at, outbox_events.scheduled_at), updated_at = ?1 \
     FROM (SELECT value ->> 'id' AS id, value ->> 'status' AS status, value ->> 'retry_count' AS retry_count, \
             value ->> 'last_error' AS last_error, value ->> 'scheduled_at' AS scheduled_at \
         FROM json_each(?2)) AS v \
     WHERE outbox_events.id = v.id AND outbox_events.status = 'processing' AND outbox_events.updated_at = ?3";

/// An id in the form the table holds it: Django's 32 hex digits for an event's, a rejected
/// row's as it is.
fn stored_id(id: RowId<'_>) -> Result<String, StoreError> {
    match id {
        RowId::Event(id) => hex_id(id),
        RowId::Stored(id) => Ok(id.to_string()),
    }
}

/// The JSON list of ids in stored form.
fn stored_ids(ids: &[RowId<'_>]) -> Result<String, StoreError> {
    Ok(json_list(ids.iter().map(|id| stored_id(*id)).collect::<Result<Vec<_>, _>>()?))
}

/// The statements of `writes`, each with its JSON list of rows (`?2`); none for an empty list.
pub(super) fn write_statements(writes: &FencedWrites<'_>) -> Result<Vec<(&'static str, String)>, StoreError> {
    let mut statements = Vec::new();
    if !writes.published.is_empty() {
        statements.push((PUBLISH, stored_ids(&writes.published)?));
    }
    if !writes.released.is_empty() {
        statements.push((RELEASE, stored_ids(&writes.released)?));
    }
    if !writes.outcomes.is_empty() {
        let outcomes = writes.outcomes.iter().map(|o| {
            Ok(serde_json::json!({
                "id": stored_id(o.id)?,
                "status": o.status.as_str(),
                "retry_count": o.retry_count,
                "last_error": o.last_error,
                "scheduled_at": o.scheduled_at.map(format_time),
            }))
        });
        let outcomes = outcomes.collect::<Result<Vec<_>, StoreError>>()?;
        statements.push((WRITE_OUTCOMES, serde_json::Value::Array(outcomes).to_string()));
    }
    Ok(statements)
}
