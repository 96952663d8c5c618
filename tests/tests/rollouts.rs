//! Guarded rollouts: `UpdateEndpoint` with a `DeploymentConfig` from stock
//! boto3 against a real `neorun serve`, with clients invoking the endpoint
//! all along — linear, canary and all-at-once traffic shifting, alarms over
//! the endpoint's metrics that roll back on their own, a rollback fired by a
//! real Prometheus and Alertmanager, restarts in the middle, and every kind
//! of bad input.
//!
//! Blue is `add.neo` (r = a + b), green `mod.neo` (r = a mod b), both on
//! int32 `[N, 2]` inputs `a`, `b`: the answer tells the fleets apart, and a
//! zero divisor makes green fail inside its engine (a 5xx ModelError) where
//! blue answers.
//!
//! (Over 600 lines: one end-to-end test per acceptance point of the
//! rollouts issue, each with its own server; the request analysis and the
//! server helpers are at the top.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use neoc_e2e::*;
use serde_json::{json, Value};

const KEY_ID: &str = "AKIDNEORUNTEST";
const SECRET: &str = "neorun/test+secret";
const TOKEN: &str = "rollout-test-token";

/// The tests of this file each drive 8 clients on a 2-core machine: one at a time.
static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An ONNX model of one binary op on int32 `[N, 2]` inputs `a`, `b`, with
/// one test case; `reference` overrides its expected output (compiled with
/// --allow-mismatch: a bundle whose own health check fails).
fn int_bundle(d: &Path, name: &str, op: &str, reference: Option<[i32; 2]>) {
    let tarball = int_op_tarball(d, name, op, reference);
    let out = format!("{name}.neo");
    let mut args = vec!["compile", &tarball, "--target", "host", "--key", "k.key", "-o", &out];
    if reference.is_some() {
        args.push("--allow-mismatch");
    }
    ok(run("neoc", d, &args, &[], None));
}

/// A scratch directory with add.neo, mod.neo, badtest.neo, the test's
/// access key and the alarms file.
fn work() -> tempfile::TempDir {
    let dir = scratch();
    let d = dir.path();
    int_bundle(d, "add", "Add", None);
    int_bundle(d, "mod", "Mod", None);
    int_bundle(d, "badtest", "Mod", Some([9, 9]));
    std::fs::write(
        d.join("creds"),
        format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let alarms = json!([
        // green's own 5xx rate over 1-second periods
        {"AlarmName": "green-5xx", "Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors",
         "Dimensions": [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "Green"}],
         "Statistic": "Average", "Period": 1, "EvaluationPeriods": 1, "Threshold": 0.05,
         "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching"},
        {"AlarmName": "green-p99", "MetricName": "ModelLatency", "ExtendedStatistic": "p99",
         "Dimensions": [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "Green"}],
         "Period": 2, "EvaluationPeriods": 2, "DatapointsToAlarm": 2, "Threshold": 500000,
         "ComparisonOperator": "GreaterThanThreshold"},
        {"AlarmName": "prom-green-errors", "External": true}
    ]);
    std::fs::write(d.join("alarms.json"), serde_json::to_vec_pretty(&alarms).unwrap()).unwrap();
    dir
}

fn server(dir: &Path) -> Served {
    serve_with(
        &bin("neorun"),
        dir,
        &["--state-dir", "state", "--access-keys", "creds", "--auth-token", TOKEN, "--alarms", "alarms.json"],
    )
}

/// `kill -9` of the server, then a new one on the same state directory.
fn kill_9_and_restart(mut s: Served, d: &Path) -> Served {
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(s);
    server(d)
}

/// A work directory and a server with endpoint `ep` on v1 (blue), in service.
fn started() -> (tempfile::TempDir, Served) {
    let dir = work();
    let s = server(dir.path());
    py("setup", &s.base, dir.path(), &json!({}));
    (dir, s)
}

fn py(mode: &str, base: &str, dir: &Path, arg: &Value) -> Value {
    let out = Command::new(venv_python())
        .args([
            root().join("tests/serve/rollouts.py").to_str().unwrap(),
            mode,
            base,
            dir.to_str().unwrap(),
            &arg.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "rollouts.py {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn linear(step: u32, wait: u32, alarms: &[&str]) -> Value {
    let mut d = json!({"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "LINEAR", "WaitIntervalInSeconds": wait,
            "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": step}},
        "TerminationWaitInSeconds": 1, "MaximumExecutionTimeoutInSeconds": 600}});
    if !alarms.is_empty() {
        d["AutoRollbackConfiguration"] =
            json!({"Alarms": alarms.iter().map(|a| json!({"AlarmName": a})).collect::<Vec<_>>()});
    }
    d
}

/// One request as rollouts.py records it.
struct Req {
    sent: f64,
    done: f64,
    variant: Option<String>,
    ok: bool,
    zero: bool,
    /// The answer was blue's (a + b).
    blue_answer: bool,
}

fn requests(run: &Value) -> Vec<Req> {
    run["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Req {
            sent: r[0].as_f64().unwrap(),
            done: r[1].as_f64().unwrap(),
            variant: r[2].as_str().map(str::to_string),
            ok: r[3].as_bool().unwrap(),
            zero: r[4].as_bool().unwrap(),
            blue_answer: r[5].as_bool() == Some(true),
        })
        .collect()
}

/// The journal's entries of one operation, in order.
fn events<'a>(run: &'a Value, op: &str) -> Vec<&'a Value> {
    run["journal"].as_array().unwrap().iter().filter(|e| e["op"] == op && e["name"] == "ep").collect()
}

/// The steps as the journal recorded them: (time traffic moved, share).
fn steps(run: &Value) -> Vec<(f64, f64)> {
    events(run, "DeploymentStep")
        .iter()
        .filter(|e| e["detail"]["Phase"] == "ActivatingTraffic")
        .map(|e| (e["t"].as_f64().unwrap(), e["detail"]["Share"].as_f64().unwrap()))
        .collect()
}

/// Green's share of the requests sent inside [from, to] (a margin off each
/// end: a request in flight at a step may go either way).
fn green_share(reqs: &[Req], from: f64, to: f64) -> (f64, usize) {
    let inside: Vec<&Req> = reqs.iter().filter(|r| r.sent > from + 0.15 && r.done < to - 0.05).collect();
    let green = inside.iter().filter(|r| r.variant.as_deref() == Some("Green")).count();
    (green as f64 / inside.len().max(1) as f64, inside.len())
}

/// Checks that the share of green answers followed each step, the answers
/// matched the fleet named in the header, and no request failed.
fn assert_followed_steps(run: &Value, want: &[f64]) {
    let reqs = requests(run);
    let failed: Vec<&Req> = reqs.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{} of {} requests failed during the update", failed.len(), reqs.len());
    for r in &reqs {
        let blue = r.variant.as_deref() == Some("Blue");
        assert_eq!(blue, r.blue_answer, "the header named {:?} but the answer was the other fleet's", r.variant);
    }
    let s = steps(run);
    let got: Vec<f64> = s.iter().map(|x| x.1).collect();
    assert_eq!(got.len(), want.len(), "steps {got:?}, wanted {want:?}");
    let completed = events(run, "DeploymentStep")
        .iter()
        .find(|e| e["detail"]["Phase"] == "TerminationWait")
        .map(|e| e["t"].as_f64().unwrap())
        .expect("the final bake ended");
    let before = green_share(&reqs, run["started"].as_f64().unwrap() - 1.0, s[0].0);
    assert_eq!(before.0, 0.0, "green answered before the first step");
    for (k, (t, share)) in s.iter().enumerate() {
        assert!((share - want[k]).abs() < 1e-9, "step {k}: share {share}, wanted {}", want[k]);
        let end = s.get(k + 1).map_or(completed, |x| x.0);
        let (g, n) = green_share(&reqs, *t, end);
        // binomial: 4 standard deviations of the share, at least 5 points
        let tol = (4.0 * (share * (1.0 - share) / n as f64).sqrt()).max(0.05);
        assert!(n >= 50, "step {k}: only {n} requests inside it");
        assert!((g - share).abs() <= tol, "step {k}: green answered {g:.3} of {n} requests, the step is {share}");
        eprintln!("step {k}: share {share}: green answered {g:.3} of {n}");
    }
    let last = reqs.iter().filter(|r| r.sent > completed + 0.2).collect::<Vec<_>>();
    assert!(!last.is_empty());
    assert!(last.iter().all(|r| r.variant.as_deref() == Some("Green")), "blue answered after the update");
}

#[test]
fn a_linear_update_from_boto3_follows_its_steps_with_no_failed_request() {
    let _one = alone();
    let (dir, s) = started();
    let d = dir.path();
    let run = py("rollout", &s.base, d, &json!({"to": "v2", "deployment": linear(20, 2, &["green-5xx"])}));
    assert_followed_steps(&run, &[0.2, 0.4, 0.6, 0.8, 1.0]);
    let f = &run["final"];
    assert_eq!(f["EndpointStatus"], "InService");
    assert_eq!(f["EndpointConfigName"], "v2");
    assert!(f.get("FailureReason").is_none(), "{f}");
    assert_eq!(f["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"], "LINEAR");
    // during the update: Updating, blue's weight shrinking, green's status
    // ActivatingTraffic / Baking with its start time, desired weights
    let during: Vec<&Value> =
        run["describes"].as_array().unwrap().iter().filter(|x| x["status"] == "Updating").collect();
    assert!(during.len() > 10);
    let baking = during
        .iter()
        .find(|x| {
            let g = &x["pending"]["ProductionVariants"][0];
            g["VariantStatus"][0]["Status"] == "Baking"
                && (g["CurrentWeight"].as_f64().unwrap_or(0.0) - 0.6).abs() < 1e-9
        })
        .expect("a describe during the third bake");
    assert!(baking["pending"]["ProductionVariants"][0]["VariantStatus"][0]["StatusMessage"]
        .as_str()
        .unwrap()
        .contains("step 3 of 5: 60% of requests on the new fleet"));
    let green = &baking["pending"]["ProductionVariants"][0];
    assert_eq!(baking["pending"]["EndpointConfigName"], "v2");
    assert_eq!(green["VariantName"], "Green");
    assert_eq!(green["VariantStatus"][0]["Status"], "Baking");
    assert!(green["VariantStatus"][0]["StartTime"].is_number() || green["VariantStatus"][0]["StartTime"].is_string());
    assert!((green["CurrentWeight"].as_f64().unwrap() - 0.6).abs() < 1e-9, "{green}");
    assert_eq!(green["DesiredWeight"], 1.0);
    let blue = &baking["variants"][0];
    assert_eq!(blue["VariantName"], "Blue");
    assert!((blue["CurrentWeight"].as_f64().unwrap() - 0.4).abs() < 1e-9, "{blue}");
    assert_eq!(blue["DesiredWeight"], 0.0);
    assert!(
        during
            .iter()
            .any(|x| x["pending"]["ProductionVariants"][0]["VariantStatus"][0]["Status"] == "ActivatingTraffic")
            || events(&run, "DeploymentStep").iter().any(|e| e["detail"]["Phase"] == "ActivatingTraffic")
    );
    // the journal: who asked, each step, the outcome
    let asked = events(&run, "UpdateEndpoint");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["who"], format!("access key {KEY_ID}"));
    let completed = events(&run, "DeploymentCompleted");
    assert_eq!(completed.len(), 1);
    // boto3's endpoint_in_service waiter, started during the update, returned after it ended
    let waiter_done = run["waiter_done"].as_f64().expect("the waiter returned");
    let completed_at = completed[0]["t"].as_f64().unwrap();
    assert!(waiter_done >= completed_at - 0.01 && waiter_done < completed_at + 3.0, "{waiter_done} vs {completed_at}");
    // the journal from the command line, from the server and from the state directory
    let via_api = ok(run_neorun(
        d,
        &["journal", "--url", &s.base, "--auth-token", TOKEN, "--name", "ep", "--op", "DeploymentStep"],
    ));
    let via_dir = ok(run_neorun(d, &["journal", "--state-dir", "state", "--name", "ep", "--op", "DeploymentStep"]));
    assert_eq!(via_api, via_dir);
    assert_eq!(via_api.lines().count(), 5 * 2 + 1, "{via_api}");
}

fn run_neorun(d: &Path, args: &[&str]) -> std::process::Output {
    run("neorun", d, args, &[], None)
}

/// `neorun endpoint --url BASE --auth-token TOKEN ARGS…`
fn endpoint_cli(d: &Path, base: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["endpoint", "--url", base, "--auth-token", TOKEN];
    all.extend_from_slice(args);
    run_neorun(d, &all)
}

/// A green that fails on a share of inputs: the alarm fires in the bake of
/// `step` (1-based), requests go back to blue within a period, and no
/// request answered by blue fails.
fn rolls_back_on_an_alarm(zero_from_step: u64) {
    let _one = alone();
    let (dir, s) = started();
    let d = dir.path();
    let spec = json!({"to": "v2", "deployment": linear(20, 3, &["green-5xx", "green-p99"]),
                      "zero_share": 0.3, "zero_from_share": 0.2 * zero_from_step as f64 - 0.01});
    let run = py("rollout", &s.base, d, &spec);
    let reqs = requests(&run);
    let f = &run["final"];
    assert_eq!(f["EndpointStatus"], "InService", "{f}");
    assert_eq!(f["EndpointConfigName"], "v1");
    let why = f["FailureReason"].as_str().unwrap();
    assert!(why.contains("rolled back") && why.contains("green-5xx") && why.contains("ALARM"), "{why}");
    assert!(why.contains(&format!("step {zero_from_step} of 5")), "{why}");
    // no request blue answered failed; green's failures were the zero divisors
    let blue_failed = reqs.iter().filter(|r| r.variant.as_deref() == Some("Blue") && !r.ok).count();
    assert_eq!(blue_failed, 0);
    let green_failed: Vec<&Req> = reqs.iter().filter(|r| !r.ok).collect();
    assert!(!green_failed.is_empty());
    assert!(green_failed.iter().all(|r| r.zero && r.variant.as_deref() == Some("Green")));
    let back = events(&run, "DeploymentRolledBack");
    assert_eq!(back.len(), 1);
    let blue_at = back[0]["detail"]["blue_at"].as_f64().unwrap();
    let from_alarm = back[0]["detail"]["seconds_from_alarm_to_blue"].as_f64().unwrap();
    let first_failure = green_failed.iter().map(|r| r.done).fold(f64::INFINITY, f64::min);
    eprintln!(
        "first green 5xx → 100% on blue: {:.3} s; alarm state change → blue: {from_alarm:.3} s",
        blue_at - first_failure
    );
    assert!(from_alarm < 0.5, "{from_alarm} s from the alarm to blue");
    // the alarm's period is 1 s: back on blue within one period (and the evaluation tick)
    assert!(blue_at - first_failure < 1.5, "{} s from the first failure to blue", blue_at - first_failure);
    let green_after = reqs.iter().filter(|r| r.sent > blue_at + 0.05 && r.variant.as_deref() == Some("Green")).count();
    assert_eq!(green_after, 0, "green answered after the rollback");
    // the steps before the alarm's: no failure there
    let s = steps(&run);
    assert_eq!(s.len() as u64, zero_from_step);
    let alarm: Vec<&Value> =
        run["journal"].as_array().unwrap().iter().filter(|e| e["op"] == "AlarmStateChange").collect();
    assert!(alarm.iter().any(|e| e["name"] == "green-5xx" && e["detail"]["to"] == "ALARM"), "{alarm:?}");
}

#[test]
fn a_green_failing_on_some_inputs_is_rolled_back_in_its_first_bake() {
    rolls_back_on_an_alarm(1);
}

#[test]
fn a_green_that_starts_failing_in_its_second_step_is_rolled_back_then() {
    rolls_back_on_an_alarm(2);
}

#[test]
fn canary_and_all_at_once_updates_shift_as_specified() {
    let _one = alone();
    let (dir, s) = started();
    let d = dir.path();
    let canary = json!({"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 3,
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}},
        "MaximumExecutionTimeoutInSeconds": 600},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "green-5xx"}]}});
    let run = py("rollout", &s.base, d, &json!({"to": "v2", "deployment": canary}));
    assert_followed_steps(&run, &[0.25, 1.0]);
    assert_eq!(run["final"]["EndpointConfigName"], "v2");
    // the final bake after all traffic moved lasted the wait
    let s2 = steps(&run);
    let done = events(&run, "DeploymentStep").iter().find(|e| e["detail"]["Phase"] == "TerminationWait").unwrap()["t"]
        .as_f64()
        .unwrap();
    assert!(done - s2[1].0 >= 2.9, "final bake of {} s", done - s2[1].0);

    // back to v1 all at once, with a termination wait: blue (v2 now) is kept
    // until it ends, and DescribeEndpoint says so meanwhile
    let all = json!({"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 2},
        "TerminationWaitInSeconds": 2, "MaximumExecutionTimeoutInSeconds": 600}});
    let run = py("rollout", &s.base, d, &json!({"to": "v1", "deployment": all}));
    let reqs = requests(&run);
    assert!(reqs.iter().all(|r| r.ok), "a request failed during the all-at-once update");
    let st = steps(&run);
    assert_eq!(st.iter().map(|x| x.1).collect::<Vec<_>>(), vec![1.0]);
    let after: Vec<&Req> = reqs.iter().filter(|r| r.sent > st[0].0 + 0.1).collect();
    assert!(after.iter().all(|r| r.variant.as_deref() == Some("Blue")), "v1's variant is Blue");
    let before: Vec<&Req> = reqs.iter().filter(|r| r.done < st[0].0 - 0.05).collect();
    assert!(before.iter().all(|r| r.variant.as_deref() == Some("Green")));
    let waiting = run["describes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["pending"].is_null()
                && x["variants"][0]["VariantStatus"][0]["StatusMessage"]
                    .as_str()
                    .is_some_and(|m| m.contains("termination wait"))
        })
        .expect("a describe during the termination wait");
    assert_eq!(waiting["status"], "Updating");
    assert_eq!(waiting["variants"][0]["VariantName"], "Blue");
    assert_eq!(run["final"]["EndpointStatus"], "InService");
    assert_eq!(run["final"]["EndpointConfigName"], "v1");
}

/// Prometheus (scraping neorun) and Alertmanager (posting to neorun's
/// webhook), Debian's real ones, each on its own port.
struct Monitoring {
    children: Vec<Child>,
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_http(url: &str) {
    let start = Instant::now();
    while ureq::get(url).call().is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "{url} did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn monitoring(d: &Path, neorun: &str) -> Monitoring {
    let prometheus = which("prometheus").expect("Debian's prometheus (apt-get install prometheus)");
    let alertmanager = which("prometheus-alertmanager")
        .expect("Debian's prometheus-alertmanager (apt-get install prometheus-alertmanager)");
    let (pp, ap) = (free_port(), free_port());
    let target = neorun.trim_start_matches("http://");
    std::fs::write(
        d.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: neorun\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n- name: neorun\n  webhook_configs:\n  - url: {neorun}/alertmanager\n    send_resolved: true\n\
             \x20   http_config:\n      authorization:\n        credentials: {TOKEN}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("rules.yml"),
        "groups:\n- name: neorun\n  rules:\n  - alert: GreenErrors\n    expr: sum(increase(neorun_invocation_5xx_errors_total{endpoint_name=\"ep\",variant_name=\"Green\"}[10s])) > 0\n    labels:\n      neorun_alarm: prom-green-errors\n    annotations:\n      summary: green answers 5xx\n",
    )
    .unwrap();
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
             alerting:\n  alertmanagers:\n  - static_configs:\n    - targets: ['127.0.0.1:{ap}']\n\
             scrape_configs:\n- job_name: neorun\n  authorization:\n    credentials: {TOKEN}\n  static_configs:\n  - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let promtool = Command::new("promtool").current_dir(d).args(["check", "rules", "rules.yml"]).output().unwrap();
    assert!(promtool.status.success(), "{}", String::from_utf8_lossy(&promtool.stdout));
    let am = Command::new(alertmanager)
        .current_dir(d)
        .args([
            "--config.file=alertmanager.yml",
            &format!("--web.listen-address=127.0.0.1:{ap}"),
            "--cluster.listen-address=",
            "--storage.path=am-data",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prom = Command::new(prometheus)
        .current_dir(d)
        .args([
            "--config.file=prometheus.yml",
            &format!("--web.listen-address=127.0.0.1:{pp}"),
            "--storage.tsdb.path=prom-data",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Monitoring { children: vec![am, prom] };
    wait_http(&format!("http://127.0.0.1:{ap}/-/ready"));
    wait_http(&format!("http://127.0.0.1:{pp}/-/ready"));
    m
}

#[test]
fn an_alertmanager_webhook_from_a_prometheus_rule_rolls_the_update_back() {
    let _one = alone();
    let (dir, s) = started();
    let d = dir.path();
    let _m = monitoring(d, &s.base);
    // only the external alarm guards this update: Prometheus decides
    let mut dc = linear(20, 30, &["prom-green-errors"]);
    dc["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] = json!(900);
    let run = py("rollout", &s.base, d, &json!({"to": "v2", "deployment": dc, "zero_share": 0.3}));
    let f = &run["final"];
    assert_eq!(f["EndpointConfigName"], "v1", "{f}");
    let why = f["FailureReason"].as_str().unwrap();
    assert!(why.contains("prom-green-errors") && why.contains("Alertmanager") && why.contains("GreenErrors"), "{why}");
    let reqs = requests(&run);
    assert_eq!(reqs.iter().filter(|r| r.variant.as_deref() == Some("Blue") && !r.ok).count(), 0);
    let back = events(&run, "DeploymentRolledBack");
    let blue_at = back[0]["detail"]["blue_at"].as_f64().unwrap();
    let from_alarm = back[0]["detail"]["seconds_from_alarm_to_blue"].as_f64().unwrap();
    let first_failure = reqs.iter().filter(|r| !r.ok).map(|r| r.done).fold(f64::INFINITY, f64::min);
    eprintln!(
        "Alertmanager: first green 5xx → 100% on blue: {:.3} s; webhook → blue: {from_alarm:.3} s",
        blue_at - first_failure
    );
    assert!(from_alarm < 0.5);
    assert!(reqs.iter().filter(|r| r.sent > blue_at + 0.05).all(|r| r.variant.as_deref() == Some("Blue")));
    assert!(blue_at - first_failure < 25.0, "rolled back within the first 30 s bake");
}

#[test]
fn a_restart_in_the_middle_resolves_to_blue_and_after_the_final_bake_to_green() {
    let _one = alone();
    let dir = work();
    let d = dir.path();
    let s = server(d);
    py("setup", &s.base, d, &json!({}));
    let started = py("update_to", &s.base, d, &json!({"to": "v2", "deployment": linear(20, 3, &[])}));
    assert!(started["error"].is_null(), "{started}");
    // wait for the second step, then kill -9
    let t = Instant::now();
    loop {
        let j = std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap();
        if j.lines().filter(|l| l.contains("\"DeploymentStep\"") && l.contains("ActivatingTraffic")).count() >= 2 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let s = kill_9_and_restart(s, d);
    let after = py("describe", &s.base, d, &json!({}));
    let dsc = &after["describe"];
    assert_eq!(dsc["EndpointStatus"], "InService", "{dsc}");
    assert_eq!(dsc["EndpointConfigName"], "v1");
    assert!(dsc.get("PendingDeploymentSummary").is_none());
    let why = dsc["FailureReason"].as_str().unwrap();
    assert!(why.contains("interrupted by a restart at step 2 of 5") && why.contains("all traffic is on v1"), "{why}");
    assert_eq!(after["invoked"], "Blue");
    // nobody is driving anything: it stays on blue
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(py("describe", &s.base, d, &json!({}))["describe"]["EndpointConfigName"], "v1");

    // after the final bake (in the termination wait) the update has completed
    let all = json!({"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1},
        "TerminationWaitInSeconds": 60, "MaximumExecutionTimeoutInSeconds": 600}});
    assert!(py("update_to", &s.base, d, &json!({"to": "v2", "deployment": all}))["error"].is_null());
    let t = Instant::now();
    while !std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap().contains("\"TerminationWait\"") {
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = kill_9_and_restart(s, d);
    let after = py("describe", &s.base, d, &json!({}));
    let dsc = &after["describe"];
    assert_eq!(dsc["EndpointStatus"], "InService");
    assert_eq!(dsc["EndpointConfigName"], "v2", "{dsc}");
    assert!(dsc.get("FailureReason").is_none(), "{dsc}");
    assert_eq!(after["invoked"], "Green");
    let j = std::fs::read_to_string(d.join("state/journal.jsonl")).unwrap();
    assert_eq!(j.matches("\"DeploymentInterrupted\"").count(), 2);
}

#[test]
fn bad_deployment_configs_and_greens_are_refused_and_blue_keeps_serving() {
    let _one = alone();
    let (dir, s) = started();
    let d = dir.path();
    // a green whose bundle fails its own health check, then one whose
    // bundle is gone: the update ends, blue untouched, the reason shown
    for (cfg, want) in [("v3", "health check failed"), ("v2", "mod.neo")] {
        if cfg == "v2" {
            std::fs::rename(d.join("mod.neo"), d.join("mod.neo.away")).unwrap();
        }
        let e = py("update_to", &s.base, d, &json!({"to": cfg, "deployment": linear(20, 1, &[])}));
        assert!(e["error"].is_null(), "{e}");
        let w = py("wait", &s.base, d, &json!({}));
        let dsc = &w["describe"];
        assert_eq!(dsc["EndpointConfigName"], "v1", "{dsc}");
        let why = dsc["FailureReason"].as_str().unwrap();
        assert!(why.contains("not started") && why.contains(want) && why.contains("all traffic is on v1"), "{why}");
        assert_eq!(py("describe", &s.base, d, &json!({}))["invoked"], "Blue");
    }
    std::fs::rename(d.join("mod.neo.away"), d.join("mod.neo")).unwrap();
    // a field botocore would not send (the CLI sends the JSON as given)
    let mut typo = linear(20, 1, &[]);
    typo["BlueGreenUpdatePolicy"]["Colour"] = json!("green");
    let e = fails(
        endpoint_cli(d, &s.base, &["update", "ep", "--config", "v2", "--deployment-config", &typo.to_string()]),
        1,
    );
    assert!(e.contains("DeploymentConfig.BlueGreenUpdatePolicy.Colour: unknown field"), "{e}");
    let out = py("bad", &s.base, d, &json!({}));
    let want = [
        ("step_too_small", "LinearStepSize.Value: 5%: must be 10 to 50%"),
        ("canary_too_big", "CanarySize.Value: 80%"),
        ("instance_count", "INSTANCE_COUNT"),
        ("waits_over_timeout", "must be larger than the deployment's waits"),
        ("no_such_alarm", "AutoRollbackConfiguration.Alarms[0].AlarmName: no alarm named \"nope\""),
        ("rolling", "RollingUpdatePolicy"),
    ];
    for (case, text) in want {
        let e = &out[case];
        assert_eq!(e["code"], "ValidationException", "{case}: {e}");
        assert!(e["message"].as_str().unwrap().contains(text), "{case}: {e}");
    }
    assert_eq!(out["after_refusals"], "InService");
    let second = out["second_update"]["message"].as_str().unwrap();
    assert!(second.contains("Updating (to v2") && second.contains("RollbackEndpointUpdate"), "{second}");
    assert!(out["weights_during_update"]["message"].as_str().unwrap().contains("Updating"));

    // a manual rollback from the command line ends the update under way
    let r = ok(endpoint_cli(d, &s.base, &["rollback", "ep"]));
    assert!(r.contains("rolling back"), "{r}");
    let w = fails(endpoint_cli(d, &s.base, &["wait", "ep"]), 1);
    assert!(w.contains("rolled back by bearer token"), "{w}");
    assert_eq!(py("describe", &s.base, d, &json!({}))["invoked"], "Blue");
    let e = fails(endpoint_cli(d, &s.base, &["rollback", "ep"]), 1);
    assert!(e.contains("no guarded update under way"), "{e}");
    // and the CLI's own update, waited on, ends on green
    let dc = serde_json::to_string(&linear(50, 1, &["green-5xx"])).unwrap();
    let u = endpoint_cli(d, &s.base, &["update", "ep", "--config", "v2", "--deployment-config", &dc, "--wait"]);
    let text = ok(u);
    assert!(text.contains("\"EndpointConfigName\": \"v2\""), "{text}");

    // the webhook and the alarm API refuse what they cannot read
    let post = |path: &str, target: Option<&str>, body: &str| {
        let mut r = ureq::post(&format!("{}{path}", s.base)).set("Authorization", &format!("Bearer {TOKEN}"));
        if let Some(t) = target {
            r = r.set("X-Amz-Target", t);
        }
        match r.send_string(body) {
            Ok(r) => (200, r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    let cw = |op: &str| format!("GraniteServiceVersion20100801.{op}");
    let refusals = [
        ("/alertmanager", None, r#"{"version": "4", "alerts": [{"status": "firing", "labels": {}}]}"#, "alerts[0]"),
        (
            "/alertmanager",
            None,
            r#"{"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "nope"}}]}"#,
            "no alarm named nope",
        ),
        (
            "/",
            Some(cw("PutMetricAlarm")),
            r#"{"AlarmName": "x", "MetricName": "CPUUtilization"}"#,
            "not a metric neorun keeps",
        ),
        (
            "/",
            Some(cw("SetAlarmState")),
            r#"{"AlarmName": "prom-green-errors", "StateValue": "RED", "StateReason": "x"}"#,
            "StateValue",
        ),
    ];
    for (path, target, body, want) in refusals {
        let (c, b) = post(path, target.as_deref(), body);
        assert_eq!(c, 400, "{path} {target:?}: {b}");
        assert!(b.contains(want), "{path} {target:?}: {b}");
    }
    let (c, b) = post("/", Some(&cw("DescribeAlarms")), r#"{"AlarmNames": ["green-5xx", "prom-green-errors"]}"#);
    assert_eq!(c, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["MetricAlarms"].as_array().unwrap().len(), 2, "{v}");
    // unauthenticated webhooks are refused
    let r = ureq::post(&format!("{}/alertmanager", s.base)).send_string("{}");
    assert!(matches!(r, Err(ureq::Error::Status(401 | 403, _))), "{r:?}");
}

#[test]
fn a_shadow_test_runs_its_schedule_then_one_is_promoted() {
    let _one = alone();
    let (dir, s) = started();
    let d = dir.path();
    let out = Command::new(venv_python())
        .args([
            root().join("tests/serve/rollouts.py").to_str().unwrap(),
            "experiment",
            &s.base,
            d.to_str().unwrap(),
            "{}",
            bin("neorun").to_str().unwrap(),
            TOKEN,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "rollouts.py experiment failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // while it runs: a shadow variant on the endpoint, the callers answered by production only
    let shadows = &v["endpoint_running"]["ShadowProductionVariants"];
    assert_eq!(shadows[0]["VariantName"], "Shadow", "{}", v["endpoint_running"]);
    assert_eq!(v["running"]["ModelVariants"][1]["Status"], "InService");
    assert!(v["answered"].as_array().unwrap().iter().all(|a| a == "Blue"));
    assert!(v["update_during"]["message"].as_str().unwrap().contains("inference experiment shadow-test runs on it"));
    assert!(v["second"]["message"].as_str().unwrap().contains("already has inference experiment shadow-test"));
    // side by side: about half the requests sampled, each compared or (on a
    // busy machine: the shadow yields to live traffic) shed, none lost
    let m = &v["metrics_running"];
    let prod = m["Production"]["Metrics"]["Invocations"].as_u64().unwrap();
    let compared = m["Shadow"]["Compared"].as_u64().unwrap();
    let sampled = compared + m["Shadow"]["Shed"].as_u64().unwrap();
    assert!(prod >= 400, "{m}");
    assert!(compared > 0 && (prod as f64 * 0.5 - sampled as f64).abs() <= 4.0 * (prod as f64 * 0.25).sqrt(), "{m}");
    assert_eq!(m["Shadow"]["Agreed"], 0, "{m}");
    assert_eq!(m["Shadow"]["AgreementRate"], 0.0);
    assert!(m["Production"]["Metrics"]["ModelLatencyP99Microseconds"].as_f64().unwrap() > 0.0);
    // at the end of its schedule: Completed, and the endpoint as it was
    assert_eq!(v["completed"]["Status"], "Completed");
    assert!(v["completed"]["StatusReason"].as_str().unwrap().contains("the schedule ended"));
    assert!(v["endpoint_after"].get("ShadowProductionVariants").is_none(), "{}", v["endpoint_after"]);
    assert_eq!(v["endpoint_after"]["EndpointConfigName"], "v1");
    assert!(v["after_answer"].as_str().unwrap().contains("10"));
    // the figures at the end are kept (copies still running then may have finished since)
    assert!(v["metrics_final"]["Shadow"]["Compared"].as_u64().unwrap() >= compared);
    // both variants captured
    for variant in ["Blue", "Shadow"] {
        let dir = d.join("exp-capture/ep").join(variant);
        assert!(dir.is_dir(), "no capture for {variant}");
    }
    // promoted: the production variant now runs the shadow's model
    assert!(v["bad_stop"]["message"].as_str().unwrap().contains("can only be retained"));
    assert_eq!(v["promoted"]["Status"], "Completed");
    assert!(v["promoted"]["StatusReason"].as_str().unwrap().contains("promoted"));
    assert!(v["endpoint_promoted"].get("ShadowProductionVariants").is_none());
    assert_eq!(v["promoted_answer"][0], "Blue");
    assert!(!v["promoted_answer"][1].as_str().unwrap().contains("10"), "{}", v["promoted_answer"]);
    assert_eq!(v["list"].as_array().unwrap().len(), 2);
    let refused = &v["refused"];
    for (case, text) in [
        ("no_endpoint", "Could not find endpoint"),
        ("sampling_zero", "SamplingPercentage: 0"),
        ("ended", "in the past"),
        ("wrong_source_model", "runs model mod, not"),
        ("stop_completed", "already Completed"),
    ] {
        assert!(refused[case]["message"].as_str().is_some_and(|m| m.contains(text)), "{case}: {}", refused[case]);
    }
}

#[test]
fn cloudwatch_alarms_from_stock_boto3_guard_an_update() {
    let _one = alone();
    let (dir, s) = started();
    let d = dir.path();
    let v = py("cloudwatch", &s.base, d, &json!({}));
    let a = &v["described"][0];
    assert_eq!(a["AlarmName"], "green-latency");
    assert_eq!(a["ExtendedStatistic"], "p99");
    assert_eq!(a["StateValue"], "INSUFFICIENT_DATA");
    assert!(a["StateUpdatedTimestamp"].is_string(), "a timestamp botocore parsed: {a}");
    assert!(v["refused"]["message"].as_str().unwrap().contains("CPUUtilization"), "{}", v["refused"]);
    assert_eq!(v["unknown_state"]["code"], "ResourceNotFound");
    assert!(v["in_use"]["message"].as_str().unwrap().contains("guards the update of endpoint ep"));
    let e = &v["endpoint"];
    assert_eq!(e["EndpointConfigName"], "v1", "{e}");
    let why = e["FailureReason"].as_str().unwrap();
    assert!(
        why.contains("green-latency") && why.contains("testing the rollback") && why.contains("step 1 of 2"),
        "{why}"
    );
    let h = v["history"].as_array().unwrap();
    assert!(h.iter().any(|i| i["HistorySummary"] == "Alarm updated from INSUFFICIENT_DATA to ALARM"), "{h:?}");
    assert!(v["after_delete"].as_array().unwrap().is_empty());
}

#[test]
fn retained_variant_properties_are_kept_unless_excluded() {
    let _one = alone();
    let (dir, s) = started();
    let v = py("retain", &s.base, dir.path(), &json!({}));
    assert_eq!(v["retained"], json!({"config": "v1b", "weight": 3.0, "capture": false}), "{v}");
    assert_eq!(v["excluded"], json!({"config": "v1b", "weight": 1.0, "capture": true}), "{v}");
    assert!(v["exclude_alone"]["message"].as_str().unwrap().contains("only with RetainAllVariantProperties"));
}
