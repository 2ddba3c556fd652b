//! The publishers of a configuration, built and started, by name. How each kind is set up
//! lives beside it: the native backend in [`broadcaster_redis::native`], components in
//! [`broadcaster_host::ComponentPublisher::from_config`]; this module only keeps them, compiles
//! each component file once and shares Redis clients between native publishers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::publisher::{Publisher, RedisStreamPublisher};
use broadcaster_config::{Config, ConfigError, PublisherConfig, PublisherKind, hex_digest};
use broadcaster_core::outcome::Health;
use broadcaster_core::routing;
use broadcaster_host::{
    ComponentError, ComponentPublisher, ComponentSetupError, EngineError, HostEngine, LoadedComponent,
};
use broadcaster_redis::client::StreamClients;

/// A publisher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configuration itself is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The WebAssembly engine could not be created (the machine, not the input).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A publisher was asked for by name and is not configured.
    #[error(transparent)]
    Unknown(#[from] UnknownPublisher),
    /// One publisher could not be set up; the message names it, the file and the cause.
    #[error("publisher `{publisher}` in {config}: {cause}")]
    Publisher {
        /// The publisher.
        publisher: String,
        /// The configuration file.
        config: String,
        /// What is wrong.
        cause: PublisherSetupError,
    },
}

impl RegistryError {
    /// Whether the input (configuration, component file, options) is at fault, rather than
    /// the machine.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Config(_) | Self::Unknown(_) => true,
            Self::Engine(_) => false,
            Self::Publisher { .. } => true,
        }
    }
}

/// Why one publisher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PublisherSetupError {
    /// The native backend's options are wrong: which option and what was expected.
    #[error("{0}")]
    Options(String),
    /// The component file is missing or is not a backend.
    #[error(transparent)]
    File(#[from] ComponentError),
    /// The component cannot run as configured (grants, options, or, with `strict`, its start).
    #[error(transparent)]
    Component(#[from] ComponentSetupError),
    /// The catalog's component (by SHA-256) was not loaded with the configuration.
    #[error("stored component {0} is not in the catalog")]
    StoredComponentMissing(String),
}

/// An event or a command named a publisher that is not configured.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no publisher named `{name}` is configured (configured: {known})")]
pub struct UnknownPublisher {
    /// The name asked for.
    pub name: String,
    /// The configured names, comma-separated.
    pub known: String,
}

impl UnknownPublisher {
    /// `name` is not among `known`.
    pub fn new<'a>(name: &str, known: impl IntoIterator<Item = &'a String>) -> Self {
        let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        Self { name: name.to_string(), known }
    }
}

/// How publishers are started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// A component whose `init` fails (an error, a trap, its deadline) fails the whole
    /// build (`broadcaster run --strict`). Otherwise the publisher starts down, says why in
    /// its health, and its start is retried with backoff while the others run.
    pub strict: bool,
}

/// The built publishers, by name.
#[derive(Debug, Default)]
pub struct PublisherRegistry {
    publishers: BTreeMap<String, Publisher>,
    /// What each publisher was built from, to tell at a reload which ones changed.
    sources: BTreeMap<String, PublisherSource>,
    /// The engine its components run on (the newest one, after a reload that needed one).
    engine: Option<HostEngine>,
}

/// What a publisher was built from: its `[publishers.<name>]` digest, the directory relative
/// paths resolve against, and its component file's SHA-256 (a new file at the same path is a
/// change).
#[derive(Debug, Clone, PartialEq)]
struct PublisherSource {
    section: Option<[u8; 32]>,
    base_dir: PathBuf,
    component: Option<[u8; 32]>,
}

/// What a reload changed, by publisher name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryChanges {
    /// Publishers new in the configuration.
    pub added: Vec<String>,
    /// Publishers no longer in it: their events wait.
    pub removed: Vec<String>,
    /// Publishers whose section or component file changed: built again.
    pub changed: Vec<String>,
    /// Publishers kept as they were (instances, connections and counters included).
    pub unchanged: Vec<String>,
}

impl RegistryChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for RegistryChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| if names.is_empty() { "none".to_string() } else { names.join(", ") };
        write!(
            f,
            "added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.unchanged.len()
        )
    }
}

impl PublisherRegistry {
    /// Builds and starts every publisher of `config`, or only those named in `only`.
    ///
    /// A component file used by several publishers is compiled once; native publishers of
    /// the same Redis server share one connection. A component whose `init` fails does not
    /// stop the others: it starts down (see [`BuildOptions::strict`]).
    pub async fn build(config: &Config, only: Option<&[&str]>) -> Result<Self, RegistryError> {
        Self::build_with(config, only, BuildOptions::default()).await
    }

    /// [`PublisherRegistry::build`] with options.
    pub async fn build_with(
        config: &Config,
        only: Option<&[&str]>,
        options: BuildOptions,
    ) -> Result<Self, RegistryError> {
        if let Some(names) = only {
            for name in names {
                if !config.publishers.contains_key(*name) {
                    return Err(UnknownPublisher::new(name, config.publishers.keys()).into());
                }
            }
        }
        let mut builder = Builder::new(config, options, None);
        let mut registry = Self::default();
        for (name, publisher_config) in &config.publishers {
            if only.is_some_and(|names| !names.contains(&name.as_str())) {
                continue;
            }
            let (publisher, source) = builder.named(name, publisher_config).await?;
            registry.publishers.insert(name.clone(), publisher);
            registry.sources.insert(name.clone(), source);
        }
        registry.engine = builder.engine;
        Ok(registry)
    }

    /// The registry for `config` after this one ran the configuration before it (a reload):
    /// publishers whose section and component file are unchanged are kept as they are (the
    /// same instances, connections and counters); added and changed ones are built and
    /// started now, strictly (an `init` that fails fails the whole rebuild), and nothing of
    /// this registry is touched, so a failed rebuild changes nothing. The old publishers of
    /// changed and removed names stay usable by whoever still holds them (calls in flight
    /// finish on them).
    pub async fn rebuild(&self, config: &Config) -> Result<(Self, RegistryChanges), RegistryError> {
        let mut builder = Builder::new(config, BuildOptions { strict: true }, self.engine.clone());
        let mut next = Self::default();
        let mut changes = RegistryChanges::default();
        for (name, publisher_config) in &config.publishers {
            let source = builder.source(name, publisher_config).map_err(|cause| builder.named_error(name, cause))?;
            match (self.publishers.get(name), self.sources.get(name)) {
                (Some(publisher), Some(was)) if *was == source => {
                    next.publishers.insert(name.clone(), publisher.clone());
                    changes.unchanged.push(name.clone());
                }
                (current, _) => {
                    let (publisher, source) = builder.named(name, publisher_config).await?;
                    next.publishers.insert(name.clone(), publisher);
                    if current.is_some() { &mut changes.changed } else { &mut changes.added }.push(name.clone());
                    next.sources.insert(name.clone(), source);
                    continue;
                }
            }
            next.sources.insert(name.clone(), source);
        }
        changes.removed =
            self.publishers.keys().filter(|name| !config.publishers.contains_key(*name)).cloned().collect();
        next.engine = builder.engine.or_else(|| self.engine.clone());
        Ok((next, changes))
    }

    /// The registry after publishers `names` changed in `config` (the catalog's changes): each
    /// of them built again when what it is built from changed, added when new, removed when
    /// `config` no longer has it; every other publisher is kept as it is without being looked
    /// at, so a change to one of 100,000 tenants costs one tenant's work. Strict and all or
    /// nothing, as [`rebuild`](Self::rebuild) is; `unchanged` lists only the names asked for.
    pub async fn rebuild_only(
        &self,
        config: &Config,
        names: &[String],
    ) -> Result<(Self, RegistryChanges), RegistryError> {
        let mut builder = Builder::new(config, BuildOptions { strict: true }, self.engine.clone());
        let mut next = Self { publishers: self.publishers.clone(), sources: self.sources.clone(), engine: None };
        let mut changes = RegistryChanges::default();
        for name in names {
            let Some(publisher_config) = config.publishers.get(name) else {
                if next.publishers.remove(name).is_some() {
                    next.sources.remove(name);
                    changes.removed.push(name.clone());
                }
                continue;
            };
            let source = builder.source(name, publisher_config).map_err(|cause| builder.named_error(name, cause))?;
            if next.sources.get(name) == Some(&source) && next.publishers.contains_key(name) {
                changes.unchanged.push(name.clone());
                continue;
            }
            let (publisher, source) = builder.named(name, publisher_config).await?;
            let list = if next.publishers.insert(name.clone(), publisher).is_some() {
                &mut changes.changed
            } else {
                &mut changes.added
            };
            list.push(name.clone());
            next.sources.insert(name.clone(), source);
        }
        next.engine = builder.engine.or_else(|| self.engine.clone());
        Ok((next, changes))
    }

    /// The live component instances (and their bounds) of its engine, if it has
    /// component publishers.
    pub fn live_instances(&self) -> Option<&Arc<broadcaster_host::LiveInstances>> {
        self.engine.as_ref().map(HostEngine::live_instances)
    }

    /// Waits until the start of every component publisher that started in the background
    /// is over (made or failed).
    pub async fn wait_started(&self) {
        for publisher in self.publishers.values() {
            if let Publisher::Component(component) = publisher {
                component.wait_started().await;
            }
        }
    }

    /// The publisher called `name`.
    pub fn get(&self, name: &str) -> Result<&Publisher, UnknownPublisher> {
        self.publishers.get(name).ok_or_else(|| UnknownPublisher::new(name, self.publishers.keys()))
    }

    /// How many publishers it has.
    pub fn len(&self) -> usize {
        self.publishers.len()
    }

    /// Whether it has no publisher.
    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty()
    }

    /// Whether a publisher called `name` is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.publishers.contains_key(name)
    }

    /// The publisher for an event's `publisher_backend` (see [`broadcaster_core::routing`]).
    pub fn route(&self, publisher_backend: &str) -> Result<&Publisher, UnknownPublisher> {
        self.get(routing::publisher_for(publisher_backend))
    }

    /// The publishers, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Publisher)> {
        self.publishers.iter().map(|(name, p)| (name.as_str(), p))
    }

    /// Stops every publisher taking calls (see [`broadcaster_host::ComponentPublisher::stop`]).
    pub fn stop(&self) {
        for publisher in self.publishers.values() {
            publisher.stop();
        }
    }

    /// The longest any publisher's call can take, host time included (zero with no
    /// components): how long a stop can take.
    pub fn longest_call(&self) -> std::time::Duration {
        self.publishers.values().map(Publisher::longest_call).max().unwrap_or_default()
    }

    /// Checks every publisher at once; results in name order.
    pub async fn health(&self) -> Vec<(String, Publisher, Health)> {
        let checks = self
            .publishers
            .iter()
            .map(|(name, publisher)| async move { (name.clone(), publisher.clone(), publisher.health().await) });
        futures::future::join_all(checks).await
    }
}

/// What building one publisher ran into, before it is given the publisher's name.
enum BuildError {
    Config(ConfigError),
    Engine(EngineError),
    Publisher(PublisherSetupError),
}

impl<E: Into<PublisherSetupError>> From<E> for BuildError {
    fn from(err: E) -> Self {
        Self::Publisher(err.into())
    }
}

/// A component file as read: its canonical path, the SHA-256 of its bytes, the bytes.
#[derive(Clone)]
struct ComponentFile {
    canonical: PathBuf,
    digest: [u8; 32],
    bytes: Arc<Vec<u8>>,
}

struct Builder<'a> {
    config: &'a Config,
    options: BuildOptions,
    /// The engine of the registry being rebuilt, if any: reused when it fits.
    previous_engine: Option<HostEngine>,
    engine: Option<HostEngine>,
    /// Compiled components by canonical path and content digest.
    components: HashMap<(PathBuf, [u8; 32]), LoadedComponent>,
    /// Component files read so far, by the path configured.
    files: HashMap<PathBuf, ComponentFile>,
    clients: StreamClients,
}

impl<'a> Builder<'a> {
    fn new(config: &'a Config, options: BuildOptions, previous_engine: Option<HostEngine>) -> Self {
        Self {
            config,
            options,
            previous_engine,
            engine: None,
            components: HashMap::new(),
            files: HashMap::new(),
            clients: StreamClients::default(),
        }
    }

    /// Builds publisher `name`; an error names it and the configuration file.
    async fn named(
        &mut self,
        name: &str,
        publisher_config: &PublisherConfig,
    ) -> Result<(Publisher, PublisherSource), RegistryError> {
        let source = self.source(name, publisher_config).map_err(|cause| self.named_error(name, cause))?;
        let publisher = self.publisher(name, publisher_config).await.map_err(|cause| self.named_error(name, cause))?;
        Ok((publisher, source))
    }

    fn named_error(&self, name: &str, cause: BuildError) -> RegistryError {
        match cause {
            BuildError::Config(err) => RegistryError::Config(err),
            BuildError::Engine(err) => RegistryError::Engine(err),
            BuildError::Publisher(cause) => RegistryError::Publisher {
                publisher: name.to_string(),
                config: match self.config.publishers.get(name).and_then(|p| p.api.as_ref()) {
                    Some(api) if api.version == 0 => "the definition sent".to_string(),
                    Some(api) => format!("the catalog (version {})", api.version),
                    None => self.config.path.display().to_string(),
                },
                cause,
            },
        }
    }

    /// What publisher `name` is built from (its component file read to hash it).
    fn source(&mut self, name: &str, publisher: &PublisherConfig) -> Result<PublisherSource, BuildError> {
        let component = match self.config.kind_of(name, publisher).map_err(BuildError::Config)? {
            PublisherKind::RedisStream => None,
            PublisherKind::Component(path) => Some(self.file(&path)?.digest),
            PublisherKind::Stored(digest) => Some(digest),
        };
        Ok(PublisherSource {
            section: self.config.publisher_section(name),
            base_dir: self.config.base_dir.clone(),
            component,
        })
    }

    /// The component file at `path`, read once.
    fn file(&mut self, path: &Path) -> Result<ComponentFile, BuildError> {
        if let Some(read) = self.files.get(path) {
            return Ok(read.clone());
        }
        let read_error = |cause| ComponentError::Read { path: path.to_path_buf(), cause };
        let key = std::fs::canonicalize(path).map_err(read_error)?;
        let bytes = std::fs::read(&key).map_err(read_error)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let read = ComponentFile { canonical: key, digest, bytes: Arc::new(bytes) };
        self.files.insert(path.to_path_buf(), read.clone());
        Ok(read)
    }

    async fn publisher(&mut self, name: &str, publisher: &PublisherConfig) -> Result<Publisher, BuildError> {
        match self.config.kind_of(name, publisher).map_err(BuildError::Config)? {
            PublisherKind::RedisStream => {
                let native =
                    RedisStreamPublisher::from_options(&publisher.options, &self.config.base_dir, &mut self.clients)
                        .map_err(PublisherSetupError::Options)?;
                Ok(Publisher::RedisStream(Arc::new(native)))
            }
            kind @ (PublisherKind::Component(_) | PublisherKind::Stored(_)) => {
                let component = match kind {
                    PublisherKind::Component(path) => self.component(&path).await?,
                    PublisherKind::Stored(digest) => self.stored_component(digest).await?,
                    PublisherKind::RedisStream => unreachable!("matched above"),
                };
                let engine = self.engine()?.clone();
                let started = ComponentPublisher::from_config(
                    &engine,
                    component,
                    name,
                    publisher,
                    &self.config.base_dir,
                    self.options.strict,
                )
                .await?;
                Ok(Publisher::Component(started))
            }
        }
    }

    /// The engine, sized for every component publisher of the configuration (the previous
    /// registry's when it accommodates them).
    fn engine(&mut self) -> Result<&HostEngine, BuildError> {
        if self.engine.is_none() {
            let components: Vec<&PublisherConfig> =
                self.config.publishers.values().filter(|p| p.runs_component()).collect();
            let engine = match &self.previous_engine {
                Some(previous) => HostEngine::for_publishers_after(previous, &self.config.wasm, &components),
                None => HostEngine::for_publishers(&self.config.wasm, &components),
            }
            .map_err(BuildError::Engine)?;
            self.engine = Some(engine);
        }
        Ok(self.engine.as_ref().expect("engine just created"))
    }

    /// The catalog's component with SHA-256 `digest`, compiled once however many publishers
    /// use it.
    async fn stored_component(&mut self, digest: [u8; 32]) -> Result<LoadedComponent, BuildError> {
        let hex = hex_digest(&digest);
        let key = (PathBuf::from(format!("sha256:{hex}")), digest);
        if let Some(loaded) = self.components.get(&key) {
            return Ok(loaded.clone());
        }
        let bytes =
            self.config.stored_components.get(&digest).ok_or(PublisherSetupError::StoredComponentMissing(hex))?;
        let engine = self.engine()?.clone();
        let name = key.0.clone();
        let loaded = tokio::task::spawn_blocking(move || LoadedComponent::from_bytes(&engine, &name, &bytes))
            .await
            .expect("component compilation panicked")?;
        self.components.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// The component at `path`, compiled once however many publishers use it.
    async fn component(&mut self, path: &Path) -> Result<LoadedComponent, BuildError> {
        let ComponentFile { canonical: key, digest, bytes } = self.file(path)?;
        if let Some(loaded) = self.components.get(&(key.clone(), digest)) {
            return Ok(loaded.clone());
        }
        let engine = self.engine()?.clone();
        let file = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || LoadedComponent::from_bytes(&engine, &file, &bytes))
            .await
            .expect("component compilation panicked")?;
        self.components.insert((key, digest), loaded.clone());
        Ok(loaded)
    }
}
