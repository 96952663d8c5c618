//! `POST /endpoints/{name}/invocations` on an endpoint: the variant is the
//! one `X-Amzn-SageMaker-Target-Variant` names or one drawn by weight;
//! `X-Amzn-Invoked-Production-Variant` says which answered. After the
//! answer is ready — off the caller's path — the request goes to data
//! capture (when sampled) and a copy to each shadow variant whose share it
//! falls in. Shadows run on the spare-capacity threads, are shed first when
//! the machine is busy, and their answers are compared with production's,
//! captured and counted, never returned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tract_core::prelude::Tensor;

use super::error::ApiError;
use super::sagemaker::{decode, encode};
use super::{read_body, AppState, St};
use crate::capture::{Payload, Record};
use crate::endpoints::{compare, Agreement, Choice, LiveEndpoint, Shadow, Variant};
use crate::models::LiveModel;

pub async fn endpoint_invocations(
    State(st): St,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = st.control.as_ref().and_then(|cp| cp.endpoints.get(&endpoint));
    let Some(ep) = live else {
        return match &st.control {
            // a server of bundles only answers every endpoint name (the
            // SageMaker container contract: the name is the client's)
            Some(cp) if cp.has_endpoints() || st.models.is_empty() => {
                ApiError::bad(cp.not_live_reason(&endpoint)).into_response()
            }
            _ => super::sagemaker::invoke(st, headers, body).await,
        };
    };
    let started = Instant::now();
    let target = match headers.get("X-Amzn-SageMaker-Target-Variant").map(|v| v.to_str()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return ApiError::bad("X-Amzn-SageMaker-Target-Variant is not ASCII").into_response(),
    };
    let (ep, index) = match ep.route(target) {
        Ok(v) => v,
        Err(Choice::Unknown { name, variants }) => {
            return ApiError::bad(format!(
                "X-Amzn-SageMaker-Target-Variant: endpoint {endpoint} has no variant {name:?}; its variants are {}",
                variants.join(", ")
            ))
            .into_response()
        }
        Err(Choice::NoWeight) => {
            return ApiError::bad(format!(
                "endpoint {endpoint}: every variant has weight 0; name one in X-Amzn-SageMaker-Target-Variant"
            ))
            .into_response()
        }
    };
    let variant = &ep.variants[index];
    let r = answer(&st, variant, &headers, body).await;
    let mut answered_by = variant.live.clone();
    let mut notes = Vec::new();
    let (mut resp, model_time) = match r {
        Ok(a) => {
            let resp = (StatusCode::OK, [(header::CONTENT_TYPE, a.content_type)], a.body.clone()).into_response();
            after(&st, &ep, variant, &headers, &a);
            answered_by = Some(a.live.clone());
            notes = a.notes;
            (resp, Some(a.model_time))
        }
        Err((e, model_time)) => (e.into_response(), model_time),
    };
    let (status, model_error) = super::error::counted(&resp);
    variant.series.invoked(status, started.elapsed(), model_time);
    variant.counters.invoked(status, model_error, started.elapsed(), model_time);
    if let Some(live) = answered_by {
        live.series.answered(started.elapsed(), status);
    }
    let h = resp.headers_mut();
    for (name, value) in notes {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&variant.name) {
        h.insert("X-Amzn-Invoked-Production-Variant", v);
    }
    for echoed in ["X-Amzn-SageMaker-Inference-Id", "X-Amzn-SageMaker-Custom-Attributes"] {
        if let Some(v) = headers.get(echoed) {
            h.insert(echoed, v.clone());
        }
    }
    resp
}

/// A production answer and what capture and shadows need of it.
struct Answer {
    request: Bytes,
    content_type: &'static str,
    body: Bytes,
    outputs: Arc<Vec<Tensor>>,
    model_time: Duration,
    /// The model that answered (a multi-model or serverless variant's
    /// model of the moment).
    live: Arc<LiveModel>,
    /// Headers saying what loading this request caused.
    notes: Vec<(&'static str, String)>,
}

/// The model a request to this variant goes to: its own, or the one a
/// serverless or multi-model variant loads for it (with a place under
/// `MaxConcurrency`, held until the answer is done).
async fn model_for(
    variant: &Variant,
    headers: &HeaderMap,
) -> Result<(Arc<LiveModel>, Option<crate::lazy::Permit>, Vec<(&'static str, String)>), ApiError> {
    use crate::lazy::LazyError;
    if let Some(live) = &variant.live {
        return Ok((live.clone(), None, Vec::new()));
    }
    let Some(lazy) = &variant.lazy else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("variant {} has no model", variant.name)));
    };
    let target = match headers.get("X-Amzn-SageMaker-Target-Model").map(|v| v.to_str()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return Err(ApiError::bad("X-Amzn-SageMaker-Target-Model is not ASCII")),
    };
    let map = |e: LazyError| match e {
        LazyError::Throttled(m) => ApiError::throttled(m),
        LazyError::Bad(m) => ApiError::bad(m),
        LazyError::Load(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m),
    };
    let permit = lazy.admit().map_err(map)?;
    let (live, cold, evicted) = lazy.get(target).await.map_err(map)?;
    let mut notes = Vec::new();
    if let Some(t) = cold {
        notes.push(("X-NeoRun-Cold-Start-Ms", format!("{:.1}", t.as_secs_f64() * 1e3)));
    }
    if !evicted.is_empty() {
        notes.push(("X-NeoRun-Evicted-Models", evicted.join(",")));
    }
    Ok((live, Some(permit), notes))
}

async fn answer(
    st: &AppState,
    variant: &Variant,
    headers: &HeaderMap,
    body: Body,
) -> Result<Answer, (ApiError, Option<Duration>)> {
    let request = read_body(st, body).await.map_err(|e| (e, None))?;
    let (live, _permit, notes) = model_for(variant, headers).await.map_err(|e| (e, None))?;
    let (batch, out) = decode(&live, headers, &request).map_err(|e| (e, None))?;
    let rows = batch.rows;
    let t = Instant::now();
    let outputs = st.inference.infer(&live, batch).await.map_err(|e| (ApiError::from(e), Some(t.elapsed())))?;
    let model_time = t.elapsed();
    let (content_type, bytes) = encode(&live, out, &outputs, rows).map_err(|e| (e, Some(model_time)))?;
    Ok(Answer { request, content_type, body: Bytes::from(bytes), outputs: Arc::new(outputs), model_time, live, notes })
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn request_content_type(headers: &HeaderMap) -> String {
    header_string(headers, header::CONTENT_TYPE.as_str()).unwrap_or_else(|| "application/json".into())
}

/// Capture and shadow copies of an answered request: nothing here waits.
fn after(st: &Arc<AppState>, ep: &Arc<LiveEndpoint>, variant: &Variant, headers: &HeaderMap, a: &Answer) {
    let inference_id = header_string(headers, "X-Amzn-SageMaker-Inference-Id");
    let custom_attributes = header_string(headers, "X-Amzn-SageMaker-Custom-Attributes");
    let now = SystemTime::now();
    if let Some(spec) = ep.capture.as_ref().filter(|s| s.sampled()) {
        st.capture.submit(Record {
            spec: spec.clone(),
            endpoint: ep.name.as_str().into(),
            variant: variant.name.as_str().into(),
            input: spec.input.then(|| Payload { content_type: request_content_type(headers), data: a.request.clone() }),
            output: spec.output.then(|| Payload { content_type: a.content_type.into(), data: a.body.clone() }),
            inference_id: inference_id.clone(),
            custom_attributes: custom_attributes.clone(),
            time: now,
        });
    }
    // each shadow may hold its share of the spare threads (at least one),
    // and they are offered in a rotating order: a slow shadow that is
    // offered first every time would have the only free thread every time
    let share = (st.spare.size() / ep.shadows.len().max(1)).max(1);
    let first = if ep.shadows.is_empty() { 0 } else { fastrand::usize(..ep.shadows.len()) };
    let order = (0..ep.shadows.len()).map(|k| (first + k) % ep.shadows.len());
    for i in order {
        let shadow = &ep.shadows[i];
        if !(shadow.sampling >= 1.0 || fastrand::f64() < shadow.sampling) {
            continue;
        }
        let series = shadow.series.shadow.clone().expect("a shadow has shadow series");
        if st.inference.busy() || shadow.running.load(Ordering::Relaxed) >= share {
            series.shed();
            shadow.counters.shed();
            continue;
        }
        shadow.running.fetch_add(1, Ordering::Relaxed);
        let copy = ShadowCopy {
            ep: ep.clone(),
            index: i,
            headers: headers.clone(),
            request: a.request.clone(),
            production: a.outputs.clone(),
            inference_id: inference_id.clone(),
            custom_attributes: custom_attributes.clone(),
            st: st.clone(),
        };
        let running = shadow.running.clone();
        if !st.spare.try_run(move || copy.run()) {
            running.fetch_sub(1, Ordering::Relaxed);
            series.shed();
            shadow.counters.shed();
        }
    }
}

/// A shadow's outputs, its answer's content type and bytes, and the model's time.
type ShadowAnswer = (Vec<Tensor>, &'static str, Vec<u8>, Duration);

/// One request copied to one shadow variant.
struct ShadowCopy {
    ep: Arc<LiveEndpoint>,
    index: usize,
    headers: HeaderMap,
    request: Bytes,
    production: Arc<Vec<Tensor>>,
    inference_id: Option<String>,
    custom_attributes: Option<String>,
    st: Arc<AppState>,
}

impl ShadowCopy {
    fn shadow(&self) -> &Shadow {
        &self.ep.shadows[self.index]
    }

    /// Runs on a spare thread: decode, run, compare, capture, count.
    fn run(self) {
        let shadow = self.shadow();
        // gives the shadow's share back however this ends
        struct Done(Arc<AtomicUsize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _done = Done(shadow.running.clone());
        let series = shadow.series.shadow.as_ref().expect("a shadow has shadow series");
        let started = Instant::now();
        let outcome = (|| -> Result<ShadowAnswer, ApiError> {
            let (batch, out) = decode(&shadow.live, &self.headers, &self.request)?;
            let rows = batch.rows;
            let t = Instant::now();
            let outputs = shadow.live.model.predict(batch).map_err(crate::infer::InferError::from)?;
            let model_time = t.elapsed();
            let (ct, bytes) = encode(&shadow.live, out, &outputs, rows)?;
            Ok((outputs, ct, bytes, model_time))
        })();
        match outcome {
            Ok((outputs, ct, bytes, model_time)) => {
                shadow.series.invoked(200, started.elapsed(), Some(model_time));
                shadow.counters.invoked(200, false, started.elapsed(), Some(model_time));
                match compare(&self.production, &outputs) {
                    Agreement::Agree => {
                        series.agreed();
                        shadow.counters.shadow(Some(true));
                    }
                    Agreement::Disagree(d) => {
                        series.disagreed(d);
                        shadow.counters.shadow(Some(false));
                    }
                }
                if let Some(spec) = self.ep.capture.as_ref().filter(|s| s.sampled()) {
                    self.st.capture.submit(Record {
                        spec: spec.clone(),
                        endpoint: self.ep.name.as_str().into(),
                        variant: shadow.name.as_str().into(),
                        input: spec.input.then(|| Payload {
                            content_type: request_content_type(&self.headers),
                            data: self.request.clone(),
                        }),
                        output: spec.output.then(|| Payload { content_type: ct.into(), data: Bytes::from(bytes) }),
                        inference_id: self.inference_id.clone(),
                        custom_attributes: self.custom_attributes.clone(),
                        time: SystemTime::now(),
                    });
                }
            }
            Err(e) => {
                shadow.series.invoked(e.status.as_u16(), started.elapsed(), None);
                shadow.counters.invoked(e.status.as_u16(), false, started.elapsed(), None);
                shadow.counters.shadow(None);
                series.failed();
                tracing::debug!(endpoint = %self.ep.name, shadow = %shadow.name, "shadow failed: {}", e.message);
            }
        }
    }
}

/// `POST /endpoints/{name}/async-invocations` (`InvokeEndpointAsync`):
/// queued, answered 202 with where the answer or the failure will be
/// (`control::async_inference`).
pub async fn async_invocations(State(st): St, Path(endpoint): Path<String>, headers: HeaderMap) -> Response {
    use crate::control::async_inference::SubmitError;
    let Some(cp) = &st.control else {
        return ApiError::bad(
            "asynchronous invocations need an endpoint with an AsyncInferenceConfig (neorun serve --state-dir)",
        )
        .into_response();
    };
    match cp.submit_async(&endpoint, &headers).await {
        Ok(job) => {
            let body = serde_json::json!({ "InferenceId": job.inference_id }).to_string();
            let mut r = (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            for (h, v) in [
                ("X-Amzn-SageMaker-OutputLocation", job.output_location()),
                ("X-Amzn-SageMaker-FailureLocation", job.failure_location()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r.headers_mut().insert(h, v);
                }
            }
            r
        }
        Err(SubmitError::Bad(m)) => ApiError::bad(m).into_response(),
        Err(SubmitError::Internal(m)) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m).into_response(),
    }
}
