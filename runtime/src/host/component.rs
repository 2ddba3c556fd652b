//! Loading a `.wasm` file and checking that it is a component of the
//! `broadcaster:backend/publisher` world, with a precise reason when it is not.

use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use super::bindings::PublisherPre;
use super::capabilities::{self, CapabilityEntry};
use super::engine::HostEngine;
use super::state::PublisherState;

/// The version of the `broadcaster:backend` package this host implements.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// The versions of the `broadcaster:backend` package this host implements.
pub const SUPPORTED_VERSIONS: &[&str] = &[CONTRACT_VERSION];

/// The export every backend must have.
pub const BACKEND_EXPORT: &str = "broadcaster:backend/backend@0.1.0";

/// The contract's own interface of shared types (no functions: always provided).
const CONTRACT_TYPES: &str = "broadcaster:backend/types";

/// Why a file cannot be used as a backend.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The file could not be read.
    #[error("cannot read component {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
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
        let bytes = std::fs::read(path).map_err(|cause| ComponentError::Read { path: path.to_path_buf(), cause })?;
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
            version: CONTRACT_VERSION,
            message: format!("{e:#}"),
        })?;
        let pre = PublisherPre::new(instance_pre).map_err(|e| ComponentError::Mismatch {
            path: path_buf.clone(),
            version: CONTRACT_VERSION,
            message: format!("{e:#}"),
        })?;
        Ok(Self { path: path_buf, imports, pre })
    }

    /// The file name without extension, for tables and logs.
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The grants its imports need: for each capability that needs one, the first import
    /// that needs it.
    pub fn required_grants(&self) -> Vec<RequiredGrant<'_>> {
        let mut needed: Vec<RequiredGrant<'_>> = Vec::new();
        for import in &self.imports {
            let interface = import.split_once('@').map_or(import.as_str(), |(interface, _)| interface);
            if let Some(capability) = capabilities::providing(interface)
                && capability.needs_grant(interface)
                && !needed.iter().any(|n| std::ptr::addr_eq(n.capability, capability))
            {
                needed.push(RequiredGrant { capability, import });
            }
        }
        needed
    }
}

/// A grant a component needs, and the import that needs it.
#[derive(Clone, Copy)]
pub struct RequiredGrant<'a> {
    /// The capability.
    pub capability: &'static dyn CapabilityEntry,
    /// The import, with its version.
    pub import: &'a str,
}

impl RequiredGrant<'_> {
    /// The grant's key under `[publishers.<name>.grants]`.
    pub fn key(&self) -> &'static str {
        self.capability.grant().unwrap_or_default()
    }

    /// The configuration that would grant it to `publisher`, for messages.
    pub fn example(&self, publisher: &str) -> String {
        format!("[publishers.{publisher}.grants] {} = {}", self.key(), self.capability.grant_example())
    }
}

impl std::fmt::Debug for RequiredGrant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequiredGrant").field("grant", &self.key()).field("import", &self.import).finish()
    }
}

/// `Ok` when this host provides `import`; otherwise why not.
fn import_supported(import: &str) -> Result<(), String> {
    let (interface, version) = import.split_once('@').unwrap_or((import, ""));
    let package = interface.split_once('/').map_or(interface, |(package, _)| package);
    if package == "broadcaster:backend" && !SUPPORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "it was built against broadcaster:backend@{version}, and this Broadcaster supports {}; \
             rebuild it against wit/backend@{CONTRACT_VERSION}",
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    if package.starts_with("wasi:") && !version.starts_with("0.2.") {
        return Err(format!("Broadcaster provides WASI 0.2 (0.2.x); `{import}` is not provided"));
    }
    if interface == CONTRACT_TYPES || capabilities::providing(interface).is_some() {
        return Ok(());
    }
    // An interface of a package a capability serves, which it does not provide.
    let same_package = |pattern: &&str| pattern.split_once('/').is_some_and(|(p, _)| p == package);
    if let Some(capability) = capabilities::CAPABILITIES.iter().find(|c| c.interfaces().iter().any(same_package)) {
        let provided: Vec<&str> = capability.interfaces().iter().copied().filter(same_package).collect();
        return Err(format!(
            "of {package}, Broadcaster provides {}@0.2.x only {}",
            provided.join(", "),
            capability.unprovided_note()
        )
        .trim_end()
        .to_string());
    }
    let all: Vec<&str> = capabilities::CAPABILITIES.iter().flat_map(|c| c.interfaces().iter().copied()).collect();
    Err(format!("a backend may import {CONTRACT_TYPES} and {} only", all.join(", ")))
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
        assert!(serve.contains("cannot serve HTTP") && serve.contains("wasi:http/outgoing-handler"), "{serve}");
        let p3 = import_supported("wasi:io/streams@0.3.0").unwrap_err();
        assert!(p3.contains("0.2.x"), "{p3}");
        assert!(import_supported("wasi:keyvalue/store@0.2.0").is_err());
        let other = import_supported("acme:kv/store@1.0.0").unwrap_err();
        assert!(other.contains("may import"), "{other}");
    }

    #[test]
    fn a_command_component_is_told_it_is_for_another_world() {
        let reason = missing_export_reason(&["wasi:cli/run@0.2.6".into()]);
        assert!(reason.contains("wasi:cli/run@0.2.6") && reason.contains("another world"), "{reason}");
    }
}
