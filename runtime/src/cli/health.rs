//! `broadcaster health`: every publisher's health as a table.

use std::process::ExitCode;

use broadcaster::registry::PublisherRegistry;

use super::ConfigArg;
use super::output::print_table;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON (one object per publisher) instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.config.load()?;
    super::add_catalog_publishers(&mut config).await?;
    let registry = PublisherRegistry::build(&config, None).await?;
    let report = registry.health().await;
    if args.json {
        let rows: Vec<_> = report
            .iter()
            .map(|(name, publisher, health)| {
                serde_json::json!({
                    "publisher": name,
                    "kind": publisher.kind(),
                    "healthy": health.healthy,
                    "idle": health.idle,
                    "detail": health.detail,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        let rows: Vec<[String; 4]> = report
            .iter()
            .map(|(name, publisher, health)| {
                let state = if health.healthy { "healthy" } else { "UNHEALTHY" };
                [name.clone(), publisher.kind(), state.to_string(), health.detail.clone()]
            })
            .collect();
        print_table(["PUBLISHER", "KIND", "STATE", "DETAIL"], &rows);
    }
    if report.is_empty() {
        eprintln!("no publishers are configured in {}", config.path.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(if report.iter().all(|(_, _, h)| h.healthy) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
