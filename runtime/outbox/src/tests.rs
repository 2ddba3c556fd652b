//! The crate's own tests of what is shared by both databases, and the scratch PostgreSQL
//! database the tests that need one create ([`ScratchDatabase`]).

use sqlx::Connection;

use super::*;
use broadcaster_core::event::now_micros;

/// The PostgreSQL server the tests use (trust authentication; `scripts/test` sets it up).
pub(crate) const POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A PostgreSQL database of one test's own on [`POSTGRES_SERVER`], created empty (after
/// dropping what a failed run may have left of it) and dropped by [`remove`](Self::remove).
pub(crate) struct ScratchDatabase {
    server: sqlx::PgConnection,
    name: String,
}

impl ScratchDatabase {
    /// Creates the database `broadcaster_<purpose>_<process id>`.
    pub async fn create(purpose: &str) -> Self {
        let name = format!("broadcaster_{purpose}_{}", std::process::id());
        let mut server = sqlx::PgConnection::connect(POSTGRES_SERVER).await.expect("PostgreSQL on 127.0.0.1:5432");
        for statement in
            [format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"), format!("CREATE DATABASE \"{name}\"")]
        {
            sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut server).await.unwrap();
        }
        Self { server, name }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        POSTGRES_SERVER.replace("/test", &format!("/{}", self.name))
    }

    /// Drops it, with any connection still open to it.
    pub async fn remove(mut self) {
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut self.server).await.unwrap();
    }
}

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

/// A group commit on `url` of one request: an event stored already and a new one, each with
/// an extension attribute. Returns the answers and the extensions of the events then claimed.
#[allow(clippy::type_complexity)]
async fn group_commit_of_a_stored_and_a_new_event(
    url: &str,
) -> Result<(Vec<Result<Vec<bool>, StoreError>>, Vec<Vec<(String, String)>>), StoreError> {
    let store = OutboxStore::connect(url).await?;
    store.migrate().await?;
    let now = now_micros();
    let event =
        |region: &str| NewEvent::new("order.created", "/shop").publisher("tenant-a").extension("region", region);
    let stored = event("eu");
    store.enqueue(std::slice::from_ref(&stored), now).await?;
    let answers = store.enqueue_requests(&[&[stored, event("us")]], now).await?;
    let claim = store.claim(now, 10, &[]).await?;
    let mut extensions: Vec<_> = claim.events.into_iter().map(|claimed| claimed.event.extensions).collect();
    extensions.sort();
    Ok((answers, extensions))
}

#[tokio::test]
async fn a_group_commit_inserts_only_the_new_rows_and_their_extensions_on_either_database() {
    let dir = tempfile::tempdir().unwrap();
    let postgres = ScratchDatabase::create("group_commit").await;
    let sqlite = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let outcomes = [
        group_commit_of_a_stored_and_a_new_event(&sqlite).await,
        group_commit_of_a_stored_and_a_new_event(&postgres.url()).await,
    ];
    postgres.remove().await;
    for outcome in outcomes {
        let (answers, extensions) = outcome.unwrap();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].as_ref().unwrap(), &[false, true]);
        let region = |r: &str| vec![("region".to_string(), r.to_string())];
        assert_eq!(extensions, [region("eu"), region("us")], "the stored event's extensions are not written again");
    }
}
