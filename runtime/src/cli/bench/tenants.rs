//! `broadcaster bench tenants`: one relay with many configured component tenants, a few of
//! them receiving events in turn, beside a relay configured with only those few. Each run is
//! a fresh process (its resident memory is its own), on a scratch outbox.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore};
use broadcaster::publisher::Publisher;
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};

use super::{Scratch, peak_resident_bytes, resident_bytes};
use crate::cli::output::print_table;

/// The stream every tenant writes to.
const STREAM: &str = "bench:tenants";

#[derive(Debug, clap::Args)]
pub struct TenantsBench {
    /// Configured tenants (component publishers) of the big relay.
    #[arg(long, default_value_t = 100_000)]
    tenants: usize,
    /// Tenants that receive events, spread evenly over the configured ones; the events go to
    /// them in turn (event i to active tenant i mod N).
    #[arg(long, default_value_t = 1000)]
    active: usize,
    /// Events per run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Events claimed per batch (per tenant).
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// The tenants' component (comma-separated for several): `rust`, `python`, `js` (the
    /// `redis-stream` backend in each language, from components/dist/), or a .wasm file.
    #[arg(long, value_delimiter = ',', default_value = "rust")]
    publisher: Vec<String>,
    /// The outbox: sqlite or postgres.
    #[arg(long, default_value = "postgres")]
    outbox: String,
    /// `[wasm] live_instances` of both relays (default: the relay's default).
    #[arg(long)]
    live_instances: Option<u32>,
    /// `[wasm] live_memory` of both relays (default: the relay's default).
    #[arg(long)]
    live_memory: Option<String>,
    /// The Redis to publish to (the stream bench:tenants is created and deleted).
    #[arg(long, default_value = "127.0.0.1:6379", value_name = "HOST:PORT")]
    redis: String,
    /// A PostgreSQL server URL; a scratch database is created on it and dropped afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test", value_name = "URL")]
    postgres: String,
}

#[derive(Debug, clap::Args)]
pub struct TenantsOnce {
    #[arg(long)]
    config: PathBuf,
    /// Configured tenants.
    #[arg(long)]
    tenants: usize,
    #[arg(long)]
    active: usize,
    #[arg(long)]
    events: usize,
    #[arg(long)]
    batch_size: u32,
    #[arg(long)]
    redis: String,
}

/// The name of active tenant `k` of `active` among `tenants`: spread evenly, so that they
/// are not the ones whose instances were made at start-up.
fn active_tenant(k: usize, active: usize, tenants: usize) -> String {
    format!("tenant-{}", k * (tenants / active).max(1) + (tenants / active).max(1) / 2)
}

pub async fn run(bench: TenantsBench) -> anyhow::Result<ExitCode> {
    if bench.active == 0 || bench.active > bench.tenants {
        bail!("--active must be between 1 and --tenants ({})", bench.tenants);
    }
    let (host, port) = bench.redis.rsplit_once(':').context("--redis is HOST:PORT")?;
    let port: u16 = port.parse().context("--redis port")?;
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let mut rows = Vec::new();
    for publisher in &bench.publisher {
        let file = super::relay::publisher_component(publisher).with_context(|| {
            format!("--publisher {publisher}: tenants run a component (rust, python, js or a file)")
        })?;
        let component = std::fs::canonicalize(file).with_context(|| {
            format!("{publisher}: the component is missing (scripts/build-components, scripts/build-polyglot)")
        })?;
        let mut alone_rate = None;
        for tenants in [bench.active, bench.tenants] {
            let scratch = Scratch::create(&bench.outbox, &bench.postgres).await?;
            let mut text =
                format!("[outbox]\nurl = \"{}\"\n[wasm]\ncache_dir = \"{}\"\n", scratch.url, cache.display());
            if let Some(live) = bench.live_instances {
                text.push_str(&format!("live_instances = {live}\n"));
            }
            if let Some(memory) = &bench.live_memory {
                text.push_str(&format!("live_memory = \"{memory}\"\n"));
            }
            for i in 0..tenants {
                // The small relay's tenants carry the big relay's active names.
                let name = if tenants == bench.active {
                    active_tenant(i, bench.active, bench.tenants)
                } else {
                    format!("tenant-{i}")
                };
                text.push_str(&format!(
                    "[publishers.{name}]\ncomponent = \"{}\"\n[publishers.{name}.options]\n\
                     stream_name = \"{STREAM}\"\nmax_len = 1000000\n[publishers.{name}.grants]\n\
                     redis = {{ host = \"{host}\", port = {port}, streams = [\"bench:*\"] }}\n",
                    component.display()
                ));
            }
            let config = dir.path().join(format!("tenants-{tenants}.toml"));
            std::fs::write(&config, text)?;
            if alone_rate.is_none() {
                // Compile the component into the cache first, so both runs start warm.
                warm_up(&config)?;
            }
            let output = std::process::Command::new(std::env::current_exe()?)
                .args(["bench", "tenants-once", "--config"])
                .arg(&config)
                .args(["--tenants", &bench.tenants.to_string(), "--active", &bench.active.to_string()])
                .args(["--events", &bench.events.to_string(), "--batch-size", &bench.batch_size.to_string()])
                .args(["--redis", &bench.redis])
                .output();
            scratch.drop().await;
            let output = output?;
            if !output.status.success() {
                bail!("the run with {tenants} tenants failed: {}", String::from_utf8_lossy(&output.stderr));
            }
            let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            let rate = report["rate"].as_f64().unwrap_or_default();
            let live = report["live"].as_f64().unwrap_or_default();
            let ratio = match alone_rate {
                None => {
                    alone_rate = Some(rate);
                    "1.00".to_string()
                }
                Some(alone) => format!("{:.2}", rate / alone),
            };
            let mib = |key: &str| format!("{:.0}", report[key].as_f64().unwrap_or_default() / f64::from(1 << 20));
            eprintln!("{publisher} × {tenants} tenants: {rate:.0} events/s");
            rows.push([
                publisher.clone(),
                tenants.to_string(),
                bench.active.to_string(),
                format!("{:.2}", report["startup_seconds"].as_f64().unwrap_or_default()),
                format!("{rate:.0}"),
                ratio,
                mib("peak_resident"),
                report["live"].to_string(),
                format!(
                    "{:.2}",
                    report["live_memory"].as_f64().unwrap_or_default() / live.max(1.0) / f64::from(1 << 20)
                ),
                report["instances_made"].to_string(),
            ]);
        }
    }
    println!(
        "tenant scale ({} outbox): {} events to {} active tenants in turn, batch {}; START S: config loaded, \
         publishers set up, instances that fit made; VS ALONE: events/s as a fraction of the active tenants \
         configured alone; PEAK RSS of the relay process; LIVE instances at the end and the linear memory \
         of each (MiB/LIVE); MADE: instances made (and init run) in all",
        bench.outbox, bench.events, bench.active, bench.batch_size
    );
    print_table(
        [
            "COMPONENT",
            "TENANTS",
            "ACTIVE",
            "START S",
            "EVENTS/S",
            "VS ALONE",
            "PEAK RSS MiB",
            "LIVE",
            "MiB/LIVE",
            "MADE",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// Loads `config` once in a child process (`bench startup-once`), which compiles its
/// component into the cache.
fn warm_up(config: &std::path::Path) -> anyhow::Result<()> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "startup-once", "--config"])
        .arg(config)
        .output()?;
    if !output.status.success() {
        bail!("warming the compile cache failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

pub async fn run_once(once: TenantsOnce) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let config = broadcaster::checks::load_config(&once.config)?;
    let registry = Arc::new(PublisherRegistry::build(&config, None).await?);
    registry.wait_started().await;
    let startup_seconds = started.elapsed().as_secs_f64();

    let store = OutboxStore::connect(&config.outbox.url).await?;
    store.migrate().await?;
    let names: Vec<String> = (0..once.active).map(|k| active_tenant(k, once.active, once.tenants)).collect();
    for chunk in (0..once.events).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<NewEvent> = chunk
            .iter()
            .map(|&i| {
                NewEvent::new("order.created", "/bench/shop")
                    .publisher(&names[i % names.len()])
                    .data(serde_json::json!({"order_id": i, "items": [{"sku": "SKU-1", "qty": 2}], "total": 19.9}))
            })
            .collect();
        store.enqueue(&events, now_micros()).await?;
    }
    let client = redis::Client::open(format!("redis://{}/", once.redis))?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL").arg(STREAM).query_async::<()>(&mut redis).await?;

    let relay = Arc::new(Relay::new(store.clone(), registry.clone(), &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: once.batch_size, interval: Duration::from_millis(50), max_iterations: 0 };
    let relaying = Instant::now();
    let running = tokio::spawn(relay.run(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut written = 0u64;
    while written < once.events as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        written = redis::cmd("XLEN").arg(STREAM).query_async(&mut redis).await?;
    }
    let seconds = relaying.elapsed().as_secs_f64();
    stop.send(true).ok();
    let report = running.await?;
    redis::cmd("DEL").arg(STREAM).query_async::<()>(&mut redis).await?;
    if written != once.events as u64 {
        bail!("{written} of {} events were published within the deadline", once.events);
    }
    let components = registry.iter().filter_map(|(_, p)| match p {
        Publisher::Component(c) => Some(c.clone()),
        Publisher::RedisStream(_) => None,
    });
    let (made, failed) = components
        .fold((0, 0), |(made, failed), c| (made + c.counters().instances(), failed + c.counters().failed_starts()));
    println!(
        "{}",
        serde_json::json!({
            "startup_seconds": startup_seconds,
            "seconds": seconds,
            "rate": once.events as f64 / seconds,
            "published": report.totals.published,
            "failed": report.totals.failed,
            "peak_resident": peak_resident_bytes().unwrap_or_default(),
            "resident": resident_bytes().unwrap_or_default(),
            "live": registry.live_instances().map_or(0, |set| set.live()),
            "live_memory": registry.live_instances().map_or(0, |set| set.memory_bytes()),
            "evictions": registry.live_instances().map_or(0, |set| set.evictions()),
            "instances_made": made,
            "failed_starts": failed,
        })
    );
    Ok(ExitCode::SUCCESS)
}
