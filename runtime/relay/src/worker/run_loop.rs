//! [`Relay::run`]: the loop, as a [`RunLoop`] state (what the loop keeps from one pass to the
//! next) and its steps: book the shares that finished, follow a reload, take back expired
//! leases, look for publishers with work, claim their due batches and dispatch each on its
//! own task, count the pass, and wait for work or a wake-up when nothing was claimed; on
//! shutdown, stop the publishers and drain the shares in flight.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::publish::log_rejected;
use super::share::{Share, ShareOrder, ShareOutcome};
use super::{BatchReport, COMPONENT_PIPELINE_DEPTH, FIRST_POLL, PIPELINE_DEPTH, Relay, RelayReport, RunOptions};
use crate::busy::BusyPublishers;
use crate::publisher::Publisher;
use crate::registry::PublisherRegistry;
use broadcaster_core::routing::publisher_for;

impl Relay {
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
    pub async fn run(self: Arc<Self>, options: RunOptions, shutdown: watch::Receiver<bool>) -> RelayReport {
        let mut run = RunLoop::start(self, options, shutdown);
        loop {
            run.book_finished_shares();
            if run.shutdown_requested() {
                run.stop_publishers();
                break;
            }
            run.follow_reload();
            run.reclaim_if_due().await;
            run.sweep_if_due().await;
            let claimed = run.claim_due_batches().await;
            run.count_pass(claimed);
            if run.iterations_used_up() {
                break;
            }
            if claimed == 0 {
                run.wait_for_work().await;
            }
        }
        run.drain().await
    }
}

/// One [`Relay::run`] in progress: what the loop keeps from one pass to the next.
struct RunLoop {
    relay: Arc<Relay>,
    options: RunOptions,
    shutdown: watch::Receiver<bool>,
    report: RelayReport,
    /// The registry swap ([`Relay::replace_publishers`]) `registry` is from.
    generation: u64,
    /// The publishers it claims for.
    registry: Arc<PublisherRegistry>,
    /// Checks `registry`'s publishers' health while it is held ([`crate::HealthBoard::monitor`]).
    monitor: JoinSet<()>,
    /// How often expired leases are taken back.
    reclaim_every: Duration,
    last_reclaim: Option<Instant>,
    /// When it last looked up which publishers have due events (`None`: look now).
    last_sweep: Option<Instant>,
    /// The shares being published and settled, one task each.
    in_flight: JoinSet<ShareOutcome>,
    busy: BusyPublishers,
    /// Per publisher: told whether its latest batch in flight was published, all of it.
    published: HashMap<String, oneshot::Receiver<bool>>,
    /// Publishers that may have due events (the sweep, which runs first, says which); a
    /// claim that comes back short drops one. Never every configured publisher: with
    /// 100,000 tenants that would be 100,000 claims.
    wanting: BTreeSet<String>,
    /// The sweep interval after work: [`FIRST_POLL`], or `interval` if that is shorter.
    first_poll: Duration,
    /// How long after a sweep the next one is due when nothing arrives: `first_poll` after
    /// work, doubling up to the interval while the outbox stays quiet.
    sweep_every: Duration,
}

impl RunLoop {
    /// The state of a run starting now: the publishers in force, their health checks started.
    fn start(relay: Arc<Relay>, options: RunOptions, shutdown: watch::Receiver<bool>) -> Self {
        let generation = relay.generation.load(Ordering::Acquire);
        let registry = relay.registry();
        let monitor = relay.health.monitor(&registry, relay.health_interval);
        let reclaim_every = (relay.lease_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let first_poll = FIRST_POLL.min(options.interval);
        Self {
            relay,
            options,
            shutdown,
            report: RelayReport::default(),
            generation,
            registry,
            monitor,
            reclaim_every,
            last_reclaim: None,
            last_sweep: None,
            in_flight: JoinSet::new(),
            busy: BusyPublishers::default(),
            published: HashMap::new(),
            wanting: BTreeSet::new(),
            first_poll,
            sweep_every: first_poll,
        }
    }

    /// Books every share that has finished, without waiting for any.
    fn book_finished_shares(&mut self) {
        while let Some(done) = self.in_flight.try_join_next_with_id() {
            self.book_finished(done);
        }
    }

    /// Whether the run was told to stop.
    fn shutdown_requested(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Stops every publisher taking calls, those a reload replaced too (their calls in flight
    /// end by their deadline at the latest).
    fn stop_publishers(&self) {
        self.registry.stop();
        for publisher in self.relay.superseded.lock().expect("superseded lock").iter() {
            publisher.stop();
        }
    }

    /// After a reload: claim with the new publishers, check their health now, and look for
    /// work of every one of them (the sweep, now).
    fn follow_reload(&mut self) {
        if self.relay.generation.load(Ordering::Acquire) != self.generation {
            self.generation = self.relay.generation.load(Ordering::Acquire);
            self.registry = self.relay.registry();
            self.monitor = self.relay.health.monitor(&self.registry, self.relay.health_interval);
            self.last_sweep = None;
        }
    }

    /// Takes back rows whose lease expired, every `reclaim_every`.
    async fn reclaim_if_due(&mut self) {
        if self.last_reclaim.is_none_or(|t| t.elapsed() >= self.reclaim_every) {
            match self.relay.reclaim_expired().await {
                Ok(n) => {
                    tracing::trace!(reclaimed = n, "took back expired leases");
                    self.report.reclaimed += n
                }
                Err(err) => tracing::error!(%err, "could not take back expired leases"),
            }
            self.last_reclaim = Some(Instant::now());
        }
    }

    /// Looks up which publishers have due events, when the sweep is due.
    async fn sweep_if_due(&mut self) {
        if self.last_sweep.is_none_or(|t| t.elapsed() >= self.sweep_every) {
            self.last_sweep = Some(Instant::now());
            match self.relay.store.publishers_with_work().await {
                Ok(names) => {
                    tracing::trace!(names = names.len(), "swept");
                    self.wanting.extend(names.into_iter().map(|name| publisher_for(&name).to_string()))
                }
                Err(err) => {
                    self.report.errors += 1;
                    tracing::error!(%err, "looking for due events failed; trying again after the interval");
                }
            }
        }
    }

    /// Claims a batch for every publisher that may have due events, is healthy and has room
    /// in its pipeline, and dispatches each; returns how many rows it claimed.
    async fn claim_due_batches(&mut self) -> usize {
        let mut claimed = 0usize;
        self.wanting.retain(|name| self.registry.contains(name) || !self.relay.is_retired(name));
        let unknown: Vec<String> = self.wanting.iter().filter(|name| !self.registry.contains(name)).cloned().collect();
        for name in unknown {
            // The catalog's tenant this relay has not applied yet (or removed): its events
            // wait; the sweep after the change is applied finds them again.
            if self.relay.holds_unknown(&name).await {
                self.wanting.remove(&name);
            }
        }
        let idle: Vec<String> = self
            .wanting
            .iter()
            .filter(|name| {
                self.busy.count(name) < pipeline_depth(&self.registry, name) && !self.relay.health.is_down(name)
            })
            .cloned()
            .collect();
        for name in idle {
            match self.relay.claim_share(&self.registry, &name, self.options.batch_size).await {
                Ok(share) => {
                    let claim = share.claim();
                    tracing::trace!(publisher = %name, claimed = claim.len(), "claimed");
                    if claim.len() < self.options.batch_size as usize {
                        self.wanting.remove(&name);
                    }
                    claimed += claim.len();
                    let unreadable = log_rejected(&claim.rejected);
                    self.relay.metrics.record_unreadable(unreadable);
                    self.report.totals.failed += unreadable;
                    if !claim.events.is_empty() {
                        self.dispatch(name, share);
                    }
                }
                Err(err) => {
                    self.report.errors += 1;
                    tracing::error!(publisher = %name, %err, "claiming events failed");
                }
            }
        }
        claimed
    }

    /// Publishes and settles `share` on its own task, after `name`'s batch before it when
    /// that one is in flight.
    fn dispatch(&mut self, name: String, share: Share) {
        // Published after the batch before it, when that one is in flight.
        let before = self.busy.count(&name) > 0;
        let gate = if before { self.published.remove(&name) } else { None };
        let (done, next_gate) = oneshot::channel();
        self.published.insert(name.clone(), next_gate);
        let order = ShareOrder { after: gate, done };
        let task_name = name.clone();
        let handle = self.in_flight.spawn(self.relay.clone().relay_share(self.registry.clone(), name, share, order));
        self.busy.insert(handle.id(), task_name);
    }

    /// Counts a pass that claimed `claimed` rows; after work, the next sweep comes soon.
    fn count_pass(&mut self, claimed: usize) {
        self.report.totals.claimed += claimed as u64;
        self.report.iterations += 1;
        if claimed > 0 {
            self.sweep_every = self.first_poll;
        }
    }

    /// Whether `options.max_iterations` passes are done.
    fn iterations_used_up(&self) -> bool {
        self.options.max_iterations > 0 && self.report.iterations >= self.options.max_iterations
    }

    /// Waits for the first of: a share finishing (booked), a write to the outbox or the sweep
    /// coming due, a shutdown, a reload.
    async fn wait_for_work(&mut self) {
        let sweep_in = self.sweep_every.saturating_sub(self.last_sweep.map_or(Duration::ZERO, |t| t.elapsed()));
        tokio::select! {
            Some(done) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => {
                tracing::trace!("a share finished");
                self.book_finished(done);
            }
            woken = self.relay.store.wait_for_writes(sweep_in) => {
                tracing::trace!(woken, "waited for writes");
                // Look for due events now: at once after a write, and on the polling
                // schedule otherwise, which backs off while nothing comes.
                self.last_sweep = None;
                self.sweep_every = if woken {
                    // A claim that finds the write's events sets the first poll again
                    // (`count_pass`); one that does not looks again soon where the wake-up
                    // can come before the write is visible (SQLite).
                    self.relay.store.look_again_after_write().unwrap_or(self.first_poll)
                } else {
                    (self.sweep_every * 2).min(self.options.interval)
                };
            }
            _ = stopped(&mut self.shutdown) => {}
            _ = self.relay.reloaded.notified() => {}
        }
    }

    /// Waits for the shares in flight and books them, stops the health checks, sends the
    /// last spans; what the run did.
    async fn drain(mut self) -> RelayReport {
        while let Some(done) = self.in_flight.join_next_with_id().await {
            self.book_finished(done);
        }
        drop(self.monitor);
        if let Some(export) = &self.relay.span_export {
            export.flush().await;
        }
        self.report
    }

    /// Books a finished publisher share and frees its publisher for the next claim.
    fn book_finished(&mut self, done: Result<(tokio::task::Id, ShareOutcome), tokio::task::JoinError>) {
        // A replaced publisher whose last share this was is dropped now (its instance freed).
        self.relay.superseded.lock().expect("superseded lock").retain(Publisher::is_shared);
        match done {
            Ok((id, (_, Ok(share)))) => {
                self.busy.remove(id);
                self.report.totals.add(&BatchReport { claimed: 0, ..share });
            }
            Ok((id, (name, Err(err)))) => {
                self.busy.remove(id);
                self.report.errors += 1;
                tracing::error!(publisher = %name, %err, "recording outcomes failed; the events return after the lease timeout");
            }
            Err(err) => {
                let name = self.busy.remove(err.id()).unwrap_or_default();
                self.report.errors += 1;
                tracing::error!(publisher = %name, %err, "a publishing task failed; its events return after the lease timeout");
            }
        }
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

/// Resolves when `shutdown` turns true; never, when its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
