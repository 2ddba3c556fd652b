//! `broadcaster migrate`: create the outbox table when it is missing.

use std::process::ExitCode;

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// PostgreSQL: leave out (or remove) the trigger that wakes relays when rows are inserted.
    /// Its NOTIFY serializes the commits of concurrent producers (measured here: 8 producers
    /// commit about 3,400 one-row transactions/s with it, 5,600–6,800 without); without it
    /// relays find new events by polling, within `relay.interval` at worst.
    #[arg(long)]
    without_wakeup_trigger: bool,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let store = super::connect_outbox(&config).await?;
    if store.migrate().await? {
        println!("created table outbox_events and its indexes in {}", store.display_url());
    } else {
        println!(
            "table outbox_events already exists in {}: its columns are django-broadcaster's; the claim index \
             (and on PostgreSQL the wake-up trigger) added where missing, nothing else changed",
            store.display_url()
        );
    }
    if args.without_wakeup_trigger && store.remove_wakeup_trigger().await? {
        println!("no wake-up trigger on outbox_events: relays find new events by polling");
    }
    Ok(ExitCode::SUCCESS)
}
