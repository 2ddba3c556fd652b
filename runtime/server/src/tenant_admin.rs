//! The tenants' admin API (admin tokens only): components, publishers and tokens stored in the
//! outbox database's catalog, applied by every relay of the database. The shapes are the
//! book's (`docs/src/operators/tenant-api.md`).
//!
//! The handlers here read the request (token, body, headers, query) and answer; what a change
//! means (checking a component or a definition, storing it) is the binary's, reached through
//! [`TenantAdmin`] (it needs every layer, as a reload does).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::ServerState;
use super::api_error::ApiError;

/// What an admin endpoint answers: a status and a JSON body, or an error.
pub type AdminAnswer = Result<(StatusCode, Value), ApiError>;

/// The tenant operations behind the admin endpoints; the `broadcaster` crate's
/// `tenants::TenantCatalog` implements it. Every method checks its input as the book says and
/// stores nothing when it refuses; `by` is the admin token's name, recorded with the change.
#[async_trait::async_trait]
pub trait TenantAdmin: Send + Sync + std::fmt::Debug {
    /// `PUT /v1/admin/components`: checks and stores a component.
    async fn put_component(&self, bytes: Bytes, by: &str) -> AdminAnswer;
    /// `PUT /v1/admin/publishers/{name}`: checks (instance made, `init` run) and stores a
    /// definition as a new version; `if_version` from `If-Match`.
    async fn put_publisher(&self, name: &str, definition: Value, if_version: Option<i64>, by: &str) -> AdminAnswer;
    /// `GET /v1/admin/publishers`: a page of every publisher, file's and catalog's.
    async fn publishers(&self, after: Option<&str>, limit: u32) -> AdminAnswer;
    /// `GET /v1/admin/publishers/{name}`.
    async fn publisher(&self, name: &str) -> AdminAnswer;
    /// `DELETE /v1/admin/publishers/{name}`.
    async fn remove_publisher(&self, name: &str, by: &str) -> AdminAnswer;
    /// `POST /v1/admin/publishers/{name}/rollback`.
    async fn rollback(&self, name: &str, version: Option<i64>, by: &str) -> AdminAnswer;
    /// `POST /v1/admin/tokens`: `{"name", "publishers", "rate"?, "burst"?}`.
    async fn make_token(&self, request: Value, by: &str) -> AdminAnswer;
    /// `DELETE /v1/admin/tokens/{name}`.
    async fn revoke_token(&self, name: &str, by: &str) -> AdminAnswer;
}

/// The most publishers one page lists.
pub const MAX_PAGE: u32 = 10_000;

/// The admin token's name, and the tenant admin; or the refusal to answer.
fn admin(state: &ServerState, headers: &HeaderMap) -> Result<(String, Arc<dyn TenantAdmin>), Box<Response>> {
    let token = super::status_page::require_admin(state, headers)?;
    let Some(tenants) = state.tenant_admin.get() else {
        return Err(Box::new(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_missing",
                "the outbox database has no tenant catalog: run `broadcaster migrate`, then restart `serve`",
            )
            .into_response(),
        ));
    };
    Ok((token, tenants.clone()))
}

fn answer(result: AdminAnswer) -> Response {
    match result {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(err) => err.into_response(),
    }
}

fn bad_request(message: impl Into<String>) -> Response {
    bad_request_error(message).into_response()
}

fn bad_request_error(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A JSON object body (empty allowed when `empty_ok`, as `{}`).
fn json_body(body: &Bytes, empty_ok: bool) -> Result<Value, ApiError> {
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(bad_request_error("the body must be a JSON object")),
        Err(err) => Err(bad_request_error(format!("the body is not JSON: {err}"))),
    }
}

/// `PUT /v1/admin/components`.
pub(super) async fn put_component(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let (token, tenants) = match admin(&state, &headers) {
        Ok(found) => found,
        Err(refusal) => return *refusal,
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("application/wasm") {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the component's bytes with Content-Type: application/wasm (got {content_type:?})"),
        )
        .into_response();
    }
    match super::ingest::read_body(&headers, body, state.limits.max_component, "server.max_component").await {
        Ok(bytes) => answer(tenants.put_component(bytes, &token).await),
        Err(err) => err.into_response(),
    }
}

/// `PUT /v1/admin/publishers/{name}`.
pub(super) async fn put_publisher(
    State(state): State<Arc<ServerState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (token, tenants) = match admin(&state, &headers) {
        Ok(found) => found,
        Err(refusal) => return *refusal,
    };
    let if_version = match headers.get(header::IF_MATCH) {
        None => None,
        Some(value) => {
            match value
                .to_str()
                .ok()
                .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
                .and_then(|v| v.parse().ok())
            {
                Some(version) => Some(version),
                None => {
                    return bad_request(
                        "If-Match is the version the change is based on, like \"3\" (0: a new publisher)",
                    );
                }
            }
        }
    };
    let definition = match json_body(&body, false) {
        Ok(definition) => definition,
        Err(refusal) => return refusal.into_response(),
    };
    answer(tenants.put_publisher(&name, definition, if_version, &token).await)
}

/// The query of `GET /v1/admin/publishers`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct PageQuery {
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/admin/publishers`.
pub(super) async fn publishers(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (_, tenants) = match admin(&state, &headers) {
        Ok(found) => found,
        Err(refusal) => return *refusal,
    };
    let Ok(Query(page)) = query else {
        return bad_request(format!("the query is `?limit=N&after=<name>` (limit 1 to {MAX_PAGE})"));
    };
    let limit = page.limit.unwrap_or(1000);
    if !(1..=MAX_PAGE).contains(&limit) {
        return bad_request(format!("limit is 1 to {MAX_PAGE}"));
    }
    answer(tenants.publishers(page.after.as_deref(), limit).await)
}

/// `GET /v1/admin/publishers/{name}`.
pub(super) async fn publisher(
    State(state): State<Arc<ServerState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match admin(&state, &headers) {
        Ok((_, tenants)) => answer(tenants.publisher(&name).await),
        Err(refusal) => *refusal,
    }
}

/// `DELETE /v1/admin/publishers/{name}`.
pub(super) async fn remove_publisher(
    State(state): State<Arc<ServerState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match admin(&state, &headers) {
        Ok((token, tenants)) => answer(tenants.remove_publisher(&name, &token).await),
        Err(refusal) => *refusal,
    }
}

/// `POST /v1/admin/publishers/{name}/rollback`.
pub(super) async fn rollback(
    State(state): State<Arc<ServerState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (token, tenants) = match admin(&state, &headers) {
        Ok(found) => found,
        Err(refusal) => return *refusal,
    };
    let request = match json_body(&body, true) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let version = match request.get("version") {
        None => None,
        Some(version) => match version.as_i64().filter(|v| *v > 0) {
            Some(version) => Some(version),
            None => return bad_request("`version` is a version number (1 or more)"),
        },
    };
    if let Some(key) = request.as_object().and_then(|o| o.keys().find(|k| *k != "version")) {
        return bad_request(format!("unknown key `{key}`: the body is empty or {{\"version\": N}}"));
    }
    answer(tenants.rollback(&name, version, &token).await)
}

/// `POST /v1/admin/tokens`.
pub(super) async fn make_token(State(state): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (token, tenants) = match admin(&state, &headers) {
        Ok(found) => found,
        Err(refusal) => return *refusal,
    };
    match json_body(&body, false) {
        Ok(request) => answer(tenants.make_token(request, &token).await),
        Err(refusal) => refusal.into_response(),
    }
}

/// `DELETE /v1/admin/tokens/{name}`.
pub(super) async fn revoke_token(
    State(state): State<Arc<ServerState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match admin(&state, &headers) {
        Ok((token, tenants)) => answer(tenants.revoke_token(&name, &token).await),
        Err(refusal) => *refusal,
    }
}
