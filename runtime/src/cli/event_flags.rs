//! The flags that describe one event, shared by `publish` and `send`: with `--type` the
//! event is the flags; without it, CloudEvent JSON comes on stdin.

use std::io::{IsTerminal, Read};

use anyhow::Context;
use broadcaster::cloudevent_input::{self, InputError};
use broadcaster::event::{OutboxEvent, Payload};
use serde_json::{Map, Value};

#[derive(Debug, clap::Args)]
pub struct EventFlags {
    /// The event type (CloudEvent `type`), e.g. order.created. Without it, CloudEvent JSON
    /// is read from stdin.
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

impl EventFlags {
    /// The event the flags describe, or `None` when there is no `--type` (the event comes on
    /// stdin: see [`EventFlags::read_stdin`]).
    pub fn event(&self) -> Result<Option<OutboxEvent>, InputError> {
        let Some(event_type) = &self.event_type else { return Ok(None) };
        let source = self.source.clone().ok_or_else(|| InputError("--source is required with --type".into()))?;
        let mut event = OutboxEvent::new(event_type.clone(), source);
        event.subject = self.subject.clone().unwrap_or_default();
        event.data_content_type = self.data_content_type.clone();
        event.data_schema = self.data_schema.clone().unwrap_or_default();
        if let Some(data) = &self.data {
            event.data = Payload::Json(cloudevent_input::parse_data_flag(data)?);
        }
        Ok(Some(event))
    }

    /// `--publisher-config`, parsed.
    pub fn publisher_config(&self) -> Result<Option<Map<String, Value>>, InputError> {
        self.publisher_config.as_deref().map(cloudevent_input::parse_publisher_config).transpose()
    }

    /// The text on stdin, when the flags do not describe an event. `expected` says what it
    /// should hold ("a CloudEvent JSON document").
    pub fn read_stdin(&self, expected: &str) -> anyhow::Result<String> {
        if self.source.is_some() || self.subject.is_some() || self.data.is_some() || self.data_schema.is_some() {
            return Err(InputError(format!(
                "--source, --subject, --data and --data-schema describe an event given with --type; \
                 without --type, {expected} is read from stdin"
            ))
            .into());
        }
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(InputError(format!("no event: give --type and --source, or pipe {expected} on stdin")).into());
        }
        let mut text = String::new();
        stdin.lock().read_to_string(&mut text).context("reading stdin")?;
        if text.trim().is_empty() {
            return Err(InputError(format!("stdin is empty: expected {expected}")).into());
        }
        Ok(text)
    }
}
