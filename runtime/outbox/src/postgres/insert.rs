//! PostgreSQL's [`InsertStatements`]: new rows in one `INSERT … SELECT FROM UNNEST` of one array
//! per column, up to 1,000 rows a statement.

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::types::Json;
use uuid::Uuid;

use super::{PostgresStore, Query};
use crate::StoreError;
use crate::extensions;
use crate::insert::{InsertStatements, OnConflict};
use crate::new_rows::Columns;
use broadcaster_core::event::OutboxEvent;

impl InsertStatements for PostgresStore {
    type Connection = sqlx::PgConnection;
    type Transaction = sqlx::Transaction<'static, Postgres>;

    /// Its 13 arrays hold any number; this bounds one statement's size.
    const ROWS_PER_INSERT: usize = 1000;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        Ok(self.pool.begin().await?)
    }

    fn connection(tx: &mut Self::Transaction) -> &mut Self::Connection {
        tx
    }

    async fn commit(tx: Self::Transaction) -> Result<(), StoreError> {
        Ok(tx.commit().await?)
    }

    async fn stored(conn: &mut Self::Connection, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT id, publisher_backend FROM outbox_events WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(conn)
            .await?)
    }

    async fn insert(
        conn: &mut Self::Connection,
        rows: &[&Columns<'_>],
        now: DateTime<Utc>,
        on_conflict: OnConflict,
    ) -> Result<u64, StoreError> {
        let statement = match on_conflict {
            OnConflict::Fail => INSERT_ROWS,
            OnConflict::Skip => INSERT_NEW_ROWS,
        };
        Ok(insert_statement(statement, rows, now).execute(conn).await?.rows_affected())
    }

    async fn insert_extensions(conn: &mut Self::Connection, rows: &[&Columns<'_>]) -> Result<(), StoreError> {
        extensions::insert_postgres(conn, rows).await
    }
}

/// The insert of rows given as one array per column (`$1`…`$13`), `$14` their `updated_at`
/// (a string literal, for `concat!`).
macro_rules! insert_rows {
    () => {
        "INSERT INTO outbox_events (id, spec_version, event_type, source, subject, data_content_type, data_schema, \
         data, status, created_at, updated_at, scheduled_at, published_at, retry_count, max_retries, last_error, \
         publisher_backend, publisher_config) \
         SELECT id, spec_version, event_type, source, subject, data_content_type, data_schema, data, 'pending', \
             created_at, $14, scheduled_at, NULL, 0, max_retries, '', publisher_backend, publisher_config \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::jsonb[], $9::timestamptz[], $10::timestamptz[], $11::int[], $12::text[], $13::jsonb[]) \
             AS t(id, spec_version, event_type, source, subject, data_content_type, data_schema, data, created_at, \
                  scheduled_at, max_retries, publisher_backend, publisher_config)"
    };
}

/// Inserts the rows; a row whose id is stored already fails the statement.
const INSERT_ROWS: &str = insert_rows!();
/// Leaves out the rows whose id is stored already.
const INSERT_NEW_ROWS: &str = concat!(insert_rows!(), " ON CONFLICT (id) DO NOTHING");

/// One of the insert statements with the rows' columns bound.
fn insert_statement<'q>(statement: &'static str, rows: &[&'q Columns<'q>], now: DateTime<Utc>) -> Query<'q> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let text = |f: fn(&OutboxEvent) -> &String| rows.iter().map(|r| f(r.event).as_str()).collect::<Vec<&'q str>>();
    let data: Vec<Option<Json<&'q serde_json::Value>>> = rows.iter().map(|r| r.data_value().map(Json)).collect();
    let configs: Vec<Json<&'q serde_json::Map<String, serde_json::Value>>> =
        rows.iter().map(|r| Json(&r.event.publisher_config)).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let scheduled: Vec<DateTime<Utc>> = rows.iter().map(|r| r.scheduled_at).collect();
    let max_retries: Vec<i32> = rows.iter().map(|r| i32::try_from(r.event.max_retries).unwrap_or(i32::MAX)).collect();
    sqlx::query(statement)
        .bind(ids)
        .bind(text(|e| &e.spec_version))
        .bind(text(|e| &e.event_type))
        .bind(text(|e| &e.source))
        .bind(text(|e| &e.subject))
        .bind(text(|e| &e.data_content_type))
        .bind(text(|e| &e.data_schema))
        .bind(data)
        .bind(created)
        .bind(scheduled)
        .bind(max_retries)
        .bind(text(|e| &e.publisher_backend))
        .bind(configs)
        .bind(now)
}
