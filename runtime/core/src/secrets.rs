//! Secrets in publisher options: `token = { secret = "TENANT_A_TOKEN" }` (from the host's
//! environment) or `{ secret_file = "/run/secrets/tenant-a" }` (from a file, relative paths
//! from the config file). The host substitutes the value in the options of the component that
//! names it, and nowhere else; every text that leaves the publisher (logs, errors, health)
//! passes through its [`Redactor`], so the value never shows.

use std::path::Path;

/// Replaces a publisher's secret values with `***` in text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every secret value replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in &self.values {
            if !value.is_empty() && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "***");
            }
        }
        out
    }
}

/// Why a secret could not be resolved. Names the option, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option `{option}`: {message}")]
pub struct SecretError {
    /// The option's path, e.g. `headers.Authorization`.
    pub option: String,
    /// What is missing.
    pub message: String,
}

/// Replaces every `{ secret = "NAME" }` / `{ secret_file = "path" }` in `options` with the
/// secret's value, reading the environment through `env`. Returns the values found, for the
/// publisher's [`Redactor`].
pub fn resolve(
    options: &mut toml::Table,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Redactor, SecretError> {
    let mut values = Vec::new();
    for (key, value) in options.iter_mut() {
        resolve_value(value, key, base_dir, env, &mut values)?;
    }
    // Longest first, so a secret containing another is replaced whole.
    values.sort_by_key(|v: &String| std::cmp::Reverse(v.len()));
    Ok(Redactor { values })
}

fn resolve_value(
    value: &mut toml::Value,
    path: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    found: &mut Vec<String>,
) -> Result<(), SecretError> {
    let error = |message: String| SecretError { option: path.to_string(), message };
    match value {
        toml::Value::Table(table) if table.len() == 1 && table.contains_key("secret") => {
            let Some(toml::Value::String(name)) = table.get("secret") else {
                return Err(error("`secret` names an environment variable: a string".into()));
            };
            let secret = env(name).ok_or_else(|| error(format!("the secret {name} is not set in the environment")))?;
            found.push(secret.clone());
            *value = toml::Value::String(secret);
        }
        toml::Value::Table(table) if table.len() == 1 && table.contains_key("secret_file") => {
            let Some(toml::Value::String(file)) = table.get("secret_file") else {
                return Err(error("`secret_file` is a path: a string".into()));
            };
            let secret = read_secret_file(&base_dir.join(file)).map_err(error)?;
            found.push(secret.clone());
            *value = toml::Value::String(secret);
        }
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                resolve_value(inner, &format!("{path}.{key}"), base_dir, env, found)?;
            }
        }
        toml::Value::Array(items) => {
            for (i, inner) in items.iter_mut().enumerate() {
                resolve_value(inner, &format!("{path}[{i}]"), base_dir, env, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads a secret file: its text without one trailing line break.
fn read_secret_file(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("cannot read the secret file {}: {err}", file.display()))?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string())
}

/// A typed option that holds a secret (a Redis password): the value itself, or a reference
/// `{ secret = "NAME" }` (an environment variable of the host) / `{ secret_file = "path" }`
/// (relative to the config file), resolved when the publisher is built. Its `Debug` never
/// shows a value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretOption {
    /// Written in the configuration.
    Value(String),
    /// `{ secret = "NAME" }`.
    Env(String),
    /// `{ secret_file = "path" }`.
    File(std::path::PathBuf),
}

impl std::fmt::Debug for SecretOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Value(***)"),
            Self::Env(name) => f.debug_tuple("Env").field(name).finish(),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

impl SecretOption {
    /// The secret's value, reading the environment through `env` and files relative to
    /// `base_dir`. The error says what is missing, never a value.
    pub fn resolve(&self, base_dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            Self::Value(value) => Ok(value.clone()),
            Self::Env(name) => env(name).ok_or_else(|| format!("the secret {name} is not set in the environment")),
            Self::File(file) => read_secret_file(&base_dir.join(file)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SecretOption {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretOptionVisitor)
    }
}

struct SecretOptionVisitor;

impl<'de> serde::de::Visitor<'de> for SecretOptionVisitor {
    type Value = SecretOption;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, { secret = \"ENVIRONMENT_VARIABLE\" } or { secret_file = \"path\" }")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<SecretOption, E> {
        Ok(SecretOption::Value(value.to_string()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretOption, A::Error> {
        use serde::de::Error;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::invalid_length(0, &self));
        };
        let reference = match key.as_str() {
            "secret" => SecretOption::Env(map.next_value()?),
            "secret_file" => SecretOption::File(map.next_value()?),
            other => return Err(A::Error::unknown_field(other, &["secret", "secret_file"])),
        };
        if map.next_key::<String>()?.is_some() {
            return Err(A::Error::custom("a secret reference has one key: `secret` or `secret_file`"));
        }
        Ok(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cr3t-value".to_string())
    }

    #[test]
    fn secrets_are_substituted_anywhere_in_the_options_and_redacted_from_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "file-secret\n").unwrap();
        let mut options: toml::Table = toml::from_str(
            r#"
            url = "https://example.com"
            headers = { Authorization = { secret = "TOKEN" } }
            keys = [{ secret_file = "key" }]
            "#,
        )
        .unwrap();
        let redactor = resolve(&mut options, dir.path(), &env).unwrap();
        assert_eq!(options["headers"]["Authorization"].as_str(), Some("s3cr3t-value"));
        assert_eq!(options["keys"][0].as_str(), Some("file-secret"));
        assert_eq!(redactor.redact("bad token s3cr3t-value and file-secret"), "bad token *** and ***");
    }

    #[test]
    fn a_missing_secret_names_the_option_and_the_variable_not_a_value() {
        let mut options: toml::Table = toml::from_str(r#"token = { secret = "MISSING" }"#).unwrap();
        let err = resolve(&mut options, Path::new("."), &env).unwrap_err();
        assert_eq!(err.to_string(), "option `token`: the secret MISSING is not set in the environment");
        let mut options: toml::Table = toml::from_str(r#"token = { secret_file = "nope" }"#).unwrap();
        assert!(resolve(&mut options, Path::new("/nonexistent"), &env).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn a_secret_option_is_a_value_or_a_reference_resolved_later() {
        #[derive(serde::Deserialize)]
        struct Options {
            password: SecretOption,
        }
        let read = |text: &str| toml::from_str::<Options>(text).map(|o| o.password);
        assert_eq!(read(r#"password = "plain""#).unwrap(), SecretOption::Value("plain".into()));
        assert_eq!(read(r#"password = { secret = "TOKEN" }"#).unwrap(), SecretOption::Env("TOKEN".into()));
        let file = read(r#"password = { secret_file = "key" }"#).unwrap();
        assert_eq!(file, SecretOption::File("key".into()));
        assert!(read(r#"password = { sekret = "TOKEN" }"#).unwrap_err().to_string().contains("sekret"));
        assert!(read("password = 3").unwrap_err().to_string().contains("secret_file"));
        assert_eq!(format!("{:?}", SecretOption::Value("plain".into())), "Value(***)");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "from-file\n").unwrap();
        assert_eq!(file.resolve(dir.path(), &env).unwrap(), "from-file");
        assert_eq!(SecretOption::Env("TOKEN".into()).resolve(dir.path(), &env).unwrap(), "s3cr3t-value");
        let missing = SecretOption::Env("MISSING".into()).resolve(dir.path(), &env).unwrap_err();
        assert_eq!(missing, "the secret MISSING is not set in the environment");
    }
}
