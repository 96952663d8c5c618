//! Guarded rollouts: SageMaker's `DeploymentConfig` on one machine.
//!
//! (Over 600 lines: the `DeploymentConfig` reader, the plan of steps and
//! the driver share `Policy` and `Progress`, and the driver's invariants —
//! recorded before published, blue kept until the end — read best in one
//! place; about 90 lines at the bottom are tests.)
//!
//! `UpdateEndpoint` with a `BlueGreenUpdatePolicy` loads the new ("green")
//! configuration beside the one serving ("blue"), health-checks every green
//! model, then moves the share of requests green gets in the policy's steps
//! (all at once, canary then the rest, or linear), baking after each step.
//! Any alarm of `AutoRollbackConfiguration` in ALARM during a bake, the
//! execution timeout, or a manual rollback moves every request back to blue
//! at once: blue stays loaded until the final bake and the termination wait
//! are over. Each step is recorded (state directory and journal) before it
//! takes effect; a restart in the middle comes back on blue and says so, a
//! restart after the final bake comes back on green.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::shapes::{invalid, Fields};
use super::{endpoint_json, now, AwsError, ControlPlane, Deployment, Status};
use crate::endpoints::{Green, LiveEndpoint};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Routing {
    AllAtOnce,
    /// The canary's share of requests (0..=0.5).
    Canary(f64),
    /// Each step's share (0.1..=0.5).
    Linear(f64),
}

/// A `DeploymentConfig` as neorun runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub routing: Routing,
    pub wait: u64,
    pub termination_wait: u64,
    pub max_execution: u64,
    pub alarms: Vec<String>,
}

/// One step: green's share of requests, then a bake of `bake` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub share: f64,
    pub bake: u64,
}

impl Policy {
    pub fn steps(&self) -> Vec<Step> {
        let bake = self.wait;
        match self.routing {
            Routing::AllAtOnce => vec![Step { share: 1.0, bake }],
            Routing::Canary(c) => vec![Step { share: c, bake }, Step { share: 1.0, bake }],
            Routing::Linear(s) => {
                let n = (1.0 / s - 1e-9).ceil() as usize;
                // in whole percents, as given
                (1..=n).map(|k| Step { share: ((k as f64 * s * 100.0).round() / 100.0).min(1.0), bake }).collect()
            }
        }
    }
}

const MAX_EXECUTION_DEFAULT: u64 = 28_800;

fn capacity(f: Option<Fields<'_>>, what: &str, range: (i64, i64)) -> Result<f64, AwsError> {
    let mut f = f.ok_or_else(|| invalid(what, "required for this Type"))?;
    let at = f.path().to_string();
    let kind = f.req_str("Type")?;
    let value = f.int("Value")?.ok_or_else(|| invalid(&format!("{at}.Value"), "required field is missing"))?;
    f.finish(&mut Vec::new())?;
    match kind {
        "CAPACITY_PERCENT" => {}
        "INSTANCE_COUNT" => {
            return Err(invalid(
                &format!("{at}.Type"),
                "INSTANCE_COUNT: neorun runs each fleet on this one machine (one instance), so a step of instances has no meaning here; use CAPACITY_PERCENT (the share of requests)",
            ))
        }
        other => return Err(invalid(&format!("{at}.Type"), &format!("{other:?}: use CAPACITY_PERCENT"))),
    }
    if value < range.0 || value > range.1 {
        return Err(invalid(&format!("{at}.Value"), &format!("{value}%: must be {} to {}%", range.0, range.1)));
    }
    Ok(value as f64 / 100.0)
}

fn seconds(f: &mut Fields<'_>, key: &'static str, range: (i64, i64)) -> Result<Option<u64>, AwsError> {
    let at = if f.path().is_empty() { key.to_string() } else { format!("{}.{key}", f.path()) };
    match f.int(key)? {
        None => Ok(None),
        Some(v) if v >= range.0 && v <= range.1 => Ok(Some(v as u64)),
        Some(v) => Err(invalid(&at, &format!("{v}: must be {} to {}", range.0, range.1))),
    }
}

/// Reads `DeploymentConfig` (at `at`), with SageMaker's ranges.
pub fn parse(at: &str, v: &Value) -> Result<Policy, AwsError> {
    let mut f = Fields::new(at, v)?;
    f.refuse(&[(
        "RollingUpdatePolicy",
        "a rolling update replaces a fleet's instances in batches, and neorun's fleet is this one machine: use BlueGreenUpdatePolicy (both versions are loaded side by side and requests move between them)",
    )])?;
    let mut bg = f
        .obj("BlueGreenUpdatePolicy")?
        .ok_or_else(|| invalid(at, "give BlueGreenUpdatePolicy (TrafficRoutingConfiguration, …)"))?;
    let mut t = bg
        .obj("TrafficRoutingConfiguration")?
        .ok_or_else(|| invalid(&format!("{}.TrafficRoutingConfiguration", bg.path()), "required field is missing"))?;
    let kind = t.req_str("Type")?;
    let wait = seconds(&mut t, "WaitIntervalInSeconds", (0, 3600))?
        .ok_or_else(|| invalid(&format!("{}.WaitIntervalInSeconds", t.path()), "required field is missing"))?;
    let tp = t.path().to_string();
    let canary = t.obj("CanarySize")?;
    let linear = t.obj("LinearStepSize")?;
    let routing = match kind {
        "ALL_AT_ONCE" => Routing::AllAtOnce,
        "CANARY" => Routing::Canary(capacity(canary, &format!("{tp}.CanarySize"), (1, 50))?),
        "LINEAR" => Routing::Linear(capacity(linear, &format!("{tp}.LinearStepSize"), (10, 50))?),
        other => return Err(invalid(&format!("{tp}.Type"), &format!("{other:?}: use ALL_AT_ONCE, CANARY or LINEAR"))),
    };
    if kind != "CANARY" && v.pointer("/BlueGreenUpdatePolicy/TrafficRoutingConfiguration/CanarySize").is_some() {
        return Err(invalid(&format!("{tp}.CanarySize"), "only for Type CANARY"));
    }
    if kind != "LINEAR" && v.pointer("/BlueGreenUpdatePolicy/TrafficRoutingConfiguration/LinearStepSize").is_some() {
        return Err(invalid(&format!("{tp}.LinearStepSize"), "only for Type LINEAR"));
    }
    t.finish(&mut Vec::new())?;
    let termination_wait = seconds(&mut bg, "TerminationWaitInSeconds", (0, 3600))?.unwrap_or(0);
    let given = seconds(&mut bg, "MaximumExecutionTimeoutInSeconds", (600, 28_800))?;
    let bgp = bg.path().to_string();
    bg.finish(&mut Vec::new())?;
    let mut alarms = Vec::new();
    if let Some(mut a) = f.obj("AutoRollbackConfiguration")? {
        let ap = a.path().to_string();
        let list = a.list("Alarms")?.unwrap_or_default();
        if list.is_empty() || list.len() > 10 {
            return Err(invalid(&format!("{ap}.Alarms"), "give 1 to 10 alarms"));
        }
        for mut item in list {
            alarms.push(item.req_str("AlarmName")?.to_string());
            item.finish(&mut Vec::new())?;
        }
        a.finish(&mut Vec::new())?;
    }
    f.finish(&mut Vec::new())?;
    let mut policy =
        Policy { routing, wait, termination_wait, max_execution: given.unwrap_or(MAX_EXECUTION_DEFAULT), alarms };
    let waits: u64 = policy.steps().iter().map(|s| s.bake).sum::<u64>() + termination_wait;
    if waits >= policy.max_execution {
        let what = if given.is_some() { "" } else { " (the default)" };
        return Err(invalid(
            &format!("{bgp}.MaximumExecutionTimeoutInSeconds"),
            &format!(
                "{}{what} must be larger than the deployment's waits: {} steps × WaitIntervalInSeconds {wait} + TerminationWaitInSeconds {termination_wait} = {waits} s",
                policy.max_execution,
                policy.steps().len()
            ),
        ));
    }
    policy.alarms.dedup();
    Ok(policy)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Loading,
    ActivatingTraffic,
    Baking,
    /// After the final bake: green serves everything and is recorded as
    /// what the endpoint runs; blue is kept loaded until the wait is over.
    TerminationWait,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Loading => "Loading",
            Phase::ActivatingTraffic => "ActivatingTraffic",
            Phase::Baking => "Baking",
            Phase::TerminationWait => "TerminationWait",
        }
    }

    fn parse(s: &str) -> Phase {
        match s {
            "ActivatingTraffic" => Phase::ActivatingTraffic,
            "Baking" => Phase::Baking,
            "TerminationWait" => Phase::TerminationWait,
            _ => Phase::Loading,
        }
    }
}

/// Where a guarded update is (kept with the endpoint, on disk too).
#[derive(Clone, Debug)]
pub(super) struct Progress {
    pub policy: Policy,
    /// The `DeploymentConfig` as given.
    pub request: Value,
    pub started: f64,
    pub step: usize,
    pub steps: usize,
    pub share: f64,
    pub phase: Phase,
    pub phase_started: f64,
    /// Who asked for a rollback (manual), seen by the driver.
    pub rollback_requested: Option<String>,
    /// After the final bake: what served before (blue), for a rollback
    /// during the termination wait.
    pub blue: Option<Deployment>,
}

impl Progress {
    pub fn new(policy: Policy, request: Value) -> Progress {
        let t = now();
        Progress {
            steps: policy.steps().len(),
            policy,
            request,
            started: t,
            step: 0,
            share: 0.0,
            phase: Phase::Loading,
            phase_started: t,
            rollback_requested: None,
            blue: None,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "DeploymentConfig": self.request,
            "Started": self.started,
            "Step": self.step,
            "Steps": self.steps,
            "Share": self.share,
            "Phase": self.phase.name(),
            "PhaseStarted": self.phase_started,
            "Blue": self.blue.as_ref().map(super::deployment_json),
        })
    }

    pub fn from_json(v: &Value) -> Result<Progress, String> {
        let request = v.get("DeploymentConfig").cloned().ok_or("no DeploymentConfig")?;
        let policy = parse("DeploymentConfig", &request).map_err(|e| e.message)?;
        let blue = match v.get("Blue") {
            None | Some(Value::Null) => None,
            Some(b) => Some(super::deployment_from_json(b)?),
        };
        Ok(Progress {
            steps: policy.steps().len(),
            policy,
            request,
            started: v["Started"].as_f64().unwrap_or(0.0),
            step: v["Step"].as_u64().unwrap_or(0) as usize,
            share: v["Share"].as_f64().unwrap_or(0.0),
            phase: Phase::parse(v["Phase"].as_str().unwrap_or("")),
            phase_started: v["PhaseStarted"].as_f64().unwrap_or(0.0),
            rollback_requested: None,
            blue,
        })
    }

    /// What DescribeEndpoint says of green's variants now.
    pub fn variant_status(&self) -> Value {
        let message = match self.phase {
            Phase::Loading => "loading and health-checking the new fleet".to_string(),
            Phase::ActivatingTraffic | Phase::Baking => format!(
                "step {} of {}: {:.0}% of requests on the new fleet",
                self.step + 1,
                self.steps,
                self.share * 100.0
            ),
            Phase::TerminationWait => {
                "all requests on the new fleet; the old one is kept until the termination wait ends".into()
            }
        };
        let status = match self.phase {
            Phase::Loading => "Creating",
            Phase::ActivatingTraffic => "ActivatingTraffic",
            Phase::Baking | Phase::TerminationWait => "Baking",
        };
        json!([{ "Status": status, "StatusMessage": message, "StartTime": self.phase_started }])
    }
}

/// What a check during the update found.
enum Check {
    Go,
    /// The endpoint was deleted or changed by someone else: stop quietly.
    Gone,
    /// Roll back, for this reason (and, for an alarm, when it fired).
    Back(String, Option<f64>),
}

impl ControlPlane {
    fn check(&self, name: &str, generation: u64, deadline: Instant, policy: &Policy, baking: bool) -> Check {
        {
            let st = self.lock();
            match st.endpoints.get(name) {
                Some(ep) if ep.generation == generation => {
                    if let Some(who) = ep.rollout.as_ref().and_then(|p| p.rollback_requested.clone()) {
                        return Check::Back(format!("rolled back by {who}"), None);
                    }
                }
                _ => return Check::Gone,
            }
        }
        if Instant::now() > deadline {
            return Check::Back(
                format!(
                    "MaximumExecutionTimeoutInSeconds ({} s) passed before the update completed",
                    policy.max_execution
                ),
                None,
            );
        }
        if baking {
            let alarms = self.alarms_lock();
            let firing: Vec<_> = policy
                .alarms
                .iter()
                .filter_map(|n| alarms.alarms.get(n))
                .filter(|a| a.state.value == crate::alarms::StateValue::Alarm)
                .collect();
            if !firing.is_empty() {
                let names: Vec<String> =
                    firing.iter().map(|a| format!("{} ({})", a.def.name, a.state.reason)).collect();
                let fired = firing.iter().map(|a| a.state.updated).fold(f64::INFINITY, f64::min);
                return Check::Back(
                    format!("alarm in ALARM during the baking period: {}", names.join("; ")),
                    Some(fired),
                );
            }
        }
        Check::Go
    }

    /// Updates the progress record (persisted, journalled) if the update
    /// is still this one's, then publishes `live` under the same lock, so
    /// what serves and what is recorded change together. `Err(None)`: the
    /// update is no longer this one's; `Err(Some(why))`: the step could not
    /// be recorded, and nothing moved.
    fn advance(
        &self,
        name: &str,
        generation: u64,
        live: Option<LiveEndpoint>,
        f: impl FnOnce(&mut Progress),
    ) -> Result<(), Option<String>> {
        let mut st = self.lock();
        let Some(ep) = st.endpoints.get_mut(name).filter(|e| e.generation == generation) else { return Err(None) };
        let Some(p) = ep.rollout.as_mut() else { return Err(None) };
        let before = p.clone();
        f(p);
        p.phase_started = now();
        let detail = json!({ "Phase": p.phase.name(), "Step": p.step + 1, "Steps": p.steps, "Share": p.share });
        ep.modified = now();
        let rec = ep.clone();
        if let Err(e) = self.persist("endpoints", name, Some(&endpoint_json(&rec))) {
            if let Some(p) = st.endpoints.get_mut(name).and_then(|e| e.rollout.as_mut()) {
                *p = before;
            }
            return Err(Some(format!("recording the update's next step failed: {}", e.message)));
        }
        if let Some(l) = live {
            self.endpoints.publish(l);
        }
        drop(st);
        self.journal("neorun", "DeploymentStep", name, detail);
        Ok(())
    }

    /// After `advance` refused: a step that could not be recorded rolls back.
    fn not_advanced(&self, name: &str, generation: u64, why: Option<String>, blue: &Arc<LiveEndpoint>) {
        if let Some(why) = why {
            self.end_update(name, generation, Err(why), Some((blue.clone(), None)));
        }
    }

    /// Runs every green model's health check (counted for the
    /// SelfTestFailures metric); the first failure, if any.
    async fn self_test_fleet(&self, green: &Arc<LiveEndpoint>) -> Option<String> {
        let mut first = None;
        for v in &green.variants {
            // a serverless or multi-model variant checks each model as it loads it
            let Some(live) = &v.live else { continue };
            let (model, counters) = (live.model.clone(), v.counters.clone());
            let r = tokio::task::spawn_blocking(move || model.self_test()).await;
            let ok = matches!(r, Ok(Ok(_)));
            counters.self_test(ok);
            if !ok && first.is_none() {
                let why = match r {
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!(),
                };
                first = Some(format!("variant {} (model {}): health check failed: {why}", v.name, v.model_name));
            }
        }
        first
    }

    /// Drives one guarded update to its end (`update_endpoint` started it).
    pub(super) async fn roll_out(self: Arc<Self>, name: String, generation: u64) {
        let started = Instant::now();
        let (dep, policy) = {
            let st = self.lock();
            match st.endpoints.get(&name) {
                Some(ep) if ep.generation == generation => match (&ep.pending, &ep.rollout) {
                    (Some(d), Some(p)) => (d.clone(), p.policy.clone()),
                    _ => return,
                },
                _ => return,
            }
        };
        let deadline = started + Duration::from_secs(policy.max_execution);
        let Some(blue) = self.endpoints.get(&name) else {
            self.end_update(&name, generation, Err("the endpoint had nothing serving to update from".into()), None);
            return;
        };
        // green: loaded, verified and health-checked before any request moves
        let green = match self.build(&name, &dep, Some(&blue)).await {
            Ok(g) => Arc::new(g),
            Err(reason) => {
                self.end_update(&name, generation, Err(format!("the new configuration did not load: {reason}")), None);
                return;
            }
        };
        if let Some(why) = self.self_test_fleet(&green).await {
            self.end_update(
                &name,
                generation,
                Err(format!("the new configuration failed its health check: {why}")),
                None,
            );
            return;
        }
        let steps = policy.steps();
        for (k, step) in steps.iter().enumerate() {
            if self.stop_or_back(&name, generation, deadline, &policy, false, &blue).is_some() {
                return;
            }
            let live = with_green(&blue, &green, step.share);
            let moved = self.advance(&name, generation, Some(live), |p| {
                p.step = k;
                p.share = step.share;
                p.phase = Phase::ActivatingTraffic;
            });
            if let Err(why) = moved {
                return self.not_advanced(&name, generation, why, &blue);
            }
            if let Some(why) = self.self_test_fleet(&green).await {
                tracing::warn!(endpoint = %name, "during the update: {why}");
            }
            if let Err(why) = self.advance(&name, generation, None, |p| p.phase = Phase::Baking) {
                return self.not_advanced(&name, generation, why, &blue);
            }
            let bake_end = Instant::now() + Duration::from_secs(step.bake);
            loop {
                if self.stop_or_back(&name, generation, deadline, &policy, true, &blue).is_some() {
                    return;
                }
                let left = bake_end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(Duration::from_millis(50))).await;
            }
        }
        // the final bake passed: green is what the endpoint runs (recorded
        // first); blue stays loaded for the termination wait
        {
            let mut st = self.lock();
            let Some(ep) = st.endpoints.get_mut(&name).filter(|e| e.generation == generation) else { return };
            let blue_dep = ep.current.clone();
            ep.current = ep.pending.take();
            if let Some(p) = ep.rollout.as_mut() {
                p.phase = Phase::TerminationWait;
                p.phase_started = now();
                p.blue = blue_dep;
            }
            ep.modified = now();
            let rec = ep.clone();
            if let Err(e) = self.persist("endpoints", &name, Some(&endpoint_json(&rec))) {
                // not recorded, so not completed: back as it was, then to blue
                if let Some(ep) = st.endpoints.get_mut(&name) {
                    ep.pending = ep.current.take();
                    ep.current = ep.rollout.as_mut().and_then(|p| p.blue.take());
                    if let Some(p) = ep.rollout.as_mut() {
                        p.phase = Phase::Baking;
                    }
                }
                drop(st);
                let why = format!("recording the completed update failed: {}", e.message);
                return self.end_update(&name, generation, Err(why), Some((blue.clone(), None)));
            }
        }
        self.journal("neorun", "DeploymentStep", &name, json!({ "Phase": "TerminationWait", "Share": 1.0 }));
        let wait_end = Instant::now() + Duration::from_secs(policy.termination_wait);
        loop {
            // only a manual rollback now: the bakes are over
            let back = {
                let st = self.lock();
                match st.endpoints.get(&name) {
                    Some(ep) if ep.generation == generation => {
                        ep.rollout.as_ref().and_then(|p| p.rollback_requested.clone())
                    }
                    _ => return,
                }
            };
            if let Some(who) = back {
                self.back_to_blue_after_completion(&name, generation, &blue, &who);
                return;
            }
            let left = wait_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
        self.end_update(&name, generation, Ok(green), None);
    }

    /// A check, and the rollback it calls for (`Some(())` when the driver
    /// should stop).
    fn stop_or_back(
        &self,
        name: &str,
        generation: u64,
        deadline: Instant,
        policy: &Policy,
        baking: bool,
        blue: &Arc<LiveEndpoint>,
    ) -> Option<()> {
        match self.check(name, generation, deadline, policy, baking) {
            Check::Go => None,
            Check::Gone => Some(()),
            Check::Back(reason, fired) => {
                self.end_update(name, generation, Err(reason), Some((blue.clone(), fired)));
                Some(())
            }
        }
    }

    /// Ends an update: green serves (`Ok`), or blue does (`Err(why)`; with
    /// `rollback`, blue is republished at once — requests move back in one
    /// swap). The endpoint ends InService; UpdateRollbackFailed if the
    /// rollback could not be recorded.
    fn end_update(
        &self,
        name: &str,
        generation: u64,
        outcome: Result<Arc<LiveEndpoint>, String>,
        rollback: Option<(Arc<LiveEndpoint>, Option<f64>)>,
    ) {
        let mut st = self.lock();
        let Some(ep) = st.endpoints.get_mut(name).filter(|e| e.generation == generation) else { return };
        let progress = ep.rollout.take();
        let (op, detail) = match &outcome {
            Ok(green) => {
                self.endpoints.publish_arc(green.clone());
                if ep.pending.is_some() {
                    ep.current = ep.pending.take();
                }
                ep.failure = None;
                ep.last_deployment = progress.as_ref().map(|p| p.request.clone());
                ep.status = Status::InService;
                (
                    "DeploymentCompleted",
                    json!({ "EndpointConfigName": ep.current.as_ref().map(|d| d.config.def.name.clone()) }),
                )
            }
            Err(reason) => {
                let mut detail = json!({ "reason": reason });
                if let Some((blue, fired)) = &rollback {
                    self.endpoints.publish_arc(blue.clone());
                    let t = now();
                    detail["blue_at"] = json!(t);
                    if let Some(f) = fired {
                        detail["alarm_at"] = json!(f);
                        detail["seconds_from_alarm_to_blue"] = json!(t - f);
                    }
                }
                let green = ep.pending.take();
                let blue = ep.current.as_ref().map(|d| d.config.def.name.clone()).unwrap_or_default();
                detail["from"] = json!(green.map(|d| d.config.def.name));
                detail["back_on"] = json!(blue);
                let step = progress
                    .as_ref()
                    .filter(|p| p.phase != Phase::Loading)
                    .map(|p| {
                        format!(" at step {} of {} ({:.0}% on the new fleet)", p.step + 1, p.steps, p.share * 100.0)
                    })
                    .unwrap_or_default();
                let what = if rollback.is_some() { "rolled back" } else { "not started" };
                ep.failure = Some(format!("Update {what}{step}: {reason}; all traffic is on {blue}"));
                ep.status = Status::InService;
                (if rollback.is_some() { "DeploymentRolledBack" } else { "DeploymentFailed" }, detail)
            }
        };
        ep.modified = now();
        let rec = ep.clone();
        let saved = self.persist("endpoints", name, Some(&endpoint_json(&rec)));
        if let (Err(e), Err(_)) = (&saved, &outcome) {
            // traffic is on blue (in memory); the record still says the
            // update is under way, which a restart also reads as blue
            if let Some(ep) = st.endpoints.get_mut(name) {
                ep.status = Status::UpdateRollbackFailed;
                ep.failure = Some(format!(
                    "{}; but recording the rollback failed ({}): requests are on the old fleet now, and the state directory still shows the update, which a restart also resolves to the old fleet",
                    ep.failure.clone().unwrap_or_default(),
                    e.message
                ));
            }
        }
        drop(st);
        self.journal("neorun", op, name, detail);
    }

    /// A manual rollback during the termination wait: green was recorded
    /// as current; blue (still loaded) is put back.
    fn back_to_blue_after_completion(&self, name: &str, generation: u64, blue: &Arc<LiveEndpoint>, who: &str) {
        let mut st = self.lock();
        let Some(ep) = st.endpoints.get_mut(name).filter(|e| e.generation == generation) else { return };
        let Some(p) = ep.rollout.take() else { return };
        self.endpoints.publish_arc(blue.clone());
        let green = ep.current.take();
        ep.current = p.blue.clone();
        let back_on = ep.current.as_ref().map(|d| d.config.def.name.clone()).unwrap_or_default();
        ep.failure =
            Some(format!("Update rolled back by {who} during the termination wait; all traffic is on {back_on}"));
        ep.status = Status::InService;
        ep.modified = now();
        let rec = ep.clone();
        if let Err(e) = self.persist("endpoints", name, Some(&endpoint_json(&rec))) {
            tracing::error!(endpoint = %name, "recording the rollback: {}", e.message);
        }
        drop(st);
        let detail = json!({ "reason": format!("rolled back by {who}"), "from": green.map(|d| d.config.def.name), "back_on": back_on, "blue_at": now() });
        self.journal("neorun", "DeploymentRolledBack", name, detail);
    }
}

/// Blue (as it serves) with green beside it at `share` of the requests.
fn with_green(blue: &Arc<LiveEndpoint>, green: &Arc<LiveEndpoint>, share: f64) -> LiveEndpoint {
    let mut l = super::reweighted(blue, &Default::default());
    l.green = Some(Green { fleet: green.clone(), share });
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> Result<Policy, AwsError> {
        parse("DeploymentConfig", &v)
    }

    fn bg(routing: Value) -> Value {
        json!({ "BlueGreenUpdatePolicy": { "TrafficRoutingConfiguration": routing, "MaximumExecutionTimeoutInSeconds": 600 } })
    }

    #[test]
    fn steps_follow_the_routing_type() {
        let p = cfg(bg(json!({"Type": "LINEAR", "WaitIntervalInSeconds": 3, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 20}}))).unwrap();
        let shares: Vec<f64> = p.steps().iter().map(|s| s.share).collect();
        assert_eq!(shares.len(), 5);
        for (a, b) in shares.iter().zip([0.2, 0.4, 0.6, 0.8, 1.0]) {
            assert!((a - b).abs() < 1e-9, "{shares:?}");
        }
        let p = cfg(bg(json!({"Type": "LINEAR", "WaitIntervalInSeconds": 1, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 30}}))).unwrap();
        assert_eq!(p.steps().iter().map(|s| s.share).collect::<Vec<_>>().last(), Some(&1.0));
        assert_eq!(p.steps().len(), 4);
        let p = cfg(bg(json!({"Type": "CANARY", "WaitIntervalInSeconds": 5, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}}))).unwrap();
        assert_eq!(p.steps(), vec![Step { share: 0.1, bake: 5 }, Step { share: 1.0, bake: 5 }]);
        let p = cfg(bg(json!({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}))).unwrap();
        assert_eq!(p.steps(), vec![Step { share: 1.0, bake: 0 }]);
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let cases = [
            (json!({"RollingUpdatePolicy": {}}), "RollingUpdatePolicy"),
            (json!({}), "BlueGreenUpdatePolicy"),
            (
                bg(
                    json!({"Type": "LINEAR", "WaitIntervalInSeconds": 1, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 5}}),
                ),
                "LinearStepSize.Value: 5%: must be 10 to 50%",
            ),
            (
                bg(
                    json!({"Type": "LINEAR", "WaitIntervalInSeconds": 1, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 60}}),
                ),
                "must be 10 to 50%",
            ),
            (
                bg(
                    json!({"Type": "CANARY", "WaitIntervalInSeconds": 1, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 51}}),
                ),
                "CanarySize.Value",
            ),
            (
                bg(
                    json!({"Type": "CANARY", "WaitIntervalInSeconds": 1, "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}}),
                ),
                "INSTANCE_COUNT: neorun runs each fleet",
            ),
            (bg(json!({"Type": "CANARY", "WaitIntervalInSeconds": 1})), "CanarySize: required"),
            (
                bg(
                    json!({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}}),
                ),
                "only for Type CANARY",
            ),
            (bg(json!({"Type": "BIG_BANG", "WaitIntervalInSeconds": 1})), "BIG_BANG"),
            (
                bg(json!({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 4000})),
                "WaitIntervalInSeconds: 4000: must be 0 to 3600",
            ),
            (bg(json!({"Type": "ALL_AT_ONCE"})), "WaitIntervalInSeconds: required"),
            (bg(json!({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1, "Speed": 2})), "Speed"),
            (
                bg(
                    json!({"Type": "LINEAR", "WaitIntervalInSeconds": 300, "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 20}}),
                ),
                "must be larger than the deployment's waits: 5 steps × WaitIntervalInSeconds 300",
            ),
            (
                json!({"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1}, "MaximumExecutionTimeoutInSeconds": 60}}),
                "60: must be 600 to 28800",
            ),
            (
                json!({"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1}}, "AutoRollbackConfiguration": {"Alarms": []}}),
                "give 1 to 10 alarms",
            ),
        ];
        for (v, want) in cases {
            let e = cfg(v.clone()).unwrap_err();
            assert!(e.message.contains(want), "{v}: {}", e.message);
        }
    }
}
