//! `broadcaster bench isolation`: what a hostile or slow tenant costs a well-behaved one.
//!
//! Each scenario runs one relay (as `broadcaster run` runs it, SQLite or PostgreSQL outbox,
//! batch 100) with
//! a good tenant, the shipped `redis-stream` component, and zero, one or ten attackers built
//! from the test component `attacker.wasm`. The attackers' events are enqueued first and the
//! relay runs for a warm-up, so the attack is under way (and with ten, their breakers have
//! tripped) when the good tenant's events arrive; then the good events are enqueued and timed
//! until the last one is in its stream. With `--arrival interleaved` the attackers' events
//! are spread among the good ones, all enqueued before the relay starts, and the time runs
//! from the relay's start (the alone row is measured the same way): how a tenant that is
//! hostile from its first call costs its neighbour.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use broadcaster::config::Config;
use broadcaster::config::units::parse_duration;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};

use super::{Scratch, resident_bytes};
use crate::cli::output::print_table;

#[derive(Debug, clap::Args)]
pub struct IsolationBench {
    /// The good tenant's events per scenario.
    #[arg(long, default_value_t = 2000)]
    good_events: usize,
    /// The good tenant's component.
    #[arg(long, default_value = "components/dist/redis-stream.wasm", value_name = "FILE")]
    good: PathBuf,
    /// The attacker component (built by scripts/build-components from tests/test-components).
    #[arg(long, default_value = "tests/test-components/dist/attacker.wasm", value_name = "FILE")]
    attacker: PathBuf,
    /// The attackers' `limits.call_timeout`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    call_timeout: Duration,
    /// How long the attack runs before the good events arrive (ten attackers: three times
    /// this, so that their breakers trip).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Scenarios to run (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The Redis to publish to (streams bench:* are created and deleted).
    #[arg(long, default_value = "127.0.0.1:6379", value_name = "HOST:PORT")]
    redis: String,
    /// The outbox: sqlite, or postgres (where claims of publishers that answer fast are held
    /// in transactions, components' too).
    #[arg(long, default_value = "sqlite")]
    outbox: String,
    /// A PostgreSQL server URL, for `--outbox postgres`; a scratch database is created on it
    /// and dropped afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test", value_name = "URL")]
    postgres: String,
    /// When the attackers' events arrive: `after` (the attack is under way when the good
    /// events arrive) or `interleaved` (mixed with the good events, all waiting before the
    /// relay starts).
    #[arg(long, value_enum, default_value = "after")]
    arrival: Arrival,
}

/// When the attackers' events arrive, relative to the good tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    /// First, with a warm-up before the good events.
    After,
    /// Among the good events, before the relay starts.
    Interleaved,
}

/// One attack: its name in the table, the attacker's options, its memory limit.
struct Attack {
    name: &'static str,
    options: &'static str,
    memory: &'static str,
}

const ATTACKS: &[Attack] = &[
    Attack { name: "init-error", options: "init_attack = \"error\"", memory: "64MiB" },
    Attack { name: "init-trap", options: "init_attack = \"trap\"", memory: "64MiB" },
    Attack { name: "init-loop", options: "init_attack = \"loop\"", memory: "64MiB" },
    Attack { name: "slow", options: "attack = \"slow\"", memory: "64MiB" },
    Attack { name: "loop", options: "attack = \"loop\"", memory: "64MiB" },
    Attack { name: "health-hang", options: "attack = \"health-hang\"", memory: "64MiB" },
    Attack { name: "huge-error", options: "attack = \"huge-error\"", memory: "256MiB" },
    Attack { name: "long-stream", options: "attack = \"long-stream\"", memory: "64MiB" },
    Attack { name: "many-fields", options: "attack = \"many-fields\"", memory: "512MiB" },
    Attack { name: "grow", options: "attack = \"grow\"", memory: "64MiB" },
    Attack { name: "recursion", options: "attack = \"recursion\"", memory: "64MiB" },
    Attack { name: "sleep", options: "attack = \"sleep\"", memory: "64MiB" },
    Attack { name: "xadd-flood", options: "attack = \"xadd-flood\"", memory: "64MiB" },
    Attack { name: "log-flood", options: "attack = \"log-flood\"", memory: "64MiB" },
    Attack { name: "leak", options: "attack = \"leak\"", memory: "64MiB" },
];

/// The ten at once, as the issue that asked for this benchmark lists them.
const TEN: [&str; 10] =
    ["loop", "slow", "health-hang", "grow", "recursion", "sleep", "many-fields", "xadd-flood", "log-flood", "leak"];

struct Measured {
    /// The longest time between two good events reaching their stream (by stream ids).
    longest_gap: Duration,
    good_events: usize,
    good_seconds: f64,
    first_good: Duration,
    stop: Duration,
    peak_resident: u64,
}

pub async fn run(bench: IsolationBench) -> anyhow::Result<ExitCode> {
    let good = std::fs::canonicalize(&bench.good)
        .with_context(|| format!("{} is missing: run scripts/build-components", bench.good.display()))?;
    let attacker = std::fs::canonicalize(&bench.attacker)
        .with_context(|| format!("{} is missing: run scripts/build-components", bench.attacker.display()))?;
    let wanted = |name: &str| bench.only.is_empty() || bench.only.iter().any(|o| o == name);
    let alone = scenario(&bench, &good, &attacker, &[], bench.warmup).await?;
    let mut rows = vec![row("alone", &alone, &alone)];
    for attack in ATTACKS.iter().filter(|a| wanted(a.name)) {
        let measured = scenario(&bench, &good, &attacker, &[attack], bench.warmup).await?;
        rows.push(row(attack.name, &measured, &alone));
    }
    if wanted("ten-at-once") {
        let ten: Vec<&Attack> = TEN.iter().map(|n| ATTACKS.iter().find(|a| a.name == *n).expect("listed")).collect();
        let measured = scenario(&bench, &good, &attacker, &ten, bench.warmup * 3).await?;
        rows.push(row("ten at once", &measured, &alone));
    }
    println!(
        "isolation: the good component tenant's {} events beside each attacker (call_timeout {:?}, batch 100, \
         {} outbox, attackers' events arrive {}); fraction = its throughput beside the attacker / alone; \
         LONGEST GAP = the longest time between two good events reaching their stream",
        bench.good_events,
        bench.call_timeout,
        bench.outbox,
        match bench.arrival {
            Arrival::After => "first (the attack under way)",
            Arrival::Interleaved => "among the good ones",
        }
    );
    print_table(
        ["ATTACK", "GOOD EVENTS/S", "FRACTION OF ALONE", "FIRST GOOD EVENT", "LONGEST GAP", "STOP", "PEAK RSS"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn row(name: &str, measured: &Measured, alone: &Measured) -> [String; 7] {
    let rate = |m: &Measured| m.good_events as f64 / m.good_seconds;
    [
        name.to_string(),
        format!("{:.0}", rate(measured)),
        format!("{:.2}", rate(measured) / rate(alone)),
        format!("{:.0} ms", measured.first_good.as_secs_f64() * 1000.0),
        format!("{:.0} ms", measured.longest_gap.as_secs_f64() * 1000.0),
        format!("{:.0} ms", measured.stop.as_secs_f64() * 1000.0),
        format!("{} MiB", measured.peak_resident >> 20),
    ]
}

async fn scenario(
    bench: &IsolationBench,
    good: &std::path::Path,
    attacker: &std::path::Path,
    attacks: &[&Attack],
    warmup: Duration,
) -> anyhow::Result<Measured> {
    let (host, port) = bench.redis.rsplit_once(':').context("--redis is HOST:PORT")?;
    let scratch = Scratch::create(&bench.outbox, &bench.postgres).await?;
    let url = scratch.url.clone();
    let mut text = format!(
        "[outbox]\nurl = \"{url}\"\n[wasm]\ncache = true\n\
         [publishers.good]\ncomponent = \"{}\"\n[publishers.good.options]\nstream_name = \"bench:good\"\n\
         max_len = 1000000\n[publishers.good.grants]\nredis = {{ host = \"{host}\", port = {port}, streams = [\"bench:good\"] }}\n",
        good.display()
    );
    for (i, attack) in attacks.iter().enumerate() {
        text.push_str(&format!(
            "[publishers.attacker-{i}]\ncomponent = \"{}\"\n[publishers.attacker-{i}.options]\n\
             stream_name = \"bench:attacker\"\n{}\n[publishers.attacker-{i}.grants]\n\
             redis = {{ host = \"{host}\", port = {port}, streams = [\"bench:attacker*\"] }}\n\
             [publishers.attacker-{i}.limits]\nmemory = \"{}\"\ncall_timeout = \"{}ms\"\n",
            attacker.display(),
            attack.options,
            attack.memory,
            bench.call_timeout.as_millis()
        ));
    }
    let config = Config::from_toml(&text, "isolation.toml".as_ref(), Vec::new())?;
    let store = OutboxStore::connect(&url).await?;
    store.migrate().await?;
    let client = redis::Client::open(format!("redis://{}/", bench.redis))?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL").arg("bench:good").arg("bench:attacker").query_async::<()>(&mut redis).await?;
    let attack_events: Vec<NewEvent> = (0..attacks.len())
        .flat_map(|i| {
            (0..20).map(move |n| {
                NewEvent::new("attack", "/evil").publisher(format!("attacker-{i}")).data(serde_json::json!({"n": n}))
            })
        })
        .collect();
    let good_events: Vec<NewEvent> = (0..bench.good_events)
        .map(|i| {
            NewEvent::new("order.created", "/bench/shop")
                .publisher("good")
                .subject(format!("order/{i}"))
                .data(serde_json::json!({"order_id": i, "items": [{"sku": "SKU-1", "qty": 2}], "total": 19.9}))
        })
        .collect();
    let good_count = good_events.len();
    let mut good_events = Some(good_events);
    if bench.arrival == Arrival::Interleaved {
        // One attacker event after every `every` good ones, in creation (claim) order.
        let mut attack = attack_events.into_iter();
        let every = (good_count / (attacks.len() * 20).max(1)).max(1);
        let mut mixed = Vec::new();
        for (i, event) in good_events.take().into_iter().flatten().enumerate() {
            if i % every == 0
                && let Some(evil) = attack.next()
            {
                mixed.push(evil);
            }
            mixed.push(event);
        }
        mixed.extend(attack);
        for chunk in mixed.chunks(500) {
            store.enqueue(chunk, now_micros()).await?;
        }
    } else {
        store.enqueue(&attack_events, now_micros()).await?;
    }

    let registry = Arc::new(PublisherRegistry::build(&config, None).await?);
    let relay = Arc::new(Relay::new(store.clone(), registry, &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: 100, interval: Duration::from_millis(10), max_iterations: 0 };
    let relay_started = Instant::now();
    let running = tokio::spawn(relay.run(options, stopped));
    let mut peak_resident = resident_bytes().unwrap_or_default();
    let started = match good_events {
        Some(good_events) => {
            let warm_until = Instant::now() + warmup;
            while Instant::now() < warm_until {
                peak_resident = peak_resident.max(resident_bytes().unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let started = Instant::now();
            store.enqueue(&good_events, now_micros()).await?;
            started
        }
        None => relay_started,
    };
    let mut first_good = None;
    let deadline = started + Duration::from_secs(300);
    loop {
        let written: u64 = redis::cmd("XLEN").arg("bench:good").query_async(&mut redis).await?;
        if written > 0 && first_good.is_none() {
            first_good = Some(started.elapsed());
        }
        peak_resident = peak_resident.max(resident_bytes().unwrap_or_default());
        if written >= bench.good_events as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let good_seconds = started.elapsed().as_secs_f64();
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg("bench:good").arg("-").arg("+").query_async(&mut redis).await?;
    let millis: Vec<u64> = entries.ids.iter().filter_map(|entry| entry.id.split('-').next()?.parse().ok()).collect();
    let longest_gap = Duration::from_millis(millis.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(0));
    let stopping = Instant::now();
    stop.send(true).ok();
    running.await?;
    let stop = stopping.elapsed();
    redis::cmd("DEL").arg("bench:good").arg("bench:attacker").query_async::<()>(&mut redis).await?;
    drop(store);
    scratch.drop().await;
    let names: Vec<&str> = attacks.iter().map(|a| a.name).collect();
    eprintln!(
        "{}: {} good events in {good_seconds:.2}s, first after {:?}, stop in {stop:?}",
        if names.is_empty() { "alone".to_string() } else { names.join("+") },
        bench.good_events,
        first_good.unwrap_or_default()
    );
    Ok(Measured {
        longest_gap,
        good_events: good_count,
        good_seconds,
        first_good: first_good.unwrap_or_default(),
        stop,
        peak_resident,
    })
}
