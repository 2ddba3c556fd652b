//! The one wasmtime engine every component runs on, its linker (WASI + Broadcaster's
//! capabilities), and the epoch ticker that enforces call deadlines.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::capabilities::CAPABILITIES;
use super::component::SUPPORTED_VERSIONS;
use super::lanes::{CpuAccount, GuestLanes};
use super::live_instances::LiveInstances;
use super::state::PublisherState;
use broadcaster_config::{Allocator, LiveBounds, PublisherConfig};

/// How often the engine's epoch advances. A guest in a loop notices its deadline (and yields
/// to other tasks) at most this long after it passes.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why the engine could not be set up (a bug or an unsupported machine, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the WebAssembly engine: {0}")]
pub struct EngineError(String);

impl EngineError {
    pub(crate) fn new(message: String) -> Self {
        Self(message)
    }
}

/// What the engine must accommodate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Instance allocation strategy.
    pub allocator: Allocator,
    /// The largest memory limit of any publisher.
    pub max_memory: usize,
    /// How many component instances the pooling allocator holds: the live-instance bound
    /// (or the number of component publishers, when fewer), plus spares.
    pub instances: u32,
    /// How many instances may be alive at once, their memory, their idle timeout.
    pub live: LiveBounds,
    /// Meter fuel (some publisher has a `fuel` limit).
    pub fuel: bool,
    /// The compile cache directory, if any.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            allocator: Allocator::OnDemand,
            max_memory: 64 << 20,
            instances: 16,
            live: LiveBounds::default(),
            fuel: false,
            cache_dir: None,
        }
    }
}

/// The engine, the linker, the epoch ticker, and the lanes guest code runs in. Cheap to
/// clone.
#[derive(Clone)]
pub struct HostEngine {
    engine: Engine,
    linker: Arc<Linker<PublisherState>>,
    pooling: bool,
    fuel: bool,
    settings: EngineSettings,
    lanes: Arc<GuestLanes>,
    live: Arc<LiveInstances>,
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for HostEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEngine").field("pooling", &self.pooling).field("fuel", &self.fuel).finish_non_exhaustive()
    }
}

fn base_config(settings: &EngineSettings) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(settings.fuel);
    // Trap messages name the cause; guest backtraces would only cost time on every trap
    // (a deep recursion has thousands of frames).
    config.wasm_backtrace_max_frames(None);
    if let Some(dir) = &settings.cache_dir {
        match compile_cache(dir) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(err) => tracing::warn!(dir = %dir.display(), %err, "compile cache unavailable; compiling every start"),
        }
    }
    config
}

fn compile_cache(dir: &std::path::Path) -> Result<wasmtime::Cache, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut cache_config = wasmtime::CacheConfig::new();
    cache_config.with_directory(dir);
    wasmtime::Cache::new(cache_config).map_err(|e| e.to_string())
}

fn pooling(settings: &EngineSettings) -> PoolingAllocationConfig {
    let instances = settings.instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(16))
        .max_core_instances_per_component(64)
        .total_memories(instances.saturating_mul(4))
        .max_memories_per_component(8)
        .max_memory_size(settings.max_memory)
        .total_tables(instances.saturating_mul(8))
        .max_tables_per_component(32)
        .table_elements(100_000)
        .total_stacks(instances)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20);
    pool
}

impl HostEngine {
    /// An engine with on-demand allocation and the default compile cache (for
    /// `broadcaster check`).
    pub fn new() -> Result<Self, EngineError> {
        let cache_dir = broadcaster_config::WasmConfig::default().cache_directory();
        Self::with_settings(&EngineSettings { cache_dir, ..EngineSettings::default() })
    }

    /// The engine for the component publishers of a configuration: sized for their number,
    /// their largest memory limit, and fuel when any of them has a fuel limit.
    pub fn for_publishers(
        wasm: &broadcaster_config::WasmConfig,
        components: &[&PublisherConfig],
    ) -> Result<Self, EngineError> {
        let engine = Self::with_settings(&Self::settings_for(wasm, components))?;
        tracing::debug!(pooling = engine.is_pooling(), fuel = engine.meters_fuel(), "wasm engine ready");
        Ok(engine)
    }

    /// The engine for the component publishers of a new configuration (a reload) when
    /// `current` runs the old one: `current` itself when it accommodates them (the usual
    /// case: same allocator, fuel metering if needed, and, when pooling, enough instances of
    /// enough memory), otherwise a new engine that shares `current`'s guest lanes and live
    /// instances, so every tenant still competes for the same threads and the same bound.
    pub fn for_publishers_after(
        current: &HostEngine,
        wasm: &broadcaster_config::WasmConfig,
        components: &[&PublisherConfig],
    ) -> Result<Self, EngineError> {
        let mut wanted = Self::settings_for(wasm, components);
        if current.accommodates(&wanted) {
            return Ok(current.clone());
        }
        // Grow the pool geometrically (up to the live-instance bound): tenants added one at a
        // time (the catalog) then need a new engine a few times, not at every addition.
        let bound = wasm.live_bounds().instances.saturating_add(16);
        wanted.instances = wanted.instances.max(current.settings.instances.saturating_mul(2).min(bound));
        tracing::info!(
            was = ?current.settings,
            now = ?wanted,
            "the new configuration's components need another engine; publishers that did not change keep theirs"
        );
        Self::build(&wanted, Some((current.lanes.clone(), current.live.clone())))
    }

    fn settings_for(wasm: &broadcaster_config::WasmConfig, components: &[&PublisherConfig]) -> EngineSettings {
        EngineSettings {
            allocator: wasm.allocator,
            max_memory: components
                .iter()
                .map(|p| usize::try_from(p.limits.memory.0).unwrap_or(usize::MAX))
                .max()
                .unwrap_or(64 << 20),
            instances: u32::try_from(components.len())
                .unwrap_or(u32::MAX)
                .min(wasm.live_bounds().instances)
                .saturating_add(16),
            live: wasm.live_bounds(),
            fuel: components.iter().any(|p| p.limits.fuel.is_some()),
            cache_dir: wasm.cache_directory(),
        }
    }

    /// Whether components needing `wanted` can run on this engine.
    fn accommodates(&self, wanted: &EngineSettings) -> bool {
        let have = &self.settings;
        have.allocator == wanted.allocator
            && have.cache_dir == wanted.cache_dir
            && have.live == wanted.live
            && (have.fuel || !wanted.fuel)
            && (!self.pooling || (have.instances >= wanted.instances && have.max_memory >= wanted.max_memory))
    }

    /// Creates the engine for `settings` and starts its epoch ticker. With
    /// [`Allocator::Auto`], falls back to on-demand allocation (and says so in the log) when
    /// the pooling allocator cannot reserve its address space.
    pub fn with_settings(settings: &EngineSettings) -> Result<Self, EngineError> {
        Self::build(settings, None)
    }

    fn build(
        settings: &EngineSettings,
        shared: Option<(Arc<GuestLanes>, Arc<LiveInstances>)>,
    ) -> Result<Self, EngineError> {
        let (engine, pooling) = match settings.allocator {
            Allocator::OnDemand => {
                (Engine::new(&base_config(settings)).map_err(|e| EngineError(e.to_string()))?, false)
            }
            Allocator::Pooling | Allocator::Auto => {
                let mut config = base_config(settings);
                config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(settings)));
                match Engine::new(&config) {
                    Ok(engine) => (engine, true),
                    Err(err) if settings.allocator == Allocator::Auto => {
                        tracing::warn!(
                            %err,
                            "the pooling allocator cannot be set up on this machine (address space?); \
                             allocating instances on demand instead"
                        );
                        (Engine::new(&base_config(settings)).map_err(|e| EngineError(e.to_string()))?, false)
                    }
                    Err(err) => return Err(EngineError(format!("pooling allocator: {err}"))),
                }
            }
        };
        let linker = build_linker(&engine).map_err(|e| EngineError(e.to_string()))?;
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        let (lanes, live) = match shared {
            Some(shared) => shared,
            None => (Arc::new(GuestLanes::start()?), LiveInstances::new(settings.live)),
        };
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            pooling,
            fuel: settings.fuel,
            settings: settings.clone(),
            lanes,
            live,
            _ticker: ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with everything a backend may import.
    pub fn linker(&self) -> &Linker<PublisherState> {
        &self.linker
    }

    /// Runs `work` (calls into the guest code of the publisher whose CPU `account` keeps)
    /// on the guest lanes and waits for it.
    pub async fn run_guest<T: Send + 'static>(
        &self,
        account: Arc<CpuAccount>,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.lanes.run(account, work).await
    }

    /// The live instances of every publisher on this engine, and their bounds.
    pub fn live_instances(&self) -> &Arc<LiveInstances> {
        &self.live
    }

    /// Whether instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// Whether fuel is metered.
    pub fn meters_fuel(&self) -> bool {
        self.fuel
    }
}

/// The linker: the contract's `types` interface (types only) of every supported version, and
/// every capability's imports (each capability links its interfaces under every version).
fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<PublisherState>> {
    let mut linker = Linker::new(engine);
    for version in SUPPORTED_VERSIONS {
        linker.instance(&format!("broadcaster:backend/types@{version}"))?;
    }
    for capability in CAPABILITIES {
        capability.add_to_linker(&mut linker)?;
    }
    Ok(linker)
}

/// A thread that advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
