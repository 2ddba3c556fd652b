//! Live reload (issue 10): while events arrive over HTTP and through the outbox, a reload adds
//! a publisher, removes one and gives one a new component file and new limits; at the end no
//! event is lost or published twice, and the removed publisher's events wait. A reload whose
//! file or component is broken is refused with the reason and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};
use broadcaster::reload::{ReloadError, Reloader};
use broadcaster::server::{ServerState, serve};
use broadcaster_tests::{OutboxKind, RedisServer, TestOutbox, components};
use redis::Commands;
use sha2::{Digest, Sha256};

const TOKEN: &str = "reload-test-token-0123456789";
const ADMIN: &str = "reload-admin-token-0123456789";
const LATE: &str = "reload-late-token-0123456789";

/// What the configuration file says, before and after the reload.
#[derive(Clone, Copy, PartialEq)]
enum Version {
    /// `keep` (native), `gone` (native), `swap` (the shipped redis-stream component).
    Before,
    /// `keep` unchanged, `gone` removed, `swap` running another component file at the same
    /// path with other options and limits, `fresh` (native) added.
    After,
}

fn config_text(outbox: &TestOutbox, redis: &RedisServer, version: Version) -> String {
    let native = |name: &str| {
        format!(
            "[publishers.{name}]\nbackend = \"redis-stream\"\n[publishers.{name}.options]\nhost = \"127.0.0.1\"\n\
             port = {port}\nstream_name = \"{name}\"\nconnect_timeout = 1\nsocket_timeout = 1\n",
            port = redis.port()
        )
    };
    let mut text = format!(
        r#"
        [outbox]
        url = "{url}"
        [relay]
        interval = "200ms"
        batch_size = 50
        [server]
        backlog_refresh = "0s"
        [tokens.ops]
        secret = {{ sha256 = "{digest:x}" }}
        publishers = ["*"]
        [tokens.admin]
        secret = {{ sha256 = "{admin:x}" }}
        admin = true
        "#,
        url = outbox.url(),
        digest = Sha256::digest(TOKEN.as_bytes()),
        admin = Sha256::digest(ADMIN.as_bytes()),
    );
    text.push_str(&native("keep"));
    let swap_options = match version {
        Version::Before => {
            "stream_name = \"swap\"\nmax_len = 1000000\n[publishers.swap.limits]\ncall_timeout = \"2s\"\n"
        }
        Version::After => {
            "stream_name = \"swap\"\n[publishers.swap.limits]\ncall_timeout = \"3s\"\nmemory = \"32MiB\"\n"
        }
    };
    text.push_str(&format!(
        "[publishers.swap]\ncomponent = \"swap.wasm\"\n[publishers.swap.options]\n{swap_options}\
         [publishers.swap.grants]\nredis = {{ host = \"127.0.0.1\", port = {port}, streams = [\"swap\"] }}\n",
        port = redis.port()
    ));
    match version {
        Version::Before => text.push_str(&native("gone")),
        Version::After => text.push_str(&native("fresh")),
    }
    text
}

/// A relay and its HTTP service running on a configuration file in a temporary directory.
struct Rig {
    outbox: TestOutbox,
    redis: RedisServer,
    dir: tempfile::TempDir,
    store: OutboxStore,
    relay: Arc<Relay>,
    reloader: Arc<Reloader>,
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    running: tokio::task::JoinHandle<broadcaster::relay::RelayReport>,
}

impl Rig {
    async fn start(kind: OutboxKind) -> Self {
        let outbox = TestOutbox::create(kind).await;
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(components::REDIS_STREAM, dir.path().join("swap.wasm")).unwrap();
        let path = dir.path().join("broadcaster.toml");
        std::fs::write(&path, config_text(&outbox, &redis, Version::Before)).unwrap();
        let config = broadcaster::checks::load_config(&path).unwrap();
        let store = OutboxStore::connect(outbox.url()).await.unwrap();
        store.migrate().await.unwrap();
        let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
        let relay = Arc::new(Relay::new(store.clone(), registry, &config.relay));
        let state = ServerState::new(&config, &relay).unwrap();
        let load_from = path.clone();
        let reloader = Reloader::new(
            config.clone(),
            relay.clone(),
            Box::new(move || broadcaster::checks::load_config(&load_from)),
        );
        reloader.attach_server(&state);
        state.set_reloader(reloader.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, state, std::future::pending()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let options = RunOptions { batch_size: 50, interval: Duration::from_millis(200), max_iterations: 0 };
        let running = tokio::spawn(relay.clone().run(options, stopped));
        Self { outbox, redis, dir, store, relay, reloader, addr, stop, running }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("broadcaster.toml")
    }

    fn write_config(&self, version: Version) {
        std::fs::write(self.config_path(), config_text(&self.outbox, &self.redis, version)).unwrap();
    }

    /// The `event_id`s in `stream`, in order.
    fn stream_ids(&self, stream: &str) -> Vec<String> {
        let entries: redis::streams::StreamRangeReply = self.redis.client().xrange_all(stream).unwrap();
        entries.ids.iter().map(|entry| entry.get::<String>("event_id").expect("an entry without event_id")).collect()
    }

    /// Rows per (publisher, status).
    async fn counts(&self) -> BTreeMap<(String, Status), u64> {
        self.store.status(now_micros(), Duration::from_secs(60)).await.unwrap().counts
    }

    async fn waiting(&self, publisher: &str) -> u64 {
        let counts = self.counts().await;
        [Status::Pending, Status::Retry, Status::Processing]
            .iter()
            .map(|s| counts.get(&(publisher.to_string(), *s)).copied().unwrap_or(0))
            .sum()
    }
}

/// Sends events to `publishers` in turn until `stop`: through the outbox (`store`) or over
/// HTTP; returns the ids each publisher accepted.
async fn produce(
    store: Option<OutboxStore>,
    addr: std::net::SocketAddr,
    publishers: Vec<&'static str>,
    stop: Arc<AtomicBool>,
) -> BTreeMap<String, Vec<String>> {
    let client = reqwest_like::Client::new(addr);
    let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let publisher = publishers[i % publishers.len()];
        i += 1;
        let event = NewEvent::new("reload.test", "/reload").publisher(publisher).data(serde_json::json!({ "n": i }));
        let id = event.event.id.clone();
        let ok = match &store {
            Some(store) => {
                store.enqueue(&[event], now_micros()).await.unwrap();
                true
            }
            None => client.post_event(publisher, &id, i).await,
        };
        if ok {
            accepted.entry(publisher.to_string()).or_default().push(id);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    accepted
}

/// A small HTTP client for the ingest endpoint.
mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as Hyper;
    use hyper_util::client::legacy::connect::HttpConnector;

    pub struct Client {
        addr: std::net::SocketAddr,
        inner: Hyper<HttpConnector, Full<Bytes>>,
    }

    impl Client {
        pub fn new(addr: std::net::SocketAddr) -> Self {
            Self { addr, inner: Hyper::builder(hyper_util::rt::TokioExecutor::new()).build_http() }
        }

        /// POSTs one structured event; whether it was accepted (202), or refused as a
        /// publisher that is not configured (404). Anything else fails the test.
        pub async fn post_event(&self, publisher: &str, id: &str, n: usize) -> bool {
            match self.post_event_with(publisher, id, n, super::TOKEN).await {
                202 => true,
                404 => false,
                other => panic!("POST to {publisher}: {other}"),
            }
        }

        /// POSTs one structured event with `token`; the status code.
        pub async fn post_event_with(&self, publisher: &str, id: &str, n: usize, token: &str) -> u16 {
            let body = serde_json::json!({
                "specversion": "1.0", "id": id, "type": "reload.test", "source": "/reload/http",
                "datacontenttype": "application/json", "data": { "n": n },
            });
            let request = hyper::Request::post(format!("http://{}/v1/publishers/{publisher}/events", self.addr))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/cloudevents+json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let response = self.inner.request(request).await.unwrap();
            let status = response.status().as_u16();
            let text = response.into_body().collect().await.unwrap().to_bytes();
            if !matches!(status, 202 | 403 | 404) {
                panic!("POST to {publisher}: {status}: {}", String::from_utf8_lossy(&text));
            }
            status
        }
    }
}

async fn reload_under_load_loses_nothing_and_publishes_nothing_twice(kind: OutboxKind) {
    let mut rig = Rig::start(kind).await;
    let stop = Arc::new(AtomicBool::new(false));
    let before = vec!["keep", "gone", "swap", "fresh"];
    let outbox_before =
        tokio::spawn(produce(Some(rig.store.clone()), rig.addr, vec!["keep", "gone", "swap"], stop.clone()));
    let http = tokio::spawn(produce(None, rig.addr, before.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The new component file at the same path, new options and limits; `gone` out, `fresh` in.
    std::fs::copy(components::BATCHER, rig.dir.path().join("swap.wasm")).unwrap();
    rig.write_config(Version::After);
    let report = rig.reloader.reload().await.expect("the reload is applied");
    assert_eq!(report.publishers.added, ["fresh"]);
    assert_eq!(report.publishers.removed, ["gone"]);
    assert_eq!(report.publishers.changed, ["swap"]);
    assert_eq!(report.publishers.unchanged, ["keep"]);
    let stop_after = Arc::new(AtomicBool::new(false));
    let outbox_after = tokio::spawn(produce(Some(rig.store.clone()), rig.addr, before.clone(), stop_after.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    stop_after.store(true, Ordering::Relaxed);

    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for producer in [outbox_before, http, outbox_after] {
        for (publisher, ids) in producer.await.unwrap() {
            sent.entry(publisher).or_default().extend(ids);
        }
    }
    // Every configured publisher's events drain.
    let deadline = Instant::now() + Duration::from_secs(60);
    for publisher in ["keep", "swap", "fresh"] {
        while rig.waiting(publisher).await > 0 {
            assert!(Instant::now() < deadline, "{publisher}'s events did not drain: {:?}", rig.counts().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = rig.stop.send(true);
    let counts = rig.counts().await;
    let relay_report = (&mut rig.running).await.unwrap();
    assert_eq!(relay_report.totals.failed, 0, "{relay_report:?}: {counts:?}");

    for publisher in ["keep", "swap", "fresh"] {
        let in_stream = rig.stream_ids(publisher);
        let unique: BTreeSet<&String> = in_stream.iter().collect();
        assert_eq!(unique.len(), in_stream.len(), "{publisher}: an event was published twice");
        let expected: BTreeSet<&String> = sent[publisher].iter().collect();
        assert_eq!(unique, expected, "{publisher}: the stream does not hold exactly the events sent");
    }
    // `gone`: what was published before the reload is in its stream once; the rest waits.
    let published: Vec<String> = rig.stream_ids("gone");
    let unique: BTreeSet<&String> = published.iter().collect();
    assert_eq!(unique.len(), published.len(), "gone: an event was published twice");
    let counts = rig.counts().await;
    let gone = |status| counts.get(&("gone".to_string(), status)).copied().unwrap_or(0);
    assert_eq!(gone(Status::Failed), 0, "a removed publisher's events must wait, not fail: {counts:?}");
    assert!(gone(Status::Pending) > 0, "events sent to `gone` after the reload wait: {counts:?}");
    assert_eq!(
        published.len() as u64 + gone(Status::Pending),
        sent["gone"].len() as u64,
        "gone: every event is published or waiting: {counts:?}"
    );
    assert_eq!(gone(Status::Published), published.len() as u64);
    // The status page says they wait for a publisher a reload removed.
    let (status, body) = admin_get(rig.addr, "/v1/status").await;
    assert_eq!(status, 200, "{body}");
    let unconfigured = &body["unconfigured"];
    assert_eq!(unconfigured[0]["publisher"], "gone", "{body}");
    assert_eq!(unconfigured[0]["removed_by_reload"], true, "{body}");
    assert_eq!(unconfigured[0]["waiting"], gone(Status::Pending), "{body}");
    assert!(!sent["keep"].is_empty() && !sent["swap"].is_empty() && !sent["fresh"].is_empty(), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_load_on_sqlite_loses_nothing_and_publishes_nothing_twice() {
    reload_under_load_loses_nothing_and_publishes_nothing_twice(OutboxKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_load_on_postgres_loses_nothing_and_publishes_nothing_twice() {
    reload_under_load_loses_nothing_and_publishes_nothing_twice(OutboxKind::Postgres).await;
}

/// Reloads `text` (written over the configuration) and expects a refusal whose message
/// contains every one of `reasons`; then checks the running set is the one it was.
async fn refused(rig: &Rig, text: &str, reasons: &[&str]) {
    std::fs::write(rig.config_path(), text).unwrap();
    let before: Vec<String> = rig.relay.registry().iter().map(|(name, _)| name.to_string()).collect();
    let err = rig.reloader.reload().await.expect_err("a broken configuration must be refused");
    let message = err.to_string();
    for reason in reasons {
        assert!(message.contains(reason), "the refusal does not say {reason:?}: {message}");
    }
    let after: Vec<String> = rig.relay.registry().iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(before, after, "a refused reload changed the publishers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_broken_file_or_component_is_refused_with_the_reason_and_changes_nothing() {
    let rig = Rig::start(OutboxKind::Sqlite).await;
    let good = config_text(&rig.outbox, &rig.redis, Version::Before);
    let swap_before = rig.relay.registry().get("swap").unwrap().clone();

    // Not TOML.
    refused(&rig, &format!("{good}\n[publishers.broken\n"), &["broadcaster.toml"]).await;
    // TOML, but a key that does not exist: named with its path.
    refused(&rig, &format!("{good}\n[publishers.keep.limits]\nmemroy = 1\n"), &["publishers.keep"]).await;
    // An added publisher whose component file is not a component.
    let not_wasm = rig.dir.path().join("not-a-component.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let added = format!("{good}\n[publishers.bad]\ncomponent = \"not-a-component.wasm\"\n");
    refused(&rig, &added, &["publisher `bad`", "not-a-component.wasm"]).await;
    // A changed publisher whose component refuses its options in `init` (what `check` runs).
    let bad_options = good.replace("max_len = 1000000", "max_len = 1000000\nno_such_option = 1");
    refused(&rig, &bad_options, &["publisher `swap`", "no_such_option"]).await;
    // A component that imports a capability its publisher is not granted.
    let ungranted = format!("{good}\n[publishers.nogrant]\ncomponent = \"swap.wasm\"\n");
    refused(&rig, &ungranted, &["publisher `nogrant`", "redis"]).await;
    // A section only a restart applies.
    let relay_changed = good.replace("batch_size = 50", "batch_size = 60");
    let err = {
        std::fs::write(rig.config_path(), &relay_changed).unwrap();
        rig.reloader.reload().await.unwrap_err()
    };
    assert!(matches!(err, ReloadError::NeedsRestart { section: "relay", .. }), "{err}");
    assert!(err.to_string().contains("restart"), "{err}");

    // Nothing changed: `swap` is the very same instance, and publishing goes on.
    let swap_after = rig.relay.registry().get("swap").unwrap().clone();
    match (&swap_before, &swap_after) {
        (broadcaster::publisher::Publisher::Component(a), broadcaster::publisher::Publisher::Component(b)) => {
            assert!(Arc::ptr_eq(a, b), "a refused reload replaced `swap`")
        }
        _ => panic!("swap is a component"),
    }
    let event = NewEvent::new("after.refusals", "/reload").publisher("swap");
    let id = event.event.id.clone();
    rig.store.enqueue(&[event], now_micros()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rig.stream_ids("swap").contains(&id) {
        assert!(Instant::now() < deadline, "publishing stopped after refused reloads: {:?}", rig.counts().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the good file reloads as a no-op.
    std::fs::write(rig.config_path(), &good).unwrap();
    let report = rig.reloader.reload().await.unwrap();
    assert!(report.publishers.is_empty(), "{report}");
    let _ = rig.stop.send(true);
}

/// `GET path` with the admin token: (status, JSON body).
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = hyper::Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// `POST /v1/admin/reload` with `token`: (status, body).
async fn http_reload(addr: std::net::SocketAddr, token: Option<&str>) -> (u16, serde_json::Value) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = hyper::Request::post(format!("http://{addr}/v1/admin/reload"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client.request(request.body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_endpoint_takes_admin_tokens_only_and_applies_new_tokens_to_the_next_request() {
    let rig = Rig::start(OutboxKind::Sqlite).await;
    let client = reqwest_like::Client::new(rig.addr);
    assert_eq!(http_reload(rig.addr, None).await.0, 401);
    let (status, body) = http_reload(rig.addr, Some(TOKEN)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");

    // A token added by the reload sends at once; one removed is refused at once.
    let late = format!(
        "[tokens.late]\nsecret = {{ sha256 = \"{:x}\" }}\npublishers = [\"keep\"]\n",
        Sha256::digest(LATE.as_bytes())
    );
    let text = config_text(&rig.outbox, &rig.redis, Version::Before)
        .replace("publishers = [\"*\"]", "publishers = [\"swap\"]");
    std::fs::write(rig.config_path(), format!("{text}\n{late}")).unwrap();
    let (status, body) = http_reload(rig.addr, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"]["tokens_changed"], true, "{body}");
    assert_eq!(body["reloaded"]["publishers"]["unchanged"], serde_json::json!(["gone", "keep", "swap"]), "{body}");
    let id = uuid::Uuid::new_v4().to_string();
    assert!(client.post_event_with("keep", &id, 1, LATE).await == 202, "the new token is refused");
    assert_eq!(client.post_event_with("keep", &id, 1, TOKEN).await, 403, "the narrowed token still reaches keep");

    // A broken file: 422 with the reason, and nothing changed (the new token still works).
    std::fs::write(rig.config_path(), "[outbox\n").unwrap();
    let (status, body) = http_reload(rig.addr, Some(ADMIN)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("reload_refused")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("broadcaster.toml"), "{body}");
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(client.post_event_with("keep", &id, 2, LATE).await, 202);
    let _ = rig.stop.send(true);
}
