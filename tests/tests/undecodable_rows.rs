//! Rows the relay cannot read (written by hand, or by something other than Django), mixed into
//! batches of good rows, on SQLite and PostgreSQL: each bad row is marked `failed` on its own
//! with a short `last_error` naming the column, and the rest of its batch is published, both
//! by the lock-step `run_batch` (one global claim) and by `run` (claims per publisher).

use std::sync::Arc;
use std::time::{Duration, Instant};

use broadcaster::config::Config;
use broadcaster::event::now_micros;
use broadcaster::outbox::{NewEvent, OutboxStore, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Relay, RunOptions};
use broadcaster_tests::{OutboxKind, RedisServer, TestOutbox};
use redis::Commands;
use sqlx::Connection;

struct Fixture {
    outbox: TestOutbox,
    redis: RedisServer,
    store: OutboxStore,
    config: Config,
}

/// A row made bad on purpose, and the column its `last_error` must name.
struct BadRow {
    /// The id as stored after the spoiling.
    id: String,
    column: &'static str,
}

async fn fixture(kind: OutboxKind) -> Fixture {
    let redis = RedisServer::start();
    let outbox = TestOutbox::create(kind).await;
    let text = format!("[outbox]\nurl = \"{}\"\n{}", outbox.url(), redis.native_publisher_toml("default"));
    let config = Config::from_toml(&text, "undecodable.toml".as_ref(), Vec::new()).unwrap();
    let store = OutboxStore::connect(outbox.url()).await.unwrap();
    assert!(store.migrate().await.unwrap());
    Fixture { outbox, redis, store, config }
}

impl Fixture {
    async fn relay(&self) -> Relay {
        let registry = Arc::new(PublisherRegistry::build(&self.config, None).await.unwrap());
        let relay = Relay::new(self.store.clone(), registry, &self.config.relay);
        relay.refresh_health().await;
        relay
    }

    async fn enqueue(&self, count: usize) -> Vec<String> {
        let events: Vec<NewEvent> =
            (0..count).map(|i| NewEvent::new("order.created", "/shop").data(serde_json::json!({"order": i}))).collect();
        self.store.enqueue(&events, now_micros()).await.unwrap()
    }

    /// The id as this database stores it.
    fn stored_id(&self, id: &str) -> String {
        match self.outbox.kind() {
            OutboxKind::Sqlite => id.replace('-', ""),
            OutboxKind::Postgres => id.to_string(),
        }
    }

    /// Runs `statement` on a connection of its own (SQLite: with the table's JSON checks off,
    /// as a hand-made table would have none).
    async fn corrupt(&self, statement: String) {
        match self.outbox.kind() {
            OutboxKind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(self.outbox.url()).await.unwrap();
                sqlx::query("PRAGMA ignore_check_constraints = ON").execute(&mut conn).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.unwrap();
            }
            OutboxKind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(self.outbox.url()).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// Makes the row `id` (as the API returned it) bad with `set`; `column` is what is wrong.
    async fn spoil(&self, id: &str, column: &'static str, set: &str) -> BadRow {
        let stored = self.stored_id(id);
        self.corrupt(format!("UPDATE outbox_events SET {set} WHERE id = '{stored}'")).await;
        BadRow { id: stored, column }
    }

    /// (status, last_error, retry_count) of the row whose id is stored as `id`, read without
    /// Broadcaster (the id may not be a UUID).
    async fn raw_state(&self, id: &str) -> (String, String, i64) {
        let url = self.outbox.url();
        match self.outbox.kind() {
            OutboxKind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                sqlx::query_as("SELECT status, last_error, retry_count FROM outbox_events WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            OutboxKind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query_as(
                    "SELECT status::text, last_error, retry_count::bigint FROM outbox_events WHERE id::text = $1",
                )
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .unwrap()
            }
        }
    }

    async fn count(&self, status: Status) -> u64 {
        let report = self.store.status(now_micros(), Duration::from_secs(300)).await.unwrap();
        report.counts.iter().filter(|((_, s), _)| *s == status).map(|(_, n)| n).sum()
    }

    fn published_ids(&self) -> Vec<String> {
        let reply: redis::streams::StreamRangeReply = self.redis.client().xrange_all("events").unwrap();
        reply.ids.iter().map(|entry| entry.get::<String>("event_id").unwrap()).collect()
    }

    /// Checks the outcome: every good row published (and in Redis, once), every bad row
    /// `failed` with a short `last_error` naming its column and its `retry_count` kept, nothing
    /// left `processing`.
    async fn assert_bad_rows_failed_alone(&self, good: &[String], bad: &[BadRow], retry_counts: &[(usize, i64)]) {
        let kind = self.outbox.kind();
        let mut published = self.published_ids();
        published.sort();
        let mut expected = good.to_vec();
        expected.sort();
        assert_eq!(published, expected, "{kind:?}: every good row is in the stream, once");
        for row in self.store.find(good).await.unwrap() {
            assert_eq!(row.status, Status::Published, "{kind:?}: {}", row.id);
        }
        for (i, row) in bad.iter().enumerate() {
            let (status, last_error, retry_count) = self.raw_state(&row.id).await;
            assert_eq!(status, "failed", "{kind:?}: {} ({})", row.id, row.column);
            let prefix = format!("cannot read this row: column {}: ", row.column);
            assert!(last_error.starts_with(&prefix), "{kind:?}: {last_error:?} should start with {prefix:?}");
            assert!(last_error.len() < 400, "{kind:?}: last_error is {} bytes: {last_error:?}", last_error.len());
            let kept = retry_counts.iter().find(|(at, _)| *at == i).map_or(0, |(_, n)| *n);
            assert_eq!(retry_count, kept, "{kind:?}: {} keeps its retry_count", row.id);
        }
        assert_eq!(self.count(Status::Processing).await, 0, "{kind:?}: nothing is left processing");
    }
}

/// How rows are made unreadable on each database: (column named in `last_error`, `SET …`, the
/// id the row is stored under afterwards when the spoiling changes it).
fn spoilers(kind: OutboxKind) -> Vec<(&'static str, String, Option<&'static str>)> {
    let set = |column, sql: &str| (column, sql.to_string(), None);
    match kind {
        OutboxKind::Sqlite => vec![
            set("data", "data = 'not json'"),
            set("publisher_config", "publisher_config = '[1,2]', retry_count = 2"),
            set("publisher_config", r#"publisher_config = '"text"'"#),
            set("event_type", "event_type = ''"),
            // A megabyte that is not JSON: the error must not copy it.
            set("data", &format!("data = '{}'", "not json ".repeat(1 << 17))),
            set("created_at", "created_at = 'yesterday'"),
            ("id", "id = 'order-17'".to_string(), Some("order-17")),
        ],
        OutboxKind::Postgres => vec![
            set("publisher_config", r#"publisher_config = '"text"'::jsonb"#),
            set("publisher_config", "publisher_config = '[1,2]'::jsonb, retry_count = 2"),
            set("source", "source = ''"),
            // Valid jsonb, but beyond what a JSON reader of 64-bit floats reads.
            set("data", r#"data = '{"n": 1e400}'::jsonb"#),
        ],
    }
}

/// Enqueues 20 events and spoils every third one (from the second, while there are ways left)
/// the ways a row can be unreadable on this database; returns (good ids, bad rows).
async fn mixed_rows(f: &Fixture) -> (Vec<String>, Vec<BadRow>) {
    let mut good = f.enqueue(20).await;
    let mut bad = Vec::new();
    for (i, (column, set, new_id)) in spoilers(f.outbox.kind()).into_iter().enumerate() {
        let spoiled = good.remove(1 + 2 * i);
        let mut row = f.spoil(&spoiled, column, &set).await;
        if let Some(new_id) = new_id {
            row.id = new_id.to_string();
        }
        bad.push(row);
    }
    (good, bad)
}

/// The spoiling that also sets `retry_count = 2` is the second on each database.
const RETRY_COUNT_KEPT: &[(usize, i64)] = &[(1, 2)];

#[tokio::test]
async fn one_claim_with_unreadable_rows_fails_them_alone_and_publishes_the_rest() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let f = fixture(kind).await;
        let (good, bad) = mixed_rows(&f).await;
        let relay = f.relay().await;

        let report = relay.run_batch(100).await.unwrap();
        assert_eq!(report.claimed, 20, "{kind:?}: {report:?}");
        assert_eq!(report.published, good.len() as u64, "{kind:?}: {report:?}");
        assert_eq!(report.failed, bad.len() as u64, "{kind:?}: {report:?}");
        assert_eq!(report.fenced, 0, "{kind:?}: {report:?}");
        f.assert_bad_rows_failed_alone(&good, &bad, RETRY_COUNT_KEPT).await;

        let again = relay.run_batch(100).await.unwrap();
        assert_eq!(again.claimed, 0, "{kind:?}: failed rows are not claimed again: {again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_relay_fails_unreadable_rows_alone_batch_after_batch() {
    for kind in [OutboxKind::Sqlite, OutboxKind::Postgres] {
        let f = fixture(kind).await;
        let (good, bad) = mixed_rows(&f).await;
        let relay = Arc::new(f.relay().await);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Batches of 4, most with a bad row among good ones.
        let options = RunOptions { batch_size: 4, interval: Duration::from_millis(50), max_iterations: 0 };
        let running = tokio::spawn(relay.run(options, stopped));
        let deadline = Instant::now() + Duration::from_secs(30);
        while f.count(Status::Published).await + f.count(Status::Failed).await < 20 {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: timed out; {:?}",
                f.store.status(now_micros(), Duration::from_secs(300)).await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(true).unwrap();
        let report = running.await.unwrap();
        let totals = report.totals;
        assert_eq!(
            (totals.claimed, totals.published, totals.failed),
            (20, good.len() as u64, bad.len() as u64),
            "{kind:?}: {report:?}"
        );
        assert_eq!(
            (totals.retried, totals.released, totals.fenced, report.errors),
            (0, 0, 0, 0),
            "{kind:?}: {report:?}"
        );
        f.assert_bad_rows_failed_alone(&good, &bad, RETRY_COUNT_KEPT).await;
    }
}
