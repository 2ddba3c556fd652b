//! `broadcaster bench control`: the tenants' control plane. A relay (`broadcaster run`, a
//! process of its own) with many tenants from a TOML file, then with the same tenants from the
//! catalog (start-up time and resident memory, side by side); then, with that relay running,
//! new tenants put through the catalog one at a time by this process, each followed at once
//! by an event for it: the time to check and store the change (what `PUT` answers after),
//! and from there to the event being published by the other relay.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore};
use broadcaster::tenants::{FileView, TenantCatalog};

use super::Scratch;
use crate::cli::output::print_table;

#[derive(Debug, clap::Args)]
pub struct ControlBench {
    /// Tenants (component publishers, each with its own options) stored before the changes.
    #[arg(long, default_value_t = 100_000)]
    tenants: usize,
    /// Changes timed (each a new tenant, then one event for it).
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// The tenants' component: `rust`, `python`, `js`, or a .wasm file.
    #[arg(long, default_value = "rust")]
    publisher: String,
    /// The outbox: sqlite or postgres.
    #[arg(long, default_value = "postgres")]
    outbox: String,
    /// The Redis to publish to (streams bench:control:* are deleted afterwards).
    #[arg(long, default_value = "127.0.0.1:6379", value_name = "HOST:PORT")]
    redis: String,
    /// A PostgreSQL server URL; a scratch database is created on it and dropped afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test", value_name = "URL")]
    postgres: String,
}

/// A relay process, started and ready; killed when dropped.
struct RelayProcess {
    child: std::process::Child,
    started_in: Duration,
}

impl RelayProcess {
    fn start(config: &std::path::Path) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", std::env::var("BENCH_RELAY_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(child.stderr.take().context("stderr")?).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("broadcaster worker: outbox") => break,
                Some(Ok(_)) => {}
                _ => bail!("the relay exited before it started: {:?}", child.wait()),
            }
        }
        let started_in = started.elapsed();
        // Its warnings and errors (a change it could not apply) show beside the results.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|line| eprintln!("relay: {line}")));
        Ok(Self { child, started_in })
    }

    /// Resident memory in MiB: all of it (`VmRSS`), and the anonymous part (`RssAnon`: the
    /// heap, without pages of files mapped in, such as SQLite's memory-mapped database).
    fn resident_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| -> f64 {
            let kib: f64 = status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or_default();
            kib / 1024.0
        };
        (field("VmRSS:"), field("RssAnon:"))
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

pub async fn run(bench: ControlBench) -> anyhow::Result<ExitCode> {
    let (host, port) = bench.redis.rsplit_once(':').context("--redis is HOST:PORT")?;
    let component = std::fs::canonicalize(super::relay::publisher_component(&bench.publisher).context("a component")?)
        .context("the component is missing (scripts/build-components, scripts/build-polyglot)")?;
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let scratch = Scratch::create(&bench.outbox, &bench.postgres).await?;
    let store = OutboxStore::connect(&scratch.url).await?;
    store.migrate().await?;
    let head = format!("[outbox]\nurl = \"{}\"\n[wasm]\ncache_dir = \"{}\"\n", scratch.url, cache.display());
    let mut tenants_toml = head.clone();
    for i in 0..bench.tenants {
        tenants_toml.push_str(&format!(
            "[publishers.tenant-{i}]\ncomponent = \"{}\"\n[publishers.tenant-{i}.options]\n\
             stream_name = \"bench:control:tenant-{i}\"\n[publishers.tenant-{i}.grants]\n\
             redis = {{ host = \"{host}\", port = {port}, streams = [\"bench:control:*\"] }}\n",
            component.display()
        ));
    }
    let from_file = dir.path().join("tenants.toml");
    std::fs::write(&from_file, &tenants_toml)?;
    let from_catalog = dir.path().join("catalog.toml");
    std::fs::write(&from_catalog, &head)?;

    // The same tenants from the file, then from the catalog: start-up and memory.
    drop(RelayProcess::start(&from_file)?); // compiles the component into the cache
    let file_relay = RelayProcess::start(&from_file)?;
    let (file_start, file_rss) = (file_relay.started_in, file_relay.resident_mib());
    drop(file_relay);
    eprintln!("{} tenants from the file: started in {:.2}s", bench.tenants, file_start.as_secs_f64());
    let admin_config = broadcaster::checks::load_config(&from_catalog)?;
    let catalog = store.catalog().context("a catalog")?;
    let tenants = TenantCatalog::new(catalog, FileView::Loaded(Box::new(admin_config)));
    let imported = Instant::now();
    let (written, _) = tenants.import_file(&from_file, "bench").await?;
    let import_seconds = imported.elapsed().as_secs_f64();
    eprintln!("imported {written} tenants into the catalog in {import_seconds:.1}s");
    let catalog_relay = RelayProcess::start(&from_catalog)?;
    let (catalog_start, catalog_rss) = (catalog_relay.started_in, catalog_relay.resident_mib());
    eprintln!("{} tenants from the catalog: started in {:.2}s", bench.tenants, catalog_start.as_secs_f64());

    // Changes while that relay runs: a new tenant, then an event for it.
    let redis = redis::Client::open(format!("redis://{}/", bench.redis))?;
    let mut connection = redis.get_multiplexed_async_connection().await?;
    let sha = tenants.component_reference(component.to_str().context("a UTF-8 path")?, "bench").await?;
    let (mut puts, mut published) = (Vec::new(), Vec::new());
    for k in 0..bench.changes {
        let name = format!("control-{k}");
        let stream = format!("bench:control:{name}");
        let definition = serde_json::json!({
            "component": sha,
            "options": {"stream_name": stream},
            "grants": {"redis": {"host": host, "port": port.parse::<u16>()?, "streams": ["bench:control:*"]}},
        });
        let put = Instant::now();
        tenants.put_publisher(&name, definition, Some(0), "bench").await?;
        let stored = Instant::now();
        store.enqueue(&[NewEvent::new("bench.control", "/bench").publisher(&name)], now_micros()).await?;
        let deadline = stored + Duration::from_secs(10);
        while redis::cmd("XLEN").arg(&stream).query_async::<u64>(&mut connection).await? == 0 {
            if Instant::now() > deadline {
                bail!("the event for {name} was not published within 10 s of its change");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        puts.push(stored - put);
        published.push(stored.elapsed());
    }
    drop(catalog_relay);
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("bench:control:*").query_async(&mut connection).await?;
    keys.sort();
    for chunk in keys.chunks(1000) {
        redis::cmd("DEL").arg(chunk).query_async::<()>(&mut connection).await?;
    }
    scratch.drop().await;
    puts.sort();
    published.sort();

    println!(
        "tenant control plane ({} outbox, {} component): a relay with {} tenants from a TOML file, then from \
         the catalog (START: process start until it runs; RSS right after, ANON without mapped files); then {} new tenants put through \
         the catalog while it runs, each followed by one event (PUT: checked, init run, stored; → PUBLISHED: \
         from stored to the event in its stream, published by the running relay)",
        bench.outbox, bench.publisher, bench.tenants, bench.changes
    );
    print_table(
        ["TENANTS FROM", "START S", "RSS MiB", "ANON RSS MiB", "IMPORT S"],
        &[
            [
                "TOML file".into(),
                format!("{:.2}", file_start.as_secs_f64()),
                format!("{:.0}", file_rss.0),
                format!("{:.0}", file_rss.1),
                "-".into(),
            ],
            [
                "catalog".into(),
                format!("{:.2}", catalog_start.as_secs_f64()),
                format!("{:.0}", catalog_rss.0),
                format!("{:.0}", catalog_rss.1),
                format!("{import_seconds:.1}"),
            ],
        ],
    );
    print_table(
        ["CHANGES", "PUT p50 ms", "PUT p99 ms", "→ PUBLISHED p50 ms", "→ PUBLISHED p99 ms"],
        &[[
            bench.changes.to_string(),
            ms(percentile(&puts, 0.5)),
            ms(percentile(&puts, 0.99)),
            ms(percentile(&published, 0.5)),
            ms(percentile(&published, 0.99)),
        ]],
    );
    Ok(ExitCode::SUCCESS)
}
