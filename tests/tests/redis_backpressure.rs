//! Redis out of memory is backpressure, not failure: a publisher whose writes are answered
//! `OOM` (`maxmemory` reached, `noeviction`) is held down like an outage, its events wait
//! with no retry spent, and they are all published once Redis has room. With
//! `max_memory_ratio`, the publisher is held down before Redis refuses anything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::Relay;
use broadcaster_tests::{RedisServer, components};
use redis::Commands;

const PUBLISHERS: [&str; 2] = ["native", "component"];

struct Fixture {
    redis: RedisServer,
    store: OutboxStore,
    relay: Relay,
    registry: Arc<PublisherRegistry>,
    _dir: tempfile::TempDir,
}

/// A native publisher and a component publisher (stock `redis-stream`), each writing to its
/// own stream, with `extra` added to both connections (like `, max_memory_ratio = 0.5`).
async fn fixture(extra: &str) -> Fixture {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        [outbox]
        url = "sqlite://{db}"
        [relay]
        retry_jitter = 0.0
        [publishers.native]
        backend = "redis-stream"
        options = {{ host = "127.0.0.1", port = {port}, stream_name = "native", connect_timeout = 2, socket_timeout = 2 {extra} }}
        [publishers.component]
        component = "{component}"
        options = {{ stream_name = "component" }}
        grants.redis = {{ host = "127.0.0.1", port = {port}, streams = ["component"], connect_timeout = 2, socket_timeout = 2 {extra} }}
        limits.call_timeout = "5s"
        limits.health_timeout = "4s"
        limits.host_call_timeout = "4s"
        "#,
        db = dir.path().join("outbox.db").display(),
        port = redis.port(),
        component = components::REDIS_STREAM,
    );
    let config = Config::from_toml(&text, "backpressure.toml".as_ref(), Vec::new()).unwrap();
    let store = OutboxStore::connect(&config.outbox.url).await.unwrap();
    assert!(store.migrate().await.unwrap());
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let relay = Relay::new(store.clone(), registry.clone(), &config.relay);
    Fixture { redis, store, relay, registry, _dir: dir }
}

impl Fixture {
    fn config_set(&self, key: &str, value: &str) {
        redis::cmd("CONFIG").arg("SET").arg(key).arg(value).exec(&mut self.redis.client()).unwrap();
    }

    fn used_memory(&self) -> u64 {
        let info: String = redis::cmd("INFO").arg("memory").query(&mut self.redis.client()).unwrap();
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
    }

    /// Five events for each publisher, one retry allowed: a spent retry would fail them.
    async fn enqueue(&self) -> Vec<String> {
        let events: Vec<NewEvent> = PUBLISHERS
            .iter()
            .flat_map(|name| {
                (0..5).map(move |_| NewEvent::new("order.created", "/shop").publisher(*name).max_retries(1))
            })
            .collect();
        self.store.enqueue(&events, chrono::Utc::now()).await.unwrap()
    }

    async fn assert_waiting_with_no_retry_spent(&self, ids: &[String]) {
        for row in self.store.find(ids).await.unwrap() {
            assert_eq!((row.status, row.retry_count), (Status::Pending, 0), "{}", row.last_error);
        }
    }

    async fn health_detail(&self, name: &str) -> (bool, String) {
        let health = self.registry.get(name).unwrap().health().await;
        (health.healthy, health.detail)
    }

    /// Runs the relay until every publisher is healthy and nothing is due, at most 20 s.
    async fn drain(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut published = 0;
        loop {
            self.relay.refresh_health().await;
            let report = self.relay.run_batch(100).await.unwrap();
            published += report.published;
            assert_eq!((report.failed, report.retried), (0, 0), "{report:?}");
            if report.claimed == 0 && PUBLISHERS.iter().all(|name| !self.relay.health().is_down(name)) {
                return published;
            }
            assert!(Instant::now() < deadline, "not drained: {report:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn writes_answered_oom_hold_the_publisher_down_and_its_events_wait_then_all_publish() {
    let f = fixture("").await;
    f.relay.refresh_health().await;
    f.config_set("maxmemory-policy", "noeviction");
    f.config_set("maxmemory", "1");
    let ids = f.enqueue().await;

    let report = f.relay.run_batch(100).await.unwrap();
    assert_eq!(report.claimed, 10, "{report:?}");
    assert_eq!((report.published, report.retried, report.failed, report.released), (0, 0, 0, 10), "{report:?}");
    f.assert_waiting_with_no_retry_spent(&ids).await;
    for name in PUBLISHERS {
        assert!(f.relay.health().is_down(name), "{name} is held down");
    }
    let (healthy, detail) = f.health_detail("native").await;
    assert!(!healthy && detail.contains("out of memory (OOM)"), "{detail}");

    // Still full a while later: INFO memory keeps it down, nothing is claimed or spent.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    f.relay.refresh_health().await;
    let (healthy, detail) = f.health_detail("native").await;
    assert!(!healthy && detail.contains("used of maxmemory"), "{detail}");
    assert_eq!(f.relay.run_batch(100).await.unwrap().claimed, 0);
    f.assert_waiting_with_no_retry_spent(&ids).await;

    f.config_set("maxmemory", "0");
    assert_eq!(f.drain().await, 10);
    for name in PUBLISHERS {
        assert_eq!(f.redis.client().xlen::<_, usize>(name).unwrap(), 5, "{name}");
    }
}

#[tokio::test]
async fn over_max_memory_ratio_the_publisher_is_held_down_before_redis_refuses_writes() {
    let f = fixture(", max_memory_ratio = 0.5").await;
    f.config_set("maxmemory-policy", "noeviction");
    // Redis has room (it uses about two thirds of maxmemory), but more than half.
    f.config_set("maxmemory", &(f.used_memory() * 3 / 2).to_string());
    f.relay.refresh_health().await;
    for name in PUBLISHERS {
        assert!(f.relay.health().is_down(name), "{name} is held down over the ratio");
    }
    let (_, detail) = f.health_detail("native").await;
    assert!(detail.contains("max_memory_ratio 0.5"), "{detail}");
    let ids = f.enqueue().await;
    assert_eq!(f.relay.run_batch(100).await.unwrap().claimed, 0, "nothing claimed for a held-down publisher");
    f.assert_waiting_with_no_retry_spent(&ids).await;

    f.config_set("maxmemory", "1gb");
    assert_eq!(f.drain().await, 10);
}
