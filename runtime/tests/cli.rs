//! The `broadcaster` binary: what users see, and the exit codes scripts rely on
//! (0 done, 1 the work failed, 2 bad input).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use broadcaster_tests::{RedisServer, components};
use redis::Commands;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn broadcaster(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_broadcaster"));
    cmd.args(args)
        .env_remove("BROADCASTER_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running broadcaster");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("broadcaster.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn native_config(redis_port: u16) -> String {
    format!(
        "[publishers.default]\nbackend = \"redis-stream\"\n[publishers.default.options]\nhost = \"127.0.0.1\"\nport = {redis_port}\n"
    )
}

#[track_caller]
fn assert_bad_input(run: &Run, expected: &[&str]) {
    assert_eq!(run.code, 2, "exit code; stderr: {}", run.stderr);
    for text in expected {
        assert!(run.stderr.contains(text), "stderr should contain {text:?}:\n{}", run.stderr);
    }
}

#[test]
fn send_with_flags_publishes_and_prints_the_event_id() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &native_config(redis.port()));
    let run = broadcaster(
        &[
            "send",
            "--config",
            config.to_str().unwrap(),
            "--type",
            "order.created",
            "--source",
            "/shop",
            "--subject",
            "order/1",
            "--data",
            r#"{"total": 9.5}"#,
            "--publisher-config",
            r#"{"tenant": "a"}"#,
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.trim();
    let mut conn = redis.client();
    let entries: redis::streams::StreamRangeReply = conn.xrange_all("events").unwrap();
    assert_eq!(entries.ids.len(), 1);
    let entry = &entries.ids[0];
    assert_eq!(entry.get::<String>("event_id").unwrap(), id);
    assert_eq!(entry.get::<String>("tenant").unwrap(), "a");
    let cloud_event: String = entry.get("cloud_event").unwrap();
    assert!(
        cloud_event.contains(r#""subject": "order/1""#) && cloud_event.contains(r#""data": {"total": 9.5}"#),
        "{cloud_event}"
    );
}

#[test]
fn send_reads_a_cloud_event_from_stdin_and_still_applies_publisher_config() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &native_config(redis.port()));
    let event = r#"{"specversion": "1.0", "id": "evt-1", "type": "user.created", "source": "/accounts",
                    "time": "2026-11-29T10:00:00Z", "data": {"name": "Zoë"}}"#;
    let run =
        broadcaster(&["send", "-c", config.to_str().unwrap(), "--publisher-config", r#"{"shard": 3}"#], Some(event));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "evt-1");
    let entries: redis::streams::StreamRangeReply = redis.client().xrange_all("events").unwrap();
    let entry = &entries.ids[0];
    assert_eq!(entry.get::<String>("timestamp").unwrap(), "2026-11-29T10:00:00+00:00");
    assert_eq!(entry.get::<String>("shard").unwrap(), "3");
}

#[test]
fn send_that_the_publisher_refuses_exits_1_with_the_reason() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &native_config(redis.port()));
    let run = broadcaster(
        &[
            "send",
            "-c",
            config.to_str().unwrap(),
            "-t",
            "x",
            "-s",
            "/s",
            "--publisher-config",
            r#"{"source": "forged"}"#,
        ],
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("permanent") && run.stderr.contains("\"source\""), "{}", run.stderr);
}

#[test]
fn health_prints_a_table_and_exits_1_when_a_publisher_is_down() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[publishers.wasm]\ncomponent = \"{}\"\n[publishers.wasm.grants]\nredis = {{ host = \"127.0.0.1\", port = {}, streams = [\"events\"] }}\n",
        native_config(redis.port()),
        components::REDIS_STREAM,
        redis.port()
    );
    let config = write_config(dir.path(), &text);
    let up = broadcaster(&["health", "-c", config.to_str().unwrap()], None);
    assert_eq!(up.code, 0, "{}{}", up.stdout, up.stderr);
    assert!(up.stdout.starts_with("PUBLISHER"), "{}", up.stdout);
    assert_eq!(up.stdout.matches("healthy").count(), 2, "{}", up.stdout);
    redis.stop();
    let down = broadcaster(&["health", "-c", config.to_str().unwrap(), "--json"], None);
    assert_eq!(down.code, 1, "{}{}", down.stdout, down.stderr);
    let report: serde_json::Value = serde_json::from_str(&down.stdout).unwrap();
    assert_eq!(report.as_array().unwrap().len(), 2);
    assert!(report.as_array().unwrap().iter().all(|row| row["healthy"] == false), "{report}");
}

#[test]
fn a_missing_config_file_is_bad_input_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let run = broadcaster(&["health", "--config", missing.to_str().unwrap()], None);
    assert_bad_input(&run, &["nope.toml", "--config"]);
}

#[test]
fn an_unknown_config_key_is_bad_input_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[publishers.default]\nbackend = \"redis-stream\"\nbakend = 1\n");
    let run = broadcaster(&["health", "-c", config.to_str().unwrap()], None);
    assert_bad_input(&run, &["publishers.default.bakend", "unknown field"]);
}

#[test]
fn a_missing_component_file_is_bad_input_naming_publisher_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[publishers.tenant-a]\ncomponent = \"missing.wasm\"\n");
    let run = broadcaster(&["health", "-c", config.to_str().unwrap()], None);
    assert_bad_input(&run, &["publisher `tenant-a`", "missing.wasm", "No such file"]);
}

#[test]
fn a_core_module_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("core.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let run = broadcaster(&["check", module.to_str().unwrap()], None);
    assert_bad_input(&run, &["core WebAssembly module, not a component", "wasm32-wasip2"]);
    let config = write_config(dir.path(), "[publishers.a]\ncomponent = \"core.wasm\"\n");
    let run = broadcaster(&["send", "-c", config.to_str().unwrap(), "-p", "a", "-t", "t", "-s", "s"], None);
    assert_bad_input(&run, &["publisher `a`", "core WebAssembly module"]);
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.wasm");
    std::fs::write(&file, b"hello").unwrap();
    assert_bad_input(&broadcaster(&["check", file.to_str().unwrap()], None), &["not a WebAssembly file"]);
}

#[test]
fn a_component_for_another_world_is_refused_with_what_it_exports() {
    let run = broadcaster(&["check", components::COMMAND], None);
    assert_bad_input(&run, &["not a Broadcaster backend", "wasi:cli/run", "another world"]);
}

#[test]
fn check_accepts_a_backend_and_lists_its_imports() {
    let run = broadcaster(&["check", components::ROUTER], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("ok:")
            && run.stdout.contains("is a backend for broadcaster:backend@0.2.0 (a batch per call")
            && run.stdout.contains("broadcaster:backend/redis-stream@0.2.0"),
        "{}",
        run.stdout
    );
    let old = broadcaster(&["check", components::STREAM_V0_1], None);
    assert_eq!(old.code, 0, "{}", old.stderr);
    assert!(old.stdout.contains("is a backend for broadcaster:backend@0.1.0 (one event per call"), "{}", old.stdout);
}

#[test]
fn init_rejecting_its_options_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[publishers.r]\ncomponent = \"{}\"\n[publishers.r.options]\nroutes = {{}}\n[publishers.r.grants]\nredis = {{ streams = [\"r:*\"] }}\n",
            components::ROUTER
        ),
    );
    let run = broadcaster(&["send", "-c", config.to_str().unwrap(), "-p", "r", "-t", "t", "-s", "s"], None);
    assert_bad_input(&run, &["publisher `r`", "init rejected", "option `routes`"]);
}

#[test]
fn a_component_needing_an_ungranted_capability_is_bad_input_before_any_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[publishers.r]\ncomponent = \"{}\"\n", components::ROUTER));
    let run = broadcaster(&["health", "-c", config.to_str().unwrap()], None);
    assert_bad_input(&run, &["publisher `r`", "imports `broadcaster:backend/redis-stream@0.2.0`", "grants"]);
}

#[test]
fn check_against_a_publisher_reports_a_missing_grant_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[publishers.hook]\ncomponent = \"x.wasm\"\n[publishers.hook.grants]\nredis = { streams = [\"a\"] }\n",
    );
    let run = broadcaster(&["check", components::WEBHOOK, "--publisher", "hook", "-c", config.to_str().unwrap()], None);
    assert_bad_input(&run, &["publisher `hook` does not grant `http`", "wasi:http/outgoing-handler"]);
    assert!(run.stdout.contains("needs grants: http"), "{}", run.stdout);
}

#[test]
fn an_unknown_publisher_name_is_bad_input_listing_the_configured_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &native_config(6379));
    let run = broadcaster(&["send", "-c", config.to_str().unwrap(), "-p", "nope", "-t", "t", "-s", "s"], None);
    assert_bad_input(&run, &["no publisher named `nope`", "configured: default"]);
}

#[test]
fn bad_event_input_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &native_config(6379));
    let c = config.to_str().unwrap();
    assert_bad_input(
        &broadcaster(&["send", "-c", c, "-t", "t", "-s", "s", "--data", "{oops"], None),
        &["--data is not valid JSON"],
    );
    assert_bad_input(&broadcaster(&["send", "-c", c, "-t", "t"], None), &["--source is required"]);
    assert_bad_input(&broadcaster(&["send", "-c", c], Some("{\"id\": 1}")), &["not a CloudEvent"]);
    assert_bad_input(
        &broadcaster(&["send", "-c", c, "-t", "t", "-s", "s", "--publisher-config", "[]"], None),
        &["JSON object"],
    );
}

#[test]
fn help_explains_every_command() {
    let run = broadcaster(&["--help"], None);
    assert_eq!(run.code, 0);
    for command in ["send", "health", "check"] {
        assert!(run.stdout.contains(command), "{}", run.stdout);
    }
    let send = broadcaster(&["send", "--help"], None);
    assert!(send.stdout.contains("--publisher-config") && send.stdout.contains("stdin"), "{}", send.stdout);
}

#[test]
fn a_backend_whose_init_fails_stops_run_only_with_strict_and_health_says_why() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let config = write_config(
        dir.path(),
        &format!(
            "[outbox]\nurl = \"sqlite://{}\"\n{}[publishers.r]\ncomponent = \"{}\"\n[publishers.r.options]\nroutes = {{}}\n\
             [publishers.r.grants]\nredis = {{ streams = [\"r:*\"] }}\n",
            db.display(),
            native_config(redis.port()),
            components::ROUTER
        ),
    );
    let c = config.to_str().unwrap();
    assert_eq!(broadcaster(&["migrate", "-c", c], None).code, 0);
    let strict = broadcaster(&["run", "-c", c, "--strict", "--max-iterations", "1"], None);
    assert_bad_input(&strict, &["publisher `r`", "init rejected", "option `routes`"]);
    // Enough iterations (about half a second) for the start, in the background, to fail and
    // say so before the worker ends: with one, the worker sometimes exited first.
    let lenient = broadcaster(&["run", "-c", c, "--max-iterations", "50", "--interval", "10ms"], None);
    assert_eq!(lenient.code, 0, "{}", lenient.stderr);
    assert!(lenient.stderr.contains("the backend did not start"), "{}", lenient.stderr);
    let health = broadcaster(&["health", "-c", c], None);
    assert_eq!(health.code, 1, "{}", health.stderr);
    assert!(health.stdout.contains("not started") && health.stdout.contains("option `routes`"), "{}", health.stdout);
}
