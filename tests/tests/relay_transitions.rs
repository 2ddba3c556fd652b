//! What the relay does with each outcome, on SQLite and on PostgreSQL, with the clock held by
//! the test: backoff, jitter, max retries, permanent errors, unknown publishers, scheduled
//! events, leases and fencing, poison events, unhealthy publishers.

use std::sync::Arc;
use std::time::Duration;

use broadcaster::config::Config;
use broadcaster::outbox::{NewEvent, OutboxStore, RowState, Settlement, Status};
use broadcaster::registry::PublisherRegistry;
use broadcaster::relay::{Clock, ManualClock, Relay};
use broadcaster_tests::{RedisServer, TestDatabase, components};
use chrono::{DateTime, Utc};
use redis::Commands;
use serde_json::json;

#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

struct Fixture {
    redis: RedisServer,
    store: OutboxStore,
    relay: Relay,
    clock: Arc<ManualClock>,
    _pg: Option<TestDatabase>,
    _dir: tempfile::TempDir,
}

const T0: &str = "2026-11-29T10:00:00Z";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(T0).unwrap().to_utc()
}

async fn fixture(db: Db, relay: &str) -> Fixture {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = match db {
        Db::Sqlite => (format!("sqlite://{}", dir.path().join("outbox.db").display()), None),
        Db::Postgres => {
            let pg = TestDatabase::create().await;
            (pg.url().to_string(), Some(pg))
        }
    };
    let text = format!(
        r#"
        [outbox]
        url = "{url}"
        [relay]
        {relay}
        [publishers.default]
        backend = "redis-stream"
        [publishers.default.options]
        host = "127.0.0.1"
        port = {port}
        connect_timeout = 1
        socket_timeout = 1
        [publishers.scripted]
        component = "{scripted}"
        [publishers.scripted.options]
        stream_name = "scripted"
        [publishers.scripted.grants]
        redis = {{ host = "127.0.0.1", port = {port}, streams = ["scripted"], connect_timeout = 1, socket_timeout = 1 }}
        "#,
        port = redis.port(),
        scripted = components::SCRIPTED,
    );
    let config = Config::from_toml(&text, "relay.toml".as_ref(), Vec::new()).unwrap();
    let store = OutboxStore::connect(&config.outbox.url).await.unwrap();
    assert!(store.migrate().await.unwrap());
    let registry = Arc::new(PublisherRegistry::build(&config, None).await.unwrap());
    let clock = Arc::new(ManualClock::new(t0()));
    let relay = Relay::new(store.clone(), registry, &config.relay).with_clock(clock.clone());
    relay.refresh_health().await;
    Fixture { redis, store, relay, clock, _pg: pg, _dir: dir }
}

impl Fixture {
    async fn enqueue(&self, events: Vec<NewEvent>) -> Vec<String> {
        self.store.enqueue(&events, self.clock.now()).await.unwrap()
    }

    async fn row(&self, id: &str) -> RowState {
        self.store.find(&[id.to_string()]).await.unwrap().pop().expect("row exists")
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn stream_len(&self, stream: &str) -> usize {
        self.redis.client().xlen(stream).unwrap()
    }
}

fn scripted(outcome: &str) -> NewEvent {
    NewEvent::new("test.event", "/tests").publisher("scripted").data(json!({"outcome": outcome, "message": outcome}))
}

const NO_JITTER: &str = "retry_base = \"1m\"\nretry_cap = \"1h\"\nretry_jitter = 0.0";

#[tokio::test]
async fn transient_failures_back_off_two_to_the_n_minutes_then_fail_after_max_retries() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, NO_JITTER).await;
        let id = f.enqueue(vec![scripted("transient").max_retries(3)]).await.remove(0);

        let report = f.relay.run_batch(100).await.unwrap();
        assert_eq!((report.claimed, report.retried), (1, 1), "{db:?}");
        let row = f.row(&id).await;
        assert_eq!((row.status, row.retry_count), (Status::Retry, 1), "{db:?}");
        assert_eq!(row.scheduled_at, t0() + chrono::Duration::minutes(2), "{db:?}: 2^1 minutes");
        assert!(row.last_error.contains("transient"), "{db:?}: {}", row.last_error);

        // Not due a microsecond early.
        f.advance(Duration::from_secs(120) - Duration::from_micros(1));
        assert_eq!(f.relay.run_batch(100).await.unwrap().claimed, 0, "{db:?}");
        f.advance(Duration::from_micros(1));
        f.relay.run_batch(100).await.unwrap();
        let row = f.row(&id).await;
        assert_eq!((row.status, row.retry_count), (Status::Retry, 2), "{db:?}");
        assert_eq!(row.scheduled_at, t0() + chrono::Duration::minutes(2 + 4), "{db:?}: 2^2 minutes later");

        f.advance(Duration::from_secs(240));
        f.relay.run_batch(100).await.unwrap();
        let row = f.row(&id).await;
        assert_eq!((row.status, row.retry_count), (Status::Failed, 3), "{db:?}: third attempt was the last");
        assert!(row.last_error.contains("gave up after 3 attempts"), "{db:?}: {}", row.last_error);

        f.advance(Duration::from_secs(3600));
        assert_eq!(f.relay.run_batch(100).await.unwrap().claimed, 0, "{db:?}: failed events stay failed");
    }
}

#[tokio::test]
async fn jitter_only_shortens_the_backoff_within_its_fraction() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, "retry_base = \"1m\"\nretry_jitter = 0.5").await;
        let ids = f.enqueue((0..20).map(|_| scripted("transient").max_retries(5)).collect()).await;
        f.relay.run_batch(100).await.unwrap();
        let rows = f.store.find(&ids).await.unwrap();
        let delays: Vec<i64> = rows.iter().map(|r| (r.scheduled_at - t0()).num_milliseconds()).collect();
        assert!(delays.iter().all(|d| (60_000..=120_000).contains(d)), "{db:?}: {delays:?}");
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "{db:?}: jitter spreads retries: {delays:?}");
    }
}

#[tokio::test]
async fn a_permanent_error_fails_the_event_at_once() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, NO_JITTER).await;
        let id = f.enqueue(vec![scripted("permanent")]).await.remove(0);
        let report = f.relay.run_batch(100).await.unwrap();
        assert_eq!(report.failed, 1);
        let row = f.row(&id).await;
        assert_eq!((row.status, row.retry_count), (Status::Failed, 0), "{db:?}");
        assert_eq!(row.last_error, "permanent: permanent", "{db:?}");
    }
}

#[tokio::test]
async fn an_unknown_publisher_fails_the_event_at_once_naming_it() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, NO_JITTER).await;
        let id = f.enqueue(vec![NewEvent::new("t", "/s").publisher("nobody")]).await.remove(0);
        f.relay.run_batch(100).await.unwrap();
        let row = f.row(&id).await;
        assert_eq!(row.status, Status::Failed, "{db:?}");
        assert!(row.last_error.contains("no publisher named `nobody`"), "{db:?}: {}", row.last_error);
    }
}

#[tokio::test]
async fn an_event_scheduled_in_the_future_is_not_published_early() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, NO_JITTER).await;
        let at = t0() + chrono::Duration::hours(1);
        let id = f.enqueue(vec![NewEvent::new("later", "/s").scheduled_at(at)]).await.remove(0);
        assert_eq!(f.relay.run_batch(100).await.unwrap().claimed, 0);
        f.advance(Duration::from_secs(3600) - Duration::from_micros(1));
        assert_eq!(f.relay.run_batch(100).await.unwrap().claimed, 0, "{db:?}");
        assert_eq!(f.stream_len("events"), 0);
        f.advance(Duration::from_micros(1));
        assert_eq!(f.relay.run_batch(100).await.unwrap().published, 1, "{db:?}");
        let row = f.row(&id).await;
        assert_eq!((row.status, row.published_at), (Status::Published, Some(at)), "{db:?}");
        assert_eq!(f.stream_len("events"), 1);
    }
}

#[tokio::test]
async fn a_poison_event_never_blocks_the_others() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, NO_JITTER).await;
        let mut events = vec![scripted("transient").max_retries(100)];
        events.extend((0..9).map(|_| scripted("ok")));
        let ids = f.enqueue(events).await;
        // Batches of 2: the poison event is the first due; the rest still get through.
        for _ in 0..6 {
            f.relay.run_batch(2).await.unwrap();
        }
        let rows = f.store.find(&ids).await.unwrap();
        let published = rows.iter().filter(|r| r.status == Status::Published).count();
        assert_eq!(published, 9, "{db:?}");
        assert_eq!(f.stream_len("scripted"), 9);
        assert_eq!(f.row(&ids[0]).await.status, Status::Retry, "{db:?}");
    }
}

#[tokio::test]
async fn an_expired_lease_is_taken_back_and_the_old_worker_is_fenced_off() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, &format!("{NO_JITTER}\nlease_timeout = \"30s\"")).await;
        let id = f.enqueue(vec![NewEvent::new("t", "/s")]).await.remove(0);
        // Worker A claims the event, then stalls.
        let stale = f.store.claim(f.clock.now(), 10, &[]).await.unwrap();
        assert_eq!(stale.events.len(), 1);
        assert_eq!(f.relay.run_batch(10).await.unwrap().claimed, 0, "{db:?}: a leased row is not claimed again");
        f.advance(Duration::from_secs(29));
        assert_eq!(f.relay.reclaim_expired().await.unwrap(), 0, "{db:?}: the lease still holds");
        f.advance(Duration::from_secs(2));
        assert_eq!(f.relay.reclaim_expired().await.unwrap(), 1, "{db:?}");
        // Worker B publishes it.
        assert_eq!(f.relay.run_batch(10).await.unwrap().published, 1, "{db:?}");
        // Worker A wakes up and tries to record a failure: fenced, nothing changes.
        let late = vec![(id.clone(), Settlement::Failed { retry_count: 9, error: "stale".into() })];
        let updated = f.store.settle(stale.token, f.clock.now(), &late).await.unwrap();
        assert_eq!(updated, 0, "{db:?}");
        let row = f.row(&id).await;
        assert_eq!((row.status, row.retry_count, row.last_error.as_str()), (Status::Published, 0, ""), "{db:?}");
    }
}

#[tokio::test]
async fn an_unhealthy_publisher_keeps_its_events_waiting_without_spending_retries() {
    for db in [Db::Sqlite, Db::Postgres] {
        let mut f = fixture(db, NO_JITTER).await;
        let waiting = f.enqueue((0..3).map(|i| NewEvent::new(format!("w{i}"), "/s").max_retries(1)).collect()).await;
        let other = f.enqueue(vec![NewEvent::new("other", "/s").publisher("nobody")]).await.remove(0);
        f.redis.stop();
        f.relay.refresh_health().await;
        assert!(f.relay.health().is_down("default"));
        for _ in 0..5 {
            f.relay.run_batch(100).await.unwrap();
            f.advance(Duration::from_secs(3600));
        }
        // The default publisher's events were never claimed; the others went on.
        for row in f.store.find(&waiting).await.unwrap() {
            assert_eq!((row.status, row.retry_count), (Status::Pending, 0), "{db:?}");
        }
        assert_eq!(f.row(&other).await.status, Status::Failed);
        f.redis.restart();
        f.relay.refresh_health().await;
        assert_eq!(f.relay.run_batch(100).await.unwrap().published, 3, "{db:?}");
    }
}

#[tokio::test]
async fn a_publish_failing_because_redis_just_went_down_releases_the_batch() {
    for db in [Db::Sqlite, Db::Postgres] {
        let mut f = fixture(db, NO_JITTER).await;
        let ids = f.enqueue((0..5).map(|i| NewEvent::new(format!("e{i}"), "/s").max_retries(1)).collect()).await;
        // Redis goes down after the last health check: the publish fails, the relay checks
        // health on the spot, and puts the events back without spending their single retry.
        f.redis.stop();
        let report = f.relay.run_batch(100).await.unwrap();
        assert_eq!((report.released, report.failed, report.retried), (5, 0, 0), "{db:?}");
        for row in f.store.find(&ids).await.unwrap() {
            assert_eq!((row.status, row.retry_count), (Status::Pending, 0), "{db:?}");
        }
        assert!(f.relay.health().is_down("default"));
    }
}

#[tokio::test]
async fn a_claim_for_one_publisher_takes_only_its_events_oldest_first() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, NO_JITTER).await;
        let mut events: Vec<NewEvent> =
            (0..150).map(|i| NewEvent::new(format!("other{i}"), "/s").publisher("scripted")).collect();
        events.extend((0..5).map(|i| NewEvent::new(format!("mine{i}"), "/s")));
        events.push(NewEvent::new("mine-named", "/s").publisher("default"));
        f.enqueue(events).await;
        let claim = f.store.claim_for(f.clock.now(), 4, ["", "default"]).await.unwrap();
        let types: Vec<&str> = claim.events.iter().map(|e| e.event.event_type.as_str()).collect();
        assert_eq!(types, ["mine0", "mine1", "mine2", "mine3"], "{db:?}");
        let rest = f.store.claim_for(f.clock.now(), 100, ["", "default"]).await.unwrap();
        let types: Vec<&str> = rest.events.iter().map(|e| e.event.event_type.as_str()).collect();
        assert_eq!(types, ["mine4", "mine-named"], "{db:?}");
        let others = f.store.claim_for(f.clock.now(), 100, ["scripted", "scripted"]).await.unwrap();
        assert_eq!(others.events.len(), 100, "{db:?}");
        assert_eq!(others.events[0].event.event_type, "other0");
    }
}

#[tokio::test]
async fn the_names_with_waiting_events_are_found_by_index_seeks() {
    for db in [Db::Sqlite, Db::Postgres] {
        let f = fixture(db, NO_JITTER).await;
        assert!(f.store.publishers_with_work().await.unwrap().is_empty(), "{db:?}");
        let mut events: Vec<NewEvent> = (0..50).map(|_| NewEvent::new("t", "/s").publisher("b")).collect();
        events.push(NewEvent::new("t", "/s"));
        events.push(scripted("transient").max_retries(5));
        f.enqueue(events).await;
        f.store.claim_for(f.clock.now(), 100, ["scripted", "scripted"]).await.unwrap();
        let mut names = f.store.publishers_with_work().await.unwrap();
        names.sort();
        assert_eq!(names, ["", "b"], "{db:?}: processing rows are not waiting");
    }
}
