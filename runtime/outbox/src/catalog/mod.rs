//! The tenants' catalog: components, publishers (every version) and tokens defined through the
//! admin API or `broadcaster tenants`, stored in the outbox database beside Django's table, and
//! the numbered changes every relay follows ([`Catalog::changes_since`]).
//!
//! One statement set for both databases (text times, text JSON, `$n` parameters): each method
//! is written once and runs on the pool of either ([`on_database!`], [`write_transaction!`]).
//! Writes are serialized (SQLite's write lock; an advisory lock on PostgreSQL), so changes are
//! numbered in commit order and a follower that has read up to change N never misses one.
//! What the definitions mean is not this crate's business: it stores them as JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::{PgPool, SqlitePool};

mod feed;
pub mod schema;

pub use feed::{ChangeFeed, POSTGRES_POLL, SQLITE_LEAST_GAP, SQLITE_POLL};
#[cfg(test)]
mod tests;

/// The database a catalog lives in: the outbox's own pools.
#[derive(Debug, Clone)]
pub enum CatalogDatabase {
    /// A SQLite file, and the lock its store takes for every write (this process's writers
    /// queue there rather than on SQLite's busy handler).
    Sqlite {
        /// The store's pool.
        pool: SqlitePool,
        /// The store's writer turn.
        writer: crate::sqlite::write_turns::WriteTurns,
        /// The database file (none in memory): the change feed watches it.
        file: Option<std::path::PathBuf>,
    },
    /// A PostgreSQL database.
    Postgres(PgPool),
}

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog's tables are not there: the database predates them.
    #[error("the outbox database has no tenant catalog (table broadcaster_publishers): run `broadcaster migrate`")]
    Missing,
    /// The database failed.
    #[error("outbox database: {0}")]
    Database(sqlx::Error),
    /// `If-Match` named another version than the one in force.
    #[error("publisher `{name}` is at version {current} (not {expected}): read it again and retry")]
    VersionConflict {
        /// The publisher.
        name: String,
        /// The version the writer expected.
        expected: i64,
        /// The version in force (0: none).
        current: i64,
    },
    /// A definition names a component that is not stored.
    #[error("no component with SHA-256 {0} is stored: upload it first (PUT /v1/admin/components)")]
    ComponentMissing(String),
    /// A token of that name exists.
    #[error("a token named `{0}` exists: revoke it first")]
    TokenExists(String),
    /// A stored row cannot be read (JSON that does not parse).
    #[error("catalog row {what}: {message}")]
    BadRow {
        /// Which row.
        what: String,
        /// What is wrong.
        message: String,
    },
}

impl From<sqlx::Error> for CatalogError {
    fn from(err: sqlx::Error) -> Self {
        let missing = match &err {
            sqlx::Error::Database(db) => {
                let message = db.message();
                // SQLite: "no such table"; PostgreSQL: undefined_table (42P01).
                message.contains("no such table") || db.code().as_deref() == Some("42P01")
            }
            _ => false,
        };
        if missing { Self::Missing } else { Self::Database(err) }
    }
}

/// What a change was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A publisher was put, rolled back or removed.
    Publisher,
    /// A token was made or revoked.
    Token,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Publisher => "publisher",
            Self::Token => "token",
        }
    }
}

/// One change, as relays follow them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogChange {
    /// Its number: changes are numbered in the order they committed.
    pub seq: i64,
    /// Publisher or token.
    pub kind: ChangeKind,
    /// Which one.
    pub name: String,
}

/// A stored component, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentInfo {
    /// The SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// How many bytes.
    pub size: u64,
    /// The contract version it implements (`0.2.0`).
    pub contract: String,
    /// What it imports.
    pub imports: Vec<String>,
}

/// A publisher in force.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPublisher {
    /// Its name.
    pub name: String,
    /// The version in force.
    pub version: i64,
    /// Its definition (the API's JSON).
    pub definition: Value,
    /// The component it runs (SHA-256), if any.
    pub component: Option<String>,
    /// When this version was put in force.
    pub updated_at: DateTime<Utc>,
    /// Who put it (the admin token's name, or `cli:<user>`).
    pub updated_by: String,
}

/// One version of a publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherVersion {
    /// The version.
    pub version: i64,
    /// Its definition.
    pub definition: Value,
    /// The component it runs, if any.
    pub component: Option<String>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Who wrote it.
    pub created_by: String,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new publisher, at this version.
    Created(i64),
    /// A new version of a publisher.
    Changed(i64),
    /// The same definition was in force: nothing written.
    Unchanged(i64),
}

impl PutOutcome {
    /// The version in force after the put.
    pub fn version(self) -> i64 {
        match self {
            Self::Created(v) | Self::Changed(v) | Self::Unchanged(v) => v,
        }
    }
}

/// A token made through the catalog: its hash, never the token.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredToken {
    /// Its name.
    pub name: String,
    /// The SHA-256 of the token, lowercase hex.
    pub sha256: String,
    /// The publisher patterns it may send to.
    pub publishers: Vec<String>,
    /// Events per second, on average.
    pub rate: Option<f64>,
    /// Events at once above the rate.
    pub burst: Option<u32>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Who made it.
    pub created_by: String,
}

/// Runs `$body` with `$pool` bound to the pool of either database.
macro_rules! on_database {
    ($catalog:expr, $pool:ident => $body:expr) => {
        match &$catalog.database {
            CatalogDatabase::Sqlite { pool: $pool, .. } => $body,
            CatalogDatabase::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` in a write transaction `$tx` (one writer at a time), commits when it
/// completes; an early `return` or `?` in it rolls back. On PostgreSQL the commit notifies
/// [`schema::POSTGRES_CHANNEL`].
macro_rules! write_transaction {
    ($catalog:expr, $tx:ident => $body:block) => {
        match &$catalog.database {
            CatalogDatabase::Sqlite { pool, writer, .. } => {
                let _turn = writer.take().await;
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let answer = $body;
                $tx.commit().await?;
                answer
            }
            CatalogDatabase::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(schema::POSTGRES_WRITE_LOCK)
                    .execute(&mut *$tx)
                    .await?;
                let answer = $body;
                sqlx::query(schema::POSTGRES_NOTIFY).execute(&mut *$tx).await?;
                $tx.commit().await?;
                answer
            }
        }
    };
}

/// Records a change in the open transaction.
macro_rules! record_change {
    ($tx:ident, $kind:expr, $name:expr, $now:expr) => {
        sqlx::query("INSERT INTO broadcaster_catalog_changes (kind, name, at) VALUES ($1, $2, $3)")
            .bind($kind.as_str())
            .bind($name)
            .bind(time_text($now))
            .execute(&mut *$tx)
            .await?
    };
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(what: &str, text: &str) -> Result<DateTime<Utc>, CatalogError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| CatalogError::BadRow { what: what.to_string(), message: format!("time {text:?}: {err}") })
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, CatalogError> {
    serde_json::from_str(text).map_err(|err| CatalogError::BadRow { what: what.to_string(), message: err.to_string() })
}

type PublisherRow = (String, i64, String, Option<String>, String, String);
type VersionRow = (i64, String, Option<String>, String, String);
type TokenRow = (String, String, String, Option<f64>, Option<i64>, String, String);

fn publisher_of(row: PublisherRow) -> Result<StoredPublisher, CatalogError> {
    let (name, version, definition, component, updated_at, updated_by) = row;
    let what = format!("broadcaster_publishers {name:?}");
    Ok(StoredPublisher {
        definition: parse_json(&what, &definition)?,
        updated_at: parse_time(&what, &updated_at)?,
        name,
        version,
        component,
        updated_by,
    })
}

fn version_of(name: &str, row: VersionRow) -> Result<PublisherVersion, CatalogError> {
    let (version, definition, component, created_at, created_by) = row;
    let what = format!("broadcaster_publisher_versions {name:?} {version}");
    Ok(PublisherVersion {
        definition: parse_json(&what, &definition)?,
        created_at: parse_time(&what, &created_at)?,
        version,
        component,
        created_by,
    })
}

fn token_of(row: TokenRow) -> Result<StoredToken, CatalogError> {
    let (name, sha256, publishers, rate, burst, created_at, created_by) = row;
    let what = format!("broadcaster_tokens {name:?}");
    Ok(StoredToken {
        publishers: parse_json(&what, &publishers)?,
        created_at: parse_time(&what, &created_at)?,
        burst: burst.map(|b| u32::try_from(b.max(0)).unwrap_or(u32::MAX)),
        name,
        sha256,
        rate,
        created_by,
    })
}

/// The catalog of one outbox database.
#[derive(Debug, Clone)]
pub struct Catalog {
    database: CatalogDatabase,
}

impl Catalog {
    /// The catalog in `database`.
    pub fn new(database: CatalogDatabase) -> Self {
        Self { database }
    }

    /// Whether the catalog's tables are there (`broadcaster migrate` made them).
    pub async fn is_present(&self) -> Result<bool, CatalogError> {
        let probe = "SELECT seq FROM broadcaster_catalog_changes WHERE seq < 0";
        let found: Result<Vec<i64>, sqlx::Error> =
            on_database!(self, pool => sqlx::query_scalar(probe).fetch_all(pool).await);
        match found.map_err(CatalogError::from) {
            Ok(_) => Ok(true),
            Err(CatalogError::Missing) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Stores a component's bytes under their SHA-256 (`sha256`, lowercase hex, computed by
    /// the caller from `bytes`); `true` when stored now, `false` when it was there.
    pub async fn put_component(
        &self,
        info: &ComponentInfo,
        bytes: &[u8],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let imports = serde_json::to_string(&info.imports).expect("strings serialize");
        let statement = "INSERT INTO broadcaster_components (sha256, bytes, size, contract, imports, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (sha256) DO NOTHING";
        let inserted = write_transaction!(self, tx => {
            sqlx::query(statement)
                .bind(&info.sha256)
                .bind(bytes)
                .bind(i64::try_from(bytes.len()).unwrap_or(i64::MAX))
                .bind(&info.contract)
                .bind(imports)
                .bind(time_text(now))
                .bind(by)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// A stored component's bytes.
    pub async fn component_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        let statement = "SELECT bytes FROM broadcaster_components WHERE sha256 = $1";
        Ok(on_database!(self, pool => sqlx::query_scalar(statement).bind(sha256).fetch_optional(pool).await)?)
    }

    /// A stored component's description.
    pub async fn component(&self, sha256: &str) -> Result<Option<ComponentInfo>, CatalogError> {
        let statement = "SELECT sha256, size, contract, imports FROM broadcaster_components WHERE sha256 = $1";
        let row: Option<(String, i64, String, String)> =
            on_database!(self, pool => sqlx::query_as(statement).bind(sha256).fetch_optional(pool).await)?;
        row.map(|(sha256, size, contract, imports)| {
            Ok(ComponentInfo {
                imports: parse_json(&format!("broadcaster_components {sha256}"), &imports)?,
                sha256,
                size: size.unsigned_abs(),
                contract,
            })
        })
        .transpose()
    }

    /// Puts `definition` in force for publisher `name` as a new version, unless the same
    /// definition is in force. `if_version`: refuse unless the version in force is this one
    /// (0: no publisher of that name is in force). A `component` must be stored.
    pub async fn put_publisher(
        &self,
        name: &str,
        definition: &Value,
        component: Option<&str>,
        if_version: Option<i64>,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<PutOutcome, CatalogError> {
        let text = definition.to_string();
        write_transaction!(self, tx => {
            if let Some(sha) = component {
                let found: Option<String> = sqlx::query_scalar("SELECT sha256 FROM broadcaster_components WHERE sha256 = $1")
                    .bind(sha)
                    .fetch_optional(&mut *tx)
                    .await?;
                if found.is_none() {
                    return Err(CatalogError::ComponentMissing(sha.to_string()));
                }
            }
            let current: Option<(i64, String)> =
                sqlx::query_as("SELECT version, definition FROM broadcaster_publishers WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let in_force = current.as_ref().map_or(0, |(version, _)| *version);
            if let Some(expected) = if_version
                && expected != in_force
            {
                return Err(CatalogError::VersionConflict { name: name.to_string(), expected, current: in_force });
            }
            if let Some((version, was)) = &current
                && serde_json::from_str::<Value>(was).ok().as_ref() == Some(definition)
            {
                return Ok(PutOutcome::Unchanged(*version));
            }
            let last: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM broadcaster_publisher_versions WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            let version = last.unwrap_or(0) + 1;
            sqlx::query(
                "INSERT INTO broadcaster_publisher_versions (name, version, definition, component, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(name)
            .bind(version)
            .bind(&text)
            .bind(component)
            .bind(time_text(now))
            .bind(by)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO broadcaster_publishers (name, version, definition, component, updated_at, updated_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
                 definition = excluded.definition, component = excluded.component, updated_at = excluded.updated_at, \
                 updated_by = excluded.updated_by",
            )
            .bind(name)
            .bind(version)
            .bind(&text)
            .bind(component)
            .bind(time_text(now))
            .bind(by)
            .execute(&mut *tx)
            .await?;
            record_change!(tx, ChangeKind::Publisher, name, now);
            Ok(if current.is_some() { PutOutcome::Changed(version) } else { PutOutcome::Created(version) })
        })
    }

    /// Puts many definitions in force at once, in one transaction (`broadcaster tenants
    /// import`): each `(name, definition, component)` not already in force as given becomes
    /// that name's next version, with a change recorded for it. Checking them is the caller's
    /// job, as for [`Catalog::put_publisher`]; every component must be stored. Returns how
    /// many were written (the others were in force already).
    pub async fn import_publishers(
        &self,
        publishers: &[(String, Value, Option<String>)],
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, CatalogError> {
        /// Rows per statement: 6 parameters each, well below both databases' limits.
        const ROWS: usize = 1000;
        let at = time_text(now);
        write_transaction!(self, tx => {
            let last: Vec<(String, i64)> =
                sqlx::query_as("SELECT name, MAX(version) FROM broadcaster_publisher_versions GROUP BY name")
                    .fetch_all(&mut *tx)
                    .await?;
            let last: std::collections::HashMap<String, i64> = last.into_iter().collect();
            let in_force: Vec<(String, String)> =
                sqlx::query_as("SELECT name, definition FROM broadcaster_publishers").fetch_all(&mut *tx).await?;
            let in_force: std::collections::HashMap<String, String> = in_force.into_iter().collect();
            let mut written: Vec<(&str, i64, String, Option<&str>)> = Vec::new();
            for (name, definition, component) in publishers {
                let same = in_force
                    .get(name)
                    .and_then(|was| serde_json::from_str::<Value>(was).ok())
                    .is_some_and(|was| &was == definition);
                if !same {
                    let version = last.get(name).copied().unwrap_or(0) + 1;
                    written.push((name, version, definition.to_string(), component.as_deref()));
                }
            }
            for chunk in written.chunks(ROWS) {
                let mut versions = sqlx::QueryBuilder::new(
                    "INSERT INTO broadcaster_publisher_versions (name, version, definition, component, created_at, created_by) ",
                );
                versions.push_values(chunk, |mut row, (name, version, definition, component)| {
                    row.push_bind(*name).push_bind(*version).push_bind(definition.clone()).push_bind(*component);
                    row.push_bind(at.clone()).push_bind(by);
                });
                versions.build().execute(&mut *tx).await?;
                let mut current = sqlx::QueryBuilder::new(
                    "INSERT INTO broadcaster_publishers (name, version, definition, component, updated_at, updated_by) ",
                );
                current.push_values(chunk, |mut row, (name, version, definition, component)| {
                    row.push_bind(*name).push_bind(*version).push_bind(definition.clone()).push_bind(*component);
                    row.push_bind(at.clone()).push_bind(by);
                });
                current.push(
                    " ON CONFLICT (name) DO UPDATE SET version = excluded.version, definition = excluded.definition, \
                     component = excluded.component, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                );
                current.build().execute(&mut *tx).await?;
                let mut changes = sqlx::QueryBuilder::new("INSERT INTO broadcaster_catalog_changes (kind, name, at) ");
                changes.push_values(chunk, |mut row, (name, ..)| {
                    row.push_bind(ChangeKind::Publisher.as_str()).push_bind(*name).push_bind(at.clone());
                });
                changes.build().execute(&mut *tx).await?;
            }
            Ok(written.len() as u64)
        })
    }

    /// Removes publisher `name` from force (its versions stay); the version removed, or
    /// `None` when none was in force.
    pub async fn remove_publisher(&self, name: &str, now: DateTime<Utc>) -> Result<Option<i64>, CatalogError> {
        write_transaction!(self, tx => {
            let removed: Option<i64> = sqlx::query_scalar("DELETE FROM broadcaster_publishers WHERE name = $1 RETURNING version")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            if removed.is_none() {
                return Ok(None);
            }
            record_change!(tx, ChangeKind::Publisher, name, now);
            Ok(removed)
        })
    }

    /// Whether the catalog has ever defined publisher `name` (in force now, or removed with its
    /// versions kept).
    pub async fn knows(&self, name: &str) -> Result<bool, CatalogError> {
        let statement = "SELECT version FROM broadcaster_publisher_versions WHERE name = $1 LIMIT 1";
        let found: Option<i64> =
            on_database!(self, pool => sqlx::query_scalar(statement).bind(name).fetch_optional(pool).await)?;
        Ok(found.is_some())
    }

    /// Publisher `name` as in force.
    pub async fn publisher(&self, name: &str) -> Result<Option<StoredPublisher>, CatalogError> {
        let statement = "SELECT name, version, definition, component, updated_at, updated_by FROM broadcaster_publishers WHERE name = $1";
        let row: Option<PublisherRow> =
            on_database!(self, pool => sqlx::query_as(statement).bind(name).fetch_optional(pool).await)?;
        row.map(publisher_of).transpose()
    }

    /// Publishers in force by name, after `after`, at most `limit` of them.
    pub async fn publishers(&self, after: Option<&str>, limit: u32) -> Result<Vec<StoredPublisher>, CatalogError> {
        let statement = "SELECT name, version, definition, component, updated_at, updated_by FROM broadcaster_publishers WHERE name > $1 ORDER BY name LIMIT $2";
        let rows: Vec<PublisherRow> = on_database!(self, pool => sqlx::query_as(statement)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(publisher_of).collect()
    }

    /// Every version of publisher `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<PublisherVersion>, CatalogError> {
        let statement = "SELECT version, definition, component, created_at, created_by FROM broadcaster_publisher_versions WHERE name = $1 ORDER BY version";
        let rows: Vec<VersionRow> =
            on_database!(self, pool => sqlx::query_as(statement).bind(name).fetch_all(pool).await)?;
        rows.into_iter().map(|row| version_of(name, row)).collect()
    }

    /// Makes a token; [`CatalogError::TokenExists`] when the name is taken.
    pub async fn put_token(&self, token: &StoredToken) -> Result<(), CatalogError> {
        let publishers = serde_json::to_string(&token.publishers).expect("strings serialize");
        write_transaction!(self, tx => {
            let taken: Option<String> = sqlx::query_scalar("SELECT name FROM broadcaster_tokens WHERE name = $1")
                .bind(&token.name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(CatalogError::TokenExists(token.name.clone()));
            }
            sqlx::query("INSERT INTO broadcaster_tokens (name, sha256, publishers, rate, burst, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&token.name)
                .bind(&token.sha256)
                .bind(publishers)
                .bind(token.rate)
                .bind(token.burst.map(i64::from))
                .bind(time_text(token.created_at))
                .bind(&token.created_by)
                .execute(&mut *tx)
                .await?;
            record_change!(tx, ChangeKind::Token, &token.name, token.created_at);
            Ok(())
        })
    }

    /// Revokes token `name`; `false` when there is none.
    pub async fn remove_token(&self, name: &str, now: DateTime<Utc>) -> Result<bool, CatalogError> {
        write_transaction!(self, tx => {
            let removed = sqlx::query("DELETE FROM broadcaster_tokens WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if removed == 0 {
                return Ok(false);
            }
            record_change!(tx, ChangeKind::Token, name, now);
            Ok(true)
        })
    }

    /// Every token, by name.
    pub async fn tokens(&self) -> Result<Vec<StoredToken>, CatalogError> {
        let statement = "SELECT name, sha256, publishers, rate, burst, created_at, created_by FROM broadcaster_tokens ORDER BY name";
        let rows: Vec<TokenRow> = on_database!(self, pool => sqlx::query_as(statement).fetch_all(pool).await)?;
        rows.into_iter().map(token_of).collect()
    }

    /// The number of the last change (0: none yet).
    pub async fn last_change(&self) -> Result<i64, CatalogError> {
        let statement = "SELECT MAX(seq) FROM broadcaster_catalog_changes";
        let last: Option<i64> = on_database!(self, pool => sqlx::query_scalar(statement).fetch_one(pool).await)?;
        Ok(last.unwrap_or(0))
    }

    /// The changes after `seq`, oldest first, at most `limit`.
    pub async fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<CatalogChange>, CatalogError> {
        let statement = "SELECT seq, kind, name FROM broadcaster_catalog_changes WHERE seq > $1 ORDER BY seq LIMIT $2";
        let rows: Vec<(i64, String, String)> = on_database!(self, pool => sqlx::query_as(statement).bind(seq).bind(i64::from(limit)).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(seq, kind, name)| CatalogChange {
                seq,
                kind: if kind == ChangeKind::Token.as_str() { ChangeKind::Token } else { ChangeKind::Publisher },
                name,
            })
            .collect())
    }

    /// Keeps the newest `keep` versions of each publisher (and the one in force), and removes
    /// the components no version refers to. Returns (versions, components) removed.
    pub async fn prune_versions(&self, keep: u32) -> Result<(u64, u64), CatalogError> {
        write_transaction!(self, tx => {
            let versions = sqlx::query(
                "DELETE FROM broadcaster_publisher_versions WHERE version <= \
                 (SELECT MAX(v.version) FROM broadcaster_publisher_versions v WHERE v.name = broadcaster_publisher_versions.name) - $1 \
                 AND NOT EXISTS (SELECT 1 FROM broadcaster_publishers p WHERE p.name = broadcaster_publisher_versions.name \
                 AND p.version = broadcaster_publisher_versions.version)",
            )
            .bind(i64::from(keep))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let components = sqlx::query(
                "DELETE FROM broadcaster_components WHERE NOT EXISTS (SELECT 1 FROM broadcaster_publisher_versions v \
                 WHERE v.component = broadcaster_components.sha256) AND NOT EXISTS (SELECT 1 FROM broadcaster_publishers p \
                 WHERE p.component = broadcaster_components.sha256)",
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok((versions, components))
        })
    }
}
