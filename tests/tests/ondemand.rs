//! Serverless and multi-model endpoints on `neorun serve`, driven by stock
//! boto3: a serverless variant loads its model on the first request,
//! unloads it when idle and loads it again, and answers ThrottlingException
//! beyond MaxConcurrency; a multi-model endpoint serves each bundle named by
//! TargetModel, keeping the most recently used within its memory budget.

use std::path::Path;
use std::process::Command;

use neoc_e2e::*;
use serde_json::Value;

const CREDS: &str = "[default]\naws_access_key_id = AKIDNEORUNTEST\naws_secret_access_key = neorun/test+secret\n";

fn py(mode: &str, base: &str, d: &Path) -> Value {
    let out = Command::new(venv_python())
        .args([root().join("tests/serve/ondemand.py").to_str().unwrap(), mode, base, d.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "ondemand.py {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The first sample row's answer, as `label,p0,p1`, checked against `want`.
#[track_caller]
fn check(body: &Value, want: &[f64]) {
    let text = body.as_str().unwrap();
    let v: Vec<f64> = text.trim().split(',').map(|x| x.parse().unwrap()).collect();
    assert_close(&v[v.len() - 2..], &want[..2], 1e-6);
}

fn setup(d: &Path) {
    std::fs::write(d.join("creds"), CREDS).unwrap();
    let sample = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv")).unwrap();
    std::fs::write(d.join("sample.csv"), sample).unwrap();
}

#[test]
fn a_serverless_variant_idles_out_comes_back_and_throttles() {
    let dir = scratch();
    let d = dir.path();
    setup(d);
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    std::fs::rename(b, d.join("xgb.neo")).unwrap();
    let want = expected("fraud-xgb");
    let s = serve_with(
        &bin("neorun"),
        d,
        &["--state-dir", "state", "--access-keys", "creds", "--serverless-idle-seconds", "1"],
    );
    let r = py("serverless", &s.base, d);
    // the first request loads the model (a cold start, in milliseconds); the next is warm
    check(&r["first"]["body"], &want);
    let cold: f64 = r["first"]["cold"].as_str().expect("a cold start").parse().unwrap();
    assert!(cold < 1000.0, "cold start {cold} ms");
    eprintln!("serverless cold start (verify, open, health check): {cold} ms");
    check(&r["warm"]["body"], &want);
    assert!(r["warm"]["cold"].is_null(), "{}", r["warm"]);
    // idle past the period: unloaded, and the next request loads it again
    check(&r["after_idle"]["body"], &want);
    assert!(r["after_idle"]["cold"].is_string(), "{}", r["after_idle"]);
    let t = r["throttled"].as_array().unwrap();
    assert!(!t.is_empty(), "no request was throttled beyond MaxConcurrency");
    for x in t {
        assert_eq!((x[0].as_str(), x[1].as_u64()), (Some("ThrottlingException"), Some(429)), "{x}");
        assert!(x[2].as_str().unwrap().contains("MaxConcurrency"), "{x}");
    }
    assert!(r["bad_memory"][1].as_str().unwrap().contains("MemorySizeInMB"), "{}", r["bad_memory"]);
    // the metrics count the cold starts and the idle unloads
    let m = ureq::get(&format!("{}/metrics", s.base)).call().unwrap().into_string().unwrap();
    let value = |name: &str, kind: &str| -> f64 {
        m.lines()
            .find(|l| {
                l.starts_with(name) && l.contains("endpoint_name=\"sl\"") && l.contains(&format!("kind=\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}{{kind={kind}}} not in /metrics:\n{m}"))
    };
    assert!(value("neorun_model_loads_total", "cold_start") >= 3.0);
    assert!(value("neorun_model_unloads_total", "idle") >= 2.0);
    assert!(value("neorun_throttled_total", "production") >= 1.0);
}

#[test]
fn a_multi_model_endpoint_serves_more_models_than_its_budget() {
    let dir = scratch();
    let d = dir.path();
    setup(d);
    std::fs::create_dir_all(d.join("mme")).unwrap();
    let b = compile(d, "fraud-xgb:1", host_target(), &[]);
    for n in ["a", "b", "c"] {
        std::fs::copy(&b, d.join(format!("mme/{n}.neo"))).unwrap();
    }
    std::fs::rename(&b, d.join("xgb.neo")).unwrap();
    let m = compile(d, "fraud-mlp:1", host_target(), &[]);
    std::fs::rename(m, d.join("mme/mlp.neo")).unwrap();
    let xgb_size = std::fs::metadata(d.join("xgb.neo")).unwrap().len() as f64;
    // room for two xgb bundles, not three
    let budget = format!("{:.3}", 2.5 * xgb_size / (1 << 20) as f64);
    let s = serve_with(
        &bin("neorun"),
        d,
        &["--state-dir", "state", "--access-keys", "creds", "--multi-model-memory-mb", &budget],
    );
    let r = py("multi", &s.base, d);
    let want_xgb = expected("fraud-xgb");
    let want_mlp = expected("fraud-mlp");
    let calls = r["calls"].as_array().unwrap();
    let cold: Vec<bool> = calls.iter().map(|c| c["cold"].is_string()).collect();
    // a, b cold; a warm; c cold (evicts b, the least recently used); mlp cold; b cold again
    assert_eq!(cold, [true, true, false, true, true, true], "{}", r["calls"]);
    assert_eq!(calls[3]["evicted"], "b.neo", "{}", calls[3]);
    for c in calls {
        let want = if c["target"] == "mlp.neo" { &want_mlp } else { &want_xgb };
        check(&c["body"], want);
    }
    let msg = |k: &str| r[k][1].as_str().unwrap_or_default().to_string();
    assert!(msg("no_target").contains("TargetModel"), "{}", r["no_target"]);
    assert!(msg("escape").contains("without . or .. parts"), "{}", r["escape"]);
    assert!(msg("missing").contains("no such bundle"), "{}", r["missing"]);
    assert!(msg("not_a_dir").contains("local directory of bundles"), "{}", r["not_a_dir"]);
}
