//! The outbox on SQLite, in Django's storage format: ids as 32 hex digits, JSON as text
//! (rendered as `json.dumps` does), times as naive UTC text `YYYY-MM-DD HH:MM:SS[.ffffff]`.
//!
//! One process writes at a time (SQLite's rule); claims are single `UPDATE … RETURNING`
//! statements, so they are atomic without row locks.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, Sqlite, SqlitePool};

use super::enqueue::Columns;
use super::fenced_writes::FencedWrites;
use super::row::{RowError, StoredRow, claimed_columns, quote};
use super::schema;
use super::{Claim, NewEvent, OutboxBackend, RejectedRow, RowState, Settlement, Status, StatusReport, StoreError};

pub use super::row::parse_time;

/// The outbox in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    url: String,
}

/// A time as Django stores it in SQLite.
pub fn format_time(t: DateTime<Utc>) -> String {
    let micros = t.timestamp_subsec_micros();
    if micros == 0 {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        format!("{}.{micros:06}", t.format("%Y-%m-%d %H:%M:%S"))
    }
}

fn json_list(items: impl IntoIterator<Item = String>) -> String {
    serde_json::Value::Array(items.into_iter().map(serde_json::Value::String).collect()).to_string()
}

fn hex_id(id: &str) -> Result<String, StoreError> {
    Ok(super::parse_id(id)?.simple().to_string())
}

/// Claims due rows whose publisher is not in the JSON list `?2`. One index range scan per
/// status, each stopping after `limit` rows, so a claim costs the same with ten or ten million
/// rows waiting (a single `status IN (…)` with ORDER BY would sort every due row on every
/// claim).
const CLAIM: &str = concat!(
    "UPDATE outbox_events SET status = 'processing', updated_at = ?1 \
     WHERE id IN (SELECT id FROM ( \
         SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
             WHERE status = 'pending' AND scheduled_at <= ?1 \
               AND publisher_backend NOT IN (SELECT value FROM json_each(?2)) \
             ORDER BY scheduled_at LIMIT ?3) \
         UNION ALL \
         SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
             WHERE status = 'retry' AND scheduled_at <= ?1 \
               AND publisher_backend NOT IN (SELECT value FROM json_each(?2)) \
             ORDER BY scheduled_at LIMIT ?3)) \
         ORDER BY scheduled_at, created_at LIMIT ?3) \
     RETURNING ",
    claimed_columns!()
);

/// Claims due rows of the publisher named `?2` or `?3`: one index range per (status, name),
/// each stopping after `limit` rows, so the cost does not grow with other publishers'
/// backlogs.
const CLAIM_FOR: &str = concat!(
    "UPDATE outbox_events SET status = 'processing', updated_at = ?1 \
     WHERE id IN (SELECT id FROM ( \
         SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
             WHERE status = 'pending' AND publisher_backend = ?2 AND scheduled_at <= ?1 \
             ORDER BY scheduled_at LIMIT ?4) \
         UNION \
         SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
             WHERE status = 'pending' AND publisher_backend = ?3 AND scheduled_at <= ?1 \
             ORDER BY scheduled_at LIMIT ?4) \
         UNION \
         SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
             WHERE status = 'retry' AND publisher_backend = ?2 AND scheduled_at <= ?1 \
             ORDER BY scheduled_at LIMIT ?4) \
         UNION \
         SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
             WHERE status = 'retry' AND publisher_backend = ?3 AND scheduled_at <= ?1 \
             ORDER BY scheduled_at LIMIT ?4)) \
         ORDER BY scheduled_at, created_at LIMIT ?4) \
     RETURNING ",
    claimed_columns!()
);

/// The fenced writes ([`FencedWrites`]), each `(?1 now, ?2 JSON list, ?3 token)`.
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

impl SqliteStore {
    /// Opens (creating when missing) the database file of `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::Url { url: url.to_string(), message: err.to_string() })?
            .create_if_missing(true)
            // Wait for the application's write transactions instead of failing.
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        Ok(Self { pool, url: url.to_string() })
    }

    /// The pool, for applications that share it.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs a claim statement; reads every row on its own and fails the unreadable ones.
    async fn claimed(&self, token: DateTime<Utc>, claim: Query<'_>) -> Result<Claim, StoreError> {
        let rows = claim.fetch_all(&self.pool).await?;
        let claim = Claim::from_rows(token, rows.iter().map(read_claimed).collect::<Result<Vec<_>, _>>()?);
        if !claim.rejected.is_empty() {
            // Ids as stored: a row written by hand may not hold a UUID.
            self.write(token, token, FencedWrites::rejecting(&claim.rejected, |id| Ok(id.to_string()))?).await?;
        }
        Ok(claim)
    }

    /// Runs the fenced writes in one transaction; returns how many rows they updated.
    async fn write(
        &self,
        token: DateTime<Utc>,
        now: DateTime<Utc>,
        writes: FencedWrites<'_, String>,
    ) -> Result<u64, StoreError> {
        let mut statements = Vec::new();
        if !writes.published.is_empty() {
            statements.push((PUBLISH, json_list(writes.published)));
        }
        if !writes.released.is_empty() {
            statements.push((RELEASE, json_list(writes.released)));
        }
        if !writes.outcomes.is_empty() {
            let outcomes = writes.outcomes.iter().map(|o| {
                serde_json::json!({
                    "id": o.id,
                    "status": o.status.as_str(),
                    "retry_count": o.retry_count,
                    "last_error": o.last_error,
                    "scheduled_at": o.scheduled_at.map(format_time),
                })
            });
            statements.push((WRITE_OUTCOMES, serde_json::Value::Array(outcomes.collect()).to_string()));
        }
        let (token, now) = (format_time(token), format_time(now));
        let mut tx = self.pool.begin().await?;
        let mut updated = 0;
        for (statement, rows) in statements {
            let done = sqlx::query(statement).bind(&now).bind(rows).bind(&token).execute(&mut *tx).await?;
            updated += done.rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// Reads a claimed row. Django stores a UUID as 32 lowercase hex digits, and every write by
/// id looks for that form: a row whose id is in any other form could never be settled, so it
/// is rejected.
fn read_claimed(row: &SqliteRow) -> Result<Result<StoredRow, RejectedRow>, StoreError> {
    let read = StoredRow::read::<_, String, String, String, i64>(row)?;
    Ok(read.and_then(|stored| match hex_id(&stored.id) {
        Ok(hex) if hex == stored.id => Ok(stored),
        _ => {
            let problem = format!("not a UUID as Django stores it (32 hex digits): {}", quote(&stored.id));
            Err(RejectedRow::new(stored.id, stored.publisher_backend, &RowError::new("id", problem)))
        }
    }))
}

#[async_trait::async_trait]
impl OutboxBackend for SqliteStore {
    fn display_url(&self) -> String {
        self.url.clone()
    }

    async fn table_columns(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT name FROM pragma_table_info('outbox_events')").fetch_all(&self.pool).await?)
    }

    async fn migrate(&self) -> Result<bool, StoreError> {
        // The write lock first, so that of two `migrate`s at once one creates the table and the
        // other finds it.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let present: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('outbox_events')").fetch_all(&mut *tx).await?;
        let statements = if present.is_empty() { schema::SQLITE_DDL } else { &[] };
        for statement in statements {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.verify().await?;
        sqlx::query(schema::CLAIM_INDEX).execute(&self.pool).await?;
        Ok(present.is_empty())
    }

    async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let columns = events.iter().map(|e| Columns::of(e, now)).collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        for row in &columns {
            insert(&mut *tx, row, now).await?;
        }
        tx.commit().await?;
        Ok(columns.iter().map(|c| c.id.to_string()).collect())
    }

    async fn claim(&self, now: DateTime<Utc>, limit: u32, skip: &[String]) -> Result<Claim, StoreError> {
        let skip = json_list(skip.iter().cloned());
        self.claimed(now, sqlx::query(CLAIM).bind(format_time(now)).bind(skip).bind(i64::from(limit))).await
    }

    async fn claim_for(&self, now: DateTime<Utc>, limit: u32, names: [&str; 2]) -> Result<Claim, StoreError> {
        let [first, second] = names.map(str::to_string);
        let claim = sqlx::query(CLAIM_FOR).bind(format_time(now)).bind(first).bind(second);
        self.claimed(now, claim.bind(i64::from(limit))).await
    }

    async fn publishers_with_work(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(schema::PUBLISHERS_WITH_WORK).fetch_all(&self.pool).await?)
    }

    async fn settle(
        &self,
        token: DateTime<Utc>,
        now: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<u64, StoreError> {
        self.write(token, now, FencedWrites::settling(settlements, hex_id)?).await
    }

    async fn reclaim_expired(&self, now: DateTime<Utc>, lease: Duration) -> Result<u64, StoreError> {
        let expired_before = now - chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        Ok(sqlx::query(
            "UPDATE outbox_events SET status = CASE WHEN retry_count > 0 THEN 'retry' ELSE 'pending' END, \
             updated_at = ?1 WHERE status = 'processing' AND updated_at < ?2",
        )
        .bind(format_time(now))
        .bind(format_time(expired_before))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn status(&self, now: DateTime<Utc>, lease: Duration) -> Result<StatusReport, StoreError> {
        let mut report = StatusReport::default();
        let rows = sqlx::query("SELECT publisher_backend, status, count(*) FROM outbox_events GROUP BY 1, 2")
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let status: String = row.try_get(1)?;
            let Some(status) = Status::parse(&status) else { continue };
            report.counts.insert((row.try_get(0)?, status), row.try_get::<i64, _>(2)? as u64);
        }
        let oldest: Option<String> = sqlx::query_scalar(
            "SELECT min(scheduled_at) FROM outbox_events WHERE status IN ('pending', 'retry') AND scheduled_at <= ?1",
        )
        .bind(format_time(now))
        .fetch_one(&self.pool)
        .await?;
        report.oldest_due = oldest.as_deref().and_then(parse_time);
        let expired_before = now - chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let expired: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'processing' AND updated_at < ?1")
                .bind(format_time(expired_before))
                .fetch_one(&self.pool)
                .await?;
        report.expired_leases = expired as u64;
        Ok(report)
    }

    async fn retry(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let ids = ids.iter().map(|id| hex_id(id)).collect::<Result<Vec<_>, _>>()?;
        let changed: Vec<String> = if ids.is_empty() {
            sqlx::query_scalar(
                "UPDATE outbox_events SET status = 'pending', retry_count = 0, scheduled_at = ?1, updated_at = ?1 \
                 WHERE status = 'failed' RETURNING id",
            )
            .bind(format_time(now))
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query_scalar(
                "UPDATE outbox_events SET status = 'pending', retry_count = 0, scheduled_at = ?1, updated_at = ?1 \
                 WHERE id IN (SELECT value FROM json_each(?2)) AND status IN ('failed', 'retry') RETURNING id",
            )
            .bind(format_time(now))
            .bind(json_list(ids))
            .fetch_all(&self.pool)
            .await?
        };
        Ok(changed.into_iter().map(|id| uuid::Uuid::parse_str(&id).map(|u| u.to_string()).unwrap_or(id)).collect())
    }

    async fn find(&self, ids: &[String]) -> Result<Vec<RowState>, StoreError> {
        let ids = ids.iter().map(|id| hex_id(id)).collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT id, status, publisher_backend, retry_count, max_retries, scheduled_at, published_at, last_error \
             FROM outbox_events WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(RowState::read::<_, String, String, i64>).collect()
    }

    async fn prune_batch(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events \
             WHERE status = 'published' AND published_at < ?1 LIMIT ?2)",
        )
        .bind(format_time(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn count_prunable(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'published' AND published_at < ?1")
                .bind(format_time(before))
                .fetch_one(&self.pool)
                .await?;
        Ok(count as u64)
    }
}

/// Inserts one row (shared by the store and [`super::enqueue::sqlite`]); returns its id.
pub(crate) async fn insert<'e, E>(executor: E, row: &Columns<'_>, now: DateTime<Utc>) -> Result<uuid::Uuid, StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let event = row.event;
    let data = row.data_value().map(broadcaster_entry::pyjson::to_string);
    let config = broadcaster_entry::pyjson::to_string(&serde_json::Value::Object(event.publisher_config.clone()));
    sqlx::query(
        "INSERT INTO outbox_events (id, spec_version, event_type, source, subject, data_content_type, data_schema, \
         data, status, created_at, updated_at, scheduled_at, published_at, retry_count, max_retries, last_error, \
         publisher_backend, publisher_config) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?11, NULL, 0, ?12, '', ?13, ?14)",
    )
    .bind(row.id.simple().to_string())
    .bind(&event.spec_version)
    .bind(&event.event_type)
    .bind(&event.source)
    .bind(&event.subject)
    .bind(&event.data_content_type)
    .bind(&event.data_schema)
    .bind(data)
    .bind(format_time(row.created_at))
    .bind(format_time(now))
    .bind(format_time(row.scheduled_at))
    .bind(i64::from(event.max_retries))
    .bind(&event.publisher_backend)
    .bind(config)
    .execute(executor)
    .await?;
    Ok(row.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_stored_as_django_stores_them() {
        let t = DateTime::parse_from_rfc3339("2026-11-29T10:00:00.123456Z").unwrap().to_utc();
        assert_eq!(format_time(t), "2026-11-29 10:00:00.123456");
        let whole = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z").unwrap().to_utc();
        assert_eq!(format_time(whole), "2026-11-29 10:00:00");
        assert_eq!(parse_time(&format_time(t)), Some(t));
    }
}
