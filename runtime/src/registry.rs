//! The publishers of a configuration, built and started, and routing of events to them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError, PublisherConfig, PublisherKind, table_to_json};
use crate::host::http_capability::HttpPolicy;
use crate::host::{
    CallBudget, CallLimits, ComponentError, ComponentPublisher, ComponentSettings, EngineError, EngineSettings,
    HostEngine, LoadedComponent, RedisCapability, StartError, StreamPatterns, secrets,
};
use crate::publisher::{Health, Publisher, RedisStreamOptions, RedisStreamPublisher};
use crate::stream_client::{RedisEndpoint, StreamClient};

/// A publisher could not be set up. Every case is bad input: the message names the
/// publisher and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The configuration itself is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A native backend's options are wrong.
    #[error("publisher `{publisher}` in {config}: {message}")]
    Options {
        /// The publisher.
        publisher: String,
        /// The config file.
        config: String,
        /// Which option and what was expected.
        message: String,
    },
    /// A component file is missing or is not a backend.
    #[error("publisher `{publisher}`: {source}")]
    Component {
        /// The publisher.
        publisher: String,
        /// What is wrong with the file.
        #[source]
        source: ComponentError,
    },
    /// A component did not start (its `init` rejected the options, or it trapped).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The WebAssembly engine could not be created.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A component imports a capability its publisher was not granted.
    #[error(
        "publisher `{publisher}`: {component} imports `{import}`, a capability this publisher is not granted; \
         grant it with {grant}, or use a backend that does not need it"
    )]
    NotGranted {
        /// The publisher.
        publisher: String,
        /// The component file.
        component: String,
        /// The import.
        import: String,
        /// The config that would grant it.
        grant: String,
    },
    /// A publisher was asked for by name and is not configured.
    #[error(transparent)]
    Unknown(#[from] UnknownPublisher),
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

/// The built publishers, by name.
#[derive(Debug, Default)]
pub struct PublisherRegistry {
    publishers: BTreeMap<String, Publisher>,
}

impl PublisherRegistry {
    /// Builds and starts every publisher of `config`, or only those named in `only`.
    ///
    /// A component file used by several publishers is compiled once; publishers of the
    /// same Redis server share one connection.
    pub async fn build(config: &Config, only: Option<&[&str]>) -> Result<Self, RegistryError> {
        if let Some(names) = only {
            for name in names {
                if !config.publishers.contains_key(*name) {
                    return Err(unknown(config, name).into());
                }
            }
        }
        let mut builder = Builder { config, engine: None, components: HashMap::new(), clients: HashMap::new() };
        let mut publishers = BTreeMap::new();
        for (name, publisher_config) in &config.publishers {
            if only.is_some_and(|names| !names.contains(&name.as_str())) {
                continue;
            }
            let publisher = builder.publisher(name, publisher_config).await?;
            publishers.insert(name.clone(), publisher);
        }
        Ok(Self { publishers })
    }

    /// The publisher called `name`.
    pub fn get(&self, name: &str) -> Result<&Publisher, UnknownPublisher> {
        self.publishers
            .get(name)
            .ok_or_else(|| UnknownPublisher { name: name.to_string(), known: known_names(self.publishers.keys()) })
    }

    /// The publisher for an event's `publisher_backend` (empty: `default`).
    pub fn route(&self, publisher_backend: &str) -> Result<&Publisher, UnknownPublisher> {
        self.get(if publisher_backend.is_empty() { crate::config::DEFAULT_PUBLISHER } else { publisher_backend })
    }

    /// The publishers, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Publisher)> {
        self.publishers.iter().map(|(name, p)| (name.as_str(), p))
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

fn known_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() { "none".to_string() } else { names.join(", ") }
}

fn unknown(config: &Config, name: &str) -> UnknownPublisher {
    UnknownPublisher { name: name.to_string(), known: known_names(config.publishers.keys()) }
}

struct Builder<'a> {
    config: &'a Config,
    engine: Option<HostEngine>,
    components: HashMap<PathBuf, LoadedComponent>,
    clients: HashMap<RedisEndpoint, StreamClient>,
}

impl Builder<'_> {
    async fn publisher(&mut self, name: &str, publisher: &PublisherConfig) -> Result<Publisher, RegistryError> {
        match self.config.kind_of(name, publisher)? {
            PublisherKind::RedisStream => {
                let options =
                    RedisStreamOptions::from_table(&publisher.options).map_err(|message| RegistryError::Options {
                        publisher: name.to_string(),
                        config: self.config.path.display().to_string(),
                        message,
                    })?;
                let client = self.client(options.endpoint())?;
                Ok(Publisher::RedisStream(Arc::new(RedisStreamPublisher::new(options, client))))
            }
            PublisherKind::Component(path) => {
                let component = self.component(name, &path).await?;
                let redis = match &publisher.grants.redis {
                    None => None,
                    // Each component publisher gets a connection of its own: a tenant that
                    // floods Redis queues behind itself, not in front of its neighbours.
                    Some(grant) => Some(RedisCapability {
                        client: self.own_client(RedisEndpoint {
                            host: grant.host.clone(),
                            port: grant.port,
                            db: grant.db,
                            password: grant.password.clone(),
                            connect_timeout: grant.connect_timeout.0,
                            socket_timeout: grant.socket_timeout.0,
                        })?,
                        streams: StreamPatterns::new(grant.streams.clone()),
                    }),
                };
                for (grant, import) in component.required_grants() {
                    let granted = match grant {
                        "redis" => publisher.grants.redis.is_some(),
                        _ => publisher.grants.http.is_some(),
                    };
                    if !granted {
                        return Err(RegistryError::NotGranted {
                            publisher: name.to_string(),
                            component: path.display().to_string(),
                            import: import.to_string(),
                            grant: match grant {
                                "redis" => format!(
                                    "[publishers.{name}.grants] redis = {{ host = \"…\", port = 6379, streams = [\"…\"] }}"
                                ),
                                _ => format!("[publishers.{name}.grants] http = {{ allow = [\"https://…\"] }}"),
                            },
                        });
                    }
                }
                let http = HttpPolicy::new(
                    Arc::from(name),
                    publisher.grants.http.as_ref(),
                    CallBudget::new(CallLimits::from(&publisher.limits)),
                )
                .map_err(|err| RegistryError::Options {
                    publisher: name.to_string(),
                    config: self.config.path.display().to_string(),
                    message: err.to_string(),
                })?;
                let mut options = publisher.options.clone();
                let env = |name: &str| std::env::var(name).ok();
                let redactor = secrets::resolve(&mut options, &self.config.base_dir, &env).map_err(|err| {
                    RegistryError::Options {
                        publisher: name.to_string(),
                        config: self.config.path.display().to_string(),
                        message: err.to_string(),
                    }
                })?;
                let settings = ComponentSettings {
                    name: Arc::from(name),
                    options_json: table_to_json(&options).to_string(),
                    redis,
                    memory_bytes: usize::try_from(publisher.limits.memory.0).unwrap_or(usize::MAX),
                    call_timeout: publisher.limits.call_timeout.0,
                    fuel: publisher.limits.fuel,
                    call_limits: CallLimits::from(&publisher.limits),
                    redactor: Arc::new(redactor),
                    http,
                };
                let engine = self.engine()?.clone();
                let started = ComponentPublisher::start(&engine, component, settings).await?;
                Ok(Publisher::Component(Arc::new(started)))
            }
        }
    }

    /// The engine, sized for every component publisher of the configuration.
    fn engine(&mut self) -> Result<&HostEngine, EngineError> {
        if self.engine.is_none() {
            let components: Vec<&PublisherConfig> =
                self.config.publishers.values().filter(|p| p.component.is_some()).collect();
            let settings = EngineSettings {
                allocator: self.config.wasm.allocator,
                max_memory: components
                    .iter()
                    .map(|p| usize::try_from(p.limits.memory.0).unwrap_or(usize::MAX))
                    .max()
                    .unwrap_or(64 << 20),
                instances: u32::try_from(components.len()).unwrap_or(u32::MAX).saturating_add(16),
                fuel: components.iter().any(|p| p.limits.fuel.is_some()),
                cache_dir: self.config.wasm.cache_directory(),
            };
            let engine = HostEngine::with_settings(&settings)?;
            tracing::debug!(pooling = engine.is_pooling(), fuel = engine.meters_fuel(), "wasm engine ready");
            self.engine = Some(engine);
        }
        Ok(self.engine.as_ref().expect("engine just created"))
    }

    async fn component(&mut self, publisher: &str, path: &std::path::Path) -> Result<LoadedComponent, RegistryError> {
        let key = std::fs::canonicalize(path).map_err(|source| RegistryError::Component {
            publisher: publisher.to_string(),
            source: ComponentError::Read { path: path.to_path_buf(), source },
        })?;
        if let Some(loaded) = self.components.get(&key) {
            return Ok(loaded.clone());
        }
        let engine = self.engine()?.clone();
        let file = path.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || LoadedComponent::load(&engine, &file))
            .await
            .expect("component compilation panicked")
            .map_err(|source| RegistryError::Component { publisher: publisher.to_string(), source })?;
        self.components.insert(key, loaded.clone());
        Ok(loaded)
    }

    fn own_client(&self, endpoint: RedisEndpoint) -> Result<StreamClient, RegistryError> {
        StreamClient::new(endpoint).map_err(|err| RegistryError::Options {
            publisher: String::new(),
            config: self.config.path.display().to_string(),
            message: err.to_string(),
        })
    }

    /// A client shared by the native publishers of one server (they are the operator's own).
    fn client(&mut self, endpoint: RedisEndpoint) -> Result<StreamClient, RegistryError> {
        if let Some(client) = self.clients.get(&endpoint) {
            return Ok(client.clone());
        }
        let client = StreamClient::new(endpoint.clone()).map_err(|err| RegistryError::Options {
            publisher: String::new(),
            config: self.config.path.display().to_string(),
            message: err.to_string(),
        })?;
        self.clients.insert(endpoint, client.clone());
        Ok(client)
    }
}
