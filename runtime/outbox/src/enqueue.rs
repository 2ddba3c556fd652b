//! Writing events into the outbox, from the command line or from a Rust application inside
//! its own transaction (the point of the outbox pattern: the event is stored if and only
//! if the business data is).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
//! use broadcaster_outbox::{NewEvent, enqueue, schema};
//! use sqlx::Connection;
//!
//! let mut db = sqlx::SqliteConnection::connect("sqlite::memory:").await?;
//! for statement in schema::SQLITE_DDL {
//!     sqlx::query(*statement).execute(&mut db).await?;
//! }
//! sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)").execute(&mut db).await?;
//!
//! // The order and its event commit together, or neither does.
//! let mut tx = db.begin().await?;
//! sqlx::query("INSERT INTO orders (id, total) VALUES (42, 12.5)").execute(&mut *tx).await?;
//! let event = NewEvent::new("order.created", "/shop/orders")
//!     .data(serde_json::json!({"order_id": 42, "total": 12.5}))
//!     .subject("order/42");
//! let id = enqueue::sqlite(&mut *tx, &event).await?;
//! tx.commit().await?;
//!
//! let status: String = sqlx::query_scalar("SELECT status FROM outbox_events WHERE id = ?")
//!     .bind(id.simple().to_string())
//!     .fetch_one(&mut db)
//!     .await?;
//! assert_eq!(status, "pending");
//! # Ok(()) }
//! ```
//!
//! With PostgreSQL, [`postgres`] takes a `&mut PgConnection` (or a transaction) the same way.

use super::StoreError;
use super::insert::{InsertStatements, OnConflict, insert_rows};
use super::new_rows::Columns;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use broadcaster_core::event::now_micros;

/// The event to store, also at the crate's root (`broadcaster_outbox::NewEvent`).
pub use super::new_rows::NewEvent;

/// Inserts `event` through `conn` (`&mut *tx` of an open transaction, or a connection) on
/// SQLite; returns its id. Its extension attributes go to `broadcaster_event_extensions` in a
/// second statement on the same connection (only when it has any): enqueue inside a
/// transaction so that both commit together.
pub async fn sqlite(conn: &mut sqlx::SqliteConnection, event: &NewEvent) -> Result<uuid::Uuid, StoreError> {
    insert_through::<SqliteStore>(conn, event).await
}

/// The same on PostgreSQL: `conn` is `&mut *tx` of an open transaction, or a connection.
pub async fn postgres(conn: &mut sqlx::PgConnection, event: &NewEvent) -> Result<uuid::Uuid, StoreError> {
    insert_through::<PostgresStore>(conn, event).await
}

/// Inserts `event` and its extension attributes through `conn` with the statements of the
/// database `S`; returns its id.
async fn insert_through<S: InsertStatements>(
    conn: &mut S::Connection,
    event: &NewEvent,
) -> Result<uuid::Uuid, StoreError> {
    let now = now_micros();
    let columns = Columns::of(event, now)?;
    insert_rows::<S>(conn, &[&columns], now, OnConflict::Fail).await?;
    S::insert_extensions(conn, &[&columns]).await?;
    Ok(columns.id)
}
