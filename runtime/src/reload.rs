//! Live configuration changes: `SIGHUP` (and `POST /v1/admin/reload` of `broadcaster serve`)
//! read the configuration again and apply what changed in `[publishers]` and `[tokens]` while
//! every other publisher keeps publishing.
//!
//! A reload is all or nothing: the new file is loaded and validated, its tokens read, and
//! every added or changed publisher built and started (strictly: a component whose `init`
//! fails refuses the reload) *before* anything is swapped; any failure leaves the running set
//! exactly as it was and says why. Then the relay's registry is swapped in one step
//! ([`Relay::replace_publishers`]): claims from then on use the new publishers, while batches
//! already claimed finish on the instances they started with, so no event is lost or published
//! twice across a reload. A removed publisher's waiting events stay waiting (`broadcaster
//! status` lists them as not configured) until a publisher of that name comes back.
//!
//! Sections a running process cannot change in place (`[outbox]`, `[relay]`, `[wasm]`,
//! `[telemetry]`, and,
//! when serving HTTP, `[server]`) refuse the reload with the section named: restart for those.

use std::sync::{Arc, OnceLock, Weak};

use broadcaster_config::{Config, ConfigError, PublisherConfig};
use broadcaster_outbox::catalog::{Catalog, StoredToken};
use broadcaster_relay::Relay;
use broadcaster_relay::registry::{RegistryChanges, RegistryError};
use broadcaster_server::ServerState;
use broadcaster_server::tokens::TokenTable;

/// Sections whose change needs a restart, with what they hold.
const RESTART_SECTIONS: [(&str, &str); 4] = [
    ("outbox", "the outbox database"),
    ("relay", "the worker's settings"),
    ("wasm", "the WebAssembly engine"),
    ("telemetry", "where spans are exported"),
];

/// Loads the configuration again (the same file and environment overrides as at start-up).
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Why a reload was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or validate.
    #[error(transparent)]
    Config(ConfigError),
    /// A section changed that only a restart applies.
    #[error(
        "{path}: [{section}] changed ({holds}); a reload applies [publishers] and [tokens] only: restart to apply it"
    )]
    NeedsRestart {
        /// The configuration file.
        path: String,
        /// The section.
        section: &'static str,
        /// What it holds.
        holds: &'static str,
    },
    /// A token's secret cannot be read.
    #[error(transparent)]
    Tokens(ConfigError),
    /// An added or changed publisher cannot be built or started.
    #[error(transparent)]
    Publishers(RegistryError),
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// The configuration file read.
    pub config: String,
    /// Publishers added, removed, changed and kept.
    pub publishers: RegistryChanges,
    /// Whether `[tokens]` changed (and was applied).
    pub tokens_changed: bool,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reloaded {}: publishers {}; tokens {}",
            self.config,
            self.publishers,
            if self.tokens_changed { "changed" } else { "unchanged" }
        )
    }
}

/// Applies configuration changes to a running relay (and its HTTP service, when attached).
pub struct Reloader {
    load: ConfigLoader,
    relay: Arc<Relay>,
    server: OnceLock<Weak<ServerState>>,
    /// The configuration in force (the file's publishers and the catalog's); held for the
    /// whole of a reload, so reloads and catalog changes apply one at a time.
    running: tokio::sync::Mutex<Config>,
    /// The catalog's tokens in force (for `serve`), beside the file's.
    catalog_tokens: std::sync::Mutex<Vec<StoredToken>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for `relay`, which runs `running`; `load` reads the configuration again.
    pub fn new(running: Config, relay: Arc<Relay>, load: ConfigLoader) -> Arc<Self> {
        Arc::new(Self {
            load,
            relay,
            server: OnceLock::new(),
            running: tokio::sync::Mutex::new(running),
            catalog_tokens: Default::default(),
        })
    }

    /// Also applies `[tokens]` to `server` (`broadcaster serve`), and refuses `[server]` changes.
    pub fn attach_server(&self, server: &Arc<ServerState>) {
        let _ = self.server.set(Arc::downgrade(server));
    }

    /// Reads the configuration again and applies it; see the module docs.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut running = self.running.lock().await;
        let mut next = (self.load)().map_err(ReloadError::Config)?;
        next.keep_api_publishers_of(&running);
        let server = self.server.get().and_then(Weak::upgrade);
        let mut restart_sections = RESTART_SECTIONS.to_vec();
        if server.is_some() {
            restart_sections.push(("server", "the HTTP service"));
        }
        for (section, holds) in restart_sections {
            if running.section(section) != next.section(section) {
                return Err(ReloadError::NeedsRestart { path: next.path.display().to_string(), section, holds });
            }
        }
        let tokens = match &server {
            Some(_) => Some(
                TokenTable::from_config(&next, &|name| std::env::var(name).ok())
                    .map_err(ReloadError::Tokens)?
                    .with_catalog_tokens(&self.catalog_tokens.lock().expect("tokens lock")),
            ),
            None => None,
        };
        let (registry, changes) = self.relay.registry().rebuild(&next).await.map_err(ReloadError::Publishers)?;
        self.relay.replace_publishers(registry, &changes);
        let tokens_changed = running.section("tokens") != next.section("tokens");
        if let (Some(server), Some(tokens)) = (server, tokens) {
            server.replace_tokens(tokens);
        }
        let report = ReloadReport { config: next.path.display().to_string(), publishers: changes, tokens_changed };
        *running = next;
        Ok(report)
    }

    /// Runs `f` on the configuration in force (waiting for a reload in progress).
    pub async fn with_running<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        f(&*self.running.lock().await)
    }

    /// Sets the catalog's tokens read at start (`serve` starts with them in its table).
    pub fn set_catalog_tokens(&self, tokens: Vec<StoredToken>) {
        *self.catalog_tokens.lock().expect("tokens lock") = tokens;
    }

    /// Applies the catalog's changes to publishers `names` (and, with `tokens`, to its
    /// tokens): each name's definition in force is read again and only those publishers are
    /// built again, added or removed ([`PublisherRegistry::rebuild_only`]), as a reload
    /// does: batches in flight finish on the instances that claimed them, and a removed
    /// publisher's events wait. A name the file defines stays the file's. Returns the names
    /// that could not be applied (their definition or start failed here): they keep what
    /// they had, and are worth trying again later.
    pub async fn apply_catalog(&self, catalog: &Catalog, names: &[String], tokens: bool) -> Vec<String> {
        let mut failed = Vec::new();
        if !names.is_empty() {
            let started = std::time::Instant::now();
            let mut running = self.running.lock().await;
            let mut staged = Vec::new();
            for name in names {
                match self.stage_catalog_publisher(catalog, &mut running, name).await {
                    Ok(Some(previous)) => staged.push((name.clone(), previous)),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::error!(publisher = %name, %err, "a catalog change cannot be applied; keeping what runs");
                        failed.push(name.clone());
                    }
                }
            }
            let touched: Vec<String> = staged.iter().map(|(name, _)| name.clone()).collect();
            let read = started.elapsed();
            match self.relay.registry().rebuild_only(&running, &touched).await {
                Ok((registry, changes)) => {
                    let built = started.elapsed();
                    self.relay.replace_publishers(registry, &changes);
                    tracing::info!(
                        added = ?changes.added, removed = ?changes.removed, changed = ?changes.changed,
                        read = ?read, built = ?built - read, swapped = ?started.elapsed() - built,
                        "catalog changes applied"
                    );
                }
                Err(err) if touched.len() > 1 => {
                    // Apply the others: put everything back, then each name on its own.
                    tracing::warn!(%err, "catalog changes refused together; applying them one by one");
                    for (name, previous) in staged.into_iter().rev() {
                        running.restore_publisher(&name, previous);
                    }
                    drop(running);
                    for name in touched {
                        failed.extend(Box::pin(self.apply_catalog(catalog, std::slice::from_ref(&name), false)).await);
                    }
                }
                Err(err) => {
                    tracing::error!(publishers = ?touched, %err, "a catalog change cannot be applied; keeping what runs");
                    for (name, previous) in staged.into_iter().rev() {
                        running.restore_publisher(&name, previous);
                    }
                    failed.extend(touched);
                }
            }
        }
        if tokens {
            self.apply_catalog_tokens(catalog).await;
        }
        failed
    }

    /// Puts `name` as the catalog has it now into `running`; what it was before (to put
    /// back), or `None` when the file defines the name.
    #[allow(clippy::type_complexity)]
    async fn stage_catalog_publisher(
        &self,
        catalog: &Catalog,
        running: &mut Config,
        name: &str,
    ) -> Result<Option<Option<(PublisherConfig, [u8; 32])>>, String> {
        if running.file_defines(name) {
            tracing::warn!(publisher = %name, "changed in the catalog, but the file defines it: the file's is used");
            return Ok(None);
        }
        let stored = catalog.publisher(name).await.map_err(|err| err.to_string())?;
        let previous = running.publisher_entry(name);
        match stored {
            None => {
                running.remove_api_publisher(name);
            }
            Some(stored) => {
                if let Some(hex) = &stored.component {
                    crate::tenants::start::fetch_component(catalog, running, hex)
                        .await
                        .map_err(|err| err.to_string())?;
                }
                running
                    .insert_api_publisher(name, &stored.definition, stored.version)
                    .map_err(|err| err.to_string())?;
            }
        }
        Ok(Some(previous))
    }

    async fn apply_catalog_tokens(&self, catalog: &Catalog) {
        let tokens = match catalog.tokens().await {
            Ok(tokens) => tokens,
            Err(err) => {
                tracing::error!(%err, "cannot read the catalog's tokens; keeping those in force");
                return;
            }
        };
        *self.catalog_tokens.lock().expect("tokens lock") = tokens.clone();
        let Some(server) = self.server.get().and_then(Weak::upgrade) else {
            return;
        };
        let running = self.running.lock().await;
        match TokenTable::from_config(&running, &|name| std::env::var(name).ok()) {
            Ok(table) => {
                server.replace_tokens(table.with_catalog_tokens(&tokens));
                tracing::info!(catalog_tokens = tokens.len(), "catalog tokens applied");
            }
            Err(err) => tracing::error!(%err, "cannot read the file's tokens; keeping those in force"),
        }
    }

    /// Reloads and logs the outcome (for a signal, whose sender sees no answer).
    pub async fn reload_and_log(&self) -> Result<ReloadReport, ReloadError> {
        let outcome = self.reload().await;
        match &outcome {
            Ok(report) => tracing::info!(
                added = ?report.publishers.added,
                removed = ?report.publishers.removed,
                changed = ?report.publishers.changed,
                unchanged = report.publishers.unchanged.len(),
                tokens_changed = report.tokens_changed,
                "configuration reloaded"
            ),
            Err(err) => tracing::error!(%err, "reload refused; the running configuration is unchanged"),
        }
        outcome
    }
}

impl broadcaster_server::LiveReload for Reloader {
    fn reload_for_admin(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + '_>> {
        Box::pin(async move {
            let report = self.reload_and_log().await.map_err(|err| err.to_string())?;
            serde_json::to_value(report).map_err(|err| err.to_string())
        })
    }
}
