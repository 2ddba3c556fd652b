//! [`ChangeFeed`]: how a relay learns of the catalog's changes. PostgreSQL: `LISTEN
//! broadcaster_catalog` (every change notifies on commit), with a look every
//! [`POSTGRES_POLL`] in case a notification is lost (a dropped connection); SQLite: a look
//! when the kernel says the database file was written (any write: events too, so at most
//! every [`SQLITE_LEAST_GAP`]), and every [`SQLITE_POLL`] in any case; a read that never
//! waits for writers in WAL mode.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Catalog, CatalogChange, CatalogDatabase, CatalogError, schema};

/// How often a relay on SQLite looks for changes when the file watch says nothing (or the
/// file cannot be watched).
pub const SQLITE_POLL: Duration = Duration::from_millis(200);

/// The least time between two looks on SQLite: a file written by a busy producer wakes the
/// feed at every commit.
pub const SQLITE_LEAST_GAP: Duration = Duration::from_millis(10);

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
    /// Writes to the SQLite file, once watched (`None` with PostgreSQL, in memory, or when
    /// the file cannot be watched).
    writes: Option<crate::file_watch::FileWrites>,
    /// Whether watching the SQLite file was tried.
    watch_tried: bool,
}

impl ChangeFeed {
    /// The changes of `catalog` after change number `after` ([`Catalog::last_change`] read
    /// before the catalog itself was).
    pub fn new(catalog: Catalog, after: i64) -> Self {
        Self { catalog, after, listener: None, writes: None, watch_tried: false }
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
            (CatalogDatabase::Sqlite { file, .. }, _) => {
                if !self.watch_tried {
                    self.watch_tried = true;
                    self.writes = file.as_deref().and_then(|file| {
                        crate::file_watch::FileWrites::watch(file)
                            .map_err(|err| tracing::debug!(%err, "cannot watch the outbox file for catalog changes"))
                            .ok()
                    });
                }
                match self.writes.as_mut() {
                    Some(writes) => {
                        if writes.wait(SQLITE_POLL).await.is_err() {
                            self.writes = None;
                        }
                        tokio::time::sleep(SQLITE_LEAST_GAP).await;
                    }
                    None => tokio::time::sleep(SQLITE_POLL).await,
                }
            }
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
