//! The connection behind a [`StreamClient`](crate::client::StreamClient), by how the
//! Redis is deployed: one server (the `redis` crate's `ConnectionManager`, which reconnects
//! by itself), a master found through Redis Sentinel (found again after a failure, so a
//! failover is followed), or a Redis Cluster (the crate's cluster connection: each command
//! to its slot's node, `MOVED`/`ASK` followed). All of them connect lazily: Broadcaster
//! starts while Redis is down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, TlsMode,
    Value,
};

use crate::endpoint::{RedisAddress, RedisEndpoint};

/// Makes connections to one Redis deployment.
#[derive(Clone)]
pub enum Connector {
    /// One server.
    Server(ConnectionManager),
    /// A master found through Sentinel.
    Sentinel(Arc<SentinelConnector>),
    /// A Redis Cluster.
    Cluster(Arc<ClusterConnector>),
}

impl Connector {
    /// A connector for `endpoint`; nothing is connected yet. Must be called inside a Tokio
    /// runtime.
    pub fn new(endpoint: &RedisEndpoint) -> RedisResult<Self> {
        match &endpoint.address {
            RedisAddress::Tcp { .. } | RedisAddress::Unix(_) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(endpoint.connect_timeout))
                    .set_response_timeout(Some(endpoint.socket_timeout))
                    // Fail a call fast while Redis is down: the relay retries, the caller is told.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Ok(Self::Server(ConnectionManager::new_lazy_with_config(endpoint.client()?, config)?))
            }
            RedisAddress::Sentinel { master, sentinels } => {
                Ok(Self::Sentinel(Arc::new(SentinelConnector::new(endpoint, master, sentinels)?)))
            }
            RedisAddress::Cluster { nodes } => Ok(Self::Cluster(Arc::new(ClusterConnector::new(endpoint, nodes)?))),
        }
    }

    /// Whether `endpoint` can be set up ([`Self::new`] would succeed), without setting it up:
    /// for one server only its client is built (no connection manager and its task), which
    /// matters when 100,000 tenants' grants are checked at start-up.
    pub fn check(endpoint: &RedisEndpoint) -> RedisResult<()> {
        match &endpoint.address {
            RedisAddress::Tcp { .. } | RedisAddress::Unix(_) => endpoint.client().map(drop),
            RedisAddress::Sentinel { .. } | RedisAddress::Cluster { .. } => Self::new(endpoint).map(drop),
        }
    }

    /// A connection, connecting first if needed.
    pub async fn connection(&self) -> RedisResult<Connection> {
        match self {
            Self::Server(manager) => Ok(Connection::Server(manager.clone())),
            Self::Sentinel(sentinel) => sentinel.connection().await.map(Connection::Multiplexed),
            Self::Cluster(cluster) => cluster.connection().await.map(Connection::Cluster),
        }
    }

    /// Tells the connector a call failed (or timed out, `None`): a Sentinel connection that
    /// lost its server, or reached a master demoted to replica, is dropped, so the next call
    /// asks the Sentinels again.
    pub fn failed(&self, err: Option<&RedisError>) {
        if let Self::Sentinel(sentinel) = self {
            let lost = err.is_none_or(|err| {
                err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_timeout()
                    || err.is_unrecoverable_error()
                    || err.code() == Some("READONLY")
            });
            if lost {
                sentinel.reset();
            }
        }
    }
}

/// A connection of any kind, for `query_async`.
pub enum Connection {
    /// To one server.
    Server(ConnectionManager),
    /// To a Sentinel's master.
    Multiplexed(MultiplexedConnection),
    /// To a cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Multiplexed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

fn tls_mode(endpoint: &RedisEndpoint) -> Option<TlsMode> {
    endpoint.tls.as_ref().map(|tls| if tls.insecure { TlsMode::Insecure } else { TlsMode::Secure })
}

/// The master of a Sentinel-watched group: asked of the Sentinels on first use and again
/// after the connection fails.
pub struct SentinelConnector {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

impl SentinelConnector {
    fn new(endpoint: &RedisEndpoint, master: &str, sentinels: &[(String, u16)]) -> RedisResult<Self> {
        let addresses = sentinels.iter().map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder = SentinelClientBuilder::new(addresses, master, SentinelServerType::Master)?
            .set_client_to_redis_db(endpoint.db);
        if let Some(username) = &endpoint.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &endpoint.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(mode) = tls_mode(endpoint) {
            builder = builder.set_client_to_redis_tls_mode(mode);
        }
        if let Some(certificates) = endpoint.tls_certificates() {
            builder = builder.set_client_to_redis_certificates(certificates);
        }
        if let Some(auth) = &endpoint.sentinel_auth {
            builder = builder.set_client_to_sentinel_password(&auth.password);
            if let Some(username) = &auth.username {
                builder = builder.set_client_to_sentinel_username(username);
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(endpoint.connect_timeout))
            .set_response_timeout(Some(endpoint.socket_timeout));
        Ok(Self { client: tokio::sync::Mutex::new(builder.build()?), current: Mutex::new(None), config })
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(connection) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(connection);
        }
        let mut client = self.client.lock().await;
        // Another call may have connected while this one waited.
        if let Some(connection) = self.current.lock().expect("sentinel lock").clone() {
            return Ok(connection);
        }
        let connection = client.get_async_connection_with_config(&self.config).await?;
        *self.current.lock().expect("sentinel lock") = Some(connection.clone());
        Ok(connection)
    }

    fn reset(&self) {
        self.current.lock().expect("sentinel lock").take();
    }
}

/// A Redis Cluster connection, made on first use (and again while it cannot be made).
pub struct ClusterConnector {
    client: redis::cluster::ClusterClient,
    current: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl ClusterConnector {
    fn new(endpoint: &RedisEndpoint, nodes: &[(String, u16)]) -> RedisResult<Self> {
        let scheme = if endpoint.tls.is_some() { "rediss" } else { "redis" };
        let fragment = if endpoint.tls.as_ref().is_some_and(|tls| tls.insecure) { "#insecure" } else { "" };
        let seeds: Vec<String> =
            nodes.iter().map(|(host, port)| format!("{scheme}://{host}:{port}{fragment}")).collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(endpoint.connect_timeout)
            .response_timeout(endpoint.socket_timeout)
            // MOVED/ASK and a failover in progress are retried inside the call; the call as a
            // whole stays under the client's own limit.
            .retries(6)
            .min_retry_wait(50)
            .max_retry_wait(1000);
        if let Some(username) = &endpoint.username {
            builder = builder.username(username);
        }
        if let Some(password) = &endpoint.password {
            builder = builder.password(password);
        }
        if let Some(mode) = tls_mode(endpoint) {
            builder = builder.tls(mode);
        }
        if let Some(certificates) = endpoint.tls_certificates() {
            builder = builder.certs(certificates);
        }
        Ok(Self { client: builder.build()?, current: tokio::sync::Mutex::new(None) })
    }

    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let mut current = self.current.lock().await;
        if let Some(connection) = &*current {
            return Ok(connection.clone());
        }
        let connection = self.client.get_async_connection().await.map_err(|err| {
            if err.kind() == ErrorKind::InvalidClientConfig {
                err
            } else {
                RedisError::from((ErrorKind::Io, "cannot reach the cluster", err.to_string()))
            }
        })?;
        *current = Some(connection.clone());
        Ok(connection)
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Server(_) => "Connector::Server",
            Self::Sentinel(_) => "Connector::Sentinel",
            Self::Cluster(_) => "Connector::Cluster",
        })
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Server(_) => "Connection::Server",
            Self::Multiplexed(_) => "Connection::Multiplexed",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl std::fmt::Debug for SentinelConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnector").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClusterConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConnector").finish_non_exhaustive()
    }
}
