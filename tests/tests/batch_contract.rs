//! The batch contract (`broadcaster:backend@0.2.0`): a batch is one `publish-batch` call and its
//! entries one `xadd-batch` round trip; what the host makes of the results a backend returns
//! (fewer, more, after a transient error, a trap); the caps on `xadd-batch`; a 0.1.0
//! component still called once per event.

use std::time::Duration;

use broadcaster::config::Config;
use broadcaster::event::{OutboxEvent, Payload};
use broadcaster::host::{ComponentPublisher, ContractVersion};
use broadcaster::publisher::{Attempt, PublishError, Publisher};
use broadcaster::registry::PublisherRegistry;
use broadcaster_tests::{RedisServer, components};
use redis::Commands;
use serde_json::json;

/// A registry with one publisher `p` running `component`, writing to streams `batch:*`.
async fn publisher(
    redis: &RedisServer,
    component: &str,
    options: &str,
    limits: &str,
) -> (PublisherRegistry, Publisher) {
    let text = format!(
        "[publishers.p]\ncomponent = \"{component}\"\n[publishers.p.options]\nstream_name = \"batch:events\"\n{options}\n\
         [publishers.p.grants]\nredis = {{ host = \"127.0.0.1\", port = {port}, streams = [\"batch:*\"] }}\n\
         [publishers.p.limits]\n{limits}\n",
        port = redis.port()
    );
    let config = Config::from_toml(&text, "batch.toml".as_ref(), Vec::new()).unwrap();
    let registry = PublisherRegistry::build(&config, None).await.unwrap();
    let publisher = registry.get("p").unwrap().clone();
    (registry, publisher)
}

fn component(publisher: &Publisher) -> &std::sync::Arc<ComponentPublisher> {
    match publisher {
        Publisher::Component(p) => p,
        other => panic!("not a component: {other:?}"),
    }
}

/// An event whose `data` tells the batcher what to do with it.
fn event(data: serde_json::Value) -> OutboxEvent {
    let mut event = OutboxEvent::new("order.created", "/shop");
    event.data = Payload::Json(data);
    event
}

fn oks(n: usize) -> Vec<OutboxEvent> {
    (0..n).map(|i| event(json!({"n": i}))).collect()
}

fn stream_ids(redis: &RedisServer, stream: &str) -> Vec<String> {
    let reply: redis::streams::StreamRangeReply = redis.client().xrange_all(stream).unwrap();
    reply.ids.iter().map(|e| e.get::<String>("event_id").unwrap()).collect()
}

fn is_permanent(attempt: &Attempt, needle: &str) -> bool {
    matches!(attempt, Attempt::Done(Err(PublishError::Permanent(m))) if m.contains(needle))
}

const OK: Attempt = Attempt::Done(Ok(()));

#[tokio::test]
async fn a_0_2_0_component_gets_a_batch_in_one_call_and_a_0_1_0_one_event_by_event() {
    let redis = RedisServer::start();
    let (_r, batcher) = publisher(&redis, components::BATCHER, "", "host_calls = 1").await;
    assert_eq!(component(&batcher).version(), ContractVersion::V0_2);
    let (_r, old) = publisher(&redis, components::STREAM_V0_1, "", "").await;
    assert_eq!(component(&old).version(), ContractVersion::V0_1);
    // The 0.1.0 component is called once per event; its `publish` does one xadd.
    assert_eq!(old.publish_batch(&oks(3)).await, vec![OK, OK, OK]);
    assert_eq!(component(&old).instantiations().await, 1);
    // The 0.2.0 one gets the batch in one call: with `host_calls = 1` per event, its one
    // xadd-batch (one host call per entry) fits, and a single call may spend only 1.
    assert_eq!(batcher.publish_batch(&oks(3)).await, vec![OK, OK, OK]);
    assert_eq!(stream_ids(&redis, "batch:events").len(), 6);
}

#[tokio::test]
async fn a_transient_error_in_a_batch_leaves_the_later_events_not_attempted() {
    let redis = RedisServer::start();
    // The SDK's default publish-batch (publish for each event) stops at the transient error.
    let (_r, scripted) = publisher(&redis, components::SCRIPTED, "", "").await;
    let events = vec![event(json!({})), event(json!({"outcome": "transient"})), event(json!({}))];
    let attempts = scripted.publish_batch(&events).await;
    assert_eq!(attempts[0], OK);
    assert!(matches!(&attempts[1], Attempt::Done(Err(PublishError::Transient(m))) if m == "scripted failure"));
    assert_eq!(attempts[2], Attempt::NotAttempted);
    assert_eq!(stream_ids(&redis, "batch:events"), vec![events[0].id.clone()], "the SDK stopped at the error");

    // A backend that goes on after a transient error: the host does not trust what follows.
    let (_r, batcher) = publisher(&redis, components::BATCHER, "", "").await;
    let events = vec![event(json!({"outcome": "transient"})), event(json!({})), event(json!({"outcome": "permanent"}))];
    let attempts = batcher.publish_batch(&events).await;
    assert!(matches!(&attempts[0], Attempt::Done(Err(PublishError::Transient(_)))), "{attempts:?}");
    assert_eq!(attempts[1..], [Attempt::NotAttempted, Attempt::NotAttempted]);
}

#[tokio::test]
async fn a_backend_returning_fewer_results_leaves_the_rest_not_attempted() {
    let redis = RedisServer::start();
    let (_r, batcher) = publisher(&redis, components::BATCHER, "results = \"one-fewer\"", "").await;
    let attempts = batcher.publish_batch(&oks(3)).await;
    assert_eq!(attempts, vec![OK, OK, Attempt::NotAttempted]);
}

#[tokio::test]
async fn a_backend_returning_more_results_than_events_is_handled_as_a_trap() {
    let redis = RedisServer::start();
    let (_r, batcher) = publisher(&redis, components::BATCHER, "results = \"one-more\"", "").await;
    let attempts = batcher.publish_batch(&oks(3)).await;
    assert!(
        matches!(&attempts[0], Attempt::Done(Err(PublishError::Trapped(m))) if m.contains("returned 4 results for 3 events")),
        "{attempts:?}"
    );
    assert_eq!(attempts[1..], [Attempt::NotAttempted, Attempt::NotAttempted]);
    // The instance is thrown away and the breaker opened, as after a trap.
    let health = batcher.health().await;
    assert!(!health.healthy && health.detail.contains("returned 4 results"), "{health:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(batcher.health().await.healthy);
    assert_eq!(component(&batcher).instantiations().await, 2);
}

#[tokio::test]
async fn a_trap_in_a_batch_fails_its_first_event_and_leaves_the_rest_not_attempted() {
    let redis = RedisServer::start();
    let (_r, batcher) = publisher(&redis, components::BATCHER, "", "").await;
    let events = vec![event(json!({})), event(json!({"outcome": "panic", "message": "boom"})), event(json!({}))];
    let attempts = batcher.publish_batch(&events).await;
    assert!(matches!(&attempts[0], Attempt::Done(Err(PublishError::Trapped(m))) if m.contains("boom")), "{attempts:?}");
    assert_eq!(attempts[1..], [Attempt::NotAttempted, Attempt::NotAttempted]);
}

#[tokio::test]
async fn an_xadd_batch_over_its_entry_or_byte_cap_is_refused_whole_and_writes_nothing() {
    let redis = RedisServer::start();
    for (limits, named) in [
        ("xadd_batch_entries = 2", "limits.xadd_batch_entries (2)"),
        ("xadd_batch_bytes = \"1KiB\"", "limits.xadd_batch_bytes (1KiB)"),
    ] {
        let (_r, batcher) = publisher(&redis, components::BATCHER, "", limits).await;
        let attempts = batcher.publish_batch(&oks(3)).await;
        assert!(
            attempts.iter().all(|a| is_permanent(a, named) && is_permanent(a, "nothing was written")),
            "{attempts:?}"
        );
        assert!(!redis.client().exists::<_, bool>("batch:events").unwrap(), "{limits}: nothing is written");
    }
    // Under the same caps the SDK's xadd_batch falls back to one xadd per entry.
    let (_r, shipped) = publisher(&redis, components::REDIS_STREAM, "", "xadd_batch_entries = 2").await;
    assert_eq!(shipped.publish_batch(&oks(3)).await, vec![OK, OK, OK]);
    assert_eq!(stream_ids(&redis, "batch:events").len(), 3);
}

#[tokio::test]
async fn an_entry_over_a_per_entry_cap_or_outside_the_grant_fails_alone() {
    let redis = RedisServer::start();
    let (_r, batcher) = publisher(&redis, components::BATCHER, "", "entry_bytes = 2000").await;
    let events = vec![
        event(json!({})),
        event(json!({"big": "x".repeat(3000)})),
        event(json!({"stream": "elsewhere"})),
        event(json!({})),
    ];
    let attempts = batcher.publish_batch(&events).await;
    assert_eq!(attempts[0], OK);
    assert!(is_permanent(&attempts[1], "limits.entry_bytes"), "{attempts:?}");
    assert!(is_permanent(&attempts[2], "\"elsewhere\" is outside the streams granted"), "{attempts:?}");
    assert_eq!(attempts[3], OK);
    assert_eq!(stream_ids(&redis, "batch:events"), vec![events[0].id.clone(), events[3].id.clone()]);
    assert!(!redis.client().exists::<_, bool>("elsewhere").unwrap());
}

#[tokio::test]
async fn redis_unavailable_fails_the_first_event_transiently_and_leaves_the_rest_not_attempted() {
    let mut redis = RedisServer::start();
    let (_r, shipped) = publisher(&redis, components::REDIS_STREAM, "", "").await;
    assert_eq!(shipped.publish_batch(&oks(2)).await, vec![OK, OK]);
    redis.stop();
    let attempts = shipped.publish_batch(&oks(3)).await;
    assert!(
        matches!(&attempts[0], Attempt::Done(Err(PublishError::Transient(m))) if m.contains("unavailable")),
        "{attempts:?}"
    );
    assert_eq!(attempts[1..], [Attempt::NotAttempted, Attempt::NotAttempted]);
}

#[tokio::test]
async fn a_batch_call_gets_call_timeout_per_event_up_to_batch_timeout_and_a_stopped_publisher_none() {
    let redis = RedisServer::start();
    let limits = "call_timeout = \"1s\"\nbatch_timeout = \"5s\"";
    let (_r, batcher) = publisher(&redis, components::BATCHER, "", limits).await;
    let p = component(&batcher);
    assert_eq!(p.batch_deadline(1), (Duration::from_secs(1), "limits.call_timeout per event"));
    assert_eq!(p.batch_deadline(3), (Duration::from_secs(3), "limits.call_timeout per event"));
    assert_eq!(p.batch_deadline(100), (Duration::from_secs(5), "limits.batch_timeout"));
    // A stop cuts a batch call `call_timeout` after it at the latest.
    assert_eq!(p.longest_call(), Duration::from_millis(1500));
    batcher.stop();
    assert_eq!(batcher.publish_batch(&oks(2)).await, vec![Attempt::NotAttempted, Attempt::NotAttempted]);
}

/// A component answers fast (its batches held in a transaction, one claimed ahead) only while
/// its latest batch was published whole within `FAST_BATCH`: not before its first, not after
/// a slow one, not after one that failed.
#[tokio::test]
async fn a_component_answers_fast_only_while_its_latest_batch_was_quick_and_whole() {
    let redis = RedisServer::start();
    let (_r, fast) = publisher(&redis, components::REDIS_STREAM, "", "").await;
    assert!(!fast.answers_fast(), "unknown before its first batch");
    fast.publish_batch(&oks(10)).await;
    assert!(fast.answers_fast(), "a quick whole batch");

    let slow_ms = broadcaster::host::FAST_BATCH.as_millis() as u64 + 50;
    let (_r, slow) = publisher(&redis, components::SLOW_STREAM, &format!("delay_ms = {slow_ms}"), "").await;
    slow.publish_batch(&oks(1)).await;
    assert!(!slow.answers_fast(), "a batch slower than FAST_BATCH");

    let (_r, batcher) = publisher(&redis, components::BATCHER, "", "").await;
    batcher.publish_batch(&oks(2)).await;
    assert!(batcher.answers_fast(), "the batcher's quick batch");
    batcher.publish_batch(&[event(json!({"outcome": "transient", "message": "down for a moment"}))]).await;
    assert!(!batcher.answers_fast(), "a batch that did not publish whole");
}
