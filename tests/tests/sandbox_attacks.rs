//! Hostile and slow backends next to a well-behaved *component* tenant (the shipped
//! `redis-stream` component, sharing the guest lanes with the attacker): every good event is
//! published, the attacker's events wait or fail with a clear, bounded cause, nothing reaches
//! the neighbour's streams, and the relay stops promptly and cleanly.
//!
//! How much of its throughput the good tenant keeps beside each attacker is a measurement,
//! not a test: `broadcaster bench isolation` prints it (see the manual,
//! `docs/src/sandbox.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, RowState, Status};
use broadcaster::publisher::Publisher;
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};
use broadcaster_tests::{RedisServer, components};
use redis::Commands;
use serde_json::json;

/// The attacker's call deadline.
const CALL_TIMEOUT: Duration = Duration::from_millis(300);

/// Good events per scenario.
const GOOD_EVENTS: usize = 300;

/// Longest a scenario may take to publish every good event (alone it takes well under a
/// second; this only catches a neighbour that is starved).
const GOOD_DEADLINE: Duration = Duration::from_secs(60);

// An attack that does a lot of work before it hits its limit (a million calls, a 100 MB
// string) may meet its deadline first on a loaded machine: either limit stops it.

/// The longest error text kept from a backend, plus room for the host's own words.
const MAX_ERROR: usize = 4096 + 512;

struct Attack {
    name: &'static str,
    /// Options of the attacker (TOML lines).
    options: &'static str,
    /// Texts the attacker's failed events' `last_error` must contain (one of them); empty when
    /// its events are not expected to fail (they wait, or are published).
    expect: &'static [&'static str],
    memory: &'static str,
}

const ATTACKS: &[Attack] = &[
    Attack { name: "loop", options: "attack = \"loop\"", expect: &["deadline"], memory: "32MiB" },
    Attack {
        name: "grow",
        options: "attack = \"grow\"",
        expect: &["forcing trap when growing memory", "deadline"],
        memory: "32MiB",
    },
    Attack {
        name: "recursion",
        options: "attack = \"recursion\"",
        expect: &["out of bounds memory access", "call stack exhausted"],
        memory: "32MiB",
    },
    Attack { name: "panic", options: "attack = \"panic\"", expect: &["attacker panics on purpose"], memory: "32MiB" },
    Attack { name: "unreachable", options: "attack = \"unreachable\"", expect: &["unreachable"], memory: "32MiB" },
    Attack {
        name: "huge-alloc",
        options: "attack = \"huge-alloc\"",
        expect: &["forcing trap when growing memory"],
        memory: "32MiB",
    },
    Attack {
        name: "xadd-flood",
        options: "attack = \"xadd-flood\"",
        expect: &["limits.host_calls", "deadline"],
        memory: "32MiB",
    },
    Attack {
        name: "outside-grant",
        options: "attack = \"outside-grant\"",
        expect: &["\"victim:stream\" is outside the streams granted"],
        memory: "32MiB",
    },
    Attack {
        name: "huge-field",
        options: "attack = \"huge-field\"",
        expect: &["limits.entry_bytes", "limits.host_call_bytes", "deadline"],
        memory: "512MiB",
    },
    Attack {
        name: "log-flood",
        options: "attack = \"log-flood\"",
        expect: &["limits.log_lines", "limits.log_bytes", "deadline"],
        memory: "32MiB",
    },
    Attack { name: "slow", options: "attack = \"slow\"\nburn_ms = 200", expect: &[], memory: "32MiB" },
    Attack { name: "health-hang", options: "attack = \"health-hang\"", expect: &[], memory: "32MiB" },
    Attack {
        name: "huge-error",
        options: "attack = \"huge-error\"",
        // One message is cut to 4 KiB; a batch's messages (the attacker is a 0.2.0 backend
        // whose publish-batch gathers one per event) run out of its memory, or past the
        // host's bound on what a call may return.
        expect: &["bytes cut]", "deadline", "growing memory", "too much data is being copied"],
        memory: "256MiB",
    },
    Attack {
        name: "long-stream",
        options: "attack = \"long-stream\"",
        expect: &["limits.stream_name_bytes"],
        memory: "64MiB",
    },
    Attack {
        name: "many-fields",
        options: "attack = \"many-fields\"",
        expect: &["limits.entry_fields", "deadline"],
        memory: "512MiB",
    },
    Attack { name: "sleep", options: "attack = \"sleep\"", expect: &["deadline", "did not return"], memory: "32MiB" },
];

fn attacker_toml(name: &str, options: &str, memory: &str, port: u16) -> String {
    format!(
        r#"
        [publishers.{name}]
        component = "{attacker}"
        [publishers.{name}.options]
        stream_name = "attacker:own"
        {options}
        [publishers.{name}.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["attacker:*"] }}
        [publishers.{name}.limits]
        call_timeout = "{timeout}ms"
        memory = "{memory}"
        "#,
        attacker = components::ATTACKER,
        timeout = CALL_TIMEOUT.as_millis(),
    )
}

fn config(outbox: &str, redis: &RedisServer, attackers: &str) -> Config {
    let text = format!(
        r#"
        [outbox]
        url = "{outbox}"
        [relay]
        retry_base = "50ms"
        retry_cap = "100ms"
        retry_jitter = 0.0
        health_interval = "100ms"
        [publishers.good]
        component = "{good}"
        [publishers.good.options]
        stream_name = "good"
        max_len = 1000000
        [publishers.good.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["good"] }}
        {attackers}
        "#,
        port = redis.port(),
        good = components::REDIS_STREAM,
    );
    Config::from_toml(&text, "attack.toml".as_ref(), Vec::new()).unwrap()
}

struct Scenario {
    store: OutboxStore,
    registry: Arc<PublisherRegistry>,
    attacker_ids: Vec<String>,
    good_took: Duration,
    stop_took: Duration,
}

/// Runs the relay over good events and a few events for each attacker until every good event
/// is in its stream (or [`GOOD_DEADLINE`] passes) and, with `until_attacked`, an attacker
/// event has an error (or 10 s pass), then stops it.
async fn run_beside(redis: &RedisServer, attackers: &[(&str, String)], until_attacked: bool) -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let toml: String = attackers.iter().map(|(_, toml)| toml.as_str()).collect();
    let config = config(&url, redis, &toml);
    let store = OutboxStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mut events: Vec<NewEvent> = (0..GOOD_EVENTS)
        .map(|i| NewEvent::new("good.event", "/good").publisher("good").data(json!({"n": i})))
        .collect();
    let mut attacker_ids = Vec::new();
    for (name, _) in attackers {
        let attacks: Vec<NewEvent> =
            (0..5).map(|i| NewEvent::new("attack", "/evil").publisher(*name).data(json!({"n": i}))).collect();
        attacker_ids.extend(attacks.iter().map(|e| e.event.id.clone()));
        events.extend(attacks);
    }
    store.enqueue(&events, now_micros()).await.unwrap();
    let _ = redis.client().del::<_, ()>("good");
    let started = Instant::now();
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let relay = Arc::new(Relay::new(store.clone(), registry.clone(), &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 100, interval: Duration::from_millis(10), max_iterations: 0 };
    let running = tokio::spawn(relay.run(options, stopped));
    let mut conn = redis.client();
    while conn.xlen::<_, usize>("good").unwrap() < GOOD_EVENTS && started.elapsed() < GOOD_DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let good_took = started.elapsed();
    while until_attacked && started.elapsed() < Duration::from_secs(10) {
        let rows = store.find(&attacker_ids).await.unwrap();
        if rows.iter().any(|r| !r.last_error.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    stop.send(true).unwrap();
    running.await.expect("the relay survives the attack");
    let stop_took = stopping.elapsed();
    std::mem::forget(dir); // the store outlives this function
    Scenario { store, registry, attacker_ids, good_took, stop_took }
}

/// What is wrong with a scenario's outcome, if anything.
async fn check(scenario: &Scenario, redis: &RedisServer, name: &str, expect: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    let good: usize = redis.client().xlen("good").unwrap();
    if good != GOOD_EVENTS {
        failures.push(format!("{name}: only {good} of {GOOD_EVENTS} good events published in {GOOD_DEADLINE:?}"));
    }
    // A stop waits for a call in flight at most until its deadline, plus outcome writes.
    if scenario.stop_took > CALL_TIMEOUT + Duration::from_secs(5) {
        failures.push(format!("{name}: the relay took {:?} to stop", scenario.stop_took));
    }
    let rows: Vec<RowState> = scenario.store.find(&scenario.attacker_ids).await.unwrap();
    for row in &rows {
        if row.status == Status::Processing {
            failures.push(format!("{name}: event {} left processing after the stop", row.id));
        }
        if row.last_error.len() > MAX_ERROR {
            failures.push(format!("{name}: last_error of {} bytes is not bounded", row.last_error.len()));
        }
        let explained = expect.iter().any(|text| row.last_error.contains(text));
        if !row.last_error.is_empty() && !expect.is_empty() && !explained {
            failures.push(format!("{name}: last_error should say one of {expect:?}, got {:?}", row.last_error));
        }
    }
    if !expect.is_empty() && rows.iter().all(|r| r.last_error.is_empty()) {
        failures.push(format!("{name}: no attacker event was even attempted: {rows:?}"));
    }
    let victim: usize = redis.client().exists("victim:stream").unwrap();
    if victim != 0 {
        failures.push(format!("{name}: the attacker wrote outside its grant"));
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_fails_alone_and_the_good_component_publishes_everything() {
    let redis = RedisServer::start();
    let mut failures = Vec::new();
    for attack in ATTACKS {
        let attacker = ("attacker", attacker_toml("attacker", attack.options, attack.memory, redis.port()));
        let scenario = run_beside(&redis, &[attacker], !attack.expect.is_empty()).await;
        println!(
            "{:>14}: {GOOD_EVENTS} good events in {:?}, stop in {:?}",
            attack.name, scenario.good_took, scenario.stop_took
        );
        failures.extend(check(&scenario, &redis, attack.name, attack.expect).await);
        let _ = redis.client().del::<_, ()>("attacker:own");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_attackers_at_once_cannot_stop_the_good_component() {
    let redis = RedisServer::start();
    let names = [
        "loop",
        "slow",
        "health-hang",
        "grow",
        "recursion",
        "sleep",
        "many-fields",
        "xadd-flood",
        "log-flood",
        "huge-error",
    ];
    let attackers: Vec<(&str, String)> = names
        .iter()
        .map(|name| {
            let attack = ATTACKS.iter().find(|a| a.name == *name).unwrap();
            (*name, attacker_toml(name, attack.options, attack.memory, redis.port()))
        })
        .collect();
    let scenario = run_beside(&redis, &attackers, true).await;
    println!("ten attackers: {GOOD_EVENTS} good events in {:?}, stop in {:?}", scenario.good_took, scenario.stop_took);
    let failures = check(&scenario, &redis, "ten attackers", &[]).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_fails_to_start_is_down_and_the_others_publish() {
    let redis = RedisServer::start();
    for (init_attack, expect) in [
        ("error", "init rejected its options: init refuses"),
        ("trap", "attacker panics in init"),
        ("loop", "deadline"),
    ] {
        let options = format!("init_attack = \"{init_attack}\"");
        let options: &'static str = Box::leak(options.into_boxed_str());
        let attacker = ("attacker", attacker_toml("attacker", options, "32MiB", redis.port()));
        let scenario = run_beside(&redis, &[attacker], false).await;
        let failures = check(&scenario, &redis, init_attack, &[]).await;
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let rows = scenario.store.find(&scenario.attacker_ids).await.unwrap();
        for row in &rows {
            assert!(
                row.status == Status::Pending && row.retry_count == 0,
                "init {init_attack}: the attacker's events wait without spending a retry: {row:?}"
            );
        }
        let health = scenario.registry.get("attacker").unwrap().health().await;
        assert!(!health.healthy, "init {init_attack}: {health:?}");
        assert!(
            health.detail.contains(expect) && health.detail.len() < MAX_ERROR,
            "init {init_attack}: health should say {expect:?}: {}",
            health.detail
        );
    }
}

#[tokio::test]
async fn a_backend_sees_no_environment_no_files_no_arguments_and_no_network() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let config = config(&url, &redis, &attacker_toml("attacker", "attack = \"snoop\"", "32MiB", redis.port()));
    let registry = PublisherRegistry::build(&config, Some(&["attacker"])).await.unwrap();
    registry.get("attacker").unwrap().publish(&NewEvent::new("snoop", "/s").event).await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis.client().xrange_all("attacker:own").unwrap();
    let seen = &reply.ids[0];
    let field = |name: &str| seen.get::<String>(name).unwrap_or_default();
    assert_eq!(field("env"), "", "no environment variables");
    assert_eq!(field("args"), "", "no arguments");
    assert!(field("file").starts_with("error"), "no files: {}", field("file"));
    assert!(field("dir").starts_with("error"), "no directories: {}", field("dir"));
    assert!(field("net").starts_with("error"), "no sockets: {}", field("net"));
}

#[tokio::test]
async fn a_trapping_backend_is_replaced_and_paused_longer_each_time() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let config = config(&url, &redis, &attacker_toml("attacker", "attack = \"panic\"", "32MiB", redis.port()));
    let registry = PublisherRegistry::build(&config, Some(&["attacker"])).await.unwrap();
    let Ok(publisher @ Publisher::Component(attacker)) = registry.get("attacker") else { panic!("a component") };
    let event = NewEvent::new("attack", "/evil").event;
    let first = publisher.publish(&event).await.unwrap_err();
    assert!(first.to_string().contains("attacker panics on purpose"), "{first}");
    // Paused: the next call is refused without an instance being made.
    let paused = publisher.publish(&event).await.unwrap_err();
    assert!(paused.to_string().contains("paused after 1 failure(s) in a row"), "{paused}");
    let health = publisher.health().await;
    assert!(!health.healthy && health.detail.contains("degraded"), "{health:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    publisher.publish(&event).await.unwrap_err();
    let paused = publisher.publish(&event).await.unwrap_err();
    assert!(paused.to_string().contains("paused after 2 failure(s) in a row"), "{paused}");
    assert_eq!(attacker.instantiations().await, 2);
}
