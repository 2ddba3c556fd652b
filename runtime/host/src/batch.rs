//! A batch for a 0.2.0 backend: one `publish-batch` call, its results checked against the
//! contract before the relay acts on them.
//!
//! - The call's deadline is `limits.call_timeout` per event, at most `limits.batch_timeout`
//!   (and at least `call_timeout`); its budgets are the per-call ones times the events.
//! - Result `i` is event `i`'s. A shorter list leaves the rest not attempted; results after the
//!   first transient error are not trusted (those events are not attempted, so a batch keeps
//!   its order as a per-event loop would); a longer list is a broken backend, handled as a
//!   trap (the instance is replaced and the breaker opens).
//! - A trap fails the first event (an attempt spent) and leaves the rest not attempted; during
//!   a stop, even the first goes back to waiting.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::instance::{CallOutcome, LiveInstance};
use super::publisher::ComponentPublisher;
use super::wit_event::to_wit;
use broadcaster_core::event::OutboxEvent;
use broadcaster_core::outcome::PublishError;

/// What the relay is told for each event of a batch: `None` when it was not attempted.
pub type BatchOutcomes = Vec<Option<Result<(), PublishError>>>;

impl ComponentPublisher {
    /// The deadline of a `publish-batch` call of `events` events, and the limit that sets it.
    pub fn batch_deadline(&self, events: usize) -> (Duration, &'static str) {
        let settings = &self.settings;
        let scaled = settings.call_timeout.saturating_mul(u32::try_from(events.max(1)).unwrap_or(u32::MAX));
        if scaled > settings.batch_timeout {
            (settings.batch_timeout.max(settings.call_timeout), "limits.batch_timeout")
        } else {
            (scaled, "limits.call_timeout per event")
        }
    }

    /// Calls the backend's `publish-batch` once for `events` (on the calling thread; see
    /// [`Self::publish_all`]).
    pub(super) async fn publish_batch(&self, events: &[OutboxEvent]) -> BatchOutcomes {
        let count = events.len();
        if count == 0 || self.stopping.load(Ordering::Relaxed) {
            return vec![None; count];
        }
        let wit_events: Vec<_> = events.iter().map(to_wit).collect();
        let mut slot = self.slot.lock().await;
        let limit = self.batch_deadline(count);
        let outcome = self
            .call_for_events(&mut slot, "publish-batch", limit, count, async |live: &mut LiveInstance| {
                live.bindings.call_publish_batch(&mut live.store, &wit_events).await
            })
            .await;
        let first = match outcome {
            Err(why) => Some(Err(PublishError::Transient(why))),
            Ok(CallOutcome::Trapped(cause)) => self.unless_stopping(cause),
            Ok(CallOutcome::Returned(results)) if results.len() > count => {
                let cause = format!(
                    "publish-batch returned {} results for {count} events (a bug in the backend: at most one \
                     result per event); no result of the batch is trusted",
                    results.len()
                );
                if !self.stopping.load(Ordering::Relaxed) {
                    tracing::warn!(publisher = %self.settings.name, %cause, "backend broke the batch contract; instance recycled");
                }
                self.counters.trapped(super::TrapCause::Trap);
                self.record_failure(&mut slot, format!("publish-batch: {cause}"));
                self.unless_stopping(cause)
            }
            Ok(CallOutcome::Returned(results)) => {
                drop(slot);
                self.mark_used();
                return self.trusted(results, count);
            }
        };
        std::iter::once(first).chain(std::iter::repeat_n(None, count - 1)).collect()
    }

    /// A trap's outcome for the first event: an attempt that failed, unless the publisher is
    /// stopping (then the call was likely cut by the stop, and the event goes back to waiting).
    fn unless_stopping(&self, cause: String) -> Option<Result<(), PublishError>> {
        (!self.stopping.load(Ordering::Relaxed)).then_some(Err(PublishError::Trapped(cause)))
    }

    /// The results the relay may act on: up to and including the first transient error, each
    /// message bounded and redacted; every other event not attempted.
    fn trusted(&self, results: Vec<Result<(), super::bindings::PublishError>>, count: usize) -> BatchOutcomes {
        let mut outcomes: BatchOutcomes = Vec::with_capacity(count);
        for result in results {
            let result = self.said(result);
            let transient = matches!(result, Err(PublishError::Transient(_)));
            outcomes.push(Some(result));
            if transient {
                break;
            }
        }
        outcomes.resize(count, None);
        outcomes
    }
}
