//! Whole relays running for real (system clock): several workers sharing a PostgreSQL
//! outbox, and a Redis outage longer than the retry schedule.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};
use broadcaster_tests::{RedisServer, TestDatabase, components};
use redis::Commands;

fn config(outbox: &str, redis: &RedisServer, relay: &str) -> Config {
    let text = format!(
        r#"
        [outbox]
        url = "{outbox}"
        [relay]
        {relay}
        [publishers.default]
        backend = "redis-stream"
        [publishers.default.options]
        host = "127.0.0.1"
        port = {port}
        max_len = 1000000
        connect_timeout = 0.5
        socket_timeout = 0.5
        [publishers.wasm]
        component = "{component}"
        [publishers.wasm.options]
        stream_name = "wasm"
        max_len = 1000000
        [publishers.wasm.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["wasm"], connect_timeout = 0.5, socket_timeout = 0.5 }}
        "#,
        port = redis.port(),
        component = components::REDIS_STREAM,
    );
    Config::from_toml(&text, "workers.toml".as_ref(), Vec::new()).unwrap()
}

async fn worker(config: &Config) -> Arc<Relay> {
    // Each worker has its own pool and publishers, as separate processes would.
    let store = OutboxStore::connect(&config.outbox.url).await.unwrap();
    let registry = Arc::new(PublisherRegistry::build(config, None).await.unwrap());
    Arc::new(Relay::new(store, registry, &config.relay))
}

fn event_ids(redis: &RedisServer, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis.client().xrange_all(stream).unwrap();
    reply.ids.iter().map(|entry| entry.get::<String>("event_id").unwrap()).collect()
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(store: &OutboxStore, status: Status) -> u64 {
    let report = store.status(now_micros(), Duration::from_secs(300)).await.unwrap();
    report.counts.iter().filter(|((_, s), _)| *s == status).map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_on_one_postgres_table_publish_10000_events_exactly_once() {
    let redis = RedisServer::start();
    let db = TestDatabase::create().await;
    let config = config(db.url(), &redis, "interval = \"50ms\"");
    let store = OutboxStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let events: Vec<NewEvent> = (0..10_000)
        .map(|i| NewEvent::new("load.test", "/tests").data(serde_json::json!({"n": i, "pad": "x".repeat(200)})))
        .collect();
    let ids = store.enqueue(&events, now_micros()).await.unwrap();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 100, interval: Duration::from_millis(50), max_iterations: 0 };
    let mut handles = Vec::new();
    for _ in 0..3 {
        let relay = worker(&config).await;
        let stopped = stopped.clone();
        handles.push(tokio::spawn(async move { relay.run(options, stopped).await }));
    }
    wait_until("all 10,000 events published", Duration::from_secs(120), async || {
        count(&store, Status::Published).await == 10_000
    })
    .await;
    stop.send(true).unwrap();
    let mut claimed_by = Vec::new();
    for handle in handles {
        let report = handle.await.unwrap();
        assert_eq!((report.totals.fenced, report.totals.failed, report.totals.retried), (0, 0, 0));
        claimed_by.push(report.totals.published);
    }
    assert_eq!(claimed_by.iter().sum::<u64>(), 10_000, "{claimed_by:?}");
    assert!(claimed_by.iter().all(|n| *n > 0), "every worker took a share: {claimed_by:?}");

    let published = event_ids(&redis, "events");
    assert_eq!(published.len(), 10_000, "one entry per event: no event published twice");
    let distinct: HashSet<&String> = published.iter().collect();
    assert_eq!(distinct.len(), 10_000);
    assert_eq!(distinct, ids.iter().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_longer_than_the_retry_schedule_fails_nothing_and_keeps_creation_order() {
    for outbox in ["sqlite", "postgres"] {
        let mut redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let pg = if outbox == "postgres" { Some(TestDatabase::create().await) } else { None };
        let url = match &pg {
            Some(db) => db.url().to_string(),
            None => format!("sqlite://{}", dir.path().join("outbox.db").display()),
        };
        // The whole retry schedule (3 attempts, 100ms base) is well under a second.
        let config = config(
            &url,
            &redis,
            "interval = \"50ms\"\nhealth_interval = \"200ms\"\nretry_base = \"100ms\"\nretry_cap = \"400ms\"",
        );
        let store = OutboxStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let enqueue = async |range: std::ops::Range<usize>| {
            let events: Vec<NewEvent> = range
                .map(|i| NewEvent::new(format!("e{i}"), "/s").publisher(if i % 2 == 0 { "default" } else { "wasm" }))
                .collect();
            store.enqueue(&events, now_micros()).await.unwrap()
        };
        let before = enqueue(0..20).await;

        let relay = worker(&config).await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let options = RunOptions { batch_size: 10, interval: Duration::from_millis(50), max_iterations: 0 };
        let running = tokio::spawn(async move { relay.run(options, stopped).await });
        wait_until("the first events", Duration::from_secs(20), async || count(&store, Status::Published).await == 20)
            .await;

        redis.stop();
        let mut during = Vec::new();
        for round in 0..6 {
            during.extend(enqueue(20 + round * 10..30 + round * 10).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(count(&store, Status::Failed).await, 0, "{outbox}: an outage fails nothing");
        assert_eq!(count(&store, Status::Published).await, 20, "{outbox}");

        redis.restart();
        wait_until("recovery", Duration::from_secs(30), async || count(&store, Status::Published).await == 80).await;
        stop.send(true).unwrap();
        let report = running.await.unwrap();
        assert_eq!(report.totals.failed, 0, "{outbox}");
        for row in store.find(&during).await.unwrap() {
            assert_eq!(row.retry_count, 0, "{outbox}: no retry was spent on the outage");
        }
        // Redis restarted empty: the streams hold exactly the outage's events, each
        // publisher's in creation order.
        let expect = |parity: usize| -> Vec<String> {
            during.iter().enumerate().filter(|(i, _)| i % 2 == parity).map(|(_, id)| id.clone()).collect()
        };
        assert_eq!(event_ids(&redis, "events"), expect(0), "{outbox}: native publisher order");
        assert_eq!(event_ids(&redis, "wasm"), expect(1), "{outbox}: component publisher order");
        assert_eq!(before.len(), 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_native_publishers_batches_in_flight_at_once_still_reach_the_stream_in_due_order() {
    for outbox in ["sqlite", "postgres"] {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let pg = if outbox == "postgres" { Some(TestDatabase::create().await) } else { None };
        let url = match &pg {
            Some(db) => db.url().to_string(),
            None => format!("sqlite://{}", dir.path().join("outbox.db").display()),
        };
        let config = config(&url, &redis, "interval = \"50ms\"");
        let store = OutboxStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        // Due one microsecond apart, enqueued newest first: due order is not insertion order.
        let base = now_micros() - chrono::Duration::seconds(10);
        let events: Vec<NewEvent> = (0..3_000)
            .rev()
            .map(|i| NewEvent::new(format!("e{i}"), "/s").scheduled_at(base + chrono::Duration::microseconds(i)))
            .collect();
        let mut ids = store.enqueue(&events, now_micros()).await.unwrap();
        ids.reverse();

        let relay = worker(&config).await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let options = RunOptions { batch_size: 50, interval: Duration::from_millis(50), max_iterations: 0 };
        let running = tokio::spawn(async move { relay.run(options, stopped).await });
        wait_until("every event published", Duration::from_secs(60), async || {
            count(&store, Status::Published).await == 3_000
        })
        .await;
        stop.send(true).unwrap();
        let report = running.await.unwrap();
        assert_eq!(report.totals.published, 3_000, "{outbox}: {report:?}");
        assert_eq!(event_ids(&redis, "events"), ids, "{outbox}: the stream holds the events in due order");
    }
}
