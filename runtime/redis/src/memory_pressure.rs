//! Backpressure from Redis memory. A Redis at `maxmemory` with a no-eviction policy answers
//! writes with `OOM`; a publisher that sees it is held down like an outage (its health says
//! why, the relay releases its events without spending retries, and logs the change) instead
//! of failing events. With `max_memory_ratio` set, `INFO memory` is read at every health check
//! and the publisher is held down once Redis is that full, before it refuses anything.
//!
//! After an `OOM` reply the publisher is down for [`OOM_HOLD`] whatever `INFO` says (so the
//! relay's health check right after the failed write always sees it down), then for as long
//! as `INFO memory` shows Redis over `maxmemory` (watched for [`WATCH_AFTER_OOM`] after the
//! last `OOM`). A user without permission for `INFO` gets the hold only: the next write finds
//! out whether there is room again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an `OOM` reply holds the publisher down at least.
pub const OOM_HOLD: Duration = Duration::from_secs(1);
/// How long after the last `OOM` reply health checks keep reading `INFO memory`.
pub const WATCH_AFTER_OOM: Duration = Duration::from_secs(300);

/// A fraction of `maxmemory` (0 < ratio ≤ 1), comparable and hashable (an endpoint's part).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryRatio(f64);

impl MemoryRatio {
    /// The ratio, if it is more than 0 and at most 1.
    pub fn new(ratio: f64) -> Option<Self> {
        (ratio > 0.0 && ratio <= 1.0).then_some(Self(ratio))
    }

    /// Its value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Eq for MemoryRatio {}

impl std::hash::Hash for MemoryRatio {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// What a client has seen of its Redis's memory.
#[derive(Debug, Default)]
pub struct MemoryPressure {
    last_oom: Mutex<Option<Instant>>,
}

/// What a health check must do about memory.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryCheck {
    /// Nothing: no threshold, no recent `OOM`.
    None,
    /// Down now: an `OOM` reply this long ago.
    HeldAfterOom(Duration),
    /// Read `INFO memory` and be down over this fraction of `maxmemory`.
    Info(f64),
}

impl MemoryPressure {
    /// Notes an `OOM` reply.
    pub fn record_oom(&self) {
        *self.last_oom.lock().expect("memory pressure lock") = Some(Instant::now());
    }

    /// What the next health check must do, with the configured ratio (if any).
    pub fn check(&self, configured: Option<MemoryRatio>) -> MemoryCheck {
        let since_oom = self.last_oom.lock().expect("memory pressure lock").map(|at| at.elapsed());
        match (since_oom, configured) {
            (Some(ago), _) if ago < OOM_HOLD => MemoryCheck::HeldAfterOom(ago),
            (_, Some(ratio)) => MemoryCheck::Info(ratio.get()),
            (Some(ago), None) if ago < WATCH_AFTER_OOM => MemoryCheck::Info(1.0),
            _ => MemoryCheck::None,
        }
    }
}

/// The fields of `INFO memory` that decide whether Redis takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// `used_memory`.
    pub used: u64,
    /// `mem_not_counted_for_evict` (replication and AOF buffers, which Redis leaves out).
    pub not_counted: u64,
    /// `maxmemory`; 0 for no limit.
    pub maxmemory: u64,
}

impl MemoryReport {
    /// Reads the reply to `INFO memory`; `None` without `used_memory` or `maxmemory`.
    pub fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
        };
        Some(Self {
            used: field("used_memory")?,
            not_counted: field("mem_not_counted_for_evict").unwrap_or(0),
            maxmemory: field("maxmemory")?,
        })
    }

    /// Why Redis is too full at `ratio` of `maxmemory` (as Redis counts: used memory less
    /// what it does not count for eviction), or `None`.
    pub fn over(&self, ratio: f64) -> Option<String> {
        if self.maxmemory == 0 {
            return None;
        }
        let counted = self.used.saturating_sub(self.not_counted);
        let limit = (self.maxmemory as f64 * ratio) as u64;
        if counted <= limit {
            return None;
        }
        let (used, max) =
            (broadcaster_core::units::ByteSize(counted), broadcaster_core::units::ByteSize(self.maxmemory));
        Some(if ratio >= 1.0 {
            format!("out of memory (OOM): {used} used of maxmemory {max}; events wait until Redis has room")
        } else {
            format!("memory over max_memory_ratio {ratio}: {used} used of maxmemory {max}; events wait")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_memory_is_read_as_redis_counts_it() {
        let info = "# Memory\r\nused_memory:2000\r\nused_memory_human:1.95K\r\nmaxmemory:1500\r\n\
                    maxmemory_human:1.46K\r\nmem_not_counted_for_evict:600\r\n";
        let report = MemoryReport::parse(info).unwrap();
        assert_eq!(report, MemoryReport { used: 2000, not_counted: 600, maxmemory: 1500 });
        assert_eq!(report.over(1.0), None, "1400 counted, under 1500");
        assert!(report.over(0.9).unwrap().contains("max_memory_ratio 0.9"));
        let full = MemoryReport { used: 2000, not_counted: 0, maxmemory: 1500 };
        assert!(full.over(1.0).unwrap().starts_with("out of memory (OOM)"));
        assert_eq!(MemoryReport { maxmemory: 0, ..full }.over(0.1), None, "no maxmemory, no limit");
        assert_eq!(MemoryReport::parse("used_memory:1\r\n"), None);
    }

    #[test]
    fn an_oom_holds_then_info_decides_for_a_while() {
        let pressure = MemoryPressure::default();
        assert_eq!(pressure.check(None), MemoryCheck::None);
        let ratio = MemoryRatio::new(0.8).unwrap();
        assert_eq!(pressure.check(Some(ratio)), MemoryCheck::Info(0.8));
        pressure.record_oom();
        assert!(matches!(pressure.check(Some(ratio)), MemoryCheck::HeldAfterOom(_)));
        *pressure.last_oom.lock().unwrap() = Some(Instant::now() - OOM_HOLD);
        assert_eq!(pressure.check(None), MemoryCheck::Info(1.0));
        *pressure.last_oom.lock().unwrap() = Some(Instant::now() - WATCH_AFTER_OOM);
        assert_eq!(pressure.check(None), MemoryCheck::None);
        assert_eq!(MemoryRatio::new(0.0), None);
        assert_eq!(MemoryRatio::new(1.5), None);
    }
}
