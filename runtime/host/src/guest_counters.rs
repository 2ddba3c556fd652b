//! What a component publisher's supervision has seen: traps by cause, failed starts,
//! instances made, breaker openings, and the live instance's linear memory. Plain atomics,
//! written by the publisher and read by `/metrics` without taking the instance's lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{ResourceLimiter, StoreLimits};

/// Why a call into an instance failed and the instance was thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapCause {
    /// The call missed its deadline (or was cut after a stop).
    Deadline,
    /// It ran out of fuel.
    Fuel,
    /// It reached its memory limit (a growth was refused).
    Memory,
    /// Any other trap: a panic, an unreachable, an out-of-bounds access, a host-call limit.
    Trap,
}

impl TrapCause {
    /// Every cause, as `/metrics` labels them.
    pub const ALL: [TrapCause; 4] = [TrapCause::Deadline, TrapCause::Fuel, TrapCause::Memory, TrapCause::Trap];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapCause::Deadline => "deadline",
            TrapCause::Fuel => "fuel",
            TrapCause::Memory => "memory",
            TrapCause::Trap => "trap",
        }
    }
}

/// A component publisher's supervision counts.
#[derive(Debug, Default)]
pub struct GuestCounters {
    traps: [AtomicU64; 4],
    failed_starts: AtomicU64,
    instances: AtomicU64,
    breaker_opened: AtomicU64,
    evictions: AtomicU64,
    /// Linear memory of the live instance, in bytes (all its memories), shared with the
    /// instance's limiter.
    memory: Arc<AtomicU64>,
}

impl GuestCounters {
    /// Calls that trapped with `cause`.
    pub fn traps(&self, cause: TrapCause) -> u64 {
        self.traps[cause as usize].load(Ordering::Relaxed)
    }

    /// Starts (instantiate + `init`) that failed.
    pub fn failed_starts(&self) -> u64 {
        self.failed_starts.load(Ordering::Relaxed)
    }

    /// Instances made and started.
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Times the breaker paused the publisher after a failure.
    pub fn breaker_opened(&self) -> u64 {
        self.breaker_opened.load(Ordering::Relaxed)
    }

    /// Linear memory of the live instance, in bytes (0 when it has none).
    pub fn memory_bytes(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    pub(super) fn trapped(&self, cause: TrapCause) {
        self.traps[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn start_failed(&self) {
        self.failed_starts.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn started(&self) {
        self.instances.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn opened_breaker(&self) {
        self.breaker_opened.fetch_add(1, Ordering::Relaxed);
    }

    /// The instance is gone: no memory is held.
    pub(super) fn dropped_instance(&self) {
        self.memory.store(0, Ordering::Relaxed);
    }

    /// A limiter for a new instance's store that counts its memory here and in `all_live`
    /// (the memory of every live instance, which its drop takes its part back from).
    pub(super) fn limiter(&self, inner: StoreLimits, all_live: Arc<AtomicU64>) -> CountingLimits {
        self.memory.store(0, Ordering::Relaxed);
        CountingLimits { inner, memory: self.memory.clone(), all_live, held: 0, refused_memory: false }
    }

    /// An instance was dropped to make room for another or after its idle timeout.
    pub(super) fn evicted(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
        self.memory.store(0, Ordering::Relaxed);
    }

    /// Instances dropped to make room for others, or unused for the idle timeout.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// [`StoreLimits`] that also keep the store's linear memory size in a shared counter, and
/// remember whether a memory growth was refused (the trap that follows is then a memory one).
#[derive(Debug)]
pub struct CountingLimits {
    inner: StoreLimits,
    memory: Arc<AtomicU64>,
    /// The memory of every live instance of the engine.
    all_live: Arc<AtomicU64>,
    /// This store's part of `all_live`.
    held: u64,
    /// A growth beyond the limit was refused since the last call began.
    pub refused_memory: bool,
}

impl Drop for CountingLimits {
    fn drop(&mut self) {
        self.all_live.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl ResourceLimiter for CountingLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum);
        match &allowed {
            Ok(true) => {
                let grown = desired.saturating_sub(current) as u64;
                self.memory.fetch_add(grown, Ordering::Relaxed);
                self.all_live.fetch_add(grown, Ordering::Relaxed);
                self.held += grown;
            }
            _ => self.refused_memory = true,
        }
        allowed
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused_memory = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
