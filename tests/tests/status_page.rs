//! The operators' status page of `broadcaster serve` (`GET /`, `GET /v1/status`): admin tokens
//! only, every configured publisher with its health, backlog and counts, the most recently
//! failed events, hostile values escaped, and the page as headless Chromium renders it (with
//! its script refreshing it from `/v1/status`).

mod serve_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use broadcaster::outbox::{NewEvent, Status};
use broadcaster::relay::RunOptions;
use broadcaster_tests::{OutboxKind, RedisServer, components};
use hyper::StatusCode;
use serde_json::json;
use serve_support::{OPS, Service, TENANT_A, event, id_of};
use sha2::{Digest, Sha256};

/// The admin token.
const ADMIN: &str = "admin-token-0123456789abcdef";

/// A publisher name (events of no configured publisher) and thereby a `last_error` that would
/// run script and add an element if the page did not escape them (under the column's 100
/// characters).
const HOSTILE: &str = "<script>document.body.dataset.pwned='yes'</script><b id=\"injected\">x</b>";

/// The admin token, a native publisher whose Redis does not answer (`offline`), and a component
/// publisher (`component-stream`).
fn extra_config(redis: &RedisServer) -> String {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!(
        r#"
        [tokens.admin]
        secret = {{ sha256 = "{admin}" }}
        admin = true
        [publishers.offline]
        backend = "redis-stream"
        [publishers.offline.options]
        host = "127.0.0.1"
        port = {closed_port}
        connect_timeout = 1
        socket_timeout = 1
        [publishers.component-stream]
        component = "{component}"
        [publishers.component-stream.options]
        stream_name = "component:events"
        [publishers.component-stream.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["component:*"] }}
        "#,
        admin = Sha256::digest(ADMIN.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>(),
        component = components::REDIS_STREAM,
        port = redis.port(),
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(user: &str, token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

/// Events for `orders`, `audit` and `component-stream` that publish, one for `orders` that fails
/// for good (a `publisher_config` key that is a stream field), one for `offline` that waits, and
/// one naming [`HOSTILE`] (no such publisher: it fails); the relay runs until each is settled.
/// Returns the failing event's id.
async fn relay_some_events(service: &Service) -> String {
    for publisher in ["orders", "orders", "audit", "component-stream", "offline"] {
        assert_eq!(service.structured(publisher, &event("order.created")).await.status, StatusCode::ACCEPTED);
    }
    let mut clash = event("order.clash");
    clash["publisher_config"] = json!({"event_id": "mine"});
    assert_eq!(service.structured("orders", &clash).await.status, StatusCode::ACCEPTED);
    let hostile = NewEvent::new("evil.type", "/evil").publisher(HOSTILE);
    service.store.enqueue(&[hostile], broadcaster::event::now_micros()).await.unwrap();

    service.relay.refresh_health().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 100, interval: Duration::from_millis(100), max_iterations: 0 };
    let running = tokio::spawn(service.relay.clone().run(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(20);
    while service.rows_in(Some(Status::Published)).await < 4 || service.rows_in(Some(Status::Failed)).await < 2 {
        assert!(Instant::now() < deadline, "the relay did not settle the events in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    service.relay.refresh_health().await;
    id_of(&clash)
}

async fn as_admin(service: &Service, path: &str) -> serve_support::Answer {
    let authorization = bearer(ADMIN);
    service.request(hyper::Method::GET, path, &[("authorization", authorization.as_str())], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_json_need_an_admin_token() {
    let service = Service::start_with(OutboxKind::Sqlite, extra_config).await;
    for path in ["/", "/v1/status"] {
        let none = service.get(path).await;
        assert_eq!((none.status, none.code()), (StatusCode::UNAUTHORIZED, "unauthorized".into()), "{path}");
        let challenges: Vec<&str> =
            none.headers.get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
        assert!(challenges.iter().any(|c| c.starts_with("Basic realm=\"broadcaster\"")), "{path}: {challenges:?}");
        for authorization in [bearer("not-a-token-0123456789"), basic("admin", "wrong-0123456789"), "Basic ???".into()]
        {
            let answer =
                service.request(hyper::Method::GET, path, &[("authorization", authorization.as_str())], "").await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path} with {authorization}");
        }
        // Tenants' tokens, even one that reaches every publisher, are not admin tokens.
        for tenant in [TENANT_A, OPS] {
            for authorization in [bearer(tenant), basic("admin", tenant)] {
                let answer =
                    service.request(hyper::Method::GET, path, &[("authorization", authorization.as_str())], "").await;
                assert_eq!((answer.status, answer.code()), (StatusCode::FORBIDDEN, "forbidden".into()), "{path}");
            }
        }
        for authorization in [bearer(ADMIN), basic("anyone", ADMIN)] {
            let answer =
                service.request(hyper::Method::GET, path, &[("authorization", authorization.as_str())], "").await;
            assert_eq!(answer.status, StatusCode::OK, "{path} with {authorization}: {}", answer.body);
            assert_eq!(answer.header("cache-control"), Some("no-store"), "{path}");
        }
    }
    let page = as_admin(&service, "/").await;
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.header("content-security-policy").is_some_and(|p| p.starts_with("default-src 'none'")));
    service.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_every_publisher_and_the_failed_events_escaped_on_both_outboxes() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = Service::start_with(kind, extra_config).await;
        let clash = relay_some_events(&service).await;
        let status = as_admin(&service, "/v1/status").await.json();

        let publishers: Vec<&str> =
            status["publishers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        let mut configured = serve_support::PUBLISHERS.to_vec();
        configured.extend(["component-stream", "offline"]);
        configured.sort();
        assert_eq!(publishers, configured, "{kind:?}");
        let publisher =
            |name: &str| status["publishers"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
        let orders = publisher("orders");
        assert_eq!((&orders["kind"], &orders["health"]), (&json!("native"), &json!("healthy")), "{kind:?}: {orders}");
        assert_eq!(
            (&orders["published"], &orders["failed"], &orders["pending"]),
            (&json!(2), &json!(1), &json!(0)),
            "{kind:?}"
        );
        let component = publisher("component-stream");
        assert_eq!(
            (&component["kind"], &component["published"]),
            (&json!("component"), &json!(1)),
            "{kind:?}: {component}"
        );
        let offline = publisher("offline");
        assert_eq!((&offline["health"], &offline["pending"]), (&json!("down"), &json!(1)), "{kind:?}: {offline}");
        assert!(offline["health_detail"].as_str().is_some_and(|d| !d.is_empty()), "{kind:?}: {offline}");
        assert!(offline["oldest_due_seconds"].as_f64().is_some_and(|age| age >= 0.0), "{kind:?}: {offline}");

        let failed = status["failed_events"].as_array().unwrap();
        assert_eq!(failed.len(), 2, "{kind:?}: {failed:?}");
        let clashed =
            failed.iter().find(|f| f["id"] == clash.as_str()).unwrap_or_else(|| panic!("{kind:?}: {failed:?}"));
        assert_eq!((&clashed["publisher_backend"], &clashed["event_type"]), (&json!("orders"), &json!("order.clash")));
        assert!(clashed["last_error"].as_str().unwrap().contains("collides with the stream field"), "{clashed}");
        let hostile = failed.iter().find(|f| f["publisher_backend"] == HOSTILE).unwrap_or_else(|| panic!("{failed:?}"));
        assert!(hostile["last_error"].as_str().unwrap().contains(HOSTILE), "{kind:?}: {hostile}");

        let page = as_admin(&service, "/").await.body;
        assert!(page.contains(&clash) && page.contains("collides with the stream field"), "{kind:?}");
        assert!(!page.contains(HOSTILE) && !page.contains("<b id="), "{kind:?}: a hostile value is not escaped");
        let escaped =
            "&lt;script&gt;document.body.dataset.pwned=&#39;yes&#39;&lt;/script&gt;&lt;b id=&quot;injected&quot;&gt;";
        assert!(page.matches(escaped).count() >= 2, "{kind:?}: the publisher and the error, escaped");
        service.shut_down().await;
    }
}

#[tokio::test]
async fn migrate_adds_the_index_that_finds_recent_failures() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let service = Service::start(kind).await;
        let (index, query) =
            ("outbox_events_broadcaster_failed_idx", "SELECT count(*) FROM sqlite_master WHERE name = $1");
        let count: i64 = match kind {
            OutboxKind::Sqlite => {
                let pool = sqlx::SqlitePool::connect(service.outbox.url()).await.unwrap();
                sqlx::query_scalar(query).bind(index).fetch_one(&pool).await.unwrap()
            }
            OutboxKind::Postgres => {
                let pool = sqlx::PgPool::connect(service.outbox.url()).await.unwrap();
                let query = "SELECT count(*) FROM pg_indexes WHERE indexname = $1";
                sqlx::query_scalar(query).bind(index).fetch_one(&pool).await.unwrap()
            }
        };
        assert_eq!(count, 1, "{kind:?}");
        service.store.migrate().await.unwrap();
        service.shut_down().await;
    }
}

#[tokio::test]
async fn the_throughput_sampler_stops_with_the_server() {
    let service = Service::start(OutboxKind::Sqlite).await;
    assert!(service.state.upgrade().is_some(), "the server holds its state");
    let state = service.state.clone();
    service.shut_down().await;
    assert!(state.upgrade().is_none(), "something (the sampler?) still holds the server's state");
}

/// Where test artifacts go: `$CARGO_TARGET_DIR/test-artifacts`.
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `args` added; its stdout. Fails, saying how to install
/// it, when Chromium is missing.
async fn chromium(url: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(90), command.output()).await {
        Err(_) => panic!("chromium did not finish within 90 s on {url}"),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {
            panic!("chromium is not installed: run `scripts/setup --for-tests` (it installs Debian's chromium)")
        }
        Ok(output) => output.unwrap(),
    };
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_publishers_their_health_and_the_failed_events() {
    let service = Service::start_with(OutboxKind::Sqlite, extra_config).await;
    let clash = relay_some_events(&service).await;
    // Chromium takes credentials in the URL: it sends them as HTTP Basic when the page answers
    // 401 with a Basic challenge, and the script's requests to /v1/status reuse them.
    let url = format!("http://admin:{ADMIN}@{}/", service.addr);

    let dom = chromium(&url, &["--dump-dom".to_string()]).await;
    std::fs::write(artifacts_dir().join("status-page.dom.html"), &dom).unwrap();
    assert!(dom.contains("data-refreshed=\"ok\""), "the script did not refresh the page from /v1/status:\n{dom}");
    for name in ["orders", "audit", "tenant-a", "component-stream", "offline"] {
        assert!(dom.contains(&format!(">{name}<")), "publisher {name} is not on the page:\n{dom}");
    }
    assert!(dom.contains(">healthy<") && dom.contains(">down<"), "health is not shown:\n{dom}");
    assert!(dom.contains(&clash), "the failed event's id is not shown:\n{dom}");
    assert!(dom.contains("publisher_config key \"event_id\" collides with the stream field"), "no last_error:\n{dom}");
    assert!(dom.contains("&lt;script&gt;document.body.dataset.pwned"), "the hostile publisher is not shown:\n{dom}");
    assert!(!dom.contains("data-pwned") && !dom.contains("<b id=\"injected\""), "hostile markup ran:\n{dom}");
    assert!(dom.contains("<polyline"), "no chart:\n{dom}");

    let screenshot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&url, &[format!("--screenshot={}", screenshot.display())]).await;
    let png =
        std::fs::read(&screenshot).unwrap_or_else(|err| panic!("no screenshot at {}: {err}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a page's screenshot", screenshot.display());
    println!("status page screenshot: {}", screenshot.display());
    service.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_more_publishers_than_it_lists_the_page_shows_those_with_something_to_show_and_counts_the_rest() {
    let tenants = 600;
    let service = Service::start_with(OutboxKind::Sqlite, |redis| {
        let mut text = extra_config(redis);
        text.push_str("[wasm]\nlive_instances = 2\ncache = false\n");
        for i in 0..tenants {
            text.push_str(&format!(
                "[publishers.tenant-{i}]\ncomponent = \"{component}\"\n[publishers.tenant-{i}.options]\n\
                 stream_name = \"tenant-{i}\"\n[publishers.tenant-{i}.grants]\n\
                 redis = {{ host = \"127.0.0.1\", port = {port}, streams = [\"tenant-*\"] }}\n",
                component = components::REDIS_STREAM,
                port = redis.port()
            ));
        }
        text
    })
    .await;
    // One event waits for an idle tenant (the relay is not running).
    let waiting = NewEvent::new("order.created", "/shop").publisher("tenant-7");
    service.store.enqueue(&[waiting], broadcaster::event::now_micros()).await.unwrap();
    // One pass of the relay's health monitor (the first is at once), then the relay stops.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 100, interval: Duration::from_secs(60), max_iterations: 0 };
    let health = service.relay.health_board();
    let running = tokio::spawn(service.relay.clone().run(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !health.is_down("offline") || (0..tenants).any(|i| health.last(&format!("tenant-{i}")).is_none()) {
        assert!(Instant::now() < deadline, "the health monitor did not look at every publisher in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap();

    let view = as_admin(&service, "/v1/status").await.json();
    let listed: Vec<&str> =
        view["publishers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(listed.contains(&"offline"), "a publisher that is down is listed: {listed:?}");
    // tenant-7's event was published by the relay, or still waits: either way it is listed.
    assert!(listed.contains(&"tenant-7"), "{listed:?}");
    assert!(listed.len() < 10, "the quiet publishers are left out: {listed:?}");
    let configured = tenants + 2 + serve_support::PUBLISHERS.len();
    assert_eq!(view["publishers_omitted"].as_u64().unwrap() as usize, configured - listed.len());
    let idle = view["publishers"].as_array().unwrap().iter().filter(|p| p["health"] == "idle").count();
    assert!(idle <= 1, "idle tenants are quiet unless they have events: {view}");
    let page = as_admin(&service, "/").await.body;
    assert!(page.contains(&format!("{}</span> more publishers not shown", configured - listed.len())), "{page}");
    // The readiness probe names only the publishers not known to be healthy, and counts the rest.
    let ready = service.get("/readyz").await.json();
    let named = ready["publishers"].as_object().unwrap();
    assert!(named.contains_key("offline") && named.len() < 5, "{ready}");
    assert_eq!(ready["publishers_healthy_not_listed"].as_u64().unwrap() as usize + named.len(), configured);
    service.shut_down().await;
}
