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
    /// The applications that write the events (comma-separated): `rust` (a pool of
    /// connections in this process) and `django` (django-broadcaster's `publish_event` in a
    /// Python process, measured alone and beside the relay: how much the relay slows the
    /// application's own commits).
    #[arg(long = "producer", value_enum, value_delimiter = ',', default_value = "rust,django")]
    producers: Vec<Producer>,
    /// How many Python processes the Django producer runs, each at an equal share of the rate
    /// (a Django site serves its requests from several worker processes; one process doing
    /// 1,000 `publish_event`s a second is at the limit of what it can do alone here).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), value_name = "N")]
    django_processes: u32,
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
    /// None: the producer alone, for its commit latency without a relay.
    Nothing,
}

/// The application that writes the events.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Producer {
    /// A Rust application: the public `enqueue` API, each event in its own transaction on a
    /// pool of connections in this process, concurrently as an application's requests are.
    Rust,
    /// A Django application: django-broadcaster's `publish_event` (one transaction per
    /// event) in a Python process of its own, one event after another, with Django's default
    /// SQLite busy handling (`tests/django_app/outbox_app.py`; needs --seed-python). Measured
    /// alone and beside Broadcaster's relay in the same run.
    Django,
}

impl Producer {
    fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Django => "django",
        }
    }
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
    let with_django = bench.producers.contains(&Producer::Django);
    if (with_seed || with_django)
        && let Some(missing) = bench.seed.missing()
    {
        anyhow::bail!(
            "cannot run the seed's worker or Django: {missing}; --seed-wait 0 --producer rust leaves them out"
        );
    }
    let mut rows = Vec::new();
    for outbox in &bench.outbox {
        let idle = idle_cpu(&bench, outbox).await?;
        let row = ["-", "Broadcaster", "idle", "-", "-", "-", "-", "-", "-", "-", "-"].map(String::from);
        rows.push([vec![outbox.clone()], row.to_vec(), vec![idle]].concat());
        for &rate in &bench.rates {
            for &producer in &bench.producers {
                let relays: &[Measured] = match producer {
                    Producer::Rust if with_seed => &[Measured::Broadcaster, Measured::Seed],
                    Producer::Rust => &[Measured::Broadcaster],
                    Producer::Django => &[Measured::Nothing, Measured::Broadcaster],
                };
                for &measured in relays {
                    let row = at_rate(&bench, outbox, rate, producer, measured).await?;
                    rows.push([vec![outbox.clone()], row.to_vec()].concat());
                }
            }
        }
    }
    println!(
        "latency: commit → entry read by an XREAD BLOCK consumer, open-loop producer, one event per transaction, \
         relay with {}",
        bench.interval.map_or("the default configuration".to_string(), |i| format!("relay.interval = {i:?}"))
    );
    let rows: Vec<[String; 13]> = rows.into_iter().map(|row| row.try_into().expect("thirteen columns")).collect();
    print_table(
        [
            "OUTBOX",
            "PRODUCER",
            "RELAY",
            "OFFERED/S (ACHIEVED)",
            "EVENTS",
            "P50",
            "P99",
            "MAX",
            "LATE",
            "COMMIT P50",
            "COMMIT P99",
            "BEHIND P99",
            "PROCESS CPU",
        ],
        &rows,
    );
    println!(
        "P50/P99/MAX: commit → entry read. COMMIT: the producer's own transaction, from its start to its commit \
         returning. BEHIND: how far behind its schedule the producer's commits returned (an open-loop producer \
         that cannot keep up falls further behind with every event). PRODUCER rust: transactions on a pool of the \
         application's connections in this process; django: django-broadcaster's `publish_event` in one Python \
         process (SQLite's default busy handling), relay none: the producer alone, for comparison. PROCESS CPU: \
         this process (Rust producer, relay, consumer) as a share of one core (the seed's worker and Django, \
         processes of their own, not included); idle: the relay alone. LATE: events not read within 60 s of the \
         producer's end (the seed: --seed-wait); the percentiles count them as later than that."
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

/// Wall-clock time in nanoseconds since the Unix epoch: the one clock this process and the
/// Django producer's share.
fn wall_ns() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// An event id as 32 hex digits (Django's storage form), whatever form it came in.
fn id_key(id: &str) -> String {
    id.replace('-', "").to_ascii_lowercase()
}

/// One event's transaction, in wall-clock nanoseconds: when it was due to start (the open
/// loop's schedule), when it started, when its commit returned.
#[derive(Clone, Copy)]
struct Commit {
    scheduled: u64,
    started: u64,
    committed: u64,
}

type Commits = Arc<Mutex<HashMap<String, Commit>>>;

async fn at_rate(
    bench: &LatencyBench,
    outbox: &str,
    rate: u32,
    producer: Producer,
    measured: Measured,
) -> anyhow::Result<[String; 12]> {
    let scratch = Scratch::create(outbox, &bench.postgres).await?;
    let stream = match measured {
        Measured::Seed => format!("bench:latency:{outbox}:{rate}:seed"),
        _ => format!("bench:latency:{outbox}:{rate}"),
    };
    let publisher = (measured == Measured::Seed).then_some("bench");
    let producer_store = OutboxStore::connect(&scratch.url).await?;
    producer_store.migrate().await?;
    drop(producer_store);
    let client = redis::Client::open(format!("redis://{}/", bench.redis))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL").arg(&stream).query_async::<()>(&mut conn).await?;

    let arrivals: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let consumer = tokio::spawn(consume(client.clone(), stream.clone(), arrivals.clone()));
    let relay = match measured {
        Measured::Broadcaster => Relayed::Here(start_relay(&config(bench, &scratch.url, &stream)?).await?),
        Measured::Seed => {
            let command = ["seed-worker", bench.redis.as_str(), "bench", stream.as_str()];
            Relayed::Seed(bench.seed.spawn(&scratch.url, &command)?)
        }
        Measured::Nothing => Relayed::Nothing,
    };
    // The seed's Django takes a moment to start: its first batch is due then.
    tokio::time::sleep(Duration::from_millis(if measured == Measured::Seed { 2000 } else { 500 })).await;
    let cpu_before = (process_cpu(), Instant::now());

    let total = (f64::from(rate) * bench.duration.as_secs_f64()) as u64;
    let commits: Commits = Arc::default();
    match producer {
        Producer::Rust => produce_here(&scratch.url, outbox, rate, total, publisher, &commits).await?,
        Producer::Django => produce_in_django(bench, &scratch.url, rate, &commits).await?,
    }
    let commits = std::mem::take(&mut *commits.lock().expect("commits lock"));
    // What the producer achieved: it may fall behind the offered rate (commits are what they
    // are); latencies are measured from each commit all the same.
    let first = commits.values().map(|c| c.scheduled).min().unwrap_or(0);
    let last = commits.values().map(|c| c.committed).max().unwrap_or(0);
    let achieved = commits.len() as f64 / (last.saturating_sub(first) as f64 / 1e9).max(1e-9);
    let wait = if measured == Measured::Seed { bench.seed_wait } else { Duration::from_secs(60) };
    let deadline = Instant::now() + wait;
    while measured != Measured::Nothing
        && arrivals.lock().expect("arrivals lock").len() < commits.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = (process_cpu() - cpu_before.0).as_secs_f64() / cpu_before.1.elapsed().as_secs_f64();
    relay.stop().await?;
    consumer.abort();
    redis::cmd("DEL").arg(&stream).query_async::<()>(&mut conn).await?;
    scratch.drop().await;

    let arrivals = arrivals.lock().expect("arrivals lock");
    let nanos = |n: u64| Duration::from_nanos(n);
    let latencies =
        sorted(commits.iter().filter_map(|(id, commit)| {
            arrivals.get(id).map(|arrived| nanos(arrived.saturating_sub(commit.committed)))
        }));
    let late = commits.len() - latencies.len();
    let commit_times = sorted(commits.values().map(|c| nanos(c.committed.saturating_sub(c.started))));
    let behind = sorted(commits.values().map(|c| nanos(c.committed.saturating_sub(c.scheduled))));
    // Quantiles over every event, the late ones counted as later than the wait.
    let at = |q: f64| quantile(&latencies, commits.len(), q).unwrap_or_else(|| format!("> {}", seconds(wait)));
    let relay_name = match measured {
        Measured::Broadcaster => "Broadcaster",
        Measured::Seed => "seed's outbox_worker",
        Measured::Nothing => "none",
    };
    let producer_name = match producer {
        Producer::Django if bench.django_processes > 1 => format!("django ×{}", bench.django_processes),
        _ => producer.name().to_string(),
    };
    let relayed = measured != Measured::Nothing;
    let relayed_or_dash = |text: String| if relayed { text } else { "-".to_string() };
    let (commit_p50, commit_p99) = (at_quantile(&commit_times, 0.5), at_quantile(&commit_times, 0.99));
    let behind_p99 = at_quantile(&behind, 0.99);
    eprintln!(
        "{outbox} × {producer_name} × {relay_name} at {rate}/s: {} events, p50 {}, p99 {}, {} late; \
         commit p50 {commit_p50}, p99 {commit_p99}, max {}, behind p99 {behind_p99}, max {}",
        commits.len(),
        relayed_or_dash(at(0.5)),
        relayed_or_dash(at(0.99)),
        relayed_or_dash(late.to_string()),
        at_quantile(&commit_times, 1.0),
        at_quantile(&behind, 1.0),
    );
    Ok([
        producer_name,
        relay_name.to_string(),
        format!("{rate} ({achieved:.0})"),
        relayed_or_dash(latencies.len().to_string()),
        relayed_or_dash(at(0.5)),
        relayed_or_dash(at(0.99)),
        relayed_or_dash(if late > 0 { format!("> {}", seconds(wait)) } else { at(1.0) }),
        relayed_or_dash(late.to_string()),
        commit_p50,
        commit_p99,
        behind_p99,
        if measured == Measured::Seed { "-".to_string() } else { format!("{:.0}%", cpu * 100.0) },
    ])
}

/// `times`, shortest first.
fn sorted(times: impl Iterator<Item = Duration>) -> Vec<Duration> {
    let mut sorted: Vec<Duration> = times.collect();
    sorted.sort();
    sorted
}

/// The `q` quantile of `sorted` (shortest first) among `of` events (those missing from it
/// counted as later than all of them: `None` when the quantile falls among those).
fn quantile(sorted: &[Duration], of: usize, q: f64) -> Option<String> {
    if of == 0 {
        return Some("-".to_string());
    }
    let i = ((of as f64 * q) as usize).min(of - 1);
    sorted.get(i).map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
}

fn at_quantile(times: &[Duration], q: f64) -> String {
    quantile(times, times.len(), q).unwrap_or_default()
}

/// The Rust producer: each event in its own transaction on the application's connection pool
/// in this process, sent on schedule (open loop).
async fn produce_here(
    url: &str,
    outbox: &str,
    rate: u32,
    total: u64,
    publisher: Option<&'static str>,
    commits: &Commits,
) -> anyhow::Result<()> {
    let application = Application::connect(url, connections(outbox, rate)).await?;
    let started = Instant::now();
    let start_ns = wall_ns();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut producing = tokio::task::JoinSet::new();
    for i in 0..total {
        // Open loop: each event is sent at its time, however late the ones before it are;
        // a transaction waits for one of the application's connections when all are busy.
        let due = period.mul_f64(i as f64);
        tokio::time::sleep_until((started + due).into()).await;
        let (application, commits) = (application.clone(), commits.clone());
        let scheduled = start_ns + u64::try_from(due.as_nanos()).unwrap_or(u64::MAX);
        producing.spawn(async move {
            let mut event = NewEvent::new("latency.probe", "/bench").data(serde_json::json!({"n": i}));
            if let Some(publisher) = publisher {
                event = event.publisher(publisher);
            }
            let id = id_key(&event.event.id);
            let started = wall_ns();
            application.enqueue(&event).await?;
            let commit = Commit { scheduled, started, committed: wall_ns() };
            commits.lock().expect("commits lock").insert(id, commit);
            anyhow::Ok(())
        });
        while let Some(done) = producing.try_join_next() {
            done??;
        }
    }
    while let Some(done) = producing.join_next().await {
        done??;
    }
    Ok(())
}

/// The Django producer: django-broadcaster's `publish_event` in `--django-processes` Python
/// processes of their own (`tests/django_app/outbox_app.py django-producer`), each at its share
/// of the rate, their commits read from the files they write when done.
async fn produce_in_django(bench: &LatencyBench, url: &str, rate: u32, commits: &Commits) -> anyhow::Result<()> {
    let processes = bench.django_processes;
    let seconds = format!("{}", bench.duration.as_secs_f64());
    let share = format!("{}", f64::from(rate) / f64::from(processes));
    let mut running = Vec::new();
    for _ in 0..processes {
        let out = tempfile::NamedTempFile::new()?;
        let path = out.path().to_string_lossy().into_owned();
        let django = bench.seed.spawn(url, &["django-producer", &share, &seconds, &path])?;
        running.push((django, out));
    }
    for (mut django, out) in running {
        let status = django.wait().await?;
        anyhow::ensure!(status.success(), "the Django producer failed ({status}); its output is above");
        let text = std::fs::read_to_string(out.path())?;
        let mut commits = commits.lock().expect("commits lock");
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            match (fields.first(), number(1), number(2), number(3)) {
                (Some(id), Some(scheduled), Some(started), Some(committed)) => {
                    commits.insert(id_key(id), Commit { scheduled, started, committed });
                }
                _ => anyhow::bail!(
                    "the Django producer wrote {line:?}, expected `<id> <scheduled> <started> <committed>`"
                ),
            }
        }
    }
    Ok(())
}

/// `d` in whole seconds, for people.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

/// The relay of a row, running.
enum Relayed {
    Here(RunningRelay),
    Seed(tokio::process::Child),
    Nothing,
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
            Self::Nothing => Ok(()),
        }
    }
}

/// Reads the stream from now on, noting when each event arrives.
async fn consume(
    client: redis::Client,
    stream: String,
    arrivals: Arc<Mutex<HashMap<String, u64>>>,
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
        let now = wall_ns();
        for key in reply.keys {
            for entry in key.ids {
                if let Some(id) = entry.get::<String>("event_id") {
                    arrivals.lock().expect("arrivals lock").insert(id_key(&id), now);
                }
                last = entry.id;
            }
        }
    }
}
