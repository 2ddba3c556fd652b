//! Inserting new rows, written once for every database: a plain enqueue ([`enqueue`]) and one
//! attempt at a group commit of several requests ([`try_enqueue_requests`]), over the few
//! statements each database words its own way ([`InsertStatements`]).
//!
//! Each database implements [`InsertStatements`] in its own files (`sqlite/insert.rs`,
//! `postgres/insert.rs`: its transaction, its SQL and its binding); the order of the steps, what
//! is checked before the transaction opens, and when nothing is written are decided here.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::StoreError;
use super::new_rows::{Columns, NewEvent, decide_requests};

/// What an insert does with a row whose id is stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnConflict {
    /// The statement fails (and the transaction with it).
    Fail,
    /// The row is left out.
    Skip,
}

/// The statements that write new rows, as one database words them. Associated functions on a
/// connection rather than methods, so that the public enqueue API above the databases
/// (`enqueue::sqlite`, `enqueue::postgres`) runs them on an application's own transaction too.
pub(crate) trait InsertStatements: Sync {
    /// The connection the statements run on: an application's, or a [`Self::Transaction`]'s.
    type Connection: Send;

    /// A write transaction of the store, with what the store holds while it is open (SQLite:
    /// this process's turn to write). Dropping it uncommitted rolls it back.
    type Transaction: Send;

    /// The most rows one insert statement takes ([`insert`](Self::insert)).
    const ROWS_PER_INSERT: usize;

    /// Opens a write transaction for new rows; it may begin with a read
    /// ([`stored`](Self::stored)) and insert after it.
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send;

    /// The connection of `transaction`.
    fn connection(transaction: &mut Self::Transaction) -> &mut Self::Connection;

    /// Commits `transaction`.
    fn commit(transaction: Self::Transaction) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The ids among `ids` that are stored, each with its `publisher_backend` as stored.
    fn stored(
        conn: &mut Self::Connection,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<(Uuid, String)>, StoreError>> + Send;

    /// Inserts `rows` (at most [`ROWS_PER_INSERT`](Self::ROWS_PER_INSERT)), `pending`, `now`
    /// their `updated_at`, in one statement; returns how many it inserted.
    fn insert(
        conn: &mut Self::Connection,
        rows: &[&Columns<'_>],
        now: DateTime<Utc>,
        on_conflict: OnConflict,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Inserts the extension attributes of `rows`, inserted already on the same connection
    /// ([`super::extensions`]); nothing when none has any.
    fn insert_extensions(
        conn: &mut Self::Connection,
        rows: &[&Columns<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// [`OutboxBackend::enqueue`](super::OutboxBackend::enqueue): every event checked before the
/// transaction opens, then all inserted in it, or none.
pub(crate) async fn enqueue<S: InsertStatements>(
    store: &S,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let columns = events.iter().map(|e| Columns::of(e, now)).collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<&Columns<'_>> = columns.iter().collect();
    let mut tx = store.begin().await?;
    insert_rows::<S>(S::connection(&mut tx), &rows, now, OnConflict::Fail).await?;
    S::insert_extensions(S::connection(&mut tx), &rows).await?;
    S::commit(tx).await?;
    Ok(columns.iter().map(|c| c.id.to_string()).collect())
}

/// [`OutboxBackend::try_enqueue_requests`](super::OutboxBackend::try_enqueue_requests): every
/// request's events checked before the transaction opens; in it, the stored ids read, every
/// request decided from them ([`decide_requests`]), the new rows inserted, skipping ids stored
/// since the read, and committed. `None`, with nothing written, when an insert skipped a row:
/// another writer stored its id in between, and the next attempt reads it.
#[allow(clippy::type_complexity)]
pub(crate) async fn try_enqueue_requests<S: InsertStatements>(
    store: &S,
    requests: &[&[NewEvent]],
    now: DateTime<Utc>,
) -> Result<Option<Vec<Result<Vec<bool>, StoreError>>>, StoreError> {
    let checked: Vec<Result<Vec<Columns<'_>>, StoreError>> =
        requests.iter().map(|events| events.iter().map(|e| Columns::of(e, now)).collect()).collect();
    let ids: Vec<Uuid> = checked.iter().flatten().flatten().map(|c| c.id).collect();
    let mut tx = store.begin().await?;
    let stored = S::stored(S::connection(&mut tx), &ids).await?;
    let (answers, rows) = decide_requests(&checked, stored);
    let inserted = insert_rows::<S>(S::connection(&mut tx), &rows, now, OnConflict::Skip).await?;
    if inserted != rows.len() as u64 {
        // Dropping the transaction rolls back the rows this attempt did insert.
        return Ok(None);
    }
    S::insert_extensions(S::connection(&mut tx), &rows).await?;
    S::commit(tx).await?;
    Ok(Some(answers))
}

/// Inserts `rows` in as few statements as the database `S` takes; returns how many it
/// inserted.
pub(crate) async fn insert_rows<S: InsertStatements>(
    conn: &mut S::Connection,
    rows: &[&Columns<'_>],
    now: DateTime<Utc>,
    on_conflict: OnConflict,
) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for chunk in rows.chunks(S::ROWS_PER_INSERT) {
        inserted += S::insert(conn, chunk, now, on_conflict).await?;
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests;
