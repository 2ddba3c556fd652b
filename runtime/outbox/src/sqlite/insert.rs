//! SQLite's [`InsertStatements`]: new rows as Django stores them (ids as 32 hex digits, JSON as
//! text, times as naive UTC text) in multi-row `INSERT`s, on the connection that syncs every
//! commit.

use chrono::{DateTime, Utc};
use sqlx::Sqlite;

use super::{SqliteStore, format_time, json_list};
use crate::StoreError;
use crate::extensions;
use crate::insert::{InsertStatements, OnConflict};
use crate::new_rows::Columns;

impl InsertStatements for SqliteStore {
    type Connection = sqlx::SqliteConnection;
    /// The transaction first, this process's turn to write second: a tuple drops in order, so
    /// the turn is given back once the transaction has ended.
    type Transaction = (sqlx::Transaction<'static, Sqlite>, super::write_turns::WriteTurn);

    /// 14 parameters a row, well under SQLite's limit.
    const ROWS_PER_INSERT: usize = 100;

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

    async fn insert_extensions(conn: &mut Self::Connection, rows: &[&Columns<'_>]) -> Result<(), StoreError> {
        extensions::insert_sqlite(conn, rows).await
    }
}

/// The stored rows (id, publisher_backend) of the JSON list of ids `?1`.
const STORED: &str = "SELECT id, publisher_backend FROM outbox_events WHERE id IN (SELECT value FROM json_each(?1))";
