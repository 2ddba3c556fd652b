//! Tenant scale (issue 12): many more configured component publishers than the live-instance
//! bound. Instances are made when an event needs them and dropped (least recently used
//! first, or after the idle timeout); every event is still published, in order per tenant,
//! and a tenant whose `init` fails keeps its trouble to itself. Idle tenants are reported
//! idle, not instantiated, by the relay's health monitor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::publisher::Publisher;
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};
use broadcaster_tests::{OutboxKind, RedisServer, TestOutbox, components};
use redis::Commands;

/// A configuration of `tenants` publishers running the shipped redis-stream component, each
/// writing to stream `tenant-<i>`; `broken` of them (the last ones) have an empty stream name,
/// which their `init` rejects.
fn config_text(outbox: &TestOutbox, redis: &RedisServer, tenants: usize, broken: usize, wasm: &str) -> String {
    let mut text = format!(
        "[outbox]\nurl = \"{url}\"\n[relay]\ninterval = \"100ms\"\nhealth_interval = \"200ms\"\nbatch_size = 10\n\
         [wasm]\ncache = false\n{wasm}\n",
        url = outbox.url()
    );
    for i in 0..tenants {
        let stream = if i >= tenants - broken { String::new() } else { format!("tenant-{i}") };
        text.push_str(&format!(
            "[publishers.tenant-{i}]\ncomponent = \"{component}\"\n[publishers.tenant-{i}.options]\n\
             stream_name = \"{stream}\"\n[publishers.tenant-{i}.grants]\n\
             redis = {{ host = \"127.0.0.1\", port = {port}, streams = [\"tenant-*\"] }}\n",
            component = components::REDIS_STREAM,
            port = redis.port()
        ));
    }
    text
}

fn events_for(tenant: usize, count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|n| NewEvent::new("order.created", "/shop").publisher(format!("tenant-{tenant}")).subject(n.to_string()))
        .collect()
}

fn components_of(registry: &PublisherRegistry) -> Vec<(String, Arc<broadcaster::host::ComponentPublisher>)> {
    registry
        .iter()
        .filter_map(|(name, p)| match p {
            Publisher::Component(c) => Some((name.to_string(), c.clone())),
            Publisher::RedisStream(_) => None,
        })
        .collect()
}

async fn wait_until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_tenants_on_four_live_instances_publish_every_event_in_order_and_a_broken_init_stays_its_own() {
    let outbox = TestOutbox::create(OutboxKind::Sqlite).await;
    let redis = RedisServer::start();
    let (tenants, broken, per_tenant) = (40, 2, 6);
    let text = config_text(&outbox, &redis, tenants, broken, "live_instances = 4");
    let config = Config::from_toml(&text, "tenants.toml".as_ref(), Vec::new()).unwrap();
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    store.migrate().await.unwrap();
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    registry.wait_started().await;
    let live = registry.live_instances().unwrap().clone();
    assert_eq!(live.live(), 4, "the instances that fit are made at start-up, no more");
    assert_eq!(components_of(&registry).iter().filter(|(_, c)| c.is_idle()).count(), tenants - 4);

    // Every tenant gets events, interleaved, so that instances keep being needed elsewhere.
    for round in 0..per_tenant {
        for tenant in 0..tenants {
            let mut event = events_for(tenant, 1);
            event[0] = NewEvent::new("order.created", "/shop")
                .publisher(format!("tenant-{tenant}"))
                .subject(round.to_string());
            store.enqueue(&event, now_micros()).await.unwrap();
        }
    }
    let relay = Arc::new(Relay::new(store.clone(), registry.clone(), &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Batches of two: each tenant needs three turns, between which others take its room.
    let options = RunOptions { batch_size: 2, interval: Duration::from_millis(100), max_iterations: 0 };
    let running = tokio::spawn(relay.clone().run(options, stopped));

    let mut conn = redis.client();
    let healthy = tenants - broken;
    wait_until("every healthy tenant's events are in its stream", Duration::from_secs(60), async || {
        (0..healthy).all(|t| conn.xlen::<_, usize>(format!("tenant-{t}")).unwrap() == per_tenant)
    })
    .await;
    assert!(live.live() <= 4, "never more than the bound alive: {}", live.live());
    assert!(live.evictions() > 0, "instances were dropped for room");

    // In order per tenant, each exactly once.
    for tenant in 0..healthy {
        let entries: redis::streams::StreamRangeReply = conn.xrange_all(format!("tenant-{tenant}")).unwrap();
        let subjects: Vec<String> = entries
            .ids
            .iter()
            .map(|entry| {
                let cloud_event: serde_json::Value =
                    serde_json::from_str(&entry.get::<String>("cloud_event").expect("cloud_event field")).unwrap();
                cloud_event["subject"].as_str().expect("subject").to_string()
            })
            .collect();
        let expected: Vec<String> = (0..per_tenant).map(|n| n.to_string()).collect();
        assert_eq!(subjects, expected, "tenant-{tenant}");
    }
    // The broken tenants' events wait (none failed, none published); their health says why.
    let counts = store.status(now_micros(), Duration::from_secs(300)).await.unwrap().counts;
    for tenant in healthy..tenants {
        let name = format!("tenant-{tenant}");
        let published = counts.get(&(name.clone(), Status::Published)).copied().unwrap_or(0);
        let failed = counts.get(&(name.clone(), Status::Failed)).copied().unwrap_or(0);
        let retrying = counts.get(&(name.clone(), Status::Retry)).copied().unwrap_or(0);
        assert_eq!((published, failed, retrying), (0, 0, 0), "{name}: its events wait, no retry spent");
        wait_until(&format!("{name}'s health says why it is down"), Duration::from_secs(20), async || {
            relay.health().last(&name).is_some_and(|h| !h.healthy && h.detail.contains("stream_name"))
        })
        .await;
    }
    stop.send(true).unwrap();
    let report = running.await.unwrap();
    assert_eq!(report.totals.published, (healthy * per_tenant) as u64);
    assert_eq!(report.totals.failed, 0, "nothing failed: {report:?}");
    let made: u64 = components_of(&registry).iter().map(|(_, c)| c.counters().instances()).sum();
    assert!(made > healthy as u64, "instances were made again after being dropped ({made})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_unused_for_the_idle_timeout_is_dropped_and_the_next_event_makes_one_again() {
    let outbox = TestOutbox::create(OutboxKind::Sqlite).await;
    let redis = RedisServer::start();
    let text = config_text(&outbox, &redis, 3, 0, "idle_timeout = \"300ms\"");
    let config = Config::from_toml(&text, "tenants.toml".as_ref(), Vec::new()).unwrap();
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    store.migrate().await.unwrap();
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let relay = Arc::new(Relay::new(store.clone(), registry.clone(), &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 10, interval: Duration::from_millis(100), max_iterations: 0 };
    let running = tokio::spawn(relay.clone().run(options, stopped));
    let tenant = match registry.get("tenant-1").unwrap() {
        Publisher::Component(c) => c.clone(),
        Publisher::RedisStream(_) => unreachable!(),
    };

    let mut conn = redis.client();
    wait_until(
        "the instance made at start-up is dropped after its idle timeout",
        Duration::from_secs(20),
        async || tenant.is_idle(),
    )
    .await;
    for round in 1..=2 {
        store.enqueue(&events_for(1, 1), now_micros()).await.unwrap();
        wait_until("the event is published", Duration::from_secs(20), async || {
            conn.xlen::<_, usize>("tenant-1").unwrap() == round
        })
        .await;
        wait_until("the instance is dropped after its idle timeout", Duration::from_secs(20), async || {
            tenant.is_idle()
        })
        .await;
        wait_until("the health monitor says idle", Duration::from_secs(20), async || {
            relay.health().last("tenant-1").is_some_and(|h| h.healthy && h.idle)
        })
        .await;
    }
    assert!(tenant.counters().instances() >= 3, "made at start-up, then for each event after an idle spell");
    assert!(tenant.counters().evictions() >= 2);
    assert_eq!(registry.live_instances().unwrap().live(), 0, "every instance was dropped after its idle timeout");
    stop.send(true).unwrap();
    let report = running.await.unwrap();
    assert_eq!((report.totals.published, report.totals.failed), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_monitor_reports_idle_tenants_without_making_their_instances() {
    let outbox = TestOutbox::create(OutboxKind::Sqlite).await;
    let redis = RedisServer::start();
    let tenants = 200;
    let text = config_text(&outbox, &redis, tenants, 0, "live_instances = 2");
    let config = Config::from_toml(&text, "tenants.toml".as_ref(), Vec::new()).unwrap();
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    store.migrate().await.unwrap();
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    registry.wait_started().await;
    let relay = Arc::new(Relay::new(store.clone(), registry.clone(), &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 10, interval: Duration::from_millis(100), max_iterations: 0 };
    let running = tokio::spawn(relay.clone().run(options, stopped));
    wait_until("every tenant's health is recorded", Duration::from_secs(20), async || {
        (0..tenants).all(|t| relay.health().last(&format!("tenant-{t}")).is_some())
    })
    .await;
    // A few more health intervals: still no instance made for the idle ones.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let idle = (0..tenants).filter(|t| relay.health().last(&format!("tenant-{t}")).unwrap().idle).count();
    assert_eq!(idle, tenants - 2, "all but the two live ones are idle");
    let made: u64 = components_of(&registry).iter().map(|(_, c)| c.counters().instances()).sum();
    assert_eq!(made, 2, "only the instances that fit at start-up were made");
    stop.send(true).unwrap();
    running.await.unwrap();
}
