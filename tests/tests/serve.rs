//! `neorun serve`, started for real on 127.0.0.1:0 and queried over HTTP.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use neoc_e2e::*;

/// A served set of sample bundles, with the scratch directory they live in.
struct Server {
    served: Served,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Server {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Served {
        &mut self.served
    }
}

/// Compiles the samples and serves them (fraud-xgb first: the default model).
fn start(extra: &[&str]) -> Server {
    let dir = scratch();
    let mut bundles = Vec::new();
    for m in ["fraud-xgb:1", "fraud-mlp:1", "image-cnn:1"] {
        bundles.push(compile(dir.path(), m, "host", &[]));
    }
    let mut args: Vec<String> = bundles.iter().map(|b| b.display().to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let served = serve_with(&bin("neorun"), dir.path(), &args);
    Server { served, _dir: dir }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30)).build()
}

/// (status, body) of a request, whatever the status.
fn call(req: ureq::Request, body: Option<&[u8]>) -> (u16, String) {
    let r = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn probabilities(json: &str) -> Vec<f64> {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    doc["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn expected_output(model: &str, file: &str) -> Vec<f64> {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models").join(model).join(file)).unwrap()).unwrap();
    doc["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

#[test]
fn sagemaker_and_oip_routes_answer_like_predict() {
    let s = start(&[]);
    let a = agent();
    let csv = std::fs::read(root().join("models/fraud-xgb/sample.csv")).unwrap();
    assert_eq!(call(a.get(&format!("{}/ping", s.base)), None).0, 200);

    // SageMaker: CSV in, JSON out, on the default model (fraud-xgb)
    let (code, body) = call(a.post(&format!("{}/invocations", s.base)).set("Content-Type", "text/csv"), Some(&csv));
    assert_eq!(code, 200, "{body}");
    assert_close(&probabilities(&body), &expected("fraud-xgb"), 1e-6);
    // CSV out on the AWS runtime path, with the variant header
    let resp = a
        .post(&format!("{}/endpoints/fraud/invocations", s.base))
        .set("Content-Type", "text/csv")
        .set("Accept", "text/csv")
        .send_bytes(&csv)
        .unwrap();
    assert_eq!(resp.header("X-Amzn-Invoked-Production-Variant"), Some("AllTraffic"));
    let text = resp.into_string().unwrap();
    let probs: Vec<f64> = text
        .lines()
        .flat_map(|l| l.split(',').skip(1).map(|v| v.parse::<f64>().unwrap()).collect::<Vec<_>>())
        .collect();
    assert_close(&probs, &expected("fraud-xgb"), 1e-6);
    // JSON Lines in and out, on another model named by the SageMaker header
    let rows: Vec<String> = String::from_utf8(csv.clone()).unwrap().lines().map(|l| format!("[{l}]")).collect();
    let (code, body) = call(
        a.post(&format!("{}/invocations", s.base))
            .set("Content-Type", "application/jsonlines")
            .set("Accept", "application/jsonlines")
            .set("X-Amzn-SageMaker-Target-Model", "fraud-mlp"),
        Some(rows.join("\n").as_bytes()),
    );
    assert_eq!(code, 200, "{body}");
    let got: Vec<f64> = body
        .lines()
        .flat_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_close(&got, &expected("fraud-mlp"), 1e-5);

    // Open Inference Protocol v2
    assert_eq!(call(a.get(&format!("{}/v2/health/ready", s.base)), None).0, 200);
    assert_eq!(call(a.get(&format!("{}/v2/models/image-cnn/ready", s.base)), None).0, 200);
    let (code, meta) = call(a.get(&format!("{}/v2/models/fraud-xgb/versions/1", s.base)), None);
    assert_eq!(code, 200);
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["inputs"][0], serde_json::json!({"name": "features", "datatype": "FP32", "shape": [-1, 30]}));
    assert_eq!(meta["outputs"][0]["datatype"], "INT64");
    let img: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models/image-cnn/sample.json")).unwrap()).unwrap();
    let req = serde_json::json!({"id": "r1", "inputs": [{"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": img["inputs"]}]});
    let (code, body) = call(a.post(&format!("{}/v2/models/image-cnn/infer", s.base)), Some(req.to_string().as_bytes()));
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["id"], "r1");
    let got: Vec<f64> = doc["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&got, &expected("image-cnn"), 1e-4);

    // metrics counted all of it
    let (_, metrics) = call(a.get(&format!("{}/metrics", s.base)), None);
    assert!(metrics.contains("neorun_requests_total{model=\"fraud-xgb\",variant=\"AllTraffic\"} 2"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("neorun_request_duration_seconds_bucket{") && l.contains("model=\"image-cnn\"")),
        "{metrics}"
    );
}

/// `/metrics` is a valid Prometheus exposition: the stock `promtool check
/// metrics` (Debian's prometheus package) parses and lints it.
#[test]
fn metrics_pass_promtool() {
    let s = start(&[]);
    let a = agent();
    let csv = std::fs::read(root().join("models/fraud-xgb/sample.csv")).unwrap();
    assert_eq!(call(a.post(&format!("{}/invocations", s.base)).set("Content-Type", "text/csv"), Some(&csv)).0, 200);
    assert_eq!(call(a.post(&format!("{}/invocations", s.base)).set("Content-Type", "text/csv"), Some(b"1,2")).0, 400);
    let (code, metrics) = call(a.get(&format!("{}/metrics", s.base)), None);
    assert_eq!(code, 200);
    for name in ["neorun_requests_total", "neorun_errors_total", "neorun_queue_waiting", "neorun_inflight_requests"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let promtool = which("promtool").expect("promtool is not installed: apt-get install prometheus (.ci/run does)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let s = start(&["--max-body", "20000"]);
    let a = agent();
    let inv = format!("{}/invocations", s.base);
    let row30 = vec!["0.5"; 30].join(",");
    let cases: Vec<(ureq::Request, Vec<u8>, u16, &str)> = vec![
        (a.post(&inv).set("Content-Type", "application/json"), b"{\"instances\": [[1,2".to_vec(), 400, "not valid JSON"),
        (a.post(&inv).set("Content-Type", "text/csv"), vec!["0.5"; 29].join(",").into_bytes(), 400, "has 29 values"),
        (a.post(&inv).set("Content-Type", "text/csv"), row30.replace("0.5,0.5", "0.5,zz").into_bytes(), 400, "`zz` is not a number"),
        (a.post(&inv).set("Content-Type", "text/csv"), b"   ".to_vec(), 400, "empty body"),
        (
            a.post(&inv).set("Content-Type", "text/csv").set("X-Amzn-SageMaker-Target-Model", "fraud-mlp"),
            row30.replacen("0.5", "NaN", 1).into_bytes(),
            400,
            "holds NaN",
        ),
        (
            a.post(&inv).set("Content-Type", "text/csv").set("X-Amzn-SageMaker-Target-Model", "fraud-mlp"),
            row30.replacen("0.5", "-inf", 1).into_bytes(),
            400,
            "holds -Infinity",
        ),
        (a.post(&inv).set("Content-Type", "text/csv"), vec![b'1'; 30000], 413, "byte limit"),
        (a.post(&inv).set("Content-Type", "application/xml"), row30.clone().into_bytes(), 415, "not supported"),
        (a.post(&inv).set("Content-Type", "text/csv").set("Accept", "image/png"), row30.clone().into_bytes(), 406, "cannot answer"),
        (a.post(&inv).set("Content-Type", "text/csv").set("X-Amzn-SageMaker-Target-Model", "nope"), row30.clone().into_bytes(), 404, "unknown model `nope`"),
        (
            a.post(&format!("{}/v2/models/fraud-mlp/infer", s.base)),
            br#"{"inputs":[{"name":"features","shape":[1,30],"datatype":"INT64","data":[0]}]}"#.to_vec(),
            400,
            "the model takes FP32",
        ),
        (
            a.post(&format!("{}/v2/models/fraud-mlp/infer", s.base)),
            br#"{"inputs":[{"name":"features","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#.to_vec(),
            400,
            "expects shape [N,30]",
        ),
        (a.post(&format!("{}/v2/models/fraud-mlp/versions/9/infer", s.base)), b"{}".to_vec(), 404, "no version `9`"),
        (
            a.post(&format!("{}/v2/models/image-cnn/infer", s.base)).set("Inference-Header-Content-Length", "103"),
            br#"{"inputs":[{"name":"image","shape":[0,3,64,64],"datatype":"FP32","parameters":{"binary_data_size":0}}]}"#.to_vec(),
            400,
            "",
        ),
        (
            a.post(&format!("{}/v2/models/image-cnn/infer", s.base)).set("Inference-Header-Content-Length", "9999"),
            br#"{"inputs":[]}"#.to_vec(),
            400,
            "beyond the",
        ),
        (a.post(&format!("{}/v2/models/ghost/infer", s.base)), b"{}".to_vec(), 404, "unknown model"),
    ];
    for (req, body, want, msg) in cases {
        let (code, text) = call(req, Some(&body));
        assert_eq!(code, want, "{text}");
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(doc["error"].as_str().unwrap().contains(msg), "{msg}: {text}");
        assert_eq!(call(a.get(&format!("{}/ping", s.base)), None).0, 200);
    }
}

#[test]
fn bearer_token_guards_everything_but_health() {
    let s = start(&["--auth-token", "s3cret"]);
    let a = agent();
    assert_eq!(call(a.get(&format!("{}/ping", s.base)), None).0, 200);
    assert_eq!(call(a.get(&format!("{}/v2/health/live", s.base)), None).0, 200);
    let (code, body) = call(a.get(&format!("{}/v2/models/fraud-xgb", s.base)), None);
    assert_eq!(code, 401, "{body}");
    let (code, _) = call(a.get(&format!("{}/v2/models/fraud-xgb", s.base)).set("Authorization", "Bearer wrong"), None);
    assert_eq!(code, 401);
    let (code, _) = call(a.get(&format!("{}/v2/models/fraud-xgb", s.base)).set("Authorization", "Bearer s3cret"), None);
    assert_eq!(code, 200);
}

#[test]
fn a_client_that_never_finishes_its_body_times_out() {
    let s = start(&["--timeout", "1"]);
    let addr = s.base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(c, "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 1000\r\n\r\n0.5,0.5")
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = String::new();
    let _ = c.read_to_string(&mut buf);
    assert!(t0.elapsed() < std::time::Duration::from_secs(5), "the server held the connection for {:?}", t0.elapsed());
    assert!(buf.starts_with("HTTP/1.1 408"), "{buf}");
    // and keeps serving others
    assert_eq!(call(agent().get(&format!("{}/ping", s.base)), None).0, 200);
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut s = start(&[]);
    let a = agent();
    let csv = std::fs::read(root().join("models/fraud-xgb/sample.csv")).unwrap();
    assert_eq!(call(a.post(&format!("{}/invocations", s.base)).set("Content-Type", "text/csv"), Some(&csv)).0, 200);
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "did not exit after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn stock_boto3_and_tritonclient_work_unchanged() {
    let s = start(&[]);
    let venv = std::env::var_os("NEOC_VENV").map(std::path::PathBuf::from).unwrap_or_else(|| root().join(".venv"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} not found: run .ci/run (it creates the venv with boto3 and tritonclient)", py.display());
    let out = Command::new(py)
        .args([
            root().join("tests/serve/clients.py").to_str().unwrap(),
            &s.base,
            root().join("models").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "clients.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p: Vec<f64> =
        doc["boto3_csv"]["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&p, &expected("fraud-xgb"), 1e-6);
    assert_eq!(doc["boto3_variant"], "AllTraffic");
    let p: Vec<f64> =
        doc["boto3_json_mlp"]["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&p, &expected("fraud-mlp"), 1e-5);
    assert_eq!(doc["triton_live"], true);
    assert_eq!(doc["triton_ready"], true);
    let p: Vec<f64> = doc["triton_cnn"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&p, &expected_output("image-cnn", "expected.json"), 1e-4);
    assert_eq!(doc["triton_meta_inputs"][0]["datatype"], "FP32");
    let p: Vec<f64> = doc["triton_cnn_binary"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&p, &expected_output("image-cnn", "expected.json"), 1e-4);
    let p: Vec<f64> = doc["triton_xgb_proba"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(&p, &expected("fraud-xgb"), 1e-6);
    assert_eq!(doc["triton_xgb_label"], serde_json::json!([0, 0, 0, 1, 1, 0, 0, 0]));
}

#[test]
fn sixty_four_clients_get_answers_batches_merge_and_sigterm_drains() {
    let secs: u64 = std::env::var("NEOC_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut s = start(&["--max-queue", "32"]);
    let pid = s.child.id();
    let base = s.base.clone();
    let row = std::fs::read_to_string(root().join("models/fraud-xgb/sample.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let rss_before = rss_kb(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (base, row, stop) = (base.clone(), row.clone(), stop.clone());
            std::thread::spawn(move || {
                let a = agent();
                let (mut ok, mut busy, mut other) = (0u64, 0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match a.post(&format!("{base}/invocations")).set("Content-Type", "text/csv").send_string(&row) {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Err(ureq::Error::Status(503, r)) => {
                            assert!(r.header("Retry-After").is_some());
                            busy += 1
                        }
                        Ok(r) => other.push(format!("status {}", r.status())),
                        Err(e) => other.push(e.to_string()),
                    }
                }
                (ok, busy, other)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(secs));
    let metrics = call(agent().get(&format!("{base}/metrics")), None).1;
    let rss_during = rss_kb(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut busy) = (0, 0);
    for w in workers {
        let (o, b, other) = w.join().unwrap();
        assert!(other.is_empty(), "unexpected answers under load: {other:?}");
        ok += o;
        busy += b;
    }
    assert!(ok > 100, "only {ok} requests answered ({busy} busy)");
    assert!(rss_during < rss_before + 200_000, "RSS grew from {rss_before} kB to {rss_during} kB");
    // requests were merged: fewer batches than requests
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let batches = value("neorun_batch_rows_count{model=\"fraud-xgb\"");
    let requests = value("neorun_requests_total{model=\"fraud-xgb\"");
    assert!(batches > 0.0 && batches < requests, "batches {batches}, requests {requests}");

    // SIGTERM while clients are still sending: in-flight requests finish, the process exits 0
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..16)
        .map(|_| {
            let (base, row, stop) = (base.clone(), row.clone(), stop.clone());
            std::thread::spawn(move || {
                let a = agent();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = a.post(&format!("{base}/invocations")).set("Content-Type", "text/csv").send_string(&row);
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "no exit after SIGTERM under load");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(status.success(), "exit status {status:?}");
}
