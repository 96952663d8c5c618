//! The HTTP transport (axum): SageMaker's inference-container routes and
//! the Open Inference Protocol v2. Handlers read the request, decode it with
//! the runtime's codecs, submit it to `infer` and encode the answer; they
//! never call an engine themselves.

mod aws;
mod endpoint;
mod error;
mod negotiate;
mod oip;
mod sagemaker;
pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;

use crate::capture::Capture;
use crate::control::{AwsError, ControlPlane};
use crate::infer::spare::SparePool;
use crate::infer::Inference;
use crate::metrics::Metrics;
use crate::models::{LiveModel, ModelTable};
use crate::sigv4::{self, AccessKeys};

/// What the HTTP layer itself decides.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub max_body: usize,
    pub timeout: Duration,
    pub auth_token: Option<String>,
    /// The production variant named in `X-Amzn-Invoked-Production-Variant`.
    pub variant: String,
    /// Keys SigV4 signatures are checked against (`--access-keys`).
    pub access_keys: Option<AccessKeys>,
    /// Require a signature (or the bearer token) on the data plane too.
    pub sign_data_plane: bool,
}

/// Who made a request, once authenticated (for the control plane's journal).
#[derive(Clone, Debug)]
pub struct Caller(pub String);

pub struct AppState {
    pub models: Arc<ModelTable>,
    pub inference: Arc<Inference>,
    pub metrics: Arc<Metrics>,
    pub settings: HttpSettings,
    /// Set when shutdown starts: new requests get 503 while in-flight ones finish.
    pub draining: Arc<AtomicBool>,
    /// Endpoints and the SageMaker API that manages them.
    pub control: Option<Arc<ControlPlane>>,
    /// `--store`: a model's requests (`/invocations`, OIP inference) go
    /// through its endpoint, so that activations and rollbacks cover them.
    pub store_routes: bool,
    pub capture: Capture,
    /// Where shadow copies run.
    pub spare: Arc<SparePool>,
}

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", post(aws::control))
        .route("/alertmanager", post(aws::alertmanager))
        .route("/service/{service}/operation/{operation}", post(aws::cbor))
        .route("/ping", get(sagemaker::ping))
        .route("/invocations", post(sagemaker::invocations))
        .route("/endpoints/{endpoint}/invocations", post(endpoint::endpoint_invocations))
        .route("/endpoints/{endpoint}/async-invocations", post(endpoint::async_invocations))
        .route("/v2", get(oip::server))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2/models/{model}", get(oip::metadata))
        .route("/v2/models/{model}/versions/{version}", get(oip::metadata_version))
        .route("/v2/models/{model}/ready", get(oip::model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(oip::model_ready_version))
        .route("/v2/models/{model}/infer", post(oip::infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(oip::infer_version))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this route does not take this method")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}

/// Authentication, refusal while draining, and the request timeout (which
/// covers reading a signed request's body for its signature too).
async fn guard(State(st): St, req: Request, next: Next) -> Response {
    // while draining, readiness fails too (a load balancer stops sending),
    // liveness does not (the process is fine)
    if st.draining.load(Ordering::Relaxed) && req.uri().path() != "/v2/health/live" {
        return ApiError::unavailable("server is shutting down").into_response();
    }
    let timeout = st.settings.timeout;
    let run = async {
        match authenticate(&st, req).await {
            Ok((mut req, caller)) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                next.run(req).await
            }
            Err(refused) => refused,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("request not completed within {timeout:?}"))
            .into_response(),
    }
}

/// Who the request is from. A SigV4 signature is checked against the
/// access keys (the body is read for it, within the body limit); else the
/// bearer token, when one is configured. The control plane (`POST /`)
/// always needs one of them; the data plane needs one when a token is set
/// or `--sign-data-plane` is. Health checks need none.
async fn authenticate(st: &AppState, req: Request) -> Result<(Request, Option<Caller>), Response> {
    let path = req.uri().path();
    if path == "/ping" || path.starts_with("/v2/health") {
        return Ok((req, None));
    }
    let control = (path == "/" || path == "/alertmanager" || path.starts_with("/service/"))
        && req.method() == axum::http::Method::POST;
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let signed = auth.as_deref().is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256"));
    let refuse = |e: sigv4::SigError| AwsError::new(StatusCode::FORBIDDEN, e.code(), e.message()).into_response();
    if let (true, Some(keys)) = (signed, &st.settings.access_keys) {
        let (parts, body) = req.into_parts();
        let bytes = read_body(st, body).await.map_err(IntoResponse::into_response)?;
        let r = sigv4::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body: &bytes,
        };
        return match sigv4::verify(keys, &r, SystemTime::now()) {
            Ok(id) => Ok((Request::from_parts(parts, Body::from(bytes)), Some(Caller(format!("access key {id}"))))),
            Err(e) => Err(refuse(e)),
        };
    }
    if let Some(token) = &st.settings.auth_token {
        let ok = auth.as_deref().and_then(bearer).is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if ok {
            return Ok((req, Some(Caller("bearer token".into()))));
        }
        if control && st.settings.access_keys.is_some() {
            return Err(refuse(sigv4::SigError::Missing));
        }
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (Authorization: Bearer …)")
            .into_response());
    }
    if st.settings.access_keys.is_some() && (control || st.settings.sign_data_plane) {
        return Err(refuse(sigv4::SigError::Missing));
    }
    // the data plane is open (no token, no --sign-data-plane); the control
    // plane's handler refuses an anonymous caller itself, saying how to set
    // authentication up
    Ok((req, None))
}

/// Errors the framework answers by itself (a path it cannot decode, say)
/// come as plain text: rewritten as `{"error": …}` like every other, the
/// text kept as the message.
async fn json_errors(r: Response) -> Response {
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("application/x-amz-json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let text = axum::body::to_bytes(r.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    ApiError::new(status, message).into_response()
}

/// The credentials of an `Authorization: Bearer …` header (the scheme is
/// case-insensitive, RFC 7235).
fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_body(st: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = st.settings.max_body;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let msg = e.to_string();
        if msg.contains("length limit") {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body is larger than the {limit} byte limit"))
        } else {
            ApiError::bad(format!("reading the body: {msg}"))
        }
    })
}

/// Counts an inference request and its outcome in the model's metrics.
fn account(live: &LiveModel, started: Instant, r: &Result<Response, ApiError>) {
    live.series.answered(started.elapsed(), error::counted_result(r).0);
}

/// `/metrics`: OpenMetrics when the scraper asks for it, else the
/// Prometheus text format.
async fn metrics(State(st): St, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        (StatusCode::OK, [(header::CONTENT_TYPE, ct)], st.metrics.render_openmetrics()).into_response()
    } else {
        let ct = "text/plain; version=0.0.4; charset=utf-8";
        (StatusCode::OK, [(header::CONTENT_TYPE, ct)], st.metrics.render()).into_response()
    }
}

#[cfg(test)]
mod tests;
