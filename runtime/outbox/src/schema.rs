//! The `outbox_events` table exactly as django-broadcaster 0.1.1's migration `0001_initial`
//! creates it (the statements below are Django 5.2's `sqlmigrate` output), so a table made
//! by Broadcaster and one made by Django are the same table.

/// The columns Broadcaster reads and writes; a table without one of them is refused.
pub const COLUMNS: &[&str] = &[
    "id",
    "spec_version",
    "event_type",
    "source",
    "subject",
    "data_content_type",
    "data_schema",
    "data",
    "status",
    "created_at",
    "updated_at",
    "scheduled_at",
    "published_at",
    "retry_count",
    "max_retries",
    "last_error",
    "publisher_backend",
    "publisher_config",
];

/// PostgreSQL: `python manage.py sqlmigrate django_broadcaster 0001` (its `_like` indexes
/// last).
pub const POSTGRES_DDL: &[&str] = &ddl::<9>(POSTGRES_TABLE, &[&DJANGO_INDEXES, &POSTGRES_LIKE_INDEXES]);

/// SQLite: `python manage.py sqlmigrate django_broadcaster 0001`.
pub const SQLITE_DDL: &[&str] = &ddl::<7>(SQLITE_TABLE, &[&DJANGO_INDEXES]);

const POSTGRES_TABLE: &str = r#"CREATE TABLE "outbox_events" ("id" uuid NOT NULL PRIMARY KEY, "spec_version" varchar(10) NOT NULL, "event_type" varchar(255) NOT NULL, "source" varchar(255) NOT NULL, "subject" varchar(255) NOT NULL, "data_content_type" varchar(100) NOT NULL, "data_schema" varchar(200) NOT NULL, "data" jsonb NULL, "status" varchar(20) NOT NULL, "created_at" timestamp with time zone NOT NULL, "updated_at" timestamp with time zone NOT NULL, "scheduled_at" timestamp with time zone NOT NULL, "published_at" timestamp with time zone NULL, "retry_count" integer NOT NULL CHECK ("retry_count" >= 0), "max_retries" integer NOT NULL CHECK ("max_retries" >= 0), "last_error" text NOT NULL, "publisher_backend" varchar(100) NOT NULL, "publisher_config" jsonb NOT NULL)"#;

const SQLITE_TABLE: &str = r#"CREATE TABLE "outbox_events" ("id" char(32) NOT NULL PRIMARY KEY, "spec_version" varchar(10) NOT NULL, "event_type" varchar(255) NOT NULL, "source" varchar(255) NOT NULL, "subject" varchar(255) NOT NULL, "data_content_type" varchar(100) NOT NULL, "data_schema" varchar(200) NOT NULL, "data" text NULL CHECK ((JSON_VALID("data") OR "data" IS NULL)), "status" varchar(20) NOT NULL, "created_at" datetime NOT NULL, "updated_at" datetime NOT NULL, "scheduled_at" datetime NOT NULL, "published_at" datetime NULL, "retry_count" integer unsigned NOT NULL CHECK ("retry_count" >= 0), "max_retries" integer unsigned NOT NULL CHECK ("max_retries" >= 0), "last_error" text NOT NULL, "publisher_backend" varchar(100) NOT NULL, "publisher_config" text NOT NULL CHECK ((JSON_VALID("publisher_config") OR "publisher_config" IS NULL)))"#;

/// Django's indexes: the same statements on both databases.
const DJANGO_INDEXES: [&str; 6] = [
    r#"CREATE INDEX "outbox_events_event_type_be2433af" ON "outbox_events" ("event_type")"#,
    r#"CREATE INDEX "outbox_events_status_86c5cced" ON "outbox_events" ("status")"#,
    r#"CREATE INDEX "outbox_events_created_at_c16d9c3f" ON "outbox_events" ("created_at")"#,
    r#"CREATE INDEX "outbox_events_scheduled_at_6a2d7649" ON "outbox_events" ("scheduled_at")"#,
    r#"CREATE INDEX "outbox_even_status_83a3ef_idx" ON "outbox_events" ("status", "scheduled_at")"#,
    r#"CREATE INDEX "outbox_even_event_t_fc32b0_idx" ON "outbox_events" ("event_type", "created_at")"#,
];

/// PostgreSQL's extra `varchar_pattern_ops` indexes for `LIKE` on the indexed varchar columns.
const POSTGRES_LIKE_INDEXES: [&str; 2] = [
    r#"CREATE INDEX "outbox_events_event_type_be2433af_like" ON "outbox_events" ("event_type" varchar_pattern_ops)"#,
    r#"CREATE INDEX "outbox_events_status_86c5cced_like" ON "outbox_events" ("status" varchar_pattern_ops)"#,
];

/// `table` followed by every statement of `parts`, as an array of exactly `N` statements
/// (checked when the constant is evaluated).
const fn ddl<const N: usize>(table: &'static str, parts: &[&[&'static str]]) -> [&'static str; N] {
    let mut statements = [table; N];
    let mut filled = 1;
    let mut part = 0;
    while part < parts.len() {
        let mut i = 0;
        while i < parts[part].len() {
            statements[filled] = parts[part][i];
            filled += 1;
            i += 1;
        }
        part += 1;
    }
    assert!(filled == N, "N must be the number of statements");
    statements
}

/// The columns of [`COLUMNS`] missing from `present`, comma-separated, or `None`.
pub fn missing_columns(present: &[String]) -> Option<String> {
    let missing: Vec<&str> = COLUMNS.iter().copied().filter(|c| !present.iter().any(|p| p == c)).collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Broadcaster's one addition to Django's schema: lets the relay claim one publisher's due
/// events by an index range (`status, publisher_backend, scheduled_at`) however large other
/// publishers' backlogs are. `broadcaster migrate` creates it on new and existing tables; a
/// table without it works the same, only with slower per-publisher claims.
pub const CLAIM_INDEX: &str = r#"CREATE INDEX IF NOT EXISTS "outbox_events_broadcaster_claim_idx" ON "outbox_events" ("status", "publisher_backend", "scheduled_at")"#;

/// Broadcaster's second addition: the `failed` rows by `updated_at`, so that the status page
/// finds the most recent failures without reading every failed row. Partial: only `failed`
/// rows are in it, so the relay's writes to other rows do not maintain it. `broadcaster
/// migrate` creates it like [`CLAIM_INDEX`].
pub const FAILED_INDEX: &str = r#"CREATE INDEX IF NOT EXISTS "outbox_events_broadcaster_failed_idx" ON "outbox_events" ("updated_at") WHERE "status" = 'failed'"#;

/// How much of a failed row's `last_error` [`RECENT_FAILED`] reads.
pub const FAILED_ERROR_CHARS: i32 = 1000;

/// The `$1` most recently failed rows, newest first (served by [`FAILED_INDEX`]): id,
/// publisher, type, retry count, `updated_at` (as stored), the first `$2` characters of
/// `last_error` (bind [`FAILED_ERROR_CHARS`], as an `i32`).
pub const RECENT_FAILED: &str = "SELECT CAST(id AS TEXT), CAST(publisher_backend AS TEXT), CAST(event_type AS TEXT), \
     retry_count, updated_at, substr(last_error, 1, $2) \
     FROM outbox_events WHERE status = 'failed' ORDER BY updated_at DESC LIMIT $1";

/// The side table for the events' CloudEvents extension attributes on SQLite
/// ([`super::extensions`]): Broadcaster's, not Django's; `broadcaster migrate` creates it when
/// missing. Its rows go with their event (`ON DELETE CASCADE`, enforced on connections with
/// `PRAGMA foreign_keys = ON`: Django's and Broadcaster's).
pub const SQLITE_EXTENSIONS_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "broadcaster_event_extensions" ("event_id" char(32) NOT NULL REFERENCES "outbox_events" ("id") ON DELETE CASCADE, "name" varchar(20) NOT NULL, "value" text NOT NULL, PRIMARY KEY ("event_id", "name")) WITHOUT ROWID"#;

/// The same on PostgreSQL.
pub const POSTGRES_EXTENSIONS_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "broadcaster_event_extensions" ("event_id" uuid NOT NULL REFERENCES "outbox_events" ("id") ON DELETE CASCADE, "name" varchar(20) NOT NULL, "value" text NOT NULL, PRIMARY KEY ("event_id", "name"))"#;

/// The `publisher_backend` values that have `pending` or `retry` rows, by a loose index scan
/// (one index seek per distinct name, cheap however many rows wait). The same on both
/// databases.
pub const PUBLISHERS_WITH_WORK: &str = "WITH RECURSIVE names(status, name) AS ( \
     SELECT 'pending', (SELECT min(publisher_backend) FROM outbox_events WHERE status = 'pending') \
     UNION ALL \
     SELECT 'retry', (SELECT min(publisher_backend) FROM outbox_events WHERE status = 'retry') \
     UNION ALL \
     SELECT status, (SELECT min(o.publisher_backend) FROM outbox_events o \
         WHERE o.status = names.status AND o.publisher_backend > names.name) \
     FROM names WHERE name IS NOT NULL) \
 SELECT DISTINCT name FROM names WHERE name IS NOT NULL";

// Statements the same on every database (`$n` parameters: sqlx reads them on SQLite too).
// Times are bound as each database stores them (SQLite: Django's text).

/// Back to `pending` (or `retry`, when it has failed before) for rows `processing` since before
/// `$2`, with `updated_at` = `$1`; no attempt spent.
pub const RECLAIM_EXPIRED: &str = "UPDATE outbox_events \
     SET status = CASE WHEN retry_count > 0 THEN 'retry' ELSE 'pending' END, updated_at = $1 \
     WHERE status = 'processing' AND updated_at < $2";

/// Rows per (publisher_backend, status).
pub const COUNT_BY_STATUS: &str = "SELECT CAST(publisher_backend AS TEXT), CAST(status AS TEXT), count(*) \
     FROM outbox_events GROUP BY 1, 2";

/// Rows waiting or claimed, per publisher and status, with the oldest `scheduled_at` of each
/// (served by the claim index: published rows are not read).
pub const BACKLOG: &str = "SELECT CAST(publisher_backend AS TEXT), CAST(status AS TEXT), count(*), min(scheduled_at) \
     FROM outbox_events WHERE status IN ('pending', 'retry', 'processing') GROUP BY 1, 2";

/// The oldest `scheduled_at` among rows due at `$1`.
pub const OLDEST_DUE: &str =
    "SELECT min(scheduled_at) FROM outbox_events WHERE status IN ('pending', 'retry') AND scheduled_at <= $1";

/// Rows `processing` since before `$1`.
pub const EXPIRED_LEASES: &str = "SELECT count(*) FROM outbox_events WHERE status = 'processing' AND updated_at < $1";

/// Every `failed` row back to `pending`, due at `$1`, retries reset; returns their ids.
pub const RETRY_FAILED: &str = "UPDATE outbox_events \
     SET status = 'pending', retry_count = 0, scheduled_at = $1, updated_at = $1 WHERE status = 'failed' RETURNING id";

/// Deletes up to `$2` rows published before `$1`.
pub const PRUNE_BATCH: &str = "DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events \
     WHERE status = 'published' AND published_at < $1 LIMIT $2)";

/// Rows published before `$1`.
pub const COUNT_PRUNABLE: &str = "SELECT count(*) FROM outbox_events WHERE status = 'published' AND published_at < $1";

/// The channel the notify trigger signals new events on.
pub const NOTIFY_CHANNEL: &str = "broadcaster_outbox";

/// A statement-level trigger that wakes relays (`LISTEN broadcaster_outbox`) whenever rows are
/// inserted, by Broadcaster, Django or anyone else, while a relay waits for them. `broadcaster
/// migrate` installs it, also on a table Django made (Django does not mind triggers). A waiting
/// relay holds the advisory lock [`WAKEUP_LOCK`](super::WAKEUP_LOCK); the trigger sends
/// `pg_notify` when it cannot take that lock shared, and otherwise holds it shared to the end
/// of its transaction, so that no relay starts waiting before the rows are committed (see
/// `pg_wakeup`). One notification per inserting statement at most, deduplicated per
/// transaction.
pub const POSTGRES_NOTIFY_TRIGGER: &[&str] = &[
    r#"CREATE OR REPLACE FUNCTION "broadcaster_outbox_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- 7093854827148697971 = 0x6272_6f61_6463_6173, the lock a waiting relay holds.
    IF NOT pg_try_advisory_xact_lock_shared(7093854827148697971) THEN
        PERFORM pg_notify('broadcaster_outbox', '');
    END IF;
    RETURN NULL;
END
$$"#,
    r#"DROP TRIGGER IF EXISTS "broadcaster_outbox_notify" ON "outbox_events""#,
    r#"CREATE TRIGGER "broadcaster_outbox_notify" AFTER INSERT ON "outbox_events" FOR EACH STATEMENT EXECUTE FUNCTION "broadcaster_outbox_notify"()"#,
];
