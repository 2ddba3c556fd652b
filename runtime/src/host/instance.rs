//! One publisher's instance: made (and `init`ed) when first needed, called with the per-call
//! limits, thrown away after a trap or a missed deadline, and made again under supervision:
//! failures in a row (a start that fails, a trap) are a circuit breaker that keeps the
//! publisher paused for longer each time, while its health says why.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::bindings::Publisher as Bindings;
use super::capabilities::CallContext;
use super::guest_output::{LastLines, bounded_text};
use super::publisher::{ComponentPublisher, StartError};
use super::state::PublisherState;

/// How long past its deadline a call may spend inside the host (awaiting Redis, say) before
/// it is abandoned; guest code itself is stopped at the deadline by the epoch check.
pub const HOST_GRACE: Duration = Duration::from_millis(500);

/// The first pause after a failure; it doubles with every failure in a row.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause of a publisher that keeps failing.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The call in progress passed its deadline (raised from the epoch callback).
#[derive(Debug, thiserror::Error)]
#[error("the call did not finish within its {0:?} deadline ({1})")]
pub struct DeadlineExceeded(pub Duration, pub &'static str);

/// A live instance and its store.
pub(crate) struct LiveInstance {
    pub(super) store: Store<PublisherState>,
    pub(super) bindings: Bindings,
}

/// A publisher's instance, if it has one, and its supervision record.
#[derive(Default)]
pub(crate) struct Slot {
    pub(super) live: Option<LiveInstance>,
    /// Failures (traps, failed starts) since the last call that returned.
    pub(super) failures_in_a_row: u32,
    /// No new instance before this time (the breaker is open).
    pub(super) paused_until: Option<Instant>,
    /// The last failure, as the operator reads it.
    pub(super) last_failure: Option<String>,
    /// Instances made so far.
    pub(super) instantiations: u64,
}

/// What a call into the instance came to.
pub(crate) enum CallOutcome<T> {
    /// The export returned.
    Returned(T),
    /// It trapped or missed its deadline; the instance is gone. The cause, bounded.
    Trapped(String),
}

impl ComponentPublisher {
    /// Makes an instance in a fresh store and calls its `init` with the options, within one
    /// call's limits.
    pub(super) async fn instantiate(&self) -> Result<LiveInstance, StartError> {
        let settings = &self.settings;
        let call = CallContext {
            publisher: settings.name.clone(),
            budget: self.budget.clone(),
            redactor: settings.redactor.clone(),
            last_stderr: LastLines::default(),
            deadline: None,
            ticks: 0,
            cpu: self.cpu.clone(),
            log_rate: self.log_rate.clone(),
        };
        let state = PublisherState::new(call, &settings.capabilities, settings.memory_bytes);
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let call = &mut ctx.data_mut().call;
            call.ticks += 1;
            call.cpu.tick(call.ticks);
            match call.deadline {
                Some((deadline, limit, key)) if Instant::now() >= deadline => {
                    Err(wasmtime::Error::new(DeadlineExceeded(limit, key)))
                }
                // Let the lane run someone else (and move this call to the heavy lane if its
                // publisher just turned heavy).
                _ => Ok(UpdateDeadline::Yield(1)),
            }
        });
        store.set_epoch_deadline(1);
        let timeout = settings.call_timeout;
        self.begin_call(&mut store, timeout, "limits.call_timeout");
        let started = tokio::time::timeout(timeout + HOST_GRACE, async {
            let bindings = self.component.pre.instantiate_async(&mut store).await?;
            let init = bindings.broadcaster_backend_backend().call_init(&mut store, &settings.options_json).await?;
            Ok::<_, wasmtime::Error>((bindings, init))
        })
        .await;
        store.data_mut().call.deadline = None;
        let redact = |message: &str| settings.redactor.redact(&bounded_text(message));
        match started {
            Err(_) => Err(StartError::Failed(DeadlineExceeded(timeout, "limits.call_timeout").to_string())),
            Ok(Err(err)) => Err(StartError::Failed(redact(&self.describe_trap(&err, &store)))),
            Ok(Ok((_, Err(message)))) => Err(StartError::InitRejected(redact(&message))),
            Ok(Ok((bindings, Ok(())))) => Ok(LiveInstance { store, bindings }),
        }
    }

    /// Starts a call: resets the per-call budget, ticks and fuel; sets the deadline.
    pub(super) fn begin_call(&self, store: &mut Store<PublisherState>, timeout: Duration, key: &'static str) {
        self.budget.reset();
        let call = &mut store.data_mut().call;
        call.deadline = Some((Instant::now() + timeout, timeout, key));
        call.ticks = 0;
        call.last_stderr.clear();
        if self.engine.meters_fuel() {
            let _ = store.set_fuel(self.settings.fuel.unwrap_or(u64::MAX));
        }
    }

    /// The live instance, making one if there is none and the breaker allows; otherwise why
    /// there is none.
    pub(super) async fn ensure_live<'a>(&self, slot: &'a mut Slot) -> Result<&'a mut LiveInstance, String> {
        if slot.live.is_none() {
            if let Some(at) = slot.paused_until
                && Instant::now() < at
            {
                return Err(format!(
                    "paused after {} failure(s) in a row, next attempt in {:.1}s; last: {}",
                    slot.failures_in_a_row,
                    at.saturating_duration_since(Instant::now()).as_secs_f64(),
                    slot.last_failure.as_deref().unwrap_or("unknown")
                ));
            }
            match self.instantiate().await {
                Ok(live) => {
                    slot.instantiations += 1;
                    slot.live = Some(live);
                }
                Err(err) => {
                    let cause = err.to_string();
                    if slot.instantiations == 0 {
                        tracing::warn!(
                            publisher = %self.settings.name,
                            %cause,
                            "the backend did not start; its events wait while its start is retried with backoff"
                        );
                    }
                    self.record_failure(slot, cause.clone());
                    return Err(cause);
                }
            }
        }
        Ok(slot.live.as_mut().expect("instance present"))
    }

    /// Drops the instance and opens the breaker: no new instance for 100 ms, then 200 ms,
    /// 400 ms, … up to [`MAX_PAUSE`] while the failures keep coming (a call that returns
    /// closes it). Meanwhile the publisher reports itself degraded, so the relay leaves its
    /// events waiting.
    pub(super) fn record_failure(&self, slot: &mut Slot, cause: String) {
        slot.live = None;
        slot.failures_in_a_row += 1;
        let pause = FIRST_PAUSE.saturating_mul(1 << slot.failures_in_a_row.saturating_sub(1).min(20)).min(MAX_PAUSE);
        slot.paused_until = Some(Instant::now() + pause);
        slot.last_failure = Some(cause);
    }

    /// Runs one export call within `timeout`; a trap or an abandoned call replaces the
    /// instance.
    pub(super) async fn call<T>(
        &self,
        slot: &mut Slot,
        what: &str,
        (timeout, key): (Duration, &'static str),
        invoke: impl AsyncFnOnce(&mut LiveInstance) -> wasmtime::Result<T>,
    ) -> Result<CallOutcome<T>, String> {
        let instance = self.ensure_live(slot).await?;
        self.begin_call(&mut instance.store, timeout, key);
        let outcome = tokio::time::timeout(timeout + HOST_GRACE, invoke(instance)).await;
        instance.store.data_mut().call.deadline = None;
        let cause = match outcome {
            Ok(Ok(value)) => {
                slot.failures_in_a_row = 0;
                return Ok(CallOutcome::Returned(value));
            }
            Ok(Err(trap)) => self.settings.redactor.redact(&self.describe_trap(&trap, &instance.store)),
            Err(_) => format!("the {what} call did not return within {timeout:?} ({key})"),
        };
        if !self.stopping.load(Ordering::Relaxed) {
            tracing::warn!(publisher = %self.settings.name, %cause, "backend trapped during {what}; instance recycled");
        }
        self.record_failure(slot, format!("{what} trapped: {cause}"));
        Ok(CallOutcome::Trapped(cause))
    }

    /// A one-line, bounded cause for a trap or instantiation error, with the backend's last
    /// stderr lines (a panic's message) when it wrote any.
    fn describe_trap(&self, err: &wasmtime::Error, store: &Store<PublisherState>) -> String {
        let mut cause = describe_error(err);
        if let Some(lines) = store.data().call.last_stderr.take() {
            cause.push_str(&format!(" (the backend's last words on stderr: {lines})"));
        }
        bounded_text(&cause).into_owned()
    }
}

/// The causes of a wasmtime error, joined, without the guest's backtrace frames.
fn describe_error(err: &wasmtime::Error) -> String {
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

/// Shared by a publisher and the tasks it starts.
pub(crate) type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;
