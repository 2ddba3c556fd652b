//! Trace context end to end: CloudEvents extension attributes (`traceparent` above all) sent
//! over HTTP, in structured, binary and batch mode, or enqueued through the library, are kept
//! in `broadcaster_event_extensions` with their event, on SQLite and PostgreSQL, and reach the
//! Redis Stream entry as fields of their own; the bounds refuse bad ones with a 400 naming the
//! event and the attribute; the rows go with their event.

mod serve_support;

use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, enqueue};
use broadcaster_tests::{OutboxKind, TestOutbox};
use hyper::StatusCode;
use serde_json::{Value, json};
use serve_support::{OPS, Service, accepted, event, id_of};
use sqlx::Connection;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

type Fields = Vec<(String, String)>;

/// Every entry of the native publishers' stream `events`, fields in order.
fn entries(service: &Service) -> Vec<Fields> {
    let mut conn = service.redis.client();
    let reply: redis::Value = redis::cmd("XRANGE").arg("events").arg("-").arg("+").query(&mut conn).unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::from_redis_value(reply).unwrap();
    entries.into_iter().map(|(_, flat)| flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()).collect()
}

/// The entry whose `event_id` is `id`.
fn entry_of<'e>(entries: &'e [Fields], id: &str) -> &'e Fields {
    entries.iter().find(|fields| fields[0].1 == id).unwrap_or_else(|| panic!("no entry for {id}"))
}

fn names(fields: &Fields) -> Vec<&str> {
    fields.iter().map(|(name, _)| name.as_str()).collect()
}

/// (event id as stored, name, value) rows of the side table, read with SQL.
async fn extension_rows(outbox: &TestOutbox) -> Vec<(String, String, String)> {
    let select = "SELECT CAST(event_id AS TEXT), name, value FROM broadcaster_event_extensions ORDER BY 1, 2";
    match outbox.kind() {
        OutboxKind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(outbox.url()).await.unwrap();
            sqlx::query_as(select).fetch_all(&mut conn).await.unwrap()
        }
        OutboxKind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(outbox.url()).await.unwrap();
            let rows: Vec<(String, String, String)> = sqlx::query_as(select).fetch_all(&mut conn).await.unwrap();
            // Stored as Django stores ids (32 hex digits): shown hyphenated like PostgreSQL's.
            rows.into_iter().map(|(id, n, v)| (uuid::Uuid::parse_str(&id).unwrap().to_string(), n, v)).collect()
        }
    }
}

/// Deletes the row `id` of `outbox_events` as Django's ORM does (SQLite: with foreign keys on,
/// Django's connection setting).
async fn delete_as_django(outbox: &TestOutbox, id: &str) {
    match outbox.kind() {
        OutboxKind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(outbox.url()).await.unwrap();
            let delete = sqlx::query("DELETE FROM outbox_events WHERE id = $1::uuid").bind(id);
            assert_eq!(delete.execute(&mut conn).await.unwrap().rows_affected(), 1);
        }
        OutboxKind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(outbox.url()).await.unwrap();
            sqlx::query("PRAGMA foreign_keys = ON").execute(&mut conn).await.unwrap();
            let simple = uuid::Uuid::parse_str(id).unwrap().simple().to_string();
            let delete = sqlx::query("DELETE FROM outbox_events WHERE id = ?1").bind(simple);
            assert_eq!(delete.execute(&mut conn).await.unwrap().rows_affected(), 1);
        }
    }
}

#[tokio::test]
async fn extension_attributes_sent_over_http_are_stored_beside_their_event_and_reach_the_stream_entry() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = Service::start(kind).await;

        let mut structured = event("order.created");
        structured["traceparent"] = json!(TRACEPARENT);
        structured["tenantid"] = json!("acme");
        structured["publisher_config"] = json!({"priority": "high"});
        let structured_id = id_of(&structured);
        let answer = service.structured("orders", &structured).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);

        let binary_id = uuid::Uuid::new_v4().to_string();
        let headers = [
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", binary_id.as_str()),
            ("ce-type", "order.paid"),
            ("ce-source", "/billing"),
            ("ce-traceparent", TRACEPARENT),
        ];
        let answer = service.post("orders", Some(OPS), &headers, r#"{"amount": 5}"#).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);

        let mut traced = event("a");
        traced["traceparent"] = json!(TRACEPARENT);
        let plain = event("b");
        let answer = service.batch("orders", &[traced.clone(), plain.clone()]).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{kind:?}: {}", answer.body);
        assert_eq!(answer.json(), accepted(&[&id_of(&traced), &id_of(&plain)], &[]), "{kind:?}");
        // Sent again: a repeat, and nothing more in the side table.
        assert_eq!(service.batch("orders", &[traced.clone()]).await.status, StatusCode::OK, "{kind:?}");

        let mut expected = vec![
            (structured_id.clone(), "tenantid".to_string(), "acme".to_string()),
            (structured_id.clone(), "traceparent".to_string(), TRACEPARENT.to_string()),
            (binary_id.clone(), "traceparent".to_string(), TRACEPARENT.to_string()),
            (id_of(&traced), "traceparent".to_string(), TRACEPARENT.to_string()),
        ];
        expected.sort();
        assert_eq!(extension_rows(&service.outbox).await, expected, "{kind:?}: the event without any wrote none");

        let report = service.relay.run_batch(100).await.unwrap();
        assert_eq!((report.claimed, report.published), (4, 4), "{kind:?}: {report:?}");
        let entries = entries(&service);
        let entry = entry_of(&entries, &structured_id);
        assert_eq!(
            names(entry),
            ["event_id", "event_type", "source", "timestamp", "cloud_event", "priority", "tenantid", "traceparent"],
            "{kind:?}: the extensions come last, sorted by name"
        );
        assert_eq!(entry[7].1, TRACEPARENT);
        assert!(entry[4].1.contains(&format!(r#""tenantid": "acme", "traceparent": "{TRACEPARENT}""#)), "{kind:?}");
        assert_eq!(entry_of(&entries, &binary_id)[5], ("traceparent".to_string(), TRACEPARENT.to_string()));
        assert_eq!(names(entry_of(&entries, &id_of(&plain))).len(), 5, "{kind:?}: the seed's entry, nothing more");

        // The rows go with their event, whoever deletes it.
        delete_as_django(&service.outbox, &structured_id).await;
        let left: Vec<String> = extension_rows(&service.outbox).await.into_iter().map(|(id, _, _)| id).collect();
        assert!(!left.contains(&structured_id), "{kind:?}: {left:?}");
        assert_eq!(left.len(), 2, "{kind:?}");
    }
}

#[tokio::test]
async fn bad_extension_attributes_are_refused_naming_the_event_and_the_attribute() {
    let service = Service::start(OutboxKind::Sqlite).await;
    let with = |name: &str, value: Value| {
        let mut e = event("x");
        e[name] = value;
        e
    };
    let mut colliding = with("tenant", json!("a"));
    colliding["publisher_config"] = json!({"tenant": "b"});
    let mut many = event("x");
    for i in 0..17 {
        many[format!("x{i}")] = json!("v");
    }
    let cases: Vec<(&str, Value, &str)> = vec![
        ("traceparent not W3C", with("traceparent", json!("00-abc")), "`traceparent`: not a W3C traceparent"),
        ("upper-case name", with("tenantID", json!("a")), "\"tenantID\""),
        ("name over 20", with("abcdefghijklmnopqrstu", json!("a")), "\"abcdefghijklmnopqrstu\""),
        ("a stream field's name", with("timestamp", json!("now")), "`timestamp` collides"),
        ("a publisher_config key", colliding, "`tenant` collides"),
        ("17 attributes", many, "17 extension attributes"),
    ];
    for (what, bad, message) in cases {
        let answer = service.batch("orders", &[event("ok"), bad]).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_event".into()), "{what}");
        assert_eq!(answer.json()["error"]["event"], 1, "{what}: {}", answer.body);
        let text = answer.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(text.contains(message), "{what}: {text}");
        assert_eq!(service.rows().await, 0, "{what}: nothing written");
    }
    let binary_id = uuid::Uuid::new_v4().to_string();
    let headers = [
        ("content-type", "application/json"),
        ("ce-specversion", "1.0"),
        ("ce-id", binary_id.as_str()),
        ("ce-type", "t"),
        ("ce-source", "/s"),
        ("ce-traceparent", "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
    ];
    let answer = service.post("orders", Some(OPS), &headers, "{}").await;
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "invalid_event".into()), "{}", answer.body);
    assert!(answer.body.contains("parent id is all zeros"), "{}", answer.body);
}

#[tokio::test]
async fn the_library_enqueue_keeps_extensions_in_the_applications_transaction() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let outbox = TestOutbox::create(kind).await;
        let store = OutboxStore::connect(outbox.url()).await.unwrap();
        store.migrate().await.unwrap();
        let traced = NewEvent::new("order.created", "/shop").extension("traceparent", TRACEPARENT);
        let rolled_back = NewEvent::new("order.created", "/shop").extension("traceparent", TRACEPARENT);
        match kind {
            OutboxKind::Sqlite => {
                let mut db = sqlx::SqliteConnection::connect(outbox.url()).await.unwrap();
                let mut tx = db.begin().await.unwrap();
                enqueue::sqlite(&mut tx, &traced).await.unwrap();
                tx.commit().await.unwrap();
                let mut tx = db.begin().await.unwrap();
                enqueue::sqlite(&mut tx, &rolled_back).await.unwrap();
                tx.rollback().await.unwrap();
            }
            OutboxKind::Postgres => {
                let mut db = sqlx::PgConnection::connect(outbox.url()).await.unwrap();
                let mut tx = db.begin().await.unwrap();
                enqueue::postgres(&mut tx, &traced).await.unwrap();
                tx.commit().await.unwrap();
                let mut tx = db.begin().await.unwrap();
                enqueue::postgres(&mut tx, &rolled_back).await.unwrap();
                tx.rollback().await.unwrap();
            }
        }
        // And through the store (`broadcaster publish`), several at once.
        let published =
            [NewEvent::new("a", "/s").extension("zeta", "z").extension("alpha", "a"), NewEvent::new("b", "/s")];
        store.enqueue(&published, now_micros()).await.unwrap();
        let claim = store.claim(now_micros(), 10, &[]).await.unwrap();
        assert_eq!(claim.events.len(), 3, "{kind:?}: the rolled-back event is not there");
        let extensions_of =
            |id: &str| claim.events.iter().find(|e| e.event.id == id).map(|e| e.event.extensions.clone()).unwrap();
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(extensions_of(&traced.event.id), [pair("traceparent", TRACEPARENT)], "{kind:?}");
        assert_eq!(extensions_of(&published[0].event.id), [pair("alpha", "a"), pair("zeta", "z")], "{kind:?}");
        assert!(extensions_of(&published[1].event.id).is_empty(), "{kind:?}");
        assert_eq!(extension_rows(&outbox).await.len(), 3, "{kind:?}");
    }
}

#[tokio::test]
async fn a_relay_on_an_outbox_without_the_side_table_claims_as_before_and_finds_it_once_migrated() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let outbox = TestOutbox::create(kind).await;
        let store = OutboxStore::connect(outbox.url()).await.unwrap();
        store.migrate().await.unwrap();
        let drop = "DROP TABLE broadcaster_event_extensions";
        match kind {
            OutboxKind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(outbox.url()).await.unwrap();
                sqlx::query(drop).execute(&mut conn).await.unwrap();
            }
            OutboxKind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(outbox.url()).await.unwrap();
                sqlx::query(drop).execute(&mut conn).await.unwrap();
            }
        }
        // A table as Django made it: events without extensions are written and claimed...
        store.enqueue(&[NewEvent::new("plain", "/s")], now_micros()).await.unwrap();
        assert_eq!(store.claim(now_micros(), 10, &[]).await.unwrap().events.len(), 1, "{kind:?}");
        // ...one with extensions is refused with what to do, and nothing is written.
        let traced = NewEvent::new("traced", "/s").extension("traceparent", TRACEPARENT);
        let err = store.enqueue(std::slice::from_ref(&traced), now_micros()).await.unwrap_err();
        assert!(err.to_string().contains("run `broadcaster migrate`"), "{kind:?}: {err}");
        assert!(store.find(std::slice::from_ref(&traced.event.id)).await.unwrap().is_empty(), "{kind:?}");
        store.migrate().await.unwrap();
        store.enqueue(std::slice::from_ref(&traced), now_micros()).await.unwrap();
        let claim = store.claim(now_micros(), 10, &[]).await.unwrap();
        assert_eq!(claim.events[0].event.extensions.len(), 1, "{kind:?}");
    }
}
