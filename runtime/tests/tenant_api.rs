//! Tenants through the API (issue 24), with real processes on a real database: `broadcaster
//! serve` takes the admin calls, a second relay (`broadcaster run`) on the same database
//! applies each change within a second, and every refusal stores nothing.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster_tests::process_output::{stderr_lines, wait_for_line};
use broadcaster_tests::{RedisServer, TestDatabase, components};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use redis::Commands;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ADMIN: &str = "tenant-api-admin-0123456789";
const FILE_TENANT: &str = "tenant-api-file-tenant-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `serve` and `run` on one database and one configuration file.
struct Fleet {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    addr: String,
    serve: Child,
    run: Child,
    run_lines: mpsc::Receiver<String>,
    serve_lines: mpsc::Receiver<String>,
    store: OutboxStore,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Fleet {
    async fn start(url: &str, redis: &RedisServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("broadcaster.toml");
        std::fs::write(
            &config,
            format!(
                r#"
                [outbox]
                url = "{url}"
                [relay]
                interval = "100ms"
                [server]
                listen = "127.0.0.1:{port}"
                max_component = "1MiB"
                [tokens.admin]
                secret = {{ sha256 = "{admin:x}" }}
                admin = true
                [tokens.file-tenant]
                secret = {{ sha256 = "{tenant:x}" }}
                publishers = ["filed"]
                [publishers.filed]
                backend = "redis-stream"
                [publishers.filed.options]
                host = "127.0.0.1"
                port = {redis}
                stream_name = "filed"
                "#,
                admin = Sha256::digest(ADMIN.as_bytes()),
                tenant = Sha256::digest(FILE_TENANT.as_bytes()),
                redis = redis.port(),
            ),
        )
        .unwrap();
        let store = OutboxStore::connect(url).await.unwrap();
        store.migrate().await.unwrap();
        let spawn = |command: &str| {
            Command::new(env!("CARGO_BIN_EXE_broadcaster"))
                .args([command, "--config", config.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut serve = spawn("serve");
        let serve_lines = stderr_lines(&mut serve);
        wait_for_line(&serve_lines, &["listening on"], Duration::from_secs(30));
        let mut run = spawn("run");
        let run_lines = stderr_lines(&mut run);
        wait_for_line(&run_lines, &["broadcaster worker: outbox"], Duration::from_secs(30));
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self { _dir: dir, config, addr: format!("127.0.0.1:{port}"), serve, run, run_lines, serve_lines, store, client }
    }

    /// A request; the status and the body as JSON (`null` when empty).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", content_type);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = self.client.request(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() })
    }

    /// The status answered to a component upload that declares 2 MiB (over the 1 MiB of
    /// `server.max_component`) and sends none of it.
    async fn declared_too_large(&self) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let head = format!(
            "PUT /v1/admin/components HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {ADMIN}\r\n\
             content-type: application/wasm\r\ncontent-length: {}\r\n\r\n",
            self.addr,
            2 << 20
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 1024];
        let n = stream.read(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {text}"))
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        self.call(method, path, Some(ADMIN), "application/json", body).await
    }

    async fn send(&self, token: &str, publisher: &str) -> u16 {
        let event = json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "type": "t", "source": "/s"});
        let path = format!("/v1/publishers/{publisher}/events");
        self.call("POST", &path, Some(token), "application/cloudevents+json", event.to_string().into_bytes()).await.0
    }

    async fn enqueue(&self, publisher: &str) -> String {
        let event = NewEvent::new("tenant.test", "/tenants").publisher(publisher);
        self.store.enqueue(&[event], now_micros()).await.unwrap().remove(0)
    }

    /// Waits until both relays have logged applying a catalog change with `needles`: an event
    /// enqueued in the second after a change may still go to the version before it on a
    /// relay that has not applied it yet.
    fn applied(&self, needles: &[&str]) {
        let needles: Vec<&str> = ["catalog changes applied"].into_iter().chain(needles.iter().copied()).collect();
        wait_for_line(&self.run_lines, &needles, Duration::from_secs(5));
        wait_for_line(&self.serve_lines, &needles, Duration::from_secs(5));
    }

    /// Stops both relays, checking that they stop cleanly.
    fn stop(&mut self) {
        for child in [&mut self.serve, &mut self.run] {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let exit = child.wait().unwrap();
            assert!(exit.success(), "a relay did not stop cleanly: {exit}");
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in [&mut self.serve, &mut self.run] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `stream` holds `n` entries.
async fn stream_reaches(redis: &RedisServer, stream: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.client().xlen::<_, usize>(stream).unwrap() < n {
        assert!(Instant::now() < deadline, "stream {stream} did not reach {n} entries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn definition(sha: &str, stream: &str, redis: &RedisServer) -> Value {
    json!({
        "component": sha,
        "options": {"stream_name": stream},
        "grants": {"redis": {"host": "127.0.0.1", "port": redis.port(), "streams": ["tenant-a*"]}},
        "limits": {"memory": "32MiB"},
    })
}

async fn the_admin_api_onboards_changes_and_removes_tenants_on(url: &str) {
    let redis = RedisServer::start();
    let mut fleet = Fleet::start(url, &redis).await;
    let wasm = std::fs::read(components::REDIS_STREAM).unwrap();
    let sha = format!("{:x}", Sha256::digest(&wasm));

    // Who may call: no token 401, a tenant's token 403 (answered before the body is read).
    let upload = |token| fleet.call("PUT", "/v1/admin/components", token, "application/wasm", wasm.clone());
    let small = |token| fleet.call("PUT", "/v1/admin/components", token, "application/wasm", b"\0asm".to_vec());
    assert_eq!(small(None).await.0, 401);
    assert_eq!(small(Some(FILE_TENANT)).await.0, 403);
    assert_eq!(fleet.admin("GET", "/v1/admin/publishers", Value::Null).await.0, 200);

    // Components: refused with the reason, or stored once.
    let refused =
        |(status, body): (u16, Value)| (status, body["error"]["code"].as_str().unwrap_or_default().to_string());
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let put_bytes =
        |bytes: Vec<u8>, content_type| fleet.call("PUT", "/v1/admin/components", Some(ADMIN), content_type, bytes);
    assert_eq!(refused(put_bytes(core_module, "application/wasm").await), (400, "component_refused".into()));
    assert_eq!(refused(put_bytes(b"hello".to_vec(), "application/wasm").await), (400, "component_refused".into()));
    assert_eq!(refused(put_bytes(b"\0asm".to_vec(), "application/json").await), (415, "unsupported_media_type".into()));
    assert_eq!(fleet.declared_too_large().await, 413, "a body over server.max_component is refused unread");
    let (status, stored) = upload(Some(ADMIN)).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!((stored["sha256"].as_str(), stored["contract"].as_str()), (Some(sha.as_str()), Some("0.2.0")));
    assert!(stored["imports"].as_array().unwrap().iter().any(|i| i.as_str().unwrap().contains("redis-stream")));
    assert_eq!(upload(Some(ADMIN)).await.0, 200, "the same bytes again");

    // Publishers: every bad definition refused with a code, nothing stored.
    let path = "/v1/admin/publishers/tenant-a";
    let bad = [
        (json!({"component": sha, "option": {}}), 422, "publisher_refused"),
        (json!({"component": sha, "options": {"stream_name": "tenant-a"}}), 422, "publisher_refused"),
        (json!({"component": "ab".repeat(32)}), 404, "component_missing"),
        (json!({"backend": "redis-stream", "options": {"port": "many"}}), 422, "publisher_refused"),
        (json!(["not", "an", "object"]), 400, "bad_request"),
    ];
    for (body, status, code) in bad {
        assert_eq!(refused(fleet.admin("PUT", path, body.clone()).await), (status, code.into()), "{body}");
    }
    let (status, body) = fleet.admin("PUT", "/v1/admin/publishers/filed", json!({"backend": "redis-stream"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("defined_in_file")));
    let (_, list) = fleet.admin("GET", "/v1/admin/publishers", Value::Null).await;
    assert_eq!(list["publishers"].as_array().unwrap().len(), 1, "only the file's publisher: {list}");

    // Created: the second relay applies it within a second, and it publishes there.
    let (status, body) = fleet.admin("PUT", path, definition(&sha, "tenant-a", &redis)).await;
    assert_eq!((status, &body), (201, &json!({"name": "tenant-a", "version": 1})));
    let put_at = Instant::now();
    wait_for_line(&fleet.run_lines, &["catalog changes applied", "added=[\"tenant-a\"]"], Duration::from_secs(5));
    let applied_in = put_at.elapsed();
    wait_for_line(&fleet.serve_lines, &["catalog changes applied", "added=[\"tenant-a\"]"], Duration::from_secs(5));
    assert!(applied_in < Duration::from_secs(1), "the second relay applied the change after {applied_in:?}");
    fleet.enqueue("tenant-a").await;
    stream_reaches(&redis, "tenant-a", 1).await;

    // A token made through the API works at once; revoked, it is refused within a second.
    let (status, made) =
        fleet.admin("POST", "/v1/admin/tokens", json!({"name": "tenant-a", "publishers": ["tenant-a"]})).await;
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    let accepted = Instant::now();
    while fleet.send(&token, "tenant-a").await != 202 {
        assert!(accepted.elapsed() < Duration::from_secs(1), "the new token is not accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fleet.send(&token, "filed").await, 403, "the token reaches only its publishers");
    stream_reaches(&redis, "tenant-a", 2).await;
    let again = fleet.admin("POST", "/v1/admin/tokens", json!({"name": "tenant-a", "publishers": ["x"]})).await;
    assert_eq!(refused(again), (409, "token_exists".into()));

    // Changed (If-Match): the new version publishes to its new stream; a stale If-Match is 409.
    let change = |if_match: &'static str, stream: &'static str| {
        let body = definition(&sha, stream, &redis).to_string().into_bytes();
        let addr = fleet.addr.clone();
        let client = fleet.client.clone();
        async move {
            let request = hyper::Request::put(format!("http://{addr}{path}"))
                .header("authorization", format!("Bearer {ADMIN}"))
                .header("if-match", if_match)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let status = response.status().as_u16();
            let body: Value =
                serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
            (status, body)
        }
    };
    assert_eq!(change("\"1\"", "tenant-a-v2").await, (200, json!({"name": "tenant-a", "version": 2})));
    assert_eq!(refused(change("\"1\"", "tenant-a-v3").await), (409, "version_conflict".into()));
    fleet.applied(&["changed=[\"tenant-a\"]"]);
    fleet.enqueue("tenant-a").await;
    stream_reaches(&redis, "tenant-a-v2", 1).await;

    // A refused change leaves version 2 publishing.
    let (status, _) =
        fleet.admin("PUT", path, json!({"component": sha, "options": {"stream_name": "tenant-a-v4"}})).await;
    assert_eq!(status, 422);
    fleet.enqueue("tenant-a").await;
    stream_reaches(&redis, "tenant-a-v2", 2).await;

    // Rollback restores version 1's stream, as version 3.
    let (status, body) = fleet.admin("POST", &format!("{path}/rollback"), Value::Null).await;
    assert_eq!((status, body), (200, json!({"name": "tenant-a", "version": 3, "from": 1})));
    fleet.applied(&["changed=[\"tenant-a\"]"]);
    fleet.enqueue("tenant-a").await;
    stream_reaches(&redis, "tenant-a", 3).await;
    let (_, shown) = fleet.admin("GET", path, Value::Null).await;
    assert_eq!(shown["version"], 3);
    assert_eq!(shown["versions"].as_array().unwrap().len(), 3);
    assert_eq!(shown["definition"]["options"]["stream_name"], "tenant-a");

    // A reload of the file keeps the catalog's publishers.
    let status = Command::new("kill").args(["-HUP", &fleet.run.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for_line(&fleet.run_lines, &["broadcaster: reloaded"], Duration::from_secs(10));

    // Removed: its events wait, they are not failed; removing again is 404.
    let (status, body) = fleet.admin("DELETE", path, Value::Null).await;
    assert_eq!((status, body), (200, json!({"name": "tenant-a", "version": 3})));
    assert_eq!(fleet.admin("DELETE", path, Value::Null).await.0, 404);
    fleet.applied(&["removed=[\"tenant-a\"]"]);
    let waiting = fleet.enqueue("tenant-a").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = fleet.store.find(std::slice::from_ref(&waiting)).await.unwrap().remove(0);
    assert_eq!(row.status, Status::Pending, "a removed tenant's event waits");
    assert_eq!(redis.client().xlen::<_, usize>("tenant-a").unwrap(), 3);

    // A name the catalog never had fails as unknown, as it always did.
    let typo = fleet.enqueue("nobody-defined-this").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.store.find(std::slice::from_ref(&typo)).await.unwrap()[0].status != Status::Failed {
        assert!(Instant::now() < deadline, "an event for a publisher nobody defined did not fail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = fleet.store.find(std::slice::from_ref(&waiting)).await.unwrap().remove(0);
    assert_eq!(row.status, Status::Pending, "the removed tenant's event still waits");

    // Revoked: refused within a second.
    assert_eq!(fleet.admin("DELETE", "/v1/admin/tokens/tenant-a", Value::Null).await.0, 200);
    let revoked = Instant::now();
    while fleet.send(&token, "filed").await != 401 {
        assert!(revoked.elapsed() < Duration::from_secs(1), "the revoked token is still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fleet.admin("DELETE", "/v1/admin/tokens/tenant-a", Value::Null).await.0, 404);
    assert_eq!(fleet.admin("DELETE", "/v1/admin/tokens/file-tenant", Value::Null).await.0, 409);

    // Brought back by a rollback after the removal: its waiting event is published.
    let (status, body) = fleet.admin("POST", &format!("{path}/rollback"), json!({"version": 1})).await;
    assert_eq!((status, body["version"].as_i64()), (200, Some(4)));
    stream_reaches(&redis, "tenant-a", 4).await;
    let config = fleet.config.clone();
    fleet.stop();

    // The command line sees the same catalog.
    let output = Command::new(env!("CARGO_BIN_EXE_broadcaster"))
        .args(["tenants", "list", "--json", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let page: Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<(&str, &str)> = page["publishers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("filed", "file"), ("tenant-a", "api")]);
    // …and so do the commands that name publishers.
    let output = Command::new(env!("CARGO_BIN_EXE_broadcaster"))
        .args(["health", "--json", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let health: Value = serde_json::from_slice(&output.stdout).unwrap();
    let checked: Vec<&str> = health.as_array().unwrap().iter().map(|p| p["publisher"].as_str().unwrap()).collect();
    assert_eq!(checked, ["filed", "tenant-a"], "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_onboards_changes_and_removes_tenants_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    the_admin_api_onboards_changes_and_removes_tenants_on(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_onboards_changes_and_removes_tenants_on_postgres() {
    let database = TestDatabase::create().await;
    the_admin_api_onboards_changes_and_removes_tenants_on(database.url()).await;
}

/// The `event_id` of every entry of `stream`, in order.
fn stream_event_ids(redis: &RedisServer, stream: &str) -> Vec<String> {
    let entries: redis::streams::StreamRangeReply = redis.client().xrange_all(stream).unwrap();
    entries.ids.iter().map(|entry| entry.get::<String>("event_id").unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_changed_and_removed_under_load_through_three_relays_lose_and_repeat_nothing() {
    // A tenant given a new component and options and one removed while 2,000 events/s flow.
    use broadcaster::tenants::{FileView, TenantCatalog};
    use std::collections::{BTreeMap, BTreeSet};

    let redis = RedisServer::start();
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("broadcaster.toml");
    std::fs::write(&config_path, format!("[outbox]\nurl = \"{}\"\n[relay]\ninterval = \"100ms\"\n", database.url()))
        .unwrap();
    let store = OutboxStore::connect(database.url()).await.unwrap();
    store.migrate().await.unwrap();
    let config = broadcaster::checks::load_config(&config_path).unwrap();
    let tenants = TenantCatalog::new(store.catalog().unwrap(), FileView::Loaded(Box::new(config)));
    let sha = tenants.component_reference(components::REDIS_STREAM, "test").await.unwrap();
    // The change gives the tenant another component (the same backend built for contract
    // 0.1.0) with another stream.
    let older = tenants.component_reference(components::STREAM_V0_1, "test").await.unwrap();
    let component_of = |sha: &str, stream: &str| {
        json!({
            "component": sha,
            "options": {"stream_name": stream},
            "grants": {"redis": {"host": "127.0.0.1", "port": redis.port(), "streams": ["load-*"]}},
        })
    };
    let component = |stream: &str| component_of(&sha, stream);
    let native = json!({"backend": "redis-stream", "options": {"host": "127.0.0.1", "port": redis.port(), "stream_name": "load-native"}});
    tenants.put_publisher("changed", component("load-changed-v1"), None, "test").await.unwrap();
    tenants.put_publisher("removed", component("load-removed"), None, "test").await.unwrap();
    tenants.put_publisher("native", native, None, "test").await.unwrap();

    let relays: Vec<Child> = (0..3)
        .map(|_| {
            let mut relay = Command::new(env!("CARGO_BIN_EXE_broadcaster"))
                .args(["run", "--config", config_path.to_str().unwrap()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let lines = stderr_lines(&mut relay);
            wait_for_line(&lines, &["broadcaster worker: outbox"], Duration::from_secs(30));
            std::thread::spawn(move || {
                while let Ok(line) = lines.recv() {
                    eprintln!("relay: {line}");
                }
            });
            relay
        })
        .collect();
    struct Relays(Vec<Child>);
    impl Drop for Relays {
        fn drop(&mut self) {
            for relay in &mut self.0 {
                let _ = relay.kill();
                let _ = relay.wait();
            }
        }
    }
    let mut relays = Relays(relays);

    // 2,000 events a second for 5 s, a batch every 10 ms, to the three in turn; the change at
    // 1.5 s, the removal at 3 s.
    let mut sent: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let names = ["changed", "removed", "native"];
    let started = Instant::now();
    let (mut changed, mut removed) = (false, false);
    let mut sent_after_removal = Vec::new();
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        // On schedule: as many as 2,000/s calls for by now.
        let due = (started.elapsed().as_secs_f64() * 2000.0) as usize;
        let events: Vec<NewEvent> = (0..due.saturating_sub(i).min(500))
            .map(|_| {
                i += 1;
                NewEvent::new("load.test", "/load").publisher(names[i % 3]).data(json!({"n": i}))
            })
            .collect();
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let ids = store.enqueue(&events, now_micros()).await.unwrap();
        for (event, id) in events.iter().zip(ids) {
            let name = names.iter().find(|n| **n == event.event.publisher_backend).unwrap();
            if removed && *name == "removed" {
                sent_after_removal.push(id.clone());
            }
            sent.entry(name).or_default().push(id);
        }
        if !changed && started.elapsed() > Duration::from_millis(1500) {
            tenants.put_publisher("changed", component_of(&older, "load-changed-v2"), Some(1), "test").await.unwrap();
            changed = true;
        }
        if !removed && started.elapsed() > Duration::from_secs(3) {
            tenants.remove_publisher("removed").await.unwrap();
            removed = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total: usize = sent.values().map(Vec::len).sum();
    assert!(total >= 9_500, "the producer fell behind: {total} events in 5 s");
    eprintln!("sent {total} events in 5 s: {:?}", sent.iter().map(|(n, ids)| (n, ids.len())).collect::<Vec<_>>());

    // Everything but the removed tenant's latest events is published; those wait, not failed.
    // Open rows (pending, retry, processing) and failed rows, of one publisher or of all.
    let rows = |store: OutboxStore, publisher: Option<&'static str>| async move {
        let report = store.status(now_micros(), Duration::from_secs(60)).await.unwrap();
        let count = |wanted: &[Status]| {
            report
                .counts
                .iter()
                .filter(|((p, s), _)| wanted.contains(s) && publisher.is_none_or(|name| p == name))
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        (count(&[Status::Pending, Status::Retry, Status::Processing]), count(&[Status::Failed]))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(store.clone(), Some("changed")).await.0 + rows(store.clone(), Some("native")).await.0 > 0 {
        assert!(Instant::now() < deadline, "the changed and native tenants' events were not all published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The removed tenant's rows in flight when it was removed settle too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (open, failed) = rows(store.clone(), Some("removed")).await;
    assert_eq!(rows(store.clone(), None).await.1, 0, "no event failed");
    assert_eq!(failed, 0);
    let removed_stream = redis.client().xlen::<_, usize>("load-removed").unwrap();
    assert_eq!(open as usize + removed_stream, sent["removed"].len(), "the removed tenant's events wait");
    // Relays apply the removal within a second of it; what was sent after that waits.
    assert!(open > 0 && !sent_after_removal.is_empty(), "events sent after the removal wait");

    // Brought back, it publishes what waited.
    tenants.rollback("removed", None, "test").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows(store.clone(), None).await.0 > 0 {
        assert!(Instant::now() < deadline, "the waiting events were not published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each stream holds exactly the ids sent to it, each once.
    let set = |ids: Vec<String>| {
        let n = ids.len();
        let set: BTreeSet<String> = ids.into_iter().collect();
        assert_eq!(set.len(), n, "an event was published twice");
        set
    };
    let mut changed_ids = stream_event_ids(&redis, "load-changed-v1");
    let v1 = changed_ids.len();
    changed_ids.extend(stream_event_ids(&redis, "load-changed-v2"));
    assert!(v1 > 0 && changed_ids.len() > v1, "the change moved the tenant's events from one stream to the other");
    assert_eq!(set(changed_ids), sent["changed"].iter().cloned().collect());
    assert_eq!(set(stream_event_ids(&redis, "load-removed")), sent["removed"].iter().cloned().collect());
    assert_eq!(set(stream_event_ids(&redis, "load-native")), sent["native"].iter().cloned().collect());
    for relay in &mut relays.0 {
        let _ = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status();
        assert!(relay.wait().unwrap().success());
    }
}
