//! The writes that finish claimed rows, grouped by the statement each database runs for
//! them. Settlements ([`Settlement`]) and rejected rows ([`RejectedRow`]) are both written
//! this way, every statement conditional on the claim's fencing token.

use chrono::{DateTime, Utc};

use super::{RejectedRow, Settlement, Status, StoreError};

/// The writes for one claim, ids in the form the database stores them (`Id`).
#[derive(Debug)]
pub(crate) struct FencedWrites<'a, Id> {
    /// Rows now `published`.
    pub published: Vec<Id>,
    /// Rows back to `pending`/`retry` unchanged.
    pub released: Vec<Id>,
    /// Rows to `retry` or `failed`.
    pub outcomes: Vec<Outcome<'a, Id>>,
}

/// One row to `retry` or `failed`.
#[derive(Debug)]
pub(crate) struct Outcome<'a, Id> {
    pub id: Id,
    pub status: Status,
    /// The new `retry_count`; `None` keeps the row's.
    pub retry_count: Option<u32>,
    pub last_error: &'a str,
    /// The new `scheduled_at`; `None` keeps the row's.
    pub scheduled_at: Option<DateTime<Utc>>,
}

impl<'a, Id> FencedWrites<'a, Id> {
    /// The writes for `settlements` (ids as the relay has them, converted by `stored_id`).
    pub fn settling(
        settlements: &'a [(String, Settlement)],
        stored_id: impl Fn(&str) -> Result<Id, StoreError>,
    ) -> Result<Self, StoreError> {
        let mut writes = Self { published: Vec::new(), released: Vec::new(), outcomes: Vec::new() };
        for (id, settlement) in settlements {
            let id = stored_id(id)?;
            let (status, retry_count, last_error, scheduled_at) = match settlement {
                Settlement::Published => {
                    writes.published.push(id);
                    continue;
                }
                Settlement::Release => {
                    writes.released.push(id);
                    continue;
                }
                Settlement::Retry { retry_count, at, error } => (Status::Retry, *retry_count, error, Some(*at)),
                Settlement::Failed { retry_count, error } => (Status::Failed, *retry_count, error, None),
            };
            writes.outcomes.push(Outcome { id, status, retry_count: Some(retry_count), last_error, scheduled_at });
        }
        Ok(writes)
    }

    /// The writes that fail `rejected` rows (ids as stored, converted by `stored_id`),
    /// keeping their `retry_count`.
    pub fn rejecting(
        rejected: &'a [RejectedRow],
        stored_id: impl Fn(&str) -> Result<Id, StoreError>,
    ) -> Result<Self, StoreError> {
        let outcomes = rejected
            .iter()
            .map(|row| {
                Ok(Outcome {
                    id: stored_id(&row.id)?,
                    status: Status::Failed,
                    retry_count: None,
                    last_error: &row.error,
                    scheduled_at: None,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Self { published: Vec::new(), released: Vec::new(), outcomes })
    }
}
