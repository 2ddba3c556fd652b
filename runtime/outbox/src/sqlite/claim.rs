//! SQLite's claims: single `UPDATE … RETURNING` statements over one index range per status
//! (and publisher name), each stopping after `limit` rows; the claimed rows read on their own,
//! the unreadable ones failed, and their extensions attached.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;

use super::{Query, Reader, SqliteStore, hex_id};
use crate::extensions;
use crate::row::{ReadRow, RowError, claimed_columns, quote};
use crate::{Claim, Fence, FencedWrites, OutboxBackend, RejectedRow, StoreError};

/// Claims due rows whose publisher is not in the JSON list `?2`. One index range scan per
/// status, each stopping after `limit` rows, so a claim costs the same with ten or ten million
/// rows waiting (a single `status IN (…)` with ORDER BY would sort every due row on every
/// claim).
/// Each claim statement comes in two forms ([`ClaimStatement`]): without and with the claimed
/// rows' extensions.
macro_rules! claim_any {
    ($($returning:expr),+) => {
        concat!(
            "UPDATE outbox_events SET status = 'processing', updated_at = ?1 \
             WHERE id IN (SELECT id FROM ( \
                 SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
                     WHERE status = 'pending' AND scheduled_at <= ?1 \
                       AND publisher_backend NOT IN (SELECT value FROM json_each(?2)) \
                     ORDER BY scheduled_at LIMIT ?3) \
                 UNION ALL \
                 SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events \
                     WHERE status = 'retry' AND scheduled_at <= ?1 \
                       AND publisher_backend NOT IN (SELECT value FROM json_each(?2)) \
                     ORDER BY scheduled_at LIMIT ?3)) \
                 ORDER BY scheduled_at, created_at LIMIT ?3) \
             RETURNING ",
            $($returning),+
        )
    };
}
pub(super) const CLAIM: ClaimStatement =
    [claim_any!(claimed_columns!()), claim_any!(claimed_columns!(), extensions::sqlite_claimed_extensions!())];

/// A claim statement returning [`claimed_columns`], and the same returning each row's
/// extensions too ([`extensions::sqlite_claimed_extensions`]), for once the table is known to
/// exist: the claim then needs no second statement to read them.
pub(super) type ClaimStatement = [&'static str; 2];

/// Up to `?4` due rows of one status and publisher name, oldest due first: one index range
/// (a string literal, for `concat!`).
macro_rules! due_range {
    ($status:literal, $name:literal) => {
        concat!(
            "SELECT * FROM (SELECT id, scheduled_at, created_at FROM outbox_events WHERE status = '",
            $status,
            "' AND publisher_backend = ",
            $name,
            " AND scheduled_at <= ?1 ORDER BY scheduled_at LIMIT ?4)"
        )
    };
}

/// Claims due rows of the publisher named `?2` or `?3`: one index range per (status, name),
/// each stopping after `limit` rows, so the cost does not grow with other publishers'
/// backlogs.
macro_rules! claim_for {
    ($($returning:expr),+) => {
        concat!(
            "UPDATE outbox_events SET status = 'processing', updated_at = ?1 WHERE id IN (SELECT id FROM (",
            due_range!("pending", "?2"),
            " UNION ",
            due_range!("pending", "?3"),
            " UNION ",
            due_range!("retry", "?2"),
            " UNION ",
            due_range!("retry", "?3"),
            ") ORDER BY scheduled_at, created_at LIMIT ?4) RETURNING ",
            $($returning),+
        )
    };
}
pub(super) const CLAIM_FOR: ClaimStatement =
    [claim_for!(claimed_columns!()), claim_for!(claimed_columns!(), extensions::sqlite_claimed_extensions!())];

impl SqliteStore {
    /// Runs a claim statement (its parameters bound by `bind`); reads every row on its own and
    /// fails the unreadable ones. Reads the claimed events' extensions in the same statement
    /// once the extension table is known to exist, with a statement of their own until then.
    pub(super) async fn claimed<'q>(
        &self,
        token: DateTime<Utc>,
        statement: ClaimStatement,
        bind: impl FnOnce(Query<'q>) -> Query<'q>,
    ) -> Result<Claim, StoreError> {
        let with_extensions = self.extension_table.known();
        let claim = bind(sqlx::query(statement[usize::from(with_extensions)]));
        let rows = {
            let _writing = self.writing().await?;
            let settlements = self.settlements.take();
            if settlements.is_empty() {
                claim.fetch_all(&self.pool).await?
            } else {
                // The settlements waiting for a turn go in the claim's transaction.
                let mut tx = self.pool.begin().await?;
                let written = async {
                    let updated = settlements.run(&mut tx).await?;
                    let rows = claim.fetch_all(&mut *tx).await?;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>((updated, rows))
                };
                match written.await {
                    Ok((updated, rows)) => {
                        settlements.tell(Some(updated));
                        rows
                    }
                    Err(err) => {
                        settlements.tell(None);
                        return Err(err.into());
                    }
                }
            }
        };
        let mut claim = Claim::from_rows(token, rows.iter().map(read_claimed).collect::<Result<Vec<_>, _>>()?);
        if let Some(rejections) = FencedWrites::rejecting(&claim, Fence::Lease(token)) {
            self.write(&rejections).await?;
        }
        if with_extensions {
            let extensions = rows.iter().map(extensions::sqlite_claimed_row).collect::<Result<Vec<_>, _>>()?;
            claim.attach_extensions(extensions.into_iter().flatten().collect());
        } else if !claim.events.is_empty() {
            extensions::read_sqlite(&mut *self.pool.acquire().await?, &self.extension_table, &mut claim).await?;
        }
        Ok(claim)
    }
}

/// Reads a claimed row. Django stores a UUID as 32 lowercase hex digits, and every write by
/// id looks for that form: a row whose id is in any other form could never be settled, so it
/// is rejected.
fn read_claimed(row: &SqliteRow) -> Result<ReadRow, StoreError> {
    let read = Reader::claimed(row)?;
    Ok(read.and_then(|stored| match hex_id(&stored.id) {
        Ok(hex) if hex == stored.id => Ok(stored),
        _ => {
            let problem = format!("not a UUID as Django stores it (32 hex digits): {}", quote(&stored.id));
            Err(RejectedRow::new(stored.id, stored.publisher_backend, &RowError::new("id", problem)))
        }
    }))
}
