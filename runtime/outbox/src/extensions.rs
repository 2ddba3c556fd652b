//! `broadcaster_event_extensions`: the CloudEvents extension attributes of outbox events
//! (`traceparent`, …), one row per (event, name), beside Django's `outbox_events`, which has no
//! column for them and stays exactly as Django makes it.
//!
//! - Written in the transaction that inserts the event (HTTP ingest's group commit, `broadcaster
//!   publish`, [`super::enqueue`]), one statement for a whole group; an event without
//!   extensions writes nothing here.
//! - Read once per claim, for the claimed ids only: one indexed statement (the primary key
//!   leads with `event_id`), answered from the index when no claimed event has any. On SQLite,
//!   once the table is known to exist, by the claim statement itself (a subquery per claimed
//!   row, `sqlite_claimed_extensions!`): one statement fewer on the relay's critical path.
//! - Removed with their event: `event_id` references `outbox_events (id) ON DELETE CASCADE`.
//!   PostgreSQL always enforces it; SQLite on connections with `PRAGMA foreign_keys = ON`,
//!   which Django and Broadcaster (sqlx) both turn on.
//!
//! The DDL is in [`super::schema`]; `broadcaster migrate` creates the table when missing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use uuid::Uuid;

use super::new_rows::Columns;
use super::{Claim, StoreError};

/// The table's name.
pub const TABLE: &str = "broadcaster_event_extensions";

/// SQLite rows per multi-row insert (3 parameters each).
const SQLITE_ROWS_PER_INSERT: usize = 300;

/// The (event id, name, value) rows of `events`, in order.
fn rows<'c>(events: &'c [&'c Columns<'c>]) -> impl Iterator<Item = (Uuid, &'c str, &'c str)> + 'c {
    events
        .iter()
        .flat_map(|row| row.event.extensions.iter().map(|(name, value)| (row.id, name.as_str(), value.as_str())))
}

/// What an insert's error means: a missing table is `broadcaster migrate` not run since this
/// version (only events with extensions need it); anything else is the database's.
fn insert_error(err: sqlx::Error) -> StoreError {
    let missing = match &err {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("42P01") || db.message().contains(&format!("no such table: {TABLE}"))
        }
        _ => false,
    };
    if missing { StoreError::MissingExtensionTable } else { StoreError::Database(err) }
}

/// Inserts the extension attributes of `events` (their rows inserted already, in the same
/// transaction) on SQLite; nothing when none has any.
pub(crate) async fn insert_sqlite(
    conn: &mut sqlx::SqliteConnection,
    events: &[&Columns<'_>],
) -> Result<(), StoreError> {
    let rows: Vec<(Uuid, &str, &str)> = rows(events).collect();
    for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
        let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let statement = format!("INSERT INTO {TABLE} (event_id, name, value) VALUES {values}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement));
        for (id, name, value) in chunk {
            query = query.bind(id.simple().to_string()).bind(*name).bind(*value);
        }
        query.execute(&mut *conn).await.map_err(insert_error)?;
    }
    Ok(())
}

/// The same on PostgreSQL, in one statement.
pub(crate) async fn insert_postgres(conn: &mut sqlx::PgConnection, events: &[&Columns<'_>]) -> Result<(), StoreError> {
    let rows: Vec<(Uuid, &str, &str)> = rows(events).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let (ids, names, values): (Vec<Uuid>, Vec<&str>, Vec<&str>) =
        rows.into_iter().fold(Default::default(), |(mut i, mut n, mut v), (id, name, value)| {
            i.push(id);
            n.push(name);
            v.push(value);
            (i, n, v)
        });
    sqlx::query(
        "INSERT INTO broadcaster_event_extensions (event_id, name, value) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[])",
    )
    .bind(ids)
    .bind(names)
    .bind(values)
    .execute(conn)
    .await
    .map_err(insert_error)?;
    Ok(())
}

/// The extension rows of the ids of the JSON list `?1` (as stored: 32 hex digits).
pub(crate) const SQLITE_READ: &str = "SELECT event_id, name, value FROM broadcaster_event_extensions \
     WHERE event_id IN (SELECT value FROM json_each(?1)) ORDER BY event_id, name";

/// The extension rows of the ids `$1`.
pub(crate) const POSTGRES_READ: &str = "SELECT event_id, name, value FROM broadcaster_event_extensions \
     WHERE event_id = ANY($1) ORDER BY event_id, name";

/// Whether the table exists, `SELECT`ed as one boolean.
pub(crate) const SQLITE_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'broadcaster_event_extensions')";
/// The same on PostgreSQL (the current search path).
pub(crate) const POSTGRES_EXISTS: &str = "SELECT to_regclass('broadcaster_event_extensions') IS NOT NULL";

/// Whether a store has seen the table. Until it has, each claim asks the catalog (one cheap
/// statement) instead of reading extensions, so a relay on a table `migrate` has not touched
/// since this version keeps claiming, and finds the table once someone runs `migrate`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TablePresence(Arc<AtomicBool>);

impl TablePresence {
    /// Whether the table was seen already (no query).
    pub fn known(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether the table is known to exist; `check` asks the database when not known yet.
    pub async fn present<F>(&self, check: F) -> Result<bool, StoreError>
    where
        F: std::future::Future<Output = Result<bool, sqlx::Error>>,
    {
        if self.known() {
            return Ok(true);
        }
        let present = check.await?;
        if present {
            self.0.store(true, Ordering::Relaxed);
        }
        Ok(present)
    }
}

impl Claim {
    /// The ids of the claimed events, for reading their extensions.
    pub(crate) fn event_ids(&self) -> Vec<Uuid> {
        self.events.iter().filter_map(|e| Uuid::parse_str(&e.event.id).ok()).collect()
    }

    /// Gives each claimed event its extension attributes from `rows` (event id, name, value),
    /// sorted by name.
    pub(crate) fn attach_extensions(&mut self, rows: Vec<(Uuid, String, String)>) {
        if rows.is_empty() {
            return;
        }
        let mut by_event: HashMap<Uuid, Vec<(String, String)>> = HashMap::new();
        for (id, name, value) in rows {
            by_event.entry(id).or_default().push((name, value));
        }
        for claimed in &mut self.events {
            if let Some(mut extensions) = Uuid::parse_str(&claimed.event.id).ok().and_then(|id| by_event.remove(&id)) {
                broadcaster_core::extension_attributes::sort(&mut extensions);
                claimed.event.extensions = extensions;
            }
        }
    }
}

/// Reads the extensions of `claim`'s events on SQLite (when the table exists) and attaches
/// them; rows stored with an id that is not a UUID are skipped.
pub(crate) async fn read_sqlite(
    conn: &mut sqlx::SqliteConnection,
    presence: &TablePresence,
    claim: &mut Claim,
) -> Result<(), StoreError> {
    if claim.events.is_empty() {
        return Ok(());
    }
    let exists =
        async { Ok::<_, sqlx::Error>(sqlx::query_scalar::<_, i64>(SQLITE_EXISTS).fetch_one(&mut *conn).await? > 0) };
    if !presence.present(exists).await? {
        return Ok(());
    }
    let ids: Vec<serde_json::Value> =
        claim.event_ids().iter().map(|id| serde_json::Value::String(id.simple().to_string())).collect();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as(SQLITE_READ).bind(serde_json::Value::Array(ids).to_string()).fetch_all(&mut *conn).await?;
    claim.attach_extensions(
        rows.into_iter().filter_map(|(id, name, value)| Some((Uuid::parse_str(&id).ok()?, name, value))).collect(),
    );
    Ok(())
}

/// A claim statement's extra column on SQLite once the table is known to exist: each claimed
/// row's extensions as a JSON list of `[name, value]` pairs (`[]` for none), so the claim needs
/// no second statement (a string literal, for `concat!`).
macro_rules! sqlite_claimed_extensions {
    () => {
        ", (SELECT json_group_array(json_array(name, value)) FROM broadcaster_event_extensions \
         WHERE event_id = outbox_events.id) AS broadcaster_extensions"
    };
}
pub(crate) use sqlite_claimed_extensions;

/// Reads the column of [`sqlite_claimed_extensions`] of a claimed row, as
/// [`Claim::attach_extensions`] takes them; nothing for a row whose id is not a UUID.
pub(crate) fn sqlite_claimed_row(row: &sqlx::sqlite::SqliteRow) -> Result<Vec<(Uuid, String, String)>, StoreError> {
    use sqlx::Row;
    let (id, pairs): (String, Option<String>) = (row.try_get("id")?, row.try_get("broadcaster_extensions")?);
    let (Ok(id), Some(pairs)) = (Uuid::parse_str(&id), pairs) else {
        return Ok(Vec::new());
    };
    let pairs: Vec<(String, String)> = serde_json::from_str(&pairs)
        .map_err(|err| StoreError::Database(sqlx::Error::Decode(format!("{TABLE} of event {id}: {err}").into())))?;
    Ok(pairs.into_iter().map(|(name, value)| (id, name, value)).collect())
}

/// The same on PostgreSQL.
pub(crate) async fn read_postgres(
    conn: &mut sqlx::PgConnection,
    presence: &TablePresence,
    claim: &mut Claim,
) -> Result<(), StoreError> {
    if claim.events.is_empty() {
        return Ok(());
    }
    let exists = sqlx::query_scalar::<_, bool>(POSTGRES_EXISTS).fetch_one(&mut *conn);
    if !presence.present(exists).await? {
        return Ok(());
    }
    let rows: Vec<(Uuid, String, String)> =
        sqlx::query_as(POSTGRES_READ).bind(claim.event_ids()).fetch_all(&mut *conn).await?;
    claim.attach_extensions(rows);
    Ok(())
}
