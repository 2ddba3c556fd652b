//! Host capabilities: everything a backend may import. Each capability is one module that
//! implements [`Capability`] (its grant and config key, its per-publisher setup, its
//! per-instance state, its imports and how they are linked) and one entry in
//! [`CAPABILITIES`]. The linker ([`super::engine`]), the import check of a component
//! ([`super::component`]), the grant check at start-up and `broadcaster check` all read that
//! table; nothing else names a capability.
//!
//! - [`wasi`]: WASI 0.2, linked but empty (no files, environment, arguments or sockets);
//!   stdout/stderr go to the log.
//! - [`log`](self::log): `broadcaster:backend/log`.
//! - [`redis_stream`]: `broadcaster:backend/redis-stream`, bound to the `redis` grant.
//! - [`http`]: `wasi:http/outgoing-handler`, bound to the `http` grant.
//!
//! The split follows Spin's factors: *configure* once per publisher (connect a client, parse
//! an allow-list; errors are the operator's), *instance state* once per instance (cheap; made
//! again when a trapped instance is replaced), and the imports implemented on a view of that
//! state plus the call's [`CallContext`], never on the whole store.

pub mod http;
pub mod log;
pub mod redis_stream;
pub mod wasi;

use std::any::{Any, TypeId};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use wasmtime::component::Linker;

use super::budget::CallBudget;
use super::guest_output::{LastLines, LogRate};
use super::lanes::CpuAccount;
use super::secrets::Redactor;
use super::state::PublisherState;
use broadcaster_config::Grants;

/// A host capability. See the module docs.
pub trait Capability: Send + Sync + 'static {
    /// The key under `[publishers.<name>.grants]` that grants it; `None` when every backend
    /// has it.
    const GRANT: Option<&'static str>;
    /// What the grant looks like, for messages (`{ host = "…", streams = ["…"] }`).
    const GRANT_EXAMPLE: &'static str = "{ … }";
    /// The interfaces it provides, `package/interface` without a version; `package/*` for a
    /// whole package.
    const INTERFACES: &'static [&'static str];
    /// Of those, the ones a backend may import only with the grant. Importing one without
    /// the grant is refused before any event flows.
    const GRANTED_INTERFACES: &'static [&'static str] = &[];
    /// Said when a backend imports an interface of one of its packages that it does not
    /// provide.
    const UNPROVIDED_NOTE: &'static str = "";
    /// The grant's value (`grants.<key> = { … }`), read from the configuration.
    type Grant: DeserializeOwned;
    /// What a publisher's grant becomes once set up (a client, a parsed policy); shared by
    /// every instance the publisher creates.
    type Configured: Send + Sync + 'static;
    /// What one instance holds.
    type State: Send + 'static;

    /// Checks a grant beyond its types (at configuration load); the error names the key.
    fn check_grant(_grant: &Self::Grant) -> Result<(), GrantError> {
        Ok(())
    }

    /// Sets the capability up for one publisher (`grant`: its grant, if any). An error
    /// says what to fix in the grant.
    fn configure(grant: Option<Self::Grant>, publisher: &PublisherSetup<'_>) -> Result<Self::Configured, String>;

    /// A fresh state for a new instance.
    fn instance_state(configured: &Self::Configured, call: &CallContext) -> Self::State;

    /// Adds its imports to the linker.
    fn add_to_linker(linker: &mut Linker<PublisherState>) -> wasmtime::Result<()>;
}

/// A grant that is not usable: the key under the grant (empty for the grant itself) and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GrantError {
    /// The key below `grants.<grant>`, like `streams` or `allow`; empty for the whole grant.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// What a capability may use while setting itself up for one publisher.
#[derive(Debug)]
pub struct PublisherSetup<'a> {
    /// The publisher's name.
    pub publisher: &'a Arc<str>,
    /// Its limits.
    pub limits: &'a broadcaster_config::Limits,
    /// The configuration file's folder: relative paths in a grant (TLS files, secret files)
    /// are relative to it.
    pub base_dir: &'a std::path::Path,
}

/// What every import may use during a call: who is calling, what the call may still spend,
/// what to hide, and when the call must end.
#[derive(Debug)]
pub struct CallContext {
    /// The publisher's name, for logs.
    pub publisher: Arc<str>,
    /// What the call in progress may still spend on host calls and logs.
    pub budget: CallBudget,
    /// Hides the publisher's secrets in everything it writes.
    pub redactor: Arc<Redactor>,
    /// The last lines the guest wrote to stderr (they explain a panic).
    pub last_stderr: LastLines,
    /// When the call in progress must end, its limit and the key that sets it; checked on
    /// every epoch tick.
    pub deadline: Option<(Instant, Duration, &'static str)>,
    /// Epoch ticks at which the call in progress was seen running guest code.
    pub ticks: u32,
    /// How many events the call in progress handles (more than one for `publish-batch`).
    pub events: u32,
    /// When the publisher was stopped, if it was: a call in progress then may run
    /// `after_stop` more at most (a `publish-batch` call's own deadline may be later).
    pub stopped_at: Arc<OnceLock<Instant>>,
    /// How long a call may go on after a stop (`limits.call_timeout`).
    pub after_stop: Duration,
    /// The publisher's guest CPU, which decides its lane.
    pub cpu: Arc<CpuAccount>,
    /// The publisher's log rate limit.
    pub log_rate: Arc<LogRate>,
}

impl CallContext {
    /// How long a host call may take now: the host-call limit, or less when the call's own
    /// deadline (or the end of its time after a stop) is nearer.
    pub fn host_call_timeout(&self) -> Duration {
        let limit = self.budget.limits().host_call_timeout;
        let now = Instant::now();
        let deadline = self.deadline.map(|(deadline, ..)| deadline.saturating_duration_since(now));
        let stop = self.stop_cut().map(|cut| cut.saturating_duration_since(now));
        [deadline, stop].into_iter().flatten().fold(limit, Duration::min)
    }

    /// When a call in progress is cut because the publisher was stopped: `after_stop` after
    /// the stop.
    pub fn stop_cut(&self) -> Option<Instant> {
        self.stopped_at.get().map(|at| *at + self.after_stop)
    }
}

/// A capability's state in one instance, seen together with the call's context: what its
/// imports are implemented on.
#[derive(Debug)]
pub struct CapabilityView<'a, S> {
    /// The capability's own state.
    pub state: &'a mut S,
    /// The call in progress.
    pub call: &'a CallContext,
}

/// One row of [`CAPABILITIES`]: a [`Capability`] seen without its types.
pub trait CapabilityEntry: Send + Sync {
    /// The grant key, if it needs one.
    fn grant(&self) -> Option<&'static str>;
    /// The grant's shape, for messages.
    fn grant_example(&self) -> &'static str;
    /// Whether it provides `interface` (`package/name`, no version).
    fn provides(&self, interface: &str) -> bool;
    /// Whether importing `interface` needs the grant.
    fn needs_grant(&self, interface: &str) -> bool;
    /// The packages it provides interfaces of, with what it provides, for messages.
    fn interfaces(&self) -> &'static [&'static str];
    /// A note for an interface of its packages that it does not provide.
    fn unprovided_note(&self) -> &'static str;
    /// Checks a grant's value; the error names the key.
    fn check_grant(&self, value: &toml::Value) -> Result<(), GrantError>;
    /// Sets it up for one publisher.
    fn configure(&self, grants: &Grants, publisher: &PublisherSetup<'_>) -> Result<Configured, String>;
    /// Adds its imports to the linker.
    fn add_to_linker(&self, linker: &mut Linker<PublisherState>) -> wasmtime::Result<()>;
}

/// Makes a capability's state for a new instance.
type StateMaker = dyn Fn(&CallContext) -> Box<dyn Any + Send> + Send + Sync;

/// A capability as set up for one publisher; makes its state for each new instance.
pub struct Configured {
    make_state: Box<StateMaker>,
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured").finish_non_exhaustive()
    }
}

struct Entry<C>(std::marker::PhantomData<C>);

impl<C: Capability> CapabilityEntry for Entry<C> {
    fn grant(&self) -> Option<&'static str> {
        C::GRANT
    }

    fn grant_example(&self) -> &'static str {
        C::GRANT_EXAMPLE
    }

    fn provides(&self, interface: &str) -> bool {
        C::INTERFACES.iter().any(|pattern| interface_matches(pattern, interface))
    }

    fn needs_grant(&self, interface: &str) -> bool {
        C::GRANTED_INTERFACES.iter().any(|pattern| interface_matches(pattern, interface))
    }

    fn interfaces(&self) -> &'static [&'static str] {
        C::INTERFACES
    }

    fn unprovided_note(&self) -> &'static str {
        C::UNPROVIDED_NOTE
    }

    fn check_grant(&self, value: &toml::Value) -> Result<(), GrantError> {
        C::check_grant(&parse_grant::<C>(value)?)
    }

    fn configure(&self, grants: &Grants, publisher: &PublisherSetup<'_>) -> Result<Configured, String> {
        let grant = match C::GRANT.and_then(|key| grants.get(key)) {
            Some(value) => Some(parse_grant::<C>(value).map_err(|e| e.to_string())?),
            None => None,
        };
        let configured = Arc::new(C::configure(grant, publisher)?);
        Ok(Configured {
            make_state: Box::new(move |call| Box::new(C::instance_state(&configured, call)) as Box<dyn Any + Send>),
        })
    }

    fn add_to_linker(&self, linker: &mut Linker<PublisherState>) -> wasmtime::Result<()> {
        C::add_to_linker(linker)
    }
}

fn parse_grant<C: Capability>(value: &toml::Value) -> Result<C::Grant, GrantError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|err| GrantError {
        key: err.path().to_string().trim_start_matches('.').to_string(),
        message: err.into_inner().to_string().lines().next().unwrap_or_default().to_string(),
    })
}

/// `package/*` matches every interface of the package; anything else matches itself.
fn interface_matches(pattern: &str, interface: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(package) => interface.split_once('/').is_some_and(|(p, _)| p == package),
        None => pattern == interface,
    }
}

/// Every capability the host provides. Adding one: a module implementing [`Capability`],
/// and a line here.
pub static CAPABILITIES: &[&dyn CapabilityEntry] = &[
    &Entry::<wasi::EmptyWasi>(std::marker::PhantomData),
    &Entry::<log::GuestLog>(std::marker::PhantomData),
    &Entry::<redis_stream::RedisStream>(std::marker::PhantomData),
    &Entry::<http::OutboundHttp>(std::marker::PhantomData),
];

/// The capability that provides `interface` (`package/name`, no version).
pub fn providing(interface: &str) -> Option<&'static dyn CapabilityEntry> {
    CAPABILITIES.iter().copied().find(|c| c.provides(interface))
}

/// The capability granted under `key` in `[publishers.<name>.grants]`.
pub fn granted_by(key: &str) -> Option<&'static dyn CapabilityEntry> {
    CAPABILITIES.iter().copied().find(|c| c.grant() == Some(key))
}

/// The grant keys, for messages.
pub fn grant_keys() -> Vec<&'static str> {
    CAPABILITIES.iter().filter_map(|c| c.grant()).collect()
}

/// Checks every grant of a publisher: each key must be a capability's, and its value that
/// capability's grant. The error's key is the path below `grants`.
pub fn check_grants(grants: &Grants) -> Result<(), GrantError> {
    for (key, value) in grants.iter() {
        let Some(capability) = granted_by(key) else {
            return Err(GrantError {
                key: key.clone(),
                message: format!("unknown grant; the grants are {}", grant_keys().join(", ")),
            });
        };
        capability.check_grant(value).map_err(|err| GrantError {
            key: if err.key.is_empty() { key.clone() } else { format!("{key}.{}", err.key) },
            message: err.message,
        })?;
    }
    Ok(())
}

/// Every capability set up for one publisher.
#[derive(Debug)]
pub struct ConfiguredCapabilities(Vec<Configured>);

impl ConfiguredCapabilities {
    /// Sets up every capability for a publisher with these grants.
    pub fn configure(grants: &Grants, publisher: &PublisherSetup<'_>) -> Result<Self, String> {
        CAPABILITIES.iter().map(|c| c.configure(grants, publisher)).collect::<Result<_, _>>().map(Self)
    }

    /// The states of a new instance.
    pub fn instance_states(&self, call: &CallContext) -> CapabilityStates {
        CapabilityStates(self.0.iter().map(|c| (c.make_state)(call)).collect())
    }
}

/// The capability states of one instance.
pub struct CapabilityStates(Vec<Box<dyn Any + Send>>);

impl std::fmt::Debug for CapabilityStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityStates").field("count", &self.0.len()).finish()
    }
}

impl CapabilityStates {
    /// The state of type `S`. Panics when no capability has one: a capability's imports
    /// always find their own state.
    pub fn get_mut<S: 'static>(&mut self) -> &mut S {
        self.0
            .iter_mut()
            .find_map(|state| state.downcast_mut::<S>())
            .unwrap_or_else(|| panic!("no capability state of type {:?}", TypeId::of::<S>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_import_interface_is_provided_by_exactly_one_capability() {
        for interface in [
            "wasi:cli/stdout",
            "wasi:io/streams",
            "broadcaster:backend/log",
            "broadcaster:backend/redis-stream",
            "wasi:http/outgoing-handler",
            "wasi:http/types",
        ] {
            let count = CAPABILITIES.iter().filter(|c| c.provides(interface)).count();
            assert_eq!(count, 1, "{interface}");
        }
        assert!(providing("wasi:http/incoming-handler").is_none());
    }

    #[test]
    fn grants_are_found_by_their_key_and_unknown_ones_are_named() {
        assert!(granted_by("redis").unwrap().needs_grant("broadcaster:backend/redis-stream"));
        assert!(granted_by("http").unwrap().needs_grant("wasi:http/outgoing-handler"));
        assert!(!granted_by("http").unwrap().needs_grant("wasi:http/types"));
        let grants: Grants = toml::from_str("nats = { url = \"x\" }").unwrap();
        let err = check_grants(&grants).unwrap_err();
        assert_eq!(err.key, "nats");
        assert!(err.message.contains("redis, http"), "{err}");
        let grants: Grants = toml::from_str("redis = { streams = [\"a\"], prot = 1 }").unwrap();
        let err = check_grants(&grants).unwrap_err();
        assert!(err.key == "redis.prot" && err.message.contains("unknown field `prot`"), "{err:?}");
    }
}
