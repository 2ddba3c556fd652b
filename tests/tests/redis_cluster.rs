//! Redis Cluster: every XADD goes to the node that owns its stream's slot (a batch's entries
//! as concurrent requests, each redirected on its own), for the native backend and a
//! component's grant alike; a master killed, or a slot moved, under load: every event
//! published, none failed; out of memory on one master; TLS; the seed's entries.

// The failover test's async body is deep enough (relay, registry, redis futures) to reach
// rustc's default query depth under clippy.
#![recursion_limit = "256"]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::OutboxEvent;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::Relay;
use broadcaster_tests::{RedisCluster, components};
use redis::Commands;

fn cluster_option(cluster: &RedisCluster, extra: &str) -> String {
    let nodes = cluster.addresses().iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!("cluster = {{ nodes = [{nodes}] }}, connect_timeout = 1, socket_timeout = 2{extra}")
}

fn config(cluster: &RedisCluster, dir: &std::path::Path, extra: &str) -> Config {
    let connection = cluster_option(cluster, extra);
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
        options = {{ {connection}, stream_name = "native" }}
        [publishers.router]
        component = "{router}"
        options = {{ routes = {{ "order.*" = "tenant-a:orders", "user.*" = "tenant-a:users" }}, fallback = "tenant-a:other" }}
        grants.redis = {{ {connection}, streams = ["tenant-a:*"] }}
        limits.call_timeout = "5s"
        limits.health_timeout = "4s"
        limits.host_call_timeout = "4s"
        "#,
        db = dir.join("outbox.db").display(),
        router = components::ROUTER,
    );
    Config::from_toml(&text, &dir.join("broadcaster.toml"), Vec::new()).unwrap()
}

#[tokio::test]
async fn every_stream_is_written_on_the_node_that_owns_its_slot() {
    let cluster = RedisCluster::start(false);
    let dir = tempfile::tempdir().unwrap();
    let registry = PublisherRegistry::build(&config(&cluster, dir.path(), ""), None).await.unwrap();
    let streams = ["native", "tenant-a:orders", "tenant-a:users", "tenant-a:other"];
    let owners: Vec<usize> = streams.iter().map(|s| cluster.master_of(s)).collect();
    assert!(owners.iter().collect::<std::collections::HashSet<_>>().len() > 1, "the streams span nodes: {owners:?}");

    for name in ["native", "router"] {
        let publisher = registry.get(name).unwrap();
        assert!(publisher.health().await.healthy, "{name}: {}", publisher.health().await.detail);
    }
    let native = registry.get("native").unwrap();
    let batch: Vec<OutboxEvent> = (0..5).map(|_| OutboxEvent::new("order.created", "/shop")).collect();
    assert!(native.publish_batch(&batch).await.iter().all(|a| format!("{a:?}").contains("Ok")));
    let router = registry.get("router").unwrap();
    let mixed: Vec<OutboxEvent> = ["order.created", "user.created", "invoice.sent", "order.paid"]
        .iter()
        .map(|t| OutboxEvent::new(*t, "/shop"))
        .collect();
    for outcome in router.publish_batch(&mixed).await {
        assert!(format!("{outcome:?}").contains("Ok"), "{outcome:?}");
    }

    let mut client = cluster.client();
    let lengths: Vec<usize> = streams.iter().map(|s| client.xlen(*s).unwrap()).collect();
    assert_eq!(lengths, [5, 2, 1, 1]);
    // Each stream is on its slot's master, and nowhere else.
    for (stream, owner) in streams.iter().zip(&owners) {
        for (i, node) in cluster.nodes().iter().enumerate() {
            let keys: Vec<String> = redis::cmd("KEYS").arg(stream).query(&mut node.client()).unwrap();
            assert_eq!(keys.len(), usize::from(i == *owner), "{stream} on node {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_master_under_load_fails_over_with_every_event_published_and_none_failed() {
    let mut cluster = RedisCluster::start(true);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&cluster, dir.path(), ", wait_replicas = 1");
    let store = OutboxStore::connect(&config.outbox.url).await.unwrap();
    assert!(store.migrate().await.unwrap());
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let relay = Relay::new(store.clone(), registry, &config.relay);

    let events: Vec<NewEvent> = (0..300)
        .map(|i| {
            let publisher = if i % 2 == 0 { "native" } else { "router" };
            NewEvent::new("order.created", "/shop").publisher(publisher).data(serde_json::json!({"n": i}))
        })
        .collect();
    let ids = store.enqueue(&events, chrono::Utc::now()).await.unwrap();
    let victim = cluster.master_of("native");

    let (mut published, mut retried, mut killed_at, mut restarted) = (0, 0, None, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    while published < ids.len() as u64 {
        relay.refresh_health().await;
        let report = relay.run_batch(20).await.unwrap();
        if report.failed > 0 {
            let failed: Vec<String> = store
                .find(&ids)
                .await
                .unwrap()
                .into_iter()
                .filter(|row| row.status == Status::Failed)
                .map(|row| row.last_error)
                .collect();
            panic!("{report:?}: {failed:?}");
        }
        (published, retried) = (published + report.published, retried + report.retried);
        if killed_at.is_none() && published >= 60 {
            cluster.kill(victim);
            killed_at = Some(Instant::now());
        }
        // With wait_replicas = 1 the promoted replica needs a replica: the old master, back
        // with its nodes.conf, rejoins as one.
        if !restarted && killed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(4)) {
            cluster.restart(victim);
            restarted = true;
        }
        assert!(Instant::now() < deadline, "published {published} of {} in 120 s", ids.len());
        if report.claimed == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let took = killed_at.unwrap().elapsed();
    for row in store.find(&ids).await.unwrap() {
        assert_eq!(row.status, Status::Published, "{}", row.last_error);
    }
    let mut found: HashMap<String, usize> = HashMap::new();
    let mut client = cluster.client();
    for stream in ["native", "tenant-a:orders"] {
        let entries: redis::streams::StreamRangeReply = client.xrange_all(stream).unwrap();
        for entry in entries.ids {
            *found.entry(entry.get::<String>("event_id").unwrap()).or_default() += 1;
        }
    }
    let missing = ids.iter().filter(|id| !found.contains_key(*id)).count();
    let duplicates: usize = found.values().map(|n| n - 1).sum();
    eprintln!(
        "cluster failover: 300 events, the master of `native` killed after 60; all published {took:?} after the \
         kill; {retried} retries spent, {missing} missing, {duplicates} duplicates"
    );
    assert_eq!(missing, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_streams_slot_under_load_follows_ask_and_moved_and_publishes_everything_once() {
    let cluster = RedisCluster::start(false);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&cluster, dir.path(), "");
    let store = OutboxStore::connect(&config.outbox.url).await.unwrap();
    assert!(store.migrate().await.unwrap());
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let relay = Relay::new(store.clone(), registry, &config.relay);
    let events: Vec<NewEvent> = (0..200)
        .map(|i| {
            let publisher = if i % 2 == 0 { "native" } else { "router" };
            NewEvent::new("order.created", "/shop").publisher(publisher).data(serde_json::json!({"n": i}))
        })
        .collect();
    let ids = store.enqueue(&events, chrono::Utc::now()).await.unwrap();
    let from = cluster.master_of("native");
    let to = (from + 1) % 3;

    let mut published = 0;
    let batch = |stage: &'static str| {
        let (relay, store, ids) = (&relay, &store, &ids);
        async move {
            let report = relay.run_batch(20).await.unwrap();
            if (report.failed, report.retried) != (0, 0) {
                let rows = store.find(ids).await.unwrap();
                let errors: Vec<&String> = rows.iter().map(|r| &r.last_error).filter(|e| !e.is_empty()).collect();
                panic!("{stage}: {report:?}: {:?}", &errors[..errors.len().min(2)]);
            }
            report.published
        }
    };
    published += batch("before").await;
    let moving = cluster.begin_slot_move("native", to);
    published += batch("migrating, keys still on the old master").await;
    moving.migrate_keys();
    published += batch("keys moved: the old master answers ASK").await;
    published += batch("keys moved: ASK again").await;
    moving.finish();
    assert_eq!(cluster.master_of("native"), to);
    while published < ids.len() as u64 {
        relay.refresh_health().await;
        published += batch("moved: MOVED, then the new slot map").await;
    }
    let mut client = cluster.client();
    let mut found: HashMap<String, usize> = HashMap::new();
    for stream in ["native", "tenant-a:orders"] {
        let entries: redis::streams::StreamRangeReply = client.xrange_all(stream).unwrap();
        for entry in entries.ids {
            *found.entry(entry.get::<String>("event_id").unwrap()).or_default() += 1;
        }
    }
    assert_eq!(found.len(), 200);
    assert!(found.values().all(|n| *n == 1), "no duplicates when nothing fails");
}

#[tokio::test]
async fn on_a_cluster_the_native_and_component_entries_are_equal_and_the_seeds_consumer_reads_them() {
    let cluster = RedisCluster::start(false);
    let connection = cluster_option(&cluster, "");
    // A stream on another master than `native`.
    let other =
        (0..).map(|i| format!("component-{i}")).find(|s| cluster.master_of(s) != cluster.master_of("native")).unwrap();
    let text = format!(
        r#"
        [publishers.native]
        backend = "redis-stream"
        options = {{ {connection}, stream_name = "native" }}
        [publishers.component]
        component = "{component}"
        options = {{ stream_name = "{other}" }}
        grants.redis = {{ {connection}, streams = ["{other}"] }}
        "#,
        component = components::REDIS_STREAM,
    );
    let config = Config::from_toml(&text, "cluster.toml".as_ref(), Vec::new()).unwrap();
    let registry = PublisherRegistry::build(&config, None).await.unwrap();
    let events: Vec<OutboxEvent> = ["order.created", "order.paid", "user.created"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut event = OutboxEvent::new(*t, "/shop");
            event.data = broadcaster::event::Payload::Json(serde_json::json!({"n": i, "name": "Zoë"}));
            event
        })
        .collect();
    for name in ["native", "component"] {
        for event in &events {
            registry.get(name).unwrap().publish(event).await.unwrap();
        }
    }
    let mut client = cluster.client();
    let read = |client: &mut redis::cluster::ClusterConnection, stream: &str| -> Vec<Vec<(String, String)>> {
        let reply: redis::streams::StreamRangeReply = client.xrange_all(stream).unwrap();
        reply
            .ids
            .iter()
            .map(|entry| {
                let mut fields: Vec<(String, String)> =
                    entry.map.iter().map(|(k, v)| (k.clone(), redis::from_redis_value_ref(v).unwrap())).collect();
                fields.sort();
                fields
            })
            .collect()
    };
    let (native, component) = (read(&mut client, "native"), read(&mut client, &other));
    assert_eq!(native, component, "the same entries from both kinds of publisher");
    // What the seed's docs do: XREAD from 0, json.loads(cloud_event), read type and id.
    let reply: redis::streams::StreamReadReply =
        client.xread_options(&["native"], &["0"], &redis::streams::StreamReadOptions::default().count(100)).unwrap();
    let entries = &reply.keys[0].ids;
    assert_eq!(entries.len(), events.len());
    for (entry, event) in entries.iter().zip(&events) {
        let cloud_event: serde_json::Value =
            serde_json::from_str(&entry.get::<String>("cloud_event").unwrap()).unwrap();
        assert_eq!(
            (cloud_event["type"].as_str(), cloud_event["id"].as_str()),
            (Some(event.event_type.as_str()), Some(event.id.as_str()))
        );
    }
}

#[tokio::test]
async fn a_master_out_of_memory_holds_the_publisher_down_until_it_has_room() {
    let cluster = RedisCluster::start(false);
    let dir = tempfile::tempdir().unwrap();
    let registry = PublisherRegistry::build(&config(&cluster, dir.path(), ""), None).await.unwrap();
    let native = registry.get("native").unwrap();
    let full = &cluster.nodes()[cluster.master_of("native")];
    let config_set = |key: &str, value: &str| {
        redis::cmd("CONFIG").arg("SET").arg(key).arg(value).exec(&mut full.client()).unwrap();
    };
    config_set("maxmemory-policy", "noeviction");
    config_set("maxmemory", "1");
    let err = native.publish(&OutboxEvent::new("order.created", "/shop")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let health = native.health().await;
    assert!(!health.healthy && health.detail.contains("out of memory (OOM)"), "{}", health.detail);
    // After the one-second hold, INFO memory of every master (a map on a cluster) decides.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let health = native.health().await;
    assert!(!health.healthy && health.detail.contains("used of maxmemory"), "{}", health.detail);
    config_set("maxmemory", "0");
    assert!(native.health().await.healthy);
    native.publish(&OutboxEvent::new("order.created", "/shop")).await.unwrap();
}

#[tokio::test]
async fn a_cluster_over_tls_is_written_by_both_kinds_of_publisher() {
    let cluster = RedisCluster::start_tls();
    let nodes = cluster.tls_addresses().iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let connection =
        format!("cluster = {{ nodes = [{nodes}] }}, tls = {{ ca_file = \"ca.pem\" }}, connect_timeout = 2");
    let text = format!(
        r#"
        [publishers.native]
        backend = "redis-stream"
        options = {{ {connection}, stream_name = "native" }}
        [publishers.router]
        component = "{router}"
        options = {{ routes = {{ "order.*" = "tenant-a:orders", "user.*" = "tenant-a:users" }} }}
        grants.redis = {{ {connection}, streams = ["tenant-a:*"] }}
        limits.call_timeout = "5s"
        limits.host_call_timeout = "4s"
        "#,
        router = components::ROUTER,
    );
    let dir = cluster.certificates().unwrap();
    let config = Config::from_toml(&text, &dir.join("broadcaster.toml"), Vec::new()).unwrap();
    let registry = PublisherRegistry::build(&config, None).await.unwrap();
    let native = registry.get("native").unwrap();
    let health = native.health().await;
    assert!(health.healthy && health.detail.starts_with("rediss+cluster://"), "{}", health.detail);
    native.publish(&OutboxEvent::new("order.created", "/shop")).await.unwrap();
    let router = registry.get("router").unwrap();
    for event_type in ["order.created", "user.created"] {
        router.publish(&OutboxEvent::new(event_type, "/shop")).await.unwrap();
    }
    let mut client = cluster.client();
    let lengths: Vec<usize> =
        ["native", "tenant-a:orders", "tenant-a:users"].iter().map(|s| client.xlen(*s).unwrap()).collect();
    assert_eq!(lengths, [1, 1, 1]);
}
