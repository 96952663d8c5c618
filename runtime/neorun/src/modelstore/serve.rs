//! `neorun serve --store DIR`: each model of the store is an endpoint of
//! the control plane (named after the model) serving its active slot; a
//! new install is activated as a guarded update of that endpoint (the
//! rollouts' blue/green machinery: the activation `DeploymentConfig`, the
//! device's alarms — error rate and p99 latency of the new slot — and the
//! new slot's self-test before any request moves), and only a bake without
//! alarms commits it. A failed activation, a rollback or a commit made with
//! the CLI switches the endpoint the same way: a new `LiveEndpoint` is
//! published while requests in flight finish on the one they hold.
//!
//! At start, before serving: a trial left `baking` (the server died during
//! its bake: a crash, `kill -9`, a power cut) is rolled back, as RAUC
//! counts a boot that never marked itself good; an active slot that no
//! longer verifies is replaced by the previous one, loudly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use neoc_runtime::{Model, OpenOptions};
use serde_json::{json, Value};

use super::{iso_now, ModelStore, Phase, SlotRef};
use crate::control::ControlPlane;
use crate::models::ModelTable;

/// How activations are run.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub dir: PathBuf,
    /// The `DeploymentConfig` of every activation (its alarms are added to
    /// the device's own).
    pub activation: Value,
    /// The new slot's share of 5xx answers, per second, beyond which the bake fails.
    pub max_error_rate: f64,
    /// The new slot's p99 model latency, over 2-second periods, beyond which the bake fails.
    pub max_p99_ms: f64,
}

/// The default activation: 10% of requests for 30 s, then all for 30 s.
pub fn default_activation() -> Value {
    json!({"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                                        "WaitIntervalInSeconds": 30},
        "TerminationWaitInSeconds": 0,
        "MaximumExecutionTimeoutInSeconds": 900}})
}

pub struct Driver {
    store: ModelStore,
    cp: Arc<ControlPlane>,
    models: Arc<ModelTable>,
    settings: StoreSettings,
    open: OpenOptions,
    /// The slot each model's endpoint serves now.
    serving: Mutex<BTreeMap<String, String>>,
    /// Models with an activation under way (their slot).
    activating: Mutex<BTreeMap<String, String>>,
    _claim: std::fs::File,
}

const WHO: &str = "neorun model store";

/// The endpoint (and control-plane object) name for a store model: letters,
/// digits and hyphens, at most 63.
pub fn endpoint_name(model: &str) -> String {
    let mut s: String = model.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    s = s.trim_matches('-').to_string();
    if s.is_empty() {
        s = "model".into();
    }
    s.truncate(40);
    s.trim_end_matches('-').to_string()
}

fn object_name(model: &str, slot: &str) -> String {
    let mut s = format!("{}-{}", endpoint_name(model), endpoint_name(slot));
    s.truncate(63);
    s.trim_end_matches('-').to_string()
}

fn variant_name(slot: &str) -> String {
    object_name("slot", slot)
}

impl Driver {
    /// Claims the store, resolves what the last stop left (a bake cut
    /// short, corrupt slots), and creates an endpoint per model on its
    /// active slot. Returns once every endpoint serves.
    pub async fn start(
        settings: StoreSettings,
        cp: Arc<ControlPlane>,
        models: Arc<ModelTable>,
        open: OpenOptions,
    ) -> anyhow::Result<Arc<Driver>> {
        let store = ModelStore::open(&settings.dir)?;
        let claim = store.claim_serving()?;
        crate::control::rollout::parse("--activation", &settings.activation)
            .map_err(|e| anyhow!("--activation: {}", e.message))?;
        let d = Arc::new(Driver {
            store,
            cp,
            models,
            settings,
            open,
            serving: Mutex::default(),
            activating: Mutex::default(),
            _claim: claim,
        });
        let names = d.store.models()?;
        for m in &names {
            let d2 = d.clone();
            let m2 = m.clone();
            tokio::task::spawn_blocking(move || d2.recover(&m2)).await??;
        }
        for m in &names {
            if let Err(e) = d.serve_active(m).await {
                tracing::error!(model = %m, "cannot serve the store's active slot: {e:#}");
                eprintln!("error: model store: {m}: {e:#}");
            }
        }
        Ok(d)
    }

    fn serving_slot(&self, model: &str) -> Option<String> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner()).get(model).cloned()
    }

    fn set_serving(&self, model: &str, slot: &str) {
        self.serving.lock().unwrap_or_else(|e| e.into_inner()).insert(model.into(), slot.into());
    }

    /// The last stop's leftovers, resolved under the lock.
    fn recover(&self, model: &str) -> anyhow::Result<()> {
        let lock = self.store.lock_blocking("neorun serve (start-up)")?;
        let mut st = self.store.state(model)?;
        if let Some(t) = st.trial.clone() {
            if t.phase == Phase::Baking {
                st.trial = None;
                let why = format!(
                    "the server stopped while {} baked (since {}): a crash, kill or power cut; a bake that did not finish counts as failed",
                    t.slot.version, t.since
                );
                tracing::warn!(model, "{why}; rolled back");
                self.store.record(
                    &lock,
                    &mut st,
                    "RolledBack",
                    json!({"slot": t.slot.slot, "version": t.slot.version, "why": why}),
                )?;
            } else if let Err(e) = Model::verify(&self.store.slot_bundle(model, &t.slot.slot), &self.open) {
                st.trial = None;
                let why = format!("the pending slot {} no longer verifies: {e}", t.slot.slot);
                tracing::error!(model, "{why}");
                eprintln!("error: model store: {model}: {why}; dropped");
                self.store.record(&lock, &mut st, "SlotCorrupt", json!({"slot": t.slot.slot, "why": why}))?;
            }
        }
        if let Some(a) = st.active.clone() {
            if let Err(e) = Model::verify(&self.store.slot_bundle(model, &a.slot), &self.open) {
                let prev_ok = st
                    .previous
                    .as_ref()
                    .is_some_and(|p| Model::verify(&self.store.slot_bundle(model, &p.slot), &self.open).is_ok());
                let why = format!("the active slot {} ({}) does not verify: {e}", a.slot, a.version);
                if prev_ok {
                    let p = st.previous.take().expect("checked");
                    let now = format!("serving the previous slot {} ({}) instead", p.slot, p.version);
                    tracing::error!(model, "{why}; {now}");
                    eprintln!("ERROR: model store: {model}: {why}; {now}");
                    st.active = Some(p.clone());
                    self.store.record(
                        &lock,
                        &mut st,
                        "SlotCorrupt",
                        json!({"slot": a.slot, "version": a.version, "why": why, "now_active": p.slot}),
                    )?;
                } else {
                    tracing::error!(model, "{why}; no other slot verifies either");
                    self.store.record(
                        &lock,
                        &mut st,
                        "SlotCorrupt",
                        json!({"slot": a.slot, "version": a.version, "why": why, "now_active": null}),
                    )?;
                    return Err(anyhow!("{model}: {why}, and there is no previous slot that verifies: reinstall it"));
                }
            }
        }
        Ok(())
    }

    async fn call(&self, op: &str, body: Value) -> anyhow::Result<Value> {
        let bytes = serde_json::to_vec(&body)?;
        self.cp.call(op, &bytes, WHO).await.map_err(|e| anyhow!("{op}: {}", e.message))
    }

    /// Creates (or replaces) the control plane's model and configuration
    /// for a slot; returns the configuration's name.
    async fn define(&self, model: &str, slot: &SlotRef) -> anyhow::Result<String> {
        let obj = object_name(model, &slot.slot);
        self.cp.keep_in_memory(&obj);
        let bundle = self.store.slot_bundle(model, &slot.slot);
        let _ = self.call("DeleteModel", json!({"ModelName": obj})).await;
        self.call(
            "CreateModel",
            json!({"ModelName": obj, "PrimaryContainer": {"ModelDataUrl": bundle.to_string_lossy()}}),
        )
        .await?;
        let _ = self.call("DeleteEndpointConfig", json!({"EndpointConfigName": obj})).await;
        self.call(
            "CreateEndpointConfig",
            json!({"EndpointConfigName": obj, "ProductionVariants": [
                {"VariantName": variant_name(&slot.slot), "ModelName": obj, "InitialVariantWeight": 1.0}]}),
        )
        .await?;
        Ok(obj)
    }

    /// Waits until the endpoint is no longer creating or updating; its description.
    async fn settle(&self, ep: &str) -> anyhow::Result<Value> {
        loop {
            let d = self.call("DescribeEndpoint", json!({"EndpointName": ep})).await?;
            match d["EndpointStatus"].as_str() {
                Some("Creating" | "Updating" | "RollingBack") => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => return Ok(d),
            }
        }
    }

    /// The endpoint's production model, also published in the model table
    /// under the model's name (`/invocations`, OIP metadata and readiness).
    fn publish(&self, model: &str, ep: &str) {
        if let Some(live) = self.cp.endpoints.get(ep) {
            if let Some(l) = live.variants.first().and_then(|v| v.live.clone()) {
                self.models.publish_as(model, l);
            }
        }
    }

    /// Puts the endpoint on the model's active slot: created if missing,
    /// else updated all at once (a hot swap).
    async fn serve_active(&self, model: &str) -> anyhow::Result<()> {
        let st = self.store.state(model)?;
        let Some(active) = st.active else { return Ok(()) };
        if self.serving_slot(model).as_deref() == Some(active.slot.as_str()) {
            return Ok(());
        }
        let ep = endpoint_name(model);
        self.cp.keep_in_memory(&ep);
        let config = self.define(model, &active).await?;
        let exists = self.call("DescribeEndpoint", json!({"EndpointName": ep})).await.is_ok();
        let t = Instant::now();
        if exists {
            self.call("UpdateEndpoint", json!({"EndpointName": ep, "EndpointConfigName": config})).await?;
        } else {
            self.call("CreateEndpoint", json!({"EndpointName": ep, "EndpointConfigName": config})).await?;
        }
        let d = self.settle(&ep).await?;
        if d["EndpointStatus"] != "InService" || d["EndpointConfigName"] != config.as_str() {
            return Err(anyhow!(
                "endpoint {ep} could not serve slot {}: {}",
                active.slot,
                d["FailureReason"].as_str().unwrap_or("(no reason given)")
            ));
        }
        self.publish(model, &ep);
        self.set_serving(model, &active.slot);
        tracing::info!(model, slot = %active.slot, version = %active.version, seconds = t.elapsed().as_secs_f64(), "serving the store's active slot");
        Ok(())
    }

    /// Watches the store (every 250 ms): new installs are activated, rollbacks
    /// and commits made with the CLI are served.
    pub fn watch(self: &Arc<Self>) {
        let d = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if let Err(e) = d.tick().await {
                    tracing::error!("model store: {e:#}");
                }
            }
        });
    }

    async fn tick(self: &Arc<Self>) -> anyhow::Result<()> {
        for model in self.store.models()? {
            let st = match self.store.state(&model) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(model = %model, "{e:#}");
                    continue;
                }
            };
            let under_way = self.activating.lock().unwrap_or_else(|e| e.into_inner()).get(&model).cloned();
            if let Some(slot) = under_way {
                // rolled back (or replaced) with the CLI while it bakes: back to blue now
                if st.trial.as_ref().map(|t| t.slot.slot.as_str()) != Some(slot.as_str()) {
                    let ep = endpoint_name(&model);
                    let _ = self
                        .cp
                        .call_neorun("RollbackEndpointUpdate", &serde_json::to_vec(&json!({"EndpointName": ep}))?, WHO)
                        .await;
                }
                continue;
            }
            match &st.trial {
                Some(t) if t.phase == Phase::Pending && self.serving_slot(&model).is_some() => {
                    self.activating
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(model.clone(), t.slot.slot.clone());
                    let d = self.clone();
                    let slot = t.slot.clone();
                    tokio::spawn(async move {
                        let m = model.clone();
                        if let Err(e) = d.activate(&model, slot).await {
                            tracing::error!(model = %model, "activation: {e:#}");
                        }
                        d.activating.lock().unwrap_or_else(|e| e.into_inner()).remove(&m);
                    });
                }
                _ => {
                    if let Err(e) = self.serve_active(&model).await {
                        tracing::error!(model = %model, "{e:#}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves the endpoint onto `slot` under the activation policy and
    /// records the outcome: committed, or rolled back with why.
    async fn activate(&self, model: &str, slot: SlotRef) -> anyhow::Result<()> {
        let started = Instant::now();
        // pending → baking, under the lock (a CLI rollback may have come first)
        let store = &self.store;
        let go = {
            let lock = store.lock_blocking("neorun serve (activation)")?;
            let mut st = store.state(model)?;
            match &mut st.trial {
                Some(t) if t.slot.slot == slot.slot && t.phase == Phase::Pending => {
                    t.phase = Phase::Baking;
                    t.since = iso_now();
                    let policy = self.settings.activation.clone();
                    let from = st.active.as_ref().map(|a| a.version.clone());
                    store.record(
                        &lock,
                        &mut st,
                        "Baking",
                        json!({"slot": slot.slot, "version": slot.version, "from": from, "DeploymentConfig": policy}),
                    )?;
                    true
                }
                _ => false,
            }
        };
        if !go {
            return Ok(());
        }
        let ep = endpoint_name(model);
        let outcome = self.bake(model, &ep, &slot).await;
        let baked = started.elapsed().as_secs_f64();
        let lock = store.lock_blocking("neorun serve (activation)")?;
        let mut st = store.state(model)?;
        let ours = st.trial.as_ref().is_some_and(|t| t.slot.slot == slot.slot);
        match outcome {
            Ok(()) if ours => {
                st.trial = None;
                st.previous = st.active.take();
                st.active = Some(slot.clone());
                store.record(
                    &lock,
                    &mut st,
                    "Committed",
                    json!({"slot": slot.slot, "version": slot.version, "seconds": baked, "why": "baked without alarms"}),
                )?;
                self.set_serving(model, &slot.slot);
                self.publish(model, &ep);
                tracing::info!(model, version = %slot.version, seconds = baked, "committed");
            }
            Ok(()) => {
                // rolled back with the CLI as it completed: the next tick serves the active slot again
                tracing::warn!(model, version = %slot.version, "the bake ended after the trial was rolled back; serving the active slot again");
                self.set_serving(model, &slot.slot);
            }
            Err(why) => {
                if ours {
                    st.trial = None;
                    store.record(
                        &lock,
                        &mut st,
                        "RolledBack",
                        json!({"slot": slot.slot, "version": slot.version, "seconds": baked, "why": why}),
                    )?;
                }
                tracing::warn!(model, version = %slot.version, "activation rolled back: {why}");
            }
        }
        Ok(())
    }

    /// The guarded update itself: `Ok` when the endpoint ended on the new
    /// slot with no alarm, else why not.
    async fn bake(&self, model: &str, ep: &str, slot: &SlotRef) -> Result<(), String> {
        let config = self.define(model, slot).await.map_err(|e| format!("{e:#}"))?;
        let variant = variant_name(&slot.slot);
        let dims = json!([{"Name": "EndpointName", "Value": ep}, {"Name": "VariantName", "Value": variant}]);
        let errors = format!("{ep}-store-errors");
        let latency = format!("{ep}-store-latency");
        let alarms = [
            json!({"AlarmName": errors, "Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors",
                   "Dimensions": dims, "Statistic": "Average", "Period": 1, "EvaluationPeriods": 1,
                   "Threshold": self.settings.max_error_rate, "ComparisonOperator": "GreaterThanThreshold",
                   "TreatMissingData": "notBreaching"}),
            json!({"AlarmName": latency, "Namespace": "AWS/SageMaker", "MetricName": "ModelLatency",
                   "ExtendedStatistic": "p99", "Dimensions": dims, "Period": 2, "EvaluationPeriods": 2,
                   "DatapointsToAlarm": 2, "Threshold": self.settings.max_p99_ms * 1000.0,
                   "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching"}),
        ];
        for a in &alarms {
            let name = a["AlarmName"].as_str().unwrap_or_default();
            self.cp.keep_alarm_in_memory(name);
            let bytes = serde_json::to_vec(a).map_err(|e| e.to_string())?;
            self.cp.call_cloudwatch("PutMetricAlarm", &bytes, WHO).await.map_err(|e| e.message)?;
        }
        let mut dc = self.settings.activation.clone();
        let mut names: Vec<Value> = vec![json!({"AlarmName": errors}), json!({"AlarmName": latency})];
        if let Some(given) = dc.pointer("/AutoRollbackConfiguration/Alarms").and_then(Value::as_array) {
            names.extend(given.iter().cloned());
        }
        dc["AutoRollbackConfiguration"] = json!({"Alarms": names});
        self.call("UpdateEndpoint", json!({"EndpointName": ep, "EndpointConfigName": config, "DeploymentConfig": dc}))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let d = self.settle(ep).await.map_err(|e| format!("{e:#}"))?;
        match (d["EndpointStatus"].as_str(), d["FailureReason"].as_str()) {
            (Some("InService"), None) if d["EndpointConfigName"] == config.as_str() => Ok(()),
            (status, reason) => Err(reason.map(str::to_string).unwrap_or_else(|| {
                format!("the endpoint ended {} on {}", status.unwrap_or("?"), d["EndpointConfigName"])
            })),
        }
    }
}
