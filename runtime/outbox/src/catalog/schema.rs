//! The catalog's tables, per database (`broadcaster migrate` creates them when missing). Times
//! are RFC 3339 text and JSON is text on both databases, so every statement of
//! [`super::Catalog`] reads the same on both.

/// SQLite's catalog tables.
pub const SQLITE_DDL: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_components" ("sha256" text NOT NULL PRIMARY KEY, "bytes" blob NOT NULL, "size" integer NOT NULL, "contract" text NOT NULL, "imports" text NOT NULL, "created_at" text NOT NULL, "created_by" text NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_publisher_versions" ("name" text NOT NULL, "version" integer NOT NULL, "definition" text NOT NULL, "component" text NULL REFERENCES "broadcaster_components" ("sha256"), "created_at" text NOT NULL, "created_by" text NOT NULL, PRIMARY KEY ("name", "version"))"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_publishers" ("name" text NOT NULL PRIMARY KEY, "version" integer NOT NULL, "definition" text NOT NULL, "component" text NULL REFERENCES "broadcaster_components" ("sha256"), "updated_at" text NOT NULL, "updated_by" text NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_tokens" ("name" text NOT NULL PRIMARY KEY, "sha256" text NOT NULL UNIQUE, "publishers" text NOT NULL, "rate" real NULL, "burst" integer NULL, "created_at" text NOT NULL, "created_by" text NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_catalog_changes" ("seq" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "kind" text NOT NULL, "name" text NOT NULL, "at" text NOT NULL)"#,
];

/// PostgreSQL's catalog tables.
pub const POSTGRES_DDL: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_components" ("sha256" text NOT NULL PRIMARY KEY, "bytes" bytea NOT NULL, "size" bigint NOT NULL, "contract" text NOT NULL, "imports" text NOT NULL, "created_at" text NOT NULL, "created_by" text NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_publisher_versions" ("name" text NOT NULL, "version" bigint NOT NULL, "definition" text NOT NULL, "component" text NULL REFERENCES "broadcaster_components" ("sha256"), "created_at" text NOT NULL, "created_by" text NOT NULL, PRIMARY KEY ("name", "version"))"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_publishers" ("name" text NOT NULL PRIMARY KEY, "version" bigint NOT NULL, "definition" text NOT NULL, "component" text NULL REFERENCES "broadcaster_components" ("sha256"), "updated_at" text NOT NULL, "updated_by" text NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_tokens" ("name" text NOT NULL PRIMARY KEY, "sha256" text NOT NULL UNIQUE, "publishers" text NOT NULL, "rate" double precision NULL, "burst" bigint NULL, "created_at" text NOT NULL, "created_by" text NOT NULL)"#,
    r#"CREATE TABLE IF NOT EXISTS "broadcaster_catalog_changes" ("seq" bigserial NOT NULL PRIMARY KEY, "kind" text NOT NULL, "name" text NOT NULL, "at" text NOT NULL)"#,
];

/// The PostgreSQL channel a change notifies (`NOTIFY broadcaster_catalog`), sent on commit.
pub const POSTGRES_CHANNEL: &str = "broadcaster_catalog";

/// The statement that notifies [`POSTGRES_CHANNEL`].
pub const POSTGRES_NOTIFY: &str = "NOTIFY broadcaster_catalog";

/// The advisory lock a catalog write holds on PostgreSQL for its transaction: writes one at
/// a time, so changes are numbered in the order they commit and a relay that read up to
/// change N never finds an N−1 committed later. ("catalogs" in ASCII, both halves < 2³¹.)
pub const POSTGRES_WRITE_LOCK: i64 = 0x6361_7461_6c6f_6773;
const _: () = assert!(POSTGRES_WRITE_LOCK >> 32 < 1 << 31 && POSTGRES_WRITE_LOCK & 0xffff_ffff < 1 << 31);
