//! `broadcaster send`: one event straight through a publisher.

use std::process::ExitCode;

use broadcaster::cloudevent_input;
use broadcaster::registry::{BuildOptions, PublisherRegistry};

use super::ConfigArg;
use super::event_flags::EventFlags;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The publisher to send through.
    #[arg(long, short = 'p', default_value = broadcaster::routing::DEFAULT_PUBLISHER)]
    publisher: String,
    #[command(flatten)]
    event: EventFlags,
}

pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.config.load()?;
    super::add_catalog_publishers(&mut config).await?;
    let mut event = match args.event.event()? {
        Some(event) => event,
        None => cloudevent_input::parse_cloud_event_json(&args.event.read_stdin("a CloudEvent JSON document")?)?,
    };
    if let Some(publisher_config) = args.event.publisher_config()? {
        event.publisher_config = publisher_config;
    }
    event.publisher_backend = args.publisher.clone();
    // The one publisher this command needs must start: its start failing is the answer.
    let only = [args.publisher.as_str()];
    let registry = PublisherRegistry::build_with(&config, Some(&only), BuildOptions { strict: true }).await?;
    let publisher = registry.get(&args.publisher)?;
    match publisher.publish(&event).await {
        Ok(()) => {
            println!("{}", event.id);
            eprintln!("published event {} ({}) through `{}`", event.id, event.event_type, args.publisher);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: publisher `{}` did not publish event {}: {err}", args.publisher, event.id);
            Ok(ExitCode::FAILURE)
        }
    }
}
