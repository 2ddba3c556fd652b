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
            let file = base_dir.join(file);
            let text = std::fs::read_to_string(&file)
                .map_err(|err| error(format!("cannot read the secret file {}: {err}", file.display())))?;
            let secret =
                text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string();
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
}
