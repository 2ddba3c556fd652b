//! Production connection options, for a native publisher and a component's `redis` grant
//! alike: TLS (`tls` table or a `rediss://` url, mutual TLS), ACL users limited to some keys,
//! passwords from secret references; against real servers.

use std::path::Path;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::OutboxEvent;
use broadcaster::publisher::{PublishError, Publisher};
use broadcaster::registry::PublisherRegistry;
use broadcaster_tests::{RedisServer, TlsRedisServer, components};
use redis::Commands;

/// A native publisher `native` and a component publisher `component` (the stock
/// `redis-stream` component) writing to `stream`, both with the same connection options
/// (TOML inline-table body, like `host = "127.0.0.1", port = 1`).
fn config_in(dir: &Path, connection: &str, stream: &str) -> Config {
    let text = format!(
        r#"
        [publishers.native]
        backend = "redis-stream"
        options = {{ {connection}, stream_name = "{stream}", connect_timeout = 2, socket_timeout = 2 }}

        [publishers.component]
        component = "{component}"
        options = {{ stream_name = "{stream}" }}
        grants.redis = {{ {connection}, streams = ["{stream}"], connect_timeout = 2, socket_timeout = 2 }}
        limits.call_timeout = "5s"
        limits.host_call_timeout = "4s"
        "#,
        component = components::REDIS_STREAM,
    );
    Config::from_toml(&text, &dir.join("broadcaster.toml"), Vec::new()).unwrap()
}

async fn publish_through_both(registry: &PublisherRegistry) -> Vec<(&'static str, Result<(), PublishError>)> {
    let mut outcomes = Vec::new();
    for name in ["native", "component"] {
        let publisher = registry.get(name).unwrap();
        outcomes.push((name, publisher.publish(&OutboxEvent::new("tls.checked", "/t")).await));
    }
    outcomes
}

async fn eventually_healthy(publisher: &Publisher) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = publisher.health().await;
        if health.healthy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(health.detail);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn both_kinds_of_publisher_write_over_tls_with_the_tls_table_and_with_a_rediss_url() {
    let redis = TlsRedisServer::start(false);
    let dir = redis.certificates();
    let by_table = format!("host = \"127.0.0.1\", port = {}, tls = {{ ca_file = \"ca.pem\" }}", redis.tls_port());
    let by_url = format!("url = \"rediss://127.0.0.1:{}/0\", tls = {{ ca_file = \"ca.pem\" }}", redis.tls_port());
    for (connection, stream) in [(by_table, "by-table"), (by_url, "by-url")] {
        let registry = PublisherRegistry::build(&config_in(dir, &connection, stream), None).await.unwrap();
        for name in ["native", "component"] {
            eventually_healthy(registry.get(name).unwrap()).await.unwrap_or_else(|d| panic!("{name}: {d}"));
            let health = registry.get(name).unwrap().health().await;
            if name == "native" {
                assert!(health.detail.starts_with("rediss://127.0.0.1:"), "{}", health.detail);
            }
        }
        for (name, outcome) in publish_through_both(&registry).await {
            outcome.unwrap_or_else(|err| panic!("{name} over TLS ({stream}): {err}"));
        }
        assert_eq!(redis.plain().client().xlen::<_, usize>(stream).unwrap(), 2, "{stream}");
    }
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused_as_an_outage() {
    let redis = TlsRedisServer::start(false);
    // No ca_file: the system's roots, which do not know the test CA.
    let connection = format!("host = \"127.0.0.1\", port = {}, tls = {{}}", redis.tls_port());
    let registry = PublisherRegistry::build(&config_in(redis.certificates(), &connection, "x"), None).await.unwrap();
    let health = registry.get("native").unwrap().health().await;
    assert!(!health.healthy);
    assert!(health.detail.to_lowercase().contains("certificate"), "{}", health.detail);
    for (name, outcome) in publish_through_both(&registry).await {
        assert!(matches!(outcome, Err(PublishError::Transient(_))), "{name}: {outcome:?}");
    }
    assert!(!redis.plain().client().exists::<_, bool>("x").unwrap());
    // `insecure = true` skips verification (for tests only).
    let insecure = format!("host = \"127.0.0.1\", port = {}, tls = {{ insecure = true }}", redis.tls_port());
    let registry = PublisherRegistry::build(&config_in(redis.certificates(), &insecure, "x"), None).await.unwrap();
    for (name, outcome) in publish_through_both(&registry).await {
        outcome.unwrap_or_else(|err| panic!("{name} with insecure TLS: {err}"));
    }
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let redis = TlsRedisServer::start(true);
    let port = redis.tls_port();
    let with_cert = format!(
        "host = \"127.0.0.1\", port = {port}, \
         tls = {{ ca_file = \"ca.pem\", client_cert = \"client.pem\", client_key = \"client.key\" }}"
    );
    let registry = PublisherRegistry::build(&config_in(redis.certificates(), &with_cert, "mtls"), None).await.unwrap();
    for (name, outcome) in publish_through_both(&registry).await {
        outcome.unwrap_or_else(|err| panic!("{name} with a client certificate: {err}"));
    }
    let without = format!("host = \"127.0.0.1\", port = {port}, tls = {{ ca_file = \"ca.pem\" }}");
    let registry = PublisherRegistry::build(&config_in(redis.certificates(), &without, "mtls"), None).await.unwrap();
    for (name, outcome) in publish_through_both(&registry).await {
        assert!(matches!(outcome, Err(PublishError::Transient(_))), "{name}: {outcome:?}");
    }
    assert_eq!(redis.plain().client().xlen::<_, usize>("mtls").unwrap(), 2);
}

#[tokio::test]
async fn an_acl_user_writes_its_own_keys_with_a_password_from_a_secret_file_and_is_refused_others() {
    let redis = RedisServer::start();
    redis.add_acl_user("tenant-a", "tenant-a-password", "tenant-a:*");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("redis-password"), "tenant-a-password\n").unwrap();
    let connection = format!(
        "host = \"127.0.0.1\", port = {}, username = \"tenant-a\", password = {{ secret_file = \"redis-password\" }}",
        redis.port()
    );
    let registry =
        PublisherRegistry::build(&config_in(dir.path(), &connection, "tenant-a:events"), None).await.unwrap();
    for (name, outcome) in publish_through_both(&registry).await {
        outcome.unwrap_or_else(|err| panic!("{name} as tenant-a: {err}"));
    }
    assert_eq!(redis.client().xlen::<_, usize>("tenant-a:events").unwrap(), 2);

    // A stream outside the user's keys: Redis says NOPERM, a permanent error (retrying
    // cannot help), for both kinds of publisher.
    let registry =
        PublisherRegistry::build(&config_in(dir.path(), &connection, "tenant-b:events"), None).await.unwrap();
    for (name, outcome) in publish_through_both(&registry).await {
        assert!(
            matches!(&outcome, Err(PublishError::Permanent(m)) if m.contains("NOPERM") || m.contains("permission")),
            "{name}: {outcome:?}"
        );
    }
    assert!(!redis.client().exists::<_, bool>("tenant-b:events").unwrap());

    // A wrong password is an outage (the operator fixes it; events wait), not a failed event.
    let wrong = format!("host = \"127.0.0.1\", port = {}, username = \"tenant-a\", password = \"nope\"", redis.port());
    let registry = PublisherRegistry::build(&config_in(dir.path(), &wrong, "tenant-a:events"), None).await.unwrap();
    for (name, outcome) in publish_through_both(&registry).await {
        assert!(matches!(outcome, Err(PublishError::Transient(_))), "{name}: {outcome:?}");
    }
}

#[tokio::test]
async fn url_and_host_together_are_refused_when_the_configuration_loads_naming_file_and_key() {
    let grant = format!(
        "[publishers.component]\ncomponent = \"{}\"\n\
         grants.redis = {{ url = \"redis://127.0.0.1:1/0\", host = \"127.0.0.1\", streams = [\"x\"] }}\n",
        components::REDIS_STREAM
    );
    let err = Config::from_toml(&grant, "/etc/b/broadcaster.toml".as_ref(), Vec::new())
        .and_then(|config| broadcaster::checks::check(&config))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/b/broadcaster.toml") && err.contains("publishers.component.grants.redis.host"), "{err}");
    assert!(err.contains("give either `url` or `host`/`port`/`db`, not both"), "{err}");

    let native = "[publishers.native]\nbackend = \"redis-stream\"\n\
                  options = { url = \"redis://127.0.0.1:1/0\", db = 2 }\n";
    let err = Config::from_toml(native, "/etc/b/broadcaster.toml".as_ref(), Vec::new())
        .and_then(|config| broadcaster::checks::check(&config))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/b/broadcaster.toml") && err.contains("publishers.native.options.db"), "{err}");
    assert!(err.contains("not both"), "{err}");
}
