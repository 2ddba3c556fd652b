//! The outbox on PostgreSQL (`uuid`, `jsonb`, `timestamptz` columns, as Django makes them).
//!
//! Claims are one statement with `FOR UPDATE SKIP LOCKED`, so any number of workers on any
//! number of machines share the table without two of them claiming the same row.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::enqueue::Columns;
use super::{Claim, ClaimedEvent, NewEvent, RowState, Settlement, Status, StatusReport, StoreError, schema};
use crate::event::{OutboxEvent, Payload};

/// The outbox in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    url: String,
}

fn uuids(ids: &[String]) -> Result<Vec<Uuid>, StoreError> {
    ids.iter().map(|id| super::parse_id(id)).collect()
}

fn lease_start(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}

impl PostgresStore {
    /// Connects a small pool to `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::Url { url: super::redact(url), message: err.to_string() })?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool, url: super::redact(url) })
    }

    /// The URL without password.
    pub fn display_url(&self) -> String {
        self.url.clone()
    }

    /// The pool, for applications that share it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn columns(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_name = 'outbox_events' AND table_schema = current_schema()",
        )
        .fetch_all(&self.pool)
        .await?)
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
        let mut tx = self.pool.begin().await?;
        // Two `migrate`s at once must not both try to create the table.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('broadcaster.outbox_events'))").execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_name = 'outbox_events' AND table_schema = current_schema())",
        )
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            tx.commit().await?;
            self.verify().await?;
            sqlx::query(schema::CLAIM_INDEX).execute(&self.pool).await?;
            return Ok(false);
        }
        for statement in schema::POSTGRES_DDL.iter().chain([&schema::CLAIM_INDEX]) {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let columns = events.iter().map(|e| Columns::of(e, now)).collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        for chunk in columns.chunks(1000) {
            insert_many(&mut *tx, chunk, now).await?;
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
            "WITH pending AS (SELECT id, scheduled_at, created_at FROM outbox_events \
                 WHERE status = 'pending' AND scheduled_at <= $1 AND NOT (publisher_backend = ANY($2)) \
                 ORDER BY scheduled_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
             retrying AS (SELECT id, scheduled_at, created_at FROM outbox_events \
                 WHERE status = 'retry' AND scheduled_at <= $1 AND NOT (publisher_backend = ANY($2)) \
                 ORDER BY scheduled_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
             due AS (SELECT id FROM (SELECT * FROM pending UNION ALL SELECT * FROM retrying) candidates \
                 ORDER BY scheduled_at, created_at LIMIT $3) \
             UPDATE outbox_events o SET status = 'processing', updated_at = $1 FROM due WHERE o.id = due.id \
             RETURNING o.id, o.spec_version, o.event_type, o.source, o.subject, o.data_content_type, \
                 o.data_schema, o.data, o.created_at, o.scheduled_at, o.retry_count, o.max_retries, \
                 o.publisher_backend, o.publisher_config",
        )
        .bind(token)
        .bind(skip)
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
            "WITH p1 AS (SELECT id, scheduled_at, created_at FROM outbox_events \
                 WHERE status = 'pending' AND publisher_backend = $2 AND scheduled_at <= $1 \
                 ORDER BY scheduled_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
             p2 AS (SELECT id, scheduled_at, created_at FROM outbox_events \
                 WHERE status = 'pending' AND publisher_backend = $3 AND $3 <> $2 AND scheduled_at <= $1 \
                 ORDER BY scheduled_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
             r1 AS (SELECT id, scheduled_at, created_at FROM outbox_events \
                 WHERE status = 'retry' AND publisher_backend = $2 AND scheduled_at <= $1 \
                 ORDER BY scheduled_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
             r2 AS (SELECT id, scheduled_at, created_at FROM outbox_events \
                 WHERE status = 'retry' AND publisher_backend = $3 AND $3 <> $2 AND scheduled_at <= $1 \
                 ORDER BY scheduled_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
             candidates AS (SELECT * FROM p1 UNION ALL SELECT * FROM p2 UNION ALL SELECT * FROM r1 \
                 UNION ALL SELECT * FROM r2), \
             due AS (SELECT id FROM candidates ORDER BY scheduled_at, created_at LIMIT $4) \
             UPDATE outbox_events o SET status = 'processing', updated_at = $1 FROM due WHERE o.id = due.id \
             RETURNING o.id, o.spec_version, o.event_type, o.source, o.subject, o.data_content_type, \
                 o.data_schema, o.data, o.created_at, o.scheduled_at, o.retry_count, o.max_retries, \
                 o.publisher_backend, o.publisher_config",
        )
        .bind(token)
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
        let mut published = Vec::new();
        let mut released = Vec::new();
        let (mut ids, mut statuses, mut counts, mut errors, mut times) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, settlement) in settlements {
            let id = super::parse_id(id)?;
            match settlement {
                Settlement::Published => published.push(id),
                Settlement::Release => released.push(id),
                Settlement::Retry { retry_count, at, error } => {
                    ids.push(id);
                    statuses.push("retry");
                    counts.push(i32::try_from(*retry_count).unwrap_or(i32::MAX));
                    errors.push(error.as_str());
                    times.push(Some(*at));
                }
                Settlement::Failed { retry_count, error } => {
                    ids.push(id);
                    statuses.push("failed");
                    counts.push(i32::try_from(*retry_count).unwrap_or(i32::MAX));
                    errors.push(error.as_str());
                    times.push(None);
                }
            }
        }
        let mut updated = 0;
        if !published.is_empty() {
            updated += sqlx::query(
                "UPDATE outbox_events SET status = 'published', published_at = $1, updated_at = $1 \
                 WHERE id = ANY($2) AND status = 'processing' AND updated_at = $3",
            )
            .bind(now)
            .bind(&published)
            .bind(token)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        if !ids.is_empty() {
            updated += sqlx::query(
                "UPDATE outbox_events o SET status = v.status, retry_count = v.retry_count, \
                 last_error = v.last_error, scheduled_at = COALESCE(v.scheduled_at, o.scheduled_at), updated_at = $1 \
                 FROM UNNEST($2::uuid[], $3::text[], $4::int[], $5::text[], $6::timestamptz[]) \
                     AS v(id, status, retry_count, last_error, scheduled_at) \
                 WHERE o.id = v.id AND o.status = 'processing' AND o.updated_at = $7",
            )
            .bind(now)
            .bind(&ids)
            .bind(&statuses)
            .bind(&counts)
            .bind(&errors)
            .bind(&times)
            .bind(token)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        if !released.is_empty() {
            updated += sqlx::query(
                "UPDATE outbox_events SET status = CASE WHEN retry_count > 0 THEN 'retry' ELSE 'pending' END, \
                 updated_at = $1 WHERE id = ANY($2) AND status = 'processing' AND updated_at = $3",
            )
            .bind(now)
            .bind(&released)
            .bind(token)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(updated)
    }

    pub(crate) async fn reclaim_expired(&self, now: DateTime<Utc>, lease: Duration) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE outbox_events SET status = CASE WHEN retry_count > 0 THEN 'retry' ELSE 'pending' END, \
             updated_at = $1 WHERE status = 'processing' AND updated_at < $2",
        )
        .bind(now)
        .bind(lease_start(now, lease))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub(crate) async fn status(&self, now: DateTime<Utc>, lease: Duration) -> Result<StatusReport, StoreError> {
        let mut report = StatusReport::default();
        let rows =
            sqlx::query("SELECT publisher_backend::text, status::text, count(*) FROM outbox_events GROUP BY 1, 2")
                .fetch_all(&self.pool)
                .await?;
        for row in rows {
            let status: String = row.try_get(1)?;
            let Some(status) = Status::parse(&status) else { continue };
            report.counts.insert((row.try_get(0)?, status), row.try_get::<i64, _>(2)? as u64);
        }
        report.oldest_due = sqlx::query_scalar(
            "SELECT min(scheduled_at) FROM outbox_events WHERE status IN ('pending', 'retry') AND scheduled_at <= $1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let expired: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'processing' AND updated_at < $1")
                .bind(lease_start(now, lease))
                .fetch_one(&self.pool)
                .await?;
        report.expired_leases = expired as u64;
        Ok(report)
    }

    pub(crate) async fn retry(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let changed: Vec<Uuid> = if ids.is_empty() {
            sqlx::query_scalar(
                "UPDATE outbox_events SET status = 'pending', retry_count = 0, scheduled_at = $1, updated_at = $1 \
                 WHERE status = 'failed' RETURNING id",
            )
            .bind(now)
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query_scalar(
                "UPDATE outbox_events SET status = 'pending', retry_count = 0, scheduled_at = $1, updated_at = $1 \
                 WHERE id = ANY($2) AND status IN ('failed', 'retry') RETURNING id",
            )
            .bind(now)
            .bind(uuids(ids)?)
            .fetch_all(&self.pool)
            .await?
        };
        Ok(changed.into_iter().map(|id| id.to_string()).collect())
    }

    pub(crate) async fn find(&self, ids: &[String]) -> Result<Vec<RowState>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, status::text AS status, publisher_backend::text AS publisher_backend, retry_count, \
             max_retries, scheduled_at, published_at, last_error FROM outbox_events WHERE id = ANY($1)",
        )
        .bind(uuids(ids)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_state).collect()
    }

    pub(crate) async fn prune_batch(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events \
             WHERE status = 'published' AND published_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub(crate) async fn count_prunable(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'published' AND published_at < $1")
                .bind(before)
                .fetch_one(&self.pool)
                .await?;
        Ok(count as u64)
    }
}

/// Inserts one row (for [`super::enqueue::postgres`]).
pub(crate) async fn insert<'e, E>(executor: E, row: &Columns<'_>, now: DateTime<Utc>) -> Result<(), StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    insert_many(executor, std::slice::from_ref(row), now).await
}

/// Inserts rows in one statement (`UNNEST` of one array per column).
async fn insert_many<'e, E>(executor: E, rows: &[Columns<'_>], now: DateTime<Utc>) -> Result<(), StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let text = |f: fn(&OutboxEvent) -> &String| rows.iter().map(|r| f(r.event).as_str()).collect::<Vec<&str>>();
    let data: Vec<Option<Json<&serde_json::Value>>> = rows.iter().map(|r| r.data_value().map(Json)).collect();
    let configs: Vec<Json<&serde_json::Map<String, serde_json::Value>>> =
        rows.iter().map(|r| Json(&r.event.publisher_config)).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let scheduled: Vec<DateTime<Utc>> = rows.iter().map(|r| r.scheduled_at).collect();
    let max_retries: Vec<i32> = rows.iter().map(|r| i32::try_from(r.event.max_retries).unwrap_or(i32::MAX)).collect();
    sqlx::query(
        "INSERT INTO outbox_events (id, spec_version, event_type, source, subject, data_content_type, data_schema, \
         data, status, created_at, updated_at, scheduled_at, published_at, retry_count, max_retries, last_error, \
         publisher_backend, publisher_config) \
         SELECT id, spec_version, event_type, source, subject, data_content_type, data_schema, data, 'pending', \
             created_at, $14, scheduled_at, NULL, 0, max_retries, '', publisher_backend, publisher_config \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::jsonb[], $9::timestamptz[], $10::timestamptz[], $11::int[], $12::text[], $13::jsonb[]) \
             AS t(id, spec_version, event_type, source, subject, data_content_type, data_schema, data, created_at, \
                  scheduled_at, max_retries, publisher_backend, publisher_config)",
    )
    .bind(&ids)
    .bind(text(|e| &e.spec_version))
    .bind(text(|e| &e.event_type))
    .bind(text(|e| &e.source))
    .bind(text(|e| &e.subject))
    .bind(text(|e| &e.data_content_type))
    .bind(text(|e| &e.data_schema))
    .bind(&data)
    .bind(&created)
    .bind(&scheduled)
    .bind(&max_retries)
    .bind(text(|e| &e.publisher_backend))
    .bind(&configs)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}

fn row_state(row: &PgRow) -> Result<RowState, StoreError> {
    let id: Uuid = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    Ok(RowState {
        id: id.to_string(),
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::BadRow { id: id.to_string(), message: format!("unknown status {status:?}") })?,
        publisher_backend: row.try_get("publisher_backend")?,
        retry_count: u32::try_from(row.try_get::<i32, _>("retry_count")?).unwrap_or(0),
        max_retries: u32::try_from(row.try_get::<i32, _>("max_retries")?).unwrap_or(0),
        scheduled_at: row.try_get("scheduled_at")?,
        published_at: row.try_get("published_at")?,
        last_error: row.try_get("last_error")?,
    })
}

fn decode(row: &PgRow) -> Result<ClaimedEvent, StoreError> {
    let id: Uuid = row.try_get("id")?;
    let data: Option<Json<serde_json::Value>> = row.try_get("data")?;
    let config: Json<serde_json::Value> = row.try_get("publisher_config")?;
    let publisher_config = match config.0 {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        _ => {
            return Err(StoreError::BadRow {
                id: id.to_string(),
                message: "publisher_config is not a JSON object".into(),
            });
        }
    };
    let mut event = OutboxEvent::new(row.try_get::<String, _>("event_type")?, row.try_get::<String, _>("source")?);
    event.id = id.to_string();
    event.spec_version = row.try_get("spec_version")?;
    event.subject = row.try_get("subject")?;
    event.data_content_type = row.try_get("data_content_type")?;
    event.data_schema = row.try_get("data_schema")?;
    event.data = data.map(|d| Payload::Json(d.0)).unwrap_or(Payload::None);
    event.created_at = row.try_get::<DateTime<Utc>, _>("created_at")?.fixed_offset();
    event.retry_count = u32::try_from(row.try_get::<i32, _>("retry_count")?).unwrap_or(0);
    event.max_retries = u32::try_from(row.try_get::<i32, _>("max_retries")?).unwrap_or(0);
    event.publisher_backend = row.try_get("publisher_backend")?;
    event.publisher_config = publisher_config;
    Ok(ClaimedEvent { event, scheduled_at: row.try_get("scheduled_at")? })
}
