//! The outbox on PostgreSQL (`uuid`, `jsonb`, `timestamptz` columns, as Django makes them).
//!
//! Claims are one statement with `FOR UPDATE SKIP LOCKED`, so any number of workers on any
//! number of machines share the table without two of them claiming the same row.
//!
//! Here: connecting, migrating, and the operators' statements (status, retry, find, prune);
//! `claim.rs` the claims (leases, and claims held by a transaction), `settle.rs` the fenced
//! writes that finish claimed rows, `insert.rs` the statements that write new rows
//! (the crate's `insert` runs them), `tests.rs` the tests.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use super::extensions;
use super::pg_wakeup::PgWakeup;
use super::row::RowReader;
use super::{
    Backlog, Claim, FailedEvent, FencedWrites, HeldClaim, NewEvent, OutboxBackend, RowState, StatusReport, StoreError,
    schema,
};
use claim::{CLAIM, CLAIM_FOR};
use settle::write_on;

mod claim;
mod insert;
mod settle;
#[cfg(test)]
mod tests;

/// The outbox in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    url: String,
    /// How the relay learns of new events: the notify trigger, or polls under load.
    wakeup: PgWakeup,
    /// Permits for claims held in transactions ([`HELD_CLAIMS`]).
    held_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Whether `broadcaster_event_extensions` was seen.
    extension_table: extensions::TablePresence,
}

fn uuids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<Vec<Uuid>, StoreError> {
    ids.into_iter().map(super::parse_id).collect()
}

/// Failed and retrying rows of ids `$2` back to `pending`, due at `$1`.
const RETRY_IDS: &str = "UPDATE outbox_events SET status = 'pending', retry_count = 0, scheduled_at = $1, updated_at = $1 \
     WHERE id = ANY($2) AND status IN ('failed', 'retry') RETURNING id";

/// The rows of ids `$1`, for [`RowReader::state`].
const FIND: &str = "SELECT id, status::text AS status, publisher_backend::text AS publisher_backend, retry_count, \
     max_retries, scheduled_at, published_at, last_error FROM outbox_events WHERE id = ANY($1)";

/// Claims held in open transactions at once at most: each holds a connection while its batch
/// is published, and the relay's other statements need some too.
const HELD_CLAIMS: usize = 4;

/// How long a pooled connection may sit idle and still be handed out without a ping first.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Connections in the pool: the held claims plus the relay's own statements and the listener.
const POOL_CONNECTIONS: u32 = 8;

impl PostgresStore {
    /// Connects a small pool to `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::Url { url: super::redact(url), message: err.to_string() })?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            // A round trip before each statement only for a connection that sat idle: one in
            // steady use would have failed its last statement had the server gone (sqlx then
            // closes it), and the relay's statements follow one another closely under load.
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_BEFORE_PING {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let held_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(HELD_CLAIMS));
        let extension_table = Default::default();
        let wakeup = PgWakeup::new(pool.clone());
        Ok(Self { pool, url: super::redact(url), wakeup, held_slots, extension_table })
    }

    /// The pool, for applications that share it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// PostgreSQL hands over `uuid`, `jsonb`, `timestamptz` and `integer` columns typed.
type Reader<'r> = RowReader<'r, PgRow, Uuid, Json<serde_json::Value>, DateTime<Utc>, i32>;

#[async_trait::async_trait]
impl OutboxBackend for PostgresStore {
    fn display_url(&self) -> String {
        self.url.clone()
    }

    fn catalog_database(&self) -> Option<crate::catalog::CatalogDatabase> {
        Some(crate::catalog::CatalogDatabase::Postgres(self.pool.clone()))
    }

    async fn table_columns(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_name = 'outbox_events' AND table_schema = current_schema()",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn wait_for_writes(&self, timeout: Duration) -> bool {
        self.wakeup.wait(timeout).await
    }

    async fn remove_wakeup_trigger(&self) -> Result<bool, StoreError> {
        sqlx::query(r#"DROP TRIGGER IF EXISTS "broadcaster_outbox_notify" ON "outbox_events""#)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    async fn migrate(&self) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Two `migrate`s at once must not both try to create the table.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('broadcaster.outbox_events'))").execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_name = 'outbox_events' AND table_schema = current_schema())",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !exists {
            for statement in schema::POSTGRES_DDL {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        self.verify().await?;
        sqlx::query(schema::CLAIM_INDEX).execute(&self.pool).await?;
        sqlx::query(schema::FAILED_INDEX).execute(&self.pool).await?;
        sqlx::query(schema::POSTGRES_EXTENSIONS_TABLE).execute(&self.pool).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(crate::catalog::schema::POSTGRES_WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        for statement in crate::catalog::schema::POSTGRES_DDL {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('broadcaster.outbox_events'))").execute(&mut *tx).await?;
        for statement in schema::POSTGRES_NOTIFY_TRIGGER {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(!exists)
    }

    async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        crate::insert::enqueue(self, events, now).await
    }

    async fn try_enqueue_requests(
        &self,
        requests: &[&[NewEvent]],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Result<Vec<bool>, StoreError>>>, StoreError> {
        crate::insert::try_enqueue_requests(self, requests, now).await
    }

    async fn claim(&self, now: DateTime<Utc>, limit: u32, skip: &[String]) -> Result<Claim, StoreError> {
        self.claimed(now, sqlx::query(CLAIM).bind(now).bind(skip).bind(i64::from(limit))).await
    }

    async fn claim_for(&self, now: DateTime<Utc>, limit: u32, names: [&str; 2]) -> Result<Claim, StoreError> {
        let [first, second] = names;
        self.claimed(now, sqlx::query(CLAIM_FOR).bind(now).bind(first).bind(second).bind(i64::from(limit))).await
    }

    async fn publishers_with_work(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(schema::PUBLISHERS_WITH_WORK).fetch_all(&self.pool).await?)
    }

    async fn write(&self, writes: &FencedWrites<'_>) -> Result<u64, StoreError> {
        write_on(&mut *self.pool.acquire().await?, writes).await
    }

    async fn claim_held(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        names: [&str; 2],
    ) -> Result<Option<Box<dyn HeldClaim>>, StoreError> {
        self.held_claim(now, limit, names).await
    }

    async fn reclaim_expired(&self, now: DateTime<Utc>, lease: Duration) -> Result<u64, StoreError> {
        let reclaim = sqlx::query(schema::RECLAIM_EXPIRED).bind(now).bind(super::lease_start(now, lease));
        Ok(reclaim.execute(&self.pool).await?.rows_affected())
    }

    async fn backlog(&self) -> Result<Vec<Backlog>, StoreError> {
        Ok(Backlog::of(sqlx::query_as(schema::BACKLOG).fetch_all(&self.pool).await?))
    }

    async fn recent_failed(&self, limit: u32) -> Result<Vec<FailedEvent>, StoreError> {
        let rows: Vec<(String, String, String, i32, DateTime<Utc>, String)> = sqlx::query_as(schema::RECENT_FAILED)
            .bind(i64::from(limit))
            .bind(schema::FAILED_ERROR_CHARS)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, publisher_backend, event_type, retry_count, updated_at, last_error)| FailedEvent {
                id,
                publisher_backend,
                event_type,
                retry_count: u32::try_from(retry_count).unwrap_or(0),
                updated_at: Some(updated_at),
                last_error,
            })
            .collect())
    }

    async fn status(&self, now: DateTime<Utc>, lease: Duration) -> Result<StatusReport, StoreError> {
        let counts = sqlx::query_as(schema::COUNT_BY_STATUS).fetch_all(&self.pool).await?;
        let oldest = sqlx::query_scalar(schema::OLDEST_DUE).bind(now).fetch_one(&self.pool).await?;
        let expired_before = super::lease_start(now, lease);
        let expired = sqlx::query_scalar(schema::EXPIRED_LEASES).bind(expired_before).fetch_one(&self.pool).await?;
        Ok(StatusReport::of(counts, oldest, expired))
    }

    async fn retry(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let changed: Vec<Uuid> = if ids.is_empty() {
            sqlx::query_scalar(schema::RETRY_FAILED).bind(now).fetch_all(&self.pool).await?
        } else {
            sqlx::query_scalar(RETRY_IDS)
                .bind(now)
                .bind(uuids(ids.iter().map(String::as_str))?)
                .fetch_all(&self.pool)
                .await?
        };
        Ok(changed.into_iter().map(|id| id.to_string()).collect())
    }

    async fn find(&self, ids: &[String]) -> Result<Vec<RowState>, StoreError> {
        let rows = sqlx::query(FIND).bind(uuids(ids.iter().map(String::as_str))?).fetch_all(&self.pool).await?;
        rows.iter().map(Reader::state).collect()
    }

    async fn prune_batch(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let prune = sqlx::query(schema::PRUNE_BATCH).bind(before).bind(i64::from(limit));
        Ok(prune.execute(&self.pool).await?.rows_affected())
    }

    async fn count_prunable(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(schema::COUNT_PRUNABLE).bind(before).fetch_one(&self.pool).await?;
        Ok(count.unsigned_abs())
    }
}
