//! A publisher's share of the work: its batch claimed (leased, or held in a transaction), then
//! published and settled on its own task, in order after the publisher's batch before it.

use std::sync::Arc;
use std::time::Instant;

use super::{BatchReport, Relay};
use crate::publisher::Publisher;
use crate::registry::PublisherRegistry;
use broadcaster_core::routing::stored_names;
use broadcaster_outbox::{Claim, ClaimedEvent, HeldClaim, Settlement, StoreError};

/// A share's place in its publisher's order: told whether the batch before it was published,
/// all of it (`None`: none is in flight), and telling the one after it the same of its own.
pub(super) struct ShareOrder {
    pub(super) after: Option<tokio::sync::oneshot::Receiver<bool>>,
    pub(super) done: tokio::sync::oneshot::Sender<bool>,
}

/// A publisher's claimed batch: leased (rows `processing`, fenced by the claim token) or held
/// (rows locked by an open transaction).
#[derive(Debug)]
pub(super) enum Share {
    Leased(Claim),
    /// With a component's permit ([`COMPONENT_HELD_CLAIMS`](super::COMPONENT_HELD_CLAIMS)),
    /// given back when the share ends.
    Held(Box<dyn HeldClaim>, Option<tokio::sync::OwnedSemaphorePermit>),
}

impl Share {
    pub(super) fn claim(&self) -> &Claim {
        match self {
            Share::Leased(claim) => claim,
            Share::Held(held, _) => held.claim(),
        }
    }
}

/// What a publisher's share of a batch came to: its publisher, and its counts or the
/// database error that kept its outcome from being recorded.
pub(super) type ShareOutcome = (String, Result<BatchReport, StoreError>);

impl Relay {
    /// Claims a batch of `name`'s due events: held in a transaction for a publisher that
    /// answers fast, when the database can ([`OutboxBackend::claim_held`](broadcaster_outbox::OutboxBackend::claim_held)), a lease
    /// otherwise.
    pub(super) async fn claim_share(
        &self,
        registry: &PublisherRegistry,
        name: &str,
        batch_size: u32,
    ) -> Result<Share, StoreError> {
        let now = self.clock.now();
        let held = match registry.get(name) {
            Ok(Publisher::RedisStream(_)) => Some(None),
            // A component that answers fast may turn slow in its next call, holding its
            // transaction (and a connection) up to its deadline: components together hold at
            // most COMPONENT_HELD_CLAIMS, so two such tenants cannot take every held claim.
            Ok(component) if component.answers_fast() => self.component_held.clone().try_acquire_owned().ok().map(Some),
            _ => None,
        };
        if let Some(permit) = held
            && let Some(held) = self.store.claim_held(now, batch_size, stored_names(name)).await?
        {
            return Ok(Share::Held(held, permit));
        }
        Ok(Share::Leased(self.store.claim_for(now, batch_size, stored_names(name)).await?))
    }

    /// Publishes and settles one publisher's share: the body of its task. With a gate in
    /// `order` (the batch before it is in flight), it publishes once that batch was published,
    /// all of it, and releases its events unpublished otherwise; it tells `order.done` whether
    /// it published all of its own.
    pub(super) async fn relay_share(
        self: Arc<Self>,
        registry: Arc<PublisherRegistry>,
        name: String,
        share: Share,
        order: ShareOrder,
    ) -> ShareOutcome {
        let ShareOrder { after: gate, done } = order;
        let started = Instant::now();
        let refs: Vec<&ClaimedEvent> = share.claim().events.iter().collect();
        let in_order = match gate {
            // A sender dropped unsent is a batch whose task failed.
            Some(gate) => gate.await.unwrap_or(false),
            None => true,
        };
        let settlements = if in_order {
            self.publish_group(&registry, &name, &refs).await
        } else {
            refs.iter().map(|e| (e.event.id.clone(), Settlement::Release)).collect()
        };
        let _ = done.send(settlements.iter().all(|(_, s)| *s != Settlement::Release));
        let result = match share {
            Share::Leased(claim) => self.settle(claim.token, &settlements).await,
            Share::Held(held, _permit) => self.finish_held(held, &settlements).await,
        };
        if let Ok(share) = &result {
            let label = if registry.contains(&name) { name.as_str() } else { crate::metrics::UNKNOWN_PUBLISHER };
            self.metrics.record_share(label, share.published, share.retried, share.failed, share.released);
            tracing::info!(
                publisher = %name,
                published = share.published,
                retried = share.retried,
                failed = share.failed,
                waiting = share.released,
                took = ?started.elapsed(),
                "relayed"
            );
        }
        (name, result)
    }
}
