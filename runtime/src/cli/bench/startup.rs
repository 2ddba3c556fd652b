//! `broadcaster bench startup`: start-up time and memory of many publishers from one
//! component, each measurement in a fresh process.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use broadcaster::config::Config;
use broadcaster::registry::{BuildOptions, PublisherRegistry};

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

pub async fn run_once(once: StartupOnce) -> anyhow::Result<ExitCode> {
    let config = Config::load(&once.config)?;
    let before = resident_bytes().unwrap_or_default();
    let started = Instant::now();
    // Strict: every instance is made and `init`ed before the clock stops.
    let registry = PublisherRegistry::build_with(&config, None, BuildOptions { strict: true }).await?;
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
