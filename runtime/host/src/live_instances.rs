//! The bound on live component instances, shared by every component publisher of an engine
//! (and by the engine a reload makes beside it): at most `[wasm] live_instances` alive at
//! once, their linear memory together kept under `[wasm] live_memory`, and an instance
//! unused for `[wasm] idle_timeout` dropped.
//!
//! A publisher's instance is made when a call needs it. Before it is made, the publisher is
//! *admitted* ([`LiveInstances::admit`]) and given a [`LiveTicket`], which the instance holds
//! until it is dropped (a trap, an eviction, the publisher's end): the ticket's drop gives
//! the room back. When the bound is reached, the least recently *used* instance (health
//! checks do not count as use) whose publisher is not in a call is dropped to make room,
//! and its publisher is *idle*: its next call makes a new instance and runs `init` again, as
//! after a trap. When every live instance is in a call, a start waits for one to finish.
//! The memory bound is soft: it drops idle instances, but never makes a start wait.
//!
//! The table costs O(log live) per call and nothing per idle publisher: 100,000 configured
//! tenants with 1,000 live instances keep 1,000 entries.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::publisher::ComponentPublisher;
use broadcaster_config::LiveBounds;

/// How many candidates one pass looks at when it must drop an instance.
const CANDIDATES: usize = 8;

/// Whether a start may drop another publisher's instance to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// Make room (dropping idle instances, waiting for busy ones): a call needs it.
    Make,
    /// Only if there is room now: a start ahead of need (at start-up).
    IfFree,
}

/// The live instances of every component publisher of an engine.
#[derive(Debug)]
pub struct LiveInstances {
    bounds: LiveBounds,
    /// Linear memory of every live instance, in bytes: each instance's limiter adds its
    /// growth, and takes its part back when the instance is dropped.
    memory: Arc<AtomicU64>,
    table: Mutex<Table>,
    /// Told when an instance is dropped: a start waiting for room tries again.
    freed: Notify,
    evictions: AtomicU64,
    sweeper: OnceLock<()>,
}

#[derive(Debug, Default)]
struct Table {
    /// Tickets out (instances alive or being made).
    live: usize,
    next_use: u64,
    /// Live instances by last use, oldest first.
    by_use: BTreeMap<u64, Entry>,
    /// The last use of each live instance, by publisher key.
    use_of: HashMap<u64, u64>,
}

#[derive(Debug)]
struct Entry {
    key: u64,
    at: Instant,
    publisher: Weak<ComponentPublisher>,
}

impl Table {
    fn stamp(&mut self, key: u64, publisher: Weak<ComponentPublisher>) {
        let stamp = self.next_use;
        self.next_use += 1;
        let publisher = match self.use_of.insert(key, stamp).and_then(|old| self.by_use.remove(&old)) {
            Some(entry) => entry.publisher,
            None => publisher,
        };
        self.by_use.insert(stamp, Entry { key, at: Instant::now(), publisher });
    }

    /// Up to [`CANDIDATES`] publishers with the least recently used instances, but `key`.
    fn oldest_but(&self, key: u64, used_before: Option<Instant>) -> Vec<Weak<ComponentPublisher>> {
        self.by_use
            .values()
            .take_while(|entry| used_before.is_none_or(|limit| entry.at <= limit))
            .filter(|entry| entry.key != key)
            .take(CANDIDATES)
            .map(|entry| entry.publisher.clone())
            .collect()
    }
}

/// A live instance's place in the bound; dropping it (with the instance) gives the place back.
#[derive(Debug)]
pub(crate) struct LiveTicket {
    set: Arc<LiveInstances>,
    key: u64,
}

impl Drop for LiveTicket {
    fn drop(&mut self) {
        {
            let mut table = self.set.table.lock().expect("live instances lock");
            if let Some(stamp) = table.use_of.remove(&self.key) {
                table.by_use.remove(&stamp);
            }
            table.live = table.live.saturating_sub(1);
        }
        self.set.freed.notify_waiters();
    }
}

impl LiveInstances {
    /// An empty set with these bounds.
    pub fn new(bounds: LiveBounds) -> Arc<Self> {
        Arc::new(Self {
            bounds,
            memory: Arc::default(),
            table: Mutex::default(),
            freed: Notify::new(),
            evictions: AtomicU64::new(0),
            sweeper: OnceLock::new(),
        })
    }

    /// The bounds it keeps.
    pub fn bounds(&self) -> LiveBounds {
        self.bounds
    }

    /// Instances alive (or being made) now.
    pub fn live(&self) -> usize {
        self.table.lock().expect("live instances lock").live
    }

    /// Whether a start ahead of need ([`Room::IfFree`]) would be admitted now.
    pub fn has_room(&self) -> bool {
        self.live() < self.bounds.instances as usize && self.memory_bytes() <= self.bounds.memory
    }

    /// Linear memory of every live instance, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    /// Instances dropped to make room or because they were unused for the idle timeout.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The counter every instance's limiter adds its memory to.
    pub(crate) fn memory_counter(&self) -> Arc<AtomicU64> {
        self.memory.clone()
    }

    /// A place for `publisher`'s (keyed `key`) new instance. With [`Room::Make`] it drops the
    /// least recently used idle instances of other publishers when the bound is reached, and
    /// waits when every live instance is in a call; with [`Room::IfFree`] it returns `None`
    /// instead.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        key: u64,
        publisher: Weak<ComponentPublisher>,
        room: Room,
    ) -> Option<LiveTicket> {
        self.start_sweeper();
        loop {
            let freed = self.freed.notified();
            let candidates = {
                let mut table = self.table.lock().expect("live instances lock");
                let full = table.live >= self.bounds.instances as usize;
                let over_memory = self.memory_bytes() > self.bounds.memory;
                let candidates = if full || over_memory { table.oldest_but(key, None) } else { Vec::new() };
                // The memory bound never makes a start that a call needs wait: when nothing
                // can be dropped for it, the start goes ahead. A start ahead of need does not.
                let fits = match room {
                    Room::Make => !full && (!over_memory || candidates.is_empty()),
                    Room::IfFree => !full && !over_memory,
                };
                if fits {
                    table.live += 1;
                    table.stamp(key, publisher.clone());
                    return Some(LiveTicket { set: self.clone(), key });
                }
                candidates
            };
            if room == Room::IfFree {
                return None;
            }
            if self.evict_any(&candidates) {
                continue;
            }
            // Every live instance is in a call: wait for one to be dropped, or look again
            // soon (a call that ends leaves its instance idle, not dropped).
            let _ = tokio::time::timeout(Duration::from_millis(20), freed).await;
        }
    }

    /// Marks `key`'s instance used now (a call into it returned), and drops the least
    /// recently used idle instances while the live memory is over its bound.
    pub(crate) fn used(&self, key: u64) {
        let candidates = {
            let mut table = self.table.lock().expect("live instances lock");
            if table.use_of.contains_key(&key) {
                table.stamp(key, Weak::new());
            }
            if self.memory_bytes() <= self.bounds.memory {
                return;
            }
            table.oldest_but(key, None)
        };
        for candidate in candidates {
            if self.memory_bytes() <= self.bounds.memory {
                break;
            }
            self.evict_one(&candidate);
        }
    }

    /// Drops the first instance of `candidates` that is idle; whether one was.
    fn evict_any(&self, candidates: &[Weak<ComponentPublisher>]) -> bool {
        candidates.iter().any(|candidate| self.evict_one(candidate))
    }

    fn evict_one(&self, candidate: &Weak<ComponentPublisher>) -> bool {
        let evicted = candidate.upgrade().is_some_and(|publisher| publisher.drop_idle_instance());
        if evicted {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        evicted
    }

    /// Drops the instances unused for the idle timeout (those not in a call).
    fn sweep_idle(&self, idle_timeout: Duration) {
        let Some(limit) = Instant::now().checked_sub(idle_timeout) else { return };
        loop {
            let candidates = self.table.lock().expect("live instances lock").oldest_but(u64::MAX, Some(limit));
            let evicted = candidates.iter().filter(|candidate| self.evict_one(candidate)).count();
            // Busy ones stay (and are looked at again on the next sweep).
            if candidates.len() < CANDIDATES || evicted == 0 {
                return;
            }
        }
    }

    /// Starts the idle sweep (once, on the first admission, inside the runtime).
    fn start_sweeper(self: &Arc<Self>) {
        let Some(idle_timeout) = self.bounds.idle_timeout else { return };
        if self.sweeper.set(()).is_err() {
            return;
        }
        let every = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let set = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(set) = set.upgrade() else { return };
                set.sweep_idle(idle_timeout);
            }
        });
    }
}
