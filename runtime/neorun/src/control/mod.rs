//! The control plane: SageMaker's model / endpoint-configuration / endpoint
//! API, the subset that defines an endpoint, with SageMaker's shapes and
//! error codes so boto3 scripts and AWS CLI runbooks run unchanged.
//!
//! State (models, configurations, endpoints, with what each endpoint runs)
//! is kept here and, with `--state-dir`, on disk (`store`), so a restart or
//! a `kill -9` brings every endpoint back as it was. Endpoints are built in
//! the background (`Creating` → `InService`, or `Failed` with the reason)
//! and published to the data plane's `EndpointTable`; an update builds the
//! new version beside the old and swaps it in one step.
//!
//! (Over 600 lines because the fourteen operations share one state and one
//! lock: each is short, and splitting them across files would spread the
//! state's invariants — persisted before changed, generations — over
//! several. Request parsing is in `shapes.rs`, the disk in `store.rs`.)

mod alarm_ops;
pub mod async_inference;
mod experiments;
#[cfg(feature = "s3")]
mod notify;
pub mod rollout;
pub mod shapes;
pub mod store;
mod transform;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use neoc_runtime::{Model, OpenOptions};
use serde_json::{json, Value};

use crate::alarms::{Alarms, Counters};
use crate::capture::{check_writable, Capture, CaptureSpec};
use crate::endpoints::{EndpointTable, LiveEndpoint, Shadow, Variant};
use crate::infer::Inference;
use crate::metrics::Metrics;
use crate::models::LiveModel;
use shapes::{ConfigDef, Fields, ModelDef};
use store::Store;

/// An error as AWS's JSON protocol carries it: `x-amzn-ErrorType` and a
/// body with `__type` and `message`, which botocore raises as a
/// `ClientError` with that code.
#[derive(Debug)]
pub struct AwsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AwsError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AwsError {
        AwsError { status, code, message: message.into() }
    }

    /// SageMaker's error for a bad request and for a missing resource alike.
    pub fn validation(message: impl Into<String>) -> AwsError {
        AwsError::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    fn not_found(kind: &str, name: &str) -> AwsError {
        AwsError::validation(format!("Could not find {kind} \"{name}\"."))
    }

    fn internal(message: impl Into<String>) -> AwsError {
        AwsError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", message)
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let body = json!({ "__type": self.code, "message": self.message }).to_string();
        let mut r = (self.status, body).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
        h.insert("x-amzn-ErrorType", HeaderValue::from_static(self.code));
        r
    }
}

/// Where the control plane's ARNs say it is.
const ACCOUNT: &str = "000000000000";

fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[derive(Clone, Debug)]
struct ModelRec {
    def: ModelDef,
    request: Value,
    arn: String,
    created: f64,
    /// The bundle's sha256 when it was verified.
    digest: String,
}

#[derive(Clone, Debug)]
struct ConfigRec {
    def: ConfigDef,
    request: Value,
    arn: String,
    created: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Creating,
    Updating,
    InService,
    Failed,
    UpdateRollbackFailed,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Creating => "Creating",
            Status::Updating => "Updating",
            Status::InService => "InService",
            Status::Failed => "Failed",
            Status::UpdateRollbackFailed => "UpdateRollbackFailed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "InService" => Status::InService,
            "Failed" => Status::Failed,
            "Updating" => Status::Updating,
            "UpdateRollbackFailed" => Status::UpdateRollbackFailed,
            _ => Status::Creating,
        }
    }
}

/// What an endpoint runs (or is being moved to): a configuration and the
/// models it names, copied when deployed, so deleting the configuration or
/// a model later does not change a running endpoint (as on SageMaker).
#[derive(Clone, Debug)]
struct Deployment {
    config: ConfigRec,
    models: BTreeMap<String, ModelRec>,
    /// Current weights by variant (production and shadow).
    weights: BTreeMap<String, f64>,
}

#[derive(Clone, Debug)]
struct EndpointRec {
    name: String,
    arn: String,
    created: f64,
    modified: f64,
    status: Status,
    failure: Option<String>,
    /// What serves now (`None` until the first deployment is in service).
    current: Option<Deployment>,
    /// What is being deployed.
    pending: Option<Deployment>,
    /// Bumped by every change, so a deployment that finishes after a newer
    /// change (or a delete) does not publish.
    generation: u64,
    /// A guarded update under way.
    rollout: Option<rollout::Progress>,
    /// The `DeploymentConfig` of the last guarded update that completed
    /// (or the one given at creation): `LastDeploymentConfig`, and what
    /// `RetainDeploymentConfig` reuses.
    last_deployment: Option<Value>,
}

#[derive(Default)]
struct State {
    models: BTreeMap<String, ModelRec>,
    configs: BTreeMap<String, ConfigRec>,
    endpoints: BTreeMap<String, EndpointRec>,
    experiments: BTreeMap<String, experiments::ExperimentRec>,
    transform_jobs: BTreeMap<String, transform::TransformRec>,
}

pub struct ControlPlane {
    state: Mutex<State>,
    store: Option<Store>,
    pub endpoints: Arc<EndpointTable>,
    alarms: Mutex<Alarms>,
    inference: Arc<Inference>,
    metrics: Arc<Metrics>,
    capture: Capture,
    open: OpenOptions,
    region: String,
    /// Where `oci://` bundles are pulled to (under the state directory, or a
    /// temporary one removed on exit).
    bundles: PathBuf,
    _bundles_tmp: Option<tempfile::TempDir>,
    /// Objects another part of neorun derives at every start (the model
    /// store's endpoints): kept in memory, never written to the state directory.
    transient: Mutex<std::collections::BTreeSet<String>>,
    /// Asynchronous invocations' queue (with a state directory).
    async_queue: std::sync::OnceLock<Arc<async_inference::AsyncQueue>>,
    /// Serverless idle period, multi-model memory budget (bytes).
    lazy_settings: Mutex<(std::time::Duration, u64)>,
}

/// Who asked, for the journal.
pub type Caller<'a> = &'a str;

impl ControlPlane {
    pub fn new(
        store: Option<Store>,
        inference: Arc<Inference>,
        metrics: Arc<Metrics>,
        capture: Capture,
        open: OpenOptions,
        region: String,
    ) -> anyhow::Result<Arc<ControlPlane>> {
        let (bundles, tmp) = match &store {
            Some(s) => (s.bundles_dir(), None),
            None => {
                let t = tempfile::Builder::new().prefix("neorun-bundles-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Arc::new(ControlPlane {
            bundles,
            _bundles_tmp: tmp,
            transient: Mutex::default(),
            async_queue: std::sync::OnceLock::new(),
            lazy_settings: Mutex::new((std::time::Duration::from_secs(300), 2 << 30)),
            state: Mutex::new(State::default()),
            store,
            endpoints: Arc::new(EndpointTable::default()),
            alarms: Mutex::new(Alarms::default()),
            inference,
            metrics,
            capture,
            open,
            region,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alarms_lock(&self) -> std::sync::MutexGuard<'_, Alarms> {
        self.alarms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arn(&self, kind: &str, name: &str) -> String {
        format!("arn:aws:sagemaker:{}:{ACCOUNT}:{kind}/{}", self.region, name.to_ascii_lowercase())
    }

    /// Persists one record (when there is a state directory).
    fn persist(&self, kind: &str, name: &str, v: Option<&Value>) -> Result<(), AwsError> {
        let Some(store) = &self.store else { return Ok(()) };
        if self.transient.lock().unwrap_or_else(|e| e.into_inner()).contains(name) {
            return Ok(());
        }
        let r = match v {
            Some(v) => store.put(kind, name, v),
            None => store.delete(kind, name),
        };
        r.map_err(|e| AwsError::internal(format!("saving the control-plane state: {e:#}")))
    }

    fn journal(&self, who: Caller<'_>, op: &str, name: &str, detail: Value) {
        tracing::info!(%who, op, name, %detail, "control plane");
        if let Some(store) = &self.store {
            let entry = json!({ "time": iso(SystemTime::now()), "who": who, "op": op, "name": name, "detail": detail });
            if let Err(e) = store.journal(&entry) {
                tracing::error!("writing the journal: {e:#}");
            }
        }
    }

    /// Keeps the model, configuration or endpoint `name` out of the state
    /// directory (the model store derives its endpoints at every start).
    pub fn keep_in_memory(&self, name: &str) {
        self.transient.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
    }

    /// Runs one operation (`X-Amz-Target: SageMaker.<op>`).
    pub async fn call(self: &Arc<Self>, op: &str, body: &[u8], who: Caller<'_>) -> Result<Value, AwsError> {
        let v = body_json(body)?;
        match op {
            "CreateModel" => self.create_model(&v, who).await,
            "DescribeModel" => self.describe_model(&v),
            "DeleteModel" => self.delete_model(&v, who),
            "ListModels" => self.list(&v, Kind::Models),
            "CreateEndpointConfig" => self.create_endpoint_config(&v, who),
            "DescribeEndpointConfig" => self.describe_endpoint_config(&v),
            "DeleteEndpointConfig" => self.delete_endpoint_config(&v, who),
            "ListEndpointConfigs" => self.list(&v, Kind::Configs),
            "CreateEndpoint" => self.create_endpoint(&v, who),
            "DescribeEndpoint" => self.describe_endpoint(&v),
            "UpdateEndpoint" => self.update_endpoint(&v, who),
            "UpdateEndpointWeightsAndCapacities" => self.update_weights(&v, who),
            "DeleteEndpoint" => self.delete_endpoint(&v, who),
            "ListEndpoints" => self.list(&v, Kind::Endpoints),
            "CreateInferenceExperiment" => self.create_experiment(&v, who).await,
            "DescribeInferenceExperiment" => self.describe_experiment(&v),
            "StopInferenceExperiment" => self.stop_experiment(&v, who),
            "ListInferenceExperiments" => self.list_experiments(&v),
            "CreateTransformJob" => self.create_transform_job(&v, who),
            "DescribeTransformJob" => self.describe_transform_job(&v),
            "StopTransformJob" => self.stop_transform_job(&v, who),
            "ListTransformJobs" => self.list(&v, Kind::TransformJobs),
            "RollbackEndpointUpdate" | "ReadJournal" => Err(AwsError::new(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("{op} is neorun's own operation: send it as X-Amz-Target: NeoRun.{op}"),
            )),
            other => Err(AwsError::new(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("SageMaker.{other} is not an operation neorun serves; it serves {}", OPERATIONS.join(", ")),
            )),
        }
    }

    // ---- models ----

    /// Verifies a model's bundle (signature, digests, target, runtime) on
    /// the blocking pool.
    async fn verify(&self, def: &ModelDef) -> Result<String, AwsError> {
        let (path, open) = (def.bundle.clone(), self.open.clone());
        let r = tokio::task::spawn_blocking(move || Model::verify(&path, &open))
            .await
            .map_err(|e| AwsError::internal(format!("verifying the bundle: {e}")))?;
        r.map(|v| v.digest)
            .map_err(|e| AwsError::validation(format!("PrimaryContainer.ModelDataUrl: {}: {e}", def.bundle.display())))
    }

    /// Pulls an `oci://` model's bundle into the bundle directory
    /// (`modelstore::install::pull_bundle`: digest-checked as it streams,
    /// the first bundle that verifies on this host kept under its digest).
    async fn pull(&self, def: &mut ModelDef) -> Result<(), AwsError> {
        let (url, dir, open) = (def.url.clone(), self.bundles.clone(), self.open.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<PathBuf, String> {
            let tmp = tempfile::tempdir_in(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            crate::modelstore::install::pull_bundle(&url, tmp.path(), &dir, &open)
        })
        .await
        .map_err(|e| AwsError::internal(format!("pulling the bundle: {e}")))?;
        def.bundle = r.map_err(|e| AwsError::validation(format!("PrimaryContainer.ModelDataUrl: {e}")))?;
        Ok(())
    }

    async fn create_model(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let mut ignored = Vec::new();
        let mut def = shapes::create_model(v, &mut ignored)?;
        if self.lock().models.contains_key(&def.name) {
            return Err(AwsError::validation(format!(
                "Cannot create already existing model \"{}\".",
                self.arn("model", &def.name)
            )));
        }
        if def.is_oci() {
            self.pull(&mut def).await?;
        }
        // a multi-model container's bundles are verified as they load
        let digest =
            if def.multi_model { format!("multi-model:{}", def.bundle.display()) } else { self.verify(&def).await? };
        let rec = ModelRec { arn: self.arn("model", &def.name), created: now(), request: v.clone(), digest, def };
        {
            let mut st = self.lock();
            if st.models.contains_key(&rec.def.name) {
                return Err(AwsError::validation(format!("Cannot create already existing model \"{}\".", rec.arn)));
            }
            self.persist("models", &rec.def.name, Some(&model_json(&rec)))?;
            st.models.insert(rec.def.name.clone(), rec.clone());
        }
        self.journal(
            who,
            "CreateModel",
            &rec.def.name,
            json!({ "bundle": rec.def.bundle, "digest": rec.digest, "ignored": ignored }),
        );
        Ok(json!({ "ModelArn": rec.arn, "IgnoredFields": ignored }))
    }

    fn describe_model(&self, v: &Value) -> Result<Value, AwsError> {
        let name = name_field(v, "ModelName")?;
        let st = self.lock();
        let m = st.models.get(&name).ok_or_else(|| AwsError::not_found("model", &name))?;
        let mut out = json!({
            "ModelName": m.def.name,
            "ModelArn": m.arn,
            "CreationTime": m.created,
            "PrimaryContainer": { "ModelDataUrl": m.def.url, "Image": format!("neorun bundle {}", m.digest) },
        });
        if let Some(role) = m.request.get("ExecutionRoleArn") {
            out["ExecutionRoleArn"] = role.clone();
        }
        Ok(out)
    }

    fn delete_model(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let name = name_field(v, "ModelName")?;
        self.delete_record(&name, ("model", "models", "DeleteModel"), who, |st| &mut st.models)
    }

    /// Deletes one model or configuration: refused if absent, persisted
    /// before it leaves the state, journalled. `what`: (the kind as errors
    /// name it, its store directory, the operation).
    fn delete_record<T>(
        &self,
        name: &str,
        what: (&str, &str, &str),
        who: Caller<'_>,
        map: impl Fn(&mut State) -> &mut BTreeMap<String, T>,
    ) -> Result<Value, AwsError> {
        let (kind, dir, op) = what;
        let mut st = self.lock();
        if !map(&mut st).contains_key(name) {
            return Err(AwsError::not_found(kind, name));
        }
        self.persist(dir, name, None)?;
        map(&mut st).remove(name);
        drop(st);
        self.journal(who, op, name, json!({}));
        Ok(json!({}))
    }

    // ---- endpoint configurations ----

    fn check_config_models(&self, st: &State, def: &ConfigDef) -> Result<(), AwsError> {
        for (list, vs) in [("ProductionVariants", &def.variants), ("ShadowProductionVariants", &def.shadows)] {
            for (i, var) in vs.iter().enumerate() {
                if !st.models.contains_key(&var.model_name) {
                    return Err(AwsError::validation(format!(
                        "{list}[{i}].ModelName: Could not find model \"{}\".",
                        var.model_name
                    )));
                }
            }
        }
        if let Some(c) = def.capture.as_ref().filter(|c| c.enabled) {
            check_writable(&c.dir)
                .map_err(|e| AwsError::validation(format!("DataCaptureConfig.DestinationS3Uri: {e}")))?;
        }
        Ok(())
    }

    fn create_endpoint_config(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let mut ignored = Vec::new();
        let def = shapes::create_endpoint_config(v, &[], &mut ignored)?;
        let mut st = self.lock();
        if st.configs.contains_key(&def.name) {
            return Err(AwsError::validation(format!(
                "Cannot create already existing endpoint configuration \"{}\".",
                self.arn("endpoint-config", &def.name)
            )));
        }
        self.check_config_models(&st, &def)?;
        let rec = ConfigRec { arn: self.arn("endpoint-config", &def.name), created: now(), request: v.clone(), def };
        self.persist("endpoint-configs", &rec.def.name, Some(&config_json(&rec)))?;
        st.configs.insert(rec.def.name.clone(), rec.clone());
        drop(st);
        self.journal(who, "CreateEndpointConfig", &rec.def.name, json!({ "ignored": ignored }));
        Ok(json!({ "EndpointConfigArn": rec.arn, "IgnoredFields": ignored }))
    }

    fn describe_endpoint_config(&self, v: &Value) -> Result<Value, AwsError> {
        let name = name_field(v, "EndpointConfigName")?;
        let st = self.lock();
        let c = st.configs.get(&name).ok_or_else(|| AwsError::not_found("endpoint configuration", &name))?;
        let mut out = c.request.clone();
        out["EndpointConfigArn"] = json!(c.arn);
        out["CreationTime"] = json!(c.created);
        // the defaults, as SageMaker reports them
        for list in ["ProductionVariants", "ShadowProductionVariants"] {
            if let Some(vs) = out.get_mut(list).and_then(Value::as_array_mut) {
                for var in vs {
                    if var.get("InitialVariantWeight").is_none() {
                        var["InitialVariantWeight"] = json!(1.0);
                    }
                }
            }
        }
        Ok(out)
    }

    fn delete_endpoint_config(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let name = name_field(v, "EndpointConfigName")?;
        let what = ("endpoint configuration", "endpoint-configs", "DeleteEndpointConfig");
        self.delete_record(&name, what, who, |st| &mut st.configs)
    }

    // ---- endpoints ----

    /// A deployment of `config` as it stands: its models copied, weights
    /// from the configuration.
    fn deployment(st: &State, config: &ConfigRec) -> Result<Deployment, AwsError> {
        let mut models = BTreeMap::new();
        for var in config.def.variants.iter().chain(&config.def.shadows) {
            let m = st.models.get(&var.model_name).ok_or_else(|| {
                AwsError::validation(format!(
                    "endpoint configuration {} names model \"{}\", which no longer exists",
                    config.def.name, var.model_name
                ))
            })?;
            models.insert(m.def.name.clone(), m.clone());
        }
        let weights =
            config.def.variants.iter().chain(&config.def.shadows).map(|v| (v.name.clone(), v.weight)).collect();
        Ok(Deployment { config: config.clone(), models, weights })
    }

    fn create_endpoint(self: &Arc<Self>, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let name = f.name("EndpointName")?.to_string();
        let config_name = f.name("EndpointConfigName")?.to_string();
        let deployment = f.obj("DeploymentConfig")?.is_some().then(|| v["DeploymentConfig"].clone());
        f.ignore(&["Tags"]);
        let mut ignored = Vec::new();
        f.finish(&mut ignored)?;
        if let Some(d) = &deployment {
            let policy = rollout::parse("DeploymentConfig", d)?;
            self.check_alarms_exist(&policy)?;
        }
        let mut st = self.lock();
        if st.endpoints.contains_key(&name) {
            return Err(AwsError::validation(format!(
                "Cannot create already existing endpoint \"{}\".",
                self.arn("endpoint", &name)
            )));
        }
        let config = st
            .configs
            .get(&config_name)
            .ok_or_else(|| AwsError::not_found("endpoint configuration", &config_name))?
            .clone();
        let dep = Self::deployment(&st, &config)?;
        let t = now();
        let rec = EndpointRec {
            name: name.clone(),
            arn: self.arn("endpoint", &name),
            created: t,
            modified: t,
            status: Status::Creating,
            failure: None,
            current: None,
            pending: Some(dep),
            generation: 1,
            rollout: None,
            last_deployment: deployment,
        };
        self.persist("endpoints", &name, Some(&endpoint_json(&rec)))?;
        st.endpoints.insert(name.clone(), rec.clone());
        drop(st);
        self.journal(who, "CreateEndpoint", &name, json!({ "EndpointConfigName": config_name }));
        let cp = self.clone();
        tokio::spawn(async move { cp.deploy(name, 1).await });
        Ok(json!({ "EndpointArn": rec.arn }))
    }

    fn update_endpoint(self: &Arc<Self>, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let name = f.name("EndpointName")?.to_string();
        let config_name = f.name("EndpointConfigName")?.to_string();
        let retain = f.bool("RetainAllVariantProperties")?.unwrap_or(false);
        let mut excluded = Vec::new();
        for mut item in f.list("ExcludeRetainedVariantProperties")?.unwrap_or_default() {
            let at = item.path().to_string();
            let p = item.req_str("VariantPropertyType")?.to_string();
            item.finish(&mut Vec::new())?;
            if !["DesiredInstanceCount", "DesiredWeight", "DataCaptureConfig"].contains(&p.as_str()) {
                return Err(shapes::invalid(
                    &format!("{at}.VariantPropertyType"),
                    &format!("{p:?}: use DesiredInstanceCount, DesiredWeight or DataCaptureConfig"),
                ));
            }
            excluded.push(p);
        }
        if !excluded.is_empty() && !retain {
            return Err(shapes::invalid(
                "ExcludeRetainedVariantProperties",
                "only with RetainAllVariantProperties: true (otherwise every property comes from the new configuration)",
            ));
        }
        let given = f.obj("DeploymentConfig")?.is_some().then(|| v["DeploymentConfig"].clone());
        let retain_deployment = f.bool("RetainDeploymentConfig")?.unwrap_or(false);
        f.finish(&mut Vec::new())?;
        if given.is_some() && retain_deployment {
            return Err(shapes::invalid(
                "RetainDeploymentConfig",
                "give DeploymentConfig or RetainDeploymentConfig, not both",
            ));
        }
        let mut st = self.lock();
        let config = st
            .configs
            .get(&config_name)
            .ok_or_else(|| AwsError::not_found("endpoint configuration", &config_name))?
            .clone();
        let mut dep = Self::deployment(&st, &config)?;
        let ep = updatable(&mut st, &name)?;
        let deployment = match (given, retain_deployment) {
            (Some(d), _) => Some(d),
            (None, true) => ep.last_deployment.clone(),
            (None, false) => None,
        };
        let policy = match &deployment {
            Some(d) => {
                let p = rollout::parse("DeploymentConfig", d)?;
                self.check_alarms_exist(&p)?;
                Some(p)
            }
            None => None,
        };
        if retain {
            if let Some(cur) = &ep.current {
                if !excluded.iter().any(|p| p == "DesiredWeight") {
                    for (var, w) in dep.weights.iter_mut() {
                        if let Some(old) = cur.weights.get(var) {
                            *w = *old;
                        }
                    }
                }
                if !excluded.iter().any(|p| p == "DataCaptureConfig") {
                    dep.config.def.capture = cur.config.def.capture.clone();
                }
            }
        }
        if policy.is_some() && ep.current.is_none() {
            return Err(AwsError::validation(format!(
                "endpoint {name} serves nothing yet to update from: a guarded update needs a serving fleet"
            )));
        }
        ep.status = Status::Updating;
        ep.failure = None;
        ep.pending = Some(dep);
        ep.generation += 1;
        ep.modified = now();
        ep.rollout = policy.map(|p| rollout::Progress::new(p, deployment.clone().unwrap_or_default()));
        let (rec, generation) = (ep.clone(), ep.generation);
        self.persist("endpoints", &name, Some(&endpoint_json(&rec)))?;
        drop(st);
        self.journal(
            who,
            "UpdateEndpoint",
            &name,
            json!({ "EndpointConfigName": config_name, "DeploymentConfig": deployment, "RetainAllVariantProperties": retain, "ExcludeRetainedVariantProperties": excluded }),
        );
        let cp = self.clone();
        if rec.rollout.is_some() {
            tokio::spawn(async move { cp.roll_out(name, generation).await });
        } else {
            tokio::spawn(async move { cp.deploy(name, generation).await });
        }
        Ok(json!({ "EndpointArn": rec.arn }))
    }

    fn update_weights(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let name = f.name("EndpointName")?.to_string();
        let items = f
            .list("DesiredWeightsAndCapacities")?
            .ok_or_else(|| shapes::invalid("DesiredWeightsAndCapacities", "required field is missing"))?;
        let mut changes = Vec::new();
        let mut ignored = Vec::new();
        for mut item in items {
            let at = item.path().to_string();
            let variant = item.name("VariantName")?.to_string();
            let w = item.f64("DesiredWeight")?;
            if let Some(w) = w {
                if !(w.is_finite() && w >= 0.0) {
                    return Err(shapes::invalid(&format!("{at}.DesiredWeight"), "must be a number of 0 or more"));
                }
            }
            item.ignore(&["DesiredInstanceCount"]);
            item.refuse(&[("ServerlessUpdateConfig", "serverless variants are not supported yet")])?;
            item.finish(&mut ignored)?;
            changes.push((at, variant, w));
        }
        f.finish(&mut ignored)?;
        if changes.is_empty() {
            return Err(shapes::invalid("DesiredWeightsAndCapacities", "give at least one variant"));
        }
        let mut st = self.lock();
        let ep = updatable(&mut st, &name)?;
        let cur = ep.current.as_mut().ok_or_else(|| AwsError::internal("endpoint in service without a deployment"))?;
        let mut weights = cur.weights.clone();
        for (at, variant, w) in &changes {
            let Some(slot) = weights.get_mut(variant) else {
                return Err(AwsError::validation(format!(
                    "{at}.VariantName: the endpoint has no variant \"{variant}\" (it has {})",
                    cur.weights.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            };
            if let Some(w) = w {
                *slot = *w;
            }
        }
        let production: f64 = cur.config.def.variants.iter().map(|v| weights[&v.name]).sum();
        if production <= 0.0 {
            return Err(shapes::invalid(
                "DesiredWeightsAndCapacities",
                "the production variants' weights would sum to zero: no variant would get traffic",
            ));
        }
        for s in &cur.config.def.shadows {
            if weights[&s.name] > production + 1e-9 {
                return Err(shapes::invalid(
                    "DesiredWeightsAndCapacities",
                    &format!("shadow variant {} would sample over 100% of the traffic (weight {} over production's {production})", s.name, weights[&s.name]),
                ));
            }
        }
        let live = self.endpoints.get(&name).ok_or_else(|| AwsError::internal("endpoint in service but not live"))?;
        let previous = cur.weights.clone();
        cur.weights = weights.clone();
        ep.modified = now();
        let rec = ep.clone();
        if let Err(e) = self.persist("endpoints", &name, Some(&endpoint_json(&rec))) {
            // nothing changed
            if let Some(c) = st.endpoints.get_mut(&name).and_then(|e| e.current.as_mut()) {
                c.weights = previous;
            }
            return Err(e);
        }
        // the new weights, on the models already loaded: one swap
        self.endpoints.publish(reweighted(&live, &weights));
        drop(st);
        self.journal(
            who,
            "UpdateEndpointWeightsAndCapacities",
            &name,
            json!({ "weights": weights, "ignored": ignored }),
        );
        Ok(json!({ "EndpointArn": rec.arn }))
    }

    fn delete_endpoint(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let name = name_field(v, "EndpointName")?;
        let mut st = self.lock();
        if !st.endpoints.contains_key(&name) {
            return Err(AwsError::not_found("endpoint", &name));
        }
        self.persist("endpoints", &name, None)?;
        st.endpoints.remove(&name);
        // requests in flight finish on the entry they hold
        self.endpoints.remove(&name);
        drop(st);
        self.journal(who, "DeleteEndpoint", &name, json!({}));
        Ok(json!({}))
    }

    fn describe_endpoint(&self, v: &Value) -> Result<Value, AwsError> {
        let name = name_field(v, "EndpointName")?;
        let st = self.lock();
        let ep = st.endpoints.get(&name).ok_or_else(|| AwsError::not_found("endpoint", &name))?;
        let live = self.endpoints.get(&name);
        Ok(describe(ep, live.as_deref()))
    }

    /// Why the data plane has no live endpoint of this name.
    pub fn not_live_reason(&self, name: &str) -> String {
        match self.lock().endpoints.get(name) {
            Some(ep) => match &ep.failure {
                Some(f) => format!("Endpoint {name} is {}: {f}", ep.status.name()),
                None => format!("Endpoint {name} is not in service yet (it is {})", ep.status.name()),
            },
            None => format!("Endpoint {name} of account {ACCOUNT} not found."),
        }
    }

    fn list(&self, v: &Value, kind: Kind) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let sort_by = f.str("SortBy")?.unwrap_or("CreationTime");
        let order = f.str("SortOrder")?.unwrap_or("Descending");
        let token = f.str("NextToken")?;
        let max = f.int("MaxResults")?.unwrap_or(100);
        let contains = f.str("NameContains")?;
        let ct_before = f.f64("CreationTimeBefore")?;
        let ct_after = f.f64("CreationTimeAfter")?;
        let (lm_before, lm_after, status) = if kind.has_status() {
            (f.f64("LastModifiedTimeBefore")?, f.f64("LastModifiedTimeAfter")?, f.str("StatusEquals")?)
        } else {
            (None, None, None)
        };
        f.finish(&mut Vec::new())?;
        if !(1..=100).contains(&max) {
            return Err(shapes::invalid("MaxResults", "give 1 to 100"));
        }
        if !["Name", "CreationTime", "Status"].contains(&sort_by) || (sort_by == "Status" && !kind.has_status()) {
            return Err(shapes::invalid("SortBy", &format!("{sort_by:?} is not a sort key here")));
        }
        if !["Ascending", "Descending"].contains(&order) {
            return Err(shapes::invalid("SortOrder", "use Ascending or Descending"));
        }
        let st = self.lock();
        // (summary, name, created, modified, status)
        let mut rows: Vec<(Value, String, f64, f64, &'static str)> = match kind {
            Kind::Models => st
                .models
                .values()
                .map(|m| (json!({"ModelName": m.def.name, "ModelArn": m.arn, "CreationTime": m.created}), m.def.name.clone(), m.created, m.created, ""))
                .collect(),
            Kind::Configs => st
                .configs
                .values()
                .map(|c| (json!({"EndpointConfigName": c.def.name, "EndpointConfigArn": c.arn, "CreationTime": c.created}), c.def.name.clone(), c.created, c.created, ""))
                .collect(),
            Kind::Endpoints => st
                .endpoints
                .values()
                .map(|e| {
                    let s = json!({"EndpointName": e.name, "EndpointArn": e.arn, "CreationTime": e.created, "LastModifiedTime": e.modified, "EndpointStatus": e.status.name()});
                    (s, e.name.clone(), e.created, e.modified, e.status.name())
                })
                .collect(),
            Kind::TransformJobs => st
                .transform_jobs
                .values()
                .map(|j| {
                    let mut s = json!({"TransformJobName": j.name, "TransformJobArn": j.arn(), "CreationTime": j.created, "LastModifiedTime": j.modified, "TransformJobStatus": j.status.name()});
                    if let Some(t) = j.ended() {
                        s["TransformEndTime"] = json!(t);
                    }
                    if let Some(f) = j.failure() {
                        s["FailureReason"] = json!(f);
                    }
                    (s, j.name.clone(), j.created, j.modified, j.status.name())
                })
                .collect(),
        };
        drop(st);
        rows.retain(|(_, n, c, m, s)| {
            contains.is_none_or(|x| n.to_ascii_lowercase().contains(&x.to_ascii_lowercase()))
                && ct_before.is_none_or(|t| *c < t)
                && ct_after.is_none_or(|t| *c > t)
                && lm_before.is_none_or(|t| *m < t)
                && lm_after.is_none_or(|t| *m > t)
                && status.is_none_or(|x| x == *s)
        });
        match sort_by {
            "Name" => rows.sort_by(|a, b| a.1.cmp(&b.1)),
            "Status" => rows.sort_by(|a, b| a.4.cmp(b.4).then(a.1.cmp(&b.1))),
            _ => rows.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.1.cmp(&b.1))),
        }
        if order == "Descending" {
            rows.reverse();
        }
        let start = match token {
            Some(t) => t.parse::<usize>().map_err(|_| shapes::invalid("NextToken", "not a token this server gave"))?,
            None => 0,
        };
        let end = (start + max as usize).min(rows.len());
        let page: Vec<Value> = rows.get(start..end).unwrap_or_default().iter().map(|r| r.0.clone()).collect();
        let mut out = json!({ kind.list_key(): page });
        if end < rows.len() {
            out["NextToken"] = json!(end.to_string());
        }
        Ok(out)
    }

    // ---- deployment ----

    /// Loads what `name`'s pending deployment needs, publishes it and marks
    /// the endpoint in service; or records why not. Models already loaded
    /// for the same variant (same model, same bundle digest) are reused, so
    /// a change of weights or of one variant reloads nothing else.
    pub async fn deploy(self: Arc<Self>, name: String, generation: u64) {
        let dep = {
            let st = self.lock();
            match st.endpoints.get(&name) {
                Some(ep) if ep.generation == generation => ep.pending.clone(),
                _ => None,
            }
        };
        let Some(dep) = dep else { return };
        let current = self.endpoints.get(&name);
        let result = self.build(&name, &dep, current.as_deref()).await;
        let mut st = self.lock();
        let Some(ep) = st.endpoints.get_mut(&name) else { return };
        if ep.generation != generation {
            return; // a newer change (or a delete and re-create) took over
        }
        // whether anything serves under this name (a restart serves nothing
        // until its deployment is live again)
        let serving = self.endpoints.get(&name).is_some();
        match result {
            Ok(live) => {
                self.endpoints.publish(live);
                ep.current = ep.pending.take();
                ep.status = Status::InService;
                ep.failure = None;
            }
            Err(reason) => {
                ep.pending = None;
                ep.failure = Some(reason.clone());
                // a failed update leaves the old version serving; a failed
                // restore keeps what served before (`current`), so the next
                // start tries it again
                ep.status = if serving { Status::InService } else { Status::Failed };
                tracing::error!(endpoint = %name, "deployment failed: {reason}");
            }
        }
        ep.modified = now();
        let rec = ep.clone();
        let saved = self.persist("endpoints", &name, Some(&endpoint_json(&rec)));
        drop(st);
        if let Err(e) = saved {
            tracing::error!(endpoint = %name, "{}", e.message);
        }
        self.journal(
            "neorun",
            "EndpointStatus",
            &name,
            json!({ "EndpointStatus": rec.status.name(), "FailureReason": rec.failure }),
        );
    }

    async fn build(
        &self,
        name: &str,
        dep: &Deployment,
        current: Option<&LiveEndpoint>,
    ) -> Result<LiveEndpoint, String> {
        let def = &dep.config.def;
        // what can be reused: (variant, model, digest) → live model
        let mut reusable: HashMap<(String, String, String), Arc<LiveModel>> = HashMap::new();
        if let Some(cur) = current {
            for v in &cur.variants {
                if let Some(live) = &v.live {
                    reusable.insert((v.name.clone(), v.model_name.clone(), live.model.digest.clone()), live.clone());
                }
            }
            for s in &cur.shadows {
                reusable.insert((s.name.clone(), s.model_name.clone(), s.live.model.digest.clone()), s.live.clone());
            }
        }
        let reused = |var: &str, model: &str| {
            let digest = &dep.models[model].digest;
            reusable.get(&(var.to_string(), model.to_string(), digest.clone())).cloned()
        };
        // open the models no variant can reuse, each once, on the blocking
        // pool; a shadow gets its own copy running on one thread (its
        // spare thread, at the lowest priority: no engine threads of its own
        // compete with live traffic)
        let mut to_open: Vec<(String, bool, PathBuf)> = Vec::new();
        // serverless and multi-model variants load their models on demand
        let on_demand = |v: &shapes::VariantDef| v.serverless.is_some() || dep.models[&v.model_name].def.multi_model;
        for s in &def.shadows {
            if on_demand(s) {
                return Err(format!(
                    "shadow variant {}: a shadow runs a loaded model (no ServerlessConfig, no multi-model model)",
                    s.name
                ));
            }
        }
        let roles = def
            .variants
            .iter()
            .filter(|v| !on_demand(v))
            .map(|v| (v, false))
            .chain(def.shadows.iter().map(|v| (v, true)));
        for (v, shadow) in roles {
            if reused(&v.name, &v.model_name).is_none()
                && !to_open.iter().any(|(m, s, _)| *m == v.model_name && *s == shadow)
            {
                to_open.push((v.model_name.clone(), shadow, dep.models[&v.model_name].def.bundle.clone()));
            }
        }
        let open = self.open.clone();
        let opened = tokio::task::spawn_blocking(move || -> Result<HashMap<(String, bool), Arc<Model>>, String> {
            let mut out = HashMap::new();
            for (model, shadow, path) in to_open {
                let mut m =
                    Model::open(&path, &open).map_err(|e| format!("model {model} ({}): {e}", path.display()))?;
                if shadow {
                    m.set_threads(1);
                }
                m.self_test().map_err(|e| format!("model {model} ({}): health check failed: {e}", path.display()))?;
                out.insert((model, shadow), Arc::new(m));
            }
            Ok(out)
        })
        .await
        .map_err(|e| format!("loading the models: {e}"))??;
        let live_for = |var: &str, model: &str, shadow: bool| -> Arc<LiveModel> {
            reused(var, model).unwrap_or_else(|| {
                let m = opened[&(model.to_string(), shadow)].clone();
                Arc::new(self.inference.live_variant(model.to_string(), m, Some(var)))
            })
        };
        let capture = match def.capture.as_ref().filter(|c| c.enabled) {
            Some(c) => {
                let same = current.and_then(|cur| cur.capture.clone()).filter(|s| {
                    s.dir == c.dir
                        && s.sampling_percentage == c.sampling_percentage
                        && s.input == c.input
                        && s.output == c.output
                        && s.csv_types == c.csv_types
                        && s.json_types == c.json_types
                });
                match same {
                    Some(s) => Some(s),
                    None => {
                        check_writable(&c.dir).map_err(|e| format!("DataCaptureConfig.DestinationS3Uri: {e}"))?;
                        Some(self.capture.spec(CaptureSpec::new(
                            c.dir.clone(),
                            c.sampling_percentage,
                            c.input,
                            c.output,
                            c.csv_types.clone(),
                            c.json_types.clone(),
                        )))
                    }
                }
            }
            None => None,
        };
        let variants = def
            .variants
            .iter()
            .map(|v| Variant {
                name: v.name.clone(),
                model_name: v.model_name.clone(),
                live: (!on_demand(v)).then(|| live_for(&v.name, &v.model_name, false)),
                lazy: on_demand(v).then(|| self.lazy_variant(name, v, &dep.models[&v.model_name].def, current)),
                weight: dep.weights[&v.name],
                series: self.metrics.register_variant(name, &v.name, false),
                counters: Arc::new(Counters::default()),
            })
            .collect();
        let total: f64 = def.variants.iter().map(|v| dep.weights[&v.name]).sum();
        let shadows = def
            .shadows
            .iter()
            .map(|s| {
                let weight = dep.weights[&s.name];
                Shadow {
                    name: s.name.clone(),
                    model_name: s.model_name.clone(),
                    live: live_for(&s.name, &s.model_name, true),
                    sampling: if total > 0.0 { (weight / total).min(1.0) } else { 0.0 },
                    weight,
                    series: self.metrics.register_variant(name, &s.name, true),
                    running: Default::default(),
                    counters: Arc::new(Counters::default()),
                }
            })
            .collect();
        Ok(LiveEndpoint { name: name.to_string(), variants, shadows, capture, green: None })
    }

    /// A serverless or multi-model variant's on-demand models: those of the
    /// same variant in the current fleet when nothing about it changed
    /// (a weight change keeps what is loaded), else new.
    fn lazy_variant(
        &self,
        endpoint: &str,
        v: &shapes::VariantDef,
        model: &shapes::ModelDef,
        current: Option<&LiveEndpoint>,
    ) -> Arc<crate::lazy::LazyModels> {
        let same = current.and_then(|cur| {
            cur.variants
                .iter()
                .find(|c| c.name == v.name && c.model_name == v.model_name)
                .and_then(|c| c.lazy.clone())
                .filter(|l| l.settings_of == (v.serverless.clone(), model.bundle.clone()))
        });
        if let Some(l) = same {
            return l;
        }
        let (idle, mme_budget) = *self.lazy_settings.lock().unwrap_or_else(|e| e.into_inner());
        let settings = match &v.serverless {
            Some(s) => crate::lazy::Settings {
                source: if model.multi_model {
                    crate::lazy::Source::Dir(model.bundle.clone())
                } else {
                    crate::lazy::Source::Single(model.bundle.clone())
                },
                budget: s.memory_mb << 20,
                idle: (!s.provisioned).then_some(idle),
                max_concurrency: Some(s.max_concurrency),
            },
            None => crate::lazy::Settings {
                source: crate::lazy::Source::Dir(model.bundle.clone()),
                budget: mme_budget,
                idle: None,
                max_concurrency: None,
            },
        };
        crate::lazy::LazyModels::new(
            endpoint,
            &v.name,
            &v.model_name,
            settings,
            (v.serverless.clone(), model.bundle.clone()),
            self.open.clone(),
            self.inference.clone(),
            self.metrics.register_lazy(endpoint, &v.name),
        )
    }

    /// How long a serverless model may idle before it is unloaded, and the
    /// memory a multi-model variant's models may take together.
    pub fn set_lazy_settings(&self, idle: std::time::Duration, multi_model_bytes: u64) {
        *self.lazy_settings.lock().unwrap_or_else(|e| e.into_inner()) = (idle, multi_model_bytes);
    }

    // ---- start-up ----

    /// Reads the state directory and redeploys every endpoint that was in
    /// service (or on its way); returns once each is in service or failed.
    pub async fn restore(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let mut redeploy = Vec::new();
        let mut notes = Vec::new();
        {
            let mut st = self.lock();
            for v in store.load("models")? {
                let rec = model_from_json(&v).map_err(|e| anyhow::anyhow!("state: a model record: {e}"))?;
                st.models.insert(rec.def.name.clone(), rec);
            }
            for v in store.load("endpoint-configs")? {
                let rec = config_from_json(&v)
                    .map_err(|e| anyhow::anyhow!("state: an endpoint configuration record: {e}"))?;
                st.configs.insert(rec.def.name.clone(), rec);
            }
            for v in store.load("alarms")? {
                let def = crate::alarms::parse(&v, &mut Vec::new())
                    .map_err(|e| anyhow::anyhow!("state: an alarm record: {}", e.message))?;
                self.add_alarm(def);
            }
            for v in store.load("endpoints")? {
                let mut rec = endpoint_from_json(&v).map_err(|e| anyhow::anyhow!("state: an endpoint record: {e}"))?;
                if let Some(note) = interrupted(&mut rec) {
                    notes.push((rec.name.clone(), note));
                }
                // what served before is what serves now; an update that was
                // under way is taken up again. A creation that failed stays
                // failed; an endpoint whose restore failed is tried again.
                let target = rec.pending.clone().or_else(|| rec.current.clone());
                match (rec.status, target) {
                    (Status::Failed, _) if rec.current.is_none() => {}
                    (_, None) => {}
                    (_, Some(dep)) => {
                        rec.pending = Some(dep);
                        rec.status = Status::Creating;
                        rec.generation = 1;
                        redeploy.push(rec.name.clone());
                    }
                }
                st.endpoints.insert(rec.name.clone(), rec);
            }
        }
        for name in redeploy {
            tracing::info!(endpoint = %name, "restoring");
            self.clone().deploy(name, 1).await;
        }
        // experiments: each picks up where its record says it was
        for v in store.load("inference-experiments")? {
            let e =
                Self::exp_from_json(&v).map_err(|e| anyhow::anyhow!("state: an inference experiment record: {e}"))?;
            let (name, over) = (e.name.clone(), matches!(v["Status"].as_str(), Some("Completed" | "Cancelled")));
            self.lock().experiments.insert(name.clone(), e);
            if !over {
                let cp = self.clone();
                tokio::spawn(async move { cp.drive_experiment(name).await });
            }
        }
        // transform jobs: one that was running runs again (resumable)
        self.restore_transform_jobs(store.load("transform-jobs")?)?;
        // what became of the guarded updates the stop interrupted
        for (name, (failure, detail)) in notes {
            let mut st = self.lock();
            if let Some(ep) = st.endpoints.get_mut(&name).filter(|e| e.status == Status::InService) {
                ep.failure = failure;
                let rec = ep.clone();
                if let Err(e) = self.persist("endpoints", &name, Some(&endpoint_json(&rec))) {
                    tracing::error!(endpoint = %name, "{}", e.message);
                }
            }
            drop(st);
            tracing::warn!(endpoint = %name, %detail, "a guarded update was under way when neorun stopped");
            self.journal("neorun", "DeploymentInterrupted", &name, detail);
        }
        Ok(())
    }

    /// Applies a declared endpoint file (`--endpoint FILE`): a
    /// `CreateEndpointConfig` body with `Models` (a list of `CreateModel`
    /// bodies) and, optionally, `EndpointName` (default: the configuration's
    /// name). Models and the configuration are created or replaced; the
    /// endpoint is created, or updated to it (weights from the file). Waits
    /// until the endpoint serves it; on any error nothing is changed.
    pub async fn apply_file(self: &Arc<Self>, path: &Path, who: Caller<'_>) -> Result<String, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        let at = |e: AwsError| format!("{}: {}", path.display(), e.message);
        let mut ignored = Vec::new();
        let config = shapes::create_endpoint_config(&v, &["Models", "EndpointName"], &mut ignored).map_err(at)?;
        let endpoint = match v.get("EndpointName") {
            None => config.name.clone(),
            Some(Value::String(n)) => {
                shapes::check_name("EndpointName", n).map_err(at)?;
                n.clone()
            }
            Some(_) => return Err(format!("{}: EndpointName: expected a string", path.display())),
        };
        let Some(models) = v.get("Models").and_then(Value::as_array) else {
            return Err(format!(
                "{}: Models: required (a list of CreateModel bodies: ModelName, PrimaryContainer.ModelDataUrl)",
                path.display()
            ));
        };
        let mut recs = Vec::new();
        for (i, m) in models.iter().enumerate() {
            let mut def = shapes::create_model(m, &mut ignored)
                .map_err(|e| format!("{}: Models[{i}].{}", path.display(), e.message))?;
            if def.is_oci() {
                self.pull(&mut def).await.map_err(|e| format!("{}: Models[{i}].{}", path.display(), e.message))?;
            }
            let digest =
                self.verify(&def).await.map_err(|e| format!("{}: Models[{i}].{}", path.display(), e.message))?;
            recs.push(ModelRec { arn: self.arn("model", &def.name), created: now(), request: m.clone(), digest, def });
        }
        let generation = {
            let mut st = self.lock();
            // check everything against the state it will join before changing any of it
            let mut trial = State { models: st.models.clone(), ..State::default() };
            for r in &recs {
                trial.models.insert(r.def.name.clone(), r.clone());
            }
            self.check_config_models(&trial, &config).map_err(at)?;
            if let Some(ep) = st.endpoints.get(&endpoint) {
                if matches!(ep.status, Status::Creating | Status::Updating | Status::UpdateRollbackFailed) {
                    return Err(format!("endpoint {endpoint} is {}; try again when it is done", ep.status.name()));
                }
            }
            for r in &recs {
                self.persist("models", &r.def.name, Some(&model_json(r))).map_err(at)?;
                st.models.insert(r.def.name.clone(), r.clone());
            }
            let crec = ConfigRec {
                arn: self.arn("endpoint-config", &config.name),
                created: now(),
                request: strip(&v, &["Models", "EndpointName"]),
                def: config.clone(),
            };
            self.persist("endpoint-configs", &config.name, Some(&config_json(&crec))).map_err(at)?;
            st.configs.insert(config.name.clone(), crec.clone());
            let dep = Self::deployment(&st, &crec).map_err(at)?;
            let t = now();
            let arn = self.arn("endpoint", &endpoint);
            let ep = st.endpoints.entry(endpoint.clone()).or_insert_with(|| EndpointRec {
                name: endpoint.clone(),
                arn,
                created: t,
                modified: t,
                status: Status::Creating,
                failure: None,
                current: None,
                pending: None,
                generation: 0,
                rollout: None,
                last_deployment: None,
            });
            if ep.current.is_some() {
                ep.status = Status::Updating;
            } else {
                ep.status = Status::Creating;
            }
            ep.pending = Some(dep);
            ep.failure = None;
            ep.generation += 1;
            ep.modified = t;
            let rec = ep.clone();
            self.persist("endpoints", &endpoint, Some(&endpoint_json(&rec))).map_err(at)?;
            rec.generation
        };
        self.journal(who, "ApplyEndpointFile", &endpoint, json!({ "file": path, "ignored": ignored }));
        self.clone().deploy(endpoint.clone(), generation).await;
        let st = self.lock();
        match st.endpoints.get(&endpoint) {
            Some(ep) if ep.failure.is_none() && ep.status == Status::InService => Ok(endpoint),
            Some(ep) => Err(format!(
                "{}: endpoint {endpoint}: {}",
                path.display(),
                ep.failure.clone().unwrap_or_else(|| ep.status.name().into())
            )),
            None => Err(format!("{}: endpoint {endpoint} was deleted while it deployed", path.display())),
        }
    }

    /// Whether any endpoint exists (in any state).
    pub fn has_endpoints(&self) -> bool {
        !self.lock().endpoints.is_empty()
    }
}

/// A guarded update the last stop interrupted, resolved: before the final
/// bake passed, back to blue (green is dropped); after, on green. Returns
/// the FailureReason to show and the journal's detail.
fn interrupted(rec: &mut EndpointRec) -> Option<(Option<String>, Value)> {
    let p = rec.rollout.take()?;
    if p.phase == rollout::Phase::TerminationWait {
        rec.pending = None;
        rec.last_deployment = Some(p.request.clone());
        rec.status = Status::InService;
        let on = rec.current.as_ref().map(|d| d.config.def.name.clone());
        let detail = json!({ "on": on, "reason": "the update had passed its final bake before the stop: the endpoint stays on the new configuration" });
        return Some((None, detail));
    }
    let green = rec.pending.take().map(|d| d.config.def.name);
    let blue = rec.current.as_ref().map(|d| d.config.def.name.clone()).unwrap_or_default();
    let reason = format!(
        "Update to {} interrupted by a restart at step {} of {} ({:.0}% of requests on the new fleet, {}): the update did not complete, so all traffic is on {blue}",
        green.clone().unwrap_or_default(),
        p.step + 1,
        p.steps,
        p.share * 100.0,
        p.phase.name()
    );
    rec.status = Status::InService;
    let detail = json!({ "on": blue, "from": green, "reason": reason });
    Some((Some(reason), detail))
}

/// An endpoint that may be updated now: it exists and is in service
/// (SageMaker refuses to update one that is creating or updating).
fn updatable<'s>(st: &'s mut State, name: &str) -> Result<&'s mut EndpointRec, AwsError> {
    if let Some(x) = ControlPlane::experiment_on(st, name) {
        return Err(AwsError::validation(format!(
            "Cannot update endpoint {name}: inference experiment {x} runs on it; stop it first (StopInferenceExperiment)"
        )));
    }
    let ep = st.endpoints.get_mut(name).ok_or_else(|| AwsError::not_found("endpoint", name))?;
    if ep.status != Status::InService {
        let to = match (&ep.pending, &ep.rollout) {
            (Some(d), Some(p)) => {
                format!(" (to {}: {}, step {} of {})", d.config.def.name, p.phase.name(), p.step + 1, p.steps)
            }
            (Some(d), None) => format!(" (to {})", d.config.def.name),
            _ => String::new(),
        };
        return Err(AwsError::validation(format!(
            "Cannot update in-progress endpoint \"{}\": it is {}{to}; wait for it to end, or roll it back (NeoRun.RollbackEndpointUpdate, `neorun endpoint rollback`)",
            ep.arn,
            ep.status.name()
        )));
    }
    Ok(ep)
}

/// The live endpoint with new weights and nothing else changed.
fn reweighted(live: &LiveEndpoint, weights: &BTreeMap<String, f64>) -> LiveEndpoint {
    let variants: Vec<Variant> = live
        .variants
        .iter()
        .map(|v| Variant {
            name: v.name.clone(),
            model_name: v.model_name.clone(),
            live: v.live.clone(),
            lazy: v.lazy.clone(),
            weight: weights.get(&v.name).copied().unwrap_or(v.weight),
            series: v.series.clone(),
            counters: v.counters.clone(),
        })
        .collect();
    let total: f64 = variants.iter().map(|v| v.weight).sum();
    let shadows = live
        .shadows
        .iter()
        .map(|s| {
            let weight = weights.get(&s.name).copied().unwrap_or(s.weight);
            Shadow {
                name: s.name.clone(),
                model_name: s.model_name.clone(),
                live: s.live.clone(),
                sampling: if total > 0.0 { (weight / total).min(1.0) } else { 0.0 },
                weight,
                series: s.series.clone(),
                running: s.running.clone(),
                counters: s.counters.clone(),
            }
        })
        .collect();
    LiveEndpoint { name: live.name.clone(), variants, shadows, capture: live.capture.clone(), green: None }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Models,
    Configs,
    Endpoints,
    TransformJobs,
}

impl Kind {
    fn list_key(self) -> &'static str {
        match self {
            Kind::Models => "Models",
            Kind::Configs => "EndpointConfigs",
            Kind::Endpoints => "Endpoints",
            Kind::TransformJobs => "TransformJobSummaries",
        }
    }

    /// Whether its objects have a status (and a last-modified time) to
    /// filter and sort by.
    fn has_status(self) -> bool {
        matches!(self, Kind::Endpoints | Kind::TransformJobs)
    }
}

pub const OPERATIONS: [&str; 22] = [
    "CreateModel",
    "DescribeModel",
    "DeleteModel",
    "ListModels",
    "CreateEndpointConfig",
    "DescribeEndpointConfig",
    "DeleteEndpointConfig",
    "ListEndpointConfigs",
    "CreateEndpoint",
    "DescribeEndpoint",
    "UpdateEndpoint",
    "UpdateEndpointWeightsAndCapacities",
    "DeleteEndpoint",
    "ListEndpoints",
    "CreateInferenceExperiment",
    "DescribeInferenceExperiment",
    "StopInferenceExperiment",
    "ListInferenceExperiments",
    "CreateTransformJob",
    "DescribeTransformJob",
    "StopTransformJob",
    "ListTransformJobs",
];

fn body_json(body: &[u8]) -> Result<Value, AwsError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        AwsError::new(StatusCode::BAD_REQUEST, "SerializationException", format!("the body is not JSON: {e}"))
    })
}

fn name_field(v: &Value, key: &'static str) -> Result<String, AwsError> {
    let mut f = Fields::new("", v)?;
    let n = f.req_str(key)?.to_string();
    f.finish(&mut Vec::new())?;
    Ok(n)
}

fn strip(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

fn variant_summary(name: &str, model: &ModelRec, weight: Option<f64>, desired: f64, loading: bool) -> Value {
    let mut s = json!({
        "VariantName": name,
        "DeployedImages": [{
            "SpecifiedImage": model.def.url,
            "ResolvedImage": model.digest,
            "ResolutionTime": model.created,
        }],
        "CurrentWeight": weight.unwrap_or(0.0),
        "DesiredWeight": desired,
        "CurrentInstanceCount": 1,
        "DesiredInstanceCount": 1,
        "VariantStatus": [],
    });
    if loading {
        s["VariantStatus"] =
            json!([{ "Status": "Creating", "StatusMessage": "loading and health-checking the bundle" }]);
    }
    s
}

fn describe(ep: &EndpointRec, live: Option<&LiveEndpoint>) -> Value {
    let mut out = json!({
        "EndpointName": ep.name,
        "EndpointArn": ep.arn,
        "EndpointStatus": ep.status.name(),
        "CreationTime": ep.created,
        "LastModifiedTime": ep.modified,
    });
    if let Some(f) = &ep.failure {
        out["FailureReason"] = json!(f);
    }
    let shown = ep.current.as_ref().or(ep.pending.as_ref());
    let Some(dep) = shown else { return out };
    out["EndpointConfigName"] = json!(dep.config.def.name);
    let loading = ep.status == Status::Creating;
    let weight_now = |name: &str| -> Option<f64> {
        let l = live?;
        l.variants
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.weight)
            .or_else(|| l.shadows.iter().find(|s| s.name == name).map(|s| s.weight))
    };
    let summaries = |vs: &[shapes::VariantDef]| -> Vec<Value> {
        vs.iter()
            .map(|v| {
                variant_summary(&v.name, &dep.models[&v.model_name], weight_now(&v.name), dep.weights[&v.name], loading)
            })
            .collect()
    };
    out["ProductionVariants"] = json!(summaries(&dep.config.def.variants));
    if !dep.config.def.shadows.is_empty() {
        out["ShadowProductionVariants"] = json!(summaries(&dep.config.def.shadows));
    }
    if let Some(c) = &dep.config.def.capture {
        out["DataCaptureConfig"] = json!({
            "EnableCapture": c.enabled,
            "CaptureStatus": if c.enabled { "Started" } else { "Stopped" },
            "CurrentSamplingPercentage": c.sampling_percentage,
            "DestinationS3Uri": c.destination,
            "KmsKeyId": "",
        });
    }
    if let Some(d) = &ep.last_deployment {
        out["LastDeploymentConfig"] = d.clone();
    }
    if let Some(p) = &ep.rollout {
        // a guarded update: blue's weights shrink as green's share grows
        let mut progress = p.to_json();
        if let Some(m) = progress.as_object_mut() {
            m.remove("Blue");
            m.remove("DeploymentConfig");
        }
        out["DeploymentProgress"] = progress;
        let fleet = |d: &Deployment,
                     vs: &[shapes::VariantDef],
                     share: f64,
                     desired: bool,
                     status: Option<Value>|
         -> Vec<Value> {
            vs.iter()
                .map(|v| {
                    let w = d.weights[&v.name];
                    let mut s = variant_summary(
                        &v.name,
                        &d.models[&v.model_name],
                        Some(w * share),
                        if desired { w } else { 0.0 },
                        false,
                    );
                    if let Some(st) = &status {
                        s["VariantStatus"] = st.clone();
                    }
                    s
                })
                .collect()
        };
        if let (Some(blue), Some(green)) = (&ep.current, &ep.pending) {
            out["EndpointConfigName"] = json!(blue.config.def.name);
            out["ProductionVariants"] = json!(fleet(blue, &blue.config.def.variants, 1.0 - p.share, false, None));
            let mut pending = json!({
                "EndpointConfigName": green.config.def.name,
                "StartTime": p.started,
                "ProductionVariants": fleet(green, &green.config.def.variants, p.share, true, Some(p.variant_status())),
            });
            if !green.config.def.shadows.is_empty() {
                pending["ShadowProductionVariants"] =
                    json!(fleet(green, &green.config.def.shadows, p.share, true, Some(p.variant_status())));
            }
            out["PendingDeploymentSummary"] = pending;
        } else if let Some(green) = &ep.current {
            out["ProductionVariants"] =
                json!(fleet(green, &green.config.def.variants, 1.0, true, Some(p.variant_status())));
        }
    } else if let Some(p) = ep.pending.as_ref().filter(|_| ep.status == Status::Updating) {
        out["PendingDeploymentSummary"] = json!({ "EndpointConfigName": p.config.def.name });
    }
    out
}

// ---- the records on disk ----

fn model_json(m: &ModelRec) -> Value {
    json!({ "Request": m.request, "ModelArn": m.arn, "CreationTime": m.created, "Digest": m.digest, "Bundle": m.def.bundle })
}

fn model_from_json(v: &Value) -> Result<ModelRec, String> {
    let request = v.get("Request").cloned().ok_or("no Request")?;
    let mut def = shapes::create_model(&request, &mut Vec::new()).map_err(|e| e.message)?;
    // where a pulled bundle was put
    if let Some(b) = v.get("Bundle").and_then(Value::as_str) {
        def.bundle = PathBuf::from(b);
    }
    Ok(ModelRec {
        def,
        request,
        arn: v["ModelArn"].as_str().ok_or("no ModelArn")?.to_string(),
        created: v["CreationTime"].as_f64().ok_or("no CreationTime")?,
        digest: v["Digest"].as_str().ok_or("no Digest")?.to_string(),
    })
}

fn config_json(c: &ConfigRec) -> Value {
    json!({ "Request": c.request, "EndpointConfigArn": c.arn, "CreationTime": c.created })
}

fn config_from_json(v: &Value) -> Result<ConfigRec, String> {
    let request = v.get("Request").cloned().ok_or("no Request")?;
    let def = shapes::create_endpoint_config(&request, &[], &mut Vec::new()).map_err(|e| e.message)?;
    Ok(ConfigRec {
        def,
        request,
        arn: v["EndpointConfigArn"].as_str().ok_or("no EndpointConfigArn")?.to_string(),
        created: v["CreationTime"].as_f64().ok_or("no CreationTime")?,
    })
}

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "Config": config_json(&d.config),
        "Models": d.models.values().map(model_json).collect::<Vec<_>>(),
        "Weights": d.weights,
    })
}

fn deployment_from_json(v: &Value) -> Result<Deployment, String> {
    let config = config_from_json(&v["Config"])?;
    let mut models = BTreeMap::new();
    for m in v["Models"].as_array().ok_or("no Models")? {
        let m = model_from_json(m)?;
        models.insert(m.def.name.clone(), m);
    }
    let weights: BTreeMap<String, f64> =
        serde_json::from_value(v["Weights"].clone()).map_err(|e| format!("Weights: {e}"))?;
    for var in config.def.variants.iter().chain(&config.def.shadows) {
        if !models.contains_key(&var.model_name) || !weights.contains_key(&var.name) {
            return Err(format!("the deployment of {} lacks variant {}", config.def.name, var.name));
        }
    }
    Ok(Deployment { config, models, weights })
}

fn endpoint_json(e: &EndpointRec) -> Value {
    json!({
        "EndpointName": e.name,
        "EndpointArn": e.arn,
        "CreationTime": e.created,
        "LastModifiedTime": e.modified,
        "EndpointStatus": e.status.name(),
        "FailureReason": e.failure,
        "Current": e.current.as_ref().map(deployment_json),
        "Pending": e.pending.as_ref().map(deployment_json),
        "Rollout": e.rollout.as_ref().map(rollout::Progress::to_json),
        "LastDeploymentConfig": e.last_deployment,
    })
}

fn endpoint_from_json(v: &Value) -> Result<EndpointRec, String> {
    let dep = |k: &str| -> Result<Option<Deployment>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(d) => deployment_from_json(d).map(Some),
        }
    };
    Ok(EndpointRec {
        name: v["EndpointName"].as_str().ok_or("no EndpointName")?.to_string(),
        arn: v["EndpointArn"].as_str().ok_or("no EndpointArn")?.to_string(),
        created: v["CreationTime"].as_f64().ok_or("no CreationTime")?,
        modified: v["LastModifiedTime"].as_f64().ok_or("no LastModifiedTime")?,
        status: Status::parse(v["EndpointStatus"].as_str().unwrap_or("")),
        failure: v["FailureReason"].as_str().map(str::to_string),
        current: dep("Current")?,
        pending: dep("Pending")?,
        generation: 1,
        rollout: match v.get("Rollout") {
            None | Some(Value::Null) => None,
            Some(r) => Some(rollout::Progress::from_json(r).map_err(|e| format!("Rollout: {e}"))?),
        },
        last_deployment: v.get("LastDeploymentConfig").filter(|d| !d.is_null()).cloned(),
    })
}
