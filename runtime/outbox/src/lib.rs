//! The outbox table `outbox_events`, as django-broadcaster 0.1.1's migration creates it, on
//! SQLite (the embedded default) or PostgreSQL (to scale out), chosen by `[outbox] url`.
//!
//! - [`backend`]: [`OutboxBackend`], the contract every database implements (claims are
//!   leases fenced by the claim token; see there).
//! - [`sqlite`], [`postgres`]: the implementations, one statement set per database, each a
//!   folder with fixed file roles (`mod.rs` connect, migrate, operate; `claim.rs`; `settle.rs`;
//!   `insert.rs`).
//! - [`row`]: claimed rows as each database reads them, decoded into events in one place; a
//!   row that cannot be read fails alone.
//! - [`fenced_writes`]: the writes that finish claimed rows, fenced by the claim token.
//! - [`schema`]: the table's DDL (Django's own, per database).
//! - [`NewEvent`]: an event to store; its row's columns are checked once, for either database,
//!   and a group of requests decided, below both of them (`new_rows`); `insert` runs the steps
//!   of an enqueue over each database's statements.
//! - [`enqueue`]: writing events, including inside an application's own transaction.
//! - [`extensions`]: the events' CloudEvents extension attributes, in a side table.
//! - [`catalog`]: the tenants defined through the admin API (components, publishers and
//!   their versions, tokens) and the numbered changes relays follow.
//!
//! [`OutboxStore`] is the handle the relay and the CLI hold: the backend `connect` picks by URL.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), broadcaster_outbox::StoreError> {
//! use broadcaster_outbox::{NewEvent, OutboxStore};
//!
//! // `sqlite://broadcaster.db` for a file, `postgres://user@host/db` for PostgreSQL.
//! let store = OutboxStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! let event = NewEvent::new("order.created", "/shop/orders").data(serde_json::json!({"order_id": 42}));
//! let ids = store.enqueue(&[event], chrono::Utc::now()).await?;
//!
//! // What a relay does next: claim the due rows as a lease.
//! let claim = store.claim(chrono::Utc::now(), 10, &[]).await?;
//! assert_eq!(claim.events[0].event.id, ids[0]);
//! # Ok(()) }
//! ```
//!
//! # Extending it
//!
//! A new database is one more [`OutboxBackend`] in its own files (`src/<database>/`, its SQL
//! and its binding only, like [`sqlite`] and [`postgres`]; its DDL in [`schema`]) and one line
//! in [`OutboxStore::connect`] mapping its URL scheme to it. What is the same for every
//! database is written once and shared: reading and decoding claimed rows ([`row`]), the
//! fenced writes that finish them ([`fenced_writes`]), checking new rows and deciding which
//! of a group commit's are new (`new_rows`), and the steps of an enqueue (`insert`: give the
//! store its `InsertStatements`, and its `enqueue` and `try_enqueue_requests` are one line
//! each). A database kept outside this crate implements [`OutboxBackend`] on its own and is
//! handed to [`OutboxStore::new`].

#![deny(missing_docs)]

pub mod backend;
pub mod catalog;
pub mod enqueue;
pub mod extensions;
pub mod fenced_writes;
pub mod file_watch;
mod insert;
mod new_rows;
mod pg_wakeup;
pub mod postgres;
pub mod row;
pub mod schema;
pub mod sqlite;
mod sqlite_busy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use broadcaster_core::event::OutboxEvent;

pub use backend::HeldClaim;
pub use backend::OutboxBackend;
pub use fenced_writes::{Fence, FencedWrites, RowId};
pub use new_rows::NewEvent;
pub use pg_wakeup::{POLL_UNDER_LOAD, SHARED_WAIT, WAKEUP_LOCK};
pub use row::RejectedRow;

/// The table name, fixed by django-broadcaster (`db_table = "outbox_events"`).
pub const TABLE: &str = "outbox_events";

/// The lifecycle of a row; the strings are django-broadcaster's `OutboxEventStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Waiting to be published.
    Pending,
    /// Claimed by a worker (a lease; see [`OutboxBackend`]).
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
    /// An event with extension attributes, and no `broadcaster_event_extensions` table to keep
    /// them in.
    #[error(
        "the outbox has no table broadcaster_event_extensions for events with extension attributes: run \
         `broadcaster migrate`"
    )]
    MissingExtensionTable,
    /// An event cannot be stored as it is.
    #[error("{0}")]
    Unstorable(String),
    /// This process's other writes to the SQLite file kept it waiting as long as SQLite's own
    /// lock wait: another process holds the file's write lock, or a write of this one hangs.
    #[error(
        "outbox database: waited {waited:?} for this process's other writes to the SQLite file to finish (is \
         another process holding its write lock?)"
    )]
    WriteQueueTimeout {
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// An event's id is already stored for another publisher's event.
    #[error("event id {id} is already taken by an event of publisher {publisher:?}; give this event an id of its own")]
    IdTaken {
        /// The id, hyphenated.
        id: String,
        /// The publisher whose event has it.
        publisher: String,
    },
}

impl StoreError {
    /// Whether the input is at fault (a URL, a missing or foreign table, an event that cannot
    /// be stored) rather than the database or its contents.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Database(_) | Self::BadRow { .. } | Self::WriteQueueTimeout { .. })
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
    /// The claim time; for a lease also the fencing token written to `updated_at`.
    pub token: DateTime<Utc>,
    /// The rows read as events, in due order (`scheduled_at`, then `created_at`).
    pub events: Vec<ClaimedEvent>,
    /// The rows that could not be read; the store has already marked them `failed`.
    pub rejected: Vec<RejectedRow>,
}

impl Claim {
    /// The rows claimed: events and rejected rows.
    pub fn len(&self) -> usize {
        self.events.len() + self.rejected.len()
    }

    /// Whether nothing was due.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// Rows of one publisher (as stored) in one status, and the oldest `scheduled_at` among them
/// ([`OutboxBackend::backlog`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Backlog {
    /// `publisher_backend` as stored (empty: the default publisher).
    pub publisher_backend: String,
    /// `pending`, `retry` or `processing`.
    pub status: Status,
    /// How many rows.
    pub rows: u64,
    /// The oldest `scheduled_at` among them.
    pub oldest_scheduled: Option<DateTime<Utc>>,
}

impl Backlog {
    /// The backlog of `rows` (publisher_backend, status, rows, oldest): unknown statuses left
    /// out.
    pub fn of(rows: Vec<(String, String, i64, Option<DateTime<Utc>>)>) -> Vec<Self> {
        rows.into_iter()
            .filter_map(|(publisher_backend, status, rows, oldest_scheduled)| {
                Some(Self {
                    publisher_backend,
                    status: Status::parse(&status)?,
                    rows: rows.unsigned_abs(),
                    oldest_scheduled,
                })
            })
            .collect()
    }
}

/// A `failed` row as operators look at it ([`OutboxBackend::recent_failed`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FailedEvent {
    /// The row id (hyphenated when it is a UUID; as stored otherwise).
    pub id: String,
    /// `publisher_backend` as stored (empty: the default publisher).
    pub publisher_backend: String,
    /// `event_type`.
    pub event_type: String,
    /// Failed attempts.
    pub retry_count: u32,
    /// When it failed (`updated_at`); `None` when the column does not read as a time.
    pub updated_at: Option<DateTime<Utc>>,
    /// The last error, at most [`schema::FAILED_ERROR_CHARS`] characters of it.
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

impl StatusReport {
    /// The report of `counts` (publisher_backend, status, rows: unknown statuses left out),
    /// the oldest due row and the expired leases.
    pub fn of(counts: Vec<(String, String, i64)>, oldest_due: Option<DateTime<Utc>>, expired_leases: i64) -> Self {
        let counts = counts
            .into_iter()
            .filter_map(|(publisher, status, rows)| Some(((publisher, Status::parse(&status)?), rows.unsigned_abs())))
            .collect();
        Self { counts, oldest_due, expired_leases: expired_leases.unsigned_abs() }
    }
}

/// The outbox on one of the supported databases: a cheap-to-clone handle to its
/// [`OutboxBackend`], whose methods it derefs to.
#[derive(Debug, Clone)]
pub struct OutboxStore {
    backend: Arc<dyn OutboxBackend>,
    /// Rung when this process enqueues through this store (or a clone of it).
    enqueued: Arc<tokio::sync::Notify>,
}

impl OutboxStore {
    /// Connects to `url` (`sqlite://file`, `sqlite::memory:`, `postgres://…`). A SQLite file is
    /// created when missing; the table is not (see [`OutboxBackend::migrate`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let backend: Arc<dyn OutboxBackend> = match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Arc::new(sqlite::SqliteStore::connect(url).await?),
            Some("postgres" | "postgresql") => Arc::new(postgres::PostgresStore::connect(url).await?),
            _ => {
                return Err(StoreError::Url {
                    url: redact(url),
                    message: "expected sqlite://<file> or postgres://user@host/db".into(),
                });
            }
        };
        Ok(Self { backend, enqueued: Arc::default() })
    }

    /// The tenants' catalog in this database, where the database keeps one.
    pub fn catalog(&self) -> Option<catalog::Catalog> {
        self.backend.catalog_database().map(catalog::Catalog::new)
    }

    /// A store on `backend` (a database `connect` does not know).
    pub fn new(backend: impl OutboxBackend + 'static) -> Self {
        Self { backend: Arc::new(backend), enqueued: Arc::default() }
    }

    /// Inserts events in one transaction ([`OutboxBackend::enqueue`]) and wakes a relay of
    /// this process that waits on this store.
    pub async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let ids = self.backend.enqueue(events, now).await?;
        self.enqueued.notify_one();
        Ok(ids)
    }

    /// Inserts the events whose id is not stored yet, in one transaction
    /// ([`OutboxBackend::enqueue_once`]), and wakes a relay of this process that waits on this
    /// store when any was new.
    pub async fn enqueue_once(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<bool>, StoreError> {
        let new = self.backend.enqueue_once(events, now).await?;
        if new.iter().any(|n| *n) {
            self.enqueued.notify_one();
        }
        Ok(new)
    }

    /// Several requests' events in one transaction ([`OutboxBackend::enqueue_requests`]);
    /// wakes a relay of this process that waits on this store when any event was new.
    pub async fn enqueue_requests(
        &self,
        requests: &[&[NewEvent]],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Vec<bool>, StoreError>>, StoreError> {
        let answers = self.backend.enqueue_requests(requests, now).await?;
        if answers.iter().any(|a| a.as_ref().is_ok_and(|new| new.iter().any(|n| *n))) {
            self.enqueued.notify_one();
        }
        Ok(answers)
    }

    /// Returns when new events may be waiting: enqueued by this process through this store,
    /// or written by anyone as far as the database can tell
    /// ([`OutboxBackend::wait_for_writes`]), or after `timeout`. Returns whether it was woken
    /// by a write.
    pub async fn wait_for_writes(&self, timeout: Duration) -> bool {
        tokio::select! {
            woken = self.backend.wait_for_writes(timeout) => woken,
            () = self.enqueued.notified() => true,
        }
    }
}

impl std::ops::Deref for OutboxStore {
    type Target = dyn OutboxBackend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

/// When a lease of length `lease` that is still valid at `now` began: rows `processing` since
/// before then have expired.
pub(crate) fn lease_start(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
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
mod tests;
