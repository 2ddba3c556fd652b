//! What a `/metrics` scrape copies into [`Metrics`] from where the values live: each
//! configured publisher's health (the [`HealthBoard`]), its guest's counters and the engine's
//! live instances (the [`PublisherRegistry`]). Metrics take plain values; this is where the
//! relay's own types are read for them, so that `metrics` needs none of them.

use crate::health::HealthBoard;
use crate::metrics::{LiveSample, Metrics, PublisherSample};
use crate::publisher::Publisher;
use crate::registry::PublisherRegistry;

/// Copies each publisher of `registry` into `metrics`: its health as `health` last saw it,
/// its guest's counters, and the live instances of their engine.
pub fn refresh_publishers(metrics: &Metrics, registry: &PublisherRegistry, health: &HealthBoard) {
    let live = registry.live_instances().map(|live| LiveSample {
        instances: live.live(),
        memory_bytes: live.memory_bytes(),
        evictions: live.evictions(),
    });
    let publishers = registry.iter().map(|(name, publisher)| PublisherSample {
        name,
        build: publisher.identity(),
        healthy: !health.is_down(name),
        guest: match publisher {
            Publisher::Component(component) => Some(component.counters()),
            Publisher::RedisStream(_) => None,
        },
    });
    metrics.refresh_publishers(live, publishers);
}
