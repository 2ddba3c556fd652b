//! `broadcaster send`: one event straight through a publisher.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::Context;
use broadcaster::cloudevent_input::{self, InputError};
use broadcaster::event::{OutboxEvent, Payload};
use broadcaster::registry::PublisherRegistry;

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The publisher to send through.
    #[arg(long, short = 'p', default_value = broadcaster::config::DEFAULT_PUBLISHER)]
    publisher: String,
    /// The event type (CloudEvent `type`), e.g. order.created. Without it, a CloudEvent
    /// JSON document is read from stdin.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    event_type: Option<String>,
    /// The event source (CloudEvent `source`), e.g. /shop/orders.
    #[arg(long, short = 's')]
    source: Option<String>,
    /// The subject (CloudEvent `subject`).
    #[arg(long)]
    subject: Option<String>,
    /// The data, as JSON (a string needs its quotes: '"text"').
    #[arg(long, short = 'd', value_name = "JSON")]
    data: Option<String>,
    /// The content type of the data.
    #[arg(long, default_value = "application/json", value_name = "MEDIA_TYPE")]
    data_content_type: String,
    /// The data schema URI (CloudEvent `dataschema`).
    #[arg(long, value_name = "URI")]
    data_schema: Option<String>,
    /// Extra per-event fields for the publisher, as a JSON object (the outbox's
    /// publisher_config; the Redis Stream backends add each key as a stream field).
    #[arg(long, value_name = "JSON")]
    publisher_config: Option<String>,
}

pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let mut event = event_from_args(&args)?;
    event.publisher_backend = args.publisher.clone();
    let registry = PublisherRegistry::build(&config, Some(&[args.publisher.as_str()])).await?;
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

fn event_from_args(args: &SendArgs) -> anyhow::Result<OutboxEvent> {
    let mut event = match &args.event_type {
        Some(event_type) => {
            let source = args.source.clone().ok_or_else(|| InputError("--source is required with --type".into()))?;
            let mut event = OutboxEvent::new(event_type.clone(), source);
            event.subject = args.subject.clone().unwrap_or_default();
            event.data_content_type = args.data_content_type.clone();
            event.data_schema = args.data_schema.clone().unwrap_or_default();
            if let Some(data) = &args.data {
                event.data = Payload::Json(cloudevent_input::parse_data_flag(data)?);
            }
            event
        }
        None => {
            if args.source.is_some() || args.subject.is_some() || args.data.is_some() || args.data_schema.is_some() {
                return Err(InputError(
                    "--source, --subject, --data and --data-schema describe an event given with --type; \
                     without --type the event is read from stdin"
                        .into(),
                )
                .into());
            }
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(InputError(
                    "no event: give --type and --source, or pipe a CloudEvent JSON document on stdin".into(),
                )
                .into());
            }
            let mut text = String::new();
            stdin.lock().read_to_string(&mut text).context("reading the event from stdin")?;
            if text.trim().is_empty() {
                return Err(InputError("stdin is empty: expected a CloudEvent JSON document".into()).into());
            }
            cloudevent_input::parse_cloud_event_json(&text)?
        }
    };
    if let Some(config) = &args.publisher_config {
        event.publisher_config = cloudevent_input::parse_publisher_config(config)?;
    }
    Ok(event)
}
