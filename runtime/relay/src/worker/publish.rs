//! Publishing a claimed batch: each publisher's events through it, its health checked again
//! after a transient failure, and each event's settlement decided (published, retried with
//! backoff, failed, or released to wait); and [`Relay::run_batch`], the step-by-step form of
//! the loop.

use std::time::Instant;

use super::{BatchReport, Relay};
use crate::registry::PublisherRegistry;
use broadcaster_core::outcome::{Attempt, PublishError};
use broadcaster_core::routing::{publisher_for, stored_names};
use broadcaster_outbox::{ClaimedEvent, RejectedRow, Settlement, StoreError};

impl Relay {
    /// Claims one batch, publishes every publisher's share at once, and settles every row
    /// (waiting for all of them: the step-by-step form of [`Relay::run`], for tests and tools).
    pub async fn run_batch(&self, batch_size: u32) -> Result<BatchReport, StoreError> {
        let registry = self.registry();
        let mut skip = self.health.skip_list();
        for name in self.retired() {
            if !registry.contains(&name) {
                skip.extend(stored_names(&name).map(str::to_string));
            }
        }
        let claim = self.store.claim(self.clock.now(), batch_size, &skip).await?;
        let failed = log_rejected(&claim.rejected);
        let mut report = BatchReport { claimed: failed, failed, ..BatchReport::default() };
        if claim.events.is_empty() {
            return Ok(report);
        }
        let groups = group_by_publisher(claim.events);
        let outcomes = futures::future::join_all(groups.iter().map(|(name, events)| {
            let refs: Vec<&ClaimedEvent> = events.iter().collect();
            let registry = &registry;
            async move { self.publish_group(registry, name, &refs).await }
        }))
        .await;
        let settlements: Vec<(String, Settlement)> = outcomes.into_iter().flatten().collect();
        report.add(&self.settle(claim.token, &settlements).await?);
        Ok(report)
    }

    /// Publishes `events` (all of them `name`'s) through publisher `name` and decides each
    /// one's settlement: failed when no publisher has the name, released while it is down,
    /// and otherwise by its attempt (a transient failure retried with backoff until its
    /// retries are used up).
    pub(super) async fn publish_group(
        &self,
        registry: &PublisherRegistry,
        name: &str,
        events: &[&ClaimedEvent],
    ) -> Vec<(String, Settlement)> {
        let settle_all = |settlement: &dyn Fn(&ClaimedEvent) -> Settlement| {
            events.iter().map(|e| (e.event.id.clone(), settlement(e))).collect::<Vec<_>>()
        };
        let publisher = match registry.get(name) {
            Ok(publisher) => publisher,
            Err(unknown) => {
                let error = unknown.to_string();
                return settle_all(&|e| Settlement::Failed { retry_count: e.event.retry_count, error: error.clone() });
            }
        };
        if self.health.is_down(name) {
            return settle_all(&|_| Settlement::Release);
        }
        let batch: Vec<_> = events.iter().map(|e| e.event.clone()).collect();
        let spans = crate::trace_context::PublishSpans::open(name, &batch, self.span_export.as_ref());
        let started = Instant::now();
        let mut attempts = publisher.publish_batch(&batch).await;
        self.metrics.observe_publish(name, started.elapsed());
        // A transient failure may be the publisher going down: check it now. If it is down,
        // its events wait (no retry spent); if not, the failure was the event's own, and the
        // events after it (not attempted, to keep their order) are published now.
        let mut down = false;
        while attempts
            .iter()
            .any(|a| matches!(a, Attempt::Done(Err(PublishError::Transient(_) | PublishError::Trapped(_)))))
        {
            let health = publisher.health().await;
            down = !health.healthy;
            self.health.record(name, health);
            let rest: Vec<usize> = (0..attempts.len()).filter(|i| attempts[*i] == Attempt::NotAttempted).collect();
            if down || rest.is_empty() {
                break;
            }
            let retry: Vec<_> = rest.iter().map(|i| batch[*i].clone()).collect();
            let started = Instant::now();
            let later = publisher.publish_batch(&retry).await;
            self.metrics.observe_publish(name, started.elapsed());
            let before = attempts.clone();
            for (i, attempt) in rest.into_iter().zip(later) {
                attempts[i] = attempt;
            }
            if attempts == before {
                break;
            }
        }
        spans.close(&attempts);
        let now = self.clock.now();
        let published = events.iter().zip(&attempts).filter(|(_, a)| **a == Attempt::Done(Ok(())));
        self.metrics.observe_published(name, published.map(|(e, _)| e.scheduled_at), now);
        let mut rng = self.rng.lock().expect("rng lock");
        events
            .iter()
            .zip(attempts)
            .map(|(claimed, attempt)| {
                let event = &claimed.event;
                let settlement = match attempt {
                    Attempt::Done(Ok(())) => Settlement::Published,
                    Attempt::Done(Err(err @ PublishError::Permanent(_))) => {
                        Settlement::Failed { retry_count: event.retry_count, error: err.to_string() }
                    }
                    Attempt::Done(Err(PublishError::Transient(_))) | Attempt::NotAttempted if down => {
                        Settlement::Release
                    }
                    Attempt::NotAttempted => Settlement::Release,
                    // A trap is the event's own failure: it spends an attempt even when the
                    // publisher now reports itself degraded.
                    Attempt::Done(Err(err @ (PublishError::Transient(_) | PublishError::Trapped(_)))) => {
                        let failures = event.retry_count + 1;
                        if failures >= event.max_retries {
                            Settlement::Failed {
                                retry_count: failures,
                                error: format!("{err} (gave up after {failures} attempts)"),
                            }
                        } else {
                            let delay = self.backoff.delay(failures, &mut *rng);
                            let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                            Settlement::Retry {
                                retry_count: failures,
                                at: broadcaster_core::event::truncate_to_micros(at),
                                error: err.to_string(),
                            }
                        }
                    }
                };
                (event.id.clone(), settlement)
            })
            .collect()
    }
}

/// Splits claimed events by publisher name (`default` for an empty one), keeping due order.
fn group_by_publisher(events: Vec<ClaimedEvent>) -> Vec<(String, Vec<ClaimedEvent>)> {
    let mut groups: Vec<(String, Vec<ClaimedEvent>)> = Vec::new();
    for claimed in events {
        let name = publisher_for(&claimed.event.publisher_backend);
        match groups.iter_mut().find(|(n, _)| n == name) {
            Some((_, events)) => events.push(claimed),
            None => groups.push((name.to_string(), vec![claimed])),
        }
    }
    groups
}

/// Logs the rows a claim could not read (the store has marked them `failed`); returns how
/// many.
pub(super) fn log_rejected(rows: &[RejectedRow]) -> u64 {
    for row in rows {
        tracing::warn!(
            id = %row.id,
            publisher = %row.publisher_backend,
            error = %row.error,
            "an outbox row cannot be read; marked failed, the rest of its batch goes on"
        );
    }
    rows.len() as u64
}
