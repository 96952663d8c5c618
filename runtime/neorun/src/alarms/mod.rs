//! Alarms over the endpoints' own metrics, defined with CloudWatch's
//! `PutMetricAlarm` shape (metric, `EndpointName`/`VariantName` dimensions,
//! statistic, period, `EvaluationPeriods`/`DatapointsToAlarm`, threshold,
//! comparison, `TreatMissingData`), with CloudWatch's three states and a
//! history of transitions. Guarded rollouts name them in
//! `AutoRollbackConfiguration`.
//!
//! (Over 600 lines: the definition, its statistics and its evaluation are
//! one vocabulary — CloudWatch's — read and judged in one place; about 160
//! lines at the bottom are tests.)
//!
//! Evaluation: once a second every variant's `Counters` is snapshotted; an
//! alarm's datapoint for a period is the difference of two snapshots summed
//! over the variants it watches (blue's and green's fleets alike, as
//! CloudWatch aggregates one variant name). Alarms are evaluated four times
//! a second over sliding periods ending now, so a breach is seen within a
//! quarter second of the period that shows it.
//!
//! External alarms (`"External": true`, neorun's extension) have no metric:
//! their state is set by `SetAlarmState` or by Prometheus Alertmanager's
//! webhook (`alertmanager.rs`).

pub mod alertmanager;
pub mod counters;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use counters::Counters;
use counters::{idx, Snap};

use crate::control::shapes::{invalid, Fields};
use crate::control::AwsError;

/// The longest window (`Period` × `EvaluationPeriods`) an alarm may look
/// at: snapshots are kept that long (about 2 KB a second per variant).
pub const MAX_WINDOW_SECONDS: u64 = 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Invocations,
    Errors4xx,
    Errors5xx,
    ModelErrors,
    ModelLatency,
    OverheadLatency,
    ShadowDisagreements,
    ShadowErrors,
    SelfTestFailures,
}

const METRICS: [(&str, Metric); 9] = [
    ("Invocations", Metric::Invocations),
    ("Invocation4XXErrors", Metric::Errors4xx),
    ("Invocation5XXErrors", Metric::Errors5xx),
    ("ModelErrors", Metric::ModelErrors),
    ("ModelLatency", Metric::ModelLatency),
    ("OverheadLatency", Metric::OverheadLatency),
    ("ShadowDisagreements", Metric::ShadowDisagreements),
    ("ShadowErrors", Metric::ShadowErrors),
    ("SelfTestFailures", Metric::SelfTestFailures),
];

impl Metric {
    fn latency(self) -> bool {
        matches!(self, Metric::ModelLatency | Metric::OverheadLatency)
    }

    /// (events, out of how many) for a count metric.
    fn counts(self, s: &Snap) -> (u64, u64) {
        let c = &s.counts;
        match self {
            Metric::Invocations => (c[idx::INVOCATIONS], c[idx::INVOCATIONS]),
            Metric::Errors4xx => (c[idx::E4XX], c[idx::INVOCATIONS]),
            Metric::Errors5xx => (c[idx::E5XX], c[idx::INVOCATIONS]),
            Metric::ModelErrors => (c[idx::MODEL_ERRORS], c[idx::INVOCATIONS]),
            Metric::ShadowDisagreements => (c[idx::DISAGREEMENTS], c[idx::COMPARISONS]),
            Metric::ShadowErrors => (c[idx::SHADOW_ERRORS], c[idx::SHADOW_RUNS]),
            Metric::SelfTestFailures => (c[idx::SELF_TEST_FAILURES], c[idx::SELF_TESTS]),
            Metric::ModelLatency | Metric::OverheadLatency => (0, 0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stat {
    Sum,
    Average,
    SampleCount,
    Minimum,
    Maximum,
    /// `pNN` (ExtendedStatistic), as a fraction.
    Percentile(f64),
}

impl Stat {
    fn parse(at: &str, s: &str) -> Result<Stat, AwsError> {
        Ok(match s {
            "Sum" => Stat::Sum,
            "Average" => Stat::Average,
            "SampleCount" => Stat::SampleCount,
            "Minimum" => Stat::Minimum,
            "Maximum" => Stat::Maximum,
            p if p.starts_with('p') => match p[1..].parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Stat::Percentile(v / 100.0),
                _ => return Err(invalid(at, &format!("{p:?} is not a percentile (p0.1 to p100)"))),
            },
            other => {
                return Err(invalid(
                    at,
                    &format!("{other:?} is not a statistic (Sum, Average, SampleCount, Minimum, Maximum, or pNN as ExtendedStatistic)"),
                ))
            }
        })
    }

    /// The datapoint for a metric over a difference of snapshots; `None`
    /// when there were no samples (a missing datapoint).
    fn value(self, m: Metric, s: &Snap) -> Option<f64> {
        if m.latency() {
            let h = if m == Metric::ModelLatency { &s.model } else { &s.overhead };
            let n = h.count();
            if n == 0 {
                return None;
            }
            return match self {
                Stat::SampleCount => Some(n as f64),
                Stat::Average => Some(h.sum_us as f64 / n as f64),
                Stat::Sum => Some(h.sum_us as f64),
                Stat::Minimum => h.extreme(false),
                Stat::Maximum => h.extreme(true),
                Stat::Percentile(q) => h.quantile(q),
            };
        }
        let (events, of) = m.counts(s);
        if of == 0 {
            return None;
        }
        match self {
            Stat::Sum => Some(events as f64),
            Stat::SampleCount => Some(of as f64),
            Stat::Average => Some(events as f64 / of as f64),
            Stat::Minimum => Some(if events == of { 1.0 } else { 0.0 }),
            Stat::Maximum => Some(if events > 0 { 1.0 } else { 0.0 }),
            Stat::Percentile(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
}

const CMPS: [(&str, Cmp); 4] = [
    ("GreaterThanThreshold", Cmp::Gt),
    ("GreaterThanOrEqualToThreshold", Cmp::Ge),
    ("LessThanThreshold", Cmp::Lt),
    ("LessThanOrEqualToThreshold", Cmp::Le),
];

impl Cmp {
    fn breaches(self, v: f64, t: f64) -> bool {
        match self {
            Cmp::Gt => v > t,
            Cmp::Ge => v >= t,
            Cmp::Lt => v < t,
            Cmp::Le => v <= t,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreatMissing {
    Missing,
    Ignore,
    Breaching,
    NotBreaching,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateValue {
    Ok,
    Alarm,
    InsufficientData,
}

impl StateValue {
    pub fn name(self) -> &'static str {
        match self {
            StateValue::Ok => "OK",
            StateValue::Alarm => "ALARM",
            StateValue::InsufficientData => "INSUFFICIENT_DATA",
        }
    }

    fn parse(at: &str, s: &str) -> Result<StateValue, AwsError> {
        match s {
            "OK" => Ok(StateValue::Ok),
            "ALARM" => Ok(StateValue::Alarm),
            "INSUFFICIENT_DATA" => Ok(StateValue::InsufficientData),
            _ => Err(invalid(at, "use OK, ALARM or INSUFFICIENT_DATA")),
        }
    }
}

/// What a metric alarm watches and when it fires.
#[derive(Clone, Debug)]
pub struct Rule {
    pub metric: Metric,
    pub metric_name: String,
    pub endpoint: String,
    pub variant: Option<String>,
    pub stat: Stat,
    pub period: u64,
    pub evaluation_periods: u64,
    pub datapoints_to_alarm: u64,
    pub threshold: f64,
    pub cmp: Cmp,
    pub missing: TreatMissing,
}

#[derive(Clone, Debug)]
pub struct AlarmDef {
    pub name: String,
    /// `None`: an external alarm (set by Alertmanager or SetAlarmState).
    pub rule: Option<Rule>,
    pub request: Value,
}

/// Reads a `PutMetricAlarm` body. Actions (SNS topics, Auto Scaling) have
/// no meaning here and are reported as ignored.
pub fn parse(v: &Value, ignored: &mut Vec<String>) -> Result<AlarmDef, AwsError> {
    let mut f = Fields::new("", v)?;
    let name = f.req_str("AlarmName")?.to_string();
    if name.trim().is_empty() || name.len() > 255 {
        return Err(invalid("AlarmName", "give 1 to 255 characters, not only spaces"));
    }
    f.ignore(&[
        "AlarmDescription",
        "ActionsEnabled",
        "OKActions",
        "AlarmActions",
        "InsufficientDataActions",
        "Unit",
        "EvaluateLowSampleCountPercentile",
        "Tags",
    ]);
    f.refuse(&[
        ("Metrics", "metric math is not supported: give MetricName, Dimensions and a statistic"),
        ("ThresholdMetricId", "anomaly-detection thresholds are not supported: give Threshold"),
    ])?;
    let external = f.bool("External")?.unwrap_or(false);
    let metric_name = f.str("MetricName")?;
    if external {
        if let Some(m) = metric_name {
            return Err(invalid(
                "External",
                &format!("an external alarm has no metric (its state comes from Alertmanager or SetAlarmState); drop MetricName {m:?} or External"),
            ));
        }
        let mut seen = Vec::new();
        for k in [
            "Namespace",
            "Statistic",
            "ExtendedStatistic",
            "Dimensions",
            "Period",
            "EvaluationPeriods",
            "Threshold",
            "ComparisonOperator",
        ] {
            if v.get(k).is_some() {
                seen.push(k);
            }
        }
        if !seen.is_empty() {
            return Err(invalid("External", &format!("an external alarm takes no {}", seen.join(", "))));
        }
        f.finish(ignored)?;
        return Ok(AlarmDef { name, rule: None, request: v.clone() });
    }
    let metric_name = metric_name.ok_or_else(|| {
        invalid("MetricName", "required field is missing (or set \"External\": true for an alarm Alertmanager drives)")
    })?;
    let metric = METRICS.iter().find(|(n, _)| *n == metric_name).map(|(_, m)| *m).ok_or_else(|| {
        invalid(
            "MetricName",
            &format!("{metric_name:?} is not a metric neorun keeps; it keeps {}", METRICS.map(|(n, _)| n).join(", ")),
        )
    })?;
    if let Some(ns) = f.str("Namespace")? {
        if ns != "AWS/SageMaker" && ns != "neorun" {
            return Err(invalid("Namespace", &format!("{ns:?}: neorun's metrics are in AWS/SageMaker (or neorun)")));
        }
    }
    let stat = match (f.str("Statistic")?, f.str("ExtendedStatistic")?) {
        (Some(s), None) => {
            let s2 = Stat::parse("Statistic", s)?;
            if matches!(s2, Stat::Percentile(_)) {
                return Err(invalid("Statistic", "a percentile goes in ExtendedStatistic"));
            }
            s2
        }
        (None, Some(p)) => {
            let s2 = Stat::parse("ExtendedStatistic", p)?;
            if !matches!(s2, Stat::Percentile(_)) {
                return Err(invalid("ExtendedStatistic", "give a percentile such as p99 (or use Statistic)"));
            }
            s2
        }
        (Some(_), Some(_)) => {
            return Err(invalid("ExtendedStatistic", "give Statistic or ExtendedStatistic, not both"))
        }
        (None, None) => {
            return Err(invalid("Statistic", "required: Statistic (Sum, Average, …) or ExtendedStatistic (pNN)"))
        }
    };
    if matches!(stat, Stat::Percentile(_)) && !metric.latency() {
        return Err(invalid("ExtendedStatistic", "percentiles apply to ModelLatency and OverheadLatency"));
    }
    let mut endpoint = None;
    let mut variant = None;
    for mut d in f.list("Dimensions")?.unwrap_or_default() {
        let at = d.path().to_string();
        let n = d.req_str("Name")?.to_string();
        let val = d.req_str("Value")?.to_string();
        d.finish(&mut Vec::new())?;
        match n.as_str() {
            "EndpointName" => endpoint = Some(val),
            "VariantName" => variant = Some(val),
            other => {
                return Err(invalid(
                    &format!("{at}.Name"),
                    &format!("{other:?}: neorun's metrics have the dimensions EndpointName and VariantName"),
                ))
            }
        }
    }
    let endpoint = endpoint.ok_or_else(|| invalid("Dimensions", "give the EndpointName dimension"))?;
    let period = positive(f.int("Period")?, "Period")?;
    let evaluation_periods = positive(f.int("EvaluationPeriods")?, "EvaluationPeriods")?;
    let datapoints_to_alarm = match f.int("DatapointsToAlarm")? {
        None => evaluation_periods,
        Some(d) if d >= 1 && (d as u64) <= evaluation_periods => d as u64,
        Some(_) => return Err(invalid("DatapointsToAlarm", "give 1 to EvaluationPeriods")),
    };
    if period * evaluation_periods > MAX_WINDOW_SECONDS {
        return Err(invalid(
            "Period",
            &format!(
                "Period × EvaluationPeriods is {} s; neorun looks back at most {MAX_WINDOW_SECONDS} s",
                period * evaluation_periods
            ),
        ));
    }
    let threshold = f.f64("Threshold")?.ok_or_else(|| invalid("Threshold", "required field is missing"))?;
    let op = f.req_str("ComparisonOperator")?;
    let cmp =
        CMPS.iter().find(|(n, _)| *n == op).map(|(_, c)| *c).ok_or_else(|| {
            invalid("ComparisonOperator", &format!("{op:?}: use {}", CMPS.map(|(n, _)| n).join(", ")))
        })?;
    let missing = match f.str("TreatMissingData")?.unwrap_or("missing") {
        "missing" => TreatMissing::Missing,
        "ignore" => TreatMissing::Ignore,
        "breaching" => TreatMissing::Breaching,
        "notBreaching" => TreatMissing::NotBreaching,
        other => {
            return Err(invalid(
                "TreatMissingData",
                &format!("{other:?}: use missing, ignore, breaching or notBreaching"),
            ))
        }
    };
    f.finish(ignored)?;
    let rule = Rule {
        metric,
        metric_name: metric_name.to_string(),
        endpoint,
        variant,
        stat,
        period,
        evaluation_periods,
        datapoints_to_alarm,
        threshold,
        cmp,
        missing,
    };
    Ok(AlarmDef { name, rule: Some(rule), request: v.clone() })
}

fn positive(v: Option<i64>, at: &str) -> Result<u64, AwsError> {
    match v {
        Some(n) if n >= 1 => Ok(n as u64),
        Some(_) => Err(invalid(at, "must be 1 or more")),
        None => Err(invalid(at, "required field is missing")),
    }
}

/// A variant's counters, where they are now.
pub struct Source {
    pub endpoint: String,
    pub variant: String,
    pub counters: Arc<Counters>,
}

#[derive(Clone, Debug)]
pub struct AlarmState {
    pub value: StateValue,
    pub reason: String,
    pub reason_data: Value,
    pub updated: f64,
}

pub struct Alarm {
    pub def: AlarmDef,
    pub arn: String,
    pub state: AlarmState,
    /// Alertmanager alerts firing for it, by fingerprint.
    pub firing: BTreeSet<String>,
    /// A state set by SetAlarmState holds until this time (`updated`'s
    /// clock): one period of its rule, the next evaluation CloudWatch would
    /// make. Re-judged on the evaluator's next 250 ms tick instead, a
    /// testing ALARM could clear before a rollout's check saw it.
    pub held_until: Option<f64>,
}

/// A state change, for the history and the journal.
#[derive(Clone, Debug)]
pub struct Transition {
    pub alarm: String,
    pub from: StateValue,
    pub to: StateValue,
    pub reason: String,
    pub data: Value,
    pub time: f64,
}

impl Transition {
    pub fn history_item(&self) -> Value {
        json!({
            "AlarmName": self.alarm,
            "AlarmType": "MetricAlarm",
            "Timestamp": self.time,
            "HistoryItemType": "StateUpdate",
            "HistorySummary": format!("Alarm updated from {} to {}", self.from.name(), self.to.name()),
            "HistoryData": json!({
                "version": "1.0",
                "oldState": { "stateValue": self.from.name() },
                "newState": { "stateValue": self.to.name(), "stateReason": self.reason, "stateReasonData": self.data },
            }).to_string(),
        })
    }
}

/// The alarms and what their evaluation needs to remember.
#[derive(Default)]
pub struct Alarms {
    pub alarms: BTreeMap<String, Alarm>,
    /// Snapshots once a second: (when, counters id → reading).
    snapshots: VecDeque<(Instant, HashMap<u64, Snap>)>,
    last_snapshot: Option<Instant>,
    /// Which endpoint and variant each counters id belongs to.
    owners: HashMap<u64, (String, String)>,
    pub history: VecDeque<Transition>,
}

/// History kept in memory for DescribeAlarmHistory (the journal keeps all).
const HISTORY: usize = 10_000;

impl Alarms {
    pub fn set_state(&mut self, name: &str, to: StateValue, reason: String, data: Value, t: f64) -> Option<Transition> {
        let a = self.alarms.get_mut(name)?;
        if a.state.value == to {
            return None;
        }
        let tr = Transition {
            alarm: name.to_string(),
            from: a.state.value,
            to,
            reason: reason.clone(),
            data: data.clone(),
            time: t,
        };
        a.state = AlarmState { value: to, reason, reason_data: data, updated: t };
        self.history.push_back(tr.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        Some(tr)
    }

    /// SetAlarmState: `set_state`, then the state holds for one period of
    /// the alarm's rule (`evaluate` leaves it alone until then).
    pub fn set_by_hand(
        &mut self,
        name: &str,
        to: StateValue,
        reason: String,
        data: Value,
        t: f64,
    ) -> Option<Transition> {
        let tr = self.set_state(name, to, reason, data, t);
        if let Some(a) = self.alarms.get_mut(name) {
            a.held_until = a.def.rule.as_ref().map(|r| t + r.period as f64);
        }
        tr
    }

    fn longest_window(&self) -> u64 {
        self.alarms
            .values()
            .filter_map(|a| a.def.rule.as_ref())
            .map(|r| r.period * r.evaluation_periods)
            .max()
            .unwrap_or(0)
    }

    /// One evaluation: snapshots if a second has passed, then every metric
    /// alarm over `sources` as they stand now. Returns the transitions.
    pub fn evaluate(&mut self, sources: &[Source], now: Instant, t: f64) -> Vec<Transition> {
        let current: HashMap<u64, Snap> = sources.iter().map(|s| (s.counters.id, s.counters.read())).collect();
        for s in sources {
            self.owners.insert(s.counters.id, (s.endpoint.clone(), s.variant.clone()));
        }
        if self.last_snapshot.is_none_or(|l| now.duration_since(l) >= Duration::from_secs(1)) {
            self.snapshots.push_back((now, current.clone()));
            self.last_snapshot = Some(now);
            let keep = Duration::from_secs(self.longest_window() + 2);
            while self.snapshots.front().is_some_and(|(at, _)| now.duration_since(*at) > keep)
                && self.snapshots.len() > 1
            {
                self.snapshots.pop_front();
            }
            let live: BTreeSet<u64> = self.snapshots.iter().flat_map(|(_, m)| m.keys().copied()).collect();
            self.owners.retain(|id, _| live.contains(id) || current.contains_key(id));
        }
        let mut out = Vec::new();
        let names: Vec<String> = self.alarms.keys().cloned().collect();
        for name in names {
            if self.alarms[&name].held_until.is_some_and(|h| t < h) {
                continue; // set by hand, for one period
            }
            let Some(rule) = self.alarms[&name].def.rule.clone() else { continue };
            let (to, reason, data) = self.judge(&rule, &current, now);
            let to = match to {
                Some(v) => v,
                None => continue, // TreatMissingData: ignore
            };
            if let Some(tr) = self.set_state(&name, to, reason, data, t) {
                out.push(tr);
            }
        }
        out
    }

    /// The reading of the sources `rule` watches at `at` (`None`: now).
    fn reading(&self, rule: &Rule, current: &HashMap<u64, Snap>, at: Option<Instant>) -> Snap {
        let map = match at {
            None => current,
            Some(at) => match self.snapshots.iter().rev().find(|(t, _)| *t <= at) {
                Some((_, m)) => m,
                None => return Snap::default(),
            },
        };
        let mut sum = Snap::default();
        for (id, snap) in map {
            let Some((e, v)) = self.owners.get(id) else { continue };
            if *e == rule.endpoint && rule.variant.as_ref().is_none_or(|want| want == v) {
                sum.add(snap, 1);
            }
        }
        sum
    }

    fn judge(&self, rule: &Rule, current: &HashMap<u64, Snap>, now: Instant) -> (Option<StateValue>, String, Value) {
        let p = Duration::from_secs(rule.period);
        let mut values = Vec::new();
        for i in 0..rule.evaluation_periods {
            let end = now.checked_sub(p * i as u32);
            let start = now.checked_sub(p * (i as u32 + 1));
            let (Some(end), Some(start)) = (end, start) else {
                values.push(None);
                continue;
            };
            let mut d = self.reading(rule, current, if i == 0 { None } else { Some(end) });
            d.add(&self.reading(rule, current, Some(start)), -1);
            values.push(rule.stat.value(rule.metric, &d));
        }
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        let missing = values.len() - present.len();
        let mut breaching = present.iter().filter(|v| rule.cmp.breaches(**v, rule.threshold)).count();
        match rule.missing {
            TreatMissing::Breaching => breaching += missing,
            TreatMissing::Ignore if present.is_empty() => return (None, String::new(), json!({})),
            _ => {}
        }
        let data = json!({
            "version": "1.0",
            "statistic": rule.metric_name,
            "period": rule.period,
            "recentDatapoints": values,
            "threshold": rule.threshold,
        });
        let shown: Vec<String> =
            values.iter().map(|v| v.map_or("missing".to_string(), |x| format!("{x:.6}"))).collect();
        let to = if breaching as u64 >= rule.datapoints_to_alarm {
            StateValue::Alarm
        } else if present.is_empty() && rule.missing == TreatMissing::Missing {
            StateValue::InsufficientData
        } else {
            StateValue::Ok
        };
        let verb = if to == StateValue::Alarm { "was" } else { "was not" };
        let reason = format!(
            "Threshold Crossed: {} of the last {} datapoints [{}] of {} {} {} the threshold ({}).",
            breaching,
            values.len(),
            shown.join(", "),
            rule.metric_name,
            verb,
            CMPS.iter().find(|(_, c)| *c == rule.cmp).map_or("", |(n, _)| n),
            rule.threshold
        );
        (Some(to), reason, data)
    }
}

/// The `MetricAlarm` shape DescribeAlarms returns.
pub fn describe(a: &Alarm) -> Value {
    let mut out = a.def.request.clone();
    if let Some(m) = out.as_object_mut() {
        m.remove("External");
        m.remove("Tags");
    }
    out["AlarmArn"] = json!(a.arn);
    out["StateValue"] = json!(a.state.value.name());
    out["StateReason"] = json!(a.state.reason);
    out["StateReasonData"] = json!(a.state.reason_data.to_string());
    out["StateUpdatedTimestamp"] = json!(a.state.updated);
    out["StateTransitionedTimestamp"] = json!(a.state.updated);
    if out.get("ActionsEnabled").is_none() {
        out["ActionsEnabled"] = json!(false);
    }
    if let Some(r) = &a.def.rule {
        if out.get("DatapointsToAlarm").is_none() {
            out["DatapointsToAlarm"] = json!(r.datapoints_to_alarm);
        }
        if out.get("Namespace").is_none() {
            out["Namespace"] = json!("AWS/SageMaker");
        }
    }
    out
}

pub fn set_state_request(v: &Value) -> Result<(String, StateValue, String, Value), AwsError> {
    let mut f = Fields::new("", v)?;
    let name = f.req_str("AlarmName")?.to_string();
    let state = StateValue::parse("StateValue", f.req_str("StateValue")?)?;
    let reason = f.req_str("StateReason")?.to_string();
    let data = match f.str("StateReasonData")? {
        None => json!({}),
        Some(s) => serde_json::from_str(s).map_err(|e| invalid("StateReasonData", &format!("not JSON: {e}")))?,
    };
    f.finish(&mut Vec::new())?;
    Ok((name, state, reason, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: Value) -> Result<AlarmDef, AwsError> {
        parse(&v, &mut Vec::new())
    }

    fn alarm_5xx(period: i64, n: i64, m: i64) -> Value {
        json!({
            "AlarmName": "errors", "Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors",
            "Dimensions": [{"Name": "EndpointName", "Value": "fraud"}],
            "Statistic": "Average", "Period": period, "EvaluationPeriods": n, "DatapointsToAlarm": m,
            "Threshold": 0.05, "ComparisonOperator": "GreaterThanThreshold",
        })
    }

    #[test]
    fn bad_definitions_are_refused_naming_the_field() {
        let cases = [
            (json!({"AlarmName": "a"}), "MetricName"),
            (json!({"AlarmName": "a", "MetricName": "CPUUtilization"}), "not a metric neorun keeps"),
            (json!({"AlarmName": "a", "External": true, "MetricName": "ModelLatency"}), "External"),
            (json!({"AlarmName": "a", "External": true, "Threshold": 1}), "takes no Threshold"),
            (json!({"AlarmName": "a", "Metrics": []}), "metric math"),
        ];
        for (v, want) in cases {
            let e = put(v.clone()).unwrap_err();
            assert!(e.message.contains(want), "{v}: {}", e.message);
        }
        let mut v = alarm_5xx(1, 2, 3);
        assert!(put(v.clone()).unwrap_err().message.contains("DatapointsToAlarm"));
        v["DatapointsToAlarm"] = json!(1);
        v["Dimensions"] = json!([{"Name": "Host", "Value": "x"}]);
        assert!(put(v.clone()).unwrap_err().message.contains("Dimensions[0].Name"));
        let mut v = alarm_5xx(60, 61, 1);
        assert!(put(v.clone()).unwrap_err().message.contains("at most 3600"));
        v["EvaluationPeriods"] = json!(1);
        v["ExtendedStatistic"] = json!("p99");
        assert!(put(v.clone()).unwrap_err().message.contains("not both"));
        v.as_object_mut().unwrap().remove("Statistic");
        assert!(put(v.clone()).unwrap_err().message.contains("ModelLatency and OverheadLatency"));
        v["MetricName"] = json!("ModelLatency");
        v["ComparisonOperator"] = json!("Above");
        assert!(put(v).unwrap_err().message.contains("ComparisonOperator"));
        let e = put(json!({"AlarmName": "a", "External": true, "Frequency": 3})).unwrap_err();
        assert!(e.message.contains("Frequency"), "{}", e.message);
    }

    /// One evaluation of `def` over counters `fill` filled since the last snapshot.
    fn judge_once(def: Value, fill: impl Fn(&Counters)) -> StateValue {
        let def = put(def).unwrap();
        let name = def.name.clone();
        let mut alarms = Alarms::default();
        let state = AlarmState {
            value: StateValue::InsufficientData,
            reason: String::new(),
            reason_data: json!({}),
            updated: 0.0,
        };
        alarms
            .alarms
            .insert(name.clone(), Alarm { def, arn: "x".into(), state, firing: Default::default(), held_until: None });
        let c = Arc::new(Counters::default());
        let sources = [Source { endpoint: "fraud".into(), variant: "v".into(), counters: c.clone() }];
        let t0 = Instant::now();
        alarms.evaluate(&sources, t0, 0.0);
        fill(&c);
        alarms.evaluate(&sources, t0 + Duration::from_secs(1), 1.0);
        alarms.alarms[&name].state.value
    }

    #[test]
    fn every_metric_kind_is_judged() {
        let alarm = |metric: &str, stat: (&str, &str), threshold: f64| {
            json!({"AlarmName": "a", "MetricName": metric, stat.0: stat.1,
                   "Dimensions": [{"Name": "EndpointName", "Value": "fraud"}],
                   "Period": 1, "EvaluationPeriods": 1, "Threshold": threshold, "ComparisonOperator": "GreaterThanThreshold"})
        };
        let shadow = |agree: usize, disagree: usize| {
            move |c: &Counters| {
                (0..agree).for_each(|_| c.shadow(Some(true)));
                (0..disagree).for_each(|_| c.shadow(Some(false)));
            }
        };
        let d = alarm("ShadowDisagreements", ("Statistic", "Average"), 0.1);
        assert_eq!(judge_once(d.clone(), shadow(95, 5)), StateValue::Ok);
        assert_eq!(judge_once(d.clone(), shadow(80, 20)), StateValue::Alarm);
        assert_eq!(judge_once(d, shadow(0, 0)), StateValue::InsufficientData);
        let s = alarm("SelfTestFailures", ("Statistic", "Sum"), 0.0);
        assert_eq!(judge_once(s.clone(), |c| c.self_test(true)), StateValue::Ok);
        assert_eq!(judge_once(s, |c| c.self_test(false)), StateValue::Alarm);
        let latency = |c: &Counters| {
            for us in 1..=100u64 {
                let m = Duration::from_micros(if us == 100 { 50_000 } else { us * 10 });
                c.invoked(200, false, m + Duration::from_micros(5), Some(m));
            }
        };
        // p99 of 99 answers under 1 ms and one of 50 ms is under 1 ms; p100 is not
        assert_eq!(judge_once(alarm("ModelLatency", ("ExtendedStatistic", "p99"), 1000.0), latency), StateValue::Ok);
        assert_eq!(
            judge_once(alarm("ModelLatency", ("ExtendedStatistic", "p100"), 1000.0), latency),
            StateValue::Alarm
        );
        assert_eq!(judge_once(alarm("ModelLatency", ("Statistic", "Maximum"), 1000.0), latency), StateValue::Alarm);
        let errors = |c: &Counters| {
            (0..9).for_each(|_| c.invoked(200, false, Duration::from_micros(9), None));
            c.invoked(500, true, Duration::from_micros(9), None);
        };
        assert_eq!(judge_once(alarm("ModelErrors", ("Statistic", "Average"), 0.05), errors), StateValue::Alarm);
        assert_eq!(judge_once(alarm("Invocation4XXErrors", ("Statistic", "Sum"), 0.0), errors), StateValue::Ok);
    }

    #[test]
    fn an_alarm_fires_on_enough_breaching_periods_and_clears() {
        let def = put(alarm_5xx(1, 2, 2)).unwrap();
        let mut alarms = Alarms::default();
        let state = AlarmState {
            value: StateValue::InsufficientData,
            reason: String::new(),
            reason_data: json!({}),
            updated: 0.0,
        };
        alarms.alarms.insert(
            "errors".into(),
            Alarm { def, arn: "x".into(), state, firing: Default::default(), held_until: None },
        );
        let c = Arc::new(Counters::default());
        let sources = [Source { endpoint: "fraud".into(), variant: "green".into(), counters: c.clone() }];
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        assert!(alarms.evaluate(&sources, at(0.0), 0.0).is_empty(), "no data: stays INSUFFICIENT_DATA");
        let ok =
            |n| (0..n).for_each(|_| c.invoked(200, false, Duration::from_micros(50), Some(Duration::from_micros(40))));
        let bad = |n| (0..n).for_each(|_| c.invoked(500, true, Duration::from_micros(50), None));
        ok(100);
        let tr = alarms.evaluate(&sources, at(1.0), 1.0);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].to, StateValue::Ok);
        ok(90);
        bad(10);
        // one breaching period of the two needed
        assert!(alarms.evaluate(&sources, at(2.0), 2.0).is_empty());
        ok(90);
        bad(10);
        let tr = alarms.evaluate(&sources, at(3.0), 3.0);
        assert_eq!(tr.len(), 1, "{:?}", alarms.alarms["errors"].state);
        assert_eq!(tr[0].to, StateValue::Alarm);
        assert!(tr[0].reason.contains("2 of the last 2 datapoints"), "{}", tr[0].reason);
        ok(100);
        let tr = alarms.evaluate(&sources, at(4.0), 4.0);
        assert_eq!(tr[0].to, StateValue::Ok);
        // another endpoint's counters are not this alarm's
        let other = Arc::new(Counters::default());
        (0..100).for_each(|_| other.invoked(500, false, Duration::from_micros(5), None));
        let both = [
            Source { endpoint: "fraud".into(), variant: "green".into(), counters: c.clone() },
            Source { endpoint: "other".into(), variant: "green".into(), counters: other },
        ];
        ok(10);
        assert!(alarms.evaluate(&both, at(5.0), 5.0).is_empty());
        assert_eq!(alarms.history.len(), 3);
        // SetAlarmState holds for one period (1 s here), then the data rules
        let tr = alarms.set_by_hand("errors", StateValue::Alarm, "testing".into(), json!({}), 5.1);
        assert_eq!(tr.map(|t| t.to), Some(StateValue::Alarm));
        ok(10);
        assert!(alarms.evaluate(&sources, at(5.3), 5.3).is_empty(), "held");
        assert_eq!(alarms.alarms["errors"].state.value, StateValue::Alarm);
        ok(10);
        let tr = alarms.evaluate(&sources, at(6.2), 6.2);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].to, StateValue::Ok);
    }
}
