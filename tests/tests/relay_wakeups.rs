//! A relay waiting for work wakes when events are written, by anyone: another process's
//! insert (the PostgreSQL notify trigger; the kernel's notice of a write to a SQLite file), or
//! an enqueue in its own process; and when the wake-up cannot come (no trigger), polling still
//! finds the events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};
use broadcaster_tests::{OutboxKind, RedisServer, TestOutbox};

/// Inserts one row the way another program would: plain SQL on a connection of its own.
async fn insert_from_elsewhere(outbox: &TestOutbox, id: uuid::Uuid) {
    let insert = "INSERT INTO outbox_events (id, spec_version, event_type, source, subject, data_content_type, \
                  data_schema, data, status, created_at, updated_at, scheduled_at, published_at, retry_count, \
                  max_retries, last_error, publisher_backend, publisher_config) VALUES ";
    match outbox.kind() {
        OutboxKind::Postgres => {
            let pool = sqlx::PgPool::connect(outbox.url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{insert} ($1, '1.0', 'elsewhere', '/other', '', 'application/json', '', NULL, 'pending', now(), \
                 now(), now(), NULL, 0, 3, '', '', '{{}}')"
            )))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
        OutboxKind::Sqlite => {
            let pool = sqlx::SqlitePool::connect(outbox.url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{insert} ($1, '1.0', 'elsewhere', '/other', '', 'application/json', '', NULL, 'pending', \
                 datetime('now'), datetime('now'), datetime('now'), NULL, 0, 3, '', '', '{{}}')"
            )))
            .bind(id.simple().to_string())
            .execute(&pool)
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn a_waiting_store_is_woken_by_an_insert_from_another_connection() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let outbox = TestOutbox::create(kind).await;
        let store = OutboxStore::connect(outbox.url()).await.unwrap();
        store.migrate().await.unwrap();
        // The first wait sets up the listener (or the file watch).
        assert!(!store.wait_for_writes(Duration::from_millis(100)).await, "{kind:?}: nothing written yet");
        let waiting = Instant::now();
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.wait_for_writes(Duration::from_secs(20)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        insert_from_elsewhere(&outbox, uuid::Uuid::new_v4()).await;
        assert!(waiter.await.unwrap(), "{kind:?}: woken by the insert");
        assert!(waiting.elapsed() < Duration::from_secs(10), "{kind:?}: woken, not timed out");
    }
}

#[tokio::test]
async fn an_enqueue_in_the_same_process_wakes_its_relay() {
    let outbox = TestOutbox::create(OutboxKind::Postgres).await;
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    store.migrate().await.unwrap();
    // No trigger: only the in-process wake-up can answer.
    let pool = sqlx::PgPool::connect(outbox.url()).await.unwrap();
    sqlx::query("DROP TRIGGER broadcaster_outbox_notify ON outbox_events").execute(&pool).await.unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait_for_writes(Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.enqueue(&[NewEvent::new("here", "/same")], now_micros()).await.unwrap();
    assert!(waiter.await.unwrap());
}

/// Runs a relay (interval `interval`) until `id` is published or `within` passes; returns
/// how long publishing took from the insert.
async fn published_after_insert(
    outbox: &TestOutbox,
    redis: &RedisServer,
    interval: &str,
    within: Duration,
) -> Duration {
    let config = Config::from_toml(
        &format!(
            "[outbox]\nurl = \"{}\"\n[relay]\ninterval = \"{interval}\"\n{}",
            outbox.url(),
            redis.native_publisher_toml("default")
        ),
        "wake.toml".as_ref(),
        Vec::new(),
    )
    .unwrap();
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let relay = Arc::new(Relay::new(store.clone(), registry, &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 100, interval: config.relay.interval.0, max_iterations: 0 };
    let running = tokio::spawn(relay.run(options, stopped));
    // Let the relay go quiet: its polls back off (50, 100, 200 … ms apart: at 2 s the next
    // one is more than a second away).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let id = uuid::Uuid::new_v4();
    let inserted = Instant::now();
    insert_from_elsewhere(outbox, id).await;
    let mut took = within;
    while inserted.elapsed() < within {
        let rows = store.find(&[id.to_string()]).await.unwrap();
        if rows.first().is_some_and(|r| r.status == Status::Published) {
            took = inserted.elapsed();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_relay_publishes_an_insert_from_elsewhere_at_once() {
    let redis = RedisServer::start();
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let outbox = TestOutbox::create(kind).await;
        OutboxStore::connect(outbox.url()).await.unwrap().migrate().await.unwrap();
        // The next poll is over a second away: only a wake-up explains publishing sooner.
        let took = published_after_insert(&outbox, &redis, "30s", Duration::from_secs(10)).await;
        assert!(took < Duration::from_millis(800), "{kind:?}: published {took:?} after the insert");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_trigger_polling_still_finds_new_events() {
    let redis = RedisServer::start();
    let outbox = TestOutbox::create(OutboxKind::Postgres).await;
    OutboxStore::connect(outbox.url()).await.unwrap().migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(outbox.url()).await.unwrap();
    sqlx::query("DROP TRIGGER broadcaster_outbox_notify ON outbox_events").execute(&pool).await.unwrap();
    let took = published_after_insert(&outbox, &redis, "1s", Duration::from_secs(20)).await;
    assert!(took < Duration::from_secs(5), "published {took:?} after the insert, by polling");
}
