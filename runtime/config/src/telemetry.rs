//! `[telemetry]`: where the relay's publish spans go (see `broadcaster_relay::otlp`).

use serde::Deserialize;

/// `[telemetry]` settings; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OpenTelemetry collector's OTLP/HTTP endpoint (`"http://127.0.0.1:4318"`): the
    /// publish spans of events that carry a `traceparent` are sent to `<endpoint>/v1/traces`.
    /// Default: none (no export).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans are reported under. Default `"broadcaster"`.
    #[serde(default)]
    pub service_name: Option<String>,
}

impl TelemetryConfig {
    /// The service name, defaulted.
    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or("broadcaster")
    }
}
