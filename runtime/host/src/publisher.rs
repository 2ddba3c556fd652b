//! A publisher backed by a component: set up from its configuration, its instance made
//! (and `init`ed) in the background at start-up while the live-instance bound has room, or
//! when first needed, its calls run on the guest lanes ([`super::lanes`]) one at a time. The
//! instance's lifecycle and supervision live in [`super::instance`], the bound in
//! [`super::live_instances`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::bindings;
use super::budget::{CallBudget, CallLimits};
use super::capabilities::{ConfiguredCapabilities, PublisherSetup};
use super::component::LoadedComponent;
use super::engine::HostEngine;
use super::guest_counters::GuestCounters;
use super::guest_output::{LogRate, bounded_text};
use super::instance::{CallOutcome, LiveInstance, SharedSlot, Slot};
use super::lanes::CpuAccount;
use super::live_instances::Room;
use super::secrets::{self, Redactor};
use super::wit_event::to_wit;
use broadcaster_config::{PublisherConfig, table_to_json};
use broadcaster_core::event::OutboxEvent;
use broadcaster_core::outcome::{Health, PublishError};

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
    /// Longest deadline of one `publish-batch` call.
    pub batch_timeout: Duration,
    /// Deadline of one `health-check` call.
    pub health_timeout: Duration,
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

/// A publisher backed by a WebAssembly component.
pub struct ComponentPublisher {
    pub(super) settings: ComponentSettings,
    pub(super) component: LoadedComponent,
    pub(super) engine: HostEngine,
    pub(super) budget: CallBudget,
    /// How much guest CPU it uses, and so which lane its calls run in.
    pub(super) cpu: Arc<CpuAccount>,
    /// How many log lines and bytes per second it may write.
    pub(super) log_rate: Arc<LogRate>,
    /// Set when the relay shuts down: no new calls, and a call cut by its deadline does not
    /// count against its event.
    pub(super) stopping: AtomicBool,
    /// When it was stopped: calls in progress then get `call_timeout` more at most.
    pub(super) stopped_at: Arc<OnceLock<Instant>>,
    pub(super) slot: SharedSlot,
    /// What its supervision has seen, for `/metrics`.
    pub(super) counters: Arc<GuestCounters>,
    /// Its key in the live-instance bound.
    pub(super) key: u64,
    /// Itself, for the live-instance bound to drop its instance when it needs the room.
    pub(super) me: Weak<Self>,
    /// How long its latest batch took from the relay's side (waiting for a lane, the call,
    /// its host calls), in microseconds; `u64::MAX` before its first and after one that did
    /// not publish whole. See [`Self::answers_fast`].
    pub(super) last_batch_micros: AtomicU64,
}

/// A component whose latest batch was published whole within this answers fast
/// ([`ComponentPublisher::answers_fast`]).
pub const FAST_BATCH: Duration = Duration::from_millis(100);

/// Keys for the live-instance bound, one per publisher ever started.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

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
    ) -> Result<Arc<Self>, ComponentSetupError> {
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
        let setup = PublisherSetup { publisher: &name, limits: &publisher.limits, base_dir };
        let capabilities =
            ConfiguredCapabilities::configure(&publisher.grants, &setup).map_err(ComponentSetupError::Options)?;
        let settings = ComponentSettings {
            name,
            options_json: table_to_json(&options).to_string(),
            capabilities,
            memory_bytes: usize::try_from(publisher.limits.memory.0).unwrap_or(usize::MAX),
            call_timeout: publisher.limits.call_timeout.0,
            batch_timeout: publisher.limits.batch_timeout.0.max(publisher.limits.call_timeout.0),
            health_timeout: publisher.limits.health_timeout.0.min(publisher.limits.call_timeout.0),
            fuel: publisher.limits.fuel,
            call_limits: CallLimits::from(&publisher.limits),
            redactor: Arc::new(redactor),
        };
        let log_rate = Arc::new(LogRate::new(publisher.limits.log_rate, publisher.limits.log_rate_bytes.0));
        Ok(Self::start(engine, component, settings, log_rate, strict).await?)
    }

    /// Starts a publisher running `component`.
    ///
    /// With `strict`, its instance is made and `init`ed now (making room in the live-instance
    /// bound if need be), and an error is returned when that fails. Otherwise this returns at
    /// once and, if the bound has room, the instance is made in the background (with no room,
    /// the publisher is idle until a call needs an instance): a publisher whose start fails
    /// (an `init` error, a trap, its deadline) is *down*, says why in its health, keeps its
    /// events waiting, and its start is tried again with backoff, while every other publisher
    /// runs.
    pub async fn start(
        engine: &HostEngine,
        component: LoadedComponent,
        settings: ComponentSettings,
        log_rate: Arc<LogRate>,
        strict: bool,
    ) -> Result<Arc<Self>, StartError> {
        let budget = CallBudget::new(settings.call_limits.clone());
        let publisher = Arc::new_cyclic(|me| Self {
            settings,
            component,
            engine: engine.clone(),
            budget,
            cpu: Arc::default(),
            log_rate,
            stopping: AtomicBool::new(false),
            stopped_at: Arc::default(),
            slot: SharedSlot::default(),
            counters: Arc::default(),
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            me: me.clone(),
            last_batch_micros: AtomicU64::new(u64::MAX),
        });
        if strict {
            let live = engine.live_instances();
            let ticket = live.admit(publisher.key, publisher.me.clone(), Room::Make).await;
            let live = publisher.instantiate(ticket.expect("Room::Make always admits")).await?;
            let mut slot = publisher.slot.lock().await;
            slot.live = Some(live);
            slot.instantiations = 1;
            publisher.counters.started();
        } else if engine.live_instances().has_room() {
            // Take the slot before returning, so that the first call waits for the start
            // rather than starting another instance.
            let mut slot = publisher.slot.clone().lock_owned().await;
            let this = publisher.clone();
            tokio::spawn(async move {
                let (engine, account) = (this.engine.clone(), this.cpu.clone());
                let start = async move {
                    let _ = this.ensure_live(&mut slot, Room::IfFree).await;
                };
                let _ = engine.run_guest(account, start).await;
            });
        }
        Ok(publisher)
    }

    /// Waits until its start in the background (if it has one) is over, made or not.
    pub async fn wait_started(&self) {
        drop(self.slot.lock().await);
    }

    /// Makes its instance now if it has none, as its next event would (making room in the
    /// live-instance bound if need be); why not, if it could not.
    pub async fn make_instance(self: &Arc<Self>) -> Result<(), String> {
        let this = self.clone();
        let work = async move {
            let mut slot = this.slot.lock().await;
            this.ensure_live(&mut slot, Room::Make).await.map(|_| ())
        };
        self.engine.run_guest(self.cpu.clone(), work).await.map_err(|err| err.to_string())?
    }

    /// The component file name.
    pub fn component_name(&self) -> String {
        self.component.name()
    }

    /// The contract version its component was built against.
    pub fn version(&self) -> super::component::ContractVersion {
        self.component.version
    }

    /// Whether its instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.engine.is_pooling()
    }

    /// The publisher's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// How many instances have been made so far; more than one means recycling.
    pub async fn instantiations(&self) -> u64 {
        self.slot.lock().await.instantiations
    }

    /// What its supervision has seen: traps by cause, starts, breaker openings, memory.
    pub fn counters(&self) -> &GuestCounters {
        &self.counters
    }

    /// Guest CPU seen so far, in epoch ticks (about 10 ms each).
    pub fn cpu_ticks(&self) -> u64 {
        self.cpu.total_ticks()
    }

    /// The longest a call into it can take once it is stopped, host time included: a
    /// `publish-batch` call may run up to `limits.batch_timeout`, but a stop cuts it
    /// `call_timeout` later at most.
    pub fn longest_call(&self) -> Duration {
        self.settings.call_timeout + super::instance::HOST_GRACE
    }

    /// Stops taking calls (the relay is shutting down): a batch in progress stops before its
    /// next event (a 0.1.0 backend's), and a call in progress that fails from now on (it is cut
    /// at its deadline, or `call_timeout` after the stop, at the latest) did not publish its
    /// events, which go back to waiting without spending a retry.
    pub fn stop(&self) {
        self.stopped_at.get_or_init(Instant::now);
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Publishes a batch on the guest lanes: a 0.2.0 backend in one `publish-batch` call (see
    /// [`Self::publish_batch`]), a 0.1.0 one by calling its `publish` for each event in order.
    /// Either way the batch stops at the first transient error or trap, or when the publisher
    /// is stopped: the events after that are `None` (not attempted; so is an event whose call
    /// trapped after a stop).
    pub async fn publish_all(self: &Arc<Self>, events: Vec<OutboxEvent>) -> Vec<Option<Result<(), PublishError>>> {
        let this = self.clone();
        let count = events.len();
        let work = async move {
            if this.component.version.has_batches() && !events.is_empty() {
                return this.publish_batch(&events).await;
            }
            let mut outcomes = Vec::with_capacity(events.len());
            let mut halted = false;
            for event in &events {
                if halted || this.stopping.load(Ordering::Relaxed) {
                    outcomes.push(None);
                    continue;
                }
                let result = this.publish(event).await;
                halted = matches!(result, Err(PublishError::Transient(_) | PublishError::Trapped(_)));
                let cut = matches!(result, Err(PublishError::Trapped(_))) && this.stopping.load(Ordering::Relaxed);
                outcomes.push(if cut { None } else { Some(result) });
            }
            outcomes
        };
        let started = Instant::now();
        let outcomes = match self.engine.run_guest(self.cpu.clone(), Box::pin(work)).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                let failed = Some(Err(PublishError::Transient(format!("the guest task failed: {err}"))));
                std::iter::once(failed).chain(std::iter::repeat_n(None, count.saturating_sub(1))).collect()
            }
        };
        let whole = outcomes.iter().all(|o| matches!(o, Some(Ok(()) | Err(PublishError::Permanent(_)))));
        let took = if whole { u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX) } else { u64::MAX };
        self.last_batch_micros.store(took, Ordering::Relaxed);
        outcomes
    }

    /// Whether its latest batch was published whole (every event published or refused for
    /// good) within [`FAST_BATCH`], lanes' queue included. The relay then holds its next
    /// batches in a database transaction while they publish, and claims one ahead, as it does
    /// for the native backend; one that is slow, fails, or has not published yet gets leases
    /// and one batch at a time, so a tenant that turns slow holds no transaction longer than
    /// one call.
    pub fn answers_fast(&self) -> bool {
        self.last_batch_micros.load(Ordering::Relaxed) <= u64::try_from(FAST_BATCH.as_micros()).unwrap_or(u64::MAX)
    }

    /// Publishes one event with the backend's `publish` (whatever its version), on the guest
    /// lanes: for events sent one at a time (`broadcaster send`).
    pub async fn publish_one(self: &Arc<Self>, event: OutboxEvent) -> Result<(), PublishError> {
        let this = self.clone();
        self.engine
            // Boxed here and below: what runs on the lanes is deep (admission, instantiation,
            // the call), and would otherwise nest into every caller's future.
            .run_guest(self.cpu.clone(), Box::pin(async move { this.publish(&event).await }))
            .await
            .unwrap_or_else(|err| Err(PublishError::Transient(format!("the guest task failed: {err}"))))
    }

    /// Calls the backend's `health-check` on the guest lanes.
    pub async fn check_health(self: &Arc<Self>) -> Health {
        let this = self.clone();
        self.engine
            .run_guest(self.cpu.clone(), Box::pin(async move { this.health().await }))
            .await
            .unwrap_or_else(|err| Health::down(format!("the guest task failed: {err}")))
    }

    /// Calls the backend's `publish` (on the calling thread; see [`Self::publish_all`]).
    pub async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let wit_event = to_wit(event);
        let mut slot = self.slot.lock().await;
        let limit = (self.settings.call_timeout, "limits.call_timeout");
        let outcome = self
            .call(&mut slot, "publish", limit, async |live: &mut LiveInstance| {
                live.bindings.call_publish(&mut live.store, &wit_event).await
            })
            .await
            .map_err(PublishError::Transient)?;
        match outcome {
            CallOutcome::Returned(result) => {
                drop(slot);
                self.mark_used();
                self.said(result)
            }
            CallOutcome::Trapped(cause) => Err(PublishError::Trapped(cause)),
        }
    }

    /// What the backend returned for one event, its message bounded and redacted before it
    /// is kept, logged or stored.
    pub(super) fn said(&self, result: Result<(), bindings::PublishError>) -> Result<(), PublishError> {
        let said = |m: String| self.settings.redactor.redact(&bounded_text(&m));
        match result {
            Ok(()) => Ok(()),
            Err(bindings::PublishError::Transient(m)) => Err(PublishError::Transient(said(m))),
            Err(bindings::PublishError::Permanent(m)) => Err(PublishError::Permanent(said(m))),
        }
    }

    /// Its health when it is idle (no instance, last call returned; see [`Self::is_idle`]):
    /// healthy as far as anyone knows, not checked. `None` when it is not idle.
    pub fn idle_health(&self) -> Option<Health> {
        self.is_idle().then(|| Health::idle(self.idle_detail()))
    }

    /// What its health says while it is idle.
    pub fn idle_detail(&self) -> String {
        format!("{}: idle (no instance; made when an event needs it)", self.component.name())
    }

    /// Calls the backend's `health-check`, within `limits.health_timeout`, making its
    /// instance if it has none. While the backend is paused after failures (a start that
    /// failed, traps) it is reported down without being called.
    pub async fn health(&self) -> Health {
        let component = self.component.name();
        let mut slot = self.slot.lock().await;
        let limit = (self.settings.health_timeout, "limits.health_timeout");
        let outcome = self
            .call(&mut slot, "health-check", limit, async |live: &mut LiveInstance| {
                live.bindings.call_health_check(&mut live.store).await
            })
            .await;
        health_of(&component, &slot, outcome)
    }
}

/// The health a `health-check` call (or the reason there was none) comes to.
fn health_of(component: &str, slot: &Slot, outcome: Result<CallOutcome<bool>, String>) -> Health {
    match outcome {
        Err(why) if slot.instantiations == 0 => Health::down(format!("{component}: not started: {why}")),
        Err(why) => Health::down(format!("{component}: degraded: {why}")),
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
