//! Asynchronous inference, as SageMaker runs it: `InvokeEndpointAsync`
//! (`POST /endpoints/{name}/async-invocations`) on an endpoint whose
//! configuration has an `AsyncInferenceConfig` queues a request whose
//! payload is already stored (`X-Amzn-SageMaker-InputLocation`: `s3://`, or
//! a local path inside `--async-input-dir`) and answers 202 at once with
//! the `InferenceId` and where the answer (`OutputLocation`) or the reason
//! it failed (`FailureLocation`) will be.
//!
//! (Over 600 lines: the request's checks, the queue on disk, the
//! dispatcher and a request's run share `AsyncJob` and the queue's retry
//! and active sets; the notification's sending is apart, in `notify.rs`.)
//!
//! The queue is on disk (`STATE/async/queue/ID.json`, written atomically
//! before the 202), so a request accepted before a crash, a restart or a
//! `kill -9` is not lost. A request's output is written whole under a name
//! only it uses (a completed upload or a rename), and a request whose
//! output already exists is not run again: after a crash in the middle,
//! each request completes once. Requests run on their own threads in the
//! background scheduling class (`SCHED_IDLE`), at most
//! `MaxConcurrentInvocationsPerInstance` per endpoint, so live traffic
//! keeps its latency; a payload is streamed through the batch pipeline
//! (records of CSV or JSON Lines, or one JSON / `.npy` document), so a
//! 1 GB payload is not held in memory. `RequestTTLSeconds` that pass in
//! the queue and `InvocationTimeoutSeconds` that pass while running give
//! a failure object saying so. A request that ends is announced to the
//! configuration's `NotificationConfig` topics (`notify.rs`) before it
//! leaves the queue.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::json;

use super::{now, ControlPlane};
use crate::jobs::batch::{self, InFormat, JobError, OutFormat, Progress, Spec};
use crate::jobs::objects::{self, Object, Place};

/// SageMaker's bounds on the request headers.
const TTL_RANGE: (u64, u64) = (60, 21_600);
const TIMEOUT_RANGE: (u64, u64) = (1, 3_600);
/// Defaults when the request sets none: six hours in the queue (SageMaker's
/// default), 15 minutes to run.
const DEFAULT_TTL: u64 = 21_600;
const DEFAULT_TIMEOUT: u64 = 900;

/// `NotificationConfig`, read: where an ending is announced (an SNS topic
/// ARN or a webhook URL), and whether the answer goes with it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    pub success: Option<String>,
    pub error: Option<String>,
    pub include_in_success: bool,
    pub include_in_error: bool,
}

/// A queued request.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct AsyncJob {
    /// The file name of the queue record, unique per request.
    pub id: String,
    pub inference_id: String,
    pub endpoint: String,
    pub input: String,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub custom_attributes: Option<String>,
    pub created: f64,
    /// When the request expires if it has not started (`RequestTTLSeconds`).
    pub deadline: f64,
    pub ttl: u64,
    pub timeout: u64,
    /// Where its answer goes, as a place and a name in it.
    pub output_dir: String,
    pub output_name: String,
    pub failure_dir: String,
    pub failure_name: String,
    /// The endpoint configuration's notifications when it was accepted.
    #[serde(default)]
    pub notify: NotifyConfig,
}

impl AsyncJob {
    /// Where its answer will be (`OutputLocation`).
    pub fn output_location(&self) -> String {
        format!("{}/{}", self.output_dir.trim_end_matches('/'), self.output_name)
    }

    /// Where the reason it failed will be (`FailureLocation`).
    pub fn failure_location(&self) -> String {
        format!("{}/{}", self.failure_dir.trim_end_matches('/'), self.failure_name)
    }
}

/// The queue on disk and what runs now.
pub struct AsyncQueue {
    dir: PathBuf,
    /// `--async-input-dir`: the only local directory inputs may be read from.
    input_dir: Option<PathBuf>,
    active: Mutex<HashSet<String>>,
    /// Requests whose failure object could not be written: not tried
    /// again before this time (backing off, doubled up to a minute).
    retry: Mutex<std::collections::HashMap<String, (std::time::Instant, Duration)>>,
    wake: tokio::sync::Notify,
    #[cfg(feature = "s3")]
    outbox: Arc<super::notify::Outbox>,
}

/// Why a request was refused (a 400 naming the header), or the server
/// cannot take it (500).
pub enum SubmitError {
    Bad(String),
    Internal(String),
}

fn join(dir: &str, ext: Option<&str>) -> String {
    match ext {
        None => dir.to_string(),
        Some(e) => format!("{}/{}", dir.trim_end_matches('/'), e.trim_matches('/')),
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SubmitError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| SubmitError::Bad(format!("{name} is not ASCII"))),
    }
}

fn seconds(h: &HeaderMap, name: &str, (lo, hi): (u64, u64), default: u64) -> Result<u64, SubmitError> {
    match header(h, name)? {
        None => Ok(default),
        Some(t) => match t.trim().parse::<u64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(SubmitError::Bad(format!("{name}: {t:?} is not a whole number of seconds from {lo} to {hi}"))),
        },
    }
}

impl AsyncQueue {
    pub fn open(state: &std::path::Path, input_dir: Option<PathBuf>) -> anyhow::Result<Arc<AsyncQueue>> {
        let dir = state.join("async/queue");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let input_dir = match input_dir {
            None => None,
            Some(d) => {
                Some(std::fs::canonicalize(&d).map_err(|e| anyhow::anyhow!("--async-input-dir {}: {e}", d.display()))?)
            }
        };
        Ok(Arc::new(AsyncQueue {
            dir,
            input_dir,
            active: Mutex::default(),
            retry: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            #[cfg(feature = "s3")]
            outbox: super::notify::Outbox::open(state)?,
        }))
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Every queued request, oldest first. A record that does not parse
    /// is set aside (renamed `.bad`), never silently dropped.
    fn queued(&self) -> Vec<AsyncJob> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return out };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<AsyncJob>(&b).ok()) {
                Some(j) => out.push(j),
                None => {
                    tracing::error!(file = %p.display(), "an async queue record that does not parse: set aside as .bad");
                    let _ = std::fs::rename(&p, p.with_extension("bad"));
                }
            }
        }
        out.sort_by(|a, b| a.created.total_cmp(&b.created).then(a.id.cmp(&b.id)));
        out
    }

    fn save(&self, job: &AsyncJob) -> anyhow::Result<()> {
        super::store::write_atomically(&self.path(&job.id), &serde_json::to_vec(job)?)
    }

    /// Keeps a request that could not be finished (its failure object or
    /// its notification could not be written) in the queue, not tried
    /// again for a while: 1 s, doubling to a minute.
    fn hold(&self, id: &str, why: &str) {
        let mut retry = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        let wait = retry.get(id).map_or(Duration::from_secs(1), |(_, w)| (*w * 2).min(Duration::from_secs(60)));
        retry.insert(id.to_string(), (std::time::Instant::now() + wait, wait));
        drop(retry);
        tracing::error!(id, "{why}; trying again in {wait:?}");
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    fn remove(&self, id: &str) {
        if let Err(e) = std::fs::remove_file(self.path(id)) {
            tracing::error!(id, "removing a finished async request from the queue: {e}");
        }
        let _ = std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
    }

    /// Checks a local input location: inside `--async-input-dir`, and there.
    fn local_input(&self, loc: &str) -> Result<String, SubmitError> {
        let Some(allowed) = &self.input_dir else {
            return Err(SubmitError::Bad(format!(
                "X-Amzn-SageMaker-InputLocation {loc:?}: local input locations are off; give s3://BUCKET/KEY, or start neorun serve with --async-input-dir DIR"
            )));
        };
        let path = loc.strip_prefix("file://").unwrap_or(loc);
        let real = std::fs::canonicalize(path)
            .map_err(|e| SubmitError::Bad(format!("X-Amzn-SageMaker-InputLocation {loc:?}: {e}")))?;
        if !real.starts_with(allowed) || !real.is_file() {
            return Err(SubmitError::Bad(format!(
                "X-Amzn-SageMaker-InputLocation {loc:?}: not a file inside the allowed directory {} (--async-input-dir)",
                allowed.display()
            )));
        }
        Ok(real.display().to_string())
    }
}

/// A request's input and answer formats: its content type, else what the
/// input's name suggests; its `Accept`, else the input's format.
fn formats(job: &AsyncJob) -> Result<(InFormat, OutFormat), String> {
    let content_type = match &job.content_type {
        Some(c) => InFormat::parse(c).ok_or_else(|| format!("content type {c:?}"))?,
        None => {
            let name = job.input.rsplit('/').next().unwrap_or_default().to_string();
            let o = Object { rel: name.clone(), key: name, size: 0, version: String::new() };
            batch::guess_format(std::slice::from_ref(&o), true)
        }
    };
    let accept = match job.accept.as_deref().filter(|a| *a != "*/*") {
        Some(a) => OutFormat::parse(a).ok_or_else(|| format!("accept {a:?}"))?,
        None => content_type.default_accept(),
    };
    Ok((content_type, accept))
}

/// The one object at `loc` (a local file, or `s3://BUCKET/KEY` exactly),
/// with the place it is read from.
fn input_object(loc: &str, rt: &tokio::runtime::Handle, name: &str) -> Result<(Place, Object), String> {
    if let Some(rest) = loc.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if key.is_empty() || key.ends_with('/') {
            return Err(format!("{loc}: name an object (s3://BUCKET/KEY), not a prefix"));
        }
        let place = objects::place(&format!("s3://{bucket}/{key}"), Some(rt))?;
        let mut found = place.list_inputs().map_err(|e| e.replace("no object to transform there", "no such object"))?;
        found.retain(|o| o.key == key);
        let mut o = found.pop().ok_or_else(|| format!("{loc}: no such object"))?;
        o.rel = name.to_string();
        return Ok((place, o));
    }
    let place = objects::place(loc, None)?;
    let mut o = place.list_inputs()?.pop().ok_or_else(|| format!("{loc}: no such file"))?;
    o.rel = name.to_string();
    Ok((place, o))
}

impl ControlPlane {
    /// Turns asynchronous invocations on: the queue under the state
    /// directory, and the dispatcher that runs it (requests queued before a
    /// restart start again now).
    pub fn start_async(self: &Arc<Self>, queue: Arc<AsyncQueue>) {
        if self.async_queue.set(queue.clone()).is_err() {
            return;
        }
        #[cfg(feature = "s3")]
        tokio::spawn(queue.outbox.clone().run(self.clone()));
        let cp = self.clone();
        tokio::spawn(async move { cp.dispatch(queue).await });
    }

    /// `InvokeEndpointAsync`: the request checked and queued; its job.
    pub async fn submit_async(self: &Arc<Self>, endpoint: &str, h: &HeaderMap) -> Result<AsyncJob, SubmitError> {
        let Some(queue) = self.async_queue.get().cloned() else {
            return Err(SubmitError::Bad(
                "asynchronous invocations need neorun serve --state-dir DIR (their queue is kept there)".into(),
            ));
        };
        let found = {
            let st = self.lock();
            st.endpoints.get(endpoint).map(|ep| {
                let dep = ep.current.as_ref().or(ep.pending.as_ref());
                dep.and_then(|d| d.config.def.async_config.clone())
            })
        };
        // (not_live_reason takes the state lock itself)
        let config = match found {
            None => return Err(SubmitError::Bad(self.not_live_reason(endpoint))),
            Some(None) => {
                return Err(SubmitError::Bad(format!(
                    "endpoint {endpoint} takes no asynchronous invocations: its endpoint configuration has no AsyncInferenceConfig"
                )))
            }
            Some(Some(c)) => c,
        };
        let input = header(h, "X-Amzn-SageMaker-InputLocation")?
            .ok_or_else(|| {
                SubmitError::Bad("X-Amzn-SageMaker-InputLocation is required: where the payload is stored".into())
            })?
            .to_string();
        let ttl = seconds(h, "X-Amzn-SageMaker-RequestTTLSeconds", TTL_RANGE, DEFAULT_TTL)?;
        let timeout = seconds(h, "X-Amzn-SageMaker-InvocationTimeoutSeconds", TIMEOUT_RANGE, DEFAULT_TIMEOUT)?;
        let content_type = header(h, "X-Amzn-SageMaker-Content-Type")?.map(String::from);
        if let Some(c) = &content_type {
            if InFormat::parse(c).is_none() {
                return Err(SubmitError::Bad(format!(
                    "X-Amzn-SageMaker-Content-Type {c:?}: use text/csv, application/jsonlines, application/json or application/x-npy"
                )));
            }
        }
        let accept = header(h, "X-Amzn-SageMaker-Accept")?.map(String::from);
        if let Some(a) = &accept {
            if OutFormat::parse(a).is_none() && a != "*/*" {
                return Err(SubmitError::Bad(format!(
                    "X-Amzn-SageMaker-Accept {a:?}: use text/csv, application/jsonlines or application/json"
                )));
            }
        }
        let ext = header(h, "X-Amzn-SageMaker-S3OutputPathExtension")?;
        if ext.is_some_and(|e| e.split('/').any(|p| p == ".." || p == ".")) {
            return Err(SubmitError::Bad(
                "X-Amzn-SageMaker-S3OutputPathExtension may not contain . or .. segments".into(),
            ));
        }
        let filename = header(h, "X-Amzn-SageMaker-Filename")?;
        if filename.is_some_and(|f| f.is_empty() || f.contains('/') || f.starts_with('.')) {
            return Err(SubmitError::Bad("X-Amzn-SageMaker-Filename: a file name (no /, not starting with .)".into()));
        }
        // the input must be there and readable now: a 400 beats a failure object
        let input = if input.starts_with("s3://") {
            let (loc, rt) = (input.clone(), tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || input_object(&loc, &rt, "input").map(|_| ()))
                .await
                .map_err(|e| SubmitError::Internal(e.to_string()))?
                .map_err(|e| SubmitError::Bad(format!("X-Amzn-SageMaker-InputLocation: {e}")))?;
            input
        } else {
            queue.local_input(&input)?
        };
        let id = uuid::Uuid::new_v4().to_string();
        let inference_id = match header(h, "X-Amzn-SageMaker-Inference-Id")? {
            Some(i) if i.is_empty() || i.len() > 64 => {
                return Err(SubmitError::Bad("X-Amzn-SageMaker-Inference-Id: 1 to 64 characters".into()))
            }
            Some(i) => i.to_string(),
            None => id.clone(),
        };
        let created = now();
        let job = AsyncJob {
            output_name: filename.map(String::from).unwrap_or_else(|| format!("{id}.out")),
            failure_name: format!("{id}-error.out"),
            output_dir: join(&config.output, ext),
            failure_dir: join(&config.failure, ext),
            id,
            inference_id,
            endpoint: endpoint.to_string(),
            input,
            content_type,
            accept,
            custom_attributes: header(h, "X-Amzn-SageMaker-Custom-Attributes")?.map(String::from),
            created,
            deadline: created + ttl as f64,
            ttl,
            timeout,
            notify: config.notify.clone(),
        };
        queue.save(&job).map_err(|e| SubmitError::Internal(format!("queueing the request: {e}")))?;
        queue.wake.notify_one();
        Ok(job)
    }

    /// Runs queued requests as capacity allows, oldest first.
    async fn dispatch(self: Arc<Self>, queue: Arc<AsyncQueue>) {
        let rt = tokio::runtime::Handle::current();
        loop {
            let jobs = {
                let q = queue.clone();
                tokio::task::spawn_blocking(move || q.queued()).await.unwrap_or_default()
            };
            let mut running: BTreeMap<String, usize> = BTreeMap::new();
            for j in &jobs {
                if queue.active.lock().unwrap_or_else(|e| e.into_inner()).contains(&j.id) {
                    *running.entry(j.endpoint.clone()).or_default() += 1;
                }
            }
            for j in jobs {
                let held = queue
                    .retry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&j.id)
                    .is_some_and(|(t, _)| *t > std::time::Instant::now());
                if held {
                    continue;
                }
                let limit = self.async_limit(&j.endpoint);
                let n = running.entry(j.endpoint.clone()).or_default();
                if *n >= limit || !queue.active.lock().unwrap_or_else(|e| e.into_inner()).insert(j.id.clone()) {
                    continue;
                }
                *n += 1;
                let (cp, q, rt) = (self.clone(), queue.clone(), rt.clone());
                let spawned = std::thread::Builder::new().name("neorun-async".into()).spawn(move || {
                    crate::infer::spare::lower_priority();
                    cp.run_async(&q, j, &rt);
                });
                if let Err(e) = spawned {
                    tracing::error!("starting an async request's thread: {e}");
                }
            }
            tokio::select! {
                _ = queue.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn async_limit(&self, endpoint: &str) -> usize {
        let st = self.lock();
        st.endpoints
            .get(endpoint)
            .and_then(|ep| ep.current.as_ref())
            .and_then(|d| d.config.def.async_config.as_ref())
            .map(|c| c.max_concurrency)
            .unwrap_or(1)
    }

    /// One request to its end: the output, or a failure object saying why.
    fn run_async(&self, q: &AsyncQueue, job: AsyncJob, rt: &tokio::runtime::Handle) {
        let t0 = std::time::Instant::now();
        let result = self.execute_async(&job, rt);
        let (op, detail) = match &result {
            Ok(Some(records)) => {
                ("AsyncInferenceCompleted", json!({"records": records, "seconds": t0.elapsed().as_secs_f64()}))
            }
            Ok(None) => {
                ("AsyncInferenceCompleted", json!({"already": "its output existed: completed before a restart"}))
            }
            Err(m) => ("AsyncInferenceFailed", json!({"reason": m})),
        };
        if let Err(m) = &result {
            let text = json!({
                "InferenceId": job.inference_id,
                "errorMessage": m,
                "InputLocation": job.input,
                "failedAt": super::iso(std::time::SystemTime::now()),
            })
            .to_string();
            let written =
                objects::place(&job.failure_dir, Some(rt)).and_then(|p| p.put(&job.failure_name, text.as_bytes()));
            if let Err(e) = written {
                // kept in the queue: a later pass tries again, backing off
                q.hold(&job.id, &format!("writing the failure object: {e}"));
                return;
            }
        }
        #[cfg(feature = "s3")]
        if let Err(e) = self.announce(q, &job, &result, rt) {
            q.hold(&job.id, &e);
            return;
        }
        self.journal(
            "neorun",
            op,
            &job.endpoint,
            json!({"InferenceId": job.inference_id, "id": job.id, "detail": detail}),
        );
        q.remove(&job.id);
        q.retry.lock().unwrap_or_else(|e| e.into_inner()).remove(&job.id);
        q.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&job.id);
        q.wake.notify_one();
    }

    /// Puts the notification of a request that ended in the outbox, when
    /// its configuration asks for one.
    #[cfg(feature = "s3")]
    fn announce(
        &self,
        q: &AsyncQueue,
        job: &AsyncJob,
        result: &Result<Option<u64>, String>,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), String> {
        use super::notify::{self, Outcome, Target};
        let (target, include) = match result {
            Ok(_) => (&job.notify.success, job.notify.include_in_success),
            Err(_) => (&job.notify.error, job.notify.include_in_error),
        };
        let Some(target) = target else { return Ok(()) };
        let region = match Target::parse(target)? {
            Target::Sns { region, .. } => region,
            Target::Webhook(_) => crate::awsenv::region(&crate::awsenv::shared_files()),
        };
        // the answer (or failure object) itself, when asked for and small
        let body = |dir: &str, name: &str| -> Result<Option<Vec<u8>>, String> {
            if !include {
                return Ok(None);
            }
            let place = objects::place(dir, Some(rt))?;
            match place.size(name)? {
                Some(n) if n <= notify::MAX_INCLUDED => place.get(name),
                _ => Ok(None),
            }
        };
        let formats = formats(job);
        let request_type = job
            .content_type
            .clone()
            .or_else(|| formats.as_ref().ok().map(|f| f.0.mime().to_string()))
            .unwrap_or_default();
        let outcome = match result {
            Ok(_) => Outcome::Completed {
                content_type: formats.as_ref().map(|f| f.1.mime()).unwrap_or("text/csv"),
                output: job.output_location(),
                body: body(&job.output_dir, &job.output_name)?,
            },
            Err(reason) => Outcome::Failed {
                reason,
                failure: job.failure_location(),
                body: body(&job.failure_dir, &job.failure_name)?,
            },
        };
        let message = notify::message(job, &request_type, &outcome, &region, std::time::SystemTime::now());
        q.outbox.put(&notify::Pending {
            id: job.id.clone(),
            inference_id: job.inference_id.clone(),
            endpoint: job.endpoint.clone(),
            target: target.clone(),
            message,
            created: now(),
        })
    }

    /// `Ok(Some(records))`: answered now; `Ok(None)`: its output was already
    /// there (the request completed before a restart).
    fn execute_async(&self, job: &AsyncJob, rt: &tokio::runtime::Handle) -> Result<Option<u64>, String> {
        let out = objects::place(&job.output_dir, Some(rt))?;
        if out.exists(&job.output_name)? {
            return Ok(None);
        }
        if now() > job.deadline {
            return Err(format!(
                "the request expired in the queue: its RequestTTLSeconds ({} s) passed before it could run",
                job.ttl
            ));
        }
        let live =
            self.endpoints.get(&job.endpoint).ok_or_else(|| format!("endpoint {} is not in service", job.endpoint))?;
        let (fleet, i) =
            live.route(None).map_err(|_| format!("endpoint {}: no variant takes traffic", job.endpoint))?;
        let variant = &fleet.variants[i];
        let model = match (&variant.live, &variant.lazy) {
            (Some(l), _) => l.model.clone(),
            (None, Some(lazy)) => {
                let _permit = lazy.admit().map_err(|e| format!("{e:?}"))?;
                rt.block_on(lazy.get(None)).map_err(|e| format!("{e:?}"))?.0.model.clone()
            }
            (None, None) => return Err(format!("endpoint {}: variant {} has no model", job.endpoint, variant.name)),
        };
        let (input, object) = input_object(&job.input, rt, &job.output_name)?;
        let (content_type, accept) = formats(job)?;
        let split_line = matches!(content_type, InFormat::Csv | InFormat::JsonLines);
        let spec = Spec {
            content_type,
            accept,
            gzip: false,
            split_line,
            multi_record: true,
            max_payload: if split_line { Some(6 << 20) } else { Some(100 << 20) },
            max_records: 1024,
            workers: 1,
            background: true,
            assemble_line: true,
            input_filter: None,
            join_input: false,
            output_filter: None,
            skip_malformed: false,
            record: false,
            out_suffix: "",
        };
        let stop = AtomicBool::new(false);
        let progress = Progress::default();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let result = std::thread::scope(|s| {
            let stop = &stop;
            s.spawn(move || {
                if done_rx.recv_timeout(Duration::from_secs(job.timeout)).is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
            });
            let r = batch::run(&model, &spec, &input, std::slice::from_ref(&object), &out, &progress, stop);
            let _ = done_tx.send(());
            r
        });
        match result {
            Ok(s) => Ok(Some(s.records)),
            Err(JobError::Stopped) => Err(format!(
                "the invocation timed out: InvocationTimeoutSeconds ({} s) passed before the model finished",
                job.timeout
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}
