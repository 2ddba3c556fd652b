//! `broadcaster:backend/redis-stream`, bound to a publisher's `redis` grant:
//! `grants.redis = { host, port, db, password, streams = ["tenant-a:*"], … }`: the connection
//! keys are [`RedisConnection`]'s, the native backend's too, beside the grant's `streams`.
//!
//! The guest sees stream names and error messages, never the server's address or password.
//! Everything it passes is bounded before the host copies it: the number of fields
//! (`limits.entry_fields`), the stream name (`limits.stream_name_bytes`) and the entry's bytes
//! (`limits.entry_bytes`) are measured in the guest's memory first, and an entry over a cap is
//! refused with `rejected` naming the cap (a backend maps it to a permanent error).
//!
//! `ping` answers `unavailable` while Redis is out of memory (see
//! [`broadcaster_redis::memory_pressure`]), so a backend's `health-check` holds the publisher down then.
//!
//! The interface is linked under every contract version; `xadd-batch` (0.2.0, in [`batch`])
//! appends many entries in one pipelined round trip, within the same per-entry caps plus
//! `limits.xadd_batch_entries` and `limits.xadd_batch_bytes` for the whole call.

mod batch;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmList, WasmStr};

use super::{CallContext, Capability, CapabilityView, GrantError, PublisherSetup};
use crate::bindings::RedisStreamError as Error;
use crate::component::ContractVersion;
use crate::guest_output::truncate;
use crate::state::PublisherState;
use broadcaster_redis::client::{RedisEndpoint, StreamCallError, StreamClient};
use broadcaster_redis::options::{
    CONNECTION_KEYS, RedisConnection, deserialize_beside_connection, keys_beside_connection,
};

/// `grants.redis`: the Redis a component may write to, and which streams.
#[derive(Debug, Clone)]
pub struct RedisGrant {
    /// The granted server, with the keys and defaults of the native backend's options.
    pub connection: RedisConnection,
    /// Stream name patterns the component may `XADD` to; `*` matches any run of characters,
    /// `?` one character. Required: an empty list allows nothing.
    pub streams: Vec<String>,
}

/// Every key of the grant, for the message refusing another.
static GRANT_KEYS: [&str; CONNECTION_KEYS.len() + 1] = keys_beside_connection(&["streams"]);

impl<'de> Deserialize<'de> for RedisGrant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The grant's own key; the others are the connection's.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct GrantKeys {
            streams: Vec<String>,
        }
        let (connection, GrantKeys { streams }) =
            deserialize_beside_connection(deserializer, "RedisGrant", &GRANT_KEYS)?;
        Ok(Self { connection, streams })
    }
}

/// A set of stream name patterns ([`broadcaster_entry::glob`]); a name is allowed when any
/// pattern matches it whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPatterns(Vec<String>);

impl StreamPatterns {
    /// The patterns as written in the grant.
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        Self(patterns.into_iter().collect())
    }

    /// Whether `stream` matches one of the patterns.
    pub fn allows(&self, stream: &str) -> bool {
        self.0.iter().any(|pattern| broadcaster_entry::glob::matches(pattern, stream))
    }

    /// The patterns, for messages.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A publisher's `redis` grant, set up: the server and its streams. Each instance gets its
/// own connection ([`RedisStreamState`]): a tenant that floods Redis queues behind itself, not
/// in front of its neighbours, and an idle tenant (no instance) holds none.
#[derive(Debug, Clone)]
pub struct RedisStreamGrant {
    /// The granted server.
    pub endpoint: RedisEndpoint,
    /// The granted stream patterns.
    pub streams: StreamPatterns,
}

/// The `redis-stream` capability.
#[derive(Debug)]
pub struct RedisStream;

/// One instance's `redis-stream` state: the grant, if any, and the instance's connection,
/// made on its first call and closed when the instance is dropped (after a trap, to make room
/// for another tenant's, or after its idle timeout): 100,000 configured tenants hold as many
/// connections as they have live instances, not 100,000.
#[derive(Debug)]
pub struct RedisStreamState {
    grant: Option<Arc<RedisStreamGrant>>,
    client: Option<StreamClient>,
}

impl RedisStreamState {
    /// Whether the publisher has the grant.
    fn is_granted(&self) -> bool {
        self.grant.is_some()
    }

    /// The grant and the instance's connection (made now if this is its first call).
    fn connection(&mut self) -> Result<(&RedisStreamGrant, StreamClient), Error> {
        let Some(grant) = self.grant.as_deref() else {
            return Err(Error::NotGranted);
        };
        let client = match &mut self.client {
            Some(client) => client.clone(),
            empty => empty
                .insert(StreamClient::new(grant.endpoint.clone()).map_err(|err| Error::Unavailable(err.message))?)
                .clone(),
        };
        Ok((grant, client))
    }
}

impl Capability for RedisStream {
    const GRANT: Option<&'static str> = Some("redis");
    const GRANT_EXAMPLE: &'static str = "{ host = \"…\", port = 6379, streams = [\"…\"] }";
    const INTERFACES: &'static [&'static str] = &["broadcaster:backend/redis-stream"];
    const GRANTED_INTERFACES: &'static [&'static str] = &["broadcaster:backend/redis-stream"];
    type Grant = RedisGrant;
    type Configured = Option<Arc<RedisStreamGrant>>;
    type State = RedisStreamState;

    fn check_grant(grant: &RedisGrant) -> Result<(), GrantError> {
        if grant.streams.iter().any(String::is_empty) {
            return Err(GrantError { key: "streams".into(), message: "a stream pattern cannot be empty".into() });
        }
        grant.connection.check().map_err(|err| GrantError { key: err.key, message: err.message })
    }

    fn configure(grant: Option<RedisGrant>, publisher: &PublisherSetup<'_>) -> Result<Self::Configured, String> {
        let Some(grant) = grant else { return Ok(None) };
        let env = |name: &str| std::env::var(name).ok();
        let endpoint = grant
            .connection
            .endpoint(publisher.base_dir, &env)
            .map_err(|err| format!("grants.redis.{}: {}", err.key, err.message))?;
        // Checked now (TLS material, addresses), used by each instance's own client.
        StreamClient::check(&endpoint).map_err(|err| format!("grants.redis: {err}"))?;
        Ok(Some(Arc::new(RedisStreamGrant { endpoint, streams: StreamPatterns::new(grant.streams) })))
    }

    fn instance_state(configured: &Self::Configured, _call: &CallContext) -> RedisStreamState {
        RedisStreamState { grant: configured.clone(), client: None }
    }

    fn add_to_linker(linker: &mut Linker<PublisherState>) -> wasmtime::Result<()> {
        for version in ContractVersion::ALL {
            let mut instance = linker.instance(&format!("broadcaster:backend/redis-stream@{version}"))?;
            instance.func_wrap_async(
                "xadd",
                |mut store: StoreContextMut<'_, PublisherState>,
                 (stream, fields, max_len): (WasmStr, WasmList<(WasmStr, WasmStr)>, Option<u64>)| {
                    Box::new(async move {
                        let entry = match read_entry(&mut store, &stream, &fields)? {
                            Ok(entry) => entry,
                            Err(refused) => return Ok((Err(refused),)),
                        };
                        let view = store.data_mut().view::<RedisStreamState>();
                        Ok((view.xadd(entry, max_len).await,))
                    })
                },
            )?;
            instance.func_wrap_async("ping", |mut store: StoreContextMut<'_, PublisherState>, (): ()| {
                Box::new(async move {
                    store.data().call.budget.charge_host_call(0)?;
                    let view = store.data_mut().view::<RedisStreamState>();
                    Ok((view.ping().await,))
                })
            })?;
            if version.has_batches() {
                batch::add_xadd_batch(&mut instance)?;
            }
        }
        Ok(())
    }
}

/// An entry read out of the guest's memory, within the caps.
struct Entry {
    stream: String,
    fields: Vec<(String, String)>,
}

/// An entry measured in the guest's memory (nothing copied yet): its size and its fields.
struct Measured {
    bytes: u64,
    pairs: Vec<(WasmStr, WasmStr)>,
}

/// Reads `stream` and `fields` from the guest's memory, measuring before copying: an entry
/// over a cap is refused (`Ok(Err(..))`) without being copied; going over the call's
/// host-call budget traps (`Err`).
fn read_entry(
    store: &mut StoreContextMut<'_, PublisherState>,
    stream: &WasmStr,
    fields: &WasmList<(WasmStr, WasmStr)>,
) -> wasmtime::Result<Result<Entry, Error>> {
    let measured = measure_entry(store, stream, fields)?;
    // A refused call still counts as a host call.
    let charged = measured.as_ref().map_or(0, |m| m.bytes as usize);
    store.data().call.budget.charge_host_call(charged)?;
    match measured {
        Ok(measured) => Ok(Ok(copy_entry(store, stream, &measured)?)),
        Err(message) => Ok(Err(Error::Rejected(message))),
    }
}

/// Measures an entry in the guest's memory against `limits.entry_fields`,
/// `limits.stream_name_bytes` and `limits.entry_bytes`, copying nothing: its size, or why
/// it is refused.
fn measure_entry(
    store: &mut StoreContextMut<'_, PublisherState>,
    stream: &WasmStr,
    fields: &WasmList<(WasmStr, WasmStr)>,
) -> wasmtime::Result<Result<Measured, String>> {
    let limits = store.data().call.budget.limits().clone();
    if fields.len() as u64 > limits.entry_fields {
        let message =
            format!("the entry has {} fields, more than limits.entry_fields ({})", fields.len(), limits.entry_fields);
        return Ok(Err(message));
    }
    let stream_len = stream.to_str(&*store)?.len();
    if stream_len as u64 > limits.stream_name_bytes {
        return Ok(Err(format!(
            "the stream name is {stream_len} bytes, more than limits.stream_name_bytes ({})",
            limits.stream_name_bytes
        )));
    }
    let mut pairs = Vec::with_capacity(fields.len());
    for i in 0..fields.len() {
        pairs.push(fields.get(&mut *store, i).expect("index within the list")?);
    }
    let mut bytes = stream_len as u64;
    for (field, value) in &pairs {
        bytes += (field.to_str(&*store)?.len() + value.to_str(&*store)?.len()) as u64;
    }
    if bytes > limits.entry_bytes {
        return Ok(Err(format!(
            "the entry is {bytes} bytes (stream name and fields), more than limits.entry_bytes ({})",
            broadcaster_core::units::ByteSize(limits.entry_bytes)
        )));
    }
    Ok(Ok(Measured { bytes, pairs }))
}

/// Copies a measured entry out of the guest's memory.
fn copy_entry(
    store: &StoreContextMut<'_, PublisherState>,
    stream: &WasmStr,
    measured: &Measured,
) -> wasmtime::Result<Entry> {
    let mut fields = Vec::with_capacity(measured.pairs.len());
    for (field, value) in &measured.pairs {
        fields.push((field.to_str(store)?.into_owned(), value.to_str(store)?.into_owned()));
    }
    Ok(Entry { stream: stream.to_str(store)?.into_owned(), fields })
}

/// The message a backend sees: what happened, never where (no host, port or password).
fn guest_error(err: StreamCallError) -> Error {
    match err {
        StreamCallError::Unavailable { message, .. } => Error::Unavailable(message),
        StreamCallError::Rejected { message, .. } => Error::Rejected(message),
    }
}

/// Runs a Redis call under `timeout`; a call that takes longer is `unavailable` (the guest's
/// limits do not cover time spent in the host).
async fn bounded<T>(timeout: Duration, call: impl Future<Output = Result<T, StreamCallError>>) -> Result<T, Error> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(guest_error),
        Err(_) => Err(Error::Unavailable(format!("no reply within {timeout:?} (limits.host_call_timeout)"))),
    }
}

impl CapabilityView<'_, RedisStreamState> {
    async fn xadd(self, entry: Entry, max_len: Option<u64>) -> Result<String, Error> {
        let Some(grant) = &self.state.grant else {
            return Err(Error::NotGranted);
        };
        check_entry(grant, &entry).inspect_err(|err| log_denied(grant, &self.call.publisher, err, 1))?;
        let (_, client) = self.state.connection()?;
        bounded(self.call.host_call_timeout(), client.xadd(&entry.stream, &entry.fields, max_len)).await
    }

    async fn ping(self) -> Result<(), Error> {
        let (_, client) = self.state.connection()?;
        bounded(self.call.host_call_timeout(), client.ready()).await
    }
}

/// Whether `entry` may be written under `grant`: its stream within the grant, and at least
/// one field.
fn check_entry(grant: &RedisStreamGrant, entry: &Entry) -> Result<(), Error> {
    if !grant.streams.allows(&entry.stream) {
        return Err(Error::StreamDenied(truncate(&entry.stream).into_owned()));
    }
    if entry.fields.is_empty() {
        return Err(Error::Rejected("an entry needs at least one field".into()));
    }
    Ok(())
}

/// Logs a refusal to write outside the grant (`count` entries of one call, the first shown).
fn log_denied(grant: &RedisStreamGrant, publisher: &str, err: &Error, count: usize) {
    if let Error::StreamDenied(shown) = err {
        tracing::warn!(
            publisher = %publisher,
            stream = %shown,
            allowed = ?grant.streams.as_slice(),
            entries = count,
            "refused XADD to a stream outside the grant"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_allowed_when_any_pattern_matches() {
        let patterns = StreamPatterns::new(["tenant-a:*".to_string(), "audit".to_string()]);
        assert!(patterns.allows("tenant-a:orders"));
        assert!(patterns.allows("audit"));
        assert!(!patterns.allows("tenant-b:orders"));
        assert!(!StreamPatterns::default().allows("anything"));
    }

    #[test]
    fn a_grant_holds_its_streams_beside_the_connection_keys() {
        let grant: RedisGrant = toml::from_str("host = \"h\"\nstreams = [\"a:*\"]\nsocket_timeout = \"2s\"").unwrap();
        assert_eq!((grant.connection.host.as_deref(), grant.streams.as_slice()), (Some("h"), &["a:*".to_string()][..]));
        assert_eq!(grant.connection.socket_timeout, Duration::from_secs(2));
        let no_wait: RedisGrant = toml::from_str("streams = [\"a\"]\nconnect_timeout = 0").unwrap();
        assert_eq!(RedisStream::check_grant(&no_wait).unwrap_err().key, "connect_timeout");
    }
}
