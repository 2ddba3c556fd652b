//! The relay worker: claims due events from the outbox, publishes each through its
//! publisher, and records the outcome.
//!
//! - [`clock`]: where "now" comes from (a test can hold it still).
//! - [`backoff`]: the retry schedule.
//! - [`health`]: which publishers are healthy (checked on an interval).
//! - [`worker`]: the loop, one batch at a time; [`busy`]: which publishers have batches in
//!   flight.
//!
//! Guarantees: every event is published **at least once**. Duplicates happen only when a
//! worker dies (or stalls past its lease) after publishing and before recording it; the
//! stream entry's `event_id` is the key consumers drop duplicates by.

pub mod backoff;
pub(crate) mod busy;
pub mod clock;
pub mod health;
pub mod worker;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, SystemClock};
pub use health::HealthBoard;
pub use worker::{BatchReport, COMPONENT_PIPELINE_DEPTH, PIPELINE_DEPTH, Relay, RelayReport, RunOptions};
