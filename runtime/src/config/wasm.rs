//! `[wasm]`: how components are compiled and where their instances live.

use std::path::PathBuf;

use serde::Deserialize;

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
        Self { cache: true, cache_dir: None, allocator: Allocator::Auto }
    }
}

fn default_true() -> bool {
    true
}

impl WasmConfig {
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
