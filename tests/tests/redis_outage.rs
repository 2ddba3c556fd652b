//! Redis goes away and comes back: publishers notice, fail transiently, and recover without
//! a restart of Broadcaster.

use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::OutboxEvent;
use broadcaster::publisher::{PublishError, Publisher};
use broadcaster::registry::PublisherRegistry;
use broadcaster_tests::{RedisServer, components};
use redis::Commands;

fn config(redis: &RedisServer) -> Config {
    let text = format!(
        r#"
        [publishers.native]
        backend = "redis-stream"
        [publishers.native.options]
        host = "127.0.0.1"
        port = {port}
        connect_timeout = 1
        socket_timeout = 1

        [publishers.component]
        component = "{component}"
        [publishers.component.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["events"], connect_timeout = 1, socket_timeout = 1 }}
        [publishers.component.limits]
        call_timeout = "5s"
        "#,
        port = redis.port(),
        component = components::REDIS_STREAM,
    );
    Config::from_toml(&text, "outage.toml".as_ref(), Vec::new()).unwrap()
}

async fn eventually_healthy(publisher: &Publisher, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if publisher.health().await.healthy == want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_follows_redis_down_and_back_up_and_publishes_while_down_are_transient() {
    let mut redis = RedisServer::start();
    let registry = PublisherRegistry::build(&config(&redis), None).await.unwrap();
    for name in ["native", "component"] {
        let publisher = registry.get(name).unwrap();
        assert!(publisher.health().await.healthy, "{name} healthy at start");
        publisher.publish(&OutboxEvent::new("before", "/t")).await.unwrap();
    }

    redis.stop();
    for name in ["native", "component"] {
        let publisher = registry.get(name).unwrap();
        let health = publisher.health().await;
        assert!(!health.healthy, "{name} unhealthy while Redis is down");
        assert!(!health.detail.is_empty());
        let err = publisher.publish(&OutboxEvent::new("during", "/t")).await.unwrap_err();
        assert!(matches!(err, PublishError::Transient(_)), "{name}: {err}");
    }

    redis.restart();
    for name in ["native", "component"] {
        let publisher = registry.get(name).unwrap();
        assert!(eventually_healthy(publisher, true).await, "{name} healthy again after the restart");
        publisher.publish(&OutboxEvent::new("after", "/t")).await.unwrap();
    }
    // Redis restarted empty: only the two "after" events are there.
    assert_eq!(redis.client().xlen::<_, usize>("events").unwrap(), 2);
}

#[tokio::test]
async fn publishers_start_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let config = config(&redis);
    redis.stop();
    let registry = PublisherRegistry::build(&config, None).await.unwrap();
    for name in ["native", "component"] {
        assert!(!registry.get(name).unwrap().health().await.healthy, "{name}");
    }
    redis.restart();
    for name in ["native", "component"] {
        let publisher = registry.get(name).unwrap();
        assert!(eventually_healthy(publisher, true).await, "{name}");
        publisher.publish(&OutboxEvent::new("late", "/t")).await.unwrap();
    }
}
