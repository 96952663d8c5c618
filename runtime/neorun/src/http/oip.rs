//! The Open Inference Protocol v2 (KServe, Triton): health, server and
//! model metadata, readiness, and inference with JSON or binary tensors
//! (decoded and encoded by `neoc_runtime::codec::oip`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use neoc_runtime::codec::oip;
use serde_json::json;

use super::error::ApiError;
use super::{account, read_body, AppState, St};
use crate::models::LiveModel;

fn model_or_404(st: &AppState, name: &str, version: Option<&str>) -> Result<Arc<LiveModel>, ApiError> {
    let live = st.models.get(name).ok_or_else(|| ApiError::not_found(format!("unknown model `{name}`")))?;
    let have = &live.model.manifest.model.version;
    if let Some(v) = version {
        if v != have {
            return Err(ApiError::not_found(format!("model `{name}` has no version `{v}` (serving {have})")));
        }
    }
    Ok(live)
}

pub async fn server() -> Response {
    Json(json!({"name": "neorun", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]}))
        .into_response()
}

pub async fn live() -> Response {
    Json(json!({"live": true})).into_response()
}

pub async fn ready(State(st): St) -> Response {
    let ready = !st.models.is_empty();
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(json!({"ready": ready})))
        .into_response()
}

fn metadata_of(st: &AppState, name: &str, version: Option<&str>) -> Response {
    match model_or_404(st, name, version) {
        Ok(live) => Json(oip::metadata(name, &live.model.manifest)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn metadata(State(st): St, Path(model): Path<String>) -> Response {
    metadata_of(&st, &model, None)
}

pub async fn metadata_version(State(st): St, Path((model, version)): Path<(String, String)>) -> Response {
    metadata_of(&st, &model, Some(&version))
}

fn ready_of(st: &AppState, name: &str, version: Option<&str>) -> Response {
    match model_or_404(st, name, version) {
        Ok(_) => Json(json!({"name": name, "ready": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn model_ready(State(st): St, Path(model): Path<String>) -> Response {
    ready_of(&st, &model, None)
}

pub async fn model_ready_version(State(st): St, Path((model, version)): Path<(String, String)>) -> Response {
    ready_of(&st, &model, Some(&version))
}

pub async fn infer(State(st): St, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Response {
    infer_any(st, model, None, headers, body).await
}

pub async fn infer_version(
    State(st): St,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_any(st, model, Some(version), headers, body).await
}

async fn infer_any(
    st: Arc<AppState>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let live = match model_or_404(&st, &model, version.as_deref()) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    // with --store, through the model's endpoint: an activation's share of
    // requests goes to the new version, and its alarms see them
    let routed = st
        .store_routes
        .then(|| st.control.as_ref()?.endpoints.get(&crate::modelstore::serve::endpoint_name(&model)))
        .flatten();
    if let Some(ep) = routed {
        if let Ok((fleet, i)) = ep.route(None) {
            let variant = &fleet.variants[i];
            let Some(vlive) = variant.live.clone() else {
                return ApiError::bad(format!(
                    "model {model}'s endpoint loads its models on demand: call it through /endpoints/"
                ))
                .into_response();
            };
            let t = Instant::now();
            let r = answer(&st, &vlive, &model, &headers, body).await;
            // the engine's failures count as the model's 5xx (overload, 503, is not the model's)
            let (status, model_error) = super::error::counted_result(&r);
            variant.series.invoked(status, started.elapsed(), Some(t.elapsed()));
            variant.counters.invoked(status, model_error, started.elapsed(), Some(t.elapsed()));
            account(&vlive, started, &r);
            return r.unwrap_or_else(|e| e.into_response());
        }
    }
    let r = answer(&st, &live, &live.name, &headers, body).await;
    account(&live, started, &r);
    r.unwrap_or_else(|e| e.into_response())
}

async fn answer(
    st: &AppState,
    live: &LiveModel,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(st, body).await?;
    // the binary tensor extension: a JSON header of this length, then raw tensors
    let header_len = match headers.get("Inference-Header-Content-Length") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| ApiError::bad("Inference-Header-Content-Length is not a number"))?,
        ),
        None => None,
    };
    let manifest = &live.model.manifest;
    let (batch, wanted) = oip::decode(&bytes, header_len, &manifest.inputs, &manifest.outputs)?;
    let outputs = st.inference.infer(live, batch).await?;
    let encoded = oip::encode(&wanted, name, &manifest.model.version, &manifest.outputs, &outputs)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(match encoded.json_len {
        None => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json".to_string())], encoded.body).into_response()
        }
        Some(n) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (HeaderName::from_static("inference-header-content-length"), n.to_string()),
            ],
            encoded.body,
        )
            .into_response(),
    })
}
