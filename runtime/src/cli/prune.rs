//! `broadcaster prune`: delete old published events, in bounded batches.

use std::process::ExitCode;

use broadcaster::config::units::parse_duration;
use broadcaster::event::now_micros;

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Delete events published longer ago than this (e.g. 7d, 12h).
    #[arg(long, value_name = "AGE", value_parser = parse_duration)]
    older_than: std::time::Duration,
    /// Only count what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// Rows deleted per statement (keeps each transaction and lock short).
    #[arg(long, default_value_t = 1000)]
    batch: u32,
}

pub async fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let store = super::open_outbox(&config).await?;
    let before = now_micros() - chrono::Duration::from_std(args.older_than)?;
    if args.dry_run {
        let count = store.count_prunable(before).await?;
        println!("{count} published event(s) older than {:?} would be deleted (dry run)", args.older_than);
        return Ok(ExitCode::SUCCESS);
    }
    let mut deleted = 0;
    loop {
        let n = store.prune_batch(before, args.batch.max(1)).await?;
        deleted += n;
        if n < u64::from(args.batch.max(1)) {
            break;
        }
    }
    println!("deleted {deleted} published event(s) older than {:?}", args.older_than);
    Ok(ExitCode::SUCCESS)
}
