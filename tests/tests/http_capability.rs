//! Outbound HTTP: the `webhook` component delivers events as the CloudEvents HTTP binding
//! says, signed; the `http` grant's allow-list, private-address rule and redirects hold
//! against a hostile component; secrets never show.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use broadcaster::config::Config;
use broadcaster::event::{OutboxEvent, Payload};
use broadcaster::host::ComponentSetupError;
use broadcaster::publisher::{PublishError, Publisher};
use broadcaster::registry::{PublisherRegistry, PublisherSetupError, RegistryError};
use broadcaster_tests::{RedisServer, components};
use hmac::{Hmac, Mac};
use serde_json::json;

#[derive(Clone, Default)]
struct Endpoint {
    received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    status: Arc<Mutex<u16>>,
    hits: Arc<Mutex<u32>>,
}

/// An HTTP server on a free loopback port; returns its port.
async fn serve(endpoint: Endpoint, redirect_to: Option<u16>) -> u16 {
    let app = Router::new()
        .route(
            "/hook",
            post(|State(e): State<Endpoint>, headers: HeaderMap, body: Bytes| async move {
                e.received.lock().unwrap().push((headers, body));
                StatusCode::from_u16(*e.status.lock().unwrap()).unwrap()
            }),
        )
        .route(
            "/ok",
            get(|State(e): State<Endpoint>| async move {
                *e.hits.lock().unwrap() += 1;
                "fine"
            }),
        )
        .route(
            "/redirect",
            get(move || async move {
                Redirect::to(&format!("http://127.0.0.1:{}/ok", redirect_to.unwrap_or(1))).into_response()
            }),
        )
        .with_state(endpoint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn config(text: &str) -> Config {
    Config::from_toml(text, "http.toml".as_ref(), Vec::new()).unwrap()
}

fn event() -> OutboxEvent {
    let mut event = OutboxEvent::new("order.created", "/shop");
    event.subject = "order/7".into();
    event.data = Payload::Json(json!({"order": 7, "name": "Zoë"}));
    event
}

fn webhook_config(dir: &std::path::Path, port: u16, mode: &str) -> Config {
    std::fs::write(dir.join("token"), "Bearer tenant-token-123\n").unwrap();
    std::fs::write(dir.join("key"), "hmac-key-456").unwrap();
    config(&format!(
        r#"
        [publishers.hook]
        component = "{webhook}"
        [publishers.hook.options]
        url = "http://127.0.0.1:{port}/hook?tenant=a"
        mode = "{mode}"
        headers = {{ Authorization = {{ secret_file = "{dir}/token" }} }}
        secret = {{ secret_file = "{dir}/key" }}
        [publishers.hook.grants]
        http = {{ allow = ["http://127.0.0.1:{port}"], timeout = "2s" }}
        "#,
        webhook = components::WEBHOOK,
        dir = dir.display(),
    ))
}

#[tokio::test]
async fn the_webhook_posts_the_seeds_cloud_event_json_signed_with_hmac() {
    let endpoint = Endpoint::default();
    *endpoint.status.lock().unwrap() = 202;
    let port = serve(endpoint.clone(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = PublisherRegistry::build(&webhook_config(dir.path(), port, "structured"), None).await.unwrap();
    let event = event();
    registry.get("hook").unwrap().publish(&event).await.unwrap();
    let received = endpoint.received.lock().unwrap();
    let (headers, body) = &received[0];
    assert_eq!(body.as_ref(), event.cloud_event_json().as_bytes());
    assert_eq!(headers["content-type"], "application/cloudevents+json");
    assert_eq!(headers["authorization"], "Bearer tenant-token-123");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hmac-key-456").unwrap();
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(headers["x-broadcaster-signature"], format!("sha256={expected}").as_str());
}

#[tokio::test]
async fn the_webhook_binary_mode_sends_attributes_as_ce_headers_and_the_data_as_body() {
    let endpoint = Endpoint::default();
    *endpoint.status.lock().unwrap() = 200;
    let port = serve(endpoint.clone(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = PublisherRegistry::build(&webhook_config(dir.path(), port, "binary"), None).await.unwrap();
    let event = event();
    registry.get("hook").unwrap().publish(&event).await.unwrap();
    let received = endpoint.received.lock().unwrap();
    let (headers, body) = &received[0];
    assert_eq!(body.as_ref(), br#"{"order": 7, "name": "Zo\u00eb"}"#);
    assert_eq!(headers["ce-id"], event.id.as_str());
    assert_eq!(headers["ce-type"], "order.created");
    assert_eq!(headers["ce-source"], "/shop");
    assert_eq!(headers["ce-subject"], "order/7");
    assert_eq!(headers["ce-time"], event.time().as_str());
    assert_eq!(headers["content-type"], "application/json");
}

#[tokio::test]
async fn the_endpoints_answer_decides_transient_or_permanent() {
    let endpoint = Endpoint::default();
    let port = serve(endpoint.clone(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = PublisherRegistry::build(&webhook_config(dir.path(), port, "structured"), None).await.unwrap();
    let hook = registry.get("hook").unwrap();
    for (status, transient) in [(503, true), (429, true), (408, true), (400, false), (404, false)] {
        *endpoint.status.lock().unwrap() = status;
        let err = hook.publish(&event()).await.unwrap_err();
        assert_eq!(matches!(err, PublishError::Transient(_)), transient, "{status}: {err}");
        assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
    }
}

#[tokio::test]
async fn a_component_importing_http_without_an_http_grant_is_refused_at_start() {
    let err = PublisherRegistry::build(
        &config(&format!(
            "[publishers.hook]\ncomponent = \"{}\"\n[publishers.hook.options]\nurl = \"https://example.com/\"\n",
            components::WEBHOOK
        )),
        None,
    )
    .await
    .unwrap_err();
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
    assert!(
        err.to_string().contains("wasi:http/outgoing-handler") && err.to_string().contains("grants] http"),
        "{err}"
    );
}

async fn http_attack(url: &str, allow: &str) -> String {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(
        &config(&format!(
            r#"
            [publishers.attacker]
            component = "{attacker}"
            [publishers.attacker.options]
            attack = "http-get"
            stream_name = "attacker:own"
            url = "{url}"
            [publishers.attacker.grants]
            http = {{ allow = [{allow}], timeout = "2s" }}
            redis = {{ host = "127.0.0.1", port = {port}, streams = ["attacker:*"] }}
            "#,
            attacker = components::ATTACKER,
            port = redis.port(),
        )),
        None,
    )
    .await
    .unwrap();
    match registry.get("attacker").unwrap().publish(&event()).await {
        Err(PublishError::Permanent(outcome)) => outcome,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn http_reaches_only_allowed_origins_and_never_a_private_address_it_does_not_name() {
    let internal = Endpoint::default();
    let internal_port = serve(internal.clone(), None).await;
    let allowed = Endpoint::default();
    let allowed_port = serve(allowed.clone(), Some(internal_port)).await;
    let allow = format!("\"http://127.0.0.1:{allowed_port}\"");

    // The allowed origin works.
    let ok = http_attack(&format!("http://127.0.0.1:{allowed_port}/ok"), &allow).await;
    assert!(ok.ends_with("HTTP 200"), "{ok}");
    assert_eq!(*allowed.hits.lock().unwrap(), 1);

    // A host (here: a port) not on the list.
    let unlisted = http_attack(&format!("http://127.0.0.1:{internal_port}/ok"), &allow).await;
    assert!(unlisted.contains("HttpRequestDenied"), "{unlisted}");

    // A redirect from an allowed origin to one that is not: the second request is refused.
    let redirected = http_attack(&format!("http://127.0.0.1:{allowed_port}/redirect"), &allow).await;
    assert!(
        redirected.contains(&format!("127.0.0.1:{internal_port}")) && redirected.contains("HttpRequestDenied"),
        "{redirected}"
    );
    assert_eq!(*internal.hits.lock().unwrap(), 0, "the internal server was never reached");

    // A listed host name that resolves to loopback: loopback is not named, so it is refused.
    let hostname = String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap();
    let hostname = hostname.trim();
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((hostname, 80)).await.unwrap().collect();
    assert!(
        resolved.iter().all(|a| a.ip().is_loopback() || !broadcaster::host::capabilities::http::is_public(a.ip())),
        "this test needs the machine's host name ({hostname}) to resolve to a private or loopback address: {resolved:?}"
    );
    let sneaky =
        http_attack(&format!("http://{hostname}:{allowed_port}/ok"), &format!("\"http://{hostname}:{allowed_port}\""))
            .await;
    assert!(sneaky.contains("HttpRequestDenied"), "{sneaky}");
    assert_eq!(*allowed.hits.lock().unwrap(), 1, "no request got through");
}

#[tokio::test]
async fn a_secret_never_shows_in_errors_logs_or_health() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "super-secret-token-789").unwrap();
    let registry = PublisherRegistry::build(
        &config(&format!(
            r#"
            [publishers.attacker]
            component = "{attacker}"
            [publishers.attacker.options]
            attack = "leak"
            stream_name = "attacker:own"
            url = {{ secret_file = "{dir}/token" }}
            [publishers.attacker.grants]
            redis = {{ host = "127.0.0.1", port = {port}, streams = ["attacker:*"] }}
            http = {{ allow = [] }}
            "#,
            attacker = components::ATTACKER,
            dir = dir.path().display(),
            port = redis.port(),
        )),
        None,
    )
    .await
    .unwrap();
    let publisher = registry.get("attacker").unwrap();
    let err = publisher.publish(&event()).await.unwrap_err().to_string();
    assert!(err.contains("leaking ***") && !err.contains("super-secret"), "{err}");
    let health = publisher.health().await;
    assert!(!health.detail.contains("super-secret"), "{}", health.detail);
    let Publisher::Component(component) = publisher else { panic!() };
    assert!(!format!("{component:?}").contains("super-secret"));
}
