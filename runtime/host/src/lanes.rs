//! Where guest code runs, and how the CPU is shared between tenants.
//!
//! Guest code never runs on the relay's own threads. It runs in one of two *lanes*, each a
//! Tokio runtime with one thread fewer than the machine has cores (at least one):
//!
//! - the **light** lane, at normal priority, where every publisher starts;
//! - the **heavy** lane, whose threads run at the lowest priority (nice 19).
//!
//! Guest code yields to its lane at every epoch tick ([`super::engine::EPOCH_TICK`]). Each
//! publisher's [`CpuAccount`] keeps what its guest code costs: the time its work spends being
//! polled on a lane thread (running guest code and the host side of its calls, not waiting for
//! Redis), and the ticks its current call has run through. A publisher becomes *heavy* when
//! one call runs through [`HEAVY_CALL_TICKS`] ticks, or when it keeps a lane thread busy for
//! more than [`HEAVY_BUSY_PER_WINDOW`] within [`WINDOW`]. A call of a heavy publisher moves to
//! the heavy lane at its next yield, and the publisher's later calls start there, until it has
//! shown no heavy behaviour for [`RECOVERY`].
//!
//! A call that handles a batch of n events may run n times as many ticks before it counts as
//! long, but only once its publisher has earned it ([`CpuAccount::is_trusted`]): a publisher
//! whose calls have not yet returned (a new one, or one whose last call trapped) gets
//! [`HEAVY_CALL_TICKS`] per call, however many events the call carries. Otherwise a tenant
//! hostile from its first call would hold the light lane for n × 3 ticks (600 ms for a batch
//! of 20) before it was found heavy.
//!
//! The kernel runs a normal-priority thread ahead of a nice-19 one, so a light tenant whose
//! Redis reply has just arrived gets a core at once however many heavy tenants spin, and the
//! heavy tenants share what the light ones leave, round-robin, a tick at a time. Within a lane,
//! tasks take turns at every tick.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::engine::EngineError;

/// One call running through this many ticks makes its publisher heavy.
pub const HEAVY_CALL_TICKS: u32 = 3;

/// The window over which a publisher's ticks are counted.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Keeping a lane thread busy for longer than this within one window (half a core) makes a
/// publisher heavy.
pub const HEAVY_BUSY_PER_WINDOW: Duration = Duration::from_millis(500);

/// A heavy publisher becomes light again after this long without heavy behaviour.
pub const RECOVERY: Duration = Duration::from_secs(2);

/// The lowest scheduling priority, for the heavy lane's threads.
const HEAVY_NICE: i32 = 19;

/// How much guest CPU one publisher has been seen using, and which lane it belongs in.
#[derive(Debug)]
pub struct CpuAccount {
    heavy: AtomicBool,
    /// Whether a call of the publisher has returned since it started or last trapped.
    trusted: AtomicBool,
    /// Ticks counted so far, over the publisher's lifetime (for reports).
    ticks: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    busy: Duration,
    /// When the publisher last behaved heavily.
    last_heavy: Option<Instant>,
}

impl Default for CpuAccount {
    fn default() -> Self {
        Self {
            heavy: AtomicBool::new(false),
            trusted: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            window: Mutex::new(Window { started: Instant::now(), busy: Duration::ZERO, last_heavy: None }),
        }
    }
}

impl CpuAccount {
    /// Counts one tick at which the publisher's guest code was running, `call_ticks` being the
    /// ticks of the call in progress so far. Returns whether the publisher is now heavy.
    pub fn tick(&self, call_ticks: u32) -> bool {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        if call_ticks >= HEAVY_CALL_TICKS {
            let mut window = self.window.lock().expect("cpu account lock");
            self.turn_heavy(&mut window, "a long call");
        }
        self.heavy.load(Ordering::Relaxed)
    }

    /// Whether a call of this publisher has returned since it started or its last trap: its
    /// batch calls then count their ticks per event.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }

    /// Records how a call ended: returned (the publisher is trusted from now on) or trapped
    /// (it is not, until a call returns again).
    pub fn call_ended(&self, returned: bool) {
        self.trusted.store(returned, Ordering::Relaxed);
    }

    /// The ticks a call that has run `call_ticks` ticks for `events` events counts as: per
    /// event for a trusted publisher, all of them otherwise.
    pub fn counted_ticks(&self, call_ticks: u32, events: u32) -> u32 {
        if self.is_trusted() { call_ticks.div_ceil(events.max(1)) } else { call_ticks }
    }

    /// Counts `busy`, time the publisher's work kept a lane thread busy (one poll).
    pub fn record_busy(&self, busy: Duration) {
        let mut window = self.window.lock().expect("cpu account lock");
        if window.started.elapsed() >= WINDOW {
            window.started = Instant::now();
            window.busy = Duration::ZERO;
        }
        window.busy += busy;
        if window.busy > HEAVY_BUSY_PER_WINDOW {
            self.turn_heavy(&mut window, "a busy second");
        }
    }

    fn turn_heavy(&self, window: &mut Window, why: &str) {
        window.last_heavy = Some(Instant::now());
        if !self.heavy.swap(true, Ordering::Relaxed) {
            tracing::debug!(why, "publisher moved to the heavy lane");
        }
    }

    /// Whether the publisher's calls run on the heavy lane now; a heavy publisher that has been
    /// quiet for [`RECOVERY`] becomes light again.
    pub fn is_heavy(&self) -> bool {
        if !self.heavy.load(Ordering::Relaxed) {
            return false;
        }
        let window = self.window.lock().expect("cpu account lock");
        if window.last_heavy.is_some_and(|t| t.elapsed() >= RECOVERY) {
            self.heavy.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Ticks counted over the publisher's lifetime (each about [`super::engine::EPOCH_TICK`]
    /// of guest CPU).
    pub fn total_ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
}

/// The two lanes.
pub struct GuestLanes {
    light: Option<tokio::runtime::Runtime>,
    heavy: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for GuestLanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestLanes").finish_non_exhaustive()
    }
}

impl GuestLanes {
    /// Starts both lanes.
    pub fn start() -> Result<Self, EngineError> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).saturating_sub(1).max(1);
        let light = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wasm-light")
            .enable_all()
            .build()
            .map_err(|e| EngineError::new(format!("guest threads: {e}")))?;
        let heavy = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wasm-heavy")
            .on_thread_start(|| {
                // Lowering one's own priority is always allowed; if it fails the lane still
                // works, only without the kernel's help.
                if let Err(err) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), HEAVY_NICE) {
                    tracing::debug!(%err, "could not lower the heavy lane's priority");
                }
            })
            .enable_all()
            .build()
            .map_err(|e| EngineError::new(format!("guest threads: {e}")))?;
        Ok(Self { light: Some(light), heavy: Some(heavy) })
    }

    fn light(&self) -> &tokio::runtime::Runtime {
        self.light.as_ref().expect("lanes live as long as the engine")
    }

    fn heavy(&self) -> &tokio::runtime::Runtime {
        self.heavy.as_ref().expect("lanes live as long as the engine")
    }

    /// Runs `work` (calls into one publisher's guest code) in the lane `account` says, moving
    /// it to the heavy lane at its first yield after its publisher turns heavy.
    pub async fn run<T: Send + 'static>(
        &self,
        account: std::sync::Arc<CpuAccount>,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let mut work = Metered { work: Box::pin(work), account: account.clone() };
        if account.is_heavy() {
            return self.heavy().spawn(work).await;
        }
        let heavy = self.heavy().handle().clone();
        let on_light = self.light().spawn(async move {
            let light_outcome = {
                let mut polled = pin!(std::future::poll_fn(|cx| match Pin::new(&mut work).poll(cx) {
                    Poll::Ready(value) => Poll::Ready(Some(value)),
                    Poll::Pending if account.is_heavy() => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }));
                (&mut polled).await
            };
            match light_outcome {
                Some(value) => Ok(value),
                None => heavy.spawn(work).await,
            }
        });
        on_light.await?
    }
}

/// A publisher's work, charging the time each poll keeps the thread busy to its account.
struct Metered<F> {
    work: Pin<Box<F>>,
    account: std::sync::Arc<CpuAccount>,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let polled = self.work.as_mut().poll(cx);
        self.account.record_busy(started.elapsed());
        polled
    }
}

impl Drop for GuestLanes {
    fn drop(&mut self) {
        // May be dropped from async code, where a blocking shutdown is not allowed.
        for runtime in [self.light.take(), self.heavy.take()].into_iter().flatten() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_call_or_a_busy_second_makes_a_publisher_heavy() {
        let long_call = CpuAccount::default();
        assert!(!long_call.tick(1) && !long_call.tick(2));
        assert!(long_call.tick(HEAVY_CALL_TICKS));
        assert!(long_call.is_heavy());

        let busy = CpuAccount::default();
        for _ in 0..5 {
            busy.record_busy(HEAVY_BUSY_PER_WINDOW / 5);
            assert!(!busy.tick(1), "short calls within the window's allowance stay light");
        }
        busy.record_busy(Duration::from_millis(1));
        assert!(busy.is_heavy());
        assert_eq!(busy.total_ticks(), 5);
    }

    #[test]
    fn a_batch_call_counts_its_ticks_per_event_only_once_its_publisher_has_earned_it() {
        let account = CpuAccount::default();
        assert_eq!(account.counted_ticks(6, 20), 6, "a new publisher's batch call counts every tick");
        account.call_ended(true);
        assert_eq!(account.counted_ticks(6, 20), 1);
        account.call_ended(false);
        assert_eq!(account.counted_ticks(6, 20), 6, "after a trap, every tick again");
    }

    #[test]
    fn a_heavy_publisher_recovers_after_a_quiet_spell() {
        let account = CpuAccount::default();
        account.tick(HEAVY_CALL_TICKS);
        account.window.lock().unwrap().last_heavy = Some(Instant::now() - RECOVERY);
        assert!(!account.is_heavy());
    }

    #[tokio::test]
    async fn a_call_that_turns_heavy_finishes_on_the_heavy_lane() {
        let lanes = GuestLanes::start().unwrap();
        let account = std::sync::Arc::new(CpuAccount::default());
        let marker = account.clone();
        let thread = lanes
            .run(account.clone(), async move {
                let first = std::thread::current().name().map(str::to_string);
                marker.tick(HEAVY_CALL_TICKS);
                tokio::task::yield_now().await;
                (first, std::thread::current().name().map(str::to_string))
            })
            .await
            .unwrap();
        assert_eq!(thread.0.as_deref(), Some("wasm-light"));
        assert_eq!(thread.1.as_deref(), Some("wasm-heavy"));
        let later = lanes.run(account, async { std::thread::current().name().map(str::to_string) }).await.unwrap();
        assert_eq!(later.as_deref(), Some("wasm-heavy"), "a heavy publisher's next call starts on the heavy lane");
    }
}
