//! `broadcaster bench latency`: from an application's commit to the entry a consumer reads.
//!
//! An open-loop producer enqueues one event per transaction at a fixed offered rate (it does
//! not slow down when the relay or the database does, so slow answers are not hidden),
//! concurrently through its own connection pool as an application's requests would; a consumer reads the stream with `XREAD BLOCK`;
//! the relay runs as `broadcaster run` runs it, with the configuration's defaults. Each
//! event's latency is the time from its commit returning to the consumer receiving it.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use broadcaster::config::Config;
use broadcaster::config::units::parse_duration;
use broadcaster::outbox::{NewEvent, OutboxStore};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};

use super::{Scratch, SeedApp};
use crate::cli::output::print_table;

#[derive(Debug, clap::Args)]
pub struct LatencyBench {
    /// Offered rates, events per second (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    rates: Vec<u32>,
    /// How long the producer runs at each rate.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Outboxes to measure: sqlite, postgres (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    outbox: Vec<String>,
    /// The relay's `relay.interval` (default: the configuration's default).
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// The Redis to publish to (streams bench:* are created and deleted).
    #[arg(long, default_value = "127.0.0.1:6379", value_name = "HOST:PORT")]
    redis: String,
    /// A PostgreSQL server URL; a scratch database is created on it and dropped afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test", value_name = "URL")]
    postgres: String,
    /// Also measure the seed's worker (django-broadcaster 0.1.1's `manage.py outbox_worker` at
    /// its defaults: batch 100, 5 s between batches) at every rate, in the same run, waiting
    /// this long after the producer for its events (the ones it has not published by then
    /// count as later than this); 0 leaves it out. Needs --seed-python (`scripts/setup
    /// --for-tests` installs one) and tests/django_app/.
    #[arg(long, default_value = "20s", value_parser = parse_duration, value_name = "DURATION")]
    seed_wait: Duration,
    #[command(flatten)]
    seed: SeedApp,
}

/// The relay a row measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measured {
    /// Broadcaster's, in this process, as `broadcaster run` runs it.
    Broadcaster,
    /// The seed's worker, in a Python process of its own.
    Seed,
}

/// The application's connections per rate: its transactions run concurrently, as a web
/// application's requests do, up to this many at once (on SQLite, which has one writer, as
/// many as a small application server has processes).
fn connections(outbox: &str, rate: u32) -> u32 {
    let most = if outbox == "sqlite" { 4 } else { 32 };
    (rate / 250).clamp(2, most)
}

/// How long a transaction may wait for one of the application's connections: past the rate
/// the database commits at, the producer's queue grows (the achieved rate says so) and every
/// event is still sent.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(600);

/// An application's own connection pool, enqueuing each event in its own transaction with the
/// public API ([`broadcaster::outbox::enqueue`]), as the manual shows
/// (`docs/src/operators/outbox-and-relay.md`).
#[derive(Clone)]
enum Application {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Application {
    async fn connect(url: &str, connections: u32) -> anyhow::Result<Self> {
        Ok(if url.starts_with("sqlite:") {
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(connections);
            Self::Sqlite(pool.acquire_timeout(ACQUIRE_TIMEOUT).connect(url).await?)
        } else {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(connections);
            Self::Postgres(pool.acquire_timeout(ACQUIRE_TIMEOUT).connect(url).await?)
        })
    }

    async fn enqueue(&self, event: &NewEvent) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                broadcaster::outbox::enqueue::sqlite(&mut tx, event).await?;
                tx.commit().await?;
            }
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                broadcaster::outbox::enqueue::postgres(&mut tx, event).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

pub async fn run(bench: LatencyBench) -> anyhow::Result<ExitCode> {
    let with_seed = !bench.seed_wait.is_zero();
    if with_seed && let Some(missing) = bench.seed.missing() {
        anyhow::bail!("cannot run the seed's worker: {missing}; --seed-wait 0 leaves it out");
    }
    let mut rows = Vec::new();
    for outbox in &bench.outbox {
        let idle = idle_cpu(&bench, outbox).await?;
        let row = ["Broadcaster", "idle", "-", "-", "-", "-", "-", "-"].map(String::from);
        rows.push([vec![outbox.clone()], row.to_vec(), vec![idle]].concat());
        for &rate in &bench.rates {
            for measured in [Measured::Broadcaster, Measured::Seed] {
                if measured == Measured::Seed && !with_seed {
                    continue;
                }
                let row = at_rate(&bench, outbox, rate, measured).await?;
                rows.push([vec![outbox.clone()], row.to_vec()].concat());
            }
        }
    }
    println!(
        "latency: commit → entry read by an XREAD BLOCK consumer, open-loop producer, one event per transaction, \
         relay with {}",
        bench.interval.map_or("the default configuration".to_string(), |i| format!("relay.interval = {i:?}"))
    );
    let rows: Vec<[String; 10]> = rows.into_iter().map(|row| row.try_into().expect("ten columns")).collect();
    print_table(
        ["OUTBOX", "RELAY", "OFFERED/S (ACHIEVED)", "EVENTS", "P50", "P90", "P99", "MAX", "LATE", "PROCESS CPU"],
        &rows,
    );
    println!(
        "PROCESS CPU: producer, relay and consumer together, as a share of one core (the seed's worker, a process \
         of its own, not included); idle: the relay alone. LATE: events not read within 60 s of the producer's \
         end (the seed: --seed-wait); the percentiles count them as later than that."
    );
    Ok(ExitCode::SUCCESS)
}

fn config(bench: &LatencyBench, url: &str, stream: &str) -> anyhow::Result<Config> {
    let (host, port) = bench.redis.rsplit_once(':').context("--redis is HOST:PORT")?;
    let interval = bench.interval.map(|i| format!("[relay]\ninterval = \"{}ms\"\n", i.as_millis())).unwrap_or_default();
    let text = format!(
        "[outbox]\nurl = \"{url}\"\n{interval}[publishers.default]\nbackend = \"redis-stream\"\n\
         [publishers.default.options]\nhost = \"{host}\"\nport = {port}\nstream_name = \"{stream}\"\nmax_len = 1000000\n"
    );
    Ok(Config::from_toml(&text, "latency.toml".as_ref(), Vec::new())?)
}

/// A relay running in this process, as `broadcaster run` runs it.
struct RunningRelay {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<broadcaster::relay::RelayReport>,
}

async fn start_relay(config: &Config) -> anyhow::Result<RunningRelay> {
    let store = OutboxStore::connect(&config.outbox.url).await?;
    let registry = Arc::new(PublisherRegistry::build(config, None).await?);
    let relay = Arc::new(Relay::new(store, registry, &config.relay));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options =
        RunOptions { batch_size: config.relay.batch_size, interval: config.relay.interval.0, max_iterations: 0 };
    Ok(RunningRelay { stop, task: tokio::spawn(relay.run(options, stopped)) })
}

impl RunningRelay {
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.send(true).ok();
        self.task.await?;
        Ok(())
    }
}

/// CPU time (user + system) this process has used.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields after the command name: state is 0, utime 11, stime 12; clock ticks of 10 ms.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The relay's CPU while nothing arrives, as a share of one core.
async fn idle_cpu(bench: &LatencyBench, outbox: &str) -> anyhow::Result<String> {
    let scratch = Scratch::create(outbox, &bench.postgres).await?;
    let config = config(bench, &scratch.url, "bench:latency:idle")?;
    OutboxStore::connect(&scratch.url).await?.migrate().await?;
    let relay = start_relay(&config).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, wall) = (process_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let share = (process_cpu() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64();
    relay.stop().await?;
    scratch.drop().await;
    Ok(format!("{:.1}% idle", share * 100.0))
}

async fn at_rate(bench: &LatencyBench, outbox: &str, rate: u32, measured: Measured) -> anyhow::Result<[String; 9]> {
    let scratch = Scratch::create(outbox, &bench.postgres).await?;
    let (stream, publisher) = match measured {
        Measured::Broadcaster => (format!("bench:latency:{outbox}:{rate}"), None),
        Measured::Seed => (format!("bench:latency:{outbox}:{rate}:seed"), Some("bench")),
    };
    let producer_store = OutboxStore::connect(&scratch.url).await?;
    producer_store.migrate().await?;
    let client = redis::Client::open(format!("redis://{}/", bench.redis))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL").arg(&stream).query_async::<()>(&mut conn).await?;

    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let consumer = tokio::spawn(consume(client.clone(), stream.clone(), arrivals.clone()));
    let relay = match measured {
        Measured::Broadcaster => Relayed::Here(start_relay(&config(bench, &scratch.url, &stream)?).await?),
        Measured::Seed => {
            let command = ["seed-worker", bench.redis.as_str(), "bench", stream.as_str()];
            Relayed::Seed(bench.seed.spawn(&scratch.url, &command)?)
        }
    };
    // The seed's Django takes a moment to start: its first batch is due then.
    tokio::time::sleep(Duration::from_millis(if measured == Measured::Seed { 2000 } else { 500 })).await;
    let cpu_before = (process_cpu(), Instant::now());

    let total = (f64::from(rate) * bench.duration.as_secs_f64()) as u64;
    let commits: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let application = Application::connect(&scratch.url, connections(outbox, rate)).await?;
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut producing = tokio::task::JoinSet::new();
    for i in 0..total {
        // Open loop: each event is sent at its time, however late the ones before it are;
        // a transaction waits for one of the application's connections when all are busy.
        tokio::time::sleep_until((started + period.mul_f64(i as f64)).into()).await;
        let (application, commits) = (application.clone(), commits.clone());
        producing.spawn(async move {
            let mut event = NewEvent::new("latency.probe", "/bench").data(serde_json::json!({"n": i}));
            if let Some(publisher) = publisher {
                event = event.publisher(publisher);
            }
            let id = event.event.id.clone();
            application.enqueue(&event).await?;
            commits.lock().expect("commits lock").insert(id, Instant::now());
            anyhow::Ok(())
        });
        while let Some(done) = producing.try_join_next() {
            done??;
        }
    }
    while let Some(done) = producing.join_next().await {
        done??;
    }
    // What the producer achieved: it may fall behind the offered rate (commits are what they
    // are); latencies are measured from each commit all the same.
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let wait = if measured == Measured::Seed { bench.seed_wait } else { Duration::from_secs(60) };
    let deadline = Instant::now() + wait;
    while arrivals.lock().expect("arrivals lock").len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = (process_cpu() - cpu_before.0).as_secs_f64() / cpu_before.1.elapsed().as_secs_f64();
    relay.stop().await?;
    consumer.abort();
    redis::cmd("DEL").arg(&stream).query_async::<()>(&mut conn).await?;
    scratch.drop().await;

    let commits = commits.lock().expect("commits lock");
    let arrivals = arrivals.lock().expect("arrivals lock");
    let mut latencies: Vec<Duration> = commits
        .iter()
        .filter_map(|(id, committed)| arrivals.get(id).map(|arrived| arrived.saturating_duration_since(*committed)))
        .collect();
    latencies.sort();
    let late = commits.len() - latencies.len();
    // Quantiles over every event, the late ones counted as later than the wait.
    let at = |q: f64| {
        let i = ((commits.len() as f64 * q) as usize).min(commits.len().saturating_sub(1));
        match latencies.get(i) {
            Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
            None if commits.is_empty() => "-".to_string(),
            None => format!("> {}", seconds(wait)),
        }
    };
    let relay_name = match measured {
        Measured::Broadcaster => "Broadcaster",
        Measured::Seed => "seed's outbox_worker",
    };
    eprintln!(
        "{outbox} × {relay_name} at {rate}/s: {} events, p50 {}, p99 {}, {late} late",
        commits.len(),
        at(0.5),
        at(0.99)
    );
    Ok([
        relay_name.to_string(),
        format!("{rate} ({achieved:.0})"),
        latencies.len().to_string(),
        at(0.5),
        at(0.9),
        at(0.99),
        if late > 0 { format!("> {}", seconds(wait)) } else { at(1.0) },
        late.to_string(),
        if measured == Measured::Seed { "-".to_string() } else { format!("{:.0}%", cpu * 100.0) },
    ])
}

/// `d` in whole seconds, for people.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

/// The relay of a row, running.
enum Relayed {
    Here(RunningRelay),
    Seed(tokio::process::Child),
}

impl Relayed {
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Here(relay) => relay.stop().await,
            Self::Seed(mut child) => {
                child.start_kill()?;
                child.wait().await?;
                Ok(())
            }
        }
    }
}

/// Reads the stream from now on, noting when each event arrives.
async fn consume(
    client: redis::Client,
    stream: String,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
) -> anyhow::Result<()> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    // The stream was deleted before the run: read it from its start.
    let mut last = "0-0".to_string();
    loop {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(100)
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let now = Instant::now();
        for key in reply.keys {
            for entry in key.ids {
                if let Some(id) = entry.get::<String>("event_id") {
                    arrivals.lock().expect("arrivals lock").insert(id, now);
                }
                last = entry.id;
            }
        }
    }
}
