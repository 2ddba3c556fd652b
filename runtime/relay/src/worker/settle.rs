//! Writing a share's settlements back to the outbox: fenced by its claim (a row another
//! worker took over is counted, not written), retried after a database blip, or committed
//! with the transaction that holds the claim.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{BatchReport, OUTCOME_WRITE_ATTEMPTS, Relay};
use broadcaster_outbox::{HeldClaim, Settlement, StoreError};

impl Relay {
    /// Writes the settlements of one share; counts them.
    pub(super) async fn settle(
        &self,
        token: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<BatchReport, StoreError> {
        let mut report = count_settlements(settlements);
        let updated = self.write_outcomes(token, settlements).await?;
        report.fenced = (settlements.len() as u64).saturating_sub(updated);
        if report.fenced > 0 {
            tracing::warn!(
                fenced = report.fenced,
                "this worker's lease on some events expired and another worker took them over; \
                 their outcome here was not recorded (they may be published twice)"
            );
        }
        Ok(report)
    }

    /// Writes the settlements of a held share and commits its transaction; counts them. A
    /// failure leaves the rows as they were before the claim (the published ones are published
    /// again by the next claim).
    pub(super) async fn finish_held(
        &self,
        held: Box<dyn HeldClaim>,
        settlements: &[(String, Settlement)],
    ) -> Result<BatchReport, StoreError> {
        let mut report = count_settlements(settlements);
        let updated = held.finish(self.clock.now(), settlements).await?;
        report.fenced = (settlements.len() as u64).saturating_sub(updated);
        Ok(report)
    }

    /// Writes the outcomes of a share, trying again after a database error (a blip must not
    /// send published events back to be published again at lease expiry): up to
    /// [`OUTCOME_WRITE_ATTEMPTS`] attempts, waiting 100 ms, then 400 ms, … between them. The
    /// writes are fenced by the claim token, so an attempt that did reach the database before
    /// failing is harmless to repeat.
    async fn write_outcomes(
        &self,
        token: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<u64, StoreError> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.store.settle(token, self.clock.now(), settlements).await {
                Err(StoreError::Database(err)) if attempt < OUTCOME_WRITE_ATTEMPTS => {
                    tracing::warn!(%err, attempt, "recording outcomes failed; trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The counts of `settlements`.
fn count_settlements(settlements: &[(String, Settlement)]) -> BatchReport {
    let mut report = BatchReport { claimed: settlements.len() as u64, ..BatchReport::default() };
    for (_, settlement) in settlements {
        match settlement {
            Settlement::Published => report.published += 1,
            Settlement::Retry { .. } => report.retried += 1,
            Settlement::Failed { .. } => report.failed += 1,
            Settlement::Release => report.released += 1,
        }
    }
    report
}
