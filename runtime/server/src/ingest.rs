//! `POST /v1/publishers/{name}/events`: events in the CloudEvents HTTP protocol binding
//! (structured, binary, or batch), checked whole and committed to the outbox in one
//! transaction before the answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudevents::event::{AttributesReader, Data};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::ServerState;
use super::api_error::ApiError;
use super::tokens::{RateRefusal, Token, TokenTable};
use broadcaster_core::cloudevent_input::from_cloud_event;
use broadcaster_core::event::{OutboxEvent, Payload, now_micros};
use broadcaster_outbox::{NewEvent, StoreError};

/// Structured mode: one event as a JSON document.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Batch mode: a JSON array of structured events.
pub const BATCH: &str = "application/cloudevents-batch+json";
/// Binary mode: the per-event extras for the publisher (`publisher_config`), a JSON object.
pub const PUBLISHER_CONFIG_HEADER: &str = "broadcaster-publisher-config";
/// Structured and batch mode: the member holding the per-event extras (`publisher_config`).
pub const PUBLISHER_CONFIG_MEMBER: &str = "publisher_config";

/// The handler: answers, and books the answer in the metrics.
pub(super) async fn post_events(
    State(state): State<Arc<ServerState>>,
    Path(publisher): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match accept(&state, &publisher, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    state.metrics.ingest_request(response.status().as_u16());
    response
}

/// How the request carries its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Structured,
    Binary,
    Batch,
}

async fn accept(state: &ServerState, publisher: &str, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let tokens = state.tokens();
    let token = authenticate(&tokens, headers)?;
    if !token.reaches(publisher) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} may not send events to publisher {publisher:?}", token.name),
        ));
    }
    if !state.registry().contains(publisher) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_publisher",
            format!("there is no publisher {publisher:?} in this relay's configuration"),
        ));
    }
    let mode = mode_of(headers)?;
    let body = read_body(headers, body, state.limits.max_body, "server.max_body").await?;
    let mut events = match mode {
        Mode::Structured => vec![structured(parse_json(&body)?)?],
        Mode::Binary => vec![binary(headers, body)?],
        Mode::Batch => batch(parse_json(&body)?, state.limits.max_batch_events)?,
    };
    let now = now_micros();
    for (index, new) in events.iter_mut().enumerate() {
        new.event.publisher_backend = publisher.to_string();
        new.check_storable(now).map_err(|err| {
            let error = ApiError::invalid_event(err.to_string());
            if mode == Mode::Batch { error.at(index) } else { error }
        })?;
    }
    let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
    token.take(count).map_err(|refusal| match refusal {
        RateRefusal::Later(wait) => ApiError {
            retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("token {:?} is over its rate limit; try again in {:.3}s", token.name, wait.as_secs_f64()),
            )
        },
        RateRefusal::Never { burst } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{count} events in one request is more than token {:?}'s burst of {burst}", token.name),
        ),
    })?;
    let ids: Vec<String> = events.iter().map(|e| e.event.id.clone()).collect();
    let new = state.writer.write(events).await.inspect_err(|_| token.give_back(count)).map_err(|err| {
        match err {
            // Not which publisher has it: that is another tenant's business.
            StoreError::IdTaken { id, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "id_conflict",
                format!(
                    "event id {id} is already taken by an event of another publisher; give this event an id of its own"
                ),
            ),
            StoreError::Unstorable(message) => ApiError::invalid_event(message),
            other => {
                tracing::error!(err = %other, "ingest: the outbox refused a write");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outbox_unavailable",
                    "the outbox database did not take the events; nothing was written, try again",
                )
            }
        }
    })?;
    let repeated: Vec<&str> = ids.iter().zip(&new).filter(|(_, new)| !**new).map(|(id, _)| id.as_str()).collect();
    let fresh = new.iter().filter(|n| **n).count() as u64;
    state.metrics.ingest_events(publisher, fresh, repeated.len() as u64);
    let status = if fresh == 0 { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, axum::Json(serde_json::json!({ "ids": ids, "repeated": repeated }))).into_response())
}

/// The token of the `Authorization: Bearer …` header.
fn authenticate<'a>(tokens: &'a TokenTable, headers: &HeaderMap) -> Result<&'a Token, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("send a token: Authorization: Bearer <token>"));
    };
    // The scheme is case-insensitive (RFC 7235).
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    tokens.find(presented).ok_or_else(|| unauthorized("the token is not one of this relay's tokens"))
}

/// The mode, from the content type (binary mode: any content type with `ce-specversion`).
fn mode_of(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match content_type.as_deref() {
        Some(STRUCTURED) => Ok(Mode::Structured),
        Some(BATCH) => Ok(Mode::Batch),
        _ if headers.contains_key("ce-specversion") => Ok(Mode::Binary),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {} is not a CloudEvents mode: send {STRUCTURED} (one event), {BATCH} (a JSON array \
                 of events), or the event's data with ce-specversion, ce-id, ce-type and ce-source headers \
                 (binary mode)",
                other.map_or("(none)".to_string(), |t| format!("{t:?}"))
            ),
        )),
    }
}

/// The body, refused with 413 once it passes `max` bytes (before reading it all when its
/// length is declared).
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    setting: &str,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over the {max}-byte limit ({setting})"),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(err) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("the body could not be read: {err}")))
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {err}")))
}

/// One structured event (a JSON object).
fn structured(value: Value) -> Result<NewEvent, ApiError> {
    let Value::Object(mut document) = value else {
        return Err(ApiError::invalid_event("expected a JSON object (a CloudEvent)"));
    };
    let publisher_config = match document.remove(PUBLISHER_CONFIG_MEMBER) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(not_an_object(PUBLISHER_CONFIG_MEMBER, &other)),
    };
    for attribute in ["specversion", "id", "type", "source"] {
        match document.get(attribute) {
            Some(Value::String(text)) if !text.is_empty() => {}
            Some(Value::String(_)) => {
                return Err(ApiError::invalid_event(format!("the required attribute `{attribute}` is empty")));
            }
            Some(other) => {
                return Err(ApiError::invalid_event(format!(
                    "the required attribute `{attribute}` must be a string, got {}",
                    kind_of(other)
                )));
            }
            None => return Err(ApiError::invalid_event(format!("the required attribute `{attribute}` is missing"))),
        }
    }
    let parsed: cloudevents::Event = serde_json::from_value(Value::Object(document))
        .map_err(|err| ApiError::invalid_event(format!("not a CloudEvent: {err}")))?;
    outbox_event(&parsed, publisher_config)
}

/// A batch: a JSON array of structured events, at most `max` of them.
fn batch(value: Value, max: u32) -> Result<Vec<NewEvent>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_batch",
            format!("a batch is a JSON array of CloudEvents, got {}", kind_of(&value)),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_batch", "the batch is empty"));
    }
    if items.len() > max as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{} events in one batch; at most {max} (server.max_batch_events)", items.len()),
        ));
    }
    items.into_iter().enumerate().map(|(index, item)| structured(item).map_err(|err| err.at(index))).collect()
}

/// One binary-mode event: attributes in `ce-*` headers, the data in the body.
fn binary(headers: &HeaderMap, body: bytes::Bytes) -> Result<NewEvent, ApiError> {
    for attribute in ["id", "type", "source"] {
        if !headers.contains_key(format!("ce-{attribute}").as_str()) {
            return Err(ApiError::invalid_event(format!("the required header `ce-{attribute}` is missing")));
        }
    }
    let publisher_config = match headers.get(PUBLISHER_CONFIG_HEADER) {
        None => Map::new(),
        Some(value) => match value.to_str().ok().and_then(|text| serde_json::from_str::<Value>(text).ok()) {
            Some(Value::Object(map)) => map,
            Some(other) => return Err(not_an_object(PUBLISHER_CONFIG_HEADER, &other)),
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_publisher_config",
                    format!("the {PUBLISHER_CONFIG_HEADER} header is not JSON"),
                ));
            }
        },
    };
    let mut parsed = cloudevents::binding::http::to_event(headers, body.to_vec())
        .map_err(|err| ApiError::invalid_event(format!("not a CloudEvent: {err}")))?;
    // The binding hands the body over as bytes; read it as its content type says.
    if let Some(Data::Binary(bytes)) = parsed.data() {
        let content_type = parsed.datacontenttype().unwrap_or("application/json").to_ascii_lowercase();
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_string();
        let data = if essence == "application/json" || essence.ends_with("+json") {
            Data::Json(serde_json::from_slice(bytes).map_err(|err| {
                ApiError::invalid_event(format!("the body is declared {essence} but is not JSON: {err}"))
            })?)
        } else if essence.starts_with("text/") {
            Data::String(String::from_utf8(bytes.clone()).map_err(|_| {
                ApiError::invalid_event(format!("the body is declared {essence} but is not UTF-8 text"))
            })?)
        } else {
            Data::Binary(bytes.clone())
        };
        let content_type = parsed.datacontenttype().map(str::to_string);
        parsed.set_data(content_type.unwrap_or_else(|| "application/json".into()), data);
    }
    outbox_event(&parsed, publisher_config)
}

/// The outbox event of a parsed CloudEvent: its id must be a UUID, and it must fit the
/// outbox's columns (no binary data). Its extension attributes (`traceparent`, …) are kept,
/// sorted by name; their bounds are checked with the columns (`NewEvent::check_storable`).
fn outbox_event(parsed: &cloudevents::Event, publisher_config: Map<String, Value>) -> Result<NewEvent, ApiError> {
    let mut event: OutboxEvent = from_cloud_event(parsed);
    let id = uuid::Uuid::parse_str(&event.id).map_err(|_| {
        ApiError::invalid_event(format!(
            "the id {:?} is not a UUID; the outbox keys events by UUID (and a repeated id is how a retried request \
             is recognised): send a UUID, for example {}",
            broadcaster_host::guest_output::bounded_text(&event.id),
            uuid::Uuid::new_v4()
        ))
    })?;
    event.id = id.to_string();
    if matches!(event.data, Payload::Binary(_)) {
        return Err(ApiError::invalid_event(
            "binary data cannot be stored: the outbox's `data` column is JSON (send JSON or text data)",
        ));
    }
    event.publisher_config = publisher_config;
    Ok(NewEvent { event, scheduled_at: None })
}

fn not_an_object(what: &str, value: &Value) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_publisher_config",
        format!("`{what}` must be a JSON object like {{\"priority\": \"high\"}}, got {}", kind_of(value)),
    )
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
