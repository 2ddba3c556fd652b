//! The one wasmtime engine every component runs on, its linker (WASI + Broadcaster's
//! capabilities), and the epoch ticker that enforces call deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use super::bindings;
use super::state::PublisherState;

/// How often the engine's epoch advances. A guest in a loop notices its deadline (and yields
/// to other tasks) at most this long after it passes.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why the engine could not be set up (a bug or an unsupported machine, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the WebAssembly engine: {0}")]
pub struct EngineError(String);

/// The engine, the linker, and the epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct HostEngine {
    engine: Engine,
    linker: Arc<Linker<PublisherState>>,
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for HostEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEngine").finish_non_exhaustive()
    }
}

impl HostEngine {
    /// Creates the engine and starts its epoch ticker.
    pub fn new() -> Result<Self, EngineError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| EngineError(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| EngineError(e.to_string()))?;
        bindings::Publisher::add_to_linker::<PublisherState, HasSelf<PublisherState>>(&mut linker, |state| state)
            .map_err(|e| EngineError(e.to_string()))?;
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        Ok(Self {
            engine,
            linker: Arc::new(linker),
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
