//! `broadcaster run` as a process, reloaded with SIGHUP: a publisher added to the file
//! publishes without a restart; a broken file is refused (said on stderr) and the worker goes
//! on as it was.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore};
use broadcaster_tests::RedisServer;
use broadcaster_tests::process_output::{stderr_lines, wait_for_line};
use redis::Commands;

fn config_text(url: &str, redis: &RedisServer, publishers: &[&str]) -> String {
    let mut text = format!("[outbox]\nurl = \"{url}\"\n[relay]\ninterval = \"100ms\"\n");
    for name in publishers {
        text.push_str(&format!(
            "[publishers.{name}]\nbackend = \"redis-stream\"\n[publishers.{name}.options]\nhost = \"127.0.0.1\"\n\
             port = {port}\nstream_name = \"{name}\"\n",
            port = redis.port()
        ));
    }
    text
}

fn hangup(child: &Child) {
    let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn published_to(redis: &RedisServer, stream: &str, store: &OutboxStore) {
    let event = NewEvent::new("reload.sighup", "/test").publisher(stream);
    store.enqueue(&[event], now_micros()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.client().xlen::<_, usize>(stream).unwrap() == 0 {
        assert!(Instant::now() < deadline, "nothing reached stream {stream}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_publisher_without_a_restart_and_refuses_a_broken_file_keeping_the_old_set() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let config = dir.path().join("broadcaster.toml");
    std::fs::write(&config, config_text(&url, &redis, &["first"])).unwrap();
    let store = OutboxStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();

    let mut worker = Command::new(env!("CARGO_BIN_EXE_broadcaster"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting broadcaster run");
    let lines = stderr_lines(&mut worker);
    wait_for_line(&lines, &["broadcaster worker: outbox"], Duration::from_secs(30));
    published_to(&redis, "first", &store).await;

    std::fs::write(&config, config_text(&url, &redis, &["first", "second"])).unwrap();
    hangup(&worker);
    let line = wait_for_line(&lines, &["broadcaster: reloaded"], Duration::from_secs(30));
    assert!(line.contains("added: second"), "{line}");
    published_to(&redis, "second", &store).await;

    std::fs::write(&config, "[publishers.first\n").unwrap();
    hangup(&worker);
    let line = wait_for_line(&lines, &["broadcaster: reload refused"], Duration::from_secs(30));
    assert!(line.contains("broadcaster.toml") && line.contains("nothing changed"), "{line}");
    // Both publishers still publish.
    redis.client().del::<_, ()>(&["first", "second"]).unwrap();
    published_to(&redis, "first", &store).await;
    published_to(&redis, "second", &store).await;

    let status = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "the worker did not stop cleanly: {exit}");
}
