//! Regression tests, each named after what broke. They run the real
//! binaries: `neorun serve` started as a process, queried over HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use neoc_e2e::*;

/// (status, body), or `None` when the connection failed or was cut.
fn post(url: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration) -> Option<(u16, String)> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_bytes(body) {
        Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
        Err(_) => None,
    }
}

fn get(url: &str) -> Option<(u16, String)> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    match agent.get(url).call() {
        Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
        Err(_) => None,
    }
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn python(dir: &Path, script: &str) {
    let o = Command::new(venv_python()).args(["-c", script, dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A model that takes well over a second per request on one thread: 72
/// box-filter convolutions (64 channels, 3x3) over a 256x256 plane tiled
/// from an 8x8 input, 345 GFLOP (about 2 s on the Zen 5 machines here, where
/// 48 layers took 1.4 s; 4-6 s on the older ones).
/// Constant weights keep the values bounded, so verification is exact to
/// f32 rounding.
fn slow_model(dir: &Path) -> PathBuf {
    python(
        dir,
        r#"
import sys, os, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
C, S, T, L = 64, 8, 32, 72
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, S, S])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 1, 1])
inits = [numpy_helper.from_array(np.array([1, 1, T, T], np.int64), "reps"),
         numpy_helper.from_array(np.full((C, C, 3, 3), 1.0 / (C * 9), np.float32), "w")]
nodes = [helper.make_node("Tile", ["x", "reps"], ["t0"])]
for i in range(L):
    nodes.append(helper.make_node("Conv", [f"t{i}", "w"], [f"t{i + 1}"], pads=[1, 1, 1, 1]))
nodes.append(helper.make_node("GlobalAveragePool", [f"t{L}"], ["y"]))
m = helper.make_model(helper.make_graph(nodes, "slow", [x], [y], inits),
                      opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
onnx.save(m, sys.argv[1] + "/slow.onnx")
"#,
    );
    ok(run(
        "neoc",
        dir,
        &["compile", "slow.onnx", "--target", "host", "--key", "k.key", "-o", "slow.neo", "--input", "x=1,64,8,8"],
        &[],
        None,
    ));
    dir.join("slow.neo")
}

/// A request that timed out while waiting for an inference slot used to
/// keep its place in the queue count for ever: after `--max-queue` +
/// `--threads` such timeouts every request got 503. One that timed out
/// during inference gave its slot back while the inference ran on, so more
/// than `--threads` inferences could run at once.
#[test]
fn requests_that_time_out_while_queued_give_their_places_back() {
    let dir = scratch();
    let d = dir.path();
    slow_model(d);
    let fast = compile(d, "fraud-xgb:1", "host", &[]);
    let s = serve_with(
        &bin("neorun"),
        d,
        &["slow.neo", fast.to_str().unwrap(), "--threads", "1", "--max-queue", "2", "--timeout", "1"],
    );
    let alone = alone_us(d);
    let row = vec!["0.5"; 64 * 8 * 8].join(",");
    let url = format!("{}/invocations", s.base);
    // rounds of concurrent slow requests: every one times out (408) or is
    // refused while the queue is full (503); 4 rounds of 4 give more
    // timeouts than --max-queue + --threads
    let mut timeouts = 0;
    for _ in 0..4 {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (url, row) = (url.clone(), row.clone());
                std::thread::spawn(move || post(&url, &[CSV], row.as_bytes(), Duration::from_secs(30)))
            })
            .collect();
        for h in handles {
            let (code, body) = h.join().unwrap().expect("an answer to every slow request");
            assert!(code == 408 || code == 503, "a slow request answered {code}: {body} (one run takes {alone} µs)");
            timeouts += (code == 408) as usize;
        }
    }
    assert!(timeouts > 3, "only {timeouts} requests timed out (one run takes {alone} µs)");
    // the abandoned inferences finish, and nothing stays counted
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled =
        |m: &str| gauge(m, "neorun_inflight_requests") == Some(0.0) && gauge(m, "neorun_queue_waiting") == Some(0.0);
    let metrics = loop {
        let (_, m) = get(&format!("{}/metrics", s.base)).expect("the server answers /metrics");
        if settled(&m) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // normal requests are served
    let csv = std::fs::read(root().join("models/fraud-xgb/sample.csv")).unwrap();
    for _ in 0..5 {
        let (code, body) =
            post(&url, &[CSV, ("X-Amzn-SageMaker-Target-Model", "fraud-xgb")], &csv, Duration::from_secs(30)).unwrap();
        assert_eq!(code, 200, "after {timeouts} timeouts: {body}");
    }
    assert!(settled(&metrics), "the in-flight and queued gauges did not return to zero:\n{metrics}");
}

const CSV: (&str, &str) = ("Content-Type", "text/csv");

/// One run of `slow.neo` in µs, measured in-process by `neorun bench`; it
/// must outlast the 1 s timeout the tests serve it with.
fn alone_us(dir: &Path) -> f64 {
    let out = ok(run(
        "neorun",
        dir,
        &["bench", "slow.neo", "--trusted-key", "k.pub", "--iterations", "1", "--warmup", "0", "--json"],
        &[],
        None,
    ));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let us = doc["median_us"].as_f64().unwrap_or_else(|| panic!("{out}"));
    assert!(us > 1.5e6, "slow.neo runs in {us} µs here: too fast to outlast a 1 s timeout; add layers");
    us
}

/// The running inferences never exceed `--threads`, even when requests time
/// out during inference (the slot is held until the engine returns).
#[test]
fn a_request_that_times_out_during_inference_keeps_its_slot_until_the_engine_returns() {
    let dir = scratch();
    let d = dir.path();
    slow_model(d);
    let s = serve_with(&bin("neorun"), d, &["slow.neo", "--threads", "1", "--max-queue", "8", "--timeout", "1"]);
    alone_us(d);
    let row = vec!["0.5"; 64 * 8 * 8].join(",");
    let url = format!("{}/invocations", s.base);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, base) = (stop.clone(), s.base.clone());
        std::thread::spawn(move || {
            let mut most = 0.0f64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((_, m)) = get(&format!("{base}/metrics")) {
                    most = most.max(gauge(&m, "neorun_inflight_requests").unwrap_or(f64::NAN));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    for _ in 0..3 {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (url, row) = (url.clone(), row.clone());
                std::thread::spawn(move || post(&url, &[CSV], row.as_bytes(), Duration::from_secs(30)))
            })
            .collect();
        for h in handles {
            let (code, _) = h.join().unwrap().expect("an answer");
            assert!(code == 408 || code == 503 || code == 200, "{code}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(most == 1.0, "at most --threads (1) inferences may run at once; the metrics showed {most}");
}

/// The size-optimised device build (`--profile dist`) used `panic =
/// "abort"`, so a panic inside the engine (tract on an integer remainder by
/// zero), which the runtime turns into an error for that request, killed
/// the whole server instead.
#[test]
fn the_dist_neorun_survives_an_engine_panic() {
    let dist = std::env::var_os("NEORUN_DIST_BIN").map(PathBuf::from).unwrap_or_else(|| {
        bin("neorun").parent().unwrap().parent().unwrap().join("dist/neorun") // target/release/.. /dist
    });
    assert!(
        dist.exists(),
        "{} not found: build the device binary first (cargo build --profile dist -p neorun; .ci/run does)",
        dist.display()
    );
    let dir = scratch();
    let d = dir.path();
    int_mod_bundle(d);
    let mut s = serve_with(&dist, d, &["m.neo", "--max-batch", "1"]);
    let url = format!("{}/invocations", s.base);
    let t = Duration::from_secs(30);
    let good = br#"{"inputs": {"a": [[7, -7]], "b": [[3, 3]]}}"#;
    let zero = br#"{"inputs": {"a": [[7, -7]], "b": [[0, 3]]}}"#;
    assert_eq!(post(&url, &[("Content-Type", "application/json")], good, t).map(|r| r.0), Some(200));
    for _ in 0..3 {
        let r = post(&url, &[("Content-Type", "application/json")], zero, t);
        let (code, body) = r.unwrap_or_else(|| {
            let status = s.child.try_wait().ok().flatten();
            panic!("the dist server dropped the connection on a bad request (process: {status:?})")
        });
        assert!((400..600).contains(&code), "{code} {body}");
        assert!(body.contains("divisor of zero"), "{body}");
    }
    let (code, body) =
        post(&url, &[("Content-Type", "application/json")], good, t).expect("the dist server is still up");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("[1,2]"), "{body}");
}

/// An input the engine fails on (a zero divisor inside the graph) was
/// answered 500, and under dynamic batching it failed the requests merged
/// with it (1,583 of 19,001 in the probe). Now only that request fails, with
/// 424 `ModelError` naming the cause (SageMaker's answer when a model
/// fails), its batch-mates are answered, and the metrics count the failure
/// as the model's 5xx.
#[test]
fn an_input_the_engine_fails_on_fails_only_its_own_request_with_a_4xx() {
    let dir = scratch();
    let d = dir.path();
    int_mod_bundle(d);
    let s = serve_with(&bin("neorun"), d, &["m.neo", "--max-batch", "16", "--threads", "1"]);
    let url = format!("{}/invocations", s.base);
    let end = Instant::now() + Duration::from_secs(3);
    let good = br#"{"inputs": {"a": [[7, -7]], "b": [[3, 3]]}}"#;
    let zero = br#"{"inputs": {"a": [[7, -7]], "b": [[0, 3]]}}"#;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeMap::new();
                while Instant::now() < end {
                    let body: &[u8] = if i == 0 { zero } else { good };
                    let (code, text) =
                        post(&url, &[("Content-Type", "application/json")], body, Duration::from_secs(10))
                            .unwrap_or((0, String::new()));
                    if i == 0 && code != 200 {
                        assert!(text.contains("divisor of zero"), "{code} {text}");
                    }
                    *seen.entry(code).or_insert(0u32) += 1;
                }
                seen
            })
        })
        .collect();
    let seen: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let bad = &seen[0];
    assert_eq!(bad.keys().copied().collect::<Vec<_>>(), vec![424], "the zero-divisor requests: {bad:?}");
    for good in &seen[1..] {
        assert_eq!(
            good.keys().copied().collect::<Vec<_>>(),
            vec![200],
            "a valid client's requests: {good:?} (bad: {bad:?})"
        );
    }
    let (_, m) = get(&format!("{}/metrics", s.base)).unwrap();
    let counted = |class: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("neorun_errors_total") && l.contains(&format!("class=\"{class}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(counted("5xx"), bad[&424] as f64, "{m}");
    assert_eq!(counted("4xx"), 0.0, "{m}");
}

/// SIGTERM cut requests the server had already accepted (1 to 14 per
/// SIGTERM in the probe). Now requests in flight when it comes are answered
/// (200), readiness says 503 while they finish, and the server exits 0.
/// (Its first run found a second defect: two convolutions on one model's
/// thread pool, one stolen by a thread waiting inside the other's GEMM,
/// panicked on the thread's shared im2col buffer — `RefCell already
/// borrowed`, answered 424.)
#[test]
fn requests_in_flight_at_sigterm_are_answered() {
    let dir = scratch();
    let d = dir.path();
    slow_model(d);
    let mut s = serve_with(&bin("neorun"), d, &["slow.neo", "--threads", "2", "--max-batch", "1"]);
    let row = vec!["0.5"; 64 * 8 * 8].join(",");
    let url = format!("{}/invocations", s.base);
    let alone = alone_us(d);
    let inflight: Vec<_> = (0..4)
        .map(|_| {
            let (url, row) = (url.clone(), row.clone());
            std::thread::spawn(move || post(&url, &[CSV], row.as_bytes(), Duration::from_secs(60)))
        })
        .collect();
    // all four sent and being worked on (two running, two queued)
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(100));
    let ready = get(&format!("{}/ping", s.base)).map(|r| r.0);
    for h in inflight {
        let (code, body) = h.join().unwrap().expect("an answer to a request sent before SIGTERM");
        assert_eq!(code, 200, "{body} (one run takes {alone} µs)");
    }
    // while draining, a new connection is refused or told 503 (not 200)
    assert_ne!(ready, Some(200), "readiness said 200 while draining");
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
}

/// Requests hyper cannot parse were answered by hyper itself with an empty
/// 400, 414 or 431 (18 of the probe's 332 error responses had no JSON
/// body); each is a JSON error now, and the server answers on.
#[test]
fn requests_hyper_cannot_parse_get_json_errors() {
    use std::io::{Read, Write};
    let dir = scratch();
    let d = dir.path();
    let bundle = compile(d, "fraud-xgb:1", "host", &[]);
    let s = serve_with(&bin("neorun"), d, &[bundle.to_str().unwrap()]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a bad Content-Length", b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n".to_vec(), 400),
        ("a control byte in a header", b"GET /ping HTTP/1.1\r\nHost: x\r\nContent-Type: a\x01b\r\n\r\n".to_vec(), 400),
        ("a bad request line", b"NOT A REQUEST\r\n\r\n".to_vec(), 400),
        ("HTTP/0.9", b"GET /ping\r\n\r\n".to_vec(), 400),
        ("NUL in the path", b"GET /pi\0ng HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("a 100 KB path", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(100_000)).into_bytes(), 414),
        ("200 headers", format!("GET /ping HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(), 431),
        (
            "a 1 MB header",
            format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(1 << 20)).into_bytes(),
            431,
        ),
    ];
    for (what, request, want) in cases {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // hyper may answer and close before it has read all of a large request
        let _ = c.write_all(&request);
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).to_string();
        let code: u16 = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        assert_eq!(code, want, "{what}: {text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{what}: {head}");
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {body:?}"));
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    }
    assert_eq!(get(&format!("{}/ping", s.base)).map(|r| r.0), Some(200));
}

/// Connections that never finished their headers, or never sent anything,
/// were held for ever: a few hundred of them exhausted the server. Now the
/// header-read timeout closes them, and `--max-connections` bounds how many
/// are open at once.
#[test]
fn connections_that_never_send_their_headers_are_closed() {
    use std::io::{Read, Write};
    let dir = scratch();
    let d = dir.path();
    let bundle = compile(d, "fraud-xgb:1", "host", &[]);
    let s =
        serve_with(&bin("neorun"), d, &[bundle.to_str().unwrap(), "--header-timeout", "1", "--max-connections", "8"]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let t0 = Instant::now();
    let mut held = Vec::new();
    for i in 0..8 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if i % 2 == 0 {
            // a slowloris: headers begun, never finished
            c.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    // the limit is reached: a ninth connection is closed at once
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = extra.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = extra.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "a connection beyond --max-connections was served");
    // every held connection is closed by the server after the header timeout
    for (i, c) in held.iter_mut().enumerate() {
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(6), "connection {i} was held for {waited:?}");
    }
    // and the server answers again
    let (code, _) = get(&format!("{}/ping", s.base)).expect("the server answers after the idle connections are closed");
    assert_eq!(code, 200);
}

/// A one-line mistake in a declared size (`--input features=1e12,30`, an
/// XGBoost `num_feature`, a LightGBM `max_feature_idx`, `num_class`) made
/// neoc allocate it and abort; tract panics while importing a graph
/// (ConstantOfShape of 10^12 elements) ended in exit 101 with a backtrace.
/// Each is now an error naming what was wrong.
#[test]
fn declared_sizes_and_import_panics_are_errors_not_aborts() {
    let dir = scratch();
    let d = dir.path();
    let neoc = |args: &[&str]| {
        let o = run("neoc", d, &[args, &["--target", "host", "--key", "k.key", "-o", "x.neo"]].concat(), &[], None);
        let e = stderr(&o);
        let code = o.status.code();
        assert!(matches!(code, Some(1) | Some(4)), "exit {code:?} (not an error exit): {e}");
        assert!(!e.contains("panicked") && !e.contains("memory allocation"), "{e}");
        assert!(!d.join("x.neo").exists(), "a bundle was written");
        e
    };
    let mlp = root().join("models/fraud-mlp/model.onnx");
    let e = neoc(&["compile", mlp.to_str().unwrap(), "--input", "features=1000000000000,30"]);
    assert!(e.contains("input `features`") && e.contains("allows at most"), "{e}");
    let xgb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("models/fraud-xgb/xgboost-model.json")).unwrap()).unwrap();
    for (field, value, needle) in [
        ("num_feature", "1000000000000", "num_feature 1000000000000 is out of range"),
        ("num_class", "1000000000000", "num_class 1000000000000 is out of range"),
    ] {
        let mut m = xgb.clone();
        m["learner"]["learner_model_param"][field] = value.into();
        std::fs::write(d.join("xgboost-model.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = neoc(&["compile", d.join("xgboost-model.json").to_str().unwrap()]);
        assert!(e.contains(needle), "{field}: {e}");
    }
    let lgbm = std::fs::read_to_string(root().join("models/fraud-lgbm/lightgbm-model.txt")).unwrap();
    let edited = lgbm.replacen("max_feature_idx=29", "max_feature_idx=999999999", 1);
    assert_ne!(edited, lgbm);
    std::fs::write(d.join("lightgbm-model.txt"), edited).unwrap();
    let e = neoc(&["compile", d.join("lightgbm-model.txt").to_str().unwrap()]);
    assert!(e.contains("max_feature_idx 999999999 is out of range"), "{e}");
    python(
        d,
        r#"
import sys, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]); y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
shp = numpy_helper.from_array(np.array([10**6, 10**6], dtype=np.int64), "shp")
g = helper.make_graph([helper.make_node("ConstantOfShape", ["shp"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
     helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])], "g", [x], [y], [shp])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
onnx.save(m, sys.argv[1] + "/cos.onnx")
def save(p, g):
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8; onnx.save(m, sys.argv[1] + "/" + p)
s = onnx.TensorProto(); s.name = "s"; s.data_type = TensorProto.STRING; s.dims.extend([1]); s.raw_data = b"abcd"
save("strraw.onnx", helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], [s]))
xi = helper.make_tensor_value_info("x", TensorProto.INT64, [1, 4]); yi = helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4])
ten = numpy_helper.from_array(np.full([1, 4], 10, dtype=np.int64), "ten"); z = numpy_helper.from_array(np.zeros([1, 4], dtype=np.int64), "z")
save("modfold.onnx", helper.make_graph([helper.make_node("Mod", ["ten", "z"], ["m"]), helper.make_node("Add", ["x", "m"], ["y"])], "g", [xi], [yi], [ten, z]))
"#,
    );
    for model in ["cos.onnx", "strraw.onnx", "modfold.onnx"] {
        let e = neoc(&["compile", model]);
        assert!(e.contains(model), "{model}: {e}");
    }
    let e = neoc(&["compile", "cos.onnx"]);
    assert!(e.contains("tract failed while importing the model"), "{e}");
}

/// Framework detection read every file of a model tarball whole to look at
/// its first 4 KiB: an 8 MB tarball with a 1 GiB padding file took 1 GiB of
/// memory, and the padding was unpacked (1 GiB of disk). It reads the first
/// 4 KiB now, and unpacks only the files the model needs (run with a 64 MiB
/// file-size limit, under which unpacking the padding would kill neoc).
#[test]
fn large_extra_files_in_a_tarball_cost_no_memory_and_no_disk() {
    let dir = scratch();
    let d = dir.path();
    let script = r#"
import random, resource, shutil, subprocess, sys, tarfile, os
d, root, neoc = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(d + "/pad")
shutil.copy(root + "/models/fraud-mlp/model.onnx", d + "/pad/")
shutil.copy(root + "/models/fraud-mlp/model.json", d + "/pad/")
r = random.Random(1)
with open(d + "/pad/padding.bin", "wb") as f:  # 512 MiB that gzip shrinks ~170x, under the bomb guard
    for _ in range(8192):
        f.write(r.randbytes(380) + bytes(65536 - 380))
with tarfile.open(d + "/pad.tar.gz", "w:gz", compresslevel=1) as t:
    for n in ("model.onnx", "model.json", "padding.bin"):
        t.add(d + "/pad/" + n, arcname=n)
shutil.rmtree(d + "/pad")
# no file neoc writes may pass 64 MiB: the padding must never be unpacked
fsize = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
p = subprocess.run([neoc, "compile", d + "/pad.tar.gz", "--target", "host", "--key", d + "/k.key", "-o", d + "/pad.neo", "-q"],
                   capture_output=True, text=True, preexec_fn=fsize)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.stderr.replace("\n", " "))
"#;
    let o = Command::new(venv_python())
        .args(["-c", script, d.to_str().unwrap(), root().to_str().unwrap(), bin("neoc").to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let mut f = out.split_whitespace();
    let (code, rss_kb): (i32, u64) = (f.next().unwrap().parse().unwrap(), f.next().unwrap().parse().unwrap());
    assert_eq!(code, 0, "{out}");
    assert!(rss_kb < 400 * 1024, "neoc peaked at {} MB for a tarball with 512 MiB of padding: {out}", rss_kb / 1024);
}

/// `neoc compile` stopped by SIGTERM (a cancelled CI job) used to leave its
/// unpacked model under $TMPDIR: now it removes what it unpacked, writes no
/// bundle, and exits 143.
#[test]
fn a_compile_stopped_by_sigterm_leaves_no_temporary_files() {
    let dir = scratch();
    let d = dir.path();
    slow_model(d);
    let st = Command::new("tar").current_dir(d).args(["czf", "slow.tar.gz", "slow.onnx"]).status().unwrap();
    assert!(st.success());
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = Command::new(bin("neoc"))
        .current_dir(d)
        .env("TMPDIR", &tmp)
        .args([
            "compile",
            "slow.tar.gz",
            "--target",
            "host",
            "--key",
            "k.key",
            "-o",
            "stopped.neo",
            "--input",
            "x=1,64,8,8",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // once the model is unpacked (its temporary directory exists), stop it
    let start = Instant::now();
    while std::fs::read_dir(&tmp).unwrap().next().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "neoc made no temporary directory");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the compile ended before the signal: make the model slower");
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!d.join("stopped.neo").exists());
}
