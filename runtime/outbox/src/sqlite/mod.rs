//! The outbox on SQLite, in Django's storage format: ids as 32 hex digits, JSON as text
//! (rendered as `json.dumps` does), times as naive UTC text `YYYY-MM-DD HH:MM:SS[.ffffff]`.
//!
//! One process writes at a time (SQLite's rule); claims are single `UPDATE … RETURNING`
//! statements, so they are atomic without row locks. This process's own writers queue on an
//! in-process lock before they meet SQLite's (`SqliteStore::writer`), and an outcome that is one
//! statement runs without `BEGIN`/`COMMIT` (each a round trip to the connection's thread).
//!
//! Here: connecting, migrating, and the operators' statements (status, retry, find, prune);
//! `claim.rs` the claims, `settle.rs` the fenced writes that finish claimed rows, `insert.rs`
//! the statements that write new rows (the crate's `insert` runs them), `tests.rs` the tests.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Sqlite, SqlitePool};

use super::extensions;
use super::file_watch::FileWrites;
use super::row::RowReader;
use super::schema;
use super::{Backlog, Claim, FailedEvent, FencedWrites, NewEvent, OutboxBackend, RowState, StatusReport, StoreError};
use claim::{CLAIM, CLAIM_FOR};
use settle::{PendingSettlements, TakenSettlements};

pub use super::row::parse_time;

mod claim;
mod insert;
mod settle;
#[cfg(test)]
mod tests;
pub mod write_turns;

/// The outbox in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection that syncs every commit (`synchronous = FULL`), for writing new events:
    /// an event whose enqueue returned (an id printed, a 202 answered) survives a power cut.
    enqueues: SqlitePool,
    url: String,
    /// The database file (none in memory).
    file: Option<PathBuf>,
    /// Writes to the file, once someone waits for them.
    writes: std::sync::Arc<tokio::sync::Mutex<Option<FileWrites>>>,
    /// Whether `broadcaster_event_extensions` was seen.
    extension_table: extensions::TablePresence,
    /// Taken for every write transaction of this store, so this process's writers (claims,
    /// outcomes, enqueues) queue here, first come first served, instead of on SQLite's lock,
    /// where a writer that finds it taken sleeps ([`super::sqlite_busy`]) and may wake well
    /// after it was free; spaced while another process writes ([`write_turns`]). Other
    /// processes (the application) still meet SQLite's lock.
    writer: write_turns::WriteTurns,
    /// Settlements waiting for a turn, written by whichever writer gets one first.
    settlements: PendingSettlements,
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

/// Failed and retrying rows of the JSON list of ids `?2` back to `pending`, due at `?1`.
const RETRY_IDS: &str = "UPDATE outbox_events SET status = 'pending', retry_count = 0, scheduled_at = ?1, updated_at = ?1 \
     WHERE id IN (SELECT value FROM json_each(?2)) AND status IN ('failed', 'retry') RETURNING id";

/// The rows of the JSON list of ids `?1`, for [`RowReader::state`].
const FIND: &str = "SELECT id, status, publisher_backend, retry_count, max_retries, scheduled_at, published_at, \
     last_error FROM outbox_events WHERE id IN (SELECT value FROM json_each(?1))";

/// How soon the relay looks again after a write it was woken by brought nothing to claim: an
/// application's commit is visible once its WAL is synced (about a millisecond here; the
/// looks after it come at 1, 2, 4, 8 … ms).
const LOOK_AGAIN_AFTER_WRITE: Duration = Duration::from_millis(1);

const TABLE_COLUMNS: &str = "SELECT name FROM pragma_table_info('outbox_events')";

impl SqliteStore {
    /// Opens (creating when missing) the database file of `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::Url { url: url.to_string(), message: err.to_string() })?
            .create_if_missing(true)
            // Readers never block the writer and the writer never blocks readers; one commit
            // is one append to the WAL. The mode belongs to the file, so an application that
            // shares it (Django) uses WAL too, which needs every process on the same machine.
            .journal_mode(SqliteJournalMode::Wal)
            // Broadcaster's own commits (claims, outcomes) are not synced one by one: a power
            // cut may lose the last of them, which only means those events are published
            // again. The application's commits keep its own setting (FULL by default).
            .synchronous(SqliteSynchronous::Normal)
            // Wait for the application's write transactions instead of failing (replaced by
            // a finer-grained wait of the same length once connected: `sqlite_busy`).
            .busy_timeout(super::sqlite_busy::LOCK_WAIT)
            // Read pages through a mapping instead of a read call each.
            .pragma("mmap_size", "268435456");
        let file = Some(options.get_filename().to_path_buf())
            .filter(|f| !f.as_os_str().is_empty() && !url.contains(":memory:"));
        // Waiting for the write lock: see `sqlite_busy`.
        let pool_of = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                // A connection to a local file does not go stale: no ping before each statement.
                .test_before_acquire(false)
                .after_connect(|connection, _| Box::pin(super::sqlite_busy::retry_busy_soon(connection)))
        };
        let pool = pool_of(4).connect_with(options.clone()).await?;
        // In memory, every connection is a database of its own: enqueue on the same one.
        let enqueues = if file.is_none() {
            pool.clone()
        } else {
            let durable = options.synchronous(SqliteSynchronous::Full);
            pool_of(1).connect_with(durable).await?
        };
        Ok(Self {
            pool,
            enqueues,
            url: url.to_string(),
            file,
            writes: Default::default(),
            extension_table: Default::default(),
            writer: Default::default(),
            settlements: Default::default(),
        })
    }

    /// Writes the settlements `taken` in one transaction (one statement alone without one) and
    /// tells their writers; in this writer's turn.
    async fn write_taken(&self, taken: TakenSettlements) {
        let written = async {
            let mut conn = self.pool.acquire().await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let updated = taken.run(&mut tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(updated)
        };
        match written.await {
            Ok(updated) => taken.tell(Some(updated)),
            Err(err) => {
                tracing::debug!(%err, "writing settlements together failed; each is written on its own");
                taken.tell(None);
            }
        }
    }

    /// What became of a queued settlement: the rows it updated, or, when the transaction that
    /// carried it failed, written on its own (to meet the error itself).
    async fn settled(
        &self,
        told: Result<Option<u64>, tokio::sync::oneshot::error::RecvError>,
        settlement: &settle::Settlement,
    ) -> Result<u64, StoreError> {
        if let Ok(Some(updated)) = told {
            return Ok(updated);
        }
        let _turn = self.writing().await?;
        let mut conn = self.pool.acquire().await?;
        Ok(settle::run(settlement, &mut conn).await?)
    }

    /// The pool, for applications that share it.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// This process's turn to write ([`Self::writer`]), waited for at most as long as a
    /// statement waits for SQLite's lock ([`super::sqlite_busy::LOCK_WAIT`]): queued writers
    /// must not each add a whole wait to the one before them.
    /// Owned, so that a transaction can hold it ([`InsertStatements::Transaction`](crate::insert::InsertStatements::Transaction)).
    async fn writing(&self) -> Result<write_turns::WriteTurn, StoreError> {
        let waited = super::sqlite_busy::LOCK_WAIT;
        tokio::time::timeout(waited, self.writer.take()).await.map_err(|_| StoreError::WriteQueueTimeout { waited })
    }
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// SQLite hands over ids, JSON and times as text.
type Reader<'r> = RowReader<'r, SqliteRow, String, String, String, i64>;

#[async_trait::async_trait]
impl OutboxBackend for SqliteStore {
    fn display_url(&self) -> String {
        self.url.clone()
    }

    fn catalog_database(&self) -> Option<crate::catalog::CatalogDatabase> {
        Some(crate::catalog::CatalogDatabase::Sqlite {
            pool: self.pool.clone(),
            writer: self.writer.clone(),
            file: self.file.clone(),
        })
    }

    async fn table_columns(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(TABLE_COLUMNS).fetch_all(&self.pool).await?)
    }

    /// The kernel reports an application's commit when it writes the WAL, before the commit
    /// is synced and visible: a look at once can miss it.
    fn look_again_after_write(&self) -> Option<Duration> {
        Some(LOOK_AGAIN_AFTER_WRITE)
    }

    async fn wait_for_writes(&self, timeout: Duration) -> bool {
        let mut writes = self.writes.lock().await;
        if writes.is_none()
            && let Some(file) = &self.file
        {
            match FileWrites::watch(file) {
                Ok(watch) => *writes = Some(watch),
                Err(err) => tracing::debug!(%err, "cannot watch the outbox file; polling instead"),
            }
        }
        match writes.as_mut() {
            Some(watch) => match watch.wait(timeout).await {
                Ok(written) => written,
                Err(err) => {
                    tracing::debug!(%err, "watching the outbox file failed; polling instead");
                    *writes = None;
                    false
                }
            },
            None => {
                tokio::time::sleep(timeout).await;
                false
            }
        }
    }

    async fn migrate(&self) -> Result<bool, StoreError> {
        // The write lock first, so that of two `migrate`s at once one creates the table and the
        // other finds it.
        let _writing = self.writing().await?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let present: Vec<String> = sqlx::query_scalar(TABLE_COLUMNS).fetch_all(&mut *tx).await?;
        let statements = if present.is_empty() { schema::SQLITE_DDL } else { &[] };
        for statement in statements {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.verify().await?;
        sqlx::query(schema::CLAIM_INDEX).execute(&self.pool).await?;
        sqlx::query(schema::FAILED_INDEX).execute(&self.pool).await?;
        sqlx::query(schema::SQLITE_EXTENSIONS_TABLE).execute(&self.pool).await?;
        for statement in crate::catalog::schema::SQLITE_DDL {
            sqlx::query(*statement).execute(&self.pool).await?;
        }
        Ok(present.is_empty())
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
        let skip = json_list(skip.iter().cloned());
        self.claimed(now, CLAIM, |claim| claim.bind(format_time(now)).bind(skip).bind(i64::from(limit))).await
    }

    async fn claim_for(&self, now: DateTime<Utc>, limit: u32, names: [&str; 2]) -> Result<Claim, StoreError> {
        let [first, second] = names;
        let bind = |claim: Query<'static>| {
            claim.bind(format_time(now)).bind(first.to_string()).bind(second.to_string()).bind(i64::from(limit))
        };
        self.claimed(now, CLAIM_FOR, bind).await
    }

    async fn write(&self, writes: &FencedWrites<'_>) -> Result<u64, StoreError> {
        let settlement = settle::settlement(writes)?;
        if settlement.is_empty() {
            return Ok(0);
        }
        // Written with whatever else waits for a turn then, by this writer or by the one whose
        // turn comes first (a claim): then this one leaves the queue.
        let mut told = self.settlements.add(settlement.clone());
        // While another process writes, turns are spaced: wait for the next claim to carry it
        // rather than take a turn of its own (which would push that claim back a turn).
        if super::sqlite_busy::contended_within(write_turns::CONTENDED_FOR)
            && let Ok(told) = tokio::time::timeout(write_turns::CARRY_WAIT, &mut told).await
        {
            return self.settled(told, &settlement).await;
        }
        let turn = tokio::select! {
            biased;
            told = &mut told => return self.settled(told, &settlement).await,
            turn = self.writing() => turn?,
        };
        let taken = self.settlements.take();
        if taken.is_empty() {
            turn.unused();
        } else {
            self.write_taken(taken).await;
            drop(turn);
        }
        let told = told.await;
        self.settled(told, &settlement).await
    }

    async fn publishers_with_work(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(schema::PUBLISHERS_WITH_WORK).fetch_all(&self.pool).await?)
    }

    async fn reclaim_expired(&self, now: DateTime<Utc>, lease: Duration) -> Result<u64, StoreError> {
        let expired_before = format_time(super::lease_start(now, lease));
        let reclaim = sqlx::query(schema::RECLAIM_EXPIRED).bind(format_time(now)).bind(expired_before);
        let _writing = self.writing().await?;
        Ok(reclaim.execute(&self.pool).await?.rows_affected())
    }

    async fn backlog(&self) -> Result<Vec<Backlog>, StoreError> {
        let rows: Vec<(String, String, i64, Option<String>)> =
            sqlx::query_as(schema::BACKLOG).fetch_all(&self.pool).await?;
        Ok(Backlog::of(
            rows.into_iter().map(|(p, s, n, oldest)| (p, s, n, oldest.as_deref().and_then(parse_time))).collect(),
        ))
    }

    async fn recent_failed(&self, limit: u32) -> Result<Vec<FailedEvent>, StoreError> {
        let rows: Vec<(String, String, String, i64, String, String)> = sqlx::query_as(schema::RECENT_FAILED)
            .bind(i64::from(limit))
            .bind(schema::FAILED_ERROR_CHARS)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, publisher_backend, event_type, retry_count, updated_at, last_error)| FailedEvent {
                id: uuid::Uuid::parse_str(&id).map(|u| u.to_string()).unwrap_or(id),
                publisher_backend,
                event_type,
                retry_count: u32::try_from(retry_count).unwrap_or(0),
                updated_at: parse_time(&updated_at),
                last_error,
            })
            .collect())
    }

    async fn status(&self, now: DateTime<Utc>, lease: Duration) -> Result<StatusReport, StoreError> {
        let counts = sqlx::query_as(schema::COUNT_BY_STATUS).fetch_all(&self.pool).await?;
        let oldest: Option<String> =
            sqlx::query_scalar(schema::OLDEST_DUE).bind(format_time(now)).fetch_one(&self.pool).await?;
        let expired_before = format_time(super::lease_start(now, lease));
        let expired = sqlx::query_scalar(schema::EXPIRED_LEASES).bind(expired_before).fetch_one(&self.pool).await?;
        Ok(StatusReport::of(counts, oldest.as_deref().and_then(parse_time), expired))
    }

    async fn retry(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let _writing = self.writing().await?;
        let changed: Vec<String> = if ids.is_empty() {
            sqlx::query_scalar(schema::RETRY_FAILED).bind(format_time(now)).fetch_all(&self.pool).await?
        } else {
            let ids = json_list(ids.iter().map(|id| hex_id(id)).collect::<Result<Vec<_>, _>>()?);
            sqlx::query_scalar(RETRY_IDS).bind(format_time(now)).bind(ids).fetch_all(&self.pool).await?
        };
        Ok(changed.into_iter().map(|id| uuid::Uuid::parse_str(&id).map(|u| u.to_string()).unwrap_or(id)).collect())
    }

    async fn find(&self, ids: &[String]) -> Result<Vec<RowState>, StoreError> {
        let ids = json_list(ids.iter().map(|id| hex_id(id)).collect::<Result<Vec<_>, _>>()?);
        let rows = sqlx::query(FIND).bind(ids).fetch_all(&self.pool).await?;
        rows.iter().map(Reader::state).collect()
    }

    async fn prune_batch(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        let prune = sqlx::query(schema::PRUNE_BATCH).bind(format_time(before)).bind(i64::from(limit));
        let _writing = self.writing().await?;
        Ok(prune.execute(&self.pool).await?.rows_affected())
    }

    async fn count_prunable(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar(schema::COUNT_PRUNABLE).bind(format_time(before)).fetch_one(&self.pool).await?;
        Ok(count.unsigned_abs())
    }
}
