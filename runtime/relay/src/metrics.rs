//! What `GET /metrics` reports, in the Prometheus text format: the relay's outcomes and
//! timings, the backlog, each publisher's health and its guest's supervision, and HTTP ingest.
//!
//! The relay and the server write to one [`Metrics`]; values that live elsewhere (the
//! backlog in the database, a guest's counters, the health board) are copied in when a
//! scrape asks ([`Metrics::refresh_publishers`], [`Metrics::set_backlog`]). It takes plain
//! counts, durations and samples, and knows nothing else of the relay: the worker books its
//! counts here, and the scrape path reads the registry and the health board for it
//! ([`crate::scrape`]).
//!
//! ```
//! use broadcaster_relay::metrics::Metrics;
//! let metrics = Metrics::new();
//! metrics.observe_publish("tenant-a", std::time::Duration::from_millis(3));
//! assert!(metrics.render().contains("broadcaster_publish_duration_seconds_count{publisher=\"tenant-a\"} 1"));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use broadcaster_core::routing::publisher_for;
use broadcaster_host::{GuestCounters, TrapCause};
use broadcaster_outbox::{Backlog, Status};

/// The label for a publisher name that no configured publisher has (bounded: the outbox may
/// hold any name).
pub const UNKNOWN_PUBLISHER: &str = "(unknown)";

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    published: IntCounterVec,
    retried: IntCounterVec,
    failed: IntCounterVec,
    released: IntCounterVec,
    publish_duration: HistogramVec,
    enqueue_to_publish: HistogramVec,
    backlog: IntGaugeVec,
    oldest_due_age: GaugeVec,
    healthy: IntGaugeVec,
    guest_traps: IntCounterVec,
    guest_failed_starts: IntCounterVec,
    guest_instances: IntCounterVec,
    guest_breaker_opened: IntCounterVec,
    guest_memory: IntGaugeVec,
    live_instances: IntGaugeVec,
    live_memory: IntGaugeVec,
    evictions: IntCounterVec,
    ingest_requests: IntCounterVec,
    ingest_events: IntCounterVec,
    /// The publisher labels the backlog gauges were last set for (to zero the ones that
    /// emptied).
    backlog_labels: Mutex<BTreeSet<(String, &'static str)>>,
    /// One copy-in of the publishers' counters at a time (two would both add the same rise),
    /// and which build each name had at the last one ([`PublisherSample::build`]): a reload
    /// that replaced or removed one resets or drops its series.
    refreshing: Mutex<BTreeMap<String, usize>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency buckets from 0.5 ms to 60 s.
const SECONDS_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Metrics {
    /// Every metric, registered, at zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, &["publisher"]).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let oldest_due_age = GaugeVec::new(
            Opts::new(
                "broadcaster_oldest_due_age_seconds",
                "How long the oldest due event of each publisher has been due (0: none due).",
            ),
            &["publisher"],
        )
        .expect("valid metric");
        registry.register(Box::new(oldest_due_age.clone())).expect("unique metric");
        Self {
            published: counter("broadcaster_events_published_total", "Events published.", &["publisher"]),
            retried: counter(
                "broadcaster_events_retried_total",
                "Attempts that failed transiently; the event is due again later.",
                &["publisher"],
            ),
            failed: counter(
                "broadcaster_events_failed_total",
                "Events given up on (permanent error, retries used up, unknown publisher, unreadable row).",
                &["publisher"],
            ),
            released: counter(
                "broadcaster_events_released_total",
                "Claimed events put back unattempted (publisher unhealthy or stopping); no retry spent.",
                &["publisher"],
            ),
            publish_duration: histogram(
                "broadcaster_publish_duration_seconds",
                "How long one publish call took (a batch: one pipeline, or one publish-batch call).",
            ),
            enqueue_to_publish: histogram(
                "broadcaster_enqueue_to_publish_seconds",
                "From when an event became due (its enqueue, unless scheduled later or retried) to when it was \
                 published.",
            ),
            backlog: gauge(
                "broadcaster_backlog_events",
                "Events waiting (pending, retry) or claimed (processing), per publisher and status.",
                &["publisher", "status"],
            ),
            oldest_due_age,
            healthy: gauge(
                "broadcaster_publisher_healthy",
                "1 when the publisher's last health check passed, 0 when its events are held back.",
                &["publisher"],
            ),
            guest_traps: counter(
                "broadcaster_guest_traps_total",
                "Calls into a component that trapped (the instance is replaced), by cause: deadline, fuel, \
                 memory, trap.",
                &["publisher", "cause"],
            ),
            guest_failed_starts: counter(
                "broadcaster_guest_start_failures_total",
                "Component instances whose start (instantiate and init) failed.",
                &["publisher"],
            ),
            guest_instances: counter(
                "broadcaster_guest_instances_started_total",
                "Component instances started; more than one means restarts after traps.",
                &["publisher"],
            ),
            guest_breaker_opened: counter(
                "broadcaster_guest_breaker_trips_total",
                "Times a component was paused after a failure (the pause doubles while failures continue).",
                &["publisher"],
            ),
            guest_memory: gauge(
                "broadcaster_guest_memory_bytes",
                "Linear memory of the component's live instance.",
                &["publisher"],
            ),
            live_instances: gauge(
                "broadcaster_wasm_live_instances",
                "Component instances alive now, across every component publisher (at most [wasm] live_instances).",
                &[],
            ),
            live_memory: gauge(
                "broadcaster_wasm_live_memory_bytes",
                "Linear memory of every live component instance together (kept under [wasm] live_memory).",
                &[],
            ),
            evictions: counter(
                "broadcaster_wasm_evictions_total",
                "Instances dropped to make room for another publisher's, or unused for [wasm] idle_timeout.",
                &[],
            ),
            ingest_requests: counter(
                "broadcaster_ingest_requests_total",
                "HTTP ingest requests, by response status code.",
                &["code"],
            ),
            ingest_events: counter(
                "broadcaster_ingest_events_total",
                "Events received over HTTP and committed to the outbox: new, or repeated (an id already stored).",
                &["publisher", "outcome"],
            ),
            backlog_labels: Mutex::default(),
            refreshing: Mutex::default(),
            registry,
        }
    }

    /// Books what a publisher's share of a batch came to: events `published`, `retried`
    /// (failed transiently), `failed` for good, and `released` unattempted.
    pub fn record_share(&self, publisher: &str, published: u64, retried: u64, failed: u64, released: u64) {
        let label = [publisher];
        self.published.with_label_values(&label).inc_by(published);
        self.retried.with_label_values(&label).inc_by(retried);
        self.failed.with_label_values(&label).inc_by(failed);
        self.released.with_label_values(&label).inc_by(released);
    }

    /// Books events failed without a publisher (rows no publisher can read).
    pub fn record_unreadable(&self, rows: u64) {
        if rows > 0 {
            self.failed.with_label_values(&[UNKNOWN_PUBLISHER]).inc_by(rows);
        }
    }

    /// Books one publish call.
    pub fn observe_publish(&self, publisher: &str, took: Duration) {
        self.publish_duration.with_label_values(&[publisher]).observe(took.as_secs_f64());
    }

    /// Books published events that were due at `due`, published at `now`.
    pub fn observe_published(&self, publisher: &str, due: impl IntoIterator<Item = DateTime<Utc>>, now: DateTime<Utc>) {
        let histogram = self.enqueue_to_publish.with_label_values(&[publisher]);
        for due in due {
            histogram.observe((now - due).to_std().unwrap_or_default().as_secs_f64());
        }
    }

    /// Books an ingest request answered `code`.
    pub fn ingest_request(&self, code: u16) {
        self.ingest_requests.with_label_values(&[&code.to_string()]).inc();
    }

    /// Books events committed by an ingest request: `new` ones and `repeated` ones.
    pub fn ingest_events(&self, publisher: &str, new: u64, repeated: u64) {
        self.ingest_events.with_label_values(&[publisher, "new"]).inc_by(new);
        if repeated > 0 {
            self.ingest_events.with_label_values(&[publisher, "repeated"]).inc_by(repeated);
        }
    }

    /// Copies in each configured publisher's health and its guest's counters, and the live
    /// instances of their engine (`None`: it has no component publishers). Series of a
    /// publisher no longer among `publishers` are dropped.
    pub fn refresh_publishers<'a>(
        &self,
        live: Option<LiveSample>,
        publishers: impl IntoIterator<Item = PublisherSample<'a>>,
    ) {
        let mut seen = self.refreshing.lock().expect("refresh lock");
        if let Some(live) = live {
            self.live_instances.with_label_values::<&str>(&[]).set(i64::try_from(live.instances).unwrap_or(i64::MAX));
            self.live_memory.with_label_values::<&str>(&[]).set(i64::try_from(live.memory_bytes).unwrap_or(i64::MAX));
            catch_up(&self.evictions, &[], live.evictions);
        }
        let mut current = BTreeMap::new();
        for publisher in publishers {
            let name = publisher.name;
            if seen.remove(name).is_some_and(|was| was != publisher.build) {
                // Built again by a reload: its guest counters start over, and so do the series.
                self.forget_guest(name);
            }
            current.insert(name.to_string(), publisher.build);
            self.healthy.with_label_values(&[name]).set(i64::from(publisher.healthy));
            let Some(counters) = publisher.guest else { continue };
            if counters.instances() == 0 && counters.failed_starts() == 0 {
                // Never started (an idle tenant of many): nothing to say, and 100,000 of them
                // would be 900,000 series of zeros.
                continue;
            }
            for cause in TrapCause::ALL {
                catch_up(&self.guest_traps, &[name, cause.as_str()], counters.traps(cause));
            }
            catch_up(&self.guest_failed_starts, &[name], counters.failed_starts());
            catch_up(&self.guest_instances, &[name], counters.instances());
            catch_up(&self.guest_breaker_opened, &[name], counters.breaker_opened());
            self.guest_memory
                .with_label_values(&[name])
                .set(i64::try_from(counters.memory_bytes()).unwrap_or(i64::MAX));
        }
        // What is left of the last copy-in is the publishers that are gone.
        for name in seen.keys() {
            let _ = self.healthy.remove_label_values(&[name]);
            self.forget_guest(name);
        }
        *seen = current;
    }

    /// Drops the guest series of `publisher` (it is gone, or was built again).
    fn forget_guest(&self, publisher: &str) {
        for cause in TrapCause::ALL {
            let _ = self.guest_traps.remove_label_values(&[publisher, cause.as_str()]);
        }
        for counter in [&self.guest_failed_starts, &self.guest_instances, &self.guest_breaker_opened] {
            let _ = counter.remove_label_values(&[publisher]);
        }
        let _ = self.guest_memory.remove_label_values(&[publisher]);
    }

    /// Sets the backlog gauges from a count of the outbox taken at `now`: every configured
    /// publisher (`publishers`, by name) has its gauges, at zero when it has no rows; names no
    /// configured publisher has are summed under [`UNKNOWN_PUBLISHER`].
    pub fn set_backlog<'a>(
        &self,
        publishers: impl IntoIterator<Item = &'a str>,
        backlog: &[Backlog],
        now: DateTime<Utc>,
    ) {
        let configured: BTreeSet<&str> = publishers.into_iter().collect();
        let label = |stored: &str| {
            let name = publisher_for(stored);
            if configured.contains(name) { name.to_string() } else { UNKNOWN_PUBLISHER.to_string() }
        };
        let mut counts: BTreeMap<(String, &'static str), i64> = Default::default();
        let mut oldest: BTreeMap<String, DateTime<Utc>> = Default::default();
        for name in &configured {
            for status in [Status::Pending, Status::Retry, Status::Processing] {
                counts.insert((name.to_string(), status.as_str()), 0);
            }
        }
        for row in backlog {
            let name = label(&row.publisher_backend);
            *counts.entry((name.clone(), row.status.as_str())).or_default() +=
                i64::try_from(row.rows).unwrap_or(i64::MAX);
            if matches!(row.status, Status::Pending | Status::Retry)
                && let Some(at) = row.oldest_scheduled
            {
                let entry = oldest.entry(name).or_insert(at);
                *entry = (*entry).min(at);
            }
        }
        let mut labels = self.backlog_labels.lock().expect("backlog labels lock");
        for gone in labels.iter().filter(|key| !counts.contains_key(*key)) {
            self.backlog.with_label_values(&[&gone.0, gone.1]).set(0);
            self.oldest_due_age.with_label_values(&[&gone.0]).set(0.0);
        }
        for ((name, status), rows) in &counts {
            self.backlog.with_label_values(&[name.as_str(), status]).set(*rows);
            let age = oldest.get(name).map_or(0.0, |at| (now - *at).to_std().unwrap_or_default().as_secs_f64());
            self.oldest_due_age.with_label_values(&[name]).set(age);
        }
        *labels = counts.into_keys().collect();
    }

    /// Events published, retried and failed since the process started, per publisher label
    /// that has any (read without adding series).
    pub fn outcome_totals(&self) -> BTreeMap<String, OutcomeTotals> {
        let mut totals: BTreeMap<String, OutcomeTotals> = BTreeMap::new();
        type Field = fn(&mut OutcomeTotals) -> &mut u64;
        let outcomes: [(&IntCounterVec, Field); 3] = [
            (&self.published, |t| &mut t.published),
            (&self.retried, |t| &mut t.retried),
            (&self.failed, |t| &mut t.failed),
        ];
        for (counter, field) in outcomes {
            for family in counter.collect() {
                for metric in family.get_metric() {
                    let Some(label) = metric.get_label().iter().find(|l| l.name() == "publisher") else { continue };
                    *field(totals.entry(label.value().to_string()).or_default()) =
                        metric.get_counter().get_value() as u64;
                }
            }
        }
        totals
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// The content type of [`Self::render`].
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";
}

/// A configured publisher as a scrape copies it in ([`Metrics::refresh_publishers`]).
#[derive(Debug, Clone, Copy)]
pub struct PublisherSample<'a> {
    /// Its name (the label).
    pub name: &'a str,
    /// Which build of it this is (two handles of one publisher share it): another build of
    /// the same name (a reload built it again) starts its guest series over.
    pub build: usize,
    /// Whether its last health check passed (or it has not been checked yet).
    pub healthy: bool,
    /// Its guest's supervision counters, for a component publisher.
    pub guest: Option<&'a GuestCounters>,
}

/// The live component instances of the publishers' engine, all of them together, as a scrape
/// copies them in ([`Metrics::refresh_publishers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveSample {
    /// Instances alive now.
    pub instances: usize,
    /// Their linear memory together, in bytes.
    pub memory_bytes: u64,
    /// Instances dropped for room or idleness since the engine started.
    pub evictions: u64,
}

/// A publisher's outcomes since the process started ([`Metrics::outcome_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeTotals {
    /// Events published.
    pub published: u64,
    /// Attempts that failed transiently.
    pub retried: u64,
    /// Events given up on.
    pub failed: u64,
}

/// Raises a counter to `total` (a count kept elsewhere that only grows).
fn catch_up(counter: &IntCounterVec, labels: &[&str], total: u64) {
    let counter = counter.with_label_values(labels);
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_counted_per_publisher() {
        let metrics = Metrics::new();
        let (published, retried, failed, released) = (3, 1, 2, 0);
        metrics.record_share("a", published, retried, failed, released);
        metrics.record_share("a", 4, 0, 0, 0);
        let text = metrics.render();
        assert!(text.contains("broadcaster_events_published_total{publisher=\"a\"} 7"), "{text}");
        assert!(text.contains("broadcaster_events_retried_total{publisher=\"a\"} 1"), "{text}");
        assert!(text.contains("broadcaster_events_failed_total{publisher=\"a\"} 2"), "{text}");
        let totals = metrics.outcome_totals();
        assert_eq!(totals["a"], OutcomeTotals { published: 7, retried: 1, failed: 2 });
        assert_eq!(totals.len(), 1, "no series is added by reading: {totals:?}");
    }

    fn sample(name: &str, build: usize, healthy: bool) -> PublisherSample<'_> {
        PublisherSample { name, build, healthy, guest: None }
    }

    #[test]
    fn a_publisher_gone_from_the_copy_in_loses_its_series() {
        let metrics = Metrics::new();
        metrics.refresh_publishers(None, [sample("a", 1, true), sample("b", 2, false)]);
        let text = metrics.render();
        assert!(text.contains("broadcaster_publisher_healthy{publisher=\"a\"} 1"), "{text}");
        assert!(text.contains("broadcaster_publisher_healthy{publisher=\"b\"} 0"), "{text}");
        metrics.refresh_publishers(None, [sample("a", 1, true)]);
        let text = metrics.render();
        assert!(text.contains("broadcaster_publisher_healthy{publisher=\"a\"} 1"), "{text}");
        assert!(!text.contains("publisher=\"b\""), "{text}");
        assert!(!text.contains("broadcaster_wasm_live_instances"), "no engine, no live instances: {text}");
    }

    #[test]
    fn the_live_instances_are_set_and_their_evictions_raised_to_the_total() {
        let metrics = Metrics::new();
        let live = LiveSample { instances: 3, memory_bytes: 4096, evictions: 5 };
        metrics.refresh_publishers(Some(live), []);
        metrics.refresh_publishers(Some(live), []);
        let text = metrics.render();
        assert!(text.contains("broadcaster_wasm_live_instances 3"), "{text}");
        assert!(text.contains("broadcaster_wasm_live_memory_bytes 4096"), "{text}");
        assert!(text.contains("broadcaster_wasm_evictions_total 5"), "{text}");
    }

    #[test]
    fn the_backlog_zeroes_configured_publishers_and_sums_unknown_names() {
        let metrics = Metrics::new();
        let now = Utc::now();
        let row = |publisher: &str, status, rows, age: i64| Backlog {
            publisher_backend: publisher.to_string(),
            status,
            rows,
            oldest_scheduled: Some(now - chrono::Duration::seconds(age)),
        };
        let backlog =
            [row("", Status::Pending, 2, 10), row("gone-1", Status::Pending, 3, 1), row("gone-2", Status::Retry, 4, 1)];
        metrics.set_backlog(["default", "quiet"], &backlog, now);
        let text = metrics.render();
        assert!(text.contains("broadcaster_backlog_events{publisher=\"default\",status=\"pending\"} 2"), "{text}");
        assert!(text.contains("broadcaster_backlog_events{publisher=\"quiet\",status=\"retry\"} 0"), "{text}");
        assert!(text.contains("broadcaster_backlog_events{publisher=\"(unknown)\",status=\"pending\"} 3"), "{text}");
        assert!(text.contains("broadcaster_backlog_events{publisher=\"(unknown)\",status=\"retry\"} 4"), "{text}");
        assert!(text.contains("broadcaster_oldest_due_age_seconds{publisher=\"default\"} 10"), "{text}");
        metrics.set_backlog(["default", "quiet"], &[], now);
        let text = metrics.render();
        assert!(text.contains("broadcaster_backlog_events{publisher=\"(unknown)\",status=\"pending\"} 0"), "{text}");
        assert!(text.contains("broadcaster_oldest_due_age_seconds{publisher=\"default\"} 0"), "{text}");
    }
}
