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

impl Host for PublisherState {
    async fn xadd(
        &mut self,
        stream: String,
        fields: Vec<(String, String)>,
        max_len: Option<u64>,
    ) -> Result<String, Error> {
        let Some(redis) = &self.redis else {
            return Err(Error::NotGranted);
        };
        if !redis.streams.allows(&stream) {
            tracing::warn!(
                publisher = %self.publisher,
                stream = %stream,
                allowed = ?redis.streams.as_slice(),
                "refused XADD to a stream outside the grant"
            );
            return Err(Error::StreamDenied(stream));
        }
        if fields.is_empty() {
            return Err(Error::Rejected("an entry needs at least one field".into()));
        }
        redis.client.xadd(&stream, &fields, max_len).await.map_err(guest_error)
    }

    async fn ping(&mut self) -> Result<(), Error> {
        let Some(redis) = &self.redis else {
            return Err(Error::NotGranted);
        };
        redis.client.ping().await.map_err(guest_error)
    }
}
