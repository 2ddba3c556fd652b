//! How long a transiently failed event waits before its next attempt: capped exponential
//! backoff with jitter. The default shape is the seed's: 2^n minutes after the n-th failure.

use std::time::Duration;

use rand::Rng;

/// `min(cap, base × 2^n)`, shortened by up to `jitter` (a fraction) at random so that events
/// that failed together do not all come back at the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay unit: after the n-th failure the delay is `base × 2^n`.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// The fraction (0 to 1) of the delay that may be taken off at random.
    pub jitter: f64,
}

impl Default for Backoff {
    /// The seed's schedule: 2, 4, 8… minutes, capped at an hour, up to 20% earlier.
    fn default() -> Self {
        Self { base: Duration::from_secs(60), cap: Duration::from_secs(3600), jitter: 0.2 }
    }
}

impl Backoff {
    /// The delay after the `failures`-th failure (1 for the first).
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let full = self.full_delay(failures);
        if self.jitter <= 0.0 {
            return full;
        }
        let cut = rng.random::<f64>() * self.jitter.min(1.0);
        full.mul_f64(1.0 - cut)
    }

    /// The delay without jitter.
    pub fn full_delay(&self, failures: u32) -> Duration {
        let factor = 2u32.checked_pow(failures).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.cap).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_default_is_the_seeds_two_to_the_n_minutes_capped_at_an_hour() {
        let backoff = Backoff::default();
        let minutes: Vec<u64> = (1..=7).map(|n| backoff.full_delay(n).as_secs() / 60).collect();
        assert_eq!(minutes, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff.full_delay(200), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_only_ever_shortens_the_delay_and_by_at_most_its_fraction() {
        let backoff = Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(1000), jitter: 0.25 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(80) && *d >= Duration::from_secs(60)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 900, "jitter spreads the delays");
    }

    #[test]
    fn no_jitter_means_exact_delays() {
        let backoff = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(1), jitter: 0.0 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(backoff.delay(1, &mut rng), Duration::from_millis(200));
        assert_eq!(backoff.delay(4, &mut rng), Duration::from_secs(1));
    }
}
