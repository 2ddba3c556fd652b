//! `broadcaster status`: what the outbox holds, per publisher and status.

use std::collections::BTreeSet;
use std::process::ExitCode;

use broadcaster::event::now_micros;
use broadcaster::outbox::Status;
use broadcaster::registry::PublisherRegistry;
use broadcaster::routing;

use super::ConfigArg;
use super::output::print_table;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also start every publisher and check its health, as `broadcaster health` does: a
    /// publisher that is down says why (a backend that did not start, Redis unreachable).
    #[arg(long)]
    health: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.config.load()?;
    let store = super::open_outbox(&config).await?;
    broadcaster::tenants::start::load_catalog(&store, &mut config).await?;
    let now = now_micros();
    let report = store.status(now, config.relay.lease_timeout.0).await?;
    let oldest_due_seconds = report.oldest_due.map(|t| (now - t).num_milliseconds() as f64 / 1000.0);
    let publishers: BTreeSet<&str> = report.counts.keys().map(|(p, _)| p.as_str()).collect();
    let unconfigured: Vec<&str> = publishers
        .iter()
        .copied()
        .filter(|p| !config.publishers.contains_key(routing::publisher_for(p)))
        .filter(|p| count_of(&report.counts, p, Status::Pending) + count_of(&report.counts, p, Status::Retry) > 0)
        .collect();
    let health = if args.health {
        let registry = PublisherRegistry::build(&config, None).await?;
        registry.health().await.into_iter().map(|(name, _, health)| (name, health)).collect()
    } else {
        Vec::new()
    };
    let count = |publisher: Option<&str>, status: Status| -> u64 {
        report
            .counts
            .iter()
            .filter(|((p, s), _)| *s == status && publisher.is_none_or(|name| name == p))
            .map(|(_, n)| n)
            .sum()
    };
    if args.json {
        let rows: Vec<_> = publishers
            .iter()
            .map(|p| {
                let mut row = serde_json::Map::new();
                row.insert("publisher".into(), routing::display_stored(p).into());
                for status in Status::ALL {
                    row.insert(status.as_str().into(), count(Some(p), status).into());
                }
                serde_json::Value::Object(row)
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "outbox": store.display_url(),
                "publishers": rows,
                "oldest_due_seconds": oldest_due_seconds,
                "expired_leases": report.expired_leases,
                "waiting_for_unconfigured_publishers": unconfigured,
                "health": health.iter().map(|(name, h)| serde_json::json!({
                    "publisher": name, "healthy": h.healthy, "idle": h.idle, "detail": h.detail,
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<[String; 6]> = publishers
        .iter()
        .map(|p| {
            let mut row =
                [routing::display_stored(p), String::new(), String::new(), String::new(), String::new(), String::new()];
            for (i, status) in Status::ALL.into_iter().enumerate() {
                row[i + 1] = count(Some(p), status).to_string();
            }
            row
        })
        .collect();
    let mut total = ["(all)".to_string(), String::new(), String::new(), String::new(), String::new(), String::new()];
    for (i, status) in Status::ALL.into_iter().enumerate() {
        total[i + 1] = count(None, status).to_string();
    }
    rows.push(total);
    println!("outbox {}", store.display_url());
    print_table(["PUBLISHER", "PENDING", "PROCESSING", "RETRY", "FAILED", "PUBLISHED"], &rows);
    match oldest_due_seconds {
        Some(age) => println!("oldest due event: waiting {age:.1}s"),
        None => println!("oldest due event: none due"),
    }
    if !unconfigured.is_empty() {
        println!(
            "events wait for publishers not configured in {} or the tenant catalog: {} (a worker marks them failed, \
             or holds them when it follows a catalog)",
            config.path.display(),
            unconfigured.join(", ")
        );
    }
    if !health.is_empty() {
        let rows: Vec<[String; 3]> = health
            .iter()
            .map(|(name, h)| {
                let state = if h.healthy { "healthy" } else { "DOWN" };
                [name.clone(), state.to_string(), h.detail.clone()]
            })
            .collect();
        println!();
        print_table(["PUBLISHER", "HEALTH", "DETAIL"], &rows);
    }
    if report.expired_leases > 0 {
        println!(
            "{} event(s) in processing past the lease timeout ({:?}): their worker stopped; a running worker takes them back",
            report.expired_leases, config.relay.lease_timeout.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn count_of(counts: &std::collections::BTreeMap<(String, Status), u64>, publisher: &str, status: Status) -> u64 {
    counts.get(&(publisher.to_string(), status)).copied().unwrap_or(0)
}
