use serde_json::json;
use sqlx::Connection;

use super::*;

const HEX_ID: &str = "6f1c2b523f3c4d5e9a1b2c3d4e5f6a7b";
const UUID: &str = "6f1c2b52-3f3c-4d5e-9a1b-2c3d4e5f6a7b";

/// A good row as SQLite hands it over: JSON and times as text.
fn text_row() -> StoredRow {
    StoredRow {
        id: HEX_ID.into(),
        spec_version: "1.0".into(),
        event_type: "order.created".into(),
        source: "/shop".into(),
        subject: "order/1".into(),
        data_content_type: "application/json".into(),
        data_schema: String::new(),
        data: Some(JsonColumn::Text(r#"{"order_id": 1}"#.into())),
        created_at: TimeColumn::Text("2026-11-29 10:00:00.123456".into()),
        scheduled_at: TimeColumn::Text("2026-11-29 10:05:00".into()),
        retry_count: 1,
        max_retries: 3,
        publisher_backend: "audit".into(),
        publisher_config: JsonColumn::Text(r#"{"tenant": "a"}"#.into()),
    }
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn rejection(row: StoredRow) -> RejectedRow {
    row.decode().expect_err("the row is rejected")
}

#[test]
fn a_row_stored_as_text_decodes_into_its_event() {
    let claimed = text_row().decode().unwrap();
    let event = &claimed.event;
    assert_eq!(event.id, UUID);
    assert_eq!(
        (event.event_type.as_str(), event.source.as_str(), event.subject.as_str()),
        ("order.created", "/shop", "order/1")
    );
    assert_eq!(event.data, Payload::Json(json!({"order_id": 1})));
    assert_eq!(Value::Object(event.publisher_config.clone()), json!({"tenant": "a"}));
    assert_eq!(event.created_at, time("2026-11-29T10:00:00.123456Z").fixed_offset());
    assert_eq!(claimed.scheduled_at, time("2026-11-29T10:05:00Z"));
    assert_eq!((event.retry_count, event.max_retries, event.publisher_backend.as_str()), (1, 3, "audit"));
}

#[test]
fn a_row_with_parsed_json_and_typed_times_decodes_the_same() {
    let text = text_row().decode().unwrap();
    let typed = StoredRow {
        id: UUID.into(),
        data: Some(JsonColumn::Value(json!({"order_id": 1}))),
        created_at: TimeColumn::Time(time("2026-11-29T10:00:00.123456Z")),
        scheduled_at: TimeColumn::Time(time("2026-11-29T10:05:00Z")),
        publisher_config: JsonColumn::Value(json!({"tenant": "a"})),
        ..text_row()
    };
    assert_eq!(typed.decode().unwrap(), text);
}

#[test]
fn null_data_is_no_data_and_a_null_publisher_config_is_empty() {
    let row = StoredRow { data: None, publisher_config: JsonColumn::Text("null".into()), ..text_row() };
    let event = row.decode().unwrap().event;
    assert_eq!(event.data, Payload::None);
    assert!(event.publisher_config.is_empty());
}

#[test]
fn data_that_is_not_json_rejects_the_row_naming_the_column() {
    let rejected = rejection(StoredRow { data: Some(JsonColumn::Text("not json".into())), ..text_row() });
    assert_eq!(rejected.error, "cannot read this row: column data: not JSON (expected ident at line 1 column 2)");
    assert_eq!((rejected.id.as_str(), rejected.publisher_backend.as_str()), (HEX_ID, "audit"));
}

#[test]
fn a_publisher_config_that_is_not_an_object_rejects_the_row_saying_what_it_is() {
    for (config, kind) in [
        (JsonColumn::Text("[1,2]".into()), "a JSON array"),
        (JsonColumn::Value(json!("text")), "a JSON string"),
        (JsonColumn::Text("7".into()), "a JSON number"),
    ] {
        let rejected = rejection(StoredRow { publisher_config: config, ..text_row() });
        assert_eq!(
            rejected.error,
            format!("cannot read this row: column publisher_config: {kind}, not a JSON object of stream fields")
        );
    }
}

#[test]
fn an_empty_type_or_source_rejects_the_row_as_no_cloud_event() {
    let rejected = rejection(StoredRow { event_type: String::new(), ..text_row() });
    assert_eq!(rejected.error, "cannot read this row: column event_type: empty; a CloudEvent needs a type");
    let rejected = rejection(StoredRow { source: String::new(), ..text_row() });
    assert_eq!(rejected.error, "cannot read this row: column source: empty; a CloudEvent needs a source");
}

#[test]
fn an_id_that_is_not_a_uuid_rejects_the_row_under_its_id_as_stored() {
    let rejected = rejection(StoredRow { id: "evt-1".into(), ..text_row() });
    assert_eq!(rejected.id, "evt-1");
    assert_eq!(rejected.error, r#"cannot read this row: column id: not a UUID: "evt-1""#);
}

#[test]
fn a_time_that_is_not_a_time_is_quoted_but_never_more_than_200_characters() {
    let rejected = rejection(StoredRow { created_at: TimeColumn::Text("yesterday".into()), ..text_row() });
    assert_eq!(rejected.error, r#"cannot read this row: column created_at: not a time: "yesterday""#);

    let huge = "9".repeat(1 << 20);
    let rejected = rejection(StoredRow { scheduled_at: TimeColumn::Text(huge), ..text_row() });
    assert!(rejected.error.starts_with(r#"cannot read this row: column scheduled_at: not a time: "9999"#));
    assert!(rejected.error.ends_with(r#"9"… (1048576 characters)"#), "{}", rejected.error);
    assert!(rejected.error.len() < 300, "{} bytes", rejected.error.len());
}

#[test]
fn quotes_escape_what_they_quote_and_cut_long_values() {
    assert_eq!(quote("a\"b\nc"), r#""a\"b\nc""#);
    assert_eq!(quote(&"é".repeat(200)), format!("\"{}\"", "é".repeat(200)));
    assert_eq!(quote(&"é".repeat(201)), format!("\"{}\"… (201 characters)", "é".repeat(200)));
    // Escapes count against the limit.
    assert_eq!(quote(&"\n".repeat(150)), format!("\"{}\"… (150 characters)", "\\n".repeat(100)));
}

#[test]
fn a_claim_keeps_events_in_due_order_and_the_unreadable_rows_apart() {
    let row = |id: &str, scheduled: &str, created: &str| StoredRow {
        id: id.into(),
        scheduled_at: TimeColumn::Text(scheduled.into()),
        created_at: TimeColumn::Text(created.into()),
        ..text_row()
    };
    let late = row("00000000000000000000000000000001", "2026-11-29 10:05:00", "2026-11-29 09:00:00");
    let early_second = row("00000000000000000000000000000002", "2026-11-29 10:00:00", "2026-11-29 09:00:01");
    let early_first = row("00000000000000000000000000000003", "2026-11-29 10:00:00", "2026-11-29 09:00:00");
    let bad = StoredRow { data: Some(JsonColumn::Text("{".into())), ..row("bad", "2026-11-29 09:00:00", "x") };
    let unreadable = RejectedRow::new("raw".into(), "".into(), &RowError::new("retry_count", "cannot be read"));
    let claim = Claim::from_rows(
        time("2026-11-29T11:00:00Z"),
        [Ok(late), Ok(bad), Ok(early_second), Err(unreadable.clone()), Ok(early_first)],
    );
    let order: Vec<String> = claim.events.iter().map(|e| e.event.id.replace('-', "")).collect();
    assert_eq!(
        order,
        ["00000000000000000000000000000003", "00000000000000000000000000000002", "00000000000000000000000000000001"]
    );
    let rejected: Vec<&str> = claim.rejected.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(rejected, ["bad", "raw"]);
    assert_eq!(claim.rejected[1], unreadable);
    assert_eq!((claim.len(), claim.is_empty()), (5, false));
}

type SqliteReader<'r> = RowReader<'r, sqlx::sqlite::SqliteRow, String, String, String, i64>;

/// One row of SQLite's dynamic types, as a claim statement would return it.
async fn sqlite_row(select: &str) -> sqlx::sqlite::SqliteRow {
    let mut db = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(select.to_string())).fetch_one(&mut db).await.unwrap()
}

const SELECT_ROW: &str = "SELECT '6f1c2b523f3c4d5e9a1b2c3d4e5f6a7b' AS id, '1.0' AS spec_version, 't' AS event_type, \
     '/s' AS source, '' AS subject, '' AS data_content_type, '' AS data_schema, NULL AS data, \
     '2026-11-29 10:00:00' AS created_at, '2026-11-29 10:00:00' AS scheduled_at, RETRY AS retry_count, \
     3 AS max_retries, 'p' AS publisher_backend, '{}' AS publisher_config";

#[tokio::test]
async fn a_column_of_the_wrong_type_rejects_the_row_alone() {
    let good = sqlite_row(&SELECT_ROW.replace("RETRY", "0")).await;
    let read = SqliteReader::claimed(&good).unwrap();
    assert_eq!(read.unwrap().decode().unwrap().event.id, UUID);

    let bad = sqlite_row(&SELECT_ROW.replace("RETRY", "'many'")).await;
    let rejected = SqliteReader::claimed(&bad).unwrap().unwrap_err();
    assert_eq!((rejected.id.as_str(), rejected.publisher_backend.as_str()), (HEX_ID, "p"));
    assert!(
        rejected.error.starts_with("cannot read this row: column retry_count: cannot be read ("),
        "{}",
        rejected.error
    );
}

#[tokio::test]
async fn row_states_read_hyphenated_ids_and_refuse_unknown_statuses() {
    let select = "SELECT '6f1c2b523f3c4d5e9a1b2c3d4e5f6a7b' AS id, 'STATUS' AS status, 'p' AS publisher_backend, \
         2 AS retry_count, 3 AS max_retries, '2026-11-29 10:00:00' AS scheduled_at, NULL AS published_at, \
         'boom' AS last_error";
    let row = sqlite_row(&select.replace("STATUS", "retry")).await;
    let state = SqliteReader::state(&row).unwrap();
    assert_eq!(
        state,
        RowState {
            id: UUID.into(),
            status: Status::Retry,
            publisher_backend: "p".into(),
            retry_count: 2,
            max_retries: 3,
            scheduled_at: time("2026-11-29T10:00:00Z"),
            published_at: None,
            last_error: "boom".into(),
        }
    );
    let row = sqlite_row(&select.replace("STATUS", "done")).await;
    let err = SqliteReader::state(&row).unwrap_err();
    assert_eq!(err.to_string(), format!(r#"outbox row {HEX_ID}: column status: unknown status "done""#));
}

#[test]
fn times_are_read_as_django_or_anyone_writes_them() {
    let t = time("2026-11-29T10:00:00.123456Z");
    for text in [
        "2026-11-29 10:00:00.123456",
        "2026-11-29T10:00:00.123456",
        "2026-11-29 10:00:00.123456+00:00",
        "2026-11-29T12:00:00.123456+02:00",
    ] {
        assert_eq!(parse_time(text), Some(t), "{text}");
    }
    assert_eq!(parse_time("2026-11-29 10:00:00"), Some(time("2026-11-29T10:00:00Z")));
    assert_eq!(parse_time("yesterday"), None);
}
