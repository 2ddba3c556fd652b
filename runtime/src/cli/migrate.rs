//! `broadcaster migrate`: create the outbox table when it is missing.

use std::process::ExitCode;

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let store = super::connect_outbox(&config).await?;
    if store.migrate().await? {
        println!("created table outbox_events and its indexes in {}", store.display_url());
    } else {
        println!("table outbox_events already exists in {}; left as it is", store.display_url());
    }
    Ok(ExitCode::SUCCESS)
}
