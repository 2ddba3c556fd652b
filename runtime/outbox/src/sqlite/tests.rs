//! The SQLite store's own behaviour: times as Django stores them, extensions read by the claim
//! statement, the writer queue's bound, and which connection syncs its commits.

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
    let traced =
        |n: u32| NewEvent::new("t", "/s").extension("region", format!("r{n}")).extension("tenantid", format!("t{n}"));
    let pairs = |n: u32| vec![("region".to_string(), format!("r{n}")), ("tenantid".to_string(), format!("t{n}"))];
    let claim_all = |store: SqliteStore| async move { store.claim(Utc::now(), 100, &[]).await.unwrap() };
    let extensions_of = |claim: &Claim| {
        let mut found: Vec<Vec<(String, String)>> = claim.events.iter().map(|e| e.event.extensions.clone()).collect();
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
    let hung = store.writer.take_at_once().await;
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

#[tokio::test]
async fn a_settlement_waiting_behind_a_claim_is_written_in_the_claims_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    store.enqueue(&[NewEvent::new("first", "/s")], now).await.unwrap();
    let first = store.claim(Utc::now(), 10, &[]).await.unwrap();
    let [published] = &first.events[..] else { panic!("one event claimed: {first:?}") };
    let second_id = store.enqueue(&[NewEvent::new("second", "/s")], now).await.unwrap().remove(0);
    let turns_before = store.writer.used();

    // Another writer has the turn: a claim queues first, the first event's settlement second.
    let holding = store.writer.take_at_once().await;
    let claiming = tokio::spawn({
        let store = store.clone();
        async move { store.claim(Utc::now(), 10, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let settling = tokio::spawn({
        let (store, token, id) = (store.clone(), first.token, published.event.id.clone());
        async move {
            let settlements = [(id, crate::Settlement::Published)];
            store.write(&FencedWrites::settling(crate::Fence::Lease(token), Utc::now(), &settlements)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    holding.unused();

    let second = claiming.await.unwrap().unwrap();
    assert_eq!(second.events.iter().map(|e| e.event.id.clone()).collect::<Vec<_>>(), [second_id]);
    assert_eq!(settling.await.unwrap().unwrap(), 1, "the settlement updated its row");
    assert_eq!(store.writer.used() - turns_before, 1, "the claim and the settlement took one turn");
    let states = store.find(std::slice::from_ref(&published.event.id)).await.unwrap();
    assert_eq!(states[0].status, crate::Status::Published);
}
