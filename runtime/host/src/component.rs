//! Loading a `.wasm` file and checking that it is a component of the
//! `broadcaster:backend/publisher` world, with a precise reason when it is not.

use std::path::{Path, PathBuf};

use wasmtime::component::Component;

use super::bindings::{v0_1, v0_2};
use super::capabilities::{self, CapabilityEntry};
use super::engine::HostEngine;
use super::state::PublisherState;

/// The newest version of the `broadcaster:backend` package this host implements: the one
/// new backends are built against.
pub const CONTRACT_VERSION: &str = "0.2.0";

/// The versions of the `broadcaster:backend` package this host implements, oldest first.
/// The host links every capability under each of them.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", CONTRACT_VERSION];

/// The export a backend of the newest version has.
pub const BACKEND_EXPORT: &str = "broadcaster:backend/backend@0.2.0";

/// The version of the contract a component was built against, which decides how it is
/// called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    /// `broadcaster:backend@0.1.0`: `publish` once per event.
    V0_1,
    /// `broadcaster:backend@0.2.0`: `publish-batch` once per batch.
    V0_2,
}

impl ContractVersion {
    /// Every version, oldest first.
    pub const ALL: [Self; 2] = [Self::V0_1, Self::V0_2];

    /// `0.1.0`, `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        }
    }

    /// The name of its `backend` export.
    pub fn backend_export(self) -> String {
        format!("broadcaster:backend/backend@{}", self.as_str())
    }

    /// Whether it has the batch calls: `publish-batch` exported, `xadd-batch` imported.
    pub fn has_batches(self) -> bool {
        self != Self::V0_1
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked component, ready to instantiate, with the bindings of its contract version.
#[derive(Clone)]
pub(crate) enum ContractPre {
    /// Built against 0.1.0.
    V0_1(v0_1::PublisherPre<PublisherState>),
    /// Built against 0.2.0.
    V0_2(v0_2::PublisherPre<PublisherState>),
}

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
        version: ContractVersion,
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
    /// The contract version it exports `backend` of.
    pub version: ContractVersion,
    pub(crate) pre: ContractPre,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("path", &self.path)
            .field("imports", &self.imports)
            .field("version", &self.version)
            .finish()
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
        let Some(version) =
            ContractVersion::ALL.into_iter().rev().find(|v| exports.iter().any(|name| *name == v.backend_export()))
        else {
            return Err(ComponentError::NotABackend { path: path_buf, reason: missing_export_reason(&exports) });
        };
        let mismatch = |e: wasmtime::Error| ComponentError::Mismatch {
            path: path_buf.clone(),
            version,
            message: format!("{e:#}"),
        };
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(mismatch)?;
        let pre = match version {
            ContractVersion::V0_1 => ContractPre::V0_1(v0_1::PublisherPre::new(instance_pre).map_err(mismatch)?),
            ContractVersion::V0_2 => ContractPre::V0_2(v0_2::PublisherPre::new(instance_pre).map_err(mismatch)?),
        };
        Ok(Self { path: path_buf, imports, version, pre })
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
             rebuild it against wit/backend@{CONTRACT_VERSION} (or wit/backend@0.1.0)",
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
    let accepted: Vec<String> =
        ContractVersion::ALL.iter().rev().map(|v| format!("`{}`", v.backend_export())).collect();
    format!(
        "it must export {} (the `publisher` world in wit/), but it exports {what}; \
         was it built for another world?",
        accepted.join(" or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_sorted_into_provided_and_not() {
        assert!(import_supported("broadcaster:backend/redis-stream@0.1.0").is_ok());
        assert!(import_supported("broadcaster:backend/redis-stream@0.2.0").is_ok());
        assert!(import_supported("wasi:io/streams@0.2.6").is_ok());
        assert!(import_supported("wasi:cli/environment@0.2.0").is_ok());
        let newer = import_supported("broadcaster:backend/log@0.3.0").unwrap_err();
        assert!(newer.contains("built against broadcaster:backend@0.3.0"), "{newer}");
        assert!(newer.contains("supports 0.1.0, 0.2.0"), "{newer}");
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
        assert!(reason.contains("backend@0.2.0") && reason.contains("backend@0.1.0"), "{reason}");
        let future = missing_export_reason(&["broadcaster:backend/backend@0.9.0".into()]);
        assert!(future.contains("supports broadcaster:backend@0.1.0, 0.2.0"), "{future}");
    }
}
