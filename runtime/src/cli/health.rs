//! `broadcaster health`: every publisher's health as a table.

use std::process::ExitCode;

use broadcaster::registry::PublisherRegistry;

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON (one object per publisher) instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
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

/// Prints left-aligned columns separated by two spaces.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
