//! `BROADCASTER_…` environment variables override values of the config file.
//!
//! The variable name is the key path, upper-cased, its segments joined by `__`, with `-` in
//! names written as `_`:
//!
//! | variable | key |
//! |---|---|
//! | `BROADCASTER_OUTBOX__URL` | `outbox.url` |
//! | `BROADCASTER_PUBLISHERS__DEFAULT__OPTIONS__HOST` | `publishers.default.options.host` |
//! | `BROADCASTER_PUBLISHERS__TENANT_A__GRANTS__REDIS__PASSWORD` | `publishers.tenant-a.grants.redis.password` |
//!
//! A segment matches an existing key ignoring case and `-`/`_`; otherwise a new key is made
//! from it in lower case. The value is read as a TOML value when it is one (`6379`, `true`,
//! `["a:*"]`, `{ host = "x" }`) and as a string otherwise. When the key already holds a
//! string in the file, the value stays a string (so a password of digits stays text).
//! Only variables with a key path (a `__` in the name) are overrides: every top-level key is
//! a table, so `BROADCASTER_CONFIG`, `BROADCASTER_CACHE` and the like are left alone.

use super::ConfigError;

/// The prefix of every override variable.
pub const PREFIX: &str = "BROADCASTER_";

/// One applied override: the variable and the key path it set (`outbox.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The variable name.
    pub var: String,
    /// The dotted key path, as keys appear after matching (`publishers.tenant-a.grants`).
    pub key: String,
}

/// Applies every `BROADCASTER_…__…` variable of `vars` to `table`; returns what was set.
pub fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut vars: Vec<(String, String)> =
        vars.into_iter().filter(|(k, _)| k.starts_with(PREFIX) && k.contains("__")).collect();
    vars.sort();
    let mut applied = Vec::new();
    for (var, value) in vars {
        let path: Vec<&str> = var[PREFIX.len()..].split("__").collect();
        if path.iter().any(|segment| segment.is_empty()) {
            return Err(ConfigError::Env {
                var,
                message: "empty key segment; separate keys with a double underscore, e.g. BROADCASTER_OUTBOX__URL"
                    .into(),
            });
        }
        let key = set(table, &var, &path, &value)?;
        applied.push(Override { var, key });
    }
    Ok(applied)
}

fn normalize(key: &str) -> String {
    key.to_ascii_lowercase().replace('-', "_")
}

/// Sets the value; returns the dotted key path it landed on.
fn set(table: &mut toml::Table, var: &str, path: &[&str], raw: &str) -> Result<String, ConfigError> {
    let wanted = normalize(path[0]);
    let key = table.keys().find(|k| normalize(k) == wanted).cloned().unwrap_or_else(|| path[0].to_ascii_lowercase());
    if path.len() == 1 {
        let keep_string = matches!(table.get(&key), Some(toml::Value::String(_)));
        table.insert(key.clone(), parse_value(raw, keep_string));
        return Ok(key);
    }
    let entry = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(inner) => Ok(format!("{key}.{}", set(inner, var, &path[1..], raw)?)),
        _ => Err(ConfigError::Env {
            var: var.to_string(),
            message: format!("`{key}` is a value in the config file, not a table"),
        }),
    }
}

fn parse_value(raw: &str, keep_string: bool) -> toml::Value {
    if !keep_string
        && let Ok(mut doc) = format!("v = {raw}").parse::<toml::Table>()
        && let Some(value) = doc.remove("v")
    {
        return value;
    }
    toml::Value::String(raw.to_string())
}
