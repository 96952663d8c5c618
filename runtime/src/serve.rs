//! `neorun serve`: HTTP inference speaking SageMaker's inference-container
//! contract and the Open Inference Protocol v2 (KServe, Triton).
//!
//! Requests are parsed on the async runtime; inference runs on tokio's
//! blocking pool, at most `threads` at a time, behind a bounded queue that
//! answers 503 with `Retry-After` when full. Every error is a JSON body
//! `{"error": "..."}` with a 4xx (the request's fault) or 5xx status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use neoc_bundle::manifest::{Dim, TensorSpec};
use serde_json::{json, Value};
use tract_core::prelude::*;

use crate::request::{self, Batch, Format};
use crate::tensors::NamedTensor;
use crate::{Model, PredictError};

/// Server settings (the `neorun serve` flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub max_body_bytes: usize,
    pub timeout: Duration,
    /// Requests allowed to wait for an inference slot before 503.
    pub max_queue: usize,
    /// Inferences running at once.
    pub threads: usize,
    pub auth_token: Option<String>,
    /// The production variant name returned in `X-Amzn-Invoked-Production-Variant`.
    pub variant: String,
    /// Set when shutdown starts: new requests get 503 while in-flight ones finish.
    pub draining: Arc<AtomicBool>,
    /// Dynamic batching: concurrent requests to a model with a symbolic batch
    /// axis are merged into one run of at most this many rows (1 = off).
    pub max_batch: usize,
    /// How long the first request of a batch may wait for others, in µs
    /// (0: merge only what is already queued, adding no latency).
    pub max_queue_delay_us: u64,
}

/// One served model.
pub struct Served {
    pub name: String,
    pub model: Model,
}

/// A histogram with fixed buckets (seconds or rows), Prometheus style.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BOUNDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            out.push_str(&format!("{name}_bucket{{{labels},le=\"{b}\"}} {}\n", c.load(Ordering::Relaxed)));
        }
        let n = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{{labels},le=\"+Inf\"}} {n}\n"));
        out.push_str(&format!("{name}_sum{{{labels}}} {}\n", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6));
        out.push_str(&format!("{name}_count{{{labels}}} {n}\n"));
    }
}

struct ModelMetrics {
    requests: AtomicU64,
    errors_4xx: AtomicU64,
    errors_5xx: AtomicU64,
    latency: Histogram,
    queue: Histogram,
    batch: Histogram,
}

impl ModelMetrics {
    fn new() -> ModelMetrics {
        ModelMetrics {
            requests: AtomicU64::new(0),
            errors_4xx: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_BOUNDS),
            queue: Histogram::new(LATENCY_BOUNDS),
            batch: Histogram::new(BATCH_BOUNDS),
        }
    }
}

/// A request waiting for the batcher.
struct Job {
    batch: Batch,
    queued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Tensor>, ApiError>>,
}

struct AppState {
    models: BTreeMap<String, Arc<Served>>,
    batchers: BTreeMap<String, tokio::sync::mpsc::UnboundedSender<Job>>,
    default_model: String,
    cfg: Config,
    metrics: BTreeMap<String, ModelMetrics>,
    slots: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    rejected: AtomicU64,
}

/// An error response: status and message, sent as `{"error": message}`.
trait CloneAcquire {
    async fn clone_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit>;
}

impl CloneAcquire for Arc<tokio::sync::Semaphore> {
    async fn clone_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.clone().acquire_owned().await.ok()
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: false }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r =
            (self.status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": self.message }).to_string())
                .into_response();
        if self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Builds the router over loaded models (the first is the default for `/invocations`).
pub fn router(models: Vec<Served>, cfg: Config) -> Router {
    let default_model = models.first().map(|m| m.name.clone()).unwrap_or_default();
    let metrics = models.iter().map(|m| (m.name.clone(), ModelMetrics::new())).collect();
    let models: BTreeMap<String, Arc<Served>> = models.into_iter().map(|m| (m.name.clone(), Arc::new(m))).collect();
    let mut receivers = Vec::new();
    let mut batchers = BTreeMap::new();
    for (name, s) in &models {
        if cfg.max_batch > 1 && batchable(&s.model) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            batchers.insert(name.clone(), tx);
            receivers.push((s.clone(), rx));
        }
    }
    let state = Arc::new(AppState {
        slots: Arc::new(tokio::sync::Semaphore::new(cfg.threads.max(1))),
        models,
        batchers,
        default_model,
        metrics,
        waiting: AtomicUsize::new(0),
        rejected: AtomicU64::new(0),
        cfg,
    });
    for (served, rx) in receivers {
        tokio::spawn(batcher(state.clone(), served, rx));
    }
    Router::new()
        .route("/ping", get(ping))
        .route("/invocations", post(invocations))
        .route("/endpoints/{endpoint}/invocations", post(endpoint_invocations))
        .route("/v2", get(v2_server))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{model}", get(v2_metadata))
        .route("/v2/models/{model}/versions/{version}", get(v2_metadata_version))
        .route("/v2/models/{model}/ready", get(v2_model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(v2_model_ready_version))
        .route("/v2/models/{model}/infer", post(v2_infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(v2_infer_version))
        .route("/metrics", get(metrics_route))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Authentication, the request timeout, and refusal while draining.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let health = path == "/ping" || path.starts_with("/v2/health");
    if let Some(token) = &st.cfg.auth_token {
        if !health {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
            if !ok {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token (Authorization: Bearer …)",
                )
                .into_response();
            }
        }
    }
    if st.cfg.draining.load(Ordering::Relaxed) && !health {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
        e.retry_after = true;
        return e.into_response();
    }
    match tokio::time::timeout(st.cfg.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("request not completed within {:?}", st.cfg.timeout))
                .into_response()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_body(st: &AppState, body: Body) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, st.cfg.max_body_bytes).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("length limit") {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body is larger than the {} byte limit", st.cfg.max_body_bytes),
                ))
            } else {
                Err(ApiError::bad(format!("reading the body: {msg}")))
            }
        }
    }
}

/// A model can be batched dynamically when every input and output has a
/// symbolic first axis: requests then concatenate and split along it.
fn batchable(model: &Model) -> bool {
    let m = &model.manifest;
    m.inputs.iter().chain(&m.outputs).all(|s| matches!(s.shape.first(), Some(Dim::Symbol(_))))
}

fn engine_error(e: PredictError) -> ApiError {
    match e {
        PredictError::BadRequest(b) => ApiError::bad(b.0),
        PredictError::Engine(msg) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("inference failed: {msg}"))
        }
    }
}

/// Merges queued requests of one model into batched runs: it takes the first
/// waiting request, then whatever else arrives within `max_queue_delay_us`
/// (or is already queued) up to `max_batch` rows, runs them as one batch,
/// and splits the outputs back. Runs proceed while the next batch gathers.
async fn batcher(st: Arc<AppState>, served: Arc<Served>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>) {
    let max_rows = st.cfg.max_batch;
    let delay = Duration::from_micros(st.cfg.max_queue_delay_us);
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut rows = first.batch.rows;
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + delay;
        while rows < max_rows {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(_) if delay.is_zero() => None,
                Err(_) => tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten(),
            };
            let Some(j) = next else { break };
            if rows + j.batch.rows > max_rows {
                carry = Some(j);
                break;
            }
            rows += j.batch.rows;
            jobs.push(j);
        }
        st.waiting.fetch_sub(jobs.len(), Ordering::SeqCst);
        let permit = match st.slots.clone_acquire().await {
            Some(p) => p,
            None => return,
        };
        let m = &st.metrics[&served.name];
        for j in &jobs {
            m.queue.observe(j.queued.elapsed().as_secs_f64());
        }
        m.batch.observe(rows as f64);
        let served = served.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (inputs, parts): (Vec<Vec<Tensor>>, Vec<(usize, tokio::sync::oneshot::Sender<_>)>) =
                jobs.into_iter().map(|j| (j.batch.inputs, (j.batch.rows, j.reply))).unzip();
            let result = tokio::task::spawn_blocking(move || -> Result<Vec<Tensor>, ApiError> {
                let n_inputs = inputs[0].len();
                let merged = (0..n_inputs)
                    .map(|i| {
                        let all: Vec<&Tensor> = inputs.iter().map(|ins| &ins[i]).collect();
                        if all.len() == 1 {
                            Ok(all[0].clone())
                        } else {
                            Tensor::stack_tensors(0, &all)
                        }
                    })
                    .collect::<TractResult<Vec<_>>>()
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("merging a batch: {e}")))?;
                served.model.run(merged).map_err(engine_error)
            })
            .await
            .unwrap_or_else(|e| {
                Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("inference task failed: {e}")))
            });
            match result {
                Ok(outputs) => {
                    let mut start = 0;
                    for (n, reply) in parts {
                        let mine = outputs
                            .iter()
                            .map(|t| t.slice(0, start, start + n))
                            .collect::<TractResult<Vec<_>>>()
                            .map_err(|e| {
                                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("splitting a batch: {e}"))
                            });
                        let _ = reply.send(mine);
                        start += n;
                    }
                }
                Err(e) => {
                    for (_, reply) in parts {
                        let _ = reply.send(Err(ApiError {
                            status: e.status,
                            message: e.message.clone(),
                            retry_after: false,
                        }));
                    }
                }
            }
        });
    }
}

/// Runs a prediction on the blocking pool, behind the bounded queue; through
/// the model's batcher when it has one.
async fn infer(st: &Arc<AppState>, served: Arc<Served>, batch: Batch) -> Result<Vec<Tensor>, ApiError> {
    let m = &st.metrics[&served.name];
    let queued = Instant::now();
    if st.waiting.fetch_add(1, Ordering::SeqCst) >= st.cfg.max_queue + st.cfg.threads {
        st.waiting.fetch_sub(1, Ordering::SeqCst);
        st.rejected.fetch_add(1, Ordering::Relaxed);
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "inference queue is full; retry later");
        e.retry_after = true;
        return Err(e);
    }
    if let Some(tx) = st.batchers.get(&served.name) {
        // check this request alone first: a bad one must not fail a merged batch
        if let Err(e) = served.model.check_inputs(&batch.inputs) {
            st.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(engine_error(e));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        if tx.send(Job { batch, queued, reply }).is_err() {
            st.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"));
        }
        return rx.await.unwrap_or_else(|_| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "batcher stopped")));
    }
    let permit = st.slots.acquire().await;
    st.waiting.fetch_sub(1, Ordering::SeqCst);
    let _permit = permit.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"))?;
    m.queue.observe(queued.elapsed().as_secs_f64());
    m.batch.observe(batch.rows as f64);
    let result = tokio::task::spawn_blocking(move || served.model.predict(batch))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("inference task failed: {e}")))?;
    result.map_err(engine_error)
}

/// Counts a request and its outcome in the model's metrics.
fn account(st: &AppState, model: &str, started: Instant, r: &Result<Response, ApiError>) {
    if let Some(m) = st.metrics.get(model) {
        m.requests.fetch_add(1, Ordering::Relaxed);
        m.latency.observe(started.elapsed().as_secs_f64());
        if let Err(e) = r {
            if e.status.is_client_error() {
                m.errors_4xx.fetch_add(1, Ordering::Relaxed);
            } else {
                m.errors_5xx.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn ping(State(st): State<Arc<AppState>>) -> Response {
    if st.models.is_empty() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no model loaded").into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"healthy\"}").into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    Json,
    Csv,
    JsonLines,
}

fn content_type(headers: &HeaderMap) -> Result<(Format, bool), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match base.as_str() {
        "text/csv" => Ok((Format::Csv, false)),
        "application/json" => Ok((Format::Json, false)),
        "application/jsonlines" | "application/x-jsonlines" | "application/jsonl" => Ok((Format::Json, true)),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type `{other}` is not supported; use text/csv, application/json or application/jsonlines"),
        )),
    }
}

fn accept(headers: &HeaderMap) -> Result<Out, ApiError> {
    let Some(a) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Out::Json) };
    for part in a.split(',') {
        match part.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "application/json" | "*/*" | "application/*" | "" => return Ok(Out::Json),
            "text/csv" | "text/*" => return Ok(Out::Csv),
            "application/jsonlines" | "application/x-jsonlines" | "application/jsonl" => return Ok(Out::JsonLines),
            _ => {}
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        format!("cannot answer in `{a}`; accept application/json, text/csv or application/jsonlines"),
    ))
}

async fn invocations(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    sagemaker(st, headers, body).await
}

async fn endpoint_invocations(
    State(st): State<Arc<AppState>>,
    Path(_endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    sagemaker(st, headers, body).await
}

async fn sagemaker(st: Arc<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    // multi-model endpoints name the model; otherwise the default one answers
    let name = headers
        .get("X-Amzn-SageMaker-Target-Model")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_end_matches(".neo").to_string())
        .unwrap_or_else(|| st.default_model.clone());
    let r = sagemaker_inner(&st, &name, &headers, body).await;
    account(&st, &name, started, &r);
    let mut resp = match r {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&st.cfg.variant) {
        resp.headers_mut().insert("X-Amzn-Invoked-Production-Variant", v);
    }
    if let Some(id) = headers.get("X-Amzn-SageMaker-Inference-Id") {
        resp.headers_mut().insert("X-Amzn-SageMaker-Inference-Id", id.clone());
    }
    resp
}

async fn sagemaker_inner(
    st: &Arc<AppState>,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let served = st.models.get(name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown model `{name}`; served: {}", st.models.keys().cloned().collect::<Vec<_>>().join(", ")),
        )
    })?;
    let (format, lines) = content_type(headers)?;
    let out = accept(headers)?;
    let bytes = read_body(st, body).await?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad("empty body"));
    }
    let body =
        if lines { request::jsonlines_to_instances(&bytes).map_err(|e| ApiError::bad(e.0))? } else { bytes.to_vec() };
    let batch = request::parse(&body, format, &served.model.manifest.inputs).map_err(|e| {
        ApiError::bad(format!(
            "{e} (the model's inputs are {})",
            request::describe_inputs(&served.model.manifest.inputs)
        ))
    })?;
    let rows = batch.rows;
    let outputs = infer(st, served.clone(), batch).await?;
    let names = served.model.output_names();
    let (ct, bytes) = match out {
        Out::Json => ("application/json", request::to_json(&names, &outputs)),
        Out::Csv => ("text/csv", request::to_csv(&names, &outputs, rows)),
        Out::JsonLines => ("application/jsonlines", request::to_jsonlines(&names, &outputs, rows)),
    };
    let bytes = bytes.map_err(|e| ApiError::new(StatusCode::NOT_ACCEPTABLE, e.to_string()))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], bytes).into_response())
}

// ------------------------------------------------------------------ OIP v2

fn v2_datatype(dtype: &str) -> &'static str {
    match dtype {
        "f32" => "FP32",
        "f64" => "FP64",
        "f16" => "FP16",
        "i64" => "INT64",
        "i32" => "INT32",
        "i16" => "INT16",
        "i8" => "INT8",
        "u64" => "UINT64",
        "u32" => "UINT32",
        "u16" => "UINT16",
        "u8" => "UINT8",
        "bool" => "BOOL",
        _ => "BYTES",
    }
}

fn v2_shape(shape: &[Dim]) -> Vec<i64> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as i64,
            Dim::Symbol(_) => -1,
        })
        .collect()
}

fn v2_specs(specs: &[TensorSpec]) -> Value {
    Value::Array(
        specs
            .iter()
            .map(|s| json!({"name": s.name, "datatype": v2_datatype(&s.dtype), "shape": v2_shape(&s.shape)}))
            .collect(),
    )
}

fn model_or_404<'a>(st: &'a AppState, name: &str, version: Option<&str>) -> Result<&'a Arc<Served>, ApiError> {
    let served =
        st.models.get(name).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown model `{name}`")))?;
    if let Some(v) = version {
        if v != served.model.manifest.model.version {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model `{name}` has no version `{v}` (serving {})", served.model.manifest.model.version),
            ));
        }
    }
    Ok(served)
}

async fn v2_server() -> Response {
    axum::Json(json!({"name": "neorun", "version": env!("CARGO_PKG_VERSION"), "extensions": []})).into_response()
}

async fn v2_live() -> Response {
    axum::Json(json!({"live": true})).into_response()
}

async fn v2_ready(State(st): State<Arc<AppState>>) -> Response {
    let ready = !st.models.is_empty();
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, axum::Json(json!({"ready": ready})))
        .into_response()
}

fn metadata(st: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let s = model_or_404(st, name, version)?;
    let m = &s.model.manifest;
    Ok(axum::Json(json!({
        "name": s.name,
        "versions": [m.model.version],
        "platform": format!("neoc-{}", m.engine.name),
        "inputs": v2_specs(&m.inputs),
        "outputs": v2_specs(&m.outputs),
    }))
    .into_response())
}

async fn v2_metadata(State(st): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    metadata(&st, &model, None).unwrap_or_else(|e| e.into_response())
}

async fn v2_metadata_version(
    State(st): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata(&st, &model, Some(&version)).unwrap_or_else(|e| e.into_response())
}

async fn v2_model_ready(State(st): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match model_or_404(&st, &model, None) {
        Ok(_) => axum::Json(json!({"name": model, "ready": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn v2_model_ready_version(
    State(st): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    match model_or_404(&st, &model, Some(&version)) {
        Ok(_) => axum::Json(json!({"name": model, "ready": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn v2_infer(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    v2_infer_any(st, model, None, headers, body).await
}

async fn v2_infer_version(
    State(st): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    v2_infer_any(st, model, Some(version), headers, body).await
}

async fn v2_infer_any(
    st: Arc<AppState>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = v2_infer_inner(&st, &model, version.as_deref(), &headers, body).await;
    account(&st, &model, started, &r);
    r.unwrap_or_else(|e| e.into_response())
}

/// Flattens nested JSON arrays (OIP allows both flat and nested `data`).
fn flatten_data(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten_data(x, out)),
        other => out.push(other.clone()),
    }
}

/// Size in bytes of one element of an OIP datatype, for the binary extension.
fn v2_elem_size(dt: &str) -> Option<usize> {
    Some(match dt {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

/// Decodes a binary-extension input (little-endian, row-major).
fn tensor_from_raw(dt: &str, shape: &[usize], raw: &[u8]) -> TractResult<Tensor> {
    macro_rules! le {
        ($ty:ty, $n:expr) => {{
            let v: Vec<$ty> = raw.chunks_exact($n).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap())).collect();
            Tensor::from_shape(shape, &v)?
        }};
    }
    Ok(match dt {
        "FP32" => le!(f32, 4),
        "FP64" => le!(f64, 8),
        "INT64" => le!(i64, 8),
        "INT32" => le!(i32, 4),
        "INT16" => le!(i16, 2),
        "INT8" => le!(i8, 1),
        "UINT64" => le!(u64, 8),
        "UINT32" => le!(u32, 4),
        "UINT16" => le!(u16, 2),
        "UINT8" => le!(u8, 1),
        "BOOL" => Tensor::from_shape(shape, &raw.iter().map(|b| *b != 0).collect::<Vec<bool>>())?,
        other => anyhow::bail!("binary data of type {other} is not supported"),
    })
}

/// Encodes an output for the binary extension (little-endian, row-major).
fn tensor_to_raw(t: &Tensor) -> TractResult<Vec<u8>> {
    let p = t.try_as_plain_ram()?;
    macro_rules! le {
        ($ty:ty) => {
            p.as_slice::<$ty>()?.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
    }
    Ok(match t.datum_type() {
        DatumType::F32 => le!(f32),
        DatumType::F64 => le!(f64),
        DatumType::I64 => le!(i64),
        DatumType::I32 => le!(i32),
        DatumType::I16 => le!(i16),
        DatumType::I8 => le!(i8),
        DatumType::U64 => le!(u64),
        DatumType::U32 => le!(u32),
        DatumType::U16 => le!(u16),
        DatumType::U8 => le!(u8),
        DatumType::Bool => p.as_slice::<bool>()?.iter().map(|b| *b as u8).collect(),
        other => anyhow::bail!("output type {other:?} cannot be sent as binary data"),
    })
}

async fn v2_infer_inner(
    st: &Arc<AppState>,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let served = model_or_404(st, name, version)?.clone();
    let bytes = read_body(st, body).await?;
    // binary tensor extension: a JSON header of the given length, then raw tensors
    let header_len = match headers.get("Inference-Header-Content-Length") {
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| ApiError::bad("Inference-Header-Content-Length is not a number"))?;
            if n > bytes.len() {
                return Err(ApiError::bad(format!(
                    "Inference-Header-Content-Length {n} is beyond the {} byte body",
                    bytes.len()
                )));
            }
            n
        }
        None => bytes.len(),
    };
    let (json_part, mut binary) = bytes.split_at(header_len);
    let req: Value =
        serde_json::from_slice(json_part).map_err(|e| ApiError::bad(format!("body is not valid JSON: {e}")))?;
    let specs = &served.model.manifest.inputs;
    let inputs =
        req.get("inputs").and_then(|i| i.as_array()).ok_or_else(|| ApiError::bad("request has no \"inputs\" array"))?;
    // binary sections follow the order of the request's inputs
    let mut raw_of: BTreeMap<String, &[u8]> = BTreeMap::new();
    for inp in inputs {
        if let Some(size) = inp.get("parameters").and_then(|p| p.get("binary_data_size")).and_then(|s| s.as_u64()) {
            let size = size as usize;
            if size > binary.len() {
                return Err(ApiError::bad(format!(
                    "binary data of input {} is truncated",
                    inp.get("name").unwrap_or(&Value::Null)
                )));
            }
            let (mine, rest) = binary.split_at(size);
            raw_of.insert(inp.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string(), mine);
            binary = rest;
        }
    }
    if !binary.is_empty() {
        return Err(ApiError::bad(format!("{} bytes of binary data belong to no input", binary.len())));
    }
    let mut tensors = Vec::with_capacity(specs.len());
    let mut rows = None;
    for spec in specs {
        let inp = inputs
            .iter()
            .find(|i| i.get("name").and_then(|n| n.as_str()) == Some(&spec.name))
            .ok_or_else(|| ApiError::bad(format!("input `{}` is missing", spec.name)))?;
        let dt = inp.get("datatype").and_then(|d| d.as_str()).unwrap_or("");
        let want = v2_datatype(&spec.dtype);
        if dt != want {
            return Err(ApiError::bad(format!("input `{}` has datatype {dt:?}; the model takes {want}", spec.name)));
        }
        let shape: Vec<usize> = inp
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| ApiError::bad(format!("input `{}` has no shape", spec.name)))?
            .iter()
            .map(|d| {
                d.as_u64().map(|n| n as usize).ok_or_else(|| {
                    ApiError::bad(format!("input `{}`: shape must hold non-negative integers", spec.name))
                })
            })
            .collect::<Result<_, _>>()?;
        if let Some(raw) = raw_of.get(&spec.name) {
            let n: usize = shape.iter().product();
            let size = v2_elem_size(dt)
                .ok_or_else(|| ApiError::bad(format!("input `{}`: binary {dt} is not supported", spec.name)))?;
            if raw.len() != n * size {
                return Err(ApiError::bad(format!(
                    "input `{}`: {} bytes of binary data for shape {shape:?} of {dt} ({} expected)",
                    spec.name,
                    raw.len(),
                    n * size
                )));
            }
            let t =
                tensor_from_raw(dt, &shape, raw).map_err(|e| ApiError::bad(format!("input `{}`: {e}", spec.name)))?;
            let r = shape.first().copied().unwrap_or(1);
            if rows.is_some_and(|x| x != r) {
                return Err(ApiError::bad("inputs have different batch sizes"));
            }
            rows = Some(r);
            tensors.push(t);
            continue;
        }
        let mut leaves = Vec::new();
        flatten_data(
            inp.get("data").ok_or_else(|| ApiError::bad(format!("input `{}` has no data", spec.name)))?,
            &mut leaves,
        );
        let n: usize = shape.iter().product();
        if leaves.len() != n {
            return Err(ApiError::bad(format!(
                "input `{}`: {} values for shape {shape:?} ({n} expected)",
                spec.name,
                leaves.len()
            )));
        }
        // reuse the request parser on a nested array of exactly this shape
        let nested = nest(&leaves, &shape);
        let one = TensorSpec { name: spec.name.clone(), dtype: spec.dtype.clone(), shape: spec.shape.clone() };
        let b = request::parse(nested.to_string().as_bytes(), Format::Json, std::slice::from_ref(&one))
            .map_err(|e| ApiError::bad(e.0))?;
        if rows.is_some_and(|r| r != b.rows) {
            return Err(ApiError::bad("inputs have different batch sizes"));
        }
        rows = Some(b.rows);
        tensors.extend(b.inputs);
    }
    let batch = Batch { rows: rows.unwrap_or(1), inputs: tensors };
    let outputs = infer(st, served.clone(), batch).await?;
    let wanted: Option<Vec<&str>> = req
        .get("outputs")
        .and_then(|o| o.as_array())
        .map(|a| a.iter().filter_map(|o| o.get("name").and_then(|n| n.as_str())).collect());
    let m = &served.model.manifest;
    let all_binary =
        req.get("parameters").and_then(|p| p.get("binary_data_output")).and_then(|b| b.as_bool()).unwrap_or(false);
    let binary_wanted = |name: &str| {
        all_binary
            || req.get("outputs").and_then(|o| o.as_array()).is_some_and(|a| {
                a.iter().any(|o| {
                    o.get("name").and_then(|n| n.as_str()) == Some(name)
                        && o.get("parameters").and_then(|p| p.get("binary_data")).and_then(|b| b.as_bool())
                            == Some(true)
                })
            })
    };
    let mut outs = Vec::new();
    let mut out_binary: Vec<u8> = Vec::new();
    for (spec, t) in m.outputs.iter().zip(&outputs) {
        if wanted.as_ref().is_some_and(|w| !w.contains(&spec.name.as_str())) {
            continue;
        }
        if binary_wanted(&spec.name) {
            let raw = tensor_to_raw(t).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            outs.push(json!({"name": spec.name, "datatype": v2_datatype(&spec.dtype), "shape": t.shape(), "parameters": {"binary_data_size": raw.len()}}));
            out_binary.extend(raw);
            continue;
        }
        let nt = NamedTensor::from_tensor(&spec.name, t)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        outs.push(json!({"name": spec.name, "datatype": v2_datatype(&spec.dtype), "shape": nt.shape, "data": nt.data}));
    }
    if let Some(w) = &wanted {
        if let Some(missing) = w.iter().find(|n| !m.outputs.iter().any(|o| &o.name == *n)) {
            return Err(ApiError::bad(format!("unknown output `{missing}`")));
        }
    }
    let mut resp = json!({"model_name": served.name, "model_version": m.model.version, "outputs": outs});
    if let Some(id) = req.get("id") {
        resp["id"] = id.clone();
    }
    if out_binary.is_empty() {
        return Ok(axum::Json(resp).into_response());
    }
    let mut body = resp.to_string().into_bytes();
    let json_len = body.len();
    body.extend(out_binary);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::HeaderName::from_static("inference-header-content-length"), json_len.to_string()),
        ],
        body,
    )
        .into_response())
}

fn nest(leaves: &[Value], shape: &[usize]) -> Value {
    match shape {
        [] => leaves.first().cloned().unwrap_or(Value::Null),
        [_] => Value::Array(leaves.to_vec()),
        [n, rest @ ..] => {
            let w: usize = rest.iter().product();
            Value::Array((0..*n).map(|i| nest(&leaves[i * w..(i + 1) * w], rest)).collect())
        }
    }
}

async fn metrics_route(State(st): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    out.push_str("# TYPE neorun_requests_total counter\n# TYPE neorun_errors_total counter\n# TYPE neorun_request_duration_seconds histogram\n# TYPE neorun_queue_duration_seconds histogram\n# TYPE neorun_batch_rows histogram\n");
    for (name, m) in &st.metrics {
        let labels = format!("model=\"{name}\",variant=\"{}\"", st.cfg.variant);
        out.push_str(&format!("neorun_requests_total{{{labels}}} {}\n", m.requests.load(Ordering::Relaxed)));
        out.push_str(&format!(
            "neorun_errors_total{{{labels},class=\"4xx\"}} {}\n",
            m.errors_4xx.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "neorun_errors_total{{{labels},class=\"5xx\"}} {}\n",
            m.errors_5xx.load(Ordering::Relaxed)
        ));
        m.latency.render(&mut out, "neorun_request_duration_seconds", &labels);
        m.queue.render(&mut out, "neorun_queue_duration_seconds", &labels);
        m.batch.render(&mut out, "neorun_batch_rows", &labels);
    }
    out.push_str(&format!(
        "# TYPE neorun_rejected_total counter\nneorun_rejected_total {}\n",
        st.rejected.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "# TYPE neorun_queue_waiting gauge\nneorun_queue_waiting {}\n",
        st.waiting.load(Ordering::Relaxed)
    ));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Serves until SIGTERM/SIGINT, then drains: in-flight requests finish, new
/// ones get 503, and the function returns.
pub async fn serve(listener: tokio::net::TcpListener, models: Vec<Served>, cfg: Config) -> std::io::Result<()> {
    let draining = cfg.draining.clone();
    let app = router(models, cfg);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            draining.store(true, Ordering::SeqCst);
        })
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}
