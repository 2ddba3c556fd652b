//! The native `redis-stream` backend and the `redis-stream` component write the same entry
//! for the same event, field for field (only the entry id differs), one event at a time or a
//! batch at once, and what they write is what the seed's consumers read. So does a component
//! built against contract 0.1.0. An event with a `traceparent` gets the same extra fields from
//! every one of them.

use broadcaster::config::Config;
use broadcaster::event::{OutboxEvent, Payload};
use broadcaster::publisher::{Attempt, PublishError};
use broadcaster::registry::PublisherRegistry;
use broadcaster_tests::{RedisServer, components};
use redis::Commands;
use serde_json::json;

type Entry = (String, Vec<(String, String)>);

fn config(redis: &RedisServer) -> Config {
    let text = format!(
        r#"
        [publishers.native]
        backend = "redis-stream"
        [publishers.native.options]
        host = "127.0.0.1"
        port = {port}
        stream_name = "native"

        [publishers.component]
        component = "{component}"
        [publishers.component.options]
        stream_name = "component"
        [publishers.component.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["component"] }}

        [publishers.python]
        component = "{python}"
        [publishers.python.options]
        stream_name = "python"
        [publishers.python.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["python"] }}

        [publishers.js]
        component = "{js}"
        [publishers.js.options]
        stream_name = "js"
        [publishers.js.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["js"] }}

        [publishers.v01]
        component = "{v01}"
        [publishers.v01.options]
        stream_name = "v01"
        [publishers.v01.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["v01"] }}
        "#,
        port = redis.port(),
        component = components::REDIS_STREAM,
        python = components::polyglot("python-redis-stream"),
        js = components::polyglot("js-redis-stream"),
        v01 = components::STREAM_V0_1,
    );
    Config::from_toml(&text, "parity.toml".as_ref(), Vec::new()).unwrap()
}

/// Every entry of `stream`, fields in the order Redis stored them.
fn entries(redis: &RedisServer, stream: &str) -> Vec<Entry> {
    let mut conn = redis.client();
    let reply: redis::Value = redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(&mut conn).unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::from_redis_value(reply).unwrap();
    entries
        .into_iter()
        .map(|(id, flat)| (id, flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()))
        .collect()
}

fn sample_events() -> Vec<OutboxEvent> {
    let mut events = Vec::new();

    let mut plain = OutboxEvent::new("order.created", "/shop/orders");
    plain.data = Payload::Json(json!({"order_id": 42, "total": 12.5, "items": ["a", "b"]}));
    events.push(plain);

    let mut full = OutboxEvent::new("order.shipped", "/shop/orders");
    full.subject = "order/42".into();
    full.data_schema = "https://example.com/schemas/order.json".into();
    full.data = Payload::Json(json!({"carrier": "DHL"}));
    events.push(full);

    let mut unicode = OutboxEvent::new("user.renamed", "/accounts");
    unicode.data =
        Payload::Json(json!({"name": "Zoë Ångström 山田 😀", "note": "tab\tquote\"backslash\\", "del": "\u{7f}"}));
    events.push(unicode);

    let mut null_data = OutboxEvent::new("ping", "/health");
    null_data.data = Payload::Json(serde_json::Value::Null);
    events.push(null_data);

    let mut no_data = OutboxEvent::new("ping", "/health");
    no_data.data = Payload::None;
    no_data.data_content_type = String::new();
    events.push(no_data);

    let mut floats = OutboxEvent::new("metrics", "/m");
    floats.data = Payload::Json(json!({"one": 1.0, "big": 1e16, "small": 1e-7, "neg": -0.5, "int": 10}));
    events.push(floats);

    let mut extras = OutboxEvent::new("order.created", "/shop/orders");
    extras.data = Payload::Json(json!([1, 2, 3]));
    extras.publisher_config.insert("tenant".into(), json!("acme"));
    extras.publisher_config.insert("priority".into(), json!(5));
    extras.publisher_config.insert("ratio".into(), json!(0.25));
    extras.publisher_config.insert("flag".into(), json!(true));
    extras.publisher_config.insert("tags".into(), json!({"region": "eu", "list": [1, null]}));
    extras.publisher_config.insert("unicode".into(), json!("café"));
    events.push(extras);

    let mut at_whole_second = OutboxEvent::new("tick", "/clock");
    at_whole_second.created_at = chrono::DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z").unwrap();
    events.push(at_whole_second);

    // From `broadcaster send`: extensions (sorted by name), text and binary data.
    let sent = broadcaster::cloudevent_input::parse_cloud_event_json(
        r#"{"specversion": "1.0", "id": "sent-1", "type": "t", "source": "/s", "time": "2026-11-29T10:00:00.5+02:00",
            "zeta": "last", "alpha": "first", "count": 3, "data": {"big": 12345678901234, "neg": -0.0, "tiny": 1.5e-7}}"#,
    )
    .unwrap();
    events.push(sent);
    let mut text = OutboxEvent::new("text", "/s");
    text.data_content_type = "text/plain".into();
    text.data = Payload::Text("plain text, Zoë".into());
    events.push(text);
    let mut binary = OutboxEvent::new("binary", "/s");
    binary.data_content_type = "application/octet-stream".into();
    binary.data = Payload::Binary(vec![0, 1, 2, 255]);
    events.push(binary);

    // Trace context (HTTP ingest's `traceparent`, read back from the outbox sorted by name).
    let mut traced = OutboxEvent::new("order.created", "/shop/orders");
    traced.data = Payload::Json(json!({"order_id": 7}));
    traced.publisher_config.insert("tenant".into(), json!("acme"));
    traced.extensions = vec![
        ("traceparent".into(), TRACEPARENT.into()),
        ("tracestate".into(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into()),
    ];
    events.push(traced);

    events
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The publishers whose entries must all be equal: the native backend, the `redis-stream`
/// component in Rust, Python and JavaScript, and the Rust one as built against 0.1.0.
const IMPLEMENTATIONS: [&str; 5] = ["native", "component", "python", "js", "v01"];

#[tokio::test]
async fn the_native_backend_and_the_rust_python_and_js_components_write_equal_entries() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(&config(&redis), None).await.unwrap();
    let events = sample_events();
    for event in &events {
        for name in IMPLEMENTATIONS {
            registry.get(name).unwrap().publish(event).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let native = entries(&redis, "native");
    assert_eq!(native.len(), events.len());
    for name in &IMPLEMENTATIONS[1..] {
        let theirs = entries(&redis, if *name == "component" { "component" } else { name });
        assert_eq!(theirs.len(), events.len(), "{name}");
        for ((event, (_, native_fields)), (_, their_fields)) in events.iter().zip(&native).zip(&theirs) {
            assert_eq!(native_fields, their_fields, "{name}: entries differ for event {}", event.event_type);
        }
    }
    for (event, (_, native_fields)) in events.iter().zip(&native) {
        // And all are exactly the seed's rendering of the event.
        assert_eq!(native_fields, &event.stream_fields().unwrap());
    }
    // Spot checks against the seed's exact bytes.
    let unicode = &native[2].1;
    let cloud_event = &unicode.iter().find(|(k, _)| k == "cloud_event").unwrap().1;
    assert!(
        cloud_event.contains(r#""data": {"name": "Zo\u00eb \u00c5ngstr\u00f6m \u5c71\u7530 \ud83d\ude00", "note": "tab\tquote\"backslash\\", "del": "\u007f"}"#),
        "{cloud_event}"
    );
    let extras = &native[6].1;
    let names: Vec<&str> = extras.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "event_id",
            "event_type",
            "source",
            "timestamp",
            "cloud_event",
            "tenant",
            "priority",
            "ratio",
            "flag",
            "tags",
            "unicode"
        ]
    );
    assert_eq!(extras[9].1, r#"{"region": "eu", "list": [1, null]}"#);
    assert_eq!(extras[10].1, "café");
    assert_eq!(native[7].1[3].1, "2026-11-29T10:00:00+00:00");
    let null_cloud_event = &native[3].1[4].1;
    assert!(!null_cloud_event.contains("\"data\""), "{null_cloud_event}");
    let sent = &native[8].1;
    assert_eq!(names_of(sent)[5..], ["alpha", "count", "zeta"], "extensions sorted by name, after the seed's fields");
    let traced = &native[events.len() - 1].1;
    assert_eq!(names_of(traced)[5..], ["tenant", "traceparent", "tracestate"]);
    assert_eq!(traced[6].1, TRACEPARENT);
    let shipped = &native[1].1[4].1;
    assert!(shipped.contains(r#""subject": "order/42", "datacontenttype": "application/json", "dataschema": "https://example.com/schemas/order.json""#), "{shipped}");
}

fn names_of(fields: &[(String, String)]) -> Vec<&str> {
    fields.iter().map(|(name, _)| name.as_str()).collect()
}

#[tokio::test]
async fn a_batch_through_every_component_writes_the_entries_the_native_batch_writes() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(&config(&redis), None).await.unwrap();
    let events = sample_events();
    for name in IMPLEMENTATIONS {
        let attempts = registry.get(name).unwrap().publish_batch(&events).await;
        assert!(attempts.iter().all(|a| *a == Attempt::Done(Ok(()))), "{name}: {attempts:?}");
    }
    let native = entries(&redis, "native");
    assert_eq!(native.len(), events.len());
    for (event, (_, fields)) in events.iter().zip(&native) {
        assert_eq!(fields, &event.stream_fields().unwrap());
    }
    for name in &IMPLEMENTATIONS[1..] {
        let theirs: Vec<_> = entries(&redis, name).into_iter().map(|(_, fields)| fields).collect();
        let ours: Vec<_> = native.iter().map(|(_, fields)| fields.clone()).collect();
        assert_eq!(theirs, ours, "{name}: a batch's entries differ from the native backend's");
    }
}

#[tokio::test]
async fn a_publisher_config_key_or_extension_colliding_with_another_field_is_a_permanent_error_for_all() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(&config(&redis), None).await.unwrap();
    let mut event = OutboxEvent::new("order.created", "/shop");
    event.publisher_config.insert("event_id".into(), json!("forged"));
    for name in IMPLEMENTATIONS {
        let err = registry.get(name).unwrap().publish(&event).await.unwrap_err();
        assert!(matches!(&err, PublishError::Permanent(m) if m.contains("event_id")), "{name}: {err}");
    }
    let mut extension = OutboxEvent::new("order.created", "/shop");
    extension.publisher_config.insert("tenant".into(), json!("a"));
    extension.extensions = vec![("tenant".into(), "b".into())];
    for name in IMPLEMENTATIONS {
        let err = registry.get(name).unwrap().publish(&extension).await.unwrap_err();
        let refused =
            matches!(&err, PublishError::Permanent(m) if m.contains("extension attribute \"tenant\" collides"));
        assert!(refused, "{name}: {err}");
    }
    let mut batch = vec![OutboxEvent::new("ok", "/s"), event.clone()];
    batch[0].publisher_config.insert("fine".into(), json!(1));
    let results = registry.get("native").unwrap().publish_batch(&batch).await;
    assert_eq!(results[0], Attempt::Done(Ok(())));
    assert!(matches!(&results[1], Attempt::Done(Err(PublishError::Permanent(_)))));
    let mut conn = redis.client();
    assert_eq!(conn.xlen::<_, usize>("native").unwrap(), 1, "only the good event of the batch is written");
    assert_eq!(conn.xlen::<_, usize>("component").unwrap(), 0);
    // The same batch through each component: the good event written, the bad one refused.
    for name in &IMPLEMENTATIONS[1..] {
        let results = registry.get(name).unwrap().publish_batch(&batch).await;
        assert_eq!(results[0], Attempt::Done(Ok(())), "{name}");
        assert!(
            matches!(&results[1], Attempt::Done(Err(PublishError::Permanent(m))) if m.contains("event_id")),
            "{name}"
        );
        assert_eq!(conn.xlen::<_, usize>(*name).unwrap(), 1, "{name}: only the good event of the batch is written");
    }
}

#[tokio::test]
async fn the_seeds_consumer_reads_type_and_id_from_cloud_event() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(&config(&redis), None).await.unwrap();
    let events = sample_events();
    for event in &events {
        registry.get("component").unwrap().publish(event).await.unwrap();
    }
    // What the seed's docs do: XREAD from 0, json.loads(cloud_event), read type and id.
    let mut conn = redis.client();
    let reply: redis::streams::StreamReadReply =
        conn.xread_options(&["component"], &["0"], &redis::streams::StreamReadOptions::default().count(100)).unwrap();
    let read = &reply.keys[0].ids;
    assert_eq!(read.len(), events.len());
    for (entry, event) in read.iter().zip(&events) {
        let text: String = entry.get("cloud_event").unwrap();
        let cloud_event: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(cloud_event["type"], event.event_type.as_str());
        assert_eq!(cloud_event["id"], event.id.as_str());
        assert_eq!(cloud_event["specversion"], "1.0");
    }
}

#[tokio::test]
async fn a_python_consumer_with_the_cloudevents_sdk_reads_the_entries() {
    let redis = RedisServer::start();
    let registry = PublisherRegistry::build(&config(&redis), None).await.unwrap();
    let events = sample_events();
    for event in &events {
        registry.get("native").unwrap().publish(event).await.unwrap();
        registry.get("component").unwrap().publish(event).await.unwrap();
    }
    let script = r#"
import base64, json, sys
import redis
from cloudevents.core.formats.json import JSONFormat

r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), db=0)
for stream in ("native", "component"):
    messages = r.xread({stream: "0"}, count=100, block=1000)
    for stream_name, stream_messages in messages:
        for message_id, message_data in stream_messages:
            # The seed's documented consumer...
            cloud_event = json.loads(message_data[b"cloud_event"].decode("utf-8"))
            # Byte for byte what the seed's json.dumps(event.to_cloud_event()) writes.
            assert json.dumps(cloud_event) == message_data[b"cloud_event"].decode("utf-8")
            # ...and the CloudEvents SDK reading the same JSON.
            event = JSONFormat().read(None, message_data[b"cloud_event"])
            assert event.get_id() == cloud_event["id"] == message_data[b"event_id"].decode()
            assert event.get_type() == cloud_event["type"] == message_data[b"event_type"].decode()
            assert event.get_time().isoformat() == message_data[b"timestamp"].decode()
            expected = cloud_event.get("data")
            if "data_base64" in cloud_event:
                expected = base64.b64decode(cloud_event["data_base64"])
            assert event.get_data() == expected, (event.get_data(), expected)
            print(stream, cloud_event["type"], cloud_event["id"])
"#;
    let python = std::env::var("PYTHON_FOR_TESTS").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(redis.port().to_string())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}"));
    assert!(
        output.status.success(),
        "the Python consumer failed (it needs `pip install redis cloudevents`; scripts/test installs them \
         and sets PYTHON_FOR_TESTS):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2 * events.len(), "{stdout}");
    for (line, event) in lines.iter().zip(&events) {
        assert_eq!(*line, format!("native {} {}", event.event_type, event.id));
    }
    for (line, event) in lines[events.len()..].iter().zip(&events) {
        assert_eq!(*line, format!("component {} {}", event.event_type, event.id));
    }
}
