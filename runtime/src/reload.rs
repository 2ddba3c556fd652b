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

use broadcaster_config::{Config, ConfigError};
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
    /// The configuration in force; held for the whole of a reload, so reloads run one at a
    /// time.
    running: tokio::sync::Mutex<Config>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for `relay`, which runs `running`; `load` reads the configuration again.
    pub fn new(running: Config, relay: Arc<Relay>, load: ConfigLoader) -> Arc<Self> {
        Arc::new(Self { load, relay, server: OnceLock::new(), running: tokio::sync::Mutex::new(running) })
    }

    /// Also applies `[tokens]` to `server` (`broadcaster serve`), and refuses `[server]` changes.
    pub fn attach_server(&self, server: &Arc<ServerState>) {
        let _ = self.server.set(Arc::downgrade(server));
    }

    /// Reads the configuration again and applies it; see the module docs.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut running = self.running.lock().await;
        let next = (self.load)().map_err(ReloadError::Config)?;
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
            Some(_) => {
                Some(TokenTable::from_config(&next, &|name| std::env::var(name).ok()).map_err(ReloadError::Tokens)?)
            }
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
