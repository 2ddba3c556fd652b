//! `[wasm]`: how components are compiled and where their instances live.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::{ByteSize, Seconds};

/// `[wasm]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// Keep compiled components on disk, keyed by file hash, wasmtime version and engine
    /// settings, so a restart does not recompile. Default true.
    #[serde(default = "default_true")]
    pub cache: bool,
    /// Where the compile cache lives. Default `$XDG_CACHE_HOME/broadcaster/wasmtime`, or
    /// `~/.cache/broadcaster/wasmtime`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Instance memory strategy: `"pooling"` (pre-reserved slots: fast instantiation and
    /// recycling), `"on-demand"`, or `"auto"` (pooling, falling back to on-demand when the
    /// machine cannot reserve the address space). Default `"auto"`.
    #[serde(default)]
    pub allocator: Allocator,
    /// Most component instances alive at once, across every component publisher. A
    /// publisher's instance is made (and `init`ed) when an event or a check needs it; when
    /// this many are alive, the least recently used idle one is dropped first. The pooling
    /// allocator is sized from this, not from the number of publishers. Default 1000.
    #[serde(default = "default_live_instances")]
    pub live_instances: u32,
    /// Most linear memory of all live instances together (`"2GiB"`, or bytes): above it,
    /// the least recently used idle instances are dropped. Default 2 GiB.
    #[serde(default = "default_live_memory")]
    pub live_memory: ByteSize,
    /// An instance that has published nothing for this long is dropped (its publisher is
    /// then *idle*; its next event makes a new one and runs `init` again). `"0s"` keeps
    /// instances until a bound needs their room. Default 10 min.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Seconds,
}

/// The instance allocation strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    /// Pooling, else on-demand.
    #[default]
    Auto,
    /// Pooling only (start-up fails if it cannot be set up).
    Pooling,
    /// Allocate each instance's memory when it is created.
    OnDemand,
}

impl Default for WasmConfig {
    fn default() -> Self {
        Self {
            cache: true,
            cache_dir: None,
            allocator: Allocator::Auto,
            live_instances: default_live_instances(),
            live_memory: default_live_memory(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_live_instances() -> u32 {
    1000
}

fn default_live_memory() -> ByteSize {
    ByteSize(2 << 30)
}

fn default_idle_timeout() -> Seconds {
    Seconds(std::time::Duration::from_secs(600))
}

impl WasmConfig {
    /// The live-instance bounds these settings ask for.
    pub fn live_bounds(&self) -> LiveBounds {
        LiveBounds {
            instances: self.live_instances.max(1),
            memory: self.live_memory.0,
            idle_timeout: (!self.idle_timeout.0.is_zero()).then_some(self.idle_timeout.0),
        }
    }

    /// The cache directory to use, if caching is on and a directory can be found.
    pub fn cache_directory(&self) -> Option<PathBuf> {
        if !self.cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("broadcaster").join("wasmtime"))
    }
}

/// How many component instances may be alive at once, how much memory they may hold
/// together, and how long an unused one is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveBounds {
    /// Most live instances (at least 1).
    pub instances: u32,
    /// Most linear memory of all live instances, in bytes.
    pub memory: u64,
    /// Drop an instance unused for this long (`None`: only when a bound needs its room).
    pub idle_timeout: Option<std::time::Duration>,
}

impl Default for LiveBounds {
    fn default() -> Self {
        WasmConfig::default().live_bounds()
    }
}
