//! One Redis connection, [`RedisConnection`]: the keys the native backend's `options` and a
//! component's `redis` grant share, as written, read from the owner's table beside its own
//! keys ([`deserialize_beside_connection`]), checked when the configuration loads and
//! resolved into a [`RedisEndpoint`] when the publisher is built:
//!
//! - `host`, `port`, `db` (the seed's; defaults `localhost`, 6379, 0), or `url` instead
//!   (`redis://`, `rediss://` for TLS, `redis+unix://`, as the `redis` crate reads them).
//!   Giving `url` with any of `host`/`port`/`db` is an error naming the key.
//! - `username` (an ACL user) and `password` (a value or a secret reference, see
//!   [`SecretOption`]); either may be in the `url` instead, not in both places.
//! - `tls = { ca_file, client_cert, client_key, insecure = false }`: TLS with the `redis`
//!   crate's rustls. A `tls` table turns TLS on for `host`/`port`; with a `url` the scheme
//!   must be `rediss://`. Files are PEM, relative to the config file.
//! - `sentinel = { master, addresses, username, password }` (Redis Sentinel) or
//!   `cluster = { nodes }` (Redis Cluster) instead of `url`/`host`/`port`; `username`,
//!   `password`, `db` and `tls` apply to the data nodes.
//! - `wait_replicas`: `WAIT` for that many replicas after each pipeline (failover without
//!   loss).
//! - `max_memory_ratio`: hold the publisher down once Redis uses this fraction of its
//!   `maxmemory` ([`crate::memory_pressure`]).
//! - `connect_timeout`, `socket_timeout`: 5 seconds each unless given.

mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};
use serde::Deserialize;

use crate::endpoint::{RedisAddress, RedisEndpoint, SentinelAuth, TlsSettings};
use crate::memory_pressure::MemoryRatio;
use broadcaster_core::secrets::SecretOption;
pub use table::{CONNECTION_KEYS, deserialize_beside_connection, keys_beside_connection};

/// `tls = { … }`: TLS to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of the certificate authorities to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate (chain), for servers that ask for one; needs
    /// `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; needs `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate, unverified. Default false; never in production.
    #[serde(default)]
    pub insecure: bool,
}

/// `sentinel = { master = "…", addresses = ["host:port", …] }`: find the master through
/// Redis Sentinel (port 26379 when not given), and find it again after a failover.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelOptions {
    /// The master's name in the Sentinels' configuration.
    pub master: String,
    /// Sentinel addresses, `host:port`.
    pub addresses: Vec<String>,
    /// ACL user on the Sentinels (their own, not the master's). Default none.
    #[serde(default)]
    pub username: Option<String>,
    /// Password of the Sentinels (`requirepass` in their configuration), or a secret
    /// reference. Default none.
    #[serde(default)]
    pub password: Option<SecretOption>,
}

/// `cluster = { nodes = ["host:port", …] }`: a Redis Cluster, from some of its nodes (port
/// 6379 when not given); the rest are discovered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterOptions {
    /// Seed nodes, `host:port`.
    pub nodes: Vec<String>,
}

/// The Redis to write to and how to reach it, as written: the keys a native publisher's
/// `options` and a component's `grants.redis` share, each documented and defaulted here once.
/// Read from a table beside its owner's keys by [`deserialize_beside_connection`]; checked
/// when the configuration loads ([`check`](Self::check)) and resolved into a
/// [`RedisEndpoint`] when the publisher is built ([`endpoint`](Self::endpoint)).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConnection {
    /// Server host name or address. Default `localhost`.
    pub host: Option<String>,
    /// Server port. Default 6379.
    pub port: Option<u16>,
    /// Database number. Default 0.
    pub db: Option<i64>,
    /// The server as a URL (`redis://`, `rediss://`, `redis+unix://`), instead of
    /// `host`/`port`/`db`.
    pub url: Option<String>,
    /// ACL user; never shown to a component. Default none (the `default` user).
    pub username: Option<String>,
    /// Password (`AUTH`), or a secret reference; never shown to a component. Default none.
    pub password: Option<SecretOption>,
    /// TLS to the server (`{ ca_file, client_cert, client_key, insecure }`). Default none.
    pub tls: Option<TlsOptions>,
    /// Hold the publisher down (events wait) once Redis uses this fraction of its
    /// `maxmemory` (`INFO memory`). Default none: only `OOM` replies hold it down.
    pub max_memory_ratio: Option<f64>,
    /// After each batch, wait until this many replicas have it (Redis `WAIT`); fewer is a
    /// transient error, so nothing acknowledged is lost when the master fails. Default none.
    pub wait_replicas: Option<u32>,
    /// Redis Sentinel (`{ master, addresses }`) instead of `url`/`host`/`port`. Default none.
    pub sentinel: Option<SentinelOptions>,
    /// Redis Cluster (`{ nodes }`) instead of `url`/`host`/`port`. Default none.
    pub cluster: Option<ClusterOptions>,
    /// How long to wait for a connection: seconds (`5`, `0.5`) or a duration (`"250ms"`).
    /// Default 5 seconds.
    pub connect_timeout: Duration,
    /// How long to wait for a reply, written as `connect_timeout`. Default 5 seconds.
    pub socket_timeout: Duration,
}

impl Default for RedisConnection {
    /// The seed's: `localhost:6379`, database 0, no credentials, 5 second timeouts.
    fn default() -> Self {
        Self {
            host: None,
            port: None,
            db: None,
            url: None,
            username: None,
            password: None,
            tls: None,
            max_memory_ratio: None,
            wait_replicas: None,
            sentinel: None,
            cluster: None,
            connect_timeout: Duration::from_secs(5),
            socket_timeout: Duration::from_secs(5),
        }
    }
}

/// A connection option that is not usable: its key below the options or grant (`url`,
/// `tls.ca_file`) and what was expected. Never quotes a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option `{key}`: {message}")]
pub struct ConnectionOptionError {
    /// The key, like `url` or `tls.client_key`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

fn option_error(key: &str, message: impl Into<String>) -> ConnectionOptionError {
    ConnectionOptionError { key: key.to_string(), message: message.into() }
}

/// What the options say before secrets and files are read.
struct Checked {
    address: RedisAddress,
    db: i64,
    username: Option<String>,
    url_password: Option<String>,
    /// Whether TLS is on, and if so whether unverified.
    tls_insecure: Option<bool>,
    max_memory_ratio: Option<MemoryRatio>,
}

impl RedisConnection {
    /// Checks the options without reading secrets or files (when the configuration loads).
    pub fn check(&self) -> Result<(), ConnectionOptionError> {
        self.checked().map(drop)
    }

    /// The endpoint they describe: the password's secret resolved (`env`, files relative to
    /// `base_dir`) and the TLS files read.
    pub fn endpoint(
        &self,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RedisEndpoint, ConnectionOptionError> {
        let checked = self.checked()?;
        let password = match &self.password {
            Some(secret) => Some(secret.resolve(base_dir, env).map_err(|message| option_error("password", message))?),
            None => checked.url_password,
        };
        let tls = match checked.tls_insecure {
            None => None,
            Some(insecure) => Some(self.tls_settings(base_dir, insecure)?),
        };
        let sentinel_auth = match &self.sentinel {
            Some(SentinelOptions { username, password: Some(secret), .. }) => {
                let password = secret.resolve(base_dir, env).map_err(|m| option_error("sentinel.password", m))?;
                Some(SentinelAuth { username: username.clone(), password })
            }
            _ => None,
        };
        Ok(RedisEndpoint {
            address: checked.address,
            tls,
            db: checked.db,
            username: checked.username,
            password,
            sentinel_auth,
            max_memory_ratio: checked.max_memory_ratio,
            wait_replicas: self.wait_replicas.filter(|n| *n > 0),
            connect_timeout: self.connect_timeout,
            socket_timeout: self.socket_timeout,
        })
    }

    fn checked(&self) -> Result<Checked, ConnectionOptionError> {
        // A zero timeout would fail every call before it is sent.
        for (key, timeout) in [("connect_timeout", self.connect_timeout), ("socket_timeout", self.socket_timeout)] {
            if timeout.is_zero() {
                let seconds = timeout.as_secs_f64();
                return Err(option_error(key, format!("must be a positive number of seconds, got {seconds}")));
            }
        }
        let mut checked = match (self.url.as_deref(), &self.sentinel, &self.cluster) {
            (_, Some(_), Some(_)) => {
                return Err(option_error("cluster", "give either `sentinel` or `cluster`, not both"));
            }
            (_, Some(sentinel), None) => self.checked_servers("sentinel", &sentinel.addresses, 26379, |servers| {
                RedisAddress::Sentinel { master: sentinel.master.clone(), sentinels: servers }
            })?,
            (_, None, Some(cluster)) => {
                if self.db.is_some_and(|db| db != 0) {
                    return Err(option_error("db", "a Redis Cluster has database 0 only"));
                }
                self.checked_servers("cluster", &cluster.nodes, 6379, |nodes| RedisAddress::Cluster { nodes })?
            }
            (None, None, None) => Checked {
                address: RedisAddress::Tcp {
                    host: self.host.as_deref().unwrap_or("localhost").to_string(),
                    port: self.port.unwrap_or(6379),
                },
                db: self.db.unwrap_or(0),
                username: None,
                url_password: None,
                tls_insecure: self.tls.as_ref().map(|tls| tls.insecure),
                max_memory_ratio: None,
            },
            (Some(url), None, None) => self.checked_url(url)?,
        };
        if let Some(ratio) = self.max_memory_ratio {
            checked.max_memory_ratio = Some(MemoryRatio::new(ratio).ok_or_else(|| {
                option_error(
                    "max_memory_ratio",
                    format!("a fraction of maxmemory, more than 0 and at most 1, got {ratio}"),
                )
            })?);
        }
        if let Some(username) = &self.username {
            if checked.username.is_some() {
                return Err(option_error("username", "the `url` names a user already; give it in one place"));
            }
            checked.username = Some(username.clone());
        }
        if self.password.is_some() && checked.url_password.is_some() {
            return Err(option_error("password", "the `url` has a password already; give it in one place"));
        }
        if let Some(tls) = &self.tls {
            match (&tls.client_cert, &tls.client_key) {
                (Some(_), None) => return Err(option_error("tls.client_key", "`tls.client_cert` needs its key")),
                (None, Some(_)) => {
                    return Err(option_error("tls.client_cert", "`tls.client_key` needs its certificate"));
                }
                _ => {}
            }
        }
        Ok(checked)
    }

    /// The options of `sentinel` or `cluster` (`key`): no `url`, `host` or `port` beside it,
    /// and at least one `host:port` address.
    fn checked_servers(
        &self,
        key: &str,
        addresses: &[String],
        default_port: u16,
        address: impl FnOnce(Vec<(String, u16)>) -> RedisAddress,
    ) -> Result<Checked, ConnectionOptionError> {
        let given = [("url", self.url.is_some()), ("host", self.host.is_some()), ("port", self.port.is_some())];
        if let Some((other, _)) = given.iter().find(|(_, set)| *set) {
            return Err(option_error(other, format!("`{key}` names the servers; leave out `url`, `host` and `port`")));
        }
        let field = if key == "sentinel" { "sentinel.addresses" } else { "cluster.nodes" };
        if addresses.is_empty() {
            return Err(option_error(field, "at least one `host:port`"));
        }
        if key == "sentinel" && self.sentinel.as_ref().is_some_and(|s| s.master.is_empty()) {
            return Err(option_error("sentinel.master", "the master's name, as the Sentinels know it"));
        }
        if key == "sentinel" && self.sentinel.as_ref().is_some_and(|s| s.username.is_some() && s.password.is_none()) {
            return Err(option_error("sentinel.password", "`sentinel.username` needs the password"));
        }
        let servers = addresses
            .iter()
            .map(|text| {
                host_and_port(text, default_port)
                    .ok_or_else(|| option_error(field, format!("`{text}` is not `host:port`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Checked {
            address: address(servers),
            db: self.db.unwrap_or(0),
            username: None,
            url_password: None,
            tls_insecure: self.tls.as_ref().map(|tls| tls.insecure),
            max_memory_ratio: None,
        })
    }

    fn checked_url(&self, url: &str) -> Result<Checked, ConnectionOptionError> {
        let given = [("host", self.host.is_some()), ("port", self.port.is_some()), ("db", self.db.is_some())];
        if let Some((key, _)) = given.iter().find(|(_, set)| *set) {
            return Err(option_error(key, "give either `url` or `host`/`port`/`db`, not both"));
        }
        // The crate's message never quotes the URL (it may hold a password).
        let info = url.into_connection_info().map_err(|err| {
            option_error("url", format!("not a Redis URL (redis://, rediss://, redis+unix://): {err}"))
        })?;
        let settings = info.redis_settings();
        let (address, url_tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (RedisAddress::Tcp { host: host.clone(), port: *port }, None),
            ConnectionAddr::TcpTls { host, port, insecure, .. } => {
                (RedisAddress::Tcp { host: host.clone(), port: *port }, Some(*insecure))
            }
            ConnectionAddr::Unix(path) => (RedisAddress::Unix(path.clone()), None),
            _ => return Err(option_error("url", "an address this version does not support")),
        };
        let tls_insecure = match (url_tls, &self.tls, &address) {
            (_, Some(_), RedisAddress::Unix(_)) => {
                return Err(option_error("tls", "TLS is for TCP servers, not a Unix socket"));
            }
            (None, Some(_), _) => {
                return Err(option_error("tls", "the `url` is redis:// (no TLS); use rediss:// with `tls`"));
            }
            (Some(url_insecure), Some(tls), _) => Some(url_insecure || tls.insecure),
            (url_tls, None, _) => url_tls,
        };
        Ok(Checked {
            address,
            db: settings.db(),
            username: settings.username().map(str::to_string),
            url_password: settings.password().map(str::to_string),
            tls_insecure,
            max_memory_ratio: None,
        })
    }

    fn tls_settings(&self, base_dir: &Path, insecure: bool) -> Result<TlsSettings, ConnectionOptionError> {
        let read = |key: &str, file: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ConnectionOptionError> {
            let Some(file) = file else { return Ok(None) };
            let path = base_dir.join(file);
            std::fs::read(&path)
                .map(Some)
                .map_err(|err| option_error(key, format!("cannot read {}: {err}", path.display())))
        };
        let tls = self.tls.clone().unwrap_or_default();
        let client = match (read("tls.client_cert", &tls.client_cert)?, read("tls.client_key", &tls.client_key)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        Ok(TlsSettings { ca_pem: read("tls.ca_file", &tls.ca_file)?, client_pem: client, insecure })
    }
}

/// `host:port` (`[v6]:port` too), or `host` alone with `default_port`.
fn host_and_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !host.is_empty() => (host, port.parse().ok()?),
        None => (text, default_port),
        Some(_) => return None,
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection written in `toml`, read as the grant and the native options read it.
    fn connection(toml: &str) -> RedisConnection {
        toml::from_str(toml).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn without_options_it_is_the_seeds_localhost() {
        let endpoint = connection("").endpoint(Path::new("."), &no_env).unwrap();
        assert_eq!(endpoint.to_string(), "redis://localhost:6379/0");
        assert_eq!((endpoint.username, endpoint.password, endpoint.tls), (None, None, None));
        let timeouts = (endpoint.connect_timeout, endpoint.socket_timeout);
        assert_eq!(timeouts, (Duration::from_secs(5), Duration::from_secs(5)));
    }

    #[test]
    fn a_url_gives_address_database_user_password_and_tls() {
        let url = connection("url = \"rediss://tenant:pw@cache.internal:6380/2\"");
        let endpoint = url.endpoint(Path::new("."), &no_env).unwrap();
        assert_eq!(endpoint.to_string(), "rediss://tenant@cache.internal:6380/2");
        assert_eq!(endpoint.password.as_deref(), Some("pw"));
        assert!(!endpoint.tls.unwrap().insecure);
        assert!(!format!("{:?}", url.endpoint(Path::new("."), &no_env).unwrap()).contains("pw\""));
    }

    #[test]
    fn a_url_with_host_port_or_db_names_the_key() {
        let err = connection("url = \"redis://a:1/0\"\nport = 6379").check().unwrap_err();
        assert_eq!(err.to_string(), "option `port`: give either `url` or `host`/`port`/`db`, not both");
        let err = connection("url = \"http://nope\"").check().unwrap_err();
        assert_eq!(err.key, "url");
    }

    #[test]
    fn credentials_in_two_places_and_tls_on_a_plain_url_are_refused() {
        let twice = connection("url = \"redis://u:p@a:1/0\"\npassword = \"x\"");
        assert_eq!(twice.check().unwrap_err().key, "password");
        let twice = connection("url = \"redis://u:p@a:1/0\"\nusername = \"u\"");
        assert_eq!(twice.check().unwrap_err().key, "username");
        let err = connection("url = \"redis://a:1/0\"\ntls = {}").check().unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        let half = connection("tls = { client_cert = \"c.pem\" }");
        assert_eq!(half.check().unwrap_err().key, "tls.client_key");
        assert_eq!(connection("max_memory_ratio = 1.5").check().unwrap_err().key, "max_memory_ratio");
    }

    #[test]
    fn timeouts_are_seconds_or_durations_and_never_zero() {
        let written = connection("connect_timeout = 0.5\nsocket_timeout = \"250ms\"");
        let timeouts = (written.connect_timeout, written.socket_timeout);
        assert_eq!(timeouts, (Duration::from_millis(500), Duration::from_millis(250)));
        let err = connection("socket_timeout = 0").check().unwrap_err();
        assert_eq!(err.to_string(), "option `socket_timeout`: must be a positive number of seconds, got 0");
    }

    #[test]
    fn tls_files_are_read_relative_to_the_config_and_named_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "CA").unwrap();
        let with_tls = connection("host = \"127.0.0.1\"\ntls = { ca_file = \"ca.pem\" }");
        let endpoint = with_tls.endpoint(dir.path(), &no_env).unwrap();
        assert_eq!(endpoint.to_string(), "rediss://127.0.0.1:6379/0");
        assert_eq!(endpoint.tls.unwrap().ca_pem.as_deref(), Some(&b"CA"[..]));
        let err = with_tls.endpoint(Path::new("/nonexistent"), &no_env).unwrap_err();
        assert!(err.key == "tls.ca_file" && err.message.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn sentinel_and_cluster_name_their_servers_alone() {
        let sentinel = "sentinel = { master = \"mymaster\", addresses = [\"10.0.0.1\", \"[::1]:5000\"] }";
        let endpoint = connection(sentinel).endpoint(Path::new("."), &no_env).unwrap();
        assert_eq!(endpoint.to_string(), "redis+sentinel://10.0.0.1:26379,::1:5000/mymaster/0");
        assert_eq!(connection(&format!("{sentinel}\nhost = \"h\"")).check().unwrap_err().key, "host");

        let cluster = "cluster = { nodes = [\"a:7000\", \"b\"] }";
        let endpoint = connection(cluster).endpoint(Path::new("."), &no_env).unwrap();
        assert_eq!(endpoint.to_string(), "redis+cluster://a:7000,b:6379");
        assert_eq!(connection(&format!("{cluster}\ndb = 1")).check().unwrap_err().key, "db");
        assert_eq!(connection(&format!("{cluster}\n{sentinel}")).check().unwrap_err().key, "cluster");
        let bad_node = connection("cluster = { nodes = [\"a:x\"] }");
        assert_eq!(bad_node.check().unwrap_err().key, "cluster.nodes");
    }

    #[test]
    fn the_password_may_be_a_secret_reference() {
        let with_secret = connection("password = { secret = \"REDIS_PASSWORD\" }");
        let env = |name: &str| (name == "REDIS_PASSWORD").then(|| "from-env".to_string());
        assert_eq!(with_secret.endpoint(Path::new("."), &env).unwrap().password.as_deref(), Some("from-env"));
        let err = with_secret.endpoint(Path::new("."), &no_env).unwrap_err();
        assert_eq!(err.to_string(), "option `password`: the secret REDIS_PASSWORD is not set in the environment");
    }
}
