//! SQLite's fenced writes ([`FencedWrites`]): one statement per kind of write, each with its rows
//! as a JSON list, every one conditional on the claim's token; and how they share a
//! transaction: a settlement waiting for its turn to write is written by whichever of this
//! process's claims or settlements gets the turn first, with everything else waiting then
//! ([`PendingSettlements`]), so that a busy relay writes one transaction per turn instead of
//! one per claim and one per batch published (each a moment an application's commit may find
//! the lock taken: [`super::write_turns`]).

use std::sync::{Arc, Mutex};

use sqlx::SqliteConnection;
use tokio::sync::oneshot;

use super::{format_time, hex_id, json_list};
use crate::{FencedWrites, RowId, StoreError};

/// One kind of fenced write: `(statement, ?1 now, ?2 JSON list of rows, ?3 token)`.
#[derive(Debug, Clone)]
pub(super) struct Statement {
    sql: &'static str,
    now: String,
    rows: String,
    token: Option<String>,
}

/// The statements of one [`FencedWrites`], ready to run.
pub(super) type Settlement = Vec<Statement>;

/// A queued settlement and the channel its writer waits on.
type Queued = (Settlement, oneshot::Sender<Option<u64>>);

/// Settlements waiting for a turn to write, each with the channel its writer waits on: told
/// the rows it updated, or `None` when the transaction that carried it failed (it then writes
/// on its own, and meets the error itself if there is one).
#[derive(Debug, Clone, Default)]
pub(super) struct PendingSettlements {
    waiting: Arc<Mutex<Vec<Queued>>>,
}

/// Settlements taken from the queue by the writer whose turn it is.
#[must_use = "tell each settlement's writer what became of it"]
pub(super) struct TakenSettlements(Vec<Queued>);

impl PendingSettlements {
    /// Queues `settlement`; the receiver is told what became of it.
    pub(super) fn add(&self, settlement: Settlement) -> oneshot::Receiver<Option<u64>> {
        let (told, tell) = oneshot::channel();
        self.waiting.lock().expect("pending settlements lock").push((settlement, told));
        tell
    }

    /// Every settlement queued so far, for the writer whose turn it is.
    pub(super) fn take(&self) -> TakenSettlements {
        TakenSettlements(std::mem::take(&mut *self.waiting.lock().expect("pending settlements lock")))
    }
}

impl TakenSettlements {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every taken settlement on `conn` (inside the caller's transaction); the rows each
    /// updated, in order.
    pub(super) async fn run(&self, conn: &mut SqliteConnection) -> Result<Vec<u64>, sqlx::Error> {
        let mut updated = Vec::with_capacity(self.0.len());
        for (settlement, _) in &self.0 {
            updated.push(run(settlement, &mut *conn).await?);
        }
        Ok(updated)
    }

    /// Tells each writer the rows its settlement updated (`Some`, once the transaction is
    /// committed) or that it was not written (`None`).
    pub(super) fn tell(self, updated: Option<Vec<u64>>) {
        for (i, (_, told)) in self.0.into_iter().enumerate() {
            let _ = told.send(updated.as_ref().and_then(|counts| counts.get(i).copied()));
        }
    }
}

/// Runs one settlement's statements; the rows they updated.
pub(super) async fn run(settlement: &Settlement, conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let mut updated = 0;
    for Statement { sql, now, rows, token } in settlement {
        let done = sqlx::query(*sql).bind(now).bind(rows).bind(token).execute(&mut *conn).await?;
        updated += done.rows_affected();
    }
    Ok(updated)
}

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

/// The statements of `writes`; none for an empty list.
pub(super) fn settlement(writes: &FencedWrites<'_>) -> Result<Settlement, StoreError> {
    let (token, now) = (writes.fence.token().map(format_time), format_time(writes.now));
    let statements = write_statements(writes)?;
    Ok(statements
        .into_iter()
        .map(|(sql, rows)| Statement { sql, now: now.clone(), rows, token: token.clone() })
        .collect())
}

/// The statements of `writes`, each with its JSON list of rows (`?2`); none for an empty list.
fn write_statements(writes: &FencedWrites<'_>) -> Result<Vec<(&'static str, String)>, StoreError> {
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
