//! [`FencedWrites`]: the writes that finish claimed rows, grouped by the statement a database
//! runs for them, every one conditional on the claim's [`Fence`]. Settlements
//! ([`Settlement`]) and rows a claim could not read ([`RejectedRow`](super::RejectedRow)) are
//! both written this way ([`OutboxBackend::write`](super::OutboxBackend::write)).

use chrono::{DateTime, Utc};

use super::{Claim, Settlement, Status};

/// Which row a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowId<'a> {
    /// A claimed event's id as the relay has it (the hyphenated UUID).
    Event(&'a str),
    /// A row's id exactly as stored (a rejected row's: it may not even be a UUID).
    Stored(&'a str),
}

impl<'a> RowId<'a> {
    /// The id's text, whichever form it is in.
    pub fn text(self) -> &'a str {
        match self {
            RowId::Event(id) | RowId::Stored(id) => id,
        }
    }
}

/// What keeps a claim's rows its own until they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// A lease ([`OutboxBackend::claim`](super::OutboxBackend::claim)): the rows were set
    /// `processing` with this `updated_at`, the fencing token; only rows still so change.
    Lease(DateTime<Utc>),
    /// Row locks ([`OutboxBackend::claim_held`](super::OutboxBackend::claim_held)): the rows are
    /// unchanged (`pending` or `retry`) and locked by the transaction the writes run in, so
    /// nobody else can have changed them. Released rows need no write.
    Held,
}

impl Fence {
    /// The fencing token of a lease; `None` for rows held by a transaction.
    pub fn token(self) -> Option<DateTime<Utc>> {
        match self {
            Fence::Lease(token) => Some(token),
            Fence::Held => None,
        }
    }
}

/// The writes for one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct FencedWrites<'a> {
    /// What keeps the rows the claim's: only rows still so change.
    pub fence: Fence,
    /// The new `updated_at` (and `published_at`).
    pub now: DateTime<Utc>,
    /// Rows now `published`.
    pub published: Vec<RowId<'a>>,
    /// Rows back to `pending` (or `retry`, when they have failed before), otherwise unchanged.
    pub released: Vec<RowId<'a>>,
    /// Rows to `retry` or `failed`.
    pub outcomes: Vec<Outcome<'a>>,
}

/// One row to `retry` or `failed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<'a> {
    /// The row.
    pub id: RowId<'a>,
    /// [`Status::Retry`] or [`Status::Failed`].
    pub status: Status,
    /// The new `retry_count`; `None` keeps the row's.
    pub retry_count: Option<u32>,
    /// The new `last_error`.
    pub last_error: &'a str,
    /// The new `scheduled_at`; `None` keeps the row's.
    pub scheduled_at: Option<DateTime<Utc>>,
}

impl<'a> FencedWrites<'a> {
    /// The writes for `settlements` (by event id) of the claim fenced by `fence`, at `now`.
    pub fn settling(fence: Fence, now: DateTime<Utc>, settlements: &'a [(String, Settlement)]) -> Self {
        let mut writes = Self { fence, now, published: Vec::new(), released: Vec::new(), outcomes: Vec::new() };
        for (id, settlement) in settlements {
            let id = RowId::Event(id);
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
        writes
    }

    /// The writes that fail the rows `claim` could not read (by id as stored), keeping their
    /// `retry_count`; `None` when there are none.
    pub fn rejecting(claim: &'a Claim, fence: Fence) -> Option<Self> {
        let outcomes: Vec<Outcome<'a>> = claim
            .rejected
            .iter()
            .map(|row| Outcome {
                id: RowId::Stored(&row.id),
                status: Status::Failed,
                retry_count: None,
                last_error: &row.error,
                scheduled_at: None,
            })
            .collect();
        let now = claim.token;
        (!outcomes.is_empty()).then(|| Self { fence, now, published: Vec::new(), released: Vec::new(), outcomes })
    }
}
