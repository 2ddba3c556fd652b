//! A publisher backed by a component: one instance in its own store, created at start-up
//! with `init(options)`, replaced after a trap or a missed deadline. Repeated traps are
//! supervised: the replacement waits longer each time, and meanwhile the publisher reports
//! itself degraded so the relay leaves its events waiting.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::bindings::{self, Publisher as Bindings};
use super::budget::{CallBudget, CallLimits};
use super::capabilities::{CallContext, ConfiguredCapabilities, PublisherSetup};
use super::component::LoadedComponent;
use super::engine::HostEngine;
use super::guest_output::LastLines;
use super::secrets::{self, Redactor};
use super::state::PublisherState;
use crate::config::{PublisherConfig, table_to_json};
use crate::event::{OutboxEvent, Payload};
use crate::outcome::{Health, PublishError};

/// How long past its deadline a call may spend inside the host (awaiting Redis, say) before
/// it is abandoned; guest code itself is stopped at the deadline by the epoch check.
const HOST_GRACE: Duration = Duration::from_millis(500);

/// The longest wait before replacing an instance that keeps trapping.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// A component publisher's settings.
#[derive(Debug)]
pub struct ComponentSettings {
    /// The publisher's name.
    pub name: Arc<str>,
    /// `[publishers.<name>.options]` as a JSON object (secrets substituted).
    pub options_json: String,
    /// Its capabilities, set up for its grants.
    pub capabilities: ConfiguredCapabilities,
    /// Most linear memory, in bytes.
    pub memory_bytes: usize,
    /// Deadline of one call.
    pub call_timeout: Duration,
    /// Fuel per call (when the engine meters fuel).
    pub fuel: Option<u64>,
    /// Host-call and log limits per call.
    pub call_limits: CallLimits,
    /// The publisher's secrets, hidden from everything it writes.
    pub redactor: Arc<Redactor>,
}

/// A component cannot run as its publisher is configured.
#[derive(Debug, thiserror::Error)]
pub enum ComponentSetupError {
    /// It imports a capability the publisher is not granted.
    #[error(
        "{component} imports `{import}`, a capability this publisher is not granted; \
         grant it with {grant}, or use a backend that does not need it"
    )]
    NotGranted {
        /// The component file.
        component: String,
        /// The import.
        import: String,
        /// The configuration that would grant it.
        grant: String,
    },
    /// An option (a secret that cannot be read) or a grant cannot be used.
    #[error("{0}")]
    Options(String),
    /// It did not start (only when starting strictly; otherwise it starts down).
    #[error(transparent)]
    Start(#[from] StartError),
}

/// A backend could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The backend's `init` refused the options.
    #[error("the backend's init rejected its options: {0}")]
    InitRejected(String),
    /// Instantiating or `init` trapped or timed out.
    #[error("the backend failed to start: {0}")]
    Failed(String),
}

/// The call in progress passed its deadline (raised from the epoch callback).
#[derive(Debug, thiserror::Error)]
#[error("the call did not finish within its {0:?} deadline (limits.call_timeout)")]
struct DeadlineExceeded(Duration);

struct LiveInstance {
    store: Store<PublisherState>,
    bindings: Bindings,
}

/// The instance slot and its supervision record.
#[derive(Default)]
struct Slot {
    live: Option<LiveInstance>,
    /// Traps since the last successful call.
    consecutive_traps: u32,
    /// No new instance before this time.
    restart_at: Option<Instant>,
    /// The last trap's cause.
    last_trap: Option<String>,
    /// Instances created so far (1 after start).
    instantiations: u64,
}

/// What a call into the instance came to.
enum CallOutcome<T> {
    Returned(T),
    Trapped(String),
}

/// A publisher backed by a WebAssembly component.
pub struct ComponentPublisher {
    settings: ComponentSettings,
    component: LoadedComponent,
    engine: HostEngine,
    budget: CallBudget,
    slot: tokio::sync::Mutex<Slot>,
}

impl std::fmt::Debug for ComponentPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentPublisher")
            .field("name", &self.settings.name)
            .field("component", &self.component.path)
            .finish_non_exhaustive()
    }
}

impl ComponentPublisher {
    /// The publisher `name` of a configuration, running `component`: checks that its
    /// publisher grants every capability it imports, resolves the secrets in its options,
    /// sets up its capabilities, and starts it (see [`Self::start`]).
    pub async fn from_config(
        engine: &HostEngine,
        component: LoadedComponent,
        name: &str,
        publisher: &PublisherConfig,
        base_dir: &Path,
        strict: bool,
    ) -> Result<Self, ComponentSetupError> {
        if let Some(missing) =
            component.required_grants().into_iter().find(|needed| !publisher.grants.contains(needed.key()))
        {
            return Err(ComponentSetupError::NotGranted {
                component: component.path.display().to_string(),
                import: missing.import.to_string(),
                grant: missing.example(name),
            });
        }
        let mut options = publisher.options.clone();
        let env = |name: &str| std::env::var(name).ok();
        let redactor = secrets::resolve(&mut options, base_dir, &env)
            .map_err(|err| ComponentSetupError::Options(err.to_string()))?;
        let name: Arc<str> = Arc::from(name);
        let setup = PublisherSetup { publisher: &name, limits: &publisher.limits };
        let capabilities =
            ConfiguredCapabilities::configure(&publisher.grants, &setup).map_err(ComponentSetupError::Options)?;
        let settings = ComponentSettings {
            name,
            options_json: table_to_json(&options).to_string(),
            capabilities,
            memory_bytes: usize::try_from(publisher.limits.memory.0).unwrap_or(usize::MAX),
            call_timeout: publisher.limits.call_timeout.0,
            fuel: publisher.limits.fuel,
            call_limits: CallLimits::from(&publisher.limits),
            redactor: Arc::new(redactor),
        };
        Ok(Self::start(engine, component, settings, strict).await?)
    }

    /// Instantiates `component` for this publisher and calls `init` with its options. When
    /// that fails: with `strict`, the error; otherwise the publisher starts down, reports the
    /// cause in its health, and its start is tried again with backoff, like the replacement
    /// of an instance that trapped.
    pub async fn start(
        engine: &HostEngine,
        component: LoadedComponent,
        settings: ComponentSettings,
        strict: bool,
    ) -> Result<Self, StartError> {
        let budget = CallBudget::new(settings.call_limits.clone());
        let publisher = Self {
            settings,
            component,
            engine: engine.clone(),
            budget,
            slot: tokio::sync::Mutex::new(Slot::default()),
        };
        let started = publisher.instantiate().await;
        let mut slot = publisher.slot.lock().await;
        match started {
            Ok(live) => {
                slot.live = Some(live);
                slot.instantiations = 1;
            }
            Err(err) if strict => return Err(err),
            Err(err) => {
                tracing::warn!(
                    publisher = %publisher.settings.name,
                    cause = %err,
                    "the backend did not start; its events wait while its start is retried with backoff"
                );
                publisher.record_trap(&mut slot, err.to_string());
            }
        }
        drop(slot);
        Ok(publisher)
    }

    /// The component file name.
    pub fn component_name(&self) -> String {
        self.component.name()
    }

    /// Whether its instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.engine.is_pooling()
    }

    /// The publisher's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// How many instances have been created (start-up counts one); more means recycling.
    pub async fn instantiations(&self) -> u64 {
        self.slot.lock().await.instantiations
    }

    async fn instantiate(&self) -> Result<LiveInstance, StartError> {
        let redact = |message: &str| self.settings.redactor.redact(message);
        let call = CallContext {
            publisher: self.settings.name.clone(),
            budget: self.budget.clone(),
            redactor: self.settings.redactor.clone(),
            last_stderr: LastLines::default(),
            deadline: None,
        };
        let state = PublisherState::new(call, &self.settings.capabilities, self.settings.memory_bytes);
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        let timeout = self.settings.call_timeout;
        store.epoch_deadline_callback(move |ctx| match ctx.data().call.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(wasmtime::Error::new(DeadlineExceeded(timeout))),
            _ => Ok(UpdateDeadline::Yield(1)),
        });
        store.set_epoch_deadline(1);
        self.begin_call(&mut store);
        let started = tokio::time::timeout(timeout + HOST_GRACE, async {
            let bindings = self.component.pre.instantiate_async(&mut store).await?;
            let init =
                bindings.broadcaster_backend_backend().call_init(&mut store, &self.settings.options_json).await?;
            Ok::<_, wasmtime::Error>((bindings, init))
        })
        .await;
        store.data_mut().call.deadline = None;
        match started {
            Err(_) => Err(StartError::Failed(DeadlineExceeded(timeout).to_string())),
            Ok(Err(err)) => Err(StartError::Failed(redact(&describe_trap(&err)))),
            Ok(Ok((_, Err(message)))) => Err(StartError::InitRejected(redact(&message))),
            Ok(Ok((bindings, Ok(())))) => Ok(LiveInstance { store, bindings }),
        }
    }

    /// Resets the per-call budget, deadline and fuel.
    fn begin_call(&self, store: &mut Store<PublisherState>) {
        self.budget.reset();
        store.data_mut().call.deadline = Some(Instant::now() + self.settings.call_timeout);
        if self.engine.meters_fuel() {
            let _ = store.set_fuel(self.settings.fuel.unwrap_or(u64::MAX));
        }
    }

    /// The live instance, creating one if needed and allowed.
    async fn ensure_live<'a>(&self, slot: &'a mut Slot) -> Result<&'a mut LiveInstance, String> {
        if slot.live.is_none() {
            if let Some(at) = slot.restart_at
                && Instant::now() < at
            {
                return Err(format!(
                    "the backend is restarting after {} consecutive traps (last: {}); next attempt in {:?}",
                    slot.consecutive_traps,
                    slot.last_trap.as_deref().unwrap_or("unknown"),
                    at.saturating_duration_since(Instant::now())
                ));
            }
            match self.instantiate().await {
                Ok(live) => {
                    slot.instantiations += 1;
                    slot.live = Some(live);
                }
                Err(err) => {
                    let cause = err.to_string();
                    self.record_trap(slot, cause.clone());
                    return Err(format!("could not re-create the backend instance: {cause}"));
                }
            }
        }
        Ok(slot.live.as_mut().expect("instance present"))
    }

    /// Drops the instance and schedules its replacement after 100 ms, then 200 ms, 400 ms, …
    /// up to 30 s while the traps keep coming (a successful call resets the count). Meanwhile
    /// the publisher reports itself degraded, so the relay does not hand it events.
    fn record_trap(&self, slot: &mut Slot, cause: String) {
        slot.live = None;
        slot.consecutive_traps += 1;
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << slot.consecutive_traps.saturating_sub(1).min(20))
            .min(MAX_RESTART_DELAY);
        slot.restart_at = Some(Instant::now() + delay);
        slot.last_trap = Some(cause);
    }

    /// Runs one export call with the per-call limits; a trap or an abandoned call replaces
    /// the instance.
    async fn call<T>(
        &self,
        slot: &mut Slot,
        what: &str,
        invoke: impl AsyncFnOnce(&mut LiveInstance) -> wasmtime::Result<T>,
    ) -> Result<CallOutcome<T>, String> {
        let instance = self.ensure_live(slot).await?;
        self.begin_call(&mut instance.store);
        instance.store.data().call.last_stderr.clear();
        let timeout = self.settings.call_timeout;
        let outcome = tokio::time::timeout(timeout + HOST_GRACE, invoke(instance)).await;
        instance.store.data_mut().call.deadline = None;
        let cause = match outcome {
            Ok(Ok(value)) => {
                slot.consecutive_traps = 0;
                return Ok(CallOutcome::Returned(value));
            }
            Ok(Err(trap)) => {
                let mut cause = describe_trap(&trap);
                if let Some(line) = instance.store.data().call.last_stderr.take() {
                    cause.push_str(&format!(" (the backend's last words on stderr: {line})"));
                }
                self.settings.redactor.redact(&cause)
            }
            Err(_) => format!("the {what} call did not return within {timeout:?} (limits.call_timeout)"),
        };
        tracing::warn!(publisher = %self.settings.name, %cause, "backend trapped during {what}; instance recycled");
        self.record_trap(slot, cause.clone());
        Ok(CallOutcome::Trapped(cause))
    }

    /// Calls the backend's `publish` for each event in order, on the guest threads, stopping
    /// at the first transient error or trap (the events after it are `None`: not attempted).
    pub async fn publish_all(self: &Arc<Self>, events: Vec<OutboxEvent>) -> Vec<Option<Result<(), PublishError>>> {
        let this = self.clone();
        let count = events.len();
        let work = async move {
            let mut outcomes = Vec::with_capacity(events.len());
            let mut stopped = false;
            for event in &events {
                if stopped {
                    outcomes.push(None);
                    continue;
                }
                let result = this.publish(event).await;
                stopped = matches!(result, Err(PublishError::Transient(_) | PublishError::Trapped(_)));
                outcomes.push(Some(result));
            }
            outcomes
        };
        match self.engine.on_guest_threads(work).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                let failed = Some(Err(PublishError::Transient(format!("the guest task failed: {err}"))));
                std::iter::once(failed).chain(std::iter::repeat_n(None, count.saturating_sub(1))).collect()
            }
        }
    }

    /// Calls the backend's `health-check` on the guest threads.
    pub async fn check_health(self: &Arc<Self>) -> Health {
        let this = self.clone();
        self.engine
            .on_guest_threads(async move { this.health().await })
            .await
            .unwrap_or_else(|err| Health::down(format!("the guest task failed: {err}")))
    }

    /// Calls the backend's `publish` (on the calling thread; see [`Self::publish_all`]).
    pub async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let wit_event = to_wit(event);
        let mut slot = self.slot.lock().await;
        let outcome = self
            .call(&mut slot, "publish", async |live: &mut LiveInstance| {
                live.bindings.broadcaster_backend_backend().call_publish(&mut live.store, &wit_event).await
            })
            .await
            .map_err(PublishError::Transient)?;
        let redact = |m: String| self.settings.redactor.redact(&m);
        match outcome {
            CallOutcome::Returned(Ok(())) => Ok(()),
            CallOutcome::Returned(Err(bindings::PublishError::Transient(m))) => Err(PublishError::Transient(redact(m))),
            CallOutcome::Returned(Err(bindings::PublishError::Permanent(m))) => Err(PublishError::Permanent(redact(m))),
            CallOutcome::Trapped(cause) => Err(PublishError::Trapped(cause)),
        }
    }

    /// Calls the backend's `health-check`. While the backend is waiting to restart after
    /// repeated traps it is reported degraded without being called.
    pub async fn health(&self) -> Health {
        let component = self.component.name();
        let mut slot = self.slot.lock().await;
        let outcome = self
            .call(&mut slot, "health-check", async |live: &mut LiveInstance| {
                live.bindings.broadcaster_backend_backend().call_health_check(&mut live.store).await
            })
            .await;
        match outcome {
            Err(restarting) => Health::down(format!("{component}: degraded: {restarting}")),
            Ok(CallOutcome::Returned(true)) if slot.instantiations > 1 => {
                Health::up(format!("{component} (instance replaced {} times)", slot.instantiations - 1))
            }
            Ok(CallOutcome::Returned(true)) => Health::up(component),
            Ok(CallOutcome::Returned(false)) => Health::down(format!("{component}: health-check returned false")),
            Ok(CallOutcome::Trapped(cause)) => {
                Health::down(format!("{component}: degraded: health-check trapped: {cause}"))
            }
        }
    }
}

/// A one-line cause for a trap or instantiation error.
fn describe_trap(err: &wasmtime::Error) -> String {
    if let Some(deadline) = err.downcast_ref::<DeadlineExceeded>() {
        return deadline.to_string();
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        parts.push(trap.to_string());
    }
    for cause in err.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or_default().trim_end_matches(':').to_string();
        // wasmtime wraps a guest trap in "error while executing at wasm backtrace:" and the
        // frames; the frames mean nothing to an operator.
        if first.is_empty() || first.starts_with("error while executing at wasm backtrace") || parts.contains(&first) {
            continue;
        }
        parts.push(first);
    }
    parts.join(": ")
}

/// The WIT view of an event; JSON is rendered as `json.dumps` does so backends can splice it.
fn to_wit(event: &OutboxEvent) -> bindings::OutboxEvent {
    fn present(s: &str) -> Option<String> {
        (!s.is_empty()).then(|| s.to_string())
    }
    bindings::OutboxEvent {
        event: bindings::CloudEvent {
            id: event.id.clone(),
            source: event.source.clone(),
            specversion: event.spec_version.clone(),
            type_: event.event_type.clone(),
            datacontenttype: present(&event.data_content_type),
            dataschema: present(&event.data_schema),
            subject: present(&event.subject),
            time: Some(event.time()),
            data: match &event.data {
                Payload::None | Payload::Json(serde_json::Value::Null) => None,
                Payload::Json(value) => Some(bindings::EventData::Json(broadcaster_entry::pyjson::to_string(value))),
                Payload::Text(text) => Some(bindings::EventData::Text(text.clone())),
                Payload::Binary(bytes) => Some(bindings::EventData::Binary(bytes.clone())),
            },
            extensions: event.extensions.clone(),
        },
        retry_count: event.retry_count,
        max_retries: event.max_retries,
        publisher_config: event
            .publisher_config
            .iter()
            .map(|(k, v)| (k.clone(), broadcaster_entry::pyjson::to_string(v)))
            .collect(),
    }
}
