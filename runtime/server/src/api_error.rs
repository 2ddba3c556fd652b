//! The one shape of every error answer: a status code and a JSON body that says what to fix.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answer: `{"error": {"status": 400, "code": "invalid_event", "message": "…"}}`,
/// with `"event": <index>` when one event of a batch is at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// A stable, machine-readable name of the error.
    pub code: &'static str,
    /// What was wrong and what is expected, for people.
    pub message: String,
    /// The index of the event at fault in a batch.
    pub event: Option<usize>,
    /// Seconds to wait before trying again (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), event: None, retry_after: None }
    }

    /// 400 for an event that is not valid.
    pub fn invalid_event(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_event", message)
    }

    /// The same error, blamed on the event at `index` of a batch.
    pub fn at(mut self, index: usize) -> Self {
        self.event = Some(index);
        self.message = format!("event {index} of the batch: {}", self.message);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
        });
        if let Some(index) = self.event {
            error["event"] = index.into();
        }
        let mut response = (self.status, axum::Json(serde_json::json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
