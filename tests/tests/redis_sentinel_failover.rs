//! Redis Sentinel: publishers find the master through the Sentinels, and follow a failover
//! (the master killed under load) with every event published and none failed; with
//! `wait_replicas = 1` nothing acknowledged is lost with the old master (the publishers are
//! held down until the new master has a replica: the old master, started again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::Relay;
use broadcaster_tests::{SENTINEL_MASTER, SentinelGroup, components};

const PUBLISHERS: [&str; 2] = ["native", "component"];

fn config(group: &SentinelGroup, dir: &std::path::Path) -> Config {
    let addresses = group.sentinel_addresses().iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let sentinel = format!(
        "sentinel = {{ master = \"{SENTINEL_MASTER}\", addresses = [{addresses}] }}, wait_replicas = 1, \
         connect_timeout = 1, socket_timeout = 2"
    );
    let text = format!(
        r#"
        [outbox]
        url = "sqlite://{db}"
        [relay]
        retry_base = "100ms"
        retry_cap = "1s"
        retry_jitter = 0.0
        [publishers.native]
        backend = "redis-stream"
        options = {{ {sentinel}, stream_name = "native" }}
        [publishers.component]
        component = "{component}"
        options = {{ stream_name = "component" }}
        grants.redis = {{ {sentinel}, streams = ["component"] }}
        limits.call_timeout = "5s"
        limits.health_timeout = "4s"
        limits.host_call_timeout = "4s"
        "#,
        db = dir.join("outbox.db").display(),
        component = components::REDIS_STREAM,
    );
    Config::from_toml(&text, &dir.join("broadcaster.toml"), Vec::new()).unwrap()
}

/// How many times each event id appears in `stream` on `server`.
fn ids_in_stream(server: &broadcaster_tests::RedisServer, stream: &str) -> HashMap<String, usize> {
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(&mut server.client()).unwrap();
    let mut ids = HashMap::new();
    for entry in entries.ids {
        let id: String = entry.get("event_id").expect("an event_id field");
        *ids.entry(id).or_default() += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_under_load_loses_nothing_and_fails_nothing() {
    let mut group = SentinelGroup::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&group, dir.path());
    let store = OutboxStore::connect(&config.outbox.url).await.unwrap();
    assert!(store.migrate().await.unwrap());
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let relay = Relay::new(store.clone(), registry, &config.relay);

    let events: Vec<NewEvent> = PUBLISHERS
        .iter()
        .flat_map(|name| {
            (0..150).map(move |i| {
                NewEvent::new("order.created", "/shop").publisher(*name).data(serde_json::json!({"n": i}))
            })
        })
        .collect();
    let ids = store.enqueue(&events, chrono::Utc::now()).await.unwrap();

    let (mut published, mut retried, mut released, mut killed_at, mut restarted) = (0, 0, 0, None, false);
    let deadline = Instant::now() + Duration::from_secs(90);
    while published < ids.len() as u64 {
        relay.refresh_health().await;
        let report = relay.run_batch(20).await.unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        (published, retried, released) =
            (published + report.published, retried + report.retried, released + report.released);
        if killed_at.is_none() && published >= 60 {
            group.kill_master();
            killed_at = Some(Instant::now());
        }
        // With wait_replicas = 1 the new master needs a replica: the old one, back empty.
        if killed_at.is_some() && !restarted && group.failed_over() {
            group.restart_old_master();
            restarted = true;
        }
        assert!(Instant::now() < deadline, "published {published} of {} in 90 s", ids.len());
        if report.claimed == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let took = killed_at.unwrap().elapsed();

    for row in store.find(&ids).await.unwrap() {
        assert_eq!(row.status, Status::Published, "{}", row.last_error);
    }
    let mut duplicates = 0;
    for name in PUBLISHERS {
        let found = ids_in_stream(group.replica(), name);
        duplicates += found.values().map(|n| n - 1).sum::<usize>();
        assert_eq!(found.len(), 150, "{name}: every event once at least, on the promoted replica");
    }
    eprintln!(
        "sentinel failover: 300 events, master killed after 60; all published {took:?} after the kill; \
         {released} releases, {retried} retries spent, {duplicates} duplicates"
    );
}

#[tokio::test]
async fn with_wait_replicas_and_no_replica_writes_are_not_acknowledged_and_health_is_down() {
    let redis = broadcaster_tests::RedisServer::start();
    let connection = format!("host = \"127.0.0.1\", port = {}, wait_replicas = 1, socket_timeout = 1", redis.port());
    let text = format!(
        r#"
        [publishers.native]
        backend = "redis-stream"
        options = {{ {connection}, stream_name = "native" }}
        [publishers.component]
        component = "{component}"
        options = {{ stream_name = "component" }}
        grants.redis = {{ {connection}, streams = ["component"] }}
        limits.call_timeout = "5s"
        limits.health_timeout = "4s"
        limits.host_call_timeout = "4s"
        "#,
        component = components::REDIS_STREAM,
    );
    let config = Config::from_toml(&text, "wait.toml".as_ref(), Vec::new()).unwrap();
    let registry = PublisherRegistry::build(&config, None).await.unwrap();
    for name in PUBLISHERS {
        let publisher = registry.get(name).unwrap();
        let health = publisher.health().await;
        assert!(!health.healthy, "{name}: down without a replica");
        let event = broadcaster::event::OutboxEvent::new("order.created", "/shop");
        let err = publisher.publish(&event).await.unwrap_err();
        assert!(err.is_transient(), "{name}: {err}");
    }
    let health = registry.get("native").unwrap().health().await;
    assert!(health.detail.contains("0 of 1 replicas online (wait_replicas)"), "{}", health.detail);
}

#[tokio::test]
async fn sentinels_that_require_a_password_are_asked_with_it() {
    let group = SentinelGroup::start_with_sentinel_password(Some("sentinel-secret"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sentinel-password"), "sentinel-secret\n").unwrap();
    let addresses = group.sentinel_addresses().iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let with = |password: &str| {
        format!(
            "sentinel = {{ master = \"{SENTINEL_MASTER}\", addresses = [{addresses}], password = {password} }}, \
             connect_timeout = 1, socket_timeout = 1"
        )
    };
    let text = |connection: String| {
        format!(
            "[publishers.native]\nbackend = \"redis-stream\"\noptions = {{ {connection}, stream_name = \"native\" }}\n\
             [publishers.component]\ncomponent = \"{}\"\noptions = {{ stream_name = \"component\" }}\n\
             grants.redis = {{ {connection}, streams = [\"component\"] }}\nlimits.call_timeout = \"5s\"\n",
            components::REDIS_STREAM
        )
    };
    let good = Config::from_toml(
        &text(with("{ secret_file = \"sentinel-password\" }")),
        &dir.path().join("b.toml"),
        Vec::new(),
    );
    let registry = PublisherRegistry::build(&good.unwrap(), None).await.unwrap();
    for name in PUBLISHERS {
        let event = broadcaster::event::OutboxEvent::new("order.created", "/shop");
        registry.get(name).unwrap().publish(&event).await.unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    let bad = Config::from_toml(&text(with("\"wrong\"")), &dir.path().join("b.toml"), Vec::new());
    let registry = PublisherRegistry::build(&bad.unwrap(), None).await.unwrap();
    for name in PUBLISHERS {
        let event = broadcaster::event::OutboxEvent::new("order.created", "/shop");
        let err = registry.get(name).unwrap().publish(&event).await.unwrap_err();
        assert!(err.is_transient(), "{name}: a wrong Sentinel password is an outage: {err}");
    }
}
