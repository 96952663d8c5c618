//! Shadow tests as SageMaker runs them: `CreateInferenceExperiment` of type
//! `ShadowMode` puts a shadow variant (a copy of `SamplingPercentage` of
//! the production variant's requests, answered but never returned) on an
//! endpoint for the experiment's schedule, capturing both variants to
//! `DataStorageConfig`; `DescribeInferenceExperiment` reports them side by
//! side (neorun's `Metrics`: invocations, errors, latency percentiles and
//! how often the shadow agreed); at the end of the schedule the endpoint
//! returns to what it ran before, and `StopInferenceExperiment` ends it
//! early, promoting the shadow (it becomes the production model) or
//! removing it.
//!
//! (Over 600 lines: one record and its five operations — create, the
//! driver over its schedule, describe, stop, list — with the persistence
//! they share; splitting them would spread the record's states over files.
//! Its tests are end to end, in tests/tests/rollouts.rs.)

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::shapes::{self, invalid, Fields};
use super::{endpoint_json, now, AwsError, Caller, ConfigRec, ControlPlane, Deployment, State, Status};
use crate::alarms::counters::{idx, Snap};

/// At most as long as SageMaker lets a shadow test run.
const MAX_DAYS: f64 = 30.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ExpStatus {
    Created,
    Starting,
    Running,
    Stopping,
    Completed,
    Cancelled,
}

impl ExpStatus {
    fn name(self) -> &'static str {
        match self {
            ExpStatus::Created => "Created",
            ExpStatus::Starting => "Starting",
            ExpStatus::Running => "Running",
            ExpStatus::Stopping => "Stopping",
            ExpStatus::Completed => "Completed",
            ExpStatus::Cancelled => "Cancelled",
        }
    }

    fn parse(s: &str) -> ExpStatus {
        match s {
            "Starting" => ExpStatus::Starting,
            "Running" => ExpStatus::Running,
            "Stopping" => ExpStatus::Stopping,
            "Completed" => ExpStatus::Completed,
            "Cancelled" => ExpStatus::Cancelled,
            _ => ExpStatus::Created,
        }
    }

    fn over(self) -> bool {
        matches!(self, ExpStatus::Completed | ExpStatus::Cancelled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Promote,
    Remove,
    Retain,
}

#[derive(Clone, Debug)]
pub(super) struct ExperimentRec {
    pub name: String,
    pub arn: String,
    pub request: Value,
    pub endpoint: String,
    pub source: String,
    pub shadow_variant: String,
    pub shadow_model: String,
    pub sampling: u32,
    pub start: f64,
    pub end: f64,
    pub status: ExpStatus,
    pub reason: Option<String>,
    pub created: f64,
    pub modified: f64,
    pub completed: Option<f64>,
    /// What the endpoint ran before the experiment.
    pub prior: Option<Deployment>,
    /// A stop asked for: the shadow's action, the state to end in, why.
    pub stop: Option<(Action, ExpStatus, String)>,
    /// The side-by-side metrics when it ended.
    pub final_metrics: Option<Value>,
}

/// Reads `CreateInferenceExperiment`. `new`: a request now, whose schedule
/// must still be ahead (a record read back at start-up is not).
fn parse(v: &Value, ignored: &mut Vec<String>, new: bool) -> Result<ExperimentRec, AwsError> {
    let mut f = Fields::new("", v)?;
    let name = f.req_str("Name")?.to_string();
    if name.is_empty() || name.len() > 120 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid("Name", "1 to 120 letters, digits and hyphens"));
    }
    match f.req_str("Type")? {
        "ShadowMode" => {}
        other => return Err(invalid("Type", &format!("{other:?}: the one type is ShadowMode"))),
    }
    let endpoint = f.name("EndpointName")?.to_string();
    let t = now();
    let (start, end) = match f.obj("Schedule")? {
        Some(mut s) => {
            let start = s.f64("StartTime")?.unwrap_or(t);
            let end = s.f64("EndTime")?;
            s.finish(ignored)?;
            (start, end.unwrap_or(start + 7.0 * 86_400.0))
        }
        None => (t, t + 7.0 * 86_400.0),
    };
    if end <= start {
        return Err(invalid("Schedule.EndTime", "must be after StartTime"));
    }
    if new && end <= t {
        return Err(invalid("Schedule.EndTime", "is in the past"));
    }
    if end - start > MAX_DAYS * 86_400.0 {
        return Err(invalid("Schedule", "an experiment runs at most 30 days"));
    }
    let mut variants = Vec::new();
    for mut m in f.list("ModelVariants")?.ok_or_else(|| invalid("ModelVariants", "required field is missing"))? {
        let at = m.path().to_string();
        let model = m.name("ModelName")?.to_string();
        let variant = m.name("VariantName")?.to_string();
        m.ignore(&["InfrastructureConfig"]);
        m.finish(ignored)?;
        variants.push((at, model, variant));
    }
    if variants.is_empty() || variants.len() > 2 {
        return Err(invalid("ModelVariants", "give the production variant and the shadow variant (1 or 2 entries)"));
    }
    let mut sm = f.obj("ShadowModeConfig")?.ok_or_else(|| invalid("ShadowModeConfig", "required field is missing"))?;
    let source = sm.name("SourceModelVariantName")?.to_string();
    let shadows = sm.list("ShadowModelVariants")?.unwrap_or_default();
    if shadows.len() != 1 {
        return Err(invalid("ShadowModeConfig.ShadowModelVariants", "give exactly one shadow variant"));
    }
    let mut sv = shadows.into_iter().next().expect("one");
    let shadow_variant = sv.name("ShadowModelVariantName")?.to_string();
    let sampling = sv
        .int("SamplingPercentage")?
        .ok_or_else(|| invalid(&format!("{}.SamplingPercentage", sv.path()), "required field is missing"))?;
    if !(1..=100).contains(&sampling) {
        return Err(invalid(&format!("{}.SamplingPercentage", sv.path()), &format!("{sampling}: give 1 to 100")));
    }
    sv.finish(ignored)?;
    sm.finish(ignored)?;
    if source == shadow_variant {
        return Err(invalid(
            "ShadowModeConfig.ShadowModelVariants[0].ShadowModelVariantName",
            "must differ from SourceModelVariantName",
        ));
    }
    let shadow_model =
        variants.iter().find(|(_, _, v)| *v == shadow_variant).map(|(_, m, _)| m.clone()).ok_or_else(|| {
            invalid("ModelVariants", &format!("list the shadow variant {shadow_variant:?} with its model"))
        })?;
    if let Some(mut d) = f.obj("DataStorageConfig")? {
        d.req_str("Destination")?;
        d.ignore(&["KmsKey"]);
        if let Some(mut c) = d.obj("ContentType")? {
            c.str_list("CsvContentTypes")?;
            c.str_list("JsonContentTypes")?;
            c.finish(ignored)?;
        }
        d.finish(ignored)?;
    }
    f.ignore(&["RoleArn", "KmsKey", "Tags", "Description"]);
    f.finish(ignored)?;
    Ok(ExperimentRec {
        name,
        arn: String::new(),
        request: v.clone(),
        endpoint,
        source,
        shadow_variant,
        shadow_model,
        sampling: sampling as u32,
        start,
        end,
        status: ExpStatus::Created,
        reason: None,
        created: t,
        modified: t,
        completed: None,
        prior: None,
        stop: None,
        final_metrics: None,
    })
}

/// The deployment an experiment runs: what ran before, with the shadow
/// variant at its sampling share and, with `DataStorageConfig`, capture of
/// every request of both variants.
fn with_shadow(st: &State, e: &ExperimentRec, prior: &Deployment) -> Result<Deployment, AwsError> {
    let model = st
        .models
        .get(&e.shadow_model)
        .ok_or_else(|| invalid("ModelVariants", &format!("Could not find model \"{}\".", e.shadow_model)))?;
    let mut request = prior.config.request.clone();
    let production: f64 = prior.config.def.variants.iter().map(|v| prior.weights[&v.name]).sum();
    let weight = production * e.sampling as f64 / 100.0;
    request["ShadowProductionVariants"] = json!([{
        "VariantName": e.shadow_variant, "ModelName": e.shadow_model, "InitialVariantWeight": weight,
    }]);
    if let Some(d) = e.request.get("DataStorageConfig") {
        let mut capture = json!({
            "EnableCapture": true, "InitialSamplingPercentage": 100, "DestinationS3Uri": d["Destination"],
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        });
        if let Some(ct) = d.get("ContentType") {
            capture["CaptureContentTypeHeader"] = ct.clone();
        }
        request["DataCaptureConfig"] = capture;
    }
    let def = shapes::create_endpoint_config(&request, &[], &mut Vec::new())
        .map_err(|e2| invalid("DataStorageConfig", &e2.message))?;
    if let Some(c) = def.capture.as_ref() {
        crate::capture::check_writable(&c.dir).map_err(|e2| invalid("DataStorageConfig.Destination", &e2))?;
    }
    let mut models = prior.models.clone();
    models.insert(model.def.name.clone(), model.clone());
    let mut weights = prior.weights.clone();
    weights.insert(e.shadow_variant.clone(), weight);
    let config = ConfigRec { def, request, arn: prior.config.arn.clone(), created: prior.config.created };
    Ok(Deployment { config, models, weights })
}

/// What the endpoint runs once the shadow is promoted: the production
/// variant on the shadow's model, no shadow, capture as before.
fn promoted(e: &ExperimentRec, prior: &Deployment, current: &Deployment) -> Result<Deployment, String> {
    let mut request = prior.config.request.clone();
    let vs = request["ProductionVariants"].as_array_mut().ok_or("no ProductionVariants")?;
    for v in vs.iter_mut() {
        if v["VariantName"] == json!(e.source) {
            v["ModelName"] = json!(e.shadow_model);
        }
    }
    let def = shapes::create_endpoint_config(&request, &[], &mut Vec::new()).map_err(|e| e.message)?;
    let mut models = prior.models.clone();
    models.insert(e.shadow_model.clone(), current.models[&e.shadow_model].clone());
    models.retain(|m, _| def.variants.iter().chain(&def.shadows).any(|v| v.model_name == *m));
    let config = ConfigRec { def, request, arn: prior.config.arn.clone(), created: prior.config.created };
    Ok(Deployment { config, models, weights: prior.weights.clone() })
}

fn stats(s: &Snap) -> Value {
    let c = &s.counts;
    let q = |p: f64| s.model.quantile(p);
    json!({
        "Invocations": c[idx::INVOCATIONS],
        "Invocation4XXErrors": c[idx::E4XX],
        "Invocation5XXErrors": c[idx::E5XX],
        "ModelLatencyP50Microseconds": q(0.5),
        "ModelLatencyP90Microseconds": q(0.9),
        "ModelLatencyP99Microseconds": q(0.99),
    })
}

impl ControlPlane {
    fn exp_json(e: &ExperimentRec) -> Value {
        json!({
            "Request": e.request, "Arn": e.arn, "Status": e.status.name(), "StatusReason": e.reason,
            "CreationTime": e.created, "LastModifiedTime": e.modified, "CompletionTime": e.completed,
            "Prior": e.prior.as_ref().map(super::deployment_json), "FinalMetrics": e.final_metrics,
            "Stop": e.stop.as_ref().map(|(a, s, r)| json!([format!("{a:?}"), s.name(), r])),
            "Start": e.start, "End": e.end,
        })
    }

    pub(super) fn exp_from_json(v: &Value) -> Result<ExperimentRec, String> {
        let mut e = parse(&v["Request"], &mut Vec::new(), false).map_err(|e| e.message)?;
        // the schedule as resolved at creation (defaults counted from then)
        if let (Some(start), Some(end)) = (v["Start"].as_f64(), v["End"].as_f64()) {
            (e.start, e.end) = (start, end);
        }
        e.arn = v["Arn"].as_str().unwrap_or("").to_string();
        e.status = ExpStatus::parse(v["Status"].as_str().unwrap_or(""));
        e.reason = v["StatusReason"].as_str().map(str::to_string);
        e.created = v["CreationTime"].as_f64().unwrap_or(0.0);
        e.modified = v["LastModifiedTime"].as_f64().unwrap_or(0.0);
        e.completed = v["CompletionTime"].as_f64();
        e.prior = match v.get("Prior") {
            None | Some(Value::Null) => None,
            Some(p) => Some(super::deployment_from_json(p)?),
        };
        e.final_metrics = v.get("FinalMetrics").filter(|m| !m.is_null()).cloned();
        if let Some([a, s, r]) = v.get("Stop").and_then(Value::as_array).map(Vec::as_slice) {
            let action = match a.as_str() {
                Some("Promote") => Action::Promote,
                Some("Retain") => Action::Retain,
                _ => Action::Remove,
            };
            e.stop = Some((action, ExpStatus::parse(s.as_str().unwrap_or("")), r.as_str().unwrap_or("").to_string()));
        }
        Ok(e)
    }

    fn save_exp(&self, e: &ExperimentRec) {
        if let Err(err) = self.persist("inference-experiments", &e.name, Some(&Self::exp_json(e))) {
            tracing::error!(experiment = %e.name, "{}", err.message);
        }
    }

    pub(super) async fn create_experiment(self: &Arc<Self>, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let mut ignored = Vec::new();
        let mut e = parse(v, &mut ignored, true)?;
        e.arn = self.arn("inference-experiment", &e.name);
        {
            let st = self.lock();
            if st.experiments.contains_key(&e.name) {
                return Err(AwsError::validation(format!(
                    "Cannot create already existing inference experiment \"{}\".",
                    e.arn
                )));
            }
            let ep = st.endpoints.get(&e.endpoint).ok_or_else(|| AwsError::not_found("endpoint", &e.endpoint))?;
            if let Some(other) = st.experiments.values().find(|x| x.endpoint == e.endpoint && !x.status.over()) {
                return Err(AwsError::validation(format!(
                    "endpoint {} already has inference experiment {} ({})",
                    e.endpoint,
                    other.name,
                    other.status.name()
                )));
            }
            let cur = ep.current.as_ref().ok_or_else(|| {
                AwsError::validation(format!("endpoint {} serves nothing yet (it is {})", e.endpoint, ep.status.name()))
            })?;
            if cur.config.def.variants.len() != 1 {
                return Err(invalid(
                    "ShadowModeConfig.SourceModelVariantName",
                    &format!(
                        "a shadow test samples the endpoint's one production variant; {} has {}",
                        e.endpoint,
                        cur.config.def.variants.len()
                    ),
                ));
            }
            let prod = &cur.config.def.variants[0];
            if prod.name != e.source {
                return Err(invalid(
                    "ShadowModeConfig.SourceModelVariantName",
                    &format!("{:?} is not endpoint {}'s production variant ({})", e.source, e.endpoint, prod.name),
                ));
            }
            let listed = e.request["ModelVariants"].as_array().into_iter().flatten();
            for (i, m) in listed.enumerate() {
                if m["VariantName"] == json!(e.source) && m["ModelName"] != json!(prod.model_name) {
                    return Err(invalid(
                        &format!("ModelVariants[{i}].ModelName"),
                        &format!(
                            "the production variant {} runs model {}, not {}",
                            prod.name, prod.model_name, m["ModelName"]
                        ),
                    ));
                }
                if m["VariantName"] != json!(e.source)
                    && cur.config.def.shadows.iter().any(|s| json!(s.name) == m["VariantName"])
                {
                    return Err(invalid(
                        &format!("ModelVariants[{i}].VariantName"),
                        "the endpoint already has a variant of that name",
                    ));
                }
            }
            // everything the start will need, checked now
            with_shadow(&st, &e, cur)?;
        }
        let mut st = self.lock();
        self.persist("inference-experiments", &e.name, Some(&Self::exp_json(&e)))?;
        st.experiments.insert(e.name.clone(), e.clone());
        drop(st);
        self.journal(
            who,
            "CreateInferenceExperiment",
            &e.name,
            json!({ "EndpointName": e.endpoint, "ignored": ignored }),
        );
        let cp = self.clone();
        let name = e.name.clone();
        tokio::spawn(async move { cp.drive_experiment(name).await });
        Ok(json!({ "InferenceExperimentArn": e.arn }))
    }

    fn set_exp(&self, name: &str, f: impl FnOnce(&mut ExperimentRec)) -> Option<ExperimentRec> {
        let mut st = self.lock();
        let e = st.experiments.get_mut(name)?;
        f(e);
        e.modified = now();
        let e = e.clone();
        drop(st);
        self.save_exp(&e);
        Some(e)
    }

    /// Moves `endpoint` to `dep` (all at once, reusing loaded models) and
    /// waits; the reason if it did not.
    async fn move_endpoint(self: &Arc<Self>, endpoint: &str, dep: Deployment) -> Result<(), String> {
        let generation = {
            let mut st = self.lock();
            let ep = st.endpoints.get_mut(endpoint).ok_or_else(|| format!("endpoint {endpoint} was deleted"))?;
            if ep.status != Status::InService || ep.rollout.is_some() {
                return Err(format!("endpoint {endpoint} is {}", ep.status.name()));
            }
            ep.status = Status::Updating;
            ep.failure = None;
            ep.pending = Some(dep.clone());
            ep.generation += 1;
            ep.modified = now();
            let rec = ep.clone();
            self.persist("endpoints", endpoint, Some(&endpoint_json(&rec))).map_err(|e| e.message)?;
            rec.generation
        };
        self.clone().deploy(endpoint.to_string(), generation).await;
        let st = self.lock();
        match st.endpoints.get(endpoint) {
            Some(ep)
                if ep.failure.is_none()
                    && ep.current.as_ref().is_some_and(|c| c.config.request == dep.config.request) =>
            {
                Ok(())
            }
            Some(ep) => {
                Err(ep.failure.clone().unwrap_or_else(|| format!("endpoint {endpoint} is {}", ep.status.name())))
            }
            None => Err(format!("endpoint {endpoint} was deleted")),
        }
    }

    /// The production and shadow variants' counts since the experiment started.
    fn exp_metrics(&self, e: &ExperimentRec) -> Option<Value> {
        let live = self.endpoints.get(&e.endpoint)?;
        let prod = live.variants.iter().find(|v| v.name == e.source)?;
        let shadow = live.shadows.iter().find(|s| s.name == e.shadow_variant)?;
        let (p, s) = (prod.counters.read(), shadow.counters.read());
        let c = &s.counts;
        let compared = c[idx::COMPARISONS];
        Some(json!({
            "Production": { "VariantName": e.source, "ModelName": prod.model_name, "Metrics": stats(&p) },
            "Shadow": {
                "VariantName": e.shadow_variant, "ModelName": e.shadow_model, "Metrics": stats(&s),
                "Compared": compared, "Agreed": compared - c[idx::DISAGREEMENTS], "Failed": c[idx::SHADOW_ERRORS],
                "Shed": c[idx::SHADOW_SHED],
                "AgreementRate": (compared > 0).then(|| (compared - c[idx::DISAGREEMENTS]) as f64 / compared as f64),
            },
        }))
    }

    /// An experiment from its schedule's start to its end (or a stop).
    pub(super) async fn drive_experiment(self: Arc<Self>, name: String) {
        // wait for the start (or a stop before it)
        loop {
            let Some(e) = self.lock().experiments.get(&name).cloned() else { return };
            if e.status.over() {
                return;
            }
            if e.status != ExpStatus::Created {
                break;
            }
            if let Some((_, state, reason)) = &e.stop {
                let _ = self.set_exp(&name, |x| {
                    x.status = if *state == ExpStatus::Completed { ExpStatus::Completed } else { ExpStatus::Cancelled };
                    x.reason = Some(format!("stopped before it started: {reason}"));
                    x.completed = Some(now());
                });
                return;
            }
            if now() >= e.start {
                self.set_exp(&name, |x| x.status = ExpStatus::Starting);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Some(e) = self.lock().experiments.get(&name).cloned() else { return };
        if e.status == ExpStatus::Starting {
            let dep = {
                let st = self.lock();
                // after a restart mid-start, what ran before is already recorded
                let cur = e.prior.clone().or_else(|| st.endpoints.get(&e.endpoint).and_then(|ep| ep.current.clone()));
                match cur {
                    Some(cur) => with_shadow(&st, &e, &cur).map(|d| (cur, d)).map_err(|err| err.message),
                    None => Err(format!("endpoint {} serves nothing", e.endpoint)),
                }
            };
            let started = match dep {
                Ok((prior, d)) => {
                    self.set_exp(&name, |x| x.prior = Some(prior));
                    self.move_endpoint(&e.endpoint, d).await
                }
                Err(why) => Err(why),
            };
            if let Err(why) = started {
                self.set_exp(&name, |x| {
                    x.status = ExpStatus::Cancelled;
                    x.reason = Some(format!("could not start: {why}"));
                    x.completed = Some(now());
                });
                self.journal("neorun", "InferenceExperimentCancelled", &name, json!({ "reason": why }));
                return;
            }
            self.set_exp(&name, |x| x.status = ExpStatus::Running);
            self.journal("neorun", "InferenceExperimentRunning", &name, json!({ "EndpointName": e.endpoint }));
        }
        // running: until the end of the schedule or a stop
        let (action, state, reason) = loop {
            let Some(e) = self.lock().experiments.get(&name).cloned() else { return };
            if let Some(s) = e.stop.clone() {
                break s;
            }
            if now() >= e.end {
                break (Action::Remove, ExpStatus::Completed, "the schedule ended".to_string());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let Some(e) = self.set_exp(&name, |x| x.status = ExpStatus::Stopping) else { return };
        let metrics = self.exp_metrics(&e);
        let current = self.lock().endpoints.get(&e.endpoint).and_then(|ep| ep.current.clone());
        let outcome = match (&action, &e.prior, &current) {
            (Action::Retain, _, _) => Ok(()),
            (Action::Remove, Some(prior), _) => self.move_endpoint(&e.endpoint, prior.clone()).await,
            (Action::Promote, Some(prior), Some(cur)) => match promoted(&e, prior, cur) {
                Ok(d) => self.move_endpoint(&e.endpoint, d).await,
                Err(why) => Err(why),
            },
            _ => Err("nothing recorded to return to".into()),
        };
        let verb = match action {
            Action::Promote => "the shadow variant was promoted to production",
            Action::Remove => "the shadow variant was removed",
            Action::Retain => "the shadow variant was kept",
        };
        self.set_exp(&name, |x| {
            x.status = state;
            x.completed = Some(now());
            x.final_metrics = metrics.clone();
            x.reason = Some(match &outcome {
                Ok(()) => format!("{reason}: {verb}"),
                Err(why) => format!("{reason}: the endpoint could not be changed back ({why})"),
            });
        });
        self.journal(
            "neorun",
            "InferenceExperimentEnded",
            &name,
            json!({ "status": state.name(), "action": format!("{action:?}"), "reason": reason, "error": outcome.err(), "metrics": metrics }),
        );
    }

    pub(super) fn describe_experiment(&self, v: &Value) -> Result<Value, AwsError> {
        let name = super::name_field(v, "Name")?;
        let st = self.lock();
        let e = st.experiments.get(&name).ok_or_else(|| AwsError::not_found("inference experiment", &name))?.clone();
        let ep = st.endpoints.get(&e.endpoint).cloned();
        drop(st);
        let running = e.status == ExpStatus::Running;
        let variants: Vec<Value> = e.request["ModelVariants"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut m| {
                m["Status"] = json!(match (e.status, m["VariantName"] == json!(e.shadow_variant)) {
                    (ExpStatus::Created | ExpStatus::Starting, true) => "Creating",
                    (ExpStatus::Completed | ExpStatus::Cancelled, true) => "Deleted",
                    (ExpStatus::Stopping, true) => "Deleting",
                    _ => "InService",
                });
                m
            })
            .collect();
        let mut out = json!({
            "Arn": e.arn, "Name": e.name, "Type": "ShadowMode",
            "Schedule": { "StartTime": e.start, "EndTime": e.end },
            "Status": e.status.name(),
            "CreationTime": e.created, "LastModifiedTime": e.modified,
            "EndpointMetadata": {
                "EndpointName": e.endpoint,
                "EndpointConfigName": ep.as_ref().and_then(|x| x.current.as_ref()).map(|d| d.config.def.name.clone()),
                "EndpointStatus": ep.as_ref().map(|x| x.status.name()),
            },
            "ModelVariants": variants,
            "ShadowModeConfig": e.request["ShadowModeConfig"],
            "Metrics": if running { self.exp_metrics(&e) } else { e.final_metrics.clone() },
        });
        for k in ["Description", "RoleArn", "DataStorageConfig", "KmsKey"] {
            if let Some(x) = e.request.get(k) {
                out[k] = x.clone();
            }
        }
        if let Some(r) = &e.reason {
            out["StatusReason"] = json!(r);
        }
        if let Some(c) = e.completed {
            out["CompletionTime"] = json!(c);
        }
        if let Some(f) = ep.and_then(|x| x.failure) {
            out["EndpointMetadata"]["FailureReason"] = json!(f);
        }
        Ok(out)
    }

    pub(super) fn stop_experiment(&self, v: &Value, who: Caller<'_>) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let name = f.req_str("Name")?.to_string();
        if f.obj("ModelVariantActions")?.is_none() {
            return Err(invalid("ModelVariantActions", "required field is missing"));
        }
        let state = match f.str("DesiredState")?.unwrap_or("Completed") {
            "Completed" => ExpStatus::Completed,
            "Cancelled" => ExpStatus::Cancelled,
            other => return Err(invalid("DesiredState", &format!("{other:?}: use Completed or Cancelled"))),
        };
        let reason = f.str("Reason")?.unwrap_or("stopped").to_string();
        f.ignore(&["DesiredModelVariants"]);
        f.finish(&mut Vec::new())?;
        let mut st = self.lock();
        let e = st.experiments.get_mut(&name).ok_or_else(|| AwsError::not_found("inference experiment", &name))?;
        if e.status.over() {
            return Err(AwsError::validation(format!("inference experiment {name} is already {}", e.status.name())));
        }
        let map = v["ModelVariantActions"].as_object().expect("read above");
        let mut action = None;
        for (variant, a) in map {
            let at = format!("ModelVariantActions.{variant}");
            let a = match a.as_str() {
                Some("Promote") => Action::Promote,
                Some("Remove") => Action::Remove,
                Some("Retain") => Action::Retain,
                _ => return Err(invalid(&at, "use Promote, Remove or Retain")),
            };
            if *variant == e.shadow_variant {
                action = Some(a);
            } else if *variant == e.source {
                if a != Action::Retain {
                    return Err(invalid(
                        &at,
                        "the production variant can only be retained (promote the shadow to replace it)",
                    ));
                }
            } else {
                return Err(invalid(
                    &at,
                    &format!("experiment {name} has variants {} and {}", e.source, e.shadow_variant),
                ));
            }
        }
        let action = action.ok_or_else(|| {
            invalid("ModelVariantActions", &format!("say what becomes of the shadow variant {}", e.shadow_variant))
        })?;
        e.stop = Some((action.clone(), state, format!("{reason} (by {who})")));
        let e = e.clone();
        drop(st);
        self.save_exp(&e);
        self.journal(
            who,
            "StopInferenceExperiment",
            &name,
            json!({ "action": format!("{action:?}"), "DesiredState": state.name(), "Reason": reason }),
        );
        Ok(json!({ "InferenceExperimentArn": e.arn }))
    }

    pub(super) fn list_experiments(&self, v: &Value) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let contains = f.str("NameContains")?.map(str::to_string);
        let status = f.str("StatusEquals")?.map(str::to_string);
        f.ignore(&[
            "Type",
            "CreationTimeAfter",
            "CreationTimeBefore",
            "LastModifiedTimeAfter",
            "LastModifiedTimeBefore",
            "SortBy",
            "SortOrder",
            "NextToken",
            "MaxResults",
        ]);
        f.finish(&mut Vec::new())?;
        let st = self.lock();
        let mut rows: Vec<&ExperimentRec> = st
            .experiments
            .values()
            .filter(|e| contains.as_ref().is_none_or(|c| e.name.contains(c.as_str())))
            .filter(|e| status.as_ref().is_none_or(|s| s == e.status.name()))
            .collect();
        rows.sort_by(|a, b| b.created.total_cmp(&a.created));
        let items: Vec<Value> = rows
            .iter()
            .map(|e| json!({ "Name": e.name, "Type": "ShadowMode", "Status": e.status.name(), "StatusReason": e.reason,
                "Schedule": { "StartTime": e.start, "EndTime": e.end }, "CreationTime": e.created, "LastModifiedTime": e.modified }))
            .collect();
        Ok(json!({ "InferenceExperiments": items }))
    }

    /// An experiment blocks updates of its endpoint while it runs.
    pub(super) fn experiment_on(st: &State, endpoint: &str) -> Option<String> {
        st.experiments.values().find(|e| e.endpoint == endpoint && !e.status.over()).map(|e| e.name.clone())
    }
}
