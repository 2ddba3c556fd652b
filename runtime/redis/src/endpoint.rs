//! How to reach a Redis, resolved from the connection options ([`crate::options`]):
//! one server, a Sentinel-watched master or a Cluster, with TLS, credentials and timeouts;
//! and the `redis` crate's client for a single server.

use std::path::PathBuf;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::memory_pressure::MemoryRatio;

/// Where a Redis listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RedisAddress {
    /// A TCP server.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket.
    Unix(PathBuf),
    /// The master `master`, as Redis Sentinel says.
    Sentinel {
        /// The master's name.
        master: String,
        /// The Sentinels, host and port.
        sentinels: Vec<(String, u16)>,
    },
    /// A Redis Cluster.
    Cluster {
        /// Seed nodes, host and port.
        nodes: Vec<(String, u16)>,
    },
}

/// TLS to the server, its files read.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// The certificate authorities to trust (PEM) instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate (chain) and its key (PEM).
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Whether to accept any server certificate.
    pub insecure: bool,
}

impl std::fmt::Debug for TlsSettings {
    // The key is never printed, nor the certificates (they are long).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .field("client_pem", &self.client_pem.as_ref().map(|_| "…"))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Credentials for the Sentinels themselves.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SentinelAuth {
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for SentinelAuth {
    // The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelAuth").field("username", &self.username).field("password", &"***").finish()
    }
}

/// How to reach a Redis server: address, TLS, database, credentials, timeouts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisEndpoint {
    /// Where it listens.
    pub address: RedisAddress,
    /// TLS, if on.
    pub tls: Option<TlsSettings>,
    /// Database number.
    pub db: i64,
    /// ACL user (`AUTH <username> <password>`); `default` when none.
    pub username: Option<String>,
    /// `AUTH` password.
    pub password: Option<String>,
    /// Credentials for the Sentinels, when they require them.
    pub sentinel_auth: Option<SentinelAuth>,
    /// Hold publishers down once Redis uses this fraction of its `maxmemory`
    /// ([`crate::memory_pressure`]).
    pub max_memory_ratio: Option<MemoryRatio>,
    /// After each pipeline of `XADD`s, `WAIT` until this many replicas have the entries
    /// (at most half the socket timeout); fewer is an outage error, so the entries are sent
    /// again rather than lost if the master fails before replicating them.
    pub wait_replicas: Option<u32>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How long to wait for a reply.
    pub socket_timeout: Duration,
}

impl std::fmt::Debug for RedisEndpoint {
    // The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("sentinel_auth", &self.sentinel_auth)
            .field("max_memory_ratio", &self.max_memory_ratio)
            .field("wait_replicas", &self.wait_replicas)
            .field("connect_timeout", &self.connect_timeout)
            .field("socket_timeout", &self.socket_timeout)
            .finish()
    }
}

impl RedisEndpoint {
    /// The server at `host:port`, database `db`, no TLS, with these timeouts.
    pub fn new(
        (host, port, db): (&str, u16, i64),
        password: Option<&str>,
        connect_timeout: Duration,
        socket_timeout: Duration,
    ) -> Self {
        Self {
            address: RedisAddress::Tcp { host: host.to_string(), port },
            tls: None,
            db,
            username: None,
            password: password.map(str::to_string),
            sentinel_auth: None,
            max_memory_ratio: None,
            wait_replicas: None,
            connect_timeout,
            socket_timeout,
        }
    }

    /// What the `redis` crate connects to.
    pub fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        let addr = match (&self.address, &self.tls) {
            (RedisAddress::Tcp { host, port }, None) => ConnectionAddr::Tcp(host.clone(), *port),
            (RedisAddress::Tcp { host, port }, Some(tls)) => {
                ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure: tls.insecure, tls_params: None }
            }
            (RedisAddress::Unix(path), _) => ConnectionAddr::Unix(path.clone()),
            (RedisAddress::Sentinel { .. } | RedisAddress::Cluster { .. }, _) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "a Sentinel or Cluster endpoint has no single server",
                )));
            }
        };
        let mut settings = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        Ok(addr.into_connection_info()?.set_redis_settings(settings))
    }

    /// A `redis` client for a single server (TLS certificates parsed now); connects nowhere
    /// yet.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        let info = self.connection_info()?;
        match self.tls_certificates() {
            Some(certificates) => redis::Client::build_with_tls(info, certificates),
            None => redis::Client::open(info),
        }
    }

    /// The TLS files, for the `redis` crate, when any is given.
    pub fn tls_certificates(&self) -> Option<redis::TlsCertificates> {
        let tls = self.tls.as_ref().filter(|tls| tls.ca_pem.is_some() || tls.client_pem.is_some())?;
        Some(redis::TlsCertificates {
            client_tls: tls
                .client_pem
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            root_cert: tls.ca_pem.clone(),
        })
    }
}

impl std::fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.username.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
        match &self.address {
            RedisAddress::Tcp { host, port } => {
                let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
                write!(f, "{scheme}://{user}{host}:{port}/{}", self.db)
            }
            RedisAddress::Unix(path) => write!(f, "redis+unix://{user}{}?db={}", path.display(), self.db),
            RedisAddress::Sentinel { master, sentinels } => {
                let scheme = if self.tls.is_some() { "rediss+sentinel" } else { "redis+sentinel" };
                write!(f, "{scheme}://{user}{}/{master}/{}", joined(sentinels), self.db)
            }
            RedisAddress::Cluster { nodes } => {
                let scheme = if self.tls.is_some() { "rediss+cluster" } else { "redis+cluster" };
                write!(f, "{scheme}://{user}{}", joined(nodes))
            }
        }
    }
}

fn joined(servers: &[(String, u16)]) -> String {
    servers.iter().map(|(host, port)| format!("{host}:{port}")).collect::<Vec<_>>().join(",")
}
