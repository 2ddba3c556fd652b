//! `broadcaster bench ingest`: events accepted over HTTP by `broadcaster serve`'s ingest
//! endpoint, per outbox × mode (one event per request, or batches) × concurrent clients;
//! then p50/p99 request latency at half the best load (open loop); beside the same events
//! written by `broadcaster publish` and by the seed's `publish_event`, in the same run.
//!
//! The server runs in this process on 127.0.0.1 with the relay not running, so the figures
//! are ingest's own: parse, check, one transaction per request, answer.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broadcaster::config::Config;
use broadcaster::config::units::parse_duration;
use broadcaster::outbox::OutboxStore;
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::Relay;
use broadcaster::server::{ServerState, serve};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Digest;

use super::{Scratch, SeedApp};
use crate::cli::output::print_table;

#[derive(Debug, clap::Args)]
pub struct IngestBench {
    /// Concurrent clients (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<u32>,
    /// Events per request in batch mode.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// How long each measurement runs.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Outboxes to measure: sqlite, postgres (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    outbox: Vec<String>,
    /// A PostgreSQL server URL; a scratch database is created on it and dropped afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test", value_name = "URL")]
    postgres: String,
    /// Events written by `broadcaster publish` (one process, JSON Lines on stdin) and by the
    /// seed's `publish_event` for the comparison rows; 0 leaves them out.
    #[arg(long, default_value_t = 2_000, value_name = "EVENTS")]
    compare_events: usize,
    #[command(flatten)]
    seed: SeedApp,
}

const TOKEN: &str = "bench-ingest-token-0123456789abcdef";

/// One event of about 300 bytes, as a structured CloudEvent.
fn event_json(i: u64) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "order.created",
        "source": "/bench/shop",
        "subject": format!("order/{i}"),
        "datacontenttype": "application/json",
        "data": {
            "order_id": i,
            "customer": {"id": 4711, "name": "Zoë Example"},
            "items": [{"sku": "SKU-1", "qty": 2, "price": 9.95}],
            "total": 19.9,
        },
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Single,
    Batch,
}

/// What one measurement saw.
struct Measured {
    events: u64,
    requests: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Measured {
    fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> String {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        match sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize) {
            Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1000.0),
            None => "-".into(),
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub async fn run(bench: IngestBench) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for outbox in &bench.outbox {
        let scratch = Scratch::create(outbox, &bench.postgres).await?;
        let result = measure_outbox(&bench, outbox, &scratch.url, &mut rows).await;
        scratch.drop().await;
        result?;
        if bench.compare_events > 0 {
            rows.push(publish_cli(&bench, outbox).await?);
            match seed_publish(&bench, outbox).await {
                Ok(row) => rows.push(row),
                Err(err) => eprintln!("bench ingest: the seed's row is left out: {err:#}"),
            }
        }
    }
    println!(
        "ingest: CloudEvents over HTTP into the outbox (~300-byte events; requests that arrive together share a \
         transaction), relay not running; `open loop` rows offer half the best rate of their mode at a fixed pace"
    );
    print_table(["OUTBOX", "WRITER", "CLIENTS", "EVENTS/S", "REQUESTS/S", "P50", "P99"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn measure_outbox(
    bench: &IngestBench,
    outbox: &str,
    url: &str,
    rows: &mut Vec<[String; 7]>,
) -> anyhow::Result<()> {
    let store = OutboxStore::connect(url).await?;
    store.migrate().await?;
    let digest = format!("{:x}", sha2::Sha256::digest(TOKEN.as_bytes()));
    let text = format!(
        "[outbox]\nurl = \"{url}\"\n[publishers.bench]\nbackend = \"redis-stream\"\n\
         [server]\nmax_batch_events = {}\nmax_body = \"16MiB\"\n\
         [tokens.bench]\nsecret = {{ sha256 = \"{digest}\" }}\npublishers = [\"bench\"]\n",
        bench.batch.max(1)
    );
    let config = Config::from_toml(&text, "ingest.toml".as_ref(), Vec::new())?;
    let registry = Arc::new(PublisherRegistry::build(&config, None).await?);
    let relay = Arc::new(Relay::new(store, registry, &config.relay));
    let state = ServerState::new(&config, &relay)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/publishers/bench/events", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    for mode in [Mode::Single, Mode::Batch] {
        let mut best: Option<Measured> = None;
        for &clients in &bench.clients {
            let measured = closed_loop(&client, &url, bench, mode, clients).await?;
            rows.push(row(outbox, mode, &clients.to_string(), &measured));
            if best.as_ref().is_none_or(|b| measured.requests > b.requests) {
                best = Some(measured);
            }
        }
        if let Some(best) = best {
            let pace = best.requests as f64 / best.seconds / 2.0;
            let measured = open_loop(&client, &url, bench, mode, pace).await?;
            rows.push(row(outbox, mode, "open loop", &measured));
        }
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

fn row(outbox: &str, mode: Mode, clients: &str, measured: &Measured) -> [String; 7] {
    let writer = match mode {
        Mode::Single => "http, 1 event/request".to_string(),
        Mode::Batch => "http, batch".to_string(),
    };
    [
        outbox.to_string(),
        writer,
        clients.to_string(),
        format!("{:.0}", measured.events_per_second()),
        format!("{:.0}", measured.requests as f64 / measured.seconds),
        measured.percentile(0.5),
        measured.percentile(0.99),
    ]
}

/// One request's body and content type.
fn request(mode: Mode, batch: usize, first: u64) -> (Bytes, &'static str, u64) {
    match mode {
        Mode::Single => (Bytes::from(event_json(first).to_string()), "application/cloudevents+json", 1),
        Mode::Batch => {
            let events: Vec<_> = (0..batch as u64).map(|i| event_json(first + i)).collect();
            (
                Bytes::from(serde_json::Value::Array(events).to_string()),
                "application/cloudevents-batch+json",
                batch as u64,
            )
        }
    }
}

async fn post(client: &HttpClient, url: &str, body: Bytes, content_type: &str) -> anyhow::Result<()> {
    let request = hyper::Request::post(url)
        .header("content-type", content_type)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(body))?;
    let response = client.request(request).await.context("posting to the ingest endpoint")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != hyper::StatusCode::ACCEPTED {
        bail!("ingest answered {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// `clients` clients each sending a request as soon as the last was answered.
async fn closed_loop(
    client: &HttpClient,
    url: &str,
    bench: &IngestBench,
    mode: Mode,
    clients: u32,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let until = started + bench.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, url, batch) = (client.clone(), url.to_string(), bench.batch);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let (mut events, mut n) = (0u64, u64::from(c) << 32);
            while Instant::now() < until {
                let (body, content_type, count) = request(mode, batch, n);
                n += count;
                let sent = Instant::now();
                post(&client, &url, body, content_type).await?;
                latencies.push(sent.elapsed());
                events += count;
            }
            Ok::<_, anyhow::Error>((events, latencies))
        });
    }
    collect(tasks, started).await
}

/// Requests sent at a fixed `pace` per second whatever the answers take (each on its own
/// task), for the latency at a given load.
async fn open_loop(
    client: &HttpClient,
    url: &str,
    bench: &IngestBench,
    mode: Mode,
    pace: f64,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / pace.max(1.0));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while started.elapsed() < bench.duration {
        ticker.tick().await;
        let (body, content_type, count) = request(mode, bench.batch, n);
        n += count;
        let (client, url) = (client.clone(), url.to_string());
        tasks.spawn(async move {
            let sent = Instant::now();
            post(&client, &url, body, content_type).await?;
            Ok::<_, anyhow::Error>((count, vec![sent.elapsed()]))
        });
    }
    collect(tasks, started).await
}

async fn collect(
    mut tasks: tokio::task::JoinSet<anyhow::Result<(u64, Vec<Duration>)>>,
    started: Instant,
) -> anyhow::Result<Measured> {
    let mut measured = Measured { events: 0, requests: 0, seconds: 0.0, latencies: Vec::new() };
    while let Some(done) = tasks.join_next().await {
        let (events, latencies) = done??;
        measured.events += events;
        measured.requests += latencies.len() as u64;
        measured.latencies.extend(latencies);
    }
    measured.seconds = started.elapsed().as_secs_f64();
    Ok(measured)
}

/// A row for `events` written by one `writer` outside HTTP in `seconds`.
fn comparison_row(outbox: &str, writer: &str, events: usize, seconds: f64) -> [String; 7] {
    let rate = format!("{:.0}", events as f64 / seconds);
    [outbox.into(), writer.into(), "1".into(), rate, "-".into(), "-".into(), "-".into()]
}

/// The same events through `broadcaster publish` (JSON Lines on stdin, one process).
async fn publish_cli(bench: &IngestBench, outbox: &str) -> anyhow::Result<[String; 7]> {
    let scratch = Scratch::create(outbox, &bench.postgres).await?;
    let result = async {
        let store = OutboxStore::connect(&scratch.url).await?;
        store.migrate().await?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("broadcaster.toml");
        // A `default` publisher, so that `publish` does not warn about each event.
        std::fs::write(
            &config,
            format!("[outbox]\nurl = \"{}\"\n[publishers.default]\nbackend = \"redis-stream\"\n", scratch.url),
        )?;
        let lines: String =
            (0..bench.compare_events as u64).map(|i| format!("{}\n", event_json(i))).collect::<Vec<_>>().concat();
        let started = Instant::now();
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["publish", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, lines.as_bytes()).await?;
        drop(stdin);
        let status = child.wait().await?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("broadcaster publish failed ({status})");
        }
        Ok(comparison_row(outbox, "broadcaster publish (one process, JSON Lines)", bench.compare_events, seconds))
    }
    .await;
    scratch.drop().await;
    result
}

/// The same number of events through the seed's `publisher.publish_event`, one call each.
async fn seed_publish(bench: &IngestBench, outbox: &str) -> anyhow::Result<[String; 7]> {
    if let Some(missing) = bench.seed.missing() {
        bail!("{missing}");
    }
    let scratch = Scratch::create(outbox, &bench.postgres).await?;
    let result = async {
        OutboxStore::connect(&scratch.url).await?.migrate().await?;
        let events = bench.compare_events.to_string();
        let (_, seconds) = bench.seed.timed(&scratch.url, &["seed-enqueue", events.as_str()]).await?;
        Ok(comparison_row(outbox, "seed publish_event (one call each)", bench.compare_events, seconds))
    }
    .await;
    scratch.drop().await;
    result
}
