//! `broadcaster run` with `[telemetry] otlp_endpoint`: the publish span of an event carrying a
//! `traceparent` reaches an OTLP/HTTP receiver as a child of the caller's span, in the
//! caller's trace; an event without one sends nothing.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore};
use broadcaster_tests::RedisServer;
use redis::Commands;
use serde_json::Value;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver on a free port: every `POST /v1/traces` body (JSON) it got.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = bodies.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: String| {
            let store = store.clone();
            async move {
                assert_eq!(headers.get("content-type").unwrap(), "application/json");
                store.lock().unwrap().push(serde_json::from_str(&body).expect("an OTLP/JSON body"));
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, bodies)
}

/// Every span of every body, with its resource's `service.name`.
fn spans(bodies: &[Value]) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().unwrap() {
            let service = resource["resource"]["attributes"][0]["value"]["stringValue"].as_str().unwrap().to_string();
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    all.push((service.clone(), span.clone()));
                }
            }
        }
    }
    all
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_events_publish_span_reaches_the_otlp_collector_as_a_child_of_the_callers_span() {
    let redis = RedisServer::start();
    let (collector, bodies) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let config = dir.path().join("broadcaster.toml");
    std::fs::write(
        &config,
        format!(
            "[outbox]\nurl = \"{url}\"\n[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"relay-test\"\n{}",
            redis.native_publisher_toml("default")
        ),
    )
    .unwrap();
    let store = OutboxStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let plain = NewEvent::new("order.created", "/shop");
    let traced = NewEvent::new("order.paid", "/shop").extension("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"));
    let traced_id = traced.event.id.clone();
    store.enqueue(&[plain, traced], now_micros()).await.unwrap();

    let mut worker = Command::new(env!("CARGO_BIN_EXE_broadcaster"))
        .args(["run", "--config", config.to_str().unwrap(), "--interval", "100ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting broadcaster run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while spans(&bodies.lock().unwrap()).is_empty() {
        assert!(Instant::now() < deadline, "no span reached the collector");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(redis.client().xlen::<_, usize>("events").unwrap(), 2, "both events are published");
    let status = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(worker.wait().unwrap().success());

    let spans = spans(&bodies.lock().unwrap());
    assert_eq!(spans.len(), 1, "only the traced event has a span: {spans:?}");
    let (service, span) = &spans[0];
    assert_eq!(service, "relay-test");
    assert_eq!(span["name"], "publish");
    assert_eq!(span["traceId"], TRACE_ID, "the span is in the caller's trace");
    assert_eq!(span["parentSpanId"], PARENT_ID, "the span is the caller's span's child");
    let span_id = span["spanId"].as_str().unwrap();
    assert!(span_id.len() == 16 && span_id != PARENT_ID && span_id != "0000000000000000", "{span_id}");
    assert_eq!(span["kind"], 4, "PRODUCER");
    assert_eq!(span["status"]["code"], 1, "OK: {span}");
    assert_eq!(attribute(span, "cloudevents.event_id"), Some(traced_id.as_str()));
    assert_eq!(attribute(span, "cloudevents.event_type"), Some("order.paid"));
    assert_eq!(attribute(span, "broadcaster.publisher"), Some("default"));
    assert_eq!(attribute(span, "broadcaster.outcome"), Some("published"));
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start);
}
