//! [`ChangeFeed`]: how a relay learns of the catalog's changes. PostgreSQL: `LISTEN
//! broadcaster_catalog` (every change notifies on commit), with a look every
//! [`POSTGRES_POLL`] in case a notification is lost (a dropped connection); SQLite: a look
//! every [`SQLITE_POLL`], a read that never waits for writers in WAL mode.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Catalog, CatalogChange, CatalogDatabase, CatalogError, schema};

/// How often a relay on SQLite looks for changes.
pub const SQLITE_POLL: Duration = Duration::from_millis(200);

/// How often a relay on PostgreSQL looks for changes when no notification came.
pub const POSTGRES_POLL: Duration = Duration::from_secs(1);

/// The most changes one [`ChangeFeed::next`] returns.
const MAX_CHANGES: u32 = 10_000;

/// The changes after a given one, as they come.
#[derive(Debug)]
pub struct ChangeFeed {
    catalog: Catalog,
    after: i64,
    listener: Option<PgListener>,
}

impl ChangeFeed {
    /// The changes of `catalog` after change number `after` ([`Catalog::last_change`] read
    /// before the catalog itself was).
    pub fn new(catalog: Catalog, after: i64) -> Self {
        Self { catalog, after, listener: None }
    }

    /// The number of the last change returned.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// Waits for changes and returns them, oldest first (at least one).
    pub async fn next(&mut self) -> Result<Vec<CatalogChange>, CatalogError> {
        loop {
            // Listen before looking, so that a change committed after the look notifies.
            self.listen().await;
            let changes = self.catalog.changes_since(self.after, MAX_CHANGES).await?;
            if let Some(last) = changes.last() {
                self.after = last.seq;
                return Ok(changes);
            }
            self.wait().await;
        }
    }

    async fn listen(&mut self) {
        let CatalogDatabase::Postgres(pool) = &self.catalog.database else {
            return;
        };
        if self.listener.is_some() {
            return;
        }
        match PgListener::connect_with(pool).await {
            Ok(mut listener) => match listener.listen(schema::POSTGRES_CHANNEL).await {
                Ok(()) => self.listener = Some(listener),
                Err(err) => tracing::debug!(%err, "cannot listen for catalog changes; looking every second"),
            },
            Err(err) => tracing::debug!(%err, "cannot listen for catalog changes; looking every second"),
        }
    }

    async fn wait(&mut self) {
        match (&self.catalog.database, self.listener.as_mut()) {
            (CatalogDatabase::Sqlite { .. }, _) => tokio::time::sleep(SQLITE_POLL).await,
            (CatalogDatabase::Postgres(_), None) => tokio::time::sleep(POSTGRES_POLL).await,
            (CatalogDatabase::Postgres(_), Some(listener)) => {
                match tokio::time::timeout(POSTGRES_POLL, listener.recv()).await {
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(err)) => {
                        tracing::debug!(%err, "the catalog listener failed; listening again");
                        self.listener = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}
