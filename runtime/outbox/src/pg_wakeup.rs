//! How a relay on PostgreSQL learns of new events without making producers wait for it.
//!
//! The notify trigger (`schema::POSTGRES_NOTIFY_TRIGGER`) sends `NOTIFY` only while a relay is
//! waiting for events: a waiting relay holds the advisory lock [`WAKEUP_LOCK`] on a connection
//! of its own, and the trigger notifies when it cannot take that lock shared. `NOTIFY` takes a
//! database-wide lock from a transaction's commit to its end, so every producer committing with
//! it waits for the one before; without a waiting relay the trigger only takes the lock shared,
//! which producers never wait for. A relay notified of 1,500 commits a second or more, or
//! that has found events at every look for [`BUSY_FOR`], therefore gives the lock up and polls every [`POLL_UNDER_LOAD`] instead, and takes it again
//! once three polls in a row find nothing. Below that rate a notification wakes the relay
//! sooner than a poll would, and `NOTIFY` costs producers little.
//!
//! No event is missed in between: a producer that did not notify holds the lock shared until
//! its transaction ends, so a relay takes the lock (without waiting: `pg_try_advisory_lock`)
//! only when no such transaction is open, and then looks for events once more before it waits.
//! While another relay holds the lock (it waits, so producers notify, which wakes every
//! listener) this one waits too, checking again every [`SHARED_WAIT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres};
use tokio::sync::Mutex;

use super::schema;

/// The advisory lock (a `bigint` key) a waiting relay holds: "broadcas" in ASCII, both halves
/// below 2³¹ so that `pg_locks` shows them as they are.
pub const WAKEUP_LOCK: i64 = 0x6272_6f61_6463_6173;
const _: () = assert!(WAKEUP_LOCK >> 32 < 1 << 31 && WAKEUP_LOCK & 0xffff_ffff < 1 << 31);

/// How often a relay that gave up the lock polls while events keep coming.
pub const POLL_UNDER_LOAD: Duration = Duration::from_millis(1);

/// Polls in a row that find nothing before a polling relay takes the lock again and waits.
const QUIET_POLLS: u32 = 3;

/// Notifications counted per window: at [`BUSY_NOTIFICATIONS`] or more in one the relay gives
/// the lock up and polls. Each notification is one producer's commit; below that rate a
/// notification wakes the relay sooner than a poll would find the event, and `NOTIFY` costs
/// producers little (measured here: about 3,400 commits/s with it).
const NOTIFY_WINDOW: Duration = Duration::from_millis(100);

/// ... that is, at 1,500 commits a second.
const BUSY_NOTIFICATIONS: u32 = 150;

/// A relay that has found events at every look for this long gives the lock up even when it
/// has not read the notifications (it has not waited): it is busy.
const BUSY_FOR: Duration = Duration::from_millis(50);

/// A wait this long for a notification means the relay had a moment with nothing to do.
const IDLE_GAP: Duration = Duration::from_millis(1);

/// Attempts to take the lock that find producers' transactions open, polling every
/// [`POLL_UNDER_LOAD`], before the polls back off (up to 32 ms) for a long transaction.
const LOCK_TRIES_AT_FULL_PACE: u32 = 8;

/// How long a relay relies on another one's lock before it tries to take the lock itself (the
/// other may have given it up to poll, or stopped).
pub const SHARED_WAIT: Duration = Duration::from_millis(100);

/// The relay's side of the wake-up: its `LISTEN` connection and whether it holds the lock.
/// Clones share it.
#[derive(Debug, Clone)]
pub struct PgWakeup(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    pool: PgPool,
    state: Mutex<State>,
    /// Set when a claim found events: the relay is busy, not waiting.
    found_work: AtomicBool,
    /// Since when every look for events has found some (cleared by a poll that found none,
    /// or a wait for a notification of [`IDLE_GAP`] or more).
    busy_since: std::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct State {
    listener: Option<PgListener>,
    mode: Mode,
    /// When the current [`NOTIFY_WINDOW`] began, and the notifications in it.
    window: Option<(Instant, u32)>,
    quiet_polls: u32,
    /// Attempts in a row to take the lock that found producers' transactions open.
    lock_tries: u32,
}

#[derive(Debug, Default)]
enum Mode {
    /// Polling every [`POLL_UNDER_LOAD`]: no producer notifies.
    #[default]
    Polling,
    /// Holding [`WAKEUP_LOCK`] on this connection: producers notify.
    Holding(PoolConnection<Postgres>),
    /// Another relay holds the lock (so producers notify), since then.
    Sharing(Instant),
}

/// What an attempt to take the lock found.
enum Taken {
    Held(PoolConnection<Postgres>),
    /// Another relay holds it.
    ByAnother,
    /// Producers that did not notify are still committing: poll again.
    Busy,
}

impl PgWakeup {
    /// The wake-up of a relay on `pool`; it listens from its first wait.
    pub fn new(pool: PgPool) -> Self {
        Self(Arc::new(Shared {
            pool,
            state: Mutex::default(),
            found_work: AtomicBool::new(false),
            busy_since: std::sync::Mutex::default(),
        }))
    }

    /// Notes that a claim found events; gives the lock up when the relay has been busy for
    /// [`BUSY_FOR`].
    pub fn found_work(&self) {
        self.0.found_work.store(true, Ordering::Relaxed);
        let busy_for = self.0.busy_since.lock().expect("busy_since lock").get_or_insert_with(Instant::now).elapsed();
        if busy_for >= BUSY_FOR
            && let Ok(mut state) = self.0.state.try_lock()
            && matches!(state.mode, Mode::Holding(_))
        {
            release(std::mem::take(&mut state.mode));
            state.quiet_polls = 0;
        }
    }

    /// Returns when events may have been written, or after `timeout` (see the module). Returns
    /// whether the relay should look for events now. Cancel-safe: what changes the lock runs
    /// on a task of its own, and waiting for a notification can stop at any point.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let shared = self.0.clone();
        let next = tokio::spawn(async move { shared.next_wait(timeout).await }).await.unwrap_or(Wait::Sleep(timeout));
        match next {
            Wait::LookNow => true,
            Wait::Poll(pause) => {
                tokio::time::sleep(pause).await;
                true
            }
            Wait::Sleep(pause) => {
                tokio::time::sleep(pause).await;
                false
            }
            Wait::Listen(limit) => self.0.listen_for(limit).await,
        }
    }
}

/// What a relay does next while it has nothing to claim.
enum Wait {
    /// Look for events at once.
    LookNow,
    /// Look for events after this pause.
    Poll(Duration),
    /// Wait for a notification this long at most.
    Listen(Duration),
    /// Sleep this long (no notifications: polling by the relay's own schedule).
    Sleep(Duration),
}

impl Shared {
    /// Books the last wait's outcome, takes the lock when polls find nothing, and says how to
    /// wait now.
    async fn next_wait(&self, timeout: Duration) -> Wait {
        let mut state = self.state.lock().await;
        if state.listener.is_none() {
            match self.listen().await {
                Ok(listening) => state.listener = Some(listening),
                Err(err) => tracing::warn!(%err, "cannot LISTEN for new events; polling instead"),
            }
        }
        if state.listener.is_none() {
            release(std::mem::take(&mut state.mode));
            return Wait::Sleep(timeout);
        }
        let busy = self.found_work.swap(false, Ordering::Relaxed);
        if !busy {
            *self.busy_since.lock().expect("busy_since lock") = None;
        }
        if let Mode::Sharing(since) = state.mode {
            if since.elapsed() < SHARED_WAIT {
                return Wait::Listen((SHARED_WAIT - since.elapsed()).min(timeout));
            }
            // The other relay may have given the lock up: try to take it now.
            state.mode = Mode::Polling;
            state.quiet_polls = QUIET_POLLS;
        }
        if matches!(state.mode, Mode::Holding(_)) {
            return Wait::Listen(timeout);
        }
        state.quiet_polls = if busy { 0 } else { state.quiet_polls.saturating_add(1) };
        if busy {
            state.lock_tries = 0;
        }
        drain(&mut state);
        if state.quiet_polls < QUIET_POLLS {
            return Wait::Poll(POLL_UNDER_LOAD.min(timeout));
        }
        match self.take_lock().await {
            Ok(Taken::Held(connection)) => {
                state.mode = Mode::Holding(connection);
                state.window = None;
                state.lock_tries = 0;
                // Producers that did not notify have all committed: look once more, then wait.
                Wait::LookNow
            }
            Ok(Taken::ByAnother) => {
                state.mode = Mode::Sharing(Instant::now());
                state.lock_tries = 0;
                Wait::Listen(SHARED_WAIT.min(timeout))
            }
            Ok(Taken::Busy) => {
                // A long application transaction that inserted keeps the lock from the relay:
                // poll less often while it lasts (its rows are not visible before it commits).
                state.lock_tries = state.lock_tries.saturating_add(1);
                let slower = state.lock_tries.saturating_sub(LOCK_TRIES_AT_FULL_PACE).min(5);
                let pause = POLL_UNDER_LOAD * 2u32.pow(slower);
                Wait::Poll(pause.min(timeout))
            }
            Err(err) => {
                tracing::warn!(%err, "cannot take the wake-up lock; polling instead");
                Wait::Sleep(timeout)
            }
        }
    }

    /// Waits up to `limit` for a notification; gives the lock up when they keep coming at
    /// once. Returns whether one came.
    async fn listen_for(&self, limit: Duration) -> bool {
        let mut state = self.state.lock().await;
        let Some(listener) = state.listener.as_mut() else {
            tokio::time::sleep(limit).await;
            return false;
        };
        let started = Instant::now();
        let notified = tokio::time::timeout(limit, listener.recv()).await;
        if started.elapsed() >= IDLE_GAP {
            // It waited: not busy at every look.
            *self.busy_since.lock().expect("busy_since lock") = None;
        }
        match notified {
            Err(_) => false,
            Ok(Ok(_)) => {
                // A burst of commits is one wake-up.
                let received = 1 + drain(&mut state);
                if matches!(state.mode, Mode::Holding(_)) {
                    let (began, count) = match state.window {
                        Some((began, count)) if began.elapsed() < NOTIFY_WINDOW => (began, count + received),
                        _ => (Instant::now(), received),
                    };
                    state.window = Some((began, count));
                    if count >= BUSY_NOTIFICATIONS {
                        // Events keep coming: poll, and let producers commit without NOTIFY.
                        release(std::mem::take(&mut state.mode));
                        state.quiet_polls = 0;
                    }
                }
                true
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "listening for new events failed; polling until it is back");
                state.listener = None;
                release(std::mem::take(&mut state.mode));
                false
            }
        }
    }

    /// A connection `LISTEN`ing on [`schema::NOTIFY_CHANNEL`]; warns when the table has no
    /// notify trigger (a table `migrate` has not seen since it learnt to install it).
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(schema::NOTIFY_CHANNEL).await?;
        let trigger: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'broadcaster_outbox_notify' \
             AND tgrelid = 'outbox_events'::regclass)",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap_or(false);
        if !trigger {
            tracing::warn!(
                "outbox_events has no broadcaster_outbox_notify trigger: new events are found by polling only; \
                 run `broadcaster migrate` to install it"
            );
        }
        Ok(listener)
    }

    /// Takes [`WAKEUP_LOCK`] on a connection of its own, without waiting.
    async fn take_lock(&self) -> Result<Taken, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let held: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(WAKEUP_LOCK).fetch_one(&mut *connection).await?;
        if held {
            return Ok(Taken::Held(connection));
        }
        let by_another: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' \
             AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1)",
        )
        .bind(WAKEUP_LOCK)
        .fetch_one(&mut *connection)
        .await?;
        Ok(if by_another { Taken::ByAnother } else { Taken::Busy })
    }
}

/// Drops notifications already received (the wake-up they ask for is happening); returns how
/// many.
fn drain(state: &mut State) -> u32 {
    let mut drained = 0;
    if let Some(listener) = state.listener.as_mut() {
        // What has arrived: each `recv` polled once, so it returns at once or not at all.
        while drained < MOST_DRAINED
            && let Some(Ok(_)) = futures::FutureExt::now_or_never(listener.recv())
        {
            drained += 1;
        }
    }
    drained
}

/// Notifications drained at once at most (the rest wait for the next wake-up).
const MOST_DRAINED: u32 = 100_000;

/// Gives [`WAKEUP_LOCK`] up, if `mode` holds it, on a task of its own (it must not be cut
/// halfway).
fn release(mode: Mode) {
    if let Mode::Holding(mut connection) = mode {
        tokio::spawn(async move {
            let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(WAKEUP_LOCK);
            if unlock.execute(&mut *connection).await.is_err() {
                // Closing the connection ends its session, and the lock with it.
                drop(connection.detach());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_tests_the_lock_a_waiting_relay_holds() {
        let function = schema::POSTGRES_NOTIFY_TRIGGER[0];
        assert!(function.contains(&format!("pg_try_advisory_xact_lock_shared({WAKEUP_LOCK})")), "{function}");
    }
}
