//! `broadcaster serve` as a process: it answers probes and ingest on its address, the relay in
//! it publishes what was ingested, SIGTERM stops both cleanly, and a token that cannot be read
//! stops it before anything starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broadcaster_tests::RedisServer;
use redis::Commands;

/// One HTTP/1.1 request on a fresh connection; the status code and the body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn config(dir: &std::path::Path, redis: &RedisServer) -> std::path::PathBuf {
    let path = dir.join("broadcaster.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [outbox]
            url = "sqlite://{db}"
            [server]
            listen = "127.0.0.1:0"
            {publisher}
            [tokens.tenant]
            secret = {{ secret = "SERVE_TEST_TOKEN" }}
            publishers = ["default"]
            "#,
            db = dir.join("outbox.db").display(),
            publisher = redis.native_publisher_toml("default"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn serve_ingests_publishes_and_stops_on_sigterm() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &redis);
    let bin = env!("CARGO_BIN_EXE_broadcaster");
    assert!(Command::new(bin).args(["migrate", "--config"]).arg(&config).status().unwrap().success());
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("SERVE_TEST_TOKEN", "serve-test-token-0123456789")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The address it listens on, from its first line about it.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve exited before listening");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            // "127.0.0.1:PORT: POST …"
            break rest.split(':').take(2).collect::<Vec<_>>().join(":");
        }
    };
    let (status, body) = http(&addr, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let event = r#"{"specversion":"1.0","id":"0b9d6a5e-0000-4000-8000-0000000000aa","type":"order.created","source":"/shop","data":{"n":1}}"#;
    let (status, body) = http(
        &addr,
        &format!(
            "POST /v1/publishers/default/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer serve-test-token-0123456789\r\nContent-Type: application/cloudevents+json\r\n\
             Content-Length: {}\r\n\r\n{event}",
            event.len()
        ),
    );
    assert_eq!(status, 202, "{body}");
    // The relay in the same process publishes it.
    let mut conn = redis.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.xlen::<_, u64>("events").unwrap() == 0 {
        assert!(Instant::now() < deadline, "the ingested event was not published");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, metrics) = http(&addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"broadcaster_ingest_requests_total{code="202"} 1"#), "{metrics}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(20), "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("1 published"), "{rest}");
}

#[test]
fn a_token_that_cannot_be_read_stops_serve_before_the_worker_starts() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &redis);
    let bin = env!("CARGO_BIN_EXE_broadcaster");
    assert!(Command::new(bin).args(["migrate", "--config"]).arg(&config).status().unwrap().success());
    let output =
        Command::new(bin).args(["serve", "--config"]).arg(&config).env_remove("SERVE_TEST_TOKEN").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tokens.tenant.secret") && stderr.contains("SERVE_TEST_TOKEN"), "{stderr}");
    assert!(!stderr.contains("broadcaster worker"), "nothing started: {stderr}");
}
