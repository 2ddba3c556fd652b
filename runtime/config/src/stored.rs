//! Publishers defined in the catalog (the admin API, `broadcaster tenants`) rather than in the
//! file: their definition is a `[publishers.<name>]` section as JSON, with `component` the
//! SHA-256 of a stored component instead of a path. [`Config::insert_api_publisher`] checks
//! one as strictly as the file's sections are checked and adds it to a configuration; the
//! registry then builds it like any other (its component's bytes from
//! [`Config::stored_components`]).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{ApiOrigin, Config, ConfigError, PublisherConfig};

/// The bytes of stored components, by SHA-256: cheap to clone, shared by every clone of a
/// configuration.
#[derive(Clone, Default)]
pub struct StoredComponents(Arc<HashMap<[u8; 32], Arc<Vec<u8>>>>);

impl std::fmt::Debug for StoredComponents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys().map(hex_digest)).finish()
    }
}

impl StoredComponents {
    /// The bytes of the component with SHA-256 `digest`, when held.
    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        self.0.get(digest).cloned()
    }

    /// Whether the component with SHA-256 `digest` is held.
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.0.contains_key(digest)
    }

    /// Holds `bytes` as the component with SHA-256 `digest`.
    pub fn insert(&mut self, digest: [u8; 32], bytes: Arc<Vec<u8>>) {
        Arc::make_mut(&mut self.0).insert(digest, bytes);
    }

    /// Keeps only the components `keep` says to keep.
    pub fn retain(&mut self, keep: impl Fn(&[u8; 32]) -> bool) {
        if self.0.keys().any(|digest| !keep(digest)) {
            Arc::make_mut(&mut self.0).retain(|digest, _| keep(digest));
        }
    }
}

/// A SHA-256 as lowercase hex.
pub fn hex_digest(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 from 64 hex digits.
pub fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// JSON as TOML: `null` has no TOML form and is refused, naming where it is.
fn json_to_toml(value: &Value, at: &str) -> Result<toml::Value, String> {
    Ok(match value {
        Value::Null => return Err(format!("`{at}` is null; leave the key out instead")),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().ok_or_else(|| format!("`{at}`: {n} is out of range"))?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| json_to_toml(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(key, item)| {
                    let at = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                    Ok((key.clone(), json_to_toml(item, &at)?))
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

impl Config {
    /// Adds (or replaces) publisher `name` as the catalog defines it at `version`:
    /// `definition` is `{"component": "<sha256>", "options", "grants", "limits"}` or
    /// `{"backend": "redis-stream", "options"}`. It is checked as a file's section is (the
    /// same keys, values and ranges; an error's key is `publishers.<name>.<key>` and its path
    /// `catalog`); the layers' own checks (`broadcaster::checks`) and the component itself
    /// are the caller's to check. The component's bytes are not needed here: the registry
    /// takes them from [`Config::stored_components`] when it builds the publisher.
    pub fn insert_api_publisher(&mut self, name: &str, definition: &Value, version: i64) -> Result<(), ConfigError> {
        let publisher = self.api_publisher(name, definition, version)?;
        let digest = super::digest(&json_to_toml(definition, "").unwrap_or(toml::Value::Boolean(false)));
        self.sections.publishers.insert(name.to_string(), digest);
        self.publishers.insert(name.to_string(), publisher);
        Ok(())
    }

    /// Checks `definition` as [`Config::insert_api_publisher`] does, without adding it.
    pub fn api_publisher(&self, name: &str, definition: &Value, version: i64) -> Result<PublisherConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: "catalog".into(),
            key: if key.is_empty() { format!("publishers.{name}") } else { format!("publishers.{name}.{key}") },
            message,
        };
        let Value::Object(fields) = definition else {
            return Err(invalid("", "a publisher's definition is a JSON object".into()));
        };
        let mut fields = fields.clone();
        let component = match fields.remove("component") {
            None => None,
            Some(Value::String(hex)) => Some(parse_hex_digest(&hex.to_ascii_lowercase()).ok_or_else(|| {
                invalid("component", "the SHA-256 of a stored component: 64 hex digits, as its upload answered".into())
            })?),
            Some(_) => {
                return Err(invalid(
                    "component",
                    "the SHA-256 of a stored component, as a string of 64 hex digits".into(),
                ));
            }
        };
        let table = json_to_toml(&Value::Object(fields), "").map_err(|message| invalid("", message))?;
        let mut publisher: PublisherConfig = serde_path_to_error::deserialize(table).map_err(|err| {
            let key = err.path().to_string();
            let message = err.into_inner().to_string().lines().next().unwrap_or_default().to_string();
            invalid(if key == "." { "" } else { &key }, message)
        })?;
        if component.is_some() && publisher.backend.is_some() {
            return Err(invalid(
                "",
                "set either `backend` (a native backend) or `component` (a stored component), not both".into(),
            ));
        }
        if component.is_none() && publisher.backend.is_none() {
            return Err(invalid(
                "",
                "set `component` (the SHA-256 of a stored component) or `backend` (\"redis-stream\")".into(),
            ));
        }
        publisher.api = Some(ApiOrigin { version, component });
        let mut checked = self.validate_publisher(name, &publisher);
        if let Err(ConfigError::Invalid { path, .. }) = &mut checked {
            *path = "catalog".into();
        }
        checked?;
        Ok(publisher)
    }

    /// This configuration without its publishers (and the components they run): the
    /// settings a catalog definition is checked and built with.
    pub fn without_publishers(&self) -> Config {
        Config {
            outbox: self.outbox.clone(),
            publishers: Default::default(),
            relay: self.relay.clone(),
            wasm: self.wasm.clone(),
            server: self.server.clone(),
            tokens: self.tokens.clone(),
            telemetry: self.telemetry.clone(),
            base_dir: self.base_dir.clone(),
            path: self.path.clone(),
            sections: super::SectionDigests { top: self.sections.top.clone(), publishers: HashMap::new() },
            stored_components: StoredComponents::default(),
        }
    }

    /// Publisher `name` as this configuration has it, with its section digest: what
    /// [`Config::restore_publisher`] puts back.
    pub fn publisher_entry(&self, name: &str) -> Option<(PublisherConfig, [u8; 32])> {
        Some((self.publishers.get(name)?.clone(), self.publisher_section(name)?))
    }

    /// Puts back (or removes, with `None`) what [`Config::publisher_entry`] returned.
    pub fn restore_publisher(&mut self, name: &str, entry: Option<(PublisherConfig, [u8; 32])>) {
        match entry {
            Some((publisher, digest)) => {
                self.publishers.insert(name.to_string(), publisher);
                self.sections.publishers.insert(name.to_string(), digest);
            }
            None => {
                self.publishers.remove(name);
                self.sections.publishers.remove(name);
            }
        }
    }

    /// Takes the catalog's publishers of `running` (and the components they run) into this
    /// configuration, newly read from the file: a reload of the file keeps them. A name the
    /// file now defines is the file's.
    pub fn keep_api_publishers_of(&mut self, running: &Config) {
        for (name, publisher) in &running.publishers {
            if publisher.api.is_some() && !self.publishers.contains_key(name) {
                self.publishers.insert(name.clone(), publisher.clone());
                if let Some(digest) = running.publisher_section(name) {
                    self.sections.publishers.insert(name.clone(), digest);
                }
            }
        }
        self.stored_components = running.stored_components.clone();
    }

    /// Whether `[publishers.<name>]` of the file (not the catalog) defines `name`.
    pub fn file_defines(&self, name: &str) -> bool {
        self.publishers.get(name).is_some_and(|p| p.api.is_none())
    }

    /// Removes publisher `name` when the catalog defined it; `true` when it did.
    pub fn remove_api_publisher(&mut self, name: &str) -> bool {
        if self.publishers.get(name).is_some_and(|p| p.api.is_some()) {
            self.publishers.remove(name);
            self.sections.publishers.remove(name);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::PublisherKind;

    fn config() -> Config {
        Config::from_toml("[publishers.file]\nbackend = \"redis-stream\"\n", Path::new("b.toml"), Vec::new()).unwrap()
    }

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_definition_becomes_a_publisher_running_its_stored_component() {
        let mut config = config();
        let sha = "ab".repeat(32);
        let definition = json!({"component": sha, "options": {"stream": "s", "n": 1.5}, "limits": {"memory": "32MiB"}});
        config.insert_api_publisher("tenant-a", &definition, 3).unwrap();
        let publisher = &config.publishers["tenant-a"];
        assert_eq!(publisher.limits.memory.0, 32 << 20);
        assert_eq!(publisher.options["n"].as_float(), Some(1.5));
        assert!(publisher.runs_component());
        assert_eq!(config.kind_of("tenant-a", publisher).unwrap(), PublisherKind::Stored([0xab; 32]));
        let digest = config.publisher_section("tenant-a").unwrap();
        config.insert_api_publisher("tenant-a", &json!({"component": sha}), 4).unwrap();
        assert_ne!(config.publisher_section("tenant-a").unwrap(), digest, "a new definition is a change");
        assert!(config.remove_api_publisher("tenant-a"));
        assert!(!config.remove_api_publisher("file"), "the file's publishers are not the catalog's to remove");
    }

    #[test]
    fn a_bad_definition_names_the_key() {
        let config = config();
        let sha = "ab".repeat(32);
        let cases = [
            (json!({"component": sha, "limits": {"memory": "lots"}}), "publishers.t.limits.memory"),
            (json!({"component": sha, "limit": {}}), "publishers.t.limit"),
            (json!({"component": "abc"}), "publishers.t.component"),
            (json!({"options": {}}), "publishers.t"),
            (json!({"component": sha, "backend": "redis-stream"}), "publishers.t"),
            (json!({"backend": "redis-stream", "grants": {"redis": {}}}), "publishers.t.grants"),
            (json!({"component": sha, "options": {"x": null}}), "publishers.t"),
            (json!({"backend": "kafka"}), "publishers.t.backend"),
            (json!([1]), "publishers.t"),
        ];
        for (definition, key) in cases {
            let err = config.api_publisher("t", &definition, 1).unwrap_err();
            assert!(err.to_string().starts_with("catalog: "), "{err}");
            assert_eq!(key_of(err), key, "{definition}");
        }
        assert_eq!(
            key_of(config.api_publisher("no spaces", &json!({"backend": "redis-stream"}), 1).unwrap_err()),
            "publishers.no spaces"
        );
    }
}
