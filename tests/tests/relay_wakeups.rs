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

/// The columns of a row inserted as another program would.
const INSERT: &str = "INSERT INTO outbox_events (id, spec_version, event_type, source, subject, data_content_type, \
     data_schema, data, status, created_at, updated_at, scheduled_at, published_at, retry_count, max_retries, \
     last_error, publisher_backend, publisher_config) VALUES ";

/// Inserts one row on PostgreSQL with plain SQL.
async fn insert_row<'e>(executor: impl sqlx::PgExecutor<'e>, id: uuid::Uuid) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{INSERT} ($1, '1.0', 'elsewhere', '/other', '', 'application/json', '', NULL, 'pending', now(), \
         now(), now(), NULL, 0, 3, '', '', '{{}}')"
    )))
    .bind(id)
    .execute(executor)
    .await
    .unwrap();
}

/// Inserts one row the way another program would: plain SQL on a connection of its own.
async fn insert_from_elsewhere(outbox: &TestOutbox, id: uuid::Uuid) {
    match outbox.kind() {
        OutboxKind::Postgres => insert_row(&sqlx::PgPool::connect(outbox.url()).await.unwrap(), id).await,
        OutboxKind::Sqlite => {
            let pool = sqlx::SqlitePool::connect(outbox.url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{INSERT} ($1, '1.0', 'elsewhere', '/other', '', 'application/json', '', NULL, 'pending', \
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
        // The first waits set up the listener (or the file watch).
        settle(&store).await;
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
    settle(&store).await;
    let waiting = Instant::now();
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait_for_writes(Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.enqueue(&[NewEvent::new("here", "/same")], now_micros()).await.unwrap();
    assert!(waiter.await.unwrap());
    assert!(waiting.elapsed() < Duration::from_secs(10), "woken by the enqueue, not timed out");
}

/// Waits until a wait with nothing written times out: on PostgreSQL a relay polls a few times
/// before it takes the wake-up lock and waits for a notification.
async fn settle(store: &OutboxStore) {
    for _ in 0..20 {
        if !store.wait_for_writes(Duration::from_millis(100)).await {
            return;
        }
    }
    panic!("with nothing written, a wait kept returning at once");
}

/// A relay running on its own task.
struct RunningRelay {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<broadcaster::relay::RelayReport>,
}

impl RunningRelay {
    /// A relay over `outbox` with one native publisher `default`, polling `interval` apart.
    async fn start(outbox: &TestOutbox, redis: &RedisServer, interval: &str) -> Self {
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
        let relay = Arc::new(Relay::new(store, registry, &config.relay));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let options = RunOptions { batch_size: 100, interval: config.relay.interval.0, max_iterations: 0 };
        Self { stop, task: tokio::spawn(relay.run(options, stopped)) }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// How many rows are published.
async fn published_count(store: &OutboxStore) -> u64 {
    let report = store.status(now_micros(), Duration::from_secs(60)).await.unwrap();
    report.counts.iter().filter(|((_, status), _)| *status == Status::Published).map(|(_, n)| n).sum()
}

/// How long after now `id` is published, polling its row; `within` when it is not by then.
async fn published_within(store: &OutboxStore, id: uuid::Uuid, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        let rows = store.find(&[id.to_string()]).await.unwrap();
        if rows.first().is_some_and(|r| r.status == Status::Published) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    within
}

/// Under a stream of inserts a relay on PostgreSQL gives the wake-up lock up and polls, so
/// producers commit without `NOTIFY` (which serializes their commits); once the stream stops
/// it takes the lock again, and a lone insert wakes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_relay_spares_producers_the_notify_and_still_wakes_for_a_lone_insert_after() {
    let redis = RedisServer::start();
    let outbox = TestOutbox::create(OutboxKind::Postgres).await;
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    store.migrate().await.unwrap();
    let notified = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut listener = sqlx::postgres::PgListener::connect(outbox.url()).await.unwrap();
    listener.listen("broadcaster_outbox").await.unwrap();
    let counting = tokio::spawn({
        let notified = notified.clone();
        async move {
            while listener.recv().await.is_ok() {
                notified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // Polls 30 s apart: anything published sooner was found by a wake-up or a poll under load.
    let relay = RunningRelay::start(&outbox, &redis, "30s").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lone = uuid::Uuid::new_v4();
    insert_from_elsewhere(&outbox, lone).await;
    let took = published_within(&store, lone, Duration::from_secs(10)).await;
    assert!(took < Duration::from_millis(800), "a lone insert to a waiting relay: published after {took:?}");
    assert!(notified.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the waiting relay was notified");

    // Sixteen producers, 125 one-row transactions each, as fast as they commit: well over the
    // 1,500 commits a second at which a relay gives the lock up, in bursts.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(outbox.url()).await.unwrap();
    let mut producers = tokio::task::JoinSet::new();
    let before = notified.load(std::sync::atomic::Ordering::Relaxed);
    let producing = Instant::now();
    for _ in 0..16 {
        let pool = pool.clone();
        producers.spawn(async move {
            for _ in 0..125 {
                let mut tx = pool.begin().await.unwrap();
                insert_row(&mut *tx, uuid::Uuid::new_v4()).await;
                tx.commit().await.unwrap();
            }
        });
    }
    producers.join_all().await;
    let rate = 2_000.0 / producing.elapsed().as_secs_f64();
    let during = notified.load(std::sync::atomic::Ordering::Relaxed) - before;
    let deadline = Instant::now() + Duration::from_secs(30);
    while published_count(&store).await < 2_001 {
        assert!(Instant::now() < deadline, "the load was not published within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        during < 1_000,
        "{during} of 2,000 commits under load ({rate:.0}/s) sent NOTIFY: the relay kept the wake-up lock"
    );

    // The stream has stopped: the relay waits for notifications again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = uuid::Uuid::new_v4();
    insert_from_elsewhere(&outbox, after).await;
    let took = published_within(&store, after, Duration::from_secs(10)).await;
    assert!(took < Duration::from_millis(800), "a lone insert after the load: published after {took:?}");
    relay.stop().await;
    counting.abort();
    let entries: redis::streams::StreamRangeReply = redis::Commands::xrange_all(&mut redis.client(), "events").unwrap();
    assert_eq!(entries.ids.len(), 2_002, "every event published once");
    eprintln!("notifications during 2,000 commits under load ({rate:.0}/s): {during}");
}

/// Two relays wait on one PostgreSQL table: one holds the wake-up lock, the other relies on
/// it; a lone insert is published at once, and again after either relay stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_waiting_relays_are_woken_and_either_one_stopping_leaves_the_other_woken() {
    let redis = RedisServer::start();
    let outbox = TestOutbox::create(OutboxKind::Postgres).await;
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    store.migrate().await.unwrap();
    for stopping in 0..2 {
        let mut relays =
            vec![RunningRelay::start(&outbox, &redis, "30s").await, RunningRelay::start(&outbox, &redis, "30s").await];
        tokio::time::sleep(Duration::from_millis(500)).await;
        let first = uuid::Uuid::new_v4();
        insert_from_elsewhere(&outbox, first).await;
        let took = published_within(&store, first, Duration::from_secs(10)).await;
        assert!(took < Duration::from_millis(800), "two waiting relays: published after {took:?}");

        relays.remove(stopping).stop().await;
        // The other one takes the lock over within its recheck (100 ms) if it relied on it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = uuid::Uuid::new_v4();
        insert_from_elsewhere(&outbox, second).await;
        let took = published_within(&store, second, Duration::from_secs(10)).await;
        assert!(took < Duration::from_millis(800), "relay {stopping} stopped: published after {took:?}");
        for relay in relays {
            relay.stop().await;
        }
    }
    assert_eq!(published_count(&store).await, 4);
}

/// Runs a relay (interval `interval`) until `id` is published or `within` passes; returns
/// how long publishing took from the insert.
async fn published_after_insert(
    outbox: &TestOutbox,
    redis: &RedisServer,
    interval: &str,
    within: Duration,
) -> Duration {
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    let relay = RunningRelay::start(outbox, redis, interval).await;
    // Let the relay go quiet: its polls back off (50, 100, 200 … ms apart: at 2 s the next
    // one is more than a second away).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let id = uuid::Uuid::new_v4();
    let inserted = Instant::now();
    insert_from_elsewhere(outbox, id).await;
    let published = published_within(&store, id, within).await < within;
    let took = if published { inserted.elapsed() } else { within };
    relay.stop().await;
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
