//! SageMaker's inference-container contract: `GET /ping`, `POST
//! /invocations` (CSV, JSON, JSON Lines), and `POST
//! /endpoints/{name}/invocations` so AWS SDK clients work with an
//! `endpoint_url`. `X-Amzn-SageMaker-Target-Model` picks a model, as on a
//! multi-model endpoint; `X-Amzn-Invoked-Production-Variant` says who answered.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use neoc_runtime::{codec, Batch};
use tract_core::prelude::Tensor;

use super::error::ApiError;
use super::negotiate::{accept, content_type, Out};
use super::{account, read_body, AppState, St};
use crate::infer::InferError;
use crate::models::LiveModel;

pub async fn ping(State(st): St) -> Response {
    if st.models.is_empty() && st.control.is_none() {
        return ApiError::unavailable("no model loaded").into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"healthy\"}").into_response()
}

pub async fn invocations(State(st): St, headers: HeaderMap, body: Body) -> Response {
    invoke(st, headers, body).await
}

/// With `--store`: the endpoint of the store model a request is for (the
/// one it names, else the default), when that model has one.
fn store_endpoint(st: &AppState, headers: &HeaderMap) -> Option<String> {
    if !st.store_routes {
        return None;
    }
    let name = match headers.get("X-Amzn-SageMaker-Target-Model") {
        Some(v) => v.to_str().ok()?.trim_end_matches(".neo").to_string(),
        None => st.models.default_name()?,
    };
    let ep = crate::modelstore::serve::endpoint_name(&name);
    st.control.as_ref()?.endpoints.get(&ep).map(|_| ep)
}

/// The model a request is for: the one it names, else the default.
fn target(st: &AppState, headers: &HeaderMap) -> Result<Arc<LiveModel>, ApiError> {
    let unknown = |name: &str| InferError::UnknownModel { name: name.into(), served: st.models.names() };
    match headers.get("X-Amzn-SageMaker-Target-Model") {
        Some(v) => {
            let name = v.to_str().map_err(|_| ApiError::bad("X-Amzn-SageMaker-Target-Model is not ASCII"))?;
            let name = name.trim_end_matches(".neo");
            st.models.get(name).ok_or_else(|| unknown(name).into())
        }
        None => st.models.default_model().ok_or_else(|| unknown("").into()),
    }
}

pub(super) async fn invoke(st: Arc<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Some(ep) = store_endpoint(&st, &headers) {
        // boxed: the endpoint handler comes back here for a bundle server
        return Box::pin(super::endpoint::endpoint_invocations(State(st), axum::extract::Path(ep), headers, body))
            .await;
    }
    let started = Instant::now();
    let r = match target(&st, &headers) {
        Ok(live) => {
            let r = answer(&st, &live, &headers, body).await;
            account(&live, started, &r);
            r
        }
        Err(e) => Err(e),
    };
    let mut resp = r.unwrap_or_else(|e| e.into_response());
    if let Ok(v) = HeaderValue::from_str(&st.settings.variant) {
        resp.headers_mut().insert("X-Amzn-Invoked-Production-Variant", v);
    }
    if let Some(id) = headers.get("X-Amzn-SageMaker-Inference-Id") {
        resp.headers_mut().insert("X-Amzn-SageMaker-Inference-Id", id.clone());
    }
    resp
}

async fn answer(st: &AppState, live: &LiveModel, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(st, body).await?;
    let (batch, out) = decode(live, headers, &bytes)?;
    let rows = batch.rows;
    let outputs = st.inference.infer(live, batch).await?;
    let (ct, bytes) = encode(live, out, &outputs, rows)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], bytes).into_response())
}

/// A request body as the model's inputs, and the format to answer in.
pub(super) fn decode(live: &LiveModel, headers: &HeaderMap, bytes: &[u8]) -> Result<(Batch, Out), ApiError> {
    let (format, lines) = content_type(headers)?;
    let out = accept(headers)?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad("empty body"));
    }
    let inputs = &live.model.manifest.inputs;
    let lines_body;
    let body = if lines {
        lines_body = codec::jsonlines_to_instances(bytes)?;
        &lines_body[..]
    } else {
        bytes
    };
    let batch = codec::parse(body, format, inputs)
        .map_err(|e| ApiError::bad(format!("{e} (the model's inputs are {})", codec::describe_inputs(inputs))))?;
    Ok((batch, out))
}

/// The model's outputs in the response format: its content type and bytes.
pub(super) fn encode(
    live: &LiveModel,
    out: Out,
    outputs: &[Tensor],
    rows: usize,
) -> Result<(&'static str, Vec<u8>), ApiError> {
    let names = live.model.output_names();
    let (ct, bytes) = match out {
        Out::Json => ("application/json", codec::to_json(&names, outputs)),
        Out::Csv => ("text/csv", codec::to_csv(&names, outputs, rows)),
        Out::JsonLines => ("application/jsonlines", codec::to_jsonlines(&names, outputs, rows)),
    };
    let bytes = bytes.map_err(|e| ApiError::new(StatusCode::NOT_ACCEPTABLE, e.to_string()))?;
    Ok((ct, bytes))
}
