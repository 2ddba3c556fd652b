//! The relay loop: claim a batch, publish it publisher by publisher, settle every row.
//!
//! - this file: the [`Relay`] (what a worker holds: its outbox, its publishers, their health,
//!   its clock, backoff and metrics), its settings and reports.
//! - `run_loop`: [`Relay::run`], the loop, as the steps of one pass over a `RunLoop` state.
//! - `share`: a publisher's claimed batch (leased or held), and its life on its own task.
//! - `publish`: publishing a publisher's events and deciding each one's settlement;
//!   [`Relay::run_batch`], the step-by-step form.
//! - `settle`: writing the settlements back (fenced by the claim), retried after a blip.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Backoff, Clock, HealthBoard, SystemClock};
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::registry::{PublisherRegistry, RegistryChanges};
use broadcaster_config::RelayConfig;
use broadcaster_outbox::{OutboxStore, StoreError};

mod publish;
mod run_loop;
mod settle;
mod share;

/// How many times the outcomes of a share are written before they are given up to lease
/// expiry.
pub const OUTCOME_WRITE_ATTEMPTS: u32 = 4;

/// The first poll after work; polls back off from it to `interval` while nothing comes.
pub const FIRST_POLL: Duration = Duration::from_millis(50);

/// Batches of a publisher that answers fast ([`Publisher::answers_fast`](crate::publisher::Publisher::answers_fast))
/// in flight at once: each is claimed while the ones before it are published and settled, and
/// is published only after the one before it was, all of it (otherwise it goes back to waiting
/// unpublished), so the publisher's events keep their order. Other publishers have one.
pub const PIPELINE_DEPTH: usize = 4;

/// Batches of a component publisher that answers fast in flight at once: one published while
/// the next is claimed (its calls run one at a time on its instance, so more would only wait).
pub const COMPONENT_PIPELINE_DEPTH: usize = 2;

/// Claims held in transactions for component publishers at once, all of them together (the
/// database allows a few more, for the native backend; past either bound claims are leases).
pub const COMPONENT_HELD_CLAIMS: usize = 2;

/// How `broadcaster run` loops (the seed's `outbox_worker` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Most events claimed at once.
    pub batch_size: u32,
    /// How long to wait when a batch was not full (nothing more is due).
    pub interval: Duration,
    /// Stop after this many iterations; 0 runs until told to stop.
    pub max_iterations: u64,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: u64,
    /// Published.
    pub published: u64,
    /// Failed transiently, due again later.
    pub retried: u64,
    /// Failed for good (permanent error, retries used up, unknown publisher, a row the relay
    /// cannot read).
    pub failed: u64,
    /// Not attempted (publisher unhealthy): back to waiting, no retry spent.
    pub released: u64,
    /// Rows this worker could not settle because its lease had expired and another worker
    /// took them over (they may be published twice).
    pub fenced: u64,
}

impl BatchReport {
    fn add(&mut self, other: &BatchReport) {
        self.claimed += other.claimed;
        self.published += other.published;
        self.retried += other.retried;
        self.failed += other.failed;
        self.released += other.released;
        self.fenced += other.fenced;
    }
}

/// What a whole run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Loop iterations (claims), including empty ones.
    pub iterations: u64,
    /// Totals over all batches.
    pub totals: BatchReport,
    /// Rows taken back from expired leases.
    pub reclaimed: u64,
    /// Iterations that failed on a database error.
    pub errors: u64,
}

/// A relay worker over one outbox and one set of publishers.
#[derive(Debug)]
pub struct Relay {
    store: OutboxStore,
    /// The publishers in force; a reload swaps in another registry
    /// ([`Relay::replace_publishers`]) while shares in flight keep the one they started with.
    registry: RwLock<Arc<PublisherRegistry>>,
    /// Names a reload removed: their events wait (neither claimed nor failed as unknown) until
    /// a publisher of that name is configured again.
    retired: Mutex<BTreeSet<String>>,
    /// Publishers a reload replaced or removed, kept until their calls in flight are done, so
    /// that a stop stops them too.
    superseded: Mutex<Vec<Publisher>>,
    /// Counts registry swaps; the loop follows a new one (health checks, who may have work).
    generation: AtomicU64,
    /// Whether events of a publisher this relay does not know wait (a catalog may define it
    /// any moment: [`Relay::hold_unknown_publishers`]) instead of failing.
    hold_unknown: std::sync::atomic::AtomicBool,
    /// Wakes a waiting loop after a swap.
    reloaded: tokio::sync::Notify,
    /// Where the publish spans are exported (`[telemetry] otlp_endpoint`), if anywhere.
    span_export: Option<crate::otlp::OtlpExporter>,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    lease_timeout: Duration,
    health_interval: Duration,
    health: Arc<HealthBoard>,
    rng: Mutex<StdRng>,
    metrics: Arc<Metrics>,
    /// Held claims components may have at once ([`COMPONENT_HELD_CLAIMS`]).
    component_held: Arc<tokio::sync::Semaphore>,
}

impl Relay {
    /// A worker with the `[relay]` settings, on the system clock.
    pub fn new(store: OutboxStore, registry: Arc<PublisherRegistry>, settings: &RelayConfig) -> Self {
        Self {
            store,
            registry: RwLock::new(registry),
            retired: Mutex::default(),
            superseded: Mutex::default(),
            generation: AtomicU64::new(0),
            hold_unknown: std::sync::atomic::AtomicBool::new(false),
            reloaded: tokio::sync::Notify::new(),
            span_export: None,
            clock: Arc::new(SystemClock),
            backoff: Backoff { base: settings.retry_base.0, cap: settings.retry_cap.0, jitter: settings.retry_jitter },
            lease_timeout: settings.lease_timeout.0,
            health_interval: settings.health_interval.0,
            health: Arc::new(HealthBoard::default()),
            rng: Mutex::new(StdRng::from_os_rng()),
            metrics: Arc::default(),
            component_held: Arc::new(tokio::sync::Semaphore::new(COMPONENT_HELD_CLAIMS)),
        }
    }

    /// Books its outcomes and timings in `metrics` (`/metrics` of `broadcaster serve`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Also exports its publish spans to `exporter` ([`crate::otlp`]).
    pub fn with_span_export(mut self, exporter: crate::otlp::OtlpExporter) -> Self {
        self.span_export = Some(exporter);
        self
    }

    /// Where it books its outcomes and timings.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Its publishers now (a reload may replace them: hold the result for one piece of work,
    /// not for good).
    pub fn registry(&self) -> Arc<PublisherRegistry> {
        self.registry.read().expect("registry lock").clone()
    }

    /// Puts `next` in force (a reload; see [`PublisherRegistry::rebuild`]): claims from now on
    /// use it, while shares in flight finish on the publishers they started with. Removed
    /// publishers' events wait from now on (they are not failed as unknown); changed and
    /// removed publishers' health is forgotten, and the loop checks the new ones at once.
    pub fn replace_publishers(&self, next: PublisherRegistry, changes: &RegistryChanges) {
        let old = std::mem::replace(&mut *self.registry.write().expect("registry lock"), Arc::new(next));
        {
            let mut retired = self.retired.lock().expect("retired lock");
            retired.extend(changes.removed.iter().cloned());
            for name in &changes.added {
                retired.remove(name);
            }
        }
        let mut superseded = self.superseded.lock().expect("superseded lock");
        for name in changes.removed.iter().chain(&changes.changed) {
            self.health.forget(name);
            if let Ok(publisher) = old.get(name) {
                superseded.push(publisher.clone());
            }
        }
        drop(old);
        superseded.retain(Publisher::is_shared);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.reloaded.notify_one();
    }

    /// Whether a reload removed publisher `name` (its events wait).
    pub fn is_retired(&self, name: &str) -> bool {
        self.retired.lock().expect("retired lock").contains(name)
    }

    /// From now on, the events of a publisher this relay does not know wait (neither claimed
    /// nor failed as unknown) when the outbox database's tenant catalog defines it, or did
    /// and it was removed: for a relay that follows the catalog, where another relay may
    /// already run a tenant this one has not applied yet. A name the catalog never had fails
    /// as unknown, as always.
    pub fn hold_unknown_publishers(&self) {
        self.hold_unknown.store(true, Ordering::Release);
    }

    /// Whether the events of `name`, a publisher this relay does not know, wait
    /// ([`Self::hold_unknown_publishers`]). Asks the catalog; a failure to ask holds them.
    pub(crate) async fn holds_unknown(&self, name: &str) -> bool {
        if !self.hold_unknown.load(Ordering::Acquire) {
            return false;
        }
        let Some(catalog) = self.store.catalog() else { return false };
        match catalog.knows(name).await {
            Ok(known) => known,
            Err(err) => {
                tracing::warn!(publisher = %name, %err, "cannot ask the tenant catalog about a publisher; its events wait");
                true
            }
        }
    }

    /// The names a reload removed whose events wait.
    pub fn retired(&self) -> Vec<String> {
        self.retired.lock().expect("retired lock").iter().cloned().collect()
    }

    /// Its outbox.
    pub fn store(&self) -> &OutboxStore {
        &self.store
    }

    /// Uses `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The publishers' health as the relay sees it.
    pub fn health(&self) -> &HealthBoard {
        &self.health
    }

    /// The publishers' health as the relay sees it, shared.
    pub fn health_board(&self) -> Arc<HealthBoard> {
        self.health.clone()
    }

    /// Checks every publisher now.
    pub async fn refresh_health(&self) {
        self.health.refresh(&self.registry()).await;
    }

    /// Takes back rows whose lease expired (their worker died or stalled).
    pub async fn reclaim_expired(&self) -> Result<u64, StoreError> {
        let reclaimed = self.store.reclaim_expired(self.clock.now(), self.lease_timeout).await?;
        if reclaimed > 0 {
            tracing::warn!(
                reclaimed,
                lease = ?self.lease_timeout,
                "took back events whose worker's lease expired; they are published again (at least once)"
            );
        }
        Ok(reclaimed)
    }
}
