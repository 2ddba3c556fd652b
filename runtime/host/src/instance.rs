//! One publisher's instance: made (and `init`ed) when first needed, within the bound on live
//! instances ([`super::live_instances`]), called with the per-call limits, thrown away after
//! a trap or a missed deadline (or to make room, or after its idle timeout), and made again
//! under supervision: failures in a row (a start that fails, a trap) are a circuit breaker
//! that keeps the publisher paused for longer each time, while its health says why.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::bindings::{OutboxEvent, PublishError, v0_1, v0_2};
use super::capabilities::CallContext;
use super::component::ContractPre;
use super::guest_counters::TrapCause;
use super::guest_output::{LastLines, bounded_text};
use super::live_instances::{LiveTicket, Room};
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

/// A live instance and its store, and its place in the live-instance bound (given back when
/// it is dropped, after the store).
pub(crate) struct LiveInstance {
    pub(super) store: Store<PublisherState>,
    pub(super) bindings: Bindings,
    _ticket: LiveTicket,
}

/// An instance's exports, as its contract version has them.
pub(crate) enum Bindings {
    /// `broadcaster:backend@0.1.0`.
    V0_1(v0_1::Publisher),
    /// `broadcaster:backend@0.2.0`.
    V0_2(v0_2::Publisher),
}

impl Bindings {
    async fn call_init(
        &self,
        store: &mut Store<PublisherState>,
        options: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V0_1(b) => b.broadcaster_backend_backend().call_init(store, options).await,
            Self::V0_2(b) => b.broadcaster_backend_backend().call_init(store, options).await,
        }
    }

    /// `publish(event)`.
    pub(super) async fn call_publish(
        &self,
        store: &mut Store<PublisherState>,
        event: &OutboxEvent,
    ) -> wasmtime::Result<Result<(), PublishError>> {
        match self {
            Self::V0_1(b) => b.broadcaster_backend_backend().call_publish(store, event).await,
            Self::V0_2(b) => b.broadcaster_backend_backend().call_publish(store, event).await,
        }
    }

    /// `publish-batch(events)`: one result per event at most, as the guest returned them (the
    /// whole list is bounded by the store's hostcall fuel as it is lifted). A 0.1.0 instance
    /// has no such export: the caller asks only 0.2.0 ones.
    pub(super) async fn call_publish_batch(
        &self,
        store: &mut Store<PublisherState>,
        events: &[OutboxEvent],
    ) -> wasmtime::Result<Vec<Result<(), PublishError>>> {
        match self {
            Self::V0_1(_) => Err(wasmtime::Error::msg("a 0.1.0 backend has no publish-batch")),
            Self::V0_2(b) => b.broadcaster_backend_backend().call_publish_batch(store, events).await,
        }
    }

    /// `health-check()`.
    pub(super) async fn call_health_check(&self, store: &mut Store<PublisherState>) -> wasmtime::Result<bool> {
        match self {
            Self::V0_1(b) => b.broadcaster_backend_backend().call_health_check(store).await,
            Self::V0_2(b) => b.broadcaster_backend_backend().call_health_check(store).await,
        }
    }
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
    /// call's limits, in the place `ticket` holds in the live-instance bound.
    pub(super) async fn instantiate(&self, ticket: LiveTicket) -> Result<LiveInstance, StartError> {
        let settings = &self.settings;
        let call = CallContext {
            publisher: settings.name.clone(),
            budget: self.budget.clone(),
            redactor: settings.redactor.clone(),
            last_stderr: LastLines::default(),
            deadline: None,
            ticks: 0,
            events: 1,
            stopped_at: self.stopped_at.clone(),
            after_stop: settings.call_timeout,
            cpu: self.cpu.clone(),
            log_rate: self.log_rate.clone(),
        };
        let all_live = self.engine.live_instances().memory_counter();
        let state =
            PublisherState::new(call, &settings.capabilities, settings.memory_bytes, (&self.counters, all_live));
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let call = &mut ctx.data_mut().call;
            call.ticks += 1;
            // A batch call may run as long per event as a single call does before it counts
            // as long.
            call.cpu.tick(call.cpu.counted_ticks(call.ticks, call.events));
            let now = Instant::now();
            match call.deadline {
                Some((deadline, limit, key)) if now >= deadline => {
                    Err(wasmtime::Error::new(DeadlineExceeded(limit, key)))
                }
                // A long `publish-batch` call does not hold a stop up for longer than a call.
                Some(_) if call.stop_cut().is_some_and(|cut| now >= cut) => {
                    Err(wasmtime::Error::new(DeadlineExceeded(call.after_stop, "limits.call_timeout after a stop")))
                }
                // Let the lane run someone else (and move this call to the heavy lane if its
                // publisher just turned heavy).
                _ => Ok(UpdateDeadline::Yield(1)),
            }
        });
        store.set_epoch_deadline(1);
        let timeout = settings.call_timeout;
        self.begin_call(&mut store, (timeout, "limits.call_timeout"), 1);
        let started = tokio::time::timeout(timeout + HOST_GRACE, async {
            let bindings = match &self.component.pre {
                ContractPre::V0_1(pre) => Bindings::V0_1(pre.instantiate_async(&mut store).await?),
                ContractPre::V0_2(pre) => Bindings::V0_2(pre.instantiate_async(&mut store).await?),
            };
            let init = bindings.call_init(&mut store, &settings.options_json).await?;
            Ok::<_, wasmtime::Error>((bindings, init))
        })
        .await;
        store.data_mut().call.deadline = None;
        let redact = |message: &str| settings.redactor.redact(&bounded_text(message));
        match started {
            Err(_) => Err(StartError::Failed(DeadlineExceeded(timeout, "limits.call_timeout").to_string())),
            Ok(Err(err)) => Err(StartError::Failed(redact(&self.describe_trap(&err, &store)))),
            Ok(Ok((_, Err(message)))) => Err(StartError::InitRejected(redact(&message))),
            Ok(Ok((bindings, Ok(())))) => Ok(LiveInstance { store, bindings, _ticket: ticket }),
        }
    }

    /// Starts a call handling `events` events (more than one for `publish-batch`): resets the
    /// budget (the per-call limits times `events`), ticks and fuel (likewise); sets the
    /// deadline.
    pub(super) fn begin_call(
        &self,
        store: &mut Store<PublisherState>,
        (timeout, key): (Duration, &'static str),
        events: usize,
    ) {
        self.budget.reset_for_events(events);
        let call = &mut store.data_mut().call;
        call.deadline = Some((Instant::now() + timeout, timeout, key));
        call.ticks = 0;
        call.events = u32::try_from(events.max(1)).unwrap_or(u32::MAX);
        call.last_stderr.clear();
        store.data_mut().limits.refused_memory = false;
        if self.engine.meters_fuel() {
            let fuel = self.settings.fuel.map_or(u64::MAX, |fuel| fuel.saturating_mul(events.max(1) as u64));
            let _ = store.set_fuel(fuel);
        }
    }

    /// The live instance, making one if there is none and the breaker allows (waiting for
    /// room in the live-instance bound, or, with [`Room::IfFree`], only if there is room
    /// now); otherwise why there is none.
    pub(super) async fn ensure_live<'a>(&self, slot: &'a mut Slot, room: Room) -> Result<&'a mut LiveInstance, String> {
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
            // Boxed: the making of an instance is rare next to the calls, and its futures
            // would otherwise nest into every caller's (past rustc's layout depth limit).
            let live = self.engine.live_instances();
            let Some(ticket) = Box::pin(live.admit(self.key, self.me.clone(), room)).await else {
                return Err("no room in [wasm] live_instances / live_memory now; made when needed".to_string());
            };
            match Box::pin(self.instantiate(ticket)).await {
                Ok(live) => {
                    self.counters.started();
                    slot.instantiations += 1;
                    slot.live = Some(live);
                }
                Err(err) => {
                    self.counters.start_failed();
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
        self.counters.dropped_instance();
        self.counters.opened_breaker();
        slot.failures_in_a_row += 1;
        let pause = FIRST_PAUSE.saturating_mul(1 << slot.failures_in_a_row.saturating_sub(1).min(20)).min(MAX_PAUSE);
        slot.paused_until = Some(Instant::now() + pause);
        slot.last_failure = Some(cause);
    }

    /// Drops the instance if there is one and no call is using it (to make room for another
    /// publisher's, or after its idle timeout): the publisher is idle until its next call
    /// makes one again. Whether one was dropped.
    pub fn drop_idle_instance(&self) -> bool {
        let Ok(mut slot) = self.slot.try_lock() else { return false };
        let Some(live) = slot.live.take() else { return false };
        self.counters.evicted();
        drop(slot);
        drop(live);
        true
    }

    /// Whether it has no instance and nothing to recover from: its last call returned (or it
    /// never had one), so there is nothing to check until a call needs an instance. A
    /// publisher in a call is not idle.
    pub fn is_idle(&self) -> bool {
        self.slot.try_lock().is_ok_and(|slot| slot.live.is_none() && slot.failures_in_a_row == 0)
    }

    /// Marks its instance used (a publish call returned): the last to be dropped for room.
    pub(super) fn mark_used(&self) {
        self.engine.live_instances().used(self.key);
    }

    /// Runs one export call within `timeout`; a trap or an abandoned call replaces the
    /// instance.
    pub(super) async fn call<T>(
        &self,
        slot: &mut Slot,
        what: &str,
        limit: (Duration, &'static str),
        invoke: impl AsyncFnOnce(&mut LiveInstance) -> wasmtime::Result<T>,
    ) -> Result<CallOutcome<T>, String> {
        self.call_for_events(slot, what, limit, 1, invoke).await
    }

    /// [`Self::call`] for a call that handles `events` events (its budget scales with them).
    pub(super) async fn call_for_events<T>(
        &self,
        slot: &mut Slot,
        what: &str,
        (timeout, key): (Duration, &'static str),
        events: usize,
        invoke: impl AsyncFnOnce(&mut LiveInstance) -> wasmtime::Result<T>,
    ) -> Result<CallOutcome<T>, String> {
        let instance = self.ensure_live(slot, Room::Make).await?;
        self.begin_call(&mut instance.store, (timeout, key), events);
        let stopped_at = self.stopped_at.clone();
        let after_stop = self.settings.call_timeout;
        // Time in the host (a WASI sleep, say) is not seen by the epoch check: the call is
        // abandoned at its deadline, or `call_timeout` after a stop, plus the grace.
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(timeout + HOST_GRACE, invoke(instance)) => outcome.ok(),
            () = cut_after_stop(&stopped_at, after_stop + HOST_GRACE), if timeout > after_stop => None,
        };
        instance.store.data_mut().call.deadline = None;
        let cause = match outcome {
            Some(Ok(value)) => {
                slot.failures_in_a_row = 0;
                // Trust is earned by publishing: a health check says nothing of a batch's cost.
                if what != "health-check" {
                    self.cpu.call_ended(true);
                }
                return Ok(CallOutcome::Returned(value));
            }
            Some(Err(trap)) => {
                self.counters.trapped(trap_cause(&trap, instance.store.data().limits.refused_memory));
                self.settings.redactor.redact(&self.describe_trap(&trap, &instance.store))
            }
            None if self.stopping.load(Ordering::Relaxed) && timeout > after_stop => {
                self.counters.trapped(TrapCause::Deadline);
                format!("the {what} call was cut {after_stop:?} after the publisher was stopped")
            }
            None => {
                self.counters.trapped(TrapCause::Deadline);
                format!("the {what} call did not return within {timeout:?} ({key})")
            }
        };
        self.cpu.call_ended(false);
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

/// Why a call trapped, for `/metrics`: its deadline, fuel, a refused memory growth, or
/// anything else.
fn trap_cause(err: &wasmtime::Error, refused_memory: bool) -> TrapCause {
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        TrapCause::Deadline
    } else if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::OutOfFuel) {
        TrapCause::Fuel
    } else if refused_memory {
        TrapCause::Memory
    } else {
        TrapCause::Trap
    }
}

/// Returns `after` after the publisher is stopped (checking every 50 ms whether it is).
async fn cut_after_stop(stopped_at: &OnceLock<Instant>, after: Duration) {
    loop {
        if let Some(at) = stopped_at.get() {
            tokio::time::sleep_until((*at + after).into()).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
