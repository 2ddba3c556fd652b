//! [`OutboxBackend`]: everything the relay and the CLI ask of an outbox database. SQLite
//! ([`super::sqlite`]) and PostgreSQL ([`super::postgres`]) implement it; [`super::OutboxStore`]
//! picks one by URL.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    Backlog, Claim, FailedEvent, Fence, FencedWrites, NewEvent, RowState, Settlement, StatusReport, StoreError, schema,
};

/// How many times [`OutboxBackend::enqueue_requests`] reads and writes before it gives up on
/// writers that keep storing the same ids in between.
pub const ENQUEUE_ATTEMPTS: u32 = 5;

/// A claim whose rows are locked by an open transaction ([`OutboxBackend::claim_held`]).
/// Dropping it unfinished rolls the transaction back: the rows are due again as they were.
#[async_trait::async_trait]
pub trait HeldClaim: std::fmt::Debug + Send + Sync {
    /// The rows claimed (the unreadable ones already marked `failed` in the transaction).
    fn claim(&self) -> &Claim;

    /// Writes the outcome of each claimed row (by id; released rows stay as they were) and
    /// commits. Returns how many rows the outcomes cover. A failure here (the commit too) leaves
    /// every row as it was before the claim: published ones are published again.
    async fn finish(
        self: Box<Self>,
        now: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<u64, StoreError>;
}

/// The `outbox_events` table on one database.
///
/// **Claims are leases.** A claim sets its rows to `processing` with `updated_at` = the claim
/// time, the claim's **fencing token** ([`Claim::token`]). Every later write to a claimed row
/// (published, retry, failed, released) is conditional on `status = 'processing' AND
/// updated_at = <token>`, so a worker whose lease expired and was taken over (see
/// [`reclaim_expired`](Self::reclaim_expired)) cannot overwrite the new owner's outcome.
///
/// Ids are passed and returned as text: the hyphenated UUID ([`ClaimedEvent`'s
/// `event.id`](super::ClaimedEvent)), or any form [`super::parse_id`] reads.
///
/// A database implements the required methods with its own SQL; [`verify`](Self::verify) and
/// [`settle`](Self::settle) are the same for all, built on [`table_columns`](Self::table_columns)
/// and [`write`](Self::write). Claimed rows are read with [`RowReader`](super::row::RowReader)
/// and decoded by [`Claim::from_rows`], so every database reads a row the same way.
#[async_trait::async_trait]
pub trait OutboxBackend: std::fmt::Debug + Send + Sync {
    /// The database URL without password, for messages.
    fn display_url(&self) -> String;

    /// How soon to look again after a wake-up by a write that brought nothing to claim: a
    /// database whose wake-up can come before the write is visible says how long that can
    /// take (the relay then looks after this, and after twice as long again, …). `None`: the
    /// wake-up comes after the commit (PostgreSQL's `NOTIFY`).
    fn look_again_after_write(&self) -> Option<Duration> {
        None
    }

    /// Returns when events may have been written since the last call, by any process, as far
    /// as the database can tell (PostgreSQL: the notify trigger `migrate` installs; SQLite:
    /// the kernel's notice of a write to the file), or after `timeout`. A write that happened
    /// while nobody waited is remembered for the next call. The relay polls as well, so a
    /// wake-up that is lost only costs latency. Returns whether it was woken by a write. The
    /// default just waits `timeout` out.
    async fn wait_for_writes(&self, timeout: Duration) -> bool {
        tokio::time::sleep(timeout).await;
        false
    }

    /// Removes what `migrate` installs to wake relays on inserts, where the database has such a
    /// thing (PostgreSQL's notify trigger; its `NOTIFY` serializes concurrently committing
    /// producers). Relays then find new events by polling. The default has nothing to remove.
    async fn remove_wakeup_trigger(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Where this database keeps the tenants' catalog ([`crate::catalog`]); `None` (the
    /// default) for a database that keeps none: its relays run the configuration file's
    /// tenants only.
    fn catalog_database(&self) -> Option<crate::catalog::CatalogDatabase> {
        None
    }

    /// The columns of `outbox_events`; empty when the table does not exist.
    async fn table_columns(&self) -> Result<Vec<String>, StoreError>;

    /// Checks that the table exists with django-broadcaster's columns
    /// ([`StoreError::MissingTable`], [`StoreError::WrongTable`]).
    async fn verify(&self) -> Result<(), StoreError> {
        let present = self.table_columns().await?;
        if present.is_empty() {
            return Err(StoreError::MissingTable { url: self.display_url() });
        }
        match schema::missing_columns(&present) {
            Some(missing) => Err(StoreError::WrongTable { url: self.display_url(), missing }),
            None => Ok(()),
        }
    }

    /// Creates the table and Django's indexes (plus [`schema::CLAIM_INDEX`] and
    /// [`schema::FAILED_INDEX`]) when the table is missing, in one transaction; two `migrate`s
    /// at once must not both create it. Returns `true` when it created them, `false` when the
    /// table was there: it is then [verified](Self::verify), and only Broadcaster's two indexes
    /// are added when missing.
    async fn migrate(&self) -> Result<bool, StoreError>;

    /// Inserts events, `pending`, in one transaction (all or none); returns their ids. An event
    /// the table cannot hold is [`StoreError::Unstorable`].
    async fn enqueue(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;

    /// Inserts events like [`enqueue`](Self::enqueue), in one transaction, but an event whose
    /// id is already stored for the same publisher (a repeated delivery, also within `events`)
    /// is left as it is: returns, per event, whether it was inserted. An id already stored for
    /// another publisher is [`StoreError::IdTaken`] and nothing is written.
    async fn enqueue_once(&self, events: &[NewEvent], now: DateTime<Utc>) -> Result<Vec<bool>, StoreError> {
        self.enqueue_requests(&[events], now).await?.pop().expect("one answer per request")
    }

    /// [`enqueue_once`](Self::enqueue_once) for several requests in one transaction (one
    /// commit): each request decided on its own (all or nothing), one answer per request.
    /// `Err` when the transaction as a whole failed: then nothing was written. Tries
    /// [`try_enqueue_requests`](Self::try_enqueue_requests) again when another writer got in
    /// between, up to [`ENQUEUE_ATTEMPTS`] times.
    async fn enqueue_requests(
        &self,
        requests: &[&[NewEvent]],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Vec<bool>, StoreError>>, StoreError> {
        for _ in 0..ENQUEUE_ATTEMPTS {
            if let Some(answers) = self.try_enqueue_requests(requests, now).await? {
                return Ok(answers);
            }
        }
        Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "other writers stored the same event ids {ENQUEUE_ATTEMPTS} times while these events were written; \
             nothing was written"
        ))))
    }

    /// One attempt at [`enqueue_requests`](Self::enqueue_requests): reads which ids are stored,
    /// decides every request from that (`new_rows::decide_requests`), inserts the new
    /// rows, and commits. `None` (nothing written) when an insert found an id stored after the
    /// read: another writer got in between, and a new attempt reads it.
    ///
    /// SQLite and PostgreSQL share one implementation of these steps
    /// (`insert::try_enqueue_requests`), each giving only its statements; a database
    /// outside this crate writes its own.
    async fn try_enqueue_requests(
        &self,
        requests: &[&[NewEvent]],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Result<Vec<bool>, StoreError>>>, StoreError>;

    /// Claims up to `limit` due rows (`pending`/`retry` with `scheduled_at <= now`) whose
    /// publisher is not in `skip` (names as stored: give both `""` and `"default"` to skip the
    /// default publisher), oldest due first, as one lease with token `now`.
    ///
    /// Every claimed row is read on its own ([`Claim::from_rows`]): [`Claim::events`] holds the
    /// rows that read as events, in due order (`scheduled_at`, then `created_at`);
    /// [`Claim::rejected`] the rows that cannot be read, which this call has already marked
    /// `failed` with a `last_error` naming the column (their `retry_count` unchanged, fenced by
    /// the token, found by their id as stored). One bad row never holds back the others.
    async fn claim(&self, now: DateTime<Utc>, limit: u32, skip: &[String]) -> Result<Claim, StoreError>;

    /// Claims up to `limit` due rows of one publisher (`names`: how its events may name it,
    /// e.g. `["", "default"]` for the default publisher, or the name twice), oldest due first.
    /// Cheap however many rows other publishers have waiting (with the claim index). The
    /// result is as for [`claim`](Self::claim), unreadable rows already failed.
    async fn claim_for(&self, now: DateTime<Utc>, limit: u32, names: [&str; 2]) -> Result<Claim, StoreError>;

    /// The `publisher_backend` values that have `pending` or `retry` rows (due or not), found
    /// with one index seek per name ([`schema::PUBLISHERS_WITH_WORK`]).
    async fn publishers_with_work(&self) -> Result<Vec<String>, StoreError>;

    /// Applies the outcome of each claimed row (by id), fenced by `token`; rows whose lease
    /// was taken over are left alone. `now` is written to `updated_at` (and `published_at`).
    /// Returns how many rows were updated (fewer than `settlements`: some were fenced off).
    async fn settle(
        &self,
        token: DateTime<Utc>,
        now: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<u64, StoreError> {
        self.write(&FencedWrites::settling(Fence::Lease(token), now, settlements)).await
    }

    /// Claims like [`claim_for`](Self::claim_for), but as row locks inside a transaction that
    /// stays open until [`HeldClaim::finish`] writes the outcomes and commits: every row is
    /// written once (pending → published) instead of twice (→ processing → published), and a
    /// worker that dies lets its rows go at once (the database rolls its transaction back)
    /// instead of at lease expiry. For publishers that answer fast: the transaction and a
    /// connection are held while the batch is published. `None` when this database does not
    /// hold claims, or all the connections it lends for them are in use: claim a lease then.
    async fn claim_held(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        names: [&str; 2],
    ) -> Result<Option<Box<dyn HeldClaim>>, StoreError> {
        let _ = (now, limit, names);
        Ok(None)
    }

    /// Runs `writes`, each conditional on `status = 'processing' AND updated_at = token`;
    /// returns how many rows they updated. The one way claimed rows are finished: by
    /// [`settle`](Self::settle), and by [`claim`](Self::claim) for the rows it cannot read.
    async fn write(&self, writes: &FencedWrites<'_>) -> Result<u64, StoreError>;

    /// Puts rows left `processing` longer than `lease` (their worker died or stalled) back to
    /// `pending`, or `retry` when they have failed before, without spending an attempt.
    /// Returns how many.
    async fn reclaim_expired(&self, now: DateTime<Utc>, lease: Duration) -> Result<u64, StoreError>;

    /// The rows waiting (`pending`, `retry`) or claimed (`processing`), per publisher as stored
    /// and status, each with its oldest `scheduled_at`. Published and failed rows are not read.
    async fn backlog(&self) -> Result<Vec<Backlog>, StoreError>;

    /// The `limit` most recently failed rows (`status = 'failed'`, newest `updated_at` first),
    /// found by [`schema::FAILED_INDEX`] where `migrate` made it; `last_error` cut to
    /// [`schema::FAILED_ERROR_CHARS`] characters.
    async fn recent_failed(&self, limit: u32) -> Result<Vec<FailedEvent>, StoreError>;

    /// Counts per publisher and status, the oldest due row, and the expired leases.
    async fn status(&self, now: DateTime<Utc>, lease: Duration) -> Result<StatusReport, StoreError>;

    /// Sets the given rows (by id), or every `failed` row when `ids` is empty, back to
    /// `pending`, due now, with `retry_count` 0. Only `failed` and `retry` rows are changed.
    /// Returns the ids of the rows changed (hyphenated).
    async fn retry(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;

    /// The rows with these ids (those that exist), in no particular order.
    async fn find(&self, ids: &[String]) -> Result<Vec<RowState>, StoreError>;

    /// Deletes up to `limit` `published` rows published before `before`; returns how many.
    async fn prune_batch(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Counts `published` rows published before `before`.
    async fn count_prunable(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}
