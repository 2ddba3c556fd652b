//! The `broadcaster:backend/redis-stream` import, bound to one publisher's `redis` grant.

use super::bindings::broadcaster::backend::redis_stream::{Error, Host};
use super::state::PublisherState;
use super::stream_patterns::StreamPatterns;
use crate::stream_client::{StreamCallError, StreamClient};

/// What a publisher may do with Redis: one server (its client, possibly shared with other
/// publishers of the same server) and the streams it may append to.
#[derive(Debug, Clone)]
pub struct RedisCapability {
    /// The granted server.
    pub client: StreamClient,
    /// The granted stream patterns.
    pub streams: StreamPatterns,
}

/// The message a backend sees: what happened, never where (no host, port or password).
fn guest_error(err: StreamCallError) -> Error {
    match err {
        StreamCallError::Unavailable { message, .. } => Error::Unavailable(message),
        StreamCallError::Rejected { message, .. } => Error::Rejected(message),
    }
}

/// Runs a Redis call under `timeout`; a call that takes longer is `unavailable` (the guest's
/// limits do not cover time spent in the host).
async fn bounded<T>(
    timeout: std::time::Duration,
    call: impl Future<Output = Result<T, StreamCallError>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(guest_error),
        Err(_) => Err(Error::Unavailable(format!("no reply within {timeout:?} (limits.host_call_timeout)"))),
    }
}

impl Host for PublisherState {
    async fn xadd(
        &mut self,
        stream: String,
        fields: Vec<(String, String)>,
        max_len: Option<u64>,
    ) -> wasmtime::Result<Result<String, Error>> {
        let bytes = stream.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.budget.charge_host_call(bytes)?;
        let Some(redis) = &self.redis else {
            return Ok(Err(Error::NotGranted));
        };
        if !redis.streams.allows(&stream) {
            tracing::warn!(
                publisher = %self.publisher,
                stream = %stream,
                allowed = ?redis.streams.as_slice(),
                "refused XADD to a stream outside the grant"
            );
            return Ok(Err(Error::StreamDenied(stream)));
        }
        if fields.is_empty() {
            return Ok(Err(Error::Rejected("an entry needs at least one field".into())));
        }
        let client = redis.client.clone();
        Ok(bounded(self.host_call_timeout(), client.xadd(&stream, &fields, max_len)).await)
    }

    async fn ping(&mut self) -> wasmtime::Result<Result<(), Error>> {
        self.budget.charge_host_call(0)?;
        let Some(redis) = &self.redis else {
            return Ok(Err(Error::NotGranted));
        };
        let client = redis.client.clone();
        Ok(bounded(self.host_call_timeout(), client.ping()).await)
    }
}
