//! `broadcaster bench relay`: relay throughput, outbox → Redis.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::redis_connector::Connection;
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};

use super::{Scratch, SeedApp};
use crate::cli::output::print_table;

#[derive(Debug, clap::Args)]
pub struct RelayBench {
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
    /// Also publish every combination to this Redis Cluster (seed nodes, comma-separated
    /// `HOST:PORT`), in the same run, for a row beside the one-node row.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,…")]
    redis_cluster: Vec<String>,
    /// Spread the events over this many publishers, each with its own stream (on a cluster
    /// the streams hash to different slots, so to different masters).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// A PostgreSQL server URL; a scratch database is created on it and dropped afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test", value_name = "URL")]
    postgres: String,
    /// Also time the seed's own worker loop (django-broadcaster 0.1.1: `process_pending_events`
    /// with the same batch size until nothing is left) over this many of the same events per
    /// outbox, in the same run, and show every row's ratio to it; 0 leaves it out. Needs
    /// --seed-python (`scripts/setup --for-tests` installs one) and tests/django_app/.
    #[arg(long, default_value_t = 2_000, value_name = "EVENTS")]
    seed_events: usize,
    #[command(flatten)]
    seed: SeedApp,
}

/// The component file a `--publisher` name stands for (`None`: the native backend).
pub(super) fn publisher_component(name: &str) -> Option<std::path::PathBuf> {
    let file = match name {
        "native" => return None,
        "rust" | "wasm" => "components/dist/redis-stream.wasm",
        "python" => "components/dist/python-redis-stream.wasm",
        "js" => "components/dist/js-redis-stream.wasm",
        path => path,
    };
    Some(std::path::PathBuf::from(file))
}

pub async fn run(bench: RelayBench) -> anyhow::Result<ExitCode> {
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
            let targets: Vec<Target> = std::iter::once(Target::Node(host.to_string(), port))
                .chain((!bench.redis_cluster.is_empty()).then(|| Target::Cluster(bench.redis_cluster.clone())))
                .collect();
            for target in &targets {
                let scratch = Scratch::create(outbox, &bench.postgres).await?;
                let names = publisher_names(bench.streams);
                let streams: Vec<String> =
                    (0..names.len()).map(|i| format!("bench:{outbox}:{publisher}:{i}")).collect();
                let mut text = format!("[outbox]\nurl = \"{}\"\n", scratch.url);
                for (name, stream) in names.iter().zip(&streams) {
                    text.push_str(&publisher_section(name, stream, component.as_deref(), &target.options()));
                }
                let config = Config::from_toml(&text, "bench.toml".as_ref(), Vec::new())?;
                let result = relay_once(&config, &bench, &names, &streams, target).await;
                scratch.drop().await;
                let (elapsed, published) = result?;
                let rate = published as f64 / elapsed.as_secs_f64();
                let label = format!("{publisher} redis-stream → {}", target.describe(bench.streams));
                eprintln!("{outbox} × {label}: {published} events in {:.2}s", elapsed.as_secs_f64());
                rows.push([
                    outbox.clone(),
                    label,
                    published.to_string(),
                    format!("{:.2}", elapsed.as_secs_f64()),
                    format!("{rate:.0}"),
                ]);
            }
        }
    }
    let mut seed_rates = std::collections::HashMap::new();
    if bench.seed_events > 0 {
        if let Some(missing) = bench.seed.missing() {
            eprintln!("skipping the seed: {missing}");
        } else {
            for outbox in &bench.outbox {
                let (elapsed, published) = seed_once(outbox, &bench).await?;
                let rate = published as f64 / elapsed.as_secs_f64();
                eprintln!("{outbox} × seed: {published} events in {:.2}s", elapsed.as_secs_f64());
                seed_rates.insert(outbox.clone(), rate);
                rows.push([
                    outbox.clone(),
                    "seed's worker loop (django-broadcaster 0.1.1)".to_string(),
                    published.to_string(),
                    format!("{:.2}", elapsed.as_secs_f64()),
                    format!("{rate:.0}"),
                ]);
            }
        }
    }
    let rows: Vec<[String; 6]> = rows
        .into_iter()
        .map(|[outbox, publisher, events, seconds, rate]| {
            let ratio = match (seed_rates.get(&outbox), rate.parse::<f64>()) {
                (Some(seed), Ok(rate)) if *seed > 0.0 => format!("{:.0}×", rate / seed),
                _ => "-".to_string(),
            };
            [outbox, publisher, events, seconds, rate, ratio]
        })
        .collect();
    println!("relay throughput: {} events of ~300 bytes, batch {}, one worker", bench.events, bench.batch_size);
    print_table(["OUTBOX", "PUBLISHER", "EVENTS", "SECONDS", "EVENTS/S", "VS SEED"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// Where the benchmark publishes: one Redis, or a Redis Cluster.
enum Target {
    Node(String, u16),
    Cluster(Vec<String>),
}

impl Target {
    /// The connection options, as TOML inline-table entries.
    fn options(&self) -> String {
        match self {
            Self::Node(host, port) => format!("host = \"{host}\", port = {port}"),
            Self::Cluster(nodes) => {
                let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
                format!("cluster = {{ nodes = [{}] }}", nodes.join(", "))
            }
        }
    }

    fn describe(&self, streams: usize) -> String {
        let streams = if streams == 1 { "1 stream".to_string() } else { format!("{streams} streams") };
        match self {
            Self::Node(..) => format!("one node, {streams}"),
            Self::Cluster(..) => format!("cluster, {streams}"),
        }
    }

    /// A connection for counting and deleting the streams.
    async fn connection(&self) -> anyhow::Result<Connection> {
        Ok(match self {
            Self::Node(host, port) => {
                let client = redis::Client::open(format!("redis://{host}:{port}/"))?;
                Connection::Multiplexed(client.get_multiplexed_async_connection().await?)
            }
            Self::Cluster(nodes) => {
                let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}/")).collect();
                Connection::Cluster(redis::cluster::ClusterClient::new(urls)?.get_async_connection().await?)
            }
        })
    }
}

/// `bench` for one stream, `bench-0`… for several.
fn publisher_names(streams: usize) -> Vec<String> {
    if streams <= 1 { vec!["bench".to_string()] } else { (0..streams).map(|i| format!("bench-{i}")).collect() }
}

/// `[publishers.<name>]` writing to `stream` through `connection` (inline-table entries).
fn publisher_section(name: &str, stream: &str, component: Option<&std::path::Path>, connection: &str) -> String {
    match component {
        None => format!(
            "[publishers.{name}]\nbackend = \"redis-stream\"\n\
             options = {{ {connection}, stream_name = \"{stream}\", max_len = 1000000 }}\n"
        ),
        Some(path) => format!(
            "[publishers.{name}]\ncomponent = \"{}\"\noptions = {{ stream_name = \"{stream}\", max_len = 1000000 }}\n\
             grants.redis = {{ {connection}, streams = [\"bench:*\"] }}\n",
            path.display()
        ),
    }
}

async fn xlen_total(redis: &mut Connection, streams: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for stream in streams {
        total += redis::cmd("XLEN").arg(stream).query_async::<u64>(redis).await?;
    }
    Ok(total)
}

async fn delete_streams(redis: &mut Connection, streams: &[String]) -> anyhow::Result<()> {
    for stream in streams {
        redis::cmd("DEL").arg(stream).query_async::<()>(redis).await?;
    }
    Ok(())
}

/// The benchmark's events, round-robin over the publishers `names`.
fn bench_events(count: usize, names: &[String]) -> Vec<NewEvent> {
    (0..count)
        .map(|i| {
            NewEvent::new("order.created", "/bench/shop")
                .publisher(&names[i % names.len()])
                .subject(format!("order/{i}"))
                .data(serde_json::json!({
                    "order_id": i,
                    "customer": {"id": 4711, "name": "Zoë Example"},
                    "items": [{"sku": "SKU-1", "qty": 2, "price": 9.95}],
                    "total": 19.9,
                }))
        })
        .collect()
}

/// Times the seed's worker loop over `--seed-events` events in a scratch `outbox`; checks that
/// it published all of them.
async fn seed_once(outbox: &str, bench: &RelayBench) -> anyhow::Result<(Duration, u64)> {
    let scratch = Scratch::create(outbox, &bench.postgres).await?;
    let result = async {
        let store = OutboxStore::connect(&scratch.url).await?;
        store.migrate().await?;
        store.enqueue(&bench_events(bench.seed_events, &["bench".to_string()]), now_micros()).await?;
        let stream = format!("bench:{outbox}:seed");
        let batch = bench.batch_size.to_string();
        let command = ["seed-relay", bench.redis.as_str(), "bench", stream.as_str(), batch.as_str()];
        let (published, seconds) = bench.seed.timed(&scratch.url, &command).await?;
        let client = redis::Client::open(format!("redis://{}/", bench.redis))?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let written: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut redis).await?;
        redis::cmd("DEL").arg(&stream).query_async::<()>(&mut redis).await?;
        if published != bench.seed_events as u64 || written != published {
            bail!("the seed published {published} of {} events, its stream has {written}", bench.seed_events);
        }
        Ok((Duration::from_secs_f64(seconds), published))
    }
    .await;
    scratch.drop().await;
    result
}

async fn relay_once(
    config: &Config,
    bench: &RelayBench,
    names: &[String],
    streams: &[String],
    target: &Target,
) -> anyhow::Result<(Duration, u64)> {
    let store = OutboxStore::connect(&config.outbox.url).await?;
    store.migrate().await?;
    store.enqueue(&bench_events(bench.events, names), now_micros()).await?;
    let only: Vec<&str> = names.iter().map(String::as_str).collect();
    let registry = Arc::new(PublisherRegistry::build(config, Some(&only)).await?);
    let mut redis = target.connection().await?;
    delete_streams(&mut redis, streams).await?;
    // The worker as `broadcaster run` runs it, stopped once the streams hold every event;
    // the time includes recording the last outcomes.
    let relay = Arc::new(Relay::new(store.clone(), registry, &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = RunOptions { batch_size: bench.batch_size, interval: Duration::from_millis(50), max_iterations: 0 };
    let started = Instant::now();
    let running = tokio::spawn(relay.run(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let written = xlen_total(&mut redis, streams).await?;
        if written >= bench.events as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.send(true).ok();
    let report = running.await?;
    let elapsed = started.elapsed();
    let published = report.totals.published;
    let written = xlen_total(&mut redis, streams).await?;
    delete_streams(&mut redis, streams).await?;
    let report = store.status(now_micros(), Duration::from_secs(300)).await?;
    let done: u64 = report.counts.iter().filter(|((_, s), _)| *s == Status::Published).map(|(_, n)| n).sum();
    if written != bench.events as u64 || done != bench.events as u64 {
        bail!("expected {} events published, the streams have {written} and the outbox {done}", bench.events);
    }
    Ok((elapsed, published))
}
