//! The steps of an insert, pinned on a table in memory that records what it is asked
//! ([`Recording`]): what is checked before the transaction opens, which rows a group inserts,
//! and that an attempt another writer got in between writes nothing. The databases' own
//! statements are run by the store tests and `tests/tests/outbox_requests.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;

/// A table in memory, as an [`InsertStatements`] database: ids and their publisher, and the
/// rows another writer stores right after a read (a race lost).
#[derive(Debug, Default)]
struct Recording {
    table: HashMap<Uuid, String>,
    stored_after_read: Vec<(Uuid, String)>,
    /// Every step asked for, in order.
    log: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// A connection of [`Recording`]: its own copy of the table.
#[derive(Debug)]
struct RecordingConnection {
    table: HashMap<Uuid, String>,
    stored_after_read: Vec<(Uuid, String)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl RecordingConnection {
    fn record(&self, step: String) {
        self.log.lock().unwrap().push(step);
    }
}

impl InsertStatements for Recording {
    type Connection = RecordingConnection;
    type Transaction = RecordingConnection;
    /// Small, so that a group of three rows takes two statements.
    const ROWS_PER_INSERT: usize = 2;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        self.log.lock().unwrap().push("begin".into());
        let (table, stored_after_read) = (self.table.clone(), self.stored_after_read.clone());
        Ok(RecordingConnection { table, stored_after_read, log: self.log.clone() })
    }

    fn connection(transaction: &mut Self::Transaction) -> &mut Self::Connection {
        transaction
    }

    async fn commit(transaction: Self::Transaction) -> Result<(), StoreError> {
        transaction.record("commit".into());
        Ok(())
    }

    async fn stored(conn: &mut Self::Connection, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, StoreError> {
        conn.record(format!("read {} ids", ids.len()));
        let stored = ids.iter().filter_map(|id| Some((*id, conn.table.get(id)?.clone()))).collect();
        conn.table.extend(std::mem::take(&mut conn.stored_after_read));
        Ok(stored)
    }

    async fn insert(
        conn: &mut Self::Connection,
        rows: &[&Columns<'_>],
        _now: DateTime<Utc>,
        on_conflict: OnConflict,
    ) -> Result<u64, StoreError> {
        conn.record(format!("insert {}, {on_conflict:?} on conflict", rows.len()));
        let mut inserted = 0;
        for row in rows {
            if conn.table.contains_key(&row.id) {
                match on_conflict {
                    OnConflict::Fail => return Err(StoreError::Database(sqlx::Error::Protocol("duplicate id".into()))),
                    OnConflict::Skip => continue,
                }
            }
            conn.table.insert(row.id, row.event.publisher_backend.clone());
            inserted += 1;
        }
        Ok(inserted)
    }

    async fn insert_extensions(conn: &mut Self::Connection, rows: &[&Columns<'_>]) -> Result<(), StoreError> {
        conn.record(format!("extensions of {} rows", rows.len()));
        Ok(())
    }
}

fn event(publisher: &str) -> NewEvent {
    NewEvent::new("order.created", "/shop").publisher(publisher)
}

fn id_of(event: &NewEvent) -> Uuid {
    Uuid::parse_str(&event.event.id).unwrap()
}

fn now() -> DateTime<Utc> {
    broadcaster_core::event::now_micros()
}

#[tokio::test]
async fn an_enqueue_with_an_unstorable_event_fails_before_any_transaction_opens() {
    let store = Recording::default();
    let mut nul = event("tenant-a");
    nul.event.subject = "a\0b".into();
    let result = enqueue(&store, &[event("tenant-a"), nul], now()).await;
    assert!(matches!(result, Err(StoreError::Unstorable(_))), "{result:?}");
    assert!(store.log().is_empty(), "{:?}", store.log());
}

#[tokio::test]
async fn an_enqueue_inserts_every_row_failing_on_a_stored_id_then_their_extensions_then_commits() {
    let store = Recording::default();
    let events = [event("tenant-a"), event("tenant-b")];
    let ids = enqueue(&store, &events, now()).await.unwrap();
    assert_eq!(ids, events.iter().map(|e| e.event.id.clone()).collect::<Vec<_>>());
    assert_eq!(store.log(), ["begin", "insert 2, Fail on conflict", "extensions of 2 rows", "commit"]);
}

#[tokio::test]
async fn a_group_inserts_only_the_new_rows_of_the_requests_it_accepts_a_statement_per_chunk_and_commits_once() {
    let taken = event("tenant-b");
    let store = Recording { table: HashMap::from([(id_of(&taken), "tenant-b".into())]), ..Default::default() };
    let first = [event("tenant-a"), event("tenant-a")];
    let mut stolen = taken.clone();
    stolen.event.publisher_backend = "tenant-a".into();
    let refused = [event("tenant-a"), stolen];
    let repeat = [taken.clone(), event("tenant-b")];
    let requests: [&[NewEvent]; 3] = [&first, &refused, &repeat];

    let answers = try_enqueue_requests(&store, &requests, now()).await.unwrap().expect("no other writer");

    assert_eq!(answers[0].as_ref().unwrap(), &[true, true]);
    assert!(matches!(answers[1], Err(StoreError::IdTaken { .. })), "{:?}", answers[1]);
    assert_eq!(answers[2].as_ref().unwrap(), &[false, true]);
    assert_eq!(
        store.log(),
        [
            "begin",
            "read 6 ids",
            "insert 2, Skip on conflict",
            "insert 1, Skip on conflict",
            "extensions of 3 rows",
            "commit"
        ]
    );
}

#[tokio::test]
async fn a_group_whose_new_id_another_writer_stores_after_the_read_writes_nothing_and_asks_for_another_attempt() {
    let raced = event("tenant-a");
    let store = Recording { stored_after_read: vec![(id_of(&raced), "tenant-a".into())], ..Default::default() };
    let request = [event("tenant-a"), raced];

    let attempt = try_enqueue_requests(&store, &[&request], now()).await.unwrap();

    assert!(attempt.is_none(), "{attempt:?}");
    assert_eq!(store.log(), ["begin", "read 2 ids", "insert 2, Skip on conflict"], "neither extensions nor commit");
}
