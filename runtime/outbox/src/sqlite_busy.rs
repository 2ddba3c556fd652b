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
use std::time::Duration;

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

/// Retries (returns non-zero) until the pauses add up to [`LOCK_WAIT`].
extern "C" fn retry_soon(_: *mut c_void, attempts: c_int) -> c_int {
    let attempt = u32::try_from(attempts).unwrap_or(0);
    if waited_before(attempt) >= LOCK_WAIT {
        return 0;
    }
    std::thread::sleep(pause(attempt));
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
