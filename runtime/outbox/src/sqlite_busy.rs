//! How Broadcaster's SQLite connections wait for the write lock.
//!
//! SQLite's own busy timeout retries after 1, 2, 5, 10, 15, 20, 25… ms: a claim that finds an
//! application's commit holding the lock once tends to wait 8–50 ms, most of it asleep after
//! the lock was free again (measured here: p99 from commit to stream 55 ms at 1,000 commits/s,
//! on the 53 ms step). This handler retries every 50–500 µs instead, and gives up after the
//! same 30 s.
// The one FFI call of the crate: sqlx exposes the connection's raw handle, not its busy
// handler.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnection;

/// How long a statement waits for the write lock before it fails with "database is locked".
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The sleep before the `attempt`-th retry (from 0): 50 µs, growing to 500 µs.
fn pause(attempt: u32) -> Duration {
    Duration::from_micros(50 * u64::from(attempt.min(9) + 1))
}

/// The pauses before the `attempt`-th retry, added up.
fn waited_before(attempt: u32) -> Duration {
    let first = attempt.min(10);
    // 50 µs × (1 + 2 + … + first), then 500 µs each.
    Duration::from_micros(25 * u64::from(first * (first + 1)) + 500 * u64::from(attempt - first))
}

/// The moment this process's clock of contention starts.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// When one of this process's statements last found the write lock taken, in microseconds
/// after [`epoch`] (0: never). This process's own writers queue before they meet the lock
/// (`sqlite::write_turns`), so the lock was another process's: an application writing.
static LAST_CONTENDED: AtomicU64 = AtomicU64::new(0);

pub(crate) fn note_contended() {
    let micros = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
    LAST_CONTENDED.store(micros, Ordering::Relaxed);
}

/// How long this process's statements have slept waiting for the write lock, in all.
static SLEPT_MICROS: AtomicU64 = AtomicU64::new(0);

/// How long this process's statements have slept waiting for the write lock, in all.
pub fn slept() -> Duration {
    Duration::from_micros(SLEPT_MICROS.load(Ordering::Relaxed))
}

/// Whether one of this process's statements found the write lock taken within `window`.
pub fn contended_within(window: Duration) -> bool {
    let last = LAST_CONTENDED.load(Ordering::Relaxed);
    last != 0 && epoch().elapsed().saturating_sub(Duration::from_micros(last)) < window
}

/// Retries (returns non-zero) until the pauses add up to [`LOCK_WAIT`].
extern "C" fn retry_soon(_: *mut c_void, attempts: c_int) -> c_int {
    note_contended();
    let attempt = u32::try_from(attempts).unwrap_or(0);
    if waited_before(attempt) >= LOCK_WAIT {
        return 0;
    }
    let pause = pause(attempt);
    std::thread::sleep(pause);
    SLEPT_MICROS.fetch_add(u64::try_from(pause.as_micros()).unwrap_or(0), Ordering::Relaxed);
    1
}

/// Makes `connection` wait for a busy write lock with [`retry_soon`] instead of SQLite's
/// coarse busy timeout.
pub async fn retry_busy_soon(connection: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = connection.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is this open connection's handle, locked for us; the handler is a plain
    // function that keeps no pointer, and stays valid for the life of the program.
    let code = unsafe { libsqlite3_sys::sqlite3_busy_handler(db, Some(retry_soon), std::ptr::null_mut()) };
    if code != libsqlite3_sys::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!("sqlite3_busy_handler returned {code}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_soon_and_gives_up_after_the_lock_wait() {
        assert_eq!(pause(0), Duration::from_micros(50));
        assert_eq!(pause(30), Duration::from_micros(500));
        for attempt in [0, 1, 5, 10, 11, 1_000] {
            let added: Duration = (0..attempt).map(pause).sum();
            assert_eq!(waited_before(attempt), added, "attempt {attempt}");
        }
        let last = (0..).find(|a| waited_before(*a) >= LOCK_WAIT).unwrap();
        assert_eq!(retry_soon(std::ptr::null_mut(), c_int::try_from(last).unwrap()), 0);
        assert!(waited_before(last - 1) < LOCK_WAIT);
    }
}
