//! `broadcaster retry`: put failed events back to pending.

use std::process::ExitCode;

use broadcaster::cloudevent_input::InputError;
use broadcaster::event::now_micros;

use super::ConfigArg;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "failed"])))]
pub struct RetryArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Event ids to retry (failed or retry events), with or without hyphens.
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// Retry every failed event.
    #[arg(long)]
    failed: bool,
}

pub async fn run(args: RetryArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    for id in &args.ids {
        broadcaster::outbox::parse_id(id).map_err(|err| InputError(err.to_string()))?;
    }
    let store = super::open_outbox(&config).await?;
    let changed = store.retry(&args.ids, now_micros()).await?;
    for id in &changed {
        println!("{id}");
    }
    eprintln!("{} event(s) back to pending, due now, with their retries reset", changed.len());
    if args.ids.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // Explain every id that was not changed.
    let mut missed = false;
    let rows = store.find(&args.ids).await?;
    for id in &args.ids {
        let uuid = broadcaster::outbox::parse_id(id)?.to_string();
        if changed.contains(&uuid) {
            continue;
        }
        missed = true;
        match rows.iter().find(|row| row.id == uuid) {
            Some(row) => {
                eprintln!("not changed: {uuid} is {} (only failed and retry events are retried)", row.status.as_str())
            }
            None => eprintln!("not changed: no event {uuid} in the outbox"),
        }
    }
    Ok(if missed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
