//! Whose turn it is to write, and how this process leaves SQLite's one write lock to the
//! application that shares the file.
//!
//! This process's writers (claims, outcomes, enqueues, catalog changes) queue here, first
//! come first served, before they meet SQLite's lock. An application in another process
//! (Django, by default) meets it in SQLite's own busy handler, which sleeps 1, 2, 5, 10, 15,
//! 20, 25 … ms between tries: if Broadcaster's next transaction has started by the time it
//! wakes, it sleeps longer again, and a relay that writes a transaction every few hundred
//! microseconds keeps it asleep for tens of milliseconds. So while another process is seen
//! writing (one of this process's statements found the lock taken within the last
//! [`CONTENDED_FOR`]), each turn starts at least [`gap_after`] its predecessor ended: long
//! enough that a writer that found the lock taken by it finds it free at its first retry
//! (SQLite's first sleep is 1 ms), and Broadcaster's share of the lock stays at most a
//! quarter. With no one else writing, turns follow each other at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use super::super::sqlite_busy;

/// How long after a statement of this process last found the write lock taken by another
/// process turns stay spaced.
pub const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// The shortest pause between two of this process's write transactions while another process
/// writes: SQLite's default busy handler retries first after 1 ms, and waking takes a little
/// longer than that.
pub const LEAST_GAP: Duration = Duration::from_millis(2);

/// How long a settlement waits, while another process writes, for a claim to write it in
/// its transaction before it takes a turn of its own.
pub const CARRY_WAIT: Duration = Duration::from_millis(20);

/// The pause after a transaction that held the lock `held` (its turn, less the time it slept
/// waiting for another process to let go of it) while another process writes:
/// three times as long (this process's share of the lock at most a quarter), at least
/// [`LEAST_GAP`], at most 50 ms.
pub fn gap_after(held: Duration) -> Duration {
    (held * 3).clamp(LEAST_GAP, Duration::from_millis(50))
}

/// The queue of this process's writers to one SQLite database.
#[derive(Debug, Clone, Default)]
pub struct WriteTurns {
    /// When the next turn may start while another process writes.
    next_start: Arc<Mutex<Option<Instant>>>,
    /// Turns used to write so far.
    used: Arc<AtomicU64>,
}

/// One writer's turn: held for the whole write transaction, given back when dropped.
#[derive(Debug)]
pub struct WriteTurn {
    next_start: OwnedMutexGuard<Option<Instant>>,
    used: Arc<AtomicU64>,
    started: Instant,
    /// This process's sleeps for the lock when the turn started ([`sqlite_busy::slept`]).
    slept: Duration,
    /// Given back without writing: the pause before the next turn stays as it was.
    unused: bool,
}

impl WriteTurns {
    /// Waits for this writer's turn: first for the writers before it, then, while another
    /// process is writing to the database, for the pause after the last turn. Cancel-safe.
    pub async fn take(&self) -> WriteTurn {
        let next_start = self.next_start.clone().lock_owned().await;
        if let Some(at) = *next_start
            && sqlite_busy::contended_within(CONTENDED_FOR)
        {
            tokio::time::sleep_until(at).await;
        }
        WriteTurn {
            next_start,
            used: self.used.clone(),
            started: Instant::now(),
            slept: sqlite_busy::slept(),
            unused: false,
        }
    }

    /// How many turns were used to write (not given back [`unused`](WriteTurn::unused)).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A turn taken without waiting for the pause (a test holds the queue with it).
    #[cfg(test)]
    pub async fn take_at_once(&self) -> WriteTurn {
        WriteTurn {
            next_start: self.next_start.clone().lock_owned().await,
            used: self.used.clone(),
            started: Instant::now(),
            slept: sqlite_busy::slept(),
            unused: false,
        }
    }
}

impl WriteTurn {
    /// Gives the turn back without having written: the next one need not wait longer for it.
    pub fn unused(mut self) {
        self.unused = true;
    }
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        if self.unused {
            return;
        }
        self.used.fetch_add(1, Ordering::Relaxed);
        // The lock held: the turn less the time spent asleep waiting for another process's.
        let now = Instant::now();
        let waited = sqlite_busy::slept().saturating_sub(self.slept);
        *self.next_start = Some(now + gap_after((now - self.started).saturating_sub(waited)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn while_another_process_writes_each_turn_starts_a_pause_after_the_last() {
        let turns = WriteTurns::default();
        sqlite_busy::note_contended();
        drop(turns.take().await);
        let ended = Instant::now();
        drop(turns.take().await);
        assert!(ended.elapsed() >= LEAST_GAP, "{:?}", ended.elapsed());
        assert_eq!(turns.used(), 2);
        turns.take().await.unused();
        assert_eq!(turns.used(), 2, "a turn given back unused is not counted");
    }

    #[test]
    fn the_pause_is_three_times_the_hold_within_its_bounds() {
        assert_eq!(gap_after(Duration::from_micros(100)), LEAST_GAP);
        assert_eq!(gap_after(Duration::from_millis(4)), Duration::from_millis(12));
        assert_eq!(gap_after(Duration::from_secs(1)), Duration::from_millis(50));
    }
}
