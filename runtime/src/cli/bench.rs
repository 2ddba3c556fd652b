//! `broadcaster bench`: measurements that print a table (speed targets live here, not in
//! timed tests).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};
use sqlx::Connection;

use super::output::print_table;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Relay throughput, outbox → Redis: enqueue N events of about 300 bytes, then time one
    /// worker (as `broadcaster run` runs it) publishing all of them, for each outbox ×
    /// publisher combination.
    Relay(RelayBench),
    /// Start-up of many publishers built from one component (each with its own options),
    /// with an empty compile cache and with a warm one, and resident memory per idle
    /// publisher. Each measurement runs in a fresh process.
    Startup(StartupBench),
    /// One start-up measurement (run by `bench startup` in a child process).
    #[command(hide = true)]
    StartupOnce(StartupOnce),
}

#[derive(Debug, clap::Args)]
struct StartupBench {
    /// How many publishers.
    #[arg(long, default_value_t = 1000)]
    publishers: usize,
    /// The components to measure, one after the other (comma-separated): every publisher
    /// runs it, with options of its own. `router.wasm` gets routes; any other gets a
    /// `stream_name` (the `redis-stream` backends of each language).
    #[arg(long, value_delimiter = ',', default_value = "components/dist/router.wasm", value_name = "FILE")]
    component: Vec<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct StartupOnce {
    #[arg(long)]
    config: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
struct RelayBench {
    /// Events per run.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Events claimed per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// Outboxes to measure: sqlite, postgres (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    outbox: Vec<String>,
    /// Publishers to measure (comma-separated): `native`, `rust`, `python`, `js` (the
    /// `redis-stream` backend in each language, from components/dist/), or a .wasm file.
    #[arg(long, value_delimiter = ',', default_value = "native,rust,python,js")]
    publisher: Vec<String>,
    /// The Redis to publish to (streams bench:* are created and deleted).
    #[arg(long, default_value = "127.0.0.1:6379", value_name = "HOST:PORT")]
    redis: String,
    /// A PostgreSQL server URL; a scratch database is created on it and dropped afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test", value_name = "URL")]
    postgres: String,
}

/// The component file a `--publisher` name stands for (`None`: the native backend).
fn publisher_component(name: &str) -> Option<std::path::PathBuf> {
    let file = match name {
        "native" => return None,
        "rust" | "wasm" => "components/dist/redis-stream.wasm",
        "python" => "components/dist/python-redis-stream.wasm",
        "js" => "components/dist/js-redis-stream.wasm",
        path => path,
    };
    Some(std::path::PathBuf::from(file))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchCommand::Relay(bench) => relay(bench).await,
        BenchCommand::Startup(bench) => startup(bench).await,
        BenchCommand::StartupOnce(once) => startup_once(once).await,
    }
}

async fn relay(bench: RelayBench) -> anyhow::Result<ExitCode> {
    let (host, port) = bench.redis.rsplit_once(':').context("--redis is HOST:PORT")?;
    let port: u16 = port.parse().context("--redis port")?;
    let mut rows = Vec::new();
    for publisher in &bench.publisher {
        let component = match publisher_component(publisher) {
            None => None,
            Some(file) => match std::fs::canonicalize(&file) {
                Ok(path) => Some(path),
                Err(_) => {
                    eprintln!(
                        "skipping {publisher}: {} is missing (scripts/build-components, scripts/build-polyglot)",
                        file.display()
                    );
                    continue;
                }
            },
        };
        for outbox in &bench.outbox {
            let scratch = Scratch::create(outbox, &bench.postgres).await?;
            let stream = format!("bench:{outbox}:{publisher}");
            let publisher_section = match &component {
                None => format!(
                    "[publishers.bench]\nbackend = \"redis-stream\"\n[publishers.bench.options]\n\
                     host = \"{host}\"\nport = {port}\nstream_name = \"{stream}\"\nmax_len = 1000000\n"
                ),
                Some(path) => format!(
                    "[publishers.bench]\ncomponent = \"{}\"\n[publishers.bench.options]\n\
                     stream_name = \"{stream}\"\nmax_len = 1000000\n[publishers.bench.grants]\n\
                     redis = {{ host = \"{host}\", port = {port}, streams = [\"bench:*\"] }}\n",
                    path.display()
                ),
            };
            let config = Config::from_toml(
                &format!("[outbox]\nurl = \"{}\"\n{publisher_section}", scratch.url),
                "bench.toml".as_ref(),
                Vec::new(),
            )?;
            let result = relay_once(&config, &bench, &stream).await;
            scratch.drop().await;
            let (elapsed, published) = result?;
            let rate = published as f64 / elapsed.as_secs_f64();
            eprintln!("{outbox} × {publisher}: {published} events in {:.2}s", elapsed.as_secs_f64());
            rows.push([
                outbox.clone(),
                format!("{publisher} redis-stream"),
                published.to_string(),
                format!("{:.2}", elapsed.as_secs_f64()),
                format!("{rate:.0}"),
            ]);
        }
    }
    println!("relay throughput: {} events of ~300 bytes, batch {}, one worker", bench.events, bench.batch_size);
    print_table(["OUTBOX", "PUBLISHER", "EVENTS", "SECONDS", "EVENTS/S"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn relay_once(config: &Config, bench: &RelayBench, stream: &str) -> anyhow::Result<(Duration, u64)> {
    let name = "bench";
    let store = OutboxStore::connect(&config.outbox.url).await?;
    store.migrate().await?;
    let events: Vec<NewEvent> = (0..bench.events)
        .map(|i| {
            NewEvent::new("order.created", "/bench/shop").publisher(name).subject(format!("order/{i}")).data(
                serde_json::json!({
                    "order_id": i,
                    "customer": {"id": 4711, "name": "Zoë Example"},
                    "items": [{"sku": "SKU-1", "qty": 2, "price": 9.95}],
                    "total": 19.9,
                }),
            )
        })
        .collect();
    store.enqueue(&events, now_micros()).await?;
    let registry = Arc::new(PublisherRegistry::build(config, Some(&[name])).await?);
    let client = redis::Client::open(format!("redis://{}/", bench.redis))?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL").arg(stream).query_async::<()>(&mut redis).await?;
    // The worker as `broadcaster run` runs it, stopped once the stream holds every event;
    // the time includes recording the last outcomes.
    let relay = Arc::new(Relay::new(store.clone(), registry, &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: bench.batch_size, interval: Duration::from_millis(50), max_iterations: 0 };
    let started = Instant::now();
    let running = tokio::spawn(relay.run(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let written: u64 = redis::cmd("XLEN").arg(stream).query_async(&mut redis).await?;
        if written >= bench.events as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.send(true).ok();
    let report = running.await?;
    let elapsed = started.elapsed();
    let published = report.totals.published;
    let written: u64 = redis::cmd("XLEN").arg(stream).query_async(&mut redis).await?;
    redis::cmd("DEL").arg(stream).query_async::<()>(&mut redis).await?;
    let report = store.status(now_micros(), Duration::from_secs(300)).await?;
    let done: u64 = report.counts.iter().filter(|((_, s), _)| *s == Status::Published).map(|(_, n)| n).sum();
    if written != bench.events as u64 || done != bench.events as u64 {
        bail!("expected {} events published, the stream has {written} and the outbox {done}", bench.events);
    }
    Ok((elapsed, published))
}

/// A scratch outbox: a temporary SQLite file, or a temporary PostgreSQL database.
struct Scratch {
    url: String,
    server: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    async fn create(kind: &str, postgres: &str) -> anyhow::Result<Self> {
        match kind {
            "sqlite" => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Self { url, server: None, name: String::new(), _dir: Some(dir) })
            }
            "postgres" => {
                let name = format!("broadcaster_bench_{}", std::process::id());
                let mut conn = sqlx::PgConnection::connect(postgres)
                    .await
                    .with_context(|| format!("connecting to {postgres} (--postgres)"))?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\"")))
                    .execute(&mut conn)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut conn).await?;
                let base = postgres.rsplit_once('/').map(|(b, _)| b).context("--postgres needs a database")?;
                Ok(Self { url: format!("{base}/{name}"), server: Some(postgres.to_string()), name, _dir: None })
            }
            other => bail!("unknown --outbox {other:?} (sqlite, postgres)"),
        }
    }

    async fn drop(self) {
        if let Some(server) = &self.server
            && let Ok(mut conn) = sqlx::PgConnection::connect(server).await
        {
            let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
        }
    }
}

/// Resident memory of this process, in bytes (Linux `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn startup(bench: StartupBench) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for file in &bench.component {
        let component = std::fs::canonicalize(file).with_context(|| {
            format!("{} is missing: build the components first (scripts/build-components)", file.display())
        })?;
        let name = component.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = tempfile::tempdir()?;
        let cache = dir.path().join("cache");
        let mut text = format!("[wasm]\ncache_dir = \"{}\"\n", cache.display());
        for i in 0..bench.publishers {
            let options = if name.starts_with("router") {
                format!(
                    "routes = {{ \"order.*\" = \"tenant-{i}:orders\", \"user.*\" = \"tenant-{i}:users\" }}\n\
                     fallback = \"tenant-{i}:other\"\n"
                )
            } else {
                format!("stream_name = \"tenant-{i}:events\"\n")
            };
            text.push_str(&format!(
                "[publishers.tenant-{i}]\ncomponent = \"{}\"\n[publishers.tenant-{i}.options]\n{options}\
                 [publishers.tenant-{i}.grants]\nredis = {{ host = \"127.0.0.1\", streams = [\"tenant-{i}:*\"] }}\n",
                component.display()
            ));
        }
        let config = dir.path().join("broadcaster.toml");
        std::fs::write(&config, text)?;
        for label in ["cold (empty cache)", "warm (cached)"] {
            let output = std::process::Command::new(std::env::current_exe()?)
                .args(["bench", "startup-once", "--config"])
                .arg(&config)
                .output()?;
            if !output.status.success() {
                bail!("the measurement failed: {}", String::from_utf8_lossy(&output.stderr));
            }
            let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            let seconds = report["seconds"].as_f64().unwrap_or_default();
            let grown = report["resident_growth"].as_u64().unwrap_or_default();
            let per = grown as f64 / bench.publishers as f64;
            eprintln!("{name} × {}: {label}: {seconds:.2}s", bench.publishers);
            rows.push([
                name.clone(),
                bench.publishers.to_string(),
                label.to_string(),
                format!("{seconds:.2}"),
                format!("{:.1}", seconds * 1000.0 / bench.publishers as f64),
                format!("{:.0}", per / 1024.0),
                report["allocator"].as_str().unwrap_or_default().to_string(),
            ]);
        }
    }
    println!("start-up of many publishers from one component (each with its own options), then idle");
    print_table(
        ["COMPONENT", "PUBLISHERS", "COMPILE CACHE", "SECONDS", "MS/PUBLISHER", "KiB/PUBLISHER", "ALLOCATOR"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

async fn startup_once(once: StartupOnce) -> anyhow::Result<ExitCode> {
    let config = Config::load(&once.config)?;
    let before = resident_bytes().unwrap_or_default();
    let started = Instant::now();
    let registry = PublisherRegistry::build(&config, None).await?;
    let seconds = started.elapsed().as_secs_f64();
    let after = resident_bytes().unwrap_or_default();
    let pooling = registry.iter().find_map(|(_, p)| match p {
        broadcaster::publisher::Publisher::Component(c) => Some(c.is_pooling()),
        _ => None,
    });
    println!(
        "{}",
        serde_json::json!({
            "seconds": seconds,
            "resident_growth": after.saturating_sub(before),
            "publishers": registry.iter().count(),
            "allocator": if pooling == Some(true) { "pooling" } else { "on-demand" },
        })
    );
    Ok(ExitCode::SUCCESS)
}
