//! Publishers: where events go. A publisher is the native Redis Stream backend or a
//! WebAssembly component; both answer the seed's two questions, "publish this event" and
//! "are you healthy".

pub mod redis_stream;

use std::sync::Arc;

use crate::event::OutboxEvent;
use crate::host::ComponentPublisher;

pub use redis_stream::{RedisStreamOptions, RedisStreamPublisher};

/// Why an event was not published. The relay retries a transient error with backoff and
/// fails the event at once on a permanent one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The destination is unreachable, busy, or timed out; try again later.
    #[error("transient: {0}")]
    Transient(String),
    /// The event can never be published by this publisher.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The backend trapped (a panic, a limit hit, a missed deadline) while publishing this
    /// event; its instance was replaced. Counts as a failed attempt, like a transient error,
    /// but the event is not held back when the publisher then reports itself degraded.
    #[error("trapped: {0} (instance recycled)")]
    Trapped(String),
}

impl PublishError {
    /// Whether a retry can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Trapped(_))
    }

    /// The message without its kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient(m) | Self::Permanent(m) | Self::Trapped(m) => m,
        }
    }
}

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// It was tried: published, or refused.
    Done(Result<(), PublishError>),
    /// It was not tried (an earlier event of the batch failed transiently).
    NotAttempted,
}

/// A publisher's answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether it can publish now.
    pub healthy: bool,
    /// Why not, or what it is connected to. Never contains a secret.
    pub detail: String,
}

impl Health {
    /// Healthy, with a note.
    pub fn up(detail: impl Into<String>) -> Self {
        Self { healthy: true, detail: detail.into() }
    }

    /// Unhealthy, with the reason.
    pub fn down(detail: impl Into<String>) -> Self {
        Self { healthy: false, detail: detail.into() }
    }
}

/// One named publisher.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// The native Redis Stream backend.
    RedisStream(Arc<RedisStreamPublisher>),
    /// A WebAssembly component.
    Component(Arc<ComponentPublisher>),
}

impl Publisher {
    /// Publishes one event.
    pub async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        match self {
            Self::RedisStream(p) => p.publish(event).await,
            Self::Component(p) => {
                let mut outcomes = p.publish_all(vec![event.clone()]).await;
                outcomes.pop().flatten().unwrap_or_else(|| Err(PublishError::Transient("not attempted".into())))
            }
        }
    }

    /// Publishes several events, in order, in as few round trips as the backend allows
    /// (one pipeline for the native backend). One outcome per event, in the same order.
    ///
    /// A component is called once per event and stops at the first transient error or trap: the
    /// events after it are [`Attempt::NotAttempted`], so they keep their order and their
    /// retries.
    pub async fn publish_batch(&self, events: &[OutboxEvent]) -> Vec<Attempt> {
        match self {
            Self::RedisStream(p) => p.publish_batch(events).await.into_iter().map(Attempt::Done).collect(),
            Self::Component(p) => p
                .publish_all(events.to_vec())
                .await
                .into_iter()
                .map(|outcome| outcome.map_or(Attempt::NotAttempted, Attempt::Done))
                .collect(),
        }
    }

    /// Checks whether the publisher can publish now.
    pub async fn health(&self) -> Health {
        match self {
            Self::RedisStream(p) => p.health().await,
            Self::Component(p) => p.check_health().await,
        }
    }

    /// What kind of publisher this is, for people: `redis-stream` or the component file.
    pub fn kind(&self) -> String {
        match self {
            Self::RedisStream(_) => "redis-stream (native)".to_string(),
            Self::Component(p) => format!("component {}", p.component_name()),
        }
    }
}
