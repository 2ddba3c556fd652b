//! Loading a `.wasm` file and checking that it is a component of the
//! `broadcaster:backend/publisher` world, with a precise reason when it is not.

use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use super::bindings::PublisherPre;
use super::engine::HostEngine;
use super::state::PublisherState;

/// The versions of the `broadcaster:backend` package this host implements.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0"];

/// The export every backend must have.
pub const BACKEND_EXPORT: &str = "broadcaster:backend/backend@0.1.0";

/// WASI 0.2 packages a backend may import; they are present but empty (no files, no
/// environment, no sockets).
const WASI_PACKAGES: &[&str] = &["cli", "clocks", "filesystem", "io", "random", "sockets"];

/// Why a file cannot be used as a backend.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error("{path} is not a WebAssembly file (it does not start with the `\\0asm` header)")]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// A core module, not a component.
    #[error(
        "{path} is a core WebAssembly module, not a component: build the backend for the \
         `wasm32-wasip2` target (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// wasmtime could not compile it.
    #[error("{path} is not a valid component: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// wasmtime's message.
        message: String,
    },
    /// It imports something this host does not provide.
    #[error("{path} imports `{import}`, which Broadcaster does not provide: {reason}")]
    UnsupportedImport {
        /// The file.
        path: PathBuf,
        /// The import name.
        import: String,
        /// Why, and what is provided.
        reason: String,
    },
    /// It does not export the backend interface.
    #[error("{path} is not a Broadcaster backend: {reason}")]
    NotABackend {
        /// The file.
        path: PathBuf,
        /// What it exports instead.
        reason: String,
    },
    /// Names match but types do not (built against a different WIT).
    #[error("{path} does not match the broadcaster:backend@{version} world: {message}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The WIT version checked against.
        version: &'static str,
        /// wasmtime's message.
        message: String,
    },
}

/// A compiled, checked backend component, ready to be instantiated any number of times.
#[derive(Clone)]
pub struct LoadedComponent {
    /// The file it came from.
    pub path: PathBuf,
    /// The import names it declared.
    pub imports: Vec<String>,
    pub(crate) pre: PublisherPre<PublisherState>,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent").field("path", &self.path).field("imports", &self.imports).finish()
    }
}

impl LoadedComponent {
    /// Reads, compiles and checks `path`.
    pub fn load(engine: &HostEngine, path: &Path) -> Result<Self, ComponentError> {
        let bytes = std::fs::read(path).map_err(|source| ComponentError::Read { path: path.to_path_buf(), source })?;
        Self::from_bytes(engine, path, &bytes)
    }

    /// Compiles and checks `bytes`, read from `path`.
    pub fn from_bytes(engine: &HostEngine, path: &Path, bytes: &[u8]) -> Result<Self, ComponentError> {
        let path_buf = path.to_path_buf();
        if wasmparser::Parser::is_core_wasm(bytes) {
            return Err(ComponentError::CoreModule { path: path_buf });
        }
        if !wasmparser::Parser::is_component(bytes) {
            return Err(ComponentError::NotWasm { path: path_buf });
        }
        let component = Component::from_binary(engine.engine(), bytes)
            .map_err(|e| ComponentError::Invalid { path: path_buf.clone(), message: format!("{e:#}") })?;
        Self::check(engine, path, component)
    }

    fn check(engine: &HostEngine, path: &Path, component: Component) -> Result<Self, ComponentError> {
        let path_buf = path.to_path_buf();
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine.engine()).map(|(name, _)| name.to_string()).collect();
        for import in &imports {
            if let Err(reason) = import_supported(import) {
                return Err(ComponentError::UnsupportedImport { path: path_buf, import: import.clone(), reason });
            }
        }
        let exports: Vec<String> = ty.exports(engine.engine()).map(|(name, _)| name.to_string()).collect();
        if !exports.iter().any(|name| name == BACKEND_EXPORT) {
            return Err(ComponentError::NotABackend { path: path_buf, reason: missing_export_reason(&exports) });
        }
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| ComponentError::Mismatch {
            path: path_buf.clone(),
            version: SUPPORTED_VERSIONS[0],
            message: format!("{e:#}"),
        })?;
        let pre = PublisherPre::new(instance_pre).map_err(|e| ComponentError::Mismatch {
            path: path_buf.clone(),
            version: SUPPORTED_VERSIONS[0],
            message: format!("{e:#}"),
        })?;
        Ok(Self { path: path_buf, imports, pre })
    }

    /// The file name without extension, for tables and logs.
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The capabilities its imports need, as (grant name, the import that needs it).
    pub fn required_grants(&self) -> Vec<(&'static str, &str)> {
        let mut needed = Vec::new();
        if let Some(i) = self.imports.iter().find(|i| i.starts_with("broadcaster:backend/redis-stream@")) {
            needed.push(("redis", i.as_str()));
        }
        if let Some(i) = self.imports.iter().find(|i| i.starts_with("wasi:http/outgoing-handler@")) {
            needed.push(("http", i.as_str()));
        }
        needed
    }
}

/// `Ok` when this host provides `import`; otherwise why not.
fn import_supported(import: &str) -> Result<(), String> {
    let (package, rest) = import.split_once('/').unwrap_or((import, ""));
    let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
    match package {
        "broadcaster:backend" => {
            if SUPPORTED_VERSIONS.contains(&version) {
                Ok(())
            } else {
                Err(format!(
                    "it was built against broadcaster:backend@{version}, and this Broadcaster supports {}; \
                     rebuild it against wit/backend@{}",
                    SUPPORTED_VERSIONS.join(", "),
                    SUPPORTED_VERSIONS[0]
                ))
            }
        }
        "wasi:http" if matches!(interface, "types" | "outgoing-handler") && version.starts_with("0.2.") => Ok(()),
        "wasi:http" => Err(format!(
            "Broadcaster grants outbound HTTP through wasi:http/{{types,outgoing-handler}}@0.2.x; `{import}` is \
             not provided (a backend cannot serve HTTP)"
        )),
        p if p.starts_with("wasi:") => {
            let name = &p["wasi:".len()..];
            if WASI_PACKAGES.contains(&name) && version.starts_with("0.2.") {
                Ok(())
            } else {
                Err(format!("the WASI interfaces provided are wasi:{{{}}}@0.2.x", WASI_PACKAGES.join(",")))
            }
        }
        _ => Err(format!(
            "a backend may import broadcaster:backend/{{redis-stream,log,types}}@{} and WASI 0.2 only",
            SUPPORTED_VERSIONS[0]
        )),
    }
}

fn missing_export_reason(exports: &[String]) -> String {
    if let Some(name) = exports.iter().find(|name| name.starts_with("broadcaster:backend/backend@")) {
        return format!(
            "it exports `{name}`, and this Broadcaster supports broadcaster:backend@{}",
            SUPPORTED_VERSIONS.join(", ")
        );
    }
    let names: Vec<&str> = exports.iter().map(String::as_str).collect();
    let what = if names.is_empty() { "nothing".to_string() } else { names.join(", ") };
    format!(
        "it must export `{BACKEND_EXPORT}` (the `publisher` world in wit/), but it exports {what}; \
         was it built for another world?"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_sorted_into_provided_and_not() {
        assert!(import_supported("broadcaster:backend/redis-stream@0.1.0").is_ok());
        assert!(import_supported("wasi:io/streams@0.2.6").is_ok());
        assert!(import_supported("wasi:cli/environment@0.2.0").is_ok());
        let newer = import_supported("broadcaster:backend/log@0.2.0").unwrap_err();
        assert!(newer.contains("built against broadcaster:backend@0.2.0"), "{newer}");
        assert!(import_supported("wasi:http/outgoing-handler@0.2.3").is_ok());
        let serve = import_supported("wasi:http/incoming-handler@0.2.3").unwrap_err();
        assert!(serve.contains("cannot serve HTTP"), "{serve}");
        let p3 = import_supported("wasi:io/streams@0.3.0").unwrap_err();
        assert!(p3.contains("0.2.x"), "{p3}");
        let other = import_supported("acme:kv/store@1.0.0").unwrap_err();
        assert!(other.contains("may import"), "{other}");
    }

    #[test]
    fn a_command_component_is_told_it_is_for_another_world() {
        let reason = missing_export_reason(&["wasi:cli/run@0.2.6".into()]);
        assert!(reason.contains("wasi:cli/run@0.2.6") && reason.contains("another world"), "{reason}");
    }
}
