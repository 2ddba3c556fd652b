//! The publishers of a configuration, built and started, by name. How each kind is set up
//! lives beside it: the native backend in [`crate::publisher::redis_stream`], components in
//! [`crate::host::ComponentPublisher::from_config`]; this module only keeps them, compiles
//! each component file once and shares Redis clients between native publishers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, PublisherConfig, PublisherKind};
use crate::host::{ComponentError, ComponentPublisher, ComponentSetupError, EngineError, HostEngine, LoadedComponent};
use crate::outcome::Health;
use crate::publisher::{Publisher, RedisStreamPublisher};
use crate::routing;
use crate::stream_client::StreamClients;

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
        let mut builder =
            Builder { config, options, engine: None, components: HashMap::new(), clients: StreamClients::default() };
        let mut publishers = BTreeMap::new();
        for (name, publisher_config) in &config.publishers {
            if only.is_some_and(|names| !names.contains(&name.as_str())) {
                continue;
            }
            let publisher = builder.publisher(name, publisher_config).await.map_err(|cause| match cause {
                BuildError::Config(err) => RegistryError::Config(err),
                BuildError::Engine(err) => RegistryError::Engine(err),
                BuildError::Publisher(cause) => RegistryError::Publisher {
                    publisher: name.clone(),
                    config: config.path.display().to_string(),
                    cause,
                },
            })?;
            publishers.insert(name.clone(), publisher);
        }
        Ok(Self { publishers })
    }

    /// The publisher called `name`.
    pub fn get(&self, name: &str) -> Result<&Publisher, UnknownPublisher> {
        self.publishers.get(name).ok_or_else(|| UnknownPublisher::new(name, self.publishers.keys()))
    }

    /// The publisher for an event's `publisher_backend` (see [`crate::routing`]).
    pub fn route(&self, publisher_backend: &str) -> Result<&Publisher, UnknownPublisher> {
        self.get(routing::publisher_for(publisher_backend))
    }

    /// The publishers, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Publisher)> {
        self.publishers.iter().map(|(name, p)| (name.as_str(), p))
    }

    /// Stops every publisher taking calls (see [`crate::host::ComponentPublisher::stop`]).
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

struct Builder<'a> {
    config: &'a Config,
    options: BuildOptions,
    engine: Option<HostEngine>,
    components: HashMap<PathBuf, LoadedComponent>,
    clients: StreamClients,
}

impl Builder<'_> {
    async fn publisher(&mut self, name: &str, publisher: &PublisherConfig) -> Result<Publisher, BuildError> {
        match self.config.kind_of(name, publisher).map_err(BuildError::Config)? {
            PublisherKind::RedisStream => {
                let native = RedisStreamPublisher::from_options(&publisher.options, &mut self.clients)
                    .map_err(PublisherSetupError::Options)?;
                Ok(Publisher::RedisStream(Arc::new(native)))
            }
            PublisherKind::Component(path) => {
                let component = self.component(&path).await?;
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

    /// The engine, sized for every component publisher of the configuration.
    fn engine(&mut self) -> Result<&HostEngine, BuildError> {
        if self.engine.is_none() {
            let components: Vec<&PublisherConfig> =
                self.config.publishers.values().filter(|p| p.component.is_some()).collect();
            let engine = HostEngine::for_publishers(&self.config.wasm, &components).map_err(BuildError::Engine)?;
            self.engine = Some(engine);
        }
        Ok(self.engine.as_ref().expect("engine just created"))
    }

    /// The component at `path`, compiled once however many publishers use it.
    async fn component(&mut self, path: &Path) -> Result<LoadedComponent, BuildError> {
        let key = std::fs::canonicalize(path)
            .map_err(|source| ComponentError::Read { path: path.to_path_buf(), cause: source })?;
        if let Some(loaded) = self.components.get(&key) {
            return Ok(loaded.clone());
        }
        let engine = self.engine()?.clone();
        let file = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || LoadedComponent::load(&engine, &file))
            .await
            .expect("component compilation panicked")?;
        self.components.insert(key, loaded.clone());
        Ok(loaded)
    }
}
