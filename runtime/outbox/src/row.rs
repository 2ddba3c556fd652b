//! Outbox rows as the databases hand them over, and the one place they become events.
//!
//! A claimed row is read into a [`StoredRow`] ([`RowReader::claimed`]: its columns as the
//! database stores them, each database naming only its column types: JSON as text or already
//! parsed, times as text or already typed), and [`StoredRow::decode`] turns it into a
//! [`ClaimedEvent`], checking everything the relay relies on. A row that does not pass becomes
//! a [`RejectedRow`] naming the column and what is wrong with it; the store marks it `failed`
//! on its own (see [`OutboxBackend::claim`](super::OutboxBackend::claim)).
//! [`RowReader`] reads both these and the bookkeeping columns operators look at ([`RowState`]).

use std::marker::PhantomData;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use super::{Claim, ClaimedEvent, RowState, Status, StoreError};
use broadcaster_core::event::{OutboxEvent, Payload};

/// The columns a claim returns, which [`RowReader::claimed`] reads by name (a string literal,
/// for `concat!` into each database's claim statement).
macro_rules! claimed_columns {
    () => {
        "id, spec_version, event_type, source, subject, data_content_type, data_schema, data, created_at, \
         scheduled_at, retry_count, max_retries, publisher_backend, publisher_config"
    };
}
pub(crate) use claimed_columns;

/// The most characters of a bad value quoted in an error.
const QUOTED_CHARS: usize = 200;

/// A JSON column as the database hands it over.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonColumn {
    /// JSON text, not parsed yet (SQLite stores JSON as text).
    Text(String),
    /// Already parsed (PostgreSQL's `jsonb`).
    Value(Value),
}

/// A time column as the database hands it over.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeColumn {
    /// Text, not parsed yet (SQLite: naive UTC as Django writes it, or with an offset).
    Text(String),
    /// Already typed (PostgreSQL's `timestamptz`).
    Time(DateTime<Utc>),
}

/// A claimed row, column for column as stored, before any check.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// `id` as stored (SQLite: 32 hex digits; PostgreSQL: the `uuid` rendered hyphenated).
    pub id: String,
    /// `publisher_backend`: the publisher's name, empty for `default`.
    pub publisher_backend: String,
    /// `event_type`, the CloudEvent `type` (required).
    pub event_type: String,
    /// `source`, the CloudEvent `source` (required).
    pub source: String,
    /// `data`; `None` for SQL NULL.
    pub data: Option<JsonColumn>,
    /// `publisher_config`: an object of extra stream fields, or JSON null.
    pub publisher_config: JsonColumn,
    /// `spec_version`.
    pub spec_version: String,
    /// `subject`; empty means absent.
    pub subject: String,
    /// `data_content_type`; empty means absent.
    pub data_content_type: String,
    /// `data_schema`; empty means absent.
    pub data_schema: String,
    /// `created_at`: the CloudEvent `time`.
    pub created_at: TimeColumn,
    /// `scheduled_at`.
    pub scheduled_at: TimeColumn,
    /// `retry_count`.
    pub retry_count: i64,
    /// `max_retries`.
    pub max_retries: i64,
}

/// What is wrong with one column of a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {problem}")]
pub struct RowError {
    /// The column.
    pub column: &'static str,
    /// What is wrong with its value (quoting at most 200 characters of it).
    pub problem: String,
}

impl RowError {
    /// `column` holds a value that is wrong as `problem` says.
    pub fn new(column: &'static str, problem: impl Into<String>) -> Self {
        Self { column, problem: problem.into() }
    }
}

/// A claimed row the relay cannot read. The store marks it `failed` with `error` as its
/// `last_error` (its `retry_count` unchanged), fenced by the claim token like any settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// The row's id exactly as stored (it may not even be a UUID).
    pub id: String,
    /// Its `publisher_backend` as stored.
    pub publisher_backend: String,
    /// `last_error`: `cannot read this row: column …: …`, bounded in length.
    pub error: String,
}

impl RejectedRow {
    /// The row `id` (as stored) of `publisher_backend`, unreadable because of `error`.
    pub fn new(id: String, publisher_backend: String, error: &RowError) -> Self {
        Self { id, publisher_backend, error: format!("cannot read this row: {error}") }
    }
}

/// Reads column `name` of a database row; a value that does not decode as `T` is a
/// [`RowError`] on that column (the row fails alone), not an error of the whole claim.
pub fn read_column<'r, R, T>(row: &'r R, name: &'static str) -> Result<T, RowError>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    row.try_get(name).map_err(|err| {
        let problem = match err {
            sqlx::Error::ColumnDecode { source, .. } => format!("cannot be read ({source})"),
            other => format!("cannot be read ({other})"),
        };
        RowError::new(name, bounded(&problem))
    })
}

/// A Rust type a column of database `DB` decodes into.
pub trait ColumnType<'r, DB: sqlx::Database>: sqlx::Decode<'r, DB> + sqlx::Type<DB> {}

impl<'r, DB: sqlx::Database, T: sqlx::Decode<'r, DB> + sqlx::Type<DB>> ColumnType<'r, DB> for T {}

/// A claimed row as read: its columns, or its rejection when one cannot even be read.
pub type ReadRow = Result<StoredRow, RejectedRow>;

/// Reads outbox rows of one database: `R` is its row type, and `Id`, `Json`, `Time`, `Count`
/// the Rust types its `id`, JSON, time and count columns decode into (text columns decode
/// into `String`). Each database names its types once, e.g. SQLite's
/// `RowReader<'r, SqliteRow, String, String, String, i64>`.
#[derive(Debug)]
pub struct RowReader<'r, R, Id, Json, Time, Count>(PhantomData<(&'r R, Id, Json, Time, Count)>);

impl<'r, R, Id, Json, Time, Count> RowReader<'r, R, Id, Json, Time, Count>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: ColumnType<'r, R::Database>,
    Id: ColumnType<'r, R::Database> + ToString,
    Json: ColumnType<'r, R::Database> + Into<JsonColumn>,
    Time: ColumnType<'r, R::Database> + Into<TimeColumn>,
    Count: ColumnType<'r, R::Database> + Into<i64>,
{
    /// Reads the columns a claim returns (`claimed_columns!`). A column that does not decode
    /// rejects the row alone; only an `id` or `publisher_backend` that cannot be read (the row
    /// cannot be named) is an error of the whole claim.
    pub fn claimed(row: &'r R) -> Result<ReadRow, StoreError> {
        let id = row.try_get::<Id, _>("id")?.to_string();
        let publisher_backend: String = row.try_get("publisher_backend")?;
        let columns = (|| {
            Ok(StoredRow {
                id: id.clone(),
                publisher_backend: publisher_backend.clone(),
                event_type: read_column(row, "event_type")?,
                source: read_column(row, "source")?,
                data: read_column::<_, Option<Json>>(row, "data")?.map(Into::into),
                publisher_config: read_column::<_, Json>(row, "publisher_config")?.into(),
                spec_version: read_column(row, "spec_version")?,
                subject: read_column(row, "subject")?,
                data_content_type: read_column(row, "data_content_type")?,
                data_schema: read_column(row, "data_schema")?,
                created_at: read_column::<_, Time>(row, "created_at")?.into(),
                scheduled_at: read_column::<_, Time>(row, "scheduled_at")?.into(),
                retry_count: read_column::<_, Count>(row, "retry_count")?.into(),
                max_retries: read_column::<_, Count>(row, "max_retries")?.into(),
            })
        })();
        Ok(columns.map_err(|error: RowError| RejectedRow::new(id, publisher_backend, &error)))
    }

    /// Reads and checks the columns of a `find` (`id`, `status`, `publisher_backend`,
    /// `retry_count`, `max_retries`, `scheduled_at`, `published_at`, `last_error`): the id
    /// hyphenated when it is a UUID; [`StoreError::BadRow`] for an unknown status or a time
    /// that is not a time.
    pub fn state(row: &'r R) -> Result<RowState, StoreError> {
        let id = row.try_get::<Id, _>("id")?.to_string();
        let state = (|| {
            let status: String = read_column(row, "status")?;
            let status = Status::parse(&status)
                .ok_or_else(|| RowError::new("status", format!("unknown status {}", quote(&status))))?;
            let published_at: Option<Time> = read_column(row, "published_at")?;
            Ok(RowState {
                id: uuid::Uuid::parse_str(&id).map(|u| u.to_string()).unwrap_or_else(|_| id.clone()),
                status,
                publisher_backend: read_column(row, "publisher_backend")?,
                retry_count: count(read_column::<_, Count>(row, "retry_count")?.into()),
                max_retries: count(read_column::<_, Count>(row, "max_retries")?.into()),
                scheduled_at: read_column::<_, Time>(row, "scheduled_at")?.into().to_time("scheduled_at")?,
                published_at: published_at.map(|t| t.into().to_time("published_at")).transpose()?,
                last_error: read_column(row, "last_error")?,
            })
        })();
        state.map_err(|error: RowError| StoreError::BadRow { id, message: error.to_string() })
    }
}

impl StoredRow {
    /// The event, or the row's rejection naming the first column that is wrong: an `id` that
    /// is not a UUID, an empty `event_type` or `source` (a CloudEvent needs both), `data` that
    /// is not JSON, a `publisher_config` that is not a JSON object (or null), a time that is
    /// not a time.
    pub fn decode(mut self) -> Result<ClaimedEvent, RejectedRow> {
        self.take_event().map_err(|error| RejectedRow::new(self.id, self.publisher_backend, &error))
    }

    /// Checks the columns and moves them into the event (the id and publisher stay, for a
    /// rejection).
    fn take_event(&mut self) -> Result<ClaimedEvent, RowError> {
        let id = uuid::Uuid::parse_str(&self.id)
            .map_err(|_| RowError::new("id", format!("not a UUID: {}", quote(&self.id))))?;
        required("event_type", &self.event_type, "type")?;
        required("source", &self.source, "source")?;
        let created_at = self.created_at.to_time("created_at")?;
        let scheduled_at = self.scheduled_at.to_time("scheduled_at")?;
        let data = match self.data.take() {
            None => Payload::None,
            Some(json) => Payload::Json(json.into_value("data")?),
        };
        let config = std::mem::replace(&mut self.publisher_config, JsonColumn::Value(Value::Null));
        let publisher_config = match config.into_value("publisher_config")? {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(RowError::new(
                    "publisher_config",
                    format!("{}, not a JSON object of stream fields", json_kind(&other)),
                ));
            }
        };
        let event = OutboxEvent {
            id: id.to_string(),
            spec_version: std::mem::take(&mut self.spec_version),
            event_type: std::mem::take(&mut self.event_type),
            source: std::mem::take(&mut self.source),
            subject: std::mem::take(&mut self.subject),
            data_content_type: std::mem::take(&mut self.data_content_type),
            data_schema: std::mem::take(&mut self.data_schema),
            data,
            created_at: created_at.fixed_offset(),
            retry_count: count(self.retry_count),
            max_retries: count(self.max_retries),
            publisher_backend: self.publisher_backend.clone(),
            publisher_config,
            extensions: Vec::new(),
        };
        Ok(ClaimedEvent { event, scheduled_at })
    }
}

impl Claim {
    /// The claim of `rows` (as each database read them) under `token`: every row decoded on
    /// its own, the events in due order (`scheduled_at`, then `created_at`), the rows that
    /// could not be read in `rejected`.
    pub fn from_rows(token: DateTime<Utc>, rows: impl IntoIterator<Item = ReadRow>) -> Self {
        let mut claim = Claim { token, events: Vec::new(), rejected: Vec::new() };
        for row in rows {
            match row.and_then(StoredRow::decode) {
                Ok(event) => claim.events.push(event),
                Err(rejected) => claim.rejected.push(rejected),
            }
        }
        // `UPDATE … RETURNING` gives rows in no particular order.
        claim.events.sort_by_key(|e| (e.scheduled_at, e.event.created_at));
        claim
    }
}

impl From<String> for JsonColumn {
    fn from(text: String) -> Self {
        JsonColumn::Text(text)
    }
}

impl From<sqlx::types::Json<Value>> for JsonColumn {
    fn from(json: sqlx::types::Json<Value>) -> Self {
        JsonColumn::Value(json.0)
    }
}

impl From<String> for TimeColumn {
    fn from(text: String) -> Self {
        TimeColumn::Text(text)
    }
}

impl From<DateTime<Utc>> for TimeColumn {
    fn from(time: DateTime<Utc>) -> Self {
        TimeColumn::Time(time)
    }
}

impl JsonColumn {
    fn into_value(self, column: &'static str) -> Result<Value, RowError> {
        match self {
            JsonColumn::Value(value) => Ok(value),
            JsonColumn::Text(text) => {
                serde_json::from_str(&text).map_err(|err| RowError::new(column, format!("not JSON ({err})")))
            }
        }
    }
}

impl TimeColumn {
    fn to_time(&self, column: &'static str) -> Result<DateTime<Utc>, RowError> {
        match self {
            TimeColumn::Time(time) => Ok(*time),
            TimeColumn::Text(text) => {
                parse_time(text).ok_or_else(|| RowError::new(column, format!("not a time: {}", quote(text))))
            }
        }
    }
}

/// Reads a time as Django (or anyone else) writes it as text: naive UTC with a space or a
/// `T`, with or without a fraction, or with an offset.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .into_iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| t.and_utc())
}

fn required(column: &'static str, value: &str, attribute: &str) -> Result<(), RowError> {
    if value.is_empty() {
        return Err(RowError::new(column, format!("empty; a CloudEvent needs a {attribute}")));
    }
    Ok(())
}

/// A count column as a `u32` (the tables' CHECKs keep them non-negative).
fn count(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "JSON null",
        Value::Bool(_) => "a JSON boolean",
        Value::Number(_) => "a JSON number",
        Value::String(_) => "a JSON string",
        Value::Array(_) => "a JSON array",
        Value::Object(_) => "a JSON object",
    }
}

/// `value` in double quotes with Rust escapes, cut after [`QUOTED_CHARS`] characters (a
/// hand-written row may hold megabytes; an error message must not).
pub(crate) fn quote(value: &str) -> String {
    let mut escaped = value.chars().flat_map(char::escape_debug);
    let head: String = escaped.by_ref().take(QUOTED_CHARS).collect();
    match escaped.next() {
        None => format!("\"{head}\""),
        Some(_) => format!("\"{head}\"… ({} characters)", value.chars().count()),
    }
}

/// `text` cut after a few hundred characters.
fn bounded(text: &str) -> String {
    const MOST: usize = 2 * QUOTED_CHARS;
    match text.char_indices().nth(MOST) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests;
