//! HTTP ingest of `broadcaster serve` over real HTTP: structured, binary and batch events
//! committed before the answer on SQLite and PostgreSQL, idempotent by id, all or nothing;
//! every bad input refused with its status and code, nothing written; bearer tokens, their
//! reach and their rate limits.

mod serve_support;

use std::time::{Duration, Instant};

use broadcaster::outbox::Status;
use broadcaster_tests::OutboxKind;
use hyper::StatusCode;
use serde_json::{Value, json};
use serve_support::{BATCH, LIMITED, OPS, STRUCTURED, Service, TENANT_A, accepted, event, id_of};

#[tokio::test]
async fn structured_binary_and_batch_events_are_committed_before_the_answer() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = Service::start(kind).await;

        let mut structured = event("order.created");
        structured["publisher_config"] = json!({"priority": "high"});
        let id = id_of(&structured);
        let answer = service.structured("orders", &structured).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);
        assert_eq!(answer.json(), accepted(&[&id], &[]), "{kind:?}");
        let stored = service.stored(&id).await;
        let fields = (stored.0.as_str(), stored.1.as_str(), stored.2, stored.3.as_str());
        assert_eq!(fields, ("order.created", "/shop", Some(json!({"order": 42})), "orders"), "{kind:?}");
        assert_eq!(stored.4, json!({"priority": "high"}), "{kind:?}");
        let rows = service.store.find(std::slice::from_ref(&id)).await.unwrap();
        assert_eq!(rows.len(), 1, "{kind:?}");
        assert_eq!((rows[0].status, rows[0].publisher_backend.as_str()), (Status::Pending, "orders"));

        let binary_id = uuid::Uuid::new_v4().to_string();
        let headers = [
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", binary_id.as_str()),
            ("ce-type", "order.paid"),
            ("ce-source", "/billing"),
            ("broadcaster-publisher-config", r#"{"shard": "7"}"#),
        ];
        let answer = service.post("audit", Some(OPS), &headers, r#"{"amount": 5}"#).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);
        assert_eq!(answer.json(), accepted(&[&binary_id], &[]), "{kind:?}");
        let stored = service.stored(&binary_id).await;
        let fields = (stored.0.as_str(), stored.1.as_str(), stored.2, stored.3.as_str());
        assert_eq!(fields, ("order.paid", "/billing", Some(json!({"amount": 5})), "audit"), "{kind:?}");
        assert_eq!(stored.4, json!({"shard": "7"}), "{kind:?}");

        let batch = [event("a"), event("b"), event("c")];
        let ids: Vec<String> = batch.iter().map(id_of).collect();
        let answer = service.batch("orders", &batch).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(answer.json(), accepted(&ids, &[]), "{kind:?}");
        assert_eq!(service.rows().await, 5, "{kind:?}");
        for (id, event_type) in ids.iter().zip(["a", "b", "c"]) {
            let stored = service.stored(id).await;
            assert_eq!((stored.0.as_str(), stored.3.as_str()), (event_type, "orders"), "{kind:?}");
        }
    }
}

#[tokio::test]
async fn a_repeated_id_is_answered_once_stored_and_an_id_of_another_publisher_conflicts() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = Service::start(kind).await;
        let first = event("order.created");
        let id = id_of(&first);
        assert_eq!(service.structured("orders", &first).await.status, StatusCode::ACCEPTED, "{kind:?}");

        let again = service.structured("orders", &first).await;
        assert_eq!(again.status, StatusCode::OK, "{kind:?}: {}", again.body);
        assert_eq!(again.json(), accepted(&[&id], &[&id]), "{kind:?}");
        assert_eq!(service.rows().await, 1, "{kind:?}");

        let elsewhere = service.structured("audit", &first).await;
        assert_eq!((elsewhere.status, elsewhere.code()), (StatusCode::CONFLICT, "id_conflict".into()), "{kind:?}");
        assert!(!elsewhere.body.contains("orders"), "{kind:?}: another tenant's publisher is not named");
        assert_eq!(service.rows().await, 1, "{kind:?}");
        assert_eq!(service.stored(&id).await.3, "orders", "{kind:?}: the stored row is untouched");

        // A batch mixing a repeated id and a new one: only the new one is inserted.
        let new = event("order.shipped");
        let answer = service.batch("orders", &[first.clone(), new.clone()]).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);
        assert_eq!(answer.json(), accepted(&[&id, &id_of(&new)], &[&id]), "{kind:?}");
        assert_eq!(service.rows().await, 2, "{kind:?}");

        // The same new id twice in one batch: stored once, the second copy a repeat.
        let twice = event("order.twice");
        let answer = service.batch("orders", &[twice.clone(), twice.clone()]).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);
        assert_eq!(answer.json(), accepted(&[&id_of(&twice), &id_of(&twice)], &[&id_of(&twice)]), "{kind:?}");
        assert_eq!(service.rows().await, 3, "{kind:?}");

        // A batch whose last id is another publisher's: nothing of it is written.
        let fresh = event("audit.fresh");
        let answer = service.batch("audit", &[fresh.clone(), first.clone()]).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::CONFLICT, "id_conflict".into()), "{kind:?}");
        assert_eq!(service.rows().await, 3, "{kind:?}");
        assert!(service.store.find(&[id_of(&fresh)]).await.unwrap().is_empty(), "{kind:?}");
    }
}

#[tokio::test]
async fn a_batch_with_one_bad_event_writes_nothing_and_names_the_event() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = Service::start(kind).await;
        let mut batch = vec![event("a"), event("b"), event("c"), event("d")];
        batch[2].as_object_mut().unwrap().remove("type");
        let answer = service.batch("orders", &batch).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_event".into()), "{kind:?}");
        assert_eq!(answer.json()["error"]["event"], 2, "{kind:?}: {}", answer.body);
        assert_eq!(service.rows().await, 0, "{kind:?}");

        // Caught only against the columns (type over 255 characters): still named, still nothing.
        let mut batch = vec![event("a"), event("b"), event("c")];
        batch[1]["type"] = json!("t".repeat(300));
        let answer = service.batch("orders", &batch).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_event".into()), "{kind:?}");
        assert_eq!(answer.json()["error"]["event"], 1, "{kind:?}: {}", answer.body);
        assert_eq!(service.rows().await, 0, "{kind:?}");
    }
}

/// Request headers.
type Headers<'a> = Vec<(&'a str, &'a str)>;
/// A request that must be refused: what it is, its publisher, headers and body, and the
/// status and `error.code` of the answer.
type Refused<'a> = (&'a str, &'a str, Headers<'a>, String, StatusCode, &'a str);

#[tokio::test]
async fn every_bad_request_is_refused_with_its_status_and_code_and_writes_nothing() {
    let service = Service::start(OutboxKind::Sqlite).await;
    let without = |attribute: &str| {
        let mut e = event("x");
        e.as_object_mut().unwrap().remove(attribute);
        e.to_string()
    };
    let with = |attribute: &str, value: Value| {
        let mut e = event("x");
        e[attribute] = value;
        e.to_string()
    };
    let id = uuid::Uuid::new_v4().to_string();
    let binary = |extra: &[(&'static str, &'static str)]| {
        let mut headers = vec![("ce-specversion", "1.0"), ("ce-type", "x"), ("ce-source", "/s")];
        headers.extend_from_slice(extra);
        headers
    };
    let s = [("content-type", STRUCTURED)];
    let b = [("content-type", BATCH)];
    let binary_data = {
        let mut e = event("x");
        e.as_object_mut().unwrap().remove("data");
        e["data_base64"] = json!("AAEC");
        e.to_string()
    };
    let over_max_body = with("data", json!({"blob": "x".repeat(3000)}));
    let six: Vec<Value> = (0..6).map(|_| event("x")).collect();
    #[rustfmt::skip]
    let cases: Vec<Refused<'_>> = vec![
        ("malformed JSON", "orders", s.to_vec(), r#"{"id": "#.into(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("not an object", "orders", s.to_vec(), "[1]".into(), StatusCode::BAD_REQUEST, "invalid_event"),
        ("no id", "orders", s.to_vec(), without("id"), StatusCode::BAD_REQUEST, "invalid_event"),
        ("no type", "orders", s.to_vec(), without("type"), StatusCode::BAD_REQUEST, "invalid_event"),
        ("no source", "orders", s.to_vec(), without("source"), StatusCode::BAD_REQUEST, "invalid_event"),
        ("no specversion", "orders", s.to_vec(), without("specversion"), StatusCode::BAD_REQUEST, "invalid_event"),
        ("empty type", "orders", s.to_vec(), with("type", json!("")), StatusCode::BAD_REQUEST, "invalid_event"),
        ("numeric id", "orders", s.to_vec(), with("id", json!(7)), StatusCode::BAD_REQUEST, "invalid_event"),
        ("id not a UUID", "orders", s.to_vec(), with("id", json!("order-1")), StatusCode::BAD_REQUEST, "invalid_event"),
        ("unknown publisher", "nope", s.to_vec(), event("x").to_string(), StatusCode::NOT_FOUND, "unknown_publisher"),
        ("body over max_body", "orders", s.to_vec(), over_max_body, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        ("6 events, max 5", "orders", b.to_vec(), json!(six).to_string(), StatusCode::PAYLOAD_TOO_LARGE, "too_many_events"),
        ("batch not an array", "orders", b.to_vec(), event("x").to_string(), StatusCode::BAD_REQUEST, "invalid_batch"),
        ("empty batch", "orders", b.to_vec(), "[]".into(), StatusCode::BAD_REQUEST, "invalid_batch"),
        ("text/plain", "orders", vec![("content-type", "text/plain")], event("x").to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("no content type", "orders", vec![], event("x").to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("plain JSON", "orders", vec![("content-type", "application/json")], event("x").to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("publisher_config a list", "orders", s.to_vec(), with("publisher_config", json!(["high"])), StatusCode::BAD_REQUEST, "invalid_publisher_config"),
        ("publisher_config a string", "orders", s.to_vec(), with("publisher_config", json!("high")), StatusCode::BAD_REQUEST, "invalid_publisher_config"),
        ("traceparent not W3C", "orders", s.to_vec(), with("traceparent", json!("00-x")), StatusCode::BAD_REQUEST, "invalid_event"),
        ("binary data", "orders", s.to_vec(), binary_data, StatusCode::BAD_REQUEST, "invalid_event"),
        ("binary: no ce-id", "orders", binary(&[("content-type", "application/json")]), "{}".into(), StatusCode::BAD_REQUEST, "invalid_event"),
    ];
    #[rustfmt::skip]
    let mut binary_cases: Vec<(&str, Headers<'_>, &str, &str)> = vec![
        ("binary: id not a UUID", binary(&[("ce-id", "order-1")]), "{}", "invalid_event"),
        ("binary: not JSON as declared", binary(&[("content-type", "application/json")]), "{", "invalid_event"),
        ("binary: octet-stream", binary(&[("content-type", "application/octet-stream")]), "\u{1}", "invalid_event"),
        ("binary: traceparent not W3C", binary(&[("ce-traceparent", "00-x")]), "{}", "invalid_event"),
        ("binary: config a list", binary(&[("broadcaster-publisher-config", "[1]")]), "{}", "invalid_publisher_config"),
        ("binary: config not JSON", binary(&[("broadcaster-publisher-config", "high")]), "{}", "invalid_publisher_config"),
    ];
    for (_, headers, _, _) in &mut binary_cases[1..] {
        headers.push(("ce-id", id.as_str()));
    }
    let cases =
        cases.into_iter().chain(binary_cases.into_iter().map(|(what, headers, body, code)| {
            (what, "orders", headers, body.to_string(), StatusCode::BAD_REQUEST, code)
        }));
    for (what, publisher, headers, body, status, code) in cases {
        let answer = service.post(publisher, Some(OPS), &headers, &body).await;
        assert_eq!((answer.status, answer.code()), (status, code.to_string()), "{what}: {}", answer.body);
        assert_eq!(answer.json()["error"]["status"], status.as_u16(), "{what}");
        assert!(answer.json()["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
        assert_eq!(service.rows().await, 0, "{what}: nothing written");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_without_a_declared_length_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service = Service::start(OutboxKind::Sqlite).await;
    let mut stream = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    let head = format!(
        "POST /v1/publishers/orders/events HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {OPS}\r\n\
         content-type: {STRUCTURED}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        service.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = "x".repeat(1024);
    for _ in 0..4 {
        if stream.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).await.is_err() {
            break; // The server answered and closed early.
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("body_too_large"), "{response}");
    assert_eq!(service.rows().await, 0);
}

#[tokio::test]
async fn ingest_needs_a_known_bearer_token_that_reaches_the_publisher() {
    let service = Service::start(OutboxKind::Sqlite).await;
    let body = |e: &Value| e.to_string();
    let s = [("content-type", STRUCTURED)];

    let anonymous = service.post("tenant-a", None, &s, &body(&event("x"))).await;
    assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let wrong = service.post("tenant-a", Some("tenant-a-token-012345678"), &s, &body(&event("x"))).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let basic = [("content-type", STRUCTURED), ("authorization", "Basic dGVuYW50LWE6eA==")];
    let basic = service.post("tenant-a", None, &basic, &body(&event("x"))).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(service.rows().await, 0);
    // The scheme is case-insensitive (RFC 7235).
    let upper = format!("BEARER  {TENANT_A}");
    let upper = [("content-type", STRUCTURED), ("authorization", upper.as_str())];
    assert_eq!(service.post("tenant-a", None, &upper, &body(&event("x"))).await.status, StatusCode::ACCEPTED);

    for publisher in ["tenant-a", "tenant-a-orders"] {
        let answer = service.post(publisher, Some(TENANT_A), &s, &body(&event("x"))).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{publisher}: {}", answer.body);
    }
    assert_eq!(service.rows().await, 3);
    // Out of reach, whether the publisher exists or not (403 before 404: nothing is told).
    for publisher in ["tenant-b", "orders", "tenant-ab", "tenant-a-unknown", "nope"] {
        let answer = service.post(publisher, Some(TENANT_A), &s, &body(&event("x"))).await;
        let expected = if publisher == "tenant-a-unknown" {
            (StatusCode::NOT_FOUND, "unknown_publisher".to_string())
        } else {
            (StatusCode::FORBIDDEN, "forbidden".to_string())
        };
        assert_eq!((answer.status, answer.code()), expected, "{publisher}: {}", answer.body);
    }
    assert_eq!(service.rows().await, 3);
}

#[tokio::test]
async fn a_token_over_its_rate_is_told_when_to_retry_and_a_batch_over_its_burst_never_fits() {
    let service = Service::start(OutboxKind::Sqlite).await;
    let s = [("content-type", STRUCTURED)];
    let started = Instant::now();
    for n in 0..3 {
        let answer = service.post("limited", Some(LIMITED), &s, &event("x").to_string()).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "event {n}: {}", answer.body);
    }
    let limited = service.post("limited", Some(LIMITED), &s, &event("x").to_string()).await;
    assert!(started.elapsed() < Duration::from_millis(400), "the bucket must not have refilled yet");
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into()));
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    assert_eq!(service.rows().await, 3);

    let four: Vec<Value> = (0..4).map(|_| event("x")).collect();
    let answer = service.post("limited", Some(LIMITED), &[("content-type", BATCH)], &json!(four).to_string()).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::PAYLOAD_TOO_LARGE, "too_many_events".into()));
    assert_eq!(service.rows().await, 3);

    // Other tokens have their own bucket; after Retry-After this one fits again.
    assert_eq!(service.structured("orders", &event("x")).await.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let later = service.post("limited", Some(LIMITED), &s, &event("x").to_string()).await;
    assert_eq!(later.status, StatusCode::ACCEPTED, "{}", later.body);
    assert_eq!(service.rows().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_one_id_store_it_once() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = std::sync::Arc::new(Service::start(kind).await);
        let same = event("order.created");
        let posts = (0..8).map(|n| {
            let (service, same) = (service.clone(), same.clone());
            // Half to another publisher: the id is either's, never both's.
            tokio::spawn(async move { service.structured(if n % 2 == 0 { "orders" } else { "audit" }, &same).await })
        });
        let mut statuses = Vec::new();
        for post in posts.collect::<Vec<_>>() {
            statuses.push(post.await.unwrap().status);
        }
        let count = |status| statuses.iter().filter(|s| **s == status).count();
        assert_eq!(count(StatusCode::ACCEPTED), 1, "{kind:?}: {statuses:?}");
        assert_eq!((count(StatusCode::OK), count(StatusCode::CONFLICT)), (3, 4), "{kind:?}: {statuses:?}");
        assert_eq!(service.rows().await, 1, "{kind:?}");
    }
}

#[tokio::test]
async fn an_event_the_database_cannot_hold_is_the_senders_fault_not_an_outage() {
    for kind in [OutboxKind::Postgres, OutboxKind::Sqlite] {
        let service = Service::start(kind).await;
        let mut in_type = event("x");
        in_type["type"] = json!("order\u{0}created");
        let mut in_data = event("x");
        in_data["data"] = json!({"note": "a\u{0}b"});
        for (what, bad) in [("NUL in type", in_type), ("NUL in data", in_data)] {
            let answer = service.structured("orders", &bad).await;
            assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_event".into()), "{what}");
            assert_eq!(service.rows().await, 0, "{what}");
        }
    }
}
