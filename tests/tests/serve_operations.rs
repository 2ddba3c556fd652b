//! The operators' side of `broadcaster serve` over real HTTP: `/metrics` (ingest answers,
//! backlog, published events per publisher), `/healthz`, `/readyz` following the outbox,
//! unknown routes and methods, an ingested event waking the relay of the same process, and a
//! clean shutdown.

mod serve_support;

use std::time::{Duration, Instant};

use broadcaster::outbox::Status;
use broadcaster::relay::RunOptions;
use broadcaster_tests::OutboxKind;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use serve_support::{OPS, PUBLISHERS, STRUCTURED, Service, event, id_of};

/// The samples of `name` in `scrape` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: not a plain value: {other:?}"),
        },
    )
}

async fn scrape(service: &Service) -> prometheus_parse::Scrape {
    let answer = service.get("/metrics").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    prometheus_parse::Scrape::parse(answer.body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_ingest_answers_the_backlog_and_published_events_per_publisher() {
    let service = Service::start(OutboxKind::Sqlite).await;
    assert_eq!(service.structured("orders", &event("a")).await.status, StatusCode::ACCEPTED);
    let repeated = event("b");
    assert_eq!(service.batch("orders", &[repeated.clone(), event("c")]).await.status, StatusCode::ACCEPTED);
    assert_eq!(service.structured("orders", &repeated).await.status, StatusCode::OK);
    assert_eq!(service.structured("audit", &event("d")).await.status, StatusCode::ACCEPTED);
    let refused = service.post("orders", Some(OPS), &[("content-type", STRUCTURED)], "{").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(service.post("orders", None, &[], "").await.status, StatusCode::UNAUTHORIZED);

    let before = scrape(&service).await;
    let requests = |code| sample(&before, "broadcaster_ingest_requests_total", &[("code", code)]);
    assert_eq!((requests("202"), requests("200")), (Some(3.0), Some(1.0)));
    assert_eq!((requests("400"), requests("401")), (Some(1.0), Some(1.0)));
    let events = |publisher, outcome| {
        sample(&before, "broadcaster_ingest_events_total", &[("publisher", publisher), ("outcome", outcome)])
    };
    assert_eq!((events("orders", "new"), events("orders", "repeated")), (Some(3.0), Some(1.0)));
    assert_eq!(events("audit", "new"), Some(1.0));
    let pending = |scrape: &prometheus_parse::Scrape, publisher: &str| {
        sample(scrape, "broadcaster_backlog_events", &[("publisher", publisher), ("status", "pending")])
    };
    assert_eq!((pending(&before, "orders"), pending(&before, "audit")), (Some(3.0), Some(1.0)));
    assert_eq!(pending(&before, "tenant-b"), Some(0.0), "every configured publisher has a backlog gauge");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 100, interval: Duration::from_millis(100), max_iterations: 0 };
    let running = tokio::spawn(service.relay.clone().run(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let scrape = scrape(&service).await;
        let published = |p| sample(&scrape, "broadcaster_events_published_total", &[("publisher", p)]);
        if published("orders") >= Some(3.0) && published("audit") >= Some(1.0) {
            break scrape;
        }
        assert!(Instant::now() < deadline, "not published in time: {:?}", scrape.samples);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let published = |p| sample(&after, "broadcaster_events_published_total", &[("publisher", p)]);
    assert_eq!((published("orders"), published("audit")), (Some(3.0), Some(1.0)));
    let len: u64 = redis::cmd("XLEN").arg("events").query(&mut service.redis.client()).unwrap();
    assert_eq!(len, 4, "each event published once");
    assert_eq!(service.rows_in(Some(Status::Published)).await, 4);
    // Counted at this scrape (backlog_refresh 0s): nothing waits any more.
    let now = scrape(&service).await;
    assert_eq!((pending(&now, "orders"), pending(&now, "audit")), (Some(0.0), Some(0.0)));
    assert_eq!(sample(&now, "broadcaster_publisher_healthy", &[("publisher", "orders")]), Some(1.0));
    let durations = sample(&now, "broadcaster_publish_duration_seconds_count", &[("publisher", "orders")]);
    assert!(durations >= Some(1.0), "{durations:?}");
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn healthz_answers_and_readyz_follows_the_outbox() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = Service::start(kind).await;
        let health = service.get("/healthz").await;
        assert_eq!((health.status, health.json()), (StatusCode::OK, json!({"status": "ok"})), "{kind:?}");

        let ready = service.get("/readyz").await;
        assert_eq!(ready.status, StatusCode::OK, "{kind:?}: {}", ready.body);
        let body = ready.json();
        assert_eq!(body["ready"], true, "{kind:?}");
        let listed: Vec<&str> = body["publishers"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(listed, PUBLISHERS, "{kind:?}");
        assert_eq!(body["publishers"]["orders"]["healthy"], Value::Null, "{kind:?}: not checked yet");
        service.relay.refresh_health().await;
        let checked = service.get("/readyz").await.json();
        assert_eq!(checked["publishers"]["orders"]["healthy"], true, "{kind:?}: {checked}");

        // The outbox goes away: a PostgreSQL database dropped, a SQLite table dropped.
        match kind {
            OutboxKind::Postgres => {
                let (_, database) = service.outbox.url().rsplit_once('/').unwrap();
                let pool = sqlx::PgPool::connect(&broadcaster_tests::postgres_server_url()).await.unwrap();
                let drop = format!("DROP DATABASE \"{database}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await.unwrap();
            }
            OutboxKind::Sqlite => {
                let pool = sqlx::SqlitePool::connect(service.outbox.url()).await.unwrap();
                sqlx::query("DROP TABLE outbox_events").execute(&pool).await.unwrap();
            }
        }
        let started = Instant::now();
        let unready = service.get("/readyz").await;
        assert!(started.elapsed() < Duration::from_secs(5), "{kind:?}: answered within the probe's timeout");
        assert_eq!(unready.status, StatusCode::SERVICE_UNAVAILABLE, "{kind:?}: {}", unready.body);
        let body = unready.json();
        assert_eq!((&body["ready"], &body["outbox"]["ready"]), (&json!(false), &json!(false)), "{kind:?}");
        assert!(body["outbox"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{kind:?}: {body}");
        assert!(!body["outbox"]["url"].as_str().unwrap().is_empty(), "{kind:?}");
        assert_eq!(service.get("/healthz").await.status, StatusCode::OK, "{kind:?}: the process still answers");
        // Ingest cannot write: 503, not a success.
        let answer = service.structured("orders", &event("x")).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::SERVICE_UNAVAILABLE, "outbox_unavailable".into()));
        service.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_over_http_wakes_the_relay_of_the_same_process() {
    // PostgreSQL without its notify trigger: only the in-process wake-up can answer.
    for (kind, trigger) in [(OutboxKind::Sqlite, true), (OutboxKind::Postgres, true), (OutboxKind::Postgres, false)] {
        let service = Service::start(kind).await;
        if !trigger {
            assert!(service.store.remove_wakeup_trigger().await.unwrap());
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let options = RunOptions { batch_size: 100, interval: Duration::from_secs(30), max_iterations: 0 };
        let running = tokio::spawn(service.relay.clone().run(options, stopped));
        // Let the relay go quiet: its polls back off 50 ms, 100 ms, … so after 4 s its next one
        // is over 2 s away, and only a wake-up publishes the event sooner.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let posted_event = event("order.created");
        let posted = Instant::now();
        assert_eq!(service.structured("orders", &posted_event).await.status, StatusCode::ACCEPTED);
        let mut took = None;
        while took.is_none() && posted.elapsed() < Duration::from_secs(5) {
            let rows = service.store.find(&[id_of(&posted_event)]).await.unwrap();
            if rows[0].status == Status::Published {
                took = Some(posted.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = took.unwrap_or_else(|| panic!("{kind:?} (trigger {trigger}): not published within 5s"));
        assert!(took < Duration::from_secs(2), "{kind:?} (trigger {trigger}): published {took:?} after the answer");
        stop.send(true).unwrap();
        running.await.unwrap();
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_answered_with_the_error_shape() {
    let service = Service::start(OutboxKind::Sqlite).await;
    for path in ["/v1/events", "/v1/publishers/orders/events/", "/v1/publishers/orders"] {
        let answer = service.get(path).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::NOT_FOUND, "not_found".into()), "{path}");
    }
    let wrong_methods = [
        (Method::GET, "/v1/publishers/orders/events"),
        (Method::PUT, "/v1/publishers/orders/events"),
        (Method::POST, "/metrics"),
        (Method::DELETE, "/readyz"),
    ];
    for (method, path) in wrong_methods {
        let answer = service.request(method.clone(), path, &[("authorization", &format!("Bearer {OPS}"))], "").await;
        let expected = (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".to_string());
        assert_eq!((answer.status, answer.code()), expected, "{method} {path}: {}", answer.body);
    }
    assert_eq!(service.rows().await, 0);
    let answer = service.post("orders", Some(OPS), &[("content-type", STRUCTURED)], &event("x").to_string()).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    service.shut_down().await;
}
