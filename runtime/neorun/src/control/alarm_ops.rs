//! The control plane's alarm and journal operations: CloudWatch's alarm
//! API in its JSON protocol (`X-Amz-Target:
//! GraniteServiceVersion20100801.<op>`: PutMetricAlarm, DescribeAlarms,
//! DeleteAlarms, SetAlarmState, DescribeAlarmHistory), neorun's own
//! operations (`X-Amz-Target: NeoRun.<op>`: RollbackEndpointUpdate,
//! ReadJournal, and PutMetricAlarm with `External`), Alertmanager's
//! webhook, and the loop that evaluates the alarms.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::rollout::Policy;
use super::shapes::{invalid, Fields};
use super::{body_json, iso, now, AwsError, Caller, ControlPlane};
use crate::alarms::{self, Alarm, AlarmDef, AlarmState, Source, StateValue, Transition};

pub const CLOUDWATCH_OPERATIONS: [&str; 5] =
    ["PutMetricAlarm", "DescribeAlarms", "DeleteAlarms", "SetAlarmState", "DescribeAlarmHistory"];
pub const NEORUN_OPERATIONS: [&str; 3] = ["RollbackEndpointUpdate", "ReadJournal", "PutMetricAlarm"];

/// Alarm names may hold any character: their files are named by hex.
fn alarm_file(name: &str) -> String {
    hex::encode(name.as_bytes())
}

fn unknown_op(service: &str, op: &str, known: &[&str]) -> AwsError {
    AwsError::new(
        StatusCode::BAD_REQUEST,
        "UnknownOperationException",
        format!("{service}.{op} is not an operation neorun serves; it serves {}", known.join(", ")),
    )
}

impl ControlPlane {
    pub(super) fn add_alarm(&self, def: AlarmDef) -> bool {
        let mut a = self.alarms_lock();
        let arn = format!("arn:aws:cloudwatch:{}:{}:alarm:{}", self.region, super::ACCOUNT, def.name);
        let existed = a.alarms.contains_key(&def.name);
        let (state, firing) = match a.alarms.remove(&def.name) {
            // a redefinition keeps an external alarm's state; a metric
            // alarm is evaluated afresh
            Some(old) if def.rule.is_none() => (old.state, old.firing),
            _ => (
                AlarmState {
                    value: StateValue::InsufficientData,
                    reason: "Unchecked: Initial alarm creation".into(),
                    reason_data: json!({}),
                    updated: now(),
                },
                Default::default(),
            ),
        };
        a.alarms.insert(def.name.clone(), Alarm { def, arn, state, firing, held_until: None });
        existed
    }

    pub(super) fn check_alarms_exist(&self, p: &Policy) -> Result<(), AwsError> {
        let a = self.alarms_lock();
        for (i, n) in p.alarms.iter().enumerate() {
            if !a.alarms.contains_key(n) {
                let known: Vec<&str> = a.alarms.keys().map(String::as_str).collect();
                return Err(invalid(
                    &format!("DeploymentConfig.AutoRollbackConfiguration.Alarms[{i}].AlarmName"),
                    &format!(
                        "no alarm named {n:?} (define it first with PutMetricAlarm or --alarms FILE; defined here: {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ),
                ));
            }
        }
        Ok(())
    }

    fn record_transitions(&self, trs: &[Transition]) {
        for tr in trs {
            tracing::info!(alarm = %tr.alarm, from = tr.from.name(), to = tr.to.name(), "{}", tr.reason);
            self.journal(
                "neorun",
                "AlarmStateChange",
                &tr.alarm,
                json!({ "from": tr.from.name(), "to": tr.to.name(), "reason": tr.reason, "at": tr.time }),
            );
        }
    }

    /// Evaluates the alarms four times a second, for as long as the server runs.
    /// Keeps the alarm `name` out of the state directory (see `keep_in_memory`).
    pub fn keep_alarm_in_memory(&self, name: &str) {
        self.keep_in_memory(&alarm_file(name));
    }

    pub fn start_alarms(self: &Arc<Self>) {
        let cp = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let sources: Vec<Source> = cp
                    .endpoints
                    .all()
                    .iter()
                    .flat_map(|e| {
                        e.sources().into_iter().map(|(variant, counters)| Source {
                            endpoint: e.name.clone(),
                            variant,
                            counters,
                        })
                    })
                    .collect();
                let trs = cp.alarms_lock().evaluate(&sources, Instant::now(), now());
                cp.record_transitions(&trs);
            }
        });
    }

    fn put_alarm(&self, v: &Value, who: Caller<'_>, external_allowed: bool) -> Result<Value, AwsError> {
        if !external_allowed && v.get("External").is_some() {
            return Err(invalid(
                "External",
                "not a CloudWatch field: define external alarms with X-Amz-Target NeoRun.PutMetricAlarm or --alarms FILE",
            ));
        }
        let mut ignored = Vec::new();
        let def = alarms::parse(v, &mut ignored)?;
        self.persist("alarms", &alarm_file(&def.name), Some(v))?;
        let name = def.name.clone();
        let replaced = self.add_alarm(def);
        self.journal(
            who,
            "PutMetricAlarm",
            &name,
            json!({ "replaced": replaced, "ignored": ignored, "definition": v }),
        );
        Ok(json!({}))
    }

    /// `--alarms FILE`: a JSON list of PutMetricAlarm bodies (with
    /// `"External": true` allowed). All are checked before any is kept.
    pub fn apply_alarms_file(&self, path: &std::path::Path) -> Result<usize, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        let list =
            v.as_array().ok_or_else(|| format!("{}: expected a JSON list of PutMetricAlarm bodies", path.display()))?;
        for (i, a) in list.iter().enumerate() {
            alarms::parse(a, &mut Vec::new()).map_err(|e| format!("{}: [{i}].{}", path.display(), e.message))?;
        }
        for a in list {
            self.put_alarm(a, "--alarms", true).map_err(|e| format!("{}: {}", path.display(), e.message))?;
        }
        Ok(list.len())
    }

    /// CloudWatch's alarm operations (JSON 1.0).
    pub async fn call_cloudwatch(self: &Arc<Self>, op: &str, body: &[u8], who: Caller<'_>) -> Result<Value, AwsError> {
        let v = body_json(body)?;
        match op {
            "PutMetricAlarm" => self.put_alarm(&v, who, false),
            "DescribeAlarms" => self.describe_alarms(&v),
            "DeleteAlarms" => {
                let mut f = Fields::new("", &v)?;
                let names =
                    f.str_list("AlarmNames")?.ok_or_else(|| invalid("AlarmNames", "required field is missing"))?;
                f.finish(&mut Vec::new())?;
                let used = self.alarms_in_use();
                if let Some((n, ep)) = names.iter().find_map(|n| used.iter().find(|(a, _)| a == n)) {
                    return Err(AwsError::validation(format!(
                        "alarm {n:?} guards the update of endpoint {ep} now; delete it when the update is over"
                    )));
                }
                for n in &names {
                    if self.alarms_lock().alarms.remove(n).is_some() {
                        self.persist("alarms", &alarm_file(n), None)?;
                        self.journal(who, "DeleteAlarms", n, json!({}));
                    }
                }
                Ok(json!({}))
            }
            "SetAlarmState" => {
                let (name, state, reason, data) = alarms::set_state_request(&v)?;
                let tr = {
                    let mut a = self.alarms_lock();
                    if !a.alarms.contains_key(&name) {
                        return Err(AwsError::new(
                            StatusCode::NOT_FOUND,
                            "ResourceNotFound",
                            format!("alarm {name:?} does not exist"),
                        ));
                    }
                    a.set_by_hand(&name, state, format!("{reason} (SetAlarmState by {who})"), data, now())
                };
                self.record_transitions(tr.as_slice());
                Ok(json!({}))
            }
            "DescribeAlarmHistory" => {
                let mut f = Fields::new("", &v)?;
                let name = f.str("AlarmName")?.map(str::to_string);
                let max = f.int("MaxRecords")?.unwrap_or(100).clamp(1, 100) as usize;
                f.ignore(&["HistoryItemType", "StartDate", "EndDate", "ScanBy", "AlarmTypes", "NextToken"]);
                f.finish(&mut Vec::new())?;
                let a = self.alarms_lock();
                let items: Vec<Value> = a
                    .history
                    .iter()
                    .rev()
                    .filter(|t| name.as_ref().is_none_or(|n| *n == t.alarm))
                    .take(max)
                    .map(Transition::history_item)
                    .collect();
                Ok(json!({ "AlarmHistoryItems": items }))
            }
            other => Err(unknown_op("GraniteServiceVersion20100801", other, &CLOUDWATCH_OPERATIONS)),
        }
    }

    fn describe_alarms(&self, v: &Value) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let names = f.str_list("AlarmNames")?;
        let prefix = f.str("AlarmNamePrefix")?.map(str::to_string);
        let state = f.str("StateValue")?.map(str::to_string);
        f.ignore(&[
            "AlarmTypes",
            "ActionPrefix",
            "MaxRecords",
            "NextToken",
            "ChildrenOfAlarmName",
            "ParentsOfAlarmName",
        ]);
        f.finish(&mut Vec::new())?;
        let a = self.alarms_lock();
        let alarms: Vec<Value> = a
            .alarms
            .values()
            .filter(|al| names.as_ref().is_none_or(|n| n.contains(&al.def.name)))
            .filter(|al| prefix.as_ref().is_none_or(|p| al.def.name.starts_with(p.as_str())))
            .filter(|al| state.as_ref().is_none_or(|s| s == al.state.value.name()))
            .map(alarms::describe)
            .collect();
        Ok(json!({ "MetricAlarms": alarms, "CompositeAlarms": [] }))
    }

    /// The alarms guarding updates under way, with their endpoints.
    fn alarms_in_use(&self) -> Vec<(String, String)> {
        let st = self.lock();
        st.endpoints
            .values()
            .filter_map(|e| e.rollout.as_ref().map(|p| (e.name.clone(), p.policy.alarms.clone())))
            .flat_map(|(e, names)| names.into_iter().map(move |n| (n, e.clone())))
            .collect()
    }

    /// neorun's own operations.
    pub async fn call_neorun(self: &Arc<Self>, op: &str, body: &[u8], who: Caller<'_>) -> Result<Value, AwsError> {
        let v = body_json(body)?;
        match op {
            "PutMetricAlarm" => self.put_alarm(&v, who, true),
            "RollbackEndpointUpdate" => {
                let name = super::name_field(&v, "EndpointName")?;
                let mut st = self.lock();
                let ep = st.endpoints.get_mut(&name).ok_or_else(|| AwsError::not_found("endpoint", &name))?;
                let Some(p) = ep.rollout.as_mut() else {
                    return Err(AwsError::validation(format!(
                        "endpoint {name} has no guarded update under way (it is {})",
                        ep.status.name()
                    )));
                };
                p.rollback_requested = Some(who.to_string());
                drop(st);
                self.journal(who, "RollbackEndpointUpdate", &name, json!({}));
                Ok(
                    json!({ "EndpointName": name, "Message": "rolling back: all traffic moves to the serving configuration" }),
                )
            }
            "ReadJournal" => self.read_journal(&v),
            other => Err(unknown_op("NeoRun", other, &NEORUN_OPERATIONS)),
        }
    }

    /// The journal's entries, oldest first: for one name (`Name`), from a
    /// time on (`Since`, ISO 8601 as the entries carry it), the last
    /// `MaxResults` (default 1000).
    fn read_journal(&self, v: &Value) -> Result<Value, AwsError> {
        let mut f = Fields::new("", v)?;
        let name = f.str("Name")?.map(str::to_string);
        let since = f.str("Since")?.map(str::to_string);
        let op = f.str("Operation")?.map(str::to_string);
        let max = f.int("MaxResults")?.unwrap_or(1000);
        f.finish(&mut Vec::new())?;
        if !(1..=100_000).contains(&max) {
            return Err(invalid("MaxResults", "give 1 to 100000"));
        }
        let Some(store) = &self.store else {
            return Err(AwsError::validation(
                "no journal: it is kept in the state directory (start neorun serve with --state-dir)",
            ));
        };
        let path = store.journal_path();
        let file = std::fs::File::open(&path)
            .map_err(|e| AwsError::internal(format!("reading the journal {}: {e}", path.display())))?;
        let mut out = std::collections::VecDeque::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| AwsError::internal(format!("reading the journal: {e}")))?;
            let Ok(e) = serde_json::from_str::<Value>(&line) else { continue };
            if !super::store::journal_matches(&e, name.as_deref(), op.as_deref(), since.as_deref()) {
                continue;
            }
            out.push_back(e);
            if out.len() > max as usize {
                out.pop_front();
            }
        }
        Ok(json!({ "Entries": Vec::from(out), "Now": iso(std::time::SystemTime::now()) }))
    }

    /// Alertmanager's webhook: each alert sets the state of the alarm it
    /// names. Unknown names are reported (and logged), not fatal, unless
    /// no alert named a known alarm.
    pub fn alertmanager(&self, body: &[u8], who: Caller<'_>) -> Result<Value, AwsError> {
        let signals = alarms::alertmanager::parse(body).map_err(AwsError::validation)?;
        let mut applied = Vec::new();
        let mut unknown = Vec::new();
        let mut trs = Vec::new();
        {
            let mut a = self.alarms_lock();
            for s in signals {
                let Some(alarm) = a.alarms.get_mut(&s.alarm) else {
                    unknown.push(s.alarm);
                    continue;
                };
                if s.firing {
                    alarm.firing.insert(s.fingerprint.clone());
                } else {
                    alarm.firing.remove(&s.fingerprint);
                }
                let to = if alarm.firing.is_empty() { StateValue::Ok } else { StateValue::Alarm };
                applied.push(json!({ "alarm": s.alarm, "state": to.name() }));
                if let Some(tr) =
                    a.set_state(&s.alarm, to, s.reason, json!({ "source": "alertmanager", "by": who }), now())
                {
                    trs.push(tr);
                }
            }
        }
        self.record_transitions(&trs);
        if !unknown.is_empty() {
            tracing::warn!(?unknown, "Alertmanager named alarms neorun does not have");
        }
        if applied.is_empty() && !unknown.is_empty() {
            return Err(AwsError::validation(format!(
                "no alarm named {}: define them (External alarms) before pointing Alertmanager here",
                unknown.join(", ")
            )));
        }
        Ok(json!({ "applied": applied, "unknown": unknown }))
    }
}
