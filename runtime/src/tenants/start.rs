//! The catalog in a running relay: read with the file at start ([`load_catalog`]), then
//! followed ([`follow_catalog`]): each change is applied by the [`Reloader`] to just the
//! tenants it names, within a second of its commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, hex_digest, parse_hex_digest};
use crate::outbox::OutboxStore;
use crate::outbox::catalog::{Catalog, CatalogError, ChangeFeed, StoredToken};
use crate::reload::Reloader;

/// Publishers read per statement at start.
const PAGE: u32 = 10_000;

/// How long a relay waits before applying again a change it could not apply.
pub const RETRY_FAILED: Duration = Duration::from_secs(10);

/// The catalog as a relay read it at start.
#[derive(Debug)]
pub struct CatalogStart {
    /// The catalog.
    pub catalog: Catalog,
    /// The last change before it was read: following starts after it.
    pub after: i64,
    /// Its tokens.
    pub tokens: Vec<StoredToken>,
    /// How many of its publishers were added to the configuration.
    pub publishers: usize,
}

/// Reads the catalog's publishers (and the components they run) into `config`, beside the
/// file's: a name the file defines stays the file's (logged). `None` when the database keeps
/// no catalog, or `migrate` has not made it yet (logged: the relay runs the file's tenants).
/// A stored definition this relay cannot read is logged and left out; the others run.
pub async fn load_catalog(store: &OutboxStore, config: &mut Config) -> Result<Option<CatalogStart>, CatalogError> {
    let Some(catalog) = store.catalog() else {
        return Ok(None);
    };
    if !catalog.is_present().await? {
        tracing::warn!(
            "the outbox database has no tenant catalog yet: running the configuration file's publishers only \
             (run `broadcaster migrate` to add it, then restart)"
        );
        return Ok(None);
    }
    let after = catalog.last_change().await?;
    let mut publishers = 0;
    let mut components = BTreeSet::new();
    let mut page_after: Option<String> = None;
    loop {
        let page = catalog.publishers(page_after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        page_after = Some(last.name.clone());
        for stored in page {
            if config.file_defines(&stored.name) {
                tracing::warn!(publisher = %stored.name, "defined in both the file and the catalog: the file's is used");
                continue;
            }
            match config.insert_api_publisher(&stored.name, &stored.definition, stored.version) {
                Ok(()) => {
                    publishers += 1;
                    components.extend(stored.component);
                }
                Err(err) => tracing::error!(%err, "a publisher of the catalog cannot be read; it is left out"),
            }
        }
    }
    for hex in components {
        fetch_component(&catalog, config, &hex).await?;
    }
    let tokens = catalog.tokens().await?;
    Ok(Some(CatalogStart { catalog, after, tokens, publishers }))
}

/// Makes sure `config` holds the bytes of stored component `hex`.
pub(crate) async fn fetch_component(catalog: &Catalog, config: &mut Config, hex: &str) -> Result<(), CatalogError> {
    let Some(digest) = parse_hex_digest(hex) else {
        return Ok(());
    };
    if config.stored_components.contains(&digest) {
        return Ok(());
    }
    match catalog.component_bytes(hex).await? {
        Some(bytes) => config.stored_components.insert(digest, Arc::new(bytes)),
        None => tracing::error!(component = %hex_digest(&digest), "a stored component is missing from the catalog"),
    }
    Ok(())
}

/// Follows the catalog's changes after `start.after` for as long as the process runs, each
/// applied by `reloader` ([`Reloader::apply_catalog`]). A change that cannot be applied here
/// (its component does not start on this host, say) keeps the version this relay has, and is
/// tried again every [`RETRY_FAILED`].
pub fn follow_catalog(reloader: Arc<Reloader>, catalog: Catalog, after: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut feed = ChangeFeed::new(catalog.clone(), after);
        let mut failed: BTreeSet<String> = BTreeSet::new();
        loop {
            let next = if failed.is_empty() {
                feed.next().await.map(Some)
            } else {
                match tokio::time::timeout(RETRY_FAILED, feed.next()).await {
                    Ok(changes) => changes.map(Some),
                    Err(_) => Ok(None),
                }
            };
            let changes = match next {
                Ok(Some(changes)) => changes,
                Ok(None) => Vec::new(),
                Err(err) => {
                    tracing::warn!(%err, "cannot read the catalog's changes; trying again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut publishers: BTreeSet<String> = std::mem::take(&mut failed);
            let mut tokens = false;
            for change in changes {
                match change.kind {
                    crate::outbox::catalog::ChangeKind::Publisher => {
                        publishers.insert(change.name);
                    }
                    crate::outbox::catalog::ChangeKind::Token => tokens = true,
                }
            }
            let names: Vec<String> = publishers.into_iter().collect();
            failed = reloader.apply_catalog(&catalog, &names, tokens).await.into_iter().collect();
        }
    })
}
