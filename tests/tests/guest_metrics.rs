//! What `/metrics` reports of a component tenant's supervision: each trap by its cause, the
//! instances started again after it, the breaker's pauses, and the live instance's memory.

use std::time::Duration;

use broadcaster::config::Config;
use broadcaster::event::OutboxEvent;
use broadcaster::host::TrapCause;
use broadcaster::metrics::Metrics;
use broadcaster::publisher::{PublishError, Publisher};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::HealthBoard;
use broadcaster::relay::scrape::refresh_publishers;
use broadcaster_tests::{RedisServer, components};

fn attacker(redis: &RedisServer, attacks: &[(&str, &str)]) -> Config {
    let mut text = String::new();
    for (name, attack) in attacks {
        text.push_str(&format!(
            r#"
            [publishers.{name}]
            component = "{component}"
            [publishers.{name}.options]
            attack = "{attack}"
            stream_name = "{name}:events"
            [publishers.{name}.grants]
            redis = {{ host = "127.0.0.1", port = {port}, streams = ["{name}:*"] }}
            [publishers.{name}.limits]
            memory = "8MiB"
            call_timeout = "300ms"
            "#,
            component = components::ATTACKER,
            port = redis.port(),
        ));
    }
    Config::from_toml(&text, "test.toml".as_ref(), Vec::new()).unwrap()
}

/// The sample `name{labels…}` of `text`, as a number.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

#[tokio::test]
async fn each_trap_is_counted_by_its_cause_with_the_restart_and_the_breaker_pause() {
    let redis = RedisServer::start();
    let config = attacker(&redis, &[("panicky", "panic"), ("spinner", "loop"), ("hoarder", "grow")]);
    let registry = PublisherRegistry::build(&config, None).await.unwrap();
    let event = OutboxEvent::new("t", "s");
    for name in ["panicky", "spinner", "hoarder"] {
        let err = registry.get(name).unwrap().publish(&event).await.unwrap_err();
        assert!(matches!(err, PublishError::Trapped(_)), "{name}: {err}");
    }
    // The breaker pauses a trapped publisher 100 ms; then a new instance is made.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = registry.get("panicky").unwrap().publish(&event).await;
    let counters = |name: &str| match registry.get(name).unwrap() {
        Publisher::Component(component) => component.counters(),
        Publisher::RedisStream(_) => unreachable!(),
    };
    assert_eq!(counters("panicky").traps(TrapCause::Trap), 2);
    assert_eq!(counters("panicky").instances(), 2, "started, trapped, started again");
    assert_eq!(counters("spinner").traps(TrapCause::Deadline), 1);
    assert_eq!(counters("hoarder").traps(TrapCause::Memory), 1);
    assert_eq!(counters("hoarder").traps(TrapCause::Trap), 0);

    let metrics = Metrics::new();
    refresh_publishers(&metrics, &registry, &HealthBoard::default());
    // A second copy-in adds nothing: the counters are raised to the totals, not by them.
    refresh_publishers(&metrics, &registry, &HealthBoard::default());
    let text = metrics.render();
    let traps = "broadcaster_guest_traps_total";
    assert_eq!(sample(&text, traps, r#"cause="trap",publisher="panicky""#), 2.0);
    assert_eq!(sample(&text, traps, r#"cause="deadline",publisher="spinner""#), 1.0);
    assert_eq!(sample(&text, traps, r#"cause="memory",publisher="hoarder""#), 1.0);
    assert_eq!(sample(&text, "broadcaster_guest_instances_started_total", r#"publisher="panicky""#), 2.0);
    assert_eq!(sample(&text, "broadcaster_guest_breaker_trips_total", r#"publisher="panicky""#), 2.0);
}

#[tokio::test]
async fn the_live_instance_memory_is_reported_and_drops_to_zero_when_it_traps() {
    let redis = RedisServer::start();
    let config = attacker(&redis, &[("calm", ""), ("panicky", "panic")]);
    let registry = PublisherRegistry::build(&config, None).await.unwrap();
    let mut event = OutboxEvent::new("t", "s");
    event.data = broadcaster::event::Payload::Json(serde_json::json!({"behave": true}));
    registry.get("calm").unwrap().publish(&event).await.unwrap();
    registry.get("panicky").unwrap().publish(&event).await.unwrap();
    let memory = |name: &str| match registry.get(name).unwrap() {
        Publisher::Component(component) => component.counters().memory_bytes(),
        Publisher::RedisStream(_) => unreachable!(),
    };
    let calm = memory("calm");
    assert!((64 * 1024..=8 * 1024 * 1024).contains(&calm), "a live instance's memory: {calm} bytes");
    let _ = registry.get("panicky").unwrap().publish(&OutboxEvent::new("t", "s")).await;
    assert_eq!(memory("panicky"), 0, "a trapped instance is gone, and its memory with it");
    let metrics = Metrics::new();
    refresh_publishers(&metrics, &registry, &HealthBoard::default());
    assert_eq!(sample(&metrics.render(), "broadcaster_guest_memory_bytes", r#"publisher="calm""#), calm as f64);
}
