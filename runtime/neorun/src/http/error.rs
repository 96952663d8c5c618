//! Errors on the wire: every error is `{"error": "...", "message": "..."}`
//! (the same text twice: `error` for plain HTTP clients, `message` where
//! AWS SDKs read it) with a status that says whose fault it was (4xx the
//! request's, 5xx the server's) and `x-amzn-ErrorType`, the error code
//! botocore raises (`ValidationError`, `ModelError`, `ServiceUnavailable`,
//! `InternalFailure`, SageMaker Runtime's names). The inference layer's
//! errors are mapped to statuses here and nowhere else.
//!
//! An engine that fails on an input it accepted (a panic, an integer
//! division by zero inside the graph) is answered `424 ModelError`, as
//! SageMaker's InvokeEndpoint answers when the model's container fails: the
//! request is what made the model fail, and the server is fine. The metrics
//! count it as the model's 5xx ([`counted`]), as SageMaker's
//! `Invocation5XXErrors` counts the 500s its container returns, so alarms
//! and rollbacks see a failing model.

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
    /// The model failed on a request it accepted (`ModelError`).
    pub model_error: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: false, model_error: false }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 429 `ThrottlingException`, as botocore expects it (retried with backoff).
    pub fn throttled(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            retry_after: true,
            model_error: false,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: true,
            model_error: false,
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> ApiError {
        let message = e.to_string();
        match e {
            InferError::Overloaded | InferError::ShuttingDown => ApiError::unavailable(message),
            InferError::UnknownModel { .. } => ApiError::not_found(message),
            InferError::BadRequest(_) => ApiError::bad(message),
            InferError::Engine(_) => {
                ApiError { model_error: true, ..ApiError::new(StatusCode::FAILED_DEPENDENCY, message) }
            }
            InferError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
}

/// The status the metrics count for a response, and whether the model
/// failed: a `ModelError` counts as the model's 500 (see the module doc).
pub fn counted(resp: &Response) -> (u16, bool) {
    let model_error = resp.headers().get("x-amzn-ErrorType").is_some_and(|v| v == "ModelError");
    (if model_error { 500 } else { resp.status().as_u16() }, model_error)
}

/// [`counted`] for a result not yet turned into a response.
pub fn counted_result(r: &Result<Response, ApiError>) -> (u16, bool) {
    match r {
        Ok(resp) => counted(resp),
        Err(e) if e.model_error => (500, true),
        Err(e) => (e.status.as_u16(), false),
    }
}

impl From<BadRequest> for ApiError {
    fn from(b: BadRequest) -> ApiError {
        ApiError::bad(b.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.status.as_u16() {
            _ if self.model_error => "ModelError",
            401 | 403 => "AccessDeniedException",
            429 => "ThrottlingException",
            503 => "ServiceUnavailable",
            s if s >= 500 => "InternalFailure",
            _ => "ValidationError",
        };
        let body = json!({ "error": self.message, "message": self.message }).to_string();
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        r.headers_mut().insert("x-amzn-ErrorType", HeaderValue::from_static(code));
        if self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
