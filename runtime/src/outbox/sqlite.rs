//! The outbox on SQLite, in Django's storage format: ids as 32 hex digits, JSON as text
//! (rendered as `json.dumps` does), times as naive UTC text `YYYY-MM-DD HH:MM:SS[.ffffff]`.
//!
//! One process writes at a time (SQLite's rule); claims are single `UPDATE … RETURNING`
//! statements, so they are atomic without row locks.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};

use super::enqueue::Columns;
use super::{Claim, ClaimedEvent, NewEvent, RowState, Settlement, Status, StatusReport, StoreError, schema};
use crate::event::{OutboxEvent, Payload};

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

/// Reads a time as Django (or anyone else) stored it: naive UTC with a space or a `T`,
/// with or without a fraction, or with an offset.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
}

fn json_list(items: impl IntoIterator<Item = String>) -> String {
    serde_json::Value::Array(items.into_iter().map(serde_json::Value::String).collect()).to_string()
}

fn hex_id(id: &str) -> Result<String, StoreError> {
    Ok(super::parse_id(id)?.simple().to_string())
}

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

    /// The URL.
    pub fn display_url(&self) -> String {
        self.url.clone()
    }

    /// The pool, for applications that share it.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn columns(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT name FROM pragma_table_info('outbox_events')").fetch_all(&self.pool).await?)
    }

    pub(crate) async fn verify(&self) -> Result<(), StoreError> {
        let present = self.columns().await?;
        if present.is_empty() {
            return Err(StoreError::MissingTable { url: self.display_url() });
        }
        match schema::missing_columns(&present) {
            Some(missing) => Err(StoreError::WrongTable { url: self.display_url(), missing }),
            None => Ok(()),
        }
    }

    pub(crate) async fn migrate(&self) -> Result<bool, StoreError> {
        if !self.columns().await?.is_empty() {
            self.verify().await?;
            sqlx::query(schema::CLAIM_INDEX).execute(&self.pool).await?;
            return Ok(false);
        }
        let mut tx = self.pool.begin().await?;
        for statement in schema::SQLITE_DDL.iter().chain([&schema::CLAIM_INDEX]) {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let columns = events.iter().map(|e| Columns::of(e, now)).collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        for row in &columns {
            insert(&mut *tx, row, now).await?;
        }
        tx.commit().await?;
        Ok(columns.iter().map(|c| c.id.to_string()).collect())
    }

    pub(crate) async fn claim(&self, now: DateTime<Utc>, limit: u32, skip: &[String]) -> Result<Claim, StoreError> {
        let token = now;
        let rows = sqlx::query(
            // One index range scan per status, each stopping after `limit` rows, so a claim
            // costs the same with ten or ten million rows waiting (a single `status IN (…)`
            // with ORDER BY would sort every due row on every claim).
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
             RETURNING id, spec_version, event_type, source, subject, data_content_type, data_schema, data, \
                 created_at, scheduled_at, retry_count, max_retries, publisher_backend, publisher_config",
        )
        .bind(format_time(token))
        .bind(json_list(skip.iter().cloned()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let events = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Claim { token, events })
    }

    pub(crate) async fn publishers_with_work(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(schema::PUBLISHERS_WITH_WORK).fetch_all(&self.pool).await?)
    }

    pub(crate) async fn claim_for(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        names: [&str; 2],
    ) -> Result<Claim, StoreError> {
        let token = now;
        let rows = sqlx::query(
            // One index range per (status, name), each stopping after `limit` rows: the cost
            // does not grow with other publishers' backlogs.
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
             RETURNING id, spec_version, event_type, source, subject, data_content_type, data_schema, data, \
                 created_at, scheduled_at, retry_count, max_retries, publisher_backend, publisher_config",
        )
        .bind(format_time(token))
        .bind(names[0])
        .bind(names[1])
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let events = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Claim { token, events })
    }

    pub(crate) async fn settle(
        &self,
        token: DateTime<Utc>,
        now: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<u64, StoreError> {
        let token = format_time(token);
        let now = format_time(now);
        let mut published = Vec::new();
        let mut released = Vec::new();
        let mut tx = self.pool.begin().await?;
        let mut updated = 0;
        for (id, settlement) in settlements {
            let id = hex_id(id)?;
            match settlement {
                Settlement::Published => published.push(id),
                Settlement::Release => released.push(id),
                Settlement::Retry { retry_count, at, error } => {
                    updated += sqlx::query(
                        "UPDATE outbox_events SET status = 'retry', retry_count = ?1, last_error = ?2, \
                         scheduled_at = ?3, updated_at = ?4 \
                         WHERE id = ?5 AND status = 'processing' AND updated_at = ?6",
                    )
                    .bind(i64::from(*retry_count))
                    .bind(error)
                    .bind(format_time(*at))
                    .bind(&now)
                    .bind(&id)
                    .bind(&token)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                Settlement::Failed { retry_count, error } => {
                    updated += sqlx::query(
                        "UPDATE outbox_events SET status = 'failed', retry_count = ?1, last_error = ?2, \
                         updated_at = ?3 WHERE id = ?4 AND status = 'processing' AND updated_at = ?5",
                    )
                    .bind(i64::from(*retry_count))
                    .bind(error)
                    .bind(&now)
                    .bind(&id)
                    .bind(&token)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
            }
        }
        if !published.is_empty() {
            updated += sqlx::query(
                "UPDATE outbox_events SET status = 'published', published_at = ?1, updated_at = ?1 \
                 WHERE id IN (SELECT value FROM json_each(?2)) AND status = 'processing' AND updated_at = ?3",
            )
            .bind(&now)
            .bind(json_list(published))
            .bind(&token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !released.is_empty() {
            updated += sqlx::query(
                "UPDATE outbox_events SET status = CASE WHEN retry_count > 0 THEN 'retry' ELSE 'pending' END, \
                 updated_at = ?1 \
                 WHERE id IN (SELECT value FROM json_each(?2)) AND status = 'processing' AND updated_at = ?3",
            )
            .bind(&now)
            .bind(json_list(released))
            .bind(&token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }

    pub(crate) async fn reclaim_expired(&self, now: DateTime<Utc>, lease: Duration) -> Result<u64, StoreError> {
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

    pub(crate) async fn status(&self, now: DateTime<Utc>, lease: Duration) -> Result<StatusReport, StoreError> {
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

    pub(crate) async fn retry(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
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

    pub(crate) async fn find(&self, ids: &[String]) -> Result<Vec<RowState>, StoreError> {
        let ids = ids.iter().map(|id| hex_id(id)).collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT id, status, publisher_backend, retry_count, max_retries, scheduled_at, published_at, last_error \
             FROM outbox_events WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_state).collect()
    }

    pub(crate) async fn prune_batch(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
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

    pub(crate) async fn count_prunable(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'published' AND published_at < ?1")
                .bind(format_time(before))
                .fetch_one(&self.pool)
                .await?;
        Ok(count as u64)
    }
}

/// Inserts one row (shared by the store and [`super::enqueue::sqlite`]).
pub(crate) async fn insert<'e, E>(executor: E, row: &Columns<'_>, now: DateTime<Utc>) -> Result<(), StoreError>
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
    Ok(())
}

fn row_state(row: &SqliteRow) -> Result<RowState, StoreError> {
    let raw_id: String = row.try_get("id")?;
    let bad = |message: String| StoreError::BadRow { id: raw_id.clone(), message };
    let status: String = row.try_get("status")?;
    let time = |text: String| parse_time(&text).ok_or_else(|| bad(format!("{text:?} is not a time")));
    Ok(RowState {
        id: uuid::Uuid::parse_str(&raw_id).map(|u| u.to_string()).unwrap_or(raw_id.clone()),
        status: Status::parse(&status).ok_or_else(|| bad(format!("unknown status {status:?}")))?,
        publisher_backend: row.try_get("publisher_backend")?,
        retry_count: u32::try_from(row.try_get::<i64, _>("retry_count")?).unwrap_or(0),
        max_retries: u32::try_from(row.try_get::<i64, _>("max_retries")?).unwrap_or(0),
        scheduled_at: time(row.try_get("scheduled_at")?)?,
        published_at: row.try_get::<Option<String>, _>("published_at")?.map(time).transpose()?,
        last_error: row.try_get("last_error")?,
    })
}

fn decode(row: &SqliteRow) -> Result<ClaimedEvent, StoreError> {
    let raw_id: String = row.try_get("id")?;
    let bad = |message: String| StoreError::BadRow { id: raw_id.clone(), message };
    let id = uuid::Uuid::parse_str(&raw_id).map_err(|_| bad("id is not a UUID".into()))?;
    let time = |column: &str| -> Result<DateTime<Utc>, StoreError> {
        let text: String = row.try_get(column)?;
        parse_time(&text).ok_or_else(|| bad(format!("{column} {text:?} is not a time")))
    };
    let data: Option<String> = row.try_get("data")?;
    let data = match data {
        None => Payload::None,
        Some(text) => Payload::Json(serde_json::from_str(&text).map_err(|e| bad(format!("data is not JSON: {e}")))?),
    };
    let config: String = row.try_get("publisher_config")?;
    let publisher_config = match serde_json::from_str(&config) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(serde_json::Value::Null) => serde_json::Map::new(),
        _ => return Err(bad("publisher_config is not a JSON object".into())),
    };
    let mut event = OutboxEvent::new(row.try_get::<String, _>("event_type")?, row.try_get::<String, _>("source")?);
    event.id = id.to_string();
    event.spec_version = row.try_get("spec_version")?;
    event.subject = row.try_get("subject")?;
    event.data_content_type = row.try_get("data_content_type")?;
    event.data_schema = row.try_get("data_schema")?;
    event.data = data;
    event.created_at = time("created_at")?.fixed_offset();
    event.retry_count = u32::try_from(row.try_get::<i64, _>("retry_count")?).unwrap_or(0);
    event.max_retries = u32::try_from(row.try_get::<i64, _>("max_retries")?).unwrap_or(0);
    event.publisher_backend = row.try_get("publisher_backend")?;
    event.publisher_config = publisher_config;
    Ok(ClaimedEvent { event, scheduled_at: time("scheduled_at")? })
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
        for text in [
            "2026-11-29 10:00:00.123456",
            "2026-11-29T10:00:00.123456",
            "2026-11-29 10:00:00.123456+00:00",
            "2026-11-29T12:00:00.123456+02:00",
        ] {
            assert_eq!(parse_time(text), Some(t), "{text}");
        }
        assert_eq!(parse_time("2026-11-29 10:00:00"), Some(whole));
        assert_eq!(parse_time("yesterday"), None);
    }
}
