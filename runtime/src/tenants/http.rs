//! [`TenantCatalog`]'s answers as the admin endpoints give them (status, JSON body, error
//! code), and what a definition shows of its secrets.

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{TenantCatalog, TenantError};
use crate::outbox::catalog::PutOutcome;
use crate::server::api_error::ApiError;
use crate::server::tenant_admin::{AdminAnswer, TenantAdmin};

impl From<TenantError> for ApiError {
    fn from(err: TenantError) -> Self {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, err.code(), err.to_string())
    }
}

fn put_answer(name: &str, outcome: PutOutcome) -> (StatusCode, Value) {
    let status = if matches!(outcome, PutOutcome::Created(_)) { StatusCode::CREATED } else { StatusCode::OK };
    (status, json!({"name": name, "version": outcome.version()}))
}

#[async_trait::async_trait]
impl TenantAdmin for TenantCatalog {
    async fn put_component(&self, bytes: Bytes, by: &str) -> AdminAnswer {
        let (info, created) = TenantCatalog::put_component(self, &bytes, by).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok((status, serde_json::to_value(info).expect("serializes")))
    }

    async fn put_publisher(&self, name: &str, definition: Value, if_version: Option<i64>, by: &str) -> AdminAnswer {
        let outcome = TenantCatalog::put_publisher(self, name, definition, if_version, by).await?;
        tracing::info!(publisher = %name, version = outcome.version(), by, "publisher put through the API");
        Ok(put_answer(name, outcome))
    }

    async fn publishers(&self, after: Option<&str>, limit: u32) -> AdminAnswer {
        let page = TenantCatalog::publishers(self, after, limit).await?;
        Ok((StatusCode::OK, serde_json::to_value(page).expect("serializes")))
    }

    async fn publisher(&self, name: &str) -> AdminAnswer {
        Ok((StatusCode::OK, TenantCatalog::publisher(self, name).await?))
    }

    async fn remove_publisher(&self, name: &str, by: &str) -> AdminAnswer {
        let version = TenantCatalog::remove_publisher(self, name).await?;
        tracing::info!(publisher = %name, version, by, "publisher removed through the API");
        Ok((StatusCode::OK, json!({"name": name, "version": version})))
    }

    async fn rollback(&self, name: &str, version: Option<i64>, by: &str) -> AdminAnswer {
        let (version, from) = TenantCatalog::rollback(self, name, version, by).await?;
        tracing::info!(publisher = %name, version, from, by, "publisher rolled back through the API");
        Ok((StatusCode::OK, json!({"name": name, "version": version, "from": from})))
    }

    async fn make_token(&self, request: Value, by: &str) -> AdminAnswer {
        let bad = |message: &str| ApiError::from(TenantError::BadRequest(message.to_string()));
        let object = request.as_object().ok_or_else(|| bad("the body is a JSON object"))?;
        if let Some(key) = object.keys().find(|k| !["name", "publishers", "rate", "burst"].contains(&k.as_str())) {
            return Err(bad(&format!(
                "unknown key `{key}`: a token is {{\"name\", \"publishers\", \"rate\"?, \"burst\"?}}"
            )));
        }
        let name =
            object.get("name").and_then(Value::as_str).ok_or_else(|| bad("`name` is the token's name, a string"))?;
        let publishers = object
            .get("publishers")
            .and_then(Value::as_array)
            .and_then(|items| items.iter().map(|p| p.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad("`publishers` is a list of publisher names or patterns, like [\"tenant-a-*\"]"))?;
        let rate = match object.get("rate") {
            None => None,
            Some(rate) => Some(rate.as_f64().ok_or_else(|| bad("`rate` is a number of events per second"))?),
        };
        let burst = match object.get("burst") {
            None => None,
            Some(burst) => Some(
                burst
                    .as_u64()
                    .and_then(|b| u32::try_from(b).ok())
                    .ok_or_else(|| bad("`burst` is a whole number of events"))?,
            ),
        };
        let token = TenantCatalog::make_token(self, name, publishers, rate, burst, by).await?;
        tracing::info!(token = %name, by, "token made through the API");
        Ok((StatusCode::CREATED, json!({"name": name, "token": token})))
    }

    async fn revoke_token(&self, name: &str, by: &str) -> AdminAnswer {
        TenantCatalog::revoke_token(self, name).await?;
        tracing::info!(token = %name, by, "token revoked through the API");
        Ok((StatusCode::OK, json!({"name": name})))
    }
}

/// A definition as shown: a password in a URL and the values of keys that name a secret
/// (`password`, `token`, `secret` in the key) are replaced by `***`. Secret references
/// (`{ secret = "ENV" }`, `{ secret_file = "…" }`) name a variable or a file, not the value,
/// and are shown as written.
pub(super) fn redacted(value: &Value) -> Value {
    fn walk(value: &Value, key: Option<&str>) -> Value {
        match value {
            Value::Object(map) => {
                let is_reference = map.len() == 1 && (map.contains_key("secret") || map.contains_key("secret_file"));
                Value::Object(
                    map.iter()
                        .map(|(k, v)| {
                            let shown = if is_reference { v.clone() } else { walk(v, Some(k)) };
                            (k.clone(), shown)
                        })
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, key)).collect()),
            Value::String(text) => {
                let key = key.unwrap_or_default().to_ascii_lowercase();
                if ["password", "token", "secret"].iter().any(|s| key.contains(s)) {
                    Value::String("***".into())
                } else {
                    Value::String(crate::outbox::redact(text))
                }
            }
            other => other.clone(),
        }
    }
    walk(value, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_definitions_keep_secret_references_and_hide_secret_values() {
        let definition = json!({
            "backend": "redis-stream",
            "options": {
                "redis_url": "redis://app:s3cret@redis:6379/0",
                "password": "hunter2",
                "auth": {"secret": "REDIS_PASSWORD"},
                "stream": "orders",
            }
        });
        let shown = redacted(&definition);
        assert_eq!(shown["options"]["redis_url"], "redis://app:***@redis:6379/0");
        assert_eq!(shown["options"]["password"], "***");
        assert_eq!(shown["options"]["auth"], json!({"secret": "REDIS_PASSWORD"}));
        assert_eq!(shown["options"]["stream"], "orders");
    }
}
