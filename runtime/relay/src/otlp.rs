//! Export of the relay's publish spans over OpenTelemetry OTLP/HTTP (the JSON encoding, to
//! `<endpoint>/v1/traces`), when `[telemetry] otlp_endpoint` is set; off by default.
//!
//! Each span is the publish of one event that carried a `traceparent`
//! ([`crate::trace_context`]): its trace id and parent are the caller's, so a collector shows
//! the relay's publish inside the trace the tenant started in its own application. Kind
//! `PRODUCER`; attributes `cloudevents.event_id`, `cloudevents.event_type`,
//! `cloudevents.event_source`, `broadcaster.publisher`, `broadcaster.outcome`; status error
//! for an event that failed.
//!
//! Spans are queued (at most [`QUEUE`]; beyond that they are dropped and counted, never
//! waited for: the relay does not slow down for a collector) and sent in batches of up to
//! [`BATCH`] at least every [`FLUSH_EVERY`]; a collector that does not answer within
//! [`SEND_TIMEOUT`] or refuses a batch loses that batch, said in the log at most once a minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// Most spans waiting to be sent.
pub const QUEUE: usize = 8192;
/// Most spans in one request.
pub const BATCH: usize = 512;
/// The longest a span waits to be sent.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long the collector has to answer one request.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A finished publish span.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    /// The caller's trace id.
    pub trace_id: [u8; 16],
    /// The caller's span: this span's parent.
    pub parent_span_id: [u8; 8],
    /// This span's own id.
    pub span_id: [u8; 8],
    /// The span's name.
    pub name: &'static str,
    /// When it started and ended.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// String attributes.
    pub attributes: Vec<(&'static str, String)>,
    /// An error message when the publish failed.
    pub error: Option<String>,
}

enum Message {
    Span(Box<FinishedSpan>),
    Flush(oneshot::Sender<()>),
}

/// The exporter: a queue and the task that sends it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OtlpExporter {
    queue: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Span(_) => "Span",
            Message::Flush(_) => "Flush",
        })
    }
}

/// Why the exporter cannot be set up (bad configuration).
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint {endpoint:?}: {reason}")]
pub struct EndpointError {
    /// The endpoint as configured.
    pub endpoint: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The traces URL of an OTLP/HTTP `endpoint` (`http://host:4318` → `http://host:4318/v1/traces`).
pub fn traces_url(endpoint: &str) -> Result<http::Uri, EndpointError> {
    let error = |reason: &str| EndpointError { endpoint: endpoint.to_string(), reason: reason.to_string() };
    let uri: http::Uri = endpoint.parse().map_err(|_| error("not a URL like \"http://127.0.0.1:4318\""))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(error(
                "https is not supported: send to a collector on this host or network over http (an OpenTelemetry \
                 Collector sidecar forwards over TLS)",
            ));
        }
        _ => return Err(error("not a URL like \"http://127.0.0.1:4318\"")),
    }
    if uri.host().is_none() {
        return Err(error("no host"));
    }
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") };
    url.parse().map_err(|_| error("not a URL like \"http://127.0.0.1:4318\""))
}

impl OtlpExporter {
    /// Starts the exporter sending to `endpoint` (see [`traces_url`]) as `service_name`.
    pub fn start(endpoint: &str, service_name: &str) -> Result<Self, EndpointError> {
        let url = traces_url(endpoint)?;
        let (queue, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let sender = Sender {
            url,
            service_name: service_name.to_string(),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
            last_warning: None,
        };
        tokio::spawn(sender.run(receiver, dropped.clone()));
        Ok(Self { queue, dropped })
    }

    /// Queues `span`; drops it (counted) when the queue is full.
    pub fn export(&self, span: FinishedSpan) {
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends what is queued now and waits for it (at most [`SEND_TIMEOUT`] and a little).
    pub async fn flush(&self) {
        let (done, sent) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(SEND_TIMEOUT + Duration::from_secs(1), sent).await;
        }
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Sender {
    url: http::Uri,
    service_name: String,
    client: Client<HttpConnector, Full<Bytes>>,
    last_warning: Option<std::time::Instant>,
}

impl Sender {
    async fn run(mut self, mut receiver: mpsc::Receiver<Message>, dropped: Arc<AtomicU64>) {
        let mut batch: Vec<FinishedSpan> = Vec::new();
        let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let first = if batch.is_empty() { receiver.recv().await } else { None };
            let mut closed = false;
            match first {
                Some(Message::Span(span)) => batch.push(*span),
                Some(Message::Flush(done)) => flushed.push(done),
                None if batch.is_empty() => closed = true,
                None => {}
            }
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while !closed && batch.len() < BATCH && flushed.is_empty() {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(Message::Span(span))) => batch.push(*span),
                    Ok(Some(Message::Flush(done))) => flushed.push(done),
                    Ok(None) => closed = true,
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let spans = std::mem::take(&mut batch);
                self.send(&spans, dropped.swap(0, Ordering::Relaxed)).await;
            }
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }

    async fn send(&mut self, spans: &[FinishedSpan], dropped: u64) {
        let body = Bytes::from(request_body(&self.service_name, spans).to_string());
        let request = hyper::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a valid request");
        let outcome = match tokio::time::timeout(SEND_TIMEOUT, self.client.request(request)).await {
            Err(_) => Err(format!("no answer within {SEND_TIMEOUT:?}")),
            Ok(Err(err)) => Err(err.to_string()),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => {
                let status = response.status();
                let body = tokio::time::timeout(SEND_TIMEOUT, response.into_body().collect()).await;
                let text = match body {
                    Ok(Ok(body)) => {
                        let bytes = body.to_bytes();
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
                    }
                    _ => String::new(),
                };
                Err(format!("{status}: {text}"))
            }
        };
        let warn_again = self.last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if let Err(err) = outcome
            && warn_again
        {
            self.last_warning = Some(std::time::Instant::now());
            tracing::warn!(url = %self.url, %err, spans = spans.len(), "OTLP export failed; these spans are lost");
        }
        if dropped > 0 && warn_again {
            tracing::warn!(dropped, "OTLP export queue full: spans dropped (the collector is slower than the relay)");
        }
    }
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans` (ids in hex, times as strings of
/// nanoseconds, as OTLP/JSON has them).
pub fn request_body(service_name: &str, spans: &[FinishedSpan]) -> Value {
    let nanos = |at: SystemTime| at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string();
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let attributes: Vec<Value> = span
                .attributes
                .iter()
                .map(|(key, value)| json!({ "key": key, "value": { "stringValue": value } }))
                .collect();
            let status = match &span.error {
                None => json!({ "code": 1 }),
                Some(message) => json!({ "code": 2, "message": message }),
            };
            json!({
                "traceId": hex(&span.trace_id),
                "spanId": hex(&span.span_id),
                "parentSpanId": hex(&span.parent_span_id),
                "name": span.name,
                "kind": 4,
                "startTimeUnixNano": nanos(span.start),
                "endTimeUnixNano": nanos(span.end),
                "attributes": attributes,
                "status": status,
            })
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": service_name } }] },
            "scopeSpans": [{ "scope": { "name": "broadcaster", "version": env!("CARGO_PKG_VERSION") }, "spans": spans }],
        }]
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_the_endpoint_with_v1_traces_and_https_is_refused_with_the_reason() {
        assert_eq!(traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://collector:4318/").unwrap(), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces").unwrap(), "http://c:4318/v1/traces");
        assert!(traces_url("https://c:4318").unwrap_err().to_string().contains("https is not supported"));
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("").is_err());
    }

    #[test]
    fn a_span_is_encoded_as_otlp_json_with_hex_ids_and_nanosecond_strings() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let span = FinishedSpan {
            trace_id: [0x0a; 16],
            parent_span_id: [0xb7; 8],
            span_id: [0x01; 8],
            name: "publish",
            start,
            end: start + Duration::from_millis(2),
            attributes: vec![("cloudevents.event_id", "e1".into())],
            error: Some("permanent error: no".into()),
        };
        let body = request_body("relay-a", &[span]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "0a".repeat(16));
        assert_eq!(span["parentSpanId"], "b7".repeat(8));
        assert_eq!(span["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(span["endTimeUnixNano"], "1700000000125456789");
        assert_eq!(span["kind"], 4);
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "e1");
        assert_eq!(body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "relay-a");
    }
}
