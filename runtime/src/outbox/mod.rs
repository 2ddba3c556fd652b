//! The outbox table `outbox_events`, as django-broadcaster 0.1.1's migration creates it, on
//! SQLite (the embedded default) or PostgreSQL (to scale out), chosen by `[outbox] url`.
//!
//! - [`schema`]: the table's DDL (Django's own, per database) and `migrate`.
//! - [`sqlite`], [`postgres`]: the statements, one implementation per database.
//! - [`enqueue`]: writing events, including inside an application's own transaction.
//!
//! Claims are leases: a claimed row is `processing` with `updated_at` = the claim time,
//! which is also the claim's fencing token. Every later write to the row (published, retry,
//! failed, released) is conditional on `status = 'processing' AND updated_at = <token>`, so
//! a worker whose lease expired and was taken over cannot overwrite the new owner's state.

pub mod enqueue;
pub mod postgres;
pub mod schema;
pub mod sqlite;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::event::OutboxEvent;

pub use enqueue::NewEvent;

/// The table name, fixed by django-broadcaster (`db_table = "outbox_events"`).
pub const TABLE: &str = "outbox_events";

/// The lifecycle of a row; the strings are django-broadcaster's `OutboxEventStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Waiting to be published.
    Pending,
    /// Claimed by a worker (a lease; see the module docs).
    Processing,
    /// Published.
    Published,
    /// Given up on; `last_error` says why.
    Failed,
    /// Failed transiently; due again at `scheduled_at`.
    Retry,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] =
        [Status::Pending, Status::Processing, Status::Retry, Status::Failed, Status::Published];

    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Published => "published",
            Status::Failed => "failed",
            Status::Retry => "retry",
        }
    }

    /// Parses a column value.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `[outbox] url` is not a supported database URL.
    #[error("outbox url {url:?}: {message}")]
    Url {
        /// The URL, password removed.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The database could not be reached or refused a statement.
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The table is missing; `broadcaster migrate` creates it.
    #[error("the outbox table `outbox_events` does not exist in {url}: run `broadcaster migrate`")]
    MissingTable {
        /// The URL, password removed.
        url: String,
    },
    /// The table exists but lacks columns Broadcaster needs.
    #[error("the table `outbox_events` in {url} is not django-broadcaster's: missing columns {missing}")]
    WrongTable {
        /// The URL, password removed.
        url: String,
        /// The missing columns, comma-separated.
        missing: String,
    },
    /// A row holds something Broadcaster cannot read.
    #[error("outbox row {id}: {message}")]
    BadRow {
        /// The row's id as stored.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// An event cannot be stored as it is.
    #[error("{0}")]
    Unstorable(String),
}

impl StoreError {
    /// Whether the input is at fault (a URL, a missing or foreign table, an event that cannot
    /// be stored) rather than the database or its contents.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Database(_) | Self::BadRow { .. })
    }
}

/// A claimed row: the event and what the relay needs to finish it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedEvent {
    /// The event.
    pub event: OutboxEvent,
    /// When it was due.
    pub scheduled_at: DateTime<Utc>,
}

/// A batch of claimed rows sharing one fencing token.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The claim time; also the fencing token written to `updated_at`.
    pub token: DateTime<Utc>,
    /// The rows, in due order (`scheduled_at`, then `created_at`).
    pub events: Vec<ClaimedEvent>,
}

/// What to do with one claimed row after publishing.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Published.
    Published,
    /// Try again at `at`, with `retry_count` now `retry_count`.
    Retry {
        /// The new `retry_count`.
        retry_count: u32,
        /// The new `scheduled_at`.
        at: DateTime<Utc>,
        /// `last_error`.
        error: String,
    },
    /// Give up.
    Failed {
        /// The new `retry_count`.
        retry_count: u32,
        /// `last_error`.
        error: String,
    },
    /// Not attempted (its publisher is unhealthy): back to `pending`/`retry` unchanged.
    Release,
}

/// A row's bookkeeping, as operators see it (`broadcaster retry`, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct RowState {
    /// The row id (hyphenated UUID).
    pub id: String,
    /// Its status.
    pub status: Status,
    /// Its publisher (empty: default).
    pub publisher_backend: String,
    /// Failed attempts so far.
    pub retry_count: u32,
    /// Attempts allowed.
    pub max_retries: u32,
    /// When it is (or was) due.
    pub scheduled_at: DateTime<Utc>,
    /// When it was published.
    pub published_at: Option<DateTime<Utc>>,
    /// The last error.
    pub last_error: String,
}

/// Counts for `broadcaster status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusReport {
    /// (publisher_backend, status) → rows.
    pub counts: BTreeMap<(String, Status), u64>,
    /// The oldest `scheduled_at` among due rows (pending/retry, due now).
    pub oldest_due: Option<DateTime<Utc>>,
    /// Rows in `processing` whose lease has expired.
    pub expired_leases: u64,
}

/// The outbox on one of the supported databases.
#[derive(Debug, Clone)]
pub enum OutboxStore {
    /// SQLite (a file).
    Sqlite(sqlite::SqliteStore),
    /// PostgreSQL.
    Postgres(postgres::PostgresStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            OutboxStore::Sqlite(store) => store.$method($($arg),*).await,
            OutboxStore::Postgres(store) => store.$method($($arg),*).await,
        }
    };
}

impl OutboxStore {
    /// Connects to `url` (`sqlite://file`, `sqlite::memory:`, `postgres://…`). A SQLite file is
    /// created when missing; the table is not (see [`OutboxStore::migrate`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(sqlite::SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(postgres::PostgresStore::connect(url).await?))
        } else {
            Err(StoreError::Url {
                url: redact(url),
                message: "expected sqlite://<file> or postgres://user@host/db".into(),
            })
        }
    }

    /// The database URL without password.
    pub fn display_url(&self) -> String {
        match self {
            Self::Sqlite(s) => s.display_url(),
            Self::Postgres(s) => s.display_url(),
        }
    }

    /// Creates the table and Django's indexes when the table is missing. Returns `true` when
    /// it created them, `false` when the table was there (it is then checked, not changed).
    pub async fn migrate(&self) -> Result<bool, StoreError> {
        dispatch!(self.migrate())
    }

    /// Checks that the table exists with django-broadcaster's columns.
    pub async fn verify(&self) -> Result<(), StoreError> {
        dispatch!(self.verify())
    }

    /// Inserts events in one transaction; returns their ids.
    pub async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        dispatch!(self.enqueue(events, now))
    }

    /// Claims up to `limit` due rows (pending/retry with `scheduled_at <= now`) whose
    /// publisher is not in `skip` (names as stored: give both `""` and `"default"` to skip
    /// the default publisher), oldest due first.
    pub async fn claim(&self, now: DateTime<Utc>, limit: u32, skip: &[String]) -> Result<Claim, StoreError> {
        let mut claim = dispatch!(self.claim(now, limit, skip))?;
        // `UPDATE … RETURNING` gives rows in no particular order.
        claim.events.sort_by_key(|e| (e.scheduled_at, e.event.created_at));
        Ok(claim)
    }

    /// Claims up to `limit` due rows of one publisher (`names`: how its events may name it,
    /// e.g. `["", "default"]` for the default publisher, or the name twice), oldest due first.
    /// Cheap however many rows other publishers have waiting (with the claim index).
    pub async fn claim_for(&self, now: DateTime<Utc>, limit: u32, names: [&str; 2]) -> Result<Claim, StoreError> {
        let mut claim = dispatch!(self.claim_for(now, limit, names))?;
        claim.events.sort_by_key(|e| (e.scheduled_at, e.event.created_at));
        Ok(claim)
    }

    /// The `publisher_backend` values that have `pending` or `retry` rows (due or not), found
    /// with one index seek per name.
    pub async fn publishers_with_work(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self.publishers_with_work())
    }

    /// Applies the outcome of each claimed row; rows whose lease was taken over are left
    /// alone. Returns how many rows were updated.
    pub async fn settle(
        &self,
        token: DateTime<Utc>,
        now: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<u64, StoreError> {
        dispatch!(self.settle(token, now, settlements))
    }

    /// Puts rows left `processing` longer than `lease` back to `pending`/`retry`. Returns
    /// how many.
    pub async fn reclaim_expired(&self, now: DateTime<Utc>, lease: Duration) -> Result<u64, StoreError> {
        dispatch!(self.reclaim_expired(now, lease))
    }

    /// Counts per publisher and status, and the oldest due row.
    pub async fn status(&self, now: DateTime<Utc>, lease: Duration) -> Result<StatusReport, StoreError> {
        dispatch!(self.status(now, lease))
    }

    /// Sets the given rows (by id), or every `failed` row when `ids` is empty, back to
    /// `pending`, due now, with `retry_count` 0. Only `failed` and `retry` rows are changed.
    /// Returns the rows changed.
    pub async fn retry(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        dispatch!(self.retry(ids, now))
    }

    /// The rows with these ids (those that exist).
    pub async fn find(&self, ids: &[String]) -> Result<Vec<RowState>, StoreError> {
        dispatch!(self.find(ids))
    }

    /// Deletes up to `limit` `published` rows published before `before`; returns how many.
    pub async fn prune_batch(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        dispatch!(self.prune_batch(before, limit))
    }

    /// Counts `published` rows published before `before`.
    pub async fn count_prunable(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        dispatch!(self.count_prunable(before))
    }
}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Parses an outbox id: a UUID in any common form (hyphenated, or 32 hex digits as Django
/// stores it on SQLite).
pub fn parse_id(id: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(id.trim())
        .map_err(|_| StoreError::Unstorable(format!("{id:?} is not an outbox event id (a UUID)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact("postgres://app:s3cret@db/app"), "postgres://app:***@db/app");
        assert_eq!(redact("postgres://app@db/app"), "postgres://app@db/app");
        assert_eq!(redact("sqlite://broadcaster.db"), "sqlite://broadcaster.db");
    }

    #[test]
    fn statuses_round_trip_through_their_column_values() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("done"), None);
    }

    #[test]
    fn ids_parse_hyphenated_or_as_django_stores_them_on_sqlite() {
        let id = parse_id("6f1c2b52-3f3c-4d5e-9a1b-2c3d4e5f6a7b").unwrap();
        assert_eq!(parse_id("6f1c2b523f3c4d5e9a1b2c3d4e5f6a7b").unwrap(), id);
        assert!(parse_id("evt-1").is_err());
    }
}
