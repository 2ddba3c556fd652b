//! `broadcaster publish`: enqueue events into the outbox (the seed's `publish_event`).

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::Context;
use broadcaster::cloudevent_input::{self, InputError};
use broadcaster::event::{Payload, now_micros};
use broadcaster::outbox::{NewEvent, OutboxStore};

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The event type (CloudEvent `type`). Without it, events are read from stdin: one
    /// CloudEvent JSON document, or JSON Lines (one document per line) for many.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    event_type: Option<String>,
    /// The event source (CloudEvent `source`).
    #[arg(long, short = 's')]
    source: Option<String>,
    /// The data, as JSON.
    #[arg(long, short = 'd', value_name = "JSON")]
    data: Option<String>,
    /// The subject.
    #[arg(long)]
    subject: Option<String>,
    /// The publisher that will publish it (default: the `default` publisher).
    #[arg(long, short = 'p')]
    publisher: Option<String>,
    /// Do not publish before this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME")]
    scheduled_at: Option<String>,
    /// Attempts before the event is marked failed.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Extra per-event fields for the publisher, as a JSON object.
    #[arg(long, value_name = "JSON")]
    publisher_config: Option<String>,
    /// The content type of the data.
    #[arg(long, default_value = "application/json", value_name = "MEDIA_TYPE")]
    data_content_type: String,
    /// The data schema URI.
    #[arg(long, value_name = "URI")]
    data_schema: Option<String>,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let mut events = match &args.event_type {
        Some(event_type) => vec![from_flags(&args, event_type)?],
        None => from_stdin(&args)?,
    };
    let scheduled_at = args
        .scheduled_at
        .as_deref()
        .map(|t| cloudevent_input::parse_time("--scheduled-at", t).map(|t| t.to_utc()))
        .transpose()?;
    let publisher_config =
        args.publisher_config.as_deref().map(cloudevent_input::parse_publisher_config).transpose()?;
    for new in &mut events {
        new.scheduled_at = scheduled_at.or(new.scheduled_at);
        new.event.max_retries = args.max_retries;
        if let Some(publisher) = &args.publisher {
            new.event.publisher_backend = publisher.clone();
        }
        if let Some(config) = &publisher_config {
            new.event.publisher_config = config.clone();
        }
        let name = if new.event.publisher_backend.is_empty() { "default" } else { &new.event.publisher_backend };
        if !config.publishers.contains_key(name) {
            eprintln!(
                "warning: no publisher named `{name}` is configured in {}; the worker will mark the event failed",
                config.path.display()
            );
        }
    }
    let store = OutboxStore::connect(&config.outbox.url).await?;
    store.verify().await?;
    let ids = store.enqueue(&events, now_micros()).await?;
    for id in &ids {
        println!("{id}");
    }
    eprintln!("enqueued {} event(s) into {}", ids.len(), store.display_url());
    Ok(ExitCode::SUCCESS)
}

fn from_flags(args: &PublishArgs, event_type: &str) -> anyhow::Result<NewEvent> {
    let source = args.source.clone().ok_or_else(|| InputError("--source is required with --type".into()))?;
    let mut new = NewEvent::new(event_type, source);
    new.event.subject = args.subject.clone().unwrap_or_default();
    new.event.data_content_type = args.data_content_type.clone();
    new.event.data_schema = args.data_schema.clone().unwrap_or_default();
    if let Some(data) = &args.data {
        new.event.data = Payload::Json(cloudevent_input::parse_data_flag(data)?);
    }
    Ok(new)
}

fn from_stdin(args: &PublishArgs) -> anyhow::Result<Vec<NewEvent>> {
    if args.source.is_some() || args.subject.is_some() || args.data.is_some() || args.data_schema.is_some() {
        return Err(InputError(
            "--source, --subject, --data and --data-schema describe an event given with --type; \
             without --type events are read from stdin"
                .into(),
        )
        .into());
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(InputError(
            "no event: give --type and --source, or pipe CloudEvent JSON (one document, or JSON Lines) on stdin".into(),
        )
        .into());
    }
    let mut text = String::new();
    stdin.lock().read_to_string(&mut text).context("reading events from stdin")?;
    let events = cloudevent_input::parse_many_for_outbox(&text)?;
    Ok(events.into_iter().map(|event| NewEvent { event, scheduled_at: None }).collect())
}
