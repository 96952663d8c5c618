//! Batch transform jobs on the control plane, as SageMaker defines them:
//! `CreateTransformJob`, `DescribeTransformJob`, `StopTransformJob`,
//! `ListTransformJobs` (boto3's `sagemaker` client and its
//! `transform_job_completed_or_stopped` waiter work unchanged).
//!
//! A job runs `jobs::batch` on its own threads in the background
//! scheduling class (`SCHED_IDLE`: live endpoints keep the CPUs first),
//! with the model it names opened (and verified) again for the job. Its
//! record is persisted with the other control-plane state: a job that was
//! `InProgress` when neorun stopped (even by `kill -9`) is run again at the
//! next start, and since batch jobs are resumable, the objects whose output
//! was complete are kept and the rest redone. Input and output locations
//! are `s3://` on the S3-compatible store the process's AWS environment
//! names, or local paths (`file://`), as `neorun batch` takes them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::shapes::{invalid, Fields};
use super::{now, AwsError, Caller, ControlPlane};
use crate::jobs::batch::{self, InFormat, JobError, JsonPath, OutFormat, Progress, Spec};
use crate::jobs::objects;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JobStatus {
    InProgress,
    Completed,
    Failed,
    Stopping,
    Stopped,
}

impl JobStatus {
    pub(super) fn name(self) -> &'static str {
        match self {
            JobStatus::InProgress => "InProgress",
            JobStatus::Completed => "Completed",
            JobStatus::Failed => "Failed",
            JobStatus::Stopping => "Stopping",
            JobStatus::Stopped => "Stopped",
        }
    }

    fn parse(s: &str) -> JobStatus {
        match s {
            "Completed" => JobStatus::Completed,
            "Failed" => JobStatus::Failed,
            "Stopping" => JobStatus::Stopping,
            "Stopped" => JobStatus::Stopped,
            _ => JobStatus::InProgress,
        }
    }
}

/// What a request asks for, checked; the content type may be left to the
/// object names (resolved once the objects are listed).
#[derive(Clone)]
struct Plan {
    model: String,
    input: String,
    output: String,
    content_type: Option<InFormat>,
    accept: Option<OutFormat>,
    spec: Spec,
}

pub(super) struct TransformRec {
    pub(super) name: String,
    arn: String,
    /// The request as sent (what Describe echoes).
    request: Value,
    pub(super) status: JobStatus,
    failure: Option<String>,
    pub(super) created: f64,
    pub(super) modified: f64,
    started: Option<f64>,
    ended: Option<f64>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    /// The last run's counts: objects, records, records skipped.
    counts: Option<(usize, u64, u64)>,
}

impl TransformRec {
    pub(super) fn arn(&self) -> &str {
        &self.arn
    }
    pub(super) fn ended(&self) -> Option<f64> {
        self.ended
    }
    pub(super) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

/// SageMaker's checks on a CreateTransformJob request, and the job it makes.
fn parse(v: &Value) -> Result<(String, Plan), AwsError> {
    let mut f = Fields::new("", v)?;
    let name = f.name("TransformJobName")?.to_string();
    let model = f.name("ModelName")?.to_string();
    let workers = match f.int("MaxConcurrentTransforms")? {
        None | Some(0) => crate::cpus::allowed().map(|c| c.len()).unwrap_or(1).max(1),
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(_) => return Err(invalid("MaxConcurrentTransforms", "give 0 (the CPUs) to 1000")),
    };
    let max_payload = match f.int("MaxPayloadInMB")? {
        None => Some(6 << 20),
        Some(0) => None,
        Some(n) if (1..=100).contains(&n) => Some((n as usize) << 20),
        Some(_) => return Err(invalid("MaxPayloadInMB", "give 0 (no limit) to 100")),
    };
    let multi_record = match f.str("BatchStrategy")? {
        None | Some("MultiRecord") => true,
        Some("SingleRecord") => false,
        Some(o) => return Err(invalid("BatchStrategy", &format!("{o:?}: use MultiRecord or SingleRecord"))),
    };
    f.ignore(&["Environment", "Tags", "ExperimentConfig", "TransformResources"]);
    f.refuse(&[
        ("DataCaptureConfig", "batch data capture is not supported; the outputs are the record"),
        ("BatchDataCaptureConfig", "batch data capture is not supported; the outputs are the record"),
    ])?;
    if let Some(mut m) = f.obj("ModelClientConfig")? {
        m.ignore(&["InvocationsTimeoutInSeconds", "InvocationsMaxRetries"]);
        m.finish(&mut Vec::new())?;
    }
    let mut ti = f.obj("TransformInput")?.ok_or_else(|| invalid("TransformInput", "required"))?;
    let mut ds = ti.obj("DataSource")?.ok_or_else(|| invalid("TransformInput.DataSource", "required"))?;
    let mut s3 =
        ds.obj("S3DataSource")?.ok_or_else(|| invalid("TransformInput.DataSource.S3DataSource", "required"))?;
    match s3.str("S3DataType")? {
        None | Some("S3Prefix") => {}
        Some("ManifestFile") | Some("AugmentedManifestFile") => {
            return Err(invalid(
                "TransformInput.DataSource.S3DataSource.S3DataType",
                "manifest files are not supported; give an S3Prefix (every object under it is transformed)",
            ))
        }
        Some(o) => {
            return Err(invalid("TransformInput.DataSource.S3DataSource.S3DataType", &format!("{o:?}: use S3Prefix")))
        }
    }
    let input = s3.req_str("S3Uri")?.to_string();
    s3.finish(&mut Vec::new())?;
    ds.finish(&mut Vec::new())?;
    let content_type = match ti.str("ContentType")? {
        None => None,
        Some(c) => Some(InFormat::parse(c).ok_or_else(|| {
            invalid(
                "TransformInput.ContentType",
                &format!("{c:?}: use text/csv or application/jsonlines (with SplitType None also application/json, application/x-npy)"),
            )
        })?),
    };
    let gzip = match ti.str("CompressionType")? {
        None | Some("None") => false,
        Some("Gzip") => true,
        Some(o) => return Err(invalid("TransformInput.CompressionType", &format!("{o:?}: use None or Gzip"))),
    };
    let split_line = match ti.str("SplitType")? {
        None | Some("None") => false,
        Some("Line") => true,
        Some(o @ ("RecordIO" | "TFRecord")) => {
            return Err(invalid("TransformInput.SplitType", &format!("{o} is not supported; use Line or None")))
        }
        Some(o) => return Err(invalid("TransformInput.SplitType", &format!("{o:?}: use Line or None"))),
    };
    ti.finish(&mut Vec::new())?;
    let mut to = f.obj("TransformOutput")?.ok_or_else(|| invalid("TransformOutput", "required"))?;
    let output = to.req_str("S3OutputPath")?.to_string();
    let accept = match to.str("Accept")? {
        None => None,
        Some(a) => Some(OutFormat::parse(a).ok_or_else(|| {
            invalid(
                "TransformOutput.Accept",
                &format!("{a:?}: use text/csv, application/jsonlines or application/json"),
            )
        })?),
    };
    let assemble_line = match to.str("AssembleWith")? {
        None | Some("None") => false,
        Some("Line") => true,
        Some(o) => return Err(invalid("TransformOutput.AssembleWith", &format!("{o:?}: use None or Line"))),
    };
    to.ignore(&["KmsKeyId"]);
    to.finish(&mut Vec::new())?;
    let (mut input_filter, mut output_filter, mut join_input) = (None, None, false);
    if let Some(mut dp) = f.obj("DataProcessing")? {
        let path = |key: &str, p: Option<&str>| -> Result<Option<JsonPath>, AwsError> {
            match p {
                None | Some("$") => Ok(None),
                Some(t) => JsonPath::parse(t)
                    .map(Some)
                    .map_err(|e| invalid(&format!("DataProcessing.{key}"), &format!("{t:?}: {e}"))),
            }
        };
        input_filter = path("InputFilter", dp.str("InputFilter")?)?;
        output_filter = path("OutputFilter", dp.str("OutputFilter")?)?;
        join_input = match dp.str("JoinSource")? {
            None | Some("None") => false,
            Some("Input") => true,
            Some(o) => return Err(invalid("DataProcessing.JoinSource", &format!("{o:?}: use None or Input"))),
        };
        dp.finish(&mut Vec::new())?;
    }
    f.finish(&mut Vec::new())?;
    for (key, loc) in
        [("TransformInput.DataSource.S3DataSource.S3Uri", &input), ("TransformOutput.S3OutputPath", &output)]
    {
        if !(loc.starts_with("s3://") || loc.starts_with("file:///") || loc.starts_with('/')) {
            return Err(invalid(
                key,
                &format!("{loc:?}: give s3://BUCKET/PREFIX, or an absolute local path (file:///dir)"),
            ));
        }
    }
    let spec = Spec {
        content_type: content_type.unwrap_or(InFormat::Csv),
        accept: accept.unwrap_or(OutFormat::Csv),
        gzip,
        split_line,
        multi_record,
        max_payload,
        max_records: 1024,
        workers,
        background: true,
        // SageMaker's default AssembleWith None joins a split object's
        // answers as the container wrote them: one line per record here
        assemble_line: assemble_line || split_line,
        input_filter,
        join_input,
        output_filter,
        skip_malformed: false,
        record: true,
        out_suffix: ".out",
    };
    let plan = Plan { model, input, output, content_type, accept, spec };
    // what can be judged before the objects are listed
    let mut probe = plan.spec.clone();
    if let Some(c) = content_type {
        probe.content_type = c;
        probe.accept = accept.unwrap_or(c.default_accept());
        probe.check().map_err(AwsError::validation)?;
    }
    Ok((name, plan))
}

impl ControlPlane {
    fn job_json(r: &TransformRec) -> Value {
        let mut v = super::strip(&r.request, &["Tags"]);
        v["TransformJobName"] = json!(r.name);
        v["TransformJobArn"] = json!(r.arn);
        v["TransformJobStatus"] = json!(r.status.name());
        v["CreationTime"] = json!(r.created);
        v["LastModifiedTime"] = json!(r.modified);
        if let Some(f) = &r.failure {
            v["FailureReason"] = json!(f);
        }
        if let Some(t) = r.started {
            v["TransformStartTime"] = json!(t);
        }
        if let Some(t) = r.ended {
            v["TransformEndTime"] = json!(t);
        }
        if let Some((objects, records, skipped)) = r.counts {
            v["NeoRunSummary"] = json!({"Objects": objects, "Records": records, "SkippedRecords": skipped});
        }
        v
    }

    pub(super) fn transform_from_json(v: &Value) -> Result<TransformRec, String> {
        let s = |k: &str| v[k].as_str().map(String::from).ok_or_else(|| format!("no {k}"));
        let request = super::strip(
            v,
            &[
                "TransformJobArn",
                "TransformJobStatus",
                "CreationTime",
                "LastModifiedTime",
                "FailureReason",
                "TransformStartTime",
                "TransformEndTime",
                "NeoRunSummary",
            ],
        );
        let summary = &v["NeoRunSummary"];
        Ok(TransformRec {
            name: s("TransformJobName")?,
            arn: s("TransformJobArn")?,
            status: JobStatus::parse(&s("TransformJobStatus")?),
            failure: v["FailureReason"].as_str().map(String::from),
            created: v["CreationTime"].as_f64().unwrap_or(0.0),
            modified: v["LastModifiedTime"].as_f64().unwrap_or(0.0),
            started: v["TransformStartTime"].as_f64(),
            ended: v["TransformEndTime"].as_f64(),
            counts: summary.is_object().then(|| {
                (
                    summary["Objects"].as_u64().unwrap_or(0) as usize,
                    summary["Records"].as_u64().unwrap_or(0),
                    summary["SkippedRecords"].as_u64().unwrap_or(0),
                )
            }),
            request,
            stop: Arc::default(),
            progress: Arc::default(),
        })
    }

    fn save_job(&self, r: &TransformRec) {
        if let Err(e) = self.persist("transform-jobs", &r.name, Some(&Self::job_json(r))) {
            tracing::error!(job = %r.name, "{}", e.message);
        }
    }

    pub(super) fn create_transform_job(self: &Arc<Self>, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let (name, plan) = parse(v)?;
        let bundle = {
            let st = self.lock();
            if let Some(j) = st.transform_jobs.get(&name) {
                return Err(AwsError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "ResourceInUse",
                    format!("Job name must be unique within an AWS account and region, and a job with this name already exists ({})", j.arn),
                ));
            }
            st.models
                .get(&plan.model)
                .map(|m| m.def.bundle.clone())
                .ok_or_else(|| AwsError::not_found("model", &plan.model))?
        };
        let t = now();
        let rec = TransformRec {
            name: name.clone(),
            arn: self.arn("transform-job", &name),
            request: v.clone(),
            status: JobStatus::InProgress,
            failure: None,
            created: t,
            modified: t,
            started: Some(t),
            ended: None,
            stop: Arc::default(),
            progress: Arc::default(),
            counts: None,
        };
        let arn = rec.arn.clone();
        self.persist("transform-jobs", &name, Some(&Self::job_json(&rec)))?;
        self.lock().transform_jobs.insert(name.clone(), rec);
        self.journal(
            who,
            "CreateTransformJob",
            &name,
            json!({"model": plan.model, "input": plan.input, "output": plan.output}),
        );
        self.clone().start_job(name, bundle, plan);
        Ok(json!({ "TransformJobArn": arn }))
    }

    /// Runs a job on its own thread; its record says how it ended.
    fn start_job(self: Arc<Self>, name: String, bundle: PathBuf, plan: Plan) {
        let handle = tokio::runtime::Handle::current();
        let (stop, progress) = {
            let st = self.lock();
            let Some(r) = st.transform_jobs.get(&name) else { return };
            (r.stop.clone(), r.progress.clone())
        };
        let (cp, n) = (self.clone(), name.clone());
        let spawned = std::thread::Builder::new().name("neorun-transform".into()).spawn(move || {
            crate::infer::spare::lower_priority();
            let result = cp.run_job(&bundle, plan, &handle, &stop, &progress);
            cp.job_ended(&n, result);
        });
        if let Err(e) = spawned {
            self.job_ended(&name, Err(JobError::Other(format!("starting the job's thread: {e}"))));
        }
    }

    fn run_job(
        &self,
        bundle: &std::path::Path,
        plan: Plan,
        handle: &tokio::runtime::Handle,
        stop: &AtomicBool,
        progress: &Progress,
    ) -> Result<batch::Summary, JobError> {
        let mut model = neoc_runtime::Model::open(bundle, &self.open)
            .map_err(|e| JobError::Other(format!("model {} ({}): {e}", plan.model, bundle.display())))?;
        model.set_threads(1);
        let input = objects::place(&plan.input, Some(handle)).map_err(JobError::Other)?;
        let output = objects::place(&plan.output, Some(handle)).map_err(JobError::Other)?;
        let list = input.list_inputs().map_err(JobError::Other)?;
        if input.contains(&output) {
            return Err(JobError::Other(format!(
                "the output {} is inside the input {}: outputs would be read as inputs",
                plan.output, plan.input
            )));
        }
        let mut spec = plan.spec;
        spec.content_type = plan.content_type.unwrap_or_else(|| batch::guess_format(&list, spec.split_line));
        spec.accept = plan.accept.unwrap_or(spec.content_type.default_accept());
        spec.check().map_err(JobError::Other)?;
        batch::run(&model, &spec, &input, &list, &output, progress, stop)
    }

    fn job_ended(&self, name: &str, result: Result<batch::Summary, JobError>) {
        let mut st = self.lock();
        let Some(r) = st.transform_jobs.get_mut(name) else { return };
        let t = now();
        r.modified = t;
        r.ended = Some(t);
        let detail = match &result {
            Ok(s) => {
                r.status = JobStatus::Completed;
                r.counts = Some((s.objects, s.records, s.skipped));
                json!({"status": "Completed", "objects": s.objects, "kept": s.already_done, "records": s.records})
            }
            Err(JobError::Stopped) => {
                r.status = JobStatus::Stopped;
                json!({"status": "Stopped"})
            }
            Err(e) => {
                r.status = JobStatus::Failed;
                // SageMaker's FailureReason is at most 1024 characters
                let mut m = e.to_string();
                if m.len() > 1024 {
                    let mut cut = 1021;
                    while !m.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    m.truncate(cut);
                    m.push_str("...");
                }
                r.failure = Some(m.clone());
                json!({"status": "Failed", "reason": m})
            }
        };
        let saved = Self::job_json(r);
        drop(st);
        if let Err(e) = self.persist("transform-jobs", name, Some(&saved)) {
            tracing::error!(job = %name, "{}", e.message);
        }
        self.journal("neorun", "TransformJobEnded", name, detail);
    }

    pub(super) fn describe_transform_job(&self, v: &Value) -> Result<Value, AwsError> {
        let name = super::name_field(v, "TransformJobName")?;
        let st = self.lock();
        let r = st.transform_jobs.get(&name).ok_or_else(|| AwsError::not_found("transform job", &name))?;
        let mut out = Self::job_json(r);
        if matches!(r.status, JobStatus::InProgress | JobStatus::Stopping) {
            let p = &r.progress;
            out["NeoRunProgress"] = json!({
                "InputBytesRead": p.bytes.load(Ordering::Relaxed),
                "Records": p.records.load(Ordering::Relaxed),
            });
        }
        Ok(out)
    }

    pub(super) fn stop_transform_job(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let name = super::name_field(v, "TransformJobName")?;
        let mut st = self.lock();
        let r = st.transform_jobs.get_mut(&name).ok_or_else(|| AwsError::not_found("transform job", &name))?;
        match r.status {
            JobStatus::InProgress => {
                r.status = JobStatus::Stopping;
                r.modified = now();
                r.stop.store(true, Ordering::Relaxed);
                let saved = Self::job_json(r);
                drop(st);
                self.persist("transform-jobs", &name, Some(&saved))?;
                self.journal(who, "StopTransformJob", &name, json!({}));
                Ok(json!({}))
            }
            JobStatus::Stopping | JobStatus::Stopped => Ok(json!({})),
            s => Err(AwsError::validation(format!("The transform job {name} is {} and cannot be stopped.", s.name()))),
        }
    }

    /// At a start: every job that was running is run again (its complete
    /// outputs are kept); one that was stopping is stopped.
    pub(super) fn restore_transform_jobs(self: &Arc<Self>, records: Vec<Value>) -> anyhow::Result<()> {
        let mut resume = Vec::new();
        for v in records {
            let mut r =
                Self::transform_from_json(&v).map_err(|e| anyhow::anyhow!("state: a transform job record: {e}"))?;
            match r.status {
                JobStatus::Stopping => {
                    r.status = JobStatus::Stopped;
                    r.ended = Some(now());
                    self.save_job(&r);
                }
                JobStatus::InProgress => {
                    let plan = parse(&r.request).map(|(_, p)| p);
                    resume.push((r.name.clone(), plan));
                }
                _ => {}
            }
            self.lock().transform_jobs.insert(r.name.clone(), r);
        }
        for (name, plan) in resume {
            let bundle =
                plan.as_ref().ok().and_then(|p| self.lock().models.get(&p.model).map(|m| m.def.bundle.clone()));
            match (plan, bundle) {
                (Ok(plan), Some(bundle)) => {
                    tracing::info!(job = %name, "resuming a transform job that was running when neorun stopped");
                    self.journal("neorun", "TransformJobResumed", &name, json!({}));
                    self.clone().start_job(name, bundle, plan);
                }
                (Ok(plan), None) => self.job_ended(
                    &name,
                    Err(JobError::Other(format!(
                        "model {} no longer exists; the job could not be resumed",
                        plan.model
                    ))),
                ),
                (Err(e), _) => self.job_ended(&name, Err(JobError::Other(e.message))),
            }
        }
        Ok(())
    }
}
