//! An empty outbox database per test, on either database Broadcaster supports.

use crate::TestDatabase;

/// Which database an outbox is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

/// An outbox database for one test (no table yet): a SQLite file in a temporary directory, or
/// a fresh PostgreSQL [`TestDatabase`]. Removed on drop.
#[derive(Debug)]
pub struct TestOutbox {
    kind: OutboxKind,
    url: String,
    _dir: tempfile::TempDir,
    _postgres: Option<TestDatabase>,
}

impl TestOutbox {
    /// A new, empty database of `kind`.
    pub async fn create(kind: OutboxKind) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the outbox");
        let postgres = match kind {
            OutboxKind::Sqlite => None,
            OutboxKind::Postgres => Some(TestDatabase::create().await),
        };
        let url = match &postgres {
            Some(database) => database.url().to_string(),
            None => format!("sqlite://{}", dir.path().join("outbox.db").display()),
        };
        Self { kind, url, _dir: dir, _postgres: postgres }
    }

    /// Its database.
    pub fn kind(&self) -> OutboxKind {
        self.kind
    }

    /// `sqlite://…/outbox.db` or `postgres://…/<database>`.
    pub fn url(&self) -> &str {
        &self.url
    }
}
