//! `broadcaster bench startup`: start-up time and memory of many publishers from one
//! component, each measurement in a fresh process: the configuration loaded, every publisher
//! set up, and the instances that fit in `[wasm] live_instances` made (in the background, as
//! `broadcaster run` does; the rest are made when an event needs them); then the time to
//! make instances of publishers that had none (what a tenant's first event after an idle
//! spell costs).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use broadcaster::publisher::Publisher;
use broadcaster::registry::PublisherRegistry;

use super::resident_bytes;
use crate::cli::output::print_table;

#[derive(Debug, clap::Args)]
pub struct StartupBench {
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
pub struct StartupOnce {
    #[arg(long)]
    config: std::path::PathBuf,
}

pub async fn run(bench: StartupBench) -> anyhow::Result<ExitCode> {
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
                format!("{:.2}", report["config_seconds"].as_f64().unwrap_or_default()),
                report["live"].to_string(),
                format!("{:.0}", grown as f64 / (1 << 20) as f64),
                format!("{:.0}", report["config_resident"].as_f64().unwrap_or_default() / (1 << 20) as f64),
                format!("{:.1}", per / 1024.0),
                format!("{:.3}", report["make_ms"].as_f64().unwrap_or_default()),
                report["allocator"].as_str().unwrap_or_default().to_string(),
            ]);
        }
    }
    println!(
        "start-up of many publishers from one component (each with its own options): SECONDS until the \
         configuration is loaded (OF WHICH CONFIG), every publisher is set up and LIVE instances are made (at most [wasm] live_instances; the rest are idle), \
         RSS growth in all and per configured publisher, then MAKE MS: making one more instance for a \
         publisher that had none (instantiate + init, dropping the least recently used one for room), \
         averaged over up to 1000"
    );
    print_table(
        [
            "COMPONENT",
            "PUBLISHERS",
            "COMPILE CACHE",
            "SECONDS",
            "OF WHICH CONFIG",
            "LIVE",
            "RSS MiB",
            "OF WHICH CONFIG",
            "KiB/PUBLISHER",
            "MAKE MS",
            "ALLOCATOR",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run_once(once: StartupOnce) -> anyhow::Result<ExitCode> {
    let before = resident_bytes().unwrap_or_default();
    let started = Instant::now();
    let config = broadcaster::checks::load_config(&once.config)?;
    let config_seconds = started.elapsed().as_secs_f64();
    let config_resident = resident_bytes().unwrap_or_default().saturating_sub(before);
    // As `broadcaster run` starts: the instances that fit are made in the background; the
    // clock stops once they are.
    let registry = PublisherRegistry::build(&config, None).await?;
    registry.wait_started().await;
    let seconds = started.elapsed().as_secs_f64();
    let after = resident_bytes().unwrap_or_default();
    let components: Vec<_> = registry
        .iter()
        .filter_map(|(_, p)| match p {
            Publisher::Component(c) => Some(c.clone()),
            Publisher::RedisStream(_) => None,
        })
        .collect();
    let live = registry.live_instances().map_or(0, |set| set.live());
    let failed: u64 = components.iter().map(|c| c.counters().failed_starts()).sum();
    if failed > 0 {
        bail!("{failed} publisher(s) failed to start");
    }
    // Instances for publishers that have none (or, when every one has, for the first ones
    // again after dropping theirs), one at a time.
    let idle: Vec<_> = components.iter().filter(|c| c.is_idle()).take(1000).cloned().collect();
    let sample: Vec<_> = if idle.is_empty() {
        components.iter().take(1000).filter(|c| c.drop_idle_instance()).cloned().collect()
    } else {
        idle
    };
    let mut make_ms = 0.0;
    if !sample.is_empty() {
        let making = Instant::now();
        for publisher in &sample {
            publisher.make_instance().await.map_err(|why| anyhow::anyhow!("{}: {why}", publisher.name()))?;
        }
        make_ms = making.elapsed().as_secs_f64() * 1000.0 / sample.len() as f64;
    }
    println!(
        "{}",
        serde_json::json!({
            "seconds": seconds,
            "resident_growth": after.saturating_sub(before),
            "config_seconds": config_seconds,
            "config_resident": config_resident,
            "publishers": registry.iter().count(),
            "live": live,
            "make_ms": make_ms,
            "allocator": if components.first().is_some_and(|c| c.is_pooling()) { "pooling" } else { "on-demand" },
        })
    );
    Ok(ExitCode::SUCCESS)
}
