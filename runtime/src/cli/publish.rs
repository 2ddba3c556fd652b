//! `broadcaster publish`: enqueue events into the outbox (the seed's `publish_event`).

use std::process::ExitCode;

use broadcaster::cloudevent_input;
use broadcaster::event::now_micros;
use broadcaster::outbox::NewEvent;
use broadcaster::routing;

use super::ConfigArg;
use super::event_flags::EventFlags;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    event: EventFlags,
    /// The publisher that will publish it (default: the `default` publisher).
    #[arg(long, short = 'p')]
    publisher: Option<String>,
    /// Do not publish before this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME")]
    scheduled_at: Option<String>,
    /// Attempts before the event is marked failed.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let store = super::open_outbox(&config).await?;
    let catalog = match store.catalog() {
        Some(catalog) if catalog.is_present().await.unwrap_or(false) => Some(catalog),
        _ => None,
    };
    let mut events = match args.event.event()? {
        Some(event) => vec![NewEvent { event, scheduled_at: None }],
        None => {
            let text = args.event.read_stdin("CloudEvent JSON (one document, or JSON Lines)")?;
            let events = cloudevent_input::parse_many_for_outbox(&text)?;
            events.into_iter().map(|event| NewEvent { event, scheduled_at: None }).collect()
        }
    };
    let scheduled_at = args
        .scheduled_at
        .as_deref()
        .map(|t| cloudevent_input::parse_time("--scheduled-at", t).map(|t| t.to_utc()))
        .transpose()?;
    let publisher_config = args.event.publisher_config()?;
    for new in &mut events {
        new.scheduled_at = scheduled_at.or(new.scheduled_at);
        new.event.max_retries = args.max_retries;
        if let Some(publisher) = &args.publisher {
            new.event.publisher_backend = publisher.clone();
        }
        if let Some(config) = &publisher_config {
            new.event.publisher_config = config.clone();
        }
        let name = routing::publisher_for(&new.event.publisher_backend);
        let in_catalog = match &catalog {
            Some(catalog) => catalog.publisher(name).await.ok().flatten().is_some(),
            None => false,
        };
        if !config.publishers.contains_key(name) && !in_catalog {
            eprintln!(
                "warning: no publisher named `{name}` is configured in {} or the tenant catalog; the worker will mark \
                 the event failed (or hold it, when it follows a catalog)",
                config.path.display()
            );
        }
    }
    let ids = store.enqueue(&events, now_micros()).await?;
    for id in &ids {
        println!("{id}");
    }
    eprintln!("enqueued {} event(s) into {}", ids.len(), store.display_url());
    Ok(ExitCode::SUCCESS)
}
