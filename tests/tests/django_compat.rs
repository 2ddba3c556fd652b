//! Broadcaster on the very table django-broadcaster 0.1.1 uses: the seed's own migration
//! creates it, the seed's own `publish_event` fills it, and the seed's own
//! `RedisStreamBackend` is the reference for the entries Broadcaster writes.
//! (Runs the seed from PyPI through `tests/django_app/outbox_app.py`; `scripts/setup
//! --for-tests` installs it into a venv.)

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::Relay;
use broadcaster_tests::{RedisServer, TestDatabase, components};
use redis::Commands;
use serde_json::{Value, json};

fn django(db: &str, args: &[&str]) -> String {
    let python = std::env::var("PYTHON_FOR_TESTS").unwrap_or_else(|_| "python3".into());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("django_app/outbox_app.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(db)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}"));
    assert!(
        output.status.success(),
        "the Django app failed on `{}` (it needs django and django-broadcaster: scripts/setup --for-tests \
         installs them and scripts/test sets PYTHON_FOR_TESTS):\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn rows(db: &str, ids: &[String]) -> Vec<Value> {
    let mut args = vec!["rows"];
    args.extend(ids.iter().map(String::as_str));
    django(db, &args).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn entries(redis: &RedisServer, stream: &str) -> Vec<Vec<(String, String)>> {
    let reply: redis::Value = redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(&mut redis.client()).unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::from_redis_value(reply).unwrap();
    entries.into_iter().map(|(_, flat)| flat.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()).collect()
}

/// An empty database of `kind` (`sqlite` or `postgres`), as the Django app and Broadcaster
/// each name it; dropped with the value.
struct DjangoOutbox {
    django_db: String,
    url: String,
    _dir: tempfile::TempDir,
    _pg: Option<TestDatabase>,
}

impl DjangoOutbox {
    async fn create(kind: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pg = if kind == "postgres" { Some(TestDatabase::create().await) } else { None };
        let (django_db, url) = match &pg {
            Some(db) => (db.url().to_string(), db.url().to_string()),
            None => {
                let file = dir.path().join("django.sqlite3").display().to_string();
                (file.clone(), format!("sqlite://{file}"))
            }
        };
        Self { django_db, url, _dir: dir, _pg: pg }
    }
}

/// The events both sides enqueue (as `publish_event` keyword arguments).
fn publish_event_kwargs() -> Vec<Value> {
    vec![
        json!({"event_type": "order.created", "source": "/shop/orders", "subject": "order/7",
               "data": {"order_id": 7, "total": 1.0, "customer": "Zoë 山田", "items": [{"sku": "a", "qty": 2}]},
               "publisher_config": {"tenant": "acme", "priority": 5}}),
        json!({"event_type": "ping", "source": "/health", "data": null}),
        json!({"event_type": "user.created", "source": "/accounts", "data": {"id": 1}, "backend": "wasm", "max_retries": 5}),
        json!({"event_type": "audit", "source": "/a", "data": ["x", 1.5e-7, 12_345_678_901_234_i64, true]}),
    ]
}

fn new_event(kwargs: &Value) -> NewEvent {
    let mut event = NewEvent::new(kwargs["event_type"].as_str().unwrap(), kwargs["source"].as_str().unwrap())
        .subject(kwargs["subject"].as_str().unwrap_or_default())
        .publisher(kwargs["backend"].as_str().unwrap_or_default())
        .max_retries(kwargs["max_retries"].as_u64().unwrap_or(3) as u32);
    if !kwargs["data"].is_null() {
        event = event.data(kwargs["data"].clone());
    }
    if let Value::Object(config) = &kwargs["publisher_config"] {
        event = event.publisher_config(config.clone());
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcaster_and_django_broadcaster_share_the_table_and_write_the_same_entries() {
    for kind in ["sqlite", "postgres"] {
        let redis = RedisServer::start();
        let outbox = DjangoOutbox::create(kind).await;
        let (django_db, url) = (outbox.django_db.clone(), outbox.url.clone());

        // The seed's migration makes the table; Broadcaster accepts it as it is.
        django(&django_db, &["migrate"]);
        let store = OutboxStore::connect(&url).await.unwrap();
        store.verify().await.unwrap();
        assert!(!store.migrate().await.unwrap(), "{kind}: an existing table is left alone");

        // Both enqueue the same events.
        let kwargs = publish_event_kwargs();
        let django_ids: Vec<String> = django(&django_db, &["enqueue", &Value::Array(kwargs.clone()).to_string()])
            .lines()
            .map(String::from)
            .collect();
        let ours = store.enqueue(&kwargs.iter().map(new_event).collect::<Vec<_>>(), now_micros()).await.unwrap();

        // Django reads Broadcaster's rows exactly as it reads its own.
        let theirs = rows(&django_db, &django_ids);
        let mine = rows(&django_db, &ours);
        for (t, m) in theirs.iter().zip(&mine) {
            for column in [
                "spec_version",
                "event_type",
                "source",
                "subject",
                "data_content_type",
                "data_schema",
                "data",
                "status",
                "retry_count",
                "max_retries",
                "last_error",
                "publisher_backend",
                "publisher_config",
            ] {
                assert_eq!(t[column], m[column], "{kind}: column {column} differs");
            }
            assert_eq!(m["status"], "pending");
        }

        // The seed's own RedisStreamBackend publishes Django's rows to `seed`...
        let mut args = vec!["seed-publish".to_string(), redis.port().to_string(), "seed".to_string()];
        args.extend(django_ids.iter().cloned());
        django(&django_db, &args.iter().map(String::as_str).collect::<Vec<_>>());

        // ...and Broadcaster relays every row: native `default`, and the `wasm` component.
        let config = Config::from_toml(
            &format!(
                r#"
                [outbox]
                url = "{url}"
                [publishers.default]
                backend = "redis-stream"
                [publishers.default.options]
                host = "127.0.0.1"
                port = {port}
                [publishers.wasm]
                component = "{component}"
                [publishers.wasm.grants]
                redis = {{ host = "127.0.0.1", port = {port}, streams = ["events"] }}
                "#,
                port = redis.port(),
                component = components::REDIS_STREAM,
            ),
            "compat.toml".as_ref(),
            Vec::new(),
        )
        .unwrap();
        let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
        let relay = Relay::new(store.clone(), registry, &config.relay);
        relay.refresh_health().await;
        let report = relay.run_batch(100).await.unwrap();
        assert_eq!(report.published, 8, "{kind}: {report:?}");

        // Entry for entry, Broadcaster wrote what the seed wrote for the same rows.
        let seed = entries(&redis, "seed");
        let relayed = entries(&redis, "events");
        assert_eq!(seed.len(), 4);
        assert_eq!(relayed.len(), 8);
        for seed_entry in &seed {
            let id = &seed_entry[0].1;
            let ours = relayed.iter().find(|e| &e[0].1 == id).expect("Broadcaster relayed the row");
            assert_eq!(ours, seed_entry, "{kind}: entry for {id}");
        }
        // And the cloud_event of Broadcaster's own rows is what the seed's to_cloud_event() says.
        for row in &mine {
            let id = row["id"].as_str().unwrap();
            let entry = relayed.iter().find(|e| e[0].1 == id).unwrap();
            assert_eq!(entry[4], ("cloud_event".to_string(), row["cloud_event"].as_str().unwrap().to_string()));
        }

        // Django sees every row published.
        for row in rows(&django_db, &[django_ids.clone(), ours.clone()].concat()) {
            assert_eq!((row["status"].as_str(), row["published"].as_bool()), (Some("published"), Some(true)), "{kind}");
        }
        let _ = redis.client().del::<_, ()>("seed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_relay_is_woken_by_rows_django_inserts() {
    for kind in ["sqlite", "postgres"] {
        let outbox = DjangoOutbox::create(kind).await;
        let (django_db, url) = (outbox.django_db.clone(), outbox.url.clone());
        django(&django_db, &["migrate"]);
        let store = OutboxStore::connect(&url).await.unwrap();
        // Installs the notify trigger on Django's table (PostgreSQL).
        store.migrate().await.unwrap();
        // On PostgreSQL a relay polls a few times before it takes the wake-up lock and waits
        // for a notification; with nothing written, a wait then times out.
        let mut settled = false;
        for _ in 0..20 {
            if !store.wait_for_writes(std::time::Duration::from_millis(100)).await {
                settled = true;
                break;
            }
        }
        assert!(settled, "{kind}: with nothing written, a wait times out");
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.wait_for_writes(std::time::Duration::from_secs(60)).await }
        });
        let kwargs = Value::Array(publish_event_kwargs()).to_string();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || django(&django_db, &["enqueue", &kwargs])).await.unwrap();
        assert!(waiter.await.unwrap(), "{kind}: woken by Django's insert");
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{kind}: woken, not timed out");
    }
}
