//! Errors on the wire: every error is `{"error": "..."}` with a status
//! that says whose fault it was (4xx the request's, 5xx the server's). The
//! inference layer's errors are mapped to statuses here and nowhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use neoc_runtime::BadRequest;
use serde_json::json;

use crate::infer::InferError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Adds `Retry-After: 1` (overload, draining).
    pub retry_after: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: false }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), retry_after: true }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> ApiError {
        let message = e.to_string();
        match e {
            InferError::Overloaded | InferError::ShuttingDown => ApiError::unavailable(message),
            InferError::UnknownModel { .. } => ApiError::not_found(message),
            InferError::BadRequest(_) => ApiError::bad(message),
            InferError::Engine(_) | InferError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}

impl From<BadRequest> for ApiError {
    fn from(b: BadRequest) -> ApiError {
        ApiError::bad(b.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message }).to_string();
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
