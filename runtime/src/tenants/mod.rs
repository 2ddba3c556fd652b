//! Tenants defined through the admin API or `broadcaster tenants`, stored in the outbox
//! database's catalog ([`crate::outbox::catalog`]) and applied by every relay of it.
//!
//! - [`TenantCatalog`]: the operations (upload a component, put, list, get, remove and roll
//!   back a publisher, make and revoke a token), each checking its input as strictly as a
//!   reload checks a section (the instance made and `init` run) before anything is stored.
//!   `broadcaster tenants` calls it directly, `serve`'s admin endpoints through
//!   [`crate::server::tenant_admin::TenantAdmin`] (`http.rs` maps its answers to HTTP).
//! - [`start`]: what `run` and `serve` do with the catalog: read it with the file at start
//!   ([`start::load_catalog`]) and follow its changes ([`start::follow_catalog`]), which the
//!   [`crate::reload::Reloader`] applies one tenant at a time.
//!
//! The shapes are the book's (`docs/src/operators/tenant-api.md`).

mod http;
pub mod start;

use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, hex_digest, parse_hex_digest};
use crate::host::{HostEngine, LoadedComponent};
use crate::outbox::catalog::{Catalog, CatalogError, ComponentInfo, PutOutcome, StoredToken};
use crate::registry::{BuildOptions, PublisherRegistry};
use crate::reload::Reloader;

/// Why a tenant operation was refused; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The uploaded bytes are not a backend this relay can run.
    #[error("{0}")]
    ComponentRefused(String),
    /// A definition names a component that is not stored.
    #[error("{0}")]
    ComponentMissing(String),
    /// No such publisher, version or token.
    #[error("{0}")]
    NotFound(String),
    /// The configuration file defines that name: the API does not manage it.
    #[error("{0}")]
    DefinedInFile(String),
    /// `If-Match` named another version than the one in force.
    #[error("{0}")]
    VersionConflict(String),
    /// A token of that name exists.
    #[error("{0}")]
    TokenExists(String),
    /// The definition, or the publisher made from it, was refused: which key, and why.
    #[error("{0}")]
    Refused(String),
    /// The database has no catalog yet.
    #[error("{0}")]
    CatalogMissing(String),
    /// The database failed (or the machine: the engine could not be made).
    #[error("{0}")]
    Unavailable(String),
}

impl TenantError {
    /// The error's stable code (the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::ComponentRefused(_) => "component_refused",
            Self::ComponentMissing(_) => "component_missing",
            Self::NotFound(_) => "not_found",
            Self::DefinedInFile(_) => "defined_in_file",
            Self::VersionConflict(_) => "version_conflict",
            Self::TokenExists(_) => "token_exists",
            Self::Refused(_) => "publisher_refused",
            Self::CatalogMissing(_) => "catalog_missing",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) | Self::ComponentRefused(_) => 400,
            Self::ComponentMissing(_) | Self::NotFound(_) => 404,
            Self::DefinedInFile(_) | Self::VersionConflict(_) | Self::TokenExists(_) => 409,
            Self::Refused(_) => 422,
            Self::CatalogMissing(_) | Self::Unavailable(_) => 503,
        }
    }

    /// Whether the input is at fault (rather than the database or the machine).
    pub fn is_bad_input(&self) -> bool {
        self.status() < 500
    }
}

impl From<CatalogError> for TenantError {
    fn from(err: CatalogError) -> Self {
        match err {
            CatalogError::Missing => Self::CatalogMissing(err.to_string()),
            CatalogError::VersionConflict { .. } => Self::VersionConflict(err.to_string()),
            CatalogError::ComponentMissing(_) => Self::ComponentMissing(err.to_string()),
            CatalogError::TokenExists(_) => Self::TokenExists(err.to_string()),
            CatalogError::Database(_) | CatalogError::BadRow { .. } => Self::Unavailable(err.to_string()),
        }
    }
}

/// A definition's error without the `catalog: ` path: the key and what is wrong.
fn refused(err: ConfigError) -> TenantError {
    TenantError::Refused(match err {
        ConfigError::Invalid { key, message, .. } => format!("`{key}`: {message}"),
        other => other.to_string(),
    })
}

/// What the file (not the catalog) defines: the configuration a command loaded, or the one a
/// running relay has in force (which a reload of the file changes).
#[derive(Debug)]
pub enum FileView {
    /// A configuration loaded for one command.
    Loaded(Box<Config>),
    /// The configuration in force in this process.
    Live(Arc<Reloader>),
}

impl FileView {
    async fn read<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        match self {
            Self::Loaded(config) => f(config),
            Self::Live(reloader) => reloader.with_running(f).await,
        }
    }
}

/// One entry of the publisher list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PublisherSummary {
    /// Its name.
    pub name: String,
    /// `file` or `api`.
    pub source: &'static str,
    /// `redis-stream` or `component`.
    pub kind: &'static str,
    /// The version in force (API publishers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The stored component it runs (API publishers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// When its version was put in force (API publishers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Who put it (API publishers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// A page of the publisher list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PublisherPage {
    /// The publishers, by name.
    pub publishers: Vec<PublisherSummary>,
    /// The name to list after for the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The tenant operations on one outbox database's catalog.
#[derive(Debug)]
pub struct TenantCatalog {
    catalog: Catalog,
    file: FileView,
    /// The engine uploads are checked with, made at the first upload.
    engine: std::sync::Mutex<Option<HostEngine>>,
}

impl TenantCatalog {
    /// The operations on `catalog`, with `file` defining the names the API does not manage.
    pub fn new(catalog: Catalog, file: FileView) -> Self {
        Self { catalog, file, engine: Default::default() }
    }

    /// Checks `bytes` as `broadcaster check` checks a file and stores them; `true` when stored
    /// now, `false` when they were there.
    pub async fn put_component(&self, bytes: &[u8], by: &str) -> Result<(ComponentInfo, bool), TenantError> {
        let (info, created, _) = self.check_and_store_component(bytes, by).await?;
        Ok((info, created))
    }

    /// [`Self::put_component`], also returning the checked component.
    async fn check_and_store_component(
        &self,
        bytes: &[u8],
        by: &str,
    ) -> Result<(ComponentInfo, bool, LoadedComponent), TenantError> {
        let engine = {
            let mut engine = self.engine.lock().expect("engine lock");
            if engine.is_none() {
                *engine = Some(HostEngine::new().map_err(|err| TenantError::Unavailable(err.to_string()))?);
            }
            engine.clone().expect("made above")
        };
        let owned = bytes.to_vec();
        let loaded = tokio::task::spawn_blocking(move || {
            LoadedComponent::from_bytes(&engine, "the uploaded component".as_ref(), &owned)
        })
        .await
        .expect("component check panicked")
        .map_err(|err| TenantError::ComponentRefused(err.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let info = ComponentInfo {
            sha256: hex_digest(&digest),
            size: bytes.len() as u64,
            contract: loaded.version.as_str().to_string(),
            imports: loaded.imports.clone(),
        };
        let created = self.catalog.put_component(&info, bytes, by, Utc::now()).await?;
        Ok((info, created, loaded))
    }

    /// Puts every `[publishers.<name>]` of configuration file `path` in force in the catalog,
    /// in one transaction: each component file uploaded (checked, stored once), each section
    /// checked as the file's loading checks it and against what its component imports. The
    /// publishers are not started here (with 100,000 that would take long): a relay that
    /// cannot start one logs it and keeps what it had. Returns how many definitions were
    /// written and how many were in force already.
    pub async fn import_file(&self, path: &std::path::Path, by: &str) -> Result<(u64, u64), TenantError> {
        let bad = |message: String| TenantError::BadRequest(message);
        let config = crate::checks::load_config(path).map_err(|err| bad(err.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|err| bad(format!("{}: {err}", path.display())))?;
        let raw: toml::Table = toml::from_str(&text).map_err(|err| bad(format!("{}: {err}", path.display())))?;
        let Some(toml::Value::Table(sections)) = raw.get("publishers") else {
            return Err(bad(format!("{} has no [publishers.<name>] to import", path.display())));
        };
        let template = self.file.read(|c| c.without_publishers()).await;
        let mut components: std::collections::HashMap<std::path::PathBuf, (String, LoadedComponent)> =
            Default::default();
        let mut rows = Vec::with_capacity(sections.len());
        for (name, section) in sections {
            if self.file.read(|c| c.file_defines(name)).await {
                return Err(TenantError::DefinedInFile(format!(
                    "publisher `{name}` is defined in this relay's own configuration file; import the others"
                )));
            }
            let publisher = &config.publishers[name];
            let mut definition = crate::config::toml_to_json(section);
            let mut sha = None;
            if let crate::config::PublisherKind::Component(file) = config.kind_of(name, publisher).map_err(refused)? {
                if !components.contains_key(&file) {
                    let bytes = std::fs::read(&file).map_err(|err| bad(format!("{}: {err}", file.display())))?;
                    let (info, _, loaded) = self.check_and_store_component(&bytes, by).await?;
                    components.insert(file.clone(), (info.sha256, loaded));
                }
                let (hex, loaded) = &components[&file];
                if let Some(missing) =
                    loaded.required_grants().into_iter().find(|g| !publisher.grants.contains(g.key()))
                {
                    return Err(TenantError::Refused(format!(
                        "publisher `{name}`: {} imports `{}`; grant it with {}",
                        file.display(),
                        missing.import,
                        missing.example(name)
                    )));
                }
                definition["component"] = Value::String(hex.clone());
                sha = Some(hex.clone());
            }
            let stored = template.api_publisher(name, &definition, 0).map_err(refused)?;
            crate::checks::check_publisher(&template, name, &stored).map_err(refused)?;
            rows.push((name.clone(), definition, sha));
        }
        let written = self.catalog.import_publishers(&rows, by, Utc::now()).await?;
        Ok((written, rows.len() as u64 - written))
    }

    /// Checks `definition` (its keys, the layers' checks, then the publisher made and its
    /// `init` run) and puts it in force as a new version of `name`.
    pub async fn put_publisher(
        &self,
        name: &str,
        mut definition: Value,
        if_version: Option<i64>,
        by: &str,
    ) -> Result<PutOutcome, TenantError> {
        let (in_file, mut candidate) = self.file.read(|c| (c.file_defines(name), c.without_publishers())).await;
        if in_file {
            return Err(TenantError::DefinedInFile(format!(
                "publisher `{name}` is defined in {}; the file's publishers are changed there, not through the API",
                candidate.path.display()
            )));
        }
        if let Some(expected) = if_version {
            // Refused before the (slower) checks; the store checks again as it writes.
            let current = self.catalog.publisher(name).await?.map_or(0, |p| p.version);
            if current != expected {
                return Err(CatalogError::VersionConflict { name: name.to_string(), expected, current }.into());
            }
        }
        if let Some(Value::String(hex)) = definition.get_mut("component") {
            *hex = hex.to_ascii_lowercase();
        }
        let publisher = candidate.api_publisher(name, &definition, 0).map_err(refused)?;
        crate::checks::check_publisher(&candidate, name, &publisher).map_err(refused)?;
        let component = publisher.api.as_ref().and_then(|api| api.component);
        if let Some(digest) = component {
            let hex = hex_digest(&digest);
            let bytes = self.catalog.component_bytes(&hex).await?.ok_or_else(|| {
                TenantError::ComponentMissing(format!(
                    "no component with SHA-256 {hex} is stored: upload it first (PUT /v1/admin/components)"
                ))
            })?;
            candidate.stored_components.insert(digest, Arc::new(bytes));
        }
        candidate.insert_api_publisher(name, &definition, 0).map_err(refused)?;
        let registry =
            PublisherRegistry::build_with(&candidate, None, BuildOptions { strict: true }).await.map_err(|err| {
                match err.is_bad_input() {
                    true => TenantError::Refused(err.to_string()),
                    false => TenantError::Unavailable(err.to_string()),
                }
            })?;
        registry.stop();
        let component = component.map(|digest| hex_digest(&digest));
        Ok(self.catalog.put_publisher(name, &definition, component.as_deref(), if_version, by, Utc::now()).await?)
    }

    /// A page of every publisher, the file's and the catalog's, by name after `after`.
    pub async fn publishers(&self, after: Option<&str>, limit: u32) -> Result<PublisherPage, TenantError> {
        let limit_usize = limit as usize;
        let from_file: Vec<PublisherSummary> = self
            .file
            .read(|config| {
                let range = match after {
                    Some(after) => config
                        .publishers
                        .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
                    None => config.publishers.range::<str, _>(..),
                };
                range
                    .filter(|(_, p)| p.api.is_none())
                    .take(limit_usize)
                    .map(|(name, p)| PublisherSummary {
                        name: name.clone(),
                        source: "file",
                        kind: if p.backend.is_some() { "redis-stream" } else { "component" },
                        version: None,
                        component: None,
                        updated_at: None,
                        updated_by: None,
                    })
                    .collect()
            })
            .await;
        let stored = self.catalog.publishers(after, limit).await?;
        let file_names: std::collections::BTreeSet<String> = from_file.iter().map(|p| p.name.clone()).collect();
        let mut merged: Vec<PublisherSummary> = stored
            .into_iter()
            .filter(|p| !file_names.contains(&p.name))
            .map(|p| PublisherSummary {
                kind: if p.component.is_some() { "component" } else { "redis-stream" },
                source: "api",
                version: Some(p.version),
                updated_at: Some(p.updated_at.to_rfc3339()),
                updated_by: Some(p.updated_by),
                component: p.component,
                name: p.name,
            })
            .chain(from_file)
            .collect();
        merged.sort_by(|a, b| a.name.cmp(&b.name));
        merged.truncate(limit_usize);
        let next = (merged.len() == limit_usize).then(|| merged.last().map(|p| p.name.clone())).flatten();
        Ok(PublisherPage { publishers: merged, next })
    }

    /// Publisher `name`: its definition and versions (API), or where it is defined (file).
    pub async fn publisher(&self, name: &str) -> Result<Value, TenantError> {
        let in_file = self
            .file
            .read(|c| {
                c.file_defines(name).then(|| (c.path.display().to_string(), c.publishers[name].backend.is_some()))
            })
            .await;
        if let Some((path, native)) = in_file {
            return Ok(json!({
                "name": name, "source": "file", "config": path,
                "kind": if native { "redis-stream" } else { "component" },
            }));
        }
        let Some(stored) = self.catalog.publisher(name).await? else {
            return Err(TenantError::NotFound(format!("no publisher named `{name}`")));
        };
        let versions: Vec<Value> = self
            .catalog
            .versions(name)
            .await?
            .into_iter()
            .map(|v| json!({"version": v.version, "created_at": v.created_at.to_rfc3339(), "created_by": v.created_by}))
            .collect();
        Ok(json!({
            "name": stored.name,
            "source": "api",
            "version": stored.version,
            "definition": http::redacted(&stored.definition),
            "updated_at": stored.updated_at.to_rfc3339(),
            "updated_by": stored.updated_by,
            "versions": versions,
        }))
    }

    /// Removes publisher `name` from force; the version removed.
    pub async fn remove_publisher(&self, name: &str) -> Result<i64, TenantError> {
        self.refuse_file_publisher(name).await?;
        self.catalog
            .remove_publisher(name, Utc::now())
            .await?
            .ok_or_else(|| TenantError::NotFound(format!("no publisher named `{name}` is defined through the API")))
    }

    /// Puts version `version` of `name` (by default the one before the version in force, or
    /// after a removal the last one) back in force as a new version, checked as a put is.
    /// Returns the new version and the one it copies.
    pub async fn rollback(&self, name: &str, version: Option<i64>, by: &str) -> Result<(i64, i64), TenantError> {
        self.refuse_file_publisher(name).await?;
        let current = self.catalog.publisher(name).await?.map(|p| p.version);
        let versions = self.catalog.versions(name).await?;
        let target = match version {
            Some(wanted) => versions.into_iter().find(|v| v.version == wanted),
            None => versions.into_iter().rev().find(|v| current.is_none_or(|current| v.version < current)),
        }
        .ok_or_else(|| {
            TenantError::NotFound(match version {
                Some(v) => format!("publisher `{name}` has no version {v} (pruned, or never written)"),
                None => format!("publisher `{name}` has no earlier version to roll back to"),
            })
        })?;
        let outcome = self.put_publisher(name, target.definition, Some(current.unwrap_or(0)), by).await?;
        Ok((outcome.version(), target.version))
    }

    /// Makes a token for `publishers` (glob patterns) with an optional rate limit; returns it
    /// (shown this once: only its SHA-256 is stored).
    pub async fn make_token(
        &self,
        name: &str,
        publishers: Vec<String>,
        rate: Option<f64>,
        burst: Option<u32>,
        by: &str,
    ) -> Result<String, TenantError> {
        let bad = |message: String| Err(TenantError::BadRequest(message));
        if name.is_empty() || name.len() > 100 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad("a token name is 1 to 100 characters of letters, digits, `-`, `_` and `.`".into());
        }
        if publishers.is_empty() || publishers.iter().any(String::is_empty) {
            return bad(
                "`publishers` lists the publishers the token may send to, like [\"tenant-a\", \"tenant-a-*\"]".into()
            );
        }
        if rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
            return bad("`rate` is a number of events per second above 0".into());
        }
        if burst == Some(0) || (burst.is_some() && rate.is_none()) {
            return bad("`burst` is at least 1, and the headroom above `rate`: set `rate` too".into());
        }
        if self.file.read(|c| c.tokens.contains_key(name)).await {
            return Err(TenantError::TokenExists(format!(
                "a token named `{name}` is defined in the configuration file"
            )));
        }
        let secret: [u8; 32] = rand::random();
        let token = format!("bt_{}", hex_digest(&secret));
        let stored = StoredToken {
            name: name.to_string(),
            sha256: hex_digest(&Sha256::digest(token.as_bytes()).into()),
            publishers,
            rate,
            burst,
            created_at: Utc::now(),
            created_by: by.to_string(),
        };
        self.catalog.put_token(&stored).await?;
        Ok(token)
    }

    /// Revokes token `name`.
    pub async fn revoke_token(&self, name: &str) -> Result<(), TenantError> {
        if self.file.read(|c| c.tokens.contains_key(name)).await {
            return Err(TenantError::DefinedInFile(format!(
                "token `{name}` is defined in the configuration file; remove it there"
            )));
        }
        match self.catalog.remove_token(name, Utc::now()).await? {
            true => Ok(()),
            false => Err(TenantError::NotFound(format!("no token named `{name}` was made through the API"))),
        }
    }

    async fn refuse_file_publisher(&self, name: &str) -> Result<(), TenantError> {
        match self.file.read(|c| c.file_defines(name).then(|| c.path.display().to_string())).await {
            Some(path) => Err(TenantError::DefinedInFile(format!(
                "publisher `{name}` is defined in {path}; the file's publishers are changed there, not through the API"
            ))),
            None => Ok(()),
        }
    }

    /// The SHA-256 (hex) of a component given as a stored digest or a file, uploading the
    /// file first (`broadcaster tenants put --component`).
    pub async fn component_reference(&self, given: &str, by: &str) -> Result<String, TenantError> {
        if parse_hex_digest(&given.to_ascii_lowercase()).is_some() && !std::path::Path::new(given).exists() {
            return Ok(given.to_ascii_lowercase());
        }
        let bytes = std::fs::read(given)
            .map_err(|err| TenantError::BadRequest(format!("cannot read component file {given}: {err}")))?;
        Ok(self.put_component(&bytes, by).await?.0.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog in a fresh SQLite file beside a configuration whose file defines `file_names`
    /// (native publishers).
    async fn catalog_beside(file_names: &[&str]) -> (tempfile::TempDir, TenantCatalog, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let mut text = format!("[outbox]\nurl = \"{url}\"\n");
        for name in file_names {
            text.push_str(&format!("[publishers.{name}]\nbackend = \"redis-stream\"\n"));
        }
        let config = Config::from_toml(&text, &dir.path().join("broadcaster.toml"), Vec::new()).unwrap();
        let store = crate::outbox::OutboxStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let catalog = store.catalog().unwrap();
        (dir, TenantCatalog::new(catalog.clone(), FileView::Loaded(Box::new(config))), catalog)
    }

    #[tokio::test]
    async fn the_publisher_list_merges_the_file_and_the_catalog_by_name_a_page_at_a_time() {
        let (_dir, tenants, catalog) = catalog_beside(&["b", "d"]).await;
        for name in ["a", "c", "e", "d"] {
            let definition = json!({"backend": "redis-stream", "options": {"stream_name": name}});
            catalog.put_publisher(name, &definition, None, None, "test", Utc::now()).await.unwrap();
        }
        let page = |after: Option<&'static str>| {
            let tenants = &tenants;
            async move {
                let page = tenants.publishers(after, 2).await.unwrap();
                let names: Vec<(String, &str)> = page.publishers.into_iter().map(|p| (p.name, p.source)).collect();
                (names, page.next)
            }
        };
        let own = |pairs: &[(&str, &'static str)]| pairs.iter().map(|(n, s)| (n.to_string(), *s)).collect::<Vec<_>>();
        assert_eq!(page(None).await, (own(&[("a", "api"), ("b", "file")]), Some("b".into())));
        // `d` is in both: the file's is the one in force, and it is listed once.
        assert_eq!(page(Some("b")).await, (own(&[("c", "api"), ("d", "file")]), Some("d".into())));
        assert_eq!(page(Some("d")).await, (own(&[("e", "api")]), None));
    }

    #[tokio::test]
    async fn the_file_s_names_are_refused_and_rollbacks_name_what_is_missing() {
        let (_dir, tenants, _catalog) = catalog_beside(&["filed"]).await;
        let definition = json!({"backend": "redis-stream"});
        let err = tenants.put_publisher("filed", definition, None, "test").await.unwrap_err();
        assert_eq!((err.code(), err.status()), ("defined_in_file", 409));
        assert_eq!(tenants.remove_publisher("filed").await.unwrap_err().code(), "defined_in_file");
        let err = tenants.rollback("nobody", None, "test").await.unwrap_err();
        assert_eq!(err.code(), "not_found");
        assert!(err.to_string().contains("no earlier version"), "{err}");
        let err = tenants.make_token("t", vec![], None, None, "test").await.unwrap_err();
        assert_eq!(err.code(), "bad_request");
        let err = tenants.make_token("t", vec!["t".into()], None, Some(5), "test").await.unwrap_err();
        assert!(err.to_string().contains("set `rate` too"), "{err}");
        let token = tenants.make_token("t", vec!["t-*".into()], Some(10.0), Some(5), "test").await.unwrap();
        assert!(token.starts_with("bt_") && token.len() == 67, "{token}");
        assert_eq!(
            tenants.make_token("t", vec!["x".into()], None, None, "test").await.unwrap_err().code(),
            "token_exists"
        );
        tenants.revoke_token("t").await.unwrap();
        assert_eq!(tenants.revoke_token("t").await.unwrap_err().code(), "not_found");
    }
}
