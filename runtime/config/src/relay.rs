//! `[relay]`: how the worker claims, retries and checks health.

use std::time::Duration;

use serde::Deserialize;

use super::Seconds;

/// `[relay]`: the worker's settings. `broadcaster run` flags override the first two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Most events claimed at once. Default 100.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// How long to wait when nothing more is due. Default 5 s.
    #[serde(default = "default_interval")]
    pub interval: Seconds,
    /// How long a claim lasts: a row still `processing` this long after its claim is taken
    /// back (its worker died). Longer than the slowest batch. Default 5 min.
    #[serde(default = "default_lease_timeout")]
    pub lease_timeout: Seconds,
    /// How often every publisher's health is checked. Default 5 s.
    #[serde(default = "default_interval")]
    pub health_interval: Seconds,
    /// Backoff unit: after the n-th transient failure an event waits `retry_base × 2^n`
    /// (capped). Default 1 min: the seed's 2, 4, 8… minutes.
    #[serde(default = "default_retry_base")]
    pub retry_base: Seconds,
    /// The longest backoff. Default 1 h.
    #[serde(default = "default_retry_cap")]
    pub retry_cap: Seconds,
    /// The fraction of each backoff taken off at random (0 to 1). Default 0.2.
    #[serde(default = "default_retry_jitter")]
    pub retry_jitter: f64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            interval: default_interval(),
            lease_timeout: default_lease_timeout(),
            health_interval: default_interval(),
            retry_base: default_retry_base(),
            retry_cap: default_retry_cap(),
            retry_jitter: default_retry_jitter(),
        }
    }
}

fn default_batch_size() -> u32 {
    100
}
fn default_interval() -> Seconds {
    Seconds(Duration::from_secs(5))
}
fn default_lease_timeout() -> Seconds {
    Seconds(Duration::from_secs(300))
}
fn default_retry_base() -> Seconds {
    Seconds(Duration::from_secs(60))
}
fn default_retry_cap() -> Seconds {
    Seconds(Duration::from_secs(3600))
}
fn default_retry_jitter() -> f64 {
    0.2
}
