//! Operator endpoints for admin tokens (`[tokens.<name>] admin = true`).
//!
//! - `POST /v1/admin/reload`: reads the configuration again and applies it (see
//!   `broadcaster::reload`, through [`LiveReload`](super::LiveReload)); `200` with what changed, or `422 reload_refused` with the reason
//!   (nothing changed).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ServerState;
use super::api_error::ApiError;

/// `POST /v1/admin/reload`.
pub(super) async fn reload(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let token = match super::status_page::require_admin(&state, &headers) {
        Ok(token) => token,
        Err(refusal) => return *refusal,
    };
    let Some(reloader) = state.reloader.get() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "reload_unavailable",
            "this server was started without a configuration file to reload",
        )
        .into_response();
    };
    tracing::info!(token = %token, "reload asked over HTTP");
    match reloader.reload_for_admin().await {
        Ok(report) => axum::Json(serde_json::json!({ "reloaded": report })).into_response(),
        Err(err) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_refused",
            format!("reload refused, nothing changed: {err}"),
        )
        .into_response(),
    }
}
