//! The relay's publish spans, joined to the trace an event carries in its `traceparent`
//! extension attribute (W3C Trace Context, the CloudEvents distributed tracing extension).
//!
//! For each event of a batch that carries a valid `traceparent`, the relay opens a span
//! `publish` (target `broadcaster::publish`) when it hands the batch to its publisher and
//! closes it once the event's outcome is known (retries of the same batch included). The span
//! carries `publisher`, `event_id`, `event_type`, the caller's `trace_id` and
//! `parent_span_id` (the `traceparent`'s parent id), and `outcome`. Events without a
//! `traceparent` get no span: a batch of them costs what it did.
//!
//! The spans go wherever the process's `tracing` subscriber sends them (the log with
//! `RUST_LOG=broadcaster::publish=debug`, which also logs each outcome), each with its own
//! `span_id`; with `[telemetry] otlp_endpoint` set they are also exported over OpenTelemetry
//! OTLP ([`crate::otlp`]), the `traceparent` as the remote parent.

use std::time::SystemTime;

use tracing::Span;
use tracing::field::Empty;

use crate::otlp::{FinishedSpan, OtlpExporter};
use broadcaster_core::event::OutboxEvent;
use broadcaster_core::extension_attributes::TraceParent;
use broadcaster_core::outcome::{Attempt, PublishError};

/// The tracing target of the publish spans.
pub const TARGET: &str = "broadcaster::publish";

/// The open publish spans of one batch: one per event that carries a trace context.
#[derive(Debug, Default)]
pub struct PublishSpans {
    /// (index in the batch, its span).
    spans: Vec<(usize, OpenSpan)>,
    /// Where finished spans are exported, if anywhere.
    export: Option<OtlpExporter>,
}

/// One event's open publish span.
#[derive(Debug)]
struct OpenSpan {
    span: Span,
    parent: TraceParent,
    span_id: [u8; 8],
    start: SystemTime,
    attributes: Vec<(&'static str, String)>,
}

impl PublishSpans {
    /// Opens a span for each event of `batch` with a valid `traceparent`; finished spans go to
    /// `export` too, when set.
    pub fn open(publisher: &str, batch: &[OutboxEvent], export: Option<&OtlpExporter>) -> Self {
        let spans =
            batch.iter().enumerate().filter_map(|(index, event)| Some((index, open_span(publisher, event)?))).collect();
        Self { spans, export: export.cloned() }
    }

    /// Records each event's outcome (`attempts` in batch order) and closes the spans.
    pub fn close(self, attempts: &[Attempt]) {
        let end = SystemTime::now();
        for (index, open) in self.spans {
            let attempt = attempts.get(index);
            let outcome = match attempt {
                Some(Attempt::Done(Ok(()))) => "published",
                Some(Attempt::Done(Err(PublishError::Transient(_)))) => "transient error",
                Some(Attempt::Done(Err(PublishError::Permanent(_)))) => "permanent error",
                Some(Attempt::Done(Err(PublishError::Trapped(_)))) => "trapped",
                Some(Attempt::NotAttempted) | None => "not attempted",
            };
            open.span.record("outcome", outcome);
            tracing::debug!(target: TARGET, parent: &open.span, outcome, "event handed to its publisher");
            if let Some(export) = &self.export {
                let error = match attempt {
                    Some(Attempt::Done(Err(err))) => Some(err.to_string().chars().take(1000).collect()),
                    _ => None,
                };
                let mut attributes = open.attributes;
                attributes.push(("broadcaster.outcome", outcome.to_string()));
                export.export(FinishedSpan {
                    trace_id: open.parent.trace_id,
                    parent_span_id: open.parent.parent_id,
                    span_id: open.span_id,
                    name: "publish",
                    start: open.start,
                    end,
                    attributes,
                    error,
                });
            }
        }
    }
}

/// A new span id: 8 random bytes, not all zero.
fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

fn open_span(publisher: &str, event: &OutboxEvent) -> Option<OpenSpan> {
    let span = publish_span(publisher, event)?;
    let parent = TraceParent::of(&event.extensions)?;
    let span_id = new_span_id();
    span.record("span_id", span_id.iter().map(|b| format!("{b:02x}")).collect::<String>());
    Some(OpenSpan {
        span,
        parent,
        span_id,
        start: SystemTime::now(),
        attributes: vec![
            ("broadcaster.publisher", publisher.to_string()),
            ("cloudevents.event_id", event.id.clone()),
            ("cloudevents.event_type", event.event_type.clone()),
            ("cloudevents.event_source", event.source.clone()),
        ],
    })
}

/// The publish span of one event, when it carries a valid `traceparent`.
pub fn publish_span(publisher: &str, event: &OutboxEvent) -> Option<Span> {
    let parent = TraceParent::of(&event.extensions)?;
    let span = tracing::info_span!(
        target: TARGET,
        "publish",
        publisher,
        event_id = %event.id,
        event_type = %event.event_type,
        trace_id = %parent.trace_id_hex(),
        parent_span_id = %parent.parent_id_hex(),
        span_id = Empty,
        outcome = Empty,
    );
    Some(span)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;

    /// Every field of every span opened or recorded, as (span name, field, value).
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<(String, String, String)>>>);

    struct Collect<'a>(&'a Fields, &'static str);

    impl Visit for Collect<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.0.lock().unwrap().push((self.1.into(), field.name().into(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.0.lock().unwrap().push((self.1.into(), field.name().into(), value.into()));
        }
    }

    impl<S: tracing::Subscriber + for<'l> tracing_subscriber::registry::LookupSpan<'l>> tracing_subscriber::Layer<S>
        for Fields
    {
        fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, _: &tracing::span::Id, _: Context<'_, S>) {
            attrs.record(&mut Collect(self, attrs.metadata().name()));
        }
        fn on_record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>, _: Context<'_, S>) {
            values.record(&mut Collect(self, "record"));
        }
    }

    #[test]
    fn an_event_with_a_traceparent_gets_a_publish_span_carrying_its_trace_and_outcome() {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        let mut traced = OutboxEvent::new("order.created", "/shop");
        traced.extensions =
            vec![("traceparent".into(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into())];
        let plain = OutboxEvent::new("order.created", "/shop");
        tracing::subscriber::with_default(subscriber, || {
            let spans = PublishSpans::open("default", &[plain, traced.clone()], None);
            assert_eq!(spans.spans.len(), 1, "only the event with a trace context gets a span");
            assert_eq!(spans.spans[0].0, 1);
            spans.close(&[Attempt::Done(Ok(())), Attempt::Done(Ok(()))]);
        });
        let seen = fields.0.lock().unwrap().clone();
        let value = |name: &str| seen.iter().find(|(_, f, _)| f == name).map(|(_, _, v)| v.clone());
        assert_eq!(value("trace_id").as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(value("parent_span_id").as_deref(), Some("b7ad6b7169203331"));
        assert_eq!(value("event_id"), Some(traced.id.clone()));
        assert_eq!(value("publisher").as_deref(), Some("default"));
        assert_eq!(value("outcome").as_deref(), Some("published"));
        assert!(seen.iter().all(|(span, _, _)| span == "publish" || span == "record"), "{seen:?}");
    }

    #[test]
    fn an_invalid_traceparent_opens_no_span() {
        let mut event = OutboxEvent::new("t", "/s");
        event.extensions = vec![("traceparent".into(), "00-nope".into())];
        assert!(PublishSpans::open("p", &[event], None).spans.is_empty());
    }
}
