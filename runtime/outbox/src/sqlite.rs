//! The outbox on SQLite, in Django's storage format: ids as 32 hex digits, JSON as text
//! (rendered as `json.dumps` does), times as naive UTC text `YYYY-MM-DD HH:MM:SS[.ffffff]`.
//!
//! One process writes at a time (SQLite's rule); claims are single `UPDATE … RETURNING`
//! statements, so they are atomic without row locks. This process's own writers queue on an
//! in-process lock before they meet SQLite's (`SqliteStore::writer`), and an outcome that is one
//! statement runs without `BEGIN`/`COMMIT` (each a round trip to the connection's thread).

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
use super::insert::{self, InsertStatements, OnConflict};
use super::new_rows::Columns;
use super::row::{ReadRow, RowError, RowReader, claimed_columns, quote};
use super::schema;
use super::{
    Backlog, Claim, FailedEvent, Fence, FencedWrites, NewEvent, OutboxBackend, RejectedRow, RowId, RowState,
    StatusReport, StoreError,
};

pub use super::row::parse_time;

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
    /// after it was free. Other processes (the application) still meet it there.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
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
/// Each claim statement comes in two forms ([`ClaimStatement`]): without and with the claimed
/// rows' extensions.
macro_rules! claim_any {
    ($($returning:expr),+) => {
        concat!(
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
            $($returning),+
        )
    };
}
const CLAIM: ClaimStatement =
    [claim_any!(claimed_columns!()), claim_any!(claimed_columns!(), extensions::sqlite_claimed_extensions!())];

/// A claim statement returning [`claimed_columns`], and the same returning each row's
/// extensions too ([`extensions::sqlite_claimed_extensions`]), for once the table is known to
/// exist: the claim then needs no second statement to read them.
type ClaimStatement = [&'static str; 2];

/// Up to `?4` due rows of one status and publisher name, oldest due first: one index range
/// (a string literal, for `concat!`).
macro_rules! due_range {
    ($status:literal, $name:literal) => {
        concat!(
            "SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events WHERE status = '",
            $status,
            "' AND publisher_backend = ",
            $name,
            " AND scheduled_at <= ?1 ORDER BY scheduled_at LIMIT ?4)"
        )
    };
}

/// Claims due rows of the publisher named `?2` or `?3`: one index range per (status, name),
/// each stopping after `limit` rows, so the cost does not grow with other publishers'
/// backlogs.
macro_rules! claim_for {
    ($($returning:expr),+) => {
        concat!(
            "UPDATE outbox_events SET status = 'processing', updated_at = ?1 WHERE id IN (SELECT id FROM (",
            due_range!("pending", "?2"),
            " UNION ",
            due_range!("pending", "?3"),
            " UNION ",
            due_range!("retry", "?2"),
            " UNION ",
            due_range!("retry", "?3"),
            ") ORDER BY scheduled_at, created_at LIMIT ?4) RETURNING ",
            $($returning),+
        )
    };
}
const CLAIM_FOR: ClaimStatement =
    [claim_for!(claimed_columns!()), claim_for!(claimed_columns!(), extensions::sqlite_claimed_extensions!())];

/// Failed and retrying rows of the JSON list of ids `?2` back to `pending`, due at `?1`.
const RETRY_IDS: &str = "UPDATE outbox_events SET status = 'pending', retry_count = 0, scheduled_at = ?1, updated_at = ?1 \
     WHERE id IN (SELECT value FROM json_each(?2)) AND status IN ('failed', 'retry') RETURNING id";

/// The rows of the JSON list of ids `?1`, for [`RowReader::state`].
const FIND: &str = "SELECT id, status, publisher_backend, retry_count, max_retries, scheduled_at, published_at, \
     last_error FROM outbox_events WHERE id IN (SELECT value FROM json_each(?1))";

const TABLE_COLUMNS: &str = "SELECT name FROM pragma_table_info('outbox_events')";

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
        })
    }

    /// The pool, for applications that share it.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// This process's turn to write ([`Self::writer`]), waited for at most as long as a
    /// statement waits for SQLite's lock ([`super::sqlite_busy::LOCK_WAIT`]): queued writers
    /// must not each add a whole wait to the one before them.
    /// Owned, so that a transaction can hold it ([`InsertStatements::Transaction`]).
    async fn writing(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, StoreError> {
        let waited = super::sqlite_busy::LOCK_WAIT;
        let turn = self.writer.clone().lock_owned();
        tokio::time::timeout(waited, turn).await.map_err(|_| StoreError::WriteQueueTimeout { waited })
    }

    /// Runs a claim statement (its parameters bound by `bind`); reads every row on its own and
    /// fails the unreadable ones. Reads the claimed events' extensions in the same statement
    /// once the extension table is known to exist, with a statement of their own until then.
    async fn claimed<'q>(
        &self,
        token: DateTime<Utc>,
        statement: ClaimStatement,
        bind: impl FnOnce(Query<'q>) -> Query<'q>,
    ) -> Result<Claim, StoreError> {
        let with_extensions = self.extension_table.known();
        let claim = bind(sqlx::query(statement[usize::from(with_extensions)]));
        let rows = {
            let _writing = self.writing().await?;
            claim.fetch_all(&self.pool).await?
        };
        let mut claim = Claim::from_rows(token, rows.iter().map(read_claimed).collect::<Result<Vec<_>, _>>()?);
        if let Some(rejections) = FencedWrites::rejecting(&claim, Fence::Lease(token)) {
            self.write(&rejections).await?;
        }
        if with_extensions {
            let extensions = rows.iter().map(extensions::sqlite_claimed_row).collect::<Result<Vec<_>, _>>()?;
            claim.attach_extensions(extensions.into_iter().flatten().collect());
        } else if !claim.events.is_empty() {
            extensions::read_sqlite(&mut *self.pool.acquire().await?, &self.extension_table, &mut claim).await?;
        }
        Ok(claim)
    }
}

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

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// SQLite hands over ids, JSON and times as text.
type Reader<'r> = RowReader<'r, SqliteRow, String, String, String, i64>;

/// Reads a claimed row. Django stores a UUID as 32 lowercase hex digits, and every write by
/// id looks for that form: a row whose id is in any other form could never be settled, so it
/// is rejected.
fn read_claimed(row: &SqliteRow) -> Result<ReadRow, StoreError> {
    let read = Reader::claimed(row)?;
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
        Ok(sqlx::query_scalar(TABLE_COLUMNS).fetch_all(&self.pool).await?)
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
        Ok(present.is_empty())
    }

    async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        insert::enqueue(self, events, now).await
    }

    async fn try_enqueue_requests(
        &self,
        requests: &[&[NewEvent]],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Result<Vec<bool>, StoreError>>>, StoreError> {
        insert::try_enqueue_requests(self, requests, now).await
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
        let statements = write_statements(writes)?;
        let (token, now) = (writes.fence.token().map(format_time), format_time(writes.now));
        let _writing = self.writing().await?;
        if let [(statement, rows)] = &statements[..] {
            let statement: &'static str = statement;
            let done = sqlx::query(statement).bind(&now).bind(rows).bind(&token).execute(&self.pool).await?;
            return Ok(done.rows_affected());
        }
        let mut tx = self.pool.begin().await?;
        let mut updated = 0;
        for (statement, rows) in statements {
            let done = sqlx::query(statement).bind(&now).bind(rows).bind(&token).execute(&mut *tx).await?;
            updated += done.rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
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

impl InsertStatements for SqliteStore {
    type Connection = sqlx::SqliteConnection;
    /// The transaction first, this process's turn to write second: a tuple drops in order, so
    /// the turn is given back once the transaction has ended.
    type Transaction = (sqlx::Transaction<'static, Sqlite>, tokio::sync::OwnedMutexGuard<()>);

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        let writing = self.writing().await?;
        // IMMEDIATE: a group commit reads before it writes, and a read snapshot that another
        // connection (the relay's claims) wrote past cannot become a write one: a deferred
        // transaction fails at its first insert with "database is locked", without waiting.
        // (A plain enqueue writes first; IMMEDIATE only takes the lock one statement sooner.)
        Ok((self.enqueues.begin_with("BEGIN IMMEDIATE").await?, writing))
    }

    fn connection((tx, _): &mut Self::Transaction) -> &mut Self::Connection {
        tx
    }

    async fn commit((tx, _writing): Self::Transaction) -> Result<(), StoreError> {
        Ok(tx.commit().await?)
    }

    async fn stored(conn: &mut Self::Connection, ids: &[uuid::Uuid]) -> Result<Vec<(uuid::Uuid, String)>, StoreError> {
        let ids = json_list(ids.iter().map(|id| id.simple().to_string()));
        let stored: Vec<(String, String)> = sqlx::query_as(STORED).bind(ids).fetch_all(conn).await?;
        Ok(stored.into_iter().filter_map(|(id, p)| Some((uuid::Uuid::parse_str(&id).ok()?, p))).collect())
    }

    async fn insert(
        conn: &mut Self::Connection,
        rows: &[&Columns<'_>],
        now: DateTime<Utc>,
        on_conflict: OnConflict,
    ) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            inserted += insert_rows(&mut *conn, chunk, now, on_conflict).await?;
        }
        Ok(inserted)
    }

    async fn insert_extensions(conn: &mut Self::Connection, rows: &[&Columns<'_>]) -> Result<(), StoreError> {
        extensions::insert_sqlite(conn, rows).await
    }
}

/// The stored rows (id, publisher_backend) of the JSON list of ids `?1`.
const STORED: &str = "SELECT id, publisher_backend FROM outbox_events WHERE id IN (SELECT value FROM json_each(?1))";

/// Rows in one multi-row `INSERT` (14 parameters each, well under SQLite's limit).
const ROWS_PER_INSERT: usize = 100;

/// Inserts `rows` in one statement; returns how many it inserted.
async fn insert_rows(
    conn: &mut sqlx::SqliteConnection,
    rows: &[&Columns<'_>],
    now: DateTime<Utc>,
    on_conflict: OnConflict,
) -> Result<u64, StoreError> {
    // Anonymous parameters, bound in order: SQLite looks a numbered one up by a linear scan,
    // which made binding 1,400 of them the most expensive part of the insert.
    let row = "(?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, NULL, 0, ?, '', ?, ?)";
    let values = vec![row; rows.len()];
    let statement = format!(
        "INSERT INTO outbox_events (id, spec_version, event_type, source, subject, data_content_type, data_schema, \
         data, status, created_at, updated_at, scheduled_at, published_at, retry_count, max_retries, last_error, \
         publisher_backend, publisher_config) VALUES {}{}",
        values.join(", "),
        if on_conflict == OnConflict::Skip { " ON CONFLICT (id) DO NOTHING" } else { "" }
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
    for row in rows {
        let event = row.event;
        query = query
            .bind(row.id.simple().to_string())
            .bind(event.spec_version.clone())
            .bind(event.event_type.clone())
            .bind(event.source.clone())
            .bind(event.subject.clone())
            .bind(event.data_content_type.clone())
            .bind(event.data_schema.clone())
            .bind(row.data_value().map(broadcaster_entry::pyjson::to_string))
            .bind(format_time(row.created_at))
            .bind(format_time(now))
            .bind(format_time(row.scheduled_at))
            .bind(i64::from(event.max_retries))
            .bind(event.publisher_backend.clone())
            .bind(broadcaster_entry::pyjson::to_string(&serde_json::Value::Object(event.publisher_config.clone())));
    }
    Ok(query.execute(conn).await?.rows_affected())
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

    #[tokio::test]
    async fn claims_after_the_first_read_the_extensions_in_the_claim_statement_itself() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc::now();
        let traced = |n: u32| {
            NewEvent::new("t", "/s").extension("region", format!("r{n}")).extension("tenantid", format!("t{n}"))
        };
        let pairs = |n: u32| vec![("region".to_string(), format!("r{n}")), ("tenantid".to_string(), format!("t{n}"))];
        let claim_all = |store: SqliteStore| async move { store.claim(Utc::now(), 100, &[]).await.unwrap() };
        let extensions_of = |claim: &Claim| {
            let mut found: Vec<Vec<(String, String)>> =
                claim.events.iter().map(|e| e.event.extensions.clone()).collect();
            found.sort();
            found
        };

        store.enqueue(&[traced(1)], now).await.unwrap();
        assert!(!store.extension_table.known(), "nothing claimed yet: the table is not known to exist");
        let first = claim_all(store.clone()).await;
        assert_eq!(extensions_of(&first), [pairs(1)]);
        assert!(store.extension_table.known(), "the first claim's own read saw the table");

        // From now on the claim statement returns them: every event its own, none for the plain one.
        store.enqueue(&[traced(2), NewEvent::new("t", "/s"), traced(3)], now).await.unwrap();
        let second = claim_all(store.clone()).await;

        assert_eq!(extensions_of(&second), [vec![], pairs(2), pairs(3)]);
    }

    #[tokio::test]
    async fn a_writer_queued_behind_a_write_that_hangs_gives_up_after_sqlites_own_lock_wait() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let hung = store.writer.clone().lock_owned().await;
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        match store.writing().await {
            Err(StoreError::WriteQueueTimeout { waited }) => assert_eq!(waited, super::super::sqlite_busy::LOCK_WAIT),
            other => panic!("expected WriteQueueTimeout, got {:?}", other.map(|_| ())),
        }
        let waited = started.elapsed();
        let lock_wait = super::super::sqlite_busy::LOCK_WAIT;
        assert!(waited >= lock_wait && waited < lock_wait + Duration::from_secs(1), "{waited:?}");
        drop(hung);
        assert!(store.writing().await.is_ok(), "free again once the write before it ends");
    }

    #[tokio::test]
    async fn new_events_are_synced_at_commit_and_the_relays_own_writes_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let setting = |pool: &SqlitePool| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>("PRAGMA synchronous").fetch_one(&pool).await.unwrap() }
        };
        // 2 is FULL (a commit is on disk when it returns), 1 is NORMAL.
        assert_eq!(setting(&store.enqueues).await, 2);
        assert_eq!(setting(&store.pool).await, 1);
    }
}
