//! Component publishers: one compiled component, several publishers with their own options
//! and grants; grants enforced by the host.

use broadcaster::config::Config;
use broadcaster::event::{OutboxEvent, Payload};
use broadcaster::host::ComponentSetupError;
use broadcaster::publisher::PublishError;
use broadcaster::registry::{BuildOptions, PublisherRegistry, PublisherSetupError, RegistryError};
use broadcaster_tests::{RedisServer, components};
use redis::Commands;

fn config(text: &str) -> Config {
    Config::from_toml(text, "test.toml".as_ref(), Vec::new()).unwrap()
}

fn two_tenants(redis: &RedisServer) -> Config {
    config(&format!(
        r#"
        [publishers.tenant-a]
        component = "{router}"
        [publishers.tenant-a.options]
        routes = {{ "order.*" = "tenant-a:orders", "user.*" = "tenant-b:users" }}
        fallback = "tenant-a:other"
        [publishers.tenant-a.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["tenant-a:*"] }}

        [publishers.tenant-b]
        component = "{router}"
        [publishers.tenant-b.options]
        routes = {{ "order.*" = "tenant-b:orders" }}
        [publishers.tenant-b.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["tenant-b:*"] }}
        "#,
        router = components::ROUTER,
        port = redis.port(),
    ))
}

fn event(event_type: &str) -> OutboxEvent {
    let mut event = OutboxEvent::new(event_type, "/test");
    event.data = Payload::Json(serde_json::json!({"n": 1}));
    event
}

#[tokio::test]
async fn two_publishers_of_one_component_write_to_their_own_streams() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(&two_tenants(&redis), None).await.unwrap();
    registry.get("tenant-a").unwrap().publish(&event("order.created")).await.unwrap();
    registry.get("tenant-a").unwrap().publish(&event("invoice.sent")).await.unwrap();
    registry.get("tenant-b").unwrap().publish(&event("order.created")).await.unwrap();
    let mut conn = redis.client();
    assert_eq!(conn.xlen::<_, usize>("tenant-a:orders").unwrap(), 1);
    assert_eq!(conn.xlen::<_, usize>("tenant-a:other").unwrap(), 1);
    assert_eq!(conn.xlen::<_, usize>("tenant-b:orders").unwrap(), 1);
    // tenant-b has no fallback: an unrouted event fails permanently.
    let err = registry.get("tenant-b").unwrap().publish(&event("invoice.sent")).await.unwrap_err();
    assert!(matches!(&err, PublishError::Permanent(m) if m.contains("no route")), "{err}");
}

#[tokio::test]
async fn a_stream_outside_the_grant_is_an_error_value_and_nothing_is_written() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(&two_tenants(&redis), None).await.unwrap();
    let tenant_a = registry.get("tenant-a").unwrap();
    // tenant-a routes user.* to tenant-b's stream, which its grant does not cover.
    let err = tenant_a.publish(&event("user.created")).await.unwrap_err();
    assert!(
        matches!(&err, PublishError::Permanent(m) if m.contains("tenant-b:users") && m.contains("outside")),
        "{err}"
    );
    let mut conn = redis.client();
    assert!(!conn.exists::<_, bool>("tenant-b:users").unwrap());
    // The refusal is a value, not a trap: the same instance keeps publishing.
    tenant_a.publish(&event("order.created")).await.unwrap();
    assert_eq!(conn.xlen::<_, usize>("tenant-a:orders").unwrap(), 1);
}

#[tokio::test]
async fn a_component_importing_redis_without_a_redis_grant_is_refused_at_start() {
    let config = config(&format!(
        "[publishers.nogrant]\ncomponent = \"{}\"\n[publishers.nogrant.options]\nstream_name = \"events\"\n",
        components::REDIS_STREAM
    ));
    let err = PublisherRegistry::build(&config, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Publisher {
                cause: PublisherSetupError::Component(ComponentSetupError::NotGranted { .. }),
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("publisher `nogrant`")
            && message.contains("broadcaster:backend/redis-stream@0.2.0")
            && message.contains("[publishers.nogrant.grants] redis"),
        "{message}"
    );
}

#[tokio::test]
async fn init_rejecting_its_options_stops_the_publisher_from_starting() {
    let cases = [
        ("routes = {}", "option `routes`"),
        ("routes = { \"a\" = 5 }", "routes.a"),
        ("rutes = { \"a\" = \"b\" }", "unknown field `rutes`"),
    ];
    for (options, expected) in cases {
        let config = config(&format!(
            "[publishers.bad]\ncomponent = \"{}\"\n[publishers.bad.grants]\nredis = {{ streams = [\"x\"] }}\n[publishers.bad.options]\n{options}\n",
            components::ROUTER
        ));
        let err = PublisherRegistry::build_with(&config, None, STRICT).await.unwrap_err();
        assert!(is_start_error(&err), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("publisher `bad`") && message.contains(expected), "{options}: {message}");
    }
    let connection_option = config(&format!(
        "[publishers.bad]\ncomponent = \"{}\"\n[publishers.bad.grants]\nredis = {{ streams = [\"x\"] }}\n[publishers.bad.options]\nhost = \"10.0.0.1\"\n",
        components::REDIS_STREAM
    ));
    let message = PublisherRegistry::build_with(&connection_option, None, STRICT).await.unwrap_err().to_string();
    assert!(message.contains("option `host`") && message.contains("grants"), "{message}");
}

#[tokio::test]
async fn events_route_to_the_named_publisher_or_to_default() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(
        &config(&format!(
            "[publishers.default]\nbackend = \"redis-stream\"\n[publishers.default.options]\nport = {}\n",
            redis.port()
        )),
        None,
    )
    .await
    .unwrap();
    assert!(registry.route("").is_ok());
    assert!(registry.route("default").is_ok());
    let err = registry.route("nope").unwrap_err();
    assert_eq!(err.to_string(), "no publisher named `nope` is configured (configured: default)");
}

const STRICT: BuildOptions = BuildOptions { strict: true };

fn is_start_error(err: &RegistryError) -> bool {
    matches!(err, RegistryError::Publisher { cause: PublisherSetupError::Component(ComponentSetupError::Start(_)), .. })
}
