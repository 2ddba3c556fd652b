//! What the `serve_*` tests share: the HTTP service of `broadcaster serve` started in process
//! on 127.0.0.1 and a free port (its outbox, relay and Redis), and a small HTTP client.
// Each test file uses part of this.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::Relay;
use broadcaster::server::{ServerState, serve};
use broadcaster_tests::{OutboxKind, RedisServer, TestOutbox};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A token that reaches every publisher (`*`).
pub const OPS: &str = "ops-token-0123456789abcdef";
/// A token that reaches `tenant-a` and `tenant-a-*`.
pub const TENANT_A: &str = "tenant-a-token-0123456789";
/// A token that reaches `limited`: 2 events a second, 3 at once.
pub const LIMITED: &str = "limited-token-0123456789";
/// The configured publishers (native Redis Stream, stream `events`), in name order.
pub const PUBLISHERS: [&str; 6] = ["audit", "limited", "orders", "tenant-a", "tenant-a-orders", "tenant-b"];

pub const STRUCTURED: &str = "application/cloudevents+json";
pub const BATCH: &str = "application/cloudevents-batch+json";

/// An answer: status, headers, body as text.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }

    /// `error.code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code: {}", self.body)).to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The server in process on a free port, with its outbox, relay (not running) and Redis.
pub struct Service {
    pub outbox: TestOutbox,
    pub redis: RedisServer,
    pub store: OutboxStore,
    pub relay: Arc<Relay>,
    pub addr: SocketAddr,
    /// The server's state, alive while the server holds it.
    pub state: Weak<ServerState>,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Service {
    /// `[server] max_body = "2KiB"`, `max_batch_events = 5`, the backlog counted at every
    /// scrape; the tokens above (as SHA-256 digests); the publishers above.
    pub async fn start(kind: OutboxKind) -> Self {
        Self::start_with(kind, |_| String::new()).await
    }

    /// The same, with more TOML (given the Redis server) appended to the configuration.
    pub async fn start_with(kind: OutboxKind, extra: impl FnOnce(&RedisServer) -> String) -> Self {
        let outbox = TestOutbox::create(kind).await;
        let redis = RedisServer::start();
        let digest = |token: &str| format!("{:x}", Sha256::digest(token.as_bytes()));
        let mut text = format!(
            r#"
            [outbox]
            url = "{url}"
            [server]
            max_body = "2KiB"
            max_batch_events = 5
            backlog_refresh = "0s"
            [tokens.ops]
            secret = {{ sha256 = "{ops}" }}
            publishers = ["*"]
            [tokens.tenant-a]
            secret = {{ sha256 = "{tenant_a}" }}
            publishers = ["tenant-a", "tenant-a-*"]
            [tokens.limited]
            secret = {{ sha256 = "{limited}" }}
            publishers = ["limited"]
            rate = 2
            burst = 3
            "#,
            url = outbox.url(),
            ops = digest(OPS),
            tenant_a = digest(TENANT_A),
            limited = digest(LIMITED),
        );
        for name in PUBLISHERS {
            text.push_str(&redis.native_publisher_toml(name));
        }
        text.push_str(&extra(&redis));
        let config = Config::from_toml(&text, "serve.toml".as_ref(), Vec::new()).unwrap();
        let store = OutboxStore::connect(outbox.url()).await.unwrap();
        store.migrate().await.unwrap();
        let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
        let relay = Arc::new(Relay::new(store.clone(), registry, &config.relay));
        let state = ServerState::new(&config, &relay).unwrap();
        let weak_state = Arc::downgrade(&state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self { outbox, redis, store, relay, addr, state: weak_state, client, shutdown: Some(shutdown), serving }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = hyper::Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.client.request(request.body(Full::new(body.into())).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer { status: parts.status, headers: parts.headers, body: String::from_utf8(body.to_vec()).unwrap() }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// POSTs `body` to `publisher`'s events with `token` (none: no Authorization).
    pub async fn post(&self, publisher: &str, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> Answer {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
        all.extend_from_slice(headers);
        let path = format!("/v1/publishers/{publisher}/events");
        self.request(Method::POST, &path, &all, body.to_string()).await
    }

    /// One structured event, with the ops token.
    pub async fn structured(&self, publisher: &str, event: &Value) -> Answer {
        self.post(publisher, Some(OPS), &[("content-type", STRUCTURED)], &event.to_string()).await
    }

    /// A batch, with the ops token.
    pub async fn batch(&self, publisher: &str, events: &[Value]) -> Answer {
        self.post(publisher, Some(OPS), &[("content-type", BATCH)], &json!(events).to_string()).await
    }

    /// Rows in the outbox, whatever their status.
    pub async fn rows(&self) -> u64 {
        self.rows_in(None).await
    }

    /// Rows in `status` (none: any).
    pub async fn rows_in(&self, status: Option<Status>) -> u64 {
        let report = self.store.status(now_micros(), Duration::from_secs(60)).await.unwrap();
        report.counts.iter().filter(|((_, s), _)| status.is_none_or(|status| *s == status)).map(|(_, n)| n).sum()
    }

    /// (type, source, data, publisher_backend, publisher_config) of the row `id`, read with SQL.
    pub async fn stored(&self, id: &str) -> (String, String, Option<Value>, String, Value) {
        type Row = (String, String, Option<String>, String, String);
        let select = "SELECT event_type, source, CAST(data AS TEXT), publisher_backend, \
                      CAST(publisher_config AS TEXT) FROM outbox_events";
        let row: Row = match self.outbox.kind() {
            OutboxKind::Postgres => {
                let pool = sqlx::PgPool::connect(self.outbox.url()).await.unwrap();
                let query = format!("{select} WHERE id::text = $1");
                sqlx::query_as(sqlx::AssertSqlSafe(query)).bind(id).fetch_one(&pool).await.unwrap()
            }
            OutboxKind::Sqlite => {
                let pool = sqlx::SqlitePool::connect(self.outbox.url()).await.unwrap();
                let query = format!("{select} WHERE id = $1");
                let simple = uuid::Uuid::parse_str(id).unwrap().simple().to_string();
                sqlx::query_as(sqlx::AssertSqlSafe(query)).bind(simple).fetch_one(&pool).await.unwrap()
            }
        };
        let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        (row.0, row.1, row.2.as_deref().map(parse), row.3, parse(&row.4))
    }

    /// Stops serving: `serve` returns `Ok` and the port is closed.
    pub async fn shut_down(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.serving).await.unwrap().unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(self.addr).await.is_err(), "still listening after shutdown");
    }
}

/// A valid structured event with a fresh id.
pub fn event(event_type: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": event_type,
        "source": "/shop",
        "data": {"order": 42},
    })
}

pub fn id_of(event: &Value) -> String {
    event["id"].as_str().unwrap().to_string()
}

/// The body of a 202/200 answer.
pub fn accepted(ids: &[&str], repeated: &[&str]) -> Value {
    json!({ "ids": ids, "repeated": repeated })
}
