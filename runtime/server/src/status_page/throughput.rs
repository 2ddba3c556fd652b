//! The status page's throughput chart: a sampler records every publisher's published total
//! every [`SAMPLE_EVERY`], the last [`KEPT_SAMPLES`] are kept, and the rate between two
//! consecutive samples is one point of the chart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How often the sampler records the published totals.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// How many samples are kept: 15 minutes' worth.
pub const KEPT_SAMPLES: usize = 180;

/// How far back the chart looks.
pub const CHART_WINDOW: Duration = Duration::from_secs(600);

/// The published totals of every publisher at one moment.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at: DateTime<Utc>,
    published: BTreeMap<String, u64>,
}

/// The last [`KEPT_SAMPLES`] samples, oldest first.
#[derive(Debug, Default)]
pub struct ThroughputHistory {
    samples: Mutex<VecDeque<Sample>>,
}

/// Published events per second of each publisher, over the chart's window: `rates[name][i]` is
/// the rate over the interval that ended at `times[i]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// How often a sample is taken, in seconds.
    pub sample_seconds: f64,
    /// How far back the chart looks, in seconds.
    pub window_seconds: f64,
    /// When each interval ended.
    pub times: Vec<DateTime<Utc>>,
    /// Each publisher's events per second over each interval.
    pub rates: BTreeMap<String, Vec<f64>>,
}

impl ThroughputHistory {
    /// Records the published totals (per publisher) at `at`; forgets the oldest sample beyond
    /// [`KEPT_SAMPLES`].
    pub fn record(&self, at: DateTime<Utc>, published: BTreeMap<String, u64>) {
        let mut samples = self.samples.lock().expect("throughput lock");
        samples.push_back(Sample { at, published });
        while samples.len() > KEPT_SAMPLES {
            samples.pop_front();
        }
    }

    /// The rates of `publishers` over the intervals between samples that ended within
    /// [`CHART_WINDOW`] before `now`, plus the interval from the last sample to `now` (with the
    /// totals `current`) when that is at least a second long, so the chart is current between
    /// samples. A total that went down (a counter reset) counts as nothing published.
    pub fn rates(&self, publishers: &[&str], now: DateTime<Utc>, current: &BTreeMap<String, u64>) -> Throughput {
        let samples = self.samples.lock().expect("throughput lock");
        let mut points: Vec<&Sample> = samples.iter().collect();
        let live = Sample { at: now, published: current.clone() };
        if points.last().is_some_and(|last| (now - last.at).num_milliseconds() >= 1000) {
            points.push(&live);
        }
        let window_start = now - chrono::Duration::from_std(CHART_WINDOW).unwrap_or_default();
        let mut throughput = Throughput {
            sample_seconds: SAMPLE_EVERY.as_secs_f64(),
            window_seconds: CHART_WINDOW.as_secs_f64(),
            times: Vec::new(),
            rates: publishers.iter().map(|name| (name.to_string(), Vec::new())).collect(),
        };
        for pair in points.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            let seconds = (after.at - before.at).num_milliseconds() as f64 / 1000.0;
            if after.at < window_start || seconds <= 0.0 {
                continue;
            }
            throughput.times.push(after.at);
            for (name, rates) in &mut throughput.rates {
                let total = |sample: &Sample| sample.published.get(name).copied().unwrap_or(0);
                rates.push(total(after).saturating_sub(total(before)) as f64 / seconds);
            }
        }
        throughput
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn totals(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(name, n)| (name.to_string(), *n)).collect()
    }

    #[test]
    fn a_rate_is_the_published_difference_between_samples_over_their_distance() {
        let history = ThroughputHistory::default();
        history.record(at(0), totals(&[("a", 0)]));
        history.record(at(5), totals(&[("a", 50), ("b", 5)]));
        history.record(at(10), totals(&[("a", 50), ("b", 30)]));
        let throughput = history.rates(&["a", "b", "c"], at(10), &totals(&[("a", 50), ("b", 30)]));
        assert_eq!(throughput.times, [at(5), at(10)]);
        assert_eq!(throughput.rates["a"], [10.0, 0.0]);
        assert_eq!(throughput.rates["b"], [1.0, 5.0]);
        assert_eq!(throughput.rates["c"], [0.0, 0.0], "a publisher that never published is flat");
    }

    #[test]
    fn the_interval_since_the_last_sample_is_charted_once_it_is_a_second_long() {
        let history = ThroughputHistory::default();
        history.record(at(0), totals(&[("a", 0)]));
        assert!(history.rates(&["a"], at(0), &totals(&[("a", 3)])).times.is_empty());
        let throughput = history.rates(&["a"], at(2), &totals(&[("a", 8)]));
        assert_eq!((throughput.times, &throughput.rates["a"]), (vec![at(2)], &vec![4.0]));
    }

    #[test]
    fn only_the_last_fifteen_minutes_are_kept_and_ten_are_charted() {
        let history = ThroughputHistory::default();
        for i in 0..400 {
            history.record(at(i * 5), totals(&[("a", i as u64)]));
        }
        assert_eq!(history.samples.lock().unwrap().len(), KEPT_SAMPLES);
        let now = at(399 * 5);
        let throughput = history.rates(&["a"], now, &totals(&[("a", 399)]));
        assert_eq!(throughput.times.len(), 121, "intervals ending in the last 600 s, both ends in");
        assert!(throughput.times.iter().all(|t| (now - *t).num_seconds() <= 600));
        assert!(throughput.rates["a"].iter().all(|r| (*r - 0.2).abs() < 1e-9));
    }

    #[test]
    fn a_counter_that_went_down_counts_as_nothing_published() {
        let history = ThroughputHistory::default();
        history.record(at(0), totals(&[("a", 10)]));
        history.record(at(5), totals(&[("a", 4)]));
        assert_eq!(history.rates(&["a"], at(5), &totals(&[("a", 4)])).rates["a"], [0.0]);
    }
}
