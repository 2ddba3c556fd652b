//! Tokens (`[tokens.<name>]`): each held only as its SHA-256 digest, compared in constant
//! time. A tenant's token reaches only its publishers (HTTP ingest), with its own rate limit;
//! an `admin` token reaches the operators' endpoints ([`TokenTable::admin`]).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::api_error::ApiError;
use broadcaster_config::{Config, ConfigError, TokenConfig};
use broadcaster_core::secrets;

/// One configured token.
#[derive(Debug)]
pub struct Token {
    /// Its name (`[tokens.<name>]`), for logs and errors; never the token itself.
    pub name: String,
    /// Whether it reaches the operators' endpoints (`tokens.<name>.admin`).
    pub admin: bool,
    digest: [u8; 32],
    publishers: Vec<String>,
    limit: Option<std::sync::Mutex<TokenBucket>>,
}

impl Token {
    /// Whether this token may send to `publisher`.
    pub fn reaches(&self, publisher: &str) -> bool {
        self.publishers.iter().any(|pattern| broadcaster_entry::glob::matches(pattern, publisher))
    }

    /// Gives back `events` taken for a request that wrote nothing (refused by the outbox).
    pub fn give_back(&self, events: u32) {
        if let Some(bucket) = &self.limit {
            let mut bucket = bucket.lock().expect("rate limit lock");
            bucket.available = (bucket.available + f64::from(events)).min(bucket.burst);
        }
    }

    /// Takes `events` from its rate limit, or says when they would fit
    /// ([`RateRefusal::Later`]) or that they never will ([`RateRefusal::Never`]).
    pub fn take(&self, events: u32) -> Result<(), RateRefusal> {
        match &self.limit {
            None => Ok(()),
            Some(bucket) => bucket.lock().expect("rate limit lock").take(f64::from(events), Instant::now()),
        }
    }
}

/// Why the rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateRefusal {
    /// Not now: enough is back after this long.
    Later(Duration),
    /// Never: the request holds more events than the token's burst.
    Never {
        /// The burst.
        burst: u32,
    },
}

/// A token bucket: `rate` events per second on average, `burst` at once.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    available: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        Self { rate, burst: f64::from(burst), available: f64::from(burst), at: now }
    }

    /// Takes `n` when they are there at `now`.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), RateRefusal> {
        if n > self.burst {
            return Err(RateRefusal::Never { burst: self.burst as u32 });
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.available = (self.available + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.available >= n {
            self.available -= n;
            Ok(())
        } else {
            Err(RateRefusal::Later(Duration::from_secs_f64((n - self.available) / self.rate)))
        }
    }
}

/// Every configured token.
#[derive(Debug, Default)]
pub struct TokenTable {
    tokens: Vec<Token>,
}

impl TokenTable {
    /// The tokens of `config`, their secrets read from `env` and files; a secret that cannot
    /// be read is an error naming `tokens.<name>.secret`.
    pub fn from_config(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let tokens: Vec<Token> =
            config.tokens.iter().map(|(name, token)| Self::one(config, name, token, env)).collect::<Result<_, _>>()?;
        for (i, token) in tokens.iter().enumerate() {
            if let Some(other) = tokens[..i].iter().find(|t| t.digest == token.digest) {
                return Err(ConfigError::Invalid {
                    path: config.path.clone(),
                    key: format!("tokens.{}.secret", token.name),
                    message: format!("the same token as tokens.{}: give each token a secret of its own", other.name),
                });
            }
            for pattern in &token.publishers {
                if !config.publishers.keys().any(|name| broadcaster_entry::glob::matches(pattern, name)) {
                    tracing::warn!(
                        token = %token.name,
                        pattern = %pattern,
                        "a pattern of tokens.{}.publishers matches no configured publisher",
                        token.name
                    );
                }
            }
        }
        Ok(Self { tokens })
    }

    fn one(
        config: &Config,
        name: &str,
        token: &TokenConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Token, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: config.path.clone(),
            key: format!("tokens.{name}.secret"),
            message,
        };
        let digest = match token.secret.get("sha256").and_then(toml::Value::as_str) {
            Some(hex) => parse_digest(hex).ok_or_else(|| {
                invalid("`sha256` is the token's SHA-256 digest: 64 hex digits (printf %s TOKEN | sha256sum)".into())
            })?,
            None => {
                let mut table = toml::Table::new();
                table.insert("secret".into(), token.secret.clone());
                secrets::resolve(&mut table, &config.base_dir, env).map_err(|err| invalid(err.message))?;
                // A secret mounted from a file or set from one often ends in a newline; a
                // presented token never does.
                let value = table["secret"].as_str().unwrap_or_default().trim();
                if value.chars().count() < 16 {
                    return Err(invalid(format!(
                        "the token is {} characters; use at least 16 random ones (openssl rand -hex 32)",
                        value.chars().count()
                    )));
                }
                Sha256::digest(value.as_bytes()).into()
            }
        };
        let limit = token.rate.map(|rate| {
            let burst = token.burst.unwrap_or((rate.ceil() as u32).max(1));
            std::sync::Mutex::new(TokenBucket::new(rate, burst, Instant::now()))
        });
        Ok(Token { name: name.to_string(), admin: token.admin, digest, publishers: token.publishers.clone(), limit })
    }

    /// Adds the tokens made through the admin API (`POST /v1/admin/tokens`, stored hashed in
    /// the outbox database's catalog). A name the file's `[tokens]` has keeps the file's
    /// token (the API refuses to make such a name; the file may gain it later).
    pub fn with_catalog_tokens(mut self, stored: &[broadcaster_outbox::catalog::StoredToken]) -> Self {
        for token in stored {
            if self.tokens.iter().any(|t| t.name == token.name) {
                tracing::warn!(token = %token.name, "a token of the catalog has the name of one in the file; the file's is used");
                continue;
            }
            let Some(digest) = parse_digest(&token.sha256) else {
                tracing::error!(token = %token.name, "a token of the catalog has no valid SHA-256; it is not accepted");
                continue;
            };
            let limit = token.rate.map(|rate| {
                let burst = token.burst.unwrap_or((rate.ceil() as u32).max(1));
                std::sync::Mutex::new(TokenBucket::new(rate, burst, Instant::now()))
            });
            self.tokens.push(Token {
                name: token.name.clone(),
                admin: false,
                digest,
                publishers: token.publishers.clone(),
                limit,
            });
        }
        self
    }

    /// Whether a token called `name` is in the table.
    pub fn has_name(&self, name: &str) -> bool {
        self.tokens.iter().any(|t| t.name == name)
    }

    /// Carries over what the rate limits of `before` (the table this one replaces at a reload)
    /// had left, for each token of the same name, secret, rate and burst: a reload does not
    /// hand a tenant a fresh burst.
    pub fn keep_buckets_of(&self, before: &TokenTable) {
        for token in &self.tokens {
            let Some(old) = before.tokens.iter().find(|t| t.name == token.name && t.digest == token.digest) else {
                continue;
            };
            if let (Some(new), Some(old)) = (&token.limit, &old.limit) {
                let mut new = new.lock().expect("rate limit lock");
                let old = old.lock().expect("rate limit lock");
                if (new.rate, new.burst) == (old.rate, old.burst) {
                    *new = old.clone();
                }
            }
        }
    }

    /// Whether no token is configured (then nobody can send events).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token `presented` is, compared against every configured one in constant time.
    pub fn find(&self, presented: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found
    }

    /// The admin token a request presents, as `Authorization: Bearer <token>` or as HTTP Basic
    /// credentials with the token as the password (the user name is ignored; a browser asks for
    /// them). 401 `unauthorized` without a token of this table, 403 `forbidden` for a token that
    /// is not `admin`.
    pub fn admin(&self, headers: &HeaderMap) -> Result<&Token, ApiError> {
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "send an admin token: Authorization: Bearer <token>, or HTTP Basic with the token as the password",
            ));
        };
        let presented = value.to_str().ok().and_then(presented_token).ok_or_else(|| {
            unauthorized("the Authorization header must be `Bearer <token>` or `Basic <base64 of user:token>`")
        })?;
        let token = self.find(&presented).ok_or_else(|| unauthorized("the token is not one of this relay's tokens"))?;
        if !token.admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {:?} is not an admin token (tokens.{}.admin = true)", token.name, token.name),
            ));
        }
        Ok(token)
    }
}

/// The token in an `Authorization` value: `Bearer <token>`, or `Basic <base64(user:token)>`.
/// Schemes are case-insensitive (RFC 7235).
fn presented_token(value: &str) -> Option<String> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(credentials.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
        let (_user, token) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        Some(token.to_string())
    } else {
        None
    }
}

/// 64 hex digits as 32 bytes.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, Path::new("broadcaster.toml"), Vec::new()).unwrap()
    }

    fn env(name: &str) -> Option<String> {
        (name == "TENANT_A_TOKEN").then(|| "tenant-a-token-0123456789".to_string())
    }

    #[test]
    fn a_token_is_found_by_its_value_and_reaches_only_its_publishers() {
        let digest = format!("{:x}", Sha256::digest(b"operator-token-0123456789"));
        let config = config(&format!(
            r#"
            [tokens.tenant-a]
            secret = {{ secret = "TENANT_A_TOKEN" }}
            publishers = ["tenant-a", "tenant-a-*"]
            [tokens.ops]
            secret = {{ sha256 = "{digest}" }}
            publishers = ["*"]
            "#
        ));
        let table = TokenTable::from_config(&config, &env).unwrap();
        let tenant = table.find("tenant-a-token-0123456789").unwrap();
        assert_eq!(tenant.name, "tenant-a");
        assert!(tenant.reaches("tenant-a") && tenant.reaches("tenant-a-orders") && !tenant.reaches("tenant-b"));
        assert_eq!(table.find("operator-token-0123456789").unwrap().name, "ops");
        assert!(table.find("tenant-a-token-012345678").is_none());
        assert!(table.find("").is_none());
    }

    #[test]
    fn a_missing_or_short_secret_names_the_token_key() {
        let config = config(
            r#"
            [tokens.t]
            secret = { secret = "NOT_SET" }
            publishers = ["t"]
            "#,
        );
        let err = TokenTable::from_config(&config, &env).unwrap_err().to_string();
        assert!(err.contains("tokens.t.secret") && err.contains("NOT_SET"), "{err}");
        let config = self::config(
            r#"
            [tokens.t]
            secret = { sha256 = "abc" }
            publishers = ["t"]
            "#,
        );
        assert!(TokenTable::from_config(&config, &env).unwrap_err().to_string().contains("64 hex digits"));
    }

    #[test]
    fn a_reload_keeps_what_an_unchanged_tokens_rate_limit_had_left_and_refills_a_changed_one() {
        let text = |rate: u32| {
            format!(
                r#"
                [tokens.tenant-a]
                secret = {{ secret = "TENANT_A_TOKEN" }}
                publishers = ["tenant-a"]
                rate = {rate}
                burst = 10
                "#
            )
        };
        let before = TokenTable::from_config(&config(&text(1)), &env).unwrap();
        before.find("tenant-a-token-0123456789").unwrap().take(10).unwrap();
        // Same secret, rate and burst: the emptied bucket carries over, no fresh burst.
        let same = TokenTable::from_config(&config(&text(1)), &env).unwrap();
        same.keep_buckets_of(&before);
        let token = same.find("tenant-a-token-0123456789").unwrap();
        assert!(matches!(token.take(5), Err(RateRefusal::Later(_))), "a reload handed out a fresh burst");
        // Another rate: a new limit, a full bucket.
        let changed = TokenTable::from_config(&config(&text(2)), &env).unwrap();
        changed.keep_buckets_of(&before);
        assert!(changed.find("tenant-a-token-0123456789").unwrap().take(10).is_ok());
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn basic(user: &str, token: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
    }

    #[test]
    fn the_admin_endpoints_take_an_admin_token_as_bearer_or_as_the_basic_password() {
        let admin = format!("{:x}", Sha256::digest(b"admin-token-0123456789"));
        let config = config(&format!(
            r#"
            [tokens.tenant-a]
            secret = {{ secret = "TENANT_A_TOKEN" }}
            publishers = ["tenant-a"]
            [tokens.ops]
            secret = {{ sha256 = "{admin}" }}
            admin = true
            "#
        ));
        let table = TokenTable::from_config(&config, &env).unwrap();
        let status = |authorization: Option<&str>| match table.admin(&headers(authorization)) {
            Ok(token) => Ok(token.name.clone()),
            Err(err) => Err((err.status.as_u16(), err.code)),
        };
        assert_eq!(status(Some("Bearer admin-token-0123456789")), Ok("ops".into()));
        assert_eq!(status(Some("bearer  admin-token-0123456789 ")), Ok("ops".into()));
        assert_eq!(status(Some(&basic("anyone", "admin-token-0123456789"))), Ok("ops".into()));
        assert_eq!(status(Some(&basic("", "admin-token-0123456789"))), Ok("ops".into()));
        assert_eq!(status(Some("Basic")), Err((401, "unauthorized")));

        assert_eq!(status(None), Err((401, "unauthorized")));
        assert_eq!(status(Some("Bearer not-a-token-0123456789")), Err((401, "unauthorized")));
        assert_eq!(
            status(Some(&basic("admin-token-0123456789", "wrong"))),
            Err((401, "unauthorized")),
            "the user is not the token"
        );
        assert_eq!(status(Some("Basic not base64!")), Err((401, "unauthorized")));
        assert_eq!(status(Some("Digest admin-token-0123456789")), Err((401, "unauthorized")));

        assert_eq!(status(Some("Bearer tenant-a-token-0123456789")), Err((403, "forbidden")));
        assert_eq!(status(Some(&basic("x", "tenant-a-token-0123456789"))), Err((403, "forbidden")));
        let admin_token = table.find("admin-token-0123456789").unwrap();
        assert!(
            admin_token.admin && !admin_token.reaches("tenant-a"),
            "an admin token sends to no publisher of its own"
        );
    }

    #[test]
    fn the_bucket_refills_at_its_rate_and_refuses_more_than_its_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5, start);
        assert_eq!(bucket.take(5.0, start), Ok(()));
        match bucket.take(1.0, start) {
            Err(RateRefusal::Later(wait)) => assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(bucket.take(2.0, start + Duration::from_millis(200)), Ok(()));
        assert_eq!(bucket.take(6.0, start + Duration::from_secs(10)), Err(RateRefusal::Never { burst: 5 }));
    }
}
