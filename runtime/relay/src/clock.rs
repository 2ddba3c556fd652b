//! Where the relay gets "now" from: the system clock, or a clock a test moves by hand.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

use broadcaster_core::event::{now_micros, truncate_to_micros};

/// A source of the current time (microsecond precision, as the outbox stores it).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        now_micros()
    }
}

/// A clock that only moves when told to (for tests of backoff and leases).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(truncate_to_micros(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += chrono::Duration::from_std(by).expect("a duration that fits");
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = truncate_to_micros(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}
