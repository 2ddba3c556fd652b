//! Publishers: where events go. A publisher is the native Redis Stream backend or a
//! WebAssembly component; both answer the seed's two questions, "publish this event" and
//! "are you healthy".

pub use broadcaster_redis::native as redis_stream;

use std::sync::Arc;

use broadcaster_core::event::OutboxEvent;
pub use broadcaster_core::outcome::{Attempt, Health, PublishError};
use broadcaster_host::ComponentPublisher;

pub use redis_stream::{RedisStreamOptions, RedisStreamPublisher};

/// One named publisher.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// The native Redis Stream backend.
    RedisStream(Arc<RedisStreamPublisher>),
    /// A WebAssembly component.
    Component(Arc<ComponentPublisher>),
}

// The native backend's futures are boxed where they are awaited: a Redis Cluster or Sentinel
// connection's futures nest deep, and would otherwise nest into every caller's (the relay's,
// a test's) past rustc's layout depth limit.
impl Publisher {
    /// Publishes one event.
    pub async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        match self {
            Self::RedisStream(p) => Box::pin(p.publish(event)).await,
            Self::Component(p) => p.publish_one(event.clone()).await,
        }
    }

    /// Publishes several events, in order, in as few round trips as the backend allows
    /// (one pipeline for the native backend). One outcome per event, in the same order.
    ///
    /// A component built against contract 0.2.0 is called once for the batch
    /// (`publish-batch`), one built against 0.1.0 once per event; either stops at the first
    /// transient error or trap: the events after it are [`Attempt::NotAttempted`], so they
    /// keep their order and their retries.
    pub async fn publish_batch(&self, events: &[OutboxEvent]) -> Vec<Attempt> {
        match self {
            Self::RedisStream(p) => Box::pin(p.publish_batch(events)).await.into_iter().map(Attempt::Done).collect(),
            Self::Component(p) => p
                .publish_all(events.to_vec())
                .await
                .into_iter()
                .map(|outcome| outcome.map_or(Attempt::NotAttempted, Attempt::Done))
                .collect(),
        }
    }

    /// Checks whether the publisher can publish now (making a component's instance if it
    /// has none).
    pub async fn health(&self) -> Health {
        match self {
            Self::RedisStream(p) => Box::pin(p.health()).await,
            Self::Component(p) => p.check_health().await,
        }
    }

    /// [`Self::health`], except that an idle component publisher (no instance, last call
    /// returned) is reported idle without being called or instantiated: what the relay's
    /// health monitor asks, so that idle tenants cost nothing.
    pub async fn health_unless_idle(&self) -> Health {
        if let Self::Component(p) = self
            && let Some(idle) = p.idle_health()
        {
            return idle;
        }
        self.health().await
    }

    /// Whether it is a component publisher with no instance now and nothing to recover from.
    pub fn is_idle(&self) -> bool {
        matches!(self, Self::Component(p) if p.is_idle())
    }

    /// Stops taking calls (the relay is shutting down); see
    /// [`ComponentPublisher::stop`]. The native backend finishes its pipeline.
    pub fn stop(&self) {
        if let Self::Component(p) = self {
            p.stop();
        }
    }

    /// Which publisher this is: two handles of the same publisher have the same identity, a
    /// publisher built again (a reload) another one.
    pub fn identity(&self) -> usize {
        match self {
            Self::RedisStream(p) => Arc::as_ptr(p) as *const () as usize,
            Self::Component(p) => Arc::as_ptr(p) as *const () as usize,
        }
    }

    /// Whether anything besides this handle still holds the publisher (a share in flight after
    /// a reload replaced it).
    pub fn is_shared(&self) -> bool {
        match self {
            Self::RedisStream(p) => Arc::strong_count(p) > 1,
            Self::Component(p) => Arc::strong_count(p) > 1,
        }
    }

    /// The longest one call can take, host time included.
    pub fn longest_call(&self) -> std::time::Duration {
        match self {
            Self::RedisStream(p) => p.longest_call(),
            Self::Component(p) => p.longest_call(),
        }
    }

    /// Whether its calls are short enough to publish a batch inside the database transaction
    /// that claimed it ([`OutboxBackend::claim_held`](broadcaster_outbox::OutboxBackend::claim_held))
    /// and to have the next batch claimed while one publishes: the native backend's pipelined
    /// round trip always; a component when its latest batch was published whole within
    /// [`FAST_BATCH`](broadcaster_host::FAST_BATCH) ([`ComponentPublisher::answers_fast`]). A
    /// component's call may take up to its deadline, so a slow or failing one's batches are
    /// leased, one at a time.
    pub fn answers_fast(&self) -> bool {
        match self {
            Self::RedisStream(_) => true,
            Self::Component(p) => p.answers_fast(),
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
