//! `broadcaster run` as a process: killed with SIGKILL mid-batch, another worker publishes
//! what it had claimed once its lease expires (at once on PostgreSQL, where a fast
//! publisher's batches are held in transactions, native or component); SIGTERM stops a worker
//! cleanly.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster_tests::{RedisServer, TestDatabase, components};
use redis::Commands;

fn spawn_worker(config: &std::path::Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_broadcaster"))
        .args(["run", "--config", config.to_str().unwrap(), "--interval", "100ms"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting broadcaster run")
}

async fn count(store: &OutboxStore, status: Status) -> u64 {
    let report = store.status(now_micros(), Duration::from_secs(2)).await.unwrap();
    report.counts.iter().filter(|((_, s), _)| *s == status).map(|(_, n)| n).sum()
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_sigterm_stops_cleanly() {
    let redis = RedisServer::start();
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broadcaster.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [outbox]
            url = "{url}"
            [relay]
            lease_timeout = "2s"
            [publishers.default]
            component = "{slow}"
            [publishers.default.options]
            stream_name = "events"
            delay_ms = 20
            [publishers.default.grants]
            redis = {{ host = "127.0.0.1", port = {port}, streams = ["events"] }}
            [publishers.default.limits]
            call_timeout = "5s"
            "#,
            url = db.url(),
            slow = components::SLOW_STREAM,
            port = redis.port(),
        ),
    )
    .unwrap();
    let store = OutboxStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let events: Vec<NewEvent> = (0..120).map(|i| NewEvent::new(format!("e{i}"), "/s")).collect();
    let ids = store.enqueue(&events, now_micros()).await.unwrap();

    // Worker A claims a batch of 100 (2 s of work) and is killed after a few entries.
    let mut a = spawn_worker(&config, &["--batch-size", "100"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.client().xlen::<_, usize>("events").unwrap() < 5 {
        assert!(Instant::now() < deadline, "worker A published nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&a, "-KILL");
    a.wait().unwrap();
    // Let Redis finish any command A had already sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written_by_a = redis.client().xlen::<_, usize>("events").unwrap();
    assert_eq!(count(&store, Status::Processing).await, 100, "A's claim is left in processing");
    assert_eq!(count(&store, Status::Published).await, 0);

    // Worker B takes the claim back after the 2 s lease and publishes everything.
    let mut b = spawn_worker(&config, &["--batch-size", "50"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&store, Status::Published).await < 120 {
        assert!(Instant::now() < deadline, "worker B did not publish everything");
        assert!(b.try_wait().unwrap().is_none(), "worker B exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&b, "-TERM");
    let status = b.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut b.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopping: no new events"), "{stderr}");
    assert!(stderr.contains("120 published"), "{stderr}");
    assert_eq!(count(&store, Status::Processing).await, 0);

    // Nothing lost: every event is in the stream. The few A wrote before dying are there
    // twice (at least once), and only those.
    let reply: redis::streams::StreamRangeReply = redis.client().xrange_all("events").unwrap();
    let published: Vec<String> = reply.ids.iter().map(|e| e.get::<String>("event_id").unwrap()).collect();
    let distinct: HashSet<&String> = published.iter().collect();
    assert_eq!(distinct, ids.iter().collect::<HashSet<_>>());
    assert_eq!(published.len(), 120 + written_by_a, "duplicates are exactly what A wrote before it died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_a_slow_backend_stops_within_its_deadline_and_releases_its_events() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let config = dir.path().join("broadcaster.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [outbox]
            url = "{url}"
            [publishers.slow]
            component = "{attacker}"
            [publishers.slow.options]
            attack = "slow"
            burn_ms = 1500
            stream_name = "slow:events"
            [publishers.slow.grants]
            redis = {{ host = "127.0.0.1", port = {port}, streams = ["slow:*"] }}
            [publishers.slow.limits]
            call_timeout = "2s"
            "#,
            attacker = components::ATTACKER,
            port = redis.port(),
        ),
    )
    .unwrap();
    let store = OutboxStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let events: Vec<NewEvent> = (0..50).map(|i| NewEvent::new(format!("e{i}"), "/s").publisher("slow")).collect();
    store.enqueue(&events, now_micros()).await.unwrap();

    let mut worker = spawn_worker(&config, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&store, Status::Processing).await == 0 {
        assert!(Instant::now() < deadline, "the worker claimed nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The backend is inside a 1.5 s call now, with most of its batch to go (75 s of work).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    signal(&worker, "-TERM");
    let status = worker.wait().unwrap();
    let took = stopping.elapsed();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(took < Duration::from_secs(2 + 5), "stopping took {took:?}, more than call_timeout + 5 s");
    assert_eq!(count(&store, Status::Processing).await, 0, "nothing is left processing");
    let published = count(&store, Status::Published).await;
    let pending = count(&store, Status::Pending).await;
    assert_eq!(published + pending, 50, "every event is published or back to waiting, none spent a retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_worker_killed_mid_batch_on_postgres_frees_its_held_rows_at_once_and_loses_nothing() {
    let publisher = r#"
        [publishers.default]
        backend = "redis-stream"
        [publishers.default.options]
        host = "127.0.0.1"
        port = {port}
        stream_name = "events"
        max_len = 1000000
    "#;
    killed_mid_batch_on_postgres(publisher, broadcaster::relay::PIPELINE_DEPTH).await;
}

/// A component that answers fast has its batches held in transactions too, one claimed ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_worker_killed_mid_batch_on_postgres_frees_its_held_rows_at_once_and_loses_nothing() {
    let publisher = format!(
        r#"
        [publishers.default]
        component = "{component}"
        [publishers.default.options]
        stream_name = "events"
        max_len = 1000000
        [publishers.default.grants]
        redis = {{ host = "127.0.0.1", port = {{port}}, streams = ["events"] }}
    "#,
        component = components::REDIS_STREAM,
    );
    killed_mid_batch_on_postgres(&publisher, broadcaster::relay::COMPONENT_PIPELINE_DEPTH).await;
}

/// Worker A (its publisher `default` given by `publisher`, `{port}` standing for the Redis
/// port) is killed with SIGKILL while publishing 20,000 events; B publishes the rest at once
/// (A's rows were held, not leased). Nothing is lost; the duplicates are at most the batches A
/// had in flight (`depth`).
async fn killed_mid_batch_on_postgres(publisher: &str, depth: usize) {
    let redis = RedisServer::start();
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broadcaster.toml");
    // A lease of a minute: were A's rows leased, B could not have them within the test's
    // deadline. Held in A's transaction, they are free the moment A's connection drops.
    let publisher = publisher.replace("{port}", &redis.port().to_string());
    std::fs::write(
        &config,
        format!(
            r#"
            [outbox]
            url = "{url}"
            [relay]
            lease_timeout = "60s"
            {publisher}
            "#,
            url = db.url(),
        ),
    )
    .unwrap();
    let store = OutboxStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let total = 20_000;
    let events: Vec<NewEvent> = (0..total).map(|i| NewEvent::new(format!("e{i}"), "/s")).collect();
    let ids = store.enqueue(&events, now_micros()).await.unwrap();

    let mut a = spawn_worker(&config, &["--batch-size", "100"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.client().xlen::<_, usize>("events").unwrap() < 2_000 {
        assert!(Instant::now() < deadline, "worker A published too little");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&a, "-KILL");
    a.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written_by_a = redis.client().xlen::<_, usize>("events").unwrap();
    assert!(written_by_a < total, "A was killed before it finished");
    assert_eq!(count(&store, Status::Processing).await, 0, "held claims leave no row processing");
    let published_by_a = count(&store, Status::Published).await;

    let mut b = spawn_worker(&config, &["--batch-size", "100"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&store, Status::Published).await < total as u64 {
        assert!(Instant::now() < deadline, "worker B did not publish everything well within the lease");
        assert!(b.try_wait().unwrap().is_none(), "worker B exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&b, "-TERM");
    assert_eq!(b.wait().unwrap().code(), Some(0), "SIGTERM is a clean stop");

    // Nothing lost; the only duplicates are what A wrote to Redis without committing: at most
    // the batches it had in flight.
    let reply: redis::streams::StreamRangeReply = redis.client().xrange_all("events").unwrap();
    let published: Vec<String> = reply.ids.iter().map(|e| e.get::<String>("event_id").unwrap()).collect();
    let distinct: HashSet<&String> = published.iter().collect();
    assert_eq!(distinct, ids.iter().collect::<HashSet<_>>());
    let duplicates = published.len() - total;
    assert_eq!(duplicates as u64, written_by_a as u64 - published_by_a, "duplicates are A's uncommitted batch");
    let in_flight = 100 * depth;
    assert!(
        duplicates <= in_flight,
        "{duplicates} duplicates: more than the {in_flight} events A could have in flight"
    );
}
