//! The outbox commands on a SQLite outbox: migrate, publish, run, status, retry, prune.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use broadcaster_tests::RedisServer;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

struct Outbox {
    dir: tempfile::TempDir,
    config: PathBuf,
    redis: RedisServer,
}

impl Outbox {
    fn new() -> Self {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("broadcaster.toml");
        std::fs::write(
            &config,
            format!(
                "[outbox]\nurl = \"sqlite://{}\"\n[relay]\nretry_jitter = 0.0\n\
                 [publishers.default]\nbackend = \"redis-stream\"\n[publishers.default.options]\nhost = \"127.0.0.1\"\nport = {}\n",
                dir.path().join("outbox.db").display(),
                redis.port()
            ),
        )
        .unwrap();
        Self { dir, config, redis }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_broadcaster"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let run = self.run(args, stdin);
        assert_eq!(run.code, 0, "broadcaster {args:?}: {}", run.stderr);
        run.stdout
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"], None)).unwrap()
    }

    fn count(&self, status: &str) -> u64 {
        self.status()["publishers"].as_array().unwrap().iter().map(|p| p[status].as_u64().unwrap()).sum()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn migrate_creates_the_table_once_and_commands_without_it_say_to_migrate() {
    let outbox = Outbox::new();
    let run = outbox.run(&["publish", "-t", "t", "-s", "s"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("run `broadcaster migrate`"), "{}", run.stderr);
    assert!(outbox.ok(&["migrate"], None).starts_with("created table outbox_events"));
    assert!(outbox.ok(&["migrate"], None).contains("already exists"));
    assert!(outbox.path().join("outbox.db").exists());
}

#[test]
fn publish_then_run_then_status_shows_the_events_published() {
    let outbox = Outbox::new();
    outbox.ok(&["migrate"], None);
    let one =
        outbox.ok(&["publish", "-t", "order.created", "-s", "/shop", "-d", r#"{"n": 1}"#, "--subject", "o/1"], None);
    assert!(uuid::Uuid::parse_str(one.trim()).is_ok(), "{one}");
    let lines = "{\"specversion\":\"1.0\",\"type\":\"a\",\"source\":\"/s\"}\n{\"specversion\":\"1.0\",\"type\":\"b\",\"source\":\"/s\",\"id\":\"6f1c2b52-3f3c-4d5e-9a1b-2c3d4e5f6a7b\"}\n";
    let many = outbox.ok(&["publish"], Some(lines));
    assert_eq!(many.lines().count(), 2);
    assert_eq!(many.lines().nth(1), Some("6f1c2b52-3f3c-4d5e-9a1b-2c3d4e5f6a7b"));
    assert_eq!(outbox.count("pending"), 3);

    let run = outbox.run(&["run", "--max-iterations", "1"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("3 published"), "{}", run.stderr);
    assert_eq!(outbox.count("published"), 3);
    let len: usize = redis::Commands::xlen(&mut outbox.redis.client(), "events").unwrap();
    assert_eq!(len, 3);
    let table = outbox.ok(&["status"], None);
    assert!(table.contains("PUBLISHED") && table.contains("oldest due event: none due"), "{table}");
}

#[test]
fn publish_refuses_what_the_outbox_cannot_hold() {
    let outbox = Outbox::new();
    outbox.ok(&["migrate"], None);
    let bad_time = outbox.run(&["publish", "-t", "t", "-s", "s", "--scheduled-at", "soon"], None);
    assert_eq!(bad_time.code, 2);
    assert!(bad_time.stderr.contains("--scheduled-at") && bad_time.stderr.contains("RFC 3339"), "{}", bad_time.stderr);
    let bad_id = outbox.run(&["publish"], Some(r#"{"specversion":"1.0","type":"t","source":"s","id":"evt-1"}"#));
    assert_eq!(bad_id.code, 2);
    assert!(bad_id.stderr.contains("not a UUID"), "{}", bad_id.stderr);
    let bad_line = outbox.run(&["publish"], Some("{\"specversion\":\"1.0\",\"type\":\"t\",\"source\":\"s\"}\nnope\n"));
    assert_eq!(bad_line.code, 2);
    assert!(bad_line.stderr.contains("stdin line 2"), "{}", bad_line.stderr);
    assert_eq!(outbox.count("pending"), 0, "nothing of a refused input is stored");
}

#[test]
fn retry_puts_failed_events_back_and_explains_the_rest() {
    let outbox = Outbox::new();
    outbox.ok(&["migrate"], None);
    let failed = outbox.ok(&["publish", "-t", "t", "-s", "s", "-p", "nobody"], None).trim().to_string();
    let fine = outbox.ok(&["publish", "-t", "t", "-s", "s"], None).trim().to_string();
    outbox.ok(&["run", "--max-iterations", "1"], None);
    assert_eq!((outbox.count("failed"), outbox.count("published")), (1, 1));

    let hex = failed.replace('-', "");
    let run = outbox.run(&["retry", &hex, &fine], None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), failed);
    assert!(run.stderr.contains(&format!("not changed: {fine} is published")), "{}", run.stderr);
    assert_eq!(outbox.count("pending"), 1);

    outbox.ok(&["run", "--max-iterations", "1"], None);
    assert_eq!(outbox.count("failed"), 1);
    assert_eq!(outbox.ok(&["retry", "--failed"], None).trim(), failed);
    let none = outbox.run(&["retry"], None);
    assert_eq!(none.code, 2, "retry needs ids or --failed");
}

#[test]
fn prune_deletes_old_published_events_in_batches_and_dry_run_only_counts() {
    let outbox = Outbox::new();
    outbox.ok(&["migrate"], None);
    let lines: String =
        (0..25).map(|i| format!("{{\"specversion\":\"1.0\",\"type\":\"t{i}\",\"source\":\"s\"}}\n")).collect();
    outbox.ok(&["publish"], Some(&lines));
    outbox.ok(&["publish", "-t", "waiting", "-s", "s", "--scheduled-at", "2999-01-01T00:00:00Z"], None);
    outbox.ok(&["run", "--max-iterations", "1"], None);
    assert_eq!(outbox.count("published"), 25);
    assert!(outbox.ok(&["prune", "--older-than", "1h"], None).contains("deleted 0"));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(outbox.ok(&["prune", "--older-than", "10ms", "--dry-run"], None).starts_with("25 published"));
    assert_eq!(outbox.count("published"), 25);
    assert!(outbox.ok(&["prune", "--older-than", "10ms", "--batch", "10"], None).contains("deleted 25"));
    assert_eq!((outbox.count("published"), outbox.count("pending")), (0, 1), "only published events go");
    let bad = outbox.run(&["prune", "--older-than", "a while"], None);
    assert_eq!(bad.code, 2);
}
