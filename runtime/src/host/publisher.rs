//! A publisher backed by a component: one instance in its own store, created at start-up
//! with `init(options)`, recycled after a trap or a missed deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::bindings::{self, Publisher as Bindings};
use super::component::LoadedComponent;
use super::engine::HostEngine;
use super::redis_capability::RedisCapability;
use super::state::PublisherState;
use crate::event::{OutboxEvent, Payload};
use crate::publisher::{Health, PublishError};

/// How long past its deadline a call may spend inside the host (awaiting Redis, say) before
/// it is abandoned; guest code itself is stopped at the deadline by the epoch check.
const HOST_GRACE: Duration = Duration::from_millis(500);

/// A component publisher's settings.
#[derive(Debug, Clone)]
pub struct ComponentSettings {
    /// The publisher's name.
    pub name: Arc<str>,
    /// `[publishers.<name>.options]` as a JSON object.
    pub options_json: String,
    /// The `redis` grant, bound to a client.
    pub redis: Option<RedisCapability>,
    /// Most linear memory, in bytes.
    pub memory_bytes: usize,
    /// Deadline of one call.
    pub call_timeout: Duration,
}

/// A publisher could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The backend's `init` refused the options.
    #[error("publisher `{publisher}`: the backend's init rejected its options: {message}")]
    InitRejected {
        /// The publisher.
        publisher: String,
        /// The backend's message.
        message: String,
    },
    /// Instantiating or `init` trapped or timed out.
    #[error("publisher `{publisher}`: the backend failed to start: {message}")]
    Failed {
        /// The publisher.
        publisher: String,
        /// What happened.
        message: String,
    },
}

/// The call in progress passed its deadline (raised from the epoch callback).
#[derive(Debug, thiserror::Error)]
#[error("the call did not finish within its {0:?} deadline")]
struct DeadlineExceeded(Duration);

struct LiveInstance {
    store: Store<PublisherState>,
    bindings: Bindings,
}

/// A publisher backed by a WebAssembly component.
pub struct ComponentPublisher {
    settings: ComponentSettings,
    component: LoadedComponent,
    engine: wasmtime::Engine,
    live: tokio::sync::Mutex<Option<LiveInstance>>,
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
    /// Instantiates `component` for this publisher and calls `init` with its options.
    pub async fn start(
        engine: &HostEngine,
        component: LoadedComponent,
        settings: ComponentSettings,
    ) -> Result<Self, StartError> {
        let publisher = Self {
            settings,
            component,
            engine: engine.engine().clone(),
            live: tokio::sync::Mutex::new(None),
        };
        let live = publisher.instantiate().await?;
        *publisher.live.lock().await = Some(live);
        Ok(publisher)
    }

    /// The component file name.
    pub fn component_name(&self) -> String {
        self.component.name()
    }

    /// The publisher's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    async fn instantiate(&self) -> Result<LiveInstance, StartError> {
        let name = self.settings.name.to_string();
        let state = PublisherState::new(
            self.settings.name.clone(),
            self.settings.redis.clone(),
            self.settings.memory_bytes,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let timeout = self.settings.call_timeout;
        store.epoch_deadline_callback(move |ctx| match ctx.data().deadline {
            Some(deadline) if Instant::now() >= deadline => Err(wasmtime::Error::new(DeadlineExceeded(timeout))),
            _ => Ok(UpdateDeadline::Yield(1)),
        });
        store.set_epoch_deadline(1);
        store.data_mut().deadline = Some(Instant::now() + timeout);
        let started = tokio::time::timeout(timeout + HOST_GRACE, async {
            let bindings = self.component.pre.instantiate_async(&mut store).await?;
            let init = bindings
                .broadcaster_backend_backend()
                .call_init(&mut store, &self.settings.options_json)
                .await?;
            Ok::<_, wasmtime::Error>((bindings, init))
        })
        .await;
        store.data_mut().deadline = None;
        match started {
            Err(_) => Err(StartError::Failed {
                publisher: name,
                message: DeadlineExceeded(timeout).to_string(),
            }),
            Ok(Err(err)) => Err(StartError::Failed {
                publisher: name,
                message: describe_trap(&err),
            }),
            Ok(Ok((_, Err(message)))) => Err(StartError::InitRejected {
                publisher: name,
                message,
            }),
            Ok(Ok((bindings, Ok(())))) => Ok(LiveInstance { store, bindings }),
        }
    }

    /// Calls the backend's `publish`.
    pub async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let wit_event = to_wit(event);
        let mut live = self.live.lock().await;
        if live.is_none() {
            let fresh = self
                .instantiate()
                .await
                .map_err(|err| PublishError::Transient(format!("could not re-create the backend instance: {err}")))?;
            *live = Some(fresh);
        }
        let instance = live.as_mut().expect("instance present");
        let timeout = self.settings.call_timeout;
        instance.store.data_mut().deadline = Some(Instant::now() + timeout);
        let outcome = tokio::time::timeout(
            timeout + HOST_GRACE,
            instance
                .bindings
                .broadcaster_backend_backend()
                .call_publish(&mut instance.store, &wit_event),
        )
        .await;
        instance.store.data_mut().deadline = None;
        match outcome {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(bindings::PublishError::Transient(m)))) => Err(PublishError::Transient(m)),
            Ok(Ok(Err(bindings::PublishError::Permanent(m)))) => Err(PublishError::Permanent(m)),
            Ok(Err(trap)) => {
                *live = None;
                let cause = describe_trap(&trap);
                tracing::warn!(publisher = %self.settings.name, event_id = %event.id, %cause, "backend trapped; instance recycled");
                Err(PublishError::Transient(format!(
                    "the backend trapped: {cause} (instance recycled)"
                )))
            }
            Err(_) => {
                *live = None;
                tracing::warn!(publisher = %self.settings.name, event_id = %event.id, "backend call abandoned after its deadline; instance recycled");
                Err(PublishError::Transient(format!(
                    "the backend did not return within {timeout:?} (instance recycled)"
                )))
            }
        }
    }

    /// Calls the backend's `health-check`.
    pub async fn health(&self) -> Health {
        let mut live = self.live.lock().await;
        if live.is_none() {
            match self.instantiate().await {
                Ok(fresh) => *live = Some(fresh),
                Err(err) => return Health::down(err.to_string()),
            }
        }
        let instance = live.as_mut().expect("instance present");
        let timeout = self.settings.call_timeout;
        instance.store.data_mut().deadline = Some(Instant::now() + timeout);
        let outcome = tokio::time::timeout(
            timeout + HOST_GRACE,
            instance
                .bindings
                .broadcaster_backend_backend()
                .call_health_check(&mut instance.store),
        )
        .await;
        instance.store.data_mut().deadline = None;
        let component = self.component.name();
        match outcome {
            Ok(Ok(true)) => Health::up(component),
            Ok(Ok(false)) => Health::down(format!("{component}: health-check returned false")),
            Ok(Err(trap)) => {
                *live = None;
                Health::down(format!("{component}: health-check trapped: {}", describe_trap(&trap)))
            }
            Err(_) => {
                *live = None;
                Health::down(format!("{component}: health-check did not return within {timeout:?}"))
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
        let first = text.lines().next().unwrap_or_default().to_string();
        if !parts.contains(&first) && !first.is_empty() {
            parts.push(first);
        }
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
