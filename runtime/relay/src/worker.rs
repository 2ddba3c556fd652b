//! The relay loop: claim a batch, publish it publisher by publisher, settle every row.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use super::busy::BusyPublishers;
use super::{Backoff, Clock, HealthBoard, SystemClock};
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::registry::{PublisherRegistry, RegistryChanges};
use broadcaster_config::RelayConfig;
use broadcaster_core::outcome::{Attempt, PublishError};
use broadcaster_core::routing::{publisher_for, stored_names};
use broadcaster_outbox::{Claim, ClaimedEvent, HeldClaim, OutboxStore, RejectedRow, Settlement, StoreError};

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

    /// Runs until `shutdown` turns true or `options.max_iterations` is reached.
    ///
    /// Every publisher's share of the work is published and settled on its own task, so a slow
    /// or misbehaving publisher never holds up the others. Each iteration claims, for every idle
    /// and healthy publisher that may have due events, a batch of that publisher's events alone
    /// (an index range, cheap however large another publisher's backlog is). Once per
    /// `interval` the names that events are waiting for are looked up (one index seek per
    /// name); names no publisher has are claimed too, and their events fail. A publisher that
    /// answers fast (the native backend) has up to [`PIPELINE_DEPTH`] shares in flight, each
    /// claimed while the ones before it publish, each held in its own transaction where the
    /// database can ([`OutboxBackend::claim_held`](broadcaster_outbox::OutboxBackend::claim_held)),
    /// and published only after the one before it was (all of it; otherwise it is released
    /// unpublished), so its events keep their order; other publishers have one share in
    /// flight. Never sleeps
    /// while something was claimed. A row the store cannot read is failed by the claim itself
    /// (logged here, counted as failed) and the rest of its batch is published. A database
    /// error is logged and the loop goes on. Health is checked from the start, every
    /// publisher on its own task; until its first answer a publisher counts as healthy (a
    /// failure then checks it at once). On shutdown nothing more is claimed, the publishers are
    /// stopped (a component's batch stops before its next event; its call in flight ends by its
    /// deadline at the latest, and an event whose call was cut goes back to waiting), and the
    /// shares in flight are settled before returning.
    pub async fn run(self: Arc<Self>, options: RunOptions, mut shutdown: watch::Receiver<bool>) -> RelayReport {
        let mut report = RelayReport::default();
        let mut generation = self.generation.load(Ordering::Acquire);
        let mut registry = self.registry();
        let mut monitor = self.health.monitor(&registry, self.health_interval);
        let reclaim_every = (self.lease_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut last_reclaim: Option<Instant> = None;
        let mut last_sweep: Option<Instant> = None;
        let mut in_flight: tokio::task::JoinSet<ShareOutcome> = tokio::task::JoinSet::new();
        let mut busy = BusyPublishers::default();
        // Per publisher: told whether its latest batch in flight was published, all of it.
        let mut published: HashMap<String, tokio::sync::oneshot::Receiver<bool>> = HashMap::new();
        // Publishers that may have due events (the sweep, which runs first, says which); a
        // claim that comes back short drops one. Never every configured publisher: with
        // 100,000 tenants that would be 100,000 claims.
        let mut wanting: BTreeSet<String> = BTreeSet::new();
        // How long after a sweep the next one is due when nothing arrives: FIRST_POLL after
        // work, doubling up to the interval while the outbox stays quiet.
        let first_poll = FIRST_POLL.min(options.interval);
        let mut sweep_every = first_poll;
        loop {
            while let Some(done) = in_flight.try_join_next_with_id() {
                self.finished(done, &mut busy, &mut report);
            }
            if *shutdown.borrow() {
                registry.stop();
                for publisher in self.superseded.lock().expect("superseded lock").iter() {
                    publisher.stop();
                }
                break;
            }
            if self.generation.load(Ordering::Acquire) != generation {
                // A reload: claim with the new publishers, check their health now, and look
                // for work of every one of them (the sweep, now).
                generation = self.generation.load(Ordering::Acquire);
                registry = self.registry();
                monitor = self.health.monitor(&registry, self.health_interval);
                last_sweep = None;
            }
            if last_reclaim.is_none_or(|t| t.elapsed() >= reclaim_every) {
                match self.reclaim_expired().await {
                    Ok(n) => report.reclaimed += n,
                    Err(err) => tracing::error!(%err, "could not take back expired leases"),
                }
                last_reclaim = Some(Instant::now());
            }
            let mut claimed = 0usize;
            if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                last_sweep = Some(Instant::now());
                match self.store.publishers_with_work().await {
                    Ok(names) => wanting.extend(names.into_iter().map(|name| publisher_for(&name).to_string())),
                    Err(err) => {
                        report.errors += 1;
                        tracing::error!(%err, "looking for due events failed; trying again after the interval");
                    }
                }
            }
            wanting.retain(|name| registry.contains(name) || !self.is_retired(name));
            let idle: Vec<String> = wanting
                .iter()
                .filter(|name| busy.count(name) < pipeline_depth(&registry, name) && !self.health.is_down(name))
                .cloned()
                .collect();
            for name in idle {
                match self.claim_share(&registry, &name, options.batch_size).await {
                    Ok(share) => {
                        let claim = share.claim();
                        if claim.len() < options.batch_size as usize {
                            wanting.remove(&name);
                        }
                        claimed += claim.len();
                        let unreadable = log_rejected(&claim.rejected);
                        self.metrics.record_unreadable(unreadable);
                        report.totals.failed += unreadable;
                        if !claim.events.is_empty() {
                            // Published after the batch before it, when that one is in flight.
                            let before = busy.count(&name) > 0;
                            let gate = if before { published.remove(&name) } else { None };
                            let (done, next_gate) = tokio::sync::oneshot::channel();
                            published.insert(name.clone(), next_gate);
                            let order = ShareOrder { after: gate, done };
                            self.spawn_share(&mut in_flight, &mut busy, &registry, name, share, order);
                        }
                    }
                    Err(err) => {
                        report.errors += 1;
                        tracing::error!(publisher = %name, %err, "claiming events failed");
                    }
                }
            }
            report.totals.claimed += claimed as u64;
            report.iterations += 1;
            if claimed > 0 {
                sweep_every = first_poll;
            }
            if options.max_iterations > 0 && report.iterations >= options.max_iterations {
                break;
            }
            if claimed == 0 {
                let sweep_in = sweep_every.saturating_sub(last_sweep.map_or(Duration::ZERO, |t| t.elapsed()));
                tokio::select! {
                    Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                        self.finished(done, &mut busy, &mut report);
                    }
                    woken = self.store.wait_for_writes(sweep_in) => {
                        // Look for due events now: at once after a write, and on the polling
                        // schedule otherwise, which backs off while nothing comes.
                        last_sweep = None;
                        sweep_every = if woken { first_poll } else { (sweep_every * 2).min(options.interval) };
                    }
                    _ = stopped(&mut shutdown) => {}
                    _ = self.reloaded.notified() => {}
                }
            }
        }
        while let Some(done) = in_flight.join_next_with_id().await {
            self.finished(done, &mut busy, &mut report);
        }
        drop(monitor);
        if let Some(export) = &self.span_export {
            export.flush().await;
        }
        report
    }

    /// Claims a batch of `name`'s due events: held in a transaction for a publisher that
    /// answers fast, when the database can ([`OutboxBackend::claim_held`](broadcaster_outbox::OutboxBackend::claim_held)), a lease
    /// otherwise.
    async fn claim_share(
        &self,
        registry: &PublisherRegistry,
        name: &str,
        batch_size: u32,
    ) -> Result<Share, StoreError> {
        let now = self.clock.now();
        let held = match registry.get(name) {
            Ok(Publisher::RedisStream(_)) => Some(None),
            // A component that answers fast may turn slow in its next call, holding its
            // transaction (and a connection) up to its deadline: components together hold at
            // most COMPONENT_HELD_CLAIMS, so two such tenants cannot take every held claim.
            Ok(component) if component.answers_fast() => self.component_held.clone().try_acquire_owned().ok().map(Some),
            _ => None,
        };
        if let Some(permit) = held
            && let Some(held) = self.store.claim_held(now, batch_size, stored_names(name)).await?
        {
            return Ok(Share::Held(held, permit));
        }
        Ok(Share::Leased(self.store.claim_for(now, batch_size, stored_names(name)).await?))
    }

    /// Publishes and settles one publisher's share on its own task. With a `gate` (the batch
    /// before it is in flight), it publishes once that batch was published, all of it, and
    /// releases its events unpublished otherwise; it tells `done` whether it published all of
    /// its own.
    fn spawn_share(
        self: &Arc<Self>,
        in_flight: &mut tokio::task::JoinSet<ShareOutcome>,
        busy: &mut BusyPublishers,
        registry: &Arc<PublisherRegistry>,
        name: String,
        share: Share,
        order: ShareOrder,
    ) {
        let ShareOrder { after: gate, done } = order;
        let relay = self.clone();
        let registry = registry.clone();
        let task_name = name.clone();
        let handle = in_flight.spawn(async move {
            let started = Instant::now();
            let refs: Vec<&ClaimedEvent> = share.claim().events.iter().collect();
            let in_order = match gate {
                // A sender dropped unsent is a batch whose task failed.
                Some(gate) => gate.await.unwrap_or(false),
                None => true,
            };
            let settlements = if in_order {
                relay.publish_group(&registry, &name, &refs).await
            } else {
                refs.iter().map(|e| (e.event.id.clone(), Settlement::Release)).collect()
            };
            let _ = done.send(settlements.iter().all(|(_, s)| *s != Settlement::Release));
            let result = match share {
                Share::Leased(claim) => relay.settle(claim.token, &settlements).await,
                Share::Held(held, _permit) => relay.finish_held(held, &settlements).await,
            };
            if let Ok(share) = &result {
                let label = if registry.contains(&name) { name.as_str() } else { crate::metrics::UNKNOWN_PUBLISHER };
                relay.metrics.record_share(label, share);
                tracing::info!(
                    publisher = %name,
                    published = share.published,
                    retried = share.retried,
                    failed = share.failed,
                    waiting = share.released,
                    took = ?started.elapsed(),
                    "relayed"
                );
            }
            (name, result)
        });
        busy.insert(handle.id(), task_name);
    }

    /// Books a finished publisher share and frees its publisher for the next claim.
    fn finished(
        &self,
        done: Result<(tokio::task::Id, ShareOutcome), tokio::task::JoinError>,
        busy: &mut BusyPublishers,
        report: &mut RelayReport,
    ) {
        // A replaced publisher whose last share this was is dropped now (its instance freed).
        self.superseded.lock().expect("superseded lock").retain(Publisher::is_shared);
        match done {
            Ok((id, (_, Ok(share)))) => {
                busy.remove(id);
                report.totals.add(&BatchReport { claimed: 0, ..share });
            }
            Ok((id, (name, Err(err)))) => {
                busy.remove(id);
                report.errors += 1;
                tracing::error!(publisher = %name, %err, "recording outcomes failed; the events return after the lease timeout");
            }
            Err(err) => {
                let name = busy.remove(err.id()).unwrap_or_default();
                report.errors += 1;
                tracing::error!(publisher = %name, %err, "a publishing task failed; its events return after the lease timeout");
            }
        }
    }

    /// Writes the settlements of one share; counts them.
    async fn settle(
        &self,
        token: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<BatchReport, StoreError> {
        let mut report = count_settlements(settlements);
        let updated = self.write_outcomes(token, settlements).await?;
        report.fenced = (settlements.len() as u64).saturating_sub(updated);
        if report.fenced > 0 {
            tracing::warn!(
                fenced = report.fenced,
                "this worker's lease on some events expired and another worker took them over; \
                 their outcome here was not recorded (they may be published twice)"
            );
        }
        Ok(report)
    }

    /// Writes the settlements of a held share and commits its transaction; counts them. A
    /// failure leaves the rows as they were before the claim (the published ones are published
    /// again by the next claim).
    async fn finish_held(
        &self,
        held: Box<dyn HeldClaim>,
        settlements: &[(String, Settlement)],
    ) -> Result<BatchReport, StoreError> {
        let mut report = count_settlements(settlements);
        let updated = held.finish(self.clock.now(), settlements).await?;
        report.fenced = (settlements.len() as u64).saturating_sub(updated);
        Ok(report)
    }

    /// Writes the outcomes of a share, trying again after a database error (a blip must not
    /// send published events back to be published again at lease expiry): up to
    /// [`OUTCOME_WRITE_ATTEMPTS`] attempts, waiting 100 ms, then 400 ms, … between them. The
    /// writes are fenced by the claim token, so an attempt that did reach the database before
    /// failing is harmless to repeat.
    async fn write_outcomes(
        &self,
        token: DateTime<Utc>,
        settlements: &[(String, Settlement)],
    ) -> Result<u64, StoreError> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.store.settle(token, self.clock.now(), settlements).await {
                Err(StoreError::Database(err)) if attempt < OUTCOME_WRITE_ATTEMPTS => {
                    tracing::warn!(%err, attempt, "recording outcomes failed; trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Claims one batch, publishes every publisher's share at once, and settles every row
    /// (waiting for all of them: the step-by-step form of [`Relay::run`], for tests and tools).
    pub async fn run_batch(&self, batch_size: u32) -> Result<BatchReport, StoreError> {
        let registry = self.registry();
        let mut skip = self.health.skip_list();
        for name in self.retired() {
            if !registry.contains(&name) {
                skip.extend(stored_names(&name).map(str::to_string));
            }
        }
        let claim = self.store.claim(self.clock.now(), batch_size, &skip).await?;
        let failed = log_rejected(&claim.rejected);
        let mut report = BatchReport { claimed: failed, failed, ..BatchReport::default() };
        if claim.events.is_empty() {
            return Ok(report);
        }
        let groups = group_by_publisher(claim.events);
        let outcomes = futures::future::join_all(groups.iter().map(|(name, events)| {
            let refs: Vec<&ClaimedEvent> = events.iter().collect();
            let registry = &registry;
            async move { self.publish_group(registry, name, &refs).await }
        }))
        .await;
        let settlements: Vec<(String, Settlement)> = outcomes.into_iter().flatten().collect();
        report.add(&self.settle(claim.token, &settlements).await?);
        Ok(report)
    }

    async fn publish_group(
        &self,
        registry: &PublisherRegistry,
        name: &str,
        events: &[&ClaimedEvent],
    ) -> Vec<(String, Settlement)> {
        let settle_all = |settlement: &dyn Fn(&ClaimedEvent) -> Settlement| {
            events.iter().map(|e| (e.event.id.clone(), settlement(e))).collect::<Vec<_>>()
        };
        let publisher = match registry.get(name) {
            Ok(publisher) => publisher,
            Err(unknown) => {
                let error = unknown.to_string();
                return settle_all(&|e| Settlement::Failed { retry_count: e.event.retry_count, error: error.clone() });
            }
        };
        if self.health.is_down(name) {
            return settle_all(&|_| Settlement::Release);
        }
        let batch: Vec<_> = events.iter().map(|e| e.event.clone()).collect();
        let spans = crate::trace_context::PublishSpans::open(name, &batch, self.span_export.as_ref());
        let started = Instant::now();
        let mut attempts = publisher.publish_batch(&batch).await;
        self.metrics.observe_publish(name, started.elapsed());
        // A transient failure may be the publisher going down: check it now. If it is down,
        // its events wait (no retry spent); if not, the failure was the event's own, and the
        // events after it (not attempted, to keep their order) are published now.
        let mut down = false;
        while attempts
            .iter()
            .any(|a| matches!(a, Attempt::Done(Err(PublishError::Transient(_) | PublishError::Trapped(_)))))
        {
            let health = publisher.health().await;
            down = !health.healthy;
            self.health.record(name, health);
            let rest: Vec<usize> = (0..attempts.len()).filter(|i| attempts[*i] == Attempt::NotAttempted).collect();
            if down || rest.is_empty() {
                break;
            }
            let retry: Vec<_> = rest.iter().map(|i| batch[*i].clone()).collect();
            let started = Instant::now();
            let later = publisher.publish_batch(&retry).await;
            self.metrics.observe_publish(name, started.elapsed());
            let before = attempts.clone();
            for (i, attempt) in rest.into_iter().zip(later) {
                attempts[i] = attempt;
            }
            if attempts == before {
                break;
            }
        }
        spans.close(&attempts);
        let now = self.clock.now();
        let published = events.iter().zip(&attempts).filter(|(_, a)| **a == Attempt::Done(Ok(())));
        self.metrics.observe_published(name, published.map(|(e, _)| e.scheduled_at), now);
        let mut rng = self.rng.lock().expect("rng lock");
        events
            .iter()
            .zip(attempts)
            .map(|(claimed, attempt)| {
                let event = &claimed.event;
                let settlement = match attempt {
                    Attempt::Done(Ok(())) => Settlement::Published,
                    Attempt::Done(Err(err @ PublishError::Permanent(_))) => {
                        Settlement::Failed { retry_count: event.retry_count, error: err.to_string() }
                    }
                    Attempt::Done(Err(PublishError::Transient(_))) | Attempt::NotAttempted if down => {
                        Settlement::Release
                    }
                    Attempt::NotAttempted => Settlement::Release,
                    // A trap is the event's own failure: it spends an attempt even when the
                    // publisher now reports itself degraded.
                    Attempt::Done(Err(err @ (PublishError::Transient(_) | PublishError::Trapped(_)))) => {
                        let failures = event.retry_count + 1;
                        if failures >= event.max_retries {
                            Settlement::Failed {
                                retry_count: failures,
                                error: format!("{err} (gave up after {failures} attempts)"),
                            }
                        } else {
                            let delay = self.backoff.delay(failures, &mut *rng);
                            let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                            Settlement::Retry {
                                retry_count: failures,
                                at: broadcaster_core::event::truncate_to_micros(at),
                                error: err.to_string(),
                            }
                        }
                    }
                };
                (event.id.clone(), settlement)
            })
            .collect()
    }
}

/// How many batches of `name` may be in flight at once: [`PIPELINE_DEPTH`] for the native
/// backend, [`COMPONENT_PIPELINE_DEPTH`] for a component that answers fast, one otherwise.
fn pipeline_depth(registry: &PublisherRegistry, name: &str) -> usize {
    match registry.get(name) {
        Ok(Publisher::RedisStream(_)) => PIPELINE_DEPTH,
        Ok(component) if component.answers_fast() => COMPONENT_PIPELINE_DEPTH,
        _ => 1,
    }
}

/// The counts of `settlements`.
fn count_settlements(settlements: &[(String, Settlement)]) -> BatchReport {
    let mut report = BatchReport { claimed: settlements.len() as u64, ..BatchReport::default() };
    for (_, settlement) in settlements {
        match settlement {
            Settlement::Published => report.published += 1,
            Settlement::Retry { .. } => report.retried += 1,
            Settlement::Failed { .. } => report.failed += 1,
            Settlement::Release => report.released += 1,
        }
    }
    report
}

/// A share's place in its publisher's order: told whether the batch before it was published,
/// all of it (`None`: none is in flight), and telling the one after it the same of its own.
struct ShareOrder {
    after: Option<tokio::sync::oneshot::Receiver<bool>>,
    done: tokio::sync::oneshot::Sender<bool>,
}

/// A publisher's claimed batch: leased (rows `processing`, fenced by the claim token) or held
/// (rows locked by an open transaction).
#[derive(Debug)]
enum Share {
    Leased(Claim),
    /// With a component's permit ([`COMPONENT_HELD_CLAIMS`]), given back when the share ends.
    Held(Box<dyn HeldClaim>, Option<tokio::sync::OwnedSemaphorePermit>),
}

impl Share {
    fn claim(&self) -> &Claim {
        match self {
            Share::Leased(claim) => claim,
            Share::Held(held, _) => held.claim(),
        }
    }
}

/// What a publisher's share of a batch came to: its publisher, and its counts or the
/// database error that kept its outcome from being recorded.
type ShareOutcome = (String, Result<BatchReport, StoreError>);

/// Splits claimed events by publisher name (`default` for an empty one), keeping due order.
fn group_by_publisher(events: Vec<ClaimedEvent>) -> Vec<(String, Vec<ClaimedEvent>)> {
    let mut groups: Vec<(String, Vec<ClaimedEvent>)> = Vec::new();
    for claimed in events {
        let name = publisher_for(&claimed.event.publisher_backend);
        match groups.iter_mut().find(|(n, _)| n == name) {
            Some((_, events)) => events.push(claimed),
            None => groups.push((name.to_string(), vec![claimed])),
        }
    }
    groups
}

/// Logs the rows a claim could not read (the store has marked them `failed`); returns how
/// many.
fn log_rejected(rows: &[RejectedRow]) -> u64 {
    for row in rows {
        tracing::warn!(
            id = %row.id,
            publisher = %row.publisher_backend,
            error = %row.error,
            "an outbox row cannot be read; marked failed, the rest of its batch goes on"
        );
    }
    rows.len() as u64
}

/// Resolves when `shutdown` turns true; never, when its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
