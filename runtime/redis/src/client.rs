//! A connection to one Redis server for appending to streams, shared by the native
//! `redis-stream` backend and the `redis-stream` capability of components.
//!
//! It connects lazily and reconnects by itself: Broadcaster starts while Redis is down, and
//! keeps working after Redis restarts, without a restart of its own. Every command is bounded
//! by the socket timeout, so a Redis that hangs makes a call fail, never wait forever.

use std::sync::Arc;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::connector::{Connection, Connector};
pub use crate::endpoint::RedisEndpoint;
use crate::memory_pressure::{MemoryCheck, MemoryPressure, MemoryReport};

/// A client that cannot be set up (certificates that do not parse, an address the `redis`
/// crate refuses): the operator's to fix, not worth retrying.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot set up a Redis client for {endpoint}: {message}")]
pub struct ClientSetupError {
    /// The server, without password.
    pub endpoint: String,
    /// What is wrong.
    pub message: String,
}

/// Why a Redis call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamCallError {
    /// Redis could not be reached or did not answer in time, or said it cannot serve now
    /// (loading, read-only replica, out of memory). Worth retrying.
    #[error("Redis at {endpoint} is unavailable: {message}")]
    Unavailable {
        /// The server, without password.
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// Redis refused the command itself (for example the key holds another type). Retrying
    /// the same command fails the same way.
    #[error("Redis at {endpoint} rejected the command: {message}")]
    Rejected {
        /// The server, without password.
        endpoint: String,
        /// Redis's reply.
        message: String,
    },
}

impl StreamCallError {
    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A lazily connecting, self-reconnecting connection to one Redis.
#[derive(Clone)]
pub struct StreamClient {
    endpoint: RedisEndpoint,
    connector: Connector,
    pressure: Arc<MemoryPressure>,
}

impl std::fmt::Debug for StreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamClient").field("endpoint", &self.endpoint).finish()
    }
}

impl StreamClient {
    /// Prepares a connection to `endpoint` without connecting: the first command connects.
    /// Must be called inside a Tokio runtime.
    pub fn new(endpoint: RedisEndpoint) -> Result<Self, ClientSetupError> {
        let setup_error =
            |err: RedisError| ClientSetupError { endpoint: endpoint.to_string(), message: err.to_string() };
        let connector = Connector::new(&endpoint).map_err(setup_error)?;
        Ok(Self { endpoint, connector, pressure: Arc::default() })
    }

    /// Whether a client for `endpoint` can be made ([`Self::new`] would succeed), without
    /// making one.
    pub fn check(endpoint: &RedisEndpoint) -> Result<(), ClientSetupError> {
        Connector::check(endpoint)
            .map_err(|err| ClientSetupError { endpoint: endpoint.to_string(), message: err.to_string() })
    }

    /// The server this talks to.
    pub fn endpoint(&self) -> &RedisEndpoint {
        &self.endpoint
    }

    /// `XADD <stream> [MAXLEN ~ <max_len>] * <fields…>`; returns the new entry's id.
    pub async fn xadd(
        &self,
        stream: &str,
        fields: &[(String, String)],
        max_len: Option<u64>,
    ) -> Result<String, StreamCallError> {
        if self.endpoint.wait_replicas.is_some() {
            // With its `WAIT`, as a batch of one. (Boxed: the nested future types otherwise
            // grow past rustc's query depth in callers' async bodies.)
            let mut results = Box::pin(self.xadd_entries(&[(stream, fields, max_len)])).await;
            return results.pop().expect("one result per entry");
        }
        let cmd = xadd_command(stream, fields, max_len);
        self.run(|mut conn| async move { cmd.query_async::<String>(&mut conn).await }).await
    }

    /// Appends many entries to streams sharing one `MAXLEN ~` in one round trip (a pipeline
    /// of `XADD`s). Returns one result per entry: on a connection failure all of them fail.
    pub async fn xadd_pipeline(
        &self,
        entries: &[(&str, Vec<(String, String)>)],
        max_len: Option<u64>,
    ) -> Vec<Result<String, StreamCallError>> {
        let requests: Vec<XaddRequest<'_>> =
            entries.iter().map(|(stream, fields)| (*stream, fields.as_slice(), max_len)).collect();
        self.xadd_entries(&requests).await
    }

    /// Appends entries to any streams, each with its own `MAXLEN ~`, in one round trip: a
    /// pipeline of `XADD`s, run in order. Returns one result per entry: on a connection
    /// failure all of them fail. (For components' `xadd-batch`.)
    ///
    /// On a Redis Cluster, each `XADD` is its own request, all sent at once: the cluster
    /// connection writes them back to back on each node's connection (pipelined on the wire)
    /// and follows `MOVED`/`ASK` for each on its own. (The crate retries a redirected
    /// pipeline whole, which during a slot migration writes its first entries again.)
    pub async fn xadd_entries(&self, entries: &[XaddRequest<'_>]) -> Vec<Result<String, StreamCallError>> {
        if !matches!(self.connector, Connector::Cluster(_)) {
            let indexes: Vec<usize> = (0..entries.len()).collect();
            return Box::pin(self.xadd_group(entries, &indexes)).await;
        }
        let calls =
            entries.iter().map(|(stream, fields, max_len)| Box::pin(self.cluster_xadd(stream, fields, *max_len)));
        let first = futures::future::join_all(calls).await;
        let mut results = Vec::with_capacity(entries.len());
        for ((stream, fields, max_len), reply) in entries.iter().zip(first) {
            // Still redirected after the crate's retries: concurrent requests can take each
            // other's `ASKING` during a slot migration. Once more, alone and in order (the
            // command did not run).
            let reply = match reply {
                Err(err) if matches!(err.code(), Some("ASK" | "MOVED" | "TRYAGAIN" | "CLUSTERDOWN")) => {
                    self.cluster_xadd(stream, fields, *max_len).await
                }
                reply => reply,
            };
            results.push(reply.map_err(|err| self.failure(err)));
        }
        if let Some(replicas) = self.endpoint.wait_replicas
            && results.iter().any(Result::is_ok)
        {
            // WAIT on a cluster goes to every master; the answer is the fewest replicas.
            let timeout = (self.endpoint.socket_timeout / 2).as_millis().max(1) as u64;
            let acked = self
                .run(|mut conn| async move {
                    redis::cmd("WAIT").arg(replicas).arg(timeout).query_async::<u64>(&mut conn).await
                })
                .await
                .unwrap_or(0);
            if acked < u64::from(replicas) {
                let message = format!(
                    "written, but {acked} of {replicas} replicas had it (wait_replicas); it will be sent again"
                );
                for result in results.iter_mut().filter(|r| r.is_ok()) {
                    *result = Err(self.unavailable(message.clone()));
                }
            }
        }
        results
    }

    /// One `XADD` on a cluster, its error as Redis gave it.
    async fn cluster_xadd(
        &self,
        stream: &str,
        fields: &[(String, String)],
        max_len: Option<u64>,
    ) -> Result<String, RedisError> {
        let cmd = xadd_command(stream, fields, max_len);
        let limit = self.endpoint.connect_timeout + self.endpoint.socket_timeout;
        let call = async { cmd.query_async::<String>(&mut self.connector.connection().await?).await };
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::Io, "no reply in time"))))
    }

    /// One pipeline of the entries at `indexes`, in order.
    async fn xadd_group(&self, entries: &[XaddRequest<'_>], indexes: &[usize]) -> Vec<Result<String, StreamCallError>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for i in indexes {
            let (stream, fields, max_len) = entries[*i];
            pipe.add_command(xadd_command(stream, fields, max_len));
        }
        let wait = self.endpoint.wait_replicas.map(|replicas| (replicas, self.endpoint.socket_timeout / 2));
        if let Some((replicas, timeout)) = wait {
            pipe.cmd("WAIT").arg(replicas).arg(timeout.as_millis().max(1) as u64);
        }
        let replies = self.run(|mut conn| async move { pipe.query_async::<Vec<redis::Value>>(&mut conn).await }).await;
        let mut values = match replies {
            Err(err) => return indexes.iter().map(|_| Err(err.clone())).collect(),
            Ok(values) => values,
        };
        let unreplicated = match wait {
            None => None,
            Some((replicas, timeout)) => {
                let acked = values.pop().and_then(|v| redis::from_redis_value::<u64>(v).ok()).unwrap_or(0);
                (acked < u64::from(replicas)).then(|| {
                    format!("written, but {acked} of {replicas} replicas had it within {timeout:?} (wait_replicas); it will be sent again")
                })
            }
        };
        values
            .into_iter()
            .map(|value| match (self.xadd_reply(value), &unreplicated) {
                (Ok(_), Some(message)) => Err(self.unavailable(message.clone())),
                (reply, _) => reply,
            })
            .collect()
    }

    fn xadd_reply(&self, value: redis::Value) -> Result<String, StreamCallError> {
        match value {
            redis::Value::ServerError(err) => Err(self.failure(RedisError::from(err))),
            other => redis::from_redis_value::<String>(other).map_err(|err| StreamCallError::Rejected {
                endpoint: self.endpoint.to_string(),
                message: format!("unexpected reply to XADD: {err}"),
            }),
        }
    }

    /// `PING` within the socket timeout.
    pub async fn ping(&self) -> Result<(), StreamCallError> {
        self.run(|mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await }).await.map(drop)
    }

    /// Whether Redis takes writes now: it answers `PING`, and it is not out of memory (an
    /// `OOM` reply less than a second ago, or `INFO memory` over `maxmemory` or the
    /// configured `max_memory_ratio`; see [`crate::memory_pressure`]). What health checks ask.
    pub async fn ready(&self) -> Result<(), StreamCallError> {
        self.ping().await?;
        if let Some(wanted) = self.endpoint.wait_replicas {
            self.enough_replicas(wanted).await?;
        }
        let ratio = match self.pressure.check(self.endpoint.max_memory_ratio) {
            MemoryCheck::None => return Ok(()),
            MemoryCheck::HeldAfterOom(ago) => {
                return Err(self.unavailable(format!(
                    "out of memory (OOM): a write was refused {} ms ago; events wait until Redis has room",
                    ago.as_millis()
                )));
            }
            MemoryCheck::Info(ratio) => ratio,
        };
        // On a cluster, INFO goes to every primary: a map of node to text.
        let info = self
            .run(
                |mut conn| async move { redis::cmd("INFO").arg("memory").query_async::<redis::Value>(&mut conn).await },
            )
            .await;
        match info {
            Ok(info) => {
                let texts = info_texts(info);
                match texts.iter().find_map(|text| MemoryReport::parse(text).and_then(|report| report.over(ratio))) {
                    Some(full) => Err(self.unavailable(full)),
                    None => Ok(()),
                }
            }
            // INFO not permitted for this user: the OOM hold is all there is.
            Err(StreamCallError::Rejected { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// With `wait_replicas`: down while the master (every master of a cluster) has fewer
    /// replicas online (connected and in sync), since no batch could be acknowledged.
    async fn enough_replicas(&self, wanted: u32) -> Result<(), StreamCallError> {
        let info = self
            .run(|mut conn| async move {
                redis::cmd("INFO").arg("replication").query_async::<redis::Value>(&mut conn).await
            })
            .await;
        let texts = match info {
            Ok(info) => info_texts(info),
            // INFO not permitted: WAIT itself tells.
            Err(StreamCallError::Rejected { .. }) => return Ok(()),
            Err(err) => return Err(err),
        };
        for text in texts {
            // `slave0:ip=…,port=…,state=online,offset=…,lag=0`: in sync, not still loading.
            let online = text.lines().filter(|line| line.starts_with("slave") && line.contains("state=online")).count();
            if online < wanted as usize {
                return Err(
                    self.unavailable(format!("{online} of {wanted} replicas online (wait_replicas); events wait"))
                );
            }
        }
        Ok(())
    }

    fn unavailable(&self, message: String) -> StreamCallError {
        StreamCallError::Unavailable { endpoint: self.endpoint.to_string(), message }
    }

    /// Sorts a failure (and notes an `OOM`, and a lost connection).
    fn failure(&self, err: RedisError) -> StreamCallError {
        if err.code() == Some("OOM") {
            self.pressure.record_oom();
        }
        self.connector.failed(Some(&err));
        classify(&self.endpoint, err)
    }

    async fn run<T, F, Fut>(&self, call: F) -> Result<T, StreamCallError>
    where
        F: FnOnce(Connection) -> Fut + Send,
        Fut: Future<Output = Result<T, RedisError>> + Send,
        T: Send,
    {
        // The connection bounds connect and reply separately; this bounds the whole call.
        let limit = self.endpoint.connect_timeout + self.endpoint.socket_timeout;
        // Boxed: the redis crate's futures nested in ours otherwise grow past rustc's query
        // depth when callers' async bodies are laid out.
        let attempt: std::pin::Pin<Box<dyn Future<Output = Result<T, RedisError>> + Send + '_>> =
            Box::pin(async { call(self.connector.connection().await?).await });
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result.map_err(|err| self.failure(err)),
            Err(_) => {
                self.connector.failed(None);
                Err(self.unavailable(format!("no reply within {limit:?}")))
            }
        }
    }
}

/// One entry for [`StreamClient::xadd_entries`]: the stream, the fields, and `MAXLEN ~`.
pub type XaddRequest<'a> = (&'a str, &'a [(String, String)], Option<u64>);

/// The clients of several publishers, one per server: for publishers that may share one.
#[derive(Debug, Default)]
pub struct StreamClients(std::collections::HashMap<RedisEndpoint, StreamClient>);

impl StreamClients {
    /// The client for `endpoint`, made on first use.
    pub fn shared(&mut self, endpoint: RedisEndpoint) -> Result<StreamClient, ClientSetupError> {
        if let Some(client) = self.0.get(&endpoint) {
            return Ok(client.clone());
        }
        let client = StreamClient::new(endpoint.clone())?;
        self.0.insert(endpoint, client.clone());
        Ok(client)
    }
}

/// The texts of an `INFO` reply: one, or one per node (a cluster's map).
fn info_texts(value: redis::Value) -> Vec<String> {
    match value {
        redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(_, v)| info_texts(v)).collect(),
        other => redis::from_redis_value::<String>(other).into_iter().collect(),
    }
}

fn xadd_command(stream: &str, fields: &[(String, String)], max_len: Option<u64>) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if let Some(max_len) = max_len {
        cmd.arg("MAXLEN").arg("~").arg(max_len);
    }
    cmd.arg("*");
    for (field, value) in fields {
        cmd.arg(field).arg(value);
    }
    cmd
}

/// Sorts a Redis error into "try again later" and "this command is wrong".
fn classify(endpoint: &RedisEndpoint, err: RedisError) -> StreamCallError {
    let endpoint = endpoint.to_string();
    let message = err.to_string();
    let transient = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || matches!(
            err.kind(),
            ErrorKind::Io
                | ErrorKind::AuthenticationFailed
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                )
        )
        // MOVED/ASK left after the cluster connection's retries: a resharding or failover
        // still settling.
        || matches!(err.code(), Some("OOM" | "NOAUTH" | "WRONGPASS" | "BUSY" | "MISCONF" | "MOVED" | "ASK"));
    if transient {
        StreamCallError::Unavailable { endpoint, message }
    } else {
        StreamCallError::Rejected { endpoint, message }
    }
}
