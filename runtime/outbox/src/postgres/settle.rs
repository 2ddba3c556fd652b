//! PostgreSQL's fenced writes ([`FencedWrites`]): one statement per kind of write over arrays
//! of ids, conditional on the lease's token or, for a held claim, on the rows still waiting.

use super::uuids;
use crate::{Fence, FencedWrites, StoreError};

/// The [`Fence`] of a write, `$3` being the lease's token or NULL for rows the writing
/// transaction holds (a string literal, for `concat!`).
macro_rules! fenced {
    () => {
        " AND ((o.status = 'processing' AND o.updated_at = $3) \
         OR ($3::timestamptz IS NULL AND o.status IN ('pending', 'retry')))"
    };
}

/// The fenced writes ([`FencedWrites`]) of ids `$2`.
const PUBLISH: &str = concat!(
    "UPDATE outbox_events o SET status = 'published', published_at = $1, updated_at = $1 WHERE o.id = ANY($2)",
    fenced!()
);
const RELEASE: &str = concat!(
    "UPDATE outbox_events o \
     SET status = CASE WHEN retry_count > 0 THEN 'retry' ELSE 'pending' END, updated_at = $1 \
     WHERE o.id = ANY($2)",
    fenced!()
);
const WRITE_OUTCOMES: &str = concat!(
    "UPDATE outbox_events o SET status = v.status, \
         retry_count = COALESCE(v.retry_count, o.retry_count), last_error = v.last_error, \
         scheduled_at = COALESCE(v.scheduled_at, o.scheduled_at), updated_at = $1 \
     FROM UNNEST($2::uuid[], $4::text[], $5::int[], $6::text[], $7::timestamptz[]) \
         AS v(id, status, retry_count, last_error, scheduled_at) \
     WHERE o.id = v.id",
    fenced!()
);

/// Runs `writes` on one connection (a transaction's, for a held claim).
pub(super) async fn write_on(conn: &mut sqlx::PgConnection, writes: &FencedWrites<'_>) -> Result<u64, StoreError> {
    let (token, now) = (writes.fence.token(), writes.now);
    let mut updated = 0;
    let mut released = writes.released.as_slice();
    if writes.fence == Fence::Held {
        // Held rows were never changed: releasing them is letting go of the lock.
        updated += released.len() as u64;
        released = &[];
    }
    for (statement, ids) in [(PUBLISH, writes.published.as_slice()), (RELEASE, released)] {
        if ids.is_empty() {
            continue;
        }
        let ids = uuids(ids.iter().map(|id| id.text()))?;
        let done = sqlx::query(statement).bind(now).bind(ids).bind(token).execute(&mut *conn).await?;
        updated += done.rows_affected();
    }
    if !writes.outcomes.is_empty() {
        let outcomes = &writes.outcomes;
        let done = sqlx::query(WRITE_OUTCOMES)
            .bind(now)
            .bind(uuids(outcomes.iter().map(|o| o.id.text()))?)
            .bind(token)
            .bind(outcomes.iter().map(|o| o.status.as_str()).collect::<Vec<_>>())
            .bind(
                outcomes
                    .iter()
                    .map(|o| o.retry_count.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
                    .collect::<Vec<_>>(),
            )
            .bind(outcomes.iter().map(|o| o.last_error).collect::<Vec<_>>())
            .bind(outcomes.iter().map(|o| o.scheduled_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        updated += done.rows_affected();
    }
    Ok(updated)
}
